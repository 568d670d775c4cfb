"""Where generated text becomes the fields of a chat message: the one place to plug in
reasoning and tool-call parsing.

A ``MessageBuilder`` is made per request. It is fed visible text as it is generated
and returns delta fragments (``{"content": ...}``, later also ``{"reasoning_content":
...}`` or ``{"tool_calls": [...]}``). A stream sends each fragment as one delta; a
non-streamed reply merges them into one message.
"""

from __future__ import annotations

from typing import Any, Protocol

Delta = dict[str, Any]


class MessageBuilder(Protocol):
    def feed(self, text: str) -> list[Delta]:
        """Fragments completed by this text (may hold some text back)."""
        ...

    def finish(self) -> list[Delta]:
        """Fragments still held back at the end of the generation."""
        ...

    def finish_reason(self, reason: str) -> str:
        """The reply's finish_reason given the engine's ("stop"/"length")."""
        ...


class PlainText:
    """All generated text is content."""

    def feed(self, text: str) -> list[Delta]:
        return [{"content": text}] if text else []

    def finish(self) -> list[Delta]:
        return []

    def finish_reason(self, reason: str) -> str:
        return reason


def merge_deltas(deltas: list[Delta]) -> Delta:
    """Fold delta fragments into message fields: strings concatenate, lists extend."""
    message: Delta = {}
    for delta in deltas:
        for key, value in delta.items():
            if key in message and isinstance(value, str | list):
                message[key] = message[key] + value
            else:
                message[key] = value
    return message
