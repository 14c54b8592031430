"""Home Assistant MQTT discovery: one retained device-based config for the whole speaker.

Home Assistant (2024.11+) reads `<prefix>/device/<D>/config` and creates a notify entity to
speak, a volume slider, a "speaking" sensor, a stop button and a "last announcement" sensor.
"""

from __future__ import annotations

import json

from .. import __version__
from .topics import AVAILABLE, NOT_AVAILABLE, Topics

SUPPORT_URL = "https://github.com/coze-speaker/coze-speaker"


def discovery_topic(topics: Topics) -> str:
    return f"{topics.discovery_prefix}/device/{topics.device}/config"


def discovery_payload(topics: Topics, *, name: str = "") -> bytes:
    """The retained discovery config: device, origin and components, all tied to availability."""
    uid = f"coze_speaker_{topics.device}"
    common = {
        "availability_topic": topics.availability,
        "payload_available": AVAILABLE.decode(),
        "payload_not_available": NOT_AVAILABLE.decode(),
    }
    components = {
        "say": {
            "platform": "notify", "unique_id": f"{uid}_say", "name": "Say",
            "command_topic": topics.say, "icon": "mdi:account-voice", **common,
        },
        "volume": {
            "platform": "number", "unique_id": f"{uid}_volume", "name": "Volume",
            "command_topic": topics.volume_set, "state_topic": topics.volume,
            "min": 0, "max": 100, "step": 1, "mode": "slider", "unit_of_measurement": "%",
            "icon": "mdi:volume-high", "retain": False, **common,
        },
        "speaking": {
            "platform": "binary_sensor", "unique_id": f"{uid}_speaking", "name": "Speaking",
            "state_topic": topics.state,
            "value_template": "{{ 'ON' if value_json.state == 'speaking' else 'OFF' }}",
            "payload_on": "ON", "payload_off": "OFF", "device_class": "sound", **common,
        },
        "stop": {
            "platform": "button", "unique_id": f"{uid}_stop", "name": "Stop",
            "command_topic": topics.stop, "payload_press": "all", "icon": "mdi:stop", **common,
        },
        "last": {
            "platform": "sensor", "unique_id": f"{uid}_last", "name": "Last announcement",
            "state_topic": topics.state, "value_template": "{{ value_json.last | default('') }}",
            "icon": "mdi:message-text", **common,
        },
    }
    config = {
        "device": {
            "identifiers": [uid],
            "name": name or f"Coze speaker {topics.device}",
            "manufacturer": "coze-speaker",
            "model": "MQTT announcement speaker",
            "sw_version": __version__,
        },
        "origin": {"name": "coze-speaker", "sw_version": __version__, "support_url": SUPPORT_URL},
        "components": components,
        "qos": 1,
    }
    return json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
