/* headprep: the per-head elementwise steps of Attention/Indexer/Compressor in
 * model.py, applied in place to rows of D values (grid: x = row, y = head):
 *   F_RMS_SCALE  q *= rsqrt(mean(q^2) + eps), with torch's bf16 roundings
 *   F_RMS_W      RMSNorm with a bf16 weight (kv_norm, compressor norm)
 *   F_ROPE       rotary embedding on the last rd dims (pairs interleaved)
 *   F_ROPE_INV   the inverse rotation (the attention output)
 *   F_HADAMARD   rotate_activation: normalised Walsh-Hadamard over D
 *   F_FP4        fp4_act_quant in place, blocks of 32 (indexer q and keys)
 *   F_FP8_NOPE   act_quant in place on the first D-rd dims, blocks of 64
 * Every step ends with a bf16 rounding, as the official tensors are bf16.
 * Position: POS[x] with F_POSBUF, else pos_base + x * pos_step. */
#version 450
#extension GL_ARB_gpu_shader_fp64 : enable
#include "common.glsl"
#include "rope.glsl"
#define F_RMS_SCALE 1u
#define F_RMS_W 2u
#define F_ROPE 4u
#define F_ROPE_INV 8u
#define F_HADAMARD 16u
#define F_FP4 32u
#define F_FP8_NOPE 64u
#define F_POSBUF 128u
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer BX { float X[]; };
layout(std430, binding = 1) readonly buffer BW { uint NW[]; };
layout(std430, binding = 2) readonly buffer BF { float FREQ[]; };
layout(std430, binding = 3) readonly buffer BP { uint POS[]; };
layout(push_constant) uniform P { uint D, rd, ldx, x_off, flags, pos_base, pos_step; float eps; } p;
shared float v[1024];
shared float red[64];
shared float bmax[32];

float block_reduce_sum(float s, uint t)
{
    red[t] = s;
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] += red[t + k];
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main()
{
    uint row = gl_WorkGroupID.x, head = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
    uint D = p.D, base = row * p.ldx + p.x_off + head * D;
    for (uint c0 = t; c0 < D; c0 += 256u) { /* four loads in flight, not one after the other */
        vec4 a;
        for (uint k = 0u; k < 4u; k++) a[k] = X[base + min(c0 + 64u * k, D - 1u)];
        for (uint k = 0u; k < 4u; k++)
            if (c0 + 64u * k < D) v[c0 + 64u * k] = a[k];
    }
    barrier();
    if ((p.flags & F_RMS_SCALE) != 0u) {
        precise float s = 0.0;
        for (uint c = t; c < D; c += 64u) s += bf16r(v[c] * v[c]);
        float ms = bf16r(div_acc(block_reduce_sum(s, t), float(D)));
        float r = bf16r(rsqrt_acc(bf16r(ms + p.eps)));
        for (uint c = t; c < D; c += 64u) v[c] = bf16r(v[c] * r);
        barrier();
    }
    if ((p.flags & F_RMS_W) != 0u) {
        precise float s = 0.0;
        for (uint c = t; c < D; c += 64u) s += v[c] * v[c];
        float r = rsqrt_acc(div_acc(block_reduce_sum(s, t), float(D)) + p.eps);
        for (uint c = t; c < D; c += 64u) v[c] = bf16r(bf16_at(NW[c >> 1], c & 1u) * (v[c] * r));
        barrier();
    }
    if ((p.flags & (F_ROPE | F_ROPE_INV)) != 0u) {
        uint pos = (p.flags & F_POSBUF) != 0u ? POS[row] : p.pos_base + row * p.pos_step;
        uint nope = D - p.rd;
        for (uint i = t; i < p.rd / 2u; i += 64u) {
            vec2 cs = rope_cs(pos, FREQ[i]);
            if ((p.flags & F_ROPE_INV) != 0u) cs.y = -cs.y;
            float a = v[nope + 2u * i], b = v[nope + 2u * i + 1u];
            precise float re = a * cs.x - b * cs.y, im = a * cs.y + b * cs.x;
            v[nope + 2u * i] = bf16r(re);
            v[nope + 2u * i + 1u] = bf16r(im);
        }
        barrier();
    }
    if ((p.flags & F_HADAMARD) != 0u) {
        for (uint h = 1u; h < D; h <<= 1) {
            for (uint i = t; i < D / 2u; i += 64u) {
                uint j = (i / h) * 2u * h + (i % h);
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
            barrier();
        }
        float sc = rsqrt_acc(float(D));
        for (uint c = t; c < D; c += 64u) v[c] = bf16r(v[c] * sc);
        barrier();
    }
    if ((p.flags & (F_FP4 | F_FP8_NOPE)) != 0u) {
        bool fp4 = (p.flags & F_FP4) != 0u;
        uint bs = fp4 ? 32u : 64u;
        uint n = fp4 ? D : D - p.rd;
        for (uint b = t; b < n / bs; b += 64u) {
            float m = 0.0;
            for (uint c = 0u; c < bs; c++) m = max(m, abs(v[b * bs + c]));
            bmax[b] = fp4 ? pow2_ceil(max(m, 6.0 * uintBitsToFloat(0x00800000u)) * (1.0 / 6.0))
                           : pow2_ceil(max(m, 1e-4) * (1.0 / 448.0));
        }
        barrier();
        for (uint c = t; c < n; c += 64u) {
            float s = bmax[c / bs];
            v[c] = bf16r(fp4 ? fp4_qdq(v[c], s) : fp8_qdq(v[c], s));
        }
        barrier();
    }
    for (uint c = t; c < D; c += 64u) X[base + c] = v[c];
}
