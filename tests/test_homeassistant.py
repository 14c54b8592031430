"""Home Assistant discovery: the payload, and its templates rendered the way Home Assistant
renders them (Jinja's immutable sandbox, `value` and `value_json`, Jinja's own `tojson`), so
what HA would send or show is checked here and not only in scripts/ha-check.sh."""

from __future__ import annotations

import json
import time
from dataclasses import fields

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import TOKEN
from fake_coze import FakeCoze, Fault

from coze_speaker.coze import CozeClient
from coze_speaker.mqtt.homeassistant import (OUTCOME_FIELDS, OUTCOMES, SAY_TEMPLATE, discovery_payload,
                                             voice_label)
from coze_speaker.mqtt.payloads import SpeakerState, event_payload
from coze_speaker.mqtt.topics import Topics
from coze_speaker.queue.announcement import Announcement, parse_say
from coze_speaker.queue.events import AnnouncementEvent
from coze_speaker.vocabulary import FINAL_EVENTS
from coze_speaker.voice.voices import CozeVoice, VoiceCatalog

TOPICS = Topics("coze-speaker", "kitchen", (), "homeassistant")
#: as the voice list gives them: a voice without a name is named by its id
VOICES = (CozeVoice("v1", "Sarah", "en"), CozeVoice("v2", "北京小爷", "zh"), CozeVoice("v3", "v3", "ja"))
_ENV = ImmutableSandboxedEnvironment()


def render(template: str, payload: bytes) -> str:
    """What Home Assistant's MQTT integration renders for a message (value and value_json)."""
    value = payload.decode("utf-8")
    try:
        value_json = json.loads(value)
    except ValueError:
        value_json = None
    return _ENV.from_string(template).render(value=value, value_json=value_json)


def components(**kwargs):
    return json.loads(discovery_payload(TOPICS, **kwargs))["components"]


def state(**kw) -> bytes:
    base = {"state": "idle", "volume": 80, "queue": 0, "cache": {}, "version": "x"}
    return SpeakerState(**{**base, **kw}).payload()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_every_component_carries_its_qos(qos):
    """HA copies only availability and topics from the device level down: a component
    without its own qos subscribes and publishes at QoS 0."""
    comps = components(qos=qos, voices=VOICES, voice="v1")
    assert len(comps) == 10
    assert all(c["qos"] == qos for c in comps.values()), {k: c.get("qos") for k, c in comps.items()}
    assert all(c["availability_topic"] == TOPICS.availability for c in comps.values())


@pytest.mark.parametrize("text", [
    "[Kitchen] dinner is ready", "[Alert] door open", '{"text": "not me"}', "{", "[]",
    "it's <b>\"quoted\"</b> & more", "中文的通知", "party 🎉", "two\nlines", "  padded  ",
])
def test_the_say_template_turns_any_notify_message_into_its_text(text):
    """HA's notify sends only the message; without the template a message opening with [ or {
    is read as JSON and refused while HA reports success."""
    say = components()["say"]
    assert say["command_template"] == SAY_TEMPLATE
    payload = render(say["command_template"], text.encode()).encode()
    assert parse_say(payload).text == text.strip()


def event(kind: str, **fields_) -> bytes:
    ann = Announcement(text="The washing machine is done " * 20, id="wash-1", priority="high", source="mqtt")
    return event_payload(AnnouncementEvent.about(ann, kind, **fields_))


def test_the_event_entity_fires_on_each_final_event_with_its_fields():
    comp = components()["announcement"]
    assert comp["platform"] == "event" and comp["state_topic"] == TOPICS.event
    assert comp["event_types"] == sorted(FINAL_EVENTS) == list(OUTCOMES)
    assert set(OUTCOME_FIELDS) <= {f.name for f in fields(AnnouncementEvent)}
    finished = json.loads(render(comp["value_template"], event("finished", cached=True, latency_ms=42,
                                                                   duration_ms=1900, api_calls=0)))
    assert finished == {"event_type": "finished", "id": "wash-1", "text": ("The washing machine is done " * 20)[:255],
                        "priority": "high", "source": "mqtt", "reason": None, "cached": True, "latency_ms": 42,
                        "duration_ms": 1900, "api_calls": 0, "fallback": None, "error": None}
    failed = json.loads(render(comp["value_template"],
                               event("failed", error={"message": "bad token", "code": 4100, "logid": "L1"})))
    assert failed["event_type"] == "failed" and failed["error"] == {"message": "bad token", "code": 4100, "logid": "L1"}
    for kind, extra in (("dropped", {"reason": "dedup"}), ("expired", {"reason": "ttl"}),
                        ("interrupted", {"reason": "stopped"})):
        data = json.loads(render(comp["value_template"], event(kind, **extra)))
        assert data["event_type"] == kind and data["reason"] == extra["reason"]
    for kind in ("queued", "started", "requeued"):  # HA ignores an empty rendering
        assert render(comp["value_template"], event(kind)).strip() == ""


def test_the_voice_select_offers_the_voice_list_and_shows_the_current_voice():
    select = components(voices=VOICES, voice="v2")["voice"]
    assert select["platform"] == "select" and select["command_topic"] == TOPICS.voice_set
    assert select["options"] == ["Sarah (v1)", "北京小爷 (v2)", "v3"]
    assert render(select["value_template"], state(voice="v2", voice_name="北京小爷")) == "北京小爷 (v2)"
    assert render(select["value_template"], state(voice="v3")) == "v3"
    assert render(select["value_template"], state()) == "None"  # HA: no option selected
    for v in VOICES:  # the template and voice_label make the same label, so HA accepts the state
        name = v.name if v.name != v.voice_id else None  # what the front end puts in the state
        shown = render(select["value_template"], state(voice=v.voice_id, voice_name=name))
        assert shown == voice_label(v.voice_id, v.name) and shown in select["options"]
    # a configured voice missing from the list is still an option (HA refuses a state that is not)
    assert components(voices=VOICES, voice="mine")["voice"]["options"][0] == "mine"
    assert "voice" not in components(voices=(), voice=None)  # a select needs an option


def test_the_chime_switch_and_the_sensors_read_the_state():
    comps = components(voices=VOICES, voice="v1")
    chime = comps["chime"]
    assert chime["platform"] == "switch" and chime["command_topic"] == TOPICS.chime_set
    assert render(chime["value_template"], state(chime=True)) == chime["state_on"] == "ON"
    assert render(chime["value_template"], state(chime=False)) == chime["state_off"] == "OFF"
    assert render(comps["queue"]["value_template"], state(queue=7)) == "7"
    last_error = comps["last_error"]
    error = {"message": "x" * 300, "code": 4100, "id": "a1", "ts": 1.5}
    assert render(last_error["value_template"], state(last_error=error)) == "x" * 255  # HA's state limit
    assert render(last_error["value_template"], state()) == ""
    assert json.loads(render(last_error["json_attributes_template"], state(last_error=error))) == error
    assert json.loads(render(last_error["json_attributes_template"], state())) == {}
    assert render(comps["last"]["value_template"], state(last="Dinner is ready")) == "Dinner is ready"


def wait(what, fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def test_the_voice_list_tells_its_listeners_after_each_fetch(tmp_path):
    """The voice select's options are republished from on_change; `fetching` says that no list
    is known yet (the first discovery waits for it)."""
    voices = [FakeCoze.make_voice(i) for i in range(3)]
    path = tmp_path / "voices-kitchen.json"
    with FakeCoze(token=TOKEN, voices=voices) as fake:
        catalog = VoiceCatalog(CozeClient(TOKEN, fake.url, retries=0), path)
        heard = []
        catalog.on_change(heard.append)
        fake.add_fault("/v1/audio/voices", Fault(hang=1.0))  # a slow answer
        catalog.start()  # nothing saved: the first fetch is due
        assert catalog.fetching and heard == []
        wait("the first fetch", lambda: heard == [True])
        assert not catalog.fetching
        assert [v.voice_id for v in catalog.voices()] == ["voice_0000", "voice_0001", "voice_0002"]
        catalog.close()

        again = VoiceCatalog(CozeClient(TOKEN, fake.url, retries=0), path)
        again.start()  # the saved copy is known at once: nothing to wait for
        assert not again.fetching and again.voices() == catalog.voices()
        again.close()

    path.unlink()
    with FakeCoze(token=TOKEN, voices=voices) as fake:
        fake.start_outage(Fault(http_status=503), "/v1/audio/voices")
        failing = VoiceCatalog(CozeClient(TOKEN, fake.url, retries=0), path)
        heard.clear()
        failing.on_change(heard.append)
        failing.start()
        wait("the failed fetch told", lambda: heard == [False])  # discovery goes out without the list
        assert not failing.fetching and failing.voices() == ()
        failing.close()
