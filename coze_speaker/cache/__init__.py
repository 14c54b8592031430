"""The phrase cache: synthesized speech kept on disk, so a phrase is paid for only once.

Layout of the cache directory (mode 0700)::

    index.sqlite3     LRU bookkeeping and the hit/miss counters (WAL mode). Only an index:
                      the entry files are the truth, a lost or corrupt index is rebuilt
                      from them (lookups adopt files, a full scan runs once when needed).
    tmp/              files being written; a crash leaves them here, removed after an hour
    ab/abcd….wav      one entry per key (sha256 hex): a standard WAV file, PCM s16le mono,
                      so ``aplay`` plays it

An entry name only ever appears through ``os.replace`` of a complete, fsynced file, so a
SIGKILL or a power cut in the middle of a write cannot leave truncated audio under a final
name; ``lookup`` also checks the header against the file size before trusting an entry.

Two processes (the daemon and the CLI) may share a directory: sqlite does the locking,
files appear by atomic rename, eviction unlinks the file and then drops its row (a reader
that already opened the file still reads all of it). Nothing here reads every entry except
the explicit maintenance calls (``prune``, ``verify``, ``clear``) and the one-off rebuild
after the index was lost.

This module knows nothing of MQTT, Coze or audio devices.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from ..errors import SpeakerError

log = logging.getLogger(__name__)

__all__ = [
    "CacheEntry",
    "CacheError",
    "CacheStats",
    "CacheWriter",
    "PhraseCache",
    "cache_key",
]

KEY_VERSION = 1
HEADER_SIZE = 44
MIN_RATE = 8000
MAX_RATE = 48000
#: Temp files older than this were left by a crash (a phrase is written in seconds).
STALE_TMP_SECONDS = 3600.0
INDEX_NAME = "index.sqlite3"
TMP_DIR = "tmp"
SCHEMA_VERSION = 1
#: After the index failed (locked too long, unwritable), work without it for this long
#: before trying again, so a stuck lock costs one busy timeout, not one per lookup.
INDEX_RETRY_SECONDS = 30.0

_KEY_RE = re.compile(r"[0-9a-f]{64}\Z")
_HEX2_RE = re.compile(r"[0-9a-f]{2}\Z")
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_RESERVED_KEY_FIELDS = ("v", "host", "text")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        key TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        rate INTEGER NOT NULL,
        frames INTEGER NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used)",
    "CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    # needs_scan: the index may lack entries that exist as files (it is new, or was lost);
    # the next commit (or prune/verify/stats) adopts them once.
    """INSERT OR IGNORE INTO stats (name, value) VALUES
        ('hits', 0), ('misses', 0), ('entries', 0), ('bytes', 0), ('needs_scan', 1)""",
    # entries/bytes are kept by triggers so eviction never has to SUM the table.
    """CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
        UPDATE stats SET value = value + 1 WHERE name = 'entries';
        UPDATE stats SET value = value + NEW.size WHERE name = 'bytes';
    END""",
    """CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
        UPDATE stats SET value = value - 1 WHERE name = 'entries';
        UPDATE stats SET value = value - OLD.size WHERE name = 'bytes';
    END""",
    """CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries
        WHEN OLD.size != NEW.size BEGIN
        UPDATE stats SET value = value - OLD.size + NEW.size WHERE name = 'bytes';
    END""",
)

_UPSERT = """INSERT INTO entries (key, size, rate, frames, created, last_used, hits)
    VALUES (?, ?, ?, ?, ?, ?, 0)
    ON CONFLICT (key) DO UPDATE SET size = excluded.size, rate = excluded.rate,
        frames = excluded.frames, created = excluded.created, last_used = excluded.last_used"""

_RECOUNT = (
    "UPDATE stats SET value = (SELECT COUNT(*) FROM entries) WHERE name = 'entries'",
    "UPDATE stats SET value = (SELECT IFNULL(SUM(size), 0) FROM entries) WHERE name = 'bytes'",
)


# -- keys -------------------------------------------------------------------------------


def cache_key(host: str, text: str, params: Mapping[str, Any]) -> str:
    """The cache key of one synthesis: sha256 hex of a canonical JSON of everything it depends on.

    The JSON is ``{"v": 1, "host": host, "text": text, **params}`` with sorted keys,
    separators ``(",", ":")`` and ``ensure_ascii=False``; params holds voice_id, emotion,
    emotion_scale, speed, loudness_rate, context_texts, response_format and sample_rate.
    A float with an integral value is written as an integer, so ``speed=1`` and
    ``speed=1.0`` share their audio.
    """
    if not isinstance(host, str) or not isinstance(text, str):
        raise TypeError("host and text must be strings")
    clash = [name for name in _RESERVED_KEY_FIELDS if name in params]
    if clash:
        raise ValueError(f"params must not contain {', '.join(clash)}")
    doc: Dict[str, Any] = {"v": KEY_VERSION, "host": host, "text": text}
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"parameter names must be strings, got {name!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        doc[name] = value
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# -- public types -----------------------------------------------------------------------


class CacheError(SpeakerError):
    code = "cache"

    """The cache cannot do what was asked (unusable directory, entry vanished, closed)."""


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    oldest: Optional[float]  # epoch seconds of the oldest entry's creation
    newest: Optional[float]
    max_bytes: int
    dir: Path


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    rate: int
    frames: int
    size: int  # bytes of the whole file, header included


# -- WAV helpers ------------------------------------------------------------------------


def _wav_header(rate: int, data_bytes: int) -> bytes:
    return _HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
                        b"data", data_bytes)


def _check_header(head: bytes, file_size: int) -> Tuple[Optional[str], int, int]:
    """(problem or None, rate, data bytes) of an entry file: our canonical 44-byte header only."""
    if len(head) < HEADER_SIZE:
        return f"{file_size} bytes is shorter than a WAV header", 0, 0
    (riff, riff_size, wave, fmt, fmt_size, tag, channels, rate, byte_rate, align, bits,
     data, data_size) = _HEADER.unpack(head[:HEADER_SIZE])
    if riff != b"RIFF" or wave != b"WAVE":
        return "not a RIFF/WAVE file", 0, 0
    if fmt != b"fmt " or fmt_size != 16 or data != b"data":
        return "unexpected WAV chunk layout", 0, 0
    if tag != 1 or channels != 1 or bits != 16 or align != 2:
        return f"not PCM 16-bit mono (format {tag}, {channels} channels, {bits} bits)", 0, 0
    if not MIN_RATE <= rate <= MAX_RATE or byte_rate != rate * 2:
        return f"bad sample rate {rate}", 0, 0
    if data_size != file_size - HEADER_SIZE or riff_size != file_size - 8:
        return f"header says {data_size} bytes of audio, the file holds {file_size - HEADER_SIZE}", 0, 0
    if data_size < 2 or data_size % 2:
        return f"{data_size} bytes of audio is not at least one whole frame", 0, 0
    return None, rate, data_size


def _fsync_dir(path: Union[str, Path]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories; the rename stands
        log.debug("cannot fsync %s: %s", path, exc)
    finally:
        os.close(fd)


def _make_private_dir(path: Path) -> bool:
    """Create path and its missing parents with mode 0700; True when path was created."""
    missing = []
    p = path
    while not os.path.lexists(p) and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # exactly 0700 whatever the umask
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    return bool(missing)


def _describe(exc: OSError, path: Any = None) -> str:
    reason = exc.strerror or str(exc)
    where = exc.filename or path
    return f"{reason} ({where})" if where else reason


def _is_corrupt(exc: BaseException) -> bool:
    """True when an sqlite error means the index file itself is unusable (not just busy)."""
    if isinstance(exc, _IndexMismatch):
        return True
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    return type(exc) is sqlite3.DatabaseError


class _IndexMismatch(sqlite3.DatabaseError):
    """The index file has a schema this code does not know."""


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


# -- the cache --------------------------------------------------------------------------


class PhraseCache:
    """An LRU-bounded directory of WAV entries keyed by ``cache_key``; safe across threads and processes."""

    def __init__(
        self,
        directory: Union[str, Path],
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, float)) or not max_bytes >= 1:
            raise ValueError(f"max_bytes must be a positive number, got {max_bytes!r}")
        self._dir = Path(os.path.abspath(os.path.expanduser(str(directory))))
        self._max_bytes = int(max_bytes)
        self._clock = clock
        self._busy_timeout = float(busy_timeout)
        self._index_path = self._dir / INDEX_NAME
        self._tmp_dir = self._dir / TMP_DIR
        try:
            _make_private_dir(self._dir)
            _make_private_dir(self._tmp_dir)
        except OSError as exc:
            raise CacheError(f"cannot use {self._dir} as the phrase cache: {_describe(exc)}") from exc

        # _lock serialises the sqlite connection (used by the daemon's reader and writer
        # threads); _state_lock guards the small flags below and is never held while
        # waiting for sqlite, so a writer on the audio path never stalls on the index.
        self._lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._conn_id: Optional[Tuple[int, int]] = None
        self._closed = False
        self._index_down = False
        self._index_retry_at = 0.0
        self._write_disabled = False
        self._too_large_logged = False
        self._unindexed = False  # a commit could not reach the index
        self._pending = {"hits": 0, "misses": 0}  # counted while the index was unavailable

        self._remove_stale_tmp()
        self._run(lambda conn: None)  # open (or create, or rebuild) the index now

    # -- properties and lifecycle ---------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def __repr__(self) -> str:
        return f"PhraseCache({str(self._dir)!r}, max_bytes={self._max_bytes})"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> "PhraseCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("the phrase cache is closed")

    # -- public operations ----------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        """Where the entry for key lives (whether or not it exists)."""
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self._dir / key[:2] / f"{key}.wav"

    def lookup(self, key: str) -> Optional[CacheEntry]:
        """The verified entry for key, counting a hit (and refreshing its LRU time), or None and a miss.

        Costs one open and a 44-byte read plus one small index transaction, whatever the
        number of entries. A broken entry file is deleted and reported as a miss.
        """
        self._check_open()
        path = self.entry_path(key)
        entry, problem, st = self._inspect(key, path)
        if entry is not None:
            if self._record(key, entry=entry, st=st):
                return entry
            return None  # evicted by another thread or process since the check: a miss
        if problem is not None:
            if st is not None:
                log.warning("phrase cache entry %s is broken (%s); deleted it", path, problem)
                self._remove_file(path, st)
            else:
                log.warning("phrase cache entry %s is unusable: %s", path, problem)
        self._record(key)
        return None

    def contains(self, key: str) -> bool:
        """Whether a valid entry exists for key; counts neither a hit nor a miss, changes nothing."""
        self._check_open()
        entry, _, _ = self._inspect(key, self.entry_path(key))
        return entry is not None

    def read(self, entry: CacheEntry, chunk_bytes: int = 16384) -> Iterator[bytes]:
        """The PCM samples of entry (without the WAV header) in chunks of whole frames.

        The file is opened and checked now: CacheError when it vanished (evicted by another
        process since the lookup) or changed its format; the caller then synthesizes instead.
        """
        self._check_open()
        if chunk_bytes < 2:
            raise ValueError("chunk_bytes must be at least 2")
        chunk_bytes -= chunk_bytes % 2
        try:
            f = open(entry.path, "rb", buffering=0)
        except OSError as exc:
            raise CacheError(f"cannot read phrase cache entry {entry.key}: {_describe(exc)}") from exc
        try:
            size = os.fstat(f.fileno()).st_size
            problem, rate, data_bytes = _check_header(f.read(HEADER_SIZE), size)
            if problem is None and rate != entry.rate:
                problem = f"rate changed from {entry.rate} to {rate}"
            if problem is not None:
                raise CacheError(f"phrase cache entry {entry.key} is unusable: {problem}")
        except OSError as exc:
            f.close()
            raise CacheError(f"cannot read phrase cache entry {entry.key}: {_describe(exc)}") from exc
        except BaseException:
            f.close()
            raise
        return self._stream(f, data_bytes, chunk_bytes, entry.key)

    @staticmethod
    def _stream(f: Any, remaining: int, chunk_bytes: int, key: str) -> Iterator[bytes]:
        with f:
            while remaining > 0:
                try:
                    block = f.read(min(chunk_bytes, remaining))
                except OSError as exc:
                    raise CacheError(f"cannot read phrase cache entry {key}: {_describe(exc)}") from exc
                if not block:
                    raise CacheError(f"phrase cache entry {key} ended early")
                remaining -= len(block)
                yield block

    def writer(self, key: str, rate: int) -> "CacheWriter":
        """A writer that streams audio for key into a temp file; commit() makes it an entry."""
        self._check_open()
        self.entry_path(key)
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"sample rate must be an integer in {MIN_RATE}..{MAX_RATE}, got {rate!r}")
        return CacheWriter(self, key, rate)

    def stats(self) -> CacheStats:
        """Entries, bytes, hit/miss counters and the age range; falls back to a file scan without an index."""
        self._check_open()
        self._scan_if_needed()

        def op(conn: sqlite3.Connection) -> CacheStats:
            values = dict(conn.execute("SELECT name, value FROM stats").fetchall())
            oldest, newest = conn.execute("SELECT MIN(created), MAX(created) FROM entries").fetchone()
            with self._state_lock:
                hits, misses = self._pending["hits"], self._pending["misses"]
            return CacheStats(entries=values.get("entries", 0), bytes=values.get("bytes", 0),
                              hits=values.get("hits", 0) + hits, misses=values.get("misses", 0) + misses,
                              oldest=oldest, newest=newest, max_bytes=self._max_bytes, dir=self._dir)

        result = self._run(op)
        if result is not None:
            return result
        files = self._scan_files()
        times = [mtime for _, _, mtime in files.values()]
        with self._state_lock:
            hits, misses = self._pending["hits"], self._pending["misses"]
        return CacheStats(entries=len(files), bytes=sum(size for _, size, _ in files.values()),
                          hits=hits, misses=misses, oldest=min(times) if times else None,
                          newest=max(times) if times else None, max_bytes=self._max_bytes, dir=self._dir)

    def clear(self) -> int:
        """Remove every entry; the number of entry files removed. Hit/miss counters stay."""
        self._check_open()
        removed = 0

        def unlink_all() -> None:
            nonlocal removed
            for path, _, _ in self._scan_files().values():
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove phrase cache entry %s: %s", path, _describe(exc))

        def op(conn: sqlite3.Connection) -> bool:
            # Under the write lock, so a concurrent commit either lands before (and is
            # removed) or indexes its file after (and stays, file and row).
            with _Transaction(conn):
                unlink_all()
                conn.execute("DELETE FROM entries")
                for sql in _RECOUNT:
                    conn.execute(sql)
                conn.execute("UPDATE stats SET value = 0 WHERE name = 'needs_scan'")
            return True

        if not self._run(op, default=False):
            unlink_all()  # without the index: the files at least
        return removed

    def prune(self) -> Tuple[int, int]:
        """Evict down to max_bytes, drop stale temp files, reconcile index and files.

        Files without index rows are adopted (or deleted when broken), rows without files
        dropped. Returns (entries removed, bytes freed); freed bytes include stale temp files.
        """
        self._check_open()
        _, _, freed = self._remove_stale_tmp()
        _, broken, broken_bytes = self._reconcile(check_all=False)
        evicted, evicted_bytes = self._run(lambda conn: self._evict(conn, keep=None), default=(0, 0))
        return len(broken) + evicted, freed + broken_bytes + evicted_bytes

    def verify(self) -> Tuple[int, List[str]]:
        """Check every entry file, delete the broken ones; (files checked, sorted removed keys)."""
        self._check_open()
        checked, broken, _ = self._reconcile(check_all=True)
        return checked, sorted(broken)

    # -- internals: files -----------------------------------------------------------------

    def _inspect(self, key: str, path: Path) -> Tuple[Optional[CacheEntry], Optional[str], Optional[os.stat_result]]:
        """(entry, None, stat) when valid; (None, None, None) when absent; (None, problem, stat) when
        broken (delete it); (None, problem, None) when unusable but not ours to delete."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return None, None, None
        except OSError as exc:
            return None, f"cannot open: {_describe(exc)}", None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file", None
            head = os.read(fd, HEADER_SIZE)
        except OSError as exc:
            return None, f"cannot read: {_describe(exc)}", None
        finally:
            os.close(fd)
        problem, rate, data_bytes = _check_header(head, st.st_size)
        if problem is not None:
            return None, problem, st
        return CacheEntry(key=key, path=path, rate=rate, frames=data_bytes // 2, size=st.st_size), None, st

    def _remove_file(self, path: Path, st: Optional[os.stat_result]) -> bool:
        """Unlink path unless it was replaced since st was taken (a fresh entry by another writer)."""
        try:
            current = os.stat(path)
            if st is not None and (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
                return False
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot remove phrase cache entry %s: %s", path, _describe(exc))
            return False

    def _scan_files(self) -> Dict[str, Tuple[Path, int, float]]:
        """Every entry file on disk: key -> (path, size, mtime). Maintenance only: O(entries)."""
        found: Dict[str, Tuple[Path, int, float]] = {}
        try:
            top = os.scandir(self._dir)
        except OSError as exc:
            log.warning("cannot list phrase cache %s: %s", self._dir, _describe(exc))
            return found
        with top:
            subdirs = [d.path for d in top if _HEX2_RE.match(d.name) and d.is_dir(follow_symlinks=False)]
        for sub in sorted(subdirs):
            prefix = os.path.basename(sub)
            try:
                it = os.scandir(sub)
            except OSError as exc:
                log.warning("cannot list %s: %s", sub, _describe(exc))
                continue
            with it:
                for f in it:
                    key = f.name[:-4]
                    if not (f.name.endswith(".wav") and key.startswith(prefix) and _KEY_RE.match(key)):
                        continue
                    try:
                        st = f.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found[key] = (Path(f.path), st.st_size, st.st_mtime)
        return found

    def _remove_stale_tmp(self) -> Tuple[int, int, int]:
        """Delete temp files older than STALE_TMP_SECONDS (left by a crash): (removed, kept, bytes)."""
        removed = kept = freed = 0
        now = time.time()  # compared with file mtimes, so the real clock
        try:
            it = os.scandir(self._tmp_dir)
        except OSError:
            return 0, 0, 0
        with it:
            for f in it:
                try:
                    st = f.stat(follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    if now - st.st_mtime <= STALE_TMP_SECONDS:
                        kept += 1
                        continue
                    os.unlink(f.path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("cannot remove stale temp file %s: %s", f.path, _describe(exc))
                    continue
                removed += 1
                freed += st.st_size
                log.info("removed stale phrase cache temp file %s (%d bytes, left by a crash)", f.path, st.st_size)
        return removed, kept, freed

    def _open_temp(self) -> Tuple[str, int]:
        try:
            os.mkdir(self._tmp_dir, 0o700)
        except FileExistsError:
            pass
        name = os.path.join(self._tmp_dir, f"{os.getpid()}-{secrets.token_hex(8)}.tmp")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        return name, fd

    def _install(self, tmp: str, key: str) -> Path:
        """Move a complete, fsynced temp file to its entry name and make the rename durable."""
        final = self.entry_path(key)
        sub = final.parent
        try:
            os.mkdir(sub, 0o700)
        except FileExistsError:
            pass
        else:
            _fsync_dir(self._dir)
        os.replace(tmp, final)
        _fsync_dir(sub)
        return final

    # -- internals: the index -------------------------------------------------------------

    def _run(self, op: Callable[[sqlite3.Connection], Any], default: Any = None) -> Any:
        """op(connection) under the lock. Any sqlite failure is logged (once per episode) and
        answered with default: the cache keeps working from its files. A corrupt index is
        moved aside and rebuilt."""
        with self._lock:
            if self._closed:
                return default
            if time.monotonic() < self._index_retry_at:
                return default
            for attempt in (1, 2):
                try:
                    result = op(self._connection())
                except sqlite3.DatabaseError as exc:
                    if attempt == 1 and _is_corrupt(exc) and self._quarantine(exc):
                        continue
                    self._index_failed(exc)
                    return default
                self._index_ok()
                return result
        return default  # pragma: no cover - the loop always returns

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            try:
                st = os.stat(self._index_path)
                same = (st.st_dev, st.st_ino) == self._conn_id
            except OSError:
                same = False
            if not same:  # moved aside or deleted by another process: follow the new file
                self._drop_connection()
                conn = None
        if conn is None:
            conn = self._connect()
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self._index_path), timeout=self._busy_timeout,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                with _Transaction(conn):
                    if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                        for sql in _SCHEMA:
                            conn.execute(sql)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise _IndexMismatch(f"index schema version {version}, expected {SCHEMA_VERSION}")
            st = os.stat(self._index_path)
        except OSError as exc:
            conn.close()
            raise sqlite3.OperationalError(f"cannot stat the index: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        try:
            os.chmod(self._index_path, 0o600)
        except OSError:
            pass
        self._conn, self._conn_id = conn, (st.st_dev, st.st_ino)
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn, self._conn_id = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _quarantine(self, exc: BaseException) -> bool:
        """Move an unusable index (and its -wal/-shm) aside so a fresh one is built; False if impossible."""
        failed_id = self._conn_id
        self._drop_connection()
        path = str(self._index_path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return True  # someone else already moved it: just reconnect
        except OSError as e:
            log.warning("phrase cache index %s is unusable (%s) and cannot be examined: %s", path, exc, e)
            return False
        if failed_id is not None and (st.st_dev, st.st_ino) != failed_id:
            return True  # another process already replaced it with a fresh index
        aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return True
        except OSError as e:
            log.warning("phrase cache index %s is unusable (%s) and cannot be moved aside: %s", path, exc, e)
            return False
        for suffix in ("-wal", "-shm", "-journal"):
            try:
                os.replace(path + suffix, aside + suffix)
            except OSError:
                pass
        log.warning("phrase cache index %s is unusable (%s); moved it to %s and rebuilding it from the entries",
                    path, exc, aside)
        return True

    def _index_failed(self, exc: BaseException) -> None:
        self._drop_connection()
        self._index_retry_at = time.monotonic() + INDEX_RETRY_SECONDS
        with self._state_lock:
            first, self._index_down = not self._index_down, True
        if first:
            log.warning("phrase cache index %s unavailable, working without it for now: %s", self._index_path, exc)
        else:
            log.debug("phrase cache index still unavailable: %s", exc)

    def _index_ok(self) -> None:
        if self._index_down:
            with self._state_lock:
                was, self._index_down = self._index_down, False
            if was:
                log.info("phrase cache index %s available again", self._index_path)

    def _record(self, key: str, *, entry: Optional[CacheEntry] = None,
                st: Optional[os.stat_result] = None) -> bool:
        """Count a hit on entry (refresh its LRU time, adopt a file the index lacks) or, without
        entry, a miss (dropping a row whose file is gone). Returns False when the hit turned
        into a miss: the file was evicted between the check and the bookkeeping."""
        path = self.entry_path(key)

        def op(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            with self._state_lock:
                pending = dict(self._pending)
            hit = entry is not None
            # Everything below runs under sqlite's write lock. Commits install their file before
            # inserting its row and evictions unlink the file before deleting the row, both
            # inside one transaction, so what we see of the file here agrees with the index.
            with _Transaction(conn):
                if entry is not None:
                    cur = conn.execute("UPDATE entries SET last_used = ?, hits = hits + 1 WHERE key = ?",
                                       (now, key))
                    if cur.rowcount == 0:
                        try:
                            now_st: Optional[os.stat_result] = os.stat(path)
                        except OSError:
                            now_st = None
                        if now_st is None:
                            hit = False  # evicted meanwhile: report a miss
                        elif st is not None and (now_st.st_dev, now_st.st_ino) == (st.st_dev, st.st_ino):
                            # the index lost this entry (or never had it): adopt the file
                            conn.execute("INSERT INTO entries (key, size, rate, frames, created, last_used, hits) "
                                         "VALUES (?, ?, ?, ?, ?, ?, 1)",
                                         (key, entry.size, entry.rate, entry.frames, st.st_mtime, now))
                        # else: replaced by a commit that is about to insert its own row
                elif not os.path.exists(path):
                    conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                extra = {"hits": pending["hits"], "misses": pending["misses"]}
                extra["hits" if hit else "misses"] += 1
                for counter, n in extra.items():
                    if n:
                        conn.execute("UPDATE stats SET value = value + ? WHERE name = ?", (n, counter))
            with self._state_lock:
                for counter in ("hits", "misses"):
                    self._pending[counter] -= pending[counter]
            return hit

        result = self._run(op)
        if result is None:  # index unavailable: count in memory, trust the file check
            with self._state_lock:
                self._pending["hits" if entry is not None else "misses"] += 1
            return entry is not None
        return result

    def _evict(self, conn: sqlite3.Connection, keep: Optional[str]) -> Tuple[int, int]:
        """Delete least recently used entries (file, then row) while the total exceeds max_bytes.

        Works in small transactions so another process never waits long for the index.
        """
        count = freed = 0
        stuck = False
        while not stuck:
            with _Transaction(conn):
                total = conn.execute("SELECT value FROM stats WHERE name = 'bytes'").fetchone()[0]
                if total <= self._max_bytes:
                    break
                rows = conn.execute("SELECT key, size FROM entries WHERE key != ? "
                                    "ORDER BY last_used, created LIMIT 64", (keep or "",)).fetchall()
                if not rows:
                    break
                for key, size in rows:
                    try:
                        os.unlink(self.entry_path(key))
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.warning("cannot evict phrase cache entry %s: %s", key, _describe(exc))
                        stuck = True
                        break
                    conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                    count += 1
                    freed += size
                    total -= size
                    if total <= self._max_bytes:
                        break
        if count:
            log.debug("evicted %d phrase cache entries (%d bytes)", count, freed)
        return count, freed

    def _scan_if_needed(self) -> None:
        needs = self._run(lambda conn: conn.execute(
            "SELECT value FROM stats WHERE name = 'needs_scan'").fetchone()[0], default=0)
        if needs:
            self._reconcile(check_all=False)

    def _reconcile(self, *, check_all: bool) -> Tuple[int, List[str], int]:
        """Bring index and files together; (files checked, keys of broken files deleted, their bytes).

        Reads the rows first, then lists the files, so an entry committed meanwhile by another
        process is at worst adopted twice (harmless) and never dropped.
        """
        rows: Optional[Dict[str, int]] = self._run(
            lambda conn: dict(conn.execute("SELECT key, size FROM entries").fetchall()))
        files = self._scan_files()
        checked = freed = 0
        broken: List[str] = []
        adopt: List[Tuple[Any, ...]] = []
        update: List[Tuple[Any, ...]] = []
        for key, (path, size, mtime) in files.items():
            known = rows.get(key) if rows is not None else None
            if not check_all and known == size:
                continue
            checked += 1
            entry, problem, st = self._inspect(key, path)
            if entry is None:
                if problem is not None and st is not None:
                    log.warning("phrase cache entry %s is broken (%s); deleted it", path, problem)
                    if self._remove_file(path, st):
                        broken.append(key)
                        freed += size
                continue
            if known is None:
                adopt.append((key, entry.size, entry.rate, entry.frames, mtime, mtime))
            elif known != entry.size:
                update.append((entry.size, entry.rate, entry.frames, key))
        if rows is None:
            return checked, broken, freed
        missing = [k for k in rows if k not in files]
        gone: List[str] = []

        def op(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                # re-checked under the write lock, like in _record()
                gone[:] = [k for k in missing if not os.path.exists(self.entry_path(k))]
                drop = [(k,) for k in broken + gone if not os.path.exists(self.entry_path(k))]
                conn.executemany("DELETE FROM entries WHERE key = ?", drop)
                conn.executemany("INSERT OR IGNORE INTO entries (key, size, rate, frames, created, last_used, hits) "
                                 "VALUES (?, ?, ?, ?, ?, ?, 0)",
                                 [row for row in adopt if os.path.exists(self.entry_path(row[0]))])
                conn.executemany("UPDATE entries SET size = ?, rate = ?, frames = ? WHERE key = ?", update)
                for sql in _RECOUNT:
                    conn.execute(sql)
                conn.execute("UPDATE stats SET value = 0 WHERE name = 'needs_scan'")

        self._run(op)
        if adopt or gone:
            log.info("phrase cache index: adopted %d entry files, dropped %d rows without files", len(adopt), len(gone))
        return checked, broken, freed

    def _committed(self, entry: CacheEntry) -> bool:
        """Index a freshly installed entry, adopt lost files once if needed, then evict LRU entries.

        False only when the entry vanished before it could be indexed."""
        now = self._clock()

        def op(conn: sqlite3.Connection) -> int:
            with _Transaction(conn):
                if not os.path.exists(entry.path):
                    return -1  # evicted by another process right after the rename (re-written key)
                conn.execute(_UPSERT, (entry.key, entry.size, entry.rate, entry.frames, now, now))
                return conn.execute("SELECT value FROM stats WHERE name = 'needs_scan'").fetchone()[0]

        needs_scan = self._run(op)
        if needs_scan == -1:
            return False
        if needs_scan is None:
            # Index unavailable (logged): the file is stored but uncounted; adopt such files
            # at the next commit that reaches the index, so the size bound still holds.
            self._unindexed = True
            return True
        if needs_scan or self._unindexed:
            self._unindexed = False
            self._reconcile(check_all=False)
        self._run(lambda conn: self._evict(conn, keep=entry.key), default=(0, 0))
        return True

    def _bulk_add(self, items: Iterable[Tuple[str, int, bytes]]) -> int:
        """Internal, for benchmarks and tests only: store many (key, rate, pcm) entries fast.

        No fsync and one index transaction for all of them, so it is NOT crash safe; entries
        still appear by rename of complete files. No eviction. Returns the number stored.
        """
        self._check_open()
        rows = []
        now = self._clock()
        for key, rate, pcm in items:
            if not pcm or len(pcm) % 2:
                raise ValueError(f"{key}: audio must be a non-empty whole number of frames")
            tmp, fd = self._open_temp()
            try:
                os.write(fd, _wav_header(rate, len(pcm)) + bytes(pcm))
            finally:
                os.close(fd)
            final = self.entry_path(key)
            os.makedirs(final.parent, mode=0o700, exist_ok=True)
            os.replace(tmp, final)
            rows.append((key, HEADER_SIZE + len(pcm), rate, len(pcm) // 2, now, now))

        def op(conn: sqlite3.Connection) -> None:
            with _Transaction(conn):
                conn.executemany(_UPSERT, rows)

        if self._run(op, default=False) is False:
            raise CacheError("the index is unavailable")
        return len(rows)

    # -- internals: writer support --------------------------------------------------------

    @property
    def _max_data(self) -> int:
        return self._max_bytes - HEADER_SIZE

    def _write_failed(self, reason: str) -> None:
        with self._state_lock:
            first, self._write_disabled = not self._write_disabled, True
        if first:
            log.warning("phrase cache disabled for now: %s", reason)
        else:
            log.debug("phrase cache still disabled: %s", reason)

    def _write_ok(self) -> None:
        if self._write_disabled:
            with self._state_lock:
                was, self._write_disabled = self._write_disabled, False
            if was:
                log.info("phrase cache writable again")

    def _too_large(self, key: str, data_bytes: int) -> None:
        with self._state_lock:
            first, self._too_large_logged = not self._too_large_logged, True
        (log.warning if first else log.debug)(
            "not caching %s: %d bytes of audio do not fit in the cache's %d bytes (raise the cache size)",
            key, data_bytes, self._max_bytes)


class CacheWriter:
    """Streams the audio of one phrase into a temp file while it plays; commit() stores it.

    Use as a context manager: leaving the block without commit(), or by an exception,
    aborts (the temp file is removed). An OSError while writing (disk full, read-only,
    permissions) sets ``failed``: further data is dropped, commit() returns None, and the
    cache logs one warning until a later writer succeeds again.
    """

    def __init__(self, cache: PhraseCache, key: str, rate: int) -> None:
        self.cache = cache
        self.key = key
        self.rate = rate
        self.failed = False
        self.bytes_written = 0
        self._too_large = False
        self._done = False
        self._result: Optional[CacheEntry] = None
        self._tmp: Optional[str] = None
        self._fd: Optional[int] = None
        try:
            self._tmp, self._fd = cache._open_temp()
            self._write_all(_wav_header(rate, 0))  # placeholder sizes, patched by commit()
        except OSError as exc:
            self._fail(exc)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._done:
            self.abort()

    def __del__(self) -> None:
        try:
            if not self._done and self._fd is not None:
                self.abort()
        except Exception:
            pass

    def _write_all(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[n:]

    def write(self, pcm: bytes) -> None:
        """Append PCM s16le mono samples; silently dropped after a failure."""
        if self._done:
            raise CacheError("write() after commit() or abort()")
        if self.failed or self._too_large:
            return
        n = memoryview(pcm).nbytes
        if not n:
            return
        if self.bytes_written + n > self.cache._max_data:
            self._too_large = True  # would not fit even alone: stop filling the disk now
            self._discard()
            return
        try:
            self._write_all(pcm)
        except OSError as exc:
            self._fail(exc)
            return
        self.bytes_written += n

    def commit(self) -> Optional[CacheEntry]:
        """Store the audio as an entry (durably, atomically) and return it; None when not stored.

        Only complete audio must be committed. Refuses empty or odd-length audio, audio larger
        than the whole cache, and anything after a write failure.
        """
        if self._done:
            return self._result
        self._done = True
        if self.failed:
            self._discard()
            return None
        if self._too_large:
            self.cache._too_large(self.key, self.bytes_written)
            return None
        if not self.bytes_written or self.bytes_written % 2:
            (log.warning if self.bytes_written else log.info)(
                "not caching %s: %d bytes is not a whole number of 16-bit frames", self.key, self.bytes_written)
            self._discard()
            return None
        assert self._fd is not None and self._tmp is not None
        try:
            header = _wav_header(self.rate, self.bytes_written)
            if os.pwrite(self._fd, header, 0) != len(header):
                raise OSError(errno.EIO, "short write of the WAV header")
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
            path = self.cache._install(self._tmp, self.key)
        except OSError as exc:
            self._fail(exc)
            return None
        self._tmp = None
        entry = CacheEntry(key=self.key, path=path, rate=self.rate, frames=self.bytes_written // 2,
                           size=HEADER_SIZE + self.bytes_written)
        self.cache._write_ok()
        if not self.cache._committed(entry):
            return None
        self._result = entry
        return entry

    def abort(self) -> None:
        """Forget the audio: the temp file is removed. No effect after a successful commit()."""
        if self._result is not None:
            return
        self._done = True
        self._discard()

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        where = self._tmp
        self._discard()
        self.cache._write_failed(_describe(exc, where))

    def _discard(self) -> None:
        fd, self._fd = self._fd, None
        tmp, self._tmp = self._tmp, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
