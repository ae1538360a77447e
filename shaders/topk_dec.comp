/* topk_dec: topk_radix.comp's selection (per token row of S, the indices of
 * the k = min(topk, n) largest of the first n = (pos + 1) / ratio values,
 * ties to the lower index, the rest of the row -1; the same output, bit for
 * bit) for segments of few tokens (decode), where one workgroup per row is
 * all the GPU gets and topk_radix's time went to latency: 4 passes, each
 * ending in a serial walk of 256 histogram bins by one thread, and a serial
 * prefix over 256 thread counts (~39 us per row at 8K context on an H200).
 *
 * Here: 512 threads, 3 radix passes of 11, 11 and 10 bits (2048-bin
 * histograms in shared memory), and every walk a parallel scan
 * (Hillis-Steele, log2(512) steps): the bin holding the k-th largest key is
 * found by the one thread whose bins straddle it. The k-th largest key and
 * the write-out rule (keys above it in index order, then ties in index
 * order up to k) are topk_radix's, so the rows are identical. */
#version 450
#define NT 512u
#define NBIN 2048u
#define BPT (NBIN / NT) /* bins per thread */
layout(local_size_x = NT) in;
layout(std430, binding = 0) readonly buffer BS { float S[]; };
layout(std430, binding = 1) writeonly buffer BI { int IDX[]; };
layout(push_constant) uniform P { uint topk, ratio, p0, ld_s, ld_i, i_row0; } p;
shared uint hist[NBIN];
shared uvec2 scan[NT];
shared uint sel_digit, sel_above;

uint okey(float f)
{
    uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

/* Exclusive prefix sums over the threads in order t' < t (call from every
 * thread: it holds barriers) */
uvec2 scan_excl(uvec2 v)
{
    uint t = gl_LocalInvocationID.x;
    scan[t] = v;
    barrier();
    for (uint off = 1u; off < NT; off <<= 1) {
        uvec2 add = t >= off ? scan[t - off] : uvec2(0u);
        barrier();
        scan[t] += add;
        barrier();
    }
    uvec2 r = scan[t] - v;
    barrier(); /* scan is rewritten by the next call */
    return r;
}

void main()
{
    uint tl = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    uint n = (p.p0 + tl + 1u) / p.ratio;
    uint k = min(p.topk, n);
    uint sb = tl * p.ld_s, ib = (p.i_row0 + tl) * p.ld_i;
    for (uint j = t; j < p.topk; j += NT)
        if (j >= k) IDX[ib + j] = -1;
    if (k == 0u) return;
    /* lo: the k-th largest key, digit by digit from the top; need: how many
       of the keys matching lo's digits so far must still be taken */
    uint lo = 0u, mask = 0u, need = k;
    for (int d = 2; d >= 0; d--) {
        uint shift = d == 2 ? 21u : d == 1 ? 10u : 0u, dmask = d == 0 ? 1023u : 2047u;
        for (uint b = t; b < NBIN; b += NT) hist[b] = 0u;
        barrier();
        for (uint i = t; i < n; i += NT) {
            uint key = okey(S[sb + i]);
            if ((key & mask) == lo) atomicAdd(hist[(key >> shift) & dmask], 1u);
        }
        barrier();
        /* thread t holds bins BPT t .. BPT t + BPT - 1; the bins above them
           belong to the threads after it: a prefix over reversed thread order */
        uint mine = 0u;
        for (uint b = 0u; b < BPT; b++) mine += hist[t * BPT + b];
        uint rt = NT - 1u - t;
        scan[rt] = uvec2(mine, 0u);
        barrier();
        for (uint off = 1u; off < NT; off <<= 1) {
            uint add = rt >= off ? scan[rt - off].x : 0u;
            barrier();
            scan[rt].x += add;
            barrier();
        }
        uint above = scan[rt].x - mine; /* keys in the bins above this thread's */
        if (above < need && above + mine >= need) {
            for (uint b = BPT; b-- > 0u;) {
                uint h = hist[t * BPT + b];
                if (above + h >= need) {
                    sel_digit = t * BPT + b;
                    sel_above = above;
                    break;
                }
                above += h;
            }
        }
        barrier();
        lo |= sel_digit << shift;
        mask |= dmask << shift;
        need -= sel_above;
        barrier(); /* sel_*, hist and scan are rewritten by the next pass */
    }
    uint chunk = (n + NT - 1u) / NT, a = min(t * chunk, n), b = min(a + chunk, n);
    uvec2 c = uvec2(0u);
    for (uint i = a; i < b; i++) {
        uint key = okey(S[sb + i]);
        c.x += key > lo ? 1u : 0u;
        c.y += key == lo ? 1u : 0u;
    }
    uvec2 pre = scan_excl(c);
    if (t == NT - 1u) sel_above = pre.x + c.x; /* all keys above lo */
    barrier();
    uint pg = pre.x, pe = pre.y, tg = sel_above;
    for (uint i = a; i < b; i++) {
        uint key = okey(S[sb + i]);
        if (key > lo) { IDX[ib + pg] = int(i); pg++; }
        else if (key == lo) {
            if (tg + pe < k) IDX[ib + tg + pe] = int(i);
            pe++;
        }
    }
}
