/* GEMM kernel timings: each GEMM variant of shaders/gemm.comp (tiled, SMALL)
 * and shaders/gemm_cm.comp (tensor cores, where the device has them) at
 * DeepSeek-V4-Flash sizes, timed with GPU timestamps, reported as ms per
 * dispatch, TFLOP/s and GB/s of weights read. The engine's breakdown
 * (`dsv4-batch bench --profile`) says where a pass spends its time; this says
 * how far each kernel is from the hardware, in isolation.
 *
 *   gemm_bench [quick] [sweep]
 *
 * `quick` uses tiny sizes (for lavapipe: a smoke run, the numbers mean
 * nothing). `sweep` times only the few-row cases, SMALL against the tensor
 * cores: the dense shapes at M = 1, 2, 4, 8, 16 and the experts at T = 1, 2,
 * 4, 8, the numbers that place forward.c's CM_MIN_ROWS and small_rows.
 * Weights come from shaders/fill_random.comp (valid e4m3 / e2m1 /
 * bf16 / ue8m0 values), activations from the same shader (bf16 values), the
 * MoE route buffer is written here as shaders/moe_group.comp lays it out
 * (T tokens x k routes spread evenly over the experts). Built by
 * `make build/tools/gemm_bench` (and `make tests`); uses engine/vk.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"
#include "engine/vk.h"

typedef struct { uint32_t M, N, K, ldx, ldy, x_off, y_off, w_row0, flags, s_cols, w_estride, s_estride, e0, e1, tiles_off, rowmap_off; } pc_gemm;
typedef struct { uint32_t lead, nbytes, mode, seed, aux0, aux1; float base, amp; } pc_fill;
_Static_assert(sizeof(pc_gemm) == 64, "gemm push constants");
_Static_assert(sizeof(pc_fill) == 32, "fill_random push constants");

#define REPS 19
#define DIE(...) do { fprintf(stderr, "gemm_bench: " __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } while (0)

static vkrt rt;
static char err[512];

static uint32_t cdiv(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

static void mk(vkbuf *b, VkDeviceSize n)
{
    if (vkbuf_create(&rt, n, 1, b, err, sizeof err)) DIE("%s", err);
}

/* mode as fill_random.comp: 0 bf16, 2 e4m3, 3 e8m0, 4 random bytes */
static void fill(vkbuf *b, VkDeviceSize n, uint32_t mode, uint32_t seed, uint32_t aux0, uint32_t aux1, float amp)
{
    if (vkrt_begin(&rt, err, sizeof err)) DIE("%s", err);
    const VkDeviceSize piece = (VkDeviceSize)1 << 26; /* within every device's binding range */
    for (VkDeviceSize off = 0; off < n; off += piece) {
        VkDeviceSize len = n - off < piece ? n - off : piece;
        pc_fill pc = {0, (uint32_t)len, mode, seed + (uint32_t)(off >> 20), aux0, aux1, 0.0f, amp};
        vkview v = vkbuf_view(b, off, (len + 3) & ~(VkDeviceSize)3);
        vkrt_dispatch(&rt, P_FILL_RANDOM, &v, 1, &pc, sizeof pc, cdiv(len, 4 * 256), 1, 1);
    }
    if (vkrt_submit_wait(&rt, err, sizeof err)) DIE("%s", err);
}

/* Times REPS dispatches; returns ms per dispatch from the GPU timestamps. */
static double timed(const char *name, vk_pipe_id p, vkview *v, const pc_gemm *pc, uint32_t gx, uint32_t gy)
{
    if (vkrt_begin(&rt, err, sizeof err)) DIE("%s", err);
    vkrt_op(&rt, name);
    for (int r = 0; r < REPS + 1; r++) vkrt_dispatch(&rt, p, v, 5, pc, sizeof *pc, gx, gy, 1);
    for (int i = 0; i < rt.n_prof; i++) rt.prof_ms[i] = 0, rt.prof_calls[i] = 0;
    if (vkrt_submit_wait(&rt, err, sizeof err)) DIE("%s", err);
    for (int i = 0; i < rt.n_prof; i++)
        if (strcmp(rt.prof_name[i], name) == 0 && rt.prof_calls[i]) return rt.prof_ms[i] / (double)rt.prof_calls[i];
    return -1;
}

static void report(const char *what, const char *variant, uint32_t M, uint32_t N, uint32_t K, double wbytes, double ms)
{
    double s = ms / 1e3;
    printf("  %-22s %-8s M=%-5u N=%-6u K=%-5u %9.4f ms %8.2f TFLOP/s %8.1f GB/s\n", what, variant, M, N, K, ms,
           2.0 * M * N * K / s / 1e12, wbytes / s / 1e9);
}

typedef struct { const char *name; dsv4_wq q; uint32_t N, K; } dense_case;

int main(int argc, char **argv)
{
    int quick = 0, sweep = 0;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "quick") == 0) quick = 1;
        else if (strcmp(argv[a], "sweep") == 0) sweep = 1;
        else DIE("unknown argument '%s' (usage: gemm_bench [quick] [sweep])", argv[a]);
    }
    if (vkrt_open(&rt, NULL, 1, 1, err, sizeof err)) DIE("%s", err);
    printf("gemm_bench: %s, cooperative matrices: %s; each figure is the mean of %d back-to-back dispatches\n",
           rt.props.deviceName, rt.coopmat ? "yes" : "no", REPS + 1);
    uint32_t D = quick ? 256 : 4096, inter = quick ? 128 : 2048, E = quick ? 8 : 256, k = quick ? 2 : 6;
    dense_case dc[] = {
        {"wq_b (fp8)", DSV4_WQ_FP8, quick ? 768 : 32768, quick ? 128 : 1024},
        {"wo_b (fp8)", DSV4_WQ_FP8, D, quick ? 256 : 8192},
        {"shared w1 (fp8)", DSV4_WQ_FP8, inter, D},
        {"compressor wkv (bf16)", DSV4_WQ_BF16, quick ? 384 : 1024, D},
        {"dense fp4", DSV4_WQ_FP4, inter, D},
    };
    uint32_t all_rows[] = {1, 16, quick ? 64 : 256, quick ? 128 : 1024}, sweep_rows[] = {1, 2, 4, 8, 16};
    uint32_t *rows = sweep ? sweep_rows : all_rows;
    size_t n_rows = sweep ? sizeof sweep_rows / sizeof sweep_rows[0] : sizeof all_rows / sizeof all_rows[0];
    uint32_t maxM = all_rows[3] > (quick ? 64u : 256u) * k ? all_rows[3] : (quick ? 64u : 256u) * k;
    vkbuf bx, by, bd, br;
    mk(&bx, (VkDeviceSize)maxM * 32768 * 4);
    mk(&by, (VkDeviceSize)maxM * 32768 * 4);
    mk(&bd, 256);
    fill(&bx, (VkDeviceSize)maxM * 32768 * 4, 0, 7, 0, 0, 1.0f); /* bf16 pairs: f32 reads see small finite values */
    printf("dense GEMMs (y = x W^T)\n");
    for (size_t c = 0; c < sizeof dc / sizeof dc[0]; c++) {
        dense_case *d = &dc[c];
        double wb = d->q == DSV4_WQ_FP4 ? (double)d->N * d->K / 2 : d->q == DSV4_WQ_FP8 ? (double)d->N * d->K
                                                                                        : (double)d->N * d->K * 2;
        uint32_t scols = d->q == DSV4_WQ_FP4 ? d->K / 32 : cdiv(d->K, 128);
        VkDeviceSize sb = d->q == DSV4_WQ_FP4 ? (VkDeviceSize)d->N * scols : (VkDeviceSize)cdiv(d->N, 128) * scols;
        vkbuf bw, bs;
        mk(&bw, (VkDeviceSize)wb);
        mk(&bs, sb + 16);
        fill(&bw, (VkDeviceSize)wb, d->q == DSV4_WQ_FP8 ? 2 : d->q == DSV4_WQ_FP4 ? 4 : 0, 11 + (uint32_t)c, 1, 14, 0.02f);
        fill(&bs, sb, 3, 13, 120, 0, 0);
        vk_pipe_id p = d->q == DSV4_WQ_FP8 ? P_GEMM_FP8 : d->q == DSV4_WQ_FP4 ? P_GEMM_FP4 : P_GEMM_BF16;
        vkview v[5] = {vkbuf_view(&bx, 0, bx.size), vkbuf_view(&bw, 0, bw.size), vkbuf_view(&bs, 0, bs.size),
                       vkbuf_view(&by, 0, by.size), vkbuf_view(&bd, 0, bd.size)};
        for (size_t r = 0; r < n_rows; r++) {
            uint32_t M = rows[r];
            pc_gemm pc = {M, d->N, d->K, d->K, d->N, 0, 0, 0, 1, scols, 0, 0, 0, 0, 0, 0};
            if (M <= 16) {
                report(d->name, "small", M, d->N, d->K, wb,
                       timed("small", p + P_GEMM_SMALL_FIRST, v, &pc, cdiv(d->N, GEMM_SMALL_COLS), cdiv(M, GEMM_SMALL_ROWS)));
                if (rt.pipe[P_GEMM_SMALL2_FIRST])
                    report(d->name, "small2", M, d->N, d->K, wb,
                           timed("small2", p + P_GEMM_SMALL2_FIRST, v, &pc, cdiv(d->N, GEMM_SMALL2_COLS),
                                 cdiv(M, GEMM_SMALL_ROWS)));
                if (sweep && rt.coopmat && d->q != DSV4_WQ_F32) {
                    report(d->name, "coopmat", M, d->N, d->K, wb,
                           timed("coopmat", (vk_pipe_id)vkrt_cm_twin(p), v, &pc, cdiv(d->N, 128), cdiv(M, 64)));
                    report(d->name, "coopmat2", M, d->N, d->K, wb,
                           timed("coopmat2", (vk_pipe_id)vkrt_cm2_twin(p), v, &pc, cdiv(d->N, 128), cdiv(M, 64)));
                }
                continue;
            }
            report(d->name, "tiled", M, d->N, d->K, wb, timed("tiled", p, v, &pc, cdiv(d->N, 64), cdiv(M, 64)));
            if (rt.coopmat) {
                report(d->name, "coopmat", M, d->N, d->K, wb,
                       timed("coopmat", (vk_pipe_id)vkrt_cm_twin(p), v, &pc, cdiv(d->N, 128), cdiv(M, 64)));
                report(d->name, "coopmat2", M, d->N, d->K, wb,
                       timed("coopmat2", (vk_pipe_id)vkrt_cm2_twin(p), v, &pc, cdiv(d->N, 128), cdiv(M, 64)));
            }
        }
        vkbuf_free(&rt, &bw);
        vkbuf_free(&rt, &bs);
    }

    /* MoE experts: FP4 w1 (gather, N = inter, K = D) and w2 (grouped, N = D, K = inter) */
    printf("routed experts (FP4, %u experts, %u routes per token, spread evenly)\n", E, k);
    VkDeviceSize ew1 = (VkDeviceSize)inter * D / 2, es1 = (VkDeviceSize)inter * (D / 32);
    VkDeviceSize ew2 = (VkDeviceSize)D * inter / 2, es2 = (VkDeviceSize)D * (inter / 32);
    vkbuf w1, s1, w2, s2;
    mk(&w1, ew1 * E); mk(&s1, es1 * E); mk(&w2, ew2 * E); mk(&s2, es2 * E);
    fill(&w1, ew1 * E, 4, 21, 0, 0, 0); fill(&w2, ew2 * E, 4, 22, 0, 0, 0);
    fill(&s1, es1 * E, 3, 23, 118, 0, 0); fill(&s2, es2 * E, 3, 24, 118, 0, 0);
    uint32_t all_tok[] = {1, 16, quick ? 64 : 256, quick ? 64 : 1024}, sweep_tok[] = {1, 2, 4, 8};
    uint32_t *tok = sweep ? sweep_tok : all_tok;
    size_t n_tok = sweep ? sizeof sweep_tok / sizeof sweep_tok[0] : sizeof all_tok / sizeof all_tok[0];
    uint32_t maxS = all_tok[3] * k, rcap = 4 + 4 * (maxS / 32 + E) + 2 * maxS + 64;
    uint32_t *R = calloc(rcap, 4);
    mk(&br, (VkDeviceSize)rcap * 4);
    for (size_t t = 0; t < n_tok; t++) {
        uint32_t T = tok[t], S = T * k, tiles = 0, off = 0, rowmap_off = 4 + 4 * (S / 32 + E), used = 0;
        memset(R, 0, (size_t)rcap * 4);
        for (uint32_t ex = 0; ex < E; ex++) { /* slot s goes to expert s % E */
            uint32_t c = S / E + (ex < S % E ? 1 : 0);
            used += c > 0;
            for (uint32_t m = 0; m < c; m += 32) {
                uint32_t *tb = R + 4 + 4 * tiles++;
                tb[0] = ex; tb[1] = off + m; tb[2] = off + (m + 32 < c ? m + 32 : c);
            }
            for (uint32_t j = 0; j < c; j++) R[rowmap_off + off + j] = (ex + j * E) / k;
            off += c;
        }
        R[0] = tiles;
        if (vkrt_upload(&rt, vkbuf_view(&br, 0, br.size), R, (size_t)rcap * 4, err, sizeof err)) DIE("%s", err);
        for (int j = 0; j < 2; j++) {
            uint32_t N = j ? D : inter, K = j ? inter : D;
            pc_gemm pc = {0, N, K, K, N, 0, 0, 0, 1, K / 32, (uint32_t)(j ? ew2 : ew1), (uint32_t)(j ? es2 : es1), 0, E,
                          0, rowmap_off};
            vkview v[5] = {vkbuf_view(&bx, 0, bx.size), vkbuf_view(j ? &w2 : &w1, 0, (j ? ew2 : ew1) * E),
                           vkbuf_view(j ? &s2 : &s1, 0, (j ? es2 : es1) * E), vkbuf_view(&by, 0, by.size),
                           vkbuf_view(&br, 0, br.size)};
            vk_pipe_id p = j ? P_GEMM_FP4_GROUPED : P_GEMM_FP4_GATHER;
            double wb = (double)used * (double)(j ? ew2 : ew1);
            uint32_t gy = tiles + 1;
            char what[64];
            snprintf(what, sizeof what, "%s T=%u", j ? "experts w2" : "experts w1", T);
            report(what, "small", S, N, K, wb, timed("esmall", p + P_GEMM_SMALL_FIRST, v, &pc, cdiv(N, GEMM_SMALL_COLS), gy));
            if (rt.pipe[P_GEMM_SMALL2_FIRST])
                report(what, "small2", S, N, K, wb,
                       timed("esmall2", p + P_GEMM_SMALL2_FIRST, v, &pc, cdiv(N, GEMM_SMALL2_COLS), gy));
            if (!sweep) report(what, "tiled", S, N, K, wb, timed("etiled", p, v, &pc, cdiv(N, 64), gy));
            if (rt.coopmat) {
                report(what, "coopmat", S, N, K, wb,
                       timed("ecoopmat", (vk_pipe_id)vkrt_cm_twin(p), v, &pc, cdiv(N, 128), gy));
                report(what, "coopmat2", S, N, K, wb,
                       timed("ecoopmat2", (vk_pipe_id)vkrt_cm2_twin(p), v, &pc, cdiv(N, 128), gy));
            }
        }
    }
    free(R);
    vkbuf *all[] = {&bx, &by, &bd, &br, &w1, &s1, &w2, &s2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) vkbuf_free(&rt, all[i]);
    vkrt_close(&rt);
    return 0;
}
