"""PhraseCache: entry files plus their index, kept in agreement across threads and processes.

The rules that make the cache safe, enforced in the section "files and rows" below and
nowhere else:

1. A file is installed by an atomic rename of a complete, fsynced temp file, and the
   directory is fsynced, BEFORE its index row exists (``_admit``).
2. A row never points to a missing file: a file is unlinked before its row is deleted
   (``_evict``, ``clear``), and a row is inserted only after checking, under sqlite's write
   lock, that its file exists (``_committed``, ``_record``, ``_reconcile``).
3. Files are the truth, the index only an index: when the two disagree the files win (rows
   without files are dropped, files without rows adopted), and a lost index is rebuilt.

Because both changes happen inside one index transaction, any process that takes the write
lock sees files and rows that agree.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from . import files
from .entry import (ENTRY_HEADER_SIZE, CacheEntry, CacheError, CacheStats, VerifyReport, check_key, check_rate,
                    entry_header)
from .files import describe
from .index import INDEX_NAME, CacheIndex, Row, Rows
from .writer import CacheWriter, WriteHealth

# one logger for the whole cache, the name it always had
log = logging.getLogger("coze_speaker.cache")

__all__ = ["PhraseCache"]


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
        self._tmp_dir = self._dir / files.TMP_DIR
        try:
            files.make_private_dir(self._dir)
            files.make_private_dir(self._tmp_dir)
        except OSError as exc:
            raise CacheError(f"cannot use {self._dir} as the phrase cache: {describe(exc)}") from exc

        # the index re-creates the directory when it was deleted while in use
        self._index = CacheIndex(self._dir / INDEX_NAME, busy_timeout=busy_timeout,
                                 restore_dir=lambda: files.restore_dir(self._dir))
        # guards the small state below; never held while waiting for sqlite, so a writer on
        # the audio path never stalls on the index
        self._state_lock = threading.Lock()
        self._closed = False
        self._unindexed = False  # a commit could not reach the index
        self._pending = {"hits": 0, "misses": 0}  # counted while the index was unavailable
        self._writes = WriteHealth(self._max_bytes)

        files.remove_stale_tmp(self._tmp_dir)
        self._index.run(lambda rows: None)  # open (or create, or rebuild) the index now

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
        self._closed = True
        self._index.close()

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
        return files.entry_path(self._dir, check_key(key))

    def lookup(self, key: str, *, count: bool = True) -> Optional[CacheEntry]:
        """The verified entry for key, counting a hit (and refreshing its LRU time), or None and a miss.

        Verified means its header matches the file size and its samples their crc32, so a
        damaged entry never plays: it is deleted and reported as a miss (synthesized again).
        Costs one read of the entry (its crc32 runs at memory speed, ~1 ms for 30 s of 48 kHz
        audio, and leaves the file in the page cache for the play) plus one small index
        transaction, whatever the number of entries. With count=False nothing is counted: the
        caller counts the hit with `count_hit` once its first sound is out (the index
        transaction stays off that path) and leaves a miss to whoever produces the audio.
        """
        self._check_open()
        path = self.entry_path(key)
        entry, problem, st = files.inspect_entry(key, path, verify=True)
        if entry is not None:
            if not count or self._record(key, entry=entry, st=st):
                return entry
            return None  # evicted by another thread or process since the check: a miss
        if problem is not None:
            if st is not None:
                log.warning("phrase cache entry %s is broken (%s); deleted it", path, problem)
                files.remove_if_unchanged(path, st)
            else:
                log.warning("phrase cache entry %s is unusable: %s", path, problem)
        if count:
            self._record(key)
        return None

    def count_hit(self, entry: CacheEntry) -> None:
        """Count a hit on an entry found with lookup(count=False) and refresh its LRU time."""
        try:
            st: Optional[os.stat_result] = os.stat(entry.path)
        except OSError:
            st = None  # evicted since: it was played all the same, and counts as a hit
        self._record(entry.key, entry=entry, st=st)

    def contains(self, key: str) -> bool:
        """Whether a valid entry exists for key by its header (cheap: the checksum is left to
        ``lookup``); counts neither a hit nor a miss, changes nothing."""
        self._check_open()
        entry, _, _ = files.inspect_entry(key, self.entry_path(key))
        return entry is not None

    def read(self, entry: CacheEntry, chunk_bytes: int = 16384) -> Iterator[bytes]:
        """The PCM samples of entry (without the WAV header) in chunks of whole frames.

        The file is opened and checked now: CacheError when it vanished (evicted by another
        process since the lookup) or changed its format; the caller then synthesizes instead.
        """
        self._check_open()
        if chunk_bytes < 2:
            raise ValueError("chunk_bytes must be at least 2")
        return files.read_samples(entry, chunk_bytes - chunk_bytes % 2)

    def writer(self, key: str, rate: int) -> CacheWriter:
        """A writer that streams audio for key into a temp file; commit() makes it an entry."""
        self._check_open()
        self.entry_path(key)
        check_rate(rate)
        return CacheWriter(self, key, rate)

    def stats(self) -> CacheStats:
        """Entries, bytes, hit/miss counters and the age range; falls back to a file scan without an index."""
        self._check_open()
        self._scan_if_needed()

        def op(rows: Rows) -> CacheStats:
            values = rows.counters()
            oldest, newest = rows.created_range()
            hits, misses = self._pending_counts()
            return CacheStats(entries=values.get("entries", 0), bytes=values.get("bytes", 0),
                              hits=values.get("hits", 0) + hits, misses=values.get("misses", 0) + misses,
                              oldest=oldest, newest=newest, max_bytes=self._max_bytes, dir=self._dir)

        result: Optional[CacheStats] = self._index.run(op)
        if result is not None:
            return result
        found = files.scan_entry_files(self._dir)
        times = [mtime for _, _, mtime in found.values()]
        hits, misses = self._pending_counts()
        return CacheStats(entries=len(found), bytes=sum(size for _, size, _ in found.values()),
                          hits=hits, misses=misses, oldest=min(times) if times else None,
                          newest=max(times) if times else None, max_bytes=self._max_bytes, dir=self._dir)

    def prune(self) -> Tuple[int, int]:
        """Evict down to max_bytes, drop stale temp files, reconcile index and files.

        Files without index rows are adopted (or deleted when broken), rows without files
        dropped. Returns (entries removed, bytes freed); freed bytes include stale temp files.
        """
        self._check_open()
        _, _, freed = files.remove_stale_tmp(self._tmp_dir)
        _, broken, broken_bytes, _ = self._reconcile(check_all=False)
        evicted, evicted_bytes = self._index.run(lambda rows: self._evict(rows, keep=None), default=(0, 0))
        return len(broken) + evicted, freed + broken_bytes + evicted_bytes

    def verify(self) -> VerifyReport:
        """Check every entry file (header and checksum), delete the broken ones; (files checked,
        sorted removed keys, entries written before checksums, whose header alone was checked)."""
        self._check_open()
        checked, broken, _, legacy = self._reconcile(check_all=True)
        return VerifyReport(checked, sorted(broken), legacy)

    def _pending_counts(self) -> Tuple[int, int]:
        with self._state_lock:
            return self._pending["hits"], self._pending["misses"]

    def _scan_if_needed(self) -> None:
        if self._index.run(lambda rows: rows.counter("needs_scan"), default=0):
            self._reconcile(check_all=False)

    # -- files and rows: the one place that orders them -------------------------------------

    def _open_temp(self) -> Tuple[str, int]:
        """A temp file in tmp/ for a writer to stream into: (path, fd)."""
        return files.open_temp(self._tmp_dir)

    def _admit(self, tmp: str, entry: CacheEntry) -> bool:
        """Make a complete, fsynced temp file the entry, then index it (rule 1).

        OSError when the file could not be installed (nothing changed). False when the file
        was installed but evicted by another process before its row could be written.
        """
        # durable: a row may only ever describe a file that survives a power cut (rule 1)
        files.install(tmp, entry.path, self._dir, durable=True)
        self._writes.ok()
        return self._committed(entry)

    def _committed(self, entry: CacheEntry) -> bool:
        """Index a freshly installed entry, adopt lost files once if needed, then evict LRU entries.

        False only when the entry vanished before it could be indexed."""
        now = self._clock()

        def op(rows: Rows) -> int:
            with rows.transaction():
                if not os.path.exists(entry.path):
                    return -1  # evicted by another process right after the rename (re-written key)
                rows.upsert([(entry.key, entry.size, entry.rate, entry.frames, now, now)])
                return rows.counter("needs_scan")

        needs_scan = self._index.run(op)
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
        self._index.run(lambda rows: self._evict(rows, keep=entry.key), default=(0, 0))
        return True

    def _record(self, key: str, *, entry: Optional[CacheEntry] = None,
                st: Optional[os.stat_result] = None) -> bool:
        """Count a hit on entry (refresh its LRU time, adopt a file the index lacks) or, without
        entry, a miss (dropping a row whose file is gone). Returns False when the hit turned
        into a miss: the file was evicted between the check and the bookkeeping."""
        path = self.entry_path(key)

        def op(rows: Rows) -> bool:
            now = self._clock()
            with self._state_lock:
                pending = dict(self._pending)
            hit = entry is not None
            # Under sqlite's write lock what we see of the file agrees with the index (rules 1, 2).
            with rows.transaction():
                if entry is not None:
                    if not rows.touch(key, now):
                        try:
                            now_st: Optional[os.stat_result] = os.stat(path)
                        except OSError:
                            now_st = None
                        if now_st is None:
                            hit = False  # evicted meanwhile: report a miss
                        elif st is not None and files.same_file(now_st, st):
                            # the index lost this entry (or never had it): adopt the file
                            rows.adopt([(key, entry.size, entry.rate, entry.frames, st.st_mtime, now)], hits=1)
                        # else: replaced by a commit that is about to insert its own row
                elif not os.path.exists(path):
                    rows.delete([key])
                extra = {"hits": pending["hits"], "misses": pending["misses"]}
                extra["hits" if hit else "misses"] += 1
                rows.add_to_counters(extra)
            with self._state_lock:
                for counter in ("hits", "misses"):
                    self._pending[counter] -= pending[counter]
            return hit

        result: Optional[bool] = self._index.run(op)
        if result is None:  # index unavailable: count in memory, trust the file check
            with self._state_lock:
                self._pending["hits" if entry is not None else "misses"] += 1
            return entry is not None
        return result

    def _evict(self, rows: Rows, keep: Optional[str]) -> Tuple[int, int]:
        """Delete least recently used entries (file, then row) while the total exceeds max_bytes.

        Works in small transactions so another process never waits long for the index.
        """
        count = freed = 0
        stuck = False
        while not stuck:
            with rows.transaction():
                total = rows.counter("bytes")
                if total <= self._max_bytes:
                    break
                batch = rows.least_recently_used(keep)
                if not batch:
                    break
                for key, size in batch:
                    try:
                        os.unlink(self.entry_path(key))
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.warning("cannot evict phrase cache entry %s: %s", key, describe(exc))
                        stuck = True
                        break
                    rows.delete([key])
                    count += 1
                    freed += size
                    total -= size
                    if total <= self._max_bytes:
                        break
        if count:
            log.debug("evicted %d phrase cache entries (%d bytes)", count, freed)
        return count, freed

    def _reconcile(self, *, check_all: bool) -> Tuple[int, List[str], int, int]:
        """Bring index and files together (rule 3); (files checked, keys of broken files deleted,
        their bytes, entries without a checksum). check_all reads every file and checks its
        checksum too; otherwise only files the index lacks (or has another size for) get their
        header checked.

        Reads the rows first, then lists the files, so an entry committed meanwhile by another
        process is at worst adopted twice (harmless) and never dropped.
        """
        known_sizes: Optional[Dict[str, int]] = self._index.run(lambda rows: rows.sizes())
        found = files.scan_entry_files(self._dir)
        checked = freed = legacy = 0
        broken: List[str] = []
        adopt: List[Row] = []
        update: List[Tuple[int, int, int, str]] = []
        for key, (path, size, mtime) in found.items():
            known = known_sizes.get(key) if known_sizes is not None else None
            if not check_all and known == size:
                continue
            checked += 1
            entry, problem, st = files.inspect_entry(key, path, verify=check_all)
            if entry is None:
                if problem is not None and st is not None:
                    log.warning("phrase cache entry %s is broken (%s); deleted it", path, problem)
                    if files.remove_if_unchanged(path, st):
                        broken.append(key)
                        freed += size
                continue
            if entry.crc is None:
                legacy += 1
            if known is None:
                adopt.append((key, entry.size, entry.rate, entry.frames, mtime, mtime))
            elif known != entry.size:
                update.append((entry.size, entry.rate, entry.frames, key))
        if known_sizes is None:
            return checked, broken, freed, legacy
        missing = [k for k in known_sizes if k not in found]
        gone: List[str] = []

        def exists(key: str) -> bool:
            return os.path.exists(self.entry_path(key))

        def op(rows: Rows) -> None:
            with rows.transaction():
                # re-checked under the write lock, like in _record()
                gone[:] = [k for k in missing if not exists(k)]
                rows.delete([k for k in broken + gone if not exists(k)])
                rows.adopt([row for row in adopt if exists(row[0])])
                rows.update_format(update)
                rows.mark_reconciled()

        self._index.run(op)
        if adopt or gone:
            log.info("phrase cache index: adopted %d entry files, dropped %d rows without files", len(adopt), len(gone))
        return checked, broken, freed, legacy

    def clear(self) -> int:
        """Remove every entry; the number of entry files removed. Hit/miss counters stay."""
        self._check_open()
        removed = 0

        def unlink_all() -> None:
            nonlocal removed
            for path, _, _ in files.scan_entry_files(self._dir).values():
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove phrase cache entry %s: %s", path, describe(exc))

        def op(rows: Rows) -> bool:
            # Under the write lock, so a concurrent commit either lands before (and is
            # removed) or indexes its file after (and stays, file and row).
            with rows.transaction():
                unlink_all()
                rows.delete_all()
                rows.mark_reconciled()
            return True

        if not self._index.run(op, default=False):
            unlink_all()  # without the index: the files at least
        return removed

    def _bulk_add(self, items: Iterable[Tuple[str, int, bytes]]) -> int:
        """Internal, for benchmarks and tests only: store many (key, rate, pcm) entries fast.

        No fsync and one index transaction for all of them, so it is NOT crash safe; entries
        still appear by rename of complete files (file before row). No eviction. Returns the
        number stored.
        """
        self._check_open()
        batch: List[Row] = []
        now = self._clock()
        for key, rate, pcm in items:
            if not pcm or len(pcm) % 2:
                raise ValueError(f"{key}: audio must be a non-empty whole number of frames")
            tmp, fd = files.open_temp(self._tmp_dir)
            try:
                os.write(fd, entry_header(rate, len(pcm), zlib.crc32(pcm)) + bytes(pcm))
            finally:
                os.close(fd)
            # not durable: bulk filling for benchmarks and tests, speed over crash safety
            files.install(tmp, self.entry_path(key), self._dir, durable=False)
            batch.append((key, ENTRY_HEADER_SIZE + len(pcm), rate, len(pcm) // 2, now, now))

        def op(rows: Rows) -> None:
            with rows.transaction():
                rows.upsert(batch)

        if self._index.run(op, default=False) is False:
            raise CacheError("the index is unavailable")
        return len(batch)
