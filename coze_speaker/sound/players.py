"""Playback of signed 16-bit little-endian mono PCM through ALSA.

One small interface (:class:`Player`) with three back ends:

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
import os
import queue
import select
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Iterable, List, Optional, Tuple

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


class _Source:
    """Pull chunks from an iterable on a daemon thread.

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

    def start(self) -> None:
        """Begin pulling (idempotent): the aplay player first spawns its child, so the
        producer's work overlaps the child's start-up instead of delaying it."""
        if not self._started:
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
                close = getattr(iterator, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # pragma: no cover - best effort
                        pass

    @property
    def ended(self) -> bool:
        return self._final is not None

    def get(self, timeout: float) -> Optional[Tuple[str, Any]]:
        """Next (kind, value), or None if nothing arrived within ``timeout``."""
        self.start()
        if self._final is not None:
            return self._final
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item[0] != _CHUNK:
            self._final = item
        return item

    def cancel(self) -> None:
        self._cancel.set()


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

    def __init__(self) -> None:
        self._stop_event = threading.Event()
        self.stopped = False  # True when the last play() ended because of stop()

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        """Play the PCM chunks (whole 16-bit frames) at ``rate``.

        Blocks until played (True), stopped (False) or raises PlayerError. Chunks may
        arrive slowly: playback starts with the first chunk where the back end can stream.
        """
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
    def _begin(self) -> None:
        # A stop() that arrives before play() starts is meant for an earlier playback.
        self._stop_event.clear()
        self.stopped = False

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


# --------------------------------------------------------------------------- aplay


def _pipe_capacity(fd: int) -> int:
    try:
        import fcntl

        return int(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032)))
    except Exception:
        return 65536


def _kill(proc: "subprocess.Popen[bytes]") -> None:
    try:
        if proc.poll() is None:
            proc.kill()
    except OSError:  # already gone
        pass


def _reap(proc: "subprocess.Popen[bytes]", timeout: float = 2.0) -> None:
    """Kill and wait, bounded: a child stuck in a driver (D state) must not hang us."""
    _kill(proc)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable child
        log.warning("aplay (pid %d) does not die", proc.pid)


class AplayPlayer(Player):
    """Stream into ``aplay -q -N -t raw -f S16_LE -r RATE -c 1 -D DEVICE -B 100000 -``.

    ``retries`` is the number of attempts (at least one) for a playback whose device
    cannot be opened or whose aplay dies; the chunks consumed so far are kept in memory
    and replayed on the next attempt, with an exponential ``backoff`` between attempts.
    ``attempts`` tells how many the last play() made.

    Nothing aplay does can hang the caller: writes to its stdin are non-blocking and
    give up after ``stall_timeout`` seconds without progress; after the last chunk,
    aplay gets the remaining audio's length plus ``exit_grace`` seconds to finish.
    """

    name = "aplay"

    def __init__(
        self,
        device: str = "default",
        *,
        aplay: str = "aplay",
        retries: int = 3,
        backoff: float = 0.2,
        buffer_time_us: int = 100_000,
        stall_timeout: float = 5.0,
        exit_grace: float = 3.0,
    ):
        super().__init__()
        self.device = device or "default"
        self.aplay = aplay
        self.retries = max(1, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.buffer_time_us = int(buffer_time_us)
        self.stall_timeout = float(stall_timeout)
        self.exit_grace = float(exit_grace)
        self.attempts = 0
        self.nonblocking = True  # -N; dropped for good if an ALSA plugin refuses it (EAGAIN)
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None

    def command(self, rate: int) -> List[str]:
        cmd = [self.aplay, "-q"]
        if self.nonblocking:
            cmd.append("-N")
        cmd += ["-t", "raw", "-f", "S16_LE", "-r", str(rate), "-c", "1", "-D", self.device]
        cmd += ["-B", str(self.buffer_time_us), "-"]
        return cmd

    @property
    def pid(self) -> Optional[int]:
        """Pid of the running aplay child, if any."""
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            # SIGKILL: the kernel closes the PCM at once (device buffer is 100 ms);
            # a write blocked on the pipe then fails with EPIPE.
            _kill(proc)

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        rate = _check_rate(rate)
        self._begin()
        self.attempts = 0
        source = _Source(chunks)
        consumed: List[bytes] = []  # this announcement so far, replayed on a retry
        try:
            # aplay starts at once: its ~2 ms of start-up (ALSA config, device open) overlap
            # the cache read or Coze's first byte instead of adding to them.
            last: Optional[_Failure] = None
            for attempt in range(1, self.retries + 1):
                self.attempts = attempt
                try:
                    return self._attempt(source, consumed, rate)
                except _Failure as failure:
                    if self._stop_event.is_set():
                        raise _Stopped()
                    last = failure
                    log.info("aplay attempt %d/%d: %s", attempt, self.retries, failure.message)
                    if "Resource temporarily unavailable" in failure.message and self.nonblocking:
                        log.warning("aplay: device %r refuses a non-blocking open; retrying without -N", self.device)
                        self.nonblocking = False
                    if attempt < self.retries and self._sleep(self.backoff * (2 ** (attempt - 1))):
                        raise _Stopped()
            assert last is not None
            raise PlayerError(last.message, last.kind)
        except _Stopped:
            return self._stopped_result()
        finally:
            source.cancel()

    # one attempt -----------------------------------------------------------------
    def _spawn(self, rate: int, errfile) -> subprocess.Popen:
        try:
            proc = subprocess.Popen(
                self.command(rate),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errfile,  # a file, not a pipe: a chatty child can never block on it
                close_fds=True,
            )
        except FileNotFoundError:
            raise PlayerError(f"aplay not found: '{self.aplay}' (install alsa-utils)", MISSING) from None
        except OSError as exc:
            raise PlayerError(f"cannot run aplay '{self.aplay}': {exc.strerror or exc}", FAILED) from None
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        with self._lock:
            self._proc = proc
        if self._stop_event.is_set():
            _kill(proc)
        return proc

    def _failure(self, proc: subprocess.Popen, errfile) -> _Failure:
        """Describe a dead (or dying) child from its exit status and stderr."""
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            _reap(proc)
        if self._stop_event.is_set():
            return _Failure(FAILED, "stopped")
        try:
            errfile.flush()
            errfile.seek(0)
            text = errfile.read(65536).decode("utf-8", "replace")
        except (OSError, ValueError):
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        aplay_lines = [line for line in lines if line.startswith("aplay:")]
        if aplay_lines:
            detail = aplay_lines[-1]
        elif lines:
            detail = lines[-1]
        elif proc.returncode is not None and proc.returncode < 0:
            detail = f"aplay was killed by signal {-proc.returncode}"
        else:
            detail = f"aplay exited with status {proc.returncode}"
        kind = classify_error(text)
        return _Failure(kind, device_error_message(self.device, kind, detail))

    def _write(self, proc: subprocess.Popen, fd: int, data: bytes, errfile) -> None:
        view = memoryview(data)
        last_progress = time.monotonic()
        while view:
            if self._stop_event.is_set():
                raise _Stopped()
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                n = 0
            except (BrokenPipeError, ConnectionResetError):
                if self._stop_event.is_set():
                    raise _Stopped() from None
                raise self._failure(proc, errfile) from None
            if n:
                view = view[n:]
                last_progress = time.monotonic()
                continue
            if proc.poll() is not None:
                raise self._failure(proc, errfile)
            if time.monotonic() - last_progress > self.stall_timeout:
                _reap(proc)
                raise _Failure(
                    FAILED,
                    device_error_message(
                        self.device, FAILED, f"aplay accepted no audio for {self.stall_timeout:g} s"
                    ),
                )
            try:
                select.select([], [fd], [], _POLL)
            except (OSError, ValueError):
                time.sleep(_POLL)

    def _attempt(self, source: _Source, consumed: List[bytes], rate: int) -> bool:
        with tempfile.TemporaryFile(prefix="aplay-err-") as errfile:
            proc = self._spawn(rate, errfile)
            source.start()
            stdin = proc.stdin
            assert stdin is not None
            fd = stdin.fileno()
            pipe_bytes = _pipe_capacity(fd)
            written = 0
            finished = False
            try:
                for chunk in consumed:
                    self._write(proc, fd, chunk, errfile)
                    written += len(chunk)

                def check_child() -> None:
                    if proc.poll() is not None:
                        raise self._failure(proc, errfile)

                while True:
                    kind, chunk = self._next(source, check_child)
                    if kind == _END:
                        break
                    consumed.append(chunk)
                    self._write(proc, fd, chunk, errfile)
                    written += len(chunk)

                try:
                    stdin.close()
                except OSError:
                    pass
                # Whatever is still unplayed sits in the pipe and the 100 ms device buffer.
                pending = written / (2.0 * rate)
                queued = pipe_bytes / (2.0 * rate) + self.buffer_time_us / 1e6 + 0.5
                timeout = min(pending, queued) + self.exit_grace
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        returncode = proc.wait(timeout=_POLL)
                        break
                    except subprocess.TimeoutExpired:
                        if self._stop_event.is_set():
                            raise _Stopped() from None
                        if time.monotonic() > deadline:
                            _reap(proc)
                            raise _Failure(
                                FAILED,
                                device_error_message(
                                    self.device, FAILED, f"aplay did not finish within {timeout:.1f} s"
                                ),
                            ) from None
                if returncode == 0:
                    finished = True
                    return True
                if self._stop_event.is_set():
                    raise _Stopped()
                raise self._failure(proc, errfile)
            finally:
                if not finished:
                    _reap(proc)
                try:
                    stdin.close()
                except OSError:
                    pass
                with self._lock:
                    if self._proc is proc:
                        self._proc = None


# --------------------------------------------------------------------------- simpleaudio


def _import_simpleaudio():
    try:
        import simpleaudio  # type: ignore
    except ImportError as exc:
        raise PlayerError(f"simpleaudio is not installed: {exc}", MISSING) from None
    return simpleaudio


def _simpleaudio_error_class(module) -> type:
    try:
        from simpleaudio import _simpleaudio  # type: ignore

        return getattr(_simpleaudio, "SimpleaudioError", Exception)
    except ImportError:  # pragma: no cover
        return Exception


class SimpleaudioPlayer(Player):
    """Play through the simpleaudio extension: always ALSA "default", one whole buffer.

    simpleaudio cannot stream, so the chunks are joined first. Open errors are retried
    like aplay's. Caveat (simpleaudio itself): its open is blocking, so a busy device
    that never frees up can hold the calling thread; prefer aplay where available.
    """

    name = "simpleaudio"

    def __init__(self, device: str = "default", *, retries: int = 3, backoff: float = 0.2):
        super().__init__()
        if device not in (None, "", "default"):
            log.warning("simpleaudio always plays on ALSA 'default'; ignoring device %r", device)
        self.device = "default"
        self.retries = max(1, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.attempts = 0
        self._lock = threading.Lock()
        self._play_obj = None

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            play_obj = self._play_obj
        if play_obj is not None:
            try:
                play_obj.stop()
            except Exception:  # pragma: no cover
                pass

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        rate = _check_rate(rate)
        sa = _import_simpleaudio()
        error_class = _simpleaudio_error_class(sa)
        self._begin()
        self.attempts = 0
        source = _Source(chunks)
        try:
            parts: List[bytes] = []
            while True:
                kind, chunk = self._next(source)
                if kind == _END:
                    break
                parts.append(chunk)
            buf = b"".join(parts)
            if len(buf) % 2:
                buf = buf[:-1]  # whole frames only
            if not buf:
                return True
            last: Optional[PlayerError] = None
            for attempt in range(1, self.retries + 1):
                self.attempts = attempt
                if self._stop_event.is_set():
                    raise _Stopped()
                try:
                    play_obj = sa.play_buffer(buf, 1, 2, rate)
                except error_class as exc:
                    text = str(exc)
                    kind = classify_error(text)
                    last = PlayerError(device_error_message(self.device, kind, f"simpleaudio: {text}"), kind)
                    log.info("simpleaudio attempt %d/%d: %s", attempt, self.retries, last.message)
                    if attempt < self.retries and self._sleep(self.backoff * (2 ** (attempt - 1))):
                        raise _Stopped() from None
                    continue
                with self._lock:
                    self._play_obj = play_obj
                try:
                    while play_obj.is_playing():
                        if self._stop_event.wait(_POLL):
                            play_obj.stop()
                            raise _Stopped()
                finally:
                    with self._lock:
                        self._play_obj = None
                if self._stop_event.is_set():
                    raise _Stopped()
                return True
            assert last is not None
            raise last
        except _Stopped:
            return self._stopped_result()
        finally:
            source.cancel()


# --------------------------------------------------------------------------- null


class NullPlayer(Player):
    """Consume and discard the chunks (benchmarks).

    With ``realtime=True`` it is paced like a device with a ``buffer`` seconds buffer:
    a chunk is accepted once the previous audio is within ``buffer`` of its end, and
    play() returns when the audio would have finished; stop() interrupts it.
    """

    name = "null"

    def __init__(self, device: str = "null", *, realtime: bool = False, buffer: float = 0.1):
        super().__init__()
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
        try:
            while True:
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


# --------------------------------------------------------------------------- factory

BACKENDS = ("auto", "aplay", "simpleaudio", "null")


def _simpleaudio_importable() -> bool:
    try:
        _import_simpleaudio()
    except PlayerError:
        return False
    return True


def make_player(backend: str, device: str = "default", **kw: Any) -> Player:
    """Build a player.

    backend: 'auto' (aplay when on PATH, else simpleaudio if importable, else
    PlayerError kind 'missing'), 'aplay', 'simpleaudio' or 'null'. Keyword arguments a
    back end does not take are ignored (``aplay``, ``retries``, ``backoff``,
    ``realtime``, ...), so one call works for every back end.
    """
    backend = (backend or "auto").strip().lower()
    if backend == "auto":
        if shutil.which(kw.get("aplay") or "aplay"):
            backend = "aplay"
        elif _simpleaudio_importable():
            backend = "simpleaudio"
        else:
            raise PlayerError("no audio backend: install alsa-utils or simpleaudio", MISSING)
    if backend == "aplay":
        keys = ("aplay", "retries", "backoff", "buffer_time_us", "stall_timeout", "exit_grace")
        return AplayPlayer(device, **{k: v for k, v in kw.items() if k in keys})
    if backend == "simpleaudio":
        _import_simpleaudio()
        return SimpleaudioPlayer(device, **{k: v for k, v in kw.items() if k in ("retries", "backoff")})
    if backend == "null":
        return NullPlayer(device, **{k: v for k, v in kw.items() if k in ("realtime", "buffer")})
    raise ValueError(f"unknown audio backend {backend!r} (choose from {', '.join(BACKENDS)})")
