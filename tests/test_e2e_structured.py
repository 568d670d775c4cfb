"""Structured output on 2 real ranks with a tiny random model: unconstrained it never
writes valid JSON, constrained it must every time (response_format, forced tool calls)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from simcluster.parity import reference_tokens
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "born": {"type": "string", "format": "date"},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                    },
                    "required": ["sku", "qty"],
                    "additionalProperties": False,
                },
            },
            "express": {"type": "boolean"},
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "warn", "fail"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["status", "score"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -10, "maximum": 10},
                    "y": {"type": "integer", "minimum": -10, "maximum": 10},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            },
            "label": {"type": "string", "maxLength": 8},
        },
        "required": ["point"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 4},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties)[:1],
            },
        },
    }
    for name, properties in [
        ("get_weather", {"city": {"type": "string", "maxLength": 12},
                         "days": {"type": "integer", "minimum": 1, "maximum": 7}}),
        ("set_mode", {"mode": {"enum": ["eco", "fast"]},
                      "level": {"type": "number", "minimum": 0, "maximum": 3}}),
        ("tag", {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}}),
    ]
]  # fmt: skip
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
PLAIN = ["Describe a cat.", "Count to ten.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def cluster(tiny_model):
    with ServerCluster(2, tiny_model) as server:
        yield server


@pytest.fixture(scope="module")
def oai(cluster):
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=300)


def _chat(oai, text: str, max_tokens: int = 160, thinking: bool = True, **fields):
    extra = {} if thinking else {"extra_body": NO_THINKING}
    return oai.chat.completions.create(
        model="default_model",
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        temperature=0,
        **extra,
        **fields,
    )


def _json_schema(schema: dict, strict: bool = True) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": strict},
    }


def _in_parallel(function, jobs: list) -> list:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda job: function(*job), jobs))


def test_json_schema_replies_validate_with_thinking_on_and_off(oai):
    def ask(index: int):
        schema = SCHEMAS[index % len(SCHEMAS)]
        format_ = _json_schema(schema)
        reply = _chat(oai, f"Answer {index}.", thinking=index % 2 == 0, response_format=format_)
        return schema, reply.choices[0]

    results = _in_parallel(ask, [(i,) for i in range(50)])
    for schema, choice in results:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), schema)
    with_reasoning = [c for i, (_, c) in enumerate(results) if i % 2 == 0]
    assert all(c.message.model_extra.get("reasoning_content") for c in with_reasoning)


def test_json_object_replies_parse(oai):
    # Any object: a random model's strings end only by chance, so it needs room.
    def ask(index: int):
        reply = _chat(oai, f"Object {index}.", max_tokens=1500, thinking=index % 2 == 1,
                      response_format={"type": "json_object"})  # fmt: skip
        return reply.choices[0]

    for choice in _in_parallel(ask, [(i,) for i in range(20)]):
        assert choice.finish_reason == "stop", choice
        assert isinstance(json.loads(choice.message.content), dict)


def test_unconstrained_model_writes_no_json(oai):
    """The adversary: without the constraint the same requests do not give JSON."""
    reply = _chat(oai, "Object 0.", max_tokens=60, thinking=False)
    with pytest.raises(ValueError):
        json.loads(reply.choices[0].message.content or "")


def _check_calls(choice, names: set[str], single: bool) -> None:
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and (len(calls) == 1 or not single)
    for call in calls:
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])


def test_forced_tool_calls_are_valid_calls_of_the_right_tool(oai):
    named = {"type": "function", "function": {"name": "set_mode"}}
    jobs = [("required", i % 2 == 0, i) for i in range(6)] + [
        (named, i % 2 == 0, i) for i in range(4)
    ]

    def ask(choice, thinking, index):
        reply = _chat(oai, f"Act {index}.", thinking=thinking, tools=TOOLS, tool_choice=choice,
                      parallel_tool_calls=False)  # fmt: skip
        return choice, reply.choices[0]

    for choice, result in _in_parallel(ask, jobs):
        names = set(SCHEMA_OF) if choice == "required" else {"set_mode"}
        _check_calls(result, names, single=True)


def test_anthropic_any_and_tool(cluster):
    claude = anthropic.Anthropic(base_url=cluster.root_url, api_key="unused", max_retries=0)
    tools = [{"name": n, "input_schema": s} for n, s in SCHEMA_OF.items()]
    for choice, names in [
        ({"type": "any"}, set(SCHEMA_OF)),
        ({"type": "tool", "name": "tag"}, {"tag"}),
    ]:
        for thinking in ({"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}):
            reply = claude.messages.create(
                model="claude", max_tokens=160, tools=tools, thinking=thinking,
                tool_choice={**choice, "disable_parallel_tool_use": True},
                messages=[{"role": "user", "content": "Act."}],
            )  # fmt: skip
            assert reply.stop_reason == "tool_use"
            uses = [block for block in reply.content if block.type == "tool_use"]
            assert len(uses) == 1 and uses[0].name in names
            jsonschema.validate(uses[0].input, SCHEMA_OF[uses[0].name])


def test_stream_gives_the_same_text(oai):
    format_ = _json_schema(SCHEMAS[1])
    whole = _chat(oai, "Stream.", response_format=format_).choices[0].message.content
    chunks = _chat(oai, "Stream.", response_format=format_, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole


def test_unconstrained_rows_keep_greedy_parity_beside_constrained_ones(oai, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    format_ = _json_schema(SCHEMAS[2])
    jobs = [(text, None) for text in PLAIN] + [(f"Beside {i}.", format_) for i in range(5)]

    def ask(text, response_format):
        fields = {} if response_format is None else {"response_format": response_format}
        return text, _chat(oai, text, max_tokens=48, thinking=False, **fields).choices[0]

    for text, choice in _in_parallel(ask, jobs):
        if text not in PLAIN:
            continue
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False,
            enable_thinking=False,
        )  # fmt: skip
        prompt = tokenizer.encode(rendered, add_special_tokens=False)
        tokens = reference_tokens(tiny_model, prompt, 48)
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        assert choice.message.content == tokenizer.decode(tokens, skip_special_tokens=True).strip()
