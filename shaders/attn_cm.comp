/* attn_cm: attn_fast.comp's attention (same key list, the maximum over all
 * keys first, probabilities exp(s - max) rounded to bf16 for the value sum,
 * their f32 sum plus the per-head sink as the denominator, output rounded to
 * bf16) with both matrix products of a token on tensor cores
 * (GL_KHR_cooperative_matrix, 16x16x16, fp16 inputs, fp32 accumulators):
 * scores S = Q K^T (HG heads x KT = 16 keys per tile, over head_dim) and the
 * output O += P V (HG heads x head_dim, over the tile's keys; V4 is
 * multi-query and every key row is also its value row). For GPU prefill
 * outside exact mode; attn_fast.comp is the portable twin (lavapipe has no
 * cooperative matrices), vk.c creates this one only on devices that have
 * them.
 *
 * Why fp16 is enough: queries, keys and the probabilities are bf16 values
 * (headprep rounds them), exact in fp16 within its normal range [2^-14,
 * 65504]; smaller ones round (their products are below 2^-14 of the
 * largest terms). Products of fp16 values are exact in fp32 and the sums run
 * in fp32, in the tensor cores' order: the results agree with the reference
 * within a tolerance (tests/test_vk_ops.c), not bit for bit.
 *
 * Workgroup: one token and HG = 16, 32 or 64 heads (the engine takes the
 * one that covers the model's heads with the fewest workgroups: V4's 64
 * heads in one, so each key tile is staged once per token), HG / 4 subgroups
 * of 32: subgroup s owns heads 16 (s / 4) .. + 15 and quarter s % 4 of
 * head_dim. The queries pass through the key-tile buffer 16 rows at a time
 * into registers (A fragments of the subgroup's heads and quarter); a tile's
 * scores are four partial products, added in shared memory. Per tile of 16
 * keys each row is loaded by NT / 16 invocations, LPT float4s each at once
 * from the one buffer that holds it, and staged as fp16 (16.3 KiB at DMAX =
 * 512). Pass 1 finds each head's maximum; pass 2 computes the scores again,
 * the probabilities (an HG x 16 fp16 tile) and the value product, each
 * subgroup accumulating its heads x its quarter of the columns. Shared
 * memory: 21 / 27 / 37 KiB for HG = 16 / 32 / 64. head_dim must be a
 * multiple of 64 and at most DMAX (engine/forward.c attn_variant checks).
 *
 * Compressed rows may live in two buffers (forks share their parent's
 * prefix): rows r < base_rows in BASE (binding 7, the last), the others in
 * CMP at r - base_rows; cmp_row is the only reader. */
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
#ifndef HG
#define HG 16                /* heads per workgroup: 16, 32 or 64 */
#endif
#define KT 16
#define NSG (HG / 4)         /* subgroups: 4 per block of 16 heads, each a quarter of head_dim */
#define NT (32 * NSG)
#define TPR (NT / KT)        /* invocations per staged row */
#define LPT (DMAX / 4 / TPR) /* float4s each of them loads (at most) */
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

shared float16_t Ks[KT * LDK];  /* the staged rows (at the start: 16 query rows at a time) */
shared float Sp[NSG * 16 * KT]; /* per subgroup: its partial scores, at the end its output fragment */
shared float16_t Pp[HG * KT];   /* bf16(exp(s - max)) of the tile */
shared uint srcs[KT];
shared float Red[NT];
shared float Ms[HG];            /* each head's maximum */
shared float Dn[HG];            /* each head's denominator */

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

/* LPT float4s of one row, the buffer chosen once so that the loads issue together */
#define LOAD_ROW(BUF, b)                                         \
    [[unroll]] for (uint i = 0u; i < LPT; i++) {                 \
        uint c4 = c0 + i * TPR;                                  \
        v[i] = c4 < D4 ? BUF[(b) + c4] : vec4(0.0);              \
    }

/* The compressed row r's part: below base_rows in the shared base buffer.
   The only reader of compressed rows. */
void cmp_row(uint r, uint c0, uint D4, out vec4 v[LPT])
{
    if (r < p.base_rows) { LOAD_ROW(BASE, r * D4) }
    else { LOAD_ROW(CMP, (r - p.base_rows) * D4) }
}

void put_row(uint j, uint c0, uint D4, vec4 v[LPT])
{
    [[unroll]] for (uint i = 0u; i < LPT; i++) {
        uint c4 = c0 + i * TPR, o = j * LDK + c4 * 4u;
        if (c4 < D4) {
            Ks[o] = float16_t(v[i].x); Ks[o + 1u] = float16_t(v[i].y);
            Ks[o + 2u] = float16_t(v[i].z); Ks[o + 3u] = float16_t(v[i].w);
        }
    }
}

/* Stages keys b0 .. b0 + KT - 1 as fp16 rows (masked or past the list: zero
   rows, NOKEY): TPR invocations per row, each LPT float4s. */
void stage(uint b0, uint nk, uint pos, uint nw, uint tl, uint D4)
{
    uint t = gl_LocalInvocationID.x, j = t / TPR, c0 = t - j * TPR;
    uint key = b0 + j < nk ? key_of(b0 + j, pos, nw, tl) : NOKEY, kind = key >> 30, r = key & 0x3fffffffu;
    vec4 v[LPT];
    if (key == NOKEY) { [[unroll]] for (uint i = 0u; i < LPT; i++) v[i] = vec4(0.0); }
    else if (kind == 0u) { LOAD_ROW(KV, r * D4) }
    else if (kind == 1u) { LOAD_ROW(RING, r * D4) }
    else cmp_row(r, c0, D4, v);
    barrier(); /* the previous tile is no longer read */
    if (c0 == 0u) srcs[j] = key;
    put_row(j, c0, D4, v);
    barrier();
}

void main()
{
    uint tl = gl_WorkGroupID.x, h0 = gl_WorkGroupID.y * HG, t = gl_LocalInvocationID.x, sg = gl_SubgroupID;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D4 = p.D / 4u, nf = p.D / 64u;
    uint hb = sg / 4u, qd = sg % 4u; /* this subgroup's block of 16 heads and quarter of head_dim */
    /* the queries, 16 heads at a time through Ks, into registers: this
       subgroup's slices qd * nf .. qd * nf + nf - 1 (16 wide) of its heads */
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> qf[NF];
    for (uint b = 0u; b < HG / 16; b++) {
        uint j = t / TPR, c0 = t - j * TPR, h = h0 + b * 16u + j;
        vec4 v[LPT];
        if (h < p.H) { LOAD_ROW(Q4, (tok * p.H + h) * D4) }
        else { [[unroll]] for (uint i = 0u; i < LPT; i++) v[i] = vec4(0.0); }
        barrier();
        put_row(j, c0, D4, v);
        barrier();
        if (hb == b)
            [[unroll]] for (uint i = 0u; i < NF; i++)
                if (i < nf) coopMatLoad(qf[i], Ks, (qd * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutRowMajor);
    }

    uint nw = min(p.win, pos + 1u);
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    uint nk = p.win + nc; /* the window takes win slots, as the official key list */
    /* the two (head, key) entries of a tile this invocation finishes: head t / 8, keys 2 (t % 8) + 0, 1;
       their partial scores at sb + 16 KT q, q < 4 */
    uint eh = t >> 3u, ej = (t & 7u) * 2u, sb = (eh >> 4u) * (4u * 16u * KT) + (eh & 15u) * KT + ej;

    /* pass 1: each head's maximum score over every key */
    float mloc = -1.0 / 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> s =
            coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
        [[unroll]] for (uint i = 0u; i < NF; i++) {
            if (i >= nf) break;
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> kb;
            coopMatLoad(kb, Ks, (qd * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutColumnMajor);
            s = coopMatMulAdd(qf[i], kb, s);
        }
        coopMatStore(s, Sp, sg * (16u * KT), KT, gl_CooperativeMatrixLayoutRowMajor);
        barrier();
        for (uint u = 0u; u < 2u; u++) {
            uint e = sb + u;
            float d = (Sp[e] + Sp[e + 16u * KT]) + (Sp[e + 32u * KT] + Sp[e + 48u * KT]);
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
            coopMatLoad(kb, Ks, (qd * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutColumnMajor);
            s = coopMatMulAdd(qf[i], kb, s);
        }
        coopMatStore(s, Sp, sg * (16u * KT), KT, gl_CooperativeMatrixLayoutRowMajor);
        barrier();
        for (uint u = 0u; u < 2u; u++) {
            uint e = sb + u;
            float d = (Sp[e] + Sp[e + 16u * KT]) + (Sp[e + 32u * KT] + Sp[e + 48u * KT]);
            float x = srcs[ej + u] != NOKEY ? exp(d * p.scale - m) : 0.0;
            l += x;
            Pp[eh * KT + ej + u] = float16_t(bf16r(x));
        }
        barrier();
        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> pa;
        coopMatLoad(pa, Pp, hb * (16u * KT), KT, gl_CooperativeMatrixLayoutRowMajor);
        [[unroll]] for (uint i = 0u; i < NF; i++) {
            if (i >= nf) break;
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> vb;
            coopMatLoad(vb, Ks, (qd * nf + i) * 16u, LDK, gl_CooperativeMatrixLayoutRowMajor);
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
    uint lane = gl_SubgroupInvocationID, so = sg * (16u * KT);
    [[unroll]] for (uint i = 0u; i < NF; i++) {
        if (i >= nf) break;
        coopMatStore(oacc[i], Sp, so, KT, gl_CooperativeMatrixLayoutRowMajor);
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        for (uint e = lane; e < 16u * KT; e += 32u) {
            uint hh = hb * 16u + e / KT, c = (qd * nf + i) * 16u + (e % KT);
            if (h0 + hh < p.H) O[(tok * p.H + h0 + hh) * p.D + c] = bf16r(Sp[so + e] / Dn[hh]);
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();
    }
}
