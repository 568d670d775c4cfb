"""Path normalization: only single-line, path-like values of path parameters change."""

import json

import pytest

from refserver.tools.arguments import type_arguments
from refserver.tools.minimax import parse_tool_block
from refserver.tools.paths import is_path_param, normalize_path

STR = {"type": "string"}
NULLABLE_STR = {"type": ["string", "null"]}
STR_LIST = {"type": "array", "items": {"type": "string"}}


def described(text: str) -> dict:
    return {"type": "string", "description": text}


# (parameter name, its schema, raw value, expected typed value)
CASES = [
    # The seed's example and its relatives.
    ("path", STR, "/ Users/ me/ site/ index. html", "/Users/me/site/index.html"),
    ("file_path", STR, "/Users/me/a. txt", "/Users/me/a.txt"),
    ("filepath", STR, "~ / notes/ todo. md", "~/notes/todo.md"),
    ("filename", STR, ". / src/ main. py", "./src/main.py"),
    ("directory", STR, ".. / lib", "../lib"),
    ("dir", STR, "/ tmp", "/tmp"),
    ("cwd", STR, "/ home/ user/ project", "/home/user/project"),
    ("workdir", STR, "/ srv/ app", "/srv/app"),
    ("folder", STR, "~/ Documents", "~/Documents"),
    ("target_file", STR, "/ a/ b. json", "/a/b.json"),
    ("notebookPath", STR, "/ x/ y. ipynb", "/x/y.ipynb"),
    ("file_name", STR, "./ README. md", "./README.md"),
    ("working_directory", STR, "/ var/ www", "/var/www"),
    ("location", described("Absolute path of the directory to list"), "/ var/ log", "/var/log"),
    ("source", described("The file path to copy from"), "/ a. txt", "/a.txt"),
    ("path", NULLABLE_STR, "/ tmp/ file. txt", "/tmp/file.txt"),
    ("path", NULLABLE_STR, "null", None),
    ("paths", STR_LIST, '["/ a/ b. py", "/ c"]', ["/a/b.py", "/c"]),
    ("files", {"type": "array"}, '[1, "/ a"]', [1, "/a"]),
    ("path", STR, "/tmp/ . hidden", "/tmp/.hidden"),
    # Spaces that belong to a name survive; only those next to "/" or "." go.
    ("path", STR, "/Users/me/My Documents/a.txt", "/Users/me/My Documents/a.txt"),
    ("path", STR, "/ Users/ me/ My Documents/ a. txt", "/Users/me/My Documents/a.txt"),
    ("path", STR, "/already/clean.txt", "/already/clean.txt"),
    # Path parameters whose value is not path-like.
    ("path", STR, "C:\\Users\\me", "C:\\Users\\me"),
    ("path", STR, "C: \\ Users \\ me . txt", "C: \\ Users \\ me . txt"),
    ("path", STR, "src/ main. py", "src/ main. py"),
    ("path", STR, "https://a.b/c. d", "https://a.b/c. d"),
    ("path", STR, "the project root directory.", "the project root directory."),
    ("path", STR, "...", "..."),
    ("path", STR, "~user/ x", "~user/ x"),
    ("path", STR, "", ""),
    # Multi-line values are never touched, even in a path parameter.
    ("path", STR, "/ a/\n b. txt", "/ a/\n b. txt"),
    # Parameters that hold code, commands, patterns, URLs or prose.
    ("content", STR, "/** \n * Docs. \n */", "/** \n * Docs. \n */"),
    ("content", STR, "/** One line. */", "/** One line. */"),
    ("file_content", described("Content of the file"), "/ x. y", "/ x. y"),
    ("command", STR, "./configure && make", "./configure && make"),
    ("command", described("Runs in the working directory"), "./ configure", "./ configure"),
    ("pattern", described("Glob pattern matching file paths"), "/ src/ **. ts", "/ src/ **. ts"),
    ("url", STR, "https://a.b/c. d", "https://a.b/c. d"),
    ("message", STR, "Fixed the bug in / src/ a. py.", "Fixed the bug in / src/ a. py."),
    ("old_string", STR, "/ keep. this", "/ keep. this"),
    ("query", described("Search path"), "/ x", "/ x"),
    ("description", STR, "/ This ends in a period.", "/ This ends in a period."),
    # Only top-level strings: a path nested in an object is left alone.
    (
        "options",
        {"type": "object", "properties": {"path": STR}},
        '{"path": "/ a"}',
        {"path": "/ a"},
    ),
]


@pytest.mark.parametrize(("name", "schema", "raw", "expected"), CASES)
def test_path_normalization_by_schema(name, schema, raw, expected):
    parameters = {"type": "object", "properties": {name: schema}}
    assert type_arguments({name: raw}, parameters) == {name: expected}


def test_undeclared_parameter_is_not_normalized():
    parameters = {"type": "object", "properties": {}}
    assert type_arguments({"file_path": "/ a/ b"}, parameters) == {"file_path": "/ a/ b"}


@pytest.mark.parametrize(
    ("name", "schema", "expected"),
    [
        ("path", None, True),
        ("filePath", None, True),
        ("output-dir", None, True),
        ("dir_name", None, True),
        ("profile", None, False),
        ("file_content", None, False),
        ("content", described("The file path is implied"), False),
        ("target", described("Directory to create"), True),
        ("target", described("Name of the branch"), False),
        ("", None, False),
    ],
)
def test_is_path_param(name, schema, expected):
    assert is_path_param(name, schema) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/ a/ b. c", "/a/b.c"),
        ("  / a", "/a"),
        ("a/ b", "a/ b"),
        ("/ a\r/ b", "/ a\r/ b"),
    ],
)
def test_normalize_path(value, expected):
    assert normalize_path(value) == expected


def test_normalized_path_reaches_the_json_arguments():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "write",
                "parameters": {
                    "type": "object",
                    "properties": {"path": STR, "content": STR},
                },
            },
        }
    ]
    block = (
        '<invoke name="write"><parameter name="path">/ Users/ me/ site/ index. html</parameter>'
        '<parameter name="content">/** a. b */\n</parameter></invoke>'
    )
    [call] = parse_tool_block(block, tools)
    assert json.loads(call.arguments) == {
        "path": "/Users/me/site/index.html",
        "content": "/** a. b */",
    }
