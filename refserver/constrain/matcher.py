"""Compile a reply grammar for the served tokenizer; match one sequence's tokens to it.

Compiling runs in the HTTP thread, within llguidance's fuel limits: a grammar that does
not compile within them is a ConstraintError (a 400), never a hang. Each sequence then
starts its own matcher from the compiled one, on rank 0, where tokens are sampled.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import llguidance as llg
import numpy as np

from refserver.constrain.grammar import Reply, reply_grammar
from refserver.constrain.lark import ConstraintError, literal

# About 20 ms of lexer work to compile (llguidance measures ~50k fuel per ms), and its
# default per-step bounds; errors name no grammar internals.
LIMITS = llg.LLParserLimits(initial_lexer_fuel=1_000_000, verbose_errors=False)

_tokenizers: dict[int, tuple[Any, llg.LLTokenizer]] = {}
_tokenizers_lock = threading.Lock()


@dataclass(frozen=True)
class CompiledConstraint:
    """A compiled reply grammar; every sequence starts its own matcher from it."""

    initial: llg.LLMatcher
    vocab_size: int

    def start(self) -> SequenceMatcher:
        return SequenceMatcher(self.initial.deep_copy(), self.vocab_size)


class SequenceMatcher:
    """One sequence's place in the grammar: which tokens may come next."""

    def __init__(self, matcher: llg.LLMatcher, vocab_size: int):
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._allowed: np.ndarray | None = None

    def advance(self, token: int) -> None:
        """Move past a sampled token (one the last mask allowed)."""
        if not self._matcher.consume_token(token):
            raise ConstraintError(f"the grammar refused token {token}: {self._error()}")
        self._allowed = None

    def allowed(self) -> np.ndarray:
        """One bool per tokenizer token: may it come next. Computed once per step."""
        if self._allowed is None:
            bitmask = self._matcher.compute_bitmask()
            if self._matcher.is_error():
                raise ConstraintError(self._error())
            bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
            self._allowed = bits[: self._vocab_size].astype(bool)
        return self._allowed

    def _error(self) -> str:
        return self._matcher.get_error().splitlines()[0][:200]


def compile_constraint(
    reply: Reply, tokenizer: Any, eos_token_ids: Iterable[int]
) -> CompiledConstraint:
    """Compile `reply` for a fast (`tokenizers`-backed) tokenizer; ConstraintError when
    the grammar is invalid, uses what cannot be enforced, or exceeds the limits."""
    tokens = _llg_tokenizer(tokenizer, eos_token_ids)
    grammar = llg.LLMatcher.grammar_from_lark(reply_grammar(reply, _markers(tokens)))
    matcher = llg.LLMatcher(tokens, grammar, log_level=0, limits=LIMITS)
    if matcher.is_error():
        raise ConstraintError(matcher.get_error().splitlines()[0][:500])
    return CompiledConstraint(matcher, tokens.vocab_size)


def _markers(tokens: llg.LLTokenizer):
    """A marker's Lark item: its special token when it is one (text cannot spell those)."""

    def marker(text: str) -> str:
        ids = tokens.tokenize_str(text, parse_special=True)
        if len(ids) == 1 and tokens.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return literal(text)

    return marker


def _llg_tokenizer(tokenizer: Any, eos_token_ids: Iterable[int]) -> llg.LLTokenizer:
    """llguidance's view of the tokenizer, built once (about a second for 200k tokens)."""
    with _tokenizers_lock:
        cached = _tokenizers.get(id(tokenizer))
        if cached is None or cached[0] is not tokenizer:
            backend = copy.copy(getattr(tokenizer, "backend_tokenizer", None))
            if backend is None:
                raise ConstraintError("constrained decoding needs a fast tokenizer")
            backend.no_padding()
            backend.no_truncation()
            built = llg.LLTokenizer(backend.to_str(), eos_token=sorted(eos_token_ids))
            cached = _tokenizers[id(tokenizer)] = (tokenizer, built)
        return cached[1]
