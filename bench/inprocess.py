"""The baseline: the same model in this process with mlx_lm, on the machine that benchmarks."""

from __future__ import annotations

import time

from streams import Stream


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
