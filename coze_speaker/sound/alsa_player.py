"""The alsa back end: PCM written in-process through pyalsaaudio, the device kept warm.

No process is started per announcement (aplay's spawn was most of a cache hit's time), and
the device can stay open for ``keep_open`` seconds after an announcement, fed silence paced
by the clock, so a follow-up starts without opening anything and an amplifier or USB DAC
does not fall asleep in between. ``wake_ms`` of silence is played only after an open (a cold
start). pyalsaaudio is imported on the first play, not when the daemon starts.

Threads: the playing thread owns the PCM while it plays; between announcements the
``coze-speaker-keepopen`` thread feeds it silence and closes it when ``keep_open`` runs
out. ``_lock`` (a Condition) guards the PCM and who owns it; every call into libasound is
made under it, so ``stop()`` from any thread can drop the device's buffer at once.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import select
import sys
import threading
import time
from typing import Any, Iterable, Optional, Tuple

from ..cue import StartCue
from .player import (_END, FAILED, MISSING, Player, PlayerError, _Failure, _Replay, _Source, _Stopped,
                     classify_error, device_error_message)
from .schedule import due_out, silence_before

log = logging.getLogger(__name__)

#: A period of 20 ms and five of them: the 100 ms device buffer aplay gets with -B 100000.
PERIOD_MS = 20
PERIODS = 5
#: While the device is kept open, the keep-open thread wakes every TICK_PERIODS periods
#: (25 times a second) and tops the device up to LEAD_PERIODS of silence ahead of the clock:
#: a follow-up waits behind at most that much silence (60 ms), and a wake-up of the thread
#: up to 20 ms late still finds audio in the device.
TICK_PERIODS = 2
LEAD_PERIODS = 3
#: pyalsaaudio 0.11 added PCM.avail() and made write() return -EPIPE on an underrun.
MIN_VERSION = (0, 11)

_alsaaudio: Any = None


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def installed_version(distribution: str) -> Optional[str]:
    """An installed distribution's version, from its .dist-info / .egg-info directory on
    sys.path (importlib.metadata would add 0.4 MB to the daemon to answer this); None when
    it has none (built by hand)."""
    prefix = distribution.lower().replace("-", "_") + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            low = name.lower()
            if low.startswith(prefix) and low.endswith((".dist-info", ".egg-info")):
                return name[len(prefix):].rsplit(".", 1)[0].split("-")[0]
    return None


def alsa_available() -> bool:
    """pyalsaaudio >= 0.11 is installed, told without importing it (the daemon's idle RSS)."""
    try:
        if importlib.util.find_spec("alsaaudio") is None:
            return False
    except (ImportError, ValueError):
        return False
    found = installed_version("pyalsaaudio")
    if found is not None:
        return _version_tuple(found) >= MIN_VERSION
    try:
        import_alsaaudio()
    except PlayerError:
        return False
    return True


def import_alsaaudio() -> Any:
    """The alsaaudio module (pyalsaaudio), imported once; PlayerError 'missing' without it."""
    global _alsaaudio
    if _alsaaudio is None:
        try:
            import alsaaudio  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise PlayerError(f"pyalsaaudio is not installed ({exc}): pip install 'coze-speaker[alsa]'",
                              MISSING) from None
        if not hasattr(alsaaudio.PCM, "avail"):
            raise PlayerError("pyalsaaudio is too old (0.11 or later is needed): pip install -U pyalsaaudio",
                              MISSING)
        _alsaaudio = alsaaudio
    return _alsaaudio


def _detail(exc: BaseException, device: str) -> str:
    """libasound's text without pyalsaaudio's " [device]" suffix (the message names it)."""
    text = str(exc).strip()
    suffix = f" [{device}]"
    return text[: -len(suffix)] if text.endswith(suffix) else text


class AlsaPlayer(Player):
    """Stream s16 mono into an ALSA PCM in-process (pyalsaaudio), at the rate given to play().

    The PCM is opened non-blocking, so a busy device fails at once ('busy') instead of
    hanging; writes are non-blocking too, waiting in poll() for room, and give up after
    ``stall_timeout`` seconds without progress. ``retries`` and ``backoff`` work like
    aplay's (the chunks consumed so far are replayed, up to MAX_REPLAY_BYTES). ``stop()``
    drops what the device still holds: silence at once, whatever the buffer size.

    ``keep_open`` > 0 keeps the device open that many seconds after each play (see the
    module docstring); ``opens`` counts the PCM opens, so a test or benchmark can tell
    that a follow-up opened nothing.
    """

    name = "alsa"
    starts_on_cue = True

    def __init__(self, device: str = "default", *, retries: int = 3, backoff: float = 0.2,
                 keep_open: float = 0.0, wake_ms: int = 0, stall_timeout: float = 5.0,
                 period_ms: int = PERIOD_MS, periods: int = PERIODS):
        super().__init__(wake_ms=wake_ms)
        self.device = device or "default"
        self.retries = max(1, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.keep_open = max(0.0, float(keep_open))
        self.stall_timeout = float(stall_timeout)
        self.period_ms = max(1, int(period_ms))
        self.periods = max(2, int(periods))
        self.attempts = 0
        self.opens = 0  #: PCM opens so far
        self.underruns = 0  #: writes that found the device run dry (the audio went on after it)
        self.silence_frames = 0  #: frames of silence fed while the device was kept open
        self._lock = threading.Condition()
        self._pcm: Any = None  # open PCM, or None
        self._rate = 0  # its rate
        self._period = 0  # frames per period and in the device buffer, as negotiated
        self._buffer = 0
        self._poll: Optional[Any] = None
        self._playing = False  # a play() owns the PCM: stop() drops it, the keeper waits
        self._idle_until = 0.0  # monotonic time the keeper closes the PCM
        self._paced_from = 0.0  # silence feed: clock start and frames fed since
        self._paced = 0
        self._feeding = False  # the silence feed has started since this play took the PCM
        self._silence = b""
        self._keeper: Optional[threading.Thread] = None
        self._closing = False
        self._cue: Optional[StartCue] = None  # the start cue of the play in progress

    @property
    def is_open(self) -> bool:
        """True while the PCM is open (playing, or kept open)."""
        with self._lock:
            return self._pcm is not None

    # -- the interface ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            if self._playing and self._pcm is not None:
                self._drop()

    def close(self) -> None:
        """Stop, close the device now and end the keep-open thread (reload, shutdown)."""
        self.stop()
        with self._lock:
            self._closing = True
            if not self._playing:
                self._close_pcm()
            self._lock.notify_all()
            keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=2.0)

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        # the source starts first: the cache read or Coze's first byte overlaps the device's open
        return self._play_retrying(chunks, rate, self._attempt, name="alsa", start_source=True)

    def play_cued(self, chunks: Iterable[bytes], rate: int, cue: StartCue) -> bool:
        """The device is opened (or taken warm) at once and fed silence until the cue's
        instant; the first audio frame is due out of it then (see _start_on)."""
        self._cue = cue
        try:
            return self.play(chunks, rate)
        finally:
            self._cue = None

    # -- one attempt -----------------------------------------------------------------------

    def _attempt(self, source: _Source, consumed: _Replay, rate: int) -> bool:
        outcome = "done"  # played, or ended by the producer's own error: the device is fine
        try:
            cold = self._acquire(rate)
            if cold:
                wake = self._wake(rate)  # the device was closed: let the amplifier wake up
                if wake:
                    self._write(wake)
            cue = self._cue
            for chunk in consumed.chunks:
                self._write(chunk)
            carry = b""  # chunks need not be whole frames; the device takes only whole ones
            while True:
                kind, chunk = self._next(source)
                if kind == _END:
                    break
                consumed.append(chunk)
                if carry:
                    chunk, carry = carry + chunk, b""
                if len(chunk) % 2:
                    chunk, carry = chunk[:-1], chunk[-1:]
                if cue is not None and not cue.settled:
                    self._start_on(cue, rate, cold)
                self._write(chunk)
            self._finish()
            return True
        except _Failure:
            outcome = "failed"
            raise
        except _Stopped:
            outcome = "stopped"
            raise
        finally:
            self._release(outcome)

    def _start_on(self, cue: StartCue, rate: int, cold: bool) -> None:
        """Before the first audio frame: wait for the plan, then for its instant, feeding the
        device silence paced by the clock (LEAD_PERIODS ahead, as when kept open), and write
        the silence that makes the first audio frame due out at the instant, counting the
        frames the device still holds. A device without a clock (the test sink's null PCM)
        takes that silence at once: the audio is then written at the instant itself."""
        period_s = self.period_ms / 1000.0
        lead_s = LEAD_PERIODS * period_s
        if cold:
            with self._lock:
                self._pace_from(time.monotonic())

        def fed() -> bool:  # between waits for the plan: keep the device going; True once stopped
            with self._lock:
                if not self._stop_event.is_set():
                    self._feed(time.monotonic())
            return self._stop_event.is_set()

        at = cue.wait_plan(fed, step=period_s)
        if self._stop_event.is_set():
            raise _Stopped()
        if at is None:
            return  # no plan needed, or none came in time: start at once (reported by the cue)
        while True:  # bounded: the gap shrinks by a period per pass (a plan is at most 30 s ahead)
            at = cue.at or at  # an earlier plan may have come meanwhile: the earliest wins
            with self._lock:
                if self._stop_event.is_set():
                    raise _Stopped()
                now, queued = time.time(), self._queued()
                gap = at - due_out(now, queued, rate)
                if gap <= lead_s:
                    break
                self._feed(time.monotonic())
            if self._sleep(min(period_s, gap - lead_s)):
                raise _Stopped()
        silence = silence_before(at, now, queued, rate)
        if silence:
            self._write(bytes(2 * silence))
        with self._lock:
            now, queued = time.time(), self._queued()
        if silence and queued < silence // 2:  # no clock: it took the silence at once
            if self._sleep(at - due_out(now, queued, rate)):
                raise _Stopped()
            with self._lock:
                now, queued = time.time(), self._queued()
        cue.settle(due_out(now, queued, rate))

    def _acquire(self, rate: int) -> bool:
        """Take the PCM for this play, opening it if it is closed (True: a cold start)."""
        with self._lock:
            self._playing = True
            self._feeding = False
            if self._pcm is not None and self._rate == rate:
                return False
            self._close_pcm()  # kept open at another rate
        pcm = self._open(rate)
        with self._lock:
            self._pcm = pcm
            if self._stop_event.is_set():  # stop() came while it opened
                raise _Stopped()
        return True

    def _open(self, rate: int) -> Any:
        alsaaudio = import_alsaaudio()
        period = max(1, rate * self.period_ms // 1000)
        try:
            pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NONBLOCK, device=self.device, rate=rate,
                                channels=1, format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=period,
                                periods=self.periods)
        except alsaaudio.ALSAAudioError as exc:
            detail = _detail(exc, self.device)
            kind = classify_error(detail)
            raise _Failure(kind, device_error_message(self.device, kind, detail)) from None
        self.opens += 1
        info = pcm.info()
        if (info.get("rate"), info.get("channels"), info.get("format")) != (rate, 1, alsaaudio.PCM_FORMAT_S16_LE):
            got = f"{info.get('format_name')} {info.get('channels')} channel(s) at {info.get('rate')} Hz"
            _close_quietly(pcm)
            raise _Failure(FAILED, device_error_message(
                self.device, FAILED, f"it plays {got}, not S16_LE mono at {rate} Hz (use plughw: or default)"))
        self._rate = rate
        self._period = int(info.get("period_size") or period)
        self._buffer = int(info.get("buffer_size") or period * self.periods)
        self._silence = bytes(2 * self._buffer)
        poll = select.poll()
        for fd, events in pcm.polldescriptors():
            poll.register(fd, events)
        self._poll = poll
        return pcm

    def _write(self, data: bytes) -> None:
        """Hand whole frames to the device; waits in poll() while its buffer is full."""
        view = memoryview(data)
        limit = 2 * self._buffer
        last_progress = time.monotonic()
        idle_polls = 0
        while view:
            with self._lock:
                if self._stop_event.is_set():
                    raise _Stopped()
                frames = self._call("write", view[:limit])
            if frames == -errno.EPIPE:  # ran dry (a slow producer): the device restarts with this
                self.underruns += 1
                continue
            if frames > 0:
                view = view[2 * frames:]
                last_progress = time.monotonic()
                idle_polls = 0
                continue
            if time.monotonic() - last_progress > self.stall_timeout:
                raise _Failure(FAILED, device_error_message(
                    self.device, FAILED, f"the device accepted no audio for {self.stall_timeout:g} s"))
            idle_polls += 1
            self._wait_for_room(idle_polls)

    def _wait_for_room(self, idle_polls: int) -> None:
        """poll() the PCM for up to a period; a device whose poll says "ready" while it takes
        nothing gets a short sleep instead, so this never spins."""
        period_s = self.period_ms / 1000.0
        poll = self._poll
        if poll is not None and idle_polls < 3:
            try:
                poll.poll(self.period_ms)
                return
            except (OSError, ValueError):
                pass
        if self._sleep(period_s / 4):
            raise _Stopped()

    def _call(self, method: str, *args: Any) -> Any:
        """A PCM call (under _lock); libasound's errors become a _Failure."""
        alsaaudio = import_alsaaudio()
        try:
            return getattr(self._pcm, method)(*args)
        except alsaaudio.ALSAAudioError as exc:
            detail = _detail(exc, self.device)
            kind = classify_error(detail)
            raise _Failure(kind, device_error_message(self.device, kind, detail)) from None

    def _queued(self) -> int:
        """Frames the device holds that it has not played yet (under _lock)."""
        try:
            avail = int(self._pcm.avail())
        except Exception:  # noqa: BLE001 - a closed or broken PCM holds nothing we can wait for
            return 0
        return 0 if avail < 0 else max(0, self._buffer - avail)

    def _finish(self) -> None:
        """After the last chunk: return once the device has played it. When it is kept open,
        silence follows at once, so the stream never runs dry between announcements."""
        period_s = self.period_ms / 1000.0
        with self._lock:
            queued = self._queued()
            self._pace_from(time.monotonic())
            self._feeding = self.keep_open > 0
        end = time.monotonic() + queued / float(self._rate)
        if self.keep_open > 0:
            while True:
                now = time.monotonic()
                with self._lock:
                    if self._stop_event.is_set():
                        raise _Stopped()
                    self._feed(now)
                if now >= end:
                    return
                if self._sleep(min(period_s, end - now)):
                    raise _Stopped()
        deadline = end + 2 * self._buffer / float(self._rate) + 1.0
        while True:
            now = time.monotonic()
            if now < end:
                wait = end - now
            else:
                with self._lock:
                    queued = self._queued()
                if queued == 0 or now >= deadline:
                    return
                wait = min(period_s, queued / float(self._rate))
            if self._sleep(wait):
                raise _Stopped()

    def _release(self, outcome: str) -> None:
        """Hand the PCM on after a play: to the keep-open thread, or close it."""
        with self._lock:
            self._playing = False
            if self._pcm is None:
                return
            if outcome == "failed" or self.keep_open <= 0 or self._closing:
                self._close_pcm()
            else:
                if outcome == "stopped":
                    self._drop()
                self._idle_until = time.monotonic() + self.keep_open
                if not self._feeding:  # stopped, or the producer failed: the feed starts now
                    self._pace_from(time.monotonic())
                if self._keeper is None:
                    self._keeper = threading.Thread(target=self._keep, name="coze-speaker-keepopen", daemon=True)
                    self._keeper.start()
            self._lock.notify_all()

    # -- keeping the device open -----------------------------------------------------------

    def _keep(self) -> None:
        """Feed silence paced by the clock until keep_open runs out, then close the PCM."""
        with self._lock:  # released only inside wait()
            try:
                while self._pcm is not None and not self._closing:
                    if self._playing:
                        self._lock.wait()
                        continue
                    now = time.monotonic()
                    if now >= self._idle_until:
                        break
                    try:
                        self._feed(now)
                    except _Failure as failure:
                        log.warning("alsa: closing the idle device: %s", failure.message)
                        break
                    self._lock.wait(min(TICK_PERIODS * self.period_ms / 1000.0, self._idle_until - now))
                if not self._playing:
                    self._close_pcm()
            finally:
                self._keeper = None

    def _pace_from(self, now: float) -> None:
        self._paced_from, self._paced = now, 0

    def _feed(self, now: float) -> None:
        """Top the device up with silence to LEAD_PERIODS ahead, never ahead of the clock
        (under _lock): a device that takes data faster than real time (the test sink's null
        PCM has no clock) gets silence at the real-time rate, one write per tick."""
        lead = LEAD_PERIODS * self._period
        due = int((now - self._paced_from) * self._rate) + lead - self._paced
        room = lead - self._queued()
        frames = min(due, room, self._buffer)
        if frames < self._period // 2:
            return
        written = self._call("write", memoryview(self._silence)[: 2 * frames])
        if written == -errno.EPIPE:  # it ran dry before the keeper woke: start the clock again
            self.underruns += 1
            self._pace_from(now)
        elif written > 0:
            self._paced += written
            self.silence_frames += written

    def _drop(self) -> None:
        """Discard what the device holds (under _lock): silence now."""
        try:
            self._pcm.drop()
        except Exception:  # noqa: BLE001 - already stopped, or broken: nothing left to drop
            pass

    def _close_pcm(self) -> None:
        """Close the PCM if open (under _lock)."""
        pcm, self._pcm, self._poll = self._pcm, None, None
        if pcm is not None:
            try:
                pcm.drop()  # pyalsaaudio's close() drains first; there is nothing left to play
            except Exception:  # noqa: BLE001
                pass
            _close_quietly(pcm)


def _close_quietly(pcm: Any) -> None:
    try:
        pcm.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken device must not raise
        log.debug("alsa: closing the PCM: %s", exc)
