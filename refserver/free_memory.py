"""Handing freed heap memory back to the system.

glibc keeps what a process frees in its arenas (one per thread) for later use, so a
process's memory stays at its peak after a burst; `malloc_trim` returns it. Elsewhere
(macOS) there is nothing to do: its allocator returns large blocks on its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it per thread arena)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()
