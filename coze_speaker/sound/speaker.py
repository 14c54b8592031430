"""Plays one stream of PCM through a player, shaped (chime, volume) for the moment.

The speaker knows nothing of Coze or the cache: it takes chunks and the announcement's
cancel token, so a stop silences the device whoever asks for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional

from ..cancel import CancelToken
from ..cue import StartCue
from .player import Player, Ready
from .schedule import wait_until
from .shaping import shape


@dataclass
class PlayResult:
    """How one playback went."""

    played: bool  #: to the end (False: stopped, or the token was cancelled)
    first_audio: Optional[float] = None  #: monotonic time the first speech chunk was handed on
    duration: float = 0.0


class Speaker:
    """A player with the shaping of the moment; one playback at a time."""

    def __init__(self, player: Player, *, rate: int) -> None:
        self.player = player
        self.rate = rate

    def play(self, chunks: Iterable[bytes], *, token: CancelToken, volume: int = 100,
             chime: Optional[bytes] = None, ready: bool = False,
             after_first_audio: Optional[Callable[[], None]] = None,
             cue: Optional[StartCue] = None) -> PlayResult:
        """Play the chunks unless the token is cancelled; raises PlayerError (and whatever the
        chunks raise).

        The token is checked before every chunk, so a stop that comes before the player has
        even started is not lost; cancelling it stops the device at once.
        `after_first_audio` runs once the first chunk has been handed on, never before it:
        work it starts (synthesizing the next announcement) stays off the first chunk's path.
        `ready`: taking the next chunk never blocks (a cache read), so the player takes them in
        its own thread (see player.Ready).
        With `cue` (a synchronized broadcast) the first audio plays at the cue's instant: the
        alsa player starts its device on it; the others get the first chunk at the instant.
        """
        first: List[float] = []

        def guarded(stream: Iterable[bytes]) -> Iterator[bytes]:
            for chunk in stream:
                if token.cancelled:
                    return
                if not first:
                    if cue is not None and not precise:
                        wait_until(cue, lambda: token.cancelled, token.wait)
                        if token.cancelled:
                            return
                    first.append(time.monotonic())
                    yield chunk
                    if after_first_audio is not None:
                        after_first_audio()
                    continue
                yield chunk

        precise = cue is not None and self.player.starts_on_cue
        started = time.monotonic()
        unregister = token.on_cancel(self.player.stop)
        try:
            shaped: Iterable[bytes] = guarded(shape(chunks, rate=self.rate, volume=volume, chime=chime))
            if ready:
                shaped = Ready(shaped)
            if precise:
                assert cue is not None
                played = self.player.play_cued(shaped, self.rate, cue)
            else:
                played = self.player.play(shaped, self.rate)
        finally:
            unregister()
        return PlayResult(played=bool(played) and not token.cancelled,
                          first_audio=first[0] if first else None, duration=time.monotonic() - started)
