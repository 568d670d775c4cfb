"""Long prompts: how fast they are read, and what they cost a stream decoding beside them."""

from __future__ import annotations

import statistics

from streams import BackgroundStream, Stream, chat_stream
from workload import chat_body, long_prompt, short_prompt

# The running stream asks for more than it will get: the client hangs up once the
# long prompt's first token is out and the stream has moved on.
BESIDE_STREAM_TOKENS = 2048
STEPS_BEFORE = 32  # the stream's steady pace is read from these before the long prompt
STEPS_AFTER = 4


def test_long_prompt_prefill(paired, target, baseline, workload):
    """prefill_ratio: prompt tok/s ÷ mlx_lm's; ttft_ratio: time to first token ÷ mlx_lm's."""

    def measure():
        body = chat_body(long_prompt(baseline.tokenizer, workload.prompt_tokens), 1, {})
        return _prefill_figures(chat_stream(target.base_url, body))

    def reference():
        messages = long_prompt(baseline.tokenizer, workload.prompt_tokens)
        return _prefill_figures(baseline.generate(messages, 1))

    paired.run(
        measure,
        reference,
        {
            "prefill_ratio": ("prefill_tok_s", "baseline_prefill_tok_s"),
            "ttft_ratio": ("ttft_s", "baseline_ttft_s"),
        },
    )


def _prefill_figures(stream: Stream) -> dict[str, float]:
    return {
        "prefill_tok_s": stream.prefill_rate,
        "ttft_s": stream.time_to_first_token,
        "prompt_tokens": stream.prompt_tokens,
    }


def test_stream_gap_beside_long_prompt(paired, target, baseline, workload):
    """A running stream's longest gap between tokens while a long prompt is read beside it.

    gap_to_step_ratio: that gap ÷ the stream's usual gap (1: it did not notice;
    `quiet_gap_s` is the longest gap before the long prompt came). The stream bans the
    tokens the server would hold back (see InProcessMLX.steady_text_bias): a gap is a step;
    gap_to_prefill_ratio: that gap ÷ mlx_lm's time to read the prompt alone (about 1: the
    stream waited for the whole prefill; well below: the prefill was cut into chunks);
    beside_prefill_ratio: the long prompt's tok/s, read beside the stream, ÷ mlx_lm's alone.
    """

    def measure():
        return _gap_beside(target.base_url, baseline, workload.prompt_tokens)

    def reference():
        messages = long_prompt(baseline.tokenizer, workload.prompt_tokens)
        alone = baseline.generate(messages, 1)
        return {"prefill_s": alone.time_to_first_token, "prefill_tok_s": alone.prefill_rate}

    paired.run(
        measure,
        reference,
        {
            "gap_to_step_ratio": ("longest_gap_s", "typical_gap_s"),
            "gap_to_prefill_ratio": ("longest_gap_s", "baseline_prefill_s"),
            "beside_prefill_ratio": ("prefill_tok_s", "baseline_prefill_tok_s"),
        },
    )


def _gap_beside(base_url: str, baseline, prompt_tokens: int) -> dict[str, float]:
    long_body = chat_body(long_prompt(baseline.tokenizer, prompt_tokens), 1, {})
    body = chat_body(short_prompt(), BESIDE_STREAM_TOKENS, baseline.steady_text_bias)
    running = BackgroundStream(base_url, body)
    try:
        running.wait_for(STEPS_BEFORE)
        quiet = running.stream.gaps()
        beside = chat_stream(base_url, long_body)
        running.wait_for(len(running.stream.arrivals) + STEPS_AFTER)
    finally:
        stream = running.join(hang_up=True)
    return {
        "longest_gap_s": max(stream.gaps(start=beside.started)),
        "typical_gap_s": statistics.median(quiet),
        "quiet_gap_s": max(quiet),
        "prefill_tok_s": beside.prefill_rate,
    }
