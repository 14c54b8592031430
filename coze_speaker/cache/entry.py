"""What one cache entry is: its key, its file format and the public value types.

An entry is a standard WAV file, PCM s16le mono (so ``aplay`` plays it), named after its
key. Its 56-byte header is the canonical 44-byte one with a ``crc `` chunk between ``fmt ``
and ``data``: the crc32 of the samples (WAV readers skip chunks they do not know). The
header's sizes must match the file's size exactly, which tells a truncated or foreign file
from a good one without reading it; the checksum tells damage that kept the size (zeroed
or flipped bytes) and costs one read of the samples.

Entries written before checksums have the bare 44-byte header. They are still accepted,
checked by their header only: a checksum computed now would only vouch for whatever the
file holds today, and throwing them away would pay Coze again for every cached phrase.
They are replaced as the LRU evicts them.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ..errors import SpeakerError
from ..vocabulary import SAMPLE_RATES
from ..sound.wav import HEADER_SIZE, check_s16_mono_header, s16_mono_header

__all__ = [
    "CRC_CHUNK",
    "ENTRY_HEADER_SIZE",
    "HEADER_SIZE",
    "KEY_VERSION",
    "MAX_RATE",
    "MIN_RATE",
    "CacheEntry",
    "CacheError",
    "CacheStats",
    "EntryLayout",
    "VerifyReport",
    "cache_key",
    "check_key",
    "check_rate",
    "entry_header",
    "is_key",
]

KEY_VERSION = 1
#: The chunk that holds the crc32 (zlib) of an entry's samples: id, length 4, value.
CRC_CHUNK = b"crc "
_CRC = struct.Struct("<4sII")
#: An entry's header: the canonical 44 bytes plus the 12-byte crc chunk before ``data``.
ENTRY_HEADER_SIZE = HEADER_SIZE + _CRC.size
_FMT_END = 36  # where the canonical header's data chunk (and an entry's crc chunk) starts
MIN_RATE = min(SAMPLE_RATES)
MAX_RATE = max(SAMPLE_RATES)

_KEY_RE = re.compile(r"[0-9a-f]{64}\Z")
_RESERVED_KEY_FIELDS = ("v", "host", "text")


class CacheError(SpeakerError):
    """The cache cannot do what was asked (unusable directory, entry vanished, closed)."""

    code = "cache"


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    rate: int
    frames: int
    size: int  # bytes of the whole file, header included
    crc: Optional[int] = None  # crc32 of the samples; None for an entry written before checksums


@dataclass(frozen=True)
class EntryLayout:
    """What an entry's header says: where the samples are, how many, and their checksum."""

    rate: int
    data_bytes: int
    data_offset: int
    crc: Optional[int]  # None: written before checksums, only the header can be checked


class VerifyReport(NamedTuple):
    """What ``PhraseCache.verify`` found."""

    checked: int  # entry files examined
    removed: List[str]  # keys of the broken ones, deleted (sorted)
    without_checksum: int  # entries written before checksums: only their header was checked


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    oldest: Optional[float]  # epoch seconds of the oldest entry's creation
    newest: Optional[float]
    max_bytes: int
    dir: Path


# -- keys -------------------------------------------------------------------------------


def cache_key(host: str, text: str, params: Mapping[str, Any]) -> str:
    """The cache key of one synthesis: sha256 hex of a canonical JSON of everything it depends on.

    The JSON is ``{"v": 1, "host": host, "text": text, **params}`` with sorted keys,
    separators ``(",", ":")`` and ``ensure_ascii=False``; params holds voice_id, emotion,
    emotion_scale, speed, loudness_rate, context_texts, response_format and sample_rate.
    A float with an integral value is written as an integer, so ``speed=1`` and
    ``speed=1.0`` share their audio.
    """
    if not isinstance(host, str) or not isinstance(text, str):
        raise TypeError("host and text must be strings")
    clash = [name for name in _RESERVED_KEY_FIELDS if name in params]
    if clash:
        raise ValueError(f"params must not contain {', '.join(clash)}")
    doc: Dict[str, Any] = {"v": KEY_VERSION, "host": host, "text": text}
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"parameter names must be strings, got {name!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        doc[name] = value
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def is_key(name: str) -> bool:
    """Whether name has the shape of a cache key (64 lowercase hex digits)."""
    return bool(_KEY_RE.match(name))


def check_key(key: Any) -> str:
    """key itself when it is a cache key; ValueError otherwise (keys become file names)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"not a cache key: {key!r}")
    return key


def check_rate(rate: Any) -> int:
    """rate itself when an entry may have it; ValueError otherwise (checked before any write)."""
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample rate must be an integer in {MIN_RATE}..{MAX_RATE}, got {rate!r}")
    return rate


# -- the entry file format ----------------------------------------------------------------


def entry_header(rate: int, data_bytes: int, crc: int = 0) -> bytes:
    """The 56-byte header an entry starts with: written with zeros first, patched at commit
    with the size and crc32 of the samples."""
    canonical = s16_mono_header(rate, data_bytes)
    riff = struct.pack("<I", 36 + _CRC.size + data_bytes)
    return canonical[:4] + riff + canonical[8:_FMT_END] + _CRC.pack(CRC_CHUNK, 4, crc) + canonical[_FMT_END:]


def check_entry_header(head: bytes, file_size: int) -> Tuple[Optional[str], Optional[EntryLayout]]:
    """(problem, None) or (None, layout) of an entry file from its first ENTRY_HEADER_SIZE bytes.

    Only two layouts are trusted: an entry with its crc chunk, and the bare canonical header
    of entries written before checksums. The format and sizes are checked by the one WAV
    header check (:func:`check_s16_mono_header`), on the header without the crc chunk.
    """
    if head[_FMT_END:_FMT_END + 4] != CRC_CHUNK:
        problem, rate, data_bytes = check_s16_mono_header(head[:HEADER_SIZE], file_size,
                                                          min_rate=MIN_RATE, max_rate=MAX_RATE)
        if problem is not None:
            return problem, None
        return None, EntryLayout(rate, data_bytes, HEADER_SIZE, None)
    if len(head) < ENTRY_HEADER_SIZE:
        return f"{file_size} bytes is shorter than a phrase cache entry's header", None
    _, length, crc = _CRC.unpack_from(head, _FMT_END)
    if length != 4:
        return f"checksum chunk of {length} bytes, expected 4", None
    (riff_size,) = struct.unpack_from("<I", head, 4)
    without = (head[:4] + struct.pack("<I", (riff_size - _CRC.size) & 0xFFFFFFFF) + head[8:_FMT_END]
               + head[_FMT_END + _CRC.size:ENTRY_HEADER_SIZE])
    problem, rate, data_bytes = check_s16_mono_header(without, file_size - _CRC.size,
                                                      min_rate=MIN_RATE, max_rate=MAX_RATE)
    if problem is not None:
        return problem, None
    return None, EntryLayout(rate, data_bytes, ENTRY_HEADER_SIZE, crc)
