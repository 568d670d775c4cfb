"""Anthropic Messages request bodies, and their mapping to the chat template's input.

The mapping gives the same internal request as an OpenAI chat: messages in OpenAI form
(tool results become "tool" messages, tool_use blocks become "tool_calls", thinking
blocks become "reasoning_content"), tools in OpenAI function form, tool_choice in
OpenAI form, sampling and tool fields as ``ToolFields``.

Image and document blocks are replaced by a short text saying they were left out (the
model reads text only), so an agent conversation that once read an image goes on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from refserver.api.shared.schemas import (
    Count,
    StrictModel,
    ToolFields,
    ToolName,
    check_stop_strings,
)

# Tags in error locations are capitalized so that the 400 names only fields.
_TAGS = {
    "text": "Text",
    "tool_use": "ToolUse",
    "tool_result": "ToolResult",
    "thinking": "Thinking",
    "redacted_thinking": "RedactedThinking",
}
_NO_TYPE = {
    "custom_error_type": "block_type",
    "custom_error_message": 'a content block needs a "type" string',
}
_USER_BLOCKS = frozenset(("text", "tool_result", "other"))
_ASSISTANT_BLOCKS = frozenset(("text", "tool_use", "thinking", "redacted_thinking"))
_SYSTEM_BLOCKS = frozenset(("text",))
# The block Claude Code puts first in `system` for Anthropic's billing: it changes with
# every session and sub-agent, so kept in the prompt it would defeat the prefix cache
# (~30k tokens prefilled again each time), and it says nothing to the model.
BILLING_HEADER = "x-anthropic-billing-header:"


class TextBlock(StrictModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(StrictModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(StrictModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(StrictModel):
    type: Literal["redacted_thinking"]


class OtherBlock(StrictModel):
    """An image, a document, or another block a text-only model cannot read."""

    type: str

    def placeholder(self) -> str:
        return f"[{self.type} omitted: this model reads text only]"


def _block_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return _TAGS.get(kind, "Other")


def _result_part_tag(value: Any) -> str | None:
    tag = _block_tag(value)
    return tag if tag in (None, "Text") else "Other"


ResultPart = Annotated[
    Annotated[TextBlock, Tag("Text")] | Annotated[OtherBlock, Tag("Other")],
    Discriminator(_result_part_tag, **_NO_TYPE),
]


class ToolResultBlock(StrictModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None

    def result_text(self) -> str:
        """The result as the model reads it; a failed tool's result says it failed."""
        text = _text_of(self.content or "")
        return f"Error: {text}" if self.is_error else text


Block = Annotated[
    Annotated[TextBlock, Tag("Text")]
    | Annotated[ToolUseBlock, Tag("ToolUse")]
    | Annotated[ToolResultBlock, Tag("ToolResult")]
    | Annotated[ThinkingBlock, Tag("Thinking")]
    | Annotated[RedactedThinkingBlock, Tag("RedactedThinking")]
    | Annotated[OtherBlock, Tag("Other")],
    Discriminator(_block_tag, **_NO_TYPE),
]


def _text_of(content: str | list[Any]) -> str:
    """Text blocks joined by newlines; other blocks as placeholders."""
    if isinstance(content, str):
        return content
    parts = [b.text if isinstance(b, TextBlock) else b.placeholder() for b in content]
    return "\n".join(parts)


class Message(StrictModel):
    # "system": an instruction in the middle of the conversation, as Claude Code sends
    # one (beta mid-conversation-system); read as a <system-reminder> of the user's.
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> Message:
        allowed = {"user": _USER_BLOCKS, "assistant": _ASSISTANT_BLOCKS}.get(
            self.role, _SYSTEM_BLOCKS
        )
        for block in self.content if isinstance(self.content, list) else ():
            kind = block.type if block.type in _TAGS else "other"
            if kind not in allowed:
                raise ValueError(f"{self.role} messages cannot hold {block.type} blocks")
        return self

    def to_template(self) -> list[dict[str, Any]]:
        """The chat-template messages: a user message may also yield "tool" messages."""
        if self.role == "system":
            # MiniMax's template renders a system message first or not at all: this one
            # reaches the model as Claude Code itself words it when a server refuses it.
            reminder = f"<system-reminder>\n{_text_of(self.content)}\n</system-reminder>"
            return [{"role": "user", "content": reminder}]
        if isinstance(self.content, str):
            return [{"role": self.role, "content": self.content}]
        if self.role == "assistant":
            return [self._assistant()]
        return self._user()

    def _assistant(self) -> dict[str, Any]:
        blocks = self.content
        text = "\n".join(b.text for b in blocks if isinstance(b, TextBlock))
        message: dict[str, Any] = {"role": "assistant", "content": text}
        thinking = "\n".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
        if thinking:
            message["reasoning_content"] = thinking
        calls = [
            {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}}
            for b in blocks
            if isinstance(b, ToolUseBlock)
        ]
        if calls:
            message["tool_calls"] = calls
        return message

    def _user(self) -> list[dict[str, Any]]:
        """Tool results and text in their order; consecutive text blocks make one message."""
        messages: list[dict[str, Any]] = []
        texts: list[Any] = []
        for block in self.content:
            if isinstance(block, ToolResultBlock):
                if texts:
                    messages.append({"role": "user", "content": _text_of(texts)})
                    texts = []
                result = {"role": "tool", "tool_call_id": block.tool_use_id}
                messages.append({**result, "content": block.result_text()})
            else:
                texts.append(block)
        if texts or not messages:
            messages.append({"role": "user", "content": _text_of(texts)})
        return messages


class Tool(StrictModel):
    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _client_tool(self) -> Tool:
        if self.type not in (None, "custom"):
            raise ValueError(f"server tools such as {self.type!r} are not supported here")
        if self.input_schema is None:
            raise ValueError("a tool needs an input_schema object")
        return self

    def to_template(self) -> dict[str, Any]:
        function = {"name": self.name, "parameters": self.input_schema}
        if self.description is not None:
            function["description"] = self.description
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


class ToolChoice(StrictModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError('a tool_choice of type "tool" needs a "name"')
        return self

    def to_openai(self) -> Any:
        """The equivalent OpenAI tool_choice."""
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]


class Thinking(StrictModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Count | None = None


class CountTokensRequest(StrictModel):
    """The body of /v1/messages/count_tokens: everything that makes up the prompt."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(None, max_length=1024)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    def template_messages(self) -> list[dict[str, Any]]:
        """The conversation as the chat template takes it, system prompt first."""
        messages = []
        system = self.system
        if isinstance(system, list):
            system = [block for block in system if not block.text.startswith(BILLING_HEADER)]
        if system:
            messages.append({"role": "system", "content": _text_of(system)})
        for message in self.messages:
            messages += message.to_template()
        return messages

    def continues_assistant(self) -> bool:
        """A conversation that ends on assistant text is a prefill: the reply continues
        that text instead of starting a new turn (as Anthropic's API does)."""
        last = self.template_messages()[-1]
        return last["role"] == "assistant" and bool(last["content"]) and "tool_calls" not in last

    def template_tools(self) -> list[dict[str, Any]]:
        return [tool.to_template() for tool in self.tools or []]

    def openai_tool_choice(self) -> Any:
        return None if self.tool_choice is None else self.tool_choice.to_openai()

    @property
    def parallel_tool_calls(self) -> bool:
        return not (self.tool_choice and self.tool_choice.disable_parallel_tool_use)

    def template_kwargs(self) -> dict[str, Any] | None:
        """enable_thinking from "thinking"; absent leaves the server's default."""
        if self.thinking is None:
            return None
        return {"enable_thinking": self.thinking.type != "disabled"}


class OutputFormat(StrictModel):
    """Anthropic's structured output: the reply is JSON valid against `schema`."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(StrictModel):
    format: OutputFormat | None = None  # its `effort` is ignored: nothing here to spend


class MessagesRequest(CountTokensRequest):
    """The body of /v1/messages."""

    max_tokens: Count
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None  # the beta's name before output_config
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)  # 0: the top token alone
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    stream: bool | None = None

    @field_validator("stop_sequences")
    @classmethod
    def _stop_sequences(cls, stops: list[str] | None) -> list[str] | None:
        check_stop_strings(stops or [])
        return stops

    def sampling(self) -> ToolFields:
        """The sampling and tool fields of the engine request, as an OpenAI request has
        them (the tools decide what constrained decoding enforces)."""
        fields = {"max_tokens": self.max_tokens, "stop": self.stop_sequences}
        fields |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        fields |= {"tools": self.template_tools(), "tool_choice": self.openai_tool_choice()}
        fields |= {"parallel_tool_calls": self.parallel_tool_calls}
        output = self.output_config.format if self.output_config else self.output_format
        if output is not None:  # enforced as OpenAI's response_format is
            json_schema = {"name": "output", "schema": output.schema_}
            fields["response_format"] = {"type": "json_schema", "json_schema": json_schema}
        thinking = self.thinking
        if thinking is not None and thinking.type == "enabled" and thinking.budget_tokens:
            # Anthropic wants budget_tokens below max_tokens; one above is held to it.
            fields["thinking_budget"] = max(1, min(thinking.budget_tokens, self.max_tokens - 1))
        return ToolFields.model_validate(fields)
