/* hc_mix: the products that start Block.hc_pre (and, with HEAD,
 * ParallelHead.hc_head) of model.py, split: for one token and one of
 * `splits` slices of its hc*D values, the partial sum of squares and the
 * partial products with each of the nmix rows of fn, into
 * PART[token][slice][nmix + 1] (the sum of squares last), in double: the
 * products of f32 values are exact in double and the sums lose far less than
 * an f32 ulp, so the f32 result is (nearly always) the correctly rounded dot
 * product, rather than one more f32 summation order (the official F.linear
 * has its own; a float version failed a golden threshold). hc_pre.comp adds
 * the slices in order and finishes. One workgroup per token would leave a
 * decode step (one token) with one busy workgroup reading 1.5 MB of fn; the
 * split spreads that over the GPU. The split count is fixed by the caller,
 * so a token's result never depends on how many tokens share the pass. */
#version 450
#define MAXMIX 48
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BF { float FN[]; };
layout(std430, binding = 2) writeonly buffer BP { double PART[]; };
layout(push_constant) uniform P { uint D, hc, x_ld, splits; } p;
shared double part[MAXMIX + 1][64];

void main()
{
    uint tok = gl_WorkGroupID.x, sl = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
    uint HD = p.hc * p.D;
#ifdef HEAD
    uint nmix = p.hc;
#else
    uint nmix = (2u + p.hc) * p.hc;
#endif
    uint len = (HD + p.splits - 1u) / p.splits;
    uint c0 = sl * len, c1 = min(c0 + len, HD);
    uint xb = tok * p.x_ld;
    /* the per-mix sums live in shared memory, not in a private array: a
       private array indexed by a loop variable goes to slow local memory on
       GPUs (that made this shader 13x slower than the rest of hc_pre) */
    double ss = 0.0;
    for (uint j = 0u; j < nmix; j++) part[j][t] = 0.0;
    /* fn's values for eight mixes are loaded before any is used: one after
       the other, each a memory latency, a decode step's slice spent ~30 us
       waiting (the sums and their order are the same) */
    for (uint c = c0 + t; c < c1; c += 64u) {
        double v = double(X[xb + c]);
        ss += v * v;
        for (uint j0 = 0u; j0 < nmix; j0 += 8u) {
            vec4 fa, fb;
            for (uint k = 0u; k < 4u; k++) {
                fa[k] = FN[min(j0 + k, nmix - 1u) * HD + c];
                fb[k] = FN[min(j0 + 4u + k, nmix - 1u) * HD + c];
            }
            for (uint k = 0u; k < 4u; k++) {
                if (j0 + k < nmix) part[j0 + k][t] += v * double(fa[k]);
                if (j0 + 4u + k < nmix) part[j0 + 4u + k][t] += v * double(fb[k]);
            }
        }
    }
    part[MAXMIX][t] = ss;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) {
            part[MAXMIX][t] += part[MAXMIX][t + k];
            for (uint j = 0u; j < nmix; j++) part[j][t] += part[j][t + k];
        }
        barrier();
    }
    uint ob = (tok * p.splits + sl) * (nmix + 1u);
    if (t < nmix) PART[ob + t] = part[t][0];
    if (t == nmix) PART[ob + nmix] = part[MAXMIX][0];
}
