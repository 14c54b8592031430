"""A cap on Coze spending, so a looping automation cannot drain the account.

Counts requests in a sliding hour and characters per calendar day (local time); over a
cap, calls are refused with code ``rate_limited`` and the log warns once per window.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

from ..coze import CozeError

log = logging.getLogger(__name__)


class CostLimitError(CozeError):
    """A Coze call refused locally because a configured spending cap is reached."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.code = "rate_limited"  # type: ignore[assignment]

    def __str__(self) -> str:
        return self.msg


class CostGuard:
    """Thread-safe counters; 0 disables a cap."""

    def __init__(self, max_requests_per_hour: int = 0, max_chars_per_day: int = 0, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_requests_per_hour = max_requests_per_hour
        self.max_chars_per_day = max_chars_per_day
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: deque = deque()
        self._day: Optional[_dt.date] = None
        self._chars = 0
        self._warned: set = set()

    def acquire(self, chars: int) -> None:
        """Count one request of `chars` characters, or raise CostLimitError without counting."""
        with self._lock:
            now = self._clock()
            while self._calls and self._calls[0] <= now - 3600:
                self._calls.popleft()
            today = _dt.datetime.fromtimestamp(now).date()
            if today != self._day:
                self._day, self._chars = today, 0
            if self.max_requests_per_hour and len(self._calls) >= self.max_requests_per_hour:
                self._refuse(("hour", int(now // 3600)),
                             f"Coze request cap reached: {self.max_requests_per_hour} per hour "
                             "(limits.max_requests_per_hour); cached phrases still play")
            if self.max_chars_per_day and self._chars + chars > self.max_chars_per_day:
                self._refuse(("day", today),
                             f"Coze character cap reached: {self.max_chars_per_day} per day "
                             "(limits.max_chars_per_day); cached phrases still play")
            self._calls.append(now)
            self._chars += chars

    def _refuse(self, window: tuple, message: str) -> None:
        if window not in self._warned:
            if len(self._warned) > 64:
                self._warned.clear()
            self._warned.add(window)
            log.warning("%s", message)
        raise CostLimitError(message)
