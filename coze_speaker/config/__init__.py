"""Configuration for coze-speaker: where the file is found, and the checked :class:`Config`.

``model.py`` declares every key once (default, check, one-line doc); ``loader.py`` reads
YAML with line numbers, builds the sections and reports *all* problems in one
:class:`ConfigError`, so a user fixes the file in one pass; ``checks.py`` expands ``${VAR}``
and checks single values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

from ..vocabulary import EMOTIONS, PRIORITIES, SAMPLE_RATES
from . import loader
from .checks import Secret
from .loader import ConfigError
from .model import (AUDIO_BACKENDS, FALLBACK_ENGINES, LOG_LEVELS, AudioConfig, CacheConfig, Config, CozeConfig,
                    FallbackConfig, HermesConfig, HomeAssistantConfig, LimitsConfig, LoggingConfig, MqttConfig,
                    QueueConfig, QuietHours, StateConfig, TlsConfig, WyomingConfig, reduce_device_id)

__all__ = [
    "SAMPLE_RATES", "EMOTIONS", "PRIORITIES", "LOG_LEVELS", "AUDIO_BACKENDS", "FALLBACK_ENGINES",
    "DEFAULT_CONFIG_PATHS", "CONFIG_ENV_VAR",
    "ConfigError", "Secret",
    "Config", "CozeConfig", "MqttConfig", "TlsConfig", "HomeAssistantConfig", "HermesConfig",
    "AudioConfig", "CacheConfig", "QueueConfig", "LimitsConfig", "QuietHours", "FallbackConfig",
    "StateConfig", "LoggingConfig", "WyomingConfig",
    "find_config_path", "load_config", "config_from_dict", "default_config", "config_keys", "reduce_device_id",
]

CONFIG_ENV_VAR = "COZE_SPEAKER_CONFIG"
#: Searched in order when neither ``-c`` nor ``$COZE_SPEAKER_CONFIG`` is given.
DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/coze-speaker/config.yaml"))


def find_config_path(explicit: Optional[Union[str, Path]] = None, *,
                     env: Optional[Mapping[str, str]] = None) -> Path:
    """The config path: ``explicit`` (-c), else $COZE_SPEAKER_CONFIG, else the first existing
    of ./config.yaml and /etc/coze-speaker/config.yaml (the latter even if missing)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return DEFAULT_CONFIG_PATHS[-1]


def load_config(path: Optional[Union[str, Path]] = None, *,
                env: Optional[Mapping[str, str]] = None) -> Config:
    """Load and validate the config file; with no path and no file found, return defaults."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(CONFIG_ENV_VAR))
    found = find_config_path(path, env=env)
    if not explicit and not found.exists():
        return default_config(env=env)
    return loader.read_file(Config, found, env)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>", *,
                     env: Optional[Mapping[str, str]] = None) -> Config:
    """Build a Config from plain data with the same validation as a file (errors have no lines)."""
    return loader.read_data(Config, data, source, os.environ if env is None else env)


def default_config(*, env: Optional[Mapping[str, str]] = None) -> Config:
    """All defaults, with environment defaults (coze.token from $COZE_API_TOKEN) read from ``env``."""
    return config_from_dict({}, "<defaults>", env=env)


def config_keys() -> List[Tuple[str, str]]:
    """Every key as (dotted name, one-line doc), in file order: for docs and their tests."""
    return list(loader.keys_of(Config))
