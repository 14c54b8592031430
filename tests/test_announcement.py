"""Say payload parsing: every field checked, every error names its field, nothing crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coze_speaker.queue.announcement import Announcement, PayloadError, parse_say


def test_plain_text_is_trimmed():
    ann = parse_say(b"  Dinner is ready \n")
    assert ann.text == "Dinner is ready" and ann.priority == "normal" and ann.cache and ann.repeat == 1


def test_json_with_every_field():
    payload = {"text": "Door open", "id": "d1", "voice": "v1", "emotion": "happy", "emotion_scale": 2,
               "speed": 1.5, "loudness": 10, "context": "whisper", "volume": 40, "priority": "high",
               "interrupt": True, "chime": "doorbell", "ttl": 30, "cache": False, "repeat": 2}
    ann = parse_say(json.dumps(payload).encode())
    assert (ann.text, ann.id, ann.voice, ann.emotion, ann.emotion_scale, ann.speed) == \
        ("Door open", "d1", "v1", "happy", 2.0, 1.5)
    assert (ann.loudness, ann.context, ann.volume, ann.priority, ann.interrupt, ann.chime, ann.ttl,
            ann.cache, ann.repeat) == (10, "whisper", 40, "high", True, "doorbell", 30.0, False, 2)
    assert ann.urgent


def test_a_json_string_is_spoken_without_quotes():
    assert parse_say(b'"Dinner \\"now\\""').text == 'Dinner "now"'
    assert parse_say(b'"unterminated').text == '"unterminated'


def test_ids_are_generated_and_unique():
    assert parse_say(b"a").id != parse_say(b"a").id


@pytest.mark.parametrize("payload, field", [
    (b"\xff\xfe", "payload"),
    (b"{broken", "payload"),
    (b"[1,2]", "payload"),
    (b'{"text": 5}', "text"),
    (b'{"text": "  "}', "text"),
    (b'{"id": "x"}', "text"),
    (b'{"text": "hi", "volume": 101}', "volume"),
    (b'{"text": "hi", "volume": 50.5}', "volume"),
    (b'{"text": "hi", "volume": true}', "volume"),
    (b'{"text": "hi", "speed": 4}', "speed"),
    (b'{"text": "hi", "emotion": "joy"}', "emotion"),
    (b'{"text": "hi", "emotion_scale": 0}', "emotion_scale"),
    (b'{"text": "hi", "loudness": -60}', "loudness"),
    (b'{"text": "hi", "priority": "max"}', "priority"),
    (b'{"text": "hi", "interrupt": 1}', "interrupt"),
    (b'{"text": "hi", "chime": "../x"}', "chime"),
    (b'{"text": "hi", "chime": 3}', "chime"),
    (b'{"text": "hi", "ttl": 0}', "ttl"),
    (b'{"text": "hi", "ttl": NaN}', "ttl"),
    (b'{"text": "hi", "cache": "no"}', "cache"),
    (b'{"text": "hi", "repeat": 6}', "repeat"),
    (b'{"text": "hi", "id": {"a": 1}}', "id"),
    (b'{"text": "hi", "voice": ""}', "voice"),
    (b'{"text": "hi", "colour": "red"}', "colour"),
    (b'{"text": "a\\u0000b"}', "text"),
    (b"[" * 100 + b"]" * 100, "payload"),
])
def test_invalid_payloads_name_the_field(payload, field):
    with pytest.raises(PayloadError) as info:
        parse_say(payload)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_text_limit_in_bytes():
    parse_say(("é" * 50).encode(), max_text_bytes=100)
    with pytest.raises(PayloadError) as info:
        parse_say(("é" * 51).encode(), max_text_bytes=100)
    assert "limits.max_text_bytes" in str(info.value)


def test_huge_payload_is_refused_before_decoding():
    with pytest.raises(PayloadError) as info:
        parse_say(b"a" * (10 * 1024 * 1024))
    assert info.value.field == "payload"


def test_error_keeps_the_id_for_the_event():
    with pytest.raises(PayloadError) as info:
        parse_say(b'{"text": "hi", "id": "abc", "volume": 900}')
    assert info.value.announcement_id == "abc"


def test_null_fields_mean_default():
    ann = parse_say(b'{"text": "hi", "voice": null, "volume": null}')
    assert ann.voice is None and ann.volume is None


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.dictionaries(st.sampled_from(["text", "id", "voice", "emotion", "speed", "volume", "priority",
                                     "interrupt", "chime", "ttl", "cache", "repeat", "loudness", "x"]),
                    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                 max_leaves=8)).map(lambda d: json.dumps(d).encode()),
))
def test_fuzz_parser_never_crashes(payload):
    try:
        ann = parse_say(payload)
    except PayloadError as exc:
        assert exc.field
        return
    assert isinstance(ann, Announcement) and ann.text.strip()
