/* Directory trees and repositories: a deterministic walk that honours
 * .gitignore files.
 *
 * Order: every directory's entries are sorted byte-wise by name, with a
 * directory compared as "name/", which makes the whole walk visit paths in
 * byte-wise sorted order of their full relative paths ("a.txt" before
 * "a/b"). Ignore rules follow git: .git/info/exclude at the root is the
 * lowest level, each directory's .gitignore applies below it, a deeper file's
 * rules override a shallower one's, within a file the last matching rule
 * wins, `!` re-includes, a trailing `/` matches directories only, a pattern
 * with a `/` is anchored to its file's directory, and an ignored directory is
 * not entered (so nothing inside it can be re-included, as in git). `.git`
 * itself is never walked.
 *
 * Symlinks are followed only to targets inside the tree (by realpath), and a
 * link to a directory that is one of the current directory's ancestors is a
 * loop and skipped; nesting is capped at 256 levels. Each file is its own
 * "input" for the archive guards (a tree of a thousand zips is not capped at
 * one zip's budget), and files over max_file_bytes are skipped. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest/ingest_internal.h"

#define MAX_TREE_DEPTH 256
#define MAX_IGNORE_FILE (1u << 20)

/* ---- .gitignore ---- */

typedef struct ign_rule {
    char *pat;
    int negate, dir_only, anchored;
} ign_rule;

struct ign_list {
    char *base; /* the directory of the file, relative to the root, "" or "a/b/" */
    ign_rule *r;
    size_t n;
};

void ign_free(ign_list *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) free(l->r[i].pat);
    free(l->r);
    free(l->base);
    free(l);
}

static int add_rule(ign_list *l, const char *line, size_t len)
{
    if (len == 0 || len > 1024 || l->n >= 10000) return 0;
    if (line[0] == '#') return 0;
    ign_rule r = {0};
    if (line[0] == '!') {
        r.negate = 1;
        line++;
        len--;
    } else if (line[0] == '\\' && len > 1 && (line[1] == '#' || line[1] == '!')) {
        line++;
        len--;
    }
    /* trailing spaces go unless escaped with a backslash */
    while (len > 0 && line[len - 1] == ' ' && !(len > 1 && line[len - 2] == '\\')) len--;
    if (len > 0 && line[len - 1] == '/') {
        r.dir_only = 1;
        while (len > 0 && line[len - 1] == '/') len--;
    }
    if (len == 0) return 0;
    if (memchr(line, '/', len)) {
        r.anchored = 1;
        while (len > 0 && line[0] == '/') {
            line++;
            len--;
        }
        if (len == 0) return 0;
    }
    if (!(r.pat = strndup(line, len))) return DSV4_INGEST_ENOMEM;
    ign_rule *nr = realloc(l->r, (l->n + 1) * sizeof *nr);
    if (!nr) {
        free(r.pat);
        return DSV4_INGEST_ENOMEM;
    }
    l->r = nr;
    l->r[l->n++] = r;
    return 0;
}

ign_list *ign_parse(const char *text, size_t n, const char *base)
{
    ign_list *l = calloc(1, sizeof *l);
    if (!l || !(l->base = strdup(base ? base : ""))) {
        ign_free(l);
        return NULL;
    }
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && text[j] != '\n') j++;
        size_t len = j - i;
        if (len > 0 && text[i + len - 1] == '\r') len--;
        /* a NUL inside a line ends it: rules are C strings */
        const char *z = memchr(text + i, 0, len);
        if (z) len = (size_t)(z - (text + i));
        if (add_rule(l, text + i, len)) {
            ign_free(l);
            return NULL;
        }
        i = j + 1;
    }
    return l;
}

int ign_match(const ign_list *l, const char *rel, int is_dir)
{
    size_t bl = strlen(l->base);
    if (strncmp(rel, l->base, bl) != 0) return 0;
    const char *sub = rel + bl;
    const char *base = strrchr(sub, '/');
    base = base ? base + 1 : sub;
    for (size_t i = l->n; i-- > 0;) {
        const ign_rule *r = &l->r[i];
        if (r->dir_only && !is_dir) continue;
        if (dsv4_ingest_glob_match(r->pat, r->anchored ? sub : base)) return r->negate ? -1 : 1;
    }
    return 0;
}

/* ---- the walk ---- */

typedef struct dev_ino {
    dev_t dev;
    ino_t ino;
} dev_ino;

typedef struct walker {
    ing_ctx *c;
    const char *root;        /* path as given */
    const char *display;     /* source prefix ("" for ".") */
    char *root_real;
    ign_list *stack[MAX_TREE_DEPTH + 2];
    size_t n_stack;
    dev_ino anc[MAX_TREE_DEPTH + 2];
    size_t n_anc;
} walker;

typedef struct dent {
    char *name;
    char *key; /* name, plus "/" for directories: the sort key */
    struct stat st;
    int is_link, link_bad;
    char *why; /* a reason to skip the link, or NULL */
} dent;

static int cmp_dent(const void *a, const void *b)
{
    return strcmp(((const dent *)a)->key, ((const dent *)b)->key);
}

static char *join3(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

static char *source_of(const walker *w, const char *rel)
{
    return *w->display ? join3(w->display, "/", rel) : strdup(rel);
}

/* Reports a skip of the tree entry rel (relative path). */
static int skip_rel(walker *w, const char *rel, dsv4_skip_reason r, const char *msg)
{
    ing_ctx *c = w->c;
    const char *saved = c->source;
    char *src = source_of(w, rel);
    if (!src) return DSV4_INGEST_ENOMEM;
    c->source = src;
    int rc = ctx_skip(c, NULL, r, "%s", msg);
    c->source = saved;
    free(src);
    return rc;
}

static int read_small(const char *path, buf *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    int rc = 0;
    for (;;) {
        if (buf_reserve(b, 65536)) { rc = DSV4_INGEST_ENOMEM; break; }
        ssize_t r = read(fd, b->p + b->n, 65536);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        b->n += (size_t)r;
        if (b->n > MAX_IGNORE_FILE) { b->n = MAX_IGNORE_FILE; break; }
    }
    close(fd);
    return rc;
}

static int push_ignore(walker *w, const char *path, const char *base)
{
    buf b = {0};
    int r = read_small(path, &b);
    if (r == -1) return 0; /* none there */
    if (r < 0) return r;
    ign_list *l = ign_parse(b.p ? b.p : "", b.n, base);
    buf_free(&b);
    if (!l) return DSV4_INGEST_ENOMEM;
    w->stack[w->n_stack++] = l;
    return 1;
}

static int ignored(const walker *w, const char *rel, int is_dir)
{
    for (size_t i = w->n_stack; i-- > 0;) {
        int r = ign_match(w->stack[i], rel, is_dir);
        if (r) return r > 0;
    }
    return 0;
}

static int inside_root(const walker *w, const char *real)
{
    size_t n = strlen(w->root_real);
    if (strcmp(w->root_real, "/") == 0) return 1;
    return strncmp(real, w->root_real, n) == 0 && (real[n] == '\0' || real[n] == '/');
}

static void free_dents(dent *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].key);
        free(v[i].why);
    }
    free(v);
}

/* Lists dir (full path) into *out: lstat'ed, links resolved, sorted. */
static int list_dir(walker *w, const char *full, dent **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(full);
    if (!d) return -1;
    dent *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0 || strcmp(nm, ".git") == 0) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            dent *nv = realloc(v, cap * sizeof *nv);
            if (!nv) { rc = DSV4_INGEST_ENOMEM; break; }
            v = nv;
        }
        dent *e = &v[n];
        memset(e, 0, sizeof *e);
        if (!(e->name = strdup(nm))) { rc = DSV4_INGEST_ENOMEM; break; }
        n++;
        char *p = join3(full, "/", nm);
        if (!p) { rc = DSV4_INGEST_ENOMEM; break; }
        if (lstat(p, &e->st) != 0) {
            e->link_bad = 1;
            e->why = strdup("cannot stat");
        } else if (S_ISLNK(e->st.st_mode)) {
            e->is_link = 1;
            char *real = realpath(p, NULL);
            if (!real) {
                e->why = strdup("dangling symlink");
            } else if (!inside_root(w, real)) {
                e->why = strdup("symlink points outside the tree (not followed)");
            } else if (stat(p, &e->st) != 0) {
                e->why = strdup("symlink target cannot be read");
            }
            free(real);
        }
        free(p);
        int is_dir = S_ISDIR(e->st.st_mode) && !e->why;
        if (!(e->key = join3(nm, is_dir ? "/" : "", ""))) { rc = DSV4_INGEST_ENOMEM; break; }
    }
    closedir(d);
    if (rc) {
        free_dents(v, n);
        return rc;
    }
    if (n) qsort(v, n, sizeof *v, cmp_dent);
    *out = v;
    *n_out = n;
    return 0;
}

static int walk_dir(walker *w, const char *rel, int depth);

static int visit(walker *w, const char *rel_dir, dent *e, int depth)
{
    ing_ctx *c = w->c;
    const dsv4_ingest_options *o = ctx_opts(c);
    char *rel = join3(rel_dir, e->name, "");
    if (!rel) return DSV4_INGEST_ENOMEM;
    int rc = 0;
    int is_dir = S_ISDIR(e->st.st_mode);
    if (e->why) {
        rc = skip_rel(w, rel, e->link_bad ? DSV4_SKIP_UNREADABLE : DSV4_SKIP_LINK, e->why);
    } else if (!o->no_gitignore && ignored(w, rel, is_dir)) {
        rc = skip_rel(w, rel, DSV4_SKIP_IGNORED, is_dir ? "directory ignored by .gitignore rules" : "ignored by .gitignore rules");
    } else if (is_dir) {
        int loop = 0;
        for (size_t i = 0; i < w->n_anc; i++)
            if (w->anc[i].dev == e->st.st_dev && w->anc[i].ino == e->st.st_ino) loop = 1;
        if (loop) rc = skip_rel(w, rel, DSV4_SKIP_LINK, "symlink loop (target is an ancestor directory)");
        else if (depth >= MAX_TREE_DEPTH) rc = skip_rel(w, rel, DSV4_SKIP_TOO_LARGE, "directory nesting over 256 levels");
        else {
            char *sub = join3(rel, "/", "");
            if (!sub) rc = DSV4_INGEST_ENOMEM;
            else {
                w->anc[w->n_anc++] = (dev_ino){e->st.st_dev, e->st.st_ino};
                rc = walk_dir(w, sub, depth + 1);
                w->n_anc--;
                free(sub);
            }
        }
    } else if (S_ISREG(e->st.st_mode)) {
        if (!include_path(c, rel)) {
            rc = skip_rel(w, rel, DSV4_SKIP_IGNORED, "excluded by the include/exclude globs");
        } else if ((uint64_t)e->st.st_size > o->max_file_bytes) {
            char msg[128];
            snprintf(msg, sizeof msg, "%llu bytes, over max_file_bytes (%llu)", (unsigned long long)e->st.st_size,
                     (unsigned long long)o->max_file_bytes);
            rc = skip_rel(w, rel, DSV4_SKIP_TOO_LARGE, msg);
        } else {
            char *full = join3(w->root, "/", rel);
            char *src = source_of(w, rel);
            if (!full || !src) rc = DSV4_INGEST_ENOMEM;
            else {
                const char *saved = c->source;
                guard_acct *saved_acct = c->acct, a = {0};
                c->source = src;
                c->acct = &a;
                rc = process_file(c, full, (uint64_t)e->st.st_size);
                c->source = saved;
                c->acct = saved_acct;
            }
            free(full);
            free(src);
        }
    } else {
        rc = skip_rel(w, rel, DSV4_SKIP_SPECIAL, "not a regular file (device, fifo or socket)");
    }
    free(rel);
    return rc;
}

static int walk_dir(walker *w, const char *rel, int depth)
{
    char *full = join3(w->root, "/", rel);
    if (!full) return DSV4_INGEST_ENOMEM;
    dent *v = NULL;
    size_t n = 0;
    int rc = list_dir(w, full, &v, &n);
    if (rc == -1) {
        char msg[256];
        snprintf(msg, sizeof msg, "cannot read directory: %s", strerror(errno));
        size_t l = strlen(rel);
        char *r = strndup(rel, l ? l - 1 : 0);
        rc = r ? skip_rel(w, *r ? r : ".", DSV4_SKIP_UNREADABLE, msg) : DSV4_INGEST_ENOMEM;
        free(r);
        free(full);
        return rc;
    }
    int pushed = 0;
    if (rc == 0 && !ctx_opts(w->c)->no_gitignore) {
        char *gi = join3(full, "/.gitignore", "");
        if (!gi) rc = DSV4_INGEST_ENOMEM;
        else {
            int r = push_ignore(w, gi, rel);
            if (r < 0) rc = r;
            pushed = r == 1;
            free(gi);
        }
    }
    for (size_t i = 0; rc >= 0 && i < n; i++) rc = visit(w, rel, &v[i], depth);
    if (pushed) ign_free(w->stack[--w->n_stack]);
    free_dents(v, n);
    free(full);
    return rc < 0 ? rc : 0;
}

int tree_process(ing_ctx *c, const char *root)
{
    walker w = {0};
    w.c = c;
    w.root = root;
    w.display = c->source;
    if (strcmp(w.display, ".") == 0) w.display = "";
    else if (strncmp(w.display, "./", 2) == 0 && w.display[2]) w.display += 2;
    int rc = 0;
    if (!(w.root_real = realpath(root, NULL))) return ctx_skip(c, NULL, DSV4_SKIP_UNREADABLE, "cannot resolve: %s", strerror(errno));
    struct stat st;
    if (stat(root, &st) == 0) w.anc[w.n_anc++] = (dev_ino){st.st_dev, st.st_ino};
    if (!c->s || !ctx_opts(c)->no_gitignore) {
        char *ex = join3(root, "/.git/info/exclude", "");
        if (!ex) rc = DSV4_INGEST_ENOMEM;
        else {
            int r = push_ignore(&w, ex, "");
            if (r < 0) rc = r;
            free(ex);
        }
    }
    if (rc == 0) rc = walk_dir(&w, "", 0);
    while (w.n_stack) ign_free(w.stack[--w.n_stack]);
    free(w.root_real);
    return rc;
}
