"""The broker connection with TLS (CA + client certificate) and with username/password,
against real mosquitto instances configured by the test; secrets stay out of every output."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from alsa_sink import alsa_sink  # noqa: F401
from conftest import TOKEN
from mqtt_helpers import Broker, free_port
from test_daemon import EVENT, SAY, Running, write_config

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import json
import threading
import time


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "speaker")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name, cwd=d)
    return d


class Listener:
    """A plain paho client on the test's side of a secured broker."""

    def __init__(self, port, **tls_or_auth):
        self.messages = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if "ca" in tls_or_auth:
            self.client.tls_set(ca_certs=tls_or_auth["ca"], certfile=tls_or_auth["cert"], keyfile=tls_or_auth["key"])
        if "user" in tls_or_auth:
            self.client.username_pw_set(tls_or_auth["user"], tls_or_auth["password"])
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("#", qos=1)
        assert done.wait(10)

    def wait_online(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(m.topic.endswith("/availability") and m.payload == b"online" for m in list(self.messages)):
                return
            time.sleep(0.05)
        raise AssertionError("the daemon never came online")

    def wait_event(self, **match):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for m in list(self.messages):
                if m.topic == EVENT:
                    data = json.loads(m.payload)
                    if all(data.get(k) == v for k, v in match.items()):
                        return data
            time.sleep(0.05)
        raise AssertionError(f"no event {match}; saw {[m.topic for m in self.messages]}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_tls_with_client_certificate(tmp_path, certs, fake_coze, alsa_sink):
    port = free_port()
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b")
    broker.port = port
    broker.conf.write_text(
        broker.conf.read_text().split("listener")[0] + f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
        "require_certificate true\n")
    broker.start()
    try:
        path = write_config(tmp_path, fake_coze, broker, mqtt={"tls": {
            "ca_certs": str(certs / "ca.crt"), "certfile": str(certs / "client.crt"),
            "keyfile": str(certs / "client.key")}})
        r = Running(path)
        listener = Listener(port, ca=str(certs / "ca.crt"), cert=str(certs / "client.crt"),
                            key=str(certs / "client.key"))
        try:
            listener.wait_online()
            listener.client.publish(SAY, json.dumps({"text": "over TLS", "id": "tls"}), qos=1)
            assert listener.wait_event(id="tls", event="finished")
        finally:
            listener.close()
            r.stop()
    finally:
        broker.stop()


def test_username_and_password_from_a_file(tmp_path, fake_coze, alsa_sink, caplog):
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    secret = "s3cret-broker-password"
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "speaker", secret], check=True,
                   capture_output=True)
    pwfile.chmod(0o644)
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", f"password_file {pwfile}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    mine = tmp_path / "mqtt-password"
    mine.write_text(secret + "\n")
    mine.chmod(0o600)
    try:
        path = write_config(tmp_path, fake_coze, broker, mqtt={"username": "speaker", "password_file": str(mine)})
        caplog.set_level("DEBUG")
        r = Running(path)
        listener = Listener(broker.port, user="speaker", password=secret)
        try:
            listener.wait_online()
            listener.client.publish(SAY, json.dumps({"text": "with a password", "id": "pw"}), qos=1)
            assert listener.wait_event(id="pw", event="finished")
            assert secret not in repr(r.daemon.config) and secret not in repr(r.daemon.bridge)
        finally:
            listener.close()
            r.stop()
        assert secret not in caplog.text and TOKEN not in caplog.text
    finally:
        broker.stop()


def test_wrong_password_is_reported_and_retried_not_fatal(tmp_path, fake_coze, alsa_sink, caplog):
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "speaker", "right"], check=True, capture_output=True)
    pwfile.chmod(0o644)
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", f"password_file {pwfile}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        path = write_config(tmp_path, fake_coze, broker, mqtt={"username": "speaker", "password": "wrong-pw-value"})
        r = Running(path)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "refused" not in caplog.text:
            time.sleep(0.05)
        assert "refused" in caplog.text and "wrong-pw-value" not in caplog.text
        assert r.thread.is_alive()
        r.stop()
    finally:
        broker.stop()
