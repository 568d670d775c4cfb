"""The legacy text completion wire format: one JSON reply, or a stream of chunks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import Any

from refserver.api.openai.common import ResponseMeta, usage, usage_chunk
from refserver.api.openai.logprobs import completion_logprobs
from refserver.api.shared.generation import KeepAlive, Outcome, Pieces, TextPiece
from refserver.api.shared.prompting import Vocabulary

OBJECT = "text_completion"


def text_completion(
    meta: ResponseMeta, pieces: Pieces, vocab: Vocabulary, top_logprobs: int | None
) -> dict[str, Any]:
    """The whole reply; top_logprobs None means no logprobs were asked for."""
    texts: list[str] = []
    tokens = []
    outcome: Outcome | None = None
    with closing(pieces):
        for item in pieces:
            if isinstance(item, TextPiece):
                texts.append(item.text)
                tokens += item.tokens
            elif isinstance(item, Outcome):
                outcome = item
    assert outcome is not None, "generate() ends with an Outcome or raises"
    logprobs = None
    if top_logprobs is not None:
        logprobs = completion_logprobs(tokens, vocab, top_logprobs, text_offset=0)
    choice = _choice("".join(texts), logprobs, outcome.finish_reason)
    return {**meta.header(OBJECT), "choices": [choice], "usage": usage(outcome)}


def completion_chunks(
    meta: ResponseMeta,
    pieces: Pieces,
    vocab: Vocabulary,
    top_logprobs: int | None,
    include_usage: bool,
) -> Iterator[dict[str, Any] | KeepAlive]:
    """The chunks of a stream: text pieces, one finish_reason, then usage if asked."""
    offset = 0
    with closing(pieces):
        for item in pieces:
            if isinstance(item, KeepAlive):
                yield item
            elif isinstance(item, TextPiece):
                logprobs = None
                if top_logprobs is not None:
                    logprobs = completion_logprobs(item.tokens, vocab, top_logprobs, offset)
                    offset += sum(len(text) for text in logprobs["tokens"])
                yield _chunk(meta, _choice(item.text, logprobs, None))
            elif isinstance(item, Outcome):
                yield _chunk(meta, _choice("", None, item.finish_reason))
                if include_usage:
                    yield usage_chunk(meta, OBJECT, item)


def _choice(text: str, logprobs: dict | None, finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def _chunk(meta: ResponseMeta, choice: dict[str, Any]) -> dict[str, Any]:
    return {**meta.header(OBJECT), "choices": [choice]}
