"""Incremental detokenization and stop strings, on a real byte-level tokenizer."""

from __future__ import annotations

import pytest
from api_fakes import build_tokenizer, byte_tokens

from refserver.api.shared.detokenize import IncrementalDecoder, Phase, StopMatcher, TextStream
from refserver.api.shared.generation import ReasoningCount
from refserver.api.shared.prompting import _eos_token_ids

TOKENIZER = build_tokenizer()


def _decode(ids):
    return TOKENIZER.decode(list(ids))


def _stream(ids, stops=(), skip=()):
    """Run ids through a TextStream; return (pieces, full text, stopped)."""
    text = TextStream(_decode, skip_ids=skip, stops=stops)
    pieces = []
    for token in ids:
        piece, stopped = text.add(token)
        pieces.append(piece)
        if stopped:
            return pieces, "".join(pieces), True
    piece, stopped = text.finish()
    pieces.append(piece)
    return pieces, "".join(pieces), stopped


@pytest.mark.parametrize(
    "text",
    ["Hello world", "café naïve", "emoji 😀 and 中文", "  spaces  ", "\n\nnewlines\n", "a"],
)
@pytest.mark.parametrize("split", ["bpe", "bytes"])
def test_incremental_text_equals_full_decode(text, split):
    ids = TOKENIZER.encode(text) if split == "bpe" else byte_tokens(TOKENIZER, text)
    pieces, full, _ = _stream(ids)
    assert full == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_multibyte_character_is_held_until_complete():
    decoder = IncrementalDecoder(_decode)
    ids = byte_tokens(TOKENIZER, "😀")
    assert len(ids) == 4
    assert [decoder.add(t) for t in ids] == ["", "", "", "😀"]


def test_invalid_bytes_are_released_not_held_for_ever():
    stray = byte_tokens(TOKENIZER, "é")[0]  # a lead byte alone is never completed
    decoder = IncrementalDecoder(_decode)
    out = [decoder.add(t) for t in [stray] * 6]
    assert "".join(out) + decoder.flush() == _decode([stray] * 6)
    assert sum(1 for piece in out if piece) >= 1


def test_skip_ids_produce_no_text():
    eos = TOKENIZER.eos_token_id
    _, full, _ = _stream(TOKENIZER.encode("Hi") + [eos], skip={eos})
    assert full == "Hi"


@pytest.mark.parametrize(
    "text, stops, expected, stopped",
    [
        ("Hello world", ["world"], "Hello ", True),
        ("Hello world", ["o w"], "Hell", True),
        ("Hello world", ["xyz"], "Hello world", False),
        ("Hello world", ["d"], "Hello worl", True),
        ("Hello world", ["H"], "", True),
        ("Hello world", ["world", "lo"], "Hel", True),
        ("Hello world", ["", "wor"], "Hello ", True),
        ("Hello world", ["worlds"], "Hello world", False),
        ("abcabd", ["abd"], "abc", True),
        ("aaab", ["aab"], "a", True),
        ("café 😀 end", ["😀"], "café ", True),
        ("café 😀 end", ["é 😀"], "caf", True),
        ("x" * 50 + "STOP" + "y", ["STOP"], "x" * 50, True),
    ],
)
@pytest.mark.parametrize("split", ["bpe", "bytes"])
def test_stop_strings_across_token_boundaries(text, stops, expected, stopped, split):
    ids = TOKENIZER.encode(text) if split == "bpe" else byte_tokens(TOKENIZER, text)
    _, full, was_stopped = _stream(ids, stops=stops)
    assert (full, was_stopped) == (expected, stopped)


@pytest.mark.parametrize(
    "feeds, stops, released",
    [
        (["Hel", "lo"], ["lo!"], ["He", "l"]),  # "l", then "lo", may start "lo!": held
        (["ab", "c"], ["abd"], ["", "abc"]),  # held "ab" released when "c" rules it out
        (["x", "yz"], ["q"], ["x", "yz"]),  # nothing could start a stop: no delay
        (["aaa"], ["aab"], ["a"]),  # only the longest possible start is held
    ],
)
def test_stop_matcher_holds_back_only_a_possible_start(feeds, stops, released):
    matcher = StopMatcher(stops)
    assert [matcher.feed(text)[0] for text in feeds] == released


def test_a_disarmed_matcher_lets_text_through_and_then_matches_what_follows():
    matcher = StopMatcher(["Q:"])
    assert matcher.feed("a Q") == ("a ", False)  # "Q" may start a stop: held
    assert matcher.feed(": b", armed=False) == ("Q: b", False)  # released unmatched
    assert matcher.feed(" Q: c") == (" ", True) and matcher.matched == "Q:"


def test_without_a_closing_token_an_opening_one_opens_no_reasoning():
    reasoning = ReasoningCount(open_id=7, close_id=None, inside=False)
    assert [reasoning.add(token) for token in (7, 1, 2)] == [Phase.ANSWER] * 3
    assert reasoning.count == 0


def test_stop_string_found_at_finish_is_cut():
    text = TextStream(_decode, stops=["42"])
    ids = byte_tokens(TOKENIZER, "is 4")
    out = "".join(text.add(t)[0] for t in ids)
    assert out == "is "
    assert text.finish() == ("4", False)


class _TokenizerStub:
    eos_token_id = 0

    def __init__(self, eos_token_ids):
        self.eos_token_ids = eos_token_ids


@pytest.mark.parametrize(
    "given, expected",
    [(5, {0, 5}), ({5, 6}, {0, 5, 6}), (None, {0})],  # transformers 5 may give an int
)
def test_eos_token_ids_from_an_int_or_a_set(given, expected):
    assert _eos_token_ids(_TokenizerStub(given)) == expected
