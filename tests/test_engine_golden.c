/* The engine on the Vulkan device (lavapipe here) against the golden outputs
 * of the official DeepSeek-V4 model code (tests/golden/tiny/README.md):
 *   - `dsv4-batch conformance` on every case: per block teacher-forced and
 *     MTP on case a, whole-model prefill and teacher-forced decode logits on
 *     cases a, b, c (thresholds of pipeline/conformance.h; the command exits
 *     0 only when all pass);
 *   - chunked-prefill self-consistency: prefill of the same tokens in chunks
 *     of 1 (first 140 tokens), 7, 64 and 300 (all 320) against one call
 *     (median per-position relative error <= 1e-3, and in fact bit-identical
 *     logits, which is checked too), which pins down the
 *     window ring, the compressors' partial state and the indexer across
 *     calls.
 * Skipped when there is no Vulkan device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"
#include "pipeline/conformance.h"
#include "pipeline/dsv4_cli.h"
#include "tests/check.h"

#define GOLDEN "tests/golden/tiny"

static int have_device(void)
{
    char err[256];
    dsv4_engine *e;
    if (dsv4_engine_open(GOLDEN, NULL, &e, err, sizeof err) == DSV4_EDEVICE) return 0;
    dsv4_engine_close(e);
    return 1;
}

static void run_case(const char *name)
{
    if (!have_device()) SKIP("no Vulkan device");
    char golden[128];
    snprintf(golden, sizeof golden, GOLDEN "/case_%s.safetensors", name);
    char *argv[] = {"conformance", "--model", GOLDEN, "--golden", golden, NULL};
    int rc = dsv4_cmd_conformance(5, argv);
    CHECKF(rc == 0, "conformance of case %s exited %d", name, rc);
}

static void case_a_blocks_mtp_prefill_decode(void) { run_case("a"); }
static void case_b_prefill_decode(void) { run_case("b"); }
static void case_c_prefill_decode(void) { run_case("c"); }

static void chunked_prefill_matches_one_shot(void)
{
    char err[512];
    /* one engine pass for the one-shot reference: no internal split */
    setenv("DSV4_CHUNK", "512", 1);
    dsv4_engine *e = NULL;
    int rc = dsv4_engine_open(GOLDEN, NULL, &e, err, sizeof err);
    unsetenv("DSV4_CHUNK");
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    dsv4_st_set *cs = NULL;
    rc = dsv4_st_open_file(GOLDEN "/case_a.safetensors", &cs, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    const dsv4_tensor *tt = cs ? dsv4_st_find(cs, "tokens") : NULL;
    CHECK(tt != NULL && tt->nbytes >= 320 * 4);
    if (!tt || tt->nbytes < 320 * 4) goto out;
    enum { N = 320 };
    int32_t tokens[N];
    memcpy(tokens, tt->data, sizeof tokens);
    int V = dsv4_engine_info(e)->vocab_size;
    float *ref = malloc((size_t)N * V * 4), *got = malloc((size_t)N * V * 4);
    dsv4_seq *s = NULL;
    rc = dsv4_seq_create(e, &s, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(s, tokens, N, ref, N, err, sizeof err);
    CHECKF(rc == 0, "one-shot prefill: %s", err);
    dsv4_seq_free(s);
    /* chunks of 1 cost one pass per token (most of this binary's time on a
       loaded 2-core machine): they run over the first 140 tokens only, past
       the 64-token window ring, several CSA rows and the first HCA row
       (ratio 128); the other chunk sizes cover all N */
    const int chunks[] = {1, 7, 64, 300}, upto[] = {140, N, N, N};
    for (int c = 0; c < 4 && rc == 0; c++) {
        int n = upto[c];
        rc = dsv4_seq_create(e, &s, err, sizeof err);
        for (int a = 0; a < n && rc == 0; a += chunks[c]) {
            int m = n - a < chunks[c] ? n - a : chunks[c];
            rc = dsv4_seq_prefill(s, tokens + a, m, got + (size_t)a * V, m, err, sizeof err);
        }
        CHECKF(rc == 0, "chunk %d: %s", chunks[c], err);
        CHECK(dsv4_seq_pos(s) == n);
        dsv4_seq_free(s);
        s = NULL;
        dsv4_conf_stats st;
        dsv4_conf_compare(got, ref, n, V, 1, &st);
        printf("  chunk %3d vs one-shot (%d tokens): median %.3g p90 %.3g max %.3g top1 %.3f\n", chunks[c], n,
               st.median, st.p90, st.max, st.top1);
        CHECKF(dsv4_conf_chunk_ok(&st), "chunk %d: median %.3g > %.3g", chunks[c], st.median, DSV4_CONF_CHUNK_MEDIAN);
        /* the engine promises bit-identical logits (docs/engine.md) */
        CHECKF(st.max == 0, "chunk %d: logits differ from one-shot by up to %.3g", chunks[c], st.max);
    }
    free(ref);
    free(got);
out:
    dsv4_st_close(cs);
    dsv4_engine_close(e);
}

/* The fused indexer (index_topk, what prefill chunks use) gives the logits
 * of the unfused one (index_score_* + topk_radix, $DSV4_INDEX_UNFUSED=1) bit
 * for bit, over a prefill long enough that the top-k selects (600 tokens:
 * up to 150 CSA entries for index_topk 16; passes of the CPU chunk, so
 * later passes start at p0 > 0) and decode steps after it; with the
 * planned entry ranges and with ranges of 32 entries ($DSV4_INDEX_SPLIT:
 * many lists per token, merged). */
static void fused_indexer_matches_unfused(void)
{
    enum { N = 600, STEPS = 3 };
    const char *modes[3][2] = {{"DSV4_INDEX_UNFUSED", "1"}, {NULL, NULL}, {"DSV4_INDEX_SPLIT", "32"}};
    char err[512];
    dsv4_st_set *cs = NULL;
    int rc = dsv4_st_open_file(GOLDEN "/case_b.safetensors", &cs, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    const dsv4_tensor *tt = cs ? dsv4_st_find(cs, "tokens") : NULL;
    CHECK(tt != NULL && tt->nbytes >= (N + STEPS) * 4);
    if (!tt || tt->nbytes < (N + STEPS) * 4) {
        dsv4_st_close(cs);
        return;
    }
    int32_t tokens[N + STEPS];
    memcpy(tokens, tt->data, sizeof tokens);
    float *logits[3] = {0};
    size_t V = 0;
    for (int m = 0; m < 3; m++) {
        if (modes[m][0]) setenv(modes[m][0], modes[m][1], 1);
        dsv4_engine *e = NULL;
        rc = dsv4_engine_open(GOLDEN, NULL, &e, err, sizeof err);
        if (modes[m][0]) unsetenv(modes[m][0]);
        if (rc == DSV4_EDEVICE) {
            dsv4_st_close(cs);
            SKIP("no Vulkan device");
        }
        CHECKF(rc == 0, "%s", err);
        if (rc) break;
        V = (size_t)dsv4_engine_info(e)->vocab_size;
        logits[m] = malloc((N + STEPS) * V * 4);
        dsv4_seq *s = NULL;
        rc = dsv4_seq_create(e, &s, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(s, tokens, N, logits[m], N, err, sizeof err);
        for (int k = 0; k < STEPS && !rc; k++)
            rc = dsv4_decode(&s, 1, &tokens[N + k], logits[m] + (N + k) * V, err, sizeof err);
        CHECKF(rc == 0, "%s: %s", modes[m][0] ? modes[m][0] : "planned", err);
        dsv4_seq_free(s);
        dsv4_engine_close(e);
        if (rc) break;
    }
    for (int m = 1; m < 3 && !rc; m++) {
        size_t diff = 0;
        for (size_t i = 0; i < (N + STEPS) * V; i++) diff += memcmp(&logits[0][i], &logits[m][i], 4) != 0;
        printf("  fused indexer (%s) vs unfused, %d prefill + %d decode: %zu logits differ\n",
               m == 1 ? "planned ranges" : "ranges of 32", N, STEPS, diff);
        CHECKF(diff == 0, "fused indexer (%s): %zu of %zu logits differ from the unfused indexer's",
               m == 1 ? "planned" : "ranges of 32", diff, (N + STEPS) * V);
    }
    for (int m = 0; m < 3; m++) free(logits[m]);
    dsv4_st_close(cs);
}

int main(void)
{
    RUN(case_a_blocks_mtp_prefill_decode);
    RUN(case_b_prefill_decode);
    RUN(case_c_prefill_decode);
    RUN(chunked_prefill_matches_one_shot);
    RUN(fused_indexer_matches_unfused);
    CHECK_EXIT();
}
