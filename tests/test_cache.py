"""Tests for coze_speaker.cache: the on-disk phrase cache (real files, real sqlite, real processes)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import wave
import zlib
from pathlib import Path

import pytest

import coze_speaker.cache as cache_module
from coze_speaker.cache import ENTRY_HEADER_SIZE, CacheEntry, CacheError, PhraseCache, cache_key

ROOT = Path(__file__).resolve().parents[1]
HOST = "api.coze.cn"
PARAMS = {
    "voice_id": "voice_0000",
    "emotion": None,
    "emotion_scale": None,
    "speed": 1.0,
    "loudness_rate": 0,
    "context_texts": None,
    "response_format": "pcm",
    "sample_rate": 24000,
}
BIG = 10**9
LOGGER = "coze_speaker.cache"


def key_for(i: object) -> str:
    return cache_key(HOST, f"phrase {i}", PARAMS)


def pcm(frames: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) % 256 for i in range(frames * 2))


def store(cache: PhraseCache, key: str, data: bytes, rate: int = 24000) -> CacheEntry | None:
    with cache.writer(key, rate) as w:
        half = len(data) // 2
        w.write(data[:half])
        w.write(data[half:])
        return w.commit()


def entry_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("??/*.wav"))


def tmp_files(directory: Path) -> list[Path]:
    return sorted((directory / "tmp").iterdir())


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in sys.path if p])
    return env


def run_child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=child_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def warnings_with(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# -- keys -------------------------------------------------------------------------------


def test_key_depends_on_host_text_and_every_parameter():
    base = cache_key(HOST, "Door open", PARAMS)
    assert base == cache_key(HOST, "Door open", dict(PARAMS))
    assert len(base) == 64 and int(base, 16) >= 0
    assert base != hashlib.sha256("Door open".encode()).hexdigest()

    variants = {
        "voice_id": "voice_0001", "emotion": "happy", "emotion_scale": 4.0, "speed": 1.5,
        "loudness_rate": 10, "context_texts": "whisper", "response_format": "wav", "sample_rate": 16000,
    }
    assert set(variants) == set(PARAMS)
    keys = {base, cache_key("api.coze.com", "Door open", PARAMS), cache_key(HOST, "Door closed", PARAMS)}
    for name, value in variants.items():
        keys.add(cache_key(HOST, "Door open", {**PARAMS, name: value}))
    assert len(keys) == 3 + len(variants)

    # The documented canonical form.
    doc = {"v": 1, "host": HOST, "text": "Tür auf", **PARAMS}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert cache_key(HOST, "Tür auf", {**PARAMS, "speed": 1.5}) != hashlib.sha256(blob.encode()).hexdigest()
    doc["speed"] = 1.5
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert cache_key(HOST, "Tür auf", {**PARAMS, "speed": 1.5}) == hashlib.sha256(blob.encode()).hexdigest()

    # Same audio, same key, however a whole number is spelled; order of params is irrelevant.
    assert cache_key(HOST, "x", {**PARAMS, "speed": 1}) == cache_key(HOST, "x", {**PARAMS, "speed": 1.0})
    assert cache_key(HOST, "x", dict(reversed(list(PARAMS.items())))) == cache_key(HOST, "x", PARAMS)
    with pytest.raises(ValueError):
        cache_key(HOST, "x", {**PARAMS, "text": "y"})


# -- round trip -------------------------------------------------------------------------


def test_write_commit_lookup_read_round_trip(tmp_path):
    directory = tmp_path / "a" / "b" / "cache"
    cache = PhraseCache(directory, BIG)
    for d in (directory, tmp_path / "a", directory / "tmp"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d

    key = key_for(1)
    data = pcm(12345)
    entry = store(cache, key, data, rate=22050)
    assert entry == CacheEntry(key=key, path=directory / key[:2] / f"{key}.wav", rate=22050, frames=12345,
                               size=ENTRY_HEADER_SIZE + len(data), crc=zlib.crc32(data))
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o600
    assert tmp_files(directory) == []

    found = cache.lookup(key)
    assert found == entry
    chunks = list(cache.read(found, chunk_bytes=1001))
    assert b"".join(chunks) == data
    assert all(len(c) % 2 == 0 for c in chunks) and max(map(len, chunks)) == 1000
    assert b"".join(cache.read(found)) == data

    with wave.open(str(entry.path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 22050, 12345)
        assert w.readframes(12345) == data

    assert cache.contains(key) and not cache.contains(key_for(2))
    assert cache.lookup(key_for(2)) is None
    cache.close()
    with pytest.raises(CacheError):
        cache.lookup(key)


def test_bad_arguments(tmp_path):
    cache = PhraseCache(tmp_path, BIG)
    with pytest.raises(ValueError):
        cache.lookup("../../etc/passwd")
    with pytest.raises(ValueError):
        cache.writer(key_for(1), 7999)
    with pytest.raises(ValueError):
        PhraseCache(tmp_path, 0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError):
        PhraseCache(tmp_path / "file", BIG)


def test_hits_misses_counted_and_persisted(tmp_path):
    clock = Clock(1000.0)
    cache = PhraseCache(tmp_path, BIG, clock=clock)
    e1 = store(cache, key_for(1), pcm(100))
    clock.now = 2000.0
    e2 = store(cache, key_for(2), pcm(300))
    clock.now = 3000.0
    assert cache.lookup(key_for(1)) and cache.lookup(key_for(1)) and cache.lookup(key_for(2))
    assert cache.lookup(key_for(3)) is None
    assert cache.contains(key_for(1)) and not cache.contains(key_for(3))  # not counted
    st = cache.stats()
    assert (st.entries, st.bytes, st.hits, st.misses) == (2, e1.size + e2.size, 3, 1)
    assert (st.oldest, st.newest, st.max_bytes, st.dir) == (1000.0, 2000.0, BIG, tmp_path)
    cache.close()

    again = PhraseCache(tmp_path, BIG, clock=clock)
    assert again.stats() == st
    assert again.lookup(key_for(4)) is None
    assert (again.stats().hits, again.stats().misses) == (3, 2)


def test_lru_evicts_least_recently_used(tmp_path):
    clock = Clock(1000.0)
    size = ENTRY_HEADER_SIZE + 1000
    cache = PhraseCache(tmp_path, 3 * size + 10, clock=clock)
    keys = [key_for(i) for i in range(6)]
    for i in range(3):
        clock.now += 10
        assert store(cache, keys[i], pcm(500, i)).size == size
    clock.now += 10
    assert cache.lookup(keys[0])  # the oldest becomes the most recently used

    clock.now += 10
    store(cache, keys[3], pcm(500, 3))  # evicts keys[1], the least recently used
    assert [cache.contains(k) for k in keys[:4]] == [True, False, True, True]
    clock.now += 10
    store(cache, keys[4], pcm(500, 4))  # evicts keys[2]
    assert [cache.contains(k) for k in keys[:5]] == [True, False, False, True, True]
    st = cache.stats()
    assert (st.entries, st.bytes) == (3, 3 * size)
    assert (st.oldest, st.newest) == (1010.0, 1060.0)
    assert len(entry_files(tmp_path)) == 3
    assert b"".join(cache.read(cache.lookup(keys[0]))) == pcm(500, 0)

    # A reader holding an entry whose file was evicted meanwhile gets a CacheError, not garbage.
    stale = cache.lookup(keys[3])
    clock.now += 100
    cache.lookup(keys[0])
    cache.lookup(keys[4])
    store(cache, keys[5], pcm(500, 5))
    assert not cache.contains(keys[3])
    with pytest.raises(CacheError):
        cache.read(stale)


def test_entry_larger_than_the_cache_is_not_stored(tmp_path, caplog):
    cache = PhraseCache(tmp_path, 1000)
    for i in range(2):
        assert store(cache, key_for(i), pcm(1000)) is None
    assert not cache.contains(key_for(0)) and tmp_files(tmp_path) == []
    assert len(warnings_with(caplog, "do not fit")) == 1
    assert store(cache, key_for(3), pcm(400)).size == ENTRY_HEADER_SIZE + 800


# -- refusing incomplete audio ----------------------------------------------------------


def test_abort_and_exceptions_leave_nothing(tmp_path):
    cache = PhraseCache(tmp_path, BIG)
    w = cache.writer(key_for(1), 24000)
    w.write(pcm(100))
    assert len(tmp_files(tmp_path)) == 1
    w.abort()
    assert tmp_files(tmp_path) == []

    with pytest.raises(RuntimeError):
        with cache.writer(key_for(2), 24000) as w:
            w.write(pcm(100))
            raise RuntimeError("stream broke")
    with cache.writer(key_for(3), 24000) as w:  # left without commit()
        w.write(pcm(100))

    assert tmp_files(tmp_path) == [] and entry_files(tmp_path) == []
    for i in (1, 2, 3):
        assert cache.lookup(key_for(i)) is None
    assert cache.stats().entries == 0
    with pytest.raises(CacheError):
        w.write(pcm(1))


@pytest.mark.parametrize("data", [b"", b"\x01", pcm(10) + b"\x01"], ids=["empty", "one-byte", "odd"])
def test_empty_or_odd_audio_is_not_cached(tmp_path, data):
    cache = PhraseCache(tmp_path, BIG)
    with cache.writer(key_for(1), 24000) as w:
        w.write(data)
        assert w.commit() is None
    assert tmp_files(tmp_path) == [] and entry_files(tmp_path) == []
    assert cache.lookup(key_for(1)) is None


# -- broken entries ---------------------------------------------------------------------


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 10)


def _garbage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"garbage!" * 4)


def _header_only(path: Path) -> None:
    os.truncate(path, ENTRY_HEADER_SIZE)


def _stereo(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(22)
        f.write((2).to_bytes(2, "little"))


def _empty_data(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)


@pytest.mark.parametrize("damage", [_truncate, _garbage_header, _header_only, _stereo, _empty_data])
def test_lookup_detects_a_broken_entry(tmp_path, caplog, damage):
    cache = PhraseCache(tmp_path, BIG)
    entry = store(cache, key_for(1), pcm(1000))
    damage(entry.path)
    assert not cache.contains(key_for(1))
    assert cache.lookup(key_for(1)) is None
    assert not entry.path.exists()
    assert warnings_with(caplog, "broken")
    st = cache.stats()
    assert (st.entries, st.bytes, st.hits, st.misses) == (0, 0, 0, 1)
    with pytest.raises(CacheError):
        cache.read(entry)


def test_verify_finds_and_removes_broken_entries(tmp_path):
    cache = PhraseCache(tmp_path, BIG)
    entries = [store(cache, key_for(i), pcm(200, i)) for i in range(5)]
    _truncate(entries[1].path)
    _garbage_header(entries[3].path)
    checked, removed, _ = cache.verify()
    assert checked == 5
    assert removed == sorted([entries[1].key, entries[3].key])
    assert [e.path.exists() for e in entries] == [True, False, True, False, True]
    assert cache.stats().entries == 3
    assert cache.verify() == (3, [], 0)


def _zero_the_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(ENTRY_HEADER_SIZE + (size - ENTRY_HEADER_SIZE) // 2 - 50)
        f.write(bytes(100))
    assert path.stat().st_size == size


def test_lookup_detects_damage_that_keeps_the_size(tmp_path, caplog):
    cache = PhraseCache(tmp_path, BIG)
    entry = store(cache, key_for(1), pcm(1000))
    _zero_the_middle(entry.path)
    assert cache.contains(key_for(1))  # the header is whole: contains() stays cheap, lookup() decides
    assert cache.lookup(key_for(1)) is None
    assert not entry.path.exists()
    assert warnings_with(caplog, "checksum mismatch")
    st = cache.stats()
    assert (st.entries, st.bytes, st.hits, st.misses) == (0, 0, 0, 1)
    assert store(cache, key_for(1), pcm(1000)) is not None and cache.lookup(key_for(1)) is not None


def test_read_checks_the_checksum_as_it_streams(tmp_path):
    """Damage between lookup() and read() is still caught, at the latest before the last chunk."""
    cache = PhraseCache(tmp_path, BIG)
    data = pcm(5000)
    entry = store(cache, key_for(1), data)
    assert cache.lookup(key_for(1)) == entry
    _zero_the_middle(entry.path)
    with pytest.raises(CacheError, match="checksum mismatch"):
        for _ in cache.read(entry, chunk_bytes=1000):
            pass


def test_entries_written_before_checksums_are_still_used(tmp_path):
    """An upgrade keeps the cache: a bare 44-byte header entry is a hit, checked by its header."""
    from coze_speaker.sound.wav import s16_mono_header

    cache = PhraseCache(tmp_path, BIG)
    key, data = key_for("old"), pcm(3000)
    path = cache.entry_path(key)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(s16_mono_header(24000, len(data)) + data)
    entry = cache.lookup(key)
    assert entry is not None and (entry.crc, entry.frames, entry.size) == (None, 3000, 44 + len(data))
    assert b"".join(cache.read(entry, chunk_bytes=999)) == data
    fresh = store(cache, key_for("new"), pcm(10))
    assert fresh is not None and fresh.crc == zlib.crc32(pcm(10))
    assert cache.verify() == (2, [], 1)
    os.truncate(path, 100)  # its header still guards it
    assert cache.lookup(key) is None and not path.exists()


# -- crash safety -----------------------------------------------------------------------


def test_sigkill_mid_write_leaves_no_entry(tmp_path):
    key = key_for("killed")
    code = """
        import sys, time
        from coze_speaker.cache import PhraseCache
        cache = PhraseCache(sys.argv[1], 10**9)
        w = cache.writer(sys.argv[2], 24000)
        w.write(b"\\x01\\x02" * 5000)
        print("ready", flush=True)
        time.sleep(120)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path), key],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    [leftover] = tmp_files(tmp_path)
    assert leftover.stat().st_size == ENTRY_HEADER_SIZE + 10000
    cache = PhraseCache(tmp_path, BIG)  # a recent temp file may belong to a live writer: kept
    assert cache.lookup(key) is None
    assert not cache.entry_path(key).exists() and entry_files(tmp_path) == []
    assert tmp_files(tmp_path) == [leftover]
    cache.close()

    old = time.time() - 2 * 3600
    os.utime(leftover, (old, old))
    fresh = tmp_path / "tmp" / "99999-fresh.tmp"
    fresh.write_bytes(b"x")
    cache = PhraseCache(tmp_path, BIG)
    assert tmp_files(tmp_path) == [fresh]
    assert cache.lookup(key) is None
    assert store(cache, key, pcm(10)).frames == 10


# -- write failures (disk full and friends) ---------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_write_failure_disables_caching_once_then_recovers(tmp_path):
    """A real EFBIG from RLIMIT_FSIZE in a child stands in for a full disk."""
    keys = [key_for(f"full {i}") for i in range(4)]
    code = """
        import json, logging, os, resource, signal, sys
        from coze_speaker.cache import PhraseCache
        records = []
        class Collect(logging.Handler):
            def emit(self, record):
                records.append([record.levelname, record.getMessage()])
        logger = logging.getLogger("coze_speaker.cache")
        logger.addHandler(Collect())
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        directory, keys = sys.argv[1], sys.argv[2:]
        cache = PhraseCache(directory, 10**9)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, hard))
        results = []
        for key in keys[:2]:
            with cache.writer(key, 16000) as w:
                for _ in range(20):
                    w.write(b"\\x00\\x01" * 4096)
                results.append([w.failed, w.commit() is None])
        leftovers = os.listdir(os.path.join(directory, "tmp"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        with cache.writer(keys[2], 16000) as w:
            w.write(b"\\x00\\x01" * 4096)
            entry = w.commit()
        print(json.dumps({"results": results, "leftovers": leftovers, "failed": w.failed,
                          "frames": entry.frames if entry else None, "records": records}))
    """
    out = json.loads(run_child(code, str(tmp_path), *keys[:3]).stdout)
    assert out["results"] == [[True, True], [True, True]]
    assert out["leftovers"] == []
    assert (out["failed"], out["frames"]) == (False, 4096)
    warnings = [msg for level, msg in out["records"] if level == "WARNING"]
    assert len(warnings) == 1, out["records"]
    assert warnings[0].startswith("phrase cache disabled for now: ") and "too large" in warnings[0].lower()
    assert any(level == "INFO" and "writable again" in msg for level, msg in out["records"])

    cache = PhraseCache(tmp_path, BIG)
    assert cache.lookup(keys[0]) is None and cache.lookup(keys[1]) is None
    assert cache.lookup(keys[2]).frames == 4096
    assert store(cache, keys[3], pcm(5000)).frames == 5000
    assert tmp_files(tmp_path) == []
    assert cache.verify() == (2, [], 0)


# -- two processes ----------------------------------------------------------------------


def test_two_processes_write_while_a_third_reads(tmp_path, caplog):
    code = """
        import hashlib, sys
        from coze_speaker.cache import PhraseCache
        directory, tag = sys.argv[1], sys.argv[2]
        cache = PhraseCache(directory, 10**9)
        for i in range(50):
            key = hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()
            data = bytes([i, len(tag)]) * (100 + i)
            with cache.writer(key, 16000) as w:
                w.write(data[:51])
                w.write(data[51:])
                assert w.commit() is not None
            assert cache.lookup(key) is not None
        print("done", flush=True)
    """
    expected = {}
    for tag in ("a", "bb"):
        for i in range(50):
            expected[hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()] = bytes([i, len(tag)]) * (100 + i)
    children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path), tag],
                                 env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for tag in ("a", "bb")]
    cache = PhraseCache(tmp_path, BIG)
    keys = sorted(expected)
    hits = 0
    try:
        for n in range(200_000):
            if all(c.poll() is not None for c in children):
                break
            key = keys[n % len(keys)]
            entry = cache.lookup(key)
            if entry is not None:
                assert b"".join(cache.read(entry)) == expected[key]
                hits += 1
        for c in children:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err
            assert out.strip() == "done"
            assert err == ""  # not even a warning (e.g. an index left unavailable)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()

    for key, data in expected.items():
        entry = cache.lookup(key)
        assert entry is not None and b"".join(cache.read(entry)) == data
    files = entry_files(tmp_path)
    assert len(files) == 100
    st = cache.stats()
    assert st.entries == len(files) == 100
    assert st.bytes == sum(p.stat().st_size for p in files)
    with sqlite3.connect(tmp_path / "index.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 100
    assert cache.verify() == (100, [], 0)
    assert tmp_files(tmp_path) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    print(f"parent saw {hits} hits while the children wrote")


def test_one_thread_writes_while_another_reads(tmp_path):
    cache = PhraseCache(tmp_path, 60 * (ENTRY_HEADER_SIZE + 200))  # small: eviction runs while the reader reads
    keys = [key_for(i) for i in range(100)]
    errors = []

    def write():
        try:
            for i, key in enumerate(keys):
                assert store(cache, key, pcm(100, i)) is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    reads = 0
    for n in range(100_000):
        if not thread.is_alive():
            break
        i = n % len(keys)
        entry = cache.lookup(keys[i])
        if entry is not None:
            try:
                assert b"".join(cache.read(entry)) == pcm(100, i)
                reads += 1
            except CacheError:
                pass  # evicted between lookup and read: the caller synthesizes instead
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    st = cache.stats()
    assert st.entries == len(entry_files(tmp_path)) == 60
    assert st.bytes == 60 * (ENTRY_HEADER_SIZE + 200)
    assert cache.verify() == (60, [], 0)


def test_two_caches_in_one_process_share_the_directory(tmp_path):
    a = PhraseCache(tmp_path, BIG)
    b = PhraseCache(tmp_path, BIG)
    store(a, key_for(1), pcm(10))
    assert b.lookup(key_for(1)).frames == 10
    assert b.clear() == 1
    assert a.lookup(key_for(1)) is None
    assert a.stats().entries == 0


# -- cost of a lookup -------------------------------------------------------------------


def test_open_and_lookup_do_not_list_the_entries(tmp_path, monkeypatch):
    cache = PhraseCache(tmp_path, BIG)
    keys = [key_for(i) for i in range(2000)]
    assert cache._bulk_add((k, 8000, pcm(4, i)) for i, k in enumerate(keys)) == 2000
    cache.close()

    listed = []
    real_scandir, real_listdir = os.scandir, os.listdir

    def scandir(path="."):
        listed.append(Path(os.fspath(path)))
        return real_scandir(path)

    def listdir(path="."):
        listed.append(Path(os.fspath(path)))
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
    cache = PhraseCache(tmp_path, BIG)
    entry = cache.lookup(keys[1234])
    assert b"".join(cache.read(entry)) == pcm(4, 1234)
    assert cache.lookup(key_for("absent")) is None
    assert set(listed) <= {tmp_path / "tmp"}

    monkeypatch.setattr(os, "scandir", real_scandir)
    monkeypatch.setattr(os, "listdir", real_listdir)
    assert cache.stats().entries == 2000


# -- index trouble: entries are the truth -----------------------------------------------


def test_lost_index_is_rebuilt_from_the_files(tmp_path):
    cache = PhraseCache(tmp_path, BIG)
    entries = [store(cache, key_for(i), pcm(100, i)) for i in range(5)]
    cache.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'index.sqlite3'}{suffix}").unlink(missing_ok=True)

    cache = PhraseCache(tmp_path, BIG)
    assert cache.lookup(entries[0].key) == entries[0]  # adopted on the spot
    st = cache.stats()  # a full rescan runs once
    assert (st.entries, st.bytes, st.hits) == (5, sum(e.size for e in entries), 1)


def test_corrupt_index_is_moved_aside_and_rebuilt(tmp_path, caplog):
    cache = PhraseCache(tmp_path, BIG)
    entries = [store(cache, key_for(i), pcm(100, i)) for i in range(3)]
    cache.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'index.sqlite3'}{suffix}").unlink(missing_ok=True)
    (tmp_path / "index.sqlite3").write_bytes(b"this is not a database " * 200)

    cache = PhraseCache(tmp_path, BIG)
    assert warnings_with(caplog, "moved it to")
    assert len(list(tmp_path.glob("index.sqlite3.corrupt-*"))) == 1
    assert cache.lookup(entries[1].key) == entries[1]
    e = store(cache, key_for(9), pcm(7))  # the first commit adopts the other files
    st = cache.stats()
    assert (st.entries, st.bytes) == (4, sum(x.size for x in entries) + e.size)


def test_locked_index_keeps_the_cache_working(tmp_path, caplog, monkeypatch):
    cache = PhraseCache(tmp_path, BIG)
    first = store(cache, key_for(1), pcm(100))
    cache.close()

    blocker = sqlite3.connect(tmp_path / "index.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        cache = PhraseCache(tmp_path, BIG, busy_timeout=0.05)
        assert cache.lookup(first.key) == first
        assert cache.lookup(first.key) == first  # the index is not even tried for a while
        assert cache.lookup(key_for(2)) is None
        second = store(cache, key_for(2), pcm(50))
        assert second is not None and cache.contains(key_for(2))
        assert len(warnings_with(caplog, "unavailable")) == 1
        st = cache.stats()  # from the files and this process' counters
        assert (st.entries, st.bytes, st.hits, st.misses) == (2, first.size + second.size, 2, 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    # Once the index is back, the uncounted entry is adopted and the counters are flushed.
    monkeypatch.setattr(cache_module.index, "INDEX_RETRY_SECONDS", 0.0)
    cache._index._retry_at = 0.0
    third = store(cache, key_for(3), pcm(30))
    st = cache.stats()
    assert (st.entries, st.bytes) == (3, first.size + second.size + third.size)
    assert cache.lookup(key_for(2)) == second
    cache.close()
    again = PhraseCache(tmp_path, BIG)
    st = again.stats()
    assert (st.entries, st.hits, st.misses) == (3, 3, 1)


# -- maintenance ------------------------------------------------------------------------


def test_prune_evicts_adopts_and_drops(tmp_path):
    clock = Clock(time.time())  # adopted files take their mtime as times: use a real epoch here
    cache = PhraseCache(tmp_path, BIG, clock=clock)
    entries = []
    for i in range(6):
        clock.now += 1
        entries.append(store(cache, key_for(i), pcm(500, i)))
    cache.close()

    # a row without a file, and a valid file without a row
    entries[0].path.unlink()
    orphan_key = key_for("orphan")
    orphan = tmp_path / orphan_key[:2] / f"{orphan_key}.wav"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(entries[1].path.read_bytes())
    old = time.time() - 7200
    os.utime(orphan, (old, old))  # adopted with its mtime as last use: evicted first
    stale = tmp_path / "tmp" / "1-stale.tmp"
    stale.write_bytes(b"x" * 100)
    os.utime(stale, (old, old))

    cache = PhraseCache(tmp_path, 3 * (ENTRY_HEADER_SIZE + 1000), clock=clock)
    assert not stale.exists()
    removed, freed = cache.prune()
    assert (removed, freed) == (3, 3 * (ENTRY_HEADER_SIZE + 1000))
    assert not orphan.exists()
    assert [e.path.exists() for e in entries] == [False, False, False, True, True, True]
    st = cache.stats()
    assert (st.entries, st.bytes) == (3, 3 * (ENTRY_HEADER_SIZE + 1000))
    assert cache.prune() == (0, 0)


def test_clear_removes_everything(tmp_path):
    cache = PhraseCache(tmp_path, BIG)
    for i in range(4):
        store(cache, key_for(i), pcm(10))
    cache.lookup(key_for(0))
    assert cache.clear() == 4
    assert entry_files(tmp_path) == []
    st = cache.stats()
    assert (st.entries, st.bytes, st.hits, st.oldest) == (0, 0, 1, None)
    assert store(cache, key_for(0), pcm(10)) is not None
