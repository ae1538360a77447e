/* moe_combine: MoE.forward's sum: y = sum over the token's routed experts in
 * ascending expert order (as the official loop adds them) + the shared
 * expert, in f32, then rounded to bf16. Workgroup (token, block of 256
 * columns): a decode step's few tokens still fill the GPU. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BY { float YS[]; };
layout(std430, binding = 1) readonly buffer BSH { float SH[]; };
layout(std430, binding = 2) readonly buffer BE { uint SEL[]; };
layout(std430, binding = 3) readonly buffer BR { uint R[]; };
layout(std430, binding = 4) writeonly buffer BO { float O[]; };
layout(push_constant) uniform P { uint D, k, slotpos_off; } p;

void main()
{
    uint t = gl_WorkGroupID.x, c1 = min(p.D, (gl_WorkGroupID.y + 1u) * 256u);
    for (uint c = gl_WorkGroupID.y * 256u + gl_LocalInvocationID.x; c < c1; c += 64u) {
        float y = 0.0;
        int prev = -1;
        for (uint j = 0u; j < p.k; j++) { /* next expert in ascending order */
            uint best = 0u, be = 0xffffffffu;
            for (uint q = 0u; q < p.k; q++) {
                uint ex = SEL[t * p.k + q];
                if (int(ex) > prev && ex < be) { be = ex; best = q; }
            }
            prev = int(be);
            y += YS[R[p.slotpos_off + t * p.k + best] * p.D + c];
        }
        y += SH[t * p.D + c];
        O[t * p.D + c] = bf16r(y);
    }
}
