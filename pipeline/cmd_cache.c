/* `dsv4-batch cache ls|stats|verify|gc|bench`: housekeeping of the prefix
 * cache in HOME/cache, and a benchmark of it on this machine's disk.
 *
 * The housekeeping commands need no model: every record carries its own
 * layout (cache/dsv4_cache.h). `bench` writes and restores a synthetic state
 * with the layout a config.json implies, filled with values shaped like the
 * real ones (FP8-grid KV entries with power-of-two block scales and a bf16
 * RoPE part, FP4-grid indexer keys, full f32 compressor state), because the
 * compression ratio of random bytes would say nothing. Exit status as in
 * dsv4_cli.h: verify gives 1 when it found bad records. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/dsv4_cache.h"
#include "engine/dsv4_engine.h"
#include "pipeline/dsv4_cli.h"
#include "pipeline/home.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4-batch cache ls|stats|verify|gc [--home DIR] [--json]\n"
            "       dsv4-batch cache gc [--max-size SIZE] [--dry-run]\n"
            "       dsv4-batch cache verify [--dry-run]\n"
            "       dsv4-batch cache bench --config config.json [--tokens N] [--span N] [--level L]\n"
            "                              [--dtype bf16|f32] [--workers N] [--read-threads N] [--dir DIR]\n"
            "                              [--drop-caches] [--json]\n\n"
            "The prefix cache lives in HOME/cache; HOME is --home, else $DSV4_HOME, else\n"
            "$XDG_DATA_HOME/dsv4-batch, else ~/.local/share/dsv4-batch.\n\n"
            "  ls      one line per record: key, parent, token span, size, last use, model\n"
            "  stats   totals: records, bytes, chains, orphans, temporary files, models\n"
            "  verify  read every record completely and check it; bad records are reported\n"
            "          and deleted (--dry-run: only reported); exit 1 when any was bad\n"
            "  gc      remove temporary files of dead writers, bad and orphaned records, then\n"
            "          with --max-size evict least recently used chain tails until the cache\n"
            "          fits (SIZE: bytes, or a number with K, M, G or T: powers of 1024)\n"
            "  bench   write and restore a synthetic state of N tokens (default 65536) with\n"
            "          the layout of config.json in DIR (default a temporary directory under\n"
            "          /tmp, removed afterwards); --drop-caches empties the page cache before\n"
            "          the restore (needs root); --dtype: the rows' type (the engine exports\n"
            "          bf16); --workers: zstd compression threads; --read-threads: threads\n"
            "          reading one record's sections\n");
}

/* "20G", "1.5T", "500M", "4096" -> bytes; -1 when malformed. */
static int64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (mul > 1 && *end == 'i') end++;
    if (*end == 'b' || *end == 'B') end++;
    if (*end) return -1;
    v *= mul;
    if (v >= 9.0e18) return -1;
    return (int64_t)v;
}

static void human_bytes(uint64_t b, char *out, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    if (i == 0) snprintf(out, n, "%llu B", (unsigned long long)b);
    else snprintf(out, n, "%.1f %s", v, u[i]);
}

static void iso_time(struct timespec t, char *out, size_t n)
{
    struct tm tm;
    time_t s = t.tv_sec;
    gmtime_r(&s, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = 0;
}

static int print_json(json_t *j)
{
    if (!j) {
        fprintf(stderr, "dsv4-batch cache: out of memory\n");
        return DSV4_EXIT_FAIL;
    }
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) return DSV4_EXIT_FAIL;
    printf("%s\n", s);
    free(s);
    return DSV4_EXIT_OK;
}

/* ---- ls ---- */

typedef struct entries {
    dsv4_cache_entry *v;
    size_t n, cap;
} entries;

static int collect(void *ctx, const dsv4_cache_entry *e)
{
    entries *es = ctx;
    if (es->n == es->cap) {
        size_t cap = es->cap ? 2 * es->cap : 64;
        dsv4_cache_entry *v = realloc(es->v, cap * sizeof *v);
        if (!v) return 1;
        es->v = v;
        es->cap = cap;
    }
    es->v[es->n++] = *e;
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const dsv4_cache_entry *x = a, *y = b;
    if (x->header_ok != y->header_ok) return x->header_ok ? -1 : 1;
    int c = memcmp(x->fingerprint, y->fingerprint, 32);
    if (c) return c;
    if (x->pos0 != y->pos0) return x->pos0 < y->pos0 ? -1 : 1;
    return memcmp(x->key.b, y->key.b, 32);
}

static int cmd_ls(dsv4_cache *c, int json)
{
    entries es = {0};
    char err[512];
    if (dsv4_cache_scan(c, collect, &es, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch cache ls: %s\n", err);
        free(es.v);
        return DSV4_EXIT_FAIL;
    }
    qsort(es.v, es.n, sizeof *es.v, cmp_entry);
    json_t *arr = json ? json_array() : NULL;
    if (!json)
        printf("%-16s %-16s %23s %10s %10s  %-20s  %s\n", "KEY", "PARENT", "TOKENS", "SIZE", "RAW", "LAST USE",
               "MODEL");
    for (size_t i = 0; i < es.n; i++) {
        const dsv4_cache_entry *e = &es.v[i];
        char k[65], p[65], fp[65], t[32], sz[32], raw[32];
        dsv4_cache_key_hex(&e->key, k);
        dsv4_cache_key_hex(&e->parent, p);
        hex(e->fingerprint, 32, fp);
        iso_time(e->last_use, t, sizeof t);
        if (json) {
            json_t *o = json_pack("{s:s, s:s, s:b}", "path", e->path, "key", k, "ok", e->header_ok);
            if (e->header_ok) {
                json_object_set_new(o, "parent", json_string(p));
                json_object_set_new(o, "model", json_string(fp));
                json_object_set_new(o, "format_version", json_integer(e->format_version));
                json_object_set_new(o, "pos0", json_integer(e->pos0));
                json_object_set_new(o, "pos1", json_integer(e->pos1));
                json_object_set_new(o, "streams", json_integer(e->n_streams));
                json_object_set_new(o, "raw_bytes", json_integer((json_int_t)e->raw_bytes));
            } else {
                json_object_set_new(o, "problem", json_string(e->problem));
            }
            json_object_set_new(o, "file_bytes", json_integer((json_int_t)e->file_bytes));
            json_object_set_new(o, "last_use", json_string(t));
            json_array_append_new(arr, o);
            continue;
        }
        human_bytes(e->file_bytes, sz, sizeof sz);
        if (!e->header_ok) {
            printf("%-16.16s %-16s %23s %10s %10s  %-20s  BAD: %s\n", k, "-", "-", sz, "-", t, e->problem);
            continue;
        }
        char span[48];
        snprintf(span, sizeof span, "%lld-%lld", (long long)e->pos0, (long long)e->pos1);
        human_bytes(e->raw_bytes, raw, sizeof raw);
        printf("%-16.16s %-16.16s %23s %10s %10s  %-20s  %.16s\n", k, p, span, sz, raw, t, fp);
    }
    free(es.v);
    return json ? print_json(arr) : DSV4_EXIT_OK;
}

/* ---- stats ---- */

static int cmd_stats(dsv4_cache *c, int json)
{
    dsv4_cache_stats s;
    char err[512], oldest[32] = "-", newest[32] = "-";
    if (dsv4_cache_stats_get(c, &s, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch cache stats: %s\n", err);
        return DSV4_EXIT_FAIL;
    }
    if (s.n_records > s.n_bad_headers) {
        iso_time(s.oldest_use, oldest, sizeof oldest);
        iso_time(s.newest_use, newest, sizeof newest);
    }
    if (json) {
        json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "dir", dsv4_cache_dir(c),
                              "records", (json_int_t)s.n_records, "bytes", (json_int_t)s.bytes, "raw_bytes",
                              (json_int_t)s.raw_bytes, "chains", (json_int_t)s.n_chains, "bad_headers",
                              (json_int_t)s.n_bad_headers, "orphans", (json_int_t)s.n_orphans, "temp_files",
                              (json_int_t)s.n_temp, "temp_bytes", (json_int_t)s.temp_bytes, "models",
                              (json_int_t)s.n_models, "max_tokens", (json_int_t)s.max_pos1);
        if (o && s.n_records > s.n_bad_headers) {
            json_object_set_new(o, "oldest_use", json_string(oldest));
            json_object_set_new(o, "newest_use", json_string(newest));
        }
        return print_json(o);
    }
    char b[32], r[32], tb[32];
    human_bytes(s.bytes, b, sizeof b);
    human_bytes(s.raw_bytes, r, sizeof r);
    human_bytes(s.temp_bytes, tb, sizeof tb);
    printf("cache:        %s\n", dsv4_cache_dir(c));
    printf("records:      %llu (%s on disk, %s uncompressed)\n", (unsigned long long)s.n_records, b, r);
    printf("chains:       %llu, longest prefix %lld tokens, %llu model(s)\n", (unsigned long long)s.n_chains,
           (long long)s.max_pos1, (unsigned long long)s.n_models);
    printf("unusable:     %llu bad header(s), %llu orphan(s) (dsv4-batch cache gc removes them)\n",
           (unsigned long long)s.n_bad_headers, (unsigned long long)s.n_orphans);
    printf("temporary:    %llu file(s), %s\n", (unsigned long long)s.n_temp, tb);
    printf("last use:     %s .. %s\n", oldest, newest);
    return DSV4_EXIT_OK;
}

/* ---- verify ---- */

static void collect_report(void *ctx, const char *msg)
{
    json_t *arr = ctx;
    json_array_append_new(arr, json_string(msg));
    fprintf(stderr, "dsv4-batch: cache: %s\n", msg);
}

static int cmd_verify(const char *dir, int json, int dry_run)
{
    dsv4_cache_options o = {0};
    dsv4_cache *c = NULL;
    json_t *problems = json_array();
    char err[512];
    uint64_t ok = 0, bad = 0;
    o.report = collect_report;
    o.report_ctx = problems;
    if (dsv4_cache_open(dir, NULL, NULL, &o, &c, err, sizeof err) != 0 ||
        dsv4_cache_verify(c, dry_run, &ok, &bad, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch cache verify: %s\n", err);
        dsv4_cache_close(c);
        json_decref(problems);
        return DSV4_EXIT_FAIL;
    }
    dsv4_cache_close(c);
    if (json) {
        print_json(json_pack("{s:s, s:I, s:I, s:b, s:o}", "dir", dir, "records_ok", (json_int_t)ok, "records_bad",
                             (json_int_t)bad, "deleted", !dry_run && bad > 0, "problems", problems));
    } else {
        json_decref(problems);
        printf("%llu record(s) ok, %llu bad%s\n", (unsigned long long)ok, (unsigned long long)bad,
               bad ? (dry_run ? " (kept: --dry-run)" : " (deleted)") : "");
    }
    return bad ? DSV4_EXIT_FAIL : DSV4_EXIT_OK;
}

/* ---- gc ---- */

static int cmd_gc(dsv4_cache *c, int json, int64_t max_size, int dry_run)
{
    dsv4_cache_gc_result r;
    char err[512];
    if (dsv4_cache_gc(c, max_size > 0 ? (uint64_t)max_size : 0, dry_run, &r, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch cache gc: %s\n", err);
        return DSV4_EXIT_FAIL;
    }
    if (json)
        return print_json(json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "dry_run", dry_run, "evicted",
                                    (json_int_t)r.n_evicted, "evicted_bytes", (json_int_t)r.bytes_evicted, "removed",
                                    (json_int_t)r.n_removed, "removed_bytes", (json_int_t)r.bytes_removed,
                                    "temp_removed", (json_int_t)r.n_temp_removed, "temp_removed_bytes",
                                    (json_int_t)r.temp_bytes_removed, "records_after", (json_int_t)r.n_records_after,
                                    "bytes_after", (json_int_t)r.bytes_after));
    char a[32], b[32], d[32], e[32];
    human_bytes(r.bytes_evicted, a, sizeof a);
    human_bytes(r.bytes_removed, b, sizeof b);
    human_bytes(r.temp_bytes_removed, d, sizeof d);
    human_bytes(r.bytes_after, e, sizeof e);
    printf("%sevicted %llu record(s) (%s), removed %llu unusable (%s) and %llu temporary file(s) (%s); "
           "%llu record(s), %s remain\n",
           dry_run ? "would have " : "", (unsigned long long)r.n_evicted, a, (unsigned long long)r.n_removed, b,
           (unsigned long long)r.n_temp_removed, d, (unsigned long long)r.n_records_after, e);
    return DSV4_EXIT_OK;
}

/* ---- bench ---- */

typedef struct bench_layout {
    dsv4_state_layout l;
    /* per stream: 0 = FP8-simulated KV with a bf16 RoPE tail, 1 = FP4-simulated indexer key */
    int *kind;
    int head_dim, index_head_dim, rope_dim;
    /* boundary parts: window rings (KV-shaped rows) then compressor state (f32) */
    uint64_t ring_bytes;
} bench_layout;

static int json_int_field(json_t *cfg, const char *name, int *out, const char *path)
{
    json_t *v = json_object_get(cfg, name);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 1 << 20) {
        fprintf(stderr, "dsv4-batch cache bench: %s: '%s' missing or not a positive integer\n", path, name);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* The layout engine/engine.c exports (build_layout there), from config.json:
 * per layer of compress_ratio 4 a KV stream of head_dim values and an indexer
 * stream of index_head_dim values per 4 tokens; per layer of ratio 128 a KV
 * stream per 128 tokens; rows of elem_bytes per value (the engine: bf16). The
 * boundary, f32: every layer's window ring (sliding_window x head_dim), the
 * compressors' kv_state and score_state (as Compressor.__init__:
 * [coff*ratio][coff*dim] each, coff = 2 for ratio 4), the indexer's
 * compressor too, and the position (8 bytes). */
static int bench_layout_from_config(const char *path, int elem_bytes, bench_layout *b)
{
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    int n_layers, window, rc = -1;
    memset(b, 0, sizeof *b);
    if (!cfg) {
        fprintf(stderr, "dsv4-batch cache bench: %s:%d:%d: %s\n", path, je.line, je.column, je.text);
        return -1;
    }
    json_t *ratios = json_object_get(cfg, "compress_ratios");
    if (json_int_field(cfg, "num_hidden_layers", &n_layers, path) || json_int_field(cfg, "head_dim", &b->head_dim, path) ||
        json_int_field(cfg, "index_head_dim", &b->index_head_dim, path) ||
        json_int_field(cfg, "qk_rope_head_dim", &b->rope_dim, path) ||
        json_int_field(cfg, "sliding_window", &window, path))
        goto out;
    if (!json_is_array(ratios) || json_array_size(ratios) < (size_t)n_layers || b->rope_dim > b->head_dim) {
        fprintf(stderr, "dsv4-batch cache bench: %s: compress_ratios needs num_hidden_layers entries\n", path);
        goto out;
    }
    b->l.streams = calloc(2 * (size_t)n_layers, sizeof *b->l.streams);
    b->kind = calloc(2 * (size_t)n_layers, sizeof *b->kind);
    if (!b->l.streams || !b->kind) goto out;
    uint64_t state = 0;
    for (int i = 0; i < n_layers; i++) {
        json_t *rv = json_array_get(ratios, (size_t)i);
        int r = json_is_integer(rv) ? (int)json_integer_value(rv) : -1;
        if (r != 0 && r != 4 && r != 128) {
            fprintf(stderr, "dsv4-batch cache bench: %s: compress_ratios[%d] = %d (0, 4 or 128)\n", path, i, r);
            goto out;
        }
        b->ring_bytes += (uint64_t)window * b->head_dim * 4;
        if (r == 0) continue;
        int coff = r == 4 ? 2 : 1;
        dsv4_state_stream *s = &b->l.streams[b->l.n_streams];
        snprintf(s->name, sizeof s->name, "layers.%d.attn.kv", i);
        s->ratio = (uint32_t)r;
        s->row_bytes = (uint32_t)(b->head_dim * elem_bytes);
        b->kind[b->l.n_streams++] = 0;
        state += 2ull * coff * r * coff * b->head_dim * 4;
        if (r == 4) {
            s = &b->l.streams[b->l.n_streams];
            snprintf(s->name, sizeof s->name, "layers.%d.attn.index_kv", i);
            s->ratio = 4;
            s->row_bytes = (uint32_t)(b->index_head_dim * elem_bytes);
            b->kind[b->l.n_streams++] = 1;
            state += 2ull * coff * r * coff * b->index_head_dim * 4;
        }
    }
    b->l.boundary_bytes = b->ring_bytes + state + 8;
    rc = 0;
out:
    json_decref(cfg);
    return rc;
}

static float gauss(uint64_t *s)
{
    double u1 = ((double)(dsv4_splitmix64(s) >> 11) + 1) / 9007199254740993.0, u2 = (double)(dsv4_splitmix64(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}

static float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* nearest value of a float format with mbits mantissa bits, min exponent emin, max max */
static float round_minifloat(float v, int mbits, int emin, float maxv)
{
    float a = fabsf(v);
    if (a == 0) return 0;
    int e;
    frexpf(a, &e);
    e -= 1;
    if (e < emin) e = emin;
    float step = ldexpf(1.0f, e - mbits);
    float q = nearbyintf(a / step) * step;
    if (q > maxv) q = maxv;
    return v < 0 ? -q : q;
}

/* A row shaped like the real one: block-scaled FP8 e4m3 (blocks of 64) with a
 * bf16 RoPE tail for KV, block-scaled FP4 e2m1 (blocks of 32) for indexer keys. */
static void fill_row(float *row, int kind, int dim, int rope_dim, uint64_t *rng)
{
    int block = kind == 0 ? 64 : 32, quant_dim = kind == 0 ? dim - rope_dim : dim;
    for (int i = 0; i < dim; i++) row[i] = gauss(rng) * 2.0f;
    for (int b0 = 0; b0 < quant_dim; b0 += block) {
        int n = b0 + block <= quant_dim ? block : quant_dim - b0;
        float amax = 1e-20f;
        for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(row[b0 + i]));
        float maxq = kind == 0 ? 448.0f : 6.0f;
        float scale = ldexpf(1.0f, (int)ceilf(log2f(amax / maxq))); /* ue8m0: a power of two */
        for (int i = 0; i < n; i++) {
            float q = kind == 0 ? round_minifloat(row[b0 + i] / scale, 3, -6, 448.0f)
                                : round_minifloat(row[b0 + i] / scale, 1, 0, 6.0f);
            row[b0 + i] = q * scale;
        }
    }
    for (int i = quant_dim; i < dim; i++) row[i] = round_bf16(row[i]);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* CPU seconds of this process (and its zstd threads): next to the wall time,
 * a figure that other load on the machine does not inflate. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

static int cmd_bench(int argc, char **argv)
{
    const char *config = NULL, *dir_opt = NULL;
    int64_t n_tokens = 65536, span = DSV4_CACHE_DEFAULT_SPAN;
    int level = DSV4_CACHE_DEFAULT_LEVEL, workers = 0, read_threads = 0, json = 0, drop = 0, rc = DSV4_EXIT_FAIL, elem = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) config = argv[++i];
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) dir_opt = argv[++i];
        else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) n_tokens = atoll(argv[++i]);
        else if (strcmp(argv[i], "--span") == 0 && i + 1 < argc) span = atoll(argv[++i]);
        else if (strcmp(argv[i], "--level") == 0 && i + 1 < argc) level = atoi(argv[++i]);
        else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) workers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--read-threads") == 0 && i + 1 < argc) read_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc && !strcmp(argv[i + 1], "bf16")) elem = 2, i++;
        else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc && !strcmp(argv[i + 1], "f32")) elem = 4, i++;
        else if (strcmp(argv[i], "--drop-caches") == 0) drop = 1;
        else {
            fprintf(stderr, "dsv4-batch cache bench: unknown or incomplete option '%s'\n", argv[i]);
            return DSV4_EXIT_USAGE;
        }
    }
    if (!config || n_tokens < span || span <= 0 || span % 128 != 0 || level == 0) {
        fprintf(stderr, "dsv4-batch cache bench: needs --config, --tokens >= --span, --span a multiple of 128, "
                        "--level not 0\n");
        return DSV4_EXIT_USAGE;
    }
    bench_layout bl;
    if (bench_layout_from_config(config, elem, &bl) != 0) {
        free(bl.l.streams);
        free(bl.kind);
        return DSV4_EXIT_USAGE;
    }
    char tmpl[] = "/tmp/dsv4-cache-bench-XXXXXX", err[512];
    const char *dir = dir_opt;
    if (!dir && !(dir = mkdtemp(tmpl))) {
        fprintf(stderr, "dsv4-batch cache bench: cannot create a directory in /tmp: %s\n", strerror(errno));
        goto out_layout;
    }
    dsv4_cache_options o = {0};
    o.span_tokens = span;
    o.zstd_level = level;
    o.zstd_workers = workers;
    o.read_threads = read_threads;
    uint8_t fp[32] = "dsv4-batch cache bench";
    dsv4_cache *c = NULL;
    dsv4_state_chunk *ch = NULL, *rd = NULL;
    int32_t *tokens = malloc((size_t)n_tokens * sizeof *tokens);
    dsv4_cache_hit *hit = NULL;
    if (!tokens || dsv4_cache_open(dir, fp, &bl.l, &o, &c, err, sizeof err) != 0 ||
        dsv4_cache_chunk_alloc(&bl.l, 0, span, 1, &ch, err, sizeof err) != 0 ||
        dsv4_cache_chunk_alloc(&bl.l, 0, span, 1, &rd, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch cache bench: %s\n", tokens ? err : "out of memory");
        goto out;
    }
    /* one span's worth of realistic rows, reused by every record (each record
     * is compressed on its own, so the reuse does not flatter the ratio) */
    uint64_t rng = 42, rows_per_span = 0;
    float *row = malloc((size_t)(bl.head_dim > bl.index_head_dim ? bl.head_dim : bl.index_head_dim) * sizeof *row);
    if (!row) goto out;
    for (uint32_t s = 0; s < bl.l.n_streams; s++) {
        const dsv4_state_stream *st = &bl.l.streams[s];
        int dim = (int)st->row_bytes / elem;
        for (int64_t r = 0; r < span / st->ratio; r++) {
            fill_row(row, bl.kind[s], dim, bl.kind[s] == 0 ? bl.rope_dim : 0, &rng);
            uint8_t *dst = ch->rows[s] + r * st->row_bytes;
            for (int i = 0; i < dim; i++) {
                uint32_t u;
                memcpy(&u, &row[i], 4);
                if (elem == 4) memcpy(dst + 4 * i, &u, 4);
                else {
                    uint16_t h = (uint16_t)(u >> 16); /* exact: fill_row's values are bf16-representable */
                    memcpy(dst + 2 * i, &h, 2);
                }
            }
        }
        rows_per_span += (uint64_t)(span / st->ratio) * st->row_bytes;
    }
    free(row);
    float *bf = (float *)ch->boundary;
    uint64_t ring_floats = bl.ring_bytes / 4, all_floats = bl.l.boundary_bytes / 4;
    for (uint64_t i = 0; i < ring_floats; i += (uint64_t)bl.head_dim)
        fill_row(bf + i, 0, bl.head_dim, bl.rope_dim, &rng);
    for (uint64_t i = ring_floats; i + 2 < all_floats; i++) bf[i] = gauss(&rng);
    memcpy(ch->boundary + bl.l.boundary_bytes - 8, &(int64_t){span}, 8);
    for (int64_t i = 0; i < n_tokens; i++) tokens[i] = (int32_t)(dsv4_splitmix64(&rng) % 129280);

    int64_t n_rec = n_tokens / span;
    double t0 = now_s(), c0 = cpu_s();
    dsv4_cache_key parent = {{0}};
    for (int64_t r = 0; r < n_rec; r++) {
        ch->pos0 = r * span;
        ch->pos1 = (r + 1) * span;
        if (dsv4_cache_put(c, r ? &parent : NULL, tokens + r * span, ch, &parent, err, sizeof err) != 0) {
            fprintf(stderr, "dsv4-batch cache bench: %s\n", err);
            goto out;
        }
    }
    double t_write = now_s() - t0, c_write = cpu_s() - c0;
    dsv4_cache_stats st;
    if (dsv4_cache_stats_get(c, &st, err, sizeof err) != 0) goto out;
    int dropped = 0;
    if (drop) {
        sync();
        int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
        dropped = fd >= 0 && write(fd, "3\n", 2) == 2;
        if (fd >= 0) close(fd);
        if (!dropped) fprintf(stderr, "dsv4-batch cache bench: could not drop the page cache (needs root)\n");
    }
    /* the pipeline reuses one chunk for every record: touch it first so the
     * timing holds no first-use page faults */
    for (uint32_t s = 0; s < bl.l.n_streams; s++)
        memset(rd->rows[s], 0, (size_t)(span / bl.l.streams[s].ratio) * bl.l.streams[s].row_bytes);
    memset(rd->boundary, 0, bl.l.boundary_bytes);
    t0 = now_s();
    c0 = cpu_s();
    if (dsv4_cache_lookup(c, tokens, n_tokens, NULL, 0, &hit, err, sizeof err) != 0) goto out;
    for (int i = 0; i < dsv4_cache_hit_records(hit); i++) {
        uint8_t *keep = rd->boundary;
        if (i + 1 < dsv4_cache_hit_records(hit)) rd->boundary = NULL;
        int r = dsv4_cache_read(c, hit, i, rd, err, sizeof err);
        rd->boundary = keep;
        if (r != 0) {
            fprintf(stderr, "dsv4-batch cache bench: %s\n", err);
            goto out;
        }
    }
    double t_read = now_s() - t0, c_read = cpu_s() - c0;
    int64_t covered = dsv4_cache_hit_tokens(hit);
    if (covered != n_rec * span || memcmp(rd->rows[0], ch->rows[0], bl.l.streams[0].row_bytes) != 0) {
        fprintf(stderr, "dsv4-batch cache bench: restore covered %lld of %lld tokens or differs\n", (long long)covered,
                (long long)(n_rec * span));
        goto out;
    }
    /* in memory: the state at n tokens = every stream's rows + one boundary */
    double mem_bytes = (double)rows_per_span * (double)n_rec + (double)bl.l.boundary_bytes;
    double restore_bytes = mem_bytes; /* rows of every record + the last boundary */
    double write_bytes = (double)(rows_per_span + bl.l.boundary_bytes) * (double)n_rec;
    double tok = (double)(n_rec * span);
    if (json) {
        print_json(json_pack("{s:s, s:I, s:I, s:i, s:I, s:I, s:I, s:f, s:f, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:b}",
                             "config", config, "tokens", (json_int_t)tok, "span", (json_int_t)span, "level", level,
                             "streams", (json_int_t)bl.l.n_streams, "boundary_bytes", (json_int_t)bl.l.boundary_bytes,
                             "records", (json_int_t)n_rec, "memory_bytes_per_token", mem_bytes / tok,
                             "disk_bytes_per_token", (double)st.bytes / tok, "disk_bytes", (json_int_t)st.bytes,
                             "write_s", t_write, "write_cpu_s", c_write, "write_gb_s", write_bytes / t_write / 1e9,
                             "restore_s", t_read, "restore_cpu_s", c_read, "restore_gb_s", restore_bytes / t_read / 1e9,
                             "page_cache_dropped", dropped));
    } else {
        printf("layout:   %s: %u streams, boundary %.2f MB, rows %.1f bytes/token (%s)\n", config, bl.l.n_streams,
               (double)bl.l.boundary_bytes / 1e6, (double)rows_per_span / (double)span, elem == 2 ? "bf16" : "f32");
        printf("cache:    %lld tokens in %lld records of %lld, zstd level %d, %s\n", (long long)tok, (long long)n_rec,
               (long long)span, level, dir);
        printf("size:     in memory %.1f bytes/token, on disk %.1f bytes/token (%.3f of memory; %.2f GB)\n",
               mem_bytes / tok, (double)st.bytes / tok, (double)st.bytes / mem_bytes, (double)st.bytes / 1e9);
        printf("write:    %.3f s, %.2f GB/s of state (rows + a boundary per record), %.2f GB/s to disk; "
               "%.3f CPU s = %.2f GB/s per CPU second\n", t_write, write_bytes / t_write / 1e9,
               (double)st.bytes / t_write / 1e9, c_write, write_bytes / c_write / 1e9);
        printf("restore:  %.3f s, %.2f GB/s of state, page cache %s; %.3f CPU s = %.2f GB/s per CPU second\n", t_read,
               restore_bytes / t_read / 1e9, dropped ? "dropped first" : "not dropped", c_read,
               restore_bytes / c_read / 1e9);
    }
    rc = DSV4_EXIT_OK;
out:
    dsv4_cache_hit_free(hit);
    dsv4_cache_chunk_free(ch);
    dsv4_cache_chunk_free(rd);
    dsv4_cache_close(c);
    free(tokens);
    if (!dir_opt && dir == tmpl) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
        if (system(cmd) != 0) fprintf(stderr, "dsv4-batch cache bench: could not remove %s\n", tmpl);
    }
out_layout:
    free(bl.l.streams);
    free(bl.kind);
    return rc;
}

/* ---- dispatch ---- */

int dsv4_cmd_cache(int argc, char **argv)
{
    const char *home_opt = NULL, *sub = NULL;
    int json = 0, dry_run = 0;
    int64_t max_size = 0;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? DSV4_EXIT_USAGE : DSV4_EXIT_OK;
    }
    sub = argv[1];
    if (strcmp(sub, "bench") == 0) {
        for (int i = 2; i < argc; i++)
            if (strcmp(argv[i], "--help") == 0) {
                usage(stdout);
                return DSV4_EXIT_OK;
            }
        return cmd_bench(argc - 1, argv + 1);
    }
    if (strcmp(sub, "ls") && strcmp(sub, "stats") && strcmp(sub, "verify") && strcmp(sub, "gc")) {
        fprintf(stderr, "dsv4-batch cache: unknown subcommand '%s' (ls, stats, verify, gc, bench)\n", sub);
        return DSV4_EXIT_USAGE;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return DSV4_EXIT_OK;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--home") == 0 && i + 1 < argc) {
            home_opt = argv[++i];
        } else if (strcmp(argv[i], "--dry-run") == 0 && (!strcmp(sub, "gc") || !strcmp(sub, "verify"))) {
            dry_run = 1;
        } else if (strcmp(argv[i], "--max-size") == 0 && i + 1 < argc && !strcmp(sub, "gc")) {
            max_size = parse_size(argv[++i]);
            if (max_size <= 0) {
                fprintf(stderr, "dsv4-batch cache gc: --max-size '%s': expected bytes or a number with K, M, G "
                                "or T, above 0\n", argv[i]);
                return DSV4_EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "dsv4-batch cache %s: unknown or incomplete option '%s' (see --help)\n", sub, argv[i]);
            return DSV4_EXIT_USAGE;
        }
    }
    char err[512], *home = dsv4_home_resolve(home_opt, err, sizeof err), *dir = NULL;
    if (!home) {
        fprintf(stderr, "dsv4-batch cache: %s\n", err);
        return DSV4_EXIT_USAGE;
    }
    int rc = DSV4_EXIT_FAIL;
    if (asprintf(&dir, "%s/cache", home) < 0) {
        dir = NULL;
        goto out;
    }
    if (strcmp(sub, "verify") == 0) {
        rc = cmd_verify(dir, json, dry_run);
        goto out;
    }
    dsv4_cache *c = NULL;
    if (dsv4_cache_open(dir, NULL, NULL, NULL, &c, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch cache %s: %s\n", sub, err);
        goto out;
    }
    if (strcmp(sub, "ls") == 0) rc = cmd_ls(c, json);
    else if (strcmp(sub, "stats") == 0) rc = cmd_stats(c, json);
    else rc = cmd_gc(c, json, max_size, dry_run);
    dsv4_cache_close(c);
out:
    free(dir);
    free(home);
    return rc;
}
