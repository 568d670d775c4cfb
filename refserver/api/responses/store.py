"""Stored responses, in memory: what previous_response_id, item_reference and
GET /v1/responses/{id} read.

OpenAI stores a response unless the request says `"store": false`, and clients lean on
it: the Vercel AI SDK sends the items of earlier steps as item references, the SDK's
docs chain turns with previous_response_id. Here the store lives in rank 0's memory,
bounded (least recently used responses go first), and ends with the server: a
reference it cannot resolve is a 400 that says to send the whole conversation.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from refserver.api.errors import ApiError, invalid_request
from refserver.api.responses.schemas import InputItem, ItemReference, ResponsesRequest

# Characters of JSON held for stored responses, each counted with its whole conversation
# (earlier turns' items are shared in memory, so this errs on the side of keeping less):
# a long agent conversation's latest turn is a few hundred kB.
MAX_STORED_CHARS = 64 * 1024 * 1024
_ITEM = TypeAdapter(InputItem)


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object as it was sent
    conversation: tuple[Any, ...]  # its input items (earlier turns' first), then its output
    chars: int  # of its conversation's items and the response object, as JSON


class ResponseStore:
    """Responses by id and their output items by id; thread-safe, least recently used
    first out once more than `max_chars` are held."""

    def __init__(self, max_chars: int = MAX_STORED_CHARS):
        self._max_chars = max_chars
        self._chars = 0
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()
        self._items: dict[str, tuple[str, Any]] = {}  # item id: (response id, item)
        self._lock = threading.Lock()

    def conversation(self, body: ResponsesRequest) -> list[Any]:
        """The request's whole conversation: the stored one it continues
        (previous_response_id), then its input with item references resolved."""
        items: list[Any] = []
        if body.previous_response_id is not None:
            items += self._get(body.previous_response_id, "previous_response_id").conversation
        for index, item in enumerate(body.input_items()):
            if isinstance(item, ItemReference):
                item = self._item(item.id, f"input[{index}]")
            items.append(item)
        return items

    def save(self, conversation: list[Any], response: dict[str, Any]) -> None:
        """Keep `response`, and the conversation it ended, for later requests."""
        try:
            output = [_ITEM.validate_python(item) for item in response["output"]]
        except ValidationError:  # an item no input can hold: nothing could continue it
            return
        chars = len(json.dumps(response, ensure_ascii=False))
        chars += sum(len(item.model_dump_json()) for item in conversation)
        stored = StoredResponse(response, (*conversation, *output), chars)
        with self._lock:
            self._drop(response["id"])
            self._responses[response["id"]] = stored
            for item in output:
                self._items[item.id] = (response["id"], item)
            self._chars += chars
            while self._chars > self._max_chars and len(self._responses) > 1:
                self._drop(next(iter(self._responses)))

    def response(self, response_id: str) -> dict[str, Any]:
        """The stored response object, or a 404."""
        return self._get(response_id, None).response

    def delete(self, response_id: str) -> None:
        """Forget a response (and its items), or a 404."""
        self._get(response_id, None)
        with self._lock:
            self._drop(response_id)

    def _get(self, response_id: str, param: str | None) -> StoredResponse:
        with self._lock:
            stored = self._responses.get(response_id)
            if stored is not None:
                self._responses.move_to_end(response_id)
                return stored
        message = f"no response with id {response_id[:100]!r} is stored here"
        if param is None:
            raise ApiError(404, message, code="not_found")
        raise invalid_request(f"{message}: {_GONE}", param, code="not_found")

    def _item(self, item_id: str, param: str) -> Any:
        with self._lock:
            found = self._items.get(item_id)
            if found is not None:
                self._responses.move_to_end(found[0])
                return found[1]
        raise invalid_request(f"no item with id {item_id[:100]!r} is stored here: {_GONE}", param)

    def _drop(self, response_id: str) -> None:
        stored = self._responses.pop(response_id, None)
        if stored is None:
            return
        self._chars -= stored.chars
        for item in stored.response["output"]:
            if self._items.get(item["id"], (None,))[0] == response_id:
                del self._items[item["id"]]


_GONE = (
    "responses are kept in the server's memory until it restarts or needs the room; "
    "send the whole conversation as input"
)
