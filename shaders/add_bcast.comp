/* add_bcast: MTPBlock.forward's e_proj(e).unsqueeze(2) + h_proj(h):
 * X[t][h][c] = bf16(A[t][c] + B[t][h][c]). */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BA { float A[]; };
layout(std430, binding = 1) readonly buffer BB { float B[]; };
layout(std430, binding = 2) writeonly buffer BX { float X[]; };
layout(push_constant) uniform P { uint D, hc; } p;

void main()
{
    uint t = gl_WorkGroupID.x;
    for (uint c = gl_LocalInvocationID.x; c < p.D; c += 64u)
        for (uint h = 0u; h < p.hc; h++) {
            uint o = (t * p.hc + h) * p.D + c;
            X[o] = bf16r(A[t * p.D + c] + B[o]);
        }
}
