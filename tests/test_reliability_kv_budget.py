"""A flood of long requests on real ranks whose --kv-budget holds about four of them:
all finish with mlx_lm's greedy tokens, the KV in use never passes the budget, no rank
dies and memory stays bounded; a request that can never fit is a 400."""

from __future__ import annotations

import threading
import time

import pytest
from mlx_lm.sample_utils import make_logits_processors
from rank_helpers import Logs, assert_in_step, post, rank_pids, rss_mb
from transformers import AutoTokenizer

from simcluster.parity import reference_tokens
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

# The tiny preset holds 512 bytes of KV per token on each of two ranks: 660 KB are
# 1289 positions, four rows of 256 (prompt + max_tokens, in steps of 256) and a prompt.
BUDGET = "660KB"
CAPACITY = 660_000 // 512
MAX_TOKENS = 200
BANNED_EOS = {"2": -100}  # every request runs to max_tokens
PROMPTS = [f"Story number {n}: once upon a time there was" for n in range(4)]


@pytest.fixture(scope="module")
def server(tiny_model):
    args = ("--kv-budget", BUDGET)
    with ServerCluster(2, tiny_model, extra_args=args, sink=Logs()) as cluster:
        yield cluster


def body(prompt: str, max_tokens: int = MAX_TOKENS) -> dict:
    return {
        "model": "default_model",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": BANNED_EOS,
    }


def expected(tiny_model, prompt: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    processors = make_logits_processors(logit_bias={2: -100})
    tokens = reference_tokens(tiny_model, tokenizer.encode(prompt), MAX_TOKENS, processors)
    return tokenizer.decode(tokens, skip_special_tokens=True)


def test_health_reports_the_capacity_of_the_tightest_rank(server):
    status, health = server.health()
    assert status == 200
    assert health["kv"]["capacity_tokens"] == CAPACITY
    assert set(health["kv"]["ranks"]) == {"0", "1"}


def test_a_request_that_can_never_fit_is_refused(server, tiny_model):
    status, _, reply = post(server, body("Hello", max_tokens=CAPACITY), "/v1/completions")
    assert status == 400, reply
    assert reply["error"]["code"] == "kv_capacity_exceeded"
    assert str(CAPACITY) in reply["error"]["message"]
    assert_in_step(server, tiny_model)


def test_a_flood_of_long_requests_waits_its_turn_within_the_budget(server, tiny_model):
    before = [rss_mb(pid) for pid in rank_pids(server)]
    replies: dict[int, tuple[int, dict]] = {}
    used: list[int] = []
    flooding = threading.Event()
    flooding.set()

    def watch() -> None:
        while flooding.is_set():
            used.append(server.health()[1]["kv"]["used_tokens"])
            time.sleep(0.02)

    def request(n: int) -> None:
        status, _, reply = post(server, body(PROMPTS[n % 4]), "/v1/completions", timeout=300)
        replies[n] = (status, reply)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=request, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    flooding.clear()
    watcher.join()

    references = [expected(tiny_model, prompt) for prompt in PROMPTS]
    for n in range(16):
        status, reply = replies[n]
        assert status == 200, reply
        assert reply["choices"][0]["text"] == references[n % 4], n
        assert reply["usage"]["completion_tokens"] == MAX_TOKENS
    status, health = server.health()
    assert status == 200
    assert max(used) <= CAPACITY and health["kv"]["peak_tokens"] <= CAPACITY
    assert max(used) > CAPACITY // 2  # the budget was the limit, not the batch size
    after = [rss_mb(pid) for pid in rank_pids(server)]
    assert all(a - b < 200 for a, b in zip(after, before, strict=True)), (before, after)
    assert_in_step(server, tiny_model)
