"""What a request's reply must be: ``response_format`` and forced or strict tool calls,
compiled into the grammar rank 0's sampler enforces (see refserver.constrain).

- ``json_object`` / ``json_schema``: the answer is one JSON value valid against the schema;
  with tools offered, a call of one of them is the other allowed answer.
- ``tool_choice`` "required" or a named function: the answer is a call.
- A tool with ``strict: true`` under "auto": the reply is free text, but every call the
  model opens names an offered tool and has valid arguments.

When the prompt opened ``<think>``, the reply first ends that block, within a thinking
budget of half the completion's tokens (at most THINKING_BUDGET_CAP): a model that would
think on is made to close it and answer. A request's own ``thinking_budget`` (Anthropic's
``thinking.budget_tokens``) bounds its thinking that way even when nothing else is
constrained.
"""

from __future__ import annotations

from typing import Any

from refserver.api.errors import invalid_request
from refserver.api.shared.prompting import Prompt, Vocabulary
from refserver.api.shared.schemas import SamplingFields, ToolFields
from refserver.constrain import ConstraintError, Reply, compile_constraint
from refserver.engine.interface import Constraint
from refserver.tools import ToolPlan, plan_tools, prompt_opens_reasoning

THINKING_BUDGET_CAP = 8192


def output_constraint(
    body: SamplingFields, prompt: Prompt, vocab: Vocabulary, max_tokens: int
) -> Constraint | None:
    """The compiled constraint of the request's reply, or None when it is free; a 400
    naming the field when its schema cannot be enforced."""
    reply = reply_for(body, prompt, max_tokens)
    if reply is None:
        return None
    try:
        # The served tokenizer: the grammar's tokens must be the model's.
        return compile_constraint(reply, vocab._tokenizer, vocab.eos_token_ids)
    except ConstraintError as exc:
        param = "response_format" if reply.json_schema is not None and not reply.tools else "tools"
        raise invalid_request(f"constrained decoding cannot enforce this: {exc}", param) from None


def reply_for(body: SamplingFields, prompt: Prompt, max_tokens: int) -> Reply | None:
    """What the reply must be (None: anything)."""
    format_ = body.response_format
    schema = None if format_ is None else format_.answer_schema
    strict = bool(format_ and format_.json_schema and format_.json_schema.strict)
    plan = _tool_plan(body)
    constrained = plan.must_call or plan.has_strict_tool or schema is not None
    budget = min(THINKING_BUDGET_CAP, max(1, max_tokens // 2))
    asked = body.thinking_budget
    if asked is not None:
        # A constrained answer keeps its room; a budget the reply cannot reach binds
        # nothing (Claude Code asks for max_tokens - 1), so it constrains nothing.
        budget = min(asked, budget) if constrained else asked
    reply = Reply(
        json_schema=schema,
        strict_json=strict,
        tools=tuple(plan.tools) if constrained else (),
        must_call=plan.must_call,
        single_call=plan.single_call,
        thinks_first=prompt_opens_reasoning(prompt.text or ""),
        thinking_budget=budget,
        bounded_thinking=asked is not None and asked < max_tokens - 1,
    )
    return reply if reply.constrains else None


def _tool_plan(body: SamplingFields) -> ToolPlan:
    """The request's tool plan (already checked when its prompt was rendered)."""
    if not isinstance(body, ToolFields):
        return ToolPlan([], parse_tool_calls=False)
    tools: list[dict[str, Any]] = body.template_tools()
    return plan_tools(tools, body.choice(), body.parallel_tool_calls is not False)
