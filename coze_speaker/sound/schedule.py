"""Starting a device at a planned instant (a broadcast's start on the shared clock).

The arithmetic lives here, apart from any device, so it can be checked exactly: a device
holds `queued` frames it has not played yet, so a frame written now comes out at
now + queued / rate; to have the first audio frame out at `at`, the silence written before
it is the rest of the gap, in whole frames. `wait_until` is the best effort of a back end
that cannot see its device's delay (aplay, simpleaudio): it hands the first audio over at
the instant.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from ..cue import StartCue


def due_out(now: float, queued: int, rate: int) -> float:
    """When a frame written at `now` plays: after the `queued` frames the device still holds."""
    return now + queued / float(rate)


def silence_before(at: float, now: float, queued: int, rate: int) -> int:
    """Frames of silence to write at `now` so that the frame written after them plays at
    `at`; 0 when `at` is too near (or past) for that: the audio then starts late."""
    return max(0, int(round((at - due_out(now, queued, rate)) * rate)))


def wait_until(cue: Optional[StartCue], stopped: Callable[[], bool],
               sleep: Callable[[float], bool]) -> None:
    """Best effort for a player that cannot see its device's delay: wait for the plan, then
    until its instant (`sleep(s)` returns True when stopped), and settle the cue with the
    moment the first audio is handed over."""
    if cue is None or cue.settled:
        return
    at = cue.wait_plan(stopped)
    if at is None or stopped():
        return
    for _ in range(100_000):  # bounded: a plan can only move earlier, and is at most 30 s ahead
        left = (cue.at or at) - time.time()
        if left <= 0 or sleep(min(left, 0.5)):
            break
    if not stopped():
        cue.settle(time.time())
