"""The OpenAI routes: validate, build the prompt, submit, answer in JSON or SSE."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, g, jsonify, request

from refserver.api.detokenize import TextStream
from refserver.api.engine_request import engine_request
from refserver.api.errors import ApiError
from refserver.api.generation import EventPump, GenerationFailed, KeepAlive, generate
from refserver.api.message import MessageBuilder, PlainText
from refserver.api.openai_chat import Pieces, chat_chunks, chat_completion
from refserver.api.openai_common import ResponseMeta
from refserver.api.openai_completions import completion_chunks, text_completion
from refserver.api.prompting import Prompt, Vocabulary
from refserver.api.request_body import read_json_object
from refserver.api.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from refserver.api.settings import ApiSettings
from refserver.api.sse import event_stream, sse_response
from refserver.api.validation import parse_request
from refserver.engine.interface import Engine, NotReadyError, QueueFullError

MessageBuilderFactory = Callable[[ChatCompletionRequest, Prompt], MessageBuilder]


def plain_text_builder(body: ChatCompletionRequest, prompt: Prompt) -> MessageBuilder:
    return PlainText()


class OpenAIRoutes:
    """Handlers of /v1/models, /v1/chat/completions and /v1/completions (and unprefixed)."""

    def __init__(
        self,
        engine: Engine,
        vocab: Vocabulary,
        settings: ApiSettings,
        message_builder: MessageBuilderFactory = plain_text_builder,
    ):
        self._engine = engine
        self._vocab = vocab
        self._settings = settings
        self._message_builder = message_builder

    def register(self, app: Flask) -> None:
        for prefix in ("/v1", ""):
            app.get(f"{prefix}/models", endpoint=f"models{prefix}")(self.models)
            app.post(f"{prefix}/chat/completions", endpoint=f"chat{prefix}")(self.chat)
            app.post(f"{prefix}/completions", endpoint=f"completions{prefix}")(self.completions)

    def models(self) -> Response:
        model = {"id": self._settings.model_name, "object": "model", "created": 0}
        model |= {"owned_by": "refserver", "context_length": self._settings.context_length}
        return jsonify({"object": "list", "data": [model]})

    def chat(self) -> Response:
        body = parse_request(ChatCompletionRequest, self._read_body())
        self._check_model(body.model)
        messages = [message.to_template() for message in body.messages]
        tools = [tool.to_template() for tool in body.tools or []]
        prompt = self._vocab.chat_prompt(messages, tools, body.chat_template_kwargs)
        top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        meta = ResponseMeta(f"chatcmpl-{g.request_id}", self._settings.model_name)
        builder = self._message_builder(body, prompt)
        vocab = self._vocab
        pieces, pump = self._start(body, prompt, "messages", top_logprobs)
        if body.stream:
            chunks = chat_chunks(meta, pieces, builder, vocab, top_logprobs, body.include_usage)
            return self._stream(chunks, pump)
        return self._reply(lambda: chat_completion(meta, pieces, builder, vocab, top_logprobs))

    def completions(self) -> Response:
        body = parse_request(CompletionRequest, self._read_body())
        self._check_model(body.model)
        prompt = self._vocab.completion_prompt(body.prompt)
        top_logprobs = body.logprobs
        meta = ResponseMeta(f"cmpl-{g.request_id}", self._settings.model_name)
        pieces, pump = self._start(body, prompt, "prompt", top_logprobs)
        if body.stream:
            chunks = completion_chunks(meta, pieces, self._vocab, top_logprobs, body.include_usage)
            return self._stream(chunks, pump)
        return self._reply(lambda: text_completion(meta, pieces, self._vocab, top_logprobs))

    def _read_body(self) -> dict[str, Any]:
        return read_json_object(self._settings.max_body_bytes)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model not in self._settings.served_names:
            message = f"model {model[:200]!r} is not served here; use {self._settings.model_name!r}"
            raise ApiError(404, message, param="model", code="model_not_found")

    def _start(
        self, body: SamplingFields, prompt: Prompt, prompt_param: str, top_logprobs: int | None
    ) -> tuple[Pieces, EventPump]:
        """Submit to the engine: 429 when its queue is full, 503 when it is not ready.

        prompt_param names the field that held the prompt, for a context-length 400.
        """
        settings = self._settings
        job = engine_request(
            g.request_id, body, prompt, prompt_param, settings, self._vocab, top_logprobs
        )
        try:
            pump = EventPump(self._engine, job)
        except QueueFullError as exc:
            message = str(exc) or "the server is busy; retry later"
            retry = {"Retry-After": str(max(1, exc.retry_after_seconds))}
            raise ApiError(429, message, code="queue_full", headers=retry) from None
        except NotReadyError as exc:
            message = str(exc) or "the server is not ready"
            raise ApiError(503, message, code="not_ready") from None
        text = TextStream(self._vocab.decode, self._vocab.eos_token_ids, body.stop_strings)
        # waitress (with channel_request_lookahead) tells whether the client hung up.
        client_gone = request.environ.get("waitress.client_disconnected", lambda: False)
        prompt_tokens = len(prompt.token_ids)
        pieces = generate(pump, text, prompt_tokens, settings.keepalive_seconds, client_gone)
        return pieces, pump

    @staticmethod
    def _stream(chunks: Iterator[dict | KeepAlive], pump: EventPump) -> Response:
        return sse_response(event_stream(chunks, g.request_id), on_close=pump.close)

    @staticmethod
    def _reply(build: Callable[[], dict[str, Any]]) -> Response:
        try:
            return jsonify(build())
        except GenerationFailed as exc:
            raise ApiError(503, exc.message, code=exc.code) from None
