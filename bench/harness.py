"""The benchmark's own little world: mosquitto, a fake Coze, a timestamping ALSA sink, daemons.

Everything listens on 127.0.0.1 only and lives in one temporary work directory. Nothing here
is a test fixture: bench/run.py builds these objects, measures, and tears them down.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for p in (str(ROOT), str(ROOT / "tests"), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from fake_coze import FakeCoze  # noqa: E402  (tests/fake_coze.py, stdlib only)
from mqtt_helpers import Broker  # noqa: E402  (tests/mqtt_helpers.py: the tests' own broker)

TOKEN = "pat_bench_token"
VOICE = "voice_0000"
BASE = "coze-speaker"
RATE = 48000  # the daemon's default play rate


# --------------------------------------------------------------------------- the package's layout

# coze_speaker is being reorganised into subpackages. The bench imports internals by the new
# path first and falls back to the old one, so it runs on the code before and after the move.
DAEMON_MODULES = ("coze_speaker.app.daemon", "coze_speaker.daemon")
PLAYERS_MODULES = ("coze_speaker.sound.players", "coze_speaker.players")


def import_first(*names: str):
    """The first of these modules that imports (list the new layout's path first).

    Only "this module does not exist" moves on to the next name: a module that exists but
    fails to import (a missing dependency, a syntax error) raises, rather than quietly
    measuring the other layout.
    """
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not exc.name or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
    raise ModuleNotFoundError(f"none of these modules exists: {', '.join(names)}", name=names[-1])


def module_exists(name: str) -> bool:
    """importlib.util.find_spec, False (not an error) when a parent package is missing."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def daemon_module() -> str:
    """The module that defines Daemon: coze_speaker.app.daemon when it exists, else coze_speaker.daemon."""
    return next((name for name in DAEMON_MODULES if module_exists(name)), DAEMON_MODULES[-1])


def which(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)


def write_section(path: Path, heading: str, section: str) -> None:
    """Put a hand-run benchmark's section at the end of a report, replacing an earlier copy of
    it (the sections after bench/run.py's analysis marker are kept by it)."""
    text = path.read_text() if path.exists() else ""
    at = text.find(heading)
    if at >= 0:
        end = text.find("\n## ", at + len(heading))
        text = text[:at] + (text[end + 1:] if end >= 0 else "")
    path.write_text(text.rstrip("\n") + "\n\n" + section)


def wait_subscribed(proc: "subprocess.Popen[bytes]", timeout: float = 10.0) -> None:
    """Read `mosquitto_sub -d` output until the broker acknowledged the subscription."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("bench: mosquitto_sub exited before subscribing")
        if b"SUBACK" in line:
            return
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("bench: mosquitto_sub did not subscribe")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.005, what: str = "condition"):
    """Poll (bounded) until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- mosquitto


def wait_on(cond: threading.Condition, predicate: Callable[[], object], timeout: float, what: str):
    """Wait on cond (notified when what predicate reads changes) until predicate() is truthy;
    returns it, or raises TimeoutError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            cond.wait(min(left, 0.5))


def stop_process(proc: "subprocess.Popen", grace: float = 10.0) -> Optional[int]:
    """SIGTERM, up to grace seconds, then SIGKILL: every child of a bench ends, bounded."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def pct(values: List[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def mqtt_client(port: int, client_id: str, on_message: Callable, protocol: int = mqtt.MQTTv5
                ) -> "tuple[mqtt.Client, threading.Event]":
    """A connected paho client with Nagle off (paho leaves it on: a publish sent while an ACK of
    ours is unacknowledged would wait for the broker's delayed ACK, 40 ms) and the Event its
    first SUBACK sets; the caller starts its loop and subscribes."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, subscribed


def start_broker(directory: Path) -> Broker:
    """tests/mqtt_helpers.Broker, plus TCP_NODELAY on the broker's side: without it,
    mosquitto's Nagle and the client's delayed ACK hold an event that follows another within
    ~40 ms back by 40 ms. That paces the replays (they wait for each final event), never a
    timed publish, which always comes after GAP idle time (see bench/README.md)."""
    if which("mosquitto") is None:
        raise SystemExit("bench: mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    return Broker(directory, "set_tcp_nodelay true\n").start()


# --------------------------------------------------------------------------- fake Coze


class BenchFake(FakeCoze):
    """tests/fake_coze.FakeCoze with one more knob: ``audio_scale``.

    The fake voices 0.06 s of audio per character (a human pace). ``audio_scale`` < 1 cuts
    each answer to that fraction (whole frames), so a 5000-byte text does not need five
    minutes of real-time playback. Streaming rate and TTFB are the fake's own knobs:
    ``ttfb`` seconds after the headers, then ``chunk_bytes`` every ``chunk_delay`` seconds.
    """

    audio_scale = 1.0

    def audio_for(self, text, voice_id, response_format="mp3", sample_rate=24000, speed=1.0,
                  emotion=None, loudness_rate=0):
        audio = super().audio_for(text, voice_id, response_format, sample_rate, speed, emotion, loudness_rate)
        if response_format == "pcm" and self.audio_scale < 1.0:
            n = max(2, int(len(audio) * self.audio_scale)) & ~1
            audio = audio[:n]
        return audio

    def stream(self, *, ttfb: float = 0.0, realtime_factor: Optional[float] = None, rate: int = RATE,
               chunk_ms: int = 100) -> None:
        """TTFB, and streaming at ``realtime_factor``× real time (None: as fast as possible)."""
        self.ttfb = ttfb
        if realtime_factor is None:
            self.chunk_bytes = 65536
            self.chunk_delay = 0.0
        else:
            self.chunk_bytes = 2 * rate * chunk_ms // 1000
            self.chunk_delay = chunk_ms / 1000.0 / realtime_factor

    def speech_calls(self) -> int:
        return len(self.requests_to("/v1/audio/speech"))


def pcm_for(text: str, rate: int = RATE) -> bytes:
    return FakeCoze.pcm_for(text, VOICE, rate)


# --------------------------------------------------------------------------- ALSA sink


@dataclass
class Play:
    """One play seen by the sink: one PCM open (one aplay process)."""

    pid: int
    spawned: float  # the stamp process started (the PCM was opened)
    first: float  # first byte reached the sink
    end: Optional[float] = None
    bytes: int = 0


class StampSink:
    """Hermetic ALSA config whose default PCM is a file sink piped into the stamp program.

    Set ``ALSA_CONFIG_PATH`` (``env()``) for every process that plays; ``plays()`` parses
    the stamp log from a byte offset on, so each measurement reads only its own plays.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = directory / "stamps.log"
        self.log.write_bytes(b"")
        self.stamp, self.compiled = self._build_stamp()
        self.config = directory / "asound.conf"
        command = f"|exec {self.stamp} {shlex.quote(str(self.log))}"
        alsa = command.replace("\\", "\\\\").replace('"', '\\"')
        sink = f'{{ type file slave.pcm {{ type null }} file "{alsa}" format "raw" }}'
        self.config.write_text(f"pcm.sink {sink}\npcm.!default {sink}\n")

    def _build_stamp(self):
        cc = shutil.which("cc") or shutil.which("gcc")
        out = self.dir / "sink-stamp"
        if cc:
            result = subprocess.run([cc, "-O2", "-o", str(out), str(BENCH / "sink_stamp.c")],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                return shlex.quote(str(out)), True
        return f"{shlex.quote(sys.executable)} -S {shlex.quote(str(BENCH / 'sink_stamp.py'))}", False

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["ALSA_CONFIG_PATH"] = str(self.config)
        for var in ("ALSA_CARD", "ALSA_PCM_CARD", "ALSA_PCM_DEVICE"):
            env.pop(var, None)
        return env

    def offset(self) -> int:
        return self.log.stat().st_size

    def plays(self, offset: int = 0) -> List[Play]:
        with open(self.log, "rb") as f:
            f.seek(offset)
            text = f.read().decode()
        plays: Dict[int, Play] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            pid = int(parts[1])
            if parts[0] == "first":
                plays[pid] = Play(pid, float(parts[2]), float(parts[3]))
            elif parts[0] == "end" and pid in plays:
                plays[pid].end = float(parts[2])
                plays[pid].bytes = int(parts[3])
        return sorted(plays.values(), key=lambda p: p.first)

    def marks(self, kind: str, offset: int = 0) -> List[tuple]:
        """(pid, time) of every "open", or (pid, time, byte offset) of every "sound" / "quiet"
        line after offset: opens of the PCM, and where sound starts and stops within a stream
        (a device kept open between announcements is fed silence; see bench/sink_stamp.c)."""
        with open(self.log, "rb") as f:
            f.seek(offset)
            text = f.read().decode()
        out = []
        for line in text.splitlines():
            parts = line.split()
            if not parts or parts[0] != kind:
                continue
            if kind == "open" and len(parts) == 3:
                out.append((int(parts[1]), float(parts[2])))
            elif len(parts) == 4:
                out.append((int(parts[1]), float(parts[2]), int(parts[3])))
        return out

    def wait_mark(self, kind: str, offset: int, timeout: float = 10.0) -> tuple:
        """The first "sound"/"quiet"/"open" mark after offset (bounded wait)."""
        return wait_until(lambda: (self.marks(kind, offset) or [None])[0], timeout, 0.002,
                          f"a '{kind}' mark at the ALSA sink")

    def wait_plays(self, offset: int, n: int = 1, timeout: float = 10.0) -> List[Play]:
        """The first n complete plays after offset (bounded wait)."""
        def done():
            plays = [p for p in self.plays(offset) if p.end is not None]
            return plays if len(plays) >= n else None
        return wait_until(done, timeout, 0.002, f"{n} play(s) at the ALSA sink")[:n]


# --------------------------------------------------------------------------- MQTT client


class Client:
    """The benchmark's MQTT client: publishes, and keeps the daemon's events as they arrive."""

    def __init__(self, port: int, device: str) -> None:
        self.device = device
        self.say_topic = f"{BASE}/{device}/say"
        self.event_topic = f"{BASE}/{device}/event"
        self.avail_topic = f"{BASE}/{device}/availability"
        self._cond = threading.Condition()
        self.events: Dict[str, Dict[str, tuple]] = {}  # id -> event kind -> (monotonic, data)
        self.finals: List[tuple] = []  # (monotonic, data) of final events, in arrival order
        self.online: List[float] = []  # monotonic times of live (not retained) `online`
        self.client, subscribed = mqtt_client(port, f"bench-{os.getpid()}-{time.monotonic_ns()}", self._on_message)
        self.client.loop_start()
        self.client.subscribe([(self.event_topic, 1), (self.avail_topic, 1)])
        if not subscribed.wait(10):
            raise RuntimeError("bench MQTT client could not subscribe")

    FINAL = ("finished", "failed", "expired", "dropped", "interrupted")

    def _on_message(self, client, userdata, message) -> None:
        t = time.monotonic()
        with self._cond:
            if message.topic == self.avail_topic:
                if message.payload == b"online" and not message.retain:
                    self.online.append(t)
            else:
                try:
                    data = json.loads(message.payload)
                except ValueError:
                    return
                self.events.setdefault(data.get("id"), {})[data.get("event")] = (t, data)
                if data.get("event") in self.FINAL:
                    self.finals.append((t, data))
            self._cond.notify_all()

    def publish(self, topic: str, payload, qos: int = 1) -> float:
        """Publish; returns the monotonic time just before the publish call."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        t0 = time.monotonic()
        self.client.publish(topic, payload, qos=qos)
        return t0

    def say(self, text: str, ann_id: str, **fields) -> float:
        return self.publish(self.say_topic, {"text": text, "id": ann_id, **fields})

    def wait(self, predicate: Callable[[], object], timeout: float, what: str):
        return wait_on(self._cond, predicate, timeout, what)

    def wait_final(self, ann_id: str, timeout: float = 30.0) -> tuple:
        """(kind, monotonic, data) of the final event of an announcement."""
        def final():
            for kind in self.FINAL:
                hit = self.events.get(ann_id, {}).get(kind)
                if hit:
                    return (kind, *hit)
            return None
        return self.wait(final, timeout, f"a final event for {ann_id}")

    def wait_event(self, ann_id: str, kind: str, timeout: float = 30.0) -> tuple:
        return self.wait(lambda: self.events.get(ann_id, {}).get(kind), timeout, f"{kind} of {ann_id}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- the daemon


def daemon_config(path: Path, *, fake: FakeCoze, broker_port: int, device: str, cache_dir: Path,
                  state_dir: Path, backend: str = "aplay", **sections) -> Path:
    data = {
        # the figures of bench/run.py and bench/breaker.py model the HTTP endpoint (TTFB, then
        # streaming): pinned to it; bench/transports.py compares the transports
        "coze": {"base_url": fake.url, "token": TOKEN, "voice_id": VOICE, "retries": 1, "timeout": 15,
                 "transport": "http", "first_sentence_first": False},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "device_id": device},
        "audio": {"backend": backend, "sample_rate": RATE, "chime": "none", "wake_ms": 0},
        "cache": {"dir": str(cache_dir), "max_size_mb": 4000},
        "state": {"dir": str(state_dir)},
        # The bench replays faster than life: no dedup window, room for a 1 000-message
        # burst, and no cost guard (it would refuse the household week replayed in seconds).
        "queue": {"dedup_seconds": 0, "max_length": 5000, "ttl": 600},
        "limits": {"max_requests_per_hour": 0, "max_chars_per_day": 0},
        "logging": {"level": "warning"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


class DaemonProcess:
    """`python -m coze_speaker -c CFG run` as a real child process."""

    def __init__(self, config: Path, env: Dict[str, str], log: Path) -> None:
        env = dict(env)
        env.pop("COZE_API_TOKEN", None)
        env.pop("COZE_SPEAKER_CONFIG", None)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log = open(log, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "coze_speaker", "-c", str(config), "run"],
                                     cwd=str(ROOT), env=env, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        code = stop_process(self.proc, timeout)
        self.log.close()
        return code


# --------------------------------------------------------------------------- /proc


CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current VmRSS (``echo 5 > /proc/PID/clear_refs``, Linux
    4.0+), so a later VmHWM is the peak since now; False if the kernel refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
