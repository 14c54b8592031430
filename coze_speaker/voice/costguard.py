"""A cap on Coze spending, so a looping automation cannot drain the account.

Counts HTTP requests (retries included) in a sliding hour and characters per calendar day
(local time); over a cap, calls are refused with code ``rate_limited`` and the log warns once
per window. With a file, the counts outlive a reload and a restart, and processes sharing
it (the daemon, `say`, `cache warm`) share one cap: each request re-reads the file if another
process wrote it, under a lock, and writes it back atomically.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Deque, Iterator, Optional, Tuple

from ..coze import CozeError
from ..fsutil import atomic_write

log = logging.getLogger(__name__)

_VERSION = 1


class CostLimitError(CozeError):
    """A Coze call refused locally because a configured spending cap is reached."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, code="rate_limited")

    def __str__(self) -> str:
        return self.msg


class CostGuard:
    """Thread-safe counters; 0 disables a cap. `path` keeps them on disk (None: in memory)."""

    def __init__(self, max_requests_per_hour: int = 0, max_chars_per_day: int = 0, *,
                 path: Optional[Path] = None, clock: Callable[[], float] = time.time) -> None:
        self.max_requests_per_hour = max_requests_per_hour
        self.max_chars_per_day = max_chars_per_day
        self.path = Path(path) if path is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: Deque[float] = deque()
        self._day: Optional[_dt.date] = None
        self._chars = 0
        self._warned: set = set()
        self._seen: Optional[Tuple[Path, int, int, int]] = None  # the file as last read or written
        self._file_warned = False

    def acquire(self, chars: int) -> None:
        """Count one request of `chars` characters, or raise CostLimitError without counting."""
        with self._lock, self._file_lock():
            self._reload()
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
            # the newest `cap` requests are all the hourly check needs (and all the file keeps)
            while len(self._calls) > self.max_requests_per_hour:
                self._calls.popleft()
            self._chars += chars
            self._save()

    def _refuse(self, window: tuple, message: str) -> None:
        if window not in self._warned:
            if len(self._warned) > 64:
                self._warned.clear()
            self._warned.add(window)
            log.warning("%s", message)
        raise CostLimitError(message)

    # -- the file -------------------------------------------------------------------------

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Exclusive use of the file across processes (a lock file beside it)."""
        if self.path is None:
            yield
            return
        lock = self.path.with_name(f".{self.path.name}.lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            self._file_failed("cannot lock", exc)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _reload(self) -> None:
        """Take the counts from the file when it changed since we last read or wrote it."""
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return  # nothing saved yet: what is in memory stands
        except OSError as exc:
            self._file_failed("cannot read", exc)
            return
        seen = (self.path, st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            calls, day, chars = _parse(self.path.read_bytes(), self._clock())
        except (OSError, ValueError) as exc:
            log.warning("ignoring the spending counters in %s (%s): counting from zero", self.path, exc)
            return
        self._calls, self._day, self._chars = calls, day, chars

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"version": _VERSION, "requests": list(self._calls),
                "day": self._day.isoformat() if self._day else None, "chars": self._chars}
        try:
            # not durable: a crash or restart keeps the counts; a power cut may lose the last seconds
            atomic_write(self.path, json.dumps(data).encode("utf-8"), durable=False)
            st = self.path.stat()
            self._seen = (self.path, st.st_ino, st.st_mtime_ns, st.st_size)
            self._file_warned = False
        except OSError as exc:
            self._file_failed("cannot save", exc)

    def _file_failed(self, what: str, exc: OSError) -> None:
        if not self._file_warned:
            self._file_warned = True
            log.warning("%s the spending counters %s (%s): counting in memory only", what, self.path, exc)


def _parse(raw: bytes, now: float) -> Tuple[Deque[float], Optional[_dt.date], int]:
    """The counters in a file; ValueError naming what is wrong."""
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise ValueError("not a version 1 counter file")
    requests, day, chars = data.get("requests"), data.get("day"), data.get("chars")
    if not isinstance(requests, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                 and t == t for t in requests):
        raise ValueError("requests: expected a list of times")
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 0:
        raise ValueError("chars: expected a whole number")
    parsed_day = _dt.date.fromisoformat(day) if isinstance(day, str) else None
    # a time ahead of the clock (the clock was set back) counts as now, so it expires within the hour
    return deque(sorted(min(float(t), now) for t in requests)), parsed_day, chars
