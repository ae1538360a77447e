/* engine/: DeepSeek-V4 on Vulkan compute. The whole public contract.
 *
 * The engine loads a Hugging Face checkpoint as released (config.json plus
 * model.safetensors or a sharded set with model.safetensors.index.json),
 * keeps its weights quantized on the GPU, and runs sequences: chunked
 * prefill, batched one-token decode, fork, and export/import of the complete
 * per-sequence state as the flat description of engine/dsv4_state.h. It
 * knows nothing of jobs, YAML, SQL or the cache's files.
 *
 * Errors: functions returning int give 0 or a negative DSV4_E* code and write
 * a message naming the file, tensor or limit into err[errlen]. */
#ifndef DSV4_ENGINE_H
#define DSV4_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/dsv4_state.h"

enum {
    DSV4_OK = 0,
    DSV4_EINVAL = -1,   /* bad argument or bad model file */
    DSV4_ENOMEM = -2,   /* host or device memory exhausted */
    DSV4_EIO = -3,      /* file could not be read */
    DSV4_EDEVICE = -4,  /* no usable Vulkan device, or a missing feature */
    DSV4_EVULKAN = -5,  /* a Vulkan call failed */
};

typedef struct dsv4_engine dsv4_engine;
typedef struct dsv4_seq dsv4_seq;

typedef struct dsv4_engine_options {
    const char *device;  /* index or name substring; NULL: $DSV4_DEVICE, else the
                            first discrete GPU, else any device (lavapipe) */
    int verbose;         /* print the chosen device and memory plan to stderr */
    int profile;         /* collect GPU timestamps per operation */
    /* Several devices (pipeline parallel, docs/engine.md "Several devices"):
       a comma-separated list of device indices or name substrings, e.g.
       "0,1,2,3"; the same device may appear more than once (each entry is
       opened as its own logical device). NULL: $DSV4_DEVICES; unset or empty:
       one device as chosen by `device`. Each device holds a contiguous range
       of the main blocks and their per-sequence state; the first also holds
       the embedding, the last the head and the MTP blocks. */
    const char *devices;
    /* Main blocks per device, e.g. "11,11,11,10": as many entries as
       devices, each >= 1, summing to num_hidden_layers (for
       dsv4_engine_open_synthetic: the number of layers kept). NULL:
       $DSV4_SPLIT; unset: computed from each device's free memory and the
       config's block sizes. A bad value fails the open with DSV4_EINVAL and a
       message naming what is wrong; an unknown device fails with
       DSV4_EDEVICE. */
    const char *split;
} dsv4_engine_options;

/* The sizes the rest of the program needs; all come from config.json. */
typedef struct dsv4_model_info {
    int vocab_size;
    int hidden_size;
    int num_hidden_layers;
    int bos_token_id, eos_token_id;
    int64_t max_position_embeddings;
    uint8_t fingerprint[32]; /* SHA-256 over config.json and the weights' identity
                                (tensor names, dtypes, shapes, sizes and the first and
                                last 4 KiB of each tensor's bytes: hashing all of a
                                149 GB checkpoint at every open would take minutes);
                                equal model -> equal fingerprint */
} dsv4_model_info;

int dsv4_engine_open(const char *model_dir, const dsv4_engine_options *opt,
                     dsv4_engine **out, char *err, size_t errlen);
void dsv4_engine_close(dsv4_engine *e);
const dsv4_model_info *dsv4_engine_info(const dsv4_engine *e);
/* The device's name; with several devices their names joined by " + ". */
const char *dsv4_engine_device_name(const dsv4_engine *e);
/* Tokens per pass (a prefill call is split into chunks of this many, a decode
 * call into passes of this many sequences): $DSV4_CHUNK, else 1024 on GPUs
 * (fewer weight reads per token) and 256 on CPU drivers. */
int dsv4_engine_chunk(const dsv4_engine *e);

/* ---- sequences ---- */

int dsv4_seq_create(dsv4_engine *e, dsv4_seq **out, char *err, size_t errlen);
void dsv4_seq_free(dsv4_seq *s);
int64_t dsv4_seq_pos(const dsv4_seq *s); /* tokens processed so far */

/* Appends n tokens (any n >= 1; the engine splits into its own chunks) at
 * positions pos..pos+n-1. logits_rows selects the logits written to logits:
 * 0 none, 1 the last position only ([vocab]), n every position ([n][vocab]). */
int dsv4_seq_prefill(dsv4_seq *s, const int32_t *tokens, int64_t n, float *logits,
                     int64_t logits_rows, char *err, size_t errlen);

/* One decode step for n_seqs sequences together: seqs[i] gets tokens[i] at its
 * own position; logits[i * vocab ...] receives its next-token logits. */
int dsv4_decode(dsv4_seq *const *seqs, int n_seqs, const int32_t *tokens, float *logits,
                char *err, size_t errlen);

/* A new sequence with the same state as src (for several questions over one
 * shared prefix). The compressed rows src completed are shared, not copied:
 * the fork owns only small buffers (window and compressor rings, the rows
 * it adds), src keeps going on its own, and either may be freed first.
 * $DSV4_FORK_COPY=1 when the engine opens: forks copy src's whole state
 * (the earlier behaviour, for comparison). */
int dsv4_seq_fork(const dsv4_seq *src, dsv4_seq **out, char *err, size_t errlen);

/* Device memory of a sequence's state, in bytes: *own_bytes, the buffers
 * it holds (rings, compressed rows it wrote; a sequence whose rows forks
 * read still counts them here), and *shared_bytes, the compressed rows of
 * another sequence's buffer that it reads as a fork (counted once, with the
 * sequence that wrote them). Either pointer may be NULL. */
void dsv4_seq_state_bytes(const dsv4_seq *s, uint64_t *own_bytes, uint64_t *shared_bytes);

/* ---- state export / import (for the prefix cache) ---- */

/* The layout of every sequence of this engine. Owned by the engine. */
const dsv4_state_layout *dsv4_engine_state_layout(const dsv4_engine *e);

/* Writes the rows that positions [pos0, pos) appended into chunk->rows[s]
 * (caller-allocated, (pos/r - pos0/r) * row_bytes each) and, when
 * chunk->boundary is not NULL, the boundary at the current position pos.
 * Sets chunk->pos0 = pos0, chunk->pos1 = pos. */
int dsv4_seq_export(const dsv4_seq *s, int64_t pos0, dsv4_state_chunk *chunk,
                    char *err, size_t errlen);

/* Restores state into a fresh sequence, one chunk at a time in order: the
 * chunk's rows are appended (chunk->pos0 must equal the end of the previous
 * chunk, 0 for the first); a chunk with a boundary completes the restore and
 * puts the sequence at position chunk->pos1, ready to prefill or decode. */
int dsv4_seq_import(dsv4_seq *s, const dsv4_state_chunk *chunk, char *err, size_t errlen);

/* ---- sampling (CPU, on logits the engine returned) ---- */

typedef struct dsv4_sampling {
    float temperature; /* 0: greedy (argmax, lowest id on ties) */
    float top_p;       /* 1: no nucleus cut */
    uint64_t seed;
} dsv4_sampling;

/* Next token from logits[vocab]. *rng is the caller's generator state, seeded
 * once from dsv4_sampling.seed with dsv4_sampler_seed, so a run is repeatable. */
void dsv4_sampler_seed(uint64_t *rng, uint64_t seed);
/* SplitMix64: advances the generator state *s and returns 64 random bits.
 * The sampler's generator, also used for deterministic synthetic data. */
uint64_t dsv4_splitmix64(uint64_t *s);
int32_t dsv4_sample(const float *logits, int vocab, const dsv4_sampling *p, uint64_t *rng);

/* ---- conformance hooks (used by `dsv4-batch conformance` and tests) ---- */

/* Runs block `layer` alone, as a prefill from position 0 of n tokens, on the
 * given input x[n][hc_mult][hidden_size] (f32), writing its output in the same
 * shape. tokens are needed for hash routing. */
int dsv4_engine_run_block(dsv4_engine *e, int layer, const int32_t *tokens, int64_t n,
                          const float *x, float *out, char *err, size_t errlen);

/* The MTP block fed the main model's last-block output h[n][hc_mult][hidden]
 * at position t and token tokens[t+1]: writes logits[n][vocab] (the last row
 * uses tokens[n] which the caller provides, so tokens has n + 1 entries). */
int dsv4_engine_run_mtp(dsv4_engine *e, const int32_t *tokens, int64_t n, const float *h,
                        float *logits, char *err, size_t errlen);

/* Per-operation GPU time since the last call (when opened with profile). */
typedef struct dsv4_profile_entry {
    char op[32];
    double ms;
    int64_t calls;
} dsv4_profile_entry;
int dsv4_engine_profile(dsv4_engine *e, dsv4_profile_entry *out, int cap);

/* What was submitted to the devices since the last call (summed over them):
 * passes (each waited for once), command buffers (a pass is submitted in
 * parts), compute dispatches, and the barriers among them (each
 * waits for everything before it, so at decode's few rows a step takes
 * about as long as its barriers times a dispatch's latency), and the host
 * seconds spent recording them (the device idles while the first part of a
 * pass is recorded, and wherever it catches up with the host). */
typedef struct dsv4_engine_counts {
    uint64_t passes, submits, dispatches, barriers;
    double record_seconds;
} dsv4_engine_counts;
void dsv4_engine_take_counts(dsv4_engine *e, dsv4_engine_counts *out);

/* ---- synthetic weights (benchmarks) ---- */

/* Opens an engine from config_path (a config.json) alone, with deterministic
 * pseudo-random weights written directly on the GPU in the release's formats
 * (FP8/FP4 codes and ue8m0 scales, bf16/f32 of sane magnitude, valid tid2eid
 * expert ids): for timing the real sizes without a checkpoint. Its outputs are
 * noise. It has no MTP block (dsv4_engine_run_mtp fails).
 *
 * Layers: max_layers > 0 keeps that many (at most num_hidden_layers);
 * max_layers == 0 keeps as many as fit the device-local memory budget
 * (VK_EXT_memory_budget, else 90% of the heap) after the embedding, head and
 * scratch; max_layers < 0 does the same reserving (-max_layers) MiB per kept
 * layer for sequence state. With several devices (opt->devices) the
 * layers are split over them as by dsv4_engine_open, and the count is the
 * most that fit all of them together (each device's budget after its
 * fixed part); an explicit opt->split sets the count (its sum; max_layers
 * > 0 must then equal it). The kept layers are a sample of the config's
 * layers in which every compress ratio keeps its share, spread over depth,
 * renumbered 0..n-1 (dsv4_engine_info's num_hidden_layers is n), so time per
 * layer scales to the whole model.
 *
 * On success err (when errlen > 0) receives one line
 * "layers=N/L weight_bytes=B budget_bytes=M selected=i,j,..." (the original
 * indices of the kept layers; weights and budget summed over the devices),
 * with " split=a,b,... " (layers per device) before "selected=" when there
 * are several devices; on failure the usual message (DSV4_EINVAL bad
 * config or split, DSV4_ENOMEM not even one layer fits, DSV4_EDEVICE no
 * device). */
int dsv4_engine_open_synthetic(const char *config_path, int max_layers, const dsv4_engine_options *opt,
                               dsv4_engine **out, char *err, size_t errlen);

#endif
