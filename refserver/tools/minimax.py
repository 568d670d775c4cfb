"""MiniMax-M2 tool calls: ``<minimax:tool_call>`` blocks of ``<invoke>`` elements.

A block looks like::

    <minimax:tool_call>
    <invoke name="read_file">
    <parameter name="path">/tmp/a.txt</parameter>
    </invoke>
    </minimax:tool_call>

Names may be double-quoted, single-quoted or bare; a block may hold several invokes.
``BlockScanner`` reads a block in order as its text arrives. A parameter value is free
text, so it may itself hold ``</invoke>``, ``</minimax:tool_call>`` or ``</parameter>``.
Inside a value only ``</parameter>`` can end it, and only when followed (after
whitespace) by what the format puts there: ``<parameter name=...>``, the end of the
block, or a ``</invoke>`` that is itself followed by ``<invoke name=...>`` or the end of
the block. Until the text tells, the scanner waits. (A value holding such a whole closing
sequence is still read as its end: no reader could tell them apart.) Finding blocks
within the output, and what happens to text around them, is the job of ``OutputParser``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from enum import Enum

from refserver.tools.arguments import tool_parameters, type_arguments

TOOL_CALL_START = "<minimax:tool_call>"
TOOL_CALL_END = "</minimax:tool_call>"

_INVOKE_OPEN = "<invoke"
_PARAMETER_OPEN = "<parameter"
_PARAMETER_CLOSE = "</parameter>"
_INVOKE_CLOSE = "</invoke>"
_NAME = r"""name\s*=\s*(?:"([^"]*)"|'([^']*)'|([^>]*))\s*>"""
_PATTERNS = {
    _INVOKE_OPEN: re.compile(r"<invoke\s+" + _NAME),
    _PARAMETER_OPEN: re.compile(r"<parameter\s+" + _NAME),
    **{tag: re.compile(re.escape(tag)) for tag in (_PARAMETER_CLOSE, _INVOKE_CLOSE, TOOL_CALL_END)},
}
# What the format puts after a closing tag, once whitespace is skipped: a closing tag
# followed by anything else is text (in a parameter value, say).
_FOLLOWERS = {
    _PARAMETER_CLOSE: (_PARAMETER_OPEN, _INVOKE_CLOSE, TOOL_CALL_END),
    _INVOKE_CLOSE: (_INVOKE_OPEN, TOOL_CALL_END),
}
_SPACE = re.compile(r"\s*")

Invoke = tuple[str, dict[str, str]]  # (tool name, raw arguments)


class _Place(Enum):
    BETWEEN_INVOKES = "between invokes"
    IN_INVOKE = "in an invoke"
    IN_VALUE = "in a parameter value"


# The tags that mean something at each place; any other "<" is plain text there.
_TAGS_AT = {
    _Place.BETWEEN_INVOKES: (TOOL_CALL_END, _INVOKE_OPEN),
    _Place.IN_INVOKE: (TOOL_CALL_END, _INVOKE_CLOSE, _PARAMETER_OPEN, _INVOKE_OPEN),
    _Place.IN_VALUE: (_PARAMETER_CLOSE,),
}


@dataclass(frozen=True)
class ToolCall:
    """One function call: ``arguments`` is a JSON object as a string."""

    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    """A fresh ``call_<24 hex>`` id."""
    return "call_" + secrets.token_hex(12)


def parse_tool_block(block: str, tools: list[dict] | None = None) -> list[ToolCall]:
    """The calls in the text between ``TOOL_CALL_START`` and ``TOOL_CALL_END``.

    Arguments are typed by the matching tool's schema in ``tools`` (OpenAI format).
    Returns an empty list when the block holds no ``<invoke>``.
    """
    scanner = BlockScanner()
    scanner.feed(block)
    scanner.close()
    return tool_calls(scanner.invokes, tools)


def tool_calls(invokes: list[Invoke], tools: list[dict] | None) -> list[ToolCall]:
    """Calls with fresh ids and arguments typed by the matching tool's schema."""
    calls = []
    for name, raw in invokes:
        arguments = type_arguments(raw, tool_parameters(tools, name))
        calls.append(ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False)))
    return calls


class BlockScanner:
    """Reads one block, the text after ``TOOL_CALL_START``, as it arrives.

    ``feed`` returns the text after the block's real closing tag once it has come;
    ``invokes`` then holds its calls. ``close`` ends the text: whatever is open (an
    invoke, a value cut short or missing its closing tags) ends with it.
    """

    def __init__(self) -> None:
        self.invokes: list[Invoke] = []
        self.ended = False
        self._place = _Place.BETWEEN_INVOKES
        self._text = ""  # read up to _pos: only a "<" that cannot be told yet is kept
        self._pos = 0
        self._parameter = ""  # the parameter whose value is being read
        self._value: list[str] = []

    def feed(self, text: str) -> str | None:
        """Read more of the block; once its closing tag has come, the text after it."""
        self._text = self._text[self._pos :] + text
        self._pos = 0
        self._read(final=False)
        return self._text[self._pos :] if self.ended else None

    def close(self) -> None:
        """The text has ended: its end is the end of the block."""
        if self.ended:
            return
        self._read(final=True)
        if self._place is _Place.IN_VALUE:
            self._end_value()
        self.ended = True

    def _read(self, final: bool) -> None:
        """Act on each "<" in turn until the block ends or one cannot be told yet."""
        while not self.ended:
            start = self._text.find("<", self._pos)
            self._skip_to(len(self._text) if start < 0 else start)
            if start < 0 or not self._read_tag(final):
                return

    def _skip_to(self, end: int) -> None:
        """Pass over plain text: part of the value being read, else ignored."""
        if self._place is _Place.IN_VALUE:
            self._value.append(self._text[self._pos : end])
        self._pos = end

    def _read_tag(self, final: bool) -> bool:
        """Act on the "<" at the read position; False while the text cannot tell."""
        undecided = False
        for tag in _TAGS_AT[self._place]:
            verdict, match = _tag_at(self._text, self._pos, tag, final)
            if verdict and match is not None:
                self._pos = match.end()
                self._enter(tag, match)
                return True
            undecided = undecided or verdict is None
        if undecided:
            return False
        self._skip_to(self._pos + 1)
        return True

    def _enter(self, tag: str, match: re.Match) -> None:
        if tag == TOOL_CALL_END:
            self.ended = True
        elif tag == _INVOKE_OPEN:
            self.invokes.append((_name_of(match), {}))
            self._place = _Place.IN_INVOKE
        elif tag == _INVOKE_CLOSE:
            self._place = _Place.BETWEEN_INVOKES
        elif tag == _PARAMETER_OPEN:
            self._parameter, self._value = _name_of(match), []
            self._place = _Place.IN_VALUE
        else:
            self._end_value()

    def _end_value(self) -> None:
        _, raw = self.invokes[-1]
        raw[self._parameter] = _strip_format_newlines("".join(self._value))
        self._place = _Place.IN_INVOKE


def _tag_at(text: str, at: int, tag: str, final: bool) -> tuple[bool | None, re.Match | None]:
    """Whether ``tag`` is at ``at`` (with its match), or None while more text may tell.

    A closing tag that has followers counts only when they follow it; when the text is
    final, its end is the end of the block.
    """
    match = _PATTERNS[tag].match(text, at)
    if match is None:
        return (None if not final and _may_grow_into(text, at, tag) else False), None
    if tag not in _FOLLOWERS:
        return True, match
    after = _SPACE.match(text, match.end()).end()
    if after == len(text):
        return (True if final else None), match
    verdicts = {_tag_at(text, after, follower, final)[0] for follower in _FOLLOWERS[tag]}
    return (True if True in verdicts else None if None in verdicts else False), match


def _may_grow_into(text: str, at: int, tag: str) -> bool:
    """Whether more text could still make ``tag`` appear at ``at``."""
    if not tag.startswith(text[at : at + len(tag)]):
        return False
    if tag.endswith(">"):
        return len(text) - at < len(tag)
    return text.find(">", at) < 0  # an opening tag ends at its first ">"


def _name_of(match: re.Match) -> str:
    double, single, bare = match.groups()
    return double if double is not None else single if single is not None else bare.strip()


def _strip_format_newlines(value: str) -> str:
    """Drop the one newline the format puts after ``>`` and before ``</parameter>``."""
    value = value.removeprefix("\n")
    return value.removesuffix("\n")
