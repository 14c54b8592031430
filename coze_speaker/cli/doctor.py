"""`coze-speaker doctor`: check a setup piece by piece, one ✓/✗ line each, with the fix."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from ..coze import CozeClient

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
    for check in (check_token, check_voice, check_broker, check_audio, check_cache):
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
            fix = {4100: f"the token is invalid or expired, or belongs to the other region than {config.coze.base_url}",
                   4101: "give the token the listVoice and createSpeech permissions"}.get(exc.code if isinstance(exc.code, int) else 0, "see the message")
            return (False, f"Coze token: {exc}", fix)
    return (True, f"Coze token works against {config.coze.base_url}", "")


def check_voice(config: Config) -> Check:
    from ..coze import CozeError

    voice = config.coze.voice_id
    if not voice:
        return (False, "voice: coze.voice_id is not set", "pick one from `coze-speaker voices` and set coze.voice_id")
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
        fix = {"busy": "another program holds the device: stop it, or use a dmix device",
               "missing": "check audio.device against `coze-speaker devices` / `aplay -L`, and that the user is in "
                          "the audio group"}.get(exc.kind, "see the message; try `aplay -D DEVICE` by hand")
        return (False, f"audio: {exc}", fix)
    return (True, f"audio: {player.name} on {a.device!r} at {rate} Hz", "")


def check_cache(config: Config) -> Check:
    from ..app.wiring import open_cache
    from ..cache import CacheError

    try:
        with open_cache(config) as cache:
            probe = cache.directory / "tmp" / ".doctor-probe"
            probe.parent.mkdir(exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
            s = cache.stats()
    except (OSError, CacheError) as exc:
        return (False, f"cache {config.cache.dir}: {exc}", "make the directory writable for the daemon's user, or set cache.dir")
    return (True, f"cache {s.dir}: {s.entries} phrase(s), {s.bytes // 1024} KB of {s.max_bytes // 1048576} MB", "")

