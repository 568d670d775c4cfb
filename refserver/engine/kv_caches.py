"""KV caches that hold what rank 0's ledger counts for them (see kv_budget).

mlx_lm's caches grow by whole steps from wherever their buffer ends: a prompt
prefilled in chunks of 300 takes 812 positions for 601 tokens, and a micro-batch
merged at 250 positions grows to 506, then 762. A batch that loses its longest row
keeps that row's width, and a slice keeps its whole buffer alive. The ledger counts
every cache as rows × its longest row rounded up to a step, so on a rank the caches
could take more memory than the budget admitted.

These caches grow to the next whole step over what they hold, a batch is copied to
its new width when rows leave, and a kept prefix is an exact copy. They hold the
same values as mlx_lm's (attention reads only the positions written), so the
output does not change; only how much room is left after the last position does.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

from .kv_budget import rounded


class StepKVCache(KVCache):
    """A sequence's own cache: never wider than its positions rounded up to a step."""

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = _with_room(self.keys, self.values, self.offset, keys, values)
        return super().update_and_fetch(keys, values)


class StepBatchKVCache(BatchKVCache):
    """A micro-batch's cache: rows × its longest row rounded up to a step."""

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = _with_room(self.keys, self.values, self._idx, keys, values)
        return super().update_and_fetch(keys, values)

    def filter(self, batch_indices) -> None:
        longest = self._idx
        super().filter(batch_indices)
        if self.keys is not None and self._idx < longest:
            # mlx_lm sliced the padding off a buffer as wide as the row that left: copy
            # what is left, so that buffer is given back.
            width = rounded(self._idx)
            self.keys = _copy(self.keys, self._idx, width, self.keys)
            self.values = _copy(self.values, self._idx, width, self.values)


def exact_prefixes(caches: list[KVCache], length: int) -> list[StepKVCache]:
    """Per layer, a cache holding a copy of the first `length` positions of `caches`': a
    prefix kept for later (a slice would keep the whole buffer it came from alive). The
    copies are made now, all layers at once: left lazy, they would keep those buffers
    until the entry is next read."""
    prefixes = [_starting_with(cache, length, mx.contiguous) for cache in caches]
    mx.eval([(prefix.keys, prefix.values) for prefix in prefixes])
    return prefixes


def shared_prefix(cache: KVCache, length: int) -> StepKVCache:
    """A cache starting with the first `length` positions of `cache`, shared until its
    first write copies them into a buffer of its own (a sequence reusing a prefix)."""
    return _starting_with(cache, length, lambda positions: positions)


def _starting_with(cache: KVCache, length: int, take: Callable) -> StepKVCache:
    prefix = StepKVCache()
    prefix.keys = take(cache.keys[..., :length, :])
    prefix.values = take(cache.values[..., :length, :])
    prefix.offset = length
    return prefix


def _with_room(keys, values, used: int, new_keys: mx.array, new_values: mx.array):
    """The buffers, with room for `new_keys`' positions after the first `used`: as they
    are when they have it, else copies in buffers as wide as that rounded up to a step
    (mlx_lm's own growth then finds room and only writes)."""
    needed = used + new_keys.shape[2]
    if keys is not None and needed <= keys.shape[2]:
        return keys, values
    width = rounded(needed)
    return _copy(keys, used, width, new_keys), _copy(values, used, width, new_values)


def _copy(buffer: mx.array | None, used: int, width: int, like: mx.array) -> mx.array:
    """A fresh buffer `width` positions wide (rows, heads and dtype as `like`) holding the
    first `used` positions of `buffer`."""
    rows, heads, _, dim = like.shape
    fresh = mx.zeros((rows, heads, width, dim), like.dtype)
    if buffer is not None and used:
        fresh[..., :used, :] = buffer[..., :used, :]
    return fresh
