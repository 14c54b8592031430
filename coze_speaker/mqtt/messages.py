"""The MQTT messages the daemon sends and takes: one small dataclass each, with its topic.

Like rhasspy-hermes: a message knows its topic and its fields, nothing else; the bridge
moves bytes, the announcer decides.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional

from ..vocabulary import FINAL_EVENTS


def _json(data: dict) -> bytes:
    return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Topics:
    """Every topic of one speaker: B = base topic, D = device id."""

    base: str
    device: str
    groups: tuple = ()
    discovery_prefix: str = "homeassistant"

    @property
    def say(self) -> str:
        return f"{self.base}/{self.device}/say"

    @property
    def all_say(self) -> str:
        return f"{self.base}/all/say"

    def group_say(self, group: str) -> str:
        return f"{self.base}/group/{group}/say"

    @property
    def say_topics(self) -> tuple:
        return (self.say, self.all_say, *(self.group_say(g) for g in self.groups))

    @property
    def stop(self) -> str:
        return f"{self.base}/{self.device}/stop"

    @property
    def volume_set(self) -> str:
        return f"{self.base}/{self.device}/volume/set"

    @property
    def volume(self) -> str:
        return f"{self.base}/{self.device}/volume"

    @property
    def availability(self) -> str:
        return f"{self.base}/{self.device}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/{self.device}/state"

    @property
    def event(self) -> str:
        return f"{self.base}/{self.device}/event"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"


@dataclass(frozen=True)
class AnnouncementEvent:
    """What happened to one announcement, on B/D/event (and its response topic if final)."""

    id: str
    event: str
    text: str
    ts: float = field(default_factory=time.time)
    priority: Optional[str] = None
    source: Optional[str] = None
    cached: Optional[bool] = None
    latency_ms: Optional[int] = None
    duration_ms: Optional[int] = None
    api_calls: Optional[int] = None
    reason: Optional[str] = None
    error: Optional[dict] = None
    fallback: Optional[bool] = None

    @property
    def final(self) -> bool:
        return self.event in FINAL_EVENTS

    def payload(self) -> bytes:
        data = asdict(self)
        data["ts"] = round(self.ts, 3)
        return _json(data)


@dataclass(frozen=True)
class SpeakerState:
    """The retained summary on B/D/state."""

    state: str
    volume: int
    queue: int
    cache: dict
    version: str
    last: Optional[str] = None

    def payload(self) -> bytes:
        return _json(asdict(self))


AVAILABLE = b"online"
NOT_AVAILABLE = b"offline"


# -- Rhasspy / Hermes ---------------------------------------------------------------------

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
