"""Undo the spaces MiniMax's tokenizer puts inside file paths.

MiniMax-M2 often writes a path as "/ Users/ me/ site/ index. html". We remove the spaces
next to "/" and "." only where a path is certain, so that code, commands and prose are
never rewritten. A value is normalized only when all three hold:

- its parameter holds a path (``is_path_param``: judged by the schema property name,
  else by its description);
- it is single-line;
- it is path-like once that spacing is removed: it starts with "/", "~/", "./" or "../".

Trade-off: only spaces adjacent to "/" or "." are removed, so "/Users/me/My Documents/a.txt"
keeps its inner space, but a real name with a space next to a dot or slash (such as
"/tmp/notes .txt") loses it. Windows paths ("C:\\Users\\me") and URLs are not path-like
and are left alone.
"""

from __future__ import annotations

import re

# The last word of a property name that says "this holds a path".
_PATH_NAME_WORDS = frozenset(
    {
        "path",
        "paths",
        "filepath",
        "filepaths",
        "file",
        "files",
        "filename",
        "filenames",
        "directory",
        "directories",
        "dir",
        "dirs",
        "dirname",
        "cwd",
        "workdir",
        "folder",
        "folders",
        "destination",
        "dest",
    }
)
# Words in a property name that mark text, code or commands: these never hold a path
# by description alone.
_NON_PATH_NAME_WORDS = frozenset(
    {
        "content",
        "contents",
        "text",
        "code",
        "command",
        "cmd",
        "script",
        "pattern",
        "regex",
        "glob",
        "query",
        "url",
        "uri",
        "body",
        "message",
        "prompt",
        "string",
        "str",
        "description",
    }
)
_PATH_DESCRIPTION = re.compile(
    r"\b(?:path|paths|file ?path|file ?name|directory|directories|folder|cwd)\b", re.IGNORECASE
)
_NAME_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SPACED_SEPARATOR = re.compile(r" *([/.]) *")
_PATH_PREFIXES = ("/", "~/", "./", "../")


def _name_words(name: str) -> list[str]:
    """Split snake_case, kebab-case and camelCase names into lower-case words."""
    return [word.lower() for word in _NAME_WORD.findall(name)]


def is_path_param(name: str, schema: dict | None = None) -> bool:
    """True when the parameter holds a path, judged by its name, else its description."""
    words = _name_words(name)
    if not words:
        return False
    if words[-1] in _PATH_NAME_WORDS or "".join(words) in _PATH_NAME_WORDS:
        return True
    if _NON_PATH_NAME_WORDS.intersection(words):
        return False
    description = schema.get("description") if isinstance(schema, dict) else None
    return isinstance(description, str) and bool(_PATH_DESCRIPTION.search(description))


def normalize_path(value: str) -> str:
    """Remove spaces around "/" and "." when ``value`` is a single-line path, else return it."""
    if "\n" in value or "\r" in value:
        return value
    squeezed = _SPACED_SEPARATOR.sub(r"\1", value)
    return squeezed if squeezed.startswith(_PATH_PREFIXES) else value
