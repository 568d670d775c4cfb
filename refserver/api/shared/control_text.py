"""Message text that spells the model's control tokens is read as text, not as them.

A chat template renders a conversation into one string, and the tokenizer reads every
spelling of a special token in it as that token: a user message, or a tool result
holding a file, that contains MiniMax's ``]~b]`` would open a turn of its own (a forged
system or assistant turn). So the texts of system, user and tool messages that spell a
control token are rendered as placeholders; the rendered prompt is then tokenized piece
by piece: the template's pieces as before, the messages' texts with their special
tokens split into ordinary ones. A conversation that spells none is tokenized whole,
exactly as before (and as ``mlx_lm`` does it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The assistant's own text keeps its markers: the template reads them (reasoning).
SHIELDED_ROLES = frozenset(("system", "developer", "user", "tool"))


@dataclass(frozen=True)
class Shielded:
    """Messages whose control-spelling texts are placeholders, and those texts."""

    messages: list[dict[str, Any]]
    texts: list[str]
    nonce: str

    def pieces(self, rendered: str) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_message_text) pieces, in order, with each
        placeholder back to its text (a template may repeat or drop one)."""
        parts = re.split("\ue000" + re.escape(self.nonce) + r":(\d+)\ue001", rendered)
        pieces = []
        for index, part in enumerate(parts):
            if index % 2:
                pieces.append((self.texts[int(part)], True))
            elif part:
                pieces.append((part, False))
        return pieces


def shield(messages: list[dict[str, Any]], control: Iterable[str]) -> Shielded | None:
    """Placeholders for the texts of system, user and tool messages that spell one of
    the `control` strings; None when none does."""
    spellings = [text for text in control if text]
    texts: list[str] = []
    nonce = secrets.token_hex(8)  # no message can spell a placeholder by chance

    def text_of(text: Any) -> Any:
        if not isinstance(text, str) or not any(s in text for s in spellings):
            return text
        texts.append(text)
        return _placeholder(nonce, str(len(texts) - 1))

    shielded = [_shielded(message, text_of) for message in messages]
    return Shielded(shielded, texts, nonce) if texts else None


def _shielded(message: dict[str, Any], text_of) -> dict[str, Any]:
    if message.get("role") not in SHIELDED_ROLES:
        return message
    content = message.get("content")
    if isinstance(content, list):  # text parts
        parts = [
            {**part, "text": text_of(part["text"])}
            if isinstance(part, dict) and "text" in part
            else part
            for part in content
        ]
        return {**message, "content": parts}
    return {**message, "content": text_of(content)}


def _placeholder(nonce: str, index: str) -> str:
    return f"\ue000{nonce}:{index}\ue001"
