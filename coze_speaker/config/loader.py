"""The config engine: reads YAML keeping line numbers, builds each section from its
dataclass's keys and collects *all* problems into one :class:`ConfigError`, so a user
fixes the file in one pass.

It knows no coze-speaker key: ``model.py`` declares each key once with :func:`key` or
:func:`subsection` (default, check, one-line doc), and this module reads its table from
``dataclasses.fields()`` of those classes. The checks themselves are in ``checks.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import yaml  # type: ignore[import-untyped, unused-ignore]

from ..errors import SpeakerError
from .checks import BAD, Checker, Context, Invalid, Rules, Secret, Value, boolean, join, optional, show

__all__ = ["ConfigError", "key", "subsection", "section", "flag_or_section", "keys_of", "read_data", "read_file"]

log = logging.getLogger("coze_speaker.config")

T = TypeVar("T")


# --------------------------------------------------------------------------- public types


class ConfigError(SpeakerError):
    """Invalid configuration; ``errors`` holds one "file:line: key: problem" line per issue."""

    code = "config"

    def __init__(self, errors: Union[List[str], str]) -> None:
        self.errors: List[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------- declaring keys


def key(default: Any, check: Checker, doc: str, *, env: Optional[str] = None,
        secret_of: Optional[str] = None, section: Optional[type] = None,
        renamed_from: Optional[str] = None) -> Any:
    """Declare a config key once: its default, its check and a one-line doc.

    ``default`` may be a zero-argument callable (a class, a function), called per instance.
    ``env`` names the variable read when the key is missing from the file; ``secret_of``
    marks a file key whose content is that secret key; ``section`` is the class a mapping
    value is built into (so its keys can be listed); ``renamed_from`` is the key's old name,
    still read (with a warning) so an old config keeps working.
    """
    meta: Dict[str, Any] = {"check": check, "doc": doc}
    if renamed_from is not None:
        meta["renamed_from"] = renamed_from
    if env is not None:
        meta["missing"] = f"${{{env}}}"
    if secret_of is not None:
        meta["secret_of"] = secret_of
    if section is not None:
        meta["section"] = section
    return _field(default, meta)


def subsection(cls: type, doc: str, *, rules: Optional[Rules] = None, nullable: bool = False) -> Any:
    """Declare a key holding a mapping built into ``cls``: missing means all its defaults,
    or None when ``nullable`` (then null in the file also means off)."""
    check = section(cls, rules)
    if nullable:
        return _field(None, {"check": optional(check), "doc": doc, "section": cls})
    return _field(cls, {"check": check, "doc": doc, "section": cls, "missing": {}})


def _field(default: Any, meta: Dict[str, Any]) -> Any:
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _keys(cls: type) -> List["dataclasses.Field[Any]"]:
    """The fields of ``cls`` that are config keys (declared with key() or subsection())."""
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def keys_of(cls: type, prefix: str = "") -> Iterator[Tuple[str, str]]:
    """Every key below ``cls`` as (dotted name, one-line doc), sections before their keys."""
    for f in _keys(cls):
        name = join(prefix, f.name)
        yield name, f.metadata["doc"]
        if "section" in f.metadata:
            yield from keys_of(f.metadata["section"], name)


def _missing(f: "dataclasses.Field[Any]") -> Any:
    """What the loader reads for a key absent from the file."""
    if "missing" in f.metadata:
        return f.metadata["missing"]
    return f.default_factory() if callable(f.default_factory) else f.default


# --------------------------------------------------------------------------- sections


def _check_mapping(cls: type, v: Value, ctx: Context, path: str) -> Any:
    """Check a mapping against ``cls``'s keys; returns a dict of values or BAD."""
    items = {} if v.value is None else v.value
    if not isinstance(items, dict):
        raise Invalid(f"expected a mapping, got {show(v)}")
    fields = _keys(cls)
    known = [f.name for f in fields]
    bad = False
    renamed = {f.metadata["renamed_from"]: f.name for f in fields if "renamed_from" in f.metadata}
    written: Dict[str, str] = {}  # key -> the old name it was written as (errors name what is in the file)
    for old, new in renamed.items():
        if old not in items:
            continue
        item = items[old]
        if new in items:
            ctx.error(item.key_line, join(path, old), f"is the old name of {join(path, new)}; set only {new}")
            bad = True
        else:
            ctx.warn(item.key_line, join(path, old), f"is deprecated: rename it to {new}")
            items = {**items, new: item}
            written[new] = old
    for name, item in items.items():
        if name not in known and name not in renamed:
            ctx.error(item.key_line, join(path, name), f"unknown key (known: {', '.join(known)})")
            bad = True
    values: Dict[str, Any] = {}
    for f in fields:
        item = items[f.name] if f.name in items else _to_val(_missing(f))
        values[f.name] = ctx.apply(f.metadata["check"], item, join(path, written.get(f.name, f.name)))
        bad = bad or values[f.name] is BAD
    return BAD if bad else values


def _read_secret_file(values: Dict[str, Any], items: Dict[str, Value], ctx: Context, path: str,
                      name: str, file_key: str) -> None:
    """Set secret ``name`` from ``file_key`` (stripped file content); both set is an error."""
    p = values[file_key]
    if p is None:
        return
    line = items[file_key].line if file_key in items else None
    where = join(path, file_key)
    if name in items and values[name] is not None:
        ctx.error(line, where, f"cannot be combined with {join(path, name)}; set only one")
        return
    try:
        content = p.read_text(encoding="utf-8").strip()
    except OSError as e:
        ctx.error(line, where, f"cannot read {p}: {e.strerror or type(e).__name__}")
        return
    except UnicodeDecodeError:
        ctx.error(line, where, f"{p} is not UTF-8 text")
        return
    if not content:
        ctx.error(line, where, f"{p} is empty")
        return
    values[name] = Secret(content)


def section(cls: type, rules: Optional[Rules] = None) -> Checker:
    """A mapping checked against ``cls``'s keys and built into ``cls`` (null = defaults)."""
    def check(v: Value, ctx: Context, path: str) -> Any:
        values = _check_mapping(cls, v, ctx, path)
        if values is BAD:
            return BAD
        items: Dict[str, Value] = v.value or {}
        before = len(ctx.errors)
        for f in _keys(cls):
            if "secret_of" in f.metadata:
                _read_secret_file(values, items, ctx, path, f.metadata["secret_of"], f.name)
        if rules is not None and len(ctx.errors) == before:
            for name, problem in rules(values, path):
                ctx.error(items[name].line if name in items else None, join(path, name), problem)
        if len(ctx.errors) > before:
            return BAD
        return cls(**values)
    return check


def flag_or_section(cls: type, rules: Optional[Rules] = None) -> Checker:
    """false/null (None), true (all of ``cls``'s defaults), or a mapping checked as ``cls``."""
    inner = section(cls, rules)

    def check(v: Value, ctx: Context, path: str) -> Any:
        x = v.value
        if v.from_env and isinstance(x, str):
            x = boolean()(v, ctx, path)
        if x is None or x is False:
            return None
        if x is True:
            return cls()
        if isinstance(x, dict):
            return inner(v, ctx, path)
        raise Invalid(f"expected true, false or a mapping, got {show(v)}")
    return check


# --------------------------------------------------------------------------- reading


def _to_val(data: Any) -> Value:
    """Wrap plain Python data (defaults, config_from_dict input) as Value, no line numbers."""
    if isinstance(data, Mapping):
        return Value({str(k): _to_val(x) for k, x in data.items()})
    if isinstance(data, (list, tuple)):
        return Value([_to_val(x) for x in data])
    raw = str(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else None
    return Value(data, raw=raw)


def _from_node(node: yaml.Node, ctx: Context, path: str, loader: yaml.SafeLoader, active: set) -> Value:
    """Convert a composed YAML node to Value with SafeLoader semantics, keeping line numbers."""
    line = node.start_mark.line + 1
    if id(node) in active:
        raise Invalid("recursive YAML alias")
    if isinstance(node, yaml.ScalarNode):
        return Value(loader.construct_object(node, deep=True), line, node.value)
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        return Value([_from_node(n, ctx, f"{path}[{i}]", loader, active) for i, n in enumerate(node.value)], line)
    assert isinstance(node, yaml.MappingNode)
    loader.flatten_mapping(node)  # merge keys (<<)
    out: Dict[str, Value] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
        sub = join(path, str(name))
        if not isinstance(key_node, yaml.ScalarNode):
            ctx.error(key_line, path, "mapping keys must be plain names")
            continue
        if name in out:
            ctx.error(key_line, sub, f"duplicate key (first on line {out[name].key_line})")
            continue
        try:
            item = _from_node(value_node, ctx, sub, loader, active)
        except Invalid as e:
            ctx.error(value_node.start_mark.line + 1, sub, str(e))
            continue
        item.key_line = key_line
        out[name] = item
    return Value(out, line)


def _build(root: Type[T], data: Value, ctx: Context, source: Optional[Path]) -> T:
    """Check everything, raise all errors at once, else build ``root`` with source and warnings."""
    if isinstance(data.value, dict) or data.value is None:
        values = _check_mapping(root, data, ctx, "")
    else:
        ctx.error(data.line, "", f"top level must be a mapping, got {show(data)}")
        values = BAD
    if ctx.errors or values is BAD:
        raise ConfigError([msg for _, msg in sorted(ctx.errors, key=lambda e: e[0])])
    warnings: List[str] = list(ctx.warnings)
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
    make: Callable[..., T] = root
    return make(**values, source=source, warnings=tuple(warnings))


def read_data(root: Type[T], data: Mapping[str, Any], source: str, env: Mapping[str, str]) -> T:
    """Build ``root`` from plain data with the same checks as a file (errors have no lines)."""
    return _build(root, _to_val(data), Context(source, env, None), None)


def read_file(root: Type[T], path: Path, env: Mapping[str, str]) -> T:
    """Read, check and build ``root`` from a YAML file; errors are shown as ``path:line``."""
    name = str(path)
    real = path.expanduser()
    if not real.exists():
        raise ConfigError(f"config file not found: {name}")
    try:
        text = real.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or ("not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e))
        raise ConfigError(f"{name}: cannot read config file: {reason}") from None
    ctx = Context(name, env, real.absolute().parent)
    loader = yaml.SafeLoader("")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = Value(None) if node is None else _from_node(node, ctx, "", loader, set())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = f"{name}:{mark.line + 1}" if mark else name
        raise ConfigError(f"{loc}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}") from None
    except Invalid as e:
        raise ConfigError(f"{name}: {e}") from None
    return _build(root, data, ctx, real)

