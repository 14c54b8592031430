"""The system clock's quality, as the kernel's NTP discipline sees it (adjtimex, read only).

A fleet starts a broadcast at one instant of the system clock in every room, so the rooms
are only as much in step as their clocks: NTP (systemd-timesyncd, chrony) on a LAN keeps
them within about a millisecond. `coze-speaker doctor` reads the kernel's view through libc's
adjtimex(2) with modes = 0 (no change; no privilege needed), with the standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Optional

#: adjtimex's return value when the clock is not synchronized, and the status bit saying so
TIME_ERROR = 5
STA_UNSYNC = 0x0040


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux; the 11 reserved ints at its end included)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockState:
    """What the kernel says of the system clock."""

    synchronized: bool
    #: the kernel's estimated and maximum error, microseconds
    esterror_us: int
    maxerror_us: int
    #: adjtimex's return value (TIME_OK 0 … TIME_ERROR 5) and the status bits
    state: int
    status: int

    @classmethod
    def from_timex(cls, state: int, tx: Timex) -> "ClockState":
        synchronized = state != TIME_ERROR and not tx.status & STA_UNSYNC
        return cls(synchronized, int(tx.esterror), int(tx.maxerror), int(state), int(tx.status))


def read_clock() -> Optional[ClockState]:
    """The kernel's clock state, or None where adjtimex cannot be asked (not Linux, no libc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    adjtimex.argtypes = [ctypes.POINTER(Timex)]
    adjtimex.restype = ctypes.c_int
    tx = Timex()  # modes = 0: read only
    state = adjtimex(ctypes.byref(tx))
    if state < 0:
        return None
    return ClockState.from_timex(state, tx)
