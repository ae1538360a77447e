/* The CPU reference (tests/ref_model.c) against the golden outputs of the
 * official DeepSeek-V4 model code in tests/golden/tiny/ (see its README):
 * per block teacher-forced on case a, whole-model prefill and decode logits
 * on cases a, b, c, the MTP block on case a, and chunked prefill against
 * one-shot prefill. The thresholds are pipeline/conformance.h's. Every metric
 * is printed so a run shows how close the reference is, not just pass/fail. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "pipeline/conformance.h"
#include "tests/check.h"
#include "tests/ref_model.h"

#define GOLDEN "tests/golden/tiny"

static dsv4_model *model;
static ref_model *ref;

static int open_model(void)
{
    char err[512];
    if (ref) return 0;
    if (dsv4_model_load(GOLDEN, &model, err, sizeof err) < 0) {
        printf("  %s\n", err);
        return -1;
    }
    if (ref_model_open(model, &ref, err, sizeof err) < 0) {
        printf("  %s\n", err);
        return -1;
    }
    return 0;
}

typedef struct golden_case {
    dsv4_st_set *st;
    int64_t P, steps, n_tokens;
    int32_t *tokens;
} golden_case;

/* A tensor of the case as f32/i32 copied out (the mapping may be unaligned). */
static void *case_tensor(golden_case *g, const char *name, dsv4_dtype dt, int64_t *numel)
{
    const dsv4_tensor *t = dsv4_st_find(g->st, name);
    if (!t || t->dtype != dt) return NULL;
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    if (!p) return NULL;
    memcpy(p, t->data, t->nbytes);
    if (numel) *numel = (int64_t)(t->nbytes / dsv4_dtype_size(dt));
    return p;
}

static int open_case(const char *name, golden_case *g)
{
    char path[256], err[512];
    memset(g, 0, sizeof *g);
    snprintf(path, sizeof path, GOLDEN "/case_%s.safetensors", name);
    if (dsv4_st_open_file(path, &g->st, err, sizeof err) < 0) {
        printf("  %s\n", err);
        return -1;
    }
    g->tokens = case_tensor(g, "tokens", DSV4_DT_I32, &g->n_tokens);
    const dsv4_tensor *pl = dsv4_st_find(g->st, "prefill_logits");
    const dsv4_tensor *dl = dsv4_st_find(g->st, "decode_logits");
    if (!g->tokens || !pl || !dl) return -1;
    g->P = pl->shape[0];
    g->steps = dl->shape[0];
    return 0;
}

static void close_case(golden_case *g)
{
    dsv4_st_close(g->st);
    free(g->tokens);
}

static void report(const char *what, const dsv4_conf_stats *st)
{
    if (st->top1 >= 0)
        printf("  %-28s n=%-5lld median %.3g  p90 %.3g  p99 %.3g  max %.3g  top1 %.3f\n", what,
               (long long)st->n, st->median, st->p90, st->p99, st->max, st->top1);
    else
        printf("  %-28s n=%-5lld median %.3g  p90 %.3g  p99 %.3g  max %.3g\n", what,
               (long long)st->n, st->median, st->p90, st->p99, st->max);
}

static void per_block_case_a(void)
{
    if (open_model() < 0) { CHECK(!"model loads"); return; }
    golden_case g;
    if (open_case("a", &g) < 0) { CHECK(!"case a opens"); return; }
    const dsv4_config *c = ref_model_config(ref);
    int64_t P = g.P, row = (int64_t)c->hc_mult * c->hidden_size;
    float *in = malloc((size_t)(P * row) * sizeof(float));
    float *out = malloc((size_t)(P * row) * sizeof(float));
    ref_embed(ref, g.tokens, P, in);
    for (int k = 0; k < c->num_hidden_layers; k++) {
        char name[64];
        snprintf(name, sizeof name, "layer_out.%d", k);
        float *want = case_tensor(&g, name, DSV4_DT_F32, NULL);
        CHECK(want != NULL);
        if (!want) break;
        ref_seq *s;
        ref_seq_create(ref, &s);
        ref_seq_block(s, k, g.tokens, P, in, out);
        ref_seq_free(s);
        dsv4_conf_stats st;
        dsv4_conf_compare(out, want, P, row, 0, &st);
        snprintf(name, sizeof name, "block %d (teacher-forced)", k);
        report(name, &st);
        CHECKF(dsv4_conf_block_ok(&st), "block %d median %g p90 %g p99 %g", k, st.median, st.p90,
               st.p99);
        memcpy(in, want, (size_t)(P * row) * sizeof(float)); /* teacher forcing */
        free(want);
    }
    free(in);
    free(out);
    close_case(&g);
}

/* Prefill + teacher-forced decode of one case; for case a also the MTP. */
static void whole_model(const char *name)
{
    if (open_model() < 0) { CHECK(!"model loads"); return; }
    golden_case g;
    if (open_case(name, &g) < 0) { CHECK(!"case opens"); return; }
    const dsv4_config *c = ref_model_config(ref);
    int64_t V = c->vocab_size, P = g.P;
    float *want_p = case_tensor(&g, "prefill_logits", DSV4_DT_F32, NULL);
    float *want_d = case_tensor(&g, "decode_logits", DSV4_DT_F32, NULL);
    float *got_p = malloc((size_t)(P * V) * sizeof(float));
    float *got_d = malloc((size_t)(g.steps * V) * sizeof(float));
    CHECK(g.n_tokens >= P + g.steps);
    ref_seq *s;
    ref_seq_create(ref, &s);
    ref_seq_forward(s, g.tokens, P, got_p, NULL);
    for (int64_t i = 0; i < g.steps && P + i < g.n_tokens; i++)
        ref_seq_forward(s, g.tokens + P + i, 1, got_d + i * V, NULL);
    ref_seq_free(s);
    dsv4_conf_stats st;
    char what[64];
    dsv4_conf_compare(got_p, want_p, P, V, 1, &st);
    snprintf(what, sizeof what, "case %s prefill logits", name);
    report(what, &st);
    CHECKF(dsv4_conf_logits_ok(&st), "case %s prefill median %g top1 %g", name, st.median, st.top1);
    dsv4_conf_compare(got_d, want_d, g.steps, V, 1, &st);
    snprintf(what, sizeof what, "case %s decode logits", name);
    report(what, &st);
    CHECKF(dsv4_conf_logits_ok(&st), "case %s decode median %g top1 %g", name, st.median, st.top1);

    float *want_m = case_tensor(&g, "mtp_logits", DSV4_DT_F32, NULL);
    float *h = case_tensor(&g, "layer_out.4", DSV4_DT_F32, NULL);
    if (want_m && h && g.n_tokens > P) {
        /* The MTP block on the official last-block output, token t+1 at t. */
        ref_seq_create(ref, &s);
        ref_seq_mtp(s, g.tokens + 1, P, h, got_p);
        ref_seq_free(s);
        dsv4_conf_compare(got_p, want_m, P, V, 1, &st);
        report("case a MTP logits", &st);
        CHECKF(dsv4_conf_logits_ok(&st), "MTP median %g top1 %g", st.median, st.top1);
    }
    free(want_m);
    free(h);
    free(want_p);
    free(want_d);
    free(got_p);
    free(got_d);
    close_case(&g);
}

static void whole_model_case_a(void) { whole_model("a"); }
static void whole_model_case_b(void) { whole_model("b"); }
static void whole_model_case_c(void) { whole_model("c"); }

/* Chunked prefill of case a's prompt in chunks of 1, 7, 64 and 300 against
 * one-shot prefill. Chunk size 1 runs on a prefix (it is the slowest), long
 * enough to cross the window (64) and several compression boundaries. */
static void chunked_prefill(void)
{
    if (open_model() < 0) { CHECK(!"model loads"); return; }
    golden_case g;
    if (open_case("a", &g) < 0) { CHECK(!"case a opens"); return; }
    const dsv4_config *c = ref_model_config(ref);
    int64_t V = c->vocab_size, P = g.P;
    float *one = malloc((size_t)(P * V) * sizeof(float));
    float *got = malloc((size_t)(P * V) * sizeof(float));
    ref_seq *s;
    ref_seq_create(ref, &s);
    ref_seq_forward(s, g.tokens, P, one, NULL);
    ref_seq_free(s);
    const int64_t chunks[] = {1, 7, 64, 300};
    for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
        int64_t ch = chunks[ci], n = ch == 1 ? 140 : P;
        ref_seq_create(ref, &s);
        for (int64_t p = 0; p < n; p += ch) {
            int64_t m = n - p < ch ? n - p : ch;
            ref_seq_forward(s, g.tokens + p, m, got + p * V, NULL);
        }
        CHECK(ref_seq_pos(s) == n);
        ref_seq_free(s);
        dsv4_conf_stats st;
        dsv4_conf_compare(got, one, n, V, 1, &st);
        char what[64];
        snprintf(what, sizeof what, "chunks of %lld (%lld tokens)", (long long)ch, (long long)n);
        report(what, &st);
        CHECKF(dsv4_conf_chunk_ok(&st), "chunk %lld median %g", (long long)ch, st.median);
    }
    free(one);
    free(got);
    close_case(&g);
}

int main(void)
{
    RUN(per_block_case_a);
    RUN(whole_model_case_a);
    RUN(whole_model_case_b);
    RUN(whole_model_case_c);
    RUN(chunked_prefill);
    ref_model_close(ref);
    dsv4_model_free(model);
    CHECK_EXIT();
}
