/* The record format: keys, the layout digest, header encoding and checking,
 * and reading one checked section. Everything that knows where a byte of a
 * record lives is here, so docs/cache-format.md has one implementation to
 * match. The header is fixed-size for a given stream count and carries its
 * own SHA-256, so it is checked completely before any size in it is used;
 * every section then has a SHA-256 over its stored bytes (so one section
 * can be read and checked without the others: restoring through a record
 * skips its boundary) and is one zstd frame with its content size and
 * XXH64 checksum, decompressed into exactly the bytes the layout says. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/internal.h"

void cache_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void cache_report(const dsv4_cache *c, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c && c->opt.report) c->opt.report(c->opt.report_ctx, msg);
    else fprintf(stderr, "dsv4-batch: cache: %s\n", msg);
}

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void sha256(const void *data, size_t n, uint8_t out[32])
{
    unsigned int len = 32;
    EVP_Digest(data, n, out, &len, EVP_sha256(), NULL);
}

int cache_layout_check(const dsv4_state_layout *l, char *err, size_t errlen)
{
    if (!l) { cache_errf(err, errlen, "cache: no state layout"); return DSV4_CACHE_EINVAL; }
    if (l->n_streams > DSV4_CACHE_MAX_STREAMS || (l->n_streams && !l->streams)) {
        cache_errf(err, errlen, "cache: layout has %u streams (limit %u)", l->n_streams,
                   DSV4_CACHE_MAX_STREAMS);
        return DSV4_CACHE_EINVAL;
    }
    if (l->boundary_bytes > DSV4_CACHE_MAX_BOUNDARY) {
        cache_errf(err, errlen, "cache: boundary of %llu bytes exceeds the limit of %llu",
                   (unsigned long long)l->boundary_bytes, (unsigned long long)DSV4_CACHE_MAX_BOUNDARY);
        return DSV4_CACHE_EINVAL;
    }
    for (uint32_t i = 0; i < l->n_streams; i++) {
        const dsv4_state_stream *s = &l->streams[i];
        if (memchr(s->name, 0, sizeof s->name) == NULL || s->ratio == 0 || s->row_bytes == 0) {
            cache_errf(err, errlen, "cache: layout stream %u: needs a NUL-terminated name, ratio > 0 "
                       "and row_bytes > 0", i);
            return DSV4_CACHE_EINVAL;
        }
        /* the largest record must still fit the section cap */
        if (cache_stream_bytes(s, 0, DSV4_CACHE_MAX_SPAN) < 0) {
            cache_errf(err, errlen, "cache: layout stream '%s': rows of %u bytes per %u tokens "
                       "exceed the section limit", s->name, s->row_bytes, s->ratio);
            return DSV4_CACHE_EINVAL;
        }
    }
    return 0;
}

/* SHA-256 over the stream table exactly as stored, then n_streams and
 * boundary_bytes: names, ratios, row sizes and the boundary size all count. */
void cache_layout_digest(const dsv4_state_stream *streams, uint32_t n_streams,
                         uint64_t boundary_bytes, uint8_t out[32])
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    uint8_t e[REC_STREAM_BYTES], tail[12];
    unsigned int len = 32;
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    for (uint32_t i = 0; i < n_streams; i++) {
        memset(e, 0, sizeof e);
        memcpy(e, streams[i].name, strnlen(streams[i].name, 47));
        put_u32(e + 48, streams[i].ratio);
        put_u32(e + 52, streams[i].row_bytes);
        EVP_DigestUpdate(m, e, sizeof e);
    }
    put_u32(tail, n_streams);
    put_u64(tail + 4, boundary_bytes);
    EVP_DigestUpdate(m, tail, sizeof tail);
    EVP_DigestFinal_ex(m, out, &len);
    EVP_MD_CTX_free(m);
}

int64_t cache_stream_bytes(const dsv4_state_stream *s, int64_t pos0, int64_t pos1)
{
    if (pos0 < 0 || pos1 < pos0 || s->ratio == 0) return -1;
    uint64_t rows = (uint64_t)(pos1 / s->ratio - pos0 / s->ratio);
    if (rows != 0 && s->row_bytes > DSV4_CACHE_MAX_SECTION / rows) return -1;
    return (int64_t)(rows * s->row_bytes);
}

void cache_key_compute(const uint8_t fingerprint[32], uint32_t version, const uint8_t layout_digest[32],
                       const dsv4_cache_key *parent, int64_t pos0, const int32_t *tokens, int64_t n,
                       dsv4_cache_key *out)
{
    static const uint8_t domain[16] = "DSV4-CACHE-KEY";
    uint8_t b[4 + 8 + 8];
    unsigned int len = 32;
    dsv4_cache_key zero = {{0}};
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    EVP_DigestUpdate(m, domain, sizeof domain);
    EVP_DigestUpdate(m, fingerprint, 32);
    put_u32(b, version);
    EVP_DigestUpdate(m, b, 4);
    EVP_DigestUpdate(m, layout_digest, 32);
    EVP_DigestUpdate(m, (parent ? parent : &zero)->b, 32);
    put_u64(b + 4, (uint64_t)pos0);
    put_u64(b + 12, (uint64_t)n);
    EVP_DigestUpdate(m, b + 4, 16);
    if (n > 0) EVP_DigestUpdate(m, tokens, (size_t)n * 4); /* int32 little-endian */
    EVP_DigestFinal_ex(m, out->b, &len);
    EVP_MD_CTX_free(m);
}

uint32_t rec_header_size(uint32_t n_streams)
{
    return REC_FIXED_BYTES + n_streams * REC_STREAM_BYTES + (n_streams + 2) * REC_SECTION_BYTES + 32;
}

void rec_header_encode(const rec_header *h, uint8_t *buf)
{
    memset(buf, 0, h->header_bytes);
    memcpy(buf, REC_MAGIC, 8);
    put_u32(buf + 8, h->version);
    put_u32(buf + 12, h->header_bytes);
    memcpy(buf + 16, h->fingerprint, 32);
    memcpy(buf + 48, h->layout_digest, 32);
    memcpy(buf + 80, h->parent.b, 32);
    memcpy(buf + 112, h->key.b, 32);
    put_u64(buf + 144, (uint64_t)h->pos0);
    put_u64(buf + 152, (uint64_t)h->pos1);
    put_u32(buf + 160, h->n_streams);
    put_u32(buf + 164, h->flags);
    put_u64(buf + 168, h->boundary_bytes);
    put_u32(buf + 176, (uint32_t)h->zstd_level);
    put_u64(buf + 184, h->payload_bytes);
    uint8_t *p = buf + REC_FIXED_BYTES;
    for (uint32_t i = 0; i < h->n_streams; i++, p += REC_STREAM_BYTES) {
        memcpy(p, h->streams[i].name, strnlen(h->streams[i].name, 47));
        put_u32(p + 48, h->streams[i].ratio);
        put_u32(p + 52, h->streams[i].row_bytes);
    }
    for (uint32_t i = 0; i < h->n_streams + 2; i++, p += REC_SECTION_BYTES) {
        put_u64(p, h->sections[i].raw);
        put_u64(p + 8, h->sections[i].stored);
        memcpy(p + 16, h->sections[i].sha256, 32);
    }
    sha256(buf, h->header_bytes - 32, buf + h->header_bytes - 32);
}

void rec_header_free(rec_header *h)
{
    if (!h) return;
    free(h->streams);
    free(h->sections);
    h->streams = NULL;
    h->sections = NULL;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

#define PROBLEM(...) do { snprintf(problem, plen, __VA_ARGS__); goto fail; } while (0)

int rec_header_read(int fd, uint64_t file_bytes, rec_header *h, char *problem, size_t plen)
{
    uint8_t fixed[REC_FIXED_BYTES], digest[32];
    uint8_t *buf = NULL;
    memset(h, 0, sizeof *h);
    if (file_bytes < REC_FIXED_BYTES)
        PROBLEM("truncated: %llu bytes, a header needs at least %u", (unsigned long long)file_bytes,
                REC_FIXED_BYTES);
    if (pread_full(fd, fixed, sizeof fixed, 0) != 0) PROBLEM("cannot read the header: %s", strerror(errno));
    if (memcmp(fixed, REC_MAGIC, 8) != 0) PROBLEM("bad magic: not a dsv4-batch cache record");
    h->version = get_u32(fixed + 8);
    if (h->version != DSV4_CACHE_FORMAT_VERSION)
        PROBLEM("format version %u, this build reads version %u", h->version, DSV4_CACHE_FORMAT_VERSION);
    h->n_streams = get_u32(fixed + 160);
    if (h->n_streams > DSV4_CACHE_MAX_STREAMS)
        PROBLEM("header claims %u streams (limit %u)", h->n_streams, DSV4_CACHE_MAX_STREAMS);
    h->header_bytes = get_u32(fixed + 12);
    if (h->header_bytes != rec_header_size(h->n_streams))
        PROBLEM("header size %u does not match %u streams", h->header_bytes, h->n_streams);
    if (file_bytes < h->header_bytes)
        PROBLEM("truncated: %llu bytes, the header alone needs %u", (unsigned long long)file_bytes,
                h->header_bytes);
    buf = malloc(h->header_bytes); /* bounded: at most rec_header_size(MAX_STREAMS) */
    if (!buf) PROBLEM("out of memory reading the header");
    if (pread_full(fd, buf, h->header_bytes, 0) != 0) PROBLEM("cannot read the header: %s", strerror(errno));
    sha256(buf, h->header_bytes - 32, digest);
    if (memcmp(digest, buf + h->header_bytes - 32, 32) != 0) PROBLEM("header checksum (SHA-256) mismatch");

    memcpy(h->fingerprint, buf + 16, 32);
    memcpy(h->layout_digest, buf + 48, 32);
    memcpy(h->parent.b, buf + 80, 32);
    memcpy(h->key.b, buf + 112, 32);
    h->pos0 = (int64_t)get_u64(buf + 144);
    h->pos1 = (int64_t)get_u64(buf + 152);
    h->flags = get_u32(buf + 164);
    if (h->flags & ~REC_FLAG_SHUFFLE4) PROBLEM("unknown flags 0x%x", h->flags);
    h->boundary_bytes = get_u64(buf + 168);
    h->zstd_level = (int32_t)get_u32(buf + 176);
    h->payload_bytes = get_u64(buf + 184);
    if (h->pos0 < 0 || h->pos1 <= h->pos0 || h->pos1 - h->pos0 > DSV4_CACHE_MAX_SPAN)
        PROBLEM("bad token span [%lld, %lld)", (long long)h->pos0, (long long)h->pos1);
    if (h->boundary_bytes > DSV4_CACHE_MAX_BOUNDARY)
        PROBLEM("boundary of %llu bytes exceeds the limit", (unsigned long long)h->boundary_bytes);

    h->streams = calloc(h->n_streams ? h->n_streams : 1, sizeof *h->streams);
    h->sections = calloc(h->n_streams + 2, sizeof *h->sections);
    if (!h->streams || !h->sections) PROBLEM("out of memory reading the header");
    const uint8_t *p = buf + REC_FIXED_BYTES;
    for (uint32_t i = 0; i < h->n_streams; i++, p += REC_STREAM_BYTES) {
        dsv4_state_stream *s = &h->streams[i];
        if (memchr(p, 0, 48) == NULL) PROBLEM("stream %u: name not NUL-terminated", i);
        memcpy(s->name, p, 48);
        s->ratio = get_u32(p + 48);
        s->row_bytes = get_u32(p + 52);
        if (s->ratio == 0 || s->row_bytes == 0) PROBLEM("stream %u '%s': ratio or row size is 0", i, s->name);
    }
    cache_layout_digest(h->streams, h->n_streams, h->boundary_bytes, digest);
    if (memcmp(digest, h->layout_digest, 32) != 0) PROBLEM("layout digest does not match the stream table");

    uint64_t off = h->header_bytes, total = 0;
    for (uint32_t i = 0; i < h->n_streams + 2; i++, p += REC_SECTION_BYTES) {
        rec_section *sec = &h->sections[i];
        int64_t want;
        if (i == SEC_TOKENS) want = (h->pos1 - h->pos0) * 4;
        else if (i == h->n_streams + 1) want = (int64_t)h->boundary_bytes;
        else want = cache_stream_bytes(&h->streams[i - 1], h->pos0, h->pos1);
        sec->raw = get_u64(p);
        sec->stored = get_u64(p + 8);
        memcpy(sec->sha256, p + 16, 32);
        if (want < 0 || sec->raw != (uint64_t)want)
            PROBLEM("section %u holds %llu bytes, the layout says %lld", i, (unsigned long long)sec->raw,
                    (long long)want);
        if ((sec->raw == 0) != (sec->stored == 0) || sec->stored > ZSTD_compressBound(sec->raw))
            PROBLEM("section %u: %llu stored bytes cannot hold %llu raw bytes", i,
                    (unsigned long long)sec->stored, (unsigned long long)sec->raw);
        sec->offset = off;
        off += sec->stored;
        total += sec->stored;
    }
    if (total != h->payload_bytes) PROBLEM("section sizes do not add up to the payload size");
    if (file_bytes < h->header_bytes + h->payload_bytes)
        PROBLEM("truncated: %llu bytes, the header says %llu", (unsigned long long)file_bytes,
                (unsigned long long)(h->header_bytes + h->payload_bytes));
    if (file_bytes > h->header_bytes + h->payload_bytes)
        PROBLEM("%llu bytes after the payload", (unsigned long long)(file_bytes - h->header_bytes - h->payload_bytes));
    free(buf);
    return 0;
fail:
    free(buf);
    rec_header_free(h);
    return DSV4_CACHE_ECORRUPT;
}

static void section_name(const rec_header *h, uint32_t sec, char *out, size_t n)
{
    if (sec == SEC_TOKENS) snprintf(out, n, "tokens");
    else if (sec == h->n_streams + 1) snprintf(out, n, "boundary");
    else snprintf(out, n, "stream '%s'", h->streams[sec - 1].name);
}

/* Word at a time, so each element is one 4-byte load or store; plain loops
 * the compiler vectorizes (-O3 style loop vectorization is asked for where
 * GCC offers it, as -O2 leaves these scalar). */
#if defined(__GNUC__) && !defined(__clang__)
#define VECTORIZE __attribute__((optimize("tree-vectorize")))
#else
#define VECTORIZE
#endif

VECTORIZE void cache_shuffle4(uint8_t *restrict dst, const uint8_t *restrict src, size_t n)
{
    size_t m = n / 4;
    uint8_t *restrict d0 = dst, *restrict d1 = dst + m, *restrict d2 = dst + 2 * m, *restrict d3 = dst + 3 * m;
    for (size_t i = 0; i < m; i++) {
        uint32_t w;
        memcpy(&w, src + 4 * i, 4);
        d0[i] = (uint8_t)w;
        d1[i] = (uint8_t)(w >> 8);
        d2[i] = (uint8_t)(w >> 16);
        d3[i] = (uint8_t)(w >> 24);
    }
}

VECTORIZE void cache_unshuffle4(uint8_t *restrict dst, const uint8_t *restrict src, size_t n)
{
    size_t m = n / 4;
    const uint8_t *restrict s0 = src, *restrict s1 = src + m, *restrict s2 = src + 2 * m, *restrict s3 = src + 3 * m;
    for (size_t i = 0; i < m; i++) {
        uint32_t w = (uint32_t)s0[i] | (uint32_t)s1[i] << 8 | (uint32_t)s2[i] << 16 | (uint32_t)s3[i] << 24;
        memcpy(dst + 4 * i, &w, 4);
    }
}

/* Decompression goes through a scratch block of REC_SHUFFLE_BLOCK bytes: each
 * full block (the last one shorter) is un-transposed or copied into dst, so
 * the block boundaries match the writer's. Output past raw bytes lands in a
 * second scratch area and proves the frame too long. */
int rec_section_read(rec_reader *r, int fd, const rec_header *h, uint32_t sec, uint8_t *dst,
                     char *problem, size_t plen)
{
    const rec_section *s = &h->sections[sec];
    char name[80], zerr[160] = "";
    uint8_t digest[32];
    unsigned int dlen = 32;
    int rc = DSV4_CACHE_ECORRUPT;
    int shuffled = (h->flags & REC_FLAG_SHUFFLE4) && s->raw % 4 == 0;
    section_name(h, sec, name, sizeof name);
    if (s->raw == 0) return 0;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    if (!m) { snprintf(problem, plen, "out of memory"); return DSV4_CACHE_ENOMEM; }
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
    uint64_t produced = 0, done = 0;
    ZSTD_outBuffer out = {r->out_buf, s->raw < REC_SHUFFLE_BLOCK ? s->raw : REC_SHUFFLE_BLOCK, 0};
    uint8_t *overflow = r->out_buf + REC_SHUFFLE_BLOCK;
    size_t zr = 1;
    int first = 1;
    while (done < s->stored) {
        size_t n = s->stored - done < REC_IO_BLOCK ? (size_t)(s->stored - done) : REC_IO_BLOCK;
        if (pread_full(fd, r->in_buf, n, s->offset + done) != 0) {
            snprintf(problem, plen, "%s: read failed: %s", name, errno ? strerror(errno) : "short file");
            rc = DSV4_CACHE_EIO;
            goto out;
        }
        EVP_DigestUpdate(m, r->in_buf, n);
        if (first) {
            first = 0;
            unsigned long long fcs = ZSTD_getFrameContentSize(r->in_buf, n);
            if (fcs != s->raw && !zerr[0])
                snprintf(zerr, sizeof zerr, "zstd frame does not declare %llu bytes",
                         (unsigned long long)s->raw);
        }
        ZSTD_inBuffer in = {r->in_buf, n, 0};
        while (!zerr[0] && in.pos < in.size) {
            if (zr == 0) { snprintf(zerr, sizeof zerr, "data after the zstd frame"); break; }
            zr = ZSTD_decompressStream(r->dctx, &out, &in);
            if (ZSTD_isError(zr)) {
                snprintf(zerr, sizeof zerr, "zstd: %s", ZSTD_getErrorName(zr));
                break;
            }
            if (out.dst == overflow) {
                if (out.pos) { snprintf(zerr, sizeof zerr, "frame holds more than %llu bytes",
                                        (unsigned long long)s->raw); break; }
                continue;
            }
            if (out.pos < out.size) continue;
            /* a whole block is in scratch: place it */
            if (dst && shuffled) cache_unshuffle4(dst + produced, out.dst, out.pos);
            else if (dst) memcpy(dst + produced, out.dst, out.pos);
            produced += out.pos;
            uint64_t left = s->raw - produced;
            if (left == 0) {
                out.dst = overflow;
                out.size = REC_SHUFFLE_BLOCK;
            } else {
                out.size = left < REC_SHUFFLE_BLOCK ? left : REC_SHUFFLE_BLOCK;
            }
            out.pos = 0;
        }
        done += n;
    }
    EVP_DigestFinal_ex(m, digest, &dlen);
    if (memcmp(digest, s->sha256, 32) != 0) {
        snprintf(problem, plen, "%s: checksum (SHA-256) mismatch", name);
        goto out;
    }
    if (!zerr[0] && zr != 0) snprintf(zerr, sizeof zerr, "zstd frame incomplete");
    if (!zerr[0] && produced != s->raw)
        snprintf(zerr, sizeof zerr, "frame holds %llu bytes, expected %llu", (unsigned long long)produced,
                 (unsigned long long)s->raw);
    if (zerr[0]) {
        snprintf(problem, plen, "%s: %s", name, zerr);
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(m);
    return rc;
}

int cache_path_of(const dsv4_cache *c, const dsv4_cache_key *k, char *out, size_t outlen)
{
    char hex[65];
    dsv4_cache_key_hex(k, hex);
    int n = snprintf(out, outlen, "%s/%.2s/%s%s", c->dir, hex, hex, REC_SUFFIX);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

void dsv4_cache_key_hex(const dsv4_cache_key *k, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[k->b[i] >> 4];
        out[2 * i + 1] = digits[k->b[i] & 15];
    }
    out[64] = 0;
}

int cache_hex_to_key(const char *hex, dsv4_cache_key *out)
{
    for (int i = 0; i < 64; i++) {
        char ch = hex[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (v < 0) return -1;
        if (i % 2 == 0) out->b[i / 2] = (uint8_t)(v << 4);
        else out->b[i / 2] |= (uint8_t)v;
    }
    return 0;
}
