"""What the ranks cost while nobody asks anything."""

from __future__ import annotations

import time

import psutil
import pytest

SETTLE_SECONDS = 1.0  # lets work left by the benchmark before this one drain


def test_idle_cpu(paired, target, workload):
    """idle_cpu_core_ratio: CPU time of all ranks together ÷ wall time, idle (1: one core)."""
    if not target.pids:
        pytest.skip("the ranks run elsewhere (--url): their CPU cannot be read from here")
    ranks = [psutil.Process(pid) for pid in target.pids]
    time.sleep(SETTLE_SECONDS)

    def measure():
        before, started = _cpu_seconds(ranks), time.perf_counter()
        time.sleep(workload.idle_seconds)
        return {
            "idle_cpu_s": _cpu_seconds(ranks) - before,
            "idle_wall_s": time.perf_counter() - started,
        }

    paired.run(measure, ratios={"idle_cpu_core_ratio": ("idle_cpu_s", "idle_wall_s")})


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)
