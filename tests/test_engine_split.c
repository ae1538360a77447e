/* The engine split over several Vulkan devices (pipeline parallel,
 * engine/shards.c), with the tiny golden model on lavapipe opened as two and
 * three logical devices (DSV4_DEVICES=0,0 / 0,0,0):
 *   - prefill logits bit-identical to the one-device engine, one call and
 *     caller chunks of 50 and 23, with the pipelined prefill (device k on chunk c while
 *     device k-1 on chunk c+1) and with it off (DSV4_PIPELINE=0);
 *   - batched decode of forked sequences bit-identical to one device;
 *   - the golden conformance thresholds (`dsv4-batch conformance` with
 *     --devices/--split, MTP on the last device);
 *   - state exported from a split engine is byte-identical to the one-device
 *     export and imports into an engine with another split (and back) with
 *     identical logits after it;
 *   - without a split the blocks are placed by free memory, same logits;
 *   - synthetic weights (the bench) split too and keep every layer;
 *   - bad DSV4_SPLIT / DSV4_DEVICES values fail with a message naming them.
 * Skipped when there is no Vulkan device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "pipeline/dsv4_cli.h"
#include "tests/check.h"

#define GOLDEN "tests/golden/tiny"
#define N_PRE 160  /* prefill: several CSA rows, the first HCA row (ratio 128), past the window */
#define N_CUT 130  /* export point */

static dsv4_engine *one, *two, *three; /* 1 device; 0,0 split 3,2; 0,0,0 split 2,2,1 */
static int V, have;
static int32_t tok[N_PRE];
static float *ref; /* [N_PRE][V]: the one-device prefill */

static int open_split(const char *devices, const char *split, int chunk, dsv4_engine **out)
{
    char err[512], ch[16];
    snprintf(ch, sizeof ch, "%d", chunk);
    setenv("DSV4_CHUNK", ch, 1);
    /* the engines differ in chunk size: on GPUs only exact mode makes the
       bits independent of it (a no-op on CPU drivers) */
    setenv("DSV4_EXACT", "1", 1);
    dsv4_engine_options o = {.devices = devices, .split = split};
    int rc = dsv4_engine_open(GOLDEN, &o, out, err, sizeof err);
    unsetenv("DSV4_CHUNK");
    unsetenv("DSV4_EXACT");
    if (rc) printf("  open %s split %s: %s\n", devices ? devices : "-", split ? split : "-", err);
    return rc;
}

/* The engines and the one-device reference, once for all cases. */
static int setup(void)
{
    if (have) return have > 0 ? 0 : -1;
    have = -1;
    char err[512];
    int rc = open_split(NULL, NULL, 256, &one);
    if (rc) return rc;
    /* chunk 64: a 160-token prefill is three chunks, so it pipelines */
    if (open_split("0,0", "3,2", 64, &two) || open_split("0,0,0", "2,2,1", 64, &three)) return -1;
    V = dsv4_engine_info(one)->vocab_size;
    uint32_t seed = 12345;
    for (int i = 0; i < N_PRE; i++) {
        seed = seed * 1664525u + 1013904223u;
        tok[i] = (int32_t)((seed >> 8) % (uint32_t)V);
    }
    ref = malloc((size_t)N_PRE * V * sizeof *ref);
    dsv4_seq *s = NULL;
    rc = ref ? dsv4_seq_create(one, &s, err, sizeof err) : DSV4_ENOMEM;
    if (!rc) rc = dsv4_seq_prefill(s, tok, N_PRE, ref, N_PRE, err, sizeof err);
    dsv4_seq_free(s);
    if (rc) {
        printf("  one-device prefill: %s\n", err);
        return rc;
    }
    have = 1;
    return 0;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Prefill of tok[0, N_PRE) on e in caller calls of `step` tokens, all logits. */
static int prefill_all(dsv4_engine *e, int step, float *got, dsv4_seq **keep)
{
    char err[512];
    dsv4_seq *s = NULL;
    int rc = dsv4_seq_create(e, &s, err, sizeof err);
    for (int a = 0; a < N_PRE && !rc; a += step) {
        int m = N_PRE - a < step ? N_PRE - a : step;
        rc = dsv4_seq_prefill(s, tok + a, m, got + (size_t)a * V, m, err, sizeof err);
    }
    if (rc) printf("  prefill in steps of %d: %s\n", step, err);
    else if (dsv4_seq_pos(s) != N_PRE) rc = -1;
    if (keep && !rc) *keep = s;
    else dsv4_seq_free(s);
    return rc;
}

static void prefill_matches_one_device(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    float *got = malloc((size_t)N_PRE * V * sizeof *got);
    struct { dsv4_engine *e; const char *name; int step, pipeline; } runs[] = {
        {two, "0,0 split 3,2, one call (pipelined)", N_PRE, 1},
        {two, "0,0 split 3,2, one call, DSV4_PIPELINE=0", N_PRE, 0},
        {two, "0,0 split 3,2, calls of 50", 50, 1},
        {three, "0,0,0 split 2,2,1, one call (pipelined)", N_PRE, 1},
        {three, "0,0,0 split 2,2,1, calls of 23", 23, 1},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        if (!runs[i].pipeline) setenv("DSV4_PIPELINE", "0", 1);
        memset(got, 0xff, (size_t)N_PRE * V * sizeof *got); /* NaN: a row not written fails */
        int rc = prefill_all(runs[i].e, runs[i].step, got, NULL);
        unsetenv("DSV4_PIPELINE");
        CHECKF(rc == 0, "%s", runs[i].name);
        double d = rc ? 1 : max_abs_diff(got, ref, (size_t)N_PRE * V);
        printf("  %-44s max |diff| vs one device %.3g\n", runs[i].name, d);
        CHECKF(d == 0, "%s: logits differ from one device by up to %.3g", runs[i].name, d);
    }
    free(got);
}

static void decode_of_forks_matches_one_device(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    enum { B = 3, STEPS = 3, NP = 100 };
    char err[512];
    dsv4_engine *es[3] = {one, two, three};
    float *out[3];
    int ok = 1;
    for (int k = 0; k < 3; k++) {
        out[k] = calloc((size_t)STEPS * B * V, sizeof **out);
        dsv4_seq *base = NULL, *seq[B] = {0};
        int rc = dsv4_seq_create(es[k], &base, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(base, tok, NP, NULL, 0, err, sizeof err);
        for (int i = 0; i < B && !rc; i++) rc = dsv4_seq_fork(base, &seq[i], err, sizeof err);
        /* the forks at different positions: seq[i] first takes i extra tokens */
        for (int i = 0; i < B && !rc; i++)
            if (i) rc = dsv4_seq_prefill(seq[i], tok + NP, i, NULL, 0, err, sizeof err);
        for (int t = 0; t < STEPS && !rc; t++) {
            int32_t in[B];
            for (int i = 0; i < B; i++) in[i] = tok[NP + 10 + t * B + i];
            rc = dsv4_decode(seq, B, in, out[k] + (size_t)t * B * V, err, sizeof err);
        }
        CHECKF(rc == 0, "engine %d: %s", k, err);
        ok &= rc == 0;
        for (int i = 0; i < B; i++) dsv4_seq_free(seq[i]);
        dsv4_seq_free(base);
    }
    for (int k = 1; k < 3 && ok; k++) {
        double d = max_abs_diff(out[k], out[0], (size_t)STEPS * B * V);
        printf("  decode, %d devices: max |diff| vs one device %.3g\n", k + 1, d);
        CHECKF(d == 0, "%d devices: decode logits differ by up to %.3g", k + 1, d);
    }
    for (int k = 0; k < 3; k++) free(out[k]);
}

static void conformance_holds_split(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    /* case a: every block and the MTP block, on the third device */
    char *a1[] = {"conformance", "--model", GOLDEN, "--golden", GOLDEN "/case_a.safetensors", "--devices", "0,0,0",
                  "--split", "2,2,1", NULL};
    int rc = dsv4_cmd_conformance(9, a1);
    CHECKF(rc == 0, "conformance case a on 0,0,0 split 2,2,1 exited %d", rc);
    /* case b: 1030 tokens, a pipelined prefill of five chunks */
    char *a2[] = {"conformance", "--model", GOLDEN, "--golden", GOLDEN "/case_b.safetensors", "--devices", "0,0",
                  "--split", "3,2", NULL};
    rc = dsv4_cmd_conformance(9, a2);
    CHECKF(rc == 0, "conformance case b on 0,0 split 3,2 exited %d", rc);
}

typedef struct { dsv4_state_chunk c; uint8_t *mem; } chunk_buf;

/* Room for every stream's rows at n tokens and the boundary. */
static int chunk_alloc(const dsv4_state_layout *L, int64_t n, chunk_buf *cb)
{
    size_t total = L->boundary_bytes;
    for (uint32_t i = 0; i < L->n_streams; i++)
        total += (size_t)(n / L->streams[i].ratio) * L->streams[i].row_bytes;
    memset(cb, 0, sizeof *cb);
    cb->mem = calloc(total ? total : 1, 1);
    cb->c.rows = calloc(L->n_streams ? L->n_streams : 1, sizeof *cb->c.rows);
    if (!cb->mem || !cb->c.rows) return -1;
    uint8_t *p = cb->mem;
    for (uint32_t i = 0; i < L->n_streams; i++) {
        cb->c.rows[i] = p;
        p += (size_t)(n / L->streams[i].ratio) * L->streams[i].row_bytes;
    }
    cb->c.boundary = p;
    return 0;
}

static void chunk_free(chunk_buf *cb)
{
    free(cb->mem);
    free(cb->c.rows);
}

static size_t chunk_bytes(const dsv4_state_layout *L, int64_t n)
{
    size_t total = L->boundary_bytes;
    for (uint32_t i = 0; i < L->n_streams; i++)
        total += (size_t)(n / L->streams[i].ratio) * L->streams[i].row_bytes;
    return total;
}

/* Prefill tok[0, N_CUT) on `from`, export, import into `to`, prefill the
   rest there: logits of [N_CUT, N_PRE) must be the one-device ones. The
   exported bytes are returned in cb for comparing between engines. */
static void export_import(dsv4_engine *from, dsv4_engine *to, const char *what, chunk_buf *cb)
{
    char err[512];
    const dsv4_state_layout *L = dsv4_engine_state_layout(from);
    dsv4_seq *s = NULL, *t = NULL;
    float *got = malloc((size_t)(N_PRE - N_CUT) * V * sizeof *got);
    int rc = chunk_alloc(L, N_CUT, cb) || !got ? DSV4_ENOMEM : 0;
    if (!rc) rc = dsv4_seq_create(from, &s, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(s, tok, N_CUT, NULL, 0, err, sizeof err);
    if (!rc) rc = dsv4_seq_export(s, 0, &cb->c, err, sizeof err);
    if (!rc) rc = dsv4_seq_create(to, &t, err, sizeof err);
    if (!rc) rc = dsv4_seq_import(t, &cb->c, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(t, tok + N_CUT, N_PRE - N_CUT, got, N_PRE - N_CUT, err, sizeof err);
    CHECKF(rc == 0, "%s: %s", what, err);
    if (!rc) {
        double d = max_abs_diff(got, ref + (size_t)N_CUT * V, (size_t)(N_PRE - N_CUT) * V);
        printf("  %-40s max |diff| after import %.3g\n", what, d);
        CHECKF(d == 0, "%s: logits after import differ by up to %.3g", what, d);
    }
    dsv4_seq_free(s);
    dsv4_seq_free(t);
    free(got);
}

/* Where two records differ: per stream, then per byte range of the boundary
   (printed only on a mismatch, to say which state a device got wrong). */
static void explain_diff(const dsv4_state_layout *L, const chunk_buf *a, const chunk_buf *b, int64_t n)
{
    size_t off = 0;
    for (uint32_t i = 0; i < L->n_streams; i++) {
        size_t len = (size_t)(n / L->streams[i].ratio) * L->streams[i].row_bytes, d = 0;
        for (size_t j = 0; j < len; j++) d += a->mem[off + j] != b->mem[off + j];
        if (d) printf("  stream %s: %zu of %zu bytes differ\n", L->streams[i].name, d, len);
        off += len;
    }
    size_t first = (size_t)-1, last = 0, d = 0;
    for (size_t j = 0; j < L->boundary_bytes; j++)
        if (a->mem[off + j] != b->mem[off + j]) {
            if (first == (size_t)-1) first = j;
            last = j;
            d++;
        }
    if (d) printf("  boundary: %zu of %llu bytes differ, offsets %zu..%zu\n", d,
                  (unsigned long long)L->boundary_bytes, first, last);
}

static void state_moves_between_splits(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    const dsv4_state_layout *L1 = dsv4_engine_state_layout(one), *L2 = dsv4_engine_state_layout(two);
    CHECK(L1->n_streams == L2->n_streams && L1->boundary_bytes == L2->boundary_bytes);
    for (uint32_t i = 0; i < L1->n_streams && i < L2->n_streams; i++)
        CHECK(strcmp(L1->streams[i].name, L2->streams[i].name) == 0 &&
              L1->streams[i].row_bytes == L2->streams[i].row_bytes);
    chunk_buf c21, c13, c32;
    export_import(two, one, "split 3,2 -> one device", &c21);
    export_import(one, three, "one device -> split 2,2,1", &c13);
    export_import(three, two, "split 2,2,1 -> split 3,2", &c32);
    /* the record does not depend on the split: same bytes from each engine */
    size_t n = chunk_bytes(L1, N_CUT);
    CHECK(c21.mem && c13.mem && c32.mem);
    if (c21.mem && c13.mem && c32.mem) {
        CHECKF(memcmp(c21.mem, c13.mem, n) == 0, "export of split 3,2 differs from one device's");
        if (memcmp(c21.mem, c13.mem, n)) explain_diff(L1, &c21, &c13, N_CUT);
        CHECKF(memcmp(c32.mem, c13.mem, n) == 0, "export of split 2,2,1 differs from one device's");
        if (memcmp(c32.mem, c13.mem, n)) explain_diff(L1, &c32, &c13, N_CUT);
    }
    chunk_free(&c21);
    chunk_free(&c13);
    chunk_free(&c32);
}

static void run_block_on_split(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    /* block 3 lives on the second device of `two`: same output as on one */
    enum { T = 40 };
    const dsv4_model_info *mi = dsv4_engine_info(one);
    size_t row = (size_t)4 * mi->hidden_size; /* hc_mult 4 in the tiny config */
    float *x = malloc(T * row * sizeof *x), *y1 = malloc(T * row * sizeof *x), *y2 = malloc(T * row * sizeof *x);
    uint32_t seed = 7;
    for (size_t i = 0; i < T * row; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f);
    }
    char err[512];
    int rc = dsv4_engine_run_block(one, 3, tok, T, x, y1, err, sizeof err);
    if (!rc) rc = dsv4_engine_run_block(two, 3, tok, T, x, y2, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) CHECKF(max_abs_diff(y1, y2, T * row) == 0, "block 3 differs on the split engine");
    free(x);
    free(y1);
    free(y2);
}

/* No split given: placed by free memory (printed with verbose), same logits. */
static void automatic_placement(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    char err[512];
    dsv4_engine *e = NULL;
    dsv4_engine_options o = {.devices = "0,0", .verbose = 1};
    setenv("DSV4_EXACT", "1", 1); /* the default chunk differs from the reference's */
    int rc = dsv4_engine_open(GOLDEN, &o, &e, err, sizeof err);
    unsetenv("DSV4_EXACT");
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    enum { N = 20 };
    float *got = malloc((size_t)N * V * sizeof *got);
    dsv4_seq *q = NULL;
    rc = dsv4_seq_create(e, &q, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(q, tok, N, got, N, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) CHECKF(max_abs_diff(got, ref, (size_t)N * V) == 0, "logits differ from one device");
    dsv4_seq_free(q);
    free(got);
    dsv4_engine_close(e);
}

/* Synthetic weights (the bench) split too; with no layer count they keep as
   many layers as fit all devices: all five of the tiny config. */
static void synthetic_split_keeps_all_layers(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    char note[512];
    dsv4_engine *e = NULL;
    dsv4_engine_options o = {.devices = "0,0"};
    int rc = dsv4_engine_open_synthetic(GOLDEN "/config.json", 0, &o, &e, note, sizeof note);
    CHECKF(rc == 0, "%s", note);
    if (rc) return;
    printf("  %s\n", note);
    CHECK(dsv4_engine_info(e)->num_hidden_layers == 5);
    CHECKF(strstr(note, "layers=5/5 ") && strstr(note, " split=") && strstr(note, "selected=0,1,2,3,4"), "%s", note);
    CHECKF(strstr(dsv4_engine_device_name(e), " + ") != NULL, "%s", dsv4_engine_device_name(e));
    char err[512];
    dsv4_seq *q = NULL;
    float *lg = malloc((size_t)V * sizeof *lg);
    rc = dsv4_seq_create(e, &q, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(q, tok, 20, lg, 1, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    int finite = 1;
    for (int i = 0; i < V && !rc; i++) finite &= isfinite(lg[i]) != 0;
    CHECK(finite);
    dsv4_seq_free(q);
    free(lg);
    dsv4_engine_close(e);
    /* an explicit split sets the count */
    o.split = "1,2";
    rc = dsv4_engine_open_synthetic(GOLDEN "/config.json", 0, &o, &e, note, sizeof note);
    CHECKF(rc == 0, "%s", note);
    if (!rc) CHECKF(strstr(note, "layers=3/5 ") && strstr(note, " split=1,2 "), "%s", note);
    dsv4_engine_close(e);
}

static void expect_open_error(const char *devices, const char *split, int use_env, int want_rc, const char *want)
{
    char err[512] = "";
    dsv4_engine *e = NULL;
    dsv4_engine_options o = {0};
    if (use_env) {
        setenv("DSV4_DEVICES", devices, 1);
        setenv("DSV4_SPLIT", split, 1);
    } else {
        o.devices = devices;
        o.split = split;
    }
    int rc = dsv4_engine_open(GOLDEN, &o, &e, err, sizeof err);
    unsetenv("DSV4_DEVICES");
    unsetenv("DSV4_SPLIT");
    dsv4_engine_close(e);
    printf("  devices %s split %s: %s\n", devices, split, err);
    CHECKF(rc == want_rc, "devices %s split %s: rc %d, want %d", devices, split, rc, want_rc);
    CHECKF(strstr(err, want) != NULL, "devices %s split %s: message '%s' lacks '%s'", devices, split, err, want);
}

static void bad_split_is_named(void)
{
    if (setup()) SKIP("no Vulkan device (or the engines did not open)");
    expect_open_error("0,0", "3,3", 1, DSV4_EINVAL, "split gives 6 blocks in all, the model has 5");
    expect_open_error("0,0,0", "3,0,2", 1, DSV4_EINVAL, "DSV4_SPLIT \"3,0,2\": device 2 gets 0 blocks");
    expect_open_error("0,0,0", "3,2", 1, DSV4_EINVAL, "DSV4_SPLIT \"3,2\" has 2 entries for 3 devices");
    expect_open_error("0,0", "3,x", 0, DSV4_EINVAL, "split \"3,x\": entry 2 \"x\" is not a number of blocks");
    expect_open_error("0,no-such-gpu", "3,2", 1, DSV4_EDEVICE, "DSV4_DEVICES device 2 \"no-such-gpu\"");
}

int main(void)
{
    RUN(prefill_matches_one_device);
    RUN(decode_of_forks_matches_one_device);
    RUN(state_moves_between_splits);
    RUN(run_block_on_split);
    RUN(conformance_holds_split);
    RUN(automatic_placement);
    RUN(synthetic_split_keeps_all_layers);
    RUN(bad_split_is_named);
    dsv4_engine_close(one);
    dsv4_engine_close(two);
    dsv4_engine_close(three);
    free(ref);
    CHECK_EXIT();
}
