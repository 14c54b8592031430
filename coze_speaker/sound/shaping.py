"""Sound shaping at play time: volume and chime. Never cached.

(The silence that wakes a sleeping amplifier is the player's: only it knows whether the
device was just opened, see ``Player.wake_ms``.)

Pure Python over ``array('h')`` (no numpy on a Pi, ``audioop`` is gone in 3.13): volume is a
lookup table applied with ``map``, which runs at C speed.
"""

from __future__ import annotations

import math
from array import array
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from ..errors import SpeakerError
from .wav import WavError, read_wav_s16
from .wav import s16_bytes as _pcm
from .wav import s16_samples as _samples


class ChimeError(SpeakerError, ValueError):
    """A chime that cannot be used: unknown name, outside the chimes folder, unreadable."""

    code = "invalid"
    field = "chime"


@lru_cache(maxsize=8)
def _gain_table(volume: int) -> tuple:
    """Sample value -> scaled value for every 16-bit sample, indexed by value + 32768."""
    gain = volume_gain(volume)
    return tuple(int(round(v * gain)) for v in range(-32768, 32768))


def volume_gain(volume: int) -> float:
    """Perceived loudness 0..100 to an amplitude factor (100 = unchanged, 0 = silent).

    A cubic curve: 50 sounds about half as loud, which a linear factor does not.
    """
    volume = max(0, min(100, int(volume)))
    return (volume / 100.0) ** 3 if volume < 100 else 1.0


def apply_volume(pcm: bytes, volume: int) -> bytes:
    """Scale s16 samples for a volume 0..100; 100 returns the input untouched."""
    if volume >= 100 or not pcm:
        return pcm
    if volume <= 0:
        return bytes(len(pcm))
    table = _gain_table(int(volume))
    samples = _samples(pcm)
    return _pcm(array("h", map(table.__getitem__, map((32768).__add__, samples))))


def silence(rate: int, ms: int) -> bytes:
    """ms milliseconds of silence at rate, in whole frames."""
    return bytes(2 * (rate * max(0, ms) // 1000))


@lru_cache(maxsize=8)
def builtin_chime(rate: int) -> bytes:
    """A short two-tone ding (E6 then C6, bell-like decay), made in code at the play rate."""
    out = array("h")
    for freq, start, length in ((1318.5, 0.0, 0.45), (1046.5, 0.16, 0.6)):
        begin = int(start * rate)
        n = int(length * rate)
        if len(out) < begin + n:
            out.extend([0] * (begin + n - len(out)))
        for i in range(n):
            t = i / rate
            attack = min(1.0, t / 0.005)
            env = attack * math.exp(-t * 7.0)
            tone = math.sin(2 * math.pi * freq * t) + 0.25 * math.sin(2 * math.pi * 2 * freq * t)
            out[begin + i] = max(-32767, min(32767, out[begin + i] + int(9000 * env * tone)))
    out.extend([0] * int(0.12 * rate))  # a breath between the ding and the voice
    return _pcm(out)


def load_chime(name: str, chimes_dir: Optional[Path], rate: int) -> bytes:
    """PCM of a named chime: 'builtin', or NAME(.wav) inside chimes_dir, converted to rate.

    A name can only pick a file directly inside the configured folder: no paths.
    """
    if name == "builtin":
        return builtin_chime(rate)
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise ChimeError(f"chime {name!r} is not a plain name")
    if chimes_dir is None:
        raise ChimeError(f"chime {name!r}: no chimes folder configured (audio.chimes_dir)")
    folder = Path(chimes_dir).resolve()
    path = folder / (name if name.endswith(".wav") else name + ".wav")
    if path.resolve().parent != folder or not path.is_file():
        raise ChimeError(f"chime {name!r} not found in {folder}")
    return _load_wav_cached(str(path), path.stat().st_mtime_ns, rate)


@lru_cache(maxsize=16)
def _load_wav_cached(path: str, mtime_ns: int, rate: int) -> bytes:
    return read_wav_as(path, rate)


def read_wav_as(path: str, rate: int) -> bytes:
    """A WAV file as s16 mono at rate (mixed down, linearly resampled): for short sounds."""
    try:
        src_rate, channels, samples = read_wav_s16(path)
    except WavError as exc:
        raise ChimeError(str(exc)) from None
    if channels > 1:
        samples = array("h", (sum(samples[i:i + channels]) // channels for i in range(0, len(samples), channels)))
    return _pcm(resample(samples, src_rate, rate))


def resample(samples: array, src_rate: int, dst_rate: int) -> array:
    """Linear interpolation: good enough for a chime, never used on speech."""
    if src_rate == dst_rate or not samples:
        return samples
    n_out = max(1, int(len(samples) * dst_rate / src_rate))
    step = src_rate / dst_rate
    last = len(samples) - 1
    out = array("h", bytes(2 * n_out))
    for i in range(n_out):
        pos = i * step
        j = int(pos)
        if j >= last:
            out[i] = samples[last]
        else:
            frac = pos - j
            out[i] = int(samples[j] + (samples[j + 1] - samples[j]) * frac)
    return out


def shape(chunks: Iterable[bytes], *, rate: int, volume: int = 100, chime: Optional[bytes] = None) -> Iterator[bytes]:
    """The stream the player gets: the chime, then the speech, all at volume.

    Nothing is yielded before the first speech chunk exists, so a synthesis that fails
    never leaves a lone chime.
    """
    speech = iter(chunks)
    first = next(speech, None)
    if first is None:
        return
    yield apply_volume(chime or b"", volume) + apply_volume(first, volume)
    for chunk in speech:
        yield apply_volume(chunk, volume)


class Chimes:
    """The configured chime and chimes folder, resolved for one announcement at the play rate."""

    def __init__(self, configured: str, chimes_dir: Optional[Path], rate: int) -> None:
        self.configured = configured
        self.chimes_dir = chimes_dir
        self.rate = rate
        #: whether an announcement that does not say gets a chime: the config's choice, or
        #: the one made at run time (Home Assistant's chime switch, `chime/set`)
        self.enabled = configured != "none"

    def choose(self, choice: "Union[bool, str, None]") -> Optional[bytes]:
        """None: the configured one while enabled, True: the configured one (builtin when it
        is "none"), False: no chime, a name: that chime. Raises ChimeError."""
        if choice is False or (choice is None and not self.enabled):
            return None
        if choice is True or choice is None:
            name = self.configured if self.configured != "none" else "builtin"
        else:
            name = choice
        return load_chime(name, self.chimes_dir, self.rate)
