"""The product's message builder: reasoning, content and tool calls out of MiniMax output."""

from __future__ import annotations

from refserver.api.prompting import Prompt
from refserver.tools import OutputEvent, OutputParser, ToolPlan, prompt_opens_reasoning


class AgentMessage:
    """``<think>`` text becomes reasoning and ``<minimax:tool_call>`` blocks tool calls.

    finish_reason: "length" when a tool call was cut off (its raw text is kept as
    content), else "tool_calls" when the model called a tool, else the engine's reason.
    """

    def __init__(self, parser: OutputParser):
        self._parser = parser

    def feed(self, text: str) -> list[OutputEvent]:
        return self._parser.feed(text)

    def finish(self) -> list[OutputEvent]:
        return self._parser.finish()

    def finish_reason(self, reason: str) -> str:
        if self._parser.tool_call_incomplete:
            return "length"
        return "tool_calls" if self._parser.tool_calls else reason


def agent_builder(plan: ToolPlan, prompt: Prompt) -> AgentMessage:
    """Parse the tool calls the plan allows; start in reasoning when the prompt opened it."""
    parser = OutputParser(
        plan.tools,
        parse_tool_calls=plan.parse_tool_calls,
        starts_in_reasoning=prompt_opens_reasoning(prompt.text or ""),
        continues_text=prompt.continues_final,
    )
    return AgentMessage(parser)
