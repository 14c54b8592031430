"""The words every stage shares: emotions, sample rates, priorities, value ranges and limits.

Each value lives here once; the config checks, the say payload parser, the Coze client and
the CLI all read it from this module, so a range cannot drift between them.
"""

from __future__ import annotations

from typing import NamedTuple, Union

#: Sample rates Coze synthesizes (and the ones `audio.sample_rate` accepts).
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
#: The play rate when a device does not say what it plays natively (HDMI, USB dmix, PipeWire).
DEFAULT_PLAY_RATE = 48000
#: Emotions of Coze's multi-emotion voices.
EMOTIONS = ("happy", "sad", "angry", "surprised", "fear", "hate", "excited", "coldness", "neutral")
#: Announcement priorities, lowest first.
PRIORITIES = ("low", "normal", "high", "critical")
#: Priority rank: higher plays first.
PRIORITY_RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
#: Coze accepts at most this many UTF-8 bytes of `input` per speech request.
MAX_INPUT_BYTES = 1024
#: `audio.backend` choices: auto picks alsa (pyalsaaudio) when importable, else aplay when
#: installed, else simpleaudio.
AUDIO_BACKENDS = ("auto", "alsa", "aplay", "simpleaudio", "null")
#: Events that end an announcement (exactly one per accepted announcement).
FINAL_EVENTS = frozenset({"finished", "failed", "expired", "dropped", "interrupted"})


class Range(NamedTuple):
    """An inclusive numeric range, as Coze's API documents it."""

    low: float
    high: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def shown(self) -> str:
        return f"{_fmt(self.low)} to {_fmt(self.high)}"


def _fmt(n: Union[int, float]) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


#: Speaking rate (Coze `speed`).
SPEED = Range(0.2, 3.0)
#: Emotion intensity (Coze `emotion_scale`).
EMOTION_SCALE = Range(1, 5)
#: Loudness (Coze `loudness_rate`), whole numbers.
LOUDNESS = Range(-50, 100)
#: Playback volume in percent, whole numbers.
VOLUME = Range(0, 100)
#: How many times one announcement may be played in a row.
REPEAT = Range(1, 5)
