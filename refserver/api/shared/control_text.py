"""Message text that spells the model's control tokens is read as text, not as them.

A chat template renders a conversation into one string, and the tokenizer reads every
spelling of a special token in it as that token: a user message, or a tool result
holding a file, that contains MiniMax's ``]~b]`` would open a turn of its own (a forged
system or assistant turn), and so would the model's own reply that quoted the file, on
the next turn. So each such spelling in a message's text (its content, reasoning,
tool calls: names and arguments, keys too) and in the tools offered (names, descriptions,
schemas) goes through the template as a placeholder; the rendered prompt is
then tokenized between the placeholders as before, and each spelling as ordinary text.
The tokenizer splits its input at special tokens anyway, so the text around a spelling
gets the tokens the whole prompt would give it. A conversation that spells none is
tokenized whole, exactly as before (and as ``mlx_lm`` does it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shielded:
    """Messages and tools whose control spellings are placeholders, and the spellings."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    spellings: list[str]
    nonce: str

    def pieces(self, rendered: str) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_spelling) pieces, in order, each placeholder
        back to the control token's spelling it stands for."""
        parts = re.split("\ue000" + self.nonce + r"(\d+)\ue001", rendered)
        pieces = []
        for index, part in enumerate(parts):
            if index % 2:
                pieces.append((self.spellings[int(part)], True))
            elif part:
                pieces.append((part, False))
        return pieces


def shield(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, control: Iterable[str]
) -> Shielded | None:
    """Placeholders for every spelling of a `control` string in the messages' and the
    tools' texts; None when there is none."""
    spellings = sorted({text for text in control if text}, key=len, reverse=True)
    if not spellings:
        return None
    nonce = secrets.token_hex(8)  # no message can spell a placeholder by chance
    pattern = re.compile("|".join(re.escape(s) for s in spellings))
    found = False

    def shielded(text: str) -> str:
        nonlocal found
        replaced = pattern.sub(lambda m: f"\ue000{nonce}{spellings.index(m[0])}\ue001", text)
        found = found or replaced != text
        return replaced

    # A message's role picks the template's own markers: it is not the client's text.
    result = [
        {key: value if key == "role" else _texts(value, shielded) for key, value in m.items()}
        for m in messages
    ]
    offered = None if tools is None else _texts(tools, shielded)
    return Shielded(result, offered, spellings, nonce) if found else None


def _texts(value: Any, shielded: Callable[[str], str]) -> Any:
    """`value` with every string in it (texts, names, arguments, keys) shielded."""
    if isinstance(value, str):
        return shielded(value)
    if isinstance(value, list):
        return [_texts(item, shielded) for item in value]
    if isinstance(value, dict):
        return {shielded(key): _texts(item, shielded) for key, item in value.items()}
    return value
