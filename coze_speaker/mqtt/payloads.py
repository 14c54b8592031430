"""The JSON the daemon publishes: announcement events and the retained state.

Each payload is one small dataclass or one function; the queue's events know nothing of JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

from ..queue.events import AnnouncementEvent

_EVENT_FIELDS = tuple(f.name for f in fields(AnnouncementEvent) if f.name != "announcement")


def _json(data: Dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def event_payload(event: AnnouncementEvent) -> bytes:
    """B/D/event (and the response topic): the event's fields, None left out, ts in ms precision."""
    data = {name: getattr(event, name) for name in _EVENT_FIELDS}
    data["ts"] = round(event.ts, 3)
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
    #: "up", or "down" while Coze's circuit breaker is open; absent without Coze or a breaker
    coze: Optional[str] = None
    #: the default voice (its id) and, when the voice list has it, its name
    voice: Optional[str] = None
    voice_name: Optional[str] = None
    #: whether announcements get the chime unless they say
    chime: Optional[bool] = None
    #: the last error an announcement met: {message, code, field, logid, id, ts, fallback}
    last_error: Optional[dict] = None

    def payload(self) -> bytes:
        return _json(asdict(self))
