"""Progress while a cluster starts: each rank's log, and /health's 503 body per rank."""

from __future__ import annotations

import logging
import socket
import sys
import textwrap
import time

import pytest
from rank_helpers import Logs, wait_until

from refserver.control import Channel, ControlError
from refserver.load_progress import LoadProgress, StartupBoard, describe, reporting
from simcluster.serve import ServerCluster


def test_progress_counts_layers_and_bytes_with_rate_and_time_left():
    progress = LoadProgress(rank=1)
    progress.begin(layers=31, total_bytes=92_600_000_000)
    progress.started -= 10.0  # ten seconds in
    progress.advance(40_000_000_000, layers=12)
    snapshot = progress.snapshot()
    assert snapshot["layers_done"] == 12
    assert snapshot["bytes_per_second"] == pytest.approx(4e9, rel=0.01)
    assert snapshot["seconds_left"] == pytest.approx(13.15, rel=0.01)
    assert describe(snapshot) == "12 of 31 layers, 40.0 GB of 92.6 GB at 4.0 GB/s, about 13 s left"


def test_reporting_logs_at_an_interval_and_sends_the_last_report(monkeypatch, caplog):
    monkeypatch.setattr("refserver.load_progress.REPORT_INTERVAL", 0.05)
    sent = []
    progress = LoadProgress(rank=1)
    progress.begin(layers=2, total_bytes=100)
    with caplog.at_level(logging.INFO, logger="refserver.load_progress"):
        with reporting(progress, sent.append):
            time.sleep(0.2)
            progress.advance(100, layers=2)
    assert any("loading: 0 of 2 layers" in r.getMessage() for r in caplog.records)
    assert sent[-1]["type"] == "progress" and sent[-1]["layers_done"] == 2


def channel_pair() -> tuple[Channel, Channel]:
    """Both ends of a loopback TCP connection (the control plane's transport)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return Channel(server, "rank 1"), Channel(client, "rank 0")


def test_rank_0_reads_peer_progress_and_keeps_the_ready_message():
    board, (at_rank_0, at_rank_1) = StartupBoard(), channel_pair()
    own = LoadProgress(rank=0)
    own.begin(layers=2, total_bytes=10)
    board.track(own)
    board.watch(1, at_rank_0, timeout=5)
    at_rank_1.send({"type": "progress", "rank": 1, "layers_done": 1, "layers_total": 2})
    assert wait_until(lambda: len(board.ranks()) == 2, timeout=5)
    assert board.ranks()[1] == {"rank": 1, "layers_done": 1, "layers_total": 2}
    at_rank_1.send({"type": "ready", "kv": {}})
    assert board.first_message(1) == {"type": "ready", "kv": {}}


def test_a_peer_that_leaves_while_loading_is_an_error():
    board, (at_rank_0, at_rank_1) = StartupBoard(), channel_pair()
    board.watch(1, at_rank_0, timeout=5)
    at_rank_1.close()
    with pytest.raises(ControlError):
        board.first_message(1)


# Each rank reads its layers slowly and reports often, so that the start can be watched.
SLOW_LOAD = textwrap.dedent(
    """
    import sys, time
    import refserver.load_progress as progress
    progress.REPORT_INTERVAL = 0.2
    advance = progress.LoadProgress.advance
    def slow(self, *args, **kwargs):
        time.sleep(1.0)
        advance(self, *args, **kwargs)
    progress.LoadProgress.advance = slow
    from refserver.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_health_and_logs_show_each_rank_loading(tiny_model, tmp_path):
    script = tmp_path / "slow_load.py"
    script.write_text(SLOW_LOAD)
    logs = Logs()

    def slowly(rank, command):
        return [sys.executable, str(script), *command[3:]]  # command: python -m refserver ...

    cluster = ServerCluster(2, tiny_model, sink=logs, rank_command=slowly)
    cluster.ranks.start()
    try:
        bodies = []

        def loading_seen() -> bool:
            status, body = cluster.health()
            bodies.append(body)
            loading = body.get("loading") or []
            return status == 503 and [r["layers_done"] for r in loading] == [1, 1]

        assert wait_until(loading_seen, timeout=60, interval=0.1)
        body = bodies[-1]
        assert [rank["rank"] for rank in body["loading"]] == [0, 1]
        assert all(rank["layers_total"] == 2 for rank in body["loading"])
        message = body["error"]["message"]
        assert (
            message.startswith("loading: rank 0: 1 of 2 layers") and "; rank 1: 1 of 2" in message
        )
        cluster.wait_healthy(timeout=60)
        for rank in (0, 1):
            assert "loading: 1 of 2 layers" in logs.text(rank)
        assert "loading" not in cluster.health()[1]
    finally:
        cluster.ranks.stop()
