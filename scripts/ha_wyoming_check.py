#!/usr/bin/env python3
"""Check the speaker's Wyoming TTS service through a real Home Assistant (issue 14, item 3).

For scripts/ha-check.sh (which runs Home Assistant, the fake Coze and the daemon): call
`check_wyoming(...)` once the daemon listens with `wyoming.enabled`; it returns one
(name, ok, detail) per check. Standalone, against any Home Assistant and speaker:

    scripts/ha_wyoming_check.py --ha http://127.0.0.1:8123 --token-file TOKEN \
        --host 127.0.0.1 --port 10200 --voice 7426720361733046281 --rate 24000

What it does, as a user would: adds the Wyoming integration through Home Assistant's config
flow (host and port), waits for its `tts.*` entity, reads the entity's languages and voices
over the websocket API, and asks Home Assistant for audio (`/api/tts_get_url`, then the
file): a WAV at the speaker's synthesis rate. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
import wave
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

Check = Tuple[str, bool, str]


class HomeAssistant:
    """Home Assistant's REST API and one websocket command at a time, with a long-lived token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def rest(self, method: str, path: str, body: Optional[dict] = None, *, raw: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            content = response.read()
        return content if raw else json.loads(content or b"null")

    def ws(self, command: dict) -> Any:
        """Send one websocket command; its result (raises on an error answer)."""
        parts = urlsplit(self.url)
        with _WebSocket(parts.hostname or "127.0.0.1", parts.port or 8123, "/api/websocket") as ws:
            assert ws.recv()["type"] == "auth_required"
            ws.send({"type": "auth", "access_token": self.token})
            answer = ws.recv()
            if answer["type"] != "auth_ok":
                raise RuntimeError(f"websocket auth failed: {answer}")
            ws.send({"id": 1, **command})
            for _ in range(100):
                answer = ws.recv()
                if answer.get("id") == 1 and answer.get("type") == "result":
                    if not answer.get("success"):
                        raise RuntimeError(f"{command['type']}: {answer.get('error')}")
                    return answer.get("result")
        raise RuntimeError(f"no result for {command['type']}")


class _WebSocket:
    """The least of RFC 6455 a check needs: text frames, client-side masking, ping/pong."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        if b" 101 " not in status:
            raise RuntimeError(f"no websocket: {status!r}")
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def __enter__(self) -> "_WebSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def send(self, message: dict, opcode: int = 1) -> None:
        payload = json.dumps(message).encode() if opcode == 1 else b""
        self._frame(opcode, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> dict:
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            opcode = first & 0x0F
            if opcode == 9:  # ping
                self._frame(10, payload)
                continue
            if opcode == 8:
                raise RuntimeError("the websocket was closed")
            message += payload
            if first & 0x80:
                return json.loads(message)

    def _read(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) < n:
            raise RuntimeError("the websocket ended")
        return data


def _poll(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # Home Assistant still starting the entry
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {timeout:g} s ({last})")


def add_wyoming(ha: HomeAssistant, host: str, port: int) -> str:
    """The Wyoming integration's config flow, as a user would fill it in; the entry's title."""
    flow = ha.rest("POST", "/api/config/config_entries/flow", {"handler": "wyoming", "show_advanced_options": False})
    if flow.get("type") == "form":
        flow = ha.rest("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"host": host, "port": port})
    if flow.get("type") == "abort" and flow.get("reason") == "already_configured":
        return "already configured"
    if flow.get("type") != "create_entry":
        raise RuntimeError(f"the Wyoming config flow ended with {flow}")
    return str(flow.get("title"))


def tts_entity(ha: HomeAssistant) -> str:
    states = ha.rest("GET", "/api/states")
    return next((s["entity_id"] for s in states if s["entity_id"].startswith("tts.")
                 and "coze" in (s["attributes"].get("friendly_name") or s["entity_id"]).lower()), "")


def check_wyoming(ha_url: str, token: str, *, host: str, port: int, voice: str, rate: int,
                  expected_voices: Optional[Dict[str, str]] = None,
                  expected_pcm: Optional[Callable[[str, str], bytes]] = None,
                  speech_calls: Optional[Callable[[], int]] = None,
                  served: Optional[Callable[[], int]] = None,
                  coze_down: Optional[Callable[[bool], None]] = None) -> List[Check]:
    """Every check, in order. expected_voices: {voice_id: language} of the account (the fake
    Coze's); expected_pcm(text, voice_id): the audio the fake gives; speech_calls(): the fake's
    count of speech requests and served(): the speaker's count of Wyoming requests answered
    (its log's "Wyoming: spoke" lines): a phrase asked twice reaches it twice, Coze once;
    coze_down(True/False): make the fake Coze refuse every speech request (without a fallback
    voice Home Assistant must get an error at once), and answer again."""
    ha = HomeAssistant(ha_url, token)
    checks: List[Check] = []

    def check(name: str, fn: Callable[[], Tuple[bool, str]]) -> bool:
        try:
            ok, detail = fn()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append((name, ok, detail))
        return ok

    if not check("wyoming: the integration is added (host, port)", lambda: (True, add_wyoming(ha, host, port))):
        return checks
    found: Dict[str, str] = {}

    def entity() -> Tuple[bool, str]:
        found["id"] = _poll("the Wyoming tts entity", lambda: tts_entity(ha), 60)
        return True, found["id"]

    if not check("wyoming: a tts entity appears", entity):
        return checks
    engine = found["id"]
    language: Dict[str, str] = {}

    def voices() -> Tuple[bool, str]:
        info = ha.ws({"type": "tts/engine/get", "engine_id": engine})
        languages = set(info["provider"]["supported_languages"])
        wanted = expected_voices or {}
        if wanted and languages != set(wanted.values()):
            return False, f"languages {sorted(languages)} != {sorted(set(wanted.values()))}"
        listed: Dict[str, str] = {}
        for lang in sorted(languages):
            for v in ha.ws({"type": "tts/engine/voices", "engine_id": engine, "language": lang})["voices"] or []:
                listed[v["voice_id"]] = lang
        if voice not in listed:
            return False, f"the configured voice {voice} is not offered ({len(listed)} voices)"
        language["voice"] = listed[voice]
        if wanted and listed != wanted:
            return False, f"{len(listed)} voices offered, {len(wanted)} expected; differ: {sorted(set(listed) ^ set(wanted))[:5]}"
        return True, f"{len(listed)} voices in {len(languages)} languages"

    if not check("wyoming: the entity offers the account's voices by language", voices):
        return checks

    def audio(text: str, **options: str) -> Tuple[int, bytes]:
        got = ha.rest("POST", "/api/tts_get_url", {"engine_id": engine, "message": text, "language": language["voice"],
                                                  # wav: Home Assistant's mp3 default needs ffmpeg, which the check's chroot lacks
                                                  "options": {"voice": voice, "preferred_format": "wav", **options}})
        data = ha.rest("GET", urlsplit(got["url"]).path, raw=True)
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getsampwidth(), w.getnchannels()) == (2, 1), (w.getsampwidth(), w.getnchannels())
            return w.getframerate(), w.readframes(w.getnframes())

    text = f"Home Assistant asks in a Coze voice ({int(time.time())})"

    def speaks() -> Tuple[bool, str]:
        got_rate, pcm = audio(text)
        if got_rate != rate:
            return False, f"{got_rate} Hz, not the speaker's {rate} Hz"
        if expected_pcm is not None and pcm != expected_pcm(text, voice):
            return False, f"{len(pcm)} bytes of audio, not the fake Coze's {len(expected_pcm(text, voice))}"
        return bool(pcm), f"{len(pcm)} bytes at {got_rate} Hz"

    if not check("wyoming: tts_get_url gives the voice's audio at the synthesis rate", speaks):
        return checks
    if speech_calls is not None and served is not None:
        def repeat() -> Tuple[bool, str]:
            again = text + " again"
            calls, asked = speech_calls(), served()
            audio(again)
            audio(again, speaker="again")  # another key for Home Assistant's cache; the speaker ignores it
            reached, paid = served() - asked, speech_calls() - calls
            return reached == 2 and paid == 1, f"asked {reached} times through Home Assistant, {paid} Coze request(s)"

        check("wyoming: a repeated phrase costs no Coze call", repeat)
    if coze_down is not None:
        def failure() -> Tuple[bool, str]:
            coze_down(True)
            started = time.monotonic()
            try:
                audio(text + " while Coze is down")
                return False, "Home Assistant got audio while Coze refused every request"
            except urllib.error.HTTPError as exc:
                return True, f"HTTP {exc.code} after {time.monotonic() - started:.1f} s (no wait for audio that cannot come)"
            finally:
                coze_down(False)

        check("wyoming: a Coze failure is an error in Home Assistant, not a hang", failure)
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ha", default="http://127.0.0.1:8123")
    parser.add_argument("--token-file", required=True, help="a file holding a long-lived access token")
    parser.add_argument("--host", default="127.0.0.1", help="the speaker's Wyoming address, as Home Assistant reaches it")
    parser.add_argument("--port", type=int, default=10200)
    parser.add_argument("--voice", required=True, help="the speaker's coze.voice_id")
    parser.add_argument("--rate", type=int, required=True, help="the speaker's synthesis rate")
    args = parser.parse_args()
    with open(args.token_file) as fh:
        token = fh.read().strip()
    checks = check_wyoming(args.ha, token, host=args.host, port=args.port, voice=args.voice, rate=args.rate)
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    return 0 if checks and all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
