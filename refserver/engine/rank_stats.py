"""What each rank tells rank 0 about itself, for /metrics and the status page.

Every rank counts its steps where its step watchdog already times them, times its
ring receives where it waits for them (RingWaitClock) and reads its MLX memory in the
heartbeat thread; the heartbeats carry them to rank 0, which keeps each rank's latest
report and when it came.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import mlx.core as mx

from .liveness import StepWatchdog


class RingWaitClock:
    """The time this rank spends waiting for its ring neighbour's data.

    A step's receive is evaluated on its own before the layers that use it (their
    graph is built; nothing more is computed). Measured after queuing the layers
    too, the wait would hide: MLX holds back a thread that queues more than a
    bounded number of operations until the stream catches up, receive included.
    """

    def __init__(self):
        self.seconds = 0.0  # of the steps that ended, as the step watchdog counts them
        self._this_step = 0.0

    def wait_for(self, received: mx.array | None) -> None:
        """Evaluate `received` (a lazy ring receive; None: nothing to wait for)."""
        if received is None:
            return
        began = time.perf_counter()
        mx.eval(received)
        self._this_step += time.perf_counter() - began

    def step_done(self) -> None:
        """Count the step's waits, now that its time is counted: read mid-step, the
        waits would run ahead of the step time (a wait share above 1)."""
        self.seconds += self._this_step
        self._this_step = 0.0


def own_stats(watchdog: StepWatchdog, ring_wait: RingWaitClock) -> Callable[[], dict]:
    """This rank's counters as a heartbeat carries them."""

    def stats() -> dict:
        return {
            "steps": watchdog.steps,
            "step_seconds": watchdog.step_seconds,
            "ring_wait_seconds": ring_wait.seconds,
            "memory_bytes": mx.get_active_memory(),
            "cache_bytes": mx.get_cache_memory(),
        }

    return stats


class RankReports:
    """Rank 0's record of the latest message (heartbeat or other) from each peer."""

    def __init__(self):
        self._heard: dict[int, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def listener(self, rank: int) -> Callable[[dict], None]:
        """What watch_peer calls with each message of `rank`."""

        def heard(message: dict) -> None:
            with self._lock:
                stats = message.get("stats") or self._heard.get(rank, (0.0, {}))[1]
                self._heard[rank] = (time.monotonic(), stats)

        return heard

    def heartbeat_age(self, rank: int) -> float | None:
        """Seconds since `rank` was last heard from (None: not yet)."""
        with self._lock:
            heard = self._heard.get(rank)
        return None if heard is None else time.monotonic() - heard[0]

    def stats(self, rank: int) -> dict:
        """The counters of `rank`'s latest heartbeat (empty before the first)."""
        with self._lock:
            return dict(self._heard.get(rank, (0.0, {}))[1])
