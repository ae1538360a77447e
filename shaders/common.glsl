/* (Accumulations feeding rounding-sensitive values are declared `precise`
 * in the shaders: the official code runs unfused torch kernels, and a fused
 * multiply-add rounds differently.)
 *
 * Shared GLSL helpers: bf16/e4m3/e2m1/e8m0 decoding from packed uint words and
 * the rounding the official kernels apply (kernel_tilelang.py act_quant,
 * fp4_quant: power-of-two block scales, round-to-nearest-even casts). Weights
 * arrive as raw bytes in uint arrays so no 8/16-bit storage feature is needed. */
#ifndef DSV4_COMMON_GLSL
#define DSV4_COMMON_GLSL

/* torch's .to(bfloat16): round to nearest even (NaN passes through). */
float bf16r(float f)
{
    uint u = floatBitsToUint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f;
    u += 0x7fffu + ((u >> 16) & 1u);
    return uintBitsToFloat(u & 0xffff0000u);
}

float bf16_at(uint w, uint half_idx) /* half_idx 0: low 16 bits */
{
    return uintBitsToFloat(half_idx == 0u ? (w << 16) : (w & 0xffff0000u));
}

float e4m3_decode(uint b)
{
    uint s = b >> 7, e = (b >> 3) & 15u, m = b & 7u;
    float v;
    if (e == 0u) v = float(m) * (1.0 / 512.0);
    else v = uintBitsToFloat(((e + 120u) << 23) | (m << 20));
    return s != 0u ? -v : v;
}

float e8m0_decode(uint b)
{
    return b == 0u ? uintBitsToFloat(0x00400000u) : uintBitsToFloat(b << 23);
}

float e2m1_decode(uint c)
{
    uint m = c & 7u;
    float v = m < 2u ? 0.5 * float(m) : (m < 4u ? 1.0 + 0.5 * float(m - 2u) : (m < 6u ? 2.0 + float(m - 4u) : 4.0 + 2.0 * float(m - 6u)));
    return (c & 8u) != 0u ? -v : v;
}

/* Packed minifloats to fp16 bit patterns, for decoding with unpackHalf2x16
 * (exact, no table: a table indexed per element becomes per-invocation local
 * memory on GPUs). e4m3 pair (bytes b0 | b1 << 8 of x): sign and the 7 other
 * bits move into fp16's, which is the value times 2^-8. e2m1 pair (the two
 * nibbles of byte b, low first): the value times 2^-14. */
uint e4m3x2_to_half2(uint x)
{
    return ((x & 0x80u) << 8) | ((x & 0x7fu) << 7) | ((x & 0x8000u) << 16) | ((x & 0x7f00u) << 15);
}

uint e2m1x2_to_half2(uint b)
{
    return ((b & 8u) << 12) | ((b & 7u) << 9) | ((b & 0x80u) << 24) | ((b & 0x70u) << 21);
}

/* The same a word at a time (the SMALL GEMMs: fewer operations per value).
 * e4m3: bytes 0 and 2 of x; adding the sign bit to itself carries it one
 * place up, past the 7 other bits. e2m1: nibbles 0 and 4 of x. */
uint e4m3_b02_to_half2(uint x)
{
    uint t = x & 0x00ff00ffu;
    return (t + (t & 0x00800080u)) << 7;
}

uint e2m1_nib04_to_half2(uint x)
{
    return ((x & 0x00080008u) << 12) | ((x & 0x00070007u) << 9);
}

/* Smallest power of two >= x (fast_round_scale in kernel_tilelang.py). */
float pow2_ceil(float x)
{
    uint u = floatBitsToUint(x);
    int e = int((u >> 23) & 0xffu) - 127 + ((u & 0x7fffffu) != 0u ? 1 : 0);
    return uintBitsToFloat(uint(e + 127) << 23);
}

/* Round v (already divided by its scale and clamped) to a float format with
 * mant_bits mantissa bits and smallest quantum min_q: e4m3 is (3, 2^-9), e2m1
 * (1, 0.5). Round to nearest even as the CUDA cast does. */
float round_minifloat(float v, int mant_bits, float min_q)
{
    float a = abs(v);
    if (a == 0.0) return v;
    int e = int((floatBitsToUint(a) >> 23) & 0xffu) - 127;
    float q = max(uintBitsToFloat(uint(e - mant_bits + 127) << 23), min_q);
    return sign(v) * roundEven(a / q) * q;
}

float fp8_qdq(float x, float s) /* quant-dequant with power-of-two scale s */
{
    return round_minifloat(clamp(x / s, -448.0, 448.0), 3, 1.0 / 512.0) * s;
}

float fp4_qdq(float x, float s)
{
    return round_minifloat(clamp(x / s, -6.0, 6.0), 1, 0.5) * s;
}

/* exp, 1/sqrt and division correctly rounded (as glibc's expf, sqrtf and
 * IEEE division, which the CPU reference and the golden data agree with):
 * computed in double, rounded once to float. GPU exp()/inversesqrt()/'/' are
 * approximations, and the probabilities, gates and norms they feed are then
 * rounded to bf16 or FP8, where a last-bit difference flips a rounding. */
float exp_acc(float x)
{
    if (x < -104.0) return 0.0;
    if (x > 88.8) return uintBitsToFloat(0x7f800000u);
    double xd = double(x);
    double n = roundEven(xd * 1.4426950408889634LF);
    double r = xd - n * 0.6931471805599453LF;
    double q = 1.0LF / 39916800.0LF;
    q = q * r + 1.0LF / 3628800.0LF;
    q = q * r + 1.0LF / 362880.0LF;
    q = q * r + 1.0LF / 40320.0LF;
    q = q * r + 1.0LF / 5040.0LF;
    q = q * r + 1.0LF / 720.0LF;
    q = q * r + 1.0LF / 120.0LF;
    q = q * r + 1.0LF / 24.0LF;
    q = q * r + 1.0LF / 6.0LF;
    q = q * r + 0.5LF;
    q = q * r + 1.0LF;
    q = q * r + 1.0LF;
    int ni = int(n);
    int n1 = ni / 2, n2 = ni - n1;
    return float(q * ldexp(1.0LF, n1) * ldexp(1.0LF, n2));
}

float div_acc(float a, float b) { return float(double(a) / double(b)); }

/* log(x) for x > 0, correctly rounded: frexp, then 2 atanh((m-1)/(m+1)). */
float log_acc(float x)
{
    int e;
    double m = frexp(double(x), e); /* m in [0.5, 1) */
    if (m < 0.7071067811865476LF) { m *= 2.0LF; e -= 1; }
    double s = (m - 1.0LF) / (m + 1.0LF), s2 = s * s, t = 0.0LF;
    for (int k = 12; k >= 0; k--) t = t * s2 + 1.0LF / double(2 * k + 1);
    return float(2.0LF * s * t + double(e) * 0.6931471805599453LF);
}

/* 1.0f / sqrtf(x): two correctly rounded steps, as the reference. */
float rsqrt_acc(float x)
{
    float s = float(sqrt(double(x)));
    return div_acc(1.0, s);
}

float silu(float x) { return div_acc(x, 1.0 + exp_acc(-x)); }

#endif
