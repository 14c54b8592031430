"""What one cache entry is: its key, its file format and the public value types.

An entry is a standard WAV file, PCM s16le mono with the canonical 44-byte header (so
``aplay`` plays it), named after its key. The header's sizes must match the file's size
exactly: that is how a truncated or foreign file is told from a good one without reading it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import SpeakerError
from ..vocabulary import SAMPLE_RATES
from ..sound.wav import HEADER_SIZE, check_s16_mono_header, s16_mono_header

__all__ = [
    "HEADER_SIZE",
    "KEY_VERSION",
    "MAX_RATE",
    "MIN_RATE",
    "CacheEntry",
    "CacheError",
    "CacheStats",
    "cache_key",
    "check_key",
    "check_rate",
    "entry_header",
    "is_key",
]

KEY_VERSION = 1
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


def entry_header(rate: int, data_bytes: int) -> bytes:
    """The header an entry starts with; written with data_bytes=0 first, patched at commit."""
    return s16_mono_header(rate, data_bytes)


def _check_header(head: bytes, file_size: int) -> Tuple[Optional[str], int, int]:
    """(problem or None, rate, data bytes) of an entry file: our canonical 44-byte header only."""
    return check_s16_mono_header(head, file_size, min_rate=MIN_RATE, max_rate=MAX_RATE)
