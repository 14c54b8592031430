"""What reading the code found when the package was laid out by stage (one test per defect).

Real mosquitto, the fake Coze over HTTP, real aplay into the ALSA file sink.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from fake_coze import FakeCoze
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from coze_speaker.voice.textsplit import split_text
from test_daemon import AVAIL, EVENT, SAY, SPEECH, pcm, slow_audio, start_daemon, write_config  # noqa: F401

ESPEAK = Path("/usr/bin/espeak-ng").exists()


def reload(r, probe, tmp_path, change) -> None:
    """Rewrite the config file with change(data) and SIGHUP the daemon (as systemctl reload)."""
    path = tmp_path / "config.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    onlines = len([m for m in probe.on(AVAIL) if m.payload == b"online"])
    r.daemon.request_reload()
    probe.wait_for(lambda _: len([m for m in probe.on(AVAIL) if m.payload == b"online"]) > onlines, timeout=30)


def one_playing_one_behind(probe, fake_coze) -> None:
    """"playing" has started (its audio comes slowly) and "behind" is queued behind it."""
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "A long announcement that keeps playing for a while. " * 3, "id": "playing"})
    probe.wait_event(EVENT, id="playing", event="started")
    probe.publish(SAY, {"text": "waiting behind it", "id": "behind"})
    probe.wait_event(EVENT, id="behind", event="queued")


def test_a_reload_hands_pending_announcements_over_with_their_events(start_daemon, probe, fake_coze, tmp_path):
    """Pending ones are re-submitted on the NEW connection: their final events are not lost."""
    r = start_daemon()
    one_playing_one_behind(probe, fake_coze)
    reload(r, probe, tmp_path, lambda d: d.update(coze={**d["coze"], "voice_id": None},
                                                  fallback={"engine": "none"}))  # no offline voice
    ev = probe.wait_event(EVENT, id="behind", event="failed", timeout=30)
    assert ev["error"]["code"] == "invalid" and ev["error"]["field"] == "voice_id"
    finals = [e for e in probe.events(EVENT, id="behind") if e["event"] not in ("queued", "started")]
    assert len(finals) == 1


def test_a_reload_keeps_the_spending_caps(start_daemon, probe, fake_coze, tmp_path):
    r = start_daemon(limits={"max_requests_per_hour": 1})
    probe.publish(SAY, {"text": "the one request this hour", "id": "1"})
    probe.wait_event(EVENT, id="1", event="finished")
    reload(r, probe, tmp_path, lambda d: d.setdefault("queue", {}).update(max_length=50))
    probe.publish(SAY, {"text": "a second, different phrase", "id": "2"})
    ev = probe.wait_event(EVENT, id="2", event="failed", timeout=30)
    assert ev["error"]["code"] == "rate_limited"
    assert len(fake_coze.requests_to(SPEECH)) == 1


@pytest.mark.skipif(not ESPEAK, reason="espeak-ng is not installed (scripts/test.sh installs it)")
def test_the_offline_voice_without_a_token_is_not_reported_cached(start_daemon, probe, fake_coze):
    start_daemon(coze={"token": None}, fallback={"engine": "espeak-ng"})
    probe.publish(SAY, {"text": "no account yet", "id": "n"})
    ev = probe.wait_event(EVENT, id="n", event="finished", timeout=30)
    assert ev["fallback"] is True and ev["cached"] is False and ev["api_calls"] == 0


@pytest.mark.skipif(not ESPEAK, reason="espeak-ng is not installed (scripts/test.sh installs it)")
def test_say_speaks_with_the_offline_voice_when_coze_is_unreachable(make_config, fake_coze, alsa_sink):
    """`coze-speaker say` is wired like the daemon: same fallback, same behaviour."""
    config = make_config(audio={"backend": "aplay", "chime": "none", "sample_rate": 24000},
                         fallback={"engine": "espeak-ng"}, coze={"retries": 0})
    fake_coze.stop()  # connection refused from now on
    proc = subprocess.run([sys.executable, "-m", "coze_speaker", "-c", str(config), "say", "Smoke in the kitchen"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    played = alsa_sink.wait_for(4000)
    assert any(played[i:i + 2] != b"\0\0" for i in range(0, 4000, 2))


def test_repeat_of_a_long_announcement_replays_from_the_cache(start_daemon, probe, fake_coze, alsa_sink):
    """Beyond the read-ahead bound the first round is not kept in memory: the repeat reads the
    cache (no second Coze request) and sounds the same."""
    start_daemon(limits={"max_text_bytes": 65536})
    text = " ".join(f"Sentence number {i} of a very long announcement that keeps going." for i in range(30))
    audio = b"".join(pcm(piece) for piece in split_text(text))
    assert len(audio) > 3_000_000  # longer than the read-ahead bound: not recorded
    probe.publish(SAY, {"text": text, "id": "long", "repeat": 2})
    ev = probe.wait_event(EVENT, id="long", event="finished", timeout=60)
    pieces = len(fake_coze.requests_to(SPEECH))
    assert ev["api_calls"] == pieces and ev["cached"] is False
    played = alsa_sink.wait_for(2 * len(audio), timeout=60)
    assert played[:len(audio)] == audio
    second = played[len(audio):].lstrip(b"\0")  # aplay ends the first round with a period of silence
    assert second[:len(audio)] == audio


def test_repeat_of_a_short_announcement_is_replayed_from_memory(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon()
    probe.publish(SAY, {"text": "Twice please", "id": "r", "repeat": 3, "cache": False})
    ev = probe.wait_event(EVENT, id="r", event="finished")
    audio = pcm("Twice please")
    assert ev["api_calls"] == 1 and len(fake_coze.requests_to(SPEECH)) == 1
    played = alsa_sink.wait_for(3 * len(audio))
    rounds = [r for r in played.split(b"\0" * 64) if r.strip(b"\0")]
    assert played.count(audio) == 3, rounds[:1]


def test_fake_pcm_is_what_the_sink_plays():  # guards the helper the tests above rely on
    assert FakeCoze.pcm_for("x", "voice_0000", 24000) == pcm("x")


def test_sigterm_while_speaking_keeps_the_queue_for_the_restart(tmp_path, fake_coze, broker, probe, alsa_sink):
    """systemctl restart while something plays: the queued ones, and the one that was playing,
    are spoken after the restart; no event claims they ended. The one that was playing says
    `requeued` (reason shutdown) before its second `started`; nothing gets a second `queued`."""
    from test_faults import DaemonProcess, online, stop_with_a_held_queue

    path = write_config(tmp_path, fake_coze, broker)
    assert stop_with_a_held_queue(path, probe, fake_coze, 3, signal.SIGTERM) == 0
    finals = {"finished", "failed", "expired", "dropped", "interrupted"}
    assert [e for e in probe.events(EVENT) if e["event"] in finals] == []
    second = DaemonProcess(path)
    try:
        online(probe, count=2)
        for ident in ("head", "q0", "q1", "q2"):
            assert probe.wait_event(EVENT, id=ident, event="finished", timeout=60)
    finally:
        second.stop()
    head = probe.events(EVENT, id="head")
    assert [e["event"] for e in head] == ["queued", "started", "requeued", "started", "finished"]
    assert head[2]["reason"] == "shutdown"
    for ident in ("q0", "q1", "q2"):
        assert [e["event"] for e in probe.events(EVENT, id=ident)] == ["queued", "started", "finished"]


def test_a_reload_does_not_repeat_queued(start_daemon, probe, fake_coze, tmp_path):
    """`queued`, then exactly one final event, also for announcements handed over by a reload."""
    r = start_daemon()
    one_playing_one_behind(probe, fake_coze)
    reload(r, probe, tmp_path, lambda d: d.setdefault("queue", {}).update(max_length=50))
    probe.wait_event(EVENT, id="behind", event="finished", timeout=60)
    assert [e["event"] for e in probe.events(EVENT, id="behind")] == ["queued", "started", "finished"]
    assert [e["event"] for e in probe.events(EVENT, id="playing")] == ["queued", "started", "finished"]


def test_a_reload_that_cuts_the_playing_one_off_says_requeued(start_daemon, probe, fake_coze, tmp_path, monkeypatch):
    """Past the reload's finish limit the playing announcement is cut off and handed over: it
    reports `requeued` (reason reload), then plays again from the start under the new config."""
    import coze_speaker.app.daemon as daemon_module

    r = start_daemon()
    one_playing_one_behind(probe, fake_coze)
    monkeypatch.setattr(daemon_module, "RELOAD_FINISH_LIMIT", 0.0)  # instead of waiting 120 s
    reload(r, probe, tmp_path, lambda d: d.setdefault("queue", {}).update(max_length=50))
    fake_coze.chunk_delay = 0
    probe.wait_event(EVENT, id="playing", event="finished", timeout=60)
    playing = probe.events(EVENT, id="playing")
    assert [e["event"] for e in playing] == ["queued", "started", "requeued", "started", "finished"]
    assert playing[2]["reason"] == "reload"
