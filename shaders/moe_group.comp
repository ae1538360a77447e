/* moe_group: groups the T*k (token, expert) slots by expert so the expert
 * GEMMs run as a few batched products (MoE tokens grouped by expert). One
 * workgroup; the layout it writes into R is described in moe_route.glsl
 * (shared with moe_gate's GROUP variant, which does this for one token in the
 * gate's own dispatch). */
#version 450
#define MAXE 1024
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer BE { uint SEL[]; };
layout(std430, binding = 1) readonly buffer BW { float WGT[]; };
layout(std430, binding = 2) buffer BR { uint R[]; };
layout(push_constant) uniform P { uint T, E, k, rowmap_off, slotpos_off, wsort_off, e_begin_off; } p;
#define SEL_AT(s) SEL[s]
#define WGT_AT(s) WGT[s]
#include "moe_route.glsl"

void main()
{
    route_group(gl_LocalInvocationID.x, p.T * p.k);
}
