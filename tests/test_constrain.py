"""Constrained decoding without ranks: grammars, matchers and rank 0's sampler, driven by
random logits on the tiny tokenizer (a random model never writes valid JSON by chance)."""

from __future__ import annotations

import json
import time

import jsonschema
import mlx.core as mx
import numpy as np
import pytest
from transformers import AutoTokenizer

from refserver.constrain import ConstraintError, Reply, compile_constraint
from refserver.engine.interface import SamplingParams
from refserver.engine.sampling import SequenceSampler, draw
from refserver.tools import parse_output
from simcluster.tokenizer import save_tokenizer, train_tokenizer

VOCAB = 512
EOS = 2
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
        "size": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["name", "size"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "move",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string", "pattern": "^[A-H][1-8]$"},
                "steps": {"type": "integer", "minimum": 1, "maximum": 3},
            },
            "required": ["to"],
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(VOCAB), directory, 4096)
    return AutoTokenizer.from_pretrained(str(directory))


def _generate(tokenizer, reply: Reply, seed: int, limit: int = 400) -> str:
    """Greedy over random logits, masked by the grammar, up to the end-of-sequence token."""
    return tokenizer.decode(_tokens(tokenizer, reply, seed, limit))


def _tokens(tokenizer, reply: Reply, seed: int, limit: int) -> list[int]:
    matcher = compile_constraint(reply, tokenizer, [EOS]).start()
    rng, tokens = np.random.default_rng(seed), []
    for _ in range(limit):
        allowed = np.flatnonzero(matcher.allowed())
        token = int(allowed[np.argmax(rng.normal(size=VOCAB)[allowed])])
        if token == EOS:
            return tokens
        matcher.advance(token)
        tokens.append(token)
    raise AssertionError(f"no end within {limit} tokens: {tokenizer.decode(tokens)!r}")


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_answers_validate(tokenizer, seed):
    text = _generate(tokenizer, Reply(json_schema=SCHEMA, strict_json=True), seed)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_thinking_is_closed_within_its_budget(tokenizer):
    reply = Reply(json_schema=SCHEMA, thinks_first=True, thinking_budget=5)
    tokens = _tokens(tokenizer, reply, 0, 400)
    assert tokens.index(tokenizer.convert_tokens_to_ids("</think>")) <= 5
    parsed = parse_output(
        tokenizer.decode(tokens), parse_tool_calls=False, starts_in_reasoning=True
    )
    jsonschema.validate(json.loads(parsed.content), SCHEMA)


@pytest.mark.parametrize("budget", [1, 5, 12])
def test_a_thinking_budget_alone_closes_thinking_and_frees_the_answer(tokenizer, budget):
    reply = Reply(thinks_first=True, thinking_budget=budget, bounded_thinking=True)
    assert reply.constrains and not Reply(thinks_first=True, thinking_budget=budget).constrains
    matcher = compile_constraint(reply, tokenizer, [EOS]).start()
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    rng, tokens = np.random.default_rng(budget), []
    while think_end not in tokens:
        allowed = np.flatnonzero(matcher.allowed())
        token = int(allowed[np.argmax(rng.normal(size=VOCAB)[allowed])])
        matcher.advance(token)
        tokens.append(token)
    assert len(tokens) <= budget + 1
    assert matcher.allowed().sum() > VOCAB // 2  # then free text (or the end)


@pytest.mark.parametrize("thinks_first", [False, True])
def test_a_forced_single_call_is_one_valid_call(tokenizer, thinks_first):
    reply = Reply(
        tools=(TOOL,),
        must_call=True,
        single_call=True,
        thinks_first=thinks_first,
        thinking_budget=20,
    )
    text = _generate(tokenizer, reply, 1)
    parsed = parse_output(text, [TOOL], parse_tool_calls=True, starts_in_reasoning=thinks_first)
    (call,) = parsed.tool_calls
    assert call.name == "move" and not parsed.content
    jsonschema.validate(json.loads(call.arguments), TOOL["function"]["parameters"])


def _pydantic_tool() -> dict:
    """A strict tool as the openai SDK writes one from a pydantic model: a nested model is
    a $ref into $defs, an Optional[str] an anyOf of string and null."""
    from typing import Literal

    import openai
    from pydantic import BaseModel, Field

    class Place(BaseModel):
        city: str = Field(max_length=6)
        country: Literal["FR", "DE"]

    class Forecast(BaseModel):
        place: Place
        unit: str | None = Field(max_length=5)  # a random model's text ends by its bound
        days: int | None = Field(ge=1, le=3)

    return openai.pydantic_function_tool(Forecast)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_a_tool_from_pydantic_is_called_with_valid_arguments(tokenizer, seed, strict):
    tool = _pydantic_tool()
    parameters = tool["function"]["parameters"]
    assert tool["function"]["strict"] and "$defs" in parameters  # what the SDK sends
    tool["function"]["strict"] = strict
    reply = Reply(tools=(tool,), must_call=True, single_call=True)
    text = _generate(tokenizer, reply, seed)
    (call,) = parse_output(text, [tool], parse_tool_calls=True).tool_calls
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, parameters)
    assert isinstance(arguments["place"], dict)  # JSON, not the text of one


NESTED = {"anyOf": [{"$ref": "#/$defs/N"}, {"type": "integer"}]}
TREE = {
    "type": "object",
    "properties": {
        "v": {"type": "integer"},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/T"}},
    },
    "required": ["v"],
}


@pytest.mark.parametrize(
    "parameter, definitions, refusal",
    [
        ({"$ref": "#/$defs/N"}, {"N": NESTED}, None),  # contains itself through anyOf
        ({"$ref": "#/$defs/T"}, {"T": TREE}, None),  # a tree of itself
        ({"$ref": "#/$defs/Gone"}, {}, r"uses \$ref"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}], "format": "email"}, {}, "format"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, {}, "oneOf"),
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, {}, None),
        ({"$ref": "#/$defs/S", "maxLength": 100}, {"S": {"type": "string"}}, "beside its"),
    ],
)
def test_strict_tool_schemas_at_their_edges(tokenizer, parameter, definitions, refusal):
    """What a strict tool's grammar enforces, and the 400 (a ConstraintError) otherwise;
    never a recursion error."""
    parameters = {"type": "object", "properties": {"p": parameter}, "$defs": definitions}
    tool = {"type": "function", "function": {"name": "t", "parameters": parameters}}
    strict = {**tool, "function": {**tool["function"], "strict": True}}
    compile_constraint(Reply(tools=(tool,), must_call=True), tokenizer, [EOS])  # lenient
    if refusal is None:
        compile_constraint(Reply(tools=(strict,), must_call=True), tokenizer, [EOS])
    else:
        with pytest.raises(ConstraintError, match=refusal):
            compile_constraint(Reply(tools=(strict,), must_call=True), tokenizer, [EOS])


def test_strict_refuses_what_it_cannot_enforce(tokenizer):
    unique = {"type": "array", "uniqueItems": True}
    with pytest.raises(ConstraintError, match="uniqueItems"):
        compile_constraint(Reply(json_schema=unique, strict_json=True), tokenizer, [EOS])
    compile_constraint(Reply(json_schema=unique), tokenizer, [EOS])  # not strict: unchecked
    dated = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}
    strict_tool = {
        "type": "function",
        "function": {"name": "d", "parameters": dated, "strict": True},
    }
    with pytest.raises(ConstraintError, match='format.*|parameter "day"'):
        compile_constraint(Reply(tools=(strict_tool,), must_call=True), tokenizer, [EOS])


def test_a_grammar_too_big_to_compile_fails_fast(tokenizer):
    properties = {
        f"p{i}": {"type": "integer", "minimum": i, "maximum": 10**12} for i in range(3000)
    }
    began = time.monotonic()
    with pytest.raises(ConstraintError, match="too big"):
        compile_constraint(Reply(json_schema={"properties": properties}), tokenizer, [EOS])
    assert time.monotonic() - began < 5


def _sampler(tokenizer, constrained: bool) -> SequenceSampler:
    reply = Reply(json_schema=SCHEMA)
    constraint = compile_constraint(reply, tokenizer, [EOS]) if constrained else None
    return SequenceSampler(SamplingParams(constraint=constraint), [1, 2, 3])


def test_rows_of_one_batch_carry_their_own_constraint(tokenizer):
    free, bound = _sampler(tokenizer, False), _sampler(tokenizer, True)
    logits = mx.random.normal((2, VOCAB), key=mx.random.key(0))
    events = draw(logits, [free, bound]).events()
    assert events[0].token_id == int(mx.argmax(logits[0]).item())  # greedy as unconstrained
    assert bound.matcher.allowed().sum() < VOCAB  # its mask moved on past its token
    _fresh_matcher(tokenizer).advance(events[1].token_id)


def test_a_step_sampled_ahead_waits_for_the_last_token(tokenizer):
    """As one rank decodes: step n+1 is sampled before step n's tokens are read."""
    sampler = _sampler(tokenizer, True)
    keys = mx.random.split(mx.random.key(1), 6)
    draws = [draw(mx.random.normal((1, VOCAB), key=keys[0]), [sampler])]
    for key in keys[1:]:
        draws.append(draw(mx.random.normal((1, VOCAB), key=key), [sampler]))
        draws[-2].events()
    tokens = [d.events()[0].token_id for d in draws]
    replay = _fresh_matcher(tokenizer)
    for token in tokens:  # the grammar allows the tokens in order: each was read once
        replay.advance(token)


def _fresh_matcher(tokenizer):
    return compile_constraint(Reply(json_schema=SCHEMA), tokenizer, [EOS]).start()
