"""Audio between speakers over MQTT: the wire format, a stream being received, a stream being sent.

One message = one line of JSON (the header) + b"\\n" + raw s16le PCM. A stream is a run of
messages with one stream id `s`, numbered `n` = 0, 1, 2… and tagged with the cache key `k`,
the rate `r`, the sender `f` and, for a broadcast, its id `b`, scope `g` and (first message,
when its start is synchronized) the planned start `at` on the shared clock; QoS 1 on one
topic from one publisher keeps them in order (also across a bridge). The last message says
`end` with the total length and the crc32 of the whole audio: only then may a receiver
cache it (the same rule as its own synthesis: only complete, verified audio), or `abort`.
No MQTT 5 property is used, so it crosses a mosquitto bridge (MQTT 3.1.1).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..cache import CacheError, PhraseCache

#: The most a header line may be (a key is 64 hex characters; ids are short).
MAX_HEADER = 1024

Publish = Callable[[str, bytes], None]


def encode(header: Dict[str, Any], data: bytes = b"") -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + data


def decode(payload: bytes) -> Tuple[Dict[str, Any], bytes]:
    """Header and audio of one message; ValueError for anything else."""
    line, sep, data = payload.partition(b"\n")
    if not sep or len(line) > MAX_HEADER:
        raise ValueError("not a fleet message (no header line)")
    header = json.loads(line)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, data


class InStream:
    """Audio arriving from another speaker; readers poll `chunks` under the fleet's condition.
    With a cache, a complete and verified stream is written into it."""

    def __init__(self, sid: str, key: str, rate: int, sender: str, scope: Optional[str]) -> None:
        self.sid, self.key, self.rate, self.sender, self.scope = sid, key, rate, sender, scope
        self.chunks: List[bytes] = []
        self.size = 0
        self.crc = 0
        self.next_seq = 0
        self.done = False       # ended (verified or not)
        self.broken = False     # a gap, a bad end, an abort, or the sender went silent
        self.last = time.monotonic()
        self._writer: Any = None

    def cache_into(self, cache: Optional[PhraseCache]) -> None:
        """Write this stream into the cache as it arrives (unless the phrase is there already)."""
        if cache is None:
            return
        try:
            if not cache.contains(self.key):
                self._writer = cache.writer(self.key, self.rate)
        except (CacheError, ValueError):  # not a key or not a rate: played (if asked for), never cached
            self._writer = None

    def add(self, seq: int, data: bytes) -> None:
        if self.done or self.broken or seq < self.next_seq:  # a redelivered duplicate
            return
        if seq > self.next_seq:
            self.fail()
            return
        self.next_seq += 1
        self.last = time.monotonic()
        if data:
            self.chunks.append(data)
            self.size += len(data)
            self.crc = zlib.crc32(data, self.crc)
            if self._writer is not None:
                self._writer.write(data)

    def end(self, seq: int, total: Any, crc: Any, aborted: bool) -> None:
        if self.done or self.broken or seq != self.next_seq:
            if not self.done:
                self.fail()
            return
        self.last = time.monotonic()
        if aborted or total != self.size or crc != self.crc:
            self.fail()
            self.done = True
            return
        self.done = True
        if self._writer is not None:
            try:
                self._writer.commit()
            finally:
                self._writer.abort()
                self._writer = None

    def fail(self) -> None:
        self.broken = True
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


class OutStream:
    """Audio this speaker produces, sent to `topic` as it is produced (PeerShare)."""

    def __init__(self, publish: Publish, topic: str, header: Dict[str, Any], chunk_bytes: int, *,
                 plan: Optional[Callable[[], float]] = None) -> None:
        self._publish = publish
        #: a broadcast's start plan: asked when the first audio goes out, carried as `at` in it
        self.plan = plan
        self.topic = topic
        self.header = header
        self.chunk_bytes = chunk_bytes
        self.seq = 0
        self.size = 0
        self.crc = 0
        self.ended = False
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self.ended:
                return
            for i in range(0, len(chunk), self.chunk_bytes):
                part = chunk[i:i + self.chunk_bytes]
                header = {**self.header, "n": self.seq}
                if self.seq == 0 and self.plan is not None:
                    header["at"] = round(self.plan(), 6)
                self._publish(self.topic, encode(header, part))
                self.seq += 1
                self.size += len(part)
                self.crc = zlib.crc32(part, self.crc)

    def commit(self) -> None:
        self._end({"end": True, "len": self.size, "crc": self.crc})

    def abort(self) -> None:
        self._end({"end": True, "abort": True})

    def _end(self, fields: Dict[str, Any]) -> None:
        with self._lock:
            if self.ended:
                return
            self.ended = True
            self._publish(self.topic, encode({**self.header, "n": self.seq, **fields}))
