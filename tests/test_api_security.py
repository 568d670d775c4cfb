"""API keys and CORS."""

# ruff: noqa: F401, F811 (pytest fixtures imported from api_fakes)

from __future__ import annotations

import logging

import pytest
from api_fakes import client, engine, settings, tokenizer

from refserver.api import create_app
from refserver.api.server import is_loopback, warn_if_browsers_refuse, warn_if_exposed

KEYS = ("key-one", "key-two")
CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def secured(engine, tokenizer):
    return create_app(engine, tokenizer, settings(api_keys=KEYS)).test_client()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer key-one-and-more"},
        {"Authorization": "Bearer "},
        {"Authorization": "key-one"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "Bearer key-on"},
        {"Authorization": "Bearer ключ"},
        {"x-api-key": "wrong"},
    ],
)
@pytest.mark.parametrize(
    "method, path", [("GET", "/v1/models"), ("POST", CHAT), ("GET", "/models"), ("GET", "/v1/x")]
)
def test_requests_without_a_valid_key_are_refused(secured, engine, headers, method, path):
    response = secured.open(path, method=method, headers=headers, json=BODY)
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert engine.requests == []


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("how", ["Bearer", "bearer", "x-api-key"])
def test_every_configured_key_is_accepted(secured, key, how):
    """As a bearer token or, as Anthropic clients send it (also to /v1/models), x-api-key."""
    headers = {"x-api-key": key} if how == "x-api-key" else {"Authorization": f"{how} {key}"}
    assert secured.get("/v1/models", headers=headers).status_code == 200
    assert secured.post(CHAT, headers=headers, json=BODY).status_code == 200


def test_health_needs_no_key(secured):
    assert secured.get("/health").status_code == 200


def test_no_keys_means_no_auth(engine, tokenizer):
    client = create_app(engine, tokenizer, settings()).test_client()
    assert client.post(CHAT, json=BODY).status_code == 200


def test_cors_is_off_by_default(engine, tokenizer):
    client = create_app(engine, tokenizer, settings()).test_client()
    response = client.post(CHAT, json=BODY, headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options(CHAT, headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.parametrize(
    "allowed, origin, granted",
    [
        (("http://app.example",), "http://app.example", True),
        (("http://app.example",), "http://evil.example", False),
        (("*",), "http://anything.example", True),
    ],
)
def test_cors_with_allowed_origins(engine, tokenizer, allowed, origin, granted):
    client = create_app(
        engine, tokenizer, settings(allowed_origins=allowed, api_keys=KEYS)
    ).test_client()
    preflight = client.options(
        CHAT,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200  # preflights carry no key
    assert (preflight.headers.get("Access-Control-Allow-Origin") == origin) is granted
    headers = {"Origin": origin, "Authorization": "Bearer key-one"}
    response = client.post(CHAT, json=BODY, headers=headers)
    assert (response.headers.get("Access-Control-Allow-Origin") == origin) is granted
    if granted:
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        assert "Origin" in response.headers["Vary"]
        assert "request-id" in response.headers["Access-Control-Expose-Headers"].split(", ")
    # Error responses carry the CORS headers too, so a browser can read them.
    refused = client.post(CHAT, json=BODY, headers={"Origin": origin})
    assert refused.status_code == 401
    assert (refused.headers.get("Access-Control-Allow-Origin") == origin) is granted


def test_a_browser_may_delete_a_stored_response(engine, tokenizer):
    client = create_app(engine, tokenizer, settings(allowed_origins=("*",))).test_client()
    origin = "http://app.example"
    asked = {"Origin": origin, "Access-Control-Request-Method": "DELETE"}
    preflight = client.options("/v1/responses/resp_1", headers=asked)
    assert preflight.status_code == 200
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"].split(", ")


def test_a_preflight_is_granted_the_headers_it_asks_for(engine, tokenizer):
    """The SDKs send headers of their own (openai's x-stainless-*, anthropic's
    anthropic-dangerous-direct-browser-access): a browser refuses a request whose
    preflight did not allow every one of them."""
    app = create_app(engine, tokenizer, settings(allowed_origins=("http://app.example",)))
    asked = "authorization, content-type, x-stainless-os, anthropic-dangerous-direct-browser-access"
    preflight = app.test_client().options(
        CHAT,
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert preflight.headers["Access-Control-Allow-Headers"] == asked
    assert "Access-Control-Request-Headers" in preflight.headers["Vary"]


def test_prompts_are_not_logged_at_info(engine, tokenizer, caplog):
    client = create_app(engine, tokenizer, settings()).test_client()
    secret = "my-secret-prompt-text"
    with caplog.at_level(logging.INFO):
        client.post(CHAT, json={"messages": [{"role": "user", "content": secret}]})
        client.post(CHAT, json={"messages": [{"role": "wizard", "content": secret}]})
    assert caplog.records
    assert all(secret not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "host, keys, warned",
    [
        ("127.0.0.1", (), False),
        ("localhost", (), False),
        ("::1", (), False),
        ("0.0.0.0", (), True),
        ("0.0.0.0", ("k",), False),
    ],
)
def test_warning_when_exposed_without_a_key(caplog, host, keys, warned):
    with caplog.at_level(logging.WARNING):
        warn_if_exposed(host, keys)
    assert any("without an API key" in r.getMessage() for r in caplog.records) is warned


@pytest.mark.parametrize("port, warned", [(10080, True), (6000, True), (8080, False), (0, False)])
def test_warning_when_browsers_refuse_the_port(caplog, port, warned):
    with caplog.at_level(logging.WARNING):
        warn_if_browsers_refuse(port)
    assert any("bad port" in r.getMessage() for r in caplog.records) is warned


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("no-such-host.invalid")
