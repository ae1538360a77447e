/* rmsnorm: RMSNorm.forward of model.py over rows of D values: f32 mean of
 * squares, x * rsqrt(var + eps) * weight (weight stored bf16), result rounded
 * to bf16. One workgroup per row.
 *
 * -DQUANT (rmsnorm_q) also writes YQ: the result FP8-quant-dequantized in
 * 128-column blocks exactly as act_quant.comp mode 0 does it (the block's
 * amax of the bf16 results, power-of-two scale, e4m3, bf16), so the norm
 * before an FP8 GEMM is one dispatch instead of two. D must be a multiple of
 * 128 and at most 64 blocks; YQ may be the same buffer as X (each row reads
 * all of X before the barrier that precedes its YQ writes).
 *
 * Latency (a decode step runs this on one row): the sum of squares has one
 * fixed order, 64 lanes each adding the columns c = lane + 64 i in order,
 * then a pairwise tree over the lanes; the same for every row count and
 * device. What made one row take ~30 us on a GPU was not that order but the
 * waits around it: each of 64 invocations loaded its 64 values one after the
 * other, every value of a block was an atomicMax on one shared word (64-way
 * contention, 4096 in a row), and X and the weights were read three times.
 * Now 256 invocations stage the row in shared memory, four independent loads
 * at a time (rows of up to MAXD values; longer rows read X where they need
 * it, in the same order), the 64 lanes add from there, each block's amax is
 * four invocations' maxima (a maximum is one value in any order), and the
 * bf16 results of rmsnorm_q stay in shared memory for the writes. */
#version 450
#include "common.glsl"
#define MAXD 7168u /* V4-Pro's hidden size: 28 KiB, inside a CPU driver's 32 KiB */
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BW { uint Wt[]; };
layout(std430, binding = 2) writeonly buffer BY { float Y[]; };
#ifdef QUANT
layout(std430, binding = 3) writeonly buffer BQ { float YQ[]; };
shared uint amax[64]; /* per 128-column block: the bits of max |y| (non-negative floats order as uints) */
#endif
layout(push_constant) uniform P { uint D, ldx, ldy, x_off, y_off; float eps; } p;
shared float red[64];
shared float xs[MAXD];

uint xb;
bool staged;

float xv(uint c) { return staged ? xs[c] : X[xb + c]; }

float wat(uint c) { return bf16_at(Wt[c >> 1], c & 1u); }

/* the bf16 result of column c, weight w */
float ynorm(uint c, float w, float r)
{
    precise float y = w * (xv(c) * r);
    return bf16r(y);
}

void main()
{
    uint row = gl_WorkGroupID.x, t = gl_LocalInvocationID.x, D = p.D, last = D - 1u;
    xb = row * p.ldx + p.x_off;
    staged = D <= MAXD;
    if (staged)
        for (uint c0 = t; c0 < D; c0 += 1024u) {
            vec4 a; /* four loads in flight before the first store */
            for (uint k = 0u; k < 4u; k++) a[k] = X[xb + min(c0 + 256u * k, last)];
            for (uint k = 0u; k < 4u; k++)
                if (c0 + 256u * k < D) xs[c0 + 256u * k] = a[k];
        }
#ifdef QUANT
    if (t < 64u) amax[t] = 0u;
#endif
    barrier();
    if (t < 64u) {
        precise float s = 0.0;
        for (uint c0 = t; c0 < D; c0 += 256u) {
            vec4 a;
            for (uint k = 0u; k < 4u; k++) a[k] = xv(min(c0 + 64u * k, last));
            for (uint k = 0u; k < 4u; k++)
                if (c0 + 64u * k < D) s += a[k] * a[k];
        }
        red[t] = s;
    }
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] += red[t + k];
        barrier();
    }
    float r = rsqrt_acc(div_acc(red[0], float(D)) + p.eps);
#ifdef QUANT
    /* block b's 128 columns: four invocations, 32 columns each (the order of
       the 32 skewed by b, so a subgroup's eight blocks use distinct banks);
       with the row staged the bf16 results replace it in xs (each column is
       read and written by its one invocation) */
    uint b = t >> 2;
    if (b < D >> 7) {
        uint m = 0u;
        for (uint i0 = 0u; i0 < 32u; i0 += 4u) {
            vec4 w4; /* the weights of four columns in flight at a time */
            for (uint k = 0u; k < 4u; k++) w4[k] = wat(b * 128u + (t & 3u) + 4u * ((i0 + k + b) & 31u));
            for (uint k = 0u; k < 4u; k++) {
                uint c = b * 128u + (t & 3u) + 4u * ((i0 + k + b) & 31u);
                float yb = ynorm(c, w4[k], r);
                if (staged) xs[c] = yb;
                m = max(m, floatBitsToUint(abs(yb)));
            }
        }
        atomicMax(amax[b], m);
    }
    barrier();
#endif
    uint yrow = row * p.ldy + p.y_off;
    for (uint c0 = t; c0 < D; c0 += 1024u) {
        vec4 y4;
        for (uint k = 0u; k < 4u; k++) {
            uint c = min(c0 + 256u * k, last);
#ifdef QUANT
            y4[k] = staged ? xs[c] : ynorm(c, wat(c), r);
#else
            y4[k] = ynorm(c, wat(c), r);
#endif
        }
        for (uint k = 0u; k < 4u; k++) {
            uint c = c0 + 256u * k;
            if (c >= D) continue;
            Y[yrow + c] = y4[k];
#ifdef QUANT
            float sc = pow2_ceil(max(uintBitsToFloat(amax[c >> 7]), 1e-4) * (1.0 / 448.0));
            YQ[yrow + c] = bf16r(fp8_qdq(y4[k], sc));
#endif
        }
    }
}
