"""From a SpeechRequest to sound: the phrase cache or Coze streaming into it, shaped, played.

`AudioSource.open()` starts a producer thread at once: cached pieces are read from disk,
missing ones stream from Coze into the player and the cache at the same time, and later
pieces are fetched while earlier ones play. Opening the next announcement early is how the
queue synthesizes ahead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from ..cache import CacheError, PhraseCache, cache_key
from .costguard import CostGuard
from ..coze import CozeClient, CozeError, CozeValidationError
from .fallback import EspeakFallback, FallbackError
from ..sound.players import Player
from ..sound.shaping import shape
from .request import SpeechRequest

log = logging.getLogger(__name__)

#: How much audio the producer may hold ahead of the player (bytes): ~30 s at 48 kHz.
MAX_AHEAD_BYTES = 3_000_000
_END = object()


class AudioSource:
    """Speech audio for requests, from the cache when possible, else from Coze."""

    def __init__(self, client: Optional[CozeClient], cache: Optional[PhraseCache], *,
                 guard: Optional[CostGuard] = None, host: Optional[str] = None,
                 fallback: Optional[EspeakFallback] = None) -> None:
        self.client = client
        self.cache = cache
        self.guard = guard
        self.fallback = fallback
        self.host = host or (client.host if client else "")

    def key(self, piece: str, request: SpeechRequest) -> str:
        p = request.params
        return cache_key(self.host, piece, {
            "voice_id": p.voice_id, "emotion": p.emotion, "emotion_scale": p.emotion_scale,
            "speed": p.speed, "loudness_rate": p.loudness_rate, "context_texts": p.context_texts,
            "response_format": p.response_format, "sample_rate": p.sample_rate,
        })

    def is_cached(self, request: SpeechRequest) -> bool:
        """True when every piece is on disk (no hit or miss is counted)."""
        return self.cache is not None and all(self.cache.contains(self.key(p, request)) for p in request.pieces)

    def open(self, request: SpeechRequest, *, use_cache: bool = True, start: bool = True) -> "OpenSpeech":
        """The request's audio; with start=False production begins at the first iteration
        (so the player can start first and its start-up overlaps the cache read)."""
        speech = OpenSpeech(self, request, use_cache=use_cache)
        if start:
            speech.start()
        return speech


class OpenSpeech:
    """One request's audio, produced in the background; iterate it once for PCM chunks."""

    def __init__(self, source: AudioSource, request: SpeechRequest, *, use_cache: bool = True) -> None:
        self.source = source
        self.request = request
        self.use_cache = use_cache and source.cache is not None
        self.api_calls = 0
        self.cache_hits = 0
        self.error: Optional[BaseException] = None
        #: why the offline voice spoke (some or all of) this request, None if it did not
        self.fallback_reason: Optional[CozeError] = None
        self._chunks: queue.Queue = queue.Queue()
        self._ahead_bytes = 0
        self._space = threading.Condition()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="coze-speaker-synth", daemon=True)
        self._started = threading.Lock()

    def start(self) -> None:
        """Begin producing in the background (idempotent)."""
        if self._started.acquire(blocking=False):
            self._thread.start()

    @property
    def cached(self) -> bool:
        """No API call was made (so far)."""
        return self.api_calls == 0

    def __iter__(self) -> Iterator[bytes]:
        self.start()
        while True:
            item = self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            with self._space:
                self._ahead_bytes -= len(item)
                self._space.notify_all()
            yield item

    def cancel(self) -> None:
        """Stop producing and end the iteration; a piece already being downloaded still
        completes into the cache (it is paid for)."""
        self._cancelled.set()
        with self._space:
            self._space.notify_all()
        self._chunks.put(_END)

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _put(self, chunk: bytes) -> None:
        """Hand a chunk to the player, waiting while too much audio is already ahead."""
        with self._space:
            while self._ahead_bytes > MAX_AHEAD_BYTES and not self._cancelled.is_set():
                self._space.wait(0.5)
            if self._cancelled.is_set():
                return
            self._ahead_bytes += len(chunk)
        self._chunks.put(chunk)

    def _produce(self) -> None:
        try:
            for piece in self.request.pieces:
                if self._cancelled.is_set():
                    break
                if self.fallback_reason is None:
                    try:
                        self._produce_piece(piece)
                        continue
                    except CozeError as exc:
                        if self.source.fallback is None or isinstance(exc, CozeValidationError):
                            raise
                        self.fallback_reason = exc
                        log.warning("speaking with the offline voice: %s", exc)
                self._produce_fallback(piece)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self.error = exc
            self._chunks.put(exc)
        finally:
            self._chunks.put(_END)

    def _produce_fallback(self, piece: str) -> None:
        """The offline voice for one piece: never cached, so Coze's voice returns when it can."""
        try:
            pcm = self.source.fallback.synthesize(piece, self.request.sample_rate)
        except FallbackError as exc:
            raise CozeError(f"{self.fallback_reason}; the offline voice failed too: {exc}",
                            code=self.fallback_reason.code, logid=self.fallback_reason.logid) from None
        step = 16384
        for i in range(0, len(pcm), step):
            if self._cancelled.is_set():
                return
            self._put(pcm[i:i + step])

    def _produce_piece(self, piece: str) -> None:
        source, cache = self.source, self.source.cache
        key = source.key(piece, self.request)
        if self.use_cache:
            entry = cache.lookup(key)
            if entry is not None and entry.rate == self.request.sample_rate:
                delivered = False
                try:
                    for chunk in cache.read(entry):
                        if self._cancelled.is_set():
                            return
                        self._put(chunk)
                        delivered = True
                    self.cache_hits += 1
                    return
                except CacheError as exc:  # evicted or broken under our feet: synthesize instead
                    if delivered:
                        raise CozeError(f"cached audio became unreadable while playing: {exc}") from None
                    log.warning("%s; synthesizing instead", exc)
        if source.client is None:
            raise CozeError("the phrase is not cached and no Coze client is configured")
        if source.guard is not None:
            source.guard.acquire(len(piece))
        stream = source.client.speech(piece, self.request.params)
        self.api_calls += 1
        writer = cache.writer(key, self.request.sample_rate) if self.use_cache else None
        try:
            for chunk in stream:
                if writer is not None:
                    writer.write(chunk)
                if not self._cancelled.is_set():
                    self._put(chunk)
            if writer is not None:
                if stream.resumed:
                    log.info("not caching %r: its audio was joined from two responses", piece[:40])
                    writer.abort()
                else:
                    writer.commit()
        finally:
            if writer is not None:
                writer.abort()


@dataclass
class SpeakResult:
    """How one announcement went: played to the end or stopped, and what it cost."""

    played: bool
    cached: bool
    api_calls: int
    first_audio: Optional[float] = None
    duration: float = 0.0
    fallback: Optional[CozeError] = None


class Speaker:
    """Plays OpenSpeech through a player with the sound shaping of the moment."""

    def __init__(self, player: Player, *, rate: int, preroll_ms: int = 0) -> None:
        self.player = player
        self.rate = rate
        self.preroll_ms = preroll_ms

    def speak(self, speech: OpenSpeech, *, volume: int = 100, chime: Optional[bytes] = None,
              repeat: int = 1, cancel: Optional[threading.Event] = None,
              on_first_audio: Optional[Callable[[float], None]] = None) -> SpeakResult:
        """Play the speech (repeat times) unless `cancel` is set; raises CozeError or PlayerError.

        `cancel` is checked before every chunk, so a stop that comes before the player
        has even started is not lost; `stop()` silences what the device already has.
        """
        cancel = cancel or threading.Event()
        first: list = []
        recording: Optional[list] = [] if repeat > 1 else None

        def speech_chunks() -> Iterator[bytes]:
            for chunk in speech:
                if recording is not None:
                    recording.append(chunk)
                yield chunk

        def guarded(stream: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in stream:
                if cancel.is_set():
                    return
                if not first:
                    first.append(time.monotonic())
                    if on_first_audio:
                        on_first_audio(first[0])
                yield chunk

        started = time.monotonic()
        played = False
        try:
            for round_no in range(repeat):
                if cancel.is_set():
                    break
                chunks = speech_chunks() if round_no == 0 else iter(recording or [])
                played = self.player.play(guarded(shape(chunks, rate=self.rate, volume=volume, chime=chime,
                                                        preroll_ms=self.preroll_ms)), self.rate)
                if not played:
                    break
        finally:
            speech.cancel()
        played = bool(played) and not cancel.is_set()
        return SpeakResult(played=played, cached=speech.cached, api_calls=speech.api_calls,
                           first_audio=first[0] if first else None, duration=time.monotonic() - started,
                           fallback=speech.fallback_reason)

    def stop(self, speech: Optional[OpenSpeech] = None, cancel: Optional[threading.Event] = None) -> None:
        """Silence now, from any thread: flag the announcement, end its stream, stop the device."""
        if cancel is not None:
            cancel.set()
        if speech is not None:
            speech.cancel()
        self.player.stop()
