"""MiniMax tool-call parsing, schema typing, streaming and tool_choice."""

import json
import random
import re

import pytest

from refserver.tools import (
    ContentDelta,
    OutputParser,
    ReasoningDelta,
    ToolCallEvent,
    ToolChoiceError,
    parse_output,
    plan_tools,
)
from refserver.tools.arguments import type_arguments
from refserver.tools.minimax import parse_tool_block


def tool(name: str, **properties: dict) -> dict:
    parameters = {"type": "object", "properties": properties}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [
    tool("read_file", path={"type": "string"}, limit={"type": "integer"}),
    tool("run", command={"type": "string"}, timeout={"type": "number"}),
]


def block(*invokes: str) -> str:
    return "<minimax:tool_call>\n" + "\n".join(invokes) + "\n</minimax:tool_call>"


def invoke(name: str, quote: str = '"', **params: str) -> str:
    inner = "".join(
        f"\n<parameter name={quote}{key}{quote}>{value}</parameter>"
        for key, value in params.items()
    )
    return f"<invoke name={quote}{name}{quote}>{inner}\n</invoke>"


def calls_of(text: str, tools=TOOLS, **options) -> list[tuple[str, dict]]:
    return [
        (c.name, json.loads(c.arguments)) for c in parse_output(text, tools, **options).tool_calls
    ]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (
            block(invoke("read_file", path="/a.txt", limit="5")),
            "",
            [("read_file", {"path": "/a.txt", "limit": 5})],
        ),
        (
            block(invoke("read_file", quote="'", path="/a")),
            "",
            [("read_file", {"path": "/a"})],
        ),
        (
            block(invoke("read_file", quote="", path="/a")),
            "",
            [("read_file", {"path": "/a"})],
        ),
        (
            "Let me check." + block(invoke("run", command="ls"), invoke("read_file", path="/b")),
            "Let me check.",
            [("run", {"command": "ls"}), ("read_file", {"path": "/b"})],
        ),
        (
            "A\n" + block(invoke("run", command="a")) + "\nB\n" + block(invoke("run", command="b")),
            "A\n\nB",
            [("run", {"command": "a"}), ("run", {"command": "b"})],
        ),
        (
            block(invoke("run", command="x")) + "\nDone.",
            "Done.",
            [("run", {"command": "x"})],
        ),
        ("No tools here.", "No tools here.", []),
        (
            "<minimax:tool_call>garbage</minimax:tool_call>",
            "<minimax:tool_call>garbage</minimax:tool_call>",
            [],
        ),
        (
            '<minimax:tool_call><invoke name = "run" ><parameter name= command >ls</parameter>'
            "</invoke></minimax:tool_call>",
            "",
            [("run", {"command": "ls"})],
        ),
        (
            block(invoke("unknown_tool", n="3", s="text")),
            "",
            [("unknown_tool", {"n": 3, "s": "text"})],
        ),
    ],
)
def test_parse_output_splits_content_and_calls(text, content, calls):
    result = parse_output(text, TOOLS)
    assert result.content == content
    assert calls_of(text) == calls
    assert not result.tool_call_incomplete


def test_string_values_are_verbatim_except_the_format_newlines():
    code = "\n\ndef f():\n    return '</invoke>' < 1 & 2  \n\n"
    [(_, arguments)] = calls_of(block(invoke("run", command=code)))
    assert arguments == {"command": code[1:-1]}


def test_parameter_missing_its_closing_tags_is_kept():
    text = (
        '<minimax:tool_call><invoke name="run"><parameter name="command">ls -l</minimax:tool_call>'
    )
    assert calls_of(text) == [("run", {"command": "ls -l"})]


@pytest.mark.parametrize(
    "text",
    [
        '<minimax:tool_call><invoke name="run"><parameter name="command">ls</parameter>\n'
        "</minimax:tool_call>\nDone.",
        '<minimax:tool_call><invoke name="run"><parameter name="command">ls</parameter>'
        '</invoke><invoke name="run"><parameter name="command">pwd</parameter>'
        "</minimax:tool_call>\nDone.",
    ],
)
def test_a_missing_invoke_close_still_ends_the_block(text):
    result = parse_output(text, TOOLS)
    assert [call.name for call in result.tool_calls] == ["run"] * text.count("<invoke")
    assert result.content == "Done."


# Parameter values holding the format's own tags. Each must come back whole: a closing
# tag inside a value is told apart by what follows it.
TRICKY_VALUES = [
    "a </invoke> b",
    "a </minimax:tool_call> b",
    "</invoke>\n</minimax:tool_call>",
    "done: </invoke></minimax:tool_call> and more",
    "</parameter>",
    "x </parameter> y",
    "ends with </parameter>\n</invoke>",
    "</parameter>\n</invoke>\nnot a call",
    "</parameter>\n<parameter",
    "</parameter><parameter>",
    '<minimax:tool_call>\n<invoke name="x">\n<parameter name="y">',
    'print("</minimax:tool_call>")',
]


def tricky_outputs(value: str) -> list[tuple[str, list[tuple[str, dict]]]]:
    """The value as the first parameter, the last of an invoke, and the last of a block."""
    first, last = {"content": value, "path": "/a.md"}, {"path": "/a.md", "content": value}
    ls = ("run", {"command": "ls"})
    cases = [[("write", first), ls], [("write", last), ls], [ls, ("write", last)]]
    return [
        ("Writing it." + block(*(invoke(n, **p) for n, p in calls)) + "\nDone.", calls)
        for calls in cases
    ]


TRICKY = [case for value in TRICKY_VALUES for case in tricky_outputs(value)]


@pytest.mark.parametrize(("text", "calls"), TRICKY)
def test_values_holding_closing_tags_parse_whole(text, calls):
    result = parse_output(text, TOOLS)
    assert calls_of(text) == calls
    assert result.content == "Writing it.\nDone."
    assert not result.tool_call_incomplete


@pytest.mark.parametrize(("text", "calls"), TRICKY)
def test_values_holding_closing_tags_stream_whole_at_any_split(text, calls):
    whole = stream(text, [text], starts_in_reasoning=False)
    assert [(e[2], json.loads(e[3])) for e in whole[0] if e[0] == "call"] == calls
    chunkings = [list(text)] + [[text[:i], text[i:]] for i in range(1, len(text))]
    assert all(stream(text, pieces, starts_in_reasoning=False) == whole for pieces in chunkings)


def test_a_block_cut_inside_a_tricky_value_is_incomplete():
    text = "Hi" + block(invoke("run", command="a </minimax:tool_call> b </parameter>"))
    cut = text[: text.index(" </parameter>")]
    result = parse_output(cut, TOOLS)
    assert result.tool_calls == [] and result.tool_call_incomplete
    assert result.content == cut


def test_call_ids_are_unique():
    text = block(*[invoke("run", command=str(i)) for i in range(50)])
    ids = [call.id for call in parse_output(text, TOOLS).tool_calls]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)


# (property schema, raw value, expected typed value)
TYPING = [
    ({"type": "string"}, "  42  ", "  42  "),
    ({"type": "string"}, "null", "null"),
    ({"type": "integer"}, "42", 42),
    ({"type": "integer"}, " 7 \n", 7),
    ({"type": "integer"}, "4.0", 4),
    ({"type": "integer"}, "4.5", "4.5"),
    ({"type": "integer"}, "many", "many"),
    ({"type": "integer"}, "true", "true"),
    ({"type": "number"}, "3.5", 3.5),
    ({"type": "number"}, "1e3", 1000.0),
    ({"type": "number"}, "NaN", "NaN"),
    ({"type": "boolean"}, "true", True),
    ({"type": "boolean"}, "False", False),
    ({"type": "boolean"}, "yes", "yes"),
    ({"type": "array"}, '[1, "a"]', [1, "a"]),
    ({"type": "array"}, "[1, 2", "[1, 2"),
    ({"type": "array"}, '{"a": 1}', '{"a": 1}'),
    ({"type": "object"}, '{"a": {"b": [1]}}', {"a": {"b": [1]}}),
    ({"type": "object"}, "[1]", "[1]"),
    ({"type": "null"}, "null", None),
    ({"type": ["integer", "null"]}, "null", None),
    ({"type": ["integer", "null"]}, "5", 5),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "null", None),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "x", "x"),
    ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "12", 12),
    ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "twelve", "twelve"),
    ({"enum": ["a", "b"]}, "a", "a"),
    ({"enum": [1, 2]}, "2", 2),
    ({"const": True}, "true", True),
    # No type information: best effort.
    ({}, '{"k": [1]}', {"k": [1]}),
    ({"description": "anything"}, "hello", "hello"),
    # Local references into the parameters' $defs / definitions (pydantic's nested models).
    ({"$ref": "#/$defs/Count"}, "3", 3),
    ({"$ref": "#/$defs/Count"}, "three", "three"),
    ({"$ref": "#/definitions/Flag"}, "true", True),
    ({"anyOf": [{"$ref": "#/$defs/Count"}, {"type": "null"}]}, "null", None),
    ({"$ref": "#/$defs/Word"}, "42", "42"),
    ({"$ref": "#/$defs/Loop"}, "7", 7),  # a cycle of references: best effort
    ({"$ref": "#/$defs/Missing"}, "[1]", [1]),
    ({"$ref": "#/$defs/Nested"}, "5", 5),  # contains itself through anyOf
]
DEFINITIONS = {
    "$defs": {
        "Count": {"type": "integer"},
        "Word": {"$ref": "#/$defs/Text"},
        "Text": {"type": "string"},
        "Loop": {"$ref": "#/$defs/Loop"},
        "Nested": {"anyOf": [{"$ref": "#/$defs/Nested"}, {"type": "integer"}]},
    },
    "definitions": {"Flag": {"type": "boolean"}},
}


@pytest.mark.parametrize(("schema", "raw", "expected"), TYPING)
def test_typing_by_schema(schema, raw, expected):
    parameters = {"type": "object", "properties": {"p": schema}, **DEFINITIONS}
    assert type_arguments({"p": raw}, parameters) == {"p": expected}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"k": [1]}', {"k": [1]}),
        ("[1, 2]", [1, 2]),
        ("3", 3),
        ("2.5", 2.5),
        ("true", True),
        ("null", "null"),
        ('"quoted"', '"quoted"'),
        ("hello world", "hello world"),
        ("[" * 100_000, "[" * 100_000),
    ],
)
def test_best_effort_without_schema(raw, expected):
    assert type_arguments({"p": raw}, None) == {"p": expected}


def test_arguments_are_a_json_object_string():
    [call] = parse_tool_block(invoke("read_file", path="/é", limit="1"), TOOLS)
    assert call.arguments == '{"path": "/é", "limit": 1}'


INCOMPLETE = [
    (
        "Hi" + '<minimax:tool_call>\n<invoke name="run">\n<parameter name="command">ls',
        'Hi<minimax:tool_call>\n<invoke name="run">\n<parameter name="command">ls',
        [],
    ),
    (
        block(invoke("run", command="a")) + "<minimax:tool_call><invoke",
        "<minimax:tool_call><invoke",
        [("run", {"command": "a"})],
    ),
]


@pytest.mark.parametrize(("text", "content", "calls"), INCOMPLETE)
def test_unterminated_block_becomes_content_and_is_reported(text, content, calls):
    result = parse_output(text, TOOLS)
    assert result.content == content
    assert calls_of(text) == calls
    assert result.tool_call_incomplete


def test_tool_call_parsing_off_leaves_blocks_in_content():
    text = "x " + block(invoke("run", command="ls"))
    result = parse_output(text, TOOLS, parse_tool_calls=False)
    assert result.content == text
    assert result.tool_calls == []


@pytest.mark.parametrize(
    ("text", "content"),
    [("Hello <minimax:tool", "Hello <minimax:tool"), ("a <b>", "a <b>"), ("<thi", "<thi")],
)
def test_partial_marker_at_the_end_is_content(text, content):
    assert parse_output(text, TOOLS).content == content


def test_content_streams_until_a_possible_marker():
    parser = OutputParser(TOOLS)
    assert parser.feed("Hello wor") == [ContentDelta("Hello wor")]
    assert parser.feed("ld <minimax:tool") == [ContentDelta("ld")]
    assert parser.feed("_call>" + invoke("run", command="ls")) == []
    [event] = parser.feed("</minimax:tool_call>")
    assert isinstance(event, ToolCallEvent) and event.index == 0
    assert parser.feed(" <b>") == [ContentDelta("  <b>")]  # The space held before the block.
    assert parser.finish() == []


def summarize(events: list) -> list[tuple]:
    """Events with adjacent deltas of one kind merged and call ids left out."""
    merged: list[tuple] = []
    for event in events:
        if isinstance(event, ToolCallEvent):
            merged.append(("call", event.index, event.call.name, event.call.arguments))
        else:
            kind = "content" if isinstance(event, ContentDelta) else "reasoning"
            assert isinstance(event, ContentDelta | ReasoningDelta) and event.text
            if merged and merged[-1][0] == kind:
                merged[-1] = (kind, merged[-1][1] + event.text)
            else:
                merged.append((kind, event.text))
    return merged


def stream(text: str, pieces: list[str], starts_in_reasoning: bool) -> tuple[list, bool]:
    assert "".join(pieces) == text
    parser = OutputParser(TOOLS, starts_in_reasoning=starts_in_reasoning)
    events = [event for piece in pieces for event in parser.feed(piece)] + parser.finish()
    return summarize(events), parser.tool_call_incomplete


def random_split(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, len(text) // 4)))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


OUTPUTS = [
    (False, "<think>\nPlan.\n</think>\n\nSure." + block(invoke("run", command="a < b"))),
    (True, "plan </think> text" + block(invoke("read_file", path="/ a. txt")) + "\n\nafter <"),
    (False, "A" + block(invoke("run", command="1")) + "B" + block(invoke("run", command="2"))),
    (False, "cut " + block(invoke("run", command="x"))[:-5]),
    (True, "only thinking, never closed <minimax:tool_call>"),
    (
        False,
        "<<minimax:tool_call>" + invoke("run", command="</minimax:tool") + "</minimax:tool_call>",
    ),
    (
        False,
        '<minimax:tool_call><invoke name="run"><parameter name="command">ls</minimax:tool_call>',
    ),
    (False, "x" + block(invoke("run", command="a </minimax:tool_call> b </parameter> c"))[:-40]),
]


@pytest.mark.parametrize(("starts_in_reasoning", "text"), OUTPUTS)
def test_every_chunking_gives_the_same_result(starts_in_reasoning, text):
    chunkings = [[text], list(text)] + [random_split(text, seed) for seed in range(5)]
    results = [stream(text, pieces, starts_in_reasoning) for pieces in chunkings]
    assert all(result == results[0] for result in results)
    events, incomplete = results[0]
    parsed = parse_output(text, TOOLS, starts_in_reasoning=starts_in_reasoning)
    assert "".join(e[1] for e in events if e[0] == "content") == parsed.content
    assert "".join(e[1] for e in events if e[0] == "reasoning") == parsed.reasoning
    assert [e[1] for e in events if e[0] == "call"] == list(range(len(parsed.tool_calls)))
    assert incomplete == parsed.tool_call_incomplete


def test_long_block_fed_token_by_token_is_fast():
    text = block(invoke("run", command="x" * 200_000))
    parser = OutputParser(TOOLS)
    events = [e for i in range(0, len(text), 4) for e in parser.feed(text[i : i + 4])]
    assert [json.loads(e.call.arguments)["command"] for e in events] == ["x" * 200_000]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "names", "parse", "hint"),
    [
        (None, True, ["read_file", "run"], True, None),
        ("auto", True, ["read_file", "run"], True, None),
        ("none", True, [], False, None),
        ("required", True, ["read_file", "run"], True, "at least one"),
        ({"type": "function", "function": {"name": "run"}}, True, ["run"], True, "`run`"),
        ("auto", False, ["read_file", "run"], True, "at most one"),
    ],
)
def test_plan_tools(tool_choice, parallel, names, parse, hint):
    plan = plan_tools(TOOLS, tool_choice, parallel_tool_calls=parallel)
    assert [t["function"]["name"] for t in plan.tools] == names
    assert plan.parse_tool_calls is parse
    assert (plan.system_hint is None) if hint is None else (hint in plan.system_hint)


def test_plan_tools_without_tools_parses_nothing():
    assert plan_tools(None).parse_tool_calls is False


@pytest.mark.parametrize(
    ("tools", "tool_choice", "message"),
    [
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, '"nope"'),
        (TOOLS, "sometimes", "sometimes"),
        (TOOLS, {"type": "function"}, "tool_choice must be"),
        ([], "required", "non-empty"),
    ],
)
def test_plan_tools_rejects_bad_choices(tools, tool_choice, message):
    with pytest.raises(ToolChoiceError, match=re.escape(message)):
        plan_tools(tools, tool_choice)


@pytest.mark.parametrize(
    "parameters",
    [
        {"properties": {"p": {"enum": 3}}},
        {"properties": {"p": {"anyOf": 5, "oneOf": None}}},
        {"properties": {"p": {"allOf": "x", "enum": "ab"}}},
    ],
)
def test_a_malformed_schema_never_fails_reading_a_call(parameters):
    """A tool offered without constraint may carry a schema the grammar would refuse: a
    call the model writes is read by what can be made of it."""
    assert type_arguments({"p": "7"}, parameters) == {"p": 7}
