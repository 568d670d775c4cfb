"""MLX memory outside the KV ledger: the buffer cache given back when a rank goes idle,
and wired memory on a Mac."""

from __future__ import annotations

import mlx.core as mx
import pytest

from refserver.engine import mlx_memory
from refserver.engine.mlx_memory import IdleRelease, wire_working_set


def _leave_freed_buffers() -> None:
    work = mx.ones((256, 1024)) * 2  # 1 MB, freed into MLX's cache when dropped
    mx.eval(work)
    del work


@pytest.mark.parametrize(
    "calls, cache_left",
    [
        (["working", "idle"], False),  # going idle gives the cache back
        (["idle"], True),  # idle before any work: nothing to give back yet
        (["working", "idle", "idle"], True),  # once per idle period: later buffers stay
        (["working", "idle", "working", "idle"], False),
    ],
)
def test_going_idle_gives_the_buffer_cache_back_once(calls, cache_left):
    release = IdleRelease()
    mx.clear_cache()
    for call in calls:
        _leave_freed_buffers()
        assert mx.get_cache_memory() > 0
        getattr(release, call)()
    assert (mx.get_cache_memory() > 0) == cache_left


@pytest.mark.parametrize(
    "device, wired",
    [
        ({"architecture": "x86_64"}, None),  # the CPU: nothing to wire
        ({"max_recommended_working_set_size": 0}, None),
        ({"max_recommended_working_set_size": 120 * 10**9}, 120 * 10**9),  # a 128 GB Mac
    ],
)
def test_a_mac_wires_its_recommended_working_set(monkeypatch, device, wired):
    limits = []
    monkeypatch.setattr(mlx_memory.mx, "device_info", lambda: device)
    monkeypatch.setattr(mlx_memory.mx, "set_wired_limit", limits.append)
    assert wire_working_set() == wired
    assert limits == ([wired] if wired else [])
