/* Each compute shader of the engine against the CPU reference of
 * tests/ref_model.h (the code the golden data agrees with), on the Vulkan
 * device (lavapipe here): random inputs, the normalised squared error
 * sum((gpu - ref)^2) / sum(ref^2) against a stated bound, and guard bytes
 * after every output (a shader writing past its rows fails the test).
 * Skipped when there is no Vulkan device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"
#include "engine/vk.h"
#include "tests/check.h"
#include "tests/ref_model.h"

#define GUARD 256
static vkrt rt;
static int rt_ok = -1;
static uint32_t rng = 12345;

static float frand(void) /* uniform in [-1, 1) */
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

static int open_rt(void)
{
    if (rt_ok >= 0) return rt_ok;
    char err[256];
    rt_ok = vkrt_open(&rt, NULL, 0, 0, err, sizeof err) == 0;
    if (!rt_ok) printf("  %s\n", err);
    return rt_ok;
}

/* A device buffer holding data (or zeros) followed by GUARD bytes of 0xa5. */
static vkbuf mkbuf(const void *data, size_t n)
{
    char err[256];
    vkbuf b;
    uint8_t *tmp = malloc(n + GUARD);
    if (data) memcpy(tmp, data, n);
    else memset(tmp, 0, n);
    memset(tmp + n, 0xa5, GUARD);
    vkbuf_create(&rt, n + GUARD, 1, &b, err, sizeof err);
    vkrt_upload(&rt, vkbuf_view(&b, 0, b.size), tmp, n + GUARD, err, sizeof err);
    free(tmp);
    return b;
}

/* Reads n bytes back; returns 0 when the guard after them is intact. */
static int readbuf(vkbuf *b, void *out, size_t n)
{
    char err[256];
    uint8_t *tmp = malloc(n + GUARD);
    vkrt_download(&rt, vkbuf_view(b, 0, n + GUARD), tmp, n + GUARD, err, sizeof err);
    memcpy(out, tmp, n);
    int bad = 0;
    for (size_t i = 0; i < GUARD; i++) bad |= tmp[n + i] != 0xa5;
    free(tmp);
    return bad;
}

static double nmse(const float *g, const float *r, size_t n)
{
    double a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)g[i] - (double)r[i];
        a += d * d;
        b += (double)r[i] * r[i];
    }
    return b > 0 ? a / b : a;
}

static void run1(vk_pipe_id p, vkbuf **bufs, int n, const void *push, size_t ps, uint32_t gx, uint32_t gy)
{
    char err[256];
    vkview v[16];
    for (int i = 0; i < n; i++) v[i] = vkbuf_view(bufs[i], 0, bufs[i]->size);
    vkrt_begin(&rt, err, sizeof err);
    vkrt_dispatch(&rt, p, v, n, push, ps, gx, gy, 1);
    vkrt_submit_wait(&rt, err, sizeof err);
}

static float bf(float x) { return dsv4_round_bf16(x); }

/* A compressed cache of n rows of d floats split as a fork holds it
 * (docs/engine.md, "Sequences and state"): rows < sb in *base (at row r),
 * rows >= sb in *own (at row r - sb). */
static void split_rows(const float *rows, int n, int d, int sb, vkbuf *base, vkbuf *own)
{
    *base = mkbuf(rows, (size_t)sb * d * 4);
    *own = mkbuf(rows + (size_t)sb * d, (size_t)(n - sb) * d * 4);
}

/* ---- gemm: every weight format, tiled and SMALL ---- */
typedef struct { uint32_t M, N, K, ldx, ldy, x_off, y_off, w_row0, flags, s_cols, w_estride, s_estride, e0, e1, tiles_off, rowmap_off; } pc_gemm;

/* Random weights of format q ([N][K], scales as stored) and their CPU form. */
typedef struct { uint8_t *wd, *sd; size_t wb, sb; ref_weight rw; } tw;

static void tw_make(tw *t, dsv4_wq q, int N, int K)
{
    dsv4_weight w;
    memset(&w, 0, sizeof w);
    w.q = q;
    w.out = N;
    w.in = K;
    size_t wb = q == DSV4_WQ_FP4 ? (size_t)N * K / 2 : q == DSV4_WQ_FP8 ? (size_t)N * K : (size_t)N * K * 2;
    size_t sb = q == DSV4_WQ_FP4 ? (size_t)N * (K / 32) : q == DSV4_WQ_FP8 ? (size_t)((N + 127) / 128) * ((K + 127) / 128) : 4;
    uint8_t *wd = malloc(wb), *sd = malloc(sb);
    for (size_t i = 0; i < wb; i++) {
        uint8_t b = (uint8_t)(frand() * 127 + 128);
        if (q == DSV4_WQ_FP8 && (b & 0x7f) == 0x7f) b = 0x3f; /* no NaN */
        wd[i] = b;
    }
    if (q == DSV4_WQ_BF16)
        for (size_t i = 0; i < wb / 2; i++) {
            uint16_t h = dsv4_f32_to_bf16(frand() * 0.1f);
            memcpy(wd + 2 * i, &h, 2);
        }
    for (size_t i = 0; i < sb; i++) sd[i] = (uint8_t)(120 + (int)((frand() + 1) * 3));
    w.w.data = wd;
    w.w.nbytes = wb;
    w.scale.data = q == DSV4_WQ_BF16 ? NULL : sd;
    ref_weight_load(&w, &t->rw);
    t->wd = wd; t->sd = sd; t->wb = wb; t->sb = sb;
}

static void tw_free(tw *t)
{
    ref_weight_free(&t->rw);
    free(t->wd); free(t->sd);
}

/* small: 1 the SMALL variant, 2 the SERIAL one; cm: the tensor-core twin
 * (P_GEMM_CM_*) instead of the portable shader */
static void gemm_case(dsv4_wq q, int M, int N, int K, int small, int cm)
{
    tw t;
    tw_make(&t, q, N, K);
    float *x = malloc((size_t)M * K * 4), *yr = malloc((size_t)M * N * 4), *yg = malloc((size_t)M * N * 4);
    for (int i = 0; i < M * K; i++) x[i] = bf(frand());
    float *xq = malloc((size_t)M * K * 4);
    memcpy(xq, x, (size_t)M * K * 4);
    if (q != DSV4_WQ_BF16) ref_act_quant(xq, M, K, K, 128); /* the engine quantizes in act_quant */
    ref_linear(&t.rw, x, M, yr);
    vkbuf bx = mkbuf(xq, (size_t)M * K * 4), bw = mkbuf(t.wd, t.wb), bs = mkbuf(t.sd, t.sb),
          by = mkbuf(NULL, (size_t)M * N * 4), bd = mkbuf(NULL, 16);
    vkbuf *bufs[5] = {&bx, &bw, &bs, &by, &bd};
    pc_gemm pc = {(uint32_t)M, (uint32_t)N, (uint32_t)K, (uint32_t)K, (uint32_t)N, 0, 0, 0, 1,
                  q == DSV4_WQ_FP4 ? (uint32_t)K / 32 : (uint32_t)(K + 127) / 128, 0, 0, 0, 0, 0, 0};
    vk_pipe_id p = q == DSV4_WQ_FP8 ? P_GEMM_FP8 : q == DSV4_WQ_FP4 ? P_GEMM_FP4 : P_GEMM_BF16;
    if (cm) run1((vk_pipe_id)vkrt_cm_twin(p), bufs, 5, &pc, sizeof pc, (N + 127) / 128, (M + 63) / 64);
    else if (small == 2) run1(p + P_GEMM_SERIAL_FIRST, bufs, 5, &pc, sizeof pc, (N + 63) / 64, (M + 7) / 8);
    else if (small) run1(p + P_GEMM_SMALL_FIRST, bufs, 5, &pc, sizeof pc, (N + 7) / 8, (M + 15) / 16);
    else run1(p, bufs, 5, &pc, sizeof pc, (N + 63) / 64, (M + 63) / 64);
    int guard = readbuf(&by, yg, (size_t)M * N * 4);
    double e = nmse(yg, yr, (size_t)M * N);
    printf("  gemm q%d %dx%dx%d %s: nmse %.3g\n", q, M, N, K,
           cm ? "coopmat" : small == 2 ? "serial" : small ? "small" : "tiled", e);
    CHECKF(e < 1e-5, "gemm nmse %g", e);
    CHECK(guard == 0);
    vkbuf *all[5] = {&bx, &bw, &bs, &by, &bd};
    for (int i = 0; i < 5; i++) vkbuf_free(&rt, all[i]);
    tw_free(&t);
    free(x); free(xq); free(yr); free(yg);
}

static void gemm_formats(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    const dsv4_wq qs[3] = {DSV4_WQ_BF16, DSV4_WQ_FP8, DSV4_WQ_FP4};
    for (int i = 0; i < 3; i++) {
        gemm_case(qs[i], 37, 200, 256, 0, 0);
        gemm_case(qs[i], 130, 70, qs[i] == DSV4_WQ_BF16 ? 264 : 384, 0, 0); /* partial tiles (bf16: and K slice) */
        gemm_case(qs[i], 5, 130, 384, 1, 0);
        gemm_case(qs[i], 16, 67, 1024, 1, 0);  /* 16 rows, a K loop of 2+ pieces per invocation */
        gemm_case(qs[i], 37, 200, 256, 1, 0);  /* more than 16 rows */
        gemm_case(qs[i], 5, 130, 384, 2, 0);
        gemm_case(qs[i], 37, 200, 256, 2, 0);  /* what lavapipe runs */
    }
}

/* The MoE expert GEMMs: 3 experts' weights back to back; the route buffer as
 * moe_group.comp writes it (tiles of <= 32 sorted slots of one expert, the
 * token of each slot); GATHER reads X row rowmap[m], GROUPED row m. Sorted
 * slot m's output row is m. Dispatched with more tile slots than tiles, as
 * forward.c does. */
static void grouped_case(dsv4_wq q, int gather, int variant /* 0 tiled, 1 small, 2 coopmat, 3 serial */)
{
    enum { E = 3, T = 29, N = 160, K = 256 };
    static const int cnt[E] = {37, 0, 20}; /* slots per expert: 2 tiles, none, 1 tile */
    int S = cnt[0] + cnt[1] + cnt[2];
    tw t[E];
    for (int i = 0; i < E; i++) tw_make(&t[i], q, N, K);
    size_t wb = t[0].wb, sb = t[0].sb;
    uint8_t *wall = malloc(wb * E), *sall = malloc(sb * E);
    for (int i = 0; i < E; i++) {
        memcpy(wall + i * wb, t[i].wd, wb);
        memcpy(sall + i * sb, t[i].sd, sb);
    }
    int xrows = gather ? T : S;
    float *x = malloc((size_t)xrows * K * 4), *xs = malloc((size_t)K * 4);
    for (int i = 0; i < xrows * K; i++) x[i] = bf(frand());
    if (q != DSV4_WQ_BF16) ref_act_quant(x, xrows, K, K, 128);
    uint32_t R[4 + 4 * 8 + 64];
    memset(R, 0, sizeof R);
    uint32_t tiles = 0, off = 0, rowmap_off = 4 + 4 * 8;
    for (int ex = 0; ex < E; ex++) {
        for (int m = 0; m < cnt[ex]; m += 32) {
            uint32_t *tb = R + 4 + 4 * tiles++;
            tb[0] = (uint32_t)ex; tb[1] = off + (uint32_t)m;
            tb[2] = off + (uint32_t)(m + 32 < cnt[ex] ? m + 32 : cnt[ex]);
        }
        off += (uint32_t)cnt[ex];
    }
    R[0] = tiles;
    for (int m = 0; m < S; m++) R[rowmap_off + m] = (uint32_t)((m * 7 + 3) % T);
    float *yr = malloc((size_t)S * N * 4), *yg = malloc((size_t)S * N * 4);
    for (int m = 0, ex = 0, seen = 0; m < S; m++) {
        while (seen + cnt[ex] <= m) seen += cnt[ex++];
        const float *xr = x + (size_t)(gather ? (int)R[rowmap_off + m] : m) * K;
        memcpy(xs, xr, (size_t)K * 4);
        /* the rows are already act-quantized, and quantizing is idempotent */
        ref_linear(&t[ex].rw, xs, 1, yr + (size_t)m * N);
    }
    vkbuf bx = mkbuf(x, (size_t)xrows * K * 4), bw = mkbuf(wall, wb * E), bs = mkbuf(sall, sb * E),
          by = mkbuf(NULL, (size_t)S * N * 4), br = mkbuf(R, sizeof R);
    vkbuf *bufs[5] = {&bx, &bw, &bs, &by, &br};
    pc_gemm pc = {0, N, K, K, N, 0, 0, 0, 1, q == DSV4_WQ_FP4 ? (uint32_t)K / 32 : (uint32_t)(K + 127) / 128,
                  (uint32_t)wb, (uint32_t)sb, 0, E, 0, rowmap_off};
    vk_pipe_id p = q == DSV4_WQ_FP8 ? (gather ? P_GEMM_FP8_GATHER : P_GEMM_FP8_GROUPED)
                 : q == DSV4_WQ_FP4 ? (gather ? P_GEMM_FP4_GATHER : P_GEMM_FP4_GROUPED)
                                    : (gather ? P_GEMM_BF16_GATHER : P_GEMM_BF16_GROUPED);
    uint32_t gy = tiles + 2;
    if (variant == 2) run1((vk_pipe_id)vkrt_cm_twin(p), bufs, 5, &pc, sizeof pc, (N + 127) / 128, gy);
    else if (variant == 1) run1(p + P_GEMM_SMALL_FIRST, bufs, 5, &pc, sizeof pc, (N + 7) / 8, gy);
    else if (variant == 3) run1(p + P_GEMM_SERIAL_FIRST, bufs, 5, &pc, sizeof pc, (N + 63) / 64, gy);
    else run1(p, bufs, 5, &pc, sizeof pc, (N + 63) / 64, gy);
    int guard = readbuf(&by, yg, (size_t)S * N * 4);
    double e = nmse(yg, yr, (size_t)S * N);
    printf("  gemm q%d %s %d slots x %dx%d %s: nmse %.3g\n", q, gather ? "gather" : "grouped", S, N, K,
           variant == 3 ? "serial" : variant == 2 ? "coopmat" : variant == 1 ? "small" : "tiled", e);
    CHECKF(e < 1e-5, "grouped gemm nmse %g", e);
    CHECK(guard == 0);
    vkbuf *all[5] = {&bx, &bw, &bs, &by, &br};
    for (int i = 0; i < 5; i++) vkbuf_free(&rt, all[i]);
    for (int i = 0; i < E; i++) tw_free(&t[i]);
    free(wall); free(sall); free(x); free(xs); free(yr); free(yg);
}

static void gemm_grouped(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    const dsv4_wq qs[3] = {DSV4_WQ_BF16, DSV4_WQ_FP8, DSV4_WQ_FP4};
    for (int i = 0; i < 3; i++)
        for (int g = 0; g < 2; g++) {
            grouped_case(qs[i], g, 0);
            grouped_case(qs[i], g, 1);
            grouped_case(qs[i], g, 3);
        }
}

/* The tensor-core twins (GPU only: lavapipe has no cooperative matrices). */
static void gemm_coopmat(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    if (!rt.coopmat) SKIP("device '%.120s' has no usable VK_KHR_cooperative_matrix (16x16x16 fp16, subgroups of 32)",
                          rt.props.deviceName);
    for (int p = P_GEMM_CM_BF16; p <= P_GEMM_CM_BF16_GROUPED; p++)
        CHECKF(rt.pipe[p] != VK_NULL_HANDLE, "tensor-core pipeline %d was not created", p);
    if (check_case_failed) return;
    const dsv4_wq qs[3] = {DSV4_WQ_BF16, DSV4_WQ_FP8, DSV4_WQ_FP4};
    for (int i = 0; i < 3; i++) {
        gemm_case(qs[i], 37, 200, 256, 0, 1);
        gemm_case(qs[i], 150, 300, 512, 0, 1);
        for (int g = 0; g < 2; g++) grouped_case(qs[i], g, 2);
    }
}

/* ---- act_quant (FP8, 128 blocks) ---- */
typedef struct { uint32_t rows, ldx, ldy, col0, bs, mode; } pc_aq;

static void act_quant_fp8(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int R = 9, C = 384;
    float *x = malloc((size_t)R * C * 4), *r = malloc((size_t)R * C * 4), *g = malloc((size_t)R * C * 4);
    for (int i = 0; i < R * C; i++) x[i] = bf(frand() * (i % 7 == 0 ? 30.0f : 1.0f));
    memcpy(r, x, (size_t)R * C * 4);
    ref_act_quant(r, R, C, C, 128);
    vkbuf bx = mkbuf(x, (size_t)R * C * 4), by = mkbuf(NULL, (size_t)R * C * 4);
    vkbuf *b[2] = {&bx, &by};
    pc_aq pc = {(uint32_t)R, (uint32_t)C, (uint32_t)C, 0, 128, 0};
    run1(P_ACT_QUANT, b, 2, &pc, sizeof pc, C / 128, R);
    CHECK(readbuf(&by, g, (size_t)R * C * 4) == 0);
    double e = nmse(g, r, (size_t)R * C);
    printf("  act_quant nmse %.3g\n", e);
    CHECKF(e == 0, "act_quant nmse %g (must be exact)", e);
    vkbuf_free(&rt, &bx); vkbuf_free(&rt, &by);
    free(x); free(r); free(g);
}

/* ---- rmsnorm ---- */
typedef struct { uint32_t D, ldx, ldy, x_off, y_off; float eps; } pc_rms;

static void rmsnorm_rows(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int R = 7, D = 192;
    float *x = malloc((size_t)R * D * 4), *r = malloc((size_t)R * D * 4), *g = malloc((size_t)R * D * 4), w[192];
    uint16_t wh[192];
    for (int i = 0; i < D; i++) {
        wh[i] = dsv4_f32_to_bf16(1 + frand() * 0.5f);
        w[i] = dsv4_bf16_to_f32(wh[i]);
    }
    for (int i = 0; i < R * D; i++) x[i] = bf(frand() * 3);
    ref_rmsnorm(x, w, R, D, 1e-6f, r);
    vkbuf bx = mkbuf(x, (size_t)R * D * 4), bw = mkbuf(wh, sizeof wh), by = mkbuf(NULL, (size_t)R * D * 4);
    vkbuf *b[3] = {&bx, &bw, &by};
    pc_rms pc = {(uint32_t)D, (uint32_t)D, (uint32_t)D, 0, 0, 1e-6f};
    run1(P_RMSNORM, b, 3, &pc, sizeof pc, R, 1);
    CHECK(readbuf(&by, g, (size_t)R * D * 4) == 0);
    double e = nmse(g, r, (size_t)R * D);
    printf("  rmsnorm nmse %.3g\n", e);
    CHECKF(e < 1e-9, "rmsnorm nmse %g", e);
    vkbuf_free(&rt, &bx); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &by);
    free(x); free(r); free(g);
}

/* rmsnorm_q: the norm and act_quant's FP8 quant-dequant of its result in one
   dispatch must give the two dispatches' bits, also writing over its input. */
static void rmsnorm_quant_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int R = 5, D = 384; /* three 128-column blocks */
    size_t n = (size_t)R * D;
    float *x = malloc(n * 4), *y1 = malloc(n * 4), *q1 = malloc(n * 4), *y2 = malloc(n * 4), *q2 = malloc(n * 4);
    uint16_t wh[384];
    for (int i = 0; i < D; i++) wh[i] = dsv4_f32_to_bf16(1 + frand() * 0.5f);
    for (size_t i = 0; i < n; i++) x[i] = bf(frand() * (i % 128 == 5 ? 40.0f : 3.0f)); /* one large value per block */
    vkbuf bx = mkbuf(x, n * 4), bw = mkbuf(wh, sizeof wh), by = mkbuf(NULL, n * 4), bq = mkbuf(NULL, n * 4);
    pc_rms pc = {(uint32_t)D, (uint32_t)D, (uint32_t)D, 0, 0, 1e-6f};
    vkbuf *b3[3] = {&bx, &bw, &by};
    run1(P_RMSNORM, b3, 3, &pc, sizeof pc, R, 1);
    pc_aq pa = {(uint32_t)R, (uint32_t)D, (uint32_t)D, 0, 128, 0};
    vkbuf *ba[2] = {&by, &bq};
    run1(P_ACT_QUANT, ba, 2, &pa, sizeof pa, (uint32_t)D / 128, (uint32_t)R);
    CHECK(readbuf(&by, y1, n * 4) == 0);
    CHECK(readbuf(&bq, q1, n * 4) == 0);
    vkbuf by2 = mkbuf(NULL, n * 4), bq2 = mkbuf(NULL, n * 4);
    vkbuf *b4[4] = {&bx, &bw, &by2, &bq2};
    run1(P_RMSNORM_Q, b4, 4, &pc, sizeof pc, R, 1);
    CHECK(readbuf(&by2, y2, n * 4) == 0);
    CHECK(readbuf(&bq2, q2, n * 4) == 0);
    CHECKF(memcmp(y1, y2, n * 4) == 0, "rmsnorm_q's norm differs from rmsnorm's");
    CHECKF(memcmp(q1, q2, n * 4) == 0, "rmsnorm_q's quantized output differs from rmsnorm + act_quant");
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += q1[i] != y1[i];
    CHECKF(differ > n / 4, "the quantization changed only %zu of %zu values", differ, n);
    /* in place: the quantized result over the input rows */
    vkbuf *b5[4] = {&bx, &bw, &by2, &bx};
    run1(P_RMSNORM_Q, b5, 4, &pc, sizeof pc, R, 1);
    CHECK(readbuf(&bx, q2, n * 4) == 0);
    CHECKF(memcmp(q1, q2, n * 4) == 0, "rmsnorm_q in place differs");
    vkbuf_free(&rt, &bx); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &by); vkbuf_free(&rt, &bq);
    vkbuf_free(&rt, &by2); vkbuf_free(&rt, &bq2);
    free(x); free(y1); free(q1); free(y2); free(q2);
}

/* ---- headprep: indexer path (RoPE, Hadamard, FP4) and KV path (norm, RoPE, FP8) ---- */
typedef struct { uint32_t D, rd, ldx, x_off, flags, pos_base, pos_step; float eps; } pc_hp;

static void headprep_paths(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int R = 6, D = 128, rd = 64;
    ref_rope rope;
    ref_rope_init(&rope, rd, 160000, 1, 65536, 16, 32, 1);
    float *x = malloc((size_t)R * D * 4), *r = malloc((size_t)R * D * 4), *g = malloc((size_t)R * D * 4);
    uint32_t pos[6] = {0, 1, 77, 4095, 65536, 1000000};
    int64_t pos64[6];
    for (int i = 0; i < R; i++) pos64[i] = pos[i];
    uint16_t wh[128];
    float w[128];
    for (int i = 0; i < D; i++) {
        wh[i] = dsv4_f32_to_bf16(1 + frand() * 0.3f);
        w[i] = dsv4_bf16_to_f32(wh[i]);
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < R * D; i++) x[i] = bf(frand() * 2);
        memcpy(r, x, (size_t)R * D * 4);
        uint32_t flags;
        if (pass == 0) { /* indexer q: RoPE -> Hadamard -> FP4 */
            ref_rope_apply(&rope, r, R, pos64, 1, D, D, D - rd, 0);
            ref_hadamard(r, R, D);
            ref_fp4_act_quant(r, R, D);
            flags = 4 | 16 | 32 | 128;
        } else { /* kv: RMSNorm(w) -> RoPE -> FP8 of the non-rope dims */
            ref_rmsnorm(r, w, R, D, 1e-6f, r);
            ref_rope_apply(&rope, r, R, pos64, 1, D, D, D - rd, 0);
            ref_act_quant(r, R, D - rd, D, 64);
            flags = 2 | 4 | 64 | 128;
        }
        float fr[32];
        memcpy(fr, rope.freq, sizeof fr);
        vkbuf bx = mkbuf(x, (size_t)R * D * 4), bw = mkbuf(wh, sizeof wh), bf_ = mkbuf(fr, sizeof fr),
              bp = mkbuf(pos, sizeof pos);
        vkbuf *b[4] = {&bx, &bw, &bf_, &bp};
        pc_hp pc = {(uint32_t)D, (uint32_t)rd, (uint32_t)D, 0, flags, 0, 0, 1e-6f};
        run1(P_HEADPREP, b, 4, &pc, sizeof pc, R, 1);
        CHECK(readbuf(&bx, g, (size_t)R * D * 4) == 0);
        double e = nmse(g, r, (size_t)R * D);
        printf("  headprep %s nmse %.3g\n", pass ? "kv" : "indexer", e);
        CHECKF(e < 1e-5, "headprep pass %d nmse %g", pass, e);
        vkbuf_free(&rt, &bx); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &bf_); vkbuf_free(&rt, &bp);
    }
    ref_rope_free(&rope);
    free(x); free(r); free(g);
}

/* ---- sparse attention: window from this call and the ring + HCA entries ---- */
typedef struct { uint32_t D, H, win, t0, p0, ratio, mode, topk, ld_i; float scale; uint32_t n_tok, ld_sc, base_rows; } pc_attn;

static void attention_window_and_compressed(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int H = 3, D = 192, win = 8, n = 5, p0 = 20, ratio = 4, ne = (p0 + n) / ratio;
    float *q = malloc((size_t)n * H * D * 4), *kv = malloc((size_t)n * D * 4), *ring = malloc((size_t)win * D * 4),
          *cmp = malloc((size_t)ne * D * 4), *r = malloc((size_t)n * H * D * 4), *g = malloc((size_t)n * H * D * 4);
    float sink[3] = {0.5f, -1.0f, 2.0f};
    for (int i = 0; i < n * H * D; i++) q[i] = bf(frand());
    for (int i = 0; i < n * D; i++) kv[i] = bf(frand());
    for (int i = 0; i < win * D; i++) ring[i] = bf(frand());
    for (int i = 0; i < ne * D; i++) cmp[i] = bf(frand());
    float scale = 1.0f / sqrtf((float)D);
    for (int t = 0; t < n; t++) {
        int p = p0 + t, nk = 0;
        const float *keys[64];
        for (int pp = p - win + 1; pp <= p; pp++) keys[nk++] = pp >= p0 ? kv + (pp - p0) * D : ring + (pp % win) * D;
        for (int e = 0; e < (p + 1) / ratio; e++) keys[nk++] = cmp + e * D;
        ref_sparse_attn(q + t * H * D, H, D, keys, nk, sink, scale, r + t * H * D);
    }
    int dummy_idx[4] = {-1, -1, -1, -1};
    vkbuf bq = mkbuf(q, (size_t)n * H * D * 4), bk = mkbuf(kv, (size_t)n * D * 4), br = mkbuf(ring, (size_t)win * D * 4),
          bc = mkbuf(cmp, (size_t)ne * D * 4), bi = mkbuf(dummy_idx, sizeof dummy_idx), bs = mkbuf(sink, sizeof sink),
          bo = mkbuf(NULL, (size_t)n * H * D * 4), bd = mkbuf(NULL, 16);
    vkbuf *b[8] = {&bq, &bk, &br, &bc, &bi, &bs, &bo, &bd};
    pc_attn pc = {(uint32_t)D, (uint32_t)H, (uint32_t)win, 0, (uint32_t)p0, (uint32_t)ratio, 1, 0, 0, scale, (uint32_t)n, 0, 0};
    float *g2 = malloc((size_t)n * H * D * 4);
    vkbuf bb, bown; /* the entries split at 2 as a fork's shared base and own rows: the same bits */
    split_rows(cmp, ne, D, 2, &bb, &bown);
    vkbuf *bsplit[8] = {&bq, &bk, &br, &bown, &bi, &bs, &bo, &bb};
    for (int serial = 0; serial < 2; serial++) {
        pc.base_rows = 0;
        if (serial) run1(P_ATTN_SERIAL, b, 8, &pc, sizeof pc, (n * H + 15) / 16, 1);
        else run1(P_ATTN, b, 8, &pc, sizeof pc, n, H);
        CHECK(readbuf(&bo, g, (size_t)n * H * D * 4) == 0);
        double e = nmse(g, r, (size_t)n * H * D);
        printf("  attention %s nmse %.3g\n", serial ? "serial" : "workgroup", e);
        CHECKF(e < 1e-6, "attention nmse %g", e);
        pc.base_rows = 2;
        if (serial) run1(P_ATTN_SERIAL, bsplit, 8, &pc, sizeof pc, (n * H + 15) / 16, 1);
        else run1(P_ATTN, bsplit, 8, &pc, sizeof pc, n, H);
        CHECK(readbuf(&bo, g2, (size_t)n * H * D * 4) == 0);
        CHECKF(memcmp(g, g2, (size_t)n * H * D * 4) == 0, "attention %s with a split cache differs",
               serial ? "serial" : "workgroup");
    }
    for (int i = 0; i < 8; i++) vkbuf_free(&rt, b[i]);
    vkbuf_free(&rt, &bb); vkbuf_free(&rt, &bown);
    free(g2);
    free(q); free(kv); free(ring); free(cmp); free(r); free(g);
}

/* ---- top-k of the indexer scores ---- */
typedef struct { uint32_t topk, ratio, p0, ld_s, ld_i, i_row0; } pc_topk;

static void topk_ties_and_visibility(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int T = 3, ld = 40, K = 6;
    float s[3 * 40];
    for (int i = 0; i < T * ld; i++) s[i] = bf(frand());
    s[5] = s[9] = s[11] = 5.0f; /* ties at the top of row 0 */
    int p0 = 14;                 /* row t sees (p0 + t + 1) / 4 entries: 3, 4, 4 */
    vkbuf bs = mkbuf(s, sizeof s), bi = mkbuf(NULL, (size_t)T * K * 4);
    vkbuf *b[2] = {&bs, &bi};
    pc_topk pc = {(uint32_t)K, 4, (uint32_t)p0, (uint32_t)ld, (uint32_t)K, 0};
    run1(P_TOPK, b, 2, &pc, sizeof pc, T, 1);
    int32_t idx[3 * 6];
    CHECK(readbuf(&bi, idx, sizeof idx) == 0);
    for (int t = 0; t < T; t++) {
        int n = (p0 + t + 1) / 4, k = n < K ? n : K;
        /* the reference: every visible entry (n <= K here), as a set, then -1 */
        int seen = 0;
        for (int j = 0; j < K; j++) {
            int v = idx[t * K + j];
            if (j < k) {
                CHECKF(v >= 0 && v < n && !(seen & (1 << v)), "row %d slot %d: %d", t, j, v);
                if (v >= 0 && v < 31) seen |= 1 << v;
            } else {
                CHECKF(v == -1, "row %d slot %d: %d (want -1)", t, j, v);
            }
        }
    }
    vkbuf_free(&rt, &bs); vkbuf_free(&rt, &bi);
    /* a longer row: the k largest, ties to the lower index */
    int n = 300;
    float *s2 = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) s2[i] = bf(frand());
    s2[17] = s2[40] = s2[250] = 3.0f;
    s2[100] = 2.0f;
    bs = mkbuf(s2, (size_t)n * 4);
    bi = mkbuf(NULL, 3 * 4);
    vkbuf *b2[2] = {&bs, &bi};
    pc_topk pc2 = {3, 1, (uint32_t)n - 1, (uint32_t)n, 3, 0};
    run1(P_TOPK, b2, 2, &pc2, sizeof pc2, 1, 1);
    int32_t top[3];
    CHECK(readbuf(&bi, top, sizeof top) == 0);
    int has17 = 0, has40 = 0, has250 = 0;
    for (int j = 0; j < 3; j++) {
        has17 |= top[j] == 17;
        has40 |= top[j] == 40;
        has250 |= top[j] == 250;
    }
    CHECKF(has17 && has40 && has250, "top3 %d %d %d", top[0], top[1], top[2]);
    /* k = 2 of the three tied maxima: the two lower indices */
    vkbuf_free(&rt, &bi);
    bi = mkbuf(NULL, 2 * 4);
    b2[1] = &bi;
    pc2.topk = 2;
    pc2.ld_i = 2;
    run1(P_TOPK, b2, 2, &pc2, sizeof pc2, 1, 1);
    CHECK(readbuf(&bi, top, 2 * 4) == 0);
    CHECKF((top[0] == 17 && top[1] == 40) || (top[0] == 40 && top[1] == 17), "top2 %d %d", top[0], top[1]);
    vkbuf_free(&rt, &bs); vkbuf_free(&rt, &bi);
    free(s2);
}

/* ---- attn_tile: many heads, CSA lists with -1, HCA, a partly filled window ---- */
/* One attention case: tokens p0..p0+n-1 of a sequence, mode 1 (HCA: all
 * (pos+1)/ratio entries) or 2 (CSA: a top-k list per token with -1 holes).
 * attn_tile (whichever variant the device has) against ref_sparse_attn, and
 * bit for bit against attn_direct, and against attn and attn_serial when
 * `same_bits` (the engine picks among them per segment; they must agree
 * exactly). */
static void attn_case(vk_pipe_id tile, int H, int D, int win, int n, int p0, int ratio, int mode, int topk,
                      int same_bits)
{
    int ne = (p0 + n) / ratio + 1, ld_i = topk > 0 ? topk : 1;
    size_t qn = (size_t)n * H * D;
    float *q = malloc(qn * 4), *kv = malloc((size_t)n * D * 4), *ring = malloc((size_t)win * D * 4),
          *cmp = malloc((size_t)ne * D * 4), *r = malloc(qn * 4), *g = malloc(qn * 4), *g2 = malloc(qn * 4);
    float *sink = malloc((size_t)H * 4);
    int32_t *idx = malloc((size_t)n * ld_i * 4);
    const float **keys = malloc((size_t)(win + ne + topk) * sizeof *keys);
    for (size_t i = 0; i < qn; i++) q[i] = bf(frand());
    for (int i = 0; i < n * D; i++) kv[i] = bf(frand());
    for (int i = 0; i < win * D; i++) ring[i] = bf(frand());
    for (int i = 0; i < ne * D; i++) cmp[i] = bf(frand() * 2.0f);
    for (int h = 0; h < H; h++) sink[h] = frand() * 3.0f;
    for (int t = 0; t < n; t++) {
        int vis = (p0 + t + 1) / ratio;
        for (int j = 0; j < topk; j++) /* visible entries, some -1 (masked) and past the visible count */
            idx[t * ld_i + j] = j < vis && (rng >> 9) % 5 != 0 ? (int)((rng = rng * 1664525u + 1013904223u) >> 8) % vis : -1;
    }
    float scale = 1.0f / sqrtf((float)D);
    for (int t = 0; t < n; t++) {
        int p = p0 + t, nk = 0, nw = p + 1 < win ? p + 1 : win;
        for (int j = 0; j < win; j++) {
            int kp = p + 1 - nw + j;
            keys[nk++] = j >= nw ? NULL : kp >= p0 ? kv + (size_t)(kp - p0) * D : ring + (size_t)(kp % win) * D;
        }
        if (mode == 1)
            for (int e = 0; e < (p + 1) / ratio; e++) keys[nk++] = cmp + (size_t)e * D;
        else
            for (int j = 0; j < topk; j++) keys[nk++] = idx[t * ld_i + j] < 0 ? NULL : cmp + (size_t)idx[t * ld_i + j] * D;
        ref_sparse_attn(q + (size_t)t * H * D, H, D, keys, nk, sink, scale, r + (size_t)t * H * D);
    }
    vkbuf bq = mkbuf(q, qn * 4), bk = mkbuf(kv, (size_t)n * D * 4), br = mkbuf(ring, (size_t)win * D * 4),
          bc = mkbuf(cmp, (size_t)ne * D * 4), bi = mkbuf(idx, (size_t)n * ld_i * 4), bs = mkbuf(sink, (size_t)H * 4),
          bo = mkbuf(NULL, qn * 4);
    /* the scores kept between the passes: [token][head][ld_sc] (ld_sc >= the longest key list) */
    uint32_t ld_sc = (uint32_t)(win + (mode == 1 ? ne : topk) + 3);
    vkbuf bsc = mkbuf(NULL, (size_t)n * H * ld_sc * 4), bd = mkbuf(NULL, 16);
    /* tiled forms: the kept scores at 7 and the base rows last; attn and
       attn_serial: the base rows at 7 */
    vkbuf *b[9] = {&bq, &bk, &br, &bc, &bi, &bs, &bo, &bsc, &bd}, *b7[8] = {&bq, &bk, &br, &bc, &bi, &bs, &bo, &bd};
    pc_attn pc = {(uint32_t)D, (uint32_t)H, (uint32_t)win, 0, (uint32_t)p0, (uint32_t)ratio, (uint32_t)mode,
                  (uint32_t)topk, (uint32_t)ld_i, scale, (uint32_t)n, 0, 0};
    run1(tile, b, 9, &pc, sizeof pc, (uint32_t)n, (uint32_t)(H + 7) / 8);
    CHECK(readbuf(&bo, g, qn * 4) == 0);
    double e = nmse(g, r, qn);
    printf("  %s H %d D %d win %d p0 %d n %d mode %d topk %d: nmse %.3g\n", tile == P_ATTN_TILE ? "attn_tile" : "attn_tile_s",
           H, D, win, p0, n, mode, topk, e);
    CHECKF(e < 1e-6, "attn_tile nmse %g", e);
    static const char *names[5] = {"attn_tile with kept scores", "attn_direct", "attn_direct with kept scores",
                                   "attn", "attn_serial"};
    /* the entries split as a fork holds them (shared base rows < sb, own
       rows after): every variant must give the same bits as one buffer */
    int sb = ne / 2;
    vkbuf bb, bown;
    split_rows(cmp, ne, D, sb, &bb, &bown);
    for (int v = 0; v < 10; v++) {
        int w = v % 5, split = v >= 5;
        if (w > 2 && !same_bits) continue;
        char err[256];
        memset(g2, 0xff, qn * 4); /* NaNs: a variant that writes nothing cannot match */
        CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, qn * 4), g2, qn * 4, err, sizeof err) == 0);
        pc.ld_sc = w == 0 || w == 2 ? ld_sc : 0;
        pc.base_rows = split ? (uint32_t)sb : 0;
        b[3] = b7[3] = split ? &bown : &bc;
        b[8] = b7[7] = split ? &bb : &bd;
        if (w == 4) run1(P_ATTN_SERIAL, b7, 8, &pc, sizeof pc, (uint32_t)(n * H + 15) / 16, 1);
        else if (w == 3) run1(P_ATTN, b7, 8, &pc, sizeof pc, (uint32_t)n, (uint32_t)H);
        else if (w == 0) run1(tile, b, 9, &pc, sizeof pc, (uint32_t)n, (uint32_t)(H + 7) / 8);
        else run1(P_ATTN_DIRECT, b, 9, &pc, sizeof pc, (uint32_t)n, (uint32_t)H);
        CHECK(readbuf(&bo, g2, qn * 4) == 0);
        size_t diff = 0;
        for (size_t i = 0; i < qn; i++) diff += memcmp(&g[i], &g2[i], 4) != 0;
        /* The engine mixes attn_tile, attn_direct and attn_serial within one
           sequence (by segment size), so they must agree bit for bit on every
           device. attn is a GPU's fallback for every segment size at once;
           a GPU compiler may fuse its multiply-adds differently (one value of
           21888 differed on an H200), so there it need only agree closely. */
        if (w == 3 && rt.props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU)
            CHECKF(nmse(g2, g, qn) < 1e-10, "attn differs from attn_tile: nmse %g", nmse(g2, g, qn));
        else
            CHECKF(diff == 0, "attn_tile differs from %s%s in %zu of %zu values", names[w],
                   split ? " (cache split at a fork's base rows)" : "", diff, qn);
    }
    b[3] = &bc;
    b[8] = &bd;
    for (int i = 0; i < 9; i++) vkbuf_free(&rt, b[i]);
    vkbuf_free(&rt, &bb); vkbuf_free(&rt, &bown);
    free(q); free(kv); free(ring); free(cmp); free(r); free(g); free(g2); free(sink); free(idx); free(keys);
}

static void attention_tiled_heads(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    for (int v = 0; v < 2; v++) { /* attn_tile (head_dim <= 512), attn_tile_s (<= 256) */
        vk_pipe_id tile = v ? P_ATTN_TILE_S : P_ATTN_TILE;
        if (!vkrt_has_pipe(&rt, tile)) {
            printf("  %s: not on this device (shared memory)\n", v ? "attn_tile_s" : "attn_tile");
            continue;
        }
        attn_case(tile, 19, 192, 16, 6, 3, 4, 2, 24, 1);   /* window partly filled, CSA with holes */
        attn_case(tile, 8, 256, 8, 5, 40, 4, 2, 13, 1);     /* ring + chunk window, odd top-k */
        attn_case(tile, 11, 192, 12, 4, 60, 4, 1, 0, 1);    /* HCA */
        attn_case(tile, 16, 128, 32, 3, 2400, 8, 1, 0, 0);  /* 332 keys: past attn_serial's loop budget */
        attn_case(tile, 64, 64, 16, 2, 100, 4, 2, 40, 1);   /* all 64 heads of V4 */
        if (!v) attn_case(tile, 9, 512, 8, 2, 30, 4, 2, 12, 0); /* V4's head_dim */
    }
}

/* ---- attn_fast and attn_cm: GPU prefill attention in their own summation order ---- */

/* One case as attn_case (window partly filled or from ring and chunk, HCA or
 * CSA lists with holes) for pipe p (P_ATTN_FAST: 8 heads per workgroup,
 * P_ATTN_CM: 16): against ref_sparse_attn within a normalised-error bound
 * (their sums run in another order than the reference's), guard bytes after
 * the output, and the compressed rows split at base_rows = ne / 2 + 1 into a
 * base and an own buffer must give the same bits as one buffer. Returns the
 * error. */
static double attn_fast_case(vk_pipe_id pipe, int H, int D, int win, int n, int p0, int ratio, int mode, int topk)
{
    int ne = (p0 + n) / ratio + 1, ld_i = topk > 0 ? topk : 1;
    int hg = pipe == P_ATTN_CM ? 16 : pipe == P_ATTN_CM32 ? 32 : pipe == P_ATTN_CM64 ? 64 : 8;
    const char *name = pipe == P_ATTN_FAST ? "attn_fast" : pipe == P_ATTN_CM ? "attn_cm" : pipe == P_ATTN_CM32 ? "attn_cm32" : "attn_cm64";
    size_t qn = (size_t)n * H * D;
    float *q = malloc(qn * 4), *kv = malloc((size_t)n * D * 4), *ring = malloc((size_t)win * D * 4),
          *cmp = malloc((size_t)ne * D * 4), *r = malloc(qn * 4), *g = malloc(qn * 4), *g2 = malloc(qn * 4);
    float *sink = malloc((size_t)H * 4);
    int32_t *idx = malloc((size_t)n * ld_i * 4);
    const float **keys = malloc((size_t)(win + ne + topk) * sizeof *keys);
    for (size_t i = 0; i < qn; i++) q[i] = bf(frand());
    for (int i = 0; i < n * D; i++) kv[i] = bf(frand());
    for (int i = 0; i < win * D; i++) ring[i] = bf(frand());
    for (int i = 0; i < ne * D; i++) cmp[i] = bf(frand() * 2.0f);
    for (int h = 0; h < H; h++) sink[h] = frand() * 3.0f;
    for (int t = 0; t < n; t++) {
        int vis = (p0 + t + 1) / ratio;
        for (int j = 0; j < topk; j++)
            idx[t * ld_i + j] = j < vis && (rng >> 9) % 5 != 0 ? (int)((rng = rng * 1664525u + 1013904223u) >> 8) % vis : -1;
    }
    float scale = 1.0f / sqrtf((float)D);
    for (int t = 0; t < n; t++) {
        int p = p0 + t, nk = 0, nw = p + 1 < win ? p + 1 : win;
        for (int j = 0; j < win; j++) {
            int kp = p + 1 - nw + j;
            keys[nk++] = j >= nw ? NULL : kp >= p0 ? kv + (size_t)(kp - p0) * D : ring + (size_t)(kp % win) * D;
        }
        if (mode == 1)
            for (int e = 0; e < (p + 1) / ratio; e++) keys[nk++] = cmp + (size_t)e * D;
        else
            for (int j = 0; j < topk; j++) keys[nk++] = idx[t * ld_i + j] < 0 ? NULL : cmp + (size_t)idx[t * ld_i + j] * D;
        ref_sparse_attn(q + (size_t)t * H * D, H, D, keys, nk, sink, scale, r + (size_t)t * H * D);
    }
    int br = ne / 2 + 1; /* the split: rows 0..br-1 in the base buffer */
    vkbuf bq = mkbuf(q, qn * 4), bk = mkbuf(kv, (size_t)n * D * 4), br_ = mkbuf(ring, (size_t)win * D * 4),
          bc = mkbuf(cmp, (size_t)ne * D * 4), bi = mkbuf(idx, (size_t)n * ld_i * 4), bs = mkbuf(sink, (size_t)H * 4),
          bo = mkbuf(NULL, qn * 4), bd = mkbuf(NULL, 16), bbase = mkbuf(cmp, (size_t)br * D * 4),
          bown = mkbuf(cmp + (size_t)br * D, (size_t)(ne - br) * D * 4);
    vkbuf *b[8] = {&bq, &bk, &br_, &bc, &bi, &bs, &bo, &bd};
    pc_attn pc = {(uint32_t)D, (uint32_t)H, (uint32_t)win, 0, (uint32_t)p0, (uint32_t)ratio, (uint32_t)mode,
                   (uint32_t)topk, (uint32_t)ld_i, scale, (uint32_t)n, 0, 0};
    run1(pipe, b, 8, &pc, sizeof pc, (uint32_t)n, (uint32_t)(H + hg - 1) / hg);
    CHECK(readbuf(&bo, g, qn * 4) == 0);
    double e = nmse(g, r, qn);
    printf("  %s H %d D %d win %d p0 %d n %d mode %d topk %d: nmse %.3g\n", name, H, D, win, p0, n, mode, topk, e);
    CHECKF(e < 1e-6, "%s nmse %g", name, e);
    /* the same rows in two buffers */
    char err[256];
    memset(g2, 0xff, qn * 4); /* NaNs: a run that writes nothing cannot match */
    CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, qn * 4), g2, qn * 4, err, sizeof err) == 0);
    b[3] = &bown;
    b[7] = &bbase;
    pc.base_rows = (uint32_t)br;
    run1(pipe, b, 8, &pc, sizeof pc, (uint32_t)n, (uint32_t)(H + hg - 1) / hg);
    CHECK(readbuf(&bo, g2, qn * 4) == 0);
    size_t diff = 0;
    for (size_t i = 0; i < qn; i++) diff += memcmp(&g[i], &g2[i], 4) != 0;
    CHECKF(diff == 0, "rows split at base_rows %d: %zu of %zu values differ", br, diff, qn);
    vkbuf *all[10] = {&bq, &bk, &br_, &bc, &bi, &bs, &bo, &bd, &bbase, &bown};
    for (int i = 0; i < 10; i++) vkbuf_free(&rt, all[i]);
    free(q); free(kv); free(ring); free(cmp); free(r); free(g); free(g2); free(sink); free(idx); free(keys);
    return e;
}

static void attention_fast(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    static const vk_pipe_id pipes[4] = {P_ATTN_FAST, P_ATTN_CM, P_ATTN_CM32, P_ATTN_CM64};
    for (int v = 0; v < 4; v++) {
        vk_pipe_id p = pipes[v];
        if (!vkrt_has_pipe(&rt, p)) {
            printf("  %s: not on this device\n", v ? "attn_cm* (no cooperative matrices)" : "attn_fast (shared memory)");
            continue;
        }
        attn_fast_case(p, 19, 192, 16, 6, 3, 4, 2, 24);    /* window partly filled, CSA with holes */
        attn_fast_case(p, 8, 256, 8, 5, 40, 4, 2, 13);     /* ring + chunk window, odd top-k */
        attn_fast_case(p, 16, 128, 32, 3, 2400, 8, 1, 0);  /* HCA, 332 keys */
        attn_fast_case(p, 64, 64, 16, 2, 100, 4, 2, 40);   /* all 64 heads of V4 */
        attn_fast_case(p, 4, 192, 64, 5, 70, 4, 2, 16);    /* the tiny golden model's sizes */
        attn_fast_case(p, 64, 512, 128, 2, 2100, 4, 2, 512); /* V4-Flash: 128 window + 512 top-k keys */
    }
}

/* ---- indexer scores: index_score_tile against the CPU formula, index_score_tok and index_score ---- */
typedef struct { uint32_t nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint32_t n_tok, base_rows; } pc_iscore;

static void indexer_scores_tiled(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int nh = 5, hd = 128, T = 14, t0 = 2, m = 11, p0 = 201, ld = 64, n_max = (p0 + m) / 4;
    float *q = malloc((size_t)T * nh * hd * 4), *w = malloc((size_t)T * nh * 4), *k = malloc((size_t)n_max * hd * 4);
    float *r = malloc((size_t)m * ld * 4), *g = malloc((size_t)m * ld * 4), *g2 = malloc((size_t)m * ld * 4);
    for (int i = 0; i < T * nh * hd; i++) q[i] = bf(frand());
    for (int i = 0; i < T * nh; i++) w[i] = bf(frand() * 4.0f);
    for (int i = 0; i < n_max * hd; i++) k[i] = bf(frand());
    float ws = (float)(pow(hd, -0.5) * pow(nh, -0.5));
    for (int a = 0; a < m; a++) { /* Indexer.forward's einsum, relu, weights, head sum, in bf16 steps */
        int n = (p0 + a + 1) / 4;
        for (int i = 0; i < ld; i++) {
            float v = 12345.0f; /* not written: the buffer's zeros */
            if (i < n_max) v = -INFINITY;
            if (i < n) {
                float sum = 0;
                for (int h = 0; h < nh; h++) {
                    float d = 0;
                    const float *qr = q + ((size_t)(t0 + a) * nh + h) * hd, *kr = k + (size_t)i * hd;
                    for (int c = 0; c < hd; c++) d += qr[c] * kr[c];
                    float wt = bf(w[(t0 + a) * nh + h] * ws);
                    sum += bf(fmaxf(bf(d), 0.0f) * wt);
                }
                v = bf(sum);
            }
            r[a * ld + i] = v == 12345.0f ? 0.0f : v;
        }
    }
    vkbuf bq = mkbuf(q, (size_t)T * nh * hd * 4), bw = mkbuf(w, (size_t)T * nh * 4),
          bk = mkbuf(k, (size_t)n_max * hd * 4), bo = mkbuf(NULL, (size_t)m * ld * 4), bd = mkbuf(NULL, 16);
    vkbuf *b[5] = {&bq, &bw, &bk, &bo, &bd};
    pc_iscore pc = {(uint32_t)nh, (uint32_t)hd, 4, (uint32_t)t0, (uint32_t)p0, (uint32_t)ld, (uint32_t)n_max, ws,
                    (uint32_t)m, 0};
    run1(P_INDEX_SCORE_TILE, b, 5, &pc, sizeof pc, (uint32_t)(n_max + 31) / 32, (uint32_t)(m + 7) / 8);
    CHECK(readbuf(&bo, g, (size_t)m * ld * 4) == 0);
    float *g3 = malloc((size_t)m * ld * 4);
    char verr[256];
    memset(g3, 0xff, (size_t)m * ld * 4); /* NaNs: a shader that writes nothing cannot match */
    if (vkrt_has_pipe(&rt, P_INDEX_SCORE_TOK)) { /* the decode form */
        CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, (size_t)m * ld * 4), g3, (size_t)m * ld * 4, verr, sizeof verr) == 0);
        run1(P_INDEX_SCORE_TOK, b, 5, &pc, sizeof pc, (uint32_t)(n_max + 63) / 64, (uint32_t)m);
        CHECK(readbuf(&bo, g3, (size_t)m * ld * 4) == 0);
        size_t d3 = 0;
        for (int a = 0; a < m; a++) /* entries >= n_max are not written: still the NaN pattern */
            for (int i = 0; i < ld; i++) {
                uint32_t u;
                memcpy(&u, &g3[a * ld + i], 4);
                d3 += i < n_max ? memcmp(&g[a * ld + i], &g3[a * ld + i], 4) != 0 : u != 0xffffffffu;
            }
        CHECKF(d3 == 0, "index_score_tok differs from index_score_tile in %zu values", d3);
    } else {
        printf("  index_score_tok: not on this device (shared memory)\n");
    }
    memset(g3, 0, (size_t)m * ld * 4); /* as before index_score_tile */
    CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, (size_t)m * ld * 4), g3, (size_t)m * ld * 4, verr, sizeof verr) == 0);
    free(g3);
    run1(P_INDEX_SCORE, b, 5, &pc, sizeof pc, (uint32_t)(n_max + 63) / 64, (uint32_t)m);
    CHECK(readbuf(&bo, g2, (size_t)m * ld * 4) == 0);
    size_t bad = 0, diff = 0, fin = 0;
    double err = 0, ref2 = 0;
    for (int i = 0; i < m * ld; i++) {
        diff += memcmp(&g[i], &g2[i], 4) != 0;
        if (isinf(r[i]) || r[i] == 0.0f) {
            bad += memcmp(&g[i], &r[i], 4) != 0;
        } else {
            fin++;
            err += ((double)g[i] - r[i]) * ((double)g[i] - r[i]);
            ref2 += (double)r[i] * r[i];
        }
    }
    printf("  index_score_tile: %zu finite scores, nmse %.3g\n", fin, ref2 > 0 ? err / ref2 : err);
    CHECKF(bad == 0, "%zu masked/unwritten entries wrong", bad);
    CHECKF(fin > 100 && err <= 1e-6 * ref2, "nmse %g", ref2 > 0 ? err / ref2 : err);
    CHECKF(diff == 0, "index_score_tile differs from index_score in %zu values", diff);
    /* the entries split as a fork holds them (shared base rows < 13, own
       rows after): each form gives the bits of the one-buffer case */
    vkbuf bb, bown;
    split_rows(k, n_max, hd, 13, &bb, &bown);
    b[2] = &bown;
    b[4] = &bb;
    pc.base_rows = 13;
    static const vk_pipe_id forms[3] = {P_INDEX_SCORE_TILE, P_INDEX_SCORE_TOK, P_INDEX_SCORE};
    for (int f = 0; f < 3; f++) {
        if (!vkrt_has_pipe(&rt, forms[f])) continue;
        memset(g2, 0, (size_t)m * ld * 4);
        CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, (size_t)m * ld * 4), g2, (size_t)m * ld * 4, verr, sizeof verr) == 0);
        if (f == 0) run1(forms[f], b, 5, &pc, sizeof pc, (uint32_t)(n_max + 31) / 32, (uint32_t)(m + 7) / 8);
        else run1(forms[f], b, 5, &pc, sizeof pc, (uint32_t)(n_max + 63) / 64, (uint32_t)m);
        CHECK(readbuf(&bo, g2, (size_t)m * ld * 4) == 0);
        CHECKF(memcmp(g, g2, (size_t)m * ld * 4) == 0, "index score form %d with a split cache differs", f);
    }
    b[2] = &bk;
    b[4] = &bd;
    vkbuf_free(&rt, &bb); vkbuf_free(&rt, &bown);
    for (int i = 0; i < 5; i++) vkbuf_free(&rt, b[i]);
    free(q); free(w); free(k); free(r); free(g); free(g2);
}

/* ---- topk_radix: many ties at large n, against a CPU selection and topk ---- */
static void topk_radix_ties_large(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int T = 4, ld = 6000, K = 512, p0 = 4 * 5900 - 2; /* rows see 5899 .. 5900 entries (ratio 4) */
    float *s = malloc((size_t)T * ld * 4);
    for (int i = 0; i < T * ld; i++) s[i] = bf(roundf(frand() * 12.0f) / 4.0f); /* 97 levels: many ties */
    for (int i = 0; i < 50; i++) s[ld + i * 37] = -INFINITY;
    for (int i = 0; i < ld; i++) s[2 * ld + i] = i % 3 ? -0.0f : 0.0f; /* all equal but for the sign of zero */
    s[3 * ld + 7] = INFINITY;
    vkbuf bs = mkbuf(s, (size_t)T * ld * 4), bi = mkbuf(NULL, (size_t)T * K * 4);
    vkbuf *b[2] = {&bs, &bi};
    int32_t *ir = malloc((size_t)T * K * 4), *ib = malloc((size_t)T * K * 4);
    pc_topk pc = {(uint32_t)K, 4, (uint32_t)p0, (uint32_t)ld, (uint32_t)K, 0};
    run1(P_TOPK_RADIX, b, 2, &pc, sizeof pc, (uint32_t)T, 1);
    CHECK(readbuf(&bi, ir, (size_t)T * K * 4) == 0);
    run1(P_TOPK, b, 2, &pc, sizeof pc, (uint32_t)T, 1);
    CHECK(readbuf(&bi, ib, (size_t)T * K * 4) == 0);
    CHECKF(memcmp(ir, ib, (size_t)T * K * 4) == 0, "topk_radix differs from topk");
    char *want = malloc((size_t)ld);
    for (int t = 0; t < T; t++) {
        int n = (p0 + t + 1) / 4;
        /* the reference: the K best by (value desc, index asc); -0 ranks below +0 as in the shader's keys */
        memset(want, 0, (size_t)ld);
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int i = 0; i < n; i++) {
                if (want[i]) continue;
                if (best < 0 || s[t * ld + i] > s[t * ld + best] ||
                    (s[t * ld + i] == s[t * ld + best] && signbit(s[t * ld + best]) && !signbit(s[t * ld + i])))
                    best = i;
            }
            want[best] = 1;
        }
        int wrong = 0;
        for (int j = 0; j < K; j++) {
            int v = ir[t * K + j];
            if (v < 0 || v >= n || !want[v]) wrong++;
            else want[v] = 0; /* each once */
        }
        CHECKF(wrong == 0, "row %d: %d indices not among the %d best", t, wrong, K);
    }
    vkbuf_free(&rt, &bs); vkbuf_free(&rt, &bi);
    free(s); free(ir); free(ib); free(want);
}

int main(void)
{
    RUN(gemm_formats);
    RUN(gemm_grouped);
    RUN(gemm_coopmat);
    RUN(act_quant_fp8);
    RUN(rmsnorm_rows);
    RUN(rmsnorm_quant_fused);
    RUN(headprep_paths);
    RUN(attention_window_and_compressed);
    RUN(topk_ties_and_visibility);
    RUN(attention_tiled_heads);
    RUN(attention_fast);
    RUN(indexer_scores_tiled);
    RUN(topk_radix_ties_large);
    if (rt_ok == 1) vkrt_close(&rt);
    CHECK_EXIT();
}
