"""The command line against the fake Coze: voices, clone, say --output, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave

import pytest

from conftest import TOKEN, VOICE
from fake_coze import FakeCoze, Fault

from coze_speaker.cli import main

SPEECH = "/v1/audio/speech"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_voices_json_lists_every_voice_across_pages(capsys, make_config, fake_coze):
    code, out, err = run(capsys, "-c", make_config(), "voices", "--json", "--state", "all")
    assert code == 0, err
    voices = json.loads(out)
    assert len(voices) == len(fake_coze.voices) >= 201
    assert len(fake_coze.requests_to("/v1/audio/voices")) >= 3


def test_voices_table_shows_names_and_ids(capsys, make_config, fake_coze):
    code, out, _ = run(capsys, "-c", make_config(), "voices", "--state", "all")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "VOICE_ID"]
    for voice in fake_coze.voices[:5] + fake_coze.voices[-5:]:
        assert any(voice["voice_id"] in line and voice["name"][:40] in line for line in lines)
    assert lines[-1] == f"{len(fake_coze.voices)} voice(s)"


def test_clone_prints_the_voice_id(capsys, make_config, fake_coze, tmp_path):
    sample = tmp_path / "sample.wav"
    sample.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    code, out, err = run(capsys, "-c", make_config(), "clone", sample, "--name", "X", "--language", "en")
    assert code == 0, err
    (req,) = fake_coze.requests_to("/v1/audio/voices/clone")
    assert req.form == {"voice_name": "X", "audio_format": "wav", "language": "en"}
    assert out.strip() == fake_coze.clones[-1]["voice_id"]
    assert out.strip() in fake_coze.voice_ids()


@pytest.mark.parametrize("name, size", [("big.wav", 12 * 1024 * 1024), ("voice.flac", 2000)])
def test_clone_refuses_bad_files_locally(capsys, make_config, fake_coze, tmp_path, name, size):
    sample = tmp_path / name
    with open(sample, "wb") as fh:
        fh.truncate(size)
    code, out, err = run(capsys, "-c", make_config(), "clone", sample, "--name", "X")
    assert code == 1
    assert err.startswith("coze-speaker: error: ") and len(err.strip().splitlines()) == 1
    assert ("10 MB" in err) if size > 1e6 else ("flac" in err)
    assert fake_coze.requests == []


def read_wav(path):
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), wav.readframes(wav.getnframes())


def test_say_output_writes_the_servers_pcm(capsys, make_config, fake_coze, tmp_path):
    out_wav = tmp_path / "out.wav"
    config = make_config(audio={"sample_rate": 16000})
    code, out, err = run(capsys, "-c", config, "say", "--output", out_wav, "Dinner is ready")
    assert code == 0, err
    rate, frames = read_wav(out_wav)
    assert rate == 16000
    assert frames == FakeCoze.pcm_for("Dinner is ready", VOICE, 16000)


def test_say_splits_long_text_into_one_continuous_wav(capsys, make_config, fake_coze, tmp_path):
    text = "".join(f"Sentence number {n} tells the quick brown fox to jump over the lazy dog. "
                   for n in range(60))[:3000]
    out_wav = tmp_path / "long.wav"
    code, _, err = run(capsys, "-c", make_config(), "say", "-o", out_wav, text)
    assert code == 0, err
    requests = fake_coze.requests_to(SPEECH)
    assert len(requests) >= 3
    pieces = [r.json["input"] for r in requests]
    assert all(len(p.encode()) <= 1024 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    _, frames = read_wav(out_wav)
    assert frames == b"".join(FakeCoze.pcm_for(p, VOICE, 24000) for p in pieces)


def test_say_options_reach_the_request(capsys, make_config, fake_coze, tmp_path):
    code, _, err = run(capsys, "-c", make_config(), "say", "-o", tmp_path / "o.wav",
                       "--voice", fake_coze.voices[1]["voice_id"], "--emotion", "sad", "--speed", "1.25", "hi")
    assert code == 0, err
    body = fake_coze.requests_to(SPEECH)[0].json
    assert body["voice_id"] == fake_coze.voices[1]["voice_id"]
    assert body["emotion"] == "sad" and body["speed"] == 1.25


def test_say_with_a_bad_speed_names_the_field_and_sends_nothing(capsys, make_config, fake_coze, tmp_path):
    code, _, err = run(capsys, "-c", make_config(), "say", "-o", tmp_path / "o.wav", "--speed", "9", "hi")
    assert code == 1 and "speed" in err
    assert fake_coze.requests == []


def test_say_without_a_voice_says_how_to_find_one(capsys, make_config, fake_coze, tmp_path):
    config = make_config(coze={"voice_id": None}, fallback={"engine": "none"})  # (auto: the offline voice speaks)
    code, _, err = run(capsys, "-c", config, "say", "-o", tmp_path / "o.wav", "hi")
    assert code == 1 and "voice" in err and "coze-speaker voices" in err
    assert fake_coze.requests == []


def test_failed_say_leaves_no_file(capsys, make_config, fake_coze, tmp_path):
    fake_coze.add_fault(SPEECH, Fault(code=4011, msg="balance insufficient"))
    out_wav = tmp_path / "o.wav"
    code, _, err = run(capsys, "-c", make_config(), "say", "-o", out_wav, "hi")
    assert code == 1 and "4011" in err
    assert list(tmp_path.glob("*o.wav*")) == []


def test_wrong_token_one_line_exit_1_no_traceback_no_token(make_config, fake_coze, tmp_path):
    """Run as a real process: what a user sees on the terminal."""
    secret = "pat_this_is_wrong_and_secret"
    config = make_config(coze={"token": "${COZE_API_TOKEN}"})
    env = dict(os.environ, COZE_API_TOKEN=secret)
    for argv in (["voices"], ["say", "-o", str(tmp_path / "x.wav"), "hello"]):
        proc = subprocess.run([sys.executable, "-m", "coze_speaker", "-c", str(config), *argv],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "4100" in lines[0] and "logid" in lines[0] and "authentication" in lines[0]
        assert "Traceback" not in proc.stderr and secret not in proc.stderr
    assert len(fake_coze.requests) == 2  # one per command: 4100 is never retried


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["say"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("coze-speaker ")


def test_bad_config_is_one_clear_error(capsys, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("audio:\n  sample_rate: 44000\n")
    code, _, err = run(capsys, "-c", path, "voices")
    assert code == 1
    assert "audio.sample_rate: 44000 is not one of" in err and ":2:" in err


def test_journal_formatter_prefixes_priorities():
    import logging

    from coze_speaker.cli import JournalFormatter

    fmt = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("coze_speaker.x", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert fmt.format(record) == "<4>coze_speaker.x: two\n<4>lines"
