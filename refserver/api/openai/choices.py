"""The choices of one reply: `n` samples of each prompt, and the several prompts of a
text completion (as evaluation harnesses batch them).

Each choice is an engine request of its own; they run side by side (the engine batches
them) and the reply lists them prompt by prompt, `n` each, with one usage: every prompt
counted once, as OpenAI counts it, and its cached tokens those of its choice that read
the least from the prefix cache (the others reuse what that one computed).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

from refserver.api.openai.common import ResponseMeta, usage, usage_chunk
from refserver.api.shared.generation import EventPump, KeepAlive, Outcome, Pieces

T = TypeVar("T")
# A keep-alive this soon after other output is dropped: each waiting choice sends one.
_KEEPALIVE_GAP = 1.0
Chunk = dict[str, Any] | KeepAlive


class Choices:
    """The running engine requests of a reply's choices, in the reply's order."""

    def __init__(self, runs: list[tuple[Pieces, EventPump]], per_prompt: int):
        self._pumps = [pump for _, pump in runs]
        self._outcomes: list[Outcome | None] = [None] * len(runs)
        self.pieces = [self._recorded(pieces, index) for index, (pieces, _) in enumerate(runs)]
        self.per_prompt = per_prompt

    def close(self) -> None:
        """Cancel every choice still running. Idempotent."""
        for pump in self._pumps:
            pump.close()

    def reply(
        self, meta: ResponseMeta, obj: str, choice: Callable[[int, Pieces], dict[str, Any]]
    ) -> dict[str, Any]:
        """The whole reply: `choice(index, pieces)` builds each choice, side by side; a
        failed one fails the reply at once and cancels the rest."""

        def built(index: int, pieces: Pieces) -> Iterator[tuple[int, dict[str, Any]]]:
            yield index, choice(index, pieces)

        try:
            built_choices = [built(*each) for each in enumerate(self.pieces)]
            choices = dict(merged(built_choices, self._names()))
        finally:
            self.close()
        in_order = [choices[index] for index in range(len(self.pieces))]
        return {**meta.header(obj), "choices": in_order, "usage": usage(self.outcome())}

    def stream(
        self,
        meta: ResponseMeta,
        obj: str,
        chunks: Callable[[int, Pieces], Iterator[Chunk]],
        include_usage: bool,
    ) -> Iterator[Chunk]:
        """Every choice's chunks as they come (`chunks(index, pieces)`), then one usage
        chunk if asked; a failed choice ends the stream and cancels the rest. Of the
        keep-alives of choices that wait together, one goes out."""
        streams = [chunks(index, pieces) for index, pieces in enumerate(self.pieces)]
        several = len(streams) > 1
        sent = float("-inf")
        try:
            for chunk in merged(streams, self._names()):
                now = time.monotonic()
                if several and isinstance(chunk, KeepAlive) and now - sent < _KEEPALIVE_GAP:
                    continue
                sent = now
                yield chunk
        finally:
            self.close()
        if include_usage:
            yield usage_chunk(meta, obj, self.outcome())

    def outcome(self) -> Outcome:
        """The reply's counts, once every choice has ended."""
        outcomes = [outcome for outcome in self._outcomes if outcome is not None]
        assert len(outcomes) == len(self._outcomes), "every choice ended with an Outcome"
        return combined(outcomes, self.per_prompt)

    def _names(self) -> list[str]:
        return [f"choice-{pump.request_id}" for pump in self._pumps]

    def _recorded(self, pieces: Pieces, index: int) -> Pieces:
        with closing(pieces):
            for item in pieces:
                if isinstance(item, Outcome):
                    self._outcomes[index] = item
                yield item


def combined(outcomes: list[Outcome], per_prompt: int) -> Outcome:
    """One Outcome for the usage of choices that come `per_prompt` to a prompt."""
    prompt = cached = completion = reasoning = 0
    for start in range(0, len(outcomes), per_prompt):
        group = outcomes[start : start + per_prompt]
        prompt += group[0].prompt_tokens
        cached += min(outcome.cached_tokens for outcome in group)
        completion += sum(outcome.completion_tokens for outcome in group)
        reasoning += sum(outcome.reasoning_tokens for outcome in group)
    last = outcomes[-1]
    return Outcome(last.finish_reason, prompt, completion, cached, None, reasoning)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_ENDED = object()


def merged(streams: list[Iterator[T]], names: list[str]) -> Iterator[T]:
    """The items of several streams as they come, each read in a thread of its own (of
    that name); the first failure is raised. The caller stops the streams that are still
    running (their engine requests) when this ends early."""
    if len(streams) == 1:
        yield from streams[0]
        return
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    done = threading.Event()

    def read(stream: Iterator[T]) -> None:
        try:
            with closing(stream):  # type: ignore[type-var]  # generators
                for item in stream:
                    items.put(item)
                    if done.is_set():
                        return
        except BaseException as exc:  # noqa: BLE001  # handed to the reader
            items.put(_Failed(exc))
        finally:
            items.put(_ENDED)

    for stream, name in zip(streams, names, strict=True):
        threading.Thread(target=read, args=(stream,), name=name, daemon=True).start()
    running = len(streams)
    try:
        while running:
            item = items.get()
            if item is _ENDED:
                running -= 1
            elif isinstance(item, _Failed):
                raise item.error
            else:
                yield item
    finally:
        done.set()
