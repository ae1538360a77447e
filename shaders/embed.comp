/* embed: ParallelEmbedding + the hc expansion of Transformer.forward: row
 * TOK[t] of the bf16 table copied into hc slots of X[t]. The table may come
 * in row slices (row0, rows), one dispatch each, to fit the binding limit. */
#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BE { uint EMB[]; };
layout(std430, binding = 1) readonly buffer BT { int TOK[]; };
layout(std430, binding = 2) writeonly buffer BX { float X[]; };
layout(push_constant) uniform P { uint D, hc, row0, rows; } p;

void main()
{
    uint t = gl_WorkGroupID.x;
    uint r = uint(TOK[t]) - p.row0;
    if (r >= p.rows) return; /* the token's row is in another slice of the table */
    for (uint c = gl_LocalInvocationID.x; c < p.D; c += 64u) {
        uint e = r * p.D + c;
        uint w = EMB[e >> 1];
        float v = uintBitsToFloat((e & 1u) == 0u ? (w << 16) : (w & 0xffff0000u));
        for (uint h = 0u; h < p.hc; h++) X[(t * p.hc + h) * p.D + c] = v;
    }
}
