"""Small daemon state kept across restarts (the volume, the default voice and chime chosen at
run time, the last announcement), written atomically in the state dir."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..fsutil import atomic_write

log = logging.getLogger(__name__)


def device_file(directory: Path, name: str, device: Optional[str]) -> Path:
    """`<dir>/<name>-<device>.json`: two speakers on one machine sharing the default state dir
    keep their own journal and volume. A file from before there was a device id in the name
    (`<name>.json`) is taken over once, so an upgrade keeps what was queued."""
    directory = Path(directory)
    if not device:
        return directory / f"{name}.json"
    path = directory / f"{name}-{device}.json"
    legacy = directory / f"{name}.json"
    if legacy.exists() and not path.exists():
        try:
            os.replace(legacy, path)
            log.info("moved %s to %s (state files are per device id now)", legacy, path)
        except OSError as exc:
            log.warning("cannot move %s to %s: %s", legacy, path, exc)
    return path


class StateStore:
    """A JSON file per key under the state dir (per device id); a broken or missing file reads as None."""

    def __init__(self, directory: Path, device: Optional[str] = None) -> None:
        self.dir = Path(directory)
        self.device = device

    def path(self, name: str) -> Path:
        return device_file(self.dir, name, self.device)

    def load(self, name: str) -> Optional[Any]:
        path = self.path(name)
        try:
            return json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state file %s: %s", path, exc)
            return None

    def save(self, name: str, value: Any) -> bool:
        path = self.path(name)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # durable: saved rarely (a volume change) and expected to survive a power cut
            atomic_write(path, json.dumps(value).encode("utf-8"), durable=True)
            return True
        except OSError as exc:
            log.warning("cannot save state to %s: %s", path, exc)
            return False


def save_choice(store: Optional[StateStore], name: str, value: Any, replaces: Any) -> None:
    """Keep a choice made at run time (the default voice, the chime) with the config value it
    replaced: once the config says something else, the config wins (see `load_choice`)."""
    if store is not None:
        store.save(name, {"value": value, "replaces": replaces})


def load_choice(store: Optional[StateStore], name: str, replaces: Any) -> Optional[Any]:
    """The choice kept by `save_choice`, or None when there is none or the config's value
    changed since it was made (editing the config is a newer choice)."""
    saved = store.load(name) if store is not None else None
    if isinstance(saved, dict) and "value" in saved and saved.get("replaces") == replaces:
        return saved["value"]
    return None
