"""The offline voice: espeak-ng, used when Coze cannot speak a phrase that is not cached.

A robotic voice is better than a lost "smoke detected". Its audio is never cached, so the
real voice takes over as soon as Coze answers again.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Optional

from ..childenv import child_environment
from ..sound import wav
from ..sound.shaping import resample

log = logging.getLogger(__name__)

ESPEAK_TIMEOUT = 60.0


class FallbackError(Exception):
    """The offline voice could not speak either."""


class EspeakFallback:
    """espeak-ng --stdout, converted to the play rate; the text goes in on stdin."""

    name = "espeak-ng"

    def __init__(self, voice: Optional[str] = None, binary: str = "espeak-ng") -> None:
        self.voice = voice
        self.binary = shutil.which(binary) or binary

    @property
    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def synthesize(self, text: str, rate: int) -> bytes:
        """PCM s16 mono at rate for text; raises FallbackError."""
        cmd = [self.binary, "--stdout"]
        if self.voice:
            cmd += ["-v", self.voice]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True,
                                  timeout=ESPEAK_TIMEOUT, check=False, env=child_environment())
        except FileNotFoundError:
            raise FallbackError(f"{self.binary} is not installed (apt-get install espeak-ng)") from None
        except subprocess.TimeoutExpired:
            raise FallbackError(f"{self.binary} did not finish within {ESPEAK_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise FallbackError(f"{self.binary} failed: {detail[-1] if detail else proc.returncode}")
        src_rate, pcm = parse_streamed_wav(proc.stdout)
        if not pcm:
            raise FallbackError(f"{self.binary} produced no audio")
        return wav.s16_bytes(resample(wav.s16_samples(pcm), src_rate, rate))


def parse_streamed_wav(data: bytes) -> "tuple[int, bytes]":
    """Rate and samples of espeak-ng's s16 mono WAV on a pipe; raises FallbackError."""
    try:
        return wav.parse_streamed_wav(data)
    except wav.WavError as exc:
        raise FallbackError(f"the offline voice's output is unusable ({exc})") from None


def make_fallback(engine: str, voice: Optional[str] = None) -> Optional[EspeakFallback]:
    """The offline voice for ``engine`` (``Config.fallback_engine()``: auto already decided),
    or None for none."""
    if engine != "espeak-ng":
        return None
    fallback = EspeakFallback(voice)
    if not fallback.available:
        log.warning("the offline voice espeak-ng is not installed (apt-get install espeak-ng): phrases Coze "
                    "cannot speak fail")
    return fallback
