"""Start-up of one rank: find the model, agree with the peers, join the ring, load.

Order matters for bounded failure: the split is checked before anything else, the
control plane handshake (plain TCP with timeouts) runs before the MLX ring, whose
init has no timeout of its own and is therefore guarded by a watchdog.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from . import control
from .config import ClusterConfig
from .control import Channel, ControlError, Hello
from .engine.kv_budget import RankKv, derive_budget
from .engine.mlx_memory import wire_working_set
from .fingerprint import cluster_facts, compare_facts
from .load_progress import LoadProgress, StartupBoard, reporting
from .pipeline import PipelineStage, load_stage
from .split import PipelineSplit, SplitError

log = logging.getLogger(__name__)

METADATA_PATTERNS = ["*.json", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
# How long a rank that failed before the handshake waits to tell rank 0 why.
REPORT_FAILURE_TIMEOUT = 10.0


class StartupError(RuntimeError):
    """This rank cannot join the cluster; the message says why."""


@dataclass
class Cluster:
    """A started rank: its place, its peers and its loaded stage."""

    config: ClusterConfig
    split: PipelineSplit
    model_path: Path
    model_config: dict
    stage: PipelineStage
    group: object | None = None
    # Rank 0: a channel per peer rank. Other ranks: {0: channel to rank 0}.
    channels: dict[int, Channel] = field(default_factory=dict)
    kv: RankKv | None = None  # this rank's KV budget
    # Rank 0: every rank's loading progress, and each peer's first message after it.
    startup: StartupBoard | None = None

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def world_size(self) -> int:
        return self.config.world_size


def start(config: ClusterConfig, startup: StartupBoard | None = None) -> Cluster:
    """Bring this rank up; raise StartupError with an actionable message on failure.

    `startup` (rank 0) receives every rank's loading progress as it comes.
    """
    try:
        model_path, model_config, split = _resolve(config)
        weight_files = _ensure_weights(config.model, model_path, split.layer_range(config.rank))
        facts = _facts(model_path, split, weight_files)
    except (SplitError, StartupError, OSError, ValueError) as exc:
        report_failure(config, str(exc))
        raise StartupError(str(exc)) from exc
    channels: dict[int, Channel] = {}
    group = None
    if config.world_size > 1:
        channels = _handshake(config, facts)
        group = _init_ring(config)
    wire_working_set()
    log.info("loading layers %s", _describe(split, config.rank))
    progress, send = LoadProgress(config.rank), None
    if config.rank == 0:
        startup = startup or StartupBoard()
        startup.track(progress)
        for rank, channel in channels.items():
            startup.watch(rank, channel, config.load_timeout)
    elif channels:
        send = channels[0].send  # rank 0 shows every rank's progress
    try:
        with reporting(progress, send):
            strict = weight_files is None
            stage, _ = load_stage(model_path, config.rank, split, group, strict, progress)
    except Exception as exc:
        error = f"rank {config.rank} could not load the model: {type(exc).__name__}: {exc}"
        kind = "failed" if config.rank else "shutdown"
        for channel in channels.values():
            try:
                channel.send({"type": kind, "error": error})
            except ControlError:
                pass
        raise StartupError(error) from exc
    kv = _kv_budget(config, stage)
    return Cluster(config, split, model_path, model_config, stage, group, channels, kv, startup)


def _kv_budget(config: ClusterConfig, stage) -> RankKv:
    """--kv-budget, or what this rank's memory leaves after its weights; logged."""
    if config.kv_budget_bytes is not None:
        budget, source = config.kv_budget_bytes, "--kv-budget"
    else:
        budget, source = derive_budget()
    kv = RankKv(budget, stage.kv_bytes_per_token)
    log.info(
        "KV budget %.2f GB (%s): %d tokens at %d bytes each for this rank's layers",
        budget / 1e9,
        source,
        kv.capacity_tokens,
        kv.bytes_per_token,
    )
    return kv


def _resolve(config: ClusterConfig) -> tuple[Path, dict, PipelineSplit]:
    model_path = metadata_path(config.model)
    config_file = model_path / "config.json"
    if not config_file.exists():
        raise StartupError(f"--model {config.model!r}: no config.json in {model_path}")
    model_config = json.loads(config_file.read_text())
    if model_config.get("model_type") != "minimax":
        raise StartupError(
            f"--model {config.model!r}: model_type is {model_config.get('model_type')!r}; "
            "refserver pipelines MiniMax models (model_type 'minimax')"
        )
    split = PipelineSplit.resolve(
        config.split_text, config.world_size, model_config["num_hidden_layers"]
    )
    return model_path, model_config, split


def _facts(model_path: Path, split: PipelineSplit, weight_files: list[str] | None) -> dict:
    try:
        return cluster_facts(model_path, str(split), weight_files)
    except (OSError, ValueError, struct.error) as exc:
        raise StartupError(
            f"cannot read the model weights in {model_path} ({type(exc).__name__}: {exc}); "
            "is a safetensors file truncated or corrupt?"
        ) from exc


def metadata_path(model: str) -> Path:
    """A local directory as is; a Hugging Face repo id: config and tokenizer only."""
    if Path(model).exists():
        return Path(model)
    if _looks_like_path(model):
        raise StartupError(f"--model {model!r}: no such model directory")
    from mlx_lm.utils import _download

    return _download(model, allow_patterns=METADATA_PATTERNS)


def _looks_like_path(model: str) -> bool:
    """Hub ids are "owner/name"; anything else that does not exist is a mistyped path."""
    return model.startswith(("/", ".", "~")) or model.count("/") != 1


def _ensure_weights(model: str, model_path: Path, layers: range) -> list[str] | None:
    """Download only the weight files this rank's layers need (hub repos only).

    Returns the files fetched, or None for a local directory (all files present).
    """
    if Path(model).exists():
        return None
    from mlx_lm.utils import _download

    index = json.loads((model_path / "model.safetensors.index.json").read_text())["weight_map"]
    needed = set()
    for name, file in index.items():
        match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if match is None or int(match.group(1)) in layers:
            needed.add(file)
    _download(model, allow_patterns=sorted(needed))
    return sorted(needed)


def _handshake(config: ClusterConfig, facts: dict) -> dict[int, Channel]:
    address = config.leader_control_address()
    timeout = config.connect_timeout
    if config.rank != 0:
        hello = Hello(config.rank, facts)
        try:
            return {0: control.connect_to_leader(address, hello, config.cluster_token, timeout)}
        except ControlError as exc:
            raise StartupError(str(exc)) from exc

    def check(rank, their_facts):
        return compare_facts(facts, their_facts, rank)

    try:
        listener = control.listen(address[0], address[1])
    except ControlError as exc:
        raise StartupError(str(exc)) from exc
    try:
        return control.accept_peers(
            listener, config.world_size, config.peer_ips(), config.cluster_token, timeout, check
        )
    except ControlError as exc:
        raise StartupError(str(exc)) from exc
    finally:
        # Strangers arriving later find nothing listening.
        listener.close()


def report_failure(config: ClusterConfig, error: str) -> None:
    """Tell rank 0 why this rank cannot start, so every rank fails fast with the reason."""
    if config.world_size == 1:
        return
    timeout = min(config.connect_timeout, REPORT_FAILURE_TIMEOUT)
    facts = {"error": error}
    try:
        if config.rank == 0:
            listener = control.listen(*config.leader_control_address())
            try:
                control.accept_peers(
                    listener,
                    config.world_size,
                    config.peer_ips(),
                    config.cluster_token,
                    timeout,
                    lambda rank, _: f"rank 0 failed to start: {error}",
                )
            finally:
                listener.close()
        else:
            hello = Hello(config.rank, facts)
            control.connect_to_leader(
                config.leader_control_address(), hello, config.cluster_token, timeout
            )
    except ControlError:
        pass


def _init_ring(config: ClusterConfig):
    """mx.distributed.init for the ring, ended by a watchdog if a peer never connects."""

    def give_up():
        log.error(
            "the MLX ring did not connect within %g s (check the hostfile addresses "
            "and that every rank was started); exiting",
            config.connect_timeout,
        )
        os._exit(3)

    watchdog = threading.Timer(config.connect_timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        group = mx.distributed.init(backend="ring", strict=True)
    except RuntimeError as exc:  # e.g. "[ring] Couldn't bind socket (error: 98)"
        raise StartupError(
            f"the MLX ring could not start on {config.hosts[config.rank][0]}: {exc}"
        ) from exc
    finally:
        watchdog.cancel()
    if group.size() != config.world_size or group.rank() != config.rank:
        raise StartupError(
            f"the ring says rank {group.rank()} of {group.size()}, "
            f"the hostfile says rank {config.rank} of {config.world_size}"
        )
    return group


def _describe(split: PipelineSplit, rank: int) -> str:
    layers = split.layer_range(rank)
    return f"{layers.start}-{layers.stop - 1} of {split.num_layers} (split {split})"
