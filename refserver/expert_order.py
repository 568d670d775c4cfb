"""On the CPU, a stage's MoE layers read their experts in order at every token count.

mlx_lm's SwitchGLU sorts a batch's token x expert pairs by expert only from 64 pairs:
a rule for Metal, where sorted pairs take another kernel (and other rounding). MLX's
CPU gather_mm computes one product per pair whatever the order, so sorting changes no
result there, and the pairs of one expert, side by side, find its weights in cache.
Measured on the medium preset (4 layers, fp32): a decode step of 4 rows 74 -> 65 ms,
of 8 rows 130 -> 111 ms, a 16-token prefill chunk 230 -> 179 ms. On a GPU nothing
changes.
"""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import SwitchGLU, _gather_sort, _scatter_unsort


class ExpertOrderedSwitchGLU(SwitchGLU):
    """mlx_lm's SwitchGLU with its pairs sorted by expert whatever their number."""

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        x = mx.expand_dims(x, (-2, -3))
        x, order, inverse = _gather_sort(x, mx.stop_gradient(indices))
        up = self.up_proj(x, order, sorted_indices=True)
        gate = self.gate_proj(x, order, sorted_indices=True)
        x = self.down_proj(self.activation(up, gate), order, sorted_indices=True)
        return _scatter_unsort(x, inverse, indices.shape).squeeze(-2)


def order_experts_on_cpu(layers: Iterable[nn.Module]) -> None:
    """Make the MoE of every layer in `layers` sort its pairs, when MLX runs on the CPU."""
    if mx.default_device() != mx.cpu:
        return
    for layer in layers:
        experts = layer.block_sparse_moe.switch_mlp
        if type(experts) is SwitchGLU:
            experts.__class__ = ExpertOrderedSwitchGLU  # same weights, same tree
