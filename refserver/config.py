"""Configuration: built once from the command line and the environment, then passed down.

This is the only module that reads os.environ (MLX itself reads MLX_RANK and
MLX_HOSTFILE again inside mx.distributed.init).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.chunking import DEFAULT_PREFILL_CHUNK, ChunkPolicy
from .split import SPLIT_VARIABLE

# HTTP threads beyond the open requests the engine admits (--max-batch + --max-queue).
SPARE_HTTP_THREADS = 16


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where this rank sits and how the ranks find and watch each other."""

    model: str
    rank: int = 0
    # One address list per rank, as in MLX's ring hostfile ("ip:port" strings).
    hosts: tuple[tuple[str, ...], ...] = ()
    split_text: str | None = None
    control_port: int | None = None
    connect_timeout: float = 60.0
    cluster_token: str = ""
    # Heartbeats come from threads of their own, which run while the main thread is
    # inside an MLX op (MLX releases the GIL there), so a long step never delays them:
    # the timeout bounds only how long a stopped rank goes unnoticed.
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 2.0
    # The last resort, for a rank that answers heartbeats but whose ring is stuck: far
    # above any real step (a prefill chunk on the slowest rank, times the ranks).
    step_timeout: float = 120.0
    load_timeout: float = 1800.0
    # This rank's KV memory budget (--kv-budget); None: derived from its memory.
    kv_budget_bytes: int | None = None
    # How long a rank told to stop waits for rank 0's drain before exiting anyway.
    drain_grace: float = 40.0

    def __post_init__(self):
        if self.world_size > 1 and not 0 <= self.rank < self.world_size:
            raise ConfigError(f"MLX_RANK={self.rank} but the hostfile has {self.world_size} ranks")
        timeouts = (
            "connect_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "step_timeout",
            "load_timeout",
        )
        for name in timeouts:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"--heartbeat-timeout must be at least two heartbeat intervals "
                f"({2 * self.heartbeat_interval:g} s), got {self.heartbeat_timeout:g}"
            )

    @property
    def world_size(self) -> int:
        return max(1, len(self.hosts))

    def leader_control_address(self) -> tuple[str, int]:
        """Rank 0's control port: --control-port, or one past the highest ring port."""
        leader_ip = self.hosts[0][0].rsplit(":", 1)[0]
        if self.control_port is not None:
            return leader_ip, self.control_port
        ports = [int(a.rsplit(":", 1)[1]) for addresses in self.hosts for a in addresses]
        return leader_ip, max(ports) + 1

    def peer_ips(self) -> set[str]:
        return {a.rsplit(":", 1)[0] for addresses in self.hosts for a in addresses}

    @classmethod
    def from_env(cls, model: str, env: Mapping[str, str] | None = None, **overrides):
        """Rank, hostfile, split and token from the environment mlx.launch sets up."""
        env = os.environ if env is None else env
        hosts = read_hostfile(env.get("MLX_HOSTFILE"))
        rank_text = env.get("MLX_RANK", "0")
        try:
            rank = int(rank_text)
        except ValueError:
            raise ConfigError(f"MLX_RANK must be an integer, got {rank_text!r}") from None
        values = dict(
            model=model,
            rank=rank,
            hosts=hosts,
            split_text=env.get(SPLIT_VARIABLE),
            cluster_token=env.get("REFSERVER_CLUSTER_TOKEN", ""),
        )
        if "REFSERVER_CONTROL_PORT" in env:
            values["control_port"] = _int_setting(env, "REFSERVER_CONTROL_PORT")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def read_hostfile(path: str | None) -> tuple[tuple[str, ...], ...]:
    """Read MLX's ring hostfile: a JSON list with one list of "ip:port" per rank."""
    if not path:
        return ()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"MLX_HOSTFILE={path!r} cannot be read as JSON: {exc}") from exc
    if data == "" or data is None:
        return ()
    if not isinstance(data, list) or not all(
        isinstance(r, list) and r and all(isinstance(a, str) and ":" in a for a in r) for r in data
    ):
        raise ConfigError(
            f'MLX_HOSTFILE={path!r} must hold a list of ["ip:port", ...] lists, one per rank'
        )
    return tuple(tuple(addresses) for addresses in data)


def _int_setting(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {env[name]!r}") from None


@dataclass(frozen=True)
class ServerConfig:
    """Everything `refserver` needs: the cluster, sampling defaults and API limits."""

    cluster: ClusterConfig
    host: str = "127.0.0.1"
    port: int = 8080
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 4096
    max_tokens_cap: int = 32768
    max_queue: int = 64
    max_batch: int = 8
    max_body_bytes: int = 16 * 1024 * 1024
    # Seconds a client connection may stay silent before a request is complete.
    client_timeout: int = 60
    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    drain_seconds: float = 30.0
    served_model_name: str | None = None
    prefill_chunk: ChunkPolicy = ChunkPolicy.parse(DEFAULT_PREFILL_CHUNK)
    # Prompt tokens the prefix cache may keep (0: no prefix cache).
    prefix_cache_tokens: int = 65536
    # Defaults of the chat template's keyword arguments (--chat-template-args).
    chat_template_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def http_threads(self) -> int:
        """Every request the engine holds open keeps a thread; the spare ones answer
        /health and turn the next requests away with 429 at any load."""
        return self.max_batch + self.max_queue + SPARE_HTTP_THREADS

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if self.max_tokens < 1 or self.max_tokens > self.max_tokens_cap:
            raise ConfigError(
                f"--max-tokens must be in 1..{self.max_tokens_cap}, got {self.max_tokens}"
            )
        if self.max_queue < 1:
            raise ConfigError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_body_bytes < 1:
            raise ConfigError(f"--max-body-bytes must be >= 1, got {self.max_body_bytes}")
        if self.client_timeout < 1:
            raise ConfigError(f"--client-timeout must be >= 1, got {self.client_timeout}")
        if self.drain_seconds < 0:
            raise ConfigError(f"--drain-seconds must be >= 0, got {self.drain_seconds}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.prefix_cache_tokens < 0:
            raise ConfigError(f"--prefix-cache must be >= 0, got {self.prefix_cache_tokens}")


def api_keys_from_env(cli_keys: list[str] | None, env: Mapping[str, str] | None = None):
    """--api-key values plus REFSERVER_API_KEY (comma-separated), without blanks."""
    env = os.environ if env is None else env
    keys = list(cli_keys or []) + env.get("REFSERVER_API_KEY", "").split(",")
    return tuple(k.strip() for k in keys if k.strip())
