"""Honour ``tool_choice`` and ``parallel_tool_calls`` as far as a free-running model allows.

The engine samples freely: it cannot force a tool call. So "required" and a named function
are honoured by offering only the allowed tools and adding a system-prompt hint; the model
may still answer in plain text. "none" is enforced fully: no tools are rendered and tool
calls are not parsed. ``parallel_tool_calls=False`` adds a hint only; every call the model
makes is still returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ToolChoiceError(ValueError):
    """``tool_choice`` is malformed or names a tool the request does not offer."""


@dataclass(frozen=True)
class ToolPlan:
    """What to render into the prompt and whether to parse tool calls out of the output.

    tools: the tools to render (empty: render none).
    parse_tool_calls: pass to ``OutputParser``.
    system_hint: a sentence to append to the system prompt, or None.
    """

    tools: list[dict]
    parse_tool_calls: bool
    system_hint: str | None = None


def plan_tools(
    tools: list[dict] | None, tool_choice: Any = "auto", parallel_tool_calls: bool = True
) -> ToolPlan:
    """The tools to offer for a request's ``tools``/``tool_choice`` (None means "auto")."""
    tools = list(tools or [])
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none" or (choice == "auto" and not tools):
        return ToolPlan([], parse_tool_calls=False)
    if choice == "auto":
        offered, hint = tools, None
    elif choice == "required":
        if not tools:
            raise ToolChoiceError('tool_choice "required" needs a non-empty "tools" list')
        offered, hint = tools, "You must call at least one of the provided tools."
    else:
        name = _chosen_name(choice)
        offered = [tool for tool in tools if (tool.get("function") or {}).get("name") == name]
        if not offered:
            raise ToolChoiceError(f'tool_choice names function "{name}", which is not in "tools"')
        hint = f"You must call the tool `{name}`."
    if not parallel_tool_calls:
        hint = " ".join(filter(None, [hint, "Call at most one tool per reply."]))
    return ToolPlan(offered, parse_tool_calls=True, system_hint=hint)


def _chosen_name(choice: Any) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        raise ToolChoiceError(
            'tool_choice must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}, got ' + repr(choice)
        )
    return name
