"""On the CPU a stage's MoE sorts its token x expert pairs by expert: same results, bit for bit."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.switch_layers import SwitchGLU
from mlx_lm.utils import load_model

from refserver.expert_order import ExpertOrderedSwitchGLU, order_experts_on_cpu
from refserver.pipeline import load_stage
from refserver.split import PipelineSplit


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_model_q4"])
@pytest.mark.parametrize(
    "rows,tokens",
    [(1, 1), (4, 1), (8, 1), (1, 7), (1, 31), (1, 40), (3, 20)],
    ids=lambda v: str(v),
)
def test_sorted_experts_give_the_same_bits(request, model_fixture, rows, tokens):
    model, _ = load_model(request.getfixturevalue(model_fixture))
    layer = model.model.layers[0]
    x = mx.random.normal((rows, tokens, model.args.hidden_size), key=mx.random.key(tokens))
    x = x.astype(layer.input_layernorm.weight.dtype)
    mlx_lm_order = layer.block_sparse_moe(x)
    order_experts_on_cpu([layer])
    assert type(layer.block_sparse_moe.switch_mlp) is ExpertOrderedSwitchGLU
    assert mx.array_equal(layer.block_sparse_moe(x), mlx_lm_order)


def test_a_stage_orders_its_own_layers_experts(tiny_model):
    stage, _ = load_stage(tiny_model, 0, PipelineSplit((2, 2)))
    kinds = {type(layer.block_sparse_moe.switch_mlp) for layer in stage.layers}
    assert kinds == {ExpertOrderedSwitchGLU}
    assert issubclass(ExpertOrderedSwitchGLU, SwitchGLU)  # the same weights and tree
