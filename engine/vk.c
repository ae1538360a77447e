/* engine/vk.c: the Vulkan runtime behind engine/vk.h.
 *
 * Device choice: DSV4_DEVICE / the caller's selector (an index, or a
 * substring of the device name), else the first discrete GPU, else the first
 * device (lavapipe on machines without a GPU). The features the shaders need
 * are checked up front and a missing one is named in the error: compute
 * queue, VK_KHR_push_descriptor, shaderFloat64 (RoPE range reduction),
 * subgroup arithmetic in compute (the SMALL GEMMs), 128 push-constant bytes.
 * Everything else is plain storage buffers of 32-bit words, so lavapipe
 * (Mesa 22.3) runs every shader.
 * Optional: VK_KHR_cooperative_matrix with a 16x16x16 fp16 x fp16 -> fp32
 * subgroup shape, shaderFloat16, vulkanMemoryModel and subgroups of 32 (NVIDIA
 * GPUs): then it is enabled and the P_GEMM_CM_* pipelines are created
 * (rt->coopmat); DSV4_COOPMAT=0 turns this off. */
#include "engine/vk.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/dsv4_engine.h"
#include "shaders/dsv4_shaders.h"

/* Debian 12's Vulkan headers (1.3.239) predate VK_KHR_cooperative_matrix
 * (1.3.255): its names and values from the Vulkan registry (extension 507). */
#ifndef VK_KHR_cooperative_matrix
#define VK_KHR_cooperative_matrix 1
#define VK_KHR_COOPERATIVE_MATRIX_EXTENSION_NAME "VK_KHR_cooperative_matrix"
#define VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR ((VkStructureType)1000506000)
#define VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR ((VkStructureType)1000506001)
typedef enum { VK_COMPONENT_TYPE_FLOAT16_KHR = 0, VK_COMPONENT_TYPE_FLOAT32_KHR = 1 } VkComponentTypeKHR;
typedef enum { VK_SCOPE_SUBGROUP_KHR = 3 } VkScopeKHR;
typedef struct VkCooperativeMatrixPropertiesKHR {
    VkStructureType sType;
    void *pNext;
    uint32_t MSize, NSize, KSize;
    VkComponentTypeKHR AType, BType, CType, ResultType;
    VkBool32 saturatingAccumulation;
    VkScopeKHR scope;
} VkCooperativeMatrixPropertiesKHR;
typedef struct VkPhysicalDeviceCooperativeMatrixFeaturesKHR {
    VkStructureType sType;
    void *pNext;
    VkBool32 cooperativeMatrix, cooperativeMatrixRobustBufferAccess;
} VkPhysicalDeviceCooperativeMatrixFeaturesKHR;
typedef VkResult(VKAPI_PTR *PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR)(
    VkPhysicalDevice, uint32_t *, VkCooperativeMatrixPropertiesKHR *);
#endif

struct vksched;
static struct vksched *sched_new(void);
static void sched_free(struct vksched *q);
static void sched_reset(struct vksched *q);

static const struct {
    const char *shader;
    int nbind;
    int coopmat; /* needs VK_KHR_cooperative_matrix */
    int shmem;   /* shared-memory bytes, where it may exceed a device's limit */
} pipe_info[P_COUNT] = {
    [P_GEMM_BF16] = {"gemm_bf16", 5},           [P_GEMM_F32] = {"gemm_f32", 5},
    [P_GEMM_FP8] = {"gemm_fp8", 5},             [P_GEMM_FP4] = {"gemm_fp4", 5},
    [P_GEMM_FP4_GATHER] = {"gemm_fp4_gather", 5}, [P_GEMM_FP4_GROUPED] = {"gemm_fp4_grouped", 5},
    [P_GEMM_FP8_GATHER] = {"gemm_fp8_gather", 5}, [P_GEMM_FP8_GROUPED] = {"gemm_fp8_grouped", 5},
    [P_GEMM_BF16_GATHER] = {"gemm_bf16_gather", 5}, [P_GEMM_BF16_GROUPED] = {"gemm_bf16_grouped", 5},
    [P_GEMM_SMALL_FIRST + 0] = {"gemm_bf16_small", 5}, [P_GEMM_SMALL_FIRST + 1] = {"gemm_f32_small", 5},
    [P_GEMM_SMALL_FIRST + 2] = {"gemm_fp8_small", 5},  [P_GEMM_SMALL_FIRST + 3] = {"gemm_fp4_small", 5},
    [P_GEMM_SMALL_FIRST + 4] = {"gemm_fp4_gather_small", 5}, [P_GEMM_SMALL_FIRST + 5] = {"gemm_fp4_grouped_small", 5},
    [P_GEMM_SMALL_FIRST + 6] = {"gemm_fp8_gather_small", 5}, [P_GEMM_SMALL_FIRST + 7] = {"gemm_fp8_grouped_small", 5},
    [P_GEMM_SMALL_FIRST + 8] = {"gemm_bf16_gather_small", 5}, [P_GEMM_SMALL_FIRST + 9] = {"gemm_bf16_grouped_small", 5},
    [P_ACT_QUANT] = {"act_quant", 2},           [P_RMSNORM] = {"rmsnorm", 3},
    [P_HC_PRE] = {"hc_pre", 7},                 [P_HC_HEAD] = {"hc_head", 7},
    [P_HC_MIX] = {"hc_mix", 3},                 [P_HC_MIX_HEAD] = {"hc_mix_head", 3},
    [P_RMSNORM_Q] = {"rmsnorm_q", 4},
    [P_HC_POST] = {"hc_post", 4},               [P_HEADPREP] = {"headprep", 4},
    [P_COMPRESS] = {"compress", 5},             [P_RING_WRITE] = {"ring_write", 3},
    [P_INDEX_SCORE] = {"index_score", 5},       [P_TOPK] = {"topk", 2},
    [P_ATTN] = {"attn", 8},                     [P_MOE_GATE] = {"moe_gate", 6},
    [P_MOE_GROUP] = {"moe_group", 3},           [P_SWIGLU] = {"swiglu", 4},
    [P_EMBED] = {"embed", 3},
    [P_ADD_BCAST] = {"add_bcast", 3},
    [P_ATTN_SERIAL] = {"attn_serial", 8},
    [P_FILL_RANDOM] = {"fill_random", 1},
    [P_GEMM_CM_BF16] = {"gemm_cm_bf16", 5, 1},  [P_GEMM_CM_FP8] = {"gemm_cm_fp8", 5, 1},
    [P_GEMM_CM_FP4] = {"gemm_cm_fp4", 5, 1},
    [P_GEMM_CM_FP4_GATHER] = {"gemm_cm_fp4_gather", 5, 1}, [P_GEMM_CM_FP4_GROUPED] = {"gemm_cm_fp4_grouped", 5, 1},
    [P_GEMM_CM_FP8_GATHER] = {"gemm_cm_fp8_gather", 5, 1}, [P_GEMM_CM_FP8_GROUPED] = {"gemm_cm_fp8_grouped", 5, 1},
    [P_GEMM_CM_BF16_GATHER] = {"gemm_cm_bf16_gather", 5, 1}, [P_GEMM_CM_BF16_GROUPED] = {"gemm_cm_bf16_grouped", 5, 1},
    [P_GEMM_CM2_FIRST + 0] = {"gemm_cm2_bf16", 5, 1}, [P_GEMM_CM2_FIRST + 1] = {"gemm_cm2_fp8", 5, 1},
    [P_GEMM_CM2_FIRST + 2] = {"gemm_cm2_fp4", 5, 1},
    [P_GEMM_CM2_FIRST + 3] = {"gemm_cm2_fp4_gather", 5, 1}, [P_GEMM_CM2_FIRST + 4] = {"gemm_cm2_fp4_grouped", 5, 1},
    [P_GEMM_CM2_FIRST + 5] = {"gemm_cm2_fp8_gather", 5, 1}, [P_GEMM_CM2_FIRST + 6] = {"gemm_cm2_fp8_grouped", 5, 1},
    [P_GEMM_CM2_FIRST + 7] = {"gemm_cm2_bf16_gather", 5, 1}, [P_GEMM_CM2_FIRST + 8] = {"gemm_cm2_bf16_grouped", 5, 1},
    [P_GEMM_SMALL2_FIRST + 0] = {"gemm_bf16_small2", 5}, [P_GEMM_SMALL2_FIRST + 1] = {"gemm_f32_small2", 5},
    [P_GEMM_SMALL2_FIRST + 2] = {"gemm_fp8_small2", 5},  [P_GEMM_SMALL2_FIRST + 3] = {"gemm_fp4_small2", 5},
    [P_GEMM_SMALL2_FIRST + 4] = {"gemm_fp4_gather_small2", 5}, [P_GEMM_SMALL2_FIRST + 5] = {"gemm_fp4_grouped_small2", 5},
    [P_GEMM_SMALL2_FIRST + 6] = {"gemm_fp8_gather_small2", 5}, [P_GEMM_SMALL2_FIRST + 7] = {"gemm_fp8_grouped_small2", 5},
    [P_GEMM_SMALL2_FIRST + 8] = {"gemm_bf16_gather_small2", 5}, [P_GEMM_SMALL2_FIRST + 9] = {"gemm_bf16_grouped_small2", 5},
    [P_GEMM_SERIAL_FIRST + 0] = {"gemm_bf16_serial", 5}, [P_GEMM_SERIAL_FIRST + 1] = {"gemm_f32_serial", 5},
    [P_GEMM_SERIAL_FIRST + 2] = {"gemm_fp8_serial", 5},  [P_GEMM_SERIAL_FIRST + 3] = {"gemm_fp4_serial", 5},
    [P_GEMM_SERIAL_FIRST + 4] = {"gemm_fp4_gather_serial", 5}, [P_GEMM_SERIAL_FIRST + 5] = {"gemm_fp4_grouped_serial", 5},
    [P_GEMM_SERIAL_FIRST + 6] = {"gemm_fp8_gather_serial", 5}, [P_GEMM_SERIAL_FIRST + 7] = {"gemm_fp8_grouped_serial", 5},
    [P_GEMM_SERIAL_FIRST + 8] = {"gemm_bf16_gather_serial", 5}, [P_GEMM_SERIAL_FIRST + 9] = {"gemm_bf16_grouped_serial", 5},
    [P_ATTN_TILE] = {"attn_tile", 9, 0, 25696},
    [P_ATTN_TILE_S] = {"attn_tile_s", 9, 0, 13408},
    [P_INDEX_SCORE_TILE] = {"index_score_tile", 5, 0, 20480},
    [P_TOPK_RADIX] = {"topk_radix", 2},
    [P_ATTN_DIRECT] = {"attn_direct", 9},
    [P_INDEX_SCORE_TOK] = {"index_score_tok", 5, 0, 32768},
    [P_ATTN_DEC_SCORE] = {"attn_dec_score", 10, 0, 16384},
    [P_ATTN_DEC_VALUE] = {"attn_dec_value", 10, 0, 19200},
    [P_INDEX_SCORE_DEC] = {"index_score_dec", 5, 0, 32768},
    [P_TOPK_DEC] = {"topk_dec", 2, 0, 12296},
    [P_INDEX_TOPK] = {"index_topk", 6, 0, 26984},
    [P_INDEX_TOPK_MERGE] = {"index_topk_merge", 3},
    [P_SWIGLU_Q] = {"swiglu_q", 4},
    [P_MOE_GATE_GROUP] = {"moe_gate_group", 7},
    [P_ATTN_FAST] = {"attn_fast", 8, 0, 25184},
    [P_ATTN_CM] = {"attn_cm", 8, 1, 21952},
    [P_ATTN_CM32] = {"attn_cm32", 8, 1, 27200},
    [P_ATTN_CM64] = {"attn_cm64", 8, 1, 37696},
    [P_HC_PRE_NORM_Q] = {"hc_pre_norm_q", 9, 0, 29752},
    [P_HC_HEAD_NORM] = {"hc_head_norm", 8, 0, 29496},
    [P_MOE_COMBINE_POST] = {"moe_combine_post", 7},
    [P_HC_POST_MIX] = {"hc_post_mix", 6},
    [P_MOE_COMBINE_POST_MIX] = {"moe_combine_post_mix", 9},
};

int vkrt_pipe_bindings(vk_pipe_id p) { return pipe_info[p].nbind; }

int vkrt_has_pipe(const vkrt *rt, vk_pipe_id p) { return rt->pipe[p] != VK_NULL_HANDLE; }

#define VKCHK(call, what)                                                          \
    do {                                                                           \
        VkResult r_ = (call);                                                      \
        if (r_ != VK_SUCCESS) {                                                    \
            snprintf(err, errlen, "vulkan: %s failed (VkResult %d)", what, (int)r_); \
            return r_ == VK_ERROR_OUT_OF_DEVICE_MEMORY || r_ == VK_ERROR_OUT_OF_HOST_MEMORY \
                       ? DSV4_ENOMEM : DSV4_EVULKAN;                                \
        }                                                                          \
    } while (0)

int vkrt_has_ext(VkPhysicalDevice pd, const char *name)
{
    uint32_t n = 0;
    vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL);
    VkExtensionProperties *e = calloc(n ? n : 1, sizeof *e);
    if (!e) return 0;
    vkEnumerateDeviceExtensionProperties(pd, NULL, &n, e);
    int ok = 0;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(e[i].extensionName, name) == 0) ok = 1;
    free(e);
    return ok;
}

/* Whether the device can run shaders/gemm_cm.comp: the extension, a 16x16x16
 * fp16 x fp16 + fp32 subgroup shape, shaderFloat16, the Vulkan memory model
 * (glslang emits it with cooperative matrices) and subgroups of 32 (the
 * shader's 8 subgroups per 256 invocations). */
static int coopmat_usable(VkInstance inst, VkPhysicalDevice pd, const VkPhysicalDeviceProperties *props)
{
    const char *env = getenv("DSV4_COOPMAT");
    if (env && strcmp(env, "0") == 0) return 0;
    if (props->apiVersion < VK_API_VERSION_1_2 || !vkrt_has_ext(pd, VK_KHR_COOPERATIVE_MATRIX_EXTENSION_NAME)) return 0;
    VkPhysicalDeviceCooperativeMatrixFeaturesKHR cmf = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &cmf};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(pd, &f2);
    if (!cmf.cooperativeMatrix || !f12.shaderFloat16 || !f12.vulkanMemoryModel) return 0;
    VkPhysicalDeviceSubgroupProperties sp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sp};
    vkGetPhysicalDeviceProperties2(pd, &p2);
    if (sp.subgroupSize != 32 || !(sp.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT)) return 0;
    if (props->limits.maxComputeSharedMemorySize < 48u * 1024u) return 0;
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR get =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR)vkGetInstanceProcAddr(
            inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR");
    if (!get) return 0;
    uint32_t n = 0;
    if (get(pd, &n, NULL) != VK_SUCCESS || n == 0) return 0;
    VkCooperativeMatrixPropertiesKHR *cp = calloc(n, sizeof *cp);
    if (!cp) return 0;
    for (uint32_t i = 0; i < n; i++) cp[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR;
    int ok = 0;
    if (get(pd, &n, cp) == VK_SUCCESS)
        for (uint32_t i = 0; i < n; i++)
            ok |= cp[i].MSize == 16 && cp[i].NSize == 16 && cp[i].KSize == 16 &&
                  cp[i].AType == VK_COMPONENT_TYPE_FLOAT16_KHR && cp[i].BType == VK_COMPONENT_TYPE_FLOAT16_KHR &&
                  cp[i].CType == VK_COMPONENT_TYPE_FLOAT32_KHR && cp[i].ResultType == VK_COMPONENT_TYPE_FLOAT32_KHR &&
                  cp[i].scope == VK_SCOPE_SUBGROUP_KHR;
    free(cp);
    return ok;
}

static int pick_device(VkPhysicalDevice *pds, uint32_t n, const char *sel)
{
    if (sel && *sel) {
        char *end;
        long idx = strtol(sel, &end, 10);
        if (*end == 0 && idx >= 0 && (uint32_t)idx < n) return (int)idx;
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties pr;
            vkGetPhysicalDeviceProperties(pds[i], &pr);
            if (strstr(pr.deviceName, sel)) return (int)i;
        }
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties pr;
        vkGetPhysicalDeviceProperties(pds[i], &pr);
        if (pr.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU) return (int)i;
    }
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties pr;
        vkGetPhysicalDeviceProperties(pds[i], &pr);
        if (pr.deviceType == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU) return (int)i;
    }
    return 0;
}

int vkrt_open(vkrt *rt, const char *device_sel, int verbose, int profile, char *err, size_t errlen)
{
    memset(rt, 0, sizeof *rt);
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "dsv4-batch",
                             .apiVersion = VK_API_VERSION_1_2};
    VkInstanceCreateInfo ici = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkResult r = vkCreateInstance(&ici, NULL, &rt->inst);
    if (r != VK_SUCCESS) {
        snprintf(err, errlen, "vulkan: no Vulkan driver (vkCreateInstance: %d)", (int)r);
        rt->inst = VK_NULL_HANDLE;
        return DSV4_EDEVICE;
    }
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(rt->inst, &n, NULL);
    if (n == 0) {
        snprintf(err, errlen, "vulkan: no Vulkan device found");
        return DSV4_EDEVICE;
    }
    VkPhysicalDevice pds[16];
    if (n > 16) n = 16;
    vkEnumeratePhysicalDevices(rt->inst, &n, pds);
    const char *sel = device_sel ? device_sel : getenv("DSV4_DEVICE");
    int di = pick_device(pds, n, sel);
    if (di < 0) {
        snprintf(err, errlen, "vulkan: no device matches '%s' (%u devices)", sel, n);
        return DSV4_EDEVICE;
    }
    rt->phys = pds[di];
    vkGetPhysicalDeviceProperties(rt->phys, &rt->props);
    vkGetPhysicalDeviceMemoryProperties(rt->phys, &rt->memprops);
    const char *dn = rt->props.deviceName;
    if (!vkrt_has_ext(rt->phys, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME)) {
        snprintf(err, errlen, "vulkan: device '%s' lacks %s", dn, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
        return DSV4_EDEVICE;
    }
    VkPhysicalDeviceFeatures feat;
    vkGetPhysicalDeviceFeatures(rt->phys, &feat);
    if (!feat.shaderFloat64) {
        snprintf(err, errlen, "vulkan: device '%s' lacks shaderFloat64", dn);
        return DSV4_EDEVICE;
    }
    VkPhysicalDeviceSubgroupProperties sgp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 sgp2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sgp};
    vkGetPhysicalDeviceProperties2(rt->phys, &sgp2);
    if (!(sgp.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) ||
        !(sgp.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT)) {
        snprintf(err, errlen, "vulkan: device '%s' lacks subgroup arithmetic in compute shaders (the SMALL GEMMs)", dn);
        return DSV4_EDEVICE;
    }
    if (rt->props.limits.maxPushConstantsSize < 128) {
        snprintf(err, errlen, "vulkan: device '%s' has only %u push-constant bytes (need 128)", dn,
                 rt->props.limits.maxPushConstantsSize);
        return DSV4_EDEVICE;
    }
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(rt->phys, &nq, NULL);
    VkQueueFamilyProperties qf[16];
    if (nq > 16) nq = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(rt->phys, &nq, qf);
    rt->qfam = UINT32_MAX;
    for (uint32_t i = 0; i < nq; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
            rt->qfam = i;
            break;
        }
    if (rt->qfam == UINT32_MAX) {
        snprintf(err, errlen, "vulkan: device '%s' has no compute queue", dn);
        return DSV4_EDEVICE;
    }
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
    vkGetPhysicalDeviceProperties2(rt->phys, &p2);
    rt->max_alloc = m3.maxMemoryAllocationSize;
    rt->max_range = rt->props.limits.maxStorageBufferRange;
    rt->align = rt->props.limits.minStorageBufferOffsetAlignment;
    if (rt->align < 256) rt->align = 256;

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = rt->qfam, .queueCount = 1, .pQueuePriorities = &prio};
    const char *exts[] = {VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME, VK_KHR_COOPERATIVE_MATRIX_EXTENSION_NAME};
    VkPhysicalDeviceFeatures want = {.shaderFloat64 = VK_TRUE, .shaderInt64 = feat.shaderInt64};
    rt->coopmat = coopmat_usable(rt->inst, rt->phys, &rt->props);
    VkPhysicalDeviceCooperativeMatrixFeaturesKHR cm_want = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR, .cooperativeMatrix = VK_TRUE};
    VkPhysicalDeviceVulkan12Features f12_want = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                                 .pNext = &cm_want, .shaderFloat16 = VK_TRUE,
                                                 .vulkanMemoryModel = VK_TRUE};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                              .pNext = rt->coopmat ? &f12_want : NULL,
                              .queueCreateInfoCount = 1, .pQueueCreateInfos = &qci,
                              .enabledExtensionCount = rt->coopmat ? 2 : 1, .ppEnabledExtensionNames = exts,
                              .pEnabledFeatures = &want};
    VKCHK(vkCreateDevice(rt->phys, &dci, NULL, &rt->dev), "vkCreateDevice");
    vkGetDeviceQueue(rt->dev, rt->qfam, 0, &rt->queue);
    rt->push_desc = (PFN_vkCmdPushDescriptorSetKHR)vkGetDeviceProcAddr(rt->dev, "vkCmdPushDescriptorSetKHR");
    if (!rt->push_desc) {
        snprintf(err, errlen, "vulkan: vkCmdPushDescriptorSetKHR not found on '%s'", dn);
        return DSV4_EDEVICE;
    }
    VkCommandPoolCreateInfo cpi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                   .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                   .queueFamilyIndex = rt->qfam};
    VKCHK(vkCreateCommandPool(rt->dev, &cpi, NULL, &rt->pool), "vkCreateCommandPool");
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                       .commandPool = rt->pool, .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                       .commandBufferCount = 1};
    VKCHK(vkAllocateCommandBuffers(rt->dev, &cai, &rt->part[0]), "vkAllocateCommandBuffers");
    rt->cmd = rt->part[0];
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VKCHK(vkCreateFence(rt->dev, &fci, NULL, &rt->fence), "vkCreateFence");

    for (int i = 0; i < P_COUNT; i++) {
        if (pipe_info[i].coopmat && !rt->coopmat) continue;
        /* DSV4_COOPMAT=nobf16: tensor cores for FP8/FP4 weights only (their fp16
           products are exact; bf16 operands outside fp16's range are not) */
        const char *cmenv = getenv("DSV4_COOPMAT");
        if (pipe_info[i].coopmat && cmenv && strcmp(cmenv, "nobf16") == 0 &&
            (i == P_GEMM_CM_BF16 || i == P_GEMM_CM_BF16_GATHER || i == P_GEMM_CM_BF16_GROUPED ||
             i == P_GEMM_CM2_FIRST + 0 || i == P_GEMM_CM2_FIRST + 7 || i == P_GEMM_CM2_FIRST + 8))
            continue;
        const dsv4_spirv *sp = dsv4_spirv_find(pipe_info[i].shader);
        if (!sp) {
            snprintf(err, errlen, "shader '%s' is not embedded (shaders/shaders.list)", pipe_info[i].shader);
            return DSV4_EINVAL;
        }
        if ((uint32_t)pipe_info[i].shmem > rt->props.limits.maxComputeSharedMemorySize) continue;
        /* SMALL2 keeps 32 / subgroup size partial sums of each output, at most 4 */
        if (i >= P_GEMM_SMALL2_FIRST && i <= P_GEMM_SMALL2_LAST && sgp.subgroupSize < 8) continue;
        /* attn_cm32 / attn_cm64 run 256 / 512 invocations per workgroup (Vulkan guarantees 128) */
        if ((i == P_ATTN_CM32 && rt->props.limits.maxComputeWorkGroupInvocations < 256) ||
            (i == P_ATTN_CM64 && rt->props.limits.maxComputeWorkGroupInvocations < 512))
            continue;
        VkDescriptorSetLayoutBinding b[VK_MAX_BINDINGS];
        for (int j = 0; j < pipe_info[i].nbind; j++)
            b[j] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)j,
                                                  .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                  .descriptorCount = 1,
                                                  .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
        VkDescriptorSetLayoutCreateInfo dli = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                               .flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR,
                                               .bindingCount = (uint32_t)pipe_info[i].nbind, .pBindings = b};
        VKCHK(vkCreateDescriptorSetLayout(rt->dev, &dli, NULL, &rt->dsl[i]), "vkCreateDescriptorSetLayout");
        VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = 128};
        VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                          .setLayoutCount = 1, .pSetLayouts = &rt->dsl[i],
                                          .pushConstantRangeCount = 1, .pPushConstantRanges = &pcr};
        VKCHK(vkCreatePipelineLayout(rt->dev, &pli, NULL, &rt->pl[i]), "vkCreatePipelineLayout");
        rt->writes[i] = vkrt_spirv_written_bindings(sp->code, sp->size);
        VkShaderModuleCreateInfo smi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                        .codeSize = sp->size, .pCode = sp->code};
        VkShaderModule sm;
        VKCHK(vkCreateShaderModule(rt->dev, &smi, NULL, &sm), "vkCreateShaderModule");
        VkComputePipelineCreateInfo cci = {
            .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
            .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                      .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = sm, .pName = "main"},
            .layout = rt->pl[i]};
        VkResult pr = vkCreateComputePipelines(rt->dev, VK_NULL_HANDLE, 1, &cci, NULL, &rt->pipe[i]);
        vkDestroyShaderModule(rt->dev, sm, NULL);
        if (pr != VK_SUCCESS && pipe_info[i].coopmat) {
            /* the portable GEMM stays: forward.c uses a twin only where it exists */
            fprintf(stderr, "dsv4: tensor-core pipeline '%s' failed on '%s' (VkResult %d); the portable GEMM runs instead\n",
                    pipe_info[i].shader, dn, (int)pr);
            rt->pipe[i] = VK_NULL_HANDLE;
            continue;
        }
        if (pr != VK_SUCCESS) {
            snprintf(err, errlen, "vulkan: pipeline '%s' failed (VkResult %d)", pipe_info[i].shader, (int)pr);
            return DSV4_EVULKAN;
        }
    }
    rt->profile = profile;
    /* profiling times each dispatch alone; DSV4_FULL_BARRIERS=1 for debugging */
    const char *fb = getenv("DSV4_FULL_BARRIERS");
    rt->full_barriers = profile || (fb && atoi(fb) > 0);
    /* DSV4_SCHEDULE=0: record in order, a barrier before each dependent
       dispatch (for comparison) */
    const char *sc = getenv("DSV4_SCHEDULE");
    if (!(sc && strcmp(sc, "0") == 0) && !(rt->sched = sched_new())) {
        snprintf(err, errlen, "vulkan: out of host memory");
        return DSV4_ENOMEM;
    }
    if (profile) {
        VkQueryPoolCreateInfo qpi = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                     .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = VK_MAX_QUERIES};
        VKCHK(vkCreateQueryPool(rt->dev, &qpi, NULL, &rt->qpool), "vkCreateQueryPool");
    }
    int rc = vkbuf_create(rt, 64u << 20, 0, &rt->stage, err, errlen);
    if (rc) return rc;
    if (verbose)
        fprintf(stderr, "dsv4: Vulkan device %d of %u: %s (%s), maxStorageBufferRange %llu, maxMemoryAllocationSize %llu%s\n",
                di, n, dn,
                rt->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU ? "discrete GPU"
                : rt->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU      ? "CPU"
                                                                            : "GPU",
                (unsigned long long)rt->max_range, (unsigned long long)rt->max_alloc,
                rt->coopmat ? ", cooperative-matrix GEMMs" : "");
    return 0;
}

void vkrt_close(vkrt *rt)
{
    if (!rt) return;
    if (rt->dev) {
        vkDeviceWaitIdle(rt->dev);
        vkbuf_free(rt, &rt->stage);
        for (int i = 0; i < P_COUNT; i++) {
            if (rt->pipe[i]) vkDestroyPipeline(rt->dev, rt->pipe[i], NULL);
            if (rt->pl[i]) vkDestroyPipelineLayout(rt->dev, rt->pl[i], NULL);
            if (rt->dsl[i]) vkDestroyDescriptorSetLayout(rt->dev, rt->dsl[i], NULL);
        }
        if (rt->qpool) vkDestroyQueryPool(rt->dev, rt->qpool, NULL);
        if (rt->fence) vkDestroyFence(rt->dev, rt->fence, NULL);
        if (rt->pool) vkDestroyCommandPool(rt->dev, rt->pool, NULL); /* frees the command buffers */
        vkDestroyDevice(rt->dev, NULL);
    }
    sched_free(rt->sched);
    if (rt->inst) vkDestroyInstance(rt->inst, NULL);
    memset(rt, 0, sizeof *rt);
}

static int find_mem(vkrt *rt, uint32_t bits, VkMemoryPropertyFlags want)
{
    for (uint32_t i = 0; i < rt->memprops.memoryTypeCount; i++)
        if ((bits & (1u << i)) && (rt->memprops.memoryTypes[i].propertyFlags & want) == want) return (int)i;
    return -1;
}

int vkbuf_create(vkrt *rt, VkDeviceSize size, int device_local, vkbuf *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (size < 16) size = 16;
    size = (size + 15) & ~(VkDeviceSize)15;
    if (size > rt->max_alloc) {
        snprintf(err, errlen, "vulkan: buffer of %llu bytes exceeds maxMemoryAllocationSize %llu",
                 (unsigned long long)size, (unsigned long long)rt->max_alloc);
        return DSV4_ENOMEM;
    }
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VKCHK(vkCreateBuffer(rt->dev, &bci, NULL, &out->buf), "vkCreateBuffer");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(rt->dev, out->buf, &req);
    int mt = device_local ? find_mem(rt, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
                          : find_mem(rt, req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                                                 VK_MEMORY_PROPERTY_HOST_COHERENT_BIT |
                                                                 VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
    if (mt < 0 && !device_local)
        mt = find_mem(rt, req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
    if (mt < 0) mt = find_mem(rt, req.memoryTypeBits, 0);
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size,
                                .memoryTypeIndex = (uint32_t)mt};
    VkResult r = vkAllocateMemory(rt->dev, &mai, NULL, &out->mem);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(rt->dev, out->buf, NULL);
        memset(out, 0, sizeof *out);
        snprintf(err, errlen, "vulkan: cannot allocate %llu bytes of %s memory (VkResult %d)",
                 (unsigned long long)size, device_local ? "device" : "host-visible", (int)r);
        return DSV4_ENOMEM;
    }
    VKCHK(vkBindBufferMemory(rt->dev, out->buf, out->mem, 0), "vkBindBufferMemory");
    out->size = size;
    if (!device_local) VKCHK(vkMapMemory(rt->dev, out->mem, 0, VK_WHOLE_SIZE, 0, &out->map), "vkMapMemory");
    return 0;
}

void vkbuf_free(vkrt *rt, vkbuf *b)
{
    if (!b || !rt->dev) return;
    if (b->buf) vkDestroyBuffer(rt->dev, b->buf, NULL);
    if (b->mem) vkFreeMemory(rt->dev, b->mem, NULL);
    memset(b, 0, sizeof *b);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int begin_cmd(vkrt *rt, char *err, size_t errlen)
{
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VKCHK(vkResetCommandBuffer(rt->cmd, 0), "vkResetCommandBuffer");
    VKCHK(vkBeginCommandBuffer(rt->cmd, &bi), "vkBeginCommandBuffer");
    return 0;
}

int vkrt_begin(vkrt *rt, char *err, size_t errlen)
{
    rt->begin_s = mono_s();
    rt->n_part = 0;
    rt->cmd = rt->part[0];
    int rc = begin_cmd(rt, err, errlen);
    if (rc) return rc;
    rt->recording = 1;
    rt->nq = 0;
    rt->defer = rt->g_w = rt->g_r = rt->n_hz_w = rt->n_hz_r = 0; /* nothing pending in a new pass */
    if (rt->profile) vkCmdResetQueryPool(rt->cmd, rt->qpool, 0, VK_MAX_QUERIES);
    if (rt->sched) sched_reset(rt->sched);
    return 0;
}

void vkrt_op(vkrt *rt, const char *name) { rt->cur_op = name; }

static int prof_slot(vkrt *rt, const char *name)
{
    for (int i = 0; i < rt->n_prof; i++)
        if (strcmp(rt->prof_name[i], name) == 0) return i;
    if (rt->n_prof >= VK_MAX_PROF_OPS) return VK_MAX_PROF_OPS - 1;
    snprintf(rt->prof_name[rt->n_prof], 32, "%s", name);
    return rt->n_prof++;
}

static void barrier(vkrt *rt)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                           VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
    vkCmdPipelineBarrier(rt->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0,
                         NULL, 0, NULL);
    rt->n_hz_w = rt->n_hz_r = rt->g_w = rt->g_r = 0;
    rt->n_barriers++;
}

static int overlaps(const struct vkrange *set, int n, vkview v)
{
    for (int i = 0; i < n; i++)
        if (set[i].buf == v.buf && v.off < set[i].end && set[i].off < v.off + v.size) return 1;
    return 0;
}

/* Recording in order (DSV4_SCHEDULE=0): a barrier only where a dispatch
 * depends on one recorded since the last barrier: it reads or writes what
 * one of them wrote (read/write after write) or writes what one of them read
 * (write after read). The pass scheduler below does better: it moves
 * independent work up to the level where its inputs are ready. */
static void hazard(vkrt *rt, const vkview *views, int nviews, uint32_t writes)
{
    /* (with full_barriers the barrier after every dispatch leaves nothing
       pending here) */
    int need = rt->n_hz_w + nviews > VK_MAX_HAZARDS || rt->n_hz_r + nviews > VK_MAX_HAZARDS;
    int nw = rt->defer ? rt->g_w : rt->n_hz_w, nr = rt->defer ? rt->g_r : rt->n_hz_r;
    for (int i = 0; i < nviews && !need; i++) {
        need = overlaps(rt->hz_w, nw, views[i]);
        if (!need && (writes >> i & 1u)) need = overlaps(rt->hz_r, nr, views[i]);
    }
    if (need) barrier(rt);
    for (int i = 0; i < nviews; i++) {
        struct vkrange r = {views[i].buf, views[i].off, views[i].off + views[i].size};
        if (writes >> i & 1u) rt->hz_w[rt->n_hz_w++] = r;
        else rt->hz_r[rt->n_hz_r++] = r;
    }
}

/* SPIR-V words used below (SPIR-V 1.x specification, section 3) */
enum { SPV_DECORATE = 71, SPV_MEMBER_DECORATE = 72, SPV_VARIABLE = 59, SPV_TYPE_POINTER = 32,
       SPV_DEC_BINDING = 33, SPV_DEC_NONWRITABLE = 24 };

uint32_t vkrt_spirv_written_bindings(const uint32_t *code, size_t bytes)
{
    size_t nw = bytes / 4;
    if (nw < 5 || code[0] != 0x07230203u || code[3] == 0 || code[3] > (1u << 22)) return ~0u;
    uint32_t bound = code[3];
    /* per id: binding + 1, NonWritable on the id, NonWritable on every member
       seen (count of members, count of NonWritable members), pointee type */
    uint32_t *binding = calloc(bound, 4), *pointee = calloc(bound, 4), *var_type = calloc(bound, 4);
    uint32_t *members = calloc(bound, 4), *ro_members = calloc(bound, 4);
    uint8_t *ro = calloc(bound, 1);
    uint32_t mask = ~0u;
    if (!binding || !pointee || !var_type || !members || !ro_members || !ro) goto done;
    for (size_t i = 5; i < nw;) {
        uint32_t len = code[i] >> 16, op = code[i] & 0xffffu;
        if (len == 0 || i + len > nw) goto done;
        const uint32_t *w = code + i;
        if (op == SPV_DECORATE && len >= 3 && w[1] < bound) {
            if (w[2] == SPV_DEC_BINDING && len >= 4) binding[w[1]] = w[3] + 1;
            if (w[2] == SPV_DEC_NONWRITABLE) ro[w[1]] = 1;
        } else if (op == SPV_MEMBER_DECORATE && len >= 4 && w[1] < bound) {
            if (w[2] + 1 > members[w[1]]) members[w[1]] = w[2] + 1;
            if (w[3] == SPV_DEC_NONWRITABLE) ro_members[w[1]]++;
        } else if (op == SPV_TYPE_POINTER && len >= 4 && w[1] < bound) {
            pointee[w[1]] = w[3];
        } else if (op == SPV_VARIABLE && len >= 4 && w[2] < bound) {
            var_type[w[2]] = w[1];
        }
        i += len;
    }
    mask = 0;
    for (uint32_t id = 0; id < bound; id++) {
        if (!binding[id] || binding[id] > 32) continue;
        uint32_t pt = var_type[id] < bound ? var_type[id] : 0, st = pt ? pointee[pt] : 0;
        int readonly = ro[id] || (st && st < bound && members[st] && ro_members[st] >= members[st]);
        if (!readonly) mask |= 1u << (binding[id] - 1);
    }
done:
    free(binding); free(pointee); free(var_type); free(members); free(ro_members); free(ro);
    return mask;
}

/* ---- the pass scheduler ----
 * In the default mode a pass's dispatches, copies and fills are queued, not
 * recorded. Each gets a level: one more than the highest level of the
 * earlier operations it depends on (it reads what one wrote, or writes what
 * one read or wrote; views compared by buffer and byte range). At submit
 * they are recorded level by level with one barrier between levels, so a
 * pass waits as often as its longest dependency chain is long, whatever
 * order forward.c records independent work in (recorded in order, a
 * decode layer waited at each of ~30 of its ~50 dispatches).
 * Per buffer the scheduler keeps the ranges written and read so far in the
 * pass with their levels; a write drops the earlier entries it covers at or
 * below its level (later operations that touch them touch the write too). */
enum { OP_DISPATCH, OP_COPY, OP_FILL };
typedef struct qop {
    int kind, nviews, level;
    vk_pipe_id p;
    uint32_t writes, view0, push0, push_size, g[3];
    VkDeviceSize n; /* copy, fill: bytes */
    uint32_t value; /* fill */
    const char *name; /* vkrt_op's name (DSV4_SCHED_TRACE) */
} qop;
typedef struct qacc { VkDeviceSize off, end; int level, next; } qacc;
typedef struct qslot { VkBuffer buf; int w, r; } qslot; /* heads of its write and read lists (-1: none) */
typedef struct qpend { int slot, write; VkDeviceSize off, end; int level; } qpend;

struct vksched {
    qop *ops;
    vkview *views;
    uint8_t *push;
    qacc *acc;
    qslot *slots;  /* open addressing by buffer handle, cap_slots a power of two */
    qpend *pend;   /* accesses of a vkrt_defer_barriers group, entered at its end */
    int *order;
    int n_ops, cap_ops, n_views, cap_views, n_push, cap_push, n_acc, cap_acc, n_slots, cap_slots, n_pend,
        cap_pend, cap_order, levels, failed;
    int reverse; /* DSV4_SCHED_REVERSE=1: each level's operations in reverse queue order */
    int trace;   /* DSV4_SCHED_TRACE set: each pass's operations by level to stderr */
};

/* Queued (rt->sched) unless every dispatch gets its own barrier (profiling,
   DSV4_FULL_BARRIERS): then recorded at once. */
static int scheduled(const vkrt *rt) { return rt->sched && !rt->full_barriers; }

static int grow(void *pp, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 256;
    while (nc < need) nc *= 2;
    void *q = realloc(*(void **)pp, (size_t)nc * elem);
    if (!q) return -1;
    *(void **)pp = q;
    *cap = nc;
    return 0;
}

static struct vksched *sched_new(void)
{
    struct vksched *q = calloc(1, sizeof *q);
    const char *r = getenv("DSV4_SCHED_REVERSE");
    if (q) {
        q->reverse = r && strcmp(r, "1") == 0;
        q->trace = getenv("DSV4_SCHED_TRACE") != NULL;
    }
    return q;
}

static void sched_free(struct vksched *q)
{
    if (!q) return;
    free(q->ops); free(q->views); free(q->push); free(q->acc); free(q->slots); free(q->pend); free(q->order);
    free(q);
}

static void sched_reset(struct vksched *q)
{
    q->n_ops = q->n_views = q->n_push = q->n_acc = q->n_slots = q->n_pend = q->levels = q->failed = 0;
    if (q->slots) memset(q->slots, 0, (size_t)q->cap_slots * sizeof *q->slots);
}

static uint32_t slot_hash(VkBuffer b)
{
    uint64_t h = (uint64_t)(uintptr_t)b * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32);
}

/* The slot of buffer b, entered if new; -1 when out of memory. */
static int sched_slot(struct vksched *q, VkBuffer b)
{
    if (2 * (q->n_slots + 1) > q->cap_slots) {
        int oc = q->cap_slots, nc = oc ? 2 * oc : 1024;
        qslot *old = q->slots, *ns = calloc((size_t)nc, sizeof *ns);
        if (!ns) return -1;
        for (int i = 0; i < oc; i++) {
            if (!old[i].buf) continue;
            uint32_t h = slot_hash(old[i].buf) & (uint32_t)(nc - 1);
            while (ns[h].buf) h = (h + 1) & (uint32_t)(nc - 1);
            ns[h] = old[i];
        }
        free(old);
        q->slots = ns;
        q->cap_slots = nc;
    }
    uint32_t h = slot_hash(b) & (uint32_t)(q->cap_slots - 1);
    while (q->slots[h].buf && q->slots[h].buf != b) h = (h + 1) & (uint32_t)(q->cap_slots - 1);
    if (!q->slots[h].buf) {
        q->slots[h] = (qslot){b, -1, -1};
        q->n_slots++;
    }
    return (int)h;
}

/* The highest level + 1 among the list's entries overlapping [off, end). */
static int list_after(const struct vksched *q, int head, VkDeviceSize off, VkDeviceSize end)
{
    int l = 0;
    for (int i = head; i >= 0; i = q->acc[i].next)
        if (q->acc[i].off < end && off < q->acc[i].end && q->acc[i].level + 1 > l) l = q->acc[i].level + 1;
    return l;
}

/* Drops the list's entries inside [off, end) at or below level: a write
 * there covers them. (Outside a vkrt_defer_barriers group every overlapping
 * entry is below the write's level; a group's writes can overlap at any
 * levels.) */
static void list_drop_inside(struct vksched *q, int *head, VkDeviceSize off, VkDeviceSize end, int level)
{
    int *link = head;
    while (*link >= 0) {
        qacc *a = &q->acc[*link];
        if (a->off >= off && a->end <= end && a->level <= level) *link = a->next;
        else link = &a->next;
    }
}

static int sched_enter(struct vksched *q, int slot, int write, VkDeviceSize off, VkDeviceSize end, int level)
{
    qslot *s = &q->slots[slot];
    if (write) {
        list_drop_inside(q, &s->w, off, end, level);
        list_drop_inside(q, &s->r, off, end, level);
    }
    if (grow(&q->acc, &q->cap_acc, q->n_acc + 1, sizeof *q->acc)) return -1;
    int *head = write ? &s->w : &s->r;
    q->acc[q->n_acc] = (qacc){off, end, level, *head};
    *head = q->n_acc++;
    return 0;
}

/* Queues one operation: its level from the views it reads and writes. */
static void sched_add(vkrt *rt, qop op, const vkview *views, const void *push)
{
    struct vksched *q = rt->sched;
    if (q->failed) return;
    int slot[VK_MAX_BINDINGS], level = 0;
    for (int i = 0; i < op.nviews; i++) {
        slot[i] = sched_slot(q, views[i].buf);
        if (slot[i] < 0) goto oom;
        const qslot *s = &q->slots[slot[i]];
        VkDeviceSize off = views[i].off, end = views[i].off + views[i].size;
        int l = list_after(q, s->w, off, end);
        if (op.writes >> i & 1u) {
            int lr = list_after(q, s->r, off, end);
            if (lr > l) l = lr;
        }
        if (l > level) level = l;
    }
    if (grow(&q->ops, &q->cap_ops, q->n_ops + 1, sizeof *q->ops) ||
        grow(&q->views, &q->cap_views, q->n_views + op.nviews, sizeof *q->views) ||
        grow(&q->push, &q->cap_push, q->n_push + (int)op.push_size, 1))
        goto oom;
    op.level = level;
    op.name = rt->cur_op;
    op.view0 = (uint32_t)q->n_views;
    op.push0 = (uint32_t)q->n_push;
    memcpy(q->views + q->n_views, views, (size_t)op.nviews * sizeof *views);
    if (op.push_size) memcpy(q->push + q->n_push, push, op.push_size);
    q->n_views += op.nviews;
    q->n_push += (int)op.push_size;
    q->ops[q->n_ops++] = op;
    if (level + 1 > q->levels) q->levels = level + 1;
    for (int i = 0; i < op.nviews; i++) {
        qpend pe = {slot[i], (int)(op.writes >> i & 1u), views[i].off, views[i].off + views[i].size, level};
        if (rt->defer) {
            if (grow(&q->pend, &q->cap_pend, q->n_pend + 1, sizeof *q->pend)) goto oom;
            q->pend[q->n_pend++] = pe;
        } else if (sched_enter(q, pe.slot, pe.write, pe.off, pe.end, pe.level)) {
            goto oom;
        }
    }
    return;
oom:
    q->failed = 1;
}

static void record_dispatch(vkrt *rt, vk_pipe_id p, const vkview *views, int nviews, const void *push,
                            size_t push_size, uint32_t gx, uint32_t gy, uint32_t gz)
{
    VkDescriptorBufferInfo bi[VK_MAX_BINDINGS];
    VkWriteDescriptorSet w[VK_MAX_BINDINGS];
    for (int i = 0; i < nviews; i++) {
        bi[i] = (VkDescriptorBufferInfo){views[i].buf, views[i].off, views[i].size};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstBinding = (uint32_t)i,
                                      .descriptorCount = 1, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                      .pBufferInfo = &bi[i]};
    }
    vkCmdBindPipeline(rt->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, rt->pipe[p]);
    rt->push_desc(rt->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, rt->pl[p], 0, (uint32_t)nviews, w);
    if (push_size) vkCmdPushConstants(rt->cmd, rt->pl[p], VK_SHADER_STAGE_COMPUTE_BIT, 0, (uint32_t)push_size, push);
    int prof = rt->profile && rt->nq + 2 <= VK_MAX_QUERIES;
    if (prof) {
        rt->q_op[rt->nq / 2] = prof_slot(rt, rt->cur_op ? rt->cur_op : "other");
        vkCmdWriteTimestamp(rt->cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, rt->qpool, rt->nq);
    }
    vkCmdDispatch(rt->cmd, gx, gy, gz);
    if (prof) {
        vkCmdWriteTimestamp(rt->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, rt->qpool, rt->nq + 1);
        rt->nq += 2;
    }
    rt->n_dispatches++;
}

/* Records the queue level by level (in queue order within a level). */
static int sched_flush(vkrt *rt, char *err, size_t errlen)
{
    struct vksched *q = rt->sched;
    if (q->failed) {
        snprintf(err, errlen, "vulkan: out of host memory queueing a pass of %d operations", q->n_ops);
        return DSV4_ENOMEM;
    }
    if (grow(&q->order, &q->cap_order, q->n_ops + q->levels + 1, sizeof *q->order)) {
        snprintf(err, errlen, "vulkan: out of host memory ordering a pass of %d operations", q->n_ops);
        return DSV4_ENOMEM;
    }
    /* counting sort by level: level l is order[first[l] .. first[l + 1]) */
    int *first = q->order + q->n_ops, *order = q->order;
    memset(first, 0, (size_t)(q->levels + 1) * sizeof *first);
    for (int i = 0; i < q->n_ops; i++) first[q->ops[i].level + 1]++;
    for (int l = 0; l < q->levels; l++) first[l + 1] += first[l];
    for (int i = 0; i < q->n_ops; i++) order[first[q->ops[i].level]++] = i;
    for (int l = q->levels; l > 0; l--) first[l] = first[l - 1];
    first[0] = 0;
    for (int l = 0; l < q->levels; l++) {
        if (l) barrier(rt);
        int n = first[l + 1] - first[l];
        for (int j = 0; j < n; j++) {
            /* reversed (tests): a missed dependency inside a level then
               changes results even on a driver that runs commands in order */
            int i = order[first[l] + (q->reverse ? n - 1 - j : j)];
            const qop *op = &q->ops[i];
            const vkview *v = q->views + op->view0;
            if (q->trace)
                fprintf(stderr, "L%-4d #%-5d %-16s %s\n", l, i, op->name ? op->name : "-",
                        op->kind == OP_DISPATCH ? pipe_info[op->p].shader : op->kind == OP_COPY ? "(copy)" : "(fill)");
            if (op->kind == OP_DISPATCH) {
                record_dispatch(rt, op->p, v, op->nviews, q->push + op->push0, op->push_size, op->g[0], op->g[1],
                                op->g[2]);
            } else if (op->kind == OP_COPY) {
                VkBufferCopy c = {v[0].off, v[1].off, op->n};
                vkCmdCopyBuffer(rt->cmd, v[0].buf, v[1].buf, 1, &c);
            } else {
                vkCmdFillBuffer(rt->cmd, v[0].buf, v[0].off, op->n, op->value);
            }
        }
    }
    sched_reset(q);
    return 0;
}

void vkrt_dispatch(vkrt *rt, vk_pipe_id p, const vkview *views, int nviews, const void *push,
                   size_t push_size, uint32_t gx, uint32_t gy, uint32_t gz)
{
    if (gx == 0 || gy == 0 || gz == 0) return;
    if (scheduled(rt)) {
        qop op = {.kind = OP_DISPATCH, .nviews = nviews, .p = p, .writes = rt->writes[p],
                  .push_size = (uint32_t)push_size, .g = {gx, gy, gz}};
        sched_add(rt, op, views, push);
        return;
    }
    hazard(rt, views, nviews, rt->writes[p]);
    record_dispatch(rt, p, views, nviews, push, push_size, gx, gy, gz);
    if (rt->full_barriers) barrier(rt);
}

/* on: the dispatches that follow are independent of each other (the same
 * step of different sequences): they are compared only with what came
 * before the group, so they get no barriers among themselves even where
 * they share a scratch view (each writes its own rows of it). */
void vkrt_defer_barriers(vkrt *rt, int on)
{
    struct vksched *q = scheduled(rt) ? rt->sched : NULL;
    if (q && !on) { /* the group's accesses count for what follows it */
        for (int i = 0; i < q->n_pend && !q->failed; i++)
            if (sched_enter(q, q->pend[i].slot, q->pend[i].write, q->pend[i].off, q->pend[i].end, q->pend[i].level))
                q->failed = 1;
        q->n_pend = 0;
    }
    rt->defer = on;
    rt->g_w = rt->n_hz_w;
    rt->g_r = rt->n_hz_r;
}

void vkrt_copy(vkrt *rt, vkview src, vkview dst, VkDeviceSize n)
{
    if (n == 0) return;
    if (scheduled(rt)) {
        vkview v[2] = {src, dst};
        v[0].size = v[1].size = n;
        qop op = {.kind = OP_COPY, .nviews = 2, .writes = 2u, .n = n};
        sched_add(rt, op, v, NULL);
        return;
    }
    VkBufferCopy c = {src.off, dst.off, n};
    barrier(rt);
    vkCmdCopyBuffer(rt->cmd, src.buf, dst.buf, 1, &c);
    barrier(rt);
}

void vkrt_fill(vkrt *rt, vkview dst, VkDeviceSize n, uint32_t value)
{
    if (n == 0) return;
    if (scheduled(rt)) {
        dst.size = n;
        qop op = {.kind = OP_FILL, .nviews = 1, .writes = 1u, .n = n, .value = value};
        sched_add(rt, op, &dst, NULL);
        return;
    }
    barrier(rt);
    vkCmdFillBuffer(rt->cmd, dst.buf, dst.off, n, value);
    barrier(rt);
}

int vkrt_queued(const vkrt *rt) { return scheduled(rt) ? rt->sched->n_ops : 0; }

/* Records what is queued (rt->sched) into the command buffer; on failure
 * the buffer is ended and the parts already submitted are waited for, so
 * the buffers can be reused. */
static int flush_queued(vkrt *rt, char *err, size_t errlen)
{
    if (!rt->sched) return 0;
    int rc = sched_flush(rt, err, errlen);
    if (rc) {
        vkEndCommandBuffer(rt->cmd);
        if (rt->n_part) vkQueueWaitIdle(rt->queue);
    }
    return rc;
}

/* Ends the command buffer and submits it (signalling fence, if any). */
static int end_submit(vkrt *rt, VkFence fence, char *err, size_t errlen)
{
    VKCHK(vkEndCommandBuffer(rt->cmd), "vkEndCommandBuffer");
    rt->record_s += mono_s() - rt->begin_s;
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &rt->cmd};
    if (fence) VKCHK(vkResetFences(rt->dev, 1, &fence), "vkResetFences");
    VKCHK(vkQueueSubmit(rt->queue, 1, &si, fence), "vkQueueSubmit");
    rt->n_submits++;
    return 0;
}

int vkrt_submit_part(vkrt *rt, char *err, size_t errlen)
{
    if (!scheduled(rt) || rt->n_part + 1 >= VK_MAX_PARTS || !rt->sched->n_ops) return 0;
    if (!rt->part[rt->n_part + 1]) {
        VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                           .commandPool = rt->pool, .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                           .commandBufferCount = 1};
        VKCHK(vkAllocateCommandBuffers(rt->dev, &cai, &rt->part[rt->n_part + 1]), "vkAllocateCommandBuffers");
    }
    int rc = flush_queued(rt, err, errlen);
    if (!rc) rc = end_submit(rt, VK_NULL_HANDLE, err, errlen);
    if (rc) return rc;
    rt->begin_s = mono_s();
    rt->cmd = rt->part[++rt->n_part];
    rc = begin_cmd(rt, err, errlen);
    if (rc) return rc;
    barrier(rt); /* what follows waits for what was submitted */
    return 0;
}

int vkrt_submit_wait(vkrt *rt, char *err, size_t errlen)
{
    rt->recording = 0;
    int pending = rt->n_hz_w || rt->n_hz_r || (rt->sched && rt->sched->n_ops);
    int rc = flush_queued(rt, err, errlen);
    if (rc) return rc;
    /* the pass's last writes must be visible to later submissions
       (downloads, the next pass) */
    if (pending) barrier(rt);
    rc = end_submit(rt, rt->fence, err, errlen);
    if (rc) return rc;
    rt->n_passes++;
    VKCHK(vkWaitForFences(rt->dev, 1, &rt->fence, VK_TRUE, UINT64_MAX), "vkWaitForFences");
    if (rt->profile && rt->nq) {
        uint64_t *ts = malloc(rt->nq * sizeof *ts);
        if (ts && vkGetQueryPoolResults(rt->dev, rt->qpool, 0, rt->nq, rt->nq * sizeof *ts, ts, sizeof *ts,
                                        VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) == VK_SUCCESS) {
            double per = rt->props.limits.timestampPeriod * 1e-6;
            for (uint32_t i = 0; i + 1 < rt->nq; i += 2) {
                int s = rt->q_op[i / 2];
                rt->prof_ms[s] += (double)(ts[i + 1] - ts[i]) * per;
                rt->prof_calls[s]++;
            }
        }
        free(ts);
    }
    return 0;
}

int vkrt_upload(vkrt *rt, vkview dst, const void *src, size_t n, char *err, size_t errlen)
{
    size_t done = 0;
    while (done < n) {
        size_t k = n - done;
        if (k > rt->stage.size) k = rt->stage.size;
        memcpy(rt->stage.map, (const uint8_t *)src + done, k);
        int rc = vkrt_begin(rt, err, errlen);
        if (rc) return rc;
        VkBufferCopy c = {0, dst.off + done, (k + 3) & ~(size_t)3};
        if (dst.off + done + c.size > dst.off + dst.size && k % 4) c.size = k; /* tail */
        vkCmdCopyBuffer(rt->cmd, rt->stage.buf, dst.buf, 1, &c);
        rc = vkrt_submit_wait(rt, err, errlen);
        if (rc) return rc;
        done += k;
    }
    return 0;
}

int vkrt_download(vkrt *rt, vkview src, void *dst, size_t n, char *err, size_t errlen)
{
    size_t done = 0;
    while (done < n) {
        size_t k = n - done;
        if (k > rt->stage.size) k = rt->stage.size;
        int rc = vkrt_begin(rt, err, errlen);
        if (rc) return rc;
        VkBufferCopy c = {src.off + done, 0, k};
        vkCmdCopyBuffer(rt->cmd, src.buf, rt->stage.buf, 1, &c);
        rc = vkrt_submit_wait(rt, err, errlen);
        if (rc) return rc;
        memcpy((uint8_t *)dst + done, rt->stage.map, k);
        done += k;
    }
    return 0;
}
