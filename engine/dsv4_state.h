/* The flat description of a sequence's state, the only thing engine/ and
 * cache/ exchange (pipeline/ carries it between them; neither module calls
 * the other).
 *
 * A DeepSeek-V4 sequence at position n (n tokens processed) holds, per layer:
 *   - append-only STREAMS: rows that, once written, never change. Each stream
 *     has a ratio r: its row i is complete once n >= (i+1)*r, so after n
 *     tokens a stream has exactly n / r rows. (The compressed KV entries of
 *     CSA/HCA layers, the lightning indexer's compressed keys.)
 *   - the BOUNDARY: everything else, a blob of fixed size that depends only on
 *     the layout (window rings, compressors' partial state, the position).
 * So the state after n tokens = the rows [0, n/r) of every stream + the
 * boundary at n, and a span [n0, n1) of tokens appended rows [n0/r, n1/r).
 * This is why the prefix cache can store a chain of incremental records. */
#ifndef DSV4_STATE_H
#define DSV4_STATE_H

#include <stdint.h>

typedef struct dsv4_state_stream {
    char name[48];      /* stable, e.g. "layers.3.attn.kv", "layers.3.attn.index_kv" */
    uint32_t ratio;     /* tokens per row (> 0) */
    uint32_t row_bytes; /* bytes of one row as exported */
} dsv4_state_stream;

typedef struct dsv4_state_layout {
    uint32_t n_streams;
    dsv4_state_stream *streams; /* owned by whoever filled the layout */
    uint64_t boundary_bytes;    /* size of the boundary blob */
} dsv4_state_layout;

/* What one span [pos0, pos1) of tokens contributes: for stream s, the rows
 * [pos0 / ratio_s, pos1 / ratio_s), contiguous, row_bytes each; plus the
 * boundary blob at pos1 (may be NULL where only rows are carried). */
typedef struct dsv4_state_chunk {
    int64_t pos0, pos1;
    uint8_t **rows;     /* [n_streams] pointers */
    uint8_t *boundary;  /* [boundary_bytes] or NULL */
} dsv4_state_chunk;

/* Rows stream s holds after n tokens. */
static inline int64_t dsv4_state_rows_at(const dsv4_state_stream *s, int64_t n)
{
    return n / (int64_t)s->ratio;
}

#endif
