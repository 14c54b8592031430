"""Quick self-tests of the Coze fake (tests/fake_coze.py), using requests directly."""

from __future__ import annotations

import io
import struct
import time

import pytest
import requests

try:
    from fake_coze import CLONE_PATH, SPEECH_PATH, VOICES_PATH, FakeCoze, Fault
except ImportError:  # tests/ turned into a package
    from tests.fake_coze import CLONE_PATH, SPEECH_PATH, VOICES_PATH, FakeCoze, Fault


@pytest.fixture
def fake():
    with FakeCoze() as f:
        yield f


@pytest.fixture
def session(fake):
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + fake.token
    yield s
    s.close()


def speak(session, fake, **body):
    body.setdefault("voice_id", fake.default_voice_id)
    return session.post(fake.url + SPEECH_PATH, json=body, timeout=5)


# --------------------------------------------------------------------------- auth / routing


def test_auth_failure_has_code_and_logid(fake):
    r = requests.post(fake.url + SPEECH_PATH, json={"input": "hi", "voice_id": fake.default_voice_id},
                      headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert r.status_code == 401
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["code"] == 4100
    assert body["msg"] == "authentication is invalid"
    assert body["detail"]["logid"] == r.headers["X-Tt-Logid"]
    r2 = requests.get(fake.url + VOICES_PATH, timeout=5)          # no header at all
    assert r2.json()["code"] == 4100
    assert r2.headers["X-Tt-Logid"] != r.headers["X-Tt-Logid"]
    assert fake.speech_log == []
    assert len(fake.requests) == 2 and fake.requests[0].headers["authorization"] == "Bearer wrong"


def test_unknown_path_is_404_json(session, fake):
    r = session.get(fake.url + "/v1/nope", timeout=5)
    assert r.status_code == 404
    assert r.json()["code"] == 4000


# --------------------------------------------------------------------------- speech


def test_pcm_body_equals_pcm_for_and_is_recorded(session, fake):
    text = "今天天气怎么样？ Pretty good."
    r = speak(session, fake, input=text, response_format="pcm", sample_rate=16000, speed=1.5,
              emotion="happy", emotion_scale=3, loudness_rate=20, unknown_field=1)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/pcm"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    assert r.headers["X-Tt-Logid"]
    expected = FakeCoze.pcm_for(text, fake.default_voice_id, 16000, 1.5, "happy", 20)
    assert r.content == expected
    assert len(expected) % 2 == 0
    first, last = struct.unpack("<h", expected[:2])[0], struct.unpack("<h", expected[-2:])[0]
    assert first != 0 and last != 0
    assert 0 not in struct.unpack("<%dh" % (len(expected) // 2), expected)  # no silence at all
    # every parameter matters
    assert expected != FakeCoze.pcm_for(text, fake.default_voice_id, 16000, 1.5, "happy", 0)
    assert expected != FakeCoze.pcm_for(text, fake.default_voice_id, 16000, 1.0, "happy", 20)
    assert len(FakeCoze.pcm_for(text * 4, "v")) > len(FakeCoze.pcm_for(text, "v"))
    rec = fake.requests_to(SPEECH_PATH)[-1]
    assert rec.json["input"] == text and rec.method == "POST"
    log = fake.speech_log[-1]
    assert log.completed and log.bytes_sent == len(expected) and log.input == text


def test_wav_and_content_length_mode(session, fake):
    fake.chunked = False
    r = speak(session, fake, input="hello", response_format="wav")
    assert r.headers["Content-Type"] == "audio/wav"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.content[:4] == b"RIFF" and r.content[8:12] == b"WAVE"
    assert r.content[44:] == FakeCoze.pcm_for("hello", fake.default_voice_id)
    r = speak(session, fake, input="hello")  # default mp3
    assert r.headers["Content-Type"] == "audio/mpeg"
    assert r.content == FakeCoze.audio_for("hello", fake.default_voice_id, "mp3")


@pytest.mark.parametrize("body, code", [
    ({"input": ""}, 4000),
    ({"input": "好" * 342}, 4000),                      # 1026 bytes
    ({"input": "x", "voice_id": "does-not-exist"}, 4200),
    ({"input": "x", "emotion": "bored"}, 4000),
    ({"input": "x", "emotion_scale": 5.5}, 4000),
    ({"input": "x", "response_format": "flac"}, 4000),
    ({"input": "x", "speed": 3.5}, 4000),
    ({"input": "x", "sample_rate": 11025}, 4000),
    ({"input": "x", "loudness_rate": -51}, 4000),
    ({"input": "x", "loudness_rate": 1.5}, 4000),
])
def test_speech_validation(session, fake, body, code):
    r = speak(session, fake, **body)
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["code"] == code
    assert r.json()["detail"]["logid"] == r.headers["X-Tt-Logid"]


def test_speech_invalid_json(session, fake):
    r = session.post(fake.url + SPEECH_PATH, data=b"{not json", headers={"Content-Type": "application/json"},
                     timeout=5)
    assert r.status_code == 400 and r.json()["code"] == 4000


def test_max_input_is_accepted(session, fake):
    r = speak(session, fake, input="好" * 341, response_format="pcm", speed=3)  # 1023 bytes
    assert r.status_code == 200 and len(r.content) > 4096


def test_streaming_timing_recorded(session, fake):
    fake.ttfb = 0.05
    fake.chunk_bytes = 8000
    fake.chunk_delay = 0.01
    t0 = time.monotonic()
    with speak_stream(session, fake, "a slightly longer sentence") as r:
        chunks = list(r.iter_content(None))
    log = fake.speech_log[-1]
    assert log.completed
    assert t0 <= log.t_request < log.t_headers < log.t_first_byte < log.t_last_byte
    assert b"".join(chunks) == FakeCoze.pcm_for("a slightly longer sentence", fake.default_voice_id)
    assert log.bytes_sent == log.total_bytes


def speak_stream(session, fake, text):
    return session.post(fake.url + SPEECH_PATH, json={"input": text, "voice_id": fake.default_voice_id,
                                                      "response_format": "pcm"}, stream=True, timeout=5)


# --------------------------------------------------------------------------- faults


def test_fault_consumed_once(session, fake):
    fake.add_fault(SPEECH_PATH, Fault.http_error(502))
    fake.add_fault(SPEECH_PATH, Fault.api_error(5000))
    r1 = speak(session, fake, input="hi", response_format="pcm")
    assert r1.status_code == 502 and not r1.headers["Content-Type"].startswith("application/json")
    assert b"502" in r1.content
    r2 = speak(session, fake, input="hi", response_format="pcm")
    assert r2.status_code == 200 and r2.headers["Content-Type"].startswith("application/json")
    assert r2.json()["code"] == 5000 and r2.json()["detail"]["logid"] == r2.headers["X-Tt-Logid"]
    r3 = speak(session, fake, input="hi", response_format="pcm")
    assert r3.status_code == 200 and r3.content == FakeCoze.pcm_for("hi", fake.default_voice_id)
    assert fake.pending_faults() == 0
    assert len(fake.requests_to(SPEECH_PATH)) == 3 and len(fake.speech_log) == 1
    # a fault on another path does not affect speech
    fake.add_fault(VOICES_PATH, Fault.rate_limited(retry_after=2))
    r4 = session.get(fake.url + VOICES_PATH, timeout=5)
    assert r4.status_code == 429 and r4.headers["Retry-After"] == "2"


@pytest.mark.parametrize("chunked", [True, False])
def test_truncate_fault_gives_short_body(session, fake, chunked):
    fake.chunked = chunked
    fake.chunk_bytes = 512
    fake.add_fault(SPEECH_PATH, Fault.truncated(1500))
    got = bytearray()
    with pytest.raises(requests.exceptions.RequestException):
        with speak_stream(session, fake, "long enough text for truncation") as r:
            for c in r.iter_content(256):
                got += c
    full = FakeCoze.pcm_for("long enough text for truncation", fake.default_voice_id)
    # (the client may discard the last partial read when it hits the early EOF)
    assert 0 < len(got) <= 1500 and bytes(got) == full[:len(got)]
    assert fake.speech_log[-1].completed is False and fake.speech_log[-1].bytes_sent == 1500
    # the session recovers on a fresh connection
    r = speak(session, fake, input="ok", response_format="pcm")
    assert r.content == FakeCoze.pcm_for("ok", fake.default_voice_id)


@pytest.mark.parametrize("chunked", [True, False])
def test_trickle_fault_sends_a_few_bytes_at_a_time(session, fake, chunked):
    fake.chunked = chunked
    fake.add_fault(SPEECH_PATH, Fault.trickle(2, 0.05))
    got = bytearray()
    with speak_stream(session, fake, "trickle") as r:
        for c in r.iter_content(None if chunked else 2):
            got += c
            if len(got) >= 6:
                break
    log = fake.speech_log[-1]
    assert bytes(got) == FakeCoze.pcm_for("trickle", fake.default_voice_id)[:len(got)]
    assert not log.completed and log.total_bytes > 6 * 1000  # still trickling when we left


def test_drop_and_hang(session, fake):
    fake.add_fault(SPEECH_PATH, Fault.dropped())
    with pytest.raises(requests.exceptions.ConnectionError):
        speak(session, fake, input="hi")
    fake.add_fault(SPEECH_PATH, Fault.hanging(30))
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        session.post(fake.url + SPEECH_PATH, json={"input": "hi", "voice_id": fake.default_voice_id},
                     timeout=0.2)
    assert time.monotonic() - t0 < 30
    assert len(fake.requests_to(SPEECH_PATH)) == 2 and fake.speech_log == []


def test_stop_wakes_hanging_request():
    fake = FakeCoze(n_voices=3).start()
    fake.add_fault(SPEECH_PATH, Fault.hanging(60))
    s = requests.Session()
    try:
        with pytest.raises(requests.exceptions.Timeout):
            s.post(fake.url + SPEECH_PATH, json={"input": "x"}, timeout=0.1)
    finally:
        t0 = time.monotonic()
        fake.stop()
        s.close()
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- voices


def test_voice_pagination_covers_all(session, fake):
    seen = []
    pages = 0
    page = 1
    while True:
        r = session.get(fake.url + VOICES_PATH, params={"page_num": page, "page_size": 100}, timeout=5)
        body = r.json()
        assert body["code"] == 0 and body["msg"] == "" and body["detail"]["logid"] == r.headers["X-Tt-Logid"]
        seen += body["data"]["voice_list"]
        pages += 1
        if not body["data"]["has_more"]:
            break
        page += 1
    assert pages == 3
    assert len(seen) == 250 and len({v["voice_id"] for v in seen}) == 250
    required = {"voice_id", "name", "state", "model_type", "create_time", "update_time", "preview_text",
                "language_code", "language_name", "preview_audio", "is_system_voice", "available_training_times"}
    assert all(required <= set(v) for v in seen)
    assert {v["model_type"] for v in seen} == {"big", "small"}
    assert {v["is_system_voice"] for v in seen} == {True, False}
    emo = [v for v in seen if v.get("support_emotions")]
    assert emo and set(emo[0]["support_emotions"][0]["emotion_scale_interval"]) == {"min", "max", "default"}


def test_voice_filters_and_validation(session, fake):
    url = fake.url + VOICES_PATH
    custom = session.get(url, params={"filter_system_voice": "true"}, timeout=5).json()["data"]["voice_list"]
    assert custom and not any(v["is_system_voice"] for v in custom)
    small = session.get(url, params={"model_type": "small", "voice_state": ""}, timeout=5).json()
    assert all(v["model_type"] == "small" for v in small["data"]["voice_list"])
    assert session.get(url, params={"voice_state": "init"}, timeout=5).json()["data"]["voice_list"] == []
    for bad in ({"page_size": 0}, {"page_size": 101}, {"page_num": 0}, {"page_num": "x"},
                {"model_type": "huge"}, {"voice_state": "done"}, {"filter_system_voice": "maybe"}):
        assert session.get(url, params=bad, timeout=5).json()["code"] == 4000, bad


# --------------------------------------------------------------------------- clone


def test_clone_multipart(session, fake):
    audio = FakeCoze.wav_for("sample", "x")
    r = session.post(fake.url + CLONE_PATH,
                     data={"voice_name": "开朗大男孩", "audio_format": "wav", "language": "zh", "text": "你好呀"},
                     files={"file": ("jay 录音.wav", io.BytesIO(audio), "audio/wav")}, timeout=5)
    body = r.json()
    assert body["code"] == 0, body
    new_id = body["data"]["voice_id"]
    assert body["detail"]["logid"] == r.headers["X-Tt-Logid"]
    clone = fake.clones[-1]
    assert clone["fields"]["voice_name"] == "开朗大男孩" and clone["filename"] == "jay 录音.wav"
    assert clone["file_size"] == len(audio) and clone["content_type"] == "audio/wav"
    rec = fake.requests_to(CLONE_PATH)[-1]
    assert rec.form["audio_format"] == "wav" and rec.files["file"][2] == audio
    voices = session.get(fake.url + VOICES_PATH, params={"filter_system_voice": "true", "page_size": 100,
                                                         "page_num": 1}, timeout=5).json()["data"]["voice_list"]
    mine = [v for v in voices if v["voice_id"] == new_id]
    assert mine and mine[0]["state"] == "cloned" and mine[0]["is_system_voice"] is False
    # the new voice can speak
    assert speak(session, fake, input="hi", voice_id=new_id, response_format="pcm").status_code == 200
    # retrain keeps the id and uses one training
    before = fake.get_voice(new_id)["available_training_times"]
    r = session.post(fake.url + CLONE_PATH, data={"voice_name": "v2", "audio_format": "mp3", "voice_id": new_id},
                     files={"file": ("a.mp3", b"ID3abc", "audio/mpeg")}, timeout=5)
    assert r.json()["data"]["voice_id"] == new_id
    assert fake.get_voice(new_id)["available_training_times"] == before - 1


@pytest.mark.parametrize("data, files, code", [
    ({"voice_name": "a", "audio_format": "wav"}, {"file": ("a.wav", b"", "audio/wav")}, 4300),
    ({"voice_name": "a", "audio_format": "wav"},
     [("file", ("a.wav", b"1", "audio/wav")), ("file", ("b.wav", b"2", "audio/wav"))], 4301),
    ({"voice_name": "a", "audio_format": "flac"}, {"file": ("a.flac", b"1", "audio/flac")}, 4303),
    ({"voice_name": "a" * 129, "audio_format": "wav"}, {"file": ("a.wav", b"1", "audio/wav")}, 4000),
    ({"audio_format": "wav"}, {"file": ("a.wav", b"1", "audio/wav")}, 4000),
    ({"voice_name": "a", "audio_format": "wav", "language": "de"}, {"file": ("a.wav", b"1", "audio/wav")}, 4000),
])
def test_clone_validation(session, fake, data, files, code):
    r = session.post(fake.url + CLONE_PATH, data=data, files=files, timeout=5)
    assert r.json()["code"] == code
    assert fake.clones == []


def test_clone_file_too_large(session, fake):
    big = b"\x01" * (10 * 1024 * 1024 + 1)
    r = session.post(fake.url + CLONE_PATH, data={"voice_name": "a", "audio_format": "pcm"},
                     files={"file": ("a.pcm", big, "application/octet-stream")}, timeout=10)
    assert r.json()["code"] == 4302
