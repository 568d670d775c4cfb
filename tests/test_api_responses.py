"""The OpenAI Responses API (/v1/responses) against the fake engine with scripted output:
input items through the tiny model's chat template, output items, status, usage, the
stream's events, errors, and the official openai SDK as the client (create, stream)."""

# ruff: noqa: F401, F811 (pytest fixtures imported from agent_fakes)

from __future__ import annotations

import json
import threading

import openai
import pytest
from agent_fakes import prompt_of, scripted, tiny_tokenizer, tool_block
from api_fakes import FakeEngine, settings

from refserver.api import create_app
from refserver.api.errors import ApiError
from refserver.api.responses.schemas import ResponsesRequest
from refserver.api.responses.store import ResponseStore
from refserver.api.server import make_server, shutdown
from refserver.engine.interface import QueueFullError

RESPONSES = "/v1/responses"
SURROGATE = '{"a": "\\ud800"}'  # JSON text whose string holds a lone surrogate, escaped
TOOLS = [
    {
        "type": "function",
        "name": "read_file",
        "description": "Read a file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
        },
    }
]
CALL = tool_block(("read_file", {"path": "/ tmp/ notes. md", "limit": "10"}))
OUTPUT = "\nLet me look.\n</think>\n\nReading it now.\n" + CALL


def _post(client, **fields):
    return client.post(RESPONSES, json={"input": "Read the notes.", **fields})


def _events(response) -> list[dict]:
    """The data of each event of a Responses SSE body, checked against its name."""
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            data = json.loads(lines["data"])
            assert data["type"] == lines["event"]
            events.append(data)
    return events


def test_reasoning_message_and_function_call_items(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    body = _post(client, tools=TOOLS).get_json()
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert (body["status"], body["incomplete_details"], body["error"]) == ("completed", None, None)
    assert body["model"] == "tiny-test-model" and body["store"] is True
    reasoning, message, call = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me look."}]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["status"] == "completed"
    assert [(p["type"], p["text"]) for p in message["content"]] == [
        ("output_text", "Reading it now.")
    ]
    assert call["type"] == "function_call" and call["call_id"].startswith("call_")
    assert call["name"] == "read_file" and call["status"] == "completed"
    assert json.loads(call["arguments"]) == {"path": "/tmp/notes.md", "limit": 10}
    assert len({item["id"] for item in body["output"]}) == 3
    usage = body["usage"]
    tokens = len(tiny_tokenizer.encode(OUTPUT, add_special_tokens=False)) + 1  # and EOS
    assert usage["output_tokens"] == tokens
    assert usage["total_tokens"] == usage["input_tokens"] + tokens
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"


def test_cut_off_by_max_output_tokens_is_incomplete(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, "\n</think>\n\n" + "word " * 40, end=False)
    body = _post(client, max_output_tokens=12).get_json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][-1]["status"] == "incomplete"
    assert body["usage"]["output_tokens"] == 12 and body["max_output_tokens"] == 12


def test_stream_events_build_the_same_items(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    whole = _post(client, tools=TOOLS).get_json()
    events = _events(_post(client, tools=TOOLS, stream=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in added] == ["reasoning", "message", "function_call"]
    assert all(i["status"] == "in_progress" for i in added)
    assert added[2]["arguments"] == ""
    final = events[-1]["response"]
    assert done == final["output"]

    def without_ids(items):  # fresh for every request
        return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in items]

    assert without_ids(final["output"]) == without_ids(whole["output"])
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    (arguments,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert (text, thought) == ("Reading it now.", "Let me look.")
    assert arguments["arguments"] == final["output"][2]["arguments"]
    for event in events:  # every item event points at the item it is about
        if "item_id" in event:
            assert final["output"][event["output_index"]]["id"] == event["item_id"]
    assert final["usage"]["output_tokens"] == whole["usage"]["output_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_summary_asked_for_holds_the_reasoning(tiny_tokenizer, stream):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    fields = {"tools": TOOLS, "reasoning": {"effort": "high", "summary": "auto"}}
    if stream:
        events = _events(_post(client, stream=True, **fields))
        reasoning = events[-1]["response"]["output"][0]
        kinds = [e["type"] for e in events if "summary" in e["type"]]
        kinds = [kind for at, kind in enumerate(kinds) if kinds[at - 1 : at] != [kind]]
        assert kinds == [
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
        ]
        assert all(e["summary_index"] == 0 for e in events if "summary" in e["type"])
        assert not any(e["type"].startswith("response.reasoning_text") for e in events)
    else:
        reasoning = _post(client, **fields).get_json()["output"][0]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me look."}]
    assert "content" not in reasoning
    plain = _post(client, reasoning={"summary": "none"}).get_json()["output"][0]
    assert plain["summary"] == [] and plain["content"][0]["text"] == "Let me look."


def test_a_cut_off_stream_ends_with_response_incomplete(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, "\n</think>\n\n" + "word " * 40, end=False)
    events = _events(_post(client, max_output_tokens=12, stream=True))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_while_streaming_is_an_error_event(tiny_tokenizer):
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hi there"), fail_after=2)
    client = create_app(engine, tiny_tokenizer, settings(context_length=4096)).test_client()
    events = _events(_post(client, stream=True))
    error, failed = events[-2:]
    assert error["type"] == "error" and error["code"] == "engine_error"
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": error["code"], "message": error["message"]}
    (partial,) = failed["response"]["output"]  # what was streamed before the failure
    assert partial["type"] == "message" and partial["content"][0]["text"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_a_long_wait_keeps_the_stream_alive_with_in_progress_events(tiny_tokenizer):
    """Codex gives up on a stream after 300 s without an event (comments do not count):
    while a request queues or its prompt is read, response.in_progress comes again."""
    gate = threading.Event()
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hi."), gate=gate)
    app = create_app(engine, tiny_tokenizer, settings(context_length=4096, keepalive_seconds=0.05))
    threading.Timer(0.4, gate.set).start()
    kinds = [e["type"] for e in _events(_post(app.test_client(), stream=True))]
    first_item = kinds.index("response.output_item.added")
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds[1:first_item] == ["response.in_progress"] * (first_item - 1)
    assert first_item >= 4


def test_a_stream_beyond_the_context_fails_as_codex_reads_it(tiny_tokenizer):
    """Codex compacts a conversation when a stream fails with context_length_exceeded;
    an HTTP 400 would end every turn of the session instead."""
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    response = _post(client, input="hello " * 5000, stream=True)
    assert response.status_code == 200
    created, failed = _events(response)
    assert created["type"] == "response.created"
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "context_length_exceeded"
    assert "leaves no room" in failed["response"]["error"]["message"]
    assert engine.requests == []


# (input items, what the prompt must hold in this order)
CONVERSATIONS = [
    (
        [
            {"type": "message", "role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Read it."}]},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "I should read it."}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Reading.", "annotations": []}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "read_file",
                "arguments": '{"path": "a.md"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "the notes"},
        ],
        [
            "]~b]system\nBe brief.",
            "]~b]user\nRead it.",
            "]~b]ai\n<think>\nI should read it.\n</think>\n\nReading.",
            '<invoke name="read_file">\n<parameter name="path">a.md</parameter>',
            "]~b]tool\n<response>the notes</response>",
        ],
    ),
    (
        [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}],
        ["]~b]user\n[input_image omitted: this model reads text only]"],
    ),
    (
        [
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "assistant", "content": "World."},
        ],
        ["]~b]ai\nHello.\nWorld.[e~["],
    ),
]


@pytest.mark.parametrize("items, expected", CONVERSATIONS)
def test_input_items_reach_the_template(tiny_tokenizer, items, expected):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    assert _post(client, input=items, tools=TOOLS).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    where = [prompt.find(part) for part in expected]
    assert all(at >= 0 for at in where) and where == sorted(where), prompt


def test_instructions_are_the_system_prompt(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    assert _post(client, instructions="You are terse.").status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert "]~b]system\nYou are terse." in prompt and "]~b]user\nRead the notes." in prompt


def test_fields_reach_the_engine(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, '</think>{"a": 1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    text = {"format": {"type": "json_schema", "name": "answer", "schema": schema}}
    fields = {"temperature": 0.5, "top_p": 0.9, "max_output_tokens": 30, "text": text}
    body = _post(client, **fields).get_json()
    request = engine.requests[-1]
    assert request.max_tokens == 30
    assert (request.sampling.temperature, request.sampling.top_p) == (0.5, 0.9)
    assert request.sampling.constraint is not None
    assert body["text"]["format"]["schema"] == schema


def test_hosted_tools_are_left_out_and_allowed_tools_narrow_the_rest(tiny_tokenizer):
    """Codex sends web_search with every request: the model is not offered it."""
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    other = {**TOOLS[0], "name": "write_file"}
    hosted = [{"type": "web_search", "external_web_access": False}, {"type": "local_shell"}]
    assert _post(client, tools=[*hosted, *TOOLS, other]).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert '"name": "read_file"' in prompt and '"name": "write_file"' in prompt
    assert "web_search" not in prompt and "local_shell" not in prompt
    allowed = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "function", "name": "read_file"}],
    }
    body = _post(client, tools=[*TOOLS, other], tool_choice=allowed).get_json()
    prompt = prompt_of(engine, tiny_tokenizer)
    assert '"name": "read_file"' in prompt and "write_file" not in prompt
    assert body["tool_choice"] == allowed


def test_reasoning_effort_none_turns_thinking_off(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "ok")
    _post(client, reasoning={"effort": "none"})
    assert prompt_of(engine, tiny_tokenizer).endswith("]~b]ai\n")


# (fields, status, param, words in the message)
REFUSED = [
    ({"previous_response_id": "resp_1"}, 400, "previous_response_id", "send the whole"),
    ({"conversation": "conv_1"}, 400, "conversation", "no conversation objects"),
    ({"background": True}, 400, "background", "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0]", "no item"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, 400, "input[0]", "web_search_call"),
    ({"input": [{"content": "no role"}]}, 400, "input[0]", "type"),
    ({"tools": [{"name": "f"}]}, 400, "tools[0]", "type"),
    ({"input": None}, 400, "input", ""),
    ({"input": []}, 400, "input", "at least 1"),
    ({"max_output_tokens": 0}, 400, "max_output_tokens", ""),
    ({"model": "gpt-5"}, 404, "model", "not served"),
    ({"max_output_tokens": 5000}, 400, "max_output_tokens", "lower max_output_tokens"),
    ({"input": "hello " * 5000}, 400, "input", "leaves no room"),
    ({"text": {"format": {"type": "json_schema"}}}, 400, "text.format", "schema"),
    (
        {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": SURROGATE}]},
        400,
        "input[0].arguments",
        "lone UTF-16 surrogate (\\ud800-\\udfff) at a",
    ),
]


@pytest.mark.parametrize("fields, status, param, words", REFUSED)
def test_what_is_refused_says_why(tiny_tokenizer, fields, status, param, words):
    client, engine = scripted(tiny_tokenizer, "</think>ok")
    response = _post(client, **fields)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert words in error["message"] and (param is None or error["param"] == param), error
    assert engine.requests == []


def test_a_full_queue_is_429(tiny_tokenizer):
    engine = FakeEngine(tiny_tokenizer.encode("</think>Hi"))
    engine.submit_all = lambda requests: (_ for _ in ()).throw(QueueFullError("full"))
    client = create_app(engine, tiny_tokenizer, settings(context_length=4096)).test_client()
    response = _post(client)
    assert response.status_code == 429 and response.headers["Retry-After"]


def test_a_response_continues_a_stored_one(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, OUTPUT)
    first = _post(client, tools=TOOLS, instructions="Old rules.").get_json()
    call = first["output"][2]
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "milk"}
    follow_up = {"previous_response_id": first["id"], "input": [result], "tools": TOOLS}
    second = _post(client, **follow_up).get_json()
    assert second["previous_response_id"] == first["id"]
    prompt = prompt_of(engine, tiny_tokenizer)
    expected = [
        "]~b]user\nRead the notes.",
        "]~b]ai\n<think>\nLet me look.\n</think>\n\nReading it now.",
        '<invoke name="read_file">',
        "]~b]tool\n<response>milk</response>",
    ]
    where = [prompt.find(part) for part in expected]
    assert all(at >= 0 for at in where) and where == sorted(where), prompt
    assert "Old rules." not in prompt  # instructions do not carry over, as at OpenAI
    third = _post(client, previous_response_id=second["id"], input="And then?").get_json()
    assert third["status"] == "completed"
    assert prompt_of(engine, tiny_tokenizer).count("]~b]tool\n<response>milk</response>") == 1


def test_items_of_stored_responses_can_be_referenced(tiny_tokenizer):
    client, engine = scripted(tiny_tokenizer, "Thinking it over.</think>The answer.")
    first = _post(client).get_json()
    reasoning, message = first["output"]
    items = [
        {"role": "user", "content": "Read the notes."},
        {"type": "item_reference", "id": reasoning["id"]},
        {"type": "item_reference", "id": message["id"]},
        {"role": "user", "content": "Again."},
    ]
    assert _post(client, input=items).status_code == 200
    prompt = prompt_of(engine, tiny_tokenizer)
    assert "]~b]ai\nThe answer.[e~[\n]~b]user\nAgain." in prompt, prompt


def test_stored_responses_are_read_and_deleted_by_id(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    streamed = _events(_post(client, tools=TOOLS, stream=True))[-1]["response"]
    kept = _post(client, tools=TOOLS).get_json()
    for response in (streamed, kept):
        assert client.get(f"{RESPONSES}/{response['id']}").get_json() == response
    deleted = client.delete(f"{RESPONSES}/{kept['id']}")
    assert deleted.get_json() == {"id": kept["id"], "object": "response", "deleted": True}
    missing = client.get(f"{RESPONSES}/{kept['id']}")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert client.delete(f"{RESPONSES}/{kept['id']}").status_code == 404


def test_store_false_keeps_nothing(tiny_tokenizer):
    client, _ = scripted(tiny_tokenizer, OUTPUT)
    body = _post(client, store=False).get_json()
    assert body["store"] is False
    assert client.get(f"{RESPONSES}/{body['id']}").status_code == 404
    again = _post(client, previous_response_id=body["id"])
    assert again.status_code == 400
    assert again.get_json()["error"]["param"] == "previous_response_id"


def _response(number: int, text: str) -> dict:
    item = {"id": f"msg_{number}", "type": "message", "role": "assistant", "status": "completed"}
    item["content"] = [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": f"resp_{number}", "object": "response", "output": [item]}


def test_the_store_lets_the_least_recently_used_go_first():
    room = 2.5 * len(json.dumps(_response(0, "x" * 100)))
    store = ResponseStore(max_chars=int(room))
    for number in range(2):
        store.save([], _response(number, "x" * 100))
    store.response("resp_0")  # read: now the most recently used
    store.save([], _response(2, "x" * 100))
    assert store.response("resp_0") and store.response("resp_2")
    with pytest.raises(ApiError) as gone:
        store.response("resp_1")
    assert gone.value.status == 404
    refers = ResponsesRequest(input=[{"type": "item_reference", "id": "msg_1"}])
    with pytest.raises(ApiError, match="no item with id 'msg_1'"):
        store.conversation(refers)
    (item,) = store.conversation(
        ResponsesRequest(input=[{"type": "item_reference", "id": "msg_2"}])
    )
    assert item.content[0].text == "x" * 100


def test_the_store_counts_a_response_with_its_whole_conversation():
    """A client that resends its conversation whole, stored each turn, cannot grow the
    store past its bound: the input is counted, not only the output."""
    one = len(json.dumps(_response(0, "x")))
    store = ResponseStore(max_chars=one * 10)
    store.save([], _response(0, "x"))
    long_input = ResponsesRequest(input="y" * one * 20).input_items()
    store.save(long_input, _response(1, "x"))
    with pytest.raises(ApiError):
        store.response("resp_0")  # made room for the long conversation
    assert store.response("resp_1")


@pytest.fixture
def sdk(tiny_tokenizer):
    """The openai SDK talking to a real server that answers with OUTPUT."""
    tokens = tiny_tokenizer.encode(OUTPUT, add_special_tokens=False)
    engine = FakeEngine(tokens, eos_id=tiny_tokenizer.eos_token_id)
    app = create_app(engine, tiny_tokenizer, settings(context_length=4096))
    server = make_server(app, "127.0.0.1", 0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.effective_port}/v1"
    yield openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
    shutdown(server)


def test_the_sdk_reads_a_response(sdk):
    response = sdk.responses.create(model="tiny-test-model", input="Read it.", tools=TOOLS)
    assert response.status == "completed"
    assert response.output_text == "Reading it now."
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"path": "/tmp/notes.md", "limit": 10}
    follow_up = [*[item.model_dump() for item in response.output]]
    follow_up.append({"type": "function_call_output", "call_id": call.call_id, "output": "ok"})
    again = sdk.responses.create(model="tiny-test-model", input=follow_up, tools=TOOLS)
    assert again.status == "completed"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "ok"}
    chained = sdk.responses.create(
        model="tiny-test-model", previous_response_id=response.id, input=[result], tools=TOOLS
    )
    assert chained.previous_response_id == response.id
    assert sdk.responses.retrieve(chained.id).output_text == chained.output_text


def test_the_sdk_streams_a_response(sdk):
    with sdk.responses.stream(model="tiny-test-model", input="Read it.", tools=TOOLS) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Reading it now."
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.usage.output_tokens > 0
