"""What the API sees of the engine: requests in, a stream of events out.

The API knows nothing of MLX or ranks; it talks to any object with this shape,
so that wire-format tests run against a fake engine without a model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np


class TokenMatcher(Protocol):
    """One sequence's place in a grammar (see refserver.constrain)."""

    def advance(self, token: int) -> None:
        """Move past a sampled token; raises when the grammar refuses it."""
        ...

    def allowed(self) -> np.ndarray:
        """One bool per tokenizer token: may it come next."""
        ...


class Constraint(Protocol):
    """A compiled grammar the output must follow; each sequence starts its own matcher."""

    def start(self) -> TokenMatcher: ...


class EngineError(Exception):
    """Base class of errors the engine raises to the API."""


class QueueFullError(EngineError):
    """The waiting queue is at its limit; the client should retry later."""

    def __init__(self, message: str, retry_after_seconds: int = 1):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class NotReadyError(EngineError):
    """The engine is loading, draining or has lost a rank."""


class CapacityError(EngineError):
    """The request could never fit the cluster's KV memory; the message says by how much.
    `limit_tokens`: the most its prompt plus max_tokens may be; `longest_prompt`: the
    longest prompt that fits at all (see KvLedger)."""

    def __init__(
        self,
        message: str,
        prompt_tokens: int,
        max_tokens: int,
        limit_tokens: int,
        longest_prompt: int,
    ):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.limit_tokens = limit_tokens
        self.longest_prompt = longest_prompt


@dataclass(frozen=True)
class SamplingParams:
    """How rank 0 turns logits into a token. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    # Only tokens the grammar allows are sampled (response_format, forced tool calls).
    constraint: Constraint | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: prompt token ids and limits.

    max_tokens 0 reads the prompt and generates nothing (to score it). With
    `prompt_logprobs` (the alternatives to give per position, 0 for none), the engine
    also scores the prompt: a PromptLogprobs event for each token after the first. Such
    a request reads no prefix cache, since a cached token is not computed again.
    """

    id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Absolute time.monotonic() after which the engine cancels the sequence.
    deadline: float | None = None
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. logprob/top_logprobs only when requested."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """The scores of prompt tokens `start`, `start + 1`, …: each token's log-probability
    given the tokens before it, with the most likely tokens there (prompt_logprobs)."""

    start: int
    tokens: tuple[TokenEvent, ...]


@dataclass(frozen=True)
class PrefillProgress:
    """Prompt processing progress; lets the API send keep-alives. The first comes when
    the engine admits the prompt, before any of it is computed."""

    processed: int  # prompt tokens in the KV cache: those reused plus those computed
    total: int
    cached: int = 0  # prompt tokens reused from the prefix cache, known from admission


@dataclass(frozen=True)
class Finished:
    """The last event of a successful stream.

    reason: "stop" (an end-of-sequence token; the API may still end earlier on a
    stop string), "length" (max_tokens or context), "cancelled" (client gone or
    deadline passed). queue_seconds: how long it waited before its prefill began.
    """

    reason: Literal["stop", "length", "cancelled"]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    queue_seconds: float = 0.0


@dataclass(frozen=True)
class ErrorEvent:
    """The engine failed this request.

    code: "engine_error" when the cluster failed (a rank was lost), "request_failed"
    when the request's own settings failed (e.g. its sampler) and the cluster serves on.
    """

    message: str
    code: str = "engine_error"


Event = TokenEvent | PromptLogprobs | PrefillProgress | Finished | ErrorEvent


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str = ""
    ranks: int = 1
    kv: dict | None = None  # KV capacity and use, in tokens (see kv_budget)


class Engine(Protocol):
    """The engine as the API uses it."""

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[Iterator[Event]]:
        """Queue every one of `requests` (a reply's choices), or none of them; iterate
        each one's events until Finished or ErrorEvent.

        Raises QueueFullError, NotReadyError or CapacityError at once when they cannot
        all be queued. Closing an iterator early cancels its request.
        """
        ...

    def cancel(self, request_id: str) -> None:
        """Stop generating for a request; its stream ends with Finished(cancelled)."""
        ...

    def health(self) -> Health: ...
