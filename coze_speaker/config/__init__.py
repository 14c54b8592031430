"""Configuration loading for coze-speaker.

The YAML file is composed (not loaded) so every value keeps its line number;
each section is then checked against a small field table, collecting *all*
problems into one :class:`ConfigError` so a user fixes the file in one pass.

Rules worth knowing:

* ``${VAR}`` / ``${VAR:-default}`` are expanded in string values (``$$`` is a
  literal ``$``; ``:-`` also applies when VAR is set but empty, as in sh).
  Values that came from the environment are converted to the field's type
  ("48000" -> 48000, "true" -> True, "" or "null" -> None for optional fields).
* Relative paths in a config file are relative to the file's directory.
* Secrets (``coze.token``, ``mqtt.password``) are wrapped in :class:`Secret`
  and never appear in reprs or error messages.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import stat
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import yaml

from ..errors import SpeakerError

__all__ = [
    "SAMPLE_RATES", "EMOTIONS", "PRIORITIES", "LOG_LEVELS", "AUDIO_BACKENDS", "FALLBACK_ENGINES",
    "DEFAULT_CONFIG_PATHS", "CONFIG_ENV_VAR",
    "ConfigError", "Secret",
    "Config", "CozeConfig", "MqttConfig", "TlsConfig", "HomeAssistantConfig", "HermesConfig",
    "AudioConfig", "CacheConfig", "QueueConfig", "LimitsConfig", "QuietHours", "FallbackConfig",
    "StateConfig", "LoggingConfig",
    "find_config_path", "load_config", "config_from_dict", "default_config", "reduce_device_id",
]

log = logging.getLogger("coze_speaker.config")

SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
EMOTIONS = ("happy", "sad", "angry", "surprised", "fear", "hate", "excited", "coldness", "neutral")
PRIORITIES = ("low", "normal", "high", "critical")
LOG_LEVELS = ("debug", "info", "warning", "error")
AUDIO_BACKENDS = ("auto", "aplay", "simpleaudio", "null")
FALLBACK_ENGINES = ("none", "espeak-ng")

CONFIG_ENV_VAR = "COZE_SPEAKER_CONFIG"
#: Searched in order when neither ``-c`` nor ``$COZE_SPEAKER_CONFIG`` is given.
DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/coze-speaker/config.yaml"))

_NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_SECRET_SOURCES = {"coze.token": "coze.token_file", "mqtt.password": "mqtt.password_file"}


# --------------------------------------------------------------------------- public types


class ConfigError(SpeakerError):
    code = "config"

    """Invalid configuration; ``errors`` holds one "file:line: key: problem" line per issue."""

    def __init__(self, errors: Union[List[str], str]) -> None:
        self.errors: List[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class Secret:
    """A string that hides itself from repr/str/format and refuses to be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """Return the secret value; call only where it is actually sent."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict) -> "Secret":
        return self

    def __reduce_ex__(self, protocol: int) -> Any:
        raise TypeError("Secret values must not be pickled")


@dataclass(frozen=True)
class CozeConfig:
    base_url: str = "https://api.coze.cn"
    token: Optional[Secret] = None
    token_file: Optional[Path] = None
    voice_id: Optional[str] = None
    speed: float = 1.0
    emotion: Optional[str] = None
    emotion_scale: Optional[float] = None
    loudness_rate: int = 0
    context_texts: Optional[str] = None
    timeout: float = 15.0
    retries: int = 3


@dataclass(frozen=True)
class TlsConfig:
    ca_certs: Optional[Path] = None
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None
    insecure: bool = False


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: Optional[str] = None
    password: Optional[Secret] = None
    password_file: Optional[Path] = None
    tls: Optional[TlsConfig] = None
    client_id: Optional[str] = None
    protocol: int = 5
    keepalive: int = 30
    base_topic: str = "coze-speaker"
    device_id: str = field(default_factory=lambda: _default_device_id())
    groups: Tuple[str, ...] = ()
    qos: int = 1


@dataclass(frozen=True)
class HomeAssistantConfig:
    enabled: bool = True
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class HermesConfig:
    enabled: bool = False
    site_id: str = "default"


@dataclass(frozen=True)
class AudioConfig:
    backend: str = "auto"
    device: str = "default"
    sample_rate: Union[int, str] = 48000
    volume: int = 100
    chime: str = "builtin"
    chimes_dir: Optional[Path] = None
    preroll_ms: int = 0


@dataclass(frozen=True)
class CacheConfig:
    dir: Path = Path("~/.cache/coze-speaker").expanduser()
    max_size_mb: float = 200.0


@dataclass(frozen=True)
class QueueConfig:
    max_length: int = 100
    ttl: float = 300.0
    dedup_seconds: float = 10.0


@dataclass(frozen=True)
class LimitsConfig:
    max_requests_per_hour: int = 200
    max_chars_per_day: int = 50000
    max_text_bytes: int = 8192


@dataclass(frozen=True)
class QuietHours:
    start: time = time(22, 0)
    end: time = time(7, 0)
    volume: int = 30
    min_priority: str = "high"


@dataclass(frozen=True)
class FallbackConfig:
    engine: str = "none"
    voice: Optional[str] = None


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("~/.local/state/coze-speaker").expanduser()


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    coze: CozeConfig
    mqtt: MqttConfig
    homeassistant: HomeAssistantConfig
    hermes: HermesConfig
    audio: AudioConfig
    cache: CacheConfig
    queue: QueueConfig
    limits: LimitsConfig
    quiet_hours: Optional[QuietHours]
    fallback: FallbackConfig
    state: StateConfig
    logging: LoggingConfig
    source: Optional[Path] = None
    warnings: Tuple[str, ...] = ()


def reduce_device_id(name: str) -> str:
    """Turn a hostname into a valid device id: lowercase, [a-z0-9_-] only, "speaker" if empty."""
    reduced = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return reduced or "speaker"


# --------------------------------------------------------------------------- internals


class _Val:
    """A raw config value plus where it came from (line, source text, env expansion)."""

    __slots__ = ("value", "line", "raw", "from_env", "key_line")

    def __init__(self, value: Any, line: Optional[int] = None, raw: Optional[str] = None,
                 from_env: bool = False, key_line: Optional[int] = None) -> None:
        self.value, self.line, self.raw, self.from_env, self.key_line = value, line, raw, from_env, key_line


class _Invalid(Exception):
    """One problem with one value; turned into a located error line by _Ctx.apply."""


_BAD = object()  # marks a value that already produced an error
Checker = Callable[[_Val, "_Ctx", str], Any]


class _Ctx:
    def __init__(self, source: str, env: Mapping[str, str], base_dir: Optional[Path]) -> None:
        self.source, self.env, self.base_dir = source, env, base_dir
        self.errors: List[Tuple[int, str]] = []
        self.inline_secrets: List[str] = []

    def error(self, line: Optional[int], path: str, msg: str) -> None:
        loc = f"{self.source}:{line}" if line else self.source
        self.errors.append((line or 0, ": ".join(p for p in (loc, path, msg) if p)))

    def apply(self, check: Checker, v: _Val, path: str) -> Any:
        """Expand env references in ``v`` then run ``check``; record failures, return _BAD."""
        try:
            v = self.expand(v, path, getattr(check, "secret", False))
            return check(v, self, path)
        except _Invalid as e:
            self.error(v.line, path, str(e))
            return _BAD

    def expand(self, v: _Val, path: str, secret: bool) -> _Val:
        text = v.value
        if not isinstance(text, str) or v.from_env or "$" not in text:
            return v
        out: List[str] = []
        missing: List[str] = []
        used = False
        pos = 0
        for m in re.finditer(r"\$(\$|\{([^}]*)(\}?))", text):
            out.append(text[pos:m.start()])
            pos = m.end()
            if m.group(1) == "$":
                out.append("$")
                continue
            ref = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", m.group(2), re.S)
            if not m.group(3) or ref is None:
                shown = "" if secret else f" {m.group(0)!r}"
                raise _Invalid(f"invalid environment reference{shown} (use ${{NAME}} or ${{NAME:-default}})")
            used = True
            name, default = ref.group(1), ref.group(2)
            value = self.env.get(name)
            if default is not None and not value:
                value = default
            if value is None:
                missing.append(name)
            else:
                out.append(value)
        out.append(text[pos:])
        if missing:
            if secret:  # unset secret: let token_file / password_file provide it
                return _Val(None, v.line, None, True, v.key_line)
            names = ", ".join(missing)
            raise _Invalid(f"environment variable{'s' if len(missing) > 1 else ''} {names} "
                           f"{'are' if len(missing) > 1 else 'is'} not set")
        return _Val("".join(out), v.line, None, used, v.key_line)

    def path(self, text: str) -> Path:
        p = Path(text).expanduser()
        return self.base_dir / p if self.base_dir is not None and not p.is_absolute() else p


def _show(v: _Val) -> str:
    """Describe a (non-secret) value for an error message."""
    x = v.value
    if isinstance(x, str):
        return repr(x)
    if isinstance(x, dict):
        return "a mapping"
    if isinstance(x, list):
        return "a list"
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    return v.raw if v.raw is not None else repr(x)


def _kind(v: _Val) -> str:
    """Describe only the type of a value (used for secrets)."""
    x = v.value
    for t, name in ((bool, "a boolean"), (str, "a string"), (dict, "a mapping"), (list, "a list"),
                    (int, "a number"), (float, "a number")):
        if isinstance(x, t):
            return name
    return "null" if x is None else type(x).__name__


def _fmt(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


# --------------------------------------------------------------------------- checkers


def _range(x: float, lo: Optional[float], hi: Optional[float], gt: Optional[float], shown: str) -> None:
    if gt is not None and not x > gt:
        raise _Invalid(f"must be greater than {_fmt(gt)}, got {shown}")
    if lo is not None and hi is not None and not lo <= x <= hi:
        raise _Invalid(f"must be between {_fmt(lo)} and {_fmt(hi)}, got {shown}")
    if lo is not None and x < lo:
        raise _Invalid(f"must be at least {_fmt(lo)}, got {shown}")
    if hi is not None and x > hi:
        raise _Invalid(f"must be at most {_fmt(hi)}, got {shown}")


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Checker:
    """An int (not bool) within [lo, hi]; env strings like "42" are converted."""
    def check(v: _Val, ctx: _Ctx, path: str) -> int:
        x = v.value
        if v.from_env and isinstance(x, str) and re.fullmatch(r"\s*[+-]?\d+\s*", x):
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, int):
            raise _Invalid(f"expected an integer, got {_show(v)}")
        _range(x, lo, hi, None, _show(v) if v.raw else str(x))
        return x
    return check


def number(lo: Optional[float] = None, hi: Optional[float] = None, *, gt: Optional[float] = None) -> Checker:
    """A finite int or float (not bool), returned as float; env strings are converted."""
    def check(v: _Val, ctx: _Ctx, path: str) -> float:
        x = v.value
        if v.from_env and isinstance(x, str) and re.fullmatch(
                r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*", x):
            x = float(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise _Invalid(f"expected a number, got {_show(v)}")
        _range(x, lo, hi, gt, _show(v) if v.raw else _fmt(x))
        return float(x)
    return check


def boolean() -> Checker:
    """true/false; env strings true/false/yes/no/on/off/1/0 are converted."""
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

    def check(v: _Val, ctx: _Ctx, path: str) -> bool:
        x = v.value
        if v.from_env and isinstance(x, str) and x.strip().lower() in words:
            x = words[x.strip().lower()]
        if not isinstance(x, bool):
            raise _Invalid(f"expected true or false, got {_show(v)}")
        return x
    return check


def _text(v: _Val) -> Optional[str]:
    """The value as text: strings, and unquoted integers by their source text (e.g. voice ids)."""
    if isinstance(v.value, str):
        return v.value
    if isinstance(v.value, int) and not isinstance(v.value, bool):
        return v.raw if v.raw is not None else str(v.value)
    return None


def string(*, nonempty: bool = True) -> Checker:
    """A string (unquoted integers are taken by their source text)."""
    def check(v: _Val, ctx: _Ctx, path: str) -> str:
        s = _text(v)
        if s is None:
            raise _Invalid(f"expected a string, got {_show(v)}")
        if nonempty and not s.strip():
            raise _Invalid("must not be empty")
        return s
    return check


def one_of(*choices: Any) -> Checker:
    """One of ``choices`` (strings compared case-insensitively; env strings converted to ints)."""
    listed = ", ".join(str(c) for c in choices)

    def check(v: _Val, ctx: _Ctx, path: str) -> Any:
        x = v.value
        if isinstance(x, str):
            if v.from_env and re.fullmatch(r"\s*[+-]?\d+\s*", x) and int(x) in choices:
                return int(x)
            if x.lower() in choices:
                return x.lower()
        elif not isinstance(x, bool) and isinstance(x, (int, float)) and x in choices:
            return choices[choices.index(x)]
        raise _Invalid(f"{_show(v)} is not one of {listed}")
    return check


def optional(inner: Checker) -> Checker:
    """null, or whatever ``inner`` accepts; "" / "null" from the environment also mean null."""
    def check(v: _Val, ctx: _Ctx, path: str) -> Any:
        if v.value is None or (v.from_env and isinstance(v.value, str) and v.value.strip() in ("", "null", "~")):
            return None
        return inner(v, ctx, path)
    return check


def path() -> Checker:
    """A filesystem path; ``~`` expanded, relative paths anchored at the config file's directory."""
    def check(v: _Val, ctx: _Ctx, p: str) -> Path:
        if isinstance(v.value, Path):
            return ctx.path(str(v.value))
        s = _text(v)
        if s is None:
            raise _Invalid(f"expected a path, got {_show(v)}")
        if not s.strip():
            raise _Invalid("must not be empty")
        return ctx.path(s)
    return check


def secret() -> Checker:
    """A secret string (or null); inline literals are remembered for the permission warning."""
    def check(v: _Val, ctx: _Ctx, path: str) -> Optional[Secret]:
        if isinstance(v.value, Secret):
            return v.value if v.value else None
        if v.value is None:
            return None
        s = _text(v)
        if s is None:
            raise _Invalid(f"expected a string, got {_kind(v)}")
        if not s:
            return None
        if not v.from_env and v.line is not None:
            ctx.inline_secrets.append(path)
        return Secret(s)
    check.secret = True  # type: ignore[attr-defined]
    return check


def pattern(regex: "re.Pattern[str]", hint: Optional[Callable[[str], str]] = None) -> Checker:
    """A string fully matching ``regex``; ``hint`` may suggest a valid form."""
    base = string()

    def check(v: _Val, ctx: _Ctx, path: str) -> str:
        s = base(v, ctx, path)
        if not regex.match(s):
            extra = f" (try {hint(s)!r})" if hint else ""
            raise _Invalid(f"{s!r} must match {regex.pattern}{extra}")
        return s
    return check


def list_of(inner: Checker) -> Checker:
    """A list (null = empty) whose items pass ``inner``; returned as a tuple."""
    def check(v: _Val, ctx: _Ctx, path: str) -> Any:
        if v.value is None:
            return ()
        if not isinstance(v.value, list):
            raise _Invalid(f"expected a list, got {_show(v)}")
        items = tuple(ctx.apply(inner, item, f"{path}[{i}]") for i, item in enumerate(v.value))
        return _BAD if _BAD in items else items
    return check


def null_as(replacement: Any, inner: Checker) -> Checker:
    """Treat YAML null as ``replacement`` (e.g. ``backend: null`` means the "null" backend)."""
    def check(v: _Val, ctx: _Ctx, path: str) -> Any:
        return inner(_Val(replacement, v.line) if v.value is None else v, ctx, path)
    return check


def _url(v: _Val, ctx: _Ctx, path: str) -> str:
    s = string()(v, ctx, path).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", s):
        raise _Invalid(f"{s!r} must be an http:// or https:// URL")
    return s


def _topic(v: _Val, ctx: _Ctx, path: str) -> str:
    s = string()(v, ctx, path)
    if "+" in s or "#" in s:
        raise _Invalid(f"{s!r} must not contain MQTT wildcards (+ or #)")
    if s.startswith("/") or s.endswith("/"):
        raise _Invalid(f"{s!r} must not start or end with '/'")
    return s


def _sample_rate(v: _Val, ctx: _Ctx, path: str) -> Union[int, str]:
    if isinstance(v.value, str) and v.value.strip().lower() == "auto":
        return "auto"
    return one_of(*SAMPLE_RATES)(v, ctx, path)


def _time_of_day(v: _Val, ctx: _Ctx, path: str) -> time:
    x = v.value
    if isinstance(x, time):
        return x
    if isinstance(x, int) and not isinstance(x, bool) and v.raw:
        x = v.raw  # YAML 1.1 reads unquoted 22:00 as the base-60 integer 1320
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", x) if isinstance(x, str) else None
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise _Invalid(f"expected a time as HH:MM, got {_show(v)}")
    return time(int(m.group(1)), int(m.group(2)))


def _tls(v: _Val, ctx: _Ctx, path: str) -> Any:
    x = v.value
    if v.from_env and isinstance(x, str):
        x = boolean()(v, ctx, path)
    if x is None or x is False:
        return None
    if x is True:
        return TlsConfig()
    if isinstance(x, dict):
        return _TLS(v, ctx, path)
    raise _Invalid(f"expected true, false or a mapping, got {_show(v)}")


# --------------------------------------------------------------------------- sections


class F(NamedTuple):
    """One config key: name, default (plain data or a zero-arg callable), checker."""
    name: str
    default: Any
    check: Checker


PostCheck = Callable[[Dict[str, Any], Dict[str, _Val], _Ctx, str], None]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_mapping(fields: Tuple[F, ...], v: _Val, ctx: _Ctx, path: str) -> Any:
    """Check a mapping against a field table; returns a dict of values or _BAD."""
    items = {} if v.value is None else v.value
    if not isinstance(items, dict):
        raise _Invalid(f"expected a mapping, got {_show(v)}")
    known = [f.name for f in fields]
    bad = False
    for key, item in items.items():
        if key not in known:
            ctx.error(item.key_line, _join(path, key), f"unknown key (known: {', '.join(known)})")
            bad = True
    values: Dict[str, Any] = {}
    for f in fields:
        if f.name in items:
            item = items[f.name]
        else:
            item = _to_val(f.default() if callable(f.default) else f.default)
        values[f.name] = ctx.apply(f.check, item, _join(path, f.name))
        bad = bad or values[f.name] is _BAD
    return _BAD if bad else values


def section(cls: type, fields: Tuple[F, ...], post: Optional[PostCheck] = None) -> Checker:
    """A mapping checked against ``fields`` and built into dataclass ``cls`` (null = defaults)."""
    def check(v: _Val, ctx: _Ctx, path: str) -> Any:
        values = _check_mapping(fields, v, ctx, path)
        if values is _BAD:
            return _BAD
        if post is not None:
            before = len(ctx.errors)
            post(values, v.value or {}, ctx, path)
            if len(ctx.errors) > before:
                return _BAD
        return cls(**values)
    return check


def _secret_file(key: str, file_key: str) -> PostCheck:
    """Resolve ``key`` from ``file_key`` (stripped file content); both set is an error."""
    def post(values: Dict[str, Any], items: Dict[str, _Val], ctx: _Ctx, path: str) -> None:
        p = values[file_key]
        if p is None:
            return
        line = items[file_key].line if file_key in items else None
        if key in items and values[key] is not None:
            ctx.error(line, _join(path, file_key), f"cannot be combined with {_join(path, key)}; set only one")
            return
        try:
            content = p.read_text(encoding="utf-8").strip()
        except OSError as e:
            ctx.error(line, _join(path, file_key), f"cannot read {p}: {e.strerror or type(e).__name__}")
            return
        except UnicodeDecodeError:
            ctx.error(line, _join(path, file_key), f"{p} is not UTF-8 text")
            return
        if not content:
            ctx.error(line, _join(path, file_key), f"{p} is empty")
            return
        values[key] = Secret(content)
    return post


def _audio_post(values: Dict[str, Any], items: Dict[str, _Val], ctx: _Ctx, path: str) -> None:
    chime = values["chime"]
    if chime in ("builtin", "none"):
        return
    line = items["chime"].line if "chime" in items else None
    if "/" in chime or "\\" in chime:
        ctx.error(line, _join(path, "chime"), f"{chime!r} must be builtin, none or a file name in chimes_dir")
    elif values["chimes_dir"] is None:
        ctx.error(line, _join(path, "chime"), f"{chime!r} needs {_join(path, 'chimes_dir')} to be set")


def _tls_post(values: Dict[str, Any], items: Dict[str, _Val], ctx: _Ctx, path: str) -> None:
    if values["keyfile"] is not None and values["certfile"] is None:
        ctx.error(items["keyfile"].line, _join(path, "keyfile"), f"needs {_join(path, 'certfile')} as well")


def _quiet_post(values: Dict[str, Any], items: Dict[str, _Val], ctx: _Ctx, path: str) -> None:
    if values["start"] == values["end"]:
        line = items["end"].line if "end" in items else None
        ctx.error(line, _join(path, "end"), "must differ from start")


def _default_device_id() -> str:
    return reduce_device_id(socket.gethostname())


_name = pattern(_NAME_RE)

_TLS = section(TlsConfig, (
    F("ca_certs", None, optional(path())),
    F("certfile", None, optional(path())),
    F("keyfile", None, optional(path())),
    F("insecure", False, boolean()),
), _tls_post)

_SECTIONS: Tuple[F, ...] = (
    F("coze", {}, section(CozeConfig, (
        F("base_url", "https://api.coze.cn", _url),
        F("token", "${COZE_API_TOKEN}", secret()),
        F("token_file", None, optional(path())),
        F("voice_id", None, optional(string())),
        F("speed", 1.0, number(0.2, 3)),
        F("emotion", None, optional(one_of(*EMOTIONS))),
        F("emotion_scale", None, optional(number(1, 5))),
        F("loudness_rate", 0, integer(-50, 100)),
        F("context_texts", None, optional(string(nonempty=False))),
        F("timeout", 15, number(gt=0)),
        F("retries", 3, integer(0, 10)),
    ), _secret_file("token", "token_file"))),
    F("mqtt", {}, section(MqttConfig, (
        F("host", "localhost", string()),
        F("port", 1883, integer(1, 65535)),
        F("username", None, optional(string())),
        F("password", None, secret()),
        F("password_file", None, optional(path())),
        F("tls", False, _tls),
        F("client_id", None, optional(string())),
        F("protocol", 5, one_of(5, 311)),
        F("keepalive", 30, integer(5, 3600)),
        F("base_topic", "coze-speaker", _topic),
        F("device_id", _default_device_id, pattern(_NAME_RE, reduce_device_id)),
        F("groups", [], list_of(_name)),
        F("qos", 1, one_of(0, 1, 2)),
    ), _secret_file("password", "password_file"))),
    F("homeassistant", {}, section(HomeAssistantConfig, (
        F("enabled", True, boolean()),
        F("discovery_prefix", "homeassistant", _topic),
    ))),
    F("hermes", {}, section(HermesConfig, (
        F("enabled", False, boolean()),
        F("site_id", "default", string()),
    ))),
    F("audio", {}, section(AudioConfig, (
        F("backend", "auto", null_as("null", one_of(*AUDIO_BACKENDS))),
        F("device", "default", string()),
        F("sample_rate", 48000, _sample_rate),
        F("volume", 100, integer(0, 100)),
        F("chime", "builtin", string()),
        F("chimes_dir", None, optional(path())),
        F("preroll_ms", 0, integer(0, 2000)),
    ), _audio_post)),
    F("cache", {}, section(CacheConfig, (
        F("dir", "~/.cache/coze-speaker", path()),
        F("max_size_mb", 200, number(gt=0)),
    ))),
    F("queue", {}, section(QueueConfig, (
        F("max_length", 100, integer(1, 10000)),
        F("ttl", 300, number(gt=0)),
        F("dedup_seconds", 10, number(0)),
    ))),
    F("limits", {}, section(LimitsConfig, (
        F("max_requests_per_hour", 200, integer(0)),
        F("max_chars_per_day", 50000, integer(0)),
        F("max_text_bytes", 8192, integer(1, 1048576)),
    ))),
    F("quiet_hours", None, optional(section(QuietHours, (
        F("start", "22:00", _time_of_day),
        F("end", "07:00", _time_of_day),
        F("volume", 30, integer(0, 100)),
        F("min_priority", "high", one_of(*PRIORITIES)),
    ), _quiet_post))),
    F("fallback", {}, section(FallbackConfig, (
        F("engine", "none", one_of(*FALLBACK_ENGINES)),
        F("voice", None, optional(string())),
    ))),
    F("state", {}, section(StateConfig, (
        F("dir", "~/.local/state/coze-speaker", path()),
    ))),
    F("logging", {}, section(LoggingConfig, (
        F("level", "info", one_of(*LOG_LEVELS)),
    ))),
)


# --------------------------------------------------------------------------- building


def _to_val(data: Any) -> _Val:
    """Wrap plain Python data (dict defaults, config_from_dict input) as _Val, no line numbers."""
    if isinstance(data, Mapping):
        return _Val({str(k): _to_val(x) for k, x in data.items()})
    if isinstance(data, (list, tuple)):
        return _Val([_to_val(x) for x in data])
    raw = str(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else None
    return _Val(data, raw=raw)


def _from_node(node: yaml.Node, ctx: _Ctx, path: str, loader: yaml.SafeLoader, active: set) -> _Val:
    """Convert a composed YAML node to _Val with SafeLoader semantics, keeping line numbers."""
    line = node.start_mark.line + 1
    if id(node) in active:
        raise _Invalid("recursive YAML alias")
    if isinstance(node, yaml.ScalarNode):
        return _Val(loader.construct_object(node, deep=True), line, node.value)
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        return _Val([_from_node(n, ctx, f"{path}[{i}]", loader, active) for i, n in enumerate(node.value)], line)
    loader.flatten_mapping(node)  # merge keys (<<)
    out: Dict[str, _Val] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
        sub = _join(path, str(key))
        if not isinstance(key_node, yaml.ScalarNode):
            ctx.error(key_line, path, "mapping keys must be plain names")
            continue
        if key in out:
            ctx.error(key_line, sub, f"duplicate key (first on line {out[key].key_line})")
            continue
        try:
            item = _from_node(value_node, ctx, sub, loader, active)
        except _Invalid as e:
            ctx.error(value_node.start_mark.line + 1, sub, str(e))
            continue
        item.key_line = key_line
        out[key] = item
    return _Val(out, line)


def _build(root: _Val, ctx: _Ctx, source: Optional[Path]) -> Config:
    if isinstance(root.value, dict) or root.value is None:
        values = _check_mapping(_SECTIONS, root, ctx, "")
    else:
        ctx.error(root.line, "", f"top level must be a mapping, got {_show(root)}")
        values = _BAD
    if ctx.errors or values is _BAD:
        raise ConfigError([msg for _, msg in sorted(ctx.errors, key=lambda e: e[0])])
    warnings: List[str] = []
    if source is not None and ctx.inline_secrets:
        try:
            mode = stat.S_IMODE(os.stat(source).st_mode)
        except OSError:
            mode = 0
        if mode & 0o077:
            warnings.append(
                f"{ctx.source} contains an inline secret ({', '.join(ctx.inline_secrets)}) and is readable "
                f"by group/other (mode {mode:04o}); restrict it with: chmod 600 {ctx.source}")
    for w in warnings:
        log.warning("%s", w)
    return Config(**values, source=source, warnings=tuple(warnings))


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>", *,
                     env: Optional[Mapping[str, str]] = None) -> Config:
    """Build a Config from plain data with the same validation as a file (errors have no lines)."""
    ctx = _Ctx(source, os.environ if env is None else env, None)
    return _build(_to_val(data), ctx, None)


def default_config(*, env: Optional[Mapping[str, str]] = None) -> Config:
    """All defaults, with ``${...}`` in defaults (coze.token) expanded from ``env``."""
    return config_from_dict({}, "<defaults>", env=env)


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
    name = str(found)
    real = found.expanduser()
    if not real.exists():
        raise ConfigError(f"config file not found: {name}")
    try:
        text = real.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or ("not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e))
        raise ConfigError(f"{name}: cannot read config file: {reason}") from None
    ctx = _Ctx(name, env, real.absolute().parent)
    loader = yaml.SafeLoader("")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        root = _Val(None) if node is None else _from_node(node, ctx, "", loader, set())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = f"{name}:{mark.line + 1}" if mark else name
        raise ConfigError(f"{loc}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}") from None
    except _Invalid as e:
        raise ConfigError(f"{name}: {e}") from None
    return _build(root, ctx, real)
