"""Knowing that the other ranks are alive, and ending this one when they are not.

An MLX op stuck on a stopped peer cannot be cancelled and the ring cannot be
re-initialised in-process, so the only safe reaction to a lost rank is to fail
the requests and end the process (a supervisor restarts the cluster).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from ..control import Channel, ControlError

log = logging.getLogger(__name__)

# How long a rank's own failure report waits for news of a lost neighbour.
BLAME_DELAY_SECONDS = 0.5

# Signals that stop a rank gracefully (rank 0 drains; the others wait for it). SIGHUP
# is among them because a rank started over `ssh -tt` (mlx.launch) gets a hang-up,
# not SIGTERM, when the launcher is stopped.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# The longest an idle main thread sleeps before it looks again. Python runs a signal's
# handler on the main thread between bytecodes: a stop signal that lands just before the
# thread blocks in a wait without a timeout is only handled when something wakes it (a
# CI run saw an idle rank 0 ignore SIGTERM until it was killed).
IDLE_WAKE_SECONDS = 1.0


class StepWatchdog:
    """Ends the process when one step (an MLX op) runs past its deadline.

    It also counts the steps and their time, since it times every step anyway
    (read by /metrics and the status page, through the heartbeats).
    """

    def __init__(self, timeout: float, on_expire: Callable[[str], None]):
        self.timeout = timeout
        self.on_expire = on_expire
        self.steps = 0
        self.step_seconds = 0.0
        self._started: float | None = None
        self._lock = threading.Lock()
        thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
        thread.start()

    def begin(self) -> None:
        with self._lock:
            self._started = time.monotonic()

    def end(self) -> None:
        with self._lock:
            if self._started is not None:
                self.steps += 1
                self.step_seconds += time.monotonic() - self._started
            self._started = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self._lock:
                started = self._started
            if started is not None and time.monotonic() - started > self.timeout:
                self.on_expire(f"a pipeline step ran longer than {self.timeout:g} s")
                return


def send_heartbeats(
    channels: list[Channel],
    interval: float,
    stop: threading.Event,
    on_error: Callable[[str], None] | None = None,
    stats: Callable[[], dict] | None = None,
) -> None:
    """Start a thread that sends a heartbeat on every channel each `interval` seconds.

    A failed send calls `on_error` (where no reader would notice the loss). `stats`
    gives what the heartbeat carries besides (this rank's counters, for rank 0).
    """

    def beat():
        while not stop.wait(interval):
            message = {"type": "heartbeat"}
            if stats is not None:
                message["stats"] = stats()
            for channel in channels:
                try:
                    channel.send(message)
                except ControlError as exc:
                    if on_error is not None:
                        on_error(f"{channel.peer} lost: {exc}")
                        return

    threading.Thread(target=beat, name="heartbeats", daemon=True).start()


def watch_peer(
    rank: int,
    channel: Channel,
    timeout: float,
    on_lost: Callable[[str], None],
    stopped: threading.Event,
    heard: Callable[[dict], None] | None = None,
) -> None:
    """Start a thread that reads a peer's messages; silence or EOF means it is lost.

    `on_lost` gets a short reason naming the rank (clients see it); the details
    are logged here. Once `stopped` is set, the peer leaving is expected. `heard`
    gets every message read (heartbeats carry the peer's counters).
    """

    def read():
        while True:
            try:
                message = channel.recv(timeout=timeout)
            except ControlError as exc:
                if not stopped.is_set():
                    log.error("rank %d lost: %s", rank, exc)
                    on_lost(f"rank {rank} lost")
                return
            if heard is not None:
                heard(message)
            kind = message.get("type")
            if kind == "failed":
                log.error("rank %d failed: %s", rank, message.get("error", "unknown error"))
                # A rank often fails because its ring neighbour died: give the watcher
                # of that neighbour a moment to report the loss itself (first one wins).
                time.sleep(BLAME_DELAY_SECONDS)
                on_lost(f"rank {rank} failed")
                return

    threading.Thread(target=read, name=f"watch-rank-{rank}", daemon=True).start()


def is_ring_error(exc: BaseException) -> bool:
    """The MLX ring raised because a peer went away (expected when a rank is lost)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("[ring]")


def exit_soon(code: int, delay: float) -> None:
    """End the process after `delay` seconds, whatever the other threads are doing."""

    def end():
        time.sleep(delay)
        logging.shutdown()
        os._exit(code)

    threading.Thread(target=end, name="exit", daemon=True).start()
