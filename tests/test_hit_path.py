"""A cache hit's path to the device: read in the player's own thread, no thread started.

The announcement whose every piece is in the cache needs nothing that can block, so its
audio is read by the thread that writes to the device: no producer thread, no player-source
thread and no timer thread is started for it (each start makes the caller wait for the new
thread to be scheduled, and each hand-off wakes another thread: milliseconds on a busy Pi).
Real parts: the fake Coze over HTTP, a real phrase cache, the in-process alsa player into the
hermetic ALSA file sink. Thread starts are observed by wrapping threading.Thread.start; no
timing is asserted.
"""

from __future__ import annotations

import threading
from typing import List

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from conftest import TOKEN, VOICE
from fake_coze import FakeCoze

from coze_speaker.cache import PhraseCache
from coze_speaker.cancel import CancelToken
from coze_speaker.coze import CozeClient, SpeechParams
from coze_speaker.queue.deadline import EXPIRED, DeadlineWatch
from coze_speaker.sound.player import NullPlayer
from coze_speaker.sound.speaker import Speaker
from coze_speaker.voice.request import SpeechRequest
from coze_speaker.voice.source import AudioSource

RATE = 24000
SPEECH = "/v1/audio/speech"
SHORT = "The washing machine has finished."


def request(text: str = SHORT) -> SpeechRequest:
    return SpeechRequest.build(text, SpeechParams(VOICE, sample_rate=RATE))


def long_text() -> str:
    """A text of three pieces (Coze takes 1024 bytes a request)."""
    sentence = "Sentence number {} of a long notice about the building's heating schedule. "
    text = "".join(sentence.format(i) for i in range(36))
    assert len(request(text).pieces) >= 3
    return text


@pytest.fixture
def source(fake_coze, tmp_path):
    client = CozeClient(TOKEN, fake_coze.url, retries=1, timeout=5, backoff=0.01)
    src = AudioSource(client, PhraseCache(tmp_path / "cache", 10**9))
    yield src
    client.close()
    assert src.cache is not None
    src.cache.close()


@pytest.fixture
def started(monkeypatch) -> List[str]:
    """Names of the threads started from now on."""
    names: List[str] = []
    original = threading.Thread.start

    def start(self, *a, **kw):
        names.append(self.name)
        return original(self, *a, **kw)
    monkeypatch.setattr(threading.Thread, "start", start)
    return names


def warm(source: AudioSource, req: SpeechRequest) -> bytes:
    speech = source.open(req)
    audio = b"".join(speech)
    speech.join(5)
    assert speech.api_calls == len(req.pieces)
    return audio


def speak(source: AudioSource, req: SpeechRequest, player, token=None) -> tuple:
    token = token or CancelToken()
    speech = source.open(req, start=False, token=token)
    local = speech.local
    result = Speaker(player, rate=RATE).play(speech, token=token, ready=local)
    return speech, local, result


def test_a_cached_phrase_is_read_in_the_players_thread_and_starts_no_thread(source, alsa_sink, started):
    from coze_speaker.sound.alsa_player import AlsaPlayer

    pytest.importorskip("alsaaudio")
    req = request()
    audio = warm(source, req)
    started.clear()
    player = AlsaPlayer("default", retries=1)
    speech, local, result = speak(source, req, player)
    player.close()
    assert local and result.played
    assert started == [], f"threads started on a cache hit's path: {started}"
    assert speech.cache_hits == 1 and speech.api_calls == 0 and speech.cached
    assert alsa_sink.settle() == audio  # byte for byte what the cache holds


def test_every_piece_of_a_long_cached_announcement_plays_in_order_without_a_thread(source, started):
    req = request(long_text())
    audio = warm(source, req)
    assert source.cache is not None
    before = source.cache.stats()
    started.clear()
    player = NullPlayer()
    speech, local, result = speak(source, req, player)
    assert local and result.played and started == []
    assert speech.cache_hits == len(req.pieces) and speech.api_calls == 0
    assert player.bytes_played == len(audio)
    after = source.cache.stats()  # each piece counted once, as a hit, once its sound was out
    assert (after.hits - before.hits, after.misses - before.misses) == (len(req.pieces), 0)


def test_a_miss_is_still_produced_in_the_background(source, fake_coze, started):
    req = request("A phrase nobody asked for before.")
    player = NullPlayer()
    speech, local, result = speak(source, req, player)
    assert not local and result.played
    assert "coze-speaker-synth" in started and "player-source" in started
    assert speech.api_calls == 1 and len(fake_coze.requests_to(SPEECH)) == 1


def test_a_piece_evicted_after_the_check_is_produced_and_nothing_is_lost(source, fake_coze):
    """Another process evicts the second piece between the check and its read: the first
    piece has played from the cache; the second is asked of Coze, from where it stopped."""
    req = request(long_text())
    audio = warm(source, req)
    speech = source.open(req, start=False)
    assert speech.local
    assert source.cache is not None
    played = []
    for n, chunk in enumerate(speech):
        if n == 0:  # the first piece is being read: another process evicts the second
            source.cache.entry_path(source.key(req.pieces[1], req)).unlink()  # as `cache prune` in another process does
        played.append(chunk)
    speech.join(5)
    assert b"".join(played) == audio
    assert speech.api_calls == 1 and speech.cache_hits == len(req.pieces) - 1
    stats = source.cache.stats()  # the warm-up's misses, one per piece, and the evicted one's
    assert stats.misses == len(req.pieces) + 1
    assert len(fake_coze.requests_to(SPEECH)) == len(req.pieces) + 1


def test_stop_while_a_cached_phrase_plays_ends_it_at_once(source):
    """The token cancelled by another thread mid-play (a `stop` command): the play ends and
    the cache read ends with it, in the player's thread."""
    req = request(long_text())
    warm(source, req)
    token = CancelToken()
    player = NullPlayer(realtime=True, buffer=0.05)  # paced like a device: the play takes seconds
    sounding = threading.Event()
    original = player._next

    def next_chunk(source_, check=None):
        if player.bytes_played:
            sounding.set()
        return original(source_, check)
    player._next = next_chunk  # type: ignore[method-assign]
    stopper = threading.Thread(target=lambda: sounding.wait(10) and token.cancel("stopped"))
    stopper.start()
    speech, local, result = speak(source, req, player, token=token)
    stopper.join(10)
    assert sounding.is_set() and local
    assert not result.played and player.stopped
    assert player.bytes_played < len(b"".join(FakeCoze.pcm_for(p, VOICE, RATE) for p in req.pieces))


# ----------------------------------------------------------------------------- the deadline


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_deadline_watch_cancels_a_token_whose_deadline_passed():
    watch = DeadlineWatch()
    token = CancelToken(deadline=0.0, clock=Clock())  # its deadline is now
    watch.arm(token)
    assert token.wait(10), "not cancelled at its deadline"
    assert token.reason == EXPIRED
    watch.close()


def test_a_disarmed_token_is_never_cancelled_and_the_next_one_is_watched():
    clock = Clock()
    watch = DeadlineWatch()
    first = CancelToken(deadline=0.05, clock=clock)
    watch.arm(first)()  # armed, then its sound started at once
    clock.now = 100.0  # long past its deadline
    second = CancelToken(deadline=100.0, clock=clock)
    watch.arm(second)
    assert second.wait(10) and second.reason == EXPIRED
    assert not first.cancelled
    watch.close()


def test_no_deadline_no_watch_thread(started):
    watch = DeadlineWatch()
    watch.arm(CancelToken())()  # no deadline: nothing to watch
    assert "coze-speaker-deadline" not in started
    token = CancelToken(deadline=1000.0, clock=Clock())
    watch.arm(token)
    watch.arm(CancelToken(deadline=1000.0, clock=Clock()))
    assert started.count("coze-speaker-deadline") == 1  # one thread for the queue's life
    watch.close()
    assert not token.cancelled
