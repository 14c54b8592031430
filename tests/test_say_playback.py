"""Acceptance tests of the phrase cache and playback: `coze-speaker say` end to end.

Real parts only: the CLI (in-process, or as a real process where a crash or a hang is the
point), the fake Coze over real HTTP, the real aplay / simpleaudio players, and a hermetic
ALSA config whose default PCM is a file sink. Assertions are about bytes and the order of
events, never about how long something took; every wait is bounded.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import wave
from array import array
from pathlib import Path
from typing import List, Optional

import pytest

from alsa_sink import AlsaSink, alsa_sink  # noqa: F401  (fixture used by name)
from conftest import VOICE
from fake_coze import SPEECH_PATH, FakeCoze, Fault

from coze_speaker.cache import ENTRY_HEADER_SIZE, PhraseCache
from coze_speaker.cli import main
from coze_speaker.sound.shaping import builtin_chime, volume_gain

SPEECH = "/v1/audio/speech"
RATE = 24000
BACKENDS = ("aplay", "simpleaudio", "alsa")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def audio(backend: str, **extra) -> dict:
    return {"backend": backend, "chime": "none", "wake_ms": 0, "sample_rate": RATE, **extra}


def backend_or_skip(backend: str) -> None:
    if backend == "alsa":
        pytest.importorskip("alsaaudio", reason="pyalsaaudio is not installed")
    if backend == "simpleaudio":
        try:
            import simpleaudio  # noqa: F401
        except ImportError as exc:
            pytest.skip(f"simpleaudio cannot be imported: {exc}")


def speech_count(fake) -> int:
    return len(fake.requests_to(SPEECH))


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def settled(sink: AlsaSink, n_bytes: int) -> bytes:
    """The capture once it holds at least n_bytes and stopped growing (bounded waits)."""
    sink.wait_for(n_bytes, timeout=30.0)
    return sink.settle(quiet=0.2, timeout=30.0)


def assert_prefix_then_zeros(captured: bytes, data: bytes) -> None:
    """aplay's capture: the audio, then only silence (aplay pads its last period)."""
    assert len(captured) >= len(data), f"captured {len(captured)} bytes, expected at least {len(data)}"
    assert captured[: len(data)] == data, f"audio differs at byte {first_difference(captured, data)}"
    assert captured[len(data):].count(0) == len(captured) - len(data), "padding must be silence"


def assert_played(backend: str, captured: bytes, data: bytes) -> None:
    # aplay pads its last period with silence, alsa keeps the device open (audio.keep_open)
    # fed silence until `say` exits: both are the audio, then only zeros
    if backend == "simpleaudio":
        assert len(captured) == len(data)
        assert captured == data, f"audio differs at byte {first_difference(captured, data)}"
    else:
        assert_prefix_then_zeros(captured, data)


def first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def samples(pcm: bytes) -> array:
    a = array("h")
    a.frombytes(pcm)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def pcm_bytes(a: array) -> bytes:
    if sys.byteorder != "little":
        a = array("h", a)
        a.byteswap()
    return a.tobytes()


def cache_wavs(cache_dir: Path) -> List[Path]:
    return sorted(p for p in cache_dir.rglob("*.wav"))


def read_wav(path: Path):
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), wav.readframes(wav.getnframes())


# ----------------------------------------------------------------------------- a timestamping sink

TAP_SCRIPT = """\
import os, sys, time
capture, log = sys.argv[1], sys.argv[2]
gate = sys.argv[3] if len(sys.argv) > 3 else None
first = last = None
with open(capture, "ab", buffering=0) as out:
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        now = time.monotonic()
        if first is None:
            first = now
            with open(log, "a") as fh:
                fh.write("first %r\\n" % first)
        out.write(data)
        last = now
        if gate is not None:  # a device busy with the first audio until the test says go
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.005)
            gate = None
with open(log, "a") as fh:
    fh.write("last %r\\n" % last)
"""


class TimedSink(AlsaSink):
    """The hermetic file sink, but its default PCM pipes to a Python script that appends the
    audio to the capture file and logs time.monotonic() of the first byte it received and,
    at EOF, of the last. CLOCK_MONOTONIC is system wide on Linux, so these times compare
    with the fake's speech_log.

    With a ``gate`` file, the script stops reading after its first read until the gate
    exists: like a device still busy playing the first audio, it holds aplay back (and
    so everything upstream that waits for the device)."""

    def __init__(self, directory: Path, gate: Optional[Path] = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.script = directory / "tap.py"
        self.times = directory / "times.log"
        self.gate = gate
        self.script.write_text(TAP_SCRIPT)
        super().__init__(directory)

    def pipe_command(self, path: Optional[Path] = None) -> str:
        argv = [sys.executable, str(self.script), str(path or self.path), str(self.times)]
        if self.gate is not None:
            argv.append(str(self.gate))
        return "|" + shlex.join(argv)

    def release(self) -> float:
        """Let a gated sink go on reading; returns when (monotonic)."""
        assert self.gate is not None
        now = time.monotonic()
        self.gate.write_text("go")
        return now

    def events(self, kind: str) -> List[Optional[float]]:
        if not self.times.exists():
            return []
        out = []
        for line in self.times.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == kind:
                out.append(None if value == "None" else float(value))
        return out

    def wait_closed(self, timeout: float = 30.0) -> None:
        """Until every pipe the PCM opened has seen its EOF."""
        wait_until(lambda: len(self.events("last")) >= len(self.events("first")) > 0, timeout, "the sink's EOF")


def install(sink: AlsaSink, monkeypatch) -> AlsaSink:
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(sink.config_path))
    for var in ("ALSA_CARD", "ALSA_PCM_CARD", "ALSA_PCM_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    return sink


@pytest.fixture
def timed_sink(tmp_path, monkeypatch) -> TimedSink:
    return install(TimedSink(tmp_path / "alsa-timed"), monkeypatch)


@pytest.fixture
def gated_sink(tmp_path, monkeypatch) -> TimedSink:
    sink = install(TimedSink(tmp_path / "alsa-gated", gate=tmp_path / "alsa-gated" / "go"), monkeypatch)
    yield sink
    if not sink.gate.exists():
        sink.release()  # never leave a blocked pipe behind


# ----------------------------------------------------------------------------- 1. say twice


@pytest.mark.parametrize("backend", BACKENDS)
def test_say_twice_plays_the_same_audio_and_the_second_is_free(capsys, make_config, fake_coze, alsa_sink,
                                                               backend):
    backend_or_skip(backend)
    text = "Dinner is ready"
    pcm = FakeCoze.pcm_for(text, VOICE, RATE)
    config = make_config(audio=audio(backend))

    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == 1
    first = settled(alsa_sink, len(pcm))
    assert_played(backend, first, pcm)

    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == 1, "the second say must come from the cache"
    both = settled(alsa_sink, len(first) + len(pcm))
    assert both[: len(first)] == first
    assert_played(backend, both[len(first):], pcm)
    if backend == "simpleaudio":
        assert both == pcm + pcm


# ----------------------------------------------------------------------------- 2. SIGKILL mid-write


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group we started (aplay, its pipe), wait until gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def test_sigkill_during_a_cache_write_never_plays_truncated_audio(capsys, make_config, fake_coze, alsa_sink,
                                                                   tmp_path):
    text = ("The front door has been open for ten minutes, please close it before the heating "
            "runs all night and the cat walks out into the garden again.")
    pcm = FakeCoze.pcm_for(text, VOICE, RATE)
    fake_coze.chunk_bytes = 4800      # 100 ms of audio per chunk
    fake_coze.chunk_delay = 0.05      # the body takes several seconds
    config = make_config(audio=audio("aplay"))
    cache_dir = tmp_path / "cache"

    # The killed process plays into a sink of its own: its orphaned aplay cannot write into ours.
    scratch = AlsaSink(tmp_path / "alsa-killed")
    env = dict(os.environ, ALSA_CONFIG_PATH=str(scratch.config_path))
    with open(tmp_path / "killed.out", "wb") as out, open(tmp_path / "killed.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "coze_speaker", "-c", str(config), "say", text],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                start_new_session=True)
    try:
        def mid_body() -> bool:
            assert proc.poll() is None, "the say process ended before it could be killed"
            log = fake_coze.speech_log
            return bool(log) and log[0].bytes_sent >= 10 * fake_coze.chunk_bytes and not log[0].completed

        wait_until(mid_body, 30, "the fake to be in the middle of the body")

        def partial_written() -> bool:
            return any(p.stat().st_size > ENTRY_HEADER_SIZE for p in (cache_dir / "tmp").glob("*"))

        wait_until(partial_written, 30, "the cache writer to have written audio")
        sent = fake_coze.speech_log[0].bytes_sent
        proc.kill()  # SIGKILL: no cleanup runs in that process
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        _kill_group(proc.pid)
    assert proc.returncode == -signal.SIGKILL
    assert sent < len(pcm), "the process must have died before the whole body was sent"
    partial = list((cache_dir / "tmp").glob("*"))
    assert partial, "the interrupted write is left only as a temp file"
    assert cache_wavs(cache_dir) == [], "no entry may appear for the interrupted write"

    fake_coze.chunk_delay = 0.0
    alsa_sink.clear()
    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == 2, "the phrase must be synthesized again"
    assert_prefix_then_zeros(settled(alsa_sink, len(pcm)), pcm)

    # Every entry on disk is whole: the cache's own check and the wave module agree.
    wavs = cache_wavs(cache_dir)
    assert len(wavs) == 1
    for path in wavs:
        rate, frames = read_wav(path)
        assert rate == RATE
        assert path.stat().st_size == ENTRY_HEADER_SIZE + len(frames)
    assert read_wav(wavs[0])[1] == pcm
    with PhraseCache(cache_dir, 10**9) as cache:
        checked, removed, _ = cache.verify()
    assert (checked, removed) == (1, [])

    # and now it is a hit
    alsa_sink.clear()
    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == 2
    assert_prefix_then_zeros(settled(alsa_sink, len(pcm)), pcm)


# ----------------------------------------------------------------------------- 3. streaming on a miss


def test_a_miss_streams_to_the_device_before_the_body_ends(capsys, make_config, fake_coze, timed_sink):
    text = "The laundry is done and the dryer is waiting for you in the basement."
    pcm = FakeCoze.pcm_for(text, VOICE, RATE)
    fake_coze.ttfb = 0.3
    fake_coze.chunk_bytes = 4800
    chunks = -(-len(pcm) // fake_coze.chunk_bytes)
    fake_coze.chunk_delay = 1.0 / chunks  # the body streams for about one second
    config = make_config(audio=audio("aplay"))

    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == 1
    timed_sink.wait_closed()
    assert_prefix_then_zeros(settled(timed_sink, len(pcm)), pcm)

    (timing,) = fake_coze.speech_log
    assert timing.completed
    (t_sink_first,) = timed_sink.events("first")
    assert timing.t_request < t_sink_first < timing.t_last_byte, (
        "the first audio must reach the device while the body is still streaming")


# ----------------------------------------------------------------------------- 4. long text


def long_text(n_bytes: int = 5000) -> str:
    """Varied sentences, none repeated, exactly n_bytes of ASCII ending with a full stop."""
    subjects = ("The kitchen light", "A parcel from the post office", "The garden sprinkler", "Your sister",
                "The washing machine", "The upstairs thermostat", "A delivery van", "The garage door",
                "The dishwasher", "Grandma's tablet", "The front porch camera", "The bathroom fan",
                "The electric car", "A neighbour called Morgan", "The weather station")
    verbs = ("reported", "noticed", "announced", "flagged", "mentioned", "detected", "confirmed")
    objects = ("a small leak near the window", "that the battery is almost empty", "an unusual noise",
               "that dinner will be late", "three missed calls", "a temperature of nineteen degrees",
               "that the bins go out tomorrow", "movement in the driveway", "an update waiting to install",
               "that the milk is running low", "rain expected after lunch")
    parts = []
    n = 0
    while len(" ".join(parts)) < n_bytes:
        s, v, o = subjects[n % len(subjects)], verbs[(n // 3) % len(verbs)], objects[(n * 7) % len(objects)]
        parts.append(f"At {n // 60 + 6:02d}:{n % 60:02d} {s.lower() if n % 2 else s} {v} {o}, item {n}.")
        n += 1
    text = " ".join(parts)[: n_bytes - 1].rstrip() + "."
    text = text + "." * (n_bytes - len(text))
    assert len(text.encode()) == n_bytes
    return text


def pieces_received(fake) -> List[str]:
    pieces = [r.json["input"] for r in fake.requests_to(SPEECH)]
    assert len(pieces) >= 5, pieces  # at most 1024 bytes each
    assert len(set(pieces)) == len(pieces), "no piece may repeat another"
    return pieces


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_text_plays_as_one_continuous_piece(capsys, make_config, fake_coze, alsa_sink, backend):
    backend_or_skip(backend)
    rate = 8000  # 5000 characters are five minutes of speech: keep the bytes small
    text = long_text()
    config = make_config(audio=audio(backend, sample_rate=rate))
    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    pieces = pieces_received(fake_coze)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    expected = b"".join(FakeCoze.pcm_for(p, VOICE, rate) for p in pieces)
    assert_played(backend, settled(alsa_sink, len(expected)), expected)

    # and the whole announcement is a hit next time, piece by piece
    alsa_sink.clear()
    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == len(pieces)
    assert_played(backend, settled(alsa_sink, len(expected)), expected)


def test_long_text_requests_overlap_playback(capsys, make_config, fake_coze, gated_sink):
    """Later pieces are fetched while the device is still busy with the first audio, and the
    first audio does not wait for them."""
    rate = 8000
    text = long_text()
    fake_coze.chunk_bytes = 16000  # one second of audio per chunk
    fake_coze.chunk_delay = 0.01
    config = make_config(audio=audio("aplay", sample_rate=rate))
    box: dict = {}
    # Piece 2's answer is held until the first audio is at the device: the first audio must
    # not wait for it (ordering without timing, so a slow aplay start, e.g. under qemu, is fine).
    piece_2 = threading.Event()
    fake_coze.add_faults(SPEECH_PATH, Fault(), Fault(gate=piece_2))

    def say() -> None:
        box["code"] = main(["-c", str(config), "say", text])

    thread = threading.Thread(target=say, daemon=True)
    thread.start()
    requested_while_held = 0
    try:
        wait_until(lambda: gated_sink.events("first") or not thread.is_alive(), 30, "the first audio")
        assert gated_sink.events("first"), "say ended before any audio reached the device"
        # The device holds the first audio (aplay, and the player behind it, are blocked);
        # the next piece is requested all the same. (Bounded: aplay's stall timeout ends it.)
        wait_until(lambda: len(fake_coze.requests_to(SPEECH_PATH)) >= 2 or not thread.is_alive(), 30,
                   "piece 2's request")
        requested_while_held = len(fake_coze.requests_to(SPEECH_PATH))
    finally:
        piece_2.set()
        t_release = gated_sink.release()
        thread.join(60)
    assert not thread.is_alive(), "say did not finish"
    assert requested_while_held >= 2, "piece 2 must be requested while the device still holds piece 1"
    assert box.get("code") == 0, capsys.readouterr().err
    gated_sink.wait_closed()
    pieces = pieces_received(fake_coze)
    expected = b"".join(FakeCoze.pcm_for(p, VOICE, rate) for p in pieces)
    assert_prefix_then_zeros(settled(gated_sink, len(expected)), expected)

    firsts, lasts = gated_sink.events("first"), gated_sink.events("last")
    assert len(firsts) == len(lasts) == 1, "one aplay process (one PCM open) for the whole announcement"
    t_sink_first, t_sink_last = firsts[0], lasts[0]
    log = fake_coze.speech_log
    assert [t.input for t in log] == pieces
    assert all(t.completed for t in log)
    assert log[1].t_request < t_release < t_sink_last, "piece 2 must be fetched while the device still plays piece 1"
    assert t_sink_first < t_release


# ----------------------------------------------------------------------------- 5. device cannot be opened


def test_a_device_that_cannot_be_opened_is_one_clear_error(make_config, fake_coze, alsa_sink):
    config = make_config(audio=audio("aplay", device="broken"))
    proc = subprocess.run([sys.executable, "-m", "coze_speaker", "-c", str(config), "say", "Anyone home?"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("coze-speaker: error: audio device 'broken' is missing: "), lines[0]
    assert alsa_sink.read() == b""

    # -v shows what happened on the way: every attempt the player made
    proc = subprocess.run([sys.executable, "-m", "coze_speaker", "-v", "-c", str(config), "say", "Anyone home?"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "aplay attempt" in line][-1].startswith(
        "INFO coze_speaker.sound.aplay: aplay attempt 3/3: audio device 'broken' is missing")
    assert proc.stderr.strip().splitlines()[-1] == lines[0]


# ----------------------------------------------------------------------------- 6. shaping is not cached


@pytest.mark.parametrize("backend", BACKENDS)
def test_volume_chime_and_wake_silence_are_applied_at_play_time_only(capsys, make_config, fake_coze, alsa_sink,
                                                                tmp_path, backend):
    backend_or_skip(backend)
    text = "Dinner is ready"
    pcm = FakeCoze.pcm_for(text, VOICE, RATE)
    config = make_config(audio=audio(backend, volume=50, chime="builtin", wake_ms=200))
    code, _, err = run(capsys, "-c", config, "say", text)
    assert code == 0, err

    gain = volume_gain(50)
    assert 0 < gain < 1

    def scaled(data: bytes) -> bytes:
        return pcm_bytes(array("h", (int(round(s * gain)) for s in samples(data))))

    preroll = bytes(2 * RATE * 200 // 1000)
    chime = scaled(builtin_chime(RATE))
    speech = scaled(pcm)
    assert any(samples(chime)), "the chime is audible"
    assert speech != pcm and any(samples(speech))
    captured = settled(alsa_sink, len(preroll) + len(chime) + len(speech))
    assert captured[: len(preroll)] == preroll
    assert any(samples(captured[len(preroll): len(preroll) + len(chime)]))
    assert_played(backend, captured, preroll + chime + speech)

    (entry,) = (tmp_path / "cache").glob("*/*.wav")
    assert read_wav(entry) == (RATE, pcm), "the cache holds the speech as synthesized"

    # the next say (a hit) is shaped the same way, from the unshaped entry
    alsa_sink.clear()
    code, _, err = run(capsys, "-c", make_config(audio=audio(backend, volume=100, chime="none")), "say", text)
    assert code == 0, err
    assert speech_count(fake_coze) == 1
    assert_played(backend, settled(alsa_sink, len(pcm)), pcm)
