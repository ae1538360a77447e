/* Sequence state of the engine on the Vulkan device (lavapipe here), with the
 * tiny golden model:
 *   - fork: a forked sequence decodes exactly as its source;
 *   - export/import: the state exported as two chained chunks (rows only,
 *     then rows + boundary) and imported into a fresh sequence gives
 *     bit-identical logits, and the layout's sizes are what it says;
 *   - batched decode: several sequences at different positions decoded in
 *     one call give the logits of decoding each alone;
 *   - the pass scheduler's levels run in reverse order, and passes submitted
 *     in parts, give the same bits;
 *   - big tensors split over several bindings (the vocabulary in row slices,
 *     the experts in groups, the indexer scores in token sub-batches, all
 *     forced small here) give the same logits.
 * Skipped when there is no Vulkan device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "tests/check.h"

#define GOLDEN "tests/golden/tiny"

static dsv4_engine *eng;
static int V;

static int open_engine(void)
{
    char err[512];
    if (eng) return 0;
    int rc = dsv4_engine_open(GOLDEN, NULL, &eng, err, sizeof err);
    if (rc) {
        printf("  %s\n", err);
        return rc;
    }
    V = dsv4_engine_info(eng)->vocab_size;
    return 0;
}

static void make_tokens(int32_t *t, int n, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (int32_t)((seed >> 8) % (uint32_t)V);
    }
}

static double max_abs_diff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

static void fork_decodes_like_source(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    int32_t t[140];
    make_tokens(t, 140, 7);
    dsv4_seq *a = NULL, *b = NULL;
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
    rc = dsv4_seq_create(eng, &a, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(a, t, 130, NULL, 0, err, sizeof err);
    if (!rc) rc = dsv4_seq_fork(a, &b, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) CHECK(dsv4_seq_pos(b) == 130);
    for (int i = 130; i < 140 && !rc; i++) {
        rc = dsv4_decode(&a, 1, &t[i], la, err, sizeof err);
        if (!rc) rc = dsv4_decode(&b, 1, &t[i], lb, err, sizeof err);
        CHECKF(rc == 0, "%s", err);
        if (!rc) CHECKF(max_abs_diff(la, lb, V) == 0, "step %d differs by %g", i, max_abs_diff(la, lb, V));
    }
    dsv4_seq_free(a);
    dsv4_seq_free(b);
    free(la);
    free(lb);
}

static void export_import_round_trip(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    const dsv4_state_layout *L = dsv4_engine_state_layout(eng);
    CHECK(L->n_streams == 6); /* tiny: CSA layers 1, 3 (kv + index_kv), HCA 2, 4 (kv): 2 + 1 + 2 + 1 */
    CHECK(L->n_streams >= 1 && strcmp(L->streams[0].name, "layers.1.attn.kv") == 0 && L->streams[0].ratio == 4);
    int32_t t[300];
    make_tokens(t, 300, 11);
    dsv4_seq *a = NULL, *c = NULL;
    rc = dsv4_seq_create(eng, &a, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    /* two spans: [0, 133) and [133, 290) */
    const int64_t cut[3] = {0, 133, 290};
    dsv4_state_chunk ch[2];
    uint8_t *rows[2][64];
    for (int k = 0; k < 2 && !rc; k++) {
        rc = dsv4_seq_prefill(a, t + cut[k], cut[k + 1] - cut[k], NULL, 0, err, sizeof err);
        ch[k].rows = rows[k];
        for (uint32_t s = 0; s < L->n_streams; s++) {
            int64_t n = dsv4_state_rows_at(&L->streams[s], cut[k + 1]) - dsv4_state_rows_at(&L->streams[s], cut[k]);
            rows[k][s] = malloc((size_t)(n > 0 ? n : 1) * L->streams[s].row_bytes);
        }
        ch[k].boundary = malloc(L->boundary_bytes);
        if (!rc) rc = dsv4_seq_export(a, cut[k], &ch[k], err, sizeof err);
        CHECKF(rc == 0, "export %d: %s", k, err);
        CHECK(ch[k].pos0 == cut[k] && ch[k].pos1 == cut[k + 1]);
    }
    if (!rc) rc = dsv4_seq_create(eng, &c, err, sizeof err);
    if (!rc) {
        uint8_t *keep = ch[0].boundary;
        ch[0].boundary = NULL; /* the first chunk carries rows only */
        rc = dsv4_seq_import(c, &ch[0], err, sizeof err);
        ch[0].boundary = keep;
        if (!rc) CHECK(dsv4_seq_pos(c) == 0);
        if (!rc) rc = dsv4_seq_import(c, &ch[1], err, sizeof err);
        CHECKF(rc == 0, "import: %s", err);
        if (!rc) CHECK(dsv4_seq_pos(c) == 290);
    }
    /* a chunk out of order is refused with a message */
    if (!rc) {
        dsv4_seq *d = NULL;
        char e2[256] = "";
        dsv4_seq_create(eng, &d, err, sizeof err);
        CHECK(dsv4_seq_import(d, &ch[1], e2, sizeof e2) == DSV4_EINVAL && strstr(e2, "does not follow"));
        dsv4_seq_free(d);
    }
    float *la = malloc((size_t)10 * V * 4), *lc = malloc((size_t)10 * V * 4);
    if (!rc) {
        rc = dsv4_seq_prefill(a, t + 290, 10, la, 10, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(c, t + 290, 10, lc, 10, err, sizeof err);
        CHECKF(rc == 0, "%s", err);
        if (!rc) CHECKF(max_abs_diff(la, lc, 10 * V) == 0, "restored logits differ by %g", max_abs_diff(la, lc, 10 * V));
    }
    for (int k = 0; k < 2; k++) {
        for (uint32_t s = 0; s < L->n_streams; s++) free(rows[k][s]);
        free(ch[k].boundary);
    }
    free(la);
    free(lc);
    dsv4_seq_free(a);
    dsv4_seq_free(c);
}

static void batched_decode_equals_one_by_one(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    enum { NS = 3 };
    const int len[NS] = {5, 70, 131};
    dsv4_seq *s[NS] = {0}, *solo[NS] = {0};
    int32_t t[NS][140], next[NS];
    for (int i = 0; i < NS && !rc; i++) {
        make_tokens(t[i], 140, 100 + i);
        next[i] = t[i][len[i]];
        rc = dsv4_seq_create(eng, &s[i], err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(s[i], t[i], len[i], NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_seq_fork(s[i], &solo[i], err, sizeof err);
    }
    CHECKF(rc == 0, "%s", err);
    float *lb = malloc((size_t)NS * V * 4), *l1 = malloc((size_t)V * 4);
    for (int step = 0; step < 2 && !rc; step++) {
        rc = dsv4_decode(s, NS, next, lb, err, sizeof err);
        CHECKF(rc == 0, "%s", err);
        for (int i = 0; i < NS && !rc; i++) {
            rc = dsv4_decode(&solo[i], 1, &next[i], l1, err, sizeof err);
            double d = max_abs_diff(lb + (size_t)i * V, l1, V);
            CHECKF(d <= 1e-5, "step %d sequence %d: batched differs by %g", step, i, d);
            CHECK(dsv4_seq_pos(s[i]) == len[i] + step + 1);
        }
        for (int i = 0; i < NS; i++) next[i] = t[i][len[i] + step + 1];
    }
    /* the same sequence twice in one batch is refused */
    dsv4_seq *dup[2] = {s[0], s[0]};
    CHECK(dsv4_decode(dup, 2, next, lb, err, sizeof err) == DSV4_EINVAL);
    free(lb);
    free(l1);
    for (int i = 0; i < NS; i++) {
        dsv4_seq_free(s[i]);
        dsv4_seq_free(solo[i]);
    }
}

static void split_bindings_give_same_logits(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    setenv("DSV4_VSLICE_ROWS", "500", 1);     /* 2048 rows -> 5 slices, the last partial */
    setenv("DSV4_EXPERTS_PER_GROUP", "3", 1); /* 8 experts -> 3 groups */
    setenv("DSV4_ISCORE_KIB", "4", 1);        /* indexer scores for 4 tokens per dispatch */
    setenv("DSV4_INDEX_UNFUSED", "1", 1);     /* ... which only the unfused indexer writes */
    dsv4_engine *e2 = NULL;
    rc = dsv4_engine_open(GOLDEN, NULL, &e2, err, sizeof err);
    unsetenv("DSV4_VSLICE_ROWS");
    unsetenv("DSV4_EXPERTS_PER_GROUP");
    unsetenv("DSV4_ISCORE_KIB");
    unsetenv("DSV4_INDEX_UNFUSED");
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    int32_t t[40];
    make_tokens(t, 40, 5);
    float *a = malloc((size_t)40 * V * 4), *b = malloc((size_t)40 * V * 4);
    dsv4_seq *s1 = NULL, *s2 = NULL;
    rc = dsv4_seq_create(eng, &s1, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(s1, t, 40, a, 40, err, sizeof err);
    if (!rc) rc = dsv4_seq_create(e2, &s2, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(s2, t, 40, b, 40, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) CHECKF(max_abs_diff(a, b, 40 * V) == 0, "split logits differ by %g", max_abs_diff(a, b, 40 * V));
    dsv4_seq_free(s1);
    dsv4_seq_free(s2);
    dsv4_engine_close(e2);
    free(a);
    free(b);
}

/* An attention variant forced on this CPU driver (switch env = 1), where
 * attn_serial is picked while it fits, and the phase-by-phase recording of
 * a batched decode give the same bits as attn_serial one sequence at a
 * time: attn_tile (DSV4_ATTN_TILE) for every segment, attn_dec
 * (DSV4_ATTN_DEC) for the segments of fewer than 64 tokens (the prefills
 * of 9 and 40 tokens, the decodes); or the pass scheduler's levels in
 * reverse order (DSV4_SCHED_REVERSE); or every pass submitted in parts, one
 * after each block (DSV4_PART_OPS=1). */
static void forced_variant_gives_same_logits(const char *env)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    /* the switch is read when an engine opens: a second engine with it set */
    dsv4_engine *tile = NULL;
    setenv(env, "1", 1);
    rc = dsv4_engine_open(GOLDEN, NULL, &tile, err, sizeof err);
    unsetenv(env);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    enum { NS = 3 };
    const int len[NS] = {9, 70, 40};
    dsv4_seq *a[NS] = {0}, *b[NS] = {0};
    int32_t t[NS][80], next[NS];
    float *la = malloc((size_t)70 * V * 4), *lb = malloc((size_t)70 * V * 4), *lt = malloc((size_t)NS * V * 4);
    for (int i = 0; i < NS && !rc; i++) {
        make_tokens(t[i], 80, 300 + i);
        next[i] = t[i][len[i]];
        rc = dsv4_seq_create(eng, &a[i], err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(a[i], t[i], len[i], la, len[i], err, sizeof err);
        if (!rc) rc = dsv4_seq_create(tile, &b[i], err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(b[i], t[i], len[i], lb, len[i], err, sizeof err);
        if (!rc) CHECKF(max_abs_diff(la, lb, (size_t)len[i] * V) == 0, "prefill %d: %s differs by %g", i, env,
                        max_abs_diff(la, lb, (size_t)len[i] * V));
    }
    CHECKF(rc == 0, "%s", err);
    for (int step = 0; step < 2 && !rc; step++) {
        rc = dsv4_decode(b, NS, next, lt, err, sizeof err);
        CHECKF(rc == 0, "%s", err);
        for (int i = 0; i < NS && !rc; i++) {
            rc = dsv4_decode(&a[i], 1, &next[i], la, err, sizeof err);
            double d = max_abs_diff(lt + (size_t)i * V, la, V);
            CHECKF(d == 0, "step %d sequence %d: batched decode with %s differs by %g", step, i, env, d);
            next[i] = t[i][len[i] + step + 1];
        }
    }
    for (int i = 0; i < NS; i++) {
        dsv4_seq_free(a[i]);
        dsv4_seq_free(b[i]);
    }
    dsv4_engine_close(tile);
    free(la);
    free(lb);
    free(lt);
}

static void attn_tile_batched_gives_same_logits(void) { forced_variant_gives_same_logits("DSV4_ATTN_TILE"); }
static void attn_dec_batched_gives_same_logits(void) { forced_variant_gives_same_logits("DSV4_ATTN_DEC"); }
/* each level of the pass scheduler recorded in reverse: a dependency it
   missed would change the logits */
static void scheduler_reversed_gives_same_logits(void) { forced_variant_gives_same_logits("DSV4_SCHED_REVERSE"); }
/* each pass submitted in parts after every block */
static void passes_in_parts_give_same_logits(void) { forced_variant_gives_same_logits("DSV4_PART_OPS"); }

int main(void)
{
    RUN(fork_decodes_like_source);
    RUN(export_import_round_trip);
    RUN(batched_decode_equals_one_by_one);
    RUN(attn_tile_batched_gives_same_logits);
    RUN(attn_dec_batched_gives_same_logits);
    RUN(scheduler_reversed_gives_same_logits);
    RUN(passes_in_parts_give_same_logits);
    RUN(split_bindings_give_same_logits);
    dsv4_engine_close(eng);
    CHECK_EXIT();
}
