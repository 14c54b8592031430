"""The `coze-speaker` command line: voices, clone, say, and (later) the daemon.

Errors come out as one clear line and exit code 1; usage errors exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..cache import CacheError
from ..coze import CozeClient, CozeError
from ..sound.players import PlayerError
from ..sound.shaping import ChimeError
from ..vocabulary import EMOTIONS, SPEED

if TYPE_CHECKING:
    from ..cache import PhraseCache

log = logging.getLogger("coze_speaker")


class CommandError(Exception):
    """A failure the user can fix, reported as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coze-speaker",
        description="Make a headless speaker talk: MQTT announcements voiced by Coze text-to-speech.",
    )
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="config file (default: $COZE_SPEAKER_CONFIG, ./config.yaml, /etc/coze-speaker/config.yaml)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("voices", help="list the Coze voices this token can use")
    p.add_argument("--json", action="store_true", help="print a JSON list of every voice")
    p.add_argument("--custom", action="store_true", help="only custom (cloned) voices, no system voices")
    p.add_argument("--model", choices=("big", "small"), help="only voices of this model type")
    p.add_argument("--state", choices=("init", "cloned", "all"), default=None,
                   help="clone state to list (Coze's default: cloned)")
    p.set_defaults(func=cmd_voices)

    p = sub.add_parser("clone", help="clone a voice from a recording (billed by Coze per voice)")
    p.add_argument("file", metavar="FILE", help="recording: wav, mp3, ogg, m4a, aac or pcm (24 kHz mono), at most 10 MB")
    p.add_argument("--name", required=True, help="name of the new voice (at most 128 bytes)")
    p.add_argument("--language", choices=("zh", "en", "ja", "es", "id", "pt"), help="language spoken in the recording")
    p.add_argument("--text", help="what the recording says (Coze compares it, error 1109 if too different)")
    p.add_argument("--preview-text", help="text for the preview Coze generates")
    p.add_argument("--voice-id", help="re-train this existing voice instead of creating a new one")
    p.add_argument("--space-id", help="workspace to save the voice in")
    p.add_argument("--format", dest="audio_format", help="audio format, when the file suffix does not say")
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser("say", help="speak a phrase (or write it to a WAV file)")
    p.add_argument("text", metavar="TEXT", help="what to say; '-' reads standard input")
    p.add_argument("--voice", help="voice_id (default: coze.voice_id)")
    p.add_argument("--emotion", choices=EMOTIONS, help="emotion, for multi-emotion voices")
    p.add_argument("--speed", type=float, help=f"speaking rate, {SPEED.shown()} (default: coze.speed)")
    p.add_argument("--output", "-o", metavar="FILE.wav", help="write a WAV file instead of playing")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the phrase cache")
    p.set_defaults(func=cmd_say)

    p = sub.add_parser("run", help="run the MQTT announcement daemon")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("devices", help="list audio output devices and the sample rates they play natively")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("doctor", help="check the config, the token, the broker, the audio device and the cache")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("cache", help="inspect and manage the phrase cache")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    csub.add_parser("stats", help="entries, size, hits and misses").set_defaults(func=cmd_cache_stats)
    csub.add_parser("clear", help="remove every cached phrase").set_defaults(func=cmd_cache_clear)
    csub.add_parser("prune", help="evict down to cache.max_size_mb and remove leftovers").set_defaults(func=cmd_cache_prune)
    csub.add_parser("verify", help="check every entry and remove broken ones").set_defaults(func=cmd_cache_verify)
    w = csub.add_parser("warm", help="synthesize phrases ahead of time (skips those already cached)")
    w.add_argument("file", metavar="FILE",
                   help="one phrase per line, or a YAML list of phrases or {text, voice, emotion, speed}")
    w.set_defaults(func=cmd_cache_warm)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args, lambda: _load(args))
    except (CozeError, ConfigError, CommandError, PlayerError, CacheError, ChimeError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else ""))
    except KeyboardInterrupt:
        _fail("interrupted")
    return 1


class JournalFormatter(logging.Formatter):
    """`<N>` syslog priority prefixes, which journald reads as each line's priority."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode of the journal socket it gave us as stderr."""
    try:
        dev, ino = os.environ.get("JOURNAL_STREAM", "").split(":")
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def setup_logging(verbosity: int, level: Optional[str] = None) -> None:
    """Log to stderr without timestamps: journald and terminals add their own."""
    if verbosity >= 2:
        level = "debug"
    elif verbosity == 1:
        level = "info"
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=(level or "warning").upper(), handlers=[handler], force=True)
    logging.getLogger("coze_speaker.paho").setLevel(max(logging.INFO, logging.getLogger().level))


def _fail(message: str) -> None:
    lines = message.strip().splitlines() or ["failed"]
    print(f"coze-speaker: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    """The config; its logging.level is the daemon's (`run`), other commands stay quiet."""
    return load_config(args.config)


Loader = Callable[[], Config]


def _client(config: Config) -> CozeClient:
    """A client even without a token: the first request then says plainly what is missing."""
    return CozeClient.from_config(config.coze)


# -- voices ------------------------------------------------------------------------------

def cmd_voices(args: argparse.Namespace, load: Loader) -> int:
    config = load()
    with _client(config) as client:
        voices = list(client.list_voices(filter_system_voice=args.custom, model_type=args.model,
                                         voice_state=args.state))
    if args.json:
        json.dump(voices, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 0
    print(format_voice_table(voices))
    return 0


def format_voice_table(voices: list[dict]) -> str:
    """A plain table that fits a terminal: name, id, model, language, emotions, kind."""
    header = ("NAME", "VOICE_ID", "MODEL", "LANGUAGE", "EMOTIONS", "KIND")
    rows = [header]
    for v in voices:
        emotions = ",".join(e.get("emotion", "") for e in (v.get("support_emotions") or []) if isinstance(e, dict))
        rows.append((
            str(v.get("name") or ""), str(v.get("voice_id") or ""), str(v.get("model_type") or ""),
            str(v.get("language_code") or v.get("language_name") or ""), emotions or "-",
            "system" if v.get("is_system_voice") else "custom",
        ))
    widths = [min(40, max(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = ["  ".join(cell[:widths[i]].ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append(f"{len(voices)} voice(s)")
    return "\n".join(lines)


# -- clone -------------------------------------------------------------------------------

def cmd_clone(args: argparse.Namespace, load: Loader) -> int:
    config = load()
    with _client(config) as client:
        voice_id = client.clone_voice(args.file, args.name, audio_format=args.audio_format,
                                      language=args.language, voice_id=args.voice_id, text=args.text,
                                      preview_text=args.preview_text, space_id=args.space_id)
    print(voice_id)
    return 0


# -- say ---------------------------------------------------------------------------------

def cmd_say(args: argparse.Namespace, load: Loader) -> int:
    from ..app.wiring import build_sound, build_voice, play_rate
    from ..cancel import CancelToken
    from ..sound.wav import write_wav

    config = load()
    text = sys.stdin.read() if args.text == "-" else args.text
    rate = play_rate(config, for_file=args.output is not None)
    with build_voice(config, rate=rate) as voice:
        request = voice.requests.build(text, voice_id=args.voice, emotion=args.emotion, speed=args.speed)
        token = CancelToken()
        speech = voice.source.open(request, use_cache=not args.no_cache, token=token)
        if args.output is not None:
            frames = write_wav(args.output, speech, rate)
            print(f"wrote {args.output}: {frames / rate:.2f} s at {rate} Hz" + (" (cached)" if speech.cached else ""))
            return 0
        sound = build_sound(config, rate=rate)
        try:
            sound.speaker.play(speech, token=token, volume=config.audio.volume, chime=sound.chimes.choose(None))
        finally:
            speech.close()
            sound.close()
    return 0


# -- run ---------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, load: Loader) -> int:
    from ..app.daemon import Daemon

    config = load()
    if not args.verbose:
        setup_logging(0, config.logging.level)
    return Daemon(config).run()


# -- devices -----------------------------------------------------------------------------

def cmd_devices(args: argparse.Namespace, load: Loader) -> int:
    from ..sound.devices import format_devices, list_devices

    devices = list_devices()
    print(format_devices(devices))
    return 0


# -- cache -------------------------------------------------------------------------------

def _cache(config: Config) -> "PhraseCache":
    from ..app.wiring import open_cache

    return open_cache(config)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _when(ts: Optional[float]) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def cmd_cache_stats(args: argparse.Namespace, load: Loader) -> int:
    with _cache(load()) as cache:
        s = cache.stats()
    lookups = s.hits + s.misses
    print(f"directory  {s.dir}")
    print(f"entries    {s.entries}")
    print(f"size       {_size(s.bytes)} of {_size(s.max_bytes)}")
    print(f"hits       {s.hits}" + (f" ({100 * s.hits / lookups:.0f}% of {lookups} lookups)" if lookups else ""))
    print(f"misses     {s.misses}")
    print(f"oldest     {_when(s.oldest)}")
    print(f"newest     {_when(s.newest)}")
    return 0


def cmd_cache_clear(args: argparse.Namespace, load: Loader) -> int:
    with _cache(load()) as cache:
        print(f"removed {cache.clear()} cached phrase(s)")
    return 0


def cmd_cache_prune(args: argparse.Namespace, load: Loader) -> int:
    with _cache(load()) as cache:
        removed, freed = cache.prune()
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}, freed {_size(freed)}")
    return 0


def cmd_cache_verify(args: argparse.Namespace, load: Loader) -> int:
    with _cache(load()) as cache:
        report = cache.verify()
    checked = report.checked
    print(f"checked {checked} entr{'y' if checked == 1 else 'ies'}, removed {len(report.removed)} broken")
    if report.without_checksum:
        print(f"{report.without_checksum} entr{'y was' if report.without_checksum == 1 else 'ies were'} written "
              "before checksums: only the header could be checked (`cache clear` renews them)")
    return 0


def cmd_cache_warm(args: argparse.Namespace, load: Loader) -> int:
    from ..app.wiring import build_voice, play_rate
    from .warm import read_phrases, warm

    config = load()
    try:
        phrases = read_phrases(args.file)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with build_voice(config, rate=play_rate(config), offline_voice=False, plays=False) as voice:
        report = warm(voice.requests, voice.source, phrases, progress=sys.stderr.isatty())
    print(report.summary())
    return 1 if report.failed else 0


# -- doctor ------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace, load: Loader) -> int:
    from .doctor import run_checks

    return run_checks(args.config)
