"""Where an announcement's audio comes from: the phrase cache, Coze, or the offline voice.

`AudioSource.open()` gives an `OpenSpeech`: a producer thread reads cached pieces from disk,
streams missing ones from Coze into the player and the cache at the same time, and fetches
later pieces while earlier ones play. When Coze cannot speak a piece, the offline voice
(if configured) does. The announcement's cancel token stops the producer.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator, Optional, Union

from ..cache import CacheError, PhraseCache, cache_key
from ..cancel import CancelToken
from ..coze import CozeClient, CozeError, CozeValidationError
from .costguard import CostGuard
from .fallback import EspeakFallback, FallbackError
from .request import SpeechRequest

log = logging.getLogger(__name__)

#: How much audio the producer may hold ahead of the player (bytes): ~30 s at 48 kHz.
MAX_AHEAD_BYTES = 3_000_000
_END = object()


class AudioSource:
    """Speech audio for requests, from the cache when possible, else from Coze, else the
    offline voice."""

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
        return (self.cache is not None and request.offline is None
                and all(self.cache.contains(self.key(p, request)) for p in request.pieces))

    def open(self, request: SpeechRequest, *, use_cache: bool = True, start: bool = True,
             token: Optional[CancelToken] = None) -> "OpenSpeech":
        """The request's audio; with start=False production begins at the first iteration
        (so the player can start first and its start-up overlaps the cache read)."""
        speech = OpenSpeech(self, request, use_cache=use_cache, token=token)
        if start:
            speech.start()
        return speech


class OpenSpeech:
    """One request's audio, produced in the background; iterate it once for PCM chunks."""

    def __init__(self, source: AudioSource, request: SpeechRequest, *, use_cache: bool = True,
                 token: Optional[CancelToken] = None) -> None:
        self.source = source
        self.request = request
        self.use_cache = use_cache and source.cache is not None
        #: every HTTP request this speech made to Coze
        self.api_calls = 0
        #: pieces read from the cache, synthesized by Coze, spoken by the offline voice
        self.cache_hits = 0
        self.synthesized = 0
        self.fallback_pieces = 0
        self.error: Optional[BaseException] = None
        #: why the offline voice spoke (some or all of) this request, None if it did not
        self.fallback_reason: Optional[CozeError] = None
        self.token = token or CancelToken()
        self._closed = threading.Event()
        self._chunks: "queue.Queue[Union[bytes, BaseException, object]]" = queue.Queue()
        self._ahead_bytes = 0
        self._space = threading.Condition()
        self._thread = threading.Thread(target=self._produce, name="coze-speaker-synth", daemon=True)
        self._started = threading.Lock()
        self._unregister = self.token.on_cancel(self.close)

    def start(self) -> None:
        """Begin producing in the background (idempotent)."""
        if self._started.acquire(blocking=False):
            self._thread.start()

    @property
    def cached(self) -> bool:
        """Every piece so far came from the cache (not from Coze, not from the offline voice)."""
        return self.synthesized == 0 and self.fallback_pieces == 0 and self.api_calls == 0

    @property
    def stopped(self) -> bool:
        return self._closed.is_set()

    def __iter__(self) -> Iterator[bytes]:
        self.start()
        while True:
            item = self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            with self._space:
                self._ahead_bytes -= len(item)
                self._space.notify_all()
            yield item

    def close(self) -> None:
        """Stop producing and end the iteration; a piece already being downloaded still
        completes into the cache (it is paid for)."""
        self._closed.set()
        with self._space:
            self._space.notify_all()
        self._chunks.put(_END)
        self._unregister()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _put(self, chunk: bytes) -> None:
        """Hand a chunk to the player, waiting while too much audio is already ahead."""
        with self._space:
            while self._ahead_bytes > MAX_AHEAD_BYTES and not self._closed.is_set():
                self._space.wait(0.5)
            if self._closed.is_set():
                return
            self._ahead_bytes += len(chunk)
        self._chunks.put(chunk)

    def _produce(self) -> None:
        try:
            if self.request.offline is not None:  # no Coze voice to ask for: no lookup, no request
                if self.source.fallback is None:
                    raise self.request.offline
                self.fallback_reason = self.request.offline
                log.warning("speaking with the offline voice: %s", self.request.offline)
            for piece in self.request.pieces:
                if self._closed.is_set():
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
        reason = self.fallback_reason
        assert reason is not None and self.source.fallback is not None
        try:
            pcm = self.source.fallback.synthesize(piece, self.request.sample_rate)
        except FallbackError as exc:
            raise CozeError(f"{reason}; the offline voice failed too: {exc}",
                            code=reason.code if isinstance(reason.code, int) else None,
                            logid=reason.logid) from None
        self.fallback_pieces += 1
        step = 16384
        for i in range(0, len(pcm), step):
            if self._closed.is_set():
                return
            self._put(pcm[i:i + step])

    def _produce_piece(self, piece: str) -> None:
        source, cache = self.source, self.source.cache
        key = source.key(piece, self.request)
        if self.use_cache and cache is not None:
            entry = cache.lookup(key)
            if entry is not None and entry.rate == self.request.sample_rate:
                delivered = False
                try:
                    for chunk in cache.read(entry):
                        if self._closed.is_set():
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
        self.synthesized += 1
        writer = cache.writer(key, self.request.sample_rate) if self.use_cache and cache is not None else None
        try:
            for chunk in stream:
                if writer is not None:
                    writer.write(chunk)
                if not self._closed.is_set():
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

