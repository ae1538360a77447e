/* topk: for each token row of S, the indices of the k largest of the first
 * n = (pos + 1) / ratio values (k = min(topk, n)), ties to the lower index;
 * the rest of the row is -1, as Indexer.forward masks what is not visible.
 * The k-th value is found by a bisection on order-preserving integer keys
 * (32 counting passes), then entries above it and the first ties are written
 * in index order. One workgroup per token; output row i_row0 + token (the
 * scores may come in sub-batches of a segment's tokens). */
#version 450
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BS { float S[]; };
layout(std430, binding = 1) writeonly buffer BI { int IDX[]; };
layout(push_constant) uniform P { uint topk, ratio, p0, ld_s, ld_i, i_row0; } p;
shared uint cnt[256];
shared uint cnt2[256];
shared uint total_gt;

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
    /* largest key K with count(key >= K) >= k */
    uint lo = 0u;
    for (int bit = 31; bit >= 0; bit--) {
        uint cand = lo | (1u << uint(bit));
        uint c = 0u;
        for (uint i = t; i < n; i += 256u) c += okey(S[sb + i]) >= cand ? 1u : 0u;
        cnt[t] = c;
        barrier();
        for (uint s = 128u; s > 0u; s >>= 1) {
            if (t < s) cnt[t] += cnt[t + s];
            barrier();
        }
        if (cnt[0] >= k) lo = cand;
        barrier();
    }
    uint chunk = (n + 255u) / 256u, a = t * chunk, b = min(a + chunk, n);
    uint gt = 0u, eq = 0u;
    for (uint i = a; i < b; i++) {
        uint key = okey(S[sb + i]);
        gt += key > lo ? 1u : 0u;
        eq += key == lo ? 1u : 0u;
    }
    cnt[t] = gt; cnt2[t] = eq;
    barrier();
    if (t == 0u) {
        uint sg = 0u, se = 0u;
        for (uint j = 0u; j < 256u; j++) {
            uint g = cnt[j], e = cnt2[j];
            cnt[j] = sg; cnt2[j] = se;
            sg += g; se += e;
        }
        total_gt = sg;
    }
    barrier();
    uint pg = cnt[t], pe = cnt2[t], tg = total_gt;
    for (uint i = a; i < b; i++) {
        uint key = okey(S[sb + i]);
        if (key > lo) { IDX[ib + pg] = int(i); pg++; }
        else if (key == lo) {
            if (tg + pe < k) IDX[ib + tg + pe] = int(i);
            pe++;
        }
    }
}
