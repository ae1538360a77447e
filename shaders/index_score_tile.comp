/* index_score_tile: index_score.comp's lightning-indexer score as a tiled
 * product: score[t][i] = sum_h relu(q[t,h] . K[i]) * w[t,h] with the same
 * bf16 roundings and the same order (each dot over dims 0..hd-1, the head
 * sum over heads 0..nh-1), so the same bits. A workgroup takes TT = 8 tokens
 * x EB = 32 entries: the entries' key rows are staged once in shared memory
 * and each head's 8 query rows in turn, and each thread keeps 2 tokens x 2
 * entries of dots and head sums in registers (index_score.comp re-read every
 * key row for each head and token from global memory). Grid: x = blocks of
 * 32 entries, y = blocks of 8 tokens of the sub-batch (n_tok of them);
 * entries not yet visible to a token get -inf, entries >= n_max are not
 * written. index_head_dim must be a multiple of 4 and at most HDMAX. */
#version 450
#include "common.glsl"
#define TT 8u
#define EB 32u
#define HDMAX 128u
#define H4 (HDMAX / 4u)
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BQ { float Q[]; };
layout(std430, binding = 1) readonly buffer BW { float WT[]; };
layout(std430, binding = 2) readonly buffer BK { float K[]; };
layout(std430, binding = 3) writeonly buffer BO { float S[]; };
/* entries i < base_rows: a fork's shared prefix (row i here); K holds
   entries i >= base_rows at i - base_rows (docs/engine.md) */
layout(std430, binding = 4) readonly buffer BB { float BASE[]; };
layout(push_constant) uniform P { uint nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint n_tok, base_rows; } p;
/* entry row e, float4 column c lives at e * H4 + (c ^ (e & 7)): a warp's
   threads read 8 different rows at once, the XOR puts them in distinct banks */
shared vec4 Ks[EB * H4];
shared vec4 Qs[TT * H4];

void main()
{
    uint t = gl_LocalInvocationID.x, i0 = gl_WorkGroupID.x * EB, a0 = gl_WorkGroupID.y * TT;
    uint h4 = p.hd / 4u;
    for (uint x = t; x < EB * h4; x += 64u) {
        uint e = x / h4, c = x - e * h4, i = i0 + e;
        vec4 v = vec4(0.0);
        if (i < p.n_max) {
            if (i < p.base_rows) {
                uint b = i * p.hd + c * 4u;
                v = vec4(BASE[b], BASE[b + 1u], BASE[b + 2u], BASE[b + 3u]);
            } else {
                uint b = (i - p.base_rows) * p.hd + c * 4u;
                v = vec4(K[b], K[b + 1u], K[b + 2u], K[b + 3u]);
            }
        }
        Ks[e * H4 + (c ^ (e & 7u))] = v;
    }
    uint tq = t / 16u, eq = t % 16u; /* tokens tq, tq + 4; entries eq, eq + 16 */
    float sum[2][2];
    for (uint u = 0u; u < 2u; u++)
        for (uint v = 0u; v < 2u; v++) sum[u][v] = 0.0;
    for (uint h = 0u; h < p.nh; h++) {
        barrier(); /* the previous head's query rows are no longer read */
        for (uint x = t; x < TT * h4; x += 64u) {
            uint r = x / h4, c = x - r * h4, a = a0 + r;
            vec4 v = vec4(0.0);
            if (a < p.n_tok) {
                uint b = ((p.t0 + a) * p.nh + h) * p.hd + c * 4u;
                v = vec4(Q[b], Q[b + 1u], Q[b + 2u], Q[b + 3u]);
            }
            Qs[r * H4 + c] = v;
        }
        barrier();
        float d[2][2];
        for (uint u = 0u; u < 2u; u++)
            for (uint v = 0u; v < 2u; v++) d[u][v] = 0.0;
        for (uint c = 0u; c < h4; c++) {
            vec4 q0 = Qs[tq * H4 + c], q1 = Qs[(tq + 4u) * H4 + c];
            vec4 k0 = Ks[eq * H4 + (c ^ (eq & 7u))], k1 = Ks[(eq + 16u) * H4 + (c ^ (eq & 7u))];
            d[0][0] += q0.x * k0.x; d[0][0] += q0.y * k0.y; d[0][0] += q0.z * k0.z; d[0][0] += q0.w * k0.w;
            d[0][1] += q0.x * k1.x; d[0][1] += q0.y * k1.y; d[0][1] += q0.z * k1.z; d[0][1] += q0.w * k1.w;
            d[1][0] += q1.x * k0.x; d[1][0] += q1.y * k0.y; d[1][0] += q1.z * k0.z; d[1][0] += q1.w * k0.w;
            d[1][1] += q1.x * k1.x; d[1][1] += q1.y * k1.y; d[1][1] += q1.z * k1.z; d[1][1] += q1.w * k1.w;
        }
        for (uint u = 0u; u < 2u; u++) {
            uint a = a0 + tq + 4u * u;
            float w = a < p.n_tok ? bf16r(WT[(p.t0 + a) * p.nh + h] * p.wscale) : 0.0;
            for (uint v = 0u; v < 2u; v++) sum[u][v] += bf16r(max(bf16r(d[u][v]), 0.0) * w);
        }
    }
    for (uint u = 0u; u < 2u; u++) {
        uint a = a0 + tq + 4u * u;
        if (a >= p.n_tok) continue;
        uint n = (p.p0 + a + 1u) / p.ratio;
        for (uint v = 0u; v < 2u; v++) {
            uint i = i0 + eq + 16u * v;
            if (i < p.n_max) S[a * p.ld_s + i] = i < n ? bf16r(sum[u][v]) : -1.0 / 0.0;
        }
    }
}
