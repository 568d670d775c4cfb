"""MiniMax-M2 tool calls: ``<minimax:tool_call>`` blocks of ``<invoke>`` elements.

A block looks like::

    <minimax:tool_call>
    <invoke name="read_file">
    <parameter name="path">/tmp/a.txt</parameter>
    </invoke>
    </minimax:tool_call>

Names may be double-quoted, single-quoted or bare; a block may hold several invokes.
The block is scanned in order (not matched with one greedy pattern), so a parameter value
that itself contains "</invoke>" stays whole. Finding blocks within the output, and what
happens to text around them, is the job of ``OutputParser``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from refserver.tools.arguments import tool_parameters, type_arguments

TOOL_CALL_START = "<minimax:tool_call>"
TOOL_CALL_END = "</minimax:tool_call>"

_NAME = r"""name\s*=\s*(?:"([^"]*)"|'([^']*)'|([^>]*))\s*>"""
_INVOKE_OPEN = re.compile(r"<invoke\s+" + _NAME)
_PARAMETER_OPEN = re.compile(r"\s*<parameter\s+" + _NAME)
_PARAMETER_CLOSE = "</parameter>"
_INVOKE_CLOSE = "</invoke>"


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
    calls = []
    for name, raw in _scan_invokes(block):
        arguments = type_arguments(raw, tool_parameters(tools, name))
        calls.append(ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False)))
    return calls


def _scan_invokes(block: str) -> list[tuple[str, dict[str, str]]]:
    """(name, raw arguments) of each invoke, tolerating a missing closing tag at the end."""
    invokes = []
    pos = 0
    while match := _INVOKE_OPEN.search(block, pos):
        raw: dict[str, str] = {}
        pos = match.end()
        while parameter := _PARAMETER_OPEN.match(block, pos):
            end = block.find(_PARAMETER_CLOSE, parameter.end())
            end = len(block) if end < 0 else end
            raw[_name_of(parameter)] = _strip_format_newlines(block[parameter.end() : end])
            pos = end + len(_PARAMETER_CLOSE)
        close = block.find(_INVOKE_CLOSE, pos)
        pos = len(block) if close < 0 else close + len(_INVOKE_CLOSE)
        invokes.append((_name_of(match), raw))
    return invokes


def _name_of(match: re.Match) -> str:
    double, single, bare = match.groups()
    return double if double is not None else single if single is not None else bare.strip()


def _strip_format_newlines(value: str) -> str:
    """Drop the one newline the format puts after ``>`` and before ``</parameter>``."""
    value = value.removeprefix("\n")
    return value.removesuffix("\n")
