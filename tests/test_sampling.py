"""Rank 0's sampler on random logits: which settings leave one token to choose."""

from __future__ import annotations

import mlx.core as mx
import pytest

from refserver.engine.interface import SamplingParams
from refserver.engine.sampling import SequenceSampler, draw

VOCAB = 64


@pytest.mark.parametrize(
    "fields, only_the_top",
    [
        ({"temperature": 0.0}, True),
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
