/* engine/config.c: config.json -> dsv4_config.
 *
 * Every model size the engine uses comes from here, named as in config.json.
 * The parser is strict about what it uses (types, ranges, consistency such as
 * head_dim > qk_rope_head_dim) and lenient about what it does not: released
 * checkpoints carry fields we ignore (transformers_version, dspark_* of later
 * releases), which are listed once in `notes` rather than rejected. A
 * compress_ratios list longer than layers + MTP layers is accepted (later
 * checkpoints append draft-layer entries); the extra entries are ignored. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"

/* Fields this parser reads or knowingly ignores (they carry nothing the
 * forward pass needs: hidden_act is always silu, norm_topk_prob always true,
 * topk_method noaux_tc ...). Anything else goes into `notes`. */
static const char *const known_fields[] = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "qk_rope_head_dim", "q_lora_rank", "o_groups",
    "o_lora_rank", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
    "n_shared_experts", "num_hash_layers", "index_n_heads", "index_head_dim", "index_topk",
    "sliding_window", "compress_ratios", "rope_theta", "compress_rope_theta", "rope_scaling",
    "rms_norm_eps", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "routed_scaling_factor",
    "scoring_func", "swiglu_limit", "num_nextn_predict_layers", "bos_token_id",
    "eos_token_id", "quantization_config", "expert_dtype", "max_position_embeddings",
    /* read by nobody, but standard and harmless: */
    "architectures", "model_type", "hidden_act", "norm_topk_prob", "topk_method",
    "torch_dtype", "tie_word_embeddings", "attention_bias", "attention_dropout",
    "initializer_range", "transformers_version", "use_cache",
};

typedef struct parser {
    const char *name;
    const char *prefix; /* "rope_scaling." while inside that object */
    json_t *root;
    char *err;
    size_t errlen;
} parser;

static int fail(parser *p, const char *field, const char *what)
{
    snprintf(p->err, p->errlen, "%s: field '%s%s' %s", p->name, p->prefix, field, what);
    return DSV4_EINVAL;
}

static int get_int(parser *p, json_t *obj, const char *field, int64_t lo, int64_t hi,
                   int required, int64_t dflt, int64_t *out)
{
    json_t *v = json_object_get(obj, field);
    if (!v) {
        if (required) return fail(p, field, "missing");
        *out = dflt;
        return 0;
    }
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && fabs(json_real_value(v)) < 0x1p62 &&
               json_real_value(v) == (double)(int64_t)json_real_value(v)) {
        /* 32.0 written by some tools; the range test first, because casting
         * a double beyond int64_t (1e30) to int64_t is undefined behaviour */
        x = (int64_t)json_real_value(v);
    } else {
        return fail(p, field, "is not an integer");
    }
    if (x < lo || x > hi) {
        char msg[128];
        snprintf(msg, sizeof msg, "= %lld is out of range [%lld, %lld]", (long long)x,
                 (long long)lo, (long long)hi);
        return fail(p, field, msg);
    }
    *out = x;
    return 0;
}

static int get_i(parser *p, const char *field, int64_t lo, int64_t hi, int *out)
{
    int64_t x;
    int rc = get_int(p, p->root, field, lo, hi, 1, 0, &x);
    if (rc == 0) *out = (int)x;
    return rc;
}

static int get_real(parser *p, json_t *obj, const char *field, double lo, double hi,
                    int required, double dflt, double *out)
{
    json_t *v = json_object_get(obj, field);
    if (!v) {
        if (required) return fail(p, field, "missing");
        *out = dflt;
        return 0;
    }
    if (!json_is_number(v)) return fail(p, field, "is not a number");
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        char msg[128];
        snprintf(msg, sizeof msg, "= %g is out of range [%g, %g]", x, lo, hi);
        return fail(p, field, msg);
    }
    *out = x;
    return 0;
}

static int parse_quant(parser *p, dsv4_config *c)
{
    json_t *q = json_object_get(p->root, "quantization_config");
    c->quant_fp8 = 0;
    c->weight_block_size[0] = c->weight_block_size[1] = 128;
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q)) return fail(p, "quantization_config", "is not an object");
    json_t *m = json_object_get(q, "quant_method");
    if (m && (!json_is_string(m) || strcmp(json_string_value(m), "fp8") != 0))
        return fail(p, "quantization_config.quant_method", "is not \"fp8\"");
    json_t *f = json_object_get(q, "fmt");
    if (f && (!json_is_string(f) || strcmp(json_string_value(f), "e4m3") != 0))
        return fail(p, "quantization_config.fmt", "is not \"e4m3\"");
    json_t *s = json_object_get(q, "scale_fmt");
    if (s && (!json_is_string(s) || strcmp(json_string_value(s), "ue8m0") != 0))
        return fail(p, "quantization_config.scale_fmt", "is not \"ue8m0\"");
    json_t *b = json_object_get(q, "weight_block_size");
    if (b) {
        if (!json_is_array(b) || json_array_size(b) != 2 ||
            !json_is_integer(json_array_get(b, 0)) || !json_is_integer(json_array_get(b, 1)) ||
            json_integer_value(json_array_get(b, 0)) != 128 ||
            json_integer_value(json_array_get(b, 1)) != 128)
            return fail(p, "quantization_config.weight_block_size", "is not [128, 128]");
    }
    c->quant_fp8 = 1;
    return 0;
}

static int parse_rope_scaling(parser *p, dsv4_config *c)
{
    json_t *r = json_object_get(p->root, "rope_scaling");
    c->rope_scaling_yarn = 0;
    c->rope_factor = 1;
    c->original_max_position_embeddings = 0;
    c->beta_fast = 32;
    c->beta_slow = 1;
    if (!r || json_is_null(r)) return 0;
    if (!json_is_object(r)) return fail(p, "rope_scaling", "is not an object");
    json_t *t = json_object_get(r, "type");
    if (!t) t = json_object_get(r, "rope_type");
    if (!t || !json_is_string(t)) return fail(p, "rope_scaling.type", "missing");
    if (strcmp(json_string_value(t), "yarn") != 0)
        return fail(p, "rope_scaling.type", "is not \"yarn\" (the only scaling DeepSeek-V4 uses)");
    c->rope_scaling_yarn = 1;
    int64_t orig;
    int rc = DSV4_EINVAL;
    p->prefix = "rope_scaling.";
    if (get_real(p, r, "factor", 1e-6, 1e6, 1, 0, &c->rope_factor) < 0) goto out;
    if (get_int(p, r, "original_max_position_embeddings", 1, (int64_t)1 << 40, 1, 0, &orig) < 0)
        goto out;
    c->original_max_position_embeddings = orig;
    if (get_real(p, r, "beta_fast", 1e-6, 1e6, 0, 32, &c->beta_fast) < 0) goto out;
    if (get_real(p, r, "beta_slow", 1e-6, 1e6, 0, 1, &c->beta_slow) < 0) goto out;
    rc = 0;
out:
    p->prefix = "";
    return rc;
}

static void note_unknown(parser *p, char *notes, size_t noteslen)
{
    if (!notes || noteslen == 0) return;
    notes[0] = 0;
    size_t used = 0;
    const char *key;
    json_t *v;
    json_object_foreach(p->root, key, v) {
        int known = 0;
        for (size_t i = 0; i < sizeof known_fields / sizeof known_fields[0]; i++)
            if (strcmp(key, known_fields[i]) == 0) known = 1;
        if (known) continue;
        int n = snprintf(notes + used, noteslen - used, "%s%s",
                         used ? ", " : "config.json: ignoring fields: ", key);
        if (n < 0 || (size_t)n >= noteslen - used) break;
        used += (size_t)n;
    }
}

int dsv4_config_parse(const char *json, size_t len, const char *name, dsv4_config *c,
                      char *notes, size_t noteslen, char *err, size_t errlen)
{
    parser p = {name ? name : "config.json", "", NULL, err, errlen};
    json_error_t je;
    int rc = DSV4_EINVAL;
    memset(c, 0, sizeof *c);
    if (notes && noteslen) notes[0] = 0;
    p.root = json_loadb(json, len, 0, &je);
    if (!p.root) {
        snprintf(err, errlen, "%s:%d:%d: invalid JSON: %s", p.name, je.line, je.column, je.text);
        return DSV4_EINVAL;
    }
    if (!json_is_object(p.root)) {
        snprintf(err, errlen, "%s: not a JSON object", p.name);
        goto fail;
    }
    const int BIG = 1 << 24;
    if (get_i(&p, "vocab_size", 1, 1 << 26, &c->vocab_size) < 0) goto fail;
    if (get_i(&p, "hidden_size", 1, 1 << 20, &c->hidden_size) < 0) goto fail;
    if (get_i(&p, "num_hidden_layers", 1, DSV4_MAX_LAYERS - 16, &c->num_hidden_layers) < 0) goto fail;
    if (get_i(&p, "num_attention_heads", 1, 1 << 12, &c->num_attention_heads) < 0) goto fail;
    int64_t kvh;
    if (get_int(&p, p.root, "num_key_value_heads", 1, 1, 0, 1, &kvh) < 0) goto fail;
    c->num_key_value_heads = (int)kvh;
    if (get_i(&p, "head_dim", 2, 1 << 14, &c->head_dim) < 0) goto fail;
    if (get_i(&p, "qk_rope_head_dim", 2, 1 << 14, &c->qk_rope_head_dim) < 0) goto fail;
    if (get_i(&p, "q_lora_rank", 1, BIG, &c->q_lora_rank) < 0) goto fail;
    if (get_i(&p, "o_groups", 1, 1 << 12, &c->o_groups) < 0) goto fail;
    if (get_i(&p, "o_lora_rank", 1, BIG, &c->o_lora_rank) < 0) goto fail;
    if (get_i(&p, "n_routed_experts", 1, 1 << 16, &c->n_routed_experts) < 0) goto fail;
    if (get_i(&p, "num_experts_per_tok", 1, 1 << 10, &c->num_experts_per_tok) < 0) goto fail;
    if (get_i(&p, "moe_intermediate_size", 1, BIG, &c->moe_intermediate_size) < 0) goto fail;
    if (get_i(&p, "n_shared_experts", 1, 1, &c->n_shared_experts) < 0) goto fail;
    if (get_i(&p, "num_hash_layers", 0, DSV4_MAX_LAYERS, &c->num_hash_layers) < 0) goto fail;
    if (get_i(&p, "index_n_heads", 1, 1 << 12, &c->index_n_heads) < 0) goto fail;
    if (get_i(&p, "index_head_dim", 2, 1 << 14, &c->index_head_dim) < 0) goto fail;
    if (get_i(&p, "index_topk", 1, BIG, &c->index_topk) < 0) goto fail;
    if (get_i(&p, "sliding_window", 1, BIG, &c->sliding_window) < 0) goto fail;
    int64_t mtp;
    if (get_int(&p, p.root, "num_nextn_predict_layers", 0, 16, 0, 0, &mtp) < 0) goto fail;
    c->num_nextn_predict_layers = (int)mtp;
    if (get_real(&p, p.root, "rope_theta", 1e-3, 1e12, 1, 0, &c->rope_theta) < 0) goto fail;
    if (get_real(&p, p.root, "compress_rope_theta", 1e-3, 1e12, 1, 0, &c->compress_rope_theta) < 0)
        goto fail;
    if (get_real(&p, p.root, "rms_norm_eps", 0, 1, 1, 0, &c->rms_norm_eps) < 0) goto fail;
    if (get_i(&p, "hc_mult", 1, 64, &c->hc_mult) < 0) goto fail;
    if (get_i(&p, "hc_sinkhorn_iters", 1, 10000, &c->hc_sinkhorn_iters) < 0) goto fail;
    if (get_real(&p, p.root, "hc_eps", 0, 1, 1, 0, &c->hc_eps) < 0) goto fail;
    if (get_real(&p, p.root, "routed_scaling_factor", 0, 1e6, 1, 0, &c->routed_scaling_factor) < 0)
        goto fail;
    if (get_real(&p, p.root, "swiglu_limit", 0, 1e9, 0, 0, &c->swiglu_limit) < 0) goto fail;
    int64_t id;
    if (get_int(&p, p.root, "bos_token_id", 0, c->vocab_size - 1, 1, 0, &id) < 0) goto fail;
    c->bos_token_id = (int)id;
    if (get_int(&p, p.root, "eos_token_id", 0, c->vocab_size - 1, 1, 0, &id) < 0) goto fail;
    c->eos_token_id = (int)id;
    if (get_int(&p, p.root, "max_position_embeddings", 1, (int64_t)1 << 40, 0, 1 << 20,
                &c->max_position_embeddings) < 0)
        goto fail;

    json_t *sf = json_object_get(p.root, "scoring_func");
    if (!sf) { fail(&p, "scoring_func", "missing"); goto fail; }
    if (!json_is_string(sf)) { fail(&p, "scoring_func", "is not a string"); goto fail; }
    if (strcmp(json_string_value(sf), "sqrtsoftplus") == 0) c->scoring_func = DSV4_SCORE_SQRTSOFTPLUS;
    else if (strcmp(json_string_value(sf), "softmax") == 0) c->scoring_func = DSV4_SCORE_SOFTMAX;
    else if (strcmp(json_string_value(sf), "sigmoid") == 0) c->scoring_func = DSV4_SCORE_SIGMOID;
    else { fail(&p, "scoring_func", "is not sqrtsoftplus, softmax or sigmoid"); goto fail; }

    json_t *ed = json_object_get(p.root, "expert_dtype");
    c->expert_fp4 = 0;
    if (ed && !json_is_null(ed)) {
        if (!json_is_string(ed)) { fail(&p, "expert_dtype", "is not a string"); goto fail; }
        if (strcmp(json_string_value(ed), "fp4") == 0) c->expert_fp4 = 1;
        else if (strcmp(json_string_value(ed), "fp8") != 0) {
            fail(&p, "expert_dtype", "is not \"fp4\" or \"fp8\"");
            goto fail;
        }
    }
    if (parse_quant(&p, c) < 0) goto fail;
    if (parse_rope_scaling(&p, c) < 0) goto fail;

    /* compress_ratios: one per block, main layers then MTP layers. */
    json_t *cr = json_object_get(p.root, "compress_ratios");
    int n_blocks = dsv4_config_n_blocks(c);
    if (!cr) { fail(&p, "compress_ratios", "missing"); goto fail; }
    if (!json_is_array(cr)) { fail(&p, "compress_ratios", "is not a list"); goto fail; }
    if ((int)json_array_size(cr) < n_blocks) {
        char msg[160];
        snprintf(msg, sizeof msg, "has %zu entries, fewer than num_hidden_layers + "
                 "num_nextn_predict_layers = %d", json_array_size(cr), n_blocks);
        fail(&p, "compress_ratios", msg);
        goto fail;
    }
    c->n_compress_ratios = (int)json_array_size(cr);
    for (int i = 0; i < n_blocks; i++) {
        json_t *v = json_array_get(cr, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 20)) {
            char f[64];
            snprintf(f, sizeof f, "compress_ratios[%d]", i);
            fail(&p, f, "is not an integer in [0, 1048576]");
            goto fail;
        }
        c->compress_ratios[i] = (int)json_integer_value(v);
    }

    /* Consistency the forward pass relies on. */
    if (c->qk_rope_head_dim >= c->head_dim || c->qk_rope_head_dim % 2) {
        fail(&p, "qk_rope_head_dim", "must be even and smaller than head_dim");
        goto fail;
    }
    if (c->qk_rope_head_dim >= c->index_head_dim) {
        fail(&p, "index_head_dim", "must be larger than qk_rope_head_dim");
        goto fail;
    }
    if ((int64_t)c->num_attention_heads * c->head_dim % c->o_groups) {
        fail(&p, "o_groups", "must divide num_attention_heads * head_dim");
        goto fail;
    }
    if (c->num_experts_per_tok > c->n_routed_experts) {
        fail(&p, "num_experts_per_tok", "is larger than n_routed_experts");
        goto fail;
    }
    if (c->num_hash_layers > c->num_hidden_layers) {
        fail(&p, "num_hash_layers", "is larger than num_hidden_layers");
        goto fail;
    }
    /* FP8 act quant works on 128-wide blocks of each GEMM input, the KV quant on
       64-wide blocks of the non-rope dims, FP4 on 32-wide blocks. */
    if (c->hidden_size % 128) { fail(&p, "hidden_size", "must be a multiple of 128"); goto fail; }
    if ((c->head_dim - c->qk_rope_head_dim) % 64) {
        fail(&p, "head_dim", "minus qk_rope_head_dim must be a multiple of 64");
        goto fail;
    }
    if (c->index_head_dim & (c->index_head_dim - 1)) {
        fail(&p, "index_head_dim", "must be a power of two (Hadamard rotation)");
        goto fail;
    }
    if (c->moe_intermediate_size % 128 || c->q_lora_rank % 128 || c->o_lora_rank % 128 ||
        (c->num_attention_heads * c->head_dim / c->o_groups) % 128) {
        fail(&p, "moe_intermediate_size/q_lora_rank/o_lora_rank", "must be multiples of 128");
        goto fail;
    }
    note_unknown(&p, notes, noteslen);
    if (notes && noteslen && c->n_compress_ratios > n_blocks) {
        size_t used = strlen(notes);
        snprintf(notes + used, noteslen - used, "%sconfig.json: compress_ratios has %d entries, "
                 "using the first %d (layers + MTP)", used ? "; " : "", c->n_compress_ratios,
                 n_blocks);
    }
    rc = 0;
fail:
    json_decref(p.root);
    return rc;
}

int dsv4_config_load(const char *path, dsv4_config *cfg, char *notes, size_t noteslen,
                     char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    int rc = DSV4_EIO;
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return DSV4_EIO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size > (16 << 20)) {
        snprintf(err, errlen, "%s: not a regular file under 16 MiB", path);
        rc = DSV4_EINVAL;
        goto fail;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) { rc = DSV4_ENOMEM; snprintf(err, errlen, "%s: out of memory", path); goto fail; }
    if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        snprintf(err, errlen, "%s: read error", path);
        goto fail;
    }
    const char *base = strrchr(path, '/');
    rc = dsv4_config_parse(buf, (size_t)st.st_size, base ? base + 1 : path, cfg, notes, noteslen,
                           err, errlen);
fail:
    free(buf);
    fclose(f);
    return rc;
}
