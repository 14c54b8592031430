/* The pipe command of the benchmark's ALSA file sink: stamps each open, its first byte, and
 * where sound starts and stops.
 *
 * ALSA's `file` plugin spawns `|cmd` once per PCM open (every aplay process, every open of
 * the in-process alsa player), so one run of this program is one open. It appends lines to
 * LOGFILE (O_APPEND: lines of concurrent runs never mix):
 *
 *   open PID T_SPAWNED
 *   first PID T_SPAWNED T_FIRST_BYTE
 *   sound PID T OFFSET      a non-zero byte after at least QUIET zero bytes (or the start)
 *   quiet PID T OFFSET      QUIET zero bytes have followed sound; T, OFFSET: the read that
 *                           held its last non-zero byte (when the sound stopped)
 *   end PID T_END BYTES
 *
 * times in seconds of CLOCK_MONOTONIC (Python's time.monotonic() on Linux). A device kept
 * open between announcements gets silence (zeros) in between, so "sound" marks the first
 * audio of each announcement without an open, and "quiet" the moment a stop silenced it.
 * QUIET is argv[2] in bytes (default 4800: 50 ms of 48 kHz s16 mono); the fake Coze's audio
 * has no zero sample, so speech never looks quiet. The audio itself is discarded.
 * bench/run.py compiles this with `cc -O2`; without a C compiler it falls back to
 * bench/sink_stamp.py (slower to start, same output).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int fd;
static char line[160];

static int put(int k) {
    return write(fd, line, k) < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    double spawned = now();
    static unsigned char buf[65536];
    long long total = 0, zeros = 0, quiet = 4800, last_sound_offset = 0;
    double last_sound_time = 0;
    int sounding = 0;
    ssize_t n;
    int k;

    if (argc < 2)
        return 2;
    if (argc > 2 && atoll(argv[2]) > 0)
        quiet = atoll(argv[2]);
    zeros = quiet;  /* the start counts as after silence */
    fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return 1;
    if (put(snprintf(line, sizeof line, "open %d %.6f\n", (int)getpid(), spawned)))
        return 1;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        double t = now();
        ssize_t i;
        if (total == 0 && put(snprintf(line, sizeof line, "first %d %.6f %.6f\n", (int)getpid(), spawned, t)))
            return 1;
        for (i = 0; i < n; i++) {
            if (buf[i]) {
                if (!sounding && zeros >= quiet &&
                    put(snprintf(line, sizeof line, "sound %d %.6f %lld\n", (int)getpid(), t, total + i)))
                    return 1;
                sounding = 1;
                zeros = 0;
                last_sound_time = t;
                last_sound_offset = total + i;
            } else if (++zeros == quiet && sounding) {
                sounding = 0;
                if (put(snprintf(line, sizeof line, "quiet %d %.6f %lld\n", (int)getpid(), last_sound_time,
                                 last_sound_offset)))
                    return 1;
            }
        }
        total += n;
    }
    k = snprintf(line, sizeof line, "end %d %.6f %lld\n", (int)getpid(), now(), total);
    if (put(k))
        return 1;
    close(fd);
    return 0;
}
