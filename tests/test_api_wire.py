"""Wire shapes of the OpenAI routes against a fake engine (no model, no MLX)."""

# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace

import pytest
from api_fakes import (
    MODEL,
    FakeEngine,
    build_tokenizer,
    byte_tokens,
    client,
    engine,
    settings,
    sse_events,
    tokenizer,
)
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from refserver.api import create_app
from refserver.engine.interface import Health, NotReadyError, QueueFullError, TokenEvent

TEXT = "Hello! The answer is 42."
USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _app(engine, tokenizer, **overrides):
    return create_app(engine, tokenizer, settings(**overrides)).test_client()


def _body(path, **fields):
    base = {"messages": USER} if "chat" in path else {"prompt": "hi"}
    return {**base, **fields}


def _stream(client, path, **fields):
    response = client.post(path, json=_body(path, stream=True, **fields))
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = sse_events(response.get_data())
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events[:-1]


def _no_nulls(value):
    if isinstance(value, dict):
        return all(v is not None and _no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_nulls(v) for v in value)
    return True


def test_chat_completion_shape(client):
    response = client.post(CHAT, json={"model": MODEL, "messages": USER})
    body = response.get_json()
    assert response.status_code == 200
    assert body["id"] == f"chatcmpl-{response.headers['x-request-id']}"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": TEXT}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_completion_shape(client):
    response = client.post(COMPLETIONS, json={"model": MODEL, "prompt": "hi"})
    body = response.get_json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": TEXT, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_shape(client, include_usage):
    chunks = _stream(client, CHAT, stream_options={"include_usage": include_usage})
    assert len({(c["id"], c["created"], c["object"]) for c in chunks}) == 1
    assert chunks[0]["object"] == "chat.completion.chunk"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert all("role" not in d for d in deltas[1:])
    assert all(_no_nulls(d) for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == TEXT
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [r for r in reasons if r is not None] == ["stop"]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    else:
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
def test_completion_stream_shape(client, include_usage):
    chunks = _stream(client, COMPLETIONS, stream_options={"include_usage": include_usage})
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(c["text"] for c in choices) == TEXT
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert ("usage" in chunks[-1]) is include_usage


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_max_tokens_gives_finish_reason_length(client, engine, path):
    body = client.post(path, json=_body(path, max_tokens=3)).get_json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert engine.requests[-1].max_tokens == 3


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, 256 - 2),  # no max_tokens: the room left in the context
        ({"max_tokens": None}, 256 - 2),
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9, "max_tokens": 7}, 9),
    ],
)
def test_completion_budget(client, engine, fields, expected):
    assert client.post(COMPLETIONS, json={"prompt": "hi", **fields}).status_code == 200
    assert engine.requests[-1].max_tokens == expected


def test_default_max_tokens_applies_when_room_is_larger(engine, tokenizer):
    client = _app(engine, tokenizer, default_max_tokens=5)
    client.post(COMPLETIONS, json={"prompt": "hi"})
    assert engine.requests[-1].max_tokens == 5


@pytest.mark.parametrize("split", ["bpe", "bytes"])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_tokens_is_cut(tokenizer, split, stream):
    ids = tokenizer.encode(TEXT) if split == "bpe" else byte_tokens(tokenizer, TEXT)
    engine = FakeEngine(ids)
    client = _app(engine, tokenizer)
    fields = {"stop": ["nothing", "answer"], "stream": stream}
    response = client.post(CHAT, json={"messages": USER, **fields})
    if stream:
        chunks = sse_events(response.get_data())[:-1]
        content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        reason = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.get_json()["choices"][0]
        content, reason = choice["message"]["content"], choice["finish_reason"]
    # Chat content is trimmed at both ends (the agent message builder), hence no space.
    assert (content, reason) == ("Hello! The", "stop")
    assert engine.cancelled == [engine.requests[0].id]


def test_chat_logprobs_shape(client, engine):
    body = client.post(CHAT, json={"messages": USER, "logprobs": True, "top_logprobs": 3})
    content = body.get_json()["choices"][0]["logprobs"]["content"]
    assert len(content) == len(engine.tokens)
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(entry["bytes"]).decode() == entry["token"]
        assert len(entry["top_logprobs"]) == 3
        assert set(entry["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert engine.requests[-1].sampling.logprobs
    assert engine.requests[-1].sampling.top_logprobs == 3


def test_chat_logprobs_in_stream_cover_every_token(client, engine):
    chunks = _stream(client, CHAT, logprobs=True)
    entries = [e for c in chunks if c["choices"] for e in c["choices"][0].get("logprobs", {})
               .get("content", [])]  # fmt: skip
    assert "".join(e["token"] for e in entries) == TEXT
    assert all(e["top_logprobs"] == [] for e in entries)


def test_logprobs_of_a_split_character_carry_its_bytes(tokenizer):
    engine = FakeEngine(byte_tokens(tokenizer, "é"))
    client = _app(engine, tokenizer)
    body = client.post(CHAT, json={"messages": USER, "logprobs": True}).get_json()
    entries = body["choices"][0]["logprobs"]["content"]
    assert bytes(b for e in entries for b in e["bytes"]) == "é".encode()


def test_completion_logprobs_shape(client):
    body = client.post(COMPLETIONS, json={"prompt": "hi", "logprobs": 2}).get_json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    size = len(logprobs["tokens"])
    assert [len(logprobs[k]) for k in ("token_logprobs", "top_logprobs", "text_offset")] == [
        size
    ] * 3
    # The reply ended at the end token: it has no text, but its score is the last entry.
    assert choice["finish_reason"] == "stop" and logprobs["tokens"][-1] == "<eos>"
    assert "".join(logprobs["tokens"][:-1]) == choice["text"]
    assert logprobs["text_offset"][0] == 0
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])


class RuledOutEngine(FakeEngine):
    """Scores as a grammar's mask or a degenerate penalty leave them: -inf and NaN."""

    def _events(self, request):
        for event in super()._events(request):
            if isinstance(event, TokenEvent) and event.logprob is not None:
                ruled_out = tuple((t, -math.inf) for t, _ in event.top_logprobs)
                event = replace(event, logprob=math.nan, top_logprobs=ruled_out)
            yield event


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_ruled_out_tokens_are_listed_at_a_finite_floor(tokenizer, path, stream):
    engine = RuledOutEngine(tokenizer.encode(TEXT), eos_id=tokenizer.eos_token_id)
    asked = {"logprobs": True, "top_logprobs": 2} if path == CHAT else {"logprobs": 2}
    response = _app(engine, tokenizer).post(path, json=_body(path, stream=stream, **asked))
    text = response.get_data(as_text=True)
    if stream:
        payloads = [line[6:] for line in text.splitlines() if line.startswith("data: {")]
    else:
        payloads = [text]
    values = [_strict_json(payload) for payload in payloads]
    assert "-9999.0" in text and "Infinity" not in text and "NaN" not in text
    assert values


def test_completion_logprobs_in_stream_continue_offsets(client):
    chunks = _stream(client, COMPLETIONS, logprobs=0)
    offsets = [o for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
               for o in c["choices"][0]["logprobs"]["text_offset"]]  # fmt: skip
    assert offsets == sorted(offsets) and offsets[0] == 0 and len(set(offsets)) == len(offsets)


PROMPT = "Once upon a time"


@pytest.mark.parametrize(
    "fields, scored, generated",
    [
        ({"echo": True}, None, True),  # the prompt's text ahead of the completion
        ({"echo": True, "logprobs": 2}, 2, True),
        ({"echo": True, "logprobs": 0, "max_tokens": 0}, 0, False),  # an evaluation's ask
        ({"echo": False, "logprobs": 1}, None, True),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_echo_gives_the_prompt_back_with_its_scores(client, engine, tokenizer, fields, scored,
                                                    generated, stream):  # fmt: skip
    body = {"prompt": PROMPT, **fields}
    if stream:
        chunks = _stream(client, COMPLETIONS, **body)
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        text = "".join(c["text"] for c in choices)
        parts = [c["logprobs"] for c in choices if c["logprobs"]]
        logprobs = {k: [v for p in parts for v in p[k]] for k in parts[0]} if parts else None
        finish = choices[-1]["finish_reason"]
    else:
        choice = client.post(COMPLETIONS, json=body).get_json()["choices"][0]
        text, logprobs, finish = choice["text"], choice["logprobs"], choice["finish_reason"]
    assert engine.requests[-1].prompt_logprobs == scored
    echoed = PROMPT if fields["echo"] else ""
    assert text == echoed + (TEXT if generated else "")
    assert finish == ("stop" if generated else "length")
    if "logprobs" not in fields:
        assert logprobs is None
        return
    prompt_ids = tokenizer.encode(PROMPT)
    prompt_entries = len(prompt_ids) if fields["echo"] else 0
    assert "".join(logprobs["tokens"][:prompt_entries]) == echoed
    if fields["echo"]:  # the first token has no context, so no score; then the engine's
        assert logprobs["token_logprobs"][:prompt_entries] == [None] + [-0.5] * (prompt_entries - 1)
        assert logprobs["top_logprobs"][0] is None
        assert all(
            len(top) == fields["logprobs"] for top in logprobs["top_logprobs"][1:prompt_entries]
        )
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    if generated and fields["echo"]:
        assert offsets[prompt_entries] == len(PROMPT)  # the completion follows the prompt
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(offsets)


@pytest.mark.parametrize("next_token", ["text", "end"])
def test_an_lm_eval_log_likelihood_request(tokenizer, next_token):
    """lm-eval's local-completions: token ids, max_tokens 1, logprobs 1, echo. It sums
    token_logprobs[ctxlen:-1] (the continuation's, the generated entry dropped) and calls
    the continuation greedy when each equals the best of its top_logprobs."""
    tokens = tokenizer.encode(" world") if next_token == "text" else []
    engine = FakeEngine(tokens, eos_id=tokenizer.eos_token_id)
    client = _app(engine, tokenizer)
    ids = tokenizer.encode("Once upon a time")
    body = {"prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0}
    logprobs = client.post(COMPLETIONS, json={**body, "seed": 1234}).get_json()["choices"][0][
        "logprobs"
    ]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1  # the generated one, end or not
    continuation = logprobs["token_logprobs"][len(ids) - 2 : -1]
    assert continuation == [-0.5, -0.5]  # the prompt's last two tokens, as scored
    tops = logprobs["top_logprobs"][len(ids) - 2 : -1]
    assert all(value == max(top.values()) for value, top in zip(continuation, tops, strict=True))


def _completion_offsets(client, body: dict, stream: bool) -> tuple[str, list[str], list[int]]:
    """A text completion's text, logprob tokens and their offsets, streamed or whole."""
    if stream:
        chunks = [c["choices"][0] for c in _stream(client, COMPLETIONS, **body) if c["choices"]]
        text = "".join(c["text"] for c in chunks)
        offsets = [o for c in chunks if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        tokens = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
        return text, tokens, offsets
    choice = client.post(COMPLETIONS, json=body).get_json()["choices"][0]
    return choice["text"], choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"]


@pytest.mark.parametrize("stream", [False, True])
def test_echo_offsets_with_a_tokenizer_that_adds_a_bos(stream):
    """Llama-like tokenizers start a text prompt with a BOS token that the text leaves
    out: it is listed, at offset 0 and taking no room, and the offsets stay the text's."""
    plain = build_tokenizer()  # its own: the backend is changed below
    backend = plain.backend_tokenizer
    bos = plain.convert_tokens_to_ids("<|system|>")  # in the role of <s>
    backend.post_processor = processors.TemplateProcessing(
        single="<|system|> $A", special_tokens=[("<|system|>", bos)]
    )
    with_bos = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", bos_token="<|system|>"
    )
    engine = FakeEngine(with_bos.encode(" 42", add_special_tokens=False), eos_id=None)
    client = _app(engine, with_bos)
    body = {"prompt": "hello world", "echo": True, "logprobs": 1, "max_tokens": 5}
    text, tokens, offsets = _completion_offsets(client, body, stream)
    assert engine.requests[-1].prompt_tokens[0] == bos and tokens[0] == "<|system|>"
    assert text == "hello world 42"
    assert (
        [text[o:] for o in offsets[1:]]
        == [  # every other token starts where it shows
            text[text.index(t, o) :] for t, o in zip(tokens[1:], offsets[1:], strict=True)
        ]
    )
    assert offsets[:2] == [0, 0] and offsets == sorted(offsets)


def _placed(text: str, tokens: list[str], offsets: list[int]) -> bool:
    """Each whole token stands at its offset in the text (a token that holds part of a
    character, or a control token the text leaves out, at the next character's)."""
    assert offsets == sorted(offsets) and all(0 <= o <= len(text) for o in offsets)
    return all(
        text.startswith(token, offset)
        for token, offset in zip(tokens, offsets, strict=True)
        if "\ufffd" not in token and token in text
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "prompt, output",
    [
        ("hi <|user|> there", "Hello!"),  # a text prompt that spells a control token
        ("bytes", "é ü ok"),  # a completion of multi-byte characters, a byte a token
        (None, "ok"),  # a prompt of byte tokens (its ids)
    ],
)
def test_echo_offsets_follow_the_text(tokenizer, stream, prompt, output):
    engine = FakeEngine(byte_tokens(tokenizer, output), eos_id=None)
    client = _app(engine, tokenizer)
    if prompt is None:
        prompt = byte_tokens(tokenizer, "é and ü")
    body = {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 20}
    text, tokens, offsets = _completion_offsets(client, body, stream)
    assert text.endswith(output)
    assert _placed(text, tokens, offsets)
    # Where the completion starts: right after the echoed prompt.
    assert offsets[len(engine.requests[-1].prompt_tokens)] == len(text) - len(output)


def test_echo_of_token_ids_is_their_text(client, tokenizer):
    ids = tokenizer.encode(PROMPT)
    body = {"prompt": ids, "echo": True, "max_tokens": 0, "logprobs": 1}
    choice = client.post(COMPLETIONS, json=body).get_json()["choices"][0]
    assert choice["text"] == tokenizer.decode(ids)
    assert len(choice["logprobs"]["tokens"]) == len(ids)


def test_sampling_defaults_and_overrides(engine, tokenizer):
    client = _app(engine, tokenizer, temperature=0.7, top_p=0.9, top_k=40)
    client.post(CHAT, json={"messages": USER})
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.7, 0.9, 40)
    assert sampling.repetition_penalty == 1.0
    fields = {"temperature": 0, "top_p": 0.5, "top_k": 0, "min_p": 0.1, "seed": 7}
    fields |= {"repetition_penalty": 1.1, "presence_penalty": -1, "frequency_penalty": 2}
    fields |= {"logit_bias": {"5": -100, "7": 2.5}}
    client.post(CHAT, json={"messages": USER, **fields})
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (
        0,
        0.5,
        0,
        0.1,
    )
    assert (sampling.repetition_penalty, sampling.presence_penalty) == (1.1, -1)
    assert (sampling.frequency_penalty, sampling.seed) == (2, 7)
    assert sampling.logit_bias == {5: -100, 7: 2.5}


def _prompt_text(engine, tokenizer):
    return tokenizer.decode(engine.requests[-1].prompt_tokens)


@pytest.mark.parametrize(
    "defaults, request_kwargs, expect_no_think",
    [
        ({}, None, False),
        ({}, {"enable_thinking": False}, True),
        ({"enable_thinking": False}, None, True),
        ({"enable_thinking": False}, {"enable_thinking": True}, False),
    ],
)
def test_chat_template_kwargs(engine, tokenizer, defaults, request_kwargs, expect_no_think):
    client = _app(engine, tokenizer, chat_template_kwargs=defaults)
    client.post(CHAT, json={"messages": USER, "chat_template_kwargs": request_kwargs})
    assert ("no-think" in _prompt_text(engine, tokenizer)) is expect_no_think


def test_messages_and_tools_reach_the_template(client, engine, tokenizer):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    body = {"messages": messages, "tools": [tool], "tool_choice": "auto"}
    assert client.post(CHAT, json=body).status_code == 200
    prompt = _prompt_text(engine, tokenizer)
    assert prompt.startswith('<|system|>tools: [{"type": "function"')
    assert "get_weather" in prompt
    assert "<|system|>be brief<|end|><|user|>ab<|end|><|assistant|><|end|><|tool|>sunny" in prompt
    assert prompt.endswith("<|assistant|>")


@pytest.mark.parametrize("model", [MODEL, "tiny", "default_model", None])
def test_served_model_names(client, model):
    assert client.post(CHAT, json={"model": model, "messages": USER}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models(client, path):
    body = client.get(path).get_json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model"
    assert abs(body["data"][0]["created"] - time.time()) < 3600  # served since: a real time


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_unprefixed_routes(client, path):
    assert client.post(path, json=_body(path)).status_code == 200


def test_health(client, engine):
    response = client.get("/health")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    engine.health_state = Health(ok=False, reason="rank 1 is loading")
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["error"]["message"] == "rank 1 is loading"


def test_cached_tokens_come_from_the_engine(tokenizer):
    engine = FakeEngine(tokenizer.encode(TEXT), cached_tokens=3)
    body = _app(engine, tokenizer).post(CHAT, json={"messages": USER}).get_json()
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_keepalive_comments_while_waiting_for_the_first_token(tokenizer):
    gate = threading.Event()
    engine = FakeEngine(tokenizer.encode(TEXT), gate=gate)
    client = _app(engine, tokenizer, keepalive_seconds=0.05)
    threading.Timer(0.4, gate.set).start()
    response = client.post(CHAT, json={"messages": USER, "stream": True})
    raw = response.get_data()
    assert raw.count(b": keep-alive\n\n") >= 3
    events = sse_events(raw)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == TEXT


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_engine_failure_mid_stream_sends_error_then_done(tokenizer, path):
    engine = FakeEngine(tokenizer.encode(TEXT), fail_after=2)
    events = sse_events(_app(engine, tokenizer).post(path, json=_body(path, stream=True)).data)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["message"] == "rank 1 was lost" and error["type"] == "server_error"
    assert all("error" not in e for e in events[:-2])


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_engine_failure_without_stream_is_503(tokenizer, path):
    engine = FakeEngine(tokenizer.encode(TEXT), fail_after=2)
    response = _app(engine, tokenizer).post(path, json=_body(path))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "engine_error"


@pytest.mark.parametrize(
    "error, status, code",
    [
        (
            QueueFullError("the queue is full (64 waiting)", retry_after_seconds=3),
            429,
            "queue_full",
        ),
        (NotReadyError("rank 1 is still loading"), 503, "not_ready"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_engine_refusals(client, engine, error, status, code, stream):
    engine.submit_error = error
    response = client.post(CHAT, json={"messages": USER, "stream": stream})
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["message"] == str(error)
    if status == 429:
        assert response.headers["Retry-After"] == "3"
    engine.submit_error = None
    assert client.post(CHAT, json={"messages": USER}).status_code == 200


def test_unexpected_exception_is_500_with_request_id_only(client, engine, caplog):
    engine.submit_error = RuntimeError("secret internal detail")
    response = client.post(CHAT, json={"messages": USER})
    request_id = response.headers["x-request-id"]
    assert response.status_code == 500
    assert response.get_json()["error"] == {
        "message": f"internal error, request id {request_id}",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "secret" not in response.get_data(as_text=True)
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)
