"""The systemd notify protocol in a few lines of standard library: READY, RELOADING, WATCHDOG, STATUS."""

from __future__ import annotations

import os
import socket
import time
from typing import Optional


def notify(message: str) -> bool:
    """Send one datagram to $NOTIFY_SOCKET; False (silently) when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        return True
    except OSError:
        return False


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, in µs), as systemd >= 253 wants it
    to match the message to the reload it started (Type=notify-reload); older versions
    ignore the field. READY=1 must follow once the reload is done, whether it worked or not."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval() -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when disabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
