"""Coze's WebSocket speech API, and the first sentence asked alone over HTTP.

Every test talks to the fake Coze over real sockets: websocket-client against the fake's
WebSocket endpoint (tests/fake_coze_ws.py, written from the documented protocol), requests
against its HTTP endpoint; the audio source, the cache and the cost guard are the real ones.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TOKEN, VOICE
from fake_coze import FakeCoze, Fault, WsFault

from coze_speaker.app.wiring import build_voice
from coze_speaker.cache import PhraseCache
from coze_speaker.cancel import CancelToken
from coze_speaker.config import load_config
from coze_speaker.coze import CozeClient, CozeError, SpeechParams, speech_rate, ws_url_for
from coze_speaker.voice.breaker import CircuitBreaker
from coze_speaker.voice.costguard import CostGuard, CostLimitError
from coze_speaker.voice.request import SpeechRequest
from coze_speaker.voice.source import AudioSource

RATE = 24000
SPEECH = "/v1/audio/speech"
TEXT = "The washing machine has finished. Please take the laundry out."
FIRST, REST = "The washing machine has finished.", "Please take the laundry out."


def pcm(text, rate=RATE, **kw):
    return FakeCoze.pcm_for(text, VOICE, rate, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_source(fake_coze, tmp_path):
    """An AudioSource on the fake Coze with a real cache; keyword arguments choose the client's
    and the source's settings."""
    made = []

    def make(transport="websocket", *, fsf=False, retries=1, first_audio_timeout=10.0, ws_url=None,
             guard=None, breaker=None, fallback=None, cache=True):
        client = CozeClient(TOKEN, fake_coze.url, retries=retries, timeout=5, backoff=0.01,
                            first_audio_timeout=first_audio_timeout, ws_url=ws_url)
        phrase_cache = PhraseCache(tmp_path / f"cache{len(made)}", 10**9) if cache else None
        source = AudioSource(client, phrase_cache, guard=guard, breaker=breaker, fallback=fallback,
                             transport=transport, first_sentence_first=fsf)
        made.append(source)
        return source

    yield make
    for source in made:
        source.client.close()
        if source.cache is not None:
            source.cache.close()
        if source.breaker is not None:
            source.breaker.close()


def request(text=TEXT, **params):
    return SpeechRequest.build(text, SpeechParams(VOICE, sample_rate=params.pop("sample_rate", RATE), **params))


def play(source, req, **kw):
    speech = source.open(req, **kw)
    audio = b"".join(speech)
    speech.join(5)
    return audio, speech


def http_speech(fake):
    return fake.requests_to(SPEECH, "POST")


# -- where the WebSocket API is ---------------------------------------------------------------

@pytest.mark.parametrize("base, expected", [
    ("https://api.coze.cn", "wss://ws.coze.cn/v1/audio/speech"),
    ("https://api.coze.com/", "wss://ws.coze.com/v1/audio/speech"),
    ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/audio/speech"),
    ("https://coze.example.org:8443", "wss://coze.example.org:8443/v1/audio/speech"),
    ("http://[::1]:9000", "ws://[::1]:9000/v1/audio/speech"),
])
def test_the_websocket_url_is_derived_from_the_base_url(base, expected):
    assert ws_url_for(base) == expected
    assert CozeClient(TOKEN, base).ws_url == expected


def test_coze_ws_url_overrides_and_must_be_a_websocket_url(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("coze:\n  ws_url: wss://relay.example.org/v1/audio/speech/\n")
    config = load_config(path)
    assert config.coze.transport == "auto" and config.coze.first_sentence_first is True
    assert CozeClient.from_config(config.coze).ws_url == "wss://relay.example.org/v1/audio/speech"
    path.write_text("coze:\n  ws_url: https://ws.coze.cn/v1/audio/speech\n  transport: tcp\n")
    with pytest.raises(Exception) as err:
        load_config(path)
    assert "coze.ws_url" in str(err.value) and "ws:// or wss://" in str(err.value)
    assert "coze.transport" in str(err.value)


# -- speaking over the WebSocket ----------------------------------------------------------------

def test_speaks_over_the_websocket_and_caches_it(make_source, fake_coze):
    source = make_source("websocket")
    audio, speech = play(source, request())
    assert audio == pcm(TEXT)
    assert speech.api_calls == 1 and speech.synthesized == 1
    assert http_speech(fake_coze) == []
    [session] = fake_coze.ws_sessions
    assert session.completed and session.text == TEXT and session.closed_by_client
    assert session.authorization == f"Bearer {TOKEN}"
    assert TOKEN not in session.path and fake_coze.ws_errors == []
    assert [e["event_type"] for e in session.received] == [
        "speech.update", "input_text_buffer.append", "input_text_buffer.complete"]
    assert all(e.get("id") for e in session.received)  # the documented client events carry an id
    again, speech = play(source, request())
    assert again == audio and speech.cached and speech.cache_hits == 1
    assert len(fake_coze.ws_sessions) == 1


def test_speech_update_carries_rate_voice_speed_and_emotion(make_source, fake_coze):
    voice = fake_coze.emotion_voice_id
    emotion = fake_coze.get_voice(voice)["support_emotions"][0]["emotion"]
    source = make_source("websocket")
    req = SpeechRequest.build("Good morning", SpeechParams(voice, sample_rate=48000, speed=1.5, emotion=emotion,
                                                           emotion_scale=3.0))
    audio, _ = play(source, req)
    update = fake_coze.ws_sessions[0].events_of("speech.update")[0]["data"]
    assert update == {"output_audio": {"codec": "pcm", "pcm_config": {"sample_rate": 48000}, "speech_rate": 50,
                                       "voice_id": voice,
                                       "emotion_config": {"emotion": emotion, "emotion_scale": 3.0}}}
    # the same bytes HTTP gives for the same request: one cache key for both transports
    assert audio == FakeCoze.audio_for("Good morning", voice, "pcm", 48000, 1.5, emotion)
    assert audio == CozeClient(TOKEN, fake_coze.url).speech("Good morning", req.params).read_all()


@pytest.mark.parametrize("speed, rate", [(0.5, -50), (0.8, -20), (1.0, 0), (1.15, 15), (2.0, 100)])
def test_speed_maps_to_speech_rate(speed, rate):
    assert speech_rate(speed) == rate


@pytest.mark.parametrize("params", [{"loudness_rate": 20}, {"context_texts": "whisper it"}, {"speed": 2.5},
                                    {"speed": 0.3}, {"speed": 1.005}])
def test_what_the_websocket_cannot_say_goes_over_http(make_source, fake_coze, params):
    source = make_source("websocket")
    audio, speech = play(source, request("The mail is here", **params))
    assert fake_coze.ws_sessions == [] and len(http_speech(fake_coze)) == 1 and speech.api_calls == 1
    sent = http_speech(fake_coze)[0].json
    assert all(sent[k] == v for k, v in params.items())


def test_unknown_events_and_odd_sized_chunks_are_taken_in_stride(make_source, fake_coze):
    fake_coze.add_ws_fault(WsFault(chunk_bytes=777, extra_events=[
        {"event_type": "conversation.audio.sentence_start", "data": {"text": TEXT}},
        {"event_type": "speech.audio.novelty", "data": {"delta": "AAAAAAAA"}},
        {"id": "x", "event_type": "speech.progress", "detail": {"logid": "L"}},
        ["not", "an", "object"],
    ]))
    audio, speech = play(make_source("websocket"), request())
    assert audio == pcm(TEXT) and speech.api_calls == 1 and len(fake_coze.ws_sessions) == 1


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["websocket", "auto"])
def test_an_error_event_4100_fails_once_with_code_and_logid(make_source, fake_coze, transport):
    fake_coze.add_ws_fault(WsFault(error_code=4100))
    speech = make_source(transport, retries=3).open(request())
    with pytest.raises(CozeError) as err:
        b"".join(speech)
    session = fake_coze.ws_sessions[0]
    assert err.value.code == 4100 and err.value.logid == session.logid and not err.value.retryable
    assert len(fake_coze.ws_sessions) == 1 and http_speech(fake_coze) == [] and speech.api_calls == 1


def test_a_wrong_token_is_told_by_an_error_event(fake_coze):
    client = CozeClient("pat_wrong_token_value", fake_coze.url, retries=2, backoff=0.01)
    with pytest.raises(CozeError) as err:
        client.speech("hello", SpeechParams(VOICE), transport="auto").read_all()
    assert err.value.code == 4100 and err.value.logid
    assert len(fake_coze.ws_sessions) == 1 and http_speech(fake_coze) == []


def test_a_retryable_error_event_is_retried_over_the_websocket(make_source, fake_coze):
    fake_coze.add_ws_fault(WsFault(error_code=5000))
    audio, speech = play(make_source("websocket"), request())
    assert audio == pcm(TEXT) and speech.api_calls == 2 and len(fake_coze.ws_sessions) == 2


def test_with_auto_a_failure_before_any_audio_is_asked_over_http(make_source, fake_coze):
    fake_coze.add_ws_fault(WsFault(error_code=5000))
    source = make_source("auto")
    audio, speech = play(source, request())
    assert audio == pcm(TEXT) and speech.api_calls == 2
    assert len(fake_coze.ws_sessions) == 1 and len(http_speech(fake_coze)) == 1
    assert source.cache.contains(source.key(TEXT, request()))
    play(source, request("Next one over the WebSocket again"))  # not a refusal: the endpoint is still used
    assert len(fake_coze.ws_sessions) == 2


def test_a_connection_closed_mid_stream_is_not_cached_and_is_retried(make_source, fake_coze):
    fake_coze.add_ws_fault(WsFault(close_after=9000, chunk_bytes=3000))
    source = make_source("auto", retries=2)
    audio, speech = play(source, request())
    assert audio == pcm(TEXT)  # the retry skips what was already played
    assert speech.api_calls == 2 and len(fake_coze.ws_sessions) == 2 and http_speech(fake_coze) == []
    assert not source.cache.contains(source.key(TEXT, request()))
    assert fake_coze.ws_sessions[0].audio_bytes == 9000 and not fake_coze.ws_sessions[0].completed


def test_a_stream_that_breaks_every_time_fails_after_the_retries(make_source, fake_coze):
    fake_coze.ws_outage = WsFault(close_after=3000, chunk_bytes=3000)
    speech = make_source("websocket", retries=2).open(request())
    with pytest.raises(CozeError) as err:
        b"".join(speech)
    assert err.value.retryable and "broke off after" in str(err.value)
    assert len(fake_coze.ws_sessions) == 3 and speech.api_calls == 3


@pytest.mark.parametrize("how", ["upgrade refused (403)", "connection refused"])
def test_with_auto_a_refused_websocket_speaks_over_http(make_source, fake_coze, how, caplog):
    if how == "connection refused":
        source = make_source("auto", ws_url=f"ws://127.0.0.1:{free_port()}/v1/audio/speech")
    else:
        fake_coze.ws_outage = WsFault(refuse_status=403)
        source = make_source("auto")
    with caplog.at_level(logging.DEBUG):
        audio, speech = play(source, request())
        assert audio == pcm(TEXT) and len(http_speech(fake_coze)) == 1
        assert speech.api_calls == 1  # no session was opened: nothing billable was sent over it
        sessions = len(fake_coze.ws_sessions)
        audio, speech = play(source, request("And a second announcement"))
    assert audio == pcm("And a second announcement") and len(http_speech(fake_coze)) == 2
    assert len(fake_coze.ws_sessions) == sessions  # the endpoint is skipped for a while
    assert "speaks over HTTP for the next 300 s" in caplog.text and TOKEN not in caplog.text


def test_with_websocket_a_refused_upgrade_fails_with_status_and_logid(make_source, fake_coze):
    fake_coze.ws_outage = WsFault(refuse_status=403)
    speech = make_source("websocket", retries=3).open(request())
    with pytest.raises(CozeError) as err:
        b"".join(speech)
    assert err.value.status == 403 and err.value.logid == fake_coze.ws_sessions[0].logid
    assert len(fake_coze.ws_sessions) == 1 and http_speech(fake_coze) == [] and speech.api_calls == 0


def test_an_upgrade_refused_with_a_coze_envelope_is_final(make_source, fake_coze):
    fake_coze.ws_outage = WsFault(refuse_status=401, refuse_body={"code": 4100, "msg": "authentication is invalid",
                                                                    "detail": {"logid": "LOG4100"}})
    speech = make_source("auto", retries=3).open(request())
    with pytest.raises(CozeError) as err:
        b"".join(speech)
    assert err.value.code == 4100 and err.value.logid == "LOG4100"
    assert len(fake_coze.ws_sessions) == 1 and http_speech(fake_coze) == []


# -- the time bounds ---------------------------------------------------------------------------

def test_late_first_audio_is_cut_off_then_auto_asks_over_http(make_source, fake_coze):
    fake_coze.add_ws_fault(WsFault(hang=30))
    source = make_source("auto", first_audio_timeout=1)
    audio, speech = play(source, request())
    assert audio == pcm(TEXT) and len(http_speech(fake_coze)) == 1 and speech.api_calls == 2
    play(source, request("The next one does not wait for it again"))  # the endpoint is skipped for a while
    assert len(fake_coze.ws_sessions) == 1 and len(http_speech(fake_coze)) == 2


def test_audio_slower_than_half_real_time_is_cut_off(make_source, fake_coze):
    fake_coze.ws_chunk_ms = 100
    fake_coze.ws_realtime_factor = 0.2  # 100 ms of audio every 500 ms
    speech = make_source("websocket", retries=0, first_audio_timeout=1).open(request())
    with pytest.raises(CozeError) as err:
        b"".join(speech)
    assert err.value.code == "timeout" and "slower than 0.5x real time" in str(err.value)


def test_past_the_deadline_nothing_is_retried(make_source, fake_coze):
    fake_coze.add_ws_fault(WsFault(hang=30))
    token = CancelToken(deadline=time.monotonic() + 1.0)
    speech = make_source("auto", retries=3, first_audio_timeout=10).open(request(), token=token)
    with pytest.raises(CozeError) as err:
        b"".join(speech)
    assert err.value.code == "timeout" and not err.value.retryable
    assert len(fake_coze.ws_sessions) == 1 and http_speech(fake_coze) == []


# -- cost guard and circuit breaker ------------------------------------------------------------

def test_every_session_is_counted_by_the_cost_guard(make_source, fake_coze):
    guard = CostGuard(max_requests_per_hour=2)
    fake_coze.add_ws_fault(WsFault(close_after=3000, chunk_bytes=3000))
    source = make_source("websocket", guard=guard, retries=3)
    audio, speech = play(source, request())
    assert speech.api_calls == 2 and audio == pcm(TEXT)
    speech = source.open(request("One more, over the cap"))
    with pytest.raises(CostLimitError):
        b"".join(speech)
    assert len(fake_coze.ws_sessions) == 3  # opened, then closed before its text was sent
    assert fake_coze.ws_sessions[-1].received == [] and speech.api_calls == 0


def test_a_websocket_that_cannot_be_reached_opens_the_breaker(make_source, fake_coze):
    breaker = CircuitBreaker(60)
    source = make_source("websocket", retries=0, breaker=breaker,
                         ws_url=f"ws://127.0.0.1:{free_port()}/v1/audio/speech")
    with pytest.raises(CozeError):
        b"".join(source.open(request()))
    assert breaker.down


# -- first sentence first over HTTP ------------------------------------------------------------

def test_first_sentence_first_asks_for_it_alone_and_caches_the_piece_whole(make_source, fake_coze):
    source = make_source("http", fsf=True)
    audio, speech = play(source, request())
    assert [r.json["input"] for r in http_speech(fake_coze)] == [FIRST, REST]
    assert audio == pcm(FIRST) + pcm(REST) and speech.api_calls == 2
    again, speech = play(source, request())
    assert again == audio and speech.cache_hits == 1 and speech.api_calls == 0
    assert len(http_speech(fake_coze)) == 2


def test_first_sentence_first_leaves_one_sentence_and_the_websocket_alone(make_source, fake_coze):
    play(make_source("http", fsf=True), request("Only one sentence here"))
    play(make_source("websocket", fsf=True), request())
    assert [r.json["input"] for r in http_speech(fake_coze)] == ["Only one sentence here"]
    assert [s.text for s in fake_coze.ws_sessions] == [TEXT]
    play(make_source("http", fsf=False), request())
    assert http_speech(fake_coze)[-1].json["input"] == TEXT


def test_a_piece_cached_over_one_transport_plays_for_the_other(make_source, fake_coze, tmp_path):
    http = make_source("http", fsf=True)
    play(http, request())
    ws = AudioSource(CozeClient(TOKEN, fake_coze.url), http.cache, transport="websocket")
    audio, speech = play(ws, request())
    assert speech.cache_hits == 1 and fake_coze.ws_sessions == [] and audio == pcm(FIRST) + pcm(REST)


@pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(), reason="espeak-ng is not installed")
def test_when_the_rest_fails_the_offline_voice_says_only_the_rest(make_source, fake_coze):
    from coze_speaker.voice.fallback import EspeakFallback

    fake_coze.add_faults(SPEECH, Fault(), Fault(code=4000, msg="bad"))  # the first answers, the rest fails
    source = make_source("http", fsf=True, fallback=EspeakFallback())
    audio, speech = play(source, request())
    assert audio.startswith(pcm(FIRST)) and len(audio) > len(pcm(FIRST)) and speech.fallback_pieces == 1
    espeak_first = EspeakFallback().synthesize(FIRST, RATE)
    assert espeak_first not in audio  # the first sentence is not said twice
    assert not source.cache.contains(source.key(TEXT, request()))


def test_cache_warm_uses_http_without_the_extra_request(make_config):
    config = load_config(make_config(coze={"transport": "auto", "first_sentence_first": True}))
    with build_voice(config, rate=RATE, plays=False) as warm, build_voice(config, rate=RATE) as daemon:
        assert (warm.source.transport, warm.source.first_sentence_first) == ("http", False)
        assert (daemon.source.transport, daemon.source.first_sentence_first) == ("auto", True)
    config = load_config(make_config(coze={"transport": "websocket"}))
    with build_voice(config, rate=RATE, plays=False) as warm:
        assert warm.source.transport == "websocket"


# -- the fake's model of both services ----------------------------------------------------------

def test_the_fake_models_synchronous_http_and_a_streaming_websocket(fake_coze):
    """Lower bounds only: HTTP's headers wait for the whole text, the WebSocket's first audio
    for the fixed delay after the text is complete."""
    fake_coze.model_services(http=(0.05, 0.002), ws_first_audio=0.2, ws_realtime_factor=None)
    client = CozeClient(TOKEN, fake_coze.url)
    text = "x" * 200
    assert client.speech(text, SpeechParams(VOICE)).read_all() == pcm(text)
    timing = fake_coze.speech_log[-1]
    assert timing.t_headers - timing.t_request >= 0.05 + 0.002 * len(text)
    assert client.speech(text, SpeechParams(VOICE), transport="websocket").read_all() == pcm(text)
    session = fake_coze.ws_sessions[-1]
    assert session.t_first_audio - session.t_complete >= 0.2


# -- footprint ---------------------------------------------------------------------------------

def test_the_websocket_library_is_loaded_only_when_used():
    code = ("import sys, coze_speaker.app.daemon, coze_speaker.coze.ws, coze_speaker.cli; "
            "print('websocket' in sys.modules, 'requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
