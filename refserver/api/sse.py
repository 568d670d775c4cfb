"""Server-sent events: chunks as `data:` lines, keep-alive comments, errors, [DONE]."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response

from refserver.api.errors import error_body
from refserver.api.generation import GenerationFailed, KeepAlive

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data(obj: dict[str, Any]) -> bytes:
    """One SSE event carrying a JSON object."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def event_stream(chunks: Iterator[dict | KeepAlive], request_id: str) -> Iterator[bytes]:
    """Encode chunks as SSE, ending with [DONE] also after a failure.

    The first (empty) write makes the WSGI server send the headers at once. Closing this
    generator (client gone) closes `chunks`, which cancels the engine request.
    """
    yield b""
    try:
        for chunk in chunks:
            yield KEEPALIVE if isinstance(chunk, KeepAlive) else data(chunk)
    except GenerationFailed as exc:
        log.warning("request %s failed while streaming: %s", request_id, exc.message)
        yield data(error_body(503, exc.message, code=exc.code))
    except Exception:
        log.exception("request %s failed while streaming", request_id)
        message = f"internal error, request id {request_id}"
        yield data(error_body(500, message, code="internal_error"))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    yield DONE


def sse_response(body: Iterator[bytes], on_close: Callable[[], None]) -> Response:
    """A streamed text/event-stream response; on_close runs when the server closes it."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # no proxy buffering (nginx)
    response.call_on_close(on_close)
    return response
