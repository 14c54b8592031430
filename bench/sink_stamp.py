"""Fallback for sink_stamp.c when no C compiler is present (same output, ~10 ms slower start).

Usage (as ALSA file-sink pipe command): sink_stamp.py LOGFILE
"""

import os
import sys
import time


def main() -> int:
    spawned = time.monotonic()
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    total = 0
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        if total == 0:
            os.write(fd, b"first %d %.6f %.6f\n" % (os.getpid(), spawned, time.monotonic()))
        total += len(data)
    os.write(fd, b"end %d %.6f %d\n" % (os.getpid(), time.monotonic(), total))
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
