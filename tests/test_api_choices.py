"""Several choices in one reply: `n` samples of a prompt, and the several prompts of a
text completion (as lm-eval batches them), against a fake engine."""

# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from api_fakes import FakeEngine, settings, sse_events, tokenizer

from refserver.api import create_app
from refserver.engine.interface import ErrorEvent, Event, GenerationRequest, QueueFullError

TEXT = "Hello! The answer is 42."
USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class ChoiceEngine(FakeEngine):
    """A FakeEngine that fails the requests whose id ends in `failing`, and refuses
    submissions once `room` requests were taken."""

    def __init__(
        self,
        tokens,
        *,
        failing: str | None = None,
        fail_delay: float = 0.0,
        room: int | None = None,
        **kw,
    ):
        super().__init__(tokens, **kw)
        self.failing = failing
        self.fail_delay = fail_delay  # the failing request's seconds before its error
        self.room = room

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[Iterator[Event]]:
        if self.room is not None and len(self.requests) + len(requests) > self.room:
            raise QueueFullError("the queue is full", retry_after_seconds=2)
        streams = super().submit_all(requests)
        return [
            self._failing() if self._fails(request) else events
            for request, events in zip(requests, streams, strict=True)
        ]

    def _fails(self, request: GenerationRequest) -> bool:
        return self.failing is not None and request.id.endswith(self.failing)

    def _failing(self) -> Iterator[Event]:
        time.sleep(self.fail_delay)
        yield ErrorEvent("rank 1 was lost")


def _engine(tokenizer, **kwargs) -> ChoiceEngine:
    return ChoiceEngine(tokenizer.encode(TEXT), eos_id=tokenizer.eos_token_id, **kwargs)


def _client(engine, tokenizer, **overrides):
    return create_app(engine, tokenizer, settings(**overrides)).test_client()


def _streamed(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    events = sse_events(response.get_data())
    assert events[-1] == "[DONE]"
    return events[:-1]


# (case, path, body, choices, prompt tokens counted) for whole replies.
WHOLE = [
    ("chat n=3", CHAT, {"messages": USER, "n": 3}, 3, 1),
    ("completion n=2", COMPLETIONS, {"prompt": "hi", "n": 2}, 2, 1),
    ("two text prompts", COMPLETIONS, {"prompt": ["hi", "hello world"]}, 2, 2),
    ("three id prompts, n=2", COMPLETIONS, {"prompt": [[5, 6], [7], [8, 9, 10]], "n": 2}, 6, 3),
]


@pytest.mark.parametrize("path, body, choices, prompts", [c[1:] for c in WHOLE],
                         ids=[c[0] for c in WHOLE])  # fmt: skip
def test_whole_reply_lists_every_choice_in_order(tokenizer, path, body, choices, prompts):
    engine = _engine(tokenizer)
    reply = _client(engine, tokenizer).post(path, json={**body, "max_tokens": 50}).get_json()
    assert [c["index"] for c in reply["choices"]] == list(range(choices))
    for choice in reply["choices"]:
        assert choice["finish_reason"] == "stop"
        assert (choice["message"]["content"] if path == CHAT else choice["text"]) == TEXT
    # Each prompt is counted once, however many samples it has (as OpenAI counts it).
    per_prompt = choices // prompts
    submitted = [len(r.prompt_tokens) for r in engine.requests]
    assert reply["usage"]["prompt_tokens"] == sum(submitted[::per_prompt])
    # Each choice's text and its end token.
    assert reply["usage"]["completion_tokens"] == choices * (len(tokenizer.encode(TEXT)) + 1)
    assert len(engine.requests) == choices


def test_prompts_are_submitted_prompt_by_prompt_with_their_own_ids(tokenizer):
    engine = _engine(tokenizer)
    body = {"prompt": [[5, 6], [7]], "n": 2, "seed": 11, "max_tokens": 2}
    response = _client(engine, tokenizer).post(COMPLETIONS, json=body)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert [r.id for r in engine.requests] == [f"{request_id}-{k}" for k in range(4)]
    assert [r.prompt_tokens for r in engine.requests] == [[5, 6], [5, 6], [7], [7]]
    # n seeded samples of a prompt differ from one another, and reproduce.
    assert [r.sampling.seed for r in engine.requests] == [11, 12, 11, 12]


def test_one_choice_keeps_the_request_id(tokenizer):
    engine = _engine(tokenizer)
    response = _client(engine, tokenizer).post(CHAT, json={"messages": USER, "seed": 3})
    assert [r.id for r in engine.requests] == [response.headers["x-request-id"]]
    assert engine.requests[0].sampling.seed == 3


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_a_stream_carries_every_choice_then_one_usage(tokenizer, path):
    engine = _engine(tokenizer, delay=0.002)
    base = {"messages": USER} if path == CHAT else {"prompt": ["hi", "hey"]}
    body = {**base, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    events = _streamed(_client(engine, tokenizer).post(path, json=body))
    choices = 2 if path == CHAT else 4
    texts = {index: "" for index in range(choices)}
    finishes = {}
    for event in events[:-1]:
        (choice,) = event["choices"]
        part = choice["delta"].get("content") if path == CHAT else choice["text"]
        texts[choice["index"]] += part or ""
        if choice["finish_reason"] is not None:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {index: TEXT for index in range(choices)}
    assert finishes == {index: "stop" for index in range(choices)}
    usage = events[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == choices * (len(tokenizer.encode(TEXT)) + 1)


def test_echo_gives_each_choice_its_own_prompt(tokenizer):
    engine = _engine(tokenizer)
    body = {"prompt": ["hi", "hey"], "echo": True, "max_tokens": 0, "logprobs": 0}
    reply = _client(engine, tokenizer).post(COMPLETIONS, json=body).get_json()
    assert [c["text"] for c in reply["choices"]] == ["hi", "hey"]
    for choice, prompt in zip(reply["choices"], ["hi", "hey"], strict=True):
        assert choice["logprobs"]["tokens"] == [
            tokenizer.decode([t]) for t in tokenizer.encode(prompt)
        ]
        assert choice["logprobs"]["token_logprobs"][0] is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_choice_fails_the_reply_and_cancels_the_others(tokenizer, stream):
    gate = threading.Event()  # the others wait, so that they are still running
    engine = _engine(tokenizer, failing="-1", gate=gate)
    body = {"messages": USER, "n": 3, "stream": stream}
    response = _client(engine, tokenizer).post(CHAT, json=body)
    if stream:
        events = _streamed(response)
        assert "error" in events[-1]
    else:
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] is not None
    request_id = response.headers["x-request-id"]
    assert {f"{request_id}-0", f"{request_id}-2"} <= set(engine.cancelled)
    gate.set()


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_choice_leaves_no_reader_behind(tokenizer, stream):
    """The others were decoding when one failed: their readers end with them."""

    def reader_threads():
        return [t for t in threading.enumerate() if t.name.startswith("choice-")]

    engine = _engine(tokenizer, delay=0.02, failing="-1", fail_delay=0.2)
    engine.tokens = engine.tokens * 100
    body = {"messages": USER, "n": 3, "stream": stream, "max_tokens": 200}
    response = _client(engine, tokenizer, context_length=4096).post(CHAT, json=body)
    if stream:
        assert "error" in _streamed(response)[-1]
    else:
        assert response.status_code == 503
    deadline = time.monotonic() + 5
    while reader_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader_threads() == []
    assert engine.finished == []  # the others were stopped, not run to their end


def test_choices_that_do_not_all_fit_are_refused_together(tokenizer):
    engine = _engine(tokenizer, room=2, gate=threading.Event())
    response = _client(engine, tokenizer).post(CHAT, json={"messages": USER, "n": 3})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert engine.requests == []  # none of its choices was queued, none to cancel


@pytest.mark.parametrize(
    "path, body, param",
    [
        (CHAT, {"messages": USER, "n": 5}, "n"),
        (COMPLETIONS, {"prompt": ["a", "b", "c"], "n": 2}, "n"),
        (COMPLETIONS, {"prompt": ["a", "b", "c", "d", "e"]}, "prompt"),  # lm-eval's batch
    ],
)
def test_more_choices_than_the_server_holds_is_a_400(tokenizer, path, body, param):
    engine = _engine(tokenizer)
    response = _client(engine, tokenizer, max_open_requests=4).post(path, json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == param and "at most 4" in error["message"]
    assert engine.requests == []


def test_a_400_of_one_prompt_submits_none(tokenizer):
    engine = _engine(tokenizer)
    body = {"prompt": ["hi", "hello " * 1000]}  # the second is beyond the context
    response = _client(engine, tokenizer).post(COMPLETIONS, json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "context_length_exceeded"
    assert engine.requests == []
