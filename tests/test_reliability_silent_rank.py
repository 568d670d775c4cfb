"""A silent rank (SIGSTOP: what a hung GPU, a sleeping Mac or a dead link look like) is
found by heartbeats within 3 s on the default settings, whether the cluster is idle,
decoding or prefilling. Heartbeats are sent and read by threads of their own, which run
while the main thread is inside an MLX op (MLX releases the GIL there), so a step far
longer than the heartbeat timeout is no false alarm."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from forced import FORCED_OUTPUT_DIR
from rank_helpers import Logs, chat_body, long_body, open_stream, post, sse_events
from test_reliability_failure import HealthWatch, assert_503_until_exit

from refserver.config import ClusterConfig
from refserver.control import Channel
from simcluster.serve import ServerCluster

FOUND_WITHIN = 3.0  # seconds from the stop to the clients' errors and /health 503
GONE_WITHIN = 10.0  # seconds from the stop to every rank's exit
HEARTBEAT_TIMEOUT = ClusterConfig(model="unused").heartbeat_timeout


class StreamReader:
    """Reads an SSE stream in a thread until it closes; notes when the error event came."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.received = b""
        self.error_at: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(GONE_WITHIN)
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
                if self.error_at is None and b'data: {"error"' in self.received:
                    self.error_at = time.monotonic()
        except OSError:
            pass
        self.sock.close()

    def join(self) -> list:
        self._thread.join(timeout=GONE_WITHIN + 5)
        return sse_events(self.received)


class TimedPost:
    """A non-streaming request in a thread: its reply and when it came."""

    def __init__(self, server, body: dict):
        self.reply = None
        self.at: float | None = None
        self._thread = threading.Thread(target=self._post, args=(server, body), daemon=True)
        self._thread.start()

    def _post(self, server, body) -> None:
        self.reply = post(server, body)
        self.at = time.monotonic()

    def join(self, timeout: float):
        self._thread.join(timeout=timeout)
        return self.reply


def slowed_cluster(tiny_model, slow_steps: dict[int, str], logs: Logs) -> ServerCluster:
    """Two ranks on the defaults; rank r's first step of a kind is slowed as slow_steps[r]
    says ("prefill:6": one mx.eval of at least 6 s first; see forced_output/)."""
    path = os.pathsep.join(filter(None, [str(FORCED_OUTPUT_DIR), os.environ.get("PYTHONPATH")]))

    def command(rank: int, argv: list[str]) -> list[str]:
        if rank not in slow_steps:
            return argv
        return ["env", f"REFSERVER_TEST_SLOW_STEP={slow_steps[rank]}", *argv]

    env = {"PYTHONPATH": path}
    return ServerCluster(2, tiny_model, env=env, sink=logs, rank_command=command)


def stop_rank_1(server) -> float:
    server.ranks.kill_rank(1, signal.SIGSTOP)
    return time.monotonic()


def assert_every_rank_gone(server, stopped: float) -> None:
    """Rank 0 exits on its own; the stopped rank exits as soon as it runs again (it reads
    rank 0's shutdown), which a test must make happen: nothing ends a stopped process."""
    assert server.ranks.processes[0].wait(timeout=GONE_WITHIN) != 0
    server.ranks.kill_rank(1, signal.SIGCONT)
    remaining = GONE_WITHIN - (time.monotonic() - stopped)
    assert server.ranks.processes[1].wait(timeout=max(0.1, remaining)) != 0
    assert time.monotonic() - stopped < GONE_WITHIN


def assert_stream_error(reader: StreamReader, stopped: float) -> float:
    events = reader.join()
    assert events[-1] == "[DONE]" and "rank 1 lost" in events[-2]["error"]["message"], events[-3:]
    assert reader.error_at - stopped < FOUND_WITHIN
    return reader.error_at - stopped


@pytest.mark.slow
def test_stopped_rank_mid_stream_is_found_within_3_s_ten_times(tiny_model):
    """Ten clusters in a row, each under two streams and a non-streaming request."""
    found = []
    for _ in range(10):
        logs = Logs()
        with ServerCluster(2, tiny_model, sink=logs) as server:
            try:
                found.append(stop_mid_stream_under_load(server))
            finally:
                server.ranks.kill_rank(1, signal.SIGCONT)
        assert "Traceback" not in logs.text(), logs.text()[-3000:]
    print(f"decoding: stopped rank found after {min(found):.2f}-{max(found):.2f} s")


def stop_mid_stream_under_load(server) -> float:
    watched, _ = open_stream(server, long_body(), events=5)
    load, _ = open_stream(server, long_body(), events=5)
    plain = TimedPost(server, long_body())
    health = HealthWatch(server)
    time.sleep(0.3)  # the non-streaming request is decoding too
    stopped = stop_rank_1(server)
    streams = [StreamReader(watched), StreamReader(load)]
    found = max(assert_stream_error(stream, stopped) for stream in streams)
    status, _, body = plain.join(timeout=GONE_WITHIN)
    assert 500 <= status < 600 and "rank 1 lost" in body["error"]["message"], body
    assert plain.at - stopped < FOUND_WITHIN
    assert_every_rank_gone(server, stopped)
    assert health.first_unhealthy() - stopped < FOUND_WITHIN
    assert_503_until_exit(health.stop())
    return found


@pytest.mark.slow
def test_stopped_rank_is_found_while_idle(tiny_model):
    with ServerCluster(2, tiny_model, sink=Logs()) as server:
        try:
            health = HealthWatch(server)
            time.sleep(1.0)  # healthy and idle: only heartbeats can tell
            stopped = stop_rank_1(server)
            assert_every_rank_gone(server, stopped)
            found = health.first_unhealthy() - stopped
            assert found < FOUND_WITHIN
            assert_503_until_exit(health.stop())
            print(f"idle: stopped rank found after {found:.2f} s")
        finally:
            server.ranks.kill_rank(1, signal.SIGCONT)


@pytest.mark.slow
def test_stopped_rank_is_found_while_prefilling(tiny_model):
    # Rank 1 (the first stage) spends a minute in its first prefill step: it is stopped
    # in there, while rank 0 waits for its hidden states inside a ring receive.
    logs = Logs()
    with slowed_cluster(tiny_model, {1: "prefill:60"}, logs) as server:
        try:
            sock, _ = open_stream(server, chat_body(max_tokens=8), events=0)
            assert logs.wait_for("slow step: computing", timeout=30)
            time.sleep(0.5)
            stopped = stop_rank_1(server)
            found = assert_stream_error(StreamReader(sock), stopped)
            assert_every_rank_gone(server, stopped)
            print(f"prefilling: stopped rank found after {found:.2f} s")
        finally:
            server.ranks.kill_rank(1, signal.SIGCONT)


@pytest.mark.slow
def test_a_step_three_times_the_heartbeat_timeout_is_no_failure(tiny_model):
    # Rank 1's first prefill step and rank 0's first decode step each sit in one mx.eval
    # for 3 x the heartbeat timeout, while the other rank waits inside a ring receive.
    logs = Logs()
    slow = f"{3 * HEARTBEAT_TIMEOUT:g}"
    with slowed_cluster(tiny_model, {1: f"prefill:{slow}", 0: f"decode:{slow}"}, logs) as server:
        health = HealthWatch(server)
        status, _, body = post(server, chat_body(max_tokens=8, logit_bias={"2": -100}))
        statuses = health.stop()
        assert status == 200 and body["usage"]["completion_tokens"] == 8, body
        assert set(statuses) == {200}, statuses
        assert post(server, chat_body(max_tokens=8))[0] == 200
    slow_ops = [line for line in logs.lines if "slow step: one mx.eval of" in line]
    assert len(slow_ops) == 2, slow_ops
    for line in slow_ops:
        assert float(line.rsplit(" of ", 1)[1].split()[0]) >= 3 * HEARTBEAT_TIMEOUT, line
    assert " ERROR " not in logs.text(), logs.text()[-3000:]


def test_a_message_that_arrived_before_the_deadline_is_read_after_it():
    # A rank resumed after a stop finds its deadline passed: rank 0's last message,
    # already received, must still be read (it says why the cluster ended).
    listener = socket.create_server(("127.0.0.1", 0))
    sender = Channel(socket.create_connection(listener.getsockname()), "sender")
    receiver = Channel(listener.accept()[0], "receiver")
    try:
        sender.send({"type": "shutdown", "error": "rank 1 lost"})
        time.sleep(0.1)
        assert receiver.recv(timeout=1e-9) == {"type": "shutdown", "error": "rank 1 lost"}
    finally:
        for channel in (sender, receiver):
            channel.close()
        listener.close()
