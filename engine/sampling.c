/* engine/sampling.c: next-token choice from logits (dsv4_sample).
 *
 * Greedy when temperature <= 0: the largest logit, the lowest id on ties,
 * NaN never chosen. Otherwise softmax(logits / temperature) in double, then
 * the nucleus cut when top_p < 1, then one draw from the kept mass.
 *
 * The nucleus (top-p) cut, exactly: order the ids by probability, highest
 * first, ties by lower id; keep the shortest prefix whose summed probability
 * is >= top_p (so the id that crosses top_p is kept, and at least one id is
 * always kept). The draw is u * kept_mass with u uniform in [0, 1) from the
 * caller's generator, walked in that same order.
 *
 * The generator is SplitMix64 on the caller's one-word state: tiny, fast,
 * and repeatable from dsv4_sampling.seed, which is all a batch job needs
 * (same seed, same logits -> same tokens). */
#include <math.h>
#include <stdlib.h>

#include "engine/dsv4_engine.h"

void dsv4_sampler_seed(uint64_t *rng, uint64_t seed)
{
    /* Mix the seed once so that nearby seeds give unrelated streams. */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    *rng = z ^ (z >> 31);
}

uint64_t dsv4_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits */
static double next_unit(uint64_t *s) { return (double)(dsv4_splitmix64(s) >> 11) * 0x1p-53; }

static int32_t argmax(const float *logits, int vocab)
{
    int32_t best = -1;
    for (int i = 0; i < vocab; i++)
        if (!isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
    return best < 0 ? 0 : best;
}

typedef struct cand {
    double p;
    int32_t id;
} cand;

/* x ranks before y: more probable, then lower id */
static int before(const cand *x, const cand *y)
{
    return x->p > y->p || (x->p == y->p && x->id < y->id);
}

static void sift_down(cand *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, top = i;
        if (l < n && before(&h[l], &h[top])) top = l;
        if (r < n && before(&h[r], &h[top])) top = r;
        if (top == i) return;
        cand t = h[i];
        h[i] = h[top];
        h[top] = t;
        i = top;
    }
}

/* Moves the ids in rank order to the front of c until their mass reaches
 * want; returns how many. A heap, so a 129K vocabulary costs O(V + k log V)
 * rather than a full sort per token. */
static int nucleus(cand *c, int vocab, double want, double *kept)
{
    for (int i = vocab / 2 - 1; i >= 0; i--) sift_down(c, vocab, i);
    int n = 0, heap = vocab;
    double cum = 0;
    while (heap > 0) {
        cand top = c[0];
        c[0] = c[--heap];
        sift_down(c, heap, 0);
        /* the ranked prefix grows at the end of the array, reversed below */
        c[heap] = top;
        n++;
        cum += top.p;
        if (cum >= want) break;
    }
    for (int i = 0; i < n / 2; i++) {
        cand t = c[vocab - 1 - i];
        c[vocab - 1 - i] = c[vocab - n + i];
        c[vocab - n + i] = t;
    }
    for (int i = 0; i < n; i++) c[i] = c[vocab - n + i];
    *kept = cum;
    return n;
}

int32_t dsv4_sample(const float *logits, int vocab, const dsv4_sampling *p, uint64_t *rng)
{
    if (vocab <= 0) return 0;
    if (!p || !(p->temperature > 0) || !rng) return argmax(logits, vocab);
    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return argmax(logits, vocab); /* no memory: the most likely token */
    int32_t best = argmax(logits, vocab);
    double mx = logits[best], total = 0, inv_t = 1.0 / (double)p->temperature;
    for (int i = 0; i < vocab; i++) {
        double e = isnan(logits[i]) ? 0.0 : exp(((double)logits[i] - mx) * inv_t);
        c[i].p = e;
        c[i].id = i;
        total += e;
    }
    int n = vocab;
    double kept = total;
    if (p->top_p < 1) n = nucleus(c, vocab, (double)p->top_p * total, &kept);
    double u = next_unit(rng) * kept, cum = 0;
    int32_t out = best; /* u >= cum only by rounding: the last id with mass */
    for (int i = 0; i < n; i++) {
        if (!(c[i].p > 0)) continue;
        cum += c[i].p;
        out = c[i].id;
        if (u < cum) break;
    }
    free(c);
    return out;
}
