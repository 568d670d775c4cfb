"""/metrics and /status against a scripted engine: what they carry, and who may read them."""
# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)

from __future__ import annotations

import logging

import mlx.core as mx
import pytest
from api_fakes import FakeEngine, settings, tokenizer
from prometheus_client.parser import text_string_to_metric_families
from rank_helpers import wait_until

from refserver.api import create_app
from refserver.engine.rank_stats import RingWaitClock

FAMILIES = {
    "refserver_requests": "counter",
    "refserver_request_success": "counter",
    "refserver_prompt_tokens": "counter",
    "refserver_prompt_cached_tokens": "counter",
    "refserver_generation_tokens": "counter",
    "refserver_time_to_first_token_seconds": "histogram",
    "refserver_inter_token_latency_seconds": "histogram",
    "refserver_e2e_request_latency_seconds": "histogram",
    "refserver_request_queue_time_seconds": "histogram",
}


def scrape(client) -> dict[str, dict]:
    """{family name: {"type": ..., "samples": {(sample name, labels...): value}}}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    families = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        samples = {(s.name, *sorted(s.labels.items())): s.value for s in family.samples}
        families[family.name] = {"type": family.type, "samples": samples}
    return families


def value(families, family: str, sample: str | None = None, **labels) -> float:
    key = (sample or family, *sorted(labels.items()))
    return families[family]["samples"].get(key, 0.0)


@pytest.fixture
def engine(tokenizer):
    # A few tokens, then end-of-sequence (the fake streams it as a token too).
    return FakeEngine(
        tokenizer.encode("Hello! The"), eos_id=tokenizer.eos_token_id, cached_tokens=2
    )


def test_families_and_exact_counts_after_known_requests(engine, tokenizer, caplog):
    client = create_app(engine, tokenizer, settings()).test_client()
    usages = []
    with caplog.at_level(logging.INFO, logger="refserver.api.observe.observed_engine"):
        for max_tokens in (2, 3, 50):
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
            usages.append(client.post("/v1/chat/completions", json=body).get_json()["usage"])
        text_body = {"prompt": "hello world", "max_tokens": 50, "stream": True}
        streamed = client.post("/v1/completions", json=text_body)
        assert b"data: [DONE]" in streamed.get_data()
    assert client.post("/v1/chat/completions", json={"messages": "x"}).status_code == 400
    assert client.get("/nowhere").status_code == 404

    families = scrape(client)
    for name, kind in FAMILIES.items():
        assert families[name]["type"] == kind, name
    chat = "/v1/chat/completions"
    assert (
        value(families, "refserver_requests", "refserver_requests_total", route=chat, status="200")
        == 3
    )
    assert (
        value(families, "refserver_requests", "refserver_requests_total", route=chat, status="400")
        == 1
    )
    assert (
        value(
            families,
            "refserver_requests",
            "refserver_requests_total",
            route="unmatched",
            status="404",
        )
        == 1
    )
    prompt = sum(u["prompt_tokens"] for u in usages) + len(engine.requests[3].prompt_tokens)
    whole = len(engine.tokens) + 1  # what a request that is not cut short generates
    generated = sum(u["completion_tokens"] for u in usages) + whole
    assert value(families, "refserver_prompt_tokens", "refserver_prompt_tokens_total") == prompt
    assert (
        value(families, "refserver_generation_tokens", "refserver_generation_tokens_total")
        == generated
    )
    assert (
        value(families, "refserver_prompt_cached_tokens", "refserver_prompt_cached_tokens_total")
        == 8
    )
    success = "refserver_request_success_total"
    assert value(families, "refserver_request_success", success, finished_reason="length") == 2
    assert value(families, "refserver_request_success", success, finished_reason="stop") == 2
    ttft = "refserver_time_to_first_token_seconds"
    assert value(families, ttft, ttft + "_count") == 4
    gaps = "refserver_inter_token_latency_seconds"
    # The end token of the two whole replies comes without an event (no logprobs asked).
    assert value(families, gaps, gaps + "_count") == (2 - 1) + (3 - 1) + 2 * (whole - 2)
    queue = "refserver_request_queue_time_seconds"
    assert value(families, queue, queue + "_count") == 4
    # One INFO line per finished request: counts and times, never the prompt's text.
    lines = [r.getMessage() for r in caplog.records if "tokens/s" in r.getMessage()]
    assert len(lines) == 4
    assert all("hi" not in line.split(":", 1)[1] and "hello" not in line for line in lines)
    assert (
        f"{chat}: length; prompt {usages[0]['prompt_tokens']} tokens (2 cached), generated 2"
        in lines[0]
    )


def test_open_like_health_while_the_status_json_needs_the_key(engine, tokenizer):
    client = create_app(engine, tokenizer, settings(api_keys=("secret",))).test_client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/static/status.js").status_code == 200
    assert client.get("/status").status_code == 401
    authorized = client.get("/status", headers={"Authorization": "Bearer secret"})
    assert authorized.status_code == 200
    status = authorized.get_json()
    assert status["model"] == "tiny-test-model" and status["ok"] is True
    assert status["requests"] == {"running": 0, "waiting": 0}
    assert status["generated_tokens"] == 0


def test_a_client_that_leaves_counts_as_cancelled(tokenizer):
    engine = FakeEngine(tokenizer.encode("Hello! The answer is 42.") * 20, delay=0.01)
    client = create_app(engine, tokenizer, settings()).test_client()
    body = {"prompt": "hello", "max_tokens": 200, "stream": True}
    response = client.post("/v1/completions", json=body, buffered=False)
    stream = response.response
    next(iter(stream))  # the first event, then the client leaves
    response.close()
    success = "refserver_request_success_total"

    def cancelled() -> float:
        return value(
            scrape(client), "refserver_request_success", success, finished_reason="cancelled"
        )

    assert wait_until(lambda: cancelled() == 1, timeout=5)


def test_a_steps_ring_waits_count_when_the_step_does():
    """Read mid-step, waits already counted and the step's time not yet gave a wait share
    above 1 (the heartbeats read both at any moment)."""
    clock = RingWaitClock()
    received = mx.ones((512, 512)) @ mx.ones((512, 512))  # lazy, as a ring receive is
    clock.wait_for(received)
    assert clock.seconds == 0
    clock.step_done()
    assert clock.seconds > 0
    waited = clock.seconds
    clock.wait_for(None)  # nothing to wait for
    clock.step_done()
    assert clock.seconds == waited
