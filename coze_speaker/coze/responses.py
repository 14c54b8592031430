"""Reading Coze's answers: error envelopes, logids, and short reasons for what went wrong."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Optional

from .errors import CozeError

if TYPE_CHECKING:
    import requests


def requests_module():
    """requests, imported on first use: with a warm cache the daemon never loads it
    (urllib3, charset_normalizer and requests are ~10 MB of a Pi's memory)."""
    import requests

    return requests


#: Coze codes worth another try after a pause; everything else is final.
RETRYABLE_CODES = frozenset({5000, 4009, 4020})


def is_json(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/json"


def read_json(response: requests.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, requests_module().exceptions.RequestException):
        return None


def envelope_error(response: requests.Response, envelope: Any) -> CozeError:
    if not isinstance(envelope, dict):
        return CozeError("Coze sent malformed JSON", status=response.status_code, logid=logid_of(response),
                         retryable=response.status_code >= 500)
    code = envelope.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    msg = str(envelope.get("msg") or "no message")
    retryable = code in RETRYABLE_CODES or (code is None and response.status_code >= 500)
    return CozeError(msg, status=response.status_code, code=code, logid=logid_of(response, envelope),
                     retryable=retryable)


def logid_of(response: requests.Response, envelope: Any = None) -> Optional[str]:
    """Coze's log id: the envelope's detail.logid, else the X-Tt-Logid header."""
    if isinstance(envelope, dict) and isinstance(envelope.get("detail"), dict):
        found = envelope["detail"].get("logid")
        if found:
            return str(found)
    return response.headers.get("X-Tt-Logid")


def short_text(response: requests.Response) -> str:
    try:
        text = response.content[:300].decode("utf-8", "replace")
    except requests_module().exceptions.RequestException:
        return ""
    return " ".join(text.split())[:120]


def reason_of(exc: BaseException) -> str:
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
