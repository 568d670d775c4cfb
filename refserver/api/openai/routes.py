"""The OpenAI routes: validate, build the prompt, submit, answer in JSON or SSE."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, g, jsonify

from refserver.api.openai.chat import CHUNK, chat_choice, chat_chunks
from refserver.api.openai.choices import Choices, Chunk
from refserver.api.openai.common import ResponseMeta, check_model
from refserver.api.openai.completions import OBJECT, Echo, completion_choice, completion_chunks
from refserver.api.openai.requests import ChatCompletionRequest, CompletionRequest
from refserver.api.shared.agent_message import agent_builder
from refserver.api.shared.chat_prompt import render_chat
from refserver.api.shared.generation import Pieces
from refserver.api.shared.message import MessageBuilderFactory
from refserver.api.shared.prompting import Prompt
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
        check_model(self._settings, model_id)
        return jsonify(self._model_object())

    def _model_object(self) -> dict:
        model = {"id": self._settings.model_name, "object": "model", "created": self._created}
        return model | {"owned_by": "refserver", "context_length": self._settings.context_length}

    def chat(self) -> Response:
        body = parse_request(ChatCompletionRequest, self._submitter.read_body())
        check_model(self._settings, body.model)
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
        vocab = self._vocab
        runs = self._submitter.start_choices(body, [prompt], "messages", top_logprobs)
        choices = Choices(runs, body.choices_per_prompt)
        if body.stream:

            def chunks(index: int, pieces: Pieces) -> Iterator[Chunk]:
                builder = self._message_builder(plan, prompt)
                return chat_chunks(meta, index, pieces, builder, vocab, top_logprobs)

            return self._stream(choices.stream(meta, CHUNK, chunks, body.include_usage), choices)

        def choice(index: int, pieces: Pieces) -> dict:
            builder = self._message_builder(plan, prompt)
            return chat_choice(index, pieces, builder, vocab, top_logprobs)

        return self._submitter.reply(lambda: choices.reply(meta, "chat.completion", choice))

    def completions(self) -> Response:
        body = parse_request(CompletionRequest, self._submitter.read_body())
        check_model(self._settings, body.model)
        body.check_something_to_answer()
        vocab = self._vocab
        prompts = [vocab.completion_prompt(prompt) for prompt in body.prompts]
        top_logprobs = body.logprobs
        echoes = []
        if body.echo:
            echoes = [self._echo(*each) for each in zip(body.prompts, prompts, strict=True)]
        meta = ResponseMeta(f"cmpl-{g.request_id}", self._settings.model_name)
        # The end token's score is listed (evaluations count every generated entry).
        runs = self._submitter.start_choices(
            body, prompts, "prompt", top_logprobs, body.prompt_logprobs, keep_end_token=True
        )
        choices = Choices(runs, body.choices_per_prompt)

        def echo_of(index: int) -> Echo | None:
            return echoes[index // choices.per_prompt] if echoes else None

        if body.stream:

            def chunks(index: int, pieces: Pieces) -> Iterator[Chunk]:
                echo = echo_of(index)
                return completion_chunks(meta, index, pieces, vocab, top_logprobs, echo)

            return self._stream(choices.stream(meta, OBJECT, chunks, body.include_usage), choices)

        def choice(index: int, pieces: Pieces) -> dict:
            return completion_choice(index, pieces, vocab, top_logprobs, echo_of(index))

        return self._submitter.reply(lambda: choices.reply(meta, OBJECT, choice))

    def _echo(self, given: str | list[int], prompt: Prompt) -> Echo:
        """What echo gives back of a prompt: its text as sent, or its ids' text."""
        if isinstance(given, str):
            return Echo(given, prompt.token_ids, as_sent=True)
        return Echo(self._vocab.decode(prompt.token_ids), prompt.token_ids)

    @staticmethod
    def _stream(chunks: Iterator[Chunk], choices: Choices) -> Response:
        return sse_response(event_stream(chunks, g.request_id), on_close=choices.close)
