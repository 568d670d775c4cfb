"""Runs work items against this rank's stage and KV caches (the same code on every rank).

A sequence's prompt is prefilled in its own cache, exactly as mlx_lm.generate_step
does it; it then joins a micro-batch, whose caches are BatchKVCaches that grow with
joins and shrink with drops (mlx_lm's, sized as the KV ledger counts: kv_caches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from ..pipeline import PipelineStage
from .kv_caches import StepBatchKVCache, StepKVCache, exact_prefixes, shared_prefix
from .rank_stats import RingWaitClock
from .work import Decode, Prefill, Release, WorkItem


class DivergenceError(RuntimeError):
    """This rank's view of a batch differs from rank 0's: the caches cannot be trusted."""


@dataclass
class MicroBatch:
    seqs: list[str] = field(default_factory=list)
    caches: list = field(default_factory=list)


@dataclass(frozen=True)
class PositionLogits:
    """The logits of every position of a chunk, made on demand: `rows(start, end)`
    applies the head to those positions' (evaluated, normed) hidden states."""

    hidden: mx.array  # (positions, hidden size)
    head: Callable[[mx.array], mx.array]

    @property
    def count(self) -> int:
        return self.hidden.shape[0]

    def rows(self, start: int, end: int) -> mx.array:
        return self.head(self.hidden[start:end])


class StageExecutor:
    def __init__(self, stage: PipelineStage):
        self.stage = stage
        self.pending: dict[str, list] = {}
        self.batches: dict[int, MicroBatch] = {}
        self.batch_of: dict[str, int] = {}
        # The prefix cache: entry id -> a finished prompt's KV, for this rank's layers.
        self.entries: dict[int, list[KVCache]] = {}
        self.ring_wait = RingWaitClock()

    def run(
        self, item: WorkItem, inputs: mx.array | None = None
    ) -> mx.array | PositionLogits | None:
        """Apply `item`. The last stage returns lazy (rows, vocab) logits when the item
        produces tokens, or PositionLogits when it scores a prompt's chunk; everything
        else is evaluated here. `inputs` are the (lazy) tokens of a decode issued ahead
        on a single rank."""
        self._apply_cache_ops(item.cache_ops)
        self._drop(item.drop)
        if isinstance(item, Prefill):
            return self._prefill(item)
        if isinstance(item, Decode):
            return self._decode(item, inputs)
        assert isinstance(item, Release)
        return None

    def _prefill(self, item: Prefill) -> mx.array | PositionLogits | None:
        if item.seq not in self.pending:
            self.pending[item.seq] = self._new_cache(item.reuse)
        cache = self.pending[item.seq]
        if self.stage.is_last and item.scores:
            return self._position_logits(item, cache)
        out, received = self._forward(
            item.tokens, cache, batch=1, length=len(item.tokens), last_only=item.final
        )
        if self.stage.is_last and item.final:
            return self._logits(out, received)
        self._evaluate(out if not self.stage.is_last else [c.state for c in cache], received)
        return None

    def _position_logits(self, item: Prefill, cache: list) -> PositionLogits:
        """A scored chunk on the last stage: its layers run (and its caches fill) here;
        the head's logits, (positions, vocabulary) in all, are left to be computed in
        blocks, so that a long chunk of a large vocabulary never holds them at once."""
        out, received = self._forward(
            item.tokens, cache, batch=1, length=len(item.tokens), head=False
        )
        self._evaluate(out, received)
        return PositionLogits(out[0], self.stage.head)

    def _new_cache(self, reuse: list[int] | None) -> list:
        if reuse is None:
            return self.stage.make_cache(StepKVCache)
        entry, length = reuse
        return [shared_prefix(layer, length) for layer in self.entries[entry]]

    def _decode(self, item: Decode, inputs: mx.array | None) -> mx.array | None:
        batch = self.batches.setdefault(item.batch, MicroBatch())
        if item.join:
            self._join(batch, item.batch, item.join)
        if batch.seqs != item.seqs:
            raise DivergenceError(
                f"micro-batch {item.batch}: rank {self.stage.rank} holds {batch.seqs}, "
                f"rank 0 sent {item.seqs}"
            )
        rows = len(item.seqs)
        sampled = None  # rank 0's tokens for a decode issued ahead, from the ring
        if inputs is not None:
            tokens = inputs.reshape(rows, 1)
        elif item.issued_ahead and self.stage.is_first:
            template = mx.zeros((rows,), dtype=mx.int32)
            sampled = mx.distributed.recv_like(template, 0, group=self.stage.group)
            tokens = sampled.reshape(rows, 1)
        else:
            tokens = [[token] for token in item.tokens]
        out, received = self._forward(tokens, batch.caches, batch=rows, length=1)
        received = sampled if received is None else received
        if self.stage.is_last:
            return self._logits(out, received)
        self._evaluate(out, received)
        return None

    def _evaluate(self, out, received: mx.array | None) -> None:
        """Evaluate `out`, timing the wait for its ring receive first."""
        self.ring_wait.wait_for(received)
        mx.eval(out)

    def _logits(self, out: mx.array, received: mx.array | None) -> mx.array:
        """The last position's (lazy) logits, once their ring receive has arrived."""
        self.ring_wait.wait_for(received)
        return out[:, -1, :]

    def _apply_cache_ops(self, ops: list[list]) -> None:
        for op in ops:
            if op[0] == "evict":
                del self.entries[op[1]]
            else:
                _, seq, entry, length = op
                self.entries[entry] = exact_prefixes(self._cache_of(seq), length)

    def _cache_of(self, seq: str) -> list[KVCache]:
        """A sequence's own cache per layer, also when it is a row of a micro-batch."""
        if seq in self.pending:
            return self.pending[seq]
        batch = self.batches[self.batch_of[seq]]
        row = batch.seqs.index(seq)
        return [cache.extract(row) for cache in batch.caches]

    def _join(self, batch: MicroBatch, batch_id: int, seqs: list[str]) -> None:
        joining = [self.pending.pop(seq) for seq in seqs]
        merged = [
            StepBatchKVCache.merge([cache[layer] for cache in joining])
            for layer in range(len(self.stage.layers))
        ]
        if batch.caches:
            for mine, theirs in zip(batch.caches, merged, strict=True):
                mine.extend(theirs)
        else:
            batch.caches = merged
        batch.seqs.extend(seqs)
        for seq in seqs:
            self.batch_of[seq] = batch_id

    def _drop(self, seqs: list[str]) -> None:
        by_batch: dict[int, set[str]] = {}
        for seq in seqs:
            if self.pending.pop(seq, None) is None and seq in self.batch_of:
                by_batch.setdefault(self.batch_of.pop(seq), set()).add(seq)
        for batch_id, gone in by_batch.items():
            batch = self.batches[batch_id]
            keep = [i for i, seq in enumerate(batch.seqs) if seq not in gone]
            if not keep:
                del self.batches[batch_id]
                continue
            for cache in batch.caches:
                cache.filter(keep)
            batch.seqs = [batch.seqs[i] for i in keep]

    def _forward(
        self, tokens, cache, batch: int, length: int, last_only: bool = False, head: bool = True
    ) -> tuple[mx.array, mx.array | None]:
        """The stage's lazy output, and the ring receive it waits for (None on the
        first stage, which embeds `tokens`)."""
        inputs = None
        if self.stage.is_first:
            inputs = tokens if isinstance(tokens, mx.array) else mx.array(tokens, dtype=mx.int32)
            if inputs.ndim == 1:
                inputs = inputs[None]
        return self.stage.forward(inputs, cache, batch, length, last_only, head)
