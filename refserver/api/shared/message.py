"""Where generated text becomes message parts: the one place to plug in reasoning and
tool-call parsing, shared by every wire format.

A ``MessageBuilder`` is made per request from the request's ``ToolPlan`` and its prompt.
It is fed visible text as it is generated and returns ``OutputEvent``s (content,
reasoning, complete tool calls); each wire format (OpenAI chat, Anthropic Messages)
turns those events into its own deltas, chunks or content blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from typing import Protocol

from refserver.api.shared.generation import Outcome, Pieces, TextPiece
from refserver.api.shared.prompting import Prompt
from refserver.tools import ContentDelta, OutputEvent, ToolPlan


class MessageBuilder(Protocol):
    def feed(self, text: str) -> list[OutputEvent]:
        """Events completed by this text (may hold some text back)."""
        ...

    def finish(self) -> list[OutputEvent]:
        """Events still held back at the end of the generation."""
        ...

    def finish_reason(self, reason: str) -> str:
        """ "stop", "length" or "tool_calls", given the engine's ("stop"/"length")."""
        ...


MessageBuilderFactory = Callable[[ToolPlan, Prompt], MessageBuilder]


def whole_reply(pieces: Pieces, builder: MessageBuilder) -> tuple[list[OutputEvent], Outcome]:
    """A non-streamed reply: every event its text makes, and how it ended."""
    events: list[OutputEvent] = []
    outcome: Outcome | None = None
    with closing(pieces):
        for piece in pieces:
            if isinstance(piece, TextPiece):
                events += builder.feed(piece.text)
            elif isinstance(piece, Outcome):
                outcome = piece
    assert outcome is not None, "generate() ends with an Outcome or raises"
    return events + builder.finish(), outcome


class PlainText:
    """All generated text is content."""

    def feed(self, text: str) -> list[OutputEvent]:
        return [ContentDelta(text)] if text else []

    def finish(self) -> list[OutputEvent]:
        return []

    def finish_reason(self, reason: str) -> str:
        return reason


def plain_text_builder(plan: ToolPlan, prompt: Prompt) -> MessageBuilder:
    """No parsing: the model's raw text is the content."""
    return PlainText()
