"""A circuit breaker in front of Coze: when Coze is down, announcements stop waiting for it.

Without it every announcement that is not cached spends the client's retries (and a hung
request's timeouts) before the offline voice speaks, and everything queued behind it waits.

- closed: requests go to Coze. A transient failure that the retries could not fix (network,
  timeout, 5xx, 429 and Coze's "try later" codes) opens the breaker. A final error (invalid
  parameters 4000, an unknown voice_id, a wrong token 4100, …) is Coze answering: it is our
  fault or our config, not an outage, and never opens it.
- open: for a cool-down (``coze.breaker_cooldown`` s, doubled after each failed check, at
  most ``BREAKER_MAX_COOLDOWN``) Coze is not asked; cached phrases play, the rest go to the
  offline voice at once or fail with code ``coze_unavailable``.
- half-open (the cool-down is over): a background probe asks Coze for one voice of its voice
  list; its answer closes the breaker, a failure opens it again for the next, longer
  cool-down. One real request may try as well, but only when the last check got an HTTP
  answer (Coze's servers answer, only the voice list failed: speech may work, and only a
  real request can tell). When Coze cannot be reached or hangs, the probe alone decides, so
  no announcement pays the retries and timeouts again at the end of every cool-down.

The probe is a GET of ``/v1/audio/voices`` (one page of one voice): it synthesizes nothing,
so it is not billed and not counted by the cost guard, which exists to cap spending (an
outage must not use up the hourly cap that speech needs afterwards); the cool-down bounds
how often it is sent. It has its own client (no retries, a short timeout), so it never
shares a connection with a synthesis.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

from ..coze import CozeClient, CozeError, CozeValidationError
from ..vocabulary import BREAKER_MAX_COOLDOWN

log = logging.getLogger(__name__)

#: The probe's read timeout at most (the connect timeout is the client's).
PROBE_TIMEOUT = 5.0
#: How long close() waits for a probe in flight (the thread is a daemon and ends after it).
CLOSE_WAIT = 1.0

CLOSED, OPEN = "closed", "open"


class CozeUnavailableError(CozeError):
    """Coze counts as down (the breaker is open): nothing was sent."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.code = "coze_unavailable"  # type: ignore[assignment]

    def __str__(self) -> str:
        return self.msg


def coze_answered(exc: Optional[BaseException]) -> Optional[bool]:
    """What an outcome says about Coze: True it answered (audio or a final error), False a
    transient failure the retries could not fix, None it was never reached (a local refusal)."""
    if exc is None:
        return True
    if not isinstance(exc, CozeError) or isinstance(exc, (CozeValidationError, CozeUnavailableError)):
        return None
    if exc.retryable:
        return False
    if exc.status is not None or isinstance(exc.code, int):
        return True
    return None


class Permit:
    """Leave to send one request; report its outcome with done() (exactly once)."""

    def __init__(self, breaker: "CircuitBreaker", generation: int, *, trial: bool = False,
                 probe: bool = False) -> None:
        self.breaker = breaker
        self.generation = generation
        self.trial = trial
        self.probe = probe

    def done(self, exc: Optional[BaseException] = None) -> None:
        """The request ended: None when it succeeded, else what it raised."""
        self.breaker._report(self, exc)


class VoiceListProbe:
    """The cheapest request that shows Coze answers: one voice of the voice list, no retries."""

    def __init__(self, client: CozeClient) -> None:
        self.client = client

    def __call__(self) -> None:
        next(iter(self.client.list_voices(page_size=1, max_pages=1)), None)

    def close(self) -> None:
        self.client.close()


class CircuitBreaker:
    """Thread-safe; `permit()` before each Coze request, `Permit.done()` after it."""

    def __init__(self, cooldown: float, *, probe: Optional[Callable[[], None]] = None,
                 max_cooldown: float = BREAKER_MAX_COOLDOWN, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self.max_cooldown = max(cooldown, max_cooldown)
        self._probe = probe
        self._clock = clock
        self._cond = threading.Condition()
        self._state = CLOSED
        self._generation = 0
        self._streak = 0  # opens since Coze last synthesized something
        self._until = 0.0
        self._trial = False
        self._trial_ok = probe is None  # may a real request try after the cool-down?
        self._reason: Optional[BaseException] = None
        self._since = 0.0
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._listeners: List[Callable[[], None]] = []
        #: probes sent and times the breaker opened (for logs and tests)
        self.probes = 0
        self.opened = 0

    @property
    def down(self) -> bool:
        """Coze counts as down (open or half-open)."""
        with self._cond:
            return self._state == OPEN

    def permit(self) -> Permit:
        """Leave to send a request, or CozeUnavailableError while Coze counts as down."""
        with self._cond:
            if self._state == CLOSED:
                return Permit(self, self._generation)
            left = self._until - self._clock()
            if left <= 0 and not self._trial and self._trial_ok:
                self._trial = True
                return Permit(self, self._generation, trial=True)
            reason = self._reason
        when = f"it is asked again in {left:.0f} s" if left > 0.5 else "it is being checked now"
        raise CozeUnavailableError(f"Coze counts as down after: {reason}; {when}")

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call callback (outside the lock) whenever Coze goes down or comes back; returns an
        unregister function."""
        with self._cond:
            self._listeners.append(callback)

        def unregister() -> None:
            with self._cond:
                if callback in self._listeners:
                    self._listeners.remove(callback)
        return unregister

    def close(self) -> None:
        """Stop the probe thread (a probe in flight is waited for briefly) and its client."""
        with self._cond:
            self._closed = True
            self._listeners.clear()
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)
        closer = getattr(self._probe, "close", None)
        if callable(closer):
            closer()

    # -- state ------------------------------------------------------------------------------

    def _report(self, permit: Permit, exc: Optional[BaseException]) -> None:
        verdict = coze_answered(exc)
        if verdict is None and permit.probe:
            verdict = False  # a probe that could not even be sent shows nothing is back
        changed = False
        with self._cond:
            if permit.trial:
                self._trial = False
            if self._closed or verdict is None:
                return
            if verdict:
                if not permit.probe and exc is None:
                    self._streak = 0
                if self._state == OPEN:
                    self._close_now(permit)
                    changed = True
            elif permit.generation == self._generation:  # else an older request: the state moved on
                if permit.probe:
                    self._trial_ok = isinstance(exc, CozeError) and exc.status is not None
                changed = self._open(exc)
        if changed:
            self._notify()

    def _open(self, exc: Optional[BaseException]) -> bool:
        """Open (again) for the next cool-down; True when Coze was up until now."""
        now = self._clock()
        was_up = self._state == CLOSED
        self._streak += 1
        wait = min(self.max_cooldown, self.cooldown * 2 ** min(self._streak - 1, 16))
        self._state, self._until, self._reason = OPEN, now + wait, exc
        self._generation += 1
        self.opened += 1
        if was_up:
            self._since = now
            log.warning("Coze counts as down after: %s. It is not asked for %g s (cached phrases still play, "
                        "the rest go to the offline voice if there is one); checking in the background", exc, wait)
        else:
            log.info("Coze is still down: %s. Next check in %g s", exc, wait)
        if self._probe is not None and self._thread is None:
            self._thread = threading.Thread(target=self._probe_loop, name="coze-speaker-probe", daemon=True)
            self._thread.start()
        self._cond.notify_all()
        return was_up

    def _close_now(self, permit: Permit) -> None:
        self._state, self._reason, self._trial = CLOSED, None, False
        self._trial_ok = self._probe is None
        self._generation += 1
        self._cond.notify_all()
        log.info("Coze answers again after %.0f s (%s): back to the Coze voice", self._clock() - self._since,
                 "a check of its voice list" if permit.probe else "a request")

    def _notify(self) -> None:
        with self._cond:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:
                log.exception("a listener of the Coze breaker failed")

    def _probe_loop(self) -> None:
        """While the breaker is open: wait out the cool-down, then ask Coze (bounded by the
        probe's timeouts); ends when the breaker closes or is closed."""
        assert self._probe is not None
        while True:
            with self._cond:
                while not self._closed and self._state == OPEN and self._clock() < self._until:
                    self._cond.wait(min(max(self._until - self._clock(), 0.01), 5.0))
                if self._closed or self._state != OPEN:
                    self._thread = None
                    return
                permit = Permit(self, self._generation, probe=True)
                self.probes += 1
            try:
                self._probe()
                outcome: Optional[BaseException] = None
            except Exception as exc:  # any failure keeps the breaker open; the thread goes on
                outcome = exc
            log.debug("Coze probe: %s", "answered" if outcome is None else outcome)
            permit.done(outcome)
