"""Playback of signed 16-bit little-endian mono PCM through ALSA.

One small interface (:class:`Player`) with four back ends:

* :class:`AlsaPlayer` (alsa_player.py) streams in-process through pyalsaaudio: no process
  to start, and it can keep the device open (warm) between announcements.
* :class:`AplayPlayer` streams into an ``aplay`` child process (alsa-utils). Playback
  starts with the first chunk, any ALSA device name works, and a crash or hang stays
  in the child: the caller only ever sees a :class:`PlayerError`.
* :class:`SimpleaudioPlayer` plays one whole buffer through the ``simpleaudio``
  extension (no streaming, always the ALSA "default" device).
* :class:`NullPlayer` discards the audio (optionally paced like a real device), for
  benchmarks.

``play()`` blocks until the audio is played (returns True), stopped by :meth:`Player.stop`
from another thread (returns False), or fails (raises :class:`PlayerError`). Errors
raised by the chunk iterator itself (e.g. a network error while streaming) reach the
caller unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from ..cue import StartCue
from ..errors import SpeakerError

log = logging.getLogger(__name__)

BUSY = "busy"
MISSING = "missing"
FAILED = "failed"
KINDS = (BUSY, MISSING, FAILED)

# Substrings of aplay's / libasound's / simpleaudio's error text, checked in this order.
_BUSY_MARKERS = ("Device or resource busy", "CODE: -16 ")
_MISSING_MARKERS = (
    "No such file or directory",
    "No such device",
    "cannot find card",
    "Cannot get card index",
    "Unknown PCM",
    "CODE: -2 ",
    "CODE: -19 ",
)

_POLL = 0.02  # seconds between checks of the stop flag / child state


class PlayerError(SpeakerError):
    """Playback failed. ``kind`` is 'busy', 'missing' or 'failed'; the message is one line."""

    def __init__(self, message: str, kind: str = FAILED):
        message = " ".join(str(message).split()) or "audio playback failed"
        super().__init__(message)
        self.message = message
        self.kind = kind if kind in KINDS else FAILED
        self.code = f"audio_{self.kind}"


def classify_error(text: str) -> str:
    """Map ALSA error text (aplay stderr, simpleaudio message) to 'busy', 'missing' or 'failed'."""
    if any(m in text for m in _BUSY_MARKERS):
        return BUSY
    if any(m in text for m in _MISSING_MARKERS):
        return MISSING
    return FAILED


def device_error_message(device: str, kind: str, detail: str = "") -> str:
    """``audio device 'hw:5,0' is missing: <detail>`` and friends."""
    if kind == BUSY:
        head = f"audio device '{device}' is busy"
    elif kind == MISSING:
        head = f"audio device '{device}' is missing"
    else:
        head = f"playback on audio device '{device}' failed"
    detail = " ".join(detail.split())
    return f"{head}: {detail}" if detail else head


def _check_rate(rate: Any) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"sample rate must be a positive int, not {rate!r}")
    return rate


# --------------------------------------------------------------------------- sources

_CHUNK, _END, _ERROR = "chunk", "end", "error"


class Ready:
    """Chunks that are already here (a cache read, a recording): taking the next one never
    blocks, so the player takes them in its own thread. A thread and two hand-offs between
    threads are what a cache hit would otherwise pay before its first byte reaches the device."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)


class _Source:
    """Pull chunks from an iterable on a daemon thread (in the caller's thread if it is Ready).

    The player then never blocks on a slow producer (a TTS stream): it waits on a queue
    in short slices and can notice stop() or a dead child at once. The queue is bounded,
    so a fast producer is held back by playback. Once the end (or an error) has been
    seen, ``get`` keeps returning it.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._iterable = chunks
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._cancel = threading.Event()
        self._final: Optional[Tuple[str, Any]] = None
        self._thread = threading.Thread(target=self._run, name="player-source", daemon=True)
        self._started = False
        self._inline: Optional[Iterator[bytes]] = iter(chunks) if isinstance(chunks, Ready) else None

    def start(self) -> None:
        """Begin pulling (idempotent): the aplay player first spawns its child, so the
        producer's work overlaps the child's start-up instead of delaying it."""
        if not self._started and self._inline is None:
            self._started = True
            self._thread.start()

    def _put(self, item: Tuple[str, Any]) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        iterator = None
        try:
            iterator = iter(self._iterable)
            for chunk in iterator:
                if self._cancel.is_set():
                    break
                if chunk:
                    if not self._put((_CHUNK, bytes(chunk))):
                        break
            else:
                self._put((_END, None))
        except BaseException as exc:  # handed to the playing thread, which re-raises it
            self._put((_ERROR, exc))
        finally:
            if self._cancel.is_set() and iterator is not None:
                _close_iterator(iterator)

    @property
    def ended(self) -> bool:
        return self._final is not None

    def get(self, timeout: float) -> Optional[Tuple[str, Any]]:
        """Next (kind, value), or None if nothing arrived within ``timeout``."""
        if self._final is not None:
            return self._final
        if self._inline is not None:
            return self._take_inline()
        self.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item[0] != _CHUNK:
            self._final = item
        return item

    def _take_inline(self) -> Tuple[str, Any]:
        assert self._inline is not None
        try:
            for chunk in self._inline:
                if chunk:
                    return (_CHUNK, bytes(chunk))
            self._final = (_END, None)
        except Exception as exc:  # the player re-raises it, as it does the thread's
            self._final = (_ERROR, exc)
        return self._final

    def cancel(self) -> None:
        self._cancel.set()
        if self._inline is not None and self._final is None:
            _close_iterator(self._inline)  # a stop: the generators behind it end now, in this thread


def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # pragma: no cover - best effort
            pass


#: Audio kept for replay on a retry within one play() (~10 s at 48 kHz). A longer
#: announcement that fails later is handed back as a PlayerError, and the queue replays it
#: from the cache or the source: memory stays bounded whatever the text's length.
MAX_REPLAY_BYTES = 1_000_000


class _Replay:
    """The audio consumed so far by this play(), until it grows past ``limit``."""

    def __init__(self, limit: int = MAX_REPLAY_BYTES) -> None:
        self.limit = limit
        self.chunks: List[bytes] = []
        self.size = 0
        self.overflowed = False

    def append(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.overflowed, self.chunks = True, []
        else:
            self.chunks.append(chunk)

class _Stopped(Exception):
    """Internal: stop() was requested."""


class _Failure(Exception):
    """Internal: one attempt failed (may be retried)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------- base


class Player:
    """Plays s16le mono PCM. Subclasses implement :meth:`play`."""

    name = "player"
    #: attempts per play() and the first pause between them (device back ends set their own)
    retries = 1
    backoff = 0.0
    attempts = 0
    #: play_cued starts the device itself at a cue's instant, compensating its own delay;
    #: with the others the speaker hands over the first audio at the instant (best effort)
    starts_on_cue = False

    def __init__(self, *, wake_ms: int = 0) -> None:
        self._stop_event = threading.Event()
        self.stopped = False  # True when the last play() ended because of stop()
        #: Silence played right after the device is opened, so an amplifier or DAC waking from
        #: standby does not clip the first syllable. Only the alsa player can keep the device
        #: open between announcements; every other back end opens it for each play.
        self.wake_ms = max(0, int(wake_ms))

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        """Play the PCM chunks (whole 16-bit frames) at ``rate``.

        Blocks until played (True), stopped (False) or raises PlayerError. Chunks may
        arrive slowly: playback starts with the first chunk where the back end can stream.
        """
        raise NotImplementedError

    def play_cued(self, chunks: Iterable[bytes], rate: int, cue: StartCue) -> bool:
        """play(), with the first audio frame out of the device at the instant of `cue`;
        only for a back end with starts_on_cue."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the current playback (thread-safe); play() then returns False promptly."""
        self._stop_event.set()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "Player":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # helpers for subclasses
    def _play_retrying(self, chunks: Iterable[bytes], rate: int,
                       attempt: "Callable[[_Source, _Replay, int], bool]", *, name: str,
                       start_source: bool = False,
                       before_retry: "Optional[Callable[[_Failure], None]]" = None) -> bool:
        """The retry policy every device back end shares: up to `self.retries` attempts with
        exponential backoff, replaying what was consumed while it is small (else the caller
        replays it from its source); a stop ends it at once."""
        rate = _check_rate(rate)
        self._begin()
        self.attempts = 0
        source = _Source(chunks)
        if start_source:
            source.start()
        consumed = _Replay()
        try:
            last: Optional[_Failure] = None
            for number in range(1, self.retries + 1):
                self.attempts = number
                try:
                    return attempt(source, consumed, rate)
                except _Failure as failure:
                    if self._stop_event.is_set():
                        raise _Stopped() from None
                    last = failure
                    if consumed.overflowed:
                        break  # too long to replay from memory
                    logging.getLogger(type(self).__module__).info("%s attempt %d/%d: %s", name, number,
                                                                  self.retries, failure.message)
                    if before_retry is not None:
                        before_retry(failure)
                    if number < self.retries and self._sleep(self.backoff * (2 ** (number - 1))):
                        raise _Stopped() from None
            assert last is not None
            raise PlayerError(last.message, last.kind)
        except _Stopped:
            return self._stopped_result()
        finally:
            source.cancel()

    def _begin(self) -> None:
        # A stop() that arrives before play() starts is meant for an earlier playback.
        self._stop_event.clear()
        self.stopped = False

    def _wake(self, rate: int) -> bytes:
        """wake_ms of silence at rate, in whole frames (b"" when wake_ms is 0)."""
        return bytes(2 * (rate * self.wake_ms // 1000))

    def _stopped_result(self) -> bool:
        self.stopped = True
        return False

    def _next(self, source: _Source, check=None) -> Tuple[str, Any]:
        """Wait for the next source item; raise _Stopped on stop(); ``check()`` runs each slice."""
        while True:
            if self._stop_event.is_set():
                raise _Stopped()
            item = source.get(_POLL)
            if item is not None:
                if item[0] == _ERROR:
                    raise item[1]
                return item
            if check is not None:
                check()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stop() was requested."""
        return self._stop_event.wait(max(0.0, seconds))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"



# --------------------------------------------------------------------------- null


class NullPlayer(Player):
    """Consume and discard the chunks (benchmarks).

    With ``realtime=True`` it is paced like a device with a ``buffer`` seconds buffer:
    a chunk is accepted once the previous audio is within ``buffer`` of its end, and
    play() returns when the audio would have finished; stop() interrupts it.
    """

    name = "null"

    def __init__(self, device: str = "null", *, realtime: bool = False, buffer: float = 0.1, wake_ms: int = 0):
        super().__init__(wake_ms=wake_ms)
        self.device = device
        self.realtime = bool(realtime)
        self.buffer = max(0.0, float(buffer))
        self.bytes_played = 0  # of the last play()
        self.chunks_played = 0
        self.total_bytes = 0  # over all play() calls

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        rate = _check_rate(rate)
        self._begin()
        self.bytes_played = 0
        self.chunks_played = 0
        source = _Source(chunks)
        clock = None  # monotonic time at which the audio accepted so far ends
        wake = self._wake(rate)  # the device is "opened" for every play
        try:
            while True:
                if wake:
                    kind, chunk, wake = _CHUNK, wake, b""
                else:
                    kind, chunk = self._next(source)
                if kind == _END:
                    break
                self.bytes_played += len(chunk)
                self.total_bytes += len(chunk)
                self.chunks_played += 1
                if self.realtime:
                    now = time.monotonic()
                    if clock is None or clock < now:
                        clock = now  # underrun: the device restarts
                    clock += len(chunk) / (2.0 * rate)
                    if self._sleep(clock - self.buffer - time.monotonic()):
                        raise _Stopped()
            if self.realtime and clock is not None and self._sleep(clock - time.monotonic()):
                raise _Stopped()
            return True
        except _Stopped:
            return self._stopped_result()
        finally:
            source.cancel()
