"""Fault suite, phrase cache: its directory deleted while running, damage that keeps an entry's size.

Real mosquitto, the fake Coze over real HTTP, real aplay into the ALSA file sink; every
Coze request is counted at the fake.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from test_daemon import EVENT, SAY, SPEECH, pcm, start_daemon, write_config  # noqa: F401

from coze_speaker.cache import ENTRY_HEADER_SIZE

ROOT = Path(__file__).resolve().parents[1]


def speak(probe, text: str, ident: str) -> dict:
    """Say text and return its final event (it must finish)."""
    probe.publish(SAY, {"text": text, "id": ident})
    return probe.wait_event(EVENT, id=ident, event="finished", timeout=30)


def entry_files(cache_dir: Path) -> list:
    return sorted(cache_dir.glob("*/*.wav"))


def zero_the_middle(path: Path, n: int = 4096) -> None:
    """Overwrite n bytes in the middle of the samples with zeros: the size stays the same."""
    size = path.stat().st_size
    start = ENTRY_HEADER_SIZE + (size - ENTRY_HEADER_SIZE - n) // 2
    assert start > ENTRY_HEADER_SIZE and start + n < size, "the entry is too small to damage in the middle"
    with open(path, "r+b") as f:
        f.seek(start)
        assert f.read(n) != bytes(n), "the audio there must not be silence already"
        f.seek(start)
        f.write(bytes(n))
    assert path.stat().st_size == size


# -- the cache directory deleted while running ---------------------------------------------


def test_deleting_the_cache_dir_while_running_caches_again(start_daemon, probe, fake_coze, alsa_sink, tmp_path):
    cache_dir = tmp_path / "cache"  # where write_config puts it
    start_daemon()
    text = "The washing machine has finished."
    assert speak(probe, text, "a1")["cached"] is False
    assert speak(probe, text, "a2")["cached"] is True
    assert len(fake_coze.requests_to(SPEECH)) == 1

    for _ in range(20):  # `rm -rf` by a user freeing space, or a cleanup script; the daemon may
        try:              # write the index (hit counts) meanwhile, as it would under a real rm
            shutil.rmtree(cache_dir)
            break
        except OSError:
            continue
    assert not cache_dir.exists() or not entry_files(cache_dir)

    assert speak(probe, text, "a3")["cached"] is False  # gone, so paid for once more…
    assert len(fake_coze.requests_to(SPEECH)) == 2
    assert speak(probe, text, "a4")["cached"] is True  # …and cached again
    assert speak(probe, text, "a5")["cached"] is True
    assert len(fake_coze.requests_to(SPEECH)) == 2, "every repeat after the deletion was paid for again"
    assert len(entry_files(cache_dir)) == 1 and (cache_dir / "index.sqlite3").exists()
    assert oct(cache_dir.stat().st_mode & 0o777) == oct(0o700)
    audio = pcm(text)
    assert alsa_sink.wait_for(5 * len(audio)).count(audio) == 5


# -- damage that keeps an entry's size -----------------------------------------------------


def test_zeroed_audio_in_an_entry_is_synthesized_again_not_played(start_daemon, probe, fake_coze, alsa_sink,
                                                                  tmp_path):
    cache_dir = tmp_path / "cache"
    start_daemon()
    text = "Smoke detected in the kitchen, please check it now."
    audio = pcm(text)
    assert speak(probe, text, "z1")["cached"] is False
    [entry] = entry_files(cache_dir)
    zero_the_middle(entry)

    alsa_sink.clear()
    ev = speak(probe, text, "z2")
    assert ev["cached"] is False, "a damaged entry must not be played as a hit"
    assert len(fake_coze.requests_to(SPEECH)) == 2
    played = alsa_sink.wait_for(len(audio))
    assert played.startswith(audio), "the announcement must still speak, with the real audio"
    assert bytes(4096) not in played[:len(audio)]

    assert speak(probe, text, "z3")["cached"] is True  # the new entry is whole again
    assert len(fake_coze.requests_to(SPEECH)) == 2


def run_cli(config: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COZE_API_TOKEN"}
    return subprocess.run([sys.executable, "-m", "coze_speaker", "-c", str(config), *argv],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_cache_verify_reports_and_removes_a_zeroed_entry(tmp_path, fake_coze, broker, alsa_sink):
    config = write_config(tmp_path, fake_coze, broker)
    cache_dir = tmp_path / "cache"
    texts = ("The front door is open.", "The back door is open.", "The garage door is open.")
    for text in texts:
        done = run_cli(config, "say", text)
        assert done.returncode == 0, done.stderr
    files = entry_files(cache_dir)
    assert len(files) == 3
    done = run_cli(config, "cache", "verify")
    assert (done.returncode, done.stdout.strip()) == (0, "checked 3 entries, removed 0 broken"), done.stderr

    victim = files[1]
    zero_the_middle(victim)
    done = run_cli(config, "cache", "verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "checked 3 entries, removed 1 broken"
    assert "checksum mismatch" in done.stderr and victim.name in done.stderr
    assert not victim.exists() and len(entry_files(cache_dir)) == 2

    before = len(fake_coze.requests_to(SPEECH))
    for text in texts:
        assert run_cli(config, "say", text).returncode == 0
    assert len(fake_coze.requests_to(SPEECH)) == before + 1, "only the damaged phrase is synthesized again"
    done = run_cli(config, "cache", "verify")
    assert done.stdout.strip() == "checked 3 entries, removed 0 broken"


def test_a_writer_recreates_a_deleted_cache_directory(tmp_path, caplog):
    """The first thing to touch the directory after the deletion may be a writer, not a lookup."""
    from coze_speaker.cache import PhraseCache

    directory = tmp_path / "cache"
    cache = PhraseCache(directory, 10**9)
    first, second = "1" * 64, "2" * 64
    audio = pcm("first phrase")
    with cache.writer(first, 24000) as w:
        w.write(audio)
        assert w.commit() is not None
    shutil.rmtree(directory)

    with cache.writer(second, 24000) as w:
        w.write(audio)
        assert w.commit() is not None, "the writer must create the directory again"
    assert [m for m in caplog.messages if "created it again" in m]
    assert not [m for m in caplog.messages if "disabled" in m]
    entry = cache.lookup(second)
    assert entry is not None and b"".join(cache.read(entry)) == audio
    assert cache.lookup(first) is None
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (1, entry.size)
    assert (directory / "index.sqlite3").exists() and oct(directory.stat().st_mode & 0o777) == oct(0o700)
    cache.close()
