"""The daemon end to end: real mosquitto, the fake Coze, real aplay into the ALSA file sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from conftest import TOKEN, VOICE
from fake_coze import FakeCoze, Fault
from mqtt_helpers import Probe, broker, probe  # noqa: F401  (fixtures)

from coze_speaker.config import load_config
from coze_speaker.app.daemon import Daemon

B, D = "coze-speaker", "testspk"
SAY, EVENT, STATE = f"{B}/{D}/say", f"{B}/{D}/event", f"{B}/{D}/state"
AVAIL = f"{B}/{D}/availability"
SPEECH = "/v1/audio/speech"
RATE = 24000


def write_config(tmp_path, fake_coze, broker, **sections):
    data = {
        # the suites written for the HTTP endpoint pin it (and one request per piece);
        # test_faults_ws.py covers the defaults (transport auto, first sentence first)
        "coze": {"base_url": fake_coze.url, "token": TOKEN, "voice_id": VOICE, "retries": 1, "timeout": 5,
                 "transport": "http", "first_sentence_first": False},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "device_id": D, "groups": ["kitchen"]},
        "audio": {"backend": "aplay", "sample_rate": RATE, "chime": "none", "wake_ms": 0},
        "cache": {"dir": str(tmp_path / "cache")},
        "state": {"dir": str(tmp_path / "state")},
        "queue": {"dedup_seconds": 0},
        "hermes": {"enabled": True, "site_id": "kitchen"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


class Running:
    """A Daemon in a background thread (signals are the subprocess test's business)."""

    def __init__(self, config_path):
        self.daemon = Daemon(load_config(config_path))
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.daemon.request_stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def start_daemon(tmp_path, fake_coze, broker, alsa_sink, probe, monkeypatch):
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    running = []

    def start(**sections):
        path = write_config(tmp_path, fake_coze, broker, **sections)
        r = Running(path)
        running.append(r)
        probe.wait_for(lambda ms: [m for m in ms if m.topic == AVAIL and m.payload == b"online"])
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def pcm(text, rate=RATE, **kw):
    return FakeCoze.pcm_for(text, VOICE if "voice" not in kw else kw.pop("voice"), rate, **kw)


def played_contains(sink, audio):
    return audio in sink.read()


def test_plain_text_is_spoken_with_events(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon()
    probe.publish(SAY, "Dinner is ready")
    finished = probe.wait_event(EVENT, event="finished")
    kinds = [e["event"] for e in probe.events(EVENT, id=finished["id"])]
    assert kinds == ["queued", "started", "finished"]
    assert finished["text"] == "Dinner is ready" and finished["cached"] is False
    assert isinstance(finished["latency_ms"], int) and finished["latency_ms"] >= 0
    audio = pcm("Dinner is ready")
    data = alsa_sink.wait_for(len(audio))
    assert data.startswith(audio) and data[len(audio):].strip(b"\0") == b""
    assert len(fake_coze.requests_to(SPEECH)) == 1


def test_json_announcement_and_cache_hit_survives_restart(start_daemon, probe, fake_coze, alsa_sink):
    voice = fake_coze.emotion_voice_id
    msg = {"text": "The front door is open", "id": "door-1", "voice": voice, "emotion": "surprised",
           "speed": 1.2}
    r = start_daemon()
    probe.publish(SAY, msg)
    first = probe.wait_event(EVENT, id="door-1", event="finished")
    assert first["cached"] is False
    body = fake_coze.requests_to(SPEECH)[0].json
    assert body["voice_id"] == voice and body["emotion"] == "surprised" and body["speed"] == 1.2
    audio = pcm("The front door is open", voice=voice, emotion="surprised", speed=1.2)
    assert alsa_sink.wait_for(len(audio)).startswith(audio)

    probe.publish(SAY, dict(msg, id="door-2"))
    assert probe.wait_event(EVENT, id="door-2", event="finished")["cached"] is True
    r.stop()

    alsa_sink.clear()
    start_daemon()
    probe.publish(SAY, dict(msg, id="door-3"))
    assert probe.wait_event(EVENT, id="door-3", event="finished")["cached"] is True
    assert alsa_sink.wait_for(len(audio)).startswith(audio)
    assert len(fake_coze.requests_to(SPEECH)) == 1


def test_all_and_group_topics_speak(start_daemon, probe):
    start_daemon()
    probe.publish(f"{B}/all/say", {"text": "everyone", "id": "a"})
    probe.publish(f"{B}/group/kitchen/say", {"text": "kitchen only", "id": "g"})
    probe.publish(f"{B}/group/garage/say", {"text": "not us", "id": "x"})
    assert probe.wait_event(EVENT, id="a", event="finished")
    assert probe.wait_event(EVENT, id="g", event="finished")
    assert probe.events(EVENT, id="x") == []


def slow_audio(fake_coze):
    """Make speech stream slowly, so an announcement stays 'playing' while the test acts."""
    fake_coze.chunk_bytes = 2400  # 50 ms of audio at 24 kHz, every 50 ms: real time
    fake_coze.chunk_delay = 0.05


def test_stop_silences_and_stop_all_empties_the_queue(start_daemon, probe, fake_coze):
    r = start_daemon()
    slow_audio(fake_coze)
    long_text = "This is a long announcement that keeps going for a while. " * 2
    probe.publish(SAY, {"text": long_text, "id": "long"})
    probe.wait_event(EVENT, id="long", event="started")
    probe.publish(f"{B}/{D}/stop", "")
    ev = probe.wait_event(EVENT, id="long", event="interrupted")
    assert ev["reason"] == "stopped"
    assert r.daemon.player.pid is None  # the aplay child is gone

    probe.publish(SAY, {"text": long_text + " again", "id": "l2"})
    probe.wait_event(EVENT, id="l2", event="started")
    probe.publish(SAY, {"text": "queued one", "id": "q1"})
    probe.wait_event(EVENT, id="q1", event="queued")
    probe.publish(f"{B}/{D}/stop", "all")
    assert probe.wait_event(EVENT, id="l2", event="interrupted")
    assert probe.wait_event(EVENT, id="q1", event="dropped")["reason"] == "stopped"
    assert probe.events(EVENT, id="q1", event="started") == []


def test_priority_order_and_interrupt(start_daemon, probe, fake_coze):
    start_daemon()
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "First, a long one that keeps playing. ", "id": "first"})
    probe.wait_event(EVENT, id="first", event="started")
    for pid, prio in (("low", "low"), ("normal", "normal"), ("high", "high")):
        probe.publish(SAY, {"text": f"priority {prio}", "id": pid, "priority": prio})
        probe.wait_event(EVENT, id=pid, event="queued")
    probe.publish(SAY, {"text": "Smoke detected", "id": "crit", "priority": "critical"})
    assert "crit" in probe.wait_event(EVENT, id="first", event="requeued")["reason"]
    probe.wait_event(EVENT, id="low", event="finished", timeout=30)
    started = [e["id"] for e in probe.events(EVENT, event="started")]
    assert started == ["first", "crit", "first", "high", "normal", "low"]  # the cut-off one goes on first


def test_expired_item_is_not_played(start_daemon, probe, fake_coze):
    start_daemon()
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "Long enough to outlive a short TTL, surely. ", "id": "long"})
    probe.wait_event(EVENT, id="long", event="started")
    probe.publish(SAY, {"text": "stale soon", "id": "stale", "ttl": 0.2})
    assert probe.wait_event(EVENT, id="stale", event="expired")["reason"] == "ttl"
    probe.wait_event(EVENT, id="long", event="finished", timeout=30)
    assert probe.events(EVENT, id="stale", event="started") == []


def test_broker_restart_reconnects_and_resubscribes(start_daemon, probe, broker):
    start_daemon()
    probe.close()
    broker.stop()
    broker.start()
    fresh = Probe(broker.port)
    try:
        fresh.wait_for(lambda ms: [m for m in ms if m.topic == AVAIL and m.payload == b"online"], timeout=60)
        fresh.publish(SAY, {"text": "after the outage", "id": "after"})
        assert fresh.wait_event(EVENT, id="after", event="finished", timeout=20)
    finally:
        fresh.close()


HOSTILE = [
    b"\xff\xfe\xfa not utf-8",
    b"{broken",
    b"[1, 2, 3]",
    b'{"text": 42}',
    b'{"text": ""}',
    b'{"no_text": "hi"}',
    b'{"text": "hi", "volume": 101}',
    b'{"text": "hi", "volume": "loud"}',
    b'{"text": "hi", "speed": 0}',
    b'{"text": "hi", "emotion": "joyful"}',
    b'{"text": "hi", "priority": "urgent"}',
    b'{"text": "hi", "repeat": 99}',
    b'{"text": "hi", "interrupt": "yes"}',
    b'{"text": "hi", "ttl": -1}',
    b'{"text": "hi", "chime": "../../etc/passwd"}',
    b'{"text": "hi", "chime": "nonexistent"}',
    b'{"text": "hi", "emotion_scale": 9}',
    b'{"text": "' + b"a" * (1024 * 1024) + b'"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"text": {"nested": {"deeper": {"deepest": [[[[1]]]]}}}}',
    b"   ",
    b'{"text": "hi", "unknown_field": 1}',
]


def test_hostile_payloads_fail_cleanly(start_daemon, probe, fake_coze, alsa_sink):
    r = start_daemon()
    for payload in HOSTILE:
        probe.publish(SAY, payload)
    probe.wait_for(lambda _: len(probe.events(EVENT, event="failed")) >= len(HOSTILE), timeout=30)
    failed = probe.events(EVENT, event="failed")
    assert all(f["error"]["message"] and f["error"].get("field") for f in failed)
    assert fake_coze.requests_to(SPEECH) == []  # (the voice list, for Home Assistant, is fetched at start)
    assert r.thread.is_alive()
    probe.publish(SAY, {"text": "still alive", "id": "ok"})
    assert probe.wait_event(EVENT, id="ok", event="finished")
    assert len(fake_coze.requests_to(SPEECH)) == 1


def test_discovery_is_retained_and_republished(start_daemon, probe, broker):
    start_daemon()
    topic = f"homeassistant/device/{D}/config"
    first = probe.wait_for(lambda _: probe.on(topic))
    config = json.loads(first[0].payload)
    assert {c["platform"] for c in config["components"].values()} == {"notify", "number", "binary_sensor",
                                                                      "button", "sensor", "event", "select",
                                                                      "switch"}
    assert config["components"]["say"]["command_topic"] == SAY
    assert all(c["availability_topic"] == AVAIL for c in config["components"].values())
    late = Probe(broker.port)  # a new subscriber gets it because it is retained
    try:
        assert late.wait_for(lambda _: [m for m in late.on(topic) if m.retain])
    finally:
        late.close()
    count = len(probe.on(topic))
    probe.publish("homeassistant/status", "online")
    probe.wait_for(lambda _: len(probe.on(topic)) > count)


def test_hermes_say_gets_say_finished(start_daemon, probe):
    start_daemon()
    probe.publish("hermes/tts/say", {"text": "Hermes speaks", "siteId": "kitchen", "id": "h1",
                                     "sessionId": "s1", "volume": 0.5})
    done = probe.wait_for(lambda _: probe.events("hermes/tts/sayFinished", id="h1"))
    assert done[0] == {"id": "h1", "siteId": "kitchen", "sessionId": "s1"}
    probe.publish("hermes/tts/say", {"text": "not for us", "siteId": "attic", "id": "h2"})
    probe.publish("hermes/tts/say", {"text": "for us", "siteId": "kitchen", "id": "h3"})
    probe.wait_for(lambda _: probe.events("hermes/tts/sayFinished", id="h3"))
    assert probe.events("hermes/tts/sayFinished", id="h2") == []


def test_volume_is_applied_kept_and_published(start_daemon, probe, alsa_sink, tmp_path):
    r = start_daemon()
    probe.publish(f"{B}/{D}/volume/set", "50")
    probe.wait_for(lambda _: [m for m in probe.on(f"{B}/{D}/volume") if m.payload == b"50"])
    probe.publish(SAY, {"text": "quieter now", "id": "v"})
    probe.wait_event(EVENT, id="v", event="finished")
    loud = pcm("quieter now")
    played = alsa_sink.wait_for(len(loud))[:len(loud)]
    assert played != loud and len(played) == len(loud)
    assert max(abs(int.from_bytes(played[i:i + 2], "little", signed=True)) for i in range(0, len(played), 2)) < 8000
    r.stop()
    assert json.loads((tmp_path / "state" / f"volume-{D}.json").read_text()) == 50
    start_daemon()
    probe.wait_for(lambda _: [m for m in probe.on(f"{B}/{D}/volume") if m.payload == b"50"])


def test_response_topic_gets_the_final_event(start_daemon, probe):
    start_daemon()
    probe.publish(SAY, {"text": "reply to me", "id": "r1"}, response_topic="replies/r1", correlation=b"corr-42")
    reply = probe.wait_for(lambda _: probe.on("replies/r1"))[0]
    assert json.loads(reply.payload)["event"] == "finished"
    assert reply.properties.CorrelationData == b"corr-42"


def test_state_reports_idle_and_cache(start_daemon, probe):
    start_daemon()
    probe.publish(SAY, {"text": "state check", "id": "s"})
    probe.wait_event(EVENT, id="s", event="finished")
    state = probe.wait_for(lambda _: [json.loads(m.payload) for m in probe.on(STATE)
                                      if json.loads(m.payload)["cache"]["entries"] >= 1
                                      and json.loads(m.payload)["state"] == "idle"])[-1]
    assert state["volume"] == 100 and state["queue"] == 0 and state["version"]
    assert state["last"] == "state check"


def test_dedup_drops_a_repeat(start_daemon, probe, fake_coze):
    start_daemon(queue={"dedup_seconds": 30})
    held = threading.Event()  # d1 stays pending (its audio held at Coze) until d2 is dealt with
    fake_coze.add_fault(SPEECH, Fault(gate=held))
    probe.publish(SAY, {"text": "only once", "id": "d1"})
    probe.publish(SAY, {"text": "only once", "id": "d2"})
    try:
        assert probe.wait_event(EVENT, id="d2", event="dropped")["reason"] == "dedup"
    finally:
        held.set()
    assert probe.wait_event(EVENT, id="d1", event="finished")


def test_retained_say_is_not_spoken(start_daemon, probe):
    probe.publish(SAY, {"text": "stale retained", "id": "ret"}, retain=True)
    start_daemon()
    assert probe.wait_event(EVENT, id="ret", event="dropped")["reason"] == "retained"
    probe.publish(SAY, b"", retain=True)


def test_sigterm_publishes_offline_and_exits_0(tmp_path, fake_coze, broker, alsa_sink, probe):
    path = write_config(tmp_path, fake_coze, broker)
    env = dict(os.environ)
    env.pop("COZE_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "coze_speaker", "-c", str(path), "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        probe.wait_for(lambda ms: [m for m in ms if m.topic == AVAIL and m.payload == b"online"], timeout=30)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate()
    assert code == 0, err.decode()
    last = probe.wait_for(lambda _: [m for m in probe.on(AVAIL)][-1:] if probe.on(AVAIL)[-1].payload == b"offline" else None)
    assert last[0].payload == b"offline"
    late = Probe(broker.port)
    try:
        retained = late.wait_for(lambda _: late.on(AVAIL))
        assert retained[0].payload == b"offline" and retained[0].retain
    finally:
        late.close()
    assert TOKEN not in err.decode()


def test_coze_failure_gives_a_failed_event_with_code_and_logid(start_daemon, probe, fake_coze):
    from fake_coze import Fault

    start_daemon()
    fake_coze.add_fault(SPEECH, Fault(code=4011, msg="balance insufficient"))
    probe.publish(SAY, {"text": "costly", "id": "c"})
    ev = probe.wait_event(EVENT, id="c", event="failed")
    assert ev["error"]["code"] == 4011 and ev["error"]["logid"] and "balance" in ev["error"]["message"]
    assert len(fake_coze.requests_to(SPEECH)) == 1
    assert probe.events(EVENT, id="c", event="started")  # it was dequeued and tried


def test_cost_guard_caps_api_calls_but_cached_phrases_play(start_daemon, probe, fake_coze):
    start_daemon(limits={"max_requests_per_hour": 1})
    probe.publish(SAY, {"text": "first phrase", "id": "1"})
    probe.wait_event(EVENT, id="1", event="finished")
    probe.publish(SAY, {"text": "second phrase", "id": "2"})
    ev = probe.wait_event(EVENT, id="2", event="failed")
    assert ev["error"]["code"] == "rate_limited"
    probe.publish(SAY, {"text": "first phrase", "id": "3"})
    assert probe.wait_event(EVENT, id="3", event="finished")["cached"] is True
    assert len(fake_coze.requests_to(SPEECH)) == 1


def test_queue_overflow_drops_the_lowest_priority(start_daemon, probe, fake_coze):
    start_daemon(queue={"max_length": 2, "dedup_seconds": 0})
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "Playing while the queue fills up.", "id": "p"})
    probe.wait_event(EVENT, id="p", event="started")
    probe.publish(SAY, {"text": "low one", "id": "low", "priority": "low"})
    probe.publish(SAY, {"text": "normal one", "id": "n1"})
    probe.publish(SAY, {"text": "high one", "id": "h1", "priority": "high"})
    assert probe.wait_event(EVENT, id="low", event="dropped")["reason"] == "queue_full"
    probe.publish(SAY, {"text": "another low", "id": "low2", "priority": "low"})
    assert probe.wait_event(EVENT, id="low2", event="dropped")["reason"] == "queue_full"
    probe.wait_event(EVENT, id="n1", event="finished", timeout=30)
    assert [e["id"] for e in probe.events(EVENT, event="started")] == ["p", "h1", "n1"]


def test_interrupt_flag_plays_now(start_daemon, probe, fake_coze):
    start_daemon()
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "A normal announcement playing along.", "id": "a"})
    probe.wait_event(EVENT, id="a", event="started")
    probe.publish(SAY, {"text": "queued high", "id": "h", "priority": "high"})
    probe.wait_event(EVENT, id="h", event="queued")
    probe.publish(SAY, {"text": "now please", "id": "now", "interrupt": True})
    probe.wait_event(EVENT, id="h", event="finished", timeout=30)
    assert [e["id"] for e in probe.events(EVENT, event="started")] == ["a", "now", "a", "h"]
    assert probe.events(EVENT, id="a", event="requeued")


def test_quiet_hours_hold_low_priority_and_lower_the_volume(start_daemon, probe, alsa_sink):
    import datetime as dt

    now = dt.datetime.now()
    start = (now - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (now + dt.timedelta(hours=1)).strftime("%H:%M")
    start_daemon(quiet_hours={"start": start, "end": end, "volume": 10, "min_priority": "high"})
    probe.publish(SAY, {"text": "not at night", "id": "n", "ttl": 1})
    probe.publish(SAY, {"text": "important at night", "id": "i", "priority": "high"})
    probe.wait_event(EVENT, id="i", event="finished")
    assert probe.wait_event(EVENT, id="n", event="expired")
    assert probe.events(EVENT, id="n", event="started") == []
    loud = pcm("important at night")
    played = alsa_sink.wait_for(len(loud))[:len(loud)]
    peak = max(abs(int.from_bytes(played[i:i + 2], "little", signed=True)) for i in range(0, len(played), 2))
    assert 0 < peak < 200  # volume 10 on a cubic curve: 1/1000 of the amplitude


def test_sighup_reload_applies_a_new_config_and_keeps_a_bad_one_out(start_daemon, probe, tmp_path, fake_coze):
    r = start_daemon()
    path = tmp_path / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["coze"]["voice_id"] = fake_coze.voices[3]["voice_id"]
    path.write_text(yaml.safe_dump(data))
    r.daemon._reload.set()
    r.daemon._wake.set()
    probe.wait_for(lambda _: len([m for m in probe.on(AVAIL) if m.payload == b"online"]) >= 2)
    probe.publish(SAY, {"text": "new voice", "id": "nv"})
    probe.wait_event(EVENT, id="nv", event="finished")
    assert fake_coze.requests_to(SPEECH)[-1].json["voice_id"] == fake_coze.voices[3]["voice_id"]

    path.write_text("audio:\n  sample_rate: 44000\n")
    r.daemon._reload.set()
    r.daemon._wake.set()
    probe.publish(SAY, {"text": "still the old config", "id": "old"})
    probe.wait_event(EVENT, id="old", event="finished")
    assert fake_coze.requests_to(SPEECH)[-1].json["voice_id"] == fake_coze.voices[3]["voice_id"]
