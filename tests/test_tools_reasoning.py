"""<think> separation: reasoning_content versus content, whole and streamed."""

import pytest

from refserver.tools import (
    ContentDelta,
    OutputParser,
    ReasoningDelta,
    parse_output,
    prompt_opens_reasoning,
)

CALL = '<minimax:tool_call><invoke name="f"><parameter name="a">1</parameter></invoke>'
CALL += "</minimax:tool_call>"


# (starts_in_reasoning, output, expected reasoning, expected content)
CASES = [
    (False, "<think>\nLet me see.\n</think>\n\nHello.", "Let me see.", "Hello."),
    (True, "\nLet me see.\n</think>\n\nHello.", "Let me see.", "Hello."),
    (True, "I was cut off by max_tokens", "I was cut off by max_tokens", ""),
    (False, "<think>never closed", "never closed", ""),
    (False, "Plain answer.", "", "Plain answer."),
    (False, "<think></think>Answer", "", "Answer"),
    (True, "</think>Answer", "", "Answer"),
    (False, "<think>a</think>b<think>c</think>d", "ac", "bd"),
    (False, "<think>a\n\n</think>b<think>\n\nc</think>d", "a\n\n\n\nc", "bd"),
    (True, "x <minimax:tool_call> y </think> z", "x <minimax:tool_call> y", "z"),
    (False, "text </think> more", "", "text </think> more"),
    (True, "<think> is just text here</think>ok", "<think> is just text here", "ok"),
    (False, "<think>\nPlan.\n</think>\n\n" + CALL, "Plan.", ""),
    (True, "Plan.</think>" + CALL + "\nDone", "Plan.", "Done"),
    (True, "", "", ""),
]


@pytest.mark.parametrize(("starts_in_reasoning", "text", "reasoning", "content"), CASES)
def test_reasoning_and_content(starts_in_reasoning, text, reasoning, content):
    result = parse_output(text, None, starts_in_reasoning=starts_in_reasoning)
    assert (result.reasoning, result.content) == (reasoning, content)


def test_tool_call_after_reasoning_is_parsed():
    result = parse_output("<think>Plan.</think>" + CALL, None)
    assert [call.name for call in result.tool_calls] == ["f"]


def test_reasoning_streams_before_the_closing_tag():
    parser = OutputParser(starts_in_reasoning=True)
    assert parser.feed("\nStep one") == [ReasoningDelta("Step one")]
    assert parser.feed(", step two.\n</th") == [ReasoningDelta(", step two.")]
    assert parser.feed("ink>\n\nAns") == [ContentDelta("Ans")]
    assert parser.feed("wer\n") == [ContentDelta("wer")]
    assert parser.finish() == []


def test_opening_tag_split_across_deltas():
    parser = OutputParser()
    assert parser.feed("<") == []
    assert parser.feed("thin") == []
    assert parser.feed("k>idea") == [ReasoningDelta("idea")]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("]~b]ai\n<think>\n", True),
        ("<think>", True),
        ("]~b]ai\n", False),
        ("<think>x</think>\n", False),
        ("", False),
    ],
)
def test_prompt_opens_reasoning(prompt, expected):
    assert prompt_opens_reasoning(prompt) is expected
