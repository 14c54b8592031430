"""The Wyoming TTS service: Home Assistant asks, the speaker's audio source answers with PCM.

One thread accepts; each connection gets a thread of its own, at most `MAX_CONNECTIONS` at
once (one more is told `busy` and closed), each bounded by `CONNECTION_LIMIT` and by
`IO_TIMEOUT` per read or write, so the port cannot tie the daemon up. `synthesize` goes
through the announcements' audio source (phrase cache, cost guard, circuit breaker, offline
voice) at the synthesis rate; nothing plays on the speaker. On any failure the client gets an
`error` event and the connection is closed, so Home Assistant never waits for audio that will
not come. The listening socket has SO_REUSEADDR: a restarted daemon binds at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Dict, Optional, Set, Tuple

from ..cancel import CancelToken
from ..config import Config
from ..coze import CozeValidationError
from ..errors import SpeakerError
from ..voice.request import RequestBuilder
from ..voice.source import AudioSource, OpenSpeech
from ..voice.voices import VoiceCatalog
from .info import info_event, language_matches
from .protocol import Event, ProtocolError, read_event, send_event

log = logging.getLogger(__name__)

#: Connections served at once; Home Assistant opens one per request, so a few suffice.
MAX_CONNECTIONS = 4
#: Seconds a read (the next event) or a write (the client reading audio) may take.
IO_TIMEOUT = 10.0
#: Seconds from `synthesize` to the first audio (Coze's retries included); then it flows.
FIRST_AUDIO_DEADLINE = 30.0
#: Seconds one connection may live, whatever it does.
CONNECTION_LIMIT = 300.0
#: How long `describe` waits for the first voice list when none was ever known (Home
#: Assistant gives up on `info` after 1 s).
INFO_WAIT = 0.5
#: Seconds between two attempts to listen when the port is taken.
BIND_RETRY = 5.0
#: PCM the audio source produces: signed 16-bit mono.
WIDTH, CHANNELS = 2, 1


class WyomingServer:
    """start() listens in the background (idempotent); stop() ends every connection."""

    def __init__(self, config: Config, source: AudioSource, requests: RequestBuilder, *,
                 catalog: Optional[VoiceCatalog] = None) -> None:
        self.host = config.wyoming.host
        self.port = config.wyoming.port
        self.voice_id = config.coze.voice_id
        self.base_url = config.coze.base_url
        self.device = config.mqtt.device_id
        self.source = source
        self.requests = requests
        self.rate = requests.rate
        self.catalog = catalog
        #: set while the port is bound
        self.listening = threading.Event()
        #: connections turned away because MAX_CONNECTIONS were busy
        self.refused = 0
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._active: Set[Tuple[socket.socket, CancelToken]] = set()
        self._threads: Set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="coze-speaker-wyoming", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread.is_alive() or self._stopping.is_set():
            return
        if self.catalog is not None:
            self.catalog.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and end every connection (a synthesis in flight is cancelled)."""
        self._stopping.set()
        with self._lock:
            listener, active, threads = self._listener, list(self._active), list(self._threads)
        if listener is not None:
            _shutdown(listener)
        for sock, token in active:
            token.cancel("shutdown")
            _shutdown(sock)
        if self._thread.is_alive():
            self._thread.join(5)
        for thread in threads:
            thread.join(5)
        if self.catalog is not None:
            self.catalog.close()

    def _bind(self) -> Optional[socket.socket]:
        """The listening socket, trying again every BIND_RETRY s while the port is taken."""
        complained = False
        while not self._stopping.is_set():
            try:
                family, kind, proto, _, address = socket.getaddrinfo(
                    self.host, self.port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
                listener = socket.socket(family, kind, proto)
                try:
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind(address)
                    listener.listen(16)
                except BaseException:
                    listener.close()
                    raise
            except OSError as exc:
                if not complained:
                    log.error("Wyoming: cannot listen on %s:%d (%s); trying again every %g s",
                              self.host, self.port, exc, BIND_RETRY)
                    complained = True
                self._stopping.wait(BIND_RETRY)
                continue
            log.info("Wyoming TTS service on %s:%d (no authentication: keep it on the LAN)", self.host, self.port)
            return listener
        return None

    def _accept_loop(self) -> None:
        listener = self._bind()
        if listener is None:
            return
        listener.settimeout(5.0)  # a safety net: stop() wakes accept() by shutting the socket down
        with self._lock:
            self._listener = listener
        self.listening.set()
        try:
            while not self._stopping.is_set():
                try:
                    sock, peer = listener.accept()
                except socket.timeout:
                    continue
                except OSError as exc:
                    if self._stopping.is_set():
                        break
                    log.warning("Wyoming: accept failed: %s", exc)
                    self._stopping.wait(0.5)
                    continue
                self._admit(sock, peer)
        finally:
            self.listening.clear()
            listener.close()

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.warning("Wyoming: %d requests already running, turning %s away", MAX_CONNECTIONS, _peer(peer))
            sock.settimeout(1.0)
            _try_send(sock, _error_event(f"busy: {MAX_CONNECTIONS} requests at once, try again", "busy"))
            sock.close()
            return
        thread = threading.Thread(target=self._serve, args=(sock, peer), name="coze-speaker-wyoming-conn", daemon=True)
        with self._lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: turn this one away
            log.warning("Wyoming: cannot serve %s: %s", _peer(peer), exc)
            with self._lock:
                self._threads.discard(thread)
            sock.close()
            self._slots.release()

    # -- one connection --------------------------------------------------------------------

    def _serve(self, sock: socket.socket, peer: Any) -> None:
        token = CancelToken()  # the connection's; a synthesis gets its own, tied to this one

        def expire() -> None:
            token.cancel("deadline")
            _shutdown(sock)

        limit = threading.Timer(CONNECTION_LIMIT, expire)
        limit.daemon = True
        with self._lock:
            self._active.add((sock, token))
        limit.start()
        try:
            sock.settimeout(IO_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with sock.makefile("rb") as stream:
                while not token.cancelled:
                    event = read_event(stream)
                    if event is None:
                        break
                    if event.type == "describe":
                        send_event(sock, self.info())
                    elif event.type == "synthesize":
                        if not self._synthesize(sock, event, token, peer):
                            break
                    else:
                        log.debug("Wyoming: ignoring a %r event from %s", event.type, _peer(peer))
        except ProtocolError as exc:
            log.warning("Wyoming: %s sent something that is not a Wyoming event: %s", _peer(peer), exc)
            _try_send(sock, _error_event(str(exc), exc.code))
        except OSError as exc:  # the client left, or was too slow (IO_TIMEOUT), or stop()
            log.debug("Wyoming: connection from %s ended: %s", _peer(peer), exc)
        except Exception:  # a bug: logged, and the slot is freed all the same
            log.exception("Wyoming: the connection from %s failed", _peer(peer))
        finally:
            limit.cancel()
            with self._lock:
                self._active.discard((sock, token))
                self._threads.discard(threading.current_thread())
            sock.close()
            self._slots.release()

    def info(self) -> Event:
        """`info` from the voices known now (waiting INFO_WAIT at most for a first list)."""
        catalog = self.catalog
        if catalog is not None and not catalog.known:
            catalog.wait_known(INFO_WAIT)
        voices = catalog.voices() if catalog is not None else ()
        return info_event(voices, configured=self.voice_id, base_url=self.base_url, device=self.device)

    def _synthesize(self, sock: socket.socket, event: Event, connection: CancelToken, peer: Any) -> bool:
        """Answer one `synthesize` with audio-start, audio-chunk…, audio-stop; False (after an
        `error` event) when it failed: the caller then closes the connection."""
        data = event.data
        try:
            text = data.get("text")
            if not isinstance(text, str):
                raise CozeValidationError("text", "must be a string")
            request = self.requests.build(text, voice_id=self.choose_voice(data.get("voice")))
        except SpeakerError as exc:
            log.warning("Wyoming: refused a request from %s: %s", _peer(peer), exc)
            _try_send(sock, _error_event(str(exc), exc.code))
            return False
        token = CancelToken(deadline=time.monotonic() + FIRST_AUDIO_DEADLINE)
        unlink = connection.on_cancel(lambda: _cancel(token, connection.reason or "stopped"))
        speech = self.source.open(request, token=token)
        try:
            failure = self._stream(sock, speech)
        except OSError as exc:  # the client is gone or stopped reading: stop producing
            token.cancel("client left")
            log.info("Wyoming: %s left before the audio ended (%s)", _peer(peer), exc)
            return False
        finally:
            speech.close()
            unlink()
        if failure is None and token.cancelled:
            failure = SpeakerError("no audio within the request's deadline" if token.reason == "deadline"
                                   else f"stopped ({token.reason})")
        if failure is not None:
            log.warning("Wyoming: no audio for %s: %s", _peer(peer), failure)
            _try_send(sock, _error_event(str(failure), getattr(failure, "code", None)))
            return False
        send_event(sock, Event("audio-stop", {"timestamp": None}))
        log.info("Wyoming: spoke %d characters for %s in voice %s (%s)", len(request.text), _peer(peer),
                 request.params.voice_id, "cache" if speech.cached else
                 "offline voice" if speech.fallback_pieces else f"{speech.api_calls} Coze request(s)")
        return True

    def _stream(self, sock: socket.socket, speech: OpenSpeech) -> Optional[SpeakerError]:
        """Send the speech's PCM in whole frames; the error that ended the speech, or None.
        The socket's errors (the client left) are raised."""
        fmt = {"rate": self.rate, "width": WIDTH, "channels": CHANNELS}
        frame = WIDTH * CHANNELS
        started, carry, sent = False, b"", 0
        chunks = iter(speech)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except SpeakerError as exc:
                return exc
            except Exception:  # a bug, not the client: say so, keep the thread
                log.exception("Wyoming: the audio source failed")
                return SpeakerError("internal error")
            pcm = carry + chunk
            whole = len(pcm) - len(pcm) % frame
            pcm, carry = pcm[:whole], pcm[whole:]
            if not pcm:
                continue
            if not started:  # only once audio exists: a failure before it is an error, not silence
                send_event(sock, Event("audio-start", {**fmt, "timestamp": 0}))
                started = True
            stamp = sent * 1000 // (self.rate * frame)
            send_event(sock, Event("audio-chunk", {**fmt, "timestamp": stamp}, pcm))
            sent += len(pcm)
        if not started:
            send_event(sock, Event("audio-start", {**fmt, "timestamp": 0}))
        return None

    def choose_voice(self, asked: Any) -> Optional[str]:
        """The voice id for a request's `voice`: its name, else the configured voice or the
        first known one of its language, else None (the configured voice). A name not among
        the account's voices is refused here, before a Coze request is spent on it."""
        if not isinstance(asked, dict):
            return None
        name, language = asked.get("name"), asked.get("language")
        voices = self.catalog.voices() if self.catalog is not None else ()
        if isinstance(name, str) and name:
            if name != self.voice_id and self.catalog is not None and self.catalog.known \
                    and all(v.voice_id != name for v in voices):
                raise CozeValidationError("voice", f"{name!r} is not one of this account's Coze voices")
            return name
        if isinstance(language, str) and language:
            mine = next((v for v in voices if v.voice_id == self.voice_id), None)
            if mine is not None and language_matches(mine.language, language):
                return self.voice_id
            return next((v.voice_id for v in voices if language_matches(v.language, language)), None)
        return None


def _error_event(text: str, code: Any) -> Event:
    data: Dict[str, Any] = {"text": text}
    if code is not None:
        data["code"] = str(code)
    return Event("error", data)


def _cancel(token: CancelToken, reason: str) -> None:
    token.cancel(reason)


def _try_send(sock: socket.socket, event: Event) -> None:
    try:
        send_event(sock, event)
    except OSError:
        pass


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked on sock (accept, recv or send)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _peer(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
