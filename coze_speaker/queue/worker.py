"""The worker: the one owner of each announcement's life, from `queued` to its final event.

It holds the lock around the queue policy, gives every announcement one cancel token (with
its deadline) that synthesis and playback both obey, plays one at a time, synthesizes the
next one while the current one plays, owns the retries of a busy or missing sound device,
and hands every event to the sink it was given. It never calls up into the daemon.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..cancel import CancelToken
from ..cue import StartCue, when_started
from ..errors import SpeakerError, error_fields
from ..sound.player import PlayerError
from ..sound.shaping import Chimes
from ..sound.speaker import PlayResult, Speaker
from ..voice.request import RequestBuilder, SpeechRequest
from ..voice.source import MAX_AHEAD_BYTES, AudioSource, OpenSpeech
from .announcement import Announcement, broadcast_of
from .deadline import EXPIRED, DeadlineWatch
from .events import AnnouncementEvent, EventSink, StateChanged
from .journal import Journal
from .policy import DUPLICATE, QueuePolicy, QueueSettings
from .state import StateStore, save_choice

log = logging.getLogger(__name__)

#: A busy or missing sound device is tried again after 1, 2, 4… (at most 10) seconds.
DEVICE_RETRY_BASE = 1.0
DEVICE_RETRY_MAX = 10.0
#: Cancel reasons that are not the announcement's fault: it stays in the journal.
SHUTDOWN = "shutdown"
#: Cancel reason prefix of an urgent announcement cutting off the one that plays.
INTERRUPTED_BY = "interrupted by "
#: The worker counts as stuck (the systemd watchdog stops trusting it) when it holds an
#: announcement and nothing moved for this long: no audio chunk, no retry, and (before the
#: first sound) this long past the announcement's deadline, which should have ended it.
STALL_SECONDS = 60.0
#: A miss with no audio after this long lets announcements behind it whose audio is ready (in
#: the cache; not of lower priority) go first, so a hung Coze never holds up a cached phrase.
OVERTAKE_AFTER = 2.0
#: How many waiting announcements are looked at for ready audio.
OVERTAKE_LOOKAHEAD = 8


@dataclass
class _Item:
    """What the worker keeps beside an announcement while it is pending."""

    request: SpeechRequest
    chime: Optional[bytes]
    token: CancelToken
    speech: Optional[OpenSpeech] = field(default=None, repr=False)
    #: False once a `stop` reached it: an interrupted announcement is then not played again
    resume: bool = True
    #: seconds it already waited for its first audio (a slow miss that let others go first)
    waited: float = 0.0
    #: a broadcast whose start the fleet synchronizes: when its device starts
    cue: Optional[StartCue] = None


class Announcer:
    """Owns the queue and the playing worker; talks to the outside only through `sink`."""

    def __init__(self, source: AudioSource, speaker: Speaker, sink: EventSink, *,
                 requests: RequestBuilder, chimes: Chimes,
                 settings: QueueSettings = QueueSettings(), volume: int = 100,
                 journal: Optional[Journal] = None, volume_store: Optional[StateStore] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], _dt.datetime] = _dt.datetime.now) -> None:
        self.source = source
        self.speaker = speaker
        self.sink = sink
        self.requests = requests
        self.chimes = chimes
        self.volume = volume
        self.journal = journal
        self.volume_store = volume_store
        self._clock = clock
        self.policy = QueuePolicy(settings, clock, wall_clock)
        self._lock = threading.Condition()
        self._items: Dict[str, _Item] = {}
        self._running = False
        self._prefetch_wanted = False
        self._draining = False
        #: ids of ready announcements to play before a slow miss, in order
        self._overtakers: List[str] = []
        #: monotonic time after which the worker counts as stuck; None while idle
        self._stuck_after: Optional[float] = None
        #: monotonic time the worker started or last finished an announcement (idle housekeeping)
        self.last_active = time.monotonic()
        self._deadline = DeadlineWatch()
        self._thread: Optional[threading.Thread] = None
        self._keeper: Optional[threading.Thread] = None
        self._unwatch: Callable[[], None] = lambda: None

    @property
    def settings(self) -> QueueSettings:
        return self.policy.settings

    # -- intake ---------------------------------------------------------------------------

    def submit(self, ann: Announcement, *, redelivery: bool = False, restored: bool = False) -> bool:
        """Accept an announcement (event `queued`) or refuse it with one final event; the same
        announcement again (its id pending, or a broker `redelivery` of one that ended) is
        coalesced without an event. `restored`: accepted before (journal, reload), so it is
        not coalesced with a pending copy of its text and gets no second `queued`."""
        ann = self.policy.with_deadline(ann)
        try:
            request = self.requests.build(ann.text, voice_id=ann.voice, emotion=ann.emotion,
                                          emotion_scale=ann.emotion_scale, speed=ann.speed,
                                          loudness_rate=ann.loudness, context_texts=ann.context)
            broadcast = broadcast_of(ann)
            if broadcast is not None:
                request = dataclasses.replace(request, broadcast=broadcast)
            chime = self.chimes.choose(ann.chime)
        except SpeakerError as exc:
            self._event(ann, "failed", error=error_fields(exc))
            return False
        if ann.expired(self._clock()):
            self._event(ann, "expired", reason="ttl")
            return False
        token = CancelToken(ann.deadline, clock=self._clock)
        item = _Item(request, chime, token, cue=self.source.start_cue(request, token, use_cache=ann.cache))
        evicted_item: Optional[_Item] = None
        with self._lock:  # held until `queued` is out, so `started` can never overtake it
            admission = self.policy.offer(ann, redelivery=redelivery, coalesce=not restored)
            if admission.accepted:
                self._items[ann.id] = item
                if admission.evicted is not None:
                    evicted_item = self._items.pop(admission.evicted.id, None)
                self._journal(added=ann, ended=[admission.evicted] if admission.evicted is not None else [])
                if not restored:  # a restored one had its `queued` from the instance that accepted it
                    self._event(ann, "queued")
                playing = self.policy.playing
                if admission.interrupt and playing is not None:
                    self._items[playing.id].token.cancel(INTERRUPTED_BY + ann.id)
            self._lock.notify_all()
        if admission.reason == DUPLICATE:
            log.debug("announcement %s arrived again (a redelivery); coalesced", ann.id)
            return False
        if not admission.accepted:
            self._event(ann, "expired" if admission.reason == "expired" else "dropped",
                        reason="ttl" if admission.reason == "expired" else admission.reason)
            return False
        if admission.evicted is not None:
            self._event(admission.evicted, "dropped", reason="queue_full")
            if evicted_item is not None:
                self._close(evicted_item)
        self._changed()
        return True

    # -- control --------------------------------------------------------------------------

    def stop(self, *, clear: bool = False) -> None:
        """Stop what plays now; with clear, drop everything queued too."""
        with self._lock:
            cleared = self.policy.clear() if clear else []
            items = [self._items.pop(a.id) for a in cleared if a.id in self._items]
            playing = self.policy.playing
            current = self._items.get(playing.id) if playing is not None else None
            token = current.token if current is not None else None
            if current is not None:
                current.resume = False  # an explicit stop: never played again
            if cleared:
                self._journal(ended=cleared)
        for ann in cleared:
            self._event(ann, "dropped", reason="stopped")
        for item in items:
            self._close(item)
        if token is not None:
            token.cancel("stopped")
        self._changed()

    def set_volume(self, volume: int) -> None:
        """The default volume from now on, kept across restarts."""
        self.volume = max(0, min(100, int(volume)))
        if self.volume_store is not None:
            self.volume_store.save("volume", self.volume)
        self._changed()

    def set_voice(self, voice_id: str) -> None:
        """The default voice for announcements that arrive from now on (those already queued
        keep theirs), kept across restarts until `coze.voice_id` is changed in the config."""
        configured = self.requests.config.coze.voice_id
        self.requests.voice_id = None if voice_id == configured else voice_id
        save_choice(self.volume_store, "voice", voice_id, configured)
        self._changed()

    @property
    def default_voice(self) -> Optional[str]:
        return self.requests.default_voice

    def set_chime(self, on: bool) -> None:
        """Whether announcements that arrive from now on get the chime (unless they say),
        kept across restarts until `audio.chime` is changed in the config."""
        self.chimes.enabled = bool(on)
        save_choice(self.volume_store, "chime", bool(on), self.chimes.configured)
        self._changed()

    @property
    def chime(self) -> bool:
        return self.chimes.enabled

    @property
    def speaking(self) -> bool:
        return self.policy.playing is not None

    @property
    def coze_down(self) -> Optional[bool]:
        """Whether Coze counts as down (its circuit breaker is open); None without a breaker."""
        breaker = self.source.breaker
        return None if breaker is None else breaker.down

    def queue_length(self) -> int:
        with self._lock:
            return len(self.policy)

    def pending(self) -> List[Announcement]:
        """The announcements waiting, in play order."""
        with self._lock:
            return self.policy.waiting()

    # -- worker ---------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        if self.source.breaker is not None:  # Coze going down or coming back changes the state
            self._unwatch = self.source.breaker.on_change(self._changed)
        self._thread = threading.Thread(target=self._run, name="coze-speaker-player", daemon=True)
        self._thread.start()
        self._keeper = threading.Thread(target=self._keep, name="coze-speaker-queue", daemon=True)
        self._keeper.start()

    def shutdown(self, timeout: float = 3.0, *, why: str = SHUTDOWN) -> List[Announcement]:
        """Stop the worker and return what is pending, the playing one first (it plays again
        from the start next time: it gets `requeued` with reason `why`, after its `started`).
        The journal keeps them all."""
        with self._lock:
            self._running = False
            playing = self.policy.playing
            pending = self.policy.pending()
            items = list(self._items.values())
            self._lock.notify_all()
        self._unwatch()
        for item in items:
            item.token.cancel(SHUTDOWN)
            self._close(item)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._keeper is not None:
            self._keeper.join(timeout)
        self._deadline.close()
        if playing is not None:
            log.info("announcement %s was playing at %s; it stays queued", playing.id, why)
            if self._thread is None or not self._thread.is_alive():  # else its `started` may still come
                self._event(playing, "requeued", reason=why)
        return pending

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def healthy(self) -> bool:
        """The worker thread exists and is making progress (what the systemd watchdog checks)."""
        stuck_after = self._stuck_after
        return self.alive and (stuck_after is None or time.monotonic() <= stuck_after)

    def _progress(self, deadline: Optional[float] = None) -> None:
        """Something moved; `deadline` (the clock's time) extends the allowance before first sound."""
        now = time.monotonic()
        allowance = STALL_SECONDS
        if deadline is not None:
            allowance += max(0.0, deadline - self._clock())
        self._stuck_after = now + allowance

    def finish_current(self, timeout: float) -> bool:
        """Start no new announcement, and wait up to `timeout` s for the one playing to end
        (a reload lets it finish). True once nothing plays."""
        end = time.monotonic() + timeout
        with self._lock:
            self._draining = True
            while self.policy.playing is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def _run(self) -> None:
        while True:
            ann = self._next()
            if ann is None:
                return
            self._progress(ann.deadline)
            try:
                if not self._one(ann):
                    return
            except Exception:  # the bookkeeping itself failed: log it, keep the speaker alive
                log.exception("the worker recovered from an unexpected error around %s", ann.id)
                with self._lock:
                    if self.policy.playing is not None and self.policy.playing.id == ann.id:
                        self.policy.done()
                    self._items.pop(ann.id, None)
                    self._journal(ended=[ann])
            finally:
                self._stuck_after = None
                self.last_active = time.monotonic()

    def _one(self, ann: Announcement) -> bool:
        """Play one announcement and report how it ended; False at shutdown."""
        item = self._items[ann.id]
        try:
            kind, fields = self._play(ann, item)
        except Exception as exc:  # never let one announcement kill the worker
            log.exception("announcement %s failed unexpectedly", ann.id)
            kind, fields = "failed", {"error": error_fields(exc)}
        if item.token.reason == SHUTDOWN:
            return False  # it stays in the journal and plays again after the restart
        with self._lock:
            resume = kind == "interrupted" and self._resumable(item)
            deferred = kind == "deferred"
            if deferred:  # ready audio goes first; its synthesis goes on meanwhile
                self.policy.requeue(ann, resume=True)
                self._overtakers = list(fields["ahead"][:1])  # then it looks again
            elif resume:  # from its start, right after the one that cut it off; same deadline
                self.policy.requeue(ann, resume=True)
                self._items[ann.id] = _Item(item.request, item.chime, CancelToken(ann.deadline, clock=self._clock))
            else:
                self.policy.done()
                self._items.pop(ann.id, None)
                self._journal(ended=[ann])  # it leaves the journal before its final event goes out
            self._lock.notify_all()
        if deferred:
            self._event(ann, "requeued", reason="overtaken by " + ", ".join(fields["ahead"]))
            self._changed()
            return True
        self._close(item)
        if resume:
            self._event(ann, "requeued", reason=item.token.reason)
        else:
            self._event(ann, kind, **fields)
        self._changed()
        return True

    def _resumable(self, item: _Item) -> bool:
        """Cut off by an urgent announcement (not stopped), and the config wants it back."""
        reason = item.token.reason or ""
        return self.settings.resume_interrupted and item.resume and reason.startswith(INTERRUPTED_BY)

    def _next(self) -> Optional[Announcement]:
        with self._lock:
            while self._running:
                ann = None
                if not self._draining:
                    prefer = self._overtakers.pop(0) if self._overtakers else None
                    ann = self.policy.next_to_play(prefer)
                if ann is not None:
                    return ann
                self._lock.wait(timeout=self.policy.next_deadline_in(cap=5.0))
            return None

    def _keep(self) -> None:
        """Expire stale items as soon as they are (also while something plays) and start
        synthesizing the next one once the current one is audible."""
        with self._lock:
            while self._running:
                expired = self.policy.take_expired()
                items = [self._items.pop(a.id) for a in expired if a.id in self._items]
                if expired:
                    self._journal(ended=expired)
                if self._prefetch_wanted:
                    self._prefetch_wanted = False
                    upcoming = self.policy.peek()
                    item = self._items.get(upcoming.id) if upcoming is not None else None
                    if upcoming is not None and item is not None and item.speech is None:
                        # under the lock: the worker takes the item either before (and opens it
                        # itself) or after this, never in between (one synthesis per item)
                        item.speech = self.source.open(item.request, use_cache=upcoming.cache, token=item.token,
                                                       cue=item.cue)
                if expired:
                    self._lock.release()
                    try:
                        for ann in expired:
                            self._event(ann, "expired", reason="ttl")
                        for item in items:
                            self._close(item)
                        self._changed()
                    finally:
                        self._lock.acquire()
                    continue
                self._lock.wait(timeout=self.policy.next_deadline_in())

    def _audible(self) -> None:
        """The first chunk is with the device: publish the state and synthesize the next one."""
        self._changed()
        with self._lock:
            self._prefetch_wanted = True
            self._lock.notify_all()

    def _play(self, ann: Announcement, item: _Item) -> Tuple[str, Dict[str, Any]]:
        """Speak one announcement; returns its final event (kind, fields)."""
        if item.token.expired():
            return "expired", {"reason": "ttl"}  # went stale between the sweeps: never played late
        volume = self.policy.volume_for(ann, self.volume)
        # `started` now (the state, "speaking", follows once audible), or for a synchronized
        # broadcast once its device starts on the plan (then with the planned start and error)
        started = when_started(item.cue, lambda fields: self._event(ann, "started", **fields))
        disarm = self._deadline.arm(item.token)
        try:
            return self._attempts(ann, item, volume, disarm)
        finally:
            disarm()
            started()

    def _attempts(self, ann: Announcement, item: _Item, volume: int,
                  disarm: Callable[[], None]) -> Tuple[str, Dict[str, Any]]:
        """Synthesize and play, trying a busy or missing device again while the TTL allows."""
        token = item.token
        attempt = 0
        calls = 0

        def audible() -> None:
            disarm()  # it started in time: it plays to its end
            self._audible()

        def cut_short(fields: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
            if token.reason == EXPIRED:
                return "expired", dict(fields, reason="ttl")
            return "interrupted", dict(fields, reason=token.reason or "stopped")

        while True:
            if token.expired():
                return "expired", {"reason": "ttl", "api_calls": calls}
            speech = item.speech or self.source.open(item.request, use_cache=ann.cache, start=False, token=token,
                                                     cue=item.cue)
            item.speech = None
            if attempt == 0 and not speech.local:  # a local hit has its audio at once
                ahead = self._ready_ahead_of(ann, item, speech)
                if ahead:
                    item.speech = speech  # it goes on synthesizing while the ready ones play
                    return "deferred", {"ahead": ahead}
            try:
                result, cached = self._rounds(ann, item, speech, volume, audible)
                calls += speech.api_calls
                break
            except PlayerError as exc:
                calls += speech.api_calls
                speech.close()
                if token.cancelled:
                    return cut_short({"api_calls": calls})
                attempt += 1
                delay = min(DEVICE_RETRY_MAX, DEVICE_RETRY_BASE * 2 ** (attempt - 1))
                left = token.remaining()
                if left is None or left < delay:
                    return "failed", {"error": error_fields(exc), "api_calls": calls}
                log.warning("%s; trying again in %.0f s (until the announcement expires)", exc, delay)
                self._progress(self._clock() + delay)  # the wait is progress too
                if token.wait(delay):
                    return cut_short({"api_calls": calls})
                self._progress()
            except SpeakerError as exc:  # CozeError and the others: final for this announcement
                if token.cancelled:
                    return cut_short({"api_calls": calls + speech.api_calls})
                if token.expired():  # Coze gave up at the deadline, a moment before the token did
                    return "expired", {"reason": "ttl", "api_calls": calls + speech.api_calls}
                return "failed", {"error": error_fields(exc), "api_calls": calls + speech.api_calls}
        if not result.played:
            if token.expired() and not token.cancelled:
                return "expired", {"reason": "ttl", "cached": cached, "api_calls": calls}
            return cut_short({"cached": cached, "api_calls": calls})
        fields: Dict[str, Any] = {"cached": cached, "api_calls": calls, "duration_ms": int(result.duration * 1000)}
        if result.first_audio is not None and ann.received:
            fields["latency_ms"] = max(0, int(round((result.first_audio - ann.received) * 1000)))
        if speech.fallback_reason is not None:
            fields.update(fallback=True, reason=str(speech.fallback_reason),
                          error=error_fields(speech.fallback_reason))
        return "finished", fields

    def _ready_ahead_of(self, ann: Announcement, item: _Item, speech: OpenSpeech) -> List[str]:
        """Wait for the first audio; once OVERTAKE_AFTER has passed without it, the ids of
        waiting announcements whose audio is in the cache (not of lower priority, first few)
        that should play first. Empty as soon as audio (or the end, or a cancel) arrives."""
        if ann.urgent:
            return []  # nothing goes ahead of an urgent one
        while True:
            step = max(0.25, OVERTAKE_AFTER - item.waited)
            if speech.wait_audio(step):
                return []
            item.waited += step
            with self._lock:
                behind = [(a, self._items.get(a.id)) for a in self.policy.waiting(OVERTAKE_LOOKAHEAD)
                          if a.rank >= ann.rank and a.cache]
            ready = [a.id for a, it in behind if it is not None and self.source.is_cached(it.request)]
            if ready:
                return ready

    def _rounds(self, ann: Announcement, item: _Item, speech: OpenSpeech, volume: int,
                audible: Callable[[], None]) -> Tuple[PlayResult, bool]:
        """Play the speech `repeat` times. The first round is recorded while it is short
        (at most the read-ahead bound); a longer one is opened again from the source (the
        cache by then) for each repeat, so memory stays bounded."""
        token = item.token
        recording: Optional[List[bytes]] = [] if ann.repeat > 1 else None

        def recorded(chunks: Iterable[bytes]) -> Iterator[bytes]:
            nonlocal recording
            size = 0
            for chunk in chunks:
                self._progress()
                if recording is not None:
                    size += len(chunk)
                    if size > MAX_AHEAD_BYTES:
                        recording = None
                    else:
                        recording.append(chunk)
                yield chunk

        total = PlayResult(played=False)
        cached = True
        try:
            for round_no in range(ann.repeat):
                if token.cancelled:
                    break
                if round_no == 0:
                    chunks: Any = recorded(speech)
                    ready = speech.local
                elif recording is not None:
                    chunks, ready = iter(recording), True
                else:
                    again = self.source.open(item.request, use_cache=ann.cache, start=False, token=token)
                    chunks, ready = again, again.local
                self._progress()
                result = self.speaker.play(chunks, token=token, volume=volume, chime=item.chime, ready=ready,
                                           after_first_audio=audible if round_no == 0 else None,
                                           cue=item.cue if round_no == 0 else None)
                if round_no == 0:
                    total.first_audio = result.first_audio
                elif isinstance(chunks, OpenSpeech):
                    speech.api_calls += chunks.api_calls
                    cached = cached and chunks.cached
                    chunks.close()
                total.duration += result.duration
                total.played = result.played
                if not result.played:
                    break
        finally:
            speech.close()
        if speech.error is not None and not token.cancelled:
            raise speech.error
        return total, cached and speech.cached

    def _close(self, item: _Item) -> None:
        if item.speech is not None:
            item.speech.close()

    # -- events ---------------------------------------------------------------------------

    def _event(self, ann: Announcement, kind: str, **fields: Any) -> None:
        try:
            self.sink(AnnouncementEvent.about(ann, kind, **fields))
        except Exception:
            log.exception("could not report the %s event of %s", kind, ann.id)

    def persist(self) -> None:
        """Rewrite the journal with what is pending (playing and queued), if there is one:
        once at start and after a reload (each change in between is appended by `_journal`)."""
        if self.journal is None:
            return
        with self._lock:
            snapshot = self.policy.pending()
        self.journal.write(snapshot)

    def _journal(self, added: Optional[Announcement] = None, ended: Sequence[Announcement] = ()) -> None:
        """Append what changed to the journal (O(1) per announcement, whatever the queue's length)."""
        if self.journal is None:
            return
        if added is not None:
            self.journal.add(added)
        if ended:
            self.journal.done([a.id for a in ended])

    def _changed(self) -> None:
        try:
            self.sink(StateChanged())
        except Exception:
            log.exception("could not report a state change")
