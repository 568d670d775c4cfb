"""Tiny MiniMax-shaped models with random weights, built offline and loadable by `mlx_lm.load`.

Weights are float32 (or quantized): MLX's CPU build runs the MoE `gather_mm` only on
float32 or quantized weights, so bf16/fp16 experts fail there.
"""

import contextlib
import dataclasses
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.minimax import Model, ModelArgs
from mlx_lm.utils import quantize_model, save_config, save_model

from simcluster.tokenizer import BOS, EOS, save_tokenizer, train_tokenizer

QUANT_GROUP_SIZE = 64
QUANT_BITS = (2, 3, 4, 5, 6, 8)


class TinyModelError(ValueError):
    """A model shape or build option that cannot be built."""


@dataclass(frozen=True)
class Shape:
    """The dimensions of a MiniMax-shaped model."""

    layers: int
    hidden: int
    experts: int
    intermediate: int
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    rotary_dim: int = 8
    experts_per_token: int = 2
    vocab: int = 512
    max_positions: int = 4096

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise TinyModelError(f"{field.name} must be >= 1, got {getattr(self, field.name)}")
        if self.heads % self.kv_heads:
            raise TinyModelError(f"heads ({self.heads}) must be a multiple of kv_heads")
        if not 1 <= self.experts_per_token <= self.experts:
            raise TinyModelError(
                f"experts must be >= experts_per_token ({self.experts_per_token}), "
                f"got {self.experts}"
            )

    def config(self) -> dict:
        """The `config.json` contents for mlx_lm's `minimax` model."""
        return {
            "architectures": ["MiniMaxM2ForCausalLM"],
            "model_type": "minimax",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "rotary_dim": self.rotary_dim,
            "max_position_embeddings": self.max_positions,
            "num_experts_per_tok": self.experts_per_token,
            "num_local_experts": self.experts,
            "shared_intermediate_size": 0,
            "num_hidden_layers": self.layers,
            "rms_norm_eps": 1e-6,
            "rope_theta": 5000000.0,
            "vocab_size": self.vocab,
            "tie_word_embeddings": False,
            "scoring_func": "sigmoid",
            "use_qk_norm": True,
            "use_routing_bias": True,
            "torch_dtype": "float32",
        }

    @property
    def num_parameters(self) -> int:
        """Parameter count of the unquantized model."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (2 * q + 2 * kv) + q + kv
        moe = self.experts * (self.hidden + 3 * self.hidden * self.intermediate + 1)
        layer = attention + moe + 2 * self.hidden
        return self.layers * layer + 2 * self.vocab * self.hidden + self.hidden


PRESETS = {
    "tiny": Shape(layers=4, hidden=64, experts=4, intermediate=128),
    "medium": Shape(
        layers=8,
        hidden=512,
        experts=8,
        intermediate=960,
        heads=8,
        kv_heads=4,
        head_dim=64,
        rotary_dim=32,
        max_positions=8192,
    ),
}


def preset_shape(
    preset: str = "tiny",
    *,
    layers: int | None = None,
    hidden: int | None = None,
    experts: int | None = None,
) -> Shape:
    """The shape of `preset`, with any of `layers`, `hidden`, `experts` overridden."""
    if preset not in PRESETS:
        raise TinyModelError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    overrides = {"layers": layers, "hidden": hidden, "experts": experts}
    return dataclasses.replace(
        PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}
    )


# q_norm/k_norm weights of 3 sharpen attention (logits ~9x larger), so that each position
# attends to a few others rather than to a blur of the whole context.
QK_NORM_WEIGHT = 3.0


def _init(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """The (mean, std) that `random_weights` draws the tensor `name` from."""
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return QK_NORM_WEIGHT, 0.0
    if name.endswith("norm.weight"):
        return 1.0, 0.0
    if name.endswith("embed_tokens.weight"):
        return 0.0, 1.0
    if name.endswith("e_score_correction_bias"):
        return 0.0, 0.1
    return 0.0, float(shape[-1]) ** -0.5


def random_weights(model: Model, seed: int) -> dict[str, mx.array]:
    """Seeded float32 weights for `model`, from one numpy generator per tensor name.

    With mlx's default init, embeddings are far smaller than the layer outputs and greedy
    output collapses to one repeated token. Unit-scale embeddings, unit-gain linear layers
    and sharp attention make the next token depend on the whole context, so greedy output
    stays diverse.
    """
    weights = {}
    for name, value in tree_flatten(model.parameters()):
        mean, std = _init(name, value.shape)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        array = rng.standard_normal(value.shape, dtype=np.float32)
        array *= np.float32(std)
        array += np.float32(mean)
        weights[name] = mx.array(array)
    return weights


def build_tiny_model(
    out_dir,
    *,
    preset: str = "tiny",
    layers: int | None = None,
    hidden: int | None = None,
    experts: int | None = None,
    seed: int = 0,
    quantize_bits: int | None = None,
) -> Path:
    """Write a MiniMax-shaped model directory that `mlx_lm.load(out_dir)` loads offline.

    Writes `config.json`, `model.safetensors` with its `model.safetensors.index.json`,
    `tokenizer.json` and `tokenizer_config.json`. The same arguments give byte-identical
    files. `quantize_bits` quantizes with mlx_lm's own utilities (group size 64; the MoE
    router at 8 bits, as MiniMax's `quant_predicate` asks).
    """
    shape = preset_shape(preset, layers=layers, hidden=hidden, experts=experts)
    _check_options(seed, quantize_bits, shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(shape.vocab)
    config = shape.config()
    config["bos_token_id"] = tokenizer.token_to_id(BOS)
    config["eos_token_id"] = tokenizer.token_to_id(EOS)

    model = Model(ModelArgs.from_dict(config))
    model.update(tree_unflatten(list(random_weights(model, seed).items())))
    if quantize_bits is not None:
        # quantize_model prints a bits-per-weight line we do not want in our output.
        with contextlib.redirect_stdout(io.StringIO()):
            model, config = quantize_model(model, config, QUANT_GROUP_SIZE, quantize_bits)

    save_model(out, model)
    save_config(config, out / "config.json")
    save_tokenizer(tokenizer, out, shape.max_positions)
    return out


def _check_options(seed: int, bits: int | None, shape: Shape) -> None:
    if seed < 0:
        raise TinyModelError(f"seed must be >= 0, got {seed}")
    if bits is None:
        return
    if bits not in QUANT_BITS:
        raise TinyModelError(f"quantize_bits must be one of {QUANT_BITS}, got {bits}")
    dims = {"hidden": shape.hidden, "intermediate": shape.intermediate}
    dims["heads * head_dim"] = shape.heads * shape.head_dim
    for name, dim in dims.items():
        if dim % QUANT_GROUP_SIZE:
            raise TinyModelError(
                f"quantizing needs {name} a multiple of {QUANT_GROUP_SIZE}, got {dim}"
            )
