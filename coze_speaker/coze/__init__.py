"""Coze's audio API: the client (client.py), one synthesis as a stream (stream.py) and its
time bounds (watchdog.py), what a request may hold (params.py), reading the answers
(responses.py) and the errors (errors.py).

`requests` is imported on the first request, so a daemon with a warm cache never loads it.
"""

from .client import CONNECT_TIMEOUT, CozeClient
from .errors import CozeError, CozeValidationError
from .params import (CLONE_FORMATS, CLONE_LANGUAGES, MAX_CLONE_BYTES, MAX_VOICE_NAME_BYTES, MODEL_TYPES,
                     RESPONSE_FORMATS, VOICE_STATES, SpeechParams, validate_input)
from .responses import RETRYABLE_CODES
from .stream import SpeechStream

__all__ = [
    "CozeClient", "CozeError", "CozeValidationError", "SpeechParams", "SpeechStream", "validate_input",
    "CONNECT_TIMEOUT", "RETRYABLE_CODES", "RESPONSE_FORMATS", "CLONE_FORMATS", "CLONE_LANGUAGES",
    "MAX_CLONE_BYTES", "MAX_VOICE_NAME_BYTES", "MODEL_TYPES", "VOICE_STATES",
]
