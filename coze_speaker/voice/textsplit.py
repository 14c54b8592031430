"""Split long announcements into pieces the Coze TTS endpoint accepts.

The Coze text-to-speech API takes at most 1024 UTF-8 bytes of ``input`` per
request, so longer text must be sent as several requests.  Cutting at the most
natural place (sentence end, then clause mark, then whitespace, then anywhere
that keeps characters whole) keeps the synthesized prosody sounding right.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from itertools import accumulate
from typing import Optional, Sequence

from ..vocabulary import MAX_INPUT_BYTES

__all__ = ["MAX_INPUT_BYTES", "first_sentence", "split_text"]

# Break classes, worst to best.  A cut position q lies between text[q-1] and text[q].
_UNSAFE = 0  # would split a grapheme (base + combining mark, ZWJ sequence, flag)
_POOR = 1  # strands punctuation: before 。 or ", after an opening quote
_HARD = 2  # plain character boundary, e.g. inside a word or a run of CJK
_WEAK = 3  # after ASCII punctuation glued to the next word ("3.5", "example.com")
_SPACE = 4  # at whitespace
_CLAUSE = 5  # after a clause mark: ，,、:;：
_SENTENCE = 6  # after a sentence end: 。！？；.!?．… or at a line break
_N_CLASSES = 7

# Sentence ends that need following whitespace to count (ASCII text would
# otherwise break "3.5" or "example.com").
_ASCII_SENTENCE_ENDS = frozenset(".!?")
# Sentence ends that count even when glued to the next character (CJK style).
_WIDE_SENTENCE_ENDS = frozenset("。！？；．…｡‼⁇⁈⁉؟")
_ASCII_CLAUSE_MARKS = frozenset(",;:")
_WIDE_CLAUSE_MARKS = frozenset("，、：､﹐﹑﹔﹕،؛")
_SENTENCE_ENDS = _ASCII_SENTENCE_ENDS | _WIDE_SENTENCE_ENDS
_CLAUSE_MARKS = _ASCII_CLAUSE_MARKS | _WIDE_CLAUSE_MARKS
# Closing quotes/brackets stay attached to the punctuation they follow: 。」 ." ?)
_CLOSERS = frozenset(")]}\"'»”’」』）】〕〉》〗〙〛｣")
# Never cut right before these: it would strand punctuation at a piece start.
_NO_BREAK_BEFORE = _SENTENCE_ENDS | _CLAUSE_MARKS | _CLOSERS
# Characters str.splitlines() treats as line boundaries.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")

# "e.g. foo" should not look like a sentence end.
_ABBREVIATIONS = frozenset(
    "e.g. i.e. cf. vs. etc. mr. mrs. ms. dr. prof. st. jr. sr. no. fig. approx. ca. "
    "z.b. bzw. usw.".split()
)
_ABBREV_MAX_LEN = 12
_DOTTED_INITIALS = re.compile(r"(?:[^\W\d_]\.){2,}")
_OPENERS = "([{\"'«“‘「『（【〔〈《〖〘〚｢"
_OPEN_ONLY = frozenset(_OPENERS) - _CLOSERS  # ASCII quotes are ambiguous

_ZWJ = "\u200d"


def _utf8_len(ch: str) -> int:
    """UTF-8 length of one code point, computed from ord() so no encoding is needed."""
    o = ord(ch)
    if o < 0x80:
        return 1
    if o < 0x800:
        return 2
    if o < 0x10000:
        return 3
    return 4


def _is_extend(ch: str) -> bool:
    """True if ch attaches to the previous character (grapheme extender)."""
    if ch < "\u0300":  # fast path: ASCII and Latin-1 never extend
        return False
    o = ord(ch)
    if (
        o in (0x200C, 0x200D)  # ZWNJ, ZWJ
        or 0x1F3FB <= o <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= o <= 0xE007F  # emoji tag sequences
    ):
        return True
    return unicodedata.category(ch)[0] == "M"  # Mn/Mc/Me incl. variation selectors


def _is_regional_indicator(ch: str) -> bool:
    """True for the letters that pair up into flag emoji."""
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _is_abbreviation(token: str) -> bool:
    """True if a whitespace-delimited token ending in '.' looks like "e.g." or "U.S."."""
    core = token.lstrip(_OPENERS).lower()
    return core in _ABBREVIATIONS or _DOTTED_INITIALS.fullmatch(core) is not None


def _classify_positions(text: str) -> list[list[int]]:
    """Bucket every candidate cut position 1..len-1 by break class, ascending.

    Only positions right after a non-whitespace character are candidates: a cut
    anywhere in a whitespace run yields the same stripped pieces.
    """
    buckets: list[list[int]] = [[] for _ in range(_N_CLASSES)]
    n = len(text)
    tok_start = 0  # start of the non-whitespace token that text[q-1] belongs to
    eff: Optional[str] = None  # last non-closer char of that token (sees through 。」)
    ri_run = 0  # regional indicators ending at q-1 (flags pair up)
    for q in range(1, n):
        prev = text[q - 1]
        if prev.isspace():
            tok_start = q
            eff = None
            ri_run = 0
            continue
        if prev not in _CLOSERS:
            eff = prev
        ri_run = ri_run + 1 if _is_regional_indicator(prev) else 0
        cur = text[q]

        if (
            _is_extend(cur)
            or prev == _ZWJ
            or (ri_run % 2 == 1 and _is_regional_indicator(cur))
        ):
            cls = _UNSAFE
        elif cur.isspace():
            # Look through this whitespace run once (it starts here) for a line break.
            k = q
            has_newline = False
            while k < n and text[k].isspace():
                if text[k] in _LINE_BREAKS:
                    has_newline = True
                    break
                k += 1
            if has_newline:
                cls = _SENTENCE
            elif eff is None:
                cls = _SPACE
            elif eff in _SENTENCE_ENDS:
                if (
                    eff == "."
                    and q - tok_start <= _ABBREV_MAX_LEN
                    and _is_abbreviation(text[tok_start:q])
                ):
                    cls = _SPACE
                else:
                    cls = _SENTENCE
            elif eff in _CLAUSE_MARKS:
                cls = _CLAUSE
            else:
                cls = _SPACE
        elif cur in _NO_BREAK_BEFORE or eff is None or prev in _OPEN_ONLY:
            cls = _POOR
        elif eff in _WIDE_SENTENCE_ENDS:
            cls = _SENTENCE
        elif eff in _WIDE_CLAUSE_MARKS:
            cls = _CLAUSE
        elif eff in _ASCII_SENTENCE_ENDS or eff in _ASCII_CLAUSE_MARKS:
            cls = _WEAK
        else:
            cls = _HARD
        buckets[cls].append(q)
    return buckets


def split_text(text: str, max_bytes: int = MAX_INPUT_BYTES) -> list[str]:
    """Split text into pieces of at most max_bytes UTF-8 bytes, cutting at the most natural place.

    Greedy: each piece is as long as possible, ending at the last break of the best
    class in its window (sentence end > clause mark > whitespace > weak punctuation
    > character boundary > boundary next to punctuation > grapheme-splitting
    boundary).  Pieces are stripped and
    non-empty; whitespace at the cuts is dropped, nothing else.  Runs in O(n log n).
    """
    if max_bytes < 4:
        raise ValueError(
            f"max_bytes must be >= 4 (room for one UTF-8 code point), got {max_bytes!r}"
        )
    stripped = text.strip()
    if not stripped:
        return []
    if len(stripped) * 4 <= max_bytes or (
        len(stripped) <= max_bytes
        and len(stripped.encode("utf-8", "surrogatepass")) <= max_bytes
    ):
        return [stripped]

    n = len(text)
    # cum[i] = UTF-8 byte offset of text[i]; bisect on it finds each window end.
    cum: Sequence[int]
    if text.isascii():
        cum = range(n + 1)
    else:
        cum = list(accumulate(map(_utf8_len, text), initial=0))
    end = len(text.rstrip())
    buckets = _classify_positions(text)
    by_best = buckets[::-1]

    pieces: list[str] = []
    s = n - len(text.lstrip())
    while True:
        if cum[end] - cum[s] <= max_bytes:
            pieces.append(text[s:end])
            return pieces
        # j: furthest cut with text[s:j] within budget; j >= s + 1 since max_bytes >= 4.
        j = bisect_right(cum, cum[s] + max_bytes, s, end) - 1
        cut = s + 1
        for bucket in by_best:
            k = bisect_right(bucket, j) - 1
            if k >= 0 and bucket[k] > s:
                cut = bucket[k]
                break
        pieces.append(text[s:cut])
        s = cut
        while text[s].isspace():  # stops before end: text[end - 1] is not whitespace
            s += 1


def first_sentence(text: str) -> Optional[tuple]:
    """(first sentence, the rest) of a text of several sentences, None for one sentence.

    The cut is the first sentence end the splitter itself would prefer (``.`` followed by a
    space but not in "e.g.", ``。`` and friends, a line break), so the two parts are what a
    reader hears as the first sentence and the rest. O(n).
    """
    stripped = text.strip()
    if not stripped:
        return None
    ends = _classify_positions(stripped)[_SENTENCE]
    if not ends:
        return None
    head, rest = stripped[:ends[0]].strip(), stripped[ends[0]:].strip()
    return (head, rest) if head and rest else None
