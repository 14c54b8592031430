"""The fault suite: each case asserts that nothing accepted is lost, nothing leaks, nothing hangs.

Real mosquitto, the fake Coze, real aplay into the ALSA file sink; the daemon in-process
(a thread) or as a real process where a kill is part of the fault.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from alsa_sink import alsa_sink, fake_aplay  # noqa: F401
from conftest import TOKEN, VOICE
from emulation import skip_memory_limits_under_emulation
from fake_coze import FakeCoze, Fault
from mqtt_helpers import Broker, Probe, broker, probe  # noqa: F401
from test_daemon import AVAIL, EVENT, SAY, SPEECH, B, D, Running, pcm, slow_audio, start_daemon, write_config  # noqa: F401

from coze_speaker.queue.announcement import PayloadError, parse_say


def online(probe, count=1, timeout=30):
    probe.wait_for(lambda ms: len([m for m in ms if m.topic == AVAIL and m.payload == b"online"]) >= count,
                   timeout=timeout)


def hold_the_queue(probe, count):
    """A slow announcement plays ("head") and `count` more wait behind it (q0, q1, …)."""
    # ~9 s of audio streamed in real time: it is still playing when the test acts, even on a
    # loaded machine
    probe.publish(SAY, {"text": "A slow first announcement that holds the queue. " * 3, "id": "head"})
    probe.wait_event(EVENT, id="head", event="started")
    for n in range(count):
        probe.publish(SAY, {"text": f"queued number {n}", "id": f"q{n}"})
    for n in range(count):
        probe.wait_event(EVENT, id=f"q{n}", event="queued")


def stop_with_a_held_queue(path, probe, fake_coze, count, sig=signal.SIGKILL) -> int:
    """Run the daemon, let "head" play slowly with `count` queued behind it, end it with `sig`
    (returns its exit status); the fake then streams at full speed for the restart."""
    slow_audio(fake_coze)
    first = DaemonProcess(path)
    try:
        online(probe)
        hold_the_queue(probe, count)
        status = first.kill(sig)
    finally:
        first.stop()
    fake_coze.chunk_delay = 0
    return status


class DaemonProcess:
    """`coze-speaker run` as a real process (for kills and resource limits)."""

    def __init__(self, config_path: Path, *, env=None, preexec_fn=None, verbose: bool = False):
        args = [sys.executable, "-m", "coze_speaker", "-c", str(config_path)] + (["-vv"] if verbose else []) + ["run"]
        full_env = dict(os.environ)
        full_env.pop("COZE_API_TOKEN", None)
        full_env.update(env or {})
        self.stderr_path = config_path.parent / f"daemon-{time.monotonic_ns()}.log"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, env=full_env, stdout=subprocess.DEVNULL, stderr=self._err,
                                     preexec_fn=preexec_fn)

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()

    @property
    def log(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


# -- Coze faults -----------------------------------------------------------------------------

@pytest.mark.parametrize("faults", [
    [Fault(http_status=500)],
    [Fault(http_status=429)],
    [Fault(code=4020, msg="too many requests per minute")],
    [Fault(http_status=502), Fault(code=5000, msg="internal")],
    [Fault(truncate_after=3000)],
    [Fault(hang=30)],
])
def test_transient_coze_faults_still_speak(start_daemon, probe, fake_coze, alsa_sink, faults):
    start_daemon(coze={"timeout": 1, "retries": 2})
    for f in faults:
        fake_coze.add_fault(SPEECH, f)
    text = "The garage door is still open, please check it. " * 2
    probe.publish(SAY, {"text": text, "id": "t"})
    ev = probe.wait_event(EVENT, id="t", event="finished", timeout=30)
    assert ev["cached"] is False and not ev.get("fallback")
    audio = pcm(text.strip())
    assert alsa_sink.wait_for(len(audio)).startswith(audio)


def test_invalid_token_is_one_request_and_one_clear_event(start_daemon, probe, fake_coze):
    start_daemon(coze={"token": "pat_wrong_secret_value"})
    probe.publish(SAY, {"text": "hello", "id": "w"})
    ev = probe.wait_event(EVENT, id="w", event="failed")
    assert ev["error"]["code"] == 4100 and ev["error"]["logid"]
    assert "pat_wrong_secret_value" not in json.dumps(probe.events(EVENT))
    assert len(fake_coze.requests_to(SPEECH)) == 1
    assert len(probe.events(EVENT, id="w", event="failed")) == 1


def test_no_network_falls_back_to_the_offline_voice(start_daemon, probe, fake_coze, alsa_sink, tmp_path):
    if not Path("/usr/bin/espeak-ng").exists():
        pytest.skip("espeak-ng is not installed (scripts/test.sh installs it)")
    start_daemon(fallback={"engine": "espeak-ng"}, coze={"retries": 1})
    fake_coze.stop()  # connection refused from now on
    probe.publish(SAY, {"text": "Smoke detected in the kitchen", "id": "smoke"})
    ev = probe.wait_event(EVENT, id="smoke", event="finished", timeout=30)
    assert ev["fallback"] is True and "cannot reach" in ev["reason"]
    played = alsa_sink.wait_for(4000)
    assert any(played[i:i + 2] != b"\0\0" for i in range(0, 4000, 2))
    assert not list((tmp_path / "cache").glob("*/*.wav"))  # fallback audio is never cached


def test_no_token_speaks_with_the_fallback_voice(start_daemon, probe, fake_coze):
    if not Path("/usr/bin/espeak-ng").exists():
        pytest.skip("espeak-ng is not installed")
    start_daemon(coze={"token": None}, fallback={"engine": "espeak-ng"})
    probe.publish(SAY, {"text": "no account yet", "id": "n"})
    ev = probe.wait_event(EVENT, id="n", event="finished", timeout=30)
    assert ev["fallback"] is True
    assert fake_coze.requests == []


def test_cost_guard_falls_back_too(start_daemon, probe, fake_coze):
    if not Path("/usr/bin/espeak-ng").exists():
        pytest.skip("espeak-ng is not installed")
    start_daemon(limits={"max_requests_per_hour": 1}, fallback={"engine": "espeak-ng"})
    probe.publish(SAY, {"text": "one", "id": "1"})
    probe.wait_event(EVENT, id="1", event="finished")
    probe.publish(SAY, {"text": "two", "id": "2"})
    ev = probe.wait_event(EVENT, id="2", event="finished", timeout=30)
    assert ev["fallback"] is True and ev["error"]["code"] == "rate_limited"
    assert len(fake_coze.requests_to(SPEECH)) == 1


# -- broker and process faults -----------------------------------------------------------------

def test_broker_killed_mid_announcement(start_daemon, probe, broker, fake_coze, alsa_sink):
    start_daemon()
    slow_audio(fake_coze)
    text = "This announcement is playing while the broker goes away and comes back."
    probe.publish(SAY, {"text": text, "id": "mid"})
    probe.wait_event(EVENT, id="mid", event="started")
    probe.close()
    broker.proc.kill()
    broker.proc.wait(5)
    broker.proc = None
    audio = pcm(text)
    assert alsa_sink.wait_for(len(audio), timeout=30).startswith(audio)  # it kept playing
    broker.start()
    fresh = Probe(broker.port)
    try:
        online(fresh, timeout=60)
        fresh.publish(SAY, {"text": "next one", "id": "next"})
        assert fresh.wait_event(EVENT, id="next", event="finished", timeout=30)
    finally:
        fresh.close()


def test_sigkill_with_five_queued_then_restart_plays_them(tmp_path, fake_coze, broker, probe, alsa_sink):
    path = write_config(tmp_path, fake_coze, broker)
    stop_with_a_held_queue(path, probe, fake_coze, 5)
    second = DaemonProcess(path)
    try:
        online(probe, count=2)
        for n in range(5):
            assert probe.wait_event(EVENT, id=f"q{n}", event="finished", timeout=60)
        assert probe.wait_event(EVENT, id="head", event="finished", timeout=60)  # it was playing: at least once
    finally:
        second.stop()


def test_expired_while_down_is_reported_not_played(tmp_path, fake_coze, broker, probe, alsa_sink):
    path = write_config(tmp_path, fake_coze, broker)
    slow_audio(fake_coze)
    first = DaemonProcess(path)
    try:
        online(probe)
        probe.publish(SAY, {"text": "Holding the queue for a moment, please wait.", "id": "head"})
        probe.wait_event(EVENT, id="head", event="started")
        probe.publish(SAY, {"text": "short lived", "id": "short", "ttl": 1})
        probe.wait_event(EVENT, id="short", event="queued")
        first.kill()
    finally:
        first.stop()
    time.sleep(1.5)  # let the TTL pass while the daemon is down (not a timing assertion)
    second = DaemonProcess(path)
    try:
        online(probe, count=2)
        assert probe.wait_event(EVENT, id="short", event="expired", timeout=30)
        probe.wait_event(EVENT, id="head", event="finished", timeout=60)
        assert len(probe.events(EVENT, id="short", event="started")) == 0
    finally:
        second.stop()


def test_messages_sent_while_down_are_spoken_after_restart(tmp_path, fake_coze, broker, probe, alsa_sink):
    """A persistent MQTT session: the broker keeps QoS 1 say messages for a stopped daemon."""
    path = write_config(tmp_path, fake_coze, broker)
    first = DaemonProcess(path)
    try:
        online(probe)
        first.kill(signal.SIGTERM)
    finally:
        first.stop()
    probe.publish(SAY, {"text": "while you were away", "id": "away"}, qos=1)
    second = DaemonProcess(path)
    try:
        assert probe.wait_event(EVENT, id="away", event="finished", timeout=30)
    finally:
        second.stop()


# -- the sound device ----------------------------------------------------------------------------

def test_busy_device_is_retried_within_the_ttl_then_fails(start_daemon, probe, tmp_path):
    from coze_speaker.sound.players import AplayPlayer

    busy = fake_aplay(tmp_path, "aplay: main:831: audio open error: Device or resource busy")
    r = start_daemon()
    r.daemon.speaker.player = AplayPlayer("default", aplay=str(busy), retries=1, backoff=0.01)
    probe.publish(SAY, {"text": "device busy", "id": "b", "ttl": 2.5})
    ev = probe.wait_event(EVENT, id="b", event="failed", timeout=30)
    assert ev["error"]["code"] == "audio_busy" and "busy" in ev["error"]["message"]
    assert r.thread.is_alive()


# -- the disk ------------------------------------------------------------------------------------

def test_full_cache_filesystem_still_speaks(tmp_path, fake_coze, broker, probe, alsa_sink):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    try:
        path = write_config(tmp_path, fake_coze, broker)
        data = yaml.safe_load(path.read_text())
        data["cache"]["dir"] = str(mnt / "cache")
        path.write_text(yaml.safe_dump(data))
        r = Running(path)
        try:
            online(probe)
            long_text = "A phrase long enough that its audio does not fit on this tiny disk at all. " * 2
            for n in range(2):
                probe.publish(SAY, {"text": long_text, "id": f"full{n}"})
                probe.wait_event(EVENT, id=f"full{n}", event="finished", timeout=30)
            audio = pcm(long_text.strip())
            assert alsa_sink.wait_for(2 * len(audio)).count(audio) == 2
            assert len(fake_coze.requests_to(SPEECH)) == 2  # not cached, streamed both times
            probe.publish(SAY, {"text": "short", "id": "s1"})
            probe.wait_event(EVENT, id="s1", event="finished")
            probe.publish(SAY, {"text": "short", "id": "s2"})
            assert probe.wait_event(EVENT, id="s2", event="finished")["cached"] is True  # caching resumed
        finally:
            r.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- hostile input -----------------------------------------------------------------------------

@settings(max_examples=10_000, deadline=None, database=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda d: json.dumps(d).encode(),
              st.dictionaries(st.sampled_from(["text", "id", "voice", "emotion", "speed", "volume", "priority",
                                               "interrupt", "chime", "ttl", "cache", "repeat", "zzz"]),
                              st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                              max_size=5)),
))
def test_fuzz_10000_payloads(payload):
    try:
        ann = parse_say(payload)
    except PayloadError as exc:
        assert exc.field and str(exc)
    else:
        assert ann.text and ann.text == ann.text.strip()


def test_burst_of_1000_messages_is_accounted_for_with_bounded_memory(tmp_path, fake_coze, broker, probe, alsa_sink):
    path = write_config(tmp_path, fake_coze, broker, audio={"backend": "null"},
                        queue={"max_length": 100, "dedup_seconds": 0})
    d = DaemonProcess(path)
    try:
        online(probe)
        probe.publish(SAY, {"text": "warm up", "id": "warm"})
        probe.wait_event(EVENT, id="warm", event="finished")
        before = d.rss_kb()
        phrases = [f"burst phrase {n % 10}" for n in range(1000)]
        for n, text in enumerate(phrases):
            probe.client.publish(SAY, json.dumps({"text": text, "id": f"b{n}"}), qos=1)
        finals = {"finished", "failed", "expired", "dropped", "interrupted"}

        wanted = {f"b{n}" for n in range(1000)}

        def all_final(_):
            return wanted <= {e["id"] for e in probe.events(EVENT) if e["event"] in finals}

        probe.wait_for(all_final, timeout=180)
        after = d.rss_kb()
        assert len(fake_coze.requests_to(SPEECH)) <= 11  # ten distinct phrases + warm up
        assert d.proc.poll() is None
        skip_memory_limits_under_emulation()
        assert after - before < 30_000, (before, after)
    finally:
        d.stop()


# -- secrets -------------------------------------------------------------------------------------

def test_secrets_never_reach_logs_events_or_argv(tmp_path, fake_coze, broker, probe, alsa_sink):
    token_file = tmp_path / "coze-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    path = write_config(tmp_path, fake_coze, broker, coze={"token": None, "token_file": str(token_file)})
    d = DaemonProcess(path, verbose=True)
    try:
        online(probe)
        fake_coze.add_fault(SPEECH, Fault(http_status=500))
        probe.publish(SAY, {"text": "secret test", "id": "s"})
        probe.wait_event(EVENT, id="s", event="finished", timeout=30)
        cmdline = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{d.proc.pid}/environ").read_bytes().decode(errors="replace")
        assert TOKEN not in cmdline and TOKEN not in environ
    finally:
        d.stop()
    assert "DEBUG" in d.log  # debug logging was on
    assert TOKEN not in d.log
    for m in probe.messages:
        assert TOKEN.encode() not in m.payload


# -- hostile input while something plays ---------------------------------------------------------

@pytest.mark.parametrize("field", ["text", "id"])
def test_a_lone_surrogate_is_refused_and_the_worker_goes_on(start_daemon, probe, fake_coze, field):
    """JSON "\\ud800" is a lone surrogate: refused naming the field, and the speaker keeps speaking."""
    start_daemon()
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "Something long is playing right now, please wait.", "id": "playing"})
    probe.wait_event(EVENT, id="playing", event="started")
    body = '{"text": "bad \\ud800 text"}' if field == "text" else '{"text": "fine", "id": "x\\ud800"}'
    probe.client.publish(SAY, body.encode(), qos=1)
    failed = probe.wait_event(EVENT, event="failed")
    assert failed["error"]["field"] == field and "surrogate" in failed["error"]["message"]
    probe.wait_event(EVENT, id="playing", event="finished", timeout=30)
    fake_coze.chunk_delay = 0
    probe.publish(SAY, {"text": "still alive", "id": "after"})
    assert probe.wait_event(EVENT, id="after", event="finished", timeout=30)


def test_a_retained_stop_does_not_empty_the_queue_restored_after_a_crash(tmp_path, fake_coze, broker, probe,
                                                                          alsa_sink):
    """Retained commands (an automation that set retain by mistake) would act again at every
    connect; they are ignored with a warning, as a retained say is."""
    probe.publish(f"{B}/{D}/stop", "all", retain=True)
    probe.publish(f"{B}/{D}/volume/set", "5", retain=True)
    path = write_config(tmp_path, fake_coze, broker)
    stop_with_a_held_queue(path, probe, fake_coze, 2)
    second = DaemonProcess(path)
    try:
        online(probe, count=2)
        for ident in ("head", "q0", "q1"):
            assert probe.wait_event(EVENT, id=ident, event="finished", timeout=60)
        assert probe.events(EVENT, event="dropped") == []
        assert "ignored a retained message" in second.log
        assert [m.payload for m in probe.on(f"{B}/{D}/volume")][-1] == b"100"
    finally:
        second.stop()
        probe.publish(f"{B}/{D}/stop", "", retain=True)
        probe.publish(f"{B}/{D}/volume/set", "", retain=True)


def test_the_log_says_what_was_spoken_and_why_not(tmp_path, fake_coze, broker, probe, alsa_sink):
    """At the default logging.level (info) every final event is one line: id, outcome, cached,
    latency, reason or code/logid, the text shortened."""
    path = write_config(tmp_path, fake_coze, broker)
    d = DaemonProcess(path)
    try:
        online(probe)
        probe.publish(SAY, {"text": "Dinner is ready", "id": "dinner"})
        probe.wait_event(EVENT, id="dinner", event="finished")
        fake_coze.add_fault(SPEECH, Fault(code=4100, msg="invalid token"))
        probe.publish(SAY, {"text": "The front door is open " * 5, "id": "door"})
        failed = probe.wait_event(EVENT, id="door", event="failed", timeout=30)
        probe.publish(SAY, {"text": "", "id": "empty"})
        probe.wait_event(EVENT, event="failed", id="empty")
    finally:
        d.stop()
    lines = d.log.splitlines()
    assert any("finished dinner (synthesized, first audio after" in line and "'Dinner is ready'" in line
               for line in lines), lines
    door = [line for line in lines if "failed door (" in line]
    assert door and "code 4100" in door[0] and f"logid {failed['error']['logid']}" in door[0]
    assert door[0].rstrip().endswith("…'")  # the text is shortened
    assert any("failed empty (code invalid, field text)" in line for line in lines), lines


def test_a_response_topic_cannot_command_a_speaker(start_daemon, probe, fake_coze):
    """MQTT 5 response topics under the base topic, hermes/ or the discovery prefix are refused:
    a client allowed to publish only to `say` must not stop a critical announcement."""
    running = start_daemon()
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "Smoke detected in the kitchen, please leave the house.", "id": "crit",
                        "priority": "critical"})
    probe.wait_event(EVENT, id="crit", event="started")
    for topic in (f"{B}/{D}/stop", f"{B}/all/say", "hermes/tts/say", "homeassistant/device/x/config"):
        probe.publish(SAY, "{", response_topic=topic)
    refused = probe.wait_for(lambda _: [e for e in probe.events(EVENT, event="failed")
                                        if (e.get("error") or {}).get("field") == "response_topic"][3:])
    assert refused
    # A wildcard is refused too. Over MQTT it may never arrive: mosquitto 2.0.21 (Debian 13)
    # disconnects a client that sends one (MQTT 5 forbids it), 2.0.11 passes it on.
    assert not any(running.daemon.parts.front.response_topic_allowed(t) for t in ("a/+/b", "a/#"))
    assert probe.wait_event(EVENT, id="crit", event="finished", timeout=60)
    assert probe.on(f"{B}/{D}/stop") == [] and probe.on("hermes/tts/say") == []
    probe.publish(SAY, {"text": "reply elsewhere", "id": "ok"}, response_topic="my/replies")
    assert probe.wait_event(EVENT, id="ok", event="finished", timeout=30)


def test_two_speakers_on_one_machine_keep_their_own_journal(tmp_path, fake_coze, broker, probe, alsa_sink):
    """Same default state dir, two device ids: after a crash each speaks only its own queue."""
    kitchen = write_config(tmp_path, fake_coze, broker)
    data = yaml.safe_load(kitchen.read_text())
    data["mqtt"]["device_id"] = "hall"
    hall = tmp_path / "config-hall.yaml"
    hall.write_text(yaml.safe_dump(data))
    hall.chmod(0o600)
    slow_audio(fake_coze)
    speakers = {D: kitchen, "hall": hall}
    running = {}
    try:
        for device, path in speakers.items():
            running[device] = DaemonProcess(path)
        for device in speakers:
            probe.wait_for(lambda ms, d=device: [m for m in ms if m.topic == f"{B}/{d}/availability"
                                                   and m.payload == b"online"], timeout=30)
        for device in speakers:
            probe.publish(f"{B}/{device}/say", {"text": f"slow head of the {device} speaker, holding on", "id": f"{device}-head"})
            probe.wait_event(f"{B}/{device}/event", id=f"{device}-head", event="started")
            probe.publish(f"{B}/{device}/say", {"text": f"only for the {device}", "id": f"{device}-q"})
            probe.wait_event(f"{B}/{device}/event", id=f"{device}-q", event="queued")
        for proc in running.values():
            proc.kill()
    finally:
        for proc in running.values():
            proc.stop()
    assert sorted(p.name for p in (tmp_path / "state").glob("queue-*.jsonl")) == sorted([f"queue-{D}.jsonl", "queue-hall.jsonl"])
    fake_coze.chunk_delay = 0
    again = DaemonProcess(kitchen)
    try:
        online(probe, count=2)
        assert probe.wait_event(f"{B}/{D}/event", id=f"{D}-q", event="finished", timeout=60)
        assert probe.wait_event(f"{B}/{D}/event", id=f"{D}-head", event="finished", timeout=60)
        assert [e for e in probe.events(f"{B}/{D}/event") if e["id"].startswith("hall")] == []
    finally:
        again.stop()


def test_children_get_a_minimal_environment(start_daemon, probe, tmp_path, monkeypatch):
    """aplay and espeak-ng never see a token or password taken from the environment."""
    from coze_speaker.sound.players import AplayPlayer
    from coze_speaker.voice.fallback import EspeakFallback

    monkeypatch.setenv("COZE_API_TOKEN", TOKEN)
    monkeypatch.setenv("MQTT_PASSWORD", "mqtt-secret-value")
    seen = tmp_path / "child-env.json"
    fake = tmp_path / "fake-child"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import io, json, os, sys, wave\n"
        f"open({str(seen)!r}, 'a').write(json.dumps(dict(os.environ)) + '\\n')\n"
        "data = sys.stdin.buffer.read()\n"
        "if '--stdout' in sys.argv:\n"
        "    buf = io.BytesIO(); w = wave.open(buf, 'wb'); w.setnchannels(1); w.setsampwidth(2)\n"
        "    w.setframerate(22050); w.writeframes(b'\\x10\\x00' * 2205); w.close()\n"
        "    sys.stdout.buffer.write(buf.getvalue())\n")
    fake.chmod(0o755)
    r = start_daemon(coze={"token": "${COZE_API_TOKEN}"})
    r.daemon.speaker.player = AplayPlayer("default", aplay=str(fake), retries=1)
    probe.publish(SAY, {"text": "who can see my token", "id": "env"})
    assert probe.wait_event(EVENT, id="env", event="finished", timeout=30)
    assert EspeakFallback(binary=str(fake)).synthesize("hello", 24000)
    envs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(envs) == 2
    for env in envs:
        assert "COZE_API_TOKEN" not in env and "MQTT_PASSWORD" not in env
        assert TOKEN not in json.dumps(env) and "mqtt-secret-value" not in json.dumps(env)
        assert env.get("PATH") and env.get("ALSA_CONFIG_PATH")  # what a child needs is still there
