"""Whether the tests run under qemu-user (an arm64 chroot on an x86 machine, scripts/matrix.sh).

There /proc/PID/status's VmRSS counts the emulator and its translated code too, so memory
limits measured that way do not hold for the program; such assertions are skipped there.
"""

from __future__ import annotations

import functools
import os
import subprocess
from typing import Optional


@functools.lru_cache(maxsize=None)
def qemu_user() -> Optional[str]:
    """The emulator's path when programs here run through qemu-user (binfmt_misc), else None.

    qemu answers a process's questions about itself (/proc/self/exe names the emulated
    program), not about another process: a child's /proc/PID/exe names the real executable.
    """
    try:
        child = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError:
        return None
    try:
        exe = os.readlink(f"/proc/{child.pid}/exe")
    except OSError:
        exe = ""
    finally:
        child.kill()
        child.wait()
    return exe if "qemu" in os.path.basename(exe) else None


def skip_memory_limits_under_emulation() -> None:
    """pytest.skip, with the reason, when VmRSS includes an emulator."""
    import pytest

    emulator = qemu_user()
    if emulator:
        pytest.skip(f"runs under qemu-user ({emulator}): VmRSS includes the emulator's memory, so the memory "
                    "limit is not checked here (everything else in this test was)")
