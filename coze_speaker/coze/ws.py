"""One synthesis over Coze's WebSocket speech API: the audio streams while Coze synthesizes.

POST /v1/audio/speech answers only once the whole text is synthesized, so a long text waits
seconds for its first sound; this API sends pcm as it goes (first audio ~0.3-0.4 s after the
text is complete, whatever its length). The protocol (docs: ../shared/coze-audio-api.md):
``speech.update`` (pcm at the play rate, voice, speech_rate, emotion_config), the text
(``input_text_buffer.append`` + ``complete``), then ``speech.audio.update`` frames of base64
pcm until ``speech.audio.completed``, or an ``error`` event. Unknown events are ignored.

The same rules as HTTP: the bearer token in the upgrade request (never in the URL, which may
be logged), the cost guard asked before anything billable is sent, the same retries,
first-audio bound and deadline, and every failure a CozeError with Coze's code and logid.
One connection per synthesis (whether one can run several is not documented).
websocket-client is imported on the first synthesis, so an idle daemon never loads it.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Optional
from urllib.parse import urlsplit

from .. import __version__
from ..vocabulary import WS_SPEED
from .errors import STALE, CozeError
from .params import SpeechParams
from .responses import CONNECT_TIMEOUT, RETRYABLE_CODES
from .stream import PcmFramer, Remaining
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .client import CozeClient

log = logging.getLogger(__name__)

WS_PATH = "/v1/audio/speech"
#: Coze's API hosts and their WebSocket hosts; any other host keeps its name and port.
_WS_HOSTS = {"api.coze.cn": "ws.coze.cn", "api.coze.com": "ws.coze.com"}
_EVENT_IDS = itertools.count(1)


def websocket_module() -> Any:
    """websocket-client, imported on first use (an idle daemon never loads it)."""
    import websocket

    return websocket


def ws_url_for(base_url: str) -> str:
    """The WebSocket speech endpoint of an API base URL, derived as Coze's Go SDK does:
    https -> wss, http -> ws, api.coze.cn -> ws.coze.cn, api.coze.com -> ws.coze.com, any
    other host and port kept, path /v1/audio/speech."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    host = _WS_HOSTS.get(host.lower(), host)
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{host}{port}{WS_PATH}"


def speech_rate(speed: float) -> int:
    """Coze's WebSocket speech_rate for a speed: -50 is 0.5x, 100 is 2x."""
    return max(-50, min(100, round((speed - 1) * 100)))


def ws_unsupported(params: SpeechParams) -> Optional[str]:
    """Why the WebSocket API cannot voice these parameters exactly (the field), None when it
    can. Such a request goes over HTTP, so both transports voice the same request and its
    audio can share one cache entry."""
    if params.response_format != "pcm":
        return "response_format"
    if params.loudness_rate:
        return "loudness_rate"
    if params.context_texts:
        return "context_texts"
    if params.speed not in WS_SPEED or abs((params.speed - 1) * 100 - speech_rate(params.speed)) > 1e-6:
        return "speed"
    return None


def speech_update(params: SpeechParams) -> dict:
    """The ``speech.update`` settings for these parameters."""
    audio: dict = {"codec": "pcm", "pcm_config": {"sample_rate": params.sample_rate},
                   "speech_rate": speech_rate(params.speed), "voice_id": params.voice_id}
    emotion = {k: v for k, v in (("emotion", params.emotion), ("emotion_scale", params.emotion_scale))
               if v is not None}
    if emotion:
        audio["emotion_config"] = emotion
    return {"output_audio": audio}


class WebSocketUnusable(CozeError):
    """The WebSocket API failed before any audio in a way HTTP may not (unreachable, upgrade
    refused, closed, late, a retryable error): with ``coze.transport: auto`` the caller asks
    over HTTP instead. ``refused`` says the endpoint itself failed (not a Coze error code):
    it is skipped for WS_RETRY_AFTER seconds."""

    def __init__(self, cause: CozeError, *, refused: bool) -> None:
        self.cause = cause
        self.refused = refused
        super().__init__(cause.msg, status=cause.status, code=cause.code, logid=cause.logid,
                         retryable=cause.retryable)

    def __str__(self) -> str:
        return str(self.cause)


class _Refused(CozeError):
    """No session: the connection or the upgrade failed (nothing was sent, nothing billed)."""


class WsSpeechStream:
    """The audio of one synthesis over the WebSocket API, iterated as pcm chunks as they
    arrive; the same interface as SpeechStream. Iteration ends only after
    ``speech.audio.completed``; a session that ends early is started again (skipping what was
    already given out; ``resumed`` tells a cache the audio was joined) or raises CozeError.

    With ``fallback`` (transport auto), a failure before any audio that HTTP may not share
    raises WebSocketUnusable at once instead of being retried here.
    """

    def __init__(self, client: "CozeClient", url: str, text: str, params: SpeechParams, *,
                 remaining: Optional[Remaining] = None, before_request: Optional[Callable[[], None]] = None,
                 fallback: bool = False) -> None:
        self._client = client
        self._url = url
        self._text = text
        self.params = params
        self._remaining = remaining
        self._before_request = before_request
        self._fallback = fallback
        #: sessions opened for this synthesis, retries included (each counted as a request)
        self.requests = 0
        self.resumed = False
        self.logid: Optional[str] = None
        self.complete = False
        self._ws: Any = None

    @property
    def host(self) -> str:
        return urlsplit(self._url).netloc

    def __iter__(self) -> Iterator[bytes]:
        delivered = 0
        attempt = 0
        while True:
            self._check_deadline()
            try:
                for chunk in self._attempt(skip=delivered):
                    delivered += len(chunk)
                    yield chunk
                self.complete = True
                return
            except CozeError as exc:
                if self._fallback and not delivered and (isinstance(exc, _Refused) or exc.retryable):
                    # a session that broke or stayed silent (not a Coze error code) will likely do so
                    # again: skip the endpoint for a while rather than pay the wait each time
                    if not isinstance(exc, _Refused) and not isinstance(exc.code, int):
                        self._client.websocket_refused(exc)
                    raise WebSocketUnusable(exc, refused=not isinstance(exc.code, int)) from None
                if not exc.retryable or attempt >= self._client.retries:
                    raise
                attempt += 1
                if delivered:
                    self.resumed = True
                self._client._pause(attempt, exc, self._remaining)
            finally:
                self.close()

    def read_all(self) -> bytes:
        return b"".join(self)

    def close(self) -> None:
        """Say goodbye and drop the connection (never waits for the server's close frame)."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            ws.send_close()
        except Exception:  # already broken: nothing to say goodbye on
            pass
        ws.shutdown()

    def _left(self) -> Optional[float]:
        return self._remaining() if self._remaining is not None else None

    def _check_deadline(self) -> None:
        left = self._left()
        if left is not None and left <= 0:
            raise CozeError(STALE, code="timeout")

    def _attempt(self, skip: int) -> Iterator[bytes]:
        left = self._left()
        watchdog = Watchdog(self._client.first_audio_timeout, 2.0 * self.params.sample_rate,
                            None if left is None else time.monotonic() + left)
        try:
            ws = self._ws = self._connect(left)
            if self._before_request is not None:  # a spending cap may refuse it: nothing billable sent yet
                self._before_request()
            self.requests += 1
            watchdog.watch(cut=ws.abort)
            ws.settimeout(self._client.timeout)
            try:
                self._send(ws, "speech.update", speech_update(self.params))
                self._send(ws, "input_text_buffer.append", {"delta": self._text})
                self._send(ws, "input_text_buffer.complete")
            except CozeError as broke:
                # Coze may have said why before it closed (a token lacking a permission is
                # accepted, sent an error event and closed): read what already arrived
                self._raise_what_coze_said(ws, watchdog, broke)
            yield from self._read(ws, skip, watchdog)
        finally:
            watchdog.stop()

    def _connect(self, left: Optional[float]) -> Any:
        """Open the session: the upgrade request carries the token as a bearer header."""
        wsm = websocket_module()
        timeout = CONNECT_TIMEOUT if left is None else max(0.1, min(CONNECT_TIMEOUT, left))
        header = [f"Authorization: Bearer {self._client._token}", f"User-Agent: coze-speaker/{__version__}"]
        try:
            # no redirects: the token would follow them to another host
            return wsm.create_connection(self._url, timeout=timeout, header=header, suppress_origin=True,
                                         redirect_limit=0, enable_multithread=True)
        except wsm.WebSocketBadStatusException as exc:
            error = _upgrade_error(exc, self.host)
        except (wsm.WebSocketTimeoutException, socket.timeout):
            if left is not None and left <= CONNECT_TIMEOUT:  # our deadline, not Coze's fault
                raise CozeError(STALE, code="timeout") from None
            error = _Refused(f"no WebSocket connection to {self.host} within {timeout:g} s", retryable=True)
        except (OSError, wsm.WebSocketException) as exc:
            error = _Refused(f"cannot reach {self.host} over WebSocket ({_reason(exc)})", retryable=True)
        if isinstance(error, _Refused):
            self._client.websocket_refused(error)
        raise error

    def _send(self, ws: Any, event_type: str, data: Optional[dict] = None) -> None:
        event: dict = {"id": f"coze-speaker-{next(_EVENT_IDS)}", "event_type": event_type}
        if data is not None:
            event["data"] = data
        try:
            ws.send(json.dumps(event, ensure_ascii=False))
        except (OSError, websocket_module().WebSocketException) as exc:
            raise CozeError(f"the WebSocket to {self.host} broke while sending ({_reason(exc)})",
                            logid=self.logid, retryable=True) from None

    def _events(self, ws: Any, watchdog: Watchdog, received: Callable[[], int]) -> Iterator[dict]:
        """The server's JSON events until the connection ends (which raises: an audio that is
        complete ends with ``speech.audio.completed``, never with a close)."""
        wsm = websocket_module()
        while True:
            try:
                opcode, payload = ws.recv_data()
            except wsm.WebSocketTimeoutException:
                watchdog.raise_verdict()
                raise CozeError(f"Coze's WebSocket stalled after {received()} bytes of audio (no data for "
                                f"{self._client.timeout:g} s)", logid=self.logid, retryable=True) from None
            except (OSError, wsm.WebSocketException) as exc:
                watchdog.raise_verdict()  # whatever a cut-off read raises
                raise CozeError(f"the WebSocket to {self.host} broke off after {received()} bytes of audio "
                                f"({_reason(exc)})", logid=self.logid, retryable=True) from None
            if opcode == wsm.ABNF.OPCODE_CLOSE:
                watchdog.raise_verdict()
                raise CozeError(f"Coze closed the WebSocket after {received()} bytes of audio, before it was "
                                "complete", logid=self.logid, retryable=True)
            if opcode != wsm.ABNF.OPCODE_TEXT:
                continue
            try:
                event = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                raise CozeError("Coze sent a WebSocket frame that is not JSON", logid=self.logid,
                                retryable=True) from None
            if isinstance(event, dict):
                detail = event.get("detail")
                if isinstance(detail, dict) and detail.get("logid"):
                    self.logid = str(detail["logid"])
                yield event

    def _raise_what_coze_said(self, ws: Any, watchdog: Watchdog, broke: CozeError) -> NoReturn:
        """Sending failed: raise the error event Coze sent before it closed, else `broke`."""
        try:
            for event in self._events(ws, watchdog, lambda: 0):
                if event.get("event_type") == "error":
                    raise self._error(_mapping(event.get("data")))
        except CozeError as exc:
            if isinstance(exc.code, int):
                raise
        raise broke

    def _read(self, ws: Any, skip: int, watchdog: Watchdog) -> Iterator[bytes]:
        frames = PcmFramer(expected_rate=self.params.sample_rate)
        received = 0
        to_skip = skip
        for event in self._events(ws, watchdog, lambda: received):
            kind = event.get("event_type")
            data = _mapping(event.get("data"))
            if kind == "speech.audio.update":
                raw = self._audio(data)
                received += len(raw)
                watchdog.received(len(raw))
                chunk = frames.feed(raw)
                if to_skip:
                    cut = min(to_skip, len(chunk))
                    chunk, to_skip = chunk[cut:], to_skip - cut
                if chunk:
                    watchdog.hold()  # the consumer's time is not Coze's
                    yield chunk
                    watchdog.release()
            elif kind == "speech.audio.completed":
                frames.finish(self.logid)
                if received == 0:
                    raise CozeError("Coze completed the speech without any audio", logid=self.logid, retryable=True)
                if to_skip:
                    raise CozeError("the retried audio is shorter than what was already played", logid=self.logid)
                return
            elif kind == "error":
                raise self._error(data)
            elif kind == "speech.updated":
                self._check_settings(data)
            # speech.created, input_text_buffer.completed and events no SDK models
            # (conversation.audio.sentence_start, ...) carry nothing we need

    def _audio(self, data: dict) -> bytes:
        delta = data.get("delta")
        try:
            if not isinstance(delta, str):
                raise ValueError
            return base64.b64decode(delta, validate=True)
        except (ValueError, binascii.Error):
            raise CozeError("Coze sent an audio event without valid base64 audio", logid=self.logid,
                            retryable=True) from None

    def _error(self, data: dict) -> CozeError:
        code = data.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        msg = str(data.get("msg") or "no message")
        return CozeError(msg, code=code, logid=self.logid, retryable=code in RETRYABLE_CODES)

    def _check_settings(self, data: dict) -> None:
        """Coze says which settings are in force: audio at another rate or codec would play
        wrong, so it is refused rather than played."""
        audio = _mapping(data.get("output_audio"))
        codec = audio.get("codec")
        rate = _mapping(audio.get("pcm_config")).get("sample_rate")
        if (codec is not None and codec != "pcm") or (isinstance(rate, int) and rate != self.params.sample_rate):
            raise CozeError(f"Coze's WebSocket API set {codec} audio at {rate} Hz instead of pcm at "
                            f"{self.params.sample_rate} Hz", logid=self.logid)


def _upgrade_error(exc: Any, host: str) -> CozeError:
    """The upgrade answered with an HTTP status instead of 101: a Coze envelope (a wrong token,
    4100) is final, like over HTTP; anything else (403: WebSockets not allowed for the account)
    means the endpoint cannot be used."""
    status = int(getattr(exc, "status_code", 0) or 0)
    headers = {str(k).lower(): v for k, v in (getattr(exc, "resp_headers", None) or {}).items()}
    logid = headers.get("x-tt-logid")
    body = getattr(exc, "resp_body", None) or b""
    try:
        envelope = json.loads(body.decode("utf-8-sig")) if body else None
    except (ValueError, UnicodeDecodeError):
        envelope = None
    if isinstance(envelope, dict) and isinstance(envelope.get("code"), int) and envelope["code"] != 0:
        detail = _mapping(envelope.get("detail"))
        code = envelope["code"]
        return CozeError(str(envelope.get("msg") or "no message"), status=status, code=code,
                         logid=str(detail.get("logid") or logid or "") or None, retryable=code in RETRYABLE_CODES)
    return _Refused(f"{host} refused the WebSocket upgrade", status=status, logid=logid,
                    retryable=status >= 500 or status in (408, 429))


def _mapping(value: Any) -> dict:
    """A JSON object, or an empty one for anything else (a field the server left out)."""
    return value if isinstance(value, dict) else {}


def _reason(exc: BaseException) -> str:
    """A short reason, never the request (it holds the token)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())[:100]
    return text or type(exc).__name__
