"""The Wyoming TTS service (issue 14, item 3): Coze voices for Home Assistant.

Real TCP to the daemon, spoken to with the `wyoming` package's own client and event classes
(what Home Assistant's Wyoming integration uses), the fake Coze over real HTTP, real
mosquitto and aplay into the ALSA file sink (which must stay silent: nothing plays here).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from conftest import VOICE
from fake_coze import VOICES_PATH, FakeCoze, Fault
from mqtt_helpers import broker, free_port, probe  # noqa: F401  (fixtures)
from test_daemon import RATE, SPEECH, D, start_daemon, write_config  # noqa: F401
from test_faults import DaemonProcess

from coze_speaker.voice.fallback import EspeakFallback
from coze_speaker.wyoming import server as wyoming_server

needs_espeak = pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(),
                                  reason="espeak-ng is not installed (scripts/test.sh installs it)")

#: Home Assistant's Wyoming integration gives `info` this long (wyoming/data.py, _INFO_TIMEOUT).
HA_INFO_TIMEOUT = 1.0
#: A configured voice that is not the first of the account's list (it must come first in info).
MY_VOICE = "voice_0007"


def exchange(port: int, *events: Event, read_timeout: float = 20.0) -> Tuple[List[Event], bool]:
    """Connect, send the events, read until audio-stop or info; (events read, closed by the
    server). A read that takes longer than read_timeout fails the test (asyncio.TimeoutError)."""

    async def run() -> Tuple[List[Event], bool]:
        got: List[Event] = []
        client = AsyncTcpClient("127.0.0.1", port)  # timeouts by hand: wyoming 1.7.2 (HA 2026.2) has none
        try:
            await asyncio.wait_for(client.connect(), 5)
            for event in events:
                await client.write_event(event)
            for _ in range(100_000):
                event = await asyncio.wait_for(client.read_event(), read_timeout)
                if event is None:
                    return got, True
                got.append(event)
                if AudioStop.is_type(event.type) or Info.is_type(event.type):
                    return got, False
            raise AssertionError("no end of the answer after 100 000 events")
        except ConnectionResetError:  # closed with our request unread: closed all the same
            return got, True
        finally:
            try:
                await client.disconnect()
            except ConnectionResetError:
                pass

    return asyncio.run(run())


def synthesize(port: int, text: str, voice: Optional[str] = None, **kw) -> Tuple[List[Event], bool]:
    return exchange(port, Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event(), **kw)


def audio_of(events: List[Event]) -> Tuple[AudioStart, bytes]:
    """The audio-start and the PCM of a complete answer; every chunk states the format."""
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop" and set(kinds[1:-1]) == {"audio-chunk"}, kinds
    start = AudioStart.from_event(events[0])
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    for chunk in chunks:  # Home Assistant builds its WAV header from the first chunk
        assert (chunk.rate, chunk.width, chunk.channels) == (start.rate, start.width, start.channels)
        assert len(chunk.audio) % 2 == 0
    return start, b"".join(c.audio for c in chunks)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def can_describe(port: int) -> bool:
    try:
        events, _ = exchange(port, Describe().event(), read_timeout=HA_INFO_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    return bool(events) and Info.is_type(events[-1].type)


@pytest.fixture
def wyoming_daemon(start_daemon, tmp_path):
    """Start the daemon with the Wyoming service on a free port; returns (running, port)."""

    def start(**sections):
        port = free_port()
        wyoming = {"enabled": True, "host": "127.0.0.1", "port": port}
        wyoming.update(sections.pop("wyoming", {}))
        running = start_daemon(wyoming=wyoming, **sections)
        wait_until(lambda: running.daemon.parts.wyoming.listening.is_set(), 10, "the Wyoming port is listening")
        return running, port

    return start


def voices_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / f"voices-{D}.json"


# -- describe -> info ----------------------------------------------------------------------------

def test_describe_answers_at_once_with_the_accounts_voices(wyoming_daemon, fake_coze, tmp_path):
    _, port = wyoming_daemon(coze={"voice_id": MY_VOICE})
    wait_until(lambda: voices_file(tmp_path).exists(), 10, "the voice list is fetched at start and saved")
    fetched = len(fake_coze.requests_to(VOICES_PATH))
    fake_coze.start_outage(Fault.hanging(10), VOICES_PATH)  # asking Coze per describe would miss HA's 1 s
    for _ in range(3):
        events, closed = exchange(port, Describe().event(), read_timeout=HA_INFO_TIMEOUT)
        assert [e.type for e in events] == ["info"] and not closed
    assert len(fake_coze.requests_to(VOICES_PATH)) == fetched

    info = Info.from_event(events[0])
    assert info.satellite is None and not (info.asr or info.wake or info.handle or info.intent or info.mic or info.snd)
    (program,) = info.tts
    assert program.installed and program.attribution.name == "Coze" and program.attribution.url
    assert program.supports_synthesize_streaming is False
    expected = {v["voice_id"]: v for v in fake_coze.voices}
    assert [v.name for v in program.voices][0] == MY_VOICE
    assert sorted(v.name for v in program.voices) == sorted(expected)
    for voice in program.voices:
        assert voice.installed is True and voice.attribution.name == "Coze" and voice.attribution.url
        assert voice.description == expected[voice.name]["name"]
        assert voice.languages == [expected[voice.name]["language_code"]]


# -- synthesize -------------------------------------------------------------------------------------

def test_synthesize_returns_the_phrase_at_the_synthesis_rate_and_plays_nothing(wyoming_daemon, fake_coze, alsa_sink):
    _, port = wyoming_daemon()
    events, closed = synthesize(port, "The washing machine is done")
    start, audio = audio_of(events)
    assert (start.rate, start.width, start.channels) == (RATE, 2, 1)
    assert audio == FakeCoze.pcm_for("The washing machine is done", VOICE, RATE)
    (request,) = fake_coze.requests_to(SPEECH)
    assert request.json["sample_rate"] == RATE and request.json["voice_id"] == VOICE

    events, _ = synthesize(port, "Guten Abend", voice="voice_0003")  # a voice chosen in Home Assistant
    assert audio_of(events)[1] == FakeCoze.pcm_for("Guten Abend", "voice_0003", RATE)
    time.sleep(0.3)  # nothing may reach the speaker, however late
    assert alsa_sink.read() == b""


def test_a_repeated_phrase_costs_no_coze_call(wyoming_daemon, fake_coze):
    _, port = wyoming_daemon()
    first, _ = synthesize(port, "Someone is at the door")
    assert len(fake_coze.requests_to(SPEECH)) == 1
    second, _ = synthesize(port, "Someone is at the door")
    assert len(fake_coze.requests_to(SPEECH)) == 1
    assert audio_of(second)[1] == audio_of(first)[1] == FakeCoze.pcm_for("Someone is at the door", VOICE, RATE)


def test_an_announced_phrase_is_cached_for_wyoming_too(wyoming_daemon, fake_coze, probe):
    """One cache for both: what the speaker said once, Home Assistant gets without a call."""
    from test_daemon import EVENT, SAY

    _, port = wyoming_daemon()
    probe.publish(SAY, "Dinner is ready")
    probe.wait_event(EVENT, event="finished")
    events, _ = synthesize(port, "Dinner is ready")
    assert audio_of(events)[1] == FakeCoze.pcm_for("Dinner is ready", VOICE, RATE)
    assert len(fake_coze.requests_to(SPEECH)) == 1


@pytest.mark.parametrize("fault", [Fault.api_error(4100), Fault.http_error(503)], ids=["refused", "down"])
def test_a_coze_failure_closes_the_connection(wyoming_daemon, fake_coze, fault):
    _, port = wyoming_daemon(coze={"retries": 1, "breaker_cooldown": 0})
    fake_coze.start_outage(fault, SPEECH)
    events, closed = synthesize(port, "This cannot be spoken")
    assert closed, [e.type for e in events]
    assert [e.type for e in events] == ["error"]
    assert Error.from_event(events[0]).text
    fake_coze.end_outage()
    events, _ = synthesize(port, "But this can")  # the service goes on
    assert audio_of(events)[1] == FakeCoze.pcm_for("But this can", VOICE, RATE)


def test_a_hanging_coze_closes_the_connection_at_the_deadline(wyoming_daemon, fake_coze, monkeypatch):
    """Coze's own timeouts (20 s here, twice) are longer than the client waits: the request's
    deadline closes the connection first."""
    monkeypatch.setattr(wyoming_server, "FIRST_AUDIO_DEADLINE", 2.0)
    _, port = wyoming_daemon(coze={"retries": 1, "timeout": 20, "first_audio_timeout": 20, "breaker_cooldown": 0})
    fake_coze.start_outage(Fault.hanging(60), SPEECH)
    events, closed = synthesize(port, "Coze will not answer this", read_timeout=10)
    assert closed and [e.type for e in events] == ["error"]


@needs_espeak
def test_the_offline_voice_speaks_while_coze_is_down(wyoming_daemon, fake_coze):
    _, port = wyoming_daemon(coze={"retries": 1}, fallback={"engine": "espeak-ng"})
    fake_coze.start_outage(Fault.http_error(503))
    events, closed = synthesize(port, "The garage door is open")
    start, audio = audio_of(events)
    assert start.rate == RATE and not closed
    assert audio == EspeakFallback().synthesize("The garage door is open", RATE)
    assert fake_coze.requests_to(SPEECH)  # Coze was asked first


def test_bad_requests_get_an_error_naming_the_field_and_cost_nothing(wyoming_daemon, fake_coze, tmp_path):
    _, port = wyoming_daemon()
    wait_until(lambda: voices_file(tmp_path).exists(), 10, "the voice list is known")
    for request, field in ((Synthesize(text="hello", voice=SynthesizeVoice(name="no_such_voice")), "voice"),
                           (Synthesize(text="   "), "text")):
        events, closed = exchange(port, request.event())
        assert closed and [e.type for e in events] == ["error"]
        assert field in Error.from_event(events[0]).text
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # not Wyoming at all
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
        answer = raw.makefile("rb").read()
    assert b'"error"' in answer
    assert fake_coze.requests_to(SPEECH) == []
    assert can_describe(port)


def test_event_data_inline_in_the_header_is_read_too(wyoming_daemon, fake_coze):
    """Older clients put `data` in the header line; Home Assistant sends a data_length block
    (the other tests). Both are the same request."""
    _, port = wyoming_daemon()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b'{"type": "synthesize", "data": {"text": "Inline data"}}\n')
        from wyoming.event import read_event

        stream = raw.makefile("rb")
        events = [read_event(stream) for _ in range(3)]
    assert [e.type for e in events][0] == "audio-start"


# -- the port: restarts and load ------------------------------------------------------------------

def test_a_restarted_daemon_listens_again_at_once(tmp_path, fake_coze, broker, alsa_sink):
    """A connection open while the daemon stops leaves the port in TIME_WAIT (the daemon closed
    first); the new daemon must bind it all the same (SO_REUSEADDR)."""
    port = free_port()
    path = write_config(tmp_path, fake_coze, broker, wyoming={"enabled": True, "host": "127.0.0.1", "port": port})
    first = DaemonProcess(path)
    try:
        wait_until(lambda: can_describe(port), 20, "the first daemon answers describe")
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert first.kill(signal.SIGTERM) == 0
        assert held.recv(1) == b""  # the daemon closed it
        held.close()
    finally:
        first.stop()
    second = DaemonProcess(path)
    try:
        wait_until(lambda: can_describe(port), 20, "the restarted daemon answers describe")
        events, _ = synthesize(port, "Back again")
        assert audio_of(events)[1] == FakeCoze.pcm_for("Back again", VOICE, RATE)
        assert "cannot listen" not in second.log
    finally:
        second.stop()


def test_connections_are_bounded_and_an_idle_one_is_closed(wyoming_daemon, fake_coze, monkeypatch):
    monkeypatch.setattr(wyoming_server, "IO_TIMEOUT", 1.5)
    _, port = wyoming_daemon()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(wyoming_server.MAX_CONNECTIONS)]
    try:
        events, closed = exchange(port, Describe().event())  # one too many: told so, and closed
        assert closed and [e.type for e in events] == ["error"] and "busy" in Error.from_event(events[0]).text
        idle.pop().close()
        wait_until(lambda: can_describe(port), 10, "a freed slot serves the next request")
        for sock in idle:  # idle connections do not keep their slot: closed after IO_TIMEOUT
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    events, _ = synthesize(port, "Room for everyone again")
    assert audio_of(events)[1] == FakeCoze.pcm_for("Room for everyone again", VOICE, RATE)


def test_a_daemon_without_wyoming_loads_none_of_it(tmp_path, fake_coze, broker):
    """Off by default and imported only when enabled, so the idle daemon's memory is as before
    (Home Assistant discovery is off here too: its voice select uses the voice list)."""
    import subprocess
    import sys

    code = ("import sys; from coze_speaker.config import load_config; from coze_speaker.app.daemon import Daemon; "
            "d = Daemon(load_config(sys.argv[1])); "
            "print(sorted(m for m in sys.modules if m.startswith(('coze_speaker.wyoming', 'coze_speaker.voice.voices'))), "
            "d.parts.wyoming is None); d.parts.close()")
    for enabled, expected in ((False, "[] True"), (True, "['coze_speaker.voice.voices', 'coze_speaker.wyoming', "
                                                          "'coze_speaker.wyoming.info', 'coze_speaker.wyoming.protocol', "
                                                          "'coze_speaker.wyoming.server'] False")):
        path = write_config(tmp_path, fake_coze, broker, wyoming={"enabled": enabled, "port": free_port()},
                            homeassistant={"enabled": enabled})
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == expected, out.stderr


def test_the_voice_list_is_kept_in_the_state_dir_and_not_fetched_at_every_start(wyoming_daemon, fake_coze, tmp_path):
    running, port = wyoming_daemon()
    wait_until(lambda: voices_file(tmp_path).exists(), 10, "the voice list is fetched at start and saved")
    fetched = len(fake_coze.requests_to(VOICES_PATH))
    running.stop()
    fake_coze.start_outage(Fault.http_error(503), VOICES_PATH)  # a restart while Coze is down
    _, port = wyoming_daemon()
    events, _ = exchange(port, Describe().event(), read_timeout=HA_INFO_TIMEOUT)
    assert len(Info.from_event(events[0]).tts[0].voices) == len(fake_coze.voices)
    assert len(fake_coze.requests_to(VOICES_PATH)) == fetched


def test_a_stale_broken_or_foreign_voice_list_is_fetched_anew(fake_coze, tmp_path, caplog):
    from coze_speaker.coze import CozeClient
    from coze_speaker.voice.voices import VoiceCatalog

    path = tmp_path / "voices.json"
    for content in ("{not json", '{"host": "api.coze.cn", "fetched_at": 1e12, "voices": []}',
                    '{"host": "%s", "fetched_at": 0, "voices": []}' % fake_coze.url.split("//")[1]):
        path.write_text(content)
        catalog = VoiceCatalog(CozeClient(fake_coze.token, fake_coze.url, retries=0), path)
        before = len(fake_coze.requests_to(VOICES_PATH))
        catalog.start()
        try:
            wait_until(lambda: len(catalog.voices()) == len(fake_coze.voices), 10, f"fetched anew after {content!r}")
        finally:
            catalog.close()
        assert len(fake_coze.requests_to(VOICES_PATH)) > before
    assert "unreadable voice list" in caplog.text


def test_a_reload_hands_the_port_to_the_new_config(wyoming_daemon, fake_coze):
    running, port = wyoming_daemon()
    old = running.daemon.parts
    running.daemon.request_reload()
    wait_until(lambda: running.daemon.parts is not old and running.daemon.parts.wyoming.listening.is_set(), 20,
               "the reloaded config's Wyoming service listens")
    assert not old.wyoming.listening.is_set()
    events, _ = synthesize(port, "After the reload")
    assert audio_of(events)[1] == FakeCoze.pcm_for("After the reload", VOICE, RATE)
