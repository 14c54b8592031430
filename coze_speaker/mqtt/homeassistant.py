"""Home Assistant MQTT discovery: one retained device-based config for the whole speaker.

Home Assistant (2024.11+) reads `<prefix>/device/<D>/config` and creates: a notify entity
to speak, a volume slider, a "speaking" sensor, a stop button, a "last announcement" sensor,
an event entity for each announcement's outcome, queue-length and last-error sensors, a voice
select and a chime switch.

Home Assistant copies only the availability and topic settings of the device-level config
down to the components, so each component carries its own `qos`. Its notify platform sends
the bare message (the title is dropped): the command template wraps it in JSON, so a message
that starts with `[` or `{` is spoken as text instead of being refused as broken JSON. The
event entity reads the existing event topic; its template passes the final events on (with
HA's required `event_type`) and renders the others empty, which HA ignores.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .. import __version__
from ..vocabulary import FINAL_EVENTS
from .topics import AVAILABLE, NOT_AVAILABLE, Topics

if TYPE_CHECKING:
    from ..voice.voices import CozeVoice

SUPPORT_URL = "https://github.com/coze-speaker/coze-speaker"
#: Home Assistant's states hold at most 255 characters.
HA_STATE_CHARS = 255
#: The event entity's types: the final events, in a stable order.
OUTCOMES = tuple(sorted(FINAL_EVENTS))
#: What the event entity's attributes carry of an event (besides `event_type`).
OUTCOME_FIELDS = ("id", "text", "priority", "source", "reason", "cached", "latency_ms", "duration_ms",
                  "api_calls", "fallback", "error")

#: The notify message, as the say payload's `text` (HA's tojson escapes it as JSON).
SAY_TEMPLATE = "{{ {'text': value} | tojson }}"
#: The select's current option from the state: the label `voice_label` makes.
VOICE_TEMPLATE = ("{% if value_json.voice is not defined %}None{% elif value_json.voice_name is defined %}"
                  "{{ value_json.voice_name }} ({{ value_json.voice }}){% else %}{{ value_json.voice }}{% endif %}")
CHIME_TEMPLATE = "{{ 'ON' if value_json.chime else 'OFF' }}"


def outcome_template() -> str:
    """Final events as `{"event_type": …, <OUTCOME_FIELDS>}`; other events render empty."""
    fields = ", ".join(f"'{name}': value_json.get('{name}')" for name in OUTCOME_FIELDS if name != "text")
    return (f"{{% if value_json.event in {list(OUTCOMES)!r} %}}"
            f"{{{{ {{'event_type': value_json.event, 'text': value_json.text[:{HA_STATE_CHARS}], {fields}}} | tojson }}}}"
            "{% endif %}")


def voice_label(voice_id: str, name: str = "") -> str:
    """How the voice select shows a voice: `Name (id)` (names repeat, clones are named freely,
    ids do not), the id alone without a name. VOICE_TEMPLATE makes the same from the state."""
    return f"{name} ({voice_id})" if name and name != voice_id else voice_id


def voice_options(voices: "Sequence[CozeVoice]", current: Optional[str]) -> List[str]:
    """The select's options: every voice of the list, and the current one even when the list
    lacks it (Home Assistant refuses a state that is not an option)."""
    options = [voice_label(v.voice_id, v.name) for v in voices]
    if current and all(v.voice_id != current for v in voices):
        options.insert(0, voice_label(current))
    return options


def discovery_payload(topics: Topics, *, qos: int = 1, voices: "Sequence[CozeVoice]" = (),
                      voice: Optional[str] = None, name: str = "") -> bytes:
    """The retained discovery config: device, origin and components, all tied to availability."""
    uid = f"coze_speaker_{topics.device}"
    common = {
        "availability_topic": topics.availability,
        "payload_available": AVAILABLE.decode(),
        "payload_not_available": NOT_AVAILABLE.decode(),
        "qos": qos,
    }
    components: Dict[str, Dict[str, Any]] = {
        "say": {
            "platform": "notify", "unique_id": f"{uid}_say", "name": "Say",
            "command_topic": topics.say, "command_template": SAY_TEMPLATE, "icon": "mdi:account-voice", **common,
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
        "announcement": {
            "platform": "event", "unique_id": f"{uid}_announcement", "name": "Announcement",
            "state_topic": topics.event, "event_types": list(OUTCOMES), "value_template": outcome_template(),
            "icon": "mdi:bullhorn", **common,
        },
        "queue": {
            "platform": "sensor", "unique_id": f"{uid}_queue", "name": "Queue",
            "state_topic": topics.state, "value_template": "{{ value_json.queue }}",
            "state_class": "measurement", "icon": "mdi:playlist-play", **common,
        },
        "last_error": {
            "platform": "sensor", "unique_id": f"{uid}_last_error", "name": "Last error",
            "state_topic": topics.state,
            "value_template": ("{{ value_json.last_error.message[:%d] if value_json.last_error is defined "
                               "else '' }}" % HA_STATE_CHARS),
            "json_attributes_topic": topics.state,
            "json_attributes_template": "{{ value_json.last_error | default({}) | tojson }}",
            "entity_category": "diagnostic", "icon": "mdi:alert-circle-outline", **common,
        },
        "chime": {
            "platform": "switch", "unique_id": f"{uid}_chime", "name": "Chime",
            "command_topic": topics.chime_set, "payload_on": "ON", "payload_off": "OFF",
            "state_topic": topics.state, "value_template": CHIME_TEMPLATE, "state_on": "ON", "state_off": "OFF",
            "entity_category": "config", "icon": "mdi:bell-ring", "retain": False, **common,
        },
    }
    options = voice_options(voices, voice)
    if options:  # a select needs at least one option: none without a voice list or a voice
        components["voice"] = {
            "platform": "select", "unique_id": f"{uid}_voice", "name": "Voice",
            "command_topic": topics.voice_set, "state_topic": topics.state, "value_template": VOICE_TEMPLATE,
            "options": options, "entity_category": "config", "icon": "mdi:account-voice", "retain": False,
            **common,
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
    }
    return json.dumps(config, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
