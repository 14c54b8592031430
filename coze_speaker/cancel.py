"""One announcement's stop signal and deadline, carried from intake to the last sample.

The queue creates one :class:`CancelToken` per announcement; synthesis, the cache read and
the player all look at the same token, so a `stop`, an interrupt or an expired TTL reaches
every stage at once and nothing keeps its own flag.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional


class CancelToken:
    """Set once (by stop, interrupt, shutdown or the deadline), seen everywhere."""

    def __init__(self, deadline: Optional[float] = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        #: monotonic time after which the announcement is stale; None = no deadline
        self.deadline = deadline
        self.reason: Optional[str] = None
        self._clock = clock
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: List[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "stopped") -> bool:
        """Cancel (first reason wins) and run the registered callbacks; False if it already was."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
        return True

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run callback when cancelled (at once if it already is); returns an unregister function."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock:
            try:
                self._callbacks.remove(callback)
            except ValueError:
                pass

    def wait(self, timeout: Optional[float]) -> bool:
        """Sleep up to timeout; True as soon as the token is cancelled."""
        return self._event.wait(timeout)

    def remaining(self) -> Optional[float]:
        """Seconds until the deadline (negative when past), None without one."""
        return None if self.deadline is None else self.deadline - self._clock()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left < 0


def cancel_at_deadline(token: CancelToken, reason: str) -> Callable[[], None]:
    """Cancel `token` with `reason` when its deadline passes (the worker's: before the first
    sound, so a hung synthesis or a slow retry never plays an announcement late). Returns
    the disarm function: once audio has started, the announcement plays to its end."""
    left = token.remaining()
    if left is None:
        return lambda: None
    timer = threading.Timer(max(0.0, left), token.cancel, args=(reason,))
    timer.name = "coze-speaker-deadline"
    timer.daemon = True
    timer.start()
    return timer.cancel
