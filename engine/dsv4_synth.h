/* engine/dsv4_synth.h: model directories without a GPU — make a small
 * DeepSeek-V4-architecture model with deterministic random weights in the
 * release's file format, and validate a model directory the way the engine
 * does at open. Part of engine/'s public contract (to be folded into
 * dsv4_engine.h by the lead; kept apart so that header stays untouched).
 *
 * Errors: 0 or a negative DSV4_E* code (engine/dsv4_engine.h) with a message
 * naming the file, tensor or field in err[errlen]. */
#ifndef DSV4_SYNTH_H
#define DSV4_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "engine/dsv4_engine.h"

typedef struct dsv4_synth_options {
    const char *preset;  /* "demo": vocab 129280 (the real tokenizer's), hidden 256,
                            4 layers with compress_ratios [0, 4, 128, 4] + 0 (MTP),
                            sliding_window 128, index_topk 64, 8 experts top-2;
                            "tiny": the golden tiny sizes (vocab 2048, 5 layers
                            [0, 4, 128, 4, 128] + 0, sliding_window 64) */
    const char *out_dir; /* created if missing; config.json and model.safetensors
                            are written there (an existing model is replaced) */
    uint64_t seed;       /* same preset + seed -> byte-identical files */
} dsv4_synth_options;

/* Writes out_dir/config.json and out_dir/model.safetensors: F8_E4M3 weights
 * with F8_E8M0 128x128 block scales, routed experts FP4 (I8, two e2m1 codes
 * per byte, low nibble first) with F8_E8M0 per-32 scales, BF16 norms,
 * embedding, head, gate and compressor/indexer projections, F32 hc_*, ape,
 * attn_sink and gate bias, I64 tid2eid, mtp.0.* — the release's names,
 * dtypes and shapes. Weights are scaled so activations stay O(1) through
 * every block. The file is written to a temporary name and renamed. */
int dsv4_model_synth(const dsv4_synth_options *o, char *err, size_t errlen);

/* Loads and validates model_dir (config.json, every safetensors header, the
 * expected tensor set) without a GPU, filling info; notes receives e.g. the
 * config fields that were ignored (may be NULL). */
int dsv4_model_verify(const char *model_dir, dsv4_model_info *info, size_t *n_tensors,
                      char *notes, size_t noteslen, char *err, size_t errlen);

#endif
