/* The embedded demo model, generated on first use (see demo_model.h).
 * Generation goes to a private temporary directory that is renamed into
 * place, so a worker never opens half a model and two workers racing to
 * create it both end with the same complete directory. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/dsv4_synth.h"
#include "ingest/dsv4_tokenizer.h"
#include "pipeline/demo_model.h"

/* Bump when the demo preset's sizes or weights change, so an old generated
 * model is not reused under the new name. */
#define DEMO_MODEL_NAME "demo-v1"
#define DEMO_MODEL_SEED 20260425u

static int is_complete(const char *dir)
{
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[PATH_MAX + 256];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        if (access(p, R_OK) != 0) return 0;
    }
    return 1;
}

static void remove_dir(const char *dir)
{
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[PATH_MAX + 256];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

int dsv4_demo_model_ensure(const char *home_dir, char *dir, size_t cap, char *err, size_t errlen)
{
    char models[PATH_MAX], tmp[PATH_MAX + 64], tokpath[PATH_MAX + 96];
    if ((size_t)snprintf(models, sizeof models, "%s/models", home_dir) >= sizeof models ||
        (size_t)snprintf(dir, cap, "%s/%s", models, DEMO_MODEL_NAME) >= cap) {
        snprintf(err, errlen, "%s: path too long", home_dir);
        return -1;
    }
    if (is_complete(dir)) return 0;
    if (mkdir(models, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", models, strerror(errno));
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", models, DEMO_MODEL_NAME, (long)getpid());
    dsv4_synth_options o = {"demo", tmp, DEMO_MODEL_SEED};
    if (dsv4_model_synth(&o, err, errlen) != 0) {
        remove_dir(tmp);
        return -1;
    }
    size_t n = 0;
    const char *json = dsv4_tokenizer_embedded_json(&n);
    snprintf(tokpath, sizeof tokpath, "%s/tokenizer.json", tmp);
    FILE *f = fopen(tokpath, "wb");
    /* fclose always runs once f is open, so a short write does not leak f */
    int bad = !f || fwrite(json, 1, n, f) != n;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) {
        snprintf(err, errlen, "cannot write %s: %s", tokpath, strerror(errno));
        remove_dir(tmp);
        return -1;
    }
    if (rename(tmp, dir) != 0) {
        /* Another worker finished first: its model is the same. */
        int e = errno;
        remove_dir(tmp);
        if (is_complete(dir)) return 0;
        snprintf(err, errlen, "cannot move the demo model into %s: %s", dir, strerror(e));
        return -1;
    }
    return 0;
}
