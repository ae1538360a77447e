/* gemm: Y[m][y_off + n] = sum_k X[m][x_off + k] * W[w_row0 + n][k] for a
 * linear layer y = x W^T, with W kept in its stored format and decoded here:
 * WT_BF16, WT_F32, WT_FP8 (e4m3 + ue8m0 per 128x128 block) or WT_FP4 (e2m1
 * pairs, low nibble first, + ue8m0 per 32 inputs). The activations are f32
 * holding what the official code holds (bf16 values, or FP8-quantized values
 * times their scale: act_quant runs before this shader for FP8/FP4 weights,
 * as linear() in model.py does). Accumulation in f32 as the official kernels.
 * GROUPED: rows come in expert tiles from the route buffer written by
 * moe_group.comp (MoE tokens grouped by expert): tile = (expert, m0, m1);
 * GATHER additionally reads X row rowmap[m] (the token of sorted slot m).
 * Tiled: a 64x64 output tile per workgroup (32x64 GROUPED), 256 threads with
 * 4x4 (2x4) outputs each; the SMALL variant (few rows: decode) streams the
 * weights once per 16 rows and the SERIAL variant (every GEMM on a CPU driver)
 * gives each invocation one output column, see below. gemm_cm.comp is the
 * tensor-core twin of the tiled variant. */
#version 450
#extension GL_EXT_control_flow_attributes : require
#if defined(SMALL) || defined(SMALL2)
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#include "common.glsl"
#if defined(SERIAL)
layout(local_size_x = 64) in;
#elif defined(SMALL) || defined(SMALL2)
layout(local_size_x = 256) in;
#else
layout(local_size_x = 16, local_size_y = 16) in;
#endif
#if defined(SMALL) || defined(SMALL2)
layout(std430, binding = 0) readonly buffer BX { vec4 X4[]; };
#else
layout(std430, binding = 0) readonly buffer BX { float X[]; };
#endif
layout(std430, binding = 1) readonly buffer BW { uint W[]; };
#if defined(SMALL) || defined(SMALL2)
layout(std430, binding = 1) readonly buffer BW4 { uvec4 W4[]; };  /* the same bytes, 16 at a time */
#endif
layout(std430, binding = 2) readonly buffer BS { uint S[]; };
layout(std430, binding = 3) buffer BY { float Y[]; };
layout(std430, binding = 4) readonly buffer BR { uint R[]; };
layout(push_constant) uniform P {
    uint M, N, K, ldx, ldy, x_off, y_off, w_row0;
    uint flags;      /* 1: round output to bf16; 2: add into Y */
    uint s_cols;     /* scale columns per row block (FP8: ceil(K/128), FP4: K/32) */
    uint w_estride;  /* GROUPED: bytes between experts' weights */
    uint s_estride;  /* GROUPED: bytes between experts' scales */
    uint e0, e1;     /* GROUPED: experts held by this binding */
    uint tiles_off, rowmap_off;
} p;

#if !defined(SMALL) && !defined(SMALL2) && !defined(SERIAL)
#ifdef GROUPED
#define TBM 32u
#else
#define TBM 64u
#endif
#define TM (TBM / 16u)
shared float As[16][TBM + 4u];
shared float Ws[16][68];
#endif

uint byte_at(uint byte_off) { return (W[byte_off >> 2] >> ((byte_off & 3u) * 8u)) & 0xffu; }
uint sbyte_at(uint byte_off) { return (S[byte_off >> 2] >> ((byte_off & 3u) * 8u)) & 0xffu; }

float wval(uint n, uint k, uint wbase, uint sbase)
{
#if defined(WT_F32)
    return uintBitsToFloat(W[(wbase >> 2) + n * p.K + k]);
#elif defined(WT_BF16)
    uint e = (wbase >> 1) + n * p.K + k;
    return bf16_at(W[e >> 1], e & 1u);
#elif defined(WT_FP8)
    float s = e8m0_decode(sbyte_at(sbase + (n >> 7) * p.s_cols + (k >> 7)));
    return e4m3_decode(byte_at(wbase + n * p.K + k)) * s;
#elif defined(WT_FP4)
    uint b = byte_at(wbase + n * (p.K >> 1) + (k >> 1));
    float s = e8m0_decode(sbyte_at(sbase + n * p.s_cols + (k >> 5)));
    return e2m1_decode((k & 1u) != 0u ? (b >> 4) : (b & 15u)) * s;
#endif
}

#if defined(SERIAL)
/* SERIAL: one output column per invocation, up to 8 rows at a time, no shared
 * memory and no barriers: what a CPU driver (lavapipe) runs fastest; the
 * engine uses it there for every GEMM. Each invocation loops K times per 8
 * rows (K x ceil(rows / 8) within llvmpipe's loop cap at its sizes). */
void main()
{
    uint n = gl_GlobalInvocationID.x;
    uint m0, m1, wbase = 0u, sbase = 0u;
#ifdef GROUPED
    uint slot = gl_WorkGroupID.y;
    if (slot >= R[p.tiles_off]) return;
    uint tb = p.tiles_off + 4u + slot * 4u;
    uint ex = R[tb];
    if (ex < p.e0 || ex >= p.e1) return;
    m0 = R[tb + 1u]; m1 = R[tb + 2u];
    wbase = (ex - p.e0) * p.w_estride;
    sbase = (ex - p.e0) * p.s_estride;
#else
    m0 = gl_WorkGroupID.y * 8u;
    m1 = min(m0 + 8u, p.M);
#endif
    if (n >= p.N) return;
    for (uint r0 = m0; r0 < m1; r0 += 8u) {
        uint xr[8];
        float acc[8];
        for (uint i = 0u; i < 8u; i++) {
            uint m = min(r0 + i, m1 - 1u);
#ifdef GATHER
            xr[i] = R[p.rowmap_off + m] * p.ldx + p.x_off;
#else
            xr[i] = m * p.ldx + p.x_off;
#endif
            acc[i] = 0.0;
        }
        for (uint k = 0u; k < p.K; k++) {
            float w = wval(p.w_row0 + n, k, wbase, sbase);
            for (uint i = 0u; i < 8u; i++) acc[i] += X[xr[i] + k] * w;
        }
        for (uint i = 0u; i < 8u; i++) {
            uint m = r0 + i;
            if (m >= m1) break;
            uint o = m * p.ldy + p.y_off + n;
            float v = acc[i];
            if ((p.flags & 2u) != 0u) v += Y[o];
            if ((p.flags & 1u) != 0u) v = bf16r(v);
            Y[o] = v;
        }
    }
}
#elif defined(SMALL)
/* SMALL: bandwidth-bound, for few rows (decode). 8 output columns per
 * workgroup, 32 invocations per column splitting K: each reads 16 bytes of
 * the packed row at a time (consecutive invocations consecutive pieces, so a
 * column's 32 invocations read 512 contiguous bytes), decodes them once and
 * applies them to up to 16 rows of X; the 32 partial sums of each (row,
 * column) are added with subgroupAdd and, across subgroups, in shared memory.
 * Each invocation loops K / (32 * VEC) times per 16 rows, far below llvmpipe's
 * 65535-iteration cap. Requires K % VEC == 0, 16-byte aligned weight rows
 * (GROUPED: expert strides), ldx % 4 == 0 and x_off % 4 == 0 (forward.c). */
#if defined(WT_FP4)
#define VEC 32u
#elif defined(WT_FP8)
#define VEC 16u
#elif defined(WT_BF16)
#define VEC 8u
#else
#define VEC 4u
#endif
#define MR 16u
shared float red[MR * 256u];

void main()
{
    uint tid = gl_LocalInvocationID.x, lane = tid & 31u, col = tid >> 5;
    uint n = gl_WorkGroupID.x * 8u + col;
    uint m0, m1, wbase = 0u, sbase = 0u;
#ifdef GROUPED
    uint slot = gl_WorkGroupID.y;
    if (slot >= R[p.tiles_off]) return;
    uint tb = p.tiles_off + 4u + slot * 4u;
    uint ex = R[tb];
    if (ex < p.e0 || ex >= p.e1) return;
    m0 = R[tb + 1u]; m1 = R[tb + 2u];
    wbase = (ex - p.e0) * p.w_estride;
    sbase = (ex - p.e0) * p.s_estride;
#else
    m0 = gl_WorkGroupID.y * MR;
    m1 = min(m0 + MR, p.M);
#endif
    bool nok = n < p.N;
    uint wn = p.w_row0 + (nok ? n : 0u);
    /* uint index of this row's first byte */
#if defined(WT_FP4)
    uint wrow = (wbase >> 2) + wn * (p.K >> 3);
#elif defined(WT_FP8)
    uint wrow = (wbase >> 2) + wn * (p.K >> 2);
#elif defined(WT_BF16)
    uint wrow = (wbase >> 2) + wn * (p.K >> 1);
#else
    uint wrow = (wbase >> 2) + wn * p.K;
#endif
    for (uint r0 = m0; r0 < m1; r0 += MR) {
        uint nr = min(MR, m1 - r0);
        uint xr[MR];
        float acc[MR];
        [[unroll]] for (uint i = 0u; i < MR; i++) {
            uint m = min(r0 + i, m1 - 1u);
#ifdef GATHER
            xr[i] = (R[p.rowmap_off + m] * p.ldx + p.x_off) >> 2;
#else
            xr[i] = (m * p.ldx + p.x_off) >> 2;
#endif
            acc[i] = 0.0;
        }
        for (uint k = lane * VEC; nok && k < p.K; k += 32u * VEC) {
            uvec4 q = W4[(wrow >> 2) + k / VEC];
            float w[VEC];
#if defined(WT_FP4)
            float sc = e8m0_decode(sbyte_at(sbase + wn * p.s_cols + (k >> 5))) * 16384.0;
            [[unroll]] for (uint j = 0u; j < 16u; j++) {
                vec2 a = unpackHalf2x16(e2m1x2_to_half2(q[j >> 2] >> ((j & 3u) * 8u)));
                w[2u * j] = a.x * sc; w[2u * j + 1u] = a.y * sc;
            }
#elif defined(WT_FP8)
            float sc = e8m0_decode(sbyte_at(sbase + (wn >> 7) * p.s_cols + (k >> 7))) * 256.0;
            [[unroll]] for (uint j = 0u; j < 4u; j++) {
                /* two e4m3 bytes -> two fp16 bit patterns worth value * 2^-8 (exact) */
                vec2 a = unpackHalf2x16(e4m3x2_to_half2(q[j] & 0xffffu)), b = unpackHalf2x16(e4m3x2_to_half2(q[j] >> 16));
                w[4u * j] = a.x * sc; w[4u * j + 1u] = a.y * sc; w[4u * j + 2u] = b.x * sc; w[4u * j + 3u] = b.y * sc;
            }
#elif defined(WT_BF16)
            [[unroll]] for (uint j = 0u; j < 4u; j++) {
                w[2u * j] = uintBitsToFloat(q[j] << 16);
                w[2u * j + 1u] = uintBitsToFloat(q[j] & 0xffff0000u);
            }
#else
            [[unroll]] for (uint j = 0u; j < 4u; j++) w[j] = uintBitsToFloat(q[j]);
#endif
            [[unroll]] for (uint i = 0u; i < MR; i++) {
                if (i >= nr) break;
                uint xb = xr[i] + (k >> 2);
                float s = acc[i];
                [[unroll]] for (uint j = 0u; j < VEC / 4u; j++) {
                    vec4 xv = X4[xb + j];
                    s += xv.x * w[4u * j] + xv.y * w[4u * j + 1u] + xv.z * w[4u * j + 2u] + xv.w * w[4u * j + 3u];
                }
                acc[i] = s;
            }
        }
        /* the 32 partial sums of each (row, column): added within subgroups, then
           the subgroups of a column in shared memory; subgroups wider than a
           column's 32 invocations (wave64) go through shared memory whole */
        uint parts;
        if (gl_SubgroupSize <= 32u) {
            parts = 32u / gl_SubgroupSize;
            for (uint i = 0u; i < nr; i++) {
                float v = subgroupAdd(acc[i]);
                if (subgroupElect()) red[i * 256u + gl_SubgroupID] = v;
            }
        } else {
            parts = 32u;
            for (uint i = 0u; i < nr; i++) red[i * 256u + tid] = acc[i];
        }
        barrier();
        if (tid < 8u * MR) {
            uint c = tid >> 4, i = tid & 15u, nn = gl_WorkGroupID.x * 8u + c, m = r0 + i;
            if (i < nr && nn < p.N) {
                float v = 0.0;
                for (uint l = 0u; l < parts; l++) v += red[i * 256u + c * parts + l];
                uint o = m * p.ldy + p.y_off + nn;
                if ((p.flags & 2u) != 0u) v += Y[o];
                if ((p.flags & 1u) != 0u) v = bf16r(v);
                Y[o] = v;
            }
        }
        barrier();
    }
}
#elif defined(SMALL2)
/* SMALL2: the second version of SMALL (the engine uses it only with
 * DSV4_GEMM_SMALL=2 until it is timed on a GPU; forward.c). Bandwidth-bound,
 * for few rows (decode). The 256 invocations form 8
 * groups of 32; a group computes SMALL_NC adjacent output columns (a
 * workgroup 8 x SMALL_NC: GEMM_SMALL2_COLS in engine/vk.h), its 32 invocations
 * splitting K. Each invocation reads 16-byte pieces of its columns' packed
 * rows (consecutive invocations consecutive pieces: a group reads 512
 * contiguous bytes of a row at a time), SMALL_UN pieces of each column issued
 * before any is used (SMALL_NC x SMALL_UN loads in flight hide the memory
 * latency), decodes each weight once, a word at a time, and applies it to up
 * to SMALL_MR rows of X, each X vec4 read serving SMALL_NC columns. The 32 partial
 * sums of each (row, column) are added with subgroupAdd and, across subgroups
 * narrower than 32, in shared memory. Each invocation loops
 * K / (32 * VEC * SMALL_UN) times per SMALL_MR rows, far below llvmpipe's
 * 65535-iteration cap. Requires K % VEC == 0, 16-byte aligned weight rows
 * (GROUPED: expert strides), ldx % 4 == 0 and x_off % 4 == 0 (forward.c:
 * small_ok) and subgroups of at least 8 invocations (vk.c). */
#ifndef SMALL_NC
#define SMALL_NC 4u
#endif
#ifndef SMALL_UN
#define SMALL_UN 2u
#endif
#define NC SMALL_NC
#define UN SMALL_UN
/* VEC inputs per 16-byte piece, decoded in CH chunks of XV X vec4s each */
#if defined(WT_FP4)
#define VEC 32u
#define CH 4u
#define XV 2u
#elif defined(WT_FP8)
#define VEC 16u
#define CH 4u
#define XV 1u
#elif defined(WT_BF16)
#define VEC 8u
#define CH 2u
#define XV 1u
#else
#define VEC 4u
#define CH 1u
#define XV 1u
#endif
#ifndef SMALL_MR
#define SMALL_MR 16u
#endif
#define MR SMALL_MR
#define PMAX 4u /* partial sums per (row, column): 32 / subgroup size */
shared float red[MR * 8u * NC * PMAX];

/* Chunk ch of piece q, times scale sc (FP8: times 2^8, FP4: 2^14, which the
 * fp16 patterns lack), as XV vec4s in input order. */
void decode_chunk(uvec4 q, uint ch, float sc, out vec4 w[XV])
{
#if defined(WT_FP4)
    /* nibble j of the word is input j: nibbles j and j + 4 make one fp16 pair */
    uint x = q[ch];
    vec2 a0 = unpackHalf2x16(e2m1_nib04_to_half2(x)), a1 = unpackHalf2x16(e2m1_nib04_to_half2(x >> 4));
    vec2 a2 = unpackHalf2x16(e2m1_nib04_to_half2(x >> 8)), a3 = unpackHalf2x16(e2m1_nib04_to_half2(x >> 12));
    w[0] = vec4(a0.x, a1.x, a2.x, a3.x) * sc;
    w[1] = vec4(a0.y, a1.y, a2.y, a3.y) * sc;
#elif defined(WT_FP8)
    /* bytes 0 and 2, 1 and 3 of the word make the fp16 pairs */
    uint x = q[ch];
    vec2 a = unpackHalf2x16(e4m3_b02_to_half2(x)), b = unpackHalf2x16(e4m3_b02_to_half2(x >> 8));
    w[0] = vec4(a.x, b.x, a.y, b.y) * sc;
#elif defined(WT_BF16)
    uint x = q[2u * ch], y = q[2u * ch + 1u];
    w[0] = vec4(uintBitsToFloat(x << 16), uintBitsToFloat(x & 0xffff0000u), uintBitsToFloat(y << 16),
                uintBitsToFloat(y & 0xffff0000u));
#else
    w[0] = uintBitsToFloat(q);
#endif
}

void main()
{
    uint tid = gl_LocalInvocationID.x, lane = tid & 31u, grp = tid >> 5;
    uint n0 = gl_WorkGroupID.x * (8u * NC) + grp * NC; /* this group's first column */
    uint m0, m1, wbase = 0u, sbase = 0u;
#ifdef GROUPED
    uint slot = gl_WorkGroupID.y;
    if (slot >= R[p.tiles_off]) return;
    uint tb = p.tiles_off + 4u + slot * 4u;
    uint ex = R[tb];
    if (ex < p.e0 || ex >= p.e1) return;
    m0 = R[tb + 1u]; m1 = R[tb + 2u];
    wbase = (ex - p.e0) * p.w_estride;
    sbase = (ex - p.e0) * p.s_estride;
#else
    m0 = gl_WorkGroupID.y * MR;
    m1 = min(m0 + MR, p.M);
#endif
    uint P = p.K / VEC; /* pieces per weight row */
    /* each column's first piece and scale byte; columns past N read row N - 1
       (their sums are dropped) */
    uint wrow[NC], srow[NC];
    [[unroll]] for (uint c = 0u; c < NC; c++) {
        uint wn = p.w_row0 + min(n0 + c, p.N - 1u);
        wrow[c] = (wbase >> 4) + wn * P;
#if defined(WT_FP4)
        srow[c] = sbase + wn * p.s_cols;
#else
        srow[c] = sbase + (wn >> 7) * p.s_cols;
#endif
    }
    for (uint r0 = m0; r0 < m1; r0 += MR) {
        uint nr = min(MR, m1 - r0);
        uint xr[MR];
        float acc[MR][NC];
        [[unroll]] for (uint i = 0u; i < MR; i++) {
            uint m = min(r0 + i, m1 - 1u);
#ifdef GATHER
            xr[i] = (R[p.rowmap_off + m] * p.ldx + p.x_off) >> 2;
#else
            xr[i] = (m * p.ldx + p.x_off) >> 2;
#endif
            [[unroll]] for (uint c = 0u; c < NC; c++) acc[i][c] = 0.0;
        }
        for (uint pb = 0u; pb < P; pb += 32u * UN) {
            /* every load first, then the math */
            uvec4 q[UN][NC];
            float sc[UN][NC];
            [[unroll]] for (uint u = 0u; u < UN; u++) {
                uint pc = pb + u * 32u + lane;
                bool ok = pc < P;
                [[unroll]] for (uint c = 0u; c < NC; c++) {
                    q[u][c] = ok ? W4[wrow[c] + pc] : uvec4(0u);
#if defined(WT_FP4)
                    sc[u][c] = ok ? e8m0_decode(sbyte_at(srow[c] + pc)) * 16384.0 : 0.0;
#elif defined(WT_FP8)
                    sc[u][c] = ok ? e8m0_decode(sbyte_at(srow[c] + (pc >> 3))) * 256.0 : 0.0;
#else
                    sc[u][c] = 1.0;
#endif
                }
            }
            [[unroll]] for (uint u = 0u; u < UN; u++) {
                uint pc = pb + u * 32u + lane;
                if (pc >= P) break;
                uint xk = pc * (VEC / 4u); /* the piece's first X vec4 in a row */
                [[unroll]] for (uint ch = 0u; ch < CH; ch++) {
                    vec4 w[NC][XV];
                    [[unroll]] for (uint c = 0u; c < NC; c++) decode_chunk(q[u][c], ch, sc[u][c], w[c]);
                    [[unroll]] for (uint i = 0u; i < MR; i++) {
                        if (i >= nr) break;
                        [[unroll]] for (uint v = 0u; v < XV; v++) {
                            vec4 xv = X4[xr[i] + xk + ch * XV + v];
                            [[unroll]] for (uint c = 0u; c < NC; c++) acc[i][c] += dot(xv, w[c][v]);
                        }
                    }
                }
            }
        }
        /* the 32 partial sums of each (row, column): added within subgroups
           (a subgroup wider than 32 adds each group's part in turn), then the
           subgroups of a group in shared memory */
        uint sg = gl_SubgroupSize, parts = sg < 32u ? 32u / sg : 1u, nh = sg > 32u ? sg / 32u : 1u;
        uint part = lane / min(sg, 32u);
        [[unroll]] for (uint i = 0u; i < MR; i++) {
            if (i >= nr) break;
            [[unroll]] for (uint c = 0u; c < NC; c++) {
                for (uint h = 0u; h < nh; h++) {
                    float v = subgroupAdd(nh == 1u || (gl_SubgroupInvocationID >> 5) == h ? acc[i][c] : 0.0);
                    if (gl_SubgroupInvocationID == h * 32u) red[((i * 8u + grp) * NC + c) * PMAX + part] = v;
                }
            }
        }
        barrier();
        for (uint o = tid; o < nr * 8u * NC; o += 256u) {
            uint i = o / (8u * NC), cc = o % (8u * NC), n = gl_WorkGroupID.x * (8u * NC) + cc;
            if (n >= p.N) continue;
            float v = 0.0;
            for (uint l = 0u; l < parts; l++) v += red[o * PMAX + l];
            uint y = (r0 + i) * p.ldy + p.y_off + n;
            if ((p.flags & 2u) != 0u) v += Y[y];
            if ((p.flags & 1u) != 0u) v = bf16r(v);
            Y[y] = v;
        }
        barrier();
    }
}
#else
/* tiled: a BM x 64 output tile per workgroup (BM = 64, or 32 for GROUPED, whose
 * expert tiles hold at most 32 rows), each invocation TM x 4 outputs; K in
 * slices of 16 staged k-major in shared memory */
void main()
{
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * 16u + tx;
    uint n0 = gl_WorkGroupID.x * 64u;
    uint m0, m1, wbase = 0u, sbase = 0u;
#ifdef GROUPED
    uint slot = gl_WorkGroupID.y;
    if (slot >= R[p.tiles_off]) return;
    uint tb = p.tiles_off + 4u + slot * 4u;
    uint ex = R[tb];
    if (ex < p.e0 || ex >= p.e1) return;
    m0 = R[tb + 1u]; m1 = R[tb + 2u];
    wbase = (ex - p.e0) * p.w_estride;
    sbase = (ex - p.e0) * p.s_estride;
#else
    m0 = gl_WorkGroupID.y * TBM;
    m1 = min(m0 + TBM, p.M);
#endif
    float acc[TM][4];
    [[unroll]] for (uint i = 0u; i < TM; i++)
        [[unroll]] for (uint j = 0u; j < 4u; j++) acc[i][j] = 0.0;
    for (uint k0 = 0u; k0 < p.K; k0 += 16u) {
        [[unroll]] for (uint q = 0u; q < TBM / 16u; q++) {
            uint i = tid + q * 256u, r = i >> 4, c = i & 15u;
            uint m = m0 + r, k = k0 + c;
            float xv = 0.0;
            if (m < m1 && k < p.K) {
#ifdef GATHER
                uint row = R[p.rowmap_off + m];
#else
                uint row = m;
#endif
                xv = X[row * p.ldx + p.x_off + k];
            }
            As[c][r] = xv;
        }
        [[unroll]] for (uint q = 0u; q < 4u; q++) {
            uint i = tid + q * 256u, r = i >> 4, c = i & 15u;
            uint n = n0 + r, k = k0 + c;
            Ws[c][r] = (n < p.N && k < p.K) ? wval(p.w_row0 + n, k, wbase, sbase) : 0.0;
        }
        barrier();
        [[unroll]] for (uint c = 0u; c < 16u; c++) {
            float a[TM], b[4];
            [[unroll]] for (uint i = 0u; i < TM; i++) a[i] = As[c][ty * TM + i];
            [[unroll]] for (uint j = 0u; j < 4u; j++) b[j] = Ws[c][tx * 4u + j];
            [[unroll]] for (uint i = 0u; i < TM; i++)
                [[unroll]] for (uint j = 0u; j < 4u; j++) acc[i][j] += a[i] * b[j];
        }
        barrier();
    }
    for (uint i = 0u; i < TM; i++)
        for (uint j = 0u; j < 4u; j++) {
            uint m = m0 + ty * TM + i, n = n0 + tx * 4u + j;
            if (m >= m1 || n >= p.N) continue;
            uint o = m * p.ldy + p.y_off + n;
            float v = acc[i][j];
            if ((p.flags & 2u) != 0u) v += Y[o];
            if ((p.flags & 1u) != 0u) v = bf16r(v);
            Y[o] = v;
        }
}
#endif
