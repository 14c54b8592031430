"""Home Assistant's side of the speaker, end to end: what HA would send through the discovered
entities reaches the daemon and does what the entity says. Real mosquitto, the fake Coze,
real aplay into the ALSA file sink; the daemon in-process. HA's templates are rendered the
way HA renders them (see test_homeassistant.py); scripts/ha-check.sh runs a real HA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from fake_coze import Fault
from mqtt_helpers import Probe, broker, probe  # noqa: F401  (fixtures)
from test_daemon import EVENT, RATE, SPEECH, STATE, B, D, Running, pcm, write_config
from test_homeassistant import render

from coze_speaker.sound.shaping import builtin_chime

DISCOVERY = f"homeassistant/device/{D}/config"


@pytest.fixture
def speaker(tmp_path, fake_coze, broker, alsa_sink, probe, monkeypatch):  # noqa: F811
    """start(**sections): the daemon with write_config's config (a device_id of its own may
    be given), once its availability says online."""
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    running = []

    def start(**sections):
        device = sections.get("mqtt", {}).get("device_id", D)
        seen = len([m for m in probe.on(f"{B}/{device}/availability") if m.payload == b"online"])
        r = Running(write_config(tmp_path, fake_coze, broker, **sections))
        running.append(r)
        probe.wait_for(lambda _: len([m for m in probe.on(f"{B}/{device}/availability")
                                      if m.payload == b"online"]) > seen)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def discovered(probe, device=D, **match):
    """The newest discovery config of `device` whose components match (name -> predicate)."""
    def newest(_):
        for m in reversed(probe.on(f"homeassistant/device/{device}/config")):
            if m.payload:
                comps = json.loads(m.payload)["components"]
                if all(pred(comps.get(name)) for name, pred in match.items()):
                    return comps
        return None
    return probe.wait_for(newest, timeout=15)


def latest_state(probe, **match):
    def find(_):
        states = probe.events(STATE)
        return next((s for s in reversed(states) if all(s.get(k) == v for k, v in match.items())), None)
    return probe.wait_for(find, timeout=10)


def ha_sends(probe, component, value):
    """What HA publishes when an entity is used: the value through the component's command
    template, if it has one (HA sends the bare value otherwise), at the component's qos."""
    template = component.get("command_template")
    payload = render(template, value.encode()) if template else value
    probe.publish(component["command_topic"], payload, qos=component.get("qos", 0))


def test_a_notify_message_that_starts_with_a_bracket_is_spoken(speaker, probe, fake_coze, alsa_sink):
    speaker()
    say = discovered(probe)["say"]
    assert say["qos"] == 1
    ha_sends(probe, say, "[Kitchen] dinner is ready")
    done = probe.wait_event(EVENT, text="[Kitchen] dinner is ready", event="finished")
    assert done["source"] == "mqtt"
    audio = pcm("[Kitchen] dinner is ready")
    assert alsa_sink.wait_for(len(audio)).startswith(audio)
    assert [r.json["input"] for r in fake_coze.requests_to(SPEECH)] == ["[Kitchen] dinner is ready"]


def test_the_voice_select_changes_the_voice_of_the_next_synthesis(speaker, probe, fake_coze, alsa_sink):
    r = speaker()
    # the options come from Coze's voice list (fetched in the background, then discovery again)
    select = discovered(probe, voice=lambda c: c is not None and len(c["options"]) > 100)["voice"]
    option = next(o for o in select["options"] if o.endswith("(voice_0005)"))
    ha_sends(probe, select, option)
    st = latest_state(probe, voice="voice_0005")
    assert render(select["value_template"], json.dumps(st).encode()) == option  # HA shows the choice
    probe.publish(f"{B}/{D}/say", {"text": "Which voice is this?", "id": "v1"})
    probe.wait_event(EVENT, id="v1", event="finished")
    assert fake_coze.requests_to(SPEECH)[-1].json["voice_id"] == "voice_0005"
    audio = pcm("Which voice is this?", voice="voice_0005")
    assert alsa_sink.wait_for(len(audio)).startswith(audio)

    # not a voice of the list: ignored, the default stays
    ha_sends(probe, select, "voice_9999")
    probe.publish(f"{B}/{D}/say", {"text": "Still the same voice", "id": "v2"})
    probe.wait_event(EVENT, id="v2", event="finished")
    assert fake_coze.requests_to(SPEECH)[-1].json["voice_id"] == "voice_0005"

    r.stop()  # kept across a restart
    speaker()
    latest_state(probe, voice="voice_0005", state="idle")
    probe.publish(f"{B}/{D}/say", {"text": "After the restart", "id": "v3"})
    probe.wait_event(EVENT, id="v3", event="finished")
    assert fake_coze.requests_to(SPEECH)[-1].json["voice_id"] == "voice_0005"


def test_the_chime_switch_turns_the_chime_off(speaker, probe, alsa_sink):
    r = speaker(audio={"chime": "builtin"})
    switch = discovered(probe)["chime"]
    latest_state(probe, chime=True)
    chime, speech = builtin_chime(RATE), pcm("With a chime")
    probe.publish(f"{B}/{D}/say", {"text": "With a chime", "id": "c1"})
    probe.wait_event(EVENT, id="c1", event="finished")
    assert alsa_sink.wait_for(len(chime) + len(speech)).startswith(chime + speech)

    ha_sends(probe, switch, switch["payload_off"])
    assert render(switch["value_template"], json.dumps(latest_state(probe, chime=False)).encode()) == "OFF"
    alsa_sink.clear()
    speech = pcm("No chime now")
    probe.publish(f"{B}/{D}/say", {"text": "No chime now", "id": "c2"})
    probe.wait_event(EVENT, id="c2", event="finished")
    assert alsa_sink.settle()[:len(speech)] == speech

    r.stop()  # kept across a restart
    speaker(audio={"chime": "builtin"})
    latest_state(probe, chime=False, state="idle")
    alsa_sink.clear()
    probe.publish(f"{B}/{D}/say", {"text": "Still no chime", "id": "c3"})
    probe.wait_event(EVENT, id="c3", event="finished")
    assert alsa_sink.settle()[:len(pcm("Still no chime"))] == pcm("Still no chime")


def retained(broker, topic):
    """What a new subscriber gets on topic (the retained message), or None."""
    late = Probe(broker.port)
    try:
        late.client.subscribe(topic, qos=1)
        late.publish("ha-test/marker", "x")  # once it arrives, any retained copy has too
        late.wait_for(lambda _: late.on("ha-test/marker"))
        got = [m.payload for m in late.on(topic) if m.retain]
        return got[-1] if got else None
    finally:
        late.close()


def test_stale_discovery_is_removed_when_the_device_id_changes_or_ha_is_turned_off(speaker, probe, broker):
    first = speaker()
    discovered(probe)
    assert retained(broker, DISCOVERY)
    first.stop()

    second = speaker(mqtt={"device_id": "attic"})
    discovered(probe, device="attic")
    probe.wait_for(lambda _: [m for m in probe.on(DISCOVERY) if m.payload == b"" and m.retain is False])
    assert retained(broker, DISCOVERY) is None, "the old device's discovery is cleared"
    assert retained(broker, f"{B}/{D}/state") is None, "and its other retained topics"
    assert retained(broker, "homeassistant/device/attic/config")
    second.stop()

    speaker(mqtt={"device_id": "attic"}, homeassistant={"enabled": False})
    probe.wait_for(lambda _: [m for m in probe.on("homeassistant/device/attic/config") if m.payload == b""])
    assert retained(broker, "homeassistant/device/attic/config") is None
    assert retained(broker, f"{B}/attic/state"), "the speaker's own state stays"


def test_the_last_error_is_in_the_state_and_survives_a_restart(speaker, probe):
    r = speaker(coze={"token": "pat_wrong_secret_value"})
    probe.publish(f"{B}/{D}/say", {"text": "hello", "id": "bad-token"})
    probe.wait_event(EVENT, id="bad-token", event="failed")
    error = probe.wait_for(lambda _: next((s["last_error"] for s in reversed(probe.events(STATE))
                                           if s.get("last_error", {}).get("id") == "bad-token"), None))
    assert error["code"] == 4100 and error["logid"] and "pat_wrong" not in json.dumps(error)
    probe.publish(f"{B}/{D}/say", b'{"text": "hi", "volume": 101}')  # refused before the queue
    error = probe.wait_for(lambda _: next((s["last_error"] for s in reversed(probe.events(STATE))
                                           if s.get("last_error", {}).get("field") == "volume"), None))
    assert "101" in error["message"]
    r.stop()
    before = len(probe.events(STATE))
    speaker()
    probe.wait_for(lambda _: len(probe.events(STATE)) > before)
    assert [s.get("last_error") for s in probe.events(STATE)[before:]] == [error]


def test_at_the_first_start_discovery_waits_for_the_voice_list(speaker, probe, fake_coze, broker):
    """HA 2026.2 loses parts of a second device config that arrives while it still sets up the
    first one's entities: the select kept the options of the first. So at a start without a
    cached voice list, discovery is sent once, with the list (a slow answer is waited for)."""
    fake_coze.add_fault("/v1/audio/voices", Fault(hang=1.0))
    r = speaker()
    select = discovered(probe, voice=lambda c: c is not None)["voice"]
    assert len(select["options"]) == 250
    configs = [m for m in probe.on(DISCOVERY) if m.payload]
    assert len(configs) == 1, f"{len(configs)} discovery configs"
    r.stop()

    # Coze unreachable, no list cached: discovery goes out once the one attempt failed
    (Path(r.daemon.config.state.dir) / f"voices-{D}.json").unlink()
    fake_coze.start_outage(Fault(http_status=503), "/v1/audio/voices")
    seen = len([m for m in probe.on(DISCOVERY) if m.payload])
    speaker()
    probe.wait_for(lambda _: len([m for m in probe.on(DISCOVERY) if m.payload]) > seen)
    assert discovered(probe)["voice"]["options"] == ["voice_0000"]
