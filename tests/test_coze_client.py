"""The Coze client over real HTTP against the fake server: streaming, errors, retries."""

from __future__ import annotations

import email.utils
import json
import threading
import time

import pytest

from conftest import TOKEN, VOICE
from fake_coze import FakeCoze, Fault

from coze_speaker.coze import CozeClient, CozeError, CozeValidationError, SpeechParams

SPEECH = "/v1/audio/speech"


def client_for(fake, **kwargs) -> CozeClient:
    kwargs.setdefault("retries", 3)
    kwargs.setdefault("backoff", 0.001)
    return CozeClient(kwargs.pop("token", TOKEN), fake.url, **kwargs)


def test_synthesize_streams_the_exact_pcm(fake_coze):
    fake_coze.chunk_bytes = 1001  # odd sized chunks: the client must still hand out whole frames
    with client_for(fake_coze) as client:
        chunks = list(client.synthesize("Dinner is ready", VOICE, sample_rate=24000))
    assert all(len(c) % 2 == 0 for c in chunks)
    assert len(chunks) > 1
    assert b"".join(chunks) == FakeCoze.pcm_for("Dinner is ready", VOICE, 24000)
    body = fake_coze.requests_to(SPEECH)[0].json
    assert body == {"input": "Dinner is ready", "voice_id": VOICE, "response_format": "pcm", "sample_rate": 24000}
    assert fake_coze.requests_to(SPEECH)[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_first_chunk_arrives_before_the_body_ends(fake_coze):
    fake_coze.chunk_bytes = 2048
    fake_coze.chunk_delay = 0.02
    text = "A long sentence that makes several chunks of audio. " * 3
    with client_for(fake_coze) as client:
        stream = iter(client.synthesize(text, VOICE, sample_rate=48000))
        first = next(stream)
        assert first
        log = fake_coze.speech_log[0]
        assert not log.completed  # the server is still sending
        rest = b"".join(stream)
    assert first + rest == FakeCoze.pcm_for(text, VOICE, 48000)


def test_all_optional_parameters_are_sent(fake_coze):
    with client_for(fake_coze) as client:
        audio = client.synthesize("hi", VOICE, sample_rate=16000, speed=1.5, emotion="happy",
                                  emotion_scale=3.0, loudness_rate=20, context_texts="whisper").read_all()
    body = fake_coze.requests_to(SPEECH)[0].json
    assert body["speed"] == 1.5 and body["emotion"] == "happy" and body["emotion_scale"] == 3.0
    assert body["loudness_rate"] == 20 and body["context_texts"] == "whisper"
    assert audio == FakeCoze.pcm_for("hi", VOICE, 16000, speed=1.5, emotion="happy", loudness_rate=20)


@pytest.mark.parametrize("kwargs, field", [
    ({"text": ""}, "input"),
    ({"text": "   "}, "input"),
    ({"text": "é" * 513}, "input"),
    ({"emotion": "joyful"}, "emotion"),
    ({"emotion_scale": 0.5}, "emotion_scale"),
    ({"emotion_scale": 5.5}, "emotion_scale"),
    ({"speed": 0.1}, "speed"),
    ({"speed": 3.5}, "speed"),
    ({"speed": True}, "speed"),
    ({"sample_rate": 44000}, "sample_rate"),
    ({"loudness_rate": -51}, "loudness_rate"),
    ({"loudness_rate": 101}, "loudness_rate"),
    ({"loudness_rate": 1.5}, "loudness_rate"),
    ({"response_format": "flac"}, "response_format"),
    ({"voice_id": ""}, "voice_id"),
])
def test_invalid_parameters_are_refused_before_any_request(fake_coze, kwargs, field):
    args = {"text": "hello", "voice_id": VOICE}
    args.update(kwargs)
    with client_for(fake_coze) as client:
        with pytest.raises(CozeValidationError) as info:
            list(client.synthesize(args.pop("text"), args.pop("voice_id"), **args))
    assert info.value.field == field
    assert field in str(info.value)
    assert fake_coze.requests == []


def test_1024_bytes_is_allowed():
    SpeechParams(VOICE).validate()
    from coze_speaker.coze import validate_input
    validate_input("é" * 512)


def test_wrong_token_is_one_request_with_code_msg_logid(fake_coze):
    with client_for(fake_coze, token="pat_wrong") as client:
        with pytest.raises(CozeError) as info:
            list(client.synthesize("hello", VOICE))
    err = info.value
    assert err.code == 4100 and err.status == 401 and err.logid
    assert "4100" in str(err) and err.logid in str(err) and err.msg in str(err)
    assert "pat_wrong" not in str(err) and "pat_wrong" not in repr(err)
    assert len(fake_coze.requests) == 1


@pytest.mark.parametrize("code", [4000, 4100, 4101, 4200, 4011, 4019, 4008])
def test_final_codes_are_not_retried(fake_coze, code):
    fake_coze.add_fault(SPEECH, Fault(code=code, msg=f"failure {code}"))
    with client_for(fake_coze) as client:
        with pytest.raises(CozeError) as info:
            list(client.synthesize("hello", VOICE))
    assert info.value.code == code and not info.value.retryable
    assert len(fake_coze.requests) == 1


def test_error_envelope_with_http_200_is_an_error(fake_coze):
    fake_coze.add_fault(SPEECH, Fault(code=4200, msg="voice not found", http_status=200))
    with client_for(fake_coze) as client:
        with pytest.raises(CozeError) as info:
            list(client.synthesize("hello", VOICE))
    assert info.value.status == 200 and info.value.code == 4200 and info.value.logid


@pytest.mark.parametrize("fault", [
    Fault(http_status=500), Fault(http_status=502), Fault(http_status=429),
    Fault(code=5000, msg="internal"), Fault(code=4009, msg="busy"), Fault(code=4020, msg="rpm"),
    Fault(drop=True),
])
def test_transient_failures_twice_then_success(fake_coze, fault):
    fake_coze.add_fault(SPEECH, fault)
    fake_coze.add_fault(SPEECH, fault)
    with client_for(fake_coze) as client:
        audio = client.synthesize("hello", VOICE).read_all()
    assert audio == FakeCoze.pcm_for("hello", VOICE, 24000)
    assert len(fake_coze.requests_to(SPEECH)) == 3


def test_retries_give_up_after_the_configured_count(fake_coze):
    for _ in range(5):
        fake_coze.add_fault(SPEECH, Fault(http_status=503))
    with client_for(fake_coze, retries=2) as client:
        with pytest.raises(CozeError) as info:
            list(client.synthesize("hello", VOICE))
    assert info.value.status == 503 and info.value.retryable
    assert len(fake_coze.requests_to(SPEECH)) == 3


def test_truncated_body_is_retried_and_never_returned_as_success(fake_coze):
    fake_coze.add_fault(SPEECH, Fault(truncate_after=3000))
    text = "The washing machine has finished. " * 4
    with client_for(fake_coze) as client:
        stream = client.synthesize(text, VOICE)
        audio = stream.read_all()
    assert audio == FakeCoze.pcm_for(text, VOICE, 24000)
    assert stream.complete and stream.resumed
    assert len(fake_coze.requests_to(SPEECH)) == 2


def test_truncated_body_without_retries_raises(fake_coze):
    fake_coze.add_fault(SPEECH, Fault(truncate_after=3000))
    text = "The washing machine has finished. " * 4
    with client_for(fake_coze, retries=0) as client:
        stream = client.synthesize(text, VOICE)
        got = []
        with pytest.raises(CozeError) as info:
            for chunk in stream:
                got.append(chunk)
    assert info.value.retryable and "3000" in str(info.value)
    assert not stream.complete


def test_truncated_chunked_body_is_detected(fake_coze):
    fake_coze.chunked = True
    fake_coze.add_fault(SPEECH, Fault(truncate_after=2000))
    with client_for(fake_coze, retries=0) as client:
        with pytest.raises(CozeError):
            client.synthesize("The washing machine has finished. " * 4, VOICE).read_all()


def test_a_hang_times_out_and_is_retried(fake_coze):
    fake_coze.add_fault(SPEECH, Fault(hang=5))
    with client_for(fake_coze, timeout=0.3) as client:
        audio = client.synthesize("hello", VOICE).read_all()
    assert audio == FakeCoze.pcm_for("hello", VOICE, 24000)
    assert len(fake_coze.requests_to(SPEECH)) == 2


def test_connection_refused_is_a_clear_error():
    with FakeCoze() as fake:
        url = fake.url
    client = CozeClient(TOKEN, url, retries=1, backoff=0.001)
    with pytest.raises(CozeError) as info:
        client.synthesize("hello", VOICE).read_all()
    assert "cannot reach 127.0.0.1" in str(info.value) and info.value.retryable


def test_missing_token_sends_nothing(fake_coze):
    with client_for(fake_coze, token=None) as client:
        with pytest.raises(CozeError) as info:
            client.synthesize("hello", VOICE)
    assert "token" in str(info.value)
    assert fake_coze.requests == []


def test_list_voices_pages_until_has_more_is_false(fake_coze):
    with client_for(fake_coze) as client:
        voices = list(client.list_voices(voice_state="all"))
    assert len(voices) == len(fake_coze.voices)
    assert len({v["voice_id"] for v in voices}) == len(voices)
    pages = fake_coze.requests_to("/v1/audio/voices")
    assert [r.query["page_num"] for r in pages] == ["1", "2", "3"]
    assert all(r.query["page_size"] == "100" for r in pages)


def test_list_voices_filters(fake_coze):
    with client_for(fake_coze) as client:
        custom = list(client.list_voices(filter_system_voice=True, model_type="big", voice_state="all"))
    assert custom and all(not v["is_system_voice"] and v["model_type"] == "big" for v in custom)
    query = fake_coze.requests_to("/v1/audio/voices")[0].query
    assert query["filter_system_voice"] == "true" and query["model_type"] == "big"


def test_list_voices_retries_a_5xx(fake_coze):
    fake_coze.add_fault("/v1/audio/voices", Fault(http_status=500))
    with client_for(fake_coze) as client:
        assert len(list(client.list_voices(voice_state="all"))) == len(fake_coze.voices)


def test_clone_sends_multipart_and_returns_the_voice_id(fake_coze, tmp_path):
    sample = tmp_path / "sample.wav"
    sample.write_bytes(b"RIFF" + b"\x01" * 5000)
    with client_for(fake_coze) as client:
        voice_id = client.clone_voice(sample, "Grandma", language="en", text="hello there",
                                      preview_text="hi", space_id="42")
    assert voice_id
    (req,) = fake_coze.requests_to("/v1/audio/voices/clone")
    assert req.form["voice_name"] == "Grandma" and req.form["audio_format"] == "wav"
    assert req.form["language"] == "en" and req.form["text"] == "hello there"
    assert req.form["preview_text"] == "hi" and req.form["space_id"] == "42"
    filename, _, data = req.files["file"]
    assert filename == "sample.wav" and data == sample.read_bytes()


def test_clone_is_never_retried(fake_coze, tmp_path):
    sample = tmp_path / "sample.mp3"
    sample.write_bytes(b"\xff\xfb" * 1000)
    fake_coze.add_fault("/v1/audio/voices/clone", Fault(http_status=500))
    with client_for(fake_coze) as client:
        with pytest.raises(CozeError):
            client.clone_voice(sample, "X")
    assert len(fake_coze.requests) == 1


@pytest.mark.parametrize("name, size, kwargs, field", [
    ("big.wav", 12 * 1024 * 1024, {}, "file"),
    ("voice.flac", 1000, {}, "audio_format"),
    ("empty.wav", 0, {}, "file"),
    ("ok.wav", 1000, {"name": "n" * 129}, "voice_name"),
    ("ok.wav", 1000, {"language": "fr"}, "language"),
    ("ok.wav", 1000, {"text": "t" * 1025}, "text"),
])
def test_clone_refuses_locally(fake_coze, tmp_path, name, size, kwargs, field):
    sample = tmp_path / name
    with open(sample, "wb") as fh:
        fh.truncate(size)
    voice_name = kwargs.pop("name", "X")
    with client_for(fake_coze) as client:
        with pytest.raises(CozeValidationError) as info:
            client.clone_voice(sample, voice_name, **kwargs)
    assert info.value.field == field
    assert fake_coze.requests == []


def test_clone_missing_file(fake_coze, tmp_path):
    with client_for(fake_coze) as client:
        with pytest.raises(CozeValidationError) as info:
            client.clone_voice(tmp_path / "nope.wav", "X")
    assert "does not exist" in str(info.value)


# -- what counts as audio ----------------------------------------------------------------------

HTML_PAGE = ("<!DOCTYPE html>\n<html><head><title>Portal</title></head>"
             "<body><h1>Please sign in to the hotel Wi-Fi</h1></body></html>\n")
HTML_PAGE += " " * (len(HTML_PAGE) % 2)  # even length: it would pass for 16-bit pcm


def envelope(code, msg, logid="20250101000000LOGIDINBODY"):
    body = json.dumps({"code": code, "msg": msg, "detail": {"logid": logid}})
    return body + " " * (len(body) % 2)


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "audio/pcm", "application/octet-stream"])
def test_an_html_page_is_an_error_not_audio(fake_coze, content_type):
    fake_coze.add_fault(SPEECH, Fault(http_status=200, body=HTML_PAGE, content_type=content_type))
    with client_for(fake_coze) as client:
        with pytest.raises(CozeError) as info:
            client.synthesize("hello", VOICE).read_all()
    err = info.value
    assert err.status == 200 and not err.retryable and "hotel Wi-Fi" in str(err)
    assert err.logid == fake_coze.requests_to(SPEECH)[0].logid  # from the X-Tt-Logid header
    assert len(fake_coze.requests_to(SPEECH)) == 1  # a portal does not go away in a second


@pytest.mark.parametrize("content_type", ["text/plain", "audio/pcm", "text/html"])
def test_a_json_error_under_another_label_carries_its_code_and_logid(fake_coze, content_type):
    fake_coze.add_fault(SPEECH, Fault(http_status=200, body=envelope(4200, "voice not found"),
                                      content_type=content_type))
    with client_for(fake_coze) as client:
        with pytest.raises(CozeError) as info:
            client.synthesize("hello", VOICE).read_all()
    err = info.value
    assert err.code == 4200 and err.logid == "20250101000000LOGIDINBODY" and "voice not found" in str(err)
    assert len(fake_coze.requests_to(SPEECH)) == 1  # 4200 is final


def test_a_retryable_json_error_labelled_text_is_retried(fake_coze):
    fake_coze.add_fault(SPEECH, Fault(http_status=200, body=envelope(5000, "internal"), content_type="text/plain"))
    with client_for(fake_coze) as client:
        stream = client.synthesize("hello", VOICE)
        assert stream.read_all() == FakeCoze.pcm_for("hello", VOICE, 24000)
    assert len(fake_coze.requests_to(SPEECH)) == 2 and not stream.resumed


def test_audio_that_starts_with_a_brace_is_still_audio(fake_coze):
    """`{"` is also a 16-bit sample; only a text opening (64 printable bytes) makes a document."""
    body = b'{"' + bytes(range(256)) * 4
    fake_coze.add_fault(SPEECH, Fault(http_status=200, body=body, content_type="audio/pcm"))
    with client_for(fake_coze) as client:
        assert client.synthesize("hello", VOICE).read_all() == body


@pytest.mark.parametrize("head, document", [
    (b'{"code": 4000, "msg": "bad"}', True),
    (b'\xef\xbb\xbf  {"code": 4000}', True),
    (b"[1, 2, 3]", True),
    (b"<html><body>502</body></html>", True),
    (b"<?xml version='1.0'?><Error/>", True),
    (b'{"' + b"\x00\x10" * 40, False),
    (b"<\x00\x10\x00" * 20, False),
    (b"\x00\x00\x01\x00" * 20, False),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", False),
    (b"", False),
])
def test_what_looks_like_a_document(head, document):
    from coze_speaker.coze.responses import looks_like_document
    assert looks_like_document(head) is document


# -- Retry-After ---------------------------------------------------------------------------------

def test_retry_after_in_seconds_is_waited_for(fake_coze):
    fake_coze.add_fault(SPEECH, Fault.rate_limited(retry_after=5))
    waits = []
    with client_for(fake_coze, sleep=waits.append) as client:
        assert client.synthesize("hello", VOICE).read_all() == FakeCoze.pcm_for("hello", VOICE, 24000)
    assert waits == [5.0] and len(fake_coze.requests_to(SPEECH)) == 2


def test_retry_after_as_an_http_date_is_waited_for(fake_coze):
    when = email.utils.formatdate(time.time() + 8, usegmt=True)
    fake_coze.add_fault(SPEECH, Fault.http_error(503, headers={"Retry-After": when}))
    waits = []
    with client_for(fake_coze, sleep=waits.append) as client:
        client.synthesize("hello", VOICE).read_all()
    assert len(waits) == 1 and 5 < waits[0] <= 8  # whole seconds in the date, and the request took a moment


@pytest.mark.parametrize("retry_after, left", [(3600, None), (5, 2.0)])
def test_a_retry_after_too_long_or_past_the_deadline_fails_now(fake_coze, retry_after, left):
    fake_coze.add_fault(SPEECH, Fault.rate_limited(retry_after=retry_after))
    waits = []
    with client_for(fake_coze, sleep=waits.append) as client:
        with pytest.raises(CozeError) as info:
            client.speech("hello", SpeechParams(VOICE), remaining=lambda: left).read_all()
    assert info.value.code == "rate_limited" and not info.value.retryable
    assert f"wait {retry_after} s" in str(info.value) and info.value.status == 429
    assert waits == [] and len(fake_coze.requests_to(SPEECH)) == 1


def test_no_retry_is_waited_for_past_the_deadline(fake_coze):
    fake_coze.add_fault(SPEECH, Fault(http_status=502))
    waits = []
    with client_for(fake_coze, sleep=waits.append, backoff=4) as client:
        with pytest.raises(CozeError) as info:
            client.speech("hello", SpeechParams(VOICE), remaining=lambda: 1.0).read_all()
    assert info.value.status == 502 and waits == [] and len(fake_coze.requests_to(SPEECH)) == 1


def test_nothing_is_sent_past_the_deadline(fake_coze):
    with client_for(fake_coze) as client:
        with pytest.raises(CozeError) as info:
            client.speech("hello", SpeechParams(VOICE), remaining=lambda: -0.5).read_all()
    assert info.value.code == "timeout" and fake_coze.requests == []


# -- every request is seen before it is sent -----------------------------------------------------

def test_the_hook_runs_before_every_request_and_can_refuse_one(fake_coze):
    fake_coze.add_faults(SPEECH, Fault(http_status=500), Fault(http_status=500), Fault(http_status=500))
    seen = []

    def before_request():
        seen.append(len(fake_coze.requests_to(SPEECH)))
        if len(seen) == 3:
            raise CozeError("cap reached", code="rate_limited")

    with client_for(fake_coze) as client:
        stream = client.speech("hello", SpeechParams(VOICE), before_request=before_request)
        with pytest.raises(CozeError) as info:
            stream.read_all()
    assert info.value.code == "rate_limited"
    assert seen == [0, 1, 2]  # called before each request went out, the third one never did
    assert stream.requests == 2 and len(fake_coze.requests_to(SPEECH)) == 2


# -- a trickling answer ---------------------------------------------------------------------------

def read_in_thread(stream, limit=20.0):
    """Read a stream in a thread, waiting at most `limit` s: (audio, error) or a clear failure."""
    out = {}

    def run():
        try:
            out["audio"] = stream.read_all()
        except CozeError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the stream still held the reader after {limit} s"
    return out.get("audio"), out.get("error")


@pytest.mark.parametrize("chunked", [True, False])
def test_a_trickling_answer_is_cut_off_and_retried(fake_coze, chunked):
    fake_coze.chunked = chunked  # Content-Length: one read blocks until 8 KB came, 2 bytes at a time
    fake_coze.add_fault(SPEECH, Fault.trickle(2, 0.05))
    with client_for(fake_coze, first_audio_timeout=0.5) as client:
        audio, error = read_in_thread(client.synthesize("hello", VOICE))
    assert error is None and audio == FakeCoze.pcm_for("hello", VOICE, 24000)
    assert len(fake_coze.requests_to(SPEECH)) == 2


def test_a_trickle_that_never_ends_is_a_retryable_timeout(fake_coze):
    fake_coze.add_faults(SPEECH, Fault.trickle(2, 0.05), Fault.trickle(2, 0.05))
    with client_for(fake_coze, first_audio_timeout=0.5, retries=1) as client:
        audio, error = read_in_thread(client.synthesize("hello", VOICE))
    assert audio is None and error.code == "timeout" and error.retryable
    assert "0.5 s" in str(error) and len(fake_coze.requests_to(SPEECH)) == 2


def test_audio_slower_than_half_real_time_is_cut_off(fake_coze):
    fake_coze.chunk_bytes = 4800  # 0.1 s of audio every 0.5 s: a fifth of real time
    fake_coze.chunk_delay = 0.5
    text = "A long enough sentence to take several seconds at that pace."
    with client_for(fake_coze, first_audio_timeout=0.5, retries=0) as client:
        stream = client.synthesize(text, VOICE)
        audio, error = read_in_thread(stream)
    assert error.code == "timeout" and "real time" in str(error)


def test_a_slow_consumer_or_real_time_audio_is_not_cut_off(fake_coze):
    fake_coze.chunk_bytes = 2400  # real time: 50 ms of audio every 50 ms
    fake_coze.chunk_delay = 0.05
    text = "Audio that arrives at real time and a reader that pauses."
    with client_for(fake_coze, first_audio_timeout=1.5, retries=0) as client:  # roomy: a loaded machine
        got = bytearray()
        for n, chunk in enumerate(client.synthesize(text, VOICE)):
            got += chunk
            if n == 1:
                time.sleep(3.0)  # the player is busy: the reader's time is not Coze's
    assert bytes(got) == FakeCoze.pcm_for(text, VOICE, 24000)
    assert len(fake_coze.requests_to(SPEECH)) == 1


def test_no_first_audio_is_waited_for_past_the_deadline(fake_coze):
    fake_coze.add_faults(SPEECH, Fault.trickle(2, 0.05))
    deadline = time.monotonic() + 0.5
    with client_for(fake_coze, first_audio_timeout=30) as client:
        stream = client.speech("hello", SpeechParams(VOICE), remaining=lambda: deadline - time.monotonic())
        audio, error = read_in_thread(stream)
    assert error.code == "timeout" and not error.retryable and "expired" in str(error)
    assert len(fake_coze.requests_to(SPEECH)) == 1
