"""The cancel token: one flag and one deadline that every stage of an announcement obeys."""

from __future__ import annotations

import threading

from coze_speaker.cancel import CancelToken


def test_first_reason_wins_and_callbacks_run_once():
    calls = []
    token = CancelToken()
    token.on_cancel(lambda: calls.append("a"))
    unregister = token.on_cancel(lambda: calls.append("b"))
    unregister()
    assert token.cancel("interrupted by x") is True
    assert token.cancel("stopped") is False
    assert token.cancelled and token.reason == "interrupted by x"
    assert calls == ["a"]
    token.on_cancel(lambda: calls.append("late"))  # already cancelled: runs at once
    assert calls == ["a", "late"]


def test_deadline_by_the_injected_clock():
    now = [100.0]
    token = CancelToken(105.0, clock=lambda: now[0])
    assert token.remaining() == 5.0 and not token.expired()
    now[0] = 106.0
    assert token.expired() and not token.cancelled
    assert CancelToken().remaining() is None and not CancelToken().expired()


def test_wait_returns_as_soon_as_it_is_cancelled():
    token = CancelToken()
    threading.Timer(0.01, token.cancel).start()
    assert token.wait(30) is True
