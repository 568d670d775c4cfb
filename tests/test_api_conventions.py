"""Conventions clients trip on, each as OpenAI's or Anthropic's API has it: surrogates in
JSON nested in a string, doubled slashes, /v1/models/{id}, stream_options without a
stream, string booleans in chat_template_kwargs."""

# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)

from __future__ import annotations

import pytest
from api_fakes import MODEL, FakeEngine, build_tokenizer, client, engine, settings, tokenizer

from refserver.api import create_app

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = "/v1/messages"
USER = [{"role": "user", "content": "hi"}]
TEXT = "Hello! The answer is 42."
# A template that renders tool-call arguments, as real ones do: what it renders is encoded.
ARGUMENTS_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}{{ c.function.arguments | tojson }}{% endfor %}"
    "<|end|>{% endfor %}<|assistant|>"
)


@pytest.fixture(scope="module")
def arguments_client():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = ARGUMENTS_TEMPLATE
    engine = FakeEngine(tokenizer.encode(TEXT), eos_id=tokenizer.eos_token_id)
    return create_app(engine, tokenizer, settings()).test_client()


def _with_arguments(arguments: str) -> bytes:
    """A chat body whose assistant tool call has `arguments` spelled as raw JSON text."""
    call = b'{"id": "c1", "function": {"name": "f", "arguments": "' + arguments.encode() + b'"}}'
    assistant = b'{"role": "assistant", "tool_calls": [' + call + b"]}"
    tool = b'{"role": "tool", "tool_call_id": "c1", "content": "ok"}'
    return b'{"messages": [{"role": "user", "content": "hi"}, ' + assistant + b", " + tool + b"]}"


ARGUMENTS_PARAM = "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    "arguments, status, where",
    [
        (r"{\"a\": \"\\ud800\"}", 400, "at a"),
        (r"{\"a\": {\"b\": [1, \"x\\udfffy\"]}}", 400, "at a.b[1]"),
        (r"{\"\\udc00\": 1}", 400, "surrogate"),  # in a key: the object is named
        (r"\"\\ud800\"", 400, "surrogate"),
        (r"{\"a\": \"\\ud83d\\ude00\"}", 200, None),  # a whole pair is text
        (r"not JSON \\ud800", 200, None),  # stays a string: six characters, no surrogate
    ],
    ids=["value", "deep", "key", "top level", "pair", "not json"],
)
def test_surrogate_in_tool_call_arguments(arguments_client, arguments, status, where):
    response = arguments_client.post(
        CHAT, data=_with_arguments(arguments), content_type="application/json"
    )
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    if status == 400:
        error = response.get_json()["error"]
        assert error["param"] == ARGUMENTS_PARAM
        assert where in error["message"]


def test_surrogate_in_anthropic_tool_input(client):
    tool_use = b'{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "\\ud800"}}'
    result = b'{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}'
    body = b'{"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}, '
    body += b'{"role": "assistant", "content": [' + tool_use + b"]}, "
    body += b'{"role": "user", "content": [' + result + b"]}]}"
    response = client.post(MESSAGES, data=body, content_type="application/json")
    assert response.status_code == 400
    assert "messages[1].content[0].input.a" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/v1//chat/completions", {"messages": USER}),
        ("POST", "/v1//completions", {"prompt": "hi"}),
        ("GET", "/v1//models", None),
        ("GET", "//v1///models//tiny", None),
        ("POST", "/v1//messages", {"max_tokens": 5, "messages": USER}),
        ("POST", "/v1//messages//count_tokens", {"messages": USER}),
    ],
)
def test_doubled_slashes_are_served(client, method, path, body):
    response = client.open(path, method=method, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.is_json


def test_doubled_slashes_on_an_unknown_path_get_an_error_object(client):
    response = client.get("/v1//nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/v1/models/", "/models/"])
@pytest.mark.parametrize("name", [MODEL, "tiny", "default_model"])
def test_retrieve_model_by_any_served_name(client, path, name):
    response = client.get(path + name)
    assert response.status_code == 200
    assert response.get_json() == client.get("/v1/models").get_json()["data"][0]


@pytest.mark.parametrize("name", ["gpt-4", "org/other-model"])
def test_retrieve_unknown_model_is_404(client, name):
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )


def test_retrieve_model_whose_name_has_a_slash(engine, tokenizer):
    app = create_app(engine, tokenizer, settings(model_aliases=("org/tiny-model",)))
    assert app.test_client().get("/v1/models/org/tiny-model").get_json()["id"] == MODEL


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(
    "fields, status",
    [
        ({"stream_options": {"include_usage": True}}, 400),
        ({"stream": False, "stream_options": {"include_usage": True}}, 400),
        ({"stream": None, "stream_options": {}}, 400),
        ({"stream": False, "stream_options": None}, 200),
        ({"stream": True, "stream_options": {"include_usage": True}}, 200),
    ],
)
def test_stream_options_need_a_stream(client, path, fields, status):
    base = {"messages": USER} if path == CHAT else {"prompt": "hi"}
    response = client.post(path, json={**base, **fields})
    assert response.status_code == status
    if status == 400:
        assert response.get_json()["error"]["param"] == "stream_options"


def test_stream_string_is_reported_before_stream_options(client):
    response = client.post(CHAT, json={"messages": USER, "stream": "yes", "stream_options": {}})
    assert response.get_json()["error"]["param"] == "stream"


@pytest.mark.parametrize(
    "kwargs, thinking",
    [
        ({"enable_thinking": False}, False),
        ({"enable_thinking": "false"}, False),
        ({"enable_thinking": "FALSE"}, False),
        ({"enable_thinking": True}, True),
        ({"enable_thinking": "True"}, True),
        ({"enable_thinking": None}, True),  # null: the server's default
        ({}, True),
    ],
)
def test_enable_thinking_string_booleans(client, engine, tokenizer, kwargs, thinking):
    response = client.post(CHAT, json={"messages": USER, "chat_template_kwargs": kwargs})
    assert response.status_code == 200
    prompt = tokenizer.decode(engine.requests[-1].prompt_tokens)
    assert ("no-think" not in prompt) is thinking


@pytest.mark.parametrize("value", ["no", "", "0", 0, 1, [], {}])
def test_enable_thinking_must_be_a_boolean(client, value):
    response = client.post(
        CHAT, json={"messages": USER, "chat_template_kwargs": {"enable_thinking": value}}
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "chat_template_kwargs"
    assert "enable_thinking" in error["message"]


def test_other_template_switches_take_string_booleans(engine):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% if flag %}on{% else %}off{% endif %}"
    client = create_app(engine, tokenizer, settings()).test_client()
    for value, rendered in [("false", "off"), ("TRUE", "on"), ("maybe", "on"), ("", "off")]:
        client.post(CHAT, json={"messages": USER, "chat_template_kwargs": {"flag": value}})
        assert tokenizer.decode(engine.requests[-1].prompt_tokens) == rendered
