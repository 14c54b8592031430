"""Every player back end, and the one function that picks one.

See player.py (the interface every back end implements), aplay.py, simpleaudio_player.py.
"""

from __future__ import annotations

import shutil
from typing import Any

from ..vocabulary import AUDIO_BACKENDS
from .aplay import AplayPlayer
from .player import (BUSY, FAILED, KINDS, MISSING, NullPlayer, Player, PlayerError, _check_rate, _END, _Source,
                     _Stopped, classify_error, device_error_message)
from .simpleaudio_player import SimpleaudioPlayer, _import_simpleaudio

__all__ = ["AplayPlayer", "BACKENDS", "BUSY", "FAILED", "KINDS", "MISSING", "NullPlayer", "Player", "PlayerError",
           "SimpleaudioPlayer", "classify_error", "device_error_message", "make_player", "_check_rate", "_END",
           "_Source", "_Stopped"]

BACKENDS = AUDIO_BACKENDS


def _simpleaudio_importable() -> bool:
    try:
        _import_simpleaudio()
    except PlayerError:
        return False
    return True


def make_player(backend: str, device: str = "default", **kw: Any) -> Player:
    """Build a player.

    backend: 'auto' (aplay when on PATH, else simpleaudio if importable, else
    PlayerError kind 'missing'), 'aplay', 'simpleaudio' or 'null'. Keyword arguments a
    back end does not take are ignored (``aplay``, ``retries``, ``backoff``,
    ``realtime``, ...), so one call works for every back end.
    """
    backend = (backend or "auto").strip().lower()
    if backend == "auto":
        if shutil.which(kw.get("aplay") or "aplay"):
            backend = "aplay"
        elif _simpleaudio_importable():
            backend = "simpleaudio"
        else:
            raise PlayerError("no audio backend: install alsa-utils or simpleaudio", MISSING)
    if backend == "aplay":
        keys = ("aplay", "retries", "backoff", "buffer_time_us", "stall_timeout", "exit_grace")
        return AplayPlayer(device, **{k: v for k, v in kw.items() if k in keys})
    if backend == "simpleaudio":
        _import_simpleaudio()
        return SimpleaudioPlayer(device, **{k: v for k, v in kw.items() if k in ("retries", "backoff")})
    if backend == "null":
        return NullPlayer(device, **{k: v for k, v in kw.items() if k in ("realtime", "buffer")})
    raise ValueError(f"unknown audio backend {backend!r} (choose from {', '.join(BACKENDS)})")
