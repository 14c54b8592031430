"""A broadcast's start cue: the instant (on the shared wall clock) every room starts at.

The worker creates one :class:`StartCue` per broadcast whose start is synchronized and hands
it down with the cancel token: the audio source resolves it (the fleet fills in the plan the
coordinating member sends, or says none is needed), the player waits on it and starts its
device at the instant, then reports when its first frame was due out. Nothing here calls up:
the worker hears of the start through a callback, as with a cancel token.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .cancel import CancelToken

#: What a cue is waiting for: resolved by the audio source, then settled by the player.
PENDING, SKIPPED, EXPECTING, SETTLED = "pending", "skipped", "expecting", "settled"

#: A start this much after its plan (seconds) counts as not synchronized: the plan was
#: already past (it came late, or the device could not start in time).
LATE = 0.05

Report = Callable[[Dict[str, Any]], None]


class StartCue:
    """Set from the plans of a broadcast (the earliest `at` wins), waited on by the player.

    Thread-safe; the token's cancel wakes every wait. `since` (monotonic) is when the
    broadcast arrived: plans received before it belong to an earlier broadcast of the phrase.
    """

    def __init__(self, token: Optional[CancelToken] = None, *, since: Optional[float] = None) -> None:
        self.token = token
        self.since = time.monotonic() if since is None else since
        self.state = PENDING
        #: the planned start (epoch seconds), the earliest one known; None until one is known
        self.at: Optional[float] = None
        #: seconds to wait for a plan once the player has audio (EXPECTING)
        self.bound = 0.0
        #: what the `started` event reports once settled
        self.report: Dict[str, Any] = {}
        self._cond = threading.Condition()
        self._listeners: List[Report] = []
        if token is not None:
            token.on_cancel(self._wake)

    # -- the audio source (and the fleet below it) ----------------------------------------

    def skip(self) -> None:
        """No plan will come (alone in the scope, the fleet's sync is off): start at once."""
        self._resolve(SKIPPED, {})

    def expect(self, bound: float) -> None:
        """A plan will come from the coordinating member; wait at most `bound` s for it."""
        with self._cond:
            if self.state == PENDING:
                self.state, self.bound = EXPECTING, max(0.0, float(bound))
            self._cond.notify_all()

    def propose(self, at: float) -> float:
        """A plan is known: the earliest one wins, so rooms that heard two pick the same.
        Returns the plan in force."""
        if not isinstance(at, (int, float)) or not math.isfinite(at):
            raise ValueError(f"not a start time: {at!r}")
        with self._cond:
            if self.state != SETTLED and (self.at is None or at < self.at):
                self.at = float(at)
                self._cond.notify_all()
            return self.at if self.at is not None else float(at)

    @property
    def closed(self) -> bool:
        """Settled, skipped or cancelled: plans no longer matter to it."""
        return self.state in (SKIPPED, SETTLED) or (self.token is not None and self.token.cancelled)

    # -- the player -----------------------------------------------------------------------

    def wait_plan(self, stopped: Callable[[], bool], *, step: float = 0.05) -> Optional[float]:
        """The planned start (epoch s), or None to start at once: no plan is needed, or none
        came within the bound (then the start is reported as not synchronized). `stopped()`
        is asked every `step` s (outside the lock; a player keeps its device fed there) and
        ends the wait when true (the caller checks why)."""
        end = time.monotonic() + self.bound
        while True:
            with self._cond:
                if self.state != EXPECTING:
                    return None
                if self.at is not None:
                    return self.at
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(step, left))
            if stopped():
                return None
        self._resolve(SETTLED, {"synchronized": False})
        return None

    def settle(self, first_out: float) -> None:
        """The device started: its first frame was due out at `first_out` (epoch s, by the
        device's own delay). A plan already past when the device could start is reported as
        not synchronized, with its error."""
        with self._cond:
            at = self.at
        if at is None:
            return
        error = first_out - at
        self._resolve(SETTLED, {"planned_start": round(at, 4), "start_error_ms": round(error * 1000, 2),
                                "synchronized": error < LATE})

    @property
    def settled(self) -> bool:
        return self.state == SETTLED

    # -- the worker -----------------------------------------------------------------------

    def on_start(self, report: Report) -> Callable[[], None]:
        """`report(fields)` once the start is known; at once, with no fields, if it already is
        (no sync needed, or settled by an earlier attempt). Returns an unregister function."""
        with self._cond:
            if self.state in (PENDING, EXPECTING):
                self._listeners.append(report)
                return lambda: self._remove(report)
        report({})
        return lambda: None

    def _remove(self, report: Report) -> None:
        with self._cond:
            if report in self._listeners:
                self._listeners.remove(report)

    def _resolve(self, state: str, report: Dict[str, Any]) -> None:
        with self._cond:
            if self.state in (SKIPPED, SETTLED):
                return
            self.state, self.report = state, report
            listeners, self._listeners = self._listeners, []
            self._cond.notify_all()
        for listener in listeners:
            listener(dict(report))

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def when_started(cue: Optional[StartCue], report: Report) -> Callable[[], None]:
    """Call `report(fields)` once: at once without a cue, else when the device starts on the
    cue. The returned function reports it now (with no fields) if it has not been yet, so an
    announcement that ends before its device started still has its `started` first."""
    lock = threading.Lock()
    done = [False]

    def once(fields: Dict[str, Any]) -> None:
        with lock:
            if done[0]:
                return
            done[0] = True
            report(fields)

    if cue is None:
        once({})
        return lambda: None
    unregister = cue.on_start(once)

    def finish() -> None:
        unregister()
        once({})
    return finish
