/* attn_fast: the sparse attention of attn_tile.comp (same key list, the
 * maximum over all keys first, probabilities exp(s - max) rounded to bf16 for
 * the value sum, their f32 sum plus the per-head sink as the denominator,
 * output rounded to bf16) without its index-order sums: the portable twin of
 * attn_cm.comp (same bindings and push constants) for GPUs without
 * cooperative matrices, and what DSV4_ATTN_FAST=1 selects.
 *
 * Each score is eight partial sums (two float4 accumulators over alternate
 * float4 columns) combined at the end, the exponentials use the native exp()
 * and the output a reciprocal: a different rounding, so its results agree
 * with the reference within a tolerance (tests/test_vk_ops.c), not bit for
 * bit. What makes it faster than attn_tile is mostly the staging: each row
 * of a key tile is loaded by 8 invocations, 8 float4s each at once from the
 * one buffer that holds it (attn_tile loads a float4 at a time, choosing the
 * buffer for each), so a tile costs two memory round trips, not 16.
 *
 * Threads: NT = 128, one token and HG = 8 heads per workgroup, key tiles of
 * KT = 16 staged in shared memory as exact bf16 pairs (queries and keys are
 * bf16 values: headprep rounds them): 24 KiB at DMAX = 512. For scores
 * invocation t owns head t / 16 and key t % 16 of the tile; for the value sum
 * float4 column t of all 8 heads. Two passes over the keys: the maxima, then
 * the probabilities and the value sum (the scores computed again). head_dim
 * must be a multiple of 8 and at most DMAX.
 *
 * Compressed rows may live in two buffers (forks share their parent's
 * prefix): rows r < base_rows in BASE (binding 7, the last), the others in
 * CMP at r - base_rows; cmp_row is the only reader. */
#version 450
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"
#ifndef DMAX
#define DMAX 512
#endif
#define HG 8
#define KT 16
#define NT 128u
#define D4MAX (DMAX / 4)
#define TPR (NT / KT)        /* invocations per staged row */
#define LB 8u                /* float4s each of them loads at once */
#define NOKEY 0xffffffffu
layout(local_size_x = NT) in;
layout(std430, binding = 0) readonly buffer BQ { vec4 Q4[]; };
layout(std430, binding = 1) readonly buffer BK { vec4 KV[]; };
layout(std430, binding = 2) readonly buffer BR { vec4 RING[]; };
layout(std430, binding = 3) readonly buffer BC { vec4 CMP[]; };
layout(std430, binding = 4) readonly buffer BI { int IDX[]; };
layout(std430, binding = 5) readonly buffer BSK { float SINK[]; };
layout(std430, binding = 6) writeonly buffer BO { vec4 O4[]; };
layout(std430, binding = 7) readonly buffer BB { vec4 BASE[]; };
/* pc_attn of engine/forward.c; ld_sc is not used here */
layout(push_constant) uniform P {
    uint D, H, win, t0, p0, ratio, mode, topk, ld_i;
    float scale;
    uint n_tok, ld_sc, base_rows;
} p;

shared uvec2 Qs[HG * D4MAX];
/* key row j, float4 column c4 at j * D4MAX + (c4 ^ (j & 15)): the 16 rows
   that a warp's score invocations read together fall in different banks */
shared uvec2 Ks[KT * D4MAX];
shared uint srcs[KT];
shared float Ps[HG * KT]; /* bf16(exp(s - max)) of (head, key) of the tile; also the per-invocation maxima and sums */
shared float Ms[HG];      /* each head's maximum, then its denominator */

/* key j of this token: source (0 chunk, 1 ring, 2 compressed) and row, as attn.comp */
uint key_of(uint j, uint pos, uint nw, uint tl)
{
    if (j < p.win) {
        if (j >= nw) return NOKEY; /* window slots not yet filled */
        uint kp = pos + 1u - nw + j;
        if (kp >= p.p0) return (0u << 30) | (p.t0 + kp - p.p0);
        return (1u << 30) | (kp % p.win);
    }
    j -= p.win;
    if (p.mode == 1u) return (2u << 30) | j;
    int e = IDX[tl * p.ld_i + j];
    return e < 0 ? NOKEY : ((2u << 30) | uint(e));
}

uvec2 pack4(vec4 v) /* v holds bf16 values: exact */
{
    uvec4 u = floatBitsToUint(v);
    return uvec2((u.x >> 16) | (u.y & 0xffff0000u), (u.z >> 16) | (u.w & 0xffff0000u));
}

vec4 unpack4(uvec2 w)
{
    return uintBitsToFloat(uvec4(w.x << 16, w.x & 0xffff0000u, w.y << 16, w.y & 0xffff0000u));
}

/* LB float4s c0 + i * TPR of a row starting at float4 b, the buffer chosen once */
#define LOAD_ROW(BUF, b)                                         \
    [[unroll]] for (uint i = 0u; i < LB; i++) {                  \
        uint c4 = c0 + i * TPR;                                  \
        v[i] = c4 < D4 ? BUF[(b) + c4] : vec4(0.0);              \
    }

/* The compressed row r's part: below base_rows in the shared base buffer.
   The only reader of compressed rows. */
void cmp_row(uint r, uint c0, uint D4, out vec4 v[LB])
{
    if (r < p.base_rows) { LOAD_ROW(BASE, r * D4) }
    else { LOAD_ROW(CMP, (r - p.base_rows) * D4) }
}

/* Stages keys b0 .. b0 + KT - 1 (masked or past the list: zero rows, NOKEY):
   TPR invocations per row, LB float4s each at a time. */
void stage(uint b0, uint nk, uint pos, uint nw, uint tl, uint D4)
{
    uint t = gl_LocalInvocationID.x, j = t / TPR, cj = t - j * TPR;
    uint key = b0 + j < nk ? key_of(b0 + j, pos, nw, tl) : NOKEY, kind = key >> 30, r = key & 0x3fffffffu;
    barrier(); /* the previous tile is no longer read */
    if (cj == 0u) srcs[j] = key;
    for (uint c0 = cj; c0 < D4; c0 += LB * TPR) {
        vec4 v[LB];
        if (key == NOKEY) { [[unroll]] for (uint i = 0u; i < LB; i++) v[i] = vec4(0.0); }
        else if (kind == 0u) { LOAD_ROW(KV, r * D4) }
        else if (kind == 1u) { LOAD_ROW(RING, r * D4) }
        else cmp_row(r, c0, D4, v);
        [[unroll]] for (uint i = 0u; i < LB; i++) {
            uint c4 = c0 + i * TPR;
            if (c4 < D4) Ks[j * D4MAX + (c4 ^ (j & 15u))] = pack4(v[i]);
        }
    }
    barrier();
}

/* q_h . k_j: two float4 accumulators (even and odd float4 columns), eight
   independent chains, summed at the end */
float score(uint h, uint j, uint D4)
{
    vec4 a0 = vec4(0.0), a1 = vec4(0.0);
    for (uint c4 = 0u; c4 < D4; c4 += 2u) {
        a0 += unpack4(Qs[h * D4MAX + c4]) * unpack4(Ks[j * D4MAX + (c4 ^ (j & 15u))]);
        a1 += unpack4(Qs[h * D4MAX + c4 + 1u]) * unpack4(Ks[j * D4MAX + ((c4 + 1u) ^ (j & 15u))]);
    }
    vec4 a = a0 + a1;
    return (a.x + a.y) + (a.z + a.w);
}

void main()
{
    uint tl = gl_WorkGroupID.x, h0 = gl_WorkGroupID.y * HG, t = gl_LocalInvocationID.x;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D4 = p.D / 4u;
    for (uint i = t; i < HG * D4; i += NT) {
        uint hh = i / D4, c4 = i - hh * D4;
        Qs[hh * D4MAX + c4] = pack4(h0 + hh < p.H ? Q4[(tok * p.H + h0 + hh) * D4 + c4] : vec4(0.0));
    }
    uint nw = min(p.win, pos + 1u);
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    uint nk = p.win + nc; /* the window takes win slots, as the official key list */
    uint sh = t / KT, sj = t % KT;

    /* pass 1: each head's maximum score over every key */
    float mloc = -1.0 / 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        float d = score(sh, sj, D4);
        if (srcs[sj] != NOKEY) mloc = max(mloc, d * p.scale);
    }
    Ps[t] = mloc;
    barrier();
    if (sj == 0u) {
        float m = Ps[t];
        for (uint j = 1u; j < KT; j++) m = max(m, Ps[t + j]);
        /* no key at all: only the sink (ref_sparse_attn) */
        Ms[sh] = m == -1.0 / 0.0 && h0 + sh < p.H ? SINK[h0 + sh] : m;
    }
    barrier();
    float m = Ms[sh];

    /* pass 2: probabilities, each invocation's part of its head's
       denominator, and the value sum (float4 column t of every head) */
    vec4 acc[HG];
    [[unroll]] for (uint hh = 0u; hh < HG; hh++) acc[hh] = vec4(0.0);
    float l = 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        float d = score(sh, sj, D4);
        float e = srcs[sj] != NOKEY ? exp(d * p.scale - m) : 0.0;
        l += e;
        Ps[sh * KT + sj] = bf16r(e); /* stage's first barrier: the previous tile's are read */
        barrier();
        if (t < D4)
            for (uint j = 0u; j < KT; j++) {
                vec4 k = unpack4(Ks[j * D4MAX + (t ^ (j & 15u))]);
                [[unroll]] for (uint hh = 0u; hh < HG; hh++) acc[hh] += Ps[hh * KT + j] * k;
            }
    }
    barrier(); /* Ps and Ms are rewritten: every invocation has read its maximum and the last tile */
    Ps[t] = l;
    barrier();
    if (sj == 0u && h0 + sh < p.H) {
        float den = exp(SINK[h0 + sh] - m);
        for (uint j = 0u; j < KT; j++) den += Ps[t + j];
        Ms[sh] = den;
    }
    barrier();
    if (t < D4)
        for (uint hh = 0u; hh < HG; hh++) {
            if (h0 + hh >= p.H) break;
            vec4 a = acc[hh] * (1.0 / Ms[hh]);
            O4[(tok * p.H + h0 + hh) * D4 + t] = vec4(bf16r(a.x), bf16r(a.y), bf16r(a.z), bf16r(a.w));
        }
}
