/* engine/forward.c: DeepSeek-V4's forward pass recorded as Vulkan dispatches.
 *
 * Weights are copied once into a few large device arenas in their stored
 * formats (FP8/FP4 stay packed; shaders decode them). A pass takes T tokens
 * made of segments (a prefill chunk is one segment of one sequence; a batched
 * decode step is one segment per sequence): everything that is per token —
 * projections, norms, hyper-connections, MoE — runs as batched products over
 * all T tokens; only what touches a sequence's own state (compressors, the
 * indexer, attention, ring updates) is dispatched per segment. The whole pass
 * goes into one command buffer and the host waits once, at the end.
 * Activations are f32 buffers holding exactly the values the official code
 * holds (bf16-rounded where it keeps bf16, FP8 quant-dequantized before every
 * FP8/FP4 GEMM), so the numerics follow inference/model.py and the rounding
 * of kernel_tilelang.py. */
#include "engine/forward.h"
#include "engine/bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- push constants, mirrored from the shaders ---- */
typedef struct { uint32_t M, N, K, ldx, ldy, x_off, y_off, w_row0, flags, s_cols, w_estride, s_estride, e0, e1, tiles_off, rowmap_off; } pc_gemm;
typedef struct { uint32_t rows, ldx, ldy, col0, bs, mode; } pc_aq;
typedef struct { uint32_t D, ldx, ldy, x_off, y_off; float eps; } pc_rms;
typedef struct { uint32_t D, hc, iters, x_ld; float norm_eps, hc_eps; uint32_t splits; } pc_hcpre;
typedef struct { uint32_t D, hc, x_ld, splits; } pc_hcmix;
typedef struct { uint32_t D, hc; } pc_hcpost;
typedef struct { uint32_t D, rd, ldx, x_off, flags, pos_base, pos_step; float eps; } pc_hp;
typedef struct { uint32_t d, ratio, overlap, i0, p0, t0, ld_out, base_rows; } pc_comp;
typedef struct { uint32_t width, lds, ldr, col_off, L, q0, p0, t0, use_ape, ratio; } pc_ring;
typedef struct { uint32_t nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint32_t n_tok, base_rows; } pc_iscore;
typedef struct { uint32_t topk, ratio, p0, ld_s, ld_i, i_row0; } pc_topk;
typedef struct { uint32_t D, H, win, t0, p0, ratio, mode, topk, ld_i; float scale; uint32_t n_tok, ld_sc, base_rows; } pc_attn;
typedef struct { uint32_t nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint32_t n_tok, base_rows; } pc_iscored;
typedef struct { uint32_t D, H, win, t0, p0, ratio, mode, topk, ld_i; float scale; uint32_t n_tok, ld_sc, sc_t0, base_rows,
                 rope_inv, rd; } pc_attnd;
typedef struct {
    uint32_t nh, hd, ratio, t0, p0, n_max; float wscale; uint32_t n_tok, topk, cap, split_len, n_split, row0, ld_split,
        base_rows;
} pc_itopk;
typedef struct { uint32_t topk, ratio, p0, ld_i, i_row0, cap, n_split, row0, ld_split; } pc_itmerge;
typedef struct { uint32_t T, E, k, func, hash, use_bias; float route_scale; } pc_gate;
typedef struct { uint32_t T, E, k, rowmap_off, slotpos_off, wsort_off, e_begin_off; } pc_group;
typedef struct { uint32_t rows, inter, use_w, wsort_off; float limit; } pc_swiglu;
typedef struct { uint32_t T, E, k, func, hash, use_bias; float route_scale;
                 uint32_t rowmap_off, slotpos_off, wsort_off, e_begin_off; } pc_gategroup;
typedef struct { uint32_t D, k, slotpos_off, hc; } pc_combine_post;
typedef struct { uint32_t D, hc, row0, rows; } pc_embed;
typedef struct { uint32_t D, hc; } pc_add;
_Static_assert(sizeof(pc_gemm) == 64, "gemm push constants");
_Static_assert(sizeof(pc_aq) == 24, "act_quant push constants");
_Static_assert(sizeof(pc_rms) == 24, "rmsnorm push constants");
_Static_assert(sizeof(pc_hcpre) == 28, "hc_pre push constants");
_Static_assert(sizeof(pc_hcmix) == 16, "hc_mix push constants");
_Static_assert(sizeof(pc_hcpost) == 8, "hc_post push constants");
_Static_assert(sizeof(pc_hp) == 32, "headprep push constants");
_Static_assert(sizeof(pc_comp) == 32, "compress push constants");
_Static_assert(sizeof(pc_ring) == 40, "ring_write push constants");
_Static_assert(sizeof(pc_iscore) == 40, "index_score push constants");
_Static_assert(sizeof(pc_topk) == 24, "topk push constants");
_Static_assert(sizeof(pc_attn) == 52, "attn push constants");
_Static_assert(sizeof(pc_iscored) == 40, "index_score_dec push constants");
_Static_assert(sizeof(pc_attnd) == 64, "attn_dec push constants");
_Static_assert(sizeof(pc_itopk) == 60, "index_topk push constants");
_Static_assert(sizeof(pc_itmerge) == 36, "index_topk_merge push constants");
_Static_assert(sizeof(pc_gate) == 28, "moe_gate push constants");
_Static_assert(sizeof(pc_group) == 28, "moe_group push constants");
_Static_assert(sizeof(pc_swiglu) == 20, "swiglu push constants");
_Static_assert(sizeof(pc_gategroup) == 44, "moe_gate_group push constants");
_Static_assert(sizeof(pc_combine_post) == 16, "moe_combine_post push constants");
_Static_assert(sizeof(pc_embed) == 16, "embed push constants");
_Static_assert(sizeof(pc_add) == 8, "add_bcast push constants");

enum { F_RMS_SCALE = 1, F_RMS_W = 2, F_ROPE = 4, F_ROPE_INV = 8, F_HADAMARD = 16, F_FP4 = 32,
       F_FP8_NOPE = 64, F_POSBUF = 128 };

/* The most GPU memory attn_tile's kept scores may take (beyond it, or
 * beyond one binding, the scores are computed twice instead). */
#define ASCORE_MAX_BYTES ((uint64_t)512 << 20)

/* The fused indexer (index_topk): the most GPU memory its candidate lists
 * may take (chunk tokens x ranges x cap pairs of 8 bytes; V4-Flash, top-k
 * 512 and 1024-token passes: 8 ranges per token, more for shorter
 * segments, which use the same slots), the most ranges per token, and the
 * workgroups it aims at on a GPU (132 SMs of an H200, about 8 each by
 * shared memory). Its entries per workgroup are 32 at a time (EB in the
 * shader). */
#define ICAND_MAX_BYTES ((uint64_t)64 << 20)
#define ICAND_ROW_RANGES 16u  /* lists per token row of the scratch, at most */
#define ICAND_MAX_RANGES 256u /* lists per token of a segment alone */
#define ITOPK_TARGET_WGS 1024u
#define ITOPK_EB 32u

/* Pairs per candidate list: the top-k plus room for at least two blocks of
 * entries before a list is cut again (the shader needs cap >= topk + 2 x 32). */
static uint32_t itopk_cap(uint32_t topk)
{
    uint32_t c = 2 * topk > topk + 2 * ITOPK_EB ? 2 * topk : topk + 2 * ITOPK_EB;
    return (c + ITOPK_EB - 1) / ITOPK_EB * ITOPK_EB;
}

/* GEMMs of at most e->small_rows rows use the SMALL shader variants, unless
   they have more rows than this and a tensor-core twin runs */
#define CM_MIN_ROWS 4u

/* the most score rows (tokens of a segment) that topk_dec selects; more
   share the GPU as one topk_radix workgroup each */
#define DEC_TOPK_ROWS 16u

#define ARENA_BYTES ((VkDeviceSize)256 << 20)

/* hc_pre's dot products over a token's hc * hidden values are split into
 * slices (hc_mix.comp), each a workgroup: a decode step of one token then
 * keeps a GPU busy (64 slices); a CPU driver has its cores busy with fewer
 * (4) and pays for every extra barrier. Fixed per engine, so the summation
 * order (and every bit of the result) never depends on the number of tokens
 * in a pass. */
#define HC_SPLITS_MAX 64u
#define HC_MAXMIX 48u
static uint32_t hc_splits(const dsv4_engine *e) { return e->cpu_device ? 4u : HC_SPLITS_MAX; }

/* A CPU driver built on gallivm (lavapipe/llvmpipe) stops every loop of a
 * shader invocation once 65535 loop iterations, counted over all of its loops
 * together, have run (LP_MAX_TGSI_LOOP_ITERATIONS), silently: the rest of the
 * work is skipped. attn_serial runs about 3 x head_dim iterations per visible
 * key, so past ~110 keys at head_dim 192 it stopped mid-way (output columns
 * left unwritten kept the previous pass's values: chunked prefill and other
 * sequences changed results). Each attention dispatch is therefore planned
 * against this budget, with a margin for what the compiler adds per key. */
#define CPU_LOOP_BUDGET 58000u

static VkDeviceSize align_up(VkDeviceSize x, VkDeviceSize a) { return (x + a - 1) / a * a; }
static uint32_t cdiv(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

/* ------------------------------------------------------------ weights */

static int arena_alloc(dsv4_engine *e, VkDeviceSize size, const char *what, vkview *out, char *err, size_t errlen)
{
    vkrt *rt = &e->rt;
    if (size > rt->max_range) {
        snprintf(err, errlen, "%s: %llu bytes exceed the device's maxStorageBufferRange %llu", what,
                 (unsigned long long)size, (unsigned long long)rt->max_range);
        return DSV4_ENOMEM;
    }
    if (size == 0) size = 16;
    if (e->n_arenas == 0 || align_up(e->arena_fill, rt->align) + size > e->arenas[e->n_arenas - 1].size) {
        if (e->n_arenas >= (int)(sizeof e->arenas / sizeof e->arenas[0])) {
            snprintf(err, errlen, "%s: out of weight arenas", what);
            return DSV4_ENOMEM;
        }
        VkDeviceSize as = ARENA_BYTES;
        if (as > rt->max_alloc) as = rt->max_alloc;
        if (as < size) as = size;
        int rc = vkbuf_create(rt, as, 1, &e->arenas[e->n_arenas], err, errlen);
        if (rc) return rc;
        e->n_arenas++;
        e->arena_fill = 0;
    }
    VkDeviceSize off = align_up(e->arena_fill, rt->align);
    *out = vkbuf_view(&e->arenas[e->n_arenas - 1], off, align_up(size, 16));
    e->arena_fill = off + align_up(size, 16);
    return 0;
}

/* A named tensor without file data is synthetic: engine/bench_weights.c fills
   it on the GPU instead of an upload. */
static int up_data(dsv4_engine *e, vkview dst, const dsv4_tensor *t, char *err, size_t errlen)
{
    if (!t->data) return bench_fill_tensor(e, dst, t, err, errlen);
    return vkrt_upload(&e->rt, dst, t->data, t->nbytes, err, errlen);
}

static int up_tensor(dsv4_engine *e, const dsv4_tensor *t, vkview *out, char *err, size_t errlen)
{
    if (!t->data && !t->name) {
        *out = e->dummy;
        return 0;
    }
    int rc = arena_alloc(e, t->nbytes, t->name, out, err, errlen);
    if (rc) return rc;
    return up_data(e, *out, t, err, errlen);
}

static int up_weight(dsv4_engine *e, const dsv4_weight *w, gw *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->q = w->q;
    g->out = (uint32_t)w->out;
    g->in = (uint32_t)w->in;
    g->s_cols = w->q == DSV4_WQ_FP8 ? cdiv(w->in, 128) : w->q == DSV4_WQ_FP4 ? (uint32_t)(w->in / 32) : 0;
    int rc = up_tensor(e, &w->w, &g->w, err, errlen);
    if (rc) return rc;
    if (w->scale.data || w->scale.name) return up_tensor(e, &w->scale, &g->s, err, errlen);
    g->s = e->dummy;
    return 0;
}

static int up_hc(dsv4_engine *e, const dsv4_hc_w *h, ghc *g, char *err, size_t errlen)
{
    int rc = up_tensor(e, &h->fn, &g->fn, err, errlen);
    if (!rc) rc = up_tensor(e, &h->base, &g->base, err, errlen);
    if (!rc) rc = up_tensor(e, &h->scale, &g->scale, err, errlen);
    return rc;
}

/* All routed experts' matrix j (0: w1, 1: w2, 2: w3) of a block, contiguous
 * in groups that each fit one binding, so a grouped GEMM dispatch per group
 * reaches all of its experts (one group unless a block's experts exceed
 * maxStorageBufferRange). */
static int up_experts(dsv4_engine *e, const dsv4_ffn_w *f, int n_exp, gblock *g, char *err, size_t errlen)
{
    uint64_t maxb = 1;
    for (int j = 0; j < 3; j++) {
        const dsv4_weight *w0 = j == 0 ? &f->experts[0].w1 : j == 1 ? &f->experts[0].w2 : &f->experts[0].w3;
        if (w0->w.nbytes > maxb) maxb = w0->w.nbytes;
    }
    uint64_t per = e->rt.max_range / maxb;
    if (per > (uint64_t)n_exp) per = (uint64_t)n_exp;
    const char *lim = getenv("DSV4_EXPERTS_PER_GROUP"); /* tests: force several groups */
    if (lim && atoi(lim) > 0 && (uint64_t)atoi(lim) < per) per = (uint64_t)atoi(lim);
    if (per < 1 || (n_exp + per - 1) / per > DSV4_MAX_EXGROUPS) {
        snprintf(err, errlen, "%s: %d experts do not fit %d bindings of maxStorageBufferRange",
                 f->experts[0].w1.w.name, n_exp, DSV4_MAX_EXGROUPS);
        return DSV4_ENOMEM;
    }
    g->ex_per_group = (int)per;
    g->n_exgroups = (int)((n_exp + per - 1) / per);
    for (int j = 0; j < 3; j++) {
        const dsv4_weight *w0 = j == 0 ? &f->experts[0].w1 : j == 1 ? &f->experts[0].w2 : &f->experts[0].w3;
        uint64_t wb = w0->w.nbytes, sb = w0->scale.data || w0->scale.name ? w0->scale.nbytes : 0;
        char what[96];
        snprintf(what, sizeof what, "%s and the other experts of its layer", w0->w.name);
        int rc = 0;
        for (int q = 0; q < g->n_exgroups && !rc; q++) {
            uint64_t cnt = (uint64_t)(q + 1 < g->n_exgroups ? per : n_exp - (uint64_t)q * per);
            rc = arena_alloc(e, wb * cnt, what, &g->ex_w[j][q], err, errlen);
            if (!rc && sb) rc = arena_alloc(e, sb * cnt, what, &g->ex_s[j][q], err, errlen);
            if (!sb) g->ex_s[j][q] = e->dummy;
        }
        if (rc) return rc;
        g->ex_wstride[j] = (uint32_t)wb;
        g->ex_sstride[j] = (uint32_t)sb;
        for (int x = 0; x < n_exp; x++) {
            const dsv4_weight *w = j == 0 ? &f->experts[x].w1 : j == 1 ? &f->experts[x].w2 : &f->experts[x].w3;
            if (w->w.nbytes != wb || (sb && w->scale.nbytes != sb)) {
                snprintf(err, errlen, "%s: size differs from expert 0", w->w.name);
                return DSV4_EINVAL;
            }
            int q = (int)(x / per);
            uint64_t xi = (uint64_t)x - (uint64_t)q * per;
            vkview v = g->ex_w[j][q];
            v.off += wb * xi;
            rc = up_data(e, v, &w->w, err, errlen);
            if (!rc && sb) {
                v = g->ex_s[j][q];
                v.off += sb * xi;
                rc = up_data(e, v, &w->scale, err, errlen);
            }
            if (rc) return rc;
        }
    }
    g->ex_q = f->experts[0].w1.q;
    return 0;
}

static void rope_freqs(const dsv4_config *c, int yarn, float *out)
{
    /* precompute_freqs_cis of model.py, in f32 as torch computes it */
    int dim = c->qk_rope_head_dim;
    double base = yarn ? c->compress_rope_theta : c->rope_theta;
    for (int i = 0; i < dim / 2; i++) out[i] = (float)(1.0 / pow(base, (double)(2 * i) / dim));
    if (yarn && c->original_max_position_embeddings > 0) {
        double osl = (double)c->original_max_position_embeddings;
        double lo = floor(dim * log(osl / (c->beta_fast * 2 * M_PI)) / (2 * log(base)));
        double hi = ceil(dim * log(osl / (c->beta_slow * 2 * M_PI)) / (2 * log(base)));
        if (lo < 0) lo = 0;
        if (hi > dim - 1) hi = dim - 1;
        if (lo == hi) hi += 0.001;
        for (int i = 0; i < dim / 2; i++) {
            float ramp = (float)(((double)i - lo) / (hi - lo));
            if (ramp < 0) ramp = 0;
            if (ramp > 1) ramp = 1;
            float smooth = 1.0f - ramp;
            out[i] = out[i] / (float)c->rope_factor * (1.0f - smooth) + out[i] * smooth;
        }
    }
}

/* What every shard knows of every block, owned or not: the state layout
   and the routing of a pass read it. */
static void block_meta(const dsv4_block_w *b, gblock *g)
{
    g->layer_id = b->layer_id;
    g->is_mtp = b->is_mtp;
    g->ratio = b->attn.compress_ratio;
    g->overlap = g->ratio == 4;
    g->hash = b->ffn.hash;
}

static int up_block(dsv4_engine *e, const dsv4_block_w *b, gblock *g, char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    int rc = 0;
    block_meta(b, g);
#define T_(t, v) if (!rc) rc = up_tensor(e, &(t), &(v), err, errlen)
#define W_(w, v) if (!rc) rc = up_weight(e, &(w), &(v), err, errlen)
    T_(b->attn_norm, g->attn_norm); T_(b->ffn_norm, g->ffn_norm);
    if (!rc) rc = up_hc(e, &b->hc_attn, &g->hc_attn, err, errlen);
    if (!rc) rc = up_hc(e, &b->hc_ffn, &g->hc_ffn, err, errlen);
    T_(b->attn.attn_sink, g->attn_sink); T_(b->attn.q_norm, g->q_norm); T_(b->attn.kv_norm, g->kv_norm);
    W_(b->attn.wq_a, g->wq_a); W_(b->attn.wq_b, g->wq_b); W_(b->attn.wkv, g->wkv);
    W_(b->attn.wo_a, g->wo_a); W_(b->attn.wo_b, g->wo_b);
    if (b->attn.has_compressor) {
        W_(b->attn.compressor.wkv, g->c_wkv); W_(b->attn.compressor.wgate, g->c_wgate);
        T_(b->attn.compressor.ape, g->c_ape); T_(b->attn.compressor.norm, g->c_norm);
    }
    if (b->attn.has_indexer) {
        W_(b->attn.indexer.wq_b, g->i_wq_b); W_(b->attn.indexer.weights_proj, g->i_wproj);
        W_(b->attn.indexer.compressor.wkv, g->ic_wkv); W_(b->attn.indexer.compressor.wgate, g->ic_wgate);
        T_(b->attn.indexer.compressor.ape, g->ic_ape); T_(b->attn.indexer.compressor.norm, g->ic_norm);
    }
    W_(b->ffn.gate, g->gate);
    T_(b->ffn.gate_bias, g->gate_bias);
    T_(b->ffn.tid2eid, g->tid2eid);
    if (!rc) rc = up_experts(e, &b->ffn, c->n_routed_experts, g, err, errlen);
    W_(b->ffn.shared.w1, g->sh[0]); W_(b->ffn.shared.w2, g->sh[1]); W_(b->ffn.shared.w3, g->sh[2]);
    if (b->is_mtp) {
        W_(b->e_proj, g->e_proj); W_(b->h_proj, g->h_proj);
        T_(b->enorm, g->enorm); T_(b->hnorm, g->hnorm); T_(b->norm, g->norm);
        if (!rc) rc = up_hc(e, &b->hc_head, &g->hc_head, err, errlen);
    }
#undef T_
#undef W_
    return rc;
}

/* A [vocab][hidden] bf16 table in row slices that each fit one binding. */
static int up_vocab(dsv4_engine *e, const dsv4_tensor *t, vkview *out, char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    uint64_t row_bytes = (uint64_t)c->hidden_size * 2;
    uint64_t rows = e->rt.max_range / row_bytes;
    if (rows > (uint64_t)c->vocab_size) rows = (uint64_t)c->vocab_size;
    if (rows > 64) rows -= rows % 64;
    const char *lim = getenv("DSV4_VSLICE_ROWS"); /* tests: force several slices */
    if (lim && atoi(lim) > 0 && (uint64_t)atoi(lim) < rows) rows = (uint64_t)atoi(lim);
    uint64_t n = (c->vocab_size + rows - 1) / rows;
    if (rows == 0 || n > DSV4_MAX_VSLICES) {
        snprintf(err, errlen, "%s: %d rows need more than %d slices of maxStorageBufferRange", t->name,
                 c->vocab_size, DSV4_MAX_VSLICES);
        return DSV4_ENOMEM;
    }
    e->n_vslices = (int)n;
    e->vslice_rows = (uint32_t)rows;
    for (uint64_t i = 0; i < n; i++) {
        dsv4_tensor part = *t;
        uint64_t r0 = i * rows, r1 = r0 + rows < (uint64_t)c->vocab_size ? r0 + rows : (uint64_t)c->vocab_size;
        part.data = t->data ? t->data + r0 * row_bytes : NULL; /* NULL: synthetic (bench.h) */
        part.nbytes = (r1 - r0) * row_bytes;
        int rc = up_tensor(e, &part, &out[i], err, errlen);
        if (rc) return rc;
    }
    return 0;
}

static void record_embed(dsv4_engine *e, vkview X, uint32_t T, uint32_t hc)
{
    const dsv4_config *c = &e->m->cfg;
    for (int i = 0; i < e->n_vslices; i++) {
        uint32_t r0 = (uint32_t)i * e->vslice_rows;
        pc_embed pe = {(uint32_t)c->hidden_size, hc, r0, e->vslice_rows};
        vkview ve[3] = {e->embed[i], e->s.tok, X};
        vkrt_dispatch(&e->rt, P_EMBED, ve, 3, &pe, sizeof pe, T, 1, 1);
    }
}

int fwd_upload_weights(dsv4_engine *e, char *err, size_t errlen)
{
    const dsv4_model *m = e->m;
    const dsv4_config *c = &m->cfg;
    int rc = arena_alloc(e, 256, "dummy", &e->dummy, err, errlen);
    if (rc) return rc;
    e->n_blocks = dsv4_config_n_blocks(c);
    e->blk = calloc((size_t)e->n_blocks, sizeof *e->blk);
    if (!e->blk) return DSV4_ENOMEM;
    /* a shard uploads only what it owns (engine/shards.c) */
    for (int i = 0; i < e->n_blocks && !rc; i++) {
        const dsv4_block_w *bw = i < c->num_hidden_layers ? &m->layers[i] : &m->mtp[i - c->num_hidden_layers];
        int own = i < c->num_hidden_layers ? i >= e->own_b0 && i < e->own_b1 : e->own_mtp;
        if (own) rc = up_block(e, bw, &e->blk[i], err, errlen);
        else block_meta(bw, &e->blk[i]);
    }
    if (!rc && e->own_embed) rc = up_vocab(e, &m->embed, e->embed, err, errlen);
    if (!rc && e->own_head) rc = up_vocab(e, &m->head, e->head, err, errlen);
    if (!rc && e->own_head) rc = up_tensor(e, &m->norm, &e->norm, err, errlen);
    if (!rc && e->own_head) rc = up_hc(e, &m->hc_head, &e->hc_head, err, errlen);
    float fr[2][512];
    if (c->qk_rope_head_dim > 1024 || c->qk_rope_head_dim % 2) {
        snprintf(err, errlen, "config.json: qk_rope_head_dim %d not supported", c->qk_rope_head_dim);
        return DSV4_EINVAL;
    }
    rope_freqs(c, 0, fr[0]);
    rope_freqs(c, c->rope_scaling_yarn, fr[1]);
    for (int i = 0; i < 2 && !rc; i++) {
        rc = arena_alloc(e, 2048, "rope", &e->freq[i], err, errlen);
        if (!rc) rc = vkrt_upload(&e->rt, e->freq[i], fr[i], sizeof fr[i], err, errlen);
    }
    return rc;
}

/* ------------------------------------------------------------ scratch */

static int sbuf(dsv4_engine *e, vkview *v, uint64_t bytes, char *err, size_t errlen)
{
    fscratch *s = &e->s;
    if (s->nbufs >= 64) {
        snprintf(err, errlen, "engine: too many scratch buffers");
        return DSV4_ENOMEM;
    }
    if (bytes > e->rt.max_range) {
        snprintf(err, errlen, "engine: scratch of %llu bytes exceeds maxStorageBufferRange (lower the chunk)",
                 (unsigned long long)bytes);
        return DSV4_ENOMEM;
    }
    int rc = vkbuf_create(&e->rt, bytes, 1, &s->bufs[s->nbufs], err, errlen);
    if (rc) return rc;
    *v = vkbuf_view(&s->bufs[s->nbufs], 0, s->bufs[s->nbufs].size);
    s->nbufs++;
    return 0;
}

int fwd_alloc_scratch(dsv4_engine *e, char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint64_t C = (uint64_t)e->chunk, D = c->hidden_size, hc = c->hc_mult, H = c->num_attention_heads,
             hd = c->head_dim, ql = c->q_lora_rank, ihd = c->index_head_dim, inh = c->index_n_heads,
             E = c->n_routed_experts, k = c->num_experts_per_tok, inter = c->moe_intermediate_size,
             GR = (uint64_t)c->o_groups * c->o_lora_rank, V = c->vocab_size, f = 4;
    uint64_t hdmax = hd > ihd ? hd : ihd;
    e->head_rows = (int)(e->rt.max_range / (V * f));
    if (e->head_rows > e->chunk) e->head_rows = e->chunk;
    if (e->head_rows < 1) {
        snprintf(err, errlen, "engine: one row of logits exceeds maxStorageBufferRange");
        return DSV4_ENOMEM;
    }
    s->route_tiles_max = cdiv(C * k, 32) + (uint32_t)E;
    uint32_t rbase = 4 + 4 * s->route_tiles_max;
    s->rowmap_off = rbase;
    s->slotpos_off = rbase + (uint32_t)(C * k);
    s->wsort_off = s->slotpos_off + (uint32_t)(C * k);
    s->ebegin_off = s->wsort_off + (uint32_t)(C * k);
    uint64_t route_words = s->ebegin_off + E;
    int rc = 0;
#define S_(v, n) if (!rc) rc = sbuf(e, &s->v, (n) * f, err, errlen)
    S_(xa, C * hc * D); S_(xb, C * hc * D); S_(x2, C * hc * D); S_(hx, C * D); S_(xn, C * D);
    S_(mix, C * (hc + hc * hc)); S_(xq, C * hc * D); S_(qr, C * ql); S_(qrq, C * ql); S_(q, C * H * hd);
    S_(kv, C * hd); S_(ckv, C * 2 * hdmax); S_(csc, C * 2 * hdmax); S_(ikv, C * 2 * ihd); S_(isc, C * 2 * ihd);
    S_(iq, C * inh * ihd); S_(iw, C * inh); S_(idx, C * (uint64_t)(c->index_topk > 0 ? c->index_topk : 1));
    S_(o, C * H * hd); S_(oa, C * GR); S_(oaq, C * GR); S_(ao, C * D); S_(gl, C * E); S_(sel, C * k);
    S_(wgt, C * k); S_(route, route_words); S_(h1, C * k * inter); S_(h3, C * k * inter);
    S_(hs, C * k * inter); S_(hsq, C * k * inter); S_(ys, C * k * D); S_(s1, C * inter); S_(s3, C * inter);
    S_(ss, C * inter); S_(ssq, C * inter); S_(sy, C * D); S_(hy, C * D); S_(hn, C * D);
    S_(logits, (uint64_t)(e->own_head ? e->head_rows : 1) * V); S_(e1, C * D); S_(e2, C * hc * D);
    S_(hcpart, C * HC_SPLITS_MAX * (HC_MAXMIX + 1) * 2); /* doubles */
#undef S_
    if (!rc && (2 + hc) * hc > HC_MAXMIX) {
        snprintf(err, errlen, "engine: hc_mult %llu needs more than the %u hyper-connection mixes the shaders hold",
                 (unsigned long long)hc, HC_MAXMIX);
        return DSV4_EINVAL;
    }
    if (rc) return rc;
    /* index_topk's lists, where some layer is CSA and the shaders are there */
    int csa = 0;
    for (int b = 0; b < e->n_blocks; b++) csa |= e->blk[b].ratio == 4;
    s->icand_ld = 0;
    if (csa && c->index_topk > 0 && vkrt_has_pipe(&e->rt, P_INDEX_TOPK) && vkrt_has_pipe(&e->rt, P_INDEX_TOPK_MERGE)) {
        uint64_t cap = itopk_cap((uint32_t)c->index_topk), limit = ICAND_MAX_BYTES;
        if (limit > e->rt.max_range) limit = e->rt.max_range;
        uint64_t ld = limit / (C * cap * 8);
        if (ld > ICAND_ROW_RANGES) ld = ICAND_ROW_RANGES;
        if (ld >= 1) {
            s->icand_cap = (uint32_t)cap;
            s->icand_ld = (uint32_t)ld;
            rc = sbuf(e, &s->icand, C * ld * cap * 8, err, errlen);
            if (!rc) rc = sbuf(e, &s->icnt, C * ld * 4, err, errlen);
            if (rc) return rc;
        }
    }
    s->io_tok = 0;
    s->io_pos = align_up(C * 4, 256);
    s->io_logits = s->io_pos + align_up(C * 4, 256);
    s->io_size = s->io_logits + (e->own_head ? C : 1) * V * f; /* logits: the head's shard only */
    rc = vkbuf_create(&e->rt, s->io_size, 0, &s->io, err, errlen);
    if (rc) return rc;
    s->tok = vkbuf_view(&s->io, s->io_tok, C * 4);
    s->pos = vkbuf_view(&s->io, s->io_pos, C * 4);
    return 0;
}

void fwd_free(dsv4_engine *e)
{
    fscratch *s = &e->s;
    for (int i = 0; i < s->nbufs; i++) vkbuf_free(&e->rt, &s->bufs[i]);
    vkbuf_free(&e->rt, &s->iscore_buf);
    vkbuf_free(&e->rt, &s->ascore_buf);
    vkbuf_free(&e->rt, &s->dscore_buf);
    vkbuf_free(&e->rt, &s->io);
    for (int i = 0; i < e->n_arenas; i++) vkbuf_free(&e->rt, &e->arenas[i]);
    free(e->blk);
}

/* ------------------------------------------------------------ state */

static void lstate_layout(dsv4_engine *e, int block, int64_t cap_rows, lstate *ls)
{
    const dsv4_config *c = &e->m->cfg;
    const gblock *g = &e->blk[block];
    VkDeviceSize a = e->rt.align, hd = (VkDeviceSize)c->head_dim, ihd = (VkDeviceSize)c->index_head_dim;
    VkDeviceSize off = 0;
    ls->ring_off = off;
    off = align_up(off + (VkDeviceSize)c->sliding_window * hd * 4, a);
    ls->cring_off = off;
    if (g->ratio) {
        VkDeviceSize coff = g->overlap ? 2 : 1;
        off = align_up(off + coff * g->ratio * 2 * coff * hd * 4, a);
    }
    ls->iring_off = off;
    if (g->ratio == 4) off = align_up(off + 8 * 2 * 2 * ihd * 4, a);
    ls->kv_off = off;
    if (g->ratio) off = align_up(off + (VkDeviceSize)cap_rows * hd * 4, a);
    ls->ikv_off = off;
    if (g->ratio == 4) off = align_up(off + (VkDeviceSize)cap_rows * ihd * 4, a);
    ls->end = off;
    ls->cap_rows = cap_rows;
}

int lstate_init(dsv4_engine *e, lstate *ls, int block, int64_t cap_tokens, char *err, size_t errlen)
{
    const gblock *g = &e->blk[block];
    int64_t rows = g->ratio ? (cap_tokens + g->ratio - 1) / g->ratio : 0;
    if (g->ratio && rows < 16) rows = 16;
    memset(ls, 0, sizeof *ls);
    lstate_layout(e, block, rows, ls);
    int rc = vkbuf_create(&e->rt, ls->end, 1, &ls->buf, err, errlen);
    if (rc) return rc;
    /* rings start empty: scores of never-written slots are never read (only
       positions >= 0 are pooled), so zero is enough */
    rc = vkrt_begin(&e->rt, err, errlen);
    if (rc) return rc;
    vkrt_fill(&e->rt, vkbuf_view(&ls->buf, 0, ls->buf.size), ls->buf.size, 0);
    return vkrt_submit_wait(&e->rt, err, errlen);
}

/* Lets go of a reference to a shared buffer; the last one frees it. */
static void lshared_release(dsv4_engine *e, lshared *sh)
{
    if (sh && --sh->refs == 0) {
        vkbuf_free(&e->rt, &sh->buf);
        free(sh);
    }
}

/* Lets go of ls's own buffer: freed now, unless forks still read it. */
static void lstate_release_own(dsv4_engine *e, lstate *ls)
{
    if (ls->held) lshared_release(e, ls->held);
    else vkbuf_free(&e->rt, &ls->buf);
    ls->held = NULL;
    memset(&ls->buf, 0, sizeof ls->buf);
}

void lstate_free(dsv4_engine *e, lstate *ls)
{
    if (!ls) return;
    lstate_release_own(e, ls);
    lshared_release(e, ls->base);
    ls->base = NULL;
    ls->base_rows = 0;
}

int lstate_rows(const dsv4_engine *e, const lstate *ls, int which, int64_t r0, int64_t r1, vkview out[2])
{
    const dsv4_config *c = &e->m->cfg;
    VkDeviceSize d4 = (VkDeviceSize)(which ? c->index_head_dim : c->head_dim) * 4;
    int n = 0;
    int64_t b1 = r1 < ls->base_rows ? r1 : ls->base_rows;
    if (r0 < b1)
        out[n++] = vkbuf_view(&ls->base->buf, (which ? ls->base_ikv_off : ls->base_kv_off) + (VkDeviceSize)r0 * d4,
                              (VkDeviceSize)(b1 - r0) * d4);
    int64_t o0 = r0 > ls->base_rows ? r0 : ls->base_rows;
    if (o0 < r1)
        out[n++] = vkbuf_view(&ls->buf, (which ? ls->ikv_off : ls->kv_off) + (VkDeviceSize)(o0 - ls->base_rows) * d4,
                              (VkDeviceSize)(r1 - o0) * d4);
    return n;
}

/* Copies the rings (everything before kv_off, laid out alike in every
 * state of a block) and the first n own rows of each compressed cache from
 * src into dst, recorded into the open command buffer. */
static void lstate_copy_into(dsv4_engine *e, const gblock *g, const lstate *src, const lstate *dst, int64_t n)
{
    const dsv4_config *c = &e->m->cfg;
    vkrt_copy(&e->rt, vkbuf_view(&src->buf, 0, src->kv_off), vkbuf_view(&dst->buf, 0, src->kv_off), src->kv_off);
    if (!g->ratio || n <= 0) return;
    VkDeviceSize kvb = (VkDeviceSize)n * c->head_dim * 4;
    vkrt_copy(&e->rt, vkbuf_view(&src->buf, src->kv_off, kvb), vkbuf_view(&dst->buf, dst->kv_off, kvb), kvb);
    if (g->ratio == 4) {
        VkDeviceSize ib = (VkDeviceSize)n * c->index_head_dim * 4;
        vkrt_copy(&e->rt, vkbuf_view(&src->buf, src->ikv_off, ib), vkbuf_view(&dst->buf, dst->ikv_off, ib), ib);
    }
}

int lstate_fork(dsv4_engine *e, lstate *dst, lstate *src, int block, int64_t pos, char *err, size_t errlen)
{
    const gblock *g = &e->blk[block];
    int64_t rows = g->ratio ? pos / g->ratio : 0; /* complete rows: written once, never again */
    int rc;
    memset(dst, 0, sizeof *dst);
    if (e->fork_copy || rows == 0) { /* the whole buffer (nothing to share) */
        *dst = *src;
        dst->held = NULL;
        memset(&dst->buf, 0, sizeof dst->buf);
        if (dst->base) dst->base->refs++;
        rc = vkbuf_create(&e->rt, src->buf.size, 1, &dst->buf, err, errlen);
        if (rc) goto fail;
        rc = vkrt_begin(&e->rt, err, errlen);
        if (rc) goto fail;
        vkrt_copy(&e->rt, vkbuf_view(&src->buf, 0, src->buf.size), vkbuf_view(&dst->buf, 0, dst->buf.size),
                  src->buf.size);
        rc = vkrt_submit_wait(&e->rt, err, errlen);
        if (rc) goto fail;
        return 0;
    }
    /* src's base if it reads one (and a copy of its few own rows: the
       shaders read two buffers, not a chain), else src's own buffer */
    int64_t ncopy = 0;
    if (src->base_rows > 0) {
        dst->base = src->base;
        dst->base_rows = src->base_rows;
        dst->base_kv_off = src->base_kv_off;
        dst->base_ikv_off = src->base_ikv_off;
        ncopy = rows - src->base_rows;
    } else {
        if (!src->held) {
            src->held = calloc(1, sizeof *src->held);
            if (!src->held) {
                snprintf(err, errlen, "dsv4_seq_fork: out of memory");
                return DSV4_ENOMEM;
            }
            src->held->buf = src->buf;
            src->held->refs = 1;
        }
        dst->base = src->held;
        dst->base_rows = rows;
        dst->base_kv_off = src->kv_off;
        dst->base_ikv_off = src->ikv_off;
    }
    dst->base->refs++;
    lstate_layout(e, block, ncopy + 1 > 16 ? ncopy + 1 : 16, dst);
    rc = vkbuf_create(&e->rt, dst->end, 1, &dst->buf, err, errlen);
    if (rc) goto fail;
    rc = vkrt_begin(&e->rt, err, errlen);
    if (rc) goto fail;
    vkrt_fill(&e->rt, vkbuf_view(&dst->buf, 0, dst->buf.size), dst->buf.size, 0);
    lstate_copy_into(e, g, src, dst, ncopy);
    rc = vkrt_submit_wait(&e->rt, err, errlen);
    if (rc) goto fail;
    return 0;
fail:
    lstate_free(e, dst);
    return rc;
}

/* Grows a block's state (by doubling) to hold the compressed rows of
 * `tokens` (its own rows: those past base_rows). The old buffer is let go
 * of: freed, unless forks still read its rows. */
int lstate_reserve(dsv4_engine *e, lstate *ls, int block, int64_t tokens, char *err, size_t errlen)
{
    const gblock *g = &e->blk[block];
    if (!g->ratio) return 0;
    int64_t need = tokens / g->ratio + 1 - ls->base_rows;
    if (need <= ls->cap_rows) return 0;
    int64_t cap = ls->cap_rows * 2;
    if (cap < need) cap = need;
    lstate nl = *ls;
    nl.held = NULL;
    memset(&nl.buf, 0, sizeof nl.buf);
    lstate_layout(e, block, cap, &nl);
    int rc = vkbuf_create(&e->rt, nl.end, 1, &nl.buf, err, errlen);
    if (rc) return rc;
    rc = vkrt_begin(&e->rt, err, errlen);
    if (rc) goto fail;
    vkrt_fill(&e->rt, vkbuf_view(&nl.buf, 0, nl.buf.size), nl.buf.size, 0);
    lstate_copy_into(e, g, ls, &nl, ls->cap_rows);
    rc = vkrt_submit_wait(&e->rt, err, errlen);
    if (rc) goto fail;
    lstate_release_own(e, ls);
    *ls = nl;
    return 0;
fail:
    vkbuf_free(&e->rt, &nl.buf);
    return rc;
}

/* ------------------------------------------------------------ recording */

/* The tensor-core twin (shaders/gemm_cm.comp, or gemm_cm2.comp with
 * e->gemm_cm2) of tiled GEMM pipe p when the device has it and the operands
 * meet its alignment (K a multiple of its K slices, X rows in whole vec4s),
 * else -1. */
static int cm_pipe(dsv4_engine *e, vk_pipe_id p, uint32_t K, uint32_t ldx, uint32_t x_off)
{
    int cm = e->gemm_cm2 ? vkrt_cm2_twin(p) : vkrt_cm_twin(p);
    if (cm < 0 || !e->rt.coopmat || !e->rt.pipe[cm]) return -1;
    return K % 64 == 0 && ldx % 4 == 0 && x_off % 4 == 0 ? cm : -1;
}

/* The SMALL variants read 16 weight bytes and X in vec4s at a time. */
static int small_ok(uint32_t K, uint32_t ldx, uint32_t x_off) { return K % 32 == 0 && ldx % 4 == 0 && x_off % 4 == 0; }

/* The first SMALL pipe (SMALL, or SMALL2 with e->gemm_small2 where the device
 * has it) and its workgroups across N, for dense and expert GEMMs alike. */
static int small_first(const dsv4_engine *e)
{
    return e->gemm_small2 && e->rt.pipe[P_GEMM_SMALL2_FIRST] ? P_GEMM_SMALL2_FIRST : P_GEMM_SMALL_FIRST;
}

static uint32_t small_gx(const dsv4_engine *e, uint32_t N)
{
    return cdiv(N, small_first(e) == P_GEMM_SMALL2_FIRST ? GEMM_SMALL2_COLS : GEMM_SMALL_COLS);
}

static void gemm(dsv4_engine *e, const gw *w, vkview X, uint32_t ldx, uint32_t x_off, vkview Y, uint32_t ldy,
                 uint32_t y_off, uint32_t M, uint32_t flags, uint32_t w_row0, uint32_t N)
{
    vk_pipe_id p = w->q == DSV4_WQ_FP8 ? P_GEMM_FP8 : w->q == DSV4_WQ_FP4 ? P_GEMM_FP4
                 : w->q == DSV4_WQ_F32 ? P_GEMM_F32 : P_GEMM_BF16;
    pc_gemm pc = {M, N ? N : w->out, w->in, ldx, ldy, x_off, y_off, w_row0, flags, w->s_cols, 0, 0, 0, 0, 0, 0};
    vkview v[5] = {X, w->w, w->s, Y, e->dummy};
    int cm = cm_pipe(e, p, pc.K, ldx, x_off);
    /* With tensor cores the SMALL variants win only for the fewest rows: their
       cost grows with every row, the tensor-core tile's barely
       (docs/benchmarks.md). SERIAL and the portable tiled kernel both add the
       products in index order, so exact mode (and CPU drivers) gets the same
       bits for any row count; SMALL (split over K) and the tensor cores each
       add in their own order. */
    if ((e->cpu_device || e->exact) && M <= (uint32_t)e->small_rows)
        vkrt_dispatch(&e->rt, p + P_GEMM_SERIAL_FIRST, v, 5, &pc, sizeof pc, cdiv(pc.N, 64), cdiv(M, 8), 1);
    else if (!e->exact && M <= (uint32_t)e->small_rows && small_ok(pc.K, ldx, x_off) && !(cm >= 0 && M > CM_MIN_ROWS))
        vkrt_dispatch(&e->rt, (vk_pipe_id)(p + small_first(e)), v, 5, &pc, sizeof pc, small_gx(e, pc.N),
                      cdiv(M, GEMM_SMALL_ROWS), 1);
    else if (!e->exact && cm >= 0)
        vkrt_dispatch(&e->rt, (vk_pipe_id)cm, v, 5, &pc, sizeof pc, cdiv(pc.N, 128), cdiv(M, 64), 1);
    else
        vkrt_dispatch(&e->rt, p, v, 5, &pc, sizeof pc, cdiv(pc.N, 64), cdiv(M, 64), 1);
}

/* FP8/FP4 weights: quantize the activations first (linear() in model.py). */
static void qlinear(dsv4_engine *e, const gw *w, vkview X, vkview Xq, uint32_t M, vkview Y, uint32_t flags)
{
    if (w->q == DSV4_WQ_FP8 || w->q == DSV4_WQ_FP4) {
        pc_aq a = {M, w->in, w->in, 0, 128, 0};
        vkview v[2] = {X, Xq};
        vkrt_dispatch(&e->rt, P_ACT_QUANT, v, 2, &a, sizeof a, w->in / 128, M, 1);
        gemm(e, w, Xq, w->in, 0, Y, w->out, 0, M, flags, 0, 0);
    } else {
        gemm(e, w, X, w->in, 0, Y, w->out, 0, M, flags, 0, 0);
    }
}

static void act_quant(dsv4_engine *e, vkview X, vkview Y, uint32_t rows, uint32_t cols)
{
    pc_aq a = {rows, cols, cols, 0, 128, 0};
    vkview v[2] = {X, Y};
    vkrt_dispatch(&e->rt, P_ACT_QUANT, v, 2, &a, sizeof a, cols / 128, rows, 1);
}

static void rmsnorm(dsv4_engine *e, vkview X, vkview W, vkview Y, uint32_t rows, uint32_t D)
{
    pc_rms pc = {D, D, D, 0, 0, (float)e->m->cfg.rms_norm_eps};
    vkview v[3] = {X, W, Y};
    vkrt_dispatch(&e->rt, P_RMSNORM, v, 3, &pc, sizeof pc, rows, 1, 1);
}

/* rmsnorm into Y and, in the same dispatch, act_quant's FP8 quant-dequant of
   the result into YQ (YQ may be X); two dispatches where D does not fit
   rmsnorm_q (a multiple of 128, at most 64 blocks). */
static void rmsnorm_quant(dsv4_engine *e, vkview X, vkview W, vkview Y, vkview YQ, uint32_t rows, uint32_t D)
{
    if (D % 128 || D > 64 * 128) {
        rmsnorm(e, X, W, Y, rows, D);
        act_quant(e, Y, YQ, rows, D);
        return;
    }
    pc_rms pc = {D, D, D, 0, 0, (float)e->m->cfg.rms_norm_eps};
    vkview v[4] = {X, W, Y, YQ};
    vkrt_dispatch(&e->rt, P_RMSNORM_Q, v, 4, &pc, sizeof pc, rows, 1, 1);
}

/* Expert.forward's silu(w1 x) * (w3 x) (times the routing weights with
   use_w) into H and, with quant, act_quant's FP8 quant-dequant of it into HQ
   (w2's input): one swiglu_q dispatch, which writes HQ only, where inter is
   whole 128-column blocks; else swiglu into H, then act_quant. */
static void swiglu(dsv4_engine *e, vkview G, vkview U, vkview H, vkview HQ, uint32_t rows, int use_w, int quant)
{
    const dsv4_config *c = &e->m->cfg;
    uint32_t inter = (uint32_t)c->moe_intermediate_size;
    pc_swiglu pc = {rows, inter, (uint32_t)use_w, e->s.wsort_off, (float)c->swiglu_limit};
    if (quant && inter % 128 == 0) {
        vkview v[4] = {G, U, e->s.route, HQ};
        vkrt_dispatch(&e->rt, P_SWIGLU_Q, v, 4, &pc, sizeof pc, inter / 128, rows, 1);
        return;
    }
    vkview v[4] = {G, U, e->s.route, H};
    vkrt_dispatch(&e->rt, P_SWIGLU, v, 4, &pc, sizeof pc, rows, 1, 1);
    if (quant) act_quant(e, H, HQ, rows, inter);
}

static void headprep(dsv4_engine *e, vkview X, vkview NW, int yarn, uint32_t D, uint32_t ldx, uint32_t x_off,
                     uint32_t flags, uint32_t rows, uint32_t heads, uint32_t pos_base, uint32_t pos_step)
{
    pc_hp pc = {D, (uint32_t)e->m->cfg.qk_rope_head_dim, ldx, x_off, flags, pos_base, pos_step,
                (float)e->m->cfg.rms_norm_eps};
    vkview v[4] = {X, NW, e->freq[yarn], e->s.pos};
    vkrt_dispatch(&e->rt, P_HEADPREP, v, 4, &pc, sizeof pc, rows, heads, 1);
}

/* hc_mix's slices are a copy's 256 columns: then hc_post and
   moe_combine_post can compute the next hc_pre's products themselves
   (hc_post_mix, moe_combine_post_mix) and that hc_pre skips hc_mix */
static int hc_mix_fusable(const dsv4_engine *e)
{
    const dsv4_config *c = &e->m->cfg;
    return c->hidden_size % 256 == 0 && (uint64_t)hc_splits(e) * 256 == (uint64_t)c->hc_mult * c->hidden_size;
}

/* hc_mix of X into hcpart, unless mixed (the dispatch that wrote X did it) */
static void hc_mix(dsv4_engine *e, const ghc *h, vkview X, uint32_t T, int head, int mixed)
{
    const dsv4_config *c = &e->m->cfg;
    uint32_t D = (uint32_t)c->hidden_size, hc = (uint32_t)c->hc_mult;
    if (mixed) return;
    pc_hcmix pm = {D, hc, hc * D, hc_splits(e)};
    vkview vm[3] = {X, h->fn, e->s.hcpart};
    vkrt_dispatch(&e->rt, head ? P_HC_MIX_HEAD : P_HC_MIX, vm, 3, &pm, sizeof pm, T, hc_splits(e), 1);
}

/* hc_pre's push constants (hc_pre, hc_head and their NORM variants) */
static pc_hcpre hcpre_push(const dsv4_engine *e)
{
    const dsv4_config *c = &e->m->cfg;
    uint32_t D = (uint32_t)c->hidden_size, hc = (uint32_t)c->hc_mult;
    pc_hcpre pc = {D, hc, (uint32_t)c->hc_sinkhorn_iters, hc * D, (float)c->rms_norm_eps, (float)c->hc_eps,
                   hc_splits(e)};
    return pc;
}

static void hc_pre(dsv4_engine *e, const ghc *h, vkview X, vkview Y, vkview MIX, uint32_t T, int head, int mixed)
{
    hc_mix(e, h, X, T, head, mixed);
    pc_hcpre pc = hcpre_push(e);
    vkview v[7] = {X, h->fn, h->base, h->scale, Y, MIX, e->s.hcpart};
    vkrt_dispatch(&e->rt, head ? P_HC_HEAD : P_HC_PRE, v, 7, &pc, sizeof pc, T, 1, 1);
}

/* hc_pre, then the RMSNorm of its result with weight NW into Y (and with
   quant the FP8 quant-dequant into YQ, as rmsnorm_quant): one dispatch after
   hc_mix where the row fits hc_pre_norm_q / hc_head_norm, else hc_pre into
   HX and the norm apart. */
static void hc_pre_norm(dsv4_engine *e, const ghc *h, vkview X, vkview HX, vkview NW, vkview Y, vkview YQ,
                        vkview MIX, uint32_t T, int head, int mixed)
{
    uint32_t D = (uint32_t)e->m->cfg.hidden_size;
    vk_pipe_id pf = head ? P_HC_HEAD_NORM : P_HC_PRE_NORM_Q;
    if (D > HC_NORM_MAXD || (!head && (D % 128 || D > 64 * 128)) || !vkrt_has_pipe(&e->rt, pf)) {
        hc_pre(e, h, X, HX, MIX, T, head, mixed);
        vkrt_op(&e->rt, "norm");
        if (head) rmsnorm(e, HX, NW, Y, T, D);
        else rmsnorm_quant(e, HX, NW, Y, YQ, T, D);
        return;
    }
    hc_mix(e, h, X, T, head, mixed);
    pc_hcpre pc = hcpre_push(e);
    vkview v[9] = {X, h->fn, h->base, h->scale, Y, MIX, e->s.hcpart, NW, YQ};
    vkrt_dispatch(&e->rt, pf, v, head ? 8 : 9, &pc, sizeof pc, T, 1, 1);
}

/* hc_post into O; with next (and hc_mix_fusable) also next's hc_mix of O
   (hc_post_mix): returns whether it did */
static int hc_post(dsv4_engine *e, vkview X, vkview RES, vkview MIX, vkview O, uint32_t T, const ghc *next)
{
    const dsv4_config *c = &e->m->cfg;
    pc_hcpost pc = {(uint32_t)c->hidden_size, (uint32_t)c->hc_mult};
    int mix = next && hc_mix_fusable(e);
    vkview v[6] = {X, RES, MIX, O, mix ? next->fn : e->dummy, e->s.hcpart};
    vkrt_dispatch(&e->rt, mix ? P_HC_POST_MIX : P_HC_POST, v, mix ? 6 : 4, &pc, sizeof pc, T,
                  cdiv(c->hidden_size, 256), (uint32_t)c->hc_mult);
    return mix;
}

static void ring_write(dsv4_engine *e, vkview SRC, vkview RING, vkview APE, uint32_t width, uint32_t lds,
                       uint32_t ldr, uint32_t col_off, uint32_t L, const fseg *sg, int use_ape, uint32_t ratio)
{
    int64_t p1 = sg->p0 + sg->n;
    int64_t q0 = p1 - L > sg->p0 ? p1 - L : sg->p0;
    pc_ring pc = {width, lds, ldr, col_off, L, (uint32_t)q0, (uint32_t)sg->p0, sg->t0, (uint32_t)use_ape, ratio};
    vkview v[3] = {SRC, RING, APE};
    vkrt_dispatch(&e->rt, P_RING_WRITE, v, 3, &pc, sizeof pc, (uint32_t)(p1 - q0), 1, 1);
}

/* One compressor (attention's or the indexer's) over a segment: new entries
 * pooled into the cache, normalised, rotated and quantized, then the ring.
 * part 0: the pooling, which reads the ring; part 1: the rest (the pooled
 * rows and the ring are disjoint, so its dispatches are independent); -1: both. */
static void compressor(dsv4_engine *e, const fseg *sg, lstate *ls, uint32_t ratio, int overlap, uint32_t d,
                       vkview KV, vkview SC, VkDeviceSize ring_off, VkDeviceSize cache_off, vkview ape,
                       vkview norm, int rotate, int part)
{
    vkbuf *b = &ls->buf;
    uint32_t coff = overlap ? 2 : 1, w = coff * d, L = coff * ratio;
    int64_t p1 = sg->p0 + sg->n;
    uint32_t i0 = (uint32_t)(sg->p0 / ratio), i1 = (uint32_t)(p1 / ratio);
    vkview ring = vkbuf_view(b, ring_off, (VkDeviceSize)L * 2 * w * 4);
    /* entries i >= i0 are past the fork's shared rows (i0 >= base_rows: the
       base holds only rows complete at the fork): own row i - base_rows */
    vkview cache = vkbuf_view(b, cache_off, (VkDeviceSize)ls->cap_rows * d * 4);
    uint32_t base = (uint32_t)ls->base_rows;
    if (i1 > i0 && part <= 0) {
        pc_comp pc = {d, ratio, (uint32_t)overlap, i0, (uint32_t)sg->p0, sg->t0, d, base};
        vkview v[5] = {KV, SC, ring, ape, cache};
        vkrt_dispatch(&e->rt, P_COMPRESS, v, 5, &pc, sizeof pc, i1 - i0, cdiv(d, 64), 1);
    }
    if (part == 0) return;
    if (i1 > i0) {
        uint32_t fl = F_RMS_W | F_ROPE | (rotate ? F_HADAMARD | F_FP4 : F_FP8_NOPE);
        headprep(e, cache, norm, 1, d, d, (i0 - base) * d, fl, i1 - i0, 1, i0 * ratio, ratio);
    }
    ring_write(e, KV, ring, ape, w, w, 2 * w, 0, L, sg, 0, ratio);
    ring_write(e, SC, ring, ape, w, w, 2 * w, w, L, sg, 1, ratio);
}

/* The attention variant for one segment of block g. GPUs: attn_tile (8
 * heads of a token share each staged key tile) where head_dim fits it, or
 * for segments of few tokens (decode) attn_dec (P_ATTN_DEC_SCORE: three
 * dispatches spread over (key, head) and (column, head) pairs; attn_direct
 * with DSV4_ATTN_DEC=0 or where allow_dec is 0: no scratch for it in this
 * pass), else attn. Outside exact mode, prefill segments on devices with
 * cooperative matrices run attn_cm (tensor cores; the variant of 16, 32 or
 * 64 heads per workgroup that covers the heads with the fewest workgroups),
 * or attn_fast where DSV4_ATTN_FAST=1 asks for it; both sum in their own
 * order, so results then depend on the segment sizes (docs/engine.md).
 * attn_fast is not the default without cooperative matrices: on the H200 it
 * failed one golden check (case b's decode top-1 0.50 < 0.60 over 6 tokens)
 * that attn_tile and attn_cm pass. CPU drivers: attn_dec only when
 * DSV4_ATTN_DEC=1 (tests), else attn_serial (barrier-free: fastest there)
 * while its loops fit CPU_LOOP_BUDGET, else attn_tile_s (about 25 loop iterations per
 * key at head_dim 192 instead of ~600), else attn, else -1: the segment needs
 * more than the driver runs, which fwd_run reports. All variants but attn_cm
 * and attn_fast sum in the same order, so the choice among them never
 * changes a result (tests/test_vk_ops.c
 * checks the bits). Counts are for the segment's last token, which sees the
 * most keys. */
static int attn_variant_x(const dsv4_engine *e, const gblock *g, const fseg *sg, int allow_dec)
{
    const dsv4_config *c = &e->m->cfg;
    uint64_t D = (uint64_t)c->head_dim;
    int tile = D % 4 ? -1 : D <= 256 && vkrt_has_pipe(&e->rt, P_ATTN_TILE_S) ? P_ATTN_TILE_S
             : D <= 512 && vkrt_has_pipe(&e->rt, P_ATTN_TILE) ? P_ATTN_TILE : -1;
    int dec_ok = allow_dec && D % 16 == 0 && D <= 512 && vkrt_has_pipe(&e->rt, P_ATTN_DEC_SCORE);
    if (!e->cpu_device) {
        if (!e->exact && e->attn_fast && sg->n >= e->attn_direct_n && D <= 512) {
            /* the fewest heads per workgroup that cover H, else the largest the device has */
            uint32_t H = (uint32_t)c->num_attention_heads;
            int cm = H > 32 ? P_ATTN_CM64 : H > 16 ? P_ATTN_CM32 : P_ATTN_CM;
            while (cm > P_ATTN_CM && !vkrt_has_pipe(&e->rt, (vk_pipe_id)cm)) cm--;
            if (e->attn_fast > 1 && D % 64 == 0 && vkrt_has_pipe(&e->rt, (vk_pipe_id)cm)) return cm;
            if (e->attn_fast == 1 && D % 8 == 0 && vkrt_has_pipe(&e->rt, P_ATTN_FAST)) return P_ATTN_FAST;
        }
        if (tile < 0) return P_ATTN;
        /* few tokens (decode): attn_tile would run n x H/8 workgroups;
           attn_dec runs n x (keys / 32) x H/8 for the scores and n x
           D/64 x H/4 for the value sums (the direct form n x H, each
           with a chain of keys / 64 x D multiply-adds) */
        if (sg->n >= e->attn_direct_n || D % 16) return tile;
        return e->attn_dec != 0 && dec_ok ? P_ATTN_DEC_SCORE : P_ATTN_DIRECT;
    }
    /* (attn_dec's loops run about D/16 iterations per key and head pair, or
       one per key: within the budget at any length) */
    if (e->attn_dec == 1 && dec_ok && sg->n < e->attn_direct_n) return P_ATTN_DEC_SCORE;
    uint64_t win = (uint64_t)c->sliding_window, p1 = (uint64_t)(sg->p0 + sg->n);
    uint64_t topk = c->index_topk > 0 ? (uint64_t)c->index_topk : 0, nc = 0, vis = 0;
    if (g->ratio == 4) {
        nc = topk;
        vis = p1 / 4 < topk ? p1 / 4 : topk;
    } else if (g->ratio) {
        nc = vis = p1 / (uint64_t)g->ratio;
    }
    uint64_t nk = win + nc, valid = (p1 < win ? p1 : win) + vis;
    uint64_t serial = 2 * D + 2 * nk + valid * (3 * D + 32) + 256;
    if (serial <= CPU_LOOP_BUDGET && !(e->attn_tile_forced && tile >= 0)) return P_ATTN_SERIAL;
    if (tile >= 0) {
        /* attn_tile.comp with HG = 8, KT = 16, 64 threads: per tile of 16
           keys two stagings (16 rows x (D/256 + 1)) and two score passes
           (D/4 x 2 keys), the denominator (16) and the value sum (16 keys x
           float4 column blocks x (8 heads + 1)) */
        uint64_t d4 = D / 4, nc4 = (tile == P_ATTN_TILE ? 128 : 64) / 64, ntile = (nk + 15) / 16;
        uint64_t tiled = d4 / 16 + 16 + ntile * (2 * (16 * (d4 / 64 + 2) + 1 + 3 * d4 + 4) + 16 + 16 * nc4 * 9 + 16) +
                         8 + 8 * nc4 + 256;
        if (tiled <= CPU_LOOP_BUDGET) return tile;
    }
    uint64_t nblk = (nk + 63) / 64, dq = (D + 63) / 64;
    uint64_t wg = dq + nblk * (D + 1) + nblk * (64 + 17 + dq * 64 + 64) + 256;
    return wg <= CPU_LOOP_BUDGET ? P_ATTN : -1;
}

static int attn_variant(const dsv4_engine *e, const gblock *g, const fseg *sg) { return attn_variant_x(e, g, sg, 1); }

static vkview subview(vkview v, VkDeviceSize off, VkDeviceSize size)
{
    v.off += off;
    v.size = size;
    return v;
}

/* The base binding of the shaders that read compressed rows (which 0: the
 * attention cache, 1: the indexer's): rows [0, base_rows) of the fork's
 * shared buffer, or the dummy when the sequence has none (base_rows 0). */
static vkview cache_base(const dsv4_engine *e, const lstate *ls, int which)
{
    vkview v[2];
    if (ls->base_rows == 0 || lstate_rows(e, ls, which, 0, ls->base_rows, v) != 1) return e->dummy;
    return v[0];
}

/* The attention of one segment of block g (its window, ring and compressed
 * entries; idx: the segment's top-k rows) into o. attn_dec runs in two
 * dispatches, the second reading the first's scratch: part -1 records both
 * (the runtime puts a barrier between them), part 0 or 1 only that one
 * (record_segments_phased: the same part of every sequence); the other
 * variants are one dispatch, recorded at part -1 or 0. sc_t0: the
 * segment's first record row in attn_dec's scratch. rope_inv: attn_dec also
 * applies the inverse RoPE to its output (the block then skips that
 * headprep), set only where every segment of the pass runs attn_dec. */
static void seg_attention(dsv4_engine *e, const gblock *g, const fseg *sg, lstate *ls, uint32_t topk, vkview idx,
                          int part, uint32_t sc_t0, int rope_inv)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint32_t H = c->num_attention_heads, hd = c->head_dim, win = c->sliding_window;
    vkview ring = vkbuf_view(&ls->buf, ls->ring_off, (VkDeviceSize)win * hd * 4);
    vkview cache = g->ratio ? vkbuf_view(&ls->buf, ls->kv_off, (VkDeviceSize)ls->cap_rows * hd * 4) : e->dummy;
    vkview base = g->ratio ? cache_base(e, ls, 0) : e->dummy;
    pc_attn pa = {hd, H, win, sg->t0, (uint32_t)sg->p0, (uint32_t)(g->ratio ? g->ratio : 1),
                  g->ratio == 0 ? 0u : g->ratio == 4 ? 2u : 1u, topk, topk, (float)(1.0 / sqrt((double)hd)),
                  sg->n, s->ascore_ld, g->ratio ? (uint32_t)ls->base_rows : 0u};
    /* attn/attn_serial: bindings 0-6 and the base rows last; the tiled
       forms: 0-7 (7 their kept scores) and the base rows last */
    vkview va[9] = {s->q, s->kv, ring, cache, idx, g->attn_sink, s->o,
                    s->ascore_ld ? vkbuf_view(&s->ascore_buf, 0, s->ascore_buf.size) : e->dummy, base};
    vkview vs[8] = {s->q, s->kv, ring, cache, idx, g->attn_sink, s->o, base};
    int av = attn_variant_x(e, g, sg, s->dscore_ld != 0); /* no attn_dec scratch for this pass: the next best */
    if (av == P_ATTN_DEC_SCORE) {
        uint32_t nk = win + (g->ratio == 0 ? 0u : g->ratio == 4 ? topk : (uint32_t)((sg->p0 + sg->n) / g->ratio));
        /* the last binding: the fork's shared base rows (shaders/attn_dec.comp) */
        pc_attnd pd = {hd, H, win, sg->t0, (uint32_t)sg->p0, pa.ratio, pa.mode, topk, topk, pa.scale, sg->n,
                       s->dscore_ld, sc_t0, pa.base_rows, (uint32_t)rope_inv, (uint32_t)c->qk_rope_head_dim};
        vkview vd[10] = {s->q, s->kv, ring, cache, idx, g->attn_sink, s->o,
                         vkbuf_view(&s->dscore_buf, 0, s->dscore_buf.size), base, e->freq[g->ratio ? 1 : 0]};
        if (part <= 0)
            vkrt_dispatch(&e->rt, P_ATTN_DEC_SCORE, vd, 10, &pd, sizeof pd, cdiv(nk, 32), cdiv(H, 8), sg->n);
        if (part < 0 || part == 1)
            vkrt_dispatch(&e->rt, P_ATTN_DEC_VALUE, vd, 10, &pd, sizeof pd, cdiv(hd, 64), cdiv(H, 4), sg->n);
        return;
    }
    if (part > 0) return;
    if (av == P_ATTN_SERIAL) /* barrier-free: what a CPU driver runs fastest */
        vkrt_dispatch(&e->rt, P_ATTN_SERIAL, vs, 8, &pa, sizeof pa, cdiv((uint64_t)sg->n * H, 16), 1, 1);
    else if (av == P_ATTN_TILE || av == P_ATTN_TILE_S)
        vkrt_dispatch(&e->rt, (vk_pipe_id)av, va, 9, &pa, sizeof pa, sg->n, cdiv(H, 8), 1);
    else if (av == P_ATTN_DIRECT)
        vkrt_dispatch(&e->rt, P_ATTN_DIRECT, va, 9, &pa, sizeof pa, sg->n, H, 1);
    else if (av == P_ATTN_FAST || av == P_ATTN_CM || av == P_ATTN_CM32 || av == P_ATTN_CM64) {
        /* attn_fast, attn_cm: bindings 0-6 and the base rows last, as attn */
        uint32_t hg = av == P_ATTN_FAST ? 8 : av == P_ATTN_CM ? 16 : av == P_ATTN_CM32 ? 32 : 64;
        vkrt_dispatch(&e->rt, (vk_pipe_id)av, vs, 8, &pa, sizeof pa, sg->n, cdiv(H, hg), 1);
    }
    else
        vkrt_dispatch(&e->rt, P_ATTN, vs, 8, &pa, sizeof pa, sg->n, H, 1);
}

/* Indexer scores of m tokens of a segment starting at its token a, into
 * rows 0.. of the view S (row stride iscore_cap). */
static void seg_index_score(dsv4_engine *e, const gblock *g, const fseg *sg, lstate *ls, uint32_t a, uint32_t m,
                            vkview S)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint32_t ihd = c->index_head_dim, inh = c->index_n_heads, n_max = (uint32_t)((sg->p0 + sg->n) / 4);
    (void)g;
    if (n_max == 0) return;
    pc_iscore pi = {inh, ihd, 4, sg->t0 + a, (uint32_t)sg->p0 + a, (uint32_t)s->iscore_cap, n_max,
                    (float)(pow(ihd, -0.5) * pow(inh, -0.5)), m, (uint32_t)ls->base_rows};
    vkview v[5] = {s->iq, s->iw, vkbuf_view(&ls->buf, ls->ikv_off, (VkDeviceSize)ls->cap_rows * ihd * 4), S,
                   cache_base(e, ls, 1)};
    /* the tiled product (same bits) where index_head_dim fits it and a
       segment has tokens to share the key tiles; decode: one token per
       workgroup, an entry's heads over 4 threads (index_score_dec), else
       one entry per thread (index_score_tok) */
    if (ihd % 4 == 0 && ihd <= 128 && m >= 4 && vkrt_has_pipe(&e->rt, P_INDEX_SCORE_TILE)) {
        vkrt_dispatch(&e->rt, P_INDEX_SCORE_TILE, v, 5, &pi, sizeof pi, cdiv(n_max, 32), cdiv(m, 8), 1);
    } else if (ihd == 128 && inh <= 64 && vkrt_has_pipe(&e->rt, P_INDEX_SCORE_DEC)) {
        pc_iscored pd = {inh, ihd, 4, pi.t0, pi.p0, pi.ld_s, n_max, pi.wscale, m, pi.base_rows};
        vkrt_dispatch(&e->rt, P_INDEX_SCORE_DEC, v, 5, &pd, sizeof pd, cdiv(n_max, 32), m, 1);
    } else if (ihd == 128 && inh <= 64 && vkrt_has_pipe(&e->rt, P_INDEX_SCORE_TOK))
        vkrt_dispatch(&e->rt, P_INDEX_SCORE_TOK, v, 5, &pi, sizeof pi, cdiv(n_max, 64), m, 1);
    else
        vkrt_dispatch(&e->rt, P_INDEX_SCORE, v, 5, &pi, sizeof pi, cdiv(n_max, 64), m, 1);
}

/* Whether the fused indexer (index_topk + index_topk_merge) takes a
 * segment, and how: 0 when not (decode-sized segments, where the score row
 * is short and index_score_tok + topk_radix are the better fit; index
 * shapes it does not hold; $DSV4_INDEX_UNFUSED), else the number of entry
 * ranges, each *split_len entries (a multiple of 32). GPUs: enough ranges
 * that the 8-token blocks of the segment make about ITOPK_TARGET_WGS
 * workgroups (at most the ranges the scratch holds; a range shorter than a
 * list simply keeps all its entries for the merge). CPU drivers: ranges
 * short enough that an invocation's loops stay within CPU_LOOP_BUDGET,
 * counted per block of 32 entries as the key staging (16), per head the
 * query loads and stores and the dot products (~56), the appends (~24), and, at
 * worst, every token's list cut (4 radix passes and the compaction
 * rounds); more ranges than the scratch holds: not fused. */
static uint32_t index_plan(const dsv4_engine *e, const fseg *sg, int phased, uint32_t *split_len)
{
    const dsv4_config *c = &e->m->cfg;
    const fscratch *s = &e->s;
    uint32_t ihd = c->index_head_dim, inh = c->index_n_heads, n_max = (uint32_t)((sg->p0 + sg->n) / 4);
    if (e->index_unfused || !s->icand_ld || sg->n < 4 || ihd % 4 || ihd > 128 || n_max == 0) return 0;
    /* GPUs: while a pass's score matrix stays small (short histories) the
       two dispatches are faster (H200, 8K, 4 layers: 50 ms against 82); the
       fused path where the matrix would pass index_fused_bytes */
    if (!e->cpu_device && !e->index_split && (uint64_t)e->chunk * n_max * 4 <= e->index_fused_bytes) return 0;
    /* lists per token: phase by phase every token of the pass has icand_ld
       at its own row; alone, a segment may spread over all the slots */
    uint64_t most = phased ? s->icand_ld : (uint64_t)e->chunk * s->icand_ld / sg->n;
    if (most > ICAND_MAX_RANGES) most = ICAND_MAX_RANGES;
    uint32_t blocks = cdiv(n_max, ITOPK_EB), per; /* blocks of 32 entries per range */
    if (e->index_split) {
        per = cdiv(e->index_split, ITOPK_EB);
    } else if (e->cpu_device) {
        uint64_t cut = 4 * (4 + s->icand_cap / 64 + 1 + 14) + (s->icand_cap / 64 + 1) * 8;
        uint64_t w = 16 + (uint64_t)inh * 56 + 24 + 8 * cut;
        per = (uint32_t)(CPU_LOOP_BUDGET / w);
        if (per < 1) return 0;
    } else {
        uint32_t want = cdiv(ITOPK_TARGET_WGS, cdiv(sg->n, 8));
        if (want > most) want = (uint32_t)most;
        if (want < 1) want = 1;
        per = cdiv(blocks, want);
    }
    uint32_t n_split = cdiv(blocks, per);
    if (n_split > most) return 0;
    *split_len = per * ITOPK_EB;
    return n_split;
}

/* The fused indexer of a segment (index_plan gave n_split ranges of
 * split_len): step 0 the lists (scratch rows row0.., ld lists per row),
 * step 1 their merge into the top-k rows i_row0.. of IDX, step -1 both. */
static void seg_index_topk(dsv4_engine *e, const fseg *sg, lstate *ls, uint32_t n_split, uint32_t split_len,
                           uint32_t row0, uint32_t ld, vkview IDX, uint32_t i_row0, int step)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint32_t ihd = c->index_head_dim, inh = c->index_n_heads, n_max = (uint32_t)((sg->p0 + sg->n) / 4);
    uint32_t topk = (uint32_t)c->index_topk;
    if (step <= 0) {
        /* the last binding: a fork's shared base rows */
        pc_itopk pf = {inh, ihd, 4, sg->t0, (uint32_t)sg->p0, n_max, (float)(pow(ihd, -0.5) * pow(inh, -0.5)),
                       sg->n, topk, s->icand_cap, split_len, n_split, row0, ld, (uint32_t)ls->base_rows};
        vkview v[6] = {s->iq, s->iw, vkbuf_view(&ls->buf, ls->ikv_off, (VkDeviceSize)ls->cap_rows * ihd * 4), s->icand,
                       s->icnt, cache_base(e, ls, 1)};
        vkrt_dispatch(&e->rt, P_INDEX_TOPK, v, 6, &pf, sizeof pf, n_split, cdiv(sg->n, 8), 1);
    }
    if (step != 0) {
        pc_itmerge pm = {topk, 4, (uint32_t)sg->p0, topk, i_row0, s->icand_cap, n_split, row0, ld};
        vkview v[3] = {s->icand, s->icnt, IDX};
        vkrt_dispatch(&e->rt, P_INDEX_TOPK_MERGE, v, 3, &pm, sizeof pm, sg->n, 1, 1);
    }
}

/* Top-k of m score rows (view S) of a segment's tokens a.., into rows
 * i_row0.. of the view IDX. */
static void seg_topk(dsv4_engine *e, const fseg *sg, uint32_t a, uint32_t m, vkview S, vkview IDX, uint32_t i_row0)
{
    uint32_t topk = (uint32_t)e->m->cfg.index_topk;
    pc_topk pt = {topk, 4, (uint32_t)sg->p0 + a, (uint32_t)e->s.iscore_cap, topk, i_row0};
    vkview v2[2] = {S, IDX};
    /* few rows (decode): topk_dec's 512 threads and parallel scans per row
       (same output); many: a topk_radix workgroup per row. CPU drivers pay
       for every barrier: topk_radix unless DSV4_ATTN_DEC=1 (tests). */
    int dec = m < DEC_TOPK_ROWS && vkrt_has_pipe(&e->rt, P_TOPK_DEC) && (!e->cpu_device || e->attn_dec == 1);
    vkrt_dispatch(&e->rt, dec ? P_TOPK_DEC : P_TOPK_RADIX, v2, 2, &pt, sizeof pt, m, 1, 1);
}

/* The state-touching work of one segment, dispatch after dispatch (each
 * waits for the previous): compressors, indexer (scores and top-k in
 * sub-batches of tokens, so a long history stays within one binding),
 * attention, window ring. */
static void record_segment(dsv4_engine *e, const gblock *g, int bi, const fseg *sg, int rope_inv)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    lstate *ls = &sg->seq->ls[bi];
    uint32_t hd = c->head_dim, ihd = c->index_head_dim, win = c->sliding_window;
    vkview ring = vkbuf_view(&ls->buf, ls->ring_off, (VkDeviceSize)win * hd * 4);
    if (g->ratio) {
        vkrt_op(&e->rt, "compressor");
        compressor(e, sg, ls, g->ratio, g->overlap, hd, s->ckv, s->csc, ls->cring_off, ls->kv_off, g->c_ape,
                   g->c_norm, 0, -1);
    }
    uint32_t topk = 0;
    if (g->ratio == 4) {
        vkrt_op(&e->rt, "indexer");
        compressor(e, sg, ls, 4, 1, ihd, s->ikv, s->isc, ls->iring_off, ls->ikv_off, g->ic_ape, g->ic_norm, 1, -1);
        topk = (uint32_t)c->index_topk;
        uint32_t split_len = 0, n_split = index_plan(e, sg, 0, &split_len);
        if (n_split) {
            vkrt_op(&e->rt, "indexer");
            seg_index_topk(e, sg, ls, n_split, split_len, 0, n_split, s->idx, 0, 0);
            vkrt_op(&e->rt, "topk");
            seg_index_topk(e, sg, ls, n_split, split_len, 0, n_split, s->idx, 0, 1);
        }
        for (uint32_t a = 0; !n_split && a < sg->n; a += (uint32_t)s->iscore_rows) {
            uint32_t m = sg->n - a < (uint32_t)s->iscore_rows ? sg->n - a : (uint32_t)s->iscore_rows;
            vkrt_op(&e->rt, "indexer");
            seg_index_score(e, g, sg, ls, a, m, s->iscore);
            vkrt_op(&e->rt, "topk");
            seg_topk(e, sg, a, m, s->iscore, s->idx, a);
        }
    }
    vkrt_op(&e->rt, "attention");
    seg_attention(e, g, sg, ls, topk, s->idx, -1, 0, rope_inv);
    ring_write(e, s->kv, ring, e->dummy, hd, hd, hd, 0, win, sg, 0, 1);
}

/* Whether the segments of a pass can be recorded phase by phase
 * (record_segments_phased): several segments of distinct sequences, and
 * every token's indexer score (segments not fused) and top-k rows fit the
 * scratch at their own offset (rows = token index in the pass, views
 * aligned); the fused indexer's lists are rows of the pass's tokens too. */
static int batched_segments(const dsv4_engine *e, const gblock *g, const fseg *segs, int nsegs, uint32_t T)
{
    const fscratch *s = &e->s;
    if (nsegs < 2) return 0;
    for (int i = 0; i < nsegs; i++)
        for (int j = 0; j < i; j++)
            if (segs[i].seq == segs[j].seq) return 0;
    if (g->ratio != 4) return 1;
    int unfused = 0;
    for (int i = 0; i < nsegs; i++) {
        uint32_t sl;
        if (!index_plan(e, &segs[i], 0, &sl)) unfused = 1;
        else if (!index_plan(e, &segs[i], 1, &sl)) return 0; /* fused only alone */
    }
    VkDeviceSize a = e->rt.align, srow = (VkDeviceSize)s->iscore_cap * 4,
                 irow = (VkDeviceSize)e->m->cfg.index_topk * 4;
    if (irow % a || (unfused && (T > (uint32_t)s->iscore_rows || srow % a))) return 0;
    return 1;
}

/* The same work as record_segment for all segments, one step at a time:
 * each step's dispatches for the different sequences touch disjoint state
 * and scratch rows, so they are recorded without barriers between them and
 * run concurrently; one barrier per step (a decode step of B sequences
 * waits 6 times per layer instead of about 12 x B). Every dispatch computes
 * what it computes in record_segment, so the results are the same bits. */
static void record_segments_phased(dsv4_engine *e, const gblock *g, int bi, const fseg *segs, int nsegs,
                                   int rope_inv)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint32_t hd = c->head_dim, ihd = c->index_head_dim, win = c->sliding_window;
    uint32_t topk = g->ratio == 4 ? (uint32_t)c->index_topk : 0;
    VkDeviceSize srow = (VkDeviceSize)s->iscore_cap * 4, irow = (VkDeviceSize)topk * 4;
    for (int part = 0; part < 2 && g->ratio; part++) { /* pooling, then norm/rotation and rings */
        vkrt_defer_barriers(&e->rt, 1);
        for (int si = 0; si < nsegs; si++) {
            const fseg *sg = &segs[si];
            lstate *ls = &sg->seq->ls[bi];
            vkrt_op(&e->rt, "compressor");
            compressor(e, sg, ls, g->ratio, g->overlap, hd, s->ckv, s->csc, ls->cring_off, ls->kv_off, g->c_ape,
                       g->c_norm, 0, part);
            if (g->ratio == 4) {
                vkrt_op(&e->rt, "indexer");
                compressor(e, sg, ls, 4, 1, ihd, s->ikv, s->isc, ls->iring_off, ls->ikv_off, g->ic_ape, g->ic_norm,
                           1, part);
            }
        }
        vkrt_defer_barriers(&e->rt, 0);
    }
    if (g->ratio == 4) {
        for (int step = 0; step < 2; step++) {
            vkrt_defer_barriers(&e->rt, 1);
            for (int si = 0; si < nsegs; si++) {
                const fseg *sg = &segs[si];
                vkview S = subview(s->iscore, sg->t0 * srow, sg->n * srow);
                vkview I = subview(s->idx, sg->t0 * irow, sg->n * irow);
                uint32_t split_len = 0, n_split = index_plan(e, sg, 1, &split_len);
                vkrt_op(&e->rt, step ? "topk" : "indexer");
                if (n_split)
                    seg_index_topk(e, sg, &sg->seq->ls[bi], n_split, split_len, sg->t0, s->icand_ld, I, 0, step);
                else if (step == 0) seg_index_score(e, g, sg, &sg->seq->ls[bi], 0, sg->n, S);
                else seg_topk(e, sg, 0, sg->n, S, I, 0);
            }
            vkrt_defer_barriers(&e->rt, 0);
        }
    }
    /* attention (attn_dec: its two parts; each segment of few tokens has
       its own rows of the scratch), then the window rings it read */
    for (int step = 0; step < 3; step++) {
        vkrt_defer_barriers(&e->rt, 1);
        uint32_t sc_t0 = 0;
        for (int si = 0; si < nsegs; si++) {
            const fseg *sg = &segs[si];
            lstate *ls = &sg->seq->ls[bi];
            vkrt_op(&e->rt, "attention");
            if (step < 2) {
                vkview I = topk ? subview(s->idx, sg->t0 * irow, sg->n * irow) : s->idx;
                seg_attention(e, g, sg, ls, topk, I, step, sc_t0, rope_inv);
                if (attn_variant(e, g, sg) == P_ATTN_DEC_SCORE) sc_t0 += sg->n;
            } else {
                ring_write(e, s->kv, vkbuf_view(&ls->buf, ls->ring_off, (VkDeviceSize)win * hd * 4), e->dummy, hd, hd,
                           hd, 0, win, sg, 0, 1);
            }
        }
        vkrt_defer_barriers(&e->rt, 0);
    }
}

/* One block from X into Y. x_mixed: hcpart already holds hc_mix's sums of
 * X for this block's hc_attn (the previous block's last dispatch did them).
 * next: the hc_attn of the block that follows in this pass, or NULL; returns
 * whether Y's sums for it are in hcpart. */
static int record_block(dsv4_engine *e, int bi, vkview X, vkview Y, uint32_t T, const fseg *segs, int nsegs,
                        int x_mixed, const ghc *next)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    gblock *g = &e->blk[bi];
    uint32_t D = c->hidden_size, H = c->num_attention_heads, hd = c->head_dim, rd = c->qk_rope_head_dim,
             ihd = c->index_head_dim, inh = c->index_n_heads;
    int yarn = g->ratio ? 1 : 0;
    (void)rd;

    /* ---- attention half (Block.forward) ---- */
    vkrt_op(&e->rt, "hc_pre");
    hc_pre_norm(e, &g->hc_attn, X, s->hx, g->attn_norm, s->xn, s->xq, s->mix, T, 0, x_mixed);
    vkrt_op(&e->rt, "attn_proj");
    gemm(e, &g->wq_a, s->xq, D, 0, s->qrq, g->wq_a.out, 0, T, 1, 0, 0);
    rmsnorm_quant(e, s->qrq, g->q_norm, s->qr, s->qrq, T, g->wq_a.out);
    gemm(e, &g->wq_b, s->qrq, g->wq_a.out, 0, s->q, H * hd, 0, T, 1, 0, 0);
    headprep(e, s->q, e->dummy, yarn, hd, H * hd, 0, F_RMS_SCALE | F_ROPE | F_POSBUF, T, H, 0, 0);
    gemm(e, &g->wkv, s->xq, D, 0, s->kv, hd, 0, T, 1, 0, 0);
    headprep(e, s->kv, g->kv_norm, yarn, hd, hd, 0, F_RMS_W | F_ROPE | F_FP8_NOPE | F_POSBUF, T, 1, 0, 0);
    uint32_t coff = g->overlap ? 2 : 1;
    if (g->ratio) {
        vkrt_op(&e->rt, "compressor_proj");
        gemm(e, &g->c_wkv, s->xn, D, 0, s->ckv, coff * hd, 0, T, 0, 0, 0);
        gemm(e, &g->c_wgate, s->xn, D, 0, s->csc, coff * hd, 0, T, 0, 0, 0);
    }
    if (g->ratio == 4) {
        vkrt_op(&e->rt, "indexer_proj");
        gemm(e, &g->i_wq_b, s->qrq, g->wq_a.out, 0, s->iq, inh * ihd, 0, T, 1, 0, 0);
        headprep(e, s->iq, e->dummy, 1, ihd, inh * ihd, 0, F_ROPE | F_HADAMARD | F_FP4 | F_POSBUF, T, inh, 0, 0);
        gemm(e, &g->i_wproj, s->xn, D, 0, s->iw, inh, 0, T, 1, 0, 0);
        gemm(e, &g->ic_wkv, s->xn, D, 0, s->ikv, 2 * ihd, 0, T, 0, 0, 0);
        gemm(e, &g->ic_wgate, s->xn, D, 0, s->isc, 2 * ihd, 0, T, 0, 0, 0);
    }
    /* attn_dec rotates its output back itself where it runs every segment */
    int rope_inv = 1;
    for (int si = 0; si < nsegs; si++)
        if (attn_variant_x(e, g, &segs[si], s->dscore_ld != 0) != P_ATTN_DEC_SCORE) rope_inv = 0;
    if (batched_segments(e, g, segs, nsegs, T))
        record_segments_phased(e, g, bi, segs, nsegs, rope_inv);
    else
        for (int si = 0; si < nsegs; si++) record_segment(e, g, bi, &segs[si], rope_inv);
    vkrt_op(&e->rt, "attn_out");
    if (!rope_inv) headprep(e, s->o, e->dummy, yarn, hd, H * hd, 0, F_ROPE_INV | F_POSBUF, T, H, 0, 0);
    uint32_t G = c->o_groups, R = c->o_lora_rank, gin = H * hd / G;
    /* wo_a: bf16 einsum per group, no activation quant. The groups write
       disjoint columns of oa: no barriers among them (each write of the one
       oa view looked like a dependency: o_groups - 1 barriers per layer) */
    vkrt_defer_barriers(&e->rt, 1);
    for (uint32_t gi = 0; gi < G; gi++)
        gemm(e, &g->wo_a, s->o, H * hd, gi * gin, s->oa, G * R, gi * R, T, 1, gi * R, R);
    vkrt_defer_barriers(&e->rt, 0);
    act_quant(e, s->oa, s->oaq, T, G * R);
    gemm(e, &g->wo_b, s->oaq, G * R, 0, s->ao, D, 0, T, 1, 0, 0);
    vkrt_op(&e->rt, "hc_post");
    int x2_mixed = hc_post(e, s->ao, X, s->mix, s->x2, T, &g->hc_ffn);

    /* ---- MoE half ---- */
    vkrt_op(&e->rt, "hc_pre");
    /* xq: the experts' input */
    hc_pre_norm(e, &g->hc_ffn, s->x2, s->hx, g->ffn_norm, s->xn, s->xq, s->mix, T, 0, x2_mixed);
    vkrt_op(&e->rt, "moe_gate");
    gemm(e, &g->gate, s->xn, D, 0, s->gl, c->n_routed_experts, 0, T, 0, 0, 0);
    uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok, inter = c->moe_intermediate_size;
    pc_gate pg = {T, E, k, (uint32_t)c->scoring_func == DSV4_SCORE_SQRTSOFTPLUS ? 0u
                           : c->scoring_func == DSV4_SCORE_SOFTMAX            ? 1u : 2u,
                  (uint32_t)g->hash, g->gate_bias.buf != e->dummy.buf || g->gate_bias.off != e->dummy.off,
                  (float)c->routed_scaling_factor};
    if (T == 1) { /* one token: the grouping in the gate's workgroup */
        pc_gategroup pgg = {pg.T, pg.E, pg.k, pg.func, pg.hash, pg.use_bias, pg.route_scale,
                            s->rowmap_off, s->slotpos_off, s->wsort_off, s->ebegin_off};
        vkview vg[7] = {s->gl, g->gate_bias, g->tid2eid, s->tok, s->sel, s->wgt, s->route};
        vkrt_dispatch(&e->rt, P_MOE_GATE_GROUP, vg, 7, &pgg, sizeof pgg, 1, 1, 1);
    } else {
        vkview vg[6] = {s->gl, g->gate_bias, g->tid2eid, s->tok, s->sel, s->wgt};
        vkrt_dispatch(&e->rt, P_MOE_GATE, vg, 6, &pg, sizeof pg, T, 1, 1);
        pc_group pgr = {T, E, k, s->rowmap_off, s->slotpos_off, s->wsort_off, s->ebegin_off};
        vkview vr[3] = {s->sel, s->wgt, s->route};
        vkrt_dispatch(&e->rt, P_MOE_GROUP, vr, 3, &pgr, sizeof pgr, 1, 1, 1);
    }
    vkrt_op(&e->rt, "experts");
    int fp4 = g->ex_q == DSV4_WQ_FP4;
    vk_pipe_id pgath = fp4 ? P_GEMM_FP4_GATHER : g->ex_q == DSV4_WQ_FP8 ? P_GEMM_FP8_GATHER : P_GEMM_BF16_GATHER;
    vk_pipe_id pgrp = fp4 ? P_GEMM_FP4_GROUPED : g->ex_q == DSV4_WQ_FP8 ? P_GEMM_FP8_GROUPED : P_GEMM_BF16_GROUPED;
    uint32_t scols_in = fp4 ? D / 32 : cdiv(D, 128), scols_mid = fp4 ? inter / 32 : cdiv(inter, 128);
    /* SMALL (decode batches; SERIAL on CPU drivers and in exact mode) while
       T x k is small; the tensor-core kernels beat it from a few tokens up even
       though expert tiles then hold only ~6 rows (gemm_bench,
       docs/benchmarks.md). SMALL and the tensor-core twins read whole 16-byte
       pieces of each expert's rows. */
    int ex_al = g->ex_wstride[0] % 16 == 0 && g->ex_wstride[1] % 16 == 0 && g->ex_wstride[2] % 16 == 0;
    int serial = (e->cpu_device || e->exact) && (uint64_t)T * k <= 4 * (uint64_t)e->small_rows;
    int small = serial || (!e->exact && (uint64_t)T * k <= 4 * (uint64_t)e->small_rows && ex_al &&
                           small_ok(D, D, 0) && small_ok(inter, inter, 0));
    if (small) {
        pgath += serial ? P_GEMM_SERIAL_FIRST : small_first(e);
        pgrp += serial ? P_GEMM_SERIAL_FIRST : small_first(e);
    }
    int cm_in = small || !ex_al || e->exact ? -1 : cm_pipe(e, pgath, D, D, 0);
    int cm_out = small || !ex_al || e->exact ? -1 : cm_pipe(e, pgrp, inter, inter, 0);
    uint32_t gx_in = serial ? cdiv(inter, 64) : small ? small_gx(e, inter) : cm_in >= 0 ? cdiv(inter, 128) : cdiv(inter, 64);
    uint32_t gx_out = serial ? cdiv(D, 64) : small ? small_gx(e, D) : cm_out >= 0 ? cdiv(D, 128) : cdiv(D, 64);
    /* every tile holds at least one of the T x k slots: a decode step's 6
       routes need 6 rows of workgroups, not one per possible tile (448 at
       1024 tokens per pass, nearly all exiting at once) */
    uint32_t tiles = s->route_tiles_max < T * k ? s->route_tiles_max : T * k;
    if (cm_in >= 0) pgath = (vk_pipe_id)cm_in;
    if (cm_out >= 0) pgrp = (vk_pipe_id)cm_out;
    for (int j = 0; j < 3; j += 2) {
        for (int q = 0; q < g->n_exgroups; q++) {
            uint32_t e0 = (uint32_t)(q * g->ex_per_group), e1 = e0 + (uint32_t)g->ex_per_group < E ? e0 + (uint32_t)g->ex_per_group : E;
            pc_gemm pc = {0, inter, D, D, inter, 0, 0, 0, 1, scols_in, g->ex_wstride[j], g->ex_sstride[j], e0, e1, 0,
                          s->rowmap_off};
            vkview v[5] = {s->xq, g->ex_w[j][q], g->ex_s[j][q], j == 0 ? s->h1 : s->h3, s->route};
            vkrt_dispatch(&e->rt, pgath, v, 5, &pc, sizeof pc, gx_in, tiles, 1);
        }
    }
    swiglu(e, s->h1, s->h3, s->hs, s->hsq, T * k, 1, 1);
    {
        for (int q = 0; q < g->n_exgroups; q++) {
            uint32_t e0 = (uint32_t)(q * g->ex_per_group), e1 = e0 + (uint32_t)g->ex_per_group < E ? e0 + (uint32_t)g->ex_per_group : E;
            pc_gemm pc = {0, D, inter, inter, D, 0, 0, 0, 1, scols_mid, g->ex_wstride[1], g->ex_sstride[1], e0, e1, 0,
                          s->rowmap_off};
            vkview v[5] = {s->hsq, g->ex_w[1][q], g->ex_s[1][q], s->ys, s->route};
            vkrt_dispatch(&e->rt, pgrp, v, 5, &pc, sizeof pc, gx_out, tiles, 1);
        }
    }
    vkrt_op(&e->rt, "shared_expert");
    gemm(e, &g->sh[0], s->xq, D, 0, s->s1, inter, 0, T, 1, 0, 0);
    gemm(e, &g->sh[2], s->xq, D, 0, s->s3, inter, 0, T, 1, 0, 0);
    if (g->sh[1].q == DSV4_WQ_FP8 || g->sh[1].q == DSV4_WQ_FP4) { /* qlinear's act_quant done by swiglu */
        swiglu(e, s->s1, s->s3, s->ss, s->ssq, T, 0, 1);
        gemm(e, &g->sh[1], s->ssq, inter, 0, s->sy, D, 0, T, 1, 0, 0);
    } else {
        swiglu(e, s->s1, s->s3, s->ss, s->ssq, T, 0, 0);
        gemm(e, &g->sh[1], s->ss, inter, 0, s->sy, D, 0, T, 1, 0, 0);
    }
    /* the experts' sum, then hc_post on it, in one dispatch, and the next
       block's hc_mix sums where it can */
    vkrt_op(&e->rt, "moe_combine");
    int y_mixed = next && hc_mix_fusable(e);
    pc_combine_post pcb = {D, k, s->slotpos_off, (uint32_t)c->hc_mult};
    vkview vc[9] = {s->ys, s->sy, s->sel, s->route, Y, s->x2, s->mix, y_mixed ? next->fn : e->dummy, s->hcpart};
    vkrt_dispatch(&e->rt, y_mixed ? P_MOE_COMBINE_POST_MIX : P_MOE_COMBINE_POST, vc, y_mixed ? 9 : 7, &pcb,
                  sizeof pcb, T, cdiv(D, 256), (uint32_t)c->hc_mult);
    return y_mixed;
}

static void record_head(dsv4_engine *e, const ghc *hch, vkview normw, vkview X, int r0, int n)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint32_t D = c->hidden_size, V = c->vocab_size;
    VkDeviceSize rowb = (VkDeviceSize)c->hc_mult * D * 4;
    vkrt_op(&e->rt, "head");
    for (int a = 0; a < n; a += e->head_rows) {
        int m = n - a < e->head_rows ? n - a : e->head_rows;
        vkview xr = X;
        xr.off += (VkDeviceSize)(r0 + a) * rowb;
        xr.size = (VkDeviceSize)m * rowb;
        hc_pre_norm(e, hch, xr, s->hy, normw, s->hn, e->dummy, s->mix, (uint32_t)m, 1, 0);
        for (int i = 0; i < e->n_vslices; i++) { /* vocab slices of the head */
            uint32_t r0 = (uint32_t)i * e->vslice_rows, nr = V - r0 < e->vslice_rows ? V - r0 : e->vslice_rows;
            gw hw = {DSV4_WQ_BF16, nr, D, 0, e->head[i], e->dummy};
            gemm(e, &hw, s->hn, D, 0, s->logits, V, r0, (uint32_t)m, 0, 0, 0);
        }
        vkrt_copy(&e->rt, s->logits, vkbuf_view(&s->io, s->io_logits + (VkDeviceSize)a * V * 4, (VkDeviceSize)m * V * 4),
                  (VkDeviceSize)m * V * 4);
    }
}

int fwd_run(dsv4_engine *e, const fpass *fp, char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    fscratch *s = &e->s;
    uint32_t T = (uint32_t)fp->T, D = c->hidden_size, hc = c->hc_mult;
    int rc;
    /* state capacity and indexer score rows (segments the fused indexer does
       not take: decode), before recording */
    int64_t max_entries = 1;
    int unfused = 0;
    for (int i = 0; i < fp->nsegs; i++) {
        const fseg *sg = &fp->segs[i];
        for (int b = fp->b0; b < fp->b1; b++) {
            rc = lstate_reserve(e, &sg->seq->ls[b], b, sg->p0 + sg->n, err, errlen);
            if (rc) return rc;
            if (attn_variant(e, &e->blk[b], sg) < 0) {
                snprintf(err, errlen, "engine: attention of block %d at position %lld (head_dim %d) needs more than "
                         "the %u loop iterations per invocation this CPU Vulkan driver runs",
                         b, (long long)(sg->p0 + sg->n), c->head_dim, CPU_LOOP_BUDGET);
                return DSV4_ENOMEM;
            }
        }
        uint32_t sl;
        if (index_plan(e, sg, 0, &sl)) continue;
        unfused = 1;
        if ((sg->p0 + sg->n) / 4 > max_entries) max_entries = (sg->p0 + sg->n) / 4;
    }
    /* rows: all tokens of the pass at once (a batched decode of B sequences
       needs B rows, not a chunk's; grown when a later pass has more), unless
       that exceeds one binding (or the DSV4_ISCORE_KIB test override): then
       fewer per dispatch */
    uint64_t want_rows = T < (uint32_t)e->chunk ? T : (uint32_t)e->chunk, limit = e->rt.max_range;
    if (e->iscore_limit && e->iscore_limit < limit) limit = e->iscore_limit; /* read at open */
    if (unfused && (max_entries > s->iscore_cap ||
                    ((uint64_t)s->iscore_rows < want_rows &&
                     (uint64_t)s->iscore_rows < limit / ((uint64_t)s->iscore_cap * 4)))) {
        int64_t cap = s->iscore_cap ? s->iscore_cap : 256;
        while (cap < max_entries) cap *= 2;
        uint64_t rows = want_rows > (uint64_t)s->iscore_rows ? want_rows : (uint64_t)s->iscore_rows;
        if (rows > limit / ((uint64_t)cap * 4)) rows = limit / ((uint64_t)cap * 4);
        if (rows < 1) {
            snprintf(err, errlen, "engine: indexer scores of %lld entries exceed maxStorageBufferRange",
                     (long long)cap);
            return DSV4_ENOMEM;
        }
        uint64_t bytes = rows * (uint64_t)cap * 4;
        s->iscore_rows = (int64_t)rows;
        vkDeviceWaitIdle(e->rt.dev);
        vkbuf_free(&e->rt, &s->iscore_buf);
        rc = vkbuf_create(&e->rt, bytes, 1, &s->iscore_buf, err, errlen);
        if (rc) return rc;
        s->iscore = vkbuf_view(&s->iscore_buf, 0, s->iscore_buf.size);
        s->iscore_cap = cap;
    }
    /* attn_tile (and attn_direct) keep their pass-1 scores for pass 2 where
       the pass's longest key list fits the scratch (grown up to
       ASCORE_MAX_BYTES); a pass none of whose segments runs them (attn_cm,
       attn_dec, attn_serial) allocates nothing */
    {
        uint64_t ld = 0, H = (uint64_t)c->num_attention_heads;
        for (int i = 0; i < fp->nsegs; i++)
            for (int b = fp->b0; b < fp->b1; b++) {
                const gblock *g = &e->blk[b];
                int av = attn_variant(e, g, &fp->segs[i]);
                if (av != P_ATTN_TILE && av != P_ATTN_TILE_S && av != P_ATTN_DIRECT) continue;
                uint64_t p1 = (uint64_t)(fp->segs[i].p0 + fp->segs[i].n);
                uint64_t nk = (uint64_t)c->sliding_window +
                              (g->ratio == 4 ? (uint64_t)c->index_topk : g->ratio ? p1 / (uint64_t)g->ratio : 0);
                if (nk > ld) ld = nk;
            }
        ld = (ld + 255) / 256 * 256; /* HCA lists grow by a key per 128 tokens: reallocate seldom */
        uint64_t need = (uint64_t)T * H * ld * 4, want = (uint64_t)(T > (uint32_t)e->chunk ? T : (uint32_t)e->chunk) * H * ld * 4;
        uint64_t limit = ASCORE_MAX_BYTES;
        if (limit > e->rt.max_range) limit = e->rt.max_range;
        if (want > limit) want = limit;
        s->ascore_ld = 0;
        if (ld && need <= limit) {
            if (need > s->ascore_buf.size) {
                vkDeviceWaitIdle(e->rt.dev);
                vkbuf_free(&e->rt, &s->ascore_buf);
                if (vkbuf_create(&e->rt, want, 1, &s->ascore_buf, err, errlen)) {
                    memset(&s->ascore_buf, 0, sizeof s->ascore_buf); /* no room: scores computed twice */
                    err[0] = 0;
                }
            }
            if (need <= s->ascore_buf.size) s->ascore_ld = (uint32_t)ld;
        }
    }
    /* attn_dec's records: 2 x ld words per (token, head) of the segments
       that run it (few tokens on a GPU), ld past the longest key list; a
       pass that would need more than ASCORE_MAX_BYTES runs attn_direct */
    {
        uint64_t ld = 0, rows = 0, H = (uint64_t)c->num_attention_heads;
        for (int i = 0; i < fp->nsegs; i++) {
            int dec = 0;
            for (int b = fp->b0; b < fp->b1; b++) {
                const gblock *g = &e->blk[b];
                if (attn_variant(e, g, &fp->segs[i]) != P_ATTN_DEC_SCORE) continue;
                uint64_t p1 = (uint64_t)(fp->segs[i].p0 + fp->segs[i].n);
                uint64_t nk = (uint64_t)c->sliding_window +
                              (g->ratio == 4 ? (uint64_t)c->index_topk : g->ratio ? p1 / (uint64_t)g->ratio : 0);
                if (nk > ld) ld = nk;
                dec = 1;
            }
            if (dec) rows += (uint64_t)fp->segs[i].n;
        }
        ld = (ld + 255) / 256 * 256; /* HCA lists grow by a key per 128 tokens: reallocate seldom */
        uint64_t need = rows * H * ld * 4, limit = ASCORE_MAX_BYTES;
        if (limit > e->rt.max_range) limit = e->rt.max_range;
        s->dscore_ld = 0;
        if (rows && need <= limit) {
            if (need > s->dscore_buf.size) {
                uint64_t want = need * 2 < limit ? need * 2 : limit;
                vkDeviceWaitIdle(e->rt.dev);
                vkbuf_free(&e->rt, &s->dscore_buf);
                if (vkbuf_create(&e->rt, want, 1, &s->dscore_buf, err, errlen)) {
                    memset(&s->dscore_buf, 0, sizeof s->dscore_buf); /* no room: attn_direct */
                    err[0] = 0;
                }
            }
            if (need <= s->dscore_buf.size) s->dscore_ld = (uint32_t)ld;
        }
    }
    VkDeviceSize xbytes = (VkDeviceSize)T * hc * D * 4;
    if (fp->x_in) {
        rc = vkrt_upload(&e->rt, fp->mtp ? s->e2 : s->xa, fp->x_in, xbytes, err, errlen);
        if (rc) return rc;
    }
    rc = vkrt_begin(&e->rt, err, errlen);
    if (rc) return rc;
    vkview X = s->xa, Y = s->xb;
    if (fp->mtp) {
        const gblock *g = &e->blk[fp->b0];
        vkrt_op(&e->rt, "mtp_in");
        record_embed(e, s->hx, T, 1);
        rmsnorm(e, s->hx, g->enorm, s->xn, T, D);
        qlinear(e, &g->e_proj, s->xn, s->xq, T, s->e1, 1);
        rmsnorm(e, s->e2, g->hnorm, s->x2, T * hc, D);
        qlinear(e, &g->h_proj, s->x2, s->xq, T * hc, s->xb, 1);
        pc_add pa = {D, hc};
        vkview va[3] = {s->e1, s->xb, s->xa};
        vkrt_dispatch(&e->rt, P_ADD_BCAST, va, 3, &pa, sizeof pa, T, 1, 1);
    } else if (!fp->x_in) {
        vkrt_op(&e->rt, "embed");
        record_embed(e, s->xa, T, hc);
    }
    int mixed = 0;
    for (int b = fp->b0; b < fp->b1; b++) {
        const ghc *next = b + 1 < fp->b1 ? &e->blk[b + 1].hc_attn : NULL;
        mixed = record_block(e, b, X, Y, T, fp->segs, fp->nsegs, mixed, next);
        vkview t = X; X = Y; Y = t;
        /* the device starts on the first block while the host records the
           rest, and on each further part (~5 layers of a decode step) */
        if (b + 1 < fp->b1 && (b == fp->b0 || vkrt_queued(&e->rt) >= e->part_ops)) {
            rc = vkrt_submit_part(&e->rt, err, errlen);
            if (rc) return rc;
        }
    }
    if (fp->head == 1) record_head(e, &e->hc_head, e->norm, X, fp->head_r0, fp->head_n);
    if (fp->head == 2) record_head(e, &e->blk[fp->b0].hc_head, e->blk[fp->b0].norm, X, fp->head_r0, fp->head_n);
    rc = vkrt_submit_wait(&e->rt, err, errlen);
    if (rc) return rc;
    if (fp->head && fp->logits)
        memcpy(fp->logits, (uint8_t *)s->io.map + s->io_logits, (size_t)fp->head_n * c->vocab_size * 4);
    if (fp->x_out) return vkrt_download(&e->rt, X, fp->x_out, xbytes, err, errlen);
    return 0;
}
