"""Hand a validated request to the engine; shared by every wire format's routes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import Response, g, jsonify, request

from refserver.api.errors import ApiError, invalid_request
from refserver.api.request_body import read_json_object
from refserver.api.settings import ApiSettings
from refserver.api.shared.detokenize import TextStream
from refserver.api.shared.engine_request import anthropic_overflow, engine_request
from refserver.api.shared.generation import (
    EventPump,
    GenerationFailed,
    Pieces,
    ReasoningCount,
    generate,
)
from refserver.api.shared.prompting import Prompt, Vocabulary
from refserver.api.shared.schemas import MAX_CHOICES, SamplingFields
from refserver.engine.interface import (
    CapacityError,
    Engine,
    GenerationRequest,
    NotReadyError,
    QueueFullError,
)
from refserver.tools import prompt_opens_reasoning
from refserver.tools.output import THINK_END, THINK_START


class Submitter:
    """Reads bodies, submits generations and turns their failures into ApiErrors."""

    def __init__(self, engine: Engine, vocab: Vocabulary, settings: ApiSettings):
        self.engine = engine
        self.vocab = vocab
        self.settings = settings

    def read_body(self) -> dict[str, Any]:
        return read_json_object(self.settings.max_body_bytes)

    def start(
        self,
        body: SamplingFields,
        prompt: Prompt,
        prompt_param: str,
        top_logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        keep_end_token: bool = False,
    ) -> tuple[Pieces, EventPump]:
        """Submit to the engine: 429 when its queue is full, 503 when it is not ready.

        prompt_param names the field that held the prompt, for a context-length 400.
        keep_end_token: see generate().
        """
        job = self._job(body, prompt, prompt_param, top_logprobs, prompt_logprobs)
        [pump] = self._submit([job], prompt_param)
        return self._pieces(pump, body, prompt, keep_end_token), pump

    def start_choices(
        self,
        body: SamplingFields,
        prompts: list[Prompt],
        prompt_param: str,
        top_logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        keep_end_token: bool = False,
    ) -> list[tuple[Pieces, EventPump]]:
        """start() for each of `prompts`, `body.n` times each, in that order, all
        submitted at once: the 400s of the request's own fields, and a refusal at
        submission (429, 503, or a prompt the KV budget can never hold), leave none of
        its choices submitted. Choice k's request id is the request's with "-k" (when
        there are several), and a seed is the request's plus the choice's number among
        its prompt's (so that `n` seeded samples differ, and reproduce)."""
        per_prompt = body.choices_per_prompt
        self._check_room(len(prompts), per_prompt)
        jobs = [
            self._job(body, prompt, prompt_param, top_logprobs, prompt_logprobs)
            for prompt in prompts
        ]
        several = len(prompts) * per_prompt > 1
        choices: list[tuple[GenerationRequest, Prompt]] = []
        for prompt, job in zip(prompts, jobs, strict=True):
            for sample in range(per_prompt):
                choice = _choice_job(job, len(choices), sample) if several else job
                choices.append((choice, prompt))
        pumps = self._submit([choice for choice, _ in choices], prompt_param)
        return [
            (self._pieces(pump, body, prompt, keep_end_token), pump)
            for pump, (_, prompt) in zip(pumps, choices, strict=True)
        ]

    def _check_room(self, prompts: int, per_prompt: int) -> None:
        """400 when a reply asks for more choices than one request may, or than the
        engine ever holds at once."""
        held = self.settings.max_open_requests
        most = MAX_CHOICES if held is None else min(MAX_CHOICES, held)
        if prompts * per_prompt <= most:
            return
        if per_prompt == 1:
            asked, param = f"{prompts} prompts make", "prompt"
        elif prompts == 1:
            asked, param = f"n={per_prompt} makes", "n"
        else:
            asked, param = f"{prompts} prompts times n={per_prompt} make", "n"
        message = (
            f"{asked} {prompts * per_prompt} choices, each a request of its own; a request "
            f"may ask for at most {most} here (at most {MAX_CHOICES}, and no more than the "
            "server holds at once: --max-batch + --max-queue)"
        )
        raise invalid_request(message, param)

    def _job(
        self,
        body: SamplingFields,
        prompt: Prompt,
        prompt_param: str,
        top_logprobs: int | None,
        prompt_logprobs: int | None,
    ) -> GenerationRequest:
        settings, vocab = self.settings, self.vocab
        return engine_request(
            g.request_id, body, prompt, prompt_param, settings, vocab, top_logprobs, prompt_logprobs
        )

    def _submit(self, jobs: list[GenerationRequest], prompt_param: str) -> list[EventPump]:
        """Submit all of `jobs` or none; the engine's refusal as an ApiError."""
        try:
            streams = self.engine.submit_all(jobs)
        except QueueFullError as exc:
            message = str(exc) or "the server is busy; retry later"
            retry = {"Retry-After": str(max(1, exc.retry_after_seconds))}
            raise ApiError(429, message, code="queue_full", headers=retry) from None
        except NotReadyError as exc:
            message = str(exc) or "the server is not ready"
            raise ApiError(503, message, code="not_ready") from None
        except CapacityError as exc:
            raise ApiError(
                400,
                str(exc),
                param=prompt_param,
                code="kv_capacity_exceeded",
                anthropic_message=anthropic_overflow(
                    exc.prompt_tokens, exc.max_tokens, exc.limit_tokens, exc.longest_prompt
                ),
            ) from None
        pumps: list[EventPump] = []
        try:
            for job, events in zip(jobs, streams, strict=True):
                pumps.append(EventPump(self.engine, job.id, events))
        except BaseException:  # no thread to read the rest: stop every choice
            for pump in pumps:
                pump.close()
            for job in jobs[len(pumps) :]:
                self.engine.cancel(job.id)
            raise
        return pumps

    def _pieces(
        self, pump: EventPump, body: SamplingFields, prompt: Prompt, keep_end_token: bool
    ) -> Pieces:
        """The pieces of one submitted choice, read from its pump."""
        settings, vocab = self.settings, self.vocab
        text = TextStream(vocab.decode, vocab.eos_token_ids, body.stop_strings)
        # waitress (with channel_request_lookahead) tells whether the client hung up.
        client_gone = request.environ.get("waitress.client_disconnected", lambda: False)
        prompt_tokens = len(prompt.token_ids)
        close_id = vocab.marker_id(THINK_END)
        reasoning = ReasoningCount(
            vocab.marker_id(THINK_START),
            close_id,
            # Without a </think> token nothing could close it: no reasoning is counted.
            inside=close_id is not None and prompt_opens_reasoning(prompt.text or ""),
        )
        keepalive = settings.keepalive_seconds
        return generate(
            pump, text, prompt_tokens, keepalive, client_gone, reasoning, keep_end_token
        )

    @staticmethod
    def reply(build: Callable[[], dict[str, Any]]) -> Response:
        """The JSON reply `build` makes; a failed generation is a 500 or 503 (see status)."""
        try:
            return jsonify(build())
        except GenerationFailed as exc:
            raise ApiError(exc.status, exc.message, code=exc.code) from None


def _choice_job(job: GenerationRequest, index: int, sample: int) -> GenerationRequest:
    """The engine request of a reply's choice `index`, the `sample`th of its prompt."""
    seed = job.sampling.seed
    sampling = job.sampling if seed is None else replace(job.sampling, seed=seed + sample)
    return replace(job, id=f"{job.id}-{index}", sampling=sampling)
