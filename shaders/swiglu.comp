/* swiglu: Expert.forward between w1/w3 and w2: up clamped to +-limit, gate
 * clamped above at limit (when limit > 0), silu(gate) * up in f32, times the
 * routing weight (routed experts: R[wsort_off + row]), rounded to bf16.
 * G and U rows hold the bf16 outputs of w1 and w3. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BG { float G[]; };
layout(std430, binding = 1) readonly buffer BU { float U[]; };
layout(std430, binding = 2) readonly buffer BR { uint R[]; };
layout(std430, binding = 3) writeonly buffer BO { float O[]; };
layout(push_constant) uniform P { uint rows, inter, use_w, wsort_off; float limit; } p;

void main()
{
    uint row = gl_WorkGroupID.x;
    float w = p.use_w != 0u ? uintBitsToFloat(R[p.wsort_off + row]) : 1.0;
    for (uint c = gl_LocalInvocationID.x; c < p.inter; c += 64u) {
        uint o = row * p.inter + c;
        float g = G[o], u = U[o];
        if (p.limit > 0.0) { u = clamp(u, -p.limit, p.limit); g = min(g, p.limit); }
        precise float h = silu(g) * u;
        if (p.use_w != 0u) h = w * h;
        O[o] = bf16r(h);
    }
}
