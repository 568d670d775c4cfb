"""Security on real ranks: API keys, the control plane's door, and what reaches logs
and clients."""

from __future__ import annotations

import json
import signal
import socket
import struct
import time
import urllib.error
import urllib.request

import pytest
from rank_helpers import (
    Logs,
    assert_in_step,
    chat_body,
    complete,
    long_body,
    open_stream,
    post,
    wait_until,
)

from refserver.cli import build_parser
from refserver.control import HELLO_TIMEOUT
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

KEYS = ("key-from-flag", "key-from-env-1", "key-from-env-2")
TOKEN = "cluster-secret"
RANK_1_DELAY = 9  # seconds: strangers get to rank 0's control port first


@pytest.fixture(scope="module")
def secured(tiny_model):
    env = {"REFSERVER_API_KEY": f"{KEYS[1]}, {KEYS[2]}"}
    args = ("--api-key", KEYS[0])
    with ServerCluster(2, tiny_model, extra_args=args, env=env, sink=Logs()) as cluster:
        yield cluster


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": KEYS[0]}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_v1_routes_refuse_requests_without_a_valid_key(secured, path, headers):
    status, response_headers, body = post(secured, {"prompt": "x"}, path, headers)
    assert status == 401, body
    assert body["error"]["type"] == "authentication_error"
    assert response_headers.get("WWW-Authenticate") == "Bearer"


@pytest.mark.parametrize("key", KEYS)
def test_every_key_from_the_flag_and_the_environment_works(secured, tiny_model, key):
    assert_in_step(secured, tiny_model, api_key=key)


def test_models_needs_a_key_and_health_does_not(secured):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{secured.base_url}/models", timeout=10)
    assert refused.value.code == 401
    assert secured.health()[0] == 200  # no key


def test_anthropic_messages_take_x_api_key(secured):
    body = {
        "model": "default_model",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "x"}],
    }
    assert post(secured, body, "/v1/messages")[0] == 401
    assert post(secured, body, "/v1/messages", {"x-api-key": KEYS[2]})[0] == 200


def completion_with_origin(cluster, origin: str, headers: dict | None = None):
    body = {"prompt": "x", "max_tokens": 1}
    return post(cluster, body, "/v1/completions", {"Origin": origin, **(headers or {})})


def test_cors_is_off_by_default(secured):
    status, headers, _ = completion_with_origin(secured, "http://app.example", auth(KEYS[0]))
    assert status == 200 and headers.get("Access-Control-Allow-Origin") is None


def test_a_public_address_without_a_key_is_warned_about_and_origins_can_be_allowed(tiny_model):
    assert build_parser().parse_args(["--model", "m"]).host == "127.0.0.1"  # the default
    logs = Logs()
    args = ("--allowed-origins", "http://app.example")
    with ServerCluster(2, tiny_model, host="0.0.0.0", extra_args=args, sink=logs) as server:
        _, headers, _ = completion_with_origin(server, "http://app.example")
        assert headers["Access-Control-Allow-Origin"] == "http://app.example"
        _, headers, _ = completion_with_origin(server, "http://elsewhere.example")
        assert headers.get("Access-Control-Allow-Origin") is None
    assert "serving on 0.0.0.0 without an API key" in logs.text(0)


# -- the control plane ---------------------------------------------------------


def delayed(seconds: float):
    """A rank_command that starts rank 1 late."""

    def command(rank, command):
        if rank != 1:
            return command
        return ["sh", "-c", f'sleep {seconds} && exec "$@"', "sh", *command]

    return command


def hello(rank: int, token: str) -> bytes:
    payload = json.dumps({"type": "hello", "rank": rank, "token": token, "facts": {}}).encode()
    return struct.pack("!I", len(payload)) + payload


def read_reply(sock: socket.socket) -> dict | None:
    """rank 0's framed reply, or None when it just closed (or reset) the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    if len(data) < 4:
        return None
    (size,) = struct.unpack("!I", data[:4])
    return json.loads(data[4 : 4 + size])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def listening(port: int) -> bool:
    """Whether rank 0's control port accepts (the probe is one more refused stranger)."""
    try:
        connect(port).close()
        return True
    except OSError:
        return False


def trickled_until_dropped(port: int, limit: float) -> float:
    """Send a hello a byte a second; the seconds until rank 0 drops the connection."""
    started = time.monotonic()
    with connect(port) as sock:
        sock.settimeout(1.0)
        for byte in hello(1, TOKEN):
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(100) == b"":
                    break
            except TimeoutError:
                pass  # still open: one more byte
            except OSError:
                break
            if time.monotonic() - started > limit:
                break
    return time.monotonic() - started


def test_strangers_at_start_up_are_refused_logged_and_harmless(tiny_model):
    logs = Logs()
    env = {"REFSERVER_CLUSTER_TOKEN": TOKEN}
    server = ServerCluster(2, tiny_model, env=env, sink=logs, rank_command=delayed(RANK_1_DELAY))
    with server.ranks:
        port = server.ranks.control_port
        assert wait_until(lambda: listening(port), timeout=30)
        with connect(port) as sock:  # the right rank, the wrong token
            sock.sendall(hello(1, "guess"))
            assert read_reply(sock) == {"type": "refused", "error": "wrong cluster token"}
        with connect(port) as sock:  # no token at all
            sock.sendall(hello(1, ""))
            assert read_reply(sock)["type"] == "refused"
        # From an address outside the hostfile (127.0.0.2 is loopback too, on Linux).
        with socket.create_connection(("127.0.0.1", port), 30, ("127.0.0.2", 0)) as sock:
            sock.sendall(hello(1, TOKEN))
            assert read_reply(sock) is None
        with connect(port) as sock:  # a 4 GB "message"
            sock.sendall(b"\xff\xff\xff\xff")
            assert read_reply(sock) is None
        with connect(port) as sock:  # not even JSON
            sock.sendall(struct.pack("!I", 5) + b"\x80abcd")
            assert read_reply(sock) is None
        # Even knowing the token, a peer too slow to say hello is dropped, not waited for.
        assert trickled_until_dropped(port, limit=30) < HELLO_TIMEOUT + 3
        server.wait_healthy(timeout=60)
        assert_in_step(server, tiny_model)
    rank_0 = logs.text(0)
    assert rank_0.count("refused control connection from 127.0.0.1") >= 6, rank_0
    assert "wrong cluster token" in rank_0
    assert "refused control connection from 127.0.0.2" in rank_0 and "not a cluster host" in rank_0
    assert "Traceback" not in logs.text()


def test_control_port_is_closed_once_the_cluster_runs(tiny_model):
    with ServerCluster(2, tiny_model, env={"REFSERVER_CLUSTER_TOKEN": TOKEN}) as server:
        with pytest.raises(ConnectionRefusedError):
            connect(server.ranks.control_port)
        assert_in_step(server, tiny_model)


def test_a_rank_with_another_cluster_token_is_refused(tiny_model):
    logs = Logs()

    def other_token(rank, command):
        return command if rank == 0 else ["env", "REFSERVER_CLUSTER_TOKEN=other", *command]

    env = {"REFSERVER_CLUSTER_TOKEN": TOKEN}
    args = ("--connect-timeout", "4")
    server = ServerCluster(
        2, tiny_model, extra_args=args, env=env, sink=logs, rank_command=other_token
    )
    with server.ranks as ranks:
        codes = ranks.exit_codes(timeout=30)
    assert all(code not in (None, 0) for code in codes), codes
    assert "wrong cluster token" in logs.text(1)
    assert "did not join the control plane" in logs.text(0)
    assert "Traceback" not in logs.text()


# -- what reaches logs and clients ---------------------------------------------

SECRET = "zebra-moonlight-7431"


def test_no_prompt_contents_in_logs_and_no_traces_to_clients(tiny_model):
    logs = Logs()
    with ServerCluster(2, tiny_model, sink=logs) as server:
        assert complete(server, f"{SECRET} once", max_tokens=4)
        assert post(server, chat_body(SECRET, max_tokens=4))[0] == 200
        sock, _ = open_stream(server, chat_body(SECRET, max_tokens=200), events=3)
        sock.close()
        assert post(server, chat_body(SECRET, max_tokens="x"))[0] == 400
        # A body the server cannot handle: an error object with the request id, no trace.
        raw = json.dumps(chat_body(SECRET)).replace(SECRET, "\\ud800" + SECRET).encode()
        status, headers, body = post(server, raw)
        assert status in (400, 500), body
        assert "Traceback" not in json.dumps(body)
        if status == 500:
            request_id = headers["X-Request-Id"]
            assert body["error"]["message"] == f"internal error, request id {request_id}"
            assert wait_until(lambda: request_id in logs.text(0), timeout=5)
        # A rank lost mid-request: the client gets a short reason, no exception text.
        sock, _ = open_stream(server, long_body(prompt=SECRET), events=3)
        server.ranks.kill_rank(1, signal.SIGKILL)
        sock.settimeout(10)
        tail = b""
        while chunk := sock.recv(65536):
            tail += chunk
        sock.close()
        assert b"rank 1 lost" in tail and b"Traceback" not in tail and b"Errno" not in tail
        server.ranks.exit_codes(timeout=20)
    assert SECRET not in logs.text()  # complete: the ranks' output was read to the end
