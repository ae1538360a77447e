/* tests/ref_model.h: a CPU reference of the whole DeepSeek-V4 forward pass,
 * in plain C, following the official inference/model.py and the rounding of
 * its kernels (kernel_tilelang.py). It exists so that every GPU operation can
 * be compared with it, and so that the tests can check the model against the
 * golden outputs of the official code (tests/golden/tiny/).
 *
 * Conventions (all functions):
 *   - Activations are float arrays. Where the official code holds a bf16
 *     tensor, the reference holds floats that are exactly bf16 values (it
 *     rounds with dsv4_round_bf16 at the same places the official code casts).
 *     "-> bf16" below means the result is rounded to bf16.
 *   - Rows are contiguous: x[n][dim].
 *   - Built with -ffp-contract=off (no fused multiply-add), so results are the
 *     same on every machine. Sums run in index order in float unless stated.
 *   - Sizes come from the model's dsv4_config (engine/model.h).
 *
 * Unlike the official code (one-shot prefill from position 0, then one token
 * at a time), ref_seq_forward runs a chunk of any length from any position,
 * with the per-layer state (window ring, compressed entries, indexer keys,
 * compressors' partial state) carried between calls. Every per-token result
 * is independent of how the sequence was chunked: the attention of a token
 * always visits its keys in one canonical order (below), so chunked prefill
 * reproduces one-shot prefill bit for bit.
 *
 * One block, step by step, with its rounding (what the golden data agrees
 * with; "fp8-linear" = FP8 act quant of the input in 128 blocks, then the
 * blocked GEMM of ref_linear, output bf16):
 *   hc_pre: f32 mixes = (x_flat . fn) * rsqrt(mean(x_flat^2) + rms_norm_eps),
 *     Sinkhorn split, y = bf16(sum_j pre_j x_j);  attn_norm -> bf16.
 *   q: fp8-linear wq_a -> q_norm (bf16) = qr -> fp8-linear wq_b -> per head
 *     q *= rsqrt(mean(q^2) + eps) with EVERY op a bf16 tensor op (square,
 *     mean, + eps, rsqrt, multiply each rounded) -> RoPE on the last
 *     qk_rope_head_dim dims (pairs 2i, 2i+1) -> bf16.
 *   kv: fp8-linear wkv -> kv_norm -> RoPE -> FP8 quant-dequant of the
 *     non-rope dims in 64 blocks (ref_act_quant(kv, n, hd-rd, hd, 64)).
 *   RoPE tables: window-only layers rope_theta, no YaRN; compressed layers
 *     compress_rope_theta with YaRN (factor, original_max_position_embeddings,
 *     beta_fast/slow); angles pos * freq in f32.
 *   compressor (ratio r, overlap iff r == 4): wkv/wgate as F.linear in f32
 *     on the bf16 input (bf16 weights as f32, no act quant, no rounding),
 *     score += ape[pos % r]; pool per dim with a softmax over the window's
 *     rows (overlap: previous window's first head_dim dims then this
 *     window's last head_dim dims; the first window's "previous" rows are
 *     kv 0 / score -inf) -> bf16 -> RMSNorm(norm) -> RoPE at the window's
 *     first position -> main: FP8 64-block quant of non-rope dims; indexer:
 *     Hadamard (f32 sum, * dim^-0.5, bf16) + FP4 32-block quant-dequant.
 *   indexer (r == 4): fp8-linear indexer.wq_b on qr -> RoPE -> Hadamard ->
 *     FP4; weights = bf16(bf16(x . weights_proj^T) * ihd^-0.5 * ih^-0.5);
 *     score = see ref_indexer_select; top index_topk of the visible entries.
 *   attention: ref_sparse_attn over the key order below, softmax_scale
 *     head_dim^-0.5 -> inverse RoPE -> wo_a per group as a bf16 einsum with
 *     the dequantized FP8 weight (NO act quant: model.py declares wo_a bf16)
 *     -> fp8-linear wo_b.
 *   hc_post: bf16(post_j * f + sum_k comb[k][j] * x_k).  Then hc_pre with
 *     the ffn parameters, ffn_norm, MoE, hc_post.
 *   MoE: gate logits f32 (x . gate^T) -> ref_moe_gate; each expert: w1 and
 *     w3 fp4-linear (FP8 act quant, 32-wide K blocks) -> f32 clamp (up to
 *     [-limit, limit], gate to <= limit) -> silu(gate) * up * route weight
 *     -> bf16 -> fp4-linear w2; summed in f32 over the token's experts in
 *     ascending expert id, + the shared expert (fp8-linear, no weight),
 *     -> bf16.
 *   head: hc_head (sigmoid pre only) -> bf16 -> norm -> f32 logits = x . head^T.
 *   MTP: e = enorm(embed(token t+1)), h = hnorm(h_t) per hc copy,
 *     x = bf16(fp8-linear e_proj(e) + fp8-linear h_proj(h)), a block with
 *     its own (window-only) state, then the head with the MTP's hc_head and norm.
 *
 * Canonical attention key order for the token at position p (official
 * sparse_attn over topk_idxs; -1 = no key):
 *   1. the window: positions max(0, p-W+1) .. p ascending, padded with -1 to W
 *      entries (W = sliding_window), as get_window_topk_idxs;
 *   2. compressed entries visible at p, i.e. entries w < (p+1)/ratio:
 *      ratio 128 (HCA): all of them, ascending;
 *      ratio 4 (CSA): the min(index_topk, visible) best by index score,
 *      descending score, ties to the lower entry (torch.topk order).
 * The softmax takes the max over ALL keys of the list first (not online per
 * block of keys as kernel_tilelang.py's sparse_attn): p_j = exp(s_j - max) in
 * f32, denominator = sum p_j + exp(attn_sink[h] - max) in f32, value sum
 * = sum bf16(p_j) * v_j in f32, o = bf16(value sum / denominator). This is
 * what the golden outputs agree with: the online-softmax variant (bf16(p)
 * relative to a running max) put the CSA blocks at median 1e-2, this one at
 * 1e-4; normalising before the bf16 rounding is far worse. An order of keys
 * is still fixed (above) so float sums are reproducible. */
#ifndef DSV4_TESTS_REF_MODEL_H
#define DSV4_TESTS_REF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

/* ------------------------------------------------------------ scalars */

/* f32 -> nearest e4m3fn value (round half to even), input already clamped
 * to [-448, 448] by the callers as in act_quant. */
float ref_round_e4m3(float x);
/* f32 -> nearest e2m1 value (0, .5, 1, 1.5, 2, 3, 4, 6; half to even). */
float ref_round_e2m1(float x);
/* 2^ceil(log2(x)) by exponent bits, as fast_round_scale (x > 0, normal). */
float ref_pow2_ceil(float x);

/* ------------------------------------------------------------ operations */

/* RMSNorm (model.py RMSNorm): y = bf16(w * (x * 1/sqrt(mean(x^2) + eps))),
 * in f32. w may be NULL (weight 1). In place allowed (y == x). */
void ref_rmsnorm(const float *x, const float *w, int64_t n, int dim, float eps, float *y);

/* FP8 act quant-dequant (act_quant, inplace): per `block` values of each row,
 * s = 2^ceil(log2(max(amax, 1e-4) / 448)), x = bf16(e4m3(clamp(x/s)) * s).
 * dim % block == 0. Rows of `dim` values with stride `stride` (>= dim), so the
 * KV's non-rope dims can be quantized in place: ref_act_quant(kv, n, hd-rd,
 * hd, 64). Used with block 128 before every FP8/FP4 GEMM. */
void ref_act_quant(float *x, int64_t n, int dim, int stride, int block);

/* FP4 quant-dequant (fp4_act_quant, inplace): per 32 values,
 * s = 2^ceil(log2(max(amax, 6*2^-126) / 6)), x = bf16(e2m1(clamp(x/s, +-6)) * s). */
void ref_fp4_act_quant(float *x, int64_t n, int dim);

/* Normalised Walsh-Hadamard transform of each row (dim a power of two),
 * scale dim^-0.5, summed in f32, -> bf16 (rotate_activation). In place. */
void ref_hadamard(float *x, int64_t n, int dim);

/* A weight dequantized to f32 for the reference: w[out][in] = stored value
 * times its block scale (exact: scales are powers of two). */
typedef struct ref_weight {
    dsv4_wq q;          /* format of the stored weight */
    int64_t out, in;
    float *w;           /* [out][in], owned */
    float *wt;          /* [in][out], the same transposed (the GEMM loops vectorize
                           over outputs without changing the order of any sum) */
} ref_weight;

int ref_weight_load(const dsv4_weight *src, ref_weight *dst);
void ref_weight_free(ref_weight *w);

/* The official `linear`: for FP8 / FP4 weights, x is first FP8 act-quantized
 * (128 blocks) on a copy, then y = x W^T accumulated in f32 per K block
 * (128 for FP8, 32 for FP4, as the kernels accumulate a block and add it
 * scaled) -> bf16. For BF16 weights: y = bf16(x W^T) (F.linear in bf16).
 * x[n][in], y[n][out]. Rows split over 2 threads when the product is large. */
void ref_linear(const ref_weight *w, const float *x, int64_t n, float *y);
/* F.linear in f32, no rounding (compressor wkv/wgate, MoE gate, head, hc).
 * w[out][in]; the _t form takes it transposed (wt[in][out], e.g. a
 * ref_weight's wt), which is what the model uses to avoid a transpose per call. */
void ref_linear_f32(const float *w, int64_t out, int64_t in, const float *x, int64_t n, float *y);
void ref_linear_f32_t(const float *wt, int64_t out, int64_t in, const float *x, int64_t n,
                      float *y);
/* w[out][in] -> a new [in][out] (free with free()). */
float *ref_transpose(const float *w, int64_t out, int64_t in);

/* RoPE (apply_rotary_emb) on `rd` dims starting at x[.., off], pairs
 * (2i, 2i+1) rotated by angle pos * freq[i]; inverse rotates by -angle. Each
 * row r has position pos[r]; rows of `stride` floats; `heads` consecutive
 * groups of `head_stride` floats share a position (heads=1 for KV). -> bf16. */
typedef struct ref_rope {
    int rd;
    float *freq;        /* [rd/2] (precompute_freqs_cis, YaRN when enabled) */
} ref_rope;
int ref_rope_init(ref_rope *r, int rd, double base, int yarn, int64_t original_seq_len,
                  double factor, double beta_fast, double beta_slow);
void ref_rope_free(ref_rope *r);
void ref_rope_apply(const ref_rope *r, float *x, int64_t n, const int64_t *pos, int heads,
                    int head_stride, int stride, int off, int inverse);

/* hc_split_sinkhorn for one token: mixes[(2+hc)*hc] -> pre[hc], post[hc],
 * comb[hc][hc] (comb[k][j]: weight of residual copy k in output copy j). */
void ref_hc_split_sinkhorn(const float *mixes, const float *hc_scale, const float *hc_base,
                           int hc, int iters, float eps, float *pre, float *post, float *comb);

/* Block.hc_pre for n tokens: x[n][hc][dim] (bf16 values) -> y[n][dim] (bf16),
 * post[n][hc], comb[n][hc][hc]. fn [(2+hc)*hc][hc*dim], scale[3], base. */
void ref_hc_pre(const float *x, int64_t n, int hc, int dim, const float *fn, const float *scale,
                const float *base, int iters, float norm_eps, float hc_eps, float *y, float *post,
                float *comb);
/* The same with fn transposed ([hc*dim][(2+hc)*hc]). */
void ref_hc_pre_t(const float *x, int64_t n, int hc, int dim, const float *fn_t, const float *scale,
                  const float *base, int iters, float norm_eps, float hc_eps, float *y, float *post,
                  float *comb);
/* Block.hc_post: out[t][j] = bf16(post[j] * f[t] + sum_k comb[k][j] * res[t][k]). */
void ref_hc_post(const float *f, const float *res, const float *post, const float *comb, int64_t n,
                 int hc, int dim, float *out);
/* ParallelHead.hc_head: x[n][hc][dim] -> y[n][dim] bf16 (sigmoid pre only). */
void ref_hc_head(const float *x, int64_t n, int hc, int dim, const float *fn, const float *scale,
                 const float *base, float norm_eps, float hc_eps, float *y);

void ref_hc_head_t(const float *x, int64_t n, int hc, int dim, const float *fn_t,
                   const float *scale, const float *base, float norm_eps, float hc_eps, float *y);

/* Sparse attention for one query token: q[heads][hd] (bf16), keys[n_keys]
 * (pointers to rows of hd bf16 values, NULL = -1), attn_sink[heads],
 * softmax scale -> o[heads][hd] bf16 (see the top: global max, f32
 * denominator with the sink, bf16 probabilities in the value sum). The key
 * and value are the same row (MQA); scores s_j = (q_h . k_j) * softmax_scale. */
void ref_sparse_attn(const float *q, int heads, int hd, const float *const *keys, int n_keys,
                     const float *attn_sink, float softmax_scale, float *o);

/* Compressor partial state (Compressor.kv_state / score_state): rows
 * [coff*ratio][coff*head_dim], kv starting 0 and score -inf. */
typedef struct ref_comp_state {
    int ratio, head_dim, overlap;
    float *kv, *score;
} ref_comp_state;
int ref_comp_state_init(ref_comp_state *s, int ratio, int head_dim, int overlap);
void ref_comp_state_free(ref_comp_state *s);
/* One token at position pos: kv/score[coff*head_dim] are the f32 wkv/wgate
 * outputs, ape[ratio][coff*head_dim]. When pos completes a window
 * ((pos+1) % ratio == 0), writes the pooled f32 entry into out[head_dim]
 * (softmax over the window's 2*ratio (overlap) or ratio rows, per dim) and
 * returns 1; else 0. Prefill and decode of the official Compressor are both
 * this step applied token after token. */
int ref_comp_step(ref_comp_state *s, int64_t pos, const float *kv, const float *score,
                  const float *ape, float *out);
/* After the pool: bf16, RMSNorm(norm_w), RoPE at position `pos0` (the
 * window's first token) on the last rd dims, then for the attention's
 * compressor FP8 quant-dequant of the non-rope dims (64 blocks), for the
 * indexer's (rotate) Hadamard + FP4 quant-dequant. In place on entry[head_dim]. */
void ref_comp_finish(float *entry, int head_dim, const float *norm_w, float eps,
                     const ref_rope *rope, int64_t pos0, int rotate);

/* Indexer scores of one query token: q[ih][ihd] (rotated + FP4), weights[ih]
 * (weights_proj * ihd^-0.5 * ih^-0.5, bf16), keys idx_kv[n_vis][ihd]:
 * score[t] = bf16(sum_h bf16(relu(bf16(q_h . k_t)) * w_h)). Then the top
 * min(topk, n_vis) entries in torch.topk order into sel, returns the count. */
int ref_indexer_select(const float *q, const float *weights, int ih, int ihd, const float *idx_kv,
                       int64_t n_vis, int topk, float *score_scratch, int64_t *sel);

/* MoE gate for one token (Gate.forward): gate_logits[n_routed_experts] =
 * x . gate_w^T in f32 -> experts[k], weights[k] (f32): sqrt(softplus) scores
 * (or the configured scoring_func), bias only for the selection, tid2eid_row
 * (the token's row of tid2eid) instead of the top-k on hash layers (NULL
 * otherwise), normalised, times routed_scaling_factor. */
void ref_moe_gate(const dsv4_config *cfg, const float *gate_logits, const float *bias,
                  const int64_t *tid2eid_row, int *experts, float *weights);

/* ------------------------------------------------------------ the model */

typedef struct ref_model ref_model;
typedef struct ref_seq ref_seq;

/* Dequantizes every weight of m to f32 (the model stays owned by the caller
 * and must outlive the ref_model). */
int ref_model_open(const dsv4_model *m, ref_model **out, char *err, size_t errlen);
void ref_model_close(ref_model *r);
const dsv4_config *ref_model_config(const ref_model *r);

/* A sequence: the state of every main layer (and, for ref_seq_mtp, the MTP
 * block's own window state). */
int ref_seq_create(ref_model *r, ref_seq **out);
void ref_seq_free(ref_seq *s);
int64_t ref_seq_pos(const ref_seq *s);

/* Runs tokens[n] at positions pos..pos+n-1 through embed, every block and the
 * head. logits[n][vocab] (f32) for every token when not NULL; h_out
 * [n][hc][hidden] receives the last block's output (for the MTP block) when
 * not NULL. Decode is n = 1. */
int ref_seq_forward(ref_seq *s, const int32_t *tokens, int64_t n, float *logits, float *h_out);

/* Block `layer` alone on x[n][hc][hidden] at positions pos0.. of its own state
 * in s (the teacher-forced per-block check uses a fresh s, pos0 = 0). tokens
 * for hash routing. out may equal x. */
int ref_seq_block(ref_seq *s, int layer, const int32_t *tokens, int64_t n, const float *x,
                  float *out);

/* The MTP block (mtp.0) with its own state in s: h[n][hc][hidden] are the
 * main model's last-block outputs at positions pos.., next_tokens[n] the
 * tokens at pos+1..; logits[n][vocab]. */
int ref_seq_mtp(ref_seq *s, const int32_t *next_tokens, int64_t n, const float *h, float *logits);

/* The two sublayers alone, for comparing a GPU attention or MoE with them.
 * `block` is 0..num_hidden_layers-1, or num_hidden_layers + i for mtp.i.
 * ref_seq_attention: Attention.forward on x[n][hidden] (bf16, after
 * attn_norm) at the block's state position in s (advances it by n) ->
 * out[n][hidden] bf16. ref_model_moe: MoE.forward on x[n][hidden] (after
 * ffn_norm), tokens for hash routing -> out[n][hidden] bf16. */
int ref_seq_attention(ref_seq *s, int block, const float *x, int64_t n, float *out);
int ref_model_moe(const ref_model *r, int block, const int32_t *tokens, const float *x, int64_t n,
                  float *out);

/* The embedding rows of tokens, copied into the hc slots: x[n][hc][hidden]. */
void ref_embed(const ref_model *r, const int32_t *tokens, int64_t n, float *x);

#endif
