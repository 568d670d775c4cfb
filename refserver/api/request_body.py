"""Read a request body as one JSON object, within limits, never crashing on bad input."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from refserver.api.errors import ApiError, invalid_request


def read_json_object(max_bytes: int) -> dict[str, Any]:
    """The body as a dict: 411 without Content-Length, 413 over max_bytes, else 400."""
    length = _content_length(max_bytes)
    raw = request.stream.read(length)
    if len(raw) != length:
        raise invalid_request(f"the body ended after {len(raw)} of {length} bytes", None)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_request("the body is not valid UTF-8", None, "invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise invalid_request("the JSON body is nested too deeply", None, "invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, a constant (NaN), a too long integer
        message = f"the body is not valid JSON: {str(exc).split(';')[0][:200]}"
        raise invalid_request(message, None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object", None, "invalid_json")
    surrogate_at = lone_surrogate_path(body) if "\\u" in text else None
    if surrogate_at is not None:
        where = surrogate_at[:200] or "a key of the body"
        message = f"{where} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
        raise invalid_request(message, surrogate_at[:200] or None, "invalid_json")
    return body


def lone_surrogate_path(value: Any) -> str | None:
    """Where decoded JSON holds half a surrogate pair, or None: the path of the string
    ("messages[0].content"), or of the object whose key holds it ("" for the top level).
    JSON escapes can spell one, which no tokenizer can encode."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None  # the common case, checked at C speed
    except UnicodeEncodeError:
        return _first_surrogate_path(value)


def _first_surrogate_path(value: Any) -> str:
    # Iterative, not recursive: a body may be nested as deeply as json.loads allows.
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str) and not _is_text(item):
            return path
        if isinstance(item, dict):
            if not all(_is_text(key) for key in item):
                return path  # not the key itself: the path must be printable
            children = [(f"{path}.{key}" if path else key, child) for key, child in item.items()]
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
    return ""


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _content_length(max_bytes: int) -> int:
    header = request.headers.get("Content-Length", "").strip()
    if not header:
        raise ApiError(411, "a Content-Length header is required", code="length_required")
    if not header.isascii() or not header.isdigit():
        raise invalid_request(f"invalid Content-Length {header[:40]!r}", None, "invalid_header")
    length = int(header) if len(header) <= 18 else max_bytes + 1
    if length > max_bytes:
        raise ApiError(413, too_large_message(max_bytes), code="request_too_large")
    return length


def too_large_message(max_bytes: int) -> str:
    """The 413 message; the app's and the WSGI server's checks both say it."""
    return f"the body is too large: this server accepts at most {max_bytes} bytes"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
