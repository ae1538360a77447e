/* fill_random: deterministic pseudo-random weights written straight into a
 * weight arena, for `dsv4-batch bench` (engine/bench_weights.c). The bench
 * runs the real V4 sizes, whose weights never exist as files here, so every
 * tensor is made on the GPU in its stored format.
 *
 * The target is a byte range [lead, lead + nbytes) of the bound view (the view
 * starts at an aligned offset; lead is the rest). Each invocation owns whole
 * 32-bit words and keeps the bytes of a partial first/last word that lie
 * outside the range, so tensors of any byte size can sit side by side. Every
 * byte is a pure function of (seed, byte index): the result does not depend on
 * the dispatch shape.
 *
 * Modes (mode):
 *   0 BF16   base + amp * u, u uniform in [-1, 1]
 *   1 F32    the same in f32
 *   2 E4M3   codes with a random sign and mantissa and an exponent field in
 *            [aux0, aux1] (never the NaN code when aux1 <= 14)
 *   3 E8M0   aux0 - 1 + (h % 3): scales around 2^(aux0 - 127)
 *   4 BYTES  uniform random bytes (packed e2m1 pairs: every code is valid)
 *   5 EID    int64 expert ids for tid2eid [rows][aux1]: row r, slot j gets
 *            (hash(r) + j) % aux0, so a row's ids are distinct when aux1 <= aux0 */
#version 450
layout(local_size_x = 256) in;
layout(std430, binding = 0) buffer BW { uint W[]; };
layout(push_constant) uniform P { uint lead, nbytes, mode, seed, aux0, aux1; float base, amp; } p;

uint mix32(uint x)
{
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

float unit(uint h) { return float(h >> 8) * (2.0 / 16777216.0) - 1.0; }

uint bf16_bits(float f)
{
    uint u = floatBitsToUint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

uint gen_byte(uint b)
{
    uint s = p.seed;
    if (p.mode == 0u) {
        uint v = bf16_bits(p.base + p.amp * unit(mix32((b >> 1) ^ s)));
        return (v >> (8u * (b & 1u))) & 0xffu;
    }
    if (p.mode == 1u) {
        uint v = floatBitsToUint(p.base + p.amp * unit(mix32((b >> 2) ^ s)));
        return (v >> (8u * (b & 3u))) & 0xffu;
    }
    uint h = mix32(b ^ s);
    if (p.mode == 2u) {
        uint span = p.aux1 - p.aux0 + 1u;
        uint e = p.aux0 + (h >> 8) % span;
        return (h & 0x80u) | (e << 3) | ((h >> 4) & 7u);
    }
    if (p.mode == 3u) return p.aux0 - 1u + (h >> 8) % 3u;
    if (p.mode == 4u) return h & 0xffu;
    /* mode 5: int64 little-endian, high bytes zero */
    uint q = b & 7u;
    if (q >= 4u) return 0u;
    uint elem = b >> 3, row = elem / p.aux1, j = elem % p.aux1;
    uint id = (mix32(row ^ s) + j) % p.aux0;
    return (id >> (8u * q)) & 0xffu;
}

void main()
{
    uint end = p.lead + p.nbytes;
    uint nwords = (end + 3u) / 4u;
    uint stride = gl_NumWorkGroups.x * 256u;
    for (uint w = gl_GlobalInvocationID.x + (p.lead / 4u); w < nwords; w += stride) {
        uint old = 0u, val = 0u;
        bool partial = w * 4u < p.lead || w * 4u + 4u > end;
        if (partial) old = W[w];
        for (uint q = 0u; q < 4u; q++) {
            uint pos = w * 4u + q;
            uint byte = (pos >= p.lead && pos < end) ? gen_byte(pos - p.lead) : (old >> (8u * q)) & 0xffu;
            val |= byte << (8u * q);
        }
        W[w] = val;
    }
}
