"""What the benchmarks ask: prompts of a chosen length and the request bodies that carry them.

Every prompt starts with a tag of its own, so no measurement reads another one's work
from a prefix cache (the server's, or its peers'), whatever that cache does: the next
turn of a conversation is the only place a cache hit is meant to happen.
"""

from __future__ import annotations

import itertools
import uuid
from importlib.resources import files

SHORT_REQUEST = "Write a short story about a lighthouse keeper who finds a map."
_CORPUS_WORDS = files("simcluster").joinpath("tiny_corpus.txt").read_text().split()


def fresh_tag() -> str:
    """A tag no earlier prompt started with (also across runs against one --url server)."""
    return uuid.uuid4().hex[:12]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def short_prompt() -> list[dict]:
    return user(f"[{fresh_tag()}] {SHORT_REQUEST}")


def long_prompt(tokenizer, tokens: int) -> list[dict]:
    """A user message whose chat prompt is about `tokens` tokens long (English-like text)."""
    head = f"[{fresh_tag()}] Summarise the following notes in one paragraph.\n\n"
    words = itertools.cycle(_CORPUS_WORDS)
    text = head
    while len(tokenizer.apply_chat_template(user(text), add_generation_prompt=True)) < tokens:
        text += " ".join(itertools.islice(words, 16)) + " "
    return user(text)


def next_turn(conversation: list[dict], reply: str, question: str) -> list[dict]:
    """The conversation as a client resends it: what came before, the reply, a new question."""
    return [*conversation, {"role": "assistant", "content": reply}, *user(question)]


def chat_body(messages: list[dict], max_tokens: int, logit_bias: dict[int, float]) -> dict:
    """A greedy chat request; `logit_bias` bans end-of-sequence so it runs to max_tokens."""
    return {
        "model": "default_model",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": {str(token): bias for token, bias in logit_bias.items()},
    }
