/* The pipe command of the benchmark's ALSA file sink: stamps the first byte of each play.
 *
 * ALSA's `file` plugin spawns `|cmd` once per PCM open, and every aplay process opens the
 * PCM anew, so one run of this program is one play. It appends two lines to LOGFILE
 * (O_APPEND: lines of concurrent runs never mix):
 *
 *   first PID T_SPAWNED T_FIRST_BYTE
 *   end PID T_END BYTES
 *
 * times in seconds of CLOCK_MONOTONIC (Python's time.monotonic() on Linux). The audio
 * itself is read and discarded. bench/run.py compiles this with `cc -O2`; without a C
 * compiler it falls back to bench/sink_stamp.py (slower to start, same output).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double spawned = now();
    static char buf[65536];
    char line[160];
    long long total = 0;
    ssize_t n;
    int fd, k;

    if (argc < 2)
        return 2;
    fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return 1;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        if (total == 0) {
            double first = now();
            k = snprintf(line, sizeof line, "first %d %.6f %.6f\n", (int)getpid(), spawned, first);
            if (write(fd, line, k) < 0)
                return 1;
        }
        total += n;
    }
    k = snprintf(line, sizeof line, "end %d %.6f %lld\n", (int)getpid(), now(), total);
    if (write(fd, line, k) < 0)
        return 1;
    close(fd);
    return 0;
}
