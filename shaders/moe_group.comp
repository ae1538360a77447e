/* moe_group: groups the T*k (token, expert) slots by expert so the expert
 * GEMMs run as a few batched products (MoE tokens grouped by expert). One
 * workgroup writes into R (uints):
 *   R[0] = tiles; R[4 + 4i ..] = (expert, m0, m1, 0) of tile i (<= 32 rows);
 *   R[rowmap_off + m] = token of sorted slot m;
 *   R[slotpos_off + t*k + j] = sorted position of slot (t, j);
 *   R[wsort_off + m] = weight of sorted slot m (float bits).
 * Slots of one expert keep token order. */
#version 450
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BE { uint SEL[]; };
layout(std430, binding = 1) readonly buffer BW { float WGT[]; };
layout(std430, binding = 2) buffer BR { uint R[]; };
layout(push_constant) uniform P { uint T, E, k, rowmap_off, slotpos_off, wsort_off, e_begin_off; } p;
shared uint total;

void main()
{
    uint t = gl_LocalInvocationID.x, n = p.T * p.k;
    /* counts per expert into R[e_begin_off + e] */
    for (uint e = t; e < p.E; e += 256u) {
        uint c = 0u;
        for (uint s = 0u; s < n; s++) c += SEL[s] == e ? 1u : 0u;
        R[p.e_begin_off + e] = c;
    }
    barrier();
    memoryBarrierBuffer();
    barrier();
    if (t == 0u) {
        uint off = 0u, tiles = 0u;
        for (uint e = 0u; e < p.E; e++) {
            uint c = R[p.e_begin_off + e];
            R[p.e_begin_off + e] = off;
            for (uint m = 0u; m < c; m += 32u) {
                uint b = 4u + tiles * 4u;
                R[b] = e; R[b + 1u] = off + m; R[b + 2u] = off + min(m + 32u, c); R[b + 3u] = 0u;
                tiles++;
            }
            off += c;
        }
        R[0] = tiles;
    }
    barrier();
    memoryBarrierBuffer();
    barrier();
    for (uint e = t; e < p.E; e += 256u) {
        uint pos = R[p.e_begin_off + e];
        for (uint s = 0u; s < n; s++) {
            if (SEL[s] != e) continue;
            R[p.rowmap_off + pos] = s / p.k;
            R[p.slotpos_off + s] = pos;
            R[p.wsort_off + pos] = floatBitsToUint(WGT[s]);
            pos++;
        }
    }
}
