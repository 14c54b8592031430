"""The speaker: shaping around a player, the cancel token, and what runs after the first chunk."""

from __future__ import annotations

from typing import Iterable, List

from coze_speaker.cancel import CancelToken
from coze_speaker.sound.player import NullPlayer, Player
from coze_speaker.sound.speaker import Speaker


class InlinePlayer(Player):
    """A device that takes each chunk in the caller's thread, so the order is observable."""

    name = "inline"

    def __init__(self) -> None:
        super().__init__()
        self.received: List[bytes] = []

    def play(self, chunks: Iterable[bytes], rate: int) -> bool:
        self._begin()
        for chunk in chunks:
            self.received.append(chunk)
        return True


def test_work_after_the_first_audio_runs_only_once_the_device_has_the_chunk():
    player = InlinePlayer()
    seen: List[int] = []
    speaker = Speaker(player, rate=24000)
    result = speaker.play(iter([b"\1\0" * 10, b"\2\0" * 10, b"\3\0" * 10]), token=CancelToken(),
                          after_first_audio=lambda: seen.append(len(player.received)))
    assert result.played and result.first_audio is not None
    assert seen == [1]  # called once, after the first chunk reached the device, before the second


def test_a_cancelled_token_plays_nothing_and_reports_not_played():
    player = NullPlayer()
    token = CancelToken()
    token.cancel("stopped")
    result = Speaker(player, rate=24000).play(iter([b"\1\0" * 100]), token=token)
    assert result.played is False and player.bytes_played == 0


def test_cancelling_mid_stream_stops_the_device():
    player = NullPlayer()
    token = CancelToken()

    def chunks():
        yield b"\1\0" * 100
        token.cancel("interrupted by x")
        yield b"\2\0" * 100

    result = Speaker(player, rate=24000).play(chunks(), token=token)
    assert result.played is False and token.reason == "interrupted by x"
    assert player.bytes_played <= 200
