"""Where a cache hit's milliseconds go: a timeline of the daemon's steps, publish → first byte.

    python bench/trace_hit.py [-n 100] [--backend aplay]

An investigation tool, not part of bench/run.py. It runs the same setup as figure 1
(mosquitto, fake Coze, the stamping ALSA sink, the daemon as a child process with backend
aplay) but the child wraps a few daemon methods (by monkeypatching, nothing in coze_speaker/
changes) to log CLOCK_MONOTONIC stamps, then prints the median time from the publish to
each step. Run it before and after a change to the daemon's hot path.

The wrapped classes are looked up in the package's subpackage layout first, then in the flat
one (CLASSES below). If a class or method it wraps is not there under that name, the tool
says so and exits without running (status 0): update CLASSES / PATCH_NEEDS to the new code.
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

from harness import DAEMON_MODULES, PLAYERS_MODULES, module_exists  # noqa: E402

# --------------------------------------------------------------------------- what is wrapped, where

#: class -> the modules that may define it: the subpackage layout first, then the flat one
CLASSES = {
    "Daemon": DAEMON_MODULES,
    "Announcer": ("coze_speaker.queue.worker", "coze_speaker.announcer"),
    "Speaker": ("coze_speaker.voice.source", "coze_speaker.sound.speaker", "coze_speaker.speaker"),
    "AudioSource": ("coze_speaker.voice.source", "coze_speaker.sound.speaker", "coze_speaker.speaker"),
    "AplayPlayer": PLAYERS_MODULES,
    "MqttBridge": ("coze_speaker.mqtt.bridge", "coze_speaker.mqtt_bridge"),
    "Journal": ("coze_speaker.queue.journal", "coze_speaker.journal"),
    "PhraseCache": ("coze_speaker.cache",),
}

#: class -> the attributes the timeline wraps
TRACED = {
    "MqttBridge": {"_handle_message"},
    "Announcer": {"submit", "_play"},
    "AudioSource": {"open"},
    "PhraseCache": {"lookup", "stats", "read"},
    "AplayPlayer": {"_spawn", "play", "_write"},
    "Speaker": {"speak"},
    "Daemon": {"run"},
}

#: patch -> class -> the attributes it replaces or calls ("module." + name: a function of the class's module)
_SPAWN = {"AplayPlayer": {"play", "_spawn", "module._reap"}}
PATCH_NEEDS = {
    "prespawn": _SPAWN,
    "earlyspawn": {**_SPAWN, "Announcer": {"_play"}},
    "msgspawn": {**_SPAWN, "Daemon": {"_on_say"}},
    "asyncevents": {"Daemon": {"_emit", "publish_state"}},
    "eagerrequests": {},
    "nodelay": {"MqttBridge": {"_handle_connect"}},
    "nojournal": {"Journal": {"write"}},
    "lazyhit": {"PhraseCache": {"lookup", "_record", "_inspect", "entry_path", "_check_open"}},
}


class Unsupported(Exception):
    """The code under test does not have (under these names) what the tracer wraps."""


def find_class(name: str):
    """The class from the first of its CLASSES modules that exists and defines it."""
    import importlib
    tried = []
    for module in CLASSES[name]:
        if not module_exists(module):
            tried.append(f"no module {module}")
            continue
        cls = getattr(importlib.import_module(module), name, None)  # an import error here is real: raise
        if cls is not None:
            return cls
        tried.append(f"no {name} in {module}")
    raise Unsupported(f"{name} not found ({'; '.join(tried)})")


def resolve(patches) -> dict:
    """{class name: class} for the timeline and these patches, every wrapped attribute checked."""
    import sys as _sys
    need = {name: set(attrs) for name, attrs in TRACED.items()}
    for patch in patches:
        if patch not in PATCH_NEEDS:
            raise SystemExit(f"unknown patch {patch!r} (known: {', '.join(PATCH_NEEDS)})")
        for name, attrs in PATCH_NEEDS[patch].items():
            need.setdefault(name, set()).update(attrs)
    classes, missing = {}, []
    for name, attrs in need.items():
        try:
            cls = classes[name] = find_class(name)
        except Unsupported as exc:
            missing.append(str(exc))
            continue
        for attr in sorted(attrs):
            owner, short = (_sys.modules[cls.__module__], attr[7:]) if attr.startswith("module.") else (cls, attr)
            if not hasattr(owner, short):
                missing.append(f"{cls.__module__}.{short if owner is not cls else name + '.' + short}")
    if missing:
        raise Unsupported("; ".join(missing))
    return classes


# --------------------------------------------------------------------------- the child


def child(config_path: str, log_path: str, patches: str = "") -> int:
    from coze_speaker.config import load_config

    names = patches.split(",") if patches else []
    try:
        classes = resolve(names)
    except Unsupported as exc:
        print(f"trace_hit: skipped: {exc}", file=sys.stderr)
        return 3
    Daemon, Announcer, Speaker = classes["Daemon"], classes["Announcer"], classes["Speaker"]
    AplayPlayer, PhraseCache = classes["AplayPlayer"], classes["PhraseCache"]

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()

    def mark(name: str) -> None:
        t = time.monotonic()
        with lock:
            os.write(fd, f"{name} {t:.6f} {threading.current_thread().name}\n".encode())

    def around(cls, attr, name, first_only=False):
        original = getattr(cls, attr)

        @functools.wraps(original)
        def wrapper(*a, **kw):
            mark(name + ">")
            try:
                return original(*a, **kw)
            finally:
                mark(name + "<")
        setattr(cls, attr, wrapper)

    around(classes["MqttBridge"], "_handle_message", "on_message")
    around(Announcer, "submit", "submit")
    around(Announcer, "_play", "play")
    around(classes["AudioSource"], "open", "source.open")
    around(PhraseCache, "lookup", "cache.lookup")
    around(PhraseCache, "stats", "cache.stats")
    around(AplayPlayer, "_spawn", "aplay.spawn")
    around(AplayPlayer, "play", "player.play")

    original_write = AplayPlayer._write

    def write(self, proc, fd_, data, errfile):
        mark("aplay.write>")
        return original_write(self, proc, fd_, data, errfile)
    AplayPlayer._write = write

    original_read = PhraseCache.read

    def read(self, entry, *a, **kw):
        first = True
        for chunk in original_read(self, entry, *a, **kw):
            if first:
                mark("cache.first_chunk")
                first = False
            yield chunk
    PhraseCache.read = read

    original_speak = Speaker.speak

    def speak(self, speech, **kw):
        mark("speak>")
        return original_speak(self, speech, **kw)
    Speaker.speak = speak

    apply_patches(names, mark, classes)

    import logging
    logging.basicConfig(level=logging.WARNING)
    return Daemon(load_config(config_path)).run()


def apply_patches(names, mark, classes) -> None:
    """Experiments for a proposed change, applied by monkeypatching in this child only.

    prespawn   start aplay when play() begins, before the first chunk is there
               (players.AplayPlayer.play waits for the first chunk, then spawns)
    earlyspawn start aplay when the worker takes the item (Announcer._play), before the
               `started` event, the state and opening the speech
    msgspawn   start aplay as soon as a say message arrives while nothing plays or waits
               (Daemon._on_say), before parsing, the journal and the `queued` event
    nojournal  skip the queue journal's writes (Journal.add/done, the append and fdatasync
               per message; Journal.write before), to see what it costs on the hot path
    asyncevents  encode and publish events and the state on one background thread, in order
               (today the announcer's threads do it, `queued` even under the queue lock)
    eagerrequests  import requests at start, as before coze.py imported it on the first request
    nodelay    turn Nagle off on the daemon's MQTT socket (paho leaves it on)
    lazyhit    hand out a cache hit after the file check and do the index bookkeeping
               (hit counter, LRU time: one sqlite write transaction) on a background thread
    """
    import queue
    import tempfile

    AplayPlayer, PhraseCache, Daemon = classes["AplayPlayer"], classes["PhraseCache"], classes["Daemon"]
    players = sys.modules[AplayPlayer.__module__]

    for name in names:
        if name in ("prespawn", "earlyspawn", "msgspawn"):
            if not hasattr(AplayPlayer, "prepare"):
                orig_play, orig_spawn = AplayPlayer.play, AplayPlayer._spawn

                def prepare(self, rate, _spawn=orig_spawn):
                    if getattr(self, "_prespawned", None) is None:
                        self._stop_event.clear()
                        self._pre_err = tempfile.TemporaryFile(prefix="aplay-err-")
                        mark("prespawn>")
                        self._prespawned = _spawn(self, rate, self._pre_err)

                def play(self, chunks, rate, _orig=orig_play):
                    self.prepare(rate)
                    try:
                        return _orig(self, chunks, rate)
                    finally:
                        left, self._prespawned = self._prespawned, None
                        if left is not None:
                            players._reap(left)
                        self._pre_err.close()

                def spawn(self, rate, errfile, _spawn=orig_spawn):
                    proc, self._prespawned = getattr(self, "_prespawned", None), None
                    return proc if proc is not None and proc.poll() is None else _spawn(self, rate, errfile)

                AplayPlayer.prepare = prepare
                AplayPlayer.play, AplayPlayer._spawn = play, spawn
            if name == "earlyspawn":
                Announcer = classes["Announcer"]
                orig_announcer_play = Announcer._play

                def announcer_play(self, item, _orig=orig_announcer_play):
                    self.speaker.player.prepare(self.speaker.rate)
                    return _orig(self, item)
                Announcer._play = announcer_play
            if name == "msgspawn":
                orig_on_say = Daemon._on_say

                def on_say(self, msg, _orig=orig_on_say):
                    if not self.announcer.speaking and not self.announcer.queue_length():
                        self.player.prepare(self.rate)
                    return _orig(self, msg)
                Daemon._on_say = on_say
        elif name == "asyncevents":
            jobs: queue.Queue = queue.Queue()

            def run_jobs():
                while True:
                    fn, a = jobs.get()
                    fn(*a)

            threading.Thread(target=run_jobs, daemon=True, name="asyncevents").start()
            orig_emit, orig_state = Daemon._emit, Daemon.publish_state
            Daemon._emit = lambda self, ev, ann, _f=orig_emit: jobs.put((_f, (self, ev, ann)))
            Daemon.publish_state = lambda self, _f=orig_state: jobs.put((_f, (self,)))
        elif name == "nodelay":
            import socket
            MqttBridge = classes["MqttBridge"]
            orig_connect = MqttBridge._handle_connect

            def handle_connect(self, client, *a, _orig=orig_connect):
                sock = client.socket()
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _orig(self, client, *a)
            MqttBridge._handle_connect = handle_connect
        elif name == "eagerrequests":
            __import__("requests")  # what the daemon did before it imported requests lazily
        elif name == "nojournal":
            journal = classes["Journal"]
            journal.write = lambda self, announcements: None
            for method in ("add", "done"):  # the append-only journal's per-message writes
                if hasattr(journal, method):
                    setattr(journal, method, lambda self, *a: None)
        elif name == "lazyhit":
            work: queue.Queue = queue.Queue()
            orig_record = PhraseCache._record

            def worker():
                while True:
                    self_, key, entry, st = work.get()
                    orig_record(self_, key, entry=entry, st=st)

            threading.Thread(target=worker, daemon=True, name="lazyhit").start()
            orig_lookup = PhraseCache.lookup

            def lookup(self, key, _orig=orig_lookup):
                self._check_open()
                entry, problem, st = self._inspect(key, self.entry_path(key))
                if entry is None:
                    return _orig(self, key)
                work.put((self, key, entry, st))
                return entry

            PhraseCache.lookup = lookup
        else:
            raise SystemExit(f"unknown patch {name!r}")


# --------------------------------------------------------------------------- the parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--backend", default="aplay")
    parser.add_argument("--patch", default="", help="comma-separated experiments (see apply_patches)")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "LOG", "PATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)

    import subprocess

    from harness import TOKEN, BenchFake, start_broker, Client, StampSink, daemon_config
    from run import GAP, PHRASES

    try:  # before starting anything: does this layout have what the child wraps?
        resolve(args.patch.split(",") if args.patch else [])
    except Unsupported as exc:
        print(f"trace_hit: skipped: this coze_speaker does not have what the tracer wraps under the names it "
              f"knows: {exc}. Update CLASSES / PATCH_NEEDS in bench/trace_hit.py to the new layout.", file=sys.stderr)
        return 0

    work = Path(tempfile.mkdtemp(prefix="trace-hit-"))
    broker = start_broker(work)
    fake = BenchFake(token=TOKEN).start()
    sink = StampSink(work / "alsa")
    cfg = daemon_config(work / "d.yaml", fake=fake, broker_port=broker.port, device="trace",
                        cache_dir=work / "cache", state_dir=work / "state", backend=args.backend)
    log = work / "marks.log"
    client = Client(broker.port, "trace")
    env = sink.env()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(cfg), str(log), args.patch], env=env)
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
            play = sink.wait_plays(off_sink)[0] if args.backend == "aplay" else None
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
            if play is not None:
                row["sink: PCM opened"] = play.spawned - t0
                row["sink: first byte"] = play.first - t0
            rows.append(row)
            if i == args.n - 1 and os.environ.get("TRACE_DUMP"):
                for name, t, thread in marks:
                    print(f"  {(float(t) - t0) * 1000:8.2f} {name:<20} {thread}")
        if os.environ.get("TRACE_SLOWEST"):  # the timelines of the slowest samples
            key = "sink: first byte" if args.backend == "aplay" else "play<"
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
