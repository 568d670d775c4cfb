"""What the API makes of response_format and tool_choice: a constraint, or a 400 naming
the field (fake engine, no model)."""

# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)
from __future__ import annotations

import pytest
from api_fakes import client, engine, tokenizer

CHAT = {"model": "tiny-test-model", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def _format(schema: dict, strict: bool) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": strict}}


@pytest.mark.parametrize(
    "fields, constrained",
    [
        ({}, False),
        ({"response_format": {"type": "text"}}, False),
        ({"response_format": {"type": "json_object"}}, True),
        ({"response_format": _format({"type": "array"}, True)}, True),
        ({"tools": [TOOL]}, False),
        ({"tools": [TOOL], "tool_choice": "required"}, True),
        ({"tools": [{**TOOL, "function": {**TOOL["function"], "strict": True}}]}, True),
    ],
)
def test_which_requests_are_constrained(client, engine, fields, constrained):
    assert client.post("/v1/chat/completions", json={**CHAT, **fields}).status_code == 200
    assert (engine.requests[-1].sampling.constraint is not None) == constrained


def test_strict_schema_with_unenforceable_keywords_is_a_400(client):
    body = {**CHAT, "response_format": _format({"type": "array", "uniqueItems": True}, True)}
    response = client.post("/v1/chat/completions", json=body)
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["param"] == "response_format"
    assert "uniqueItems" in error["message"]


def test_json_schema_without_its_object_is_a_400(client):
    body = {**CHAT, "response_format": {"type": "json_schema"}}
    assert client.post("/v1/chat/completions", json=body).status_code == 400


def test_anthropic_tool_choice_any_is_constrained(client, engine):
    body = {
        "model": "claude",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
    }
    assert client.post("/v1/messages", json=body).status_code == 200
    assert engine.requests[-1].sampling.constraint is not None


def _parameters(**keywords) -> dict:
    return {"type": "object", "properties": {"a": {"type": "string"}}, **keywords}


# Malformed parameter schemas of a tool the grammar must read: each a 400 naming tools.
MALFORMED = [
    ("required a number", _parameters(required=5)),
    ("required of numbers", _parameters(required=[1])),
    ("properties a list", {"type": "object", "properties": ["a"]}),
    ("property a number", {"type": "object", "properties": {"a": 3}}),
    ("enum null", {"type": "object", "properties": {"a": {"type": "string", "enum": None}}}),
    ("enum a number", {"type": "object", "properties": {"a": {"enum": 3}}}),
    ("anyOf a number", {"type": "object", "properties": {"a": {"anyOf": 5}}}),
    ("oneOf of numbers", {"type": "object", "properties": {"a": {"oneOf": [1, 2]}}}),
    ("$defs a list", _parameters(**{"$defs": []})),
    ("pattern a number", {"type": "object", "properties": {"a": {"type": "string", "pattern": 5}}}),
]


@pytest.mark.parametrize("route", ["openai required", "openai strict", "anthropic any"])
@pytest.mark.parametrize("schema", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_schema_of_a_constrained_tool_is_a_400(client, engine, route, schema):
    if route == "anthropic any":
        body = {"model": "claude", "max_tokens": 16, "messages": CHAT["messages"]}
        body |= {"tools": [{"name": "f", "input_schema": schema}], "tool_choice": {"type": "any"}}
        response = client.post("/v1/messages", json=body)
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["error"]["type"] == "invalid_request_error"
    else:
        function = {"name": "f", "parameters": schema, "strict": route == "openai strict"}
        body = {**CHAT, "tools": [{"type": "function", "function": function}]}
        if route == "openai required":
            body["tool_choice"] = "required"
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["error"]["param"] == "tools"
    assert engine.requests == []
