"""An announcement: one validated request to say something, parsed from a say payload.

Invalid input stops here with a PayloadError naming the field: nothing bad reaches the
queue, the speaker or Coze. The same checks apply to an announcement read back from the
queue journal (`from_record`), so a journal from another version, a damaged one or one
edited by hand cannot bring in what a payload could not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..errors import SpeakerError
from ..vocabulary import (EMOTION_SCALE, EMOTIONS, LOUDNESS, PRIORITIES, PRIORITY_RANK, REPEAT, SOURCES, SPEED,
                          VOLUME, Range)
from ..voice.peers import Broadcast

MAX_ID_LENGTH = 128
MAX_TTL = 7 * 24 * 3600
MAX_JSON_DEPTH = 4
#: An MQTT topic is at most 65 535 bytes (the response topic a reply goes to).
MAX_TOPIC_BYTES = 65535


class PayloadError(SpeakerError, ValueError):
    """A say payload that cannot be spoken; ``field`` names what is wrong."""

    code = "invalid"

    def __init__(self, field: str, problem: str, *, announcement_id: Optional[str] = None) -> None:
        self.field = field
        self.problem = problem
        self.announcement_id = announcement_id
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Announcement:
    """What to say and how; every optional field None means "use the configured default"."""

    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    voice: Optional[str] = None
    emotion: Optional[str] = None
    emotion_scale: Optional[float] = None
    speed: Optional[float] = None
    loudness: Optional[int] = None
    context: Optional[str] = None
    volume: Optional[int] = None
    priority: str = "normal"
    interrupt: bool = False
    chime: Union[bool, str, None] = None
    ttl: Optional[float] = None
    cache: bool = True
    repeat: int = 1
    source: str = "mqtt"
    #: monotonic time the message arrived, and the monotonic deadline after which it is stale
    received: float = 0.0
    deadline: Optional[float] = None
    response_topic: Optional[str] = None
    correlation_data: Optional[bytes] = None
    site_id: Optional[str] = None
    session_id: Optional[str] = None
    #: the group of a `group/<name>/say` message (its source is "group")
    group: Optional[str] = None

    @property
    def rank(self) -> int:
        return PRIORITY_RANK[self.priority]

    @property
    def urgent(self) -> bool:
        """Plays now, stopping what is playing."""
        return self.interrupt or self.priority == "critical"

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def replace(self, **changes: Any) -> "Announcement":
        """A copy with some fields changed (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)


def broadcast_of(ann: Announcement) -> Optional[Broadcast]:
    """Every member of a scope got this announcement (`all/say`, `group/<g>/say`): the fleet
    synthesizes it once for all of them."""
    if ann.source == "all":
        return Broadcast(ann.id, "all")
    if ann.source == "group" and ann.group:
        return Broadcast(ann.id, f"group/{ann.group}")
    return None


def _text(value: Any, name: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise PayloadError(name, f"expected a string, got {_kind(value)}")
    value = value.strip()
    if not value:
        raise PayloadError(name, "is empty")
    _valid_unicode(name, value)
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise PayloadError(name, f"is {size} bytes, the limit is {max_bytes} (limits.max_text_bytes)")
    if any(ord(c) < 32 and c not in "\n\t\r" for c in value):
        raise PayloadError(name, "contains control characters")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _number(name: str, allowed: Range, integer: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PayloadError(name, f"expected a number, got {_kind(value)}")
        if integer and value != int(value):
            raise PayloadError(name, f"expected a whole number, got {value!r}")
        if value not in allowed:
            raise PayloadError(name, f"{value!r} is outside {allowed.low:g}..{allowed.high:g}")
        return int(value) if integer else float(value)
    return check


def _choice(name: str, choices: tuple) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise PayloadError(name, f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def _bool(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, bool):
            raise PayloadError(name, f"expected true or false, got {_kind(value)}")
        return value
    return check


def _short_str(name: str, max_len: int = 256) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise PayloadError(name, f"expected a non-empty string, got {_kind(value)}")
        if len(value) > max_len:
            raise PayloadError(name, f"is longer than {max_len} characters")
        if any(ord(c) < 32 for c in value):
            raise PayloadError(name, "contains control characters")
        _valid_unicode(name, value)
        return value.strip()
    return check


def _valid_unicode(name: str, value: str) -> None:
    """A lone surrogate (JSON "\\ud800") is not text: it cannot be journaled or sent to Coze."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(name, "contains a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None


def _chime(value: Any) -> Union[bool, str]:
    if isinstance(value, bool):
        return value
    name = _short_str("chime", 64)(value)
    if "/" in name or "\\" in name or name.startswith("."):
        raise PayloadError("chime", "must be a chime name from the chimes folder, not a path")
    return name


def _id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PayloadError("id", f"expected a string, got {_kind(value)}")
    return _short_str("id", MAX_ID_LENGTH)(str(value))


#: JSON field -> (Announcement attribute, checker)
FIELDS: dict = {
    "id": ("id", _id),
    "voice": ("voice", _short_str("voice", 128)),
    "emotion": ("emotion", _choice("emotion", EMOTIONS)),
    "emotion_scale": ("emotion_scale", _number("emotion_scale", EMOTION_SCALE)),
    "speed": ("speed", _number("speed", SPEED)),
    "loudness": ("loudness", _number("loudness", LOUDNESS, integer=True)),
    "context": ("context", _short_str("context", 1024)),
    "volume": ("volume", _number("volume", VOLUME, integer=True)),
    "priority": ("priority", _choice("priority", PRIORITIES)),
    "interrupt": ("interrupt", _bool("interrupt")),
    "chime": ("chime", _chime),
    "ttl": ("ttl", _number("ttl", Range(0.001, MAX_TTL))),
    "cache": ("cache", _bool("cache")),
    "repeat": ("repeat", _number("repeat", REPEAT, integer=True)),
}


def _plain_str(name: str, max_len: int) -> Callable[[Any], Any]:
    """A string kept as it is (echoed back to its sender: a Hermes site or session id)."""
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise PayloadError(name, f"expected a string, got {_kind(value)}")
        if len(value) > max_len:
            raise PayloadError(name, f"is longer than {max_len} characters")
        _valid_unicode(name, value)
        return value
    return check


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError("response_topic", f"expected a non-empty string, got {_kind(value)}")
    _valid_unicode("response_topic", value)
    if len(value.encode("utf-8")) > MAX_TOPIC_BYTES or "\0" in value:
        raise PayloadError("response_topic", "is not a valid MQTT topic")
    return value


#: Attributes that do not come from the say payload's JSON but travel with an announcement
#: (where it came from, where to reply): checked when the journal is read back.
ORIGIN_FIELDS: dict = {
    "source": _choice("source", SOURCES),
    "response_topic": _topic,
    "site_id": _plain_str("site_id", 1024),
    "session_id": _plain_str("session_id", 1024),
    "group": _plain_str("group", 256),
}


def from_record(data: Any, *, max_text_bytes: int = 8192, received: float = 0.0, **extra: Any) -> Announcement:
    """An announcement read back from the journal: the say payload's fields and the origin
    fields, each through the same check as on the way in. Raises PayloadError naming the field."""
    if not isinstance(data, dict):
        raise PayloadError("entry", f"expected a JSON object, got {_kind(data)}")
    if "id" not in data:
        raise PayloadError("id", "is required")
    values = _checked(data, {**{k: c for k, (_, c) in FIELDS.items()}, **ORIGIN_FIELDS}, max_text_bytes)
    values.update(extra)
    return Announcement(received=received, **values)


def stand_in(data: Any) -> Announcement:
    """An announcement to report a journal entry that failed its checks: its id, text and
    origin where those are valid (so the `failed` event reaches its response topic)."""
    values: dict = {}
    if isinstance(data, dict):
        for key, check in (("id", _id), *ORIGIN_FIELDS.items()):
            try:
                values[key] = check(data[key])
            except (KeyError, PayloadError):
                pass
        text = data.get("text")
        if isinstance(text, str) and text.strip():
            preview = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in text[:80])
            values["text"] = preview + ("…" if len(text) > 80 else "")
    return Announcement(**{"text": "(an unreadable queue journal entry)", **values})


def parse_say(payload: bytes, *, max_text_bytes: int = 8192, received: float = 0.0,
              **extra: Any) -> Announcement:
    """A say payload: plain UTF-8 text, or a JSON object (a payload starting with `{` or `[`).

    Raises PayloadError; ``extra`` sets attributes that do not come from the payload
    (source, response topic, …).
    """
    if len(payload) > max_text_bytes * 4 + 4096:
        raise PayloadError("payload", f"is {len(payload)} bytes, far over the text limit of {max_text_bytes}")
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("payload", "is not valid UTF-8") from None
    stripped = body.strip().lstrip("\ufeff")
    if stripped[:1] in ("{", "["):
        return parse_say_json(stripped, max_text_bytes=max_text_bytes, received=received, **extra)
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        try:  # a JSON-encoded string (Node-RED sends these): speak its content, not the quotes
            decoded = json.loads(stripped)
            stripped = decoded if isinstance(decoded, str) else stripped
        except ValueError:
            pass
    return Announcement(text=_text(stripped, "text", max_text_bytes), received=received, **extra)


def parse_say_json(body: str, *, max_text_bytes: int, received: float = 0.0, **extra: Any) -> Announcement:
    if _nesting(body) > MAX_JSON_DEPTH:
        raise PayloadError("payload", f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("payload", f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PayloadError("payload", f"must be a JSON object, got {_kind(data)}")
    values = _checked(data, {k: c for k, (_, c) in FIELDS.items()}, max_text_bytes)
    values.update(extra)
    return Announcement(received=received, **values)


def _checked(data: dict, checks: dict, max_text_bytes: int) -> dict:
    """The Announcement attributes of a JSON object, each through its check (None: the
    default); the PayloadError carries the id when the id itself is valid."""
    ann_id = None
    if "id" in data:
        ann_id = _id(data["id"])
    unknown = sorted(set(data) - set(checks) - {"text"})
    if unknown:
        raise PayloadError(unknown[0], f"unknown field (known: text, {', '.join(checks)})",
                           announcement_id=ann_id)
    if "text" not in data:
        raise PayloadError("text", "is required", announcement_id=ann_id)
    values: dict = {}
    try:
        values["text"] = _text(data["text"], "text", max_text_bytes)
        for key, value in data.items():
            if key == "text" or value is None:
                continue
            values[key] = checks[key](value)
    except PayloadError as exc:
        exc.announcement_id = ann_id
        raise
    return values


def _nesting(body: str) -> int:
    """Deepest bracket nesting, counted without parsing (a 10 000-deep payload never reaches json)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]":
            depth -= 1
    return deepest


def make_announcement(text: Any, *, max_text_bytes: int = 8192, **fields: Any) -> Announcement:
    """An announcement from another protocol (Hermes): the text checked like a say payload's,
    the id and origin like a journal entry's (what is accepted here is restored after a restart)."""
    checks = {"id": _id, **ORIGIN_FIELDS}
    for key in checks.keys() & fields.keys():
        if fields[key] is not None:
            fields[key] = checks[key](fields[key])
    return Announcement(text=_text(text, "text", max_text_bytes), **fields)
