/* engine/shards.c: one engine over several Vulkan devices of one machine
 * (pipeline parallel; docs/engine.md "Several devices").
 *
 * A released V4-Flash (~149 GB) does not fit one 80 GB GPU, so the blocks
 * are split in contiguous ranges, one per device. Each device is a shard: a
 * dsv4_engine of its own (runtime with its own VkInstance and VkDevice,
 * arenas, scratch, pipelines) that uploads only the blocks it owns, plus
 * the embedding on the first shard and the head and MTP blocks on the last
 * (the MTP block embeds its next token, so the last shard also holds the
 * embedding when the model has MTP). A pass runs the shards in order with
 * the hidden state handed over through host memory (engine/engine.c), so
 * forward.c's recording is the same as on one device and the logits are
 * bit-identical to a one-device run on the same driver. Opening one
 * physical device several times works the same way: that is how the tests
 * split the tiny model over lavapipe.
 *
 * This file opens the devices, parses the user's choice (--devices/--split,
 * $DSV4_DEVICES/$DSV4_SPLIT) and computes the placement from each device's
 * free memory and the config's block sizes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/bench.h"

/* The largest device-local heap's budget minus usage (VK_EXT_memory_budget),
 * or 90% of its size. */
uint64_t shards_device_budget(const vkrt *rt)
{
    VkPhysicalDeviceMemoryBudgetPropertiesEXT bp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
    VkPhysicalDeviceMemoryProperties2 mp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2};
    int budget = vkrt_has_ext(rt->phys, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    if (budget) mp.pNext = &bp;
    vkGetPhysicalDeviceMemoryProperties2(rt->phys, &mp);
    uint64_t best = 0;
    for (uint32_t h = 0; h < mp.memoryProperties.memoryHeapCount; h++) {
        if (!(mp.memoryProperties.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)) continue;
        uint64_t v = mp.memoryProperties.memoryHeaps[h].size / 10 * 9;
        if (budget && bp.heapBudget[h]) v = bp.heapBudget[h] > bp.heapUsage[h] ? bp.heapBudget[h] - bp.heapUsage[h] : 0;
        if (v > best) best = v;
    }
    return best;
}

static void device_uuid(const vkrt *rt, uint8_t uuid[VK_UUID_SIZE])
{
    VkPhysicalDeviceIDProperties id = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &id};
    vkGetPhysicalDeviceProperties2(rt->phys, &p2);
    memcpy(uuid, id.deviceUUID, VK_UUID_SIZE);
}

/* Each shard's share of its device's budget: a physical device opened k
   times (the tests on lavapipe) shares its memory k ways. */
static void shard_budgets(const dsv4_engine *e, uint64_t *budget)
{
    uint8_t uuid[DSV4_MAX_SHARDS][VK_UUID_SIZE];
    int N = e->n_shards;
    for (int k = 0; k < N; k++) device_uuid(&e->shard[k]->rt, uuid[k]);
    for (int k = 0; k < N; k++) {
        int same = 0;
        for (int j = 0; j < N; j++) same += memcmp(uuid[j], uuid[k], VK_UUID_SIZE) == 0;
        budget[k] = shards_device_budget(&e->shard[k]->rt) / (uint64_t)(same ? same : 1);
    }
}

uint64_t shards_total_budget(const dsv4_engine *e)
{
    uint64_t b[DSV4_MAX_SHARDS], t = 0;
    shard_budgets(e, b);
    for (int k = 0; k < e->n_shards; k++) t += b[k];
    return t;
}

/* Splits a comma-separated list in place into at most DSV4_MAX_SHARDS items. */
static int split_list(char *s, char **items)
{
    int n = 0;
    for (char *p = s;; p++) {
        char *q = strchr(p, ',');
        if (n == DSV4_MAX_SHARDS) return -1;
        items[n++] = p;
        if (!q) break;
        *q = 0;
        p = q;
    }
    return n;
}

int shards_open(dsv4_engine *e, const dsv4_engine_options *opt, char *err, size_t errlen)
{
    const char *dv = opt && opt->devices ? opt->devices : getenv("DSV4_DEVICES");
    const char *sp = opt && opt->split ? opt->split : getenv("DSV4_SPLIT");
    const char *dv_src = opt && opt->devices ? "devices" : "DSV4_DEVICES";
    const char *sp_src = opt && opt->split ? "split" : "DSV4_SPLIT";
    int verbose = opt ? opt->verbose : 0, profile = opt ? opt->profile : 0;
    char dbuf[512], sbuf[256];
    char *dev[DSV4_MAX_SHARDS], *cnt[DSV4_MAX_SHARDS];
    int nd = 1, ns = 0;
    dev[0] = NULL;
    if (dv && *dv) {
        snprintf(dbuf, sizeof dbuf, "%s", dv);
        nd = split_list(dbuf, dev);
        if (nd < 0) {
            snprintf(err, errlen, "%s \"%s\": more than %d devices", dv_src, dv, DSV4_MAX_SHARDS);
            return DSV4_EINVAL;
        }
        for (int k = 0; k < nd; k++)
            if (!*dev[k]) {
                snprintf(err, errlen, "%s \"%s\": device %d is empty (give indices or name substrings, "
                         "comma-separated)", dv_src, dv, k + 1);
                return DSV4_EINVAL;
            }
    } else if (opt && opt->device) {
        dev[0] = (char *)opt->device;
    }
    memset(e->split, 0, sizeof e->split);
    if (sp && *sp) {
        snprintf(sbuf, sizeof sbuf, "%s", sp);
        ns = split_list(sbuf, cnt);
        if (ns < 0) {
            snprintf(err, errlen, "%s \"%s\": more than %d devices", sp_src, sp, DSV4_MAX_SHARDS);
            return DSV4_EINVAL;
        }
        for (int k = 0; k < ns; k++) {
            char *end;
            long v = strtol(cnt[k], &end, 10);
            if (end == cnt[k] || *end || v < 0 || v > DSV4_MAX_LAYERS) {
                snprintf(err, errlen, "%s \"%s\": entry %d \"%s\" is not a number of blocks", sp_src, sp, k + 1,
                         cnt[k]);
                return DSV4_EINVAL;
            }
            if (v == 0) {
                snprintf(err, errlen, "%s \"%s\": device %d gets 0 blocks (each device needs at least one)", sp_src,
                         sp, k + 1);
                return DSV4_EINVAL;
            }
            e->split[k] = (int)v;
        }
        if (ns != nd) {
            snprintf(err, errlen, "%s \"%s\" has %d entries for %d device%s (%s)", sp_src, sp, ns, nd,
                     nd == 1 ? "" : "s", dv && *dv ? dv : "give as many with --devices or DSV4_DEVICES");
            return DSV4_EINVAL;
        }
    }
    e->n_shards = 1;
    e->shard[0] = e;
    int rc = vkrt_open(&e->rt, dev[0], verbose, profile, err, errlen);
    if (rc && nd > 1) {
        char m[256];
        snprintf(m, sizeof m, "%s", err);
        snprintf(err, errlen, "%s device 1 \"%s\": %s", dv_src, dev[0], m);
    }
    if (rc) return rc;
    for (int k = 1; k < nd; k++) {
        dsv4_engine *s = calloc(1, sizeof *s);
        if (!s) {
            snprintf(err, errlen, "engine: out of memory");
            return DSV4_ENOMEM;
        }
        s->is_shard = 1;
        s->m = e->m;
        e->shard[e->n_shards++] = s; /* closed by shards_close, also half-open */
        rc = vkrt_open(&s->rt, dev[k], verbose, profile, err, errlen);
        if (rc) {
            char m[256];
            snprintf(m, sizeof m, "%s", err);
            snprintf(err, errlen, "%s device %d \"%s\": %s", dv_src, k + 1, dev[k], m);
            return rc;
        }
    }
    return 0;
}

int shards_place(dsv4_engine *e, int L, int n_mtp, const uint64_t *block_bytes, uint64_t vocab_bytes, uint64_t scratch,
                 int verbose, char *err, size_t errlen)
{
    int N = e->n_shards;
    int count[DSV4_MAX_SHARDS];
    uint64_t budget[DSV4_MAX_SHARDS], fixed[DSV4_MAX_SHARDS], mtp_bytes = 0, W = 0;
    for (int i = 0; i < n_mtp; i++) mtp_bytes += block_bytes[L + i];
    for (int i = 0; i < L; i++) W += block_bytes[i];
    shard_budgets(e, budget);
    for (int k = 0; k < N; k++) {
        fixed[k] = scratch + (k == 0 ? vocab_bytes : 0);
        if (k == N - 1) fixed[k] += vocab_bytes + mtp_bytes + (n_mtp && k ? vocab_bytes : 0);
    }
    if (N > L) {
        snprintf(err, errlen, "%d devices for %d blocks: each device needs at least one block", N, L);
        return DSV4_EINVAL;
    }
    if (e->split[0]) {
        int sum = 0;
        for (int k = 0; k < N; k++) sum += count[k] = e->split[k];
        if (sum != L) {
            snprintf(err, errlen, "split gives %d blocks in all, the model has %d (num_hidden_layers)", sum, L);
            return DSV4_EINVAL;
        }
    } else {
        /* shares of the blocks' bytes in proportion to what each device has
           left after its fixed part, at least one block each */
        uint64_t cap[DSV4_MAX_SHARDS], capsum = 0;
        for (int k = 0; k < N; k++) capsum += cap[k] = budget[k] > fixed[k] ? budget[k] - fixed[k] : 0;
        int b = 0;
        double cum = 0, done = 0;
        for (int k = 0; k < N; k++) {
            cum += capsum ? (double)W * cap[k] / capsum : (double)W / N;
            int n = 0;
            if (k == N - 1) n = L - b;
            else
                while (b + n < L - (N - 1 - k) &&
                       (n == 0 || done + block_bytes[b + n] / 2.0 <= cum)) { /* nearest boundary */
                    done += block_bytes[b + n];
                    n++;
                }
            count[k] = n;
            b += n;
        }
    }
    int b = 0;
    for (int k = 0; k < N; k++) {
        dsv4_engine *s = e->shard[k];
        s->own_b0 = b;
        s->own_b1 = b + count[k];
        s->own_embed = k == 0 || (k == N - 1 && n_mtp > 0);
        s->own_head = s->own_mtp = k == N - 1;
        uint64_t w = fixed[k];
        for (int i = b; i < b + count[k]; i++) w += block_bytes[i];
        b += count[k];
        if (N > 1 && !e->split[0] && w > budget[k]) {
            snprintf(err, errlen, "device %d (%s): blocks [%d, %d) and its fixed part need %llu MiB, its budget is "
                     "%llu MiB (give another --split, or more devices)", k + 1, s->rt.props.deviceName, s->own_b0,
                     s->own_b1, (unsigned long long)(w >> 20), (unsigned long long)(budget[k] >> 20));
            return DSV4_ENOMEM;
        }
        if (verbose && N > 1)
            fprintf(stderr, "dsv4: device %d/%d %s: blocks [%d, %d)%s%s%s, ~%llu MiB of %llu MiB budget\n", k + 1, N,
                    s->rt.props.deviceName, s->own_b0, s->own_b1, s->own_embed ? " + embedding" : "",
                    s->own_head ? " + head" : "", s->own_mtp && n_mtp ? " + MTP" : "", (unsigned long long)(w >> 20),
                    (unsigned long long)(budget[k] >> 20));
    }
    return 0;
}

void shards_close(dsv4_engine *e)
{
    if (!e || e->is_shard) return;
    for (int k = 1; k < e->n_shards; k++) {
        dsv4_engine *s = e->shard[k];
        if (!s) continue;
        if (s->rt.dev) {
            vkDeviceWaitIdle(s->rt.dev);
            fwd_free(s);
        }
        vkrt_close(&s->rt);
        free(s);
        e->shard[k] = NULL;
    }
    e->n_shards = e->n_shards ? 1 : 0;
}
