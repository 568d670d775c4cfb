"""Plan ``tool_choice`` and ``parallel_tool_calls``: the tools to render, and the calls to force.

"none" renders no tools and parses no calls. "required" and a named function render the
allowed tools with a system-prompt hint, and set ``must_call``: constrained decoding (see
refserver.constrain) then makes the reply one call of an allowed tool with arguments valid
against its schema. ``parallel_tool_calls=False`` adds a hint and sets ``single_call``: a
forced or constrained reply holds exactly one call.
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
    must_call: the reply must be a call of one of ``tools``.
    single_call: a call block holds one invoke.
    """

    tools: list[dict]
    parse_tool_calls: bool
    system_hint: str | None = None
    must_call: bool = False
    single_call: bool = False

    @property
    def has_strict_tool(self) -> bool:
        """Some tool asks for schema-valid arguments whenever it is called."""
        return any((tool.get("function") or {}).get("strict") is True for tool in self.tools)


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
    must_call = choice != "auto"
    return ToolPlan(offered, True, hint, must_call, single_call=not parallel_tool_calls)


def _chosen_name(choice: Any) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        raise ToolChoiceError(
            'tool_choice must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}, got ' + repr(choice)
        )
    return name
