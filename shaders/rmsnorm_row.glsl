/* rmsnorm_row.glsl: RMSNorm.forward of one row by a workgroup of 256
 * invocations, shared by rmsnorm.comp and hc_pre.comp -DNORM (which norms the
 * row it has just computed: one dispatch, and one barrier of a decode step's
 * chain, fewer). The including shader declares X[] (read where the row is
 * not staged), Wt[] (the bf16 weight), Y[] and with QUANT YQ[], shared
 * float xs[] (the staged row), and the globals xb (the row's offset in X)
 * and staged. Call rms_row_init(), then barrier() after which xs holds the
 * row, then rms_row(); rmsnorm.comp says in which order it adds and how it
 * quantizes. */
shared float red[64];
#ifdef QUANT
shared uint amax[64]; /* per 128-column block: the bits of max |y| (non-negative floats order as uints) */
#endif

float xv(uint c) { return staged ? xs[c] : X[xb + c]; }

float wat(uint c) { return bf16_at(Wt[c >> 1], c & 1u); }

/* the bf16 result of column c, weight w */
float ynorm(uint c, float w, float r)
{
    precise float y = w * (xv(c) * r);
    return bf16r(y);
}

void rms_row_init()
{
#ifdef QUANT
    if (gl_LocalInvocationID.x < 64u) amax[gl_LocalInvocationID.x] = 0u;
#endif
}

/* Y[yrow + c] (and YQ[yrow + c]) for the row's D columns */
void rms_row(uint D, uint yrow, float eps)
{
    uint t = gl_LocalInvocationID.x, last = D - 1u;
    if (t < 64u) {
        precise float s = 0.0;
        for (uint c0 = t; c0 < D; c0 += 256u) {
            vec4 a;
            for (uint k = 0u; k < 4u; k++) a[k] = xv(min(c0 + 64u * k, last));
            for (uint k = 0u; k < 4u; k++)
                if (c0 + 64u * k < D) s += a[k] * a[k];
        }
        red[t] = s;
    }
    barrier();
    for (uint k = 32u; k > 0u; k >>= 1) {
        if (t < k) red[t] += red[t + k];
        barrier();
    }
    float r = rsqrt_acc(div_acc(red[0], float(D)) + eps);
#ifdef QUANT
    /* block b's 128 columns: four invocations, 32 columns each (the order of
       the 32 skewed by b, so a subgroup's eight blocks use distinct banks);
       with the row staged the bf16 results replace it in xs (each column is
       read and written by its one invocation) */
    uint b = t >> 2;
    if (b < D >> 7) {
        uint m = 0u;
        for (uint i0 = 0u; i0 < 32u; i0 += 4u) {
            vec4 w4; /* the weights of four columns in flight at a time */
            for (uint k = 0u; k < 4u; k++) w4[k] = wat(b * 128u + (t & 3u) + 4u * ((i0 + k + b) & 31u));
            for (uint k = 0u; k < 4u; k++) {
                uint c = b * 128u + (t & 3u) + 4u * ((i0 + k + b) & 31u);
                float yb = ynorm(c, w4[k], r);
                if (staged) xs[c] = yb;
                m = max(m, floatBitsToUint(abs(yb)));
            }
        }
        atomicMax(amax[b], m);
    }
    barrier();
#endif
    for (uint c0 = t; c0 < D; c0 += 1024u) {
        vec4 y4;
        for (uint k = 0u; k < 4u; k++) {
            uint c = min(c0 + 256u * k, last);
#ifdef QUANT
            y4[k] = staged ? xs[c] : ynorm(c, wat(c), r);
#else
            y4[k] = ynorm(c, wat(c), r);
#endif
        }
        for (uint k = 0u; k < 4u; k++) {
            uint c = c0 + 256u * k;
            if (c >= D) continue;
            Y[yrow + c] = y4[k];
#ifdef QUANT
            float sc = pow2_ceil(max(uintBitsToFloat(amax[c >> 7]), 1e-4) * (1.0 / 448.0));
            YQ[yrow + c] = bf16r(fp8_qdq(y4[k], sc));
#endif
        }
    }
}
