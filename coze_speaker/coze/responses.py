"""Reading Coze's answers: error envelopes, logids, and short reasons for what went wrong."""

from __future__ import annotations

import codecs
import datetime
import email.utils
import json
import time
from typing import Any, Callable, Iterable, Optional

from .errors import CozeError
from .httpclient import Response, TransportError

#: Seconds to establish a connection to Coze (HTTP or WebSocket); coze.timeout bounds reads.
CONNECT_TIMEOUT = 5.0
#: Coze codes worth another try after a pause; everything else is final.
RETRYABLE_CODES = frozenset({5000, 4009, 4020})
#: HTTP statuses worth another try (besides every 5xx).
RETRYABLE_STATUSES = frozenset({408, 429})
#: How much of a body is looked at to tell audio from a document, and read of an error body.
SNIFF_BYTES = 64
MAX_ERROR_BODY = 64 * 1024


def content_type(response: Response) -> str:
    """The media type without parameters, lower case ("" when there is none)."""
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def is_json(response: Response) -> bool:
    return content_type(response) == "application/json"


def is_audio_type(ctype: str) -> bool:
    """Only these labels can carry audio; anything else (text/html, text/plain, none) is an
    error page, whatever its status."""
    return ctype.startswith("audio/") or ctype == "application/octet-stream"


def looks_like_document(head: bytes) -> bool:
    """True when the first bytes of a body are JSON or markup rather than samples.

    Text, not audio: after an optional BOM and whitespace it opens like JSON (`{"`, `{}`, `[`)
    or markup (`<!`, `<?`, `<tag`), and every byte looked at is printable UTF-8. Raw pcm may
    begin with `{` (a sample value) but not with 64 printable characters.
    """
    text = head[:SNIFF_BYTES]
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    try:
        decoded = codecs.getincrementaldecoder("utf-8")().decode(text, final=False)
    except UnicodeDecodeError:
        return False
    if not decoded or any(not (c.isprintable() or c in "\t\r\n") for c in decoded):
        return False
    start = decoded.lstrip()
    if start[:1] == "{":
        return start[1:].lstrip()[:1] in ('"', "}", "")
    if start[:1] == "[":
        return True
    return start[:1] == "<" and (start[1:2] in ("!", "?", "/") or start[1:2].isalpha())


def read_up_to(chunks: Iterable[bytes], limit: int) -> bytes:
    """At most limit bytes of what is left of a streamed body (an error page is never read whole)."""
    body = b""
    try:
        for chunk in chunks:
            body += chunk
            if len(body) >= limit:
                break
    except TransportError:
        pass
    return body[:limit]


def answer_error(response: Response, body: bytes) -> CozeError:
    """The error an answer that is not audio carries: a Coze envelope when the body is JSON
    (whatever its label), else the status and the start of the text. The logid is the
    envelope's, else the X-Tt-Logid header's."""
    status = response.status_code
    envelope = _parse_json(body)
    if is_json(response) or isinstance(envelope, dict):
        if not isinstance(envelope, dict):
            error = CozeError("Coze sent malformed JSON", status=status, logid=logid_of(response),
                              retryable=status >= 500)
        elif envelope.get("code") == 0 and status < 400:
            error = CozeError("Coze answered with JSON instead of audio", status=status,
                              logid=logid_of(response, envelope))
        else:
            error = envelope_error(response, envelope)
    else:
        text = short_text(body)
        if status >= 400:
            head = f"HTTP {status} {response.reason or ''}".strip()
        else:
            head = f"Coze answered with {content_type(response) or 'no Content-Type'} instead of audio"
        error = CozeError(head + (f": {text}" if text else ""), status=status, logid=logid_of(response),
                          retryable=status >= 500 or status in RETRYABLE_STATUSES)
    error.retry_after = retry_after_of(response)
    return error


def retry_after_of(response: Response, now: Callable[[], float] = time.time) -> Optional[float]:
    """The answer's Retry-After in seconds from now (delay-seconds or an HTTP-date), None
    when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - now()
    if seconds != seconds or seconds == float("inf"):
        return None
    return max(0.0, seconds)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None


def envelope_error(response: Response, envelope: dict) -> CozeError:
    status = response.status_code
    code = envelope.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    msg = str(envelope.get("msg") or "no message")
    retryable = code in RETRYABLE_CODES or (code is None and (status >= 500 or status in RETRYABLE_STATUSES))
    return CozeError(msg, status=status, code=code, logid=logid_of(response, envelope), retryable=retryable)


def logid_of(response: Response, envelope: Any = None) -> Optional[str]:
    """Coze's log id: the envelope's detail.logid, else the X-Tt-Logid header."""
    if isinstance(envelope, dict) and isinstance(envelope.get("detail"), dict):
        found = envelope["detail"].get("logid")
        if found:
            return str(found)
    return response.headers.get("X-Tt-Logid")


def short_text(body: bytes) -> str:
    """The start of a text body on one line, for an error message."""
    return " ".join(body[:300].decode("utf-8", "replace").split())[:120]
