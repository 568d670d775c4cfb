"""The OpenAI routes: validate, build the prompt, submit, answer in JSON or SSE."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, g, jsonify

from refserver.api.errors import ApiError
from refserver.api.openai.chat import chat_chunks, chat_completion
from refserver.api.openai.common import ResponseMeta
from refserver.api.openai.completions import Echo, completion_chunks, text_completion
from refserver.api.openai.requests import ChatCompletionRequest, CompletionRequest
from refserver.api.shared.agent_message import agent_builder
from refserver.api.shared.chat_prompt import render_chat
from refserver.api.shared.generation import EventPump, KeepAlive
from refserver.api.shared.message import MessageBuilderFactory
from refserver.api.shared.sse import event_stream, sse_response
from refserver.api.shared.submit import Submitter
from refserver.api.validation import parse_request


class OpenAIRoutes:
    """Handlers of /v1/models, /v1/chat/completions and /v1/completions (and unprefixed)."""

    def __init__(
        self, submitter: Submitter, message_builder: MessageBuilderFactory = agent_builder
    ):
        self._submitter = submitter
        self._vocab = submitter.vocab
        self._settings = submitter.settings
        self._message_builder = message_builder
        self._created = int(time.time())  # the model object's "created": when served here

    def register(self, app: Flask) -> None:
        for prefix in ("/v1", ""):
            app.get(f"{prefix}/models", endpoint=f"models{prefix}")(self.models)
            app.get(f"{prefix}/models/<path:model_id>", endpoint=f"model{prefix}")(self.model)
            app.post(f"{prefix}/chat/completions", endpoint=f"chat{prefix}")(self.chat)
            app.post(f"{prefix}/completions", endpoint=f"completions{prefix}")(self.completions)

    def models(self) -> Response:
        return jsonify({"object": "list", "data": [self._model_object()]})

    def model(self, model_id: str) -> Response:
        """The served model under any name a request may use (the SDK's models.retrieve)."""
        self._check_model(model_id)
        return jsonify(self._model_object())

    def _model_object(self) -> dict:
        model = {"id": self._settings.model_name, "object": "model", "created": self._created}
        return model | {"owned_by": "refserver", "context_length": self._settings.context_length}

    def chat(self) -> Response:
        body = parse_request(ChatCompletionRequest, self._submitter.read_body())
        self._check_model(body.model)
        messages = [message.to_template() for message in body.messages]
        tools = [tool.to_template() for tool in body.tools or []]
        tool_choice = body.tool_choice
        if tool_choice is not None and not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
        parallel = body.parallel_tool_calls is not False
        prompt, plan = render_chat(
            self._vocab, messages, tools, tool_choice, parallel, body.chat_template_kwargs
        )
        top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        meta = ResponseMeta(f"chatcmpl-{g.request_id}", self._settings.model_name)
        builder = self._message_builder(plan, prompt)
        vocab = self._vocab
        pieces, pump = self._submitter.start(body, prompt, "messages", top_logprobs)
        if body.stream:
            chunks = chat_chunks(meta, pieces, builder, vocab, top_logprobs, body.include_usage)
            return self._stream(chunks, pump)
        return self._submitter.reply(
            lambda: chat_completion(meta, pieces, builder, vocab, top_logprobs)
        )

    def completions(self) -> Response:
        body = parse_request(CompletionRequest, self._submitter.read_body())
        self._check_model(body.model)
        body.check_something_to_answer()
        prompt = self._vocab.completion_prompt(body.prompt)
        top_logprobs = body.logprobs
        echo = None
        if body.echo:
            text = (
                body.prompt
                if isinstance(body.prompt, str)
                else self._vocab.decode(prompt.token_ids)
            )
            echo = Echo(text, prompt.token_ids)
        meta = ResponseMeta(f"cmpl-{g.request_id}", self._settings.model_name)
        # The end token's score is listed (evaluations count every generated entry).
        pieces, pump = self._submitter.start(
            body, prompt, "prompt", top_logprobs, body.prompt_logprobs, keep_end_token=True
        )
        vocab = self._vocab
        if body.stream:
            chunks = completion_chunks(meta, pieces, vocab, top_logprobs, body.include_usage, echo)
            return self._stream(chunks, pump)
        return self._submitter.reply(
            lambda: text_completion(meta, pieces, vocab, top_logprobs, echo)
        )

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self._settings.served_names:
            message = f"model {model[:200]!r} is not served here; use {self._settings.model_name!r}"
            raise ApiError(404, message, param="model", code="model_not_found")

    @staticmethod
    def _stream(chunks: Iterator[dict | KeepAlive], pump: EventPump) -> Response:
        return sse_response(event_stream(chunks, g.request_id), on_close=pump.close)
