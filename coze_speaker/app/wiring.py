"""The one place that turns a Config into working parts, for the daemon, the CLI and doctor.

`say`, `cache warm` and the daemon speak through the same cache, Coze client, cost guard
and fallback voice, built here, so they cannot drift apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from ..cache import PhraseCache
from ..config import Config
from ..coze import CozeClient
from ..sound.devices import resolve_sample_rate
from ..sound.players import Player, make_player
from ..sound.shaping import Chimes
from ..sound.speaker import Speaker
from ..vocabulary import DEFAULT_PLAY_RATE
from ..voice.costguard import CostGuard
from ..voice.fallback import EspeakFallback, make_fallback
from ..voice.request import RequestBuilder
from ..voice.source import AudioSource

log = logging.getLogger(__name__)


def coze_client(config: Config) -> Optional[CozeClient]:
    """The Coze client, or None when no token is configured."""
    return CozeClient.from_config(config.coze) if config.coze.token else None


def open_cache(config: Config) -> PhraseCache:
    return PhraseCache(config.cache.dir, int(config.cache.max_size_mb * 1024 * 1024))


def cost_guard(config: Config, previous: Optional[CostGuard] = None) -> CostGuard:
    """The spending caps; a reload keeps the counts of the previous guard."""
    limits = config.limits
    if previous is not None:
        previous.max_requests_per_hour = limits.max_requests_per_hour
        previous.max_chars_per_day = limits.max_chars_per_day
        return previous
    return CostGuard(limits.max_requests_per_hour, limits.max_chars_per_day)


def play_rate(config: Config, *, for_file: bool = False) -> int:
    """The rate audio is requested and played at: the device's native one for `auto`."""
    if config.audio.sample_rate == "auto" and for_file:
        return DEFAULT_PLAY_RATE
    return resolve_sample_rate(config.audio.sample_rate, config.audio.device)


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

    def close(self) -> None:
        self.cache.close()
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> "Voice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
                warn_without_token: bool = False, offline_voice: bool = True) -> Voice:
    """The audio source and its parts; closes what it built if a later part fails.
    Without offline_voice (`cache warm`), a phrase Coze cannot speak fails instead."""
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
    source = AudioSource(client, cache, guard=guard, fallback=fallback, host=urlsplit(config.coze.base_url).netloc)
    return Voice(rate, client, cache, guard, fallback, source,
                 RequestBuilder(config, rate, offline=fallback is not None))


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
    player = player or make_player(audio.backend, audio.device, **({} if device_retries else {"retries": 1}))
    return Sound(player, Speaker(player, rate=rate, preroll_ms=audio.preroll_ms),
                 Chimes(audio.chime, audio.chimes_dir, rate), owned)
