/* dsv4_sample: greedy ties, repeatability from the seed, the sampled
 * distribution against softmax(logits / temperature) with fixed seeds, and
 * the exact nucleus (top-p) cut of engine/sampling.c's header comment. */
#include <math.h>

#include "engine/dsv4_engine.h"
#include "tests/check.h"

static void greedy_lowest_id_on_ties(void)
{
    float l[8] = {0, 1, 2, 5, 1, 5, NAN, 5};
    dsv4_sampling g = {0, 1, 0};
    uint64_t rng;
    dsv4_sampler_seed(&rng, 1);
    CHECK(dsv4_sample(l, 8, &g, &rng) == 3);
    float nan_first[3] = {NAN, -1, -2};
    CHECK(dsv4_sample(nan_first, 3, &g, &rng) == 1);
    /* temperature below 0 is greedy too */
    dsv4_sampling neg = {-1, 0.5f, 0};
    CHECK(dsv4_sample(l, 8, &neg, &rng) == 3);
}

static void same_seed_same_tokens(void)
{
    float l[16];
    for (int i = 0; i < 16; i++) l[i] = (float)(i % 5) * 0.3f;
    dsv4_sampling p = {1.0f, 1.0f, 42};
    uint64_t a, b, c;
    dsv4_sampler_seed(&a, 42);
    dsv4_sampler_seed(&b, 42);
    dsv4_sampler_seed(&c, 43);
    int same_ab = 1, same_ac = 1;
    for (int i = 0; i < 200; i++) {
        int32_t x = dsv4_sample(l, 16, &p, &a), y = dsv4_sample(l, 16, &p, &b);
        int32_t z = dsv4_sample(l, 16, &p, &c);
        same_ab &= x == y;
        same_ac &= x == z;
        CHECK(x >= 0 && x < 16);
    }
    CHECK(same_ab);
    CHECK(!same_ac);
}

/* Frequencies of n draws against the expected probabilities (5 sigma). */
static void check_distribution(const float *l, int vocab, float temp, float top_p,
                               const double *want, uint64_t seed)
{
    enum { N = 40000 };
    int count[16] = {0};
    dsv4_sampling p = {temp, top_p, seed};
    uint64_t rng;
    dsv4_sampler_seed(&rng, seed);
    for (int i = 0; i < N; i++) {
        int32_t t = dsv4_sample(l, vocab, &p, &rng);
        CHECK(t >= 0 && t < vocab);
        if (t >= 0 && t < vocab) count[t]++;
    }
    for (int i = 0; i < vocab; i++) {
        double f = (double)count[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
        CHECKF(fabs(f - want[i]) <= 5 * sd + 1e-12, "id %d: frequency %.4f, expected %.4f", i, f,
               want[i]);
    }
}

static void distribution_follows_softmax(void)
{
    float l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    double t1[4] = {0.1, 0.2, 0.3, 0.4};
    check_distribution(l, 4, 1.0f, 1.0f, t1, 7);
    /* temperature 0.5 squares the probabilities: 1, 4, 9, 16 over 30 */
    double t05[4] = {1 / 30.0, 4 / 30.0, 9 / 30.0, 16 / 30.0};
    check_distribution(l, 4, 0.5f, 1.0f, t05, 8);
    /* temperature 2 takes square roots */
    double s = sqrt(.1) + sqrt(.2) + sqrt(.3) + sqrt(.4);
    double t2[4] = {sqrt(.1) / s, sqrt(.2) / s, sqrt(.3) / s, sqrt(.4) / s};
    check_distribution(l, 4, 2.0f, 1.0f, t2, 9);
}

static void top_p_cut_is_exact(void)
{
    /* probabilities 0.5, 0.25, 0.125, 0.125 (ids 2 and 3 tie) */
    float l[4] = {logf(4), logf(2), logf(1), logf(1)};
    /* 0.6: keep {0, 1} (0.5 < 0.6 <= 0.75) -> 2/3, 1/3 */
    double a[4] = {2 / 3.0, 1 / 3.0, 0, 0};
    check_distribution(l, 4, 1.0f, 0.6f, a, 11);
    /* 0.76: keep {0, 1, 2}; of the tied 2 and 3 the lower id is kept */
    double b[4] = {0.5 / 0.875, 0.25 / 0.875, 0.125 / 0.875, 0};
    check_distribution(l, 4, 1.0f, 0.76f, b, 12);
    /* 0.5 exactly: the id that reaches top_p is kept, nothing after it */
    double c[4] = {1, 0, 0, 0};
    check_distribution(l, 4, 1.0f, 0.5f, c, 13);
    /* tiny top_p: always the most likely; top_p 1: everything */
    check_distribution(l, 4, 1.0f, 1e-6f, c, 14);
    double d[4] = {0.5, 0.25, 0.125, 0.125};
    check_distribution(l, 4, 1.0f, 1.0f, d, 15);
}

static void large_vocab_and_infinities(void)
{
    enum { V = 129280 };
    static float l[V];
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    l[77777] = 3;
    l[5] = 3;
    dsv4_sampling p = {0.8f, 0.9f, 3};
    uint64_t rng;
    dsv4_sampler_seed(&rng, 3);
    int n5 = 0, n7 = 0;
    for (int i = 0; i < 200; i++) {
        int32_t t = dsv4_sample(l, V, &p, &rng);
        n5 += t == 5;
        n7 += t == 77777;
    }
    CHECK(n5 + n7 == 200); /* -inf logits never drawn */
    CHECK(n5 > 60 && n7 > 60);
}

int main(void)
{
    RUN(greedy_lowest_id_on_ties);
    RUN(same_seed_same_tokens);
    RUN(distribution_follows_softmax);
    RUN(top_p_cut_is_exact);
    RUN(large_vocab_and_infinities);
    CHECK_EXIT();
}
