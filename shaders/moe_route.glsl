/* moe_route: the grouping step of moe_group.comp as a function, so that
 * moe_gate.comp's GROUP variant (one token: a decode step of one sequence)
 * runs it in the gate's own workgroup, one dispatch and one barrier fewer.
 * The includer declares the buffer R, push constants E, k, rowmap_off,
 * slotpos_off, wsort_off, e_begin_off, MAXE, and the macros SEL_AT(s) and
 * WGT_AT(s) giving slot s's expert and weight; 256 invocations. Writes into R
 * (uints):
 *   R[0] = tiles; R[4 + 4i ..] = (expert, m0, m1, 0) of tile i (<= 32 rows);
 *   R[rowmap_off + m] = token of sorted slot m;
 *   R[slotpos_off + t*k + j] = sorted position of slot (t, j);
 *   R[wsort_off + m] = weight of sorted slot m (float bits);
 *   R[e_begin_off + e] = the first sorted slot of expert e.
 * Slots of one expert keep token order. The counts and offsets stay in
 * shared memory (they went through R, and the serial offset loop waited on a
 * memory read per expert). */
#ifndef DSV4_MOE_ROUTE_GLSL
#define DSV4_MOE_ROUTE_GLSL
shared uint ecount[MAXE]; /* per expert: its slot count, then its first sorted slot */

void route_group(uint t, uint n)
{
    for (uint e = t; e < p.E; e += 256u) {
        uint c = 0u;
        for (uint s = 0u; s < n; s++) c += SEL_AT(s) == e ? 1u : 0u;
        ecount[e] = c;
    }
    barrier();
    if (t == 0u) {
        uint off = 0u, tiles = 0u;
        for (uint e = 0u; e < p.E; e++) {
            uint c = ecount[e];
            ecount[e] = off;
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
    for (uint e = t; e < p.E; e += 256u) {
        uint pos = ecount[e];
        for (uint s = 0u; s < n; s++) {
            if (SEL_AT(s) != e) continue;
            R[p.rowmap_off + pos] = s / p.k;
            R[p.slotpos_off + s] = pos;
            R[p.wsort_off + pos] = floatBitsToUint(WGT_AT(s));
            pos++;
        }
    }
}
#endif
