"""Rank 0's sampler on random logits: which settings leave one token to choose."""

from __future__ import annotations

import mlx.core as mx
import pytest

from refserver.engine.executor import PositionLogits
from refserver.engine.interface import SamplingParams
from refserver.engine.sampling import SCORE_ROWS, ChunkScores, SequenceSampler, draw

VOCAB = 64


@pytest.mark.parametrize(
    "fields, only_the_top",
    [
        ({"temperature": 0.0}, True),
        ({"temperature": 1e-39}, True),  # 1/T overflows float32: greedy, not arbitrary
        ({"temperature": 1e-6}, True),
        ({"temperature": 1.0, "top_p": 0.0}, True),  # OpenAI and Anthropic accept 0
        ({"temperature": 1.0, "top_k": 1}, True),
        ({"temperature": 1.0, "top_p": 1e-9}, True),
        ({"temperature": 1.0}, False),
        ({"temperature": 1.0, "top_p": 0.9}, False),
    ],
)
def test_settings_that_leave_only_the_most_likely_token(fields, only_the_top):
    logits = mx.random.normal((1, VOCAB), key=mx.random.key(3)) * 0.1  # flat: many options
    top = int(mx.argmax(logits[0]).item())
    chosen = {
        draw(logits, [SequenceSampler(SamplingParams(seed=seed, **fields), [1])])
        .events()[0]
        .token_id
        for seed in range(24)
    }
    assert (chosen == {top}) is only_the_top


@pytest.mark.parametrize("top", [0, 1, 3])
def test_prompt_scores_in_blocks_equal_the_whole(top):
    """A scored chunk's logits are made SCORE_ROWS positions at a time (a real vocabulary
    is large); the scores are those of all the logits at once."""
    positions = SCORE_ROWS * 2 + 37
    hidden = mx.random.normal((positions, 16), key=mx.random.key(3))
    weights = mx.random.normal((16, 300), key=mx.random.key(4))
    targets = mx.random.randint(0, 300, (positions,), key=mx.random.key(5)).tolist()
    scores = ChunkScores(PositionLogits(hidden, lambda h: h @ weights), targets, top).events()
    logits = hidden @ weights
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    assert [e.token_id for e in scores] == targets
    want = [logprobs[i, t].item() for i, t in enumerate(targets)]
    assert [e.logprob for e in scores] == pytest.approx(want, abs=1e-5)
    best = mx.argsort(-logprobs, axis=-1)[:, :top].tolist()
    assert [[t for t, _ in e.top_logprobs] for e in scores] == best
    assert all(
        values == sorted(values, reverse=True)
        for values in ([v for _, v in e.top_logprobs] for e in scores)
    )
