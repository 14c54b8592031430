"""The one place that turns a Config into working parts, for the daemon, the CLI and doctor.

`say`, `cache warm` and the daemon speak through the same cache, Coze client, cost guard
and fallback voice, built here, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

from ..cache import PhraseCache
from ..config import Config
from ..coze import CozeClient
from ..mqtt.retained import RetainedTopics
from ..mqtt.fleet import Fleet
from ..queue.state import device_file
from ..sound.devices import probe_via, resolve_sample_rate
from ..sound.players import Player, make_player
from ..sound.shaping import Chimes
from ..sound.speaker import Speaker
from ..vocabulary import DEFAULT_PLAY_RATE
from ..voice.breaker import PROBE_TIMEOUT, CircuitBreaker, VoiceListProbe
from ..voice.costguard import CostGuard
from ..voice.fallback import EspeakFallback, make_fallback
from ..voice.request import RequestBuilder
from ..voice.source import AudioSource

if TYPE_CHECKING:
    from ..voice.voices import VoiceCatalog

log = logging.getLogger(__name__)


def coze_client(config: Config) -> Optional[CozeClient]:
    """The Coze client, or None when no token is configured."""
    return CozeClient.from_config(config.coze) if config.coze.token else None


def coze_breaker(config: Config, client: Optional[CozeClient]) -> Optional[CircuitBreaker]:
    """The breaker that lets announcements skip Coze while it is down (None when disabled or
    without a client). Its probe has a client of its own: one attempt, a short timeout."""
    coze = config.coze
    if client is None or not coze.breaker_cooldown:
        return None
    probe = CozeClient(coze.token, coze.base_url, timeout=min(coze.timeout, PROBE_TIMEOUT), retries=0)
    return CircuitBreaker(coze.breaker_cooldown, probe=VoiceListProbe(probe))


def voice_catalog(config: Config) -> "Optional[VoiceCatalog]":
    """The account's voice list, saved in `voices-<device_id>.json` in the state dir and kept
    fresh in the background (None without a token). Its client is its own: one retry, the
    synthesis client's session stays with the synthesis threads."""
    from ..voice.voices import VoiceCatalog  # only for the front ends that list voices

    coze = config.coze
    if not coze.token:
        return None
    client = CozeClient(coze.token, coze.base_url, timeout=coze.timeout, retries=1)
    return VoiceCatalog(client, device_file(config.state.dir, "voices", config.mqtt.device_id))


def open_cache(config: Config) -> PhraseCache:
    return PhraseCache(config.cache.dir, int(config.cache.max_size_mb * 1024 * 1024))


def spending_file(config: Config) -> Path:
    """Where the spending caps count: `spending-<device_id>.json` in the state dir, so they
    outlive a restart and the daemon, `say` and `cache warm` of one speaker share them."""
    return device_file(config.state.dir, "spending", config.mqtt.device_id)


def retained_topics(config: Config) -> RetainedTopics:
    """Where the front end remembers its retained topics, to clear them once unused:
    `retained-<12 hex digits of the config file's path>.json` in the state dir, per config
    file and not per device id (the device id is what changes)."""
    source = str(config.source.resolve()) if config.source is not None else ""
    key = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return RetainedTopics(config.state.dir / f"retained-{key}.json")


def cost_guard(config: Config, previous: Optional[CostGuard] = None) -> CostGuard:
    """The spending caps; a reload keeps the counts of the previous guard."""
    limits = config.limits
    if previous is not None:
        previous.max_requests_per_hour = limits.max_requests_per_hour
        previous.max_chars_per_day = limits.max_chars_per_day
        previous.path = spending_file(config)
        return previous
    return CostGuard(limits.max_requests_per_hour, limits.max_chars_per_day, path=spending_file(config))


def play_rate(config: Config, *, for_file: bool = False) -> int:
    """The rate audio is requested and played at: the device's native one for `auto`."""
    if config.audio.sample_rate == "auto" and for_file:
        return DEFAULT_PLAY_RATE
    return resolve_sample_rate(config.audio.sample_rate, config.audio.device, via=probe_via(config.audio.backend))


@dataclass
class Voice:
    """Everything that produces speech audio: cache, Coze, caps, offline voice."""

    rate: int
    client: Optional[CozeClient]
    cache: PhraseCache
    guard: CostGuard
    fallback: Optional[EspeakFallback]
    source: AudioSource
    requests: RequestBuilder
    #: the other speakers of the fleet (the daemon's only; None when fleet.enabled is false)
    fleet: Optional[Fleet] = None

    def close(self) -> None:
        if self.source.breaker is not None:
            self.source.breaker.close()
        self.cache.close()
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> "Voice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transport(config: Config, *, plays: bool = True) -> str:
    """How a miss is fetched: `coze.transport`, except that `auto` means HTTP for what is not
    played (`cache warm`: nobody waits for its first audio, and HTTP has the fewest unknowns)."""
    chosen = config.coze.transport
    return "http" if chosen == "auto" and not plays else chosen


def _warn_if_coze_is_not_set_up(config: Config, client: Optional[CozeClient],
                                 fallback: Optional[EspeakFallback]) -> None:
    """The loud hint of a first run: what speaks instead of Coze, and how to set Coze up."""
    missing = [what for what, absent in (("NO COZE TOKEN", client is None),
                                         ("NO COZE VOICE", not config.coze.voice_id)) if absent]
    if not missing:
        return
    speaks = ("the offline voice (espeak-ng) speaks everything that is not cached" if fallback else
              "only phrases already in the cache can be spoken (fallback.engine: espeak-ng would speak the rest)")
    log.warning("%s: %s. To speak with Coze, set coze.token (or coze.token_file, or export COZE_API_TOKEN=pat_...) "
                "and coze.voice_id (`coze-speaker voices` lists them) in %s", " and ".join(missing), speaks,
                config.source or "config.yaml (cp config.example.yaml config.yaml)")


def build_voice(config: Config, *, rate: int, guard: Optional[CostGuard] = None,
                warn_without_token: bool = False, offline_voice: bool = True, plays: bool = True,
                fleet: bool = False) -> Voice:
    """The audio source and its parts; closes what it built if a later part fails.
    Without offline_voice (`cache warm`), a phrase Coze cannot speak fails instead. Without
    plays (`cache warm` again), misses are fetched for the cache only: `auto` goes over HTTP
    and first_sentence_first (an extra request for earlier sound) is off. With `fleet` (the
    daemon), the other speakers on the base topic are a source too."""
    fallback = make_fallback(config.fallback_engine(), config.fallback.voice) if offline_voice else None
    client = coze_client(config)
    if warn_without_token:
        _warn_if_coze_is_not_set_up(config, client, fallback)
    try:
        cache = open_cache(config)
    except BaseException:
        if client is not None:
            client.close()
        raise
    guard = cost_guard(config, guard)
    peers = Fleet(config, cache, rate) if fleet and config.fleet.enabled else None
    source = AudioSource(client, cache, guard=guard, fallback=fallback, host=urlsplit(config.coze.base_url).netloc,
                         breaker=coze_breaker(config, client), transport=transport(config, plays=plays),
                         first_sentence_first=plays and config.coze.first_sentence_first, peers=peers)
    return Voice(rate, client, cache, guard, fallback, source,
                 RequestBuilder(config, rate, offline=fallback is not None), peers)


@dataclass
class Sound:
    """The player and the shaping around it."""

    player: Player
    speaker: Speaker
    chimes: Chimes
    owned: bool

    def close(self) -> None:
        if self.owned:
            self.player.close()


def build_sound(config: Config, *, rate: int, player: Optional[Player] = None,
                device_retries: bool = True) -> Sound:
    """The player and speaker. The daemon passes device_retries=False: there the queue worker
    is the one place that retries a busy device (within the announcement's TTL); `say` has no
    queue, so its player makes a few quick attempts itself."""
    audio = config.audio
    owned = player is None
    player = player or make_player(audio.backend, audio.device, keep_open=audio.keep_open, wake_ms=audio.wake_ms,
                                   **({} if device_retries else {"retries": 1}))
    return Sound(player, Speaker(player, rate=rate),
                 Chimes(audio.chime, audio.chimes_dir, rate), owned)
