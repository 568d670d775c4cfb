"""The prefix cache as rank 0 decides it: which token sequences every rank keeps.

Every rank keeps, for its own layers, the KV of recent sequences (prompts once
prefilled, then prompt and generated tokens once finished). Rank 0 alone decides:
it looks up the longest cached prefix of a new prompt, names the entries to keep
and to evict, and work items carry those decisions ("cache ops") to every rank,
which applies them in order, so every rank's entries hold the same tokens.

Entries are whole token sequences, like mlx_lm's LRUPromptCache, rather than
vLLM's hashed blocks: a rank's KV is mlx_lm's contiguous KVCache, and a prefix of
an entry is reused by slicing it.
Least recently used entries are evicted first when the capacity (in tokens), the
KV budget's room or MAX_ENTRIES is reached; an entry that a newer one extends is
dropped at once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .kv_budget import rounded

# Entries kept at most: a lookup compares the prompt with every entry on rank 0's loop
# (about 2 µs each), and a flood of short distinct prompts would otherwise leave tens
# of thousands. An agent's conversations are few and long, far below this.
MAX_ENTRIES = 1024


@dataclass(frozen=True)
class PrefixHit:
    """Reuse the first `length` tokens of entry `entry`."""

    entry: int
    length: int


class PrefixIndex:
    def __init__(self, capacity_tokens: int):
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[int, np.ndarray] = OrderedDict()  # oldest use first
        self._next_id = 0
        # Kept as entries come and go: rank 0 reads them before every item it issues.
        self.cached_tokens = 0
        self.positions = 0  # KV positions the entries hold on a rank (caches grow in steps)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: int) -> bool:
        return entry in self._entries

    def longest_prefix(self, prompt: list[int], limit: int) -> PrefixHit | None:
        """The entry sharing the longest prefix with `prompt`, at most `limit` tokens."""
        if limit <= 0 or not self._entries:
            return None
        query = np.asarray(prompt[:limit], dtype=np.int64)
        best: PrefixHit | None = None
        for entry, tokens in self._entries.items():
            shared = _common_prefix(query, tokens)
            if shared and (best is None or shared > best.length):
                best = PrefixHit(entry, shared)
        if best is not None:
            self._entries.move_to_end(best.entry)
        return best

    def save(self, tokens: list[int], room: int | None = None) -> tuple[int | None, list[int]]:
        """Decide to keep `tokens` as a new entry: (its id or None, entries to evict first).

        None when an entry already holds these tokens (or more), or when they alone
        exceed the capacity or the `room` (KV positions the budget leaves the cache).
        Entries that the new one extends are evicted.
        """
        room = math.inf if room is None else room
        if not tokens or len(tokens) > self.capacity_tokens or rounded(len(tokens)) > room:
            return None, []
        array = np.asarray(tokens, dtype=np.int64)
        evict = []
        for entry, held in self._entries.items():
            shared = _common_prefix(array, held)
            if shared == len(array):
                self._entries.move_to_end(entry)
                return None, []
            if shared == len(held):
                evict.append(entry)
        for entry in evict:
            self._forget(entry)
        while (
            self.cached_tokens + len(array) > self.capacity_tokens
            or self.positions + rounded(len(array)) > room
            or len(self._entries) >= MAX_ENTRIES
        ):
            evict.append(self.evict_oldest())
        entry, self._next_id = self._next_id, self._next_id + 1
        self._entries[entry] = array
        self.cached_tokens += len(array)
        self.positions += rounded(len(array))
        return entry, evict

    def evict_oldest(self) -> int:
        """Give up the least recently used entry; its id."""
        oldest = next(iter(self._entries))
        self._forget(oldest)
        return oldest

    def _forget(self, entry: int) -> None:
        tokens = self._entries.pop(entry)
        self.cached_tokens -= len(tokens)
        self.positions -= rounded(len(tokens))


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    size = min(len(a), len(b))
    differs = np.flatnonzero(a[:size] != b[:size])
    return int(differs[0]) if len(differs) else size


class PrefixCache:
    """Rank 0's decisions about the prefix cache, queued as ops for the next work item.

    Ops, applied by every rank before the item's own work, in order:
    ["evict", entry] and ["keep", sequence id, entry, length] (keep the first
    `length` tokens of that sequence's cache as `entry`).
    """

    def __init__(self, capacity_tokens: int):
        self.index = PrefixIndex(capacity_tokens)
        self._ops: list[list] = []

    def reuse(self, prompt: list[int]) -> PrefixHit | None:
        """The longest cached prefix of `prompt` short of its last token (always computed)."""
        return self.index.longest_prefix(prompt, limit=len(prompt) - 1)

    def keep(self, seq_id: str, tokens: list[int], room: int | None = None) -> None:
        """Keep the KV of `tokens`, the first len(tokens) positions of this sequence's cache,
        within `room` KV positions (see PrefixIndex.save)."""
        entry, evicted = self.index.save(tokens, room)
        self._ops.extend(["evict", e] for e in evicted)
        if entry is not None:
            self._ops.append(["keep", seq_id, entry, len(tokens)])

    def evict_oldest(self) -> bool:
        """Make room: give up the least recently used entry; False when there is none."""
        if not len(self.index):
            return False
        self._ops.append(["evict", self.index.evict_oldest()])
        return True

    def take_ops(self) -> list[list]:
        ops, self._ops = self._ops, []
        return ops
