"""The cache directory on disk: where entries live, how they appear, how they are checked.

Nothing here touches the index. The order of file and index operations (file first, row
second) is decided in :mod:`.store`; these are the file halves it is built from.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, Optional, Tuple, Union

from ..fsutil import fsync_dir
from .entry import ENTRY_HEADER_SIZE, CacheEntry, CacheError, EntryLayout, check_entry_header, is_key

# one logger for the whole cache, the name it always had
log = logging.getLogger("coze_speaker.cache")

#: Temp files older than this were left by a crash (a phrase is written in seconds).
STALE_TMP_SECONDS = 3600.0
TMP_DIR = "tmp"

_HEX2_RE = re.compile(r"[0-9a-f]{2}\Z")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Read size of a checksum pass: large enough that the reads cost nothing next to the crc.
_VERIFY_BLOCK = 1 << 18

Inspection = Tuple[Optional[CacheEntry], Optional[str], Optional[os.stat_result]]


def describe(exc: OSError, path: Any = None) -> str:
    """An OSError as "reason (file)" for a log line."""
    reason = exc.strerror or str(exc)
    where = exc.filename or path
    return f"{reason} ({where})" if where else reason


def make_private_dir(path: Path) -> bool:
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


def restore_dir(root: Path) -> bool:
    """Create the cache directory again (0700) when it vanished while in use (``rm -rf`` to
    free space, a tmpfs remounted); True when it had to. Without this, every later write
    and the index would fail for good and every repeat would be paid for again."""
    if os.path.isdir(root):
        return False
    created = make_private_dir(root)  # OSError when it cannot be made
    if created:
        log.warning("phrase cache directory %s had vanished (deleted while running?); created it again", root)
    return created


def entry_path(root: Path, key: str) -> Path:
    """root/ab/abcd….wav: 256 subdirectories keep each directory small."""
    return root / key[:2] / f"{key}.wav"


def inspect_entry(key: str, path: Path, *, verify: bool = False) -> Inspection:
    """(entry, None, stat) when valid; (None, None, None) when absent; (None, problem, stat) when
    broken (delete it); (None, problem, None) when unusable but not ours to delete.

    The header against the file size costs one open and a 56-byte read; with verify the
    samples are read too and checked against the entry's crc32 (damage that kept the size).
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        return None, None, None
    except OSError as exc:
        return None, f"cannot open: {describe(exc)}", None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file", None
        head = os.read(fd, ENTRY_HEADER_SIZE)
        problem, layout = check_entry_header(head, st.st_size)
        if problem is None and verify:
            assert layout is not None
            problem = _checksum_problem(fd, layout)
    except OSError as exc:
        return None, f"cannot read: {describe(exc)}", None
    finally:
        os.close(fd)
    if problem is not None:
        return None, problem, st
    assert layout is not None
    return CacheEntry(key=key, path=path, rate=layout.rate, frames=layout.data_bytes // 2, size=st.st_size,
                      crc=layout.crc), None, st


def _checksum_problem(fd: int, layout: EntryLayout) -> Optional[str]:
    """None when the samples match the header's crc32 (or there is none to match)."""
    if layout.crc is None:
        return None  # written before checksums: the header was all there was to check
    crc, remaining, offset = 0, layout.data_bytes, layout.data_offset
    while remaining > 0:
        block = os.pread(fd, min(_VERIFY_BLOCK, remaining), offset)
        if not block:
            return "ended early"
        crc = zlib.crc32(block, crc)
        remaining -= len(block)
        offset += len(block)
    if crc != layout.crc:
        return f"checksum mismatch (header {layout.crc:08x}, samples {crc:08x}): damaged after it was written"
    return None


def read_samples(entry: CacheEntry, chunk_bytes: int) -> Iterator[bytes]:
    """The samples of entry in chunks of chunk_bytes (even); the header is checked right now,
    the checksum as the chunks go by (a last safety net: ``lookup`` checked it already).

    CacheError when the file vanished (evicted by another process) or changed its format.
    """
    try:
        f = open(entry.path, "rb", buffering=0)
    except OSError as exc:
        raise CacheError(f"cannot read phrase cache entry {entry.key}: {describe(exc)}") from exc
    try:
        size = os.fstat(f.fileno()).st_size
        problem, layout = check_entry_header(f.read(ENTRY_HEADER_SIZE), size)
        if layout is not None and layout.rate != entry.rate:
            problem = f"rate changed from {entry.rate} to {layout.rate}"
        if problem is not None:
            raise CacheError(f"phrase cache entry {entry.key} is unusable: {problem}")
        assert layout is not None
        f.seek(layout.data_offset)
    except OSError as exc:
        f.close()
        raise CacheError(f"cannot read phrase cache entry {entry.key}: {describe(exc)}") from exc
    except BaseException:
        f.close()
        raise
    return _stream(f, layout, chunk_bytes, entry.key)


def _stream(f: BinaryIO, layout: EntryLayout, chunk_bytes: int, key: str) -> Iterator[bytes]:
    remaining, crc = layout.data_bytes, 0
    with f:
        while remaining > 0:
            try:
                block = f.read(min(chunk_bytes, remaining))
            except OSError as exc:
                raise CacheError(f"cannot read phrase cache entry {key}: {describe(exc)}") from exc
            if not block:
                raise CacheError(f"phrase cache entry {key} ended early")
            remaining -= len(block)
            if layout.crc is not None:
                crc = zlib.crc32(block, crc)
                if not remaining and crc != layout.crc:
                    raise CacheError(f"phrase cache entry {key} is damaged: checksum mismatch")
            yield block


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of the same file (an entry replaced by a rewrite is another one)."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_if_unchanged(path: Path, st: Optional[os.stat_result]) -> bool:
    """Unlink path unless it was replaced since st was taken (a fresh entry by another writer)."""
    try:
        current = os.stat(path)
        if st is not None and not same_file(current, st):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove phrase cache entry %s: %s", path, describe(exc))
        return False


def scan_entry_files(root: Path) -> Dict[str, Tuple[Path, int, float]]:
    """Every entry file on disk: key -> (path, size, mtime). Maintenance only: O(entries)."""
    found: Dict[str, Tuple[Path, int, float]] = {}
    try:
        top = os.scandir(root)
    except OSError as exc:
        log.warning("cannot list phrase cache %s: %s", root, describe(exc))
        return found
    with top:
        subdirs = [d.path for d in top if _HEX2_RE.match(d.name) and d.is_dir(follow_symlinks=False)]
    for sub in sorted(subdirs):
        prefix = os.path.basename(sub)
        try:
            it = os.scandir(sub)
        except OSError as exc:
            log.warning("cannot list %s: %s", sub, describe(exc))
            continue
        with it:
            for f in it:
                key = f.name[:-4]
                if not (f.name.endswith(".wav") and key.startswith(prefix) and is_key(key)):
                    continue
                try:
                    st = f.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[key] = (Path(f.path), st.st_size, st.st_mtime)
    return found


def remove_stale_tmp(tmp_dir: Path) -> Tuple[int, int, int]:
    """Delete temp files older than STALE_TMP_SECONDS (left by a crash): (removed, kept, bytes)."""
    removed = kept = freed = 0
    now = time.time()  # compared with file mtimes, so the real clock
    try:
        it = os.scandir(tmp_dir)
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
                log.warning("cannot remove stale temp file %s: %s", f.path, describe(exc))
                continue
            removed += 1
            freed += st.st_size
            log.info("removed stale phrase cache temp file %s (%d bytes, left by a crash)", f.path, st.st_size)
    return removed, kept, freed


def open_temp(tmp_dir: Path) -> Tuple[str, int]:
    """A new private temp file in tmp/ for streaming one entry: (path, fd open for writing).

    tmp/ rather than next to the entry, so a crash leaves its debris in one place that
    ``remove_stale_tmp`` cleans up.
    """
    try:
        os.mkdir(tmp_dir, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:  # the cache directory itself is gone
        restore_dir(tmp_dir.parent)
        make_private_dir(tmp_dir)
    name = os.path.join(tmp_dir, f"{os.getpid()}-{secrets.token_hex(8)}.tmp")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
    return name, fd


def install(tmp: Union[str, Path], final: Path, root: Path, *, durable: bool = True) -> None:
    """Rename a complete temp file to its entry name; with durable, fsync the directories too.

    The temp file must already be fsynced (durable) or at least complete: the name only ever
    appears through this rename, so it never shows a partial file.
    """
    sub = final.parent
    try:
        os.mkdir(sub, 0o700)
    except FileExistsError:
        pass
    else:
        if durable:
            fsync_dir(root)  # the new subdirectory's name
    os.replace(tmp, final)
    if durable:
        fsync_dir(sub)  # the entry's name
