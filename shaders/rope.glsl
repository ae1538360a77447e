/* RoPE angles as precompute_freqs_cis in model.py: angle = float(pos) * freq
 * in f32 (as torch.outer does), then cos/sin. The angle is reduced to
 * [-pi, pi] in double first, so positions near 1M keep full accuracy on GPUs
 * whose float sin/cos lose it for large arguments. */
#ifndef DSV4_ROPE_GLSL
#define DSV4_ROPE_GLSL
vec2 rope_cs(uint pos, float freq)
{
    precise float a = float(pos) * freq;
    double ad = double(a);
    const double tw = 6.283185307179586LF;
    double r = ad - tw * floor(ad / tw + 0.5LF);
    float rf = float(r);
    return vec2(cos(rf), sin(rf));
}
#endif
