/* attn: sparse_attn of kernel_tilelang.py for one (token, head) per
 * workgroup: the keys are the sliding window (positions pos-nw+1..pos, from
 * this call's KV rows or, before p0, the sequence's window ring; always win
 * slots, unfilled ones masked, so the 64-key blocks fall where the official
 * kernel's do) followed by
 * the compressed entries (HCA: all entries visible at pos; CSA: the indexer's
 * top-k list, -1 skipped). The maximum over all keys first, then blocks of 64
 * keys: probabilities exp(s - max) rounded to bf16 for the value sum (their
 * f32 sum is the denominator), the per-head sink only in the denominator. The single KV head
 * is both key and value. Output rounded to bf16. */
#version 450
#include "common.glsl"
#ifdef SERIAL
layout(local_size_x = 16) in;
#else
layout(local_size_x = 64) in;
#endif
layout(std430, binding = 0) readonly buffer BQ { float Q[]; };
layout(std430, binding = 1) readonly buffer BK { float KV[]; };
layout(std430, binding = 2) readonly buffer BR { float RING[]; };
layout(std430, binding = 3) readonly buffer BC { float CMP[]; };
layout(std430, binding = 4) readonly buffer BI { int IDX[]; };
layout(std430, binding = 5) readonly buffer BSK { float SINK[]; };
layout(std430, binding = 6) writeonly buffer BO { float O[]; };
/* compressed rows r < base_rows: a fork's shared prefix (row r here); CMP
   holds rows r >= base_rows at r - base_rows (docs/engine.md) */
layout(std430, binding = 7) readonly buffer BB { float BASE[]; };
layout(push_constant) uniform P {
    uint D, H, win, t0, p0, ratio, mode, topk, ld_i;
    float scale;
    uint n_tok, ld_sc, base_rows; /* ld_sc: attn_tile's, unused here */
} p;
#ifndef SERIAL
shared float q[1024];
shared float sc[64];
shared uint src[64];
shared float red[64];
#endif

/* key j of this token: source (0 chunk, 1 ring, 2 compressed) and row */
uint key_of(uint j, uint pos, uint nw, uint nc, uint tl)
{
    if (j < p.win) {
        if (j >= nw) return 0xffffffffu; /* window slots not yet filled */
        uint kp = pos + 1u - nw + j;
        if (kp >= p.p0) return (0u << 30) | (p.t0 + kp - p.p0);
        return (1u << 30) | (kp % p.win);
    }
    j -= p.win;
    if (p.mode == 1u) return (2u << 30) | j;
    int e = IDX[tl * p.ld_i + j];
    return e < 0 ? 0xffffffffu : ((2u << 30) | uint(e));
}

float kv_at(uint s, uint c)
{
    uint kind = s >> 30, row = s & 0x3fffffffu;
    if (kind == 0u) return KV[row * p.D + c];
    if (kind == 1u) return RING[row * p.D + c];
    return row < p.base_rows ? BASE[row * p.D + c] : CMP[(row - p.base_rows) * p.D + c];
}

#ifdef SERIAL
/* One invocation per (token, head), no shared memory and no barriers: the
 * shape a CPU driver (lavapipe) runs fastest. Same order of operations, so
 * the same bits as the workgroup variant. It runs about 3 x D loop
 * iterations per visible key, and llvmpipe silently ends a shader's loops
 * after 65535 iterations in all: engine/forward.c (attn_variant) dispatches
 * the workgroup variant instead when a segment would need more. */
void main()
{
    uint gid = gl_GlobalInvocationID.x;
    uint tl = gid / p.H, h = gid % p.H;
    if (tl >= p.n_tok) return;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D = p.D;
    uint qb = (tok * p.H + h) * D;
    uint nw = min(p.win, pos + 1u);
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    uint nk = p.win + nc;
    float m = -1.0 / 0.0;
    for (uint j = 0u; j < nk; j++) {
        uint key = key_of(j, pos, nw, nc, tl);
        if (key == 0xffffffffu) continue;
        float d = 0.0;
        for (uint c = 0u; c < D; c++) d += Q[qb + c] * kv_at(key, c);
        m = max(m, d * p.scale);
    }
    float acc[1024];
    for (uint c = 0u; c < D; c++) acc[c] = 0.0;
    float l = 0.0;
    for (uint j = 0u; j < nk; j++) {
        uint key = key_of(j, pos, nw, nc, tl);
        if (key == 0xffffffffu) continue;
        float d = 0.0;
        for (uint c = 0u; c < D; c++) d += Q[qb + c] * kv_at(key, c);
        float e = exp_acc(d * p.scale - m);
        l += e;
        float pb = bf16r(e);
        for (uint c = 0u; c < D; c++) acc[c] += pb * kv_at(key, c);
    }
    l += exp_acc(SINK[h] - m);
    for (uint c = 0u; c < D; c++) O[qb + c] = bf16r(div_acc(acc[c], l));
}
#else
void main()
{
    uint tl = gl_WorkGroupID.x, h = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D = p.D;
    uint qb = (tok * p.H + h) * D;
    for (uint c = t; c < D; c += 64u) q[c] = Q[qb + c];
    uint nw = min(p.win, pos + 1u);
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    uint nk = p.win + nc; /* the window takes win slots, as the official key list */
    float acc[16];
    for (uint i = 0u; i < 16u; i++) acc[i] = 0.0;
    barrier();
    /* pass 1: the maximum score over every key, so every probability is
       rounded to bf16 relative to the same maximum (as the reference the
       golden data agrees with; a per-block running maximum rounds
       differently and FP8 quantization downstream amplifies it) */
    float mloc = -1.0 / 0.0;
    for (uint j = t; j < nk; j += 64u) {
        uint key = key_of(j, pos, nw, nc, tl);
        if (key == 0xffffffffu) continue;
        float d = 0.0;
        for (uint c = 0u; c < D; c++) d += q[c] * kv_at(key, c);
        mloc = max(mloc, d * p.scale);
    }
    red[t] = mloc;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] = max(red[t], red[t + k]);
        barrier();
    }
    float m = red[0], l = 0.0;
    barrier();
    for (uint b0 = 0u; b0 < nk; b0 += 64u) {
        uint j = b0 + t;
        float s = -1.0 / 0.0;
        uint key = 0xffffffffu;
        if (j < nk) key = key_of(j, pos, nw, nc, tl);
        if (key != 0xffffffffu) {
            float d = 0.0;
            for (uint c = 0u; c < D; c++) d += q[c] * kv_at(key, c);
            s = d * p.scale;
        }
        sc[t] = s;
        src[t] = key;
        float mn = m;
        float e = (mn == -1.0 / 0.0) ? 0.0 : exp_acc(sc[t] - mn);
        red[t] = e;
        barrier();
        /* the denominator summed in key order, as the reference does */
        for (uint jj = 0u; jj < 64u; jj++) l += red[jj];
        sc[t] = bf16r(e);
        barrier();
        uint cnt = min(64u, nk - b0);
        for (uint i = 0u; i < 16u; i++) {
            uint c = t + i * 64u;
            if (c >= D) break;
            float a = acc[i];
            for (uint jj = 0u; jj < cnt; jj++)
                if (src[jj] != 0xffffffffu) a += sc[jj] * kv_at(src[jj], c);
            acc[i] = a;
        }
        barrier();
    }
    l += exp_acc(SINK[h] - m);
    for (uint i = 0u; i < 16u; i++) {
        uint c = t + i * 64u;
        if (c >= D) break;
        O[qb + c] = bf16r(div_acc(acc[i], l));
    }
}
#endif
