"""Token log-probabilities in the two OpenAI shapes (chat and legacy completions)."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
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


class TextOffsets:
    """Where each token starts in the text it makes, from `start`: the characters of
    the whole UTF-8 characters before it (a token holding part of one starts where that
    one does). A control token takes no room, unless `spelled` (the text these tokens
    make, as a client sent it) spells it there: a text prompt may spell a turn marker,
    while the BOS a tokenizer adds is in no text."""

    def __init__(self, vocab: Vocabulary, start: int = 0, spelled: str | None = None):
        self._vocab = vocab
        self._spelled = spelled
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.position = start

    def take(self, token_ids: Iterable[int]) -> list[int]:
        offsets = []
        for token_id in token_ids:
            offsets.append(self.position)
            text, raw = self._vocab.token(token_id)
            if self._vocab.shows(token_id):
                self.position += len(self._decoder.decode(raw))
            elif self._spelled is not None and self._spelled.startswith(text, self.position):
                self.position += len(text)
        return offsets


def completion_logprobs(
    tokens: Sequence[TokenEvent], vocab: Vocabulary, top_n: int, offsets: TextOffsets
) -> dict[str, list[Any]]:
    """choices[0].logprobs of a text completion; `offsets` places these tokens in the
    text (and moves past them)."""
    return {
        "tokens": [vocab.token(event.token_id)[0] for event in tokens],
        "token_logprobs": [finite(event.logprob) for event in tokens],
        # None for a prompt's first token (echo): nothing came before it.
        "top_logprobs": [
            None
            if event.logprob is None
            else {vocab.token(t)[0]: finite(lp) for t, lp in event.top_logprobs[:top_n]}
            for event in tokens
        ],
        "text_offset": offsets.take(event.token_id for event in tokens),
    }


def _chat_entry(vocab: Vocabulary, token_id: int, logprob: float | None) -> dict[str, Any]:
    text, raw = vocab.token(token_id)
    return {"token": text, "logprob": finite(logprob), "bytes": list(raw)}
