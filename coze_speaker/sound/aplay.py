"""The aplay back end: PCM streamed into an `aplay` child process (alsa-utils).

A crash or hang stays in the child; the caller only ever sees a PlayerError.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import tempfile
import threading
import time
from typing import Iterable, List, Optional

from ..childenv import child_environment
from .player import (_END, _POLL, FAILED, MISSING, Player, PlayerError, _Failure, _Replay, _Source,
                     _Stopped, classify_error, device_error_message)

log = logging.getLogger(__name__)

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
    cannot be opened or whose aplay dies; the chunks consumed so far (up to MAX_REPLAY_BYTES) are kept
    and replayed on the next attempt (beyond that the PlayerError is raised at once), with an exponential ``backoff`` between attempts.
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
        wake_ms: int = 0,
    ):
        super().__init__(wake_ms=wake_ms)
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
        # aplay starts at once: its ~2 ms of start-up (ALSA config, device open) overlap the
        # cache read or Coze's first byte instead of adding to them.
        return self._play_retrying(chunks, rate, self._attempt, name="aplay", before_retry=self._before_retry)

    def _before_retry(self, failure: _Failure) -> None:
        if "Resource temporarily unavailable" in failure.message and self.nonblocking:
            log.warning("aplay: device %r refuses a non-blocking open; retrying without -N", self.device)
            self.nonblocking = False

    # one attempt -----------------------------------------------------------------
    def _spawn(self, rate: int, errfile) -> subprocess.Popen:
        try:
            proc = subprocess.Popen(
                self.command(rate),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errfile,  # a file, not a pipe: a chatty child can never block on it
                close_fds=True,
                env=child_environment(),  # no secrets from our environment
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

    def _attempt(self, source: _Source, consumed: _Replay, rate: int) -> bool:
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
                wake = self._wake(rate)  # every aplay opens the device: a cold start each time
                if wake:
                    self._write(proc, fd, wake, errfile)
                    written += len(wake)
                for chunk in consumed.chunks:
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


