"""The handlers of /v1/responses (OpenAI's Responses API, as Codex and the newer SDKs
speak it): a request becomes a chat, its output becomes items, and the response is
kept for later requests (unless "store": false) and for GET and DELETE by id."""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

from flask import Flask, Response, g, jsonify

from refserver.api.errors import ApiError
from refserver.api.openai.common import check_model
from refserver.api.responses.items import (
    OutputItems,
    ResponseMeta,
    response_events,
    response_reply,
)
from refserver.api.responses.schemas import ResponsesRequest
from refserver.api.responses.store import ResponseStore
from refserver.api.shared.chat_prompt import render_chat
from refserver.api.shared.message import MessageBuilderFactory
from refserver.api.shared.sse import KEEPALIVE, SseFormat, event_stream, named_event, sse_response
from refserver.api.shared.submit import Submitter
from refserver.api.validation import parse_request

log = logging.getLogger(__name__)

CONTEXT_OVERFLOW = "context_length_exceeded"


class ResponsesRoutes:
    """Handlers of /v1/responses (and /responses, as the OpenAI routes are served)."""

    def __init__(
        self,
        submitter: Submitter,
        message_builder: MessageBuilderFactory,
        store: ResponseStore | None = None,
    ):
        self._submitter = submitter
        self._message_builder = message_builder
        self._store = store or ResponseStore()

    def register(self, app: Flask) -> None:
        for prefix in ("/v1", ""):
            app.post(f"{prefix}/responses", endpoint=f"responses{prefix}")(self.responses)
            by_id = f"{prefix}/responses/<response_id>"
            app.get(by_id, endpoint=f"response{prefix}")(self.response)
            app.delete(by_id, endpoint=f"delete_response{prefix}")(self.delete)

    def response(self, response_id: str) -> Response:
        return jsonify(self._store.response(response_id))

    def delete(self, response_id: str) -> Response:
        self._store.delete(response_id)
        return jsonify({"id": response_id, "object": "response", "deleted": True})

    def responses(self) -> Response:
        body = parse_request(ResponsesRequest, self._submitter.read_body())
        check_model(self._submitter.settings, body.model)
        if body.hosted_tools:
            left_out = ", ".join(tool.label() for tool in body.hosted_tools)
            log.info("request %s: tools nothing here runs, left out: %s", g.request_id, left_out)
        model = self._submitter.settings.model_name
        meta = ResponseMeta(f"resp_{g.request_id}", model, request_settings(body))
        conversation = self._store.conversation(body)
        prompt, plan = render_chat(
            self._submitter.vocab,
            body.template_messages(conversation),
            body.template_tools(),
            body.chat_tool_choice(),
            body.parallel_tool_calls is not False,
            body.template_kwargs(),
        )
        builder = self._message_builder(plan, prompt)
        try:
            pieces, pump = self._submitter.start(body.sampling(), prompt, "input")
        except ApiError as exc:
            if body.stream and exc.code == CONTEXT_OVERFLOW:
                return failed_stream(meta, exc)
            raise

        def keep(response: dict[str, Any]) -> None:
            if body.stored:
                self._store.save(conversation, response)

        if body.stream:
            output = meta.output_items()
            events = response_events(meta, output, pieces, builder, keep)
            stream = event_stream(events, g.request_id, numbered_sse(meta, output))
            return sse_response(stream, on_close=pump.close)
        return self._submitter.reply(lambda: response_reply(meta, pieces, builder, keep))


def failed_stream(meta: ResponseMeta, error: ApiError) -> Response:
    """A stream that fails at once: response.created, then response.failed with the
    error. Codex reads a conversation too long for the context only so (then compacts
    it); as an HTTP 400 it is an error that ends the session's every turn."""
    failed = meta.response("failed", [], error={"code": error.code, "message": error.message})
    events = [
        {"type": "response.created", "response": meta.response("in_progress", [])},
        {"type": "response.failed", "response": failed},
    ]
    stream = event_stream(iter(events), g.request_id, numbered_sse(meta, meta.output_items()))
    return sse_response(stream, on_close=lambda: None)


def numbered_sse(meta: ResponseMeta, output: OutputItems) -> SseFormat:
    """The Responses stream's encoding, for one stream: named events, each numbered in
    order (sequence_number), and no end marker. A failure is an error event, then
    response.failed with the error and the `output` so far (clients such as Codex read
    only the latter)."""
    numbers = itertools.count()

    def encode(event: dict[str, Any]) -> bytes:
        return named_event(event["type"], {**event, "sequence_number": next(numbers)})

    def error(status: int, message: str, code: str) -> bytes:
        items = copy.deepcopy(output.items)
        failed = meta.response("failed", items, error={"code": code, "message": message})
        event = {"type": "error", "code": code, "message": message, "param": None}
        return encode(event) + encode({"type": "response.failed", "response": failed})

    return SseFormat(encode=encode, keepalive=KEEPALIVE, error=error, done=b"")


def request_settings(body: ResponsesRequest) -> dict[str, Any]:
    """The request's settings, as every response object repeats them."""
    tool_choice = body.tool_choice or "auto"
    if not isinstance(tool_choice, str):
        tool_choice = tool_choice.model_dump()
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None} | _dumped(body.reasoning),
        "temperature": body.temperature,
        "text": {"format": body.text_format.model_dump(exclude_none=True, by_alias=True)},
        "tool_choice": tool_choice,
        "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
        "top_p": body.top_p,
        "truncation": "disabled",
        "metadata": body.metadata or {},
        "store": body.stored,
    }


def _dumped(model: Any) -> dict[str, Any]:
    return {} if model is None else model.model_dump()
