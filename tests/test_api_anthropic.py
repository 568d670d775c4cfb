"""The Anthropic Messages API against the fake engine with scripted output: request
mapping through the tiny model's chat template, content blocks, stop reasons, usage,
SSE events, count_tokens, errors and auth."""

# ruff: noqa: F401, F811 (pytest fixtures imported from agent_fakes)

from __future__ import annotations

import json
import re
import threading

import pytest
from agent_fakes import prompt_of, scripted, tiny_tokenizer, tool_block
from api_fakes import FakeEngine, settings

from refserver.api import create_app
from refserver.api.anthropic.schemas import MessagesRequest
from refserver.api.shared.output_constraint import reply_for
from refserver.api.shared.prompting import Prompt
from refserver.engine.interface import CapacityError, NotReadyError, QueueFullError

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
USER = [{"role": "user", "content": "Read the notes."}]
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
        },
    }
]
CALL = tool_block(("read_file", {"path": "/ tmp/ notes. md", "limit": "10"}))
OUTPUT = "\nLet me look.\n</think>\n\nReading it now.\n" + CALL


def _post(client, **fields):
    return client.post(MESSAGES, json={"max_tokens": 200, "messages": USER, **fields})


def _sse(response) -> list[tuple[str, dict]]:
    """(event name, data) pairs of an Anthropic SSE body."""
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_thinking_text_and_tool_use_blocks(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    body = _post(client, tools=TOOLS).get_json()
    assert body["id"].startswith("msg_") and body["type"] == "message"
    assert body["role"] == "assistant" and body["model"] == "tiny-test-model"
    thinking, text, tool_use = body["content"]
    assert thinking == {"type": "thinking", "thinking": "Let me look.", "signature": ""}
    assert text == {"type": "text", "text": "Reading it now."}
    assert tool_use["type"] == "tool_use" and tool_use["id"].startswith("call_")
    assert (tool_use["name"], tool_use["input"]) == (
        "read_file",
        {"path": "/tmp/notes.md", "limit": 10},
    )
    assert (body["stop_reason"], body["stop_sequence"]) == ("tool_use", None)
    tokens = len(tiny_tokenizer.encode(OUTPUT, add_special_tokens=False)) + 1  # and EOS
    assert body["usage"]["output_tokens"] == tokens
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["cache_read_input_tokens"] == 0


def test_stream_events(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    events = _sse(_post(client, tools=TOOLS, stream=True))
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == [
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0
    blocks = [(d["index"], d["content_block"]) for n, d in events if n == "content_block_start"]
    assert [(i, b["type"]) for i, b in blocks] == [(0, "thinking"), (1, "text"), (2, "tool_use")]
    assert blocks[2][1]["input"] == {}
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1, 2]
    deltas = [(d["index"], d["delta"]) for n, d in events if n == "content_block_delta"]
    assert "".join(d["thinking"] for i, d in deltas if i == 0) == "Let me look."
    assert "".join(d["text"] for i, d in deltas if i == 1) == "Reading it now."
    (tool_delta,) = [d for i, d in deltas if i == 2]
    assert tool_delta["type"] == "input_json_delta"
    assert json.loads(tool_delta["partial_json"]) == {"path": "/tmp/notes.md", "limit": 10}
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"]["output_tokens"] > 0


def test_stream_start_and_end_split_the_prompt_alike(tiny_tokenizer):
    """message_start's usage already counts the cache reads apart from input_tokens, as
    message_delta's does: a client summing one event's fields with the other's counts
    every prompt token once."""
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hi"), cached_tokens=5)
    client = create_app(engine, tiny_tokenizer, settings(context_length=4096)).test_client()
    events = dict(_sse(_post(client, stream=True)))
    start, end = events["message_start"]["message"]["usage"], events["message_delta"]["usage"]
    prompt = len(engine.requests[-1].prompt_tokens)
    split = {"input_tokens": prompt - 5, "cache_read_input_tokens": 5}
    assert {key: start[key] for key in split} == split == {key: end[key] for key in split}
    assert (start["output_tokens"], start["cache_creation_input_tokens"]) == (0, 0)


def test_a_queued_stream_keeps_alive_with_comments_until_message_start(tiny_tokenizer):
    """message_start waits for admission; before it, a `ping` event would be an event
    before message_start (clients that check the order reject that), so SSE comments."""
    queued = threading.Event()
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hi"), queued=queued)
    app = create_app(engine, tiny_tokenizer, settings(context_length=4096, keepalive_seconds=0.05))
    threading.Timer(0.4, queued.set).start()
    raw = _post(app.test_client(), stream=True).get_data()
    before, after = raw.split(b"event: message_start", 1)
    assert before.count(b": keep-alive\n\n") >= 3 and b"event:" not in before
    assert [name for name, _ in _sse(_post(app.test_client(), stream=True))][:2] == [
        "message_start",
        "ping",
    ]


@pytest.mark.parametrize("thinking", ["enabled", "disabled"])
def test_a_long_prefill_keeps_a_thinking_reply_alive_with_content(tiny_tokenizer, thinking):
    """Claude Code gives up after 300 s without content (pings do not count): while the
    first token waits, a reply that starts in its reasoning gets empty thinking deltas."""
    gate = threading.Event()
    output = "Let me see.</think>Hi." if thinking == "enabled" else "Hi."
    engine = FakeEngine(tiny_tokenizer.encode(output), gate=gate)
    app = create_app(engine, tiny_tokenizer, settings(context_length=4096, keepalive_seconds=0.05))
    threading.Timer(0.4, gate.set).start()
    mode = {"type": thinking} | ({"budget_tokens": 1024} if thinking == "enabled" else {})
    events = _sse(_post(app.test_client(), stream=True, thinking=mode))
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    waiting = names[2 : names.index("content_block_stop")]
    if thinking == "enabled":
        assert "ping" not in waiting and waiting.count("content_block_start") == 1
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        assert deltas[:3] == [{"type": "thinking_delta", "thinking": ""}] * 3
        assert "".join(d.get("thinking", "") for d in deltas) == "Let me see."
        assert all(data["index"] == 0 for name, data in events if "thinking" in str(data))
    else:
        assert names[2:5] == ["ping"] * 3
        assert all("thinking" not in str(data) for _, data in events)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "output, fields, reason, sequence",
    [
        ("</think>Hello there.", {}, "end_turn", None),
        (
            "</think>Hello there. The end.",
            {"stop_sequences": ["The end"]},
            "stop_sequence",
            "The end",
        ),
        ("</think>Hello there, a long answer.", {"max_tokens": 6}, "max_tokens", None),
        # In the thinking, a stop sequence waits for the answer.
        (
            "The end?</think>Hi. The end.",
            {"stop_sequences": ["The end"]},
            "stop_sequence",
            "The end",
        ),
        ("The end?</think>Hi.", {"stop_sequences": ["The end"]}, "end_turn", None),
        ("</think>Let me read." + CALL, {"max_tokens": 12}, "max_tokens", None),
        (
            "</think>Let me read." + CALL,
            {"stop_sequences": ['"limit">']},
            "stop_sequence",
            '"limit">',
        ),
    ],
)
def test_stop_reasons(tiny_tokenizer, stream, output, fields, reason, sequence):
    client, _ = scripted(tiny_tokenizer, output)
    response = _post(client, tools=TOOLS, stream=stream, **fields)
    if stream:
        final = [data for name, data in _sse(response) if name == "message_delta"][-1]["delta"]
    else:
        final = response.get_json()
    assert (final["stop_reason"], final["stop_sequence"]) == (reason, sequence)


@pytest.mark.parametrize("fields", [{"max_tokens": 12}, {"stop_sequences": ['"limit">']}])
def test_a_cut_tool_call_is_kept_as_text(tiny_tokenizer, fields):
    client, _ = scripted(tiny_tokenizer, "</think>Let me read." + CALL)
    body = _post(client, tools=TOOLS, **fields).get_json()
    (text,) = body["content"]
    assert text["type"] == "text" and text["text"].startswith("Let me read.<minimax:tool_call>")


def test_conversation_maps_to_the_chat_template(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>Done.")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Read it.", "cache_control": {}}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need the file.", "signature": "sig"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "/a"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "line one"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "image"}]},
                {"type": "text", "text": "Summarize."},
            ],
        },
    ]
    system = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Be kind."}]
    response = _post(client, system=system, messages=messages, tools=TOOLS)
    assert response.status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert prompt.startswith("]~!b[]~b]system\nYou are terse.\nBe kind.\n\n# Tools")
    assert '"name": "read_file"' in prompt and '"description": "Read a file"' in prompt
    assert "]~b]user\nRead it.[e~[" in prompt
    # The template keeps reasoning only after the last user text (so not here).
    assert (
        "]~b]ai\nReading.\n<minimax:tool_call>\n"
        '<invoke name="read_file">\n<parameter name="path">/a</parameter>\n</invoke>\n'
        "</minimax:tool_call>[e~[" in prompt
    )
    assert (
        "]~b]tool\n<response>line one</response>\n"
        "<response>[image omitted: this model reads text only]</response>[e~[\n"
        "]~b]user\nSummarize.[e~[\n]~b]ai\n<think>\n"
    ) in prompt


def test_a_system_message_mid_conversation_reaches_the_model_as_a_reminder(tiny_tokenizer):
    """Claude Code sends one (beta mid-conversation-system); a 400 there ended its
    first request in its default setup."""
    client, engine = scripted(tiny_tokenizer, "</think>Done.")
    messages = [
        {"role": "user", "content": "Hi."},
        {"role": "system", "content": [{"type": "text", "text": "Agents: explore."}]},
        {"role": "user", "content": "Go."},
    ]
    assert _post(client, messages=messages).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert (
        "]~b]user\nHi.[e~[\n]~b]user\n<system-reminder>\nAgents: explore.\n"
        "</system-reminder>[e~[\n]~b]user\nGo.[e~["
    ) in prompt


def test_claude_codes_billing_header_stays_out_of_the_prompt(tiny_tokenizer):
    """It changes every session: kept, it would defeat the prefix cache."""
    client, engine = scripted(tiny_tokenizer, "</think>Done.")
    prompts = []
    for version in ("2.1.197.a3f", "2.1.197.0c1"):
        header = f"x-anthropic-billing-header: cc_version={version}; cc_entrypoint=cli;"
        system = [{"type": "text", "text": header}, {"type": "text", "text": "You are terse."}]
        assert _post(client, system=system).status_code == 200
        prompts.append(engine.requests[-1].prompt_tokens)
    assert prompts[0] == prompts[1]
    assert "billing" not in prompt_of(engine, tiny_tokenizer)
    assert "You are terse." in prompt_of(engine, tiny_tokenizer)


@pytest.mark.parametrize(
    "fields",
    [
        {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        {"output_format": {"type": "json_schema", "schema": {"type": "object"}}},
        {"output_config": {"effort": "low"}},
    ],
)
def test_structured_output_is_enforced(tiny_tokenizer, fields):
    """Claude Code asks for JSON this way (hooks, titles): it was dropped, unenforced."""
    client, engine = scripted(tiny_tokenizer, "x")
    assert _post(client, **fields).status_code == 200
    constrained = "format" in fields.get("output_config", {}) or "output_format" in fields
    assert (engine.requests[-1].sampling.constraint is not None) is constrained


def test_max_tokens_beyond_the_cap_reads_as_an_overflow_claude_code_retries(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "x", max_tokens_cap=1000)
    message = _error(_post(client, max_tokens=64000), 400, "invalid_request_error")
    match = re.match(
        r"input length and `max_tokens` exceed context limit: (\d+) \+ 64000 > (\d+)", message
    )
    assert match and int(match.group(2)) == int(match.group(1)) + 1000
    assert engine.requests == []
    # What Claude Code asks next (the limit less the input, less its margin) is served.
    assert (
        _post(client, max_tokens=int(match.group(2)) - int(match.group(1)) - 1).status_code == 200
    )


def test_thinking_is_rendered_back_within_a_tool_loop(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>Done.")
    thinking = {"type": "thinking", "thinking": "Need the file.", "signature": ""}
    use = {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "/a"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}
    messages = [
        *USER,
        {"role": "assistant", "content": [thinking, use]},
        {"role": "user", "content": [result]},
    ]
    assert _post(client, messages=messages, tools=TOOLS).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert "]~b]ai\n<think>\nNeed the file.\n</think>\n\n\n<minimax:tool_call>" in prompt


@pytest.mark.parametrize(
    "tool_choice, rendered, hint",
    [
        ({"type": "auto"}, True, None),
        ({"type": "any"}, True, "You must call at least one of the provided tools."),
        ({"type": "tool", "name": "read_file"}, True, "You must call the tool `read_file`."),
        ({"type": "auto", "disable_parallel_tool_use": True}, True, "Call at most one tool"),
        ({"type": "none"}, False, None),
    ],
)
def test_tool_choice(tiny_tokenizer, tool_choice, rendered, hint):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    assert _post(client, tools=TOOLS, tool_choice=tool_choice).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert ("<tools>" in prompt) is rendered
    assert hint is None or hint in prompt


@pytest.mark.parametrize("kind, opens", [("enabled", True), ("disabled", False)])
def test_thinking_switches_the_template(tiny_tokenizer, kind, opens):
    client, engine = scripted(tiny_tokenizer, "Hi.")
    thinking = {"type": kind, "budget_tokens": 1024} if kind == "enabled" else {"type": kind}
    body = _post(client, thinking=thinking).get_json()
    assert prompt_of(engine, tiny_tokenizer).endswith("<think>\n") is opens
    assert body["content"][0]["type"] == ("thinking" if opens else "text")


@pytest.mark.parametrize(
    "thinking, budget, bound",
    [
        ({"type": "enabled", "budget_tokens": 1024}, 1024, True),
        # Held below max_tokens, where it cannot bind (as Claude Code's 31999 of 32000):
        # no constraint, so greedy output stays unconstrained greedy output.
        ({"type": "enabled", "budget_tokens": 5000}, 1999, False),
        ({"type": "enabled", "budget_tokens": 1999}, 1999, False),
        ({"type": "enabled"}, None, False),
        ({"type": "disabled", "budget_tokens": 1024}, None, False),
        (None, None, False),
    ],
)
def test_a_thinking_budget_bounds_the_reasoning(tiny_tokenizer, thinking, budget, bound):
    """budget_tokens bounds the reasoning as a constraint closes it: `</think>` comes by
    then, whatever else the reply may be."""
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    body = {"max_tokens": 2000, "messages": USER}
    body |= {} if thinking is None else {"thinking": thinking}
    assert client.post(MESSAGES, json=body).status_code == 200
    assert MessagesRequest.model_validate(body).sampling().thinking_budget == budget
    assert (engine.requests[-1].sampling.constraint is not None) is bound


@pytest.mark.parametrize(
    "asked, tool_choice, budget, bound",
    [
        (100, None, 100, True),
        (3000, None, 3000, False),  # beyond max_tokens: binds nothing
        (100, "any", 100, True),
        (3000, "any", 1000, False),  # a forced call keeps half of max_tokens for itself
        (None, "any", 1000, False),
    ],
)
def test_a_thinking_budget_beside_a_constrained_answer(
    tiny_tokenizer, asked, tool_choice, budget, bound
):
    body = {"max_tokens": 2000, "messages": USER, "tools": TOOLS}
    body |= {} if asked is None else {"thinking": {"type": "enabled", "budget_tokens": asked}}
    body |= {} if tool_choice is None else {"tool_choice": {"type": tool_choice}}
    prompt = Prompt([], "]~b]ai\n<think>\n")  # it opens the reasoning
    sampling = MessagesRequest.model_validate(body).sampling()
    reply = reply_for(sampling, prompt, 2000)
    assert (reply is not None) is (bound or tool_choice is not None)
    if reply is not None:
        assert (reply.thinking_budget, reply.bounded_thinking) == (budget, bound)


def test_sampling_fields_reach_the_engine(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    _post(client, max_tokens=33, temperature=0.5, top_p=0.9, top_k=7)
    request = engine.requests[-1]
    assert request.max_tokens == 33
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.5, 0.9, 7)


def test_count_tokens_equals_the_prompt_of_the_same_request(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    fields = {"system": "Be terse.", "messages": USER, "tools": TOOLS}
    counted = client.post(COUNT, json={"model": "claude-x", **fields}).get_json()
    body = client.post(MESSAGES, json={"max_tokens": 10, **fields}).get_json()
    assert counted == {"input_tokens": len(engine.requests[-1].prompt_tokens)}
    assert body["usage"]["input_tokens"] == counted["input_tokens"]


def _error(response, status, kind):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"messages": USER}, "max_tokens"),
        ({"max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {"max_tokens": 5, "messages": [{"role": "system", "content": [{"type": "image"}]}]},
            "system messages cannot hold image blocks",
        ),
        (
            {"max_tokens": 5, "messages": USER, "tools": [{**TOOLS[0], "name": "a>b"}]},
            "a tool name may not contain",
        ),
        ({"max_tokens": 5, "messages": USER, "temperature": 1.5}, "temperature"),
        ({"max_tokens": 5, "messages": USER, "stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "content"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}],
                    }
                ],
            },
            "tool_use",
        ),
        (
            {
                "max_tokens": 5,
                "messages": USER,
                "tools": [{"type": "web_search_20250305", "name": "w"}],
            },
            "tools[0]",
        ),
        ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "tool"}}, "name"),
        ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}}, "tools"),
        ({"max_tokens": 10**6, "messages": USER}, "max_tokens"),
    ],
)
def test_invalid_requests_are_anthropic_400s(tiny_tokenizer, body, words):
    client, engine = scripted(tiny_tokenizer, "x")
    message = _error(client.post(MESSAGES, json=body), 400, "invalid_request_error")
    assert words in message
    assert engine.requests == []


def test_bad_json_and_routing_errors(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, "x")
    bad = client.post(MESSAGES, data=b"{", headers={"Content-Type": "application/json"})
    _error(bad, 400, "invalid_request_error")
    _error(client.get(MESSAGES), 405, "invalid_request_error")
    _error(client.post(MESSAGES + "/nope", json={}), 404, "not_found_error")
    big = client.post(COUNT, data=b"x" * (17 * 2**20), headers={"Content-Type": "text/plain"})
    _error(big, 413, "request_too_large")


@pytest.mark.parametrize(
    "error, status, kind",
    [
        (QueueFullError("busy", retry_after_seconds=3), 429, "rate_limit_error"),
        (NotReadyError("loading"), 503, "overloaded_error"),
    ],
)
def test_engine_refusals(tiny_tokenizer, error, status, kind):
    client, engine = scripted(tiny_tokenizer, "x")
    engine.submit_error = error
    _error(_post(client), status, kind)


@pytest.mark.parametrize(
    "context, max_tokens, refusal",
    [
        (1000, 990, r"input length and `max_tokens` exceed context limit: (\d+) \+ 990 > 1000, "),
        (8, 4, r"prompt is too long: (\d+) tokens > 7 maximum$"),
    ],
)
def test_context_overflows_in_anthropics_words(tiny_tokenizer, context, max_tokens, refusal):
    """Claude Code matches these texts: it retries with a smaller max_tokens, or compacts."""
    engine = FakeEngine(tiny_tokenizer.encode("x"))
    client = create_app(engine, tiny_tokenizer, settings(context_length=context)).test_client()
    message = _error(_post(client, max_tokens=max_tokens), 400, "invalid_request_error")
    match = re.match(refusal, message)
    prompt = len(tiny_tokenizer.apply_chat_template(USER, add_generation_prompt=True))
    assert match and int(match.group(1)) >= min(prompt, context) and engine.requests == []


@pytest.mark.parametrize(
    "limit, longest, refusal",
    [
        (512, 255, "input length and `max_tokens` exceed context limit: 100 + 900 > 512, "),
        (80, 79, "prompt is too long: 100 tokens > 79 maximum"),
    ],
)
def test_kv_capacity_refusals_in_anthropics_words(tiny_tokenizer, limit, longest, refusal):
    client, engine = scripted(tiny_tokenizer, "x")
    engine.submit_error = CapacityError("does not fit", 100, 900, limit, longest)
    assert _error(_post(client), 400, "invalid_request_error").startswith(refusal)


def test_failure_mid_stream_is_an_error_event(tiny_tokenizer):
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hello there friend"), fail_after=4)
    client = create_app(engine, tiny_tokenizer, settings(context_length=4096)).test_client()
    events = _sse(_post(client, stream=True))
    name, data = events[-1]
    assert name == "error" and data["type"] == "error"
    assert data["error"] == {"type": "overloaded_error", "message": "rank 1 was lost"}
    assert "message_stop" not in [n for n, _ in events]


def test_non_streamed_failure_is_an_anthropic_503(tiny_tokenizer):
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hello"), fail_after=1)
    client = create_app(engine, tiny_tokenizer, settings(context_length=4096)).test_client()
    _error(_post(client), 503, "overloaded_error")


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"x-api-key": "sk-test"}, 200),
        ({"Authorization": "Bearer sk-test"}, 200),
        ({"x-api-key": "wrong"}, 401),
        ({"x-api-key": "sk-test-and-more"}, 401),
        ({"Authorization": "Bearer wrong", "x-api-key": ""}, 401),
        ({}, 401),
    ],
)
def test_auth_takes_x_api_key_or_bearer(tiny_tokenizer, headers, status):
    client, engine = scripted(tiny_tokenizer, "</think>ok", api_keys=("sk-test",))
    for path in (MESSAGES, COUNT):
        response = client.post(path, json={"max_tokens": 5, "messages": USER}, headers=headers)
        if status == 401:
            assert "x-api-key" in _error(response, 401, "authentication_error")
        else:
            assert response.status_code == 200
    assert len(engine.requests) == (1 if status == 200 else 0)


def test_a_failed_tool_result_says_so(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    use = {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "/a"}}
    failed = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "No such file"}
    failed["is_error"] = True
    messages = [
        *USER,
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [failed]},
    ]
    assert _post(client, messages=messages, tools=TOOLS).status_code == 200
    assert "<response>Error: No such file</response>" in prompt_of(engine, tiny_tokenizer)


PREFILLS = [
    ("string", "The answer is", True),
    ("text blocks", [{"type": "text", "text": "The answer is"}], True),
    ("tool use", [{"type": "tool_use", "id": "t1", "name": "read_file", "input": {}}], False),
]


@pytest.mark.parametrize(
    "content, continued", [p[1:] for p in PREFILLS], ids=[p[0] for p in PREFILLS]
)
def test_a_conversation_ending_on_assistant_text_is_continued(tiny_tokenizer, content, continued):
    client, engine = scripted(tiny_tokenizer, " four.")
    messages = [*USER, {"role": "assistant", "content": content}]
    body = _post(client, messages=messages, tools=TOOLS).get_json()
    prompt = prompt_of(engine, tiny_tokenizer)
    assert prompt.endswith("]~b]ai\nThe answer is") is continued, prompt[-80:]
    assert prompt.endswith("]~b]ai\n<think>\n") is not continued
    if continued:  # the reply holds only what follows the prefill, as Anthropic's does
        assert body["content"] == [{"type": "text", "text": " four."}]
    counted = client.post(COUNT, json={"messages": messages, "tools": TOOLS}).get_json()
    assert counted == {"input_tokens": len(engine.requests[-1].prompt_tokens)}
