"""Rank failure on real ranks: fail fast. In-flight requests get an error, /health turns
503 and stays so, and every rank exits non-zero in bounded time — for a rank killed,
a rank stopped mid-step with heartbeats turned down (the step deadline, the last
resort), and rank 0 itself. Silent ranks on the defaults: test_reliability_silent_rank."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rank_helpers import Logs, long_body, open_stream, post, sse_events

from simcluster.launch import free_ports
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

ERROR_WITHIN = 10  # seconds from the loss to the client's error
EXIT_WITHIN = 20  # seconds from the loss to every rank's exit


class HealthWatch:
    """Polls /health in a thread; records (time, status), 0 when nothing answers."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.seen.append((time.monotonic(), self.cluster.health()[0]))
            time.sleep(0.05)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=10)
        return [status for _, status in self.seen]

    def first_unhealthy(self) -> float | None:
        return next((t for t, status in self.seen if status != 200), None)


def assert_503_until_exit(statuses: list[int]) -> None:
    """Healthy, then 503 from the moment of the loss, then nothing (the process is gone)."""
    first_bad = next(i for i, status in enumerate(statuses) if status != 200)
    after = statuses[first_bad:]
    assert set(after) <= {503, 0}, after
    assert after[0] == 503, after  # the loss was known before rank 0 exited
    assert 0 not in after or set(after[after.index(0) :]) == {0}, after


def assert_every_rank_exits_non_zero(cluster, since: float) -> list[int | None]:
    codes = cluster.ranks.exit_codes(timeout=EXIT_WITHIN - (time.monotonic() - since))
    assert all(code not in (None, 0) for code in codes), codes
    return codes


def read_until_closed(sock, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def assert_stream_ends_with_an_error(received: bytes, lost: str) -> None:
    events = sse_events(received)
    assert events[-1] == "[DONE]", events[-3:]
    error = events[-2]["error"]
    assert lost in error["message"], error
    assert "Traceback" not in error["message"] and "Errno" not in error["message"], error
    assert error["type"] == "server_error"


def cluster(tiny_model, world_size=2, *args, logs=None):
    return ServerCluster(world_size, tiny_model, extra_args=args, sink=logs or Logs())


@pytest.mark.parametrize("world_size, victim", [(2, 1), (3, 2), (3, 1)])
def test_killed_rank_mid_stream(tiny_model, world_size, victim):
    logs = Logs()
    with cluster(tiny_model, world_size, logs=logs) as server:
        sock, _ = open_stream(server, long_body(), events=5)
        health = HealthWatch(server)
        server.ranks.kill_rank(victim, signal.SIGKILL)
        killed = time.monotonic()
        received = read_until_closed(sock, timeout=ERROR_WITHIN)
        sock.close()
        assert time.monotonic() - killed < ERROR_WITHIN
        assert_stream_ends_with_an_error(received, f"rank {victim}")
        assert_every_rank_exits_non_zero(server, killed)
        assert_503_until_exit(health.stop())
    assert f"rank {victim} lost" in logs.text(0)
    assert "Traceback" not in logs.text()


def test_killed_rank_during_a_non_streaming_request(tiny_model):
    with cluster(tiny_model) as server:
        result = {}
        thread = threading.Thread(target=lambda: result.update(reply=post(server, long_body())))
        thread.start()
        time.sleep(1.0)  # the request is generating
        server.ranks.kill_rank(1, signal.SIGKILL)
        killed = time.monotonic()
        thread.join(timeout=ERROR_WITHIN)
        assert time.monotonic() - killed < ERROR_WITHIN
        status, headers, body = result["reply"]
        assert 500 <= status < 600, body
        assert "rank 1" in body["error"]["message"], body
        assert "Traceback" not in str(body) and headers.get("X-Request-Id")
        assert_every_rank_exits_non_zero(server, killed)


def test_stopped_rank_mid_stream_is_found_by_the_step_deadline(tiny_model):
    # Heartbeats would take 30 s: the step deadline (2 s) must end the request first.
    logs = Logs()
    args = ("--heartbeat-timeout", "30", "--step-timeout", "2")
    with cluster(tiny_model, 2, *args, logs=logs) as server:
        try:
            sock, _ = open_stream(server, long_body(), events=5)
            server.ranks.kill_rank(1, signal.SIGSTOP)
            stopped = time.monotonic()
            received = read_until_closed(sock, timeout=ERROR_WITHIN)
            sock.close()
            assert time.monotonic() - stopped < ERROR_WITHIN
            assert_stream_ends_with_an_error(received, "pipeline step")
            assert server.ranks.processes[0].wait(timeout=EXIT_WITHIN) != 0
            server.ranks.kill_rank(1, signal.SIGCONT)
            assert server.ranks.processes[1].wait(timeout=EXIT_WITHIN) not in (None, 0)
        finally:
            server.ranks.kill_rank(1, signal.SIGCONT)
    assert "ran longer than 2 s" in logs.text(0)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_other_ranks_exit_when_rank_0_is_lost(tiny_model, sig):
    with cluster(tiny_model, 3, "--heartbeat-timeout", "2") as server:
        try:
            sock, _ = open_stream(server, long_body(), events=3)
            server.ranks.kill_rank(0, sig)
            lost = time.monotonic()
            for rank in (1, 2):
                code = server.ranks.processes[rank].wait(timeout=EXIT_WITHIN)
                assert code not in (None, 0), (rank, code)
            assert time.monotonic() - lost < EXIT_WITHIN
            sock.close()
        finally:
            server.ranks.kill_rank(0, signal.SIGCONT)


def rank_processes(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the refserver processes a `simcluster serve` process started."""
    ranks = {}
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            for entry in environ:
                if entry.startswith(b"MLX_RANK="):
                    ranks[int(entry.split(b"=", 1)[1])] = int(child)
    return ranks


def test_simcluster_serve_exits_non_zero_naming_the_lost_rank(tiny_model, tmp_path):
    port = free_ports(1)[0]
    command = [sys.executable, "-m", "simcluster.cli", "serve", "-n", "2"]
    command += ["--model", str(tiny_model), "--port", str(port), "--", "--api-key", "k"]
    stderr_file = tmp_path / "stderr.txt"
    launcher = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr_file.open("w"),
        text=True,
        start_new_session=True,
    )
    try:
        # "serving ..." is printed once every rank is healthy.
        assert select.select([launcher.stdout], [], [], 120)[0], "no rank became healthy"
        assert "serving" in launcher.stdout.readline()
        # The flags after -- reached the ranks.
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        ranks = rank_processes(launcher.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait(timeout=EXIT_WITHIN)
        stderr = stderr_file.read_text()
        assert launcher.returncode != 0
        assert time.monotonic() - killed < EXIT_WITHIN
        assert "rank 1 failed (signal 9)" in stderr, stderr[-2000:]
        for pid in ranks.values():  # no orphan
            assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return ""
