/* pipeline/conformance.h: the metrics that decide whether an implementation
 * of DeepSeek-V4 agrees with the golden outputs of the official model code
 * (tests/golden/tiny/README.md), shared by `dsv4-batch conformance` and the
 * tests so both judge by the same numbers.
 *
 *   per-position relative L2: for row t, |got_t - want_t|_2 / |want_t|_2
 *     (a row of hc*hidden block outputs or of vocab logits);
 *   median / p90 / p99 / max of those (percentiles by linear interpolation
 *     between order statistics, as numpy.percentile);
 *   top-1 agreement: the fraction of rows whose argmax (lowest index on
 *     ties) is the same.
 * The thresholds are the golden README's. */
#ifndef DSV4_CONFORMANCE_H
#define DSV4_CONFORMANCE_H

#include <stdint.h>

/* Per block, teacher-forced */
#define DSV4_CONF_BLOCK_MEDIAN 5e-3
#define DSV4_CONF_BLOCK_P90 5e-2
#define DSV4_CONF_BLOCK_P99 1.5e-1
/* Whole model logits, prefill and decode, and the MTP logits */
#define DSV4_CONF_LOGITS_MEDIAN 0.25
#define DSV4_CONF_LOGITS_TOP1 0.6
/* Chunked prefill against one-shot prefill (self-consistency) */
#define DSV4_CONF_CHUNK_MEDIAN 1e-3

typedef struct dsv4_conf_stats {
    int64_t n;           /* rows compared */
    double median, p90, p99, max;
    double top1;         /* fraction of rows with equal argmax (logits only; else -1) */
} dsv4_conf_stats;

/* err[t] = relative L2 error of row t (rows of `dim` floats). A row whose
 * reference is all zero gives |got_t| (absolute error). */
void dsv4_conf_rel_l2(const float *got, const float *want, int64_t rows, int64_t dim, double *err);

/* The percentile q in [0, 100] of v[n] (sorts v in place). */
double dsv4_conf_percentile(double *v, int64_t n, double q);

/* Index of the largest value (lowest index on ties; NaN never wins). */
int64_t dsv4_conf_argmax(const float *v, int64_t n);

/* Fills st from got/want [rows][dim]; top1 is computed when logits != 0. */
int dsv4_conf_compare(const float *got, const float *want, int64_t rows, int64_t dim, int logits,
                      dsv4_conf_stats *st);

/* Pass/fail against the thresholds above. */
int dsv4_conf_block_ok(const dsv4_conf_stats *st);
int dsv4_conf_logits_ok(const dsv4_conf_stats *st);
int dsv4_conf_chunk_ok(const dsv4_conf_stats *st);

#endif
