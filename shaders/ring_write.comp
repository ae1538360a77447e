/* ring_write: keeps a sequence's ring of the last L tokens on the GPU: rows
 * of this call's positions [max(p0, p1 - L), p1) go to ring row q % L, at
 * column col_off, optionally plus ape[q % ratio] (compressor scores are
 * stored with their position bias added, as Compressor.forward keeps
 * score_state). Grid x: rows written. */
#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BS { float SRC[]; };
layout(std430, binding = 1) buffer BR { float RING[]; };
layout(std430, binding = 2) readonly buffer BA { float APE[]; };
layout(push_constant) uniform P { uint width, lds, ldr, col_off, L, q0, p0, t0, use_ape, ratio; } p;

void main()
{
    uint q = p.q0 + gl_WorkGroupID.x;
    uint src = (p.t0 + q - p.p0) * p.lds, dst = (q % p.L) * p.ldr + p.col_off;
    for (uint c = gl_LocalInvocationID.x; c < p.width; c += 64u) {
        float v = SRC[src + c];
        if (p.use_ape != 0u) v += APE[(q % p.ratio) * p.width + c];
        RING[dst + c] = v;
    }
}
