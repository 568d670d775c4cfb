"""Clients that hang up, on real ranks: their generation stops on every rank, and a
hundred of them leave the ranks in step and their memory flat."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from rank_helpers import (
    Logs,
    assert_in_step,
    chat_body,
    cpu_seconds,
    long_body,
    open_stream,
    post,
    rank_pids,
    rss_mb,
    wait_until,
)

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

# A rank that computes uses most of a core; an idle one blocks in a socket read.
BUSY_CPU_SHARE = 0.1
IDLE_CPU_SHARE = 0.04
DROPS = 100
# Seconds from a hang-up until every rank is idle; the 3000 tokens asked for would
# take more than 10 s, so a stop within this proves the cancellation reached every rank.
STOPPED_WITHIN = 5
RSS_TOLERANCE_MB = 24


@pytest.fixture(scope="module")
def server(tiny_model):
    with ServerCluster(2, tiny_model, sink=Logs()) as cluster:
        yield cluster


def cpu_shares(pids: list[int], window: float = 0.5) -> list[float]:
    """The share of one core each process used over the next `window` seconds."""
    before = [cpu_seconds(pid) for pid in pids]
    time.sleep(window)
    return [(cpu_seconds(pid) - b) / window for pid, b in zip(pids, before, strict=True)]


def all_idle(pids: list[int]) -> bool:
    return max(cpu_shares(pids)) < IDLE_CPU_SHARE


def test_dropped_stream_stops_generation_on_every_rank(server, tiny_model):
    pids = rank_pids(server)
    sock, _ = open_stream(server, long_body(), events=5)
    try:
        # 3000 tokens take many seconds: every rank is computing.
        assert min(cpu_shares(pids)) > BUSY_CPU_SHARE
    finally:
        sock.close()
    dropped = time.monotonic()
    assert wait_until(lambda: all_idle(pids), timeout=10)
    assert time.monotonic() - dropped < STOPPED_WITHIN
    assert_in_step(server, tiny_model)


def test_dropped_non_streaming_request_stops_generation_on_every_rank(server, tiny_model):
    pids = rank_pids(server)
    connection = http.client.HTTPConnection(server.host, server.port, timeout=1)
    connection.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(long_body()),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(TimeoutError):
        connection.getresponse()  # the client gives up after 1 s and hangs up
    connection.close()
    dropped = time.monotonic()
    assert wait_until(lambda: all_idle(pids), timeout=10)
    assert time.monotonic() - dropped < STOPPED_WITHIN
    assert_in_step(server, tiny_model)


def drop_streams(server, count: int) -> None:
    for _ in range(count):
        sock, received = open_stream(server, long_body(), events=3)
        assert received.startswith(b"HTTP/1.0 200"), received[:200]
        sock.close()


def test_a_hundred_disconnects_leave_the_ranks_in_step_and_memory_flat(server, tiny_model):
    pids = rank_pids(server)
    drop_streams(server, 10)  # warm-up: allocator pools, caches of compiled kernels
    assert wait_until(lambda: all_idle(pids), timeout=10)
    before = [rss_mb(pid) for pid in pids]
    started = time.monotonic()
    drop_streams(server, DROPS)
    assert time.monotonic() - started < 120
    assert wait_until(lambda: all_idle(pids), timeout=10)
    after = [rss_mb(pid) for pid in pids]
    for rank, (b, a) in enumerate(zip(before, after, strict=True)):
        assert a - b < RSS_TOLERANCE_MB, f"rank {rank}: {b:.0f} MB -> {a:.0f} MB"
    assert server.ranks.poll_failure() is None
    assert_in_step(server, tiny_model)


def test_a_client_that_leaves_during_its_prefill_stops_it_on_every_rank(tiny_model):
    # One-token chunks make a long prompt take seconds to prefill on the tiny model.
    args = ("--prefill-chunk", "1")
    with ServerCluster(2, tiny_model, extra_args=args, sink=Logs()) as server:
        pids = rank_pids(server)
        body = chat_body("tide and harbour " * 300, max_tokens=8)
        sock, _ = open_stream(server, body, events=0)
        time.sleep(0.5)
        sock.close()
        dropped = time.monotonic()
        assert wait_until(lambda: all_idle(pids), timeout=10)
        assert time.monotonic() - dropped < STOPPED_WITHIN
        # The same prompt again starts from what was prefilled before the cancellation.
        status, _, reply = post(server, body)
        assert status == 200, reply
        usage = reply["usage"]
        assert 0 < usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"] / 2
        assert_in_step(server, tiny_model)
