/* Text -> token ids: added tokens, the DeepSeek pre-tokenizer, BPE.
 *
 * The pre-tokenizer is a hand-written scanner, not a regex engine, because it
 * must be both exact and fast. Hugging Face applies three "Isolated" splits in
 * turn, each only inside the pieces the previous one made:
 *   1. \p{N}{1,3}                       digit runs cut into groups of three
 *   2. [一-龥぀-ゟ゠-ヿ]+                   runs of CJK ideographs and kana
 *   3. A1 [ASCII punct][A-Za-z]+
 *      A2 [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
 *      A3  ?[\p{P}\p{S}]+[\r\n]*
 *      A4 \s*[\r\n]+        (backtracks: ends after the LAST CR/LF of the run)
 *      A5 \s+(?!\S)         (backtracks: a run followed by a non-space loses
 *                            its last character, which then starts the next
 *                            piece, e.g. "   word" -> "  ", " word")
 *      A6 \s+
 * Oniguruma tries the alternatives in order at each position and takes the
 * first that matches; text no alternative matches at its position collects
 * into a gap piece. The scanner below decides the same thing per position with
 * at most one character of lookahead plus run scans, so it is linear. \s is
 * Unicode White_Space and \p{..} are general categories, Unicode 16.0 (the
 * table in tokenizer_unicode.c, see scripts/gen-tokenizer-unicode.mjs).
 *
 * BPE follows HF's Word::merge_all: repeatedly merge the adjacent pair with
 * the lowest merge rank, the leftmost on ties. Short pieces use a quadratic
 * scan over a small array (fastest for words); long ones merge rank by rank
 * from per-rank buckets of positions (linear memory access; a 10 MB run of one
 * letter is fine), falling back to a heap keyed by (rank, position) for a
 * merges list not ordered as training makes them. Results of short pieces are
 * cached per encoder. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest/tokenizer_internal.h"

size_t dsv4_tok_small_bpe_limit = 256;
int dsv4_tok_large_bpe_heap_only = 0;
#define SMALL_MAX 256

#define CACHE_SLOTS (1u << 17)
#define CACHE_MAX_PIECE 64
#define CACHE_KEY_ARENA (1u << 22)
#define CACHE_ID_ARENA (1u << 20)

typedef struct cache_slot {
    uint64_t hash; /* 0 = empty */
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
} cache_slot;

struct dsv4_tok_encoder {
    const dsv4_tokenizer *tok;
    cache_slot *slots;
    unsigned char *keys;
    int32_t *ids;
    size_t n_used, key_used, ids_used;
    size_t slot_cap, key_cap, ids_cap; /* grow from small to the CACHE_* limits */
    /* scratch of the heap BPE, grown to the longest piece seen */
    int32_t *sym, *prv, *nxt;
    size_t scratch_cap;
    /* rank buckets of the long-piece BPE: positions per merge rank, and a
     * heap of the ranks that have entries */
    uint32_t **bucket;
    uint32_t *bucket_n, *bucket_cap, *rank_heap;
    /* ids of the current piece */
    int32_t *piece;
    size_t piece_cap;
    int plain; /* DSV4_TOK_PLAIN: no added-token matching */
};

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

dsv4_tok_encoder *dsv4_tok_encoder_new(const dsv4_tokenizer *tok)
{
    dsv4_tok_encoder *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->tok = tok;
    return e;
}

static void free_buckets(dsv4_tok_encoder *e)
{
    if (e->bucket)
        for (size_t r = 0; r < e->tok->n_merges; r++) free(e->bucket[r]);
    free(e->bucket);
    free(e->bucket_n);
    free(e->bucket_cap);
    free(e->rank_heap);
    e->bucket = NULL;
    e->bucket_n = e->bucket_cap = e->rank_heap = NULL;
}

static void free_scratch(dsv4_tok_encoder *e)
{
    free_buckets(e);
    free(e->sym);
    free(e->prv);
    free(e->nxt);
    e->sym = e->prv = e->nxt = NULL;
    e->scratch_cap = 0;
}

void dsv4_tok_encoder_free(dsv4_tok_encoder *e)
{
    if (!e) return;
    free(e->slots);
    free(e->keys);
    free(e->ids);
    free_scratch(e);
    free(e->piece);
    free(e);
}

/* ---- piece cache ---- */

static uint64_t piece_hash(const unsigned char *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = dsv4_tok_mix64(h ^ w);
    }
    uint64_t w = 0;
    memcpy(&w, p + i, n - i);
    h = dsv4_tok_mix64(h ^ w ^ 0xff51afd7ed558ccdull);
    return h | 1;
}

/* The cache starts small (a short prompt costs little) and doubles up to the
 * CACHE_* limits; when full at the limit it is emptied and starts over. */
static int cache_init(dsv4_tok_encoder *e)
{
    e->slot_cap = 1024;
    e->key_cap = 16384;
    e->ids_cap = 4096;
    e->slots = calloc(e->slot_cap, sizeof *e->slots);
    e->keys = malloc(e->key_cap);
    e->ids = malloc(e->ids_cap * sizeof *e->ids);
    return e->slots && e->keys && e->ids ? 0 : -1;
}

static const cache_slot *cache_get(const dsv4_tok_encoder *e, const unsigned char *p, size_t n, uint64_t h)
{
    size_t mask = e->slot_cap - 1, i = (size_t)h & mask;
    for (;;) {
        const cache_slot *s = &e->slots[i];
        if (s->hash == 0) return NULL;
        if (s->hash == h && s->key_len == n && memcmp(e->keys + s->key_off, p, n) == 0) return s;
        i = (i + 1) & mask;
    }
}

static void cache_clear(dsv4_tok_encoder *e)
{
    memset(e->slots, 0, e->slot_cap * sizeof *e->slots);
    e->n_used = e->key_used = e->ids_used = 0;
}

/* Makes room for one more entry of n key bytes and n_ids ids. */
static void cache_make_room(dsv4_tok_encoder *e, size_t n, size_t n_ids)
{
    if (e->n_used + 1 > e->slot_cap / 2) {
        cache_slot *bigger = e->slot_cap < CACHE_SLOTS ? calloc(e->slot_cap * 2, sizeof *bigger) : NULL;
        if (!bigger) {
            cache_clear(e);
        } else {
            size_t mask = e->slot_cap * 2 - 1;
            for (size_t i = 0; i < e->slot_cap; i++) {
                if (!e->slots[i].hash) continue;
                size_t j = (size_t)e->slots[i].hash & mask;
                while (bigger[j].hash) j = (j + 1) & mask;
                bigger[j] = e->slots[i];
            }
            free(e->slots);
            e->slots = bigger;
            e->slot_cap *= 2;
        }
    }
    while (e->key_used + n > e->key_cap) {
        unsigned char *k = e->key_cap < CACHE_KEY_ARENA ? realloc(e->keys, e->key_cap * 2) : NULL;
        if (!k) {
            cache_clear(e);
            break;
        }
        e->keys = k;
        e->key_cap *= 2;
    }
    while (e->ids_used + n_ids > e->ids_cap) {
        int32_t *d = e->ids_cap < CACHE_ID_ARENA ? realloc(e->ids, e->ids_cap * 2 * sizeof *d) : NULL;
        if (!d) {
            cache_clear(e);
            break;
        }
        e->ids = d;
        e->ids_cap *= 2;
    }
}

static void cache_put(dsv4_tok_encoder *e, const unsigned char *p, size_t n, uint64_t h, const int32_t *ids,
                      size_t n_ids)
{
    cache_make_room(e, n, n_ids);
    size_t mask = e->slot_cap - 1, i = (size_t)h & mask;
    while (e->slots[i].hash) i = (i + 1) & mask;
    cache_slot *s = &e->slots[i];
    s->hash = h;
    s->key_off = (uint32_t)e->key_used;
    s->key_len = (uint16_t)n;
    s->ids_off = (uint32_t)e->ids_used;
    s->n_ids = (uint16_t)n_ids;
    memcpy(e->keys + e->key_used, p, n);
    memcpy(e->ids + e->ids_used, ids, n_ids * sizeof *ids);
    e->key_used += n;
    e->ids_used += n_ids;
    e->n_used++;
}

/* ---- BPE ---- */

/* Rank and merged id of a pair; rank UINT32_MAX when there is no merge. (A
 * small per-encoder cache of pairs in front of this was measured: no gain.) */
static inline void pair_lookup(const dsv4_tokenizer *t, int32_t left, int32_t right, uint32_t *rank, int32_t *id)
{
    if (dsv4_tok_merge_lookup(t, left, right, rank, id) < 0) *rank = UINT32_MAX;
}

/* Quadratic BPE for n <= SMALL_MAX symbols; writes the ids to out. The
 * arrays are shifted by hand: the sizes are small, a memmove call costs more. */
static size_t bpe_small(const dsv4_tokenizer *t, const unsigned char *p, size_t n, int32_t *out)
{
    int32_t sym[SMALL_MAX], mid[SMALL_MAX];
    uint32_t rk[SMALL_MAX];
    size_t m = n;
    for (size_t i = 0; i < n; i++) sym[i] = t->byte_id[p[i]];
    for (size_t i = 0; i + 1 < m; i++) pair_lookup(t, sym[i], sym[i + 1], &rk[i], &mid[i]);
    while (m > 1) {
        uint32_t best = UINT32_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < m; i++)
            if (rk[i] < best) {
                best = rk[i];
                bi = i;
            }
        if (best == UINT32_MAX) break;
        sym[bi] = mid[bi];
        /* drop symbol bi+1 and pair bi+1; pairs after it move down by one */
        for (size_t i = bi + 1; i + 1 < m; i++) sym[i] = sym[i + 1];
        for (size_t i = bi + 1; i + 2 < m; i++) {
            rk[i] = rk[i + 1];
            mid[i] = mid[i + 1];
        }
        m--;
        if (bi > 0) pair_lookup(t, sym[bi - 1], sym[bi], &rk[bi - 1], &mid[bi - 1]);
        if (bi + 1 < m) pair_lookup(t, sym[bi], sym[bi + 1], &rk[bi], &mid[bi]);
    }
    memcpy(out, sym, m * sizeof *sym);
    return m;
}

/* A 4-ary min-heap of (rank << 32 | position): shallower than a binary heap,
 * and a node's children share a cache line. */
static void heap_sift_down(uint64_t *h, size_t n, size_t i)
{
    uint64_t v = h[i];
    for (;;) {
        size_t c = 4 * i + 1;
        if (c >= n) break;
        size_t best = c;
        size_t last = c + 4 < n ? c + 4 : n;
        for (size_t k = c + 1; k < last; k++)
            if (h[k] < h[best]) best = k;
        if (v <= h[best]) break;
        h[i] = h[best];
        i = best;
    }
    h[i] = v;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 4;
        if (h[parent] <= v) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0];
    h[0] = h[--(*n)];
    if (*n) heap_sift_down(h, *n, 0);
    return top;
}

static void init_symbols(const dsv4_tokenizer *t, const unsigned char *p, size_t n, int32_t *sym, int32_t *prv,
                         int32_t *nxt)
{
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_id[p[i]];
        prv[i] = (int32_t)i - 1;
        nxt[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
}

/* Merges the pair at pos if it is still the pair of that rank (an entry is
 * stale once either symbol changed), then hands the two new pairs to PUSH.
 * Shared by the heap and the bucket BPE, which differ only in the queue. */
#define MERGE_AT(pos, rank, PUSH)                                                                       \
    do {                                                                                                \
        uint32_t r_;                                                                                    \
        int32_t id_;                                                                                    \
        if (sym[pos] < 0 || nxt[pos] < 0) break;                                                        \
        int32_t right_ = nxt[pos];                                                                      \
        if (dsv4_tok_merge_lookup(t, sym[pos], sym[right_], &r_, &id_) < 0 || r_ != (rank)) break;      \
        sym[pos] = id_;                                                                                 \
        sym[right_] = -1;                                                                               \
        nxt[pos] = nxt[right_];                                                                         \
        if (nxt[right_] >= 0) prv[nxt[right_]] = (int32_t)(pos);                                        \
        if (prv[pos] >= 0 && dsv4_tok_merge_lookup(t, sym[prv[pos]], sym[pos], &r_, &id_) == 0)         \
            PUSH(r_, (uint32_t)prv[pos]);                                                               \
        if (nxt[pos] >= 0 && dsv4_tok_merge_lookup(t, sym[pos], sym[nxt[pos]], &r_, &id_) == 0)         \
            PUSH(r_, (uint32_t)(pos));                                                                  \
    } while (0)

/* Heap-ordered BPE: HF's exact order (rank, then position of the left
 * symbol) for any merges list. Entries made stale by earlier merges are
 * skipped on pop. O(n log n), but the heap of a long piece does not fit in
 * cache, so it is the fallback. */
static void bpe_heap(const dsv4_tokenizer *t, size_t n, int32_t *sym, int32_t *prv, int32_t *nxt, uint64_t *heap)
{
    size_t hn = 0;
    uint32_t r;
    int32_t id;
    for (size_t i = 0; i + 1 < n; i++)
        if (dsv4_tok_merge_lookup(t, sym[i], sym[i + 1], &r, &id) == 0) heap[hn++] = (uint64_t)r << 32 | i;
    for (size_t i = hn / 4 + 1; i-- > 0;) /* heapify in O(n) */
        if (i < hn) heap_sift_down(heap, hn, i);
#define HEAP_PUSH(rank, pos) heap_push(heap, &hn, (uint64_t)(rank) << 32 | (pos))
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        uint32_t rank = (uint32_t)(top >> 32), pos = (uint32_t)top;
        MERGE_AT(pos, rank, HEAP_PUSH);
    }
#undef HEAP_PUSH
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void rank_heap_push(uint32_t *h, size_t *n, uint32_t v)
{
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint32_t rank_heap_pop(uint32_t *h, size_t *n)
{
    uint32_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (v <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

/* Rank-bucket BPE: all pairs of the lowest pending rank are merged in
 * position order, then the next rank. That is HF's (rank, position) order as
 * long as every merge creates pairs of higher rank than its own, which holds
 * for merges lists made by BPE training (a token is only merged further after
 * it exists). It touches memory in order, unlike a heap. If a lower rank
 * appears it returns 1 and the caller redoes the piece with the heap.
 * Returns -1 when out of memory. */
static int bpe_buckets(dsv4_tok_encoder *e, size_t n)
{
    const dsv4_tokenizer *t = e->tok;
    int32_t *sym = e->sym, *prv = e->prv, *nxt = e->nxt;
    size_t nr = t->n_merges, hn = 0;
    if (!e->bucket) {
        e->bucket = calloc(nr ? nr : 1, sizeof *e->bucket);
        e->bucket_n = calloc(nr ? nr : 1, sizeof *e->bucket_n);
        e->bucket_cap = calloc(nr ? nr : 1, sizeof *e->bucket_cap);
        e->rank_heap = malloc((nr ? nr : 1) * sizeof *e->rank_heap);
        if (!e->bucket || !e->bucket_n || !e->bucket_cap || !e->rank_heap) return -1;
    }
    uint32_t **bucket = e->bucket, *bn = e->bucket_n, *bcap = e->bucket_cap, *rh = e->rank_heap;
    int status = 0, ordered = 0; /* ordered: the rank order is checked once merging starts */
    uint32_t cur = 0;
#define BUCKET_PUSH(rank, pos)                                                                   \
    do {                                                                                         \
        uint32_t rk_ = (rank);                                                                   \
        if (ordered && rk_ <= cur && status == 0) status = 1; /* not as trained: use the heap */ \
        if (status) break;                                                                       \
        if (bn[rk_] == bcap[rk_]) {                                                              \
            uint32_t c_ = bcap[rk_] ? bcap[rk_] * 2 : 16;                                        \
            uint32_t *q_ = realloc(bucket[rk_], c_ * sizeof *q_);                                \
            if (!q_) {                                                                           \
                status = -1;                                                                     \
                break;                                                                           \
            }                                                                                    \
            bucket[rk_] = q_;                                                                    \
            bcap[rk_] = c_;                                                                      \
        }                                                                                        \
        if (bn[rk_] == 0) rank_heap_push(rh, &hn, rk_);                                          \
        bucket[rk_][bn[rk_]++] = (pos);                                                          \
    } while (0)
    uint32_t r;
    int32_t id;
    for (size_t i = 0; i + 1 < n && status == 0; i++)
        if (dsv4_tok_merge_lookup(t, sym[i], sym[i + 1], &r, &id) == 0) BUCKET_PUSH(r, (uint32_t)i);
    ordered = 1;
    while (hn && status == 0) {
        cur = rank_heap_pop(rh, &hn);
        uint32_t *list = bucket[cur];
        size_t k = bn[cur];
        int sorted = 1;
        for (size_t j = 1; j < k && sorted; j++) sorted = list[j - 1] < list[j];
        if (!sorted) qsort(list, k, sizeof *list, cmp_u32);
        for (size_t j = 0; j < k && status == 0; j++) {
            uint32_t pos = list[j];
            MERGE_AT(pos, cur, BUCKET_PUSH);
        }
        bn[cur] = 0;
        if (bcap[cur] > 4096) { /* a rank is done for this piece: give back big lists now */
            free(bucket[cur]);
            bucket[cur] = NULL;
            bcap[cur] = 0;
        }
    }
#undef BUCKET_PUSH
    /* leave every bucket empty for the next piece */
    while (hn) bn[rank_heap_pop(rh, &hn)] = 0;
    return status;
}

/* BPE of a long piece into e->sym (*n_out ids). */
static int bpe_large(dsv4_tok_encoder *e, const unsigned char *p, size_t n, size_t *n_out)
{
    const dsv4_tokenizer *t = e->tok;
    if (n > UINT32_MAX / 2) return DSV4_TOK_EINVAL;
    if (n > e->scratch_cap) {
        free_scratch(e);
        e->sym = malloc(n * sizeof *e->sym);
        e->prv = malloc(n * sizeof *e->prv);
        e->nxt = malloc(n * sizeof *e->nxt);
        if (!e->sym || !e->prv || !e->nxt) {
            free_scratch(e);
            return DSV4_TOK_ENOMEM;
        }
        e->scratch_cap = n;
    }
    int32_t *sym = e->sym, *prv = e->prv, *nxt = e->nxt;
    init_symbols(t, p, n, sym, prv, nxt);
    int status = dsv4_tok_large_bpe_heap_only ? 1 : bpe_buckets(e, n);
    if (status < 0) return DSV4_TOK_ENOMEM;
    if (status == 1) {
        /* each merge pushes at most two entries and removes one symbol */
        uint64_t *heap = malloc(3 * n * sizeof *heap);
        if (!heap) return DSV4_TOK_ENOMEM;
        init_symbols(t, p, n, sym, prv, nxt);
        bpe_heap(t, n, sym, prv, nxt, heap);
        free(heap);
    }
    size_t m = 0;
    for (int32_t i = 0; i >= 0; i = nxt[i]) sym[m++] = sym[i];
    *n_out = m;
    return 0;
}

/* Encodes one pre-token piece, appending its ids to out. */
static int encode_piece(dsv4_tok_encoder *e, const unsigned char *p, size_t n, dsv4_tokens *out)
{
    const dsv4_tokenizer *t = e->tok;
    if (n == 1) return dsv4_tokens_append(out, &t->byte_id[p[0]], 1);
    size_t limit = dsv4_tok_small_bpe_limit < SMALL_MAX ? dsv4_tok_small_bpe_limit : SMALL_MAX;
    if (n <= CACHE_MAX_PIECE && n <= limit) {
        uint64_t h = piece_hash(p, n);
        const cache_slot *s = cache_get(e, p, n, h);
        if (s) return dsv4_tokens_append(out, e->ids + s->ids_off, s->n_ids);
        int32_t ids[CACHE_MAX_PIECE];
        size_t m = bpe_small(t, p, n, ids);
        cache_put(e, p, n, h, ids, m);
        return dsv4_tokens_append(out, ids, m);
    }
    if (n <= limit) {
        int32_t ids[SMALL_MAX];
        size_t m = bpe_small(t, p, n, ids);
        return dsv4_tokens_append(out, ids, m);
    }
    size_t m;
    int rc = bpe_large(e, p, n, &m);
    if (rc < 0) return rc;
    rc = dsv4_tokens_append(out, e->sym, m);
    /* do not keep tens of MB of scratch after one pathological piece */
    if (e->scratch_cap > ((size_t)1 << 20)) free_scratch(e);
    return rc;
}

/* ---- pre-tokenizer ---- */

#define CP_INVALID 0x110000u /* an invalid byte: a "character" with no properties */

static inline uint32_t dec(const unsigned char *s, size_t i, size_t end, size_t *len)
{
    unsigned b = s[i];
    if (b < 0x80) {
        *len = 1;
        return b;
    }
    size_t n = end - i;
    if (b >= 0xC2 && b <= 0xDF && n >= 2 && (s[i + 1] & 0xC0) == 0x80) {
        *len = 2;
        return (b & 0x1F) << 6 | (s[i + 1] & 0x3F);
    }
    if (b >= 0xE0 && b <= 0xEF && n >= 3 && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
        uint32_t c = (b & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
        if (c >= 0x800 && (c < 0xD800 || c > 0xDFFF)) {
            *len = 3;
            return c;
        }
    } else if (b >= 0xF0 && b <= 0xF4 && n >= 4 && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
               (s[i + 3] & 0xC0) == 0x80) {
        uint32_t c = (b & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
                     (s[i + 3] & 0x3F);
        if (c >= 0x10000 && c <= 0x10FFFF) {
            *len = 4;
            return c;
        }
    }
    *len = 1;
    return CP_INVALID;
}

static inline int is_cjk(uint32_t c)
{
    return (c >= 0x3040 && c <= 0x30FF) || (c >= 0x4E00 && c <= 0x9FA5);
}

static inline int is_ascii_alpha(unsigned c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static inline int is_ascii_punct(uint32_t c)
{
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
}

/* end of the run of characters having any of mask, starting at i */
static size_t run_end(const unsigned char *s, size_t i, size_t end, unsigned mask)
{
    while (i < end) {
        size_t l;
        uint32_t c = dec(s, i, end, &l);
        if (!(dsv4_tok_ucd_flags(c) & mask)) break;
        i += l;
    }
    return i;
}

static size_t crlf_end(const unsigned char *s, size_t i, size_t end)
{
    while (i < end && (s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

/* Split 3 (the word regex) over [a, end), which split 1 and 2 made a piece. */
static int split_words(dsv4_tok_encoder *e, const unsigned char *s, size_t a, size_t end, dsv4_tokens *out)
{
    size_t i = a, gap = a;
    int rc;
    while (i < end) {
        size_t l, l2 = 0, t = 0;
        uint32_t c = dec(s, i, end, &l);
        unsigned f = dsv4_tok_ucd_flags(c);
        size_t nx = i + l;
        uint32_t c2 = 0;
        unsigned f2 = 0;
        if (nx < end) {
            c2 = dec(s, nx, end, &l2);
            f2 = dsv4_tok_ucd_flags(c2);
        }
        if (is_ascii_punct(c) && nx < end && is_ascii_alpha(c2)) { /* A1 */
            t = nx + 1;
            while (t < end && is_ascii_alpha(s[t])) t++;
        } else {
            int x = c != '\r' && c != '\n' && !(f & (UCD_L | UCD_P | UCD_S));
            if (x && (f2 & (UCD_L | UCD_M))) /* A2 with its optional first character */
                t = run_end(s, nx, end, UCD_L | UCD_M);
            else if (f & (UCD_L | UCD_M)) /* A2 without */
                t = run_end(s, i, end, UCD_L | UCD_M);
            else if (c == ' ' && (f2 & (UCD_P | UCD_S))) /* A3 with the space */
                t = crlf_end(s, run_end(s, nx, end, UCD_P | UCD_S), end);
            else if (f & (UCD_P | UCD_S)) /* A3 without */
                t = crlf_end(s, run_end(s, i, end, UCD_P | UCD_S), end);
            else if (f & UCD_WS) { /* A4, A5, A6 over the whitespace run */
                size_t j = i, last_start = i, after_crlf = 0, n_chars = 0;
                while (j < end) {
                    size_t lj;
                    uint32_t cj = dec(s, j, end, &lj);
                    if (!(dsv4_tok_ucd_flags(cj) & UCD_WS)) break;
                    if (cj == '\r' || cj == '\n') after_crlf = j + lj;
                    last_start = j;
                    j += lj;
                    n_chars++;
                }
                if (after_crlf) t = after_crlf;                   /* A4 */
                else if (j == end) t = j;                         /* A5 at the end */
                else if (n_chars >= 2) t = last_start;            /* A5 backtracked */
                else t = j;                                       /* A6 */
            }
        }
        if (t) {
            if (gap < i && (rc = encode_piece(e, s + gap, i - gap, out)) < 0) return rc;
            if ((rc = encode_piece(e, s + i, t - i, out)) < 0) return rc;
            i = gap = t;
        } else {
            i = nx; /* no alternative matches here: the character joins a gap */
        }
    }
    if (gap < end && (rc = encode_piece(e, s + gap, end - gap, out)) < 0) return rc;
    return 0;
}

/* Splits 1 (digit groups) and 2 (CJK runs) over a text between added tokens. */
static int encode_text(dsv4_tok_encoder *e, const unsigned char *s, size_t a, size_t end, dsv4_tokens *out)
{
    size_t i = a;
    int rc;
    while (i < end) {
        size_t l;
        uint32_t c = dec(s, i, end, &l);
        size_t j = i + l;
        if (dsv4_tok_ucd_flags(c) & UCD_N) {
            for (int k = 1; k < 3 && j < end; k++) {
                size_t l2;
                uint32_t c2 = dec(s, j, end, &l2);
                if (!(dsv4_tok_ucd_flags(c2) & UCD_N)) break;
                j += l2;
            }
            if ((rc = encode_piece(e, s + i, j - i, out)) < 0) return rc;
        } else {
            int cjk = is_cjk(c);
            while (j < end) {
                size_t l2;
                uint32_t c2 = dec(s, j, end, &l2);
                if ((dsv4_tok_ucd_flags(c2) & UCD_N) || is_cjk(c2) != cjk) break;
                j += l2;
            }
            if ((rc = split_words(e, s, i, j, out)) < 0) return rc;
        }
        i = j;
    }
    return 0;
}

/* Longest added token of trie tr starting at i; its length, or 0. */
static size_t trie_match(const tok_trie *tr, const unsigned char *s, size_t i, size_t end, int32_t *id)
{
    int32_t cur = 0;
    size_t best = 0;
    for (size_t j = i; j < end; j++) {
        int32_t c = tr->nodes[cur].first_child;
        while (c >= 0 && tr->nodes[c].byte != s[j]) c = tr->nodes[c].next_sibling;
        if (c < 0) break;
        cur = c;
        if (tr->nodes[cur].id >= 0) {
            best = j + 1 - i;
            *id = tr->nodes[cur].id;
        }
    }
    return best;
}

/* Added tokens, pass `level` (0: normalized=false tokens over the raw text,
 * 1: normalized=true tokens over what pass 0 left), leftmost-longest as HF. */
static int encode_added(dsv4_tok_encoder *e, const unsigned char *s, size_t a, size_t end, int level,
                        dsv4_tokens *out)
{
    const tok_trie *tr = &e->tok->added[level];
    size_t i = a, gap = a;
    int rc;
    if (tr->n) {
        while (i < end) {
            int32_t id;
            size_t m;
            if (!tr->first[s[i]] || !(m = trie_match(tr, s, i, end, &id))) {
                i++;
                continue;
            }
            if (gap < i) {
                rc = level == 0 ? encode_added(e, s, gap, i, 1, out) : encode_text(e, s, gap, i, out);
                if (rc < 0) return rc;
            }
            if ((rc = dsv4_tokens_append(out, &id, 1)) < 0) return rc;
            i = gap = i + m;
        }
    }
    if (gap < end) return level == 0 ? encode_added(e, s, gap, end, 1, out) : encode_text(e, s, gap, end, out);
    return 0;
}

int dsv4_tok_encoder_encode(dsv4_tok_encoder *e, const char *text, size_t len, dsv4_tokens *out, char *err,
                            size_t errlen)
{
    if (!e->slots && cache_init(e) < 0) {
        set_err(err, errlen, "encode: out of memory for the piece cache");
        return DSV4_TOK_ENOMEM;
    }
    int rc = e->plain ? encode_text(e, (const unsigned char *)text, 0, len, out)
                      : encode_added(e, (const unsigned char *)text, 0, len, 0, out);
    if (rc == DSV4_TOK_ENOMEM) set_err(err, errlen, "encode: out of memory");
    else if (rc < 0) set_err(err, errlen, "encode: a pre-token piece of over 2 GB");
    return rc;
}

int dsv4_tokenizer_encode(const dsv4_tokenizer *tok, const char *text, size_t len, dsv4_tokens *out, char *err,
                          size_t errlen)
{
    dsv4_tok_encoder *e = dsv4_tok_encoder_new(tok);
    if (!e) {
        set_err(err, errlen, "encode: out of memory");
        return DSV4_TOK_ENOMEM;
    }
    int rc = dsv4_tok_encoder_encode(e, text, len, out, err, errlen);
    dsv4_tok_encoder_free(e);
    return rc;
}

/* ---- many documents on many threads ---- */

typedef struct batch {
    const dsv4_tokenizer *tok;
    size_t n_docs;
    const char *const *texts;
    const size_t *lens;
    dsv4_tokens *outs;
    int plain;
    atomic_size_t next;
    atomic_int rc;
    pthread_mutex_t err_lock;
    char *err;
    size_t errlen;
} batch;

static void *batch_worker(void *arg)
{
    batch *b = arg;
    dsv4_tok_encoder *e = dsv4_tok_encoder_new(b->tok);
    char err[256];
    if (!e) {
        atomic_store(&b->rc, DSV4_TOK_ENOMEM);
        return NULL;
    }
    e->plain = b->plain;
    for (;;) {
        size_t i = atomic_fetch_add(&b->next, 1);
        if (i >= b->n_docs || atomic_load(&b->rc) < 0) break;
        int rc = dsv4_tok_encoder_encode(e, b->texts[i], b->lens[i], &b->outs[i], err, sizeof err);
        if (rc < 0) {
            pthread_mutex_lock(&b->err_lock);
            if (atomic_load(&b->rc) == 0) {
                atomic_store(&b->rc, rc);
                if (b->err && b->errlen) snprintf(b->err, b->errlen, "document %zu: %s", i, err);
            }
            pthread_mutex_unlock(&b->err_lock);
            break;
        }
    }
    dsv4_tok_encoder_free(e);
    return NULL;
}

void dsv4_tok_encoder_set_flags(dsv4_tok_encoder *e, unsigned flags)
{
    e->plain = (flags & DSV4_TOK_PLAIN) != 0;
}

int dsv4_tokenizer_encode_batch(const dsv4_tokenizer *tok, size_t n_docs, const char *const *texts,
                                const size_t *lens, int n_threads, dsv4_tokens *outs, char *err, size_t errlen)
{
    return dsv4_tokenizer_encode_batch_ex(tok, n_docs, texts, lens, 0, n_threads, outs, err, errlen);
}

int dsv4_tokenizer_encode_batch_ex(const dsv4_tokenizer *tok, size_t n_docs, const char *const *texts,
                                   const size_t *lens, unsigned flags, int n_threads, dsv4_tokens *outs, char *err,
                                   size_t errlen)
{
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if ((size_t)n_threads > n_docs) n_threads = n_docs ? (int)n_docs : 1;
    if (n_threads > 256) n_threads = 256;
    batch b = {.tok = tok, .n_docs = n_docs, .texts = texts, .lens = lens, .outs = outs, .err = err,
               .errlen = errlen, .plain = (flags & DSV4_TOK_PLAIN) != 0};
    atomic_init(&b.next, 0);
    atomic_init(&b.rc, 0);
    pthread_mutex_init(&b.err_lock, NULL);
    pthread_t th[256];
    int started = 0;
    /* the calling thread works too, so n_threads == 1 starts no thread */
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&th[started], NULL, batch_worker, &b) != 0) break;
        started++;
    }
    batch_worker(&b);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&b.err_lock);
    int rc = atomic_load(&b.rc);
    if (rc == DSV4_TOK_ENOMEM && err && errlen && !err[0]) snprintf(err, errlen, "encode: out of memory");
    return rc;
}

size_t dsv4_tokenizer_safe_cut(const dsv4_tokenizer *tok, const char *text, size_t len)
{
    if (tok->added_newline) return 0;
    for (size_t c = len; c-- > 1;) {
        unsigned char next = (unsigned char)text[c];
        if (text[c - 1] == '\n' && next >= 0x21 && next <= 0x7E) return c;
    }
    return 0;
}

int dsv4_tokenizer_encode_parallel(const dsv4_tokenizer *tok, const char *text, size_t len, int n_threads,
                                   dsv4_tokens *out, char *err, size_t errlen)
{
    return dsv4_tokenizer_encode_parallel_ex(tok, text, len, 0, n_threads, out, err, errlen);
}

int dsv4_tokenizer_encode_parallel_ex(const dsv4_tokenizer *tok, const char *text, size_t len, unsigned flags,
                                      int n_threads, dsv4_tokens *out, char *err, size_t errlen)
{
    const size_t piece = (size_t)1 << 20;
    size_t n = 0, cap = 16;
    const char **texts = calloc(cap, sizeof *texts);
    size_t *lens = calloc(cap, sizeof *lens);
    dsv4_tokens *outs = NULL;
    int rc = DSV4_TOK_ENOMEM;
    if (!texts || !lens) goto fail;
    /* cut at the first safe point after each 1 MiB; scanning forward from
     * start + piece by blocks keeps this linear */
    for (size_t start = 0; start < len;) {
        size_t end = len;
        if (!tok->added_newline && len - start > 2 * piece) {
            for (size_t c = start + piece; c + 1 < len; c++)
                if (text[c - 1] == '\n' && (unsigned char)text[c] >= 0x21 && (unsigned char)text[c] <= 0x7E) {
                    end = c;
                    break;
                }
        }
        if (n == cap) {
            cap *= 2;
            const char **t2 = realloc(texts, cap * sizeof *texts);
            if (!t2) goto fail;
            texts = t2;
            size_t *l2 = realloc(lens, cap * sizeof *lens);
            if (!l2) goto fail;
            lens = l2;
        }
        texts[n] = text + start;
        lens[n++] = end - start;
        start = end;
    }
    outs = calloc(n ? n : 1, sizeof *outs);
    if (!outs) goto fail;
    rc = dsv4_tokenizer_encode_batch_ex(tok, n, texts, lens, flags, n_threads, outs, err, errlen);
    for (size_t i = 0; i < n && rc == 0; i++) rc = dsv4_tokens_append(out, outs[i].ids, outs[i].n);
fail:
    if (rc == DSV4_TOK_ENOMEM && err && errlen) snprintf(err, errlen, "encode: out of memory");
    if (outs)
        for (size_t i = 0; i < n; i++) dsv4_tokens_free(&outs[i]);
    free(outs);
    free(texts);
    free(lens);
    return rc;
}
