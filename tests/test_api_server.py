"""The app behind the real WSGI server (waitress) on a free port: streaming, clients
that leave or stall, server-level errors, and the official openai SDK as the client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from api_fakes import FakeEngine, build_tokenizer, settings

from refserver.api import create_app
from refserver.api.server import PortUnavailableError, check_port_free, make_server, shutdown

TOKENIZER = build_tokenizer()
TEXT = "Hello! The answer is 42."
USER = [{"role": "user", "content": "hi"}]
CHAT_BODY = json.dumps({"messages": USER, "stream": True}).encode()


@pytest.fixture
def serve():
    """serve(engine, **settings) -> port of a waitress server running the app."""
    servers = []

    def start(engine, channel_timeout=60, cleanup_interval=10, **overrides):
        app = create_app(engine, TOKENIZER, settings(**overrides))
        server = make_server(
            app, "127.0.0.1", 0, threads=8,
            channel_timeout=channel_timeout, cleanup_interval=cleanup_interval,
        )  # fmt: skip
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        return server.effective_port

    yield start
    for server in servers:
        shutdown(server)


def _engine(**kwargs):
    return FakeEngine(TOKENIZER.encode(TEXT), eos_id=TOKENIZER.eos_token_id, **kwargs)


def _post(port, body: bytes, path="/v1/chat/completions", headers=None):
    """Send a POST by hand; returns the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    headers = {"Content-Length": str(len(body))} if headers is None else headers
    for name, value in headers.items():
        head += f"{name}: {value}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def _read_until(sock, marker: bytes, limit=10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _response(sock) -> tuple[int, dict]:
    """Status and JSON body of a response with Content-Length, then close."""
    answer = _response_open(sock)
    sock.close()
    return answer


def _response_open(sock) -> tuple[int, dict]:
    """Status and JSON body of a response with Content-Length; the socket stays open."""
    data = _read_until(sock, b"\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


def _wait_for(condition, limit=5.0):
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _sdk(port, key="none"):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


ANTHROPIC_STREAM = json.dumps(
    {"model": "tiny", "max_tokens": 8, "messages": USER, "stream": True}
).encode()

RESPONSES_STREAM = json.dumps({"model": "tiny", "input": "hi", "stream": True}).encode()


@pytest.mark.parametrize(
    "path, body, end",
    [
        ("/v1/chat/completions", CHAT_BODY, b"data: [DONE]"),
        ("/v1/messages", ANTHROPIC_STREAM, b"event: message_stop"),
        ("/v1/responses", RESPONSES_STREAM, b"event: response.completed"),
    ],
    ids=["openai", "anthropic", "responses"],
)
def test_a_queued_stream_gets_its_headers_at_once(serve, path, body, end):
    """A stream waiting in the engine's queue has nothing to send yet (Anthropic's
    message_start needs the cached-token count); a client with a short first-byte
    timeout must still see its response begin."""
    queued = threading.Event()
    port = serve(_engine(queued=queued))
    sock = _post(port, body, path=path)
    head = _read_until(sock, b"\r\n\r\n", limit=3)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert not queued.is_set()
    queued.set()
    assert end in _read_until(sock, end)
    sock.close()


def test_headers_and_first_chunk_arrive_before_the_first_token(serve):
    gate = threading.Event()
    port = serve(_engine(gate=gate))
    sock = _post(port, CHAT_BODY)
    data = _read_until(sock, b'"role":"assistant"', limit=3)
    assert not gate.is_set()
    assert data.startswith(b"HTTP/1.1 200") and b"text/event-stream" in data
    assert b'"role":"assistant"' in data
    gate.set()
    assert b"data: [DONE]" in _read_until(sock, b"data: [DONE]")
    sock.close()


def test_tokens_stream_as_they_are_made(serve):
    port = serve(_engine(delay=0.15))
    started = time.monotonic()
    sock = _post(port, CHAT_BODY)
    _read_until(sock, b'"content":"Hello"')
    first = time.monotonic() - started
    _read_until(sock, b"data: [DONE]")
    total = time.monotonic() - started
    sock.close()
    assert first < 0.6 and total > 1.1  # 8 tokens at 0.15 s each


def test_keepalive_reaches_the_client_during_a_long_wait(serve):
    gate = threading.Event()
    port = serve(_engine(gate=gate), keepalive_seconds=0.2)
    sock = _post(port, CHAT_BODY)
    _read_until(sock, b'"role":"assistant"', limit=3)  # after the stream's opening comment
    assert b": keep-alive" in _read_until(sock, b": keep-alive", limit=3)
    gate.set()
    sock.close()


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_engine_request(serve, stream, n):
    engine = FakeEngine(TOKENIZER.encode(TEXT) * 50, delay=0.05)
    port = serve(engine)
    sock = _post(port, json.dumps({"messages": USER, "stream": stream, "n": n}).encode())
    if stream:
        _read_until(sock, b'"content":"Hello"')
    else:
        assert _wait_for(lambda: len(engine.requests) == n)
    sock.close()
    ids = {request.id for request in engine.requests}  # every choice's
    assert _wait_for(lambda: ids <= set(engine.cancelled))
    assert _wait_for(lambda: ids <= set(engine.closed))
    assert engine.finished == []
    assert _sdk(port).chat.completions.create(model="tiny", messages=USER, max_tokens=8)


def test_a_stalled_half_body_does_not_block_others(serve):
    port = serve(_engine(), channel_timeout=1, cleanup_interval=1)
    stalled = [
        _post(port, b'{"messages": [', headers={"Content-Length": "1000"}) for _ in range(20)
    ]  # more stalled clients than worker threads
    started = time.monotonic()
    reply = _sdk(port).chat.completions.create(model="tiny", messages=USER)
    assert reply.choices[0].message.content == TEXT
    assert time.monotonic() - started < 2
    stalled[0].settimeout(10)
    assert stalled[0].recv(100) == b""  # dropped after channel_timeout
    for sock in stalled:
        sock.close()


@pytest.mark.parametrize(
    "headers, body, status, code",
    [
        ({"Content-Length": "abc"}, b"{}", 400, "bad_request"),
        ({"Content-Length": "52428800"}, b"{", 413, "request_entity_too_large"),
        ({}, CHAT_BODY, 411, "length_required"),
        ({"Content-Length": "0"}, b"", 400, "invalid_json"),
    ],
)
def test_server_level_errors_are_error_objects(serve, headers, body, status, code):
    port = serve(_engine(), max_body_bytes=1_000_000)
    got_status, payload = _response(_post(port, body, headers=headers))
    assert (got_status, payload["error"]["code"]) == (status, code)
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    reply = _sdk(port).chat.completions.create(model="tiny", messages=USER)
    assert reply.choices[0].message.content == TEXT


@pytest.mark.parametrize("path", ["/v1/messages", "//v1/messages/count_tokens"])
def test_server_level_errors_on_anthropic_routes_are_anthropic_error_objects(serve, path):
    """waitress refuses a body over the limit before the app sees it; on /v1/messages the
    error is still Anthropic's shape, with both request id headers."""
    port = serve(_engine(), max_body_bytes=1000)
    sock = _post(port, b"{", path=path, headers={"Content-Length": "52428800"})
    head = _read_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")[0].lower()
    sock.close()
    status, payload = _response(_post(port, b"{", path, {"Content-Length": "2000"}))
    assert status == 413 and payload["type"] == "error"
    assert payload["error"]["type"] == "request_too_large"
    assert "at most 1000 bytes" in payload["error"]["message"]
    assert b"\r\nrequest-id: " in head and b"\r\nx-request-id: " in head


@pytest.mark.parametrize("size, status", [(1000, 200), (1001, 413)])
def test_body_limit_is_exact_and_named_exactly(serve, size, status):
    port = serve(_engine(), max_body_bytes=1000)
    body = json.dumps({"messages": USER}).encode().ljust(size)  # JSON allows trailing spaces
    got_status, payload = _response(_post(port, body))
    assert got_status == status
    if status == 413:
        assert "at most 1000 bytes" in payload["error"]["message"]


@pytest.mark.parametrize("size", [4_000, 16 * 1024 * 1024])
def test_a_client_that_sends_a_whole_body_over_the_limit_reads_the_413(serve, size):
    """http.client (like most clients) sends the whole body before it reads a byte. The
    server answers at the headers; a close then would reset the connection under the
    client's send and lose the answer, so it closes only after the client has sent."""
    port = serve(_engine(), max_body_bytes=1000)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/chat/completions", b" " * size)  # no BrokenPipeError
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "at most 1000 bytes" in payload["error"]["message"]
    reply = _sdk(port).chat.completions.create(model="tiny", messages=USER)
    assert reply.choices[0].message.content == TEXT


def test_a_refused_connection_that_never_closes_is_closed_after_lingering(serve, monkeypatch):
    monkeypatch.setattr("refserver.api.server.LINGER_SECONDS", 0.5)
    port = serve(_engine(), max_body_bytes=1000)
    sock = _post(port, b"{", headers={"Content-Length": "52428800"})
    status, _ = _response_open(sock)
    sock.settimeout(10)
    started = time.monotonic()
    sock.sendall(b" " * 1000)  # still read (and discarded) while the server lingers
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        while time.monotonic() - started < 5:
            sock.sendall(b" " * 1000)  # until it closes (a reset: we never read its FIN)
            time.sleep(0.05)
    sock.close()
    assert status == 413 and time.monotonic() - started < 3


def test_chunked_request_body_is_accepted(serve):
    port = serve(_engine())
    body = json.dumps({"messages": USER}).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, payload = _response(_post(port, chunked, headers={"Transfer-Encoding": "chunked"}))
    assert status == 200 and payload["choices"][0]["message"]["content"] == TEXT


def test_openai_sdk_chat(serve):
    port = serve(_engine(), api_keys=("sekret",))
    reply = _sdk(port, "sekret").chat.completions.create(
        model="tiny-test-model", messages=USER, max_tokens=50
    )
    assert reply.choices[0].message.content == TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    with pytest.raises(openai.AuthenticationError):
        _sdk(port, "wrong").chat.completions.create(model="tiny", messages=USER)


def test_openai_sdk_retrieves_the_model(serve):
    client = _sdk(serve(_engine()))
    assert client.models.retrieve("tiny").id == "tiny-test-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_doubled_slash_is_served_not_redirected(serve):
    port = serve(_engine())
    body = json.dumps({"messages": USER}).encode()
    status, payload = _response(_post(port, body, path="/v1//chat/completions"))
    assert status == 200 and payload["choices"][0]["message"]["content"] == TEXT


def test_openai_sdk_stream_with_usage(serve):
    port = serve(_engine())
    stream = _sdk(port).chat.completions.create(
        model="tiny", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_stream_accumulator(serve):
    port = serve(_engine())
    with _sdk(port).chat.completions.stream(model="tiny", messages=USER) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == TEXT
    assert final.choices[0].message.role == "assistant"


def test_openai_sdk_completions_and_errors(serve):
    port = serve(_engine())
    reply = _sdk(port).completions.create(model="tiny", prompt="hi", max_tokens=3)
    assert reply.choices[0].text == "Hello! The" and reply.choices[0].finish_reason == "length"
    streamed = _sdk(port).completions.create(model="tiny", prompt="hi", stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == TEXT
    with pytest.raises(openai.BadRequestError) as caught:
        _sdk(port).chat.completions.create(model="tiny", messages=USER, n=200)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        _sdk(port).chat.completions.create(model="gpt-4", messages=USER)


def test_concurrent_streams_all_complete(serve):
    port = serve(_engine(delay=0.01))

    def one(_):
        stream = _sdk(port).chat.completions.create(model="tiny", messages=USER, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, range(12))) == [TEXT] * 12


def test_health_through_the_server(serve):
    port = serve(_engine())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/health")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    assert response.getheader("x-request-id") == response.getheader("request-id")
    assert response.getheader("x-request-id")


def test_port_check():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortUnavailableError, match=f"127.0.0.1:{port}.*--port"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)
    with pytest.raises(PortUnavailableError):
        check_port_free("no-such-host.invalid", 8080)


def test_shutdown_lets_a_slow_reader_receive_the_whole_response():
    """Responses already made (a drain's last ones) reach a client that reads slowly."""
    tokens = TOKENIZER.encode(TEXT) * 2000
    engine = FakeEngine(tokens)
    app = create_app(engine, TOKENIZER, settings(context_length=len(tokens) + 64))
    server = make_server(app, "127.0.0.1", 0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # far less than the body
    sock.connect(("127.0.0.1", int(server.effective_port)))
    body = json.dumps({"messages": USER, "stream": True, "max_tokens": len(tokens)}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 30
    while not engine.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.finished  # the whole response is made; most of it is still unsent
    received = bytearray()

    def read_slowly():
        sock.settimeout(30)
        while chunk := sock.recv(4096):
            received.extend(chunk)
            time.sleep(0.0005)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    shutdown(server)
    reader.join(timeout=60)
    sock.close()
    tail = bytes(received[-64:])
    assert b"data: [DONE]\n\n" in tail and tail.endswith(b"\r\n0\r\n\r\n"), tail  # chunked
