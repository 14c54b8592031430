"""The queue journal round-trips announcements, with their deadlines on the right clock."""

from __future__ import annotations

import time

from coze_speaker.queue.announcement import Announcement
from coze_speaker.queue.journal import Journal


def test_round_trip_keeps_fields_deadlines_and_correlation(tmp_path):
    journal = Journal(tmp_path / "queue.jsonl")
    now = time.monotonic()
    live = Announcement(text="door open", id="a", priority="high", volume=40, deadline=now + 60,
                        response_topic="replies/a", correlation_data=b"\x00\x01corr", chime="ding")
    stale = Announcement(text="old news", id="b", deadline=now - 1)
    journal.write([live, stale])
    valid, expired, refused = Journal(tmp_path / "queue.jsonl").load()
    assert [a.id for a in valid] == ["a"] and [a.id for a in expired] == ["b"] and refused == []
    got = valid[0]
    assert (got.text, got.priority, got.volume, got.response_topic, got.correlation_data, got.chime) == \
        ("door open", "high", 40, "replies/a", b"\x00\x01corr", "ding")
    assert 50 < got.deadline - time.monotonic() <= 60


def test_a_broken_journal_is_ignored(tmp_path):
    path = tmp_path / "queue.jsonl"
    path.write_text("{not json")
    assert Journal(path).load() == ([], [], [])
    old = tmp_path / "queue.json"  # an earlier version's JSON list, with entries no version wrote
    old.write_text('[{"text": "ok", "id": "x"}, {"bogus": 1, "id": "y"}, 5]')
    valid, expired, refused = Journal(path, legacy=[old]).load()
    assert [a.id for a in valid] == ["x"] and expired == []
    assert [(a.id, e.field) for a, e in refused][0] == ("y", "bogus") and refused[1][1].field == "entry"


def test_unwritable_journal_warns_once(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    journal = Journal(blocker / "queue.jsonl")  # a path under a regular file cannot be written
    journal.add(Announcement(text="a", id="1"))
    journal.add(Announcement(text="b", id="2"))
    journal.write([Announcement(text="b", id="2")])
    assert sum("queue journal" in r.message for r in caplog.records) == 1


def test_state_files_are_per_device_and_an_old_journal_is_taken_over(tmp_path):
    from coze_speaker.queue.state import StateStore, device_file

    (tmp_path / "queue.json").write_text("[]")
    assert device_file(tmp_path, "queue", "kitchen") == tmp_path / "queue-kitchen.json"
    assert (tmp_path / "queue-kitchen.json").read_text() == "[]" and not (tmp_path / "queue.json").exists()
    assert device_file(tmp_path, "queue", "hall") == tmp_path / "queue-hall.json"  # nothing left to take over
    StateStore(tmp_path, "kitchen").save("volume", 40)
    StateStore(tmp_path, "hall").save("volume", 70)
    assert StateStore(tmp_path, "kitchen").load("volume") == 40 and StateStore(tmp_path, "hall").load("volume") == 70
