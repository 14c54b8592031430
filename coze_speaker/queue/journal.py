"""The queue journal: accepted announcements survive a crash, a restart or a power cut while
their TTL allows.

`<state.dir>/queue-<device>.jsonl`, one JSON object a line, only ever appended to:

    {"op": "add", "entry": {...}}   an accepted announcement
    {"op": "done", "id": "..."}     it ended

So intake costs one short append per message, whatever the queue's length. `sync()`
fdatasyncs what was appended since the last call: the MQTT front end calls it before it
publishes `queued` or acknowledges a message, once per batch (group commit), so what it
reports queued survives a power cut. A done line lost in a power cut replays that
announcement within its TTL (at least once). When done lines outnumber the live entries,
the file is rewritten with only the live ones (temp file, fsync, rename:
fsutil.atomic_write); the daemon does the same once at start.

Reading back tolerates what a power cut, another version or an editor leaves: a torn last
line is ignored, an unreadable line is skipped with a warning, and every entry passes the
say payload's checks (`announcement.from_record`): one that fails is returned as refused,
naming the field, and the others are restored. The JSON list written by earlier versions
(`queue-<device>.json`) is read once and removed after the first rewrite.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..fsutil import atomic_write, fsync_dir
from .announcement import Announcement, PayloadError, from_record, stand_in

log = logging.getLogger(__name__)

_RUNTIME = {"received", "deadline", "correlation_data"}
_FIELDS = dataclasses.fields(Announcement)
#: Compaction waits for at least this many dead lines (a drained queue is not rewritten per end).
COMPACT_MIN = 64
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Restored(NamedTuple):
    """What the last run left: still valid, expired, and refused (a stand-in and the error naming the field)."""

    valid: List[Announcement]
    expired: List[Announcement]
    refused: List[Tuple[Announcement, PayloadError]]


class Journal:
    """The append-only journal of pending announcements, with wall-clock deadlines."""

    def __init__(self, path: Path, *, legacy: Iterable[Path] = ()) -> None:
        self.path = Path(path)
        self.legacy = tuple(Path(p) for p in legacy)
        self._lock = threading.Lock()
        self._live: Dict[str, bytes] = {}  # id -> its add line, in arrival order
        self._dead = 0  # lines in the file that are not a live entry's add line
        self._owned = False  # the whole file is known here (read or written): compaction may rewrite it
        self._dirty = False  # an append failed: the next change rewrites the whole file
        self._tail_checked = False
        self._unsynced = False  # lines appended since the last sync
        self._created = False  # the file was created since the last sync: its name needs a sync too
        self._warned = False
        #: bytes handed to the file system, appends and rewrites (the cost of intake)
        self.bytes_written = 0
        #: fdatasync calls that had something to make durable
        self.syncs = 0

    # -- writing --------------------------------------------------------------------------

    def add(self, ann: Announcement) -> None:
        """Record an accepted announcement (in the file at once: it survives a crash of the
        process; a power cut once `sync()` has run)."""
        try:
            line = _line({"op": "add", "entry": self._entry(ann)})
        except (TypeError, ValueError) as exc:  # not JSON-able: our bug, not the announcement's
            log.error("cannot journal announcement %s: %s (it will not survive a restart)", ann.id, exc)
            return
        with self._lock:
            if self._live.pop(ann.id, None) is not None:
                self._dead += 1
            self._live[ann.id] = line
            self._append(line, sync=True)

    def done(self, ids: Iterable[str]) -> None:
        """Record that these announcements ended (not synced: see the module's doc)."""
        with self._lock:
            ended = [i for i in ids if self._live.pop(i, None) is not None]
            if not ended:
                return
            self._dead += 2 * len(ended)  # their add lines and these done lines
            if self._owned and self._dead > max(len(self._live), COMPACT_MIN):
                self._rewrite()
            else:
                self._append(b"".join(_line({"op": "done", "id": i}) for i in ended), sync=False)

    def sync(self) -> None:
        """Make every line appended so far durable (one fdatasync for all of them); cheap
        when there is nothing new. Not under the lock: appends go on meanwhile."""
        with self._lock:
            if not self._unsynced:
                return
            self._unsynced = False
            created, self._created = self._created, False
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self.syncs += 1
            if created:
                fsync_dir(self.path.parent)  # the file's name is durable too
        except FileNotFoundError:
            pass  # replaced by a rewrite meanwhile, which was durable
        except OSError as exc:
            self._warn(exc)

    def write(self, announcements: Iterable[Announcement]) -> None:
        """Replace the journal with these announcements (compaction; at start and on reload)."""
        live: Dict[str, bytes] = {}
        for ann in announcements:
            try:
                live[ann.id] = _line({"op": "add", "entry": self._entry(ann)})
            except (TypeError, ValueError) as exc:
                log.error("cannot journal announcement %s: %s", ann.id, exc)
        with self._lock:
            self._live = live
            self._rewrite()

    def _append(self, data: bytes, *, sync: bool) -> None:
        """Append whole lines; with sync, the next `sync()` makes them durable (a done line
        waits for the next add's sync: losing it only replays, see the module's doc)."""
        if self._dirty and self._rewrite():
            return  # the rewrite wrote every live line, this one included
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o600)
            except FileNotFoundError:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o600)
            try:
                size = os.fstat(fd).st_size
                if not self._tail_checked and size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a torn line from a crash: end it, so this one reads whole
                self._tail_checked = True
                self._write_all(fd, data)
            finally:
                os.close(fd)
            self._unsynced = self._unsynced or sync
            self._created = self._created or size == 0
            self._recovered()
        except OSError as exc:
            self._dirty = True
            self._warn(exc)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            self.bytes_written += n
            view = view[n:]

    def _rewrite(self) -> bool:
        """Write the live entries as the whole file (atomic, durable); True when it worked."""
        body = b"".join(self._live.values())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, body, durable=True)
        except OSError as exc:
            self._dirty = True
            self._warn(exc)
            return False
        self.bytes_written += len(body)
        self._unsynced = self._created = False  # the rewrite was durable
        self._dead = 0
        self._owned = True
        self._tail_checked = True
        self._dirty = False
        self._recovered()
        for old in self.legacy:  # taken over: the live entries are in the new file now
            try:
                old.unlink()
                log.info("took over the queue journal %s (now %s)", old, self.path.name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the old queue journal %s: %s", old, exc)
        return True

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning("cannot write the queue journal %s: %s (queued announcements will not "
                        "survive a restart until it works again)", self.path, exc)

    def _recovered(self) -> None:
        if self._warned:
            self._warned = False
            log.info("the queue journal %s can be written again", self.path)

    @staticmethod
    def _entry(ann: Announcement) -> Dict[str, Any]:
        data = {f.name: getattr(ann, f.name) for f in _FIELDS
                if f.name not in _RUNTIME and getattr(ann, f.name) is not None}
        if ann.deadline is not None:
            data["deadline_wall"] = time.time() + (ann.deadline - time.monotonic())
        if ann.correlation_data is not None:
            data["correlation_data_b64"] = base64.b64encode(ann.correlation_data).decode()
        return data

    # -- reading --------------------------------------------------------------------------

    def load(self, *, max_text_bytes: int = 8192) -> Restored:
        """The announcements the last run accepted and did not end, deadlines back on the monotonic clock."""
        entries: Dict[Any, Any] = {}
        unnamed: List[Any] = []  # entries whose id is not a string: refused below, never matched by a done line
        for path in (*self.legacy, self.path):
            for record in _records(path):
                _apply(record, entries, unnamed, path)
        now_wall, now_mono = time.time(), time.monotonic()
        restored = Restored([], [], [])
        for data in [*entries.values(), *unnamed]:
            try:
                ann = _announcement(data, max_text_bytes=max_text_bytes, now_wall=now_wall, now_mono=now_mono)
            except PayloadError as exc:
                log.warning("a queue journal entry cannot be restored: %s", exc)
                restored.refused.append((stand_in(data), exc))
                continue
            (restored.expired if ann.expired(now_mono) else restored.valid).append(ann)
        return restored


def _line(record: Dict[str, Any]) -> bytes:
    # ASCII: any str encodes (a lone surrogate as \ud800), and a line never holds a raw newline
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


def _records(path: Path) -> List[Any]:
    """The JSON records of one journal file: the lines of a .jsonl file, the list of an old .json one."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("ignoring an unreadable queue journal %s: %s", path, exc)
        return []
    if raw.lstrip()[:1] == b"[":  # written by an earlier version: a JSON list of entries
        try:
            entries = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            log.warning("ignoring an unreadable queue journal %s: %s", path, exc)
            return []
        if not isinstance(entries, list):
            log.warning("ignoring the queue journal %s: not a JSON list", path)
            return []
        return [{"op": "add", "entry": e} for e in entries]
    lines = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip(b" \t\r\0"):
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (ValueError, RecursionError) as exc:
            if number == len(lines):  # no newline after it: a write cut short by a crash or power cut
                log.info("ignoring a torn last line in the queue journal %s", path)
            else:
                log.warning("skipping unreadable line %d of the queue journal %s: %s", number, path, exc)
    return records


def _apply(record: Any, entries: Dict[Any, Any], unnamed: List[Any], path: Path) -> None:
    op = record.get("op") if isinstance(record, dict) else None
    if op == "add":
        entry = record.get("entry")
        ident = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(ident, str):
            entries[ident] = entry
        else:
            unnamed.append(entry)
    elif op == "done":
        ident = record.get("id")
        if isinstance(ident, str):
            entries.pop(ident, None)
    else:
        log.warning("skipping a record of the queue journal %s that is neither add nor done", path)


def _announcement(data: Any, *, max_text_bytes: int, now_wall: float, now_mono: float) -> Announcement:
    """One entry back as an Announcement, every field checked; raises PayloadError naming it."""
    if isinstance(data, dict):
        data = dict(data)
        wall = data.pop("deadline_wall", None)
        corr = data.pop("correlation_data_b64", None)
    else:
        wall = corr = None
    ann = from_record(data, max_text_bytes=max_text_bytes, received=now_mono)
    deadline: Optional[float] = None
    if wall is not None:
        if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not math.isfinite(wall):
            raise PayloadError("deadline", f"expected a time in seconds, got {wall!r}", announcement_id=ann.id)
        deadline = now_mono + (wall - now_wall)
    correlation: Optional[bytes] = None
    if corr is not None:
        try:
            if not isinstance(corr, str):
                raise ValueError
            correlation = base64.b64decode(corr, validate=True)
        except (ValueError, binascii.Error):
            raise PayloadError("correlation_data", "is not base64", announcement_id=ann.id) from None
    return dataclasses.replace(ann, deadline=deadline, correlation_data=correlation)
