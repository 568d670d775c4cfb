"""The server end to end on real ranks, with the official openai SDK as the client."""

from __future__ import annotations

import json
import socket
import threading

import openai
import pytest

from refserver.tools import parse_output
from simcluster.parity import reference_tokens
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "List three colours.",
    "What is the capital of France?",
    "Explain recursion to a child.",
    "Say hello in four languages.",
    "Describe a cat.",
    "Count to ten.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["1-rank", "2-ranks", "3-ranks"])
def server(request, tiny_model):
    with ServerCluster(request.param, tiny_model) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def chat_prompt(tokenizer, text: str, **template_kwargs) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        tokenize=False,
        **template_kwargs,
    )
    return tokenizer.encode(rendered, add_special_tokens=False)


def expected_text(tiny_model, tokenizer, prompt: list[int], max_tokens: int) -> str:
    """Single-process mlx_lm's greedy text, ended at the first end-of-sequence token."""
    return until_eos(tokenizer, reference_tokens(tiny_model, prompt, max_tokens))


def until_eos(tokenizer, tokens: list[int]) -> str:
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def as_message(text: str, thinking: bool = True) -> tuple[str, str]:
    """(reasoning_content, content) the server makes of a raw text: the chat template
    opens <think> (unless thinking is off), so a random model's text is reasoning up
    to a </think>, if any."""
    parsed = parse_output(text, parse_tool_calls=False, starts_in_reasoning=thinking)
    return parsed.reasoning, parsed.content


def message_of(response) -> tuple[str, str]:
    message = response.choices[0].message
    return (message.model_extra.get("reasoning_content") or ""), message.content


def ask(client, text: str, max_tokens: int = 48, **kwargs):
    return client.chat.completions.create(
        model="default_model",
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        temperature=0,
        **kwargs,
    )


def test_health_and_models(server, client):
    status, body = server.health()
    assert status == 200 and body["status"] == "ok"
    assert [m.id for m in client.models.list().data]


def test_chat_matches_single_process_greedy(client, tiny_model, tokenizer):
    prompt = chat_prompt(tokenizer, PROMPTS[0])
    response = ask(client, PROMPTS[0])
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert message_of(response) == as_message(expected_text(tiny_model, tokenizer, prompt, 48))
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.prompt_tokens_details.cached_tokens == 0
    assert choice.finish_reason in ("stop", "length")


def test_stream_with_usage(client, tiny_model, tokenizer):
    stream = ask(client, PROMPTS[1], stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert sum(1 for f in finishes if f) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
    prompt = chat_prompt(tokenizer, PROMPTS[1])
    assert (reasoning, content) == as_message(expected_text(tiny_model, tokenizer, prompt, 48))


def test_completions(client, tiny_model, tokenizer):
    prompt = tokenizer.encode("Once upon a time", add_special_tokens=False)
    response = client.completions.create(
        model="default_model", prompt="Once upon a time", max_tokens=32, temperature=0
    )
    assert response.object == "text_completion"
    assert response.choices[0].text == expected_text(tiny_model, tokenizer, prompt, 32)


def test_stop_string_across_token_boundary(client, tiny_model, tokenizer):
    # Without thinking: the random model's text is the answer, where stop strings match.
    prompt = chat_prompt(tokenizer, PROMPTS[3], enable_thinking=False)
    tokens = reference_tokens(tiny_model, prompt, 40)
    pieces = [
        tokenizer.decode(tokens[: i + 1], skip_special_tokens=True) for i in range(len(tokens))
    ]
    # A stop string made of the end of one token and the start of the next.
    boundary = next(
        i
        for i in range(4, len(tokens) - 1)
        if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) - len(pieces[i]) >= 2
    )
    stop = pieces[boundary + 1][len(pieces[boundary]) - 1 : len(pieces[boundary]) + 1]
    before = pieces[boundary + 1][: pieces[boundary + 1].index(stop)]
    no_thinking = {"chat_template_kwargs": {"enable_thinking": False}}
    response = ask(client, PROMPTS[3], max_tokens=40, stop=[stop], extra_body=no_thinking)
    assert message_of(response) == as_message(before, thinking=False)
    assert response.choices[0].finish_reason == "stop"


def test_concurrent_requests_each_equal_their_greedy_answer(client, tiny_model, tokenizer):
    results: dict[int, tuple[str, str]] = {}

    def run(index: int) -> None:
        results[index] = message_of(ask(client, PROMPTS[index], max_tokens=32))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(results) == list(range(len(PROMPTS)))
    for index, text in results.items():
        prompt = chat_prompt(tokenizer, PROMPTS[index])
        assert text == as_message(expected_text(tiny_model, tokenizer, prompt, 32)), index


def test_disconnect_mid_stream_then_normal_request(server, client, tiny_model, tokenizer):
    body = {
        "model": "default_model",
        "messages": [{"role": "user", "content": PROMPTS[5]}],
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    payload = json.dumps(body).encode()
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            + f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while received.count(b"data: ") < 6:
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
    # The socket is closed mid-stream here.
    response = ask(client, PROMPTS[2])
    prompt = chat_prompt(tokenizer, PROMPTS[2])
    assert message_of(response) == as_message(expected_text(tiny_model, tokenizer, prompt, 48))


PENALTIES = [
    ("repetition", {"repetition_penalty": 1.8}),
    ("presence", {"presence_penalty": 1.5}),
    ("frequency", {"frequency_penalty": 1.0}),
    ("logit_bias", {"logit_bias": {"13": -100, "20": 5}}),
]


@pytest.mark.parametrize("name, fields", PENALTIES, ids=[name for name, _ in PENALTIES])
def test_penalties_match_mlx_lm(client, tiny_model, tokenizer, name, fields):
    """Penalties see every token generated so far, also when a step is decoded ahead."""
    from mlx_lm.sample_utils import make_logits_processors

    prompt = chat_prompt(tokenizer, PROMPTS[4])
    bias = {int(k): v for k, v in fields.get("logit_bias", {}).items()} or None
    others = {k: v for k, v in fields.items() if k != "logit_bias"}
    processors = make_logits_processors(logit_bias=bias, **others)
    tokens = reference_tokens(tiny_model, prompt, 40, logits_processors=processors)
    response = ask(client, PROMPTS[4], max_tokens=40, extra_body=fields)
    assert message_of(response) == as_message(until_eos(tokenizer, tokens))
    assert message_of(response) != as_message(expected_text(tiny_model, tokenizer, prompt, 40))


def test_seeded_sampling_repeats_alone_and_in_a_batch(client):
    def sample(results: list, index: int) -> None:
        response = client.chat.completions.create(
            model="default_model",
            messages=[{"role": "user", "content": PROMPTS[6]}],
            max_tokens=24,
            temperature=1.0,
            seed=1234 + index % 2,
        )
        results[index] = message_of(response)

    alone = [None]
    sample(alone, 0)
    together: list = [None] * 4
    threads = [threading.Thread(target=sample, args=(together, i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert together[0] == together[2] == alone[0]
    assert together[1] == together[3] != together[0]
