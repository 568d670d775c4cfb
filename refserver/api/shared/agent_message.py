"""The product's message builder: reasoning, content and tool calls out of MiniMax output."""

from __future__ import annotations

from refserver.api.shared.prompting import Prompt
from refserver.tools import OutputEvent, OutputParser, ToolPlan, prompt_opens_reasoning


class AgentMessage:
    """``<think>`` text becomes reasoning and ``<minimax:tool_call>`` blocks tool calls.

    finish_reason: "tool_calls" when the model called a tool and finished the call, else
    the engine's reason: a call cut off by max_tokens ("length") or a stop string ("stop")
    keeps its raw text as content.
    """

    def __init__(self, parser: OutputParser):
        self._parser = parser

    def feed(self, text: str) -> list[OutputEvent]:
        return self._parser.feed(text)

    def finish(self) -> list[OutputEvent]:
        return self._parser.finish()

    def finish_reason(self, reason: str) -> str:
        finished_a_call = bool(self._parser.tool_calls) and not self._parser.tool_call_incomplete
        return "tool_calls" if finished_a_call else reason


def agent_builder(plan: ToolPlan, prompt: Prompt) -> AgentMessage:
    """Parse the tool calls the plan allows; start in reasoning when the prompt opened it."""
    parser = OutputParser(
        plan.tools,
        parse_tool_calls=plan.parse_tool_calls,
        starts_in_reasoning=prompt_opens_reasoning(prompt.text or ""),
        continues_text=prompt.continues_final,
    )
    return AgentMessage(parser)
