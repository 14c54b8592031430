"""Every player back end, and the one function that picks one.

See player.py (the interface every back end implements), alsa_player.py, aplay.py,
simpleaudio_player.py.
"""

from __future__ import annotations

import shutil
from typing import Any

from ..vocabulary import AUDIO_BACKENDS
from .alsa_player import AlsaPlayer, alsa_available, import_alsaaudio
from .aplay import AplayPlayer
from .player import (BUSY, FAILED, KINDS, MISSING, NullPlayer, Player, PlayerError, _check_rate, _END, _Source,
                     _Stopped, classify_error, device_error_message)
from .simpleaudio_player import SimpleaudioPlayer, _import_simpleaudio

__all__ = ["AlsaPlayer", "AplayPlayer", "BACKENDS", "BUSY", "FAILED", "KINDS", "MISSING", "NullPlayer", "Player", "PlayerError",
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

    backend: 'auto' (alsa when pyalsaaudio is installed, else aplay when on PATH, else
    simpleaudio if importable, else PlayerError kind 'missing'), 'alsa', 'aplay',
    'simpleaudio' or 'null'. Keyword arguments a back end does not take are ignored
    (``aplay``, ``retries``, ``backoff``, ``keep_open``, ``wake_ms``, ``realtime``, ...), so
    one call works for every back end. ``keep_open`` means something to alsa only: the
    other back ends open the device for every play.
    """
    backend = (backend or "auto").strip().lower()
    if backend == "auto":
        if alsa_available():
            backend = "alsa"
        elif shutil.which(kw.get("aplay") or "aplay"):
            backend = "aplay"
        elif _simpleaudio_importable():
            backend = "simpleaudio"
        else:
            raise PlayerError("no audio backend: install pyalsaaudio (coze-speaker[alsa]), alsa-utils or "
                              "simpleaudio", MISSING)
    if backend == "alsa":
        if not alsa_available():
            import_alsaaudio()  # raises the reason (not installed, too old); imported only if it is usable
        keys: tuple = ("retries", "backoff", "keep_open", "wake_ms", "stall_timeout")
        return AlsaPlayer(device, **{k: v for k, v in kw.items() if k in keys})
    if backend == "aplay":
        keys = ("aplay", "retries", "backoff", "buffer_time_us", "stall_timeout", "exit_grace", "wake_ms")
        return AplayPlayer(device, **{k: v for k, v in kw.items() if k in keys})
    if backend == "simpleaudio":
        _import_simpleaudio()
        return SimpleaudioPlayer(device, **{k: v for k, v in kw.items() if k in ("retries", "backoff", "wake_ms")})
    if backend == "null":
        return NullPlayer(device, **{k: v for k, v in kw.items() if k in ("realtime", "buffer", "wake_ms")})
    raise ValueError(f"unknown audio backend {backend!r} (choose from {', '.join(BACKENDS)})")
