"""What every rank must agree on before the ring starts: split, model and versions.

The weights fingerprint hashes each safetensors file's size, header (names, dtypes,
shapes, offsets) and a few sampled blocks of its data. Reading every byte of a
200 GB model on every start would take minutes; the header and samples catch a
different checkpoint, revision or quantization.
"""

from __future__ import annotations

import hashlib
import json
import struct
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .split import SPLIT_VARIABLE

SAMPLES_PER_FILE = 8
SAMPLE_BYTES = 64 * 1024


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def config_hash(model_path: Path) -> str:
    config = json.loads((Path(model_path) / "config.json").read_text())
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def weights_fingerprint(model_path: Path, files: list[str] | None = None) -> str:
    """Hash sizes, headers and sampled blocks of the given (default: all) weight files.

    A rank that downloaded only its own layers' files passes `files=[]`: then only
    the index (tensor names and file layout) is hashed, which every rank has.
    """
    digest = hashlib.sha256()
    index = Path(model_path) / "model.safetensors.index.json"
    if index.exists():
        digest.update(index.read_bytes())
    names = (
        files
        if files is not None
        else sorted(p.name for p in Path(model_path).glob("*.safetensors"))
    )
    for path in (Path(model_path) / name for name in names):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            digest.update(handle.read(header_size))
            data_start = 8 + header_size
            span = max(0, size - data_start - SAMPLE_BYTES)
            for index in range(SAMPLES_PER_FILE):
                handle.seek(data_start + span * index // max(1, SAMPLES_PER_FILE - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def cluster_facts(model_path: Path, split_text: str, weight_files=None) -> dict[str, str]:
    """The facts a rank reports in its hello; rank 0 compares them with its own."""
    return {
        SPLIT_VARIABLE: split_text,
        "model config": config_hash(model_path),
        "model weights": weights_fingerprint(model_path, weight_files),
        "mlx": package_version("mlx"),
        "mlx-lm": package_version("mlx-lm"),
        "refserver": package_version("refserver"),
    }


def compare_facts(mine: dict, theirs: dict, their_rank: int) -> str | None:
    """A message naming the first fact that differs (with both values), or None."""
    if "error" in theirs:
        return f"rank {their_rank} failed to start: {theirs['error']}"
    for key, value in mine.items():
        if theirs.get(key) != value:
            return (
                f"rank {their_rank} differs from rank 0 in {key}: "
                f"rank {their_rank} has {theirs.get(key)!r}, rank 0 has {value!r}"
            )
    return None
