"""Tests for coze_speaker.voice.textsplit: pieces must fit the Coze TTS byte limit and cut naturally."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coze_speaker.voice.textsplit import MAX_INPUT_BYTES, split_text


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def squash(s: str) -> str:
    return "".join(s.split())


def check_invariants(text: str, pieces: list[str], max_bytes: int) -> None:
    """Properties every split must satisfy, whatever the input."""
    for p in pieces:
        assert p, "empty piece"
        assert p == p.strip(), f"piece not stripped: {p!r}"
        assert not p.isspace()
        assert nbytes(p) <= max_bytes, f"{nbytes(p)} > {max_bytes}: {p!r}"
    # Order kept, nothing lost or duplicated except whitespace at the cuts.
    assert "".join(squash(p) for p in pieces) == squash(text)
    if not text.strip():
        assert pieces == []
    elif nbytes(text.strip()) <= max_bytes:
        assert pieces == [text.strip()]


# Alphabet rich in things that make splitting hard.
TRICKY = (
    list("abc xyz.,!?;:-'\"()")
    + list("中文字。，、！？；：“”「」…．")
    + ["\u0301", "\u0308", "\u20dd", "\ufe0f", "\u200d", "\u200c"]  # combining, VS16, ZWJ
    + ["😀", "👍", "🏽", "👨", "👩", "🇩", "🇪", "é", "ß", "Ω", "ह", "\u093f"]
    + [" ", "\n", "\t", "\r", "\u3000", "\xa0", "\u2028", "\x0b"]
)
WHITESPACE_HEAVY = st.text(alphabet=st.sampled_from([" ", "\n", "\t", "\u3000", "a", "。", "é"]))

texts = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(TRICKY), max_size=400),
    WHITESPACE_HEAVY,
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x4E80), max_size=600),
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1F64F), max_size=300),
)
small_limits = st.integers(min_value=4, max_value=64)


@settings(max_examples=300, deadline=None)
@given(text=texts, max_bytes=small_limits)
def test_properties_small_limits(text: str, max_bytes: int) -> None:
    check_invariants(text, split_text(text, max_bytes), max_bytes)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(TRICKY), min_size=200, max_size=3000),
    max_bytes=st.sampled_from([4, 5, 7, 16, 100, MAX_INPUT_BYTES]),
)
def test_properties_long_texts(text: str, max_bytes: int) -> None:
    check_invariants(text, split_text(text, max_bytes), max_bytes)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_properties_default_limit(text: str) -> None:
    check_invariants(text, split_text(text), MAX_INPUT_BYTES)


@settings(max_examples=300, deadline=None)
@given(
    base=st.text(alphabet=st.sampled_from(list("aeo中 ")), min_size=1, max_size=200),
    max_bytes=st.integers(min_value=8, max_value=64),
)
def test_combining_marks_stay_with_base(base: str, max_bytes: int) -> None:
    # Each base gets one combining mark; a cluster (<= 4 bytes) always fits,
    # so no piece may ever start with the mark.
    text = "".join(c + "\u0301" if not c.isspace() else c for c in base)
    pieces = split_text(text, max_bytes)
    check_invariants(text, pieces, max_bytes)
    for p in pieces:
        assert not unicodedata.combining(p[0]), pieces


def test_constants() -> None:
    assert MAX_INPUT_BYTES == 1024


def test_empty_and_whitespace() -> None:
    assert split_text("") == []
    assert split_text(" \n\t\u3000 ") == []


def test_short_text_single_piece_stripped() -> None:
    assert split_text("  Hello world.  ") == ["Hello world."]
    assert split_text("Hello. World. Again.") == ["Hello. World. Again."]
    exact = "x" * MAX_INPUT_BYTES
    assert split_text(exact) == [exact]
    assert len(split_text(exact + "y")) == 2


@pytest.mark.parametrize("bad", [-1, 0, 1, 3])
def test_rejects_tiny_max_bytes(bad: int) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        split_text("hello", bad)


def test_english_sentences_cut_after_sentence_end() -> None:
    sentences = []
    i = 0
    while nbytes(" ".join(sentences)) < 3000:
        sentences.append(f"Sentence number {i} is here, and it says something mildly interesting.")
        i += 1
    text = " ".join(sentences)
    pieces = split_text(text)
    check_invariants(text, pieces, MAX_INPUT_BYTES)
    assert len(pieces) >= 3
    for p in pieces:
        assert p.endswith("."), p[-30:]
        assert p.startswith("Sentence number")
    # Greedy: all but the last piece are nearly full.
    for p in pieces[:-1]:
        assert nbytes(p) > MAX_INPUT_BYTES - 80


def test_chinese_cuts_after_full_stop() -> None:
    text = "今天天气很好，我们去公园散步。" * 60
    pieces = split_text(text)
    check_invariants(text, pieces, MAX_INPUT_BYTES)
    assert len(pieces) >= 2
    for p in pieces:
        assert p.endswith("。")
        assert p.startswith("今天")


def test_chinese_closing_quote_stays_with_full_stop() -> None:
    text = "他说：“你好。”然后我们走了。" * 40
    pieces = split_text(text, 100)
    check_invariants(text, pieces, 100)
    for p in pieces:
        assert p.endswith("。”") or p.endswith("。"), p
        assert not p.startswith("”")


def test_only_commas_cuts_after_commas() -> None:
    text = "alpha beta gamma, " * 200
    pieces = split_text(text)
    check_invariants(text, pieces, MAX_INPUT_BYTES)
    assert len(pieces) >= 3
    for p in pieces:
        assert p.endswith(",")

    cjk = "一二三四五六七，" * 100
    pieces = split_text(cjk, 200)
    check_invariants(cjk, pieces, 200)
    assert len(pieces) >= 3
    for p in pieces:
        assert p.endswith("，")


def test_clause_beats_space_and_sentence_beats_clause() -> None:
    assert split_text("one two, three four five", 20) == ["one two,", "three four five"]
    assert split_text("one. two, three four", 18) == ["one.", "two, three four"]


def test_newline_is_a_sentence_break() -> None:
    text = "first line without stop\nsecond line goes on and on"
    assert split_text(text, 40) == ["first line without stop", "second line goes on and on"]


def test_long_word_hard_cut_at_character_boundaries() -> None:
    text = "é" * 2000  # 4000 bytes, no break opportunity
    pieces = split_text(text)
    check_invariants(text, pieces, MAX_INPUT_BYTES)
    assert [len(p) for p in pieces] == [512, 512, 512, 464]
    for p in pieces:
        assert p.encode("utf-8").decode("utf-8") == p
        assert set(p) == {"é"}

    # Odd offset: a 2-byte char must not straddle the limit.
    text = "a" + "é" * 1000
    pieces = split_text(text)
    assert nbytes(pieces[0]) == 1023
    check_invariants(text, pieces, MAX_INPUT_BYTES)

    emoji = "😀" * 700  # 4-byte chars
    pieces = split_text(emoji)
    assert [len(p) for p in pieces] == [256, 256, 188]


def test_cjk_run_without_punctuation_is_hard_cut() -> None:
    text = "中" * 1000
    pieces = split_text(text)
    check_invariants(text, pieces, MAX_INPUT_BYTES)
    assert [len(p) for p in pieces] == [341, 341, 318]


def test_decimal_point_is_not_a_sentence_end() -> None:
    assert split_text("3.5 degrees", 10) == ["3.5", "degrees"]
    text = "The temperature is 3.5 degrees and rising"
    pieces = split_text(text, 24)
    assert not any(p.endswith("3.") for p in pieces), pieces
    assert split_text("see example.com now", 15) == ["see example.com", "now"]
    # ...but still usable when nothing better exists.
    assert split_text("3.14159", 4) == ["3.", "1415", "9"]


def test_abbreviation_is_not_a_sentence_end() -> None:
    assert split_text("See e.g. this thing", 16) == ["See e.g. this", "thing"]
    assert split_text("Ask Dr. Who about it", 15) == ["Ask Dr. Who", "about it"]


def test_zwj_emoji_sequence_not_split() -> None:
    family = "👨\u200d👩\u200d👧\u200d👦"  # 25 bytes
    pieces = split_text(family * 5, 30)
    assert pieces == [family] * 5


def test_flags_not_split() -> None:
    flag = "🇩🇪"  # two regional indicators, 8 bytes
    pieces = split_text(flag * 10, 12)
    assert pieces == [flag] * 10


def test_large_text_keeps_invariants() -> None:
    """Large inputs stay correct (their speed is a benchmark matter, not a test)."""
    unit = "Hello there, general Kenobi. 你好，世界。 Ça va? 3.5 km\n"
    text = (unit * (200_000 // nbytes(unit) + 1))[:70_000]
    check_invariants(text, split_text(text), MAX_INPUT_BYTES)

    blob = "x" * 200_000  # hard-cut everywhere, tiny limit: many pieces
    assert len(split_text(blob, 4)) == 50_000
