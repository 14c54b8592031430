"""The retained topics a speaker published, remembered in the state dir, so that it can clear
the ones it no longer publishes.

A retained message stays on the broker until someone clears it: after `mqtt.device_id` (or
the base topic, or the discovery prefix) changed, Home Assistant would keep showing the old
device with its entities, forever unavailable; after `homeassistant.enabled` was turned off,
the device would stay. At each connection the front end compares what it publishes now with
what it remembers and sends an empty retained message to each topic it no longer uses (for
Home Assistant that removes the device). The file is per config file, not per device id:
the device id is what changes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, List, Optional

from ..fsutil import atomic_write

log = logging.getLogger(__name__)


class RetainedTopics:
    """The remembered list; `stale(current)` says what to clear, `remember(current)` keeps it."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = Path(path) if path is not None else None

    def load(self) -> List[str]:
        if self.path is None:
            return []
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return []
        topics = data.get("topics") if isinstance(data, dict) else None
        return [t for t in topics if isinstance(t, str) and t and "+" not in t and "#" not in t] \
            if isinstance(topics, list) else []

    def stale(self, current: Iterable[str]) -> List[str]:
        """Topics published retained before and not any more."""
        now = set(current)
        return [t for t in self.load() if t not in now]

    def remember(self, current: Iterable[str]) -> None:
        """Keep `current` (written only when it changed: this runs at every connection)."""
        if self.path is None:
            return
        topics = sorted(set(current))
        if topics == sorted(set(self.load())) and self.path.exists():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, json.dumps({"topics": topics}).encode("utf-8"), durable=True)
        except OSError as exc:
            log.warning("cannot save %s: %s", self.path, exc)
