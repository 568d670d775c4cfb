"""A snapshot of the cluster for /metrics and the status page, read in an HTTP thread.

It only reads what the engine keeps anyway (the scheduler's queues, the KV ledger,
each rank's latest heartbeat); the engine loop does nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interface import Health
from .rank_stats import own_stats

if TYPE_CHECKING:
    from .leader import PipelineEngine


def cluster_status(engine: PipelineEngine) -> dict:
    """Health, requests, KV and one entry per rank (rank 0 first); JSON-ready."""
    health = engine.health()
    scheduler = engine.scheduler
    kv = engine.kv_status()
    return {
        "ok": health.ok,
        "reason": health.reason,
        "requests": {
            # Admitted: decoding, or being prefilled.
            "running": scheduler.running() + len(scheduler.prefilling),
            "waiting": len(scheduler.waiting),
        },
        "kv": kv,
        "ranks": [_rank(engine, rank, kv) for rank in range(engine.cluster.world_size)],
    }


def health_status(health: Health) -> dict:
    """The snapshot of an engine with no cluster to read yet: its health alone."""
    return {
        "ok": health.ok,
        "reason": health.reason,
        "requests": {"running": 0, "waiting": 0},
        "kv": health.kv,
        "ranks": [],
    }


def _rank(engine: PipelineEngine, rank: int, kv: dict | None) -> dict:
    cluster = engine.cluster
    layers = cluster.split.layer_range(rank)
    if rank == 0:
        stats = own_stats(engine.watchdog, engine.executor.ring_wait)()
    else:
        stats = engine.reports.stats(rank)
    budget = (kv or {}).get("ranks", {}).get(rank)
    age = None if rank == 0 else engine.reports.heartbeat_age(rank)  # rank 0 listens
    return {
        "rank": rank,
        "host": _host(cluster.config.hosts, rank),
        "layers": [layers.start, layers.stop - 1],
        "embedding": cluster.split.is_first_stage(rank),
        "head": cluster.split.is_last_stage(rank),
        "memory_bytes": stats.get("memory_bytes"),
        "cache_bytes": stats.get("cache_bytes"),
        "kv_budget_bytes": budget["budget_bytes"] if budget else None,
        "kv_used_bytes": kv["used_tokens"] * budget["bytes_per_token"] if budget else None,
        "steps": stats.get("steps", 0),
        "step_seconds": stats.get("step_seconds", 0.0),
        "ring_wait_seconds": stats.get("ring_wait_seconds", 0.0),
        "heartbeat_age_seconds": age,
        # Rank 0 answers this very read; a peer is alive while its heartbeats come in time.
        "alive": age is None or age < cluster.config.heartbeat_timeout,
    }


def _host(hosts: tuple[tuple[str, ...], ...], rank: int) -> str:
    """The rank's first ring address without its port ("localhost" on one rank)."""
    if not hosts:
        return "localhost"
    return hosts[rank][0].rsplit(":", 1)[0]
