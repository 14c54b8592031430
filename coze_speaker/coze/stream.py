"""One synthesis as a stream of audio chunks, read while Coze is still sending it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from ..sound import wav
from ..vocabulary import COMPRESSED_BYTES_PER_SECOND
from .errors import STALE, CozeError
from .params import SpeechParams
from .httpclient import Response, TransportError, TransportTimeout
from .responses import (MAX_ERROR_BODY, SNIFF_BYTES, answer_error, content_type, is_audio_type, logid_of,
                        looks_like_document, read_up_to)
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .client import CozeClient

#: Seconds left until the caller's deadline (negative when past), None without one.
Remaining = Callable[[], Optional[float]]


class SpeechStream:
    """The audio of one synthesis, iterated as chunks while Coze is still sending it.

    For pcm every chunk holds whole 16-bit frames. Iteration ends only when the whole body
    arrived; a body that ends early is fetched again (skipping what was already given out)
    or raises CozeError, so partial audio never looks like success. ``resumed`` tells a
    cache that the audio was joined from two responses.
    """

    def __init__(self, client: "CozeClient", text: str, params: SpeechParams, *,
                 remaining: Optional[Remaining] = None,
                 before_request: Optional[Callable[[], None]] = None) -> None:
        self._client = client
        self._text = text
        self.params = params
        self._remaining = remaining
        self._before_request = before_request
        #: HTTP requests sent for this synthesis, retries included
        self.requests = 0
        self.resumed = False
        self.logid: Optional[str] = None
        self.complete = False
        self._response: Optional[Response] = None

    def __iter__(self) -> Iterator[bytes]:
        delivered = 0
        attempt = 0
        while True:
            self._check_deadline()
            if self._before_request is not None:
                self._before_request()
            self.requests += 1
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
                self._client._pause(attempt, exc, self._remaining)
            finally:
                self.close()

    def _check_deadline(self) -> None:
        """Send nothing once the caller's deadline passed: nobody would hear the answer."""
        left = self._remaining() if self._remaining is not None else None
        if left is not None and left <= 0:
            raise CozeError(STALE, code="timeout")

    def read_all(self) -> bytes:
        """Collect the whole body: for callers that need it at once (a file, a test)."""
        return b"".join(self)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _attempt(self, skip: int) -> Iterator[bytes]:
        left = self._remaining() if self._remaining is not None else None
        watchdog = Watchdog(self._client.first_audio_timeout, self._bytes_per_second(),
                            None if left is None else time.monotonic() + left)
        try:
            response = self._client._send("POST", "/v1/audio/speech", json=self._text_body(), stream=True,
                                          read_timeout=None if left is None else max(0.1, left))
            self._response = response
            self.logid = logid_of(response)
            watchdog.watch(response)
            yield from self._read(response, skip, watchdog)
        finally:
            watchdog.stop()

    def _read(self, response: Response, skip: int, watchdog: Watchdog) -> Iterator[bytes]:
        expected = response.headers.get("Content-Length")
        frames = PcmFramer(expected_rate=self.params.sample_rate) if self.params.response_format == "pcm" else None
        received = 0
        to_skip = skip
        try:
            for raw in self._body(response):
                received += len(raw)
                watchdog.received(len(raw))
                chunk = frames.feed(raw) if frames else raw
                if to_skip:
                    cut = min(to_skip, len(chunk))
                    chunk, to_skip = chunk[cut:], to_skip - cut
                if chunk:
                    watchdog.hold()  # the consumer's time is not Coze's
                    yield chunk
                    watchdog.release()
        except TransportTimeout:
            watchdog.raise_verdict()
            left = self._remaining() if self._remaining is not None else None
            if left is not None and left < 0.1:  # the read was shortened to our deadline
                raise CozeError(STALE, code="timeout") from None
            raise CozeError(f"audio stream stalled after {received} bytes (no data for {self._client.timeout:g} s)",
                            status=response.status_code, logid=self.logid, retryable=True) from None
        except TransportError as exc:
            watchdog.raise_verdict()  # a read cut off by the watchdog ends here too
            raise CozeError(f"audio stream broke off after {received} bytes ({exc.reason})",
                            status=response.status_code, logid=self.logid, retryable=True) from None
        framed = expected is not None or "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        if not framed:  # the body ends where the connection does: a cut-off one would look whole
            watchdog.raise_verdict()
        if expected is not None and expected.isdigit() and received < int(expected):
            watchdog.raise_verdict()
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

    def _bytes_per_second(self) -> float:
        """Bytes per second of audio, to judge how fast it arrives."""
        if self.params.response_format in ("pcm", "wav"):
            return 2.0 * self.params.sample_rate
        return float(COMPRESSED_BYTES_PER_SECOND)

    @staticmethod
    def _body(response: Response) -> Iterator[bytes]:
        """The raw body once it is plausibly audio: labelled audio/* or octet-stream and not
        opening like JSON or markup. Anything else raises the error it carries, so an error
        page is never played or cached."""
        chunks = response.iter_content(chunk_size=8192)
        head = b""
        if is_audio_type(content_type(response)):
            for raw in chunks:
                head += raw
                if len(head) >= SNIFF_BYTES:
                    break
            if not looks_like_document(head):
                if head:
                    yield head
                yield from chunks
                return
        raise answer_error(response, head + read_up_to(chunks, MAX_ERROR_BODY - len(head)))

    def _text_body(self) -> dict:
        return self.params.body(self._text)


class PcmFramer:
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
