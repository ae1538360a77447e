/* The job runner: one job through every stage, as `dsv4-batch run` calls it
 * (the contract is in pipeline/worker.h).
 *
 *   ingest every input  ->  the shared context (documents in a stable order,
 *   a provenance header each)  ->  per thinking mode, one shared prompt prefix
 *   (BOS, system, the context) and a suffix per question  ->  restore the
 *   longest cached prefix  ->  prefill the rest, storing cache records at
 *   fixed spans and at the exact end of the prefix  ->  fork one sequence per
 *   question, prefill its suffix  ->  decode all questions as one batch  ->
 *   store each result as it completes (the worker then writes output.jsonl).
 *
 * Why shaped so: every stage is restartable. Results are stored per query as
 * soon as a query finishes (the store keeps the first result per query), a
 * resumed job asks the store which queries are still pending, and the prefix
 * cache makes the re-prefill after a kill cheap: nothing done is lost and
 * nothing is done twice. Sampling is seeded per query, so a resumed query
 * gives the same answer it would have given. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cache/dsv4_cache.h"
#include "engine/dsv4_engine.h"
#include "ingest/dsv4_ingest.h"
#include "ingest/dsv4_tokenizer.h"
#include "pipeline/dsv4_chat.h"
#include "pipeline/demo_model.h"
#include "pipeline/job_spec.h"
#include "pipeline/worker.h"

/* Tokens handed to the engine per prefill call: large enough to be batched
 * matrix work, small enough for progress, cancellation and memory. */
#define PREFILL_PIECE_DEFAULT 1024

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* ---- small growable byte buffer ---------------------------------------- */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* ---- stage 1: ingest ----------------------------------------------------- */

typedef struct rendered_doc {
    char *name; /* display name, the sort key for order: path */
    char *text; /* as dsv4_doc_render gives it: header + text + empty line */
    size_t n;
    size_t input; /* index of the input it came from (order: input) */
} rendered_doc;

typedef struct ingest_state {
    const dsv4_worker_ctx *ctx;
    rendered_doc *docs;
    size_t n_docs, cap;
    size_t input;
    uint64_t n_files, n_warnings, n_skipped_errors;
    int failed; /* out of memory */
} ingest_state;

static int on_ingest_event(void *user, const dsv4_ingest_event *ev)
{
    ingest_state *st = user;
    if (ev->kind == DSV4_INGEST_DOCUMENT) {
        const dsv4_doc *d = ev->doc;
        if (st->n_docs == st->cap) {
            size_t cap = st->cap ? st->cap * 2 : 64;
            rendered_doc *p = realloc(st->docs, cap * sizeof *p);
            if (!p) { st->failed = 1; return 1; }
            st->docs = p;
            st->cap = cap;
        }
        rendered_doc *r = &st->docs[st->n_docs];
        memset(r, 0, sizeof *r);
        r->name = dsv4_doc_display_name(d);
        if (!r->name || dsv4_doc_render(d, &r->text, &r->n) != 0) {
            free(r->name);
            st->failed = 1;
            return 1;
        }
        r->input = st->input;
        st->n_docs++;
        st->n_files++;
        for (size_t i = 0; i < d->n_warnings; i++) {
            st->n_warnings++;
            dsv4_worker_event(st->ctx, "ingest", "warn", NULL, "%s: %s", r->name, d->warnings[i]);
        }
        if (d->n_pages_no_text)
            dsv4_worker_event(st->ctx, "ingest", "warn", NULL, "%s: %llu page(s) without a text layer (no OCR)",
                              r->name, (unsigned long long)d->n_pages_no_text);
        dsv4_worker_progress(st->ctx, "ingest", (double)st->n_files, 0, "files");
    } else if (ev->kind == DSV4_INGEST_SKIPPED) {
        int is_error = dsv4_skip_reason_is_error(ev->reason);
        if (is_error) {
            st->n_skipped_errors++;
            dsv4_worker_event(st->ctx, "ingest", "warn", NULL, "skipped %s: %s", ev->where ? ev->where : "?",
                              ev->message ? ev->message : dsv4_skip_reason_name(ev->reason));
        }
    } else if (ev->kind == DSV4_INGEST_WARNING) {
        st->n_warnings++;
        dsv4_worker_event(st->ctx, "ingest", "warn", NULL, "%s: %s", ev->where ? ev->where : "?",
                          ev->message ? ev->message : "warning");
    }
    return dsv4_worker_should_stop(st->ctx) ? 1 : 0;
}

static int has_glob_char(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

static int cmp_bytes(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Files under root whose path relative to it matches pattern, byte-wise
 * sorted, appended to *out. The walk does not follow symlinked directories
 * and skips .git. */
static int glob_walk(const char *root, const char *rel, const char *pattern, char ***out, size_t *n, size_t *cap,
                     int depth)
{
    if (depth > 64) return 0;
    char dir[PATH_MAX];
    if ((size_t)snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel) >= sizeof dir) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    size_t nn = 0, nc = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, ".git")) continue;
        if (nn == nc) {
            nc = nc ? nc * 2 : 32;
            char **p = realloc(names, nc * sizeof *p);
            if (!p) { rc = -1; break; }
            names = p;
        }
        if (!(names[nn] = strdup(e->d_name))) { rc = -1; break; }
        nn++;
    }
    closedir(d);
    if (rc == 0) qsort(names, nn, sizeof *names, cmp_bytes);
    for (size_t i = 0; rc == 0 && i < nn; i++) {
        char sub[PATH_MAX], full[PATH_MAX];
        if ((size_t)snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", names[i]) >= sizeof sub) continue;
        if ((size_t)snprintf(full, sizeof full, "%s/%s", root, sub) >= sizeof full) continue;
        struct stat sb;
        if (lstat(full, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode)) {
            rc = glob_walk(root, sub, pattern, out, n, cap, depth + 1);
        } else if (S_ISREG(sb.st_mode) && dsv4_ingest_glob_match(pattern, sub)) {
            if (*n == *cap) {
                *cap = *cap ? *cap * 2 : 32;
                char **p = realloc(*out, *cap * sizeof *p);
                if (!p) { rc = -1; break; }
                *out = p;
            }
            if (!((*out)[*n] = strdup(full))) { rc = -1; break; }
            (*n)++;
        }
    }
    for (size_t i = 0; i < nn; i++) free(names[i]);
    free(names);
    return rc;
}

/* Expands a glob input (DIR/pat/STARSTAR) into files: the directory part before
 * the first component with a glob character is the root of the walk. */
static int expand_glob(const char *path, char ***files, size_t *n)
{
    size_t cap = 0;
    *files = NULL;
    *n = 0;
    const char *g = path + strcspn(path, "*?[");
    const char *slash = g;
    while (slash > path && *slash != '/') slash--;
    char root[PATH_MAX];
    size_t rl = (size_t)(slash - path);
    if (rl == 0) rl = (*path == '/') ? 1 : 0;
    if (rl >= sizeof root) return -1;
    memcpy(root, path, rl);
    root[rl] = 0;
    if (!*root) strcpy(root, ".");
    const char *pattern = (*slash == '/') ? slash + 1 : slash;
    return glob_walk(root, "", pattern, files, n, &cap, 0);
}

static void options_for_input(const dsv4_spec_input *in, dsv4_ingest_options *o)
{
    dsv4_ingest_options_default(o);
    if (in->limits.max_total_bytes > 0) o->max_input_bytes = (uint64_t)in->limits.max_total_bytes;
    if (in->limits.max_entry_bytes > 0) o->max_entry_bytes = (uint64_t)in->limits.max_entry_bytes;
    if (in->limits.max_ratio > 0) o->max_ratio = (uint64_t)in->limits.max_ratio;
    if (in->limits.max_entries > 0) o->max_entries = (uint64_t)in->limits.max_entries;
    if (in->limits.max_depth > 0) o->max_depth = in->limits.max_depth;
    if (in->limits.max_file_bytes > 0) o->max_file_bytes = (uint64_t)in->limits.max_file_bytes;
    o->include = (const char *const *)in->include;
    o->n_include = in->n_include;
    o->exclude = (const char *const *)in->exclude;
    o->n_exclude = in->n_exclude;
    /* .gitignore is a repository's statement of what is not source. */
    o->no_gitignore = in->kind != DSV4_INPUT_REPO;
}

static int cmp_doc_name(const void *a, const void *b)
{
    const rendered_doc *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return (x->input > y->input) - (x->input < y->input);
}

static int ingest_inputs(const dsv4_job_spec *spec, const dsv4_worker_ctx *ctx, ingest_state *st, char *err,
                         size_t errlen)
{
    st->ctx = ctx;
    for (size_t i = 0; i < spec->n_inputs; i++) {
        const dsv4_spec_input *in = &spec->inputs[i];
        dsv4_ingest_options o;
        options_for_input(in, &o);
        dsv4_ingest *s = NULL;
        if (dsv4_ingest_open(&o, &s, err, errlen) != 0) return -1;
        st->input = i;
        char **files = NULL;
        size_t n_files = 0;
        if (in->is_glob || has_glob_char(in->path)) {
            if (expand_glob(in->path, &files, &n_files) != 0) {
                dsv4_ingest_close(s);
                snprintf(err, errlen, "input %s: out of memory while expanding the pattern", in->path);
                return -1;
            }
            if (n_files == 0)
                dsv4_worker_event(ctx, "ingest", "warn", NULL, "input %s matches no file", in->path);
        }
        int rc = 0;
        if (files) {
            for (size_t k = 0; k < n_files && rc >= 0; k++) rc = dsv4_ingest_path(s, files[k], on_ingest_event, st);
        } else {
            rc = dsv4_ingest_path(s, in->path, on_ingest_event, st);
        }
        for (size_t k = 0; k < n_files; k++) free(files[k]);
        free(files);
        dsv4_ingest_close(s);
        if (st->failed) {
            snprintf(err, errlen, "ingest: out of memory");
            return -1;
        }
        if (rc == DSV4_INGEST_ECANCELED && dsv4_worker_should_stop(ctx)) return DSV4_RUN_STOPPED;
        if (rc == DSV4_INGEST_ENOMEM) {
            snprintf(err, errlen, "ingest %s: out of memory", in->path);
            return -1;
        }
        if (rc == DSV4_INGEST_EIO)
            dsv4_worker_event(ctx, "ingest", "warn", NULL, "input %s could not be read; the job goes on without it",
                              in->path);
    }
    if (spec->context.order == DSV4_ORDER_PATH) qsort(st->docs, st->n_docs, sizeof *st->docs, cmp_doc_name);
    dsv4_worker_progress(ctx, "ingest", (double)st->n_files, (double)st->n_files, "files");
    return 0;
}

static void free_docs(ingest_state *st)
{
    for (size_t i = 0; i < st->n_docs; i++) {
        free(st->docs[i].name);
        free(st->docs[i].text);
    }
    free(st->docs);
    st->docs = NULL;
    st->n_docs = 0;
}

/* ---- stage 2: the shared context ------------------------------------------ */

/* Joins the documents into the context, enforcing context.max_tokens on the
 * documents' tokens: on_overflow error fails the job naming the sizes;
 * truncate drops whole documents from the end of the order, naming each. */
static int assemble_context(const dsv4_job_spec *spec, const dsv4_worker_ctx *ctx, const dsv4_tokenizer *tok,
                            ingest_state *st, buf *context, int64_t *context_tokens, char *err, size_t errlen)
{
    size_t n = st->n_docs;
    const char **texts = calloc(n ? n : 1, sizeof *texts);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    dsv4_tokens *toks = calloc(n ? n : 1, sizeof *toks);
    int rc = -1;
    if (!texts || !lens || !toks) {
        snprintf(err, errlen, "context: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        texts[i] = st->docs[i].text;
        lens[i] = st->docs[i].n;
    }
    if (n && dsv4_tokenizer_encode_batch_ex(tok, n, texts, lens, DSV4_TOK_PLAIN, 0, toks, err, errlen) != 0) goto done;
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) total += (int64_t)toks[i].n;
    size_t keep = n;
    if (spec->context.max_tokens > 0 && total > spec->context.max_tokens) {
        if (spec->context.on_overflow == DSV4_OVERFLOW_ERROR) {
            snprintf(err, errlen,
                     "the context is %lld tokens (%zu documents), over context.max_tokens %lld; raise the limit, "
                     "narrow the inputs, or set context.on_overflow: truncate",
                     (long long)total, n, (long long)spec->context.max_tokens);
            goto done;
        }
        int64_t sum = 0;
        keep = 0;
        while (keep < n && sum + (int64_t)toks[keep].n <= spec->context.max_tokens) sum += (int64_t)toks[keep++].n;
        for (size_t i = keep; i < n; i++)
            dsv4_worker_event(ctx, "context", "warn", NULL,
                              "context.max_tokens %lld reached: dropped %s (%zu tokens) and what follows it",
                              (long long)spec->context.max_tokens, st->docs[i].name, toks[i].n);
        total = sum;
    }
    for (size_t i = 0; i < keep; i++)
        if (buf_add(context, st->docs[i].text, st->docs[i].n) != 0) {
            snprintf(err, errlen, "context: out of memory");
            goto done;
        }
    /* The chat encoding adds the separator between context and question. */
    while (context->n && context->p[context->n - 1] == '\n') context->p[--context->n] = 0;
    *context_tokens = total;
    dsv4_worker_event(ctx, "context", "info", NULL, "context: %zu documents, %lld tokens", keep, (long long)total);
    rc = 0;
done:
    for (size_t i = 0; toks && i < n; i++) dsv4_tokens_free(&toks[i]);
    free(toks);
    free(lens);
    free(texts);
    return rc;
}

/* ---- stage 3: the shared prefix: cache restore, prefill, cache store ------ */

typedef struct prefix_run {
    dsv4_seq *seq;
    int64_t n_tokens;     /* prefix length */
    int64_t cached;       /* tokens restored from the cache */
    double prefill_ms;    /* restore + prefill of the prefix */
} prefix_run;

static void report_to_events(void *c, const char *msg)
{
    dsv4_worker_event((const dsv4_worker_ctx *)c, "cache", "warn", NULL, "%s", msg);
}

/* Restores the longest cached prefix of tokens into a new sequence. A record
 * found corrupt is deleted by the cache; then the lookup is repeated (it is
 * shorter now), so a bad cache costs recomputation, never the job. */
static int restore_prefix(dsv4_engine *e, dsv4_cache *c, const int32_t *tokens, int64_t n, int64_t end,
                          const dsv4_worker_ctx *ctx, dsv4_seq **seq_out, int64_t *reused, dsv4_cache_key *parent,
                          char *err, size_t errlen)
{
    const dsv4_state_layout *layout = dsv4_engine_state_layout(e);
    *reused = 0;
    memset(parent, 0, sizeof *parent);
    for (int attempt = 0; c && attempt < 4; attempt++) {
        dsv4_cache_hit *hit = NULL;
        char cerr[512];
        if (dsv4_cache_lookup(c, tokens, n, &end, 1, &hit, cerr, sizeof cerr) != 0) {
            dsv4_worker_event(ctx, "cache", "warn", NULL, "cache lookup failed, computing instead: %s", cerr);
            break;
        }
        int64_t got = dsv4_cache_hit_tokens(hit);
        if (got == 0) {
            dsv4_cache_hit_free(hit);
            break;
        }
        dsv4_seq *seq = NULL;
        if (dsv4_seq_create(e, &seq, err, errlen) != 0) {
            dsv4_cache_hit_free(hit);
            return -1;
        }
        int nrec = dsv4_cache_hit_records(hit), ok = 1;
        for (int i = 0; i < nrec && ok; i++) {
            int64_t p0, p1;
            dsv4_cache_hit_span(hit, i, &p0, &p1);
            dsv4_state_chunk *chunk = NULL;
            if (dsv4_cache_chunk_alloc(layout, p0, p1, i == nrec - 1, &chunk, cerr, sizeof cerr) != 0 ||
                dsv4_cache_read(c, hit, i, chunk, cerr, sizeof cerr) != 0 ||
                dsv4_seq_import(seq, chunk, cerr, sizeof cerr) != 0) {
                dsv4_worker_event(ctx, "cache", "warn", NULL, "cache record %d of %d unusable (%s); looking up again",
                                  i + 1, nrec, cerr);
                ok = 0;
            }
            dsv4_cache_chunk_free(chunk);
        }
        if (ok) {
            *reused = got;
            *parent = dsv4_cache_hit_key(hit);
            *seq_out = seq;
            dsv4_cache_hit_free(hit);
            return 0;
        }
        dsv4_seq_free(seq);
        dsv4_cache_hit_free(hit);
    }
    return dsv4_seq_create(e, seq_out, err, errlen);
}

static int64_t prefill_piece(void)
{
    const char *s = getenv("DSV4_PREFILL_CHUNK");
    long v = s ? strtol(s, NULL, 10) : 0;
    return v > 0 ? v : PREFILL_PIECE_DEFAULT;
}

static int run_prefix(dsv4_engine *e, dsv4_cache *c, const int32_t *tokens, int64_t n, const dsv4_worker_ctx *ctx,
                      prefix_run *pr, char *err, size_t errlen)
{
    double t0 = now_ms();
    dsv4_cache_key parent;
    int rc = restore_prefix(e, c, tokens, n, n, ctx, &pr->seq, &pr->cached, &parent, err, errlen);
    if (rc != 0) return rc;
    pr->n_tokens = n;
    if (pr->cached)
        dsv4_worker_event(ctx, "cache", "info", NULL, "cache hit: %lld of %lld prefix tokens restored",
                          (long long)pr->cached, (long long)n);
    else if (c)
        dsv4_worker_event(ctx, "cache", "info", NULL, "cache miss: prefilling all %lld prefix tokens", (long long)n);

    /* The record ends still to write: fixed spans plus the prefix's end. */
    int64_t *ends = NULL, n_ends = 0;
    if (c) {
        n_ends = dsv4_cache_plan(c, n, &n, 1, NULL, 0);
        ends = malloc((size_t)(n_ends > 0 ? n_ends : 1) * sizeof *ends);
        if (!ends) {
            snprintf(err, errlen, "prefill: out of memory");
            return -1;
        }
        n_ends = dsv4_cache_plan(c, n, &n, 1, ends, n_ends);
    }
    const dsv4_state_layout *layout = dsv4_engine_state_layout(e);
    int64_t pos = pr->cached, piece = prefill_piece(), last_end = pr->cached;
    int64_t next_end_i = 0;
    while (next_end_i < n_ends && ends[next_end_i] <= pos) next_end_i++;
    double tp0 = now_ms();
    rc = 0;
    dsv4_worker_progress(ctx, "prefill", (double)pos, (double)n, "tokens");
    while (pos < n) {
        int64_t stop_at = next_end_i < n_ends ? ends[next_end_i] : n;
        int64_t k = stop_at - pos < piece ? stop_at - pos : piece;
        if (dsv4_seq_prefill(pr->seq, tokens + pos, k, NULL, 0, err, errlen) != 0) {
            rc = -1;
            break;
        }
        pos += k;
        dsv4_worker_progress(ctx, "prefill", (double)pos, (double)n, "tokens");
        if (c && next_end_i < n_ends && pos == ends[next_end_i]) {
            dsv4_state_chunk *chunk = NULL;
            char cerr[512];
            dsv4_cache_key key;
            if (dsv4_cache_chunk_alloc(layout, last_end, pos, 1, &chunk, cerr, sizeof cerr) != 0 ||
                dsv4_seq_export(pr->seq, last_end, chunk, cerr, sizeof cerr) != 0 ||
                dsv4_cache_put(c, &parent, tokens + last_end, chunk, &key, cerr, sizeof cerr) != 0) {
                /* Caching is best effort: the job goes on; later records
                 * chain from here so stop writing this run. */
                dsv4_worker_event(ctx, "cache", "warn", NULL, "could not store the cache record [%lld, %lld): %s",
                                  (long long)last_end, (long long)pos, cerr);
                n_ends = next_end_i;
            } else {
                parent = key;
            }
            dsv4_cache_chunk_free(chunk);
            last_end = pos;
            next_end_i++;
        }
        if (dsv4_worker_should_stop(ctx)) {
            rc = DSV4_RUN_STOPPED;
            break;
        }
    }
    free(ends);
    double t1 = now_ms();
    pr->prefill_ms = t1 - t0;
    if (rc == 0 && n > pr->cached) {
        double secs = (t1 - tp0) / 1e3;
        char payload[256];
        snprintf(payload, sizeof payload, "{\"tokens\":%lld,\"cached\":%lld,\"seconds\":%.3f,\"tokens_per_s\":%.1f}",
                 (long long)(n - pr->cached), (long long)pr->cached, secs,
                 secs > 0 ? (double)(n - pr->cached) / secs : 0.0);
        dsv4_worker_event(ctx, "prefill", "info", payload, "prefilled %lld tokens in %.1f s (%.0f tokens/s)",
                          (long long)(n - pr->cached), secs, secs > 0 ? (double)(n - pr->cached) / secs : 0.0);
    }
    return rc;
}

/* ---- stage 4: questions: fork, suffix prefill, batched decode ------------- */

typedef struct query_run {
    const dsv4_job_query *q;
    int64_t max_new_tokens;
    dsv4_seq *seq;
    uint64_t rng;
    int32_t next;          /* token to feed at the next decode step */
    int64_t n_suffix, n_generated;
    int in_reasoning;
    buf text, reasoning;
    dsv4_tok_stream *stream;
    double prefill_ms, decode_ms, t_start;
    int done;
    const char *finish;
} query_run;

static uint64_t hash_str(uint64_t h, const char *s)
{
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Appends the bytes of token id to the answer or the reasoning. */
static int take_token(query_run *r, const dsv4_tokenizer *tok, int32_t id, int32_t think_end, char *err, size_t errlen)
{
    if (r->in_reasoning && id == think_end) {
        size_t n;
        const char *rest = dsv4_tok_stream_finish(r->stream, &n);
        if (rest && n && buf_add(&r->reasoning, rest, n) != 0) goto oom;
        r->in_reasoning = 0;
        return 0;
    }
    const char *bytes;
    size_t n;
    if (dsv4_tok_stream_push(r->stream, id, &bytes, &n, err, errlen) != 0) return -1;
    (void)tok;
    if (n && buf_add(r->in_reasoning ? &r->reasoning : &r->text, bytes, n) != 0) goto oom;
    return 0;
oom:
    snprintf(err, errlen, "decode: out of memory");
    return -1;
}

/* The model's embedding table may be larger than the tokenizer's vocabulary
 * (DeepSeek-V4: 129280 rows, 128846 tokens); the rows past it are padding
 * that no text decodes from, so they are never sampled. */
static void mask_padding(float *logits, int vocab, int n_tokens)
{
    for (int i = n_tokens; i < vocab; i++) logits[i] = -INFINITY;
}

static int store_result(dsv4_jobs *db, int64_t job_id, const dsv4_worker_ctx *ctx, query_run *r,
                        const prefix_run *pr, int thinking, char *err, size_t errlen)
{
    size_t n;
    const char *rest = dsv4_tok_stream_finish(r->stream, &n);
    if (rest && n && buf_add(r->in_reasoning ? &r->reasoning : &r->text, rest, n) != 0) {
        snprintf(err, errlen, "decode: out of memory");
        return -1;
    }
    dsv4_job_result res = {0};
    res.query_id = r->q->query_id;
    res.text = r->text.p ? r->text.p : "";
    res.reasoning = thinking != DSV4_THINK_NONE ? (r->reasoning.p ? r->reasoning.p : "") : NULL;
    res.finish_reason = (char *)r->finish;
    res.prompt_tokens = pr->n_tokens + r->n_suffix;
    res.cached_tokens = pr->cached;
    res.generated_tokens = r->n_generated;
    res.prefill_ms = pr->prefill_ms + r->prefill_ms;
    res.decode_ms = r->decode_ms;
    res.total_ms = now_ms() - r->t_start + pr->prefill_ms;
    int inserted = 0;
    if (dsv4_jobs_result_put(db, job_id, &res, &inserted, err, errlen) != 0) return -1;
    dsv4_worker_event(ctx, "decode", "info", NULL, "query %s done: %lld tokens, finish %s%s", r->q->query_id,
                      (long long)r->n_generated, r->finish, inserted ? "" : " (a result existed already)");
    return 0;
}

static int run_queries(dsv4_jobs *db, int64_t job_id, const dsv4_job_spec *spec, const dsv4_worker_ctx *ctx,
                       dsv4_engine *e, const dsv4_tokenizer *tok, const prefix_run *pr, int thinking,
                       const dsv4_job_query *qs, size_t nq, char *const *suffixes, const size_t *suffix_lens,
                       char *err, size_t errlen)
{
    const dsv4_model_info *info = dsv4_engine_info(e);
    int vocab = info->vocab_size;
    int32_t eos = info->eos_token_id, think_end = dsv4_tokenizer_token_id(tok, "</think>");
    size_t tv = dsv4_tokenizer_vocab_size(tok);
    int tok_vocab = tv < (size_t)vocab ? (int)tv : vocab;
    query_run *runs = calloc(nq, sizeof *runs);
    float *logits = malloc((size_t)vocab * nq * sizeof *logits);
    dsv4_seq **seqs = calloc(nq, sizeof *seqs);
    int32_t *feed = calloc(nq, sizeof *feed);
    size_t *idx = calloc(nq, sizeof *idx);
    int rc = -1;
    if (!runs || !logits || !seqs || !feed || !idx) {
        snprintf(err, errlen, "decode: out of memory");
        goto done;
    }
    dsv4_sampling samp = {(float)spec->generation.temperature, (float)spec->generation.top_p,
                          (uint64_t)spec->generation.seed};
    int64_t total_new = 0, generated_all = 0;
    /* Fork and prefill each question's suffix; its last logits give the first token. */
    for (size_t i = 0; i < nq; i++) {
        query_run *r = &runs[i];
        r->q = &qs[i];
        r->t_start = now_ms();
        r->max_new_tokens = spec->generation.max_new_tokens;
        for (size_t k = 0; k < spec->n_queries; k++)
            if (!strcmp(spec->queries[k].id, qs[i].query_id)) r->max_new_tokens = spec->queries[k].max_new_tokens;
        total_new += r->max_new_tokens;
        r->in_reasoning = thinking != DSV4_THINK_NONE;
        r->stream = dsv4_tok_stream_new(tok);
        if (!r->stream) {
            snprintf(err, errlen, "decode: out of memory");
            goto done;
        }
        dsv4_tokens st = {0};
        if (dsv4_tokenizer_encode(tok, suffixes[i], suffix_lens[i], &st, err, errlen) != 0) goto done;
        r->n_suffix = (int64_t)st.n;
        double t0 = now_ms();
        int frc = dsv4_seq_fork(pr->seq, &r->seq, err, errlen);
        if (frc == 0) frc = dsv4_seq_prefill(r->seq, st.ids, (int64_t)st.n, logits, 1, err, errlen);
        dsv4_tokens_free(&st);
        if (frc != 0) goto done;
        r->prefill_ms = now_ms() - t0;
        dsv4_sampler_seed(&r->rng, hash_str(samp.seed ^ 0xcbf29ce484222325ull, qs[i].query_id));
        mask_padding(logits, vocab, tok_vocab);
        r->next = dsv4_sample(logits, vocab, &samp, &r->rng);
        if (dsv4_worker_should_stop(ctx)) {
            rc = DSV4_RUN_STOPPED;
            goto done;
        }
    }
    double td = now_ms();
    for (;;) {
        /* Take each active query's sampled token; finish those that stop. */
        size_t n_active = 0;
        for (size_t i = 0; i < nq; i++) {
            query_run *r = &runs[i];
            if (r->done) continue;
            r->n_generated++;
            generated_all++;
            if (r->next == eos) {
                r->finish = "stop";
                r->done = 1;
            } else {
                if (take_token(r, tok, r->next, think_end, err, errlen) != 0) goto done;
                if (r->n_generated >= r->max_new_tokens) {
                    r->finish = "length";
                    r->done = 1;
                }
            }
            if (r->done) {
                r->decode_ms = now_ms() - td;
                if (store_result(db, job_id, ctx, r, pr, thinking, err, errlen) != 0) goto done;
                dsv4_seq_free(r->seq);
                r->seq = NULL;
                continue;
            }
            seqs[n_active] = r->seq;
            feed[n_active] = r->next;
            idx[n_active] = i;
            n_active++;
        }
        dsv4_worker_progress(ctx, "decode", (double)generated_all, (double)total_new, "tokens");
        if (n_active == 0) break;
        if (dsv4_worker_should_stop(ctx)) {
            rc = DSV4_RUN_STOPPED;
            goto done;
        }
        if (dsv4_decode(seqs, (int)n_active, feed, logits, err, errlen) != 0) goto done;
        for (size_t a = 0; a < n_active; a++) {
            float *l = logits + (size_t)a * (size_t)vocab;
            mask_padding(l, vocab, tok_vocab);
            runs[idx[a]].next = dsv4_sample(l, vocab, &samp, &runs[idx[a]].rng);
        }
    }
    double secs = (now_ms() - td) / 1e3;
    char payload[256];
    snprintf(payload, sizeof payload, "{\"queries\":%zu,\"tokens\":%lld,\"seconds\":%.3f,\"tokens_per_s\":%.1f}", nq,
             (long long)generated_all, secs, secs > 0 ? (double)generated_all / secs : 0.0);
    dsv4_worker_event(ctx, "decode", "info", payload, "decoded %zu queries together: %lld tokens in %.1f s (%.1f tokens/s)",
                      nq, (long long)generated_all, secs, secs > 0 ? (double)generated_all / secs : 0.0);
    rc = 0;
done:
    for (size_t i = 0; runs && i < nq; i++) {
        dsv4_seq_free(runs[i].seq);
        dsv4_tok_stream_free(runs[i].stream);
        free(runs[i].text.p);
        free(runs[i].reasoning.p);
    }
    free(runs);
    free(logits);
    free(seqs);
    free(feed);
    free(idx);
    return rc;
}

/* The prefix's tokens: the chat template's part (BOS, system prompt, the
 * user marker) with its markers matched as control tokens, then the
 * documents as plain text, so a document that contains a marker string such
 * as "<｜Assistant｜>" cannot act on the prompt. The cut falls right after
 * the user marker, where the tokenization splits anyway. */
static int encode_prefix(const dsv4_tokenizer *tok, const char *prefix, size_t prefix_len, const buf *context,
                         dsv4_tokens *out, char *err, size_t errlen)
{
    if (context->n == 0) return dsv4_tokenizer_encode_parallel(tok, prefix, prefix_len, 0, out, err, errlen);
    size_t tail = context->n + 2; /* the context and the "\n\n" before the question */
    if (prefix_len < tail || memcmp(prefix + prefix_len - tail, context->p, context->n) != 0 ||
        memcmp(prefix + prefix_len - 2, "\n\n", 2) != 0) {
        snprintf(err, errlen, "internal: the chat prefix does not end with the document context");
        return -1;
    }
    size_t head = prefix_len - tail;
    if (dsv4_tokenizer_encode(tok, prefix, head, out, err, errlen) != 0) return -1;
    return dsv4_tokenizer_encode_parallel_ex(tok, prefix + head, tail, DSV4_TOK_PLAIN, 0, out, err, errlen);
}

/* ---- the job ------------------------------------------------------------- */

static int query_thinking(const dsv4_job_spec *spec, const char *id)
{
    for (size_t k = 0; k < spec->n_queries; k++)
        if (!strcmp(spec->queries[k].id, id)) return spec->queries[k].thinking;
    return spec->thinking;
}

static int open_tokenizer(const char *model_dir, dsv4_tokenizer **tok, char *err, size_t errlen)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if (access(path, R_OK) == 0) return dsv4_tokenizer_open(path, tok, err, errlen);
    snprintf(err, errlen, "%s: no tokenizer.json in the model directory", model_dir);
    return -1;
}

int dsv4_pipeline_run_job(dsv4_jobs *db, int64_t job_id, const dsv4_worker_ctx *ctx, char *err, size_t errlen)
{
    dsv4_job_info info = {0};
    dsv4_job_spec *spec = NULL;
    dsv4_job_query *pending = NULL;
    size_t n_pending = 0;
    ingest_state ing = {0};
    buf context = {0};
    dsv4_tokenizer *tok = NULL;
    dsv4_engine *engine = NULL;
    dsv4_cache *cache = NULL;
    char model_dir[PATH_MAX];
    int rc = -1;

    if (dsv4_jobs_get(db, job_id, &info, err, errlen) != 0) goto done;
    if (dsv4_spec_from_json(info.spec_json, &spec, err, errlen) != 0) goto done;
    if (dsv4_jobs_queries(db, job_id, 1, &pending, &n_pending, err, errlen) != 0) goto done;
    dsv4_worker_event(ctx, "job", "info", NULL, "job %lld (%s), attempt %d: %zu of %zu queries to answer",
                      (long long)job_id, spec->name, ctx->attempt, n_pending, spec->n_queries);
    if (n_pending == 0) goto outputs;

    /* Ingest and assemble the context first: it needs no GPU, and a spec
     * whose context overflows fails before the model is loaded. */
    rc = ingest_inputs(spec, ctx, &ing, err, errlen);
    if (rc != 0) goto done;
    rc = -1;

    if (spec->model) {
        snprintf(model_dir, sizeof model_dir, "%s", spec->model);
    } else {
        if (dsv4_demo_model_ensure(ctx->home_dir, model_dir, sizeof model_dir, err, errlen) != 0) goto done;
        dsv4_worker_event(ctx, "model", "warn", NULL,
                          "no model: given, using the embedded demo model (%s): DeepSeek-V4 architecture and "
                          "tokenizer with RANDOM weights, so its answers are noise",
                          model_dir);
    }
    if (open_tokenizer(model_dir, &tok, err, errlen) != 0) goto done;

    int64_t context_tokens = 0;
    if (assemble_context(spec, ctx, tok, &ing, &context, &context_tokens, err, errlen) != 0) goto done;
    free_docs(&ing);

    dsv4_engine_options eo = {0};
    eo.verbose = ctx->output != DSV4_OUT_QUIET;
    eo.devices = ctx->devices;
    eo.split = ctx->split;
    double t_open = now_ms();
    int erc = dsv4_engine_open(model_dir, &eo, &engine, err, errlen);
    if (erc == DSV4_EDEVICE) {
        rc = DSV4_RUN_UNAVAILABLE; /* another machine may have a device */
        goto done;
    }
    if (erc != 0) goto done;
    dsv4_worker_event(ctx, "model", "info", NULL, "model %s on %s (loaded in %.1f s)", model_dir,
                      dsv4_engine_device_name(engine), (now_ms() - t_open) / 1e3);

    if (spec->cache.enabled) {
        dsv4_cache_options co = {0};
        co.max_bytes = spec->cache.max_size > 0 ? (uint64_t)spec->cache.max_size : 0;
        co.span_tokens = spec->cache.span_tokens;
        /* Restores and stores sit between GPU work: spread them over the
         * machine's cores (zstd and SHA-256 are the cost). */
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        co.read_threads = cpus > 8 ? 8 : (int)(cpus > 1 ? cpus : 1);
        co.zstd_workers = cpus > 2 ? (int)(cpus / 2 > 8 ? 8 : cpus / 2) : 0;
        co.report = report_to_events;
        co.report_ctx = (void *)ctx;
        char cerr[512];
        if (dsv4_cache_open(ctx->cache_dir, dsv4_engine_info(engine)->fingerprint, dsv4_engine_state_layout(engine),
                            &co, &cache, cerr, sizeof cerr) != 0) {
            dsv4_worker_event(ctx, "cache", "warn", NULL, "prefix cache unavailable, computing everything: %s", cerr);
            cache = NULL;
        }
    }

    /* One shared prefix per thinking mode (the mode changes the prompt's
     * head); nearly always a single group. */
    for (int mode = DSV4_THINK_NONE; mode <= DSV4_THINK_MAX; mode++) {
        size_t nq = 0;
        for (size_t i = 0; i < n_pending; i++) nq += query_thinking(spec, pending[i].query_id) == mode;
        if (!nq) continue;
        dsv4_job_query *qs = calloc(nq, sizeof *qs);
        char **suffixes = calloc(nq, sizeof *suffixes);
        size_t *suffix_lens = calloc(nq, sizeof *suffix_lens);
        char *prefix = NULL;
        size_t prefix_len = 0;
        dsv4_tokens ptoks = {0};
        prefix_run pr = {0};
        int grc = -1;
        if (!qs || !suffixes || !suffix_lens) {
            snprintf(err, errlen, "out of memory");
            goto group_done;
        }
        dsv4_chat_opts co = {0};
        co.think = (dsv4_think)mode;
        size_t k = 0;
        for (size_t i = 0; i < n_pending; i++) {
            if (query_thinking(spec, pending[i].query_id) != mode) continue;
            qs[k] = pending[i];
            char *pfx = NULL;
            size_t pl = 0;
            if (dsv4_chat_prompt_parts(spec->system, context.p ? context.p : "", context.n, pending[i].prompt, &co,
                                       &pfx, &pl, &suffixes[k], &suffix_lens[k], err, errlen) != 0)
                goto group_done;
            if (!prefix) {
                prefix = pfx;
                prefix_len = pl;
            } else {
                free(pfx); /* the same for every question of the group */
            }
            k++;
        }
        if (encode_prefix(tok, prefix, prefix_len, &context, &ptoks, err, errlen) != 0) goto group_done;
        if ((int64_t)ptoks.n + 1 >= dsv4_engine_info(engine)->max_position_embeddings) {
            snprintf(err, errlen, "the prompt is %zu tokens, beyond the model's %lld positions", ptoks.n,
                     (long long)dsv4_engine_info(engine)->max_position_embeddings);
            goto group_done;
        }
        grc = run_prefix(engine, cache, ptoks.ids, (int64_t)ptoks.n, ctx, &pr, err, errlen);
        if (grc != 0) goto group_done;
        grc = run_queries(db, job_id, spec, ctx, engine, tok, &pr, mode, qs, nq, suffixes, suffix_lens, err, errlen);
    group_done:
        for (size_t i = 0; suffixes && i < nq; i++) free(suffixes[i]);
        free(suffixes);
        free(suffix_lens);
        free(qs); /* shallow copies of pending[] */
        free(prefix);
        dsv4_tokens_free(&ptoks);
        dsv4_seq_free(pr.seq);
        if (grc != 0) {
            rc = grc;
            goto done;
        }
    }

outputs:
    /* output.jsonl is written by the worker once the job succeeds. */
    rc = 0;
done:
    free_docs(&ing);
    free(context.p);
    dsv4_cache_close(cache);
    dsv4_engine_close(engine);
    dsv4_tokenizer_close(tok);
    dsv4_jobs_queries_free(pending, n_pending);
    dsv4_spec_free(spec);
    dsv4_job_info_clear(&info);
    return rc;
}
