"""How far each rank has come loading its weights, while the cluster starts.

Loading MiniMax-M2 reads 100-200 GB: each rank reads its stage a layer at a time,
logs its progress at a steady interval and sends it to rank 0 over the control
plane; rank 0 keeps every rank's latest report for /health and the status page.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

from .control import Channel, ControlError
from .sizes import format_size

log = logging.getLogger(__name__)

# Seconds between two progress lines in a rank's log (and reports to rank 0).
REPORT_INTERVAL = 5.0


class LoadProgress:
    """One rank's loading: layers and bytes done of its stage, rate and time left."""

    def __init__(self, rank: int):
        self.rank = rank
        self.layers_total = self.layers_done = 0
        self.bytes_total = self.bytes_done = 0
        self.started = time.monotonic()

    def begin(self, layers: int, total_bytes: int) -> None:
        self.layers_total, self.bytes_total = layers, total_bytes
        self.started = time.monotonic()

    def advance(self, nbytes: int, layers: int = 1) -> None:
        self.layers_done += layers
        self.bytes_done += nbytes

    def snapshot(self) -> dict:
        elapsed = time.monotonic() - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        left = (self.bytes_total - self.bytes_done) / rate if rate > 0 else None
        return {
            "rank": self.rank,
            "layers_done": self.layers_done,
            "layers_total": self.layers_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "bytes_per_second": rate,
            "seconds_left": left,
        }


def describe(snapshot: dict) -> str:
    """'12 of 31 layers, 40.2 GB of 92.6 GB at 1.2 GB/s, about 44 s left'"""
    left = snapshot["seconds_left"]
    return (
        f"{snapshot['layers_done']} of {snapshot['layers_total']} layers, "
        f"{format_size(snapshot['bytes_done'])} of {format_size(snapshot['bytes_total'])} at "
        f"{format_size(snapshot['bytes_per_second'])}/s"
        + ("" if left is None else f", about {left:.0f} s left")
    )


@contextlib.contextmanager
def reporting(progress: LoadProgress, send: Callable[[dict], None] | None) -> Iterator[None]:
    """While the block loads, log `progress` every REPORT_INTERVAL seconds and `send` it
    (to rank 0) as a "progress" message; the last report is sent when it ends."""
    done, interval = threading.Event(), REPORT_INTERVAL

    def report() -> dict:
        snapshot = progress.snapshot()
        if send is not None:
            try:
                send({"type": "progress", **snapshot})
            except ControlError:
                pass  # rank 0 gone: the start-up fails on its own, with the reason
        return snapshot

    def loop() -> None:
        while not done.wait(interval):
            log.info("loading: %s", describe(report()))

    thread = threading.Thread(target=loop, name="load-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        report()


class StartupBoard:
    """Rank 0's view of every rank's loading, read from the peers' control channels
    while rank 0 loads its own stage. Each peer's first other message ("ready", or why
    it failed) is kept for the engine, which reads it with `first_message`."""

    def __init__(self):
        self._latest: dict[int, LoadProgress | dict] = {}
        self._first: dict[int, queue.SimpleQueue] = {}
        self._lock = threading.Lock()

    def track(self, progress: LoadProgress) -> None:
        """Rank 0's own progress, read where it is."""
        with self._lock:
            self._latest[progress.rank] = progress

    def watch(self, rank: int, channel: Channel, timeout: float) -> None:
        """Read `rank`'s progress reports in a thread until its first other message."""
        first: queue.SimpleQueue = queue.SimpleQueue()
        self._first[rank] = first

        def read() -> None:
            while True:
                try:
                    message = channel.recv(timeout=timeout)
                except ControlError as exc:
                    first.put(exc)
                    return
                if message.get("type") != "progress":
                    first.put(message)
                    return
                with self._lock:
                    self._latest[rank] = message

        threading.Thread(target=read, name=f"startup-rank-{rank}", daemon=True).start()

    def first_message(self, rank: int) -> dict:
        """The peer's first message after its progress reports; raises ControlError."""
        message = self._first[rank].get()
        if isinstance(message, ControlError):
            raise message
        return message

    def ranks(self) -> list[dict]:
        """The latest progress of every rank heard from, rank 0 first."""
        with self._lock:
            latest = sorted(self._latest.items())
        return [
            entry.snapshot() if isinstance(entry, LoadProgress) else _progress_only(entry)
            for _, entry in latest
        ]


def _progress_only(message: dict) -> dict:
    return {key: value for key, value in message.items() if key != "type"}
