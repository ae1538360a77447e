/* index_score_tok: index_score.comp's lightning-indexer score (same bf16
 * roundings, same order: each dot over dims 0..127, the head sum over heads
 * 0..nh-1, so the same bits) for segments of one or a few tokens (decode),
 * where index_score_tile's 8-token tiles would be mostly empty. One token
 * per workgroup and one entry per thread: the token's queries of all heads
 * are staged once in shared memory (f32, 32 KiB at 64 heads) and read as
 * broadcasts, the entry's key row is loaded once into registers (index_score
 * re-read it from memory for every head). index_head_dim must be 128 and
 * index_n_heads at most 64. Grid: x = blocks of 64 entries, y = token of the
 * sub-batch. */
#version 450
#include "common.glsl"
#define HD4 32u   /* index_head_dim / 4 */
#define NHMAX 64u
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BQ { vec4 Q[]; };
layout(std430, binding = 1) readonly buffer BW { float WT[]; };
layout(std430, binding = 2) readonly buffer BK { vec4 K[]; };
layout(std430, binding = 3) writeonly buffer BO { float S[]; };
/* entries i < base_rows: a fork's shared prefix (row i here); K holds
   entries i >= base_rows at i - base_rows (docs/engine.md) */
layout(std430, binding = 4) readonly buffer BB { vec4 BASE[]; };
layout(push_constant) uniform P { uint nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint n_tok, base_rows; } p;
shared vec4 Qs[NHMAX * HD4];

void main()
{
    uint t = gl_LocalInvocationID.x, a = gl_WorkGroupID.y, tok = p.t0 + a;
    uint i = gl_WorkGroupID.x * 64u + t;
    for (uint x = t; x < p.nh * HD4; x += 64u) Qs[x] = Q[tok * p.nh * HD4 + x];
    barrier();
    if (i >= p.n_max) return;
    uint n = (p.p0 + a + 1u) / p.ratio;
    float r = -1.0 / 0.0;
    if (i < n) {
        vec4 k[HD4];
        for (uint c = 0u; c < HD4; c++) k[c] = i < p.base_rows ? BASE[i * HD4 + c] : K[(i - p.base_rows) * HD4 + c];
        float sum = 0.0;
        for (uint h = 0u; h < p.nh; h++) {
            float d = 0.0;
            for (uint c = 0u; c < HD4; c++) {
                vec4 q = Qs[h * HD4 + c];
                d += q.x * k[c].x;
                d += q.y * k[c].y;
                d += q.z * k[c].z;
                d += q.w * k[c].w;
            }
            float w = bf16r(WT[tok * p.nh + h] * p.wscale);
            sum += bf16r(max(bf16r(d), 0.0) * w);
        }
        r = bf16r(sum);
    }
    S[a * p.ld_s + i] = r;
}
