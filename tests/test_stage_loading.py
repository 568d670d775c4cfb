"""Each rank keeps, and reads from disk, only its own layers' weights."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model

from refserver.pipeline import load_stage
from refserver.split import PipelineSplit


def nbytes(module) -> int:
    return sum(a.nbytes for _, a in tree_flatten(module.parameters()))


@pytest.fixture(scope="module")
def full_model_bytes(tiny_model):
    model, _ = load_model(tiny_model)
    inner = model.model
    return {
        "layers": [nbytes(layer) for layer in inner.layers],
        "embedding": nbytes(inner.embed_tokens),
        "norm_head": nbytes(inner.norm) + nbytes(model.lm_head),
    }


@pytest.mark.parametrize(
    "counts,rank", [((4,), 0), ((2, 2), 0), ((2, 2), 1), ((1, 3), 0), ((1, 3), 1), ((2, 1, 1), 1)]
)
def test_rank_holds_exactly_its_share(tiny_model, full_model_bytes, counts, rank):
    split = PipelineSplit(counts)
    mx.clear_cache()
    before = mx.get_active_memory()
    stage, _ = load_stage(tiny_model, rank, split)
    expected = sum(full_model_bytes["layers"][i] for i in split.layer_range(rank))
    if split.is_first_stage(rank):
        expected += full_model_bytes["embedding"]
    if split.is_last_stage(rank):
        expected += full_model_bytes["norm_head"]
    assert stage.parameter_bytes() == expected
    # Memory in use grew by the share alone: other layers were never read.
    assert mx.get_active_memory() - before == expected
    assert len(stage.layers) == counts[rank]
    assert (stage.embed_tokens is not None) == split.is_first_stage(rank)
    assert (stage.head is not None) == split.is_last_stage(rank)
