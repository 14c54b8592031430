"""Where a cache hit's milliseconds go: a timeline of the daemon's steps, publish → first sound.

    python bench/trace_hit.py [-n 100] [--backend alsa] [--keep-open 3600]

An investigation tool, not part of bench/run.py. It runs the same setup as figure 1
(mosquitto, fake Coze, the stamping ALSA sink, the daemon as a child process; by default the
in-process alsa back end with the device kept open) but the child wraps a few daemon methods
(by monkeypatching, nothing in coze_speaker/ changes) to log CLOCK_MONOTONIC stamps, then
prints the median time from the publish to each step. Run it before and after a change to the
daemon's hot path.

The wrapped methods are listed in WRAPPED; one that is not there is skipped, and the tool
exits without running (status 0) when the core of the path is not where it looks. (The
monkeypatched experiments of earlier layouts, quoted in docs/benchmarks.md, were removed with
the layout they patched.)
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# --------------------------------------------------------------------------- what is wrapped, where

#: (module, class, method, mark): each call's entry is stamped as "mark>" and its return as "mark<"
WRAPPED = [
    ("coze_speaker.mqtt.bridge", "MqttBridge", "_handle_message", "on_message"),
    ("coze_speaker.mqtt.frontend", "MqttFrontEnd", "handle", "intake.handle"),
    ("coze_speaker.queue.worker", "Announcer", "submit", "submit"),
    ("coze_speaker.queue.worker", "Announcer", "_play", "play"),
    ("coze_speaker.voice.source", "AudioSource", "open", "source.open"),
    ("coze_speaker.voice.source", "OpenSpeech", "_produce", "speech.produce"),
    ("coze_speaker.voice.source", "AudioSource", "is_cached", "source.is_cached"),
    ("coze_speaker.queue.worker", "Announcer", "_rounds", "rounds"),
    ("coze_speaker.queue.worker", "Announcer", "_progress", "progress"),
    ("coze_speaker.cache.store", "PhraseCache", "lookup", "cache.lookup"),
    ("coze_speaker.sound.speaker", "Speaker", "play", "speaker.play"),
    ("coze_speaker.sound.player", "_Source", "_run", "player.source"),
    ("coze_speaker.sound.alsa_player", "AlsaPlayer", "_acquire", "alsa.acquire"),
    ("coze_speaker.sound.alsa_player", "AlsaPlayer", "_write", "alsa.write"),
    ("coze_speaker.sound.aplay", "AplayPlayer", "_spawn", "aplay.spawn"),
]


class Unsupported(Exception):
    """The code under test does not have (under these names) what the tracer wraps."""


def resolve() -> list:
    """(class, method, mark) for every wrapped method this layout has; raises Unsupported if
    the core of the path (intake, worker, speaker) is not where the tracer looks."""
    import importlib
    found, missing = [], []
    for module, cls_name, attr, mark in WRAPPED:
        try:
            cls = getattr(importlib.import_module(module), cls_name)
            getattr(cls, attr)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{cls_name}.{attr}")
            continue
        found.append((cls, attr, mark))
    core = {"submit", "play", "speaker.play"}
    if not core <= {m for _, _, m in found}:
        raise Unsupported("; ".join(missing))
    return found


# --------------------------------------------------------------------------- the child


def child(config_path: str, log_path: str) -> int:
    from coze_speaker.config import load_config

    try:
        wrapped = resolve()
    except Unsupported as exc:
        print(f"trace_hit: skipped: {exc}", file=sys.stderr)
        return 3
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()

    def mark(name: str) -> None:
        t = time.monotonic()
        with lock:
            os.write(fd, f"{name} {t:.6f} {threading.current_thread().name}\n".encode())

    def around(cls, attr, name):
        original = getattr(cls, attr)

        @functools.wraps(original)
        def wrapper(*a, **kw):
            mark(name + ">")
            try:
                return original(*a, **kw)
            finally:
                mark(name + "<")
        setattr(cls, attr, wrapper)

    for cls, attr, name in wrapped:
        around(cls, attr, name)

    import logging
    logging.basicConfig(level=logging.WARNING)
    from harness import daemon_module
    import importlib
    return importlib.import_module(daemon_module()).Daemon(load_config(config_path)).run()


# --------------------------------------------------------------------------- the parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--backend", default="aplay")
    parser.add_argument("--keep-open", type=float, default=3600.0, help="audio.keep_open of the traced daemon")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)

    import subprocess

    from harness import TOKEN, BenchFake, start_broker, Client, StampSink, daemon_config
    from run import GAP, PHRASES

    try:  # before starting anything: does this layout have what the child wraps?
        resolve()
    except Unsupported as exc:
        print(f"trace_hit: skipped: this coze_speaker does not have what the tracer wraps under the names it "
              f"knows: {exc}. Update CLASSES / PATCH_NEEDS in bench/trace_hit.py to the new layout.", file=sys.stderr)
        return 0

    work = Path(tempfile.mkdtemp(prefix="trace-hit-"))
    broker = start_broker(work)
    fake = BenchFake(token=TOKEN).start()
    sink = StampSink(work / "alsa")
    cfg = daemon_config(work / "d.yaml", fake=fake, broker_port=broker.port, device="trace",
                        cache_dir=work / "cache", state_dir=work / "state", backend=args.backend,
                        audio={"keep_open": args.keep_open})
    log = work / "marks.log"
    client = Client(broker.port, "trace")
    env = sink.env()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(cfg), str(log)], env=env)
    try:
        client.wait(lambda: client.online or proc.poll() is not None, 30, "online")
        if proc.poll() is not None:
            raise SystemExit(f"trace_hit: the traced daemon exited with {proc.returncode}")
        spy = None
        if os.environ.get("TRACE_PYSPY"):  # sample the daemon while the hits run
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "1000", "--format", "raw",
                                    "--threads", "-o", os.environ["TRACE_PYSPY"]],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        for i, text in enumerate(PHRASES):
            client.say(text, f"w{i}")
            client.wait_final(f"w{i}")
        rows = []
        for i in range(args.n):
            time.sleep(GAP)
            off_sink, off_log = sink.offset(), log.stat().st_size
            t0 = client.say(PHRASES[i % len(PHRASES)], f"h{i}")
            client.wait_final(f"h{i}")
            sound = sink.wait_mark("sound", off_sink)
            with open(log) as f:
                f.seek(off_log)
                marks = [line.split() for line in f.read().splitlines()]
            row = {}
            for kind in ("queued", "started", "finished"):
                hit = client.events.get(f"h{i}", {}).get(kind)
                if hit:
                    row[f"event `{kind}` at the bench"] = hit[0] - t0
            for name, t, _thread in marks:
                row.setdefault(name, float(t) - t0)  # first occurrence
            opens = sink.marks("open", off_sink)
            if opens:
                row["sink: PCM opened"] = opens[0][1] - t0
            row["sink: first sound"] = sound[1] - t0
            rows.append(row)
            if i == args.n - 1 and os.environ.get("TRACE_DUMP"):
                for name, t, thread in marks:
                    print(f"  {(float(t) - t0) * 1000:8.2f} {name:<20} {thread}")
        if os.environ.get("TRACE_SLOWEST"):  # the timelines of the slowest samples
            key = "sink: first sound"
            for row in sorted(rows, key=lambda r: -r.get(key, 0))[:int(os.environ["TRACE_SLOWEST"])]:
                print("  slow sample: " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in sorted(row.items(), key=lambda kv: kv[1])))
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        names = sorted({k for r in rows for k in r}, key=lambda k: statistics.median([r[k] for r in rows if k in r]))
        print(f"{'step (first occurrence)':<28} {'median ms':>10} {'p90 ms':>8}  n")
        for name in names:
            v = sorted(r[name] for r in rows if name in r)
            print(f"{name:<28} {statistics.median(v) * 1000:>10.2f} {v[int(0.9 * (len(v) - 1))] * 1000:>8.2f}  {len(v)}")
    finally:
        proc.terminate()
        proc.wait(10)
        client.close()
        fake.stop()
        broker.stop()
        if not os.environ.get("TRACE_KEEP"):
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
