"""The fault suite, front-end part (issue 10, items 20, 22, 23, 25): dedup and Hermes
outcomes, systemd READY, paho's log lines during a broker outage, the retained `last`.

Real mosquitto, the fake Coze over HTTP, real aplay into the ALSA file sink; the daemon
in-process (a thread), so its log is captured with caplog.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import time
from typing import List, Tuple

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from fake_coze import Fault
from mqtt_helpers import Probe, broker, free_port, probe  # noqa: F401  (fixtures)
from test_daemon import (AVAIL, EVENT, SAY, SPEECH, B, D, Running, pcm, slow_audio,  # noqa: F401
                         start_daemon, write_config)
from test_faults import online
from test_systemd import NotifySocket

STATE = f"{B}/{D}/state"
HERMES_SAY, SAY_FINISHED, HERMES_ERROR = "hermes/tts/say", "hermes/tts/sayFinished", "hermes/error/tts"


# -- item 20: dedup only while pending; sayFinished means spoken ----------------------------------

def test_the_same_text_after_the_first_has_finished_is_spoken_again(start_daemon, probe, fake_coze, alsa_sink):
    """A doorbell pressed twice speaks twice; a copy that arrives while the first is still
    queued or playing is coalesced (dropped, reason dedup)."""
    start_daemon(queue={"dedup_seconds": 30})
    probe.publish(SAY, {"text": "Someone is at the door", "id": "ring-1"})
    probe.wait_event(EVENT, id="ring-1", event="finished")
    probe.publish(SAY, {"text": "Someone is at the door", "id": "ring-2"})
    assert probe.wait_event(EVENT, id="ring-2", event="finished")["cached"] is True
    audio = pcm("Someone is at the door")
    alsa_sink.wait_for(2 * len(audio))
    assert alsa_sink.read().count(audio) == 2

    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "A slower announcement, still playing", "id": "slow-1"})
    probe.wait_event(EVENT, id="slow-1", event="started")
    probe.publish(SAY, {"text": "A slower announcement, still playing", "id": "slow-2"})
    assert probe.wait_event(EVENT, id="slow-2", event="dropped")["reason"] == "dedup"
    probe.wait_event(EVENT, id="slow-1", event="finished", timeout=30)
    assert [e["event"] for e in probe.events(EVENT, id="slow-2")] == ["dropped"]


def test_hermes_say_finished_only_when_spoken(start_daemon, probe, fake_coze):
    """Rhasspy takes sayFinished as "spoken": a say that is dropped, fails or is interrupted
    gets hermes/error/tts (context = its id) and no sayFinished."""
    start_daemon(queue={"dedup_seconds": 30})
    slow_audio(fake_coze)

    def say(text, sid):
        probe.publish(HERMES_SAY, {"text": text, "siteId": "kitchen", "id": sid, "sessionId": f"s-{sid}"})

    say("Rhasspy speaks slowly, please wait", "h1")
    probe.wait_event(EVENT, id="h1", event="started")
    say("Rhasspy speaks slowly, please wait", "h2")  # coalesced into h1
    dropped = probe.wait_event(HERMES_ERROR, context="h2")
    assert dropped["siteId"] == "kitchen" and dropped["sessionId"] == "s-h2" and "dedup" in dropped["error"]
    assert probe.wait_event(SAY_FINISHED, id="h1", timeout=30) == {"id": "h1", "siteId": "kitchen",
                                                                   "sessionId": "s-h1"}

    fake_coze.chunk_delay = 0
    fake_coze.add_fault(SPEECH, Fault(code=4000, msg="invalid parameter"))  # final: not retried
    say("This one cannot be synthesized", "h3")
    failed = probe.wait_event(HERMES_ERROR, context="h3", timeout=30)
    assert "invalid parameter" in failed["error"]

    slow_audio(fake_coze)
    say("This one is stopped while it plays, it is long enough", "h4")
    probe.wait_event(EVENT, id="h4", event="started")
    probe.publish(f"{B}/{D}/stop", "")
    assert "interrupted" in probe.wait_event(HERMES_ERROR, context="h4", timeout=30)["error"]

    fake_coze.chunk_delay = 0
    say("The last one is spoken", "h5")
    probe.wait_event(SAY_FINISHED, id="h5", timeout=30)  # after every message about h2…h4
    assert [m["id"] for m in probe.events(SAY_FINISHED)] == ["h1", "h5"]
    assert {m["context"] for m in probe.events(HERMES_ERROR)} == {"h2", "h3", "h4"}


class SwallowingProxy:
    """A TCP proxy on loopback between the daemon and the broker. With `swallow` on, what the
    daemon sends is dropped (its acknowledgements never reach the broker) while the broker's
    messages still reach it; `cut()` closes every connection, as a network drop would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.swallow = False
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is upstream:
                        client.sendall(data)
                    elif not self.swallow:
                        upstream.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            client.close()
            upstream.close()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._server.close()
        self._thread.join(5)


def test_a_broker_redelivery_after_the_first_copy_finished_is_not_spoken_again(
        tmp_path, fake_coze, broker, probe, alsa_sink, monkeypatch, caplog):
    """The daemon's acknowledgement of a say is lost (the connection drops before it reaches
    the broker); the announcement is spoken; when the daemon reconnects, the broker sends
    the message again with the DUP flag. It is the same announcement: not spoken twice, no
    second final event, even with text dedup off."""
    caplog.set_level(logging.DEBUG, logger="coze_speaker.queue.worker")
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    proxy = SwallowingProxy(broker.port)
    path = write_config(tmp_path, fake_coze, broker, queue={"dedup_seconds": 0})
    path.write_text(path.read_text().replace(f"port: {broker.port}", f"port: {proxy.port}"))
    r = Running(path)
    try:
        online(probe)
        proxy.swallow = True  # from now on nothing the daemon sends reaches the broker
        probe.publish(SAY, {"text": "The garage door is open", "id": "garage"})
        audio = pcm("The garage door is open")
        alsa_sink.wait_for(len(audio), timeout=30)  # spoken (its events are swallowed too)
        proxy.swallow = False
        proxy.cut()
        online(probe, count=2, timeout=60)
        probe.publish(SAY, {"text": "And the next one", "id": "next"})
        probe.wait_event(EVENT, id="next", event="finished", timeout=30)
        assert "announcement garage arrived again (a redelivery); coalesced" in caplog.text, \
            "the broker did not send the message again: the test proved nothing"
        assert alsa_sink.read().count(audio) == 1
        finals = [e for e in probe.events(EVENT, id="garage") if e["event"] not in ("queued", "started")]
        assert [e["event"] for e in finals] == ["finished"]
    finally:
        r.stop()
        proxy.close()


# -- item 25: the retained state keeps `last` across a restart and a reload ------------------------

def states_after(probe, index):
    """The state messages received after message number `index` (parsed)."""
    return [json.loads(m.payload) for m in probe.messages[index:] if m.topic == STATE]


def retained_state(port):
    """What a client that subscribes now gets as the retained state."""
    late = Probe(port)
    try:
        return json.loads(late.wait_for(lambda _: [m for m in late.on(STATE) if m.retain])[-1].payload)
    finally:
        late.close()


def test_the_retained_state_keeps_last_across_a_restart_and_a_reload(start_daemon, probe, broker, tmp_path):
    from test_one_owner import reload

    r = start_daemon()
    probe.publish(SAY, {"text": "The washing machine is done", "id": "wash"})
    probe.wait_event(EVENT, id="wash", event="finished")
    probe.wait_for(lambda _: [s for s in states_after(probe, 0) if s.get("last") == "The washing machine is done"])
    r.stop()
    assert json.loads((tmp_path / "state" / f"last-{D}.json").read_text())["id"] == "wash"

    mark = len(probe.messages)
    r = start_daemon()  # a restart: the first state it publishes already says what was spoken last
    assert probe.wait_for(lambda _: states_after(probe, mark))[0].get("last") == "The washing machine is done"
    assert retained_state(broker.port).get("last") == "The washing machine is done"

    mark = len(probe.messages)
    reload(r, probe, tmp_path, lambda d: d["queue"].update(max_length=50))  # SIGHUP
    assert probe.wait_for(lambda _: states_after(probe, mark))[0].get("last") == "The washing machine is done"
    assert retained_state(broker.port).get("last") == "The washing machine is done"

    probe.publish(SAY, {"text": "Dinner is ready", "id": "dinner"})  # and it still moves on
    probe.wait_event(EVENT, id="dinner", event="finished")
    probe.wait_for(lambda _: [s for s in states_after(probe, mark) if s.get("last") == "Dinner is ready"])


# -- item 23: one WARNING per broker outage, no paho ERROR lines, nothing on a requested stop ------

def _ours(caplog, start=0, level=logging.WARNING):
    return [r for r in caplog.records[start:] if r.name.startswith("coze_speaker") and r.levelno >= level]


def _failed_attempts(caplog, start):
    """paho's own line for each reconnect attempt that failed (DEBUG, also before this fix)."""
    return len([r for r in caplog.records[start:] if r.name == "coze_speaker.paho"
                and "Connection failed, retrying" in r.getMessage()])


def _wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill(broker):
    broker.proc.kill()
    broker.proc.wait(5)
    broker.proc = None


def test_a_broker_outage_is_one_warning_and_a_stop_is_silent(tmp_path, fake_coze, broker, probe, alsa_sink,
                                                             monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="coze_speaker.paho")  # the CLI caps it at INFO (an earlier test)
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    r = Running(write_config(tmp_path, fake_coze, broker))
    try:
        online(probe)
        probe.close()

        mark = len(caplog.records)
        _kill(broker)  # an outage: several reconnect attempts fail, then the broker is back
        _wait_for(lambda: _failed_attempts(caplog, mark) >= 2, "two failed reconnect attempts")
        broker.start()
        fresh = Probe(broker.port)
        try:
            online(fresh, timeout=60)
            fresh.publish(SAY, {"text": "back again", "id": "back"})
            fresh.wait_event(EVENT, id="back", event="finished", timeout=30)
        finally:
            fresh.close()
        outage = _ours(caplog, mark)
        assert [r.levelname for r in outage] == ["WARNING"], [r.getMessage() for r in outage]
        assert "lost the MQTT broker" in outage[0].getMessage()
        back = [r.getMessage() for r in _ours(caplog, mark, logging.INFO) if r.levelno == logging.INFO
                and "MQTT broker" in r.getMessage()]
        assert len(back) == 1 and "again after" in back[0], back

        mark = len(caplog.records)
        _kill(broker)  # down again, and the daemon is stopped (SIGTERM) while it is
        _wait_for(lambda: _failed_attempts(caplog, mark) >= 2, "two failed reconnect attempts")
        stop_mark = len(caplog.records)
        r.stop()
        assert len(_ours(caplog, mark)) == 1
        assert _ours(caplog, stop_mark) == [], [r.getMessage() for r in _ours(caplog, stop_mark)]
    finally:
        if r.thread.is_alive():
            r.stop()

    broker.start()  # a stop with the broker up says nothing either
    r = Running(write_config(tmp_path, fake_coze, broker))
    fresh = Probe(broker.port)
    try:
        online(fresh)
        mark = len(caplog.records)
        r.stop()
        assert _ours(caplog, mark) == [], [r.getMessage() for r in _ours(caplog, mark)]
    finally:
        fresh.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- item 22: systemd READY=1 as soon as the broker is connected, and after a reload -------------

def test_ready_comes_when_connected_not_at_the_main_loops_tick(tmp_path, fake_coze, broker, alsa_sink, probe,
                                                               monkeypatch, caplog):
    """The main loop's tick is made an hour long: READY=1 must come from the connection
    itself (at start, with the broker down at first, and after a reload that worked or
    not), and RELOADING=1 carries MONOTONIC_USEC from the reload."""
    import coze_speaker.app.daemon as daemon_module

    monkeypatch.setattr(daemon_module, "TICK", 3600.0)
    ns = NotifySocket(only_pid=os.getpid())
    monkeypatch.setenv("NOTIFY_SOCKET", ns.path)
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID", "COZE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    path = write_config(tmp_path, fake_coze, broker)
    probe.close()
    broker.stop()  # the daemon starts while the broker is down
    r = Running(path)
    try:
        _wait_for(lambda: "cannot reach the MQTT broker" in caplog.text, "the first failed connection")
        ns.drain()
        assert not ns.seen("READY=1"), ns.messages  # not ready without a broker

        broker.start()
        ready = ns.wait_for("READY=1", 30)

        before = time.monotonic_ns() // 1000
        r.daemon.request_reload()
        reloading = ns.wait_for("RELOADING=1", 30, after=ready + 1)
        usec = [line for line in ns.messages[reloading] if line.startswith("MONOTONIC_USEC=")]
        assert len(usec) == 1, ns.messages[reloading]
        assert before <= int(usec[0].split("=", 1)[1]) <= time.monotonic_ns() // 1000
        ready = ns.wait_for("READY=1", 30, after=reloading + 1)

        path.write_text(path.read_text() + "\nqueue: {max_length: -1}\n")  # a reload that fails
        r.daemon.request_reload()
        reloading = ns.wait_for("RELOADING=1", 30, after=ready + 1)
        ns.wait_for("READY=1", 30, after=reloading + 1)  # still running, on the old config: ready again
        assert "config reload failed, keeping the running config" in caplog.text

        r.stop()
        ns.wait_for("STOPPING=1", 30)
    finally:
        if r.thread.is_alive():
            r.stop()
        ns.close()
