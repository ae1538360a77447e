/* moe_combine: MoE.forward's sum: y = sum over the token's routed experts in
 * ascending expert order (as the official loop adds them) + the shared
 * expert, in f32, then rounded to bf16. Workgroup (token, block of 256
 * columns): a decode step's few tokens still fill the GPU.
 * The order of the token's experts and their rows of YS are found once per
 * workgroup (the k selections and route reads are the same for every
 * column; per column they were a chain of ~3k dependent memory reads), and
 * each column's k rows are loaded before they are added, in that order. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BY { float YS[]; };
layout(std430, binding = 1) readonly buffer BSH { float SH[]; };
layout(std430, binding = 2) readonly buffer BE { uint SEL[]; };
layout(std430, binding = 3) readonly buffer BR { uint R[]; };
layout(std430, binding = 4) writeonly buffer BO { float O[]; };
layout(push_constant) uniform P { uint D, k, slotpos_off; } p;
shared uint sel_s[16], pos_s[16], rows[16];

void main()
{
    uint t = gl_WorkGroupID.x, i = gl_LocalInvocationID.x, c1 = min(p.D, (gl_WorkGroupID.y + 1u) * 256u);
    if (i < p.k) {
        sel_s[i] = SEL[t * p.k + i];
        pos_s[i] = R[p.slotpos_off + t * p.k + i];
    }
    barrier();
    if (i == 0u) {
        int prev = -1;
        for (uint j = 0u; j < p.k; j++) { /* next expert in ascending order */
            uint best = 0u, be = 0xffffffffu;
            for (uint q = 0u; q < p.k; q++) {
                uint ex = sel_s[q];
                if (int(ex) > prev && ex < be) { be = ex; best = q; }
            }
            prev = int(be);
            rows[j] = pos_s[best];
        }
    }
    barrier();
    uint last = p.k - 1u;
    for (uint c = gl_WorkGroupID.y * 256u + i; c < c1; c += 64u) {
        float y = 0.0;
        for (uint j0 = 0u; j0 < p.k; j0 += 8u) {
            vec4 a, b;
            for (uint q = 0u; q < 4u; q++) {
                a[q] = YS[rows[min(j0 + q, last)] * p.D + c];
                b[q] = YS[rows[min(j0 + 4u + q, last)] * p.D + c];
            }
            for (uint q = 0u; q < 4u; q++)
                if (j0 + q < p.k) y += a[q];
            for (uint q = 0u; q < 4u; q++)
                if (j0 + 4u + q < p.k) y += b[q];
        }
        y += SH[t * p.D + c];
        O[t * p.D + c] = bf16r(y);
    }
}
