"""The prompt of a chat request: which tools to offer, the hint that goes with them, the
rendered template. Shared by the OpenAI and Anthropic routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refserver.api.errors import invalid_request
from refserver.api.shared.prompting import Prompt, Vocabulary
from refserver.tools import ToolChoiceError, ToolPlan, plan_tools


def render_chat(
    vocab: Vocabulary,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    template_kwargs: Mapping[str, Any] | None = None,
    continue_final: bool = False,
) -> tuple[Prompt, ToolPlan]:
    """Plan the tools (OpenAI format) for tool_choice, then render the plan's tools.

    With `continue_final`, the prompt ends inside the last (assistant) message, so the
    reply continues it. A malformed tool_choice is a 400 naming "tool_choice".
    """
    try:
        plan = plan_tools(tools, tool_choice, parallel_tool_calls)
    except ToolChoiceError as exc:
        raise invalid_request(str(exc), "tool_choice") from None
    messages = with_system_hint(messages, plan.system_hint)
    return vocab.chat_prompt(messages, plan.tools, template_kwargs, continue_final), plan


def with_system_hint(messages: list[dict[str, Any]], hint: str | None) -> list[dict[str, Any]]:
    """Append the hint to the leading system message, or start with one that holds it."""
    if not hint:
        return messages
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        content = f"{first['content']}\n\n{hint}" if first["content"] else hint
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]
