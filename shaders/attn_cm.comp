/* attn_cm: attn_fast.comp's attention (same key list, the maximum over all
 * keys first, probabilities exp(s - max) rounded to bf16 for the value sum,
 * their f32 sum plus the per-head sink as the denominator, output rounded to
 * bf16) with both matrix products of a token on tensor cores
 * (GL_KHR_cooperative_matrix, 16x16x16, fp16 inputs, fp32 accumulators):
 * scores S = Q K^T (HG = 16 heads x KT = 16 keys per tile, over head_dim)
 * and the output O += P V (16 heads x head_dim, over the tile's keys; V4 is
 * multi-query and every key row is also its value row). For GPU prefill when
 * the engine is not in exact mode; attn_fast.comp is the portable twin
 * (lavapipe has no cooperative matrices), vk.c creates this one only on
 * devices that have them.
 *
 * Why fp16 is enough: queries, keys and the probabilities are bf16 values
 * (headprep rounds them), exact in fp16 within its normal range [2^-14,
 * 65504]; smaller ones round (their products are below 2^-14 of the
 * largest terms). Products of fp16 values are exact in fp32 and the sums run
 * in fp32, in the tensor cores' order: the results agree with the reference
 * within a tolerance (tests/test_vk_ops.c), not bit for bit.
 *
 * Workgroup: 128 invocations (4 subgroups of 32), one token and 16 heads.
 * Queries are staged once as fp16 and kept in registers as A fragments, each
 * subgroup holding a quarter of head_dim: a tile's scores are four partial
 * products (one per subgroup) added in shared memory. Per tile of 16 keys
 * the rows are staged as fp16 (16.3 KiB at DMAX = 512); pass 1 finds each
 * head's maximum, pass 2 computes the scores again, the probabilities (one
 * 16 x 16 fp16 tile in shared memory) and the value product, each subgroup
 * owning a quarter of the output columns as accumulators. Shared memory:
 * about 38 KiB at DMAX = 512. head_dim must be a multiple of 64 and at most
 * DMAX (engine/forward.c attn_variant checks).
 *
 * Compressed rows may live in two buffers (forks share their parent's
 * prefix): rows r < base_rows in BASE (binding 7, the last), the others in
 * CMP at r - base_rows; cmp_row4 is the only reader. */
#version 450
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"
#ifndef DMAX
#define DMAX 512
#endif
#define HG 16
#define KT 16
#define NT 128u
#define NSG 4u
#define LDK (DMAX + 8)       /* fp16 row stride of staged rows (16 bytes of padding: fewer bank conflicts) */
#define NF (DMAX / 64)       /* fragments per subgroup: score slices of head_dim, output column blocks */
#define NOKEY 0xffffffffu
layout(local_size_x = NT) in;
layout(std430, binding = 0) readonly buffer BQ { vec4 Q4[]; };
layout(std430, binding = 1) readonly buffer BK { vec4 KV[]; };
layout(std430, binding = 2) readonly buffer BR { vec4 RING[]; };
layout(std430, binding = 3) readonly buffer BC { vec4 CMP[]; };
layout(std430, binding = 4) readonly buffer BI { int IDX[]; };
layout(std430, binding = 5) readonly buffer BSK { float SINK[]; };
layout(std430, binding = 6) writeonly buffer BO { float O[]; };
layout(std430, binding = 7) readonly buffer BB { vec4 BASE[]; };
/* pc_attn of engine/forward.c; ld_sc is not used here */
layout(push_constant) uniform P {
    uint D, H, win, t0, p0, ratio, mode, topk, ld_i;
    float scale;
    uint n_tok, ld_sc, base_rows;
} p;

shared float16_t Qs[HG * LDK];
shared float16_t Ks[KT * LDK];
shared float Sp[NSG * HG * KT]; /* per subgroup: its partial scores, at the end its output fragment */
shared float16_t Pp[HG * KT];   /* bf16(exp(s - max)) of the tile */
shared uint srcs[KT];
shared float Red[NT];
shared float Ms[HG];            /* each head's maximum */
shared float Dn[HG];            /* each head's denominator */

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

/* Stages keys b0 .. b0 + KT - 1 as fp16 rows (masked or past the list: zero rows, NOKEY). */
void stage(uint b0, uint nk, uint pos, uint nw, uint tl, uint D4)
{
    uint t = gl_LocalInvocationID.x;
    barrier(); /* the previous tile is no longer read */
    if (t < KT) srcs[t] = b0 + t < nk ? key_of(b0 + t, pos, nw, tl) : NOKEY;
    barrier();
    for (uint i = t; i < KT * D4; i += NT) {
        uint j = i / D4, c4 = i - j * D4, key = srcs[j];
        vec4 v = key == NOKEY ? vec4(0.0) : key4(key, c4);
        uint o = j * LDK + c4 * 4u;
        Ks[o] = float16_t(v.x); Ks[o + 1u] = float16_t(v.y); Ks[o + 2u] = float16_t(v.z); Ks[o + 3u] = float16_t(v.w);
    }
    barrier();
}

void main()
{
    uint tl = gl_WorkGroupID.x, h0 = gl_WorkGroupID.y * HG, t = gl_LocalInvocationID.x, sg = gl_SubgroupID;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D4 = p.D / 4u, nf = p.D / 64u;
    for (uint i = t; i < HG * D4; i += NT) {
        uint hh = i / D4, c4 = i - hh * D4;
        vec4 v = h0 + hh < p.H ? Q4[(tok * p.H + h0 + hh) * D4 + c4] : vec4(0.0);
        uint o = hh * LDK + c4 * 4u;
        Qs[o] = float16_t(v.x); Qs[o + 1u] = float16_t(v.y); Qs[o + 2u] = float16_t(v.z); Qs[o + 3u] = float16_t(v.w);
    }
    barrier();
    /* this subgroup's slices of head_dim: sg * nf .. sg * nf + nf - 1 (16 wide) */
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> qf[NF];
    [[unroll]] for (uint i = 0u; i < NF; i++)
        if (i < nf) coopMatLoad(qf[i], Qs, (sg * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutRowMajor);

    uint nw = min(p.win, pos + 1u);
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    uint nk = p.win + nc; /* the window takes win slots, as the official key list */
    /* the two (head, key) entries of a tile this invocation finishes: head t / 8, keys 2 (t % 8) + 0, 1 */
    uint eh = t >> 3u, ej = (t & 7u) * 2u;

    /* pass 1: each head's maximum score over every key */
    float mloc = -1.0 / 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> s =
            coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
        [[unroll]] for (uint i = 0u; i < NF; i++) {
            if (i >= nf) break;
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> kb;
            coopMatLoad(kb, Ks, (sg * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutColumnMajor);
            s = coopMatMulAdd(qf[i], kb, s);
        }
        coopMatStore(s, Sp, sg * (HG * KT), KT, gl_CooperativeMatrixLayoutRowMajor);
        barrier();
        for (uint u = 0u; u < 2u; u++) {
            uint e = eh * KT + ej + u;
            float d = (Sp[e] + Sp[HG * KT + e]) + (Sp[2u * HG * KT + e] + Sp[3u * HG * KT + e]);
            if (srcs[ej + u] != NOKEY) mloc = max(mloc, d * p.scale);
        }
    }
    Red[t] = mloc;
    barrier();
    if (t < HG) {
        float m = Red[t * 8u];
        for (uint j = 1u; j < 8u; j++) m = max(m, Red[t * 8u + j]);
        /* no key at all: only the sink (ref_sparse_attn) */
        Ms[t] = m == -1.0 / 0.0 && h0 + t < p.H ? SINK[h0 + t] : m;
    }
    barrier();
    float m = Ms[eh];

    /* pass 2: probabilities, each invocation's part of the denominator, the value product */
    coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> oacc[NF];
    [[unroll]] for (uint i = 0u; i < NF; i++)
        oacc[i] = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
    float l = 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> s =
            coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
        [[unroll]] for (uint i = 0u; i < NF; i++) {
            if (i >= nf) break;
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> kb;
            coopMatLoad(kb, Ks, (sg * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutColumnMajor);
            s = coopMatMulAdd(qf[i], kb, s);
        }
        coopMatStore(s, Sp, sg * (HG * KT), KT, gl_CooperativeMatrixLayoutRowMajor);
        barrier();
        for (uint u = 0u; u < 2u; u++) {
            uint e = eh * KT + ej + u;
            float d = (Sp[e] + Sp[HG * KT + e]) + (Sp[2u * HG * KT + e] + Sp[3u * HG * KT + e]);
            float x = srcs[ej + u] != NOKEY ? exp(d * p.scale - m) : 0.0;
            l += x;
            Pp[e] = float16_t(bf16r(x));
        }
        barrier();
        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> pa;
        coopMatLoad(pa, Pp, 0u, KT, gl_CooperativeMatrixLayoutRowMajor);
        [[unroll]] for (uint i = 0u; i < NF; i++) {
            if (i >= nf) break;
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> vb;
            coopMatLoad(vb, Ks, (sg * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutRowMajor);
            oacc[i] = coopMatMulAdd(pa, vb, oacc[i]);
        }
    }
    Red[t] = l;
    barrier();
    if (t < HG) {
        float den = h0 + t < p.H ? exp(SINK[h0 + t] - Ms[t]) : 1.0;
        for (uint j = 0u; j < 8u; j++) den += Red[t * 8u + j];
        Dn[t] = den;
    }
    barrier(); /* also: every subgroup is done with Sp (its last scores) */
    /* each output fragment through this subgroup's part of Sp: divide, round, write */
    uint lane = gl_SubgroupInvocationID, so = sg * (HG * KT);
    [[unroll]] for (uint i = 0u; i < NF; i++) {
        if (i >= nf) break;
        coopMatStore(oacc[i], Sp, so, KT, gl_CooperativeMatrixLayoutRowMajor);
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        for (uint e = lane; e < HG * KT; e += 32u) {
            uint hh = e / KT, c = (sg * nf + i) * 16u + (e % KT);
            if (h0 + hh < p.H) O[(tok * p.H + h0 + hh) * p.D + c] = bf16r(Sp[so + e] / Dn[hh]);
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();
    }
}
