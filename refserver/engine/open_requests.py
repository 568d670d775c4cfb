"""The requests rank 0 holds open (running or queued), and its admission limit.

A reply with several choices (`n`, or a list of prompts) is admitted whole or not at
all: were its choices admitted one at a time, two such replies arriving together
could each take part of the room and both be refused after all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence as Seq

from .interface import QueueFullError
from .scheduler import Sequence


class OpenRequests:
    """Thread-safe: HTTP threads admit and close, the engine loop reads."""

    def __init__(self, limit: int):
        self.limit = limit
        self._sequences: dict[str, Sequence] = {}
        self._lock = threading.Lock()

    def admit(self, sequences: Seq[Sequence]) -> None:
        """Hold every one of `sequences` open, or raise QueueFullError and hold none."""
        with self._lock:
            held = len(self._sequences)
            if held + len(sequences) > self.limit:
                raise QueueFullError(_full_message(held, self.limit, len(sequences)))
            for sequence in sequences:
                self._sequences[sequence.id] = sequence

    def close(self, request_id: str) -> None:
        with self._lock:
            self._sequences.pop(request_id, None)

    def snapshot(self) -> list[Sequence]:
        with self._lock:
            return list(self._sequences.values())

    def __len__(self) -> int:
        return len(self._sequences)


def _full_message(held: int, limit: int, asked: int) -> str:
    if asked == 1:
        return f"{held} requests open; retry shortly"
    room = max(0, limit - held)
    return (
        f"{held} requests open and room for {room} more, but this reply's {asked} choices "
        "are admitted together; retry shortly"
    )
