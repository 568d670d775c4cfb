"""Generated token ids to text, as they come: no split characters, stop strings cut."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from enum import Enum

REPLACEMENT = "\ufffd"
# A UTF-8 character has at most 4 bytes: a tail still incomplete after this many
# tokens is invalid output, not a character in progress, and is let through.
_MAX_PENDING_TOKENS = 4


class IncrementalDecoder:
    """Decode a growing token list and return only the new text.

    Decodes a small window (the last emitted tokens for context, plus the new ones)
    rather than the whole list, so the cost per token stays constant. Text that ends
    in an incomplete UTF-8 sequence (U+FFFD) is held back until the character completes.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], skip_ids: Collection[int] = ()):
        self._decode = decode
        self._skip_ids = skip_ids
        self._tokens: list[int] = []
        self._prefix = 0  # window start: context for the tokens being decoded
        self._read = 0  # tokens before this are already returned as text

    def add(self, token_id: int) -> str:
        """The new text once `token_id` is appended ("" while a character is incomplete)."""
        if token_id in self._skip_ids:
            return ""
        self._tokens.append(token_id)
        pending = len(self._tokens) - self._read
        context, text = self._window()
        if text.endswith(REPLACEMENT) and pending < _MAX_PENDING_TOKENS:
            return ""
        return self._advance(context, text)

    def flush(self) -> str:
        """Whatever is held back, at the end of the generation."""
        if self._read == len(self._tokens):
            return ""
        return self._advance(*self._window())

    def _window(self) -> tuple[str, str]:
        context = self._decode(self._tokens[self._prefix : self._read])
        return context, self._decode(self._tokens[self._prefix :])

    def _advance(self, context: str, text: str) -> str:
        self._prefix, self._read = self._read, len(self._tokens)
        return text[len(context) :]


class StopMatcher:
    """Find stop strings in streamed text, also when they span several pieces.

    Text is released at once except for the longest tail that could still be the
    start of a stop string. When a stop string appears, the text before it is
    released and the stop string and everything after it are dropped.
    """

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self._first_chars = frozenset(s[0] for s in self._stops)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.matched: str | None = None  # the stop string found, once one is

    def feed(self, text: str, armed: bool = True) -> tuple[str, bool]:
        """(text safe to send, whether a stop string was found); `armed` False: the
        text is let through unmatched (with whatever was held back)."""
        if not self._stops or not armed:
            held, self._held = self._held + text, ""
            return held, False
        held = self._held + text
        hits = [(i, stop) for stop in self._stops if (i := held.find(stop)) >= 0]
        if hits:
            self._held = ""
            index, self.matched = min(hits)
            return held[:index], True
        keep = self._possible_start(held)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """The held tail, at the end of the generation (no stop string came)."""
        held, self._held = self._held, ""
        return held

    def _possible_start(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if tail[0] in self._first_chars and any(s.startswith(tail) for s in self._stops):
                return size
        return 0


class Phase(Enum):
    """Where a token of the reply stands: stop strings end the answer, so they wait
    through the reasoning, match its closing marker (a client may stop there), and
    start on the answer's first text, not on the blank lines that follow the marker."""

    REASONING = "reasoning"
    REASONING_END = "reasoning_end"
    ANSWER = "answer"


class TextStream:
    """Token ids in, visible text out: incremental decoding followed by stop strings.

    skip_ids (end-of-sequence tokens) produce no text.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        skip_ids: Collection[int] = (),
        stops: Sequence[str] = (),
    ):
        self.skip_ids = skip_ids
        self._decoder = IncrementalDecoder(decode, skip_ids)
        self._stops = StopMatcher(stops)
        self._answer_blank = False  # after the reasoning, no answer text yet

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the text, if one did."""
        return self._stops.matched

    def add(self, token_id: int, phase: Phase = Phase.ANSWER) -> tuple[str, bool]:
        """(new visible text, whether a stop string ended the generation)."""
        return self._match(self._decoder.add(token_id), phase)

    def finish(self, phase: Phase = Phase.ANSWER) -> tuple[str, bool]:
        """The remaining text at the end of the generation; a stop string may still be in it."""
        text, stopped = self._match(self._decoder.flush(), phase)
        return (text, True) if stopped else (text + self._stops.flush(), False)

    def _match(self, text: str, phase: Phase) -> tuple[str, bool]:
        if phase is Phase.REASONING:
            return self._stops.feed(text, armed=False)
        if phase is Phase.REASONING_END:
            self._answer_blank = True
            return self._stops.feed(text)
        if not self._answer_blank:
            return self._stops.feed(text)
        answer = text.lstrip()
        blank, _ = self._stops.feed(text[: len(text) - len(answer)], armed=False)
        if not answer:
            return blank, False
        self._answer_blank = False
        released, stopped = self._stops.feed(answer)
        return blank + released, stopped
