"""The in-process alsa player (pyalsaaudio) against the hermetic ALSA file sink, byte for byte.

The sink (tests/alsa_sink.py) records what libasound was given and counts the PCM's opens;
its null PCM has no clock, so 'plays' take no time and a keep-open feed that were not paced
by the clock would write without end. Assertions are about bytes, positions and opens,
never about how long something took; every wait is bounded.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

import pytest

from alsa_sink import AlsaSink, alsa_broken_default, alsa_sink, alsa_plugins, sine_pcm  # noqa: F401
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from test_daemon import EVENT, SAY, pcm, start_daemon  # noqa: F401  (start_daemon is a fixture)
from test_daemon import RATE as D_RATE
from test_players import chunked, run_in_thread, wait_until

pytest.importorskip("alsaaudio", reason="pyalsaaudio is not installed (pip install -e '.[test]')")

from coze_speaker.sound.alsa_player import LEAD_PERIODS, AlsaPlayer  # noqa: E402
from coze_speaker.sound.devices import probe_rates, rates_from_getrates, resolve_sample_rate  # noqa: E402
from coze_speaker.sound.players import PlayerError, make_player  # noqa: E402
from coze_speaker.vocabulary import SAMPLE_RATES  # noqa: E402


def runs(data: bytes):
    """[(audible?, frames)] of s16 frames: where the capture is sound and where silence."""
    frames = (data[i:i + 2] != b"\0\0" for i in range(0, len(data) - 1, 2))
    return [(audible, len(list(group))) for audible, group in itertools.groupby(frames)]


def closed(player: AlsaPlayer, sink: AlsaSink) -> bytes:
    """Close the player (the PCM flushes into the sink) and return the settled capture."""
    player.close()
    assert not player.is_open
    assert not any(t.name == "coze-speaker-keepopen" for t in threading.enumerate()), "keep-open thread left"
    return sink.settle()


# ----------------------------------------------------------------------------- playing


@pytest.mark.parametrize("rate", [24000, 48000])
def test_alsa_plays_exact_pcm(alsa_sink, rate):
    data = sine_pcm(rate // 3, rate)
    player = AlsaPlayer("default", retries=1)
    assert player.play(chunked(data), rate) is True
    assert player.stopped is False and player.attempts == 1
    assert player.opens == 1 and not player.is_open  # keep_open 0: closed after the play
    assert alsa_sink.settle() == data  # no padding: the device got exactly the audio
    assert alsa_sink.opens() == 1


def test_alsa_named_pcm_and_odd_chunk_sizes(alsa_sink):
    data = sine_pcm(5000, 16000, freq=300)
    player = AlsaPlayer("sink", retries=1)
    assert player.play(chunked(data, 777), 16000) is True  # chunks need not be whole frames
    assert alsa_sink.settle() == data


def test_alsa_empty_stream_plays_nothing(alsa_sink):
    player = AlsaPlayer("default", retries=1)
    assert player.play(iter([]), 24000) is True
    assert alsa_sink.settle() == b""


def test_alsa_source_error_reaches_the_caller(alsa_sink):
    class Boom(Exception):
        pass

    def failing():
        yield sine_pcm(2400, 24000)
        raise Boom("network went away")

    player = AlsaPlayer("default", retries=3)
    with pytest.raises(Boom):
        player.play(failing(), 24000)
    assert player.attempts == 1 and not player.is_open


def test_alsa_rejects_bad_rate():
    with pytest.raises(ValueError):
        AlsaPlayer().play([b"\0\0"], 0)


def test_make_player_alsa(alsa_sink):
    player = make_player("alsa", "sink", keep_open=0, wake_ms=0, realtime=True, aplay="/x/aplay")
    assert isinstance(player, AlsaPlayer) and player.device == "sink"
    data = sine_pcm(1000, 24000)
    assert player.play([data], 24000) is True
    assert alsa_sink.settle() == data


def test_make_player_alsa_without_pyalsaaudio_says_how_to_get_it(monkeypatch):
    import coze_speaker.sound.alsa_player as alsa_player

    monkeypatch.setitem(sys.modules, "alsaaudio", None)  # import now raises ImportError
    monkeypatch.setattr(alsa_player, "_alsaaudio", None)
    assert alsa_player.alsa_available() is False
    with pytest.raises(PlayerError) as info:
        make_player("alsa")
    assert info.value.kind == "missing"
    assert str(info.value).startswith("pyalsaaudio is not installed (")
    assert str(info.value).endswith("pip install 'coze-speaker[alsa]'")


# ----------------------------------------------------------------------------- device errors


@pytest.mark.parametrize("device, kind, detail", [
    ("broken", "missing", "No such file or directory"),
    ("nosuchpcm", "missing", "No such file or directory"),
    ("invalid", "failed", "Invalid argument"),
])
def test_alsa_device_errors_after_retries(alsa_sink, device, kind, detail):
    player = AlsaPlayer(device, retries=3, backoff=0.01)
    with pytest.raises(PlayerError) as info:
        player.play(chunked(sine_pcm(2400, 24000)), 24000)
    assert info.value.kind == kind
    assert player.attempts == 3
    assert str(info.value).startswith(f"audio device '{device}' is ") or kind == "failed"
    assert f"'{device}'" in str(info.value) and detail in str(info.value)
    assert "\n" not in str(info.value) and f"[{device}]" not in str(info.value)
    assert not player.is_open and player.opens == 0


def test_alsa_busy_device_fails_at_once_and_is_reported(alsa_sink, alsa_plugins):
    # The "busy" PCM fails every open with EBUSY inside libasound (tests/alsa_plugins.c).
    alsa_sink.add_plugins(alsa_plugins)
    player = AlsaPlayer("busy", retries=3, backoff=0.01)
    with pytest.raises(PlayerError) as info:
        player.play(chunked(sine_pcm(2400, 24000)), 24000)
    assert info.value.kind == "busy"
    assert str(info.value) == "audio device 'busy' is busy: Device or resource busy"
    assert player.attempts == 3
    # Each attempt asked for a non-blocking open: a held card fails at once instead of hanging.
    assert alsa_sink.busy_opens() == ["nonblock"] * 3
    assert alsa_sink.read() == b""


def test_alsa_busy_then_free_plays_once_whole(alsa_sink, alsa_plugins):
    # "speaker" is busy for the first attempt; then it is the sink (libasound re-reads its
    # config at the next open). The announcement reaches the sink exactly once.
    alsa_sink.add_plugins(alsa_plugins)
    config = alsa_sink.config_path
    text = config.read_text()
    config.write_text(text + 'pcm.speaker "busy"\n')
    rate = 24000
    data = sine_pcm(rate // 2, rate)
    player = AlsaPlayer("speaker", retries=8, backoff=0.05)

    def free_it():
        assert wait_until(lambda: len(alsa_sink.busy_opens()) >= 1)
        tmp = config.with_name("asound.conf.free")
        tmp.write_text(text + 'pcm.speaker "sink"\n')
        tmp.replace(config)

    thread, box = run_in_thread(free_it)
    assert player.play(chunked(data, 2400), rate) is True
    thread.join(10)
    assert "error" not in box, box
    assert 2 <= player.attempts <= 8
    assert player.attempts == len(alsa_sink.busy_opens()) + 1
    assert alsa_sink.settle() == data


@pytest.mark.parametrize("device, plays", [
    ("stereo", "S16_LE 2 channel(s) at 48000 Hz"),  # a hw: device that takes stereo only
    ("only44k", "S16_LE 1 channel(s) at 44100 Hz"),  # one that would play 48 kHz audio too slow
])
def test_alsa_refuses_what_the_device_would_play_wrongly(alsa_sink, alsa_plugins, device, plays):
    alsa_sink.add_plugins(alsa_plugins)
    player = AlsaPlayer(device, retries=1)
    with pytest.raises(PlayerError) as info:
        player.play([sine_pcm(4800, 48000)], 48000)
    assert info.value.kind == "failed"
    assert str(info.value) == (f"playback on audio device '{device}' failed: it plays {plays}, not S16_LE mono "
                               "at 48000 Hz (use plughw: or default)")
    assert not player.is_open


# ----------------------------------------------------------------------------- stop


def test_alsa_stop_writes_nothing_handed_over_after_it(alsa_sink):
    """stop() from another thread: of what the producer yields after stop() returned, not a
    byte reaches the device; what it had before is there unchanged (no padding)."""
    rate = 24000
    chunk_frames = 480  # 20 ms
    data = sine_pcm(chunk_frames * 500, rate)
    chunks = chunked(data, 2 * chunk_frames)
    player = AlsaPlayer("default", retries=1)
    at_stop = []

    def producer():
        for i, chunk in enumerate(chunks):
            if i == 25:  # the source thread stops the player, then goes on producing
                player.stop()
                at_stop.append(i)
            yield chunk
        raise AssertionError("the producer was drained after stop()")

    assert player.play(producer(), rate) is False
    assert player.stopped is True
    captured = alsa_sink.settle()
    assert at_stop == [25]
    assert len(captured) <= 25 * 2 * chunk_frames, "audio handed over after stop() was played"
    assert captured == data[: len(captured)]
    assert not player.is_open


def test_alsa_stop_while_waiting_for_a_slow_chunk(alsa_sink):
    gate = threading.Event()

    def stalled():
        yield sine_pcm(2400, 24000)
        gate.wait(20)  # a network stream that went quiet
        yield sine_pcm(2400, 24000)

    player = AlsaPlayer("default", retries=1, keep_open=30)
    thread, box = run_in_thread(lambda: player.play(stalled(), 24000))
    assert wait_until(lambda: player.opens == 1 and alsa_sink.opens() == 1)  # the pipe command ran
    player.stop()
    thread.join(10)
    returned_before_gate = not gate.is_set()
    gate.set()
    assert box == {"result": False}
    assert returned_before_gate, "play() waited for the producer instead of returning on stop()"
    assert player.is_open, "a stopped announcement leaves the device warm for the next"
    player.close()


def test_alsa_stop_before_play_does_not_affect_it(alsa_sink):
    player = AlsaPlayer("default")
    player.stop()
    data = sine_pcm(1000, 24000)
    assert player.play([data], 24000) is True
    assert alsa_sink.settle() == data


# ----------------------------------------------------------------------------- keep_open, wake_ms


def test_alsa_follow_up_within_keep_open_opens_nothing(alsa_sink):
    rate = 24000
    a, b = sine_pcm(rate // 4, rate, freq=300), sine_pcm(rate // 5, rate, freq=900)
    player = AlsaPlayer("default", retries=1, keep_open=60)
    assert player.play(chunked(a), rate) is True
    assert player.is_open
    assert player.play(chunked(b), rate) is True
    assert player.opens == 1, "the follow-up opened the device again"
    captured = closed(player, alsa_sink)
    assert alsa_sink.opens() == 1, "the sink saw a second open"
    # one stream: a, the silence that kept the device busy, b, silence until the close
    shape = runs(captured)
    assert [audible for audible, _ in shape][:3] == [True, False, True], shape[:4]
    assert captured[: len(a)] == a
    gap = shape[1][1]
    assert captured[len(a) + 2 * gap: len(a) + 2 * gap + len(b)] == b
    assert alsa_sink.opens() == 1


def test_alsa_without_keep_open_every_play_opens(alsa_sink):
    rate = 24000
    a, b = sine_pcm(rate // 4, rate, freq=300), sine_pcm(rate // 5, rate, freq=900)
    player = AlsaPlayer("default", retries=1, keep_open=0)
    assert player.play([a], rate) is True
    assert player.play([b], rate) is True
    assert player.opens == 2 and alsa_sink.opens() == 2
    assert alsa_sink.settle() == a + b  # and no silence between them


def test_alsa_keep_open_silence_is_paced_by_the_clock_and_ends(alsa_sink):
    """The sink takes data faster than real time; the silence fed while the device is kept
    open must still follow the clock (no busy loop), and stop when keep_open runs out."""
    rate = 8000
    a = sine_pcm(800, rate)
    keep = 0.5
    player = AlsaPlayer("default", retries=1, keep_open=keep)
    before = time.monotonic()
    assert player.play([a], rate) is True
    assert wait_until(lambda: not player.is_open, timeout=30), "the kept-open device was never closed"
    elapsed = time.monotonic() - before
    assert not any(t.name == "coze-speaker-keepopen" for t in threading.enumerate())
    captured = alsa_sink.settle()
    assert captured[: len(a)] == a and captured[len(a):].count(0) == len(captured) - len(a)
    silence_frames = (len(captured) - len(a)) // 2
    period = rate * player.period_ms // 1000
    # never more than the clock allows (plus the lead and a period of rounding)
    assert silence_frames <= elapsed * rate + (LEAD_PERIODS + 1) * period, (silence_frames, elapsed)
    assert silence_frames >= LEAD_PERIODS * period // 2, "no silence was fed"
    assert player.opens == 1 and alsa_sink.opens() == 1


def test_alsa_wake_silence_only_on_a_cold_start(alsa_sink):
    rate = 24000
    wake = bytes(2 * rate * 100 // 1000)  # wake_ms=100
    a, b, c = (sine_pcm(rate // 5, rate, freq=f) for f in (300, 600, 900))
    player = AlsaPlayer("default", retries=1, keep_open=0.3, wake_ms=100)
    assert player.play([a], rate) is True  # cold: wake first
    assert player.play([b], rate) is True  # warm: straight after the kept-open silence
    assert wait_until(lambda: not player.is_open, timeout=30)  # keep_open ran out
    assert player.play([c], rate) is True  # cold again
    captured = closed(player, alsa_sink)
    assert player.opens == 2 and alsa_sink.opens() == 2
    # The capture is wake + a, silence, b, silence | wake + c, silence: a and c are preceded by
    # exactly the wake silence; the silence before b is the kept-open feed, which ended with
    # the device's close (the second open's pipe wrote its own stream after it).
    assert captured[: len(wake) + len(a)] == wake + a
    shape = runs(captured)
    assert [audible for audible, _ in shape] == [False, True, False, True, False, True, False][: len(shape)]
    assert len(shape) in (6, 7)
    first_stream_end = captured.index(b) + len(b)
    rest = captured[first_stream_end:]
    c_at = rest.index(c)
    assert rest[c_at - len(wake): c_at] == wake
    assert captured.count(b) == 1 and captured.count(c) == 1
    # Every byte accounted for: two wakes (a, c), the audio, and the silence the keep-open
    # feed wrote. A wake before b would be one wake too many here.
    assert len(captured) == 2 * len(wake) + len(a) + len(b) + len(c) + 2 * player.silence_frames


def test_alsa_close_ends_keep_open_at_once(alsa_sink):
    player = AlsaPlayer("default", retries=1, keep_open=600)
    assert player.play([sine_pcm(480, 24000)], 24000) is True
    assert player.is_open
    player.close()
    assert not player.is_open
    assert not any(t.name == "coze-speaker-keepopen" for t in threading.enumerate())


def test_alsa_rate_change_reopens(alsa_sink):
    player = AlsaPlayer("default", retries=1, keep_open=60)
    a, b = sine_pcm(480, 24000), sine_pcm(960, 48000)
    assert player.play([a], 24000) is True
    assert player.play([b], 48000) is True
    player.close()
    alsa_sink.settle()
    assert player.opens == 2 and alsa_sink.opens() == 2


# ----------------------------------------------------------------------------- probing


def test_rates_from_getrates():
    assert rates_from_getrates(48000) == ((48000,), (48000, 48000))
    assert rates_from_getrates(44056) == ((), (44056, 44056))
    assert rates_from_getrates((8000, 192000)) == (SAMPLE_RATES, (8000, 192000))
    assert rates_from_getrates((44100, 48000)) == ((44100, 48000), (44100, 48000))
    assert rates_from_getrates([32000, 44100, 48000, 96000]) == ((32000, 44100, 48000), (32000, 96000))
    assert rates_from_getrates([]) == ((), None)
    assert rates_from_getrates(None) == ((), None)
    assert rates_from_getrates(True) == ((), None)


def test_probe_rates_in_process(alsa_sink, alsa_plugins):
    assert probe_rates("sink", via="alsa") == (SAMPLE_RATES, (1, 4294967295))
    assert probe_rates("broken", via="alsa") == ((), None)
    alsa_sink.add_plugins(alsa_plugins)
    assert probe_rates("busy", via="alsa") == ((), None)
    assert alsa_sink.busy_opens() == ["nonblock"]
    assert alsa_sink.opens() == 1 and alsa_sink.read() == b""  # probing plays nothing
    assert resolve_sample_rate("auto", "hw:9,0", via="alsa") == 48000
    assert probe_rates("stereo", via="alsa") == ((44100, 48000), (44100, 48000))  # a list of rates
    assert probe_rates("only44k", via="alsa") == ((44100,), (44100, 44100))  # a single rate


# ----------------------------------------------------------------------------- the daemon


def test_daemon_follow_up_plays_on_the_warm_device(start_daemon, probe, alsa_sink):
    """Through the daemon's config (audio.keep_open, audio.wake_ms): the second announcement
    uses the PCM the first one left open; the device is opened once, woken once."""
    r = start_daemon(audio={"backend": "alsa", "keep_open": 60, "wake_ms": 100})
    assert r.daemon.player.name == "alsa"
    probe.publish(SAY, {"text": "The mail has arrived", "id": "one"})
    assert probe.wait_event(EVENT, id="one", event="finished")
    probe.publish(SAY, {"text": "The garage door is open", "id": "two"})
    assert probe.wait_event(EVENT, id="two", event="finished")
    assert r.daemon.player.opens == 1
    r.stop()  # closes the device: what it held reaches the sink
    captured = alsa_sink.settle()
    assert alsa_sink.opens() == 1
    wake = bytes(2 * D_RATE * 100 // 1000)
    one, two = pcm("The mail has arrived"), pcm("The garage door is open")
    assert captured.startswith(wake + one)
    rest = captured[len(wake) + len(one):]
    at = rest.index(two)
    assert rest[:at].count(0) == at and rest[at + len(two):].count(0) == len(rest) - at - len(two)


def test_daemon_retries_a_busy_device_within_the_ttl_then_fails(start_daemon, probe, alsa_sink, alsa_plugins):
    """The worker's retry policy with the in-process back end: each attempt is one
    non-blocking open that fails at once (kind 'busy'); at the TTL the announcement fails."""
    alsa_sink.add_plugins(alsa_plugins)
    r = start_daemon(audio={"backend": "alsa", "device": "busy"})
    probe.publish(SAY, {"text": "device busy", "id": "b", "ttl": 2.5})
    ev = probe.wait_event(EVENT, id="b", event="failed", timeout=30)
    assert ev["error"]["code"] == "audio_busy"
    assert ev["error"]["message"] == "audio device 'busy' is busy: Device or resource busy"
    opens = alsa_sink.busy_opens()
    assert len(opens) >= 2 and set(opens) == {"nonblock"}, opens  # retried; never a blocking open
    assert r.thread.is_alive() and not r.daemon.player.is_open


def test_a_pyalsaaudio_older_than_0_11_counts_as_missing(monkeypatch, tmp_path):
    """Told from its .dist-info on sys.path, without importing importlib.metadata (0.4 MB)."""
    import coze_speaker.sound.alsa_player as alsa_player

    (tmp_path / "pyalsaaudio-0.10.0.dist-info").mkdir()
    (tmp_path / "other_thing-9.0-py3.11.egg-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert alsa_player.installed_version("pyalsaaudio") == "0.10.0"
    assert alsa_player.installed_version("other-thing") == "9.0"
    assert alsa_player.alsa_available() is False
    (tmp_path / "pyalsaaudio-0.10.0.dist-info").rename(tmp_path / "pyalsaaudio-0.12.1.dist-info")
    assert alsa_player.alsa_available() is True
