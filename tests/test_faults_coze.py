"""Coze misbehaving in ways that cost time or money: a trickling answer, Retry-After, the
spending caps counting every request (across retries and restarts), and error pages that
must never be played or cached.

Real mosquitto, the fake Coze over real HTTP, real aplay into the ALSA file sink; the daemon
in-process (a thread) or as a real process where a restart is part of the fault.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest

from alsa_sink import alsa_sink  # noqa: F401
from fake_coze import Fault
from mqtt_helpers import broker, probe  # noqa: F401
from test_daemon import EVENT, SAY, SPEECH, D, pcm, start_daemon, write_config  # noqa: F401
from test_faults import DaemonProcess, online

from coze_speaker.voice.costguard import CostGuard, CostLimitError

# -- a trickling answer ---------------------------------------------------------------------------

def test_a_trickling_answer_is_cut_off_and_retried(start_daemon, probe, fake_coze, alsa_sink):
    """2 bytes every 0.5 s never trips the read timeout; the first-audio bound cuts it off."""
    start_daemon(coze={"first_audio_timeout": 1, "retries": 1})
    fake_coze.add_fault(SPEECH, Fault.trickle(2, 0.5))
    text = "Someone is at the front door"
    probe.publish(SAY, {"text": text, "id": "door"})
    ev = probe.wait_event(EVENT, id="door", event="finished", timeout=20)
    assert ev["cached"] is False and not ev.get("fallback") and ev["api_calls"] == 2
    audio = pcm(text)
    assert alsa_sink.wait_for(len(audio)).startswith(audio)


@pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(), reason="espeak-ng is not installed")
def test_a_coze_that_only_trickles_falls_back_to_the_offline_voice(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon(coze={"first_audio_timeout": 1, "retries": 1}, fallback={"engine": "espeak-ng"})
    fake_coze.add_faults(SPEECH, Fault.trickle(2, 0.5), Fault.trickle(2, 0.5))
    probe.publish(SAY, {"text": "Smoke detected in the kitchen", "id": "smoke"})
    ev = probe.wait_event(EVENT, id="smoke", event="finished", timeout=20)
    assert ev["fallback"] is True and ev["error"]["code"] == "timeout" and ev["api_calls"] == 2
    played = alsa_sink.wait_for(4000)
    assert any(played[i:i + 2] != b"\0\0" for i in range(0, 4000, 2))


@pytest.mark.parametrize("offline_voice", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(),
                                                reason="espeak-ng is not installed")),
])
def test_a_trickle_past_the_ttl_expires_without_playing(start_daemon, probe, fake_coze, alsa_sink, offline_voice):
    """Stale before its first audio: `expired`, no retry, and not the offline voice either."""
    start_daemon(coze={"first_audio_timeout": 30, "retries": 2},
                 fallback={"engine": "espeak-ng" if offline_voice else "none"})
    fake_coze.add_fault(SPEECH, Fault.trickle(2, 0.5))
    probe.publish(SAY, {"text": "The bus leaves in two minutes", "id": "bus", "ttl": 2})
    ev = probe.wait_event(EVENT, id="bus", event="expired", timeout=20)
    assert ev["reason"] == "ttl"
    assert [e["event"] for e in probe.events(EVENT, id="bus")] == ["queued", "started", "expired"]
    assert len(fake_coze.requests_to(SPEECH)) == 1  # no retry for a stale announcement
    assert alsa_sink.read().strip(b"\0") == b""


# -- an error page is not audio ------------------------------------------------------------------

HTML_PAGE = ("<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
             "<body><h1>Please sign in to the hotel Wi-Fi</h1></body></html>\n")
HTML_PAGE += " " * (len(HTML_PAGE) % 2)  # even length: it would pass for 16-bit pcm


def test_an_html_page_with_status_200_is_not_played_or_cached(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon()
    fake_coze.add_fault(SPEECH, Fault(http_status=200, body=HTML_PAGE, content_type="text/html"))
    probe.publish(SAY, {"text": "The front door is open", "id": "portal"})
    ev = probe.wait_event(EVENT, id="portal", event="failed", timeout=30)
    assert "hotel Wi-Fi" in ev["error"]["message"]
    assert ev["error"]["logid"] == fake_coze.requests_to(SPEECH)[0].logid
    assert ev["api_calls"] == 1
    assert HTML_PAGE.encode()[:64] not in alsa_sink.read()

    probe.publish(SAY, {"text": "The front door is open", "id": "again"})
    again = probe.wait_event(EVENT, id="again", event="finished", timeout=30)
    assert again["cached"] is False and again["api_calls"] == 1  # the page was not cached
    audio = pcm("The front door is open")
    assert alsa_sink.wait_for(len(audio)).startswith(audio)


def test_a_json_error_labelled_text_plain_is_retried_not_played(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon()
    body = json.dumps({"code": 4020, "msg": "requests per minute exceeded",
                       "detail": {"logid": "20250101000000RPMLIMITED"}})
    body += " " * (len(body) % 2)
    fake_coze.add_fault(SPEECH, Fault(http_status=200, body=body, content_type="text/plain; charset=utf-8"))
    text = "Dinner is ready"
    probe.publish(SAY, {"text": text, "id": "rpm"})
    ev = probe.wait_event(EVENT, id="rpm", event="finished", timeout=30)
    assert ev["cached"] is False and ev["api_calls"] == 2
    assert len(fake_coze.requests_to(SPEECH)) == 2  # 4020 can succeed later: retried once
    audio = pcm(text)
    played = alsa_sink.wait_for(len(audio))
    assert played.startswith(audio) and body.encode()[:32] not in played

    probe.publish(SAY, {"text": text, "id": "repeat"})
    assert probe.wait_event(EVENT, id="repeat", event="finished", timeout=30)["cached"] is True
    assert alsa_sink.wait_for(2 * len(audio)).count(audio) == 2  # the cache holds the audio, not the error


# -- Retry-After ---------------------------------------------------------------------------------

def test_a_429_is_retried_after_its_retry_after(start_daemon, probe, fake_coze, alsa_sink):
    start_daemon(coze={"retries": 2})
    fake_coze.add_fault(SPEECH, Fault.rate_limited(retry_after=2))
    text = "The washing machine has finished"
    probe.publish(SAY, {"text": text, "id": "later"})
    ev = probe.wait_event(EVENT, id="later", event="finished", timeout=30)
    assert ev["cached"] is False
    first, second = fake_coze.requests_to(SPEECH)
    assert second.t - first.t >= 2.0  # waited as asked, not the 0.3 s backoff
    audio = pcm(text)
    assert alsa_sink.wait_for(len(audio)).startswith(audio)


def test_a_retry_after_past_the_ttl_fails_now_instead_of_sleeping(start_daemon, probe, fake_coze):
    start_daemon(coze={"retries": 2})
    fake_coze.add_fault(SPEECH, Fault.rate_limited(retry_after=30))
    probe.publish(SAY, {"text": "The garage door is open", "id": "busy", "ttl": 10})
    ev = probe.wait_event(EVENT, id="busy", event="failed", timeout=8)  # before the TTL: nothing slept past it
    assert ev["error"]["code"] == "rate_limited" and "30 s" in ev["error"]["message"]
    assert ev["error"]["logid"] == fake_coze.requests_to(SPEECH)[0].logid
    assert len(fake_coze.requests_to(SPEECH)) == 1


# -- the spending caps count HTTP requests ---------------------------------------------------------

def test_the_hourly_cap_counts_retries(start_daemon, probe, fake_coze):
    """Two pieces (over Coze's 1024 bytes), every request failing: with a cap of 2 per hour
    only 2 requests go out, however many retries and pieces there are."""
    start_daemon(coze={"retries": 3}, limits={"max_requests_per_hour": 2})
    for _ in range(8):
        fake_coze.add_fault(SPEECH, Fault(http_status=500))
    text = "The water heater reports a fault, please call the plumber. " * 20
    probe.publish(SAY, {"text": text, "id": "capped"})
    ev = probe.wait_event(EVENT, id="capped", event="failed", timeout=30)
    assert ev["error"]["code"] == "rate_limited"
    assert len(fake_coze.requests_to(SPEECH)) == 2 and ev["api_calls"] == 2


def test_api_calls_counts_every_request(start_daemon, probe, fake_coze):
    start_daemon(coze={"retries": 3})
    fake_coze.add_faults(SPEECH, Fault(http_status=502), Fault(code=5000, msg="internal"))
    probe.publish(SAY, {"text": "Third time lucky", "id": "three"})
    ev = probe.wait_event(EVENT, id="three", event="finished", timeout=30)
    assert ev["api_calls"] == 3 == len(fake_coze.requests_to(SPEECH))


# -- the spending caps outlive a restart -------------------------------------------------------------

def test_the_hourly_cap_survives_a_kill_and_restart(tmp_path, fake_coze, broker, probe, alsa_sink):
    path = write_config(tmp_path, fake_coze, broker, limits={"max_requests_per_hour": 1})
    first = DaemonProcess(path)
    try:
        online(probe)
        probe.publish(SAY, {"text": "the one request this hour", "id": "1"})
        probe.wait_event(EVENT, id="1", event="finished", timeout=30)
        first.kill(signal.SIGKILL)
    finally:
        first.stop()
    second = DaemonProcess(path)
    try:
        online(probe, count=2)
        probe.publish(SAY, {"text": "a second, different phrase", "id": "2"})
        ev = probe.wait_event(EVENT, id="2", event="failed", timeout=30)
        assert ev["error"]["code"] == "rate_limited" and ev["api_calls"] == 0
        assert len(fake_coze.requests_to(SPEECH)) == 1
    finally:
        second.stop()
    assert (tmp_path / "state" / f"spending-{D}.json").exists()  # per device id, in the state dir


def test_a_corrupt_counter_file_starts_fresh_with_a_warning(start_daemon, probe, fake_coze, tmp_path, caplog):
    counters = tmp_path / "state" / f"spending-{D}.json"
    counters.parent.mkdir(parents=True)
    counters.write_bytes(b'{"version": 1, "requests": [17')
    with caplog.at_level(logging.WARNING, logger="coze_speaker.voice.costguard"):
        start_daemon(limits={"max_requests_per_hour": 2})
        probe.publish(SAY, {"text": "still speaking", "id": "c"})
        assert probe.wait_event(EVENT, id="c", event="finished", timeout=30)["api_calls"] == 1
    assert any("counting from zero" in r.getMessage() for r in caplog.records)
    saved = json.loads(counters.read_text())
    assert len(saved["requests"]) == 1 and saved["chars"] == len("still speaking")


def test_processes_sharing_the_file_share_the_cap(tmp_path):
    """The daemon and `coze-speaker say` of one speaker: one cap between them."""
    path = tmp_path / "state" / "spending-x.json"
    daemon, say = CostGuard(2, path=path), CostGuard(2, path=path)
    daemon.acquire(10)
    say.acquire(10)
    with pytest.raises(CostLimitError):
        daemon.acquire(10)
    with pytest.raises(CostLimitError):
        CostGuard(0, 25, path=path).acquire(6)  # 20 characters already today


def test_a_clock_set_back_does_not_block_for_longer_than_an_hour(tmp_path):
    path = tmp_path / "spending.json"
    now = [1_000_000.0]
    CostGuard(1, path=path, clock=lambda: now[0]).acquire(1)
    now[0] -= 86400  # the clock went back a day: the saved request counts as "now"
    guard = CostGuard(1, path=path, clock=lambda: now[0])
    with pytest.raises(CostLimitError):
        guard.acquire(1)
    now[0] += 3601
    guard.acquire(1)
