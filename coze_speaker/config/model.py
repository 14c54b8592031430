"""Every config key, written once: its default, its check and a one-line doc.

Each section is a frozen dataclass whose fields are declared with :func:`~.loader.key`;
the loader reads its table from these fields, so ``MqttConfig()`` and a file without the
key give the same default. Shared ranges and word lists come from ``vocabulary.py``;
config.example.yaml documents every key (a test compares the two).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Tuple, Union

from ..vocabulary import (AUDIO_BACKENDS, BREAKER_MAX_COOLDOWN, EMOTION_SCALE, EMOTIONS, LOUDNESS, PRIORITIES,
                          SAMPLE_RATES, SPEED, TRANSPORTS, VOLUME, WS_RETRY_AFTER)
from .checks import (Secret, boolean, integer, list_of, null_as, number, one_of, optional, path, pattern, secret,
                     string, time_of_day, topic, url, word_or)
from .loader import flag_or_section, key, subsection

__all__ = [
    "LOG_LEVELS", "AUDIO_BACKENDS", "FALLBACK_ENGINES",
    "Config", "CozeConfig", "MqttConfig", "FleetConfig", "TlsConfig", "HomeAssistantConfig", "HermesConfig",
    "AudioConfig", "CacheConfig", "QueueConfig", "LimitsConfig", "QuietHours", "FallbackConfig",
    "StateConfig", "LoggingConfig", "WyomingConfig", "reduce_device_id",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
FALLBACK_ENGINES = ("auto", "none", "espeak-ng")

_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_name = pattern(_NAME_RE)


def reduce_device_id(name: str) -> str:
    """Turn a hostname into a valid device id: lowercase, [a-z0-9_-] only, "speaker" if empty."""
    reduced = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return reduced or "speaker"


def _host_device_id() -> str:
    """The default device id: this host's name, so each speaker gets its own topics."""
    return reduce_device_id(socket.gethostname())


def _home(relative: str) -> Callable[[], Path]:
    """A default path under the home directory, expanded when a config is built."""
    return lambda: Path("~", relative).expanduser()


Problems = Iterator[Tuple[str, str]]


@dataclass(frozen=True)
class CozeConfig:
    """How to reach Coze, and how the voice sounds unless a say payload says otherwise."""

    base_url: str = key("https://api.coze.cn", url(),
                        "Coze API endpoint (https://api.coze.com for the international site).")
    token: Optional[Secret] = key(None, secret(), "Personal access token; by default $COZE_API_TOKEN.",
                                  env="COZE_API_TOKEN")
    token_file: Optional[Path] = key(None, optional(path()),
                                     "File whose stripped content is the token; use token or token_file, not both.",
                                     secret_of="token")
    voice_id: Optional[str] = key(None, optional(string()), "Voice to speak with (see `coze-speaker voices`).")
    speed: float = key(1.0, number(SPEED), f"Speaking speed, {SPEED.shown()} (1 = normal).")
    emotion: Optional[str] = key(None, optional(one_of(*EMOTIONS)),
                                 "Emotion of multi-emotion voices, or null.")
    emotion_scale: Optional[float] = key(None, optional(number(EMOTION_SCALE)),
                                         f"Emotion strength, null or {EMOTION_SCALE.shown()}.")
    loudness_rate: int = key(0, integer(LOUDNESS), f"Loudness adjustment by Coze, {LOUDNESS.shown()} (0 = unchanged).")
    context_texts: Optional[str] = key(None, optional(string(nonempty=False)),
                                       "Text describing how to speak (style or context hint), or null.")
    timeout: float = key(15.0, number(gt=0), "Read timeout in seconds for speech requests.")
    first_audio_timeout: float = key(10.0, number(gt=0),
                                     "Seconds to a speech request's first audio (then at least half real time).")
    retries: int = key(3, integer(0, 10), "Retries of a request that can succeed later, 0 to 10.")
    breaker_cooldown: float = key(15.0, number(0, 3600),
                                  f"Seconds Coze counts as down after retries failed (doubles, up to {BREAKER_MAX_COOLDOWN:g} s); 0 = off.")
    transport: str = key("auto", one_of(*TRANSPORTS),
                         f"http, websocket, or auto (WebSocket for played misses; HTTP {WS_RETRY_AFTER:g} s if unreachable).")
    ws_url: Optional[str] = key(None, optional(url(("ws", "wss"))),
                                "WebSocket speech endpoint; null = derived from base_url (api.coze.cn: ws.coze.cn).")
    first_sentence_first: bool = key(True, boolean(),
                                     "HTTP: a missed text's first sentence is asked alone (+1 request) and plays sooner.")


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the broker (``mqtt.tls: true`` means all of these defaults)."""

    ca_certs: Optional[Path] = key(None, optional(path()), "CA bundle, or null for the system CAs.")
    certfile: Optional[Path] = key(None, optional(path()), "Client certificate, or null.")
    keyfile: Optional[Path] = key(None, optional(path()), "Client key (needs certfile), or null.")
    insecure: bool = key(False, boolean(), "Skip hostname and certificate verification.")


def _tls_rules(values: Mapping[str, Any], path: str) -> Problems:
    if values["keyfile"] is not None and values["certfile"] is None:
        yield "keyfile", f"needs {path}.certfile as well"


@dataclass(frozen=True)
class MqttConfig:
    """The broker, and the topics this speaker listens on."""

    host: str = key("localhost", string(), "Broker host name or address.")
    port: int = key(1883, integer(1, 65535), "Broker port (usually 1883, or 8883 with TLS).")
    username: Optional[str] = key(None, optional(string()), "Broker user name, or null for anonymous access.")
    password: Optional[Secret] = key(None, secret(), "Broker password (kept secret); may be ${MQTT_PASSWORD}.")
    password_file: Optional[Path] = key(None, optional(path()),
                                        "File whose stripped content is the password; use one of the two.",
                                        secret_of="password")
    tls: Optional[TlsConfig] = key(None, flag_or_section(TlsConfig, _tls_rules),
                                   "false, true (TLS with the system CAs), or a mapping.", section=TlsConfig)
    client_id: Optional[str] = key(None, optional(string()), 'MQTT client id; null = "coze-speaker-<device_id>".')
    protocol: int = key(5, one_of(5, 311), "MQTT protocol version: 5 or 311 (3.1.1).")
    keepalive: int = key(30, integer(5, 3600), "Keepalive interval in seconds, 5 to 3600.")
    base_topic: str = key("coze-speaker", topic(), "Prefix of all topics.")
    device_id: str = key(_host_device_id, pattern(_NAME_RE, reduce_device_id),
                         "This speaker's id in topics; default: the host name reduced to [a-z0-9_-].")
    groups: Tuple[str, ...] = key((), list_of(_name), "Group names this speaker also listens to.")
    qos: int = key(1, one_of(0, 1, 2), "QoS for subscriptions and published state: 0, 1 or 2.")


@dataclass(frozen=True)
class FleetConfig:
    """Speakers sharing mqtt.base_topic: membership, one synthesis per broadcast, a shared cache."""

    enabled: bool = key(True, boolean(), "Join the fleet of speakers under mqtt.base_topic (false = work alone).")
    takeover: float = key(1.5, number(0.1, 30),
                          "Seconds without audio from the speaker streaming a broadcast before the next one takes over.")
    fetch_wait: float = key(0.3, number(0, 5),
                            "Seconds a phrase missing here is asked of the other speakers before Coze is.")
    chunk_bytes: int = key(16384, integer(1024, 131072),
                           "Audio bytes per MQTT message (keep well under the broker's message_size_limit).")
    sync: bool = key(True, boolean(), "Start a broadcast at one instant in every room (false = each starts once its audio is there).")
    sync_lead: float = key(0.4, number(0.05, 5),
                           "Seconds from a broadcast's first audio to its planned start, 0.05 to 5 (above wake_ms).")


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery."""

    enabled: bool = key(True, boolean(), "Publish Home Assistant MQTT discovery messages.")
    discovery_prefix: str = key("homeassistant", topic(), "Home Assistant's discovery prefix.")


@dataclass(frozen=True)
class HermesConfig:
    """Hermes (Rhasspy / Snips) TTS messages."""

    enabled: bool = key(False, boolean(), "Also accept Hermes TTS messages (hermes/tts/say).")
    site_id: str = key("default", string(), "Hermes site id this speaker answers to.")


@dataclass(frozen=True)
class WyomingConfig:
    """The Wyoming TTS service: Coze voices for Home Assistant (no authentication, spends quota)."""

    enabled: bool = key(False, boolean(), "Serve the Coze voices as a Wyoming TTS service (Home Assistant).")
    host: str = key("0.0.0.0", string(), "Address to listen on; a LAN address or 127.0.0.1, never the internet.")
    port: int = key(10200, integer(1, 65535), "TCP port of the Wyoming service (Home Assistant's default 10200).")


@dataclass(frozen=True)
class AudioConfig:
    """Where and how audio is played."""

    backend: str = key("auto", null_as("null", one_of(*AUDIO_BACKENDS)),
                       "auto, alsa, aplay, simpleaudio, or null (discard audio).")
    device: str = key("default", string(), "ALSA PCM device name (see `aplay -L`).")
    sample_rate: Union[int, str] = key(48000, word_or("auto", one_of(*SAMPLE_RATES)),
                                       "Output sample rate in Hz, or auto (what the device plays natively).")
    volume: int = key(100, integer(VOLUME), f"Output volume, {VOLUME.shown()} (100 = loudness unchanged).")
    chime: str = key("builtin", string(), "Chime before announcements: builtin, none, or a .wav in chimes_dir.")
    chimes_dir: Optional[Path] = key(None, optional(path()), "Folder with chime WAV files, or null.")
    wake_ms: int = key(0, integer(0, 2000), "Silence in ms played when the device is opened (cold), 0 to 2000.",
                       renamed_from="preroll_ms")
    keep_open: float = key(5.0, number(0, 3600),
                           "alsa: seconds the device stays open (fed silence) after an announcement; 0 = close.")


def _audio_rules(values: Mapping[str, Any], path: str) -> Problems:
    chime = values["chime"]
    if chime in ("builtin", "none"):
        return
    if "/" in chime or "\\" in chime:
        yield "chime", f"{chime!r} must be builtin, none or a file name in chimes_dir"
    elif values["chimes_dir"] is None:
        yield "chime", f"{chime!r} needs {path}.chimes_dir to be set"


@dataclass(frozen=True)
class CacheConfig:
    """The phrase cache."""

    dir: Path = key(_home(".cache/coze-speaker"), path(), "Where synthesized phrases are cached.")
    max_size_mb: float = key(200.0, number(gt=0), "Maximum cache size in MB; least recently used go first.")


@dataclass(frozen=True)
class QueueConfig:
    """Announcements waiting to be spoken."""

    max_length: int = key(100, integer(1, 10000), "Maximum number of waiting announcements, 1 to 10000.")
    ttl: float = key(300.0, number(gt=0), "Seconds after which a waiting announcement expires.")
    dedup_seconds: float = key(10.0, number(0),
                               "Drop a copy of a queued or playing announcement arriving within this many seconds.")
    resume_interrupted: bool = key(True, boolean(), "Play an announcement cut off by an urgent one again after it.")


@dataclass(frozen=True)
class LimitsConfig:
    """Spending limits (cached phrases always play)."""

    max_requests_per_hour: int = key(200, integer(0), "Coze requests allowed per hour (0 = no limit).")
    max_chars_per_day: int = key(50000, integer(0), "Characters synthesized per day (0 = no limit).")
    max_text_bytes: int = key(8192, integer(1, 1048576), "Longest accepted announcement text in UTF-8 bytes.")


@dataclass(frozen=True)
class QuietHours:
    """Quieter, and only important announcements, between start and end."""

    start: time = key(time(22, 0), time_of_day(), "Start, as HH:MM.")
    end: time = key(time(7, 0), time_of_day(), "End, as HH:MM (may be on the next day).")
    volume: int = key(30, integer(VOLUME), f"Volume during quiet hours, {VOLUME.shown()}.")
    min_priority: str = key("high", one_of(*PRIORITIES), "Lower priorities wait until the quiet hours end.")


def _quiet_rules(values: Mapping[str, Any], path: str) -> Problems:
    if values["start"] == values["end"]:
        yield "end", "must differ from start"


@dataclass(frozen=True)
class FallbackConfig:
    """The offline voice for phrases Coze cannot speak and the cache does not hold."""

    engine: str = key("auto", one_of(*FALLBACK_ENGINES),
                      "auto (espeak-ng while there is no token or voice_id), none or espeak-ng; never cached.")
    voice: Optional[str] = key(None, optional(string()), "espeak-ng voice name, e.g. en-us; null = its default.")


@dataclass(frozen=True)
class StateConfig:
    """What the daemon keeps across restarts."""

    dir: Path = key(_home(".local/state/coze-speaker"), path(),
                    "Daemon state: the volume, the journal of waiting announcements, the spending counters.")


@dataclass(frozen=True)
class LoggingConfig:
    """Log output."""

    level: str = key("info", one_of(*LOG_LEVELS), "debug, info, warning or error.")


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None for defaults)."""

    coze: CozeConfig = subsection(CozeConfig, "Coze text-to-speech: account, endpoint and default voice.")
    mqtt: MqttConfig = subsection(MqttConfig, "The MQTT broker and this speaker's topics.")
    homeassistant: HomeAssistantConfig = subsection(HomeAssistantConfig, "Home Assistant MQTT discovery.")
    hermes: HermesConfig = subsection(HermesConfig, "Hermes (Rhasspy / Snips) TTS messages.")
    wyoming: WyomingConfig = subsection(WyomingConfig, "Coze voices as a Wyoming TTS service for Home Assistant.")
    fleet: FleetConfig = subsection(FleetConfig, "Several speakers on one base topic: one synthesis per broadcast.")
    audio: AudioConfig = subsection(AudioConfig, "Audio output, volume and chime.", rules=_audio_rules)
    cache: CacheConfig = subsection(CacheConfig, "The phrase cache.")
    queue: QueueConfig = subsection(QueueConfig, "Waiting announcements.")
    limits: LimitsConfig = subsection(LimitsConfig, "Spending limits on Coze requests.")
    quiet_hours: Optional[QuietHours] = subsection(QuietHours, "Quiet hours: null (off), or a mapping.",
                                                   rules=_quiet_rules, nullable=True)
    fallback: FallbackConfig = subsection(FallbackConfig, "Offline fallback voice.")
    state: StateConfig = subsection(StateConfig, "Daemon state directory.")
    logging: LoggingConfig = subsection(LoggingConfig, "Logging.")
    source: Optional[Path] = None
    warnings: Tuple[str, ...] = ()

    def fallback_engine(self) -> str:
        """``fallback.engine`` with ``auto`` decided: the offline voice while Coze is not set up
        (no token, or no ``coze.voice_id``), so a first run without a config file speaks; none
        once it is, so a Coze failure is reported as such unless espeak-ng is asked for."""
        engine = self.fallback.engine
        if engine == "auto":
            return "espeak-ng" if self.coze.token is None or not self.coze.voice_id else "none"
        return engine
