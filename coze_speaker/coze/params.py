"""What a request to Coze may hold, checked locally: every refusal here is a call not paid for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..vocabulary import EMOTION_SCALE, EMOTIONS, LOUDNESS, MAX_INPUT_BYTES, SAMPLE_RATES, SPEED, Range
from .errors import CozeValidationError

MAX_CLONE_BYTES = 10 * 1024 * 1024
MAX_VOICE_NAME_BYTES = 128
RESPONSE_FORMATS = ("wav", "pcm", "ogg_opus", "mp3")
CLONE_FORMATS = ("wav", "mp3", "ogg", "m4a", "aac", "pcm")
CLONE_LANGUAGES = ("zh", "en", "ja", "es", "id", "pt")
MODEL_TYPES = ("big", "small")
VOICE_STATES = ("init", "cloned", "all")


@dataclass(frozen=True)
class SpeechParams:
    """Everything sent to /v1/audio/speech besides the text; also what the cache keys on."""

    voice_id: str
    response_format: str = "pcm"
    sample_rate: int = 24000
    speed: float = 1.0
    emotion: Optional[str] = None
    emotion_scale: Optional[float] = None
    loudness_rate: int = 0
    context_texts: Optional[str] = None

    def validate(self) -> None:
        """Raise CozeValidationError naming the first field Coze would reject."""
        _check_str("voice_id", self.voice_id)
        if self.response_format not in RESPONSE_FORMATS:
            raise CozeValidationError("response_format", f"{self.response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}")
        if not_int(self.sample_rate) or self.sample_rate not in SAMPLE_RATES:
            raise CozeValidationError("sample_rate", f"{self.sample_rate!r} is not one of {', '.join(map(str, SAMPLE_RATES))}")
        _check_range("speed", self.speed, SPEED)
        if self.emotion is not None and self.emotion not in EMOTIONS:
            raise CozeValidationError("emotion", f"{self.emotion!r} is not one of {', '.join(EMOTIONS)}")
        if self.emotion_scale is not None:
            _check_range("emotion_scale", self.emotion_scale, EMOTION_SCALE)
        if not_int(self.loudness_rate):
            raise CozeValidationError("loudness_rate", f"expected an integer, got {self.loudness_rate!r}")
        _check_range("loudness_rate", self.loudness_rate, LOUDNESS)
        if self.context_texts is not None:
            _check_str("context_texts", self.context_texts)

    def body(self, text: str) -> dict:
        """The JSON body for one request; optional fields Coze defaults are left out."""
        body: dict[str, Any] = {
            "input": text,
            "voice_id": self.voice_id,
            "response_format": self.response_format,
            "sample_rate": self.sample_rate,
        }
        if self.speed != 1.0:
            body["speed"] = self.speed
        if self.emotion is not None:
            body["emotion"] = self.emotion
        if self.emotion_scale is not None:
            body["emotion_scale"] = self.emotion_scale
        if self.loudness_rate:
            body["loudness_rate"] = self.loudness_rate
        if self.context_texts:
            body["context_texts"] = self.context_texts
        return body


def validate_input(text: Any) -> None:
    """Raise CozeValidationError unless text is a non-empty string of at most MAX_INPUT_BYTES UTF-8 bytes."""
    if not isinstance(text, str):
        raise CozeValidationError("input", f"expected text, got {type(text).__name__}")
    if not text.strip():
        raise CozeValidationError("input", "is empty")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_BYTES:
        raise CozeValidationError("input", f"is {size} UTF-8 bytes, the limit is {MAX_INPUT_BYTES} (split longer text)")


def not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _check_range(field: str, value: Any, allowed: Range) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise CozeValidationError(field, f"expected a number, got {value!r}")
    if value not in allowed:
        raise CozeValidationError(field, f"{value!r} is outside {allowed.low:g}..{allowed.high:g}")


def _check_str(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise CozeValidationError(field, "must be a non-empty string")


def clone_fields(path: Path, name: Any, audio_format: str, language: Optional[str],
                  voice_id: Optional[str], text: Optional[str], preview_text: Optional[str],
                  space_id: Optional[str]) -> dict:
    """Check a clone request locally and build its form fields."""
    if not path.is_file():
        raise CozeValidationError("file", f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CozeValidationError("file", f"{path} is empty")
    if size > MAX_CLONE_BYTES:
        raise CozeValidationError("file", f"{path} is {size / 1048576:.1f} MB; Coze accepts at most 10 MB")
    if audio_format not in CLONE_FORMATS:
        raise CozeValidationError("audio_format", f"{audio_format or '(none)'!r} is not one of {', '.join(CLONE_FORMATS)}")
    if not isinstance(name, str) or not name.strip():
        raise CozeValidationError("voice_name", "must be a non-empty string")
    if len(name.encode("utf-8")) > MAX_VOICE_NAME_BYTES:
        raise CozeValidationError("voice_name", f"is longer than {MAX_VOICE_NAME_BYTES} UTF-8 bytes")
    if language is not None and language not in CLONE_LANGUAGES:
        raise CozeValidationError("language", f"{language!r} is not one of {', '.join(CLONE_LANGUAGES)}")
    for field, value in (("text", text), ("preview_text", preview_text)):
        if value is not None and len(value.encode("utf-8")) > MAX_INPUT_BYTES:
            raise CozeValidationError(field, f"is longer than {MAX_INPUT_BYTES} UTF-8 bytes")
    fields = {"voice_name": name, "audio_format": audio_format, "language": language,
              "voice_id": voice_id, "text": text, "preview_text": preview_text, "space_id": space_id}
    return {k: v for k, v in fields.items() if v is not None}
