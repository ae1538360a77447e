/* rmsnorm: RMSNorm.forward of model.py over rows of D values: f32 mean of
 * squares, x * rsqrt(var + eps) * weight (weight stored bf16), result rounded
 * to bf16. One workgroup per row. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BW { uint Wt[]; };
layout(std430, binding = 2) writeonly buffer BY { float Y[]; };
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
    for (uint c = t; c < p.D; c += 64u) {
        float w = bf16_at(Wt[c >> 1], c & 1u);
        precise float y = w * (X[row * p.ldx + p.x_off + c] * r);
        Y[row * p.ldy + p.y_off + c] = bf16r(y);
    }
}
