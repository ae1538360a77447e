/* gemm_cm: gemm.comp's product Y[m][y_off + n] = sum_k X[m][x_off + k] *
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
 * fragments. K advances by 32 (GROUPED: 64): the next slice of X (vec4 loads) and of W
 * (uvec4/uvec2 loads of the packed bytes) is fetched into registers while the
 * current one, decoded and scaled to fp16 in shared memory, feeds the matrix
 * products. The output goes through shared memory so the epilogue (bf16
 * rounding, add into Y) and the bounds checks stay per element.
 * Requires K % 64 == 0, ldx % 4 == 0, x_off % 4 == 0 and 16-byte aligned weight
 * rows (forward.c picks the portable shader otherwise) and subgroups of 32
 * (vk.c creates these pipelines only then). */
#version 450
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

#ifdef GROUPED
#define BM 32
#else
#define BM 64
#endif
#define BN 128
#ifdef GROUPED
#define BK 64          /* expert tiles have few rows: longer K slices, fewer barriers per byte */
#else
#define BK 32          /* BM x BN f32 outputs + the staged slices fill the 48 KiB */
#endif
#define LDS (BK + 8)   /* fp16 row stride of the staged tiles (16 bytes of padding: fewer bank conflicts) */
#define FM (BM / 32)   /* accumulator fragments per subgroup along M */

layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BX { vec4 X4[]; };
#if defined(WT_FP4)
layout(std430, binding = 1) readonly buffer BW { uvec2 Wv[]; };  /* 16 e2m1 codes */
#else
layout(std430, binding = 1) readonly buffer BW { uvec4 Wv[]; };  /* 16 e4m3 codes or 8 bf16 */
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

shared float16_t As[BM * LDS];
shared float16_t Ws[BN * LDS];
shared float Cs[BM * BN];

uint sbyte_at(uint byte_off) { return (S[byte_off >> 2] >> ((byte_off & 3u) * 8u)) & 0xffu; }

/* A: BM x BK floats, APR vec4 per row, AV per invocation */
#define APR (BK / 4)
#define AV (BM * APR / 256)
/* W: BN rows of BK codes, WPR pieces per row (FP8: uvec4 of 16 e4m3, FP4: uvec2
   of 16 e2m1, BF16: uvec4 of 8), WV per invocation */
#if defined(WT_BF16)
#define WPR (BK / 8)
#else
#define WPR (BK / 16)
#endif
#define WV (BN * WPR / 256)


void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint sg = gl_SubgroupID;
    uint n0 = gl_WorkGroupID.x * BN;
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
    m0 = gl_WorkGroupID.y * BM;
    m1 = min(m0 + BM, p.M);
#endif

    /* what this invocation fetches: A rows/columns, W row and part */
    uint a_row[AV], a_c4[AV];
    int a_src[AV];   /* vec4 index of the row start (k = 0), -1 past m1 */
    [[unroll]] for (uint i = 0u; i < AV; i++) {
        uint idx = tid + i * 256u;
        a_row[i] = idx / APR; a_c4[i] = idx % APR;
        uint m = m0 + a_row[i];
        if (m < m1) {
#ifdef GATHER
            uint row = R[p.rowmap_off + m];
#else
            uint row = m;
#endif
            a_src[i] = int((row * p.ldx + p.x_off) >> 2);
        } else {
            a_src[i] = -1;
        }
    }
    uint w_r[WV], w_part[WV];
    bool w_ok[WV];
    uint w_src[WV];  /* element index of the row's first piece (k = 0) */
    [[unroll]] for (uint i = 0u; i < WV; i++) {
        uint idx = tid + i * 256u;
#if defined(WT_BF16)
        w_r[i] = idx / WPR; w_part[i] = idx % WPR;
        w_src[i] = (wbase >> 4) + (((p.w_row0 + n0 + w_r[i]) * p.K) >> 3);
#elif defined(WT_FP8)
        w_r[i] = idx / WPR; w_part[i] = idx % WPR;
        w_src[i] = (wbase >> 4) + (((p.w_row0 + n0 + w_r[i]) * p.K) >> 4);
#else
        w_r[i] = idx / WPR; w_part[i] = idx % WPR;
        w_src[i] = (wbase >> 3) + (((p.w_row0 + n0 + w_r[i]) * (p.K >> 1)) >> 3);
#endif
        w_ok[i] = n0 + w_r[i] < p.N;
    }

    vec4 ra[AV];
#if defined(WT_FP4)
    uvec2 rw[WV];
#else
    uvec4 rw[WV];
#endif
    float rs[WV];

    coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> acc[FM][2];
    [[unroll]] for (uint i = 0u; i < FM; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++)
            acc[i][j] = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
    uint wm = sg & 1u, wn = sg >> 1;   /* subgroup's place: 2 along M x 4 along N */

    /* fetch slice k0 into registers */
#define FETCH(k0)                                                                         \
    [[unroll]] for (uint i = 0u; i < AV; i++)                                                        \
        ra[i] = a_src[i] >= 0 ? X4[uint(a_src[i]) + ((k0) >> 2) + a_c4[i]] : vec4(0.0);  \
    [[unroll]] for (uint i = 0u; i < WV; i++) {                                                      \
        if (!w_ok[i]) continue;                                                           \
        FETCH_W(i, k0)                                                                    \
    }
#if defined(WT_BF16)
#define FETCH_W(i, k0) rw[i] = Wv[w_src[i] + ((k0) >> 3) + w_part[i]];
#elif defined(WT_FP8)
#define FETCH_W(i, k0) rw[i] = Wv[w_src[i] + ((k0) >> 4) + w_part[i]]; \
    rs[i] = e8m0_decode(sbyte_at(sbase + ((p.w_row0 + n0 + w_r[i]) >> 7) * p.s_cols + ((k0) >> 7))) * 256.0;
#else
#define FETCH_W(i, k0) rw[i] = Wv[w_src[i] + ((k0) >> 4) + w_part[i]]; \
    rs[i] = e8m0_decode(sbyte_at(sbase + (p.w_row0 + n0 + w_r[i]) * p.s_cols + (((k0) + 16u * w_part[i]) >> 5))) * 16384.0;
#endif

    FETCH(0u)
    for (uint k0 = 0u; k0 < p.K; k0 += BK) {
        /* stage: f32 -> fp16 for A, decode + scale -> fp16 for W */
        [[unroll]] for (uint i = 0u; i < AV; i++) {
            uint o = a_row[i] * LDS + a_c4[i] * 4u;
            As[o] = float16_t(ra[i].x); As[o + 1u] = float16_t(ra[i].y);
            As[o + 2u] = float16_t(ra[i].z); As[o + 3u] = float16_t(ra[i].w);
        }
        [[unroll]] for (uint i = 0u; i < WV; i++) {
#if defined(WT_BF16)
            uint o = w_r[i] * LDS + w_part[i] * 8u;
            [[unroll]] for (uint j = 0u; j < 4u; j++) {
                uint v = w_ok[i] ? rw[i][j] : 0u;
                Ws[o + 2u * j] = float16_t(uintBitsToFloat(v << 16));
                Ws[o + 2u * j + 1u] = float16_t(uintBitsToFloat(v & 0xffff0000u));
            }
#elif defined(WT_FP8)
            uint o = w_r[i] * LDS + w_part[i] * 16u;
            [[unroll]] for (uint j = 0u; j < 4u; j++) {
                uint v = w_ok[i] ? rw[i][j] : 0u;
                /* two e4m3 bytes -> two fp16 bit patterns worth value * 2^-8 */
                vec2 fl = unpackHalf2x16(e4m3x2_to_half2(v & 0xffffu)) * rs[i];
                vec2 fh = unpackHalf2x16(e4m3x2_to_half2(v >> 16)) * rs[i];
                Ws[o + 4u * j] = float16_t(fl.x); Ws[o + 4u * j + 1u] = float16_t(fl.y);
                Ws[o + 4u * j + 2u] = float16_t(fh.x); Ws[o + 4u * j + 3u] = float16_t(fh.y);
            }
#else
            uint o = w_r[i] * LDS + w_part[i] * 16u;
            [[unroll]] for (uint j = 0u; j < 2u; j++) {
                uint v = w_ok[i] ? rw[i][j] : 0u;
                [[unroll]] for (uint q = 0u; q < 4u; q++) {
                    vec2 f = unpackHalf2x16(e2m1x2_to_half2(v >> (8u * q))) * rs[i];
                    Ws[o + 8u * j + 2u * q] = float16_t(f.x); Ws[o + 8u * j + 2u * q + 1u] = float16_t(f.y);
                }
            }
#endif
        }
        barrier();
        if (k0 + BK < p.K) { FETCH(k0 + BK) }
        [[unroll]] for (uint kk = 0u; kk < BK; kk += 16u) {
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> fa[FM];
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> fb[2];
            [[unroll]] for (uint i = 0u; i < FM; i++)
                coopMatLoad(fa[i], As, (wm * FM * 16u + i * 16u) * LDS + kk, LDS, gl_CooperativeMatrixLayoutRowMajor);
            [[unroll]] for (uint j = 0u; j < 2u; j++)
                coopMatLoad(fb[j], Ws, (wn * 32u + j * 16u) * LDS + kk, LDS, gl_CooperativeMatrixLayoutColumnMajor);
            [[unroll]] for (uint i = 0u; i < FM; i++)
                [[unroll]] for (uint j = 0u; j < 2u; j++)
                    acc[i][j] = coopMatMulAdd(fa[i], fb[j], acc[i][j]);
        }
        barrier();
    }
    [[unroll]] for (uint i = 0u; i < FM; i++)
        [[unroll]] for (uint j = 0u; j < 2u; j++)
            coopMatStore(acc[i][j], Cs, (wm * FM * 16u + i * 16u) * BN + wn * 32u + j * 16u, BN,
                         gl_CooperativeMatrixLayoutRowMajor);
    barrier();
    for (uint idx = tid; idx < BM * BN; idx += 256u) {
        uint r = idx / BN, c = idx % BN;
        uint m = m0 + r, n = n0 + c;
        if (m >= m1 || n >= p.N) continue;
        uint o = m * p.ldy + p.y_off + n;
        float v = Cs[idx];
        if ((p.flags & 2u) != 0u) v += Y[o];
        if ((p.flags & 1u) != 0u) v = bf16r(v);
        Y[o] = v;
    }
}
