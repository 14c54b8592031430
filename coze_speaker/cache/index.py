"""The cache's sqlite index: LRU times, sizes and hit/miss counters, and nothing more.

Only an index: the entry files are the truth. So every sqlite failure is survivable: a
busy or unwritable index is skipped for a while (the cache works from its files), a corrupt
one is moved aside and rebuilt, and the rows are brought back in line with the files by the
store (:mod:`.store`), which alone decides the order of file and row changes.

Two processes may share it: WAL mode, a busy timeout, and short ``BEGIN IMMEDIATE``
transactions, so the daemon's audio path never waits long for the CLI.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

# one logger for the whole cache, the name it always had
log = logging.getLogger("coze_speaker.cache")

__all__ = ["INDEX_NAME", "INDEX_RETRY_SECONDS", "SCHEMA_VERSION", "CacheIndex", "Rows"]

INDEX_NAME = "index.sqlite3"
SCHEMA_VERSION = 1
#: After the index failed (locked too long, unwritable), work without it for this long
#: before trying again, so a stuck lock costs one busy timeout, not one per lookup.
INDEX_RETRY_SECONDS = 30.0

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

_ADOPT = """INSERT OR IGNORE INTO entries (key, size, rate, frames, created, last_used, hits)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""

_RECOUNT = (
    "UPDATE stats SET value = (SELECT COUNT(*) FROM entries) WHERE name = 'entries'",
    "UPDATE stats SET value = (SELECT IFNULL(SUM(size), 0) FROM entries) WHERE name = 'bytes'",
)

#: A row of the entries table as written: (key, size, rate, frames, created, last_used).
Row = Tuple[str, int, int, int, float, float]


class _IndexMismatch(sqlite3.DatabaseError):
    """The index file has a schema this code does not know."""


def _is_corrupt(exc: BaseException) -> bool:
    """True when an sqlite error means the index file itself is unusable (not just busy)."""
    if isinstance(exc, _IndexMismatch):
        return True
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    if name:
        return bool(name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")))
    return type(exc) is sqlite3.DatabaseError


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


class Rows:
    """The queries of the index on one connection, handed to the operations of ``CacheIndex.run``.

    Named so the store reads as what it does to the rows; changes belong inside
    ``transaction()``, which holds sqlite's write lock until it ends.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def counter(self, name: str) -> int:
        """One value of the stats table: hits, misses, entries, bytes or needs_scan."""
        return int(self.conn.execute("SELECT value FROM stats WHERE name = ?", (name,)).fetchone()[0])

    def counters(self) -> Dict[str, int]:
        return dict(self.conn.execute("SELECT name, value FROM stats").fetchall())

    def add_to_counters(self, amounts: Dict[str, int]) -> None:
        for name, n in amounts.items():
            if n:
                self.conn.execute("UPDATE stats SET value = value + ? WHERE name = ?", (n, name))

    def created_range(self) -> Tuple[Optional[float], Optional[float]]:
        oldest, newest = self.conn.execute("SELECT MIN(created), MAX(created) FROM entries").fetchone()
        return oldest, newest

    def sizes(self) -> Dict[str, int]:
        """key -> size of every row."""
        return dict(self.conn.execute("SELECT key, size FROM entries").fetchall())

    def touch(self, key: str, now: float) -> bool:
        """Count a hit on key's row and make it the most recently used; False without a row."""
        cur = self.conn.execute("UPDATE entries SET last_used = ?, hits = hits + 1 WHERE key = ?", (now, key))
        return cur.rowcount > 0

    def upsert(self, rows: Sequence[Row]) -> None:
        """Insert rows, or replace size, format and times of existing ones (a key re-written)."""
        self.conn.executemany(_UPSERT, rows)

    def adopt(self, rows: Iterable[Row], *, hits: int = 0) -> None:
        """Insert rows for files the index lacks; existing rows win."""
        self.conn.executemany(_ADOPT, [row + (hits,) for row in rows])

    def update_format(self, updates: Sequence[Tuple[int, int, int, str]]) -> None:
        """(size, rate, frames, key) for rows whose file changed size."""
        self.conn.executemany("UPDATE entries SET size = ?, rate = ?, frames = ? WHERE key = ?", updates)

    def delete(self, keys: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])

    def delete_all(self) -> None:
        self.conn.execute("DELETE FROM entries")

    def least_recently_used(self, keep: Optional[str], limit: int = 64) -> List[Tuple[str, int]]:
        """(key, size) of the oldest rows by last use, never keep."""
        return self.conn.execute("SELECT key, size FROM entries WHERE key != ? "
                                 "ORDER BY last_used, created LIMIT ?", (keep or "", limit)).fetchall()

    def mark_reconciled(self) -> None:
        """Recount entries and bytes from the rows and clear needs_scan: rows match the files now."""
        for sql in _RECOUNT:
            self.conn.execute(sql)
        self.conn.execute("UPDATE stats SET value = 0 WHERE name = 'needs_scan'")


class CacheIndex:
    """The sqlite file of a cache directory, opened lazily and kept usable whatever happens to it.

    ``run(op)`` is the only way in: op gets the :class:`Rows` of a live connection; any sqlite
    failure is logged once per episode and answered with a default instead of an exception.
    """

    def __init__(self, path: Path, *, busy_timeout: float,
                 restore_dir: Optional[Callable[[], Any]] = None) -> None:
        self.path = path
        self._busy_timeout = float(busy_timeout)
        # called before (re)connecting: a directory deleted while in use is created again
        self._restore_dir = restore_dir
        # serialises the connection, used by the daemon's reader and writer threads
        self._lock = threading.RLock()
        self._conn: Optional[sqlite3.Connection] = None
        self._conn_id: Optional[Tuple[int, int]] = None
        self._closed = False
        self._down = False
        self._retry_at = 0.0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def run(self, op: Callable[[Rows], Any], default: Any = None) -> Any:
        """op(rows) under the lock. Any sqlite failure is logged (once per episode) and
        answered with default: the cache keeps working from its files. A corrupt index is
        moved aside and rebuilt."""
        with self._lock:
            if self._closed:
                return default
            if time.monotonic() < self._retry_at:
                return default
            for attempt in (1, 2):
                try:
                    result = op(Rows(self._connection()))
                except sqlite3.DatabaseError as exc:
                    if attempt == 1 and _is_corrupt(exc) and self._quarantine(exc):
                        continue
                    self._failed(exc)
                    return default
                self._ok()
                return result
        return default  # pragma: no cover - the loop always returns

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            try:
                st = os.stat(self.path)
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
        if self._restore_dir is not None:
            try:
                self._restore_dir()
            except OSError as exc:
                raise sqlite3.OperationalError(f"cannot create the index's directory: {exc}") from exc
        conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout,
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
            st = os.stat(self.path)
        except OSError as exc:
            conn.close()
            raise sqlite3.OperationalError(f"cannot stat the index: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        try:
            os.chmod(self.path, 0o600)
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
        path = str(self.path)
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

    def _failed(self, exc: BaseException) -> None:
        self._drop_connection()
        self._retry_at = time.monotonic() + INDEX_RETRY_SECONDS
        first, self._down = not self._down, True
        if first:
            log.warning("phrase cache index %s unavailable, working without it for now: %s", self.path, exc)
        else:
            log.debug("phrase cache index still unavailable: %s", exc)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.info("phrase cache index %s available again", self.path)
