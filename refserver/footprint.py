"""What a model needs in memory, layer by layer, read from its safetensors headers.

Only config.json, model.safetensors.index.json and each weight file's header are read
(a header is the file's first few kilobytes): never the weights. A Hugging Face repo
id is read the same way through the Hub's metadata API.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I32": 4, "U32": 4, "I8": 1, "U8": 1}


class FootprintError(ValueError):
    """The model's files cannot be read as a MiniMax model; the message says which."""


@dataclass(frozen=True)
class Footprint:
    """Bytes a model's parts take, as stored (mlx_lm keeps them so in memory).

    layer_bytes: each decoder layer, in order. embedding_bytes: the first stage's
    (rank N-1). head_bytes: the final norm and head, on the last stage (rank 0), with
    the embedding when the head is tied to it. kv_bytes_per_token: one token's keys
    and values in one layer (2 × KV heads × head_dim × activation bytes).
    """

    layer_bytes: tuple[int, ...]
    embedding_bytes: int
    head_bytes: int
    kv_bytes_per_token: int

    @property
    def num_layers(self) -> int:
        return len(self.layer_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(self.layer_bytes) + self.embedding_bytes + self.head_bytes


def read_footprint(model: str) -> Footprint:
    """The footprint of a local model directory or a Hugging Face repo id."""
    if Path(model).is_dir():
        config = json.loads((Path(model) / "config.json").read_text())
        tensors = _local_tensors(Path(model))
    else:
        config, tensors = _hub_config_and_tensors(model)
    return footprint_of(config, tensors)


def footprint_of(config: dict, tensors: Iterable[tuple[str, str, int]]) -> Footprint:
    """The footprint from config.json and (name, dtype, bytes) of every tensor."""
    layers = config["num_hidden_layers"]
    layer_bytes = [0] * layers
    embedding = head = 0
    activation = None
    for name, dtype, size in tensors:
        match = _LAYER.search(name)
        if match is not None:
            index = int(match.group(1))
            if index < layers:  # later ones (multi-token prediction) are not loaded
                layer_bytes[index] += size
            if name.endswith("layers.0.input_layernorm.weight"):
                activation = dtype  # hidden states take the norms' dtype, as the stages do
        elif "embed_tokens" in name:
            embedding += size
        else:
            head += size
    if not all(layer_bytes):
        missing = [i for i, size in enumerate(layer_bytes) if not size]
        raise FootprintError(f"no weights for layers {missing[:5]} (of {layers})")
    if config.get("tie_word_embeddings"):
        head += embedding  # rank 0's head is the embedding matrix
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads", heads)
    dtype_bytes = _DTYPE_BYTES.get(activation or "", 2)
    return Footprint(tuple(layer_bytes), embedding, head, 2 * kv_heads * head_dim * dtype_bytes)


def _local_tensors(model: Path) -> list[tuple[str, str, int]]:
    index = model / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(path.name for path in model.glob("*.safetensors"))
    if not files:
        raise FootprintError(f"{model}: no safetensors weights")
    tensors = []
    for file in files:
        tensors.extend(_header_tensors(model / file))
    return tensors


def _header_tensors(path: Path) -> list[tuple[str, str, int]]:
    """(name, dtype, bytes) of each tensor in a safetensors file, from its header only."""
    with path.open("rb") as handle:
        try:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        except (struct.error, ValueError) as exc:
            raise FootprintError(f"{path}: not a safetensors file ({exc})") from None
    return [
        (name, info["dtype"], info["data_offsets"][1] - info["data_offsets"][0])
        for name, info in header.items()
        if name != "__metadata__"
    ]


def _hub_config_and_tensors(repo: str) -> tuple[dict, list[tuple[str, str, int]]]:
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    config = json.loads(Path(hf_hub_download(repo, "config.json")).read_text())
    metadata = get_safetensors_metadata(repo)
    tensors = []
    for file in metadata.files_metadata.values():
        for name, info in file.tensors.items():
            tensors.append((name, info.dtype, info.data_offsets[1] - info.data_offsets[0]))
    return config, tensors
