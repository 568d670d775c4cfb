"""Rank 0 turns a micro-batch's logits into tokens, each row with its own settings.

Greedy rows take the argmax of the log-probabilities exactly as
mlx_lm.generate_step does, so greedy output matches single-process mlx_lm.
Penalties and filters reuse mlx_lm.sample_utils; each seeded sequence draws
from its own PRNG key, so a seed reproduces regardless of batch neighbours.

A constrained row (see refserver.constrain) samples only what its grammar allows: the
mask is applied to its logits after the penalties. Its matcher moves on as each token is
read, and computes the next mask then, while the pipeline computes the next step. A step
decoded ahead on one rank is sampled before the last token was read: its mask then waits
for that token, while the step's forward pass computes.

A row whose own sampling raises fails that sequence alone (`RowFailure`): the batch
still gets a token for it, so every rank's step stays the same, and rank 0 drops
the row with the next item. Only a failure of the whole step is the cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from .interface import SamplingParams, TokenEvent

# How many of the latest tokens the penalties see (mlx_lm's default context is 20).
HISTORY = 64
# PRNG keys take a 64-bit unsigned seed; any other integer is taken modulo 2**64.
SEED_MODULUS = 2**64
# Temperatures below this decode greedily: their draw is the most likely token anyway,
# and 1/T overflows float32 near 1e-38 (an arbitrary token would be drawn).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class RowFailure:
    """A row whose sampling failed: its sequence ends with an error saying `detail`."""

    detail: str


def describe_failure(exc: Exception) -> str:
    """A client-safe line for a request's own failure (no traceback, bounded)."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class SequenceSampler:
    """Sampling state of one sequence: its settings, penalty history and key."""

    def __init__(self, params: SamplingParams, prompt_tokens: list[int]):
        self.params = params
        self.processors = make_logits_processors(
            logit_bias=params.logit_bias or None,
            repetition_penalty=_unless(params.repetition_penalty, 1.0),
            presence_penalty=_unless(params.presence_penalty, 0.0),
            frequency_penalty=_unless(params.frequency_penalty, 0.0),
        )
        # The penalties look back over the context, generated tokens included. It
        # stays lazy: a step decoded ahead is sampled before the last token is read.
        self.history = mx.array(prompt_tokens[-HISTORY:], dtype=mx.int32)
        self.key = None if params.seed is None else mx.random.key(params.seed % SEED_MODULUS)
        self.matcher = None if params.constraint is None else params.constraint.start()
        # Sampled tokens the matcher has not read yet (lazy while a step runs ahead).
        self.unmatched: list[mx.array] = []

    @property
    def is_plain_greedy(self) -> bool:
        return self.greedy and not self.processors and self.matcher is None

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_BELOW

    @property
    def waits_for_tokens(self) -> bool:
        return bool(self.unmatched)

    def choose(self, logprobs_row: mx.array, logits_row: mx.array) -> mx.array:
        """A lazy token for one row (logprobs_row: (1, vocab))."""
        if self.processors or self.matcher is not None:
            for processor in self.processors:
                logits_row = processor(self.history, logits_row)
            if self.matcher is not None:
                logits_row = self._masked(logits_row)
            logprobs_row = logits_row - mx.logsumexp(logits_row, axis=-1, keepdims=True)
        if self.greedy:
            return mx.argmax(logprobs_row, axis=-1), logprobs_row
        filtered = logprobs_row
        if self.params.top_p == 0:  # a nucleus of no mass: the most likely token alone
            filtered = apply_top_k(filtered, 1)
        elif self.params.top_p < 1.0:
            filtered = apply_top_p(filtered, self.params.top_p)
        if self.params.min_p > 0:
            filtered = apply_min_p(filtered, self.params.min_p)
        if 0 < self.params.top_k < filtered.shape[-1]:  # k >= vocabulary keeps every token
            filtered = apply_top_k(filtered, self.params.top_k)
        scaled = filtered * (1 / self.params.temperature)
        if self.key is not None:
            self.key, draw = mx.random.split(self.key)
            return mx.random.categorical(scaled, key=draw), logprobs_row
        return mx.random.categorical(scaled), logprobs_row

    def extend(self, token: mx.array) -> None:
        """Add this step's (lazy, shape (1,)) token to the context."""
        if self.processors:
            self.history = mx.concatenate([self.history, token.astype(mx.int32)])[-HISTORY:]
        if self.matcher is not None:
            self.unmatched.append(token)

    def read(self, token: mx.array) -> None:
        """`token` (one `extend` was given) is computed: move the matcher past it and the
        tokens before it, then compute the next mask if it depends on no lazy token."""
        if self.matcher is None or not any(t is token for t in self.unmatched):
            return  # unconstrained, or already read when the next step was sampled
        self._catch_up(through=token)
        if not self.unmatched:
            self.matcher.allowed()

    def _catch_up(self, through: mx.array | None = None) -> None:
        while self.unmatched:
            token = self.unmatched.pop(0)
            self.matcher.advance(token.item())
            if token is through:
                return

    def _masked(self, logits_row: mx.array) -> mx.array:
        """Logits with every token the grammar does not allow next at -inf."""
        self._catch_up()
        allowed = self.matcher.allowed()
        width = logits_row.shape[-1]  # the model's; may differ from the tokenizer's
        mask = np.zeros(width, dtype=bool)
        mask[: min(width, allowed.size)] = allowed[:width]
        return mx.where(mx.array(mask), logits_row, -mx.inf)


class Draw:
    """One token per row, being computed: started by `draw`, read by `events`."""

    def __init__(
        self,
        tokens: mx.array,
        row_logprobs: list,
        samplers: list[SequenceSampler],
        failures: dict[int, RowFailure] | None = None,
    ):
        self.tokens = tokens
        self.row_logprobs = row_logprobs
        self.samplers = samplers
        self.failures = failures or {}
        self.wanted = [
            i for i, s in enumerate(samplers) if s.params.logprobs and i not in self.failures
        ]
        self.row_tokens: dict[int, mx.array] = {}
        for i, sampler in enumerate(samplers):
            if i not in self.failures:
                self.row_tokens[i] = tokens[i : i + 1]
                sampler.extend(self.row_tokens[i])
        mx.async_eval(tokens, [row_logprobs[i] for i in self.wanted])

    def events(self) -> list[TokenEvent | RowFailure]:
        """Wait for the tokens; one TokenEvent (or RowFailure) per row."""
        token_ids = self.tokens.tolist()
        return [self._event(i, token) for i, token in enumerate(token_ids)]

    def _event(self, row: int, token: int) -> TokenEvent | RowFailure:
        if row in self.failures:
            return self.failures[row]
        try:
            self.samplers[row].read(self.row_tokens[row])
            if row not in self.wanted:
                return TokenEvent(token)
            top = self.samplers[row].params.top_logprobs
            return _with_logprobs(token, self.row_logprobs[row][0], top)
        except Exception as exc:  # this request's own settings; the others go on
            return RowFailure(describe_failure(exc))


def draw(logits: mx.array, samplers: list[SequenceSampler]) -> Draw:
    """Start sampling one token per row of `logits` (rows, vocab), for the whole batch."""
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if all(s.is_plain_greedy for s in samplers):
        tokens = mx.argmax(logprobs, axis=-1)
        row_logprobs = [logprobs[i : i + 1] for i in range(len(samplers))]
        return Draw(tokens, row_logprobs, samplers)
    if any(s.waits_for_tokens for s in samplers):
        mx.async_eval(logits)  # the forward pass runs while masks wait for the last tokens
    chosen, row_logprobs, failures = [], [], {}
    for i, sampler in enumerate(samplers):
        row = logprobs[i : i + 1]
        try:
            token, row = sampler.choose(row, logits[i : i + 1])
        except Exception as exc:  # this request's own settings; the others go on
            failures[i] = RowFailure(describe_failure(exc))
            token = mx.argmax(row, axis=-1)  # a stand-in, so the step stays whole
        chosen.append(token.reshape(1))
        row_logprobs.append(row)
    return Draw(mx.concatenate(chosen), row_logprobs, samplers, failures)


# Positions whose logits are made at once when a prompt is scored: (rows, vocabulary)
# floats, 0.2 GB for MiniMax's 200,064 tokens, however long the chunk.
SCORE_ROWS = 256


class PositionRows(Protocol):
    """A chunk's logits for each position, made on demand (the executor's PositionLogits)."""

    @property
    def count(self) -> int: ...

    def rows(self, start: int, end: int) -> mx.array: ...


class ChunkScores:
    """A prompt chunk's scores: at each position, the log-probability of the prompt's
    next token and the `top` most likely tokens (echo with logprobs). Taken from the
    raw logits, as a generated token's logprobs are, and computed here, SCORE_ROWS
    positions at a time."""

    def __init__(self, positions: PositionRows, targets: list[int], top: int):
        self.targets = targets
        self.chosen: list[float] = []
        self.best: list[tuple[tuple[int, float], ...]] = []
        for start in range(0, positions.count, SCORE_ROWS):
            end = min(start + SCORE_ROWS, positions.count)
            self._score(positions.rows(start, end), targets[start:end], top)

    def _score(self, logits: mx.array, targets: list[int], top: int) -> None:
        norm = mx.logsumexp(logits, axis=-1, keepdims=True)
        index = mx.array(targets, dtype=mx.int32)[:, None]
        chosen = (mx.take_along_axis(logits, index, axis=-1) - norm)[:, 0]
        if top == 0:
            self.chosen += chosen.tolist()
            self.best += [()] * len(targets)
            return
        if top == 1:
            ids = mx.argmax(logits, axis=-1, keepdims=True)
        else:  # the `top` largest at the end: no negated copy of the logits
            ids = mx.argpartition(logits, kth=logits.shape[-1] - top, axis=-1)[:, -top:]
        values = mx.take_along_axis(logits, ids, axis=-1) - norm
        mx.eval(chosen, ids, values)  # this block's logits are freed before the next
        self.chosen += chosen.tolist()
        self.best += [_best(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]

    def events(self) -> tuple[TokenEvent, ...]:
        """One TokenEvent per position, for the prompt token that follows it."""
        return tuple(
            TokenEvent(target, logprob, best)
            for target, logprob, best in zip(self.targets, self.chosen, self.best, strict=True)
        )


def _best(ids: list[int], values: list[float]) -> tuple[tuple[int, float], ...]:
    """(token, logprob) pairs, the most likely first."""
    return tuple(sorted(zip(ids, values, strict=True), key=lambda pair: -pair[1]))


def _with_logprobs(token: int, row: mx.array, top: int) -> TokenEvent:
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        indices = mx.argpartition(-row, kth=top - 1)[:top]
        best = _best(indices.tolist(), row[indices].tolist())
    return TokenEvent(token, float(row[token].item()), best)


def _unless(value: float, neutral: float) -> float | None:
    return None if value == neutral else value
