"""A bounded soak on real ranks: 200 requests, 16 at a time, mixed kinds. Zero errors,
no deadlock, every greedy completion equal to single-process mlx_lm's, the ranks in step
afterwards and their memory flat."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest
from rank_helpers import Logs, assert_in_step, client, rank_pids, reference_text, rss_mb

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

REQUESTS = 200
CONCURRENCY = 16
MAX_TOKENS = 16
BOUND_SECONDS = 300
RSS_TOLERANCE_MB = 16
PROMPTS = ["Once upon a time", "The lighthouse keeper", "def fibonacci(n):", "Dear diary,"]


def one_request(api, index: int) -> str | None:
    """Request `index` of the mix; the text of greedy completions (checked later)."""
    prompt = PROMPTS[index % len(PROMPTS)]
    kind = index % 4
    if kind == 0:
        reply = api.completions.create(
            model="default_model", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        return reply.choices[0].text
    messages = [{"role": "user", "content": prompt}]
    if kind == 1:
        stream = api.chat.completions.create(
            model="default_model",
            messages=messages,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens >= 1
        return None
    reply = api.chat.completions.create(
        model="default_model",
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0.8 if kind == 2 else 0,
        seed=index,
    )
    assert reply.usage.completion_tokens >= 1
    return None


def run(api, indices) -> dict[int, str | None]:
    results = {}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = {pool.submit(one_request, api, i): i for i in indices}
        for future in as_completed(futures, timeout=BOUND_SECONDS):
            results[futures[future]] = future.result()  # re-raises a failed request
    return results


def test_soak(tiny_model):
    logs = Logs()
    with ServerCluster(2, tiny_model, sink=logs) as server:
        api = client(server, timeout=120)
        pids = rank_pids(server)
        run(api, range(100))  # warm-up: allocator pools, batch shapes
        before = [rss_mb(pid) for pid in pids]
        started = time.monotonic()
        results = run(api, range(REQUESTS))
        elapsed = time.monotonic() - started
        after = [rss_mb(pid) for pid in pids]
        assert len(results) == REQUESTS and elapsed < BOUND_SECONDS
        for index, text in results.items():
            if text is not None:
                prompt = PROMPTS[index % len(PROMPTS)]
                assert text == reference_text(tiny_model, prompt, MAX_TOKENS), index
        for rank, (b, a) in enumerate(zip(before, after, strict=True)):
            assert a - b < RSS_TOLERANCE_MB, f"rank {rank}: {b:.0f} MB -> {a:.0f} MB"
        assert server.ranks.poll_failure() is None
        assert_in_step(server, tiny_model)
    output = logs.text()
    assert " ERROR " not in output and "Traceback" not in output
    print(f"soak: {REQUESTS} requests in {elapsed:.1f} s; RSS {before} -> {after} MB")


PREFIXES = [f"Chapter {n}. The harbour at dawn, the boats and their crews. " * 3 for n in range(10)]
SUFFIXES = ["Then", "Meanwhile", "Later that day", "Nobody knew"]
SMALL_CACHE = "1024"  # tokens: a few conversations, so entries churn


def shifting_prompt(index: int) -> str:
    """The shared prefix moves on every 20 requests; within it, four endings."""
    return PREFIXES[(index // 20) % len(PREFIXES)] + SUFFIXES[index % len(SUFFIXES)]


def test_soak_with_shifting_shared_prefixes(tiny_model):
    """Greedy outputs equal mlx_lm's (the no-cache outputs) while the prefix cache hits,
    extends and evicts; memory stays flat once the cache is full."""
    args = ("--prefix-cache", SMALL_CACHE)
    with ServerCluster(2, tiny_model, extra_args=args, sink=Logs()) as server:
        api = client(server, timeout=120)
        pids = rank_pids(server)

        def complete(index: int) -> tuple[str, int]:
            reply = api.completions.create(
                model="default_model",
                prompt=shifting_prompt(index),
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
            return reply.choices[0].text, reply.usage.prompt_tokens_details.cached_tokens

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(complete, range(REQUESTS)))  # warm-up: the cache fills
            before = [rss_mb(pid) for pid in pids]
            results = list(pool.map(complete, range(REQUESTS)))
        after = [rss_mb(pid) for pid in pids]
        assert sum(cached for _, cached in results) > REQUESTS * 20  # the cache served
        for index, (text, _) in enumerate(results):
            assert text == reference_text(tiny_model, shifting_prompt(index), MAX_TOKENS), index
        for rank, (b, a) in enumerate(zip(before, after, strict=True)):
            assert a - b < RSS_TOLERANCE_MB, f"rank {rank}: {b:.0f} MB -> {a:.0f} MB"
        assert_in_step(server, tiny_model)
