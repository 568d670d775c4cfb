"""The servers a benchmark measures: refserver on 1 and on N ranks, and the optional peers.

Each target is started on free loopback ports, warmed up with one request and torn down
(every rank) when its benchmarks are done, so only one target's ranks exist at a time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from streams import chat_stream
from workload import chat_body, short_prompt

from simcluster.launch import free_ports
from simcluster.serve import ServerCluster

# A real model on a Mac may take minutes to load (or to download, for a repo id).
START_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Deployment:
    """Where the benchmarks run: the model, the N-rank pipeline's split, or a server's URL."""

    model: str
    split: str | None
    url: str | None


class TargetSpec(NamedTuple):
    """Which server to start (`refserver`, `mlx_lm.server`, or `url`) on how many ranks."""

    kind: str
    world_size: int = 1

    @property
    def name(self) -> str:
        if self.kind == "refserver":
            return f"refserver-{self.world_size}"
        if self.kind == "mlx_lm.server" and self.world_size > 1:
            return f"mlx_lm.server-tp-{self.world_size}"
        return self.kind


@dataclass(frozen=True)
class Target:
    """A running server: its OpenAI base URL and the pids of its ranks (none if remote)."""

    name: str
    base_url: str
    pids: tuple[int, ...] = ()


def target_specs(ranks: int, peers: bool, url: str | None) -> list[TargetSpec]:
    """The targets to benchmark, in the order they are started."""
    if url:
        return [TargetSpec("url")]
    specs = [TargetSpec("refserver", 1), TargetSpec("refserver", ranks)]
    if peers:
        specs += [TargetSpec("mlx_lm.server"), TargetSpec("mlx_lm.server", ranks)]
    return list(dict.fromkeys(specs))  # with 1 rank, each kind once


@contextlib.contextmanager
def running(spec: TargetSpec, deployment: Deployment) -> Iterator[Target]:
    """Start the target `spec`, warm it up, yield it, stop every rank."""
    if spec.kind == "url":
        yield Target(spec.name, deployment.url.rstrip("/"))
        return
    cluster = _cluster(spec, deployment)
    cluster.start(timeout=START_TIMEOUT_SECONDS)
    try:
        pids = tuple(process.pid for process in cluster.ranks.processes)
        target = Target(spec.name, cluster.base_url, pids)
        chat_stream(target.base_url, chat_body(short_prompt(), 4, {}))  # first call allocates
        yield target
    finally:
        cluster.ranks.stop()


def _cluster(spec: TargetSpec, deployment: Deployment) -> ServerCluster:
    split = deployment.split if spec.world_size > 1 else None
    if spec.kind == "refserver":
        return ServerCluster(spec.world_size, deployment.model, split, sink=_drop)
    # mlx_lm.server on one rank, or tensor-parallel when its ranks form a ring group.
    port = free_ports(1)[0]
    command = [sys.executable, "-m", "mlx_lm.server", "--model", deployment.model]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return ServerCluster(
        spec.world_size,
        deployment.model,
        port=port,
        sink=_drop,
        rank_command=lambda _rank, _refserver_command: command,
    )


def _drop(_line: str) -> None:
    """Rank output is not shown: a failed rank's first ERROR line is in RankFailed."""
