"""A thin, honest client for Coze's three audio endpoints over one requests.Session.

Every call costs the user money or quota, so parameters are validated before anything is
sent, only failures that can succeed later are retried, and a clone is never retried.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union
from urllib.parse import urlsplit

from . import __version__
from .errors import SpeakerError
from .sound import wav
from .vocabulary import EMOTION_SCALE, EMOTIONS, LOUDNESS, MAX_INPUT_BYTES, SAMPLE_RATES, SPEED, Range

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)


def _requests():
    """requests, imported on first use: with a warm cache the daemon never loads it
    (urllib3, charset_normalizer and requests are ~10 MB of a Pi's memory)."""
    import requests

    return requests

MAX_CLONE_BYTES = 10 * 1024 * 1024
MAX_VOICE_NAME_BYTES = 128
RESPONSE_FORMATS = ("wav", "pcm", "ogg_opus", "mp3")
CLONE_FORMATS = ("wav", "mp3", "ogg", "m4a", "aac", "pcm")
CLONE_LANGUAGES = ("zh", "en", "ja", "es", "id", "pt")
MODEL_TYPES = ("big", "small")
VOICE_STATES = ("init", "cloned", "all")

#: Coze codes worth another try after a pause; everything else is final.
RETRYABLE_CODES = frozenset({5000, 4009, 4020})
CONNECT_TIMEOUT = 5.0


class CozeError(SpeakerError):
    """A failed Coze call, carrying everything a user needs to act or to ask support.

    ``code`` is Coze's code when the answer was an error envelope, else None;
    ``retryable`` says whether trying again later can succeed.
    """

    def __init__(
        self,
        msg: str,
        *,
        status: Optional[int] = None,
        code: Optional[int] = None,
        logid: Optional[str] = None,
        retryable: bool = False,
    ) -> None:
        self.msg = msg
        self.status = status
        self.code = code
        self.logid = logid
        self.retryable = retryable
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.code is not None:
            head = f"Coze error {self.code}: {self.msg}"
        elif self.status is not None:
            head = f"Coze request failed: {self.msg}"
        else:  # nothing was answered: a local refusal or an unreachable server, said plainly
            head = self.msg
        extra = []
        if self.status is not None:
            extra.append(f"HTTP {self.status}")
        if self.logid:
            extra.append(f"logid {self.logid}")
        return f"{head} ({', '.join(extra)})" if extra else head



class CozeValidationError(CozeError, ValueError):
    """A request that Coze would refuse, caught locally so no call is spent on it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.code = "invalid"

    def __str__(self) -> str:
        return self.msg


@dataclass(frozen=True)
class SpeechParams:
    """Everything sent to /v1/audio/speech besides the text; also what the cache keys on."""

    voice_id: str
    response_format: str = "pcm"
    sample_rate: int = 24000
    speed: float = 1.0
    emotion: Optional[str] = None
    emotion_scale: Optional[float] = None
    loudness_rate: int = 0
    context_texts: Optional[str] = None

    def validate(self) -> None:
        """Raise CozeValidationError naming the first field Coze would reject."""
        _check_str("voice_id", self.voice_id)
        if self.response_format not in RESPONSE_FORMATS:
            raise CozeValidationError("response_format", f"{self.response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}")
        if _not_int(self.sample_rate) or self.sample_rate not in SAMPLE_RATES:
            raise CozeValidationError("sample_rate", f"{self.sample_rate!r} is not one of {', '.join(map(str, SAMPLE_RATES))}")
        _check_range("speed", self.speed, SPEED)
        if self.emotion is not None and self.emotion not in EMOTIONS:
            raise CozeValidationError("emotion", f"{self.emotion!r} is not one of {', '.join(EMOTIONS)}")
        if self.emotion_scale is not None:
            _check_range("emotion_scale", self.emotion_scale, EMOTION_SCALE)
        if _not_int(self.loudness_rate):
            raise CozeValidationError("loudness_rate", f"expected an integer, got {self.loudness_rate!r}")
        _check_range("loudness_rate", self.loudness_rate, LOUDNESS)
        if self.context_texts is not None:
            _check_str("context_texts", self.context_texts)

    def body(self, text: str) -> dict:
        """The JSON body for one request; optional fields Coze defaults are left out."""
        body: dict[str, Any] = {
            "input": text,
            "voice_id": self.voice_id,
            "response_format": self.response_format,
            "sample_rate": self.sample_rate,
        }
        if self.speed != 1.0:
            body["speed"] = self.speed
        if self.emotion is not None:
            body["emotion"] = self.emotion
        if self.emotion_scale is not None:
            body["emotion_scale"] = self.emotion_scale
        if self.loudness_rate:
            body["loudness_rate"] = self.loudness_rate
        if self.context_texts:
            body["context_texts"] = self.context_texts
        return body


def validate_input(text: Any) -> None:
    """Raise CozeValidationError unless text is a non-empty string of at most MAX_INPUT_BYTES UTF-8 bytes."""
    if not isinstance(text, str):
        raise CozeValidationError("input", f"expected text, got {type(text).__name__}")
    if not text.strip():
        raise CozeValidationError("input", "is empty")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_BYTES:
        raise CozeValidationError("input", f"is {size} UTF-8 bytes, the limit is {MAX_INPUT_BYTES} (split longer text)")


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _check_range(field: str, value: Any, allowed: Range) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise CozeValidationError(field, f"expected a number, got {value!r}")
    if value not in allowed:
        raise CozeValidationError(field, f"{value!r} is outside {allowed.low:g}..{allowed.high:g}")


def _check_str(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise CozeValidationError(field, "must be a non-empty string")


class SpeechStream:
    """The audio of one synthesis, iterated as chunks while Coze is still sending it.

    For pcm every chunk holds whole 16-bit frames. Iteration ends only when the whole body
    arrived; a body that ends early is fetched again (skipping what was already given out)
    or raises CozeError, so partial audio never looks like success. ``resumed`` tells a
    cache that the audio was joined from two responses.
    """

    def __init__(self, client: "CozeClient", text: str, params: SpeechParams) -> None:
        self._client = client
        self._text = text
        self.params = params
        self.resumed = False
        self.logid: Optional[str] = None
        self.complete = False
        self._response: Optional[requests.Response] = None

    def __iter__(self) -> Iterator[bytes]:
        delivered = 0
        attempt = 0
        while True:
            try:
                for chunk in self._attempt(skip=delivered):
                    delivered += len(chunk)
                    yield chunk
                self.complete = True
                return
            except CozeError as exc:
                if not exc.retryable or attempt >= self._client.retries:
                    raise
                attempt += 1
                if delivered:
                    self.resumed = True
                self._client._pause(attempt, exc)
            finally:
                self.close()

    def read_all(self) -> bytes:
        """Collect the whole body: for callers that need it at once (a file, a test)."""
        return b"".join(self)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _attempt(self, skip: int) -> Iterator[bytes]:
        requests = _requests()
        response = self._client._send(
            "POST", "/v1/audio/speech", json=self._text_body(), stream=True
        )
        self._response = response
        self.logid = _logid(response)
        expected = response.headers.get("Content-Length")
        frames = _PcmFramer(expected_rate=self.params.sample_rate) if self.params.response_format == "pcm" else None
        received = 0
        to_skip = skip
        try:
            for raw in response.iter_content(chunk_size=8192):
                received += len(raw)
                chunk = frames.feed(raw) if frames else raw
                if to_skip:
                    cut = min(to_skip, len(chunk))
                    chunk, to_skip = chunk[cut:], to_skip - cut
                if chunk:
                    yield chunk
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
            raise CozeError(f"audio stream broke off after {received} bytes ({_reason(exc)})",
                            status=response.status_code, logid=self.logid, retryable=True) from None
        except requests.exceptions.Timeout:
            raise CozeError(f"audio stream stalled after {received} bytes (no data for {self._client.timeout:g} s)",
                            status=response.status_code, logid=self.logid, retryable=True) from None
        if expected is not None and expected.isdigit() and received < int(expected):
            raise CozeError(f"audio stream ended after {received} of {expected} bytes",
                            status=response.status_code, logid=self.logid, retryable=True)
        if frames:
            frames.finish(self.logid)
        if received == 0:
            raise CozeError("Coze sent an empty audio body", status=response.status_code,
                            logid=self.logid, retryable=True)
        if to_skip:
            raise CozeError("the retried audio is shorter than what was already played",
                            status=response.status_code, logid=self.logid)

    def _text_body(self) -> dict:
        return self.params.body(self._text)


class _PcmFramer:
    """Hands out whole 16-bit frames and strips a WAV header if Coze sent one anyway."""

    def __init__(self, expected_rate: int) -> None:
        self._rate = expected_rate
        self._carry = b""
        self._head: Optional[bytearray] = bytearray()

    def feed(self, data: bytes) -> bytes:
        if self._head is not None:
            self._head += data
            if len(self._head) < 4:
                return b""
            if not wav.is_riff(self._head):
                data, self._head = bytes(self._head), None
            else:
                payload = _strip_wav_header(bytes(self._head), self._rate)
                if payload is None:
                    return b""
                data, self._head = payload, None
        data = self._carry + data
        cut = len(data) - (len(data) % 2)
        self._carry = data[cut:]
        return data[:cut]

    def finish(self, logid: Optional[str]) -> None:
        if self._head:
            raise CozeError("Coze sent a WAV body whose header is cut short", logid=logid, retryable=True)
        if self._carry:
            raise CozeError("Coze sent pcm audio of odd length (not 16-bit frames)", logid=logid, retryable=True)


def _strip_wav_header(head: bytes, rate: int) -> Optional[bytes]:
    """Return the samples after a WAV header, or None while the header is incomplete.

    Raises as soon as the fmt chunk shows anything but pcm s16 mono at the asked rate.
    """
    fmt, offset = wav.find_data(head)
    if fmt is not None and (fmt.format_tag, fmt.channels, fmt.rate, fmt.bits) != (1, 1, rate, 16):
        raise CozeError(f"Coze sent WAV audio as {fmt.rate} Hz, {fmt.channels} channel(s), {fmt.bits} bit "
                        f"instead of pcm s16 mono {rate} Hz")
    return None if offset is None else head[offset:]


class CozeClient:
    """Coze's audio API: synthesize speech, list voices, clone a voice."""

    def __init__(
        self,
        token: Any,
        base_url: str = "https://api.coze.cn",
        *,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        session: Optional[requests.Session] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._token = token.reveal() if hasattr(token, "reveal") else token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._session = session

    @property
    def session(self) -> "requests.Session":
        """The one HTTP session (keep-alive to Coze), made at the first request."""
        if self._session is None:
            self._session = _requests().Session()
        self._session.headers["User-Agent"] = f"coze-speaker/{__version__}"
        return self._session

    @classmethod
    def from_config(cls, coze_config: Any, **kwargs: Any) -> "CozeClient":
        """A client for the `coze:` section of the configuration."""
        return cls(coze_config.token, coze_config.base_url, timeout=coze_config.timeout,
                   retries=coze_config.retries, **kwargs)

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
    ) -> SpeechStream:
        """Start synthesizing text; iterate the result for audio chunks as they arrive.

        Raises CozeValidationError at once (before any request) for a parameter Coze would
        reject; nothing is sent until the stream is iterated.
        """
        params = SpeechParams(voice_id, response_format, sample_rate, speed, emotion,
                              emotion_scale, loudness_rate, context_texts)
        return self.speech(text, params)

    def speech(self, text: str, params: SpeechParams) -> SpeechStream:
        """synthesize() for callers that already hold a SpeechParams."""
        validate_input(text)
        params.validate()
        self._require_token()
        return SpeechStream(self, text, params)

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
        if _not_int(page_size) or not 1 <= page_size <= 100:
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
        fields = _clone_fields(path, name, audio_format, language, voice_id, text, preview_text, space_id)
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

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP exchange; raises CozeError for any failure, marked retryable or not."""
        requests = _requests()
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            response = self.session.request(method, self.base_url + path, headers=headers,
                                            timeout=(CONNECT_TIMEOUT, self.timeout), **kwargs)
        except requests.exceptions.Timeout:
            raise CozeError(f"no answer from {self.host} within {self.timeout:g} s", retryable=True) from None
        except requests.exceptions.ConnectionError as exc:
            raise CozeError(f"cannot reach {self.host} ({_reason(exc)})", retryable=True) from None
        except requests.exceptions.RequestException as exc:
            raise CozeError(f"request to {self.host} failed ({_reason(exc)})") from None
        if _is_json(response):
            envelope = _read_json(response)
            code = envelope.get("code") if isinstance(envelope, dict) else None
            if code != 0 or response.status_code >= 400:
                raise _envelope_error(response, envelope)
            if kwargs.get("stream"):
                response.close()
                raise CozeError("Coze answered with JSON instead of audio", status=response.status_code,
                                logid=_logid(response, envelope))
            response._coze_envelope = envelope  # type: ignore[attr-defined]
            return response
        if response.status_code >= 400:
            text = _short_text(response)
            response.close()
            raise CozeError(f"HTTP {response.status_code} {response.reason or ''}".strip() + (f": {text}" if text else ""),
                            status=response.status_code, logid=_logid(response),
                            retryable=response.status_code >= 500 or response.status_code in (408, 429))
        return response

    def _json_call(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                response = self._send(method, path, **kwargs)
                envelope = getattr(response, "_coze_envelope", None)
                if envelope is None:
                    raise CozeError("Coze answered without a JSON body", status=response.status_code,
                                    logid=_logid(response))
                return envelope.get("data")
            except CozeError as exc:
                if not retry or not exc.retryable or attempt >= self.retries:
                    raise
                attempt += 1
                self._pause(attempt, exc)

    def _pause(self, attempt: int, exc: CozeError) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = delay / 2 + random.uniform(0, delay / 2)
        log.info("%s; retry %d of %d in %.1f s", exc, attempt, self.retries, delay)
        self._sleep(delay)


def _clone_fields(path: Path, name: Any, audio_format: str, language: Optional[str],
                  voice_id: Optional[str], text: Optional[str], preview_text: Optional[str],
                  space_id: Optional[str]) -> dict:
    """Check a clone request locally and build its form fields."""
    if not path.is_file():
        raise CozeValidationError("file", f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CozeValidationError("file", f"{path} is empty")
    if size > MAX_CLONE_BYTES:
        raise CozeValidationError("file", f"{path} is {size / 1048576:.1f} MB; Coze accepts at most 10 MB")
    if audio_format not in CLONE_FORMATS:
        raise CozeValidationError("audio_format", f"{audio_format or '(none)'!r} is not one of {', '.join(CLONE_FORMATS)}")
    if not isinstance(name, str) or not name.strip():
        raise CozeValidationError("voice_name", "must be a non-empty string")
    if len(name.encode("utf-8")) > MAX_VOICE_NAME_BYTES:
        raise CozeValidationError("voice_name", f"is longer than {MAX_VOICE_NAME_BYTES} UTF-8 bytes")
    if language is not None and language not in CLONE_LANGUAGES:
        raise CozeValidationError("language", f"{language!r} is not one of {', '.join(CLONE_LANGUAGES)}")
    for field, value in (("text", text), ("preview_text", preview_text)):
        if value is not None and len(value.encode("utf-8")) > MAX_INPUT_BYTES:
            raise CozeValidationError(field, f"is longer than {MAX_INPUT_BYTES} UTF-8 bytes")
    fields = {"voice_name": name, "audio_format": audio_format, "language": language,
              "voice_id": voice_id, "text": text, "preview_text": preview_text, "space_id": space_id}
    return {k: v for k, v in fields.items() if v is not None}


def _is_json(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/json"


def _read_json(response: requests.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, _requests().exceptions.RequestException):
        return None


def _envelope_error(response: requests.Response, envelope: Any) -> CozeError:
    if not isinstance(envelope, dict):
        return CozeError("Coze sent malformed JSON", status=response.status_code, logid=_logid(response),
                         retryable=response.status_code >= 500)
    code = envelope.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    msg = str(envelope.get("msg") or "no message")
    retryable = code in RETRYABLE_CODES or (code is None and response.status_code >= 500)
    return CozeError(msg, status=response.status_code, code=code, logid=_logid(response, envelope),
                     retryable=retryable)


def _logid(response: requests.Response, envelope: Any = None) -> Optional[str]:
    if isinstance(envelope, dict) and isinstance(envelope.get("detail"), dict):
        logid = envelope["detail"].get("logid")
        if logid:
            return str(logid)
    return response.headers.get("X-Tt-Logid")


def _short_text(response: requests.Response) -> str:
    try:
        text = response.content[:300].decode("utf-8", "replace")
    except _requests().exceptions.RequestException:
        return ""
    return " ".join(text.split())[:120]


def _reason(exc: BaseException) -> str:
    """A short reason from a requests exception (its messages run to several nested reprs)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    for marker in ("IncompleteRead", "Connection reset", "Connection aborted", "Connection broken",
                   "Read timed out", "Response ended prematurely"):
        if marker in text:
            return marker
    return type(exc).__name__
