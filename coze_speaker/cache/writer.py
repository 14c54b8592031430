"""CacheWriter: one phrase's audio streamed to a temp file while it plays, stored on commit().

A write failure (disk full, read-only, permissions) must never silence the speaker, so it
only turns into "not cached" and one warning per episode (:class:`WriteHealth`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import zlib
from typing import TYPE_CHECKING, Any, Optional

from .entry import ENTRY_HEADER_SIZE, CacheEntry, CacheError, entry_header
from .files import describe

if TYPE_CHECKING:
    from .store import PhraseCache

# one logger for the whole cache, the name it always had
log = logging.getLogger("coze_speaker.cache")

__all__ = ["CacheWriter", "WriteHealth"]


class WriteHealth:
    """Whether a cache's writes work, shared by all its writers, so each problem is logged
    once when it starts and once when it ends instead of once per phrase."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._disabled = False
        self._too_large_logged = False

    @property
    def max_data(self) -> int:
        """The most audio one entry may hold: it must fit in the whole cache with its header."""
        return self.max_bytes - ENTRY_HEADER_SIZE

    def failed(self, reason: str) -> None:
        with self._lock:
            first, self._disabled = not self._disabled, True
        if first:
            log.warning("phrase cache disabled for now: %s", reason)
        else:
            log.debug("phrase cache still disabled: %s", reason)

    def ok(self) -> None:
        if self._disabled:
            with self._lock:
                was, self._disabled = self._disabled, False
            if was:
                log.info("phrase cache writable again")

    def too_large(self, key: str, data_bytes: int) -> None:
        with self._lock:
            first, self._too_large_logged = not self._too_large_logged, True
        (log.warning if first else log.debug)(
            "not caching %s: %d bytes of audio do not fit in the cache's %d bytes (raise the cache size)",
            key, data_bytes, self.max_bytes)


class CacheWriter:
    """Streams the audio of one phrase into a temp file while it plays; commit() stores it.

    Use as a context manager: leaving the block without commit(), or by an exception,
    aborts (the temp file is removed). An OSError while writing (disk full, read-only,
    permissions) sets ``failed``: further data is dropped, commit() returns None, and the
    cache logs one warning until a later writer succeeds again.
    """

    def __init__(self, cache: "PhraseCache", key: str, rate: int) -> None:
        self.cache = cache
        self.key = key
        self.rate = rate
        self.failed = False
        self.bytes_written = 0
        self._crc = 0  # crc32 of the samples so far, stored in the header at commit
        self._too_large = False
        self._done = False
        self._result: Optional[CacheEntry] = None
        self._tmp: Optional[str] = None
        self._fd: Optional[int] = None
        try:
            self._tmp, self._fd = cache._open_temp()
            self._write_all(entry_header(rate, 0))  # placeholder sizes and crc, patched by commit()
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
        assert self._fd is not None
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
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
        if self.bytes_written + n > self.cache._writes.max_data:
            self._too_large = True  # would not fit even alone: stop filling the disk now
            self._discard()
            return
        try:
            self._write_all(pcm)
        except OSError as exc:
            self._fail(exc)
            return
        self._crc = zlib.crc32(pcm, self._crc)
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
            self.cache._writes.too_large(self.key, self.bytes_written)
            return None
        if not self.bytes_written or self.bytes_written % 2:
            (log.warning if self.bytes_written else log.info)(
                "not caching %s: %d bytes is not a whole number of 16-bit frames", self.key, self.bytes_written)
            self._discard()
            return None
        assert self._fd is not None and self._tmp is not None
        entry = CacheEntry(key=self.key, path=self.cache.entry_path(self.key), rate=self.rate,
                           frames=self.bytes_written // 2, size=ENTRY_HEADER_SIZE + self.bytes_written,
                           crc=self._crc)
        try:
            header = entry_header(self.rate, self.bytes_written, self._crc)
            if os.pwrite(self._fd, header, 0) != len(header):
                raise OSError(errno.EIO, "short write of the WAV header")
            os.fsync(self._fd)  # complete on disk before its name can appear
            fd, self._fd = self._fd, None
            os.close(fd)
            stored = self.cache._admit(self._tmp, entry)
        except OSError as exc:
            self._fail(exc)
            return None
        self._tmp = None
        if not stored:
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
        self.cache._writes.failed(describe(exc, where))

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
