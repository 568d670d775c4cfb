"""The grammar of a whole reply, in llguidance's Lark dialect.

A reply is: the end of a thinking block when the prompt opened one, then the answer.
The answer is one JSON value (``response_format``), a MiniMax tool call (a forced
``tool_choice``), either of them (a JSON answer with strict tools offered), or free
text in which every call the model opens is valid (strict tools under "auto").

Thinking stays free text, bounded: after ``thinking_budget`` tokens the grammar closes it
with ``</think>``, so a model that would think on never leaves the answer unwritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from refserver.constrain.lark import json_value
from refserver.constrain.tool_calls import call_rules

THINK_END = "</think>"
# What may come before the answer (the template puts a blank line after </think>).
LEADING_WHITESPACE = r"[ \n]{1,4}"

# Marker text -> its Lark item: a special token's id, or the quoted text.
Markers = Callable[[str], str]


@dataclass(frozen=True)
class Reply:
    """What a reply must be.

    json_schema: the answer is JSON valid against it ({"type": "object"} for json_object).
    strict_json: keywords the JSON compiler cannot enforce are errors, not ignored.
    tools: the tools a call may name (OpenAI form; ``strict: true`` ones must have
    schemas the grammar enforces whole); empty: no calls are constrained.
    must_call: the answer is a tool call; single_call: exactly one invoke.
    thinks_first: the prompt opened ``<think>``, so the reply starts inside it.
    bounded_thinking: the request set the thinking budget itself, so the reply is
    constrained for it alone (the answer then free).
    """

    json_schema: dict[str, Any] | None = None
    strict_json: bool = False
    tools: tuple[dict[str, Any], ...] = ()
    must_call: bool = False
    single_call: bool = False
    thinks_first: bool = False
    thinking_budget: int = 1024
    bounded_thinking: bool = False

    @property
    def constrains(self) -> bool:
        thinking = self.thinks_first and self.bounded_thinking
        return self.json_schema is not None or bool(self.tools) or thinking


def reply_grammar(reply: Reply, marker: Markers) -> str:
    """The Lark grammar of `reply`; `marker` renders the format's marker tokens."""
    lines = ["start: " + _start(reply)]
    if reply.thinks_first:
        lines.append(f"thinking[max_tokens={max(1, reply.thinking_budget)}]: /(?s:.*)/")
        lines.append(f"think_end: {marker(THINK_END)}")
    if reply.json_schema is not None:
        lines.append("json: " + json_value(reply.json_schema, reply.strict_json))
    if reply.tools:
        lines += call_rules(reply.tools, reply.single_call, marker)
    if not reply.must_call and reply.json_schema is None:
        lines.append("TEXT: /(?s:.+)/")
    else:
        lines.append(f"LEAD: /{LEADING_WHITESPACE}/")
    return "\n".join(lines) + "\n"


def _start(reply: Reply) -> str:
    think = "thinking think_end " if reply.thinks_first else ""
    if reply.must_call:
        return think + "LEAD? calls"
    if reply.json_schema is not None:
        return think + ("LEAD? (json | calls)" if reply.tools else "LEAD? json")
    return think + ("TEXT? (calls TEXT?)*" if reply.tools else "TEXT?")
