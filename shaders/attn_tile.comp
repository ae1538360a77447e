/* attn_tile: the sparse attention of attn.comp (same key list, same
 * numerics: the maximum over ALL keys first, probabilities exp(s - max)
 * rounded to bf16 for the value sum, their f32 sum plus the per-head sink as
 * the denominator, output rounded to bf16) for HG heads of one token per
 * workgroup. V4 attention is multi-query: one KV row serves every head, so
 * a tile of KT key rows is staged once in shared memory and used by all HG
 * heads, instead of each (token, head) re-reading every 512-wide row from
 * global memory.
 *
 * Every sum runs in the same order as attn.comp's serial variant (a score:
 * dims 0..D-1; the denominator and each output column: keys in list order,
 * masked keys skipped), so the three variants give the same bits and the
 * engine may pick any of them per segment. The maximum needs every score
 * before the first probability: pass 1 computes the scores and, when the
 * engine gives a scratch buffer (ld_sc > 0), writes them there for pass 2
 * (each thread reads back its own values); without it pass 2 computes them
 * again.
 *
 * Threads: NT = 64. For scores thread t owns head t / (KT / KPT) and keys
 * t % (KT / KPT) + u * KT / KPT, u < KPT, of the tile (KPT independent
 * chains); for the value sum it owns float4 columns t, t + NT, ... of all HG
 * heads (register accumulators). Queries and keys are bf16 values (headprep
 * rounds them; the tests' inputs are bf16), so shared memory holds them as
 * bf16 pairs, exactly: Q of the group and the key tile, (HG + KT) * DMAX * 2
 * bytes: 24 KiB at HG = 8, KT = 16 and DMAX = 512 (a DMAX = 256 variant for
 * drivers with less shared memory). head_dim must be a multiple of 4 and at
 * most DMAX (engine/forward.c attn_variant checks).
 *
 * -DDIRECT (attn_direct, HG = 1, KT = 64): no key staging; each thread reads
 * its key row from global memory (L1/L2: the 64 heads of a token read the
 * same rows). For few tokens (decode) the tiled form has too few workgroups
 * and each thread's score is a chain of KT-strided keys x D dependent
 * multiply-adds; this form runs 8x the workgroups and 8x the keys at once,
 * with the same sums in the same order. head_dim must be a multiple of 16
 * there. */
#version 450
#include "common.glsl"
#ifndef HG
#define HG 8
#endif
#ifndef KT
#define KT 8
#endif
#ifndef DMAX
#define DMAX 512
#endif
#define NT 64u
#define KPT ((HG * KT) / NT) /* keys per thread in the score passes */
#define KS (KT / KPT)        /* the stride between a thread's keys */
#define D4MAX (DMAX / 4)
#define NC4 ((D4MAX + NT - 1) / NT)
#define NOKEY 0xffffffffu
layout(local_size_x = NT) in;
layout(std430, binding = 0) readonly buffer BQ { float Q[]; };
/* key rows as float4s: head_dim is a multiple of 4 and views start 16-byte aligned */
layout(std430, binding = 1) readonly buffer BK { vec4 KV[]; };
layout(std430, binding = 2) readonly buffer BR { vec4 RING[]; };
layout(std430, binding = 3) readonly buffer BC { vec4 CMP[]; };
layout(std430, binding = 4) readonly buffer BI { int IDX[]; };
layout(std430, binding = 5) readonly buffer BSK { float SINK[]; };
layout(std430, binding = 6) writeonly buffer BO { float O[]; };
/* pass 1's scores, kept for pass 2 when ld_sc > 0: [token of the pass][head][ld_sc >= nk keys] */
layout(std430, binding = 7) buffer BSC { float SC[]; };
/* compressed rows r < base_rows: a fork's shared prefix (row r here); CMP
   holds rows r >= base_rows at r - base_rows (docs/engine.md) */
layout(std430, binding = 8) readonly buffer BB { vec4 BASE[]; };
layout(push_constant) uniform P {
    uint D, H, win, t0, p0, ratio, mode, topk, ld_i;
    float scale;
    uint n_tok, ld_sc, base_rows;
} p;

/* float4s as two words of bf16 pairs */
shared uvec2 Qs[HG * D4MAX];
#ifndef DIRECT
/* key row j, float4 column c4 lives at j * D4MAX + (c4 ^ (j & 7)): the XOR
   spreads the rows that a warp's score threads read together over all banks */
shared uvec2 Ks[KT * D4MAX];
#endif
shared uint srcs[KT];
shared float Es[HG * KT]; /* exp(s - max) of (head, key) of the tile; pass 1: maxima */
shared float Ps[HG * KT]; /* the same rounded to bf16 */
shared float Ms[HG];   /* each head's maximum, then its denominator */

/* key j of this token: source (0 chunk, 1 ring, 2 compressed) and row, as attn.comp */
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


uvec2 pack4(vec4 v) /* v holds bf16 values: exact */
{
    uvec4 u = floatBitsToUint(v);
    return uvec2((u.x >> 16) | (u.y & 0xffff0000u), (u.z >> 16) | (u.w & 0xffff0000u));
}

vec4 unpack4(uvec2 w)
{
    return uintBitsToFloat(uvec4(w.x << 16, w.x & 0xffff0000u, w.y << 16, w.y & 0xffff0000u));
}

/* row base (in float4s) of key s in its buffer (compressed: BASE or CMP) */
uint kbase(uint s)
{
    uint row = s & 0x3fffffffu;
    if ((s >> 30) == 2u && row >= p.base_rows) row -= p.base_rows;
    return (row * p.D) / 4u;
}

/* float4 c4 of compressed key s at row base b (kbase) */
vec4 cmp4(uint s, uint b, uint c4) { return (s & 0x3fffffffu) < p.base_rows ? BASE[b + c4] : CMP[b + c4]; }

/* Stages keys b0 .. b0 + KT - 1 (masked or past the list: zero rows, NOKEY):
 * their ids first, then each row by consecutive threads. */
void stage(uint b0, uint nk, uint pos, uint nw, uint tl, uint D4)
{
    uint t = gl_LocalInvocationID.x;
    barrier(); /* the previous tile is no longer read */
    if (t < KT) srcs[t] = b0 + t < nk ? key_of(b0 + t, pos, nw, tl) : NOKEY;
    barrier();
#ifndef DIRECT
    for (uint j = 0u; j < KT; j++) {
        uint key = srcs[j], kind = key >> 30, b = kbase(key);
        for (uint c4 = t; c4 < D4; c4 += NT) {
            vec4 v = vec4(0.0);
            if (key == NOKEY) v = vec4(0.0);
            else if (kind == 0u) v = KV[b + c4];
            else if (kind == 1u) v = RING[b + c4];
            else v = cmp4(key, b, c4);
            Ks[j * D4MAX + (c4 ^ (j & 7u))] = pack4(v);
        }
    }
    barrier();
#endif
}

#ifndef DIRECT
/* q_h . k_j over dims 0..D-1 in order, for the thread's KPT keys j + u * KS */
void score(uint h, uint j, uint D4, out float d[KPT])
{
    for (uint u = 0u; u < KPT; u++) d[u] = 0.0;
    for (uint c4 = 0u; c4 < D4; c4++) {
        vec4 q = unpack4(Qs[h * D4MAX + c4]);
        for (uint u = 0u; u < KPT; u++) {
            vec4 k = unpack4(Ks[(j + u * KS) * D4MAX + (c4 ^ (j & 7u))]); /* KS is a multiple of 8 */
            d[u] += q.x * k.x;
            d[u] += q.y * k.y;
            d[u] += q.z * k.z;
            d[u] += q.w * k.w;
        }
    }
}
#else
/* The same sum straight from the key's buffer, four float4s loaded ahead
 * (head_dim a multiple of 16), the buffer chosen once per key. */
#define DOT_ROW(BUF)                                                                              \
    for (uint c4 = 0u; c4 < D4; c4 += 4u) {                                                       \
        vec4 k0 = BUF[b + c4], k1 = BUF[b + c4 + 1u], k2 = BUF[b + c4 + 2u], k3 = BUF[b + c4 + 3u]; \
        vec4 q = unpack4(Qs[h * D4MAX + c4]);                                                     \
        d += q.x * k0.x; d += q.y * k0.y; d += q.z * k0.z; d += q.w * k0.w;                       \
        q = unpack4(Qs[h * D4MAX + c4 + 1u]);                                                     \
        d += q.x * k1.x; d += q.y * k1.y; d += q.z * k1.z; d += q.w * k1.w;                       \
        q = unpack4(Qs[h * D4MAX + c4 + 2u]);                                                     \
        d += q.x * k2.x; d += q.y * k2.y; d += q.z * k2.z; d += q.w * k2.w;                       \
        q = unpack4(Qs[h * D4MAX + c4 + 3u]);                                                     \
        d += q.x * k3.x; d += q.y * k3.y; d += q.z * k3.z; d += q.w * k3.w;                       \
    }
float score1(uint h, uint j, uint D4)
{
    uint key = srcs[j], kind = key >> 30, b = kbase(key);
    float d = 0.0;
    if (kind == 0u) { DOT_ROW(KV) }
    else if (kind == 1u) { DOT_ROW(RING) }
    else if ((key & 0x3fffffffu) < p.base_rows) { DOT_ROW(BASE) }
    else { DOT_ROW(CMP) }
    return d;
}

void score(uint h, uint j, uint D4, out float d[KPT])
{
    for (uint u = 0u; u < KPT; u++) d[u] = srcs[j + u * KS] == NOKEY ? 0.0 : score1(h, j + u * KS, D4);
}
#endif

void main()
{
    uint tl = gl_WorkGroupID.x, h0 = gl_WorkGroupID.y * HG, t = gl_LocalInvocationID.x;
    uint tok = p.t0 + tl, pos = p.p0 + tl, D = p.D, D4 = D / 4u;
    for (uint hh = 0u; hh < HG; hh++)
        for (uint c4 = t; c4 < D4; c4 += NT) {
            vec4 v = vec4(0.0);
            if (h0 + hh < p.H) {
                uint b = (tok * p.H + h0 + hh) * D + c4 * 4u;
                v = vec4(Q[b], Q[b + 1u], Q[b + 2u], Q[b + 3u]);
            }
            Qs[hh * D4MAX + c4] = pack4(v);
        }
    uint nw = min(p.win, pos + 1u);
    uint nc = p.mode == 0u ? 0u : (p.mode == 1u ? (pos + 1u) / p.ratio : p.topk);
    uint nk = p.win + nc; /* the window takes win slots, as the official key list */
    uint sh = t / KS, sj = t - sh * KS;
    float d[KPT];

    /* pass 1: each head's maximum score over every key */
    float mloc = -1.0 / 0.0;
    bool keep = p.ld_sc > 0u && h0 + sh < p.H;
    uint scb = keep ? ((p.t0 + tl) * p.H + h0 + sh) * p.ld_sc : 0u;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        score(sh, sj, D4, d);
        for (uint u = 0u; u < KPT; u++) {
            if (srcs[sj + u * KS] != NOKEY) mloc = max(mloc, d[u] * p.scale);
            if (keep && b0 + sj + u * KS < nk) SC[scb + b0 + sj + u * KS] = d[u];
        }
    }
    Es[t] = mloc;
    barrier();
    if (sj == 0u) {
        float m = Es[t];
        for (uint j = 1u; j < KS; j++) m = max(m, Es[t + j]);
        Ms[sh] = m;
    }
    barrier();
    float m = Ms[sh];

    /* pass 2: probabilities, the denominator (kept by the head's thread of
       key 0) and the value sum */
    vec4 acc[HG * NC4];
    for (uint i = 0u; i < HG * NC4; i++) acc[i] = vec4(0.0);
    float l = 0.0;
    for (uint b0 = 0u; b0 < nk; b0 += KT) {
        stage(b0, nk, pos, nw, tl, D4);
        if (keep)
            for (uint u = 0u; u < KPT; u++) d[u] = b0 + sj + u * KS < nk ? SC[scb + b0 + sj + u * KS] : 0.0;
        else
            score(sh, sj, D4, d);
        for (uint u = 0u; u < KPT; u++) {
            uint j = sj + u * KS;
            float e = srcs[j] != NOKEY ? exp_acc(d[u] * p.scale - m) : 0.0;
            Es[sh * KT + j] = e;
            Ps[sh * KT + j] = bf16r(e);
        }
        barrier();
        if (sj == 0u)
            for (uint j = 0u; j < KT; j++)
                if (srcs[j] != NOKEY) l += Es[sh * KT + j];
        for (uint j = 0u; j < KT; j++) {
            uint key = srcs[j];
            if (key == NOKEY) continue;
#ifdef DIRECT
            uint kind = key >> 30, b = kbase(key);
#endif
            for (uint i = 0u; i < NC4; i++) {
                uint c4 = t + i * NT;
                if (c4 < D4) {
#ifdef DIRECT
                    vec4 k = kind == 0u ? KV[b + c4] : kind == 1u ? RING[b + c4] : cmp4(key, b, c4);
#else
                    vec4 k = unpack4(Ks[j * D4MAX + (c4 ^ (j & 7u))]);
#endif
                    for (uint hh = 0u; hh < HG; hh++) acc[hh * NC4 + i] += Ps[hh * KT + j] * k;
                }
            }
        }
    }
    barrier(); /* Ms is rewritten: every thread has read its maximum */
    if (sj == 0u && h0 + sh < p.H) Ms[sh] = l + exp_acc(SINK[h0 + sh] - m);
    barrier();
    for (uint hh = 0u; hh < HG; hh++) {
        if (h0 + hh >= p.H) break;
        float den = Ms[hh];
        for (uint i = 0u; i < NC4; i++) {
            uint c4 = t + i * NT;
            if (c4 >= D4) break;
            vec4 a = acc[hh * NC4 + i];
            uint b = (tok * p.H + h0 + hh) * D + c4 * 4u;
            O[b] = bf16r(div_acc(a.x, den));
            O[b + 1u] = bf16r(div_acc(a.y, den));
            O[b + 2u] = bf16r(div_acc(a.z, den));
            O[b + 3u] = bf16r(div_acc(a.w, den));
        }
    }
}
