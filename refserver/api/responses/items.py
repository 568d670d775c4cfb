"""The Responses reply: output items built from output events, the stream events that
build them, the response object, its status and usage.

Reasoning becomes a "reasoning" item (its text as reasoning_text content: nothing here
summarises or encrypts it), content a "message" item with one output_text part, each
tool call a "function_call" item. Items follow the order in which the model wrote them.
Stream events carry no sequence_number here: the stream's encoder numbers them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from refserver.api.shared.generation import KeepAlive, Outcome, Pieces, TextPiece
from refserver.api.shared.message import MessageBuilder, whole_reply
from refserver.tools import OutputEvent, ReasoningDelta, ToolCallEvent

Event = dict[str, Any]
Keep = Callable[[dict[str, Any]], None]  # what to do with a finished response (store it)


@dataclass(frozen=True)
class ResponseMeta:
    """What every response object of one request repeats: its id, model, creation time
    and the request's settings (instructions, tools, tool_choice, ...)."""

    id: str
    model: str
    settings: dict[str, Any]
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def summarises_reasoning(self) -> bool:
        """Whether the request asked for a summary of the reasoning (reasoning.summary)."""
        return (self.settings.get("reasoning") or {}).get("summary") not in (None, "none")

    def output_items(self) -> OutputItems:
        """An empty output for this response, its items' ids derived from its own."""
        return OutputItems(self.id.removeprefix("resp_"), self.summarises_reasoning)

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        outcome: Outcome | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        incomplete = status == "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "model": self.model,
            "output": output,
            **self.settings,
            "usage": None if outcome is None else usage(outcome),
        }


def usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "input_tokens": outcome.prompt_tokens,
        "input_tokens_details": {"cached_tokens": outcome.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": outcome.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def status_of(finish_reason: str) -> str:
    """A reply cut off by max_output_tokens is "incomplete"; any other is "completed"."""
    return "incomplete" if finish_reason == "length" else "completed"


@dataclass(frozen=True)
class TextSlot:
    """Where an item's text goes: the item's list of parts (`field`), the part's type,
    the prefixes of the events that stream the text and the part, and the key that
    indexes the part in those events."""

    field: str
    part_type: str
    text_events: str
    part_events: str
    index_key: str

    def part(self) -> dict[str, Any]:
        part = {"type": self.part_type, "text": ""}
        return part | ({"annotations": [], "logprobs": []} if self.field_has_logprobs else {})

    @property
    def field_has_logprobs(self) -> bool:
        return self.part_type == "output_text"


MESSAGE_TEXT = TextSlot(
    "content", "output_text", "response.output_text", "response.content_part", "content_index"
)
REASONING_TEXT = TextSlot(
    "content", "reasoning_text", "response.reasoning_text", "response.content_part", "content_index"
)
# A client that asks for a summary of the reasoning (reasoning.summary) gets the
# reasoning itself there: nothing here summarises it, and such clients (the Vercel AI
# SDK; Codex unless it shows raw reasoning) read summaries only.
REASONING_SUMMARY = TextSlot(
    "summary",
    "summary_text",
    "response.reasoning_summary_text",
    "response.reasoning_summary_part",
    "summary_index",
)


class OutputItems:
    """Events in; ``items`` out, and from ``add`` the stream events that build them.
    Reasoning goes to each reasoning item's content, or with `summarise` to its summary."""

    def __init__(self, request_id: str, summarise: bool = False):
        self.items: list[dict[str, Any]] = []
        self._request_id = request_id
        self._reasoning = REASONING_SUMMARY if summarise else REASONING_TEXT
        self._open: TextSlot | None = None  # where the open item's text goes, if one is open

    def add(self, event: OutputEvent) -> list[Event]:
        if isinstance(event, ToolCallEvent):
            return self.close() + self._function_call(event)
        slot = self._reasoning if isinstance(event, ReasoningDelta) else MESSAGE_TEXT
        events = []
        if self._open != slot:
            events = self.close()
            events += self._open_item(slot)
        index = len(self.items) - 1
        item = self.items[index]
        item[slot.field][0]["text"] += event.text
        delta = _text_event(slot, item, index, f"{slot.text_events}.delta", delta=event.text)
        return [*events, delta]

    def close(self, status: str = "completed") -> list[Event]:
        """Close the open message or reasoning item, if any, with `status`."""
        slot, self._open = self._open, None
        if slot is None:
            return []
        index = len(self.items) - 1
        item = self.items[index]
        item["status"] = status
        part = item[slot.field][0]
        return [
            _text_event(slot, item, index, f"{slot.text_events}.done", text=part["text"]),
            _text_event(slot, item, index, f"{slot.part_events}.done", part=part),
            _item_event("response.output_item.done", index, item),
        ]

    def _open_item(self, slot: TextSlot) -> list[Event]:
        self._open = slot
        index = len(self.items)
        if slot is MESSAGE_TEXT:
            item = {"id": self._item_id("msg", index), "type": "message", "role": "assistant"}
        else:
            item = {"id": self._item_id("rs", index), "type": "reasoning", "summary": []}
        item |= {"status": "in_progress", slot.field: []}
        added = _item_event("response.output_item.added", index, item)
        part = slot.part()
        item[slot.field] = [part]
        self.items.append(item)
        part_added = _text_event(slot, item, index, f"{slot.part_events}.added", part=dict(part))
        return [added, part_added]

    def _function_call(self, event: ToolCallEvent) -> list[Event]:
        call = event.call
        index = len(self.items)
        item = {"id": self._item_id("fc", index), "type": "function_call", "call_id": call.id}
        item |= {"name": call.name, "arguments": "", "status": "in_progress"}
        added = _item_event("response.output_item.added", index, item)
        item |= {"arguments": call.arguments, "status": "completed"}
        self.items.append(item)
        delta = _at(item, index, type="response.function_call_arguments.delta")
        done = _at(item, index, type="response.function_call_arguments.done", name=call.name)
        return [
            added,
            {**delta, "delta": call.arguments},
            {**done, "arguments": call.arguments},
            _item_event("response.output_item.done", index, item),
        ]

    def _item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self._request_id}_{index}"


def _text_event(
    slot: TextSlot, item: dict[str, Any], index: int, kind: str, **fields: Any
) -> Event:
    """An event about the text (or its part) of `item`, the output's `index`th."""
    event = {"type": kind, "item_id": item["id"], "output_index": index, slot.index_key: 0}
    event |= fields
    if slot.field_has_logprobs and kind.endswith(("text.delta", "text.done")):
        event["logprobs"] = []
    return event


def _at(item: dict[str, Any], index: int, **fields: Any) -> Event:
    """An event about `item`, the output's `index`th: its type first, then where it is."""
    kind = fields.pop("type")
    return {"type": kind, "item_id": item["id"], "output_index": index, **fields}


def _item_event(kind: str, index: int, item: dict[str, Any]) -> Event:
    return {"type": kind, "output_index": index, "item": copy.deepcopy(item)}


def response_reply(
    meta: ResponseMeta, pieces: Pieces, builder: MessageBuilder, keep: Keep
) -> dict[str, Any]:
    """The whole response of a non-streamed request (handed to `keep` too)."""
    output = meta.output_items()
    events, outcome = whole_reply(pieces, builder)
    for event in events:
        output.add(event)
    status = status_of(builder.finish_reason(outcome.finish_reason))
    output.close(status)
    response = meta.response(status, output.items, outcome)
    keep(response)
    return response


def response_events(
    meta: ResponseMeta, output: OutputItems, pieces: Pieces, builder: MessageBuilder, keep: Keep
) -> Iterator[Event | KeepAlive]:
    """The events of a stream: response.created and .in_progress, the items, then
    response.completed (or response.incomplete when max_output_tokens cut it off).
    While nothing else comes (a queued request, a long prefill), response.in_progress
    again at every keep-alive. The final response is handed to `keep` too."""
    yield {"type": "response.created", "response": meta.response("in_progress", [])}
    yield {"type": "response.in_progress", "response": meta.response("in_progress", [])}
    with closing(pieces):
        for piece in pieces:
            if isinstance(piece, KeepAlive):
                # The Responses API has no ping, and a comment is no event to a client
                # that gives up on a stream after minutes without one (Codex: 300 s),
                # as a long prompt's prefill on a cluster can take.
                items = copy.deepcopy(output.items)
                yield {
                    "type": "response.in_progress",
                    "response": meta.response("in_progress", items),
                }
            elif isinstance(piece, TextPiece):
                for event in builder.feed(piece.text):
                    yield from output.add(event)
            elif isinstance(piece, Outcome):
                for event in builder.finish():
                    yield from output.add(event)
                status = status_of(builder.finish_reason(piece.finish_reason))
                yield from output.close(status)
                final = meta.response(status, output.items, piece)
                keep(final)
                yield {"type": f"response.{status}", "response": final}
