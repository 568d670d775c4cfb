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
    if "\\u" in text and _has_lone_surrogate(body):
        raise invalid_request(
            "the body holds a lone UTF-16 surrogate (\\ud800-\\udfff) that is not text",
            None,
            "invalid_json",
        )
    return body


def _has_lone_surrogate(body: dict[str, Any]) -> bool:
    """JSON escapes can spell half a surrogate pair, which no tokenizer can encode."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _content_length(max_bytes: int) -> int:
    header = request.headers.get("Content-Length", "").strip()
    if not header:
        raise ApiError(411, "a Content-Length header is required", code="length_required")
    if not header.isascii() or not header.isdigit():
        raise invalid_request(f"invalid Content-Length {header[:40]!r}", None, "invalid_header")
    length = int(header) if len(header) <= 18 else max_bytes + 1
    if length > max_bytes:
        message = f"the body has {header[:40]} bytes; this server accepts at most {max_bytes}"
        raise ApiError(413, message, code="request_too_large")
    return length


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
