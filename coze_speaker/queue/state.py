"""Small daemon state kept across restarts (the volume), written atomically in the state dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from ..fsutil import atomic_write

log = logging.getLogger(__name__)


class StateStore:
    """A JSON file per key under the state dir; a broken or missing file reads as None."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def load(self, name: str) -> Optional[Any]:
        try:
            return json.loads((self.dir / f"{name}.json").read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.dir / f"{name}.json", exc)
            return None

    def save(self, name: str, value: Any) -> bool:
        path = self.dir / f"{name}.json"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # durable: saved rarely (a volume change) and expected to survive a power cut
            atomic_write(path, json.dumps(value).encode("utf-8"), durable=True)
            return True
        except OSError as exc:
            log.warning("cannot save state to %s: %s", path, exc)
            return False
