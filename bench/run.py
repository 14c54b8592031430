"""coze-speaker benchmarks: latency, footprint, scaling and cost, side by side with the floor.

    python bench/run.py [--quick] [--out docs/benchmarks.md] [--png PATH] [--keep]

Starts its own mosquitto (127.0.0.1, free port), the fake Coze of tests/fake_coze.py
in-process (configurable TTFB and streaming rate) and a hermetic ALSA file sink whose pipe
command (bench/sink_stamp.c) stamps the CLOCK_MONOTONIC time of the first byte of every
play; runs every measurement; prints a table; writes the markdown report and a latency plot
(matplotlib, from the optional `bench` extra, only if importable).

--quick is the smoke version for CI: few iterations, smaller sizes, no thresholds (< 60 s).
See bench/README.md for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (BASE, pct, DAEMON_MODULES, RATE, ROOT, TOKEN, VOICE, BenchFake, Client,  # noqa: E402
                     DaemonProcess, StampSink, cpu_seconds, daemon_config, daemon_module, import_first, pcm_for,
                     reset_peak_rss, rss_kib, thread_count, wait_subscribed, wait_until, start_broker, which)
import household  # noqa: E402

# Short phrases that are pre-warmed into the cache and replayed for the hit figures.
PHRASES = [
    "Dinner is ready",
    "The front door is open",
    "The dishwasher has finished",
    "Someone is at the front door",
    "The mail has arrived",
    "The garage door is open",
    "Time to leave for school",
    "Good night, all doors are locked",
]
GAP = 0.1  # idle time before each timed publish (see README: the broker's Nagle + delayed ACK)


# --------------------------------------------------------------------------- stats helpers




def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class Report:
    """Rows of (section, figure, value, target, met) plus notes, raw samples and timings."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.rows: List[Dict[str, Any]] = []
        self.notes: Dict[str, List[str]] = {}
        self.samples: Dict[str, Any] = {}
        self.timings: Dict[str, float] = {}
        self.code: Dict[str, str] = {}
        self.code_changed = False

    def row(self, section: str, figure: str, value: str, target: str = "—", met: Optional[bool] = None) -> None:
        if self.quick and met is not None:
            met_s = "(quick: not judged)"
        else:
            met_s = "—" if met is None else ("yes" if met else "**no**")
        self.rows.append({"section": section, "figure": figure, "value": value, "target": target,
                          "met": met, "met_s": met_s})
        print(f"  {figure:<58} {value:<34} {target:<22} {met_s}", flush=True)

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.work = Path(tempfile.mkdtemp(prefix="coze-speaker-bench-"))
        self.report = Report(self.quick)
        self.broker = start_broker(self.work)
        self.fake = BenchFake(token=TOKEN).start()
        self.fake.stream()
        self.sink = StampSink(self.work / "alsa")
        self.env = self.sink.env()
        self.daemons: List[DaemonProcess] = []
        self.clients: List[Client] = []
        self._n = 0
        self.pub = self.client("bench-publisher")  # triggers the shell pipelines
        self.sub = which("mosquitto_sub")
        self.aplay = which("aplay")
        self.curl = which("curl")
        self.stdbuf = which("stdbuf")
        if not self.stdbuf:
            raise SystemExit("bench: stdbuf (coreutils) is needed to read mosquitto_sub -d line by line")
        if not self.aplay:
            raise SystemExit("bench: aplay is not installed (apt-get install alsa-utils)")

    # -- plumbing -------------------------------------------------------------------------

    def uid(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def config(self, name: str, device: str, backend: str = "aplay", cache_dir: Optional[Path] = None,
               **sections) -> Path:
        cache_dir = cache_dir or self.work / f"cache-{name}"
        return daemon_config(self.work / f"{name}.yaml", fake=self.fake, broker_port=self.broker.port,
                             device=device, cache_dir=cache_dir, state_dir=self.work / f"state-{name}",
                             backend=backend, **sections)

    def start_daemon(self, config: Path, client: Client, timeout: float = 30.0) -> DaemonProcess:
        """Start `python -m coze_speaker -c CFG run`; returns once `online` came (live, not retained)."""
        before = len(client.online)
        daemon = DaemonProcess(config, self.env, self.work / f"{config.stem}.log")
        self.daemons.append(daemon)
        try:
            client.wait(lambda: len(client.online) > before or not daemon.alive(), timeout, "online")
        except TimeoutError:
            raise SystemExit(f"bench: the daemon did not come online; its log:\n{self.daemon_log(config)}")
        if not daemon.alive():
            raise SystemExit(f"bench: the daemon exited; its log:\n{self.daemon_log(config)}")
        daemon.online_after = client.online[-1] - daemon.started
        return daemon

    def daemon_log(self, config: Path) -> str:
        path = self.work / f"{config.stem}.log"
        return path.read_text()[-3000:] if path.exists() else "(no log)"

    def client(self, device: str) -> Client:
        c = Client(self.broker.port, device)
        self.clients.append(c)
        return c

    def warm(self, client: Client, phrases: List[str]) -> None:
        self.fake.stream()
        for text in phrases:
            ann = self.uid("warm")
            client.say(text, ann)
            kind, _, data = client.wait_final(ann)
            if kind != "finished":
                raise SystemExit(f"bench: warming {text!r} ended {kind}: {data}")

    def hit_sample(self, client: Client, text: str) -> tuple:
        """One cache-hit announcement through the daemon: (publish→first byte, publish→PCM open, play)."""
        time.sleep(GAP)
        off = self.sink.offset()
        ann = self.uid("hit")
        t0 = client.say(text, ann)
        kind, _, data = client.wait_final(ann)
        if kind != "finished" or not data.get("cached"):
            raise SystemExit(f"bench: cache-hit announcement ended {kind} (cached={data.get('cached')}): {data}")
        play = self.sink.wait_plays(off)[0]
        return play.first - t0, play.spawned - t0, play

    def miss_sample(self, client: Client, text: str) -> float:
        """One cache miss (fake: TTFB 300 ms, 4× real time) through the daemon: publish → first byte."""
        self.fake.stream(ttfb=0.3, realtime_factor=4.0)
        try:
            time.sleep(GAP)
            off = self.sink.offset()
            ann = self.uid("miss")
            t0 = client.say(text, ann)
            kind, _, data = client.wait_final(ann, timeout=60)
            if kind != "finished" or data.get("cached"):
                raise SystemExit(f"bench: cache-miss announcement ended {kind}: {data}")
            return self.sink.wait_plays(off)[0].first - t0
        finally:
            self.fake.stream()

    def warm_hit_sample(self, client: Client, text: str) -> tuple:
        """One cache hit through a daemon whose device is kept open: (publish → first sound at
        the sink, PCM opens it caused). No open means no new play at the sink: the first audio
        is the first non-zero byte after the silence the daemon fed the open device."""
        time.sleep(GAP)
        off = self.sink.offset()
        ann = self.uid("warm")
        t0 = client.say(text, ann)
        kind, _, data = client.wait_final(ann)
        if kind != "finished" or not data.get("cached"):
            raise SystemExit(f"bench: warm cache-hit announcement ended {kind} (cached={data.get('cached')}): {data}")
        sound = self.sink.wait_mark("sound", off)
        return sound[1] - t0, len(self.sink.marks("open", off))

    def shell_sample(self, topic: str, command: str, timeout: float = 30.0, pipe: bool = False) -> tuple:
        """`mosquitto_sub -C 1 -t topic && COMMAND` (or `| COMMAND`, which then echoes the SUBACK
        line): publish once subscribed; (publish→first byte, play)."""
        cmd = (f"{shlex.quote(self.stdbuf)} -oL {shlex.quote(self.sub)} -h 127.0.0.1 -p {self.broker.port} -C 1 -t {shlex.quote(topic)} -d "
               f"{'|' if pipe else '&&'} {command}")
        off = self.sink.offset()
        proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env)
        try:
            wait_subscribed(proc)
            time.sleep(GAP)
            t0 = self.pub.publish(topic, b"go")
            proc.wait(timeout)  # what is left on stdout is a few hundred bytes: it never blocks the child
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if proc.returncode != 0:
            raise SystemExit(f"bench: the floor pipeline failed ({proc.returncode}): {cmd}")
        play = self.sink.wait_plays(off)[0]
        return play.first - t0, play

    def floor_cmd(self, path: Path) -> str:
        """The in-process floor (bench/alsa_floor.py) for one file, as a pipeline's tail."""
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve().parent / 'alsa_floor.py'))} " \
               f"{shlex.quote(str(path))} {RATE}"

    def aplay_cmd(self, path: Optional[Path] = None) -> str:
        cmd = f"{shlex.quote(self.aplay)} -q -t raw -f S16_LE -r {RATE} -c 1 -B 100000"
        return cmd + (f" {shlex.quote(str(path))}" if path else "")

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        for d in self.daemons:
            d.stop()
        self.fake.stop()
        self.broker.stop()
        if self.args.keep:
            print(f"bench: work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- 1, 2, 4: the main daemon ------------------------------------------------------------

    def main_daemon(self) -> None:
        rep = self.report
        client = self.client("bench")
        # The daemon under test plays in-process (alsa, what `auto` picks with pyalsaaudio) and
        # closes the device after each announcement: every hit opens the PCM, as both floors do.
        cfg = self.config("main", "bench", backend="alsa", audio={"keep_open": 0})
        daemon = self.start_daemon(cfg, client)
        online = [daemon.online_after]
        time.sleep(1.0 if self.quick else 3.0)
        idle_rss = rss_kib(daemon.pid)
        idle_threads = thread_count(daemon.pid)
        first_miss = [self.miss_sample(client, "Welcome home, the daemon has just started")]
        self.warm(client, PHRASES)
        # A second daemon keeps its device open (audio.keep_open): its hits are follow-ups.
        wclient = self.client("benchwarm")
        wdaemon = self.start_daemon(self.config("warm", "benchwarm", backend="alsa", audio={"keep_open": 3600}),
                                    wclient)
        self.warm(wclient, PHRASES)

        # 1. cache hit, interleaved with the floors --------------------------------------------
        n = self.args.hits or (20 if self.quick else 300)
        floor_files = {}
        for i, text in enumerate(PHRASES):
            floor_files[text] = self.work / f"floor-{i}.pcm"
            floor_files[text].write_bytes(pcm_for(text))
        d_lat, d_open, w_lat, f_lat, f_open, p_lat, p_open, short, w_opens = [], [], [], [], [], [], [], 0, 0
        t_start = time.monotonic()
        for i in range(n):
            text = PHRASES[i % len(PHRASES)]
            lat, opened, play = self.hit_sample(client, text)
            d_lat.append(lat)
            d_open.append(opened)
            short += play.bytes < len(pcm_for(text))
            lat, opens = self.warm_hit_sample(wclient, text)
            w_lat.append(lat)
            w_opens += opens
            lat, play = self.shell_sample("bench/floor/say", "exec " + self.aplay_cmd(floor_files[text]))
            f_lat.append(lat)
            f_open.append(play.spawned - (play.first - lat))
            short += play.bytes < len(pcm_for(text))
            lat, play = self.shell_sample("bench/floor/say", self.floor_cmd(floor_files[text]), pipe=True)
            p_lat.append(lat)
            p_open.append(play.spawned - (play.first - lat))
            short += play.bytes < len(pcm_for(text))
        self.report.timings["1 cache hit"] = time.monotonic() - t_start
        wdaemon.stop()
        self.daemons.remove(wdaemon)
        self.report.samples["hit_daemon"] = d_lat
        self.report.samples["hit_warm"] = w_lat
        self.report.samples["hit_floor"] = f_lat
        self.report.samples["hit_inprocess"] = p_lat
        s = "1. Cache hit"
        secs = [len(pcm_for(t)) / (2.0 * RATE) for t in PHRASES]
        for label, lat in (("device closed: the hit opens the PCM", d_lat),
                           ("device kept open: a follow-up, no open", w_lat)):
            for q, limit in ((50, 0.6), (90, None), (99, 1.0)):
                d, f, p = pct(lat, q), pct(f_lat, q), pct(p_lat, q)
                rep.row(s, f"cache hit ({label}), publish → first byte at sink, p{q}",
                        f"{ms(d)} = {d / f:.2f}× aplay floor, {d / p:.2f}× in-process floor",
                        f"≤ {limit:.1f}× aplay floor" + (", ≤ 1.5× in-process" if q == 50 else "") if limit else "—",
                        None if limit is None else (d / f <= limit and (q != 50 or d / p <= 1.5)))
        rep.row(s, f"PCM opens for {n} follow-ups on the kept-open device", str(w_opens), "0", w_opens == 0)
        for q in (50, 90, 99):
            rep.row(s, f"aplay floor `mosquitto_sub -C 1 && aplay FILE`, p{q}", ms(pct(f_lat, q)))
        for q in (50, 90, 99):
            rep.row(s, f"in-process floor `mosquitto_sub -C 1 | alsa_floor.py FILE`, p{q}", ms(pct(p_lat, q)))
        rep.note(s, f"{n} announcements each, the two daemons and the two floors interleaved (one sample of each "
                    f"in turn), {len(PHRASES)} phrases of {min(secs):.1f}–{max(secs):.1f} s pre-warmed in the cache, "
                    f"48 kHz; {GAP * 1000:.0f} ms idle before every publish. Both daemons play with "
                    "`audio.backend: alsa` (in-process, pyalsaaudio); the first with `keep_open: 0` (it opens the "
                    "PCM for every announcement, like both floors), the second with the device kept open, so each "
                    "of its hits follows the one before within `keep_open`: its first byte is the first non-zero "
                    "byte at the sink after the silence it fed the open device (`sound` in bench/sink_stamp.c), "
                    "and the sink counts the PCM's opens. The in-process floor (bench/alsa_floor.py) is a "
                    "Python process that has imported pyalsaaudio and read the file before the message comes; it "
                    "reads mosquitto_sub's output through a pipe and, on the payload line, opens the PCM like the "
                    "daemon (non-blocking, 20 ms periods × 5) and writes the file: the sound path without a "
                    "process start.")
        rep.note(s, f"Where the time goes (medians): publish → the PCM is opened (the sink's pipe command starts): "
                    f"daemon {ms(statistics.median(d_open))}, aplay floor {ms(statistics.median(f_open))}, "
                    f"in-process floor {ms(statistics.median(p_open))}; "
                    f"PCM open → first byte: daemon {ms(statistics.median(d_lat) - statistics.median(d_open))}, "
                    f"aplay floor {ms(statistics.median(f_lat) - statistics.median(f_open))}, "
                    f"in-process floor {ms(statistics.median(p_lat) - statistics.median(p_open))}. "
                    f"Max: daemon {ms(max(d_lat))}, kept open {ms(max(w_lat))}, aplay floor {ms(max(f_lat))}, "
                    f"in-process floor {ms(max(p_lat))}.")
        if short:
            rep.note(s, f"WARNING: {short} plays delivered fewer bytes than the phrase to the sink.")

        # 2. cache miss, interleaved with curl | aplay ---------------------------------------
        n = 3 if self.quick else 20
        self.fake.stream(ttfb=0.3, realtime_factor=4.0)
        m_lat, c_lat = [], []
        t_start = time.monotonic()
        for i in range(n):
            m_lat.append(self.miss_sample(client, f"Parcel {i + 1} was delivered to the front door"))
            self.fake.stream(ttfb=0.3, realtime_factor=4.0)
            if self.curl:
                body = json.dumps({"input": f"Packet {i + 1} was delivered to the front door", "voice_id": VOICE,
                                   "response_format": "pcm", "sample_rate": RATE})
                curl = (f"{shlex.quote(self.curl)} -s -X POST {self.fake.url}/v1/audio/speech "
                        f"-H {shlex.quote('Authorization: Bearer ' + TOKEN)} "
                        f"-H 'Content-Type: application/json' -d {shlex.quote(body)} | {self.aplay_cmd()}")
                lat, _ = self.shell_sample("bench/floor/say", curl, timeout=60)
                c_lat.append(lat)
        self.fake.stream()
        self.report.timings["2 cache miss"] = time.monotonic() - t_start
        self.report.samples["miss_daemon"] = m_lat
        self.report.samples["miss_curl"] = c_lat
        s = "2. Cache miss"
        for q in (50, 90):
            v = pct(m_lat, q)
            rep.row(s, f"cache miss (TTFB 300 ms, 4× real time), publish → first byte, p{q}", ms(v), "≤ 350 ms",
                    v <= 0.350)
        rep.row(s, "cache miss, max", ms(max(m_lat)))
        if c_lat:
            for q in (50, 90):
                rep.row(s, f"naive `mosquitto_sub -C 1 && curl | aplay`, p{q}", ms(pct(c_lat, q)))
        else:
            rep.row(s, "naive `curl | aplay`", "skipped: curl is not installed")
            rep.note(s, "curl is not installed, so the naive pipeline column is missing (apt-get install curl).")
        rep.note(s, f"{n} announcements of new text each (daemon and curl interleaved); the fake answers 300 ms "
                    "after the headers, then streams 100 ms of audio every 25 ms (4× real time). The naive "
                    "pipeline is triggered by `mosquitto_sub -C 1` like the floor, so both columns are "
                    "publish → first byte at the sink.")

        # 4. footprint -----------------------------------------------------------------------
        s = "4. Footprint"
        n = 200 if self.quick else 1000
        t_start = time.monotonic()
        busy_rss = rss_kib(daemon.pid)
        ids = []
        for i in range(n):
            ann = self.uid("burst")
            ids.append(ann)
            client.say(PHRASES[i % len(PHRASES)], ann)
        for ann in ids:
            kind, _, data = client.wait_final(ann, timeout=120)
            if kind != "finished":
                raise SystemExit(f"bench: burst announcement ended {kind}: {data}")
        burst_seconds = time.monotonic() - t_start
        time.sleep(1.0)
        after_rss = rss_kib(daemon.pid)
        hwm = rss_kib(daemon.pid, "VmHWM")
        self.report.timings["4 burst"] = time.monotonic() - t_start
        time.sleep(1.0)
        window = 5.0 if self.quick else 60.0
        c0, w0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(window)
        c1, w1 = cpu_seconds(daemon.pid), time.monotonic()
        idle_cpu = (c1 - c0) / (w1 - w0) * 100
        code = daemon.stop()
        self.daemons.remove(daemon)
        if code != 0:
            rep.note(s, f"WARNING: the daemon exited with {code} on SIGTERM.")
        starts = 1 if self.quick else 3
        for k in range(starts - 1):
            d = self.start_daemon(cfg, client)
            online.append(d.online_after)
            first_miss.append(self.miss_sample(client, f"Welcome home, the daemon has just started again ({k})"))
            d.stop()
            self.daemons.remove(d)
        worst = max(first_miss)
        rep.row("2. Cache miss", f"first cache miss after a fresh start (worst of {len(first_miss)})", ms(worst),
                "≤ 350 ms", worst <= 0.350)
        rep.note("2. Cache miss", "First miss after a start: the first announcement a just-started daemon gets is "
                 "new text (same fake settings); it pays whatever the daemon loads on first use. Samples: "
                 + ", ".join(ms(x) for x in first_miss) + ".")
        rep.row(s, "idle RSS after start (VmRSS; pyalsaaudio is not loaded before the first play)",
                f"{idle_rss / 1024:.1f} MB", "≤ 35 MB", idle_rss <= 35 * 1024)
        rep.row(s, f"RSS after a {n}-message burst (VmRSS)", f"{after_rss / 1024:.1f} MB", "≤ 50 MB",
                after_rss <= 50 * 1024)
        rep.row(s, "peak RSS over the whole run (VmHWM)", f"{hwm / 1024:.1f} MB")
        rep.row(s, f"idle CPU over {window:.0f} s (utime+stime)", f"{idle_cpu:.3f} %", "≤ 0.5 %", idle_cpu <= 0.5)
        rep.row(s, f"start → `online` (worst of {starts})", f"{max(online) * 1000:.0f} ms", "≤ 1000 ms",
                max(online) <= 1.0)
        imp = import_time(5 if not self.quick else 2)
        rep.row(s, f"import time of {imp['module']} (-X importtime, median)", f"{imp['total'] / 1000:.1f} ms")
        rep.note(s, f"The daemon is a real child process `python -m coze_speaker -c CFG run`; RSS from "
                    f"/proc/PID/status, CPU from /proc/PID/stat. Idle: {idle_threads} threads. RSS before the burst "
                    f"(after the latency runs) {busy_rss / 1024:.1f} MB. The burst of {n} cached announcements "
                    f"(published back to back, queue.max_length 5000) drained in {burst_seconds:.1f} s through the alsa "
                    f"back end (the device opened for each). "
                    f"start → online: {', '.join(f'{x * 1000:.0f} ms' for x in online)}.")
        rep.note(s, "Import time, biggest packages that coze_speaker imports (cumulative): " +
                 ", ".join(f"{name} {us / 1000:.1f} ms" for name, us in imp["top"]) + ".")
        rss_parts = import_rss()
        if rss_parts:
            rep.note(s, "RSS of the imports alone, in a fresh interpreter: " + ", ".join(
                (f"{name} {kb / 1024:.1f} MB" if name == "python" else f"+{name} {kb / 1024:.1f} MB")
                for name, kb in rss_parts) + " (each line adds what the previous ones did not load).")
        self.report.samples["import"] = imp

    # -- 7. the sound path: the alsa back end with its device kept open -------------------------

    def sound_path(self) -> None:
        """RSS with pyalsaaudio loaded, idle CPU while the device is kept open (fed silence),
        and stop → silence, on a fresh daemon with `audio.keep_open` and the main daemon's cache."""
        rep = self.report
        s = "7. Sound path (alsa)"
        t_start = time.monotonic()
        device = "benchkeep"
        client = self.client(device)
        cache_dir = self.work / "cache-main"  # warmed by the main daemon, which has stopped by now
        warmed = cache_dir.exists()
        cfg = self.config("keep", device, backend="alsa", cache_dir=cache_dir, audio={"keep_open": 3600})
        daemon = self.start_daemon(cfg, client)
        try:
            if not warmed:  # --only sound: the RSS below then includes what a miss loads
                self.warm(client, PHRASES[:1])
            time.sleep(1.0 if self.quick else 3.0)
            before = rss_kib(daemon.pid)
            off = self.sink.offset()
            time.sleep(GAP)
            ann = self.uid("keep")
            client.say(PHRASES[0], ann)
            kind, _, data = client.wait_final(ann)
            if kind != "finished" or not data.get("cached"):
                raise SystemExit(f"bench: the sound-path hit ended {kind} (cached={data.get('cached')}): {data}")
            time.sleep(1.0 if self.quick else 3.0)
            loaded = rss_kib(daemon.pid)
            threads = thread_count(daemon.pid)
            window = 5.0 if self.quick else 60.0
            c0, w0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(window)
            c1, w1 = cpu_seconds(daemon.pid), time.monotonic()
            cpu = (c1 - c0) / (w1 - w0) * 100
            opens = len(self.sink.marks("open", off))
            closes = len([p for p in self.sink.plays(off) if p.end is not None])

            # stop → silence: a miss streamed at real time (so it is still playing), stopped
            n = 3 if self.quick else 20
            stop_lat: List[float] = []
            stops_from = self.sink.offset()
            for i in range(n):
                self.fake.stream(ttfb=0.0, realtime_factor=1.0)
                text = f"Stop sample {i + 1}: the washing machine has finished its long programme"
                off = self.sink.offset()
                ann = self.uid("stop")
                time.sleep(GAP)
                client.say(text, ann)
                self.sink.wait_mark("sound", off, timeout=30)
                time.sleep(0.3)
                off = self.sink.offset()
                t_stop = client.publish(f"{BASE}/{device}/stop", "")
                client.wait_final(ann, timeout=30)
                quiet = self.sink.wait_mark("quiet", off, timeout=10)
                stop_lat.append(quiet[1] - t_stop)
            self.fake.stream()
            stop_opens = len(self.sink.marks("open", stops_from))
        finally:
            self.fake.stream()
            code = daemon.stop()
            self.daemons.remove(daemon)
        self.report.samples["stop"] = stop_lat
        rep.row(s, "idle RSS with the alsa back end loaded (after one cache hit, device kept open)",
                f"{loaded / 1024:.1f} MB (before the hit {before / 1024:.1f} MB)", "≤ 32 MB", loaded <= 32 * 1024)
        rep.row(s, f"idle CPU over {window:.0f} s with the device kept open (fed silence)", f"{cpu:.3f} %", "≤ 1 %",
                cpu <= 1.0)
        rep.row(s, f"`stop` → silence (publish → last audio byte at the sink), p50 / p99 / max of {n}",
                f"{ms(pct(stop_lat, 50))} / {ms(pct(stop_lat, 99))} / {ms(max(stop_lat))}", "≤ 20 ms",
                pct(stop_lat, 99) <= 0.020)
        rep.note(s, f"A fresh daemon (`audio.backend: alsa`, `keep_open: 3600`, the main daemon's warmed cache), "
                    f"{threads} threads while the device is kept open: RSS {'1' if self.quick else '3'} s after its "
                    f"start, then {'1' if self.quick else '3'} s after one cache hit (pyalsaaudio loaded, the PCM "
                    f"open and fed silence); CPU (utime+stime) over the next {window:.0f} s. From the hit to the end of that "
                    f"window the sink saw {opens} open(s) and {closes} close(s) of the PCM. `stop`: {n} cache misses streamed by the "
                    "fake at real time (so the daemon is still writing when the stop comes), each stopped 0.3 s "
                    "after its first audio reached the sink; the figure is from the publish of `stop` to the read "
                    "that brought the sink the last non-zero byte (`quiet` in bench/sink_stamp.c: the silence the "
                    "kept-open device is fed follows it). The sink's file plugin holds back the last 100 ms written "
                    "until the device drops or closes, so a stop that did not drop the buffer would show ~100 ms "
                    f"here. PCM opens during the stop samples: {stop_opens}.")
        if code != 0:
            rep.note(s, f"WARNING: the sound-path daemon exited with {code} on SIGTERM.")
        self.report.timings["7 sound path"] = time.monotonic() - t_start

    # -- 4. footprint: one very long announcement ------------------------------------------------

    BIG_CHARS = 8000
    BIG_AUDIO_BYTES = 31_000_000  # ~5.4 min at 48 kHz s16 mono: 8 000 characters at ~25 per second

    def big_announcement(self) -> None:
        """RSS of a daemon like the main one (48 kHz, aplay, limits.max_text_bytes 65536) before and
        after one 8 000-character announcement on a cache miss, and its peak (VmHWM) during it."""
        rep = self.report
        s = "4. Footprint"
        t_start = time.monotonic()
        chars = 1500 if self.quick else self.BIG_CHARS
        text = long_text(1, chars, parts=True)  # ASCII: characters = bytes
        # The fake voices 0.06 s per character: 8 000 characters would be 46 MB of audio at 48 kHz.
        # Cut it to a realistic speaking rate (BIG_AUDIO_BYTES for BIG_CHARS) and stream it as fast
        # as the daemon takes it, so the figure takes seconds, not the 5 minutes of its audio.
        natural = 0.06 * self.BIG_CHARS * 2 * RATE
        scale = min(1.0, self.BIG_AUDIO_BYTES / natural)
        device = "benchbig"
        client = self.client(device)
        cfg = self.config("big", device, limits={"max_text_bytes": 65536})
        daemon = self.start_daemon(cfg, client)
        try:
            time.sleep(1.0 if self.quick else 3.0)
            idle_rss = rss_kib(daemon.pid)
            reset = reset_peak_rss(daemon.pid)
            self.fake.audio_scale = scale
            self.fake.stream()
            pieces_before = len(self.fake.speech_log)
            calls_before = self.fake.speech_calls()
            before_rss = rss_kib(daemon.pid)
            time.sleep(GAP)
            off = self.sink.offset()
            ann = self.uid("big")
            t0 = client.say(text, ann)
            kind, t_final, data = client.wait_final(ann, timeout=120)
            after_rss = rss_kib(daemon.pid)
            peak = rss_kib(daemon.pid, "VmHWM")
            if kind != "finished" or data.get("cached"):
                raise SystemExit(f"bench: the {chars}-character announcement ended {kind} "
                                 f"(cached={data.get('cached')}): {data}")
            self.sink.wait_plays(off, 1, timeout=30)
            plays = [p for p in self.sink.plays(off) if p.end is not None]
            pieces = self.fake.speech_log[pieces_before:]
            calls = self.fake.speech_calls() - calls_before
            audio = sum(t.total_bytes for t in pieces)
        finally:
            self.fake.audio_scale = 1.0
            self.fake.stream()
            code = daemon.stop()
            self.daemons.remove(daemon)
        limit = idle_rss + 20 * 1024
        target = "bounded (≤ idle + 20 MB)"
        an = "an" if str(chars).startswith("8") else "a"
        rep.row(s, f"RSS after {an} {chars}-character announcement (VmRSS)",
                f"{after_rss / 1024:.1f} MB (before {before_rss / 1024:.1f} MB, {(after_rss - before_rss) / 1024:+.1f})",
                target, after_rss <= limit)
        rep.row(s, f"peak RSS during the {chars}-character announcement (VmHWM)",
                f"{peak / 1024:.1f} MB ({(peak - before_rss) / 1024:+.1f} over before)"
                + ("" if reset else ", since start"), target, peak <= limit)
        played = sum(p.bytes for p in plays)
        rep.note(s, f"Long announcement: a fresh daemon with the main daemon's settings (48 kHz, aplay into the "
                    f"sink, chime none) and limits.max_text_bytes 65536, idle {idle_rss / 1024:.1f} MB after "
                    f"{'1' if self.quick else '3'} s, gets one {chars}-character text of sentences (new text, a "
                    f"cache miss; {len(pieces)} pieces, {calls} Coze calls). The fake's audio is cut to {scale:.2f}× "
                    f"its 0.06 s per character ({audio / 1e6:.1f} MB, {audio / (2.0 * RATE):.0f} s of audio; "
                    f"{self.BIG_AUDIO_BYTES / 1e6:.0f} MB for {self.BIG_CHARS} characters) and streamed as fast as "
                    f"the daemon takes it: publish → `finished` in {t_final - t0:.1f} s, {played / 1e6:.1f} MB "
                    "reached the sink. VmRSS is read at the `finished` event; "
                    + ("VmHWM was reset just before the publish (`5` into /proc/PID/clear_refs), so it is the peak "
                       "during the announcement." if reset else
                       "the kernel refused to reset VmHWM, so it is the peak since the daemon started."))
        if played < audio:
            rep.note(s, f"WARNING: the sink got {played} bytes of the {audio} the fake sent for the long announcement.")
        if code != 0:
            rep.note(s, f"WARNING: the long-announcement daemon exited with {code} on SIGTERM.")
        self.report.timings[f"4 {chars}-character announcement"] = time.monotonic() - t_start

    # -- 5. scaling and throughput -------------------------------------------------------------

    def scaling(self) -> None:
        import cache_lookup  # bench/cache_lookup.py: its bulk helper fills a cache fast
        from coze_speaker.cache import PhraseCache

        rep = self.report
        s = "5. Scaling"
        sizes = [10, 2000, 10000] if self.quick else [10, 10000, 100000]
        n = 10 if self.quick else 100
        p50s = {}
        t_start = time.monotonic()
        for size in sizes:
            cache_dir = self.work / f"cache-scale-{size}"
            fillers = max(0, size - len(PHRASES))
            t0 = time.monotonic()
            keys: List[str] = []
            if fillers:
                with PhraseCache(cache_dir, 10 ** 12) as cache:
                    keys = cache_lookup.fill(cache, fillers)
            fill_s = time.monotonic() - t0
            device = f"bench{size}"
            client = self.client(device)
            daemon = self.start_daemon(self.config(f"scale{size}", device, cache_dir=cache_dir), client)
            self.warm(client, PHRASES)
            lat = [self.hit_sample(client, PHRASES[i % len(PHRASES)])[0] for i in range(n)]
            entries = None
            daemon.stop()
            self.daemons.remove(daemon)
            # the lookup alone, in-process, on the same directory (µs; what the daemon's cache costs)
            with PhraseCache(cache_dir, 10 ** 12) as cache:
                entries = cache.stats().entries
                rng = random.Random(size)
                pool = keys or list(cache._scan_files())
                micro = []
                for key in (rng.choice(pool) for _ in range(500)):
                    t = time.perf_counter()
                    entry = cache.lookup(key)
                    for _chunk in cache.read(entry):
                        pass
                    micro.append(time.perf_counter() - t)
            p50s[size] = pct(lat, 50)
            rep.row(s, f"cache hit at {entries} entries, p50 / p99 (end to end)",
                    f"{ms(pct(lat, 50))} / {ms(pct(lat, 99))}")
            rep.note(s, f"{entries} entries: filled in {fill_s:.1f} s; lookup + read in-process "
                        f"p50 {pct(micro, 50) * 1e6:.0f} µs, p99 {pct(micro, 99) * 1e6:.0f} µs.")
            self.report.samples.setdefault("scaling", []).append((entries, lat))
        small, big = p50s[sizes[0]], p50s[sizes[-1]]
        flat = big <= max(small * 1.2, small + 0.001)
        rep.row(s, f"flat: p50 at {sizes[-1]} vs {sizes[0]} entries", f"{big / small:.2f}×",
                "≤ 1.2× (or +1 ms)", flat)
        self.report.timings["5 scaling"] = time.monotonic() - t_start

        # queue throughput with a no-op player
        t_start = time.monotonic()
        n = 200 if self.quick else 1000
        client = self.client("benchnull")
        daemon = self.start_daemon(self.config("null", "benchnull", backend="null",
                                               cache_dir=self.work / "cache-main"), client)
        self.warm(client, PHRASES)  # hits already: cache-main holds them
        time.sleep(0.5)
        ids = [self.uid("q") for _ in range(n)]
        t0 = None
        for i, ann in enumerate(ids):
            t = client.say(PHRASES[i % len(PHRASES)], ann)
            t0 = t0 if t0 is not None else t
        last = 0.0
        for ann in ids:
            kind, t, data = client.wait_final(ann, timeout=120)
            if kind != "finished":
                raise SystemExit(f"bench: throughput announcement ended {kind}: {data}")
            last = max(last, t)
        daemon.stop()
        self.daemons.remove(daemon)
        rate = n / (last - t0)
        rep.row(s, f"queue throughput, {n} cached announcements, no-op player", f"{rate:.0f} announcements/s")
        rep.note(s, "Scaling: a fresh cache per size, filled with bench/cache_lookup.py's `fill` (bulk helper), "
                    f"then the {len(PHRASES)} phrases warmed and {10 if self.quick else 100} "
                    "hits timed end to end (aplay into the sink, like figure 1). Throughput: "
                    "`audio.backend: null` (NullPlayer, not paced), from the first publish to the last "
                    "`finished` event.")
        self.report.timings["5 throughput"] = time.monotonic() - t_start

    # -- 3. long text, paced player (in-process) -------------------------------------------

    def long_text(self) -> None:
        from coze_speaker.config import load_config
        from paced import PacedRecorder
        Daemon = import_first(*DAEMON_MODULES).Daemon

        rep = self.report
        s = "3. Long text"
        t_start = time.monotonic()
        scale = 0.02 if self.quick else 0.25
        self.fake.audio_scale = scale
        self.fake.stream(ttfb=0.3, realtime_factor=4.0)
        device = "benchlong"
        client = self.client(device)
        player = PacedRecorder(buffer=0.1)
        import logging
        handler = logging.FileHandler(self.work / "long-inprocess.log")
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        pkg = logging.getLogger("coze_speaker")
        pkg.addHandler(handler)
        pkg.propagate = False
        config = load_config(self.config("long", device, backend="null"))
        daemon = Daemon(config, player=player)
        thread = threading.Thread(target=daemon.run, name="bench-daemon", daemon=True)
        before = len(client.online)
        thread.start()
        try:
            client.wait(lambda: len(client.online) > before, 30, "online (in-process daemon)")

            def first_audio(text: str) -> float:
                """publish → first chunk at the paced player; then stop it and let the download finish."""
                time.sleep(GAP)
                player.first_chunk.clear()
                ann = self.uid("long")
                t0 = client.say(text, ann)
                if not player.first_chunk.wait(30):
                    raise SystemExit("bench: no audio reached the paced player")
                latency = player.plays[-1].first - t0
                client.publish(f"{BASE}/{device}/stop", b"")
                client.wait_final(ann, timeout=30)
                # the piece being downloaded completes into the cache (it is paid for): wait for it
                wait_until(lambda: all(t.completed for t in self.fake.speech_log), 60, 0.01, "downloads to finish")
                return latency

            pairs = 1 if self.quick else 5
            short_l, long_l = [], []
            for k in range(pairs):
                short_l.append(first_audio(f"Run {k}. " + ONE_PIECE))
                long_l.append(first_audio(long_text(k)))
            delta = statistics.median(long_l) - statistics.median(short_l)
            rep.row(s, "5000-byte text vs one-piece text, first audio (medians)",
                    f"{ms(statistics.median(long_l))} vs {ms(statistics.median(short_l))}: {delta * 1000:+.1f} ms",
                    "≤ +50 ms", delta <= 0.050)

            # the whole long text, paced in real time: any underrun is a gap
            text = long_text(99)
            n_pieces_before = len(self.fake.speech_log)
            ann = self.uid("longplay")
            client.say(text, ann)
            kind, _, data = client.wait_final(ann, timeout=1200)
            if kind != "finished":
                raise SystemExit(f"bench: the long text ended {kind}: {data}")
            play = player.plays[-1]
            timings = self.fake.speech_log[n_pieces_before:]
            expected = sum(t.total_bytes for t in timings)
            gaps = play.gaps
            rep.row(s, f"gaps while a {len(text.encode())}-byte text plays in real time ({len(timings)} pieces)",
                    f"{len(gaps)} underruns, max {max([g for _, g in gaps], default=0) * 1000:.1f} ms",
                    "0 underruns", not gaps)
            rep.note(s, f"Paced player: NullPlayer-like, 100 ms device buffer, records every chunk against the "
                        f"real-time clock (bench/paced.py). The fake answers 300 ms after the headers and streams at "
                        f"4× real time; its audio is cut to {scale:g}× the fake's usual 0.06 s per character so the "
                        f"long text plays for {play.audio_seconds:.0f} s instead of "
                        f"{play.audio_seconds / scale:.0f} s (shorter pieces make hiding the next piece's TTFB harder, "
                        f"not easier). {play.chunks} chunks, {play.bytes} of {expected} bytes played, "
                        f"wall time {play.wall_seconds:.1f} s for {play.audio_seconds:.1f} s of audio.")
            rep.note(s, "First audio, each sample: one-piece " + ", ".join(f"{x * 1000:.0f}" for x in short_l)
                     + " ms; 5000-byte " + ", ".join(f"{x * 1000:.0f}" for x in long_l) + " ms (publish → first "
                     "chunk handed to the player; each one stopped after its first audio).")
            self.report.samples["long_pieces"] = [(t.t_request, t.t_first_byte, t.t_last_byte) for t in timings]
            self.report.samples["long_play"] = play
        finally:
            daemon.request_stop()
            thread.join(15)
            self.fake.audio_scale = 1.0
            self.fake.stream()
        self.report.timings["3 long text"] = time.monotonic() - t_start

    # -- 6. cost: the household week ----------------------------------------------------------

    def cost(self) -> None:
        rep = self.report
        s = "6. Cost"
        t_start = time.monotonic()
        self.fake.stream()
        device = "benchweek"
        client = self.client(device)
        daemon = self.start_daemon(self.config("week", device, backend="null"), client)
        items = household.week(seed=self.args.seed)
        per_kind: Dict[str, List[int]] = {"fixed": [0, 0], "templated": [0, 0]}
        warm_calls = warm_anns = 0
        by_template: Dict[str, int] = {}
        for item in items:
            before = self.fake.speech_calls()
            ann = self.uid("week")
            client.say(item.text, ann)
            kind, _, data = client.wait_final(ann, timeout=60)
            if kind != "finished":
                raise SystemExit(f"bench: household announcement ended {kind}: {data}")
            calls = self.fake.speech_calls() - before
            if item.day == 0:
                warm_calls += calls
                warm_anns += 1
                continue
            per_kind[item.kind][0] += 1
            per_kind[item.kind][1] += calls
            if calls:
                by_template[item.template] = by_template.get(item.template, 0) + calls
        daemon.stop()
        self.daemons.remove(daemon)
        anns = sum(v[0] for v in per_kind.values())
        calls = sum(v[1] for v in per_kind.values())
        ratio = calls / anns
        rep.row(s, "Coze calls per announcement, household week after day 1", f"{ratio:.3f} ({calls}/{anns})",
                "≤ 0.1", ratio <= 0.1)
        rep.row(s, "… of which templated phrases with numbers",
                f"{per_kind['templated'][1]} calls / {per_kind['templated'][0]} announcements")
        rep.row(s, "… of which fixed phrases",
                f"{per_kind['fixed'][1]} calls / {per_kind['fixed'][0]} announcements")
        projections = household.project_clause_cache(items)
        four = household.week(seed=self.args.seed, days=28)
        steady = household.project_clause_cache(four, warmup_days=21)
        rep.row(s, "projection: today's whole-phrase cache in week 4 (weeks 1–3 warm-up)",
                f"{steady['whole phrase (today)']['ratio']:.3f}")
        for name in ("clauses", "clauses+numbers"):
            rep.row(s, f"projection, not implemented: {name} cached separately",
                    f"{projections[name]['ratio']:.3f} (week 1); {steady[name]['ratio']:.3f} (week 4)")
        rep.note(s, f"Trace: bench/household.py, seed {self.args.seed}: {len(items)} announcements over 7 days "
                    f"({sum(1 for i in items if i.kind == 'templated')} templated with a number); day 1 "
                    f"({warm_anns} announcements, {warm_calls} calls) is the warm-up. Replayed through the daemon "
                    "(`audio.backend: null`) as fast as it plays, dedup off; calls counted at the fake Coze.")
        rep.note(s, "Calls after warm-up by phrase: " + ", ".join(
            f"\"{t}\" {c}" for t, c in sorted(by_template.items(), key=lambda kv: -kv[1])) + ".")
        rep.note(s, f"Offline replay of the same trace with today's whole-phrase key gives "
                    f"{projections['whole phrase (today)']['ratio']:.3f} (cross-check of the measured figure); "
                    f"in week 4 of a 4-week trace (weeks 1–3 as warm-up): whole phrase "
                    f"{steady['whole phrase (today)']['ratio']:.3f}, clauses {steady['clauses']['ratio']:.3f}, "
                    f"clauses+numbers {steady['clauses+numbers']['ratio']:.3f}.")
        self.report.samples["cost"] = {"ratio": ratio, "per_kind": per_kind, "by_template": by_template,
                                       "projections": projections, "steady": steady}
        self.report.timings["6 cost"] = time.monotonic() - t_start


ONE_PIECE = "The washing machine has finished its programme, the laundry can be taken out now."

_SENTENCES = [
    "Good morning, this is the house speaking with the long daily briefing.",
    "The weather today starts cloudy with a light breeze from the west, and the afternoon should bring some sun.",
    "The bins for paper and plastic are collected tomorrow morning, so please put them out tonight.",
    "The dishwasher finished its cycle overnight and the clean dishes are ready to be put away.",
    "The garden irrigation ran for twenty minutes at dawn and the soil moisture is back to normal.",
    "Remember that the piano lesson moved to Thursday this week, at half past four in the afternoon.",
    "The living room window was open for most of the night, the heating has been lowered to save energy.",
    "Three parcels are expected today, one of them needs a signature at the front door.",
]


def long_text(k: int, size: int = 5000, parts: bool = False) -> str:
    """A deterministic text of exactly ``size`` UTF-8 bytes, made of sentences.

    The sentences repeat every len(_SENTENCES), so two ~1 KB pieces of a long text can be the
    same (the second one then a cache hit). ``parts`` starts every round of the sentences with
    "Part N." so that no piece repeats and every piece is a miss.
    """
    out = f"Briefing {k}. "
    i = k
    while len(out.encode()) < size:
        if parts and (i - k) % len(_SENTENCES) == 0:
            out += f"Part {(i - k) // len(_SENTENCES) + 1}. "
        out += _SENTENCES[i % len(_SENTENCES)] + " "
        i += 1
    out = out.encode()[:size].decode(errors="ignore").rstrip()
    while len(out.encode()) < size:
        out += "."
    return out


# --------------------------------------------------------------------------- import time


def import_time(runs: int) -> Dict[str, Any]:
    """`python -X importtime -c "import coze_speaker.daemon"` (coze_speaker.app.daemon when the package
    has its subpackages): the package's cumulative µs (median of runs), and which third-party/stdlib
    packages that coze_speaker imports directly cost the most."""
    totals: List[int] = []
    groups: Dict[str, int] = {}
    module = daemon_module()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=str(ROOT), env=env, check=True)
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                           cwd=str(ROOT), env=env, capture_output=True, text=True, check=True)
        entries = []  # (depth, name, cumulative µs) in the order printed (children before parents)
        for line in r.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            parts = line[len("import time:"):].split("|")
            try:
                cumulative = int(parts[1])
            except ValueError:
                continue
            raw = parts[2]
            entries.append(((len(raw) - len(raw.lstrip(" "))) // 2, raw.strip(), cumulative))
        totals.append(sum(c for d, n, c in entries if d == 0 and n.split(".")[0] == "coze_speaker"))
        groups = {}
        parents: Dict[int, str] = {}
        for depth, name, cumulative in reversed(entries):  # a parent is printed after its children
            parents[depth] = name
            parent = parents.get(depth - 1, "") if depth else ""
            top = name.split(".")[0]
            if parent.split(".")[0] == "coze_speaker" and top != "coze_speaker":
                groups[top] = groups.get(top, 0) + cumulative
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:6]
    return {"total": statistics.median(totals), "runs": totals, "top": top, "module": module}


def import_rss() -> List[tuple]:
    """RSS added by importing each big dependency in turn, in a fresh interpreter (kB)."""
    code = ("import sys\n"
            "def rss():\n"
            "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
            "prev = rss(); print('python', prev)\n"
            "for m in ['sqlite3', 'ssl', 'yaml', 'paho.mqtt.client',\n"
            f"          {daemon_module()!r}, 'alsaaudio']:\n"
            "    __import__(m); now = rss(); print(m, now - prev); prev = now\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = []
    for line in r.stdout.splitlines():
        name, kb = line.split()
        out.append((name, int(kb)))
    return out


# --------------------------------------------------------------------------- output


def code_version() -> Dict[str, str]:
    """The daemon's code under test: git HEAD, and a hash of coze_speaker/**/*.py as they are on disk
    (others may be editing the daemon while the benchmark runs). Subpackages count; with none
    (the flat layout) the hash is the one of coze_speaker/*.py."""
    import hashlib
    digest = hashlib.sha256()
    package = ROOT / "coze_speaker"
    for path in sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    head, dirty = "?", False
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(ROOT), capture_output=True,
                              text=True, timeout=5).stdout.strip() or "?"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "coze_speaker"], cwd=str(ROOT),
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"head": head, "dirty": "yes" if dirty else "no", "hash": digest.hexdigest()[:12]}


def machine_info() -> Dict[str, str]:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: List[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"

    return {"nproc": str(os.cpu_count()), "cpu": model, "arch": platform.machine(),
            "python": platform.python_version(), "kernel": platform.release(),
            "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            "mosquitto": version([which("mosquitto") or "mosquitto", "-h"]),
            "aplay": version(["aplay", "--version"])}


def print_table(report: Report) -> None:
    print()
    print(f"{'figure':<66} {'value':<36} {'target':<22} met?")
    section = None
    for r in report.rows:
        if r["section"] != section:
            section = r["section"]
            print(f"-- {section}")
        print(f"  {r['figure']:<64} {r['value']:<36} {r['target']:<22} {r['met_s']}")


ANALYSIS_MARKER = "<!-- analysis: hand-written below this line, kept by bench/run.py -->"


def write_markdown(path: Path, report: Report, info: Dict[str, str], png: Optional[Path], plot_error: Optional[str],
                   command: str, started: str, seconds: float, sink_compiled: bool) -> None:
    # Everything after ANALYSIS_MARKER in an existing report is hand-written (profiles of the
    # misses, plans) and is kept when the generated part above it is rewritten.
    analysis = ""
    if path.exists() and ANALYSIS_MARKER in path.read_text():
        analysis = path.read_text().split(ANALYSIS_MARKER, 1)[1]
    lines = ["# Benchmarks", ""]
    lines += [f"Generated by `{command}` on {started}, in {seconds:.0f} s. Every figure below comes from that one run.",
              ""]
    if report.code:
        c = report.code
        lines += [f"Daemon code under test: commit {c['head']}"
                  + (" with uncommitted changes in coze_speaker/" if c["dirty"] == "yes" else "")
                  + f" (coze_speaker/**/*.py sha256 {c['hash']}).", ""]
    if report.code_changed:
        lines += ["**WARNING: coze_speaker/ changed while this run was going, so its figures mix two versions "
                  "of the daemon. Run it again.**", ""]
    if report.quick:
        lines += ["**This is a `--quick` (smoke) run: few iterations, smaller sizes, targets not judged.** "
                  "Run `python bench/run.py` for the real figures.", ""]
    lines += ["## Machine", "",
              f"- {info['nproc']} cores, {info['cpu']} ({info['arch']}), {info['os']}, Linux {info['kernel']}",
              f"- Python {info['python']}; {info['mosquitto']}; {info['aplay']}",
              "- **This machine is x86-64, not a Raspberry Pi.** Absolute times on a Pi 3/4/Zero 2 will be "
              "several times higher; the ratios to the floor (same machine, same sink) are the portable part.",
              "- There is no sound card: ALSA's default PCM is a hermetic `file` sink over a `null` PCM whose pipe "
              "command stamps the first byte of every play (`bench/sink_stamp.c`"
              + ("" if sink_compiled else "; no C compiler was found, so the slower Python fallback was used")
              + "). The `null` PCM has no clock: plays finish as fast as the data comes.",
              ""]
    lines += ["## Results", "", "| figure | value | target | met? |", "|---|---|---|---|"]
    section = None
    for r in report.rows:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"| **{section}** | | | |")
        cells = (r["figure"], r["value"], r["target"], r["met_s"])
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    missed = [r for r in report.rows if r["met"] is False and not report.quick]
    if missed:
        lines += ["Missed in this run: " + "; ".join(f"{r['figure']} ({r['value']}, target {r['target']})"
                                                  for r in missed) + "."
                  + (" See *Misses: profiles and plans* below." if analysis else ""), ""]
    if png is not None:
        lines += ["## Latency plot", "", f"![latency]({os.path.relpath(png, path.parent)})", ""]
    else:
        lines += ["## Latency plot", "", f"No plot in this run: {plot_error}. Install the extra: "
                  "`pip install -e .[bench]`.", ""]
    lines += ["## How each figure is measured", ""]
    for section in sorted(report.notes):
        lines.append(f"**{section}.** " + " ".join(report.notes[section]))
        lines.append("")
    lines += ["Stage times of this run: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.timings.items()) + ".",
              ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    if analysis:
        text += "\n" + ANALYSIS_MARKER + analysis
    path.write_text(text)


def plot(path: Path, report: Report) -> Optional[str]:
    """Write the latency PNG; returns an error string when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    smp = report.samples
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))

    def cdf(ax, values, label, style="-"):
        if not values:
            return
        xs = sorted(v * 1000 for v in values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, style, where="post", label=f"{label} (n={len(xs)})")

    ax = axes[0]
    cdf(ax, smp.get("hit_daemon"), "coze-speaker, alsa (cache hit, opens the PCM)")
    cdf(ax, smp.get("hit_warm"), "coze-speaker, alsa (follow-up, device kept open)")
    cdf(ax, smp.get("hit_floor"), "floor: mosquitto_sub && aplay", "--")
    cdf(ax, smp.get("hit_inprocess"), "floor: mosquitto_sub | in-process open + write", ":")
    ax.set_title("1. Cache hit: publish → first byte at the sink")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of announcements")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)

    ax = axes[1]
    cdf(ax, smp.get("miss_daemon"), "coze-speaker (cache miss)")
    cdf(ax, smp.get("miss_curl"), "naive: mosquitto_sub && curl | aplay", "--")
    ax.axvline(350, color="red", lw=0.8, ls=":", label="target 350 ms")
    ax.set_title("2. Cache miss (TTFB 300 ms, 4× real time)")
    ax.set_xlabel("ms")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)

    ax = axes[2]
    scaling = smp.get("scaling") or []
    if scaling:
        ax.boxplot([[v * 1000 for v in lat] for _, lat in scaling], showfliers=False)
        ax.set_xticks(range(1, len(scaling) + 1), [f"{n:,}" for n, _ in scaling])
        ax.set_title("5. Cache hit vs cache entries (whiskers 1.5 IQR)")
        ax.set_xlabel("entries in the cache")
        ax.set_ylabel("publish → first byte, ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(("QUICK RUN — " if report.quick else "") + "coze-speaker latency, x86-64 (not a Pi)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations, no thresholds (< 60 s)")
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown report (default: docs/benchmarks.md)")
    parser.add_argument("--png", default=None, help="latency plot (default: latency.png beside --out)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the household week")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # e.g. "main,long" while developing
    parser.add_argument("--hits", type=int, default=0, help=argparse.SUPPRESS)  # cache-hit samples (A/B runs)
    args = parser.parse_args(argv)
    out = Path(args.out)
    png = Path(args.png) if args.png else out.with_name("latency.png")
    for tool in ("mosquitto_sub",):
        if which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (apt-get install mosquitto-clients)")

    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    code_before = code_version()
    t0 = time.monotonic()
    bench = Bench(args)
    print(f"bench: work directory {bench.work}; {'quick' if args.quick else 'full'} run", flush=True)
    stages = [("main", bench.main_daemon), ("sound", bench.sound_path), ("big", bench.big_announcement),
              ("scaling", bench.scaling),
              ("long", bench.long_text),
              ("cost", bench.cost)]
    only = set(args.only.split(",")) if args.only else None
    try:
        for name, stage in stages:
            if only and name not in only:
                continue
            print(f"bench: {name} …", flush=True)
            stage()
    finally:
        bench.close()
    seconds = time.monotonic() - t0
    report = bench.report
    code_after = code_version()
    report.code = code_before
    report.code_changed = code_after["hash"] != code_before["hash"]
    if report.code_changed:
        print("bench: WARNING: coze_speaker/ changed while the benchmark ran; the figures mix two versions",
              file=sys.stderr)
    # the table in the order of the brief
    order = ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    report.rows.sort(key=lambda r: order.index(r["section"][:2]))
    print_table(report)
    plot_error = plot(png, report)
    if plot_error:
        print(f"bench: no plot: {plot_error}")
    command = "python bench/run.py" + (" --quick" if args.quick else "") + \
              (f" --out {args.out}" if args.out != "docs/benchmarks.md" else "")
    write_markdown(out, report, machine_info(), None if plot_error else png, plot_error, command, started, seconds,
                   bench.sink.compiled)
    print(f"bench: wrote {out}" + ("" if plot_error else f" and {png}") + f" in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
