"""A house of speakers: one synthesis per broadcast, a fleet-wide cache.

Real parts only: each speaker is a `coze-speaker run` process with its own config, cache,
state and hermetic ALSA file sink (its own ALSA_CONFIG_PATH), real aplay; one mosquitto (or
two joined by a mosquitto bridge, MQTT 3.1.1); the fake Coze counts every speech request.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from alsa_sink import AlsaSink
from conftest import TOKEN, VOICE
from fake_coze import FakeCoze
from mqtt_helpers import Broker, Probe, broker, probe  # noqa: F401
from test_daemon import RATE, SPEECH, B, slow_audio
from test_faults import DaemonProcess

ROOMS = ["hall", "kitchen", "bath", "study", "attic"]
UPSTAIRS = ("bath", "study", "attic")


def pcm(text: str) -> bytes:
    return FakeCoze.pcm_for(text, VOICE, RATE)


class Speaker:
    """One speaker process with its own directories and sink."""

    def __init__(self, root: Path, device: str, fake_coze: FakeCoze, port: int, *, transport: str = "http",
                 **fleet) -> None:
        self.device = device
        home = root / device
        home.mkdir(parents=True)
        self.sink = AlsaSink(home / "alsa")
        data = {
            "coze": {"base_url": fake_coze.url, "token": TOKEN, "voice_id": VOICE, "retries": 1, "timeout": 5,
                     "transport": transport, "first_sentence_first": False},
            "mqtt": {"host": "127.0.0.1", "port": port, "device_id": device,
                     "groups": ["upstairs"] if device in UPSTAIRS else []},
            "audio": {"backend": "aplay", "sample_rate": RATE, "chime": "none", "wake_ms": 0},
            "cache": {"dir": str(home / "cache")},
            "state": {"dir": str(home / "state")},
            "queue": {"dedup_seconds": 0},
            "homeassistant": {"enabled": False},
        }
        if fleet:
            data["fleet"] = fleet
        self.config = home / "config.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.config.chmod(0o600)
        self.proc: Optional[DaemonProcess] = None

    def start(self) -> "Speaker":
        self.proc = DaemonProcess(self.config, env={"ALSA_CONFIG_PATH": str(self.sink.config_path)})
        return self

    @property
    def event(self) -> str:
        return f"{B}/{self.device}/event"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class House:
    """N speakers; waits (bounded) until every one is online and its member record is out."""

    def __init__(self, tmp_path: Path, fake_coze: FakeCoze, ports: List[int], probe: Probe, *, rooms=ROOMS,
                 members: bool = True, transport: str = "http", **fleet) -> None:
        self.probe = probe
        self.speakers: Dict[str, Speaker] = {}
        try:
            for n, room in enumerate(rooms):
                self.speakers[room] = Speaker(tmp_path / "house", room, fake_coze, ports[n % len(ports)],
                                              transport=transport, **fleet).start()
            for room in rooms:
                probe.wait_for(lambda ms, r=room: [m for m in ms if m.topic == f"{B}/{r}/availability"
                                                   and m.payload == b"online"], timeout=30)
                if members:
                    probe.wait_for(lambda ms, r=room: [m for m in ms if m.topic == f"{B}/fleet/members/{r}"
                                                       and m.payload], timeout=30)
        except BaseException:
            self.stop()
            raise

    def __getitem__(self, room: str) -> Speaker:
        return self.speakers[room]

    def wait_finished(self, ann_id: str, rooms=None, timeout: float = 60) -> None:
        for room in rooms or self.speakers:
            event = self.probe.wait_for(
                lambda _, r=room: [e for e in self.probe.events(self.speakers[r].event, id=ann_id)
                                   if e["event"] in ("finished", "failed", "expired", "dropped")], timeout)
            assert event[0]["event"] == "finished", f"{room}: {event[0]}"

    def stop(self) -> None:
        for speaker in self.speakers.values():
            speaker.stop()


@pytest.fixture
def house(tmp_path, fake_coze, broker, probe):
    made: List[House] = []

    def build(**kw) -> House:
        made.append(House(tmp_path, fake_coze, [broker.port], probe, **kw))
        return made[-1]

    yield build
    for h in made:
        h.stop()


def heard(speaker: Speaker, *texts: str) -> bool:
    """The sink holds exactly these announcements' audio, in order, each once: nothing else
    but the silence aplay pads a period with."""
    data = speaker.sink.settle()
    for text in texts:
        at = data.find(pcm(text))
        if at < 0 or data[:at].strip(b"\0"):
            return False
        data = data[at + len(pcm(text)):]
    return not data.strip(b"\0")


def speech_calls(fake_coze: FakeCoze) -> int:
    """Syntheses Coze was asked for, over HTTP or the WebSocket API."""
    return len(fake_coze.requests_to(SPEECH)) + len(fake_coze.ws_sessions_with_text())


def fleet_audio(probe: Probe) -> List[dict]:
    """The headers of the audio messages every speaker of a broadcast hears."""
    return [json.loads(m.payload.partition(b"\n")[0]) for m in probe.on(f"{B}/fleet/audio")]


# -- one synthesis per broadcast --------------------------------------------------------------

@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_a_broadcast_miss_is_synthesized_once_and_every_room_plays_the_same_audio(house, probe, fake_coze, transport):
    h = house(transport=transport)
    text = "Dinner is ready, everybody come down to the kitchen please."
    probe.publish(f"{B}/all/say", {"text": text, "id": "dinner"})
    h.wait_finished("dinner")
    assert speech_calls(fake_coze) == 1
    for room in ROOMS:
        assert heard(h[room], text), f"{room} played other audio"
    senders = {m["f"] for m in fleet_audio(probe)}
    assert len(senders) == 1, f"more than one speaker streamed the broadcast: {senders}"
    # every room cached it: the same broadcast again costs nothing, and nobody waits for anyone
    probe.publish(f"{B}/all/say", {"text": text, "id": "dinner-again"})
    h.wait_finished("dinner-again")
    assert speech_calls(fake_coze) == 1
    for room in ROOMS:
        assert heard(h[room], text, text), room
        assert [e for e in probe.events(h[room].event, id="dinner-again", event="finished") if e.get("cached")]


def test_a_group_broadcast_is_synthesized_once_for_its_members_only(house, probe, fake_coze):
    h = house()
    text = "Lights out upstairs in five minutes."
    probe.publish(f"{B}/group/upstairs/say", {"text": text, "id": "lights"})
    h.wait_finished("lights", rooms=UPSTAIRS)
    assert speech_calls(fake_coze) == 1
    for room in ROOMS:
        assert heard(h[room], *([text] if room in UPSTAIRS else [])), room
    assert {m["g"] for m in fleet_audio(probe)} == {"group/upstairs"}


def test_the_elected_speaker_killed_mid_stream_every_other_room_speaks_it_all(house, probe, fake_coze):
    h = house()
    slow_audio(fake_coze)  # real time: the stream lasts seconds
    text = "Attention please: the building will be closed for maintenance tomorrow from eight until noon."
    probe.publish(f"{B}/all/say", {"text": text, "id": "notice", "ttl": 120})
    first = probe.wait_for(lambda _: fleet_audio(probe)[10:11], timeout=30)[0]  # ~0.5 s of audio streamed
    elected = first["f"]
    h[elected].proc.kill(signal.SIGKILL)
    others = [r for r in ROOMS if r != elected]
    h.wait_finished("notice", rooms=others, timeout=90)
    for room in others:
        assert heard(h[room], text), f"{room} did not play the whole announcement exactly once"
    assert speech_calls(fake_coze) == 2  # the elected one's, and the one that took over
    taken_over = {m["f"] for m in fleet_audio(probe)} - {elected}
    assert len(taken_over) == 1, taken_over


def test_a_unicast_miss_cached_elsewhere_costs_no_call(house, probe, fake_coze):
    h = house(rooms=ROOMS[:3])
    text = "The washing machine has finished."
    probe.publish(f"{B}/hall/say", {"text": text, "id": "wash1"})
    h.wait_finished("wash1", rooms=["hall"])
    assert speech_calls(fake_coze) == 1
    probe.publish(f"{B}/kitchen/say", {"text": text, "id": "wash2"})
    h.wait_finished("wash2", rooms=["kitchen"])
    assert speech_calls(fake_coze) == 1, "the kitchen asked Coze for a phrase the hall had cached"
    assert heard(h["kitchen"], text)
    # the kitchen cached what it fetched: the hall is not asked again
    probe.publish(f"{B}/kitchen/say", {"text": text, "id": "wash3"})
    h.wait_finished("wash3", rooms=["kitchen"])
    assert speech_calls(fake_coze) == 1
    askers = [json.loads(m.payload)["from"] for m in probe.on(f"{B}/fleet/want")]
    assert askers == ["hall", "kitchen"]  # wash1 and wash2 were misses; wash3 was a hit
    assert heard(h["bath"])


def test_fleet_disabled_is_todays_behaviour(house, probe, fake_coze):
    h = house(rooms=ROOMS[:2], members=False, enabled=False)
    text = "Every speaker for itself."
    probe.publish(f"{B}/all/say", {"text": text, "id": "alone"})
    h.wait_finished("alone")
    assert speech_calls(fake_coze) == 2
    for room in ROOMS[:2]:
        assert heard(h[room], text)
    probe.publish(f"{B}/kitchen/say", {"text": "Only the hall has this.", "id": "u1"})
    h.wait_finished("u1", rooms=["kitchen"])
    assert speech_calls(fake_coze) == 3
    fleet_traffic = [m for m in probe.messages if m.topic.startswith(f"{B}/fleet/") and m.payload]
    assert fleet_traffic == []


# -- across a mosquitto bridge ------------------------------------------------------------------

def test_across_two_bridged_brokers(tmp_path, fake_coze, broker, probe):
    (tmp_path / "b").mkdir()
    second = Broker(tmp_path / "b", extra_conf=f"connection house\naddress 127.0.0.1:{broker.port}\n"
                                              f"bridge_protocol_version mqttv311\ntopic {B}/# both 1\n").start()
    h: Optional[House] = None
    try:
        h = House(tmp_path, fake_coze, [broker.port, second.port], probe)  # hall, bath, attic on the first
        text = "The car is in the driveway."
        probe.publish(f"{B}/all/say", {"text": text, "id": "car"})
        h.wait_finished("car")
        assert speech_calls(fake_coze) == 1
        for room in ROOMS:
            assert heard(h[room], text), room
        unicast = "Someone is at the back door."
        probe.publish(f"{B}/hall/say", {"text": unicast, "id": "door1"})
        h.wait_finished("door1", rooms=["hall"])
        probe.publish(f"{B}/kitchen/say", {"text": unicast, "id": "door2"})  # kitchen is on the other broker
        h.wait_finished("door2", rooms=["kitchen"])
        assert speech_calls(fake_coze) == 2
        assert heard(h["kitchen"], text, unicast)
    finally:
        if h is not None:
            h.stop()
        second.stop()


# -- bad input, and the scope kept through the journal --------------------------------------------

def test_malformed_fleet_messages_are_ignored_and_the_fleet_goes_on(house, probe, fake_coze):
    h = house(rooms=ROOMS[:2])
    key = "0" * 64
    junk = {
        f"{B}/fleet/members/ghost": [b"{", b"[]", b"[" * 100000, b'{"device":"ghost","groups":"all"}'],
        f"{B}/fleet/audio": [b"garbage", b'{"s":1}\n', b"\xff\xfe\n\x00",
                             b'{"s":"x","f":"a/#","k":"k","n":0,"r":24000,"g":"all"}\nabcd',
                             b'{"s":"y","f":"ghost","k":"../../etc/passwd","n":0,"r":7,"g":"all"}\nabcd',
                             b'{"s":"z","f":"ghost","k":"' + key.encode() + b'","n":"0","r":24000,"g":"all"}\nab',
                             b'{"s":"y","f":"ghost","n":1,"end":true,"len":4,"crc":1}\n'],
        f"{B}/fleet/want": [b"[]", b"null", b'{"id":1,"key":"../x","from":"ghost","rate":24000}',
                            b'{"id":1,"key":"' + key.encode() + b'","from":"a#b","rate":24000}'],
        f"{B}/fleet/to/hall": [b'{"get":"x","k":"zz","r":1,"f":"ghost"}\n', b'{"get":"x","k":"zz","r":1,"f":"+"}\n',
                               b'{"have":"nope","f":"ghost"}\n', b"no header"],
    }
    for topic, payloads in junk.items():
        for payload in payloads:
            probe.publish(topic, payload)
    text = "Still one synthesis after the junk."
    probe.publish(f"{B}/all/say", {"text": text, "id": "after-junk"})
    h.wait_finished("after-junk")
    assert speech_calls(fake_coze) == 1
    for room in ROOMS[:2]:
        assert heard(h[room], text), room
    for room in ROOMS[:2]:
        log = h[room].proc.log
        assert "ignored a fleet message" in log
        assert "Traceback" not in log, log[-3000:]
    assert not [p for p in (Path(h["hall"].config).parent / "cache").rglob("*") if "passwd" in p.name]


def test_a_group_broadcast_keeps_its_scope_through_the_journal(tmp_path):
    from coze_speaker.queue.announcement import Announcement, broadcast_of
    from coze_speaker.queue.journal import Journal
    from coze_speaker.voice.peers import Broadcast

    journal = Journal(tmp_path / "queue-x.jsonl")
    journal.add(Announcement(text="Lights out", id="l1", source="group", group="upstairs"))
    journal.sync()
    restored = Journal(tmp_path / "queue-x.jsonl").load()
    assert [broadcast_of(a) for a in restored.valid] == [Broadcast("l1", "group/upstairs")]
    assert broadcast_of(Announcement(text="x", id="u1")) is None
    assert broadcast_of(Announcement(text="x", id="a1", source="all")) == Broadcast("a1", "all")


def test_a_silent_elected_speaker_is_taken_over_after_the_bound(house, probe, fake_coze):
    """The elected speaker is frozen (SIGSTOP: its connection stays open, so no will says
    `offline`): the next in the agreed order waits `fleet.takeover`, then synthesizes and
    streams to the rest."""
    from urllib.parse import urlsplit

    from coze_speaker.config import load_config
    from coze_speaker.mqtt.fleet import rendezvous
    from coze_speaker.voice.request import RequestBuilder
    from coze_speaker.voice.source import AudioSource

    rooms = ROOMS[:3]
    h = house(rooms=rooms)
    text = "The garden gate was left open."
    config = load_config(h["hall"].config)
    request = RequestBuilder(config, RATE).build(text)
    key = AudioSource(None, None, host=urlsplit(config.coze.base_url).netloc).key(request.pieces[0], request)
    order = rendezvous(key, rooms)
    frozen = h[order[0]].proc
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        probe.publish(f"{B}/all/say", {"text": text, "id": "gate"})
        h.wait_finished("gate", rooms=order[1:])
        assert speech_calls(fake_coze) == 1
        assert {m["f"] for m in fleet_audio(probe)} == {order[1]}
        for room in order[1:]:
            assert heard(h[room], text), room
        assert "the next one takes over" in h[order[1]].proc.log  # not rescued by the will (keepalive)
    finally:
        frozen.kill(signal.SIGKILL)
