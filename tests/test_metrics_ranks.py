"""/metrics, /status, the request log and --chat-template-args on 2 real ranks."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rank_helpers import Logs, client, wait_until

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

NO_THINKING = json.dumps({"enable_thinking": False})


@pytest.fixture(scope="module")
def logs():
    return Logs()


@pytest.fixture(scope="module")
def cluster(tiny_model, logs):
    args = ("--chat-template-args", NO_THINKING)
    with ServerCluster(2, tiny_model, extra_args=args, sink=logs) as cluster:
        yield cluster


def samples(cluster) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, *sorted labels): value}."""
    with urllib.request.urlopen(f"{cluster.root_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def test_counters_match_a_known_set_of_requests(cluster, logs):
    before = samples(cluster)
    api = client(cluster)
    usages = []
    for max_tokens in (5, 7, 24, 24):  # the repeat reuses the prefix cache
        reply = api.completions.create(
            model="default_model", prompt="Once upon a time", max_tokens=max_tokens, temperature=0
        )
        usages.append(reply.usage)
    stream = api.chat.completions.create(
        model="default_model",
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages.append([chunk for chunk in stream][-1].usage)

    after = samples(cluster)

    def grew(name: str, **labels) -> float:
        key = (name, *sorted(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("refserver_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert grew("refserver_generation_tokens_total") == sum(u.completion_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages)
    assert cached > 0 and grew("refserver_prompt_cached_tokens_total") == cached
    route = "/v1/completions"
    assert grew("refserver_requests_total", route=route, status="200") == 4
    assert grew("refserver_requests_total", route="/v1/chat/completions", status="200") == 1
    assert grew("refserver_request_success_total", finished_reason="length") == 5
    assert grew("refserver_time_to_first_token_seconds_count") == 5
    assert grew("refserver_request_queue_time_seconds_count") == 5
    assert after[("refserver_num_requests_running",)] == 0
    assert after[("refserver_kv_capacity_tokens",)] > 0
    first = usages[0]
    line = f"{route}: length; prompt {first.prompt_tokens} tokens (0 cached), generated 5;"
    assert logs.wait_for(line, timeout=5)
    request_lines = [line for line in logs.text(0).splitlines() if "tokens/s" in line]
    assert request_lines and not any("Once upon" in line for line in request_lines)


def test_every_rank_reports_steps_memory_kv_and_heartbeats(cluster):
    client(cluster).completions.create(model="default_model", prompt="Hello", max_tokens=8)

    def rank_steps() -> tuple[float, float]:
        found = samples(cluster)
        return tuple(found[("refserver_rank_steps_total", ("rank", r))] for r in "01")

    # Every rank runs every item: once rank 1's next heartbeat arrives, the counts agree.
    assert wait_until(lambda: len(set(rank_steps())) == 1, timeout=5)
    found = samples(cluster)
    for rank in "01":
        label = ("rank", rank)
        assert found[("refserver_rank_steps_total", label)] > 0
        step_seconds = found[("refserver_rank_step_seconds_total", label)]
        assert step_seconds > 0
        # Rank 0 waits for rank 1's hidden states, rank 1 for rank 0's tokens.
        assert 0 < found[("refserver_rank_ring_wait_seconds_total", label)] < step_seconds
        assert found[("refserver_rank_memory_bytes", label)] > 0
        assert found[("refserver_rank_kv_budget_bytes", label)] > 0
        assert ("refserver_rank_kv_used_bytes", label) in found
    assert 0 <= found[("refserver_rank_heartbeat_age_seconds", ("rank", "1"))] < 2
    assert ("refserver_rank_heartbeat_age_seconds", ("rank", "0")) not in found


def test_every_rank_gives_its_freed_buffers_back_when_idle(cluster):
    """A prompt leaves MLX's buffer cache full of its activations; once a rank has had
    no work for a moment it hands them back to the system (heartbeats carry the figure)."""
    prompt = "The harbour at dawn, the boats and their crews. " * 20
    client(cluster).completions.create(model="default_model", prompt=prompt, max_tokens=8)

    def cached() -> list[float]:
        found = samples(cluster)
        return [found.get(("refserver_rank_cache_bytes", ("rank", r))) for r in "01"]

    assert wait_until(lambda: cached() == [0, 0], timeout=10), cached()


def test_status_json_names_each_rank_with_its_layers(cluster):
    snapshot = cluster.status()
    assert snapshot["ok"] is True and snapshot["model"]
    rank0, rank1 = snapshot["ranks"]
    assert (rank0["rank"], rank0["layers"], rank0["head"], rank0["embedding"]) == (
        0,
        [2, 3],
        True,
        False,
    )
    assert (rank1["rank"], rank1["layers"], rank1["head"], rank1["embedding"]) == (
        1,
        [0, 1],
        False,
        True,
    )
    assert rank0["host"] == rank1["host"] == "127.0.0.1"
    assert rank0["alive"] and rank1["alive"] and rank1["heartbeat_age_seconds"] < 2
    assert rank0["kv_budget_bytes"] > 0 and rank1["memory_bytes"] > 0


def test_chat_template_args_are_the_default_a_request_overrides(cluster):
    api = client(cluster)

    def ask(**extra):
        return api.chat.completions.create(
            model="default_model",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            max_tokens=12,
            temperature=0,
            **extra,
        )

    default = ask()
    thinking = ask(extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    # The template opens "<think>\n" only when thinking: two tokens more in the prompt.
    assert thinking.usage.prompt_tokens == default.usage.prompt_tokens + 2
    assert not default.choices[0].message.model_extra.get("reasoning_content")
    assert default.choices[0].message.content
    assert thinking.choices[0].message.model_extra.get("reasoning_content")
