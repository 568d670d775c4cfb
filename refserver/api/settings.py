"""What the HTTP layer needs to know: served model, limits, auth, CORS, defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Accepted in a request's "model" field in addition to the served names.
GENERIC_MODEL_NAME = "default_model"


class SettingsError(ValueError):
    """An ApiSettings value is out of range; the message names the field."""


@dataclass(frozen=True)
class ApiSettings:
    """Settings of the OpenAI-compatible API, built once by the CLI.

    model_name: the id listed by /v1/models. Requests may name it, any of
    model_aliases (e.g. the model directory's basename) or "default_model".
    context_length: prompt + completion tokens the model accepts.
    default_max_tokens: completion budget when a request gives none (also bounded
    by the room left in the context). max_tokens_cap: the most a request may ask for.
    api_keys: accepted bearer keys; empty means no authentication.
    allowed_origins: CORS origins ("*" for any); empty means CORS off.
    temperature/top_p/top_k: sampling defaults when a request leaves them out.
    keepalive_seconds: an SSE comment is sent when no data went out for this long.
    request_timeout_seconds: server-side deadline of a generation (None: none).
    chat_template_kwargs: defaults passed to the chat template (e.g. enable_thinking);
    a request's own chat_template_kwargs override them key by key.
    max_open_requests: requests the engine holds at once, running and queued (None: no
    bound here); each choice of a reply is one, so a reply may not ask for more.
    """

    model_name: str
    context_length: int
    model_aliases: tuple[str, ...] = ()
    default_max_tokens: int = 4096
    max_tokens_cap: int = 131072
    max_body_bytes: int = 16 * 1024 * 1024
    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    keepalive_seconds: float = 15.0
    request_timeout_seconds: float | None = None
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_open_requests: int | None = None

    def __post_init__(self) -> None:
        _require(bool(self.model_name), "model_name", "must not be empty", self.model_name)
        for name in ("context_length", "default_max_tokens", "max_tokens_cap", "max_body_bytes"):
            value = getattr(self, name)
            _require(value >= 1, name, "must be at least 1", value)
        temperature, top_p, keepalive = self.temperature, self.top_p, self.keepalive_seconds
        _require(0.0 <= temperature <= 2.0, "temperature", "must be in [0, 2]", temperature)
        _require(0.0 < top_p <= 1.0, "top_p", "must be in (0, 1]", top_p)
        _require(self.top_k >= 0, "top_k", "must be >= 0", self.top_k)
        _require(keepalive > 0, "keepalive_seconds", "must be > 0", keepalive)
        timeout = self.request_timeout_seconds
        _require(timeout is None or timeout > 0, "request_timeout_seconds", "must be > 0", timeout)
        open_ = self.max_open_requests
        _require(open_ is None or open_ >= 1, "max_open_requests", "must be at least 1", open_)
        _require(all(self.api_keys), "api_keys", "must not contain an empty key", self.api_keys)

    @property
    def served_names(self) -> frozenset[str]:
        """Every value a request's "model" field may take."""
        return frozenset((self.model_name, *self.model_aliases, GENERIC_MODEL_NAME))


def model_aliases_for(model_path: str) -> tuple[str, ...]:
    """Aliases for a model given as a directory or a Hugging Face repo id."""
    names = {model_path, os.path.basename(os.path.normpath(model_path))}
    return tuple(sorted(name for name in names if name))


def _require(ok: bool, name: str, rule: str, value: object) -> None:
    if not ok:
        raise SettingsError(f"ApiSettings.{name} {rule}, got {value!r}")
