/* compress: Compressor.forward of model.py, the gated pooling. Emits the
 * compressed entries i in [i0, i0 + gridX) of one sequence: for each of the d
 * output dims, a softmax over the candidates' scores (score + ape) weights
 * their kv values, in f32; with overlap (ratio 4) the candidates are the
 * previous window's tokens in the first d columns and this window's tokens in
 * the last d columns (overlap_transform), else this window's tokens. A token
 * at position q comes from this call's projections (KV/SC rows, q >= p0; ape
 * added here) or from the sequence's ring of the last coff*ratio tokens
 * (q < p0; stored with ape added), so prefill can start anywhere. Entry i goes to row i - base_rows of
 * OUT (the sequence's own cache). The result is rounded to bf16 (kv.to(dtype)); norm, RoPE and quantization follow in
 * headprep. */
#version 450
#include "common.glsl"
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer BK { float KV[]; };
layout(std430, binding = 1) readonly buffer BS { float SC[]; };
layout(std430, binding = 2) readonly buffer BR { float RING[]; };
layout(std430, binding = 3) readonly buffer BA { float APE[]; };
layout(std430, binding = 4) writeonly buffer BO { float OUT[]; };
/* base_rows: entries before it belong to a fork's shared prefix (complete,
   never written here); entry i goes to row i - base_rows of OUT */
layout(push_constant) uniform P { uint d, ratio, overlap, i0, p0, t0, ld_out, base_rows; } p;

void main()
{
    uint i = p.i0 + gl_WorkGroupID.x;
    uint c = gl_WorkGroupID.y * 64u + gl_LocalInvocationID.x;
    if (c >= p.d) return;
    uint coff = p.overlap != 0u ? 2u : 1u, w = coff * p.d, L = coff * p.ratio;
    float sv[256], kv[256];
    uint n = 0u;
    int first = p.overlap != 0u ? int(i * p.ratio) - int(p.ratio) : int(i * p.ratio);
    for (int q = first; q < int((i + 1u) * p.ratio); q++) {
        if (q < 0) continue;
        uint col = (p.overlap != 0u && uint(q) >= i * p.ratio) ? p.d + c : c;
        float s, k;
        if (uint(q) >= p.p0) {
            uint r = p.t0 + uint(q) - p.p0;
            k = KV[r * w + col];
            s = SC[r * w + col] + APE[(uint(q) % p.ratio) * w + col];
        } else {
            uint r = uint(q) % L;
            k = RING[r * 2u * w + col];
            s = RING[r * 2u * w + w + col];
        }
        sv[n] = s; kv[n] = k; n++;
    }
    float m = -1.0 / 0.0;
    for (uint j = 0u; j < n; j++) m = max(m, sv[j]);
    float sum = 0.0;
    for (uint j = 0u; j < n; j++) { sv[j] = exp_acc(sv[j] - m); sum += sv[j]; }
    precise float acc = 0.0;
    for (uint j = 0u; j < n; j++) acc += kv[j] * div_acc(sv[j], sum);
    OUT[(i - p.base_rows) * p.ld_out + c] = bf16r(acc);
}
