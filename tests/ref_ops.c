/* tests/ref_ops.c: the per-operation CPU reference of DeepSeek-V4 (see
 * tests/ref_model.h for the contract of each function). Each function cites
 * the official function it follows; rounding points are where the official
 * code casts to bf16 or to a narrow float format. Plain loops in f32, built
 * with -ffp-contract=off; the GEMM loops run over 64 outputs at a time so the
 * compiler can vectorize them without reordering any sum. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tests/ref_model.h"

static inline float bf(float x) { return dsv4_round_bf16(x); }

float ref_pow2_ceil(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    int e = (int)((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0);
    return ldexpf(1.0f, e);
}

float ref_round_e4m3(float x)
{
    if (x == 0 || isnan(x)) return x;
    float a = fabsf(x);
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1): exponent of a is e - 1 */
    int ex = e - 1 < -6 ? -6 : e - 1;
    float quantum = ldexpf(1.0f, ex - 3);
    float r = rintf(a / quantum) * quantum;
    if (r > 448.0f) r = 448.0f;
    return x < 0 ? -r : r;
}

float ref_round_e2m1(float x)
{
    if (x == 0 || isnan(x)) return x;
    float a = fabsf(x);
    int e;
    frexpf(a, &e);
    int ex = e - 1 < 0 ? 0 : e - 1;
    float quantum = ldexpf(1.0f, ex - 1);
    float r = rintf(a / quantum) * quantum;
    if (r > 6.0f) r = 6.0f;
    return x < 0 ? -r : r;
}

void ref_rmsnorm(const float *x, const float *w, int64_t n, int dim, float eps, float *y)
{
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * dim;
        float *yr = y + t * dim;
        float ss = 0;
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) yr[i] = bf((w ? w[i] : 1.0f) * (xr[i] * r));
    }
}

void ref_act_quant(float *x, int64_t n, int dim, int stride, int block)
{
    const float inv = (float)(1.0 / 448.0);
    for (int64_t t = 0; t < n; t++)
        for (int b = 0; b < dim; b += block) {
            float *v = x + t * stride + b;
            float amax = 0;
            for (int i = 0; i < block; i++) amax = fmaxf(amax, fabsf(v[i]));
            amax = fmaxf(amax, 1e-4f);
            float s = ref_pow2_ceil(amax * inv);
            for (int i = 0; i < block; i++) {
                float q = v[i] / s;
                q = q > 448.0f ? 448.0f : q < -448.0f ? -448.0f : q;
                v[i] = bf(ref_round_e4m3(q) * s);
            }
        }
}

void ref_fp4_act_quant(float *x, int64_t n, int dim)
{
    const float inv = (float)(1.0 / 6.0);
    for (int64_t t = 0; t < n; t++)
        for (int b = 0; b < dim; b += 32) {
            float *v = x + t * dim + b;
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(v[i]));
            amax = fmaxf(amax, 6.0f * 0x1p-126f);
            float s = ref_pow2_ceil(amax * inv);
            for (int i = 0; i < 32; i++) {
                float q = v[i] / s;
                q = q > 6.0f ? 6.0f : q < -6.0f ? -6.0f : q;
                v[i] = bf(ref_round_e2m1(q) * s);
            }
        }
}

void ref_hadamard(float *x, int64_t n, int dim)
{
    float scale = (float)(1.0 / sqrt((double)dim));
    for (int64_t t = 0; t < n; t++) {
        float *v = x + t * dim;
        for (int h = 1; h < dim; h <<= 1)
            for (int i = 0; i < dim; i += 2 * h)
                for (int j = i; j < i + h; j++) {
                    float a = v[j], b = v[j + h];
                    v[j] = a + b;
                    v[j + h] = a - b;
                }
        for (int i = 0; i < dim; i++) v[i] = bf(v[i] * scale);
    }
}

/* ------------------------------------------------------------ weights */

int ref_weight_load(const dsv4_weight *src, ref_weight *dst)
{
    memset(dst, 0, sizeof *dst);
    dst->q = src->q;
    dst->out = src->out;
    dst->in = src->in;
    size_t n = (size_t)src->out * (size_t)src->in;
    dst->w = malloc(n * sizeof(float));
    dst->wt = malloc(n * sizeof(float));
    if (!dst->w || !dst->wt) {
        ref_weight_free(dst);
        return -1;
    }
    const uint8_t *d = src->w.data, *s = src->scale.data;
    int64_t O = src->out, I = src->in;
    for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < I; i++) {
            float v;
            switch (src->q) {
            case DSV4_WQ_BF16: {
                uint16_t h;
                memcpy(&h, d + (o * I + i) * 2, 2);
                v = dsv4_bf16_to_f32(h);
                break;
            }
            case DSV4_WQ_F32:
                memcpy(&v, d + (o * I + i) * 4, 4);
                break;
            case DSV4_WQ_FP8:
                v = dsv4_e4m3_to_f32(d[o * I + i]) *
                    dsv4_e8m0_to_f32(s[(o / 128) * ((I + 127) / 128) + i / 128]);
                break;
            case DSV4_WQ_FP4: {
                uint8_t b = d[o * (I / 2) + i / 2];
                v = dsv4_e2m1_to_f32((i & 1) ? b >> 4 : b & 15) *
                    dsv4_e8m0_to_f32(s[o * (I / 32) + i / 32]);
                break;
            }
            default:
                v = 0;
            }
            dst->w[o * I + i] = v;
            dst->wt[i * O + o] = v;
        }
    return 0;
}

void ref_weight_free(ref_weight *w)
{
    if (!w) return;
    free(w->w);
    free(w->wt);
    w->w = w->wt = NULL;
}

/* ------------------------------------------------------------ GEMM */

#define TILE 64

typedef struct gemm_job {
    const float *wt;
    int64_t out, in;
    const float *x;
    int64_t t0, t1;
    float *y;
    int kblk;   /* partial-sum block along K (0: one sum) */
    int round;  /* round outputs to bf16 */
} gemm_job;

static void gemm_run(const gemm_job *j)
{
    int64_t kblk = j->kblk ? j->kblk : j->in;
    for (int64_t t = j->t0; t < j->t1; t++) {
        const float *xr = j->x + t * j->in;
        for (int64_t o0 = 0; o0 < j->out; o0 += TILE) {
            int64_t no = j->out - o0 < TILE ? j->out - o0 : TILE;
            float acc[TILE] = {0}, part[TILE];
            for (int64_t k0 = 0; k0 < j->in; k0 += kblk) {
                int64_t k1 = k0 + kblk < j->in ? k0 + kblk : j->in;
                if (no == TILE) {
                    for (int q = 0; q < TILE; q++) part[q] = 0;
                    for (int64_t k = k0; k < k1; k++) {
                        float xk = xr[k];
                        const float *w = j->wt + k * j->out + o0;
                        for (int q = 0; q < TILE; q++) part[q] += xk * w[q];
                    }
                    for (int q = 0; q < TILE; q++) acc[q] += part[q];
                } else {
                    for (int q = 0; q < no; q++) part[q] = 0;
                    for (int64_t k = k0; k < k1; k++) {
                        float xk = xr[k];
                        const float *w = j->wt + k * j->out + o0;
                        for (int q = 0; q < no; q++) part[q] += xk * w[q];
                    }
                    for (int q = 0; q < no; q++) acc[q] += part[q];
                }
            }
            float *yr = j->y + t * j->out + o0;
            for (int q = 0; q < no; q++) yr[q] = j->round ? bf(acc[q]) : acc[q];
        }
    }
}

static void *gemm_thread(void *p)
{
    gemm_run(p);
    return NULL;
}

/* Splits rows over 2 threads when the product is big enough to pay for it. */
static void gemm(const float *wt, int64_t out, int64_t in, const float *x, int64_t n, float *y,
                 int kblk, int round)
{
    gemm_job a = {wt, out, in, x, 0, n, y, kblk, round};
    if (n < 2 || (double)n * (double)out * (double)in < 4e6) {
        gemm_run(&a);
        return;
    }
    gemm_job b = a;
    a.t1 = n / 2;
    b.t0 = n / 2;
    pthread_t th;
    if (pthread_create(&th, NULL, gemm_thread, &b) != 0) {
        gemm_run(&a);
        gemm_run(&b);
        return;
    }
    gemm_run(&a);
    pthread_join(th, NULL);
}

void ref_linear(const ref_weight *w, const float *x, int64_t n, float *y)
{
    if (w->q == DSV4_WQ_FP8 || w->q == DSV4_WQ_FP4) {
        float *xq = malloc((size_t)n * (size_t)w->in * sizeof(float));
        if (!xq) abort(); /* test support code: no recovery from OOM */
        memcpy(xq, x, (size_t)n * (size_t)w->in * sizeof(float));
        ref_act_quant(xq, n, (int)w->in, (int)w->in, 128);
        gemm(w->wt, w->out, w->in, xq, n, y, w->q == DSV4_WQ_FP8 ? 128 : 32, 1);
        free(xq);
    } else {
        gemm(w->wt, w->out, w->in, x, n, y, 0, 1);
    }
}

void ref_linear_f32_t(const float *wt, int64_t out, int64_t in, const float *x, int64_t n,
                      float *y)
{
    gemm(wt, out, in, x, n, y, 0, 0);
}

float *ref_transpose(const float *w, int64_t out, int64_t in)
{
    float *wt = malloc((size_t)out * (size_t)in * sizeof(float));
    if (!wt) abort();
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) wt[i * out + o] = w[o * in + i];
    return wt;
}

void ref_linear_f32(const float *w, int64_t out, int64_t in, const float *x, int64_t n, float *y)
{
    /* w is [out][in] here; transpose once per call (these weights are small
       or, for the head, used once per forward). */
    float *wt = malloc((size_t)out * (size_t)in * sizeof(float));
    if (!wt) abort();
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) wt[i * out + o] = w[o * in + i];
    gemm(wt, out, in, x, n, y, 0, 0);
    free(wt);
}

/* ------------------------------------------------------------ RoPE */

int ref_rope_init(ref_rope *r, int rd, double base, int yarn, int64_t original_seq_len,
                  double factor, double beta_fast, double beta_slow)
{
    r->rd = rd;
    r->freq = malloc((size_t)(rd / 2) * sizeof(float));
    if (!r->freq) return -1;
    for (int i = 0; i < rd / 2; i++) {
        float e = (float)(2 * i) / (float)rd;
        r->freq[i] = (float)(1.0 / (double)(float)pow(base, (double)e));
    }
    if (yarn && original_seq_len > 0) {
        /* precompute_freqs_cis: find_correction_range + linear ramp */
        double lo_d = rd * log((double)original_seq_len / (beta_fast * 2 * M_PI)) / (2 * log(base));
        double hi_d = rd * log((double)original_seq_len / (beta_slow * 2 * M_PI)) / (2 * log(base));
        double lo = floor(lo_d), hi = ceil(hi_d);
        if (lo < 0) lo = 0;
        if (hi > rd - 1) hi = rd - 1;
        if (lo == hi) hi += 0.001;
        for (int i = 0; i < rd / 2; i++) {
            float ramp = (float)(((float)i - (float)lo) / (float)(hi - lo));
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            float smooth = 1.0f - ramp;
            float f = r->freq[i];
            r->freq[i] = f / (float)factor * (1.0f - smooth) + f * smooth;
        }
    }
    return 0;
}

void ref_rope_free(ref_rope *r)
{
    if (!r) return;
    free(r->freq);
    r->freq = NULL;
}

void ref_rope_apply(const ref_rope *r, float *x, int64_t n, const int64_t *pos, int heads,
                    int head_stride, int stride, int off, int inverse)
{
    for (int64_t t = 0; t < n; t++)
        for (int i = 0; i < r->rd / 2; i++) {
            float ang = (float)pos[t] * r->freq[i];
            float c = (float)cos((double)ang), s = (float)sin((double)ang);
            if (inverse) s = -s;
            for (int h = 0; h < heads; h++) {
                float *v = x + t * stride + h * head_stride + off + 2 * i;
                float a = v[0], b = v[1];
                v[0] = bf(a * c - b * s);
                v[1] = bf(a * s + b * c);
            }
        }
}

/* ------------------------------------------------------------ mHC */

static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void ref_hc_split_sinkhorn(const float *mixes, const float *hc_scale, const float *hc_base,
                           int hc, int iters, float eps, float *pre, float *post, float *comb)
{
    for (int j = 0; j < hc; j++) {
        pre[j] = sigmoidf(mixes[j] * hc_scale[0] + hc_base[j]) + eps;
        post[j] = 2 * sigmoidf(mixes[hc + j] * hc_scale[1] + hc_base[hc + j]);
    }
    float *c = comb;
    for (int j = 0; j < hc; j++) {
        float mx = -INFINITY;
        for (int k = 0; k < hc; k++) {
            c[j * hc + k] = mixes[2 * hc + j * hc + k] * hc_scale[2] + hc_base[2 * hc + j * hc + k];
            mx = fmaxf(mx, c[j * hc + k]);
        }
        float sum = 0;
        for (int k = 0; k < hc; k++) {
            c[j * hc + k] = expf(c[j * hc + k] - mx);
            sum += c[j * hc + k];
        }
        for (int k = 0; k < hc; k++) c[j * hc + k] = c[j * hc + k] / sum + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0)
            for (int j = 0; j < hc; j++) {
                float sum = 0;
                for (int k = 0; k < hc; k++) sum += c[j * hc + k];
                for (int k = 0; k < hc; k++) c[j * hc + k] /= sum + eps;
            }
        for (int k = 0; k < hc; k++) {
            float sum = 0;
            for (int j = 0; j < hc; j++) sum += c[j * hc + k];
            for (int j = 0; j < hc; j++) c[j * hc + k] /= sum + eps;
        }
    }
}

/* mixes[n][m] = (x_flat . fn[m]) * rsqrt(mean(x_flat^2) + eps); fn_t is
 * fn transposed ([hc*dim][m]). */
static float *hc_mixes(const float *x, int64_t n, int hc, int dim, const float *fn_t, int m,
                       float norm_eps)
{
    int64_t w = (int64_t)hc * dim;
    float *mixes = malloc((size_t)n * (size_t)m * sizeof(float));
    if (!mixes) abort();
    ref_linear_f32_t(fn_t, m, w, x, n, mixes);
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * w;
        float ss = 0;
        for (int64_t i = 0; i < w; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)w + norm_eps);
        for (int i = 0; i < m; i++) mixes[t * m + i] *= r;
    }
    return mixes;
}

void ref_hc_pre(const float *x, int64_t n, int hc, int dim, const float *fn, const float *scale,
                const float *base, int iters, float norm_eps, float hc_eps, float *y, float *post,
                float *comb)
{
    float *fn_t = ref_transpose(fn, (2 + hc) * hc, (int64_t)hc * dim);
    ref_hc_pre_t(x, n, hc, dim, fn_t, scale, base, iters, norm_eps, hc_eps, y, post, comb);
    free(fn_t);
}

void ref_hc_pre_t(const float *x, int64_t n, int hc, int dim, const float *fn_t, const float *scale,
                  const float *base, int iters, float norm_eps, float hc_eps, float *y, float *post,
                  float *comb)
{
    int m = (2 + hc) * hc;
    float *mixes = hc_mixes(x, n, hc, dim, fn_t, m, norm_eps);
    float pre[64];
    for (int64_t t = 0; t < n; t++) {
        ref_hc_split_sinkhorn(mixes + t * m, scale, base, hc, iters, hc_eps, pre, post + t * hc,
                              comb + t * hc * hc);
        for (int d = 0; d < dim; d++) {
            float s = 0;
            for (int j = 0; j < hc; j++) s += pre[j] * x[(t * hc + j) * dim + d];
            y[t * dim + d] = bf(s);
        }
    }
    free(mixes);
}

void ref_hc_post(const float *f, const float *res, const float *post, const float *comb, int64_t n,
                 int hc, int dim, float *out)
{
    for (int64_t t = 0; t < n; t++)
        for (int j = 0; j < hc; j++)
            for (int d = 0; d < dim; d++) {
                float s = 0;
                for (int k = 0; k < hc; k++)
                    s += comb[(t * hc + k) * hc + j] * res[(t * hc + k) * dim + d];
                out[(t * hc + j) * dim + d] = bf(post[t * hc + j] * f[t * dim + d] + s);
            }
}

void ref_hc_head(const float *x, int64_t n, int hc, int dim, const float *fn, const float *scale,
                 const float *base, float norm_eps, float hc_eps, float *y)
{
    float *fn_t = ref_transpose(fn, hc, (int64_t)hc * dim);
    ref_hc_head_t(x, n, hc, dim, fn_t, scale, base, norm_eps, hc_eps, y);
    free(fn_t);
}

void ref_hc_head_t(const float *x, int64_t n, int hc, int dim, const float *fn_t,
                   const float *scale, const float *base, float norm_eps, float hc_eps, float *y)
{
    float *mixes = hc_mixes(x, n, hc, dim, fn_t, hc, norm_eps);
    for (int64_t t = 0; t < n; t++) {
        float pre[64];
        for (int j = 0; j < hc; j++) pre[j] = sigmoidf(mixes[t * hc + j] * scale[0] + base[j]) + hc_eps;
        for (int d = 0; d < dim; d++) {
            float s = 0;
            for (int j = 0; j < hc; j++) s += pre[j] * x[(t * hc + j) * dim + d];
            y[t * dim + d] = bf(s);
        }
    }
    free(mixes);
}

/* ------------------------------------------------------------ attention */

void ref_sparse_attn(const float *q, int heads, int hd, const float *const *keys, int n_keys,
                     const float *attn_sink, float softmax_scale, float *o)
{
    float *s = malloc((size_t)(n_keys + 1) * sizeof(float));
    float *acc = malloc((size_t)hd * sizeof(float));
    if (!s || !acc) abort();
    for (int h = 0; h < heads; h++) {
        const float *qh = q + (int64_t)h * hd;
        float m = -INFINITY, sum = 0;
        for (int j = 0; j < n_keys; j++) {
            const float *k = keys[j];
            if (!k) continue;
            float dot = 0;
            for (int d = 0; d < hd; d++) dot += qh[d] * k[d];
            s[j] = dot * softmax_scale;
            m = fmaxf(m, s[j]);
        }
        for (int d = 0; d < hd; d++) acc[d] = 0;
        if (m == -INFINITY) m = attn_sink[h]; /* no key at all: only the sink */
        for (int j = 0; j < n_keys; j++) {
            const float *k = keys[j];
            if (!k) continue;
            float p = expf(s[j] - m);
            sum += p;
            float pb = bf(p); /* bf16 probabilities in the value sum */
            for (int d = 0; d < hd; d++) acc[d] += pb * k[d];
        }
        sum += expf(attn_sink[h] - m);
        for (int d = 0; d < hd; d++) o[(int64_t)h * hd + d] = bf(acc[d] / sum);
    }
    free(s);
    free(acc);
}

/* ------------------------------------------------------------ compressor */

int ref_comp_state_init(ref_comp_state *s, int ratio, int head_dim, int overlap)
{
    int coff = 1 + (overlap != 0);
    size_t n = (size_t)coff * (size_t)ratio * (size_t)coff * (size_t)head_dim;
    s->ratio = ratio;
    s->head_dim = head_dim;
    s->overlap = overlap != 0;
    s->kv = malloc(n * sizeof(float));
    s->score = malloc(n * sizeof(float));
    if (!s->kv || !s->score) {
        ref_comp_state_free(s);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        s->kv[i] = 0;
        s->score[i] = -INFINITY;
    }
    return 0;
}

void ref_comp_state_free(ref_comp_state *s)
{
    if (!s) return;
    free(s->kv);
    free(s->score);
    s->kv = s->score = NULL;
}

int ref_comp_step(ref_comp_state *s, int64_t pos, const float *kv, const float *score,
                  const float *ape, float *out)
{
    int r = s->ratio, d = s->head_dim, coff = 1 + s->overlap, w = coff * d;
    int slot = (int)(pos % r);
    int row = s->overlap ? r + slot : slot;
    for (int i = 0; i < w; i++) {
        s->kv[row * w + i] = kv[i];
        s->score[row * w + i] = score[i] + ape[slot * w + i];
    }
    if ((pos + 1) % r) return 0;
    /* Pool per dim over the window's rows (overlap: the previous window's first
       half dims, then this window's second half dims), softmax over rows. */
    for (int i = 0; i < d; i++) {
        int nrows = coff * r;
        float mx = -INFINITY;
        for (int j = 0; j < nrows; j++) {
            int col = s->overlap ? (j < r ? i : d + i) : i;
            mx = fmaxf(mx, s->score[j * w + col]);
        }
        float sum = 0;
        for (int j = 0; j < nrows; j++) {
            int col = s->overlap ? (j < r ? i : d + i) : i;
            sum += expf(s->score[j * w + col] - mx);
        }
        float acc = 0;
        for (int j = 0; j < nrows; j++) {
            int col = s->overlap ? (j < r ? i : d + i) : i;
            float p = expf(s->score[j * w + col] - mx) / sum;
            acc += s->kv[j * w + col] * p;
        }
        out[i] = acc;
    }
    if (s->overlap) {
        memcpy(s->kv, s->kv + (size_t)r * w, (size_t)r * w * sizeof(float));
        memcpy(s->score, s->score + (size_t)r * w, (size_t)r * w * sizeof(float));
    }
    return 1;
}

void ref_comp_finish(float *entry, int head_dim, const float *norm_w, float eps,
                     const ref_rope *rope, int64_t pos0, int rotate)
{
    int rd = rope->rd;
    for (int i = 0; i < head_dim; i++) entry[i] = bf(entry[i]);
    ref_rmsnorm(entry, norm_w, 1, head_dim, eps, entry);
    ref_rope_apply(rope, entry, 1, &pos0, 1, head_dim, head_dim, head_dim - rd, 0);
    if (rotate) {
        ref_hadamard(entry, 1, head_dim);
        ref_fp4_act_quant(entry, 1, head_dim);
    } else {
        ref_act_quant(entry, 1, head_dim - rd, head_dim, 64);
    }
}

/* ------------------------------------------------------------ indexer */

/* Is (sa, a) ranked before (sb, b)? Higher score first, then lower index. */
static int ranks_before(float sa, int64_t a, float sb, int64_t b)
{
    return sa > sb || (sa == sb && a < b);
}

/* The k best of score[n] into sel in rank order (k small: insertion). */
static int top_k(const float *score, int64_t n, int k, int64_t *sel)
{
    int cnt = 0;
    for (int64_t i = 0; i < n; i++) {
        if (cnt == k && !ranks_before(score[i], i, score[sel[k - 1]], sel[k - 1])) continue;
        int at = cnt < k ? cnt++ : k - 1;
        while (at > 0 && ranks_before(score[i], i, score[sel[at - 1]], sel[at - 1])) {
            sel[at] = sel[at - 1];
            at--;
        }
        sel[at] = i;
    }
    return cnt;
}

int ref_indexer_select(const float *q, const float *weights, int ih, int ihd, const float *idx_kv,
                       int64_t n_vis, int topk, float *score, int64_t *sel)
{
    for (int64_t t = 0; t < n_vis; t++) {
        const float *k = idx_kv + t * ihd;
        float total = 0;
        for (int h = 0; h < ih; h++) {
            float dot = 0;
            for (int d = 0; d < ihd; d++) dot += q[h * ihd + d] * k[d];
            dot = bf(dot);
            if (dot < 0) dot = 0;
            total += bf(dot * weights[h]);
        }
        score[t] = bf(total);
    }
    int k = n_vis < topk ? (int)n_vis : topk;
    if (k <= 0) return 0;
    return top_k(score, n_vis, k, sel);
}

/* ------------------------------------------------------------ MoE gate */

void ref_moe_gate(const dsv4_config *cfg, const float *gate_logits, const float *bias,
                  const int64_t *tid2eid_row, int *experts, float *weights)
{
    int E = cfg->n_routed_experts, k = cfg->num_experts_per_tok;
    float *sc = malloc((size_t)E * 2 * sizeof(float));
    if (!sc) abort();
    float *biased = sc + E;
    for (int e = 0; e < E; e++) {
        float v = gate_logits[e];
        if (cfg->scoring_func == DSV4_SCORE_SIGMOID) v = 1.0f / (1.0f + expf(-v));
        else if (cfg->scoring_func == DSV4_SCORE_SQRTSOFTPLUS)
            v = sqrtf(v > 20.0f ? v : log1pf(expf(v)));
        sc[e] = v;
    }
    if (cfg->scoring_func == DSV4_SCORE_SOFTMAX) {
        float mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, sc[e]);
        for (int e = 0; e < E; e++) sum += (sc[e] = expf(sc[e] - mx));
        for (int e = 0; e < E; e++) sc[e] /= sum;
    }
    if (tid2eid_row) {
        for (int i = 0; i < k; i++) experts[i] = (int)tid2eid_row[i];
    } else {
        int64_t sel[1024];
        for (int e = 0; e < E; e++) biased[e] = sc[e] + (bias ? bias[e] : 0.0f);
        top_k(biased, E, k, sel);
        for (int i = 0; i < k; i++) experts[i] = (int)sel[i];
    }
    float sum = 0;
    for (int i = 0; i < k; i++) sum += (weights[i] = sc[experts[i]]);
    for (int i = 0; i < k; i++) {
        if (cfg->scoring_func != DSV4_SCORE_SOFTMAX) weights[i] /= sum;
        weights[i] *= (float)cfg->routed_scaling_factor;
    }
    free(sc);
}
