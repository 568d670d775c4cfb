"""OpenAI chat completions for agents, against the fake engine with scripted output and
the tiny model's MiniMax-style chat template: reasoning_content, tool_calls,
finish_reason, tool_choice, enable_thinking, and agent loops through the template."""

# ruff: noqa: F401, F811 (pytest fixtures imported from agent_fakes)

from __future__ import annotations

import pytest
from agent_fakes import (
    TOOLS,
    arguments,
    no_nulls,
    prompt_of,
    scripted,
    tiny_tokenizer,
    tool_block,
)
from api_fakes import sse_events

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Read the notes, then list the directory."}]
READ = ("read_file", {"path": "/ home/ me/ notes. txt", "limit": "20"})
LIST = ("run", {"command": "ls -la ./src"})
# The template opens <think>, so the model's output starts inside its reasoning.
OUTPUT = (
    "\nThe user wants two things.\n</think>\n\nI will read the notes first.\n"
    + tool_block(READ)
    + "\n"
    + tool_block(LIST)
)


def _chat(client, **fields):
    return client.post(CHAT, json={"messages": USER, "tools": TOOLS, **fields})


def _stream(client, **fields) -> list[dict]:
    events = sse_events(_chat(client, stream=True, **fields).get_data())
    assert events[-1] == "[DONE]"
    return events[:-1]


def test_reasoning_content_and_tool_calls(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    choice = _chat(client).get_json()["choices"][0]
    message = choice["message"]
    assert message["reasoning_content"] == "The user wants two things."
    assert message["content"] == "I will read the notes first."
    assert [call["function"]["name"] for call in message["tool_calls"]] == ["read_file", "run"]
    assert arguments(message["tool_calls"][0]) == {"path": "/home/me/notes.txt", "limit": 20}
    assert arguments(message["tool_calls"][1]) == {"command": "ls -la ./src"}
    ids = [call["id"] for call in message["tool_calls"]]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert all(call["type"] == "function" and "index" not in call for call in message["tool_calls"])
    assert choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "output, content",
    [
        ("</think>" + tool_block(LIST), None),  # calls alone: null, as OpenAI sends it
        ("</think>Done.", "Done."),
        ("still thinking", ""),  # reasoning alone (cut by max_tokens): empty text
    ],
)
def test_message_content_beside_calls(tiny_tokenizer, output, content):
    client, _ = scripted(tiny_tokenizer, output)
    assert _chat(client).get_json()["choices"][0]["message"]["content"] == content


@pytest.mark.parametrize(
    "output, thinking, reasoning",
    [
        (OUTPUT, True, "\nThe user wants two things.\n</think>"),  # the template opened it
        ("Hi <think>hm</think> there", False, "<think>hm</think>"),  # the model opened it
        ("Hello there", False, ""),
        ("still thinking", True, "still thinking"),  # cut by max_tokens: all of it
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_usage_counts_the_reasoning_tokens(tiny_tokenizer, output, thinking, reasoning, stream):
    """completion_tokens_details.reasoning_tokens, as OpenAI reports it for reasoning
    models (the AI SDK's reasoningTokens)."""
    client, _ = scripted(tiny_tokenizer, output)
    fields = {"chat_template_kwargs": {"enable_thinking": thinking}}
    if stream:
        fields |= {"stream_options": {"include_usage": True}}
        usage = _stream(client, **fields)[-1]["usage"]
    else:
        usage = _chat(client, **fields).get_json()["usage"]
    expected = len(tiny_tokenizer.encode(reasoning, add_special_tokens=False))
    assert usage["completion_tokens_details"] == {"reasoning_tokens": expected}
    assert expected <= usage["completion_tokens"]


def test_stream_deltas(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    chunks = _stream(client, stream_options={"include_usage": True})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all("role" not in d for d in deltas[1:])
    assert all(no_nulls(d) for d in deltas)
    kinds = [next(iter(d)) for d in deltas[1:] if d]
    # Reasoning, then content as it comes (before the call is complete), then each call.
    first_call = kinds.index("tool_calls")
    assert set(kinds[:first_call]) == {"reasoning_content", "content"}
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning_content")
    assert kinds[first_call:] == ["tool_calls", "tool_calls"]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert [[c["index"] for c in call] for call in calls] == [[0], [1]]
    assert all(set(c[0]) == {"index", "id", "type", "function"} for c in calls)
    assert arguments(calls[0][0]) == {"path": "/home/me/notes.txt", "limit": 20}
    assert "".join(d.get("content", "") for d in deltas) == "I will read the notes first."
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def _content_and_reason(client, stream: bool, **fields) -> tuple[str, str]:
    """The reply's content and finish_reason, checking that it holds no tool call."""
    if not stream:
        choice = _chat(client, **fields).get_json()["choices"][0]
        assert "tool_calls" not in choice["message"]
        return choice["message"]["content"], choice["finish_reason"]
    deltas = [c["choices"][0] for c in _stream(client, **fields)]
    assert not any("tool_calls" in c["delta"] for c in deltas)
    return "".join(c["delta"].get("content", "") for c in deltas), deltas[-1]["finish_reason"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_max_tokens_is_length_and_kept_as_content(tiny_tokenizer, stream):
    output = "</think>Reading." + tool_block(READ)
    client, engine = scripted(tiny_tokenizer, output)
    tokens = tiny_tokenizer.encode(output, add_special_tokens=False)
    cut = len(tokens) - 3  # inside the closing tags
    partial = tiny_tokenizer.decode(tokens[:cut]).removeprefix("</think>")
    assert partial.startswith("Reading.<minimax:tool_call>\n<invoke") and "</invoke>" not in partial
    assert _content_and_reason(client, stream, max_tokens=cut) == (partial.rstrip(), "length")


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_a_stop_string_is_stop_and_kept_as_content(tiny_tokenizer, stream):
    output = "</think>Reading." + tool_block(READ)
    client, _ = scripted(tiny_tokenizer, output)
    stop = '<parameter name="limit">'
    partial = output.removeprefix("</think>").split(stop)[0]
    assert _content_and_reason(client, stream, stop=[stop]) == (partial.rstrip(), "stop")


@pytest.mark.parametrize(
    "output, stop, content, reason",
    [
        # The reasoning restates the stop string: it waits for the answer.
        ("Question: what?</think>Answer. Question: next", "Question:", "Answer.", "stop"),
        ("Say = here.</think>x = 1", "=", "x", "stop"),
        ("Question: what?</think>Answer.", "Question:", "Answer.", "stop"),  # never in it
        ("Question: still thinking", "Question:", "", "stop"),  # it ends in its reasoning
        ("let me see</think>The answer is 4.", "</think>", "", "stop"),  # reasoning only
        # The answer starts at its first text, not at the blank lines after </think>.
        ("Thought.</think>\n\nAnswer.\n\nMore", "\n\n", "Answer.", "stop"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_wait_for_the_answer(tiny_tokenizer, stream, output, stop, content, reason):
    """As hosted reasoning models scope them: lm-eval sends "Question:" with every
    request, and a thought that restates it must not leave the reply without an answer."""
    client, _ = scripted(tiny_tokenizer, output)
    assert _content_and_reason(client, stream, stop=[stop]) == (content, reason)
    message = _chat(client, stop=[stop]).get_json()["choices"][0]["message"]
    assert message["reasoning_content"] == output.split("</think>")[0]


@pytest.mark.parametrize(
    "output, stop, text",
    [
        # The model opens its reasoning itself: the stop string waits for the answer.
        (
            "<think>Question: x</think>Yes. Question: y",
            "Question:",
            "<think>Question: x</think>Yes. ",
        ),
        ("Yes. Question: y", "Question:", "Yes. "),
    ],
)
def test_completions_stop_strings_wait_for_the_answer(tiny_tokenizer, output, stop, text):
    client, _ = scripted(tiny_tokenizer, output)
    body = {"prompt": "Question: 2+2?\nAnswer:", "stop": [stop], "max_tokens": 50}
    choice = client.post("/v1/completions", json=body).get_json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (text, "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_whose_value_holds_closing_tags_arrives_whole(tiny_tokenizer, stream):
    command = "printf '</parameter>\\n</invoke>\\n</minimax:tool_call>' > format.txt"
    client, _ = scripted(
        tiny_tokenizer, "</think>Writing." + tool_block(("run", {"command": command}))
    )
    if stream:
        deltas = [c["choices"][0] for c in _stream(client)]
        calls = [d["delta"]["tool_calls"][0] for d in deltas if "tool_calls" in d["delta"]]
        reason = deltas[-1]["finish_reason"]
    else:
        choice = _chat(client).get_json()["choices"][0]
        calls, reason = choice["message"]["tool_calls"], choice["finish_reason"]
    assert [arguments(call) for call in calls] == [{"command": command}]
    assert reason == "tool_calls"


def test_plain_answer_after_reasoning_stops(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, "Short thought.</think>\n\nHello there.")
    choice = _chat(client).get_json()["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hello there.",
        "reasoning_content": "Short thought.",
    }
    assert choice["finish_reason"] == "stop"


def test_without_thinking_the_output_starts_as_content(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "Hello there.")
    body = _chat(client, chat_template_kwargs={"enable_thinking": False}).get_json()
    assert not prompt_of(engine, tiny_tokenizer).rstrip().endswith("<think>")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there."}


def test_server_default_enable_thinking_is_overridden_by_the_request(tiny_tokenizer):
    client, engine = scripted(
        tiny_tokenizer, "Hmm.</think>Hi.", chat_template_kwargs={"enable_thinking": False}
    )
    assert _chat(client).get_json()["choices"][0]["message"]["content"] == "Hmm.</think>Hi."
    assert not prompt_of(engine, tiny_tokenizer).endswith("<think>\n")
    message = _chat(client, chat_template_kwargs={"enable_thinking": True}).get_json()
    assert prompt_of(engine, tiny_tokenizer).endswith("<think>\n")
    assert message["choices"][0]["message"]["reasoning_content"] == "Hmm."


def test_tool_choice_none_renders_no_tools_and_parses_no_calls(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>" + tool_block(READ))
    choice = _chat(client, tool_choice="none").get_json()["choices"][0]
    assert "<tools>" not in prompt_of(engine, tiny_tokenizer)
    assert choice["message"]["content"].startswith("<minimax:tool_call>")
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def test_named_tool_choice_offers_only_that_tool_and_says_so(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>" + tool_block(LIST))
    choice = {"type": "function", "function": {"name": "run"}}
    body = _chat(client, tool_choice=choice, parallel_tool_calls=False).get_json()
    prompt = prompt_of(engine, tiny_tokenizer)
    assert '"name": "run"' in prompt and '"name": "read_file"' not in prompt
    assert "You must call the tool `run`. Call at most one tool per reply." in prompt
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_required_tool_choice_adds_the_hint_to_the_system_message(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    system = {"role": "system", "content": "Be brief."}
    client.post(CHAT, json={"messages": [system, *USER], "tools": TOOLS, "tool_choice": "required"})
    prompt = prompt_of(engine, tiny_tokenizer)
    assert "system\nBe brief.\n\nYou must call at least one of the provided tools." in prompt


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"tool_choice": "required", "tools": []}, "non-empty"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
    ],
)
def test_impossible_tool_choice_is_a_400(tiny_tokenizer, fields, message):
    client, engine = scripted(tiny_tokenizer, "x")
    response = client.post(CHAT, json={"messages": USER, "tools": TOOLS, **fields})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "tool_choice" and message in error["message"]
    assert engine.requests == []


def test_agent_loop_renders_calls_results_and_text_parts(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>Done.")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "/tmp/a.txt", "limit": 5}'},
    }
    messages = [
        {"role": "developer", "content": "You are terse."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Read "}, {"type": "text", "text": "it."}],
        },  # fmt: skip
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "hello"}]},
    ]
    response = client.post(CHAT, json={"messages": messages, "tools": TOOLS})
    assert response.status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert "]~b]system\nYou are terse." in prompt
    assert "]~b]user\nRead it.[e~[" in prompt
    assert (
        '<minimax:tool_call>\n<invoke name="read_file">\n<parameter name="path">/tmp/a.txt'
        '</parameter>\n<parameter name="limit">5</parameter>\n</invoke>\n</minimax:tool_call>'
    ) in prompt
    assert "]~b]tool\n<response>hello</response>[e~[" in prompt


def test_a_reply_round_trips_into_the_next_prompt(tiny_tokenizer):
    calls = [("run", {"command": "make test"}), ("read_file", {"path": "/a", "limit": "3"})]
    block = tool_block(*calls)
    client, engine = scripted(tiny_tokenizer, "Plan.</think>Running.\n" + block)
    first = _chat(client).get_json()["choices"][0]["message"]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": f"result {i}"}
        for i, call in enumerate(first["tool_calls"])
    ]
    messages = [*USER, first, *results, {"role": "user", "content": "And now?"}]
    assert client.post(CHAT, json={"messages": messages, "tools": TOOLS}).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    # The template renders the model's own call block back, and the results in order.
    assert "]~b]ai\nRunning.\n" + block + "[e~[" in prompt
    assert "]~b]tool\n<response>result 0</response>\n<response>result 1</response>[e~[" in prompt
