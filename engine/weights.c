/* engine/weights.c: a model directory -> dsv4_model, every tensor checked.
 *
 * The expected tensor set is derived from the config alone, following the
 * parameter names of the official inference/model.py (which are the names of
 * the released checkpoint): per block attn.{wq_a,q_norm,wq_b,wkv,kv_norm,
 * wo_a,wo_b,attn_sink}, the compressor and indexer on compressed layers,
 * ffn.{gate,experts.E.w1/w2/w3,shared_experts}, hc_{attn,ffn}_{fn,base,scale},
 * attn_norm/ffn_norm; then embed, head, norm, hc_head_*, and mtp.N.* with
 * e_proj/h_proj/enorm/hnorm/norm/hc_head_*. Each is required with the exact
 * dtype and shape; a missing or wrong one is an error naming the tensor and
 * its file. Tensors the forward pass does not use are ignored.
 *
 * The fingerprint is SHA-256 over config.json's bytes and, per tensor in name
 * order, its name, dtype, shape and byte count, plus the first and last 4 KiB
 * of its bytes, plus each file's size. Hashing every byte of a 149 GB
 * checkpoint at each open would take minutes; names/shapes/sizes plus samples
 * change whenever a checkpoint is replaced by a different one in practice
 * (different training step, different quantization), which is what the prefix
 * cache needs to key on. A bit flip in the middle of a tensor is not seen. */
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"

typedef struct ctx {
    const dsv4_config *cfg;
    const dsv4_st_set *st;
    const char *where; /* file named for missing tensors */
    char *err;
    size_t errlen;
} ctx;

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t u = 0;
    u += (size_t)snprintf(buf + u, len - u, "[");
    for (int i = 0; i < ndim && u < len; i++)
        u += (size_t)snprintf(buf + u, len - u, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (u < len) snprintf(buf + u, len - u, "]");
}

/* Requires tensor `name` with dtype dt and shape dims[0..ndim). */
static int req(ctx *c, dsv4_tensor *out, dsv4_dtype dt, int ndim, int64_t d0, int64_t d1,
               const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t want[2] = {d0, d1};
    char ws[64], hs[64];
    shape_str(ws, sizeof ws, ndim, want);
    const dsv4_tensor *t = dsv4_st_find(c->st, name);
    if (!t) {
        snprintf(c->err, c->errlen, "%s: tensor '%s' missing (expected %s %s)", c->where, name,
                 dsv4_dtype_name(dt), ws);
        return DSV4_EINVAL;
    }
    if (t->dtype != dt) {
        snprintf(c->err, c->errlen, "%s: tensor '%s' has dtype %s, expected %s", t->file, name,
                 dsv4_dtype_name(t->dtype), dsv4_dtype_name(dt));
        return DSV4_EINVAL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (!ok) {
        shape_str(hs, sizeof hs, t->ndim, t->shape);
        snprintf(c->err, c->errlen, "%s: tensor '%s' has shape %s, expected %s", t->file, name,
                 hs, ws);
        return DSV4_EINVAL;
    }
    if (out) *out = *t;
    return 0;
}

enum { LIN_DENSE, LIN_QUANT, LIN_EXPERT };

/* A linear weight "<prefix>.weight" (+ "<prefix>.scale") of logical [out][in].
 * kind: LIN_DENSE always BF16; LIN_QUANT FP8 when quantization_config says so;
 * LIN_EXPERT FP4 when expert_dtype is fp4, else like LIN_QUANT. */
static int lin(ctx *c, dsv4_weight *w, int kind, int64_t out, int64_t in, const char *prefix)
{
    memset(w, 0, sizeof *w);
    w->out = out;
    w->in = in;
    int q = DSV4_WQ_BF16;
    if (kind == LIN_EXPERT && c->cfg->expert_fp4) q = DSV4_WQ_FP4;
    else if (kind != LIN_DENSE && c->cfg->quant_fp8) q = DSV4_WQ_FP8;
    w->q = (dsv4_wq)q;
    if (q == DSV4_WQ_BF16) return req(c, &w->w, DSV4_DT_BF16, 2, out, in, "%s.weight", prefix);
    if (q == DSV4_WQ_FP8) {
        if (req(c, &w->w, DSV4_DT_F8_E4M3, 2, out, in, "%s.weight", prefix) < 0) return DSV4_EINVAL;
        return req(c, &w->scale, DSV4_DT_F8_E8M0, 2, (out + 127) / 128, (in + 127) / 128,
                   "%s.scale", prefix);
    }
    if (in % 32) {
        snprintf(c->err, c->errlen, "%s.weight: FP4 input size %lld is not a multiple of 32",
                 prefix, (long long)in);
        return DSV4_EINVAL;
    }
    if (req(c, &w->w, DSV4_DT_I8, 2, out, in / 2, "%s.weight", prefix) < 0) return DSV4_EINVAL;
    return req(c, &w->scale, DSV4_DT_F8_E8M0, 2, out, in / 32, "%s.scale", prefix);
}

static int hc(ctx *c, dsv4_hc_w *h, int head, const char *pfx, const char *site)
{
    const dsv4_config *k = c->cfg;
    int64_t mix = head ? k->hc_mult : (int64_t)(2 + k->hc_mult) * k->hc_mult;
    int64_t hcd = (int64_t)k->hc_mult * k->hidden_size;
    if (req(c, &h->fn, DSV4_DT_F32, 2, mix, hcd, "%shc_%s_fn", pfx, site) < 0) return DSV4_EINVAL;
    if (req(c, &h->base, DSV4_DT_F32, 1, mix, 0, "%shc_%s_base", pfx, site) < 0) return DSV4_EINVAL;
    return req(c, &h->scale, DSV4_DT_F32, 1, head ? 1 : 3, 0, "%shc_%s_scale", pfx, site);
}

static int compressor(ctx *c, dsv4_compressor_w *w, int ratio, int head_dim, int rotate,
                      const char *pfx)
{
    const dsv4_config *k = c->cfg;
    w->ratio = ratio;
    w->head_dim = head_dim;
    w->overlap = ratio == 4;
    w->rotate = rotate;
    int64_t coff = 1 + w->overlap;
    char p[256];
    snprintf(p, sizeof p, "%s.wkv", pfx);
    if (lin(c, &w->wkv, LIN_DENSE, coff * head_dim, k->hidden_size, p) < 0) return DSV4_EINVAL;
    snprintf(p, sizeof p, "%s.wgate", pfx);
    if (lin(c, &w->wgate, LIN_DENSE, coff * head_dim, k->hidden_size, p) < 0) return DSV4_EINVAL;
    if (req(c, &w->ape, DSV4_DT_F32, 2, ratio, coff * head_dim, "%s.ape", pfx) < 0)
        return DSV4_EINVAL;
    return req(c, &w->norm, DSV4_DT_BF16, 1, head_dim, 0, "%s.norm.weight", pfx);
}

static int check_tid2eid(ctx *c, const dsv4_tensor *t)
{
    for (int64_t i = 0; i < t->shape[0] * t->shape[1]; i++) {
        int64_t e;
        memcpy(&e, t->data + i * 8, 8);
        if (e < 0 || e >= c->cfg->n_routed_experts) {
            snprintf(c->err, c->errlen, "%s: tensor '%s': entry %lld = %lld is not an expert in "
                     "[0, %d)", t->file, t->name, (long long)i, (long long)e,
                     c->cfg->n_routed_experts);
            return DSV4_EINVAL;
        }
    }
    return 0;
}

static int block(ctx *c, dsv4_block_w *b, int layer_id, int is_mtp, const char *pfx)
{
    const dsv4_config *k = c->cfg;
    char p[256];
    int64_t H = k->hidden_size, nh = k->num_attention_heads, hd = k->head_dim;
    memset(b, 0, sizeof *b);
    b->layer_id = layer_id;
    b->is_mtp = is_mtp;
#define P(...) (snprintf(p, sizeof p, __VA_ARGS__), p)
    if (req(c, &b->attn_norm, DSV4_DT_BF16, 1, H, 0, "%sattn_norm.weight", pfx) < 0) goto fail;
    if (req(c, &b->ffn_norm, DSV4_DT_BF16, 1, H, 0, "%sffn_norm.weight", pfx) < 0) goto fail;
    if (hc(c, &b->hc_attn, 0, pfx, "attn") < 0 || hc(c, &b->hc_ffn, 0, pfx, "ffn") < 0) goto fail;

    dsv4_attn_w *a = &b->attn;
    a->compress_ratio = k->compress_ratios[layer_id];
    if (req(c, &a->attn_sink, DSV4_DT_F32, 1, nh, 0, "%sattn.attn_sink", pfx) < 0) goto fail;
    if (lin(c, &a->wq_a, LIN_QUANT, k->q_lora_rank, H, P("%sattn.wq_a", pfx)) < 0) goto fail;
    if (req(c, &a->q_norm, DSV4_DT_BF16, 1, k->q_lora_rank, 0, "%sattn.q_norm.weight", pfx) < 0)
        goto fail;
    if (lin(c, &a->wq_b, LIN_QUANT, nh * hd, k->q_lora_rank, P("%sattn.wq_b", pfx)) < 0) goto fail;
    if (lin(c, &a->wkv, LIN_QUANT, hd, H, P("%sattn.wkv", pfx)) < 0) goto fail;
    if (req(c, &a->kv_norm, DSV4_DT_BF16, 1, hd, 0, "%sattn.kv_norm.weight", pfx) < 0) goto fail;
    if (lin(c, &a->wo_a, LIN_QUANT, (int64_t)k->o_groups * k->o_lora_rank, nh * hd / k->o_groups,
            P("%sattn.wo_a", pfx)) < 0)
        goto fail;
    if (lin(c, &a->wo_b, LIN_QUANT, H, (int64_t)k->o_groups * k->o_lora_rank,
            P("%sattn.wo_b", pfx)) < 0)
        goto fail;
    if (a->compress_ratio) {
        a->has_compressor = 1;
        if (compressor(c, &a->compressor, a->compress_ratio, (int)hd, 0,
                       P("%sattn.compressor", pfx)) < 0)
            goto fail;
        if (a->compress_ratio == 4) {
            a->has_indexer = 1;
            dsv4_indexer_w *ix = &a->indexer;
            if (lin(c, &ix->wq_b, LIN_QUANT, (int64_t)k->index_n_heads * k->index_head_dim,
                    k->q_lora_rank, P("%sattn.indexer.wq_b", pfx)) < 0)
                goto fail;
            if (lin(c, &ix->weights_proj, LIN_DENSE, k->index_n_heads, H,
                    P("%sattn.indexer.weights_proj", pfx)) < 0)
                goto fail;
            if (compressor(c, &ix->compressor, 4, k->index_head_dim, 1,
                           P("%sattn.indexer.compressor", pfx)) < 0)
                goto fail;
        }
    }

    dsv4_ffn_w *f = &b->ffn;
    int64_t E = k->n_routed_experts, I = k->moe_intermediate_size;
    f->hash = layer_id < k->num_hash_layers;
    if (lin(c, &f->gate, LIN_DENSE, E, H, P("%sffn.gate", pfx)) < 0) goto fail;
    if (f->hash) {
        if (req(c, &f->tid2eid, DSV4_DT_I64, 2, k->vocab_size, k->num_experts_per_tok,
                "%sffn.gate.tid2eid", pfx) < 0)
            goto fail;
        if (check_tid2eid(c, &f->tid2eid) < 0) goto fail;
    } else if (req(c, &f->gate_bias, DSV4_DT_F32, 1, E, 0, "%sffn.gate.bias", pfx) < 0) {
        goto fail;
    }
    f->experts = calloc((size_t)E, sizeof *f->experts);
    if (!f->experts) {
        snprintf(c->err, c->errlen, "out of memory");
        return DSV4_ENOMEM;
    }
    for (int64_t e = 0; e < E; e++) {
        dsv4_expert_w *x = &f->experts[e];
        if (lin(c, &x->w1, LIN_EXPERT, I, H, P("%sffn.experts.%lld.w1", pfx, (long long)e)) < 0 ||
            lin(c, &x->w2, LIN_EXPERT, H, I, P("%sffn.experts.%lld.w2", pfx, (long long)e)) < 0 ||
            lin(c, &x->w3, LIN_EXPERT, I, H, P("%sffn.experts.%lld.w3", pfx, (long long)e)) < 0)
            goto fail;
    }
    if (lin(c, &f->shared.w1, LIN_QUANT, I, H, P("%sffn.shared_experts.w1", pfx)) < 0 ||
        lin(c, &f->shared.w2, LIN_QUANT, H, I, P("%sffn.shared_experts.w2", pfx)) < 0 ||
        lin(c, &f->shared.w3, LIN_QUANT, I, H, P("%sffn.shared_experts.w3", pfx)) < 0)
        goto fail;

    if (is_mtp) {
        if (lin(c, &b->e_proj, LIN_QUANT, H, H, P("%se_proj", pfx)) < 0) goto fail;
        if (lin(c, &b->h_proj, LIN_QUANT, H, H, P("%sh_proj", pfx)) < 0) goto fail;
        if (req(c, &b->enorm, DSV4_DT_BF16, 1, H, 0, "%senorm.weight", pfx) < 0) goto fail;
        if (req(c, &b->hnorm, DSV4_DT_BF16, 1, H, 0, "%shnorm.weight", pfx) < 0) goto fail;
        if (req(c, &b->norm, DSV4_DT_BF16, 1, H, 0, "%snorm.weight", pfx) < 0) goto fail;
        if (hc(c, &b->hc_head, 1, pfx, "head") < 0) goto fail;
    }
#undef P
    return 0;
fail:
    return DSV4_EINVAL;
}

static void free_blocks(dsv4_block_w *b, int n)
{
    if (!b) return;
    for (int i = 0; i < n; i++) free(b[i].ffn.experts);
    free(b);
}

static int build(ctx *c, dsv4_model *m)
{
    const dsv4_config *k = c->cfg;
    char pfx[64];
    int64_t H = k->hidden_size;
    m->layers = calloc((size_t)k->num_hidden_layers, sizeof *m->layers);
    m->mtp = calloc((size_t)k->num_nextn_predict_layers + 1, sizeof *m->mtp);
    if (!m->layers || !m->mtp) {
        snprintf(c->err, c->errlen, "out of memory");
        return DSV4_ENOMEM;
    }
    if (req(c, &m->embed, DSV4_DT_BF16, 2, k->vocab_size, H, "embed.weight") < 0) return DSV4_EINVAL;
    if (req(c, &m->head, DSV4_DT_BF16, 2, k->vocab_size, H, "head.weight") < 0) return DSV4_EINVAL;
    if (req(c, &m->norm, DSV4_DT_BF16, 1, H, 0, "norm.weight") < 0) return DSV4_EINVAL;
    if (hc(c, &m->hc_head, 1, "", "head") < 0) return DSV4_EINVAL;
    for (int i = 0; i < k->num_hidden_layers; i++) {
        snprintf(pfx, sizeof pfx, "layers.%d.", i);
        int rc = block(c, &m->layers[i], i, 0, pfx);
        if (rc < 0) return rc;
    }
    for (int i = 0; i < k->num_nextn_predict_layers; i++) {
        snprintf(pfx, sizeof pfx, "mtp.%d.", i);
        int rc = block(c, &m->mtp[i], k->num_hidden_layers + i, 1, pfx);
        if (rc < 0) return rc;
    }
    return 0;
}

int dsv4_model_check(const dsv4_config *cfg, const dsv4_st_set *st, char *err, size_t errlen)
{
    dsv4_model *m = calloc(1, sizeof *m);
    if (!m) return DSV4_ENOMEM;
    ctx c = {cfg, st, "model.safetensors", err, errlen};
    int rc = build(&c, m);
    free_blocks(m->layers, cfg->num_hidden_layers);
    free_blocks(m->mtp, cfg->num_nextn_predict_layers);
    free(m);
    return rc;
}

static int fingerprint(dsv4_model *m, const char *config_path, char *err, size_t errlen)
{
    int rc = DSV4_EIO;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    FILE *f = NULL;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        snprintf(err, errlen, "SHA-256 unavailable");
        goto fail;
    }
    f = fopen(config_path, "rb");
    if (!f) {
        snprintf(err, errlen, "config.json: %s", strerror(errno));
        goto fail;
    }
    uint8_t buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(md, buf, n);
    for (size_t i = 0; i < dsv4_st_count(m->st); i++) {
        const dsv4_tensor *t = dsv4_st_at(m->st, i);
        char line[512];
        int len = snprintf(line, sizeof line, "\n%s %s %d %llu", t->name, dsv4_dtype_name(t->dtype),
                           t->ndim, (unsigned long long)t->nbytes);
        EVP_DigestUpdate(md, line, (size_t)len);
        for (int d = 0; d < t->ndim; d++) {
            len = snprintf(line, sizeof line, " %lld", (long long)t->shape[d]);
            EVP_DigestUpdate(md, line, (size_t)len);
        }
        size_t head = t->nbytes < 4096 ? (size_t)t->nbytes : 4096;
        EVP_DigestUpdate(md, t->data, head);
        if (t->nbytes > 4096) {
            size_t tail = t->nbytes - 4096 < 4096 ? (size_t)(t->nbytes - 4096) : 4096;
            EVP_DigestUpdate(md, t->data + t->nbytes - tail, tail);
        }
    }
    unsigned int outlen = 0;
    if (EVP_DigestFinal_ex(md, m->fingerprint, &outlen) != 1 || outlen != 32) {
        snprintf(err, errlen, "SHA-256 failed");
        goto fail;
    }
    rc = 0;
fail:
    if (f) fclose(f);
    EVP_MD_CTX_free(md);
    return rc;
}

void dsv4_model_free(dsv4_model *m)
{
    if (!m) return;
    free_blocks(m->layers, m->cfg.num_hidden_layers);
    free_blocks(m->mtp, m->cfg.num_nextn_predict_layers);
    dsv4_st_close(m->st);
    free(m);
}

int dsv4_model_load(const char *dir, dsv4_model **out, char *err, size_t errlen)
{
    char path[PATH_MAX];
    *out = NULL;
    dsv4_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return DSV4_ENOMEM;
    }
    int rc;
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        rc = DSV4_EINVAL;
        goto fail;
    }
    if ((rc = dsv4_config_load(path, &m->cfg, m->notes, sizeof m->notes, err, errlen)) < 0)
        goto fail;
    if ((rc = dsv4_st_open_dir(dir, &m->st, err, errlen)) < 0) goto fail;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    ctx c = {&m->cfg, m->st, "model.safetensors", err, errlen};
    FILE *idx = fopen(path, "rb");
    if (idx) {
        c.where = "model.safetensors.index.json";
        fclose(idx);
    }
    if ((rc = build(&c, m)) < 0) goto fail;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = fingerprint(m, path, err, errlen)) < 0) goto fail;
    *out = m;
    return 0;
fail:
    dsv4_model_free(m);
    return rc;
}
