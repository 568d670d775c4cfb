"""Everything that touches the tokenizer: prompts in, token texts out.

The tokenizer is a `transformers` fast tokenizer (or mlx_lm's wrapper of one):
``apply_chat_template(..., tokenize=False)`` renders the chat, its `tokenizers` backend
turns text into ids, ``decode`` turns ids back into text.

No lock: encoding and decoding only read the tokenizer (a fast tokenizer fails with
"Already borrowed" only when its truncation or padding is changed while in use, which
nothing here does), so a stream's decoding never waits for another request's prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from tokenizers import Tokenizer

from refserver.api.errors import ApiError, invalid_request
from refserver.api.shared.control_text import shield
from refserver.free_memory import release_free_memory

# Generated text keeps these even when the tokenizer calls them special tokens:
# the reasoning and tool-call parsers read them.
PARSER_MARKERS = frozenset(("<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>"))
# Prompts at least this long leave megabytes of freed tokenizer buffers behind.
_TRIM_AFTER_CHARS = 1_000_000


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
        self.max_prompt_chars = _max_prompt_chars(tokenizer)
        self._encode_ids = _encoder(tokenizer)
        self._encode_text_ids = _text_encoder(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", {})
        self._added_ids = {token.content: token_id for token_id, token in added.items()}
        control = _control_tokens(added)
        self._hidden_ids = frozenset(control)  # left out of generated text
        self._control_texts = tuple(control.values())  # read as text in messages
        self._byte_decoder = _byte_level_decoder()
        self._token_cache: dict[int, tuple[str, bytes]] = {}

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
        shielded = None
        if self._encode_text_ids is not None:
            shielded = shield(messages, kwargs["tools"], self._control_texts)
        text = self._render(messages, kwargs)
        pieces = []
        if shielded is not None:
            rendered = self._render(shielded.messages, {**kwargs, "tools": shielded.tools})
            pieces = shielded.pieces(rendered)
        if shielded is None or "".join(piece for piece, _ in pieces) != text:
            # None spelled, or a template that changed a placeholder (escaped or cut it):
            # the whole text, as mlx_lm tokenizes it.
            return Prompt(self._encode(text, "messages", special=False), text, continue_final)
        # Messages spell control tokens: those spellings are read as text (control_text).
        self._check_length(text, "messages")
        token_ids = []
        for piece, is_spelling in pieces:
            token_ids += (self._encode_text_ids if is_spelling else self._encode_ids)(piece, False)
        if len(text) >= _TRIM_AFTER_CHARS:
            release_free_memory()
        return Prompt(token_ids, text, continue_final)

    def _render(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> str:
        """The chat template's text; a 400 when it rejects the conversation."""
        try:
            return self._tokenizer.apply_chat_template(messages, **kwargs)
        except (jinja2.TemplateError, ValueError, TypeError, RecursionError) as exc:
            message = str(exc)[:500] or type(exc).__name__
            raise invalid_request(
                f"the chat template rejected the request: {message}", "messages"
            ) from None

    def completion_prompt(self, prompt: str | list[int]) -> Prompt:
        """Encode a text prompt the way mlx_lm does, or check a token-id prompt."""
        if isinstance(prompt, str):
            return Prompt(self._encode(prompt, "prompt", special=True))
        self.check_token_ids(prompt, "prompt")
        return Prompt(list(prompt))

    def check_token_ids(self, token_ids: Sequence[int], param: str) -> None:
        """400 when an id is outside the vocabulary."""
        bad = [t for t in token_ids if not 0 <= t < self.size]
        if bad:
            raise invalid_request(
                f"token id {bad[0]} is outside the vocabulary (0..{self.size - 1})", param
            )

    def marker_id(self, text: str) -> int | None:
        """The id of the added token spelled `text` (a marker such as ``</think>``)."""
        return self._added_ids.get(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Generated text: control tokens (special, but not parser markers) are left out,
        as ``skip_special_tokens`` leaves them out of mlx_lm's and transformers' output."""
        return self._tokenizer.decode([t for t in token_ids if t not in self._hidden_ids])

    def _encode(self, text: str, param: str, special: bool) -> list[int]:
        """Token ids of text; 400 at once when it has more characters than can fit."""
        self._check_length(text, param)
        token_ids = self._encode_ids(text, special)
        if len(text) >= _TRIM_AFTER_CHARS:
            release_free_memory()
        return token_ids

    def _check_length(self, text: str, param: str) -> None:
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            message = (
                f"the {param} has {len(text)} characters, more than the {self.max_prompt_chars} "
                f"that can fit in this model's context of {self._tokenizer.model_max_length} tokens"
            )
            anthropic = f"prompt is too long: {message}"
            raise ApiError(
                400,
                message,
                param=param,
                code="context_length_exceeded",
                anthropic_message=anthropic,
            )

    def shows(self, token_id: int) -> bool:
        """Whether the token's text is part of the text (control tokens are left out)."""
        return token_id not in self._hidden_ids

    def token(self, token_id: int) -> tuple[str, bytes]:
        """The text of one token and its exact bytes (a token may hold part of a character)."""
        cached = self._token_cache.get(token_id)
        if cached is None:
            cached = self._token_cache[token_id] = self._describe(token_id)
        return cached

    def _describe(self, token_id: int) -> tuple[str, bytes]:
        text = self._tokenizer.decode([token_id])
        if "\ufffd" not in text:
            return text, text.encode()
        # A byte-level BPE token holding part of a UTF-8 character: map its symbols back.
        symbols = self._tokenizer.convert_ids_to_tokens(token_id) or ""
        if symbols and all(c in self._byte_decoder for c in symbols):
            return text, bytes(self._byte_decoder[c] for c in symbols)
        return text, text.encode()


def _encoder(tokenizer: Any) -> Callable[[str, bool], list[int]]:
    """encode(text, add_special_tokens): through the `tokenizers` backend when there is
    one, whose batch call works without holding the GIL and skips the offsets."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda text, special: tokenizer.encode(text, add_special_tokens=special)
    return lambda text, special: (
        backend.encode_batch_fast([text], add_special_tokens=special)[0].ids
    )


def _text_encoder(tokenizer: Any) -> Callable[[str, bool], list[int]] | None:
    """Like _encoder, but a special token's spelling is read as ordinary text: a copy of
    the `tokenizers` backend that splits them (None without a backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    plain = Tokenizer.from_str(backend.to_str())
    plain.encode_special_tokens = True
    return lambda text, special: plain.encode_batch_fast([text], add_special_tokens=special)[0].ids


def _max_prompt_chars(tokenizer: Any) -> int | None:
    """The most characters a prompt that fits in the context can have, or None if unknown.

    A token covers at most as many characters as its vocabulary string is long (one
    symbol per byte in byte-level BPE), so context x longest token bounds a prompt.
    A Unicode normal form folds at most 4 code points into one; other normalizers
    (stripping accents...) may drop text, and then no bound is derived.
    """
    context = getattr(tokenizer, "model_max_length", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(context, int) or context >= 1 << 40 or backend is None:
        return None  # transformers' "no limit" is int(1e30)
    normalizer = type(backend.normalizer).__name__ if backend.normalizer else None
    if normalizer not in (None, "NFC", "NFD", "NFKC", "NFKD"):
        return None
    longest = max(len(token) for token in tokenizer.get_vocab())
    return context * longest * (1 if normalizer is None else 4)


def _control_tokens(added: Mapping[int, Any]) -> dict[int, str]:
    """Id -> spelling of the control tokens: added tokens marked special, except the
    markers the output parsers and templates read (reasoning, tool calls)."""
    return {
        token_id: token.content
        for token_id, token in added.items()
        if token.special and token.content and token.content not in PARSER_MARKERS
    }


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
