/* Housekeeping of a cache directory: scan, stats, verify, gc. None of it
 * needs the model: each record's header carries its own layout, so a record
 * can be checked completely on its own (the key is recomputed from the
 * stored tokens). The files are the only truth (there is no index to drift
 * from them): gc rebuilds the chain graph from the headers each time, drops
 * what can never be restored (bad headers, orphans whose parent is gone,
 * temporary files of dead writers), then evicts least-recently-used chain
 * tails; evicting only records without children keeps every survivor's
 * ancestors present. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/internal.h"

void cache_discard(const dsv4_cache *c, const char *path, int fd, const char *why)
{
    struct stat a, b;
    /* delete only the very file found bad: a writer may have renamed a good
     * record onto the name since */
    if (fd >= 0 && fstat(fd, &a) == 0 && stat(path, &b) == 0 && (a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
        cache_report(c, "%s: %s (treated as a miss; a newer record has replaced it)", path, why);
        return;
    }
    if (unlink(path) == 0 || errno == ENOENT) cache_report(c, "%s: %s; record deleted (treated as a miss)", path, why);
    else cache_report(c, "%s: %s; cannot delete it: %s (treated as a miss)", path, why, strerror(errno));
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

typedef int (*rec_fn)(dsv4_cache *c, void *ctx, const char *path, const char *name);

/* Calls on_rec for every <kk>/<key>.dsv4c and on_tmp for every temporary
 * file. Directories other than the 256 fan-out ones are left alone. */
static int walk(dsv4_cache *c, rec_fn on_rec, rec_fn on_tmp, void *ctx, char *err, size_t errlen)
{
    DIR *top = opendir(c->dir), *sub = NULL;
    struct dirent *d, *e;
    char path[4400], file[4700];
    int stop = 0;
    if (!top) {
        cache_errf(err, errlen, "cache: cannot read directory %s: %s", c->dir, strerror(errno));
        return DSV4_CACHE_EIO;
    }
    while (!stop && (d = readdir(top)) != NULL) {
        if (strlen(d->d_name) != 2 || !is_hex(d->d_name, 2)) continue;
        snprintf(path, sizeof path, "%s/%s", c->dir, d->d_name);
        if (!(sub = opendir(path))) continue;
        while (!stop && (e = readdir(sub)) != NULL) {
            size_t n = strlen(e->d_name);
            snprintf(file, sizeof file, "%s/%s", path, e->d_name);
            if (n == 64 + strlen(REC_SUFFIX) && is_hex(e->d_name, 64) && strcmp(e->d_name + 64, REC_SUFFIX) == 0) {
                if (on_rec) stop = on_rec(c, ctx, file, e->d_name);
            } else if (strncmp(e->d_name, REC_TMP_PREFIX, strlen(REC_TMP_PREFIX)) == 0) {
                if (on_tmp) stop = on_tmp(c, ctx, file, e->d_name);
            }
        }
        closedir(sub);
    }
    closedir(top);
    return 0;
}

static void read_entry(const char *path, const char *name, dsv4_cache_entry *e)
{
    rec_header h;
    struct stat st;
    memset(e, 0, sizeof *e);
    snprintf(e->path, sizeof e->path, "%s", path);
    cache_hex_to_key(name, &e->key);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(e->problem, sizeof e->problem, "cannot open: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return;
    }
    e->file_bytes = (uint64_t)st.st_size;
    e->last_use = st.st_mtim;
    if (rec_header_read(fd, e->file_bytes, &h, e->problem, sizeof e->problem) != 0) {
        close(fd);
        return;
    }
    close(fd);
    if (memcmp(h.key.b, e->key.b, 32) != 0) {
        snprintf(e->problem, sizeof e->problem, "key in the header differs from the file name");
        rec_header_free(&h);
        return;
    }
    e->parent = h.parent;
    memcpy(e->fingerprint, h.fingerprint, 32);
    e->format_version = h.version;
    e->pos0 = h.pos0;
    e->pos1 = h.pos1;
    e->n_streams = h.n_streams;
    for (uint32_t i = 0; i < h.n_streams + 2; i++) e->raw_bytes += h.sections[i].raw;
    e->header_ok = 1;
    rec_header_free(&h);
}

typedef struct scan_ctx {
    int (*fn)(void *ctx, const dsv4_cache_entry *e);
    void *ctx;
    dsv4_cache_entry e;
} scan_ctx;

static int scan_one(dsv4_cache *c, void *vctx, const char *path, const char *name)
{
    scan_ctx *s = vctx;
    (void)c;
    read_entry(path, name, &s->e);
    return s->fn(s->ctx, &s->e);
}

int dsv4_cache_scan(dsv4_cache *c, int (*fn)(void *ctx, const dsv4_cache_entry *e), void *ctx,
                    char *err, size_t errlen)
{
    scan_ctx *s = calloc(1, sizeof *s);
    if (!s) {
        cache_errf(err, errlen, "cache: out of memory");
        return DSV4_CACHE_ENOMEM;
    }
    s->fn = fn;
    s->ctx = ctx;
    int rc = walk(c, scan_one, NULL, s, err, errlen);
    free(s);
    return rc;
}

/* ---- the chain graph, rebuilt from the files ---- */

typedef struct node {
    dsv4_cache_key key, parent;
    int64_t pos0, pos1;
    uint64_t bytes, raw_bytes;
    struct timespec used;
    uint8_t fingerprint[32];
    char *path;
    int ok, alive, children, parent_idx, gone;
} node;

typedef struct graph {
    node *v;
    size_t n, cap;
    /* temporary files */
    char **tmp_paths;
    uint64_t *tmp_bytes;
    int *tmp_stale;
    size_t n_tmp, cap_tmp;
    int oom;
} graph;

static int add_node(dsv4_cache *c, void *vctx, const char *path, const char *name)
{
    graph *g = vctx;
    dsv4_cache_entry *e = malloc(sizeof *e);
    (void)c;
    if (!e) { g->oom = 1; return 1; }
    read_entry(path, name, e);
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        node *v = realloc(g->v, cap * sizeof *v);
        if (!v) { free(e); g->oom = 1; return 1; }
        g->v = v;
        g->cap = cap;
    }
    node *x = &g->v[g->n];
    memset(x, 0, sizeof *x);
    x->key = e->key;
    x->parent = e->parent;
    x->pos0 = e->pos0;
    x->pos1 = e->pos1;
    x->bytes = e->file_bytes;
    x->raw_bytes = e->raw_bytes;
    x->used = e->last_use;
    memcpy(x->fingerprint, e->fingerprint, 32);
    x->ok = e->header_ok;
    x->parent_idx = -1;
    x->path = strdup(path);
    free(e);
    if (!x->path) { g->oom = 1; return 1; }
    g->n++;
    return 0;
}

/* A temporary file is abandoned when its writer (pid in its name, same host)
 * is gone, or when it is older than any write could take. */
static int add_tmp(dsv4_cache *c, void *vctx, const char *path, const char *name)
{
    graph *g = vctx;
    struct stat st;
    (void)c;
    if (lstat(path, &st) != 0) return 0;
    char host[64] = "", myhost[64] = "host";
    long pid = 0;
    const char *p = name + strlen(REC_TMP_PREFIX);
    const char *dot1 = strchr(p, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (dot1 && dot2 && (size_t)(dot2 - dot1 - 1) < sizeof host) {
        memcpy(host, dot1 + 1, (size_t)(dot2 - dot1 - 1));
        host[dot2 - dot1 - 1] = 0;
        pid = strtol(dot2 + 1, NULL, 10);
    }
    gethostname(myhost, sizeof myhost - 1);
    myhost[sizeof myhost - 1] = 0;
    for (char *q = myhost; *q; q++)
        if (*q == '.' || *q == '/') *q = '_';
    int dead = strcmp(host, myhost) == 0 && pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    int old = time(NULL) - st.st_mtim.tv_sec > TMP_STALE_SECONDS;
    if (g->n_tmp == g->cap_tmp) {
        size_t cap = g->cap_tmp ? 2 * g->cap_tmp : 16;
        char **tp = realloc(g->tmp_paths, cap * sizeof *tp);
        if (tp) g->tmp_paths = tp;
        uint64_t *tb = realloc(g->tmp_bytes, cap * sizeof *tb);
        if (tb) g->tmp_bytes = tb;
        int *ts = realloc(g->tmp_stale, cap * sizeof *ts);
        if (ts) g->tmp_stale = ts;
        if (!tp || !tb || !ts) { g->oom = 1; return 1; }
        g->cap_tmp = cap;
    }
    if (!(g->tmp_paths[g->n_tmp] = strdup(path))) { g->oom = 1; return 1; }
    g->tmp_bytes[g->n_tmp] = (uint64_t)st.st_size;
    g->tmp_stale[g->n_tmp] = dead || old;
    g->n_tmp++;
    return 0;
}

static void graph_free(graph *g)
{
    for (size_t i = 0; i < g->n; i++) free(g->v[i].path);
    for (size_t i = 0; i < g->n_tmp; i++) free(g->tmp_paths[i]);
    free(g->v);
    free(g->tmp_paths);
    free(g->tmp_bytes);
    free(g->tmp_stale);
}

static int cmp_node_key(const void *a, const void *b)
{
    return memcmp(((const node *)a)->key.b, ((const node *)b)->key.b, 32);
}

static int cmp_idx_pos0(const void *a, const void *b, void *vg)
{
    const graph *g = vg;
    int64_t x = g->v[*(const int *)a].pos0, y = g->v[*(const int *)b].pos0;
    return x < y ? -1 : x > y;
}

/* Links each record to its parent and marks the restorable ones (alive):
 * a chain start, or a record whose parent is alive and ends where it starts. */
static int graph_link(graph *g)
{
    static const dsv4_cache_key zero = {{0}};
    if (g->n == 0) return 0;
    int *order = malloc(g->n * sizeof *order);
    if (!order) return -1;
    qsort(g->v, g->n, sizeof *g->v, cmp_node_key);
    for (size_t i = 0; i < g->n; i++) order[i] = (int)i;
    qsort_r(order, g->n, sizeof *order, cmp_idx_pos0, g);
    for (size_t k = 0; k < g->n; k++) {
        node *x = &g->v[order[k]];
        if (!x->ok) continue;
        if (x->pos0 == 0) {
            x->alive = memcmp(x->parent.b, zero.b, 32) == 0;
            continue;
        }
        node probe;
        probe.key = x->parent;
        node *p = bsearch(&probe, g->v, g->n, sizeof *g->v, cmp_node_key);
        if (p && p->alive && p->pos1 == x->pos0) {
            x->alive = 1;
            x->parent_idx = (int)(p - g->v);
            p->children++;
        }
    }
    free(order);
    return 0;
}

static int graph_build(dsv4_cache *c, graph *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    int rc = walk(c, add_node, add_tmp, g, err, errlen);
    if (rc == 0 && (g->oom || graph_link(g) != 0)) {
        cache_errf(err, errlen, "cache: out of memory scanning %s", c->dir);
        rc = DSV4_CACHE_ENOMEM;
    }
    if (rc) graph_free(g);
    return rc;
}

static int ts_before(struct timespec a, struct timespec b)
{
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

int dsv4_cache_stats_get(dsv4_cache *c, dsv4_cache_stats *out, char *err, size_t errlen)
{
    graph g;
    int rc = graph_build(c, &g, err, errlen);
    memset(out, 0, sizeof *out);
    if (rc) return rc;
    uint8_t (*fps)[32] = malloc((g.n ? g.n : 1) * 32);
    if (!fps) {
        graph_free(&g);
        cache_errf(err, errlen, "cache: out of memory");
        return DSV4_CACHE_ENOMEM;
    }
    for (size_t i = 0; i < g.n; i++) {
        node *x = &g.v[i];
        out->n_records++;
        out->bytes += x->bytes;
        if (!x->ok) { out->n_bad_headers++; continue; }
        out->raw_bytes += x->raw_bytes;
        if (x->pos0 == 0) out->n_chains++;
        if (!x->alive) out->n_orphans++;
        if (x->pos1 > out->max_pos1) out->max_pos1 = x->pos1;
        if (out->n_records - out->n_bad_headers == 1 || ts_before(x->used, out->oldest_use)) out->oldest_use = x->used;
        if (ts_before(out->newest_use, x->used)) out->newest_use = x->used;
        size_t k = 0;
        while (k < out->n_models && memcmp(fps[k], x->fingerprint, 32) != 0) k++;
        if (k == out->n_models) memcpy(fps[out->n_models++], x->fingerprint, 32);
    }
    for (size_t i = 0; i < g.n_tmp; i++) {
        out->n_temp++;
        out->temp_bytes += g.tmp_bytes[i];
    }
    free(fps);
    graph_free(&g);
    return 0;
}

/* ---- verify ---- */

typedef struct verify_ctx {
    int dry_run;
    uint64_t ok, bad;
    int32_t *tokens; /* grows to the largest span seen, bounded by MAX_SPAN */
    size_t tokens_cap;
    int oom;
} verify_ctx;

static int verify_one(dsv4_cache *c, void *vctx, const char *path, const char *name)
{
    verify_ctx *v = vctx;
    rec_header h;
    struct stat st;
    char problem[320] = "";
    dsv4_cache_key fkey, k;
    memset(&h, 0, sizeof h);
    cache_hex_to_key(name, &fkey);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0; /* removed meanwhile (gc, another verify) */
    if (fstat(fd, &st) != 0) { snprintf(problem, sizeof problem, "fstat: %s", strerror(errno)); goto bad; }
    if (rec_header_read(fd, (uint64_t)st.st_size, &h, problem, sizeof problem) != 0) goto bad;
    if (memcmp(h.key.b, fkey.b, 32) != 0) {
        snprintf(problem, sizeof problem, "key in the header differs from the file name");
        goto bad;
    }
    size_t n = (size_t)(h.pos1 - h.pos0); /* <= MAX_SPAN: checked with the header */
    if (n > v->tokens_cap) {
        int32_t *t = realloc(v->tokens, n * sizeof *t);
        if (!t) { v->oom = 1; rec_header_free(&h); close(fd); return 1; }
        v->tokens = t;
        v->tokens_cap = n;
    }
    if (rec_section_read(&c->rd[0], fd, &h, SEC_TOKENS, (uint8_t *)v->tokens, problem, sizeof problem) != 0) goto bad;
    cache_key_compute(h.fingerprint, h.version, h.layout_digest, &h.parent, h.pos0, v->tokens, (int64_t)n, &k);
    if (memcmp(k.b, h.key.b, 32) != 0) {
        snprintf(problem, sizeof problem, "key does not match the record's model, parent and tokens");
        goto bad;
    }
    for (uint32_t s = 1; s < h.n_streams + 2; s++)
        if (rec_section_read(&c->rd[0], fd, &h, s, NULL, problem, sizeof problem) != 0) goto bad;
    v->ok++;
    rec_header_free(&h);
    close(fd);
    return 0;
bad:
    v->bad++;
    if (v->dry_run) cache_report(c, "%s: %s", path, problem);
    else cache_discard(c, path, fd, problem);
    rec_header_free(&h);
    close(fd);
    return 0;
}

int dsv4_cache_verify(dsv4_cache *c, int dry_run, uint64_t *n_ok, uint64_t *n_bad, char *err,
                      size_t errlen)
{
    verify_ctx v;
    memset(&v, 0, sizeof v);
    v.dry_run = dry_run;
    int rc = walk(c, verify_one, NULL, &v, err, errlen);
    free(v.tokens);
    if (rc == 0 && v.oom) {
        cache_errf(err, errlen, "cache: out of memory verifying %s", c->dir);
        rc = DSV4_CACHE_ENOMEM;
    }
    if (n_ok) *n_ok = v.ok;
    if (n_bad) *n_bad = v.bad;
    return rc;
}

/* ---- gc ---- */

/* Min-heap of leaf indices by last use (oldest first; among equals the
 * later span first, so a chain is eaten from its end). */
typedef struct heap {
    int *a;
    size_t n;
    const graph *g;
} heap;

static int heap_less(const heap *h, int x, int y)
{
    const node *a = &h->g->v[x], *b = &h->g->v[y];
    if (ts_before(a->used, b->used)) return 1;
    if (ts_before(b->used, a->used)) return 0;
    return a->pos0 > b->pos0;
}

static void heap_push(heap *h, int x)
{
    size_t i = h->n++;
    h->a[i] = x;
    while (i > 0 && heap_less(h, h->a[i], h->a[(i - 1) / 2])) {
        int t = h->a[i];
        h->a[i] = h->a[(i - 1) / 2];
        h->a[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static int heap_pop(heap *h)
{
    int top = h->a[0];
    h->a[0] = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && heap_less(h, h->a[l], h->a[m])) m = l;
        if (r < h->n && heap_less(h, h->a[r], h->a[m])) m = r;
        if (m == i) break;
        int t = h->a[i];
        h->a[i] = h->a[m];
        h->a[m] = t;
        i = m;
    }
    return top;
}

static void remove_file(const char *path, int dry_run)
{
    if (!dry_run) unlink(path);
}

int dsv4_cache_gc(dsv4_cache *c, uint64_t max_bytes, int dry_run, dsv4_cache_gc_result *out,
                  char *err, size_t errlen)
{
    dsv4_cache_gc_result r;
    graph g;
    heap hp = {0};
    char lock_path[4200];
    int rc, lock_fd;
    memset(&r, 0, sizeof r);
    snprintf(lock_path, sizeof lock_path, "%s/.gc.lock", c->dir);
    lock_fd = open(lock_path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) {
        cache_errf(err, errlen, "cache: cannot lock %s: %s", lock_path, strerror(errno));
        if (lock_fd >= 0) close(lock_fd);
        return DSV4_CACHE_EIO;
    }
    if ((rc = graph_build(c, &g, err, errlen)) != 0) goto out;

    for (size_t i = 0; i < g.n_tmp; i++) {
        if (!g.tmp_stale[i]) continue;
        remove_file(g.tmp_paths[i], dry_run);
        r.n_temp_removed++;
        r.temp_bytes_removed += g.tmp_bytes[i];
    }
    uint64_t total = 0;
    for (size_t i = 0; i < g.n; i++) {
        node *x = &g.v[i];
        if (x->alive) {
            total += x->bytes;
            continue;
        }
        /* bad header or orphan: can never be restored */
        remove_file(x->path, dry_run);
        x->gone = 1;
        r.n_removed++;
        r.bytes_removed += x->bytes;
    }
    if (max_bytes > 0 && total > max_bytes) {
        hp.g = &g;
        hp.a = malloc((g.n ? g.n : 1) * sizeof *hp.a);
        if (!hp.a) {
            cache_errf(err, errlen, "cache: out of memory in gc");
            rc = DSV4_CACHE_ENOMEM;
            graph_free(&g);
            goto out;
        }
        for (size_t i = 0; i < g.n; i++)
            if (g.v[i].alive && g.v[i].children == 0) heap_push(&hp, (int)i);
        while (total > max_bytes && hp.n > 0) {
            int i = heap_pop(&hp);
            node *x = &g.v[i];
            remove_file(x->path, dry_run);
            x->gone = 1;
            total -= x->bytes;
            r.n_evicted++;
            r.bytes_evicted += x->bytes;
            if (x->parent_idx >= 0 && --g.v[x->parent_idx].children == 0) heap_push(&hp, x->parent_idx);
        }
        free(hp.a);
    }
    for (size_t i = 0; i < g.n; i++)
        if (!g.v[i].gone) r.n_records_after++;
    r.bytes_after = total;
    graph_free(&g);
out:
    flock(lock_fd, LOCK_UN);
    close(lock_fd);
    if (out) *out = r;
    return rc;
}
