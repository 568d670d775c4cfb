"""MLX memory outside the KV ledger: the buffer cache, and wired memory on a Mac.

MLX keeps freed buffers in a cache to reuse them, and never gives them back on its own:
after a long prompt, a rank holds that prompt's activations until the process ends.
mlx_lm clears the cache after every prefill chunk; a rank clears it when it goes idle,
which costs nothing while it works and gives the memory back between an agent's turns.
On Linux the buffers go back to glibc's heap, which keeps them too: that is trimmed
at the same moment.
"""

from __future__ import annotations

import logging

import mlx.core as mx

from ..free_memory import release_free_memory
from ..sizes import format_size

log = logging.getLogger(__name__)


def recommended_working_set() -> int | None:
    """The memory Metal recommends a process use on this Mac; None without Metal."""
    return mx.device_info().get("max_recommended_working_set_size") or None


def wire_working_set() -> int | None:
    """On a Mac, let MLX keep up to the GPU's recommended working set wired (never paged
    out), as mlx_lm.generate and mlx_lm.server do: a model near the machine's memory is
    otherwise slowed by paging. Returns the limit set, or None where there is none (CPU)."""
    size = recommended_working_set()
    if size is None:
        return None
    mx.set_wired_limit(size)
    log.info("wired memory limit %s (Metal's recommended working set)", format_size(size))
    return size


class IdleRelease:
    """Gives MLX's buffer cache back to the system once each time the rank goes idle."""

    def __init__(self) -> None:
        self._released = True  # nothing has run yet

    def working(self) -> None:
        self._released = False

    def idle(self) -> None:
        if not self._released:
            mx.clear_cache()
            release_free_memory()
            self._released = True
