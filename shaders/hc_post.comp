/* hc_post: Block.hc_post of model.py: out[k] = post[k] * x + sum_j comb[j][k]
 * * residual[j] in f32, rounded to bf16, for hc copies of D values per token.
 * OUT may not alias RES. Workgroup (token, block of 256 columns): a decode
 * step's few tokens still fill the GPU. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BR { float RES[]; };
layout(std430, binding = 2) readonly buffer BM { float MIX[]; };
layout(std430, binding = 3) writeonly buffer BO { float O[]; };
layout(push_constant) uniform P { uint D, hc; } p;

void main()
{
    uint tok = gl_WorkGroupID.x, t = gl_LocalInvocationID.x, hc = p.hc;
    uint mb = tok * (hc + hc * hc), rb = tok * hc * p.D, c1 = min(p.D, (gl_WorkGroupID.y + 1u) * 256u);
    for (uint c = gl_WorkGroupID.y * 256u + t; c < c1; c += 64u) {
        float x = X[tok * p.D + c];
        for (uint k = 0u; k < hc; k++) {
            precise float s = 0.0;
            for (uint j = 0u; j < hc; j++) s += MIX[mb + hc + j * hc + k] * RES[rb + j * p.D + c];
            precise float o = MIX[mb + k] * x + s;
            O[rb + k * p.D + c] = bf16r(o);
        }
    }
}
