"""Server-sent events: chunks as `data:` lines, keep-alives, errors, the end of a stream.

One loop serves both wire formats; a ``SseFormat`` says how each speaks: OpenAI sends
bare `data:` lines, keep-alive comments, an error object and `data: [DONE]`; Anthropic
sends named events (`event: ...`), `ping` events and an `error` event, and no end marker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Response

from refserver.api.errors import anthropic_error_body, error_body
from refserver.api.shared.generation import GenerationFailed, KeepAlive

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data(obj: dict[str, Any]) -> bytes:
    """One SSE event carrying a JSON object."""
    return b"data: " + _json(obj) + b"\n\n"


def named_event(name: str, obj: dict[str, Any]) -> bytes:
    """One SSE event with a name (Anthropic's style)."""
    return b"event: " + name.encode() + b"\ndata: " + _json(obj) + b"\n\n"


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SseFormat:
    """How one wire format encodes a chunk, a keep-alive, an error and the end."""

    encode: Callable[[Any], bytes]
    keepalive: bytes
    error: Callable[[int, str, str], bytes]  # (status, message, code)
    done: bytes


OPENAI_SSE = SseFormat(
    encode=data,
    keepalive=KEEPALIVE,
    error=lambda status, message, code: data(error_body(status, message, code=code)),
    done=DONE,
)
ANTHROPIC_SSE = SseFormat(
    encode=lambda event: named_event(*event),
    keepalive=named_event("ping", {"type": "ping"}),
    error=lambda status, message, code: named_event("error", anthropic_error_body(status, message)),
    done=b"",
)


def event_stream(
    chunks: Iterator[Any], request_id: str, fmt: SseFormat = OPENAI_SSE
) -> Iterator[bytes]:
    """Encode chunks as SSE, ending with the format's end marker also after a failure.

    The first write is a comment, so that the headers leave at once: waitress sends them
    with the first non-empty write (as PEP 3333 asks), and a request waiting in the
    queue has nothing else to send (a client with a first-byte timeout gave up on it).
    Closing this generator (client gone) closes `chunks`, which cancels the engine request.
    """
    yield KEEPALIVE
    try:
        for chunk in chunks:
            if isinstance(chunk, KeepAlive):
                yield KEEPALIVE if chunk.comment else fmt.keepalive
            else:
                yield fmt.encode(chunk)
    except GenerationFailed as exc:
        log.warning("request %s failed while streaming: %s", request_id, exc.message)
        yield fmt.error(exc.status, exc.message, exc.code)
    except Exception:
        log.exception("request %s failed while streaming", request_id)
        yield fmt.error(500, f"internal error, request id {request_id}", "internal_error")
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if fmt.done:
        yield fmt.done


def sse_response(body: Iterator[bytes], on_close: Callable[[], None]) -> Response:
    """A streamed text/event-stream response; on_close runs when the server closes it."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # no proxy buffering (nginx)
    response.call_on_close(on_close)
    return response
