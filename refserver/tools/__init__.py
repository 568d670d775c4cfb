"""Tool calls and reasoning in model output: pure text in, structures out.

- ``plan_tools``: which tools to render for a request's ``tools``/``tool_choice``.
- ``OutputParser``: streaming split of the output into ``ReasoningDelta``,
  ``ContentDelta`` and ``ToolCallEvent``; ``parse_output`` does the same for a whole text.
- ``prompt_opens_reasoning``: whether the rendered prompt left a ``<think>`` open.
"""

from refserver.tools.choice import ToolChoiceError, ToolPlan, plan_tools
from refserver.tools.minimax import ToolCall
from refserver.tools.output import (
    ContentDelta,
    OutputEvent,
    OutputParser,
    ParsedOutput,
    ReasoningDelta,
    ToolCallEvent,
    parse_output,
    prompt_opens_reasoning,
)

__all__ = [
    "ContentDelta",
    "OutputEvent",
    "OutputParser",
    "ParsedOutput",
    "ReasoningDelta",
    "ToolCall",
    "ToolCallEvent",
    "ToolChoiceError",
    "ToolPlan",
    "parse_output",
    "plan_tools",
    "prompt_opens_reasoning",
]
