"""The MQTT front end: the only code that receives or publishes, and the only publisher.

paho's network thread only hands each message to the intake thread (the rhasspy-hermes
pattern), so a slow handler never stalls keep-alives. The intake thread parses a message
into an Announcement (or a command) and hands it to the queue (which appends it to the
journal); handlers return what to publish. Events come back from the queue through `sink`.

One send thread publishes everything the intake and the queue hand it, in order, and
acknowledges each message once handled: before each batch it makes the journal durable
(one fdatasync for every line appended since the last: group commit), so `queued` and the
MQTT ack never go out before the announcement would survive a power cut, and a burst pays
one fdatasync per batch, not per message. A crash before the ack means a redelivery, not a loss.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from .. import __version__, sdnotify
from ..cache import CacheError, PhraseCache
from ..queue.announcement import Announcement, PayloadError, make_announcement, parse_say
from ..queue.events import AnnouncementEvent, QueueEvent, StateChanged
from ..queue.state import StateStore
from ..queue.worker import Announcer
from .bridge import Incoming, MqttBridge
from .fleet import Fleet
from .hermes import HermesError, HermesSay, HermesSayFinished
from .homeassistant import discovery_payload, voice_label
from .payloads import SpeakerState, event_payload
from .retained import RetainedTopics
from .topics import AVAILABLE, NOT_AVAILABLE, Topics

if TYPE_CHECKING:
    from ..voice.voices import VoiceCatalog

log = logging.getLogger(__name__)

#: The retained state is published at most this often (seconds).
STATE_INTERVAL = 0.2
#: A change is published this long after it (seconds): an announcement's `queued` and
#: `speaking` become one state message, sent after its first sound, not beside it.
STATE_SETTLE = 0.02
#: The state's `last` (the last announcement spoken to the end) keeps this many characters,
#: and so does its `last_error`'s message; both are kept in the state dir under this name, so
#: a restart or reload does not blank them.
LAST_CHARS = 250
LAST_FILE = "last"
#: What `chime/set` takes for on and for off (any case).
SWITCH_ON, SWITCH_OFF = ("on", "true", "1"), ("off", "false", "0")
#: The send thread publishes at most this many items per journal sync.
SEND_BATCH = 1000
_STOP_INTAKE = object()
_STOP_SENDING = object()


@dataclass(frozen=True)
class _Ack:
    """Acknowledge this message to the broker (sent in order with the events)."""

    message: Incoming


@dataclass(frozen=True)
class Publish:
    """One message to send."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: Optional[int] = None
    correlation_data: Optional[bytes] = None


class MqttFrontEnd:
    """Routes `say`, `stop`, `volume/set`, `voice/set`, `chime/set`, Hermes and HA status to
    one queue worker."""

    def __init__(self, config: Any, worker: Announcer, cache: Optional[PhraseCache] = None, *,
                 on_connected: Callable[[], None] = lambda: None, store: Optional[StateStore] = None,
                 voices: "Optional[VoiceCatalog]" = None, retained: Optional[RetainedTopics] = None,
                 fleet: Optional[Fleet] = None) -> None:
        self.config = config
        #: the other speakers on this base topic (None: fleet.enabled is false)
        self.fleet = fleet
        self.worker = worker
        self.cache = cache
        self.store = store
        self.voices = voices
        self.retained = retained
        self._unwatch_voices: Callable[[], None] = lambda: None
        self._discovery_waits = False  # for the voice list being fetched (see _on_connected)
        self._last: Optional[str] = None
        self._last_summary: Optional[dict] = None  # the last one spoken: text, id, ts
        self._last_error: Optional[dict] = None
        self._unsaved = False
        mqtt = config.mqtt
        self.topics = Topics(mqtt.base_topic, mqtt.device_id, tuple(mqtt.groups),
                             config.homeassistant.discovery_prefix)
        self._on_connected_cb = on_connected
        self._inbox: "queue.Queue[Any]" = queue.Queue()
        self._intake: Optional[threading.Thread] = None
        self._outbox: "queue.Queue[Any]" = queue.Queue()  # events, Publish and _Ack, in order
        self._sender: Optional[threading.Thread] = None
        self._last_state: Optional[bytes] = None
        self._state_lock = threading.Lock()
        self._state_dirty = threading.Event()
        self._state_thread: Optional[threading.Thread] = None
        self._closed = False
        self.bridge = MqttBridge(
            mqtt, client_id=mqtt.client_id or f"coze-speaker-{mqtt.device_id}",
            will_topic=self.topics.availability, will_payload=NOT_AVAILABLE,
            subscriptions=self.subscriptions, on_message=self._inbox.put, on_connect=self._on_connected,
            session_expiry=int(config.queue.ttl) if mqtt.protocol == 5 else 0,
        )
        if fleet is not None:
            fleet.bind(lambda topic, payload: self.bridge.publish(topic, payload, qos=1))

    @property
    def connected(self) -> threading.Event:
        return self.bridge.connected

    def subscriptions(self) -> List[str]:
        topics = [*self.topics.say_topics, self.topics.stop, self.topics.volume_set, self.topics.voice_set,
                  self.topics.chime_set]
        if self.config.homeassistant.enabled:
            topics.append(self.topics.ha_status)
        if self.config.hermes.enabled:
            topics.append(HermesSay.TOPIC)
        if self.fleet is not None:
            topics.extend(self.fleet.subscriptions())
        return topics

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the intake thread and connect in the background."""
        self._load_last()  # here, not at build: on a reload the old front end has saved it by now
        if self.voices is not None:  # a new voice list: new options for Home Assistant's select
            self._unwatch_voices = self.voices.on_change(self._voices_changed)
        self._intake = threading.Thread(target=self._take_in, name="coze-speaker-intake", daemon=True)
        self._intake.start()
        self._sender = threading.Thread(target=self._send, name="coze-speaker-send", daemon=True)
        self._sender.start()
        self._state_thread = threading.Thread(target=self._publish_states, name="coze-speaker-state", daemon=True)
        self._state_thread.start()
        self.bridge.start()

    def stop(self, *, offline: bool = True, timeout: float = 3.0) -> None:
        """Stop taking messages (those not yet handled stay with the broker's session) and
        disconnect, publishing `offline` first unless a reload hands over to a new front end."""
        self._unwatch_voices()
        self._inbox.put(_STOP_INTAKE)
        if self._intake is not None:
            self._intake.join(timeout)
        self._outbox.put(_STOP_SENDING)  # what was handed over before is still sent
        if self._sender is not None:
            self._sender.join(timeout)
        with self._state_lock:
            self._closed = True
        self._state_dirty.set()
        if self._state_thread is not None:
            self._state_thread.join(timeout)
        self._publish_state_now(final=True)  # the retained state says how it was left
        self._save_last()
        if offline:
            self.bridge.stop(self.topics.availability, NOT_AVAILABLE)
        else:
            self.bridge.stop()

    def _take_in(self) -> None:
        while True:
            msg = self._inbox.get()
            if msg is _STOP_INTAKE:
                return
            try:
                for out in self.handle(msg):
                    self._outbox.put(out)
            except Exception:  # a handler bug must not stop the intake
                log.exception("handling a message on %s failed", getattr(msg, "topic", "?"))
            finally:
                self._outbox.put(_Ack(msg))  # handled (and journaled when accepted): the broker may forget it

    def _send(self) -> None:
        """Publish and acknowledge what was handed over, in order; the journal is synced
        before each batch, so nothing goes out before what it reports is durable."""
        journal = self.worker.journal
        while True:
            batch = [self._outbox.get()]
            while len(batch) < SEND_BATCH:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            if journal is not None:
                journal.sync()
            for item in batch:
                if item is _STOP_SENDING:
                    return
                try:
                    if isinstance(item, _Ack):
                        self.bridge.ack(item.message)
                    elif isinstance(item, Publish):
                        self.publish(item)
                    else:
                        for out in self.event_messages(item):
                            self.publish(out)
                except Exception:  # one bad item must not stop the events
                    log.exception("could not send %r", item)

    def publish(self, out: Publish) -> None:
        self.bridge.publish(out.topic, out.payload, retain=out.retain, qos=out.qos,
                            correlation_data=out.correlation_data)

    # -- MQTT in --------------------------------------------------------------------------

    def handle(self, msg: Incoming) -> List[Publish]:
        """Route one message; returns what to publish besides the queue's own events."""
        topics = self.topics
        if msg.topic in topics.say_topics:
            return self._on_say(msg)
        if self.fleet is not None and self.fleet.owns(msg.topic):
            self.fleet.handle(msg)
            return []
        if msg.retain and msg.topic in (topics.stop, topics.volume_set, topics.voice_set, topics.chime_set):
            # a command left retained on the broker would act again at every (re)connect:
            # a retained `stop all` would empty the queue restored after a crash
            log.warning("ignored a retained message on %s (clear it with an empty retained message)", msg.topic)
            return []
        if msg.topic == topics.stop:
            self.worker.stop(clear=msg.payload.strip().lower() == b"all")
        elif msg.topic == topics.volume_set:
            return self._on_volume(msg.payload)
        elif msg.topic == topics.voice_set:
            self._on_voice(msg.payload)
        elif msg.topic == topics.chime_set:
            self._on_chime(msg.payload)
        elif msg.topic == topics.ha_status:
            if msg.payload.strip().lower() == b"online":
                return self.discovery()
        elif msg.topic == HermesSay.TOPIC:
            return self._on_hermes(msg)
        return []

    def _on_say(self, msg: Incoming) -> List[Publish]:
        topics = self.topics
        source = "mqtt" if msg.topic == topics.say else ("all" if msg.topic == topics.all_say else "group")
        extra: dict = {"source": source, "response_topic": msg.response_topic,
                       "correlation_data": msg.correlation_data}
        if source == "group":
            extra["group"] = next(g for g in topics.groups if topics.group_say(g) == msg.topic)
        if msg.response_topic is not None and not self.response_topic_allowed(msg.response_topic):
            # a client allowed to publish only to `say` must not make the speaker publish to
            # its own stop or volume topics, Hermes or Home Assistant discovery
            bad = Announcement(text=_preview(msg.payload), received=msg.received, source=source)
            error = {"message": f"response_topic: {msg.response_topic!r} is not allowed (it is under "
                                f"{self.topics.base}/, hermes/ or {self.topics.discovery_prefix}/, or has a wildcard)",
                     "code": "invalid", "field": "response_topic"}
            return self._refused(AnnouncementEvent.about(bad, "failed", error=error))
        try:
            ann = parse_say(msg.payload, max_text_bytes=self.config.limits.max_text_bytes,
                            received=msg.received, **extra)
        except PayloadError as exc:
            bad = Announcement(text=_preview(msg.payload), received=msg.received, **extra)
            if exc.announcement_id:
                bad = bad.replace(id=exc.announcement_id)
            return self._refused(AnnouncementEvent.about(bad, "failed", error=exc.event_fields()))
        if msg.retain:
            log.warning("ignored a retained say message on %s (clear it with an empty retained message)",
                        msg.topic)
            return self.event_messages(AnnouncementEvent.about(ann, "dropped", reason="retained"))
        if ann.ttl is None and msg.expiry:
            ann = ann.replace(deadline=msg.received + msg.expiry)
        self.worker.submit(ann, redelivery=msg.dup)
        return []

    def response_topic_allowed(self, topic: str) -> bool:
        """Replies go anywhere but to topics that command or describe speakers."""
        reserved = (self.topics.base, "hermes", self.topics.discovery_prefix)
        if not topic or "+" in topic or "#" in topic:
            return False
        return not any(topic == r or topic.startswith(r + "/") for r in reserved)

    def _on_volume(self, payload: bytes) -> List[Publish]:
        try:
            volume = float(payload.decode("ascii").strip())
            if not 0 <= volume <= 100:
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            log.warning("ignored volume %r: expected a number from 0 to 100", payload[:40])
            return []
        self.worker.set_volume(int(round(volume)))
        return [Publish(self.topics.volume, str(self.worker.volume).encode(), retain=True)]

    def _on_voice(self, payload: bytes) -> None:
        """The default voice from now on: a voice id, or an option of Home Assistant's select
        (`Name (id)`). With a voice list it must be one of its voices (or the configured one):
        a typo would make every announcement fail."""
        text = payload.decode("utf-8", "replace").strip()
        catalog = self.voices.voices() if self.voices is not None else ()
        found = next((v for v in catalog if text in (v.voice_id, voice_label(v.voice_id, v.name))), None)
        configured = self.config.coze.voice_id
        if found is not None:
            voice_id = found.voice_id
        elif configured and text == configured:  # the select offers it even when the list lacks it
            voice_id = configured
        elif not catalog and 0 < len(text) <= 128 and text.isprintable() and not any(c.isspace() for c in text):
            voice_id = text  # no voice list to check against (no token, Coze not reached yet)
        else:
            log.warning("ignored voice %r: not a voice of the voice list (`coze-speaker voices` lists them)",
                        text[:80])
            return
        log.info("default voice from now on: %s", voice_id)
        self.worker.set_voice(voice_id)

    def _on_chime(self, payload: bytes) -> None:
        word = payload.decode("utf-8", "replace").strip().lower()
        if word not in SWITCH_ON + SWITCH_OFF:
            log.warning("ignored chime %r: expected ON or OFF", payload[:40])
            return
        self.worker.set_chime(word in SWITCH_ON)

    def _voices_changed(self, changed: bool) -> None:
        """A fetch of the voice list ended (its thread): discovery again if the list changed or
        a connection waited for it, and the state (the voice's name)."""
        with self._state_lock:
            due, self._discovery_waits = changed or self._discovery_waits, False
        if due:
            for out in self.discovery():
                self._outbox.put(out)
        self.publish_state()

    def _on_hermes(self, msg: Incoming) -> List[Publish]:
        site_id = self.config.hermes.site_id
        try:
            say = HermesSay.from_payload(msg.payload)
        except ValueError as exc:
            return [Publish(HermesError.TOPIC, HermesError(str(exc), site_id).payload())]
        if say.site_id != site_id:
            return []
        try:
            ann = make_announcement(say.text, max_text_bytes=self.config.limits.max_text_bytes,
                                    id=say.id or f"hermes-{time.monotonic_ns()}", source="hermes",
                                    volume=None if say.volume is None else int(round(say.volume * 100)),
                                    received=msg.received, site_id=say.site_id, session_id=say.session_id)
        except PayloadError as exc:  # not spoken: an error, and no sayFinished
            return [Publish(HermesError.TOPIC, HermesError(str(exc), say.site_id, context=say.id,
                                                           session_id=say.session_id).payload())]
        self.worker.submit(ann, redelivery=msg.dup)
        return []

    # -- MQTT out -------------------------------------------------------------------------

    def sink(self, event: QueueEvent) -> None:
        """Where the queue hands its events (any thread, returns at once): the send thread
        publishes them in the order they came, after the journal sync that covers them."""
        if isinstance(event, StateChanged):
            self.publish_state()
            return
        if event.event == "finished":  # spoken: the state's `last` (saved by the state thread)
            with self._state_lock:
                self._last = event.text[:LAST_CHARS]
                self._last_summary = {"text": self._last, "id": event.id, "ts": round(event.ts, 3)}
                self._unsaved = True
        if event.event == "failed" or event.fallback:
            self._note_error(event)
        self._outbox.put(event)

    def _refused(self, event: AnnouncementEvent) -> List[Publish]:
        """A payload refused before the queue: its failed event, and it is the last error."""
        self._note_error(event)
        return self.event_messages(event)

    def _note_error(self, event: AnnouncementEvent) -> None:
        """The state's `last_error` (Home Assistant's "Last error" sensor): a failure, or the
        Coze error that the offline voice covered."""
        error = event.error or {}
        summary = {"message": str(error.get("message") or event.reason or event.event)[:LAST_CHARS],
                   "code": error.get("code"), "field": error.get("field"), "logid": error.get("logid"),
                   "id": event.id, "ts": round(event.ts, 3), "fallback": True if event.fallback else None}
        with self._state_lock:
            self._last_error = {k: v for k, v in summary.items() if v is not None}
            self._unsaved = True
        self.publish_state()

    def event_messages(self, event: AnnouncementEvent) -> List[Publish]:
        """An event on B/D/event; a final one also on its response topic and to Hermes."""
        payload = event_payload(event)
        out = [Publish(self.topics.event, payload)]
        if event.final:
            log.log(logging.WARNING if event.event == "failed" else logging.INFO, "%s", outcome_line(event))
        ann = event.announcement
        if not event.final or ann is None:
            return out
        if ann.response_topic:
            out.append(Publish(ann.response_topic, payload, correlation_data=ann.correlation_data))
        if ann.source == "hermes":
            out.append(self._hermes_outcome(event, ann))
        return out

    def _hermes_outcome(self, event: AnnouncementEvent, ann: Announcement) -> Publish:
        """sayFinished means spoken: only a `finished` say gets it. Any other end (failed,
        dropped, expired, interrupted) gets hermes/error/tts, saying why, with the say's id
        as context."""
        site = ann.site_id or self.config.hermes.site_id
        if event.event == "finished":
            return Publish(HermesSayFinished.TOPIC, HermesSayFinished(ann.id, site, ann.session_id).payload())
        if event.event == "failed":
            message = (event.error or {}).get("message") or "failed"
        else:
            message = f"{event.event}: {event.reason}" if event.reason else event.event
        return Publish(HermesError.TOPIC, HermesError(message, site, context=ann.id,
                                                      session_id=ann.session_id).payload())

    def _on_connected(self) -> None:
        self._clear_stale()
        self.bridge.publish(self.topics.availability, AVAILABLE, retain=True, qos=1)
        self.bridge.publish(self.topics.volume, str(self.worker.volume).encode(), retain=True, qos=1)
        if self.fleet is not None:
            self.bridge.publish(*self.fleet.member_record(), retain=True, qos=1)
        else:  # not a member (any more): a record left by an earlier run must not count
            self.bridge.publish(self.topics.member, b"", retain=True, qos=1)
        with self._state_lock:
            self._last_state = None
            # while the voice list is being fetched, discovery waits for it: Home Assistant
            # 2026.2 loses parts of a second device config that arrives while it still sets
            # up the entities of the first (the select kept its old options)
            self._discovery_waits = self.voices is not None and self.voices.fetching
            waits = self._discovery_waits
        self.publish_state()
        if not waits:
            for out in self.discovery():
                self.publish(out)
        self._on_connected_cb()

    def discovery(self) -> List[Publish]:
        if not self.config.homeassistant.enabled:
            return []
        payload = discovery_payload(self.topics, qos=self.config.mqtt.qos, voice=self.worker.default_voice,
                                    voices=self.voices.voices() if self.voices is not None else ())
        return [Publish(self.topics.discovery, payload, retain=True, qos=1)]

    def retained_topics(self) -> List[str]:
        """Every topic this speaker publishes retained, with its config as it is now."""
        topics = [self.topics.availability, self.topics.state, self.topics.volume]
        if self.config.homeassistant.enabled:
            topics.append(self.topics.discovery)
        return topics

    def _clear_stale(self) -> None:
        """Clear the retained topics published before and not any more (a changed device id,
        Home Assistant discovery turned off): an empty retained message removes each, and
        Home Assistant removes the device of an emptied discovery topic."""
        if self.retained is None:
            return
        current = self.retained_topics()
        for topic in self.retained.stale(current):
            log.info("clearing %s: published retained by this speaker before, not any more", topic)
            self.bridge.publish(topic, b"", retain=True, qos=1)
        self.retained.remember(current)

    def publish_state(self) -> None:
        """Ask for the state to be published (any thread, returns at once): the state thread
        publishes it at most every STATE_INTERVAL seconds, so a burst of 1000 messages does not
        become 5000 state messages, and the hot path of an announcement never waits for it;
        the last change is always published."""
        self._state_dirty.set()

    def _publish_states(self) -> None:
        while True:
            self._state_dirty.wait()
            time.sleep(STATE_SETTLE)
            with self._state_lock:
                if self._closed:
                    return
            self._state_dirty.clear()
            self._publish_state_now()
            self._save_last()
            time.sleep(STATE_INTERVAL)  # bounded: the thread ends with the front end

    def state(self) -> Optional[SpeakerState]:
        """The speaker's state now (None while the cache is closed by a reload or shutdown)."""
        cache: dict = {}
        if self.cache is not None:
            try:
                stats = self.cache.stats()
            except CacheError:
                return None
            cache = {"entries": stats.entries, "bytes": stats.bytes, "hits": stats.hits, "misses": stats.misses}
        worker = self.worker
        down = worker.coze_down
        voice = worker.default_voice
        catalog = self.voices.voices() if self.voices is not None else ()
        info = next((v for v in catalog if v.voice_id == voice), None)
        with self._state_lock:
            last, last_error = self._last, self._last_error
        return SpeakerState(state="speaking" if worker.speaking and worker.alive else "idle", volume=worker.volume,
                            queue=worker.queue_length(), cache=cache, version=__version__,
                            last=last or None,
                            coze=None if down is None else "down" if down else "up",
                            voice=voice, voice_name=info.name if info is not None and info.name != voice else None,
                            chime=worker.chime, last_error=last_error)

    def _load_last(self) -> None:
        saved = self.store.load(LAST_FILE) if self.store is not None else None
        saved = saved if isinstance(saved, dict) else {}
        text, error = saved.get("text"), saved.get("error")
        with self._state_lock:
            if isinstance(text, str) and self._last is None:
                self._last = text[:LAST_CHARS]
                self._last_summary = {k: v for k, v in saved.items() if k in ("text", "id", "ts")}
            if isinstance(error, dict) and isinstance(error.get("message"), str) and self._last_error is None:
                self._last_error = {k: v for k, v in error.items() if isinstance(v, (str, int, float, bool))}

    def _save_last(self) -> None:
        """Keep the last announcement spoken and the last error in the state dir (off the
        worker's path: an fsync on an SD card can take a while)."""
        with self._state_lock:
            if not self._unsaved:
                return
            self._unsaved = False
            summary = dict(self._last_summary or {})
            if self._last_error is not None:
                summary["error"] = self._last_error
        if self.store is not None:
            self.store.save(LAST_FILE, summary)

    def _publish_state_now(self, *, final: bool = False) -> None:
        state = self.state()
        if state is None:
            return
        payload = state.payload()
        with self._state_lock:
            if payload == self._last_state or (self._closed and not final):
                return
            self._last_state = payload
        self.bridge.publish(self.topics.state, payload, retain=True, qos=1)
        sdnotify.notify(f"STATUS={state.state}, queue {state.queue}, volume {state.volume}")


def outcome_line(event: AnnouncementEvent) -> str:
    """One journal line per final event: what was spoken or why not, e.g.
    `finished 3f9c0a1b (cached, 12 ms): "Dinner is ready"`."""
    details = []
    if event.cached is not None:
        details.append("cached" if event.cached else "synthesized")
    if event.latency_ms is not None:
        details.append(f"first audio after {event.latency_ms} ms")
    if event.fallback:
        details.append("offline voice")
    error = event.error or {}
    if event.reason and not error:
        details.append(f"reason: {event.reason}")
    for key in ("code", "field", "logid"):
        if error.get(key) is not None:
            details.append(f"{key} {error[key]}")
    text = event.text if len(event.text) <= 60 else event.text[:59] + "…"
    message = f" {error['message']}" if error.get("message") and event.event == "failed" else ""
    return f"{event.event} {event.id} ({', '.join(details) or '-'}):{message} {text!r}"


def _preview(payload: bytes) -> str:
    """A short, printable echo of a refused payload for its event."""
    text = payload[:80].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text) + ("…" if len(payload) > 80 else "")
