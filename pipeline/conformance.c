/* pipeline/conformance.c: the conformance metrics (see conformance.h).
 * Sums in double so the metric itself adds no noise to what it measures. */
#include <math.h>
#include <stdlib.h>

#include "pipeline/conformance.h"

void dsv4_conf_rel_l2(const float *got, const float *want, int64_t rows, int64_t dim, double *err)
{
    for (int64_t t = 0; t < rows; t++) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < dim; i++) {
            double d = (double)got[t * dim + i] - (double)want[t * dim + i];
            num += d * d;
            den += (double)want[t * dim + i] * (double)want[t * dim + i];
        }
        err[t] = den > 0 ? sqrt(num / den) : sqrt(num);
        if (isnan(err[t])) err[t] = INFINITY; /* a NaN output is as wrong as it gets */
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double dsv4_conf_percentile(double *v, int64_t n, double q)
{
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double pos = q / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    if (lo >= n - 1) return v[n - 1];
    double frac = pos - (double)lo;
    if (frac == 0) return v[lo];
    return v[lo] + (v[lo + 1] - v[lo]) * frac;
}

int64_t dsv4_conf_argmax(const float *v, int64_t n)
{
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(v[i]) && (best < 0 || v[i] > v[best])) best = i;
    return best < 0 ? 0 : best;
}

int dsv4_conf_compare(const float *got, const float *want, int64_t rows, int64_t dim, int logits,
                      dsv4_conf_stats *st)
{
    st->n = rows;
    st->top1 = -1;
    st->median = st->p90 = st->p99 = st->max = NAN;
    if (rows <= 0) return -1;
    double *err = malloc((size_t)rows * sizeof *err);
    if (!err) return -1;
    dsv4_conf_rel_l2(got, want, rows, dim, err);
    st->median = dsv4_conf_percentile(err, rows, 50);
    st->p90 = dsv4_conf_percentile(err, rows, 90);
    st->p99 = dsv4_conf_percentile(err, rows, 99);
    st->max = err[rows - 1];
    free(err);
    if (logits) {
        int64_t same = 0;
        for (int64_t t = 0; t < rows; t++)
            same += dsv4_conf_argmax(got + t * dim, dim) == dsv4_conf_argmax(want + t * dim, dim);
        st->top1 = (double)same / (double)rows;
    }
    return 0;
}

int dsv4_conf_block_ok(const dsv4_conf_stats *st)
{
    return st->median <= DSV4_CONF_BLOCK_MEDIAN && st->p90 <= DSV4_CONF_BLOCK_P90 &&
           st->p99 <= DSV4_CONF_BLOCK_P99;
}

int dsv4_conf_logits_ok(const dsv4_conf_stats *st)
{
    return st->median <= DSV4_CONF_LOGITS_MEDIAN && st->top1 >= DSV4_CONF_LOGITS_TOP1;
}

int dsv4_conf_chunk_ok(const dsv4_conf_stats *st) { return st->median <= DSV4_CONF_CHUNK_MEDIAN; }
