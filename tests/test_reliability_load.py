"""Load on real ranks started with the defaults: huge prompts are refused without keeping
memory or stalling streams, and a full server still answers /health and says 429."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from contextlib import ExitStack

import pytest
from rank_helpers import Logs, long_body, open_stream, post, rank_pids, rss_mb, wait_until

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

HUGE_PROMPT = "once upon a time " * 500_000  # 8.5 MB
DEFAULT_OPEN_REQUESTS = 8 + 64  # --max-batch + --max-queue
OPEN_STREAMS = 80


@pytest.fixture(scope="module")
def server(tiny_model):
    with ServerCluster(2, tiny_model, sink=Logs()) as cluster:
        yield cluster


class GapWatch:
    """Reads a stream in a thread and keeps the largest pause between its reads."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._last = time.monotonic()
        self.largest_gap = 0.0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Stop reading (the stream is dropped); the largest pause seen."""
        self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        return self.largest_gap

    def _read(self) -> None:
        while self._sock.recv(65536):
            now = time.monotonic()
            self.largest_gap = max(self.largest_gap, now - self._last)
            self._last = now


def test_huge_prompts_keep_no_memory_and_stall_no_stream(server):
    rank0 = rank_pids(server)[0]
    assert post(server, {"prompt": "warm up", "max_tokens": 4}, "/v1/completions")[0] == 200
    before = rss_mb(rank0)
    sock, _ = open_stream(server, long_body(), events=2)
    with sock:
        watch = GapWatch(sock)
        for _ in range(10):
            status, _, body = post(server, {"prompt": HUGE_PROMPT}, "/v1/completions")
            assert status == 400, body
            assert body["error"]["code"] == "context_length_exceeded"
        largest_gap = watch.stop()
    after = rss_mb(rank0)
    assert largest_gap < 1.0
    assert after - before < 100, f"rank 0 grew from {before:.0f} MB to {after:.0f} MB"


def test_health_and_429_with_more_streams_than_the_engine_admits(server):
    # The last test's stream, dropped, must be gone: while it is counted, one stream
    # fewer is admitted, and once it goes the probe below would be admitted instead.
    assert wait_until(lambda: open_requests(server) == 0, timeout=30)
    with ExitStack() as stack:
        streams = [stack.enter_context(send_stream(server)) for _ in range(OPEN_STREAMS)]
        refused = OPEN_STREAMS - DEFAULT_OPEN_REQUESTS
        assert wait_until(lambda: statuses(streams).count(429) == refused, timeout=30)
        started = time.monotonic()
        assert server.health()[0] == 200
        assert time.monotonic() - started < 1.0
        status, headers, body = post(server, long_body(), timeout=5)
        assert status == 429, body
        assert int(headers["Retry-After"]) >= 1


def test_a_reply_whose_choices_do_not_all_fit_is_refused_whole(server):
    assert wait_until(lambda: open_requests(server) == 0, timeout=30)
    room = 2
    with ExitStack() as stack:
        for _ in range(DEFAULT_OPEN_REQUESTS - room):
            stack.enter_context(send_stream(server))
        assert wait_until(lambda: open_requests(server) == DEFAULT_OPEN_REQUESTS - room, 30)
        status, headers, body = post(server, {**long_body(), "n": room + 1}, timeout=5)
        assert status == 429, body
        assert "choices" in body["error"]["message"]
        assert open_requests(server) == DEFAULT_OPEN_REQUESTS - room  # none of it was queued
        with send_stream(server, n=room) as fitting:
            assert wait_until(lambda: statuses([fitting]) == [200], timeout=10)


def open_requests(cluster) -> int:
    """Requests the engine holds: decoding, being prefilled or queued."""
    requests = cluster.status()["requests"]
    return requests["running"] + requests["waiting"]


def send_stream(cluster, **fields) -> socket.socket:
    """A streaming chat request sent on a socket of its own; nothing is read yet."""
    payload = json.dumps({**long_body(), "stream": True, **fields}).encode()
    sock = socket.create_connection((cluster.host, cluster.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def statuses(streams: list[socket.socket]) -> list[int]:
    """The status of each stream whose response has begun (those not answered yet are left out)."""
    readable, _, _ = select.select(streams, [], [], 0)
    return [int(sock.recv(12, socket.MSG_PEEK).split()[1]) for sock in readable]
