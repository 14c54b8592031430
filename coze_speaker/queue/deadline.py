"""The playing announcement's deadline: the TTL bounds when its sound *starts*.

One long-lived thread per queue watches the token of the announcement being prepared and
cancels it (reason EXPIRED) when its deadline passes before its first sound: a hung
synthesis, a retry or a busy device then ends it `expired` instead of playing it late.
A timer thread per announcement did the same, but starting a thread made the worker wait
for the new thread to be scheduled, on the path of every cache hit to its first sound.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ..cancel import CancelToken

#: Cancel reason when the deadline passed before the first sound: it ends `expired`.
EXPIRED = "expired"


class DeadlineWatch:
    """Cancels the armed token at its deadline unless it is disarmed first (one at a time:
    the worker plays one announcement at a time)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._token: Optional[CancelToken] = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def arm(self, token: CancelToken) -> Callable[[], None]:
        """Watch `token`'s deadline; returns the disarm function (call it once sound has
        started: the announcement then plays to its end)."""
        if token.remaining() is None:
            return lambda: None
        with self._cond:
            self._token = token
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="coze-speaker-deadline", daemon=True)
                self._thread.start()
            self._cond.notify_all()

        def disarm() -> None:
            with self._cond:
                if self._token is token:
                    self._token = None
        return disarm

    def close(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._closed, self._token = True, None
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                token = self._token
                left = token.remaining() if token is not None else None
                if token is None or left is None:
                    self._cond.wait()
                elif left > 0:
                    self._cond.wait(left)
                else:
                    self._token = None
                    self._cond.release()  # its callbacks stop the player and the producer
                    try:
                        token.cancel(EXPIRED)
                    finally:
                        self._cond.acquire()
