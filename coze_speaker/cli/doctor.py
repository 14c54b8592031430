"""`coze-speaker doctor`: check a setup piece by piece, one ✓/✗ line each, with the fix.

Each check reuses the code the daemon runs for that part (the wiring, the request
validation, the player, the offline voice, the state writers' way of writing), so a setup
the daemon would only warn about at start, or fail on at the first announcement, gets its
✗ here first.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from ..coze import CozeClient, CozeError

Check = Tuple[bool, str, str]  # ok, what was found, how to fix it


def run_checks(config_path: Optional[str], out=None) -> int:
    out = out or sys.stdout
    results: List[Check] = []
    try:
        config = load_config(config_path)
        where = str(config.source) if config.source else "no file, defaults"
        results.append((True, f"config: {where}" + "".join(f"\n    warning: {w}" for w in config.warnings), ""))
    except ConfigError as exc:
        results.append((False, f"config: {exc}", "fix the lines named above (config.example.yaml documents every key)"))
        _print(results, out)
        return 1
    for check in (check_token, check_voice, check_broker, check_audio, check_fallback, check_cache, check_state,
                  check_clock):
        try:
            results.append(check(config))
        except Exception as exc:  # a check must never crash the doctor
            results.append((False, f"{check.__name__[6:]}: unexpected error: {exc}", "run with -vv and report it"))
    _print(results, out)
    return 0 if all(ok for ok, _, _ in results) else 1


def _print(results: List[Check], out) -> None:
    for ok, found, fix in results:
        print(f"{'✓' if ok else '✗'} {found}", file=out)
        if not ok and fix:
            print(f"    fix: {fix}", file=out)


def _client(config: Config) -> "Optional[CozeClient]":
    from ..app.wiring import coze_client

    return coze_client(config)


def check_token(config: Config) -> Check:
    from ..coze import CozeError

    client = _client(config)
    if client is None:
        return (False, "Coze token: not configured",
                "set coze.token (or coze.token_file, or $COZE_API_TOKEN) to a token with createSpeech and listVoice")
    with client:
        client.retries = 0
        try:
            next(iter(client.list_voices(page_size=1)), None)
        except CozeError as exc:
            return (False, f"Coze token: {exc}", _token_fix(exc, config))
    return (True, f"Coze token works against {config.coze.base_url}", "")


def _token_fix(exc: "CozeError", config: Config) -> str:
    if exc.code == 4100:
        return f"the token is invalid or expired, or belongs to the other region than {config.coze.base_url}"
    if exc.code == 4101:
        return "give the token the listVoice and createSpeech permissions"
    if "TLS certificate not trusted" in exc.msg:
        return ("install the system's CA certificates (sudo apt-get install ca-certificates), or point "
                "SSL_CERT_FILE at the bundle that signs your network's certificates")
    if "_proxy environment variable" in exc.msg or "proxies are supported" in exc.msg:
        return "set https_proxy to http://host:port (http://user:password@host:port with a login), or unset it"
    if "cannot reach" in exc.msg:
        return f"check the network and coze.base_url ({config.coze.base_url}); behind a proxy set https_proxy"
    return "see the message"


def check_voice(config: Config) -> Check:
    from ..coze import CozeError, CozeValidationError
    from ..voice.request import SpeechRequest

    try:  # the validation every announcement passes, so an unset voice is caught the same way
        request = SpeechRequest.from_config(config, "coze-speaker doctor")
    except CozeValidationError as exc:
        fix = ("pick one from `coze-speaker voices` and set coze.voice_id" if exc.field == "voice_id"
               else f"fix coze.{exc.field} (config.example.yaml documents it)")
        return (False, f"voice: {exc}", fix)
    voice = request.params.voice_id
    client = _client(config)
    if client is None:
        return (False, f"voice {voice}: cannot check without a token", "configure the token first")
    with client:
        client.retries = 0
        try:
            for v in client.list_voices(voice_state="all"):
                if v.get("voice_id") == voice:
                    return (True, f"voice {voice} ({v.get('name', '')})", "")
        except CozeError as exc:
            return (False, f"voice {voice}: {exc}", "check the token first")
    return (False, f"voice {voice}: not among the voices this token can use", "pick one from `coze-speaker voices`")


def check_broker(config: Config) -> Check:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from ..mqtt.bridge import apply_credentials

    m = config.mqtt
    result: dict = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason, properties) -> None:
        result["reason"] = reason
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"coze-speaker-doctor-{m.device_id}",
                         protocol=mqtt.MQTTv5 if m.protocol == 5 else mqtt.MQTTv311)
    client.on_connect = on_connect
    apply_credentials(client, m)
    where = f"MQTT broker {m.host}:{m.port}"
    try:
        client.connect(m.host, m.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return (False, f"{where}: {exc}", "check mqtt.host/mqtt.port and that the broker runs (systemctl status mosquitto)")
    client.loop_start()
    try:
        if not done.wait(5):
            return (False, f"{where}: no answer within 5 s", "check the port, TLS settings and firewall")
        reason = result["reason"]
        if reason.is_failure:
            return (False, f"{where}: refused: {reason}", "check mqtt.username / mqtt.password and the broker's ACL")
        return (True, f"{where}: connected", "")
    finally:
        client.disconnect()
        client.loop_stop()


def check_audio(config: Config) -> Check:
    from ..app.wiring import play_rate
    from ..sound.players import PlayerError, make_player
    from ..sound.shaping import silence

    a = config.audio
    try:
        rate = play_rate(config)
        with make_player(a.backend, a.device, retries=0) as player:
            player.play(iter([silence(rate, 50)]), rate)
    except PlayerError as exc:
        if a.backend == "simpleaudio" and importlib.util.find_spec("simpleaudio") is None:
            return (False, f"audio: {exc}", "install the extra named above, or use audio.backend: aplay (or auto)")
        fix = {"busy": "another program holds the device: stop it, or use a dmix device",
               "missing": "check audio.device against `coze-speaker devices` / `aplay -L`, and that the user is in "
                          "the audio group"}.get(exc.kind, "see the message; try `aplay -D DEVICE` by hand")
        return (False, f"audio: {exc}", fix)
    played_on = getattr(player, "device", a.device)
    if player.name != "null" and played_on != a.device:  # simpleaudio plays on 'default' only
        return (False, f"audio: {player.name} ignores audio.device {a.device!r} and plays on {played_on!r}",
                "set audio.backend: aplay to play on audio.device, or audio.device: default")
    return (True, f"audio: {player.name} on {a.device!r} at {rate} Hz", "")


def check_fallback(config: Config) -> Check:
    """The offline voice that speaks when Coze cannot: installed, and able to speak."""
    from ..app.wiring import play_rate
    from ..voice.fallback import EspeakFallback, FallbackError

    f = config.fallback
    engine = config.fallback_engine()  # auto decided: espeak-ng while Coze is not set up
    setting = f"fallback.engine is {f.engine}" + ("" if f.engine != "auto" else
                                                 " and Coze is set up" if engine == "none" else
                                                 " and Coze is not set up (no token or no voice_id)")
    if engine != "espeak-ng":
        return (True, f"offline voice: none ({setting}; uncached phrases fail while Coze cannot speak)", "")
    voice = EspeakFallback(f.voice)
    if not voice.available:  # the daemon's own test, which it only warns about at start
        return (False, f"offline voice: {setting}{',' if f.engine == 'auto' else ''} but {voice.binary} is not "
                       "installed (or not on PATH)", "apt-get install espeak-ng, or set fallback.engine: none")
    try:
        voice.synthesize("ok", play_rate(config, for_file=True))
    except FallbackError as exc:
        return (False, f"offline voice: {exc}",
                "check fallback.voice against `espeak-ng --voices`, or set it to null for the default")
    return (True, f"offline voice: espeak-ng{f' ({f.voice})' if f.voice else ''} speaks ({setting})", "")


def check_cache(config: Config) -> Check:
    from ..app.wiring import open_cache
    from ..cache import CacheError
    from ..fsutil import check_writable_dir

    try:
        with open_cache(config) as cache:
            check_writable_dir(cache.directory / "tmp")
            s = cache.stats()
    except (OSError, CacheError) as exc:
        return (False, f"cache {config.cache.dir}: {exc}", "make the directory writable for the daemon's user, or set cache.dir")
    return (True, f"cache {s.dir}: {s.entries} phrase(s), {s.bytes // 1024} KB of {s.max_bytes // 1048576} MB", "")


def check_state(config: Config) -> Check:
    """The state dir: the queue journal (what was accepted survives a restart) and the volume."""
    from ..fsutil import check_writable_dir

    where = config.state.dir
    try:
        check_writable_dir(where)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return (False, f"state {where}: cannot write there: {reason}"
                       f"{f' ({exc.filename})' if exc.filename and str(exc.filename) != str(where) else ''}; "
                       "queued announcements would not survive a restart",
                "make state.dir a directory the daemon's user can write (systemd: StateDirectory=), or set state.dir")
    return (True, f"state {where}: writable", "")


def check_clock(config: Config) -> Check:
    """The system clock, which a fleet's rooms start a broadcast on: NTP-synchronized? (A
    warning only: a speaker alone, or with fleet.sync off, does not need it.)"""
    from ..clock import read_clock

    clock = read_clock()
    in_fleet = config.fleet.enabled and config.fleet.sync
    if clock is None:
        return (True, "clock: the kernel's NTP state cannot be read here (adjtimex); the rooms of a fleet start "
                      "together only as closely as their clocks agree", "")
    error = f"estimated error {clock.esterror_us / 1000:g} ms, at most {clock.maxerror_us / 1000:g} ms"
    if clock.synchronized:
        return (True, f"clock: synchronized by NTP ({error})", "")
    found = f"clock: not synchronized by NTP (the kernel's {error})"
    if in_fleet:
        found += ("\n    warning: the rooms of a broadcast start at one instant of their own clocks, so they drift "
                  "apart by as much as the clocks do: enable NTP (systemctl enable --now systemd-timesyncd, or "
                  "install chrony) on every speaker")
    return (True, found, "")
