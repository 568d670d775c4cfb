"""Test doubles for the API: a tiny byte-level tokenizer and a scripted fake engine.

No MLX: the API must be testable without a model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from refserver.api import ApiSettings, create_app
from refserver.engine.interface import (
    ErrorEvent,
    Event,
    Finished,
    GenerationRequest,
    Health,
    PrefillProgress,
    PromptLogprobs,
    TokenEvent,
)

MODEL = "tiny-test-model"
SPECIAL_TOKENS = ["<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>tools: {{ tools | tojson }}<|end|>{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
    "{% if enable_thinking is defined and not enable_thinking %}"
    "<|system|>no-think<|end|>{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog.",
    "Hello! How can I help you today? The answer is 42. END of story.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with a small vocabulary and a minimal chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<eos>", chat_template=CHAT_TEMPLATE
    )


def byte_tokens(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """One token per UTF-8 byte of text: the finest split, to test token boundaries."""
    symbols = tokenizer.convert_ids_to_tokens(tokenizer.encode(text))
    ids = []
    for symbol in "".join(symbols):
        ids.append(tokenizer.convert_tokens_to_ids(symbol))
    return ids


class FakeEngine:
    """Emits scripted token ids for every request and records what happened.

    tokens: the completion's token ids (cut at the request's max_tokens).
    delay: seconds before each token. gate: when set, the first token waits for it.
    fail_after: emit an ErrorEvent after this many tokens.
    closed: requests whose event stream was closed before it finished (cancelled).
    """

    def __init__(
        self,
        tokens: list[int],
        *,
        eos_id: int | None = None,
        delay: float = 0.0,
        gate: threading.Event | None = None,
        fail_after: int | None = None,
        cached_tokens: int = 0,
        queued: threading.Event | None = None,
    ):
        self.tokens = tokens
        self.queued = queued  # while clear, requests wait in the queue (not admitted)
        self.eos_id = eos_id
        self.delay = delay
        self.gate = gate
        self.fail_after = fail_after
        self.cached_tokens = cached_tokens
        self.health_state = Health(ok=True, ranks=2)
        self.submit_error: Exception | None = None
        self.requests: list[GenerationRequest] = []
        self.cancelled: list[str] = []
        self.closed: list[str] = []
        self.finished: list[str] = []
        self._lock = threading.Lock()

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[Iterator[Event]]:
        if self.submit_error is not None:
            raise self.submit_error
        self.requests.extend(requests)
        return [self._events(request) for request in requests]

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self.cancelled.append(request_id)

    def health(self) -> Health:
        return self.health_state

    def _events(self, request: GenerationRequest) -> Iterator[Event]:
        prompt = len(request.prompt_tokens)
        emitted = 0
        try:
            while self.queued is not None and not self.queued.wait(0.01):
                if request.id in self.cancelled:
                    return
            # As the scheduler does: admitted (the cached prefix known), then prefilled.
            yield PrefillProgress(self.cached_tokens, prompt, self.cached_tokens)
            yield PrefillProgress(prompt, prompt, self.cached_tokens)
            if request.prompt_logprobs is not None:
                yield _prompt_scores(request)
            if self.gate is not None:
                while not self.gate.wait(0.01):
                    if request.id in self.cancelled:
                        break
            script = self.tokens + ([self.eos_id] if self.eos_id is not None else [])
            for token in script[: request.max_tokens]:
                if request.id in self.cancelled:
                    yield Finished("cancelled", prompt, emitted, self.cached_tokens)
                    return
                if self.fail_after is not None and emitted == self.fail_after:
                    yield ErrorEvent("rank 1 was lost")
                    return
                time.sleep(self.delay)
                emitted += 1
                # As the scheduler: the end token is an event only when scores were asked.
                if token != self.eos_id or request.sampling.logprobs:
                    yield _token_event(token, request)
            reason = "length" if len(script) > request.max_tokens else "stop"
            self.finished.append(request.id)
            yield Finished(reason, prompt, emitted, self.cached_tokens)
        except GeneratorExit:
            if request.id not in self.finished:
                self.closed.append(request.id)
            raise


def _prompt_scores(request: GenerationRequest) -> PromptLogprobs:
    """Each prompt token after the first at -0.5, its alternatives the ids after it."""
    top = request.prompt_logprobs
    scored = tuple(
        TokenEvent(t, -0.5, tuple((t + i, -0.5 - i) for i in range(top)))
        for t in request.prompt_tokens[1:]
    )
    return PromptLogprobs(1, scored)


def _token_event(token: int, request: GenerationRequest) -> TokenEvent:
    if not request.sampling.logprobs:
        return TokenEvent(token)
    alternatives = tuple((token + i, -1.0 - i) for i in range(request.sampling.top_logprobs))
    return TokenEvent(token, logprob=-0.25, top_logprobs=alternatives)


def settings(**overrides) -> ApiSettings:
    base = ApiSettings(model_name=MODEL, context_length=256, model_aliases=("tiny",))
    return replace(base, **overrides)


def sse_events(body: bytes) -> list[dict | str]:
    """The data payloads of an SSE body: decoded JSON objects, and "[DONE]"."""
    events: list[dict | str] = []
    for block in body.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture
def engine(tokenizer) -> FakeEngine:
    return FakeEngine(tokenizer.encode("Hello! The answer is 42."), eos_id=tokenizer.eos_token_id)


@pytest.fixture
def client(engine, tokenizer):
    return create_app(engine, tokenizer, settings()).test_client()
