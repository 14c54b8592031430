"""What the queue reports: one small dataclass per event, handed to the front end's sink.

The queue never publishes: it hands these to the sink it was given, and the front end
(MQTT today, others later) turns them into its wire format.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

from ..vocabulary import FINAL_EVENTS
from .announcement import Announcement


@dataclass(frozen=True)
class AnnouncementEvent:
    """What happened to one announcement: queued, started, or one final event."""

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
    error: Optional[Dict[str, Any]] = None
    fallback: Optional[bool] = None
    #: `started` of a synchronized broadcast: the planned start (epoch s), how far from it the
    #: first frame was due out of the device (ms, by its own delay), and whether it was on it
    planned_start: Optional[float] = None
    start_error_ms: Optional[float] = None
    synchronized: Optional[bool] = None
    #: the announcement it is about (not part of the wire payload)
    announcement: Optional[Announcement] = field(default=None, compare=False, repr=False)

    @property
    def final(self) -> bool:
        return self.event in FINAL_EVENTS

    @classmethod
    def about(cls, ann: Announcement, event: str, **fields: Any) -> "AnnouncementEvent":
        return cls(id=ann.id, event=event, text=ann.text, priority=ann.priority, source=ann.source,
                   announcement=ann, **fields)


@dataclass(frozen=True)
class StateChanged:
    """Speaking, queue length, volume or the last text changed: time to publish the state."""


QueueEvent = Union[AnnouncementEvent, StateChanged]
#: Where the queue hands its events (the front end); must not block for long.
EventSink = Callable[[QueueEvent], None]
