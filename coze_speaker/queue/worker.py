"""The announcement queue and the worker that plays it: one at a time, by priority.

Priority then arrival; `interrupt`/`critical` stops what plays; stale items expire instead of
playing late; the same text within `dedup_seconds` is coalesced; the queue is bounded; the
next item is synthesized while the current one plays; quiet hours lower the volume and hold
items below a priority. Every accepted announcement ends in exactly one final event.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .announcement import PRIORITY_RANK, Announcement
from ..coze import CozeError, CozeValidationError
from .journal import Journal
from ..mqtt.messages import AnnouncementEvent
from ..sound.players import PlayerError
from ..sound.shaping import ChimeError
from ..voice.source import AudioSource, OpenSpeech, Speaker
from ..voice.request import SpeechRequest

log = logging.getLogger(__name__)

Emit = Callable[[AnnouncementEvent, Announcement], None]
#: A busy or missing sound device is tried again after 1, 2, 4… (at most 10) seconds.
DEVICE_RETRY_BASE = 1.0
DEVICE_RETRY_MAX = 10.0


@dataclass(frozen=True)
class QueueSettings:
    max_length: int = 100
    ttl: float = 300.0
    dedup_seconds: float = 10.0
    quiet_start: Optional[_dt.time] = None
    quiet_end: Optional[_dt.time] = None
    quiet_volume: int = 30
    quiet_min_priority: str = "high"

    @classmethod
    def from_config(cls, config: Any) -> "QueueSettings":
        q, qh = config.queue, config.quiet_hours
        if qh is None:
            return cls(q.max_length, q.ttl, q.dedup_seconds)
        return cls(q.max_length, q.ttl, q.dedup_seconds, qh.start, qh.end, qh.volume, qh.min_priority)

    def quiet(self, now: _dt.datetime) -> bool:
        if self.quiet_start is None or self.quiet_end is None:
            return False
        t = now.time()
        if self.quiet_start <= self.quiet_end:
            return self.quiet_start <= t < self.quiet_end
        return t >= self.quiet_start or t < self.quiet_end


@dataclass
class _Item:
    announcement: Announcement
    request: SpeechRequest
    chime: Optional[bytes]
    seq: int
    speech: Optional[OpenSpeech] = field(default=None, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def sort_key(self) -> tuple:
        """Urgent first (critical before interrupt), then priority, then arrival."""
        return (not self.announcement.urgent, -self.announcement.rank, self.seq)


class Announcer:
    """Owns the queue and the playing worker; talks to the outside only through `emit`."""

    def __init__(self, source: AudioSource, speaker: Speaker, emit: Emit, *,
                 build_request: Callable[[Announcement], SpeechRequest],
                 chime_for: Callable[[Announcement], Optional[bytes]],
                 settings: QueueSettings = QueueSettings(), volume: int = 100,
                 journal: Optional[Journal] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], _dt.datetime] = _dt.datetime.now) -> None:
        self.source = source
        self.speaker = speaker
        self.emit = emit
        self.build_request = build_request
        self.chime_for = chime_for
        self.settings = settings
        self.volume = volume
        self.journal = journal
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Condition()
        self._queue: list[_Item] = []
        self._seq = itertools.count()
        self._current: Optional[_Item] = None
        self._interrupted: Optional[str] = None
        self._recent: dict = {}
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self.on_state: Optional[Callable[[], None]] = None
        self.last_text: Optional[str] = None

    # -- intake ---------------------------------------------------------------------------

    def submit(self, ann: Announcement) -> bool:
        """Accept an announcement (event `queued`) or refuse it with one final event."""
        now = self._clock()
        if ann.deadline is None:
            ann = _with(ann, deadline=(ann.received or now) + (ann.ttl if ann.ttl is not None else self.settings.ttl))
        try:
            request = self.build_request(ann)
            chime = self.chime_for(ann)
        except (CozeValidationError, ChimeError, ValueError) as exc:
            field_name = getattr(exc, "field", None) or ("chime" if isinstance(exc, ChimeError) else None)
            self._event(ann, "failed", error={"message": str(exc), "code": "invalid", "field": field_name})
            return False
        if ann.expired(now):
            self._event(ann, "expired", reason="ttl")
            return False
        item = _Item(ann, request, chime, next(self._seq))
        dropped: Optional[_Item] = None
        with self._lock:  # held until `queued` is out, so `started` can never overtake it
            dedup = self._dedup_key(ann)
            seen = self._recent.get(dedup)
            pending_ids = {i.announcement.id for i in self._queue}
            if self._current is not None:
                pending_ids.add(self._current.announcement.id)
            if ann.id in pending_ids:
                refusal = "dedup"  # the same message again (a broker redelivery after a restart)
            elif self.settings.dedup_seconds > 0 and seen is not None and now - seen < self.settings.dedup_seconds:
                refusal = "dedup"
            else:
                refusal = None
                self._recent[dedup] = now
                self._forget_old(now)
                self._queue.append(item)
                self._queue.sort(key=_Item.sort_key)
                if len(self._queue) > self.settings.max_length:
                    dropped = self._queue.pop()  # lowest priority, latest arrival
                    if dropped is item:
                        refusal = "queue_full"
                        self._recent.pop(dedup, None)
            if refusal is None:
                self.persist()
                self._event(ann, "queued")
                urgent = ann.urgent and self._current is not None
                if urgent:
                    self._interrupted = ann.id
            self._lock.notify_all()
        if refusal is not None:
            self._event(ann, "dropped", reason=refusal)
            return False
        if dropped is not None:
            self._event(dropped.announcement, "dropped", reason="queue_full")
            self._close(dropped)
        if urgent:
            self._stop_current()
        self._changed()
        return True

    def _dedup_key(self, ann: Announcement) -> tuple:
        return (ann.text, ann.voice, ann.emotion, ann.speed)

    def _forget_old(self, now: float) -> None:
        if len(self._recent) > 256:
            horizon = now - self.settings.dedup_seconds
            self._recent = {k: t for k, t in self._recent.items() if t >= horizon}

    # -- control --------------------------------------------------------------------------

    def stop(self, *, clear: bool = False) -> None:
        """Stop what plays now; with clear, drop everything queued too."""
        cleared: list = []
        with self._lock:
            if clear:
                cleared, self._queue = self._queue, []
            playing = self._current is not None
        if cleared:
            self.persist()
        for item in cleared:
            self._event(item.announcement, "dropped", reason="stopped")
            self._close(item)
        if playing:
            self._stop_current()
        self._changed()

    def _stop_current(self) -> None:
        current = self._current
        if current is not None:
            self.speaker.stop(current.speech, current.cancel)

    def set_volume(self, volume: int) -> None:
        self.volume = max(0, min(100, int(volume)))
        self._changed()

    @property
    def speaking(self) -> bool:
        return self._current is not None

    def queue_length(self) -> int:
        with self._lock:
            return len(self._queue)

    def pending(self) -> list:
        """The announcements waiting, in play order (for a reload or a journal)."""
        with self._lock:
            return [i.announcement for i in self._queue]

    # -- worker ---------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="coze-speaker-player", daemon=True)
        self._thread.start()
        self._sweeper = threading.Thread(target=self._sweep, name="coze-speaker-expiry", daemon=True)
        self._sweeper.start()

    def shutdown(self, timeout: float = 3.0) -> list:
        """Stop the worker; returns the announcements still queued (not played, no event)."""
        with self._lock:
            self._running = False
            left, self._queue = self._queue, []
            self._lock.notify_all()
        for item in left:
            self._close(item)
        self._stop_current()
        if self._thread is not None:
            self._thread.join(timeout)
            self._sweeper.join(timeout)
        return [i.announcement for i in left]

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                kind, fields = self._play(item)
            except Exception:  # never let one announcement kill the worker
                log.exception("announcement %s failed unexpectedly", item.announcement.id)
                kind, fields = "failed", {"error": {"message": "internal error", "code": "internal"}}
            with self._lock:
                self._current = None
            self.persist()  # it leaves the journal before its final event goes out
            self._event(item.announcement, kind, **fields)
            self._changed()

    def _sweep(self) -> None:
        """Expire stale items while something else plays: `expired` comes when it is true."""
        with self._lock:
            while self._running:
                now = self._clock()
                expired = self._take_expired(now)
                if expired:
                    self._lock.release()
                    try:
                        self._expire(expired)
                    finally:
                        self._lock.acquire()
                    continue
                self._lock.wait(timeout=self._wait_time(now))

    def _take_expired(self, now: float) -> list:
        expired = [i for i in self._queue if i.announcement.expired(now)]
        for i in expired:
            self._queue.remove(i)
        return expired

    def _expire(self, items: list) -> None:
        self.persist()
        for i in items:
            self._event(i.announcement, "expired", reason="ttl")
            self._close(i)
        self._changed()

    def _next(self) -> Optional[_Item]:
        with self._lock:
            while self._running:
                now = self._clock()
                quiet = self.settings.quiet(self._wall())
                expired = self._take_expired(now)
                chosen = None
                for i in self._queue:
                    if quiet and PRIORITY_RANK[i.announcement.priority] < PRIORITY_RANK[self.settings.quiet_min_priority]:
                        continue  # held until quiet hours end (or its TTL runs out)
                    chosen = i
                    break
                if chosen is not None:
                    self._queue.remove(chosen)
                    self._current = chosen
                    self._interrupted = None
                if expired or chosen is not None:
                    self._lock.release()
                    try:
                        if expired:
                            self._expire(expired)
                    finally:
                        self._lock.acquire()
                    if chosen is not None:
                        return chosen
                    continue
                self._lock.wait(timeout=self._wait_time(now))
            return None

    def _wait_time(self, now: float) -> float:
        deadlines = [i.announcement.deadline - now for i in self._queue if i.announcement.deadline is not None]
        return max(0.01, min([30.0, *deadlines]))

    def _play(self, item: _Item) -> tuple:
        """Speak one item; returns its final event (kind, fields)."""
        ann = item.announcement
        volume = ann.volume if ann.volume is not None else self.volume
        if self.settings.quiet(self._wall()):
            volume = min(volume, self.settings.quiet_volume)
        self.last_text = ann.text
        self._event(ann, "started")
        self._changed()
        attempt = 0
        while True:
            speech = item.speech or self.source.open(item.request, use_cache=ann.cache, start=False)
            item.speech = speech
            try:
                result = self.speaker.speak(speech, volume=volume, chime=item.chime, repeat=ann.repeat,
                                            cancel=item.cancel, on_first_audio=lambda _t: self._prefetch_next())
                break
            except CozeError as exc:
                return "failed", {"error": exc.event_fields(), "api_calls": speech.api_calls}
            except ChimeError as exc:
                return "failed", {"error": {"message": str(exc), "code": "invalid", "field": "chime"}}
            except PlayerError as exc:
                error = {"message": str(exc), "code": f"audio_{exc.kind}"}
                attempt += 1
                delay = min(DEVICE_RETRY_MAX, DEVICE_RETRY_BASE * 2 ** (attempt - 1))
                if ann.deadline is None or self._clock() + delay > ann.deadline or item.cancel.is_set():
                    return "failed", {"error": error}
                log.warning("%s; trying again in %.0f s (until the announcement expires)", exc, delay)
                item.speech = None  # the next attempt reads it again, from the cache by now
                if item.cancel.wait(delay):
                    return "interrupted", {"reason": "stopped"}
        if not result.played:
            by = self._interrupted
            return "interrupted", {"reason": f"interrupted by {by}" if by else "stopped",
                                   "cached": result.cached, "api_calls": result.api_calls}
        fields: dict = {"cached": result.cached, "api_calls": result.api_calls,
                        "duration_ms": int(result.duration * 1000)}
        if result.first_audio is not None and ann.received:
            fields["latency_ms"] = max(0, int(round((result.first_audio - ann.received) * 1000)))
        if result.fallback is not None:
            fields.update(fallback=True, reason=str(result.fallback), error=result.fallback.event_fields())
        return "finished", fields

    def _prefetch_next(self) -> None:
        """Start synthesizing the item that will play next, while this one plays."""
        with self._lock:
            upcoming = self._queue[0] if self._queue else None
            if upcoming is None or upcoming.speech is not None:
                return
            upcoming.speech = self.source.open(upcoming.request, use_cache=upcoming.announcement.cache)

    def _close(self, item: _Item) -> None:
        item.cancel.set()
        if item.speech is not None:
            item.speech.cancel()

    # -- events ---------------------------------------------------------------------------

    def _event(self, ann: Announcement, kind: str, **fields: Any) -> None:
        event = AnnouncementEvent(id=ann.id, event=kind, text=ann.text, priority=ann.priority,
                                  source=ann.source, **fields)
        try:
            self.emit(event, ann)
        except Exception:
            log.exception("could not publish the %s event of %s", kind, ann.id)

    def persist(self) -> None:
        """Write what is pending (playing and queued) to the journal, if there is one."""
        if self.journal is None:
            return
        with self._lock:
            items = ([self._current] if self._current is not None else []) + list(self._queue)
            snapshot = [i.announcement for i in items]
        self.journal.write(snapshot)

    def _changed(self) -> None:
        if self.on_state is not None:
            try:
                self.on_state()
            except Exception:
                log.exception("could not publish the state")


def _with(ann: Announcement, **changes: Any) -> Announcement:
    import dataclasses
    return dataclasses.replace(ann, **changes)
