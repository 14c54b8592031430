"""Fault suite: Coze's circuit breaker (issue 10, item 11).

While Coze is down, announcements must not each wait for the client's retries (and a hung
request's timeouts) before the offline voice speaks or a cached phrase behind them plays.
Real mosquitto, the fake Coze over real HTTP, real aplay into the ALSA file sink, espeak-ng.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from conftest import TOKEN
from fake_coze import VOICES_PATH, FakeCoze, Fault
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from test_daemon import EVENT, SAY, SPEECH, STATE, pcm, start_daemon  # noqa: F401

from coze_speaker.coze import CozeClient, CozeError, SpeechParams
from coze_speaker.voice.breaker import CircuitBreaker, CozeUnavailableError, VoiceListProbe, coze_answered
from coze_speaker.voice.costguard import CostGuard

needs_espeak = pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(),
                                  reason="espeak-ng is not installed (scripts/test.sh installs it)")

FINAL = ("finished", "failed", "expired", "dropped", "interrupted")


def go_down(fake_coze: FakeCoze, how: str) -> None:
    """Coze goes away: every request answered 503, or dropped unanswered, or refused."""
    if how == "refused":
        fake_coze.stop()
    else:
        fake_coze.start_outage(Fault.http_error(503) if how == "http_503" else Fault.dropped())


def come_back(fake_coze: FakeCoze, how: str) -> None:
    if how == "refused":
        fake_coze.come_back()
    else:
        fake_coze.end_outage()


def finals(probe, ids):
    """The final events of these announcements, in the order they were published on MQTT."""
    return [e for e in probe.events(EVENT) if e["id"] in ids and e["event"] in FINAL]


def wait_coze_state(probe, value: str, timeout: float = 30.0) -> dict:
    """The first retained state saying Coze is `value` ("up" or "down")."""
    return probe.wait_for(lambda _: next((s for s in (json.loads(m.payload) for m in probe.on(STATE))
                                          if s.get("coze") == value), None), timeout)


def speech_calls(fake_coze: FakeCoze) -> int:
    return len(fake_coze.requests_to(SPEECH))


def probe_threads() -> set:
    return {t for t in threading.enumerate() if t.name == "coze-speaker-probe"}


# -- the daemon end to end --------------------------------------------------------------------

@needs_espeak
@pytest.mark.parametrize("how", ["http_503", "dropped", "refused"])
def test_while_coze_is_down_announcements_skip_it_and_use_the_fallback_voice(start_daemon, probe, fake_coze,
                                                                            alsa_sink, how):
    start_daemon(fallback={"engine": "espeak-ng"}, coze={"retries": 1, "timeout": 2, "breaker_cooldown": 600})
    go_down(fake_coze, how)
    ids = [f"w{n}" for n in range(4)]
    for n, ann in enumerate(ids):
        probe.publish(SAY, {"text": f"Window number {n} is open", "id": ann})
    probe.wait_for(lambda _: len(finals(probe, ids)) == len(ids), timeout=60)

    first, *rest = finals(probe, ids)
    assert [e["id"] for e in finals(probe, ids)] == ids
    # the first one found Coze down the slow way (its retries), then spoke with the offline voice
    assert first["event"] == "finished" and first["fallback"] is True
    assert first["error"]["code"] != "coze_unavailable"
    # the others did not ask Coze at all: straight to the offline voice
    for ev in rest:
        assert ev["event"] == "finished" and ev["fallback"] is True and ev["cached"] is False, ev
        assert ev["error"]["code"] == "coze_unavailable" and ev["api_calls"] == 0, ev
        assert "Coze counts as down" in ev["reason"]
    assert speech_calls(fake_coze) == (0 if how == "refused" else 2)  # w0's request and its one retry
    # the cool-down (600 s) is not over: no probe yet (the probe asks for one voice; the voice
    # list for Home Assistant's select, fetched at start, for pages of 100)
    assert [r for r in fake_coze.requests_to(VOICES_PATH) if r.query.get("page_size") == "1"] == []
    assert wait_coze_state(probe, "down")  # the retained state says so
    played = alsa_sink.wait_for(4000)
    assert any(played[i:i + 2] != b"\0\0" for i in range(0, 4000, 2))  # the offline voice was heard


@needs_espeak
@pytest.mark.parametrize("how", ["http_503", "refused"])
def test_the_probe_closes_the_breaker_when_coze_answers_again(start_daemon, probe, fake_coze, alsa_sink, how):
    earlier = probe_threads()
    r = start_daemon(fallback={"engine": "espeak-ng"}, coze={"retries": 1, "timeout": 2, "breaker_cooldown": 1})
    assert wait_coze_state(probe, "up")
    go_down(fake_coze, how)
    probe.publish(SAY, {"text": "The heating is off", "id": "d0"})
    assert probe.wait_event(EVENT, id="d0", event="finished", timeout=30)["fallback"] is True
    wait_coze_state(probe, "down")
    paid = speech_calls(fake_coze)

    seen = len(probe.on(STATE))
    come_back(fake_coze, how)
    probe.wait_for(lambda _: [m for m in probe.on(STATE)[seen:]
                              if json.loads(m.payload).get("coze") == "up"], timeout=30)
    # the background check brought it back (a voice list, not a synthesis), nobody spoke meanwhile
    assert fake_coze.requests_to(VOICES_PATH, "GET")
    assert speech_calls(fake_coze) == paid

    text = "The heating is back on"
    probe.publish(SAY, {"text": text, "id": "d1"})
    ev = probe.wait_event(EVENT, id="d1", event="finished", timeout=30)
    assert ev["cached"] is False and not ev.get("fallback")
    assert speech_calls(fake_coze) == paid + 1
    audio = pcm(text)
    assert audio in alsa_sink.wait_for(len(audio), timeout=10)
    r.stop()
    assert probe_threads() <= earlier  # the daemon's probe thread ended with it


def test_a_cached_phrase_behind_a_hung_miss_is_spoken(start_daemon, probe, fake_coze, alsa_sink):
    # Coze's timeout (3 s, twice) keeps the miss hanging well past its 2 s overtaking mark and
    # the 0.25 s checks after it, also on a slow machine (arm64 under qemu): with 1 s it could
    # fail between two checks and let a cached phrase queued late wait behind it.
    start_daemon(coze={"retries": 1, "timeout": 3, "breaker_cooldown": 600})  # no offline voice
    probe.publish(SAY, {"text": "Doorbell", "id": "warm"})
    assert probe.wait_event(EVENT, id="warm", event="finished")["cached"] is False

    fake_coze.start_outage(Fault.hanging(60), SPEECH)  # Coze takes requests and never answers
    order = [("m1", "A parcel was left at the side door"), ("c1", "Doorbell"),
             ("m2", "The bins go out tonight"), ("c2", "Doorbell")]
    for ann, text in order:
        probe.publish(SAY, {"text": text, "id": ann})
    ids = [ann for ann, _ in order]
    probe.wait_for(lambda _: len(finals(probe, ids)) == len(ids), timeout=60)

    ended = finals(probe, ids)
    assert [e["id"] for e in ended] == ["c1", "c2", "m1", "m2"]  # the cached ones went ahead of the hung miss
    m1, c1, m2, c2 = ({e["id"]: e for e in ended}[i] for i in ids)
    assert m1["event"] == "failed" and m1["error"]["code"] != "coze_unavailable"  # timed out, retried once
    assert c1["event"] == "finished" and c1["cached"] is True
    assert m2["event"] == "failed" and m2["error"]["code"] == "coze_unavailable" and m2["api_calls"] == 0
    assert c2["event"] == "finished" and c2["cached"] is True
    assert speech_calls(fake_coze) == 1 + 2  # the warm-up, m1 and its retry; m2 never waited on Coze
    door = pcm("Doorbell")
    assert alsa_sink.wait_for(3 * len(door), timeout=10).count(door) == 3


def test_a_final_error_does_not_open_the_breaker(start_daemon, probe, fake_coze):
    start_daemon(coze={"breaker_cooldown": 600})
    probe.publish(SAY, {"text": "Who is speaking?", "id": "bad", "voice": "no_such_voice"})
    assert probe.wait_event(EVENT, id="bad", event="failed")["error"]["code"] == 4200  # voice not found
    probe.publish(SAY, {"text": "The right voice", "id": "good"})
    ev = probe.wait_event(EVENT, id="good", event="finished")
    assert ev["cached"] is False and not ev.get("fallback")
    assert speech_calls(fake_coze) == 2
    assert wait_coze_state(probe, "up")
    assert not any(json.loads(m.payload).get("coze") == "down" for m in probe.on(STATE))


# -- the breaker itself, with real errors from the real client ---------------------------------

def real_error(fake_coze: FakeCoze, *, voice: str = "voice_0000", retries: int = 0, **client) -> CozeError:
    with CozeClient(TOKEN, fake_coze.url, retries=retries, timeout=client.pop("timeout", 2), **client) as c:
        with pytest.raises(CozeError) as info:
            c.speech("hello", SpeechParams(voice)).read_all()
    return info.value


def test_what_counts_as_coze_being_down(fake_coze):
    fake_coze.start_outage(Fault.http_error(503), SPEECH)
    assert coze_answered(real_error(fake_coze)) is False  # 5xx after the retries: down
    fake_coze.start_outage(Fault.api_error(5000, "internal error"), SPEECH)
    assert coze_answered(real_error(fake_coze)) is False
    fake_coze.end_outage()
    assert coze_answered(real_error(fake_coze, voice="no_such_voice")) is True  # 4200 voice not found: Coze answered
    with CozeClient("pat_wrong", fake_coze.url, retries=0) as c, pytest.raises(CozeError) as wrong:
        c.speech("hello", SpeechParams("voice_0000")).read_all()
    assert coze_answered(wrong.value) is True  # 4100, a wrong token: our config, not an outage
    with pytest.raises(CozeError) as invalid:
        CozeClient(TOKEN, fake_coze.url).speech("hello", SpeechParams("voice_0000", sample_rate=12345))
    assert coze_answered(invalid.value) is None  # refused locally, nothing sent
    guard = CostGuard(max_requests_per_hour=1)
    guard.acquire(1)
    with pytest.raises(CozeError) as capped:
        guard.acquire(1)
    assert coze_answered(capped.value) is None
    fake_coze.stop()
    assert coze_answered(real_error(fake_coze)) is False  # connection refused


def test_half_open_lets_one_request_try_and_the_cool_down_grows(fake_coze):
    now = [100.0]
    breaker = CircuitBreaker(10, max_cooldown=30, clock=lambda: now[0])  # no probe: only real requests
    fake_coze.start_outage(Fault.http_error(503), SPEECH)
    down = real_error(fake_coze)
    breaker.permit().done(down)
    assert breaker.down
    with pytest.raises(CozeUnavailableError) as refused:
        breaker.permit()
    assert refused.value.code == "coze_unavailable" and "asked again in 10 s" in str(refused.value)

    now[0] += 10  # the cool-down is over: one request may try, the others still skip Coze
    trial = breaker.permit()
    with pytest.raises(CozeUnavailableError):
        breaker.permit()
    trial.done(down)  # it failed too: open for twice as long
    now[0] += 19.5
    with pytest.raises(CozeUnavailableError):
        breaker.permit()
    now[0] += 0.5
    breaker.permit().done(down)
    now[0] += 30  # at most max_cooldown
    trial = breaker.permit()
    trial.done(CozeUnavailableError("local"))  # never reached Coze: the next one may try instead
    trial = breaker.permit()
    fake_coze.end_outage()
    with CozeClient(TOKEN, fake_coze.url, retries=0) as c:
        c.speech("hello", SpeechParams("voice_0000")).read_all()
    trial.done()
    assert not breaker.down
    stale = breaker.permit()
    breaker.permit().done(down)
    assert breaker.down and breaker.opened == 4
    stale.done(down)  # an older request failing later does not push the cool-down further
    with pytest.raises(CozeUnavailableError) as again:
        breaker.permit()
    assert "asked again in 10 s" in str(again.value)  # a success reset the streak


def wait_for_probes(breaker: CircuitBreaker, count: int, *, refused: bool = False) -> None:
    """Bounded wait until the breaker has sent `count` checks; with refused, every permit asked
    for meanwhile must be refused (no real request tries while the checks cannot reach Coze)."""
    deadline = time.monotonic() + 20
    while breaker.probes < count:
        assert time.monotonic() < deadline, f"only {breaker.probes} checks were sent"
        if refused:
            with pytest.raises(CozeUnavailableError):
                breaker.permit()
        time.sleep(0.01)


def test_a_real_request_tries_only_when_coze_answers_but_its_voice_list_fails(fake_coze):
    breaker = CircuitBreaker(0.05, max_cooldown=0.05,
                             probe=VoiceListProbe(CozeClient(TOKEN, fake_coze.url, retries=0, timeout=0.3)))
    try:
        fake_coze.start_outage(Fault.http_error(503))
        breaker.permit().done(real_error(fake_coze))
        fake_coze.start_outage(Fault.http_error(503), VOICES_PATH)  # speech works again, the voice list not
        wait_for_probes(breaker, 2)
        deadline = time.monotonic() + 20
        while True:  # after a cool-down one real request may try: it is the one that finds Coze back
            assert time.monotonic() < deadline, "no real request was let through"
            try:
                trial = breaker.permit()
                break
            except CozeUnavailableError:
                time.sleep(0.01)
        assert trial.trial
        with CozeClient(TOKEN, fake_coze.url, retries=0) as c:
            c.speech("hello", SpeechParams("voice_0000")).read_all()
        trial.done()
        assert not breaker.down

        # Coze hangs: the checks (each waiting out its timeout) alone decide; no announcement
        # is let through to wait for its timeouts and retries again after the cool-down
        fake_coze.start_outage(Fault.hanging(10))
        breaker.permit().done(real_error(fake_coze, timeout=0.3))
        probes = breaker.probes
        wait_for_probes(breaker, probes + 3, refused=True)
        assert breaker.down
        fake_coze.end_outage()
        deadline = time.monotonic() + 20
        while breaker.down:
            assert time.monotonic() < deadline, "the check did not close the breaker"
            time.sleep(0.01)
    finally:
        breaker.close()


def test_the_probe_thread_checks_while_down_and_stops_on_close(fake_coze):
    fake_coze.start_outage(Fault.http_error(503))
    earlier = probe_threads()
    changes = []
    breaker = CircuitBreaker(0.05, max_cooldown=0.2,
                             probe=VoiceListProbe(CozeClient(TOKEN, fake_coze.url, retries=0, timeout=2)))
    breaker.on_change(lambda: changes.append(breaker.down))
    breaker.permit().done(real_error(fake_coze))
    synthesized = len(fake_coze.requests_to(SPEECH))
    deadline = time.monotonic() + 20
    while breaker.probes < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert breaker.probes >= 3 and breaker.down, "the probe should keep checking while Coze is down"
    assert 1 <= len(fake_coze.requests_to(VOICES_PATH, "GET")) <= breaker.probes  # each a voice-list GET
    assert len(fake_coze.requests_to(SPEECH)) == synthesized  # a check never synthesizes
    fake_coze.end_outage()
    deadline = time.monotonic() + 20
    while breaker.down and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not breaker.down and changes == [True, False]
    breaker.permit().done(real_error(fake_coze, voice="no_such_voice"))  # answered: stays closed
    assert not breaker.down

    fake_coze.start_outage(Fault.http_error(503))
    breaker.permit().done(real_error(fake_coze))
    assert breaker.down
    assert probe_threads() - earlier  # checking again
    breaker.close()
    assert probe_threads() <= earlier
    probes = breaker.probes
    time.sleep(0.5)  # several cool-downs: a stopped breaker sends nothing
    assert breaker.probes == probes


def test_the_fake_outage_switch(fake_coze):
    """The fake's own switches used above: an outage on every path until it ends, and a
    Coze that comes back on the same port after being stopped."""
    fake_coze.start_outage(Fault.http_error(503))
    for _ in range(3):
        assert real_error(fake_coze).status == 503
    with CozeClient(TOKEN, fake_coze.url, retries=0) as c, pytest.raises(CozeError):
        next(iter(c.list_voices(page_size=1)))
    fake_coze.end_outage()
    port = fake_coze.port
    fake_coze.stop()
    assert "cannot reach" in str(real_error(fake_coze))
    fake_coze.come_back()
    assert fake_coze.port == port
    with CozeClient(TOKEN, fake_coze.url, retries=0) as c:
        assert c.speech("hello", SpeechParams("voice_0000")).read_all() == FakeCoze.pcm_for("hello", "voice_0000")
