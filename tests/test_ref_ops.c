/* The CPU reference's operations (tests/ref_ops.c) on hand-checkable inputs:
 * the narrow float roundings against every code of their format, the act
 * quant properties, the Hadamard transform, Sinkhorn, the attention with its
 * sink, the compressor's windows, the indexer's tie order and the MoE gate.
 * The golden test checks the composition; this checks the pieces, so a GPU
 * shader compared with one of them is compared with something known right. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "tests/ref_model.h"

static void e4m3_rounding_matches_the_format(void)
{
    /* every finite code is a fixed point; midpoints go to the even code */
    float vals[127];
    int n = 0;
    for (int b = 0; b < 0x7f; b++) {
        float v = dsv4_e4m3_to_f32((uint8_t)b);
        CHECKF(ref_round_e4m3(v) == v && ref_round_e4m3(-v) == -v, "code %d value %g", b, v);
        vals[n++] = v;
    }
    for (int i = 0; i + 1 < n; i++) {
        float mid = (vals[i] + vals[i + 1]) / 2;
        float want = (i & 1) ? vals[i + 1] : vals[i]; /* even mantissa code */
        CHECKF(ref_round_e4m3(mid) == want, "mid %g -> %g, want %g", mid, ref_round_e4m3(mid), want);
        float below = nextafterf(mid, 0), above = nextafterf(mid, 1000);
        CHECK(ref_round_e4m3(below) == vals[i] && ref_round_e4m3(above) == vals[i + 1]);
    }
    CHECK(vals[n - 1] == 448.0f && ref_round_e4m3(1000.0f) == 448.0f);
    CHECK(dsv4_e4m3_to_f32(1) == 0x1p-9f && dsv4_e4m3_to_f32(0x38) == 1.0f);
}

static void e2m1_rounding_matches_the_format(void)
{
    for (unsigned c = 0; c < 16; c++) {
        float v = dsv4_e2m1_to_f32(c);
        CHECK(ref_round_e2m1(v) == v);
    }
    CHECK(ref_round_e2m1(0.25f) == 0.0f);  /* tie to even: 0 */
    CHECK(ref_round_e2m1(0.75f) == 1.0f);  /* tie: 0.5 (odd) vs 1 (even) */
    CHECK(ref_round_e2m1(1.25f) == 1.0f);
    CHECK(ref_round_e2m1(1.75f) == 2.0f);
    CHECK(ref_round_e2m1(2.5f) == 2.0f);
    CHECK(ref_round_e2m1(3.5f) == 4.0f);
    CHECK(ref_round_e2m1(5.0f) == 4.0f);
    CHECK(ref_round_e2m1(5.01f) == 6.0f);
    CHECK(ref_round_e2m1(-9.0f) == -6.0f);
    CHECK(ref_pow2_ceil(3.0f) == 4.0f && ref_pow2_ceil(4.0f) == 4.0f && ref_pow2_ceil(0.3f) == 0.5f);
    CHECK(dsv4_e8m0_to_f32(127) == 1.0f && dsv4_e8m0_to_f32(130) == 8.0f);
}

static void act_quant_is_blockwise_and_idempotent(void)
{
    float x[256], y[256];
    for (int i = 0; i < 256; i++) x[i] = dsv4_round_bf16(sinf((float)i * 0.37f) * (i < 128 ? 3.0f : 1e-3f));
    memcpy(y, x, sizeof x);
    ref_act_quant(y, 1, 256, 256, 128);
    /* block 0: amax ~3 -> scale 2^-7 (3/448 = 0.0067 -> 0.0078125) */
    float amax = 0;
    for (int i = 0; i < 128; i++) amax = fmaxf(amax, fabsf(x[i]));
    float s = ref_pow2_ceil(amax / 448.0f);
    for (int i = 0; i < 128; i++) {
        CHECK(ref_round_e4m3(y[i] / s) == y[i] / s);
        CHECK(fabsf(y[i] - x[i]) <= fabsf(x[i]) * 0.0625f + s * 0x1p-9f);
    }
    /* the small block keeps its own scale: relative error stays small */
    double err = 0, ref = 0;
    for (int i = 128; i < 256; i++) {
        err += (double)(y[i] - x[i]) * (y[i] - x[i]);
        ref += (double)x[i] * x[i];
    }
    CHECK(sqrt(err / ref) < 0.05);
    float z[256];
    memcpy(z, y, sizeof y);
    ref_act_quant(z, 1, 256, 256, 128);
    CHECK(memcmp(z, y, sizeof y) == 0);
    /* strided form: only the first 128 of each 192-wide row, in 64 blocks */
    float kv[2 * 192];
    for (int i = 0; i < 2 * 192; i++) kv[i] = dsv4_round_bf16(0.1f * (float)(i % 17) - 0.8f);
    float kq[2 * 192];
    memcpy(kq, kv, sizeof kv);
    ref_act_quant(kq, 2, 128, 192, 64);
    CHECK(memcmp(kq + 128, kv + 128, 64 * sizeof(float)) == 0);
    CHECK(memcmp(kq + 192 + 128, kv + 192 + 128, 64 * sizeof(float)) == 0);
    int changed = 0;
    for (int i = 0; i < 128; i++) changed += kq[i] != kv[i];
    CHECK(changed > 0);
    /* fp4: every value is code * pow2 scale */
    float f[32];
    for (int i = 0; i < 32; i++) f[i] = dsv4_round_bf16((float)(i - 16) * 0.21f);
    ref_fp4_act_quant(f, 1, 32);
    float s4 = ref_pow2_ceil(16 * 0.21f / 6.0f);
    for (int i = 0; i < 32; i++) CHECK(ref_round_e2m1(f[i] / s4) == f[i] / s4);
}

static void hadamard_is_orthonormal(void)
{
    float x[128], y[128];
    double n0 = 0, n1 = 0;
    for (int i = 0; i < 128; i++) {
        x[i] = dsv4_round_bf16(cosf((float)i));
        n0 += (double)x[i] * x[i];
    }
    memcpy(y, x, sizeof x);
    ref_hadamard(y, 1, 128);
    for (int i = 0; i < 128; i++) n1 += (double)y[i] * y[i];
    CHECK(fabs(n1 / n0 - 1) < 0.01);
    ref_hadamard(y, 1, 128); /* H H / n = I */
    for (int i = 0; i < 128; i++) CHECKF(fabsf(y[i] - x[i]) < 0.02f, "%d: %g vs %g", i, y[i], x[i]);
    float e[4] = {1, 0, 0, 0};
    ref_hadamard(e, 1, 4);
    CHECK(e[0] == 0.5f && e[1] == 0.5f && e[2] == 0.5f && e[3] == 0.5f);
}

static void sinkhorn_is_doubly_stochastic(void)
{
    float mixes[24], scale[3] = {1, 1, 1}, base[24], pre[4], post[4], comb[16];
    for (int i = 0; i < 24; i++) {
        mixes[i] = sinf((float)i * 1.3f);
        base[i] = 0.1f * (float)(i % 5);
    }
    ref_hc_split_sinkhorn(mixes, scale, base, 4, 20, 1e-6f, pre, post, comb);
    for (int j = 0; j < 4; j++) {
        float r = 0, c = 0;
        for (int k = 0; k < 4; k++) {
            r += comb[j * 4 + k];
            c += comb[k * 4 + j];
        }
        CHECKF(fabsf(r - 1) < 1e-3f && fabsf(c - 1) < 1e-5f, "row %g col %g", r, c);
        float sg = 1.0f / (1.0f + expf(-(mixes[j] + base[j])));
        CHECK(fabsf(pre[j] - (sg + 1e-6f)) < 1e-6f);
        CHECK(post[j] > 0 && post[j] < 2);
    }
}

static void sparse_attention_with_sink(void)
{
    float q[2 * 64], k0[64], k1[64], o[2 * 64];
    for (int i = 0; i < 64; i++) {
        q[i] = 0;
        q[64 + i] = i == 0 ? 8.0f : 0.0f;
        k0[i] = dsv4_round_bf16(0.5f + (float)i / 64);
        k1[i] = dsv4_round_bf16(-0.25f);
    }
    k0[0] = 1;
    k1[0] = -1;
    const float *keys[4] = {k0, NULL, k1, NULL};
    float sink[2] = {-1e30f, 0.0f};
    ref_sparse_attn(q, 2, 64, keys, 4, sink, 1.0f, o);
    /* head 0: equal scores, no sink weight -> the average of the two keys */
    for (int i = 0; i < 64; i++)
        CHECKF(fabsf(o[i] - dsv4_round_bf16((k0[i] + k1[i]) / 2)) <= fabsf(o[i]) * 1e-2f + 1e-6f,
               "%d: %g", i, o[i]);
    /* head 1: scores 8 and -8 and the sink at 0: weights e^8, e^-8 over
       e^8 + e^-8 + 1 (p in bf16 for the value sum, f32 for the denominator) */
    float m = 8, p0 = 1, p1 = expf(-16), den = p0 + p1 + expf(0 - m);
    for (int i = 0; i < 64; i++) {
        float want = dsv4_round_bf16((dsv4_round_bf16(p0) * k0[i] + dsv4_round_bf16(p1) * k1[i]) / den);
        CHECKF(o[64 + i] == want, "%d: %g vs %g", i, o[64 + i], want);
    }
}

static void compressor_windows(void)
{
    /* ratio 4 with overlap, head_dim 2: entry w pools window w's second
       halves and window w-1's first halves */
    ref_comp_state s;
    CHECK(ref_comp_state_init(&s, 4, 2, 1) == 0);
    float ape[4 * 4] = {0}, out[2];
    int done = 0;
    for (int p = 0; p < 8; p++) {
        float kv[4] = {(float)p, 10.0f + (float)p, 100.0f + (float)p, 1000.0f + (float)p};
        float sc[4] = {0, 0, 0, 0};
        int got = ref_comp_step(&s, p, kv, sc, ape, out);
        CHECK(got == ((p + 1) % 4 == 0));
        if (!got) continue;
        if (p == 3) {
            /* first window: only its own second halves (dims 2, 3), equal weights */
            CHECK(fabsf(out[0] - 101.5f) < 1e-4f && fabsf(out[1] - 1001.5f) < 1e-4f);
        } else {
            /* window 1: first halves of tokens 0-3 and second halves of 4-7 */
            float w0 = (0 + 1 + 2 + 3 + 104 + 105 + 106 + 107) / 8.0f;
            float w1 = (10 + 11 + 12 + 13 + 1004 + 1005 + 1006 + 1007) / 8.0f;
            CHECK(fabsf(out[0] - w0) < 1e-3f && fabsf(out[1] - w1) < 1e-3f);
        }
        done++;
    }
    CHECK(done == 2);
    ref_comp_state_free(&s);
    /* ratio 2 without overlap: the softmax weights follow score + ape */
    CHECK(ref_comp_state_init(&s, 2, 1, 0) == 0);
    float ape2[2] = {0, logf(3)}, kv0 = 1, kv1 = 5, z = 0;
    CHECK(ref_comp_step(&s, 10, &kv0, &z, ape2, out) == 0);
    CHECK(ref_comp_step(&s, 11, &kv1, &z, ape2, out) == 1);
    CHECK(fabsf(out[0] - (1 * 0.25f + 5 * 0.75f)) < 1e-5f);
    ref_comp_state_free(&s);
}

static void indexer_ties_and_moe_gate(void)
{
    float q[2 * 32], w[2] = {1, 1}, keys[5 * 32], score[5];
    int64_t sel[3];
    for (int i = 0; i < 64; i++) q[i] = i % 32 == 0 ? 1.0f : 0.0f;
    float kval[5] = {2, 3, 3, -1, 1}; /* entries 1 and 2 tie */
    for (int t = 0; t < 5; t++)
        for (int d = 0; d < 32; d++) keys[t * 32 + d] = d == 0 ? kval[t] : 0;
    int k = ref_indexer_select(q, w, 2, 32, keys, 5, 3, score, sel);
    CHECK(k == 3 && sel[0] == 1 && sel[1] == 2 && sel[2] == 0);
    CHECK(score[3] == 0); /* relu */
    k = ref_indexer_select(q, w, 2, 32, keys, 2, 3, score, sel);
    CHECK(k == 2 && sel[0] == 1 && sel[1] == 0);

    dsv4_config c;
    memset(&c, 0, sizeof c);
    c.n_routed_experts = 4;
    c.num_experts_per_tok = 2;
    c.routed_scaling_factor = 2.5;
    c.scoring_func = DSV4_SCORE_SQRTSOFTPLUS;
    float logits[4] = {0.5f, 2.0f, -1.0f, 1.0f}, bias[4] = {0, 0, 3, 0}, wt[2];
    int ex[2];
    ref_moe_gate(&c, logits, bias, NULL, ex, wt);
    /* the bias picks expert 2 but does not weigh it */
    CHECK(ex[0] == 2 && ex[1] == 1);
    float s2 = sqrtf(log1pf(expf(-1.0f))), s1 = sqrtf(log1pf(expf(2.0f)));
    CHECK(fabsf(wt[0] - 2.5f * s2 / (s1 + s2)) < 1e-6f && fabsf(wt[1] - 2.5f * s1 / (s1 + s2)) < 1e-6f);
    int64_t row[2] = {3, 0};
    ref_moe_gate(&c, logits, NULL, row, ex, wt);
    CHECK(ex[0] == 3 && ex[1] == 0 && fabsf(wt[0] + wt[1] - 2.5f) < 1e-6f);
}

int main(void)
{
    RUN(e4m3_rounding_matches_the_format);
    RUN(e2m1_rounding_matches_the_format);
    RUN(act_quant_is_blockwise_and_idempotent);
    RUN(hadamard_is_orthonormal);
    RUN(sinkhorn_is_doubly_stochastic);
    RUN(sparse_attention_with_sink);
    RUN(compressor_windows);
    RUN(indexer_ties_and_moe_gate);
    CHECK_EXIT();
}
