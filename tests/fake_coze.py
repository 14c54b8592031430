"""A faithful, stdlib-only fake of the three Coze audio OpenAPI endpoints.

Endpoints (see /work/shared/coze-audio-api.md):

* ``POST /v1/audio/speech``        text to speech (binary audio body, streamed)
* ``GET  /v1/audio/voices``        list voices (paged JSON)
* ``POST /v1/audio/voices/clone``  clone a voice (multipart/form-data)

The server is a real ``http.server.ThreadingHTTPServer`` on 127.0.0.1 (random
free port) speaking HTTP/1.1 with keep-alive, so a real HTTP client (requests)
is exercised over real sockets.  Every request is recorded, speech responses
are timed, and faults (HTTP errors from a "proxy", JSON error envelopes,
truncated bodies, hangs, dropped connections, mid-body stalls) can be queued
per path, or applied to every request while an outage lasts (``start_outage``,
``end_outage``); ``stop()`` then ``come_back()`` refuses connections for a while
and listens again on the same port.

The WebSocket speech endpoint (``GET /v1/audio/speech`` upgraded, on the same port) lives in
``fake_coze_ws.py``; its sessions are recorded in ``ws_sessions``, not in ``requests``.
``model_services()`` makes both answer like the real services do: HTTP only once the whole
text is "synthesized" (100 ms + 4 ms per character), the WebSocket's first audio 350 ms
after the text is complete, then ~7x real time.

Usage::

    with FakeCoze() as fake:
        r = requests.post(fake.url + "/v1/audio/speech",
                          headers={"Authorization": "Bearer " + fake.token},
                          json={"input": "hi", "voice_id": fake.default_voice_id,
                                "response_format": "pcm"})
        assert r.content == FakeCoze.pcm_for("hi", fake.default_voice_id)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
import socket
import struct
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from fake_coze_ws import WsFault, WsServerSession, WsSession, is_upgrade

__all__ = [
    "FakeCoze",
    "Fault",
    "WsFault",
    "WsSession",
    "RecordedRequest",
    "SpeechTiming",
    "SPEECH_PATH",
    "VOICES_PATH",
    "CLONE_PATH",
    "EMOTIONS",
    "RESPONSE_FORMATS",
    "SAMPLE_RATES",
    "AUDIO_CONTENT_TYPES",
]

SPEECH_PATH = "/v1/audio/speech"
VOICES_PATH = "/v1/audio/voices"
CLONE_PATH = "/v1/audio/voices/clone"

EMOTIONS = ("happy", "sad", "angry", "surprised", "fear", "hate", "excited", "coldness", "neutral")
EMOTION_DISPLAY = {
    "happy": "开心",
    "sad": "悲伤",
    "angry": "愤怒",
    "surprised": "惊讶",
    "fear": "恐惧",
    "hate": "厌恶",
    "excited": "兴奋",
    "coldness": "冷漠",
    "neutral": "中性",
}
RESPONSE_FORMATS = ("wav", "pcm", "ogg_opus", "mp3")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
AUDIO_CONTENT_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg_opus": "audio/ogg",
}
CLONE_AUDIO_FORMATS = ("wav", "mp3", "ogg", "m4a", "aac", "pcm")
LANGUAGES = {
    "zh": "中文",
    "en": "英文",
    "ja": "日语",
    "es": "西班牙语",
    "id": "印度尼西亚语",
    "pt": "葡萄牙语",
}
MAX_INPUT_BYTES = 1024
MAX_VOICE_NAME_BYTES = 128
MAX_CLONE_TEXT_BYTES = 1024
MAX_CLONE_FILE_BYTES = 10 * 1024 * 1024
MAX_TRAININGS = 10
DEFAULT_PREVIEW_TEXT = "你好，我是你的专属AI克隆声音，希望未来可以一起好好相处哦"

_SYSTEM_NAMES = ("北京小爷", "湾湾小何", "爽快思思", "温暖阿虎", "少年梓辛", "邻家女孩", "渊博小叔",
                 "阳光青年", "甜美小源", "清澈梓梓", "解说小明", "开朗姐姐", "Adam", "Sarah",
                 "Amanda", "Jackson", "ひかる", "Lucía", "Sari", "Ana")
_LANG_CYCLE = ("zh", "zh", "zh", "en", "zh", "ja", "zh", "es", "zh", "id", "zh", "pt")

_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}      # Go strconv.ParseBool
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT_RE = re.compile(r"[+-]?\d+\Z")

_LOGID_COUNTER = itertools.count(1)   # process-wide, so logids are unique across fakes


# --------------------------------------------------------------------------- data classes


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str                                  # without query string
    query: Dict[str, str]                      # last value wins, blanks kept
    headers: Dict[str, str]                    # lower-case keys
    body: bytes
    json: Any = None                           # parsed JSON body, or None
    form: Optional[Dict[str, str]] = None      # multipart text fields, or None
    files: Optional[Dict[str, Tuple[str, str, bytes]]] = None  # name -> (filename, content_type, data); first wins
    t: float = 0.0                             # time.monotonic() when the request line/headers were parsed
    logid: str = ""                            # logid of the response (if one was sent)
    fault: Optional["Fault"] = None            # fault consumed by this request, if any

    @property
    def authorization(self) -> Optional[str]:
        return self.headers.get("authorization")


@dataclass
class SpeechTiming:
    """Timing of one audio response of /v1/audio/speech (only requests that got an audio response)."""

    t_request: float                           # monotonic, request received
    input: str
    voice_id: str
    response_format: str
    sample_rate: int
    total_bytes: int                           # size of the full audio body
    t_headers: Optional[float] = None          # monotonic, response headers flushed
    t_first_byte: Optional[float] = None       # monotonic, first body byte written
    t_last_byte: Optional[float] = None        # monotonic, last body byte written
    bytes_sent: int = 0                        # audio bytes written (excluding chunk framing)
    completed: bool = False                    # full body (and chunk terminator) written
    chunked: bool = False
    logid: str = ""


@dataclass
class Fault:
    """A fault injected into one request to a path (see FakeCoze.add_fault).

    Applied in this order:

    1. ``hang``: sleep this many seconds before answering (woken by stop()); ``gate``: then
       wait until that event is set (or stop()), for ordering without timing.
    2. ``drop``: close the socket without any response.
    3. ``code`` set: JSON error envelope ``{"code", "msg", "detail": {"logid"}}`` with
       ``Content-Type: application/json`` and HTTP ``http_status`` (default 200).
    4. else ``http_status`` set: plain-text/HTML body (``body``/``content_type``,
       default an nginx-like HTML page), e.g. 502 or 429 from a proxy.
    5. otherwise the request is served normally.

    ``truncate_after`` (advertise the full length, close after N body bytes),
    ``stall_after``/``stall`` (pause ``stall`` seconds after N body bytes),
    ``trickle_bytes``/``trickle_every`` (speech audio only: send it N bytes at a time, one
    step every so many seconds, e.g. 2 bytes every 0.5 s: never idle long enough for a read
    timeout, never done) and
    ``headers`` (extra response headers, e.g. Retry-After) apply to whatever
    body is sent in steps 3-5.
    """

    http_status: Optional[int] = None
    body: Optional[Any] = None                 # bytes or str, for http_status faults
    content_type: Optional[str] = None
    headers: Dict[str, str] = field(default_factory=dict)
    code: Optional[int] = None
    msg: str = ""
    truncate_after: Optional[int] = None
    hang: Optional[float] = None
    drop: bool = False
    stall_after: Optional[int] = None
    stall: float = 0.0
    trickle_bytes: Optional[int] = None
    trickle_every: float = 0.0
    gate: Optional[threading.Event] = None     # hold the answer until the test sets it (or stop())

    # convenient constructors (names differ from the fields on purpose)
    @classmethod
    def http_error(cls, status: int = 502, body: Optional[Any] = None,
                   content_type: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> "Fault":
        """Proxy-style HTTP error with a non-JSON body (HTML by default)."""
        return cls(http_status=status, body=body, content_type=content_type, headers=dict(headers or {}))

    @classmethod
    def api_error(cls, code: int, msg: str = "", http_status: int = 200,
                  headers: Optional[Dict[str, str]] = None) -> "Fault":
        """Coze JSON error envelope (HTTP 200 by default, like Coze)."""
        return cls(code=code, msg=msg or _default_msg(code), http_status=http_status,
                   headers=dict(headers or {}))

    @classmethod
    def rate_limited(cls, retry_after: Optional[int] = None) -> "Fault":
        """HTTP 429 with a plain-text body, like a gateway."""
        h = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls(http_status=429, body="Too Many Requests\n", content_type="text/plain; charset=utf-8", headers=h)

    @classmethod
    def truncated(cls, after_bytes: int) -> "Fault":
        return cls(truncate_after=int(after_bytes))

    @classmethod
    def hanging(cls, seconds: float) -> "Fault":
        return cls(hang=float(seconds))

    @classmethod
    def dropped(cls) -> "Fault":
        return cls(drop=True)

    @classmethod
    def stalled(cls, after_bytes: int, seconds: float) -> "Fault":
        return cls(stall_after=int(after_bytes), stall=float(seconds))

    @classmethod
    def trickle(cls, step_bytes: int = 2, every: float = 0.5) -> "Fault":
        """Speech audio sent step_bytes at a time, every `every` seconds."""
        return cls(trickle_bytes=int(step_bytes), trickle_every=float(every))


_DEFAULT_MSGS = {
    4000: "invalid parameter",
    4100: "authentication is invalid",
    4101: "the token does not have the permission",
    4102: "request blocked by risk control",
    4008: "the daily request limit has been exceeded",
    4009: "the system request limit has been exceeded",
    4011: "balance insufficient",
    4019: "account in arrears",
    4020: "requests per minute exceeded",
    4200: "voice not found",
    4300: "uploaded file is empty",
    4301: "only one file can be uploaded",
    4302: "uploaded file is too large",
    4303: "unsupported file type",
    4304: "invalid file",
    1109: "WERError: text does not match the audio",
    5000: "server internal error",
}


def _default_msg(code: int) -> str:
    return _DEFAULT_MSGS.get(code, "error")


_HTTP_REASON_BODY = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


class _ApiError(Exception):
    def __init__(self, code: int, msg: str, http_status: Optional[int] = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.http_status = http_status


class _Aborted(Exception):
    """The fake is stopping or the client went away: close the connection."""


# --------------------------------------------------------------------------- audio helpers


def _seed(*parts: Any) -> bytes:
    return hashlib.sha256(repr(parts).encode("utf-8")).digest()


def _prng_bytes(seed: bytes, n: int) -> bytes:
    out = bytearray()
    for i in itertools.count():
        if len(out) >= n:
            break
        out += hashlib.sha256(seed + i.to_bytes(8, "little")).digest()
    return bytes(out[:n])


def _wav_header(n_data: int, sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + n_data) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, bits)
            + b"data" + struct.pack("<I", n_data))


@functools.lru_cache(maxsize=32)
def _pcm_cached(text: str, voice_id: str, sample_rate: int, speed: float,
                emotion: Optional[str], loudness_rate: int) -> bytes:
    seed = _seed("pcm", text, voice_id, sample_rate, speed, emotion, loudness_rate)
    duration = max(0.2, 0.06 * max(1, len(text)) / speed)
    n = max(2, int(round(duration * sample_rate)))
    gain = 1.0 + loudness_rate / 100.0                     # -50 -> 0.5x, 100 -> 2x
    amp = 5000.0 * gain                                    # <= 10000 per tone, 3 tones < 32767

    # K periodic tables, each exactly 100 ms long (frequencies are multiples of 10 Hz),
    # so tiling them is seamless.  No table sample is zero.
    period = sample_rate // 10
    tables: List[array] = []
    for k in range(4):
        h = hashlib.sha256(seed + bytes([k])).digest()
        f0 = 10 * (12 + h[0] % 20)                         # 120..310 Hz
        tones = ((f0, 1.0, h[1] / 255.0 * 2 * math.pi),
                 (2 * f0 + 10 * (h[2] % 3), 0.5, h[3] / 255.0 * 2 * math.pi),
                 (3 * f0, 0.25, h[4] / 255.0 * 2 * math.pi))
        tab = array("h")
        w = 2 * math.pi / sample_rate
        for i in range(period):
            v = 0.0
            for f, a, ph in tones:
                v += a * math.sin(w * f * i + ph)
            s = int(amp * v / 1.75)
            if -64 < s < 64:                                # avoid (near-)silence
                s = 64 + (i % 7) if s >= 0 else -64 - (i % 7)
            tab.append(s)
        tables.append(tab)

    chars = text or " "
    m = len(chars)
    out = array("h")
    prev = 0
    for j, ch in enumerate(chars):
        end = int(round((j + 1) * n / m))
        seg_len = end - prev
        if seg_len > 0:
            tab = tables[hashlib.sha256(seed + ch.encode("utf-8") + j.to_bytes(4, "little")).digest()[0] % len(tables)]
            reps = seg_len // period + 1
            out.extend((tab * reps)[:seg_len])
        prev = end
    # make sure the very first and last samples are clearly non-zero
    if abs(out[0]) < 64:
        out[0] = 1000
    if abs(out[-1]) < 64:
        out[-1] = -1000
    if struct.pack("<h", 1) != b"\x01\x00":                 # big-endian host
        out.byteswap()
    return out.tobytes()


# --------------------------------------------------------------------------- multipart


_PARAM_RE = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> Tuple[str, Dict[str, str]]:
    main = value.split(";", 1)[0].strip().lower()
    params: Dict[str, str] = {}
    for k, v in _PARAM_RE.findall(value):
        k = k.lower()
        v = v.strip()
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        if k.endswith("*"):                                 # RFC 2231/5987: utf-8''%E4%BD%A0
            k = k[:-1]
            if "''" in v:
                charset, _, enc = v.split("'", 2)
                try:
                    v = unquote(enc, encoding=charset or "utf-8")
                except LookupError:
                    v = unquote(enc)
            params[k] = v                                   # extended form wins
        else:
            params.setdefault(k, v)
    return main, params


def _parse_multipart(content_type: str, body: bytes) -> List[Tuple[str, Optional[str], str, bytes]]:
    """Return [(name, filename or None, content_type, data)] or raise ValueError."""
    main, params = _header_params(content_type)
    if main != "multipart/form-data":
        raise ValueError("Content-Type must be multipart/form-data")
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError("multipart boundary missing")
    delim = b"--" + boundary.encode("latin-1")
    pieces = body.split(delim)
    if len(pieces) < 3 and not (len(pieces) == 2 and pieces[1].startswith(b"--")):
        raise ValueError("malformed multipart body")
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break                                           # closing delimiter
        if piece.startswith(b"\r\n"):
            piece = piece[2:]
        elif piece.startswith(b"\n"):
            piece = piece[1:]
        if piece.endswith(b"\r\n"):
            piece = piece[:-2]
        elif piece.endswith(b"\n"):
            piece = piece[:-1]
        sep = piece.find(b"\r\n\r\n")
        seplen = 4
        if sep < 0:
            sep = piece.find(b"\n\n")
            seplen = 2
        if sep < 0:
            raise ValueError("malformed multipart part")
        raw_headers = piece[:sep].decode("utf-8", "replace")
        data = piece[sep + seplen:]
        hdrs: Dict[str, str] = {}
        for line in re.split(r"\r?\n", raw_headers):
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        disp, dparams = _header_params(hdrs.get("content-disposition", ""))
        if disp != "form-data" or "name" not in dparams:
            raise ValueError("multipart part without form-data name")
        ctype = hdrs.get("content-type", "text/plain" if "filename" not in dparams else "application/octet-stream")
        parts.append((dparams["name"], dparams.get("filename"), ctype, data))
    return parts


# --------------------------------------------------------------------------- server plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "FakeCoze"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeCoze/1.0"
    sys_version = ""
    timeout = 120                                           # idle keep-alive safety net

    server: _Server  # type: ignore[assignment]

    # quiet
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        try:  # no Nagle: headers and body are separate writes; avoid 40 ms delayed-ACK stalls
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track(self.connection, False)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_PUT(self) -> None:
        self.server.fake._handle(self)

    def do_DELETE(self) -> None:
        self.server.fake._handle(self)

    def do_PATCH(self) -> None:
        self.server.fake._handle(self)


# --------------------------------------------------------------------------- the fake


class FakeCoze:
    """Fake Coze audio API server.  See module docstring."""

    #: HTTP status used for JSON error envelopes produced by validation; codes not listed -> 200.
    DEFAULT_ERROR_HTTP_STATUS = {4000: 400, 4100: 401}
    SAMPLE_RATES = SAMPLE_RATES
    EMOTIONS = EMOTIONS
    MAX_INPUT_BYTES = MAX_INPUT_BYTES
    Aborted = _Aborted

    def __init__(self, token: str = "pat_fake_token_123", voices: Optional[List[dict]] = None,
                 n_voices: int = 250):
        self.token = token
        if voices is None:
            voices = [self.make_voice(i) for i in range(n_voices)]
        self.voices: List[dict] = [self._complete_voice(copy.deepcopy(v), i) for i, v in enumerate(voices)]

        self.url = ""
        self.host = "127.0.0.1"
        self.port = 0

        # records
        self.requests: List[RecordedRequest] = []
        self.speech_log: List[SpeechTiming] = []
        self.clones: List[dict] = []

        # streaming behaviour of /v1/audio/speech
        self.headers_delay = 0.0      # seconds after the request is read, before the status line/headers
        self.ttfb = 0.0               # seconds after the headers are flushed, before the first body byte
        self.chunk_bytes = 4096
        self.chunk_delay = 0.0        # seconds between body chunks
        self.chunked = True           # True: Transfer-Encoding: chunked, False: Content-Length
        #: (base, per character) seconds of "synthesis" before a speech answer's headers, or None
        self.synthesis: Optional[Tuple[float, float]] = None

        # the WebSocket speech endpoint (fake_coze_ws.py)
        self.ws_sessions: List[WsSession] = []
        self.ws_errors: List[str] = []      # exceptions inside the fake's WebSocket code (a bug)
        self.ws_first_audio = 0.0     # seconds from input_text_buffer.complete to the first audio
        self.ws_chunk_ms = 250        # ms of audio per speech.audio.update
        self.ws_realtime_factor: Optional[float] = None  # audio sent at this x real time; None: at once
        self.ws_outage: Optional[WsFault] = None         # every session gets this fault while set
        self._ws_faults: Deque[WsFault] = deque()

        # fidelity knobs
        self.error_http_status: Dict[int, int] = dict(self.DEFAULT_ERROR_HTTP_STATUS)
        self.speed_range_by_model = False   # True: big 0.5-2, small 0.2-3 (docs); False: 0.2-3 for all
        self.strict_emotion = False         # True: emotion must be in the voice's support_emotions
        self.emit_empty_support_emotions = False  # docs: support_emotions only for multi-emotion voices

        # an outage: every request (to the listed paths, or to all) gets this fault, not consumed
        self.outage: Optional[Fault] = None
        self.outage_paths: Optional[Tuple[str, ...]] = None

        self._lock = threading.RLock()
        self._faults: Dict[str, Deque[Fault]] = {}
        self._clone_counter = itertools.count(1)
        self._stop_event = threading.Event()
        self._conns: set = set()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> "FakeCoze":
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = _Server((self.host, port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self.url = "http://%s:%d" % (self.host, self.port)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="FakeCoze:%d" % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._stop_event.set()                     # wakes hangs / delays
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:                            # wake handler threads blocked on keep-alive reads
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def come_back(self) -> "FakeCoze":
        """Listen again on the same port after stop() (connections were refused meanwhile)."""
        return self.start(self.port)

    def __enter__(self) -> "FakeCoze":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # ------------------------------------------------------------------ records / faults / voices API

    def requests_to(self, path: str, method: Optional[str] = None) -> List[RecordedRequest]:
        path = urlsplit(path).path
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method.upper())]

    def reset_records(self) -> None:
        """Forget recorded requests, speech timings and clones (voices and faults are kept)."""
        with self._lock:
            self.ws_sessions.clear()
            self.requests.clear()
            self.speech_log.clear()
            self.clones.clear()

    def add_fault(self, path: str, fault: Fault) -> None:
        """Queue a fault; faults for a path are consumed FIFO, one per request to that path."""
        path = urlsplit(path).path
        with self._lock:
            self._faults.setdefault(path, deque()).append(fault)

    def add_faults(self, path: str, *faults: Fault) -> None:
        for f in faults:
            self.add_fault(path, f)

    def pending_faults(self, path: Optional[str] = None) -> int:
        with self._lock:
            if path is None:
                return sum(len(q) for q in self._faults.values())
            return len(self._faults.get(urlsplit(path).path, ()))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def add_ws_fault(self, *faults: WsFault) -> None:
        """Queue faults for the next WebSocket sessions, one per session, FIFO."""
        with self._lock:
            self._ws_faults.extend(faults)

    def model_services(self, http: Tuple[float, float] = (0.1, 0.004), ws_first_audio: float = 0.35,
                       ws_realtime_factor: Optional[float] = 7.0) -> None:
        """Answer like the real services: HTTP once the whole text is synthesized (base +
        per character seconds), the WebSocket's first audio `ws_first_audio` s after the text
        is complete, then at `ws_realtime_factor` x real time (a real session: ~7x)."""
        self.synthesis = http
        self.ws_first_audio = ws_first_audio
        self.ws_realtime_factor = ws_realtime_factor

    def ws_sessions_with_text(self) -> List[WsSession]:
        """Sessions that got as far as sending their text."""
        with self._lock:
            return [s for s in self.ws_sessions if s.t_complete is not None]

    def start_outage(self, fault: Fault, *paths: str) -> None:
        """Until end_outage(), every request to these paths (all paths when none are given)
        gets `fault` (e.g. Fault.http_error(503), Fault.dropped(), Fault.hanging(30)); queued
        faults wait until it ends."""
        with self._lock:
            self.outage = fault
            self.outage_paths = tuple(urlsplit(p).path for p in paths) or None

    def end_outage(self) -> None:
        with self._lock:
            self.outage = None
            self.outage_paths = None

    def _take_fault(self, path: str) -> Optional[Fault]:
        with self._lock:
            if self.outage is not None and (self.outage_paths is None or path in self.outage_paths):
                return self.outage
            q = self._faults.get(path)
            if q:
                return q.popleft()
        return None

    def get_voice(self, voice_id: str) -> Optional[dict]:
        with self._lock:
            for v in self.voices:
                if v.get("voice_id") == voice_id:
                    return v
        return None

    def voice_ids(self) -> List[str]:
        with self._lock:
            return [v["voice_id"] for v in self.voices]

    def add_voice(self, voice: dict) -> dict:
        with self._lock:
            v = self._complete_voice(copy.deepcopy(voice), len(self.voices))
            self.voices.append(v)
            return v

    @property
    def default_voice_id(self) -> str:
        """First usable (cloned) voice."""
        with self._lock:
            for v in self.voices:
                if v.get("state") == "cloned":
                    return v["voice_id"]
            return self.voices[0]["voice_id"] if self.voices else ""

    @property
    def emotion_voice_id(self) -> Optional[str]:
        """First voice that supports emotions (None if there is none)."""
        with self._lock:
            for v in self.voices:
                if v.get("support_emotions"):
                    return v["voice_id"]
        return None

    # ------------------------------------------------------------------ deterministic data

    @staticmethod
    def make_voice(i: int, **overrides: Any) -> dict:
        """The i-th generated voice (deterministic).  Mix: ~3/4 system voices (big/small
        alternating, every third big one multi-emotion), ~1/4 custom cloned big voices."""
        is_system = i % 4 != 3
        lang = _LANG_CYCLE[i % len(_LANG_CYCLE)]
        if is_system:
            name = "%s%d" % (_SYSTEM_NAMES[i % len(_SYSTEM_NAMES)], i)
            model_type = "big" if (i // 4) % 2 == 0 else "small"
            training = 0
        else:
            name = "my_voice_%d" % i
            model_type = "big"
            training = 9 - (i % 10)
        voice_id = "voice_%04d" % i                   # deterministic, readable: voice_0000, voice_0001, ...
        create = 1729686510 + i * 3600
        v = {
            "voice_id": voice_id,
            "name": name,
            "state": "cloned",
            "model_type": model_type,
            "create_time": create,
            "update_time": create + (i % 5) * 60,
            "preview_text": "你好，欢迎来到AI世界，我是%s。" % name,
            "language_code": lang,
            "language_name": LANGUAGES[lang],
            "preview_audio": "https://lf3-appstore-sign.oceancloudapi.com/ocean-cloud-tos/VolcanoUserVoice/%s.mp3"
                             "?lk3s=da27ec82&x-expires=1730277357&x-signature=fake%%3D" % voice_id,
            "is_system_voice": is_system,
            "support_emotions": [],
            "available_training_times": training,
        }
        if is_system and model_type == "big" and i % 3 == 0:
            n_emo = 2 + i % (len(EMOTIONS) - 1)
            start = i % len(EMOTIONS)
            emos = [EMOTIONS[(start + k) % len(EMOTIONS)] for k in range(n_emo)]
            v["support_emotions"] = [
                {"emotion": e, "display_name": EMOTION_DISPLAY[e],
                 "emotion_scale_interval": {"min": 1.0, "max": 5.0, "default": 4.0 if k % 2 == 0 else 3.0}}
                for k, e in enumerate(emos)
            ]
        v.update(overrides)
        return v

    @staticmethod
    def _complete_voice(v: dict, i: int) -> dict:
        defaults = FakeCoze.make_voice(i, support_emotions=[])   # never invent emotions for given voices
        for k, dv in defaults.items():
            if k not in v:
                v[k] = dv
        return v

    @staticmethod
    def pcm_for(text: str, voice_id: str, sample_rate: int = 24000, speed: float = 1.0,
                emotion: Optional[str] = None, loudness_rate: int = 0) -> bytes:
        """Deterministic headerless s16le mono audio for these parameters.

        Length: max(0.2 s, 0.06 s per character / speed) at sample_rate.  Content: per
        character one of four 3-tone 100 ms periodic tables; no sample is zero (so the
        first and last samples are non-zero and trailing zero padding is detectable).
        """
        return _pcm_cached(text, voice_id, int(sample_rate), float(speed),
                           emotion or None, int(loudness_rate))

    @staticmethod
    def wav_for(text: str, voice_id: str, sample_rate: int = 24000, speed: float = 1.0,
                emotion: Optional[str] = None, loudness_rate: int = 0) -> bytes:
        pcm = FakeCoze.pcm_for(text, voice_id, sample_rate, speed, emotion, loudness_rate)
        return _wav_header(len(pcm), int(sample_rate)) + pcm

    @staticmethod
    def audio_for(text: str, voice_id: str, response_format: str = "mp3", sample_rate: int = 24000,
                  speed: float = 1.0, emotion: Optional[str] = None, loudness_rate: int = 0) -> bytes:
        """The exact body /v1/audio/speech returns for these parameters."""
        if response_format == "pcm":
            return FakeCoze.pcm_for(text, voice_id, sample_rate, speed, emotion, loudness_rate)
        if response_format == "wav":
            return FakeCoze.wav_for(text, voice_id, sample_rate, speed, emotion, loudness_rate)
        duration = max(0.2, 0.06 * max(1, len(text)) / float(speed))
        seed = _seed(response_format, text, voice_id, int(sample_rate), float(speed), emotion or None,
                     int(loudness_rate))
        if response_format == "mp3":               # ~32 kbit/s; ID3 tag + frame sync + noise
            n = int(duration * 4000)
            return b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + _prng_bytes(seed, n)
        if response_format == "ogg_opus":
            n = int(duration * 3000)
            return b"OggS\x00\x02" + b"\x00" * 8 + _prng_bytes(seed, 8) + b"OpusHead" + _prng_bytes(seed[::-1], n)
        raise ValueError("unknown response_format %r" % (response_format,))

    # ------------------------------------------------------------------ request handling

    def new_logid(self) -> str:
        n = next(_LOGID_COUNTER)
        return time.strftime("%Y%m%d%H%M%S") + "%06d" % (n % 1000000) + hashlib.sha256(
            b"%d" % n).hexdigest()[:10].upper()

    def _sleep(self, seconds: float) -> None:
        if seconds and seconds > 0:
            if self._stop_event.wait(seconds):
                raise _Aborted()

    def _read_body(self, h: _Handler) -> bytes:
        te = h.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            out = bytearray()
            while True:
                line = h.rfile.readline(65537)
                if not line:
                    raise _Aborted()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:                      # trailers
                        t = h.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline(65537)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length > 0 else b""

    def _handle(self, h: _Handler) -> None:
        t = time.monotonic()
        split = urlsplit(h.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        if path == SPEECH_PATH and is_upgrade(h):
            self._websocket(h, t, path, headers)
            return
        try:
            body = self._read_body(h)
        except (_Aborted, ValueError, OSError):
            h.close_connection = True
            return
        rec = RecordedRequest(method=h.command, path=path, query=query, headers=headers, body=body, t=t)
        ctype = headers.get("content-type", "")
        if body and "json" in ctype.lower() or (body[:1] in (b"{", b"[") and "multipart" not in ctype.lower()):
            try:
                rec.json = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                rec.json = None
        multipart_parts = None
        multipart_error = None
        if ctype.lower().startswith("multipart/"):
            try:
                multipart_parts = _parse_multipart(ctype, body)
            except ValueError as e:
                multipart_error = str(e)
            else:
                rec.form = {}
                rec.files = {}
                for name, filename, pctype, data in multipart_parts:
                    if filename is None:
                        rec.form[name] = data.decode("utf-8", "replace")
                    elif name not in rec.files:
                        rec.files[name] = (filename, pctype, data)
        fault = self._take_fault(path)
        rec.fault = fault
        with self._lock:
            self.requests.append(rec)

        try:
            self._dispatch(h, rec, fault, multipart_parts, multipart_error)
        except _Aborted:
            h.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
            h.close_connection = True

    def _dispatch(self, h: _Handler, rec: RecordedRequest, fault: Optional[Fault],
                  parts: Optional[list], parts_error: Optional[str]) -> None:
        logid = self.new_logid()
        rec.logid = logid
        if fault is not None:
            if fault.hang:
                self._sleep(fault.hang)
            while fault.gate is not None and not fault.gate.wait(0.05):
                if self._stop_event.is_set():
                    raise _Aborted()
            if fault.drop:
                rec.logid = ""
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.code is not None:
                self._send_json(h, fault.http_status or 200, self._envelope(fault.code, fault.msg, logid),
                                logid, fault)
                return
            if fault.http_status is not None:
                status = fault.http_status
                body = fault.body
                ctype = fault.content_type
                if body is None:
                    reason = _HTTP_REASON_BODY.get(status, h.responses.get(status, ("Error",))[0])
                    body = ("<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d %s</h1>"
                            "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
                            % (status, reason, status, reason))
                    ctype = ctype or "text/html"
                if isinstance(body, str):
                    body = body.encode("utf-8")
                self._send_bytes(h, status, body, ctype or "text/plain; charset=utf-8", logid, fault)
                return

        try:
            route = self._route(rec)
            if route is None:
                raise _ApiError(4000, "path not found: %s %s" % (rec.method, rec.path), 404)
            if not self._authorized(rec):
                raise _ApiError(4100, "authentication is invalid")
            if route == "speech":
                params = self._validate_speech(rec)
                self._send_speech(h, rec, params, logid, fault)
            elif route == "voices":
                self._send_json(h, 200, self._list_voices(rec, logid), logid, fault)
            elif route == "clone":
                self._send_json(h, 200, self._clone(rec, parts, parts_error, logid), logid, fault)
        except _ApiError as e:
            status = e.http_status or self.error_http_status.get(e.code, 200)
            self._send_json(h, status, self._envelope(e.code, e.msg, logid), logid, fault)

    @staticmethod
    def _route(rec: RecordedRequest) -> Optional[str]:
        if rec.path == SPEECH_PATH and rec.method == "POST":
            return "speech"
        if rec.path == VOICES_PATH and rec.method == "GET":
            return "voices"
        if rec.path == CLONE_PATH and rec.method == "POST":
            return "clone"
        return None

    def _authorized(self, rec: RecordedRequest) -> bool:
        return self._authorized_header(rec.headers.get("authorization", ""))

    def _authorized_header(self, auth: str) -> bool:
        scheme, _, tok = auth.partition(" ")
        return scheme.lower() == "bearer" and tok.strip() == self.token and bool(self.token)

    @staticmethod
    def default_msg(code: int) -> str:
        return _default_msg(code)

    def _websocket(self, h: _Handler, t: float, path: str, headers: Dict[str, str]) -> None:
        """One WebSocket session on this connection (fake_coze_ws.py)."""
        with self._lock:
            fault = self.ws_outage if self.ws_outage is not None else (
                self._ws_faults.popleft() if self._ws_faults else None)
            record = WsSession(t_connect=t, headers=headers, path=path, logid=self.new_logid(), fault=fault)
            self.ws_sessions.append(record)
        h.close_connection = True
        WsServerSession(self, h, record).run()

    @staticmethod
    def _envelope(code: int, msg: str, logid: str) -> dict:
        return {"code": code, "msg": msg, "detail": {"logid": logid}}

    # ------------------------------------------------------------------ writers

    def _base_headers(self, h: _Handler, status: int, ctype: str, logid: str, fault: Optional[Fault]) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("X-Tt-Logid", logid)
        if fault is not None:
            for k, v in fault.headers.items():
                h.send_header(k, v)

    def _send_json(self, h: _Handler, status: int, obj: dict, logid: str, fault: Optional[Fault]) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._send_bytes(h, status, body, "application/json; charset=utf-8", logid, fault)

    def _send_bytes(self, h: _Handler, status: int, body: bytes, ctype: str, logid: str,
                    fault: Optional[Fault]) -> None:
        self._base_headers(h, status, ctype, logid, fault)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        limit = fault.truncate_after if fault is not None and fault.truncate_after is not None else None
        stall_at = fault.stall_after if fault is not None and fault.stall_after is not None else None
        if stall_at is not None and stall_at < len(body) and (limit is None or stall_at < limit):
            h.wfile.write(body[:stall_at])
            self._sleep(fault.stall)  # type: ignore[union-attr]
            sent_from = stall_at
        else:
            sent_from = 0
        end = len(body) if limit is None else min(limit, len(body))
        if end > sent_from:
            h.wfile.write(body[sent_from:end])
        if limit is not None and limit < len(body):
            h.close_connection = True

    def _send_speech(self, h: _Handler, rec: RecordedRequest, p: dict, logid: str,
                     fault: Optional[Fault]) -> None:
        fmt = p["response_format"]
        audio = self.audio_for(p["input"], p["voice_id"], fmt, p["sample_rate"], p["speed"],
                               p.get("emotion"), p["loudness_rate"])
        chunked = bool(self.chunked)
        timing = SpeechTiming(t_request=rec.t, input=p["input"], voice_id=p["voice_id"], response_format=fmt,
                              sample_rate=p["sample_rate"], total_bytes=len(audio), chunked=chunked, logid=logid)
        with self._lock:
            self.speech_log.append(timing)
        limit = fault.truncate_after if fault is not None and fault.truncate_after is not None else None
        stall_at = fault.stall_after if fault is not None and fault.stall_after is not None else None

        if self.synthesis is not None:  # the whole text is synthesized before anything is sent
            base, per_char = self.synthesis  # (from the request's arrival: making the audio counts)
            self._sleep(base + per_char * len(p["input"]) - (time.monotonic() - rec.t))
        self._sleep(self.headers_delay)
        self._base_headers(h, 200, AUDIO_CONTENT_TYPES[fmt], logid, fault)
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(len(audio)))
        h.end_headers()
        timing.t_headers = time.monotonic()
        self._sleep(self.ttfb)

        pos = 0
        total = len(audio) if limit is None else min(limit, len(audio))
        truncated = total < len(audio)
        stalled = False
        if total == 0 and not truncated:            # (cannot happen with real audio, but be exact)
            timing.completed = True
            if chunked:
                h.wfile.write(b"0\r\n\r\n")
            return
        trickling = fault is not None and fault.trickle_bytes is not None
        while pos < total:
            step = max(1, int(fault.trickle_bytes if trickling else self.chunk_bytes))  # type: ignore[union-attr]
            end = min(total, pos + step)
            if stall_at is not None and not stalled and pos < stall_at < end:
                end = stall_at
            chunk = audio[pos:end]
            final = end >= total and not truncated
            if chunked:
                data = b"%x\r\n" % len(chunk) + chunk + (b"\r\n0\r\n\r\n" if final else b"\r\n")
            else:
                data = chunk
            # update the record *before* the write: the client may act on the last byte at once
            now = time.monotonic()
            if timing.t_first_byte is None:
                timing.t_first_byte = now
            timing.t_last_byte = now
            timing.bytes_sent = end
            timing.completed = final
            try:
                h.wfile.write(data)
            except OSError:
                timing.bytes_sent = pos
                timing.completed = False
                raise
            pos = end
            if stall_at is not None and not stalled and pos >= stall_at:
                stalled = True
                self._sleep(fault.stall)  # type: ignore[union-attr]
            if pos < total:
                self._sleep(fault.trickle_every if trickling else self.chunk_delay)  # type: ignore[union-attr]
        if truncated:
            h.close_connection = True                 # advertised more than we sent

    # ------------------------------------------------------------------ endpoints

    def _validate_speech(self, rec: RecordedRequest) -> dict:
        try:
            data = json.loads(rec.body.decode("utf-8")) if rec.body else None
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(4000, "invalid JSON body")
        if not isinstance(data, dict):
            raise _ApiError(4000, "request body must be a JSON object")

        def get(name: str) -> Any:
            v = data.get(name)
            return v

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        text = get("input")
        if text is None or text == "":
            raise _ApiError(4000, "input is required")
        if not isinstance(text, str):
            raise _ApiError(4000, "input must be a string")
        if len(text.encode("utf-8")) > MAX_INPUT_BYTES:
            raise _ApiError(4000, "input exceeds %d bytes" % MAX_INPUT_BYTES)

        voice_id = get("voice_id")
        if voice_id is None or voice_id == "":
            raise _ApiError(4000, "voice_id is required")
        if not isinstance(voice_id, str):
            raise _ApiError(4000, "voice_id must be a string")

        emotion = get("emotion")
        if emotion == "":
            emotion = None
        if emotion is not None and emotion not in EMOTIONS:
            raise _ApiError(4000, "emotion must be one of %s" % ", ".join(EMOTIONS))

        emotion_scale = get("emotion_scale")
        if emotion_scale is not None and (not is_num(emotion_scale) or not 1.0 <= emotion_scale <= 5.0):
            raise _ApiError(4000, "emotion_scale must be a number between 1.0 and 5.0")

        fmt = get("response_format")
        if fmt is None or fmt == "":
            fmt = "mp3"
        if fmt not in RESPONSE_FORMATS:
            raise _ApiError(4000, "response_format must be one of %s" % ", ".join(RESPONSE_FORMATS))

        speed = get("speed")
        if speed is None:
            speed = 1.0
        if not is_num(speed) or not 0.2 <= speed <= 3.0:
            raise _ApiError(4000, "speed must be a number between 0.2 and 3")

        sample_rate = get("sample_rate")
        if sample_rate is None:
            sample_rate = 24000
        if not is_int(sample_rate) or sample_rate not in SAMPLE_RATES:
            raise _ApiError(4000, "sample_rate must be one of %s" % ", ".join(map(str, SAMPLE_RATES)))

        loudness = get("loudness_rate")
        if loudness is None:
            loudness = 0
        if not is_int(loudness) or not -50 <= loudness <= 100:
            raise _ApiError(4000, "loudness_rate must be an integer between -50 and 100")

        ctx = get("context_texts")
        if ctx is not None and not isinstance(ctx, str):
            raise _ApiError(4000, "context_texts must be a string")

        voice = self.get_voice(voice_id)
        if voice is None:
            raise _ApiError(4200, "voice not found")
        if self.speed_range_by_model and voice.get("model_type") == "big" and not 0.5 <= speed <= 2.0:
            raise _ApiError(4000, "speed must be between 0.5 and 2 for big model voices")
        if self.strict_emotion and emotion is not None:
            supported = {e.get("emotion") for e in voice.get("support_emotions") or []}
            if emotion not in supported:
                raise _ApiError(4000, "emotion %s is not supported by this voice" % emotion)

        return {"input": text, "voice_id": voice_id, "emotion": emotion, "emotion_scale": emotion_scale,
                "response_format": fmt, "speed": float(speed), "sample_rate": sample_rate,
                "loudness_rate": loudness, "context_texts": ctx}

    def _list_voices(self, rec: RecordedRequest, logid: str) -> dict:
        q = rec.query

        def opt(name: str) -> Optional[str]:
            v = q.get(name)
            return None if v is None or v == "" else v

        fsv = opt("filter_system_voice")
        if fsv is None:
            filter_system = False
        elif fsv in _BOOL_TRUE:
            filter_system = True
        elif fsv in _BOOL_FALSE:
            filter_system = False
        else:
            raise _ApiError(4000, "filter_system_voice must be a boolean")

        model_type = opt("model_type")
        if model_type is not None and model_type not in ("big", "small"):
            raise _ApiError(4000, "model_type must be big or small")

        state = opt("voice_state") or "cloned"
        if state not in ("init", "cloned", "all"):
            raise _ApiError(4000, "voice_state must be init, cloned or all")

        def int_param(name: str, default: int, lo: int, hi: Optional[int]) -> int:
            v = opt(name)
            if v is None:
                return default
            if not _INT_RE.match(v):
                raise _ApiError(4000, "%s must be an integer" % name)
            n = int(v)
            if n < lo or (hi is not None and n > hi):
                raise _ApiError(4000, "%s must be %s" % (name, ">= %d" % lo if hi is None else "%d-%d" % (lo, hi)))
            return n

        page_num = int_param("page_num", 1, 1, None)
        page_size = int_param("page_size", 100, 1, 100)

        with self._lock:
            selected = [v for v in self.voices
                        if not (filter_system and v.get("is_system_voice"))
                        and (model_type is None or v.get("model_type") == model_type)
                        and (state == "all" or v.get("state") == state)]
            start = (page_num - 1) * page_size
            page = [self._voice_json(v) for v in selected[start:start + page_size]]
            has_more = start + page_size < len(selected)
        return {"code": 0, "msg": "", "data": {"voice_list": page, "has_more": has_more}, "detail": {"logid": logid}}

    def _voice_json(self, v: dict) -> dict:
        out = copy.deepcopy(v)
        if not out.get("support_emotions") and not self.emit_empty_support_emotions:
            out.pop("support_emotions", None)
        return out

    def _clone(self, rec: RecordedRequest, parts: Optional[list], parts_error: Optional[str], logid: str) -> dict:
        if parts is None:
            raise _ApiError(4000, parts_error or "Content-Type must be multipart/form-data")
        files = [p for p in parts if p[1] is not None]
        form: Dict[str, str] = {}
        for name, filename, _ct, data in parts:
            if filename is None:
                form[name] = data.decode("utf-8", "replace")
        file_parts = [p for p in files if p[0] == "file"]
        if len(files) > 1:
            raise _ApiError(4301, "only one file can be uploaded")
        if not file_parts:
            raise _ApiError(4000, "file is required")
        _name, filename, fctype, fdata = file_parts[0]
        if len(fdata) == 0:
            raise _ApiError(4300, "uploaded file is empty")
        if len(fdata) > MAX_CLONE_FILE_BYTES:
            raise _ApiError(4302, "uploaded file exceeds 10 MB")
        audio_format = form.get("audio_format", "")
        if not audio_format:
            raise _ApiError(4000, "audio_format is required")
        if audio_format not in CLONE_AUDIO_FORMATS:
            raise _ApiError(4303, "unsupported audio_format: %s" % audio_format)
        voice_name = form.get("voice_name", "")
        if not voice_name:
            raise _ApiError(4000, "voice_name is required")
        if len(voice_name.encode("utf-8")) > MAX_VOICE_NAME_BYTES:
            raise _ApiError(4000, "voice_name exceeds %d bytes" % MAX_VOICE_NAME_BYTES)
        text = form.get("text")
        if text is not None and len(text.encode("utf-8")) > MAX_CLONE_TEXT_BYTES:
            raise _ApiError(4000, "text exceeds %d bytes" % MAX_CLONE_TEXT_BYTES)
        language = form.get("language") or None
        if language is not None and language not in LANGUAGES:
            raise _ApiError(4000, "language must be one of %s" % ", ".join(LANGUAGES))
        preview_text = form.get("preview_text") or DEFAULT_PREVIEW_TEXT
        retrain_id = form.get("voice_id") or None
        now = int(time.time())

        with self._lock:
            if retrain_id is not None:
                voice = self.get_voice(retrain_id)
                if voice is None:
                    raise _ApiError(4200, "voice not found")
                if voice.get("is_system_voice"):
                    raise _ApiError(4000, "system voices cannot be retrained")
                if int(voice.get("available_training_times") or 0) <= 0:
                    raise _ApiError(4000, "voice has no training times left")
                voice["available_training_times"] = int(voice["available_training_times"]) - 1
                voice.update({"name": voice_name, "state": "cloned", "update_time": now,
                              "preview_text": preview_text})
                if language is not None:
                    voice.update({"language_code": language, "language_name": LANGUAGES[language]})
                new_id = retrain_id
            else:
                n = next(self._clone_counter)
                new_id = "voice_clone_%04d" % n
                while self.get_voice(new_id) is not None:
                    n = next(self._clone_counter)
                    new_id = "voice_clone_%04d" % n
                lang = language or "zh"
                self.voices.append({
                    "voice_id": new_id,
                    "name": voice_name,
                    "state": "cloned",
                    "model_type": "big",
                    "create_time": now,
                    "update_time": now,
                    "preview_text": preview_text,
                    "language_code": lang,
                    "language_name": LANGUAGES[lang],
                    "preview_audio": "https://lf3-appstore-sign.oceancloudapi.com/ocean-cloud-tos/VolcanoUserVoice/"
                                     "%s.mp3?lk3s=da27ec82&x-expires=1730277357&x-signature=fake%%3D" % new_id,
                    "is_system_voice": False,
                    "support_emotions": [],
                    "available_training_times": MAX_TRAININGS - 1,
                })
            self.clones.append({
                "fields": dict(form),
                "filename": filename,
                "file_size": len(fdata),
                "content_type": fctype,
                "voice_id": new_id,
                "retrained": retrain_id is not None,
                "logid": logid,
            })
        return {"code": 0, "msg": "", "data": {"voice_id": new_id}, "detail": {"logid": logid}}
