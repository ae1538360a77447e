/* Synchronisation inside a recorded pass (engine/vk.c): which bindings each
 * pipeline writes, read from its SPIR-V; where barriers go when recording in
 * order (only before a dispatch that depends on one recorded since the last
 * barrier) and with the pass scheduler (dependency levels, one barrier
 * between levels), checked by counting barriers and by the values the
 * reordered chains compute on the Vulkan device (lavapipe here). Skipped
 * when there is no Vulkan device. */
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_engine.h"
#include "engine/vk.h"
#include "shaders/dsv4_shaders.h"
#include "tests/check.h"

static void written_bindings_from_spirv(void)
{
    struct { const char *shader; uint32_t mask; } want[] = {
        {"gemm_fp8", 1u << 3},       /* X, W, S readonly; Y written; route readonly */
        {"gemm_bf16_small", 1u << 3},
        {"act_quant", 1u << 1},
        {"rmsnorm", 1u << 2},
        {"hc_pre", 1u << 4 | 1u << 5},
        {"headprep", 1u << 0},       /* rotates X in place */
        {"ring_write", 1u << 1},
        {"moe_group", 1u << 2},
        {"add_bcast", 1u << 2},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const dsv4_spirv *sp = dsv4_spirv_find(want[i].shader);
        CHECKF(sp != NULL, "%s not embedded", want[i].shader);
        if (!sp) continue;
        uint32_t m = vkrt_spirv_written_bindings(sp->code, sp->size);
        CHECKF(m == want[i].mask, "%s: mask 0x%x, want 0x%x", want[i].shader, m, want[i].mask);
    }
    /* not SPIR-V, or cut short: every binding counts as written */
    uint32_t junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK(vkrt_spirv_written_bindings(junk, sizeof junk) == ~0u);
    const dsv4_spirv *sp = dsv4_spirv_find("gemm_fp8");
    if (sp) {
        uint32_t *cut = malloc(sp->size);
        memcpy(cut, sp->code, sp->size);
        cut[5] = 0; /* an instruction of length 0 */
        CHECK(vkrt_spirv_written_bindings(cut, sp->size) == ~0u);
        free(cut);
    }
}

/* add_bcast: X[t][h][d] = A[t][d] + B[t][h][d] (binding 2 written). */
typedef struct { uint32_t D, hc; } pc_add;

static void barriers_only_where_needed(void)
{
    vkrt rt;
    char err[256];
    if (vkrt_open(&rt, NULL, 0, 0, err, sizeof err)) SKIP("%s", err);
    rt.full_barriers = 0; /* even if DSV4_FULL_BARRIERS is set around the test */
    struct vksched *sched = rt.sched;
    rt.sched = NULL; /* recorded in order, as with DSV4_SCHEDULE=0 */
    enum { D = 64 };
    vkbuf a, b, x, y, z;
    CHECK(vkbuf_create(&rt, D * 4, 0, &a, err, sizeof err) == 0);
    CHECK(vkbuf_create(&rt, D * 4, 0, &b, err, sizeof err) == 0);
    CHECK(vkbuf_create(&rt, D * 4, 0, &x, err, sizeof err) == 0);
    CHECK(vkbuf_create(&rt, D * 4, 0, &y, err, sizeof err) == 0);
    CHECK(vkbuf_create(&rt, D * 4, 0, &z, err, sizeof err) == 0);
    float *fa = a.map, *fb = b.map;
    for (int i = 0; i < D; i++) {
        fa[i] = 0.25f * (float)i; /* every sum below stays exact in bf16 */
        fb[i] = 0.5f * (float)i;
    }
    pc_add pc = {D, 1};
    vkview A = vkbuf_view(&a, 0, D * 4), B = vkbuf_view(&b, 0, D * 4), X = vkbuf_view(&x, 0, D * 4),
           Y = vkbuf_view(&y, 0, D * 4), Z = vkbuf_view(&z, 0, D * 4);
    CHECK(vkrt_begin(&rt, err, sizeof err) == 0);
    uint64_t n0 = rt.n_barriers;
    vkview v1[3] = {A, B, X}; /* X = A + B */
    vkrt_dispatch(&rt, P_ADD_BCAST, v1, 3, &pc, sizeof pc, 1, 1, 1);
    vkview v2[3] = {A, A, Y}; /* Y = 2A: independent of the first */
    vkrt_dispatch(&rt, P_ADD_BCAST, v2, 3, &pc, sizeof pc, 1, 1, 1);
    CHECKF(rt.n_barriers == n0, "independent dispatches got %llu barriers", (unsigned long long)(rt.n_barriers - n0));
    vkview v3[3] = {X, Y, Z}; /* Z = X + Y: reads both results */
    vkrt_dispatch(&rt, P_ADD_BCAST, v3, 3, &pc, sizeof pc, 1, 1, 1);
    CHECKF(rt.n_barriers == n0 + 1, "read after write: %llu barriers", (unsigned long long)(rt.n_barriers - n0));
    vkview v4[3] = {B, B, A}; /* A = 2B: writes what the first two read, after the barrier: none needed */
    vkrt_dispatch(&rt, P_ADD_BCAST, v4, 3, &pc, sizeof pc, 1, 1, 1);
    CHECKF(rt.n_barriers == n0 + 1, "no hazard since the barrier: %llu", (unsigned long long)(rt.n_barriers - n0));
    vkview v5[3] = {B, B, Z}; /* Z = 2B: writes what the third read (write after read) */
    vkrt_dispatch(&rt, P_ADD_BCAST, v5, 3, &pc, sizeof pc, 1, 1, 1);
    CHECKF(rt.n_barriers == n0 + 2, "write after read: %llu", (unsigned long long)(rt.n_barriers - n0));
    vkview v6[3] = {Z, A, X}; /* X = Z + A: reads both of the last writes */
    vkrt_dispatch(&rt, P_ADD_BCAST, v6, 3, &pc, sizeof pc, 1, 1, 1);
    CHECKF(rt.n_barriers == n0 + 3, "read after write: %llu", (unsigned long long)(rt.n_barriers - n0));
    CHECK(vkrt_submit_wait(&rt, err, sizeof err) == 0);
    /* the chain's values: Y = 2A, Z = 2B, then A = 2B, X = Z + A = 4B */
    float *fx = x.map, *fy = y.map, *fz = z.map;
    int bad = 0;
    for (int i = 0; i < D; i++) {
        bad += fy[i] != 0.5f * (float)i;
        bad += fz[i] != (float)i;
        bad += fx[i] != 2.0f * (float)i;
        bad += fa[i] != (float)i;
    }
    CHECKF(bad == 0, "%d wrong values", bad);
    /* profiling (full barriers): one barrier after each dispatch, none extra
       before it */
    rt.full_barriers = 1;
    CHECK(vkrt_begin(&rt, err, sizeof err) == 0);
    n0 = rt.n_barriers;
    vkrt_dispatch(&rt, P_ADD_BCAST, v2, 3, &pc, sizeof pc, 1, 1, 1);
    vkrt_dispatch(&rt, P_ADD_BCAST, v2, 3, &pc, sizeof pc, 1, 1, 1);
    vkrt_dispatch(&rt, P_ADD_BCAST, v2, 3, &pc, sizeof pc, 1, 1, 1);
    CHECKF(rt.n_barriers == n0 + 3, "full barriers: %llu for 3 dispatches", (unsigned long long)(rt.n_barriers - n0));
    CHECK(vkrt_submit_wait(&rt, err, sizeof err) == 0);
    rt.full_barriers = 0;
    rt.sched = sched;
    vkbuf_free(&rt, &a); vkbuf_free(&rt, &b); vkbuf_free(&rt, &x); vkbuf_free(&rt, &y); vkbuf_free(&rt, &z);
    vkrt_close(&rt);
}

/* The pass scheduler: operations recorded out of dependency order run in
 * 5 levels and still compute what the recorded order says. Each level runs
 * in reverse queue order (DSV4_SCHED_REVERSE), so a dependency the
 * scheduler missed inside a level changes the values even on a driver that
 * runs commands one after another. */
static void scheduled_by_levels(void)
{
    vkrt rt;
    char err[256];
    setenv("DSV4_SCHED_REVERSE", "1", 1);
    int orc = vkrt_open(&rt, NULL, 0, 0, err, sizeof err);
    unsetenv("DSV4_SCHED_REVERSE");
    if (orc) SKIP("%s", err);
    rt.full_barriers = 0;
    if (!rt.sched) SKIP("DSV4_SCHEDULE=0 around the test");
    enum { D = 64 };
    vkbuf a, b, x, y, z, w, c;
    vkbuf *all[7] = {&a, &b, &x, &y, &z, &w, &c};
    for (int i = 0; i < 7; i++) CHECK(vkbuf_create(&rt, 2 * D * 4, 0, all[i], err, sizeof err) == 0);
    float *fa = a.map, *fb = b.map;
    for (int i = 0; i < D; i++) {
        fa[i] = 0.25f * (float)i;
        fb[i] = 0.5f * (float)i;
    }
    memset(c.map, 0, 2 * D * 4);
    pc_add pc = {D, 1};
    vkview A = vkbuf_view(&a, 0, D * 4), B = vkbuf_view(&b, 0, D * 4), X = vkbuf_view(&x, 0, D * 4),
           Y = vkbuf_view(&y, 0, D * 4), Z = vkbuf_view(&z, 0, D * 4), W = vkbuf_view(&w, 0, D * 4),
           C = vkbuf_view(&c, 0, 2 * D * 4);
    CHECK(vkrt_begin(&rt, err, sizeof err) == 0);
    uint64_t n0 = rt.n_barriers, d0 = rt.n_dispatches;
    vkview v1[3] = {A, B, X}; /* X = A + B            level 0 */
    vkview v2[3] = {X, X, Z}; /* Z = 2X               level 1 (reads X) */
    vkview v3[3] = {A, A, Y}; /* Y = 2A               level 0 (independent) */
    vkview v4[3] = {Y, Z, W}; /* W = Y + Z            level 2 */
    vkview v5[3] = {B, B, A}; /* A = 2B               level 1 (writes what 1 and 3 read) */
    vkrt_dispatch(&rt, P_ADD_BCAST, v1, 3, &pc, sizeof pc, 1, 1, 1);
    vkrt_dispatch(&rt, P_ADD_BCAST, v2, 3, &pc, sizeof pc, 1, 1, 1);
    vkrt_dispatch(&rt, P_ADD_BCAST, v3, 3, &pc, sizeof pc, 1, 1, 1);
    vkrt_dispatch(&rt, P_ADD_BCAST, v4, 3, &pc, sizeof pc, 1, 1, 1);
    vkrt_dispatch(&rt, P_ADD_BCAST, v5, 3, &pc, sizeof pc, 1, 1, 1);
    /* a group of two writers of overlapping views of C (each writes its own
       half): levels from what came before the group alone, 3 (after W) and
       2 (after 5); the second's view holds the first's, and what reads C
       must still wait for the first */
    vkrt_defer_barriers(&rt, 1);
    vkview h0[3] = {W, W, vkbuf_view(&c, D * 4, D * 4)}, h1[3] = {A, A, C};
    vkrt_dispatch(&rt, P_ADD_BCAST, h0, 3, &pc, sizeof pc, 1, 1, 1); /* C[D..2D) = 2W */
    vkrt_dispatch(&rt, P_ADD_BCAST, h1, 3, &pc, sizeof pc, 1, 1, 1); /* C[0..D) = 2A (A = 2B by then) */
    vkrt_defer_barriers(&rt, 0);
    vkrt_copy(&rt, C, vkbuf_view(&x, 0, 2 * D * 4), 2 * D * 4); /* X = C: level 4 */
    CHECKF(rt.n_barriers == n0 && rt.n_dispatches == d0, "queued, not recorded: %llu barriers",
           (unsigned long long)(rt.n_barriers - n0));
    CHECK(vkrt_submit_wait(&rt, err, sizeof err) == 0);
    /* levels 0..4: 4 barriers between them and the one after the pass */
    CHECKF(rt.n_barriers - n0 == 5, "%llu barriers, want 5", (unsigned long long)(rt.n_barriers - n0));
    CHECKF(rt.n_dispatches - d0 == 7, "%llu dispatches", (unsigned long long)(rt.n_dispatches - d0));
    /* X = A + B = 0.75i; Z = 1.5i; Y = 0.5i; W = 2i; A = i; C = (2i, 4i) = X */
    const float *fx = x.map, *fz = z.map, *fy = y.map, *fw = w.map, *fc = c.map;
    int bad = 0;
    for (int i = 0; i < D; i++) {
        bad += fz[i] != 1.5f * (float)i;
        bad += fy[i] != 0.5f * (float)i;
        bad += fw[i] != 2.0f * (float)i;
        bad += fa[i] != (float)i;
        bad += fc[i] != 2.0f * (float)i || fc[D + i] != 4.0f * (float)i;
        bad += fx[i] != 2.0f * (float)i || fx[D + i] != 4.0f * (float)i;
    }
    CHECKF(bad == 0, "%d wrong values", bad);
    /* a pass of one fill and its reader: one barrier between, one after */
    CHECK(vkrt_begin(&rt, err, sizeof err) == 0);
    n0 = rt.n_barriers;
    vkrt_fill(&rt, B, D * 4, 0x3f800000u); /* B = 1.0 */
    vkview v6[3] = {B, B, Y};                  /* Y = 2B = 2 */
    vkrt_dispatch(&rt, P_ADD_BCAST, v6, 3, &pc, sizeof pc, 1, 1, 1);
    CHECK(vkrt_submit_wait(&rt, err, sizeof err) == 0);
    CHECKF(rt.n_barriers - n0 == 2, "%llu barriers, want 2", (unsigned long long)(rt.n_barriers - n0));
    bad = 0;
    for (int i = 0; i < D; i++) bad += fy[i] != 2.0f;
    CHECKF(bad == 0, "fill then read: %d wrong values", bad);
    for (int i = 0; i < 7; i++) vkbuf_free(&rt, all[i]);
    vkrt_close(&rt);
}

int main(void)
{
    RUN(written_bindings_from_spirv);
    RUN(barriers_only_where_needed);
    RUN(scheduled_by_levels);
    CHECK_EXIT();
}
