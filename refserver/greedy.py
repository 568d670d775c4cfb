"""Greedy generation of one sequence straight through the pipeline stages.

The lock-step schedule is fixed and known to every rank in advance (the prompt
and the token count), so it needs no scheduler: it is the reference path that
proves the stage split gives single-process tokens. Prefill follows
mlx_lm.generate_step: chunks of the prompt without its last token (evaluating only
the caches), then the last token alone, whose logits give the first token.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from .pipeline import PipelineStage


def greedy_token(logits: mx.array) -> mx.array:
    """The argmax of the last position's log-probabilities, as generate_step takes it."""
    last = logits[:, -1, :]
    logprobs = last - mx.logsumexp(last, keepdims=True)
    return mx.argmax(logprobs, axis=-1).astype(mx.int32)


def generate_greedy(
    stage: PipelineStage,
    prompt: list[int],
    max_tokens: int,
    prefill_step_size: int = 2048,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Run on every rank; rank 0 returns the tokens (and calls on_token with each)."""
    cache = stage.make_cache()
    pending = prompt[:-1]
    while pending:
        chunk, pending = pending[:prefill_step_size], pending[prefill_step_size:]
        out = _run(stage, cache, chunk, len(chunk))
        # The last stage needs only its caches filled; the others must send.
        mx.eval(out if not stage.is_last else [c.state for c in cache])

    tokens: list[int] = []
    # The first stage's input stays lazy: on a multi-rank run it is the receive of
    # rank 0's token, evaluated together with the next step (one round trip).
    step_input = mx.array(prompt[-1:], dtype=mx.int32)
    first_rank = stage.split.world_size - 1
    for index in range(max_tokens):
        inputs = step_input.reshape(1, 1) if stage.is_first else None
        out, _ = stage.forward(inputs, cache, batch=1, length=1)
        more = index + 1 < max_tokens
        if stage.is_last:
            token = greedy_token(out)
            if more and not stage.is_first:
                mx.eval(mx.distributed.send(token, first_rank, group=stage.group))
            else:
                mx.eval(token)
            tokens.append(token.item())
            if on_token is not None:
                on_token(tokens[-1])
            step_input = token
        else:
            mx.eval(out)
            if more and stage.is_first:
                template = mx.zeros((1,), dtype=mx.int32)
                step_input = mx.distributed.recv_like(template, 0, group=stage.group)
    return tokens


def _run(stage: PipelineStage, cache: list, tokens: list[int], length: int) -> mx.array:
    inputs = mx.array([tokens], dtype=mx.int32) if stage.is_first else None
    out, _ = stage.forward(inputs, cache, batch=1, length=length)
    return out
