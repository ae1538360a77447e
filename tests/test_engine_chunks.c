/* Chunked prefill, restored prefixes and interleaved sequences must give
 * bit-identical logits to one-shot prefill, on a model whose attention sees
 * more keys than the tiny golden model's: the demo preset's shapes
 * (sliding_window 128, index_topk 64, head_dim 192, compress ratios
 * [0, 4, 128, 4]) with a small vocabulary and synthetic weights
 * (dsv4_engine_open_synthetic, nothing written but config.json).
 *
 * Regression: on lavapipe the serial attention shader ran past the driver's
 * 65535 loop iterations per invocation once ~110 keys were visible
 * (head_dim 192), so its last output columns kept whatever the previous pass
 * (of any sequence) had left in the shared scratch: prefill split at 110+2 or
 * 126+2, a prefix restored from the cache, or another sequence prefilled in
 * between all changed the logits. The splits below are those that failed.
 * Skipped when there is no Vulkan device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/dsv4_engine.h"
#include "tests/check.h"

#define VOCAB 2048

static const char *config_json =
    "{\"architectures\": [\"DeepseekV4ForCausalLM\"], \"model_type\": \"deepseek_v4\",\n"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"hc_eps\": 1e-6, \"hc_mult\": 4, \"hc_sinkhorn_iters\": 20,\n"
    " \"hidden_act\": \"silu\", \"max_position_embeddings\": 1048576, \"n_shared_experts\": 1,\n"
    " \"norm_topk_prob\": true, \"num_key_value_heads\": 1, \"num_nextn_predict_layers\": 1,\n"
    " \"qk_rope_head_dim\": 64, \"expert_dtype\": \"fp4\",\n"
    " \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", \"quant_method\": \"fp8\",\n"
    "   \"scale_fmt\": \"ue8m0\", \"weight_block_size\": [128, 128]},\n"
    " \"rms_norm_eps\": 1e-6, \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 16,\n"
    "   \"original_max_position_embeddings\": 65536, \"type\": \"yarn\"},\n"
    " \"rope_theta\": 10000, \"compress_rope_theta\": 160000, \"routed_scaling_factor\": 2.5,\n"
    " \"scoring_func\": \"sqrtsoftplus\", \"swiglu_limit\": 10.0, \"tie_word_embeddings\": false,\n"
    " \"topk_method\": \"noaux_tc\", \"torch_dtype\": \"bfloat16\", \"vocab_size\": 2048, \"hidden_size\": 256,\n"
    " \"num_hidden_layers\": 4, \"num_hash_layers\": 1, \"num_attention_heads\": 4, \"head_dim\": 192,\n"
    " \"q_lora_rank\": 128, \"o_groups\": 2, \"o_lora_rank\": 128, \"n_routed_experts\": 8,\n"
    " \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 128, \"index_n_heads\": 4,\n"
    " \"index_head_dim\": 128, \"index_topk\": 64, \"sliding_window\": 128,\n"
    " \"compress_ratios\": [0, 4, 128, 4, 0]}\n";

static dsv4_engine *eng;
static int V;
static char dir[64];

static int open_engine(void)
{
    char err[512], path[128];
    if (eng) return 0;
    snprintf(dir, sizeof dir, "/tmp/dsv4_chunks_XXXXXX");
    if (!mkdtemp(dir)) return DSV4_EIO;
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return DSV4_EIO;
    fputs(config_json, f);
    fclose(f);
    int rc = dsv4_engine_open_synthetic(path, 4, NULL, &eng, err, sizeof err);
    if (rc) {
        printf("  %s\n", err);
        eng = NULL;
        return rc;
    }
    V = dsv4_engine_info(eng)->vocab_size;
    return 0;
}

static void make_tokens(int32_t *t, int n, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (int32_t)(2 + (seed >> 8) % (VOCAB - 2));
    }
}

/* max |a - b|, NaN when either holds a NaN or infinity (never "equal") */
static double max_abs_diff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return NAN;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m) m = d;
    }
    return m;
}

static void one_shot(const int32_t *t, int n, float *logits)
{
    char err[512];
    dsv4_seq *s = NULL;
    int rc = dsv4_seq_create(eng, &s, err, sizeof err);
    if (!rc) rc = dsv4_seq_prefill(s, t, n, logits, 1, err, sizeof err);
    CHECKF(rc == 0, "one-shot prefill of %d: %s", n, err);
    dsv4_seq_free(s);
}

/* The splits that failed: n tokens then k, the last position's logits. */
static const int splits[][2] = {{110, 2}, {126, 2}};

static void chunked_prefill_equals_one_shot(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    float *l1 = malloc((size_t)V * 4), *l2 = malloc((size_t)V * 4);
    int32_t t[160];
    make_tokens(t, 160, 7);
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        int n = splits[i][0], k = splits[i][1];
        dsv4_seq *a = NULL;
        rc = dsv4_seq_create(eng, &a, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(a, t, n, NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(a, t + n, k, l1, 1, err, sizeof err);
        CHECKF(rc == 0, "chunked prefill %d+%d: %s", n, k, err);
        dsv4_seq_free(a);
        one_shot(t, n + k, l2);
        double d = max_abs_diff(l1, l2, V);
        printf("  prefill %d+%d vs one-shot %d: max |diff| %g\n", n, k, n + k, d);
        CHECKF(d == 0, "prefill %d+%d differs from one-shot by %g", n, k, d);
    }
    free(l1);
    free(l2);
}

/* Export at n (rows and boundary in one chunk), import into a fresh sequence,
 * prefill the k more tokens: the logits of one-shot n + k. */
static void restored_prefix_equals_one_shot(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    const dsv4_state_layout *L = dsv4_engine_state_layout(eng);
    float *l1 = malloc((size_t)V * 4), *l2 = malloc((size_t)V * 4);
    int32_t t[160], u[160];
    make_tokens(t, 160, 11);
    make_tokens(u, 160, 12);
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        int n = splits[i][0], k = splits[i][1];
        dsv4_state_chunk ch = {0};
        ch.rows = calloc(L->n_streams, sizeof *ch.rows);
        ch.boundary = malloc(L->boundary_bytes);
        for (uint32_t s = 0; s < L->n_streams; s++)
            ch.rows[s] = malloc((size_t)dsv4_state_rows_at(&L->streams[s], n) * L->streams[s].row_bytes + 1);
        dsv4_seq *a = NULL, *other = NULL, *b = NULL;
        rc = dsv4_seq_create(eng, &a, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(a, t, n, NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_seq_export(a, 0, &ch, err, sizeof err);
        /* another sequence runs in between, as the cache's users do */
        if (!rc) rc = dsv4_seq_create(eng, &other, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(other, u, n + 20, NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_seq_create(eng, &b, err, sizeof err);
        if (!rc) rc = dsv4_seq_import(b, &ch, err, sizeof err);
        CHECKF(rc == 0, "export/import at %d: %s", n, err);
        if (!rc) CHECK(dsv4_seq_pos(b) == n);
        if (!rc) rc = dsv4_seq_prefill(b, t + n, k, l1, 1, err, sizeof err);
        CHECKF(rc == 0, "prefill after import: %s", err);
        one_shot(t, n + k, l2);
        double d = max_abs_diff(l1, l2, V);
        printf("  restored %d + prefill %d vs one-shot: max |diff| %g\n", n, k, d);
        CHECKF(d == 0, "restored prefix %d+%d differs from one-shot by %g", n, k, d);
        dsv4_seq_free(a);
        dsv4_seq_free(other);
        dsv4_seq_free(b);
        for (uint32_t s = 0; s < L->n_streams; s++) free(ch.rows[s]);
        free(ch.rows);
        free(ch.boundary);
    }
    free(l1);
    free(l2);
}

/* Two sequences with different tokens prefilled in turns (A n, B n, A k,
 * B k): each gives its own one-shot logits. */
static void interleaved_sequences_equal_one_shot(void)
{
    int rc = open_engine();
    if (rc == DSV4_EDEVICE) SKIP("no Vulkan device");
    CHECK(rc == 0);
    if (rc) return;
    char err[512];
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4), *ref = malloc((size_t)V * 4);
    int32_t t[160], u[160];
    make_tokens(t, 160, 21);
    make_tokens(u, 160, 22);
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        int n = splits[i][0], k = splits[i][1];
        dsv4_seq *a = NULL, *b = NULL;
        rc = dsv4_seq_create(eng, &a, err, sizeof err);
        if (!rc) rc = dsv4_seq_create(eng, &b, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(a, t, n, NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(b, u, n, NULL, 0, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(a, t + n, k, la, 1, err, sizeof err);
        if (!rc) rc = dsv4_seq_prefill(b, u + n, k, lb, 1, err, sizeof err);
        CHECKF(rc == 0, "interleaved prefill %d+%d: %s", n, k, err);
        dsv4_seq_free(a);
        dsv4_seq_free(b);
        one_shot(t, n + k, ref);
        double da = max_abs_diff(la, ref, V);
        one_shot(u, n + k, ref);
        double db = max_abs_diff(lb, ref, V);
        printf("  interleaved %d+%d vs one-shot: A %g, B %g\n", n, k, da, db);
        CHECKF(da == 0 && db == 0, "interleaved %d+%d: A differs by %g, B by %g", n, k, da, db);
    }
    free(la);
    free(lb);
    free(ref);
}

int main(void)
{
    RUN(chunked_prefill_equals_one_shot);
    RUN(restored_prefix_equals_one_shot);
    RUN(interleaved_sequences_equal_one_shot);
    dsv4_engine_close(eng);
    if (dir[0]) {
        char path[128];
        snprintf(path, sizeof path, "%s/config.json", dir);
        unlink(path);
        rmdir(dir);
    }
    CHECK_EXIT();
}
