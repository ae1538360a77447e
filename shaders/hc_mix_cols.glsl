/* hc_mix_cols.glsl: hc_mix.comp's partial sums for a slice of 256 columns of
 * a token's hc x D values that the workgroup's 64 invocations have just
 * computed, 4 each (columns fcol + t + 64 i, i = 0..3: the columns an
 * hc_mix lane visits, in the order it visits them). The caller then skips
 * the hc_mix dispatch, and one barrier of the chain, before hc_pre: it
 * applies where hc_mix's slices are 256 columns, i.e. splits = hc * D / 256.
 * The including shader declares FN[] (the next hc_pre's fn, [nmix][hc*D])
 * and PART[] (double), as hc_mix.comp does. Every invocation of the
 * workgroup calls mix_cols with the same nmix, HD and ob. */
shared double mred[9][64]; /* eight mixes' lane sums and the sum of squares, for the tree */

void mix_cols(vec4 v, uint nmix, uint HD, uint fcol, uint ob)
{
    uint t = gl_LocalInvocationID.x;
    for (uint j0 = 0u; j0 < nmix; j0 += 8u) {
        dvec4 a0 = dvec4(0.0), a1 = dvec4(0.0);
        double ss = 0.0;
        for (uint i = 0u; i < 4u; i++) {
            uint c = fcol + t + 64u * i;
            double x = double(v[i]);
            if (j0 == 0u) ss += x * x;
            vec4 fa, fb;
            for (uint k = 0u; k < 4u; k++) {
                fa[k] = FN[min(j0 + k, nmix - 1u) * HD + c];
                fb[k] = FN[min(j0 + 4u + k, nmix - 1u) * HD + c];
            }
            for (uint k = 0u; k < 4u; k++) {
                a0[k] += x * double(fa[k]);
                a1[k] += x * double(fb[k]);
            }
        }
        for (uint k = 0u; k < 4u; k++) {
            mred[k][t] = a0[k];
            mred[4u + k][t] = a1[k];
        }
        mred[8][t] = ss;
        barrier();
        for (uint k = 32u; k > 0u; k >>= 1) {
            if (t < k)
                for (uint q = 0u; q < 9u; q++) mred[q][t] += mred[q][t + k];
            barrier();
        }
        if (t < 8u && j0 + t < nmix) PART[ob + j0 + t] = mred[t][0];
        if (t == 8u && j0 == 0u) PART[ob + nmix] = mred[8][0];
        barrier(); /* the next round's lane sums replace these */
    }
}
