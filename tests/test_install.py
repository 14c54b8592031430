"""An install that works everywhere, and a first run that speaks.

- A fresh virtualenv gets the package from a wheel built here, with only the runtime
  dependencies at hand (copied from this venv: no index, no network). pip must resolve it
  without simpleaudio or pyalsaaudio (they are extras: compiled, no Linux wheels on PyPI);
  every module imports, `--help` and `doctor` work with the aplay back end, and
  `audio.backend: simpleaudio` without the extra is one clear error naming it.
- With no token and no coze.voice_id (what a first run without a config has), the daemon
  speaks with the offline voice, and the mosquitto_pub line it logs at start makes it speak.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import yaml
from packaging.requirements import Requirement

from alsa_sink import alsa_sink  # noqa: F401
from mqtt_helpers import broker, probe  # noqa: F401
from test_faults import DaemonProcess

from coze_speaker.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
#: What a plain `pip install coze-speaker` may bring, and nothing else.
RUNTIME = ("paho-mqtt", "pyyaml", "websocket-client")
ESPEAK = shutil.which("espeak-ng") is not None
TOPIC = "coze-speaker/firstrun"  # the device's topics in write_config below
FINAL = ("finished", "failed", "expired", "dropped", "interrupted")


def run(args: List[object], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


def closure(names) -> Iterator[metadata.Distribution]:
    """The installed distributions of ``names`` and of everything they need (no extras)."""
    seen: Dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return iter(seen.values())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A new venv with the package installed by pip from its wheel; returns its bin dir."""
    root = tmp_path_factory.mktemp("fresh-install")
    src = root / "src"  # the sources only: no .venv, no build leftovers
    shutil.copytree(REPO / "coze_speaker", src / "coze_speaker", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    wheels = root / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", wheels, src])
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    for dist in closure(RUNTIME):  # as if pip had downloaded them
        for file in dist.files or []:
            if file.parts[0] == ".." or file.suffix == ".pyc":
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dist.locate_file(file), target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links or constraints from this machine
    run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "coze-speaker"], env=env)
    return venv / "bin"


def fresh_env() -> Dict[str, str]:
    """The environment for the fresh venv's programs: nothing of this venv's on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COZE_API_TOKEN", "VIRTUAL_ENV")}
    return env


def test_a_plain_install_resolves_without_the_compiled_back_ends(fresh):
    run([fresh / "python", "-m", "pip", "check"], env=fresh_env())
    code = "from importlib.metadata import requires; print('\\n'.join(requires('coze-speaker')))"
    requires = run([fresh / "python", "-c", code], env=fresh_env()).stdout.splitlines()
    plain = [r for r in requires if "extra ==" not in r]
    assert sorted(Requirement(r).name.lower() for r in plain) == sorted(RUNTIME), plain
    for module in ("simpleaudio", "alsaaudio"):
        found = subprocess.run([fresh / "python", "-c", f"import {module}"], capture_output=True, env=fresh_env())
        assert found.returncode != 0, f"{module} is importable in the fresh venv: not a plain install"


def test_every_module_imports_without_them(fresh):
    code = ("import importlib, pkgutil, coze_speaker\n"
            "names = [m.name for m in pkgutil.walk_packages(coze_speaker.__path__, 'coze_speaker.')\n"
            "         if not m.name.endswith('__main__')]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(len(names), coze_speaker.__file__)")
    out = run([fresh / "python", "-c", code], env=fresh_env(), cwd=fresh).stdout.split()
    assert int(out[0]) > 40 and out[1].startswith(str(fresh.parent)), out  # the installed copy


def test_help_and_doctor_with_aplay(fresh, tmp_path, broker, alsa_sink):
    assert "doctor" in run([fresh / "coze-speaker", "--help"], env=fresh_env()).stdout
    config = write_config(tmp_path, broker, audio={"backend": "aplay", "sample_rate": 24000})
    done = subprocess.run([fresh / "coze-speaker", "-c", config, "doctor"], capture_output=True, text=True,
                          timeout=120, env=fresh_env())
    assert "Traceback" not in done.stderr, done.stderr
    assert "✓ audio: aplay on 'default' at 24000 Hz" in done.stdout, done.stdout
    assert f"✓ MQTT broker 127.0.0.1:{broker.port}: connected" in done.stdout, done.stdout
    assert "✗ Coze token: not configured" in done.stdout  # the only kind of cross here: no token, no voice
    played = alsa_sink.wait_for(2400)  # doctor plays 50 ms of silence: 2400 bytes at 24 kHz
    assert len(played) >= 2400 and not played.strip(b"\0"), len(played)


def test_the_simpleaudio_back_end_without_its_extra_is_one_clear_error(fresh, tmp_path, broker):
    config = write_config(tmp_path, broker, audio={"backend": "simpleaudio"})
    done = subprocess.run([fresh / "coze-speaker", "-c", config, "doctor"], capture_output=True, text=True,
                          timeout=120, env=fresh_env())
    [line] = [line for line in done.stdout.splitlines() if line.startswith("✗ audio")]
    assert "simpleaudio module, which is not installed" in line and "pip install 'coze-speaker[simpleaudio]'" in line
    assert "install the extra named above" in done.stdout
    done = subprocess.run([fresh / "coze-speaker", "-c", config, "run"], capture_output=True, text=True,
                          timeout=120, env=fresh_env())
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("coze-speaker: error:")]
    assert "pip install 'coze-speaker[simpleaudio]'" in error and "audio.backend: aplay" in error


# -- a first run: no token, no voice ---------------------------------------------------------------


def write_config(tmp_path: Path, broker, **sections) -> Path:
    """Only what a test must set (the broker's port, its own dirs): everything else is a default,
    and there is neither a token nor a voice."""
    data = {
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "device_id": "firstrun"},
        "cache": {"dir": str(tmp_path / "cache")},
        "state": {"dir": str(tmp_path / "state")},
    }
    data.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_offline_voice_is_on_by_default_while_coze_is_not_set_up():
    def engine(**sections) -> str:
        return config_from_dict(sections, env={}).fallback_engine()

    assert engine() == "espeak-ng"
    assert engine(coze={"token": "pat_x"}) == "espeak-ng"  # no voice to ask Coze for
    assert engine(coze={"voice_id": "v"}) == "espeak-ng"
    assert engine(coze={"token": "pat_x", "voice_id": "v"}) == "none"  # a Coze failure stays a failure
    assert engine(coze={"token": "pat_x", "voice_id": "v"}, fallback={"engine": "espeak-ng"}) == "espeak-ng"
    assert engine(fallback={"engine": "none"}) == "none"


@pytest.mark.skipif(not ESPEAK, reason="espeak-ng is not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("fallback", [None, "espeak-ng"], ids=["fallback-by-default", "fallback-espeak-ng"])
def test_no_token_and_no_voice_speak_with_the_offline_voice(tmp_path, broker, probe, alsa_sink, fallback):
    sections = {} if fallback is None else {"fallback": {"engine": fallback}}
    daemon = DaemonProcess(write_config(tmp_path, broker, **sections))
    try:
        probe.wait_for(lambda ms: [m for m in ms if m.topic == f"{TOPIC}/availability" and m.payload == b"online"],
                       timeout=30)
        hint = wait_for_line(daemon, "to make it speak: ")
        command = hint.split("to make it speak: ", 1)[1]
        assert command.startswith(f"mosquitto_pub -h 127.0.0.1 -p {broker.port} -t {TOPIC}/say -m ")
        run(shlex.split(command))  # exactly the line a user copies
        probe.wait_for(lambda _: [e for e in probe.events(f"{TOPIC}/event") if e["event"] in FINAL],
                       timeout=60)
        [final] = [e for e in probe.events(f"{TOPIC}/event") if e["event"] in FINAL]
        assert final["event"] == "finished", final
        assert final["fallback"] is True and final["cached"] is False and "coze.voice_id" in final["reason"]
        assert final["text"] == "Hello from coze-speaker"
        played = alsa_sink.settle()
        assert played.strip(b"\0"), "nothing audible reached the sound device"
        assert "NO COZE TOKEN and NO COZE VOICE" in daemon.log and "COZE_API_TOKEN" in daemon.log
    finally:
        daemon.stop()


def wait_for_line(daemon: DaemonProcess, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.log.splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"the daemon never logged {text!r}:\n{daemon.log}")
