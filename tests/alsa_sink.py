"""A hermetic ALSA "file" sink for tests: capture byte for byte what a player played.

Import in a test module with ``from alsa_sink import alsa_sink, ...`` (tests/ is on
sys.path via conftest.py); importing the fixture function is enough for pytest.

The ALSA config written here does not include the system alsa.conf (a ~/.asoundrc or
/etc/asound.conf must not win) and defines:

* ``default`` (and ``sink``): a ``file`` PCM over an inline null PCM whose output is
  piped to ``cat >> played.raw``; the pipe form appends, so a whole test is kept.
* ``broken``: ``hw`` card 31, which does not exist → open error "No such file or
  directory" (kind 'missing').
* ``invalid``: ``hw`` card 99, outside ALSA's card range → open error "Invalid
  argument" (kind 'failed').
* ``ioerror``: a ``file`` PCM whose output file cannot be created → opens, then fails
  on the first write ("write error: Input/output error", kind 'failed').
* after :meth:`AlsaSink.add_plugins` (plugins compiled from tests/alsa_plugins.c, see
  :func:`alsa_plugins`): ``busy``, a PCM whose every open fails with EBUSY inside libasound
  (it logs the mode of each open, "nonblock"/"block", to ``busy.log``); ``stereo``, a
  hardware-like PCM that takes S16_LE stereo at 44100 or 48000 Hz only; ``only44k``, mono at
  44100 Hz only. Both discard what they get.

Every open of the sink PCM appends a line to ``opens.log`` (the pipe command runs once per
open), so a test can tell how many times the device was opened.

A real *busy* device (EBUSY) cannot be produced by a sound card here: there is none, and
the snd-aloop/snd-dummy kernel modules are not available. :func:`fake_aplay` writes a
stand-in executable that fails like aplay on a busy device, to exercise the player's
handling of that case through a real child process; :func:`alsa_plugins` builds the
in-libasound stand-ins (tests/alsa_plugins.c).

ALSA_CONFIG_PATH is set with monkeypatch, so child processes (aplay) inherit it. Found
while writing this: libasound in *this* process (simpleaudio) does pick up a changed
ALSA_CONFIG_PATH at the next PCM open, because snd_config_update() re-reads the
variable and compares the list of files (name, inode, mtime) every time; each test gets
its own file in its own tmp_path, so a function-scoped fixture is reliable for in-process
players too. (The test module checks this with two sinks in one process.)
"""

from __future__ import annotations

import array
import math
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest


def _alsa_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AlsaSink:
    """The capture file of a hermetic ALSA config (see module docstring)."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.path = directory / "played.raw"
        self.config_path = directory / "asound.conf"
        self.opens_path = directory / "opens.log"
        self.busy_log = directory / "busy.log"
        self.busy_lib: Optional[Path] = None
        self.path.write_bytes(b"")
        self.write_config()

    def pipe_command(self, path: Optional[Path] = None) -> str:
        # run by /bin/sh once per open of the PCM: one line per open, then the capture
        return (f"|echo open >> {shlex.quote(str(self.opens_path))}; "
                f"exec cat >> {shlex.quote(str(path or self.path))}")

    def opens(self) -> int:
        """How many times the sink PCM has been opened."""
        try:
            return len(self.opens_path.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def add_plugins(self, lib: Path) -> None:
        """Declare the ``busy``, ``stereo`` and ``only44k`` PCMs (see :func:`alsa_plugins`)."""
        self.busy_lib = lib
        self.write_config()

    def busy_opens(self) -> list:
        """The mode of every open of the ``busy`` PCM so far: "nonblock" or "block"."""
        try:
            return self.busy_log.read_text().split()
        except FileNotFoundError:
            return []

    def write_config(self, default: Optional[str] = None) -> None:
        """(Re)write the config; ``default`` names another PCM of the file to be the default."""
        sink = (
            "{ type file slave.pcm { type null } "
            f"file {_alsa_string(self.pipe_command())} format \"raw\" }}"
        )
        unwritable = self.dir / "no-such-dir" / "x.raw"
        lines = [
            f"pcm.sink {sink}",
            "pcm.broken { type hw card 31 device 0 }",
            "pcm.invalid { type hw card 99 }",
            "pcm.ioerror { type file slave.pcm { type null } "
            f"file {_alsa_string(str(unwritable))} format \"raw\" }}",
            f"pcm.!default {sink}" if default is None else f'pcm.!default "{default}"',
        ]
        if self.busy_lib is not None:
            lib = _alsa_string(str(self.busy_lib))
            lines += [f"pcm_type.busy {{ lib {lib} }}",
                      f"pcm_type.fixed {{ lib {lib} }}",
                      f"pcm.busy {{ type busy log {_alsa_string(str(self.busy_log))} }}",
                      "pcm.stereo { type fixed channels 2 rates [ 44100 48000 ] }",
                      "pcm.only44k { type fixed channels 1 rates [ 44100 ] }"]
        # A new file each time (os.replace): libasound notices a changed config by inode and
        # mtime, and a rewrite within the same second could keep the mtime.
        tmp = self.config_path.with_name(self.config_path.name + ".new")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.config_path)

    def read(self) -> bytes:
        return self.path.read_bytes()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def clear(self) -> None:
        self.path.write_bytes(b"")

    def wait_for(self, n_bytes: int, timeout: float = 5.0) -> bytes:
        """Poll until the file has at least ``n_bytes`` (ALSA's ``|cat`` may flush after
        the PCM closed) or ``timeout`` passes; return the content either way."""
        deadline = time.monotonic() + timeout
        while self.size() < n_bytes and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.read()

    def settle(self, quiet: float = 0.2, timeout: float = 5.0) -> bytes:
        """Wait until the file size has not changed for ``quiet`` seconds (bounded)."""
        deadline = time.monotonic() + timeout
        last, since = self.size(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            size = self.size()
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.read()


def _install(sink: AlsaSink, monkeypatch) -> AlsaSink:
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(sink.config_path))
    for var in ("ALSA_CARD", "ALSA_PCM_CARD", "ALSA_PCM_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    return sink


@pytest.fixture
def alsa_sink(tmp_path, monkeypatch) -> AlsaSink:
    """Hermetic ALSA config whose "default" PCM appends to ``sink.path``."""
    return _install(AlsaSink(tmp_path / "alsa"), monkeypatch)


@pytest.fixture
def alsa_broken_default(tmp_path, monkeypatch) -> AlsaSink:
    """Hermetic ALSA config whose "default" PCM cannot be opened (missing card)."""
    sink = AlsaSink(tmp_path / "alsa-broken")
    sink.write_config(default="broken")
    return _install(sink, monkeypatch)


@pytest.fixture(scope="session")
def alsa_plugins(tmp_path_factory) -> Path:
    """The test PCM plugins (busy, fixed) built from tests/alsa_plugins.c (skips without cc or
    the ALSA headers, libasound2-dev: the same build needs as pyalsaaudio)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the test ALSA plugins")
    out = tmp_path_factory.mktemp("alsa-plugins") / "libasound_module_pcm_test.so"
    source = Path(__file__).with_name("alsa_plugins.c")
    result = subprocess.run([cc, "-shared", "-fPIC", "-DPIC", "-O2", "-o", str(out), str(source), "-lasound"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.skip(f"cannot build the test ALSA plugins (libasound2-dev?): {result.stderr.strip()[-300:]}")
    return out


# ----------------------------------------------------------------------------- helpers


def sine_pcm(frames: int, rate: int, freq: float = 440.0, amplitude: int = 12000) -> bytes:
    """Deterministic s16le mono sine; never all zero (phase offset avoids a zero start)."""
    samples = array.array(
        "h", (int(amplitude * math.sin(2 * math.pi * freq * i / rate + 0.5)) for i in range(frames))
    )
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def fake_aplay(directory: Path, stderr_line: str, exit_code: int = 1, name: str = "fake-aplay") -> Path:
    """An executable that prints ``stderr_line`` to stderr and exits like a failing aplay.

    It counts its runs in ``<name>.runs`` beside it. Used only where no real device can
    produce the condition (a busy device).
    """
    path = directory / name
    runs = directory / f"{name}.runs"
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"sys.stderr.write({stderr_line!r} + '\\n')\n"
        f"sys.exit({exit_code})\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_runs(script: Path) -> int:
    runs = script.parent / f"{script.name}.runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def hanging_aplay(directory: Path, read_stdin: bool = False, name: str = "hanging-aplay") -> Path:
    """An executable that hangs like a stuck aplay: it never reads its stdin (or reads it
    all and then never exits). Its pid is written to ``<name>.pid``."""
    path = directory / name
    pidfile = directory / f"{name}.pid"
    body = "sys.stdin.buffer.read()\n" if read_stdin else ""
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        + body
        + "time.sleep(600)\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def processes_running(path: Path) -> list:
    """Pids of live processes running the program ``path`` (a script: its interpreter's, also
    through qemu-user). Unlike a pid file, this also sees a child killed before it wrote one,
    which happens when the interpreter starts slower than the player's timeout (emulation)."""
    target = str(path).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if target in argv and pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
