"""Small daemon state kept across restarts (the volume), written atomically in the state dir."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

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
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(value, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return True
        except OSError as exc:
            log.warning("cannot save state to %s: %s", path, exc)
            try:
                tmp.unlink()
            except OSError:
                pass
            return False
