"""Hostile input on real ranks: each case gets its 4xx error object, and the cluster
stays healthy and in step (the next greedy request gives the reference answer).

The full table of hostile cases runs against a fake engine (test_api_errors.py);
this is a representative sample through waitress, the engine and two ranks.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from rank_helpers import (
    Logs,
    assert_in_step,
    chat_body,
    long_body,
    open_stream,
    post,
    wait_until,
)

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

CLIENT_TIMEOUT = 2
DEEP = 100_000
MAX_BODY = 1_000_000
CAP = 4000  # below the tiny model's context (4096)


@pytest.fixture(scope="module")
def server(tiny_model):
    args = ("--client-timeout", str(CLIENT_TIMEOUT), "--max-tokens", "16")
    args += ("--max-tokens-cap", str(CAP), "--max-body-bytes", str(MAX_BODY))
    args += ("--max-batch", "1", "--max-queue", "1")  # at most 2 open requests: then 429
    with ServerCluster(2, tiny_model, extra_args=args, sink=Logs()) as cluster:
        yield cluster


def bad_tool(**function):
    return [{"type": "function", "function": {"name": "f", **function}}]


# (name, body: dict -> JSON or bytes -> raw, status, param, code)
CASES = [
    ("bad json", b'{"messages": [', 400, None, "invalid_json"),
    ("invalid utf-8", b'{"messages": "\xff\xfe"}', 400, None, "invalid_json"),
    ("nested 100,000 deep", b'{"messages": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, None, None),
    ("max_tokens string", chat_body(max_tokens="10"), 400, "max_tokens", None),
    ("max_tokens negative", chat_body(max_tokens=-1), 400, "max_tokens", None),
    ("stop number", chat_body(stop=123), 400, "stop", None),
    ("huge max_tokens", chat_body(max_tokens=10**30), 400, "max_tokens", None),
    ("max_tokens over --max-tokens-cap", chat_body(max_tokens=CAP + 1), 400, "max_tokens", None),
    ("max_tokens over the context", chat_body("hello " * 300, max_tokens=CAP), 400, "max_tokens",
     "context_length_exceeded"),
    ("body over --max-body-bytes", chat_body("x" * MAX_BODY), 413, None, None),
    ("prompt longer than the context", chat_body("hello " * 5000), 400, "messages",
     "context_length_exceeded"),
    ("n beyond the open requests (2)", chat_body(n=3), 400, "n", None),
    ("top_logprobs 21", chat_body(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    ("logprobs string", chat_body(logprobs="yes"), 400, "logprobs", None),
    ("tool without name", chat_body(tools=bad_tool(name="")), 400, "tools[0].function.name",
     None),
    ("tool parameters string", chat_body(tools=bad_tool(parameters="x")), 400,
     "tools[0].function.parameters", None),
    ("image content part", chat_body() | {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400,
     "messages[0].content[0]", None),
    ("unknown role", chat_body() | {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role", None),
    ("empty messages", chat_body() | {"messages": []}, 400, "messages", None),
    ("temperature 3", chat_body(temperature=3), 400, "temperature", None),
]  # fmt: skip


def assert_error(status, headers, body, expected_status, param=None, code=None):
    assert status == expected_status, body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert headers.get("X-Request-Id")


@pytest.mark.parametrize(
    "body, status, param, code", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_hostile_body_gets_its_error_and_the_cluster_stays_in_step(
    server, tiny_model, body, status, param, code
):
    assert_error(*post(server, body), status, param, code)
    assert_in_step(server, tiny_model)


def responses_body(**fields) -> dict:
    return {"model": "default_model", "input": "hello", "max_output_tokens": 8, **fields}


SURROGATE_ARGUMENTS = '{"path": "\\ud800"}'  # JSON text whose string holds a lone surrogate
RESPONSES_CASES = [
    ("unknown previous_response_id", responses_body(previous_response_id="resp_x"), 400,
     "previous_response_id", "not_found"),
    ("unknown item_reference", responses_body(input=[{"type": "item_reference", "id": "x"}]),
     400, "input[0]", None),
    ("lone surrogate in call arguments", responses_body(input=[{"type": "function_call",
     "call_id": "c", "name": "f", "arguments": SURROGATE_ARGUMENTS}]), 400,
     "input[0].arguments", None),
    ("tool without a type", responses_body(tools=[{"name": "f"}]), 400, "tools[0]", None),
    ("input longer than the context", responses_body(input="hello " * 5000), 400, "input",
     "context_length_exceeded"),
    ("max_output_tokens over --max-tokens-cap", responses_body(max_output_tokens=CAP + 1), 400,
     "max_output_tokens", None),
]  # fmt: skip


@pytest.mark.parametrize(
    "body, status, param, code",
    [case[1:] for case in RESPONSES_CASES],
    ids=[case[0] for case in RESPONSES_CASES],
)
def test_hostile_responses_body_gets_its_error_and_the_cluster_stays_in_step(
    server, tiny_model, body, status, param, code
):
    assert_error(*post(server, body, "/v1/responses"), status, param, code)
    assert_in_step(server, tiny_model)


def test_null_max_tokens_means_the_default(server, tiny_model):
    # The seed's server died on this; here null means "absent" (the --max-tokens default).
    status, _, body = post(server, chat_body(max_tokens=None))
    assert status == 200, body
    assert body["usage"]["completion_tokens"] <= 16
    assert_in_step(server, tiny_model)


def test_50_mb_body_is_refused_before_it_is_read(server, tiny_model):
    size = 50 * 1024 * 1024
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            + f"\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        response = b""
        while chunk := sock.recv(65536):  # the server answers and closes at once
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert set(json.loads(body)) == {"error"}
    assert_in_step(server, tiny_model)


@pytest.mark.parametrize(
    "method, path, status, code",
    [("GET", "/v1/nope", 404, "not_found"), ("GET", "/v1/chat/completions", 405, None)],
)
def test_unknown_path_and_wrong_method(server, tiny_model, method, path, status, code):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request(method, path)
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert_error(response.status, response.headers, body, status, None, code)
    assert_in_step(server, tiny_model)


def test_missing_content_length_is_411(server, tiny_model):
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.0 411") or response.startswith(b"HTTP/1.1 411"), response
    assert_in_step(server, tiny_model)


def test_half_a_body_then_a_stall_is_dropped_without_blocking_others(server, tiny_model):
    stalled = []
    for _ in range(3):
        sock = socket.create_connection((server.host, server.port), timeout=30)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 1000\r\n\r\n" + b'{"messages": [{"role": '
        )
        stalled.append(sock)
    started = time.monotonic()
    assert_in_step(server, tiny_model)  # served while the stalled clients wait
    for sock in stalled:
        sock.settimeout(CLIENT_TIMEOUT * 2 + 10)
        assert sock.recv(100) == b""  # the server dropped it
        sock.close()
    assert time.monotonic() - started < CLIENT_TIMEOUT * 2 + 10
    assert_in_step(server, tiny_model)


def test_full_queue_is_429_with_retry_after(server, tiny_model):
    # --max-batch 1 --max-queue 1: one running and one waiting request fill the server.
    streams = [open_stream(server, long_body(), events=events)[0] for events in (2, 0)]
    try:
        status, headers, body = post(server, chat_body())
        assert_error(status, headers, body, 429, None, "queue_full")
        assert int(headers["Retry-After"]) >= 1
    finally:
        for sock in streams:
            sock.close()
    # Once the dropped streams are cancelled, there is room again.
    assert wait_until(lambda: post(server, chat_body(max_tokens=1))[0] == 200, timeout=10)
    assert_in_step(server, tiny_model)
