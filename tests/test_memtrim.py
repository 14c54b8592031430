"""Free heap pages go back to the system once the speaker is idle (the idle-RSS target)."""

from __future__ import annotations

import logging
import platform
import threading

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from mqtt_helpers import broker, probe  # noqa: F401  (fixtures)
from test_daemon import EVENT, SAY, start_daemon  # noqa: F401  (fixture)

from coze_speaker.memtrim import release_free_memory, resident_kib

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_given_back():
    blocks = [bytearray(16 * 1024) for _ in range(2000)]  # 32 MB from the C heap, below mmap's threshold
    keep = blocks[-1]  # the top of the heap stays in use: free() alone cannot shrink it
    del blocks
    before = resident_kib()
    freed = release_free_memory()
    assert freed >= 16 * 1024, (before, freed)
    assert resident_kib() <= before - 16 * 1024
    assert keep


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.messages) >= n, timeout), self.messages


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_the_daemon_gives_memory_back_after_start_and_after_each_busy_spell(start_daemon, probe):
    logger = logging.getLogger("coze_speaker.memtrim")
    records = Records()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(records)
    try:
        start_daemon()
        records.wait_for(1)  # idle after start
        assert records.messages[0].startswith("idle: gave ")
        probe.publish(SAY, {"text": "Dinner is ready", "id": "d"})
        probe.wait_event(EVENT, id="d", event="finished")
        records.wait_for(2)  # idle again after the announcement
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
