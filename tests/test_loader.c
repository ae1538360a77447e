/* The model loader (engine/config.c, safetensors.c, weights.c) and the model
 * generator (engine/synth.c): a generated model loads with the expected
 * formats and gives sane activations on the CPU reference; every kind of
 * damaged file is refused with the exact message naming the file and the
 * tensor or field, never a crash; a sharded set loads to the same
 * fingerprint as the single file; the released configs parse. */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/dsv4_engine.h"
#include "engine/dsv4_synth.h"
#include "engine/model.h"
#include "tests/check.h"
#include "tests/ref_model.h"

static char root[64]; /* mkdtemp */
static char good[128]; /* generated tiny model */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A model directory `name` under root: good's config.json (or `config` when
 * given) and model.safetensors bytes (or `st`, `st_len`). */
static const char *make_dir(const char *name, const char *config, const char *st, size_t st_len)
{
    static char dir[256];
    char path[512];
    size_t len;
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", good);
    char *cfg = config ? NULL : slurp(path, &len);
    snprintf(path, sizeof path, "%s/config.json", dir);
    spit(path, config ? config : cfg, config ? strlen(config) : len);
    free(cfg);
    char *model = NULL;
    if (!st) {
        snprintf(path, sizeof path, "%s/model.safetensors", good);
        model = slurp(path, &st_len);
        st = model;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    spit(path, st, st_len);
    free(model);
    return dir;
}

/* Loads dir and returns the error text ("" when it loaded). */
static const char *load_err(const char *dir, int *rc_out)
{
    static char err[1024];
    dsv4_model *m = NULL;
    err[0] = 0;
    int rc = dsv4_model_load(dir, &m, err, sizeof err);
    if (rc_out) *rc_out = rc;
    if (rc == 0) err[0] = 0;
    dsv4_model_free(m);
    return err;
}

#define CHECK_ERR(dir, text)                                                        \
    do {                                                                            \
        int rc_;                                                                    \
        const char *e_ = load_err(dir, &rc_);                                       \
        CHECKF(rc_ < 0 && strcmp(e_, text) == 0, "got rc %d '%s', want '%s'", rc_, e_, \
               text);                                                               \
    } while (0)

/* The good model's safetensors with `from` replaced by `to` (same length) in
 * its header. */
static char *patched(const char *from, const char *to, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", good);
    char *b = slurp(path, len);
    if (!b || strlen(from) != strlen(to)) return b;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)b[i];
    char *h = b + 8;
    char save = h[hlen];
    h[hlen] = 0;
    char *at = strstr(h, from);
    h[hlen] = save;
    if (at) memcpy(at, to, strlen(to));
    else printf("  (patch '%s' not found)\n", from);
    return b;
}

/* A safetensors file from a header text and data bytes. */
static char *raw_file(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    char *b = malloc(8 + h + data_len);
    if (!b) abort();
    for (int i = 0; i < 8; i++) b[i] = (char)(((uint64_t)h >> (8 * i)) & 0xff);
    memcpy(b + 8, header, h);
    if (data_len) memcpy(b + 8 + h, data, data_len);
    *len = 8 + h + data_len;
    return b;
}

static void generated_model_loads(void)
{
    dsv4_model *m = NULL;
    char err[1024];
    CHECKF(dsv4_model_load(good, &m, err, sizeof err) == 0, "%s", err);
    if (!m) return;
    const dsv4_config *c = &m->cfg;
    CHECK(c->vocab_size == 2048 && c->hidden_size == 256 && c->num_hidden_layers == 5);
    CHECK(c->compress_ratios[1] == 4 && c->compress_ratios[2] == 128 && c->compress_ratios[5] == 0);
    CHECK(c->quant_fp8 && c->expert_fp4 && c->rope_scaling_yarn);
    CHECK(dsv4_st_count(m->st) == 508);
    const dsv4_block_w *l1 = &m->layers[1];
    CHECK(l1->attn.wq_a.q == DSV4_WQ_FP8 && l1->attn.wq_a.w.dtype == DSV4_DT_F8_E4M3);
    CHECK(l1->attn.wq_a.scale.dtype == DSV4_DT_F8_E8M0 && l1->attn.wq_a.scale.shape[0] == 1 &&
          l1->attn.wq_a.scale.shape[1] == 2);
    CHECK(l1->attn.wq_b.scale.shape[0] == 6 && l1->attn.wq_b.scale.shape[1] == 1);
    CHECK(l1->attn.has_indexer && l1->attn.indexer.compressor.overlap &&
          l1->attn.indexer.compressor.rotate);
    CHECK(l1->attn.compressor.ape.shape[0] == 4 && l1->attn.compressor.ape.shape[1] == 384);
    CHECK(m->layers[2].attn.has_compressor && !m->layers[2].attn.has_indexer &&
          m->layers[2].attn.compressor.ape.shape[0] == 128);
    CHECK(!m->layers[0].attn.has_compressor);
    const dsv4_expert_w *x = &l1->ffn.experts[7];
    CHECK(x->w1.q == DSV4_WQ_FP4 && x->w1.w.dtype == DSV4_DT_I8 && x->w1.in == 256 &&
          x->w1.w.shape[1] == 128 && x->w1.scale.shape[1] == 8);
    CHECK(x->w2.in == 128 && x->w2.out == 256 && x->w2.scale.shape[1] == 4);
    CHECK(l1->ffn.hash && l1->ffn.tid2eid.dtype == DSV4_DT_I64 && !l1->ffn.gate_bias.data);
    CHECK(!m->layers[2].ffn.hash && m->layers[2].ffn.gate_bias.shape[0] == 8);
    CHECK(m->mtp[0].is_mtp && m->mtp[0].e_proj.q == DSV4_WQ_FP8 && m->mtp[0].attn.compress_ratio == 0);
    CHECK(m->mtp[0].hc_head.fn.shape[0] == 4 && m->mtp[0].hc_head.fn.shape[1] == 1024);
    CHECK(m->embed.dtype == DSV4_DT_BF16 && m->head.shape[0] == 2048);

    /* the weights decode to what the generator meant: FP8 codes times power-of-
       two scales give values of about the intended spread, no NaN code */
    double ss = 0;
    int64_t n = 0, nan = 0;
    const dsv4_weight *w = &l1->attn.wkv;
    for (int64_t o = 0; o < w->out; o++)
        for (int64_t i = 0; i < w->in; i++) {
            float v = dsv4_e4m3_to_f32(w->w.data[o * w->in + i]) *
                      dsv4_e8m0_to_f32(w->scale.data[(o / 128) * 2 + i / 128]);
            nan += isnan(v);
            ss += (double)v * v;
            n++;
        }
    double sd = sqrt(ss / (double)n);
    CHECKF(nan == 0 && sd > 0.5 / 16 && sd < 2.0 / 16, "wkv sd %g (want about 1/16)", sd);
    /* FP4 expert: low nibble = even input; spread about 1/sqrt(256) too */
    ss = 0;
    n = 0;
    int64_t zero = 0;
    for (int64_t o = 0; o < x->w1.out; o++)
        for (int64_t i = 0; i < x->w1.in; i++) {
            uint8_t byte = x->w1.w.data[o * (x->w1.in / 2) + i / 2];
            float v = dsv4_e2m1_to_f32((i & 1) ? byte >> 4 : byte & 15) *
                      dsv4_e8m0_to_f32(x->w1.scale.data[o * (x->w1.in / 32) + i / 32]);
            ss += (double)v * v;
            zero += v == 0;
            n++;
        }
    sd = sqrt(ss / (double)n);
    CHECKF(sd > 0.5 / 16 && sd < 2.0 / 16 && zero < n / 4, "w1 sd %g, %lld zeros", sd,
           (long long)zero);

    /* activations stay sane through the whole model on the CPU reference */
    ref_model *r = NULL;
    ref_seq *s = NULL;
    CHECK(ref_model_open(m, &r, err, sizeof err) == 0);
    if (r && ref_seq_create(r, &s) == 0) {
        enum { T = 24 };
        int32_t tok[T];
        for (int i = 0; i < T; i++) tok[i] = (i * 37 + 5) % 2048;
        float *logits = malloc((size_t)T * 2048 * sizeof(float));
        float *h = malloc((size_t)T * 4 * 256 * sizeof(float));
        ref_seq_forward(s, tok, T, logits, h);
        double ls = 0, hs = 0;
        int finite = 1;
        for (int i = 0; i < T * 2048; i++) {
            finite &= isfinite(logits[i]);
            ls += (double)logits[i] * logits[i];
        }
        for (int i = 0; i < T * 4 * 256; i++) {
            finite &= isfinite(h[i]);
            hs += (double)h[i] * h[i];
        }
        double lrms = sqrt(ls / (T * 2048.0)), hrms = sqrt(hs / (T * 1024.0));
        CHECK(finite);
        CHECKF(lrms > 0.1 && lrms < 30, "logit rms %g", lrms);
        CHECKF(hrms > 0.1 && hrms < 100, "last hidden rms %g", hrms);
        free(logits);
        free(h);
    }
    ref_seq_free(s);
    ref_model_close(r);
    dsv4_model_free(m);
}

static void generation_is_deterministic(void)
{
    char d1[256], d2[256], err[512];
    snprintf(d1, sizeof d1, "%s/seed5a", root);
    snprintf(d2, sizeof d2, "%s/seed5b", root);
    dsv4_synth_options a = {"tiny", d1, 5}, b = {"tiny", d2, 5};
    CHECK(dsv4_model_synth(&a, err, sizeof err) == 0);
    CHECK(dsv4_model_synth(&b, err, sizeof err) == 0);
    dsv4_model_info i1, i2, i3;
    size_t n = 0;
    CHECK(dsv4_model_verify(d1, &i1, &n, NULL, 0, err, sizeof err) == 0);
    CHECK(dsv4_model_verify(d2, &i2, NULL, NULL, 0, err, sizeof err) == 0);
    CHECK(dsv4_model_verify(good, &i3, NULL, NULL, 0, err, sizeof err) == 0);
    CHECK(memcmp(i1.fingerprint, i2.fingerprint, 32) == 0);
    CHECK(memcmp(i1.fingerprint, i3.fingerprint, 32) != 0); /* seed 1 vs 5 */
    CHECK(n == 508);
    dsv4_synth_options bad = {"huge", d1, 1};
    CHECK(dsv4_model_synth(&bad, err, sizeof err) == DSV4_EINVAL &&
          strcmp(err, "unknown preset 'huge' (demo, tiny)") == 0);
}

static void damaged_files_are_refused(void)
{
    size_t len;
    char *b;
    /* truncated: the last tensor in the file runs past the end */
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", good);
    b = slurp(path, &len);
    const char *d = make_dir("trunc", NULL, b, len - 1000);
    {
        int rc;
        const char *e = load_err(d, &rc);
        CHECKF(rc == DSV4_EINVAL && strstr(e, "model.safetensors: tensor 'head.weight': data_offsets") &&
                   strstr(e, "run past the end of the file's data"),
               "%s", e);
    }
    /* header length beyond the file */
    char *h = malloc(len);
    memcpy(h, b, len);
    uint64_t huge = (uint64_t)len + 10;
    for (int i = 0; i < 8; i++) h[i] = (char)((huge >> (8 * i)) & 0xff);
    d = make_dir("hlen", NULL, h, len);
    char want[512];
    snprintf(want, sizeof want, "model.safetensors: header length %llu is beyond the file "
             "(%zu bytes) or not sane (2 .. 268435456)", (unsigned long long)huge, len);
    CHECK_ERR(d, want);
    free(h);
    /* a file shorter than the length field */
    d = make_dir("short", NULL, "abc", 3);
    CHECK_ERR(d, "model.safetensors: file of 3 bytes is too short for a safetensors header");
    free(b);

    /* wrong dtype (same size, so only the model check can see it) */
    b = patched("\"layers.0.attn.attn_sink\":{\"dtype\":\"F32\"",
                "\"layers.0.attn.attn_sink\":{\"dtype\":\"I32\"", &len);
    d = make_dir("dtype", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'layers.0.attn.attn_sink' has dtype I32, expected F32");
    free(b);
    /* wrong shape (same element count) */
    b = patched("\"layers.3.attn.wq_a.scale\":{\"dtype\":\"F8_E8M0\",\"shape\":[1,2]",
                "\"layers.3.attn.wq_a.scale\":{\"dtype\":\"F8_E8M0\",\"shape\":[2,1]", &len);
    d = make_dir("shape", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'layers.3.attn.wq_a.scale' has shape [2, 1], "
                 "expected [1, 2]");
    free(b);
    /* missing tensor */
    b = patched("\"layers.2.ffn.gate.bias\"", "\"layers.2.ffn.gate.bia_\"", &len);
    d = make_dir("missing", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'layers.2.ffn.gate.bias' missing (expected F32 [8])");
    free(b);
    /* header lies: shape x dtype size differs from the byte span */
    b = patched("\"layers.0.attn.attn_sink\":{\"dtype\":\"F32\",\"shape\":[4]",
                "\"layers.0.attn.attn_sink\":{\"dtype\":\"F32\",\"shape\":[5]", &len);
    d = make_dir("lies", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'layers.0.attn.attn_sink': shape x dtype size = 20 "
                 "bytes but data_offsets span 16 bytes");
    free(b);
    /* unknown dtype */
    b = patched("\"layers.0.attn.attn_sink\":{\"dtype\":\"F32\"",
                "\"layers.0.attn.attn_sink\":{\"dtype\":\"Q32\"", &len);
    d = make_dir("unkdt", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'layers.0.attn.attn_sink': unknown dtype 'Q32'");
    free(b);

    /* overlapping and out-of-range offsets, in small hand-made files */
    uint8_t data[64] = {0};
    b = raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                 data, 32, &len);
    d = make_dir("overlap", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensors 'a' and 'b' overlap (data_offsets [0, 16] and [8, 24])");
    free(b);
    /* an empty tensor sorted between two overlapping ones must not hide them */
    b = raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
                 "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                 "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                 data, 32, &len);
    d = make_dir("overlap-empty", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensors 'a' and 'c' overlap (data_offsets [0, 32] and [8, 16])");
    free(b);
    b = raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[48,64]}}", data, 32, &len);
    d = make_dir("range", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'a': data_offsets [48, 64] run past the end of the "
                 "file's data (32 bytes; file truncated?)");
    free(b);
    b = raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}", data, 32, &len);
    d = make_dir("backwards", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: tensor 'a': data_offsets is not [begin, end] with 0 <= begin "
                 "<= end");
    free(b);
    b = raw_file("[1,2,3]", data, 0, &len);
    d = make_dir("notobj", NULL, b, len);
    CHECK_ERR(d, "model.safetensors: header is not a JSON object (not an object at byte 0)");
    free(b);

    /* tid2eid naming an expert that does not exist */
    snprintf(path, sizeof path, "%s/model.safetensors", good);
    b = slurp(path, &len);
    dsv4_st_set *st = NULL;
    char err[512];
    if (dsv4_st_open_file(path, &st, err, sizeof err) == 0) {
        const dsv4_tensor *t = dsv4_st_find(st, "layers.1.ffn.gate.tid2eid");
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)b[i];
        int64_t bad = 99;
        /* offset of tid2eid row 5, entry 1 in the file: header + data_offsets */
        const dsv4_tensor *e0 = dsv4_st_find(st, "embed.weight");
        size_t rel = (size_t)(t->data - e0->data); /* embed.weight is at data offset 0 */
        memcpy(b + 8 + hl + rel + (5 * 2 + 1) * 8, &bad, 8);
        dsv4_st_close(st);
        d = make_dir("tid2eid", NULL, b, len);
        CHECK_ERR(d, "model.safetensors: tensor 'layers.1.ffn.gate.tid2eid': entry 11 = 99 is not "
                     "an expert in [0, 8)");
    } else {
        CHECK(!"good model opens");
    }
    free(b);

    /* no weights at all */
    char dir[256];
    snprintf(dir, sizeof dir, "%s/noweights", root);
    mkdir(dir, 0755);
    snprintf(want, sizeof want, "%s: neither model.safetensors nor model.safetensors.index.json "
             "found", dir);
    snprintf(path, sizeof path, "%s/config.json", good);
    b = slurp(path, &len);
    snprintf(path, sizeof path, "%s/config.json", dir);
    spit(path, b, len);
    free(b);
    CHECK_ERR(dir, want);
}

/* Random byte damage in a header: any error is fine, a crash is not. */
static void mutated_headers_never_crash(void)
{
    size_t len;
    char *b = raw_file("{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"x\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                       "\"y\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[16,24]}}",
                       (uint8_t[24]){0}, 24, &len);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/fuzz.safetensors", root);
    uint64_t rng = 12345;
    int loaded = 0, refused = 0;
    for (int it = 0; it < 400; it++) {
        char *m = malloc(len);
        memcpy(m, b, len);
        for (int k = 0; k < 1 + it % 4; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(rng >> 33) % (len - 24 + (it % 50 == 0 ? 24 : 0));
            m[at] = (char)(rng >> 13);
        }
        size_t cut = it % 7 == 0 ? len - (size_t)(it % 30) : len;
        spit(path, m, cut);
        dsv4_st_set *st = NULL;
        if (dsv4_st_open_file(path, &st, err, sizeof err) == 0) {
            /* every view it hands out lies inside the file */
            for (size_t i = 0; i < dsv4_st_count(st); i++) (void)dsv4_st_at(st, i)->data[0];
            loaded++;
        } else {
            refused++;
            CHECK(strstr(err, "fuzz.safetensors") != NULL);
        }
        dsv4_st_close(st);
        free(m);
    }
    CHECK(loaded + refused == 400 && refused > 100);
    free(b);
}

static void sharded_set_loads_and_missing_shard_is_named(void)
{
    /* split the good model's tensors over two shard files + an index */
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/model.safetensors", good);
    dsv4_st_set *st = NULL;
    CHECK(dsv4_st_open_file(path, &st, err, sizeof err) == 0);
    if (!st) return;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/sharded", root);
    mkdir(dir, 0755);
    size_t n = dsv4_st_count(st);
    char *idx = malloc(n * 128 + 256);
    if (!idx) abort();
    size_t iu = (size_t)sprintf(idx, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
    int listed = 0;
    for (int shard = 0; shard < 2; shard++) {
        char *hdr = malloc(n * 200 + 16);
        if (!hdr) abort();
        size_t hu = (size_t)sprintf(hdr, "{");
        uint64_t off = 0;
        for (size_t i = shard; i < n; i += 2) {
            const dsv4_tensor *t = dsv4_st_at(st, i);
            hu += (size_t)sprintf(hdr + hu, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", hu > 1 ? "," : "",
                                  t->name, dsv4_dtype_name(t->dtype));
            for (int k = 0; k < t->ndim; k++)
                hu += (size_t)sprintf(hdr + hu, "%s%lld", k ? "," : "", (long long)t->shape[k]);
            hu += (size_t)sprintf(hdr + hu, "],\"data_offsets\":[%llu,%llu]}",
                                  (unsigned long long)off, (unsigned long long)(off + t->nbytes));
            off += t->nbytes;
            iu += (size_t)sprintf(idx + iu, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"",
                                  listed++ ? "," : "", t->name, shard + 1);
        }
        sprintf(hdr + hu, "}");
        uint8_t *data = malloc(off);
        if (!data) abort();
        off = 0;
        for (size_t i = shard; i < n; i += 2) {
            const dsv4_tensor *t = dsv4_st_at(st, i);
            memcpy(data + off, t->data, t->nbytes);
            off += t->nbytes;
        }
        size_t len;
        char *file = raw_file(hdr, data, off, &len);
        snprintf(path, sizeof path, "%s/model-0000%d-of-00002.safetensors", dir, shard + 1);
        spit(path, file, len);
        free(file);
        free(data);
        free(hdr);
    }
    sprintf(idx + iu, "}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    spit(path, idx, strlen(idx));
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", good);
    char *cfg = slurp(path, &len);
    snprintf(path, sizeof path, "%s/config.json", dir);
    spit(path, cfg, len);
    free(cfg);
    dsv4_st_close(st);

    dsv4_model_info a, b;
    CHECKF(dsv4_model_verify(dir, &a, NULL, NULL, 0, err, sizeof err) == 0, "%s", err);
    CHECK(dsv4_model_verify(good, &b, NULL, NULL, 0, err, sizeof err) == 0);
    CHECK(memcmp(a.fingerprint, b.fingerprint, 32) == 0); /* same tensors, same model */

    /* the second shard missing */
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    unlink(path);
    int rc;
    const char *e = load_err(dir, &rc);
    CHECKF(rc == DSV4_EIO && strstr(e, "model.safetensors.index.json: shard "
                                       "'model-00002-of-00002.safetensors' (holding tensor '") &&
               strstr(e, "') is missing"),
           "%s", e);
    /* an index naming a tensor the shard does not hold */
    char *bad = strstr(idx, "\"embed.weight\"");
    if (bad) memcpy(bad, "\"embed.weighX\"", 14);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    spit(path, idx, strlen(idx));
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    e = load_err(dir, &rc);
    CHECKF(rc < 0 && strstr(e, "model.safetensors.index.json") != NULL, "%s", e);
    free(idx);
}

static void bad_config_values_are_named(void)
{
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", good);
    char *cfg = slurp(path, &len);
    struct {
        const char *from, *to, *err;
    } cases[] = {
        {"\"hidden_size\": 256", "\"hidden_size\": \"x\"",
         "config.json: field 'hidden_size' is not an integer"},
        {"\"hidden_size\": 256", "\"hidden_size\": 1e30",
         "config.json: field 'hidden_size' is not an integer"},
        {"\"hidden_size\": 256", "\"hidden_size\": 256.5",
         "config.json: field 'hidden_size' is not an integer"},
        {"\"hidden_size\": 256", "\"hidden_sizz\": 256", "config.json: field 'hidden_size' missing"},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": -4",
         "config.json: field 'num_attention_heads' = -4 is out of range [1, 4096]"},
        {"\"scoring_func\": \"sqrtsoftplus\"", "\"scoring_func\": \"relu\"",
         "config.json: field 'scoring_func' is not sqrtsoftplus, softmax or sigmoid"},
        {"\"num_hidden_layers\": 5", "\"num_hidden_layers\": 9",
         "config.json: field 'compress_ratios' has 6 entries, fewer than num_hidden_layers + "
         "num_nextn_predict_layers = 10"},
        {"\"expert_dtype\": \"fp4\"", "\"expert_dtype\": \"int3\"",
         "config.json: field 'expert_dtype' is not \"fp4\" or \"fp8\""},
        {"\"factor\": 16", "\"factor\": -1",
         "config.json: field 'rope_scaling.factor' = -1 is out of range [1e-06, 1e+06]"},
        {"\"vocab_size\": 2048", "\"vocab_size\": 2048,,", NULL},
    };
    if (!cfg) {
        CHECK(!"config.json readable");
        return;
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *c = malloc(len + 64), *at = strstr(cfg, cases[i].from);
        if (!c) abort();
        CHECKF(at != NULL, "'%s' in the generated config", cases[i].from);
        if (!at) {
            free(c);
            continue;
        }
        size_t pre = (size_t)(at - cfg);
        sprintf(c, "%.*s%s%s", (int)pre, cfg, cases[i].to, at + strlen(cases[i].from));
        char name[32];
        snprintf(name, sizeof name, "cfg%zu", i);
        const char *d = make_dir(name, c, NULL, 0);
        if (cases[i].err) {
            CHECK_ERR(d, cases[i].err);
        } else {
            int rc;
            const char *e = load_err(d, &rc);
            CHECKF(rc == DSV4_EINVAL && strncmp(e, "config.json:", 12) == 0 &&
                       strstr(e, "invalid JSON"),
                   "%s", e);
        }
        free(c);
    }
    /* unknown fields and a longer compress_ratios list are accepted and noted */
    char *c = malloc(len + 256), notes[512], err[512];
    char *at = strstr(cfg, "\"compress_ratios\": [");
    if (!c || !at) {
        CHECK(!"memory and a compress_ratios field");
        free(c);
        free(cfg);
        return;
    }
    size_t pre = (size_t)(at - cfg);
    sprintf(c, "%.*s\"dspark_block_size\": 4, \"compress_ratios\": [4, 4, %s", (int)pre, cfg,
            at + strlen("\"compress_ratios\": ["));
    dsv4_config k;
    CHECKF(dsv4_config_parse(c, strlen(c), "config.json", &k, notes, sizeof notes, err,
                             sizeof err) == 0, "%s", err);
    CHECK(k.n_compress_ratios == 8 && k.compress_ratios[0] == 4);
    CHECKF(strstr(notes, "dspark_block_size") && strstr(notes, "compress_ratios"), "notes: %s", notes);
    free(c);
    free(cfg);
}

static void released_configs_parse(void)
{
    /* the released configs, copied into the repository (bench/configs/README.md) */
    const char *files[] = {"bench/configs/deepseek-v4-flash.config.json",
                           "bench/configs/deepseek-v4-pro.config.json"};
    if (access(files[0], R_OK) != 0) SKIP("bench/configs is missing (run from the repository root)");
    for (int i = 0; i < 2; i++) {
        dsv4_config c;
        char err[512], notes[512];
        CHECKF(dsv4_config_load(files[i], &c, notes, sizeof notes, err, sizeof err) == 0, "%s", err);
        CHECK(c.quant_fp8 && c.expert_fp4 && c.rope_scaling_yarn && c.hc_mult == 4);
        CHECK(c.compress_ratios[c.num_hidden_layers] == 0 &&
              c.n_compress_ratios >= c.num_hidden_layers + 1);
    }
    dsv4_config c;
    char err[512];
    dsv4_config_load(files[0], &c, NULL, 0, err, sizeof err);
    CHECK(c.num_hidden_layers == 43 && c.hidden_size == 4096 && c.head_dim == 512 &&
          c.n_routed_experts == 256 && c.index_topk == 512 && c.compress_ratios[2] == 4 &&
          c.compress_ratios[3] == 128 && c.sliding_window == 128);
}

/* The real command line: model init (demo with the tokenizer) and check. */
static void cli_model_init_and_check(void)
{
    if (access("bin/dsv4-batch", X_OK) != 0) SKIP("bin/dsv4-batch not built");
    char cmd[1024], line[512];
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch model init --preset demo --out %s/demo --seed 9 "
             ">/dev/null 2>&1", root);
    CHECK(system(cmd) == 0);
    char path[512];
    snprintf(path, sizeof path, "%s/demo/tokenizer.json", root);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size > 1000000);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch model check %s/demo 2>&1", root);
    FILE *p = popen(cmd, "r");
    int ok = 0;
    while (p && fgets(line, sizeof line, p))
        if (strstr(line, ": ok, 427 tensors, vocab 129280, hidden 256, 4 layers")) ok = 1;
    CHECK(p && pclose(p) == 0 && ok);
    /* usage errors exit 2, a missing model directory 3 */
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch model init --preset huge --out %s/x >/dev/null 2>&1",
             root);
    int rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch model check %s/nothing-here >/dev/null 2>&1", root);
    rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 3);
    /* a full disk (config.json -> /dev/full: the write is buffered, fclose
     * fails) is an error naming the file, exit 1; it used to close the FILE
     * a second time (double free, SIGABRT) */
    snprintf(cmd, sizeof cmd, "mkdir -p %s/full && ln -sf /dev/full %s/full/config.json", root, root);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch model init --preset tiny --out %s/full 2>&1", root);
    char msg[1024] = "";
    p = popen(cmd, "r");
    size_t got = p ? fread(msg, 1, sizeof msg - 1, p) : 0;
    msg[got] = 0;
    rc = p ? pclose(p) : -1;
    CHECKF(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && strstr(msg, "config.json: No space left on device"),
           "rc %d: %s", rc, msg);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/dsv4-loader-XXXXXX");
    if (!mkdtemp(root)) return 1;
    snprintf(good, sizeof good, "%s/good", root);
    char err[512];
    dsv4_synth_options o = {"tiny", good, 1};
    if (dsv4_model_synth(&o, err, sizeof err) != 0) {
        printf("synth: %s\n", err);
        return 1;
    }
    RUN(generated_model_loads);
    RUN(generation_is_deterministic);
    RUN(damaged_files_are_refused);
    RUN(mutated_headers_never_crash);
    RUN(sharded_set_loads_and_missing_shard_is_named);
    RUN(bad_config_values_are_named);
    RUN(released_configs_parse);
    RUN(cli_model_init_and_check);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("could not remove %s\n", root);
    CHECK_EXIT();
}
