"""Byte counts as people read them (sizes are given as 192GB, 512MB: decimal units)."""

from __future__ import annotations


def format_size(size: float) -> str:
    """Bytes in GB, MB or KB with one decimal: 92.6 GB, 393.2 KB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.1f} KB"
