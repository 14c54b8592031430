"""A broadcast starts at one instant in every room (issue 13 item 4).

Real parts: `coze-speaker run` processes with the in-process alsa player (pyalsaaudio)
into their own hermetic ALSA file sinks, one mosquitto, the fake Coze; the start cue and
the player's silence against the real sink, byte for byte; the kernel's clock state read
through the real adjtimex. The sink has no clock, so nothing here asserts how long
anything took: what is asserted is the plan every room reports, what each sink received
(silence in whole frames, then the audio byte-identical) and the order of events.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Dict, List
from urllib.parse import urlsplit

import pytest
import yaml

from alsa_sink import alsa_sink, sine_pcm  # noqa: F401  (fixture)
from conftest import TOKEN  # noqa: F401
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from test_daemon import RATE, B
from test_fleet import ROOMS, Speaker, fleet_audio, heard, house, pcm, speech_calls  # noqa: F401
from test_players import chunked, run_in_thread

pytest.importorskip("alsaaudio", reason="pyalsaaudio is not installed (pip install -e '.[test]')")

from coze_speaker.cancel import CancelToken  # noqa: E402
from coze_speaker.sound.alsa_player import AlsaPlayer  # noqa: E402

try:  # the process tests run against any version; these are what they test
    from coze_speaker.cue import StartCue, when_started
    from coze_speaker.sound.schedule import due_out, silence_before
except ImportError:  # pragma: no cover - checked by running the suite without the code
    StartCue = when_started = due_out = silence_before = None  # type: ignore


@pytest.fixture
def alsa_house(house, monkeypatch):
    """The fleet fixture of test_fleet.py, each speaker playing through the in-process alsa
    player with `audio` (default: keep_open 0, so every announcement opens the device anew)."""
    def build(audio=None, **kw):
        start = Speaker.start

        def alsa_start(self):
            data = yaml.safe_load(self.config.read_text())
            data["audio"].update({"backend": "alsa", "keep_open": 0, **(audio or {})})
            self.config.write_text(yaml.safe_dump(data))
            return start(self)
        monkeypatch.setattr(Speaker, "start", alsa_start)
        return house(**kw)
    return build


def started(probe, speaker, ann_id: str) -> dict:
    found = probe.events(speaker.event, id=ann_id, event="started")
    assert len(found) == 1, f"{speaker.device}: {found}"
    return found[0]


def order_of(h, text: str, rooms: List[str]) -> List[str]:
    """The agreed order (rendezvous) of the rooms for the first piece of `text`."""
    from coze_speaker.config import load_config
    from coze_speaker.mqtt.fleet import rendezvous
    from coze_speaker.voice.request import RequestBuilder
    from coze_speaker.voice.source import AudioSource

    config = load_config(h[rooms[0]].config)
    request = RequestBuilder(config, RATE).build(text)
    key = AudioSource(None, None, host=urlsplit(config.coze.base_url).netloc).key(request.pieces[0], request)
    return rendezvous(key, list(rooms))


def silence_then(data: bytes, audio: bytes) -> int:
    """The capture is silence in whole frames, then `audio` byte for byte (then silence):
    returns the frames of silence before it."""
    at = data.find(audio)
    assert at >= 0, "the audio is not in the capture byte for byte"
    assert at % 2 == 0, "the silence before the audio is not whole frames"
    assert not data[:at].strip(b"\0") and not data[at + len(audio):].strip(b"\0")
    return at // 2


# -- every room on one plan --------------------------------------------------------------------

def test_every_room_of_a_broadcast_reports_the_same_planned_start_and_opens_its_device_ahead(alsa_house, probe,
                                                                                            fake_coze):
    rooms = ROOMS[:4]
    h = alsa_house(rooms=rooms)
    text = "The school bus is at the corner."
    probe.publish(f"{B}/all/say", {"text": text, "id": "bus"})
    h.wait_finished("bus")
    assert speech_calls(fake_coze) == 1
    starts = {room: started(probe, h[room], "bus") for room in rooms}
    plans = {s["planned_start"] for s in starts.values()}
    assert len(plans) == 1, f"the rooms started on different plans: {starts}"
    assert all(s["synchronized"] is True and isinstance(s["start_error_ms"], (int, float)) for s in starts.values())
    carried = [m["at"] for m in fleet_audio(probe) if "at" in m]
    assert len(carried) == 1 and round(carried[0], 4) == plans.pop()  # the stream's first message carries it
    for room in rooms:
        # keep_open 0: the device was opened (once) and fed silence before the first audio frame
        assert silence_then(h[room].sink.settle(), pcm(text)) > 0, room
        assert h[room].sink.opens() == 1, room


def test_a_room_that_has_the_phrase_cached_waits_for_the_plan(alsa_house, probe, fake_coze):
    rooms = ROOMS[:3]
    h = alsa_house(rooms=rooms)
    text = next(t for t in (f"The post has arrived, round {n}." for n in range(20))
                if order_of(h, t, rooms)[0] != "hall")  # the hall is not the one that streams it
    probe.publish(f"{B}/hall/say", {"text": text, "id": "post1"})  # now only the hall has it cached
    h.wait_finished("post1", rooms=["hall"])
    h["hall"].sink.clear()
    probe.publish(f"{B}/all/say", {"text": text, "id": "post2"})
    h.wait_finished("post2")
    hall = started(probe, h["hall"], "post2")
    others = [started(probe, h[room], "post2") for room in rooms[1:]]
    assert [e for e in probe.events(h["hall"].event, id="post2", event="finished") if e.get("cached")]
    assert "planned_start" in hall, f"the hall started at once instead of on the plan: {hall}"
    assert {hall["planned_start"]} == {o["planned_start"] for o in others}
    assert silence_then(h["hall"].sink.settle(), pcm(text)) > 0


def test_a_coordinator_frozen_before_its_plan_the_others_still_speak_unsynchronized(alsa_house, probe, fake_coze):
    rooms = ROOMS[:3]
    h = alsa_house(rooms=rooms)
    text = "The laundry is dry."
    probe.publish(f"{B}/all/say", {"text": text, "id": "dry1"})  # every room caches it
    h.wait_finished("dry1")
    coordinator, *others = order_of(h, text, rooms)
    frozen = h[coordinator].proc
    frozen.proc.send_signal(signal.SIGSTOP)  # online (no will) but sends nothing: no plan comes
    try:
        before = len(fleet_audio(probe))
        probe.publish(f"{B}/all/say", {"text": text, "id": "dry2"})
        h.wait_finished("dry2", rooms=others)
        for room in others:
            start = started(probe, h[room], "dry2")
            assert start.get("synchronized") is False and "planned_start" not in start, f"{room}: {start}"
            assert heard(h[room], text, text), room
        assert len(fleet_audio(probe)) == before  # nobody else streamed or planned it
        assert speech_calls(fake_coze) == 1
    finally:
        frozen.kill(signal.SIGKILL)


def test_stop_while_waiting_for_the_plan_ends_the_wait_at_once(alsa_house, probe, fake_coze):
    rooms = ROOMS[:2]
    h = alsa_house(rooms=rooms, takeover=20)  # the plan's wait would last 20 s
    text = "The oven is preheated."
    probe.publish(f"{B}/all/say", {"text": text, "id": "oven1"})
    h.wait_finished("oven1")
    coordinator, waiter = order_of(h, text, rooms)
    frozen = h[coordinator].proc
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        h[waiter].sink.clear()
        probe.publish(f"{B}/all/say", {"text": text, "id": "oven2"})
        probe.wait_for(lambda _: probe.events(h[waiter].event, id="oven2", event="queued"), timeout=10)
        probe.publish(f"{B}/{waiter}/stop", b"")
        final = probe.wait_for(lambda _: [e for e in probe.events(h[waiter].event, id="oven2")
                                          if e["event"] not in ("queued", "started")], timeout=10)
        assert final[0]["event"] == "interrupted" and final[0]["reason"] == "stopped", final
        kinds = [e["event"] for e in probe.events(h[waiter].event, id="oven2")]
        assert kinds == ["queued", "started", "interrupted"], kinds
        # stopped in the wait, not given up at its bound, and not a sample of the audio played
        assert "synchronized" not in started(probe, h[waiter], "oven2")
        assert not h[waiter].sink.settle().strip(b"\0")
    finally:
        frozen.kill(signal.SIGKILL)


def test_fleet_sync_false_is_todays_behaviour(alsa_house, probe, fake_coze):
    rooms = ROOMS[:3]
    h = alsa_house(rooms=rooms, sync=False)
    text = "Homework time."
    probe.publish(f"{B}/all/say", {"text": text, "id": "hw"})
    h.wait_finished("hw")
    assert speech_calls(fake_coze) == 1
    assert not [m for m in fleet_audio(probe) if "at" in m]
    for room in rooms:
        start = started(probe, h[room], "hw")
        assert not {"planned_start", "start_error_ms", "synchronized"} & set(start), start
        assert h[room].sink.settle() == pcm(text), room  # no silence ahead: the device gets the audio only


# -- the cue --------------------------------------------------------------------------------------

def test_the_cue_keeps_the_earliest_plan_and_reports_the_start():
    reports: List[Dict] = []
    cue = StartCue(CancelToken())
    finish = when_started(cue, reports.append)
    cue.expect(5.0)
    now = time.time()
    assert cue.propose(now + 2) == now + 2
    assert cue.propose(now + 1) == now + 1  # an earlier plan wins
    assert cue.propose(now + 3) == now + 1  # a later one does not
    assert cue.wait_plan(lambda: False) == now + 1
    assert reports == []  # nothing until the device starts
    cue.settle(now + 1.002)
    assert reports == [{"planned_start": round(now + 1, 4), "start_error_ms": 2.0, "synchronized": True}]
    finish()
    assert len(reports) == 1  # reported once
    assert cue.propose(now) == now + 1  # settled: plans no longer change it


def test_the_cue_without_a_plan_gives_up_at_its_bound_and_a_stop_ends_the_wait():
    reports: List[Dict] = []
    cue = StartCue(CancelToken())
    when_started(cue, reports.append)
    cue.expect(0.2)
    assert cue.wait_plan(lambda: False) is None
    assert reports == [{"synchronized": False}]

    token = CancelToken()
    cue = StartCue(token)
    cue.expect(60)
    thread, box = run_in_thread(lambda: cue.wait_plan(lambda: token.cancelled))
    token.cancel()
    thread.join(10)
    assert not thread.is_alive(), "a stop did not end the wait for the plan"
    assert box == {"result": None} and not cue.settled  # stopped, not given up

    skipped: List[Dict] = []
    cue = StartCue()
    cue.skip()  # alone in the scope: no plan is needed
    assert cue.wait_plan(lambda: False) is None
    when_started(cue, skipped.append)
    assert skipped == [{}]
    assert when_started(None, skipped.append) and skipped == [{}, {}]  # no cue: reported at once


def test_the_silence_before_the_first_frame_counts_what_the_device_holds():
    assert due_out(100.0, 4800, 48000) == 100.1
    assert silence_before(100.25, 100.0, 0, 48000) == 12000
    assert silence_before(100.25, 100.0, 4800, 48000) == 7200  # 100 ms still in the device
    assert silence_before(100.05, 100.0, 4800, 48000) == 0  # too near: it starts late
    assert silence_before(99.0, 100.0, 0, 24000) == 0  # already past


# -- the alsa player on a cue, against the sink ---------------------------------------------------

def planned(at_in: float, bound: float = 5.0) -> StartCue:
    cue = StartCue(CancelToken())
    cue.expect(bound)
    cue.propose(time.time() + at_in)
    return cue


@pytest.mark.parametrize("keep_open", [0.0, 5.0])
def test_the_alsa_player_opens_ahead_and_writes_whole_frames_of_silence_then_the_audio(alsa_sink, keep_open):
    rate = 24000
    audio = sine_pcm(rate // 5, rate)
    warm = sine_pcm(rate // 10, rate, freq=880)
    player = AlsaPlayer("default", retries=1, keep_open=keep_open)
    try:
        if keep_open:  # warm: the device is open and fed silence ahead of the clock
            assert player.play(chunked(warm), rate)
            time.sleep(0.1)  # not a measurement: lets the keep-open feed run between the two
        cue = planned(0.25)
        reports: List[Dict] = []
        when_started(cue, reports.append)
        assert player.play_cued(chunked(audio), rate, cue) is True
        assert player.opens == 1
    finally:
        player.close()
    data = alsa_sink.settle()
    if keep_open:  # the warm-up, then the silence fed while kept open and before the instant
        assert data.startswith(warm)
        data = data[len(warm):]
    assert silence_then(data, audio) > 0  # the device got silence before the first audio frame
    assert alsa_sink.opens() == 1
    assert len(reports) == 1 and reports[0]["planned_start"] == round(cue.at, 4)
    assert isinstance(reports[0]["start_error_ms"], float)


def test_the_alsa_player_on_a_past_plan_starts_at_once_and_reports_it_late(alsa_sink):
    rate = 24000
    audio = sine_pcm(rate // 10, rate)
    cue = planned(-1.0)
    player = AlsaPlayer("default", retries=1)
    try:
        assert player.play_cued(chunked(audio), rate, cue) is True
    finally:
        player.close()
    assert alsa_sink.settle() == audio  # no silence ahead of a plan already past
    assert cue.report["synchronized"] is False and cue.report["start_error_ms"] >= 1000


def test_the_alsa_player_stopped_while_waiting_for_the_plan_plays_nothing(alsa_sink):
    rate = 24000
    token = CancelToken()
    cue = StartCue(token)
    cue.expect(60)
    player = AlsaPlayer("default", retries=1)
    token.on_cancel(player.stop)
    result: List[bool] = []
    thread = threading.Thread(target=lambda: result.append(player.play_cued(chunked(sine_pcm(rate, rate)), rate, cue)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not player.is_open and time.monotonic() < deadline:  # the device is opened ahead
            time.sleep(0.01)
        assert player.is_open, "the device was not opened while waiting for the plan"
        token.cancel()
        thread.join(10)
        assert not thread.is_alive(), "a stop did not end the wait for the plan"
        assert result == [False]
    finally:
        player.close()
    assert not alsa_sink.settle().strip(b"\0")


# -- the clock ------------------------------------------------------------------------------------

def test_the_clock_state_is_read_from_the_kernel_and_parsed():
    from coze_speaker.clock import STA_UNSYNC, TIME_ERROR, ClockState, Timex, read_clock

    tx = Timex()
    tx.status, tx.esterror, tx.maxerror = 0x2001, 450, 16000  # PLL | NANO, 0.45 ms estimated
    assert ClockState.from_timex(0, tx) == ClockState(True, 450, 16000, 0, 0x2001)
    tx.status |= STA_UNSYNC
    assert ClockState.from_timex(0, tx).synchronized is False
    tx.status = 0
    assert ClockState.from_timex(TIME_ERROR, tx).synchronized is False

    clock = read_clock()  # the real adjtimex(2), read only
    assert clock is not None
    assert 0 <= clock.state <= TIME_ERROR and clock.maxerror_us >= 0 and clock.esterror_us >= 0
    assert clock.synchronized == (clock.state != TIME_ERROR and not clock.status & STA_UNSYNC)


def test_doctor_warns_of_an_unsynchronized_clock_in_a_fleet(tmp_path):
    from coze_speaker.cli.doctor import check_clock
    from coze_speaker.clock import read_clock
    from coze_speaker.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"fleet": {"enabled": True}}))
    ok, found, _ = check_clock(load_config(path))
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump({"fleet": {"enabled": False}}))
    ok_alone, found_alone, _ = check_clock(load_config(alone))
    assert ok and ok_alone  # a warning, never a failure
    clock = read_clock()
    assert clock is not None
    if clock.synchronized:
        assert "synchronized by NTP" in found and "warning" not in found
    else:
        assert "not synchronized" in found and "systemd-timesyncd" in found and "chrony" in found
        assert "warning" not in found_alone
    assert f"{clock.maxerror_us / 1000:g} ms" in found
