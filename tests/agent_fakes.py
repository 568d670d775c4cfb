"""Scripted model output for the agent-facing API tests: the tiny MiniMax-style
tokenizer (real chat template with tools and <think>) and the fake engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_fakes import FakeEngine, settings

from refserver.api import create_app


def openai_tool(name: str, **properties: dict) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [
    openai_tool("read_file", path={"type": "string"}, limit={"type": "integer"}),
    openai_tool("run", command={"type": "string"}),
]


def tool_block(*calls: tuple[str, dict[str, str]]) -> str:
    """A <minimax:tool_call> block with one invoke per (name, raw parameters)."""
    invokes = ""
    for name, params in calls:
        body = "".join(f'<parameter name="{k}">{v}</parameter>\n' for k, v in params.items())
        invokes += f'<invoke name="{name}">\n{body}</invoke>\n'
    return f"<minimax:tool_call>\n{invokes}</minimax:tool_call>"


def scripted(tokenizer, output: str, *, end: bool = True, **overrides):
    """(test client, engine): every request generates `output` (then EOS when `end`)."""
    tokens = tokenizer.encode(output, add_special_tokens=False)
    engine = FakeEngine(tokens, eos_id=tokenizer.eos_token_id if end else None)
    app = create_app(engine, tokenizer, settings(context_length=4096, **overrides))
    return app.test_client(), engine


def prompt_of(engine: FakeEngine, tokenizer) -> str:
    """The text of the last prompt the engine received."""
    return tokenizer.decode(engine.requests[-1].prompt_tokens)


def no_nulls(value: Any) -> bool:
    """True when no value anywhere inside is None."""
    if isinstance(value, dict):
        return all(no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(no_nulls(v) for v in value)
    return value is not None


def arguments(call: dict[str, Any]) -> dict[str, Any]:
    return json.loads(call["function"]["arguments"])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))
