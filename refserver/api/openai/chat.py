"""The chat completion wire format: one JSON reply, or a stream of chunks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import Any

from refserver.api.openai.common import ResponseMeta
from refserver.api.openai.logprobs import chat_logprobs
from refserver.api.shared.generation import KeepAlive, Outcome, Pieces, TextPiece
from refserver.api.shared.message import MessageBuilder
from refserver.api.shared.prompting import Vocabulary
from refserver.tools import ContentDelta, OutputEvent, ReasoningDelta, ToolCallEvent

Delta = dict[str, Any]
CHUNK = "chat.completion.chunk"


def chat_choice(
    index: int,
    pieces: Pieces,
    builder: MessageBuilder,
    vocab: Vocabulary,
    top_logprobs: int | None,
) -> dict[str, Any]:
    """A whole reply's choice `index`; top_logprobs None means no logprobs were asked for."""
    events: list[OutputEvent] = []
    entries: list[dict] = []
    outcome: Outcome | None = None
    with closing(pieces):
        for item in pieces:
            if isinstance(item, TextPiece):
                events += builder.feed(item.text)
                if top_logprobs is not None:
                    entries += chat_logprobs(item.tokens, vocab, top_logprobs)
            elif isinstance(item, Outcome):
                outcome = item
    assert outcome is not None, "generate() ends with an Outcome or raises"
    events += builder.finish()
    return {
        "index": index,
        "message": message(events),
        "logprobs": None if top_logprobs is None else {"content": entries},
        "finish_reason": builder.finish_reason(outcome.finish_reason),
    }


def chat_chunks(
    meta: ResponseMeta,
    index: int,
    pieces: Pieces,
    builder: MessageBuilder,
    vocab: Vocabulary,
    top_logprobs: int | None,
) -> Iterator[dict[str, Any] | KeepAlive]:
    """The chunks of choice `index` in a stream: role first, then content, one
    finish_reason (the reply's usage follows all of its choices)."""

    def chunk(delta: Delta, logprobs: list[dict] | None = None, finish: str | None = None):
        return _chunk(meta, index, delta, logprobs, finish)

    yield chunk({"role": "assistant", "content": ""})
    entries: list[dict] = []  # logprobs wait for the chunk that carries their text
    with closing(pieces):
        for item in pieces:
            if isinstance(item, KeepAlive):
                yield item
            elif isinstance(item, TextPiece):
                if top_logprobs is not None:
                    entries += chat_logprobs(item.tokens, vocab, top_logprobs)
                for event in builder.feed(item.text):
                    yield chunk(delta(event), entries)
                    entries = []
            elif isinstance(item, Outcome):
                for event in builder.finish():
                    yield chunk(delta(event), entries)
                    entries = []
                yield chunk({}, entries, builder.finish_reason(item.finish_reason))


def _chunk(
    meta: ResponseMeta,
    index: int,
    delta: Delta,
    logprobs: list[dict] | None,
    finish_reason: str | None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "delta": delta}
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    choice["finish_reason"] = finish_reason
    return {**meta.header(CHUNK), "choices": [choice]}


def delta(event: OutputEvent) -> Delta:
    """The stream delta of one event: a tool call is one delta with its index and whole
    arguments."""
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text}
    if isinstance(event, ToolCallEvent):
        return {"tool_calls": [{"index": event.index, **_tool_call(event)}]}
    return {"content": event.text}


def message(events: list[OutputEvent]) -> dict[str, Any]:
    """The assistant message of a whole reply; reasoning_content and tool_calls only when
    there are some. Calls with no text beside them have content null, as OpenAI's do."""
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    calls = [_tool_call(e) for e in events if isinstance(e, ToolCallEvent)]
    result: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if reasoning:
        result["reasoning_content"] = reasoning
    if calls:
        result["tool_calls"] = calls
    return result


def _tool_call(event: ToolCallEvent) -> dict[str, Any]:
    call = event.call
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
