"""The baseline: the same model in this process with mlx_lm, on the machine that benchmarks."""

from __future__ import annotations

import functools
import time

from streams import Stream

# OpenAI's limit on logit_bias entries, which the peers may enforce too.
MAX_BIASED_TOKENS = 300


class InProcessMLX:
    """mlx_lm's own generation (stream_generate, BatchGenerator), greedy, with no cache.

    Loaded once; every call starts from an empty KV cache, as a fresh prompt does.
    End-of-sequence tokens are banned with the same logit bias the HTTP requests carry,
    so every generation runs to max_tokens.
    """

    def __init__(self, model: str):
        from mlx_lm import load

        self.model, self.tokenizer = load(model)
        self.eos_ids = sorted(self.tokenizer.eos_token_ids)
        self.generate([{"role": "user", "content": "warm up"}], 2)  # first call allocates

    @property
    def logit_bias(self) -> dict[int, float]:
        return dict.fromkeys(self.eos_ids, -100.0)

    @functools.cached_property
    def steady_text_bias(self) -> dict[int, float]:
        """`logit_bias` with, also banned, the tokens whose text the server may hold back.

        A random model emits them often: pieces of a multi-byte character (a quarter of
        the small presets' vocabulary), held until the character completes; `<`, held
        until the text shows it opens no tag (reasoning, a tool call); whitespace and
        control characters, held until text follows; special tokens, which show no text.
        The client then sees nothing for a few steps. A stream whose gaps between tokens
        are measured bans them, so that a gap is one step. If they are too many for one
        request's bias (a real model's vocabulary), they stay allowed.
        """
        held = [
            token
            for token in range(self.tokenizer.vocab_size)
            if _may_be_held(self.tokenizer.decode([token], skip_special_tokens=True))
        ]
        if len(held) + len(self.eos_ids) > MAX_BIASED_TOKENS:
            return self.logit_bias
        return {**self.logit_bias, **dict.fromkeys(held, -100.0)}

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def generate(self, messages: list[dict], max_tokens: int) -> Stream:
        """One stream through mlx_lm.stream_generate, timed as the HTTP client times one."""
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors

        prompt = self.prompt_tokens(messages)
        processors = make_logits_processors(logit_bias=self.logit_bias)
        stream = Stream(started=time.perf_counter(), prompt_tokens=len(prompt))
        for response in stream_generate(
            self.model, self.tokenizer, prompt, max_tokens, logits_processors=processors
        ):
            stream.arrivals.append(time.perf_counter())
            stream.text += response.text
        stream.completion_tokens = len(stream.arrivals)
        return stream

    def generate_batch(self, conversations: list[list[dict]], max_tokens: int) -> list[Stream]:
        """All conversations at once through mlx_lm's continuous batching (BatchGenerator)."""
        from mlx_lm.generate import BatchGenerator

        prompts = [self.prompt_tokens(messages) for messages in conversations]
        started = time.perf_counter()
        streams = [Stream(started=started, prompt_tokens=len(prompt)) for prompt in prompts]
        generator = BatchGenerator(self.model, completion_batch_size=len(prompts))
        try:
            uids = generator.insert(prompts, [max_tokens] * len(prompts))
            by_uid = dict(zip(uids, streams, strict=True))
            while responses := generator.next_generated():
                now = time.perf_counter()
                for response in responses:
                    by_uid[response.uid].arrivals.append(now)
        finally:
            generator.close()
        for stream in streams:
            stream.completion_tokens = len(stream.arrivals)
        return streams


def _may_be_held(text: str) -> bool:
    return "\ufffd" in text or "<" in text or not text.strip() or not text.isprintable()
