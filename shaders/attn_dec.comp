/* attn_dec: the sparse attention of attn_tile.comp for segments of few
 * tokens (decode), in two dispatches that spread one token over many
 * workgroups. attn_direct ran one workgroup per head: 64 workgroups for a
 * decode token, each thread walking a chain of ~10 keys x head_dim
 * multiply-adds, twice (~178 us per layer at 8K on an H200). Here:
 *
 *   PHASE 1 (score): one thread per (key, 2 heads); a workgroup is 32 keys x
 *     8 heads (the 4 warps read the same 32 key rows: L1 hits; 128 bytes of
 *     a row loaded at a time), the 8 heads' queries staged as f32 in shared
 *     memory and read as broadcasts. Each
 *     score q_h . k_j is one chain over dims 0..D-1 in order (as attn_tile).
 *     Writes the raw dot products to the scratch.
 *   PHASE 2 (value): one thread per (2 output columns, head); a workgroup is
 *     64 columns x 4 heads. It first finds its heads' maxima of the scaled
 *     scores (order-free; every workgroup of a head finds the same, 32
 *     threads a head: a dispatch and a barrier fewer than a phase of their
 *     own), then stages the 64-column slice of 64 key rows at a time in
 *     shared memory (all of a tile's loads in flight together) with the
 *     tile's exp(s - max) and their bf16 roundings. Each column's sum and
 *     the denominator are chains over the keys in list order, exactly as
 *     attn_tile (masked keys add 0 x 0: the same bits as skipping them).
 *     With rope_inv the thread's two columns, where they are a RoPE pair
 *     (the last rd dims), are rotated back as headprep.comp's F_ROPE_INV
 *     does it (the same operations: the same bits), so the engine skips
 *     that dispatch and a barrier of the decode chain.
 *
 * So every value is computed by the same operations in the same order as
 * attn_tile / attn_direct / attn / attn_serial (the same bits; the tests
 * check it), only with (key, head) and (column, head) pairs spread over
 * threads instead of keys strided over one workgroup's threads.
 *
 * Scratch (binding 7): one record of ld_sc >= nk floats per (token, head),
 * token = sc_t0 + token of the segment (the engine gives each segment of a
 * pass its own rows): words [0, nk) the raw scores. Compressed rows follow
 * the shared convention: rows r < base_rows in the base buffer (binding 8),
 * the rest in CMP at r - base_rows (row4). head_dim must be a multiple of 16 and
 * at most DMAX (engine/forward.c attn_variant checks). Loop trips per
 * invocation: phase 1 D/16 per key and head pair, phase 2 about nk, far
 * below llvmpipe's 65535 at the tests' sizes. */
#version 450
#include "common.glsl"
#include "rope.glsl"
#ifndef DMAX
#define DMAX 512
#endif
#define NOKEY 0xffffffffu
#if PHASE == 1
#define NT 128u
#define KB 32u  /* keys per workgroup */
#define HW 8u   /* heads per workgroup, 2 per thread */
#else
#define NT 128u
#define CL 32u  /* column lanes (2 columns each) per head */
#define HV 4u   /* heads per workgroup */
#define KTV 64u /* keys staged per tile */
#endif
layout(local_size_x = NT) in;
layout(std430, binding = 0) readonly buffer BQ { vec4 Q[]; };
layout(std430, binding = 1) readonly buffer BK { vec4 KV[]; };
layout(std430, binding = 2) readonly buffer BR { vec4 RING[]; };
layout(std430, binding = 3) readonly buffer BC { vec4 CMP[]; };
layout(std430, binding = 8) readonly buffer BB { vec4 BASE[]; };
layout(std430, binding = 4) readonly buffer BI { int IDX[]; };
layout(std430, binding = 5) readonly buffer BSK { float SINK[]; };
layout(std430, binding = 6) writeonly buffer BO { float O[]; };
layout(std430, binding = 7) buffer BSC { float SC[]; };
layout(std430, binding = 9) readonly buffer BF { float FREQ[]; }; /* RoPE frequencies (rope_inv) */
layout(push_constant) uniform P {
    uint D, H, win, t0, p0, ratio, mode, topk, ld_i;
    float scale;
    uint n_tok, ld_sc, sc_t0, base_rows, rope_inv, rd;
} p;

/* key j of this token: source (0 chunk, 1 ring, 2 compressed) and row, as attn_tile.comp */
uint key_of(uint j, uint pos, uint nw, uint tl)
{
    if (j < p.win) {
        if (j >= nw) return NOKEY; /* window slots not yet filled */
        uint kp = pos + 1u - nw + j;
        if (kp >= p.p0) return (0u << 30) | (p.t0 + kp - p.p0);
        return (1u << 30) | (kp % p.win);
    }
    j -= p.win;
    if (p.mode == 1u) return (2u << 30) | j;
    int e = IDX[tl * p.ld_i + j];
    return e < 0 ? NOKEY : ((2u << 30) | uint(e));
}

/* the key count of token tl and its record base in the scratch for head h */
uint n_keys(uint pos)
{
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    return p.win + nc;
}

uint rec_of(uint tl, uint h) { return ((p.sc_t0 + tl) * p.H + h) * p.ld_sc; }

/* float4 c4 of key `key` (a row id of key_of, not NOKEY) */
vec4 row4(uint key, uint c4, uint D4)
{
    uint kind = key >> 30, r = key & 0x3fffffffu;
    if (kind == 0u) return KV[r * D4 + c4];
    if (kind == 1u) return RING[r * D4 + c4];
    if (r < p.base_rows) return BASE[r * D4 + c4];
    return CMP[(r - p.base_rows) * D4 + c4];
}

#if PHASE == 1
shared vec4 Qs[HW * (DMAX / 4)];

void main()
{
    uint t = gl_LocalInvocationID.x, tl = gl_WorkGroupID.z, h0 = gl_WorkGroupID.y * HW;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D4 = p.D / 4u;
    for (uint x = t; x < HW * D4; x += NT) {
        uint hh = x / D4, c4 = x - hh * D4;
        Qs[hh * (DMAX / 4) + c4] = h0 + hh < p.H ? Q[(tok * p.H + h0 + hh) * D4 + c4] : vec4(0.0);
    }
    barrier();
    uint nw = min(p.win, pos + 1u), nk = n_keys(pos);
    uint j = gl_WorkGroupID.x * KB + t % KB, ha = 2u * (t / KB), hb = ha + 1u;
    if (j >= nk) return;
    uint key = key_of(j, pos, nw, tl);
    float da = 0.0, db = 0.0;
    if (key != NOKEY) {
        /* q . k over dims 0..D-1 in order; a 128-byte piece of the row (8
           float4s) loaded ahead, so the loads are in flight together */
        for (uint c0 = 0u; c0 < D4; c0 += 8u) {
            vec4 k[8];
            uint nc = min(8u, D4 - c0); /* D4 is a multiple of 4 */
            for (uint u = 0u; u < 8u; u++) k[u] = u < nc ? row4(key, c0 + u, D4) : vec4(0.0);
            for (uint u = 0u; u < nc; u++) {
                vec4 qa = Qs[ha * (DMAX / 4) + c0 + u], qb = Qs[hb * (DMAX / 4) + c0 + u];
                da += qa.x * k[u].x; da += qa.y * k[u].y; da += qa.z * k[u].z; da += qa.w * k[u].w;
                db += qb.x * k[u].x; db += qb.y * k[u].y; db += qb.z * k[u].z; db += qb.w * k[u].w;
            }
        }
    }
    if (h0 + ha < p.H) SC[rec_of(tl, h0 + ha) + j] = da;
    if (h0 + hb < p.H) SC[rec_of(tl, h0 + hb) + j] = db;
}

#else
shared uint srcs[KTV];
shared vec2 Ks[KTV * CL]; /* the tile's keys, the workgroup's 2 CL columns */
shared float Es[HV * KTV];
shared float Ps[HV * KTV];
shared float red[NT];

#define SPT (KTV * CL / 2u / NT) /* float4s staged per thread and tile */
void main()
{
    uint t = gl_LocalInvocationID.x, tl = gl_WorkGroupID.z, hr = t / CL, lane = t % CL;
    uint c2 = gl_WorkGroupID.x * CL + lane, h = gl_WorkGroupID.y * HV + hr;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D4 = p.D / 4u, c40 = gl_WorkGroupID.x * (CL / 2u);
    uint nw = min(p.win, pos + 1u), nk = n_keys(pos);
    /* head hr's maximum over its scaled scores: CL threads, then a tree */
    float mloc = -1.0 / 0.0;
    if (h < p.H)
        for (uint j = lane; j < nk; j += CL)
            if (key_of(j, pos, nw, tl) != NOKEY) mloc = max(mloc, SC[rec_of(tl, h) + j] * p.scale);
    red[t] = mloc;
    barrier();
    for (uint k = CL / 2u; k > 0u; k >>= 1) {
        if (lane < k) red[t] = max(red[t], red[t + k]);
        barrier();
    }
    vec2 acc = vec2(0.0);
    float l = 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KTV) {
        barrier(); /* the previous tile is no longer read */
        if (t < KTV) srcs[t] = b0 + t < nk ? key_of(b0 + t, pos, nw, tl) : NOKEY;
        barrier();
        /* the tile's rows (zeros for masked keys and past the list, whose
           probabilities are 0: adding 0 x 0 leaves every sum as skipping the
           key does, since no sum is ever -0), all loads issued before the
           first store */
        vec4 v[SPT];
        for (uint u = 0u; u < SPT; u++) {
            uint x = t + u * NT, j = x / (CL / 2u), q4 = x % (CL / 2u);
            uint key = srcs[j];
            v[u] = key != NOKEY && c40 + q4 < D4 ? row4(key, c40 + q4, D4) : vec4(0.0);
        }
        for (uint u = 0u; u < SPT; u++) {
            uint x = t + u * NT, j = x / (CL / 2u), q4 = x % (CL / 2u);
            Ks[j * CL + 2u * q4] = v[u].xy;
            Ks[j * CL + 2u * q4 + 1u] = v[u].zw;
        }
        for (uint x = t; x < HV * KTV; x += NT) {
            uint hh = x / KTV, j = x - hh * KTV, hg = gl_WorkGroupID.y * HV + hh;
            float e = 0.0, pb = 0.0;
            if (hg < p.H && srcs[j] != NOKEY) { /* NOKEY also past the list */
                e = exp_acc(SC[rec_of(tl, hg) + b0 + j] * p.scale - red[hh * CL]);
                pb = bf16r(e);
            }
            Es[x] = e;
            Ps[x] = pb;
        }
        barrier();
        for (uint j = 0u; j < KTV; j++) {
            vec2 k = Ks[j * CL + lane];
            l += Es[hr * KTV + j];
            acc += Ps[hr * KTV + j] * k;
        }
    }
    if (h >= p.H || c2 >= p.D / 2u) return;
    float m = red[hr * CL];
    float den = l + exp_acc(SINK[h] - m);
    uint ob = (tok * p.H + h) * p.D + 2u * c2, nope = p.D - p.rd;
    float o0 = bf16r(div_acc(acc.x, den)), o1 = bf16r(div_acc(acc.y, den));
    if (p.rope_inv != 0u && 2u * c2 >= nope) {
        vec2 cs = rope_cs(pos, FREQ[c2 - nope / 2u]);
        cs.y = -cs.y;
        precise float re = o0 * cs.x - o1 * cs.y, im = o0 * cs.y + o1 * cs.x;
        o0 = bf16r(re);
        o1 = bf16r(im);
    }
    O[ob] = o0;
    O[ob + 1u] = o1;
}
#endif
