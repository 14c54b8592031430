/* Stand-in ALSA PCM plugins for the tests, for what no sound card here can show (there is
 * none, and no snd-aloop/snd-dummy). They run inside libasound, so aplay and pyalsaaudio
 * see exactly what a real card gives them.
 *
 * busy:  every open fails with EBUSY, like a card another program holds. Each open appends
 *        "nonblock" or "block" (the mode it was asked for) to the file named by `log`.
 * fixed: a hardware-like PCM that takes S16_LE with `channels` channels at the `rates`
 *        listed only (no conversion), and discards what it is given.
 *
 * tests/alsa_sink.py compiles this (cc -shared -fPIC -DPIC ... -lasound) and declares
 *     pcm_type.busy { lib "/path/libasound_module_pcm_test.so" }
 *     pcm.busy { type busy log "/path/busy.log" }
 *     pcm_type.fixed { lib "/path/libasound_module_pcm_test.so" }
 *     pcm.stereo { type fixed channels 2 rates [ 44100 48000 ] }
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

int _snd_pcm_busy_open(snd_pcm_t **pcmp, const char *name, snd_config_t *root, snd_config_t *conf,
                       snd_pcm_stream_t stream, int mode)
{
    snd_config_iterator_t i, next;
    const char *log = NULL;

    (void)pcmp;
    (void)name;
    (void)root;
    (void)stream;
    snd_config_for_each(i, next, conf) {
        snd_config_t *n = snd_config_iterator_entry(i);
        const char *id;
        if (snd_config_get_id(n, &id) < 0)
            continue;
        if (strcmp(id, "log") == 0)
            snd_config_get_string(n, &log);
    }
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            fprintf(f, "%s\n", (mode & SND_PCM_NONBLOCK) ? "nonblock" : "block");
            fclose(f);
        }
    }
    return -EBUSY;
}
SND_DLSYM_BUILD_VERSION(_snd_pcm_busy_open, SND_PCM_DLSYM_VERSION);

typedef struct { snd_pcm_ioplug_t io; snd_pcm_uframes_t ptr; } fixed_t;

static snd_pcm_sframes_t fx_pointer(snd_pcm_ioplug_t *io) { return ((fixed_t *)io->private_data)->ptr; }
static snd_pcm_sframes_t fx_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
                                     snd_pcm_uframes_t offset, snd_pcm_uframes_t size) {
    fixed_t *f = io->private_data; (void)areas; (void)offset;
    f->ptr = (f->ptr + size) % io->buffer_size;
    return size;
}
static int fx_start(snd_pcm_ioplug_t *io) { (void)io; return 0; }
static int fx_stop(snd_pcm_ioplug_t *io) { (void)io; return 0; }
static int fx_close(snd_pcm_ioplug_t *io) { fixed_t *f = io->private_data; close(io->poll_fd); free(f); return 0; }
static const snd_pcm_ioplug_callback_t fx_callback = {
    .start = fx_start, .stop = fx_stop, .pointer = fx_pointer, .transfer = fx_transfer, .close = fx_close,
};

int _snd_pcm_fixed_open(snd_pcm_t **pcmp, const char *name, snd_config_t *root, snd_config_t *conf,
                         snd_pcm_stream_t stream, int mode)
{
    snd_config_iterator_t i, next;
    long channels = 2;
    unsigned int rates[8];
    unsigned int nrates = 0;
    static const unsigned int access[] = { SND_PCM_ACCESS_RW_INTERLEAVED };
    static const unsigned int formats[] = { SND_PCM_FORMAT_S16_LE };
    unsigned int ch[1];
    fixed_t *f;
    int err;

    (void)root;
    snd_config_for_each(i, next, conf) {
        snd_config_t *n = snd_config_iterator_entry(i);
        const char *id;
        if (snd_config_get_id(n, &id) < 0)
            continue;
        if (strcmp(id, "channels") == 0)
            snd_config_get_integer(n, &channels);
        if (strcmp(id, "rates") == 0) {
            snd_config_iterator_t j, jnext;
            snd_config_for_each(j, jnext, n) {
                long r;
                if (nrates < 8 && snd_config_get_integer(snd_config_iterator_entry(j), &r) >= 0)
                    rates[nrates++] = (unsigned int)r;
            }
        }
    }
    if (!nrates)
        rates[nrates++] = 48000;
    f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->io.version = SND_PCM_IOPLUG_VERSION;
    f->io.name = "fixed";
    f->io.callback = &fx_callback;
    f->io.private_data = f;
    f->io.poll_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    f->io.poll_events = POLLOUT;
    err = snd_pcm_ioplug_create(&f->io, name, stream, mode);
    if (err < 0) {
        close(f->io.poll_fd);
        free(f);
        return err;
    }
    ch[0] = (unsigned int)channels;
    if ((err = snd_pcm_ioplug_set_param_list(&f->io, SND_PCM_IOPLUG_HW_ACCESS, 1, access)) < 0 ||
        (err = snd_pcm_ioplug_set_param_list(&f->io, SND_PCM_IOPLUG_HW_FORMAT, 1, formats)) < 0 ||
        (err = snd_pcm_ioplug_set_param_list(&f->io, SND_PCM_IOPLUG_HW_CHANNELS, 1, ch)) < 0 ||
        (err = snd_pcm_ioplug_set_param_list(&f->io, SND_PCM_IOPLUG_HW_RATE, nrates, rates)) < 0) {
        snd_pcm_ioplug_delete(&f->io);
        return err;
    }
    *pcmp = f->io.pcm;
    return 0;
}
SND_DLSYM_BUILD_VERSION(_snd_pcm_fixed_open, SND_PCM_DLSYM_VERSION);
