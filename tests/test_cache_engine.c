/* The prefix cache with the real engine (lavapipe or a GPU): a synthetic
 * model of the golden tiny sizes, its state exported into records as the
 * pipeline does, then restored into fresh sequences. The logits of the
 * tokens after a restore must equal, bit for bit, the logits of a sequence
 * that prefilled the same prefix itself (a fork of the writing sequence, so
 * the engine's own chunking is the same on both sides); at the shared-context
 * end, at a fixed-span boundary and mid-way; a changed token reuses only the
 * records before it; a corrupt record is found, deleted, and the restore
 * falls back to the record before it. Skipped without a Vulkan device. Kept
 * to about 350 prefilled tokens: lavapipe on 2 cores is slow. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/dsv4_cache.h"
#include "engine/dsv4_engine.h"
#include "engine/dsv4_synth.h"
#include "tests/check.h"

enum { SHARED = 300, SPAN = 128, TAIL = 8 };

static char model_dir[64], cache_dir[64];
static dsv4_engine *eng;
static int vocab;
static int n_reports;

static void on_report(void *ctx, const char *msg)
{
    (void)ctx;
    (void)msg;
    n_reports++;
}

static void rm_rf(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("  cannot remove %s\n", dir);
}

/* As the pipeline writes the shared prefix: prefill to each planned end,
 * export the span, put. At each end a fork of the sequence prefills the
 * next TAIL tokens: its logits are the reference for a restore there (the
 * engine computed that prefix itself). ref[i] gets TAIL x vocab logits. */
static int write_records(dsv4_cache *c, const int32_t *t, const int64_t *ends, int ne, float **ref)
{
    char err[512];
    const dsv4_state_layout *l = dsv4_engine_state_layout(eng);
    dsv4_seq *s = NULL;
    dsv4_cache_key parent = {{0}};
    int64_t pos = 0;
    int rc = dsv4_seq_create(eng, &s, err, sizeof err);
    for (int i = 0; i < ne && !rc; i++) {
        dsv4_state_chunk *ch = NULL;
        dsv4_seq *f = NULL;
        rc = dsv4_seq_prefill(s, t + pos, ends[i] - pos, NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_cache_chunk_alloc(l, pos, ends[i], 1, &ch, err, sizeof err);
        if (!rc) rc = dsv4_seq_export(s, pos, ch, err, sizeof err);
        if (!rc) rc = dsv4_cache_put(c, pos ? &parent : NULL, t + pos, ch, &parent, err, sizeof err);
        if (!rc) rc = dsv4_seq_fork(s, &f, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(f, t + ends[i], TAIL, ref[i], TAIL, err, sizeof err);
        dsv4_seq_free(f);
        dsv4_cache_chunk_free(ch);
        pos = ends[i];
    }
    if (rc) printf("  write: %s\n", err);
    dsv4_seq_free(s);
    return rc;
}

/* Looks up and imports into a fresh sequence; a record found corrupt while
 * reading means: drop the sequence, look up again (now shorter), as the
 * pipeline does. Returns the tokens restored, -1 on error. */
static int64_t restore(dsv4_cache *c, const int32_t *t, int64_t n, const int64_t *extra, int n_extra,
                       dsv4_seq **out)
{
    char err[512];
    const dsv4_state_layout *l = dsv4_engine_state_layout(eng);
    for (int attempt = 0; attempt < 4; attempt++) {
        dsv4_cache_hit *h = NULL;
        dsv4_seq *s = NULL;
        int rc = dsv4_cache_lookup(c, t, n, extra, n_extra, &h, err, sizeof err);
        if (!rc) rc = dsv4_seq_create(eng, &s, err, sizeof err);
        int nr = dsv4_cache_hit_records(h), corrupt = 0;
        for (int i = 0; i < nr && !rc; i++) {
            int64_t p0, p1;
            dsv4_state_chunk *ch = NULL;
            dsv4_cache_hit_span(h, i, &p0, &p1);
            rc = dsv4_cache_chunk_alloc(l, p0, p1, i == nr - 1, &ch, err, sizeof err);
            if (!rc) rc = dsv4_cache_read(c, h, i, ch, err, sizeof err);
            if (rc == DSV4_CACHE_ECORRUPT) corrupt = 1;
            if (!rc) rc = dsv4_seq_import(s, ch, err, sizeof err);
            dsv4_cache_chunk_free(ch);
        }
        int64_t got = dsv4_cache_hit_tokens(h);
        dsv4_cache_hit_free(h);
        if (corrupt) {
            dsv4_seq_free(s);
            continue;
        }
        if (rc) {
            printf("  restore: %s\n", err);
            dsv4_seq_free(s);
            return -1;
        }
        *out = s;
        return got;
    }
    return -1;
}

/* Restores the longest cached prefix of t[0, n_lookup), prefills the next
 * TAIL tokens and compares their logits with ref (bit for bit). */
static int64_t restore_and_compare(dsv4_cache *c, const int32_t *t, int64_t n_lookup, const int64_t *extra,
                                   int n_extra, const float *ref, int *same)
{
    dsv4_seq *s = NULL;
    char err[512];
    *same = 0;
    int64_t p = restore(c, t, n_lookup, extra, n_extra, &s);
    if (p < 0) return -1;
    size_t nf = (size_t)TAIL * (size_t)vocab;
    float *got = malloc(nf * sizeof *got);
    int rc = got ? 0 : -1;
    if (!rc && dsv4_seq_pos(s) != p) rc = -1;
    if (!rc) rc = dsv4_seq_prefill(s, t + p, TAIL, got, TAIL, err, sizeof err);
    if (rc) printf("  prefill after restore at %lld: %s\n", (long long)p, err);
    if (!rc) *same = memcmp(got, ref, nf * sizeof *got) == 0;
    if (!rc && !*same) {
        size_t k = 0;
        while (k < nf && memcmp(&got[k], &ref[k], 4) == 0) k++;
        printf("  restore at %lld: first differing logit [%zu]: %.9g vs %.9g\n", (long long)p, k, got[k], ref[k]);
    }
    free(got);
    dsv4_seq_free(s);
    return rc ? -1 : p;
}

static void logits_after_restore_are_bit_identical(void)
{
    char err[512];
    int32_t t[SHARED + TAIL];
    int64_t extra[1] = {SHARED}, ends[3];
    int same = 0;
    float *ref[3];
    for (int i = 0; i < SHARED + TAIL; i++) t[i] = (int32_t)((i * 2654435761u + 17) % (unsigned)vocab);
    dsv4_cache_options o = {0};
    o.span_tokens = SPAN;
    o.report = on_report;
    dsv4_cache *c = NULL;
    const dsv4_model_info *mi = dsv4_engine_info(eng);
    CHECKF(dsv4_cache_open(cache_dir, mi->fingerprint, dsv4_engine_state_layout(eng), &o, &c, err, sizeof err) == 0,
           "%s", err);
    if (!c) return;
    CHECK(dsv4_cache_plan(c, SHARED, extra, 1, ends, 3) == 3 && ends[0] == 128 && ends[1] == 256 && ends[2] == SHARED);
    for (int i = 0; i < 3; i++) ref[i] = malloc((size_t)TAIL * (size_t)vocab * sizeof(float));
    CHECK(write_records(c, t, ends, 3, ref) == 0);

    CHECK(restore_and_compare(c, t, SHARED + TAIL, extra, 1, ref[2], &same) == SHARED); /* shared-context end */
    CHECK(same);
    CHECK(restore_and_compare(c, t, SHARED + TAIL, NULL, 0, ref[1], &same) == 256); /* fixed span */
    CHECK(same);
    CHECK(restore_and_compare(c, t, 200, NULL, 0, ref[0], &same) == 128); /* mid-way in the chain */
    CHECK(same);

    /* a changed token at 200 (a changed document): only [0, 128) is reused */
    int32_t u[SHARED + TAIL];
    memcpy(u, t, sizeof t);
    u[200] = (u[200] + 1) % vocab;
    dsv4_seq *s = NULL;
    CHECK(restore(c, u, SHARED + TAIL, extra, 1, &s) == 128);
    dsv4_seq_free(s);

    /* the last record corrupt (its boundary, read only when restoring to it):
     * reported, deleted, and the restore falls back to the record before */
    dsv4_cache_key k0, k1, k2;
    dsv4_cache_key_of(c, NULL, 0, t, 128, &k0);
    dsv4_cache_key_of(c, &k0, 128, t + 128, 128, &k1);
    dsv4_cache_key_of(c, &k1, 256, t + 256, SHARED - 256, &k2);
    char hex[65], path[256];
    dsv4_cache_key_hex(&k2, hex);
    snprintf(path, sizeof path, "%s/%.2s/%s.dsv4c", cache_dir, hex, hex);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    int fd = open(path, O_RDWR);
    uint8_t b = 0;
    CHECK(fd >= 0 && pread(fd, &b, 1, st.st_size - 64) == 1);
    b ^= 0xff;
    CHECK(pwrite(fd, &b, 1, st.st_size - 64) == 1);
    close(fd);
    n_reports = 0;
    CHECK(restore_and_compare(c, t, SHARED + TAIL, extra, 1, ref[1], &same) == 256);
    CHECK(same && n_reports == 1 && access(path, F_OK) != 0);
    for (int i = 0; i < 3; i++) free(ref[i]);
    dsv4_cache_close(c);
}

int main(void)
{
    char err[512];
    snprintf(model_dir, sizeof model_dir, "/tmp/dsv4-test-cache-engine-XXXXXX");
    snprintf(cache_dir, sizeof cache_dir, "/tmp/dsv4-test-cache-engine-XXXXXX");
    if (!mkdtemp(model_dir) || !mkdtemp(cache_dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    dsv4_synth_options so = {"tiny", model_dir, 1};
    int rc = dsv4_model_synth(&so, err, sizeof err);
    if (rc == 0) rc = dsv4_engine_open(model_dir, NULL, &eng, err, sizeof err);
    if (rc == DSV4_EDEVICE) {
        printf("skip logits_after_restore_are_bit_identical: no Vulkan device (%s)\n", err);
    } else if (rc != 0) {
        printf("  engine: %s\nFAIL logits_after_restore_are_bit_identical\n", err);
        check_any_failed = 1;
    } else {
        vocab = dsv4_engine_info(eng)->vocab_size;
        RUN(logits_after_restore_are_bit_identical);
    }
    dsv4_engine_close(eng);
    rm_rf(model_dir);
    rm_rf(cache_dir);
    CHECK_EXIT();
}
