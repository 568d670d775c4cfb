"""Run one engine request and turn its events into text pieces and an outcome.

Both wire formats (chat, completions) and both modes (JSON, SSE) consume
``generate``: it yields ``Admitted`` once the engine has admitted the prompt (and
so knows how much of it its prefix cache serves), ``PromptScores`` when the prompt's
tokens were to be scored (echo), ``TextPiece`` (visible text plus the tokens behind
it), ``KeepAlive`` when nothing happened for a while, and one final
``Outcome``; it raises ``GenerationFailed`` when the engine fails the request. Closing
it cancels the request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from refserver.api.shared.detokenize import Phase, TextStream
from refserver.engine.interface import (
    Engine,
    ErrorEvent,
    Event,
    Finished,
    PrefillProgress,
    PromptLogprobs,
    TokenEvent,
)

log = logging.getLogger(__name__)

# After a stop string, how long to wait for the engine to confirm the cancellation
# (its Finished event carries the true cached-token count).
_CANCEL_WAIT_SECONDS = 1.0
# How often to ask the WSGI server whether the client is still connected.
_CLIENT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class TextPiece:
    text: str
    tokens: tuple[TokenEvent, ...]


@dataclass(frozen=True)
class PromptScores:
    """Prompt tokens with their log-probabilities, in order from the prompt's second
    token; all of them come before the first TextPiece."""

    tokens: tuple[TokenEvent, ...]


@dataclass(frozen=True)
class KeepAlive:
    # As an SSE comment whatever the wire format: an Anthropic stream's `ping` event
    # must not come before its message_start.
    comment: bool = False


@dataclass(frozen=True)
class Admitted:
    """The engine took the prompt in; `cached_tokens` of it come from the prefix cache
    (the count the Outcome reports too). Comes once, before any TextPiece or Outcome."""

    cached_tokens: int


@dataclass(frozen=True)
class Outcome:
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended the text, if one did
    reasoning_tokens: int = 0  # of completion_tokens, those inside <think>…</think>


@dataclass
class ReasoningCount:
    """The reply's reasoning tokens: from its start when the prompt left ``<think>``
    open (`inside`), else from a ``<think>`` token, through the ``</think>`` token."""

    open_id: int | None
    close_id: int | None
    inside: bool
    count: int = 0

    def add(self, token_id: int) -> Phase:
        """Count `token_id`; where it stands (its markers count as reasoning). Without a
        ``</think>`` token, a ``<think>`` could not be closed: it opens nothing."""
        opens = token_id == self.open_id and self.close_id is not None
        if not (self.inside or opens):
            return Phase.ANSWER
        self.count += 1
        self.inside = token_id != self.close_id
        return Phase.REASONING if self.inside else Phase.REASONING_END


Pieces = Iterator[Admitted | PromptScores | TextPiece | KeepAlive | Outcome]


class GenerationFailed(Exception):
    """The engine could not finish the request; the message is safe to show a client."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def status(self) -> int:
        """500 for the request's own failure (a retry fails alike), else 503 (retry later)."""
        return 500 if self.code == "request_failed" else 503


class EventPump:
    """Read an engine event stream in a thread, so that the reader can wait with a timeout.

    `events` is what the engine's ``submit_all`` returned for the request: submitting
    runs in the caller's thread, so QueueFullError and NotReadyError surface before any
    response is sent. ``close`` cancels the request unless it has finished.
    """

    def __init__(self, engine: Engine, request_id: str, events: Iterator[Event]):
        self._engine = engine
        self._request_id = request_id
        self._events = events
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._cancelled = False
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"events-{request_id}", daemon=True)
        self._thread.start()

    @property
    def request_id(self) -> str:
        return self._request_id

    def next(self, timeout: float | None) -> Event | None:
        """The next event, or None when none came within `timeout` seconds."""
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        self._finished = isinstance(event, Finished | ErrorEvent)
        return event

    def cancel(self) -> None:
        """Ask the engine to stop this request (once); its stream then ends."""
        if not self._cancelled and not self._finished:
            self._cancelled = True
            self._engine.cancel(self._request_id)

    def close(self) -> None:
        """Cancel if still running and let the reading thread end. Idempotent."""
        self.cancel()
        self._closed.set()

    def _run(self) -> None:
        ended = False
        try:
            for event in self._events:
                self._queue.put(event)
                ended = isinstance(event, Finished | ErrorEvent)
                if ended or self._closed.is_set():
                    break
        except Exception:
            log.exception("engine event stream of request %s failed", self._request_id)
            self._queue.put(ErrorEvent("internal engine error"))
            ended = True
        finally:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
        if not ended:  # closed while running: a reader still waiting must not wait for ever
            self._queue.put(ErrorEvent("the generation was cancelled", "cancelled"))


def generate(
    pump: EventPump,
    text: TextStream,
    prompt_tokens: int,
    keepalive_seconds: float,
    client_gone: Callable[[], bool] = lambda: False,
    reasoning: ReasoningCount | None = None,
    keep_end_token: bool = False,
) -> Pieces:
    """Drive one request to its end; see the module docstring.

    client_gone: the WSGI server's disconnect check; a client that left cancels the request.
    reasoning: counts the reply's reasoning tokens for the Outcome.
    keep_end_token: an end-of-sequence token that comes (with its score: the engine sends
    it only when logprobs were asked for) stays among the TextPiece's tokens, as text
    completions list it; chat's logprobs leave it out, as OpenAI's do.
    """
    reasoning = reasoning or ReasoningCount(None, None, inside=False)
    completion_tokens = 0
    admitted = False
    pending: list[TokenEvent] = []
    last_output = time.monotonic()
    try:
        while True:
            wait = max(0.0, keepalive_seconds - (time.monotonic() - last_output))
            event = pump.next(timeout=min(wait, _CLIENT_CHECK_SECONDS))
            if client_gone():
                raise GenerationFailed("the client disconnected", "client_disconnected")
            if time.monotonic() - last_output >= keepalive_seconds:
                yield KeepAlive()
                last_output = time.monotonic()
            if event is None:
                continue
            if isinstance(event, ErrorEvent):
                raise GenerationFailed(event.message, event.code)
            if not admitted:  # an engine may skip the progress events: never skip this
                admitted = True
                yield Admitted(_cached_tokens(event))
            if isinstance(event, Finished):
                yield from _finish(event, text, pending, reasoning)
                return
            if isinstance(event, PromptLogprobs):
                yield PromptScores(event.tokens)
                continue
            if not isinstance(event, TokenEvent):
                continue  # prefill progress: only keeps the keep-alive clock honest
            completion_tokens += 1
            phase = Phase.ANSWER
            if event.token_id not in text.skip_ids:  # an end-of-sequence token is no text
                phase = reasoning.add(event.token_id)
                pending.append(event)
            elif keep_end_token:
                pending.append(event)  # but its score is an entry of the logprobs
            # Stop strings end the answer: a thought that restates "Question:" must not
            # leave the reply without its answer.
            piece, stopped = text.add(event.token_id, phase)
            if piece or stopped:
                yield TextPiece(piece, tuple(pending))
                pending.clear()
                last_output = time.monotonic()
            if stopped:
                counts = (prompt_tokens, completion_tokens, reasoning.count)
                yield _stop_early(pump, counts, text.stop_sequence)
                return
    finally:
        pump.close()


def _cached_tokens(event: Event) -> int:
    """The prompt's tokens from the prefix cache, as far as `event` tells (a token: 0)."""
    if isinstance(event, PrefillProgress):
        return event.cached
    return event.cached_tokens if isinstance(event, Finished) else 0


def _finish(
    event: Finished, text: TextStream, pending: list[TokenEvent], reasoning: ReasoningCount
) -> Iterator[TextPiece | Outcome]:
    if event.reason == "cancelled":
        raise GenerationFailed("the generation was cancelled by the server", "cancelled")
    piece, stopped = text.finish(Phase.REASONING if reasoning.inside else Phase.ANSWER)
    if piece or pending:
        yield TextPiece(piece, tuple(pending))
    reason = "stop" if stopped else event.reason
    counts = (event.prompt_tokens, event.completion_tokens, event.cached_tokens)
    yield Outcome(reason, *counts, text.stop_sequence, reasoning.count)


def _stop_early(
    pump: EventPump, counts: tuple[int, int, int], stop_sequence: str | None
) -> Outcome:
    """A stop string ended the text: cancel, and take the cache count from the engine.
    counts: the prompt's, the completion's and its reasoning's tokens."""
    prompt_tokens, completion_tokens, reasoning_tokens = counts
    pump.cancel()
    deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
    cached = 0
    while (remaining := deadline - time.monotonic()) > 0:
        event = pump.next(timeout=remaining)
        if isinstance(event, Finished):
            cached = event.cached_tokens
        if event is None or isinstance(event, Finished | ErrorEvent):
            break
    return Outcome(
        "stop", prompt_tokens, completion_tokens, cached, stop_sequence, reasoning_tokens
    )
