"""Where a cache hit's milliseconds go: a timeline of the daemon's steps, publish → first byte.

    python bench/trace_hit.py [-n 100] [--backend aplay]

An investigation tool, not part of bench/run.py. It runs the same setup as figure 1
(mosquitto, fake Coze, the stamping ALSA sink, the daemon as a child process with backend
aplay) but the child wraps a few daemon methods (by monkeypatching, nothing in coze_speaker/
changes) to log CLOCK_MONOTONIC stamps, then prints the median time from the publish to
each step. Run it before and after a change to the daemon's hot path.
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


# --------------------------------------------------------------------------- the child


def child(config_path: str, log_path: str, patches: str = "") -> int:
    from coze_speaker import announcer, cache, mqtt_bridge, players, speaker
    from coze_speaker.config import load_config
    from coze_speaker.app.daemon import Daemon

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

    around(mqtt_bridge.MqttBridge, "_handle_message", "on_message")
    around(announcer.Announcer, "submit", "submit")
    around(announcer.Announcer, "_play", "play")
    around(speaker.AudioSource, "open", "source.open")
    around(cache.PhraseCache, "lookup", "cache.lookup")
    around(cache.PhraseCache, "stats", "cache.stats")
    around(players.AplayPlayer, "_spawn", "aplay.spawn")
    around(players.AplayPlayer, "play", "player.play")

    original_write = players.AplayPlayer._write

    def write(self, proc, fd_, data, errfile):
        mark("aplay.write>")
        return original_write(self, proc, fd_, data, errfile)
    players.AplayPlayer._write = write

    original_read = cache.PhraseCache.read

    def read(self, entry, *a, **kw):
        first = True
        for chunk in original_read(self, entry, *a, **kw):
            if first:
                mark("cache.first_chunk")
                first = False
            yield chunk
    cache.PhraseCache.read = read

    original_speak = speaker.Speaker.speak

    def speak(self, speech, **kw):
        mark("speak>")
        return original_speak(self, speech, **kw)
    speaker.Speaker.speak = speak

    apply_patches(patches.split(",") if patches else [], mark)

    import logging
    logging.basicConfig(level=logging.WARNING)
    return Daemon(load_config(config_path)).run()


def apply_patches(names, mark) -> None:
    """Experiments for a proposed change, applied by monkeypatching in this child only.

    prespawn   start aplay when play() begins, before the first chunk is there
               (players.AplayPlayer.play waits for the first chunk, then spawns)
    earlyspawn start aplay when the worker takes the item (Announcer._play), before the
               `started` event, the state and opening the speech
    msgspawn   start aplay as soon as a say message arrives while nothing plays or waits
               (Daemon._on_say), before parsing, the journal and the `queued` event
    nojournal  skip the queue journal write (announcer.Announcer._persist → Journal.write),
               to see what it costs on the hot path
    asyncevents  encode and publish events and the state on one background thread, in order
               (today the announcer's threads do it, `queued` even under the queue lock)
    eagerrequests  import requests at start, as before coze.py imported it on the first request
    nodelay    turn Nagle off on the daemon's MQTT socket (paho leaves it on)
    lazyhit    hand out a cache hit after the file check and do the index bookkeeping
               (hit counter, LRU time: one sqlite write transaction) on a background thread
    """
    import queue
    import tempfile

    from coze_speaker import cache, journal, players

    for name in names:
        if name in ("prespawn", "earlyspawn", "msgspawn"):
            if not hasattr(players.AplayPlayer, "prepare"):
                orig_play, orig_spawn = players.AplayPlayer.play, players.AplayPlayer._spawn

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

                players.AplayPlayer.prepare = prepare
                players.AplayPlayer.play, players.AplayPlayer._spawn = play, spawn
            if name == "earlyspawn":
                from coze_speaker import announcer
                orig_announcer_play = announcer.Announcer._play

                def announcer_play(self, item, _orig=orig_announcer_play):
                    self.speaker.player.prepare(self.speaker.rate)
                    return _orig(self, item)
                announcer.Announcer._play = announcer_play
            if name == "msgspawn":
                from coze_speaker import daemon
                orig_on_say = daemon.Daemon._on_say

                def on_say(self, msg, _orig=orig_on_say):
                    if not self.announcer.speaking and not self.announcer.queue_length():
                        self.player.prepare(self.rate)
                    return _orig(self, msg)
                daemon.Daemon._on_say = on_say
        elif name == "asyncevents":
            from coze_speaker import daemon
            jobs: queue.Queue = queue.Queue()

            def run_jobs():
                while True:
                    fn, a = jobs.get()
                    fn(*a)

            threading.Thread(target=run_jobs, daemon=True, name="asyncevents").start()
            orig_emit, orig_state = daemon.Daemon._emit, daemon.Daemon.publish_state
            daemon.Daemon._emit = lambda self, ev, ann, _f=orig_emit: jobs.put((_f, (self, ev, ann)))
            daemon.Daemon.publish_state = lambda self, _f=orig_state: jobs.put((_f, (self,)))
        elif name == "nodelay":
            from coze_speaker import mqtt_bridge
            import socket
            orig_connect = mqtt_bridge.MqttBridge._handle_connect

            def handle_connect(self, client, *a, _orig=orig_connect):
                sock = client.socket()
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _orig(self, client, *a)
            mqtt_bridge.MqttBridge._handle_connect = handle_connect
        elif name == "eagerrequests":
            __import__("requests")  # what the daemon did before it imported requests lazily
        elif name == "nojournal":
            journal.Journal.write = lambda self, announcements: None
        elif name == "lazyhit":
            work: queue.Queue = queue.Queue()
            orig_record = cache.PhraseCache._record

            def worker():
                while True:
                    self_, key, entry, st = work.get()
                    orig_record(self_, key, entry=entry, st=st)

            threading.Thread(target=worker, daemon=True, name="lazyhit").start()
            orig_lookup = cache.PhraseCache.lookup

            def lookup(self, key, _orig=orig_lookup):
                self._check_open()
                entry, problem, st = self._inspect(key, self.entry_path(key))
                if entry is None:
                    return _orig(self, key)
                work.put((self, key, entry, st))
                return entry

            cache.PhraseCache.lookup = lookup
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
        client.wait(lambda: client.online, 30, "online")
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
