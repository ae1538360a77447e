/* Private to ingest/tokenizer*.c: the loaded tokenizer's tables, shared by the
 * loader (tokenizer.c), the encoder (tokenizer_encode.c) and the generated
 * Unicode table (tokenizer_unicode.c). Tests of the tokenizer may include it
 * to reach the BPE switch-over knob. */
#ifndef DSV4_TOKENIZER_INTERNAL_H
#define DSV4_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/dsv4_tokenizer.h"

/* Unicode property flags per code point (generated, Unicode 16.0). */
enum { UCD_L = 1, UCD_M = 2, UCD_N = 4, UCD_P = 8, UCD_S = 16, UCD_WS = 32 };
extern const unsigned char dsv4_tok_ucd_stage1[0x110000 / 256];
extern const unsigned char dsv4_tok_ucd_stage2[];

static inline unsigned dsv4_tok_ucd_flags(uint32_t cp)
{
    if (cp >= 0x110000) return 0;
    return dsv4_tok_ucd_stage2[(size_t)dsv4_tok_ucd_stage1[cp >> 8] * 256 + (cp & 255)];
}

/* A byte trie of added-token contents, for leftmost-longest matching. Nodes
 * are stored in one array; children of a node form a sibling list. */
typedef struct tok_trie_node {
    int32_t first_child;
    int32_t next_sibling;
    int32_t id; /* token id ending here, or -1 */
    unsigned char byte;
} tok_trie_node;

typedef struct tok_trie {
    tok_trie_node *nodes;
    size_t n, cap;
    unsigned char first[256]; /* 1 where a token may start with this byte */
} tok_trie;

typedef struct tok_merge {
    uint64_t key; /* left << 32 | right, UINT64_MAX empty */
    uint32_t rank;
    int32_t id;
} tok_merge;

struct dsv4_tokenizer {
    size_t n_ids; /* highest id + 1 */
    /* per id: its decoded bytes (HF ByteLevel decoder rule) in one arena */
    uint32_t *dec_off, *dec_len;
    char *dec_bytes;
    unsigned char *kind; /* 0 = no token, 1 = BPE vocabulary, 2 = added token */

    /* lookup by string: vocabulary keys (byte-level form) and added contents */
    char *vocab_keys;     /* arena of NUL-terminated keys */
    uint32_t *vocab_key_off; /* per id, offset in vocab_keys, or UINT32_MAX */
    int32_t *key_slots;   /* open addressing: ids, -1 empty */
    size_t key_mask;
    char *added_content;  /* arena of NUL-terminated contents */
    uint32_t *added_off;  /* per added token */
    int32_t *added_ids;
    size_t n_added;

    int32_t byte_id[256]; /* id of the single-byte token of each byte, -1 if none */

    /* merges: (left, right) -> rank, merged id; one 16-byte slot per entry so
     * a lookup touches one cache line */
    tok_merge *merges;
    size_t merge_mask;
    size_t n_merges; /* ranks are 0 .. n_merges-1 */

    tok_trie added[2]; /* [0]: normalized=false tokens, [1]: normalized=true */
    size_t max_token_bytes;
    int added_newline; /* some added token contains '\n': no safe cut points */
};

static inline uint64_t dsv4_tok_mix64(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    return x;
}

/* Rank and merged id of the pair (left, right); 0 if there is a merge. */
static inline int dsv4_tok_merge_lookup(const struct dsv4_tokenizer *t, int32_t left, int32_t right,
                                        uint32_t *rank, int32_t *id)
{
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = (size_t)dsv4_tok_mix64(key) & t->merge_mask;
    for (;;) {
        const tok_merge *m = &t->merges[i];
        if (m->key == key) {
            *rank = m->rank;
            *id = m->id;
            return 0;
        }
        if (m->key == UINT64_MAX) return -1;
        i = (i + 1) & t->merge_mask;
    }
}

/* Pieces of more symbols than this use the heap-ordered BPE; fewer use the
 * quadratic scan (faster for short words). Both give the same result; tests
 * lower it to check that. */
extern size_t dsv4_tok_small_bpe_limit;
/* Long pieces: 0 = rank buckets (falling back to the heap if the merges are
 * not ordered as trained ones are), 1 = always the heap. For tests. */
extern int dsv4_tok_large_bpe_heap_only;

#endif
