"""Greedy tokens through N real ring ranks equal single-process mlx_lm, token for token."""

from __future__ import annotations

import pytest

from simcluster.parity import chat_prompt_tokens, pipeline_tokens, reference_tokens

pytestmark = pytest.mark.slow

CASES = [
    # (ranks, split, tokens, model fixture)
    (1, None, 64, "tiny_model"),
    (2, None, 64, "tiny_model"),
    (2, "1,3", 64, "tiny_model"),
    (2, "3,1", 64, "tiny_model"),
    (3, None, 64, "tiny_model"),
    (3, "1,2,1", 64, "tiny_model"),
    (4, None, 24, "tiny_model"),
    (2, None, 64, "tiny_model_q4"),
    (3, "2,1,1", 64, "tiny_model_q4"),
]


@pytest.fixture(scope="module")
def references(request):
    """Reference tokens per model, computed once in this process."""
    cache = {}

    def get(model_dir, tokens):
        key = (str(model_dir), tokens)
        if key not in cache:
            prompt = chat_prompt_tokens(model_dir)
            cache[key] = (prompt, reference_tokens(model_dir, prompt, tokens))
        return cache[key]

    return get


@pytest.mark.parametrize("ranks,split,tokens,model", CASES)
def test_pipeline_matches_single_process(ranks, split, tokens, model, references, request):
    model_dir = request.getfixturevalue(model)
    prompt, reference = references(model_dir, tokens)
    assert len(set(reference)) >= 8, "the reference must be diverse to make parity meaningful"
    ours = pipeline_tokens(ranks, model_dir, prompt, tokens, split, timeout=300)
    assert ours == reference
