"""What to synthesize and how: one announcement's text, split into pieces, as PCM audio.

The pieces are synthesized one after another into one continuous stream of s16 mono
frames at the play rate, so callers never see the 1024-byte limit of the API.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from ..coze import CozeError, CozeValidationError, SpeechParams
from ..vocabulary import DEFAULT_PLAY_RATE
from .peers import Broadcast
from .textsplit import split_text


@dataclass(frozen=True)
class SpeechRequest:
    """A validated text and the Coze parameters that voice it, split into API-sized pieces.

    ``offline`` is set when Coze cannot voice it at all (no voice chosen): the offline voice
    speaks it, and that is why."""

    text: str
    params: SpeechParams
    pieces: tuple = ()
    #: set when every member of a scope received the announcement (the fleet synthesizes it once)
    broadcast: Optional[Broadcast] = None
    offline: Optional[CozeError] = None

    @property
    def sample_rate(self) -> int:
        return self.params.sample_rate

    @classmethod
    def from_config(cls, config: Any, text: str, *, voice_id: Optional[str] = None,
                    emotion: Optional[str] = None, emotion_scale: Optional[float] = None,
                    speed: Optional[float] = None, loudness_rate: Optional[int] = None,
                    context_texts: Optional[str] = None, sample_rate: Optional[int] = None,
                    offline: bool = False) -> "SpeechRequest":
        """Config defaults overridden by what one announcement asks for; raises on bad input.
        With no voice chosen it raises too, unless ``offline`` (an offline voice exists): then
        the request is for the offline voice only, so a first run without a voice speaks."""
        coze = config.coze
        rate = sample_rate or config.audio.sample_rate
        if rate == "auto":
            rate = DEFAULT_PLAY_RATE
        voice = voice_id or coze.voice_id
        unvoiced = None
        if not voice:
            unvoiced = CozeValidationError("voice_id", "no voice chosen: set coze.voice_id in the config or pass a "
                                           "voice (`coze-speaker voices` lists them)")
            if not offline:
                raise unvoiced
        params = SpeechParams(
            voice_id=voice or "",
            response_format="pcm",
            sample_rate=rate,
            speed=coze.speed if speed is None else speed,
            emotion=coze.emotion if emotion is None else emotion,
            emotion_scale=coze.emotion_scale if emotion_scale is None else emotion_scale,
            loudness_rate=coze.loudness_rate if loudness_rate is None else loudness_rate,
            context_texts=coze.context_texts if context_texts is None else context_texts,
        )
        return cls.build(text, params, max_text_bytes=config.limits.max_text_bytes, offline=unvoiced)

    @classmethod
    def build(cls, text: str, params: SpeechParams, *, max_text_bytes: int = 8192,
              offline: Optional[CozeError] = None) -> "SpeechRequest":
        if not isinstance(text, str) or not text.strip():
            raise CozeValidationError("text", "is empty")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_text_bytes:
            raise CozeValidationError("text", f"is {size} UTF-8 bytes, the limit is {max_text_bytes} (limits.max_text_bytes)")
        # Without a voice, every other field is still checked: a bad speed is refused either way.
        (replace(params, voice_id="offline") if offline is not None and not params.voice_id else params).validate()
        return cls(text.strip(), params, tuple(split_text(text)), offline=offline)


class RequestBuilder:
    """The configured voice defaults at the play rate: one SpeechRequest per announcement.
    ``offline``: an offline voice exists, so an announcement without a voice is spoken by it."""

    def __init__(self, config: Any, rate: int, *, offline: bool = False) -> None:
        self.config = config
        self.rate = rate
        self.offline = offline
        #: the default voice chosen at run time (Home Assistant's voice select, `voice/set`),
        #: for the announcements that arrive from then on; None: `coze.voice_id`
        self.voice_id: Optional[str] = None

    @property
    def default_voice(self) -> Optional[str]:
        """The voice of an announcement that names none."""
        return self.voice_id or self.config.coze.voice_id

    def build(self, text: str, *, voice_id: Optional[str] = None, emotion: Optional[str] = None,
              emotion_scale: Optional[float] = None, speed: Optional[float] = None,
              loudness_rate: Optional[int] = None, context_texts: Optional[str] = None) -> SpeechRequest:
        """Raises CozeValidationError naming the field, before any call is spent."""
        return SpeechRequest.from_config(self.config, text, voice_id=voice_id or self.voice_id, emotion=emotion,
                                         emotion_scale=emotion_scale, speed=speed, loudness_rate=loudness_rate,
                                         context_texts=context_texts, sample_rate=self.rate, offline=self.offline)
