"""The chat completion wire format: one JSON reply, or a stream of chunks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import Any

from refserver.api.generation import KeepAlive, Outcome, TextPiece
from refserver.api.logprobs import chat_logprobs
from refserver.api.message import Delta, MessageBuilder, merge_deltas
from refserver.api.openai_common import ResponseMeta, usage, usage_chunk
from refserver.api.prompting import Vocabulary

Pieces = Iterator[TextPiece | KeepAlive | Outcome]
CHUNK = "chat.completion.chunk"


def chat_completion(
    meta: ResponseMeta,
    pieces: Pieces,
    builder: MessageBuilder,
    vocab: Vocabulary,
    top_logprobs: int | None,
) -> dict[str, Any]:
    """The whole reply; top_logprobs None means no logprobs were asked for."""
    deltas: list[Delta] = []
    entries: list[dict] = []
    outcome: Outcome | None = None
    with closing(pieces):
        for item in pieces:
            if isinstance(item, TextPiece):
                deltas += builder.feed(item.text)
                if top_logprobs is not None:
                    entries += chat_logprobs(item.tokens, vocab, top_logprobs)
            elif isinstance(item, Outcome):
                outcome = item
    assert outcome is not None, "generate() ends with an Outcome or raises"
    deltas += builder.finish()
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "", **merge_deltas(deltas)},
        "logprobs": None if top_logprobs is None else {"content": entries},
        "finish_reason": builder.finish_reason(outcome.finish_reason),
    }
    return {**meta.header("chat.completion"), "choices": [choice], "usage": usage(outcome)}


def chat_chunks(
    meta: ResponseMeta,
    pieces: Pieces,
    builder: MessageBuilder,
    vocab: Vocabulary,
    top_logprobs: int | None,
    include_usage: bool,
) -> Iterator[dict[str, Any] | KeepAlive]:
    """The chunks of a stream: role first, then content, one finish_reason, usage."""
    yield _chunk(meta, {"role": "assistant", "content": ""})
    entries: list[dict] = []  # logprobs wait for the chunk that carries their text
    with closing(pieces):
        for item in pieces:
            if isinstance(item, KeepAlive):
                yield item
                continue
            if isinstance(item, TextPiece):
                if top_logprobs is not None:
                    entries += chat_logprobs(item.tokens, vocab, top_logprobs)
                for delta in builder.feed(item.text):
                    yield _chunk(meta, delta, entries)
                    entries = []
                continue
            for delta in builder.finish():
                yield _chunk(meta, delta, entries)
                entries = []
            yield _chunk(meta, {}, entries, builder.finish_reason(item.finish_reason))
            if include_usage:
                yield usage_chunk(meta, CHUNK, item)


def _chunk(
    meta: ResponseMeta,
    delta: Delta,
    logprobs: list[dict] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    choice["finish_reason"] = finish_reason
    return {**meta.header(CHUNK), "choices": [choice]}
