"""The owner of an announcement, under ordinary events: a hung Coze past the TTL, an urgent
announcement cutting one off, a reload while speaking, a reload that cannot be applied, a
worker that stops moving. Real mosquitto, the fake Coze over HTTP, real aplay into the ALSA
file sink (the stuck-worker test alone uses a player that never returns: that is its fault).
"""

from __future__ import annotations

import socket
import threading
from typing import Iterable, List

import pytest
import yaml

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from fake_coze import Fault
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from coze_speaker.app.daemon import Daemon
from coze_speaker.config import load_config
from coze_speaker.queue import worker as worker_module
from coze_speaker.sound.player import Player
from test_daemon import AVAIL, EVENT, SAY, SPEECH, pcm, slow_audio, start_daemon, write_config  # noqa: F401
from test_one_owner import reload

B, D = "coze-speaker", "testspk"
STOP = f"{B}/{D}/stop"


def kinds(probe, ann_id: str) -> List[str]:
    return [e["event"] for e in probe.events(EVENT, id=ann_id)]


def final(probe, ann_id: str, timeout: float = 30) -> dict:
    """The one final event of an announcement (waiting, bounded)."""
    finals = ("finished", "failed", "expired", "dropped", "interrupted")
    return probe.wait_for(lambda _: next((e for e in probe.events(EVENT, id=ann_id) if e["event"] in finals), None),
                          timeout=timeout)


# -- item 10: the deadline travels through synthesis --------------------------------------

def test_the_ttl_holds_while_coze_hangs(start_daemon, probe, fake_coze, alsa_sink):
    """ttl 1 s, Coze answers after 3 s: the announcement ends `expired`, nothing of it plays."""
    start_daemon()
    fake_coze.add_fault(SPEECH, Fault.hanging(3))
    probe.publish(SAY, {"text": "the door is open", "id": "late", "ttl": 1})
    ev = final(probe, "late")
    assert ev["event"] == "expired" and ev["reason"] == "ttl", ev
    assert "started" in kinds(probe, "late")  # it had begun: the deadline reached inside synthesis
    probe.publish(SAY, {"text": "next one", "id": "next"})
    nxt = final(probe, "next")
    assert nxt["event"] == "finished", (nxt.get("error"), nxt)
    audio = pcm("next one")
    played = alsa_sink.wait_for(len(audio))
    at = played.find(audio)
    assert at >= 0 and played[:at].strip(b"\0") == b"", "the expired one must never reach the device"


def test_an_announcement_that_started_in_time_plays_to_its_end(start_daemon, probe, fake_coze, alsa_sink):
    """The TTL bounds when sound starts, not how long it lasts: no sentence is cut off."""
    start_daemon()
    slow_audio(fake_coze)  # real time: about 2 s of audio takes about 2 s to arrive
    text = "A sentence that takes longer to say than its time to live."
    probe.publish(SAY, {"text": text, "id": "long", "ttl": 1})
    ev = final(probe, "long")
    assert ev["event"] == "finished", ev
    audio = pcm(text)
    assert alsa_sink.wait_for(len(audio)).startswith(audio)


# -- item 11: a cached phrase never waits behind a hung miss -------------------------------

def test_a_cached_phrase_does_not_wait_behind_a_hung_miss(start_daemon, probe, fake_coze, alsa_sink):
    """Coze takes 6 s to answer a miss (no timeout trips): a cached phrase published behind it
    is spoken while the miss is still being synthesized, then the miss plays."""
    start_daemon(coze={"timeout": 30, "first_audio_timeout": 30})
    probe.publish(SAY, {"text": "The front door is open", "id": "warm"})
    assert final(probe, "warm")["event"] == "finished"  # now in the cache
    fake_coze.add_fault(SPEECH, Fault.hanging(6))
    probe.publish(SAY, {"text": "A phrase Coze is slow to say", "id": "miss"})
    probe.wait_event(EVENT, id="miss", event="started")
    probe.publish(SAY, {"text": "The front door is open", "id": "door"})
    door = final(probe, "door")
    assert door["event"] == "finished" and door["cached"] is True, door
    miss = final(probe, "miss")
    assert miss["event"] == "finished", miss
    finals = [e["id"] for e in probe.events(EVENT) if e["event"] == "finished"]
    assert finals == ["warm", "door", "miss"], "the cached phrase went first"
    requeued = probe.events(EVENT, id="miss", event="requeued")
    assert requeued and requeued[0]["reason"] == "overtaken by door"
    assert len(fake_coze.requests_to(SPEECH)) == 2  # the miss was synthesized once, not again


# -- item 21: an interrupted announcement is resumed --------------------------------------

def test_an_interrupted_announcement_plays_again_after_the_urgent_one(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon()
    slow_audio(fake_coze)
    long_text = "The washing machine has finished and the laundry can be hung up now. " * 2
    probe.publish(SAY, {"text": long_text, "id": "laundry"})
    probe.wait_event(EVENT, id="laundry", event="started")
    probe.publish(SAY, {"text": "Smoke in the kitchen", "id": "smoke", "priority": "critical"})
    assert final(probe, "smoke")["event"] == "finished"
    ev = final(probe, "laundry", timeout=60)
    assert ev["event"] == "finished", ev
    assert kinds(probe, "laundry") == ["queued", "started", "requeued", "started", "finished"]
    requeued = probe.events(EVENT, id="laundry", event="requeued")[0]
    assert requeued["reason"] == "interrupted by smoke"
    # the urgent one came first, then the interrupted one from its start
    order = [(e["id"], e["event"]) for e in probe.events(EVENT) if e["event"] in ("started", "finished")]
    assert order[-3:] == [("smoke", "finished"), ("laundry", "started"), ("laundry", "finished")]
    smoke, laundry = pcm("Smoke in the kitchen"), pcm(long_text.strip())
    played = alsa_sink.wait_for(len(smoke) + len(laundry))
    assert smoke in played and laundry in played[played.find(smoke) + len(smoke):], "whole, after the urgent one"


def test_an_explicit_stop_is_never_resumed(start_daemon, probe, fake_coze):
    start_daemon()
    slow_audio(fake_coze)
    long_text = "A long story about the weather that nobody wants to hear to its end. " * 2
    probe.publish(SAY, {"text": long_text, "id": "weather"})
    probe.wait_event(EVENT, id="weather", event="started")
    probe.publish(SAY, {"text": "Door bell", "id": "bell", "interrupt": True})
    probe.wait_event(EVENT, id="weather", event="requeued")
    probe.publish(STOP, "all")
    assert final(probe, "weather")["event"] in ("dropped", "interrupted")
    probe.publish(SAY, {"text": "after the stop", "id": "after"})
    assert final(probe, "after")["event"] == "finished"
    assert kinds(probe, "weather").count("started") == 1


def test_resume_interrupted_false_keeps_the_old_behaviour(start_daemon, probe, fake_coze):
    start_daemon(queue={"resume_interrupted": False})
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "Something long enough to be cut off midway. " * 2, "id": "cut"})
    probe.wait_event(EVENT, id="cut", event="started")
    probe.publish(SAY, {"text": "Urgent", "id": "urgent", "priority": "critical"})
    ev = final(probe, "cut")
    assert ev["event"] == "interrupted" and ev["reason"] == "interrupted by urgent"
    assert final(probe, "urgent")["event"] == "finished"


# -- item 8: a reload lets the playing announcement finish --------------------------------

def test_a_reload_lets_the_playing_announcement_finish(start_daemon, probe, fake_coze, alsa_sink, tmp_path):
    r = start_daemon()
    slow_audio(fake_coze)
    text = "This announcement is playing while the configuration is reloaded. " * 2
    probe.publish(SAY, {"text": text, "id": "playing"})
    probe.wait_event(EVENT, id="playing", event="started")
    reload(r, probe, tmp_path, lambda d: d["queue"].update(max_length=50))
    ev = final(probe, "playing")
    assert ev["event"] == "finished", ev
    assert kinds(probe, "playing") == ["queued", "started", "finished"]
    audio = pcm(text.strip())
    assert alsa_sink.wait_for(len(audio)).startswith(audio), "played whole, once, without a cut"
    assert r.daemon.config.queue.max_length == 50


# -- item 7: a reload that validates but cannot be applied --------------------------------

def _under_a_file(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    return blocker / "cache"


@pytest.mark.parametrize("breakage", ["cache_dir_under_a_file", "missing_tls_ca"])
def test_a_reload_that_cannot_be_applied_keeps_the_speaker_running(start_daemon, probe, fake_coze, tmp_path,
                                                                   breakage, caplog):
    r = start_daemon()
    probe.publish(SAY, {"text": "before the reload", "id": "before"})
    assert final(probe, "before")["event"] == "finished"

    def change(data):
        if breakage == "cache_dir_under_a_file":
            data["cache"]["dir"] = str(_under_a_file(tmp_path))
        else:
            data["mqtt"]["tls"] = {"ca_certs": str(tmp_path / "missing-ca.pem")}

    path = tmp_path / "config.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level("ERROR", logger="coze_speaker"):
        r.daemon.request_reload()
        probe.wait_for(lambda _: any("keeping the running config" in rec.getMessage() for rec in caplog.records),
                       timeout=30)
    assert r.thread.is_alive()
    assert [m.payload for m in probe.on(AVAIL)][-1] == b"online"
    probe.publish(SAY, {"text": "after the failed reload", "id": "after"})
    ev = final(probe, "after")
    assert ev["event"] == "finished", ev
    assert str(r.daemon.config.cache.dir) == str(tmp_path / "cache")


# -- item 2: the watchdog checks progress, not only that the thread exists -----------------

class _NeverReturns(Player):
    """The fault: a player stuck in a write that ignores stop (a driver bug, a hung kernel call)."""

    name = "stuck"

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        self.entered.set()
        self.release.wait(60)
        return False

    def stop(self) -> None:
        pass  # ignores it: that is the fault


def test_the_watchdog_stops_trusting_a_stuck_worker(tmp_path, fake_coze, broker, probe, monkeypatch):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(worker_module, "STALL_SECONDS", 0.5)
    player = _NeverReturns()
    daemon = Daemon(load_config(write_config(tmp_path, fake_coze, broker)), player=player)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        messages: List[str] = []

        def receive_until(wanted: str) -> None:
            for _ in range(500):  # bounded; each recv waits at most 30 s
                messages.append(notify.recv(4096).decode())
                if messages[-1] == wanted:
                    return
            pytest.fail(f"no {wanted} in {messages[-20:]}")

        receive_until("WATCHDOG=1")  # a healthy idle worker is trusted
        probe.publish(SAY, {"text": "this one gets stuck in the player", "id": "stuck", "ttl": 1})
        assert player.entered.wait(30)
        receive_until("WATCHDOG=trigger")
        assert daemon.worker.alive, "the thread exists: only progress tells it is stuck"
    finally:
        player.release.set()
        daemon.request_stop()
        thread.join(15)
        notify.close()
