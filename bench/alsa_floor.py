"""The in-process floor: the least any program can do to play a file once a message arrives.

    stdbuf -oL mosquitto_sub -h H -p P -C 1 -t T -d | python bench/alsa_floor.py FILE [RATE]

Everything that can be ready before the message is: pyalsaaudio imported, the file read.
mosquitto_sub -d prints its debug lines and then the payload on stdout; this echoes the
SUBACK line (the bench publishes once it sees it, so this program is ready by then) and,
on the payload line, opens the PCM the way the daemon's alsa player does (non-blocking,
S16_LE mono, 20 ms periods × 5 = the 100 ms buffer aplay gets with -B 100000), writes the
file in whole frames and closes it. The benchmark's sink stamps the open and the first byte:
next to the aplay floor (`mosquitto_sub && aplay FILE`), this is the physical limit of the
sound path without a process start.
"""

import select
import sys

import alsaaudio  # type: ignore[import-not-found]


def main() -> int:
    path = sys.argv[1]
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 48000
    with open(path, "rb") as f:
        data = f.read()
    data = data[: len(data) & ~1]
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 1  # mosquitto_sub ended without a message
        if b"SUBACK" in line:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        elif line.rstrip(b"\r\n") == b"go":
            break
    pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NONBLOCK, device="default", rate=rate, channels=1,
                        format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=rate // 50, periods=5)
    poll = select.poll()
    for fd, events in pcm.polldescriptors():
        poll.register(fd, events)
    view = memoryview(data)
    for _ in range(100000):  # bounded: a device that takes nothing ends it after ~30 min
        if not view:
            break
        frames = pcm.write(view[: 2 * (rate // 10)])
        if frames > 0:
            view = view[2 * frames:]
        elif frames == 0:
            poll.poll(20)
    pcm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
