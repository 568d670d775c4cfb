"""The prefix cache and chunked prefill on real ranks: a hit changes nothing in the
output, which equals single-process mlx_lm's; the reused tokens are reported exactly.

Prompts that span many chunks are compared with mlx_lm prefilling in the same chunks
(generate_step's prefill_step_size = the server's --prefill-chunk): chunk boundaries
decide the order of float operations. A cache hit starts the prefill where the hit
ends, so those outputs are compared with mlx_lm's default chunks: they are equal on
these models, but need not be bit for bit on every model.
"""

from __future__ import annotations

import threading

import openai
import pytest
from transformers import AutoTokenizer

from simcluster.parity import reference_tokens
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

CHUNK = 16
TOKENS = 12
SYSTEM = "You are a careful assistant who answers in one short sentence. " * 6


@pytest.fixture(
    scope="module",
    params=[(1, "tiny_model"), (2, "tiny_model"), (3, "tiny_model"), (2, "tiny_model_q4")],
    ids=["1-rank", "2-ranks", "3-ranks", "2-ranks-q4"],
)
def cluster(request):
    ranks, model_name = request.param
    model = request.getfixturevalue(model_name)
    args = ("--prefill-chunk", str(CHUNK), "--max-tokens", str(TOKENS))
    with ServerCluster(ranks, model, extra_args=args) as server:
        yield server, model


@pytest.fixture(scope="module")
def client(cluster):
    server, _ = cluster
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(cluster):
    return cluster[1]


@pytest.fixture(scope="module")
def tokenizer(model):
    return AutoTokenizer.from_pretrained(str(model))


def complete(client, prompt: list[int], max_tokens: int = TOKENS):
    """A greedy completion of token ids: (its text, cached prompt tokens)."""
    reply = client.completions.create(
        model="default_model",
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.choices[0].text, reply.usage.prompt_tokens_details.cached_tokens


def reference_text(tokenizer, model, prompt: list[int], chunk: int = 2048) -> str:
    tokens = reference_tokens(model, prompt, TOKENS, prefill_step_size=chunk)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_a_prompt_of_many_chunks_equals_mlx_lm_prefilling_in_the_same_chunks(
    client, model, tokenizer
):
    prompt = ids(tokenizer, "A long tale of ships and stars, " * 12)
    assert len(prompt) > 6 * CHUNK
    text, cached = complete(client, prompt)
    assert cached == 0
    assert text == reference_text(tokenizer, model, prompt, chunk=CHUNK)


def test_an_identical_repeat_reuses_all_but_the_last_token(client, model, tokenizer):
    prompt = ids(tokenizer, "Tell me about the sea. " * 5)
    first, _ = complete(client, prompt)
    again, cached = complete(client, prompt)
    assert cached == len(prompt) - 1
    assert again == first == reference_text(tokenizer, model, prompt, chunk=CHUNK)


def test_a_continuation_reuses_the_prompt_and_the_generated_tokens(client, model, tokenizer):
    prompt = ids(tokenizer, "The lighthouse keeper said ")
    generated = reference_tokens(model, prompt, TOKENS)
    if tokenizer.eos_token_id in generated:
        generated = generated[: generated.index(tokenizer.eos_token_id)]
    complete(client, prompt)
    following = prompt + generated + ids(tokenizer, " and then")
    text, cached = complete(client, following)
    # Every generated token's KV but the last one's was computed.
    assert cached == len(prompt) + len(generated) - 1
    assert text == reference_text(tokenizer, model, following)


def test_the_next_chat_turn_reuses_the_conversation(client, tokenizer):
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name a colour."},
    ]
    first = client.chat.completions.create(model="default_model", messages=messages)
    before = chat_ids(tokenizer, messages)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or "Blue."},
        {"role": "user", "content": "And another one?"},
    ]
    turn = client.chat.completions.create(model="default_model", messages=messages)
    now = chat_ids(tokenizer, messages)
    cached = turn.usage.prompt_tokens_details.cached_tokens
    # At least where the rendered conversations part; more when the reply's tokens match.
    assert common_prefix(before, now) <= cached < len(now) == turn.usage.prompt_tokens


def chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return ids(tokenizer, text)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_anthropic_reports_the_cache_read(cluster):
    import anthropic

    server, _ = cluster
    messages_client = anthropic.Anthropic(
        base_url=server.base_url.removesuffix("/v1"), api_key="unused", max_retries=0
    )
    body = dict(
        model="default_model",
        max_tokens=4,
        system="Anthropic: " + SYSTEM,
        messages=[{"role": "user", "content": "Hello"}],
    )
    first = messages_client.messages.create(**body).usage
    again = messages_client.messages.create(**body).usage
    # Anthropic counts the tokens read from the cache apart from input_tokens.
    prompt = first.input_tokens + first.cache_read_input_tokens
    assert (again.cache_read_input_tokens, again.input_tokens) == (prompt - 1, 1)
    # Streamed, message_start already splits the prompt as message_delta does.
    with messages_client.messages.stream(**body) as stream:
        events = list(stream)
    start = events[0].message.usage
    assert events[0].type == "message_start"
    assert (start.cache_read_input_tokens, start.input_tokens) == (prompt - 1, 1)
    assert stream.get_final_message().usage.cache_read_input_tokens == prompt - 1


def test_concurrent_requests_with_a_shared_prefix_prefill_it_once(client, model, tokenizer):
    shared = ids(tokenizer, "Shared instructions for every agent request follow here. " * 4)
    prompts = [shared + ids(tokenizer, f" Question {n}: what is {n} plus {n}?") for n in range(4)]
    results: dict[int, tuple[str, int]] = {}

    def run(n: int) -> None:
        results[n] = complete(client, prompts[n])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    cached = sorted(results[n][1] for n in range(4))
    # One of them prefilled the shared part; the others started from it.
    assert cached[0] < len(shared) <= cached[1]
    for n in range(4):
        assert results[n][0] == reference_text(tokenizer, model, prompts[n])
