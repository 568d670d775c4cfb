"""Tool calls and reasoning end to end: 2 real ranks whose rank 0 writes scripted output
(tests/forced_output), driven by the official openai and anthropic SDKs."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from forced import ForcedCluster

pytestmark = pytest.mark.slow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["path"],
            },
        },
    }
]
ANTHROPIC_TOOLS = [
    {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS
]
# The chat template opens <think>: the scripts start inside the reasoning.
CALL_SCRIPT = (
    "The user wants the notes.\n</think>\n\nReading them.\n<minimax:tool_call>\n"
    '<invoke name="read_file">\n<parameter name="path">/ home/ me/ notes. md</parameter>\n'
    '<parameter name="limit">5</parameter>\n</invoke>\n</minimax:tool_call>'
)
ARGUMENTS = {"path": "/home/me/notes.md", "limit": 5}


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    with ForcedCluster(2, tiny_model, tmp_path_factory.mktemp("forced")) as forced:
        yield forced


@pytest.fixture(scope="module")
def oai(cluster):
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(cluster):
    return anthropic.Anthropic(
        base_url=cluster.server.root_url, api_key="unused", max_retries=0, timeout=120
    )


def _ask(oai, messages, **kwargs):
    return oai.chat.completions.create(
        model="default_model", messages=messages, tools=TOOLS, max_tokens=200, **kwargs
    )


def _prompt_tokens(cluster, messages) -> int:
    """What the chat template makes of the conversation, as the server should render it."""
    for message in messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    text = cluster.tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    return len(cluster.tokenizer.encode(text, add_special_tokens=False))


def test_openai_tool_call_with_reasoning(cluster, oai):
    marker = cluster.script(CALL_SCRIPT)
    response = _ask(oai, [{"role": "user", "content": f"Read my notes. {marker}"}])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Reading them."
    assert choice.message.model_extra["reasoning_content"] == "The user wants the notes."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "read_file"
    assert json.loads(call.function.arguments) == ARGUMENTS
    assert response.usage.completion_tokens == len(cluster.tokens(CALL_SCRIPT))


def test_openai_stream_with_tool_call_and_usage(cluster, oai):
    marker = cluster.script(CALL_SCRIPT)
    stream = _ask(
        oai,
        [{"role": "user", "content": f"Read my notes. {marker}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(d.model_extra.get("reasoning_content", "") for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert (reasoning, content) == ("The user wants the notes.", "Reading them.")
    assert [(c.index, c.function.name) for c in calls] == [(0, "read_file")]
    assert json.loads(calls[0].function.arguments) == ARGUMENTS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens == len(cluster.tokens(CALL_SCRIPT))


def test_openai_multi_turn_tool_conversation(cluster, oai):
    first_marker = cluster.script(CALL_SCRIPT)
    messages = [{"role": "user", "content": f"Summarize my notes. {first_marker}"}]
    reply = _ask(oai, messages).choices[0].message
    second_marker = cluster.script("Got it.</think>The notes say: buy milk.")
    messages += [
        reply.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": reply.tool_calls[0].id,
            "content": [{"type": "text", "text": f"buy milk {second_marker}"}],
        },
    ]
    response = _ask(oai, messages)
    assert response.choices[0].message.content == "The notes say: buy milk."
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == _prompt_tokens(cluster, messages)


def test_openai_tool_call_cut_by_max_tokens(cluster, oai):
    marker = cluster.script(CALL_SCRIPT)
    cut = len(cluster.tokens(CALL_SCRIPT)) - 4
    response = _ask(oai, [{"role": "user", "content": marker}], max_completion_tokens=cut)
    choice = response.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert choice.message.content.startswith("Reading them.\n<minimax:tool_call>\n<invoke")


def test_anthropic_tool_use_with_thinking(cluster, claude):
    marker = cluster.script(CALL_SCRIPT)
    request = {
        "model": "any-name-serves",
        "system": "You read files.",
        "messages": [{"role": "user", "content": f"Read my notes. {marker}"}],
        "tools": ANTHROPIC_TOOLS,
    }
    message = claude.messages.create(max_tokens=200, **request)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool_use = message.content
    assert thinking.thinking == "The user wants the notes." and text.text == "Reading them."
    assert (tool_use.name, tool_use.input) == ("read_file", ARGUMENTS)
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == len(cluster.tokens(CALL_SCRIPT))
    # Anthropic counts prompt tokens read from the prefix cache apart from input_tokens.
    prompt = message.usage.input_tokens + message.usage.cache_read_input_tokens
    assert prompt == claude.messages.count_tokens(**request).input_tokens


def test_anthropic_stream_and_tool_result_turn(cluster, claude):
    marker = cluster.script(CALL_SCRIPT)
    messages = [{"role": "user", "content": f"Read my notes. {marker}"}]
    with claude.messages.stream(
        model="m", max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        text = "".join(stream.text_stream)
        first = stream.get_final_message()
    assert text == "Reading them."
    assert [block.type for block in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[2].input == ARGUMENTS and first.stop_reason == "tool_use"
    assert first.usage.output_tokens == len(cluster.tokens(CALL_SCRIPT))

    answer = cluster.script("Done.</think>They say: buy milk. END and more")
    result = {
        "type": "tool_result",
        "tool_use_id": first.content[2].id,
        "content": f"milk {answer}",
    }
    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [result]},
    ]
    second = claude.messages.create(
        model="m", max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS, stop_sequences=["END"]
    )
    assert [(b.type, getattr(b, "text", None)) for b in second.content][-1] == (
        "text",
        "They say: buy milk.",
    )
    assert (second.stop_reason, second.stop_sequence) == ("stop_sequence", "END")
