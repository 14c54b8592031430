"""Every WAV the package reads or writes, in one place.

* the canonical 44-byte header of PCM s16le mono (phrase cache entries, ``say --output``),
  built by :func:`s16_mono_header` and checked by :func:`check_s16_mono_header`;
* the chunk walk of a WAV that arrives piece by piece or through a pipe (Coze sending WAV
  instead of raw pcm, espeak-ng's ``--stdout``): :func:`find_data`, :func:`parse_streamed_wav`;
* arbitrary WAV files as s16 samples (chimes): :func:`read_wav_s16`;
* little-endian s16 bytes to and from ``array('h')`` whatever the host byte order.

Only the standard library; errors are :class:`WavError` (a ValueError), which callers turn
into their own errors with their own wording.
"""

from __future__ import annotations

import struct
import sys
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

from ..fsutil import atomic_file

__all__ = [
    "HEADER_SIZE",
    "WavError",
    "WavFormat",
    "check_s16_mono_header",
    "find_data",
    "is_riff",
    "parse_streamed_wav",
    "read_wav_s16",
    "s16_bytes",
    "s16_mono_header",
    "s16_samples",
    "write_wav",
]

#: Size of the canonical header: RIFF + fmt (16 bytes of PCM format) + data chunk header.
HEADER_SIZE = 44
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_CHUNK = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")
_BIG_ENDIAN = sys.byteorder == "big"
#: espeak-ng's rate; what a streamed WAV without a fmt chunk is taken to be.
STREAM_DEFAULT_RATE = 22050


class WavError(ValueError):
    """Bytes or a file that are not a WAV this module can read."""


@dataclass(frozen=True)
class WavFormat:
    """The fields of a fmt chunk that decide whether its samples are usable."""

    format_tag: int  # 1 = PCM
    channels: int
    rate: int
    bits: int

    @property
    def is_s16_mono(self) -> bool:
        return (self.format_tag, self.channels, self.bits) == (1, 1, 16)


# -- samples ------------------------------------------------------------------------------


def s16_samples(pcm: bytes) -> array[int]:
    """Little-endian s16 bytes as ``array('h')`` in host order (WAV and ALSA S16_LE are LE)."""
    a = array("h")
    a.frombytes(pcm)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def s16_bytes(samples: array[int]) -> bytes:
    """``array('h')`` back to little-endian s16 bytes; the array itself is not changed."""
    if _BIG_ENDIAN:
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


# -- the canonical s16 mono header --------------------------------------------------------


def s16_mono_header(rate: int, data_bytes: int) -> bytes:
    """The 44-byte header of PCM s16le mono at rate followed by data_bytes of samples.

    What ``wave`` writes for the same format, so ``aplay`` and friends read it; a writer that
    streams can write it with data_bytes=0 first and overwrite it once the size is known.
    """
    return _HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
                        b"data", data_bytes)


def check_s16_mono_header(head: bytes, file_size: int, *, min_rate: int,
                          max_rate: int) -> Tuple[Optional[str], int, int]:
    """(problem or None, rate, data bytes) of a file that must be exactly a canonical header
    plus its samples: nothing else is trusted, so a truncated or foreign file is caught from
    its first 44 bytes and its size alone."""
    if len(head) < HEADER_SIZE:
        return f"{file_size} bytes is shorter than a WAV header", 0, 0
    (riff, riff_size, wave_id, fmt, fmt_size, tag, channels, rate, byte_rate, align, bits,
     data, data_size) = _HEADER.unpack(head[:HEADER_SIZE])
    if riff != b"RIFF" or wave_id != b"WAVE":
        return "not a RIFF/WAVE file", 0, 0
    if fmt != b"fmt " or fmt_size != 16 or data != b"data":
        return "unexpected WAV chunk layout", 0, 0
    if tag != 1 or channels != 1 or bits != 16 or align != 2:
        return f"not PCM 16-bit mono (format {tag}, {channels} channels, {bits} bits)", 0, 0
    if not min_rate <= rate <= max_rate or byte_rate != rate * 2:
        return f"bad sample rate {rate}", 0, 0
    if data_size != file_size - HEADER_SIZE or riff_size != file_size - 8:
        return f"header says {data_size} bytes of audio, the file holds {file_size - HEADER_SIZE}", 0, 0
    if data_size < 2 or data_size % 2:
        return f"{data_size} bytes of audio is not at least one whole frame", 0, 0
    return None, rate, data_size


# -- WAV that arrives as a stream ---------------------------------------------------------


def is_riff(head: Union[bytes, bytearray]) -> bool:
    """Whether bytes start like a WAV file (4 bytes are enough to decide)."""
    return bytes(head[:4]) == b"RIFF"


def find_data(head: bytes) -> Tuple[Optional[WavFormat], Optional[int]]:
    """Walk the chunks of a WAV head that may still be incomplete.

    Returns (the fmt chunk if one was read, offset of the first sample) with offset None
    while the data chunk has not been reached: the caller waits for more bytes. Size fields
    of the data chunk are ignored (a pipe cannot patch them), so the samples run to the end.
    """
    fmt: Optional[WavFormat] = None
    pos = 12
    while len(head) >= pos + _CHUNK.size:
        cid, size = _CHUNK.unpack_from(head, pos)
        if cid == b"fmt ":
            if len(head) < pos + 8 + _FMT.size:
                return fmt, None
            tag, channels, rate, _, _, bits = _FMT.unpack_from(head, pos + 8)
            fmt = WavFormat(tag, channels, rate, bits)
        elif cid == b"data":
            return fmt, pos + 8
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return fmt, None


def parse_streamed_wav(data: bytes) -> Tuple[int, bytes]:
    """Rate and samples (whole frames) of a complete s16 mono WAV written to a pipe.

    Raises WavError when data is not a WAV, not s16 mono, or has no data chunk.
    """
    if not is_riff(data) or data[8:12] != b"WAVE":
        raise WavError("not a WAV stream")
    fmt, offset = find_data(data)
    if fmt is not None and not fmt.is_s16_mono:
        raise WavError(f"unexpected format: {fmt.channels} ch, {fmt.bits} bit")
    if offset is None:
        raise WavError("no data chunk")
    body = data[offset:]
    return (fmt.rate if fmt is not None else STREAM_DEFAULT_RATE), body[:len(body) - len(body) % 2]


# -- WAV files ----------------------------------------------------------------------------


def read_wav_s16(path: Union[str, Path]) -> Tuple[int, int, array[int]]:
    """(rate, channels, interleaved s16 samples) of a PCM WAV file of 8 to 32 bits.

    For short sounds (chimes): the whole file is read. Raises WavError.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise WavError(f"cannot read {path}: {exc}") from None
    return rate, channels, _to_s16(raw, width)


def _to_s16(raw: bytes, width: int) -> array[int]:
    if width == 2:
        return s16_samples(raw)
    if width == 1:
        return array("h", ((b - 128) << 8 for b in raw))
    if width in (3, 4):
        return array("h", (int.from_bytes(raw[i + width - 2:i + width], "little", signed=True)
                           for i in range(0, len(raw) - width + 1, width)))
    raise WavError(f"unsupported sample width {width}")


def write_wav(path: Union[str, Path], chunks: Iterable[bytes], rate: int) -> int:
    """Write PCM chunks as a standard WAV file (s16 mono), atomically; returns the frame count.

    A failure midway leaves no file: the audio goes to a hidden temp file renamed at the end.
    """
    frames = 0
    # not durable: an export the user asked for; a crash must leave no partial file, a power
    # cut losing it is acceptable and fsync would only slow `say --output` down
    with atomic_file(path, durable=False) as fh:
        with wave.open(fh, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            for chunk in chunks:
                wav.writeframesraw(chunk)
                frames += len(chunk) // 2
    return frames
