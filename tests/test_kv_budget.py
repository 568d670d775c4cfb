"""The KV budget: sizes, positions held, and rank 0 admitting by it (fake logits).
On real ranks: test_reliability_kv_budget.py."""

from __future__ import annotations

import pytest
from scheduler_helpers import VOCAB, complete, events, run

from refserver.engine.chunking import ChunkPolicy, ChunkSizer
from refserver.engine.interface import Finished, GenerationRequest
from refserver.engine.kv_budget import (
    KV_STEP,
    KvLedger,
    RankKv,
    held_positions,
    least_useful_budget,
    parse_size,
    rounded,
)
from refserver.engine.scheduler import Scheduler, Sequence
from refserver.engine.work import Prefill


@pytest.mark.parametrize(
    "text, size",
    [
        ("512MB", 512 * 10**6),
        ("40GB", 40 * 10**9),
        ("1.5GiB", int(1.5 * 2**30)),
        ("64kib", 64 * 1024),
        ("1000000", 10**6),
        (" 2 tb ", 2 * 10**12),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0GB", "-1GB", "lots", "12 parsecs", "5ib", "GB"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="--kv-budget"):
        parse_size(text)


@pytest.mark.parametrize(
    "batches, prompts, positions",
    [
        ([], [], 0),
        ([[10]], [], KV_STEP),
        ([[10, 300]], [], 2 * 2 * KV_STEP),  # rectangular: every row as long as the longest
        ([[10], [300]], [], KV_STEP + 2 * KV_STEP),
        ([[10], []], [257], KV_STEP + 2 * KV_STEP),
        ([[10], [20]], [5, 300], 2 * KV_STEP + KV_STEP + 2 * KV_STEP),
    ],
)
def test_held_positions(batches, prompts, positions):
    assert held_positions(batches, prompts) == positions


@pytest.mark.parametrize(
    "bytes_per_token",
    [[512, 512], [2048, 4096], [8192, 1024], [1000, 3000, 2000]],  # uneven splits too
)
def test_the_least_useful_budget_lets_every_rank_hold_one_request(bytes_per_token):
    budget = least_useful_budget([RankKv(1, b) for b in bytes_per_token])
    for per_token in bytes_per_token:
        assert not KvLedger(RankKv(budget, per_token).capacity_tokens).never_fits(1, 2)
    heaviest = max(bytes_per_token)
    assert KvLedger(RankKv(budget - 1, heaviest).capacity_tokens).never_fits(1, 2)


def test_rank_capacity_and_never_fits():
    assert RankKv(budget_bytes=1_000_000, bytes_per_token=512).capacity_tokens == 1953
    ledger = KvLedger(capacity_tokens=4 * KV_STEP)
    assert not ledger.never_fits(prompt=100, reach=3 * KV_STEP)
    assert ledger.never_fits(prompt=100, reach=3 * KV_STEP + 1)
    assert ledger.never_fits(prompt=2 * KV_STEP + 1, reach=2 * KV_STEP + 1)
    assert rounded(0) == 0 and rounded(1) == rounded(KV_STEP) == KV_STEP


def _scheduler(capacity: int, cache: int = 0, micro_batches: int = 1) -> Scheduler:
    return Scheduler(
        {VOCAB - 1},
        micro_batches=micro_batches,
        chunks=ChunkSizer(ChunkPolicy(tokens=64)),
        prefix_cache_tokens=cache,
        kv_capacity_tokens=capacity,
    )


def _sequence(name: str, prompt_length: int, max_tokens: int, first: int = 1) -> Sequence:
    prompt = list(range(first, first + prompt_length))
    return Sequence(GenerationRequest(name, prompt, max_tokens=max_tokens))


def _run(scheduler: Scheduler) -> list:
    return run(scheduler, check=_within_budget)


def _within_budget(scheduler: Scheduler) -> None:
    assert scheduler.kv_used <= scheduler.ledger.capacity_tokens


@pytest.mark.parametrize("capacity", [2 * KV_STEP, 3 * KV_STEP + 7, 40 * KV_STEP])
def test_the_limits_a_refusal_names_are_the_edges_of_never_fits(capacity):
    """What a 400 tells a client to send instead (Claude Code retries with it) fits."""
    assert KvLedger(capacity_tokens=2 * KV_STEP - 1).longest_prompt() == 0  # nothing fits
    ledger = KvLedger(capacity_tokens=capacity)
    longest = ledger.longest_prompt()
    assert not ledger.never_fits(longest, longest + 1)
    assert ledger.never_fits(longest + 1, longest + 2)
    for prompt in (1, longest // 2, longest):
        limit = ledger.reach_limit(prompt)
        assert limit > prompt and not ledger.never_fits(prompt, limit)
        assert ledger.never_fits(prompt, limit + 1)


def test_a_sequence_that_does_not_fit_waits_until_another_gives_its_kv_back():
    # Each needs its row (256) and, while prefilled, its prompt's own cache (256).
    scheduler = _scheduler(capacity=3 * KV_STEP - 1)
    first, second = _sequence("a", 10, 100), _sequence("b", 10, 100)
    scheduler.add(first)
    scheduler.add(second)
    issued = _run(scheduler)
    order = list(dict.fromkeys(item.seq for item in issued if isinstance(item, Prefill)))
    assert order == ["a", "b"]
    second_prefill = next(
        i for i, item in enumerate(issued) if isinstance(item, Prefill) and item.seq == "b"
    )
    assert any("a" in item.drop for item in issued[: second_prefill + 1])
    assert scheduler.ledger.high_water <= 3 * KV_STEP - 1
    for sequence in (first, second):
        last = events(sequence)[-1]
        assert isinstance(last, Finished) and last.completion_tokens == 100


def test_cached_prefixes_are_evicted_first_to_admit_a_sequence():
    scheduler = _scheduler(capacity=4 * KV_STEP, cache=10_000)
    scheduler.add(_sequence("a", 200, 10))
    _run(scheduler)
    assert len(scheduler.prefix_cache.index) == 1  # prompt and output, kept
    scheduler.add(_sequence("b", 200, 3 * KV_STEP - 200, first=1000))
    issued = _run(scheduler)
    assert issued[0].cache_ops[0][0] == "evict"
    assert len(scheduler.prefix_cache.index) <= 1


def test_sequences_spread_over_micro_batches_by_what_they_cost():
    scheduler = _scheduler(capacity=100 * KV_STEP, micro_batches=2)
    long, short, other = _sequence("long", 10, 2000), _sequence("s", 10, 5), _sequence("o", 10, 5)
    for sequence in (long, short, other):
        scheduler.add(sequence)
    run(scheduler, steps=12)
    # A short sequence beside the long one would cost a row as long as the long one.
    assert long.batch != short.batch and short.batch == other.batch


def test_prompts_admitted_together_go_to_different_micro_batches():
    scheduler = Scheduler({VOCAB - 1}, micro_batches=2, chunks=ChunkSizer(ChunkPolicy(tokens=64)))
    first, second = _sequence("a", 10, 5), _sequence("b", 10, 5, first=50)
    scheduler.add(first)
    scheduler.add(second)
    body, last = scheduler.next_item(), scheduler.next_item()  # a's 9 tokens, then its last
    complete(scheduler, body)
    # b follows a into the pipeline before a has joined its micro-batch.
    assert (last.seq, scheduler.next_item().seq) == ("a", "b")
    assert first.batch != second.batch


def test_the_entry_a_new_prompt_extends_is_evicted_last():
    scheduler = _scheduler(capacity=5 * KV_STEP, cache=10_000)
    scheduler.add(_sequence("a", 100, 5))
    _run(scheduler)
    scheduler.add(_sequence("b", 100, 5, first=1000))
    _run(scheduler)
    # Entries are numbered as decided: a's prompt 0, then a whole 1; b's prompt 2, b whole 3.
    a_entry, b_entry = 1, 3
    assert len(scheduler.prefix_cache.index) == 2 and b_entry in scheduler.prefix_cache.index
    # "a" again, with more after it and a reach that needs one of the two entries gone.
    prompt = list(range(1, 101)) + [7, 7, 7, 7, 40, 41]
    scheduler.add(Sequence(GenerationRequest("again", prompt, max_tokens=2 * KV_STEP)))
    issued = _run(scheduler)
    first = next(item for item in issued if isinstance(item, Prefill))
    assert first.cache_ops == [["evict", b_entry]]  # b's, though a's is the older
    assert first.reuse == [a_entry, 104]
