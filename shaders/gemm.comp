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
 * 32x32 output tile per workgroup, 256 threads with 2x2 outputs each; the
 * SMALL variant (few rows: decode) gives each invocation one output column
 * for up to 8 rows at a time, with no shared memory and no barriers, which
 * is what a CPU driver like lavapipe runs fastest. */
#version 450
#include "common.glsl"
#ifdef SMALL
layout(local_size_x = 64) in;
#else
layout(local_size_x = 16, local_size_y = 16) in;
#endif
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BW { uint W[]; };
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

shared float As[32][33];
shared float Ws[32][33];

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

#ifdef SMALL
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
#else
void main()
{
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * 16u + tx;
    uint n0 = gl_WorkGroupID.x * 32u;
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
    m0 = gl_WorkGroupID.y * 32u;
    m1 = min(m0 + 32u, p.M);
#endif
    float acc[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
    for (uint k0 = 0u; k0 < p.K; k0 += 32u) {
        for (uint i = tid; i < 1024u; i += 256u) {
            uint r = i >> 5, c = i & 31u;
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
            As[r][c] = xv;
            uint n = n0 + r;
            Ws[r][c] = (n < p.N && k < p.K) ? wval(p.w_row0 + n, k, wbase, sbase) : 0.0;
        }
        barrier();
        for (uint c = 0u; c < 32u; c++) {
            float a0 = As[ty * 2u][c], a1 = As[ty * 2u + 1u][c];
            float b0 = Ws[tx * 2u][c], b1 = Ws[tx * 2u + 1u][c];
            acc[0][0] += a0 * b0; acc[0][1] += a0 * b1;
            acc[1][0] += a1 * b0; acc[1][1] += a1 * b1;
        }
        barrier();
    }
    for (uint i = 0u; i < 2u; i++)
        for (uint j = 0u; j < 2u; j++) {
            uint m = m0 + ty * 2u + i, n = n0 + tx * 2u + j;
            if (m >= m1 || n >= p.N) continue;
            uint o = m * p.ldy + p.y_off + n;
            float v = acc[i][j];
            if ((p.flags & 2u) != 0u) v += Y[o];
            if ((p.flags & 1u) != 0u) v = bf16r(v);
            Y[o] = v;
        }
}
#endif
