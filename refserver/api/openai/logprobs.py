"""Token log-probabilities in the two OpenAI shapes (chat and legacy completions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refserver.api.shared.prompting import Vocabulary
from refserver.engine.interface import TokenEvent

# What a token the sampler ruled out (a grammar's mask, a bias of -100) is listed at:
# JSON has no -Infinity, and a strict parser refuses the whole body for one (vLLM's).
LOGPROB_FLOOR = -9999.0


def finite(logprob: float | None) -> float | None:
    """A log-probability JSON can carry: -inf (and NaN) as LOGPROB_FLOOR."""
    if logprob is None or logprob > LOGPROB_FLOOR:  # NaN compares false
        return logprob
    return LOGPROB_FLOOR


def chat_logprobs(tokens: Sequence[TokenEvent], vocab: Vocabulary, top_n: int) -> list[dict]:
    """Entries of choices[0].logprobs.content: token, logprob, bytes, top_logprobs."""
    return [
        {
            **_chat_entry(vocab, event.token_id, event.logprob),
            "top_logprobs": [_chat_entry(vocab, t, lp) for t, lp in event.top_logprobs[:top_n]],
        }
        for event in tokens
    ]


def completion_logprobs(
    tokens: Sequence[TokenEvent], vocab: Vocabulary, top_n: int, text_offset: int
) -> dict[str, list[Any]]:
    """choices[0].logprobs of a text completion; text_offset is where these tokens start.
    A control token (a prompt's BOS, the end token) is listed, but takes no room in the
    text, which leaves it out."""
    texts = [vocab.token(event.token_id)[0] for event in tokens]
    offsets = []
    for event, text in zip(tokens, texts, strict=True):
        offsets.append(text_offset)
        text_offset += len(text) if vocab.shows(event.token_id) else 0
    return {
        "tokens": texts,
        "token_logprobs": [finite(event.logprob) for event in tokens],
        # None for a prompt's first token (echo): nothing came before it.
        "top_logprobs": [
            None
            if event.logprob is None
            else {vocab.token(t)[0]: finite(lp) for t, lp in event.top_logprobs[:top_n]}
            for event in tokens
        ],
        "text_offset": offsets,
    }


def _chat_entry(vocab: Vocabulary, token_id: int, logprob: float | None) -> dict[str, Any]:
    text, raw = vocab.token(token_id)
    return {"token": text, "logprob": finite(logprob), "bytes": list(raw)}
