/* act_quant: block-wise quant-dequant of activations, as act_quant /
 * fp4_act_quant in kernel_tilelang.py: per block of `bs` columns, amax
 * (clamped below), power-of-two scale (amax / fmax rounded up), values cast
 * to e4m3 (mode 0) or e2m1 (mode 1) with round-to-nearest-even, then times
 * the scale. Writes the dequantized values, which is what fp8_gemm/fp4_gemm
 * multiply by; Y may be the same buffer as X (in place). One workgroup per
 * (row, block). */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) writeonly buffer BY { float Y[]; };
layout(push_constant) uniform P { uint rows, ldx, ldy, col0, bs, mode; } p;
shared float red[64];

void main()
{
    uint row = gl_WorkGroupID.y, blk = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    uint c0 = p.col0 + blk * p.bs;
    float m = 0.0;
    for (uint c = t; c < p.bs; c += 64u) m = max(m, abs(X[row * p.ldx + c0 + c]));
    red[t] = m;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (t < s) red[t] = max(red[t], red[t + s]);
        barrier();
    }
    float amax = red[0];
    float sc;
    if (p.mode == 0u) sc = pow2_ceil(max(amax, 1e-4) * (1.0 / 448.0));
    else sc = pow2_ceil(max(amax, 6.0 * uintBitsToFloat(0x00800000u)) * (1.0 / 6.0));
    for (uint c = t; c < p.bs; c += 64u) {
        float x = X[row * p.ldx + c0 + c];
        Y[row * p.ldy + c0 + c] = bf16r(p.mode == 0u ? fp8_qdq(x, sc) : fp4_qdq(x, sc));
    }
}
