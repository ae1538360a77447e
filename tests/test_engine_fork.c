/* Forks that share their prefix (engine/forward.c: lstate_fork), on the
 * Vulkan device (lavapipe here) with the tiny golden model. One scenario,
 * run on a sharing engine, on an engine with DSV4_FORK_COPY=1 (forks copy
 * the whole state, the earlier behaviour) and on two lavapipe devices
 * (DSV4_DEVICES=0,0):
 *   - a parent prefills a prefix; two forks prefill their own questions
 *     (one past its own buffer's first capacity, so it grows over a shared
 *     base), a fork of a fork follows (it copies its parent's own rows and
 *     shares the base); the parent decodes in one batch with the forks
 *     (which read its buffer), prefills on past its own capacity (appending
 *     rows to that buffer, then reallocating it while the forks hold the
 *     old one), decodes with them again and is freed before them; the
 *     forks decode on together;
 *   - every fork's logits (question prefill and each decode step) are
 *     bit-identical to a fresh sequence that prefilled the same tokens in
 *     one go and decoded alone, and to the copying engine's;
 *   - the export of the fork of a fork is byte-identical to the export of
 *     its fresh twin (rows and boundary);
 *   - dsv4_seq_state_bytes: a fork owns far less than its parent and reads
 *     the prefix's rows as shared bytes; a copied fork owns as much as its
 *     parent and shares nothing.
 * Skipped when there is no Vulkan device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "tests/check.h"

#define GOLDEN "tests/golden/tiny"

/* prefix, then the parent's continuation past its first capacity (1024
   tokens: 256 rows of ratio 4) */
#define N_PREFIX 300
#define N_MORE 780
#define N_Q0 70 /* past a fork's first 16 own rows of ratio 4 */
#define N_Q1 9
#define N_Q2 5
#define N_STEPS 3
#define NF 3

static int V;

static void make_tokens(int32_t *t, int n, uint32_t seed, int vocab)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (int32_t)((seed >> 8) % (uint32_t)vocab);
    }
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

static int open_engine(const char *devices, int fork_copy, dsv4_engine **out)
{
    char err[512];
    if (fork_copy) setenv("DSV4_FORK_COPY", "1", 1);
    dsv4_engine_options o = {.devices = devices, .split = devices ? "3,2" : NULL};
    int rc = dsv4_engine_open(GOLDEN, devices ? &o : NULL, out, err, sizeof err);
    unsetenv("DSV4_FORK_COPY");
    if (rc) printf("  open (devices %s, fork copy %d): %s\n", devices ? devices : "-", fork_copy, err);
    return rc;
}

/* The tokens of each fork: the prefix, its question(s), its decode steps. */
typedef struct {
    int32_t prefix[N_PREFIX + N_MORE + 1], q[NF][N_Q0], step[N_STEPS][NF + 1];
} tokens;

/* What a scenario produces, for comparison between engines. */
typedef struct {
    float *qlog;   /* [NF][V]: last logits of each fork's question prefill */
    float *dlog;   /* [N_STEPS][NF + 1][V]: decode logits (step 0: the forks and the parent) */
    uint64_t own_parent, own_fork, shared_fork; /* at the fork */
    uint64_t own_parent_long, own_fork_long;    /* after the parent's continuation */
    uint8_t *exp;  /* export of fork 2 (rows of every stream, then the boundary) */
    size_t exp_bytes;
} outcome;

/* Exports a whole sequence into one byte string (the streams' rows in
   order, then the boundary). */
static int export_all(dsv4_engine *e, dsv4_seq *s, uint8_t **out, size_t *bytes, char *err, size_t errlen)
{
    const dsv4_state_layout *L = dsv4_engine_state_layout(e);
    int64_t pos = dsv4_seq_pos(s);
    size_t total = L->boundary_bytes;
    for (uint32_t k = 0; k < L->n_streams; k++) total += (size_t)dsv4_state_rows_at(&L->streams[k], pos) * L->streams[k].row_bytes;
    uint8_t *buf = malloc(total);
    uint8_t **rows = calloc(L->n_streams ? L->n_streams : 1, sizeof *rows);
    if (!buf || !rows) {
        free(buf);
        free(rows);
        return DSV4_ENOMEM;
    }
    size_t off = 0;
    for (uint32_t k = 0; k < L->n_streams; k++) {
        rows[k] = buf + off;
        off += (size_t)dsv4_state_rows_at(&L->streams[k], pos) * L->streams[k].row_bytes;
    }
    dsv4_state_chunk ch = {.rows = rows, .boundary = buf + off};
    int rc = dsv4_seq_export(s, 0, &ch, err, errlen);
    free(rows);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *bytes = total;
    return 0;
}

static int scenario(dsv4_engine *e, const tokens *tk, outcome *o, char *err, size_t errlen)
{
    const int qn[NF] = {N_Q0, N_Q1, N_Q2};
    dsv4_seq *parent = NULL, *f[NF] = {0}, *scribble = NULL;
    int rc = dsv4_seq_create(e, &parent, err, errlen);
    if (!rc) rc = dsv4_seq_prefill(parent, tk->prefix, N_PREFIX, NULL, 0, err, errlen);
    if (!rc) rc = dsv4_seq_fork(parent, &f[0], err, errlen);
    if (!rc) rc = dsv4_seq_fork(parent, &f[1], err, errlen);
    if (!rc) {
        dsv4_seq_state_bytes(parent, &o->own_parent, NULL);
        dsv4_seq_state_bytes(f[0], &o->own_fork, &o->shared_fork);
    }
    for (int i = 0; i < 2 && !rc; i++)
        rc = dsv4_seq_prefill(f[i], tk->q[i], qn[i], o->qlog + (size_t)i * V, 1, err, errlen);
    /* a fork of a fork: shares the base, copies fork 0's own rows */
    if (!rc) rc = dsv4_seq_fork(f[0], &f[2], err, errlen);
    if (!rc) rc = dsv4_seq_prefill(f[2], tk->q[2], qn[2], o->qlog + (size_t)2 * V, 1, err, errlen);
    /* step 0: the parent decodes with its forks while they read its
       buffer; then it prefills on, appending rows there and growing past
       its capacity while the forks hold the old buffer; step 1 with the
       forks again; then it is freed first and the forks go on */
    dsv4_seq *batch[NF + 1] = {f[0], f[1], f[2], parent};
    for (int s = 0; s < N_STEPS && !rc; s++) {
        rc = dsv4_decode(batch, s < 2 ? NF + 1 : NF, tk->step[s], o->dlog + (size_t)s * (NF + 1) * V, err, errlen);
        if (s == 0 && !rc) {
            rc = dsv4_seq_prefill(parent, tk->prefix + N_PREFIX, N_MORE, NULL, 0, err, errlen);
            if (!rc) {
                dsv4_seq_state_bytes(parent, &o->own_parent_long, NULL);
                dsv4_seq_state_bytes(f[1], &o->own_fork_long, NULL);
            }
        }
        if (s == 1) {
            dsv4_seq_free(parent);
            parent = NULL;
            /* a new sequence's zeroed buffers would land on a buffer freed
               while the forks still read it */
            if (!rc) rc = dsv4_seq_create(e, &scribble, err, errlen);
        }
    }
    if (!rc) rc = export_all(e, f[2], &o->exp, &o->exp_bytes, err, errlen);
    dsv4_seq_free(parent);
    dsv4_seq_free(scribble);
    for (int i = 0; i < NF; i++) dsv4_seq_free(f[i]);
    return rc;
}

/* Fork i's logits from fresh sequences: all its tokens in one prefill, then
   each decode step alone. */
static void check_against_fresh(dsv4_engine *e, const tokens *tk, const outcome *o)
{
    char err[512];
    const int qn[NF] = {N_Q0, N_Q1, N_Q2};
    float *lg = malloc((size_t)V * 4);
    int32_t *all = malloc((size_t)(N_PREFIX + N_Q0 + N_Q2) * 4);
    for (int i = 0; i < NF; i++) {
        int n = N_PREFIX;
        memcpy(all, tk->prefix, N_PREFIX * 4);
        if (i == 2) { /* fork 2 came from fork 0 after its question */
            memcpy(all + n, tk->q[0], N_Q0 * 4);
            n += N_Q0;
        }
        memcpy(all + n, tk->q[i], (size_t)qn[i] * 4);
        n += qn[i];
        dsv4_seq *s = NULL;
        int rc = dsv4_seq_create(e, &s, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(s, all, n, lg, 1, err, sizeof err);
        CHECKF(rc == 0, "fresh %d: %s", i, err);
        if (!rc)
            CHECKF(max_abs_diff(lg, o->qlog + (size_t)i * V, V) == 0, "fork %d: question prefill differs by %g", i,
                   max_abs_diff(lg, o->qlog + (size_t)i * V, V));
        for (int st = 0; st < N_STEPS && !rc; st++) {
            rc = dsv4_decode(&s, 1, &tk->step[st][i], lg, err, sizeof err);
            CHECKF(rc == 0, "%s", err);
            const float *b = o->dlog + ((size_t)st * (NF + 1) + i) * V;
            if (!rc) CHECKF(max_abs_diff(lg, b, V) == 0, "fork %d step %d: batched fork differs from fresh by %g", i, st,
                            max_abs_diff(lg, b, V));
        }
        if (i == 2 && !rc) {
            uint8_t *x = NULL;
            size_t nb = 0;
            rc = export_all(e, s, &x, &nb, err, sizeof err);
            CHECKF(rc == 0, "%s", err);
            if (!rc) CHECKF(nb == o->exp_bytes && memcmp(x, o->exp, nb) == 0,
                            "export of a fork of a fork differs from the unforked sequence's (%zu vs %zu bytes)",
                            o->exp_bytes, nb);
            free(x);
        }
        dsv4_seq_free(s);
    }
    free(lg);
    free(all);
}

static void outcome_free(outcome *o)
{
    free(o->qlog);
    free(o->dlog);
    free(o->exp);
}

static int outcome_alloc(outcome *o)
{
    memset(o, 0, sizeof *o);
    o->qlog = calloc((size_t)NF * V, 4);
    o->dlog = calloc((size_t)N_STEPS * (NF + 1) * V, 4);
    return o->qlog && o->dlog ? 0 : -1;
}

static void same_outcome(const outcome *a, const outcome *b, const char *what)
{
    CHECKF(max_abs_diff(a->qlog, b->qlog, (size_t)NF * V) == 0, "%s: question logits differ", what);
    /* steps 0 and 1 include the parent's decode, before and after its continuation */
    for (int s = 0; s < N_STEPS; s++) {
        size_t n = (size_t)(s < 2 ? NF + 1 : NF) * V;
        double d = max_abs_diff(a->dlog + (size_t)s * (NF + 1) * V, b->dlog + (size_t)s * (NF + 1) * V, n);
        CHECKF(d == 0, "%s: step %d differs by %g", what, s, d);
    }
    CHECKF(a->exp_bytes == b->exp_bytes && memcmp(a->exp, b->exp, a->exp_bytes) == 0, "%s: exports differ", what);
}

static dsv4_engine *eng;
static tokens tk;
static outcome shared_run;
static int have_shared = -1, open_rc;

static int setup(void)
{
    if (have_shared >= 0) return have_shared ? 0 : -1;
    have_shared = 0;
    open_rc = open_engine(NULL, 0, &eng);
    if (open_rc) return -1;
    V = dsv4_engine_info(eng)->vocab_size;
    make_tokens(tk.prefix, N_PREFIX + N_MORE + 1, 21, V);
    for (int i = 0; i < NF; i++) make_tokens(tk.q[i], N_Q0, 40 + i, V);
    make_tokens(&tk.step[0][0], N_STEPS * (NF + 1), 77, V);
    char err[512];
    if (outcome_alloc(&shared_run)) return -1;
    int rc = scenario(eng, &tk, &shared_run, err, sizeof err);
    CHECKF(rc == 0, "scenario: %s", err);
    if (rc) return -1;
    have_shared = 1;
    return 0;
}

static void forks_match_fresh_sequences(void)
{
    if (setup()) {
        if (open_rc == DSV4_EDEVICE) SKIP("no Vulkan device");
        else CHECK(have_shared == 1);
        return;
    }
    check_against_fresh(eng, &tk, &shared_run);
}

static void forks_own_little_memory(void)
{
    if (setup()) {
        if (open_rc == DSV4_EDEVICE) SKIP("no Vulkan device");
        else CHECK(have_shared == 1);
        return;
    }
    const outcome *o = &shared_run;
    printf("  at %d tokens: parent owns %llu bytes, a fork owns %llu and shares %llu\n", N_PREFIX,
           (unsigned long long)o->own_parent, (unsigned long long)o->own_fork, (unsigned long long)o->shared_fork);
    printf("  parent at %d tokens owns %llu bytes, a fork at %d owns %llu\n", N_PREFIX + 1 + N_MORE,
           (unsigned long long)o->own_parent_long, N_PREFIX + N_Q1, (unsigned long long)o->own_fork_long);
    /* tiny: CSA layers 1, 3 (192 + 128 floats per row of ratio 4), HCA 2, 4
       (192 floats, ratio 128): 75 and 2 rows at 300 tokens */
    CHECK(o->shared_fork == 2ull * 75 * (192 + 128) * 4 + 2ull * 2 * 192 * 4);
    CHECKF(o->own_fork < o->own_parent, "fork owns %llu of the parent's %llu bytes",
           (unsigned long long)o->own_fork, (unsigned long long)o->own_parent);
    /* the fork's own part stays at its rings and a few rows (the tiny
       model's rings are a large part of its state; V4-Flash's rows are) */
    CHECKF(o->own_fork_long * 2 < o->own_parent_long, "fork owns %llu of the parent's %llu bytes",
           (unsigned long long)o->own_fork_long, (unsigned long long)o->own_parent_long);
}

static void copying_forks_give_the_same_bits(void)
{
    if (setup()) {
        if (open_rc == DSV4_EDEVICE) SKIP("no Vulkan device");
        else CHECK(have_shared == 1);
        return;
    }
    dsv4_engine *cp = NULL;
    if (open_engine(NULL, 1, &cp)) {
        CHECK(0);
        return;
    }
    char err[512];
    outcome o;
    CHECK(outcome_alloc(&o) == 0);
    int rc = scenario(cp, &tk, &o, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) {
        same_outcome(&shared_run, &o, "DSV4_FORK_COPY=1");
        CHECK(o.shared_fork == 0 && o.own_fork == o.own_parent);
    }
    outcome_free(&o);
    dsv4_engine_close(cp);
}

static void forks_on_two_devices(void)
{
    if (setup()) {
        if (open_rc == DSV4_EDEVICE) SKIP("no Vulkan device");
        else CHECK(have_shared == 1);
        return;
    }
    dsv4_engine *two = NULL;
    if (open_engine("0,0", 0, &two)) {
        CHECK(0);
        return;
    }
    char err[512];
    outcome o;
    CHECK(outcome_alloc(&o) == 0);
    int rc = scenario(two, &tk, &o, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) {
        same_outcome(&shared_run, &o, "two devices");
        CHECK(o.shared_fork == shared_run.shared_fork && o.own_fork == shared_run.own_fork);
    }
    outcome_free(&o);
    dsv4_engine_close(two);
}

int main(void)
{
    RUN(forks_match_fresh_sequences);
    RUN(forks_own_little_memory);
    RUN(copying_forks_give_the_same_bits);
    RUN(forks_on_two_devices);
    outcome_free(&shared_run);
    dsv4_engine_close(eng);
    CHECK_EXIT();
}
