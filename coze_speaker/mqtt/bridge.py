"""The MQTT connection: connect, stay connected, subscribe, hand messages over, publish.

Knows topics and bytes, nothing of audio. Subscriptions are made in on_connect, so they come
back after every reconnect; the will publishes `offline` if the daemon dies.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

#: paho reconnects after 1, 2, 4… seconds, at most this many.
RECONNECT_MIN, RECONNECT_MAX = 1, 30


class _PahoLog(logging.LoggerAdapter):
    """paho's own log lines. Its connection errors ("Client is not connected", "failed to
    receive on socket", one per reconnect attempt and some on a clean stop) go to DEBUG:
    the bridge reports an outage itself, once. An exception in one of our callbacks stays
    an error (a bug)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and not str(msg).startswith("Caught exception"):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


@dataclass(frozen=True)
class Incoming:
    """One received message, with the MQTT 5 properties the daemon uses."""

    topic: str
    payload: bytes
    retain: bool = False
    received: float = 0.0
    expiry: Optional[float] = None
    response_topic: Optional[str] = None
    correlation_data: Optional[bytes] = None
    #: packet id and QoS, for the acknowledgement sent once the message is handled
    mid: int = 0
    qos: int = 0
    #: the broker sends it again (MQTT DUP flag): it was delivered before and not acknowledged
    dup: bool = False


def apply_credentials(client: mqtt.Client, config: Any) -> None:
    """Username/password and TLS from the `mqtt:` config section onto a paho client."""
    if config.username:
        client.username_pw_set(config.username, config.password.reveal() if config.password else None)
    if config.tls is not None:
        tls = config.tls
        client.tls_set(
            ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
            certfile=str(tls.certfile) if tls.certfile else None,
            keyfile=str(tls.keyfile) if tls.keyfile else None,
            cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
        )
        if tls.insecure:
            client.tls_insecure_set(True)


def _no_delay(client: mqtt.Client) -> None:
    """Small messages go out at once: with Nagle on, an event that follows another waits
    for the broker's delayed ACK (~40 ms)."""
    sock = client.socket()
    try:
        if sock is not None:
            getattr(sock, "setsockopt")(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a real socket, or AttributeError
    except (OSError, AttributeError):
        pass


class MqttBridge:
    """One paho client, reconnecting forever with capped backoff."""

    def __init__(self, config: Any, *, client_id: str, will_topic: str, will_payload: bytes,
                 subscriptions: Callable[[], Iterable[str]], on_message: Callable[[Incoming], None],
                 on_connect: Callable[[], None] = lambda: None,
                 session_expiry: int = 0) -> None:
        self.config = config
        self.client_id = client_id
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self.v5 = config.protocol == 5
        self.session_expiry = session_expiry
        self.connected = threading.Event()
        #: while the broker is away: when it went (monotonic) and the problems already warned about
        self._outage_since: Optional[float] = None
        self._warned: set = set()
        self._stopping = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else True,
        )
        # a QoS 1 message is acknowledged only once handled (journaled), not when it arrives:
        # the intake thread calls ack(), so a crash in between makes the broker send it again
        self.client.manual_ack_set(True)
        self.client.enable_logger(cast(logging.Logger, _PahoLog(logging.getLogger("coze_speaker.paho"), {})))
        self.client.reconnect_delay_set(min_delay=RECONNECT_MIN, max_delay=RECONNECT_MAX)
        self.client.will_set(will_topic, will_payload, qos=1, retain=True)
        apply_credentials(self.client, config)
        self.client.on_connect = self._handle_connect
        self.client.on_connect_fail = self._handle_connect_fail
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message

    def __repr__(self) -> str:
        return f"MqttBridge({self.config.host}:{self.config.port}, client_id={self.client_id!r})"

    def start(self) -> None:
        """Connect in the background: the network thread retries until the broker answers."""
        kwargs: dict = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry:
                props.SessionExpiryInterval = int(self.session_expiry)
            kwargs = {"clean_start": self.session_expiry == 0, "properties": props}
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive, **kwargs)
        self.client.loop_start()

    def stop(self, final_topic: Optional[str] = None, final_payload: bytes = b"", timeout: float = 2.0) -> None:
        """Publish a last retained message (e.g. `offline`) if connected, then disconnect."""
        self._stopping = True
        if final_topic and self.connected.is_set():
            info = self.client.publish(final_topic, final_payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        if self.connected.is_set():
            self.client.disconnect()
        self.client.loop_stop()

    def ack(self, message: Incoming) -> None:
        """Acknowledge a handled message (QoS 1 and 2; nothing to do for QoS 0)."""
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: Optional[int] = None,
                correlation_data: Optional[bytes] = None) -> None:
        """Queue a message; paho sends it now, or after the reconnect for QoS > 0."""
        props = None
        if self.v5 and correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=self.config.qos if qos is None else qos, retain=retain,
                            properties=props)

    # -- paho callbacks (network thread) ------------------------------------------------

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                        properties: Any) -> None:
        if reason.is_failure:
            self._outage(f"refused:{reason}", "the MQTT broker %s:%s refused the connection: %s; retrying",
                         self.config.host, self.config.port, reason)
            return
        _no_delay(client)
        topics = list(dict.fromkeys(self._subscriptions()))
        if topics:
            client.subscribe([(t, self.config.qos) for t in topics])
        since, self._outage_since = self._outage_since, None
        self._warned.clear()
        if since is None:
            log.info("connected to MQTT broker %s:%s (subscribed to %d topics)", self.config.host,
                     self.config.port, len(topics))
        else:
            log.info("connected to the MQTT broker %s:%s again after %.0f s (subscribed to %d topics)",
                     self.config.host, self.config.port, time.monotonic() - since, len(topics))
        self.connected.set()
        try:
            self._on_connect_cb()
        except Exception:
            log.exception("on-connect handler failed")

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._outage("unreachable", "cannot reach the MQTT broker %s:%s; retrying every %d to %d s",
                     self.config.host, self.config.port, RECONNECT_MIN, RECONNECT_MAX)

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                           properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was:
            self._outage("unreachable", "lost the MQTT broker %s:%s (%s); reconnecting every %d to %d s",
                         self.config.host, self.config.port, reason, RECONNECT_MIN, RECONNECT_MAX)

    def _outage(self, problem: str, message: str, *args: Any) -> None:
        """One warning per problem while the broker is away (a reconnect attempt every few
        seconds must not fill the journal); nothing on a stop we asked for."""
        if self._stopping:
            return
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        if problem in self._warned:
            log.debug(message, *args)
            return
        self._warned.add(problem)
        log.warning(message, *args)

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        expiry = response_topic = correlation = None
        props = getattr(message, "properties", None)
        if props is not None:
            expiry = getattr(props, "MessageExpiryInterval", None)
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
        incoming = Incoming(topic=message.topic, payload=bytes(message.payload), retain=bool(message.retain),
                            received=time.monotonic(), expiry=expiry, response_topic=response_topic,
                            correlation_data=correlation, mid=message.mid, qos=message.qos,
                            dup=bool(message.dup))
        try:
            self._on_message(incoming)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("handling a message on %s failed", message.topic)
