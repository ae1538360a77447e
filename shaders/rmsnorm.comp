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
#endif
layout(push_constant) uniform P { uint D, ldx, ldy, x_off, y_off; float eps; } p;
shared float xs[MAXD];
uint xb;
bool staged;
#include "rmsnorm_row.glsl"

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
    rms_row_init();
    barrier();
    rms_row(D, row * p.ldy + p.y_off, p.eps);
}
