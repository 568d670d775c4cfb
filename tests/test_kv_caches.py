"""The ranks' KV caches hold what rank 0's ledger counts for them, and the same values
as mlx_lm's caches: checked on the caches alone, then on the real executor run by the
scheduler with a KV budget (a fake one-layer stage writes real caches)."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import BatchKVCache, KVCache
from scheduler_helpers import LIKELY, VOCAB, events

from refserver.engine.chunking import ChunkPolicy, ChunkSizer
from refserver.engine.executor import StageExecutor
from refserver.engine.interface import Finished, GenerationRequest
from refserver.engine.kv_budget import rounded
from refserver.engine.kv_caches import StepBatchKVCache, StepKVCache, exact_prefixes
from refserver.engine.scheduler import Scheduler, Sequence

HEADS, DIM = 4, 64
POSITION_BYTES = 2 * HEADS * DIM * 4  # keys and values, float32


def _positions(start: int, count: int, rows: int = 1) -> mx.array:
    """Keys (or values) that say where they are: position p of row r holds p + r / 10."""
    steps = mx.arange(start, start + count, dtype=mx.float32)[None, None, :, None]
    rows_offset = (mx.arange(rows, dtype=mx.float32) / 10)[:, None, None, None]
    return mx.broadcast_to(steps + rows_offset, (rows, HEADS, count, DIM))


def _width(cache) -> int:
    return 0 if cache.keys is None else cache.keys.shape[2]


@pytest.mark.parametrize(
    "chunks",
    [
        [300, 301],  # mlx_lm: 512 wide, then 300 + 512 = 812 for 601 positions
        [88] * 8 + [1] * 40,
        [256, 256, 1],
        [1] * 300,
        [2048, 5],
    ],
)
def test_a_sequence_cache_is_its_positions_rounded_up_to_a_step(chunks):
    ours, theirs = StepKVCache(), KVCache()
    for chunk in chunks:
        start = ours.offset
        got = ours.update_and_fetch(_positions(start, chunk), _positions(start, chunk))
        want = theirs.update_and_fetch(_positions(start, chunk), _positions(start, chunk))
        assert all(mx.array_equal(g, w) for g, w in zip(got, want, strict=True))
        assert _width(ours) == rounded(ours.offset)


def _merged(lengths: list[int]) -> tuple[StepBatchKVCache, BatchKVCache]:
    caches = []
    for length in lengths:
        cache = StepKVCache()
        cache.update_and_fetch(_positions(0, length), _positions(0, length))
        caches.append(cache)
    return StepBatchKVCache.merge(caches), BatchKVCache.merge(caches)


@pytest.mark.parametrize(
    "lengths, steps, keep",
    [
        ([250, 10], 300, [1]),  # the longest row leaves: its width goes with it
        ([10, 250, 40], 20, [0, 2]),
        ([100, 100], 200, [0]),  # no padding to shed: the rows are copied by mlx_lm
        ([600, 5], 1, [0]),
    ],
)
def test_a_batch_is_rows_by_its_longest_row_rounded_up_then_shrinks_with_it(lengths, steps, keep):
    ours, theirs = _merged(lengths)
    for _ in range(steps):
        rows, start = len(lengths), ours._idx
        got = ours.update_and_fetch(_positions(start, 1, rows), _positions(start, 1, rows))
        want = theirs.update_and_fetch(_positions(start, 1, rows), _positions(start, 1, rows))
        assert all(mx.array_equal(g, w) for g, w in zip(got, want, strict=True))
        assert _width(ours) == rounded(ours._idx)
    ours.filter(keep)
    theirs.filter(keep)
    assert _width(ours) == rounded(ours._idx)
    for row in range(len(keep)):
        mine, reference = ours.extract(row), theirs.extract(row)
        assert mx.array_equal(mine.keys, reference.keys)
        assert mx.array_equal(mine.values, reference.values)


def _live_positions() -> float:
    return mx.get_active_memory() / POSITION_BYTES


def test_a_row_that_leaves_gives_its_buffer_back():
    start = _live_positions()
    batch, reference = _merged([10])
    del reference
    for _ in range(1000):
        batch.update_and_fetch(_positions(batch._idx, 1), _positions(batch._idx, 1))
    late, reference = _merged([20])  # a short row joins the long one: both are 1024 wide
    del reference
    batch.extend(late)
    del late
    mx.eval(batch.keys, batch.values)
    assert _width(batch) == 1024 and _live_positions() - start >= 2 * 1024
    batch.filter([1])  # the long row leaves
    mx.eval(batch.keys, batch.values)
    assert _width(batch) == rounded(20)
    assert _live_positions() - start <= 256 + 4  # + its small offset arrays


def test_a_kept_prefix_does_not_hold_the_buffer_it_was_copied_from():
    start = _live_positions()
    source = StepKVCache()
    source.update_and_fetch(_positions(0, 2000), _positions(0, 2000))
    (kept,) = exact_prefixes([source], 100)
    del source
    assert kept.keys.shape[2] == kept.offset == 100
    assert _live_positions() - start <= 100 + 1


class _OneLayerStage:
    """A stage of one layer that writes real KV (HEADS × DIM per position) and makes
    token LIKELY the most likely."""

    is_first = is_last = True
    rank = 0
    group = None
    layers = [None]

    def make_cache(self, cache_type=KVCache):
        return [cache_type()]

    def forward(self, inputs, cache, batch, length, last_only=False, head=True):
        rows, count = inputs.shape
        start = cache[0].offset if isinstance(cache[0], KVCache) else cache[0]._idx
        keys, values = cache[0].update_and_fetch(
            _positions(start, count, rows), _positions(start, count, rows)
        )
        read = (keys.sum() + values.sum()) * 0  # the output depends on the cache, as attention's
        logits = mx.zeros((rows, 1 if last_only else count, VOCAB)).at[..., LIKELY].add(5.0)
        return logits + read, None


def _prompt(length: int, first: int = 1) -> list[int]:
    return [first + i % 40 for i in range(length)]


@pytest.mark.parametrize(
    "capacity, chunk, prefix_cache, requests, cancel",
    [
        # Two rows whose batch grows from a width of 250 (mlx_lm: 762 wide at 506).
        (1280, 64, 0, [("a", _prompt(250), 260, 0), ("b", _prompt(10, 2), 500, 0)], None),
        (1792, 300, 0, [("a", _prompt(601), 2, 0)], None),  # mlx_lm: 812 wide
        # The long row leaves while a short one that joined late stays.
        (
            4096,
            64,
            0,
            [("long", _prompt(10), 990, 0), ("short", _prompt(10, 3), 200, 700)],
            (720, "long"),
        ),
        # Prefixes kept from prompts and from finished rows, then reused.
        (
            3072,
            64,
            2048,
            [("a", _prompt(300), 40, 0), ("b", _prompt(340), 30, 0), ("c", _prompt(300), 5, 200)],
            None,
        ),
    ],
)
def test_what_a_rank_holds_stays_within_what_the_ledger_counts(
    capacity, chunk, prefix_cache, requests, cancel
):
    """Items run in issue order, as on a rank. Once an item has run, the caches hold at
    most what the ledger counted when it was issued (with its drops and admission).
    requests: (name, prompt, max_tokens, the step it arrives at); cancel: (step, name)."""
    scheduler = Scheduler(
        {VOCAB - 1},
        chunks=ChunkSizer(ChunkPolicy(tokens=chunk)),
        prefix_cache_tokens=prefix_cache,
        kv_capacity_tokens=capacity,
    )
    executor = StageExecutor(_OneLayerStage())
    sequences = {}
    baseline = _live_positions()
    worst = 0.0
    for step in range(3000):
        for name, prompt, max_tokens, arrives in requests:
            if step == arrives:
                sequences[name] = Sequence(GenerationRequest(name, prompt, max_tokens=max_tokens))
                scheduler.add(sequences[name])
        if cancel is not None and step == cancel[0]:
            scheduler.cancel(cancel[1])
        item = scheduler.next_item()
        if item is None:
            if not scheduler.active and step > max(r[3] for r in requests):
                break
            continue
        counted = scheduler._kv_positions()
        logits = executor.run(item)
        if logits is not None:
            mx.eval(logits)  # as the sampler does; nothing else is evaluated here
        worst = max(worst, _live_positions() - baseline - counted)
        scheduler.on_result(item, scheduler.start_sampling(item, logits))
        scheduler.flush()
    assert worst <= 16  # an item's logits and token arrays, not KV
    assert all(isinstance(events(s)[-1], Finished) for s in sequences.values())
