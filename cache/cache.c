/* The prefix cache's main path: open, plan, lookup, read, put.
 *
 * Lookup walks the chain from the start of the sequence: from each restore
 * point it computes the keys of the records that could start there (the next
 * fixed span end and the caller's extra ends before it), opens the farthest
 * one present and checks its header against what this model expects. The
 * hit keeps every record open so a concurrent gc unlinking it cannot break a
 * restore in progress. Put compresses section by section straight into a
 * temporary file (memory stays at two I/O blocks whatever the record size),
 * writes the header last, fsyncs and renames: readers see a whole record or
 * none, and two writers of one key both rename a valid record onto the same
 * name, so one remains. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/internal.h"

struct dsv4_cache_hit {
    int64_t n_tokens;
    int n, cap;
    int *fds;
    rec_header *hdrs;
    char (*paths)[4200];
    dsv4_cache_key last;
};

static int mkdir_p(const char *path, char *err, size_t errlen)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        cache_errf(err, errlen, "cache: bad directory path '%s'", path);
        return DSV4_CACHE_EINVAL;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char keep = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
            cache_errf(err, errlen, "cache: cannot create directory %s: %s", buf, strerror(errno));
            return DSV4_CACHE_EIO;
        }
        buf[i] = keep;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        cache_errf(err, errlen, "cache: %s is not a directory", path);
        return DSV4_CACHE_EIO;
    }
    return 0;
}

/* Backup tools skip directories holding this file (bford.info/cachedir). */
static void write_cachedir_tag(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/CACHEDIR.TAG", dir);
    if (access(path, F_OK) == 0) return;
    FILE *f = fopen(path, "wx");
    if (!f) return;
    fputs("Signature: 8a477f597d28d172789f06886806bc55\n"
          "# This file is a cache directory tag created by dsv4-batch (its prefix cache).\n", f);
    fclose(f);
}

int dsv4_cache_open(const char *dir, const uint8_t fingerprint[32], const dsv4_state_layout *layout,
                    const dsv4_cache_options *opt, dsv4_cache **out, char *err, size_t errlen)
{
    dsv4_cache *c = NULL;
    int rc = DSV4_CACHE_ENOMEM;
    *out = NULL;
    if (!dir || !*dir) {
        cache_errf(err, errlen, "cache: no directory given");
        return DSV4_CACHE_EINVAL;
    }
    if ((fingerprint == NULL) != (layout == NULL)) {
        cache_errf(err, errlen, "cache: a model fingerprint and a layout go together");
        return DSV4_CACHE_EINVAL;
    }
    if (layout && (rc = cache_layout_check(layout, err, errlen)) != 0) return rc;
    if (opt && opt->span_tokens != 0 &&
        (opt->span_tokens < 0 || opt->span_tokens % 128 != 0 || opt->span_tokens > DSV4_CACHE_MAX_SPAN)) {
        cache_errf(err, errlen, "cache: span of %lld tokens: must be a positive multiple of 128 up to %lld",
                   (long long)opt->span_tokens, (long long)DSV4_CACHE_MAX_SPAN);
        return DSV4_CACHE_EINVAL;
    }
    if (opt && (opt->zstd_level < ZSTD_minCLevel() || opt->zstd_level > ZSTD_maxCLevel())) {
        cache_errf(err, errlen, "cache: zstd level %d outside [%d, %d]", opt->zstd_level, ZSTD_minCLevel(),
                   ZSTD_maxCLevel());
        return DSV4_CACHE_EINVAL;
    }
    if (opt && (opt->read_threads < 0 || opt->read_threads > CACHE_MAX_READ_THREADS)) {
        cache_errf(err, errlen, "cache: %d read threads: 0 to %d", opt->read_threads, CACHE_MAX_READ_THREADS);
        return DSV4_CACHE_EINVAL;
    }
    if (opt && (opt->zstd_workers < 0 || opt->zstd_workers > 64)) {
        cache_errf(err, errlen, "cache: %d zstd workers: 0 to 64", opt->zstd_workers);
        return DSV4_CACHE_EINVAL;
    }
    if ((rc = mkdir_p(dir, err, errlen)) != 0) return rc;
    rc = DSV4_CACHE_ENOMEM;
    c = calloc(1, sizeof *c);
    if (!c) goto fail;
    if (opt) c->opt = *opt;
    if (c->opt.span_tokens == 0) c->opt.span_tokens = DSV4_CACHE_DEFAULT_SPAN;
    if (c->opt.zstd_level == 0) c->opt.zstd_level = DSV4_CACHE_DEFAULT_LEVEL;
    c->dir = strdup(dir);
    c->cctx = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    c->io_buf = malloc(REC_IO_BLOCK);
    c->io_buf2 = malloc(REC_IO_BLOCK);
    c->shuf_buf = malloc(REC_SHUFFLE_BLOCK);
    if (!c->dir || !c->cctx || !c->dctx || !c->io_buf || !c->io_buf2 || !c->shuf_buf) goto fail;
    c->rd[0] = (rec_reader){c->dctx, c->io_buf, c->io_buf2};
    c->n_readers = 1;
    for (int t = 1; t < c->opt.read_threads; t++) {
        rec_reader *r = &c->rd[t];
        r->dctx = ZSTD_createDCtx();
        r->in_buf = malloc(REC_IO_BLOCK);
        r->out_buf = malloc(REC_IO_BLOCK);
        c->n_readers++; /* counted first, so close frees a partial one */
        if (!r->dctx || !r->in_buf || !r->out_buf) goto fail;
    }
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, c->opt.zstd_level);
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_contentSizeFlag, 1);
    /* zstd's own worker threads; ignored when libzstd is built without them */
    if (c->opt.zstd_workers > 0) ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_nbWorkers, c->opt.zstd_workers);
    if (layout) {
        c->has_model = 1;
        memcpy(c->fingerprint, fingerprint, 32);
        c->layout.n_streams = layout->n_streams;
        c->layout.boundary_bytes = layout->boundary_bytes;
        c->layout.streams = calloc(layout->n_streams ? layout->n_streams : 1, sizeof *c->layout.streams);
        if (!c->layout.streams) goto fail;
        if (layout->n_streams) memcpy(c->layout.streams, layout->streams, layout->n_streams * sizeof *layout->streams);
        cache_layout_digest(c->layout.streams, c->layout.n_streams, c->layout.boundary_bytes, c->layout_digest);
    }
    write_cachedir_tag(dir);
    *out = c;
    return 0;
fail:
    cache_errf(err, errlen, "cache: out of memory opening %s", dir);
    dsv4_cache_close(c);
    return rc;
}

void dsv4_cache_close(dsv4_cache *c)
{
    if (!c) return;
    free(c->dir);
    free(c->layout.streams);
    ZSTD_freeCCtx(c->cctx);
    for (int t = 1; t < c->n_readers; t++) {
        ZSTD_freeDCtx(c->rd[t].dctx);
        free(c->rd[t].in_buf);
        free(c->rd[t].out_buf);
    }
    ZSTD_freeDCtx(c->dctx);
    free(c->io_buf);
    free(c->io_buf2);
    free(c->shuf_buf);
    free(c);
}

const char *dsv4_cache_dir(const dsv4_cache *c) { return c->dir; }

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int64_t dsv4_cache_plan(const dsv4_cache *c, int64_t n_tokens, const int64_t *extra_ends,
                        int n_extra, int64_t *ends, int64_t cap)
{
    int64_t span = c->opt.span_tokens, count = 0, fixed = n_tokens > 0 ? n_tokens / span : 0;
    int64_t i = 1;
    int j = 0;
    int64_t *extra = NULL;
    if (n_extra > 0 && (extra = malloc((size_t)n_extra * sizeof *extra)) != NULL) {
        memcpy(extra, extra_ends, (size_t)n_extra * sizeof *extra);
        qsort(extra, (size_t)n_extra, sizeof *extra, cmp_i64);
    } else {
        n_extra = 0;
    }
    /* merge the fixed multiples with the sorted extra ends */
    int64_t last = 0;
    while (i <= fixed || j < n_extra) {
        int64_t e;
        if (j < n_extra && (i > fixed || extra[j] < i * span)) e = extra[j++];
        else e = i++ * span;
        if (e <= last || e > n_tokens) continue;
        if (count < cap) ends[count] = e;
        count++;
        last = e;
    }
    free(extra);
    return count;
}

void dsv4_cache_key_of(const dsv4_cache *c, const dsv4_cache_key *parent, int64_t pos0,
                       const int32_t *span_tokens, int64_t n, dsv4_cache_key *out)
{
    cache_key_compute(c->fingerprint, DSV4_CACHE_FORMAT_VERSION, c->layout_digest, parent, pos0,
                      span_tokens, n, out);
}

/* ---- lookup ---- */

void dsv4_cache_hit_free(dsv4_cache_hit *h)
{
    if (!h) return;
    for (int i = 0; i < h->n; i++) {
        close(h->fds[i]);
        rec_header_free(&h->hdrs[i]);
    }
    free(h->fds);
    free(h->hdrs);
    free(h->paths);
    free(h);
}

int64_t dsv4_cache_hit_tokens(const dsv4_cache_hit *h) { return h ? h->n_tokens : 0; }
int dsv4_cache_hit_records(const dsv4_cache_hit *h) { return h ? h->n : 0; }
dsv4_cache_key dsv4_cache_hit_key(const dsv4_cache_hit *h) { return h->last; }

void dsv4_cache_hit_span(const dsv4_cache_hit *h, int i, int64_t *pos0, int64_t *pos1)
{
    *pos0 = (i >= 0 && i < h->n) ? h->hdrs[i].pos0 : 0;
    *pos1 = (i >= 0 && i < h->n) ? h->hdrs[i].pos1 : 0;
}

/* Opens the record at path and checks its header against what this model
 * expects there. 1: usable (fd and header returned), 0: absent, -1: bad
 * (already reported and deleted). */
static int open_expected(dsv4_cache *c, const char *path, const dsv4_cache_key *key,
                         const dsv4_cache_key *parent, int64_t pos0, int64_t pos1, int *fd_out,
                         rec_header *h)
{
    char problem[256];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            cache_report(c, "%s: cannot open: %s (treated as a miss)", path, strerror(errno));
        return 0;
    }
    if (fstat(fd, &st) != 0) {
        close(fd);
        return 0;
    }
    if (rec_header_read(fd, (uint64_t)st.st_size, h, problem, sizeof problem) != 0) goto bad;
    if (memcmp(h->fingerprint, c->fingerprint, 32) != 0) {
        snprintf(problem, sizeof problem, "model fingerprint differs from this model's");
    } else if (memcmp(h->layout_digest, c->layout_digest, 32) != 0) {
        snprintf(problem, sizeof problem, "state layout differs from this engine's");
    } else if (memcmp(h->key.b, key->b, 32) != 0) {
        snprintf(problem, sizeof problem, "key in the header differs from the file name");
    } else if (memcmp(h->parent.b, parent->b, 32) != 0 || h->pos0 != pos0 || h->pos1 != pos1) {
        snprintf(problem, sizeof problem, "parent or span [%lld, %lld) differs from the chain's",
                 (long long)h->pos0, (long long)h->pos1);
    } else {
        *fd_out = fd;
        return 1;
    }
    rec_header_free(h);
bad:
    cache_discard(c, path, fd, problem);
    close(fd);
    return -1;
}

static int hit_push(dsv4_cache_hit *h, int fd, const rec_header *hdr, const char *path)
{
    if (h->n == h->cap) {
        int cap = h->cap ? 2 * h->cap : 16;
        int *fds = realloc(h->fds, (size_t)cap * sizeof *fds);
        if (!fds) return -1;
        h->fds = fds;
        rec_header *hdrs = realloc(h->hdrs, (size_t)cap * sizeof *hdrs);
        if (!hdrs) return -1;
        h->hdrs = hdrs;
        char(*paths)[4200] = realloc(h->paths, (size_t)cap * sizeof *paths);
        if (!paths) return -1;
        h->paths = paths;
        h->cap = cap;
    }
    h->fds[h->n] = fd;
    h->hdrs[h->n] = *hdr;
    snprintf(h->paths[h->n], sizeof h->paths[h->n], "%s", path);
    h->n++;
    return 0;
}

int dsv4_cache_lookup(dsv4_cache *c, const int32_t *tokens, int64_t n, const int64_t *extra_ends,
                      int n_extra, dsv4_cache_hit **out, char *err, size_t errlen)
{
    dsv4_cache_hit *h = NULL;
    int64_t *cand = NULL;
    *out = NULL;
    if (!c->has_model) {
        cache_errf(err, errlen, "cache: %s was opened without a model: no lookup", c->dir);
        return DSV4_CACHE_EINVAL;
    }
    if (n < 0 || (n > 0 && !tokens) || n_extra < 0 || (n_extra > 0 && !extra_ends)) {
        cache_errf(err, errlen, "cache: lookup: bad arguments");
        return DSV4_CACHE_EINVAL;
    }
    h = calloc(1, sizeof *h);
    cand = malloc(((size_t)n_extra + 1) * sizeof *cand);
    if (!h || !cand) goto nomem;
    int64_t pos = 0, span = c->opt.span_tokens;
    dsv4_cache_key parent = {{0}};
    while (pos < n) {
        /* a record starting at pos ends at the next fixed multiple or at an
         * extra end before it; try the farthest first */
        int64_t next_fixed = (pos / span + 1) * span;
        int nc = 0;
        if (next_fixed <= n) cand[nc++] = next_fixed;
        for (int j = 0; j < n_extra; j++)
            if (extra_ends[j] > pos && extra_ends[j] < next_fixed && extra_ends[j] <= n) cand[nc++] = extra_ends[j];
        qsort(cand, (size_t)nc, sizeof *cand, cmp_i64);
        int found = 0;
        for (int j = nc - 1; j >= 0 && !found; j--) {
            if (j < nc - 1 && cand[j] == cand[j + 1]) continue;
            int64_t end = cand[j];
            dsv4_cache_key key;
            char path[4200];
            rec_header hdr;
            int fd = -1;
            if (end - pos > DSV4_CACHE_MAX_SPAN) continue;
            dsv4_cache_key_of(c, &parent, pos, tokens + pos, end - pos, &key);
            if (cache_path_of(c, &key, path, sizeof path) != 0) continue;
            if (open_expected(c, path, &key, &parent, pos, end, &fd, &hdr) != 1) continue;
            if (hit_push(h, fd, &hdr, path) != 0) {
                close(fd);
                rec_header_free(&hdr);
                goto nomem;
            }
            /* last use: records never change after their rename, so mtime is free for it */
            struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
            futimens(fd, ts);
            parent = key;
            pos = end;
            found = 1;
        }
        if (!found) break;
    }
    h->n_tokens = pos;
    h->last = parent;
    free(cand);
    *out = h;
    return 0;
nomem:
    free(cand);
    dsv4_cache_hit_free(h);
    cache_errf(err, errlen, "cache: out of memory in lookup");
    return DSV4_CACHE_ENOMEM;
}

/* One record's sections shared out between read threads: each takes the
 * next section (largest first) until none is left or one has failed. */
typedef struct read_job {
    dsv4_cache *c;
    int fd;
    const rec_header *hdr;
    uint32_t *secs;
    uint8_t **dsts;
    int n;
    atomic_int next, failed;
    int rc[CACHE_MAX_READ_THREADS];
    char problem[CACHE_MAX_READ_THREADS][320];
} read_job;

typedef struct read_arg {
    read_job *job;
    int t;
} read_arg;

static void *read_worker(void *arg)
{
    read_arg *a = arg;
    read_job *j = a->job;
    int k;
    while (!atomic_load(&j->failed) && (k = atomic_fetch_add(&j->next, 1)) < j->n) {
        int rc = rec_section_read(&j->c->rd[a->t], j->fd, j->hdr, j->secs[k], j->dsts[k], j->problem[a->t],
                                  sizeof j->problem[a->t]);
        if (rc) {
            j->rc[a->t] = rc;
            atomic_store(&j->failed, 1);
        }
    }
    return NULL;
}

static int cmp_sec_desc(const void *a, const void *b, void *vh)
{
    const rec_header *h = vh;
    uint64_t x = h->sections[*(const uint32_t *)a].raw, y = h->sections[*(const uint32_t *)b].raw;
    return x > y ? -1 : x < y;
}

/* Reads the wanted sections of record fd (rows, and the boundary when
 * chunk->boundary is set), in parallel when the handle has read threads and
 * the record is large; 0 or the first failure's code with its problem. */
static int read_sections(dsv4_cache *c, int fd, const rec_header *hdr, dsv4_state_chunk *chunk, char *problem,
                         size_t plen)
{
    read_job *j = calloc(1, sizeof *j);
    uint32_t *secs = calloc(hdr->n_streams + 1, sizeof *secs);
    uint8_t **dsts = calloc(hdr->n_streams + 1, sizeof *dsts);
    int rc = 0;
    if (!j || !secs || !dsts) {
        snprintf(problem, plen, "out of memory");
        rc = DSV4_CACHE_ENOMEM;
        goto out;
    }
    uint64_t total = 0;
    int n = 0;
    for (uint32_t s = 0; s < hdr->n_streams; s++)
        if (hdr->sections[s + 1].raw) {
            secs[n++] = s + 1;
            total += hdr->sections[s + 1].raw;
        }
    if (chunk->boundary && hdr->sections[hdr->n_streams + 1].raw) {
        secs[n++] = hdr->n_streams + 1;
        total += hdr->boundary_bytes;
    }
    qsort_r(secs, (size_t)n, sizeof *secs, cmp_sec_desc, (void *)hdr);
    for (int k = 0; k < n; k++) dsts[k] = secs[k] == hdr->n_streams + 1 ? chunk->boundary : chunk->rows[secs[k] - 1];
    j->c = c;
    j->fd = fd;
    j->hdr = hdr;
    j->secs = secs;
    j->dsts = dsts;
    j->n = n;
    atomic_init(&j->next, 0);
    atomic_init(&j->failed, 0);
    int n_threads = total >= CACHE_PARALLEL_MIN_BYTES ? c->n_readers : 1;
    if (n_threads > n) n_threads = n > 0 ? n : 1;
    pthread_t th[CACHE_MAX_READ_THREADS];
    read_arg args[CACHE_MAX_READ_THREADS];
    int started = 1;
    for (int t = 1; t < n_threads; t++) {
        args[t] = (read_arg){j, t};
        if (pthread_create(&th[t], NULL, read_worker, &args[t]) != 0) break; /* fewer threads still work */
        started++;
    }
    args[0] = (read_arg){j, 0};
    read_worker(&args[0]);
    for (int t = 1; t < started; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < started; t++)
        if (j->rc[t] && (rc == 0 || j->rc[t] == DSV4_CACHE_ECORRUPT)) {
            rc = j->rc[t];
            snprintf(problem, plen, "%s", j->problem[t]);
            if (rc == DSV4_CACHE_ECORRUPT) break;
        }
out:
    free(j);
    free(secs);
    free(dsts);
    return rc;
}

int dsv4_cache_read(dsv4_cache *c, const dsv4_cache_hit *h, int i, dsv4_state_chunk *chunk,
                    char *err, size_t errlen)
{
    char problem[320];
    if (!h || i < 0 || i >= h->n || !chunk || !chunk->rows) {
        cache_errf(err, errlen, "cache: read: bad arguments");
        return DSV4_CACHE_EINVAL;
    }
    const rec_header *hdr = &h->hdrs[i];
    for (uint32_t s = 0; s < hdr->n_streams; s++)
        if (hdr->sections[s + 1].raw && !chunk->rows[s]) {
            cache_errf(err, errlen, "cache: read: no buffer for stream '%s'", hdr->streams[s].name);
            return DSV4_CACHE_EINVAL;
        }
    int rc = read_sections(c, h->fds[i], hdr, chunk, problem, sizeof problem);
    if (rc == DSV4_CACHE_ECORRUPT) {
        cache_discard(c, h->paths[i], h->fds[i], problem);
        cache_errf(err, errlen, "cache: %s: %s (record deleted)", h->paths[i], problem);
        return rc;
    }
    if (rc != 0) {
        cache_errf(err, errlen, "cache: %s: %s", h->paths[i], problem);
        return rc;
    }
    chunk->pos0 = hdr->pos0;
    chunk->pos1 = hdr->pos1;
    return 0;
}

int dsv4_cache_chunk_alloc(const dsv4_state_layout *layout, int64_t pos0, int64_t pos1,
                           int with_boundary, dsv4_state_chunk **out, char *err, size_t errlen)
{
    int rc = cache_layout_check(layout, err, errlen);
    *out = NULL;
    if (rc) return rc;
    if (pos0 < 0 || pos1 < pos0 || pos1 - pos0 > DSV4_CACHE_MAX_SPAN) {
        cache_errf(err, errlen, "cache: bad span [%lld, %lld)", (long long)pos0, (long long)pos1);
        return DSV4_CACHE_EINVAL;
    }
    /* rows[] gets a NULL after the last stream so chunk_free needs no layout;
     * empty streams get a 1-byte buffer so no real entry is NULL */
    dsv4_state_chunk *ch = calloc(1, sizeof *ch);
    if (!ch || !(ch->rows = calloc((size_t)layout->n_streams + 1, sizeof *ch->rows))) goto nomem;
    ch->pos0 = pos0;
    ch->pos1 = pos1;
    for (uint32_t s = 0; s < layout->n_streams; s++) {
        int64_t b = cache_stream_bytes(&layout->streams[s], pos0, pos1);
        if (!(ch->rows[s] = malloc(b > 0 ? (size_t)b : 1))) goto nomem;
    }
    if (with_boundary && !(ch->boundary = malloc(layout->boundary_bytes ? layout->boundary_bytes : 1)))
        goto nomem;
    *out = ch;
    return 0;
nomem:
    dsv4_cache_chunk_free(ch);
    cache_errf(err, errlen, "cache: out of memory for a chunk of [%lld, %lld)", (long long)pos0, (long long)pos1);
    return DSV4_CACHE_ENOMEM;
}

void dsv4_cache_chunk_free(dsv4_state_chunk *chunk)
{
    if (!chunk) return;
    if (chunk->rows)
        for (size_t s = 0; chunk->rows[s]; s++) free(chunk->rows[s]);
    free(chunk->rows);
    free(chunk->boundary);
    free(chunk);
}

/* ---- put ---- */

static int write_full(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Test hook (tests/test_cache.c): with DSV4_CACHE_TEST_STALL_AT set to a path,
 * a writer that has written a quarter of a record's payload creates that file and
 * stops there, so a test can kill it mid-write deterministically. */
static void test_stall_hook(void)
{
    const char *p = getenv("DSV4_CACHE_TEST_STALL_AT");
    if (!p || !*p) return;
    int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}

/* Compresses src[raw] as one zstd frame appended to fd (byte-transposed
 * block by block when shuffled); fills sec. */
static int write_section(dsv4_cache *c, int fd, const uint8_t *src, uint64_t raw, int shuffle, rec_section *sec,
                         uint64_t *written, uint64_t stall_at, char *why, size_t whylen)
{
    unsigned int dlen = 32;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int rc = -1;
    if (!m) { snprintf(why, whylen, "out of memory"); return -1; }
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    sec->raw = raw;
    sec->stored = 0;
    shuffle = shuffle && raw % 4 == 0;
    if (raw > 0) {
        ZSTD_CCtx_reset(c->cctx, ZSTD_reset_session_only);
        ZSTD_CCtx_setPledgedSrcSize(c->cctx, raw);
        uint64_t in_off = 0;
        for (;;) {
            ZSTD_inBuffer in = {src, raw, 0};
            int last = 1;
            if (shuffle) {
                size_t blk = raw - in_off < REC_SHUFFLE_BLOCK ? (size_t)(raw - in_off) : REC_SHUFFLE_BLOCK;
                cache_shuffle4(c->shuf_buf, src + in_off, blk);
                in.src = c->shuf_buf;
                in.size = blk;
                in_off += blk;
                last = in_off == raw;
            }
            ZSTD_EndDirective mode = last ? ZSTD_e_end : ZSTD_e_continue;
            size_t zr;
            do {
                ZSTD_outBuffer out = {c->io_buf2, REC_IO_BLOCK, 0};
                zr = ZSTD_compressStream2(c->cctx, &out, &in, mode);
                if (ZSTD_isError(zr)) { snprintf(why, whylen, "zstd: %s", ZSTD_getErrorName(zr)); goto out; }
                if (write_full(fd, c->io_buf2, out.pos) != 0) { snprintf(why, whylen, "write: %s", strerror(errno)); goto out; }
                EVP_DigestUpdate(m, c->io_buf2, out.pos);
                sec->stored += out.pos;
                *written += out.pos;
                if (stall_at && *written >= stall_at) test_stall_hook();
            } while (last ? zr != 0 : in.pos < in.size);
            if (last) break;
        }
    }
    EVP_DigestFinal_ex(m, sec->sha256, &dlen);
    rc = 0;
out:
    EVP_MD_CTX_free(m);
    return rc;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int dsv4_cache_put(dsv4_cache *c, const dsv4_cache_key *parent, const int32_t *span_tokens,
                   const dsv4_state_chunk *chunk, dsv4_cache_key *key_out, char *err, size_t errlen)
{
    static const dsv4_cache_key zero = {{0}};
    char path[4200], sub[4200], tmp[4400], why[256] = "";
    rec_header h;
    uint8_t *hbuf = NULL;
    int fd = -1, rc = DSV4_CACHE_EIO;
    memset(&h, 0, sizeof h);
    if (!c->has_model) {
        cache_errf(err, errlen, "cache: %s was opened without a model: no put", c->dir);
        return DSV4_CACHE_EINVAL;
    }
    if (!chunk || !chunk->boundary || !chunk->rows || !span_tokens || chunk->pos0 < 0 ||
        chunk->pos1 <= chunk->pos0 || chunk->pos1 - chunk->pos0 > DSV4_CACHE_MAX_SPAN) {
        cache_errf(err, errlen, "cache: put: needs a chunk with a span of 1 to %lld tokens, its rows, "
                   "its boundary and its tokens", (long long)DSV4_CACHE_MAX_SPAN);
        return DSV4_CACHE_EINVAL;
    }
    /* parent may alias key_out (a caller chaining puts through one variable) */
    dsv4_cache_key parent_key = parent ? *parent : zero;
    parent = &parent_key;
    if ((chunk->pos0 == 0) != (memcmp(parent->b, zero.b, 32) == 0)) {
        cache_errf(err, errlen, "cache: put: a record at position %lld %s", (long long)chunk->pos0,
                   chunk->pos0 == 0 ? "has no parent" : "needs its parent's key");
        return DSV4_CACHE_EINVAL;
    }
    int64_t n = chunk->pos1 - chunk->pos0;
    dsv4_cache_key key;
    dsv4_cache_key_of(c, parent, chunk->pos0, span_tokens, n, &key);
    if (key_out) *key_out = key;
    if (cache_path_of(c, &key, path, sizeof path) != 0) {
        cache_errf(err, errlen, "cache: directory path too long");
        return DSV4_CACHE_EINVAL;
    }
    /* already there (another job or process wrote it): just mark it used */
    struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
    if (utimensat(AT_FDCWD, path, ts, 0) == 0) return 0;
    if (access(path, F_OK) == 0) return 0; /* not ours to touch, but present */
    if (chunk->pos0 > 0) {
        /* without its parent a record can never be restored (gc evicted the
         * chain's tail to keep the size cap): writing it would only waste
         * the disk until the next gc */
        char ppath[4200];
        if (cache_path_of(c, parent, ppath, sizeof ppath) == 0 && access(ppath, F_OK) != 0) return 0;
    }

    snprintf(sub, sizeof sub, "%.*s", (int)(strrchr(path, '/') - path), path);
    int made_sub = mkdir(sub, 0700) == 0;
    if (!made_sub && errno != EEXIST) {
        cache_errf(err, errlen, "cache: cannot create %s: %s", sub, strerror(errno));
        return DSV4_CACHE_EIO;
    }
    char hex[65], host[64] = "host";
    dsv4_cache_key_hex(&key, hex);
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (*p == '.' || *p == '/') *p = '_';
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(tmp, sizeof tmp, "%s/" REC_TMP_PREFIX "%.16s.%s.%ld.%lx", sub, hex, host, (long)getpid(),
             (unsigned long)now.tv_nsec ^ (unsigned long)now.tv_sec);
    fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        cache_errf(err, errlen, "cache: cannot create %s: %s", tmp, strerror(errno));
        return DSV4_CACHE_EIO;
    }

    h.version = DSV4_CACHE_FORMAT_VERSION;
    h.n_streams = c->layout.n_streams;
    h.flags = REC_FLAG_SHUFFLE4;
    h.header_bytes = rec_header_size(h.n_streams);
    memcpy(h.fingerprint, c->fingerprint, 32);
    memcpy(h.layout_digest, c->layout_digest, 32);
    h.parent = *parent;
    h.key = key;
    h.pos0 = chunk->pos0;
    h.pos1 = chunk->pos1;
    h.boundary_bytes = c->layout.boundary_bytes;
    h.zstd_level = c->opt.zstd_level;
    h.streams = c->layout.streams;
    h.sections = calloc(h.n_streams + 2, sizeof *h.sections);
    hbuf = calloc(1, h.header_bytes);
    if (!h.sections || !hbuf) { snprintf(why, sizeof why, "out of memory"); rc = DSV4_CACHE_ENOMEM; goto fail; }
    /* the header goes last, once the section sizes and hashes are known */
    if (write_full(fd, hbuf, h.header_bytes) != 0) { snprintf(why, sizeof why, "write: %s", strerror(errno)); goto fail; }

    uint64_t raw_total = (uint64_t)n * 4 + h.boundary_bytes, written = 0, stall_at = 0;
    for (uint32_t s = 0; s < h.n_streams; s++) raw_total += (uint64_t)cache_stream_bytes(&h.streams[s], h.pos0, h.pos1);
    if (getenv("DSV4_CACHE_TEST_STALL_AT")) stall_at = raw_total / 4 > 0 ? raw_total / 4 : 1;
    if (write_section(c, fd, (const uint8_t *)span_tokens, (uint64_t)n * 4, 1, &h.sections[0], &written, stall_at,
                      why, sizeof why) != 0)
        goto fail;
    for (uint32_t s = 0; s < h.n_streams; s++) {
        uint64_t b = (uint64_t)cache_stream_bytes(&h.streams[s], h.pos0, h.pos1);
        if (b && !chunk->rows[s]) {
            rc = DSV4_CACHE_EINVAL;
            snprintf(why, sizeof why, "no rows given for stream '%s'", h.streams[s].name);
            goto fail;
        }
        if (write_section(c, fd, chunk->rows[s], b, 1, &h.sections[s + 1], &written, stall_at, why, sizeof why) != 0)
            goto fail;
    }
    if (write_section(c, fd, chunk->boundary, h.boundary_bytes, 1, &h.sections[h.n_streams + 1], &written, stall_at,
                      why, sizeof why) != 0)
        goto fail;
    h.payload_bytes = written;
    rec_header_encode(&h, hbuf);
    if (pwrite(fd, hbuf, h.header_bytes, 0) != (ssize_t)h.header_bytes) {
        snprintf(why, sizeof why, "write: %s", strerror(errno));
        goto fail;
    }
    if (fsync(fd) != 0) { snprintf(why, sizeof why, "fsync: %s", strerror(errno)); goto fail; }
    if (close(fd) != 0) { fd = -1; snprintf(why, sizeof why, "close: %s", strerror(errno)); goto fail; }
    fd = -1;
    if (rename(tmp, path) != 0) { snprintf(why, sizeof why, "rename of the temporary file: %s", strerror(errno)); goto fail; }
    fsync_dir(sub);
    if (made_sub) fsync_dir(c->dir);
    free(h.sections);
    free(hbuf);
    if (c->approx_known) c->approx_bytes += h.header_bytes + written;
    if (c->opt.max_bytes > 0) {
        if (!c->approx_known) {
            dsv4_cache_stats st;
            if (dsv4_cache_stats_get(c, &st, NULL, 0) == 0) {
                c->approx_bytes = st.bytes;
                c->approx_known = 1;
            }
        }
        if (c->approx_known && c->approx_bytes > c->opt.max_bytes) {
            dsv4_cache_gc_result r;
            if (dsv4_cache_gc(c, c->opt.max_bytes / 10 * 9, 0, &r, NULL, 0) == 0) c->approx_bytes = r.bytes_after;
        }
    }
    return 0;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(h.sections);
    free(hbuf);
    cache_errf(err, errlen, "cache: writing %s: %s", path, why);
    return rc;
}
