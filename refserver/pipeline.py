"""One pipeline stage of mlx_lm's MiniMax model.

A stage keeps only its own decoder layers (mlx_lm's modules, unchanged), the
embedding when it is the first stage (rank N-1) and the final norm and head when
it is the last stage (rank 0). Hidden states travel rank r -> r-1 over the MLX
ring with send / recv_like; nothing is broadcast. The forward pass builds a lazy
graph only: the caller evaluates it, so no rank evaluates more than it needs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache
from mlx_lm.utils import load_model

from .expert_order import order_experts_on_cpu
from .load_progress import LoadProgress
from .split import PipelineSplit

log = logging.getLogger(__name__)


class PipelineStage:
    """The layers, embedding and head that one rank runs, with its neighbours."""

    def __init__(
        self,
        model: nn.Module,
        rank: int,
        split: PipelineSplit,
        group: mx.distributed.Group | None = None,
    ):
        self.rank = rank
        self.split = split
        self.group = group
        self.layer_range = split.layer_range(rank)
        self.is_first = split.is_first_stage(rank)
        self.is_last = split.is_last_stage(rank)
        inner = model.model
        self.layers = list(inner.layers[self.layer_range.start : self.layer_range.stop])
        order_experts_on_cpu(self.layers)
        self.embed_tokens = inner.embed_tokens if self.is_first else None
        self.norm = inner.norm if self.is_last else None
        self.head = self._head(model) if self.is_last else None
        self.hidden_size = model.args.hidden_size
        self.vocab_size = model.args.vocab_size
        # Hidden states carry the model's activation dtype; the layer norms hold it.
        self.hidden_dtype = self.layers[0].input_layernorm.weight.dtype

    @staticmethod
    def _head(model: nn.Module):
        if model.args.tie_word_embeddings:
            return model.model.embed_tokens.as_linear
        return model.lm_head

    def parameters(self) -> dict:
        """Every array this stage holds, as a tree (what the rank keeps in memory)."""
        tree = {"layers": [layer.parameters() for layer in self.layers]}
        if self.embed_tokens is not None:
            tree["embed_tokens"] = self.embed_tokens.parameters()
        if self.norm is not None:
            tree["norm"] = self.norm.parameters()
        if self.head is not None and isinstance(self.head, nn.Module):
            tree["lm_head"] = self.head.parameters()
        return tree

    def parameter_bytes(self) -> int:
        return sum(a.nbytes for _, a in _flatten(self.parameters()))

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take in this stage's layers."""
        total = 0
        for layer in self.layers:
            attention = layer.self_attn
            total += 2 * attention.num_key_value_heads * attention.head_dim
        return total * self.hidden_dtype.size

    def make_cache(self, cache_type: type[KVCache] = KVCache) -> list[KVCache]:
        """A KV cache for this rank's own layers only."""
        return [cache_type() for _ in self.layers]

    def forward(
        self,
        tokens: mx.array | None,
        cache: list,
        batch: int,
        length: int,
        last_only: bool = False,
        head: bool = True,
    ) -> tuple[mx.array, mx.array | None]:
        """Run this stage for a (batch, length) block of positions.

        The first stage embeds `tokens` (batch, length); other stages receive hidden
        states from rank+1. Returns the stage's lazy output (see `through`) and the ring
        receive it waits for (None on the first stage). The caller evaluates them.
        """
        if self.is_first:
            return self.through(self.embed_tokens(tokens), cache, last_only, head), None
        received = self.receive(batch, length)
        return self.through(received, cache, last_only, head), received

    def receive(self, batch: int, length: int) -> mx.array:
        """The (lazy) hidden states rank+1 sends for a (batch, length) block."""
        template = mx.zeros((batch, length, self.hidden_size), dtype=self.hidden_dtype)
        return mx.distributed.recv_like(template, self.rank + 1, group=self.group)

    def through(
        self, h: mx.array, cache: list, last_only: bool = False, head: bool = True
    ) -> mx.array:
        """This stage's layers on hidden states `h`, then the send to rank-1, or on
        the last stage the logits (of the last position alone when `last_only`: a
        prompt's last chunk needs no others, and a real model's head is large). Without
        `head`, the last stage gives the normed hidden states (the head applied later)."""
        mask = create_attention_mask(h, cache[0])
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            h = layer(h, mask, layer_cache)
        if not self.is_last:
            return mx.distributed.send(h, self.rank - 1, group=self.group)
        if last_only:
            h = h[:, -1:, :]
        return self.head(self.norm(h)) if head else self.norm(h)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), tree


def load_stage(
    model_path: Path,
    rank: int,
    split: PipelineSplit,
    group=None,
    strict: bool = True,
    progress: LoadProgress | None = None,
) -> tuple[PipelineStage, dict]:
    """Build the stage for `rank` and read only its own weights from disk.

    mlx_lm's loader maps the safetensors lazily; the arrays of other ranks' layers
    are dropped before anything is evaluated, so they are never read. The stage is
    read a layer at a time, counted in `progress`.
    """
    model, config = load_model(Path(model_path), lazy=True, strict=strict)
    stage = PipelineStage(model, rank, split, group)
    del model
    progress = progress or LoadProgress(rank)
    progress.begin(len(stage.layers), stage.parameter_bytes())  # sizes of lazy arrays
    tree = stage.parameters()
    for layer in tree.pop("layers"):
        mx.eval(layer)
        progress.advance(sum(a.nbytes for _, a in _flatten(layer)))
    mx.eval(tree)  # the embedding or the norm and head
    progress.advance(sum(a.nbytes for _, a in _flatten(tree)), layers=0)
    log.info(
        "loaded layers %d-%d%s%s: %.1f MB",
        stage.layer_range.start,
        stage.layer_range.stop - 1,
        " + embedding" if stage.is_first else "",
        " + norm/head" if stage.is_last else "",
        stage.parameter_bytes() / 1e6,
    )
    return stage, config
