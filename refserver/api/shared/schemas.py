"""Request bodies as pydantic models: types and ranges checked here, not by hand.

Validation is strict (no "5" for 5, no true for 1), unknown fields are ignored and a
null for an optional field means the field is absent. ``validation.parse_request``
applies these models and turns their errors into 400s.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from refserver.api.request_body import lone_surrogate_path

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000
MAX_LOGIT_BIAS = 1024
# Choices one request may ask for (`n`, times the prompts of a text completion); the
# engine's open requests bound them further.
MAX_CHOICES = 128

# Keys of apply_chat_template itself: a client may not override them (nor send a template).
RESERVED_TEMPLATE_KWARGS = frozenset(
    (
        "conversation", "messages", "tools", "documents", "chat_template",
        "add_generation_prompt", "continue_final_message", "tokenize", "padding",
        "truncation", "max_length", "return_tensors", "return_dict",
        "return_assistant_tokens_mask", "tokenizer_kwargs", "sanitize_control_tokens",
    )
)  # fmt: skip

Int64 = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]
Count = Annotated[int, Field(ge=1, le=2**31 - 1)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]


def check_stop_strings(strings: list[str]) -> None:
    """Raise ValueError when there are too many stop strings or one is too long."""
    if len(strings) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(strings)}")
    if any(len(s) > MAX_STOP_CHARS for s in strings):
        raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")


def template_switches(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Template kwargs with "true"/"false" (any case) as booleans: a template reads every
    non-empty string as true, so "false" would do the opposite of what it says.

    enable_thinking must then be a boolean; null leaves the server's default, as a null
    field does.
    """
    switches = {key: _as_boolean(value) for key, value in kwargs.items()}
    thinking = switches.get("enable_thinking")
    if thinking is None:
        switches.pop("enable_thinking", None)
    elif not isinstance(thinking, bool):
        raise ValueError(f"enable_thinking must be true or false, got {thinking!r:.40}")
    return switches


def _as_boolean(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class StreamOptions(StrictModel):
    include_usage: bool | None = None


class JsonSchemaFormat(StrictModel):
    """OpenAI's ``json_schema`` object: the schema the reply must match. With strict,
    keywords constrained decoding cannot enforce are a 400 instead of unchecked."""

    model_config = ConfigDict(populate_by_name=True)

    name: str | None = Field(None, max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    """ "text", or a reply enforced by constrained decoding: "json_object" (one JSON
    object) or "json_schema" (JSON valid against ``json_schema.schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('a response_format of type "json_schema" needs a "json_schema" object')
        return self

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must match, or None for free text."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            return self.json_schema.schema_ or {}
        return None


class SamplingFields(StrictModel):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)  # 0: the top token alone
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    min_p: float | None = Field(None, ge=0, le=1)
    # Below 0.01 the penalty's division overflows float32 (1e-300 is 0 there).
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    user: str | None = None
    response_format: ResponseFormat | None = None
    # Tokens of reasoning before the grammar closes it (Anthropic's thinking.budget_tokens).
    thinking_budget: Count | None = None

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        # As OpenAI does. "stream" is missing from info.data only when it failed its own
        # check, which is then the error to report.
        if options is not None and info.data.get("stream", True) is not True:
            raise ValueError("stream_options is only allowed when stream is true")
        return options

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is None:
            return None
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries, got {len(bias)}")
        for key, value in bias.items():
            if not key.isascii() or not key.isdigit() or len(key) > 10:
                raise ValueError(f"keys must be token ids, got {key[:20]!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"values must be in [-100, 100], got {value} for {key}")
        return bias

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        check_stop_strings([stop] if isinstance(stop, str) else stop or [])
        return stop

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings, empty ones dropped."""
        strings = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in strings if s)

    @property
    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens (the newer name) wins over max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        """The request field that set the token limit, for the errors about it."""
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(StrictModel):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> TextPart:
        if self.type != "text":
            raise ValueError(f"only text content parts are supported, got type {self.type!r}")
        if self.text is None:
            raise ValueError("a text content part needs a 'text' string")
        return self


class FunctionCall(StrictModel):
    name: str
    arguments: str | dict[str, Any] = "{}"

    @field_validator("arguments")
    @classmethod
    def _arguments_are_text(cls, arguments: str | dict[str, Any]) -> str | dict[str, Any]:
        return check_arguments_text(arguments)


def check_arguments_text(arguments: str | dict[str, Any]) -> str | dict[str, Any]:
    """A call's arguments, or ValueError where their JSON holds a lone surrogate: the
    body's check saw a JSON string, where an escaped surrogate is still plain text; it
    appears once the arguments are decoded for the template."""
    where = lone_surrogate_path(_decoded_arguments(arguments))
    if where is not None:
        inside = f" at {where[:200]}" if where else ""
        raise ValueError(f"the JSON holds a lone UTF-16 surrogate (\\ud800-\\udfff){inside}")
    return arguments


def _decoded_arguments(arguments: str | dict[str, Any]) -> Any:
    """A JSON string decoded; anything else (or a string that is not JSON) as it is."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except (ValueError, RecursionError):
            pass  # left as the client's string; the template decides what to do
    return arguments


class ToolCall(StrictModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_template(self) -> dict[str, Any]:
        """The call for the chat template, arguments decoded to an object when they are JSON."""
        arguments = _decoded_arguments(self.function.arguments)
        call = {"type": self.type, "function": {"name": self.function.name, "arguments": arguments}}
        return call if self.id is None else {"id": self.id, **call}


class Message(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_present(self) -> Message:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates take it: content as one string.

        "developer" (OpenAI's newer name for system instructions) renders as "system":
        chat templates of open models know only the latter.
        """
        content = self.content or ""
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content)
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": content}
        for key in ("name", "tool_call_id", "reasoning_content"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        if self.tool_calls:
            message["tool_calls"] = [call.to_template() for call in self.tool_calls]
        return message


def _spellable_name(name: str) -> str:
    """A tool's name as MiniMax's calls spell it (<invoke name="...">): a name with a
    quote, an angle bracket or a line break in it could be neither called nor read."""
    if re.search(r'[<>"\x00-\x1f]', name):
        raise ValueError('a tool name may not contain <, >, " or control characters')
    return name


ToolName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_spellable_name)]


class FunctionDef(StrictModel):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDef

    def to_template(self) -> dict[str, Any]:
        return {"type": self.type, "function": self.function.model_dump(exclude_none=True)}


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: dict[str, str]


class ToolFields(SamplingFields):
    """Sampling fields with the tools a reply may call and how (see tools.choice)."""

    tools: list[Tool] | None = Field(None, max_length=1024)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def template_tools(self) -> list[dict[str, Any]]:
        return [tool.to_template() for tool in self.tools or []]

    def choice(self) -> Any:
        """tool_choice as plan_tools takes it."""
        choice = self.tool_choice
        return choice if choice is None or isinstance(choice, str) else choice.model_dump()
