/* engine/vk.h: the engine's private Vulkan runtime (engine/vk.c).
 *
 * One device, one compute queue, and a forward pass recorded into one
 * command buffer or a few (vkrt_submit_part: the device starts on the first
 * while the host records the rest): every dispatch pushes its descriptors
 * (VK_KHR_push_descriptor) and push constants, so nothing is allocated per
 * step and the host waits only at the end of a pass. The operations of a pass are queued and
 * recorded at submit in dependency levels, one barrier between levels (the
 * bindings a pipeline writes are read from its SPIR-V; vk.c: the pass
 * scheduler); profiling records each at once with a barrier after it. Buffers
 * are plain (buffer, offset, range) views; weights live in a few large
 * arena buffers (engine/forward.c sub-allocates them), each view kept within
 * maxStorageBufferRange. Pipelines are created once at open, one per entry of
 * shaders/shaders.list that the engine uses. */
#ifndef DSV4_ENGINE_VK_H
#define DSV4_ENGINE_VK_H

#include <stddef.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

typedef enum {
    P_GEMM_BF16, P_GEMM_F32, P_GEMM_FP8, P_GEMM_FP4,
    P_GEMM_FP4_GATHER, P_GEMM_FP4_GROUPED, P_GEMM_FP8_GATHER, P_GEMM_FP8_GROUPED,
    P_GEMM_BF16_GATHER, P_GEMM_BF16_GROUPED,
    /* the same ten, SMALL variants (few rows), in the same order */
    P_GEMM_SMALL_FIRST, P_GEMM_SMALL_LAST = P_GEMM_SMALL_FIRST + 9,
    P_ACT_QUANT, P_RMSNORM, P_HC_PRE, P_HC_HEAD, P_HC_POST, P_HEADPREP, P_COMPRESS,
    P_RING_WRITE, P_INDEX_SCORE, P_TOPK, P_ATTN, P_MOE_GATE, P_MOE_GROUP, P_SWIGLU,
    P_EMBED, P_ADD_BCAST,
    P_HC_MIX, P_HC_MIX_HEAD, /* hc_pre's products with fn, split over slices of a token */
    P_RMSNORM_Q,        /* rmsnorm with act_quant's FP8 quant-dequant as a second output */
    P_ATTN_SERIAL,      /* attn, one invocation per (token, head): CPU drivers */
    P_FILL_RANDOM,      /* synthetic weights for the bench (engine/bench_weights.c) */
    /* tensor-core twins of the tiled GEMMs (shaders/gemm_cm.comp): created
       only when rt->coopmat; no f32 variant */
    P_GEMM_CM_BF16, P_GEMM_CM_FP8, P_GEMM_CM_FP4,
    P_GEMM_CM_FP4_GATHER, P_GEMM_CM_FP4_GROUPED, P_GEMM_CM_FP8_GATHER, P_GEMM_CM_FP8_GROUPED,
    P_GEMM_CM_BF16_GATHER, P_GEMM_CM_BF16_GROUPED,
    /* the SMALL ten again, SERIAL variants (one column per invocation, no
       barriers): what CPU drivers run, in the same order */
    P_GEMM_SERIAL_FIRST, P_GEMM_SERIAL_LAST = P_GEMM_SERIAL_FIRST + 9,
    P_ATTN_TILE,        /* attn, 8 heads of a token per workgroup, head_dim <= 512 (25 KiB shared) */
    P_ATTN_TILE_S,      /* the same for head_dim <= 256 (13 KiB shared) */
    P_INDEX_SCORE_TILE, /* index_score, 8 tokens x 32 entries per workgroup */
    P_TOPK_RADIX,       /* topk by 8-bit radix select (4 passes instead of 32) */
    P_ATTN_DIRECT,      /* attn_tile without key staging, one head per workgroup: few tokens */
    P_INDEX_SCORE_TOK,  /* index_score, one token per workgroup, key rows in registers: decode */
    P_ATTN_DEC_SCORE,   /* attn for few tokens in two dispatches (shaders/attn_dec.comp): scores, */
    P_ATTN_DEC_VALUE,   /* then probabilities and value sums */
    P_INDEX_SCORE_DEC,  /* index_score_tok with an entry's heads over 4 threads: decode */
    P_TOPK_DEC,         /* topk_radix in 3 passes with parallel scans, 512 threads: decode */
    P_INDEX_TOPK,       /* indexer scores + per-range candidate lists, no score matrix (prefill) */
    P_INDEX_TOPK_MERGE, /* index_topk's lists of a token -> its top-k row (topk_radix's output) */
    P_SWIGLU_Q,         /* swiglu with act_quant's FP8 quant-dequant of its result (w2's input) */
    P_MOE_GATE_GROUP,   /* moe_gate and moe_group's grouping in one workgroup: one token */
    P_ATTN_FAST,        /* attn_tile's attention in partial sums, rows staged in batches: GPUs, not exact mode */
    P_ATTN_CM,          /* attn_fast on tensor cores, 16 heads per workgroup: only when rt->coopmat */
    P_ATTN_CM32, P_ATTN_CM64, /* the same, 32 and 64 heads per workgroup (consecutive: attn_variant steps down) */
    P_HC_PRE_NORM_Q,    /* hc_pre, then rmsnorm_q of its y in the same workgroup (D <= HC_NORM_MAXD) */
    P_HC_HEAD_NORM,     /* hc_head, then rmsnorm of its y */
    P_MOE_COMBINE_POST, /* the experts' sum, then hc_post of it in the same workgroup */
    P_HC_POST_MIX,      /* hc_post + the next hc_pre's hc_mix sums of its result (D a multiple of 256) */
    P_MOE_COMBINE_POST_MIX, /* moe_combine_post + the next block's hc_mix sums */
    /* the nine P_GEMM_CM_* again from shaders/gemm_cm2.comp (second version, in
       the same order): created only when rt->coopmat; forward.c uses them
       only with $DSV4_GEMM_CM=2 until they are timed on a GPU */
    P_GEMM_CM2_FIRST, P_GEMM_CM2_LAST = P_GEMM_CM2_FIRST + 8,
    /* the SMALL ten again from their second version (SMALL2 in shaders/gemm.comp,
       GEMM_SMALL2_COLS columns per workgroup), in the same order: created where
       subgroups have 8 invocations or more; forward.c uses them only with
       $DSV4_GEMM_SMALL=2 until they are timed on a GPU */
    P_GEMM_SMALL2_FIRST, P_GEMM_SMALL2_LAST = P_GEMM_SMALL2_FIRST + 9,
    P_COUNT
} vk_pipe_id;

/* Output columns and rows per workgroup of the SMALL GEMMs and of their
   second version (SMALL2: 8 groups of 32 invocations, SMALL_NC columns each,
   SMALL_MR rows; shaders/gemm.comp). */
#define GEMM_SMALL_COLS 8u
#define GEMM_SMALL2_COLS 32u
#define GEMM_SMALL_ROWS 16u

/* The longest row hc_pre.comp -DNORM norms in shared memory (V4-Pro's hidden size). */
#define HC_NORM_MAXD 7168u

typedef struct vkbuf {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceSize size;
    void *map;          /* host-visible buffers only */
} vkbuf;

typedef struct vkview {
    VkBuffer buf;
    VkDeviceSize off, size;
} vkview;

/* storage-buffer bindings of one pipe at most (push descriptors: 32 or more on every driver) */
#define VK_MAX_BINDINGS 12
#define VK_MAX_PROF_OPS 64
#define VK_MAX_QUERIES 32768 /* timestamps per pass: 16384 dispatches (a B = 64 decode of V4-Flash needs ~7000 per 12 layers) */

typedef struct vkrt {
    VkInstance inst;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t qfam;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties memprops;
    VkDeviceSize max_range, max_alloc, align;
    VkCommandPool pool;
    VkCommandBuffer cmd;   /* the one being recorded: part[n_part] */
#define VK_MAX_PARTS 32
    VkCommandBuffer part[VK_MAX_PARTS]; /* a pass's command buffers (vkrt_submit_part), allocated as needed */
    int n_part;
    VkFence fence;
    PFN_vkCmdPushDescriptorSetKHR push_desc;
    VkDescriptorSetLayout dsl[P_COUNT];
    VkPipelineLayout pl[P_COUNT];
    VkPipeline pipe[P_COUNT];
    int recording;
    /* the bindings each pipeline writes (from its SPIR-V): what the pass
       scheduler and, recording in order (DSV4_SCHEDULE=0), engine/vk.c's
       hazard() compare; hazard() keeps the ranges written and read since the
       last barrier, a dispatch touching none of them needs no barrier */
    uint32_t writes[P_COUNT];
    int full_barriers;  /* profiling or DSV4_FULL_BARRIERS: a barrier after every dispatch */
#define VK_MAX_HAZARDS 256
    struct vkrange { VkBuffer buf; VkDeviceSize off, end; } hz_w[VK_MAX_HAZARDS], hz_r[VK_MAX_HAZARDS];
    int n_hz_w, n_hz_r;
    uint64_t n_barriers, n_dispatches, n_submits, n_passes; /* so far (tests, dsv4_engine_take_counts) */
    double record_s;     /* host seconds from vkrt_begin to the submit, summed (dsv4_engine_take_counts) */
    double begin_s;      /* when this pass's vkrt_begin ran */
    struct vksched *sched; /* the queued pass (vk.c); NULL with DSV4_SCHEDULE=0: recorded in order */
    int coopmat;        /* VK_KHR_cooperative_matrix enabled, P_GEMM_CM_* created */
    int defer;          /* vkrt_defer_barriers: on */
    int g_w, g_r;       /* hazards recorded before the deferred group began */
    vkbuf stage;        /* host-visible staging for uploads/downloads */
    /* profiling */
    int profile;
    VkQueryPool qpool;
    uint32_t nq;
    int q_op[VK_MAX_QUERIES / 2];
    char prof_name[VK_MAX_PROF_OPS][32];
    double prof_ms[VK_MAX_PROF_OPS];
    int64_t prof_calls[VK_MAX_PROF_OPS];
    int n_prof;
    const char *cur_op;
} vkrt;

int vkrt_open(vkrt *rt, const char *device_sel, int verbose, int profile, char *err, size_t errlen);
void vkrt_close(vkrt *rt);

/* device_local: 1 prefers DEVICE_LOCAL memory, 0 wants HOST_VISIBLE|COHERENT
 * (mapped). Size 0 is rounded up to 16 bytes. */
int vkbuf_create(vkrt *rt, VkDeviceSize size, int device_local, vkbuf *out, char *err, size_t errlen);
void vkbuf_free(vkrt *rt, vkbuf *b);
static inline vkview vkbuf_view(const vkbuf *b, VkDeviceSize off, VkDeviceSize size)
{
    vkview v = {b->buf, off, size};
    return v;
}

/* Copies host bytes into / out of a device view through the staging buffer
 * (submits and waits; used at load time and for state import/export). */
int vkrt_upload(vkrt *rt, vkview dst, const void *src, size_t n, char *err, size_t errlen);
int vkrt_download(vkrt *rt, vkview src, void *dst, size_t n, char *err, size_t errlen);

/* Recording of one pass. */
int vkrt_begin(vkrt *rt, char *err, size_t errlen);
void vkrt_op(vkrt *rt, const char *name); /* names the following dispatches for profiling */
void vkrt_dispatch(vkrt *rt, vk_pipe_id p, const vkview *views, int nviews, const void *push,
                   size_t push_size, uint32_t gx, uint32_t gy, uint32_t gz);
void vkrt_copy(vkrt *rt, vkview src, vkview dst, VkDeviceSize n);
/* on = 1: the following dispatches are independent of each other (e.g. the
 * same step of different sequences, writing their own rows of a shared
 * scratch view): they get barriers only against what was recorded before
 * them, and may run concurrently; on = 0 ends the group. */
void vkrt_defer_barriers(vkrt *rt, int on);
void vkrt_fill(vkrt *rt, vkview dst, VkDeviceSize n, uint32_t value);
/* Operations queued in this pass (0 when recording in order). */
int vkrt_queued(const vkrt *rt);
/* Submits what the pass has queued so far, without waiting, and goes on
 * recording the rest into another command buffer that starts with a barrier
 * (so the device starts on a pass while the host still records it). A
 * no-op unless queued (the scheduler on), and once VK_MAX_PARTS are used. */
int vkrt_submit_part(vkrt *rt, char *err, size_t errlen);
/* Submits the rest of the pass and waits for all of it. */
int vkrt_submit_wait(vkrt *rt, char *err, size_t errlen);

/* The tensor-core twin of a tiled GEMM pipe (P_GEMM_BF16 .. P_GEMM_BF16_GROUPED),
 * or -1 (no twin: f32 weights, SMALL variants, other pipes). */
static inline int vkrt_cm_twin(vk_pipe_id p)
{
    switch (p) {
    case P_GEMM_BF16: return P_GEMM_CM_BF16;
    case P_GEMM_FP8: return P_GEMM_CM_FP8;
    case P_GEMM_FP4: return P_GEMM_CM_FP4;
    case P_GEMM_FP4_GATHER: return P_GEMM_CM_FP4_GATHER;
    case P_GEMM_FP4_GROUPED: return P_GEMM_CM_FP4_GROUPED;
    case P_GEMM_FP8_GATHER: return P_GEMM_CM_FP8_GATHER;
    case P_GEMM_FP8_GROUPED: return P_GEMM_CM_FP8_GROUPED;
    case P_GEMM_BF16_GATHER: return P_GEMM_CM_BF16_GATHER;
    case P_GEMM_BF16_GROUPED: return P_GEMM_CM_BF16_GROUPED;
    default: return -1;
    }
}

/* The same twin from shaders/gemm_cm2.comp (P_GEMM_CM2_FIRST ..), or -1. */
static inline int vkrt_cm2_twin(vk_pipe_id p)
{
    int cm = vkrt_cm_twin(p);
    return cm < 0 ? -1 : P_GEMM_CM2_FIRST + (cm - P_GEMM_CM_BF16);
}

/* 1 when physical device pd offers device extension name. */
int vkrt_has_ext(VkPhysicalDevice pd, const char *name);

/* The number of storage buffer bindings and push-constant bytes of each pipe. */
int vkrt_pipe_bindings(vk_pipe_id p);

/* Bit i set when storage-buffer binding i of a SPIR-V compute module may be
 * written (not decorated NonWritable, i.e. not `readonly` in GLSL). Unknown
 * or malformed modules give all bits: the caller then always synchronises. */
uint32_t vkrt_spirv_written_bindings(const uint32_t *code, size_t bytes);
/* 0 when pipe p was not created because its shared memory exceeds the
 * device's maxComputeSharedMemorySize (the engine then uses another variant). */
int vkrt_has_pipe(const vkrt *rt, vk_pipe_id p);

#endif
