"""The Flask application: request ids, auth, CORS, error objects, /health, the routes.

/health, /metrics and the status page (/ and its static files) are open; its JSON
(/status) and the model routes need the API key when one is set.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from refserver.api.anthropic.routes import AnthropicRoutes, is_anthropic_path
from refserver.api.errors import ApiError
from refserver.api.observe.metrics import ServerMetrics
from refserver.api.observe.observed_engine import ObservedEngine
from refserver.api.observe.status import STATIC_FOLDER, StatusRoutes, engine_status
from refserver.api.openai.routes import OpenAIRoutes
from refserver.api.responses.routes import ResponsesRoutes
from refserver.api.settings import ApiSettings
from refserver.api.shared.agent_message import agent_builder
from refserver.api.shared.message import MessageBuilderFactory
from refserver.api.shared.prompting import Vocabulary
from refserver.api.shared.submit import Submitter
from refserver.engine.interface import Engine
from refserver.load_progress import describe

log = logging.getLogger(__name__)

_OPEN_PATHS = frozenset(("/health", "/metrics", "/"))
_STATIC_PREFIX = "/static/"
_REPEATED_SLASHES = re.compile("/{2,}")
_CORS_HEADERS = "Authorization, Content-Type, x-api-key, anthropic-version, anthropic-beta"

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def create_app(
    engine: Engine,
    tokenizer: Any,
    settings: ApiSettings,
    message_builder: MessageBuilderFactory = agent_builder,
) -> Flask:
    """The OpenAI- and Anthropic-compatible app, serving `engine` with `tokenizer`.

    message_builder makes, per chat request, the object that turns generated text into
    content, reasoning and tool calls (``plain_text_builder`` leaves the text raw).
    """
    app = Flask("refserver.api", static_folder=STATIC_FOLDER)
    app.wsgi_app = _collapse_slashes(app.wsgi_app)
    app.extensions["refserver"] = settings  # read by server.serve()
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.json.compact = True
    metrics = ServerMetrics(lambda: engine_status(engine))
    app.before_request(_start_request)
    app.before_request(lambda: _authenticate(settings.api_keys))
    app.after_request(lambda response: _count(response, metrics))
    app.after_request(lambda response: _finish_response(response, settings.allowed_origins))
    app.register_error_handler(ApiError, _error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    app.get("/health")(lambda: _health(engine))
    app.get("/metrics", endpoint="metrics")(lambda: _metrics(metrics))
    StatusRoutes(engine, metrics, settings.model_name).register(app)
    vocab = Vocabulary(tokenizer, settings.chat_template_kwargs)
    submitter = Submitter(ObservedEngine(engine, metrics), vocab, settings)
    OpenAIRoutes(submitter, message_builder).register(app)
    AnthropicRoutes(submitter, message_builder).register(app)
    ResponsesRoutes(submitter, message_builder).register(app)
    return app


def _collapse_slashes(wsgi_app: WsgiApp) -> WsgiApp:
    """Serve /v1//chat/completions (a base_url ending in "/") as /v1/chat/completions;
    werkzeug would answer with a redirect and an HTML body, which clients do not expect."""

    def collapsed(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["PATH_INFO"] = _REPEATED_SLASHES.sub("/", environ.get("PATH_INFO", ""))
        return wsgi_app(environ, start_response)

    return collapsed


def _is_anthropic_route() -> bool:
    return is_anthropic_path(request.path)


def _health(engine: Engine) -> Response:
    health = engine.health()
    if not health.ok:
        return _not_ready(health.reason, engine_status(engine).get("loading"))
    body = {"status": "ok", "ranks": health.ranks}
    if health.kv is not None:
        body["kv"] = health.kv
    return jsonify(body)


def _not_ready(reason: str, loading: list[dict] | None) -> Response:
    """503, with how far each rank has come while the cluster loads."""
    message = reason or "the engine is not ready"
    if loading:
        message += ": " + "; ".join(f"rank {r['rank']}: {describe(r)}" for r in loading)
    body = ApiError(503, message, code="not_ready").body()
    if loading:
        body["loading"] = loading
    response = jsonify(body)
    response.status_code = 503
    return response


def _metrics(metrics: ServerMetrics) -> Response:
    return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)


def _start_request() -> None:
    g.request_id = uuid.uuid4().hex
    g.started = time.monotonic()


def _authenticate(api_keys: tuple[str, ...]) -> None:
    """Every route but the open ones needs the key when keys are set, as
    `Authorization: Bearer <key>` or as `x-api-key: <key>` (how Anthropic clients send
    it, also to /v1/models)."""
    if not api_keys or request.method == "OPTIONS" or _is_open(request.path):
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = [token.strip()] if scheme.lower() == "bearer" else []
    given.append(request.headers.get("x-api-key", "").strip())
    how = "'Authorization: Bearer <key>' or 'x-api-key: <key>'"
    if _is_anthropic_route():
        how = "'x-api-key: <key>' or 'Authorization: Bearer <key>'"
    # Compare with every key, in constant time, so timing reveals nothing about them.
    matches = [hmac.compare_digest(c.encode(), key.encode()) for c in given for key in api_keys]
    if not any(matches):
        raise ApiError(
            401,
            f"a valid API key is required: send {how}",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or path.startswith(_STATIC_PREFIX)


def _count(response: Response, metrics: ServerMetrics) -> Response:
    """Requests by route pattern (unknown paths as one label) and status code."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.requests.labels(route, str(response.status_code)).inc()
    return response


def _finish_response(response: Response, allowed_origins: tuple[str, ...]) -> Response:
    request_id = g.get("request_id", "")
    # The openai SDKs read x-request-id, the anthropic ones request-id.
    response.headers["x-request-id"] = response.headers["request-id"] = request_id
    origin = request.headers.get("Origin")
    if origin and ("*" in allowed_origins or origin in allowed_origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        # A preflight's own list: the SDKs' headers (x-stainless-*, anthropic-dangerous-
        # direct-browser-access, ...) grow with their versions, and one missing from a
        # fixed list makes the browser refuse the request.
        asked = request.headers.get("Access-Control-Request-Headers", "").strip()
        response.headers["Access-Control-Allow-Headers"] = asked or _CORS_HEADERS
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Expose-Headers"] = "x-request-id, request-id"
        response.headers["Access-Control-Max-Age"] = "600"
        response.vary.add("Origin")
        response.vary.add("Access-Control-Request-Headers")
    elapsed_ms = (time.monotonic() - g.get("started", time.monotonic())) * 1000
    polled = _is_open(request.path) or request.path == "/status"  # monitors, the status page
    level = logging.DEBUG if polled else logging.INFO
    log.log(
        level,
        "%s %s %s %.1fms request %s",
        request.method,
        request.path[:200],
        response.status_code,
        elapsed_ms,
        request_id,
    )
    return response


def _error_response(error: ApiError) -> Response:
    response = jsonify(error.anthropic_body() if _is_anthropic_route() else error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def _http_error(error: HTTPException) -> Response:
    """Werkzeug's own errors (routing, limits) as OpenAI error objects."""
    status = error.code or 500
    if isinstance(error, NotFound):
        api_error = ApiError(404, f"no such path: {request.path[:200]}", code="not_found")
    elif isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        message = f"method {request.method} is not allowed on {request.path[:200]}"
        api_error = ApiError(405, message, code="method_not_allowed", headers={"Allow": allowed})
    else:
        code = error.name.lower().replace(" ", "_")
        api_error = ApiError(status, error.description or error.name, code=code)
    return _error_response(api_error)


def _internal_error(error: Exception) -> Response:
    request_id = g.get("request_id", "")
    log.error("request %s failed", request_id, exc_info=error)
    message = f"internal error, request id {request_id}"
    return _error_response(ApiError(500, message, code="internal_error"))
