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
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BF { float FN[]; };
layout(std430, binding = 2) writeonly buffer BP { double PART[]; };
layout(push_constant) uniform P { uint D, hc, x_ld, splits; } p;
shared double red[9][64]; /* eight mixes' lane sums and the sum of squares, for the tree */

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
    uint xb = tok * p.x_ld, ob = (tok * p.splits + sl) * (nmix + 1u);
    /* eight mixes at a time, each lane's sums in registers (constant indices:
       a private array indexed by a loop variable goes to slow local memory
       on GPUs), fn's eight values loaded before any is used; per mix the
       lane adds its columns in order, then the pairwise tree over the lanes,
       the order the sums always had. (An earlier version kept all nmix sums
       of every lane in shared memory: 25 KiB per workgroup, few workgroups
       per multiprocessor, which made 1024-token passes slower than before
       the split.) Products of two f32 values are exact in double, so a fused
       multiply-add gives the bits of the separate operations. */
    for (uint j0 = 0u; j0 < nmix; j0 += 8u) {
        dvec4 a0 = dvec4(0.0), a1 = dvec4(0.0);
        double ss = 0.0;
        for (uint c = c0 + t; c < c1; c += 64u) {
            double v = double(X[xb + c]);
            if (j0 == 0u) ss += v * v;
            vec4 fa, fb;
            for (uint k = 0u; k < 4u; k++) {
                fa[k] = FN[min(j0 + k, nmix - 1u) * HD + c];
                fb[k] = FN[min(j0 + 4u + k, nmix - 1u) * HD + c];
            }
            for (uint k = 0u; k < 4u; k++) {
                a0[k] += v * double(fa[k]);
                a1[k] += v * double(fb[k]);
            }
        }
        for (uint k = 0u; k < 4u; k++) {
            red[k][t] = a0[k];
            red[4u + k][t] = a1[k];
        }
        red[8][t] = ss;
        barrier();
        for (uint k = 32u; k > 0u; k >>= 1) {
            if (t < k)
                for (uint q = 0u; q < 9u; q++) red[q][t] += red[q][t + k];
            barrier();
        }
        if (t < 8u && j0 + t < nmix) PART[ob + j0 + t] = red[t][0];
        if (t == 8u && j0 == 0u) PART[ob + nmix] = red[8][0];
        barrier(); /* the next round's lane sums replace these */
    }
}
