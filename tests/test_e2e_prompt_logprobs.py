"""Prompt scores on real ranks: `echo` with `logprobs` on /v1/completions, as evaluation
harnesses (lm-eval's log-likelihood tasks) ask for them. Each prompt token's
log-probability and the most likely tokens at its position equal single-process
mlx_lm's, on 1, 2 and 3 ranks, for a prompt read in several chunks.

The reference reads the prompt in one pass and the server in chunks; a chunk boundary
changes float rounding, so values are compared within 1e-4 (the top tokens exactly)."""

from __future__ import annotations

import functools

import mlx.core as mx
import pytest
from rank_helpers import Logs, client, reference_text

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

PROMPT = "The harbour at dawn: the boats, their crews and the gulls above them. " * 3
TOP = 3


@functools.cache
def reference_scores(model_path, prompt_ids: tuple[int, ...]) -> list[tuple[float, list[int]]]:
    """mlx_lm's (log-probability, top token ids) for each prompt token after the first."""
    from mlx_lm import load

    model, _ = load(str(model_path))
    logits = model(mx.array(prompt_ids)[None])[0, :-1].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    chosen = mx.take_along_axis(logprobs, mx.array(prompt_ids[1:])[:, None], axis=-1)[:, 0]
    best = mx.argsort(-logprobs, axis=-1)[:, :TOP]
    return list(zip(chosen.tolist(), best.tolist(), strict=True))


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_prompt_scores_equal_mlx_lms(tiny_model, ranks):
    args = ("--prefill-chunk", "16")  # a prompt of ~60 tokens: several chunks
    with ServerCluster(ranks, tiny_model, extra_args=args, sink=Logs()) as server:
        api = client(server)
        replies = [
            api.completions.create(
                model="default_model",
                prompt=PROMPT,
                max_tokens=max_tokens,
                temperature=0,
                echo=True,
                logprobs=TOP,
            )
            for max_tokens in (0, 1, 1)  # the prompt alone; lm-eval's ask, twice
        ]
    prompt_ids = _prompt_ids(tiny_model)
    expected = reference_scores(tiny_model, prompt_ids)
    vocab_text = _token_texts(tiny_model)
    for reply in replies:
        choice = reply.choices[0]
        assert choice.text.startswith(PROMPT)
        assert reply.usage.prompt_tokens == len(prompt_ids)
        assert reply.usage.prompt_tokens_details is None or (
            reply.usage.prompt_tokens_details.cached_tokens == 0  # scored: computed whole
        )
        logprobs = choice.logprobs
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        # After the prompt's entries come the generated token's (max_tokens 1).
        entries = len(prompt_ids) + reply.usage.completion_tokens
        assert len(logprobs.token_logprobs) == entries
        scored = zip(logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=False)
        for position, ((value, top), (want, want_top)) in enumerate(
            zip(scored, expected, strict=False)
        ):
            assert value == pytest.approx(want, abs=1e-4), position
            # Keyed by text, as OpenAI's format is: byte tokens may share one ('\ufffd').
            assert set(top) == {vocab_text[t] for t in want_top}, position
    # The generated token is greedy mlx_lm's, as for any completion.
    assert replies[1].choices[0].text == PROMPT + reference_text(tiny_model, PROMPT, 1)


def _prompt_ids(model_path) -> tuple[int, ...]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return tuple(tokenizer.encode(PROMPT, add_special_tokens=False))


def _token_texts(model_path) -> dict[int, str]:
    from transformers import AutoTokenizer

    from refserver.api.shared.prompting import Vocabulary

    vocab = Vocabulary(AutoTokenizer.from_pretrained(str(model_path)))
    return {i: vocab.token(i)[0] for i in range(vocab.size)}


# A batch as lm-eval sends one (batch_size > 1): several prompts, as token ids.
BATCH = ["The gulls above the harbour.", "Boats at dawn, " * 4, "Their crews"]


def test_a_batch_of_prompts_answers_each_as_alone(tiny_model):
    """Several prompts in one request (a choice each, run side by side and batched by
    the engine) give each prompt's scores and greedy tokens as a request of its own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    batch = [tokenizer.encode(text, add_special_tokens=False) for text in BATCH]
    ask = {"model": "default_model", "max_tokens": 4, "temperature": 0, "echo": True}
    ask["logprobs"] = 1
    with ServerCluster(2, tiny_model, sink=Logs()) as server:
        api = client(server)
        together = api.completions.create(prompt=batch, **ask)
        alone = [api.completions.create(prompt=ids, **ask).choices[0] for ids in batch]
        samples = api.completions.create(prompt=BATCH[0], n=2, **ask)
    assert [choice.index for choice in together.choices] == [0, 1, 2]
    for mine, single, text in zip(together.choices, alone, BATCH, strict=True):
        assert mine.text == single.text == text + reference_text(tiny_model, text, 4)
        assert mine.logprobs.tokens == single.logprobs.tokens
        assert mine.logprobs.token_logprobs[0] is None
        assert mine.logprobs.token_logprobs[1:] == pytest.approx(
            single.logprobs.token_logprobs[1:], abs=1e-4
        )
    assert together.usage.prompt_tokens == sum(len(ids) for ids in batch)
    # Greedy samples of one prompt are the same text; its prompt is counted once.
    assert [choice.text for choice in samples.choices] == [alone[0].text] * 2
    assert samples.usage.prompt_tokens == len(batch[0])
