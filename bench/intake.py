"""Intake of a burst: N QoS 1 say messages published while one announcement holds the queue.

    python bench/intake.py [--quick] [--count N] [--before REV[=LABEL] ...] [--keep]

Starts its own mosquitto (127.0.0.1, a free port, the tests' Broker: no inflight limit, room
for 100 000 queued messages per client), the fake Coze in-process, and the daemon as
`python -m coze_speaker -c CFG run` with `audio.backend: null`. A long announcement is
streamed by the fake in real time, so it holds the queue; then N say messages are published
back to back (QoS 1, one paho client) and the clock runs from the first publish until the
N-th `queued` event has reached the bench's subscriber. `queued` goes out after the
announcement is in the journal, so it is also the time until the journal holds all N.

Rows: the floor (`mosquitto_sub -q 1 -C N` receiving the same burst from the same broker:
what the broker and one client can do at all), the daemon of earlier commits
(`--before REV[=LABEL]`, repeatable: its coze_speaker/ from `git archive`, run the same way),
and the daemon of this tree. Also the cost of one fdatasync of an appended line in the state directory: what
each message would pay without group commit (the daemon syncs once per batch it sends). Prints a markdown section for
docs/benchmarks.md. Everything stays on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (BASE, ROOT, TOKEN, stop_process, BenchFake, cpu_seconds, daemon_config, rss_kib,  # noqa: E402
                     start_broker, wait_subscribed, which)

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

#: ~4 minutes of audio at the fake's 0.06 s per character: it holds the queue for any row.
HEAD_TEXT = " ".join(f"This long announcement holds the queue, sentence {n}." for n in range(80))


class Events:
    """Subscribes to one speaker's events; keeps the arrival time of each `queued` of the burst."""

    def __init__(self, port: int, device: str, prefix: str, expected: int) -> None:
        self.prefix = prefix
        self.expected = expected
        self.queued: List[float] = []
        self.kinds: Dict[str, int] = {}
        self.started: Dict[str, float] = {}
        self.online = threading.Event()
        self.all_queued = threading.Event()
        self._lock = threading.Lock()
        self.event_topic = f"{BASE}/{device}/event"
        self.avail_topic = f"{BASE}/{device}/availability"
        self.client = _client(f"bench-events-{device}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(self.event_topic, 1), (self.avail_topic, 1)])
        if not subscribed.wait(10):
            raise SystemExit("bench: the event subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        t = time.monotonic()
        if message.topic == self.avail_topic:
            if message.payload == b"online" and not message.retain:
                self.online.set()
            return
        try:
            data = json.loads(message.payload)
        except ValueError:
            return
        ident, kind = str(data.get("id")), data.get("event")
        with self._lock:
            if not ident.startswith(self.prefix):
                if kind == "started":
                    self.started[ident] = t
                return
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if kind == "queued":
                self.queued.append(t)
                if len(self.queued) >= self.expected:
                    self.all_queued.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _client(name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    return client


def publish_burst(port: int, topic: str, count: int, prefix: str) -> tuple:
    """Publish count say messages, QoS 1, back to back; (monotonic time of the first publish,
    seconds until the broker acknowledged the last)."""
    client = _client("bench-burst")
    client.connect("127.0.0.1", port)
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    payloads = [json.dumps({"text": f"Queued announcement number {n:05d}.", "id": f"{prefix}{n:05d}"})
                for n in range(count)]
    try:
        t0 = time.monotonic()
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(120)
        acked = time.monotonic() - t0
    finally:
        client.disconnect()
        client.loop_stop()
    return t0, acked


class Daemon:
    """`python -m coze_speaker -c CFG run` from a given source tree (this one, or an older commit's)."""

    def __init__(self, code: Path, config: Path, log: Path) -> None:
        env = dict(os.environ)
        for var in ("COZE_API_TOKEN", "COZE_SPEAKER_CONFIG"):
            env.pop(var, None)
        env["PYTHONPATH"] = str(code)
        self.log_path = log
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "coze_speaker", "-c", str(config), "run"],
                                     cwd=str(code), env=env, stdout=self.log, stderr=self.log)

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.log.close()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.count = args.count or (1000 if args.quick else 6000)
        self.work = Path(tempfile.mkdtemp(prefix="coze-speaker-intake-"))
        self.broker = start_broker(self.work)
        self.fake = BenchFake(token=TOKEN).start()
        self.fake.stream(realtime_factor=1.0)  # the head streams in real time: it holds the queue
        self.rows: List[Dict[str, object]] = []
        self.timeout = 60.0 if args.quick else 900.0
        self.fs = filesystem(self.work)

    def close(self) -> None:
        self.fake.stop()
        self.broker.stop()
        if self.args.keep:
            print(f"bench: work directory kept: {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- the floor ------------------------------------------------------------------------

    def floor(self) -> None:
        sub, stdbuf = which("mosquitto_sub"), which("stdbuf")
        if not sub or not stdbuf:
            raise SystemExit("bench: mosquitto_sub and stdbuf are needed for the floor")
        topic = f"{BASE}/floor/say"
        cmd = [stdbuf, "-oL", sub, "-h", "127.0.0.1", "-p", str(self.broker.port), "-q", "1", "-C", str(self.count),
               "-t", topic, "-d"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_subscribed(proc)
        done = threading.Event()
        ended: List[float] = []

        def drain() -> None:  # read everything, so the child never blocks on a full pipe
            assert proc.stdout is not None
            for _ in proc.stdout:
                pass
            ended.append(time.monotonic())
            done.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        t0, acked = publish_burst(self.broker.port, topic, self.count, "f")
        if not done.wait(self.timeout):
            proc.kill()
            raise SystemExit("bench: mosquitto_sub did not receive the whole burst")
        proc.wait(10)
        self.rows.append({"label": f"floor: `mosquitto_sub -q 1 -C {self.count}` receives the burst",
                          "total": ended[0] - t0, "acked": acked})

    # -- a daemon -------------------------------------------------------------------------

    def daemon(self, label: str, code: Path, name: str) -> None:
        device = f"intake-{name}"
        state = self.work / f"state-{name}"
        config = daemon_config(self.work / f"{name}.yaml", fake=self.fake, broker_port=self.broker.port,
                               device=device, cache_dir=self.work / f"cache-{name}", state_dir=state,
                               backend="null", queue={"max_length": self.count + 100, "ttl": 3600})
        prefix = "b"
        events = Events(self.broker.port, device, prefix, self.count)
        daemon = Daemon(code, config, self.work / f"{name}.log")
        try:
            if not events.online.wait(30):
                raise SystemExit(f"bench: the {name} daemon did not come online:\n{daemon.log_path.read_text()[-2000:]}")
            say = f"{BASE}/{device}/say"
            hold = _client("bench-head")
            hold.connect("127.0.0.1", self.broker.port)
            hold.loop_start()
            hold.publish(say, json.dumps({"text": HEAD_TEXT, "id": "head"}), qos=1).wait_for_publish(10)
            hold.disconnect()
            hold.loop_stop()
            deadline = time.monotonic() + 30
            while "head" not in events.started:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: the head announcement did not start:\n{daemon.log_path.read_text()[-2000:]}")
                time.sleep(0.01)
            cpu0 = cpu_seconds(daemon.proc.pid)
            t0, acked = publish_burst(self.broker.port, say, self.count, prefix)
            if not events.all_queued.wait(self.timeout):
                raise SystemExit(f"bench: {len(events.queued)} of {self.count} queued after {self.timeout:.0f} s "
                                 f"({name}); events: {events.kinds}")
            cpu = cpu_seconds(daemon.proc.pid) - cpu0
            rss = rss_kib(daemon.proc.pid)
            journal = sum(p.stat().st_size for p in state.glob("queue*"))
            still_playing = events.kinds.get("started", 0) == 0
        finally:
            daemon.stop()
            events.close()
        times = events.queued
        k = min(1000, self.count // 2)
        self.rows.append({"label": label, "total": times[-1] - t0, "acked": acked,
                          "first": times[k - 1] - t0, "last": times[-1] - times[-k - 1], "k": k,
                          "cpu_ms": cpu * 1000 / self.count, "rss": rss, "journal": journal,
                          "held": still_playing, "other": {k_: v for k_, v in events.kinds.items() if k_ != "queued"}})

    # -- fdatasync ------------------------------------------------------------------------

    def fdatasync_cost(self, appends: int = 200) -> float:
        """Median seconds of append + fdatasync of a journal-sized line in the state directory."""
        path = self.work / "fsync-probe.jsonl"
        line = (json.dumps({"op": "add", "entry": {"text": "Queued announcement number 00001.", "id": "b00001",
                                                   "priority": "normal", "deadline_wall": time.time()}}) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        samples = []
        try:
            for _ in range(appends):
                t = time.perf_counter()
                os.write(fd, line)
                os.fdatasync(fd)
                samples.append(time.perf_counter() - t)
        finally:
            os.close(fd)
        return statistics.median(samples)


def checkout(rev: str, into: Path) -> Path:
    """coze_speaker/ as it was at rev (git archive), to run the earlier daemon the same way."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "coze_speaker"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=5).stdout.splitlines()
        return out[1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def markdown(bench: Bench, fsync: float, before: List[str], seconds: float) -> str:
    n = bench.count
    model = "?"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"
    out = [f"## Intake: {n:,} queued messages".replace(",", " "), "",
           f"`python bench/intake.py{' --quick' if bench.args.quick else ''}"
           f"{''.join(f' --before {shlex.quote(b)}' for b in before)}` on {head} (+ working tree), {os.cpu_count()} × {model}, "
           f"Python {platform.python_version()}, state dir on {bench.fs}; {seconds:.0f} s in all. "
           f"One announcement streams in real time and holds the queue while {n} say messages (QoS 1) are "
           f"published back to back; the clock runs from the first publish to the {n}th `queued` event at a "
           "subscriber (`queued` goes out once the announcement is in the journal).", "",
           f"| | all {n} `queued` | first {min(1000, n // 2)} | last {min(1000, n // 2)} | broker acked the burst "
           "| daemon CPU per message | journal on disk after |",
           "|---|---|---|---|---|---|---|"]
    for row in bench.rows:
        if "first" in row:
            out.append(f"| {row['label']} | {row['total']:.2f} s | {row['first']:.2f} s | {row['last']:.2f} s "
                       f"| {row['acked']:.2f} s | {row['cpu_ms']:.2f} ms | {float(str(row['journal'])) / 1e6:.2f} MB |")
        else:
            out.append(f"| {row['label']} | {row['total']:.2f} s | | | {row['acked']:.2f} s | | |")
    odd = [f"{r['label']}: {r['other']}" for r in bench.rows if r.get("other")]
    loose = [r["label"] for r in bench.rows if "held" in r and not r["held"]]
    out += ["", f"An fdatasync of one appended journal line in the same directory: median "
                f"{fsync * 1000:.2f} ms (200 appends): what each message would pay alone; the daemon pays "
                "one per batch of events it sends (group commit), and a message that arrives alone pays one."]
    if odd:
        out.append("Other events during the burst (should be none): " + "; ".join(odd) + ".")
    if loose:
        out.append("Warning: the holding announcement had ended before the burst was queued in: " + ", ".join(str(x) for x in loose))
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 000 messages, short timeouts")
    parser.add_argument("--count", type=int, help="messages in the burst (default 6000, 1000 with --quick)")
    parser.add_argument("--before", metavar="REV[=LABEL]", action="append", default=[],
                        help="also run coze_speaker/ as of this git revision (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, daemon logs)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    bench = Bench(args)
    try:
        bench.floor()
        for n, spec in enumerate(args.before):
            rev, _, label = spec.partition("=")
            code = checkout(rev, bench.work / f"before{n}")
            bench.daemon(f"{rev}: {label or 'an earlier commit'}", code, f"before{n}")
        bench.daemon("now: append-only journal, one fdatasync per batch sent (group commit)", ROOT, "now")
        fsync = bench.fdatasync_cost()
    finally:
        bench.close()
    print(markdown(bench, fsync, args.before, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
