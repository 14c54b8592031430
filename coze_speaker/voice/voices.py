"""The account's Coze voices, known ahead: read from the state dir at start, refreshed in the
background, so a front end that must answer at once (Wyoming's `info`) never waits for Coze.

The voice list is not billed, but it is a request all the same: it is fetched when the saved
copy is missing, older than `VOICES_REFRESH` or from another endpoint, then once per
`VOICES_REFRESH`; a failed fetch is tried again after `VOICES_RETRY` seconds, doubling.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple

from ..coze import CozeClient
from ..errors import SpeakerError
from ..fsutil import atomic_write

log = logging.getLogger(__name__)

#: Seconds between two fetches of the voice list (a clone made meanwhile shows up after it, or
#: after a restart).
VOICES_REFRESH = 6 * 3600.0
#: Seconds before a failed fetch is tried again (doubling up to VOICES_REFRESH).
VOICES_RETRY = 60.0
#: The most voices kept (Coze pages by 100; an account has a few hundred).
MAX_VOICES = 2000


class CozeVoice(NamedTuple):
    """One voice of the account: its id, Coze's display name and its language code."""

    voice_id: str
    name: str
    language: str


class VoiceCatalog:
    """Thread-safe: `voices()` answers from memory; a thread keeps the list fresh."""

    def __init__(self, client: CozeClient, path: Path, *, refresh: float = VOICES_REFRESH,
                 retry: float = VOICES_RETRY, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.path = Path(path)
        self.refresh = refresh
        self.retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        self._voices: Tuple[CozeVoice, ...] = ()
        self._fetched_at: Optional[float] = None
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: voice lists fetched (each is one or more HTTP requests, one per page)
        self.fetches = 0
        #: told after each fetch, whether it changed the list (see on_change)
        self._listeners: List[Callable[[bool], None]] = []
        self._fetching = False

    @property
    def host(self) -> str:
        return self.client.host

    def voices(self) -> Tuple[CozeVoice, ...]:
        with self._lock:
            return self._voices

    @property
    def known(self) -> bool:
        """A voice list was read from the saved copy or fetched."""
        return self._loaded.is_set()

    def wait_known(self, timeout: float) -> bool:
        return self._loaded.wait(timeout)

    @property
    def fetching(self) -> bool:
        """The first fetch is due or under way: neither a saved copy nor a fetch has told the
        list yet (a front end that publishes the list waits for on_change)."""
        with self._lock:
            return self._fetching

    def on_change(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call listener(changed) from the fetching thread after each fetch, also a failed one
        (changed False); returns the undo. Home Assistant's voice select republishes its
        options from it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return remove

    def _tell(self, changed: bool) -> None:
        with self._lock:
            self._fetching = False
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(changed)
            except Exception:
                log.exception("a voice list listener failed")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Read the saved copy, then keep it fresh in the background (idempotent)."""
        if self._thread is not None:
            return
        self._load()
        with self._lock:
            self._fetching = not self._loaded.is_set()
        self._thread = threading.Thread(target=self._keep_fresh, name="coze-speaker-voices", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)  # a fetch in flight ends on its own (a daemon thread)
        self.client.close()

    def _keep_fresh(self) -> None:
        wait = self.retry
        while not self._stop.is_set():
            with self._lock:
                fetched_at = self._fetched_at
            due = 0.0 if fetched_at is None else fetched_at + self.refresh - self._clock()
            if due > 0:
                self._stop.wait(min(due, self.refresh))
                continue
            before = self.voices()
            try:
                self.fetch()
                wait = self.retry
                self._tell(self.voices() != before)
            except (SpeakerError, OSError) as exc:
                log.warning("cannot fetch the Coze voice list (%s); trying again in %.0f s", exc, wait)
                self._tell(False)
                if self._stop.wait(wait):
                    return
                wait = min(wait * 2, self.refresh)

    # -- fetch and the saved copy ------------------------------------------------------------

    def fetch(self) -> Tuple[CozeVoice, ...]:
        """Ask Coze for the voice list now and save it; raises CozeError."""
        self.fetches += 1
        found: List[CozeVoice] = []
        for raw in self.client.list_voices():
            voice = _voice(raw)
            if voice is not None:
                found.append(voice)
            if len(found) >= MAX_VOICES or self._stop.is_set():
                break
        voices = tuple(found)
        now = self._clock()
        with self._lock:
            self._voices, self._fetched_at = voices, now
        self._loaded.set()
        self._save(voices, now)
        log.info("%d Coze voice(s) known", len(voices))
        return voices

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text("utf-8"))
            if not isinstance(data, dict) or data.get("host") != self.host:
                return  # another endpoint's voices (or not ours): fetch anew
            voices = tuple(v for v in map(_voice, data.get("voices") or []) if v is not None)
            fetched_at = float(data["fetched_at"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring the unreadable voice list %s: %s", self.path, exc)
            return
        with self._lock:
            self._voices, self._fetched_at = voices[:MAX_VOICES], min(fetched_at, self._clock())
        self._loaded.set()

    def _save(self, voices: Tuple[CozeVoice, ...], fetched_at: float) -> None:
        data = {"host": self.host, "fetched_at": fetched_at,
                "voices": [{"voice_id": v.voice_id, "name": v.name, "language_code": v.language} for v in voices]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, json.dumps(data, ensure_ascii=False).encode("utf-8"), durable=False)
        except OSError as exc:  # the list still serves from memory
            log.warning("cannot save the voice list to %s: %s", self.path, exc)


def _voice(raw: object) -> Optional[CozeVoice]:
    """A voice-list entry, or None when it has no usable id."""
    if not isinstance(raw, dict):
        return None
    voice_id, name, language = raw.get("voice_id"), raw.get("name"), raw.get("language_code")
    if not isinstance(voice_id, str) or not voice_id.strip():
        return None
    return CozeVoice(voice_id, name if isinstance(name, str) and name.strip() else voice_id,
                     language if isinstance(language, str) else "")
