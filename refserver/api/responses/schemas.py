"""OpenAI Responses request bodies (/v1/responses), and their mapping to the chat
template's input.

The mapping gives the same internal request as an OpenAI chat: `instructions` become
the system message, input items become chat messages (reasoning, assistant text and
function calls of one turn make one assistant message; a function_call_output
becomes a "tool" message), function tools and tool_choice take their chat form.

A request may continue a stored response (previous_response_id) and refer to stored
items (item_reference): store.py resolves both before the mapping. Conversations
(the Conversations API) and background responses are 400s that say so.
Images, files and audio are replaced by a short text saying they were left out (the
model reads text only), so an agent conversation that once read an image goes on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from refserver.api.shared.schemas import (
    Count,
    FunctionCall,
    StrictModel,
    ToolCall,
    ToolFields,
    ToolName,
    check_arguments_text,
)

_TEXT_PARTS = frozenset(("input_text", "output_text", "text", "summary_text", "reasoning_text"))
_NO_CONVERSATIONS = (
    "this server keeps no conversation objects: continue a response with "
    "previous_response_id, or send the whole conversation as input"
)


class ContentPart(StrictModel):
    """A part of a message's content: text, a refusal, or something a text-only model
    cannot read (input_image, input_file, input_audio), read as a placeholder."""

    type: str
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _has_its_text(self) -> ContentPart:
        if self.type in _TEXT_PARTS and self.text is None:
            raise ValueError(f"a {self.type} part needs a 'text' string")
        if self.type == "refusal" and self.refusal is None:
            raise ValueError("a refusal part needs a 'refusal' string")
        return self

    def as_text(self) -> str:
        if self.type in _TEXT_PARTS:
            return self.text or ""
        if self.type == "refusal":
            return self.refusal or ""
        return f"[{self.type} omitted: this model reads text only]"


def _text_of(content: str | list[ContentPart]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.as_text() for part in content)


class MessageItem(StrictModel):
    """A message: `type` "message", or left out (the easy form {role, content})."""

    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]

    def to_template(self) -> dict[str, Any]:
        # "developer" (OpenAI's newer name for instructions) renders as "system".
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": _text_of(self.content)}


class FunctionCallItem(StrictModel):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str
    name: str
    arguments: Annotated[str, AfterValidator(check_arguments_text)]


class FunctionCallOutputItem(StrictModel):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class ReasoningItem(StrictModel):
    """A reply's reasoning, sent back: its text (content) or, without one, its summary.
    An encrypted_content alone carries nothing this server can read."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ContentPart] = []
    content: list[ContentPart] | None = None

    def text(self) -> str:
        parts = self.content or self.summary
        return "\n".join(part.as_text() for part in parts)


class ItemReference(StrictModel):
    """An item of a stored response, by its id (store.py resolves it)."""

    type: Literal["item_reference"]
    id: str


class UnsupportedItem(StrictModel):
    """An item this server cannot take: the call of a tool it does not offer (web
    search, computer use, ...) or its result."""

    type: str

    @model_validator(mode="after")
    def _refuse(self) -> UnsupportedItem:
        raise ValueError(f"input items of type {self.type!r} are not supported here")


def _item_tag(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type", "message" if "role" in value else None)
    if not isinstance(kind, str):
        return None
    return {
        "message": "Message",
        "function_call": "FunctionCall",
        "function_call_output": "FunctionCallOutput",
        "reasoning": "Reasoning",
        "item_reference": "ItemReference",
    }.get(kind, "Unsupported")


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[ItemReference, Tag("ItemReference")]
    | Annotated[UnsupportedItem, Tag("Unsupported")],
    Discriminator(
        _item_tag,
        custom_error_type="item_type",
        custom_error_message='an input item needs a "type" string (or a "role")',
    ),
]


class FunctionTool(StrictModel):
    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def to_template(self) -> dict[str, Any]:
        function = self.model_dump(exclude_none=True, exclude={"type"})
        return {"type": "function", "function": function}


class HostedTool(StrictModel):
    """A tool the API's host would run (web_search, file_search, code_interpreter,
    mcp, local_shell, custom, ...): nothing here runs it, so the model is not offered
    it. Codex sends web_search with every request, so refusing it would refuse Codex."""

    type: str
    name: str | None = None

    def label(self) -> str:
        return f"{self.type} ({self.name})" if self.name else self.type


def _tool_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str):
        return None
    return "Function" if kind == "function" else "Hosted"


AnyTool = Annotated[
    Annotated[FunctionTool, Tag("Function")] | Annotated[HostedTool, Tag("Hosted")],
    Discriminator(
        _tool_tag,
        custom_error_type="tool_type",
        custom_error_message='a tool needs a "type" string',
    ),
]


class NamedFunction(StrictModel):
    type: Literal["function"]
    name: str


class AllowedTools(StrictModel):
    """tool_choice "allowed_tools": only these tools, called as `mode` says."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]

    @property
    def names(self) -> set[str]:
        return {tool.get("name") for tool in self.tools if tool.get("type") == "function"}


class TextFormat(StrictModel):
    """text.format: "text", "json_object", or "json_schema" with the schema inline."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError('a format of type "json_schema" needs a "schema" object')
        return self

    def response_format(self) -> dict[str, Any]:
        """The chat completion's response_format that enforces the same."""
        if self.type != "json_schema":
            return {"type": self.type}
        fields = {"name": self.name, "description": self.description, "strict": self.strict}
        json_schema = {key: value for key, value in fields.items() if value is not None}
        return {"type": "json_schema", "json_schema": {**json_schema, "schema": self.schema_}}


class TextOptions(StrictModel):
    format: TextFormat | None = None  # its `verbosity` is ignored


class ReasoningOptions(StrictModel):
    # "none" turns the model's thinking off; other efforts leave it on (nothing to spend).
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(StrictModel):
    """The body of POST /v1/responses."""

    model: str | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    tools: list[AnyTool] | None = Field(None, max_length=1024)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | AllowedTools | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Count | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    stream: bool | None = None
    store: bool | None = None  # unless false, the response is kept (store.py)
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None

    @field_validator("conversation")
    @classmethod
    def _no_conversations(cls, conversation: Any) -> Any:
        if conversation is not None:
            raise ValueError(_NO_CONVERSATIONS)
        return conversation

    @field_validator("background")
    @classmethod
    def _in_the_foreground(cls, background: bool | None) -> bool | None:
        if background:
            raise ValueError("background responses are not supported here")
        return background

    @property
    def stored(self) -> bool:
        """Whether the response is kept: OpenAI's default is to keep it."""
        return self.store is not False

    def input_items(self) -> list[Any]:
        """The input as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def template_messages(self, conversation: list[Any]) -> list[dict[str, Any]]:
        """The conversation's items (item references resolved) as the chat template
        takes them, these instructions first (a continued response's do not carry over,
        as at OpenAI)."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        turn: dict[str, Any] | None = None  # the assistant message being put together
        for item in conversation:
            if isinstance(item, MessageItem) and item.role != "assistant":
                turn = None
                messages.append(item.to_template())
            elif isinstance(item, FunctionCallOutputItem):
                turn = None
                output = _text_of(item.output)
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
            else:
                turn = _assistant_turn(turn, item, messages)
        return messages

    @property
    def function_tools(self) -> list[FunctionTool]:
        """The tools the model is offered: functions (those allowed_tools names, if any)."""
        functions = [tool for tool in self.tools or [] if isinstance(tool, FunctionTool)]
        if isinstance(self.tool_choice, AllowedTools):
            allowed = self.tool_choice.names
            functions = [tool for tool in functions if tool.name in allowed]
        return functions

    @property
    def hosted_tools(self) -> list[HostedTool]:
        """The tools left out: the host would run them, and nothing here does."""
        return [tool for tool in self.tools or [] if isinstance(tool, HostedTool)]

    def template_tools(self) -> list[dict[str, Any]]:
        return [tool.to_template() for tool in self.function_tools]

    def template_kwargs(self) -> dict[str, Any] | None:
        """enable_thinking false for reasoning.effort "none"; else the server's default."""
        if self.reasoning is not None and self.reasoning.effort == "none":
            return {"enable_thinking": False}
        return None

    def chat_tool_choice(self) -> Any:
        choice = self.tool_choice
        if isinstance(choice, NamedFunction):
            return {"type": "function", "function": {"name": choice.name}}
        if isinstance(choice, AllowedTools):
            return choice.mode
        return choice

    @property
    def text_format(self) -> TextFormat:
        if self.text is None or self.text.format is None:
            return TextFormat(type="text")
        return self.text.format

    def sampling(self) -> ResponseSampling:
        """The sampling and tool fields of the engine request, as a chat request has them."""
        fields: dict[str, Any] = {"max_tokens": self.max_output_tokens}
        fields |= {"temperature": self.temperature, "top_p": self.top_p}
        fields |= {"tools": self.template_tools(), "tool_choice": self.chat_tool_choice()}
        fields |= {"parallel_tool_calls": self.parallel_tool_calls}
        if self.text_format.type != "text":
            fields["response_format"] = self.text_format.response_format()
        return ResponseSampling.model_validate(fields)


class ResponseSampling(ToolFields):
    """The engine request's fields, from a Responses request: its token limit is named
    max_output_tokens in the errors about it."""

    @property
    def max_tokens_param(self) -> str:
        return "max_output_tokens"


def _assistant_turn(
    turn: dict[str, Any] | None, item: Any, messages: list[dict[str, Any]]
) -> dict[str, Any]:
    """Add an assistant-side item (reasoning, text or a function call) to the open
    assistant message, or start one: a turn is its reasoning, then text, then calls."""
    starts_over = turn is None
    if turn is not None and isinstance(item, ReasoningItem):
        starts_over = bool(turn["content"] or turn.get("tool_calls"))
    if turn is not None and isinstance(item, MessageItem):
        starts_over = "tool_calls" in turn
    if starts_over:
        turn = {"role": "assistant", "content": ""}
        messages.append(turn)
    if isinstance(item, ReasoningItem):
        reasoning = item.text()
        if reasoning:
            earlier = turn.get("reasoning_content")
            turn["reasoning_content"] = f"{earlier}\n{reasoning}" if earlier else reasoning
    elif isinstance(item, MessageItem):
        text = _text_of(item.content)
        turn["content"] = (
            f"{turn['content']}\n{text}" if turn["content"] and text else turn["content"] + text
        )
    else:
        function = FunctionCall(name=item.name, arguments=item.arguments)
        call = ToolCall(id=item.call_id, function=function).to_template()
        turn.setdefault("tool_calls", []).append(call)
    return turn
