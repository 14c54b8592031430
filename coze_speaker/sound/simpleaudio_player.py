"""The simpleaudio back end: one whole buffer through the simpleaudio extension."""

from __future__ import annotations

import logging
import threading
from typing import Iterable, List, Optional, Type

from .player import (_END, _POLL, MISSING, Player, PlayerError, _check_rate, _Source, _Stopped, classify_error,
                     device_error_message)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- simpleaudio


#: How to get the module: an extra, since it is compiled (no Linux wheels on PyPI).
INSTALL_HINT = "pip install 'coze-speaker[simpleaudio]' (it builds with gcc, python3-dev and libasound2-dev)"


def _import_simpleaudio():
    """The module, imported on first use: coze-speaker installs and runs without it (aplay)."""
    try:
        import simpleaudio  # type: ignore
    except ImportError as exc:
        raise PlayerError(f"audio.backend simpleaudio needs the simpleaudio module, which is not installed ({exc}): "
                          f"{INSTALL_HINT}, or set audio.backend: aplay", MISSING) from None
    return simpleaudio


def _simpleaudio_error_class(module: object) -> Type[BaseException]:
    try:
        from simpleaudio import _simpleaudio  # type: ignore

        return getattr(_simpleaudio, "SimpleaudioError", Exception)
    except ImportError:  # pragma: no cover
        return Exception


class SimpleaudioPlayer(Player):
    """Play through the simpleaudio extension: always ALSA "default", one whole buffer.

    simpleaudio cannot stream, so the chunks are joined first. Open errors are retried
    like aplay's. Caveat (simpleaudio itself): its open is blocking, so a busy device
    that never frees up can hold the calling thread; prefer aplay where available.
    """

    name = "simpleaudio"

    def __init__(self, device: str = "default", *, retries: int = 3, backoff: float = 0.2, wake_ms: int = 0):
        super().__init__(wake_ms=wake_ms)
        if device not in (None, "", "default"):
            log.warning("simpleaudio always plays on ALSA 'default'; ignoring device %r", device)
        self.device = "default"
        self.retries = max(1, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.attempts = 0
        self._lock = threading.Lock()
        self._play_obj = None

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            play_obj = self._play_obj
        if play_obj is not None:
            try:
                play_obj.stop()
            except Exception:  # pragma: no cover
                pass

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        rate = _check_rate(rate)
        sa = _import_simpleaudio()
        error_class = _simpleaudio_error_class(sa)
        self._begin()
        self.attempts = 0
        source = _Source(chunks)
        try:
            parts: List[bytes] = []
            while True:
                kind, chunk = self._next(source)
                if kind == _END:
                    break
                parts.append(chunk)
            buf = b"".join(parts)
            if len(buf) % 2:
                buf = buf[:-1]  # whole frames only
            if not buf:
                return True
            buf = self._wake(rate) + buf  # each play opens the device: a cold start
            last: Optional[PlayerError] = None
            for attempt in range(1, self.retries + 1):
                self.attempts = attempt
                if self._stop_event.is_set():
                    raise _Stopped()
                try:
                    play_obj = sa.play_buffer(buf, 1, 2, rate)
                except error_class as exc:
                    text = str(exc)
                    kind = classify_error(text)
                    last = PlayerError(device_error_message(self.device, kind, f"simpleaudio: {text}"), kind)
                    log.info("simpleaudio attempt %d/%d: %s", attempt, self.retries, last.message)
                    if attempt < self.retries and self._sleep(self.backoff * (2 ** (attempt - 1))):
                        raise _Stopped() from None
                    continue
                with self._lock:
                    self._play_obj = play_obj
                try:
                    while play_obj.is_playing():
                        if self._stop_event.wait(_POLL):
                            play_obj.stop()
                            raise _Stopped()
                finally:
                    with self._lock:
                        self._play_obj = None
                if self._stop_event.is_set():
                    raise _Stopped()
                return True
            assert last is not None
            raise last
        except _Stopped:
            return self._stopped_result()
        finally:
            source.cancel()


