"""Everything that touches the tokenizer: prompts in, token texts out.

The tokenizer is a `transformers` fast tokenizer (or mlx_lm's wrapper of one):
``apply_chat_template(..., tokenize=False)`` renders the chat, ``encode`` turns
text into ids, ``decode`` turns ids back into text.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from refserver.api.errors import invalid_request


@dataclass(frozen=True)
class Prompt:
    """A prompt ready for the engine. text is the rendered chat (None for token ids);
    continues_final: it ends inside the last message, which the output continues."""

    token_ids: list[int]
    text: str | None = None
    continues_final: bool = False


class Vocabulary:
    """The tokenizer as the API uses it: prompts, decoding, token texts for logprobs."""

    def __init__(self, tokenizer: Any, template_defaults: Mapping[str, Any] | None = None):
        self._tokenizer = tokenizer
        self._template_defaults = dict(template_defaults or {})
        self.size = len(tokenizer)
        self.eos_token_ids = _eos_token_ids(tokenizer)
        self._byte_decoder = _byte_level_decoder()
        self._token_cache: dict[int, tuple[str, bytes]] = {}
        # A fast tokenizer used from several threads at once can fail with "Already
        # borrowed"; the calls are short next to a model step, so they take turns.
        self._lock = threading.Lock()

    def chat_prompt(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        continue_final: bool = False,
    ) -> Prompt:
        """Render messages (and tools) with the chat template and encode the result.

        The prompt opens a new assistant turn, or with `continue_final` ends inside
        the last message. A template that rejects the conversation (e.g. roles out
        of order) is a 400.
        """
        kwargs = {**self._template_defaults, **(template_kwargs or {})}
        kwargs.update(tools=tools or None, tokenize=False)
        kwargs.update(add_generation_prompt=not continue_final)
        kwargs.update(continue_final_message=continue_final)
        try:
            with self._lock:
                text = self._tokenizer.apply_chat_template(messages, **kwargs)
        except (jinja2.TemplateError, ValueError, TypeError, RecursionError) as exc:
            message = str(exc)[:500] or type(exc).__name__
            raise invalid_request(
                f"the chat template rejected the request: {message}", "messages"
            ) from None
        with self._lock:
            token_ids = self._tokenizer.encode(text, add_special_tokens=False)
        return Prompt(token_ids, text, continue_final)

    def completion_prompt(self, prompt: str | list[int]) -> Prompt:
        """Encode a text prompt the way mlx_lm does, or check a token-id prompt."""
        if isinstance(prompt, str):
            with self._lock:
                return Prompt(self._tokenizer.encode(prompt))
        self.check_token_ids(prompt, "prompt")
        return Prompt(list(prompt))

    def check_token_ids(self, token_ids: Sequence[int], param: str) -> None:
        """400 when an id is outside the vocabulary."""
        bad = [t for t in token_ids if not 0 <= t < self.size]
        if bad:
            raise invalid_request(
                f"token id {bad[0]} is outside the vocabulary (0..{self.size - 1})", param
            )

    def decode(self, token_ids: Sequence[int]) -> str:
        with self._lock:
            return self._tokenizer.decode(list(token_ids))

    def token(self, token_id: int) -> tuple[str, bytes]:
        """The text of one token and its exact bytes (a token may hold part of a character)."""
        cached = self._token_cache.get(token_id)
        if cached is None:
            cached = self._token_cache[token_id] = self._describe(token_id)
        return cached

    def _describe(self, token_id: int) -> tuple[str, bytes]:
        text = self.decode([token_id])
        if "\ufffd" not in text:
            return text, text.encode()
        # A byte-level BPE token holding part of a UTF-8 character: map its symbols back.
        with self._lock:
            symbols = self._tokenizer.convert_ids_to_tokens(token_id) or ""
        if symbols and all(c in self._byte_decoder for c in symbols):
            return text, bytes(self._byte_decoder[c] for c in symbols)
        return text, text.encode()


def _eos_token_ids(tokenizer: Any) -> frozenset[int]:
    # transformers 5 tokenizers may hold an int here, mlx_lm's wrapper a set.
    given = getattr(tokenizer, "eos_token_ids", None)
    ids = {given} if isinstance(given, int) else set(given or ())
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _byte_level_decoder() -> dict[str, int]:
    """Symbol -> byte: the inverse of GPT-2's byte-to-symbol table of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(others)})
    return table
