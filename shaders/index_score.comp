/* index_score: the lightning indexer's score of Indexer.forward: for token t
 * at position pos and compressed entry i < (pos + 1) / ratio,
 * score = sum_h relu(q[t,h] . K[i]) * w[t,h], with the bf16 roundings of the
 * official einsum / product / sum; entries not yet visible get -inf. Grid:
 * x = blocks of 64 entries, y = token of the segment. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BQ { float Q[]; };
layout(std430, binding = 1) readonly buffer BW { float WT[]; };
layout(std430, binding = 2) readonly buffer BK { float K[]; };
layout(std430, binding = 3) writeonly buffer BO { float S[]; };
/* entries i < base_rows: a fork's shared prefix (row i here); K holds
   entries i >= base_rows at i - base_rows (docs/engine.md) */
layout(std430, binding = 4) readonly buffer BB { float BASE[]; };
layout(push_constant) uniform P { uint nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint n_tok, base_rows; } p;

float key(uint i, uint c) { return i < p.base_rows ? BASE[i * p.hd + c] : K[(i - p.base_rows) * p.hd + c]; }

void main()
{
    uint tl = gl_WorkGroupID.y, t = p.t0 + tl;
    uint i = gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x;
    if (i >= p.n_max) return;
    uint pos = p.p0 + tl;
    uint n = (pos + 1u) / p.ratio;
    float r = -1.0 / 0.0;
    if (i < n) {
        float sum = 0.0;
        for (uint h = 0u; h < p.nh; h++) {
            float dot = 0.0;
            uint qb = (t * p.nh + h) * p.hd;
            for (uint c = 0u; c < p.hd; c++) dot += Q[qb + c] * key(i, c);
            float w = bf16r(WT[t * p.nh + h] * p.wscale);
            sum += bf16r(max(bf16r(dot), 0.0) * w);
        }
        r = bf16r(sum);
    }
    S[tl * p.ld_s + i] = r;
}
