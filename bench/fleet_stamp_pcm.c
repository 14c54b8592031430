/* The fleet bench's sink: an ALSA PCM plugin ("stamp") that stamps the wall-clock time at
 * which the player WROTE the first non-silent sample of each sound.
 *
 * Why not the file sink of bench/sink_stamp.c: ALSA's `file` plugin passes to its pipe only
 * what exceeds one device buffer (alsa-lib pcm_file.c, snd_pcm_file_add_frames: it writes
 * `wbuf_used_bytes - buffer_bytes`), so a byte reaches the pipe when the player has written
 * a whole buffer (100 ms with the alsa player's 5 x 20 ms) more after it, or at drain/close.
 * For a cache hit that is microseconds later; for a room fed by a fleet stream it is when the
 * chunk after it arrives: tens of milliseconds of error that differ from room to room.
 * This plugin runs inside libasound in the player's process, so its stamp is taken in the
 * player's own snd_pcm_writei() call: the error is the time to scan the written block.
 *
 * With `clock 0` it has no clock, like the `null` PCM under the file sink: every write is
 * taken at once (the hardware pointer follows the application pointer), so "plays" finish as
 * fast as the data comes, and "sound" is stamped when the player WROTE the sample. With
 * `clock 1` (what bench/fleet.py uses) it plays like a sound card: from its start its
 * hardware pointer advances with CLOCK_MONOTONIC at the negotiated rate, never past what was
 * written (then it runs dry: an xrun, as on a card), so avail()/delay() tell the player what
 * the device still holds, a full buffer makes the player wait, and "sound" is stamped with
 * the instant the sample comes out of the device by that clock (the start of the device plus
 * the frames ahead of it): what a card's DAC would do, whatever the writing thread's
 * scheduling. It takes S16_LE, 1 or 2 channels, 8000..192000 Hz.
 *
 * It appends lines to the file named by `log` (O_APPEND: lines of concurrent opens never mix):
 *   open PID REALTIME MONOTONIC
 *   sound PID REALTIME MONOTONIC FRAME   the first non-zero sample after >= `quiet` zero
 *                                        frames (or after the open); FRAME: its offset;
 *                                        with `clock 1` the times are when it plays
 *   close PID REALTIME MONOTONIC FRAMES
 * REALTIME is CLOCK_REALTIME (shared by all network namespaces: comparable across rooms),
 * MONOTONIC is CLOCK_MONOTONIC (comparable with bench/sink_stamp.c's stamps). The fake
 * Coze's audio has no zero sample, so speech never looks quiet.
 *
 * bench/fleet.py compiles it (cc -shared -fPIC -DPIC -O2 ... -lasound) and declares
 *     pcm_type.stamp { lib "/path/libasound_module_pcm_stamp.so" }
 *     pcm.!default { type stamp log "/path/stamps.log" quiet 2400 clock 1 }
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

typedef struct {
    snd_pcm_ioplug_t io;
    int log;
    long quiet;        /* zero frames that end a sound */
    long zeros;        /* zero frames seen since the last non-zero one */
    long long frames;  /* frames written since the open */
    int sounding;
    int clocked;       /* clock 1: the hardware pointer follows CLOCK_MONOTONIC */
    long long pos;     /* frames written since the last prepare (the application pointer) */
    long long hw;      /* frames played since the last prepare (clocked, when not running) */
    long long hw0;     /* clocked: hw at the start, and ... */
    double t0;         /* ... CLOCK_MONOTONIC then */
    int running;
    long long pending; /* clocked: a "sound" written before the start (its pos), or -1 */
    long long pending_frame;
} stamp_t;

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void put(stamp_t *s, const char *kind, long long value, int with_value) {
    char line[160];
    int k;
    double real = clock_s(CLOCK_REALTIME), mono = clock_s(CLOCK_MONOTONIC);
    if (with_value)
        k = snprintf(line, sizeof line, "%s %d %.6f %.6f %lld\n", kind, (int)getpid(), real, mono, value);
    else
        k = snprintf(line, sizeof line, "%s %d %.6f %.6f\n", kind, (int)getpid(), real, mono);
    if (s->log >= 0 && k > 0 && write(s->log, line, (size_t)k) < 0) {
        /* nothing to do: the bench notices the missing line */
    }
}

static void put_at(stamp_t *s, const char *kind, double mono_at, long long value) {
    /* a line stamped with a given CLOCK_MONOTONIC instant (and the REALTIME of that instant) */
    char line[160];
    double real = clock_s(CLOCK_REALTIME), mono = clock_s(CLOCK_MONOTONIC);
    int k = snprintf(line, sizeof line, "%s %d %.6f %.6f %lld\n", kind, (int)getpid(),
                     real + (mono_at - mono), mono_at, value);
    if (s->log >= 0 && k > 0 && write(s->log, line, (size_t)k) < 0) {
        /* nothing to do: the bench notices the missing line */
    }
}

/* clocked: frames played since the last prepare, by the clock, never past what was written */
static long long played(stamp_t *s) {
    if (!s->running)
        return s->hw;
    long long by_clock = s->hw0 + (long long)((clock_s(CLOCK_MONOTONIC) - s->t0) * (double)s->io.rate);
    return by_clock < s->pos ? by_clock : s->pos;
}

/* The position in frames since the prepare, not modulo the buffer (SND_PCM_IOPLUG_FLAG_BOUNDARY_WA):
 * a write of exactly one buffer (the alsa player writes that much at a time) must not look
 * like no progress, or a drain waits forever. It stays far below the boundary (2^62-ish). */
static snd_pcm_sframes_t st_pointer(snd_pcm_ioplug_t *io) {
    stamp_t *s = io->private_data;
    return (snd_pcm_sframes_t)(s->clocked ? played(s) : s->pos);
}

static snd_pcm_sframes_t st_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
                                     snd_pcm_uframes_t offset, snd_pcm_uframes_t size) {
    stamp_t *s = io->private_data;
    const unsigned char *base = (const unsigned char *)areas[0].addr + areas[0].first / 8;
    unsigned int step = areas[0].step / 8; /* bytes per frame (interleaved) */
    unsigned int channels = io->channels;
    snd_pcm_uframes_t i;
    unsigned int c;
    for (i = 0; i < size; i++) {
        const short *frame = (const short *)(base + (offset + i) * step);
        int loud = 0;
        for (c = 0; c < channels; c++)
            loud |= frame[c] != 0;
        if (loud) {
            if (!s->sounding && s->zeros >= s->quiet) {
                if (!s->clocked) {
                    put(s, "sound", s->frames + (long long)i, 1);
                } else if (s->running) {  /* it plays after the frames ahead of it, not before now */
                    double at = s->t0 + (double)(s->pos + (long long)i - s->hw0) / (double)io->rate;
                    double now = clock_s(CLOCK_MONOTONIC);
                    put_at(s, "sound", at > now ? at : now, s->frames + (long long)i);
                } else {  /* written before the start: stamped when the device starts */
                    s->pending = s->pos + (long long)i;
                    s->pending_frame = s->frames + (long long)i;
                }
            }
            s->sounding = 1;
            s->zeros = 0;
        } else if (++s->zeros >= s->quiet) {
            s->sounding = 0;
        }
    }
    s->frames += (long long)size;
    s->pos += (long long)size;
    return (snd_pcm_sframes_t)size;
}

static int st_start(snd_pcm_ioplug_t *io) {
    stamp_t *s = io->private_data;
    if (s->clocked) {
        s->t0 = clock_s(CLOCK_MONOTONIC);
        s->hw0 = s->hw;
        s->running = 1;
        if (s->pending >= 0) {
            put_at(s, "sound", s->t0 + (double)(s->pending - s->hw0) / (double)io->rate, s->pending_frame);
            s->pending = -1;
        }
    }
    return 0;
}

static int st_stop(snd_pcm_ioplug_t *io) {
    stamp_t *s = io->private_data;
    if (s->clocked && s->running) {
        s->hw = played(s);
        s->running = 0;
    }
    return 0;
}

static int st_prepare(snd_pcm_ioplug_t *io) {  /* ioplug resets its pointers: so do we */
    stamp_t *s = io->private_data;
    s->pos = s->hw = s->hw0 = 0;
    s->running = 0;
    s->pending = -1;
    return 0;
}
static int st_close(snd_pcm_ioplug_t *io) {
    stamp_t *s = io->private_data;
    put(s, "close", s->frames, 1);
    if (s->log >= 0)
        close(s->log);
    close(io->poll_fd);
    free(s);
    return 0;
}

static const snd_pcm_ioplug_callback_t st_callback = {
    .start = st_start, .stop = st_stop, .pointer = st_pointer, .transfer = st_transfer, .close = st_close,
    .prepare = st_prepare,
};

int _snd_pcm_stamp_open(snd_pcm_t **pcmp, const char *name, snd_config_t *root, snd_config_t *conf,
                        snd_pcm_stream_t stream, int mode)
{
    snd_config_iterator_t i, next;
    const char *log = NULL;
    long quiet = 2400;
    long clocked = 0;
    static const unsigned int access[] = { SND_PCM_ACCESS_RW_INTERLEAVED };
    static const unsigned int formats[] = { SND_PCM_FORMAT_S16_LE };
    stamp_t *s;
    int err;

    (void)root;
    if (stream != SND_PCM_STREAM_PLAYBACK)
        return -EINVAL;
    snd_config_for_each(i, next, conf) {
        snd_config_t *n = snd_config_iterator_entry(i);
        const char *id;
        if (snd_config_get_id(n, &id) < 0)
            continue;
        if (strcmp(id, "log") == 0)
            snd_config_get_string(n, &log);
        if (strcmp(id, "quiet") == 0)
            snd_config_get_integer(n, &quiet);
        if (strcmp(id, "clock") == 0)
            snd_config_get_integer(n, &clocked);
    }
    s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->quiet = quiet > 0 ? quiet : 1;
    s->zeros = s->quiet; /* the open counts as after silence */
    s->clocked = clocked != 0;
    s->pending = -1;
    s->log = log ? open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : -1;
    s->io.version = SND_PCM_IOPLUG_VERSION;
    s->io.name = "stamp";
    s->io.callback = &st_callback;
    s->io.private_data = s;
    s->io.poll_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    s->io.poll_events = POLLOUT;
    s->io.flags = SND_PCM_IOPLUG_FLAG_BOUNDARY_WA;
    err = snd_pcm_ioplug_create(&s->io, name, stream, mode);
    if (err < 0) {
        close(s->io.poll_fd);
        if (s->log >= 0)
            close(s->log);
        free(s);
        return err;
    }
    if ((err = snd_pcm_ioplug_set_param_list(&s->io, SND_PCM_IOPLUG_HW_ACCESS, 1, access)) < 0 ||
        (err = snd_pcm_ioplug_set_param_list(&s->io, SND_PCM_IOPLUG_HW_FORMAT, 1, formats)) < 0 ||
        (err = snd_pcm_ioplug_set_param_minmax(&s->io, SND_PCM_IOPLUG_HW_CHANNELS, 1, 2)) < 0 ||
        (err = snd_pcm_ioplug_set_param_minmax(&s->io, SND_PCM_IOPLUG_HW_RATE, 8000, 192000)) < 0) {
        snd_pcm_ioplug_delete(&s->io);
        return err;
    }
    put(s, "open", 0, 0);
    *pcmp = s->io.pcm;
    return 0;
}
SND_DLSYM_BUILD_VERSION(_snd_pcm_stamp_open, SND_PCM_DLSYM_VERSION);
