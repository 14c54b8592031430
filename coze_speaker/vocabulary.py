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
#: Where an announcement came from (an event's `source`): the speaker's say topic, the all or a
#: group topic, Hermes.
SOURCES = ("mqtt", "all", "group", "hermes")
#: Priority rank: higher plays first.
PRIORITY_RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
#: Coze accepts at most this many UTF-8 bytes of `input` per speech request.
MAX_INPUT_BYTES = 1024
#: Once Coze's audio flows it must arrive at least this fast (x real time) or the attempt is
#: cut off and retried: slower than half speed is a stall, not a slow network.
MIN_STREAM_SPEED = 0.5
#: Bytes per second of audio assumed for compressed formats (mp3, ogg_opus) when judging that
#: speed: 16 kbit/s, below any speech bitrate, so the estimate is never too strict.
COMPRESSED_BYTES_PER_SECOND = 2000
#: The longest Retry-After honoured; a longer wait fails at once with `rate_limited`.
MAX_RETRY_AFTER = 60.0
#: `audio.backend` choices: auto picks alsa (pyalsaaudio) when importable, else aplay when
#: installed, else simpleaudio.
AUDIO_BACKENDS = ("auto", "alsa", "aplay", "simpleaudio", "null")
#: Coze's circuit breaker doubles its cool-down after each failed check up to this (seconds),
#: or up to `coze.breaker_cooldown` when that is longer.
BREAKER_MAX_COOLDOWN = 120.0
#: `coze.transport` choices: http (POST /v1/audio/speech), websocket (Coze's streaming speech
#: API) or auto (the WebSocket API for what is played on a miss, HTTP when it cannot be used).
TRANSPORTS = ("http", "websocket", "auto")
#: After the WebSocket endpoint could not be reached (or refused the upgrade), `auto` speaks
#: over HTTP for this many seconds before it tries the WebSocket API again.
WS_RETRY_AFTER = 300.0
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
#: Speeds the WebSocket API can express (its speech_rate -50..100 is 0.5x..2x).
WS_SPEED = Range(0.5, 2.0)
#: Emotion intensity (Coze `emotion_scale`).
EMOTION_SCALE = Range(1, 5)
#: Loudness (Coze `loudness_rate`), whole numbers.
LOUDNESS = Range(-50, 100)
#: Playback volume in percent, whole numbers.
VOLUME = Range(0, 100)
#: How many times one announcement may be played in a row.
REPEAT = Range(1, 5)
