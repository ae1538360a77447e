/* hc_post: Block.hc_post of model.py: out[k] = post[k] * x + sum_j comb[j][k]
 * * residual[j] in f32, rounded to bf16, for hc copies of D values per token.
 * OUT may not alias RES. Workgroup (token, block of 256 columns, copy k): a
 * decode step's few tokens still fill the GPU.
 *
 * -DFUSE_MIX (hc_post_mix): also the next hc_pre's hc_mix partial sums of the
 * result (hc_mix_cols.glsl) into PART, with that hc_pre's fn; D a multiple
 * of 256 (each copy's 256 columns of the workgroup are one hc_mix slice). */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BR { float RES[]; };
layout(std430, binding = 2) readonly buffer BM { float MIX[]; };
layout(std430, binding = 3) writeonly buffer BO { float O[]; };
layout(push_constant) uniform P { uint D, hc; } p;
#ifdef FUSE_MIX
layout(std430, binding = 4) readonly buffer BF { float FN[]; };
layout(std430, binding = 5) writeonly buffer BP { double PART[]; };
#include "hc_mix_cols.glsl"
#endif

/* out[k] of column c */
float post_col(uint tok, uint k, uint c)
{
    uint hc = p.hc, mb = tok * (hc + hc * hc), rb = tok * hc * p.D;
    precise float s = 0.0;
    for (uint j = 0u; j < hc; j++) s += MIX[mb + hc + j * hc + k] * RES[rb + j * p.D + c];
    precise float o = MIX[mb + k] * X[tok * p.D + c] + s;
    return bf16r(o);
}

void main()
{
    uint tok = gl_WorkGroupID.x, t = gl_LocalInvocationID.x, k = gl_WorkGroupID.z, hc = p.hc;
    uint rb = tok * hc * p.D, c0 = gl_WorkGroupID.y * 256u;
    /* the invocation's four columns computed before any is stored, so their
       loads are in flight together (a store could alias a later load) */
    vec4 v;
    for (uint i = 0u; i < 4u; i++) v[i] = post_col(tok, k, min(c0 + t + 64u * i, p.D - 1u));
    for (uint i = 0u; i < 4u; i++)
        if (c0 + t + 64u * i < p.D) O[rb + k * p.D + c0 + t + 64u * i] = v[i];
#ifdef FUSE_MIX
    uint HD = hc * p.D, nmix = (2u + hc) * hc, splits = HD / 256u, sl = k * (p.D / 256u) + gl_WorkGroupID.y;
    mix_cols(v, nmix, HD, k * p.D + c0, (tok * splits + sl) * (nmix + 1u));
#endif
}
