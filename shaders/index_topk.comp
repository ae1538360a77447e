/* index_topk: the lightning indexer fused, for prefill segments: the scores
 * of index_score_tile (same arithmetic, same order, so the same bits) and
 * topk_radix's selection (the k = min(topk, n) best of a token's n visible
 * entries, ties to the lower index; in the row first the entries above the
 * k-th largest key in index order, then those equal to it in index order,
 * then -1), without writing the [tokens][entries] score matrix, which at
 * long context is the indexer's largest buffer (256 MiB per 1024 tokens at
 * 256K) and is written and read again in full.
 *
 * Two dispatches. The first (this file without MERGE) splits each token's
 * entries into n_split ranges of split_len: a workgroup takes 8 tokens x one
 * range and walks it in blocks of 32 entries; per block the key rows are
 * staged once in shared memory and the 8 x 32 scores computed as
 * index_score_tile does (but with each head's query rows loaded during the
 * previous head's products, into the other half of a double buffer: a
 * workgroup here walks many blocks, so it hides its own load latency),
 * kept as order-preserving keys in shared memory, and
 * each token's entries that can still be among its best are appended, in
 * index order, to the token's candidate list for this range ([cap] (key,
 * index) pairs in scratch, list (row0 + token) x ld_split + range). When a
 * list could overflow it is cut to its topk best (topk_radix's radix select
 * over the list, histograms in shared memory, then an in-place stable
 * compaction) and from then on only keys above the k-th largest are
 * appended: a later entry with an equal key has a higher index and ranks
 * below all kept ones. Every list thus holds, in index order, at least its
 * range's topk best, so their union holds the token's best. The second
 * (MERGE) runs topk_radix's selection and write-out over the concatenated
 * lists of a token (one workgroup per token): the same threshold, the same
 * ties, the same row. The selection is rare work next to the scores (64
 * heads x 128 dims per entry): after the first topk entries of a range
 * few enter the list.
 *
 * Compressed rows r < base_rows are read from the base binding (the last),
 * the others from K at row r - base_rows (forks sharing a prefix).
 * index_head_dim must be a multiple of 4 and at most HDMAX; cap >= topk + 2
 * x 32 (the engine's sizes). */
#version 450
#include "common.glsl"
#define EB 32u
#define HDMAX 128u
#define H4 (HDMAX / 4u)

uint okey(float f) /* topk_radix's order-preserving key */
{
    uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

#ifdef MERGE
#define NT 256u
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BC { uint C[]; };
layout(std430, binding = 1) readonly buffer BN { uint CN[]; };
layout(std430, binding = 2) writeonly buffer BI { int IDX[]; };
layout(push_constant) uniform P { uint topk, ratio, p0, ld_i, i_row0, cap, n_split, row0, ld_split; } p;
#else
#define NT 64u
#define TT 8u
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BQ { float Q[]; };
layout(std430, binding = 1) readonly buffer BW { float WT[]; };
layout(std430, binding = 2) readonly buffer BK { float K[]; };
layout(std430, binding = 3) coherent buffer BC { uint C[]; };
layout(std430, binding = 4) writeonly buffer BN { uint CN[]; };
layout(std430, binding = 5) readonly buffer BB { float KB[]; };
layout(push_constant) uniform P {
    uint nh, hd, ratio, t0, p0, n_max; float wscale; uint n_tok, topk, cap, split_len, n_split, row0, ld_split,
        base_rows;
} p;
#endif

shared uint hist[256];
shared uint scn[NT];
shared uint sel_digit, sel_above;

/* Inclusive prefix sum of v over the workgroup's threads (Hillis-Steele in
   shared memory); total: the sum over all. Called by every thread. */
uint scan_incl(uint v, out uint total)
{
    uint t = gl_LocalInvocationID.x;
    scn[t] = v;
    barrier();
    for (uint o = 1u; o < NT; o <<= 1) {
        uint x = t >= o ? scn[t - o] : 0u;
        barrier();
        scn[t] += x;
        barrier();
    }
    uint r = scn[t];
    total = scn[NT - 1u];
    barrier();
    return r;
}

/* One 8-bit digit of the radix select, after hist holds the histogram of
   the keys matching the digits so far: the digit of the k-th largest key
   (the highest bin where the count of keys above it reaches need) and the
   count of keys in higher bins, into sel_digit / sel_above. topk_radix's
   choice, each thread scanning 256 / NT bins from the top. */
void pick_digit(uint need)
{
    uint t = gl_LocalInvocationID.x, per = 256u / NT, s = 0u, total;
    for (uint j = 0u; j < per; j++) s += hist[t * per + j];
    uint above = scan_incl(s, total);
    above = total - above; /* the keys in the bins of higher threads */
    for (uint j = per; j > 0u; j--) {
        uint b = t * per + j - 1u, hb = hist[b];
        if (above < need && above + hb >= need) {
            sel_digit = b;
            sel_above = above;
        }
        above += hb;
    }
    barrier();
}

#ifdef MERGE
void main()
{
    uint tl = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    uint n = (p.p0 + tl + 1u) / p.ratio;
    uint k = min(p.topk, n);
    uint ib = (p.i_row0 + tl) * p.ld_i, row = (p.row0 + tl) * p.ld_split;
    for (uint j = t; j < p.topk; j += NT)
        if (j >= k) IDX[ib + j] = -1;
    if (k == 0u) return;
    uint lo = 0u, mask = 0u, need = k;
    for (int d = 3; d >= 0; d--) {
        uint shift = uint(d) * 8u;
        hist[t] = 0u;
        barrier();
        for (uint s = 0u; s < p.n_split; s++) {
            uint c = CN[row + s], base = (row + s) * p.cap;
            for (uint x = t; x < c; x += NT) {
                uint key = C[2u * (base + x)];
                if ((key & mask) == lo) atomicAdd(hist[(key >> shift) & 255u], 1u);
            }
        }
        barrier();
        pick_digit(need);
        lo |= sel_digit << shift;
        mask |= 255u << shift;
        need -= sel_above;
        barrier(); /* sel_* and hist are rewritten by the next pass */
    }
    /* the lists in order are the token's candidates in index order: keys
       above lo at their rank among those, then the first need keys equal to
       lo after all of those (topk_radix's row) */
    uint tg = k - need, gtb = 0u, eqb = 0u;
    for (uint s = 0u; s < p.n_split; s++) {
        uint c = CN[row + s], base = (row + s) * p.cap;
        for (uint x0 = 0u; x0 < c; x0 += NT) {
            uint x = x0 + t, key = 0u, idx = 0u, f = 0u, tot;
            if (x < c) {
                key = C[2u * (base + x)];
                idx = C[2u * (base + x) + 1u];
                f = key > lo ? 1u : key == lo ? 0x10000u : 0u;
            }
            uint ex = scan_incl(f, tot) - f;
            uint gb = gtb + (ex & 0xffffu), eb = eqb + (ex >> 16);
            if (f == 1u) IDX[ib + gb] = int(idx);
            else if (f != 0u && eb < need) IDX[ib + tg + eb] = int(idx);
            gtb += tot & 0xffffu;
            eqb += tot >> 16;
        }
    }
}
#else
shared vec4 Ks[EB * H4]; /* index_score_tile's layout: row e, column c at e * H4 + (c ^ (e & 7)) */
shared vec4 Qs[2u * TT * H4]; /* two heads' query rows: the next loads while this one is used */
shared uint Sk[TT * EB]; /* the block's keys */
shared uint cnt_s[TT], thr_s[TT], full_s[TT];

/* float4 column c of query row r (token a0 + r) of head h; 0 past the tokens */
vec4 query4(uint a0, uint r, uint h, uint c)
{
    uint a = a0 + r, b = ((p.t0 + a) * p.nh + h) * p.hd + c * 4u;
    return a < p.n_tok ? vec4(Q[b], Q[b + 1u], Q[b + 2u], Q[b + 3u]) : vec4(0.0);
}

/* float4 column c of compressed row i, from the base rows or the own ones */
vec4 key_row4(uint i, uint c)
{
    if (i < p.base_rows) {
        uint b = i * p.hd + c * 4u;
        return vec4(KB[b], KB[b + 1u], KB[b + 2u], KB[b + 3u]);
    }
    uint b = (i - p.base_rows) * p.hd + c * 4u;
    return vec4(K[b], K[b + 1u], K[b + 2u], K[b + 3u]);
}

/* Cuts token r's list (c > topk pairs at base) to its topk best, in index
   order; then only keys above the new threshold enter it. */
void compact(uint r, uint base)
{
    uint t = gl_LocalInvocationID.x, c = cnt_s[r], k = p.topk;
    uint lo = 0u, mask = 0u, need = k;
    for (int d = 3; d >= 0; d--) {
        uint shift = uint(d) * 8u;
        for (uint b = t; b < 256u; b += NT) hist[b] = 0u;
        barrier();
        for (uint x = t; x < c; x += NT) {
            uint key = C[2u * (base + x)];
            if ((key & mask) == lo) atomicAdd(hist[(key >> shift) & 255u], 1u);
        }
        barrier();
        pick_digit(need);
        lo |= sel_digit << shift;
        mask |= 255u << shift;
        need -= sel_above;
        barrier();
    }
    /* in place, a round of NT pairs at a time: a kept pair moves to its rank
       among the kept ones, never above its own place, and every pair of a
       round is read before any of the round is written */
    uint gtb = 0u, eqb = 0u;
    for (uint x0 = 0u; x0 < c; x0 += NT) {
        uint x = x0 + t, key = 0u, idx = 0u, f = 0u, tot;
        if (x < c) {
            key = C[2u * (base + x)];
            idx = C[2u * (base + x) + 1u];
            f = key > lo ? 1u : key == lo ? 0x10000u : 0u;
        }
        uint ex = scan_incl(f, tot) - f;
        uint gb = gtb + (ex & 0xffffu), eb = eqb + (ex >> 16);
        if (f == 1u || (f != 0u && eb < need)) {
            uint dst = base + gb + min(eb, need);
            C[2u * dst] = key;
            C[2u * dst + 1u] = idx;
        }
        gtb += tot & 0xffffu;
        eqb += tot >> 16;
    }
    if (t == 0u) {
        cnt_s[r] = k;
        thr_s[r] = lo;
        full_s[r] = 1u;
    }
    memoryBarrierBuffer();
    barrier();
}

void main()
{
    uint t = gl_LocalInvocationID.x, sp = gl_WorkGroupID.x, a0 = gl_WorkGroupID.y * TT;
    uint e0 = sp * p.split_len, e1 = min(e0 + p.split_len, p.n_max);
    uint h4 = p.hd / 4u;
    if (t < TT) {
        cnt_s[t] = 0u;
        thr_s[t] = 0u;
        full_s[t] = 0u;
    }
    uint tq = t / 16u, eq = t % 16u; /* scores: tokens tq, tq + 4; entries eq, eq + 16 */
    for (uint i0 = e0; i0 < e1; i0 += EB) {
        barrier(); /* the previous block's keys and rows are no longer read */
        for (uint x = t; x < EB * h4; x += NT) {
            uint e = x / h4, c = x - e * h4, i = i0 + e;
            Ks[e * H4 + (c ^ (e & 7u))] = i < e1 ? key_row4(i, c) : vec4(0.0);
        }
        float sum[2][2];
        for (uint u = 0u; u < 2u; u++)
            for (uint v = 0u; v < 2u; v++) sum[u][v] = 0.0;
        for (uint x = t; x < TT * h4; x += NT) { /* head 0's query rows */
            uint r = x / h4, c = x - r * h4;
            Qs[r * H4 + c] = query4(a0, r, 0u, c);
        }
        /* head h: its rows were stored in Qs half h & 1 before the barrier;
           the next head's are loaded into registers before the products
           (the loads' latency hidden behind them) and stored into the other
           half after (which the previous head read before this barrier) */
        for (uint h = 0u; h < p.nh; h++) {
            barrier();
            vec4 nq[TT * H4 / NT];
            uint qo = (h & 1u) * TT * H4, no = TT * H4 - qo;
            for (uint j = 0u; j < TT * H4 / NT; j++) {
                uint x = t + j * NT, r = x / h4, c = x - r * h4;
                nq[j] = h + 1u < p.nh && x < TT * h4 ? query4(a0, r, h + 1u, c) : vec4(0.0);
            }
            float d[2][2];
            for (uint u = 0u; u < 2u; u++)
                for (uint v = 0u; v < 2u; v++) d[u][v] = 0.0;
            for (uint c = 0u; c < h4; c++) {
                vec4 q0 = Qs[qo + tq * H4 + c], q1 = Qs[qo + (tq + 4u) * H4 + c];
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
            for (uint j = 0u; j < TT * H4 / NT; j++) {
                uint x = t + j * NT, r = x / h4, c = x - r * h4;
                if (h + 1u < p.nh && x < TT * h4) Qs[no + r * H4 + c] = nq[j];
            }
        }
        for (uint u = 0u; u < 2u; u++)
            for (uint v = 0u; v < 2u; v++) Sk[(tq + 4u * u) * EB + eq + 16u * v] = okey(bf16r(sum[u][v]));
        barrier();
        /* lists that this block could overflow are cut first */
        for (uint r = 0u; r < TT; r++)
            if (cnt_s[r] + EB > p.cap) compact(r, ((p.row0 + a0 + r) * p.ld_split + sp) * p.cap);
        /* appends, in index order: 8 threads per token, 4 entries each */
        uint r = t / 8u, part = t % 8u, a = a0 + r;
        uint n = (p.p0 + a + 1u) / p.ratio, c0 = cnt_s[r], th = thr_s[r];
        bool full = full_s[r] != 0u;
        uint bits = 0u;
        for (uint q = 0u; q < 4u; q++) {
            uint e = part * 4u + q, i = i0 + e, key = Sk[r * EB + e];
            if (a < p.n_tok && i < e1 && i < n && (!full || key > th)) bits |= 1u << q;
        }
        scn[t] = uint(bitCount(bits));
        barrier();
        uint off = 0u, tot = 0u;
        for (uint j = 0u; j < 8u; j++) {
            uint x = scn[r * 8u + j];
            off += j < part ? x : 0u;
            tot += x;
        }
        uint dst = ((p.row0 + a) * p.ld_split + sp) * p.cap + c0 + off;
        for (uint q = 0u; q < 4u; q++)
            if ((bits & (1u << q)) != 0u) {
                C[2u * dst] = Sk[r * EB + part * 4u + q];
                C[2u * dst + 1u] = i0 + part * 4u + q;
                dst++;
            }
        memoryBarrierBuffer();
        barrier(); /* cnt_s and scn read by all */
        if (part == 0u) cnt_s[r] = c0 + tot;
    }
    barrier();
    if (t < TT && a0 + t < p.n_tok) CN[(p.row0 + a0 + t) * p.ld_split + sp] = cnt_s[t];
}
#endif
