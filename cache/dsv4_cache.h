/* cache/: the on-disk prefix cache. The whole public contract.
 *
 * A cached prefix is a CHAIN of records. A record covers a token span
 * [pos0, pos1) and holds what that span appended to every append-only stream
 * of engine/dsv4_state.h (rows [pos0/r, pos1/r) of each stream), the span's
 * token ids, and the boundary blob at pos1. So any record is a restore point:
 * import its ancestors' rows in order, then its own rows and boundary.
 * Storage grows linearly with the prefix, not with the number of restore
 * points.
 *
 * A record's key is SHA-256 chained over (model fingerprint, state format
 * version, layout digest, parent key, pos0, the span's token ids): equal
 * content gives equal keys across jobs and nights, and a change in one token
 * changes the key of its record and of every record after it, so exactly the
 * records before the change are reused. The key of the record before the
 * first one (the "parent" of a record at pos0 = 0) is all zeros.
 *
 * Records end at fixed spans (every multiple of span_tokens, absolute
 * positions) plus at extra ends the caller names (the exact end of a job's
 * shared context). dsv4_cache_plan lists them for a token sequence.
 *
 * This module stores and returns dsv4_state_chunk data and knows nothing of
 * the model's maths; it never calls engine/. pipeline/ carries chunks:
 *   write:   prefill to each planned end e, dsv4_seq_export(seq, prev_e, chunk),
 *            dsv4_cache_put(c, &parent, tokens + prev_e, chunk, &key), parent = key
 *   restore: dsv4_cache_lookup(c, tokens, n, extra, n_extra, &hit); for each
 *            record i: dsv4_cache_read(c, hit, i, chunk) with chunk->boundary
 *            set only for the last record, then dsv4_seq_import(seq, chunk).
 *            If a read fails (a record found corrupt is reported and deleted),
 *            drop the sequence, look up again (the hit is now shorter) and
 *            restore again; a miss means recompute, never a failed job.
 *
 * Files: one file per record, <dir>/<first 2 hex of key>/<64 hex key>.dsv4c,
 * zstd frames per section, header and payload checked with SHA-256
 * (docs/cache-format.md gives every byte). Writes are atomic (temporary file
 * in the same directory, fsync, rename, fsync of the directory); several
 * processes may share one directory, concurrent writers of one key leave one
 * valid record, a killed writer leaves only a temporary file that gc removes.
 * Reading never trusts a size from a file beyond the checked header: every
 * allocation follows from the caller's layout and a hard cap.
 *
 * Last use: a lookup sets the modification time of every record of the hit
 * to now (records never change after their rename, so mtime means "last
 * used"). dsv4_cache_gc evicts least-recently-used chain TAILS (a record is
 * evicted only once it has no children left), so no surviving record ever
 * lacks its parent.
 *
 * Errors: functions returning int give 0 or a negative DSV4_CACHE_E* code and
 * write a message naming the file and the failed check into err[errlen].
 * Reports about records found bad and deleted along the way (which are not
 * errors of the call) go to options.report, default stderr. A dsv4_cache
 * handle is used by one thread at a time. Restoring costs about one CPU
 * second per 0.5-0.9 GB of state (docs/cache-format.md), so on machines with
 * cores to spare a restore can go wider: options.read_threads reads the
 * sections of one record in parallel, and a hit is read-only after lookup, so
 * several threads may also read different records of one hit at once, each
 * with its own handle on the same directory. */
#ifndef DSV4_CACHE_H
#define DSV4_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "engine/dsv4_state.h"

enum {
    DSV4_CACHE_OK = 0,
    DSV4_CACHE_EINVAL = -1,   /* bad argument, or a layout that breaks a limit */
    DSV4_CACHE_ENOMEM = -2,
    DSV4_CACHE_EIO = -3,      /* a file or directory could not be read or written */
    DSV4_CACHE_ECORRUPT = -6, /* a record failed a check (it was reported and deleted) */
    DSV4_CACHE_EMISS = -7,    /* no such record (e.g. removed by another process) */
};

/* The on-disk format version written by this build (docs/cache-format.md). */
#define DSV4_CACHE_FORMAT_VERSION 1u
#define DSV4_CACHE_DEFAULT_SPAN 16384 /* boundary per record vs reuse granularity: docs/cache-format.md */
#define DSV4_CACHE_DEFAULT_LEVEL 1 /* zstd level; the measured choice: docs/cache-format.md */

/* Hard limits a record must respect; checked on write and on read. */
#define DSV4_CACHE_MAX_STREAMS 4096u
#define DSV4_CACHE_MAX_SPAN ((int64_t)1 << 24)          /* tokens in one record */
#define DSV4_CACHE_MAX_SECTION ((uint64_t)1 << 38)      /* raw bytes of one section */
#define DSV4_CACHE_MAX_BOUNDARY ((uint64_t)1 << 32)     /* boundary blob bytes */

typedef struct dsv4_cache dsv4_cache;

typedef struct dsv4_cache_key {
    uint8_t b[32];
} dsv4_cache_key;

typedef struct dsv4_cache_options {
    uint64_t max_bytes;   /* size cap: after a put that takes the directory over it,
                             gc runs to 90% of it; 0: no cap */
    int64_t span_tokens;  /* fixed record span, a multiple of 128; 0: the default */
    int zstd_level;       /* 0: DSV4_CACHE_DEFAULT_LEVEL; negative levels allowed */
    int zstd_workers;     /* compression threads for put (zstd's own); 0: compress in
                             the calling thread. Records are the same either way. */
    int read_threads;     /* threads that read the sections of one record at once
                             (records over 8 MiB); 0 or 1: the calling thread only.
                             At most 16; each extra thread holds 8 MiB of buffers. */
    /* Where reports of bad records go (one line, no newline); NULL: stderr. */
    void (*report)(void *ctx, const char *msg);
    void *report_ctx;
} dsv4_cache_options;

/* Opens (creating it and its parents if needed) the cache directory dir.
 * fingerprint (dsv4_model_info.fingerprint) and layout (the engine's state
 * layout, copied) are needed for plan/lookup/read/put; both may be NULL for
 * housekeeping only (scan, stats, verify, gc), which read each record's own
 * header. opt may be NULL. */
int dsv4_cache_open(const char *dir, const uint8_t fingerprint[32], const dsv4_state_layout *layout,
                    const dsv4_cache_options *opt, dsv4_cache **out, char *err, size_t errlen);
void dsv4_cache_close(dsv4_cache *c);
const char *dsv4_cache_dir(const dsv4_cache *c);

/* The record ends for a sequence of n_tokens tokens: every multiple of
 * span_tokens below or at n_tokens, plus each extra end in (0, n_tokens],
 * ascending, without duplicates. Writes up to cap ends and returns how many
 * there are (which may exceed cap; call again with a bigger array). */
int64_t dsv4_cache_plan(const dsv4_cache *c, int64_t n_tokens, const int64_t *extra_ends,
                        int n_extra, int64_t *ends, int64_t cap);

/* The key of a record: parent (NULL or all zeros for pos0 = 0) and the
 * span's tokens[0, pos1 - pos0). */
void dsv4_cache_key_of(const dsv4_cache *c, const dsv4_cache_key *parent, int64_t pos0,
                       const int32_t *span_tokens, int64_t n, dsv4_cache_key *out);
void dsv4_cache_key_hex(const dsv4_cache_key *k, char out[65]);

/* ---- restore ---- */

typedef struct dsv4_cache_hit dsv4_cache_hit;

/* Finds the longest prefix of tokens[0, n) whose whole chain of records is
 * present and passes the header checks, following the planned ends (fixed
 * spans plus extra_ends; from each restore point the farthest next record
 * present is taken). Always succeeds with a hit, possibly of 0 tokens, except
 * for bad arguments or no memory. The hit holds each record open, so a
 * concurrent gc cannot take it away before it is read. Records found bad are
 * reported, deleted and end the chain there. Sets the last-use time of every
 * record of the hit. */
int dsv4_cache_lookup(dsv4_cache *c, const int32_t *tokens, int64_t n, const int64_t *extra_ends,
                      int n_extra, dsv4_cache_hit **out, char *err, size_t errlen);
void dsv4_cache_hit_free(dsv4_cache_hit *h);
int64_t dsv4_cache_hit_tokens(const dsv4_cache_hit *h);  /* tokens covered, 0 = miss */
int dsv4_cache_hit_records(const dsv4_cache_hit *h);     /* records to read, in order */
/* Span of record i, and the key of the last record (the parent of the next
 * put; all zeros for a miss). */
void dsv4_cache_hit_span(const dsv4_cache_hit *h, int i, int64_t *pos0, int64_t *pos1);
dsv4_cache_key dsv4_cache_hit_key(const dsv4_cache_hit *h);

/* Reads record i of the hit into chunk: chunk->rows[s] must hold exactly
 * (pos1/r - pos0/r) * row_bytes bytes for stream s (dsv4_cache_chunk_alloc
 * makes such a chunk); chunk->boundary, when not NULL, receives the boundary
 * (boundary_bytes); when NULL the boundary is skipped. Sets chunk->pos0/pos1.
 * Every section is checked (zstd frame checksum, exact size, SHA-256 over the
 * payload); a record failing a check is reported, deleted, and gives
 * DSV4_CACHE_ECORRUPT. */
int dsv4_cache_read(dsv4_cache *c, const dsv4_cache_hit *h, int i, dsv4_state_chunk *chunk,
                    char *err, size_t errlen);

/* A chunk with row buffers for [pos0, pos1) under layout, and a boundary
 * buffer when with_boundary. Free with dsv4_cache_chunk_free (NULL ok). */
int dsv4_cache_chunk_alloc(const dsv4_state_layout *layout, int64_t pos0, int64_t pos1,
                           int with_boundary, dsv4_state_chunk **out, char *err, size_t errlen);
void dsv4_cache_chunk_free(dsv4_state_chunk *chunk);

/* ---- store ---- */

/* Writes the record for chunk's span [pos0, pos1): parent is the key of the
 * record ending at pos0 (NULL or zeros when pos0 = 0), span_tokens its
 * pos1 - pos0 token ids; chunk->boundary must not be NULL. The key goes to
 * *key_out (may be NULL). A record that already exists is only marked used;
 * a record whose parent is absent (evicted to keep the size cap) is not
 * written, as it could never be restored (still 0: caching is best effort).
 * Atomic: other processes see the whole record or nothing. When the cache has
 * a size cap and is over it afterwards, runs dsv4_cache_gc. */
int dsv4_cache_put(dsv4_cache *c, const dsv4_cache_key *parent, const int32_t *span_tokens,
                   const dsv4_state_chunk *chunk, dsv4_cache_key *key_out, char *err,
                   size_t errlen);

/* ---- housekeeping (need no model) ---- */

typedef struct dsv4_cache_entry {
    char path[4096];
    dsv4_cache_key key, parent;
    uint8_t fingerprint[32];
    uint32_t format_version;
    int64_t pos0, pos1;
    uint32_t n_streams;
    uint64_t raw_bytes;   /* uncompressed rows + boundary + tokens */
    uint64_t file_bytes;
    struct timespec last_use;
    int header_ok;        /* 0: the header failed a check (why in problem) */
    char problem[256];
} dsv4_cache_entry;

/* Calls fn for every record file (headers only are read; bad headers are
 * passed with header_ok = 0, nothing is deleted). fn returning non-zero
 * stops the scan. */
int dsv4_cache_scan(dsv4_cache *c, int (*fn)(void *ctx, const dsv4_cache_entry *e), void *ctx,
                    char *err, size_t errlen);

typedef struct dsv4_cache_stats {
    uint64_t n_records, bytes;       /* record files and their size on disk */
    uint64_t raw_bytes;              /* what they hold uncompressed */
    uint64_t n_chains;               /* records with pos0 = 0 */
    uint64_t n_bad_headers;          /* files whose header fails a check */
    uint64_t n_orphans;              /* records whose parent is absent (unreachable) */
    uint64_t n_temp, temp_bytes;     /* temporary files (writes in progress or killed) */
    uint64_t n_models;               /* distinct model fingerprints */
    int64_t max_pos1;                /* longest cached prefix end */
    struct timespec oldest_use, newest_use;
} dsv4_cache_stats;

int dsv4_cache_stats_get(dsv4_cache *c, dsv4_cache_stats *out, char *err, size_t errlen);

/* Reads every record completely and checks everything: header, key recomputed
 * from (fingerprint, version, layout, parent, pos0, tokens), every frame and
 * size, the payload SHA-256. Bad records are reported and, unless dry_run,
 * deleted. n_ok / n_bad may be NULL. Returns 0 even when records are bad. */
int dsv4_cache_verify(dsv4_cache *c, int dry_run, uint64_t *n_ok, uint64_t *n_bad, char *err,
                      size_t errlen);

typedef struct dsv4_cache_gc_result {
    uint64_t n_evicted, bytes_evicted;     /* LRU tails evicted for the cap */
    uint64_t n_removed, bytes_removed;     /* orphans, bad headers, other formats */
    uint64_t n_temp_removed, temp_bytes_removed; /* abandoned temporary files */
    uint64_t bytes_after, n_records_after;
} dsv4_cache_gc_result;

/* Removes abandoned temporary files (writer no longer alive on this host, or
 * older than an hour), records whose header fails its checks, orphans (parent
 * absent: never restorable), then, when max_bytes > 0, evicts least recently
 * used chain tails until the records take at most max_bytes. Serialised
 * between processes by a lock file. dry_run: only count. out may be NULL. */
int dsv4_cache_gc(dsv4_cache *c, uint64_t max_bytes, int dry_run, dsv4_cache_gc_result *out,
                  char *err, size_t errlen);

#endif
