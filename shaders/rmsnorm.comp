/* rmsnorm: RMSNorm.forward of model.py over rows of D values: f32 mean of
 * squares, x * rsqrt(var + eps) * weight (weight stored bf16), result rounded
 * to bf16. One workgroup per row.
 *
 * -DQUANT (rmsnorm_q) also writes YQ: the result FP8-quant-dequantized in
 * 128-column blocks exactly as act_quant.comp mode 0 does it (the block's
 * amax of the bf16 results, power-of-two scale, e4m3, bf16), so the norm
 * before an FP8 GEMM is one dispatch instead of two. D must be a multiple of
 * 128 and at most 64 blocks; YQ may be the same buffer as X (each row reads
 * all of X before the barrier that precedes its YQ writes). */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BW { uint Wt[]; };
layout(std430, binding = 2) writeonly buffer BY { float Y[]; };
#ifdef QUANT
layout(std430, binding = 3) writeonly buffer BQ { float YQ[]; };
shared uint amax[64]; /* per 128-column block: the bits of max |y| (non-negative floats order as uints) */
#endif
layout(push_constant) uniform P { uint D, ldx, ldy, x_off, y_off; float eps; } p;
shared float red[64];

void main()
{
    uint row = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    precise float s = 0.0;
    for (uint c = t; c < p.D; c += 64u) { float v = X[row * p.ldx + p.x_off + c]; s += v * v; }
    red[t] = s;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] += red[t + k];
        barrier();
    }
    float r = rsqrt_acc(div_acc(red[0], float(p.D)) + p.eps);
#ifdef QUANT
    amax[t] = 0u;
    barrier();
    for (uint c = t; c < p.D; c += 64u) {
        float w = bf16_at(Wt[c >> 1], c & 1u);
        precise float y = w * (X[row * p.ldx + p.x_off + c] * r);
        atomicMax(amax[c >> 7], floatBitsToUint(abs(bf16r(y))));
    }
    barrier();
#endif
    for (uint c = t; c < p.D; c += 64u) {
        float w = bf16_at(Wt[c >> 1], c & 1u);
        precise float y = w * (X[row * p.ldx + p.x_off + c] * r);
        float yb = bf16r(y);
        Y[row * p.ldy + p.y_off + c] = yb;
#ifdef QUANT
        float sc = pow2_ceil(max(uintBitsToFloat(amax[c >> 7]), 1e-4) * (1.0 / 448.0));
        YQ[row * p.ldy + p.y_off + c] = bf16r(fp8_qdq(yb, sc));
#endif
    }
}
