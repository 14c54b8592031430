"""`coze-speaker run`: wires config, Coze, cache, player, queue and MQTT into the daemon.

Signals: SIGTERM/SIGINT stop cleanly (publishing `offline`), SIGHUP reloads the config
(a bad new config is reported and the old one kept).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from typing import Optional
from urllib.parse import urlsplit

from .. import __version__
from . import sdnotify
from ..queue.announcement import Announcement, PayloadError, make_announcement, parse_say
from ..queue.worker import Announcer, QueueSettings
from ..cache import CacheError, PhraseCache
from ..config import Config, ConfigError, load_config
from ..voice.costguard import CostGuard
from ..coze import CozeClient
from ..sound.devices import resolve_sample_rate
from ..voice.fallback import make_fallback
from ..mqtt.homeassistant import discovery_payload, discovery_topic
from ..queue.journal import Journal
from ..mqtt.messages import (AVAILABLE, NOT_AVAILABLE, AnnouncementEvent, HermesError, HermesSay,
                       HermesSayFinished, SpeakerState, Topics)
from ..mqtt.bridge import Incoming, MqttBridge
from ..sound.players import Player, make_player
from ..sound.shaping import load_chime
from ..voice.source import AudioSource, Speaker
from ..voice.request import SpeechRequest
from .state import StateStore

log = logging.getLogger(__name__)

#: The retained state is published at most this often (seconds).
STATE_INTERVAL = 0.2


class Daemon:
    """One running speaker. Build with a Config; `run()` blocks until a stop signal."""

    def __init__(self, config: Config, *, player: Optional[Player] = None) -> None:
        self.config = config
        self._player_override = player
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._last_state: Optional[bytes] = None
        self._state_lock = threading.Lock()
        self._state_timer: Optional[threading.Timer] = None
        self._state_sent_at = 0.0
        self._build(config)
        self._restore()

    # -- wiring ---------------------------------------------------------------------------

    def _build(self, config: Config, pending: tuple = ()) -> None:
        self.config = config
        audio, mqtt = config.audio, config.mqtt
        self.rate = resolve_sample_rate(audio.sample_rate, audio.device)
        self.topics = Topics(mqtt.base_topic, mqtt.device_id, tuple(mqtt.groups),
                             config.homeassistant.discovery_prefix)
        self.fallback = make_fallback(config.fallback)
        self.client: Optional[CozeClient] = None
        if config.coze.token:
            self.client = CozeClient.from_config(config.coze)
        else:
            log.warning("NO COZE TOKEN configured (coze.token, coze.token_file or $COZE_API_TOKEN): only "
                        "phrases already in the cache can be spoken in the Coze voice%s",
                        "; the espeak-ng fallback voice speaks the rest" if self.fallback else
                        "; everything else fails (set fallback.engine: espeak-ng to speak it anyway)")
        self.cache = PhraseCache(config.cache.dir, int(config.cache.max_size_mb * 1024 * 1024))
        self.guard = CostGuard(config.limits.max_requests_per_hour, config.limits.max_chars_per_day)
        self.source = AudioSource(self.client, self.cache, guard=self.guard, fallback=self.fallback,
                                  host=urlsplit(config.coze.base_url).netloc)
        self.player = self._player_override or make_player(audio.backend, audio.device)
        self.speaker = Speaker(self.player, rate=self.rate, preroll_ms=audio.preroll_ms)
        self.store = StateStore(config.state.dir)
        saved = self.store.load("volume")
        volume = saved if isinstance(saved, int) and 0 <= saved <= 100 else audio.volume
        self.announcer = Announcer(self.source, self.speaker, self._emit, build_request=self._request,
                                   chime_for=self._chime, settings=QueueSettings.from_config(config),
                                   volume=volume, journal=Journal(config.state.dir / "queue.json"))
        self.announcer.on_state = self.publish_state
        for ann in pending:
            self.announcer.submit(ann)
        v5 = mqtt.protocol == 5
        self.bridge = MqttBridge(
            mqtt, client_id=mqtt.client_id or f"coze-speaker-{mqtt.device_id}",
            will_topic=self.topics.availability, will_payload=NOT_AVAILABLE,
            subscriptions=self._subscriptions, on_message=self.on_message, on_connect=self._on_connected,
            session_expiry=int(config.queue.ttl) if v5 else 0,
        )

    def _restore(self) -> None:
        """Announcements accepted by the last run but not spoken: queue them again, or report
        them expired."""
        valid, expired = self.announcer.journal.load()
        for ann in expired:
            self._emit(AnnouncementEvent(id=ann.id, event="expired", text=ann.text, priority=ann.priority,
                                         source=ann.source, reason="ttl"), ann)
        for ann in valid:
            self.announcer.submit(ann)
        if valid or expired:
            log.info("restored %d announcement(s) from the last run, %d had expired", len(valid), len(expired))
        self.announcer.persist()

    def _request(self, ann: Announcement) -> SpeechRequest:
        return SpeechRequest.from_config(
            self.config, ann.text, voice_id=ann.voice, emotion=ann.emotion, emotion_scale=ann.emotion_scale,
            speed=ann.speed, loudness_rate=ann.loudness, context_texts=ann.context, sample_rate=self.rate)

    def _chime(self, ann: Announcement) -> Optional[bytes]:
        configured = self.config.audio.chime
        if ann.chime is False or (ann.chime is None and configured == "none"):
            return None
        if ann.chime is True or ann.chime is None:
            name = configured if configured != "none" else "builtin"
        else:
            name = ann.chime
        return load_chime(name, self.config.audio.chimes_dir, self.rate)

    def _subscriptions(self) -> list:
        topics = [*self.topics.say_topics, self.topics.stop, self.topics.volume_set]
        if self.config.homeassistant.enabled:
            topics.append(self.topics.ha_status)
        if self.config.hermes.enabled:
            topics.append(HermesSay.TOPIC)
        return topics

    # -- running --------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._install_signals()
        self.announcer.start()
        self.bridge.start()
        log.info("coze-speaker %s: device %r, %s at %d Hz on %r, broker %s:%d", __version__,
                 self.config.mqtt.device_id, self.player.name, self.rate, self.config.audio.device,
                 self.config.mqtt.host, self.config.mqtt.port)
        ready = False
        interval = sdnotify.watchdog_interval()
        while not self._stop.is_set():
            self._wake.wait(timeout=min(interval or 5.0, 5.0))
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
                ready = False
            if not ready and self.bridge.connected.is_set():
                ready = True
                sdnotify.notify("READY=1")
            if interval and self.announcer.alive:
                sdnotify.notify("WATCHDOG=1")
        self.shutdown()
        return 0

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        self.announcer.shutdown()
        self.bridge.stop(self.topics.availability, NOT_AVAILABLE)
        self._close_parts()
        log.info("stopped")

    def _close_parts(self) -> None:
        with self._state_lock:
            if self._state_timer is not None:
                self._state_timer.cancel()
                self._state_timer = None
        self.cache.close()
        if self.client is not None:
            self.client.close()
        if self._player_override is None:
            self.player.close()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: (self._reload.set(), self._wake.set()))

    def _do_reload(self) -> None:
        source = self.config.source
        sdnotify.notify("RELOADING=1")
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("config reload failed, keeping the running config:\n%s", exc)
            return
        log.info("reloading the config from %s", source)
        pending = tuple(self.announcer.shutdown())
        self.bridge.stop()
        self._close_parts()
        self._last_state = None
        self._build(new, pending)
        self.announcer.start()
        self.bridge.start()

    # -- MQTT in ------------------------------------------------------------------------

    def on_message(self, msg: Incoming) -> None:
        topics = self.topics
        if msg.topic in topics.say_topics:
            self._on_say(msg)
        elif msg.topic == topics.stop:
            self.announcer.stop(clear=msg.payload.strip().lower() == b"all")
        elif msg.topic == topics.volume_set:
            self._on_volume(msg.payload)
        elif msg.topic == topics.ha_status:
            if msg.payload.strip().lower() == b"online":
                self.publish_discovery()
        elif msg.topic == HermesSay.TOPIC:
            self._on_hermes(msg)

    def _on_say(self, msg: Incoming) -> None:
        source = "mqtt" if msg.topic == self.topics.say else ("all" if msg.topic == self.topics.all_say else "group")
        extra: dict = {"source": source, "response_topic": msg.response_topic,
                       "correlation_data": msg.correlation_data}
        try:
            ann = parse_say(msg.payload, max_text_bytes=self.config.limits.max_text_bytes,
                            received=msg.received, **extra)
        except PayloadError as exc:
            bad = Announcement(text=_preview(msg.payload), received=msg.received, **extra)
            if exc.announcement_id:
                bad = dataclasses.replace(bad, id=exc.announcement_id)
            self._emit(AnnouncementEvent(id=bad.id, event="failed", text=bad.text, source=source,
                                         error={"message": str(exc), "code": "invalid", "field": exc.field}), bad)
            log.warning("refused a say message on %s: %s", msg.topic, exc)
            return
        if msg.retain:
            self._emit(AnnouncementEvent(id=ann.id, event="dropped", text=ann.text, source=source,
                                         reason="retained"), ann)
            log.warning("ignored a retained say message on %s (clear it with an empty retained message)",
                        msg.topic)
            return
        if ann.ttl is None and msg.expiry:
            ann = dataclasses.replace(ann, deadline=msg.received + msg.expiry)
        self.announcer.submit(ann)

    def _on_volume(self, payload: bytes) -> None:
        try:
            volume = float(payload.decode("ascii").strip())
            if not 0 <= volume <= 100:
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            log.warning("ignored volume %r: expected a number from 0 to 100", payload[:40])
            return
        self.announcer.set_volume(int(round(volume)))
        self.store.save("volume", self.announcer.volume)
        self.bridge.publish(self.topics.volume, str(self.announcer.volume).encode(), retain=True)

    def _on_hermes(self, msg: Incoming) -> None:
        try:
            say = HermesSay.from_payload(msg.payload)
        except ValueError as exc:
            self.bridge.publish(HermesError.TOPIC, HermesError(str(exc), self.config.hermes.site_id).payload())
            return
        if say.site_id != self.config.hermes.site_id:
            return
        try:
            ann = make_announcement(say.text, max_text_bytes=self.config.limits.max_text_bytes,
                                    id=say.id or f"hermes-{time.monotonic_ns()}", source="hermes",
                                    volume=None if say.volume is None else int(round(say.volume * 100)),
                                    received=msg.received, site_id=say.site_id, session_id=say.session_id)
        except PayloadError as exc:
            self.bridge.publish(HermesError.TOPIC, HermesError(str(exc), say.site_id, session_id=say.session_id).payload())
            self.bridge.publish(HermesSayFinished.TOPIC, HermesSayFinished(say.id, say.site_id, say.session_id).payload())
            return
        self.announcer.submit(ann)

    # -- MQTT out -------------------------------------------------------------------------

    def _on_connected(self) -> None:
        self.bridge.publish(self.topics.availability, AVAILABLE, retain=True, qos=1)
        self.bridge.publish(self.topics.volume, str(self.announcer.volume).encode(), retain=True, qos=1)
        self._last_state = None
        self.publish_state()
        self.publish_discovery()

    def publish_discovery(self) -> None:
        if not self.config.homeassistant.enabled:
            return
        self.bridge.publish(discovery_topic(self.topics), discovery_payload(self.topics), retain=True, qos=1)

    def publish_state(self) -> None:
        """Publish the state, at most every STATE_INTERVAL seconds (a burst of 1000 messages
        must not become 5000 state messages); the last change is always published."""
        with self._state_lock:
            if self._state_timer is not None:
                return
            wait = self._state_sent_at + STATE_INTERVAL - time.monotonic()
            if wait > 0:
                self._state_timer = threading.Timer(wait, self._publish_state_now)
                self._state_timer.daemon = True
                self._state_timer.start()
                return
        self._publish_state_now()

    def _publish_state_now(self) -> None:
        with self._state_lock:
            self._state_timer = None
            self._state_sent_at = time.monotonic()
        try:
            stats = self.cache.stats()
        except CacheError:  # closed during a reload or shutdown: the next state will tell
            return
        state = SpeakerState(
            state="speaking" if self.announcer.speaking else "idle", volume=self.announcer.volume,
            queue=self.announcer.queue_length(),
            cache={"entries": stats.entries, "bytes": stats.bytes, "hits": stats.hits, "misses": stats.misses},
            version=__version__, last=(self.announcer.last_text or "")[:250] or None,
        )
        payload = state.payload()
        with self._state_lock:
            if payload == self._last_state:
                return
            self._last_state = payload
        self.bridge.publish(self.topics.state, payload, retain=True, qos=1)
        sdnotify.notify(f"STATUS={state.state}, queue {state.queue}, volume {state.volume}")

    def _emit(self, event: AnnouncementEvent, ann: Announcement) -> None:
        payload = event.payload()
        self.bridge.publish(self.topics.event, payload)
        if not event.final:
            return
        if ann.response_topic:
            self.bridge.publish(ann.response_topic, payload, correlation_data=ann.correlation_data)
        if ann.source == "hermes":
            site = ann.site_id or self.config.hermes.site_id
            if event.event == "failed":
                message = (event.error or {}).get("message", "failed")
                self.bridge.publish(HermesError.TOPIC, HermesError(message, site, context=ann.id,
                                                                   session_id=ann.session_id).payload())
            self.bridge.publish(HermesSayFinished.TOPIC, HermesSayFinished(ann.id, site, ann.session_id).payload())


def _preview(payload: bytes) -> str:
    """A short, printable echo of a refused payload for its event."""
    text = payload[:80].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text) + ("…" if len(payload) > 80 else "")
