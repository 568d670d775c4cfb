"""Logging set-up: the rank goes into every line of a multi-rank run."""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int, level: str = "INFO") -> None:
    """Route `logging` to stderr with the rank in each line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
