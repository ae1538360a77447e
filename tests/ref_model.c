/* tests/ref_model.c: the CPU reference model — blocks, head, MTP and the
 * per-sequence state — built from the operations of tests/ref_ops.c.
 * Follows inference/model.py (Block.forward, Attention.forward, Compressor,
 * Indexer, MoE, MTPBlock, ParallelHead), generalised from "one-shot prefill at
 * position 0, then one token at a time" to chunks of any size from any
 * position: every token's computation depends only on its position and the
 * state before it, never on how the sequence was chunked. Weights are
 * dequantized to f32 once at open (fine for the tiny test models this is
 * for). Test support code: allocation failure aborts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/ref_model.h"

static inline float bf(float x) { return dsv4_round_bf16(x); }

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "ref_model: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

#define NEW(T, n) ((T *)xmalloc((size_t)(n) * sizeof(T)))

/* A BF16 or F32 tensor as f32 (NULL for an absent tensor). */
static float *tensor_f32(const dsv4_tensor *t)
{
    if (!t->data) return NULL;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    float *f = NEW(float, n);
    for (int64_t i = 0; i < n; i++) {
        if (t->dtype == DSV4_DT_BF16) {
            uint16_t h;
            memcpy(&h, t->data + i * 2, 2);
            f[i] = dsv4_bf16_to_f32(h);
        } else {
            memcpy(&f[i], t->data + i * 4, 4);
        }
    }
    return f;
}

typedef struct ref_comp {
    int ratio, hd, overlap, rotate;
    ref_weight wkv, wgate; /* f32 F.linear in the official code */
    float *ape, *norm;
} ref_comp;

typedef struct ref_block {
    int layer_id, ratio, is_mtp, has_idx, hash;
    const ref_rope *rope;
    float *attn_norm, *ffn_norm;
    float *hc_attn_fn, *hc_attn_base, *hc_attn_scale; /* fn transposed */
    float *hc_ffn_fn, *hc_ffn_base, *hc_ffn_scale;
    ref_weight wq_a, wq_b, wkv, wo_a, wo_b;
    float *q_norm, *kv_norm, *attn_sink;
    ref_comp comp, icomp;
    ref_weight idx_wq_b, idx_wproj;
    float *gate_wt, *gate_bias; /* gate transposed [hidden][experts] */
    const int64_t *tid2eid; /* copied, aligned */
    int64_t *tid2eid_buf;
    ref_weight *w1, *w2, *w3;
    ref_weight sw1, sw2, sw3;
    /* MTP */
    ref_weight e_proj, h_proj;
    float *enorm, *hnorm, *norm, *hc_head_fn, *hc_head_base, *hc_head_scale; /* fn transposed */
} ref_block;

struct ref_model {
    const dsv4_model *m;
    dsv4_config cfg;
    ref_block *blocks; /* [num_hidden_layers + num_nextn_predict_layers] */
    int n_blocks;
    float *embed, *head_t, *norm, *hc_head_fn, *hc_head_base, *hc_head_scale; /* transposed */
    ref_rope rope_plain, rope_yarn;
};

/* A BF16/F32 [out][in] tensor as f32, transposed to [in][out]. */
static float *tensor_f32_t(const dsv4_tensor *t)
{
    float *f = tensor_f32(t);
    if (!f) return NULL;
    float *ft = ref_transpose(f, t->shape[0], t->ndim == 2 ? t->shape[1] : 1);
    free(f);
    return ft;
}

typedef struct ref_layer_state {
    int64_t pos;
    float *ring;                  /* [sliding_window][head_dim] by position % window */
    float *comp;                  /* [cap][head_dim] compressed entries */
    int64_t n_comp, cap_comp;
    float *ikv;                   /* [cap][index_head_dim] indexer keys */
    int64_t n_ikv, cap_ikv;
    ref_comp_state cs, ics;
} ref_layer_state;

struct ref_seq {
    ref_model *r;
    int64_t pos;
    ref_layer_state *ls;          /* [n_blocks] */
};

static void load_w(const dsv4_weight *w, ref_weight *dst)
{
    if (ref_weight_load(w, dst) < 0) {
        fprintf(stderr, "ref_model: out of memory\n");
        abort();
    }
}

static void load_comp(const dsv4_compressor_w *c, ref_comp *dst)
{
    dst->ratio = c->ratio;
    dst->hd = c->head_dim;
    dst->overlap = c->overlap;
    dst->rotate = c->rotate;
    load_w(&c->wkv, &dst->wkv);
    load_w(&c->wgate, &dst->wgate);
    dst->ape = tensor_f32(&c->ape);
    dst->norm = tensor_f32(&c->norm);
}

static void free_comp(ref_comp *c)
{
    ref_weight_free(&c->wkv);
    ref_weight_free(&c->wgate);
    free(c->ape);
    free(c->norm);
}

static void load_block(ref_model *r, const dsv4_block_w *b, ref_block *d)
{
    const dsv4_config *c = &r->cfg;
    memset(d, 0, sizeof *d);
    d->layer_id = b->layer_id;
    d->ratio = b->attn.compress_ratio;
    d->is_mtp = b->is_mtp;
    d->rope = d->ratio ? &r->rope_yarn : &r->rope_plain;
    d->attn_norm = tensor_f32(&b->attn_norm);
    d->ffn_norm = tensor_f32(&b->ffn_norm);
    d->hc_attn_fn = tensor_f32_t(&b->hc_attn.fn);
    d->hc_attn_base = tensor_f32(&b->hc_attn.base);
    d->hc_attn_scale = tensor_f32(&b->hc_attn.scale);
    d->hc_ffn_fn = tensor_f32_t(&b->hc_ffn.fn);
    d->hc_ffn_base = tensor_f32(&b->hc_ffn.base);
    d->hc_ffn_scale = tensor_f32(&b->hc_ffn.scale);
    load_w(&b->attn.wq_a, &d->wq_a);
    load_w(&b->attn.wq_b, &d->wq_b);
    load_w(&b->attn.wkv, &d->wkv);
    load_w(&b->attn.wo_a, &d->wo_a);
    load_w(&b->attn.wo_b, &d->wo_b);
    d->q_norm = tensor_f32(&b->attn.q_norm);
    d->kv_norm = tensor_f32(&b->attn.kv_norm);
    d->attn_sink = tensor_f32(&b->attn.attn_sink);
    if (b->attn.has_compressor) load_comp(&b->attn.compressor, &d->comp);
    if (b->attn.has_indexer) {
        d->has_idx = 1;
        load_w(&b->attn.indexer.wq_b, &d->idx_wq_b);
        load_w(&b->attn.indexer.weights_proj, &d->idx_wproj);
        load_comp(&b->attn.indexer.compressor, &d->icomp);
    }
    ref_weight g;
    load_w(&b->ffn.gate, &g);
    d->gate_wt = g.wt;
    free(g.w);
    d->gate_bias = tensor_f32(&b->ffn.gate_bias);
    d->hash = b->ffn.hash;
    if (b->ffn.hash) {
        int64_t n = b->ffn.tid2eid.shape[0] * b->ffn.tid2eid.shape[1];
        d->tid2eid_buf = NEW(int64_t, n);
        memcpy(d->tid2eid_buf, b->ffn.tid2eid.data, (size_t)n * 8);
        d->tid2eid = d->tid2eid_buf;
    }
    int E = c->n_routed_experts;
    d->w1 = NEW(ref_weight, E);
    d->w2 = NEW(ref_weight, E);
    d->w3 = NEW(ref_weight, E);
    for (int e = 0; e < E; e++) {
        load_w(&b->ffn.experts[e].w1, &d->w1[e]);
        load_w(&b->ffn.experts[e].w2, &d->w2[e]);
        load_w(&b->ffn.experts[e].w3, &d->w3[e]);
    }
    load_w(&b->ffn.shared.w1, &d->sw1);
    load_w(&b->ffn.shared.w2, &d->sw2);
    load_w(&b->ffn.shared.w3, &d->sw3);
    if (b->is_mtp) {
        load_w(&b->e_proj, &d->e_proj);
        load_w(&b->h_proj, &d->h_proj);
        d->enorm = tensor_f32(&b->enorm);
        d->hnorm = tensor_f32(&b->hnorm);
        d->norm = tensor_f32(&b->norm);
        d->hc_head_fn = tensor_f32_t(&b->hc_head.fn);
        d->hc_head_base = tensor_f32(&b->hc_head.base);
        d->hc_head_scale = tensor_f32(&b->hc_head.scale);
    }
}

static void free_block(const dsv4_config *c, ref_block *d)
{
    free(d->attn_norm);
    free(d->ffn_norm);
    free(d->hc_attn_fn);
    free(d->hc_attn_base);
    free(d->hc_attn_scale);
    free(d->hc_ffn_fn);
    free(d->hc_ffn_base);
    free(d->hc_ffn_scale);
    ref_weight_free(&d->wq_a);
    ref_weight_free(&d->wq_b);
    ref_weight_free(&d->wkv);
    ref_weight_free(&d->wo_a);
    ref_weight_free(&d->wo_b);
    free(d->q_norm);
    free(d->kv_norm);
    free(d->attn_sink);
    if (d->ratio) free_comp(&d->comp);
    if (d->has_idx) {
        ref_weight_free(&d->idx_wq_b);
        ref_weight_free(&d->idx_wproj);
        free_comp(&d->icomp);
    }
    free(d->gate_wt);
    free(d->gate_bias);
    free(d->tid2eid_buf);
    for (int e = 0; d->w1 && e < c->n_routed_experts; e++) {
        ref_weight_free(&d->w1[e]);
        ref_weight_free(&d->w2[e]);
        ref_weight_free(&d->w3[e]);
    }
    free(d->w1);
    free(d->w2);
    free(d->w3);
    ref_weight_free(&d->sw1);
    ref_weight_free(&d->sw2);
    ref_weight_free(&d->sw3);
    if (d->is_mtp) {
        ref_weight_free(&d->e_proj);
        ref_weight_free(&d->h_proj);
        free(d->enorm);
        free(d->hnorm);
        free(d->norm);
        free(d->hc_head_fn);
        free(d->hc_head_base);
        free(d->hc_head_scale);
    }
}

int ref_model_open(const dsv4_model *m, ref_model **out, char *err, size_t errlen)
{
    ref_model *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    r->m = m;
    r->cfg = m->cfg;
    const dsv4_config *c = &r->cfg;
    /* Attention.__init__: compressed layers YaRN with compress_rope_theta,
       window-only layers plain rope_theta. */
    ref_rope_init(&r->rope_plain, c->qk_rope_head_dim, c->rope_theta, 0, 0, 1, 32, 1);
    ref_rope_init(&r->rope_yarn, c->qk_rope_head_dim, c->compress_rope_theta,
                  c->rope_scaling_yarn, c->original_max_position_embeddings, c->rope_factor,
                  c->beta_fast, c->beta_slow);
    r->n_blocks = dsv4_config_n_blocks(c);
    r->blocks = calloc((size_t)r->n_blocks, sizeof *r->blocks);
    if (!r->blocks) abort();
    for (int i = 0; i < c->num_hidden_layers; i++) load_block(r, &m->layers[i], &r->blocks[i]);
    for (int i = 0; i < c->num_nextn_predict_layers; i++)
        load_block(r, &m->mtp[i], &r->blocks[c->num_hidden_layers + i]);
    r->embed = tensor_f32(&m->embed);
    r->head_t = tensor_f32_t(&m->head);
    r->norm = tensor_f32(&m->norm);
    r->hc_head_fn = tensor_f32_t(&m->hc_head.fn);
    r->hc_head_base = tensor_f32(&m->hc_head.base);
    r->hc_head_scale = tensor_f32(&m->hc_head.scale);
    *out = r;
    return 0;
}

void ref_model_close(ref_model *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_blocks; i++) free_block(&r->cfg, &r->blocks[i]);
    free(r->blocks);
    free(r->embed);
    free(r->head_t);
    free(r->norm);
    free(r->hc_head_fn);
    free(r->hc_head_base);
    free(r->hc_head_scale);
    ref_rope_free(&r->rope_plain);
    ref_rope_free(&r->rope_yarn);
    free(r);
}

const dsv4_config *ref_model_config(const ref_model *r) { return &r->cfg; }

/* ------------------------------------------------------------ state */

int ref_seq_create(ref_model *r, ref_seq **out)
{
    const dsv4_config *c = &r->cfg;
    ref_seq *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->r = r;
    s->ls = calloc((size_t)r->n_blocks, sizeof *s->ls);
    if (!s->ls) abort();
    for (int i = 0; i < r->n_blocks; i++) {
        ref_layer_state *l = &s->ls[i];
        const ref_block *b = &r->blocks[i];
        l->ring = NEW(float, (int64_t)c->sliding_window * c->head_dim);
        memset(l->ring, 0, (size_t)c->sliding_window * (size_t)c->head_dim * sizeof(float));
        if (b->ratio) ref_comp_state_init(&l->cs, b->ratio, c->head_dim, b->comp.overlap);
        if (b->has_idx) ref_comp_state_init(&l->ics, 4, c->index_head_dim, 1);
    }
    *out = s;
    return 0;
}

void ref_seq_free(ref_seq *s)
{
    if (!s) return;
    for (int i = 0; i < s->r->n_blocks; i++) {
        ref_layer_state *l = &s->ls[i];
        free(l->ring);
        free(l->comp);
        free(l->ikv);
        ref_comp_state_free(&l->cs);
        ref_comp_state_free(&l->ics);
    }
    free(s->ls);
    free(s);
}

int64_t ref_seq_pos(const ref_seq *s) { return s->pos; }

static float *append_row(float **buf, int64_t *n, int64_t *cap, int dim)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        float *nb = realloc(*buf, (size_t)*cap * (size_t)dim * sizeof(float));
        if (!nb) abort();
        *buf = nb;
    }
    return *buf + (*n)++ * dim;
}

/* ------------------------------------------------------------ attention */

/* Feeds the chunk's tokens through a compressor, appending finished entries. */
static void run_compressor(const ref_model *r, const ref_comp *cw, ref_comp_state *cs,
                           const float *x, int64_t n, int64_t pos0, const ref_rope *rope,
                           float **buf, int64_t *nbuf, int64_t *cap)
{
    const dsv4_config *c = &r->cfg;
    int w = (1 + cw->overlap) * cw->hd;
    float *kv = NEW(float, n * w), *sc = NEW(float, n * w), *entry = NEW(float, cw->hd);
    /* Compressor.forward: x.float(), wkv/wgate in f32 (their bf16 weights as f32). */
    ref_linear_f32_t(cw->wkv.wt, w, c->hidden_size, x, n, kv);
    ref_linear_f32_t(cw->wgate.wt, w, c->hidden_size, x, n, sc);
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos0 + t;
        if (!ref_comp_step(cs, p, kv + t * w, sc + t * w, cw->ape, entry)) continue;
        ref_comp_finish(entry, cw->hd, cw->norm, (float)c->rms_norm_eps, rope, p + 1 - cw->ratio,
                        cw->rotate);
        memcpy(append_row(buf, nbuf, cap, cw->hd), entry, (size_t)cw->hd * sizeof(float));
    }
    free(kv);
    free(sc);
    free(entry);
}

/* Attention.forward on x[n][hidden] (bf16, after attn_norm) -> out[n][hidden]. */
static void attention(const ref_model *r, const ref_block *b, ref_layer_state *ls, const float *x,
                      int64_t n, float *out)
{
    const dsv4_config *c = &r->cfg;
    int64_t pos0 = ls->pos;
    int H = c->num_attention_heads, hd = c->head_dim, rd = c->qk_rope_head_dim;
    int W = c->sliding_window, ratio = b->ratio, D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    int64_t *pos = NEW(int64_t, n);
    for (int64_t t = 0; t < n; t++) pos[t] = pos0 + t;

    /* q: wq_a -> q_norm -> wq_b -> per-head RMS scaling in bf16 -> RoPE */
    float *qr = NEW(float, n * c->q_lora_rank);
    ref_linear(&b->wq_a, x, n, qr);
    ref_rmsnorm(qr, b->q_norm, n, c->q_lora_rank, eps, qr);
    float *q = NEW(float, n * H * hd);
    ref_linear(&b->wq_b, qr, n, q);
    for (int64_t i = 0; i < n * H; i++) {
        /* q *= rsqrt(q.square().mean(-1) + eps), every step a bf16 tensor op */
        float *v = q + i * hd, ss = 0;
        for (int d = 0; d < hd; d++) ss += bf(v[d] * v[d]);
        float rs = bf(1.0f / sqrtf(bf(bf(ss / (float)hd) + eps)));
        for (int d = 0; d < hd; d++) v[d] = bf(v[d] * rs);
    }
    ref_rope_apply(b->rope, q, n, pos, H, hd, H * hd, hd - rd, 0);

    /* kv: wkv -> kv_norm -> RoPE -> FP8 quant-dequant of the non-rope dims */
    float *kv = NEW(float, n * hd);
    ref_linear(&b->wkv, x, n, kv);
    ref_rmsnorm(kv, b->kv_norm, n, hd, eps, kv);
    ref_rope_apply(b->rope, kv, n, pos, 1, hd, hd, hd - rd, 0);
    ref_act_quant(kv, n, hd - rd, hd, 64);

    /* compressed entries (and indexer keys) that this chunk completes */
    int ih = c->index_n_heads, ihd = c->index_head_dim;
    float *iq = NULL, *iw = NULL, *iscore = NULL;
    int64_t *isel = NULL;
    if (ratio) {
        run_compressor(r, &b->comp, &ls->cs, x, n, pos0, b->rope, &ls->comp, &ls->n_comp,
                       &ls->cap_comp);
    }
    if (b->has_idx) {
        iq = NEW(float, n * ih * ihd);
        ref_linear(&b->idx_wq_b, qr, n, iq);
        ref_rope_apply(b->rope, iq, n, pos, ih, ihd, ih * ihd, ihd - rd, 0);
        ref_hadamard(iq, n * ih, ihd);
        ref_fp4_act_quant(iq, n * ih, ihd);
        run_compressor(r, &b->icomp, &ls->ics, x, n, pos0, b->rope, &ls->ikv, &ls->n_ikv,
                       &ls->cap_ikv);
        iw = NEW(float, n * ih);
        ref_linear(&b->idx_wproj, x, n, iw);
        float wscale = (float)(pow((double)ihd, -0.5) * pow((double)ih, -0.5));
        for (int64_t i = 0; i < n * ih; i++) iw[i] = bf(iw[i] * wscale);
        iscore = NEW(float, ls->n_ikv + 1);
        isel = NEW(int64_t, c->index_topk);
    }

    /* sparse attention per token over its canonical key list */
    int64_t max_keys = W + (ratio ? ls->n_comp : 0);
    const float **keys = NEW(const float *, max_keys);
    float *o = NEW(float, n * H * hd);
    float scale = (float)pow((double)hd, -0.5);
    for (int64_t t = 0; t < n; t++) {
        int64_t p = pos0 + t, nk = 0;
        int64_t first = p - W + 1 < 0 ? 0 : p - W + 1;
        for (int64_t pp = first; pp <= p; pp++)
            keys[nk++] = pp >= pos0 ? kv + (pp - pos0) * hd : ls->ring + (pp % W) * hd;
        while (nk < W) keys[nk++] = NULL;
        if (ratio) {
            int64_t nvis = (p + 1) / ratio;
            if (b->has_idx) {
                int k = ref_indexer_select(iq + t * ih * ihd, iw + t * ih, ih, ihd, ls->ikv, nvis,
                                           c->index_topk, iscore, isel);
                for (int i = 0; i < k; i++) keys[nk++] = ls->comp + isel[i] * hd;
            } else {
                for (int64_t e = 0; e < nvis; e++) keys[nk++] = ls->comp + e * hd;
            }
        }
        ref_sparse_attn(q + t * H * hd, H, hd, keys, (int)nk, b->attn_sink, scale, o + t * H * hd);
    }
    /* the window ring after the chunk */
    for (int64_t pp = pos0 + n - W < pos0 ? pos0 : pos0 + n - W; pp < pos0 + n; pp++)
        memcpy(ls->ring + (pp % W) * hd, kv + (pp - pos0) * hd, (size_t)hd * sizeof(float));

    /* inverse RoPE, then wo_a per group (bf16 einsum with the dequantized
       weight, no act quant: model.py uses wo_a as bf16), then wo_b */
    ref_rope_apply(b->rope, o, n, pos, H, hd, H * hd, hd - rd, 1);
    int G = c->o_groups, R = c->o_lora_rank, dg = H * hd / G;
    float *og = NEW(float, n * G * R);
    for (int64_t t = 0; t < n; t++)
        for (int g = 0; g < G; g++) {
            const float *ov = o + t * H * hd + g * dg;
            for (int rr = 0; rr < R; rr++) {
                const float *wr = b->wo_a.w + (int64_t)(g * R + rr) * dg;
                float s = 0;
                for (int d = 0; d < dg; d++) s += ov[d] * wr[d];
                og[(t * G + g) * R + rr] = bf(s);
            }
        }
    ref_linear(&b->wo_b, og, n, out);
    (void)D;
    free(og);
    free(o);
    free(keys);
    free(iq);
    free(iw);
    free(iscore);
    free(isel);
    free(kv);
    free(q);
    free(qr);
    free(pos);
}

/* ------------------------------------------------------------ MoE */

/* One expert (Expert.forward) on rows x[n][hidden]: bf16 out[n][hidden].
 * weights NULL for the shared expert. */
static void expert(const dsv4_config *c, const ref_weight *w1, const ref_weight *w2,
                   const ref_weight *w3, const float *x, int64_t n, const float *weights,
                   float *out)
{
    int I = c->moe_intermediate_size;
    float lim = (float)c->swiglu_limit;
    float *g = NEW(float, n * I), *u = NEW(float, n * I);
    ref_linear(w1, x, n, g);
    ref_linear(w3, x, n, u);
    for (int64_t t = 0; t < n; t++)
        for (int i = 0; i < I; i++) {
            float gv = g[t * I + i], uv = u[t * I + i];
            if (lim > 0) {
                uv = uv < -lim ? -lim : uv > lim ? lim : uv;
                gv = gv > lim ? lim : gv;
            }
            float a = gv / (1.0f + expf(-gv)) * uv;
            if (weights) a = weights[t] * a;
            g[t * I + i] = bf(a);
        }
    ref_linear(w2, g, n, out);
    free(g);
    free(u);
}

/* MoE.forward on x[n][hidden] (bf16, after ffn_norm) -> out[n][hidden] bf16. */
static void moe(const ref_model *r, const ref_block *b, const int32_t *tokens, const float *x,
                int64_t n, float *out)
{
    const dsv4_config *c = &r->cfg;
    int E = c->n_routed_experts, K = c->num_experts_per_tok, D = c->hidden_size;
    float *logits = NEW(float, n * E);
    ref_linear_f32_t(b->gate_wt, E, D, x, n, logits);
    int *ex = NEW(int, n * K);
    float *wt = NEW(float, n * K);
    for (int64_t t = 0; t < n; t++) {
        const int64_t *row = NULL;
        if (b->hash) {
            int32_t tok = tokens[t];
            if (tok < 0 || tok >= c->vocab_size) tok = 0;
            row = b->tid2eid + (int64_t)tok * K;
        }
        ref_moe_gate(c, logits + t * E, b->gate_bias, row, ex + t * K, wt + t * K);
    }
    float *y = NEW(float, n * D);
    memset(y, 0, (size_t)n * (size_t)D * sizeof(float));
    float *xs = NEW(float, n * D), *ys = NEW(float, n * D), *ws = NEW(float, n);
    int64_t *rows = NEW(int64_t, n);
    /* experts in index order, as MoE.forward's loop adds them into y */
    for (int e = 0; e < E; e++) {
        int64_t m = 0;
        for (int64_t t = 0; t < n; t++)
            for (int k = 0; k < K; k++)
                if (ex[t * K + k] == e) {
                    rows[m] = t;
                    ws[m] = wt[t * K + k];
                    memcpy(xs + m * D, x + t * D, (size_t)D * sizeof(float));
                    m++;
                }
        if (!m) continue;
        expert(c, &b->w1[e], &b->w2[e], &b->w3[e], xs, m, ws, ys);
        for (int64_t i = 0; i < m; i++)
            for (int d = 0; d < D; d++) y[rows[i] * D + d] += ys[i * D + d];
    }
    expert(c, &b->sw1, &b->sw2, &b->sw3, x, n, NULL, ys);
    for (int64_t i = 0; i < n * D; i++) out[i] = bf(y[i] + ys[i]);
    free(rows);
    free(ws);
    free(xs);
    free(ys);
    free(y);
    free(wt);
    free(ex);
    free(logits);
}

/* ------------------------------------------------------------ blocks */

/* Block.forward: x[n][hc][hidden] -> out (may alias x). */
static void block_forward(const ref_model *r, const ref_block *b, ref_layer_state *ls,
                          const int32_t *tokens, int64_t n, const float *x, float *out)
{
    const dsv4_config *c = &r->cfg;
    int hc = c->hc_mult, D = c->hidden_size;
    float eps = (float)c->rms_norm_eps, hce = (float)c->hc_eps;
    float *res = NEW(float, n * hc * D), *a = NEW(float, n * D), *f = NEW(float, n * D);
    float *post = NEW(float, n * hc), *comb = NEW(float, n * hc * hc);
    memcpy(res, x, (size_t)n * hc * D * sizeof(float));

    ref_hc_pre_t(res, n, hc, D, b->hc_attn_fn, b->hc_attn_scale, b->hc_attn_base,
               c->hc_sinkhorn_iters, eps, hce, a, post, comb);
    ref_rmsnorm(a, b->attn_norm, n, D, eps, a);
    attention(r, b, ls, a, n, f);
    ref_hc_post(f, res, post, comb, n, hc, D, out);

    memcpy(res, out, (size_t)n * hc * D * sizeof(float));
    ref_hc_pre_t(res, n, hc, D, b->hc_ffn_fn, b->hc_ffn_scale, b->hc_ffn_base,
               c->hc_sinkhorn_iters, eps, hce, a, post, comb);
    ref_rmsnorm(a, b->ffn_norm, n, D, eps, a);
    moe(r, b, tokens, a, n, f);
    ref_hc_post(f, res, post, comb, n, hc, D, out);
    ls->pos += n;
    free(res);
    free(a);
    free(f);
    free(post);
    free(comb);
}

void ref_embed(const ref_model *r, const int32_t *tokens, int64_t n, float *x)
{
    const dsv4_config *c = &r->cfg;
    int hc = c->hc_mult, D = c->hidden_size;
    for (int64_t t = 0; t < n; t++) {
        int32_t tok = tokens[t];
        if (tok < 0 || tok >= c->vocab_size) tok = 0;
        for (int j = 0; j < hc; j++)
            memcpy(x + (t * hc + j) * D, r->embed + (int64_t)tok * D, (size_t)D * sizeof(float));
    }
}

/* ParallelHead.forward at every position: hc_head -> norm -> f32 logits. */
static void head(const ref_model *r, const float *fn, const float *scale, const float *base,
                 const float *norm_w, const float *h, int64_t n, float *logits)
{
    const dsv4_config *c = &r->cfg;
    int D = c->hidden_size;
    float *y = NEW(float, n * D);
    ref_hc_head_t(h, n, c->hc_mult, D, fn, scale, base, (float)c->rms_norm_eps, (float)c->hc_eps, y);
    ref_rmsnorm(y, norm_w, n, D, (float)c->rms_norm_eps, y);
    ref_linear_f32_t(r->head_t, c->vocab_size, D, y, n, logits);
    free(y);
}

int ref_seq_forward(ref_seq *s, const int32_t *tokens, int64_t n, float *logits, float *h_out)
{
    ref_model *r = s->r;
    const dsv4_config *c = &r->cfg;
    if (n <= 0) return -1;
    float *x = NEW(float, n * c->hc_mult * c->hidden_size);
    ref_embed(r, tokens, n, x);
    for (int l = 0; l < c->num_hidden_layers; l++)
        block_forward(r, &r->blocks[l], &s->ls[l], tokens, n, x, x);
    if (h_out) memcpy(h_out, x, (size_t)n * c->hc_mult * c->hidden_size * sizeof(float));
    if (logits) head(r, r->hc_head_fn, r->hc_head_scale, r->hc_head_base, r->norm, x, n, logits);
    s->pos += n;
    free(x);
    return 0;
}

int ref_seq_block(ref_seq *s, int layer, const int32_t *tokens, int64_t n, const float *x,
                  float *out)
{
    ref_model *r = s->r;
    if (layer < 0 || layer >= r->cfg.num_hidden_layers || n <= 0) return -1;
    block_forward(r, &r->blocks[layer], &s->ls[layer], tokens, n, x, out);
    return 0;
}

int ref_seq_mtp(ref_seq *s, const int32_t *next_tokens, int64_t n, const float *h, float *logits)
{
    ref_model *r = s->r;
    const dsv4_config *c = &r->cfg;
    if (c->num_nextn_predict_layers < 1 || n <= 0) return -1;
    int L = c->num_hidden_layers, hc = c->hc_mult, D = c->hidden_size;
    const ref_block *b = &r->blocks[L];
    float eps = (float)c->rms_norm_eps;
    float *e = NEW(float, n * D), *ep = NEW(float, n * D);
    float *hn = NEW(float, n * hc * D), *hp = NEW(float, n * hc * D);
    for (int64_t t = 0; t < n; t++) {
        int32_t tok = next_tokens[t];
        if (tok < 0 || tok >= c->vocab_size) tok = 0;
        memcpy(e + t * D, r->embed + (int64_t)tok * D, (size_t)D * sizeof(float));
    }
    /* MTPBlock.forward: enorm(embed), hnorm(h), e_proj(e) + h_proj(h) in bf16 */
    ref_rmsnorm(e, b->enorm, n, D, eps, e);
    ref_rmsnorm(h, b->hnorm, n * hc, D, eps, hn);
    ref_linear(&b->e_proj, e, n, ep);
    ref_linear(&b->h_proj, hn, n * hc, hp);
    for (int64_t t = 0; t < n; t++)
        for (int j = 0; j < hc; j++)
            for (int d = 0; d < D; d++)
                hp[(t * hc + j) * D + d] = bf(ep[t * D + d] + hp[(t * hc + j) * D + d]);
    block_forward(r, b, &s->ls[L], next_tokens, n, hp, hp);
    head(r, b->hc_head_fn, b->hc_head_scale, b->hc_head_base, b->norm, hp, n, logits);
    free(e);
    free(ep);
    free(hn);
    free(hp);
    return 0;
}

int ref_seq_attention(ref_seq *s, int block, const float *x, int64_t n, float *out)
{
    ref_model *r = s->r;
    if (block < 0 || block >= r->n_blocks || n <= 0) return -1;
    ref_layer_state *ls = &s->ls[block];
    attention(r, &r->blocks[block], ls, x, n, out);
    ls->pos += n; /* block_forward does this for whole blocks */
    return 0;
}

int ref_model_moe(const ref_model *r, int block, const int32_t *tokens, const float *x, int64_t n,
                  float *out)
{
    if (block < 0 || block >= r->n_blocks || n <= 0) return -1;
    moe(r, &r->blocks[block], tokens, x, n, out);
    return 0;
}
