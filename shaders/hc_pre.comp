/* hc_pre: Block.hc_pre (and, with HEAD, ParallelHead.hc_head) of model.py for
 * one token per workgroup, after hc_mix.comp: the slices' partial sums of
 * squares and products with fn are added in slice order, then f32 rsqrt of
 * the mean square over all hc*D values, mixes = (x . fn_j) * rsqrt, then
 * hc_split_sinkhorn (pre, post, comb with hc_sinkhorn_iters alternating
 * normalisations) or, for the head, pre only; y = sum_h pre_h * x_h rounded
 * to bf16. post and comb go to MIX[T][hc+hc*hc] for hc_post.
 * A decode step runs this for one token: 256 invocations write y's columns,
 * 8 columns' loads in flight together, and the slices' partial sums are
 * loaded eight at a time before they are added, in slice order.
 *
 * -DNORM (hc_head_norm; with -DQUANT hc_pre_norm_q): y stays in
 * shared memory and the workgroup goes on with the RMSNorm the block (or
 * the head) applies to it next, as rmsnorm.comp (rmsnorm_q) computes it:
 * Y receives the normed row, YQ its FP8 quant-dequant. One dispatch and one
 * barrier of a decode step's chain fewer, twice per layer. D at most MAXD;
 * with QUANT a multiple of 128. */
#version 450
#include "common.glsl"
#define MAXMIX 48
layout(local_size_x = 256) in; /* the sums on the first nmix + 1; all for y's columns */
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BF { float FN[]; };
layout(std430, binding = 2) readonly buffer BB { float BASE[]; };
layout(std430, binding = 3) readonly buffer BS { float SCALE[]; };
layout(std430, binding = 4) writeonly buffer BY { float Y[]; };
layout(std430, binding = 5) writeonly buffer BM { float MIX[]; };
layout(std430, binding = 6) readonly buffer BP { double PART[]; };
layout(push_constant) uniform P { uint D, hc, iters, x_ld; float norm_eps, hc_eps; uint splits; } p;
#ifdef NORM
layout(std430, binding = 7) readonly buffer BW { uint Wt[]; };
#ifdef QUANT
layout(std430, binding = 8) writeonly buffer BQ { float YQ[]; };
#endif
#define MAXD 7168u
shared float xs[MAXD];
uint xb = 0u;
const bool staged = true;
#include "rmsnorm_row.glsl"
#endif
#define HCMAX 6u /* hc_mult at most (cm holds hc x hc) */
#define GY 8u    /* columns of y whose loads are in flight together */
shared float tot[MAXMIX + 1];
shared float mixes[MAXMIX];
shared float cm[HCMAX * HCMAX];
shared float pre[8];
shared float rs_s;

float sigm(float x) { return div_acc(1.0, 1.0 + exp_acc(-x)); }

void main()
{
    uint tok = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    uint HD = p.hc * p.D;
#ifdef HEAD
    uint nmix = p.hc;
#else
    uint nmix = (2u + p.hc) * p.hc;
#endif
    uint xo = tok * p.x_ld;
#ifdef NORM
    rms_row_init();
#endif
    if (t <= nmix) { /* in slice order; eight slices' loads in flight at a time */
        double a = 0.0;
        uint pb = tok * p.splits * (nmix + 1u) + t, last = p.splits - 1u;
        for (uint s0 = 0u; s0 < p.splits; s0 += 8u) {
            dvec4 va, vb;
            for (uint k = 0u; k < 4u; k++) {
                va[k] = PART[pb + min(s0 + k, last) * (nmix + 1u)];
                vb[k] = PART[pb + min(s0 + 4u + k, last) * (nmix + 1u)];
            }
            for (uint k = 0u; k < 4u; k++)
                if (s0 + k < p.splits) a += va[k];
            for (uint k = 0u; k < 4u; k++)
                if (s0 + 4u + k < p.splits) a += vb[k];
        }
        tot[t] = float(a);
    }
    barrier();
    /* the mixes, sigmoids and hc_split_sinkhorn spread over the invocations:
       (j, k) of the hc x hc comb matrix is invocation j * hc + k, and every
       row or column sum still runs in index order, so the bits are those of
       one invocation doing it all (which took ~0.1 ms per call on a GPU: a
       decode step's serial chain of double-precision divisions) */
    uint hc = p.hc;
    if (t == 0u) rs_s = rsqrt_acc(div_acc(tot[nmix], float(HD)) + p.norm_eps);
    barrier();
    if (t < nmix) mixes[t] = tot[t] * rs_s;
    barrier();
    if (t < hc) pre[t] = sigm(mixes[t] * SCALE[0] + BASE[t]) + p.hc_eps;
#ifndef HEAD
    uint mb = tok * (hc + hc * hc), nc = hc * hc, j = t / hc, k = t % hc;
    if (t >= hc && t < 2u * hc) MIX[mb + t - hc] = 2.0 * sigm(mixes[t] * SCALE[1] + BASE[t]);
    if (t < nc) cm[t] = mixes[2u * hc + t] * SCALE[2] + BASE[2u * hc + t];
    barrier();
    float own = 0.0;
    if (t < nc) {
        float mx = -1e30;
        for (uint q = 0u; q < hc; q++) mx = max(mx, cm[j * hc + q]);
        own = exp_acc(cm[t] - mx);
    }
    barrier();
    if (t < nc) cm[t] = own;
    barrier();
    if (t < nc) {
        float sm = 0.0;
        for (uint q = 0u; q < hc; q++) sm += cm[j * hc + q];
        own = div_acc(cm[t], sm) + p.hc_eps;
    }
    barrier();
    if (t < nc) cm[t] = own;
    barrier();
    for (uint it = 0u; it < p.iters; it++) {
        if (it > 0u) {
            if (t < nc) {
                float rsum = 0.0;
                for (uint q = 0u; q < hc; q++) rsum += cm[j * hc + q];
                own = div_acc(cm[t], rsum + p.hc_eps);
            }
            barrier();
            if (t < nc) cm[t] = own;
            barrier();
        }
        if (t < nc) {
            float csum = 0.0;
            for (uint q = 0u; q < hc; q++) csum += cm[q * hc + k];
            own = div_acc(cm[t], csum + p.hc_eps);
        }
        barrier();
        if (t < nc) cm[t] = own;
        barrier();
    }
    if (t < nc) MIX[mb + hc + t] = cm[t];
#endif
    barrier();
    /* y's columns c = t + 256 i, GY at a time with all their hc values
       loaded before any is added (one column at a time, a decode token's
       columns were 16 dependent rounds of loads); each y adds h in order */
    for (uint c0 = t; c0 < p.D; c0 += 256u * GY) {
        float xv[GY * HCMAX];
        for (uint i = 0u; i < GY; i++)
            for (uint h = 0u; h < HCMAX; h++)
                xv[i * HCMAX + h] = h < p.hc ? X[xo + h * p.D + min(c0 + 256u * i, p.D - 1u)] : 0.0;
        for (uint i = 0u; i < GY; i++) {
            uint c = c0 + 256u * i;
            precise float y = 0.0;
            for (uint h = 0u; h < HCMAX; h++)
                if (h < p.hc) y += pre[h] * xv[i * HCMAX + h];
            if (c >= p.D) continue;
#ifdef NORM
            xs[c] = bf16r(y);
#else
            Y[tok * p.D + c] = bf16r(y);
#endif
        }
    }
#ifdef NORM
    barrier();
    rms_row(p.D, tok * p.D, p.norm_eps);
#endif
}
