"""The Anthropic Messages routes: POST /v1/messages and /v1/messages/count_tokens.

A request is mapped to the same internal request as an OpenAI chat (see
anthropic.schemas) and generated through the same engine and message builder.
Any "model" name is accepted and the served model answers: Claude Code asks for several
model names (a main one, a small fast one) and one model serves them all here.
Errors on these routes are Anthropic error objects (see ``app``).
"""

from __future__ import annotations

import re

from flask import Flask, Response, g, jsonify

from refserver.api.anthropic.blocks import MessageMeta, message_events, message_reply
from refserver.api.anthropic.schemas import CountTokensRequest, MessagesRequest
from refserver.api.shared.chat_prompt import render_chat
from refserver.api.shared.message import MessageBuilderFactory
from refserver.api.shared.prompting import Prompt
from refserver.api.shared.sse import ANTHROPIC_SSE, event_stream, sse_response
from refserver.api.shared.submit import Submitter
from refserver.api.validation import parse_request
from refserver.tools import ToolPlan, prompt_opens_reasoning

MESSAGES_PATH = "/v1/messages"


def is_anthropic_path(path: str) -> bool:
    """Whether `path` is one of these routes (their errors are Anthropic error objects);
    doubled slashes count as one, as the app serves them."""
    path = re.sub("/{2,}", "/", path)
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


class AnthropicRoutes:
    """Handlers of /v1/messages and /v1/messages/count_tokens."""

    def __init__(self, submitter: Submitter, message_builder: MessageBuilderFactory):
        self._submitter = submitter
        self._message_builder = message_builder

    def register(self, app: Flask) -> None:
        app.post(MESSAGES_PATH, endpoint="anthropic_messages")(self.messages)
        app.post(f"{MESSAGES_PATH}/count_tokens", endpoint="anthropic_count")(self.count_tokens)

    def messages(self) -> Response:
        body = parse_request(MessagesRequest, self._submitter.read_body())
        prompt, plan = self._render(body)
        builder = self._message_builder(plan, prompt)
        pieces, pump = self._submitter.start(body.sampling(), prompt, "messages")
        model = self._submitter.settings.model_name
        meta = MessageMeta(f"msg_{g.request_id}", model, len(prompt.token_ids))
        if body.stream:
            thinks_first = prompt_opens_reasoning(prompt.text or "")
            events = message_events(meta, pieces, builder, thinks_first)
            stream = event_stream(events, g.request_id, ANTHROPIC_SSE)
            return sse_response(stream, on_close=pump.close)
        return self._submitter.reply(lambda: message_reply(meta, pieces, builder))

    def count_tokens(self) -> Response:
        body = parse_request(CountTokensRequest, self._submitter.read_body())
        prompt, _ = self._render(body)
        return jsonify({"input_tokens": len(prompt.token_ids)})

    def _render(self, body: CountTokensRequest) -> tuple[Prompt, ToolPlan]:
        return render_chat(
            self._submitter.vocab,
            body.template_messages(),
            body.template_tools(),
            body.openai_tool_choice(),
            body.parallel_tool_calls,
            body.template_kwargs(),
            continue_final=body.continues_assistant(),
        )
