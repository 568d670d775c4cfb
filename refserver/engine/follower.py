"""Ranks 1..N-1: run the work items rank 0 sends, in order, until told to stop.

Between items the rank blocks in a socket read (no CPU). Rank 0 going silent,
a step past its deadline or a failed heartbeat all end the process: a stuck MLX
op cannot be cancelled.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from dataclasses import asdict

from ..cluster import Cluster
from ..control import ControlError
from .executor import StageExecutor
from .liveness import (
    IDLE_WAKE_SECONDS,
    STOP_SIGNALS,
    StepWatchdog,
    exit_soon,
    is_ring_error,
    send_heartbeats,
)
from .mlx_memory import IdleRelease
from .rank_stats import own_stats
from .work import from_message

log = logging.getLogger(__name__)


def run_follower(cluster: Cluster) -> int:
    """Serve rank 0's items; return the process exit code."""
    config = cluster.config
    leader = cluster.channels[0]
    try:
        leader.send({"type": "ready", "kv": asdict(cluster.kv)})
        start = leader.recv(timeout=config.load_timeout)
    except ControlError as exc:
        log.error("rank 0 did not start the cluster: %s", exc)
        return 1
    if start.get("type") != "start":
        log.error("rank 0 did not start the cluster: %s", start.get("error", start.get("type")))
        return 1

    def lost(reason: str) -> None:
        log.error("%s; exiting", reason)
        exit_soon(1, 0.0)

    # SIGTERM (or a hang-up) reaches every rank at once (mlx.launch, a supervisor): rank 0 drains
    # and then tells us to stop; exit on our own only if it never does.
    def on_term(signum, _frame):
        log.info("received %s: waiting for rank 0 to drain", signal.Signals(signum).name)
        exit_soon(0, config.drain_grace)

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, on_term)
    stop_beats = threading.Event()
    watchdog = StepWatchdog(config.step_timeout, lost)
    executor = StageExecutor(cluster.stage)
    memory = IdleRelease()
    stats = own_stats(watchdog, executor.ring_wait)  # the heartbeats carry them to rank 0
    send_heartbeats([leader], config.heartbeat_interval, stop_beats, on_error=lost, stats=stats)
    inbox = read_leader(leader, config.heartbeat_timeout, lost)
    while True:
        try:
            message = inbox.get(timeout=IDLE_WAKE_SECONDS)
        except queue.Empty:
            memory.idle()  # no item for a second
            continue
        if message.get("type") == "shutdown":
            stop_beats.set()
            log.info("rank 0 shut the cluster down; exiting")
            return 0
        watchdog.begin()
        memory.working()
        try:
            executor.run(from_message(message))
        except ControlError as exc:
            lost(f"rank 0 lost: {exc}")
            return 1
        except Exception as exc:
            if is_ring_error(exc):
                log.error("the MLX ring failed: %s", exc)
            else:
                log.exception("work item failed")
            try:
                leader.send({"type": "failed", "error": f"rank {config.rank}: {exc}"})
            except ControlError:
                pass
            return 1
        watchdog.end()
        executor.ring_wait.step_done()


def read_leader(leader, timeout: float, lost) -> queue.SimpleQueue:
    """Read rank 0's messages in a thread of their own; work items go to the queue.

    The main thread may sit in an MLX op that waits on rank 0 (a ring receive)
    and cannot be interrupted: rank 0's silence or its failure must still end
    this rank, so liveness does not depend on the main thread reading.
    """
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read():
        while True:
            try:
                message = leader.recv(timeout=timeout)
            except ControlError as exc:
                lost(f"rank 0 lost: {exc}")
                return
            kind = message.get("type")
            if kind == "heartbeat":
                continue
            if kind == "shutdown" and message.get("error"):
                lost(f"rank 0 shut the cluster down: {message['error']}")
                return
            inbox.put(message)
            if kind == "shutdown":
                return

    threading.Thread(target=read, name="read-rank-0", daemon=True).start()
    return inbox
