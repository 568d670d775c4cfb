"""Turn a validated API request and its prompt into the engine's GenerationRequest."""

from __future__ import annotations

import time
from dataclasses import replace

from refserver.api.errors import ApiError
from refserver.api.settings import ApiSettings
from refserver.api.shared.output_constraint import output_constraint
from refserver.api.shared.prompting import Prompt, Vocabulary
from refserver.api.shared.schemas import SamplingFields
from refserver.engine.interface import GenerationRequest, SamplingParams

# The seed that UIs (and llama.cpp) send to mean "no seed".
RANDOM_SEED = -1


def engine_request(
    request_id: str,
    body: SamplingFields,
    prompt: Prompt,
    prompt_param: str,
    settings: ApiSettings,
    vocab: Vocabulary,
    top_logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> GenerationRequest:
    """The engine request; 400 when the limits, the vocabulary or the reply's
    constraint (response_format, forced tool calls) say no.

    prompt_param names the request field of the prompt ("messages" or "prompt").
    top_logprobs None means no logprobs were asked for; prompt_logprobs, the same for
    the prompt's own tokens (echo).
    """
    max_tokens = completion_budget(body, len(prompt.token_ids), settings, prompt_param)
    timeout = settings.request_timeout_seconds
    sampling = sampling_params(body, settings, vocab, top_logprobs)
    constraint = output_constraint(body, prompt, vocab, max_tokens)
    return GenerationRequest(
        id=request_id,
        prompt_tokens=prompt.token_ids,
        max_tokens=max_tokens,
        sampling=replace(sampling, constraint=constraint),
        deadline=None if timeout is None else time.monotonic() + timeout,
        prompt_logprobs=prompt_logprobs,
    )


def completion_budget(
    body: SamplingFields, prompt_tokens: int, settings: ApiSettings, prompt_param: str
) -> int:
    """max_tokens as asked, or the default bounded by the room left in the context."""
    context = settings.context_length
    room = context - prompt_tokens
    if room < (0 if body.requested_max_tokens == 0 else 1):  # 0: the prompt alone
        message = (
            f"the prompt has {prompt_tokens} tokens, which leaves no room for a completion "
            f"in this model's context of {context} tokens"
        )
        anthropic = anthropic_overflow(prompt_tokens, 1, context, context - 1)
        raise ApiError(
            400,
            message,
            param=prompt_param,
            code="context_length_exceeded",
            anthropic_message=anthropic,
        )
    asked = body.requested_max_tokens
    if asked is None:
        return min(settings.default_max_tokens, settings.max_tokens_cap, room)
    param = body.max_tokens_param
    if asked > settings.max_tokens_cap:
        message = f"{param} is {asked}; this server allows at most {settings.max_tokens_cap}"
        # As an overflow of a context that ends the cap beyond the prompt: Claude Code
        # reads those numbers and asks again with a max_tokens that fits.
        limit = min(context, prompt_tokens + settings.max_tokens_cap)
        anthropic = anthropic_overflow(prompt_tokens, asked, limit, context - 1)
        raise ApiError(400, message, param=param, code="invalid_value", anthropic_message=anthropic)
    if asked > room:
        message = (
            f"this model's context holds {context} tokens, but {prompt_tokens + asked} were "
            f"requested ({prompt_tokens} in the prompt, {asked} for the completion); "
            f"shorten the prompt or lower {param}"
        )
        anthropic = anthropic_overflow(prompt_tokens, asked, context, context - 1)
        raise ApiError(
            400, message, param=param, code="context_length_exceeded", anthropic_message=anthropic
        )
    return asked


def anthropic_overflow(prompt_tokens: int, max_tokens: int, limit: int, longest: int) -> str:
    """A prompt plus max_tokens beyond `limit` (a prompt beyond `longest`), in the words
    of Anthropic's API: Claude Code reads the numbers of the second form to retry with
    a max_tokens that fits, and the first tells it to compact the conversation."""
    if prompt_tokens > longest:
        return f"prompt is too long: {prompt_tokens} tokens > {longest} maximum"
    return (
        f"input length and `max_tokens` exceed context limit: {prompt_tokens} + {max_tokens} "
        f"> {limit}, decrease input length or `max_tokens` and try again"
    )


def sampling_params(
    body: SamplingFields, settings: ApiSettings, vocab: Vocabulary, top_logprobs: int | None
) -> SamplingParams:
    """Request values, or the server's defaults for temperature/top_p/top_k."""
    bias = {int(token): value for token, value in (body.logit_bias or {}).items()}
    vocab.check_token_ids(list(bias), "logit_bias")
    return SamplingParams(
        temperature=_given(body.temperature, settings.temperature),
        top_p=_given(body.top_p, settings.top_p),
        top_k=_given(body.top_k, settings.top_k),
        min_p=_given(body.min_p, 0.0),
        repetition_penalty=_given(body.repetition_penalty, 1.0),
        presence_penalty=_given(body.presence_penalty, 0.0),
        frequency_penalty=_given(body.frequency_penalty, 0.0),
        logit_bias=bias,
        seed=_seed(body.seed),
        logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs or 0,
    )


def _seed(seed: int | None) -> int | None:
    """-1 asks for a random draw, as UIs send it; any other seed reproduces."""
    return None if seed == RANDOM_SEED else seed


def _given(value, default):
    return default if value is None else value
