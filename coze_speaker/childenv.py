"""The environment a child process (aplay, espeak-ng) gets: what it needs to find its tools,
locale and sound server, and nothing else.

A Coze token or MQTT password taken from the environment (`COZE_API_TOKEN`, `MQTT_PASSWORD`)
never reaches a child, where another user could read it in /proc or a crash dump.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

#: Variables passed on by name.
KEEP = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS",
                  "ESPEAK_DATA_PATH", "JACK_DEFAULT_SERVER"})
#: Variables passed on by prefix: locale and the sound stack (ALSA, PulseAudio, PipeWire).
KEEP_PREFIXES = ("LC_", "ALSA_", "PULSE_", "PIPEWIRE_")


def child_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The minimal environment for a child process."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k in KEEP or k.startswith(KEEP_PREFIXES)}
