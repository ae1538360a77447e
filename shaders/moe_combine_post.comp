/* moe_combine_post: MoE.forward's sum, then Block.hc_post on it: y = sum
 * over the token's routed experts in ascending expert order (as the official
 * loop adds them) + the shared expert, in f32, rounded to bf16; then, as
 * hc_post.comp computes it, O[k] = post[k] * y + sum_j comb[j][k] * RES[j],
 * rounded to bf16 (one dispatch and one barrier of a decode step's chain
 * fewer per layer than the two apart). Workgroup (token, block of 256
 * columns, copy k): a decode step's few tokens still fill the GPU (each
 * copy's workgroup adds the experts' rows itself: k rows of 256 columns).
 * The order of the token's experts and their rows of YS are found once per
 * workgroup (the k selections and route reads are the same for every
 * column; per column they were a chain of ~3k dependent memory reads), and
 * each column's k rows are loaded before they are added, in that order.
 *
 * -DFUSE_MIX (moe_combine_post_mix): also the next block's hc_mix partial sums of
 * the result (hc_mix_cols.glsl) into PART, with its fn; D a multiple of 256. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BY { float YS[]; };
layout(std430, binding = 1) readonly buffer BSH { float SH[]; };
layout(std430, binding = 2) readonly buffer BE { uint SEL[]; };
layout(std430, binding = 3) readonly buffer BR { uint R[]; };
layout(std430, binding = 4) writeonly buffer BO { float O[]; };
layout(std430, binding = 5) readonly buffer BRES { float RES[]; };
layout(std430, binding = 6) readonly buffer BM { float MIX[]; };
layout(push_constant) uniform P { uint D, k, slotpos_off, hc; } p;
#ifdef FUSE_MIX
layout(std430, binding = 7) readonly buffer BF { float FN[]; };
layout(std430, binding = 8) writeonly buffer BP { double PART[]; };
#include "hc_mix_cols.glsl"
#endif
shared uint sel_s[16], pos_s[16], rows[16];

/* the bf16 sum of token t's experts' rows (rows[], ascending expert order)
   and its shared expert's, column c */
float expert_sum(uint t, uint c)
{
    uint last = p.k - 1u;
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
    return bf16r(y);
}

/* hc_post's out[k] of column c for the sum x */
float post_col(uint t, uint k, uint c, float x)
{
    uint hc = p.hc, mb = t * (hc + hc * hc), rb = t * hc * p.D;
    precise float s = 0.0;
    for (uint j = 0u; j < hc; j++) s += MIX[mb + hc + j * hc + k] * RES[rb + j * p.D + c];
    precise float o = MIX[mb + k] * x + s;
    return bf16r(o);
}

void main()
{
    uint t = gl_WorkGroupID.x, i = gl_LocalInvocationID.x;
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
    uint hc = p.hc, k = gl_WorkGroupID.z, rb = t * hc * p.D, c0 = gl_WorkGroupID.y * 256u;
    /* the invocation's four columns computed before any is stored, so their
       loads are in flight together (a store could alias a later load) */
    vec4 v;
    for (uint q = 0u; q < 4u; q++) {
        uint c = min(c0 + i + 64u * q, p.D - 1u);
        v[q] = post_col(t, k, c, expert_sum(t, c));
    }
    for (uint q = 0u; q < 4u; q++)
        if (c0 + i + 64u * q < p.D) O[rb + k * p.D + c0 + i + 64u * q] = v[q];
#ifdef FUSE_MIX
    uint HD = hc * p.D, nmix = (2u + hc) * hc, splits = HD / 256u, sl = k * (p.D / 256u) + gl_WorkGroupID.y;
    mix_cols(v, nmix, HD, k * p.D + c0, (t * splits + sl) * (nmix + 1u));
#endif
}
