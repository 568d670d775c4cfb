"""The OpenAI request bodies: chat and text completions, on the shared request fields."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from refserver.api.errors import invalid_request
from refserver.api.shared.schemas import (
    MAX_CHOICES,
    RESERVED_TEMPLATE_KWARGS,
    Message,
    SamplingFields,
    TokenId,
    ToolFields,
    template_switches,
)


class ChatCompletionRequest(ToolFields):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return top

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
        if kwargs is None:
            return None
        reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(kwargs))
        if reserved:
            raise ValueError(f"these keys may not be set: {', '.join(reserved)}")
        return template_switches(kwargs)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    # 0 with echo: the prompt alone, scored (logprobs), as evaluation harnesses ask.
    max_tokens: int | None = Field(None, ge=0, le=2**31 - 1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_something_to_answer(self) -> None:
        """400 for max_tokens 0 without echo: the reply would be empty."""
        if self.requested_max_tokens == 0 and not self.echo:
            message = "max_tokens 0 generates nothing; it is for echo (the prompt back, scored)"
            raise invalid_request(message, "max_tokens")

    @property
    def prompt_logprobs(self) -> int | None:
        """The alternatives per prompt token to return (echo with logprobs), else None."""
        return self.logprobs if self.echo else None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or token ids: a list of texts or of id lists is
        several prompts (a choice each, or `n`), as evaluation harnesses batch them."""
        if _several(self.prompt):
            return list(self.prompt)
        return [self.prompt]

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt: Any) -> Any:
        prompts = prompt if _several(prompt) else [prompt]
        if len(prompts) > MAX_CHOICES:
            raise ValueError(f"at most {MAX_CHOICES} prompts, got {len(prompts)}")
        for index, each in enumerate(prompts):
            if len(each) == 0:
                where = "" if len(prompts) == 1 else f" (prompt {index})"
                raise ValueError(f"the prompt must not be empty{where}")
        return prompt

    @field_validator("best_of", "suffix")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        only = {"best_of": 1, "suffix": ""}[info.field_name]
        if value is not None and value != only:
            raise ValueError(f"only {info.field_name}={only!r} is supported")
        return value


def _several(prompt: Any) -> bool:
    """A list of texts or of token-id lists, rather than one prompt."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], str | list)
