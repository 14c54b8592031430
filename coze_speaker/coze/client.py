"""A thin, honest client for Coze's three audio endpoints over one keep-alive HTTP session.

Every call costs the user money or quota, so parameters are validated before anything is
sent, only failures that can succeed later are retried, and a clone is never retried.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union
from urllib.parse import urlsplit

from .. import __version__
from ..vocabulary import MAX_RETRY_AFTER, TRANSPORTS, WS_RETRY_AFTER
from .errors import STALE, CozeError, CozeValidationError
from .params import MODEL_TYPES, VOICE_STATES, SpeechParams, clone_fields, not_int, validate_input
from .httpclient import HttpSession, Response, TransportError, TransportTimeout
from .responses import CONNECT_TIMEOUT, MAX_ERROR_BODY, answer_error, is_json, logid_of, read_up_to
from .stream import Remaining, SpeechStream
from .ws import WsSpeechStream, ws_unsupported, ws_url_for

log = logging.getLogger(__name__)

__all__ = ["CONNECT_TIMEOUT", "CozeClient"]


class CozeClient:
    """Coze's audio API: synthesize speech, list voices, clone a voice."""

    def __init__(
        self,
        token: Any,
        base_url: str = "https://api.coze.cn",
        *,
        timeout: float = 15.0,
        first_audio_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        session: Optional[HttpSession] = None,
        sleep: Callable[[float], None] = time.sleep,
        ws_url: Optional[str] = None,
    ) -> None:
        self._token = token.reveal() if hasattr(token, "reveal") else token
        self.base_url = base_url.rstrip("/")
        #: the WebSocket speech endpoint (derived from base_url unless given)
        self.ws_url = (ws_url or ws_url_for(self.base_url)).rstrip("/")
        #: monotonic time until which `auto` skips the WebSocket API (it could not be reached)
        self._ws_down_until = 0.0
        self.timeout = timeout
        self.first_audio_timeout = first_audio_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._session = session

    @property
    def session(self) -> HttpSession:
        """The one HTTP session (keep-alive to Coze), made at the first request."""
        if self._session is None:
            self._session = HttpSession(f"coze-speaker/{__version__}")
        return self._session

    @classmethod
    def from_config(cls, coze_config: Any, **kwargs: Any) -> "CozeClient":
        """A client for the `coze:` section of the configuration."""
        return cls(coze_config.token, coze_config.base_url, timeout=coze_config.timeout,
                   first_audio_timeout=coze_config.first_audio_timeout, retries=coze_config.retries,
                   ws_url=coze_config.ws_url, **kwargs)

    @property
    def host(self) -> str:
        """The API host: part of every cache key, since regions may differ in voices."""
        return urlsplit(self.base_url).netloc

    def __repr__(self) -> str:
        return f"CozeClient(base_url={self.base_url!r})"

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> "CozeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- text to speech ---------------------------------------------------------------

    def synthesize(
        self,
        text: str,
        voice_id: str,
        *,
        response_format: str = "pcm",
        sample_rate: int = 24000,
        speed: float = 1.0,
        emotion: Optional[str] = None,
        emotion_scale: Optional[float] = None,
        loudness_rate: int = 0,
        context_texts: Optional[str] = None,
    ) -> Union[SpeechStream, WsSpeechStream]:
        """Start synthesizing text (over HTTP); iterate the result for audio chunks as they arrive.

        Raises CozeValidationError at once (before any request) for a parameter Coze would
        reject; nothing is sent until the stream is iterated.
        """
        params = SpeechParams(voice_id, response_format, sample_rate, speed, emotion,
                              emotion_scale, loudness_rate, context_texts)
        return self.speech(text, params)

    def speech(self, text: str, params: SpeechParams, *, remaining: Optional[Remaining] = None,
               before_request: Optional[Callable[[], None]] = None,
               transport: str = "http") -> Union[SpeechStream, WsSpeechStream]:
        """synthesize() for callers that already hold a SpeechParams.

        `remaining` gives the seconds left until the caller's deadline (an announcement's
        TTL): no request is sent, and no retry waited for, past it. `before_request` is called
        before every request (an HTTP request or a WebSocket session), retries included: it
        counts them, and raising a CozeError there (a spending cap) sends nothing billable.
        `transport` (see uses_websocket): with "auto" a WebSocket failure before any audio
        raises WebSocketUnusable, for the caller to ask over HTTP.
        """
        validate_input(text)
        params.validate()
        self._require_token()
        if self.uses_websocket(params, transport):
            return WsSpeechStream(self, self.ws_url, text, params, remaining=remaining,
                                  before_request=before_request, fallback=transport == "auto")
        return SpeechStream(self, text, params, remaining=remaining, before_request=before_request)

    def uses_websocket(self, params: SpeechParams, transport: str) -> bool:
        """Whether speech() goes over the WebSocket API: never for "http"; for "websocket" and
        "auto" when it can voice the parameters exactly (no loudness, no context, a speed it
        can express); for "auto" not while the endpoint counts as unreachable."""
        if transport not in TRANSPORTS:
            raise CozeValidationError("transport", f"{transport!r} is not one of {', '.join(TRANSPORTS)}")
        if transport == "http" or ws_unsupported(params) is not None:
            return False
        return transport == "websocket" or time.monotonic() >= self._ws_down_until

    def websocket_refused(self, exc: CozeError) -> None:
        """The WebSocket endpoint could not be reached or refused the upgrade: `auto` speaks
        over HTTP for the next WS_RETRY_AFTER seconds instead of paying for it each time."""
        if time.monotonic() >= self._ws_down_until:
            log.warning("%s; transport auto speaks over HTTP for the next %g s", exc, WS_RETRY_AFTER)
        self._ws_down_until = time.monotonic() + WS_RETRY_AFTER

    # -- voices -----------------------------------------------------------------------

    def list_voices(
        self,
        *,
        filter_system_voice: bool = False,
        model_type: Optional[str] = None,
        voice_state: Optional[str] = None,
        page_size: int = 100,
        max_pages: int = 1000,
    ) -> Iterator[dict]:
        """Yield every voice, page after page, until Coze says there are no more."""
        if model_type is not None and model_type not in MODEL_TYPES:
            raise CozeValidationError("model_type", f"{model_type!r} is not one of {', '.join(MODEL_TYPES)}")
        if voice_state is not None and voice_state not in VOICE_STATES:
            raise CozeValidationError("voice_state", f"{voice_state!r} is not one of {', '.join(VOICE_STATES)}")
        if not_int(page_size) or not 1 <= page_size <= 100:
            raise CozeValidationError("page_size", f"{page_size!r} is outside 1..100")
        self._require_token()
        query: dict[str, Any] = {"filter_system_voice": "true" if filter_system_voice else "false",
                                 "page_size": page_size}
        if model_type:
            query["model_type"] = model_type
        if voice_state:
            query["voice_state"] = voice_state
        for page in range(1, max_pages + 1):
            data = self._json_call("GET", "/v1/audio/voices", retry=True,
                                   params={**query, "page_num": page})
            voices = (data or {}).get("voice_list") or []
            yield from voices
            if not (data or {}).get("has_more") or not voices:
                return
        log.warning("stopped listing voices after %d pages", max_pages)

    def clone_voice(
        self,
        path: Union[str, Path],
        name: str,
        *,
        audio_format: Optional[str] = None,
        language: Optional[str] = None,
        voice_id: Optional[str] = None,
        text: Optional[str] = None,
        preview_text: Optional[str] = None,
        space_id: Optional[str] = None,
    ) -> str:
        """Clone the voice in a recording and return its voice_id.

        Cloning is billed per voice: everything Coze would refuse is checked here first,
        and the request is sent exactly once, never retried.
        """
        path = Path(path)
        audio_format = audio_format or path.suffix.lower().lstrip(".")
        fields = clone_fields(path, name, audio_format, language, voice_id, text, preview_text, space_id)
        self._require_token()
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, f"audio/{audio_format}")}
            data = self._json_call("POST", "/v1/audio/voices/clone", retry=False,
                                   data=fields, files=files)
        new_id = (data or {}).get("voice_id")
        if not isinstance(new_id, str) or not new_id:
            raise CozeError("the clone answer holds no voice_id")
        return new_id

    # -- transport --------------------------------------------------------------------

    def _require_token(self) -> None:
        if not self._token:
            raise CozeError("no Coze token configured (set coze.token, coze.token_file or $COZE_API_TOKEN)")

    def _send(self, method: str, path: str, *, read_timeout: Optional[float] = None, **kwargs: Any) -> Response:
        """One HTTP exchange; raises CozeError for any failure, marked retryable or not.
        `read_timeout` shortens coze.timeout (a deadline closer than it)."""
        headers = {"Authorization": f"Bearer {self._token}"}
        timeout = self.timeout if read_timeout is None else min(self.timeout, read_timeout)
        try:
            response = self.session.request(method, self.base_url + path, headers=headers,
                                            timeout=(CONNECT_TIMEOUT, timeout), **kwargs)
        except TransportTimeout as exc:
            if exc.phase == "connect":
                raise CozeError(f"cannot reach {self.host} (no connection within {CONNECT_TIMEOUT:g} s)",
                                retryable=True) from None
            if read_timeout is not None and read_timeout < self.timeout:  # our deadline, not Coze's fault
                raise CozeError(STALE, code="timeout") from None
            raise CozeError(f"no answer from {self.host} within {timeout:g} s", retryable=True) from None
        except TransportError as exc:
            raise CozeError(f"cannot reach {self.host} ({exc.reason})", retryable=exc.retryable) from None
        stream = bool(kwargs.get("stream"))
        if not stream or is_json(response) or response.status_code >= 400:
            body = read_up_to(response.iter_content(8192), MAX_ERROR_BODY) if stream else response.content
            envelope = _json_object(body)
            if envelope is not None and envelope.get("code") == 0 and response.status_code < 400 and not stream:
                response._coze_envelope = envelope  # type: ignore[attr-defined]
                return response
            if stream or response.status_code >= 400 or is_json(response) or envelope is not None:
                response.close()
                raise answer_error(response, body)
        return response

    def _json_call(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                response = self._send(method, path, **kwargs)
                envelope = getattr(response, "_coze_envelope", None)
                if envelope is None:
                    raise CozeError("Coze answered without a JSON body", status=response.status_code,
                                    logid=logid_of(response))
                return envelope.get("data")
            except CozeError as exc:
                if not retry or not exc.retryable or attempt >= self.retries:
                    raise
                attempt += 1
                self._pause(attempt, exc)

    def _pause(self, attempt: int, exc: CozeError, remaining: Optional[Remaining] = None) -> None:
        """Wait before retry number `attempt`: exponential backoff with jitter, or the
        answer's Retry-After when it asks for longer. Raises instead of waiting when the wait
        is longer than MAX_RETRY_AFTER or would pass the caller's deadline (`remaining`)."""
        delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        left = remaining() if remaining is not None else None
        if exc.retry_after is not None and (exc.retry_after > MAX_RETRY_AFTER or (left is not None and delay >= left)):
            limit = (f"the longest wait honoured is {MAX_RETRY_AFTER:g} s" if exc.retry_after > MAX_RETRY_AFTER
                     else f"the announcement expires in {max(0.0, left or 0.0):.1f} s")
            raise CozeError(f"{exc.msg}; Coze asks to wait {exc.retry_after:g} s before trying again, and "
                            f"{limit}", status=exc.status, code="rate_limited", logid=exc.logid) from None
        if left is not None and delay >= left:
            raise exc  # no time left for another try: fail now, so the fallback still can
        log.info("%s; retry %d of %d in %.1f s", exc, attempt, self.retries, delay)
        self._sleep(delay)


def _json_object(body: bytes) -> Optional[dict]:
    """The body as a JSON object, None when it is not one."""
    try:
        value = json.loads(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
