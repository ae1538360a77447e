/* moe_gate: Gate.forward of model.py for one token per invocation: scores
 * from the f32 gate logits (sqrt(softplus) / sigmoid / softmax), selection by
 * top-k of scores + bias (ties to the lower expert) or, on hash layers, the
 * token's row of tid2eid; weights = the unbiased scores of the chosen experts,
 * normalised (not for softmax) and times routed_scaling_factor. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BL { float LG[]; };
layout(std430, binding = 1) readonly buffer BB { float BIAS[]; };
layout(std430, binding = 2) readonly buffer BH { uint TID2EID[]; };
layout(std430, binding = 3) readonly buffer BT { int TOK[]; };
layout(std430, binding = 4) writeonly buffer BE { uint SEL[]; };
layout(std430, binding = 5) writeonly buffer BW { float WGT[]; };
layout(push_constant) uniform P { uint T, E, k, func, hash, use_bias; float route_scale; } p;

float score(float x)
{
    if (p.func == 2u) return div_acc(1.0, 1.0 + exp_acc(-x));
    float sp = x > 20.0 ? x : log_acc(1.0 + exp_acc(x)); /* log1pf(expf(x)) up to the 1 + e rounding */
    return float(sqrt(double(sp)));
}

void main()
{
    uint t = gl_GlobalInvocationID.x;
    if (t >= p.T) return;
    uint lb = t * p.E;
    float mx = -1.0 / 0.0, den = 0.0;
    if (p.func == 1u) {
        for (uint e = 0u; e < p.E; e++) mx = max(mx, LG[lb + e]);
        for (uint e = 0u; e < p.E; e++) den += exp_acc(LG[lb + e] - mx);
    }
    uint chosen[16];
    float wsum = 0.0;
    float w[16];
    for (uint j = 0u; j < p.k; j++) {
        uint best = 0u;
        if (p.hash != 0u) {
            best = TID2EID[(uint(TOK[t]) * p.k + j) * 2u]; /* I64, little endian */
        } else {
            float bv = -1.0 / 0.0;
            bool found = false;
            for (uint e = 0u; e < p.E; e++) {
                bool taken = false;
                for (uint q = 0u; q < j; q++) taken = taken || chosen[q] == e;
                if (taken) continue;
                float s = p.func == 1u ? exp_acc(LG[lb + e] - mx) / den : score(LG[lb + e]);
                if (p.use_bias != 0u) s += BIAS[e];
                if (!found || s > bv) { bv = s; best = e; found = true; }
            }
        }
        chosen[j] = best;
        float s = p.func == 1u ? exp_acc(LG[lb + best] - mx) / den : score(LG[lb + best]);
        w[j] = s;
        wsum += s;
    }
    for (uint j = 0u; j < p.k; j++) {
        float v = w[j];
        if (p.func != 1u) v = div_acc(v, wsum);
        SEL[t * p.k + j] = chosen[j];
        WGT[t * p.k + j] = v * p.route_scale;
    }
}
