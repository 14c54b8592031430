"""The queue's rules as plain code: order, priority, dedup, overflow, expiry, quiet hours.

No threads, no I/O, an injected clock: the worker holds the lock and asks the policy what
to do, and the rules are unit-tested in milliseconds (tests/test_queue_policy.py).

Every step of intake costs O(log n) in the queue's length, so a burst of thousands stays
linear: the waiting list is kept sorted by binary insertion (no sort per message), ids are
in a dict (no set built per message), and deadlines are in a heap (the sweeper does not
scan the queue each time it wakes).
"""

from __future__ import annotations

import bisect
import datetime as _dt
import heapq
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..vocabulary import PRIORITY_RANK
from .announcement import Announcement

#: Admission reason for the same announcement again (its id is pending, or a broker
#: redelivery of one that ended): coalesced silently, the first copy's events stand.
DUPLICATE = "duplicate"
#: At most this many ended ids are remembered for recognizing redeliveries.
MAX_ENDED_IDS = 10000


@dataclass(frozen=True)
class QueueSettings:
    """The queue's part of the config (queue: and quiet_hours:)."""

    max_length: int = 100
    ttl: float = 300.0
    dedup_seconds: float = 10.0
    quiet_start: Optional[_dt.time] = None
    quiet_end: Optional[_dt.time] = None
    quiet_volume: int = 30
    quiet_min_priority: str = "high"
    resume_interrupted: bool = True

    @classmethod
    def from_config(cls, config: Any) -> "QueueSettings":
        q, qh = config.queue, config.quiet_hours
        if qh is None:
            return cls(q.max_length, q.ttl, q.dedup_seconds, resume_interrupted=q.resume_interrupted)
        return cls(q.max_length, q.ttl, q.dedup_seconds, qh.start, qh.end, qh.volume, qh.min_priority,
                   resume_interrupted=q.resume_interrupted)

    def quiet(self, now: _dt.datetime) -> bool:
        if self.quiet_start is None or self.quiet_end is None:
            return False
        t = now.time()
        if self.quiet_start <= self.quiet_end:
            return self.quiet_start <= t < self.quiet_end
        return t >= self.quiet_start or t < self.quiet_end


@dataclass(frozen=True)
class Admission:
    """What offering an announcement did: accepted, or refused with a reason; maybe it pushed
    out the lowest one (`evicted`), maybe it must interrupt what plays."""

    accepted: bool
    reason: Optional[str] = None
    evicted: Optional[Announcement] = None
    interrupt: bool = False


@dataclass
class _Entry:
    announcement: Announcement
    seq: int
    #: cut off by an urgent one: it had the floor, so it goes on before the others wait
    resumed: bool = False
    #: still waiting (False once played, expired, evicted or cleared: its heap slot is stale)
    waiting: bool = True

    def sort_key(self) -> Tuple[bool, bool, int, int]:
        """Urgent first (critical before interrupt), then a resumed one, then priority, then arrival."""
        return (not self.announcement.urgent, not self.resumed, -self.announcement.rank, self.seq)


@dataclass
class QueuePolicy:
    """The waiting announcements and the one playing; not thread-safe (the worker locks)."""

    settings: QueueSettings = field(default_factory=QueueSettings)
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], _dt.datetime] = _dt.datetime.now

    def __post_init__(self) -> None:
        self._waiting: List[_Entry] = []  # in play order
        self._keys: List[Tuple[bool, bool, int, int]] = []  # their sort keys, for binary insertion
        self._ids: Dict[str, _Entry] = {}  # the waiting ones by id
        self._deadlines: List[Tuple[float, int, _Entry]] = []  # a heap; entries no longer waiting are skipped
        self._seq = itertools.count()
        #: pending (waiting or playing) ids -> (dedup key, when accepted)
        self._pending: Dict[str, Tuple[tuple, float]] = {}
        #: dedup key -> {pending id: when accepted}
        self._copies: Dict[tuple, Dict[str, float]] = {}
        #: ids that ended -> when, oldest first (to recognize a broker redelivery)
        self._ended: "OrderedDict[str, float]" = OrderedDict()
        self.playing: Optional[Announcement] = None

    # -- intake ---------------------------------------------------------------------------

    def with_deadline(self, ann: Announcement) -> Announcement:
        """The announcement with its deadline set: its own ttl, or the configured one."""
        if ann.deadline is not None:
            return ann
        ttl = ann.ttl if ann.ttl is not None else self.settings.ttl
        return ann.replace(deadline=(ann.received or self.clock()) + ttl)

    def offer(self, ann: Announcement, *, redelivery: bool = False, coalesce: bool = True) -> Admission:
        """Queue an announcement (its deadline already set) or say why not.

        An id names one announcement: the same id while it is pending, or a broker
        redelivery (`redelivery`: the MQTT DUP flag) of one that ended less than `ttl` ago
        (the broker keeps an unacknowledged message that long: the session expiry), is
        refused as DUPLICATE. A copy of the same text (same voice, emotion, speed) that
        arrives within `dedup_seconds` while the first is still queued or playing is
        refused as "dedup"; once the first has ended, the text is spoken again.
        `coalesce=False` (announcements restored from the journal or handed over by a
        reload: accepted once already) skips that text check."""
        now = self.clock()
        if ann.expired(now):
            return Admission(False, "expired")
        if ann.id in self._pending or (redelivery and self._ended_recently(ann.id, now)):
            return Admission(False, DUPLICATE)
        key = _dedup_key(ann)
        window = self.settings.dedup_seconds
        if coalesce and window > 0 and any(now - t < window for t in self._copies.get(key, {}).values()):
            return Admission(False, "dedup")
        self._insert(ann)
        evicted = None
        if len(self._waiting) > self.settings.max_length:
            evicted = self._remove(len(self._waiting) - 1).announcement  # lowest priority, latest arrival
            if evicted is ann:
                return Admission(False, "queue_full")
            self._end(evicted)
        self._track(ann, now)
        return Admission(True, evicted=evicted, interrupt=ann.urgent and self.playing is not None)

    def _track(self, ann: Announcement, now: float) -> None:
        if ann.id in self._pending:
            return
        key = _dedup_key(ann)
        self._pending[ann.id] = (key, now)
        self._copies.setdefault(key, {})[ann.id] = now

    def _end(self, ann: Announcement) -> None:
        """It left the queue for good: no longer pending; its id is remembered for a while."""
        tracked = self._pending.pop(ann.id, None)
        if tracked is not None:
            copies = self._copies.get(tracked[0])
            if copies is not None:
                copies.pop(ann.id, None)
                if not copies:
                    del self._copies[tracked[0]]
        now = self.clock()
        self._ended.pop(ann.id, None)
        self._ended[ann.id] = now
        horizon = now - self.settings.ttl
        while self._ended and (len(self._ended) > MAX_ENDED_IDS or next(iter(self._ended.values())) < horizon):
            self._ended.popitem(last=False)

    def _ended_recently(self, ann_id: str, now: float) -> bool:
        ended = self._ended.get(ann_id)
        return ended is not None and now - ended <= self.settings.ttl

    def _insert(self, ann: Announcement, *, resumed: bool = False) -> _Entry:
        """Put an announcement in its place in the waiting list (binary search, no sort)."""
        entry = _Entry(ann, next(self._seq), resumed=resumed)
        key = entry.sort_key()
        at = bisect.bisect_right(self._keys, key)
        self._keys.insert(at, key)
        self._waiting.insert(at, entry)
        self._ids[ann.id] = entry
        if ann.deadline is not None:
            heapq.heappush(self._deadlines, (ann.deadline, entry.seq, entry))
            self._tidy_deadlines()
        return entry

    def _remove(self, index: int) -> _Entry:
        """Take the entry at index out of the waiting list (its heap slot goes stale)."""
        entry = self._waiting.pop(index)
        del self._keys[index]
        entry.waiting = False
        if self._ids.get(entry.announcement.id) is entry:
            del self._ids[entry.announcement.id]
        return entry

    def _tidy_deadlines(self) -> None:
        """Rebuild the deadline heap when stale slots outnumber the waiting ones (amortized O(1))."""
        if len(self._deadlines) > 2 * len(self._waiting) + 64:
            self._deadlines = [(e.announcement.deadline, e.seq, e) for e in self._waiting
                               if e.announcement.deadline is not None]
            heapq.heapify(self._deadlines)

    # -- output ---------------------------------------------------------------------------

    def take_expired(self) -> List[Announcement]:
        """Remove and return the waiting announcements whose deadline has passed."""
        now = self.clock()
        expired: List[_Entry] = []
        heap = self._deadlines
        while heap and (not heap[0][2].waiting or heap[0][2].announcement.expired(now)):
            entry = heapq.heappop(heap)[2]
            if entry.waiting:
                expired.append(entry)
        if expired:
            gone = {id(e) for e in expired}
            for entry in expired:
                entry.waiting = False
                if self._ids.get(entry.announcement.id) is entry:
                    del self._ids[entry.announcement.id]
            kept = [(k, e) for k, e in zip(self._keys, self._waiting) if id(e) not in gone]
            self._keys = [k for k, _ in kept]
            self._waiting = [e for _, e in kept]
            for entry in expired:
                self._end(entry.announcement)
        return [e.announcement for e in sorted(expired, key=_Entry.sort_key)]

    def next_to_play(self, prefer: Optional[str] = None) -> Optional[Announcement]:
        """The first waiting announcement not held by quiet hours (or the one `prefer` names,
        if it is waiting: ready audio going ahead of a slow miss); it becomes `playing`."""
        if self.playing is not None:
            return None
        quiet = self.quiet()
        preferred = self._ids.get(prefer) if prefer is not None else None
        if preferred is not None and not (quiet and preferred.announcement.rank
                                          < PRIORITY_RANK[self.settings.quiet_min_priority]):
            self._remove(self._waiting.index(preferred))
            self.playing = preferred.announcement
            return preferred.announcement
        for index, entry in enumerate(self._waiting):
            if quiet and entry.announcement.rank < PRIORITY_RANK[self.settings.quiet_min_priority]:
                continue  # held until quiet hours end (or its TTL runs out)
            self._remove(index)
            self.playing = entry.announcement
            return entry.announcement
        return None

    def peek(self) -> Optional[Announcement]:
        """What would play next (for synthesizing ahead)."""
        return self._waiting[0].announcement if self._waiting else None

    def done(self) -> Optional[Announcement]:
        """The playing announcement has ended."""
        ended, self.playing = self.playing, None
        if ended is not None:
            self._end(ended)
        return ended

    def requeue(self, ann: Announcement, *, resume: bool = False) -> None:
        """Put an announcement back (it keeps its deadline): in arrival order, or, to `resume`
        one an urgent announcement cut off, right after the urgent ones."""
        if self.playing is not None and self.playing.id == ann.id:
            self.playing = None
        self._insert(ann, resumed=resume)
        self._track(ann, self.clock())

    def clear(self) -> List[Announcement]:
        """Remove every waiting announcement."""
        cleared = [e.announcement for e in self._waiting]
        for entry in self._waiting:
            entry.waiting = False
        self._waiting, self._keys, self._ids, self._deadlines = [], [], {}, []
        for ann in cleared:
            self._end(ann)
        return cleared

    def waiting(self, limit: Optional[int] = None) -> List[Announcement]:
        """The waiting announcements in play order (the first `limit` of them)."""
        return [e.announcement for e in self._waiting[:limit]]

    def pending(self) -> List[Announcement]:
        """What the journal must keep: the playing one first, then the waiting ones."""
        return ([self.playing] if self.playing is not None else []) + self.waiting()

    def __len__(self) -> int:
        return len(self._waiting)

    def next_deadline_in(self, cap: float = 30.0) -> float:
        """Seconds until the next waiting deadline (at least 10 ms, at most cap)."""
        heap = self._deadlines
        while heap and not heap[0][2].waiting:
            heapq.heappop(heap)
        if not heap:
            return cap
        return max(0.01, min(cap, heap[0][0] - self.clock()))

    # -- quiet hours ----------------------------------------------------------------------

    def quiet(self) -> bool:
        return self.settings.quiet(self.wall_clock())

    def volume_for(self, ann: Announcement, default: int) -> int:
        """The announcement's volume (or the default), capped during quiet hours."""
        volume = ann.volume if ann.volume is not None else default
        return min(volume, self.settings.quiet_volume) if self.quiet() else volume


def _dedup_key(ann: Announcement) -> tuple:
    return (ann.text, ann.voice, ann.emotion, ann.speed)
