"""Fallback for sink_stamp.c when no C compiler is present (same output, ~10 ms slower start).

Usage (as ALSA file-sink pipe command): sink_stamp.py LOGFILE [QUIET_BYTES]
"""

import os
import sys
import time


def main() -> int:
    spawned = time.monotonic()
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    quiet = int(sys.argv[2]) if len(sys.argv) > 2 and int(sys.argv[2]) > 0 else 4800
    pid = os.getpid()
    os.write(fd, b"open %d %.6f\n" % (pid, spawned))
    total, zeros, sounding = 0, quiet, False
    last_time, last_offset = 0.0, 0
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        t = time.monotonic()
        if total == 0:
            os.write(fd, b"first %d %.6f %.6f\n" % (pid, spawned, t))
        stripped = data.strip(b"\0")
        if not stripped:  # all silence: only the run of zeros grows
            zeros += len(data)
            if sounding and zeros >= quiet:
                sounding = False
                os.write(fd, b"quiet %d %.6f %d\n" % (pid, last_time, last_offset))
        else:
            for i, byte in enumerate(data):
                if byte:
                    if not sounding and zeros >= quiet:
                        os.write(fd, b"sound %d %.6f %d\n" % (pid, t, total + i))
                    sounding, zeros = True, 0
                    last_time, last_offset = t, total + i
                else:
                    zeros += 1
                    if zeros == quiet and sounding:
                        sounding = False
                        os.write(fd, b"quiet %d %.6f %d\n" % (pid, last_time, last_offset))
        total += len(data)
    os.write(fd, b"end %d %.6f %d\n" % (pid, time.monotonic(), total))
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
