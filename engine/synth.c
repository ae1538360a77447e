/* engine/synth.c: small DeepSeek-V4-architecture models with deterministic
 * random weights, written in the release's file format (dsv4_synth.h).
 *
 * The demo job and the tests need a model that exercises every part of the
 * architecture and every weight format the loader accepts, without shipping
 * a checkpoint. So this writes exactly what a release holds — config.json
 * with the release's keys, one model.safetensors with the release's tensor
 * names, dtypes and shapes — from a seeded generator: every tensor draws from
 * its own stream (seed mixed with a hash of its name), so the bytes depend on
 * the seed only, not on the order of writing.
 *
 * The file is laid out in two passes: first the list of tensors with their
 * sizes gives the header and every offset, then each tensor is generated and
 * written at its offset with pwrite (an FP8 weight and its scale come from
 * the same f32 matrix, so they are produced together). Nothing larger than
 * one weight matrix or 1 MiB of a bf16 table is held in memory. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/dsv4_synth.h"
#include "engine/model.h"

/* ------------------------------------------------------------ presets */

typedef struct preset {
    const char *name;
    int vocab, hidden, layers, heads, head_dim, q_lora, o_groups, o_lora;
    int experts, topk, moe_inter, hash_layers, index_heads, index_head_dim, index_topk;
    int window;
    int ratios[16]; /* layers + 1 (MTP) */
} preset;

static const preset presets[] = {
    {"demo", 129280, 256, 4, 4, 192, 128, 2, 128, 8, 2, 128, 1, 4, 128, 64, 128, {0, 4, 128, 4, 0}},
    {"tiny", 2048, 256, 5, 4, 192, 128, 2, 128, 8, 2, 128, 2, 4, 128, 16, 64, {0, 4, 128, 4, 128, 0}},
};

static json_t *make_config(const preset *p)
{
    json_t *c = json_object(), *cr = json_array(), *rs = json_object(), *q = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", "DeepseekV4ForCausalLM"));
    json_object_set_new(c, "model_type", json_string("deepseek_v4"));
    json_object_set_new(c, "bos_token_id", json_integer(0));
    json_object_set_new(c, "eos_token_id", json_integer(1));
    json_object_set_new(c, "hc_eps", json_real(1e-6));
    json_object_set_new(c, "hc_mult", json_integer(4));
    json_object_set_new(c, "hc_sinkhorn_iters", json_integer(20));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "max_position_embeddings", json_integer(1048576));
    json_object_set_new(c, "n_shared_experts", json_integer(1));
    json_object_set_new(c, "norm_topk_prob", json_true());
    json_object_set_new(c, "num_key_value_heads", json_integer(1));
    json_object_set_new(c, "num_nextn_predict_layers", json_integer(1));
    json_object_set_new(c, "qk_rope_head_dim", json_integer(64));
    json_object_set_new(c, "expert_dtype", json_string("fp4"));
    json_object_set_new(q, "activation_scheme", json_string("dynamic"));
    json_object_set_new(q, "fmt", json_string("e4m3"));
    json_object_set_new(q, "quant_method", json_string("fp8"));
    json_object_set_new(q, "scale_fmt", json_string("ue8m0"));
    json_object_set_new(q, "weight_block_size", json_pack("[i,i]", 128, 128));
    json_object_set_new(c, "quantization_config", q);
    json_object_set_new(c, "rms_norm_eps", json_real(1e-6));
    json_object_set_new(rs, "beta_fast", json_integer(32));
    json_object_set_new(rs, "beta_slow", json_integer(1));
    json_object_set_new(rs, "factor", json_integer(16));
    json_object_set_new(rs, "original_max_position_embeddings", json_integer(65536));
    json_object_set_new(rs, "type", json_string("yarn"));
    json_object_set_new(c, "rope_scaling", rs);
    json_object_set_new(c, "rope_theta", json_integer(10000));
    json_object_set_new(c, "compress_rope_theta", json_integer(160000));
    json_object_set_new(c, "routed_scaling_factor", json_real(2.5));
    json_object_set_new(c, "scoring_func", json_string("sqrtsoftplus"));
    json_object_set_new(c, "swiglu_limit", json_real(10.0));
    json_object_set_new(c, "tie_word_embeddings", json_false());
    json_object_set_new(c, "topk_method", json_string("noaux_tc"));
    json_object_set_new(c, "torch_dtype", json_string("bfloat16"));
    json_object_set_new(c, "vocab_size", json_integer(p->vocab));
    json_object_set_new(c, "hidden_size", json_integer(p->hidden));
    json_object_set_new(c, "num_hidden_layers", json_integer(p->layers));
    json_object_set_new(c, "num_hash_layers", json_integer(p->hash_layers));
    json_object_set_new(c, "num_attention_heads", json_integer(p->heads));
    json_object_set_new(c, "head_dim", json_integer(p->head_dim));
    json_object_set_new(c, "q_lora_rank", json_integer(p->q_lora));
    json_object_set_new(c, "o_groups", json_integer(p->o_groups));
    json_object_set_new(c, "o_lora_rank", json_integer(p->o_lora));
    json_object_set_new(c, "n_routed_experts", json_integer(p->experts));
    json_object_set_new(c, "num_experts_per_tok", json_integer(p->topk));
    json_object_set_new(c, "moe_intermediate_size", json_integer(p->moe_inter));
    json_object_set_new(c, "index_n_heads", json_integer(p->index_heads));
    json_object_set_new(c, "index_head_dim", json_integer(p->index_head_dim));
    json_object_set_new(c, "index_topk", json_integer(p->index_topk));
    json_object_set_new(c, "sliding_window", json_integer(p->window));
    for (int i = 0; i <= p->layers; i++) json_array_append_new(cr, json_integer(p->ratios[i]));
    json_object_set_new(c, "compress_ratios", cr);
    return c;
}

/* ------------------------------------------------------------ random */

/* Uniform with mean 0 and standard deviation 1. */
static float rnd(uint64_t *s)
{
    double u = (double)(dsv4_splitmix64(s) >> 11) * 0x1p-53;
    return (float)((u * 2 - 1) * 1.7320508075688772);
}

static uint64_t stream_for(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
    return seed * 0x9e3779b97f4a7c15ull ^ h;
}

/* ------------------------------------------------------------ formats */

static uint8_t e8m0_of_pow2(float s) /* s a power of two */
{
    int e;
    frexpf(s, &e);
    int b = e - 1 + 127;
    return (uint8_t)(b < 0 ? 0 : b > 254 ? 254 : b);
}

static float pow2_ceil(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    int e = (int)((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0);
    return ldexpf(1.0f, e);
}

/* Nearest e4m3fn code (half to even), saturating at 448. */
static uint8_t e4m3_encode(float x)
{
    uint8_t sign = x < 0 ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7e;
    if (a < 0x1p-6f) { /* subnormal: m * 2^-9 */
        int m = (int)rintf(a * 512.0f);
        return sign | (uint8_t)(m == 8 ? 0x08 : m);
    }
    int e;
    frexpf(a, &e);
    e -= 1; /* a in [2^e, 2^(e+1)) */
    int m = (int)rintf((a / ldexpf(1.0f, e) - 1.0f) * 8.0f);
    if (m == 8) {
        m = 0;
        e++;
    }
    if (e > 8 || (e == 8 && m > 6)) return sign | 0x7e;
    return sign | (uint8_t)((e + 7) << 3) | (uint8_t)m;
}

/* Nearest e2m1 code (half to even), saturating at 6. */
static uint8_t e2m1_encode(float x)
{
    static const float v[8] = {0, .5f, 1, 1.5f, 2, 3, 4, 6};
    uint8_t sign = x < 0 ? 8 : 0;
    float a = fabsf(x);
    int best = 0;
    for (int i = 1; i < 8; i++) {
        float d = fabsf(a - v[i]), db = fabsf(a - v[best]);
        if (d < db || (d == db && (i & 1) == 0)) best = i;
    }
    return sign | (uint8_t)best;
}

/* ------------------------------------------------------------ layout */

enum { G_BF16, G_F32, G_FP8, G_FP4, G_TID2EID };

typedef struct entry {
    char name[128];
    dsv4_dtype dt;
    int ndim;
    int64_t shape[2];
    uint64_t nbytes, offset;
} entry;

typedef struct gen {
    int kind;
    int e, s;           /* entry of the data, of the scale (FP8/FP4) */
    int64_t out, in;    /* logical matrix */
    float std, mean;
} gen;

typedef struct writer {
    const preset *p;
    entry *ents;
    int n_ents, cap_ents;
    gen *gens;
    int n_gens, cap_gens;
    uint64_t data_bytes;
    int oom;
} writer;

/* A tensor of the file; 1-D when d1 == 0. Returns its index or -1. */
static int add_entry(writer *w, dsv4_dtype dt, int64_t d0, int64_t d1, const char *name)
{
    if (w->oom) return -1;
    if (w->n_ents == w->cap_ents) {
        int cap = w->cap_ents ? w->cap_ents * 2 : 512;
        entry *n = realloc(w->ents, (size_t)cap * sizeof *n);
        if (!n) {
            w->oom = 1;
            return -1;
        }
        w->ents = n;
        w->cap_ents = cap;
    }
    entry *e = &w->ents[w->n_ents];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->dt = dt;
    e->ndim = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->nbytes = (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1) * dsv4_dtype_size(dt);
    e->offset = w->data_bytes;
    w->data_bytes += e->nbytes;
    return w->n_ents++;
}

static void add_gen(writer *w, gen g)
{
    if (w->oom) return;
    if (w->n_gens == w->cap_gens) {
        int cap = w->cap_gens ? w->cap_gens * 2 : 512;
        gen *n = realloc(w->gens, (size_t)cap * sizeof *n);
        if (!n) {
            w->oom = 1;
            return;
        }
        w->gens = n;
        w->cap_gens = cap;
    }
    w->gens[w->n_gens++] = g;
}

/* A plain tensor with values mean + std * uniform(unit variance); 1-D when
 * d1 == 0. I64 is the tid2eid table. */
static void plain(writer *w, dsv4_dtype dt, int64_t d0, int64_t d1, float mean, float std,
                  const char *fmt, ...)
{
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int e = add_entry(w, dt, d0, d1, name);
    if (e < 0) return;
    int kind = dt == DSV4_DT_BF16 ? G_BF16 : dt == DSV4_DT_I64 ? G_TID2EID : G_F32;
    add_gen(w, (gen){kind, e, -1, d0, d1 ? d1 : 1, std, mean});
}

/* A linear weight "<prefix>.weight" [out][in] (+ ".scale"): G_BF16, G_FP8 or
 * G_FP4; standard deviation gain / sqrt(in) keeps outputs O(1). */
static void linear(writer *w, int kind, int64_t out, int64_t in, float gain, const char *fmt, ...)
{
    char prefix[112], name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    float std = gain / sqrtf((float)in);
    if (kind == G_BF16) {
        plain(w, DSV4_DT_BF16, out, in, 0, std, "%s.weight", prefix);
        return;
    }
    int e, s;
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (kind == G_FP8) e = add_entry(w, DSV4_DT_F8_E4M3, out, in, name);
    else e = add_entry(w, DSV4_DT_I8, out, in / 2, name);
    snprintf(name, sizeof name, "%s.scale", prefix);
    if (kind == G_FP8) s = add_entry(w, DSV4_DT_F8_E8M0, (out + 127) / 128, (in + 127) / 128, name);
    else s = add_entry(w, DSV4_DT_F8_E8M0, out, in / 32, name);
    if (e < 0 || s < 0) return;
    add_gen(w, (gen){kind, e, s, out, in, std, 0});
}

static void hc(writer *w, const char *pfx, const char *site, int head)
{
    int hcm = 4, D = w->p->hidden, mix = head ? hcm : (2 + hcm) * hcm;
    plain(w, DSV4_DT_F32, mix, (int64_t)hcm * D, 0, 0.01f, "%shc_%s_fn", pfx, site);
    plain(w, DSV4_DT_F32, mix, 0, 0, head ? 0.0f : 0.1f, "%shc_%s_base", pfx, site);
    plain(w, DSV4_DT_F32, head ? 1 : 3, 0, 1, 0, "%shc_%s_scale", pfx, site);
}

static void compressor(writer *w, const char *pfx, int ratio, int hd)
{
    int coff = ratio == 4 ? 2 : 1, D = w->p->hidden;
    linear(w, G_BF16, (int64_t)coff * hd, D, 1, "%s.wkv", pfx);
    linear(w, G_BF16, (int64_t)coff * hd, D, 1, "%s.wgate", pfx);
    plain(w, DSV4_DT_F32, ratio, (int64_t)coff * hd, 0, 0.1f, "%s.ape", pfx);
    plain(w, DSV4_DT_BF16, hd, 0, 1, 0.05f, "%s.norm.weight", pfx);
}

static void block(writer *w, const char *pfx, int layer_id, int mtp)
{
    const preset *p = w->p;
    int D = p->hidden, H = p->heads, hd = p->head_dim, ratio = p->ratios[layer_id];
    char sub[96];
    plain(w, DSV4_DT_BF16, D, 0, 1, 0.05f, "%sattn_norm.weight", pfx);
    plain(w, DSV4_DT_BF16, D, 0, 1, 0.05f, "%sffn_norm.weight", pfx);
    hc(w, pfx, "attn", 0);
    hc(w, pfx, "ffn", 0);
    plain(w, DSV4_DT_F32, H, 0, 0, 0.1f, "%sattn.attn_sink", pfx);
    linear(w, G_FP8, p->q_lora, D, 1, "%sattn.wq_a", pfx);
    plain(w, DSV4_DT_BF16, p->q_lora, 0, 1, 0.05f, "%sattn.q_norm.weight", pfx);
    linear(w, G_FP8, (int64_t)H * hd, p->q_lora, 1, "%sattn.wq_b", pfx);
    linear(w, G_FP8, hd, D, 1, "%sattn.wkv", pfx);
    plain(w, DSV4_DT_BF16, hd, 0, 1, 0.05f, "%sattn.kv_norm.weight", pfx);
    linear(w, G_FP8, (int64_t)p->o_groups * p->o_lora, (int64_t)H * hd / p->o_groups, 1,
           "%sattn.wo_a", pfx);
    linear(w, G_FP8, D, (int64_t)p->o_groups * p->o_lora, 0.5f, "%sattn.wo_b", pfx);
    if (ratio) {
        snprintf(sub, sizeof sub, "%sattn.compressor", pfx);
        compressor(w, sub, ratio, hd);
        if (ratio == 4) {
            linear(w, G_FP8, (int64_t)p->index_heads * p->index_head_dim, p->q_lora, 1,
                   "%sattn.indexer.wq_b", pfx);
            linear(w, G_BF16, p->index_heads, D, 1, "%sattn.indexer.weights_proj", pfx);
            snprintf(sub, sizeof sub, "%sattn.indexer.compressor", pfx);
            compressor(w, sub, 4, p->index_head_dim);
        }
    }
    linear(w, G_BF16, p->experts, D, 1, "%sffn.gate", pfx);
    if (layer_id < p->hash_layers)
        plain(w, DSV4_DT_I64, p->vocab, p->topk, 0, 0, "%sffn.gate.tid2eid", pfx);
    else
        plain(w, DSV4_DT_F32, p->experts, 0, 0, 0.01f, "%sffn.gate.bias", pfx);
    for (int e = 0; e < p->experts; e++) {
        linear(w, G_FP4, p->moe_inter, D, 1, "%sffn.experts.%d.w1", pfx, e);
        linear(w, G_FP4, D, p->moe_inter, 0.5f, "%sffn.experts.%d.w2", pfx, e);
        linear(w, G_FP4, p->moe_inter, D, 1, "%sffn.experts.%d.w3", pfx, e);
    }
    linear(w, G_FP8, p->moe_inter, D, 1, "%sffn.shared_experts.w1", pfx);
    linear(w, G_FP8, D, p->moe_inter, 0.5f, "%sffn.shared_experts.w2", pfx);
    linear(w, G_FP8, p->moe_inter, D, 1, "%sffn.shared_experts.w3", pfx);
    if (mtp) {
        linear(w, G_FP8, D, D, 1, "%se_proj", pfx);
        linear(w, G_FP8, D, D, 1, "%sh_proj", pfx);
        plain(w, DSV4_DT_BF16, D, 0, 1, 0.05f, "%senorm.weight", pfx);
        plain(w, DSV4_DT_BF16, D, 0, 1, 0.05f, "%shnorm.weight", pfx);
        plain(w, DSV4_DT_BF16, D, 0, 1, 0.05f, "%snorm.weight", pfx);
        hc(w, pfx, "head", 1);
    }
}

static void layout(writer *w)
{
    const preset *p = w->p;
    char pfx[32];
    plain(w, DSV4_DT_BF16, p->vocab, p->hidden, 0, 1, "embed.weight");
    for (int i = 0; i < p->layers; i++) {
        snprintf(pfx, sizeof pfx, "layers.%d.", i);
        block(w, pfx, i, 0);
    }
    snprintf(pfx, sizeof pfx, "mtp.0.");
    block(w, pfx, p->layers, 1);
    plain(w, DSV4_DT_BF16, p->hidden, 0, 1, 0.05f, "norm.weight");
    hc(w, "", "head", 1);
    linear(w, G_BF16, p->vocab, p->hidden, 1, "head");
}

/* ------------------------------------------------------------ writing */

static int write_at(int fd, const void *buf, size_t n, uint64_t off)
{
    const uint8_t *b = buf;
    while (n) {
        ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        b += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* Generates one tensor (or weight + scale) and writes it at base + offset. */
static int emit(const writer *w, const gen *g, uint64_t seed, int fd, uint64_t base)
{
    const entry *e = &w->ents[g->e];
    uint64_t rng = stream_for(seed, e->name);
    int rc = -1;
    if (g->kind == G_BF16 || g->kind == G_F32) {
        size_t esz = g->kind == G_BF16 ? 2 : 4, chunk = (1 << 20) / esz;
        uint8_t *buf = malloc(chunk * esz);
        if (!buf) return -1;
        uint64_t total = e->nbytes / esz, done = 0;
        while (done < total) {
            size_t n = total - done < chunk ? (size_t)(total - done) : chunk;
            for (size_t i = 0; i < n; i++) {
                float v = g->mean + g->std * rnd(&rng);
                if (esz == 2) {
                    uint16_t h = dsv4_f32_to_bf16(v);
                    memcpy(buf + i * 2, &h, 2);
                } else {
                    memcpy(buf + i * 4, &v, 4);
                }
            }
            if (write_at(fd, buf, n * esz, base + e->offset + done * esz) < 0) {
                free(buf);
                return -1;
            }
            done += n;
        }
        free(buf);
        return 0;
    }
    if (g->kind == G_TID2EID) {
        /* each token: num_experts_per_tok distinct experts (partial shuffle) */
        int E = w->p->experts, k = (int)g->in;
        int64_t *t = malloc((size_t)e->nbytes);
        int *perm = malloc((size_t)E * sizeof *perm);
        if (t && perm) {
            for (int64_t v = 0; v < g->out; v++) {
                for (int i = 0; i < E; i++) perm[i] = i;
                for (int i = 0; i < k; i++) {
                    int j = i + (int)(dsv4_splitmix64(&rng) % (uint64_t)(E - i));
                    int x = perm[i];
                    perm[i] = perm[j];
                    perm[j] = x;
                    t[v * k + i] = perm[i];
                }
            }
            rc = write_at(fd, t, (size_t)e->nbytes, base + e->offset);
        }
        free(t);
        free(perm);
        return rc;
    }
    /* FP8 / FP4: draw the f32 matrix, then quantize it with power-of-two
       block scales (FP8: 128x128 blocks, FP4: 32 inputs of a row). */
    const entry *se = &w->ents[g->s];
    int64_t O = g->out, I = g->in;
    float *m = malloc((size_t)(O * I) * sizeof(float));
    uint8_t *q = calloc((size_t)e->nbytes, 1), *sc = malloc((size_t)se->nbytes);
    if (!m || !q || !sc) goto done;
    for (int64_t i = 0; i < O * I; i++) m[i] = g->std * rnd(&rng);
    if (g->kind == G_FP8) {
        int64_t bo = (O + 127) / 128, bi = (I + 127) / 128;
        for (int64_t a = 0; a < bo; a++)
            for (int64_t b = 0; b < bi; b++) {
                float amax = 1e-30f;
                for (int64_t o = a * 128; o < O && o < (a + 1) * 128; o++)
                    for (int64_t i = b * 128; i < I && i < (b + 1) * 128; i++)
                        amax = fmaxf(amax, fabsf(m[o * I + i]));
                float s = pow2_ceil(amax / 448.0f);
                sc[a * bi + b] = e8m0_of_pow2(s);
                for (int64_t o = a * 128; o < O && o < (a + 1) * 128; o++)
                    for (int64_t i = b * 128; i < I && i < (b + 1) * 128; i++)
                        q[o * I + i] = e4m3_encode(m[o * I + i] / s);
            }
    } else {
        for (int64_t o = 0; o < O; o++)
            for (int64_t b = 0; b < I / 32; b++) {
                float amax = 1e-30f;
                for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(m[o * I + b * 32 + i]));
                float s = pow2_ceil(amax / 6.0f);
                sc[o * (I / 32) + b] = e8m0_of_pow2(s);
                for (int i = 0; i < 32; i++) {
                    int64_t k = b * 32 + i;
                    uint8_t c = e2m1_encode(m[o * I + k] / s);
                    q[o * (I / 2) + k / 2] |= (uint8_t)((k & 1) ? c << 4 : c);
                }
            }
    }
    if (write_at(fd, q, (size_t)e->nbytes, base + e->offset) == 0 &&
        write_at(fd, sc, (size_t)se->nbytes, base + se->offset) == 0)
        rc = 0;
done:
    free(m);
    free(q);
    free(sc);
    return rc;
}

static int write_text(const char *path, const char *text, char *err, size_t errlen)
{
    FILE *f = fopen(path, "wb");
    /* exactly one fclose once f is open: closing again after a failed
     * fclose would be a double free */
    int bad = !f || fputs(text, f) < 0;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return DSV4_EIO;
    }
    return 0;
}

int dsv4_model_synth(const dsv4_synth_options *o, char *err, size_t errlen)
{
    const preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (o->preset && strcmp(o->preset, presets[i].name) == 0) p = &presets[i];
    if (!p) {
        snprintf(err, errlen, "unknown preset '%s' (demo, tiny)", o->preset ? o->preset : "");
        return DSV4_EINVAL;
    }
    if (!o->out_dir || !*o->out_dir) {
        snprintf(err, errlen, "no output directory");
        return DSV4_EINVAL;
    }
    if (mkdir(o->out_dir, 0777) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", o->out_dir, strerror(errno));
        return DSV4_EIO;
    }
    writer w = {.p = p};
    json_t *cfg = NULL, *hdr = NULL;
    char *cfg_text = NULL, *hdr_text = NULL;
    char path[PATH_MAX], tmp[PATH_MAX];
    int fd = -1, rc = DSV4_EIO;
    tmp[0] = 0;

    cfg = make_config(p);
    cfg_text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    layout(&w);
    if (!cfg_text || w.oom) {
        snprintf(err, errlen, "out of memory");
        rc = DSV4_ENOMEM;
        goto fail;
    }
    hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    for (int i = 0; i < w.n_ents; i++) {
        const entry *e = &w.ents[i];
        json_t *shape = e->ndim == 2 ? json_pack("[I,I]", (json_int_t)e->shape[0],
                                                 (json_int_t)e->shape[1])
                                     : json_pack("[I]", (json_int_t)e->shape[0]);
        json_object_set_new(hdr, e->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", dsv4_dtype_name(e->dt),
                                      "shape", shape, "data_offsets", (json_int_t)e->offset,
                                      (json_int_t)(e->offset + e->nbytes)));
    }
    hdr_text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr_text) {
        snprintf(err, errlen, "out of memory");
        rc = DSV4_ENOMEM;
        goto fail;
    }
    /* the header is padded with spaces to a multiple of 8, as the reference
       writer does, so the data starts aligned */
    size_t hlen = strlen(hdr_text), padded = (hlen + 7) & ~(size_t)7;
    snprintf(tmp, sizeof tmp, "%s/.model.safetensors.tmp", o->out_dir);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    char *hbuf = malloc(padded);
    if (!hbuf) {
        rc = DSV4_ENOMEM;
        goto fail;
    }
    memcpy(hbuf, hdr_text, hlen);
    memset(hbuf + hlen, ' ', padded - hlen);
    int wr = write_at(fd, lenb, 8, 0) == 0 && write_at(fd, hbuf, padded, 8) == 0;
    free(hbuf);
    if (!wr) {
        snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
        goto fail;
    }
    for (int i = 0; i < w.n_gens; i++)
        if (emit(&w, &w.gens[i], o->seed, fd, 8 + padded) < 0) {
            snprintf(err, errlen, "%s: writing tensor '%s' failed: %s", tmp,
                     w.ents[w.gens[i].e].name, strerror(errno));
            goto fail;
        }
    if (close(fd) != 0) { /* no fsync: a generated model is cheap to make again */
        fd = -1;
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    snprintf(path, sizeof path, "%s/model.safetensors", o->out_dir);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    tmp[0] = 0;
    snprintf(path, sizeof path, "%s/config.json", o->out_dir);
    if ((rc = write_text(path, cfg_text, err, errlen)) < 0) goto fail;
    rc = 0;
fail:
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    free(cfg_text);
    free(hdr_text);
    json_decref(cfg);
    json_decref(hdr);
    free(w.ents);
    free(w.gens);
    return rc;
}

int dsv4_model_verify(const char *model_dir, dsv4_model_info *info, size_t *n_tensors,
                      char *notes, size_t noteslen, char *err, size_t errlen)
{
    dsv4_model *m = NULL;
    int rc = dsv4_model_load(model_dir, &m, err, errlen);
    if (rc < 0) return rc;
    if (info) {
        memset(info, 0, sizeof *info);
        info->vocab_size = m->cfg.vocab_size;
        info->hidden_size = m->cfg.hidden_size;
        info->num_hidden_layers = m->cfg.num_hidden_layers;
        info->bos_token_id = m->cfg.bos_token_id;
        info->eos_token_id = m->cfg.eos_token_id;
        info->max_position_embeddings = m->cfg.max_position_embeddings;
        memcpy(info->fingerprint, m->fingerprint, 32);
    }
    if (n_tensors) *n_tensors = dsv4_st_count(m->st);
    if (notes && noteslen) snprintf(notes, noteslen, "%s", m->notes);
    dsv4_model_free(m);
    return 0;
}
