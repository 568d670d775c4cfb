"""Pieces shared by the chat and text completion wire formats."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from refserver.api.errors import ApiError
from refserver.api.settings import ApiSettings
from refserver.api.shared.generation import Outcome


@dataclass(frozen=True)
class ResponseMeta:
    """What every response and chunk of one request repeats."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def header(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def usage(outcome: Outcome) -> dict[str, Any]:
    """usage{prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details,
    completion_tokens_details}."""
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
    }


def usage_chunk(meta: ResponseMeta, obj: str, outcome: Outcome) -> dict[str, Any]:
    """The last chunk of a stream with include_usage: no choices, only usage."""
    return {**meta.header(obj), "choices": [], "usage": usage(outcome)}


def check_model(settings: ApiSettings, model: str | None) -> None:
    """A 404 for a model this server does not serve (None: the client named none)."""
    if model is not None and model not in settings.served_names:
        message = f"model {model[:200]!r} is not served here; use {settings.model_name!r}"
        raise ApiError(404, message, param="model", code="model_not_found")
