"""Rank 0 turns a micro-batch's logits into tokens, each row with its own settings.

Greedy rows take the argmax of the log-probabilities exactly as
mlx_lm.generate_step does, so greedy output matches single-process mlx_lm.
Penalties and filters reuse mlx_lm.sample_utils; each seeded sequence draws
from its own PRNG key, so a seed reproduces regardless of batch neighbours.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from .interface import SamplingParams, TokenEvent

# How many of the latest tokens the penalties see (mlx_lm's default context is 20).
HISTORY = 64


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
        self.key = mx.random.key(params.seed) if params.seed is not None else None

    @property
    def is_plain_greedy(self) -> bool:
        return self.params.temperature == 0 and not self.processors

    def choose(self, logprobs_row: mx.array, logits_row: mx.array) -> mx.array:
        """A lazy token for one row (logprobs_row: (1, vocab))."""
        if self.processors:
            for processor in self.processors:
                logits_row = processor(self.history, logits_row)
            logprobs_row = logits_row - mx.logsumexp(logits_row, axis=-1, keepdims=True)
        if self.params.temperature == 0:
            return mx.argmax(logprobs_row, axis=-1), logprobs_row
        filtered = logprobs_row
        if 0 < self.params.top_p < 1.0:
            filtered = apply_top_p(filtered, self.params.top_p)
        if self.params.min_p > 0:
            filtered = apply_min_p(filtered, self.params.min_p)
        if self.params.top_k > 0:
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


class Draw:
    """One token per row, being computed: started by `draw`, read by `events`."""

    def __init__(self, tokens: mx.array, row_logprobs: list, samplers: list[SequenceSampler]):
        self.tokens = tokens
        self.row_logprobs = row_logprobs
        self.samplers = samplers
        self.wanted = [i for i, s in enumerate(samplers) if s.params.logprobs]
        for i, sampler in enumerate(samplers):
            sampler.extend(tokens[i : i + 1])
        mx.async_eval(tokens, [row_logprobs[i] for i in self.wanted])

    def events(self) -> list[TokenEvent]:
        """Wait for the tokens; one TokenEvent per row."""
        token_ids = self.tokens.tolist()
        events = []
        for i, (sampler, token) in enumerate(zip(self.samplers, token_ids, strict=True)):
            if i in self.wanted:
                top = sampler.params.top_logprobs
                events.append(_with_logprobs(token, self.row_logprobs[i][0], top))
            else:
                events.append(TokenEvent(token))
        return events


def draw(logits: mx.array, samplers: list[SequenceSampler]) -> Draw:
    """Start sampling one token per row of `logits` (rows, vocab), for the whole batch."""
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if all(s.is_plain_greedy for s in samplers):
        tokens = mx.argmax(logprobs, axis=-1)
        row_logprobs = [logprobs[i : i + 1] for i in range(len(samplers))]
    else:
        chosen = [s.choose(logprobs[i : i + 1], logits[i : i + 1]) for i, s in enumerate(samplers)]
        tokens = mx.concatenate([token.reshape(1) for token, _ in chosen])
        row_logprobs = [row for _, row in chosen]
    return Draw(tokens, row_logprobs, samplers)


def _with_logprobs(token: int, row: mx.array, top: int) -> TokenEvent:
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        indices = mx.argpartition(-row, kth=top - 1)[:top]
        values = row[indices]
        pairs = sorted(zip(indices.tolist(), values.tolist(), strict=True), key=lambda p: -p[1])
        best = tuple((int(i), float(v)) for i, v in pairs)
    return TokenEvent(token, float(row[token].item()), best)


def _unless(value: float, neutral: float) -> float | None:
    return None if value == neutral else value
