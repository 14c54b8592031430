"""Coze's audio API: the client (client.py) over a small HTTP/1.1 client on the standard
library (httpclient.py), one synthesis as a stream over HTTP (stream.py) or over the WebSocket
speech API (ws.py) and its time bounds (watchdog.py), what a request may hold (params.py),
reading the answers (responses.py) and the errors (errors.py).

`websocket` is imported on the first WebSocket synthesis, so a daemon that speaks over HTTP
never loads it.
"""

from .client import CONNECT_TIMEOUT, CozeClient
from .errors import CozeError, CozeValidationError
from .params import (CLONE_FORMATS, CLONE_LANGUAGES, MAX_CLONE_BYTES, MAX_VOICE_NAME_BYTES, MODEL_TYPES,
                     RESPONSE_FORMATS, VOICE_STATES, SpeechParams, validate_input)
from .responses import RETRYABLE_CODES
from .stream import SpeechStream
from .ws import WebSocketUnusable, WsSpeechStream, speech_rate, ws_unsupported, ws_url_for

__all__ = [
    "CozeClient", "CozeError", "CozeValidationError", "SpeechParams", "SpeechStream", "validate_input",
    "WebSocketUnusable", "WsSpeechStream", "speech_rate", "ws_unsupported", "ws_url_for",
    "CONNECT_TIMEOUT", "RETRYABLE_CODES", "RESPONSE_FORMATS", "CLONE_FORMATS", "CLONE_LANGUAGES",
    "MAX_CLONE_BYTES", "MAX_VOICE_NAME_BYTES", "MODEL_TYPES", "VOICE_STATES",
]
