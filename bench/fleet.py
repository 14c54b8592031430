"""The fleet bench: N speaker processes in network namespaces, broadcasts on B/all/say.

    sudo .venv/bin/python bench/fleet.py [--quick] [--only N[,N]] [--variant lan|jitter|both]
                                         [--misses R] [--hits R] [--out docs/benchmarks.md] [--keep]

Topology (as root): one namespace for the broker (a real mosquitto) and the fake Coze
(bench/fleet_fake.py, a process), one namespace per speaker, each joined to a bridge in a
hub namespace by a veth pair ("lan"). The "jitter" variant takes another path between the
same namespaces: bench/fleet_wire.c, a user-space wire that delays every packet by
20 ms +- 10 ms on the speaker's link, in both directions (this kernel has no sch_netem).
Each speaker is a real `python -m coze_speaker -c CFG run` (audio.backend alsa, keep_open 0,
fleet on), whose default ALSA PCM is bench/fleet_stamp_pcm.c: a sink with a clock, like a sound
card (its hardware pointer advances with CLOCK_MONOTONIC at the rate), that stamps the
CLOCK_REALTIME at which the first non-silent sample of each play comes out of it (namespaces
share the clock); with --clockless it takes every write at once and stamps the write.

Per N and variant: fresh broker and speakers, started one at a time (each waits for its
retained `online` and fleet member record), then R misses (new text) and R hits (the
misses' phrases again: every member cached them), one at a time: publish, wait (bounded)
until every sink stamped and every speaker sent its final event. Per broadcast: Coze calls
(the fake's counter), publish -> first room, skew (last - first room), broker traffic
(TCP payload both ways on the broker's port 1883 minus the bench's own connection, from
`ss -ti`), the `started` events' planned_start/start_error_ms when they carry them; VmRSS per
speaker after the runs. Without root, --quick runs everything on 127.0.0.1, no namespaces.

The result replaces the block between `<!-- fleet bench: begin -->` and `<!-- fleet bench:
end -->` below the analysis marker of docs/benchmarks.md (bench/run.py keeps it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from fleet_net import Net, compile_c, sh  # noqa: E402
from fleet_report import BEGIN, Row, render, write_block  # noqa: E402
from harness import (BASE, BENCH, ROOT, TOKEN, VOICE, FakeCoze, mqtt_client, rss_kib, stop_process,  # noqa: E402
                     wait_on, wait_until)
from run import code_version, machine_info  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402

MQTT_PORT, COZE_PORT = 1883, 8080
#: children get SIGTERM when the bench dies, even by SIGKILL (util-linux setpriv, if present)
ORPHAN_GUARD = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
GAP = 0.3  # idle time before each publish
QUIET_FRAMES = 2400  # 50 ms at 48 kHz: zeros that end a sound (the fake's audio has none)
FINAL = ("finished", "failed", "expired", "dropped", "interrupted")


# --------------------------------------------------------------------------- broker, fake, monitor


class Broker:
    def __init__(self, work: Path, port: int) -> None:
        self.port = port
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port}\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                        f"log_dest file {work / 'mosquitto.log'}\n" + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc = subprocess.Popen(ORPHAN_GUARD + [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False
        wait_until(up, 10, 0.05, "mosquitto to listen")

    def traffic(self, exclude_port: int) -> Optional[int]:
        """TCP payload bytes both ways on the broker's port, all connections but the bench's
        (None without `ss`, from iproute2)."""
        if shutil.which("ss") is None:
            return None
        out = sh("ss", "-tinH", "state", "established", f"( sport = :{self.port} )").stdout.split("\n")
        total, skip = 0, False
        for line in out:
            if not line.startswith((" ", "\t")):
                skip = line.split()[-1].endswith(f":{exclude_port}") if line.split() else False
                continue
            if skip:
                continue
            for field in line.split():
                if field.startswith(("bytes_acked:", "bytes_received:")):
                    total += int(field.split(":")[1])
        return total

    def stop(self) -> None:
        stop_process(self.proc)


class Fake:
    """bench/fleet_fake.py as a child process; calls() asks it for its request counter."""

    def __init__(self, work: Path, ttfb: float, rtf: float) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "fleet_fake.py"), "--token", TOKEN, "--port",
                                      str(COZE_PORT), "--ttfb", str(ttfb), "--realtime-factor", str(rtf)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(work / "fake.log", "ab"),
                                     text=True)
        self.port = int(self._line("port", 20))

    def _line(self, prefix: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(prefix + " "):
            raise SystemExit(f"fleet bench: the fake Coze said {line!r}, not '{prefix} …'")
        return line.split()[1]

    def calls(self) -> int:
        self.proc.stdin.write("calls\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return int(self._line("calls", 10))

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)


class Monitor:
    """The bench's MQTT client: availability, member records, events (all speakers)."""

    def __init__(self, port: int) -> None:
        self.cond = threading.Condition()
        self.online: set = set()
        self.members: set = set()
        self.events: Dict[str, Dict[str, List[dict]]] = {}  # ann id -> device -> events
        self.client, subscribed = mqtt_client(port, f"fleetbench-{os.getpid()}", self._on_message, mqtt.MQTTv311)
        sock = self.client.socket()
        assert sock is not None
        self.port = sock.getsockname()[1]  # type: ignore[union-attr]
        self.client.loop_start()
        self.client.subscribe([(f"{BASE}/+/availability", 1), (f"{BASE}/fleet/members/+", 1), (f"{BASE}/+/event", 1)])
        if not subscribed.wait(10):
            raise SystemExit("fleet bench: the monitor could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        with self.cond:
            if parts[-1] == "availability":
                (self.online.add if message.payload == b"online" else self.online.discard)(parts[-2])
            elif parts[-2] == "members":
                (self.members.add if message.payload else self.members.discard)(parts[-1])
            elif parts[-1] == "event":
                try:
                    data = json.loads(message.payload)
                except ValueError:
                    return
                self.events.setdefault(str(data.get("id")), {}).setdefault(parts[-2], []).append(data)
            self.cond.notify_all()

    def wait(self, predicate, timeout: float, what: str):
        return wait_on(self.cond, predicate, timeout, what)

    def finals(self, ann: str) -> Dict[str, dict]:
        return {dev: next(e for e in evs if e.get("event") in FINAL)
                for dev, evs in self.events.get(ann, {}).items() if any(e.get("event") in FINAL for e in evs)}

    def publish(self, text: str, ann: str) -> float:
        payload = json.dumps({"text": text, "id": ann})
        t = time.time()
        self.client.publish(f"{BASE}/all/say", payload, qos=1)
        return t

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- speakers


def _first_sound_line(path: Path, offset: int, fields: int) -> Optional[List[str]]:
    """The fields of the first 'sound' line (of `fields` fields) in a stamp log after offset."""
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode().splitlines():
            parts = line.split()
            if len(parts) == fields and parts[0] == "sound":
                return parts
    return None


class Speaker:
    """One `python -m coze_speaker -c CFG run` in its namespace, its stamp sink and directories."""

    def __init__(self, home: Path, i: int, plugin: Path, holdback: Optional[Path], clocked: bool = True) -> None:
        self.device = f"s{i:02d}"
        self.i = i
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.stamps = home / "stamps.log"
        self.pipe_stamps = home / "pipe-stamps.log"
        self.stamps.write_bytes(b"")
        self.pipe_stamps.write_bytes(b"")
        stamp = f'{{ type stamp log "{self.stamps}" quiet {QUIET_FRAMES} clock {int(clocked)} }}'
        lines = [f'pcm_type.stamp {{ lib "{plugin}" }}', f"pcm.stampdev {stamp}"]
        if holdback:  # the file sink's hold-back, measured: the same play through its pipe too
            lines.append(f'pcm.!default {{ type file slave.pcm "stampdev" file "|exec {holdback} {self.pipe_stamps} '
                         f'{2 * QUIET_FRAMES}" format "raw" }}')
        else:
            lines.append(f"pcm.!default {stamp}")
        self.asound = home / "asound.conf"
        self.asound.write_text("\n".join(lines) + "\n")
        self.proc: Optional[subprocess.Popen] = None

    def configure(self, host: str, mqtt_port: int, coze_port: int) -> None:
        data = {
            "coze": {"base_url": f"http://{host}:{coze_port}", "token": TOKEN, "voice_id": VOICE, "retries": 1,
                     "timeout": 15, "transport": "http", "first_sentence_first": False},
            "mqtt": {"host": host, "port": mqtt_port, "device_id": self.device},
            "audio": {"backend": "alsa", "sample_rate": 48000, "chime": "none", "wake_ms": 0, "keep_open": 0},
            "cache": {"dir": str(self.home / "cache")},
            "state": {"dir": str(self.home / "state")},
            "queue": {"dedup_seconds": 0, "ttl": 600},
            "limits": {"max_requests_per_hour": 0, "max_chars_per_day": 0},
            "homeassistant": {"enabled": False},
            "logging": {"level": "warning"},
            "fleet": {"enabled": True},
        }
        self.config = self.home / "config.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.config.chmod(0o600)

    def start(self, prefix: List[str]) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("COZE_API_TOKEN", "COZE_SPEAKER_CONFIG", "ALSA_CARD", "ALSA_PCM_CARD", "ALSA_PCM_DEVICE")}
        env["ALSA_CONFIG_PATH"] = str(self.asound)
        env["PYTHONPATH"] = str(ROOT)
        log = open(self.home / "daemon.log", "ab")
        self.proc = subprocess.Popen(prefix + ORPHAN_GUARD + [sys.executable, "-m", "coze_speaker", "-c",
                                                              str(self.config), "run"],
                                     cwd=str(ROOT), env=env, stdout=log, stderr=log)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def offset(self) -> tuple:
        return self.stamps.stat().st_size, self.pipe_stamps.stat().st_size

    def first_sound(self, offset: tuple) -> Optional[tuple]:
        """(realtime, monotonic) of the first 'sound' stamp after offset, or None."""
        parts = _first_sound_line(self.stamps, offset[0], 5)
        return (float(parts[2]), float(parts[3])) if parts else None

    def pipe_sound(self, offset: tuple) -> Optional[float]:
        """CLOCK_MONOTONIC at which the file sink's pipe got the first sound (bench/sink_stamp.c)."""
        parts = _first_sound_line(self.pipe_stamps, offset[1], 4)
        return float(parts[2]) if parts else None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)


# --------------------------------------------------------------------------- one run: N speakers, one variant


def run_one(args, net: Net, work: Path, n: int, variant: str, plugin: Path, holdback: Optional[Path]) -> List[Row]:
    tag = f"n{n}-{variant}"
    home = work / tag
    home.mkdir()
    wire = broker = fake = monitor = None
    speakers: List[Speaker] = []
    t_run = time.monotonic()
    try:
        if variant == "jitter":
            wire = net.start_wire(n, home, args.delay_ms * 1000, args.jitter_ms * 1000, args.seed)
        port = MQTT_PORT if net.use_ns else free_port()
        broker = Broker(home, port)
        fake = Fake(home, args.ttfb, args.rtf)
        monitor = Monitor(port)
        host = net.broker_addr(variant)
        t0 = time.monotonic()
        for i in range(1, n + 1):
            sp = Speaker(home / f"s{i:02d}", i, plugin, holdback, clocked=not args.clockless)
            sp.configure(host, port, fake.port)
            sp.start(net.prefix(i))
            speakers.append(sp)
            try:
                monitor.wait(lambda: (sp.device in monitor.online and sp.device in monitor.members) or not sp.alive(),
                             60, f"{sp.device} online with its member record")
            except TimeoutError:
                raise SystemExit(f"fleet bench: {sp.device} did not come online; its log:\n{sp.log_tail()}")
            if not sp.alive():
                raise SystemExit(f"fleet bench: {sp.device} exited; its log:\n{sp.log_tail()}")
        startup = time.monotonic() - t0
        time.sleep(1.0)  # every member has seen every other's retained record by now
        texts = [f"Notice {k + 1} of run {tag}: the laundry in the basement is done." for k in range(args.misses)]
        args.text_chars = len(texts[0])
        args.audio_s = len(FakeCoze.pcm_for(texts[0], VOICE, 24000)) / 48000
        plan = [("miss", t) for t in texts] + [("hit", texts[k % len(texts)]) for k in range(args.hits)]
        samples: Dict[str, List[dict]] = {"miss": [], "hit": []}
        for k, (kind, text) in enumerate(plan):
            ann = f"{tag}-{k + 1}-{kind}"
            offsets = {sp.device: sp.offset() for sp in speakers}
            time.sleep(GAP)
            calls0, bytes0 = fake.calls(), broker.traffic(monitor.port)
            t_pub = monitor.publish(text, ann)
            stamps: Dict[str, tuple] = {}

            def all_stamped() -> bool:
                for sp in speakers:
                    if sp.device not in stamps:
                        got = sp.first_sound(offsets[sp.device])
                        if got:
                            stamps[sp.device] = got
                return len(stamps) == n
            try:
                wait_until(all_stamped, args.timeout, 0.01, f"a sound at every sink ({ann})")
            except TimeoutError as exc:
                print(f"fleet bench: {exc}: {sorted(set(s.device for s in speakers) - set(stamps))} silent")
            try:
                monitor.wait(lambda: len(monitor.finals(ann)) == n, args.timeout, f"every final event of {ann}")
            except TimeoutError as exc:
                print(f"fleet bench: {exc}")
            time.sleep(GAP)  # the stream's tail and the state messages behind it
            with monitor.cond:  # the client's thread appends to these
                finals = monitor.finals(ann)
                started = [e for evs in monitor.events.get(ann, {}).values() for e in evs
                           if e.get("event") == "started"]
            real = [s[0] for s in stamps.values()]
            holdbacks = []
            if holdback:
                for sp in speakers:
                    pipe = sp.pipe_sound(offsets[sp.device])
                    if pipe is not None and sp.device in stamps:
                        holdbacks.append(pipe - stamps[sp.device][1])
            samples[kind].append({
                "calls": fake.calls() - calls0,
                "bytes": delta(bytes0, broker.traffic(monitor.port)),
                "first": min(real) - t_pub if real else None,
                "last": max(real) - t_pub if real else None,
                "skew": max(real) - min(real) if real else None,
                "rooms": len(stamps),
                "finished": sum(1 for e in finals.values() if e.get("event") == "finished"),
                "cached": sum(1 for e in finals.values() if e.get("cached")),
                "start_error_ms": [e["start_error_ms"] for e in started if "start_error_ms" in e],
                "planned": sum(1 for e in started if "planned_start" in e),
                "unsynchronized": sum(1 for e in started if e.get("synchronized") is False),
                "holdback": holdbacks,
            })
            s = samples[kind][-1]
            print(f"  {ann}: calls {s['calls']}, rooms {s['rooms']}/{n}, first "
                  f"{(s['first'] or 0) * 1000:.1f} ms, skew {(s['skew'] or 0) * 1000:.1f} ms, "
                  f"{(s['bytes'] or 0) / 1000:.0f} kB", flush=True)
        rss = [rss_kib(sp.proc.pid) / 1024 for sp in speakers if sp.alive()]  # type: ignore[union-attr]
        dead = [sp.device for sp in speakers if not sp.alive()]
        seconds = time.monotonic() - t_run
        (home / "samples.json").write_text(json.dumps({"samples": samples, "rss_mb": rss, "dead": dead}, indent=1))
        return [Row(n, variant, kind, samples[kind], rss, startup, seconds, dead) for kind in ("miss", "hit")]
    finally:
        for sp in speakers:  # all at once: each takes a moment to shut down
            sp.terminate()
        for sp in speakers:
            sp.stop()
        for part in (monitor, fake, broker):
            if part is not None:
                part.close() if isinstance(part, Monitor) else part.stop()
        if wire is not None:
            wire.terminate()
            try:
                wire.wait(10)
            except subprocess.TimeoutExpired:
                wire.kill()


def delta(before: Optional[int], after: Optional[int]) -> Optional[int]:
    return None if before is None or after is None else after - before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N=1,3, lan only, 2+2 broadcasts (< 60 s)")
    ap.add_argument("--only", default=None, help="comma-separated N (default 1,5,20,50)")
    ap.add_argument("--variant", choices=("lan", "jitter", "both"), default=None)
    ap.add_argument("--misses", type=int, default=None, help="miss broadcasts per run (default 10)")
    ap.add_argument("--hits", type=int, default=None, help="hit broadcasts per run (default 10)")
    ap.add_argument("--delay-ms", type=int, default=20)
    ap.add_argument("--jitter-ms", type=int, default=10)
    ap.add_argument("--ttfb", type=float, default=0.3, help="the fake Coze's time to first audio byte (s)")
    ap.add_argument("--rtf", type=float, default=4.0, help="the fake's streaming speed, x real time (0: at once)")
    ap.add_argument("--timeout", type=float, default=30.0, help="bound of each wait for the sinks/events (s)")
    ap.add_argument("--holdback", action="store_true",
                    help="also pipe every play through ALSA's file plugin and bench/sink_stamp.c: its hold-back")
    ap.add_argument("--loopback", action="store_true",
                    help="no namespaces, everything on 127.0.0.1 (what happens without root)")
    ap.add_argument("--clockless", action="store_true",
                    help="sinks without a clock (every write taken at once; 'sound' stamped at the write)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", default=None, help="markdown report to update (default: docs/benchmarks.md, "
                                                "none with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.only.split(",")] if args.only else ([1, 3] if args.quick else [1, 5, 20, 50])
    variants = {"lan": ["lan"], "jitter": ["jitter"], "both": ["lan", "jitter"]}[
        args.variant or ("lan" if args.quick else "both")]
    args.misses = args.misses if args.misses is not None else (2 if args.quick else 10)
    args.hits = args.hits if args.hits is not None else (2 if args.quick else 10)
    out = Path(args.out) if args.out else (None if args.quick else ROOT / "docs" / "benchmarks.md")
    use_ns = os.geteuid() == 0 and shutil.which("ip") is not None and not args.loopback
    if not use_ns and "jitter" in variants:
        raise SystemExit("fleet bench: the jitter variant needs network namespaces (root, no --loopback); "
                         "try --variant lan")
    if not use_ns:
        variants = ["loopback"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_signal(signum, frame):
        raise SystemExit(f"fleet bench: signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    code = code_version()
    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="coze-speaker-fleet-"))
    print(f"fleet bench: work directory {work}; N = {sizes}; {variants}; "
          f"{'namespaces' if use_ns else 'loopback (not root: no namespaces)'}", flush=True)
    t0 = time.monotonic()
    net = Net(use_ns, 0)
    rows: List[Row] = []
    try:
        try:
            net.build(max(sizes))
        except (subprocess.CalledProcessError, SystemExit) as exc:
            if not (args.quick and variants == ["lan"]):
                raise
            # root in a container without CAP_SYS_ADMIN: the smoke run still runs, on loopback
            print(f"fleet bench: no network namespaces here ({exc}); running on 127.0.0.1", flush=True)
            net.close()
            net, use_ns, variants = Net(False, 0), False, ["loopback"]
        plugin = compile_c(BENCH / "fleet_stamp_pcm.c", work / "libasound_module_pcm_stamp.so",
                           ["-shared", "-fPIC", "-DPIC"], ["-lasound"])
        holdback = compile_c(BENCH / "sink_stamp.c", work / "sink-stamp") if args.holdback else None
        net.enter_broker()
        for n in sizes:
            for variant in variants:
                print(f"fleet bench: N={n} {variant} …", flush=True)
                rows += run_one(args, net, work, n, variant, plugin, holdback)
    finally:
        net.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    changed = code_version()["hash"] != code["hash"]
    command = " ".join(["python bench/fleet.py", *(sys.argv[1:] if argv is None else argv)])
    text = render(rows, info, code, command, started, seconds, use_ns, args, changed)
    print(text)
    if out is not None:
        write_block(out, text)
        print(f"fleet bench: wrote the block '{BEGIN}' in {out} ({seconds:.0f} s)")
    # a broken fleet or bench fails the run (also --quick, for CI); the timing targets do not
    broken = [f"N={r.n} {r.variant} {r.kind}" for r in rows
              if r.dead or any(s["rooms"] < r.n or s["finished"] < r.n for s in r.samples)]
    if broken:
        print(f"fleet bench: FAILED: a room did not play or finish every broadcast in {', '.join(broken)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
