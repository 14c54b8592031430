"""Fault suite, the queue journal: a damaged or foreign journal never stops the start, and
intake costs the same per message whatever the queue's length.

Real mosquitto, the fake Coze, real aplay into the ALSA file sink, the daemon in-process;
the journal's own cases read and write a real file.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from test_daemon import EVENT, SAY, D, slow_audio, start_daemon  # noqa: F401  (start_daemon is a fixture)

from coze_speaker.queue.announcement import Announcement
from coze_speaker.queue.journal import Journal
from coze_speaker.queue.policy import QueuePolicy, QueueSettings


def entry(ident, text, **fields):
    return {"text": text, "id": ident, "deadline_wall": time.time() + 300, **fields}


def write_journal(state_dir, entries, *, legacy=False):
    """A journal as the last run (or an earlier version, `legacy`: a JSON list) left it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if legacy:
        path = state_dir / f"queue-{D}.json"
        path.write_text(json.dumps(entries))
    else:
        path = state_dir / f"queue-{D}.jsonl"
        path.write_text("".join(json.dumps({"op": "add", "entry": e}) + "\n" for e in entries))
    return path


def failed_on(probe, field):
    return [e for e in probe.events(EVENT, event="failed") if (e.get("error") or {}).get("field") == field]


# -- a bad entry is one failed announcement, not a restart loop --------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["jsonl", "earlier-versions-list"])
def test_a_bad_journal_entry_fails_naming_the_field_and_the_others_are_spoken(start_daemon, probe, tmp_path,
                                                                               legacy):
    """priority "urgent", chime 5 and a list id crashed every start (and lost the good entries)."""
    state = tmp_path / "state"
    write_journal(state, [
        entry("good1", "The first good one"),
        entry("bad-priority", "An unknown priority", priority="urgent"),
        entry("good2", "The second good one"),
        entry("bad-chime", "A chime that is a number", chime=5),
        entry(["a", "list"], "An id that is a list"),
    ], legacy=legacy)
    r = start_daemon()
    assert probe.wait_event(EVENT, id="good1", event="finished", timeout=30)
    assert probe.wait_event(EVENT, id="good2", event="finished", timeout=30)
    priority = probe.wait_event(EVENT, id="bad-priority", event="failed")
    assert priority["error"]["field"] == "priority" and "urgent" in priority["error"]["message"]
    assert probe.wait_event(EVENT, id="bad-chime", event="failed")["error"]["field"] == "chime"
    listed = probe.wait_for(lambda _: failed_on(probe, "id"))
    assert listed[0]["text"] == "An id that is a list"
    assert probe.events(EVENT, event="started", id="bad-priority") == []
    assert r.thread.is_alive() and r.daemon.worker.alive
    # the start rewrote the journal: the refused entries are gone, the earlier format too
    assert not (state / f"queue-{D}.json").exists()
    assert Journal(state / f"queue-{D}.jsonl").load() == ([], [], [])


def add_line(ident, text):
    return (json.dumps({"op": "add", "entry": entry(ident, text)}) + "\n").encode()


# The contents are made when the test runs, not when it is collected: their deadlines are
# 300 s ahead, and a slow machine (arm64 under qemu) reaches a test more than 300 s after
# collecting it (then the entries were restored `expired`, as they should be).
@pytest.mark.parametrize("content, kept", [
    (lambda: b"\x00\xff\xfe not json at all \x80\n" * 3, []),
    (lambda: add_line("g1", "Before the garbage") + b"\x00\xff\xfe not json \x80\n"
     + add_line("g2", "After the garbage"), ["g1", "g2"]),
    (lambda: add_line("g1", "Before the torn line") + add_line("g2", "Cut short by a power cut")[:40], ["g1"]),
], ids=["binary", "garbage-line", "torn-last-line"])
def test_a_journal_that_is_not_json_does_not_stop_the_start(start_daemon, probe, tmp_path, content, kept):
    state = tmp_path / "state"
    state.mkdir()
    (state / f"queue-{D}.jsonl").write_bytes(content())
    start_daemon()
    for ident in kept:
        assert probe.wait_event(EVENT, id=ident, event="finished", timeout=30)
    probe.publish(SAY, {"text": "still speaking", "id": "after"})
    assert probe.wait_event(EVENT, id="after", event="finished", timeout=30)
    assert [e["id"] for e in probe.events(EVENT, event="finished")] == [*kept, "after"]


# -- the file: torn lines, compaction -----------------------------------------------------------

def ann(n, **fields):
    return Announcement(text=f"announcement number {n}", id=f"a{n}", deadline=time.monotonic() + 300, **fields)


def test_a_torn_last_line_is_ignored_and_the_next_append_reads_whole(tmp_path):
    """A power cut in the middle of an append leaves half a line; the entries before it are
    restored, and the next run's first append does not glue itself to the torn half."""
    path = tmp_path / "queue.jsonl"
    journal = Journal(path)
    journal.add(ann(1))
    journal.add(ann(2, priority="high"))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 25)  # the second line, cut short
    assert [a.id for a in Journal(path).load().valid] == ["a1"]
    after = Journal(path)
    after.add(ann(3))
    valid, expired, refused = Journal(path).load()
    assert [a.id for a in valid] == ["a1", "a3"] and expired == [] and refused == []


def test_compaction_keeps_live_entries_in_order(tmp_path):
    path = tmp_path / "queue.jsonl"
    journal = Journal(path)
    journal.write([])  # as at start: the whole file is this journal's
    for n in range(300):
        journal.add(ann(n, priority="high" if n % 7 == 0 else "normal", volume=n % 100))
    appended = path.stat().st_size
    live = [n for n in range(300) if n % 6 == 0]
    journal.done([f"a{n}" for n in range(300) if n % 6])
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(live) and path.stat().st_size < appended  # rewritten with the live ones only
    valid, expired, refused = Journal(path).load()
    assert [a.id for a in valid] == [f"a{n}" for n in live] and expired == [] and refused == []
    assert [(a.priority, a.volume) for a in valid] == [("high" if n % 7 == 0 else "normal", n % 100) for n in live]
    journal.add(ann(1000))
    journal.done(["a0"])
    assert [a.id for a in Journal(path).load().valid] == [f"a{n}" for n in live[1:]] + ["a1000"]


# -- intake is O(1) per message ---------------------------------------------------------------

def journal_bytes(state, before):
    """Bytes written to the journal since the `before` stat: the growth of the same file, or
    the whole new file when it was replaced (the journal is the state dir's queue file,
    whatever its format)."""
    after = next(state.glob(f"queue-{D}.json*")).stat()
    if before is None or after.st_ino != before.st_ino:
        return after.st_size, after
    return after.st_size - before.st_size, after


def test_intake_writes_the_same_bytes_per_message_at_10_and_at_2000_queued(start_daemon, probe, fake_coze,
                                                                            tmp_path):
    """The whole journal was rewritten for every message: 6 000 queued messages took about a
    minute. Measured in bytes written to the file, not in time."""
    start_daemon(queue={"max_length": 2100, "ttl": 600})
    state = tmp_path / "state"
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "A slow first announcement that holds the queue while the rest waits.",
                        "id": "head"})
    probe.wait_event(EVENT, id="head", event="started")

    def cost_of(first, count):
        written = []
        _, before = journal_bytes(state, None)
        for n in range(first, first + count):
            probe.publish(SAY, {"text": f"queued number {n:05d}", "id": f"q{n:05d}"})
            probe.wait_event(EVENT, id=f"q{n:05d}", event="queued")
            size, before = journal_bytes(state, before)
            written.append(size)
        return sorted(written)[count // 2]

    early = cost_of(0, 10)
    for n in range(10, 2000):
        probe.publish(SAY, {"text": f"queued number {n:05d}", "id": f"q{n:05d}"})
    probe.wait_event(EVENT, id="q01999", event="queued", timeout=120)
    late = cost_of(2000, 10)
    assert 0 < early < 1000 and late <= early + 16, (early, late)
    assert probe.events(EVENT, event="dropped") == []


class Counted(Announcement):
    """An announcement that counts every attribute read: how many queued ones a step touches."""

    reads = 0

    def __getattribute__(self, name):
        if not name.startswith("__"):
            Counted.reads += 1
        return super().__getattribute__(name)


def test_the_queue_touches_a_constant_number_of_announcements_per_message():
    """Offering one more and the sweeper's wake-up (expire, next deadline) read only the new
    one and the nearest deadline, not the whole queue (it was sorted and scanned per message)."""
    policy = QueuePolicy(QueueSettings(max_length=5000, dedup_seconds=10))

    def offer(n):
        policy.offer(policy.with_deadline(Counted(text=f"queued number {n}", id=f"q{n}", received=time.monotonic())))
        policy.take_expired()
        policy.next_deadline_in()

    def reads_for(first, count):
        Counted.reads = 0
        for n in range(first, first + count):
            offer(n)
        return Counted.reads

    for n in range(10):
        offer(n)
    early = reads_for(10, 20)
    for n in range(30, 2000):
        offer(n)
    late = reads_for(2000, 20)
    assert late <= early + 20, (early, late)
    assert len(policy) == 2020 and [a.id for a in policy.waiting()[:3]] == ["q0", "q1", "q2"]


# -- queued means durable: one fdatasync per batch ----------------------------------------------

def test_sync_covers_every_line_appended_since_the_last_one(tmp_path):
    """Group commit: appends are only written; one sync makes all of them durable; done lines
    do not ask for one (losing one only replays an announcement within its TTL)."""
    journal = Journal(tmp_path / "queue.jsonl")
    for n in range(3):
        journal.add(ann(n))
    assert journal.syncs == 0
    journal.sync()
    journal.sync()  # nothing new
    assert journal.syncs == 1
    journal.done(["a0"])
    journal.sync()
    assert journal.syncs == 1
    journal.add(ann(3))
    journal.sync()
    assert journal.syncs == 2
    assert [a.id for a in Journal(tmp_path / "queue.jsonl").load().valid] == ["a1", "a2", "a3"]


def test_queued_goes_out_only_after_the_journal_sync_that_covers_it(start_daemon, probe, fake_coze):
    """Each message published alone (the next one after the last `queued`) needs a sync of its
    own before its `queued` is published and it is acknowledged."""
    r = start_daemon()
    journal = r.daemon.worker.journal
    slow_audio(fake_coze)
    probe.publish(SAY, {"text": "A slow first announcement that holds the queue.", "id": "head"})
    probe.wait_event(EVENT, id="head", event="started")
    for n in range(5):
        probe.publish(SAY, {"text": f"queued number {n}", "id": f"q{n}"})
        probe.wait_event(EVENT, id=f"q{n}", event="queued")
        assert journal.syncs >= n + 2, (n, journal.syncs)  # the head's and each one's own
