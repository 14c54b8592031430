"""The fleet: speakers sharing one base topic synthesize a broadcast once and share their caches.

Membership: each speaker keeps a retained record of itself on B/fleet/members/<device> and
follows the others' records and their availability (B/<device>/availability, the LWT), so a
speaker knows who is online as soon as its subscriptions deliver the retained messages.

A broadcast (all/say, group/<g>/say) reaches every member of its scope; on a miss, each one
ranks the online members of that scope (same rate and voice) by rendezvous hashing of the
phrase's cache key: the same order everywhere, without talking. The first synthesizes (or
reads its cache) and streams the audio on B/fleet/audio as it arrives; the others play it
and cache it once it is complete and verified (fleetaudio.py). A member that hears nothing
from the one ahead of it for `fleet.takeover` seconds drops it and waits for the next; when
nobody is left ahead, it produces the audio itself and streams it (skipping what it played).

A unicast miss asks the fleet first (B/fleet/want); a member that has the phrase cached says
so on the asker's B/fleet/to/<asker>; the first to answer is asked for it and streams it
there. No answer within `fleet.fetch_wait`: Coze is asked, as without a fleet.

paho's thread only hands messages to the front end's intake thread, which calls `handle`;
the audio source's producer thread calls `receive`/`share` (the PeerAudio interface).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from .. import __version__
from ..cache import CacheError, PhraseCache
from ..cue import StartCue
from ..voice.peers import Broadcast, PeerShare, PeerTurn
from .bridge import Incoming
from .fleetaudio import InStream, OutStream, decode, encode
from .topics import AVAILABLE

log = logging.getLogger(__name__)

#: What a member record says this speaker can do.
CAPABILITIES = ("broadcast", "fetch")
#: Streams kept in memory after they ended (a reader that just missed the cache can still play
#: one from the start); few, as each holds its whole audio.
KEEP_STREAMS = 4
#: At most this many cached phrases are sent to askers at the same time.
MAX_SERVING = 4
#: How often a waiting reader looks again (seconds; it is woken at once by new audio).
POLL = 0.05
#: Start plans kept (the latest ones; a broadcast's plan is used within seconds of arriving).
KEEP_PLANS = 32
#: A start plan further ahead of the local clock than this (seconds) is not one: ignored
#: (sync_lead is at most 5 s), so no room holds its device open for a bogus instant.
PLAN_HORIZON = 30.0

Publish = Callable[[str, bytes], None]
_DEVICE_RE = re.compile(r"^[a-z0-9_-]{1,128}$")


def device_id(value: Any) -> str:
    """A device id from a message (it becomes part of a topic): ValueError unless valid."""
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise ValueError(f"not a device id: {str(value)[:40]!r}")
    return value


@dataclass(frozen=True)
class Member:
    """One speaker's retained record."""

    device: str
    groups: Tuple[str, ...]
    rate: int
    voice: str
    version: str = ""
    capabilities: Tuple[str, ...] = ()

    @classmethod
    def from_payload(cls, device: str, payload: bytes) -> "Member":
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("device") != device:
            raise ValueError("the record does not describe the device of its topic")
        groups, rate, voice = data.get("groups"), data.get("sample_rate"), data.get("voice")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError("groups: expected a list of names")
        if not isinstance(rate, int) or not isinstance(voice, str):
            raise ValueError("sample_rate or voice is missing")
        caps = data.get("capabilities")
        return cls(device, tuple(groups), rate, voice, str(data.get("version", "")),
                   tuple(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else ())

    def payload(self) -> bytes:
        return json.dumps({"device": self.device, "groups": list(self.groups), "sample_rate": self.rate,
                           "voice": self.voice, "version": self.version,
                           "capabilities": list(self.capabilities)}, separators=(",", ":")).encode()

    def in_scope(self, scope: str) -> bool:
        return scope == "all" or (scope.startswith("group/") and scope[6:] in self.groups)


def rendezvous(key: str, devices: List[str]) -> List[str]:
    """The devices ordered by rendezvous (highest random weight) hashing of `key`: every member
    computes the same order, and removing one device does not reorder the others."""
    def weight(device: str) -> bytes:
        return hashlib.sha256(f"{key}\0{device}".encode()).digest()
    return sorted(devices, key=weight, reverse=True)


def voice_fingerprint(config: Any, rate: int) -> str:
    """Speakers whose voice defaults differ make different cache keys: they are not asked."""
    c = config.coze
    text = json.dumps([urlsplit(c.base_url).netloc, c.voice_id, c.speed, c.emotion, c.emotion_scale,
                       c.loudness_rate, c.context_texts, rate])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Want:
    """A phrase this speaker asked the fleet for: who answered first."""

    key: str
    holder: Optional[str] = None


class Fleet:
    """This speaker's view of the fleet, and its PeerAudio (voice/peers.py)."""

    def __init__(self, config: Any, cache: Optional[PhraseCache], rate: int) -> None:
        mqtt = config.mqtt
        self.base, self.device = mqtt.base_topic, mqtt.device_id
        self.takeover = float(config.fleet.takeover)
        self.fetch_wait = float(config.fleet.fetch_wait)
        self.chunk_bytes = int(config.fleet.chunk_bytes)
        #: a broadcast starts at one instant everywhere, `sync_lead` s after its first audio
        self.sync = bool(config.fleet.sync)
        self.sync_lead = float(config.fleet.sync_lead)
        self.cache = cache
        self.me = Member(self.device, tuple(mqtt.groups), rate, voice_fingerprint(config, rate), __version__,
                         CAPABILITIES)
        self.members_prefix = f"{self.base}/fleet/members/"
        self.audio_topic = f"{self.base}/fleet/audio"
        self.want_topic = f"{self.base}/fleet/want"
        self.inbox_topic = self.to(self.device)
        self._publish: Optional[Publish] = None
        self._cond = threading.Condition()
        self._members: Dict[str, Member] = {}
        self._online: Dict[str, bool] = {}
        self._streams: Dict[str, InStream] = {}
        self._wants: Dict[str, _Want] = {}
        self._plans: List[Tuple[str, float, float]] = []  # (key, at, monotonic time received)
        self._cues: List[Tuple[str, StartCue]] = []  # broadcasts waiting for their plan
        self._ids = itertools.count(1)
        self._run = f"{time.time_ns() % 10**10:x}"  # stream ids stay unique across restarts
        self._serving = threading.BoundedSemaphore(MAX_SERVING)

    def to(self, device: str) -> str:
        return f"{self.base}/fleet/to/{device}"

    def bind(self, publish: Publish) -> None:
        """The front end's publisher (QoS 1, not retained); until then nothing is sent."""
        self._publish = publish

    def _send(self, topic: str, payload: bytes) -> None:
        if self._publish is not None:
            self._publish(topic, payload)

    def _new_id(self) -> str:
        return f"{self.device}-{self._run}-{next(self._ids)}"

    # -- membership -----------------------------------------------------------------------

    def subscriptions(self) -> List[str]:
        return [self.members_prefix + "+", f"{self.base}/+/availability", self.audio_topic, self.want_topic,
                self.inbox_topic]

    def member_record(self) -> Tuple[str, bytes]:
        """(topic, payload) of this speaker's retained record, published at every connect."""
        return self.members_prefix + self.device, self.me.payload()

    def online(self) -> List[Member]:
        """The other members now online (a record and `online` on their availability)."""
        with self._cond:
            return [m for d, m in self._members.items() if self._online.get(d) and d != self.device]

    def _is_online(self, device: str) -> bool:
        return device == self.device or bool(self._online.get(device) and device in self._members)

    def order(self, key: str, rate: int, scope: str) -> List[str]:
        """The members that received a broadcast of `scope` and can play `key`, in the agreed order."""
        candidates = [self.device] + [m.device for m in self.online()
                                      if m.rate == rate and m.voice == self.me.voice and m.in_scope(scope)]
        return rendezvous(key, candidates)

    # -- MQTT in (the front end's intake thread) ------------------------------------------

    def owns(self, topic: str) -> bool:
        return (topic.startswith(f"{self.base}/fleet/")
                or (topic.startswith(self.base + "/") and topic.endswith("/availability")))

    def handle(self, msg: Incoming) -> None:
        """One fleet message; anything malformed is logged and ignored (never raises)."""
        topic = msg.topic
        try:
            if topic.startswith(self.members_prefix):
                self._on_member(device_id(topic[len(self.members_prefix):]), msg.payload)
            elif topic.endswith("/availability"):
                device = topic[len(self.base) + 1:-len("/availability")]
                with self._cond:
                    self._online[device] = msg.payload == AVAILABLE
                    self._cond.notify_all()
            elif topic == self.want_topic:
                self._on_want(msg.payload)
            elif topic in (self.audio_topic, self.inbox_topic):
                self._on_audio(msg.payload, broadcast=topic == self.audio_topic)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, CacheError) as exc:
            log.warning("ignored a fleet message on %s: %s", topic, exc)

    def _on_member(self, device: str, payload: bytes) -> None:
        with self._cond:
            if not payload:
                self._members.pop(device, None)
            else:
                self._members[device] = Member.from_payload(device, payload)
            self._cond.notify_all()

    def _on_want(self, payload: bytes) -> None:
        want = json.loads(payload)
        asker, key, rid = device_id(want["from"]), want["key"], want["id"]
        if asker == self.device or self.cache is None or not isinstance(key, str):
            return
        entry = self.cache.lookup(key) if self.cache.contains(key) else None
        if entry is not None and entry.rate == want.get("rate"):
            self._send(self.to(asker), encode({"have": rid, "f": self.device}))

    def _on_audio(self, payload: bytes, *, broadcast: bool) -> None:
        header, data = decode(payload)
        if "have" in header:
            self._on_have(header)
            return
        if "get" in header:
            self._serve(header)
            return
        sid, sender = str(header["s"]), device_id(header["f"])
        if sender == self.device:
            return
        with self._cond:
            stream = self._streams.get(sid)
            if stream is None:
                if header["n"] != 0:
                    return  # joined in the middle: of no use
                scope = header.get("g") if broadcast else None
                if broadcast and not (isinstance(scope, str) and self.me.in_scope(scope)):
                    return
                if not broadcast and sid not in self._wants:
                    return  # an answer that came too late
                stream = InStream(sid, str(header["k"]), int(header["r"]), sender, scope)
                if broadcast and "at" in header:
                    try:
                        self._on_plan(stream.key, header["at"])
                    except ValueError as exc:  # the audio is still good: played, without a plan
                        log.warning("ignored the start plan of %s from %s: %s", stream.key[:12], sender, exc)
                if broadcast or sid in self._wants:
                    stream.cache_into(self.cache)
                self._streams[sid] = stream
                self._forget_old()
            if header.get("end"):
                stream.end(int(header["n"]), header.get("len"), header.get("crc"), bool(header.get("abort")))
                if stream.done and not stream.broken:
                    log.info("received %s from %s (%d bytes)%s", stream.key[:12], sender, stream.size,
                             " and cached it" if self.cache is not None else "")
            else:
                stream.add(int(header["n"]), data)
            self._cond.notify_all()

    def _on_plan(self, key: str, at: Any) -> None:
        """A broadcast's start plan (under _cond): kept, and given to the cues waiting for it."""
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not -3600 < at - time.time() < PLAN_HORIZON:
            raise ValueError(f"not a start time: {str(at)[:40]}")
        self._plans = self._plans[-(KEEP_PLANS - 1):] + [(key, float(at), time.monotonic())]
        self._cues = [(k, cue) for k, cue in self._cues if not cue.closed]
        for k, cue in self._cues:
            if k == key:
                cue.propose(float(at))

    def _forget_old(self) -> None:
        """Keep the streams being received, and the last few that ended."""
        ended = [s for s in self._streams.values() if s.done or s.broken]
        for stream in sorted(ended, key=lambda s: s.last)[:max(0, len(ended) - KEEP_STREAMS)]:
            del self._streams[stream.sid]
        now = time.monotonic()
        for stream in list(self._streams.values()):
            if not stream.done and now - stream.last > 60:  # a sender that vanished long ago
                stream.fail()
                del self._streams[stream.sid]

    def _on_have(self, header: Dict[str, Any]) -> None:
        with self._cond:
            want = self._wants.get(str(header["have"]))
            if want is not None and want.holder is None:
                want.holder = device_id(header["f"])
                self._cond.notify_all()

    def _serve(self, header: Dict[str, Any]) -> None:
        """Send a cached phrase to the member that asked for it (in a thread of its own)."""
        device_id(header["f"])
        if not self._serving.acquire(blocking=False):
            log.info("not sending %s to %s: already sending %d phrases", str(header["k"])[:12], header["f"],
                     MAX_SERVING)
            return
        threading.Thread(target=self._send_cached, args=(header,), name="coze-speaker-fleet-send",
                         daemon=True).start()

    def _send_cached(self, header: Dict[str, Any]) -> None:
        try:
            key, asker = str(header["k"]), str(header["f"])
            out = OutStream(self._send, self.to(asker), {"s": str(header["get"]), "k": key, "r": header["r"],
                                                         "f": self.device}, self.chunk_bytes)
            try:
                entry = self.cache.lookup(key) if self.cache is not None else None
                if entry is None:
                    return
                for chunk in self.cache.read(entry):  # type: ignore[union-attr]
                    out.write(chunk)
                out.commit()
                log.info("sent %s to %s (%d bytes)", key[:12], asker, out.size)
            except (CacheError, ValueError, OSError) as exc:
                log.warning("could not send %s to %s: %s", key[:12], asker, exc)
            finally:
                out.abort()
        finally:
            self._serving.release()

    # -- PeerAudio (the audio source's producer thread) -----------------------------------

    def elected(self, key: str, rate: int, broadcast: Broadcast) -> bool:
        order = self.order(key, rate, broadcast.scope)
        return order[0] == self.device and len(order) > 1  # alone: nobody to stream to

    def share(self, key: str, rate: int, broadcast: Optional[Broadcast], *,
              cue: Optional[StartCue] = None) -> PeerShare:
        header: Dict[str, Any] = {"s": self._new_id(), "k": key, "r": rate, "f": self.device}
        if broadcast is not None:
            header.update(b=broadcast.id, g=broadcast.scope)
        log.info("streaming %s to the fleet%s", key[:12], f" (broadcast {broadcast.id})" if broadcast else "")
        plan = None
        if cue is not None and broadcast is not None:
            def plan() -> float:  # at the first audio: the earliest plan known, else now + the lead
                return cue.propose(time.time() + self.sync_lead)
        return OutStream(self._send, self.audio_topic, header, self.chunk_bytes, plan=plan)

    def plan(self, key: str, rate: int, broadcast: Broadcast, cue: StartCue) -> None:
        if not self.sync or len(self.order(key, rate, broadcast.scope)) < 2:
            cue.skip()  # alone in the scope: nobody to be in step with
            return
        cue.expect(self.takeover)
        with self._cond:
            self._cues = [(k, c) for k, c in self._cues if not c.closed] + [(key, cue)]
            for k, at, received in self._plans:
                if k == key and received >= cue.since:  # an earlier broadcast's plan does not count
                    cue.propose(at)

    def receive(self, key: str, rate: int, *, broadcast: Optional[Broadcast],
                stopped: threading.Event) -> Iterator[bytes]:
        if broadcast is None:
            return self._fetch(key, rate, stopped)
        order = self.order(key, rate, broadcast.scope)
        if order[0] == self.device:
            raise PeerTurn(f"elected for broadcast {broadcast.id} among {len(order)}", share=len(order) > 1)
        return self._follow(key, order[:order.index(self.device)], stopped, share=True)

    def _fetch(self, key: str, rate: int, stopped: threading.Event) -> Iterator[bytes]:
        """Ask the fleet for a cached phrase; the first member that has it sends it."""
        if self.fetch_wait <= 0 or not self.online():
            raise PeerTurn("no other member online")
        rid = self._new_id()
        want = _Want(key)
        with self._cond:
            self._wants[rid] = want
        try:
            self._send(self.want_topic, json.dumps({"id": rid, "key": key, "rate": rate, "from": self.device}).encode())
            deadline = time.monotonic() + self.fetch_wait
            with self._cond:
                while want.holder is None and not stopped.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, POLL))
            if want.holder is None:
                raise PeerTurn(f"no member has {key[:12]} cached")
            self._send(self.to(want.holder), encode({"get": rid, "k": key, "r": rate, "f": self.device}))
            yield from self._follow(key, [want.holder], stopped, share=False, sid=rid)
        finally:
            with self._cond:
                self._wants.pop(rid, None)

    def _follow(self, key: str, ahead: List[str], stopped: threading.Event, *, share: bool,
                sid: Optional[str] = None) -> Iterator[bytes]:
        """Play `key` from whichever member streams it. Each member ahead of this one gets
        `takeover` seconds to start (or to go on) streaming; raises PeerTurn when none is left.
        After a switch to another stream, the bytes already played are skipped."""
        ahead = list(ahead)
        played = skip = pos = 0
        stream: Optional[InStream] = None
        waiting_since = time.monotonic()
        while True:
            data: List[bytes] = []
            with self._cond:
                while not data:
                    if stopped.is_set():
                        return
                    now = time.monotonic()
                    if stream is not None and stream.broken:
                        log.warning("the audio of %s from %s broke off after %d bytes", key[:12], stream.sender,
                                    stream.size)
                        ahead = [d for d in ahead if d != stream.sender]
                        stream, waiting_since = None, now
                    ahead = [d for d in ahead if self._is_online(d)]
                    if stream is None:
                        stream = self._find(key, sid)
                        if stream is not None:
                            pos, skip = 0, played
                            continue
                        if not ahead:
                            raise PeerTurn(f"nobody left to send {key[:12]}", share=share)
                        if now - waiting_since > self.takeover:
                            log.warning("no audio of %s from %s within %.1f s: the next one takes over",
                                        key[:12], ahead[0], self.takeover)
                            ahead.pop(0)
                            waiting_since = now
                            continue
                    elif pos < len(stream.chunks):
                        data = stream.chunks[pos:]
                        pos = len(stream.chunks)
                        break
                    elif stream.done:
                        return
                    elif now - stream.last > self.takeover or self._online.get(stream.sender) is False:
                        stream.fail()  # silent, or gone (its will said `offline`): the next one takes over
                        continue
                    self._cond.wait(POLL)
            for chunk in data:
                if skip:
                    chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                if chunk:
                    played += len(chunk)
                    yield chunk

    def _find(self, key: str, sid: Optional[str]) -> Optional[InStream]:
        """The stream to play: the one asked for, or the oldest healthy one of `key`."""
        if sid is not None:
            stream = self._streams.get(sid)
            return None if stream is None or stream.broken else stream
        found = [s for s in self._streams.values() if s.key == key and not s.broken]
        return max(found, key=lambda s: s.size) if found else None
