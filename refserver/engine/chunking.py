"""How many prompt tokens one prefill chunk holds.

A chunk is one work item: while a stage computes it, the decode steps queued behind
it wait, so a chunk's time on a stage bounds the gap between a running stream's
tokens. Larger chunks prefill a little faster (fewer items, bigger matrix products:
much faster on a GPU). A fixed size keeps chunk boundaries reproducible (parity
tests compare with mlx_lm prefilling in the same chunks); a time target adapts the
size to the hardware: tens of tokens on a CPU, thousands on an M3 Ultra. The time
target only matters while streams are decoding: with none running, what a prompt reads
(not its cached prefix) is cut into several chunks per stage (enough to keep every stage
busy), no smaller than a quarter of the target's size (down to 8 tokens: a next turn
of ~50 new tokens still crosses two stages in a few chunks).
While streams decode, chunks grow into the pipeline: the first into an empty one is a
1/stages share (it crosses every stage before the step behind it can run), and each
next one adds a 1/stages share of what its predecessor lacks (1/2, 3/4, 7/8 ... on two
stages). The last stage waits for a chunk longer than the one before it, by the
difference, on every stage before it: with a whole chunk right after a half, a stream's
gap was 1.5 chunks' time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_PREFILL_CHUNK = "250ms"
# Bounds of an adapted size, and where it starts before anything is measured. A chunk
# beside decoding streams holds at least a few dozen tokens: each one also delays them.
MIN_ADAPTED_TOKENS = 32
MAX_ADAPTED_TOKENS = 8192
FIRST_ADAPTED_TOKENS = 128
# Chunks shorter than this say little about the speed of a stage.
MEASURED_MIN_TOKENS = 8
# With no stream decoding: chunks per stage of a prompt (the pipeline fills and drains
# once per prompt: more chunks waste less of it), the smallest and the largest chunk
# (mlx_lm's prefill step, which bounds the activations' memory). Measured on the CPU
# (medium preset, one process, per-token speed against 96-token chunks): 8 tokens 0.9,
# 16 0.93, 32 0.98; through two stages a 650-token prompt prefilled 6% faster in
# 24-token chunks than in 88-token ones. On one stage nothing overlaps: no small chunks.
IDLE_CHUNKS_PER_STAGE = 8
MIN_IDLE_TOKENS = 8
MAX_IDLE_TOKENS = 2048


@dataclass(frozen=True)
class ChunkPolicy:
    """A fixed chunk of `tokens`, or chunks adapted to take `seconds` on a stage."""

    tokens: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> ChunkPolicy:
        """'512' (tokens) or '250ms' (a time per chunk on the slowest stage)."""
        value = text.strip().lower()
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*ms", value):
            milliseconds = float(match.group(1))
            if milliseconds > 0:
                return cls(seconds=milliseconds / 1000)
        elif value.isdigit() and int(value) > 0:
            return cls(tokens=int(value))
        raise ValueError(
            f"--prefill-chunk must be a token count (e.g. 512) or a time per chunk "
            f"(e.g. 250ms), got {text!r}"
        )

    def __str__(self) -> str:
        return f"{self.tokens} tokens" if self.tokens else f"{self.seconds * 1000:g} ms"


class ChunkSizer:
    """The current chunk size; with a time target it follows measured chunk times."""

    def __init__(self, policy: ChunkPolicy):
        self.policy = policy
        self.tokens = policy.tokens or FIRST_ADAPTED_TOKENS
        self._logged = self.tokens

    def size(self, reads: int, decoding: bool, stages: int, ahead: int) -> int:
        """Tokens for the next chunk of a prompt that reads `reads` tokens in chunks (all
        but its last token and its cached prefix); `decoding`: streams are running beside
        it; `ahead`: the tokens of the chunk in the pipeline before it (0: none)."""
        if self.policy.tokens:
            return self.tokens
        if decoding:
            if ahead >= self.tokens:
                return self.tokens
            return ahead + -(-(self.tokens - ahead) // stages)
        share = -(-reads // (IDLE_CHUNKS_PER_STAGE * stages))
        smallest = self.tokens if stages == 1 else max(MIN_IDLE_TOKENS, self.tokens // 4)
        return max(smallest, min(MAX_IDLE_TOKENS, share))

    def observe(self, tokens: int, seconds: float) -> None:
        """A chunk of `tokens` took `seconds` from its start to its result on rank 0."""
        if self.policy.seconds is None or tokens < MEASURED_MIN_TOKENS or seconds <= 0:
            return
        ideal = self.policy.seconds * tokens / seconds
        smoothed = (self.tokens + ideal) / 2  # one slow chunk must not halve the next
        self.tokens = int(min(MAX_ADAPTED_TOKENS, max(MIN_ADAPTED_TOKENS, smoothed)))
        if not 0.5 <= self.tokens / self._logged <= 2:  # log what it chose, not every wobble
            log.info(
                "prefill chunks: %d tokens (%.0f prompt tok/s per stage, target %s per chunk)",
                self.tokens,
                tokens / seconds,
                self.policy,
            )
            self._logged = self.tokens
