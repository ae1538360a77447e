/* engine/model.h: the engine-private description of a loaded DeepSeek-V4
 * checkpoint. Private to engine/ (and the CPU reference in tests/).
 *
 * Three layers, each usable alone:
 *   1. dsv4_config      — config.json parsed (engine/config.c). Field names are
 *                         the config.json keys so code reads against it.
 *   2. dsv4_st_set      — the safetensors files, memory-mapped and validated
 *                         (engine/safetensors.c): every header checked, every
 *                         tensor's bytes inside its file, no overlaps.
 *   3. dsv4_model       — the two above plus typed views of every weight the
 *                         forward pass needs, checked against the config:
 *                         every tensor present with the dtype and shape the
 *                         config implies (engine/weights.c).
 *
 * Weights are never copied: a dsv4_tensor points into the mmapped file. They
 * stay valid until dsv4_model_free. Tensor names are those of the release
 * (and of inference/model.py's state dict): "layers.3.attn.wq_a.weight",
 * "layers.3.attn.wq_a.scale", "layers.0.ffn.gate.tid2eid", "mtp.0.e_proj.weight".
 *
 * Quantized weight formats (dsv4_weight):
 *   DSV4_WQ_BF16  w: BF16 [out][in]; no scale.
 *   DSV4_WQ_FP8   w: F8_E4M3 [out][in]; scale: F8_E8M0 [ceil(out/128)][ceil(in/128)],
 *                 one power-of-two scale per 128x128 block (partial edge blocks);
 *                 real weight = e4m3(w[o][i]) * 2^(scale[o/128][i/128] - 127).
 *   DSV4_WQ_FP4   w: I8 [out][in/2], two e2m1 codes per byte, the LOW nibble is
 *                 the even input index; scale: F8_E8M0 [out][in/32];
 *                 real weight = e2m1(code) * 2^(scale[o][i/32] - 127).
 *   DSV4_WQ_F32   w: F32 [out][in] (not used by the release; accepted by views).
 * dsv4_weight.out / .in are the LOGICAL sizes (for FP4, in = 2 * bytes per row).
 *
 * Decoders for these formats (e4m3, e8m0, e2m1, bf16) are the inline
 * functions at the end of this file, so every user decodes the same way. */
#ifndef DSV4_ENGINE_MODEL_H
#define DSV4_ENGINE_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ config */

#define DSV4_MAX_LAYERS 512 /* sanity bound on num_hidden_layers + MTP layers */

typedef struct dsv4_config {
    int vocab_size;
    int hidden_size;            /* "dim" in model.py */
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;    /* must be 1 (one shared KV head) */
    int head_dim;
    int qk_rope_head_dim;       /* rope dims at the END of each head */
    int q_lora_rank;
    int o_groups;
    int o_lora_rank;
    int n_routed_experts;
    int num_experts_per_tok;
    int moe_intermediate_size;
    int n_shared_experts;       /* must be 1 */
    int num_hash_layers;        /* layers [0, num_hash_layers) route by tid2eid */
    int index_n_heads;
    int index_head_dim;
    int index_topk;
    int sliding_window;         /* window_size in model.py */
    int num_nextn_predict_layers; /* MTP blocks */
    int n_compress_ratios;      /* entries in config.json's list (may be longer) */
    int compress_ratios[DSV4_MAX_LAYERS]; /* [num_hidden_layers + num_nextn_predict_layers]
                                    used; 0, 4 or 128 (any ratio > 0 accepted;
                                    overlap windows iff ratio == 4) */
    double rope_theta;          /* window-only layers: plain RoPE, no YaRN */
    double compress_rope_theta; /* compressed layers: YaRN */
    int rope_scaling_yarn;      /* 1 when rope_scaling.type is "yarn" */
    double rope_factor;                  /* rope_scaling.factor */
    int64_t original_max_position_embeddings; /* rope_scaling.original_...; 0: no YaRN */
    double beta_fast, beta_slow;         /* rope_scaling.beta_fast / beta_slow */
    double rms_norm_eps;
    int hc_mult;
    int hc_sinkhorn_iters;
    double hc_eps;
    double routed_scaling_factor;
    int scoring_func;           /* DSV4_SCORE_* */
    double swiglu_limit;        /* 0: no clamp */
    int bos_token_id, eos_token_id;
    int64_t max_position_embeddings;
    /* quantization_config: 1 when present with fmt e4m3 / ue8m0 / 128x128 blocks;
       then the attention, shared-expert and MTP projections are FP8. */
    int quant_fp8;
    int weight_block_size[2];   /* [128, 128] */
    int expert_fp4;             /* expert_dtype == "fp4": routed experts FP4 */
} dsv4_config;

enum { DSV4_SCORE_SQRTSOFTPLUS = 0, DSV4_SCORE_SOFTMAX = 1, DSV4_SCORE_SIGMOID = 2 };

/* Parses dir/config.json (path given in full). Errors name config.json and the
 * field: "config.json: field 'hidden_size' missing". Unused fields are
 * accepted; when `notes` is not NULL a one-line summary of ignored fields is
 * written there (e.g. "config.json: ignoring fields: dspark_block_size, ..."),
 * empty when none. */
int dsv4_config_load(const char *path, dsv4_config *cfg, char *notes, size_t noteslen,
                     char *err, size_t errlen);
/* The same from a JSON text in memory (name is used in messages). */
int dsv4_config_parse(const char *json, size_t len, const char *name, dsv4_config *cfg,
                      char *notes, size_t noteslen, char *err, size_t errlen);

/* Total blocks described: main layers + MTP layers. */
static inline int dsv4_config_n_blocks(const dsv4_config *c)
{
    return c->num_hidden_layers + c->num_nextn_predict_layers;
}

/* ----------------------------------------------------------- safetensors */

typedef enum dsv4_dtype {
    DSV4_DT_UNKNOWN = 0,
    DSV4_DT_BF16,
    DSV4_DT_F16,
    DSV4_DT_F32,
    DSV4_DT_F64,
    DSV4_DT_F8_E4M3,
    DSV4_DT_F8_E5M2,
    DSV4_DT_F8_E8M0,
    DSV4_DT_I8,
    DSV4_DT_U8,
    DSV4_DT_I16,
    DSV4_DT_I32,
    DSV4_DT_I64,
    DSV4_DT_BOOL,
} dsv4_dtype;

const char *dsv4_dtype_name(dsv4_dtype t);   /* "BF16", ... as in safetensors */
size_t dsv4_dtype_size(dsv4_dtype t);        /* bytes per element */

#define DSV4_MAX_DIMS 8

/* One tensor in a mapped file. */
typedef struct dsv4_tensor {
    const char *name;        /* owned by the set; NULL for an absent optional tensor */
    const char *file;        /* file name (no directory), for messages */
    dsv4_dtype dtype;
    int ndim;
    int64_t shape[DSV4_MAX_DIMS];
    const uint8_t *data;     /* mmapped, read-only */
    uint64_t nbytes;
} dsv4_tensor;

typedef struct dsv4_st_set dsv4_st_set;

/* Opens a model directory's weights: dir/model.safetensors.index.json when it
 * exists (every shard it names must exist and every tensor must be in the
 * shard it names), else dir/model.safetensors. Every file is mmapped and its
 * header validated. Errors name the file and the tensor. */
int dsv4_st_open_dir(const char *dir, dsv4_st_set **out, char *err, size_t errlen);
/* Opens one .safetensors file alone (tests, golden cases). */
int dsv4_st_open_file(const char *path, dsv4_st_set **out, char *err, size_t errlen);
void dsv4_st_close(dsv4_st_set *s);
/* NULL when absent. */
const dsv4_tensor *dsv4_st_find(const dsv4_st_set *s, const char *name);
size_t dsv4_st_count(const dsv4_st_set *s);
const dsv4_tensor *dsv4_st_at(const dsv4_st_set *s, size_t i); /* sorted by name */

/* ----------------------------------------------------------------- weights */

typedef enum dsv4_wq { DSV4_WQ_NONE = 0, DSV4_WQ_BF16, DSV4_WQ_F32, DSV4_WQ_FP8, DSV4_WQ_FP4 } dsv4_wq;

/* A linear layer's weight y = x W^T, W logically [out][in]. */
typedef struct dsv4_weight {
    dsv4_wq q;
    int64_t out, in;         /* logical sizes */
    dsv4_tensor w;           /* the stored weight (see the top of the file) */
    dsv4_tensor scale;       /* F8_E8M0, FP8/FP4 only (scale.data NULL otherwise) */
} dsv4_weight;

/* Compressor (model.py Compressor): gated pooling of `ratio` tokens.
 * dim = head_dim of what it compresses (attention head_dim, or index_head_dim
 * for the indexer's own compressor); coff = 2 when overlap (ratio == 4) else 1. */
typedef struct dsv4_compressor_w {
    int ratio, head_dim, overlap, rotate; /* rotate: indexer compressor (Hadamard + FP4) */
    dsv4_weight wkv;         /* BF16 [coff*head_dim][hidden] */
    dsv4_weight wgate;       /* BF16 [coff*head_dim][hidden] */
    dsv4_tensor ape;         /* F32 [ratio][coff*head_dim] */
    dsv4_tensor norm;        /* BF16 [head_dim] RMSNorm weight */
} dsv4_compressor_w;

/* Lightning indexer (model.py Indexer), ratio-4 layers only. */
typedef struct dsv4_indexer_w {
    dsv4_weight wq_b;        /* FP8 [index_n_heads*index_head_dim][q_lora_rank] */
    dsv4_weight weights_proj;/* BF16 [index_n_heads][hidden] */
    dsv4_compressor_w compressor; /* head_dim = index_head_dim, rotate = 1 */
} dsv4_indexer_w;

typedef struct dsv4_attn_w {
    int compress_ratio;      /* 0 window only, 4 CSA (+indexer), other >0: HCA */
    dsv4_tensor attn_sink;   /* F32 [num_attention_heads] */
    dsv4_weight wq_a;        /* [q_lora_rank][hidden] */
    dsv4_tensor q_norm;      /* BF16 [q_lora_rank] */
    dsv4_weight wq_b;        /* [heads*head_dim][q_lora_rank] */
    dsv4_weight wkv;         /* [head_dim][hidden] */
    dsv4_tensor kv_norm;     /* BF16 [head_dim] */
    dsv4_weight wo_a;        /* [o_groups*o_lora_rank][heads*head_dim/o_groups]; group g
                                uses rows [g*o_lora_rank, (g+1)*o_lora_rank) */
    dsv4_weight wo_b;        /* [hidden][o_groups*o_lora_rank] */
    int has_compressor, has_indexer;
    dsv4_compressor_w compressor;
    dsv4_indexer_w indexer;
} dsv4_attn_w;

typedef struct dsv4_expert_w {
    dsv4_weight w1;          /* gate [moe_intermediate_size][hidden] */
    dsv4_weight w2;          /* down [hidden][moe_intermediate_size] */
    dsv4_weight w3;          /* up   [moe_intermediate_size][hidden] */
} dsv4_expert_w;

typedef struct dsv4_ffn_w {
    int hash;                /* layer < num_hash_layers: experts from tid2eid */
    dsv4_weight gate;        /* BF16 [n_routed_experts][hidden] */
    dsv4_tensor gate_bias;   /* F32 [n_routed_experts]; data NULL on hash layers */
    dsv4_tensor tid2eid;     /* I64 [vocab_size][num_experts_per_tok]; hash layers only;
                                every entry checked in [0, n_routed_experts) at load */
    dsv4_expert_w *experts;  /* [n_routed_experts] (FP4 when expert_fp4) */
    dsv4_expert_w shared;    /* the shared expert (FP8 when quant_fp8) */
} dsv4_ffn_w;

/* The hyper-connection parameters of one mixing site. mix_hc = (2+hc)*hc. */
typedef struct dsv4_hc_w {
    dsv4_tensor fn;          /* F32 [mix_hc][hc*hidden] (head: [hc][hc*hidden]) */
    dsv4_tensor base;        /* F32 [mix_hc] (head: [hc]) */
    dsv4_tensor scale;       /* F32 [3] (head: [1]) */
} dsv4_hc_w;

typedef struct dsv4_block_w {
    int layer_id;            /* index into compress_ratios (MTP: num_hidden_layers + i) */
    int is_mtp;
    dsv4_tensor attn_norm, ffn_norm; /* BF16 [hidden] */
    dsv4_hc_w hc_attn, hc_ffn;
    dsv4_attn_w attn;
    dsv4_ffn_w ffn;
    /* MTP only (is_mtp): */
    dsv4_weight e_proj, h_proj; /* [hidden][hidden] */
    dsv4_tensor enorm, hnorm, norm; /* BF16 [hidden] */
    dsv4_hc_w hc_head;
} dsv4_block_w;

typedef struct dsv4_model {
    dsv4_config cfg;
    char dir[4096];
    dsv4_st_set *st;
    dsv4_block_w *layers;    /* [num_hidden_layers] */
    dsv4_block_w *mtp;       /* [num_nextn_predict_layers] */
    dsv4_tensor embed;       /* BF16 [vocab][hidden] */
    dsv4_tensor head;        /* BF16 [vocab][hidden] */
    dsv4_tensor norm;        /* BF16 [hidden] final RMSNorm */
    dsv4_hc_w hc_head;       /* hc head mix: fn [hc][hc*hidden], base [hc], scale [1] */
    uint8_t fingerprint[32]; /* see engine/weights.c */
    char notes[512];         /* e.g. ignored config fields, for verbose output */
} dsv4_model;

/* Loads dir/config.json and the weights, validating everything (see top).
 * Errors: DSV4_EINVAL (bad file: message names the file and the tensor/field),
 * DSV4_EIO (cannot open/read), DSV4_ENOMEM. */
int dsv4_model_load(const char *dir, dsv4_model **out, char *err, size_t errlen);
void dsv4_model_free(dsv4_model *m);

/* Checks a set of tensors against a config without building the model
 * (used by dsv4_model_load; exposed for tests). */
int dsv4_model_check(const dsv4_config *cfg, const dsv4_st_set *st, char *err, size_t errlen);

/* --------------------------------------------------------------- decoders */

static inline float dsv4_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch's .to(torch.bfloat16). NaN kept NaN. */
static inline uint16_t dsv4_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float dsv4_round_bf16(float f) { return dsv4_bf16_to_f32(dsv4_f32_to_bf16(f)); }

/* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no inf; 0x7f/0xff NaN. */
static inline float dsv4_e4m3_to_f32(uint8_t b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 0) v = (float)m * (1.0f / 512.0f); /* subnormal: m/8 * 2^-6 */
    else if (e == 15 && m == 7) v = __builtin_nanf("");
    else {
        uint32_t u = ((uint32_t)(e - 7 + 127) << 23) | ((uint32_t)m << 20);
        memcpy(&v, &u, 4);
    }
    return s ? -v : v;
}

/* e8m0: 2^(b - 127); 0xff is NaN. */
static inline float dsv4_e8m0_to_f32(uint8_t b)
{
    if (b == 0xff) return __builtin_nanf("");
    if (b == 0) return 0x1p-127f;
    uint32_t u = (uint32_t)b << 23;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* e2m1 code (4 bits): 0, .5, 1, 1.5, 2, 3, 4, 6 and negatives. */
static inline float dsv4_e2m1_to_f32(unsigned code)
{
    static const float lut[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,
                                  -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
    return lut[code & 15];
}

#endif
