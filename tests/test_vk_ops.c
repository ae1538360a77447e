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

static void run1z(vk_pipe_id p, vkbuf **bufs, int n, const void *push, size_t ps, uint32_t gx, uint32_t gy,
                  uint32_t gz)
{
    char err[256];
    vkview v[VK_MAX_BINDINGS];
    for (int i = 0; i < n; i++) v[i] = vkbuf_view(bufs[i], 0, bufs[i]->size);
    vkrt_begin(&rt, err, sizeof err);
    vkrt_dispatch(&rt, p, v, n, push, ps, gx, gy, gz);
    vkrt_submit_wait(&rt, err, sizeof err);
}

static void run1(vk_pipe_id p, vkbuf **bufs, int n, const void *push, size_t ps, uint32_t gx, uint32_t gy)
{
    run1z(p, bufs, n, push, ps, gx, gy, 1);
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
    size_t wb = q == DSV4_WQ_FP4 ? (size_t)N * K / 2 : q == DSV4_WQ_FP8 ? (size_t)N * K
              : q == DSV4_WQ_F32 ? (size_t)N * K * 4 : (size_t)N * K * 2;
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
    if (q == DSV4_WQ_F32)
        for (size_t i = 0; i < wb / 4; i++) {
            float f = frand() * 0.1f;
            memcpy(wd + 4 * i, &f, 4);
        }
    for (size_t i = 0; i < sb; i++) sd[i] = (uint8_t)(120 + (int)((frand() + 1) * 3));
    w.w.data = wd;
    w.w.nbytes = wb;
    w.scale.data = q == DSV4_WQ_BF16 || q == DSV4_WQ_F32 ? NULL : sd;
    ref_weight_load(&w, &t->rw);
    t->wd = wd; t->sd = sd; t->wb = wb; t->sb = sb;
}

static void tw_free(tw *t)
{
    ref_weight_free(&t->rw);
    free(t->wd); free(t->sd);
}

/* small: 1 the SMALL variant, 2 the SERIAL one, 3 SMALL2; cm: the tensor-core twin
 * instead of the portable shader, 1 from gemm_cm.comp, 2 from gemm_cm2.comp */
static void gemm_case(dsv4_wq q, int M, int N, int K, int small, int cm)
{
    tw t;
    tw_make(&t, q, N, K);
    float *x = malloc((size_t)M * K * 4), *yr = malloc((size_t)M * N * 4), *yg = malloc((size_t)M * N * 4);
    for (int i = 0; i < M * K; i++) x[i] = bf(frand());
    float *xq = malloc((size_t)M * K * 4);
    memcpy(xq, x, (size_t)M * K * 4);
    if (q == DSV4_WQ_FP8 || q == DSV4_WQ_FP4) ref_act_quant(xq, M, K, K, 128); /* the engine quantizes in act_quant */
    ref_linear(&t.rw, x, M, yr);
    vkbuf bx = mkbuf(xq, (size_t)M * K * 4), bw = mkbuf(t.wd, t.wb), bs = mkbuf(t.sd, t.sb),
          by = mkbuf(NULL, (size_t)M * N * 4), bd = mkbuf(NULL, 16);
    vkbuf *bufs[5] = {&bx, &bw, &bs, &by, &bd};
    pc_gemm pc = {(uint32_t)M, (uint32_t)N, (uint32_t)K, (uint32_t)K, (uint32_t)N, 0, 0, 0, 1,
                  q == DSV4_WQ_FP4 ? (uint32_t)K / 32 : (uint32_t)(K + 127) / 128, 0, 0, 0, 0, 0, 0};
    vk_pipe_id p = q == DSV4_WQ_FP8 ? P_GEMM_FP8 : q == DSV4_WQ_FP4 ? P_GEMM_FP4
                 : q == DSV4_WQ_F32 ? P_GEMM_F32 : P_GEMM_BF16;
    if (cm) run1((vk_pipe_id)(cm == 2 ? vkrt_cm2_twin(p) : vkrt_cm_twin(p)), bufs, 5, &pc, sizeof pc, (N + 127) / 128,
                 (M + 63) / 64);
    else if (small == 2) run1(p + P_GEMM_SERIAL_FIRST, bufs, 5, &pc, sizeof pc, (N + 63) / 64, (M + 7) / 8);
    else if (small == 3)
        run1(p + P_GEMM_SMALL2_FIRST, bufs, 5, &pc, sizeof pc, (N + GEMM_SMALL2_COLS - 1) / GEMM_SMALL2_COLS,
             (M + GEMM_SMALL_ROWS - 1) / GEMM_SMALL_ROWS);
    else if (small)
        run1(p + P_GEMM_SMALL_FIRST, bufs, 5, &pc, sizeof pc, (N + GEMM_SMALL_COLS - 1) / GEMM_SMALL_COLS,
             (M + GEMM_SMALL_ROWS - 1) / GEMM_SMALL_ROWS);
    else run1(p, bufs, 5, &pc, sizeof pc, (N + 63) / 64, (M + 63) / 64);
    int guard = readbuf(&by, yg, (size_t)M * N * 4);
    double e = nmse(yg, yr, (size_t)M * N);
    printf("  gemm q%d %dx%dx%d %s: nmse %.3g\n", q, M, N, K,
           cm ? (cm == 2 ? "coopmat2" : "coopmat") : (const char *[]){"tiled", "small", "serial", "small2"}[small], e);
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
        gemm_case(qs[i], 37, 200, 256, 3, 0);  /* SMALL2, more than 16 rows */
        gemm_case(qs[i], 5, 130, 384, 2, 0);
        gemm_case(qs[i], 37, 200, 256, 2, 0);  /* what lavapipe runs */
    }
}

/* SMALL and SMALL2 at every row count they serve, every weight format: N =
 * 67 leaves a workgroup's columns partly past N, K = 1152 the last K loop
 * partly past K (and FP8 two scale columns, FP4 36). */
static void gemm_small_rows(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    const dsv4_wq qs[4] = {DSV4_WQ_BF16, DSV4_WQ_F32, DSV4_WQ_FP8, DSV4_WQ_FP4};
    for (int i = 0; i < 4; i++)
        for (int M = 1; M <= 16; M++) {
            gemm_case(qs[i], M, 67, 1152, 1, 0);
            gemm_case(qs[i], M, 67, 1152, 3, 0);
        }
}

/* The MoE expert GEMMs: 3 experts' weights back to back; the route buffer as
 * moe_group.comp writes it (tiles of <= 32 sorted slots of one expert, the
 * token of each slot); GATHER reads X row rowmap[m], GROUPED row m. Sorted
 * slot m's output row is m. Dispatched with more tile slots than tiles, as
 * forward.c does. */
static const int ex_slots_default[3] = {37, 0, 20}; /* slots per expert: 2 tiles, none, 1 tile */

/* variant: 0 tiled, 1 small, 2 coopmat, 3 serial, 4 coopmat2, 5 small2;
 * cnt: slots per expert (at most 128 in all) */
static void grouped_case(dsv4_wq q, int gather, int variant, const int *cnt)
{
    enum { E = 3, T = 29, N = 200, K = 256, MAX_TILES = 16, MAX_SLOTS = 128 }; /* N: SMALL workgroups partly past N */
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
    uint32_t R[4 + 4 * MAX_TILES + MAX_SLOTS];
    memset(R, 0, sizeof R);
    uint32_t tiles = 0, off = 0, rowmap_off = 4 + 4 * MAX_TILES;
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
    if (variant == 2 || variant == 4)
        run1((vk_pipe_id)(variant == 4 ? vkrt_cm2_twin(p) : vkrt_cm_twin(p)), bufs, 5, &pc, sizeof pc, (N + 127) / 128, gy);
    else if (variant == 1)
        run1(p + P_GEMM_SMALL_FIRST, bufs, 5, &pc, sizeof pc, (N + GEMM_SMALL_COLS - 1) / GEMM_SMALL_COLS, gy);
    else if (variant == 5)
        run1(p + P_GEMM_SMALL2_FIRST, bufs, 5, &pc, sizeof pc, (N + GEMM_SMALL2_COLS - 1) / GEMM_SMALL2_COLS, gy);
    else if (variant == 3) run1(p + P_GEMM_SERIAL_FIRST, bufs, 5, &pc, sizeof pc, (N + 63) / 64, gy);
    else run1(p, bufs, 5, &pc, sizeof pc, (N + 63) / 64, gy);
    int guard = readbuf(&by, yg, (size_t)S * N * 4);
    double e = nmse(yg, yr, (size_t)S * N);
    printf("  gemm q%d %s %d+%d+%d slots x %dx%d %s: nmse %.3g\n", q, gather ? "gather" : "grouped", cnt[0], cnt[1],
           cnt[2], N, K,
           (const char *[]){"tiled", "small", "coopmat", "serial", "coopmat2", "small2"}[variant], e);
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
            grouped_case(qs[i], g, 0, ex_slots_default);
            grouped_case(qs[i], g, 1, ex_slots_default);
            grouped_case(qs[i], g, 5, ex_slots_default);
            grouped_case(qs[i], g, 3, ex_slots_default);
        }
}

/* The tensor-core twins, gemm_cm.comp's and gemm_cm2.comp's (GPU only:
 * lavapipe has no cooperative matrices). */
static void gemm_coopmat(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    if (!rt.coopmat) SKIP("device '%.120s' has no usable VK_KHR_cooperative_matrix (16x16x16 fp16, subgroups of 32)",
                          rt.props.deviceName);
    for (int p = P_GEMM_CM_BF16; p <= P_GEMM_CM_BF16_GROUPED; p++)
        CHECKF(rt.pipe[p] != VK_NULL_HANDLE, "tensor-core pipeline %d was not created", p);
    for (int p = P_GEMM_CM2_FIRST; p <= P_GEMM_CM2_LAST; p++)
        CHECKF(rt.pipe[p] != VK_NULL_HANDLE, "tensor-core pipeline %d (gemm_cm2) was not created", p);
    if (check_case_failed) return;
    const dsv4_wq qs[3] = {DSV4_WQ_BF16, DSV4_WQ_FP8, DSV4_WQ_FP4};
    /* expert tiles of 1..32 rows: 32+5 / 20 (default); 1 / 32+32+1 / 31;
       16 / 17 / 32+24 */
    static const int ex_slots[2][3] = {{1, 65, 31}, {16, 17, 56}};
    for (int v = 1; v <= 2; v++)
        for (int i = 0; i < 3; i++) {
            gemm_case(qs[i], 37, 200, 256, 0, v);
            gemm_case(qs[i], 150, 300, 512, 0, v);
            /* bf16: K of 5 (or 10) slices, an odd count; FP8/FP4 activations
               come in 128-blocks (act_quant) */
            int k_odd = qs[i] == DSV4_WQ_BF16 ? 320 : 384;
            gemm_case(qs[i], 5, 130, k_odd, 0, v);
            gemm_case(qs[i], 70, 130, k_odd, 0, v);
            for (int g = 0; g < 2; g++) {
                grouped_case(qs[i], g, v == 2 ? 4 : 2, ex_slots_default);
                grouped_case(qs[i], g, v == 2 ? 4 : 2, ex_slots[0]);
                grouped_case(qs[i], g, v == 2 ? 4 : 2, ex_slots[1]);
            }
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

/* rmsnorm.comp's own order, on the CPU: lane l adds the squares of columns
   l, l + 64, ... in order, the 64 lane sums are added as a pairwise tree,
   then div_acc / rsqrt_acc (correctly rounded via double); the shader must
   give these bits for any D (staged in shared memory or not). The reference
   of ref_model.h adds in its own order, so it agrees only within a bound. */
static void rms_shader_order(const float *x, const float *w, int R, int D, float eps, float *out)
{
    for (int t = 0; t < R; t++) {
        const float *xr = x + (size_t)t * D;
        float lane[64];
        for (int l = 0; l < 64; l++) {
            float s = 0.0f;
            for (int c = l; c < D; c += 64) s += xr[c] * xr[c];
            lane[l] = s;
        }
        for (int k = 32; k > 0; k >>= 1)
            for (int l = 0; l < k; l++) lane[l] += lane[l + k];
        float ms = (float)((double)lane[0] / (double)(float)D) + eps;
        float r = (float)(1.0 / (double)(float)sqrt((double)ms));
        for (int c = 0; c < D; c++) out[(size_t)t * D + c] = bf(w[c] * (xr[c] * r));
    }
}

/* D 192: a tail of a 64-lane round and of the 1024-column rounds; 7296: past
   the shader's MAXD (7168), the row read from X where needed, not staged */
static void rmsnorm_case(int R, int D)
{
    float *x = malloc((size_t)R * D * 4), *r = malloc((size_t)R * D * 4), *g = malloc((size_t)R * D * 4),
          *w = malloc((size_t)D * 4);
    uint16_t *wh = malloc((size_t)D * 2);
    for (int i = 0; i < D; i++) {
        wh[i] = dsv4_f32_to_bf16(1 + frand() * 0.5f);
        w[i] = dsv4_bf16_to_f32(wh[i]);
    }
    for (int i = 0; i < R * D; i++) x[i] = bf(frand() * 3);
    ref_rmsnorm(x, w, R, D, 1e-6f, r);
    vkbuf bx = mkbuf(x, (size_t)R * D * 4), bw = mkbuf(wh, (size_t)D * 2), by = mkbuf(NULL, (size_t)R * D * 4);
    vkbuf *b[3] = {&bx, &bw, &by};
    pc_rms pc = {(uint32_t)D, (uint32_t)D, (uint32_t)D, 0, 0, 1e-6f};
    run1(P_RMSNORM, b, 3, &pc, sizeof pc, R, 1);
    CHECK(readbuf(&by, g, (size_t)R * D * 4) == 0);
    double e = nmse(g, r, (size_t)R * D);
    printf("  rmsnorm D %d nmse %.3g\n", D, e);
    CHECKF(e < 1e-7, "rmsnorm D %d nmse %g", D, e);
    rms_shader_order(x, w, R, D, 1e-6f, r);
    CHECKF(memcmp(g, r, (size_t)R * D * 4) == 0, "rmsnorm D %d: not the bits of its summation order", D);
    x[D + 5] *= 1.5f; /* a changed input must show */
    rms_shader_order(x, w, R, D, 1e-6f, r);
    CHECKF(memcmp(g, r, (size_t)R * D * 4) != 0, "rmsnorm D %d: the comparison cannot fail", D);
    vkbuf_free(&rt, &bx); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &by);
    free(x); free(r); free(g); free(w); free(wh);
}

static void rmsnorm_rows(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    rmsnorm_case(7, 192);
    rmsnorm_case(3, 7296);
}

/* rmsnorm_q: the norm and act_quant's FP8 quant-dequant of its result in one
   dispatch must give the two dispatches' bits, also writing over its input. */
static void rmsnorm_quant_case(int R, int D)
{
    size_t n = (size_t)R * D;
    float *x = malloc(n * 4), *y1 = malloc(n * 4), *q1 = malloc(n * 4), *y2 = malloc(n * 4), *q2 = malloc(n * 4);
    uint16_t *wh = malloc((size_t)D * 2);
    for (int i = 0; i < D; i++) wh[i] = dsv4_f32_to_bf16(1 + frand() * 0.5f);
    for (size_t i = 0; i < n; i++) x[i] = bf(frand() * (i % 128 == 5 ? 40.0f : 3.0f)); /* one large value per block */
    vkbuf bx = mkbuf(x, n * 4), bw = mkbuf(wh, (size_t)D * 2), by = mkbuf(NULL, n * 4), bq = mkbuf(NULL, n * 4);
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
    { /* and the CPU reference of the two, so both shaders cannot be wrong alike */
        float *w = malloc((size_t)D * 4), *r = malloc(n * 4);
        for (int i = 0; i < D; i++) w[i] = dsv4_bf16_to_f32(wh[i]);
        ref_rmsnorm(x, w, R, D, 1e-6f, r);
        ref_act_quant(r, R, D, D, 128);
        double e = nmse(q2, r, n);
        printf("  rmsnorm_q D %d nmse %.3g against the CPU reference\n", D, e);
        CHECKF(e < 1e-9, "rmsnorm_q D %d nmse %g", D, e);
        free(w); free(r);
    }
    /* in place: the quantized result over the input rows */
    vkbuf *b5[4] = {&bx, &bw, &by2, &bx};
    run1(P_RMSNORM_Q, b5, 4, &pc, sizeof pc, R, 1);
    CHECK(readbuf(&bx, q2, n * 4) == 0);
    CHECKF(memcmp(q1, q2, n * 4) == 0, "rmsnorm_q in place differs");
    vkbuf_free(&rt, &bx); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &by); vkbuf_free(&rt, &bq);
    vkbuf_free(&rt, &by2); vkbuf_free(&rt, &bq2);
    free(x); free(y1); free(q1); free(y2); free(q2); free(wh);
}

static void rmsnorm_quant_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    rmsnorm_quant_case(5, 384);  /* three 128-column blocks, the row staged */
    rmsnorm_quant_case(2, 7296); /* 57 blocks, past MAXD: read from X in place */
}

/* ---- swiglu_q: swiglu and act_quant of its result in one dispatch ---- */
typedef struct { uint32_t rows, inter, use_w, wsort_off; float limit; } pc_swiglu;

/* Runs swiglu + act_quant (the two dispatches) and swiglu_q on rows of g, u;
   qa gets the former's quantized output, qb the latter's. */
static void swiglu_both(const float *g, const float *u, const uint32_t *r, int R, int I, int use_w, float lim,
                        float *qa, float *qb)
{
    size_t n = (size_t)R * I;
    uint32_t woff = 3; /* the weights start a few words into R, as wsort_off does in the engine */
    vkbuf bg = mkbuf(g, n * 4), bu = mkbuf(u, n * 4), br = mkbuf(r, (size_t)(R + woff) * 4), bh = mkbuf(NULL, n * 4),
          bq = mkbuf(NULL, n * 4), bq2 = mkbuf(NULL, n * 4);
    pc_swiglu pc = {(uint32_t)R, (uint32_t)I, (uint32_t)use_w, woff, lim};
    vkbuf *b1[4] = {&bg, &bu, &br, &bh};
    run1(P_SWIGLU, b1, 4, &pc, sizeof pc, (uint32_t)R, 1);
    pc_aq pa = {(uint32_t)R, (uint32_t)I, (uint32_t)I, 0, 128, 0};
    vkbuf *ba[2] = {&bh, &bq};
    run1(P_ACT_QUANT, ba, 2, &pa, sizeof pa, (uint32_t)I / 128, (uint32_t)R);
    vkbuf *b2[4] = {&bg, &bu, &br, &bq2};
    run1(P_SWIGLU_Q, b2, 4, &pc, sizeof pc, (uint32_t)I / 128, (uint32_t)R);
    CHECK(readbuf(&bq, qa, n * 4) == 0);
    CHECK(readbuf(&bq2, qb, n * 4) == 0);
    vkbuf_free(&rt, &bg); vkbuf_free(&rt, &bu); vkbuf_free(&rt, &br); vkbuf_free(&rt, &bh);
    vkbuf_free(&rt, &bq); vkbuf_free(&rt, &bq2);
}

/* swiglu_q must give the bits of swiglu + act_quant (with and without the
   routing weights and the clamp), and both the CPU reference's; a changed
   input must change its output (the comparison can fail). */
static void swiglu_quant_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    int R = 6, I = 384; /* three 128-column blocks */
    size_t n = (size_t)R * I;
    float *g = malloc(n * 4), *u = malloc(n * 4), *qa = malloc(n * 4), *qb = malloc(n * 4), *ref = malloc(n * 4);
    uint32_t r[3 + 6] = {0xdeadbeefu, 0xdeadbeefu, 0xdeadbeefu};
    for (int i = 0; i < R; i++) { float w = 0.25f + 0.1f * (float)i; memcpy(&r[3 + i], &w, 4); }
    for (size_t i = 0; i < n; i++) {
        g[i] = bf(frand() * (i % 128 == 9 ? 14.0f : 4.0f)); /* some beyond the limit */
        u[i] = bf(frand() * (i % 128 == 70 ? 30.0f : 3.0f));
    }
    for (int use_w = 0; use_w < 2; use_w++)
        for (int cl = 0; cl < 2; cl++) {
            float lim = cl ? 10.0f : 0.0f;
            swiglu_both(g, u, r, R, I, use_w, lim, qa, qb);
            CHECKF(memcmp(qa, qb, n * 4) == 0, "swiglu_q differs from swiglu + act_quant (use_w %d, limit %g)",
                   use_w, lim);
            for (int t = 0; t < R; t++) /* the CPU reference: Expert.forward's activation, then act_quant */
                for (int i = 0; i < I; i++) {
                    float gv = g[t * I + i], uv = u[t * I + i], w;
                    memcpy(&w, &r[3 + t], 4);
                    if (lim > 0) {
                        uv = uv < -lim ? -lim : uv > lim ? lim : uv;
                        gv = gv > lim ? lim : gv;
                    }
                    float a = gv / (1.0f + expf(-gv)) * uv;
                    if (use_w) a = w * a;
                    ref[t * I + i] = bf(a);
                }
            size_t differ = 0;
            for (size_t i = 0; i < n; i++) differ += ref[i] != qb[i];
            CHECKF(differ > n / 4, "the quantization changed only %zu of %zu values", differ, n);
            ref_act_quant(ref, R, I, I, 128);
            double e = nmse(qb, ref, n);
            printf("  swiglu_q (use_w %d, limit %g) nmse %.3g against the CPU reference\n", use_w, lim, e);
            CHECKF(e < 1e-12, "swiglu_q nmse %g", e);
        }
    /* one value in block 1 of row 2 made the block's largest: its scale
       grows, which changes the value and the block's smallest (they fall to
       e4m3's subnormals), nothing outside the block */
    swiglu_both(g, u, r, R, I, 1, 0.0f, qa, qb); /* unclamped, so the new value can exceed every other */
    g[2 * I + 128 + 18] = 40.0f;
    u[2 * I + 128 + 18] = 40.0f;
    float *qm = malloc(n * 4), *qm2 = malloc(n * 4);
    swiglu_both(g, u, r, R, I, 1, 0.0f, qm, qm2);
    CHECKF(memcmp(qm, qm2, n * 4) == 0, "swiglu_q differs from swiglu + act_quant (mutated input)");
    size_t changed = 0, outside = 0;
    for (size_t i = 0; i < n; i++) {
        int in_blk = i / I == 2 && i % I >= 128 && i % I < 256;
        if (qm2[i] != qb[i]) { changed++; outside += !in_blk; }
    }
    CHECKF(changed > 1 && outside == 0, "mutated input: %zu values changed, %zu outside its block", changed, outside);
    free(g); free(u); free(qa); free(qb); free(ref); free(qm); free(qm2);
}

/* ---- hc_mix + hc_pre: Block.hc_pre split over slices of a token ---- */
typedef struct { uint32_t D, hc, iters, x_ld; float norm_eps, hc_eps; uint32_t splits; } pc_hcpre;
typedef struct { uint32_t D, hc, x_ld, splits; } pc_hcmix;

/* hc_mix.comp's order on the CPU: per slice, lane l adds columns c0 + l,
   c0 + l + 64, ... in double, then a pairwise tree over the 64 lanes. */
static void hc_mix_order(const float *x, const float *fn, int T, int hc, int D, int splits, double *part)
{
    int HD = hc * D, nmix = (2 + hc) * hc, len = (HD + splits - 1) / splits;
    double (*lane)[64] = malloc(sizeof(double[64]) * (size_t)(nmix + 1));
    for (int t = 0; t < T; t++)
        for (int sl = 0; sl < splits; sl++) {
            int c0 = sl * len, c1 = c0 + len < HD ? c0 + len : HD;
            memset(lane, 0, sizeof(double[64]) * (size_t)(nmix + 1));
            for (int l = 0; l < 64; l++)
                for (int c = c0 + l; c < c1; c += 64) {
                    double v = x[(size_t)t * HD + c];
                    lane[nmix][l] += v * v;
                    for (int j = 0; j < nmix; j++) lane[j][l] += v * (double)fn[(size_t)j * HD + c];
                }
            for (int k = 32; k > 0; k >>= 1)
                for (int l = 0; l < k; l++)
                    for (int j = 0; j <= nmix; j++) lane[j][l] += lane[j][l + k];
            for (int j = 0; j <= nmix; j++) part[((size_t)t * splits + sl) * (nmix + 1) + j] = lane[j][0];
        }
    free(lane);
}

/* Runs hc_mix then hc_pre over T tokens (rows of x from token t0) with the
   given split count; PART, Y [T][D] and MIX [T][hc + hc*hc] come back. */
static void hc_pre_run(const float *x, const float *fn, const float *base, const float *scale, int t0, int T,
                       int hc, int D, int splits, double *part, float *y, float *mix)
{
    int HD = hc * D, nmix = (2 + hc) * hc;
    size_t np = (size_t)T * splits * (nmix + 1), nm = (size_t)T * (hc + hc * hc);
    vkbuf bx = mkbuf(x + (size_t)t0 * HD, (size_t)T * HD * 4), bf = mkbuf(fn, (size_t)nmix * HD * 4),
          bb = mkbuf(base, (size_t)nmix * 4), bs = mkbuf(scale, 12), by = mkbuf(NULL, (size_t)T * D * 4),
          bm = mkbuf(NULL, nm * 4), bp = mkbuf(NULL, np * 8);
    pc_hcmix pm = {(uint32_t)D, (uint32_t)hc, (uint32_t)HD, (uint32_t)splits};
    vkbuf *b1[3] = {&bx, &bf, &bp};
    run1(P_HC_MIX, b1, 3, &pm, sizeof pm, (uint32_t)T, (uint32_t)splits);
    pc_hcpre pc = {(uint32_t)D, (uint32_t)hc, 20, (uint32_t)HD, 1e-6f, 1e-6f, (uint32_t)splits};
    vkbuf *b2[7] = {&bx, &bf, &bb, &bs, &by, &bm, &bp};
    run1(P_HC_PRE, b2, 7, &pc, sizeof pc, (uint32_t)T, 1);
    CHECK(readbuf(&bp, part, np * 8) == 0);
    CHECK(readbuf(&by, y, (size_t)T * D * 4) == 0);
    CHECK(readbuf(&bm, mix, nm * 4) == 0);
    vkbuf_free(&rt, &bx); vkbuf_free(&rt, &bf); vkbuf_free(&rt, &bb); vkbuf_free(&rt, &bs);
    vkbuf_free(&rt, &by); vkbuf_free(&rt, &bm); vkbuf_free(&rt, &bp);
}

/* hc_mix's partial sums in its exact order, for the engine's split counts
   (4 on CPU drivers, 64 on GPUs) and an odd one; hc_pre's result against
   the CPU reference; a token's bits the same alone as among others. */
static void hc_pre_slices(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    enum { T = 3, HC = 4, D = 320, HD = HC * D, NMIX = (2 + HC) * HC };
    float *x = malloc(sizeof(float) * T * HD), *fn = malloc(sizeof(float) * NMIX * HD), base[NMIX], scale[3];
    for (int i = 0; i < T * HD; i++) x[i] = bf(frand() * 2);
    for (int i = 0; i < NMIX * HD; i++) fn[i] = frand() * 0.05f;
    for (int i = 0; i < NMIX; i++) base[i] = frand() * 0.5f;
    for (int i = 0; i < 3; i++) scale[i] = 0.5f + 0.25f * (float)i;
    float yr[T * D], post[T * HC], comb[T * HC * HC];
    ref_hc_pre(x, T, HC, D, fn, scale, base, 20, 1e-6f, 1e-6f, yr, post, comb);
    int splits_of[3] = {4, 64, 7};
    for (int si = 0; si < 3; si++) {
        int sp = splits_of[si];
        size_t np = (size_t)T * sp * (NMIX + 1);
        double *part = malloc(np * 8), *want = malloc(np * 8), *part1 = malloc(np * 8);
        float y[T * D], mix[T * (HC + HC * HC)], y1[D], mix1[HC + HC * HC];
        hc_pre_run(x, fn, base, scale, 0, T, HC, D, sp, part, y, mix);
        hc_mix_order(x, fn, T, HC, D, sp, want);
        CHECKF(memcmp(part, want, np * 8) == 0, "hc_mix (%d slices): not the bits of its summation order", sp);
        double e = nmse(y, yr, (size_t)T * D);
        float mr[T * (HC + HC * HC)];
        for (int t = 0; t < T; t++) {
            memcpy(mr + t * (HC + HC * HC), post + t * HC, HC * 4);
            memcpy(mr + t * (HC + HC * HC) + HC, comb + t * HC * HC, HC * HC * 4);
        }
        double em = nmse(mix, mr, (size_t)T * (HC + HC * HC));
        printf("  hc_pre %d slices: y nmse %.3g, post/comb nmse %.3g\n", sp, e, em);
        CHECKF(e < 1e-5 && em < 1e-9, "hc_pre %d slices: y nmse %g, post/comb nmse %g", sp, e, em);
        hc_pre_run(x, fn, base, scale, 1, 1, HC, D, sp, part1, y1, mix1);
        CHECKF(memcmp(y1, y + D, D * 4) == 0 && memcmp(mix1, mix + HC + HC * HC, (HC + HC * HC) * 4) == 0,
               "hc_pre %d slices: token 1 alone differs from token 1 of 3", sp);
        if (sp == 64) { /* a digest of the bits, to compare builds */
            uint64_t h = 1469598103934665603ull;
            const uint8_t *py = (const uint8_t *)y, *pm = (const uint8_t *)mix;
            for (size_t i = 0; i < sizeof y; i++) h = (h ^ py[i]) * 1099511628211ull;
            for (size_t i = 0; i < sizeof mix; i++) h = (h ^ pm[i]) * 1099511628211ull;
            printf("  hc_pre 64 slices: digest of y and mix %016llx\n", (unsigned long long)h);
        }
        free(part); free(want); free(part1);
    }
    x[HD + 77] += 0.5f; /* a changed input must show in the exact comparison */
    {
        size_t np = (size_t)T * 64 * (NMIX + 1);
        double *part = malloc(np * 8), *want = malloc(np * 8);
        float y[T * D], mix[T * (HC + HC * HC)];
        hc_pre_run(x, fn, base, scale, 0, T, HC, D, 64, part, y, mix);
        x[HD + 77] -= 0.5f;
        hc_mix_order(x, fn, T, HC, D, 64, want);
        CHECKF(memcmp(part, want, np * 8) != 0, "hc_mix: the exact comparison cannot fail");
        free(part); free(want);
    }
    free(x); free(fn);
}

/* hc_pre_norm_q (hc_head_norm with head): hc_pre then the norm of its y in
   one workgroup must give the bits of hc_pre (hc_head) then rmsnorm_q
   (rmsnorm) apart: the normed rows, the quantized rows and the mixes. */
static void hc_pre_norm_case(int T, int D, int head)
{
    enum { HC = 4 };
    int HD = HC * D, nmix = head ? HC : (2 + HC) * HC, nm = head ? 0 : HC + HC * HC, sp = 64;
    size_t n = (size_t)T * D;
    float *x = malloc(sizeof(float) * T * HD), *fn = malloc(sizeof(float) * nmix * HD), *base = malloc(nmix * 4),
          scale[3] = {0.5f, 0.75f, 1.0f};
    uint16_t *wh = malloc((size_t)D * 2);
    for (int i = 0; i < T * HD; i++) x[i] = bf(frand() * 2);
    for (int i = 0; i < nmix * HD; i++) fn[i] = frand() * 0.05f;
    for (int i = 0; i < nmix; i++) base[i] = frand() * 0.5f;
    for (int i = 0; i < D; i++) wh[i] = dsv4_f32_to_bf16(1 + frand() * 0.5f);
    vkbuf bx = mkbuf(x, sizeof(float) * T * HD), bf_ = mkbuf(fn, sizeof(float) * nmix * HD),
          bb = mkbuf(base, nmix * 4), bs = mkbuf(scale, 12), bw = mkbuf(wh, (size_t)D * 2),
          bp = mkbuf(NULL, (size_t)T * sp * (nmix + 1) * 8), bh = mkbuf(NULL, n * 4), by1 = mkbuf(NULL, n * 4),
          bq1 = mkbuf(NULL, n * 4), by2 = mkbuf(NULL, n * 4), bq2 = mkbuf(NULL, n * 4),
          bm1 = mkbuf(NULL, (size_t)T * nm * 4 + 4), bm2 = mkbuf(NULL, (size_t)T * nm * 4 + 4);
    pc_hcmix pm = {(uint32_t)D, HC, (uint32_t)HD, (uint32_t)sp};
    vkbuf *b1[3] = {&bx, &bf_, &bp};
    run1(head ? P_HC_MIX_HEAD : P_HC_MIX, b1, 3, &pm, sizeof pm, (uint32_t)T, (uint32_t)sp);
    pc_hcpre pc = {(uint32_t)D, HC, 20, (uint32_t)HD, 1e-6f, 1e-6f, (uint32_t)sp};
    vkbuf *b2[7] = {&bx, &bf_, &bb, &bs, &bh, &bm1, &bp};
    run1(head ? P_HC_HEAD : P_HC_PRE, b2, 7, &pc, sizeof pc, (uint32_t)T, 1);
    pc_rms pr = {(uint32_t)D, (uint32_t)D, (uint32_t)D, 0, 0, 1e-6f};
    vkbuf *b3[4] = {&bh, &bw, &by1, &bq1};
    run1(head ? P_RMSNORM : P_RMSNORM_Q, b3, head ? 3 : 4, &pr, sizeof pr, (uint32_t)T, 1);
    vkbuf *b4[9] = {&bx, &bf_, &bb, &bs, &by2, &bm2, &bp, &bw, &bq2};
    run1(head ? P_HC_HEAD_NORM : P_HC_PRE_NORM_Q, b4, head ? 8 : 9, &pc, sizeof pc, (uint32_t)T, 1);
    float *y1 = malloc(n * 4), *y2 = malloc(n * 4), *q1 = malloc(n * 4), *q2 = malloc(n * 4),
          *m1 = malloc((size_t)T * nm * 4 + 4), *m2 = malloc((size_t)T * nm * 4 + 4);
    CHECK(readbuf(&by1, y1, n * 4) == 0 && readbuf(&by2, y2, n * 4) == 0);
    CHECK(readbuf(&bq1, q1, n * 4) == 0 && readbuf(&bq2, q2, n * 4) == 0);
    CHECK(readbuf(&bm1, m1, (size_t)T * nm * 4 + 4) == 0 && readbuf(&bm2, m2, (size_t)T * nm * 4 + 4) == 0);
    const char *what = head ? "hc_head_norm" : "hc_pre_norm_q";
    size_t nz = 0;
    for (size_t i = 0; i < n; i++) nz += y1[i] != 0;
    CHECKF(nz > n / 2, "%s D %d: only %zu of %zu normed values are not 0", what, D, nz, n);
    CHECKF(memcmp(y1, y2, n * 4) == 0, "%s D %d: the normed rows differ from the two dispatches'", what, D);
    if (!head) {
        CHECKF(memcmp(q1, q2, n * 4) == 0, "%s D %d: the quantized rows differ", what, D);
        CHECKF(memcmp(m1, m2, (size_t)T * nm * 4) == 0, "%s D %d: the mixes differ", what, D);
    }
    vkbuf *all[13] = {&bx, &bf_, &bb, &bs, &bw, &bp, &bh, &by1, &bq1, &by2, &bq2, &bm1, &bm2};
    for (int i = 0; i < 13; i++) vkbuf_free(&rt, all[i]);
    free(x); free(fn); free(base); free(wh); free(y1); free(y2); free(q1); free(q2); free(m1); free(m2);
}

static void hc_pre_norm_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    hc_pre_norm_case(3, 384, 0);  /* three 128-column blocks */
    hc_pre_norm_case(1, 4096, 0); /* V4-Flash's hidden size */
    hc_pre_norm_case(2, 7168, 0); /* the longest row it takes (HC_NORM_MAXD) */
    hc_pre_norm_case(3, 320, 1);  /* the head: no quant, any width */
    hc_pre_norm_case(1, 4096, 1);
}

/* ref_hc_post with post and comb read from MIX[T][HC + HC*HC] as the engine holds them */
static void ref_hc_post_mix(const float *f, const float *res, const float *mix, int T, int HC, int D, float *out)
{
    float *post = malloc(sizeof(float) * T * HC), *comb = malloc(sizeof(float) * T * HC * HC);
    for (int t = 0; t < T; t++) {
        memcpy(post + t * HC, mix + t * (HC + HC * HC), HC * 4);
        memcpy(comb + t * HC * HC, mix + t * (HC + HC * HC) + HC, HC * HC * 4);
    }
    ref_hc_post(f, res, post, comb, T, HC, D, out);
    free(post); free(comb);
}

/* hc_post_mix: hc_post's bits, and the next hc_pre's hc_mix sums of its
   result in hc_mix's order (hc_mix_order) for slices of 256 columns */
typedef struct { uint32_t D, hc; } pc_hcpost;

/* D not a multiple of 256: hc_post alone (a partial block of columns) */
static void hc_post_mix_case(int T, int D)
{
    enum { HC = 4, NM = HC + HC * HC, NMIX = (2 + HC) * HC };
    int HD = HC * D, sp = HD / 256 ? HD / 256 : 1, mix_too = D % 256 == 0;
    size_t n = (size_t)T * HD, np = (size_t)T * sp * (NMIX + 1);
    float *x = malloc((size_t)T * D * 4), *res = malloc(n * 4), *mix = malloc((size_t)T * NM * 4),
          *fn = malloc((size_t)NMIX * HD * 4), *o1 = malloc(n * 4), *o2 = malloc(n * 4);
    double *part = malloc(np * 8), *want = malloc(np * 8);
    for (int i = 0; i < T * D; i++) x[i] = bf(frand() * 2);
    for (size_t i = 0; i < n; i++) res[i] = bf(frand() * 4);
    for (int i = 0; i < T * NM; i++) mix[i] = 0.1f + frand() * frand();
    for (int i = 0; i < NMIX * HD; i++) fn[i] = frand() * 0.05f;
    vkbuf bx = mkbuf(x, (size_t)T * D * 4), br = mkbuf(res, n * 4), bm = mkbuf(mix, (size_t)T * NM * 4),
          bf_ = mkbuf(fn, (size_t)NMIX * HD * 4), bo1 = mkbuf(NULL, n * 4), bo2 = mkbuf(NULL, n * 4),
          bp = mkbuf(NULL, np * 8);
    pc_hcpost pc = {(uint32_t)D, HC};
    vkbuf *b1[4] = {&bx, &br, &bm, &bo1};
    run1z(P_HC_POST, b1, 4, &pc, sizeof pc, (uint32_t)T, (uint32_t)(D + 255) / 256, HC);
    CHECK(readbuf(&bo1, o1, n * 4) == 0);
    { /* and hc_post against the CPU's (the same order: the same bits) */
        float *want_o = malloc(n * 4);
        ref_hc_post_mix(x, res, mix, T, HC, D, want_o);
        CHECKF(memcmp(o1, want_o, n * 4) == 0, "hc_post D %d: not the CPU's bits", D);
        free(want_o);
    }
    if (mix_too) {
        vkbuf *b2[6] = {&bx, &br, &bm, &bo2, &bf_, &bp};
        run1z(P_HC_POST_MIX, b2, 6, &pc, sizeof pc, (uint32_t)T, (uint32_t)D / 256, HC);
        CHECK(readbuf(&bo2, o2, n * 4) == 0 && readbuf(&bp, part, np * 8) == 0);
        CHECKF(memcmp(o1, o2, n * 4) == 0, "hc_post_mix D %d: its hc_post differs from hc_post's", D);
        hc_mix_order(o2, fn, T, HC, D, sp, want);
        CHECKF(memcmp(part, want, np * 8) == 0, "hc_post_mix D %d: the sums are not hc_mix's (%d slices)", D, sp);
        o2[D + 3] += 1.0f; /* a changed input must show */
        hc_mix_order(o2, fn, T, HC, D, sp, want);
        CHECKF(memcmp(part, want, np * 8) != 0, "hc_post_mix: the comparison cannot fail");
    }
    vkbuf *all[7] = {&bx, &br, &bm, &bf_, &bo1, &bo2, &bp};
    for (int i = 0; i < 7; i++) vkbuf_free(&rt, all[i]);
    free(x); free(res); free(mix); free(fn); free(o1); free(o2); free(part); free(want);
}

static void hc_post_mix_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    hc_post_mix_case(3, 256);  /* the tiny model: 4 slices, as CPU drivers split */
    hc_post_mix_case(1, 4096); /* V4-Flash: 64 slices, as GPUs split */
    hc_post_mix_case(2, 768);
    hc_post_mix_case(3, 320); /* hc_post alone: a partial block */
}

/* ---- moe_gate_group: the gate and moe_group's grouping in one dispatch ---- */
typedef struct { uint32_t T, E, k, func, hash, use_bias; float route_scale; } pc_gate;
typedef struct { uint32_t T, E, k, rowmap_off, slotpos_off, wsort_off, e_begin_off; } pc_group;
typedef struct { uint32_t T, E, k, func, hash, use_bias; float route_scale;
                 uint32_t rowmap_off, slotpos_off, wsort_off, e_begin_off; } pc_gategroup;

/* The route buffer moe_group must write for slots sel/wgt (n = T*k), built
   on the CPU from its description in moe_route.glsl; offsets as routeoffs. */
static void route_expect(const uint32_t *sel, const float *wgt, int T, int k, int E, uint32_t *R, const uint32_t *o)
{
    int n = T * k;
    uint32_t tiles = 0, off = 0;
    for (int e = 0; e < E; e++) {
        uint32_t c = 0;
        for (int q = 0; q < n; q++) c += sel[q] == (uint32_t)e;
        R[o[3] + e] = off;
        for (uint32_t m = 0; m < c; m += 32) {
            uint32_t *b = R + 4 + 4 * tiles++;
            b[0] = (uint32_t)e; b[1] = off + m; b[2] = off + (m + 32 < c ? m + 32 : c); b[3] = 0;
        }
        uint32_t pos = off;
        for (int q = 0; q < n; q++)
            if (sel[q] == (uint32_t)e) {
                R[o[0] + pos] = (uint32_t)(q / k);
                R[o[1] + q] = pos;
                memcpy(&R[o[2] + pos], &wgt[q], 4);
                pos++;
            }
        off += c;
    }
    R[0] = tiles;
}

/* Gate (and, for one token, grouping) of T tokens' logits: the two
   dispatches into sel1/wgt1/r1, and for T == 1 the fused one into
   sel2/wgt2/r2. o: rowmap, slotpos, wsort, e_begin offsets in R (nr words). */
static void gate_run(const float *lg, const float *bias, const uint32_t *tid2eid, const int32_t *tok, int T, int E,
                     int k, int func, int hash, const uint32_t *o, size_t nr, uint32_t *sel1, float *wgt1, uint32_t *r1,
                     uint32_t *sel2, float *wgt2, uint32_t *r2)
{
    vkbuf bl = mkbuf(lg, (size_t)T * E * 4), bb = mkbuf(bias, (size_t)E * 4), bh = mkbuf(tid2eid, 64 * 16 * 8),
          bt = mkbuf(tok, (size_t)T * 4), bs = mkbuf(NULL, (size_t)T * k * 4), bw = mkbuf(NULL, (size_t)T * k * 4),
          br = mkbuf(NULL, nr * 4);
    pc_gate pg = {(uint32_t)T, (uint32_t)E, (uint32_t)k, (uint32_t)func, (uint32_t)hash, bias != NULL, 1.5f};
    vkbuf *b6[6] = {&bl, &bb, &bh, &bt, &bs, &bw};
    run1(P_MOE_GATE, b6, 6, &pg, sizeof pg, (uint32_t)T, 1);
    pc_group pr = {(uint32_t)T, (uint32_t)E, (uint32_t)k, o[0], o[1], o[2], o[3]};
    vkbuf *b3[3] = {&bs, &bw, &br};
    run1(P_MOE_GROUP, b3, 3, &pr, sizeof pr, 1, 1);
    CHECK(readbuf(&bs, sel1, (size_t)T * k * 4) == 0);
    CHECK(readbuf(&bw, wgt1, (size_t)T * k * 4) == 0);
    CHECK(readbuf(&br, r1, nr * 4) == 0);
    if (T == 1) {
        vkbuf bs2 = mkbuf(NULL, (size_t)k * 4), bw2 = mkbuf(NULL, (size_t)k * 4), br2 = mkbuf(NULL, nr * 4);
        pc_gategroup pgg = {1, (uint32_t)E, (uint32_t)k, (uint32_t)func, (uint32_t)hash, bias != NULL, 1.5f,
                            o[0], o[1], o[2], o[3]};
        vkbuf *b7[7] = {&bl, &bb, &bh, &bt, &bs2, &bw2, &br2};
        run1(P_MOE_GATE_GROUP, b7, 7, &pgg, sizeof pgg, 1, 1);
        CHECK(readbuf(&bs2, sel2, (size_t)k * 4) == 0);
        CHECK(readbuf(&bw2, wgt2, (size_t)k * 4) == 0);
        CHECK(readbuf(&br2, r2, nr * 4) == 0);
        vkbuf_free(&rt, &bs2); vkbuf_free(&rt, &bw2); vkbuf_free(&rt, &br2);
    }
    vkbuf_free(&rt, &bl); vkbuf_free(&rt, &bb); vkbuf_free(&rt, &bh); vkbuf_free(&rt, &bt);
    vkbuf_free(&rt, &bs); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &br);
}

/* moe_group's route buffer against its description (several tokens, some
   experts shared); moe_gate_group bit-for-bit against moe_gate + moe_group
   for one token (score functions, bias, hash routing), a changed logit
   changing its output. */
static void moe_gate_group_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    enum { E = 256, K = 6, TMAX = 40 };
    int n_max = TMAX * K;
    uint32_t o[4] = {4u + 4u * (uint32_t)n_max, 0, 0, 0};
    o[1] = o[0] + (uint32_t)n_max; o[2] = o[1] + (uint32_t)n_max; o[3] = o[2] + (uint32_t)n_max;
    size_t nr = o[3] + E;
    float *lg = malloc(sizeof(float) * TMAX * E), bias[E];
    uint32_t *r1 = malloc(nr * 4), *r2 = malloc(nr * 4), *rw = malloc(nr * 4), tid2eid[64 * 16 * 2];
    uint32_t sel1[TMAX * K], sel2[K];
    float wgt1[TMAX * K], wgt2[K];
    int32_t tok[TMAX];
    for (int i = 0; i < TMAX * E; i++) lg[i] = frand() * 4;
    for (int i = 0; i < E; i++) bias[i] = frand() * 0.5f;
    for (int i = 0; i < 64 * 16; i++) { tid2eid[2 * i] = (uint32_t)(i * 37 % E); tid2eid[2 * i + 1] = 0; }
    for (int t = 0; t < TMAX; t++) tok[t] = t * 5 % 64;
    for (int t = 0; t < TMAX; t++) /* the last tokens pile onto three experts: tiles of 32 rows and more */
        if (t >= 4) for (int e = 0; e < 3; e++) lg[t * E + 100 + e] = 50.0f;
    /* several tokens: moe_group against its description */
    memset(r1, 0, nr * 4);
    gate_run(lg, bias, tid2eid, tok, TMAX, E, K, 0, 0, o, nr, sel1, wgt1, r1, NULL, NULL, NULL);
    memset(rw, 0, nr * 4);
    route_expect(sel1, wgt1, TMAX, K, E, rw, o);
    CHECKF(memcmp(r1, rw, nr * 4) == 0, "moe_group's route buffer differs from its description (%d tokens)", TMAX);
    CHECKF(r1[0] > (uint32_t)3, "only %u tiles", r1[0]);
    /* one token: fused against the two dispatches */
    const char *what[4] = {"sqrtsoftplus + bias", "sigmoid", "softmax", "hash"};
    int funcs[4] = {0, 2, 1, 0}, hashes[4] = {0, 0, 0, 1};
    for (int c = 0; c < 4; c++) {
        gate_run(lg + 2 * E, c == 0 ? bias : NULL, tid2eid, tok + 2, 1, E, K, funcs[c], hashes[c], o, nr, sel1, wgt1,
                 r1, sel2, wgt2, r2);
        CHECKF(memcmp(sel1, sel2, sizeof sel2) == 0 && memcmp(wgt1, wgt2, sizeof wgt2) == 0,
               "moe_gate_group (%s): selections or weights differ", what[c]);
        CHECKF(memcmp(r1, r2, nr * 4) == 0, "moe_gate_group (%s): route buffer differs", what[c]);
        memset(rw, 0, nr * 4);
        route_expect(sel2, wgt2, 1, K, E, rw, o);
        CHECKF(memcmp(r2, rw, nr * 4) == 0, "moe_gate_group (%s): route buffer differs from its description", what[c]);
    }
    /* the first selected expert made the least likely: another is chosen */
    uint32_t first = sel2[0];
    gate_run(lg + 2 * E, NULL, tid2eid, tok + 2, 1, E, K, 1, 0, o, nr, sel1, wgt1, r1, sel2, wgt2, r2);
    first = sel2[0];
    lg[2 * E + first] = -50.0f;
    uint32_t sel3[K];
    float wgt3[K];
    gate_run(lg + 2 * E, NULL, tid2eid, tok + 2, 1, E, K, 1, 0, o, nr, sel1, wgt1, r1, sel3, wgt3, r2);
    int still = 0;
    for (int j = 0; j < K; j++) still |= sel3[j] == first;
    CHECKF(!still && memcmp(r1, r2, nr * 4) == 0, "a changed logit: expert %u still chosen (or the two differ)", first);
    free(lg); free(r1); free(r2); free(rw);
}

/* ---- moe_combine_post: the routed experts' rows in ascending expert order
   + the shared expert, then hc_post on the sum ---- */
typedef struct { uint32_t D, k, slotpos_off, hc; } pc_combine_post;

/* want[T][D]: the CPU's sum, experts in ascending order, then the shared one */
static void combine_want(const float *ys, const float *sh, const uint32_t *sel, const uint32_t *pos, int T, int K,
                         int D, float *want)
{
    for (int t = 0; t < T; t++)
        for (int c = 0; c < D; c++) {
            float y = 0.0f;
            int prev = -1;
            for (int j = 0; j < K; j++) {
                int best = -1;
                for (int q = 0; q < K; q++)
                    if ((int)sel[t * K + q] > prev && (best < 0 || sel[t * K + q] < sel[t * K + best])) best = q;
                prev = (int)sel[t * K + best];
                y += ys[(size_t)pos[t * K + best] * D + c];
            }
            want[t * D + c] = bf(y + sh[t * D + c]);
        }
}

/* want[T][HC][D]: hc_post (ref_hc_post) of the combined sum, MIX[T][HC + HC*HC] as the engine holds it */
static void combine_post_want(const float *ys, const float *sh, const uint32_t *sel, const uint32_t *pos,
                              const float *res, const float *mix, int T, int K, int HC, int D, float *want)
{
    float *y = malloc(sizeof(float) * T * D);
    combine_want(ys, sh, sel, pos, T, K, D, y);
    ref_hc_post_mix(y, res, mix, T, HC, D, want);
    free(y);
}

/* D 320: a partial block of columns; with mix (moe_combine_post_mix, D a
   multiple of 256) also the next block's hc_mix sums of the result */
static void moe_combine_post_case(int D, int mix_too)
{
    enum { T = 3, K = 6, HC = 4, SOFF = 5, NM = HC + HC * HC, NMIX = (2 + HC) * HC };
    static const int perm[K] = {4, 1, 5, 0, 3, 2};
    int HD = HC * D, sp = HD / 256;
    size_t n = (size_t)T * HD, np = (size_t)T * sp * (NMIX + 1);
    uint32_t sel[T * K], r[SOFF + T * K];
    float *ys = malloc(sizeof(float) * T * K * D), *sh = malloc((size_t)T * D * 4), *res = malloc(n * 4),
          mix[T * NM], *want = malloc(n * 4), *got = malloc(n * 4), *fn = malloc((size_t)NMIX * HD * 4);
    for (int i = 0; i < T * K * D; i++) ys[i] = bf(frand() * (i % 11 == 0 ? 100.0f : 1.0f));
    for (int i = 0; i < T * D; i++) sh[i] = bf(frand());
    for (size_t i = 0; i < n; i++) res[i] = bf(frand() * 4);
    for (int i = 0; i < T * NM; i++) mix[i] = 0.1f + frand() * frand();
    for (int i = 0; i < NMIX * HD; i++) fn[i] = frand() * 0.05f;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            sel[t * K + j] = (uint32_t)(t * 3 + 5 * perm[j]); /* a token's experts distinct, unsorted */
            r[SOFF + t * K + j] = (uint32_t)((t * K + j) * 5 % (T * K)); /* a permutation of the rows */
        }
    combine_post_want(ys, sh, sel, r + SOFF, res, mix, T, K, HC, D, want);
    vkbuf by = mkbuf(ys, sizeof(float) * T * K * D), bs = mkbuf(sh, (size_t)T * D * 4), be = mkbuf(sel, sizeof sel),
          br = mkbuf(r, sizeof r), bo = mkbuf(NULL, n * 4), bres = mkbuf(res, n * 4), bm = mkbuf(mix, sizeof mix),
          bf_ = mkbuf(fn, (size_t)NMIX * HD * 4), bp = mkbuf(NULL, np * 8);
    pc_combine_post pc = {(uint32_t)D, K, SOFF, HC};
    vkbuf *b[9] = {&by, &bs, &be, &br, &bo, &bres, &bm, &bf_, &bp};
    run1z(mix_too ? P_MOE_COMBINE_POST_MIX : P_MOE_COMBINE_POST, b, mix_too ? 9 : 7, &pc, sizeof pc, T,
          (uint32_t)(D + 255) / 256, HC);
    CHECK(readbuf(&bo, got, n * 4) == 0);
    CHECKF(memcmp(got, want, n * 4) == 0, "moe_combine_post%s D %d: not the bits of the ascending-expert sum + hc_post",
           mix_too ? "_mix" : "", D);
    if (mix_too) {
        double *part = malloc(np * 8), *pw = malloc(np * 8);
        CHECK(readbuf(&bp, part, np * 8) == 0);
        hc_mix_order(want, fn, T, HC, D, sp, pw);
        CHECKF(memcmp(part, pw, np * 8) == 0, "moe_combine_post_mix D %d: the sums are not hc_mix's", D);
        free(part); free(pw);
    }
    ys[(size_t)r[SOFF + K + 2] * D + 300] += 3.0f; /* a changed input must show */
    combine_post_want(ys, sh, sel, r + SOFF, res, mix, T, K, HC, D, want);
    CHECKF(memcmp(got, want, n * 4) != 0, "moe_combine_post: the comparison cannot fail");
    vkbuf *all[9] = {&by, &bs, &be, &br, &bo, &bres, &bm, &bf_, &bp};
    for (int i = 0; i < 9; i++) vkbuf_free(&rt, all[i]);
    free(ys); free(sh); free(res); free(want); free(got); free(fn);
}

static void moe_combine_post_order(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    moe_combine_post_case(320, 0);
    moe_combine_post_case(512, 1);
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

/* ---- attn_dec: the decode attention's three dispatches ---- */
typedef struct { uint32_t D, H, win, t0, p0, ratio, mode, topk, ld_i; float scale; uint32_t n_tok, ld_sc, sc_t0, base_rows,
                 rope_inv, rd; } pc_attnd;

/* attn_dec's scores, probabilities and value sums in one command buffer (the
 * runtime puts the barriers between them); b: the 9 bindings of
 * shaders/attn_dec.comp, nk: the longest key list of the n tokens. */
static void run_attn_dec(vkbuf **b, const pc_attnd *pc, uint32_t nk)
{
    char err[256];
    vkview v[10];
    for (int i = 0; i < 10; i++) v[i] = vkbuf_view(b[i], 0, b[i]->size);
    vkrt_begin(&rt, err, sizeof err);
    vkrt_dispatch(&rt, P_ATTN_DEC_SCORE, v, 10, pc, sizeof *pc, (nk + 31) / 32, (pc->H + 7) / 8, pc->n_tok);
    vkrt_dispatch(&rt, P_ATTN_DEC_VALUE, v, 10, pc, sizeof *pc, (pc->D + 63) / 64, (pc->H + 3) / 4, pc->n_tok);
    vkrt_submit_wait(&rt, err, sizeof err);
}

/* ---- attn_tile: many heads, CSA lists with -1, HCA, a partly filled window ---- */
/* The inputs of one attention case (random bf16 queries, window keys, ring,
 * compressed rows and sinks; mode 2's top-k lists with -1 holes) and the
 * CPU reference r. Returns the softmax scale. */
static float attn_case_inputs(int H, int D, int win, int n, int p0, int ratio, int mode, int topk, int ld_i,
                              int ne, float *q, float *kv, float *ring, float *cmp, float *sink, int32_t *idx,
                              const float **keys, float *r)
{
    size_t qn = (size_t)n * H * D;
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
    return scale;
}

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
    float scale = attn_case_inputs(H, D, win, n, p0, ratio, mode, topk, ld_i, ne, q, kv, ring, cmp, sink, idx, keys, r);
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
    /* attn_dec (head_dim a multiple of 16): the same bits as attn_tile, with
       the compressed rows in one buffer, and split at base_rows into a
       shared base and the sequence's own rows (tokens at scratch row 1 on:
       sc_t0); then (pass 2) with rope_inv, the bits of attn_tile's output
       rotated back by headprep's F_ROPE_INV */
    int rd = D >= 64 ? 64 : D;
    float fr[32];
    for (int i = 0; i < rd / 2; i++) fr[i] = (float)pow(160000.0, -2.0 * i / rd);
    vkbuf bfr = mkbuf(fr, sizeof fr);
    if (D % 16 == 0) { /* the headprep'd attn_tile output, for pass 2 */
        vkbuf bw = mkbuf(NULL, 16), bpos = mkbuf(NULL, 16), bg = mkbuf(g, qn * 4);
        pc_hp ph = {(uint32_t)D, (uint32_t)rd, (uint32_t)D, 0, 8 /* F_ROPE_INV */, (uint32_t)p0, 1, 1e-6f};
        /* rows of H heads: head x of token t is row t * H + x at pos_base + row * pos_step; one token
           at a time so every head of it gets the token's position */
        for (int t = 0; t < n; t++) {
            char err[256];
            vkview v[4] = {vkbuf_view(&bg, (VkDeviceSize)t * H * D * 4, (VkDeviceSize)H * D * 4),
                           vkbuf_view(&bw, 0, bw.size), vkbuf_view(&bfr, 0, bfr.size), vkbuf_view(&bpos, 0, bpos.size)};
            ph.pos_base = (uint32_t)(p0 + t);
            ph.pos_step = 0;
            vkrt_begin(&rt, err, sizeof err);
            vkrt_dispatch(&rt, P_HEADPREP, v, 4, &ph, sizeof ph, (uint32_t)H, 1, 1);
            vkrt_submit_wait(&rt, err, sizeof err);
        }
        CHECK(readbuf(&bg, r, qn * 4) == 0); /* r: attn_tile's output rotated back */
        size_t moved = 0;
        for (size_t i = 0; i < qn; i++) moved += memcmp(&g[i], &r[i], 4) != 0;
        CHECKF(moved > qn / 16, "headprep F_ROPE_INV changed only %zu of %zu values", moved, qn);
        vkbuf_free(&rt, &bw); vkbuf_free(&rt, &bpos); vkbuf_free(&rt, &bg);
    }
    for (int pass = 0; pass < 3 && D % 16 == 0; pass++) {
        char err[256];
        int split = pass == 1, inv = pass == 2;
        uint32_t nk = (uint32_t)(win + (mode == 1 ? (p0 + n) / ratio : topk)), ld = nk + 1 + 2 * (uint32_t)split;
        int nbase = split ? ne / 2 + 1 : 0;
        size_t scn = (size_t)(n + split) * H * ld;
        vkbuf bdsc = mkbuf(NULL, scn * 4), bdb = split ? mkbuf(cmp, (size_t)nbase * D * 4) : mkbuf(NULL, 16),
              bdown = split ? mkbuf(cmp + (size_t)nbase * D, (size_t)(ne - nbase) * D * 4) : bc;
        vkbuf *bv[10] = {&bq, &bk, &br, &bdown, &bi, &bs, &bo, &bdsc, &bdb, &bfr};
        pc_attnd pd = {(uint32_t)D, (uint32_t)H, (uint32_t)win, 0, (uint32_t)p0, (uint32_t)ratio, (uint32_t)mode,
                       (uint32_t)topk, (uint32_t)ld_i, scale, (uint32_t)n, ld, (uint32_t)split, (uint32_t)nbase,
                       (uint32_t)inv, (uint32_t)rd};
        memset(g2, 0xff, qn * 4);
        CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, qn * 4), g2, qn * 4, err, sizeof err) == 0);
        run_attn_dec(bv, &pd, nk);
        CHECK(readbuf(&bo, g2, qn * 4) == 0);
        float *sc = malloc(scn * 4);
        CHECK(readbuf(&bdsc, sc, scn * 4) == 0); /* nothing past the scratch rows */
        free(sc);
        const float *want = inv ? r : g;
        size_t diff = 0;
        for (size_t i = 0; i < qn; i++) diff += memcmp(&want[i], &g2[i], 4) != 0;
        const char *what = split ? " (base rows split)" : inv ? " with rope_inv" : "";
        printf("  attn_dec%s: %zu of %zu values differ from attn_tile%s\n", what, diff, qn,
               inv ? " + headprep F_ROPE_INV" : "");
        CHECKF(diff == 0, "attn_dec%s differs in %zu of %zu values", what, diff, qn);
        vkbuf_free(&rt, &bdsc);
        vkbuf_free(&rt, &bdb);
        if (split) vkbuf_free(&rt, &bdown);
    }
    vkbuf_free(&rt, &bfr);
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
    float scale = attn_case_inputs(H, D, win, n, p0, ratio, mode, topk, ld_i, ne, q, kv, ring, cmp, sink, idx, keys, r);
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
    /* index_score_dec (decode), with the keys in one buffer and split at
       base_rows into a shared base and the sequence's own rows */
    for (int split = 0; split < 2; split++) {
        typedef struct { uint32_t nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint32_t n_tok, base_rows; } pc_iscored;
        int nbase = split ? n_max / 3 : 0;
        vkbuf bb = split ? mkbuf(k, (size_t)nbase * hd * 4) : mkbuf(NULL, 16),
              bown = split ? mkbuf(k + (size_t)nbase * hd, (size_t)(n_max - nbase) * hd * 4) : bk;
        vkbuf *bd[5] = {&bq, &bw, &bown, &bo, &bb};
        pc_iscored pd = {(uint32_t)nh, (uint32_t)hd, 4, (uint32_t)t0, (uint32_t)p0, (uint32_t)ld, (uint32_t)n_max, ws,
                         (uint32_t)m, (uint32_t)nbase};
        memset(g3, 0xff, (size_t)m * ld * 4);
        CHECK(vkrt_upload(&rt, vkbuf_view(&bo, 0, (size_t)m * ld * 4), g3, (size_t)m * ld * 4, verr, sizeof verr) == 0);
        run1(P_INDEX_SCORE_DEC, bd, 5, &pd, sizeof pd, (uint32_t)(n_max + 31) / 32, (uint32_t)m);
        CHECK(readbuf(&bo, g3, (size_t)m * ld * 4) == 0);
        size_t d3 = 0;
        for (int a = 0; a < m; a++)
            for (int i = 0; i < ld; i++) {
                uint32_t u;
                memcpy(&u, &g3[a * ld + i], 4);
                d3 += i < n_max ? memcmp(&g[a * ld + i], &g3[a * ld + i], 4) != 0 : u != 0xffffffffu;
            }
        printf("  index_score_dec%s: %zu values differ from index_score_tile\n", split ? " (base rows split)" : "", d3);
        CHECKF(d3 == 0, "index_score_dec%s differs from index_score_tile in %zu values", split ? " (split)" : "", d3);
        vkbuf_free(&rt, &bb);
        if (split) vkbuf_free(&rt, &bown);
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
    /* topk_dec (decode): the same rows bit for bit, also where rows see
       fewer entries than K (-1 after them) or none */
    static const int p0s[3] = {4 * 5900 - 2, 4 * 300 - 2, 0};
    for (int v = 0; v < 3; v++) {
        char err[256];
        pc_topk pv = pc;
        pv.p0 = (uint32_t)p0s[v];
        memset(ib, 0x5a, (size_t)T * K * 4);
        CHECK(vkrt_upload(&rt, vkbuf_view(&bi, 0, (size_t)T * K * 4), ib, (size_t)T * K * 4, err, sizeof err) == 0);
        run1(P_TOPK_RADIX, b, 2, &pv, sizeof pv, (uint32_t)T, 1);
        int32_t *iv = malloc((size_t)T * K * 4);
        CHECK(readbuf(&bi, iv, (size_t)T * K * 4) == 0);
        CHECK(vkrt_upload(&rt, vkbuf_view(&bi, 0, (size_t)T * K * 4), ib, (size_t)T * K * 4, err, sizeof err) == 0);
        run1(P_TOPK_DEC, b, 2, &pv, sizeof pv, (uint32_t)T, 1);
        CHECK(readbuf(&bi, ib, (size_t)T * K * 4) == 0);
        size_t diff = 0;
        for (int i = 0; i < T * K; i++) diff += iv[i] != ib[i];
        printf("  topk_dec, rows of %d..%d entries: %zu of %d indices differ from topk_radix\n", (p0s[v] + 1) / 4,
               (p0s[v] + T) / 4, diff, T * K);
        CHECKF(diff == 0, "topk_dec differs from topk_radix in %zu of %d indices (p0 %d)", diff, T * K, p0s[v]);
        free(iv);
    }
    memcpy(ib, ir, (size_t)T * K * 4);
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

/* ---- index_topk (+ merge): fused scores and selection against the two-dispatch path ---- */
typedef struct {
    uint32_t nh, hd, ratio, t0, p0, n_max; float wscale; uint32_t n_tok, topk, cap, split_len, n_split, row0, ld_split,
        base_rows;
} pc_itopk;
typedef struct { uint32_t topk, ratio, p0, ld_i, i_row0, cap, n_split, row0, ld_split; } pc_itmerge;
_Static_assert(sizeof(pc_itopk) == 60, "index_topk push constants");
_Static_assert(sizeof(pc_itmerge) == 36, "index_topk_merge push constants");

/* topk_radix's row from a score row: the keys above the k-th largest in
   index order, then the first ones equal to it, then -1 */
static uint32_t okey_c(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static void cpu_topk_row(const float *s, int n, int topk, int32_t *out)
{
    int k = n < topk ? n : topk, j = 0;
    for (int i = 0; i < topk; i++) out[i] = -1;
    if (k <= 0) return;
    uint32_t *keys = malloc((size_t)n * 4), *srt = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) keys[i] = srt[i] = okey_c(s[i]);
    for (int i = 1; i < n; i++) { /* descending insertion sort: test sizes */
        uint32_t v = srt[i];
        int p = i - 1;
        while (p >= 0 && srt[p] < v) { srt[p + 1] = srt[p]; p--; }
        srt[p + 1] = v;
    }
    uint32_t th = srt[k - 1];
    for (int i = 0; i < n; i++)
        if (keys[i] > th) out[j++] = i;
    for (int i = 0; i < n && j < k; i++)
        if (keys[i] == th) out[j++] = i;
    free(keys);
    free(srt);
}

/* One shape: scores of m tokens (scratch rows t0.., positions p0..) over the
 * entries split into ranges of split_len, topk of them, the compressed rows
 * [0, base_rows) in a second buffer. ties: key rows repeat with period 7 and
 * two heads, so many scores are equal (and many are 0). Checks: fused ==
 * index_score_tile + topk_radix bit for bit, == a CPU selection on those
 * scores, the same with all rows in one buffer, and the selected sets
 * against ref_indexer_select (the CPU reference's scores). */
static void itopk_case(int nh, int m, int t0, int p0, int topk, int split_len, int base_rows, int ties, int row0)
{
    int hd = 128, T = t0 + m + 1, n_max = (p0 + m) / 4, ld = n_max + 5;
    int cap = ((2 * topk > topk + 64 ? 2 * topk : topk + 64) + 31) / 32 * 32; /* the engine's */
    int n_split = (n_max + split_len - 1) / split_len;
    float *q = malloc((size_t)T * nh * hd * 4), *w = malloc((size_t)T * nh * 4), *k = malloc((size_t)n_max * hd * 4);
    for (int i = 0; i < T * nh * hd; i++) q[i] = bf(frand());
    for (int i = 0; i < T * nh; i++) w[i] = bf(frand() * 4.0f);
    for (int i = 0; i < n_max * hd; i++) k[i] = bf(frand());
    if (ties)
        for (int i = 7; i < n_max; i++) memcpy(k + (size_t)i * hd, k + (size_t)(i % 7) * hd, (size_t)hd * 4);
    float ws = (float)(pow(hd, -0.5) * pow(nh, -0.5));
    vkbuf bq = mkbuf(q, (size_t)T * nh * hd * 4), bw = mkbuf(w, (size_t)T * nh * 4),
          bk = mkbuf(k, (size_t)n_max * hd * 4), bs = mkbuf(NULL, (size_t)m * ld * 4),
          bi = mkbuf(NULL, (size_t)(m + 2) * topk * 4);
    /* the two-dispatch path */
    pc_iscore pc = {(uint32_t)nh, (uint32_t)hd, 4, (uint32_t)t0, (uint32_t)p0, (uint32_t)ld, (uint32_t)n_max, ws,
                    (uint32_t)m, 0};
    vkbuf bz = mkbuf(NULL, 16); /* no base rows */
    vkbuf *b5[5] = {&bq, &bw, &bk, &bs, &bz};
    run1(P_INDEX_SCORE_TILE, b5, 5, &pc, sizeof pc, (uint32_t)(n_max + 31) / 32, (uint32_t)(m + 7) / 8);
    vkbuf_free(&rt, &bz);
    pc_topk pt = {(uint32_t)topk, 4, (uint32_t)p0, (uint32_t)ld, (uint32_t)topk, 2};
    vkbuf *b2[2] = {&bs, &bi};
    run1(P_TOPK_RADIX, b2, 2, &pt, sizeof pt, (uint32_t)m, 1);
    float *sc = malloc((size_t)m * ld * 4);
    int32_t *i_two = malloc((size_t)(m + 2) * topk * 4), *i_fused = malloc((size_t)(m + 2) * topk * 4),
            *i_cpu = malloc((size_t)topk * 4);
    CHECK(readbuf(&bs, sc, (size_t)m * ld * 4) == 0);
    CHECK(readbuf(&bi, i_two, (size_t)(m + 2) * topk * 4) == 0);
    /* fused, twice: the rows split at base_rows into two buffers, then all in one */
    int lds = n_split + 1; /* lists of a token further apart than its ranges: the engine's layout */
    size_t ncand = (size_t)(row0 + m) * lds * cap;
    for (int pass = 0; pass < 2; pass++) {
        int br = pass == 0 ? base_rows : 0;
        vkbuf bown = mkbuf(k + (size_t)br * hd, (size_t)(n_max - br) * hd * 4),
              bbase = mkbuf(br ? k : NULL, (size_t)(br ? br : 1) * hd * 4),
              bc = mkbuf(NULL, ncand * 8), bn = mkbuf(NULL, (size_t)(row0 + m) * lds * 4);
        char verr[256];
        memset(i_fused, 0x5a, (size_t)(m + 2) * topk * 4); /* a shader that writes nothing cannot match */
        CHECK(vkrt_upload(&rt, vkbuf_view(&bi, 0, (size_t)(m + 2) * topk * 4), i_fused, (size_t)(m + 2) * topk * 4,
                          verr, sizeof verr) == 0);
        pc_itopk pf = {(uint32_t)nh, (uint32_t)hd, 4, (uint32_t)t0, (uint32_t)p0, (uint32_t)n_max, ws, (uint32_t)m,
                       (uint32_t)topk, (uint32_t)cap, (uint32_t)split_len, (uint32_t)n_split, (uint32_t)row0,
                       (uint32_t)lds, (uint32_t)br};
        vkbuf *b6[6] = {&bq, &bw, &bown, &bc, &bn, &bbase};
        run1(P_INDEX_TOPK, b6, 6, &pf, sizeof pf, (uint32_t)n_split, (uint32_t)(m + 7) / 8);
        pc_itmerge pm = {(uint32_t)topk, 4, (uint32_t)p0, (uint32_t)topk, 2, (uint32_t)cap, (uint32_t)n_split,
                         (uint32_t)row0, (uint32_t)lds};
        vkbuf *b3[3] = {&bc, &bn, &bi};
        run1(P_INDEX_TOPK_MERGE, b3, 3, &pm, sizeof pm, (uint32_t)m, 1);
        CHECK(readbuf(&bi, i_fused, (size_t)(m + 2) * topk * 4) == 0);
        uint8_t *gtmp = malloc(ncand * 8); /* guards after the lists and counts */
        uint32_t *cnt = malloc((size_t)(row0 + m) * lds * 4);
        CHECK(readbuf(&bc, gtmp, ncand * 8) == 0 && readbuf(&bn, cnt, (size_t)(row0 + m) * lds * 4) == 0);
        /* each list holds at least min(visible, topk) and at most cap pairs;
           where a range is longer than a list, lists were cut */
        size_t cut = 0, bad_cnt = 0;
        for (int a = 0; a < m; a++)
            for (int r = 0; r < n_split; r++) {
                int vis = (p0 + a + 1) / 4 - r * split_len, c = (int)cnt[(row0 + a) * lds + r];
                vis = vis < 0 ? 0 : vis > split_len ? split_len : vis;
                if (vis > n_max - r * split_len) vis = n_max - r * split_len;
                bad_cnt += c > cap || c < (vis < topk ? vis : topk);
                cut += c < vis;
            }
        CHECKF(bad_cnt == 0, "%zu list counts out of range", bad_cnt);
        if (pass == 0) printf("  index_topk: %zu of %d lists cut\n", cut, m * n_split);
        CHECKF(split_len <= cap || cut > 0, "ranges of %d entries but no list cut", split_len);
        free(cnt);
        free(gtmp);
        size_t diff = 0;
        for (size_t i = 2 * (size_t)topk; i < (size_t)(m + 2) * topk; i++) diff += i_fused[i] != i_two[i];
        CHECKF(diff == 0, "nh %d m %d p0 %d topk %d split %d base_rows %d: index_topk differs from "
               "index_score_tile + topk_radix in %zu of %d", nh, m, p0, topk, split_len, br, diff, m * topk);
        size_t outside = 0;
        for (int i = 0; i < 2 * topk; i++) outside += i_fused[i] != 0x5a5a5a5a; /* rows before i_row0 untouched */
        CHECKF(outside == 0, "index_topk wrote outside its rows");
        vkbuf_free(&rt, &bown); vkbuf_free(&rt, &bbase); vkbuf_free(&rt, &bc); vkbuf_free(&rt, &bn);
    }
    /* against the CPU: topk_radix's rule on the GPU scores, and the sets of
       ref_indexer_select (the reference's own scores) */
    int64_t *sel = malloc((size_t)topk * sizeof *sel);
    float *rs = malloc((size_t)n_max * 4), *wt = malloc((size_t)nh * 4);
    size_t bad_row = 0, bad_set = 0, sel_total = 0;
    for (int a = 0; a < m; a++) {
        int n = (p0 + a + 1) / 4;
        cpu_topk_row(sc + (size_t)a * ld, n, topk, i_cpu);
        bad_row += memcmp(i_cpu, i_fused + (size_t)(a + 2) * topk, (size_t)topk * 4) != 0;
        for (int h = 0; h < nh; h++) wt[h] = bf(w[(t0 + a) * nh + h] * ws);
        int cnt = ref_indexer_select(q + (size_t)(t0 + a) * nh * hd, wt, nh, hd, k, n, topk, rs, sel);
        sel_total += (size_t)cnt;
        for (int j = 0; j < cnt; j++) {
            int found = 0;
            for (int x = 0; x < topk; x++) found |= i_fused[(size_t)(a + 2) * topk + x] == (int32_t)sel[j];
            bad_set += !found;
        }
    }
    printf("  index_topk nh %d m %d p0 %d (n_max %d) topk %d split %d (x%d) base_rows %d%s: %zu selected, "
           "%zu rows != cpu rule, %zu not in ref set\n", nh, m, p0, n_max, topk, split_len, n_split, base_rows,
           ties ? " ties" : "", sel_total, bad_row, bad_set);
    CHECKF(bad_row == 0, "%zu rows differ from the CPU selection on the same scores", bad_row);
    CHECKF(sel_total > 0 && bad_set == 0, "%zu selected entries not among ref_indexer_select's", bad_set);
    vkbuf_free(&rt, &bq); vkbuf_free(&rt, &bw); vkbuf_free(&rt, &bk); vkbuf_free(&rt, &bs); vkbuf_free(&rt, &bi);
    free(q); free(w); free(k); free(sc); free(i_two); free(i_fused); free(i_cpu); free(sel); free(rs); free(wt);
}

static void index_topk_fused(void)
{
    if (!open_rt()) SKIP("no Vulkan device");
    if (!vkrt_has_pipe(&rt, P_INDEX_TOPK)) SKIP("index_topk not on this device");
    itopk_case(5, 11, 2, 201, 16, 32, 0, 0, 0);     /* n_max 53 above k, two ranges */
    itopk_case(3, 13, 0, 17, 64, 64, 2, 0, 1);      /* n_max 7 below k: -1 fill; some tokens see nothing */
    itopk_case(2, 16, 3, 1200, 40, 320, 100, 1, 0); /* ties, one range: many cuts of the lists */
    itopk_case(2, 9, 1, 1500, 24, 160, 57, 1, 2);   /* ties, three ranges and their lists cut, p0 > 0 */
    itopk_case(4, 20, 0, 2000, 64, 256, 37, 0, 0);  /* several blocks and cuts per range */
    itopk_case(3, 40, 5, 50, 16, 32, 3, 0, 0);      /* tokens seeing fewer and more than k entries */
    itopk_case(1, 8, 0, 12000, 512, 1536, 700, 0, 1); /* V4-Flash's k: lists of 1024, cut in 16 rounds */
}

int main(void)
{
    RUN(gemm_formats);
    RUN(gemm_small_rows);
    RUN(gemm_grouped);
    RUN(gemm_coopmat);
    RUN(act_quant_fp8);
    RUN(rmsnorm_rows);
    RUN(rmsnorm_quant_fused);
    RUN(swiglu_quant_fused);
    RUN(hc_pre_slices);
    RUN(hc_pre_norm_fused);
    RUN(hc_post_mix_fused);
    RUN(moe_gate_group_fused);
    RUN(moe_combine_post_order);
    RUN(headprep_paths);
    RUN(attention_window_and_compressed);
    RUN(topk_ties_and_visibility);
    RUN(attention_tiled_heads);
    RUN(attention_fast);
    RUN(indexer_scores_tiled);
    RUN(topk_radix_ties_large);
    RUN(index_topk_fused);
    if (rt_ok == 1) vkrt_close(&rt);
    CHECK_EXIT();
}
