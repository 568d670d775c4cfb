"""GET /metrics: Prometheus counters and histograms of requests, tokens and ranks.

Request metrics are taken from each request's event stream as the HTTP side reads
it (see ObservedEngine); the queue and per-rank gauges are read from the engine's
status snapshot when /metrics is scraped. The engine loop does no work for them.
Names follow vLLM's (`vllm:` → `refserver_`), so the same dashboards fit; labels
stay small: route, status, finish reason and rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds: from a cached one-token prefill on a Mac to minutes of queueing.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class ServerMetrics:
    """Every metric of one server, in a registry of its own (one per app)."""

    def __init__(self, status: Callable[[], dict | None]):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "refserver_requests",
            "HTTP requests answered, by route and status code",
            ["route", "status"],
            registry=registry,
        )
        self.finished = Counter(
            "refserver_request_success",
            "Generations finished, by finish reason (stop, length, cancelled, error)",
            ["finished_reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "refserver_prompt_tokens", "Prompt tokens of finished requests", registry=registry
        )
        self.cached_tokens = Counter(
            "refserver_prompt_cached_tokens",
            "Prompt tokens reused from the prefix cache (not recomputed)",
            registry=registry,
        )
        self.generation_tokens = Counter(
            "refserver_generation_tokens", "Tokens generated", registry=registry
        )
        self.time_to_first_token = Histogram(
            "refserver_time_to_first_token_seconds",
            "From submission to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "refserver_inter_token_latency_seconds",
            "Between consecutive generated tokens of a request",
            buckets=TOKEN_GAP_BUCKETS,
            registry=registry,
        )
        self.request_latency = Histogram(
            "refserver_e2e_request_latency_seconds",
            "From submission to the request's last event",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_time = Histogram(
            "refserver_request_queue_time_seconds",
            "Time a request waited before its prefill began",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(ClusterCollector(status))

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def totals(self) -> dict[str, float]:
        """Prompt and generated tokens so far (the status page turns them into rates)."""
        return {
            "generated_tokens": _total(self.generation_tokens),
            "prompt_tokens": _total(self.prompt_tokens),
        }


def _total(counter: Counter) -> float:
    (family,) = counter.collect()
    return next(sample.value for sample in family.samples if sample.name.endswith("_total"))


class ClusterCollector(Collector):
    """Gauges read from the engine's status snapshot at scrape time."""

    def __init__(self, status: Callable[[], dict | None]):
        self._status = status

    def collect(self):
        status = self._status()
        if status is None:
            return
        requests = status["requests"]
        yield _gauge(
            "refserver_num_requests_running",
            "Sequences being prefilled or decoded",
            requests["running"],
        )
        yield _gauge(
            "refserver_num_requests_waiting", "Sequences queued for admission", requests["waiting"]
        )
        kv = status.get("kv")
        if kv is not None:
            yield _gauge(
                "refserver_kv_capacity_tokens",
                "Tokens of KV the cluster holds (its tightest rank's budget)",
                kv["capacity_tokens"],
            )
            yield _gauge(
                "refserver_kv_used_tokens",
                "Tokens of KV reserved by running sequences and cached prefixes",
                kv["used_tokens"],
            )
            yield _gauge(
                "refserver_prefix_cache_tokens",
                "Tokens of KV kept for reuse by later prompts",
                kv["cached_prefix_tokens"],
            )
        yield from _per_rank(status["ranks"])


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


# (metric name, help, the field of a rank's status that holds its value)
_RANK_GAUGES = (
    ("refserver_rank_memory_bytes", "MLX memory in use on the rank", "memory_bytes"),
    (
        "refserver_rank_cache_bytes",
        "Freed MLX buffers the rank keeps for reuse until it goes idle",
        "cache_bytes",
    ),
    ("refserver_rank_kv_budget_bytes", "The rank's KV budget", "kv_budget_bytes"),
    ("refserver_rank_kv_used_bytes", "KV memory reserved on the rank", "kv_used_bytes"),
    (
        "refserver_rank_heartbeat_age_seconds",
        "Seconds since rank 0 last heard from the rank",
        "heartbeat_age_seconds",
    ),
)
_RANK_COUNTERS = (
    ("refserver_rank_steps", "Pipeline steps the rank ran", "steps"),
    (
        "refserver_rank_step_seconds",
        "Time in the rank's steps (its compute and its ring transfers)",
        "step_seconds",
    ),
    (
        "refserver_rank_ring_wait_seconds",
        "Time of the rank's steps spent waiting for its ring neighbour's data",
        "ring_wait_seconds",
    ),
)


def _per_rank(ranks: list[dict]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    for name, documentation, field in _RANK_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=["rank"])
        _add_ranks(family, ranks, field)
        yield family
    for name, documentation, field in _RANK_COUNTERS:
        family = CounterMetricFamily(name, documentation, labels=["rank"])
        _add_ranks(family, ranks, field)
        yield family


def _add_ranks(family, ranks: list[dict], field: str) -> None:
    for rank in ranks:
        if rank.get(field) is not None:  # not known yet (before the rank's first heartbeat)
            family.add_metric([str(rank["rank"])], rank[field])
