/* A stand-in ALSA PCM plugin for the tests: every open fails with EBUSY, like a sound card
 * another program holds. There is no sound card here (and no snd-aloop/snd-dummy), so a
 * real busy device cannot be had; this one fails inside libasound's snd_pcm_open itself,
 * so aplay and pyalsaaudio see exactly the error a held card gives them.
 *
 * tests/alsa_sink.py compiles it (cc -shared -fPIC -DPIC ... -lasound) and declares
 *     pcm_type.busy { lib "/path/libasound_module_pcm_busy.so" }
 *     pcm.busy { type busy log "/path/busy.log" }
 * Each open appends "nonblock" or "block" (the mode it was asked for) to the log.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <alsa/asoundlib.h>

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
