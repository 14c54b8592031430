"""The phrase cache: synthesized speech kept on disk, so a phrase is paid for only once.

Layout of the cache directory (mode 0700)::

    index.sqlite3     LRU bookkeeping and the hit/miss counters (WAL mode). Only an index:
                      the entry files are the truth, a lost or corrupt index is rebuilt
                      from them (lookups adopt files, a full scan runs once when needed).
    tmp/              files being written; a crash leaves them here, removed after an hour
    ab/abcd….wav      one entry per key (sha256 hex): a standard WAV file, PCM s16le mono,
                      so ``aplay`` plays it, with the crc32 of its samples in a chunk of
                      its header

An entry name only ever appears through ``os.replace`` of a complete, fsynced file, so a
SIGKILL or a power cut in the middle of a write cannot leave truncated audio under a final
name; ``lookup`` also checks the header against the file size and the samples against their
checksum before trusting an entry, so damage that kept the size never plays either.

The directory is created again when it is deleted while in use (by the index when it
reconnects, by the next writer's temp file), so caching resumes by itself.

Two processes (the daemon and the CLI) may share a directory: sqlite does the locking,
files appear by atomic rename, eviction unlinks the file and then drops its row (a reader
that already opened the file still reads all of it). Nothing here reads every entry except
the explicit maintenance calls (``prune``, ``verify``, ``clear``) and the one-off rebuild
after the index was lost.

Modules: :mod:`.entry` (keys and the entry file format), :mod:`.files` (the directory on
disk), :mod:`.index` (the sqlite index), :mod:`.store` (:class:`PhraseCache`, the one place
that orders file and index changes) and :mod:`.writer` (:class:`CacheWriter`).

This package knows nothing of MQTT, Coze or audio devices.
"""

from __future__ import annotations

from .entry import ENTRY_HEADER_SIZE, CacheEntry, CacheError, CacheStats, VerifyReport, cache_key
from .store import PhraseCache
from .writer import CacheWriter

# the constants of the former single module, still importable from here
from .entry import HEADER_SIZE, KEY_VERSION, MAX_RATE, MIN_RATE  # noqa: F401
from .files import STALE_TMP_SECONDS, TMP_DIR  # noqa: F401
from .index import INDEX_NAME, INDEX_RETRY_SECONDS, SCHEMA_VERSION  # noqa: F401

__all__ = [
    "CacheEntry",
    "CacheError",
    "CacheStats",
    "CacheWriter",
    "ENTRY_HEADER_SIZE",
    "PhraseCache",
    "VerifyReport",
    "cache_key",
]
