/* hc_pre: Block.hc_pre (and, with HEAD, ParallelHead.hc_head) of model.py for
 * one token per workgroup, after hc_mix.comp: the slices' partial sums of
 * squares and products with fn are added in slice order, then f32 rsqrt of
 * the mean square over all hc*D values, mixes = (x . fn_j) * rsqrt, then
 * hc_split_sinkhorn (pre, post, comb with hc_sinkhorn_iters alternating
 * normalisations) or, for the head, pre only; y = sum_h pre_h * x_h rounded
 * to bf16. post and comb go to MIX[T][hc+hc*hc] for hc_post. */
#version 450
#include "common.glsl"
#define MAXMIX 48
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BF { float FN[]; };
layout(std430, binding = 2) readonly buffer BB { float BASE[]; };
layout(std430, binding = 3) readonly buffer BS { float SCALE[]; };
layout(std430, binding = 4) writeonly buffer BY { float Y[]; };
layout(std430, binding = 5) writeonly buffer BM { float MIX[]; };
layout(std430, binding = 6) readonly buffer BP { double PART[]; };
layout(push_constant) uniform P { uint D, hc, iters, x_ld; float norm_eps, hc_eps; uint splits; } p;
shared float tot[MAXMIX + 1];
shared float pre[8];

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
    uint xb = tok * p.x_ld;
    if (t <= nmix) {
        double a = 0.0;
        for (uint sl = 0u; sl < p.splits; sl++) a += PART[(tok * p.splits + sl) * (nmix + 1u) + t];
        tot[t] = float(a);
    }
    barrier();
    if (t == 0u) {
        float rs = rsqrt_acc(div_acc(tot[nmix], float(HD)) + p.norm_eps);
        float mixes[MAXMIX];
        for (uint j = 0u; j < nmix; j++) mixes[j] = tot[j] * rs;
        uint hc = p.hc;
        for (uint j = 0u; j < hc; j++) pre[j] = sigm(mixes[j] * SCALE[0] + BASE[j]) + p.hc_eps;
#ifndef HEAD
        uint mb = tok * (hc + hc * hc);
        for (uint j = 0u; j < hc; j++) MIX[mb + j] = 2.0 * sigm(mixes[hc + j] * SCALE[1] + BASE[hc + j]);
        float cm[36];
        for (uint j = 0u; j < hc; j++) {
            float mx = -1e30;
            for (uint k = 0u; k < hc; k++) {
                cm[j * hc + k] = mixes[2u * hc + j * hc + k] * SCALE[2] + BASE[2u * hc + j * hc + k];
                mx = max(mx, cm[j * hc + k]);
            }
            float sm = 0.0;
            for (uint k = 0u; k < hc; k++) { cm[j * hc + k] = exp_acc(cm[j * hc + k] - mx); sm += cm[j * hc + k]; }
            for (uint k = 0u; k < hc; k++) cm[j * hc + k] = div_acc(cm[j * hc + k], sm) + p.hc_eps;
        }
        for (uint it = 0u; it < p.iters; it++) {
            if (it > 0u)
                for (uint j = 0u; j < hc; j++) {
                    float rsum = 0.0;
                    for (uint k = 0u; k < hc; k++) rsum += cm[j * hc + k];
                    for (uint k = 0u; k < hc; k++) cm[j * hc + k] = div_acc(cm[j * hc + k], rsum + p.hc_eps);
                }
            for (uint k = 0u; k < hc; k++) {
                float csum = 0.0;
                for (uint j = 0u; j < hc; j++) csum += cm[j * hc + k];
                for (uint j = 0u; j < hc; j++) cm[j * hc + k] = div_acc(cm[j * hc + k], csum + p.hc_eps);
            }
        }
        for (uint j = 0u; j < hc * hc; j++) MIX[mb + hc + j] = cm[j];
#endif
    }
    barrier();
    for (uint c = t; c < p.D; c += 64u) {
        precise float y = 0.0;
        for (uint h = 0u; h < p.hc; h++) y += pre[h] * X[xb + h * p.D + c];
        Y[tok * p.D + c] = bf16r(y);
    }
}
