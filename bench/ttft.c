/* Time to first token of a question over a long shared prefix, with and
 * without the prefix cache: the measurement behind the cache's reason to
 * exist (issue 8, "measured, not assumed").
 *
 *   ttft MODEL_DIR PREFIX_TOKENS [QUESTION_TOKENS] [SPAN]
 *
 * 1. prefills PREFIX_TOKENS pseudo-random ids (below the model's vocabulary)
 *    in cache-span pieces, storing a cache record at every span and at the
 *    prefix end, in a fresh temporary cache directory (the first night);
 * 2. without the cache: a new sequence prefills prefix + question and
 *    samples the first token;
 * 3. with the cache: lookup, restore the records into a new sequence,
 *    prefill the question, sample the first token.
 * Prints the times, bytes on disk and tokens/s; checks that both ways give
 * bit-identical logits. Built by `make build/tools/ttft`; uses only the public
 * engine and cache APIs, the way pipeline/run_job.c does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/dsv4_cache.h"
#include "engine/dsv4_engine.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

#define DIE(...) do { fprintf(stderr, "ttft: " __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } while (0)

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: ttft MODEL_DIR PREFIX_TOKENS [QUESTION_TOKENS] [SPAN]\n");
        return 2;
    }
    int64_t n = atoll(argv[2]), q = argc > 3 ? atoll(argv[3]) : 32, span = argc > 4 ? atoll(argv[4]) : 16384;
    char err[1024], dir[] = "/tmp/dsv4-ttft-XXXXXX";
    dsv4_engine *e;
    dsv4_engine_options o = {0};
    o.verbose = 1;
    if (dsv4_engine_open(argv[1], &o, &e, err, sizeof err)) DIE("%s", err);
    const dsv4_model_info *info = dsv4_engine_info(e);
    const dsv4_state_layout *L = dsv4_engine_state_layout(e);
    int V = info->vocab_size;
    int32_t *t = malloc((size_t)(n + q) * sizeof *t);
    float *l1 = malloc((size_t)V * sizeof *l1), *l2 = malloc((size_t)V * sizeof *l2);
    if (!t || !l1 || !l2 || !mkdtemp(dir)) DIE("out of memory or no temporary directory");
    uint64_t x = 88172645463325252ull;
    for (int64_t i = 0; i < n + q; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        t[i] = 2 + (int32_t)(x % (uint64_t)(V - 2));
    }
    dsv4_cache_options co = {0};
    co.span_tokens = span;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    co.read_threads = cpus > 8 ? 8 : (int)cpus;
    co.zstd_workers = cpus > 2 ? 4 : 0;
    dsv4_cache *c;
    if (dsv4_cache_open(dir, info->fingerprint, L, &co, &c, err, sizeof err)) DIE("%s", err);

    /* 1. the first night: prefill and store */
    dsv4_seq *s;
    if (dsv4_seq_create(e, &s, err, sizeof err)) DIE("%s", err);
    int64_t n_ends = dsv4_cache_plan(c, n, &n, 1, NULL, 0);
    int64_t *ends = malloc((size_t)n_ends * sizeof *ends);
    dsv4_cache_plan(c, n, &n, 1, ends, n_ends);
    double t0 = now_s(), t_store = 0;
    int64_t last = 0;
    dsv4_cache_key parent = {{0}};
    for (int64_t i = 0; i < n_ends; i++) {
        if (dsv4_seq_prefill(s, t + last, ends[i] - last, NULL, 0, err, sizeof err)) DIE("%s", err);
        double ts = now_s();
        dsv4_state_chunk *ch;
        if (dsv4_cache_chunk_alloc(L, last, ends[i], 1, &ch, err, sizeof err) ||
            dsv4_seq_export(s, last, ch, err, sizeof err) ||
            dsv4_cache_put(c, &parent, t + last, ch, &parent, err, sizeof err))
            DIE("%s", err);
        dsv4_cache_chunk_free(ch);
        t_store += now_s() - ts;
        last = ends[i];
    }
    double t_first = now_s() - t0;
    dsv4_seq_free(s);
    dsv4_cache_stats st;
    dsv4_cache_stats_get(c, &st, err, sizeof err);

    /* 2. a question without the cache */
    t0 = now_s();
    if (dsv4_seq_create(e, &s, err, sizeof err) || dsv4_seq_prefill(s, t, n, NULL, 0, err, sizeof err) ||
        dsv4_seq_prefill(s, t + n, q, l1, 1, err, sizeof err))
        DIE("%s", err);
    double ttft_cold = now_s() - t0;
    dsv4_seq_free(s);

    /* 3. the same question with the cache */
    t0 = now_s();
    dsv4_cache_hit *hit;
    if (dsv4_cache_lookup(c, t, n, &n, 1, &hit, err, sizeof err)) DIE("%s", err);
    if (dsv4_seq_create(e, &s, err, sizeof err)) DIE("%s", err);
    int nr = dsv4_cache_hit_records(hit);
    for (int i = 0; i < nr; i++) {
        int64_t p0, p1;
        dsv4_cache_hit_span(hit, i, &p0, &p1);
        dsv4_state_chunk *ch;
        if (dsv4_cache_chunk_alloc(L, p0, p1, i == nr - 1, &ch, err, sizeof err) ||
            dsv4_cache_read(c, hit, i, ch, err, sizeof err) || dsv4_seq_import(s, ch, err, sizeof err))
            DIE("%s", err);
        dsv4_cache_chunk_free(ch);
    }
    double t_restore = now_s() - t0;
    int64_t reused = dsv4_cache_hit_tokens(hit);
    dsv4_cache_hit_free(hit);
    if (dsv4_seq_prefill(s, t + n + (reused - n), q + (n - reused), l2, 1, err, sizeof err)) DIE("%s", err);
    double ttft_warm = now_s() - t0;
    dsv4_seq_free(s);

    printf("device: %s\nmodel: %s\n", dsv4_engine_device_name(e), argv[1]);
    printf("prefix %lld tokens, question %lld tokens, cache span %lld\n", (long long)n, (long long)q, (long long)span);
    printf("first run: prefill + store %.2f s (%.0f tokens/s; storing %.2f s)\n", t_first, (double)n / t_first,
           t_store);
    printf("cache on disk: %llu records, %.1f MB, %.1f bytes/token (raw %.1f bytes/token)\n",
           (unsigned long long)st.n_records, (double)st.bytes / 1e6, (double)st.bytes / (double)n,
           (double)st.raw_bytes / (double)n);
    printf("time to first token without the cache: %.3f s\n", ttft_cold);
    printf("time to first token with the cache:    %.3f s (restore %.3f s of %lld tokens, %.2f GB/s raw)\n",
           ttft_warm, t_restore, (long long)reused, (double)st.raw_bytes / t_restore / 1e9);
    printf("speed-up: %.1fx; logits %s\n", ttft_cold / ttft_warm,
           memcmp(l1, l2, (size_t)V * sizeof *l1) ? "DIFFER (restore is not exact)" : "bit-identical");
    dsv4_cache_close(c);
    dsv4_engine_close(e);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "ttft: could not remove %s\n", dir);
    return 0;
}
