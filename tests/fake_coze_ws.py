"""The fake Coze's WebSocket speech endpoint (``GET /v1/audio/speech`` with ``Upgrade:
websocket`` on the fake's own port), written from the documented protocol
(/work/shared/coze-audio-api.md, "WebSocket speech synthesis") with the standard library only.

Server side of one session:

* the upgrade (RFC 6455: ``Sec-WebSocket-Accept``); ``speech.created`` with a logid;
* ``speech.update`` -> ``speech.updated`` with the settings in force (codec pcm, the sample
  rate, ``speech_rate`` -50..100, ``voice_id``, ``emotion_config``); invalid -> ``error`` 4000,
  an unknown voice -> ``error`` 4200;
* ``input_text_buffer.append`` (any number) and ``input_text_buffer.complete`` ->
  ``input_text_buffer.completed``, then, ``ws_first_audio`` seconds later, an event no SDK
  models (``conversation.audio.sentence_start``, as real sessions have), the audio as
  ``speech.audio.update`` events of base64 pcm (``ws_chunk_ms`` of audio each, paced at
  ``ws_realtime_factor`` x real time, or as fast as possible) and ``speech.audio.completed``;
* a wrong token is accepted, then answered with an ``error`` event 4100 and a close.

The audio is ``FakeCoze.audio_for(text, voice, "pcm", rate, 1 + speech_rate / 100, emotion)``:
the same bytes the HTTP endpoint gives for the same request. Faults (``WsFault``) are queued
per session (``add_ws_fault``) or held for every session (``ws_outage``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CODECS = ("pcm", "g711a", "g711u", "opus")


@dataclass
class WsFault:
    """A fault for one WebSocket session (see FakeCoze.add_ws_fault).

    ``refuse_status``: answer the upgrade with this HTTP status (and ``refuse_body``, JSON
    when a dict) instead of 101. ``error_code``/``error_msg``: send an ``error`` event
    instead of ``error_on`` ("update": the speech.updated answer, "complete": the audio),
    then close when ``close_after_error``. ``close_after``: drop the TCP connection (no close
    frame) once this many audio bytes were sent. ``hang``: wait this long before the audio.
    ``chunk_bytes``: audio events of this many bytes (odd sizes allowed) instead of
    ``ws_chunk_ms`` of audio. ``extra_events``: more events no SDK models, sent before the
    audio and between its first two chunks.
    """

    refuse_status: Optional[int] = None
    refuse_body: Any = None
    error_code: Optional[int] = None
    error_msg: str = ""
    error_on: str = "complete"
    close_after_error: bool = True
    close_after: Optional[int] = None
    hang: Optional[float] = None
    chunk_bytes: Optional[int] = None
    extra_events: List[dict] = field(default_factory=list)


@dataclass
class WsSession:
    """One WebSocket session as the fake saw it."""

    t_connect: float
    headers: Dict[str, str]
    path: str
    logid: str = ""
    refused_status: Optional[int] = None
    fault: Optional[WsFault] = None
    received: List[dict] = field(default_factory=list)    # the client's events, parsed
    settings: Optional[dict] = None                        # output_audio in force
    text: str = ""                                         # the text last synthesized (appends joined)
    t_complete: Optional[float] = None                     # input_text_buffer.complete received
    t_first_audio: Optional[float] = None                  # first speech.audio.update written
    audio_bytes: int = 0                                   # pcm bytes sent (decoded)
    completed: bool = False                                # speech.audio.completed sent
    errors: List[int] = field(default_factory=list)        # codes of error events sent
    closed_by_client: bool = False

    @property
    def authorization(self) -> Optional[str]:
        return self.headers.get("authorization")

    def events_of(self, kind: str) -> List[dict]:
        return [e for e in self.received if e.get("event_type") == kind]


class _Closed(Exception):
    """The peer went away, or the session is over."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode("ascii")).digest()).decode("ascii")


def is_upgrade(handler: Any) -> bool:
    return (handler.command == "GET" and "websocket" in handler.headers.get("Upgrade", "").lower()
            and "upgrade" in handler.headers.get("Connection", "").lower())


class WsServerSession:
    """Runs one session on the handler's connection (the handler thread is the session's)."""

    def __init__(self, fake: Any, handler: Any, record: WsSession) -> None:
        self.fake = fake
        self.h = handler
        self.rec = record
        self.fault = record.fault
        self._write_lock = threading.Lock()
        self._ids = 0
        self._buffer = ""

    # -- framing ------------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        data = self.h.rfile.read(n)
        if data is None or len(data) < n:
            raise _Closed()
        return data

    def read_frame(self) -> tuple:
        b0, b1 = self._read_exact(2)
        opcode, masked, length = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exact(8))[0]
        if not masked:  # RFC 6455 5.1: a client frame must be masked
            raise _Closed()
        mask = self._read_exact(4)
        payload = bytearray(self._read_exact(length))
        for i in range(len(payload)):
            payload[i] ^= mask[i % 4]
        return opcode, bool(b0 & 0x80), bytes(payload)

    def write_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        with self._write_lock:
            try:
                self.h.wfile.write(head + payload)
            except OSError:
                raise _Closed() from None

    def send_event(self, event_type: str, data: Optional[dict] = None) -> None:
        self._ids += 1
        event: Dict[str, Any] = {"id": "%s-%d" % (self.rec.logid[-8:], self._ids), "event_type": event_type,
                                 "detail": {"logid": self.rec.logid, "respond_at": str(int(time.time() * 1000))}}
        if data is not None:
            event["data"] = data
        self.write_frame(OP_TEXT, json.dumps(event, ensure_ascii=False).encode("utf-8"))

    def send_error(self, code: int, msg: str) -> None:
        self.rec.errors.append(code)
        self.send_event("error", {"code": code, "msg": msg})

    def close(self, status: int = 1000) -> None:
        try:
            self.write_frame(OP_CLOSE, struct.pack("!H", status))
        except _Closed:
            pass
        raise _Closed()

    def drop(self) -> None:
        """End the TCP connection without a close frame (a network failure mid-stream)."""
        try:
            self.h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Closed()

    # -- the session --------------------------------------------------------------------

    def handshake(self) -> bool:
        h, fault = self.h, self.fault
        if fault is not None and fault.refuse_status is not None:
            body = fault.refuse_body
            if isinstance(body, dict):
                body, ctype = json.dumps(body).encode("utf-8"), "application/json"
            else:
                body, ctype = (body or "").encode("utf-8") if isinstance(body, str) else (body or b""), "text/plain"
            self.rec.refused_status = fault.refuse_status
            h.send_response(fault.refuse_status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("X-Tt-Logid", self.rec.logid)
            h.end_headers()
            h.wfile.write(body)
            h.close_connection = True
            return False
        key = h.headers.get("Sec-WebSocket-Key", "")
        if not key or h.headers.get("Sec-WebSocket-Version") != "13":
            self.rec.refused_status = 400
            h.send_response(400)
            h.send_header("Content-Length", "0")
            h.end_headers()
            h.close_connection = True
            return False
        h.send_response(101, "Switching Protocols")
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept_key(key))
        h.send_header("X-Tt-Logid", self.rec.logid)
        h.end_headers()
        h.close_connection = True
        return True

    def run(self) -> None:
        try:
            if not self.handshake():
                return
            self.send_event("speech.created")
            if not self.fake._authorized_header(self.rec.headers.get("authorization", "")):
                self.send_error(4100, "authentication is invalid")
                self.close(1008)
            self._loop()
        except (_Closed, OSError, self.fake.Aborted):
            pass
        except Exception as exc:  # a bug in the fake must not look like a client problem silently
            self.fake.ws_errors.append(repr(exc))

    def _loop(self) -> None:
        buffer = b""
        while True:
            opcode, fin, payload = self.read_frame()
            if opcode == OP_CLOSE:
                self.rec.closed_by_client = True
                self.close()
            if opcode == OP_PING:
                self.write_frame(OP_PONG, payload)
                continue
            if opcode in (OP_PONG,):
                continue
            buffer += payload
            if not fin:
                continue
            raw, buffer = buffer, b""
            try:
                event = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                self.send_error(4000, "invalid JSON event")
                continue
            if not isinstance(event, dict) or not isinstance(event.get("event_type"), str):
                self.send_error(4000, "event_type is required")
                continue
            self.rec.received.append(event)
            kind, data = event["event_type"], event.get("data")
            data = data if isinstance(data, dict) else {}
            if kind == "speech.update":
                self._update(data)
            elif kind == "input_text_buffer.append":
                delta = data.get("delta")
                if not isinstance(delta, str):
                    self.send_error(4000, "delta must be a string")
                    continue
                self._buffer += delta
            elif kind == "input_text_buffer.complete":
                self.rec.t_complete = time.monotonic()
                self.send_event("input_text_buffer.completed")
                self._synthesize()
            # other client events: ignored, like the documented server does with unknown ones

    def _update(self, data: dict) -> None:
        fault = self.fault
        audio = data.get("output_audio")
        audio = audio if isinstance(audio, dict) else {}
        codec = audio.get("codec", "pcm")
        pcm = audio.get("pcm_config") if isinstance(audio.get("pcm_config"), dict) else {}
        rate = pcm.get("sample_rate", 24000)
        speech_rate = audio.get("speech_rate", 0)
        voice_id = audio.get("voice_id")
        emotion = audio.get("emotion_config") if isinstance(audio.get("emotion_config"), dict) else None
        problem = None
        if codec not in CODECS:
            problem = "codec must be one of %s" % ", ".join(CODECS)
        elif codec != "pcm":
            problem = "this fake speaks pcm only"
        elif not isinstance(rate, int) or isinstance(rate, bool) or rate not in self.fake.SAMPLE_RATES:
            problem = "sample_rate must be one of %s" % ", ".join(map(str, self.fake.SAMPLE_RATES))
        elif not isinstance(speech_rate, int) or isinstance(speech_rate, bool) or not -50 <= speech_rate <= 100:
            problem = "speech_rate must be an integer between -50 and 100"
        elif "loudness_rate" in audio or "context_texts" in audio:
            problem = "unsupported field"
        elif emotion is not None and emotion.get("emotion") is not None and emotion["emotion"] not in self.fake.EMOTIONS:
            problem = "emotion must be one of %s" % ", ".join(self.fake.EMOTIONS)
        elif emotion is not None and emotion.get("emotion_scale") is not None and not (
                isinstance(emotion["emotion_scale"], (int, float)) and 1 <= emotion["emotion_scale"] <= 5):
            problem = "emotion_scale must be between 1 and 5"
        if problem:
            self.send_error(4000, problem)
            return
        if voice_id is not None and self.fake.get_voice(voice_id) is None:
            self.send_error(4200, "voice not found")
            return
        if fault is not None and fault.error_code is not None and fault.error_on == "update":
            self._fault_error()
            return
        settings = {"codec": "pcm", "pcm_config": {"sample_rate": rate}, "speech_rate": speech_rate,
                    "voice_id": voice_id or self.fake.default_voice_id}
        if emotion:
            settings["emotion_config"] = dict(emotion)
        self.rec.settings = settings
        self.send_event("speech.updated", {"output_audio": settings})

    def _fault_error(self) -> None:
        fault = self.fault
        assert fault is not None and fault.error_code is not None
        self.send_error(fault.error_code, fault.error_msg or self.fake.default_msg(fault.error_code))
        if fault.close_after_error:
            self.close()

    def _synthesize(self) -> None:
        fake, fault, rec = self.fake, self.fault, self.rec
        text, self._buffer = self._buffer, ""
        rec.text = text
        if not text.strip():
            self.send_error(4000, "input is required")
            return
        if len(text.encode("utf-8")) > fake.MAX_INPUT_BYTES:
            self.send_error(4000, "input exceeds %d bytes" % fake.MAX_INPUT_BYTES)
            return
        if fault is not None and fault.error_code is not None and fault.error_on == "complete":
            self._fault_error()
            return
        settings = rec.settings or {"pcm_config": {"sample_rate": 24000}, "speech_rate": 0,
                                    "voice_id": fake.default_voice_id}
        rate = settings["pcm_config"]["sample_rate"]
        speed = round(1 + settings["speech_rate"] / 100.0, 2)
        emotion = (settings.get("emotion_config") or {}).get("emotion")
        audio = fake.audio_for(text, settings["voice_id"], "pcm", rate, speed, emotion, 0)
        if fault is not None and fault.hang:
            fake._sleep(fault.hang)
        # first audio ws_first_audio after the text was complete (making the audio counts)
        fake._sleep(fake.ws_first_audio - (time.monotonic() - (rec.t_complete or time.monotonic())))
        extra = list(fault.extra_events) if fault is not None else []
        self.send_event("conversation.audio.sentence_start", {"text": text})
        for event in extra[:1]:
            self.write_frame(OP_TEXT, json.dumps(event).encode("utf-8"))
        step = fault.chunk_bytes if fault is not None and fault.chunk_bytes else max(2, 2 * rate * fake.ws_chunk_ms // 1000)
        pause = (fake.ws_chunk_ms / 1000.0 / fake.ws_realtime_factor) if fake.ws_realtime_factor else 0.0
        pos = 0
        while pos < len(audio):
            chunk = audio[pos:pos + step]
            if fault is not None and fault.close_after is not None and pos + len(chunk) > fault.close_after:
                cut = max(0, fault.close_after - pos)
                if cut:
                    self._audio_event(chunk[:cut])
                self.drop()
            self._audio_event(chunk)
            pos += len(chunk)
            if pos == len(chunk):
                for event in extra[1:]:
                    self.write_frame(OP_TEXT, json.dumps(event).encode("utf-8"))
            if pos < len(audio) and pause:
                fake._sleep(pause)
        rec.completed = True
        self.send_event("speech.audio.completed")

    def _audio_event(self, chunk: bytes) -> None:
        if self.rec.t_first_audio is None:
            self.rec.t_first_audio = time.monotonic()
        self.rec.audio_bytes += len(chunk)
        self.send_event("speech.audio.update", {"delta": base64.b64encode(chunk).decode("ascii")})
