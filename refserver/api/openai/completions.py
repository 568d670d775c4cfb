"""The legacy text completion wire format: one JSON reply, or a stream of chunks.

With `echo`, the text starts with the prompt; with `echo` and `logprobs`, the logprobs
start with the prompt's tokens too, the first one without a log-probability (nothing
came before it), as OpenAI's completions give them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from refserver.api.openai.common import ResponseMeta
from refserver.api.openai.logprobs import TextOffsets, completion_logprobs
from refserver.api.shared.generation import KeepAlive, Outcome, Pieces, PromptScores, TextPiece
from refserver.api.shared.prompting import Vocabulary
from refserver.engine.interface import TokenEvent

OBJECT = "text_completion"


@dataclass(frozen=True)
class Echo:
    """The prompt to give back ahead of the completion: its text and token ids.
    `as_sent`: the text is the prompt as the client sent it, which may spell control
    tokens (else it is the text of the ids, which leaves them out)."""

    text: str
    token_ids: list[int]
    as_sent: bool = False

    def offsets(self, vocab: Vocabulary) -> TextOffsets:
        return TextOffsets(vocab, 0, self.text if self.as_sent else None)


def completion_choice(
    index: int,
    pieces: Pieces,
    vocab: Vocabulary,
    top_logprobs: int | None,
    echo: Echo | None = None,
) -> dict[str, Any]:
    """A whole reply's choice `index`; top_logprobs None means no logprobs were asked for."""
    texts: list[str] = [echo.text] if echo else []
    tokens: list[TokenEvent] = []
    scores: list[TokenEvent] = []
    outcome: Outcome | None = None
    with closing(pieces):
        for item in pieces:
            if isinstance(item, PromptScores):
                scores += item.tokens
            elif isinstance(item, TextPiece):
                texts.append(item.text)
                tokens += item.tokens
            elif isinstance(item, Outcome):
                outcome = item
    assert outcome is not None, "generate() ends with an Outcome or raises"
    logprobs = None
    if top_logprobs is not None:
        start = len(echo.text) if echo else 0  # the completion's text follows the prompt's
        logprobs = completion_logprobs(tokens, vocab, top_logprobs, TextOffsets(vocab, start))
        if echo is not None:
            entries = _echoed(echo, scores)
            prompt = completion_logprobs(entries, vocab, top_logprobs, echo.offsets(vocab))
            logprobs = {key: prompt[key] + logprobs[key] for key in logprobs}
    return _choice(index, "".join(texts), logprobs, outcome.finish_reason)


def completion_chunks(
    meta: ResponseMeta,
    index: int,
    pieces: Pieces,
    vocab: Vocabulary,
    top_logprobs: int | None,
    echo: Echo | None = None,
) -> Iterator[dict[str, Any] | KeepAlive]:
    """The chunks of choice `index` in a stream: the echoed prompt (once its scores are
    all in), text pieces, one finish_reason (the reply's usage follows all choices)."""

    def chunk(text: str, logprobs: dict | None, finish_reason: str | None) -> dict[str, Any]:
        return {**meta.header(OBJECT), "choices": [_choice(index, text, logprobs, finish_reason)]}

    def logprobs(tokens: list[TokenEvent], offsets: TextOffsets) -> dict | None:
        if top_logprobs is None:
            return None
        return completion_logprobs(tokens, vocab, top_logprobs, offsets)

    offsets = TextOffsets(vocab)  # the completion's, after the echoed prompt if any
    scores: list[TokenEvent] = []
    with closing(pieces):
        for item in pieces:
            if isinstance(item, KeepAlive):
                yield item
            elif isinstance(item, PromptScores):
                scores += item.tokens
            elif isinstance(item, TextPiece | Outcome):
                if echo is not None:  # the prompt's scores are all in: generation began
                    entries = logprobs(_echoed(echo, scores), echo.offsets(vocab))
                    yield chunk(echo.text, entries, None)
                    offsets, echo = TextOffsets(vocab, len(echo.text)), None
                if isinstance(item, TextPiece):
                    yield chunk(item.text, logprobs(list(item.tokens), offsets), None)
                else:
                    yield chunk("", None, item.finish_reason)


def _echoed(echo: Echo, scores: list[TokenEvent]) -> list[TokenEvent]:
    """The prompt's tokens as logprob entries: the first unscored, then its scores."""
    return [TokenEvent(echo.token_ids[0])] + scores


def _choice(
    index: int, text: str, logprobs: dict | None, finish_reason: str | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
