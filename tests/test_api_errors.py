"""Hostile input: every case gets the right 4xx and an error object, and the server
answers the next normal request correctly."""

# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)

from __future__ import annotations

import json

import pytest
from api_fakes import client, engine, settings, tokenizer

from refserver.api import create_app

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
TEXT = "Hello! The answer is 42."


def chat(**fields):
    return {"messages": USER, **fields}


def completion(**fields):
    return {"prompt": "hi", **fields}


def tool(**function):
    return {"type": "function", "function": {"name": "f", **function}}


DEEP = 100_000
# (name, path, body: dict -> JSON or bytes -> raw, status, param, code)
CASES = [
    # The body itself
    ("bad json", CHAT, b'{"messages": [', 400, None, "invalid_json"),
    ("invalid utf-8", CHAT, b'{"messages": "\xff\xfe"}', 400, None, "invalid_json"),
    ("array body", CHAT, b"[]", 400, None, "invalid_json"),
    ("string body", CHAT, b'"hi"', 400, None, "invalid_json"),
    (
        "lone surrogate",
        CHAT,
        b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        400,
        "messages[0].content",
        "invalid_json",
    ),
    ("lone surrogate key", CHAT, b'{"x": {"\\udc00": 1}}', 400, "x", "invalid_json"),
    ("null body", CHAT, b"null", 400, None, "invalid_json"),
    ("nan", CHAT, b'{"messages": [], "temperature": NaN}', 400, None, "invalid_json"),
    ("5000-digit int", CHAT, b'{"max_tokens": ' + b"9" * 5000 + b"}", 400, None, "invalid_json"),
    ("deep arrays", CHAT, b'{"messages": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, None, None),
    ("deep objects", CHAT, b'{"a":' * DEEP + b"1" + b"}" * DEEP, 400, None, "invalid_json"),
    ("50 MB body", CHAT, b" " * (50 * 1024 * 1024), 413, None, "request_too_large"),
    # messages
    ("no messages", CHAT, {"model": "tiny"}, 400, "messages", "missing_field"),
    ("empty messages", CHAT, chat(messages=[]), 400, "messages", None),
    ("messages string", CHAT, chat(messages="hi"), 400, "messages", None),
    ("message number", CHAT, chat(messages=[1]), 400, "messages[0]", None),
    ("unknown role", CHAT, chat(messages=[{"role": "wizard", "content": "x"}]), 400,
     "messages[0].role", None),
    ("function role", CHAT, chat(messages=[{"role": "function", "content": "x"}]), 400,
     "messages[0].role", None),
    ("content number", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content", None),
    ("user content null", CHAT, chat(messages=[{"role": "user", "content": None}]), 400,
     "messages[0]", None),
    ("image part", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), 400,
     "messages[0].content[0]", None),
    ("text part without text", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "text"}]}]), 400, "messages[0].content[0]", None),
    ("bad tool_calls", CHAT, chat(messages=[{"role": "assistant", "tool_calls": [
        {"function": "f"}]}]), 400, "messages[0].tool_calls[0].function", None),
    # numbers
    ("max_tokens string", CHAT, chat(max_tokens="10"), 400, "max_tokens", None),
    ("max_tokens negative", CHAT, chat(max_tokens=-1), 400, "max_tokens", None),
    ("max_tokens zero", CHAT, chat(max_tokens=0), 400, "max_tokens", None),
    ("max_tokens float", CHAT, chat(max_tokens=1.5), 400, "max_tokens", None),
    ("max_tokens bool", CHAT, chat(max_tokens=True), 400, "max_tokens", None),
    ("max_tokens 10**30", CHAT, chat(max_tokens=10**30), 400, "max_tokens", None),
    ("max_tokens over cap", CHAT, chat(max_tokens=200_000), 400, "max_tokens", None),
    ("max_tokens over context", CHAT, chat(max_tokens=100_000), 400, "max_tokens",
     "context_length_exceeded"),
    ("max_completion_tokens over context", CHAT, chat(max_completion_tokens=255), 400,
     "max_completion_tokens", "context_length_exceeded"),
    ("temperature negative", CHAT, chat(temperature=-1), 400, "temperature", None),
    ("temperature 3", CHAT, chat(temperature=3), 400, "temperature", None),
    ("temperature string", CHAT, chat(temperature="hot"), 400, "temperature", None),
    ("top_p 1.5", CHAT, chat(top_p=1.5), 400, "top_p", None),
    ("top_k negative", CHAT, chat(top_k=-1), 400, "top_k", None),
    ("top_k float", CHAT, chat(top_k=2.5), 400, "top_k", None),
    ("min_p 2", CHAT, chat(min_p=2), 400, "min_p", None),
    ("repetition_penalty zero", CHAT, chat(repetition_penalty=0), 400, "repetition_penalty", None),
    ("repetition_penalty 0 in float32", CHAT, chat(repetition_penalty=1e-300), 400,
     "repetition_penalty", None),
    ("presence_penalty 5", CHAT, chat(presence_penalty=5), 400, "presence_penalty", None),
    ("frequency_penalty -3", CHAT, chat(frequency_penalty=-3), 400, "frequency_penalty", None),
    ("seed 10**30", CHAT, chat(seed=10**30), 400, "seed", None),
    ("seed string", CHAT, chat(seed="x"), 400, "seed", None),
    ("logit_bias key", CHAT, chat(logit_bias={"abc": 1}), 400, "logit_bias", None),
    ("logit_bias value", CHAT, chat(logit_bias={"5": 500}), 400, "logit_bias", None),
    ("logit_bias vocab", CHAT, chat(logit_bias={"999999": 1}), 400, "logit_bias", None),
    ("logit_bias list", CHAT, chat(logit_bias=[1, 2]), 400, "logit_bias", None),
    # stop, stream, n, logprobs
    ("stop number", CHAT, chat(stop=123), 400, "stop", None),
    ("stop numbers", CHAT, chat(stop=[1, 2]), 400, "stop[0]", None),
    ("stop too many", CHAT, chat(stop=[f"s{i}" for i in range(20)]), 400, "stop", None),
    ("stream string", CHAT, chat(stream="yes"), 400, "stream", None),
    ("include_usage string", CHAT, chat(stream=True, stream_options={"include_usage": "y"}),
     400, "stream_options.include_usage", None),
    ("n beyond 128", CHAT, chat(n=129), 400, "n", None),
    ("n 0", COMPLETIONS, completion(n=0), 400, "n", None),
    ("logprobs string", CHAT, chat(logprobs="yes"), 400, "logprobs", None),
    ("top_logprobs 21", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    ("top_logprobs alone", CHAT, chat(top_logprobs=2), 400, "top_logprobs", None),
    ("completion logprobs 6", COMPLETIONS, completion(logprobs=6), 400, "logprobs", None),
    ("completion logprobs bool", COMPLETIONS, completion(logprobs=True), 400, "logprobs", None),
    # tools, formats, template kwargs
    ("tools string", CHAT, chat(tools="x"), 400, "tools", None),
    ("tool without function", CHAT, chat(tools=[{"type": "function"}]), 400,
     "tools[0].function", None),
    ("tool empty name", CHAT, chat(tools=[tool(name="")]), 400, "tools[0].function.name", None),
    ("tool name with a quote", CHAT, chat(tools=[tool(name='a"b')]), 400,
     "tools[0].function.name", None),
    ("tool name with a marker", CHAT, chat(tools=[tool(name="f<minimax:tool_call>")]), 400,
     "tools[0].function.name", None),
    ("tool name with a line break", CHAT, chat(tools=[tool(name="f\ng")]), 400,
     "tools[0].function.name", None),
    ("tool parameters string", CHAT, chat(tools=[tool(parameters="x")]), 400,
     "tools[0].function.parameters", None),
    ("tool type", CHAT, chat(tools=[{"type": "retrieval"}]), 400, "tools[0].type", None),
    ("tool_choice", CHAT, chat(tool_choice="sometimes"), 400, "tool_choice", None),
    ("response_format xml", CHAT, chat(response_format={"type": "xml"}), 400,
     "response_format.type", None),
    ("response_format string", CHAT, chat(response_format="json"), 400, "response_format", None),
    ("template kwargs string", CHAT, chat(chat_template_kwargs="x"), 400,
     "chat_template_kwargs", None),
    ("template injection", CHAT, chat(chat_template_kwargs={"chat_template": "{{ 7*7 }}"}), 400,
     "chat_template_kwargs", None),
    ("template reserved key", CHAT, chat(chat_template_kwargs={"tokenize": True}), 400,
     "chat_template_kwargs", None),
    ("user number", CHAT, chat(user=5), 400, "user", None),
    ("unknown model", CHAT, chat(model="gpt-4"), 404, "model", "model_not_found"),
    ("model number", CHAT, chat(model=5), 400, "model", None),
    ("messages beyond context", CHAT, chat(messages=[{"role": "user", "content": "hi " * 400}]),
     400, "messages", "context_length_exceeded"),
    # text completions
    ("no prompt", COMPLETIONS, {"max_tokens": 5}, 400, "prompt", "missing_field"),
    ("empty prompt", COMPLETIONS, completion(prompt=""), 400, "prompt", None),
    ("empty prompt list", COMPLETIONS, completion(prompt=[]), 400, "prompt", None),
    ("an empty prompt of two", COMPLETIONS, completion(prompt=["a", ""]), 400, "prompt", None),
    ("an empty id prompt of two", COMPLETIONS, completion(prompt=[[5], []]), 400, "prompt", None),
    ("129 prompts", COMPLETIONS, completion(prompt=["a"] * 129), 400, "prompt", None),
    ("prompts times n beyond 128", COMPLETIONS, completion(prompt=["a"] * 9, n=15), 400, "n",
     None),
    ("negative token", COMPLETIONS, completion(prompt=[-1]), 400, "prompt[0]", None),
    ("token beyond vocab", COMPLETIONS, completion(prompt=[999_999]), 400, "prompt", None),
    ("prompt number", COMPLETIONS, completion(prompt=5), 400, "prompt", None),
    ("prompt beyond context", COMPLETIONS, completion(prompt="hello " * 1000), 400, "prompt",
     "context_length_exceeded"),
    ("max_tokens 0 without echo", COMPLETIONS, completion(max_tokens=0), 400, "max_tokens", None),
    ("max_tokens 0 echo false", COMPLETIONS, completion(max_tokens=0, echo=False), 400,
     "max_tokens", None),
    ("best_of", COMPLETIONS, completion(best_of=3), 400, "best_of", None),
    ("suffix", COMPLETIONS, completion(suffix="x"), 400, "suffix", None),
]  # fmt: skip


def _assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


def _assert_still_serving(client):
    response = client.post(CHAT, json={"messages": USER})
    assert response.status_code == 200
    assert response.get_json()["choices"][0]["message"]["content"] == TEXT


@pytest.mark.parametrize(
    "path, body, status, param, code", [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_body(client, path, body, status, param, code):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, data=data, content_type="application/json")
    _assert_error(response, status, param, code)
    _assert_still_serving(client)


def test_there_are_at_least_40_hostile_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("GET", "/v1/nope", 404, "not_found"),
        ("POST", "/v2/chat/completions", 404, "not_found"),
        ("GET", CHAT, 405, "method_not_allowed"),
        ("PUT", COMPLETIONS, 405, "method_not_allowed"),
        ("POST", "/v1/models", 405, "method_not_allowed"),
        ("DELETE", "/health", 405, "method_not_allowed"),
    ],
)
def test_unknown_path_and_wrong_method(client, method, path, status, code):
    _assert_error(client.open(path, method=method), status, None, code)
    _assert_still_serving(client)


@pytest.mark.parametrize(
    "content_length, status, code",
    [
        ("", 411, "length_required"),
        ("0", 400, "invalid_json"),
        ("abc", 400, "invalid_header"),
        ("-5", 400, "invalid_header"),
        ("1e3", 400, "invalid_header"),
        ("99999999999999999999999", 413, "request_too_large"),
        ("1000", 400, None),  # announces more than is sent
    ],
)
def test_missing_or_invalid_content_length(client, content_length, status, code):
    body = json.dumps({"messages": USER}).encode()
    response = client.post(CHAT, data=body, environ_overrides={"CONTENT_LENGTH": content_length})
    _assert_error(response, status, None, code)
    _assert_still_serving(client)


@pytest.mark.parametrize("size, status", [(100, 200), (101, 413)])
def test_body_limit_is_configurable_and_exact(engine, tokenizer, size, status):
    client = create_app(engine, tokenizer, settings(max_body_bytes=100)).test_client()
    body = json.dumps({"messages": USER}).encode().ljust(size)  # JSON allows trailing spaces
    response = client.post(CHAT, data=body, content_type="application/json")
    assert response.status_code == status
    if status == 413:
        error = _assert_error(response, 413, None, "request_too_large")
        assert "at most 100 bytes" in error["message"]


def test_nulls_mean_absent(client, engine):
    fields = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k"]
    fields += ["min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]
    fields += ["logit_bias", "seed", "stop", "stream", "stream_options", "n", "user"]
    fields += ["response_format", "logprobs", "top_logprobs", "tools", "tool_choice"]
    fields += ["parallel_tool_calls", "chat_template_kwargs"]
    body = {"messages": USER, **dict.fromkeys(fields)}
    assert client.post(CHAT, json=body).get_json()["choices"][0]["message"]["content"] == TEXT


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "text"}},
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
        {"unknown_field": {"nested": [1, 2]}, "metadata": {"a": "b"}},
        {"stop": []},
        {"stop": ""},
        {"n": 1, "stream": False, "logprobs": False, "top_logprobs": 0},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}, "tools": [tool()]},
        {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]},
    ],
)
def test_accepted_variants(client, fields):
    assert client.post(CHAT, json={"messages": USER, **fields}).status_code == 200
