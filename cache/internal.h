/* cache/ private: the record format (docs/cache-format.md is its byte-level
 * description; this file and format.c are its only implementation), the
 * cache handle, and helpers shared by cache.c (lookup/read/put) and admin.c
 * (scan/stats/verify/gc). */
#ifndef DSV4_CACHE_INTERNAL_H
#define DSV4_CACHE_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>
#include <zstd.h>

#include "cache/dsv4_cache.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cache/ writes little-endian records by memcpy; add byte swapping for this target"
#endif

#define REC_MAGIC "DSV4PCR1"           /* 8 bytes, no NUL stored */
#define REC_FIXED_BYTES 256u           /* fixed part of the header */
#define REC_STREAM_BYTES 56u           /* one stream table entry */
#define REC_SECTION_BYTES 48u          /* one section table entry */
#define REC_SUFFIX ".dsv4c"
#define REC_TMP_PREFIX ".tmp."
#define REC_IO_BLOCK ((size_t)4 << 20) /* read/write block: large enough for full disk speed */
#define TMP_STALE_SECONDS 3600
/* Flag bit 0: every section whose raw size is a multiple of 4 is stored
 * byte-transposed in blocks of REC_SHUFFLE_BLOCK bytes (the last block may
 * be shorter): within a block of n 4-byte elements, byte j of element i
 * moves to j*n + i. Floats then compress as planes: exponents together, the
 * zero low mantissa bytes of FP8/FP4-grid values in long runs. */
#define REC_FLAG_SHUFFLE4 1u
#define REC_SHUFFLE_BLOCK ((size_t)1 << 20)

/* Sections in payload order: tokens, one per stream, boundary. */
enum { SEC_TOKENS = 0 };

typedef struct rec_section {
    uint64_t raw;     /* bytes after decompression */
    uint64_t stored;  /* bytes in the file (one zstd frame; 0 when raw is 0) */
    uint64_t offset;  /* from the start of the file (computed, not stored) */
    uint8_t sha256[32]; /* over the stored bytes */
} rec_section;

/* A decoded, checked header. */
typedef struct rec_header {
    uint32_t version;
    uint32_t header_bytes;
    uint8_t fingerprint[32];
    uint8_t layout_digest[32];
    dsv4_cache_key parent, key;
    int64_t pos0, pos1;
    uint32_t n_streams;
    uint32_t flags;
    uint64_t boundary_bytes;
    int32_t zstd_level;
    uint64_t payload_bytes;
    dsv4_state_stream *streams; /* [n_streams], owned */
    rec_section *sections;      /* [n_streams + 2], owned */
} rec_header;

/* What one thread needs to read sections: reader 0 is the handle's own, the
 * others exist when options.read_threads > 1. */
typedef struct rec_reader {
    ZSTD_DCtx *dctx;
    uint8_t *in_buf;  /* REC_IO_BLOCK */
    uint8_t *out_buf; /* REC_IO_BLOCK: one transposition block + an overflow area */
} rec_reader;

#define CACHE_MAX_READ_THREADS 16
#define CACHE_PARALLEL_MIN_BYTES ((uint64_t)8 << 20) /* below this a record is read by one thread */

struct dsv4_cache {
    char *dir;
    int has_model;
    uint8_t fingerprint[32];
    dsv4_state_layout layout;   /* deep copy */
    uint8_t layout_digest[32];
    dsv4_cache_options opt;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    uint8_t *io_buf;            /* REC_IO_BLOCK, for reads */
    uint8_t *io_buf2;           /* REC_IO_BLOCK, decompressor scratch / write staging */
    uint8_t *shuf_buf;          /* REC_SHUFFLE_BLOCK, transposition scratch */
    rec_reader rd[CACHE_MAX_READ_THREADS]; /* rd[0] aliases dctx, io_buf, io_buf2 */
    int n_readers;
    uint64_t approx_bytes;      /* records' size as of the last scan plus our puts */
    int approx_known;
};

/* format.c */
void cache_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void cache_report(const dsv4_cache *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cache_layout_check(const dsv4_state_layout *l, char *err, size_t errlen);
void cache_layout_digest(const dsv4_state_stream *streams, uint32_t n_streams,
                         uint64_t boundary_bytes, uint8_t out[32]);
/* Rows stream s gains over [pos0, pos1), times row_bytes; -1 on overflow or above the cap. */
int64_t cache_stream_bytes(const dsv4_state_stream *s, int64_t pos0, int64_t pos1);
void cache_key_compute(const uint8_t fingerprint[32], uint32_t version, const uint8_t layout_digest[32],
                       const dsv4_cache_key *parent, int64_t pos0, const int32_t *tokens, int64_t n,
                       dsv4_cache_key *out);
uint32_t rec_header_size(uint32_t n_streams);
/* Serialises h (with its sections filled) into buf[h->header_bytes], header hash included. */
void rec_header_encode(const rec_header *h, uint8_t *buf);
/* Reads and checks the header of the open record fd (file size file_bytes): every
 * structural check, no model context. On failure returns a negative code and
 * writes the failed check into problem. */
int rec_header_read(int fd, uint64_t file_bytes, rec_header *h, char *problem, size_t plen);
void rec_header_free(rec_header *h);
/* Reads section sec of fd, checking stored SHA-256, the zstd frame (checksum,
 * exact size). dst: raw bytes (NULL: decompressed into scratch and dropped). */
int rec_section_read(rec_reader *r, int fd, const rec_header *h, uint32_t sec, uint8_t *dst,
                     char *problem, size_t plen);
int cache_path_of(const dsv4_cache *c, const dsv4_cache_key *k, char *out, size_t outlen);
int cache_hex_to_key(const char *hex, dsv4_cache_key *out);

void cache_shuffle4(uint8_t *restrict dst, const uint8_t *restrict src, size_t n);
void cache_unshuffle4(uint8_t *restrict dst, const uint8_t *restrict src, size_t n);

/* admin.c: removes path if it still is the file (dev, ino); reports why. */
void cache_discard(const dsv4_cache *c, const char *path, int fd, const char *why);

#endif
