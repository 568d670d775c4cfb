"""Decode throughput: one stream, and several at once, against in-process mlx_lm."""

from __future__ import annotations

import pytest
from streams import aggregate_rate, chat_stream, concurrent_streams
from workload import chat_body, short_prompt


def test_one_stream_decode(paired, target, baseline, workload):
    """decode_ratio: one stream's decode tok/s ÷ mlx_lm.stream_generate's."""

    def measure():
        body = chat_body(short_prompt(), workload.tokens, baseline.logit_bias)
        return {"decode_tok_s": chat_stream(target.base_url, body).decode_rate}

    def reference():
        return {"decode_tok_s": baseline.generate(short_prompt(), workload.tokens).decode_rate}

    paired.run(measure, reference, {"decode_ratio": ("decode_tok_s", "baseline_decode_tok_s")})


@pytest.mark.parametrize("prompts", ["shared", "distinct"])
def test_concurrent_streams(paired, target, baseline, workload, prompts):
    """aggregate_ratio: tok/s of all streams together ÷ mlx_lm's BatchGenerator's;
    aggregate_to_one_stream_ratio: the same ÷ mlx_lm's one stream (stream_generate).

    `shared`: every stream has the same prompt (fresh each round); `distinct`: each its own.
    """

    def conversations():
        if prompts == "shared":
            return [short_prompt()] * workload.streams
        return [short_prompt() for _ in range(workload.streams)]

    def measure():
        bodies = [chat_body(c, workload.tokens, baseline.logit_bias) for c in conversations()]
        return {"aggregate_tok_s": aggregate_rate(concurrent_streams(target.base_url, bodies))}

    def reference():
        streams = baseline.generate_batch(conversations(), workload.tokens)
        one = baseline.generate(short_prompt(), workload.tokens)
        return {"aggregate_tok_s": aggregate_rate(streams), "one_stream_tok_s": one.decode_rate}

    paired.run(
        measure,
        reference,
        {
            "aggregate_ratio": ("aggregate_tok_s", "baseline_aggregate_tok_s"),
            "aggregate_to_one_stream_ratio": ("aggregate_tok_s", "baseline_one_stream_tok_s"),
        },
    )


# A schema the output cannot finish within the tokens asked for: the stream decodes
# under the constraint the whole time.
LONG_JSON = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string"}, "minItems": 10_000}},
    "required": ["notes"],
}


def test_constrained_decode(paired, target, baseline, workload):
    """constrained_ratio: a json_schema stream's decode tok/s ÷ an unconstrained stream's,
    on the same server (mlx_lm.server enforces no schema: its peers are skipped)."""
    if target.name.startswith("mlx_lm.server"):
        pytest.skip("mlx_lm.server does not enforce response_format")
    schema = {"type": "json_schema", "json_schema": {"name": "notes", "schema": LONG_JSON}}

    def measure():
        plain = chat_body(short_prompt(), workload.tokens, baseline.logit_bias)
        constrained = {**chat_body(short_prompt(), workload.tokens, {}), "response_format": schema}
        return {
            "constrained_tok_s": chat_stream(target.base_url, constrained).decode_rate,
            "plain_tok_s": chat_stream(target.base_url, plain).decode_rate,
        }

    paired.run(measure, ratios={"constrained_ratio": ("constrained_tok_s", "plain_tok_s")})
