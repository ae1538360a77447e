/* topk_radix: topk.comp's selection (per token row of S, the indices of the
 * k = min(topk, n) largest of the first n = (pos + 1) / ratio values, ties
 * to the lower index, the rest of the row -1; output row i_row0 + token)
 * with the k-th largest value found by a radix select on the
 * order-preserving integer keys: 4 passes of 8-bit digits, each a 256-bin
 * histogram in shared memory of the keys that match the digits so far,
 * instead of topk.comp's 32 bisection passes over the row. The threshold is
 * the same key, and the write-out (contiguous chunks per thread, ties in
 * index order) is topk.comp's, so the output is identical. One workgroup
 * per token. */
#version 450
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BS { float S[]; };
layout(std430, binding = 1) writeonly buffer BI { int IDX[]; };
layout(push_constant) uniform P { uint topk, ratio, p0, ld_s, ld_i, i_row0; } p;
shared uint hist[256];
shared uint cnt2[256];
shared uint sel_digit, sel_above, total_gt;

uint okey(float f)
{
    uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

void main()
{
    uint tl = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    uint n = (p.p0 + tl + 1u) / p.ratio;
    uint k = min(p.topk, n);
    uint sb = tl * p.ld_s, ib = (p.i_row0 + tl) * p.ld_i;
    for (uint j = t; j < p.topk; j += 256u)
        if (j >= k) IDX[ib + j] = -1;
    if (k == 0u) return;
    /* lo: the k-th largest key, digit by digit from the top; need: how many
       of the keys matching lo's digits so far must still be taken */
    uint lo = 0u, mask = 0u, need = k;
    for (int d = 3; d >= 0; d--) {
        uint shift = uint(d) * 8u;
        hist[t] = 0u;
        barrier();
        for (uint i = t; i < n; i += 256u) {
            uint key = okey(S[sb + i]);
            if ((key & mask) == lo) atomicAdd(hist[(key >> shift) & 255u], 1u);
        }
        barrier();
        if (t == 0u) {
            uint above = 0u, b = 255u;
            for (;; b--) {
                if (above + hist[b] >= need || b == 0u) break;
                above += hist[b];
            }
            sel_digit = b;
            sel_above = above;
        }
        barrier();
        lo |= sel_digit << shift;
        mask |= 255u << shift;
        need -= sel_above;
        barrier(); /* sel_* and hist are rewritten by the next pass */
    }
    uint chunk = (n + 255u) / 256u, a = t * chunk, b = min(a + chunk, n);
    uint gt = 0u, eq = 0u;
    for (uint i = a; i < b; i++) {
        uint key = okey(S[sb + i]);
        gt += key > lo ? 1u : 0u;
        eq += key == lo ? 1u : 0u;
    }
    hist[t] = gt; cnt2[t] = eq;
    barrier();
    if (t == 0u) {
        uint sg = 0u, se = 0u;
        for (uint j = 0u; j < 256u; j++) {
            uint g = hist[j], e = cnt2[j];
            hist[j] = sg; cnt2[j] = se;
            sg += g; se += e;
        }
        total_gt = sg;
    }
    barrier();
    uint pg = hist[t], pe = cnt2[t], tg = total_gt;
    for (uint i = a; i < b; i++) {
        uint key = okey(S[sb + i]);
        if (key > lo) { IDX[ib + pg] = int(i); pg++; }
        else if (key == lo) {
            if (tg + pe < k) IDX[ib + tg + pe] = int(i);
            pe++;
        }
    }
}
