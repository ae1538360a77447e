/* moe_gate: Gate.forward of model.py for one token per workgroup: scores
 * from the f32 gate logits (sqrt(softplus) / sigmoid / softmax), selection by
 * top-k of scores + bias (ties to the lower expert) or, on hash layers, the
 * token's row of tid2eid; weights = the unbiased scores of the chosen experts,
 * normalised (not for softmax) and times routed_scaling_factor. The scores
 * (an exp and a log in double each) are computed once per expert by the
 * workgroup's invocations and the k selections are reductions over them: one
 * invocation per token spent about a millisecond per decode step in its
 * k x E score loop.
 *
 * -DGROUP (moe_gate_group): for one token (T = 1, one workgroup), also
 * moe_group.comp's grouping of its k slots into the route buffer R (binding
 * 6), from the selections still in shared memory: a decode step of one
 * sequence saves a dispatch, the barrier before it and moe_group's reads. */
#version 450
#include "common.glsl"
#define MAXE 1024
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BL { float LG[]; };
layout(std430, binding = 1) readonly buffer BB { float BIAS[]; };
layout(std430, binding = 2) readonly buffer BH { uint TID2EID[]; };
layout(std430, binding = 3) readonly buffer BT { int TOK[]; };
layout(std430, binding = 4) writeonly buffer BE { uint SEL[]; };
layout(std430, binding = 5) writeonly buffer BW { float WGT[]; };
#ifdef GROUP
layout(std430, binding = 6) buffer BR { uint R[]; };
layout(push_constant) uniform P {
    uint T, E, k, func, hash, use_bias; float route_scale;
    uint rowmap_off, slotpos_off, wsort_off, e_begin_off;
} p;
#else
layout(push_constant) uniform P { uint T, E, k, func, hash, use_bias; float route_scale; } p;
#endif
shared float sc[MAXE];   /* the unbiased score of each expert */
shared uint taken[MAXE];
shared float rv[256];
shared uint ri[256];
shared float mxs, dens;
shared uint chosen[16];
#ifdef GROUP
shared float wout[16]; /* the weights as written to WGT */
#define SEL_AT(s) chosen[s]
#define WGT_AT(s) wout[s]
#include "moe_route.glsl"
#endif

float score(float x)
{
    if (p.func == 2u) return div_acc(1.0, 1.0 + exp_acc(-x));
    float sp = x > 20.0 ? x : log_acc(1.0 + exp_acc(x)); /* log1pf(expf(x)) up to the 1 + e rounding */
    return float(sqrt(double(sp)));
}

/* a beats b: a valid candidate over none, then the larger value, then the lower expert */
bool beats(float av, uint ai, float bv, uint bi)
{
    if (ai == 0xffffffffu) return false;
    if (bi == 0xffffffffu) return true;
    return av > bv || (av == bv && ai < bi);
}

void main()
{
    uint tok = gl_WorkGroupID.x, t = gl_LocalInvocationID.x;
    uint lb = tok * p.E;
    if (p.func == 1u && t == 0u) { /* softmax: max, then the denominator in expert order */
        float mx = -1.0 / 0.0, den = 0.0;
        for (uint e = 0u; e < p.E; e++) mx = max(mx, LG[lb + e]);
        for (uint e = 0u; e < p.E; e++) den += exp_acc(LG[lb + e] - mx);
        mxs = mx;
        dens = den;
    }
    barrier();
    if (p.hash == 0u)
        for (uint e = t; e < p.E; e += 256u) {
            sc[e] = p.func == 1u ? exp_acc(LG[lb + e] - mxs) / dens : score(LG[lb + e]);
            taken[e] = 0u;
        }
    barrier();
    for (uint j = 0u; j < p.k; j++) {
        if (p.hash != 0u) {
            if (t == 0u) chosen[j] = TID2EID[(uint(TOK[tok]) * p.k + j) * 2u]; /* I64, little endian */
            continue;
        }
        float bv = 0.0;
        uint bi = 0xffffffffu;
        for (uint e = t; e < p.E; e += 256u) {
            if (taken[e] != 0u) continue;
            float s = sc[e];
            if (p.use_bias != 0u) s += BIAS[e];
            if (beats(s, e, bv, bi)) { bv = s; bi = e; }
        }
        rv[t] = bv;
        ri[t] = bi;
        barrier();
        for (uint h = 128u; h > 0u; h >>= 1) {
            if (t < h && beats(rv[t + h], ri[t + h], rv[t], ri[t])) { rv[t] = rv[t + h]; ri[t] = ri[t + h]; }
            barrier();
        }
        if (t == 0u) {
            uint best = ri[0] == 0xffffffffu ? 0u : ri[0];
            chosen[j] = best;
            taken[best] = 1u;
        }
        barrier();
    }
    barrier();
    if (t == 0u) {
        float wsum = 0.0;
        float w[16];
        for (uint j = 0u; j < p.k; j++) {
            uint best = chosen[j];
            float s = p.func == 1u ? exp_acc(LG[lb + best] - mxs) / dens : score(LG[lb + best]);
            w[j] = s;
            wsum += s;
        }
        for (uint j = 0u; j < p.k; j++) {
            float v = w[j];
            if (p.func != 1u) v = div_acc(v, wsum);
            SEL[tok * p.k + j] = chosen[j];
            WGT[tok * p.k + j] = v * p.route_scale;
#ifdef GROUP
            wout[j] = v * p.route_scale;
#endif
        }
    }
#ifdef GROUP
    barrier();
    route_group(t, p.k);
#endif
}
