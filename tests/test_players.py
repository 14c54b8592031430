"""Players against real ALSA (aplay, simpleaudio) through the hermetic file sink."""

from __future__ import annotations

import shutil
import sys
import threading
import time

import pytest

from alsa_sink import (  # noqa: F401  (fixtures are used by name)
    AlsaSink,
    alsa_broken_default,
    alsa_sink,
    fake_aplay,
    fake_runs,
    hanging_aplay,
    processes_running,
    pid_alive,
    sine_pcm,
)
from coze_speaker.sound.players import (
    AplayPlayer,
    NullPlayer,
    Player,
    PlayerError,
    SimpleaudioPlayer,
    classify_error,
    make_player,
)

BUSY_LINE = "aplay: main:831: audio open error: Device or resource busy"


def chunked(data: bytes, size: int = 4096):
    return [data[i : i + size] for i in range(0, len(data), size)]


def simpleaudio_or_skip():
    try:
        import simpleaudio  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"simpleaudio cannot be imported: {exc}")


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def run_in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, box) where box holds 'result' or 'error'."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def assert_prefix_then_zeros(captured: bytes, data: bytes) -> None:
    assert len(captured) >= len(data)
    assert captured[: len(data)] == data
    assert captured[len(data) :].count(0) == len(captured) - len(data), "padding must be silence"


# ----------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    "text, kind",
    [
        (BUSY_LINE, "busy"),
        ("Error opening PCM device. -- CODE: -16 -- MSG: Device or resource busy", "busy"),
        ("aplay: main:831: audio open error: No such file or directory", "missing"),
        ("ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM nosuch\naplay: main:831: audio open error: No such file or directory", "missing"),
        ("ALSA lib confmisc.c:855:(parse_card) cannot find card '5'", "missing"),
        ("ALSA lib confmisc.c:165:(snd_config_get_card) Cannot get card index for 99\naplay: main:831: audio open error: Invalid argument", "missing"),
        ("Error opening PCM device. -- CODE: -2 -- MSG: No such file or directory", "missing"),
        ("aplay: main:831: audio open error: Invalid argument", "failed"),
        ("aplay: pcm_write:2127: write error: Input/output error", "failed"),
        ("", "failed"),
    ],
)
def test_classify_error(text, kind):
    assert classify_error(text) == kind


def test_player_error_is_one_line():
    err = PlayerError("audio device 'x' is busy:\n  aplay: boom\n", "busy")
    assert str(err) == "audio device 'x' is busy: aplay: boom"
    assert err.kind == "busy"
    assert PlayerError("x", "weird").kind == "failed"


# ----------------------------------------------------------------------------- aplay


@pytest.mark.parametrize("rate", [24000, 48000])
def test_aplay_plays_exact_pcm(alsa_sink, rate):
    data = sine_pcm(rate // 3, rate)
    player = AplayPlayer("default", retries=1)
    assert player.play(chunked(data), rate) is True
    assert player.stopped is False
    assert player.attempts == 1
    assert_prefix_then_zeros(alsa_sink.wait_for(len(data)), data)


def test_aplay_named_pcm_and_odd_chunk_sizes(alsa_sink):
    data = sine_pcm(5000, 16000, freq=300)
    player = AplayPlayer("sink", retries=1)
    assert player.play(chunked(data, 777), 16000) is True  # chunks need not be whole frames
    assert_prefix_then_zeros(alsa_sink.wait_for(len(data)), data)


def test_aplay_empty_stream_plays_nothing(alsa_sink):
    player = AplayPlayer("default")
    assert player.play(iter([]), 24000) is True
    assert player.attempts == 1  # aplay starts before the first chunk exists, then exits idle
    assert alsa_sink.settle().strip(b"\0") == b""  # at most aplay's padding of silence


def test_aplay_streams_before_the_generator_finishes(alsa_sink):
    rate = 24000
    chunks = chunked(sine_pcm(rate // 2, rate), 2400)  # 10 chunks of 50 ms
    assert len(chunks) == 10
    observed = []  # (chunk index, sink size when it was about to be produced)

    def slow():
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.05)
            if i == len(chunks) - 1:
                # Bounded wait for the first audio to reach the sink before the last chunk exists.
                wait_until(lambda: alsa_sink.size() > 0, timeout=5.0)
            observed.append((i, alsa_sink.size()))
            yield chunk

    player = AplayPlayer("default", retries=1)
    assert player.play(slow(), rate) is True
    assert observed[-1][1] > 0, f"nothing reached the sink before the stream ended: {observed}"
    data = b"".join(chunks)
    assert_prefix_then_zeros(alsa_sink.wait_for(len(data)), data)


def test_aplay_stop_from_another_thread(alsa_sink):
    rate = 24000
    chunk = sine_pcm(480, rate)  # 20 ms
    produced = []

    def endless():
        for i in range(1000):  # bounded: 20 s if never stopped
            produced.append(i)
            yield chunk
            time.sleep(0.02)

    player = AplayPlayer("default", retries=1)
    pids = []

    def stopper():
        assert wait_until(lambda: player.pid is not None and alsa_sink.size() > 0)
        pids.append(player.pid)
        player.stop()

    thread, box = run_in_thread(stopper)
    result = player.play(endless(), rate)
    thread.join(10)
    assert "error" not in box, box
    assert result is False
    assert player.stopped is True
    assert pids and pids[0] is not None
    assert wait_until(lambda: not pid_alive(pids[0]), timeout=5)
    assert player.pid is None
    assert len(produced) < 1000


def test_aplay_stop_while_waiting_for_a_slow_chunk(alsa_sink):
    gate = threading.Event()
    rate = 24000

    def stalled():
        yield sine_pcm(2400, rate)
        gate.wait(20)  # a network stream that went quiet
        yield sine_pcm(2400, rate)

    player = AplayPlayer("default", retries=1)
    thread, box = run_in_thread(lambda: player.play(stalled(), rate))
    assert wait_until(lambda: player.pid is not None)
    player.stop()
    thread.join(10)
    returned_before_gate = not gate.is_set()
    gate.set()
    assert not thread.is_alive()
    assert box == {"result": False}
    assert returned_before_gate, "play() waited for the producer instead of returning on stop()"


def test_aplay_stop_before_play_does_not_affect_it(alsa_sink):
    player = AplayPlayer("default")
    player.stop()
    data = sine_pcm(1000, 24000)
    assert player.play([data], 24000) is True


@pytest.mark.parametrize(
    "device, kind, detail",
    [
        ("broken", "missing", "audio open error: No such file or directory"),
        ("hw:99,0", "missing", "audio open error"),
        ("nosuchpcm", "missing", "audio open error: No such file or directory"),
        ("invalid", "failed", "audio open error: Invalid argument"),
        ("ioerror", "failed", "write error"),
    ],
)
def test_aplay_device_errors_after_retries(alsa_sink, device, kind, detail):
    player = AplayPlayer(device, retries=3, backoff=0.01)
    with pytest.raises(PlayerError) as info:
        player.play(chunked(sine_pcm(2400, 24000)), 24000)
    err = info.value
    assert err.kind == kind
    assert player.attempts == 3
    assert f"'{device}'" in str(err) and detail in str(err)
    assert "\n" not in str(err)
    assert player.pid is None


def test_aplay_missing_message_format(alsa_sink):
    player = AplayPlayer("broken", retries=1)
    with pytest.raises(PlayerError) as info:
        player.play([sine_pcm(100, 8000)], 8000)
    assert str(info.value).startswith("audio device 'broken' is missing: aplay: main:")


def test_aplay_busy_device_is_retried_then_reported(tmp_path):
    # No sound card here, so a real EBUSY cannot be had: a stand-in executable fails the
    # way aplay does on a busy device (see alsa_sink.py).
    script = fake_aplay(tmp_path, BUSY_LINE)
    player = AplayPlayer("hw:0,0", aplay=str(script), retries=3, backoff=0.01)
    with pytest.raises(PlayerError) as info:
        player.play(chunked(sine_pcm(2400, 24000)), 24000)
    assert info.value.kind == "busy"
    assert str(info.value) == f"audio device 'hw:0,0' is busy: {BUSY_LINE}"
    assert player.attempts == 3
    assert fake_runs(script) == 3


def test_aplay_retry_replays_the_consumed_chunks(alsa_sink, tmp_path):
    # The first run fails like a busy device, later runs are the real aplay: the
    # announcement must reach the sink exactly once and whole.
    real = shutil.which("aplay")
    assert real, "aplay (alsa-utils) is needed"
    runs = tmp_path / "runs"
    script = tmp_path / "flaky-aplay"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"n = len(open({str(runs)!r}).read()) if os.path.exists({str(runs)!r}) else 0\n"
        f"open({str(runs)!r}, 'a').write('x')\n"
        "if n == 0:\n"
        f"    sys.stderr.write({BUSY_LINE!r} + '\\n'); sys.exit(1)\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n"
    )
    script.chmod(0o755)
    rate = 24000
    data = sine_pcm(rate // 2, rate)
    chunks = chunked(data, 2400)

    def slowish():
        for i, c in enumerate(chunks):
            if i:
                time.sleep(0.01)
            yield c

    player = AplayPlayer("default", aplay=str(script), retries=3, backoff=0.01)
    assert player.play(slowish(), rate) is True
    assert player.attempts == 2
    assert runs.read_text() == "xx"
    alsa_sink.wait_for(len(data))
    assert_prefix_then_zeros(alsa_sink.settle(), data)  # once, whole: not twice
    assert len(alsa_sink.read()) < 2 * len(data)


def test_aplay_binary_missing():
    player = AplayPlayer("default", aplay="/nonexistent/aplay", retries=3, backoff=0.01)
    with pytest.raises(PlayerError) as info:
        player.play([sine_pcm(100, 24000)], 24000)
    assert info.value.kind == "missing"
    assert "/nonexistent/aplay" in str(info.value)
    assert player.attempts == 1


def test_aplay_that_stops_reading_is_killed(tmp_path):
    script = hanging_aplay(tmp_path)
    player = AplayPlayer("default", aplay=str(script), retries=1, stall_timeout=0.3)
    data = sine_pcm(48000 * 10, 48000)  # ~1 MB: far more than a pipe holds
    with pytest.raises(PlayerError) as info:
        player.play(chunked(data, 65536), 48000)
    assert info.value.kind == "failed"
    assert "accepted no audio" in str(info.value)
    assert wait_until(lambda: not processes_running(script), timeout=5), "the stuck aplay is still running"


def test_aplay_that_never_exits_is_killed(tmp_path):
    script = hanging_aplay(tmp_path, read_stdin=True)
    player = AplayPlayer("default", aplay=str(script), retries=1, exit_grace=0.2)
    with pytest.raises(PlayerError) as info:
        player.play([sine_pcm(2400, 24000)], 24000)
    assert info.value.kind == "failed"
    assert "did not finish" in str(info.value)
    assert wait_until(lambda: not processes_running(script), timeout=5), "the stuck aplay is still running"


def test_aplay_hung_child_can_be_stopped(tmp_path):
    script = hanging_aplay(tmp_path)
    pidfile = tmp_path / "hanging-aplay.pid"
    player = AplayPlayer("default", aplay=str(script), retries=1, stall_timeout=60)
    data = sine_pcm(48000 * 10, 48000)
    thread, box = run_in_thread(lambda: player.play(chunked(data, 65536), 48000))
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text() != "")
    player.stop()
    thread.join(10)
    assert box == {"result": False}
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


def test_aplay_source_error_reaches_the_caller(alsa_sink):
    class Boom(Exception):
        pass

    def failing():
        yield sine_pcm(2400, 24000)
        yield sine_pcm(2400, 24000)
        raise Boom("network went away")

    player = AplayPlayer("default", retries=3)
    with pytest.raises(Boom):
        player.play(failing(), 24000)
    assert player.attempts == 1
    assert player.pid is None


def test_aplay_rejects_bad_rate():
    with pytest.raises(ValueError):
        AplayPlayer().play([b"\0\0"], 0)


# ----------------------------------------------------------------------------- simpleaudio


@pytest.mark.parametrize("rate", [24000, 48000])
def test_simpleaudio_plays_exact_pcm(alsa_sink, rate):
    simpleaudio_or_skip()
    data = sine_pcm(rate // 3, rate)
    player = SimpleaudioPlayer()
    assert player.play(chunked(data, 1000), rate) is True
    alsa_sink.wait_for(len(data))
    assert alsa_sink.settle() == data


def test_simpleaudio_follows_a_changed_alsa_config_in_process(tmp_path, monkeypatch):
    """libasound re-reads ALSA_CONFIG_PATH at each open (snd_config_update), so one process
    can play into two different sinks: a function-scoped fixture is enough."""
    simpleaudio_or_skip()
    first, second = AlsaSink(tmp_path / "one"), AlsaSink(tmp_path / "two")
    a, b = sine_pcm(3000, 24000, freq=200), sine_pcm(2000, 24000, freq=900)
    player = SimpleaudioPlayer()
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(first.config_path))
    assert player.play([a], 24000)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(second.config_path))
    assert player.play([b], 24000)
    first.wait_for(len(a))
    second.wait_for(len(b))
    assert first.settle() == a
    assert second.settle() == b


def test_simpleaudio_open_error_is_retried(alsa_broken_default):
    simpleaudio_or_skip()
    player = SimpleaudioPlayer(retries=3, backoff=0.01)
    with pytest.raises(PlayerError) as info:
        player.play([sine_pcm(2400, 24000)], 24000)
    assert info.value.kind == "missing"
    assert player.attempts == 3
    assert str(info.value).startswith("audio device 'default' is missing: simpleaudio:")


def test_simpleaudio_stop_while_collecting(alsa_sink):
    simpleaudio_or_skip()
    gate, started = threading.Event(), threading.Event()

    def stalled():
        yield sine_pcm(2400, 24000)
        started.set()  # play() is running: its source thread pulls this generator
        gate.wait(20)
        yield sine_pcm(2400, 24000)

    player = SimpleaudioPlayer()
    thread, box = run_in_thread(lambda: player.play(stalled(), 24000))
    assert started.wait(10)
    player.stop()
    thread.join(10)
    returned_before_gate = not gate.is_set()
    gate.set()
    assert box == {"result": False}
    assert returned_before_gate
    assert alsa_sink.read() == b""


# ----------------------------------------------------------------------------- null


def test_null_player_consumes_everything():
    consumed = []

    def source():
        for i in range(50):
            consumed.append(i)
            yield bytes([i]) * 100

    player = NullPlayer()
    assert player.play(source(), 24000) is True
    assert consumed == list(range(50))
    assert player.bytes_played == 5000
    assert player.chunks_played == 50


def test_realtime_null_player_can_be_stopped():
    player = NullPlayer(realtime=True)
    ten_seconds = b"\0" * (2 * 24000 * 10)
    thread, box = run_in_thread(lambda: player.play([ten_seconds, ten_seconds], 24000))
    assert wait_until(lambda: player.chunks_played >= 1)
    player.stop()
    thread.join(10)
    assert box == {"result": False}
    assert player.stopped is True


def test_realtime_null_player_finishes_short_audio():
    player = NullPlayer(realtime=True)
    assert player.play([b"\0" * 480] * 5, 24000) is True  # 50 ms


# ----------------------------------------------------------------------------- factory


def test_make_player_auto_picks_alsa_when_pyalsaaudio_is_installed():
    pytest.importorskip("alsaaudio")
    player = make_player("auto", "hw:1,0", retries=5, keep_open=2.5, wake_ms=300, aplay="/x/aplay")
    assert player.name == "alsa"
    assert (player.device, player.retries, player.keep_open, player.wake_ms) == ("hw:1,0", 5, 2.5, 300)


def test_make_player_auto_picks_aplay_when_on_path(monkeypatch):
    if not shutil.which("aplay"):
        pytest.skip("aplay is not on PATH")
    monkeypatch.setitem(sys.modules, "alsaaudio", None)  # pyalsaaudio "not installed"
    player = make_player("auto", "hw:1,0", retries=5)
    assert isinstance(player, AplayPlayer)
    assert player.name == "aplay"
    assert player.device == "hw:1,0"
    assert player.retries == 5


def test_make_player_auto_falls_back_to_simpleaudio(tmp_path, monkeypatch):
    simpleaudio_or_skip()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "alsaaudio", None)
    player = make_player("auto", retries=2, realtime=True)
    assert isinstance(player, SimpleaudioPlayer)
    assert player.retries == 2


def test_make_player_auto_without_any_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "simpleaudio", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "alsaaudio", None)
    with pytest.raises(PlayerError) as info:
        make_player("auto")
    assert info.value.kind == "missing"
    assert str(info.value) == ("no audio backend: install pyalsaaudio (coze-speaker[alsa]), alsa-utils or "
                               "simpleaudio")


def test_make_player_named_backends():
    assert isinstance(make_player("aplay", aplay="/x/aplay"), AplayPlayer)
    null = make_player("null", realtime=True, retries=3)
    assert isinstance(null, NullPlayer) and null.realtime and null.name == "null"
    assert isinstance(null, Player)
    with pytest.raises(ValueError):
        make_player("pulse")
