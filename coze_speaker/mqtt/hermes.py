"""Rhasspy / Hermes TTS messages: one small dataclass each, with its topic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Optional


@dataclass(frozen=True)
class HermesSay:
    """hermes/tts/say: {text, siteId, id, lang, volume 0..1, sessionId}."""

    TOPIC: ClassVar[str] = "hermes/tts/say"
    text: str
    site_id: str = "default"
    id: Optional[str] = None
    lang: Optional[str] = None
    volume: Optional[float] = None
    session_id: Optional[str] = None

    @classmethod
    def from_payload(cls, payload: bytes) -> "HermesSay":
        """Raises ValueError with the field for a payload that is not a valid Hermes say."""
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError("payload: not a JSON object") from None
        if not isinstance(data, dict):
            raise ValueError("payload: not a JSON object")
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text: must be a non-empty string")
        volume = data.get("volume")
        if volume is not None and (isinstance(volume, bool) or not isinstance(volume, (int, float))
                                   or not 0 <= volume <= 1):
            raise ValueError("volume: must be a number from 0 to 1")

        def opt(key: str) -> Optional[str]:
            value = data.get(key)
            return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None

        return cls(text=text, site_id=opt("siteId") or "default", id=opt("id"), lang=opt("lang"),
                   volume=volume, session_id=opt("sessionId"))


@dataclass(frozen=True)
class HermesSayFinished:
    """hermes/tts/sayFinished: {id, siteId, sessionId}."""

    TOPIC: ClassVar[str] = "hermes/tts/sayFinished"
    id: Optional[str]
    site_id: str
    session_id: Optional[str] = None

    def payload(self) -> bytes:
        return json.dumps({"id": self.id, "siteId": self.site_id, "sessionId": self.session_id}).encode()


@dataclass(frozen=True)
class HermesError:
    """hermes/error/tts: {error, context, siteId, sessionId}."""

    TOPIC: ClassVar[str] = "hermes/error/tts"
    error: str
    site_id: str
    context: Optional[str] = None
    session_id: Optional[str] = None

    def payload(self) -> bytes:
        return json.dumps({"error": self.error, "context": self.context, "siteId": self.site_id,
                           "sessionId": self.session_id}).encode()
