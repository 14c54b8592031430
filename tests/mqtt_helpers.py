"""A real mosquitto on a free loopback port, and a probe client that records what it sees."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> Optional[str]:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


class Broker:
    """mosquitto started by the test; stop()/start() simulate an outage (nothing persisted)."""

    def __init__(self, directory: Path, extra_conf: str = "") -> None:
        self.dir = directory
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""  # else mosquitto drops to 'mosquitto', locked out of tmp
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_queued_messages 100000\nmax_inflight_messages 0\n"
                             f"log_dest file {directory / 'mosquitto.log'}\n{extra_conf}")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Broker":
        binary = mosquitto_binary()
        if binary is None:
            import pytest  # only here: bench/ starts this broker without pytest

            pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()[-500:]}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


try:  # the fixtures, for tests; bench/ imports Broker without pytest installed
    import pytest
except ImportError:  # pragma: no cover
    pytest = None


def _fixture(fn):
    return pytest.fixture(fn) if pytest is not None else fn


@_fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


class Probe:
    """A test's own MQTT client: subscribes to everything, keeps every message."""

    def __init__(self, port: int) -> None:
        self.messages: List[mqtt.MQTTMessage] = []
        self._parsed: List[Optional[dict]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("#", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("probe could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        try:
            parsed = json.loads(message.payload)
        except (ValueError, RecursionError):
            parsed = None
        with self._cond:
            self.messages.append(message)
            self._parsed.append(parsed if isinstance(parsed, dict) else None)

    def publish(self, topic: str, payload, *, qos: int = 1, retain: bool = False,
                response_topic: Optional[str] = None, correlation: Optional[bytes] = None,
                expiry: Optional[int] = None) -> None:
        props = None
        if response_topic or correlation or expiry:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
            if expiry:
                props.MessageExpiryInterval = expiry
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props).wait_for_publish(5)

    def on(self, topic: str) -> List[mqtt.MQTTMessage]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[List[mqtt.MQTTMessage]], object], timeout: float = 10.0):
        """Wait (bounded) until predicate(messages) is truthy; returns its value or fails the test."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting; saw {[(m.topic, m.payload[:80]) for m in self.messages[-15:]]}")
                self._cond.wait(min(left, 0.05))  # poll: a burst must not wake us per message

    def events(self, topic: str, **match) -> List[dict]:
        """The JSON messages on topic whose fields equal match (parsed once, on arrival)."""
        with self._cond:
            pairs = list(zip(self.messages, self._parsed))
        return [data for m, data in pairs if data is not None and m.topic == topic
                and all(data.get(k) == v for k, v in match.items())]

    def wait_event(self, topic: str, timeout: float = 10.0, **match) -> dict:
        return self.wait_for(lambda _: (self.events(topic, **match) or [None])[0], timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@_fixture
def probe(broker):
    p = Probe(broker.port)
    yield p
    p.close()
