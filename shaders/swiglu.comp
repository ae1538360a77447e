/* swiglu: Expert.forward between w1/w3 and w2: up clamped to +-limit, gate
 * clamped above at limit (when limit > 0), silu(gate) * up in f32, times the
 * routing weight (routed experts: R[wsort_off + row]), rounded to bf16.
 * G and U rows hold the bf16 outputs of w1 and w3.
 *
 * -DQUANT (swiglu_q) writes instead the result FP8-quant-dequantized in
 * 128-column blocks exactly as act_quant.comp mode 0 does it (the block's
 * amax of the bf16 results, power-of-two scale, e4m3, bf16): w2's input in
 * one dispatch instead of two (a decode step runs this twice per layer, the
 * routed experts and the shared one). It also has act_quant's grid, one
 * workgroup per (block, row), so a decode step's few rows still spread over
 * the GPU; inter must be a multiple of 128. The amax is a maximum, which has
 * one value in any order, so the bits are those of the two dispatches. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BG { float G[]; };
layout(std430, binding = 1) readonly buffer BU { float U[]; };
layout(std430, binding = 2) readonly buffer BR { uint R[]; };
layout(std430, binding = 3) writeonly buffer BO { float O[]; };
layout(push_constant) uniform P { uint rows, inter, use_w, wsort_off; float limit; } p;

float act(uint o, float w)
{
    float g = G[o], u = U[o];
    if (p.limit > 0.0) { u = clamp(u, -p.limit, p.limit); g = min(g, p.limit); }
    precise float h = silu(g) * u;
    if (p.use_w != 0u) h = w * h;
    return bf16r(h);
}

#ifndef QUANT
void main()
{
    uint row = gl_WorkGroupID.x;
    float w = p.use_w != 0u ? uintBitsToFloat(R[p.wsort_off + row]) : 1.0;
    for (uint c = gl_LocalInvocationID.x; c < p.inter; c += 64u) {
        uint o = row * p.inter + c;
        O[o] = act(o, w);
    }
}
#else
shared float red[64];

void main()
{
    uint row = gl_WorkGroupID.y, t = gl_LocalInvocationID.x;
    uint o = row * p.inter + gl_WorkGroupID.x * 128u + t; /* this invocation's two columns: o, o + 64 */
    float w = p.use_w != 0u ? uintBitsToFloat(R[p.wsort_off + row]) : 1.0;
    float h0 = act(o, w), h1 = act(o + 64u, w);
    red[t] = max(max(0.0, abs(h0)), abs(h1)); /* act_quant's m = max(m, |x|) from 0 */
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (t < s) red[t] = max(red[t], red[t + s]);
        barrier();
    }
    float sc = pow2_ceil(max(red[0], 1e-4) * (1.0 / 448.0));
    O[o] = bf16r(fp8_qdq(h0, sc));
    O[o + 64u] = bf16r(fp8_qdq(h1, sc));
}
#endif
