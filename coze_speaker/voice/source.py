"""Where an announcement's audio comes from: the phrase cache, Coze, or the offline voice.

`AudioSource.open()` gives an `OpenSpeech`: a producer thread reads cached pieces from disk,
streams missing ones from Coze into the player and the cache at the same time, and fetches
later pieces while earlier ones play. When every piece is in the cache (`local`), nothing can
block: the player's own thread reads the entries, with no producer thread and no hand-off
between threads on a cache hit's path. When Coze cannot speak a piece, the offline voice
(if configured) does; while the circuit breaker says Coze is down, a missing piece goes to
the offline voice at once. The announcement's cancel token stops the producer.

A missing piece goes over the source's transport (`coze.transport`): the WebSocket API
streams while it synthesizes; with `auto`, a WebSocket failure before any audio is asked
over HTTP instead. Over HTTP, which answers only once the whole text is synthesized, the
first piece of several sentences asks for its first sentence alone
(`coze.first_sentence_first`) and then for the rest. Either way the audio is cached whole,
under the piece's one key: the key names the request (text, voice, rate…), not how it
travelled, so a repeat is one cache hit whichever transport voiced it first.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator, List, Optional, Union

from ..cache import CacheEntry, CacheError, CacheWriter, PhraseCache, cache_key
from ..cancel import CancelToken
from ..cue import StartCue
from ..coze import CozeClient, CozeError, CozeValidationError, WebSocketUnusable
from .breaker import CircuitBreaker
from .costguard import CostGuard
from .fallback import EspeakFallback, FallbackError
from .peers import PeerAudio, PeerShare, PeerTurn
from .request import SpeechRequest
from .textsplit import first_sentence

log = logging.getLogger(__name__)

#: How much audio the producer may hold ahead of the player (bytes): ~30 s at 48 kHz.
MAX_AHEAD_BYTES = 3_000_000
_END = object()


class AudioSource:
    """Speech audio for requests, from the cache when possible, else from Coze, else the
    offline voice."""

    def __init__(self, client: Optional[CozeClient], cache: Optional[PhraseCache], *,
                 guard: Optional[CostGuard] = None, host: Optional[str] = None,
                 fallback: Optional[EspeakFallback] = None,
                 breaker: Optional[CircuitBreaker] = None,
                 transport: str = "http", first_sentence_first: bool = False,
                 peers: Optional[PeerAudio] = None) -> None:
        self.client = client
        #: how a miss is fetched (`coze.transport`: http, websocket or auto)
        self.transport = transport
        #: over HTTP, a miss of several sentences asks for its first sentence alone first
        self.first_sentence_first = first_sentence_first
        self.cache = cache
        self.guard = guard
        self.fallback = fallback
        #: says whether Coze counts as down; None = always ask Coze
        self.breaker = breaker
        self.host = host or (client.host if client else "")
        #: the other speakers of the fleet (their caches, the audio one of them synthesizes), or None
        self.peers = peers

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

    def start_cue(self, request: SpeechRequest, token: CancelToken, *, use_cache: bool = True) -> Optional[StartCue]:
        """A cue for a broadcast whose start the fleet synchronizes (fleet.sync), else None:
        its audio is shared (so a plan comes with it), and the worker reports the start."""
        if (self.peers is None or not self.peers.sync or request.broadcast is None or not use_cache
                or self.cache is None or request.offline is not None):
            return None
        return StartCue(token)

    def open(self, request: SpeechRequest, *, use_cache: bool = True, start: bool = True,
             token: Optional[CancelToken] = None, cue: Optional[StartCue] = None) -> "OpenSpeech":
        """The request's audio; with start=False production begins at the first iteration
        (so the player can start first and its start-up overlaps the cache read). A `cue`
        is resolved before the first audio (the fleet's plan for a broadcast)."""
        speech = OpenSpeech(self, request, use_cache=use_cache, token=token, cue=cue)
        if start:
            speech.start()
        return speech


class OpenSpeech:
    """One request's audio, produced in the background; iterate it once for PCM chunks."""

    def __init__(self, source: AudioSource, request: SpeechRequest, *, use_cache: bool = True,
                 token: Optional[CancelToken] = None, cue: Optional[StartCue] = None) -> None:
        self.source = source
        #: a synchronized broadcast's start cue: resolved before the first audio is handed on
        self.cue = cue
        self.request = request
        self.use_cache = use_cache and source.cache is not None
        #: every HTTP request this speech made to Coze, retries included
        self.api_calls = 0
        #: pieces read from the cache, synthesized by Coze, spoken by the offline voice
        self.cache_hits = 0
        self.synthesized = 0
        self.fallback_pieces = 0
        #: pieces another speaker of the fleet delivered
        self.peer_pieces = 0
        #: bytes of the piece being synthesized that were already played (from a speaker that went silent)
        self._skip = 0
        self.error: Optional[BaseException] = None
        #: the part of a piece Coze had not voiced when it failed (the offline voice says it)
        self._unspoken: Optional[str] = None
        #: why the offline voice spoke (some or all of) this request, None if it did not
        self.fallback_reason: Optional[CozeError] = None
        self.token = token or CancelToken()
        self._closed = threading.Event()
        self._output = threading.Event()  # a chunk is waiting, or the production ended
        self._chunks: "queue.Queue[Union[bytes, BaseException, object]]" = queue.Queue()
        self._ahead_bytes = 0
        self._produced = False
        self._space = threading.Condition()
        self._thread: Optional[threading.Thread] = None  # the producer, made when needed (not for a local hit)
        self._started = threading.Lock()
        self._from_piece = 0  # where the producer thread begins (after pieces read in the player's thread)
        self._local: Optional[bool] = None
        self._entries: List[CacheEntry] = []  # the pieces' verified entries, when local
        self._unregister = self.token.on_cancel(self.close)

    def start(self) -> None:
        """Begin producing in the background (idempotent)."""
        if self._started.acquire(blocking=False):
            self._start_producer()

    @property
    def cached(self) -> bool:
        """Every piece so far came from the cache (not from Coze, not from the offline voice)."""
        return self.synthesized == 0 and self.fallback_pieces == 0 and self.api_calls == 0

    @property
    def stopped(self) -> bool:
        return self._closed.is_set()

    @property
    def local(self) -> bool:
        """Every piece is in this speaker's cache and nothing else has to happen (no fleet
        stream to send): iterating reads the entries in the caller's thread, which never
        blocks. Decided once, before production starts, by looking the pieces up (verified,
        not yet counted: each hit is counted once its first sound is out)."""
        if self._local is None:
            source, cache = self.source, self.source.cache
            self._local = False
            if (cache is not None and not self._started.locked() and self.use_cache
                    and self.request.offline is None and (self.request.broadcast is None or source.peers is None)):
                entries = []
                for piece in self.request.pieces:
                    entry = cache.lookup(source.key(piece, self.request), count=False)
                    if entry is None or entry.rate != self.request.sample_rate:
                        break
                    entries.append(entry)
                else:
                    self._entries, self._local = entries, True
        return self._local

    def __iter__(self) -> Iterator[bytes]:
        if self.local and self._started.acquire(blocking=False):
            yield from self._read_local()
            return
        yield from self._produced_chunks()

    def _read_local(self) -> Iterator[bytes]:
        """The cached pieces, read here. A piece that turns out to be gone or damaged before any
        of it played (evicted by another process since the check) is produced by the thread,
        from that piece on, as a miss would be."""
        cache = self.source.cache
        assert cache is not None
        for n, entry in enumerate(self._entries):
            if self._closed.is_set():
                return
            delivered = False
            try:
                for chunk in cache.read(entry):
                    if self._closed.is_set():
                        return
                    self._produced = True
                    self._output.set()
                    yield chunk
                    if not delivered:  # its first sound is out: the index's bookkeeping now
                        delivered = True
                        cache.count_hit(entry)
            except CacheError as exc:
                if delivered:
                    raise CozeError(f"cached audio became unreadable while playing: {exc}") from None
                log.warning("cached piece %d/%d: %s; producing it instead", n + 1, len(self._entries), exc)
                self._from_piece = n
                self._start_producer()
                yield from self._produced_chunks()
                return
            self.cache_hits += 1
        self._output.set()

    def _produced_chunks(self) -> Iterator[bytes]:
        """The producer thread's chunks, as they come."""
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
        self._output.set()
        self._unregister()

    def wait_audio(self, timeout: float) -> bool:
        """Start producing and wait up to `timeout` s for the first chunk (or the end, or an
        error): False while Coze is still thinking, so the queue can let ready audio go first."""
        self.start()
        return self._output.wait(timeout)

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _start_producer(self) -> None:
        self._thread = threading.Thread(target=self._produce, name="coze-speaker-synth", daemon=True)
        self._thread.start()

    def _put(self, chunk: bytes) -> None:
        """Hand a chunk to the player, waiting while too much audio is already ahead."""
        with self._space:
            while self._ahead_bytes > MAX_AHEAD_BYTES and not self._closed.is_set():
                self._space.wait(0.5)
            if self._closed.is_set():
                return
            self._ahead_bytes += len(chunk)
        self._chunks.put(chunk)
        self._output.set()
        self._produced = True

    def _time_left(self) -> Optional[float]:
        """How long Coze may take: the announcement's deadline bounds the wait for its first
        audio; once audio flows it plays to the end."""
        return None if self._produced else self.token.remaining()

    def _produce(self) -> None:
        try:
            if self.request.offline is not None:  # no Coze voice to ask for: no lookup, no request
                if self.source.fallback is None:
                    raise self.request.offline
                self.fallback_reason = self.request.offline
                log.warning("speaking with the offline voice: %s", self.request.offline)
            for n, piece in enumerate(self.request.pieces):
                if n < self._from_piece:
                    continue  # already played from the cache
                if self._closed.is_set():
                    break
                if self.fallback_reason is None:
                    try:
                        self._produce_piece(piece, first=n == 0)
                        continue
                    except CozeError as exc:
                        left = self._time_left()
                        if (self.source.fallback is None or isinstance(exc, CozeValidationError)
                                or (left is not None and left <= 0)):  # stale: not even the offline voice
                            raise
                        self.fallback_reason = exc
                        log.warning("speaking with the offline voice: %s", exc)
                unspoken, self._unspoken = self._unspoken, None
                self._produce_fallback(unspoken or piece)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self.error = exc
            self._chunks.put(exc)
        finally:
            self._chunks.put(_END)
            self._output.set()

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

    def _produce_piece(self, piece: str, *, first: bool = False) -> None:
        source, cache = self.source, self.source.cache
        self._unspoken = None
        key = source.key(piece, self.request)
        cue = self.cue if first else None
        if cue is not None:
            if source.peers is not None and self.request.broadcast is not None:
                source.peers.plan(key, self.request.sample_rate, self.request.broadcast, cue)
            else:
                cue.skip()
        if self.use_cache and cache is not None:
            entry = cache.lookup(key)
            if entry is not None and entry.rate == self.request.sample_rate:
                delivered = False
                share = self._share_hit(key, cue)
                try:
                    for chunk in cache.read(entry):
                        if share is not None:
                            share.write(chunk)
                        if self._closed.is_set():
                            return
                        self._put(chunk)
                        delivered = True
                    if share is not None:
                        share.commit()
                        share = None
                    self.cache_hits += 1
                    return
                except CacheError as exc:  # evicted or broken under our feet: synthesize instead
                    if delivered:
                        raise CozeError(f"cached audio became unreadable while playing: {exc}") from None
                    log.warning("%s; synthesizing instead", exc)
                finally:
                    if share is not None:
                        share.abort()
        share_it, played = False, 0
        if source.peers is not None and self.use_cache:
            try:  # another speaker has it, or is synthesizing it for this whole broadcast
                for chunk in source.peers.receive(key, self.request.sample_rate, broadcast=self.request.broadcast,
                                                  stopped=self._closed):
                    if self._closed.is_set():
                        return
                    self._put(chunk)
                    played += len(chunk)
                if self._closed.is_set():
                    return
                self.peer_pieces += 1
                return
            except PeerTurn as turn:
                share_it = turn.share
                log.debug("producing %s here: %s", key[:12], turn)
        if source.client is None:
            raise CozeError("the phrase is not cached and no Coze client is configured")
        permit = source.breaker.permit() if source.breaker is not None else None  # raises while Coze is down
        try:
            self._synthesize(piece, key, first=first, share=share_it, skip=played, cue=cue)
        except BaseException as exc:
            if permit is not None:
                permit.done(exc)
            raise
        if permit is not None:
            permit.done()

    def _share_hit(self, key: str, cue: Optional[StartCue]) -> Optional[PeerShare]:
        """The member elected for a broadcast streams its cached audio to the others (with
        the start plan, when `cue`)."""
        peers, broadcast = self.source.peers, self.request.broadcast
        if peers is None or broadcast is None or not peers.elected(key, self.request.sample_rate, broadcast):
            return None
        return peers.share(key, self.request.sample_rate, broadcast, cue=cue)

    def _synthesize(self, piece: str, key: str, *, first: bool = False, share: bool = False,
                    skip: int = 0, cue: Optional[StartCue] = None) -> None:
        """One piece from Coze, streamed to the player and into the cache (the cost guard and
        the request count are asked before every request, retries included). The cache entry
        is committed only once all of the piece's audio arrived whole. With `share`, the audio
        goes to the other speakers too (and they cache it by the same rule). The first `skip`
        bytes were already played (from a speaker that went silent): cached and shared, not played."""
        source, cache = self.source, self.source.cache
        assert source.client is not None
        writer = cache.writer(key, self.request.sample_rate) if self.use_cache and cache is not None else None
        shared = (source.peers.share(key, self.request.sample_rate, self.request.broadcast, cue=cue)
                  if share and source.peers is not None else None)
        self._skip = skip
        try:
            resumed = None
            if source.client.uses_websocket(self.request.params, source.transport):
                try:
                    resumed = self._stream(piece, writer, source.transport, shared)
                except WebSocketUnusable as exc:  # nothing was played or written
                    (log.info if exc.refused else log.warning)(
                        "asking Coze over HTTP: the WebSocket speech API failed before any audio (%s)", exc)
            if resumed is None:
                parts = self._http_parts(piece, first)
                resumed = False
                for n, part in enumerate(parts):
                    try:
                        resumed = self._stream(part, writer, "http", shared) or resumed
                    except CozeError:
                        if n:  # the first sentence was spoken: the offline voice says the rest
                            self._unspoken = " ".join(parts[n:])
                        raise
            self.synthesized += 1
            if resumed:  # not cached here, so not by the others either
                log.info("not caching %r: its audio was joined from two responses", piece[:40])
            else:
                if writer is not None:
                    writer.commit()
                if shared is not None:
                    shared.commit()
                    shared = None
        finally:
            if writer is not None:
                writer.abort()
            if shared is not None:
                shared.abort()

    def _http_parts(self, piece: str, first: bool) -> list:
        """The HTTP requests for a piece: its first sentence alone, then the rest, when it is
        the announcement's first piece, has several sentences and first_sentence_first is on
        (its first audio then waits for one sentence's synthesis, not the whole piece's)."""
        if first and self.source.first_sentence_first:
            split = first_sentence(piece)
            if split is not None:
                return list(split)
        return [piece]

    def _stream(self, text: str, writer: Optional[CacheWriter], transport: str,
                shared: Optional[PeerShare] = None) -> bool:
        """Stream one request's audio to the player, the cache writer and the other speakers;
        True when it was joined from two responses (not to be cached)."""
        assert self.source.client is not None
        stream = self.source.client.speech(text, self.request.params, remaining=self._time_left,
                                           before_request=lambda: self._before_request(text), transport=transport)
        for chunk in stream:
            if writer is not None:
                writer.write(chunk)
            if shared is not None:
                shared.write(chunk)
            if self._skip:
                chunk, self._skip = chunk[self._skip:], max(0, self._skip - len(chunk))
            if chunk and not self._closed.is_set():
                self._put(chunk)
        return stream.resumed

    def _before_request(self, piece: str) -> None:
        """Before every request to Coze (an HTTP request or a WebSocket session), retries
        included: nothing more once stopped, the spending caps count (or refuse) it, and so
        does `api_calls`."""
        if self._closed.is_set():
            raise CozeError("stopped before Coze was asked again")
        if self.source.guard is not None:
            self.source.guard.acquire(len(piece))
        self.api_calls += 1
