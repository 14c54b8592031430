"""`coze-speaker doctor`: one ✓/✗ line per part of the setup, with the fix for each ✗."""

from __future__ import annotations

import yaml

from alsa_sink import alsa_sink  # noqa: F401
from mqtt_helpers import broker  # noqa: F401
from test_daemon import write_config

from coze_speaker.cli import main


def doctor(capsys, path):
    code = main(["-c", str(path), "doctor"])
    out = capsys.readouterr().out
    return code, out


def test_all_good(capsys, tmp_path, fake_coze, broker, alsa_sink):
    code, out = doctor(capsys, write_config(tmp_path, fake_coze, broker))
    lines = [line for line in out.splitlines() if line[:1] in "✓✗"]
    assert code == 0, out
    assert len(lines) == 6 and all(line.startswith("✓") for line in lines)
    assert "Coze token works" in out and "voice voice_0000" in out and "connected" in out
    assert "audio: aplay on 'default'" in out


def test_each_failure_has_a_fix(capsys, tmp_path, fake_coze, broker, alsa_sink):
    path = write_config(tmp_path, fake_coze, broker, coze={"token": "pat_not_valid", "voice_id": "nope"},
                        audio={"device": "broken"})
    data = yaml.safe_load(path.read_text())
    data["mqtt"]["port"] = 1  # nothing listens there
    path.write_text(yaml.safe_dump(data))
    code, out = doctor(capsys, path)
    assert code == 1
    assert "✗ Coze token: Coze error 4100" in out and "region" in out
    assert "✗ MQTT broker 127.0.0.1:1" in out
    assert "✗ audio: audio device 'broken' is missing" in out
    assert out.count("    fix: ") >= 4
    assert "pat_not_valid" not in out


def test_bad_config_stops_early(capsys, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("coze:\n  speed: fast\n")
    code, out = doctor(capsys, path)
    assert code == 1 and out.startswith("✗ config:") and "coze.speed" in out and "fix:" in out
