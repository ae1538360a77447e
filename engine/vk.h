/* engine/vk.h: the engine's private Vulkan runtime (engine/vk.c).
 *
 * One device, one compute queue, one command buffer that records a whole
 * forward pass: every dispatch pushes its descriptors (VK_KHR_push_descriptor)
 * and push constants, then a compute->compute barrier, so nothing is
 * allocated per step and the host waits only at the end of a pass. Buffers
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
    P_MOE_COMBINE, P_EMBED, P_ADD_BCAST,
    P_ATTN_SERIAL,      /* attn, one invocation per (token, head): CPU drivers */
    P_FILL_RANDOM,      /* synthetic weights for the bench (engine/bench_weights.c) */
    P_ATTN_TILE,        /* attn, 8 heads of a token per workgroup, head_dim <= 512 (25 KiB shared) */
    P_ATTN_TILE_S,      /* the same for head_dim <= 256 (13 KiB shared) */
    P_INDEX_SCORE_TILE, /* index_score, 8 tokens x 32 entries per workgroup */
    P_TOPK_RADIX,       /* topk by 8-bit radix select (4 passes instead of 32) */
    P_ATTN_DIRECT,      /* attn_tile without key staging, one head per workgroup: few tokens */
    P_INDEX_SCORE_TOK,  /* index_score, one token per workgroup, key rows in registers: decode */
    P_COUNT
} vk_pipe_id;

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

#define VK_MAX_PROF_OPS 64
#define VK_MAX_QUERIES 8192

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
    VkCommandBuffer cmd;
    VkFence fence;
    PFN_vkCmdPushDescriptorSetKHR push_desc;
    VkDescriptorSetLayout dsl[P_COUNT];
    VkPipelineLayout pl[P_COUNT];
    VkPipeline pipe[P_COUNT];
    int recording;
    int defer, pending; /* vkrt_defer_barriers: on, and a dispatch awaits its barrier */
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
/* on = 1: the following dispatches get no barrier after each (they must be
 * independent of each other, e.g. the same step of different sequences, and
 * may then run concurrently); on = 0: one barrier for all of them. */
void vkrt_defer_barriers(vkrt *rt, int on);
void vkrt_fill(vkrt *rt, vkview dst, VkDeviceSize n, uint32_t value);
int vkrt_submit_wait(vkrt *rt, char *err, size_t errlen);

/* The number of storage buffer bindings and push-constant bytes of each pipe. */
int vkrt_pipe_bindings(vk_pipe_id p);

/* 0 when pipe p was not created because its shared memory exceeds the
 * device's maxComputeSharedMemorySize (the engine then uses another variant). */
int vkrt_has_pipe(const vkrt *rt, vk_pipe_id p);

#endif
