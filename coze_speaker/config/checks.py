"""Checking one config value: ``${VAR}`` expansion, then the key's check.

A check takes the raw :class:`Value` (with its line and whether it came from the
environment), the load :class:`Context` and the key's dotted path; it returns the typed
value or raises :class:`Invalid` with the problem, which the context records with its
location. The model (``model.py``) picks one of these checks for each key.

* ``${VAR}`` / ``${VAR:-default}`` are expanded in string values (``$$`` is a
  literal ``$``; ``:-`` also applies when VAR is set but empty, as in sh).
  Values that came from the environment are converted to the field's type
  ("48000" -> 48000, "true" -> True, "" or "null" -> None for optional fields).
* Relative paths in a config file are relative to the file's directory.
* Secrets are wrapped in :class:`Secret` and never appear in reprs or error messages.
"""

from __future__ import annotations

import math
import re
from datetime import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, SupportsIndex, Tuple, Union

from ..vocabulary import Range

__all__ = [
    "Secret", "Value", "Context", "Invalid", "Checker", "Rules",
    "integer", "number", "boolean", "string", "one_of", "optional", "word_or", "null_as", "path",
    "secret", "pattern", "list_of", "url", "topic", "time_of_day",
]


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

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Secret":
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        raise TypeError("Secret values must not be pickled")


# --------------------------------------------------------------------------- values and context


class Value:
    """A raw config value plus where it came from (line, source text, env expansion)."""

    __slots__ = ("value", "line", "raw", "from_env", "key_line")

    def __init__(self, value: Any, line: Optional[int] = None, raw: Optional[str] = None,
                 from_env: bool = False, key_line: Optional[int] = None) -> None:
        self.value, self.line, self.raw, self.from_env, self.key_line = value, line, raw, from_env, key_line


class Invalid(Exception):
    """One problem with one value; turned into a located error line by Context.apply."""


BAD = object()  # marks a value that already produced an error
#: A key's check: takes the raw value, the load context and the key's dotted path.
Checker = Callable[[Value, "Context", str], Any]
#: Cross-key rules of a section: given its checked values and path, yields (key, problem).
Rules = Callable[[Mapping[str, Any], str], Iterable[Tuple[str, str]]]


class Context:
    """One load: where values come from, the environment, and the errors found so far."""

    def __init__(self, source: str, env: Mapping[str, str], base_dir: Optional[Path]) -> None:
        self.source, self.env, self.base_dir = source, env, base_dir
        self.errors: List[Tuple[int, str]] = []
        self.warnings: List[str] = []
        self.inline_secrets: List[str] = []

    def error(self, line: Optional[int], path: str, msg: str) -> None:
        loc = f"{self.source}:{line}" if line else self.source
        self.errors.append((line or 0, ": ".join(p for p in (loc, path, msg) if p)))

    def warn(self, line: Optional[int], path: str, msg: str) -> None:
        """A problem that does not stop the load (a deprecated key): logged, kept in Config.warnings."""
        loc = f"{self.source}:{line}" if line else self.source
        self.warnings.append(": ".join(p for p in (loc, path, msg) if p))

    def apply(self, check: Checker, v: Value, path: str) -> Any:
        """Expand env references in ``v`` then run ``check``; record failures, return BAD."""
        try:
            v = self.expand(v, path, getattr(check, "secret", False))
            return check(v, self, path)
        except Invalid as e:
            self.error(v.line, path, str(e))
            return BAD

    def expand(self, v: Value, path: str, secret: bool) -> Value:
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
                raise Invalid(f"invalid environment reference{shown} (use ${{NAME}} or ${{NAME:-default}})")
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
            if secret:  # unset secret: let its file key (token_file, password_file) provide it
                return Value(None, v.line, None, True, v.key_line)
            names = ", ".join(missing)
            raise Invalid(f"environment variable{'s' if len(missing) > 1 else ''} {names} "
                           f"{'are' if len(missing) > 1 else 'is'} not set")
        return Value("".join(out), v.line, None, used, v.key_line)

    def path(self, text: str) -> Path:
        p = Path(text).expanduser()
        return self.base_dir / p if self.base_dir is not None and not p.is_absolute() else p


def show(v: Value) -> str:
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


def _kind(v: Value) -> str:
    """Describe only the type of a value (used for secrets)."""
    x = v.value
    for t, name in ((bool, "a boolean"), (str, "a string"), (dict, "a mapping"), (list, "a list"),
                    (int, "a number"), (float, "a number")):
        if isinstance(x, t):
            return name
    return "null" if x is None else type(x).__name__


def _fmt(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


def join(path: str, key: str) -> str:
    """The dotted name of ``key`` inside ``path`` (for messages)."""
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- checkers


Bound = Union[Range, float, None]


def _bounds(lo: Bound, hi: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    """A Range from vocabulary.py, or explicit lo/hi."""
    return (lo.low, lo.high) if isinstance(lo, Range) else (lo, hi)


def _range(x: float, lo: Optional[float], hi: Optional[float], gt: Optional[float], shown: str) -> None:
    if gt is not None and not x > gt:
        raise Invalid(f"must be greater than {_fmt(gt)}, got {shown}")
    if lo is not None and hi is not None and not lo <= x <= hi:
        raise Invalid(f"must be between {_fmt(lo)} and {_fmt(hi)}, got {shown}")
    if lo is not None and x < lo:
        raise Invalid(f"must be at least {_fmt(lo)}, got {shown}")
    if hi is not None and x > hi:
        raise Invalid(f"must be at most {_fmt(hi)}, got {shown}")


def integer(lo: Bound = None, hi: Optional[int] = None) -> Checker:
    """An int (not bool) within a Range or [lo, hi]; env strings like "42" are converted."""
    low, high = _bounds(lo, hi)

    def check(v: Value, ctx: Context, path: str) -> int:
        x = v.value
        if v.from_env and isinstance(x, str) and re.fullmatch(r"\s*[+-]?\d+\s*", x):
            x = int(x)
        if isinstance(x, bool) or not isinstance(x, int):
            raise Invalid(f"expected an integer, got {show(v)}")
        _range(x, low, high, None, show(v) if v.raw else str(x))
        return x
    return check


def number(lo: Bound = None, hi: Optional[float] = None, *, gt: Optional[float] = None) -> Checker:
    """A finite int or float (not bool) within a Range or [lo, hi], returned as float."""
    low, high = _bounds(lo, hi)

    def check(v: Value, ctx: Context, path: str) -> float:
        x = v.value
        if v.from_env and isinstance(x, str) and re.fullmatch(
                r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*", x):
            x = float(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise Invalid(f"expected a number, got {show(v)}")
        _range(x, low, high, gt, show(v) if v.raw else _fmt(x))
        return float(x)
    return check


def boolean() -> Checker:
    """true/false; env strings true/false/yes/no/on/off/1/0 are converted."""
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

    def check(v: Value, ctx: Context, path: str) -> bool:
        x = v.value
        if v.from_env and isinstance(x, str) and x.strip().lower() in words:
            x = words[x.strip().lower()]
        if not isinstance(x, bool):
            raise Invalid(f"expected true or false, got {show(v)}")
        return x
    return check


def _text(v: Value) -> Optional[str]:
    """The value as text: strings, and unquoted integers by their source text (e.g. voice ids)."""
    if isinstance(v.value, str):
        return v.value
    if isinstance(v.value, int) and not isinstance(v.value, bool):
        return v.raw if v.raw is not None else str(v.value)
    return None


def string(*, nonempty: bool = True) -> Checker:
    """A string (unquoted integers are taken by their source text)."""
    def check(v: Value, ctx: Context, path: str) -> str:
        s = _text(v)
        if s is None:
            raise Invalid(f"expected a string, got {show(v)}")
        if nonempty and not s.strip():
            raise Invalid("must not be empty")
        return s
    return check


def one_of(*choices: Any) -> Checker:
    """One of ``choices`` (strings compared case-insensitively; env strings converted to ints)."""
    listed = ", ".join(str(c) for c in choices)

    def check(v: Value, ctx: Context, path: str) -> Any:
        x = v.value
        if isinstance(x, str):
            if v.from_env and re.fullmatch(r"\s*[+-]?\d+\s*", x) and int(x) in choices:
                return int(x)
            if x.lower() in choices:
                return x.lower()
        elif not isinstance(x, bool) and isinstance(x, (int, float)) and x in choices:
            return choices[choices.index(x)]
        raise Invalid(f"{show(v)} is not one of {listed}")
    return check


def optional(inner: Checker) -> Checker:
    """null, or whatever ``inner`` accepts; "" / "null" from the environment also mean null."""
    def check(v: Value, ctx: Context, path: str) -> Any:
        if v.value is None or (v.from_env and isinstance(v.value, str) and v.value.strip() in ("", "null", "~")):
            return None
        return inner(v, ctx, path)
    return check


def word_or(word: str, inner: Checker) -> Checker:
    """The word itself (any case, e.g. "auto"), or whatever ``inner`` accepts."""
    def check(v: Value, ctx: Context, path: str) -> Any:
        if isinstance(v.value, str) and v.value.strip().lower() == word:
            return word
        return inner(v, ctx, path)
    return check


def null_as(replacement: Any, inner: Checker) -> Checker:
    """Treat YAML null as ``replacement`` (e.g. ``backend: null`` means the "null" backend)."""
    def check(v: Value, ctx: Context, path: str) -> Any:
        return inner(Value(replacement, v.line) if v.value is None else v, ctx, path)
    return check


def path() -> Checker:
    """A filesystem path; ``~`` expanded, relative paths anchored at the config file's directory."""
    def check(v: Value, ctx: Context, p: str) -> Path:
        if isinstance(v.value, Path):
            return ctx.path(str(v.value))
        s = _text(v)
        if s is None:
            raise Invalid(f"expected a path, got {show(v)}")
        if not s.strip():
            raise Invalid("must not be empty")
        return ctx.path(s)
    return check


def secret() -> Checker:
    """A secret string (or null); inline literals are remembered for the permission warning."""
    def check(v: Value, ctx: Context, path: str) -> Optional[Secret]:
        if isinstance(v.value, Secret):
            return v.value if v.value else None
        if v.value is None:
            return None
        s = _text(v)
        if s is None:
            raise Invalid(f"expected a string, got {_kind(v)}")
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

    def check(v: Value, ctx: Context, path: str) -> str:
        s = base(v, ctx, path)
        if not regex.match(s):
            extra = f" (try {hint(s)!r})" if hint else ""
            raise Invalid(f"{s!r} must match {regex.pattern}{extra}")
        return s
    return check


def list_of(inner: Checker) -> Checker:
    """A list (null = empty) whose items pass ``inner``; returned as a tuple."""
    def check(v: Value, ctx: Context, path: str) -> Any:
        if v.value is None:
            return ()
        if not isinstance(v.value, list):
            raise Invalid(f"expected a list, got {show(v)}")
        items = tuple(ctx.apply(inner, item, f"{path}[{i}]") for i, item in enumerate(v.value))
        return BAD if BAD in items else items
    return check


def url(schemes: Tuple[str, ...] = ("http", "https")) -> Checker:
    """A URL with one of these schemes (http or https by default), without trailing slashes."""
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, schemes))})://[^/\s]+")
    shown = ("an " if schemes[0].startswith("h") else "a ") + " or ".join(f"{s}://" for s in schemes)

    def check(v: Value, ctx: Context, path: str) -> str:
        s = string()(v, ctx, path).strip().rstrip("/")
        if not pattern.match(s):
            raise Invalid(f"{s!r} must be {shown} URL")
        return s
    return check


def topic() -> Checker:
    """An MQTT topic prefix: no wildcards, no leading or trailing slash."""
    def check(v: Value, ctx: Context, path: str) -> str:
        s = string()(v, ctx, path)
        if "+" in s or "#" in s:
            raise Invalid(f"{s!r} must not contain MQTT wildcards (+ or #)")
        if s.startswith("/") or s.endswith("/"):
            raise Invalid(f"{s!r} must not start or end with '/'")
        return s
    return check


def time_of_day() -> Checker:
    """HH:MM, quoted or not (YAML 1.1 reads unquoted 22:00 as the base-60 integer 1320)."""
    def check(v: Value, ctx: Context, path: str) -> time:
        x = v.value
        if isinstance(x, time):
            return x
        if isinstance(x, int) and not isinstance(x, bool) and v.raw:
            x = v.raw
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", x) if isinstance(x, str) else None
        if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise Invalid(f"expected a time as HH:MM, got {show(v)}")
        return time(int(m.group(1)), int(m.group(2)))
    return check
