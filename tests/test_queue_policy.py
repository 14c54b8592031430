"""The queue's rules as plain code: no broker, no sound device, a fake clock; milliseconds."""

from __future__ import annotations

import datetime as dt

import pytest

from coze_speaker.queue.announcement import Announcement
from coze_speaker.queue.policy import DUPLICATE, QueuePolicy, QueueSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**settings) -> tuple:
    clock = Clock()
    wall = {"now": dt.datetime(2026, 11, 30, 12, 0)}
    p = QueuePolicy(QueueSettings(**settings), clock, lambda: wall["now"])
    return p, clock, wall


def offer(p: QueuePolicy, text: str, **fields):
    ann = p.with_deadline(Announcement(text=text, id=fields.pop("id", text), received=p.clock(), **fields))
    return p.offer(ann)


def order(p: QueuePolicy) -> list:
    return [a.id for a in p.waiting()]


def test_priority_then_arrival_and_urgent_first():
    p, _, _ = policy()
    offer(p, "a")
    offer(p, "b", priority="low")
    offer(p, "c", priority="high")
    offer(p, "d", interrupt=True)
    offer(p, "e", priority="critical")
    offer(p, "f")
    assert order(p) == ["e", "d", "c", "a", "f", "b"]


def test_the_playing_one_is_taken_out_and_an_urgent_one_interrupts_it():
    p, _, _ = policy()
    offer(p, "a")
    assert p.next_to_play().id == "a" and p.playing.id == "a"
    assert p.next_to_play() is None  # one at a time
    assert offer(p, "normal").interrupt is False
    assert offer(p, "now", interrupt=True).interrupt is True
    assert p.done().id == "a" and p.playing is None
    assert p.next_to_play().id == "now"


def test_dedup_within_the_window_and_by_id_while_pending():
    p, clock, _ = policy(dedup_seconds=10)
    assert offer(p, "doorbell", id="1").accepted
    refused = offer(p, "doorbell", id="2")
    assert not refused.accepted and refused.reason == "dedup"
    clock.now += 11
    assert offer(p, "doorbell", id="3").accepted  # outside the window: a new press
    assert offer(p, "other text", id="1").reason == DUPLICATE  # same id while it is pending


def test_a_copy_is_coalesced_only_while_the_first_is_queued_or_playing():
    """A doorbell pressed twice is spoken twice once the first has ended (issue 10, item 20)."""
    p, clock, _ = policy(dedup_seconds=10)
    assert offer(p, "doorbell", id="1").accepted
    assert p.next_to_play().id == "1"
    clock.now += 1
    assert offer(p, "doorbell", id="2").reason == "dedup"  # while it plays
    assert p.done().id == "1"
    clock.now += 1
    assert offer(p, "doorbell", id="3").accepted  # 2 s after the first arrived, but it has ended
    assert [a.id for a in p.clear()] == ["3"]
    assert offer(p, "doorbell", id="4").accepted  # a stop emptied the queue: nothing to coalesce with
    assert [a.id for a in p.take_expired()] == []
    clock.now += 400
    assert [a.id for a in p.take_expired()] == ["4"]
    assert offer(p, "doorbell", id="5").accepted


def test_a_redelivery_of_an_ended_id_is_coalesced_for_the_session_expiry():
    """The broker sends a message again (DUP) when our acknowledgement was lost: after the
    first copy ended it is still the same announcement, for as long as the broker may hold it
    (queue.ttl, the session expiry). A new message (no DUP) reusing an id is spoken again."""
    p, clock, _ = policy(dedup_seconds=0, ttl=300)
    assert offer(p, "door open", id="x").accepted
    assert p.next_to_play().id == "x"
    assert p.done().id == "x"
    clock.now += 299
    assert p.offer(p.with_deadline(Announcement(text="door open", id="x", received=clock.now)),
                   redelivery=True).reason == DUPLICATE
    assert offer(p, "door open", id="x").accepted  # the same id in a new message
    p.clear()
    clock.now += 301
    assert p.offer(p.with_deadline(Announcement(text="door open", id="x", received=clock.now)),
                   redelivery=True).accepted  # longer ago than any session keeps it


def test_restored_announcements_are_not_coalesced_by_text_but_by_id():
    p, _, _ = policy(dedup_seconds=10)
    first, second = (p.with_deadline(Announcement(text="same", id=i, received=p.clock())) for i in ("a", "b"))
    assert p.offer(first, coalesce=False).accepted and p.offer(second, coalesce=False).accepted
    assert p.offer(first, coalesce=False).reason == DUPLICATE


def test_dedup_off():
    p, _, _ = policy(dedup_seconds=0)
    assert offer(p, "x", id="1").accepted and offer(p, "x", id="2").accepted


def test_overflow_evicts_the_lowest_latest_or_refuses_the_newcomer():
    p, _, _ = policy(max_length=2, dedup_seconds=0)
    offer(p, "n1")
    offer(p, "low", priority="low")
    admission = offer(p, "h", priority="high")
    assert admission.accepted and admission.evicted.id == "low"
    refused = offer(p, "low2", priority="low")
    assert not refused.accepted and refused.reason == "queue_full"
    assert order(p) == ["h", "n1"]


def test_expiry_by_the_injected_clock():
    p, clock, _ = policy(ttl=60)
    offer(p, "short", ttl=5)
    offer(p, "default")
    clock.now += 6
    assert [a.id for a in p.take_expired()] == ["short"]
    assert order(p) == ["default"]
    assert p.next_deadline_in(cap=100) == pytest.approx(54)
    clock.now += 55
    assert [a.id for a in p.take_expired()] == ["default"]
    assert p.next_deadline_in() == 30.0  # nothing waits: the cap


def test_an_expired_announcement_is_refused_at_the_door():
    p, clock, _ = policy()
    ann = Announcement(text="late", received=clock.now - 10, ttl=5)
    admission = p.offer(p.with_deadline(ann))
    assert not admission.accepted and admission.reason == "expired"


def test_quiet_hours_hold_low_priority_and_cap_the_volume():
    p, _, wall = policy(quiet_start=dt.time(22), quiet_end=dt.time(7), quiet_volume=20, quiet_min_priority="high")
    wall["now"] = dt.datetime(2026, 11, 30, 23, 30)
    offer(p, "normal")
    offer(p, "urgent", priority="high")
    assert p.next_to_play().id == "urgent"
    p.done()
    assert p.next_to_play() is None  # "normal" is held
    assert p.volume_for(Announcement(text="x", volume=80), 100) == 20
    wall["now"] = dt.datetime(2026, 12, 1, 7, 0)
    assert p.next_to_play().id == "normal"
    assert p.volume_for(Announcement(text="x"), 90) == 90


def test_requeue_puts_it_back_in_its_place_and_pending_lists_the_playing_one_first():
    p, _, _ = policy(dedup_seconds=0)
    offer(p, "a")
    offer(p, "b", priority="low")
    playing = p.next_to_play()
    offer(p, "c")
    assert [a.id for a in p.pending()] == ["a", "c", "b"]
    p.requeue(playing)
    assert p.playing is None and order(p) == ["c", "a", "b"]  # same priority: behind the earlier arrival
    assert [a.id for a in p.clear()] == ["c", "a", "b"] and len(p) == 0
