"""Circuit breaker: how long announcements wait while Coze is down, with the breaker and without.

    python bench/breaker.py [--quick] [--n N] [--pairs P] [--out docs/benchmarks.md] [--keep]

For each way Coze can be down (connection refused, every request answered 503, requests
accepted and never answered) a daemon (`python -m coze_speaker run`, aplay into the bench's
timestamping ALSA sink, `fallback.engine: espeak-ng`, `coze.retries: 3`, the default) runs
twice: with the breaker (`coze.breaker_cooldown: 15`, the default) and without it
(`coze.breaker_cooldown: 0`). With Coze up it caches one phrase; then Coze goes down and
the bench measures, from the MQTT publish to the first byte at the sink:

- N announcements that are not cached, one at a time (each after the previous one's final
  event and 100 ms idle): the offline voice speaks each; the first one finds Coze down;
- P times, a miss and the cached phrase published back to back: how long the cached one
  waits behind the miss;

then Coze comes back, and it measures how soon a new announcement gets Coze's voice again.

It prints a markdown section ("Circuit breaker: announcements while Coze is down"); with
--out it also writes it at the end of that file (replacing the section if it is there).
Everything is on 127.0.0.1 (mosquitto, the fake Coze of tests/fake_coze.py in-process);
every wait is bounded. --quick: N=2, P=1, two outages, `coze.timeout: 1`, a 5 s cool-down
(about a minute).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (BenchFake, Client, DaemonProcess, StampSink, daemon_config, start_broker, which,  # noqa: E402
                     write_section)
from fake_coze import Fault  # noqa: E402  (tests/fake_coze.py, on the path through harness)

from coze_speaker.vocabulary import BREAKER_MAX_COOLDOWN  # noqa: E402

HEADING = "## Circuit breaker: announcements while Coze is down"
SPEECH = "/v1/audio/speech"
VOICES = "/v1/audio/voices"
GAP = 0.1  # idle time before each timed publish, as in bench/run.py
CACHED = "Someone is at the front door"
COOLDOWN = 15  # coze.breaker_cooldown with the breaker (the default); --quick: 5

OUTAGES = {
    "refused": "connection refused",
    "http_503": "every request answered HTTP 503",
    "hang": "requests accepted, never answered",
}


@dataclass
class Case:
    """One daemon run: one outage, with or without the breaker."""

    outage: str
    breaker: bool
    misses: List[float] = field(default_factory=list)  # publish → first byte, in order
    behind: List[float] = field(default_factory=list)  # the cached phrase behind a miss
    fallback: int = 0  # misses spoken by the offline voice
    other: List[str] = field(default_factory=list)  # outcomes that were not the offline voice
    speech_requests: int = 0
    checks: int = 0
    seconds: float = 0.0
    recovery: Optional[float] = None  # Coze back → an announcement published then gets its voice


class World:
    """mosquitto, the fake Coze and the timestamping sink, in one temporary directory."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix="coze-speaker-bench-breaker-"))
        self.broker = start_broker(self.work)
        self.fake = BenchFake(token="pat_bench_token").start()
        self.fake.stream()
        self.sink = StampSink(self.work / "alsa")
        self.env = self.sink.env()
        self.client = Client(self.broker.port, "bench-breaker")
        self.daemons: List[DaemonProcess] = []

    def up(self) -> None:
        """Coze answers again (on the same port)."""
        self.fake.end_outage()
        if not self.fake.running:
            self.fake.come_back()

    def down(self, outage: str) -> None:
        if outage == "refused":
            self.fake.stop()
        elif outage == "http_503":
            self.fake.start_outage(Fault.http_error(503))
        else:
            self.fake.start_outage(Fault.hanging(120))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
        for d in self.daemons:
            d.stop()
        self.fake.stop()
        self.broker.stop()
        if self.keep:
            print(f"bench: work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def run_case(world: World, outage: str, breaker: bool, *, n: int, pairs: int, timeout: float,
             cooldown: float) -> Case:
    """Start a daemon, cache one phrase, take Coze down, measure; the daemon is stopped after."""
    case = Case(outage, breaker)
    name = f"{outage}-{'on' if breaker else 'off'}"
    world.up()
    cfg = daemon_config(world.work / f"{name}.yaml", fake=world.fake, broker_port=world.broker.port,
                        device="bench-breaker", cache_dir=world.work / f"cache-{name}",
                        state_dir=world.work / f"state-{name}",
                        coze={"retries": 3, "timeout": timeout, "breaker_cooldown": cooldown if breaker else 0},
                        fallback={"engine": "espeak-ng"})
    client = world.client
    before = len(client.online)
    daemon = DaemonProcess(cfg, world.env, world.work / f"{name}.log")
    world.daemons.append(daemon)
    client.wait(lambda: len(client.online) > before or not daemon.alive(), 30, "the daemon online")
    if not daemon.alive():
        raise SystemExit(f"bench: the daemon exited; see {world.work / (name + '.log')}")
    try:
        say(client, CACHED, f"{name}-warm", expect_cached=False)
        requests0, checks0 = len(world.fake.requests_to(SPEECH)), len(world.fake.requests_to(VOICES))
        world.down(outage)
        t_start = time.monotonic()
        for i in range(n):
            time.sleep(GAP)
            off = world.sink.offset()
            ann = f"{name}-m{i}"
            t0 = client.say(f"Announcement number {i} while Coze is {outage.replace('_', ' ')}", ann)
            kind, _, data = client.wait_final(ann, timeout=180)
            record_miss(case, kind, data)
            case.misses.append(world.sink.wait_plays(off, 1, timeout=30)[0].first - t0)
        for i in range(pairs):
            time.sleep(GAP)
            off = world.sink.offset()
            miss, hit = f"{name}-p{i}", f"{name}-c{i}"
            client.say(f"A new phrase, number {i}, ahead of a cached one", miss)
            t_hit = client.say(CACHED, hit)
            kind, _, data = client.wait_final(miss, timeout=180)
            record_miss(case, kind, data)
            spoken = kind == "finished"  # else the miss made no sound: only the cached phrase plays
            kind, _, data = client.wait_final(hit, timeout=180)
            if kind != "finished" or not data.get("cached"):
                raise SystemExit(f"bench: the cached phrase ended {kind}: {data}")
            plays = world.sink.wait_plays(off, 2 if spoken else 1, timeout=30)
            case.behind.append(plays[-1].first - t_hit)
        case.seconds = time.monotonic() - t_start
        case.speech_requests = len(world.fake.requests_to(SPEECH)) - requests0
        case.checks = len(world.fake.requests_to(VOICES)) - checks0
        case.recovery = recovery(world, client, name)
    finally:
        daemon.stop()
        world.daemons.remove(daemon)
    return case


def recovery(world: World, client: Client, name: str, limit: float = 200.0) -> Optional[float]:
    """Coze comes back: seconds until an announcement published then is spoken in its voice
    (one every ~0.5 s, each waiting for the previous one), None if not within `limit`."""
    world.up()
    t_up = time.monotonic()
    for k in range(1000):
        time.sleep(0.5)
        ann = f"{name}-r{k}"
        t0 = client.say(f"Is Coze back yet, try {k}?", ann)
        kind, _, data = client.wait_final(ann, timeout=180)
        if kind == "finished" and not data.get("fallback"):
            return t0 - t_up
        if time.monotonic() - t_up > limit:
            break
    return None


def say(client: Client, text: str, ann: str, *, expect_cached: Optional[bool] = None) -> dict:
    client.say(text, ann)
    kind, _, data = client.wait_final(ann, timeout=60)
    if kind != "finished" or (expect_cached is not None and bool(data.get("cached")) != expect_cached):
        raise SystemExit(f"bench: {text!r} ended {kind}: {data}")
    return data


def record_miss(case: Case, kind: str, data: dict) -> None:
    if kind == "finished" and data.get("fallback"):
        case.fallback += 1
    else:
        case.other.append(f"{kind}: {(data.get('error') or {}).get('code')}")


def s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def markdown(cases: List[Case], *, n: int, pairs: int, timeout: float, cooldown: float, quick: bool,
             seconds: float) -> str:
    lines = [HEADING, ""]
    lines += [
        f"`python bench/breaker.py{' --quick' if quick else ''}` ({seconds:.0f} s). The daemon as a process, "
        f"aplay into the timestamping ALSA sink, `fallback.engine: espeak-ng`, `coze.retries: 3` (the default), "
        f"`coze.timeout: {timeout:g}`; with the breaker `coze.breaker_cooldown: {cooldown:g}`"
        f"{' (the default)' if cooldown == COOLDOWN else ''}, "
        "without it `0`. One phrase was cached while Coze was up; then Coze went down and stayed down.",
        "",
        f"- **misses**: {n} announcements that are not cached, one at a time (each published after the "
        f"previous one's final event and {GAP * 1000:.0f} ms idle), publish → first byte at the sink; the "
        "offline voice speaks them. The 1st is the one that finds Coze down.",
        f"- **cached behind a miss**: {pairs} time(s) a miss and the cached phrase published back to back; "
        "publish of the cached phrase → its first byte.",
        "- **requests**: speech requests and voice-list checks the fake Coze received while it was down "
        "(a refused connection never reaches it).",
        "- **back**: then Coze comes back; a new miss is published every ~0.5 s (after the previous one "
        "ended): seconds from Coze's return to the publish of the first one spoken in Coze's voice. With "
        "the breaker that is the rest of the cool-down (the check closes it), without it the next request.",
        "",
        "| Coze is down as | breaker | 1st miss | 2nd… misses, median | 2nd… misses, max | cached behind a miss, "
        "median / max | requests while down (speech / checks) | back |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        rest = c.misses[1:]
        lines.append("| {} | {} | {} | {} | {} | {} | {} / {} | {} |".format(
            OUTAGES[c.outage] + (f" (`coze.timeout: {timeout:g}`)" if c.outage == "hang" else ""),
            "on" if c.breaker else "off", s(c.misses[0]) if c.misses else "—",
            s(statistics.median(rest)) if rest else "—", s(max(rest)) if rest else "—",
            f"{s(statistics.median(c.behind))} / {s(max(c.behind))}" if c.behind else "—",
            c.speech_requests, c.checks, "—" if c.recovery is None else s(c.recovery)))
    odd = [f"{c.outage}, breaker {'on' if c.breaker else 'off'}: {', '.join(c.other)}" for c in cases if c.other]
    lines.append("")
    lines += summary(cases, cooldown)
    if odd:
        lines.append("Misses not spoken by the offline voice: " + "; ".join(odd) + ".")
        lines.append("")
    return "\n".join(lines) + "\n"


def summary(cases: List[Case], cooldown: float) -> List[str]:
    """A few sentences computed from the figures: what the breaker saves and what it costs."""
    by = {(c.outage, c.breaker): c for c in cases}
    saved, backs = [], []
    for outage in OUTAGES:
        on, off = by.get((outage, True)), by.get((outage, False))
        if on is None or off is None or len(on.misses) < 2 or len(off.misses) < 2:
            continue
        a, b = statistics.median(off.misses[1:]), statistics.median(on.misses[1:])
        saved.append(f"{OUTAGES[outage]}, {s(a)} → {s(b)} ({a / b:.0f}× less; speech requests "
                     f"{off.speech_requests} → {on.speech_requests})")
        if on.recovery is not None:
            backs.append(f"{s(on.recovery)} when it was {OUTAGES[outage].replace('every request ', '')}")
    lines = []
    if saved:
        lines += ["With the breaker, a miss after the first one no longer waits for the retries (and "
                  "timeouts), median of the 2nd… misses without → with it: " + "; ".join(saved) + ". The "
                  "cached phrase behind a miss plays as quickly. The 1st miss still pays them: it is the one "
                  "that finds Coze down.", ""]
    if backs:
        lines += [f"The cost: when Coze comes back, misses keep the offline voice until the check at the end "
                  f"of the cool-down closes the breaker ({', '.join(backs)} here; the cool-down is "
                  f"{cooldown:g} s, doubling after each failed check up to {BREAKER_MAX_COOLDOWN:g} s in a long "
                  "outage), where "
                  "without the breaker the next request finds it.", ""]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute)")
    parser.add_argument("--n", type=int, default=None, help="misses per run (default 6, quick 2)")
    parser.add_argument("--pairs", type=int, default=None, help="miss + cached pairs per run (default 3, quick 1)")
    parser.add_argument("--out", default=None, help="also write the section at the end of this markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)
    for tool in ("aplay", "espeak-ng"):
        if which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed")
    n = max(1, min(args.n or (2 if args.quick else 6), 50))
    pairs = max(0, min(args.pairs if args.pairs is not None else (1 if args.quick else 3), 20))
    timeout = 1.0 if args.quick else 2.0
    cooldown = 5.0 if args.quick else float(COOLDOWN)
    outages = ["refused", "hang"] if args.quick else list(OUTAGES)
    t0 = time.monotonic()
    world = World(args.keep)
    cases: List[Case] = []
    try:
        for outage in outages:
            for breaker in (True, False):
                print(f"bench: Coze down ({OUTAGES[outage]}), breaker {'on' if breaker else 'off'} …", flush=True)
                cases.append(run_case(world, outage, breaker, n=n, pairs=pairs, timeout=timeout,
                                      cooldown=cooldown))
    finally:
        world.close()
    section = markdown(cases, n=n, pairs=pairs, timeout=timeout, cooldown=cooldown, quick=args.quick,
                       seconds=time.monotonic() - t0)
    print(section)
    if args.out:
        write_section(Path(args.out), HEADING, section)
        print(f"bench: wrote the section at the end of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
