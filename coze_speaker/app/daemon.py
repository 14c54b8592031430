"""`coze-speaker run`: the daemon's lifecycle around the parts that wiring.py builds.

Start: build the parts, start the MQTT front end, restore the journal. Signals:
SIGTERM/SIGINT stop cleanly (publishing `offline`; what is queued stays in the journal),
SIGHUP reloads: the new config's parts are built first and only then take over, so a config
that cannot be applied leaves the running speaker as it was.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

from .. import __version__, sdnotify
from ..config import Config, ConfigError, load_config
from ..errors import SpeakerError
from ..memtrim import release_free_memory
from ..mqtt.bridge import MqttBridge
from ..mqtt.frontend import MqttFrontEnd
from ..mqtt.topics import say_command
from ..queue.announcement import Announcement
from ..queue.events import AnnouncementEvent, QueueEvent
from ..queue.journal import Journal, Restored
from ..queue.policy import QueueSettings
from ..queue.state import StateStore, device_file, load_choice
from ..queue.worker import Announcer
from ..sound.players import Player
from ..sound.speaker import Speaker
from ..voice.costguard import CostGuard
from .wiring import Sound, Voice, build_sound, build_voice, play_rate, retained_topics, voice_catalog

if TYPE_CHECKING:
    from ..voice.voices import VoiceCatalog
    from ..wyoming.server import WyomingServer

log = logging.getLogger(__name__)

#: How long a reload waits for the new broker connection before handing over the queue.
HANDOVER_WAIT = 5.0
#: How long a reload lets the announcement that plays finish; a longer one is cut off and
#: queued again under the new config.
RELOAD_FINISH_LIMIT = 120.0
#: The main loop's periodic tick (seconds; shorter with a watchdog). READY=1 does not wait
#: for it: the front end wakes the loop as soon as the broker accepted the connection.
TICK = 5.0
#: Seconds the queue must be idle before the C heap's free pages go back to the system.
TRIM_AFTER = 1.0


@dataclass
class Parts:
    """One config's running parts."""

    config: Config
    voice: Voice
    sound: Sound
    worker: Announcer
    front: MqttFrontEnd
    store: StateStore
    #: the Wyoming TTS service, when `wyoming.enabled`
    wyoming: "Optional[WyomingServer]" = None
    #: the account's voice list (Home Assistant's voice select, Wyoming's voices); None
    #: without a token or when neither uses it
    voices: "Optional[VoiceCatalog]" = None

    def close(self) -> None:
        if self.wyoming is not None:
            self.wyoming.stop()
        if self.voices is not None:
            self.voices.close()
        self.voice.close()
        self.sound.close()


class Daemon:
    """One running speaker. Build with a Config; `run()` blocks until a stop signal."""

    def __init__(self, config: Config, *, player: Optional[Player] = None) -> None:
        self._player_override = player
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self.parts = self._build(config)
        self._started = False
        self._stuck_reported = False

    # -- parts ----------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.parts.config

    @property
    def worker(self) -> Announcer:
        return self.parts.worker

    @property
    def speaker(self) -> Speaker:
        return self.parts.sound.speaker

    @property
    def player(self) -> Player:
        return self.parts.sound.player

    @property
    def bridge(self) -> MqttBridge:
        return self.parts.front.bridge

    def _build(self, config: Config, guard: Optional[CostGuard] = None) -> Parts:
        """Every part for this config, nothing started; on failure nothing is left open."""
        rate = play_rate(config)
        voice = build_voice(config, rate=rate, guard=guard, warn_without_token=True, fleet=True)
        voices: "Optional[VoiceCatalog]" = None
        try:
            sound = build_sound(config, rate=rate, player=self._player_override, device_retries=False)
            device = config.mqtt.device_id
            store = StateStore(config.state.dir, device)
            saved = store.load("volume")
            volume = saved if isinstance(saved, int) and 0 <= saved <= 100 else config.audio.volume
            front: Optional[MqttFrontEnd] = None

            def sink(event: QueueEvent) -> None:  # the front end is built next, with the worker
                if front is not None:
                    front.sink(event)

            old_journal = device_file(config.state.dir, "queue", device)  # the JSON list of earlier versions
            # the default voice and the chime chosen at run time, unless the config changed since
            chosen_voice = load_choice(store, "voice", config.coze.voice_id)
            if isinstance(chosen_voice, str) and chosen_voice and chosen_voice != config.coze.voice_id:
                voice.requests.voice_id = chosen_voice
            chime_on = load_choice(store, "chime", config.audio.chime)
            if isinstance(chime_on, bool):
                sound.chimes.enabled = chime_on
            worker = Announcer(voice.source, sound.speaker, sink, requests=voice.requests, chimes=sound.chimes,
                               settings=QueueSettings.from_config(config), volume=volume,
                               journal=Journal(old_journal.with_suffix(".jsonl"), legacy=[old_journal]),
                               volume_store=store)
            # one voice list for both front ends that show it
            if config.homeassistant.enabled or config.wyoming.enabled:
                voices = voice_catalog(config)
            front = MqttFrontEnd(config, worker, voice.cache, on_connected=self._wake.set, store=store,
                                 voices=voices, retained=retained_topics(config), fleet=voice.fleet)
            wyoming = _wyoming(config, voice, voices)
        except BaseException:
            if voices is not None:
                voices.close()
            voice.close()
            raise
        return Parts(config, voice, sound, worker, front, store, wyoming, voices)

    def _load_journal(self, parts: Parts) -> Restored:
        """What the last run left in the journal (read before the front end takes new messages,
        so none of those is read back as a restored one)."""
        journal = parts.worker.journal
        assert journal is not None
        return journal.load(max_text_bytes=parts.config.limits.max_text_bytes)

    def _restore(self, parts: Parts, restored: Restored) -> None:
        """Announcements accepted by the last run but not spoken: queue them again, or report
        them expired, or `failed` naming the field when an entry does not pass the checks."""
        for ann, error in restored.refused:
            parts.front.sink(AnnouncementEvent.about(ann, "failed", error=error.event_fields()))
        for ann in restored.expired:
            parts.front.sink(AnnouncementEvent.about(ann, "expired", reason="ttl"))
        for ann in restored.valid:
            parts.worker.submit(ann, restored=True)
        if any(restored):
            log.info("restored %d announcement(s) from the last run, %d had expired, %d could not be read",
                     len(restored.valid), len(restored.expired), len(restored.refused))
        parts.worker.persist()  # compaction: only what is pending now

    # -- running --------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._install_signals()
        parts = self.parts
        parts.worker.start()
        restored = self._load_journal(parts)
        if parts.voices is not None:
            parts.voices.start()  # before connecting: discovery waits for a list not yet known
        parts.front.start()
        if parts.wyoming is not None:
            parts.wyoming.start()
        self._restore(parts, restored)
        log.info("coze-speaker %s: device %r, %s at %d Hz on %r, broker %s:%d", __version__,
                 self.config.mqtt.device_id, self.player.name, parts.voice.rate, self.config.audio.device,
                 self.config.mqtt.host, self.config.mqtt.port)
        log.info("to make it speak: %s", say_command(self.config.mqtt))
        ready = False
        interval = sdnotify.watchdog_interval()
        trimmed: Optional[float] = None  # the worker's last_active when memory was last given back
        while not self._stop.is_set():
            trim_pending = self.parts.worker.last_active != trimmed
            self._wake.wait(timeout=min(interval or TICK, TRIM_AFTER if trim_pending else TICK))
            self._wake.clear()
            worker = self.parts.worker
            if (worker.last_active != trimmed and not worker.speaking and not worker.queue_length()
                    and time.monotonic() - worker.last_active >= TRIM_AFTER):
                trimmed = worker.last_active
                release_free_memory()
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
                ready = False
            if not ready and self.parts.front.connected.is_set():
                ready = True
                sdnotify.notify("READY=1")
            self._watchdog(interval)
        self.shutdown()
        return 0

    def _watchdog(self, interval: Optional[float]) -> None:
        """Ping systemd while the worker makes progress; once it is stuck (a thread that exists
        but moves nothing), ask for the restart at once: the journal keeps the queue."""
        if not interval:
            return
        if self.parts.worker.healthy():
            self._stuck_reported = False
            sdnotify.notify("WATCHDOG=1")
        elif not self._stuck_reported:
            self._stuck_reported = True
            log.error("the announcement worker has made no progress; asking systemd for a restart")
            sdnotify.notify("WATCHDOG=trigger")

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        parts = self.parts
        parts.worker.shutdown()
        parts.front.stop(offline=True)
        parts.close()
        log.info("stopped")

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _do_reload(self) -> None:
        old = self.parts
        source = old.config.source
        sdnotify.reloading()
        try:
            config = load_config(source)
        except ConfigError as exc:
            log.error("config reload failed, keeping the running config:\n%s", exc)
            sdnotify.notify(_status("reload failed, running on the previous config: " + str(exc)))
            return
        log.info("reloading the config from %s", source)
        try:  # the new parts first: a config that cannot be applied changes nothing
            new = self._build(config, guard=old.voice.guard)
        except (SpeakerError, OSError, ValueError) as exc:
            log.error("the new config cannot be applied, keeping the running config: %s", exc)
            sdnotify.notify(_status(f"reload failed, running on the previous config: {exc}"))
            return
        self._let_it_finish(old.worker)
        pending: List[Announcement] = old.worker.shutdown(why="reload")
        old.front.stop(offline=False)
        if old.wyoming is not None:  # a request in flight is cut off; the new one binds the port at once
            old.wyoming.stop()
        if old.voices is not None:
            old.voices.close()
        old.voice.close()
        if new.sound.player is not old.sound.player:
            old.sound.close()
        self.parts = new
        new.worker.start()
        if new.voices is not None:
            new.voices.start()
        new.front.start()
        if new.wyoming is not None:
            new.wyoming.start()
        new.front.connected.wait(HANDOVER_WAIT)  # their events go out on the new connection
        for ann in pending:
            new.worker.submit(ann, restored=True)
        new.worker.persist()
        sdnotify.notify("STATUS=config reloaded")

    def _let_it_finish(self, worker: Announcer) -> None:
        """What plays finishes under the old config (bounded; a stop signal cuts it short and it
        is queued again); nothing new starts meanwhile, new messages still queue."""
        interval = sdnotify.watchdog_interval()
        limit = time.monotonic() + RELOAD_FINISH_LIMIT
        while not worker.finish_current(timeout=min(interval or 1.0, 1.0)):
            self._watchdog(interval)
            if self._stop.is_set() or time.monotonic() > limit:
                return


def _wyoming(config: Config, voice: Voice, voices: "Optional[VoiceCatalog]") -> "Optional[WyomingServer]":
    """The Wyoming TTS service over this config's audio source (not started), or None. Its
    module is imported only here, so a daemon without it does not load it. It shares the
    voice list with Home Assistant's voice select (starting it again does nothing)."""
    if not config.wyoming.enabled:
        return None
    from ..wyoming.server import WyomingServer

    return WyomingServer(config, voice.source, voice.requests, catalog=voices)


def _status(text: str) -> str:
    """A STATUS= line for `systemctl status` (one line, bounded)."""
    return "STATUS=" + " ".join(text.split())[:200]
