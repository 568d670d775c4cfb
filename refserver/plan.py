"""`refserver plan`: the MINIMAX_PIPELINE_SPLIT that fits each host's memory.

Every rank must hold its layers, the embedding (rank N-1) or the norm and head
(rank 0), the KV room asked for on its layers, and leave `headroom` of its host's
memory to the system (macOS lets the GPU wire only part of a Mac's memory). Among
the splits that fit, the slowest stage sets the pace: the plan first makes the
largest layers-per-speed share as small as it can, then keeps every rank as close to
its speed's share as that allows, the lowest ranks taking the extra layers as in an
even split. A model that fits no split is refused with the amount missing.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from .footprint import Footprint
from .sizes import format_size
from .split import SPLIT_VARIABLE

# Left to macOS and other processes by default: macOS wires about 75% of a large
# Mac's memory for the GPU unless told otherwise.
DEFAULT_HEADROOM = 0.25
_EPSILON = 1e-9


class PlanError(ValueError):
    """No split fits, or the hosts are given wrongly; the message says by how much or why."""


@dataclass(frozen=True)
class Host:
    name: str
    memory_bytes: int
    speed: float = 1.0


@dataclass(frozen=True)
class RankPlan:
    rank: int
    host: Host
    layers: range
    weights_bytes: int
    kv_bytes: int
    usable_bytes: int

    @property
    def needed_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes


@dataclass(frozen=True)
class Plan:
    ranks: tuple[RankPlan, ...]  # rank 0 first

    @property
    def split(self) -> str:
        return ",".join(str(len(rank.layers)) for rank in self.ranks)

    @property
    def kv_budget_bytes(self) -> int:
        """--kv-budget that gives every rank the KV room planned for its layers."""
        return max(rank.kv_bytes for rank in self.ranks)


class _Cluster:
    """Memory and pace of one rank holding a block of layers (rank 0: the last block)."""

    def __init__(self, footprint: Footprint, hosts: list[Host], kv_tokens: int, headroom: float):
        self.footprint = footprint
        self.hosts = hosts
        self.kv_per_layer = kv_tokens * footprint.kv_bytes_per_token
        self.headroom = headroom
        self.prefix = [0]
        for size in footprint.layer_bytes:
            self.prefix.append(self.prefix[-1] + size)

    def rank_plan(self, rank: int, layers: range) -> RankPlan:
        weights = self.prefix[layers.stop] - self.prefix[layers.start]
        if rank == len(self.hosts) - 1:
            weights += self.footprint.embedding_bytes
        if rank == 0:
            weights += self.footprint.head_bytes
        host = self.hosts[rank]
        usable = int(host.memory_bytes * (1 - self.headroom))
        return RankPlan(rank, host, layers, weights, len(layers) * self.kv_per_layer, usable)

    def overflow(self, rank: int, layers: range) -> int:
        plan = self.rank_plan(rank, layers)
        return plan.needed_bytes - plan.usable_bytes


def plan_split(
    footprint: Footprint, hosts: list[Host], kv_tokens: int, headroom: float = DEFAULT_HEADROOM
) -> Plan:
    """The balanced split that fits every host; PlanError says by how much none does."""
    if not hosts:
        raise PlanError("no hosts: give --memory or --hostfile")
    if len(hosts) > footprint.num_layers:
        raise PlanError(f"{len(hosts)} hosts but the model has {footprint.num_layers} layers")
    if not 0 <= headroom < 1:
        raise PlanError(f"--headroom must be in [0, 1), got {headroom}")
    cluster = _Cluster(footprint, hosts, kv_tokens, headroom)

    def fits(rank: int, count: int, taken: int) -> bool:
        return cluster.overflow(rank, _layers(cluster, taken, count)) <= 0

    def pace(rank: int, count: int, _taken: int) -> float:
        return count / hosts[rank].speed

    slowest, _ = _search(cluster, fits, pace, max)
    if math.isinf(slowest):
        raise PlanError(_shortfall(cluster))
    total_speed = sum(host.speed for host in hosts)
    share = [footprint.num_layers * host.speed / total_speed for host in hosts]

    def in_pace(rank: int, count: int, taken: int) -> bool:
        return fits(rank, count, taken) and pace(rank, count, taken) <= slowest + _EPSILON

    def off_share(rank: int, count: int, _taken: int) -> float:
        return abs(count - share[rank])

    _, counts = _search(cluster, in_pace, off_share, operator.add)
    return Plan(tuple(cluster.rank_plan(r, _block(cluster, r, counts)) for r in range(len(hosts))))


# (rank, its layer count, layers the lower ranks hold) -> a cost, or whether it is allowed
Cost = Callable[[int, int, int], float]


def _layers(cluster: _Cluster, taken: int, count: int) -> range:
    """The block of `count` layers below the `taken` ones the lower ranks hold."""
    stop = cluster.footprint.num_layers - taken
    return range(stop - count, stop)


def _block(cluster: _Cluster, rank: int, counts: tuple[int, ...]) -> range:
    return _layers(cluster, sum(counts[:rank]), counts[rank])


def _search(
    cluster: _Cluster, allowed: Cost, cost: Cost, combine: Callable[[float, float], float]
) -> tuple[float, tuple[int, ...]]:
    """The least total cost over splits whose every block is allowed, and that split.

    Rank 0 takes the last layers first; among equal costs the lower rank takes more.
    """
    ranks, layers = len(cluster.hosts), cluster.footprint.num_layers

    @functools.cache
    def best(rank: int, taken: int) -> tuple[float, tuple[int, ...]]:
        left = layers - taken
        if rank == ranks:
            return (0.0, ()) if left == 0 else (math.inf, ())
        found: tuple[float, tuple[int, ...]] = (math.inf, ())
        for count in range(left - (ranks - rank - 1), 0, -1):  # every later rank keeps one
            if not allowed(rank, count, taken):
                continue
            rest, counts = best(rank + 1, taken + count)
            total = combine(cost(rank, count, taken), rest)
            if total < found[0] - _EPSILON:
                found = (total, (count, *counts))
        return found

    return best(0, 0)


def _shortfall(cluster: _Cluster) -> str:
    """Why nothing fits: the split that leaves its worst rank the least short, and by how much."""

    def overflow(rank: int, count: int, taken: int) -> float:
        return cluster.overflow(rank, _layers(cluster, taken, count))

    _, counts = _search(cluster, lambda *_: True, overflow, max)
    plans = [cluster.rank_plan(r, _block(cluster, r, counts)) for r in range(len(counts))]
    worst = max(plans, key=lambda plan: plan.needed_bytes - plan.usable_bytes)
    short, size = worst.needed_bytes - worst.usable_bytes, format_size
    return (
        f"the model does not fit: even the best split ({SPLIT_VARIABLE}="
        f"{','.join(map(str, counts))}) leaves rank {worst.rank} ({worst.host.name}) "
        f"{size(short)} short: it needs {size(worst.needed_bytes)} (weights "
        f"{size(worst.weights_bytes)}, KV {size(worst.kv_bytes)}) and may use "
        f"{size(worst.usable_bytes)} of its {size(worst.host.memory_bytes)}. Add memory or "
        "hosts, or ask for less KV room (--context, --concurrency) or --headroom"
    )
