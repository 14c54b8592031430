"""The daemon with its default transport (auto: Coze's WebSocket speech API for what it plays)
and first sentence first over HTTP, when things go right and when they go wrong.

Real mosquitto, the fake Coze over a real WebSocket (tests/fake_coze_ws.py) and real HTTP,
real aplay into the ALSA file sink; the daemon in-process.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from alsa_sink import alsa_sink  # noqa: F401
from fake_coze import Fault, WsFault
from mqtt_helpers import broker, probe  # noqa: F401
from test_daemon import EVENT, SAY, SPEECH, pcm, start_daemon  # noqa: F401

#: the defaults (test_daemon.write_config pins the HTTP endpoint for the older suites)
DEFAULTS = {"transport": "auto", "first_sentence_first": True}
TEXT = "The dishwasher has finished"


def http_speech(fake):
    return fake.requests_to(SPEECH, "POST")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_miss_is_spoken_over_the_websocket_and_a_repeat_is_one_cache_hit(start_daemon, probe, fake_coze,
                                                                          alsa_sink):
    start_daemon(coze=DEFAULTS)
    probe.publish(SAY, {"text": TEXT, "id": "one"})
    ev = probe.wait_event(EVENT, id="one", event="finished", timeout=20)
    assert ev["cached"] is False and ev["api_calls"] == 1
    assert alsa_sink.wait_for(len(pcm(TEXT))).startswith(pcm(TEXT))
    assert len(fake_coze.ws_sessions) == 1 and fake_coze.ws_sessions[0].completed and http_speech(fake_coze) == []
    probe.publish(SAY, {"text": TEXT, "id": "two"})
    ev = probe.wait_event(EVENT, id="two", event="finished", timeout=20)
    assert ev["cached"] is True and ev["api_calls"] == 0 and len(fake_coze.ws_sessions) == 1


def test_an_error_event_4100_is_one_failed_event_with_code_and_logid(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon(coze={**DEFAULTS, "retries": 3})
    fake_coze.add_ws_fault(WsFault(error_code=4100))
    probe.publish(SAY, {"text": TEXT, "id": "auth"})
    ev = probe.wait_event(EVENT, id="auth", event="failed", timeout=20)
    assert ev["error"]["code"] == 4100 and ev["error"]["logid"] == fake_coze.ws_sessions[0].logid
    assert ev["api_calls"] == 1
    assert len(probe.events(EVENT, id="auth", event="failed")) == 1
    assert len(fake_coze.ws_sessions) == 1 and http_speech(fake_coze) == []  # never retried, not over HTTP either
    assert alsa_sink.read().strip(b"\0") == b""


def test_a_websocket_closed_mid_stream_is_retried_and_not_cached(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon(coze={**DEFAULTS, "retries": 2})
    fake_coze.add_ws_fault(WsFault(close_after=12000, chunk_bytes=6000))
    probe.publish(SAY, {"text": TEXT, "id": "cut"})
    ev = probe.wait_event(EVENT, id="cut", event="finished", timeout=20)
    assert ev["cached"] is False and ev["api_calls"] == 2 and len(fake_coze.ws_sessions) == 2
    assert alsa_sink.wait_for(len(pcm(TEXT))).startswith(pcm(TEXT))  # nothing played twice, nothing missing
    probe.publish(SAY, {"text": TEXT, "id": "again"})
    ev = probe.wait_event(EVENT, id="again", event="finished", timeout=20)
    assert ev["cached"] is False and ev["api_calls"] == 1 and len(fake_coze.ws_sessions) == 3


@pytest.mark.parametrize("how", ["upgrade refused (403)", "connection refused"])
def test_a_refused_websocket_speaks_over_http(start_daemon, probe, fake_coze, alsa_sink, how):
    if how == "connection refused":
        start_daemon(coze={**DEFAULTS, "ws_url": f"ws://127.0.0.1:{free_port()}/v1/audio/speech"})
    else:
        start_daemon(coze=DEFAULTS)
        fake_coze.ws_outage = WsFault(refuse_status=403)
    probe.publish(SAY, {"text": TEXT, "id": "refused"})
    ev = probe.wait_event(EVENT, id="refused", event="finished", timeout=20)
    assert ev["cached"] is False and not ev.get("fallback") and ev["api_calls"] == 1
    assert len(http_speech(fake_coze)) == 1
    assert alsa_sink.wait_for(len(pcm(TEXT))).startswith(pcm(TEXT))


def test_what_the_websocket_cannot_say_is_spoken_over_http(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon(coze=DEFAULTS)
    probe.publish(SAY, {"text": TEXT, "id": "loud", "loudness": 30})
    ev = probe.wait_event(EVENT, id="loud", event="finished", timeout=20)
    assert ev["api_calls"] == 1 and fake_coze.ws_sessions == []
    assert http_speech(fake_coze)[0].json["loudness_rate"] == 30
    assert alsa_sink.wait_for(len(pcm(TEXT, loudness_rate=30))).startswith(pcm(TEXT, loudness_rate=30))


def test_over_http_the_first_sentence_is_asked_alone_and_the_repeat_is_one_hit(start_daemon, probe, fake_coze,
                                                                               alsa_sink):
    start_daemon(coze={**DEFAULTS, "transport": "http"})
    first, rest = "The dishwasher has finished.", "Please empty it before dinner."
    probe.publish(SAY, {"text": f"{first} {rest}", "id": "fsf"})
    ev = probe.wait_event(EVENT, id="fsf", event="finished", timeout=20)
    assert ev["api_calls"] == 2 and [r.json["input"] for r in http_speech(fake_coze)] == [first, rest]
    audio = pcm(first) + pcm(rest)
    assert alsa_sink.wait_for(len(audio)).startswith(audio)
    probe.publish(SAY, {"text": f"{first} {rest}", "id": "fsf2"})
    ev = probe.wait_event(EVENT, id="fsf2", event="finished", timeout=20)
    assert ev["cached"] is True and ev["api_calls"] == 0 and len(http_speech(fake_coze)) == 2


@pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(), reason="espeak-ng is not installed")
def test_a_websocket_that_fails_every_time_falls_back_like_http(start_daemon, probe, fake_coze, alsa_sink):
    """transport websocket: no HTTP; the retries, then the offline voice, as over HTTP."""
    start_daemon(coze={**DEFAULTS, "transport": "websocket", "retries": 1}, fallback={"engine": "espeak-ng"})
    fake_coze.ws_outage = WsFault(error_code=5000)
    fake_coze.add_fault(SPEECH, Fault.http_error(500))  # would be spent if HTTP were asked
    probe.publish(SAY, {"text": TEXT, "id": "down"})
    ev = probe.wait_event(EVENT, id="down", event="finished", timeout=20)
    assert ev["fallback"] is True and ev["error"]["code"] == 5000 and ev["api_calls"] == 2
    assert len(fake_coze.ws_sessions) == 2 and http_speech(fake_coze) == []
