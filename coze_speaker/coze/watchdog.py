"""The time bounds of one speech request: a trickling answer must not hold the speaker.

``coze.timeout`` bounds each read, not the request: 2 bytes every 0.5 s never trips it. So
each attempt has a watchdog: its first audio is due within ``first_audio`` seconds of the
request (and before the caller's deadline, when there is one), and every second of audio
received moves the due time on by 1 / MIN_STREAM_SPEED seconds: once the audio flows it must
arrive at least at half real time. A late attempt's socket is shut down (a read blocked on a
trickle cannot look at the clock itself), and the stream turns that into a retryable
``timeout``, so the usual retries and the offline voice take over.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from ..vocabulary import MIN_STREAM_SPEED
from .errors import STALE, CozeError

if TYPE_CHECKING:
    from .httpclient import Response

log = logging.getLogger(__name__)


class Watchdog:
    """One attempt's due time, watched by a short-lived thread.

    The clock stops while the consumer holds the stream (`hold()`/`release()` around each
    hand-out): a player that is busy with earlier audio, or a prefetched announcement waiting
    its turn, is not the network's fault.
    """

    def __init__(self, first_audio: float, bytes_per_second: float, deadline: Optional[float] = None) -> None:
        self.first_audio = first_audio
        self._rate = bytes_per_second * MIN_STREAM_SPEED
        #: monotonic time by which the first audio must be there (the caller's deadline), or None
        self._deadline = deadline
        self._start = time.monotonic()
        self._held_since: Optional[float] = None
        self._received = 0
        self._done = False
        self._response: Optional["Response"] = None
        self._cut: Optional[Callable[[], None]] = None
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        #: why the attempt was cut off (a CozeError to raise), None while it is in time
        self.verdict: Optional[CozeError] = None

    def watch(self, response: Optional["Response"] = None, *,
              cut: Optional[Callable[[], None]] = None) -> None:
        """Start watching the answer (an HTTP response, or any connection that `cut` ends from
        another thread); the time since the request was sent already counts, so an answer
        whose headers came too late raises its verdict here."""
        with self._cond:
            self._response = response
            self._cut = cut
            late = self._judge(time.monotonic())
        if late:
            self._cut_off(response, cut)
            self.raise_verdict()
        self._thread = threading.Thread(target=self._run, name="coze-speaker-watchdog", daemon=True)
        self._thread.start()

    def received(self, n_bytes: int) -> None:
        with self._cond:
            self._received += n_bytes

    def hold(self) -> None:
        """The consumer has the audio: stop the clock."""
        with self._cond:
            self._held_since = time.monotonic()

    def release(self) -> None:
        """Reading again: the clock goes on where it stopped."""
        with self._cond:
            if self._held_since is not None:
                self._start += time.monotonic() - self._held_since
                self._held_since = None
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def raise_verdict(self) -> None:
        """Raise why the attempt was cut off, if it was."""
        with self._cond:
            verdict = self.verdict
        if verdict is not None:
            raise verdict

    def _due(self) -> float:
        if self._held_since is not None:
            return float("inf")
        due = self._start + self.first_audio + self._received / self._rate
        if self._received == 0 and self._deadline is not None:
            due = min(due, self._deadline)
        return due

    def _judge(self, now: float) -> bool:
        """Set the verdict if the attempt is late at `now` (called with the lock held)."""
        if self.verdict is not None:
            return True
        if now < self._due():
            return False
        if self._received == 0 and self._deadline is not None and self._deadline <= now:
            self.verdict = CozeError(STALE, code="timeout")
        elif self._received == 0:
            self.verdict = CozeError(f"no audio from Coze within {self.first_audio:g} s (coze.first_audio_timeout)",
                                     code="timeout", retryable=True)
        else:
            self.verdict = CozeError(f"Coze's audio arrived slower than {MIN_STREAM_SPEED:g}x real time "
                                     f"({self._received} bytes in {now - self._start:.1f} s)",
                                     code="timeout", retryable=True)
        return True

    def _run(self) -> None:
        with self._cond:
            while not self._done:
                now = time.monotonic()
                if self._judge(now):
                    response, cut = self._response, self._cut
                    break
                self._cond.wait(min(self._due() - now, 3600.0))
            else:
                return
        log.debug("cutting off a late Coze answer: %s", self.verdict)
        self._cut_off(response, cut)

    @staticmethod
    def _cut_off(response: Optional["Response"], cut: Optional[Callable[[], None]]) -> None:
        if cut is not None:
            cut()
        elif response is not None:
            response.shutdown()
