"""The next turn of a conversation, which resends the whole of it, against its first turn."""

from __future__ import annotations

from streams import chat_stream
from workload import chat_body, long_prompt, next_turn

# The workload issue 9 measured: the next turn adds about 50 tokens (the reply as the
# client resends it, ~12 tokens of a random model's text, and the question); with a
# ~700-token first turn, 53 tokens on the medium preset.
REPLY_TOKENS = 12
QUESTION = "Thank you. Now say it again in one sentence."


def test_next_turn(paired, target, baseline, workload):
    """next_turn_ttft_ratio: the next turn's time to first token ÷ the first turn's;
    repeat_ttft_ratio: the first turn sent again, the same.

    Without a prefix cache the next turn reads its longer prompt whole (ratio above 1);
    with one it reads only what is new. `cached_tokens` is what the server reported
    (usage.prompt_tokens_details.cached_tokens); a fresh conversation every round keeps
    earlier rounds out of the cache. The table also shows next_ttft_s, the next turn's
    time to first token in seconds, to compare across targets in the same run.
    """

    def measure():
        conversation = long_prompt(baseline.tokenizer, workload.prompt_tokens)
        first_body = chat_body(conversation, REPLY_TOKENS, baseline.logit_bias)
        first = chat_stream(target.base_url, first_body)
        following = next_turn(conversation, first.text, QUESTION)
        then = chat_stream(target.base_url, chat_body(following, 1, {}))
        again = chat_stream(target.base_url, chat_body(conversation, 1, {}))
        return {
            "first_ttft_s": first.time_to_first_token,
            "next_ttft_s": then.time_to_first_token,
            "next_prompt_tokens": then.prompt_tokens,
            "cached_tokens": then.cached_tokens,
            "repeat_ttft_s": again.time_to_first_token,
            "repeat_cached_tokens": again.cached_tokens,
        }

    paired.run(
        measure,
        ratios={
            "next_turn_ttft_ratio": ("next_ttft_s", "first_ttft_s"),
            "repeat_ttft_ratio": ("repeat_ttft_s", "first_ttft_s"),
        },
        shown=("next_ttft_s",),  # issue 10: no later than the tensor-parallel peer's
    )
