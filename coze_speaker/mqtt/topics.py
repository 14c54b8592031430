"""Every topic of one speaker, and the availability payloads."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..config import MqttConfig

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

def say_command(mqtt: MqttConfig, text: str = "Hello from coze-speaker") -> str:
    """The one shell line that makes this speaker speak (logged at start): the broker, TLS and
    user of the config; never the password itself."""
    args = ["mosquitto_pub", "-h", mqtt.host, "-p", str(mqtt.port)]
    if mqtt.tls is not None:
        args += ["--cafile", str(mqtt.tls.ca_certs)] if mqtt.tls.ca_certs else ["--capath", "/etc/ssl/certs"]
        if mqtt.tls.certfile:
            args += ["--cert", str(mqtt.tls.certfile)] + (["--key", str(mqtt.tls.keyfile)] if mqtt.tls.keyfile else [])
        if mqtt.tls.insecure:
            args.append("--insecure")
    line = " ".join(shlex.quote(a) for a in args)
    if mqtt.username:
        line += f" -u {shlex.quote(mqtt.username)}" + (" -P \"$MQTT_PASSWORD\"" if mqtt.password else "")
    say = Topics(mqtt.base_topic, mqtt.device_id).say
    return f"{line} -t {shlex.quote(say)} -m {shlex.quote(text)}"
