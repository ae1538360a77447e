/* gemm_cm2: the second version of gemm_cm.comp, used only with
 * DSV4_GEMM_CM=2 until it is timed on a GPU (docs/benchmarks.md); when it
 * wins it replaces gemm_cm.comp. What follows holds for both except the
 * tiling paragraph, which is this version's.
 *
 * gemm.comp's product Y[m][y_off + n] = sum_k X[m][x_off + k] *
 * W[w_row0 + n][k] on tensor cores (GL_KHR_cooperative_matrix, 16x16x16,
 * fp16 inputs, fp32 accumulators), for GPUs that expose it; gemm.comp stays
 * the portable twin (lavapipe has no cooperative matrices) and the reference
 * of the tests. Same bindings, push constants, variants (WT_FP8 / WT_FP4 /
 * WT_BF16, GROUPED, GATHER) and epilogue flags as gemm.comp.
 *
 * Why fp16 is exact here: the activations of FP8/FP4 GEMMs are act_quant's
 * e4m3 codes times a power-of-two scale, and the weights are e4m3 / e2m1 codes
 * times a power-of-two (ue8m0) scale; every such code is exact in fp16 and a
 * power-of-two factor keeps it exact while the value stays within fp16's range
 * (down to 2^-24 for e4m3's 3 mantissa bits at the bottom: weight scales of
 * 2^-15 and up). Each product of two fp16 values is exact in fp32 and the
 * sums run in fp32, as the official kernels. bf16 values (7 mantissa bits)
 * are exact in fp16 in its normal range [2^-14, 65504]; outside it they round,
 * so the bf16 variant is exact only for well-scaled operands.
 *
 * Tiling: a workgroup of 256 invocations (8 subgroups of 32) computes a BM x 128
 * output tile (BM = 64, or 32 for GROUPED: moe_group.comp's expert tiles hold
 * at most 32 rows), each subgroup BM/2 x 32 of it as (BM/32) x 2 accumulator
 * fragments. K advances by BK (32, the next slice staged into a second
 * buffer while the current one is multiplied: one barrier per slice; DBUF=0:
 * 64 in one buffer): each invocation fetches its part of the next
 * slice into registers (X in vec4s, W in 16-byte pieces: 16 e4m3, 32 e2m1 or
 * 8 bf16 codes) while the current one, decoded and scaled to fp16 in shared
 * memory (4 values per 8-byte store), feeds the matrix products.
 * Each subgroup writes its own outputs through its own block of shared memory,
 * so the epilogue (bf16 rounding, add into Y) and the bounds checks stay per
 * element without a workgroup barrier.
 * Requires K % 64 == 0, ldx % 4 == 0, x_off % 4 == 0 and 16-byte aligned weight
 * rows and expert strides (forward.c picks the portable shader otherwise) and
 * subgroups of 32 (vk.c creates these pipelines only then). */
#version 450
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

/* Variants still to be timed against each other on a GPU (.dev run scripts
   build one binary per setting): DBUF 0/1 as above; H16 1 scales the decoded
   codes in fp16 arithmetic where the scale is itself an fp16 value (the same
   correctly rounded product, fewer conversions); PERM 1 decodes each 32-bit
   word of codes with fewer integer operations, in a permuted K order that A
   is staged in too. */
#ifndef DBUF
#define DBUF 1
#endif
#ifndef H16
#define H16 0
#endif
#ifndef PERM
#define PERM 0
#endif
#ifdef GROUPED
#define BM 32
#else
#define BM 64
#endif
#define BN 128
#if DBUF
#define BK 32          /* two staged slices + the epilogue buffer fill the 48 KiB */
#define NBUF 2
#else
#define BK 64
#define NBUF 1
#endif
#define LDS4 ((BK + 8) / 4)  /* f16vec4 row stride of the staged tiles (16 bytes of padding: fewer bank conflicts) */
#define FM (BM / 32)         /* accumulator fragments per subgroup along M */
#define A_STAGE (BM * LDS4)
#define W_STAGE (BN * LDS4)
#define CS_LD 36             /* float row stride of a subgroup's 16 x 32 epilogue block (padded) */

layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BX { vec4 X4[]; };
layout(std430, binding = 1) readonly buffer BW { uvec4 Wv[]; };  /* 16 e4m3 codes, 32 e2m1 or 8 bf16 */
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

shared f16vec4 As[NBUF * A_STAGE];
shared f16vec4 Ws[NBUF * W_STAGE];
shared float Cs[8 * 16 * CS_LD];

uint sbyte_at(uint byte_off) { return (S[byte_off >> 2] >> ((byte_off & 3u) * 8u)) & 0xffu; }

/* A: BM x BK floats in pieces of AQ vec4s, APR per row, AV per invocation */
#if PERM && defined(WT_FP4)
#define AQ 2
#else
#define AQ 1
#endif
#define APR (BK / (4 * AQ))
#define A_PIECES (BM * APR)
#define AV ((A_PIECES + 255) / 256)
/* W: BN rows of BK codes in 16-byte pieces, WPR per row (FP8: 16 e4m3, FP4:
   32 e2m1, BF16: 8 values), WV per invocation (FP4 with BK = 32: half of the
   invocations fetch none) */
#if defined(WT_BF16)
#define WPR (BK / 8)
#elif defined(WT_FP8)
#define WPR (BK / 16)
#else
#define WPR (BK / 32)
#endif
#define W_PIECES (BN * WPR)
#define WV ((W_PIECES + 255) / 256)

/* this invocation's part of the slice in flight (registers) */
vec4 ra[AV][AQ];
uvec4 rw[WV];
float rs[WV];
int a_src[AV];   /* vec4 index of the piece at k = 0, -1 past m1 */
bool a_act[AV];  /* the piece exists */
uint a_dst[AV];  /* f16vec4 index in a stage of As */
uint w_src[WV];  /* uvec4 index of the row's first piece (k = 0) */
uint w_dst[WV];  /* f16vec4 index in a stage of Ws */
uint w_row[WV], w_part[WV];
bool w_ok[WV];   /* the row exists (else zeros are staged) */
bool w_act[WV];  /* the piece exists */
uint n0, sbase;

void fetch(uint k0)
{
    [[unroll]] for (uint i = 0u; i < AV; i++)
        [[unroll]] for (uint q = 0u; q < AQ; q++)
            ra[i][q] = a_src[i] >= 0 ? X4[uint(a_src[i]) + (k0 >> 2) + q] : vec4(0.0);
    [[unroll]] for (uint i = 0u; i < WV; i++) {
        rw[i] = uvec4(0u); rs[i] = 0.0;
        if (!w_ok[i]) continue;
#if defined(WT_BF16)
        rw[i] = Wv[w_src[i] + (k0 >> 3)];
#elif defined(WT_FP8)
        rw[i] = Wv[w_src[i] + (k0 >> 4)];
        rs[i] = e8m0_decode(sbyte_at(sbase + ((p.w_row0 + n0 + w_row[i]) >> 7) * p.s_cols + (k0 >> 7))) * 256.0;
#else
        rw[i] = Wv[w_src[i] + (k0 >> 5)];
        rs[i] = e8m0_decode(sbyte_at(sbase + (p.w_row0 + n0 + w_row[i]) * p.s_cols + (k0 >> 5) + w_part[i])) * 16384.0;
#endif
    }
}

/* fp16 pairs h0, h1 times scale s, as fp16 */
f16vec4 scaled4(uint h0, uint h1, float s, bool s_is_f16)
{
#if H16
    /* in fp16 arithmetic where s itself is an fp16 value: the same correctly
       rounded product */
    if (s_is_f16) {
        f16vec2 hs = f16vec2(float16_t(s));
        return f16vec4(unpackFloat2x16(h0) * hs, unpackFloat2x16(h1) * hs);
    }
#endif
    return f16vec4(vec4(unpackHalf2x16(h0), unpackHalf2x16(h1)) * s);
}

/* the registers, decoded and scaled to fp16, into stage `buf`: 4 values per
   8-byte store */
void stage(uint buf)
{
    [[unroll]] for (uint i = 0u; i < AV; i++) {
        if (!a_act[i]) continue;
        uint o = buf * A_STAGE + a_dst[i];
#if AQ == 2
        /* in the order stage() writes each word's e2m1 codes */
        vec4 a = ra[i][0], b = ra[i][1];
        As[o] = f16vec4(a.x, b.x, a.z, b.z);
        As[o + 1u] = f16vec4(a.y, b.y, a.w, b.w);
#elif PERM && defined(WT_FP8)
        As[o] = f16vec4(ra[i][0].xzyw);
#else
        As[o] = f16vec4(ra[i][0]);
#endif
    }
    [[unroll]] for (uint i = 0u; i < WV; i++) {
        if (!w_act[i]) continue;
        uint o = buf * W_STAGE + w_dst[i];
#if defined(WT_BF16)
        [[unroll]] for (uint j = 0u; j < 2u; j++) {
            uint v0 = rw[i][2u * j], v1 = rw[i][2u * j + 1u];
            Ws[o + j] = f16vec4(vec4(uintBitsToFloat(v0 << 16), uintBitsToFloat(v0 & 0xffff0000u),
                                     uintBitsToFloat(v1 << 16), uintBitsToFloat(v1 & 0xffff0000u)));
        }
#elif defined(WT_FP8)
        bool s16 = rs[i] >= 5.9604645e-8 && rs[i] <= 32768.0;
        [[unroll]] for (uint j = 0u; j < 4u; j++) {
            uint v = rw[i][j];
#if PERM
            /* bytes 0, 2 and 1, 3 as fp16 pairs worth value * 2^-8: A is
               staged in the same order (xzyw) */
            uint e = v & 0x00ff00ffu, d = (v >> 8) & 0x00ff00ffu;
            Ws[o + j] = scaled4(((e & 0x00800080u) << 8) | ((e & 0x007f007fu) << 7),
                                ((d & 0x00800080u) << 8) | ((d & 0x007f007fu) << 7), rs[i], s16);
#else
            /* two e4m3 bytes -> two fp16 bit patterns worth value * 2^-8 */
            Ws[o + j] = scaled4(e4m3x2_to_half2(v & 0xffffu), e4m3x2_to_half2(v >> 16), rs[i], s16);
#endif
        }
#else
        bool s16 = rs[i] >= 5.9604645e-8 && rs[i] <= 32768.0;
        [[unroll]] for (uint j = 0u; j < 4u; j++) {
            uint v = rw[i][j];
#if PERM
            /* codes 0, 4 | 2, 6 | 1, 5 | 3, 7 of the word as fp16 pairs worth
               value * 2^-14: A is staged in the same order */
            uint c04 = v, c26 = v >> 8, c15 = v >> 4, c37 = v >> 12;
#define E2M1_PAIR(x) ((((x) & 0x00080008u) << 12) | (((x) & 0x00070007u) << 9))
            Ws[o + 2u * j] = scaled4(E2M1_PAIR(c04), E2M1_PAIR(c26), rs[i], s16);
            Ws[o + 2u * j + 1u] = scaled4(E2M1_PAIR(c15), E2M1_PAIR(c37), rs[i], s16);
#else
            /* one byte -> two e2m1 codes -> two fp16 bit patterns worth value * 2^-14 */
            Ws[o + 2u * j] = scaled4(e2m1x2_to_half2(v), e2m1x2_to_half2(v >> 8), rs[i], s16);
            Ws[o + 2u * j + 1u] = scaled4(e2m1x2_to_half2(v >> 16), e2m1x2_to_half2(v >> 24), rs[i], s16);
#endif
        }
#endif
    }
}

coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> acc[FM][2];
uint wm, wn;  /* subgroup's place: 2 along M x 4 along N */

void multiply(uint buf)
{
    [[unroll]] for (uint kk = 0u; kk < BK / 4u; kk += 4u) {
        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> fa[FM];
        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> fb[2];
        [[unroll]] for (uint i = 0u; i < FM; i++)
            coopMatLoad(fa[i], As, buf * A_STAGE + (wm * FM * 16u + i * 16u) * LDS4 + kk, LDS4,
                        gl_CooperativeMatrixLayoutRowMajor);
        [[unroll]] for (uint j = 0u; j < 2u; j++)
            coopMatLoad(fb[j], Ws, buf * W_STAGE + (wn * 32u + j * 16u) * LDS4 + kk, LDS4,
                        gl_CooperativeMatrixLayoutColumnMajor);
        [[unroll]] for (uint i = 0u; i < FM; i++)
            [[unroll]] for (uint j = 0u; j < 2u; j++)
                acc[i][j] = coopMatMulAdd(fa[i], fb[j], acc[i][j]);
    }
}

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint sg = gl_SubgroupID;
    n0 = gl_WorkGroupID.x * BN;
    uint m0, m1, wbase = 0u;
    sbase = 0u;
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
    m0 = gl_WorkGroupID.y * BM;
    m1 = min(m0 + BM, p.M);
#endif

    [[unroll]] for (uint i = 0u; i < AV; i++) {
        uint idx = tid + i * 256u;
        uint r = idx / APR, c4 = (idx % APR) * AQ;
        a_dst[i] = r * LDS4 + c4;
        a_act[i] = idx < A_PIECES;
        uint m = m0 + r;
        if (a_act[i] && m < m1) {
#ifdef GATHER
            uint row = R[p.rowmap_off + m];
#else
            uint row = m;
#endif
            a_src[i] = int(((row * p.ldx + p.x_off) >> 2) + c4);
        } else {
            a_src[i] = -1;
        }
    }
    [[unroll]] for (uint i = 0u; i < WV; i++) {
        uint idx = tid + i * 256u;
        w_row[i] = idx / WPR; w_part[i] = idx % WPR;
        w_act[i] = idx < W_PIECES;
        w_ok[i] = w_act[i] && n0 + w_row[i] < p.N;
        uint row = p.w_row0 + n0 + w_row[i];
#if defined(WT_BF16)
        w_src[i] = (wbase >> 4) + ((row * p.K) >> 3) + w_part[i];
        w_dst[i] = w_row[i] * LDS4 + w_part[i] * 2u;
#elif defined(WT_FP8)
        w_src[i] = (wbase >> 4) + ((row * p.K) >> 4) + w_part[i];
        w_dst[i] = w_row[i] * LDS4 + w_part[i] * 4u;
#else
        w_src[i] = (wbase >> 4) + ((row * (p.K >> 1)) >> 4) + w_part[i];
        w_dst[i] = w_row[i] * LDS4 + w_part[i] * 8u;
#endif
    }

    [[unroll]] for (uint i = 0u; i < FM; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++)
            acc[i][j] = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
    wm = sg & 1u; wn = sg >> 1;

#if DBUF
    /* slice k0 is multiplied from one stage while slice k0 + BK, fetched to
       registers meanwhile, is staged into the other: one barrier per slice */
    fetch(0u);
    stage(0u);
    barrier();
    uint buf = 0u;
    for (uint k0 = 0u; k0 < p.K; k0 += BK) {
        bool more = k0 + BK < p.K;
        if (more) fetch(k0 + BK);
        multiply(buf);
        if (more) stage(buf ^ 1u);
        barrier();
        buf ^= 1u;
    }
#else
    fetch(0u);
    for (uint k0 = 0u; k0 < p.K; k0 += BK) {
        stage(0u);
        barrier();
        if (k0 + BK < p.K) fetch(k0 + BK);
        multiply(0u);
        barrier();
    }
#endif

    /* epilogue per subgroup, 16 x 32 outputs at a time through its own block
       of Cs (no workgroup barrier): bf16 rounding, add into Y and the bounds
       checks stay per element; lane = column, so each row is one 128-byte
       write */
    uint lane = gl_SubgroupInvocationID;
    uint cs = sg * 16u * CS_LD;
    uint n = n0 + wn * 32u + lane;
    [[unroll]] for (uint i = 0u; i < FM; i++) {
        coopMatStore(acc[i][0], Cs, cs, CS_LD, gl_CooperativeMatrixLayoutRowMajor);
        coopMatStore(acc[i][1], Cs, cs + 16u, CS_LD, gl_CooperativeMatrixLayoutRowMajor);
        subgroupMemoryBarrierShared();
        subgroupBarrier();
        uint mb = m0 + wm * FM * 16u + i * 16u;
        if (n < p.N)
            for (uint r = 0u; r < 16u && mb + r < m1; r++) {
                uint o = (mb + r) * p.ldy + p.y_off + n;
                float v = Cs[cs + r * CS_LD + lane];
                if ((p.flags & 2u) != 0u) v += Y[o];
                if ((p.flags & 1u) != 0u) v = bf16r(v);
                Y[o] = v;
            }
        subgroupBarrier();
    }
}
