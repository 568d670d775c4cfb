"""The prefix cache and prefill chunks as rank 0 decides them, without ranks (fake logits).
On real ranks: test_e2e_prefix_cache.py."""

from __future__ import annotations

import pytest
from scheduler_helpers import LIKELY, VOCAB, complete, events, run

from refserver.engine.chunking import (
    DEFAULT_PREFILL_CHUNK,
    FIRST_ADAPTED_TOKENS,
    MAX_ADAPTED_TOKENS,
    MAX_IDLE_TOKENS,
    MIN_ADAPTED_TOKENS,
    STEP_GAP_WEIGHT,
    ChunkPolicy,
    ChunkSizer,
)
from refserver.engine.interface import (
    Finished,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    TokenEvent,
)
from refserver.engine.prefix_cache import MAX_ENTRIES, PrefixCache, PrefixHit, PrefixIndex
from refserver.engine.scheduler import Scheduler, Sequence
from refserver.engine.work import Decode, Prefill, Release

EOS = VOCAB - 1


# -- the index ----------------------------------------------------------------
def _index(capacity: int, *entries: list[int]) -> PrefixIndex:
    index = PrefixIndex(capacity)
    for tokens in entries:
        index.save(tokens)
    return index


@pytest.mark.parametrize(
    "entries, prompt, limit, expected",
    [
        ([], [1, 2, 3], 2, None),
        ([[1, 2, 3]], [1, 2, 3], 2, PrefixHit(0, 2)),  # the last token is always computed
        ([[1, 2, 3]], [1, 2, 3, 4], 3, PrefixHit(0, 3)),
        ([[1, 2, 3]], [1, 2, 9, 9], 3, PrefixHit(0, 2)),
        ([[1, 2, 3]], [9, 2, 3], 2, None),
        ([[1, 2], [5, 6, 7, 8]], [5, 6, 7, 1], 3, PrefixHit(1, 3)),
        ([[1, 2, 7], [1, 2, 3, 4]], [1, 2, 3, 9], 3, PrefixHit(1, 3)),  # the longest wins
        ([[1, 2, 3]], [1, 2, 3], 0, None),
    ],
)
def test_longest_prefix(entries, prompt, limit, expected):
    assert _index(100, *entries).longest_prefix(prompt, limit) == expected


@pytest.mark.parametrize(
    "capacity, entries, new, saved, evicted, left",
    [
        (100, [[1, 2, 3]], [1, 2, 3], False, [], 1),  # held already
        (100, [[1, 2, 3]], [1, 2], False, [], 1),  # a prefix of a held one
        (100, [[1, 2, 3]], [1, 2, 3, 4], True, [0], 1),  # extends entry 0: replaces it
        (100, [[1, 2, 3]], [7, 8], True, [], 2),
        (5, [[1, 2, 3], [4, 5]], [7, 8], True, [0], 2),  # least recently used goes first
        (3, [[1, 2, 3]], [7, 8, 9, 10], False, [], 1),  # alone beyond the capacity
        (100, [], [], False, [], 0),
    ],
)
def test_save(capacity, entries, new, saved, evicted, left):
    index = _index(capacity, *entries)
    entry, gone = index.save(new)
    assert (entry is not None, gone, len(index)) == (saved, evicted, left)
    assert index.cached_tokens <= capacity


def test_a_hit_makes_its_entry_the_most_recently_used():
    index = _index(6, [1, 2, 3], [4, 5, 6])
    index.longest_prefix([1, 2, 3, 9], 3)
    assert index.save([7, 8, 9]) == (2, [1])


def test_the_index_keeps_at_most_max_entries_evicting_the_least_recently_used():
    index = PrefixIndex(capacity_tokens=10**9)
    for first in range(MAX_ENTRIES):
        assert index.save([first, 7])[0] == first
    assert index.longest_prefix([0, 7, 9], 3) == PrefixHit(0, 2)  # 0 is now the newest
    entry, evicted = index.save([MAX_ENTRIES, 7])
    assert entry == MAX_ENTRIES and evicted == [1] and len(index) == MAX_ENTRIES
    assert 1 not in index and 0 in index


def test_cache_ops_keep_and_evict_in_decision_order():
    cache = PrefixCache(5)
    cache.keep("a", [1, 2, 3])
    cache.keep("b", [1, 2, 3, 4])
    cache.keep("c", [7, 8])
    assert cache.take_ops() == [
        ["keep", "a", 0, 3],
        ["evict", 0],
        ["keep", "b", 1, 4],
        ["evict", 1],
        ["keep", "c", 2, 2],
    ]
    assert cache.take_ops() == []


# -- chunk sizes --------------------------------------------------------------
@pytest.mark.parametrize(
    "text, policy",
    [
        ("512", ChunkPolicy(tokens=512)),
        ("1", ChunkPolicy(tokens=1)),
        ("250ms", ChunkPolicy(seconds=0.25)),
        (" 1.5 MS ", ChunkPolicy(seconds=0.0015)),
        ("8steps", ChunkPolicy(steps=8)),
        ("1 step", ChunkPolicy(steps=1)),
        ("2.5Steps", ChunkPolicy(steps=2.5)),
        (DEFAULT_PREFILL_CHUNK, ChunkPolicy(steps=8)),
    ],
)
def test_chunk_policy_parses(text, policy):
    assert ChunkPolicy.parse(text) == policy


@pytest.mark.parametrize("text", ["0", "-5", "0ms", "0steps", "fast", "12s", "steps", "", "1e3"])
def test_chunk_policy_refuses(text):
    with pytest.raises(ValueError, match="--prefill-chunk"):
        ChunkPolicy.parse(text)


@pytest.mark.parametrize(
    "policy, measured, expected",
    [
        (ChunkPolicy(tokens=64), [(64, 10.0)], 64),  # fixed: never adapts
        (ChunkPolicy(seconds=0.25), [(128, 0.25)] * 5, 128),
        (ChunkPolicy(seconds=0.25), [(128, 10.0)] * 20, MIN_ADAPTED_TOKENS),
        (ChunkPolicy(seconds=0.25), [(1000, 0.01)] * 20, MAX_ADAPTED_TOKENS),
        (ChunkPolicy(seconds=0.25), [(2, 100.0)] * 5, 128),  # too short to tell
    ],
)
def test_chunk_sizer(policy, measured, expected):
    sizer = ChunkSizer(policy)
    for tokens, seconds in measured:
        sizer.observe(tokens, seconds)
    assert sizer.tokens == expected


def test_adapted_chunks_follow_the_speed_of_a_stage():
    sizer = ChunkSizer(ChunkPolicy(seconds=0.2))
    for _ in range(20):
        sizer.observe(sizer.tokens, sizer.tokens / 200)  # 200 tokens/s: 40 tokens
    assert 39 <= sizer.tokens <= 41


def _steps(sizer: ChunkSizer, batch: int, gap: float, count: int, start: float = 0.0) -> float:
    for i in range(count):
        sizer.stepped(batch, start + i * gap)
    return start + (count - 1) * gap


@pytest.mark.parametrize(
    "steps, gap, speed, expected",
    [
        (8, 0.02, 100, 16),  # 8 gaps of 20 ms at 100 prompt tok/s a stage
        (8, 0.04, 100, 32),  # a slower stream: longer chunks, the same gap in its steps
        (4, 0.02, 100, 8),
        (8, 0.03, 5000, 1200),  # a fast GPU: hundreds of tokens
        (8, 0.001, 100, MIN_ADAPTED_TOKENS),
        (8, 1.0, 10_000, MAX_ADAPTED_TOKENS),
    ],
)
def test_chunks_in_steps_last_that_many_of_a_streams_gaps(steps, gap, speed, expected):
    sizer = ChunkSizer(ChunkPolicy(steps=steps))
    sizer.observe(64, 64 / speed)
    assert sizer.tokens == FIRST_ADAPTED_TOKENS  # no stream's gap measured yet
    _steps(sizer, batch=0, gap=gap, count=30)
    assert sizer.tokens == pytest.approx(expected, abs=1)


def test_only_a_streams_gaps_without_a_chunk_between_count():
    sizer = ChunkSizer(ChunkPolicy(steps=8))
    sizer.observe(64, 0.64)  # 100 tokens/s
    now = _steps(sizer, batch=0, gap=0.02, count=10)
    for _ in range(20):  # beside chunks the gaps grow by a chunk's time: not counted
        sizer.observe(16, 0.16)
        now += 0.18
        sizer.stepped(0, now)
    assert sizer.step_gap == pytest.approx(0.02)
    # Each micro-batch is timed against its own last step.
    _steps(sizer, batch=1, gap=0.05, count=2, start=now + 0.001)
    assert sizer.step_gap == pytest.approx(0.02 + STEP_GAP_WEIGHT * (0.05 - 0.02))


@pytest.mark.parametrize(
    "policy, body, decoding, stages, ahead, size",
    [
        (ChunkPolicy(tokens=64), 10_000, False, 2, 64, 64),  # fixed: reproducible boundaries
        (ChunkPolicy(tokens=64), 10_000, True, 2, 0, 64),
        # Beside streams: the target, once a chunk of that size is ahead in the pipeline.
        (ChunkPolicy(seconds=0.25), 10_000, True, 2, FIRST_ADAPTED_TOKENS, FIRST_ADAPTED_TOKENS),
        # Into an empty pipeline: a share that crosses the stages in the target's time.
        (ChunkPolicy(seconds=0.25), 10_000, True, 2, 0, FIRST_ADAPTED_TOKENS // 2),
        (ChunkPolicy(seconds=0.25), 10_000, True, 3, 0, -(-FIRST_ADAPTED_TOKENS // 3)),
        (ChunkPolicy(seconds=0.25), 10_000, True, 1, 0, FIRST_ADAPTED_TOKENS),
        # Behind a smaller chunk: a 1/stages share of the difference more (64, 96, 112 ...).
        (ChunkPolicy(seconds=0.25), 10_000, True, 2, 64, 96),
        (ChunkPolicy(seconds=0.25), 10_000, True, 2, 96, 112),
        (ChunkPolicy(seconds=0.25), 10_000, True, 2, 127, FIRST_ADAPTED_TOKENS),
        (ChunkPolicy(seconds=0.25), 10_000, True, 4, 32, 56),
        (ChunkPolicy(seconds=0.25), 10_000, True, 2, 1, 65),  # behind a prompt's last token
        (ChunkPolicy(seconds=0.25), 2000, False, 2, 0, 125),  # idle: 8 chunks per stage
        (ChunkPolicy(seconds=0.25), 2000, False, 2, 16, 125),
        # ... no smaller than a quarter of the adapted size, nor than 8 tokens
        (ChunkPolicy(seconds=0.25), 100, False, 2, 0, FIRST_ADAPTED_TOKENS // 4),
        (ChunkPolicy(seconds=0.25), 52, False, 2, 0, FIRST_ADAPTED_TOKENS // 4),
        (ChunkPolicy(seconds=0.25), 100_000, False, 3, 0, MAX_IDLE_TOKENS),
        # One stage overlaps nothing: chunks no smaller than the adapted size.
        (ChunkPolicy(seconds=0.25), 100, False, 1, 0, FIRST_ADAPTED_TOKENS),
        (ChunkPolicy(seconds=0.25), 2000, False, 1, 0, 250),
    ],
)
def test_chunk_size_with_and_without_streams_decoding(policy, body, decoding, stages, ahead, size):
    assert ChunkSizer(policy).size(body, decoding, stages, ahead, left=body) == size


@pytest.mark.parametrize(
    "policy, decoding, stages, left, size",
    [
        # With no stream decoding, on several stages: at most half of what is left, down
        # to the smallest chunk (the last one crosses every other stage alone).
        (ChunkPolicy(seconds=0.25), False, 2, 250, 125),
        (ChunkPolicy(seconds=0.25), False, 2, 200, 100),
        (ChunkPolicy(seconds=0.25), False, 3, 90, 45),
        (ChunkPolicy(seconds=0.25), False, 2, 40, FIRST_ADAPTED_TOKENS // 4),
        # One stage has nothing to drain; beside streams and fixed sizes, no taper.
        (ChunkPolicy(seconds=0.25), False, 1, 40, 250),
        (ChunkPolicy(seconds=0.25), True, 2, 40, FIRST_ADAPTED_TOKENS // 2),
        (ChunkPolicy(tokens=64), False, 2, 40, 64),
    ],
)
def test_a_prompts_last_chunks_taper_with_no_stream_decoding(policy, decoding, stages, left, size):
    assert ChunkSizer(policy).size(2000, decoding, stages, ahead=0, left=left) == size


# -- the scheduler ------------------------------------------------------------
def _scheduler(chunk: int = 4, depth: int = 2, cache: int = 1000) -> Scheduler:
    sizer = ChunkSizer(ChunkPolicy(tokens=chunk))
    return Scheduler({EOS}, micro_batches=depth, chunks=sizer, prefix_cache_tokens=cache)


def _sequence(name: str, prompt: list[int], max_tokens: int = 3) -> Sequence:
    return Sequence(GenerationRequest(name, prompt, max_tokens=max_tokens))


def _run(scheduler: Scheduler) -> list:
    return run(scheduler, steps=100, in_flight=2)


def _finished(sequence: Sequence) -> Finished:
    last = events(sequence)[-1]
    assert isinstance(last, Finished), last
    return last


PROMPT = list(range(1, 12))  # 11 tokens: chunks of 4, 4, 2, then the last token alone


def test_a_prompt_is_prefilled_in_chunks_that_follow_each_other_into_the_pipeline():
    scheduler = _scheduler()
    scheduler.add(_sequence("a", PROMPT))
    first, second, third = scheduler.next_item(), scheduler.next_item(), scheduler.next_item()
    assert (first.tokens, second.tokens) == ([1, 2, 3, 4], [5, 6, 7, 8])
    assert third.tokens == [9, 10] and not third.final
    # One chunk per stage in flight, and one queued on the first stage.
    assert scheduler.next_item() is None
    complete(scheduler, first)
    last = scheduler.next_item()
    assert last.tokens == [11] and last.final
    assert scheduler.next_item() is None


def test_a_repeated_prompt_reuses_all_but_its_last_token():
    scheduler = _scheduler()
    first, again = _sequence("a", PROMPT), _sequence("b", PROMPT)
    scheduler.add(first)
    _run(scheduler)
    scheduler.add(again)
    issued = _run(scheduler)
    prefills = [item for item in issued if isinstance(item, Prefill)]
    assert [(p.tokens, p.reuse) for p in prefills] == [([11], [1, 10])]
    assert _finished(first).cached_tokens == 0
    assert _finished(again).cached_tokens == 10


def test_the_next_turn_reuses_the_prompt_and_the_output_before_it():
    scheduler = _scheduler()
    first = _sequence("a", PROMPT, max_tokens=3)
    scheduler.add(first)
    _run(scheduler)
    assert first.output == [7, 7, 7]
    # The KV of the last output token was never computed: the next turn recomputes it.
    turn = _sequence("b", PROMPT + [7, 7, 7, 30, 31])
    scheduler.add(turn)
    issued = _run(scheduler)
    first_prefill = next(item for item in issued if isinstance(item, Prefill))
    assert first_prefill.reuse[1] == len(PROMPT) + 2
    assert _finished(turn).cached_tokens == len(PROMPT) + 2


def test_a_hit_cuts_its_chunks_from_what_it_reads_not_from_the_whole_prompt():
    # Idle, a prompt is cut into 8 chunks per stage; the next turn of a 2,000-token
    # conversation reads 200 tokens: as one 200-token chunk, the stages took turns.
    sizer = ChunkSizer(ChunkPolicy(seconds=0.25))
    scheduler = Scheduler({EOS}, micro_batches=2, chunks=sizer, prefix_cache_tokens=10_000)
    conversation = [1 + i % 50 for i in range(2000)]
    scheduler.add(_sequence("a", conversation, max_tokens=1))
    first = [len(item.tokens) for item in _run(scheduler) if isinstance(item, Prefill)]
    assert first == [125] * 15 + [62, 32, 30, 1]  # the tail tapers
    scheduler.add(_sequence("b", conversation + [60] * 200))
    after_hit = [len(item.tokens) for item in _run(scheduler) if isinstance(item, Prefill)]
    smallest = FIRST_ADAPTED_TOKENS // 4  # 2,000 cached, 199 read
    assert after_hit == [smallest] * 6 + [199 - 6 * smallest, 1]


def test_keep_ops_leave_after_the_chunk_that_completes_the_prompt():
    scheduler = _scheduler(cache=1000)
    scheduler.add(_sequence("a", PROMPT, max_tokens=2))
    issued = _run(scheduler)
    final = next(i for i, item in enumerate(issued) if isinstance(item, Prefill) and item.final)
    assert not issued[final].cache_ops
    assert issued[final + 1].cache_ops == [["keep", "a", 0, len(PROMPT)]]
    # Once finished: the prompt and the first output token replace the prompt alone,
    # before the sequence's cache is dropped (in the same item).
    last = next(item for item in issued if "a" in item.drop)
    assert last.cache_ops == [["evict", 0], ["keep", "a", 1, len(PROMPT) + 1]]
    assert isinstance(last, Release | Decode)


def test_no_cache_means_no_reuse_and_no_ops():
    scheduler = _scheduler(cache=0)
    for name in "ab":
        scheduler.add(_sequence(name, PROMPT))
        issued = _run(scheduler)
        assert all(not item.cache_ops for item in issued)
        assert all(item.reuse is None for item in issued if isinstance(item, Prefill))


def test_a_sequence_cancelled_while_prefilling_keeps_only_the_chunks_issued():
    scheduler = _scheduler()
    sequence = _sequence("a", PROMPT)
    scheduler.add(sequence)
    first, second = scheduler.next_item(), scheduler.next_item()
    scheduler.cancel("a")
    complete(scheduler, first)
    complete(scheduler, second)
    release = scheduler.next_item()
    assert release.drop == ["a"]
    assert release.cache_ops == [["keep", "a", 0, 8]]
    assert not scheduler.prefilling


def test_the_next_prompt_follows_the_last_chunk_of_the_one_before_into_the_pipeline():
    scheduler = _scheduler(chunk=8, depth=4)
    scheduler.add(_sequence("a", PROMPT))
    scheduler.add(_sequence("b", PROMPT + [60, 61]))
    items = [scheduler.next_item() for _ in range(5)]
    # All of a's chunks, then b at once, before any result is read: b starts from a's
    # prompt, which every rank has computed by the time it runs b's chunk.
    assert [(item.seq, item.tokens, item.reuse) for item in items] == [
        ("a", PROMPT[:8], None),
        ("a", PROMPT[8:10], None),
        ("a", PROMPT[10:], None),
        ("b", [60], [0, len(PROMPT)]),
        ("b", [61], None),
    ]
    assert items[3].cache_ops == [["keep", "a", 0, len(PROMPT)]]
    assert scheduler.next_item() is None  # one chunk per stage in flight, and one queued


def test_the_index_counts_what_its_entries_hold_as_they_come_and_go():
    index = PrefixIndex(capacity_tokens=700)
    for first in range(0, 2000, 100):
        index.save(list(range(first, first + 90 + first % 7)))
        index.longest_prefix(list(range(first - 300, first)), 50)
        held = [tokens for tokens in index._entries.values()]
        assert index.cached_tokens == sum(len(tokens) for tokens in held) <= 700
        assert index.positions == sum(-(-len(tokens) // 256) * 256 for tokens in held)


@pytest.mark.parametrize("running", [1, 2, 3])
def test_while_streams_decode_one_chunk_enters_per_round_of_their_steps(running):
    """A stage runs at most one chunk between two steps of a decoding micro-batch, so a
    stream's gap is one chunk's time; the long prompt still gets through."""
    scheduler = _scheduler(chunk=4, depth=2)
    streams = [_sequence(f"s{i}", [40 + i, 41, 42], max_tokens=60) for i in range(running)]
    for sequence in streams:
        scheduler.add(sequence)
    long_prompt = _sequence("long", list(range(1, 30)), max_tokens=1)

    def add_once_they_decode(scheduler):
        if scheduler.running() == running and long_prompt.sampler is None:
            scheduler.add(long_prompt)

    issued = run(scheduler, steps=400, in_flight=3, check=add_once_they_decode)
    arrived = next(i for i, item in enumerate(issued) if getattr(item, "seq", "") == "long")
    issued = issued[arrived:]
    chunks = [i for i, item in enumerate(issued) if isinstance(item, Prefill)]
    decoding = {sequence.batch for sequence in streams}
    for before, after in zip(chunks, chunks[1:], strict=False):
        stepped = {item.batch for item in issued[before:after] if isinstance(item, Decode)}
        assert stepped == decoding, (before, after)
    assert len(chunks) == 8  # 28 tokens in chunks of 4, then the last one
    assert isinstance(events(long_prompt)[-1], Finished)


def test_beside_a_stream_a_prompts_chunks_grow_into_the_pipeline():
    # Two stages: a whole chunk right behind a half made the last stage wait for it on
    # the first; each chunk adds half of what the one ahead of it lacks.
    sizer = ChunkSizer(ChunkPolicy(seconds=0.25))
    scheduler = Scheduler({EOS}, micro_batches=2, chunks=sizer)
    scheduler.add(_sequence("stream", [1, 2, 3], max_tokens=500))
    run(scheduler, steps=6, in_flight=3)
    scheduler.add(_sequence("prompt", [1 + i % 50 for i in range(1000)], max_tokens=1))
    issued = run(scheduler, steps=40, in_flight=3)
    chunks = [len(item.tokens) for item in issued if isinstance(item, Prefill)]
    assert chunks == [64, 96, 112, 120, 124, 126, 127, 128, 102, 1], chunks


# -- prompts to score (echo with logprobs) -------------------------------------
@pytest.mark.parametrize("max_tokens", [0, 2])
def test_a_prompt_to_score_is_computed_whole_and_scored_in_order(max_tokens):
    """A cached prefix is not computed, so it could not be scored: a prompt to score
    reads no cache. Each chunk but the prompt's last token is scored; with max_tokens 0
    that last token is not computed at all."""
    scheduler = _scheduler(chunk=4)
    prompt = list(range(1, 12))
    _run_one(scheduler, _sequence("warm", prompt))  # now the cache holds the prompt
    scored = Sequence(GenerationRequest("s", prompt, max_tokens=max_tokens, prompt_logprobs=1))
    items = _run_one(scheduler, scored)
    prefills = [i for i in items if isinstance(i, Prefill) and i.seq == "s"]
    assert all(item.reuse is None for item in prefills)
    assert [i.scores for i in prefills] == [not i.final for i in prefills]
    assert [i.final for i in prefills].count(True) == (1 if max_tokens else 0)
    found = events(scored)
    scores = [e for e in found if isinstance(e, PromptLogprobs)]
    assert [t.token_id for e in scores for t in e.tokens] == prompt[1:]
    assert [e.start for e in scores] == [1, 5, 9]  # chunks of 4, 4 and 2: in order
    assert all(len(t.top_logprobs) == 1 and t.logprob < 0 for e in scores for t in e.tokens)
    finished = found[-1]
    assert (finished.reason, finished.completion_tokens, finished.cached_tokens) == (
        "length",
        max_tokens,
        0,
    )


@pytest.mark.parametrize(
    "prompt, scores",
    [([5], 0), ([1, 2, 3], None)],  # nothing before the one token; echo asks for nothing
    ids=["one-token-prompt", "echo-alone"],
)
def test_a_prompt_with_nothing_to_compute_finishes_at_once(prompt, scores):
    scheduler = _scheduler()
    sequence = Sequence(GenerationRequest("s", prompt, max_tokens=0, prompt_logprobs=scores))
    scheduler.add(sequence)
    scheduler.flush()
    assert scheduler.next_item() is None
    assert events(sequence) == [Finished("length", len(prompt), 0)]


@pytest.mark.parametrize("logprobs", [False, True])
def test_the_end_token_is_an_event_when_its_score_was_asked_for(logprobs):
    """lm-eval asks for one token after the prompt and drops the last entry of the
    logprobs: an end token that came without its entry cost the prompt's last one."""
    scheduler = Scheduler({LIKELY}, chunks=ChunkSizer(ChunkPolicy(tokens=4)))  # ends at once
    sampling = SamplingParams(logprobs=logprobs)
    sequence = Sequence(GenerationRequest("s", [1, 2, 3], max_tokens=1, sampling=sampling))
    _run_one(scheduler, sequence)
    found = events(sequence)
    tokens = [e.token_id for e in found if isinstance(e, TokenEvent)]
    assert tokens == ([LIKELY] if logprobs else [])
    assert (found[-1].reason, found[-1].completion_tokens) == ("stop", 1)


def test_a_prompt_whose_scores_fail_fails_alone():
    """Scoring is rank 0's alone, after the chunk ran on every rank: a failure there (say
    an allocation) ends that request, and the others go on."""

    def failing_head(hidden):
        raise RuntimeError("[metal::malloc] simulated: no memory for the logits")

    scheduler = _scheduler(chunk=4)
    scored = Sequence(GenerationRequest("s", list(range(1, 12)), 2, prompt_logprobs=1))
    other = _sequence("o", [1, 2, 3, 4, 5], max_tokens=3)
    scheduler.add(scored)
    scheduler.add(other)
    run(scheduler, steps=100, in_flight=2, head=failing_head)
    failed = events(scored)[-1]
    assert failed.code == "request_failed" and "simulated" in failed.message
    assert _finished(other).reason == "length"
    assert not scheduler.active and not scheduler.prefilling and not scheduler.prefill_in_flight


def _run_one(scheduler: Scheduler, sequence: Sequence) -> list:
    scheduler.add(sequence)
    return _run(scheduler)
