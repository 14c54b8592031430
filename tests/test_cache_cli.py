"""`coze-speaker cache stats|clear|prune|verify|warm` and `devices`, in-process against the fake Coze.

Phrases go into the cache with `say --output` (no audio device needed): it reads and writes
the phrase cache exactly like playback does.
"""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from conftest import VOICE
from fake_coze import FakeCoze

from coze_speaker.cache import ENTRY_HEADER_SIZE
from coze_speaker.cli import main

SPEECH = "/v1/audio/speech"
RATE = 24000
HEADER = ENTRY_HEADER_SIZE


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def speech_count(fake) -> int:
    return len(fake.requests_to(SPEECH))


def say(capsys, config, text, tmp_path, *options):
    code, out, err = run(capsys, "-c", config, "say", "-o", tmp_path / "out.wav", *options, text)
    assert code == 0, err
    return out


def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"  # where make_config puts it


def entries(tmp_path) -> list:
    return sorted(cache_dir(tmp_path).glob("*/*.wav"))


def stats(capsys, config) -> dict:
    code, out, err = run(capsys, "-c", config, "cache", "stats")
    assert code == 0, err
    lines = {}
    for line in out.splitlines():
        name, _, value = line.partition(" ")
        lines[name] = value.strip()
    return lines


def entry_size(text: str) -> int:
    return HEADER + len(FakeCoze.pcm_for(text, VOICE, RATE))


# ----------------------------------------------------------------------------- stats


def test_stats_of_an_empty_cache(capsys, make_config):
    s = stats(capsys, make_config())
    assert s["directory"] == str(Path(s["directory"]))
    assert s["entries"] == "0"
    assert s["size"].startswith("0 B of 200.0 MB")
    assert s["hits"] == "0" and s["misses"] == "0"
    assert s["oldest"] == "-" and s["newest"] == "-"


def test_stats_counts_entries_size_hits_and_misses(capsys, make_config, fake_coze, tmp_path):
    config = make_config()
    say(capsys, config, "Dinner is ready", tmp_path)   # miss, stored
    say(capsys, config, "Dinner is ready", tmp_path)   # hit
    say(capsys, config, "The mail is here", tmp_path)  # miss, stored
    assert speech_count(fake_coze) == 2
    s = stats(capsys, config)
    assert s["directory"] == str(cache_dir(tmp_path))
    assert s["entries"] == "2"
    total = entry_size("Dinner is ready") + entry_size("The mail is here")
    assert s["size"] == f"{total / 1024:.1f} KB of 200.0 MB"
    assert s["hits"] == "1 (33% of 3 lookups)"
    assert s["misses"] == "2"
    for name in ("oldest", "newest"):
        assert s[name] != "-" and len(s[name]) == len("2024-01-01 00:00:00"), s[name]
    assert s["oldest"] <= s["newest"]


# ----------------------------------------------------------------------------- clear


def test_clear_removes_every_phrase_and_the_next_say_synthesizes_again(capsys, make_config, fake_coze, tmp_path):
    config = make_config()
    for text in ("One", "Two", "Three"):
        say(capsys, config, text, tmp_path)
    assert len(entries(tmp_path)) == 3
    code, out, err = run(capsys, "-c", config, "cache", "clear")
    assert code == 0, err
    assert out.strip() == "removed 3 cached phrase(s)"
    assert entries(tmp_path) == []
    assert stats(capsys, config)["entries"] == "0"
    before = speech_count(fake_coze)
    say(capsys, config, "Two", tmp_path)
    assert speech_count(fake_coze) == before + 1

    code, out, _ = run(capsys, "-c", config, "cache", "clear")
    assert code == 0 and out.strip() == "removed 1 cached phrase(s)"


# ----------------------------------------------------------------------------- prune


def test_prune_evicts_the_least_recently_used(capsys, make_config, fake_coze, tmp_path):
    a, b, c = "Alpha is at home", "Bravo is at home", "Charl is at home"  # same length: same size
    size = entry_size(a)
    assert entry_size(b) == entry_size(c) == size
    config = make_config()
    for text in (a, b, c):
        say(capsys, config, text, tmp_path)
    say(capsys, config, a, tmp_path)  # a hit: A is now the most recently used
    assert speech_count(fake_coze) == 3

    # Nothing to evict at the configured size.
    code, out, err = run(capsys, "-c", config, "cache", "prune")
    assert code == 0, err
    assert out.strip() == "removed 0 entries, freed 0 B"

    small = make_config(cache={"max_size_mb": size * 2.5 / (1024 * 1024)})  # fits 2 entries, not 3
    code, out, err = run(capsys, "-c", small, "cache", "prune")
    assert code == 0, err
    assert out.strip() == f"removed 1 entry, freed {size / 1024:.1f} KB"
    assert len(entries(tmp_path)) == 2
    assert stats(capsys, small)["entries"] == "2"

    before = speech_count(fake_coze)
    say(capsys, small, a, tmp_path)
    say(capsys, small, c, tmp_path)
    assert speech_count(fake_coze) == before, "A and C must still be cached"
    say(capsys, small, b, tmp_path)
    assert speech_count(fake_coze) == before + 1, "B was evicted"
    assert fake_coze.requests_to(SPEECH)[-1].json["input"] == b


# ----------------------------------------------------------------------------- verify


def test_verify_removes_a_truncated_entry(capsys, make_config, fake_coze, tmp_path):
    config = make_config()
    texts = ("First phrase", "Second phrase", "Third phrase")
    for text in texts:
        say(capsys, config, text, tmp_path)
    code, out, err = run(capsys, "-c", config, "cache", "verify")
    assert code == 0, err
    assert out.strip() == "checked 3 entries, removed 0 broken"

    victim = entries(tmp_path)[1]
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size // 2)
    code, out, err = run(capsys, "-c", config, "cache", "verify")
    assert code == 0, err
    assert out.strip() == "checked 3 entries, removed 1 broken"
    assert not victim.exists()
    assert len(entries(tmp_path)) == 2
    assert stats(capsys, config)["entries"] == "2"
    for path in entries(tmp_path):  # what is left is intact
        with wave.open(str(path), "rb") as wav:
            assert HEADER + 2 * wav.getnframes() == path.stat().st_size

    # the broken phrase is synthesized again, the others are still hits
    before = speech_count(fake_coze)
    for text in texts:
        say(capsys, config, text, tmp_path)
    assert speech_count(fake_coze) == before + 1
    code, out, _ = run(capsys, "-c", config, "cache", "verify")
    assert out.strip() == "checked 3 entries, removed 0 broken"


# ----------------------------------------------------------------------------- warm


def test_warm_a_text_file_then_skip_what_is_cached(capsys, make_config, fake_coze, tmp_path):
    config = make_config()
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("Good morning\n   The washing machine is done  \n\n# a comment, not a phrase\nBedtime\n")
    code, out, err = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 0, err
    assert out.strip() == "3 phrase(s): 3 synthesized (3 API call(s)), 0 already cached"
    assert [r.json["input"] for r in fake_coze.requests_to(SPEECH)] == [
        "Good morning", "The washing machine is done", "Bedtime"]
    assert len(entries(tmp_path)) == 3

    code, out, err = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 0, err
    assert out.strip() == "3 phrase(s): 0 synthesized (0 API call(s)), 3 already cached"
    assert speech_count(fake_coze) == 3

    # warmed phrases are what `say` plays: no request
    say(capsys, config, "The washing machine is done", tmp_path)
    assert speech_count(fake_coze) == 3
    with wave.open(str(tmp_path / "out.wav"), "rb") as wav:
        assert wav.readframes(wav.getnframes()) == FakeCoze.pcm_for("The washing machine is done", VOICE, RATE)


def test_warm_a_yaml_list_with_per_phrase_voice_emotion_speed(capsys, make_config, fake_coze, tmp_path):
    config = make_config()
    other = fake_coze.voices[1]["voice_id"]
    assert other != VOICE
    phrases = tmp_path / "phrases.yaml"
    phrases.write_text(
        "# phrases for the doorbell\n"
        "- Someone is at the door\n"
        f"- {{text: Bonjour tout le monde, voice: {other}, emotion: happy, speed: 1.25}}\n"
        "- text: The car is washed\n"
        "  speed: 0.8\n"
    )
    code, out, err = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 0, err
    assert out.strip() == "3 phrase(s): 3 synthesized (3 API call(s)), 0 already cached"
    bodies = [r.json for r in fake_coze.requests_to(SPEECH)]
    assert [b["input"] for b in bodies] == ["Someone is at the door", "Bonjour tout le monde", "The car is washed"]
    assert bodies[0]["voice_id"] == VOICE and bodies[0].get("emotion") is None
    assert (bodies[1]["voice_id"], bodies[1]["emotion"], bodies[1]["speed"]) == (other, "happy", 1.25)
    assert (bodies[2]["voice_id"], bodies[2]["speed"]) == (VOICE, 0.8)

    code, out, err = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 0, err
    assert out.strip() == "3 phrase(s): 0 synthesized (0 API call(s)), 3 already cached"
    assert speech_count(fake_coze) == 3

    # the per-phrase parameters are part of the key: `say` with the same options is a hit
    say(capsys, config, "Bonjour tout le monde", tmp_path, "--voice", other, "--emotion", "happy", "--speed", "1.25")
    assert speech_count(fake_coze) == 3
    with wave.open(str(tmp_path / "out.wav"), "rb") as wav:
        assert wav.readframes(wav.getnframes()) == FakeCoze.pcm_for(
            "Bonjour tout le monde", other, RATE, speed=1.25, emotion="happy")
    # ... and without them it is another phrase
    say(capsys, config, "Bonjour tout le monde", tmp_path)
    assert speech_count(fake_coze) == 4


def test_warm_respects_the_request_cap(capsys, make_config, fake_coze, tmp_path):
    config = make_config(limits={"max_requests_per_hour": 1})
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("First thing\nSecond thing\n")
    code, out, err = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 1
    assert speech_count(fake_coze) == 1
    lines = out.strip().splitlines()
    assert lines[0] == "2 phrase(s): 1 synthesized (1 API call(s)), 0 already cached, 1 failed:"
    assert len(lines) == 2
    assert lines[1].startswith("  'Second thing': Coze request cap reached: 1 per hour "
                               "(limits.max_requests_per_hour)")
    assert "Traceback" not in err
    assert len(entries(tmp_path)) == 1

    # the cap outlives the run: a new one within the hour sends nothing
    code, out, _ = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 1 and speech_count(fake_coze) == 1
    assert out.startswith("2 phrase(s): 0 synthesized (0 API call(s)), 1 already cached, 1 failed:")

    # with room under a higher cap, a new run skips the cached phrase and tries the other one again
    config = make_config(limits={"max_requests_per_hour": 2})
    code, out, _ = run(capsys, "-c", config, "cache", "warm", phrases)
    assert code == 0
    assert out.strip() == "2 phrase(s): 1 synthesized (1 API call(s)), 1 already cached"
    assert speech_count(fake_coze) == 2


@pytest.mark.parametrize("content, message", [
    ("- {text: hi, volume: 3}\n", "unknown key 'volume'"),
    ("- [1, 2]\n", "expected a string or a mapping with text"),
    ("- 'unterminated\n", "not valid YAML"),
])
def test_warm_with_a_bad_yaml_file_is_one_clear_error(capsys, make_config, fake_coze, tmp_path, content, message):
    phrases = tmp_path / "bad.yaml"
    phrases.write_text(content)
    code, out, err = run(capsys, "-c", make_config(), "cache", "warm", phrases)
    assert code == 1 and out == ""
    assert err.startswith("coze-speaker: error: ") and message in err and "Traceback" not in err
    assert fake_coze.requests == []


def test_warm_a_missing_file_is_one_clear_error(capsys, make_config, fake_coze, tmp_path):
    code, out, err = run(capsys, "-c", make_config(), "cache", "warm", tmp_path / "nope.txt")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"coze-speaker: error: No such file or directory: {tmp_path / 'nope.txt'}"]


# ----------------------------------------------------------------------------- devices


def test_devices_prints_a_table(capsys):
    code, out, err = run(capsys, "devices")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "RATES", "DESCRIPTION"]
    assert any(line.split()[0] == "default" for line in lines[1:])
