"""Other speakers as a source of audio: the interface the audio source calls down into.

The fleet (speakers sharing one MQTT base topic) lives in the MQTT layer, which is the only
publisher; the audio source must not call up into it. So the source is given an object with
this interface at construction (app/wiring.py injects the MQTT layer's implementation, or
nothing when the fleet is off) and only ever calls down into it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

from ..cue import StartCue


@dataclass(frozen=True)
class Broadcast:
    """An announcement every member of `scope` received (`all` or `group/<name>`); `id` is
    the announcement's id, carried with the audio for the logs."""

    id: str
    scope: str


class PeerTurn(Exception):
    """No other member delivers this piece: produce it here (and `share` it when asked to)."""

    def __init__(self, reason: str, *, share: bool = False) -> None:
        super().__init__(reason)
        self.share = share


class PeerShare(Protocol):
    """Audio this member produces, streamed to the others as it is produced."""

    def write(self, chunk: bytes) -> None:
        ...

    def commit(self) -> None:
        """The audio is complete and may be cached by the receivers (total length + crc32)."""

    def abort(self) -> None:
        """The audio ends here and must not be cached by anyone."""


class PeerAudio(Protocol):
    """Other speakers: their cached phrases and the audio one of them synthesizes once."""

    #: a broadcast starts at the same instant in every room (`fleet.sync`)
    sync: bool

    def receive(self, key: str, rate: int, *, broadcast: Optional[Broadcast],
                stopped: threading.Event) -> Iterator[bytes]:
        """The audio of `key` from another member, as it arrives; raises PeerTurn (before or
        between chunks) when this member must produce it itself: it was elected, nobody else
        has it, or the member streaming it went silent (then the caller skips what it played)."""
        ...

    def elected(self, key: str, rate: int, broadcast: Broadcast) -> bool:
        """This member is the one that streams `key` to the others for this broadcast."""
        ...

    def share(self, key: str, rate: int, broadcast: Optional[Broadcast], *,
              cue: Optional[StartCue] = None) -> PeerShare:
        """A stream to the others; with `cue` (a broadcast's first piece) its first message
        carries the start plan: the earliest one `cue` knows, else its first audio + the lead."""
        ...

    def plan(self, key: str, rate: int, broadcast: Broadcast, cue: StartCue) -> None:
        """Resolve `cue` for a broadcast whose first piece is `key`: it expects the plan the
        coordinating member sends (and gets it, the earliest one, when it arrives), or is
        skipped when no plan will come (alone in the scope)."""
        ...
