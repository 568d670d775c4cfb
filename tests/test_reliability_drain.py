"""SIGTERM drains, on real ranks: new requests get 503, running ones finish within the
grace period (or end with an error past it), then every rank exits 0."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from rank_helpers import Logs, chat_body, long_body, open_stream, post, sse_events, wait_until

from simcluster.launch import free_ports
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

EXIT_WITHIN = 30


def read_all(sock, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def terminate(server, ranks, sig=signal.SIGTERM) -> None:
    for rank in ranks:
        server.ranks.kill_rank(rank, sig)


@pytest.mark.parametrize(
    "sig, signalled",
    [(signal.SIGTERM, (0, 1)), (signal.SIGTERM, (0,)), (signal.SIGHUP, (0, 1))],
    ids=["every-rank", "rank-0-only", "hang-up"],  # mlx.launch's ssh -tt sessions hang up
)
def test_sigterm_lets_running_requests_finish_then_every_rank_exits_0(tiny_model, sig, signalled):
    logs = Logs()
    with ServerCluster(2, tiny_model, extra_args=("--drain-seconds", "30"), sink=logs) as server:
        result = {}
        plain = threading.Thread(target=lambda: result.update(reply=post(server, long_body(600))))
        plain.start()
        sock, _ = open_stream(server, long_body(600), events=3)
        terminate(server, signalled, sig)
        # Draining: no new work, /health says why.
        assert wait_until(lambda: server.health()[0] == 503, timeout=5)
        status, body = server.health()
        assert "draining" in body["error"]["message"]
        status, _, body = post(server, chat_body(max_tokens=4))
        assert status == 503 and body["error"]["code"] == "not_ready", body
        # The running requests finish normally.
        events = sse_events(read_all(sock, timeout=EXIT_WITHIN))
        sock.close()
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
        assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == (
            "length"
        )
        plain.join(timeout=EXIT_WITHIN)
        status, _, body = result["reply"]
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 600
        assert server.ranks.exit_codes(timeout=EXIT_WITHIN) == [0, 0]
    assert "Traceback" not in logs.text() and " ERROR " not in logs.text()


def test_requests_still_running_when_the_grace_period_ends_get_an_error(tiny_model):
    with ServerCluster(2, tiny_model, extra_args=("--drain-seconds", "1")) as server:
        sock, _ = open_stream(server, long_body(3000), events=3)
        started = time.monotonic()
        terminate(server, (0, 1))
        events = sse_events(read_all(sock, timeout=EXIT_WITHIN))
        sock.close()
        assert time.monotonic() - started < 10
        assert events[-1] == "[DONE]"
        assert "shut down" in events[-2]["error"]["message"], events[-2]
        assert server.ranks.exit_codes(timeout=EXIT_WITHIN) == [0, 0]


def test_sigterm_to_simcluster_serve_drains_its_ranks(tiny_model, tmp_path):
    """As a supervisor stops it: the running stream ends properly, every rank drains."""
    port = free_ports(1)[0]
    command = [sys.executable, "-m", "simcluster.cli", "serve", "-n", "2"]
    command += ["--model", str(tiny_model), "--port", str(port)]
    stderr = tmp_path / "stderr.txt"
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True)
    try:
        assert select.select([launcher.stdout], [], [], 120)[0], "no rank became healthy"
        assert "serving" in launcher.stdout.readline()
        server = SimpleNamespace(host="127.0.0.1", port=port)
        sock, _ = open_stream(server, long_body(200), events=3)
        launcher.send_signal(signal.SIGTERM)
        events = sse_events(read_all(sock, timeout=EXIT_WITHIN))
        sock.close()
        assert launcher.wait(timeout=EXIT_WITHIN) == 0
        assert events[-1] == "[DONE]", events[-3:]
        assert "received SIGTERM: draining" in stderr.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
