/* engine/bench_weights.c: an engine opened from a config.json alone, with
 * deterministic pseudo-random weights made on the GPU (dsv4_engine_open_
 * synthetic of dsv4_engine.h), for `dsv4-batch bench`.
 *
 * The benchmark must run the real DeepSeek-V4 sizes (V4-Flash: 43 layers,
 * ~150 GB of weights) on machines that hold no checkpoint, so the model is a
 * dsv4_model whose tensors have the release's dtypes and shapes but no file
 * data. engine/forward.c's upload sees such a tensor (name set, data NULL),
 * allocates its arena space exactly as for a real one and calls
 * bench_fill_tensor, which writes values of the right format and a sane
 * magnitude with one small compute shader (shaders/fill_random.comp). So the
 * arenas, bindings and kernels the bench times are those of a real model.
 *
 * A whole V4-Flash does not fit one 80 GB GPU. With max_layers <= 0 the
 * number of layers is chosen from the device-local heap budget
 * (VK_EXT_memory_budget when present, else 90% of the heap) after the fixed
 * tensors, the scratch and a per-layer reserve for sequence state. The
 * layers kept are a stratified sample of the config's layers: each kind
 * (compress ratio 0, 4, 128) keeps its share, spread evenly over depth, so a
 * caller can scale the measured time per layer to the whole model. The
 * choice is written into err on success (see the contract). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/bench.h"

typedef struct { uint32_t lead, nbytes, mode, seed, aux0, aux1; float base, amp; } pc_fill;
_Static_assert(sizeof(pc_fill) == 32, "fill_random push constants");

enum { FILL_BF16, FILL_F32, FILL_E4M3, FILL_E8M0, FILL_BYTES, FILL_EID };

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

static uint32_t fnv32(const char *s)
{
    uint32_t h = 2166136261u;
    for (; s && *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* ------------------------------------------------------------ the fill */

int bench_fill_tensor(dsv4_engine *e, vkview dst, const dsv4_tensor *t, char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    const char *name = t->name ? t->name : "?";
    pc_fill pc = {0};
    const float r3 = 1.7320508f; /* uniform in [-a, a] has std a / sqrt(3) */
    int64_t in = t->ndim == 2 ? t->shape[1] : 1;
    switch (t->dtype) {
    case DSV4_DT_BF16:
        pc.mode = FILL_BF16;
        if (t->ndim == 1) { /* RMSNorm weights, as synth.c: 1 +- 0.05 */
            pc.base = 1.0f;
            pc.amp = 0.05f * r3;
        } else if (strcmp(name, "embed.weight") == 0) {
            pc.amp = r3;
        } else { /* a linear layer: std 1/sqrt(in) keeps outputs O(1) */
            pc.amp = r3 / sqrtf((float)in);
        }
        break;
    case DSV4_DT_F32:
        pc.mode = FILL_F32;
        if (ends_with(name, "_scale")) pc.base = 1.0f;
        else if (ends_with(name, "_fn") || ends_with(name, "bias")) pc.amp = 0.01f * r3;
        else pc.amp = 0.1f * r3; /* hc base, attn_sink, ape */
        break;
    case DSV4_DT_F8_E4M3: {
        /* real weight = code * 2^-7 (the scales); codes with exponents in
           [emax-3, emax] have std ~0.8 * 2^emax; aim at std 1/sqrt(in) */
        int emax = (int)lround(log2(128.0 / (0.8 * sqrt((double)in))));
        int hi = emax + 7;
        if (hi > 14) hi = 14;
        if (hi < 4) hi = 4;
        pc.mode = FILL_E4M3;
        pc.aux0 = (uint32_t)(hi - 3);
        pc.aux1 = (uint32_t)hi;
        break;
    }
    case DSV4_DT_F8_E8M0:
        /* FP8 block scales around 2^-7; FP4 expert scales one lower (random
           e2m1 codes have std ~2.9, so experts come out near 1/sqrt(in)) */
        pc.mode = FILL_E8M0;
        pc.aux0 = strncmp(name, "ffn.experts.", 12) == 0 && c->expert_fp4 ? 118 : 120;
        break;
    case DSV4_DT_I8:
        pc.mode = FILL_BYTES;
        break;
    case DSV4_DT_I64:
        if (t->ndim != 2 || t->shape[1] < 1 || t->shape[1] > c->n_routed_experts) goto unknown;
        pc.mode = FILL_EID;
        pc.aux0 = (uint32_t)c->n_routed_experts;
        pc.aux1 = (uint32_t)t->shape[1];
        break;
    default:
        goto unknown;
    }
    VkDeviceSize a = e->rt.props.limits.minStorageBufferOffsetAlignment;
    if (a < 4) a = 4;
    VkDeviceSize base = dst.off / a * a, lead = dst.off - base;
    if (lead + t->nbytes > 0xfffffff0ull) {
        snprintf(err, errlen, "synthetic weights: tensor '%s' of %llu bytes is too large for one fill", name,
                 (unsigned long long)t->nbytes);
        return DSV4_EINVAL;
    }
    pc.lead = (uint32_t)lead;
    pc.nbytes = (uint32_t)t->nbytes;
    pc.seed = fnv32(name) ^ (uint32_t)(dst.off * 0x9e3779b9u) ^ (uint32_t)(dst.off >> 32);
    vkview v = {dst.buf, base, (lead + t->nbytes + 3) / 4 * 4};
    uint64_t words = (lead + t->nbytes + 3) / 4, groups = (words + 255) / 256;
    int rc = vkrt_begin(&e->rt, err, errlen);
    if (rc) return rc;
    vkrt_op(&e->rt, "synthetic_fill");
    vkrt_dispatch(&e->rt, P_FILL_RANDOM, &v, 1, &pc, sizeof pc, (uint32_t)(groups > 65535 ? 65535 : groups), 1, 1);
    return vkrt_submit_wait(&e->rt, err, errlen);
unknown:
    snprintf(err, errlen, "synthetic weights: no rule to fill tensor '%s' of dtype %s", name,
             dsv4_dtype_name(t->dtype));
    return DSV4_EINVAL;
}

/* ------------------------------------------------------------ the model */

/* Tensor views as engine/weights.c would find them in a release, without
 * data. Names are the release's names without the "layers.N." prefix
 * (static strings: a synthetic model owns no string storage). */
typedef struct builder {
    const dsv4_config *c;
    uint64_t bytes; /* arena bytes of what was built, alignment included */
} builder;

static void tv(builder *b, dsv4_tensor *t, const char *name, dsv4_dtype dt, int64_t d0, int64_t d1)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->file = "synthetic";
    t->dtype = dt;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->nbytes = (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1) * dsv4_dtype_size(dt);
    b->bytes += (t->nbytes + 255) / 256 * 256;
}

enum { LIN_DENSE, LIN_QUANT, LIN_EXPERT };

/* As weights.c lin(): BF16, FP8 with 128x128 block scales, or FP4 with per-32
 * scales, from the config's quantization. */
static void lin(builder *b, dsv4_weight *w, int kind, int64_t out, int64_t in, const char *wname,
                const char *sname)
{
    const dsv4_config *c = b->c;
    memset(w, 0, sizeof *w);
    w->out = out;
    w->in = in;
    w->q = DSV4_WQ_BF16;
    if (kind == LIN_EXPERT && c->expert_fp4) w->q = DSV4_WQ_FP4;
    else if (kind != LIN_DENSE && c->quant_fp8) w->q = DSV4_WQ_FP8;
    if (w->q == DSV4_WQ_BF16) {
        tv(b, &w->w, wname, DSV4_DT_BF16, out, in);
    } else if (w->q == DSV4_WQ_FP8) {
        tv(b, &w->w, wname, DSV4_DT_F8_E4M3, out, in);
        tv(b, &w->scale, sname, DSV4_DT_F8_E8M0, (out + 127) / 128, (in + 127) / 128);
    } else {
        tv(b, &w->w, wname, DSV4_DT_I8, out, in / 2);
        tv(b, &w->scale, sname, DSV4_DT_F8_E8M0, out, in / 32);
    }
}

#define LIN(w, kind, out, in, nm) lin(b, w, kind, out, in, nm ".weight", nm ".scale")

static void hc(builder *b, dsv4_hc_w *h, int head, const char *fn, const char *base, const char *scale)
{
    const dsv4_config *c = b->c;
    int64_t mix = head ? c->hc_mult : (int64_t)(2 + c->hc_mult) * c->hc_mult;
    tv(b, &h->fn, fn, DSV4_DT_F32, mix, (int64_t)c->hc_mult * c->hidden_size);
    tv(b, &h->base, base, DSV4_DT_F32, mix, 0);
    tv(b, &h->scale, scale, DSV4_DT_F32, head ? 1 : 3, 0);
}

static void compressor(builder *b, dsv4_compressor_w *w, int ratio, int hd, int rotate, int indexer)
{
    int64_t coff = ratio == 4 ? 2 : 1, D = b->c->hidden_size;
    w->ratio = ratio;
    w->head_dim = hd;
    w->overlap = ratio == 4;
    w->rotate = rotate;
    if (indexer) {
        LIN(&w->wkv, LIN_DENSE, coff * hd, D, "attn.indexer.compressor.wkv");
        LIN(&w->wgate, LIN_DENSE, coff * hd, D, "attn.indexer.compressor.wgate");
        tv(b, &w->ape, "attn.indexer.compressor.ape", DSV4_DT_F32, ratio, coff * hd);
        tv(b, &w->norm, "attn.indexer.compressor.norm.weight", DSV4_DT_BF16, hd, 0);
    } else {
        LIN(&w->wkv, LIN_DENSE, coff * hd, D, "attn.compressor.wkv");
        LIN(&w->wgate, LIN_DENSE, coff * hd, D, "attn.compressor.wgate");
        tv(b, &w->ape, "attn.compressor.ape", DSV4_DT_F32, ratio, coff * hd);
        tv(b, &w->norm, "attn.compressor.norm.weight", DSV4_DT_BF16, hd, 0);
    }
}

/* One main block as weights.c block() describes it; layer_id is the index in
 * the synthetic config, ratio and hash those of the original layer. */
static int block(builder *b, dsv4_block_w *w, int layer_id, int ratio, int hash)
{
    const dsv4_config *c = b->c;
    int64_t D = c->hidden_size, H = c->num_attention_heads, hd = c->head_dim;
    int64_t E = c->n_routed_experts, I = c->moe_intermediate_size;
    memset(w, 0, sizeof *w);
    w->layer_id = layer_id;
    tv(b, &w->attn_norm, "attn_norm.weight", DSV4_DT_BF16, D, 0);
    tv(b, &w->ffn_norm, "ffn_norm.weight", DSV4_DT_BF16, D, 0);
    hc(b, &w->hc_attn, 0, "hc_attn_fn", "hc_attn_base", "hc_attn_scale");
    hc(b, &w->hc_ffn, 0, "hc_ffn_fn", "hc_ffn_base", "hc_ffn_scale");
    dsv4_attn_w *a = &w->attn;
    a->compress_ratio = ratio;
    tv(b, &a->attn_sink, "attn.attn_sink", DSV4_DT_F32, H, 0);
    LIN(&a->wq_a, LIN_QUANT, c->q_lora_rank, D, "attn.wq_a");
    tv(b, &a->q_norm, "attn.q_norm.weight", DSV4_DT_BF16, c->q_lora_rank, 0);
    LIN(&a->wq_b, LIN_QUANT, H * hd, c->q_lora_rank, "attn.wq_b");
    LIN(&a->wkv, LIN_QUANT, hd, D, "attn.wkv");
    tv(b, &a->kv_norm, "attn.kv_norm.weight", DSV4_DT_BF16, hd, 0);
    LIN(&a->wo_a, LIN_QUANT, (int64_t)c->o_groups * c->o_lora_rank, H * hd / c->o_groups, "attn.wo_a");
    LIN(&a->wo_b, LIN_QUANT, D, (int64_t)c->o_groups * c->o_lora_rank, "attn.wo_b");
    if (ratio) {
        a->has_compressor = 1;
        compressor(b, &a->compressor, ratio, (int)hd, 0, 0);
        if (ratio == 4) {
            a->has_indexer = 1;
            LIN(&a->indexer.wq_b, LIN_QUANT, (int64_t)c->index_n_heads * c->index_head_dim, c->q_lora_rank,
                "attn.indexer.wq_b");
            LIN(&a->indexer.weights_proj, LIN_DENSE, c->index_n_heads, D, "attn.indexer.weights_proj");
            compressor(b, &a->indexer.compressor, 4, c->index_head_dim, 1, 1);
        }
    }
    dsv4_ffn_w *f = &w->ffn;
    f->hash = hash;
    LIN(&f->gate, LIN_DENSE, E, D, "ffn.gate");
    if (hash) tv(b, &f->tid2eid, "ffn.gate.tid2eid", DSV4_DT_I64, c->vocab_size, c->num_experts_per_tok);
    else tv(b, &f->gate_bias, "ffn.gate.bias", DSV4_DT_F32, E, 0);
    f->experts = calloc((size_t)E, sizeof *f->experts);
    if (!f->experts) return DSV4_ENOMEM;
    for (int64_t x = 0; x < E; x++) {
        LIN(&f->experts[x].w1, LIN_EXPERT, I, D, "ffn.experts.w1");
        LIN(&f->experts[x].w2, LIN_EXPERT, D, I, "ffn.experts.w2");
        LIN(&f->experts[x].w3, LIN_EXPERT, I, D, "ffn.experts.w3");
    }
    LIN(&f->shared.w1, LIN_QUANT, I, D, "ffn.shared_experts.w1");
    LIN(&f->shared.w2, LIN_QUANT, D, I, "ffn.shared_experts.w2");
    LIN(&f->shared.w3, LIN_QUANT, I, D, "ffn.shared_experts.w3");
    return 0;
}

/* n of the config's L layers: each compress ratio keeps its share of n
 * (largest remainders), its layers spread evenly over depth; sel[] ascending. */
static void select_layers(const dsv4_config *c, int n, int *sel)
{
    int L = c->num_hidden_layers, kinds[8], count[8], want[8], nk = 0;
    for (int i = 0; i < L; i++) {
        int k = 0;
        while (k < nk && kinds[k] != c->compress_ratios[i]) k++;
        if (k == nk) {
            if (nk == 8) k = 7; /* more than 8 ratios: lump the rest */
            else { kinds[nk] = c->compress_ratios[i]; count[nk++] = 0; }
        }
        count[k]++;
    }
    int given = 0;
    double rem[8];
    for (int k = 0; k < nk; k++) {
        double share = (double)n * count[k] / L;
        want[k] = (int)share;
        rem[k] = share - want[k];
        given += want[k];
    }
    while (given < n) {
        int best = -1;
        for (int k = 0; k < nk; k++)
            if (want[k] < count[k] && (best < 0 || rem[k] > rem[best])) best = k;
        if (best < 0) break;
        want[best]++;
        rem[best] = -1;
        given++;
    }
    char pick[DSV4_MAX_LAYERS] = {0};
    for (int k = 0; k < nk; k++) {
        int seen = 0;
        for (int j = 0; j < want[k]; j++) {
            /* the ((j + 0.5) * count / want)-th layer of this kind */
            int target = (int)(((double)j + 0.5) * count[k] / want[k]);
            seen = 0;
            for (int i = 0; i < L; i++) {
                int ki = 0;
                while (ki < nk - 1 && kinds[ki] != c->compress_ratios[i]) ki++;
                if (ki != k) continue;
                if (seen++ == target) { pick[i] = 1; break; }
            }
        }
    }
    int m = 0;
    for (int i = 0; i < L && m < n; i++)
        if (pick[i]) sel[m++] = i;
    for (int i = 0; i < L && m < n; i++) /* rounding left a gap: fill in order */
        if (!pick[i]) { pick[i] = 1; sel[m++] = i; }
    /* keep ascending after a fill-in */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && sel[j - 1] > sel[j]; j--) {
            int t = sel[j]; sel[j] = sel[j - 1]; sel[j - 1] = t;
        }
}

/* Scratch of fwd_alloc_scratch for a chunk of C tokens, roughly (f32). */
uint64_t bench_scratch_bytes(const dsv4_config *c, int C)
{
    uint64_t D = c->hidden_size, hc = c->hc_mult, H = c->num_attention_heads, hd = c->head_dim,
             k = c->num_experts_per_tok, inter = c->moe_intermediate_size, V = c->vocab_size;
    uint64_t per = 8 * hc * D + 3 * H * hd + 6 * k * inter + k * D + 4 * c->index_n_heads * c->index_head_dim +
                   2 * V + 16 * hd + 4 * inter + (uint64_t)c->n_routed_experts;
    return (uint64_t)C * per * 4 + (64ull << 20);
}

static void free_block_list(dsv4_block_w *b, int n)
{
    if (!b) return;
    for (int i = 0; i < n; i++) free(b[i].ffn.experts);
    free(b);
}

/* forward.c's arenas are 256 MiB; a larger tensor (an expert matrix of all
   experts) gets an arena of its own and the next small tensor opens a fresh
   one, leaving the old one's tail unused: count up to one arena per such
   region */
static uint64_t arena_tails(const dsv4_config *c, const dsv4_block_w *w)
{
    uint64_t t = 0;
    if (!w->ffn.experts) return 0;
    const dsv4_expert_w *x = &w->ffn.experts[0];
    const dsv4_weight *ws[3] = {&x->w1, &x->w2, &x->w3};
    for (int j = 0; j < 3; j++)
        if (ws[j]->w.nbytes * (uint64_t)c->n_routed_experts > (256ull << 20)) t += 256ull << 20;
    return t;
}

uint64_t bench_block_bytes(const dsv4_config *c, int layer)
{
    builder b = {c, 0};
    dsv4_block_w w;
    int L = c->num_hidden_layers;
    if (block(&b, &w, layer, c->compress_ratios[layer], layer < c->num_hash_layers)) {
        free(w.ffn.experts);
        return 0;
    }
    uint64_t bytes = b.bytes + arena_tails(c, &w);
    free(w.ffn.experts);
    if (layer >= L) { /* an MTP block: e_proj, h_proj, three norms, hc_head */
        uint64_t D = (uint64_t)c->hidden_size;
        bytes += 2 * D * D * (c->quant_fp8 ? 1 : 2) + 3 * D * 2 + (uint64_t)c->hc_mult * c->hc_mult * D * 4 + 4096;
    }
    return bytes;
}

int dsv4_engine_open_synthetic(const char *config_path, int max_layers, const dsv4_engine_options *opt,
                               dsv4_engine **out, char *err, size_t errlen)
{
    *out = NULL;
    dsv4_block_w *all = NULL;
    int *sel = NULL, L = 0;
    dsv4_engine *e = calloc(1, sizeof *e);
    if (e) e->m = calloc(1, sizeof *e->m);
    if (!e || !e->m) {
        free(e);
        set_err(err, errlen, "engine: out of memory");
        return DSV4_ENOMEM;
    }
    dsv4_model *m = e->m;
    dsv4_config *c = &m->cfg;
    int rc = dsv4_config_load(config_path, c, m->notes, sizeof m->notes, err, errlen);
    if (rc) goto fail;
    snprintf(m->dir, sizeof m->dir, "%s", config_path);
    char *slash = strrchr(m->dir, '/');
    if (slash) *slash = 0;
    else snprintf(m->dir, sizeof m->dir, ".");
    rc = shards_open(e, opt, err, errlen);
    if (rc) goto fail;

    /* every layer's views (host only, no data) and their arena bytes */
    L = c->num_hidden_layers;
    uint64_t *lbytes = NULL;
    all = calloc((size_t)L, sizeof *all);
    sel = calloc((size_t)L, sizeof *sel);
    lbytes = calloc((size_t)L, sizeof *lbytes);
    if (!all || !sel || !lbytes) {
        free(lbytes);
        rc = DSV4_ENOMEM;
        set_err(err, errlen, "engine: out of memory");
        goto fail;
    }
    builder b = {c, 0};
    for (int i = 0; i < L && !rc; i++) {
        b.bytes = 0;
        rc = block(&b, &all[i], i, c->compress_ratios[i], i < c->num_hash_layers);
        lbytes[i] = b.bytes + (rc ? 0 : arena_tails(c, &all[i]));
    }
    if (rc) {
        free(lbytes);
        set_err(err, errlen, "engine: out of memory");
        goto fail;
    }
    b.bytes = 0;
    tv(&b, &m->embed, "embed.weight", DSV4_DT_BF16, c->vocab_size, c->hidden_size);
    tv(&b, &m->head, "head.weight", DSV4_DT_BF16, c->vocab_size, c->hidden_size);
    tv(&b, &m->norm, "norm.weight", DSV4_DT_BF16, c->hidden_size, 0);
    hc(&b, &m->hc_head, 1, "hc_head_fn", "hc_head_base", "hc_head_scale");
    uint64_t scr = (1ull << 20) + bench_scratch_bytes(c, engine_chunk_tokens(e));
    uint64_t fixed = b.bytes + scr, vocab = (uint64_t)c->vocab_size * c->hidden_size * 2;

    /* how many layers: with several devices, as many as fit all of them
       (engine/shards.c places them); an explicit split says how many */
    uint64_t budget = shards_total_budget(e);
    uint64_t reserve = max_layers < 0 ? (uint64_t)(-(int64_t)max_layers) << 20 : 0;
    int n = max_layers > 0 ? (max_layers < L ? max_layers : L) : 0;
    uint64_t *pbytes = calloc((size_t)L, sizeof *pbytes); /* placement sizes of the kept layers */
    if (!pbytes) {
        free(lbytes);
        rc = DSV4_ENOMEM;
        set_err(err, errlen, "engine: out of memory");
        goto fail;
    }
    if (e->split[0]) {
        int sum = 0;
        for (int k = 0; k < e->n_shards; k++) sum += e->split[k];
        if (sum > L || (max_layers > 0 && sum != n)) {
            snprintf(err, errlen, "split gives %d layers in all; %s has %d%s", sum, config_path, L,
                     max_layers > 0 ? " and --layers asks for another number" : "");
            free(lbytes);
            free(pbytes);
            rc = DSV4_EINVAL;
            goto fail;
        }
        n = sum;
    } else if (max_layers <= 0) {
        for (n = L; n >= 1; n--) {
            select_layers(c, n, sel);
            uint64_t w = 0;
            for (int i = 0; i < n; i++) w += lbytes[sel[i]];
            if (e->n_shards == 1) { /* 2% for other arena tails */
                if (fixed + w + w / 50 + (uint64_t)n * reserve <= budget) break;
                continue;
            }
            if (n < e->n_shards) { n = 0; break; }
            for (int i = 0; i < n; i++) pbytes[i] = lbytes[sel[i]] + lbytes[sel[i]] / 50 + reserve;
            char perr[256];
            if (shards_place(e, n, 0, pbytes, vocab, scr, 0, perr, sizeof perr) == 0) break;
        }
        if (n < 1) {
            snprintf(err, errlen, "%s: one layer (%llu MiB of weights + %llu MiB reserved for state) and the "
                     "fixed tensors and scratch (%llu MiB) exceed the device budget of %llu MiB", config_path,
                     (unsigned long long)(lbytes[0] >> 20), (unsigned long long)(reserve >> 20),
                     (unsigned long long)(fixed >> 20), (unsigned long long)(budget >> 20));
            free(lbytes);
            free(pbytes);
            rc = DSV4_ENOMEM;
            goto fail;
        }
    }
    select_layers(c, n, sel);
    for (int i = 0; i < n; i++) pbytes[i] = lbytes[sel[i]] + lbytes[sel[i]] / 50 + reserve;
    free(lbytes);
    rc = shards_place(e, n, 0, pbytes, vocab, scr, opt ? opt->verbose : 0, err, errlen);
    free(pbytes);
    if (rc) goto fail;

    /* the synthetic config: the selected layers in order, no MTP block */
    m->layers = calloc((size_t)n, sizeof *m->layers);
    m->mtp = calloc(1, sizeof *m->mtp);
    if (!m->layers || !m->mtp) {
        rc = DSV4_ENOMEM;
        set_err(err, errlen, "engine: out of memory");
        goto fail;
    }
    int ratios[DSV4_MAX_LAYERS], hash = 0;
    for (int i = 0; i < n; i++) {
        m->layers[i] = all[sel[i]];
        all[sel[i]].ffn.experts = NULL; /* moved */
        m->layers[i].layer_id = i;
        ratios[i] = c->compress_ratios[sel[i]];
        hash += m->layers[i].ffn.hash;
    }
    for (int i = 0; i < n; i++) c->compress_ratios[i] = ratios[i];
    c->num_hidden_layers = n;
    c->num_nextn_predict_layers = 0;
    c->n_compress_ratios = n;
    c->num_hash_layers = hash;
    /* hash layers come first in the original, so they still do here */
    free_block_list(all, L);
    all = NULL;
    uint32_t h = fnv32(config_path);
    for (int i = 0; i < 32; i++) m->fingerprint[i] = (uint8_t)(h >> (8 * (i & 3))) ^ (uint8_t)(i * 37 + n);

    rc = engine_open_finish(e, opt, m->dir, err, errlen);
    if (rc) goto fail;
    /* the note of the contract: which layers, how many bytes */
    uint64_t wb = 0;
    for (int k = 0; k < e->n_shards; k++) {
        const dsv4_engine *sh = e->shard[k];
        wb += sh->arena_fill; /* the arenas in use, less the last one's free tail */
        for (int i = 0; i + 1 < sh->n_arenas; i++) wb += sh->arenas[i].size;
    }
    if (err && errlen) {
        size_t u = (size_t)snprintf(err, errlen, "layers=%d/%d weight_bytes=%llu budget_bytes=%llu ", n, L,
                                    (unsigned long long)wb, (unsigned long long)budget);
        if (e->n_shards > 1)
            for (int k = 0; k < e->n_shards && u < errlen; k++)
                u += (size_t)snprintf(err + u, errlen - u, "%s%d%s", k ? "," : "split=",
                                      e->shard[k]->own_b1 - e->shard[k]->own_b0, k + 1 < e->n_shards ? "" : " ");
        if (u < errlen) u += (size_t)snprintf(err + u, errlen - u, "selected=");
        for (int i = 0; i < n && u < errlen; i++)
            u += (size_t)snprintf(err + u, errlen - u, "%s%d", i ? "," : "", sel[i]);
    }
    free(sel);
    *out = e;
    return 0;
fail:
    free_block_list(all, L);
    free(sel);
    dsv4_engine_close(e);
    return rc;
}
