"""A player paced like a real device that records when each chunk arrived, to find gaps.

It behaves like ``NullPlayer(realtime=True, buffer=B)`` (coze_speaker/sound/players.py, or
coze_speaker/players.py before the subpackages): a chunk is taken once the audio accepted so
far is within B seconds of its end, and play() returns when the audio would have finished.
On top, every chunk's arrival is compared with the device clock: if a chunk arrives after the
audio before it has run out, the device starved, and the difference is a *gap* (an audible
dropout on real hardware).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

from harness import PLAYERS_MODULES, import_first

_players = import_first(*PLAYERS_MODULES)
_END, NullPlayer, _check_rate = _players._END, _players.NullPlayer, _players._check_rate
_Source, _Stopped = _players._Source, _players._Stopped


@dataclass
class PacedPlay:
    start: float
    first: Optional[float] = None
    end: Optional[float] = None
    chunks: int = 0
    bytes: int = 0
    audio_seconds: float = 0.0
    #: (monotonic time the late chunk arrived, seconds the device had been starving)
    gaps: List[Tuple[float, float]] = field(default_factory=list)
    arrivals: List[Tuple[float, float]] = field(default_factory=list)  # (arrival, device clock before it)

    @property
    def wall_seconds(self) -> float:
        return (self.end or time.monotonic()) - (self.first or self.start)


class PacedRecorder(NullPlayer):
    name = "paced"

    def __init__(self, buffer: float = 0.1) -> None:
        super().__init__("paced", realtime=True, buffer=buffer)
        self.plays: List[PacedPlay] = []
        self.first_chunk = threading.Event()

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        rate = _check_rate(rate)
        self._begin()
        rec = PacedPlay(start=time.monotonic())
        self.plays.append(rec)
        source = _Source(chunks)
        clock: Optional[float] = None  # when the audio accepted so far ends
        try:
            while True:
                kind, chunk = self._next(source)
                now = time.monotonic()
                if kind == _END:
                    break
                if rec.first is None:
                    rec.first = now
                    self.first_chunk.set()
                elif clock is not None and now > clock:
                    rec.gaps.append((now, now - clock))
                rec.arrivals.append((now, clock if clock is not None else now))
                if clock is None or clock < now:
                    clock = now  # underrun (or the start): the device starts again
                seconds = len(chunk) / (2.0 * rate)
                clock += seconds
                rec.chunks += 1
                rec.bytes += len(chunk)
                rec.audio_seconds += seconds
                if self._sleep(clock - self.buffer - time.monotonic()):
                    raise _Stopped()
            if clock is not None and self._sleep(clock - time.monotonic()):
                raise _Stopped()
            rec.end = time.monotonic()
            return True
        except _Stopped:
            rec.end = time.monotonic()
            return self._stopped_result()
        finally:
            source.cancel()
