"""`coze-speaker doctor`: one ✓/✗ line per part of the setup, with the fix for each ✗."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
    assert len(lines) == 9 and all(line.startswith("✓") for line in lines)  # the clock's is a warning at most
    assert "Coze token works" in out and "voice voice_0000" in out and "connected" in out
    assert "audio: aplay on 'default'" in out
    assert "offline voice: none" in out and f"state {tmp_path / 'state'}: writable" in out
    assert "clock: " in out


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


# -- broken setups the daemon would only warn about at start: the real CLI, one problem each --


def run_doctor(path: Path, env=None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "COZE_API_TOKEN"}  # keeps ALSA_CONFIG_PATH
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "coze_speaker", "-c", str(path), "doctor"],
                          capture_output=True, text=True, timeout=120, env=full)


def path_without_espeak(tmp_path: Path) -> str:
    """A PATH with aplay (and cat, which the ALSA sink's pipe runs) but no espeak-ng."""
    bin_dir = tmp_path / "bin-without-espeak"
    bin_dir.mkdir()
    for tool in ("aplay", "cat"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed (scripts/test.sh installs it)"
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def crosses(out: str) -> list:
    """Each ✗ line with the fix printed under it."""
    lines = out.splitlines()
    return [(line, lines[i + 1] if i + 1 < len(lines) else "") for i, line in enumerate(lines) if line.startswith("✗")]


def unwritable_state(tmp_path):
    blocker = tmp_path / "a-regular-file"  # a directory under a file cannot be made, not even by root
    blocker.write_text("not a directory")
    return {"state": {"dir": str(blocker / "state")}}, {}


def espeak_missing(tmp_path):
    return {"fallback": {"engine": "espeak-ng"}}, {"PATH": path_without_espeak(tmp_path)}


def voice_unset(tmp_path):
    return {"coze": {"voice_id": None}}, {}


def device_missing(tmp_path):
    return {"audio": {"device": "no_such_device"}}, {}


@pytest.mark.parametrize("problem, found, fix", [
    (unwritable_state, "✗ state {tmp}/a-regular-file/state: cannot write there: Not a directory", "state.dir"),
    (espeak_missing, "✗ offline voice: fallback.engine is espeak-ng but espeak-ng is not installed",
     "apt-get install espeak-ng, or set fallback.engine: none"),
    (voice_unset, "✗ voice: voice_id: no voice chosen", "set coze.voice_id"),
    (device_missing, "✗ audio: audio device 'no_such_device' is missing", "check audio.device against"),
], ids=["unwritable-state-dir", "espeak-ng-missing", "voice-id-unset", "audio-device-missing"])
def test_a_broken_setup_gets_one_cross_with_its_fix(tmp_path, fake_coze, broker, alsa_sink, problem, found, fix):
    sections, env = problem(tmp_path)
    done = run_doctor(write_config(tmp_path, fake_coze, broker, **sections), env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [(line, fix_line)] = crosses(done.stdout)  # this problem, and nothing else
    assert line.startswith(found.format(tmp=tmp_path)), done.stdout
    assert fix_line.startswith("    fix: ") and fix in fix_line, done.stdout


def test_espeak_ng_installed_is_checked_by_speaking(tmp_path, fake_coze, broker, alsa_sink):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/test.sh installs it)")
    done = run_doctor(write_config(tmp_path, fake_coze, broker, fallback={"engine": "espeak-ng"}))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ offline voice: espeak-ng speaks" in done.stdout
    done = run_doctor(write_config(tmp_path, fake_coze, broker, fallback={"engine": "espeak-ng",
                                                                          "voice": "nosuchvoice"}))
    assert done.returncode == 1
    [(line, fix_line)] = crosses(done.stdout)
    assert line.startswith("✗ offline voice: ") and "fallback.voice" in fix_line, done.stdout


def test_simpleaudio_ignoring_audio_device_is_a_cross(tmp_path, fake_coze, broker, alsa_sink):
    pytest.importorskip("simpleaudio")
    done = run_doctor(write_config(tmp_path, fake_coze, broker, audio={"backend": "simpleaudio", "device": "sink"}))
    assert done.returncode == 1, done.stdout + done.stderr
    [(line, fix_line)] = crosses(done.stdout)
    assert line == "✗ audio: simpleaudio ignores audio.device 'sink' and plays on 'default'", done.stdout
    assert "audio.backend: aplay" in fix_line
