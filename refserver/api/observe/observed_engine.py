"""The engine as the routes use it, with every request's events timed, counted and logged.

The events are read here in the HTTP side's threads as they arrive, so the engine
loop does nothing for /metrics or the log: time to first token, the gaps between
tokens, the token counts of each request and one INFO line when it ends (counts and
times only, never the prompt's text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from flask import has_request_context, request

from refserver.api.observe.metrics import ServerMetrics
from refserver.engine.interface import (
    Engine,
    ErrorEvent,
    Event,
    Finished,
    GenerationRequest,
    Health,
    TokenEvent,
)

log = logging.getLogger(__name__)


class ObservedEngine:
    """Wraps an Engine; see the module docstring."""

    def __init__(self, engine: Engine, metrics: ServerMetrics):
        self._engine = engine
        self._metrics = metrics

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[Iterator[Event]]:
        route = _route()
        records = [_Record(self._metrics, request, route) for request in requests]
        streams = self._engine.submit_all(requests)
        return [record.observe(events) for record, events in zip(records, streams, strict=True)]

    def cancel(self, request_id: str) -> None:
        self._engine.cancel(request_id)

    def health(self) -> Health:
        return self._engine.health()


def _route() -> str:
    """The route's pattern (a small label set), not the path a client sent."""
    if has_request_context() and request.url_rule is not None:
        return request.url_rule.rule
    return "unknown"


class _Record:
    """One request's times and counts while its events pass through."""

    def __init__(self, metrics: ServerMetrics, request: GenerationRequest, route: str):
        self.metrics = metrics
        self.request = request
        self.route = route
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.tokens = 0

    def observe(self, events: Iterator[Event]) -> Iterator[Event]:
        ended = False
        try:
            for event in events:
                if isinstance(event, TokenEvent):
                    self._token()
                elif isinstance(event, Finished):
                    ended = True
                    self._finished(event)
                elif isinstance(event, ErrorEvent):
                    ended = True
                    self._ended("error", len(self.request.prompt_tokens), 0, self.tokens)
                yield event
        finally:
            if not ended:  # the reader left before the last event (the engine cancels it)
                self._ended("cancelled", len(self.request.prompt_tokens), 0, self.tokens)
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def _token(self) -> None:
        now = time.monotonic()
        metrics = self.metrics
        if self.last_token is None:
            self.first_token = now
            metrics.time_to_first_token.observe(now - self.started)
        else:
            metrics.inter_token_latency.observe(now - self.last_token)
        self.last_token = now
        self.tokens += 1
        metrics.generation_tokens.inc()

    def _finished(self, event: Finished) -> None:
        # An end-of-sequence token ends the stream without a TokenEvent of its own.
        if event.completion_tokens > self.tokens:
            self.metrics.generation_tokens.inc(event.completion_tokens - self.tokens)
        self.metrics.queue_time.observe(event.queue_seconds)
        counts = (event.prompt_tokens, event.cached_tokens, event.completion_tokens)
        self._ended(event.reason, *counts)

    def _ended(self, reason: str, prompt: int, cached: int, generated: int) -> None:
        metrics, elapsed = self.metrics, time.monotonic() - self.started
        metrics.finished.labels(reason).inc()
        metrics.prompt_tokens.inc(prompt)
        metrics.cached_tokens.inc(cached)
        metrics.request_latency.observe(elapsed)
        log.info(
            "request %s %s: %s; prompt %d tokens (%d cached), generated %d; "
            "first token %s, %s tokens/s, %.2f s in all",
            self.request.id,
            self.route,
            reason,
            prompt,
            cached,
            generated,
            "-" if self.first_token is None else f"{self.first_token - self.started:.3f} s",
            self._decode_rate(),
            elapsed,
        )

    def _decode_rate(self) -> str:
        """Tokens per second after the first one (the prefill is in time to first token)."""
        if self.tokens < 2 or self.last_token == self.first_token:
            return "-"
        return f"{(self.tokens - 1) / (self.last_token - self.first_token):.1f}"
