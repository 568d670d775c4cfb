"""Rank 0's scheduler: which work item runs next, and what its result means.

Sequences wait, are prefilled one chunk per item (so long prompts interleave with
decoding), then join one of the micro-batches. Each micro-batch has at most one
decode item in flight; with several micro-batches, several items are in the
pipeline at once and every stage has work. A prompt's chunks follow each other
into the pipeline (up to one per stage in flight), since every rank runs its
items in order; while sequences decode, one chunk enters per round of their
steps, so a stream waits for one chunk at a time. Once a prompt's chunks are all
issued, the next waiting prompt follows them in, so the stages never wait for a
prompt's last result. A prompt starts from the longest prefix the prefix cache
holds (see prefix_cache), and is kept there once prefilled. Cancellations and finished
sequences are dropped by the next item issued, which every rank runs after the
items that still held them.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from dataclasses import dataclass, field

import mlx.core as mx

from .chunking import ChunkPolicy, ChunkSizer
from .interface import (
    ErrorEvent,
    Finished,
    GenerationRequest,
    PrefillProgress,
    PromptLogprobs,
    TokenEvent,
)
from .kv_budget import KvLedger, held_positions
from .prefix_cache import PrefixCache, PrefixHit
from .sampling import ChunkScores, Draw, RowFailure, SequenceSampler, describe_failure, draw
from .work import Decode, Prefill, Release, WorkItem


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    events: queue.Queue = field(default_factory=queue.Queue)
    sampler: SequenceSampler | None = None
    prefilled: int = 0  # prompt tokens issued for prefill (or reused from the cache)
    chunks_in_flight: int = 0  # prefill chunks issued and not yet read
    processed: int = 0  # prompt tokens whose prefill has completed (or were reused)
    cached: int = 0  # prompt tokens reused from the prefix cache
    generated: int = 0
    output: list[int] = field(default_factory=list)  # generated token ids
    last_token: int = -1
    batch: int | None = None
    cancelled: bool = False
    done: bool = False
    # When it was queued and when admitted: its queue wait, for /metrics.
    queued_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def reach(self) -> int:
        """The most tokens this sequence's cache can ever hold."""
        return len(self.request.prompt_tokens) + self.request.max_tokens


class Scheduler:
    def __init__(
        self,
        eos_token_ids: set[int],
        micro_batches: int = 1,
        max_batch: int = 8,
        chunks: ChunkSizer | None = None,
        prefix_cache_tokens: int = 0,
        kv_capacity_tokens: int | None = None,
    ):
        self.eos_token_ids = eos_token_ids
        self.max_batch = max_batch
        self.chunks = chunks or ChunkSizer(ChunkPolicy(tokens=2048))
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self.ledger = KvLedger(kv_capacity_tokens) if kv_capacity_tokens else None
        self.kv_used = 0  # KV positions held by rank 0's decisions, as of the last item
        self.waiting: deque[Sequence] = deque()
        # Admitted sequences whose prefill results are not all read, in issue order.
        self.prefilling: deque[Sequence] = deque()
        # Prefill chunks issued and not yet read (how many may be: _prefill_item).
        self.prefill_in_flight = 0
        self.stages = micro_batches
        self.last_chunk_tokens = 0  # the latest chunk issued: the next grows from it
        # Micro-batches that issued a decode step since the last prefill chunk: while
        # sequences decode, one chunk per round of their steps (see _prefill_turn).
        self.decoded_since_prefill: set[int] = set()
        self.members: dict[int, list[Sequence]] = {b: [] for b in range(micro_batches)}
        self.joining: dict[int, list[Sequence]] = {b: [] for b in range(micro_batches)}
        # Decode items in flight per micro-batch (two when one was issued ahead).
        self.busy: dict[int, int] = {b: 0 for b in range(micro_batches)}
        # Each decode item in flight with its sequences in row order, by micro-batch.
        self.rows_in_flight: dict[int, deque[tuple[Decode, list[Sequence]]]] = {
            b: deque() for b in range(micro_batches)
        }
        self.to_drop: list[str] = []
        self.by_id: dict[str, Sequence] = {}
        # Events waiting for flush(): handed over while the next step computes.
        self.outbox: list[tuple[Sequence, object]] = []
        self._turn = 0

    # -- requests in -------------------------------------------------------
    def add(self, sequence: Sequence) -> None:
        prompt = sequence.request.prompt_tokens
        try:
            if not prompt:  # nothing to compute: on the ranks, a failure of them all
                raise ValueError("the prompt has no tokens")
            sequence.sampler = SequenceSampler(sequence.request.sampling, prompt)
        except Exception as exc:  # the request's own settings: it fails alone
            sequence.done = True
            self._emit(sequence, _request_failed(describe_failure(exc)))
            return
        if _reads(sequence) == 0:  # nothing to generate or to score (echo alone)
            sequence.done = True
            self._emit(sequence, Finished("length", len(prompt), 0))
            return
        self.waiting.append(sequence)
        self.by_id[sequence.id] = sequence

    def cancel(self, seq_id: str, failure: ErrorEvent | None = None) -> None:
        """Stop a sequence: it ends cancelled, or with `failure` (its own)."""
        sequence = self.by_id.get(seq_id)
        if sequence is None or sequence.done:
            return
        sequence.cancelled = True
        if sequence in self.waiting:
            self.waiting.remove(sequence)
            self._finish(sequence, "cancelled", holds_cache=False)
            return
        for group in (*self.members.values(), *self.joining.values()):
            if sequence in group:
                group.remove(sequence)
        if failure is None:
            self._finish(sequence, "cancelled")
        else:
            self._end(sequence, failure)

    def expire(self, now: float) -> None:
        for sequence in list(self.by_id.values()):
            deadline = sequence.request.deadline
            if deadline is not None and now > deadline:
                self.cancel(sequence.id)

    @property
    def active(self) -> int:
        return len(self.by_id)

    # -- items out ---------------------------------------------------------
    def next_item(self) -> WorkItem | None:
        """The next item to issue, or None when nothing can start now."""
        if self.ledger is not None:
            self.kv_used = self._kv_positions()
            self.ledger.record(self.kv_used)
        candidates = [self._decode_item] * len(self.members) + [self._prefill_item]
        for offset in range(len(candidates)):
            index = (self._turn + offset) % len(candidates)
            item = candidates[index](index) if index < len(self.members) else candidates[index]()
            if item is not None:
                self._turn = index + 1
                return item
        if self.to_drop and not any(self.busy.values()) and not self.prefill_in_flight:
            drop, cache_ops = self._take_drops()
            return Release(drop, cache_ops)
        return None

    def _decode_item(self, batch: int) -> Decode | None:
        if self.busy[batch] or not (self.members[batch] or self.joining[batch]):
            return None
        return self._issue_decode(batch, ahead=False)

    def decode_ahead(self, item: WorkItem) -> Decode | None:
        """While `item` (a Decode) runs, the same micro-batch's next step.

        Its rows are the batch as known now; a row that `item` finishes is
        computed once more and dropped later, as mlx_lm.generate_step also runs
        one step ahead. Its input tokens are the ones `item` samples (see
        ahead_tokens), still lazy: rank 0 sends them over the ring into a graph the
        first stage has already built, or on one rank feeds them straight in.
        """
        if not isinstance(item, Decode) or self.busy[item.batch] != 1:
            return None
        if not (self.members[item.batch] or self.joining[item.batch]):
            return None
        return self._issue_decode(item.batch, ahead=True)

    def _issue_decode(self, batch: int, ahead: bool) -> Decode:
        joiners = self.joining[batch]
        self.members[batch] = self.members[batch] + joiners
        self.joining[batch] = []
        self.busy[batch] += 1
        self.decoded_since_prefill.add(batch)
        rows = list(self.members[batch])
        drop, cache_ops = self._take_drops()
        item = Decode(
            batch=batch,
            seqs=[s.id for s in rows],
            tokens=[] if ahead else [s.last_token for s in rows],
            join=[s.id for s in joiners],
            drop=drop,
            cache_ops=cache_ops,
            issued_ahead=ahead,
        )
        self.rows_in_flight[batch].append((item, rows))
        return item

    def _rows(self, item: Decode) -> list[Sequence]:
        return next(rows for issued, rows in self.rows_in_flight[item.batch] if issued is item)

    def ahead_tokens(self, item: Decode, ahead: Decode, sampling: Draw) -> mx.array:
        """The (lazy) input tokens of `ahead`: what `item` samples for the rows they
        share, then the known first tokens of the rows that join."""
        rows, next_rows = self._rows(item), self._rows(ahead)
        position = {sequence: index for index, sequence in enumerate(rows)}
        carried = [position[s] for s in next_rows if s in position]
        joined = [s.last_token for s in next_rows if s not in position]
        tokens = sampling.tokens.astype(mx.int32)[mx.array(carried, dtype=mx.int32)]
        if joined:
            tokens = mx.concatenate([tokens, mx.array(joined, dtype=mx.int32)])
        return tokens

    def _prefill_item(self) -> Prefill | None:
        # One chunk per stage keeps them all busy. With no stream decoding, on several
        # stages, one more: queued on the first stage while rank 0 finishes the oldest
        # (else its item left only once that chunk was read, and the first stage waited
        # for it: a 700-token prompt on two stages prefilled at 1.70 × one process, and
        # at 1.84 with it). Not beside decoding streams: there a step could queue behind
        # two chunks, and their gaps are bounded by one chunk at a time (_prefill_turn).
        queued = self.stages > 1 and not self.running()
        if self.prefill_in_flight >= self.stages + queued or not self._prefill_turn():
            return None
        reuse = None
        if not self.prefilling or _all_issued(self.prefilling[-1]):
            if not self.waiting or self.running() + len(self.prefilling) >= self.max_batch:
                return None
            # Looked up first: the entry it hits is the last one evicted to admit it.
            hit = self._cached_prefix(self.waiting[0])
            if not self._admit(self.waiting[0]):
                return None  # it waits until running sequences give their KV back
            self.prefilling.append(self.waiting.popleft())
            self.prefilling[-1].admitted_at = time.monotonic()
            reuse = self._start_from(self.prefilling[-1], hit)
            self._emit_progress(self.prefilling[-1])
        sequence = self.prefilling[-1]
        prompt = sequence.request.prompt_tokens
        start, end = sequence.prefilled, self._chunk_end(sequence)
        sequence.prefilled = end
        self.last_chunk_tokens = end - start
        sequence.chunks_in_flight += 1
        self.prefill_in_flight += 1
        self.decoded_since_prefill.clear()
        drop, cache_ops = self._take_drops()
        final = end == len(prompt)
        scores = sequence.request.prompt_logprobs is not None and not final
        item = Prefill(sequence.id, prompt[start:end], final, drop, cache_ops, reuse, scores)
        if item.final and self.prefix_cache is not None:
            # Kept once this chunk has run: the op leaves with the next item.
            self.prefix_cache.keep(sequence.id, prompt, self._cache_room())
        return item

    def _prefill_turn(self) -> bool:
        """Whether a prefill chunk may enter the pipeline now.

        While sequences decode, every decoding micro-batch issues a step between two
        chunks: a stage then runs at most one chunk between a micro-batch's steps, so a
        running stream's gap is one chunk's time (with two chunks in a row, it was two
        for the same prompt speed: the stages still alternate chunk and step).
        """
        decoding = {b for b in self.members if self.members[b] or self.joining[b]}
        return decoding <= self.decoded_since_prefill

    def _chunk_end(self, sequence: Sequence) -> int:
        """As mlx_lm.generate_step: the prompt but its last token in chunks, then that
        token. Chunks are cut from what the prompt reads: not its cached prefix."""
        start, length = sequence.prefilled, len(sequence.request.prompt_tokens)
        body = length - 1
        if start >= body:
            return length
        ahead = self.last_chunk_tokens if self.prefill_in_flight else 0
        reads = body - sequence.cached
        size = self.chunks.size(reads, self.running() > 0, self.stages, ahead, body - start)
        return min(start + size, body)

    def _cached_prefix(self, sequence: Sequence) -> PrefixHit | None:
        if self.prefix_cache is None or sequence.request.prompt_logprobs is not None:
            return None  # a prompt to score is computed whole
        return self.prefix_cache.reuse(sequence.request.prompt_tokens)

    def _start_from(self, sequence: Sequence, hit: PrefixHit | None) -> list[int] | None:
        """Start from a cached prefix, unless admitting the sequence evicted it."""
        if hit is None or hit.entry not in self.prefix_cache.index:
            return None
        sequence.prefilled = sequence.processed = sequence.cached = hit.length
        return [hit.entry, hit.length]

    def _admit(self, sequence: Sequence) -> bool:
        """Reserve the sequence's KV in the micro-batch where it costs least (then the
        emptiest), evicting cached prefixes while it does not fit; False: it waits."""
        while True:
            cost, _, batch = min(
                (self._kv_positions(extra=(b, sequence)), self._sequences_in(b), b)
                for b in self.members
            )
            if self.ledger is None or cost <= self.ledger.capacity_tokens:
                sequence.batch = batch
                return True
            if self.prefix_cache is None or not self.prefix_cache.evict_oldest():
                return False

    def _sequences_in(self, batch: int) -> int:
        """The micro-batch's rows, with those that will join it once prefilled."""
        prefilling = sum(1 for s in self.prefilling if s.batch == batch)
        return len(self.members[batch]) + len(self.joining[batch]) + prefilling

    def _kv_positions(self, extra: tuple[int, Sequence] | None = None, cached=True) -> int:
        """KV positions every rank holds (or will) for rank 0's decisions so far, with
        `extra` (micro-batch, sequence) admitted too."""
        reaches = {b: [s.reach for s in self.members[b] + self.joining[b]] for b in self.members}
        staged = [(s.batch, s) for s in self.prefilling] + ([extra] if extra else [])
        prompts = []
        for batch, sequence in staged:  # its own cache while it prefills, its row once joined
            reaches[batch].append(sequence.reach)
            prompts.append(len(sequence.request.prompt_tokens))
        entries = self.prefix_cache.index.positions if cached and self.prefix_cache else 0
        return held_positions(list(reaches.values()), prompts) + entries

    def _cache_room(self) -> int | None:
        """KV positions the budget leaves for cached prefixes (None: no budget)."""
        if self.ledger is None:
            return None
        return self.ledger.capacity_tokens - self._kv_positions(cached=False)

    def running(self) -> int:
        """Sequences prefilled and decoding (or about to join a micro-batch)."""
        return sum(len(self.members[b]) + len(self.joining[b]) for b in self.members)

    def _take_drops(self) -> tuple[list[str], list[list]]:
        """The caches to drop with the next item, and the prefix-cache ops before them."""
        drops, self.to_drop = self.to_drop, []
        return drops, self.prefix_cache.take_ops() if self.prefix_cache else []

    # -- results in --------------------------------------------------------
    def start_sampling(self, item: WorkItem, logits) -> Draw | None:
        """Begin sampling the tokens `item` produced (None when it produced none)."""
        if isinstance(item, Decode):
            return draw(logits, [s.sampler for s in self._rows(item)])
        if isinstance(item, Prefill) and item.final:
            sequence = self._prefilling(item.seq)
            return None if sequence.cancelled else draw(logits, [sequence.sampler])
        if isinstance(item, Prefill) and item.scores:
            sequence = self._prefilling(item.seq)
            if sequence.cancelled:
                return None
            # Results are read in issue order: this chunk starts where the last one ended.
            start = sequence.processed + 1
            targets = sequence.request.prompt_tokens[start : start + len(item.tokens)]
            try:
                return ChunkScores(logits, targets, sequence.request.prompt_logprobs)
            except Exception as exc:  # the chunk ran on every rank: only its scores failed
                return RowFailure(describe_failure(exc))
        return None

    def on_result(self, item: WorkItem, sampling: Draw | ChunkScores | RowFailure | None) -> None:
        """Read what `item` produced; queue its events (see flush)."""
        if isinstance(item, Prefill):
            self._after_prefill(item, sampling)
        elif isinstance(item, Decode):
            self.busy[item.batch] -= 1
            issued, rows = self.rows_in_flight[item.batch].popleft()
            assert issued is item, "decode results must be read in issue order"
            for sequence, event in zip(rows, sampling.events(), strict=True):
                if not sequence.done:  # finished or cancelled while this step ran
                    self._deliver(sequence, event)

    def _deliver(self, sequence: Sequence, event: TokenEvent | RowFailure) -> None:
        if isinstance(event, RowFailure):
            self._remove(sequence)
            self._end(sequence, _request_failed(event.detail))
        else:
            self._deliver_token(sequence, event)

    def flush(self) -> None:
        """Hand the queued events to their requests' streams."""
        outbox, self.outbox = self.outbox, []
        for sequence, event in outbox:
            sequence.events.put(event)

    def _emit(self, sequence: Sequence, event) -> None:
        self.outbox.append((sequence, event))

    def _emit_progress(self, sequence: Sequence) -> None:
        total = len(sequence.request.prompt_tokens)
        self._emit(sequence, PrefillProgress(sequence.processed, total, sequence.cached))

    def _prefilling(self, seq_id: str) -> Sequence:
        return next(s for s in self.prefilling if s.id == seq_id)

    def _after_prefill(
        self, item: Prefill, sampling: Draw | ChunkScores | RowFailure | None
    ) -> None:
        self.prefill_in_flight -= 1
        sequence = self._prefilling(item.seq)
        sequence.chunks_in_flight -= 1
        if isinstance(sampling, RowFailure):  # its scores: it fails alone, as a cancel
            # (left among the prefilling by _end only once no chunk of it is in flight)
            self.cancel(sequence.id, _request_failed(sampling.detail))
            return
        if sequence.cancelled:
            if not sequence.chunks_in_flight:
                self.prefilling.remove(sequence)
            return
        if isinstance(sampling, ChunkScores):
            self._emit(sequence, PromptLogprobs(sequence.processed + 1, sampling.events()))
        sequence.processed += len(item.tokens)
        self._emit_progress(sequence)
        if sequence.request.max_tokens == 0 and sequence.processed == _reads(sequence):
            self.prefilling.remove(sequence)  # scored: nothing to generate
            self._finish(sequence, "length")
            return
        if not item.final:
            return
        self.prefilling.remove(sequence)
        (event,) = sampling.events()
        self.joining[sequence.batch].append(sequence)  # the micro-batch chosen at admission
        self._deliver(sequence, event)

    def _deliver_token(self, sequence: Sequence, event: TokenEvent) -> None:
        sequence.generated += 1
        sequence.output.append(event.token_id)
        if event.token_id in self.eos_token_ids:
            if sequence.request.sampling.logprobs:
                self._emit(sequence, event)  # no text, but the score that was asked for
            self._remove(sequence)
            self._finish(sequence, "stop")
            return
        sequence.last_token = event.token_id
        self._emit(sequence, event)
        if sequence.generated >= sequence.request.max_tokens:
            self._remove(sequence)
            self._finish(sequence, "length")

    def _remove(self, sequence: Sequence) -> None:
        for group in (*self.members.values(), *self.joining.values()):
            if sequence in group:
                group.remove(sequence)

    def _finish(self, sequence: Sequence, reason: str, holds_cache: bool = True) -> None:
        if holds_cache and self.prefix_cache is not None:
            self.prefix_cache.keep(sequence.id, _computed_tokens(sequence), self._cache_room())
        prompt_tokens = len(sequence.request.prompt_tokens)
        queued = (sequence.admitted_at or time.monotonic()) - sequence.queued_at
        finished = Finished(reason, prompt_tokens, sequence.generated, sequence.cached, queued)
        self._end(sequence, finished, holds_cache)

    def _end(self, sequence: Sequence, last_event, holds_cache: bool = True) -> None:
        """The sequence's last event; its caches leave with the next item."""
        sequence.done = True
        self.by_id.pop(sequence.id, None)
        if holds_cache:
            self.to_drop.append(sequence.id)
        if sequence in self.prefilling and not sequence.chunks_in_flight:
            self.prefilling.remove(sequence)
        self._emit(sequence, last_event)

    def fail_all(self, message: str) -> None:
        """Every unfinished sequence ends with an error (a rank was lost)."""
        self.flush()
        for sequence in list(self.by_id.values()) + list(self.waiting):
            if not sequence.done:
                sequence.done = True
                sequence.events.put(ErrorEvent(message))
        self.by_id.clear()
        self.waiting.clear()


def _all_issued(sequence: Sequence) -> bool:
    """No chunk of its prompt is left to issue (or it was cancelled)."""
    return sequence.cancelled or sequence.prefilled == _reads(sequence)


def _reads(sequence: Sequence) -> int:
    """The prompt tokens its prefill computes: all of them; when nothing is to be
    generated, all but the last to score them (its logits would only give the first
    generated token), and none when no score was asked for either."""
    request = sequence.request
    prompt = len(request.prompt_tokens)
    if request.max_tokens:
        return prompt
    return prompt - 1 if request.prompt_logprobs is not None else 0


def _computed_tokens(sequence: Sequence) -> list[int]:
    """The tokens in a sequence's cache on every rank once its items so far have run:
    the prompt chunks issued, and each generated token but the last (not yet fed)."""
    prompt = sequence.request.prompt_tokens[: sequence.prefilled]
    return prompt + sequence.output[:-1]


def _request_failed(detail: str) -> ErrorEvent:
    return ErrorEvent(f"this request failed: {detail}", "request_failed")
