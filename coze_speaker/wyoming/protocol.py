"""Wyoming's event framing over a blocking socket: a JSON header line, then an optional
`data_length` block of JSON and a `payload_length` block of bytes.

Written here (about 100 lines) instead of importing the `wyoming` package: its server is
asyncio, the daemon is threads, and the framing is this small. tests/test_wyoming.py talks to
it with the package's own client classes, so the two cannot drift apart. Every length read
from a peer is bounded, so a hostile client cannot make the daemon allocate much.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Optional

from ..errors import SpeakerError

#: The protocol version written in every header (what Home Assistant 2026.2 speaks).
VERSION = "1.7.2"
#: The longest header line, JSON data block and payload accepted from a peer (bytes). A TTS
#: client sends a text of at most limits.max_text_bytes (1 MiB at most) in its data.
MAX_HEADER = 64 * 1024
MAX_DATA = 2 * 1024 * 1024
MAX_PAYLOAD = 1024 * 1024


class ProtocolError(SpeakerError):
    """A peer sent something that is not a Wyoming event."""

    code = "protocol"

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Event:
    """One event: its type, its data and an optional binary payload (audio)."""

    type: str
    data: Dict[str, Any] = field(default_factory=dict)
    payload: Optional[bytes] = None


def read_event(stream: BinaryIO) -> Optional[Event]:
    """The next event, None at the end of the stream; raises ProtocolError for garbage and
    socket.timeout / OSError from the socket."""
    line = stream.readline(MAX_HEADER + 1)
    if not line:
        return None
    if len(line) > MAX_HEADER:
        raise ProtocolError(f"a header line is longer than {MAX_HEADER} bytes")
    if not line.endswith(b"\n"):
        return None  # the peer left in the middle of a header
    header = _json_object(line, "header")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("the header has no type", "type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError("data is not a JSON object", "data")
    data_length = _length(header, "data_length", MAX_DATA)
    if data_length:
        data = {**data, **_json_object(_read_exactly(stream, data_length), "data")}
    payload_length = _length(header, "payload_length", MAX_PAYLOAD)
    payload = _read_exactly(stream, payload_length) if payload_length else None
    return Event(kind, data, payload)


def encode_event(event: Event) -> bytes:
    """The event as bytes on the wire: data in its own block, as the wyoming package writes it."""
    header: Dict[str, Any] = {"type": event.type, "version": VERSION}
    data = json.dumps(event.data, ensure_ascii=False).encode("utf-8") if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    line = json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n"
    return line + data + (event.payload or b"")


def send_event(sock: socket.socket, event: Event) -> None:
    """Write one event in a single send (no header waiting for its payload behind Nagle)."""
    sock.sendall(encode_event(event))


def _length(header: Dict[str, Any], name: str, limit: int) -> int:
    value = header.get(name)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ProtocolError(f"{name} must be a whole number from 0 to {limit}", name)
    return value


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise ProtocolError("the connection ended inside an event")
    return data


def _json_object(raw: bytes, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"the {what} is not JSON", what) from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} is not a JSON object", what)
    return value
