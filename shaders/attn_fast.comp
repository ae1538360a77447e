/* attn_fast: the sparse attention of attn_tile.comp (same key list, the
 * maximum over all keys first, probabilities exp(s - max) rounded to bf16 for
 * the value sum, their f32 sum plus the per-head sink as the denominator,
 * output rounded to bf16) without its index-order sums, for GPU prefill when
 * the engine is not in exact mode (engine/forward.c attn_variant).
 *
 * Why a second kernel: attn_tile adds every score as one chain of D
 * dependent multiply-adds in index order (so that every attention variant
 * gives the same bits); a GPU then waits on the latency of each add. Here each
 * score is eight partial sums (two float4 accumulators over alternate float4
 * columns) combined at the end, and the exponentials use the native exp():
 * a different rounding, so its results agree with the reference within a
 * tolerance (tests/test_vk_ops.c), not bit for bit. It is also the portable
 * twin of attn_cm.comp (the tensor-core form, same structure and bindings),
 * the one that runs where cooperative matrices are missing.
 *
 * Threads: NT = 64, one token and HG = 8 heads per workgroup, key tiles of
 * KT = 16 staged in shared memory as exact bf16 pairs (queries and keys are
 * bf16 values: headprep rounds them), as attn_tile: 24 KiB at DMAX = 512.
 * For scores thread t owns head t / 8 and keys t % 8 and t % 8 + 8 of the
 * tile; for the value sum float4 columns t, t + 64 of all 8 heads. Two passes
 * over the keys: the maxima, then the probabilities and the value sum (the
 * scores are computed again). head_dim must be a multiple of 8 and at most
 * DMAX.
 *
 * Compressed rows may live in two buffers (forks share their parent's
 * prefix): rows r < base_rows in BASE (binding 7, the last), the others in
 * CMP at r - base_rows; cmp_row4 is the only reader. */
#version 450
#include "common.glsl"
#ifndef DMAX
#define DMAX 512
#endif
#define HG 8
#define KT 16
#define NT 64u
#define KPT 2                /* keys per thread in the score passes */
#define KS (KT / KPT)        /* the stride between a thread's keys */
#define D4MAX (DMAX / 4)
#define NC4 ((D4MAX + NT - 1) / NT)
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
/* key row j, float4 column c4 at j * D4MAX + (c4 ^ (j & 7)): the rows that a
   warp's score threads read together fall in different banks */
shared uvec2 Ks[KT * D4MAX];
shared uint srcs[KT];
shared float Ps[HG * KT]; /* bf16(exp(s - max)) of (head, key) of the tile; pass 1: maxima */
shared float Ms[HG];      /* each head's maximum, then its denominator */

/* float4 c4 of compressed row r: below base_rows in the shared base buffer */
vec4 cmp_row4(uint r, uint c4)
{
    uint d4 = p.D / 4u;
    return r < p.base_rows ? BASE[r * d4 + c4] : CMP[(r - p.base_rows) * d4 + c4];
}

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

vec4 key4(uint key, uint c4)
{
    uint kind = key >> 30, r = key & 0x3fffffffu;
    if (kind == 0u) return KV[r * (p.D / 4u) + c4];
    if (kind == 1u) return RING[r * (p.D / 4u) + c4];
    return cmp_row4(r, c4);
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

/* Stages keys b0 .. b0 + KT - 1 (masked or past the list: zero rows, NOKEY). */
void stage(uint b0, uint nk, uint pos, uint nw, uint tl, uint D4)
{
    uint t = gl_LocalInvocationID.x;
    barrier(); /* the previous tile is no longer read */
    if (t < KT) srcs[t] = b0 + t < nk ? key_of(b0 + t, pos, nw, tl) : NOKEY;
    barrier();
    for (uint i = t; i < KT * D4; i += NT) {
        uint j = i / D4, c4 = i - j * D4, key = srcs[j];
        Ks[j * D4MAX + (c4 ^ (j & 7u))] = pack4(key == NOKEY ? vec4(0.0) : key4(key, c4));
    }
    barrier();
}

/* q_h . k_j for the thread's keys j and j + KS: two float4 accumulators per
   key (even and odd float4 columns), eight independent chains, summed at the end */
void score(uint h, uint j, uint D4, out float d[KPT])
{
    vec4 a0[KPT], a1[KPT];
    for (uint u = 0u; u < KPT; u++) { a0[u] = vec4(0.0); a1[u] = vec4(0.0); }
    for (uint c4 = 0u; c4 < D4; c4 += 2u) {
        vec4 q0 = unpack4(Qs[h * D4MAX + c4]), q1 = unpack4(Qs[h * D4MAX + c4 + 1u]);
        for (uint u = 0u; u < KPT; u++) {
            uint r = (j + u * KS) * D4MAX; /* KS is a multiple of 8: the same XOR for every u */
            a0[u] += q0 * unpack4(Ks[r + (c4 ^ (j & 7u))]);
            a1[u] += q1 * unpack4(Ks[r + ((c4 + 1u) ^ (j & 7u))]);
        }
    }
    for (uint u = 0u; u < KPT; u++) {
        vec4 a = a0[u] + a1[u];
        d[u] = (a.x + a.y) + (a.z + a.w);
    }
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
    uint sh = t / KS, sj = t - sh * KS;
    float d[KPT];

    /* pass 1: each head's maximum score over every key */
    float mloc = -1.0 / 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        score(sh, sj, D4, d);
        for (uint u = 0u; u < KPT; u++)
            if (srcs[sj + u * KS] != NOKEY) mloc = max(mloc, d[u] * p.scale);
    }
    Ps[t] = mloc;
    barrier();
    if (sj == 0u) {
        float m = Ps[t];
        for (uint j = 1u; j < KS; j++) m = max(m, Ps[t + j]);
        /* no key at all: only the sink (ref_sparse_attn) */
        Ms[sh] = m == -1.0 / 0.0 && h0 + sh < p.H ? SINK[h0 + sh] : m;
    }
    barrier();
    float m = Ms[sh];

    /* pass 2: probabilities, each thread's part of its head's denominator,
       and the value sum */
    vec4 acc[HG * NC4];
    for (uint i = 0u; i < HG * NC4; i++) acc[i] = vec4(0.0);
    float l = 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        score(sh, sj, D4, d);
        for (uint u = 0u; u < KPT; u++) {
            uint j = sj + u * KS;
            float e = srcs[j] != NOKEY ? exp(d[u] * p.scale - m) : 0.0;
            l += e;
            Ps[sh * KT + j] = bf16r(e);
        }
        barrier();
        for (uint j = 0u; j < KT; j++) {
            if (srcs[j] == NOKEY) continue;
            for (uint i = 0u; i < NC4; i++) {
                uint c4 = t + i * NT;
                if (c4 < D4) {
                    vec4 k = unpack4(Ks[j * D4MAX + (c4 ^ (j & 7u))]);
                    for (uint hh = 0u; hh < HG; hh++) acc[hh * NC4 + i] += Ps[hh * KT + j] * k;
                }
            }
        }
    }
    barrier(); /* Ps and Ms are rewritten: every thread has read its maximum and the last tile */
    Ps[t] = l;
    barrier();
    if (sj == 0u && h0 + sh < p.H) {
        float den = exp(SINK[h0 + sh] - m);
        for (uint j = 0u; j < KS; j++) den += Ps[t + j];
        Ms[sh] = den;
    }
    barrier();
    for (uint hh = 0u; hh < HG; hh++) {
        if (h0 + hh >= p.H) break;
        float inv = 1.0 / Ms[hh];
        for (uint i = 0u; i < NC4; i++) {
            uint c4 = t + i * NT;
            if (c4 >= D4) break;
            vec4 a = acc[hh * NC4 + i] * inv;
            O4[(tok * p.H + h0 + hh) * D4 + c4] = vec4(bf16r(a.x), bf16r(a.y), bf16r(a.z), bf16r(a.w));
        }
    }
}
