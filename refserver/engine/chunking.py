"""How many prompt tokens one prefill chunk holds.

A chunk is one work item: while a stage computes it, the decode steps queued behind
it wait, so a chunk's time on a stage bounds the gap between a running stream's
tokens. Larger chunks prefill a little faster (fewer items, bigger matrix products:
much faster on a GPU). A fixed size keeps chunk boundaries reproducible (parity
tests compare with mlx_lm prefilling in the same chunks); a time target adapts the
size to the hardware: tens of tokens on a CPU, hundreds or thousands on an M3 Ultra.
The default target is a number of a running stream's usual gaps between tokens (each
measured between two of its steps with no chunk between), so a stream's longest gap
beside a prompt is about that many of its steps on any hardware and model. The time
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

# A chunk lasts about as long as 8 of a running stream's usual gaps between tokens:
# beside it, that stream waits for one chunk at a time (its gap is the chunk plus its
# own step on a stage: ~8.5 usual gaps on two stages), while the prompt keeps most of
# every stage (16/17 on two). A time measured in the streams' own steps suits any
# hardware: on this CPU it made ~20-token chunks; a Mac's GPU, which reads a prompt
# many times faster than it decodes, gets far longer ones for the same gap. (A fixed
# 250 ms let the gap grow to 13 of a stream's steps on a day the CPU decoded faster.)
DEFAULT_PREFILL_CHUNK = "8steps"
# Bounds of an adapted size, and where it starts before anything is measured.
MIN_ADAPTED_TOKENS = 8
MAX_ADAPTED_TOKENS = 8192
FIRST_ADAPTED_TOKENS = 128
# How much each new measurement moves the running averages: a chunk's speed changes
# little, a stream's gap varies with its batch from step to step.
CHUNK_SPEED_WEIGHT = 0.5
STEP_GAP_WEIGHT = 0.2
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
    """A fixed chunk of `tokens`, or chunks adapted to take `seconds` on a stage, or as
    long as `steps` of a running stream's usual gaps between tokens."""

    tokens: int | None = None
    seconds: float | None = None
    steps: float | None = None

    @classmethod
    def parse(cls, text: str) -> ChunkPolicy:
        """'512' (tokens), '250ms' (a time per chunk on the slowest stage) or '8steps'
        (a time per chunk of 8 of a running stream's usual gaps)."""
        value = text.strip().lower()
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|steps?)", value):
            amount = float(match.group(1))
            if amount > 0:
                return cls(seconds=amount / 1000) if match.group(2) == "ms" else cls(steps=amount)
        elif value.isdigit() and int(value) > 0:
            return cls(tokens=int(value))
        raise ValueError(
            f"--prefill-chunk must be a token count (e.g. 512), a time per chunk "
            f"(e.g. 250ms) or a number of a running stream's steps (e.g. 8steps), got {text!r}"
        )

    def __str__(self) -> str:
        if self.tokens:
            return f"{self.tokens} tokens"
        if self.seconds:
            return f"{self.seconds * 1000:g} ms"
        return f"{self.steps:g} decode steps"


class ChunkSizer:
    """The current chunk size; with a time target it follows measured chunk times and,
    for a target in steps, the gaps between a running stream's tokens."""

    def __init__(self, policy: ChunkPolicy):
        self.policy = policy
        self.tokens = policy.tokens or FIRST_ADAPTED_TOKENS
        self._logged = self.tokens
        self._speed: float | None = None  # prompt tokens per second of a stage
        self.step_gap: float | None = None  # seconds between a stream's tokens, no chunk between
        self._chunks_done = 0
        self._last_step: dict[int, tuple[float, int]] = {}  # micro-batch: (time, chunks done)

    def size(self, reads: int, decoding: bool, stages: int, ahead: int, left: int) -> int:
        """Tokens for the next chunk of a prompt that reads `reads` tokens in chunks (all
        but its last token and its cached prefix), `left` of them not yet issued;
        `decoding`: streams are running beside it; `ahead`: the tokens of the chunk in
        the pipeline before it (0: none)."""
        if self.policy.tokens:
            return self.tokens
        if decoding:
            if ahead >= self.tokens:
                return self.tokens
            return ahead + -(-(self.tokens - ahead) // stages)
        share = -(-reads // (IDLE_CHUNKS_PER_STAGE * stages))
        smallest = self.tokens if stages == 1 else max(MIN_IDLE_TOKENS, self.tokens // 4)
        size = max(smallest, min(MAX_IDLE_TOKENS, share))
        if stages == 1:
            return size
        # The tail tapers (at most half of what is left): once the first stage has read
        # the last chunk, that chunk still crosses every other stage while the first
        # waits, so a short last chunk shortens that wait.
        return min(size, max(smallest, -(-left // 2)))

    def observe(self, tokens: int, seconds: float) -> None:
        """A chunk of `tokens` took `seconds` from its start to its result on rank 0."""
        self._chunks_done += 1
        if self.policy.tokens or tokens < MEASURED_MIN_TOKENS or seconds <= 0:
            return
        self._speed = _averaged(self._speed, tokens / seconds, CHUNK_SPEED_WEIGHT)
        self._adapt()

    def stepped(self, batch: int, now: float) -> None:
        """Micro-batch `batch` got its step's result at `now` (monotonic seconds)."""
        if self.policy.steps is None:
            return
        last = self._last_step.get(batch)
        self._last_step[batch] = (now, self._chunks_done)
        if last is None or last[1] != self._chunks_done:
            return  # a chunk ran since its last step (or a prompt started it): not its usual gap
        self.step_gap = _averaged(self.step_gap, now - last[0], STEP_GAP_WEIGHT)
        self._adapt()

    def _adapt(self) -> None:
        target = self.policy.seconds
        if self.policy.steps is not None and self.step_gap is not None:
            target = self.policy.steps * self.step_gap
        if target is None or self._speed is None:
            return
        self.tokens = int(min(MAX_ADAPTED_TOKENS, max(MIN_ADAPTED_TOKENS, self._speed * target)))
        if not 0.5 <= self.tokens / self._logged <= 2:  # log what it chose, not every wobble
            log.info(
                "prefill chunks: %d tokens (%.0f prompt tok/s per stage, target %s%s per chunk)",
                self.tokens,
                self._speed,
                self.policy,
                f" of {self.step_gap * 1000:.0f} ms" if self.policy.steps else "",
            )
            self._logged = self.tokens


def _averaged(average: float | None, value: float, weight: float) -> float:
    return value if average is None else average + weight * (value - average)
