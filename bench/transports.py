"""First audio on a miss against text length, for each way of asking Coze.

    python bench/transports.py [--quick] [--n N] [--before REV] [--out docs/benchmarks.md]
                               [--png docs/transports.png] [--keep]

The fake Coze of tests/fake_coze.py models both services (`FakeCoze.model_services`): the
HTTP endpoint answers only once the whole text is "synthesized" (100 ms + 4 ms per
character), then sends the body at once; the WebSocket API sends its first audio 350 ms
after the text is complete, then 250 ms of audio per event at 7x real time (a recorded real
session: first audio 308-419 ms, ~7x). For each column a daemon (`python -m coze_speaker
run`, aplay into the bench's timestamping ALSA sink, 48 kHz) speaks N new texts of each
length (20, 100, 300 and 900 characters, sentences of ~40 characters; the 20-character one
is a single sentence), one at a time, each after the previous one's final event and 100 ms
idle; the figure is MQTT publish -> first byte at the sink:

- synchronous HTTP: `coze.transport: http`, `coze.first_sentence_first: false`;
- HTTP, first sentence first: `transport: http` (first_sentence_first on, the default);
- WebSocket: `transport: websocket`;
- auto: `transport: auto` (the default);
- auto, WebSocket refused: `transport: auto` with `coze.ws_url` on a port nobody listens on
  (connection refused); its first announcement pays the refusal, the next ones go straight
  to HTTP for 300 s.

Also, from the fake's records, how long the first sentence's audio (asked alone) plays
before the rest's audio has arrived, or the silence after it when the rest arrives later
(the player is as fast as the sink: the audio is not played in real time here). Idle RSS:
the daemon of this tree (transport auto, before any announcement) and, with --before REV,
the daemon of an earlier commit (its coze_speaker/ from `git archive`), each after 3 s idle.

Prints a markdown section ("Transports: first audio on a miss against text length"); with
--out it also writes it at the end of that file (replacing an earlier copy) and the plot
(matplotlib from the optional `bench` extra, if importable) beside it. --quick: N=1, audio
cut to a quarter (targets not judged), under a minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (RATE, BenchFake, Client, DaemonProcess, StampSink, daemon_config, rss_kib,  # noqa: E402
                     start_broker, which, write_section)
from mqtt_helpers import free_port  # noqa: E402  (tests/mqtt_helpers.py)
from run import code_version, machine_info  # noqa: E402  (bench/run.py: what ran, on what)

HEADING = "## Transports: first audio on a miss against text length"
GAP = 0.1  # idle time before each timed publish, as in bench/run.py
LENGTHS = (20, 100, 300, 900)
HTTP_MODEL = (0.1, 0.004)  # seconds: base + per character, before the HTTP answer
WS_FIRST_AUDIO = 0.35
WS_REALTIME = 7.0
DEVICE = "bench-transports"

COLUMNS = {  # name: (title, coze settings)
    "http": ("synchronous HTTP", {"transport": "http", "first_sentence_first": False}),
    "http_fsf": ("HTTP, first sentence first", {"transport": "http", "first_sentence_first": True}),
    "websocket": ("WebSocket", {"transport": "websocket"}),
    "auto": ("auto", {"transport": "auto", "first_sentence_first": True}),
    "auto_refused": ("auto, WebSocket refused", {"transport": "auto", "first_sentence_first": True}),
}

SENTENCES = [
    "The washing machine has finished its cycle.",
    "Someone rang the front door bell twice.",
    "The living room window is still open.",
    "Rain is expected from the early afternoon.",
    "The bus to the station leaves in ten minutes.",
    "Please remember to water the tomato plants.",
    "The freezer door was left open for a while.",
    "Dinner will be ready in about half an hour.",
]


def make_text(n: int, k: int) -> str:
    """A new text of n characters (k makes it unique): one short sentence for n < 36, else a
    first sentence of ~35 characters and then sentences of ~40."""
    if n < 36:
        return f"Door {k} opens now."  # 20 characters for a four-digit k
    parts = [f"Alert {k}: the garage door is open."]
    i = k
    while len(" ".join(parts)) < n:
        parts.append(SENTENCES[i % len(SENTENCES)])
        i += 1
    text = " ".join(parts)[:n - 1]
    return text[:text.rfind(" ")].rstrip(".,") + "."


@dataclass
class Column:
    name: str
    title: str
    first_audio: Dict[int, List[float]] = field(default_factory=dict)  # length -> publish → first byte
    api_calls: Dict[int, List[int]] = field(default_factory=dict)
    lead: Dict[int, List[float]] = field(default_factory=dict)  # first sentence's audio left when the rest came
    outcomes: List[str] = field(default_factory=list)
    idle_rss: Optional[int] = None


class World:
    """mosquitto, the fake Coze (modelling both services) and the sink, in one directory."""

    def __init__(self, keep: bool, audio_scale: float) -> None:
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix="coze-speaker-bench-transports-"))
        self.broker = start_broker(self.work)
        self.fake = BenchFake(token="pat_bench_token").start()
        self.fake.stream()  # the HTTP body as fast as possible once "synthesized"
        self.fake.audio_scale = audio_scale
        self.fake.model_services(http=HTTP_MODEL, ws_first_audio=WS_FIRST_AUDIO, ws_realtime_factor=WS_REALTIME)
        self.sink = StampSink(self.work / "alsa")
        self.env = self.sink.env()
        self.client = Client(self.broker.port, DEVICE)
        self.daemons: List[DaemonProcess] = []

    def config(self, name: str, coze: dict) -> Path:
        return daemon_config(self.work / f"{name}.yaml", fake=self.fake, broker_port=self.broker.port, device=DEVICE,
                             cache_dir=self.work / f"cache-{name}", state_dir=self.work / f"state-{name}",
                             coze=coze)

    def start(self, name: str, config: Path, code: Optional[Path] = None) -> DaemonProcess:
        client = self.client
        before = len(client.online)
        env = dict(self.env)
        if code is not None:  # an earlier commit's coze_speaker/
            env["PYTHONPATH"] = str(code)
        log = self.work / f"{name}.log"
        daemon = DaemonProcess(config, env, log) if code is None else _EarlierDaemon(config, env, log, code)
        self.daemons.append(daemon)
        client.wait(lambda: len(client.online) > before or not daemon.alive(), 30, f"the {name} daemon online")
        if not daemon.alive():
            raise SystemExit(f"bench: the daemon exited; see {self.work / (name + '.log')}")
        return daemon

    def stop(self, daemon: DaemonProcess) -> None:
        daemon.stop()
        self.daemons.remove(daemon)

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


class _EarlierDaemon(DaemonProcess):
    """DaemonProcess run from another source tree (PYTHONPATH and cwd there)."""

    def __init__(self, config: Path, env: Dict[str, str], log: Path, code: Path) -> None:
        import subprocess

        self.log = open(log, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "coze_speaker", "-c", str(config), "run"],
                                     cwd=str(code), env=env, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid


def run_column(world: World, name: str, *, n: int, lengths: tuple) -> Column:
    title, coze = COLUMNS[name]
    column = Column(name, title)
    if name == "auto_refused":
        coze = {**coze, "ws_url": f"ws://127.0.0.1:{free_port()}/v1/audio/speech"}
    daemon = world.start(name, world.config(name, coze))
    client, fake = world.client, world.fake
    try:
        time.sleep(3.0)
        column.idle_rss = rss_kib(daemon.pid)
        k = 0
        for i in range(n):
            for length in lengths:
                k += 1
                text = make_text(length, 1000 * (list(COLUMNS).index(name) + 1) + k)
                time.sleep(GAP)
                off = world.sink.offset()
                logs = len(fake.speech_log)
                ann = f"{name}-{length}-{i}"
                t0 = client.say(text, ann)
                kind, _, data = client.wait_final(ann, timeout=120)
                if kind != "finished" or data.get("cached") or data.get("fallback"):
                    column.outcomes.append(f"{length}: {kind} {data.get('error')}")
                    continue
                column.first_audio.setdefault(length, []).append(world.sink.wait_plays(off, 1, 30)[0].first - t0)
                column.api_calls.setdefault(length, []).append(int(data.get("api_calls", 0)))
                answers = [t for t in fake.speech_log[logs:] if t.completed]
                if len(answers) == 2:  # the first sentence, then the rest
                    first, rest = answers
                    assert first.t_first_byte is not None and rest.t_first_byte is not None
                    plays = first.total_bytes / (2.0 * RATE)
                    column.lead.setdefault(length, []).append(first.t_first_byte + plays - rest.t_first_byte)
    finally:
        world.stop(daemon)
    return column


def idle_rss_before(world: World, rev: str) -> int:
    """Idle VmRSS (KiB) of the daemon of an earlier commit (its config without the new keys)."""
    import subprocess

    code = world.work / f"code-{rev}"
    code.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "coze_speaker"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    config = world.config("before", {})
    text = config.read_text().replace("  first_sentence_first: false\n", "").replace("  transport: http\n", "")
    config.write_text(text)
    daemon = world.start("before", config, code=code)
    try:
        time.sleep(3.0)
        return rss_kib(daemon.pid)
    finally:
        world.stop(daemon)


def ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if abs(seconds) >= 1 else f"{seconds * 1000:.0f} ms"


def med(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def markdown(columns: List[Column], *, n: int, quick: bool, seconds: float, png: Optional[str],
             before: Optional[tuple], lengths: tuple) -> str:
    by = {c.name: c for c in columns}
    lines = [HEADING, ""]
    code, info = code_version(), machine_info()
    lines.append(
        f"`python bench/transports.py{' --quick' if quick else ''}` on {code['head']}"
        f"{' (+ working tree)' if code['dirty'] == 'yes' else ''}, {info['nproc']} × {info['cpu']}, Python "
        f"{info['python']} ({seconds:.0f} s). The daemon as a process, aplay "
        f"into the timestamping ALSA sink at {RATE // 1000} kHz; the fake Coze modelling both services: HTTP answers "
        f"once the whole text is synthesized ({HTTP_MODEL[0] * 1000:.0f} ms + {HTTP_MODEL[1] * 1000:.0f} ms per "
        f"character), the WebSocket API sends its first audio {WS_FIRST_AUDIO * 1000:.0f} ms after the text is "
        f"complete, then at {WS_REALTIME:g}x real time. {n} new text(s) per length, one at a time; median of publish "
        "→ first byte at the sink (a miss every time). Requests per announcement in brackets.")
    if quick:
        lines += ["", "**QUICK RUN**: one sample per cell, audio cut to a quarter; the targets are not judged."]
    lines += ["", "| characters | " + " | ".join(c.title for c in columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    for length in lengths:
        cells = []
        for c in columns:
            value = med(c.first_audio.get(length, []))
            calls = c.api_calls.get(length, [])
            cells.append("—" if value is None else f"{ms(value)} ({max(calls) if calls else '?'})")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    refused = by.get("auto_refused")
    if refused and refused.first_audio.get(lengths[0]):
        lines += ["", f"auto, WebSocket refused: the first announcement, which pays the refused connection, "
                      f"{ms(refused.first_audio[lengths[0]][0])} ({lengths[0]} characters); the next ones skip the "
                      "WebSocket API for 300 s."]
    fsf = by.get("http_fsf")
    if fsf and fsf.lead:
        parts = []
        for length in lengths:
            lead = med(fsf.lead.get(length, []))
            if lead is not None:
                parts.append(f"{length} characters: " + (f"{ms(lead)} of it still to play" if lead >= 0
                                                         else f"a silence of {ms(-lead)}"))
        lines += ["", "First sentence first: when the rest's audio arrives, the first sentence's audio (asked alone) "
                      "has, by the fake's records, " + "; ".join(parts) + ". The rest is asked once the first "
                      "sentence's answer is in, so a long rest over synchronous HTTP still leaves a pause after the "
                      "first sentence; it costs one more request per announcement of several sentences."]
    rss = [f"this tree, transport auto, before any announcement: {by['auto'].idle_rss / 1024:.1f} MB"] \
        if by.get("auto") and by["auto"].idle_rss else []
    if before:
        rss.append(f"{before[0]}: {before[1] / 1024:.1f} MB")
    if rss:
        lines += ["", "Idle RSS (VmRSS after 3 s idle): " + "; ".join(rss) + " (websocket-client is imported on the "
                  "first WebSocket synthesis)."]
    lines += ["", "Targets:", ""]
    for name in ("websocket", "auto"):
        c = by.get(name)
        lo, hi = (med(c.first_audio.get(lengths[0], [])), med(c.first_audio.get(lengths[-1], []))) if c else (None, None)
        if lo is not None and hi is not None:
            verdict = "" if quick else (" — met" if hi - lo <= 0.060 else " — NOT met")
            lines.append(f"- {c.title}: first audio {ms(lo)} at {lengths[0]} characters, {ms(hi)} at {lengths[-1]}: "
                         f"{ms(hi - lo)} more (target: within +60 ms){verdict}")
    if refused and fsf:
        worst = max((med(refused.first_audio.get(length, [])) or 0) - (med(fsf.first_audio.get(length, [])) or 0)
                    for length in lengths)
        first = max(refused.first_audio[lengths[0]][0] - (med(fsf.first_audio.get(lengths[0], [])) or 0), worst)
        verdict = "" if quick else (" — met" if first <= 1.0 else " — NOT met")
        lines.append(f"- auto with the WebSocket refused against HTTP alone (first sentence first, the default): at "
                     f"most {ms(first)} more, the refused first announcement included (target: within +1 s){verdict}")
    if before and by.get("auto") and by["auto"].idle_rss:
        delta = by["auto"].idle_rss - before[1]
        lines.append(f"- idle RSS: {delta / 1024:+.1f} MB against {before[0]} (target: unchanged)")
    for c in columns:
        if c.outcomes:
            lines.append(f"- {c.title}: not spoken by Coze: {'; '.join(c.outcomes)}")
    if png:
        lines += ["", f"![first audio on a miss against text length]({png})"]
    return "\n".join(lines) + "\n"


def plot(path: Path, columns: List[Column], lengths: tuple, quick: bool) -> Optional[str]:
    """The plot, as bench/run.py draws its own: matplotlib from the optional bench extra."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    fig, ax = plt.subplots(figsize=(8, 4.6))
    styles = {"http": "s--", "http_fsf": "o-", "websocket": "^-", "auto": "v:", "auto_refused": "x--"}
    for c in columns:
        xs = [n for n in lengths if c.first_audio.get(n)]
        ax.plot(xs, [statistics.median(c.first_audio[n]) * 1000 for n in xs], styles.get(c.name, "o-"), label=c.title)
    ax.set_xscale("log")
    ax.set_xticks(list(lengths), [str(n) for n in lengths])
    ax.set_xlabel("characters of text (a miss)")
    ax.set_ylabel("publish → first audio at the sink, ms (median)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(("QUICK RUN — " if quick else "") + f"First audio on a miss; fake Coze: HTTP {HTTP_MODEL[0] * 1000:.0f} ms"
                 f" + {HTTP_MODEL[1] * 1000:.0f} ms/char, WebSocket {WS_FIRST_AUDIO * 1000:.0f} ms", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute)")
    parser.add_argument("--n", type=int, default=None, help="texts per length and column (default 5, quick 1)")
    parser.add_argument("--before", default=None, help="also the idle RSS of this commit's daemon (e.g. main)")
    parser.add_argument("--out", default=None, help="also write the section at the end of this markdown file")
    parser.add_argument("--png", default=None, help="the plot (default: transports.png beside --out)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)
    for tool in ("aplay", "mosquitto"):
        if which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed")
    n = max(1, min(args.n or (1 if args.quick else 5), 50))
    t0 = time.monotonic()
    world = World(args.keep, 0.25 if args.quick else 1.0)
    columns: List[Column] = []
    before = None
    try:
        for name in COLUMNS:
            print(f"bench: {COLUMNS[name][0]} …", flush=True)
            columns.append(run_column(world, name, n=n, lengths=LENGTHS))
        if args.before:
            before = (args.before, idle_rss_before(world, args.before))
    finally:
        world.close()
    png_path = Path(args.png) if args.png else (Path(args.out).with_name("transports.png") if args.out else None)
    png_rel = None
    if png_path is not None:
        error = plot(png_path, columns, LENGTHS, args.quick)
        if error:
            print(f"bench: no plot: {error}")
        elif args.out:
            png_rel = os.path.relpath(png_path, Path(args.out).parent)
    section = markdown(columns, n=n, quick=args.quick, seconds=time.monotonic() - t0, png=png_rel, before=before,
                       lengths=LENGTHS)
    print(section)
    if args.out:
        write_section(Path(args.out), HEADING, section)
        print(f"bench: wrote the section at the end of {args.out}" + (f" and {png_path}" if png_rel else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
