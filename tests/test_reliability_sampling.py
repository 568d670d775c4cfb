"""Sampling and request fields at and beyond their edges, on real ranks: each gives a
2xx or a 4xx, never a 5xx, and the cluster stays up and in step (the next greedy
request gives the reference answer). A request whose sampler fails (injected, test
only) ends alone with an error while the streams beside it finish."""

from __future__ import annotations

import os

import pytest
from forced import FORCED_OUTPUT_DIR
from rank_helpers import (
    PROMPT,
    Logs,
    assert_in_step,
    chat_body,
    long_body,
    open_stream,
    post,
    sse_events,
)

from refserver.api.shared.schemas import MAX_STOP_CHARS, MAX_STOP_STRINGS
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

VOCAB = 512  # the tiny preset's
FAILING_SEED = 4242
CAP = 200


@pytest.fixture(scope="module")
def server(tiny_model):
    env = {
        "REFSERVER_TEST_FAILING_SEED": str(FAILING_SEED),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(FORCED_OUTPUT_DIR), os.environ.get("PYTHONPATH", "")])
        ),
    }
    args = ("--max-tokens", "8", "--max-tokens-cap", str(CAP))
    with ServerCluster(2, tiny_model, extra_args=args, env=env, sink=Logs()) as cluster:
        yield cluster


def completion_body(**fields) -> dict:
    return {"model": "default_model", "prompt": PROMPT, "max_tokens": 8, **fields}


def messages_body(**fields) -> dict:
    return {
        "model": "default_model",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Hello"}],
        **fields,
    }


# Edges that every OpenAI route shares: (field values, whether they are accepted).
OPENAI_EDGES = [
    ({"seed": -1, "temperature": 1}, True),
    ({"seed": -(2**63), "temperature": 1}, True),
    ({"seed": 2**64 - 1, "temperature": 1}, True),
    ({"seed": 2**64, "temperature": 1}, False),
    ({"seed": -(2**63) - 1}, False),
    ({"seed": 1.5}, False),
    ({"top_k": VOCAB, "temperature": 1}, True),
    ({"top_k": VOCAB + 1, "temperature": 1}, True),
    ({"top_k": 2**31 - 1, "temperature": 1}, True),
    ({"top_k": 2**31}, False),
    ({"top_k": -1}, False),
    ({"top_k": 1, "temperature": 1}, True),
    ({"top_p": 1e-12, "temperature": 1}, True),
    ({"top_p": 0, "temperature": 1}, True),
    ({"top_p": -0.1}, False),
    ({"top_p": 1.0001}, False),
    ({"min_p": 1.0, "temperature": 1}, True),
    ({"min_p": -0.1}, False),
    ({"temperature": 2}, True),
    ({"temperature": 1e-300}, True),
    ({"temperature": 5e-324}, True),
    ({"temperature": 2.0001}, False),
    ({"temperature": -0.1}, False),
    ({"repetition_penalty": 100}, True),
    ({"repetition_penalty": 0.01}, True),
    ({"repetition_penalty": 1e-9}, False),  # 0 in float32: every score would be NaN
    ({"repetition_penalty": 0}, False),
    ({"presence_penalty": -2, "frequency_penalty": 2}, True),
    ({"presence_penalty": 2.1}, False),
    ({"frequency_penalty": -2.1}, False),
    ({"logit_bias": {str(VOCAB - 1): 100, "0": -100}}, True),
    ({"logit_bias": {str(i): 1 for i in range(VOCAB)}, "temperature": 1}, True),
    ({"logit_bias": {str(VOCAB): 1}}, False),
    ({"logit_bias": {"-1": 1}}, False),
    ({"logit_bias": {"x": 1}}, False),
    ({"logit_bias": {"1": 101}}, False),
    ({"logit_bias": {"1": 1e308}}, False),
    ({"max_tokens": 1}, True),
    ({"max_tokens": CAP}, True),
    ({"max_tokens": CAP + 1}, False),
    ({"max_tokens": 0}, False),
    ({"stop": ""}, True),
    ({"stop": ["a", "b", "c", "d"]}, True),
    ({"stop": ["\ud7ff", "x" * 100]}, True),
    ({"stop": [str(i) for i in range(MAX_STOP_STRINGS)]}, True),
    ({"stop": [str(i) for i in range(MAX_STOP_STRINGS + 1)]}, False),
    ({"stop": "x" * MAX_STOP_CHARS}, True),
    ({"stop": "x" * (MAX_STOP_CHARS + 1)}, False),
    ({"user": "x" * 1000, "n": 1}, True),
]
CHAT_ONLY = [
    ({"logprobs": True, "top_logprobs": 0}, True),
    ({"logprobs": True, "top_logprobs": 20, "temperature": 1, "seed": -1}, True),
    ({"logprobs": True, "top_logprobs": 21}, False),
    ({"logprobs": False, "top_logprobs": 2}, False),
]
COMPLETIONS_ONLY = [
    ({"logprobs": 0}, True),
    ({"logprobs": 5, "temperature": 1}, True),
    ({"logprobs": 6}, False),
    ({"echo": True}, True),
    ({"echo": True, "max_tokens": 0, "logprobs": 5}, True),
    ({"echo": False, "max_tokens": 0}, False),
]
ANTHROPIC_EDGES = [
    ({"temperature": 0}, True),
    ({"temperature": 1, "top_k": VOCAB * 4}, True),
    ({"temperature": 1, "top_k": 1}, True),
    ({"temperature": 1, "top_p": 1e-12}, True),
    ({"temperature": 1.01}, False),
    ({"top_k": -1}, False),
    ({"max_tokens": 1}, True),
    ({"max_tokens": 0}, False),
    ({"max_tokens": CAP + 1}, False),
    ({"stop_sequences": [""]}, True),
    ({"stop_sequences": ["a", "b", "c", "d"]}, True),
]

CASES = (
    [("/v1/chat/completions", chat_body(**f), ok) for f, ok in OPENAI_EDGES + CHAT_ONLY]
    + [("/v1/completions", completion_body(**f), ok) for f, ok in OPENAI_EDGES + COMPLETIONS_ONLY]
    + [("/v1/messages", messages_body(**f), ok) for f, ok in ANTHROPIC_EDGES]
)


def _case_id(case) -> str:
    path, body, _ = case
    shown = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt")}
    route = {"/v1/chat/completions": "chat", "/v1/completions": "text", "/v1/messages": "anthropic"}
    return f"{route[path]}-{str(shown)[:60]}"


@pytest.mark.parametrize("path, body, accepted", CASES, ids=[_case_id(c) for c in CASES])
def test_a_field_at_its_edge_is_served_or_refused_and_the_cluster_stays_in_step(
    server, tiny_model, path, body, accepted
):
    status, _, reply = post(server, body, path)
    assert status == (200 if accepted else 400), reply
    if not accepted and path == "/v1/messages":
        assert reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error"
    elif not accepted:
        assert reply["error"]["param"], reply
    assert_in_step(server, tiny_model)


def read_rest(sock) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_request_whose_sampler_fails_ends_alone(server, tiny_model, stream):
    usage = {"stream_options": {"include_usage": True}}
    neighbours = [open_stream(server, long_body(CAP, **usage), events=2) for _ in range(2)]
    failing = chat_body(temperature=1, seed=FAILING_SEED, max_tokens=20)
    if stream:
        sock, head = open_stream(server, failing, events=0)
        events = sse_events(head + read_rest(sock))  # a short reply may come whole with its head
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "request_failed", events[-2]
        assert "injected sampler failure" in events[-2]["error"]["message"]
    else:
        status, _, reply = post(server, failing)
        assert status == 500, reply
        assert reply["error"]["code"] == "request_failed"
        assert "injected sampler failure" in reply["error"]["message"]
    for sock, head in neighbours:
        events = sse_events(head + read_rest(sock))
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"]["completion_tokens"] == CAP, events[-2]
        assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert_in_step(server, tiny_model)
