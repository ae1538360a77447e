/* index_score_dec: index_score_tok's lightning-indexer score (same bf16
 * roundings, same order: each dot over dims 0..127, the head sum over heads
 * 0..nh-1, so the same bits) with the heads of an entry spread over 4
 * threads. index_score_tok ran one thread per entry through all 64 heads (a
 * chain of 64 x 128 multiply-adds, ~18 us at 8K context on an H200, where a
 * decode token has only 2048 entries: 32 workgroups); here each thread
 * computes 16 heads' dots as 16 independent chains (the key row streamed
 * once, each float4 used by 16 heads), and after a barrier one thread per
 * entry adds the 64 weighted terms in head order.
 *
 * Workgroup: 32 entries x 4 head groups; the token's queries of all heads
 * staged as f32 in shared memory (32 KiB at 64 heads), the same memory
 * reused for the terms. Compressed rows follow the shared convention: rows
 * r < base_rows in the base buffer (the last binding), the rest in K at
 * r - base_rows (krow). index_head_dim must be 128 and index_n_heads at
 * most 64. Grid: x = blocks of 32 entries, y = token of the sub-batch. */
#version 450
#include "common.glsl"
#define HD4 32u   /* index_head_dim / 4 */
#define NHMAX 64u
#define EW 32u    /* entries per workgroup */
#define HG 4u     /* head groups */
#define HPT (NHMAX / HG)
layout(local_size_x = 128) in;
layout(std430, binding = 0) readonly buffer BQ { vec4 Q[]; };
layout(std430, binding = 1) readonly buffer BW { float WT[]; };
layout(std430, binding = 2) readonly buffer BK { vec4 K[]; };
layout(std430, binding = 3) writeonly buffer BO { float S[]; };
layout(std430, binding = 4) readonly buffer BB { vec4 BASE[]; };
layout(push_constant) uniform P { uint nh, hd, ratio, t0, p0, ld_s, n_max; float wscale; uint n_tok, base_rows; } p;
shared vec4 Qs[NHMAX * HD4]; /* queries; then term (head h, entry e) at float h * EW + e */

vec4 krow(uint i, uint c)
{
    if (i < p.base_rows) return BASE[i * HD4 + c];
    return K[(i - p.base_rows) * HD4 + c];
}

void main()
{
    uint t = gl_LocalInvocationID.x, a = gl_WorkGroupID.y, tok = p.t0 + a;
    uint e = t % EW, g = t / EW, i = gl_WorkGroupID.x * EW + e;
    for (uint x = t; x < NHMAX * HD4; x += 128u)
        Qs[x] = x < p.nh * HD4 ? Q[tok * p.nh * HD4 + x] : vec4(0.0);
    barrier();
    uint n = (p.p0 + a + 1u) / p.ratio;
    float d[HPT];
    for (uint hh = 0u; hh < HPT; hh++) d[hh] = 0.0;
    if (i < n) {
        for (uint c = 0u; c < HD4; c++) {
            vec4 k = krow(i, c);
            for (uint hh = 0u; hh < HPT; hh++) {
                vec4 q = Qs[(g * HPT + hh) * HD4 + c];
                d[hh] += q.x * k.x;
                d[hh] += q.y * k.y;
                d[hh] += q.z * k.z;
                d[hh] += q.w * k.w;
            }
        }
    }
    barrier(); /* every query read: the memory takes the terms */
    for (uint hh = 0u; hh < HPT; hh++) {
        uint h = g * HPT + hh, f = h * EW + e;
        float v = 0.0;
        if (h < p.nh) {
            float w = bf16r(WT[tok * p.nh + h] * p.wscale);
            v = bf16r(max(bf16r(d[hh]), 0.0) * w);
        }
        Qs[f / 4u][f % 4u] = v;
    }
    barrier();
    if (g != 0u || i >= p.n_max) return;
    float r = -1.0 / 0.0;
    if (i < n) {
        float sum = 0.0;
        for (uint h = 0u; h < p.nh; h++) {
            uint f = h * EW + e;
            sum += Qs[f / 4u][f % 4u];
        }
        r = bf16r(sum);
    }
    S[a * p.ld_s + i] = r;
}
