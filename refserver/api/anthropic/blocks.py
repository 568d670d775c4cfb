"""The Anthropic Messages reply: content blocks built from output events, the stream
events that build them, stop_reason and usage.

Reasoning becomes a "thinking" block (with an empty signature: nothing here signs it),
content a "text" block, each tool call a "tool_use" block. Blocks follow the order in
which the model wrote them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from refserver.api.shared.generation import Admitted, KeepAlive, Outcome, Pieces, TextPiece
from refserver.api.shared.message import MessageBuilder, whole_reply
from refserver.tools import OutputEvent, ReasoningDelta, ToolCallEvent

StreamEvent = tuple[str, dict[str, Any]]  # (event name, data)


@dataclass(frozen=True)
class MessageMeta:
    id: str
    model: str
    prompt_tokens: int  # the whole prompt, cached or not

    def message(self, **fields: Any) -> dict[str, Any]:
        header = {"id": self.id, "type": "message", "role": "assistant", "model": self.model}
        return {**header, **fields}


class ContentBlocks:
    """Events in; ``blocks`` out, and from ``add`` the stream events that build them."""

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = []
        self._open: str | None = None  # "text" or "thinking" while such a block is open

    @property
    def open(self) -> str | None:
        """Which block is open: "text", "thinking" or none."""
        return self._open

    def add(self, event: OutputEvent) -> list[StreamEvent]:
        if isinstance(event, ToolCallEvent):
            return self.close() + self._tool_use(event)
        kind = "thinking" if isinstance(event, ReasoningDelta) else "text"
        events = []
        if self._open != kind:
            events = self.close()
            self._open = kind
            empty = {"type": kind, kind: ""} | ({"signature": ""} if kind == "thinking" else {})
            self.blocks.append(dict(empty))
            events.append(_block_start(len(self.blocks) - 1, empty))
        self.blocks[-1][kind] += event.text
        delta = {"type": f"{kind}_delta", kind: event.text}
        return [*events, _block_delta(len(self.blocks) - 1, delta)]

    def close(self) -> list[StreamEvent]:
        """Close the open text or thinking block, if any."""
        if self._open is None:
            return []
        self._open = None
        return [_block_stop(len(self.blocks) - 1)]

    def _tool_use(self, event: ToolCallEvent) -> list[StreamEvent]:
        call = event.call
        index = len(self.blocks)
        block = {"type": "tool_use", "id": call.id, "name": call.name}
        self.blocks.append({**block, "input": json.loads(call.arguments)})
        delta = {"type": "input_json_delta", "partial_json": call.arguments}
        return [
            _block_start(index, {**block, "input": {}}),
            _block_delta(index, delta),
            _block_stop(index),
        ]


def stop_reason(finish_reason: str, outcome: Outcome) -> str:
    """end_turn, max_tokens, stop_sequence or tool_use, from the OpenAI finish_reason."""
    if finish_reason == "tool_calls":
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if outcome.stop_sequence else "end_turn"


def usage(prompt_tokens: int, cached_tokens: int, output_tokens: int) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart from input_tokens."""
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def final_usage(outcome: Outcome) -> dict[str, int]:
    return usage(outcome.prompt_tokens, outcome.cached_tokens, outcome.completion_tokens)


def message_reply(meta: MessageMeta, pieces: Pieces, builder: MessageBuilder) -> dict[str, Any]:
    """The whole reply of a non-streamed request."""
    content = ContentBlocks()
    events, outcome = whole_reply(pieces, builder)
    for event in events:
        content.add(event)
    return meta.message(
        content=content.blocks,
        stop_reason=stop_reason(builder.finish_reason(outcome.finish_reason), outcome),
        stop_sequence=outcome.stop_sequence,
        usage=final_usage(outcome),
    )


def message_events(
    meta: MessageMeta, pieces: Pieces, builder: MessageBuilder, thinks_first: bool = False
) -> Iterator[StreamEvent | KeepAlive]:
    """The events of a stream: message_start, ping, the blocks, message_delta, message_stop.

    message_start waits for the engine to admit the prompt: its usage then splits the
    prompt into input and cache reads as message_delta's does (keep-alive comments
    hold the connection open while the request queues). When the reply starts in
    its reasoning (`thinks_first`), a keep-alive while no other block is open is an
    empty thinking delta, opening that block early: Claude Code gives up on a stream
    after 300 s without content, pings not counted, and a long prompt's prefill on a
    cluster can take longer."""
    content = ContentBlocks()
    started = False
    with closing(pieces):
        for item in pieces:
            if isinstance(item, KeepAlive):
                thinking = content.open == "thinking" or not content.blocks
                if started and thinks_first and thinking:
                    yield from content.add(ReasoningDelta(""))
                else:
                    yield item if started else KeepAlive(comment=True)
            elif isinstance(item, Admitted):
                started = True
                start_usage = usage(meta.prompt_tokens, item.cached_tokens, 0)
                message = meta.message(
                    content=[], stop_reason=None, stop_sequence=None, usage=start_usage
                )
                yield "message_start", {"type": "message_start", "message": message}
                yield "ping", {"type": "ping"}
            elif isinstance(item, TextPiece):
                for event in builder.feed(item.text):
                    yield from content.add(event)
            elif isinstance(item, Outcome):
                for event in builder.finish():
                    yield from content.add(event)
                yield from content.close()
                reason = stop_reason(builder.finish_reason(item.finish_reason), item)
                delta = {"stop_reason": reason, "stop_sequence": item.stop_sequence}
                final = {"type": "message_delta", "delta": delta, "usage": final_usage(item)}
                yield "message_delta", final
                yield "message_stop", {"type": "message_stop"}


def _block_start(index: int, block: dict[str, Any]) -> StreamEvent:
    return "content_block_start", {
        "type": "content_block_start",
        "index": index,
        "content_block": block,
    }


def _block_delta(index: int, delta: dict[str, Any]) -> StreamEvent:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def _block_stop(index: int) -> StreamEvent:
    return "content_block_stop", {"type": "content_block_stop", "index": index}
