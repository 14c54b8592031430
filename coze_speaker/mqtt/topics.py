"""Every topic of one speaker, and the availability payloads."""

from __future__ import annotations

from dataclasses import dataclass

AVAILABLE = b"online"
NOT_AVAILABLE = b"offline"


@dataclass(frozen=True)
class Topics:
    """Every topic of one speaker: B = base topic, D = device id."""

    base: str
    device: str
    groups: tuple = ()
    discovery_prefix: str = "homeassistant"

    @property
    def say(self) -> str:
        return f"{self.base}/{self.device}/say"

    @property
    def all_say(self) -> str:
        return f"{self.base}/all/say"

    def group_say(self, group: str) -> str:
        return f"{self.base}/group/{group}/say"

    @property
    def say_topics(self) -> tuple:
        return (self.say, self.all_say, *(self.group_say(g) for g in self.groups))

    @property
    def stop(self) -> str:
        return f"{self.base}/{self.device}/stop"

    @property
    def volume_set(self) -> str:
        return f"{self.base}/{self.device}/volume/set"

    @property
    def volume(self) -> str:
        return f"{self.base}/{self.device}/volume"

    @property
    def voice_set(self) -> str:
        return f"{self.base}/{self.device}/voice/set"

    @property
    def chime_set(self) -> str:
        return f"{self.base}/{self.device}/chime/set"

    @property
    def availability(self) -> str:
        return f"{self.base}/{self.device}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/{self.device}/state"

    @property
    def event(self) -> str:
        return f"{self.base}/{self.device}/event"

    @property
    def member(self) -> str:
        """This speaker's retained fleet record (mqtt/fleet.py)."""
        return f"{self.base}/fleet/members/{self.device}"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    @property
    def discovery(self) -> str:
        """Home Assistant's device-based discovery config of this speaker."""
        return f"{self.discovery_prefix}/device/{self.device}/config"
