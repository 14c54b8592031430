"""The queue journal: accepted announcements survive a crash or restart while their TTL allows.

Written (atomically, temp file + rename) before an announcement is reported `queued` and
whenever one ends, so "queued" means "will be spoken, or reported expired, even if the
daemon dies now".
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
import time
from pathlib import Path
from typing import Iterable, List, Tuple

from ..fsutil import atomic_write
from .announcement import Announcement

log = logging.getLogger(__name__)

_RUNTIME = {"received", "deadline", "correlation_data"}
_FIELDS = dataclasses.fields(Announcement)


class Journal:
    """A JSON list of pending announcements with wall-clock deadlines."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._warned = False
        self._encoded: dict = {}

    def write(self, announcements: Iterable[Announcement]) -> None:
        """Replace the journal with these announcements (each encoded once, then reused:
        a burst must not re-serialize the whole queue per message)."""
        anns = list(announcements)
        with self._lock:
            encoded = {ann.id: self._encoded.get(ann.id) or self._encode(ann) for ann in anns}
            self._encoded = encoded
            body = ("[" + ",".join(encoded[ann.id] for ann in anns) + "]").encode("utf-8")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # not durable: rewritten per queue change; a process crash keeps the page cache
                atomic_write(self.path, body, durable=False)
                self._warned = False
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot write the queue journal %s: %s (queued announcements will not "
                                "survive a restart until it works again)", self.path, exc)

    @staticmethod
    def _encode(ann: Announcement) -> str:
        data = {f.name: getattr(ann, f.name) for f in _FIELDS if f.name not in _RUNTIME}
        if ann.deadline is not None:
            data["deadline_wall"] = time.time() + (ann.deadline - time.monotonic())
        if ann.correlation_data is not None:
            data["correlation_data_b64"] = base64.b64encode(ann.correlation_data).decode()
        return json.dumps(data, ensure_ascii=False)

    def load(self) -> Tuple[List[Announcement], List[Announcement]]:
        """(still valid, expired) announcements from the last run; deadlines back on the monotonic clock."""
        try:
            entries = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return [], []
        except (OSError, ValueError) as exc:
            log.warning("ignoring an unreadable queue journal %s: %s", self.path, exc)
            return [], []
        fields = {f.name for f in _FIELDS}
        now_wall, now_mono = time.time(), time.monotonic()
        valid: List[Announcement] = []
        expired: List[Announcement] = []
        for data in entries if isinstance(entries, list) else []:
            try:
                wall = data.pop("deadline_wall", None)
                corr = data.pop("correlation_data_b64", None)
                ann = Announcement(**{k: v for k, v in data.items() if k in fields})
                ann = dataclasses.replace(
                    ann, received=now_mono,
                    deadline=None if wall is None else now_mono + (wall - now_wall),
                    correlation_data=base64.b64decode(corr) if corr else None)
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning("skipping a broken journal entry: %s", exc)
                continue
            (expired if ann.expired(now_mono) else valid).append(ann)
        return valid, expired
