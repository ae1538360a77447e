/* engine/forward.h: engine-private structures shared by engine/engine.c (the
 * public API: sequences, state export/import) and engine/forward.c (weights
 * on the GPU and the recording of forward passes). */
#ifndef DSV4_ENGINE_FORWARD_H
#define DSV4_ENGINE_FORWARD_H

#include "engine/dsv4_engine.h"
#include "engine/model.h"
#include "engine/vk.h"

/* A linear layer's weight on the GPU, still in its stored format. */
typedef struct gw {
    dsv4_wq q;
    uint32_t out, in, s_cols;
    vkview w, s;
} gw;

typedef struct ghc { vkview fn, base, scale; } ghc;

typedef struct gblock {
    int layer_id, ratio, overlap, is_mtp, hash;
    vkview attn_norm, ffn_norm, q_norm, kv_norm, attn_sink;
    ghc hc_attn, hc_ffn;
    gw wq_a, wq_b, wkv, wo_a, wo_b;
    gw c_wkv, c_wgate; vkview c_ape, c_norm;             /* compressor */
    gw i_wq_b, i_wproj, ic_wkv, ic_wgate; vkview ic_ape, ic_norm; /* indexer */
    gw gate; vkview gate_bias, tid2eid;
    /* routed experts w1, w2, w3: contiguous in groups of ex_per_group experts,
       each group within one binding (maxStorageBufferRange) */
#define DSV4_MAX_EXGROUPS 64
    vkview ex_w[3][DSV4_MAX_EXGROUPS], ex_s[3][DSV4_MAX_EXGROUPS];
    int n_exgroups, ex_per_group;
    uint32_t ex_wstride[3], ex_sstride[3];
    dsv4_wq ex_q;
    gw sh[3];
    gw e_proj, h_proj; vkview enorm, hnorm, norm; ghc hc_head; /* MTP */
} gblock;

/* A state buffer whose complete compressed rows forks read (their base):
 * reference-counted, freed when the last holder lets go (the sequence that
 * wrote it, or that sequence's buffer before lstate_reserve grew it, and
 * each fork that reads it). Only the host thread of the block's device
 * touches it. */
typedef struct lshared {
    vkbuf buf;
    int refs;
} lshared;

/* Per-sequence state of one block on the GPU. Compressed rows r <
 * base_rows (a fork's prefix, complete and never written again) are read
 * from base at row r (offsets base_kv_off, base_ikv_off); rows r >=
 * base_rows are in buf at row r - base_rows. */
typedef struct lstate {
    vkbuf buf;
    lshared *held;               /* non-NULL once a fork reads buf: buf is released through it */
    int64_t cap_rows;            /* own rows of the compressed caches */
    VkDeviceSize ring_off, cring_off, iring_off, kv_off, ikv_off, end;
    lshared *base;               /* NULL when base_rows == 0 */
    int64_t base_rows;
    VkDeviceSize base_kv_off, base_ikv_off;
} lstate;

typedef struct fscratch {
    vkbuf bufs[64];
    int nbufs;
    vkview xa, xb, x2, hx, xn, mix, xq, qr, qrq, q, kv, ckv, csc, ikv, isc, iq, iw, idx, o, oa, oaq, ao,
        gl, sel, wgt, route, h1, h3, hs, hsq, ys, s1, s3, ss, ssq, sy, hy, hn, logits, tok, pos, e1, e2,
        hcpart;
    vkview iscore; vkbuf iscore_buf; int64_t iscore_cap; /* [iscore_rows][iscore_cap entries], grows */
    int64_t iscore_rows;        /* tokens scored per dispatch (all of a chunk unless the
                                   history is too long for one binding) */
    vkbuf io;                   /* host-visible: tokens, positions, logits readback */
    VkDeviceSize io_tok, io_pos, io_logits, io_size;
    uint32_t route_tiles_max, rowmap_off, slotpos_off, wsort_off, ebegin_off;
    vkbuf ascore_buf;           /* attn_tile's pass-1 scores [token][head][ascore_ld], grows */
    uint32_t ascore_ld;         /* keys per row for this pass; 0: not kept (scores computed twice) */
    vkbuf dscore_buf;           /* attn_dec's scores [token][head][dscore_ld], grows */
    uint32_t dscore_ld;         /* words per record for this pass; 0: attn_direct instead */
    /* the fused indexer's (index_topk) candidate lists: for each token of a
       pass icand_ld ranges of icand_cap (key, index) pairs, and their
       counts; fixed size (no score matrix); icand_ld 0: not allocated */
    vkview icand, icnt;
    uint32_t icand_cap, icand_ld;
} fscratch;

struct dsv4_engine {
    vkrt rt;
    dsv4_model *m;
    dsv4_model_info info;
    dsv4_state_layout layout;
    int n_blocks;                /* main layers + MTP */
    gblock *blk;                 /* [n_blocks]: layers then mtp */
    /* embed and head in row slices of vslice_rows rows, each within
       maxStorageBufferRange (one slice on an H100, several on lavapipe for
       the released vocabularies) */
#define DSV4_MAX_VSLICES 64
    vkview embed[DSV4_MAX_VSLICES], head[DSV4_MAX_VSLICES], norm;
    int n_vslices;
    uint32_t vslice_rows;
    ghc hc_head;
    vkview freq[2];              /* rope freqs: [0] rope_theta, no YaRN; [1] compress_rope_theta + YaRN */
    vkbuf arenas[512];
    int n_arenas;
    VkDeviceSize arena_fill;
    vkview dummy;
    int chunk;                   /* tokens per pass */
    int cpu_device;              /* lavapipe & co: barrier-free shader variants */
    int small_rows;              /* GEMMs of at most this many rows use the SMALL variants */
    int exact;                   /* $DSV4_EXACT: GEMM kernels that sum every product in index order
                                    whatever the row count (SERIAL, tiled), so results never depend
                                    on how tokens are split into passes; slower on GPUs */
    int fork_copy;               /* $DSV4_FORK_COPY=1: forks copy the whole state (the old way, for comparison) */
    int part_ops;                /* $DSV4_PART_OPS, else 192: a pass is submitted in parts, after its first
                                    block and then after a block once this many operations are queued */
    int attn_tile_forced;        /* $DSV4_ATTN_TILE=1 (tests): attn_tile wherever it fits, on CPU drivers too */
    uint32_t attn_direct_n;      /* $DSV4_ATTN_DIRECT_N, else 64: GPU segments of fewer tokens use attn_dec
                                    (or attn_direct) */
    int attn_dec;                /* $DSV4_ATTN_DEC: 0 attn_direct for those segments instead of attn_dec;
                                    1 (tests) attn_dec for them on CPU drivers too; unset: GPUs only */
    int index_unfused;           /* $DSV4_INDEX_UNFUSED=1 (tests, comparison): prefill segments score into
                                    the score matrix and run topk_radix, as decode does */
    uint64_t index_fused_bytes;  /* $DSV4_INDEX_FUSED_MIB x 2^20, else 64 MiB: on GPUs prefill segments use the
                                    fused indexer only where a pass's score matrix would be larger */
    uint32_t index_split;        /* $DSV4_INDEX_SPLIT (tests): entries per range of index_topk, else planned */
    uint64_t iscore_limit;       /* $DSV4_ISCORE_KIB x 1024 (tests): bytes of indexer scores per dispatch, 0: no limit */
    int attn_fast;               /* $DSV4_ATTN_FAST (GPU prefill outside exact mode, attention without index-order
                                    sums): 0 off, 1 attn_fast, else (default) attn_cm where the device has it */
    int gemm_cm2;                /* $DSV4_GEMM_CM=2: the tensor-core GEMMs of shaders/gemm_cm2.comp (second
                                    version, not yet timed on a GPU) instead of gemm_cm.comp */
    int gemm_small2;             /* $DSV4_GEMM_SMALL=2: the SMALL2 GEMMs (second version, not yet timed on a
                                    GPU) instead of SMALL */
    int head_rows;               /* rows per head pass (vocab slice fits a binding) */
    fscratch s;
    char name[256];
    /* Several devices (engine/shards.c, docs/engine.md "Several devices"):
       each device is a shard, a dsv4_engine of its own (runtime, arenas,
       scratch, pipelines) that uploads only what it owns: main blocks
       [own_b0, own_b1), the embedding, the head (final norm, hc_head) and
       the MTP blocks. blk[] is indexed by global block on every shard; the
       blocks a shard does not own keep only their metadata (ratio, ...).
       The engine the caller holds is shard 0 (shard[0] == itself); with
       one device it owns everything and nothing below changes a pass. */
#define DSV4_MAX_SHARDS 16
    int own_b0, own_b1, own_embed, own_head, own_mtp;
    int n_shards;                /* shard 0 only */
    struct dsv4_engine *shard[DSV4_MAX_SHARDS];
    int is_shard;                /* shards 1..: model and layout belong to shard 0 */
    int split[DSV4_MAX_SHARDS];  /* shard 0: main blocks per device as given by
                                    opt->split / $DSV4_SPLIT, all 0 when not given */
    float *xfer;                 /* shard 0 of several: [chunk][hc][hidden] host hand-over */
};

/* The shard holding block b (a main block or an MTP block). */
static inline struct dsv4_engine *shard_of(const struct dsv4_engine *e, int b)
{
    for (int k = 0; k < e->n_shards; k++) {
        struct dsv4_engine *s = e->shard[k];
        if ((b >= s->own_b0 && b < s->own_b1) || (b >= s->m->cfg.num_hidden_layers && s->own_mtp)) return s;
    }
    return e->shard[e->n_shards - 1];
}

struct dsv4_seq {
    dsv4_engine *e;
    int64_t pos;
    int64_t import_end;          /* import: end of the rows restored so far */
    lstate *ls;                  /* [n_blocks] */
};

/* One run of consecutive tokens of one sequence inside a pass. */
typedef struct fseg {
    dsv4_seq *seq;
    uint32_t t0, n;
    int64_t p0;
} fseg;

/* Tokens per pass: $DSV4_CHUNK, else 1024 on GPUs and 256 on CPU drivers
 * (the device of the engine's first shard). */
int engine_chunk_tokens(const dsv4_engine *e);

int fwd_upload_weights(dsv4_engine *e, char *err, size_t errlen);
int fwd_alloc_scratch(dsv4_engine *e, char *err, size_t errlen);
void fwd_free(dsv4_engine *e);
int lstate_init(dsv4_engine *e, lstate *ls, int block, int64_t cap_tokens, char *err, size_t errlen);
void lstate_free(dsv4_engine *e, lstate *ls);
int lstate_reserve(dsv4_engine *e, lstate *ls, int block, int64_t tokens, char *err, size_t errlen);
/* dst becomes a fork of src at position pos (dst uninitialised): its own
 * buffer holds copies of the rings (and of src's own rows, when src reads a
 * base itself), the complete compressed rows stay in src's buffer or base,
 * shared. With e->fork_copy, src's buffer is copied whole (src's base, if
 * any, is shared). */
int lstate_fork(dsv4_engine *e, lstate *dst, lstate *src, int block, int64_t pos, char *err, size_t errlen);
/* The views of rows [r0, r1) of a block's compressed cache (which 0: kv,
 * 1: indexer kv) as at most two pieces, the base's then the own buffer's;
 * returns the number of pieces. */
int lstate_rows(const dsv4_engine *e, const lstate *ls, int which, int64_t r0, int64_t r1, vkview out[2]);

/* Records and runs one pass over T tokens (tokens/positions already in the io
 * buffer) made of segments; blocks [b0, b1) starting from X (when x_in is not
 * NULL, x_in[T][hc][D] is uploaded as the input of block b0 instead of the
 * embedding); head: 0 none, else logits of rows [head_r0, head_r0 + head_n)
 * into out_logits (host), or x_out gets the last block's output. */
typedef struct fpass {
    int T;
    const fseg *segs;
    int nsegs;
    int b0, b1;
    const float *x_in;
    float *x_out;
    int head;                   /* 0 none, 1 main head, 2 MTP head (block b0) */
    int head_r0, head_n;
    float *logits;
    int mtp;                    /* input is MTP: x_in = h, tokens = next tokens */
} fpass;
int fwd_run(dsv4_engine *e, const fpass *fp, char *err, size_t errlen);

/* ---- several devices (engine/shards.c) ---- */

/* Opens the device(s) of opt (devices/split, else $DSV4_DEVICES/$DSV4_SPLIT,
 * else the one device of opt->device): e->rt for shard 0 and a new
 * dsv4_engine with its own runtime for each further device, sharing e->m.
 * Sets e->n_shards and e->shard[]; ownership is left to shards_place. */
int shards_open(dsv4_engine *e, const dsv4_engine_options *opt, char *err, size_t errlen);
/* Places n_layers main blocks and n_mtp MTP blocks on the shards (sets
 * own_*): by the split given to shards_open (which must sum to n_layers),
 * else in proportion to each device's free memory after its fixed part
 * (scratch, vocab_bytes per embedding/head table, the MTP blocks), by the
 * sizes block_bytes[n_layers + n_mtp]. With several devices and no split,
 * DSV4_ENOMEM names the device that cannot hold its part. verbose prints
 * the placement to stderr. */
int shards_place(dsv4_engine *e, int n_layers, int n_mtp, const uint64_t *block_bytes, uint64_t vocab_bytes,
                 uint64_t scratch, int verbose, char *err, size_t errlen);
/* Bytes of device-local memory the runtime's process may still use. */
uint64_t shards_device_budget(const vkrt *rt);
/* The sum of the shards' budgets (a device opened k times counted once). */
uint64_t shards_total_budget(const dsv4_engine *e);
/* Closes shards 1.. (shard 0 is e itself, closed by its caller). */
void shards_close(dsv4_engine *e);

#endif
