/* Helpers shared by the tests/test_ingest_*.c binaries (a header, so the
 * Makefile does not link it into every test): run a session over a path or
 * bytes and keep copies of every document and event, run shell commands that
 * make fixtures with real tools, and find things in what was collected. */
#ifndef DSV4_TEST_INGEST_UTIL_H
#define DSV4_TEST_INGEST_UTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ingest/dsv4_ingest.h"

typedef struct tevent {
    int kind, reason;
    char *where, *msg;
} tevent;

typedef struct collected {
    dsv4_doc **docs;
    size_t n_docs;
    tevent *ev;
    size_t n_ev;
    int rc;
    dsv4_ingest_stats st;
} collected;

static inline int collect_cb(void *user, const dsv4_ingest_event *ev)
{
    collected *c = user;
    if (ev->kind == DSV4_INGEST_DOCUMENT) {
        c->docs = realloc(c->docs, (c->n_docs + 1) * sizeof *c->docs);
        c->docs[c->n_docs++] = dsv4_doc_dup(ev->doc);
    } else {
        c->ev = realloc(c->ev, (c->n_ev + 1) * sizeof *c->ev);
        c->ev[c->n_ev++] = (tevent){ev->kind, ev->reason, strdup(ev->where), strdup(ev->message)};
    }
    return 0;
}

static inline void collected_free(collected *c)
{
    for (size_t i = 0; i < c->n_docs; i++) dsv4_doc_free(c->docs[i]);
    for (size_t i = 0; i < c->n_ev; i++) {
        free(c->ev[i].where);
        free(c->ev[i].msg);
    }
    free(c->docs);
    free(c->ev);
    memset(c, 0, sizeof *c);
}

/* Ingests path (or, with data, the bytes) under options o (NULL: defaults). */
static inline int ingest_collect(const char *path, const void *data, size_t n, dsv4_doc_format hint,
                          const dsv4_ingest_options *o, collected *out)
{
    memset(out, 0, sizeof *out);
    char err[256];
    dsv4_ingest *s;
    int rc = dsv4_ingest_open(o, &s, err, sizeof err);
    if (rc) {
        printf("  open failed: %s\n", err);
        return out->rc = rc;
    }
    rc = data ? dsv4_ingest_memory(s, path, data, n, hint, collect_cb, out)
              : dsv4_ingest_path(s, path, collect_cb, out);
    dsv4_ingest_get_stats(s, &out->st);
    dsv4_ingest_close(s);
    return out->rc = rc;
}

static inline void dump_collected(const collected *c)
{
    printf("  rc=%d, %zu docs, %zu events\n", c->rc, c->n_docs, c->n_ev);
    for (size_t i = 0; i < c->n_docs; i++) {
        char *nm = dsv4_doc_display_name(c->docs[i]);
        printf("  doc %s [%s] %llu bytes\n", nm, dsv4_doc_format_name(c->docs[i]->format),
               (unsigned long long)c->docs[i]->n_bytes);
        free(nm);
    }
    for (size_t i = 0; i < c->n_ev; i++)
        printf("  event %d %s: %s: %s\n", c->ev[i].kind, dsv4_skip_reason_name((dsv4_skip_reason)c->ev[i].reason),
               c->ev[i].where, c->ev[i].msg);
}

/* The document whose display name is exactly name. */
static inline const dsv4_doc *find_doc(const collected *c, const char *name)
{
    for (size_t i = 0; i < c->n_docs; i++) {
        char *nm = dsv4_doc_display_name(c->docs[i]);
        int eq = nm && strcmp(nm, name) == 0;
        free(nm);
        if (eq) return c->docs[i];
    }
    return NULL;
}

/* An event with this reason whose where contains `where` and message
 * contains `msg` (either may be NULL). */
static inline const tevent *find_event(const collected *c, int reason, const char *where, const char *msg)
{
    for (size_t i = 0; i < c->n_ev; i++)
        if (c->ev[i].reason == reason && (!where || strstr(c->ev[i].where, where)) &&
            (!msg || strstr(c->ev[i].msg, msg)))
            return &c->ev[i];
    return NULL;
}

static inline int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(stdout);
    int st = system(cmd);
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (code != 0) printf("  command exited %d: %s\n", code, cmd);
    return code;
}

static inline int have_tool(const char *name)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s > /dev/null 2>&1", name);
    return system(cmd) == 0;
}

static inline char *make_tmpdir(void)
{
    char *t = strdup("/tmp/dsv4-ingest-test-XXXXXX");
    if (!mkdtemp(t)) {
        free(t);
        return NULL;
    }
    return t;
}

static inline void remove_tree(char *dir)
{
    if (!dir) return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "chmod -R u+rwx '%s' 2>/dev/null; rm -rf '%s'", dir, dir);
    if (system(cmd) != 0) printf("  could not remove %s\n", dir);
    free(dir);
}

static inline int write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* Reads a whole (small) file; NUL-terminated; NULL when missing. */
static inline char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *p = malloc(cap);
    size_t r;
    while ((r = fread(p + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len - 1 == 0) p = realloc(p, cap *= 2);
    }
    fclose(f);
    p[len] = 0;
    if (n) *n = len;
    return p;
}

#endif
