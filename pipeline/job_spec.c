/* job.yaml -> dsv4_job_spec, and the spec's canonical JSON form.
 *
 * libyaml's document loader gives a node tree with the line and column of
 * every node; the walker below knows the expected shape and checks each
 * mapping against its list of known keys, so a typo ("max_token") is an
 * error at its own line instead of a silently ignored setting. It does not
 * stop at the first problem: every independent mistake in the file is
 * reported at once (up to MAX_ERRORS), each as FILE:LINE:COLUMN: message. */
#include <ctype.h>
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

#include <yaml.h>

#include "pipeline/job_spec.h"

#define MAX_ERRORS 20
#define MAX_QUERIES 100000
#define MAX_INPUTS 10000

static const char *const thinking_names[] = {"none", "high", "max", NULL};
static const char *const order_names[] = {"path", "input", NULL};
static const char *const overflow_names[] = {"error", "truncate", NULL};
static const char *const kind_names[] = {"path", "repo", NULL};

const char *dsv4_spec_thinking_name(int t) { return t >= 0 && t <= 2 ? thinking_names[t] : "?"; }
const char *dsv4_spec_order_name(int o) { return o >= 0 && o <= 1 ? order_names[o] : "?"; }
const char *dsv4_spec_overflow_name(int o) { return o >= 0 && o <= 1 ? overflow_names[o] : "?"; }
const char *dsv4_spec_input_kind_name(int k) { return k >= 0 && k <= 1 ? kind_names[k] : "?"; }

static const dsv4_spec_limits default_limits = {
    .max_total_bytes = (int64_t)1 << 30,
    .max_entry_bytes = (int64_t)256 << 20,
    .max_ratio = 200,
    .max_entries = 100000,
    .max_depth = 3,
    .max_file_bytes = (int64_t)64 << 20,
};

typedef struct spec_error {
    unsigned long line, column; /* 1-based */
    int seq;                    /* order found, to keep ties stable */
    char msg[400];
} spec_error;

typedef struct parser {
    yaml_document_t *doc;
    const char *file;
    const char *base_dir;
    unsigned flags;
    spec_error errors[MAX_ERRORS];
    int n_errors; /* all found; the first MAX_ERRORS are kept */
    int oom;
} parser;

static void add_error(parser *p, const yaml_mark_t *m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void add_error(parser *p, const yaml_mark_t *m, const char *fmt, ...)
{
    if (p->n_errors < MAX_ERRORS) {
        spec_error *e = &p->errors[p->n_errors];
        e->line = (unsigned long)m->line + 1;
        e->column = (unsigned long)m->column + 1;
        e->seq = p->n_errors;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    p->n_errors++;
}

static int by_position(const void *a, const void *b)
{
    const spec_error *x = a, *y = b;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    if (x->column != y->column) return x->column < y->column ? -1 : 1;
    return x->seq - y->seq;
}

/* The messages in file order, one per line, into err. */
static void format_errors(parser *p, char *err, size_t errlen)
{
    if (!err || !errlen) return;
    int kept = p->n_errors < MAX_ERRORS ? p->n_errors : MAX_ERRORS;
    qsort(p->errors, (size_t)kept, sizeof p->errors[0], by_position);
    size_t used = 0;
    err[0] = 0;
    for (int i = 0; i < kept && used + 1 < errlen; i++) {
        int k = snprintf(err + used, errlen - used, "%s%s:%lu:%lu: %s", i ? "\n" : "", p->file, p->errors[i].line,
                         p->errors[i].column, p->errors[i].msg);
        if (k < 0) break;
        used += (size_t)k < errlen - used ? (size_t)k : errlen - used - 1;
    }
    if (p->n_errors > MAX_ERRORS && used + 1 < errlen)
        snprintf(err + used, errlen - used, "\n%s: %d more errors", p->file, p->n_errors - MAX_ERRORS);
}

static char *xstrdup(parser *p, const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d) p->oom = 1;
    return d;
}

static yaml_node_t *node_at(parser *p, int index) { return yaml_document_get_node(p->doc, index); }

static const char *scalar_text(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* A plain ~, null or empty scalar: the key is present with no value. */
static int is_null(const yaml_node_t *n)
{
    if (!n || n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *s = scalar_text(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* How a node reads in a message: 'text', a list, a mapping. */
static const char *describe(const yaml_node_t *n, char *buf, size_t len)
{
    if (!n) return "nothing";
    if (n->type == YAML_SEQUENCE_NODE) return "a list";
    if (n->type == YAML_MAPPING_NODE) return "a mapping";
    if (is_null(n)) return "empty";
    const char *s = scalar_text(n);
    size_t sl = strlen(s);
    if (sl > 40) snprintf(buf, len, "'%.37s...'", s);
    else snprintf(buf, len, "'%s'", s);
    return buf;
}

static int parse_int(const char *s, int64_t *out)
{
    char clean[64];
    size_t j = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '_' && i > 0 && isdigit((unsigned char)s[i - 1]) && isdigit((unsigned char)s[i + 1])) continue;
        if (j + 1 >= sizeof clean) return -1;
        clean[j++] = s[i];
    }
    clean[j] = 0;
    if (!j) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(clean, &end, 10);
    if (errno || *end || end == clean || isspace((unsigned char)clean[0])) return -1;
    *out = v;
    return 0;
}

/* Checks that n is a scalar (an error naming key otherwise). */
static const char *want_scalar(parser *p, const yaml_node_t *n, const char *key, const char *what)
{
    if (n->type == YAML_SCALAR_NODE) return scalar_text(n);
    char b[64];
    add_error(p, &n->start_mark, "%s must be %s, not %s", key, what, describe(n, b, sizeof b));
    return NULL;
}

static void get_int(parser *p, const yaml_node_t *n, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    const char *s = want_scalar(p, n, key, "an integer");
    if (!s) return;
    int64_t v;
    char b[64];
    if (parse_int(s, &v)) {
        add_error(p, &n->start_mark, "%s must be an integer, not %s", key, describe(n, b, sizeof b));
        return;
    }
    if (v < lo || v > hi) {
        add_error(p, &n->start_mark, "%s must be between %lld and %lld, not %lld", key, (long long)lo, (long long)hi,
                  (long long)v);
        return;
    }
    *out = v;
}

static void get_int32(parser *p, const yaml_node_t *n, const char *key, int lo, int hi, int *out)
{
    int64_t v = *out;
    get_int(p, n, key, lo, hi, &v);
    *out = (int)v;
}

static void get_double(parser *p, const yaml_node_t *n, const char *key, double lo, double hi, int lo_open,
                       double *out)
{
    const char *s = want_scalar(p, n, key, "a number");
    if (!s) return;
    char *end, b[64];
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || isspace((unsigned char)s[0]) || !isfinite(v)) {
        add_error(p, &n->start_mark, "%s must be a number, not %s", key, describe(n, b, sizeof b));
        return;
    }
    if (v > hi || v < lo || (lo_open && v <= lo)) {
        add_error(p, &n->start_mark, "%s must be %s %g and at most %g, not %s", key, lo_open ? "above" : "at least",
                  lo, hi, s);
        return;
    }
    *out = v;
}

static void get_bool(parser *p, const yaml_node_t *n, const char *key, int *out)
{
    const char *s = want_scalar(p, n, key, "true or false");
    if (!s) return;
    if (!strcmp(s, "true")) *out = 1;
    else if (!strcmp(s, "false")) *out = 0;
    else {
        char b[64];
        add_error(p, &n->start_mark, "%s must be true or false, not %s", key, describe(n, b, sizeof b));
    }
}

static void get_enum(parser *p, const yaml_node_t *n, const char *key, const char *const *names, int *out)
{
    const char *s = want_scalar(p, n, key, "one word");
    if (!s) return;
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return;
        }
    char list[128] = "", b[64];
    for (int i = 0; names[i]; i++) {
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", i == 0 ? "" : names[i + 1] ? ", " : " or ", names[i]);
    }
    add_error(p, &n->start_mark, "%s must be %s, not %s", key, list, describe(n, b, sizeof b));
}

/* A byte size: an integer, or a number with a unit (KB, MB, GB, TB powers of
 * 1000; KiB, MiB, GiB, TiB and K, M, G, T powers of 1024). */
static void get_size(parser *p, const yaml_node_t *n, const char *key, int64_t *out)
{
    const char *s = want_scalar(p, n, key, "a size");
    if (!s) return;
    char *end, b[64];
    errno = 0;
    double v = strtod(s, &end);
    int ok = !errno && end != s && !isspace((unsigned char)s[0]) && isfinite(v) && v >= 0;
    double mult = 1;
    if (ok) {
        while (*end == ' ') end++;
        static const struct {
            const char *u;
            double m;
        } units[] = {{"", 1},      {"B", 1},         {"KB", 1e3},     {"MB", 1e6},      {"GB", 1e9},
                     {"TB", 1e12}, {"K", 1024.},     {"M", 1048576.}, {"G", 1073741824.}, {"T", 1099511627776.},
                     {"KiB", 1024.}, {"MiB", 1048576.}, {"GiB", 1073741824.}, {"TiB", 1099511627776.}};
        ok = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
            if (!strcmp(end, units[i].u)) {
                mult = units[i].m;
                ok = 1;
            }
    }
    if (!ok || v * mult > 9.0e18) {
        add_error(p, &n->start_mark, "%s must be a size such as 500MB or 2GiB, not %s", key, describe(n, b, sizeof b));
        return;
    }
    *out = (int64_t)(v * mult);
}

/* A non-empty string (any scalar; numbers are taken as text). */
static void get_str(parser *p, const yaml_node_t *n, const char *key, char **out)
{
    const char *s = want_scalar(p, n, key, "text");
    if (!s) return;
    if (is_null(n)) {
        add_error(p, &n->start_mark, "%s must not be empty", key);
        return;
    }
    free(*out);
    *out = xstrdup(p, s);
}

static void get_str_list(parser *p, const yaml_node_t *n, const char *key, char ***out, size_t *count)
{
    /* a duplicate key (already an error) replaces the first list: free it */
    for (size_t i = 0; *out && i < *count; i++) free((*out)[i]);
    free(*out);
    *out = NULL;
    *count = 0;
    if (n->type == YAML_SCALAR_NODE && !is_null(n)) { /* one pattern without the brackets */
        *out = calloc(1, sizeof **out);
        if (!*out) { p->oom = 1; return; }
        (*out)[0] = xstrdup(p, scalar_text(n));
        *count = 1;
        return;
    }
    if (n->type != YAML_SEQUENCE_NODE) {
        char b[64];
        add_error(p, &n->start_mark, "%s must be a list of patterns, not %s", key, describe(n, b, sizeof b));
        return;
    }
    size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    *out = calloc(cnt ? cnt : 1, sizeof **out);
    if (!*out) { p->oom = 1; return; }
    for (size_t i = 0; i < cnt; i++) {
        yaml_node_t *item = node_at(p, n->data.sequence.items.start[i]);
        if (!item) continue; /* not in a document libyaml built */
        if (item->type != YAML_SCALAR_NODE || is_null(item)) {
            char b[64];
            add_error(p, &item->start_mark, "each %s entry must be a pattern, not %s", key, describe(item, b, sizeof b));
            continue;
        }
        (*out)[(*count)++] = xstrdup(p, scalar_text(item));
    }
}

/* Walks a mapping: checks it is one, that no key repeats, and that every
 * key is in `known` (space-separated). Returns the number of pairs or -1. */
static int check_mapping(parser *p, const yaml_node_t *n, const char *what, const char *known)
{
    if (n->type != YAML_MAPPING_NODE) {
        char b[64];
        add_error(p, &n->start_mark, "%s must be a mapping, not %s", what, describe(n, b, sizeof b));
        return -1;
    }
    int count = (int)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    for (int i = 0; i < count; i++) {
        yaml_node_t *k = node_at(p, n->data.mapping.pairs.start[i].key);
        const char *ks = scalar_text(k);
        if (!ks) {
            add_error(p, &k->start_mark, "keys of %s must be words", what);
            continue;
        }
        for (int j = 0; j < i; j++) {
            const char *prev = scalar_text(node_at(p, n->data.mapping.pairs.start[j].key));
            if (prev && !strcmp(prev, ks)) {
                add_error(p, &k->start_mark, "duplicate key '%s' in %s", ks, what);
                break;
            }
        }
        /* whole-word search in the known list */
        size_t kl = strlen(ks);
        const char *f = known;
        int found = 0;
        while (kl && (f = strstr(f, ks))) {
            if ((f == known || f[-1] == ' ') && (f[kl] == ' ' || f[kl] == 0)) { found = 1; break; }
            f += kl;
        }
        if (!found) add_error(p, &k->start_mark, "unknown key '%s' in %s (known: %s)", ks, what, known);
    }
    return count;
}

#define FOR_PAIRS(p, n, kname, v)                                                                      \
    for (yaml_node_pair_t *pair_ = (n)->data.mapping.pairs.start; pair_ < (n)->data.mapping.pairs.top; pair_++) \
        for (const char *kname = scalar_text(node_at(p, pair_->key)); kname; kname = NULL)            \
            for (yaml_node_t *v = node_at(p, pair_->value); v; v = NULL)

/* ~ and relative paths -> absolute, and lexically tidied (no ., .., //). */
static char *resolve_path(parser *p, const char *in)
{
    const char *home = getenv("HOME");
    char *joined = NULL;
    int ok;
    if ((in[0] == '~' && (in[1] == '/' || !in[1])) && home) ok = asprintf(&joined, "%s%s", home, in + 1);
    else if (in[0] == '/') ok = asprintf(&joined, "%s", in);
    else ok = asprintf(&joined, "%s/%s", p->base_dir, in);
    if (ok < 0) { p->oom = 1; return NULL; }
    /* tidy in place: components stack */
    char *out = malloc(strlen(joined) + 2);
    if (!out) { p->oom = 1; free(joined); return NULL; }
    size_t o = 0;
    char *save = NULL;
    for (char *c = strtok_r(joined, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, ".")) continue;
        if (!strcmp(c, "..")) {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
            continue;
        }
        out[o++] = '/';
        size_t cl = strlen(c);
        memcpy(out + o, c, cl);
        o += cl;
    }
    if (o == 0) out[o++] = '/';
    out[o] = 0;
    free(joined);
    return out;
}

static int has_glob(const char *s) { return strpbrk(s, "*?[") != NULL; }

static void parse_limits(parser *p, const yaml_node_t *n, const char *what, dsv4_spec_limits *l)
{
    if (check_mapping(p, n, what,
                      "max_total_bytes max_entry_bytes max_ratio max_entries max_depth max_file_bytes") < 0)
        return;
    FOR_PAIRS(p, n, k, v)
    {
        if (!strcmp(k, "max_total_bytes")) get_size(p, v, k, &l->max_total_bytes);
        else if (!strcmp(k, "max_entry_bytes")) get_size(p, v, k, &l->max_entry_bytes);
        else if (!strcmp(k, "max_file_bytes")) get_size(p, v, k, &l->max_file_bytes);
        else if (!strcmp(k, "max_ratio")) get_double(p, v, k, 1, 1e9, 0, &l->max_ratio);
        else if (!strcmp(k, "max_entries")) get_int(p, v, k, 1, INT64_MAX, &l->max_entries);
        else if (!strcmp(k, "max_depth")) get_int32(p, v, k, 0, 16, &l->max_depth);
    }
}

static void parse_input(parser *p, const yaml_node_t *n, dsv4_spec_input *in, const yaml_node_t **limits_node)
{
    const yaml_node_t *where = NULL;
    char *given = NULL;
    if (n->type == YAML_SCALAR_NODE && !is_null(n)) { /* "- some/path" is short for "- path: some/path" */
        in->kind = DSV4_INPUT_PATH;
        given = xstrdup(p, scalar_text(n));
        where = n;
    } else {
        if (check_mapping(p, n, "an input", "path repo include exclude limits") < 0) return;
        int n_src = 0;
        FOR_PAIRS(p, n, k, v)
        {
            if (!strcmp(k, "path") || !strcmp(k, "repo")) {
                if (++n_src > 1) {
                    add_error(p, &node_at(p, pair_->key)->start_mark, "an input has one of path or repo, not both");
                    continue;
                }
                in->kind = !strcmp(k, "repo") ? DSV4_INPUT_REPO : DSV4_INPUT_PATH;
                get_str(p, v, k, &given);
                where = v;
            } else if (!strcmp(k, "include")) get_str_list(p, v, k, &in->include, &in->n_include);
            else if (!strcmp(k, "exclude")) get_str_list(p, v, k, &in->exclude, &in->n_exclude);
            else if (!strcmp(k, "limits")) *limits_node = v;
        }
        if (n_src == 0) add_error(p, &n->start_mark, "an input needs a path or a repo");
    }
    if (!given) return;
    in->path = resolve_path(p, given);
    in->is_glob = in->kind == DSV4_INPUT_PATH && has_glob(given);
    if (in->kind == DSV4_INPUT_REPO && has_glob(given))
        add_error(p, &where->start_mark, "repo must be a directory, not a pattern ('%s'); use include", given);
    else if (in->path && (p->flags & DSV4_SPEC_CHECK_PATHS) && !in->is_glob) {
        struct stat st;
        if (stat(in->path, &st) != 0)
            add_error(p, &where->start_mark, "input '%s' does not exist (%s)", given, in->path);
        else if (in->kind == DSV4_INPUT_REPO && !S_ISDIR(st.st_mode))
            add_error(p, &where->start_mark, "repo '%s' is not a directory", given);
    }
    free(given);
}

static int valid_name(const char *s, const char *extra, size_t max)
{
    size_t l = strlen(s);
    if (!l || l > max || !isalnum((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < l; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i])) return 0;
    return 1;
}

/* Output templates know {name}, {date} and {id}. */
static void get_template(parser *p, const yaml_node_t *n, const char *key, char **out)
{
    char *t = NULL;
    get_str(p, n, key, &t);
    if (!t) return;
    for (const char *c = t; (c = strchr(c, '{')); c++) {
        const char *e = strchr(c, '}');
        size_t l = e ? (size_t)(e - c + 1) : strlen(c);
        if (!e || !((l == 6 && !strncmp(c, "{name}", 6)) || (l == 6 && !strncmp(c, "{date}", 6)) ||
                    (l == 4 && !strncmp(c, "{id}", 4)))) {
            add_error(p, &n->start_mark, "unknown placeholder '%.*s' in %s (known: {name}, {date}, {id})", (int)l, c,
                      key);
            free(t);
            return;
        }
    }
    free(*out); /* a duplicate key (already an error) must not leak the first */
    *out = resolve_path(p, t);
    free(t);
}

static void parse_root(parser *p, const yaml_node_t *root, dsv4_job_spec *s)
{
    if (check_mapping(p, root, "the job",
                      "name model priority max_attempts inputs context system thinking queries generation output "
                      "cache limits") < 0)
        return;
    const yaml_node_t *inputs = NULL, *queries = NULL, *limits = NULL, *name = NULL;
    /* Scalars and sections that others depend on first: limits (inputs
     * inherit them), thinking and generation (queries inherit them). */
    FOR_PAIRS(p, root, k, v)
    {
        if (!strcmp(k, "limits")) limits = v;
    }
    if (limits) parse_limits(p, limits, "limits", &s->limits);
    FOR_PAIRS(p, root, k, v)
    {
        if (!strcmp(k, "name")) {
            get_str(p, v, k, &s->name);
            name = v;
        } else if (!strcmp(k, "model")) {
            if (is_null(v)) continue;
            char *m = NULL;
            get_str(p, v, k, &m);
            if (!m) continue;
            free(s->model); /* a duplicate key (already an error) must not leak the first */
            s->model = resolve_path(p, m);
            struct stat st;
            if (s->model && (p->flags & DSV4_SPEC_CHECK_PATHS) && (stat(s->model, &st) != 0 || !S_ISDIR(st.st_mode)))
                add_error(p, &v->start_mark, "model directory '%s' does not exist (%s)", m, s->model);
            free(m);
        } else if (!strcmp(k, "priority")) get_int32(p, v, k, -1000000, 1000000, &s->priority);
        else if (!strcmp(k, "max_attempts")) get_int32(p, v, k, 1, 100, &s->max_attempts);
        else if (!strcmp(k, "inputs")) inputs = v;
        else if (!strcmp(k, "queries")) queries = v;
        else if (!strcmp(k, "system")) {
            if (!is_null(v)) get_str(p, v, k, &s->system);
        } else if (!strcmp(k, "thinking")) get_enum(p, v, k, thinking_names, &s->thinking);
        else if (!strcmp(k, "context")) {
            if (check_mapping(p, v, "context", "max_tokens order on_overflow") < 0) continue;
            FOR_PAIRS(p, v, ck, cv)
            {
                if (!strcmp(ck, "max_tokens")) get_int(p, cv, ck, 1, (int64_t)1 << 24, &s->context.max_tokens);
                else if (!strcmp(ck, "order")) get_enum(p, cv, ck, order_names, &s->context.order);
                else if (!strcmp(ck, "on_overflow")) get_enum(p, cv, ck, overflow_names, &s->context.on_overflow);
            }
        } else if (!strcmp(k, "generation")) {
            if (check_mapping(p, v, "generation", "max_new_tokens temperature top_p seed") < 0) continue;
            FOR_PAIRS(p, v, gk, gv)
            {
                if (!strcmp(gk, "max_new_tokens")) get_int(p, gv, gk, 1, (int64_t)1 << 20, &s->generation.max_new_tokens);
                else if (!strcmp(gk, "temperature")) get_double(p, gv, gk, 0, 2, 0, &s->generation.temperature);
                else if (!strcmp(gk, "top_p")) get_double(p, gv, gk, 0, 1, 1, &s->generation.top_p);
                else if (!strcmp(gk, "seed")) get_int(p, gv, gk, 0, INT64_MAX, &s->generation.seed);
            }
        } else if (!strcmp(k, "output")) {
            if (check_mapping(p, v, "output", "jsonl markdown") < 0) continue;
            FOR_PAIRS(p, v, ok, ov)
            {
                if (is_null(ov)) continue;
                if (!strcmp(ok, "jsonl")) get_template(p, ov, "output.jsonl", &s->output.jsonl);
                else if (!strcmp(ok, "markdown")) get_template(p, ov, "output.markdown", &s->output.markdown);
            }
        } else if (!strcmp(k, "cache")) {
            if (check_mapping(p, v, "cache", "enabled max_size span_tokens") < 0) continue;
            FOR_PAIRS(p, v, ck, cv)
            {
                if (!strcmp(ck, "enabled")) get_bool(p, cv, ck, &s->cache.enabled);
                else if (!strcmp(ck, "max_size")) get_size(p, cv, ck, &s->cache.max_size);
                else if (!strcmp(ck, "span_tokens")) {
                    int64_t span = s->cache.span_tokens;
                    get_int(p, cv, ck, 128, (int64_t)1 << 20, &span);
                    if (span % 128) add_error(p, &cv->start_mark, "span_tokens must be a multiple of 128, not %lld",
                                              (long long)span);
                    else s->cache.span_tokens = span;
                }
            }
        }
    }

    if (name && s->name && !valid_name(s->name, "._-", 64))
        add_error(p, &name->start_mark,
                  "name '%s' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", s->name);

    if (!inputs) {
        add_error(p, &root->start_mark, "missing key 'inputs' (the documents the queries are asked about)");
    } else if (inputs->type != YAML_SEQUENCE_NODE) {
        char b[64];
        add_error(p, &inputs->start_mark, "inputs must be a list, not %s", describe(inputs, b, sizeof b));
    } else {
        size_t cnt = (size_t)(inputs->data.sequence.items.top - inputs->data.sequence.items.start);
        if (cnt == 0) add_error(p, &inputs->start_mark, "inputs must list at least one input");
        else if (cnt > MAX_INPUTS) add_error(p, &inputs->start_mark, "at most %d inputs", MAX_INPUTS);
        else if (!(s->inputs = calloc(cnt, sizeof *s->inputs))) p->oom = 1;
        for (size_t i = 0; s->inputs && i < cnt; i++) {
            dsv4_spec_input *in = &s->inputs[s->n_inputs++];
            in->limits = s->limits;
            const yaml_node_t *lim = NULL;
            parse_input(p, node_at(p, inputs->data.sequence.items.start[i]), in, &lim);
            if (lim) parse_limits(p, lim, "an input's limits", &in->limits);
        }
    }

    if (!queries) {
        add_error(p, &root->start_mark, "missing key 'queries' (the questions to ask)");
    } else if (queries->type != YAML_SEQUENCE_NODE) {
        char b[64];
        add_error(p, &queries->start_mark, "queries must be a list, not %s", describe(queries, b, sizeof b));
    } else {
        size_t cnt = (size_t)(queries->data.sequence.items.top - queries->data.sequence.items.start);
        if (cnt == 0) add_error(p, &queries->start_mark, "queries must list at least one query");
        else if (cnt > MAX_QUERIES) add_error(p, &queries->start_mark, "at most %d queries", MAX_QUERIES);
        else if (!(s->queries = calloc(cnt, sizeof *s->queries))) p->oom = 1;
        const yaml_node_t **id_nodes = s->queries ? calloc(cnt, sizeof *id_nodes) : NULL;
        if (s->queries && !id_nodes) p->oom = 1;
        for (size_t i = 0; id_nodes && i < cnt; i++) {
            yaml_node_t *qn = node_at(p, queries->data.sequence.items.start[i]);
            dsv4_spec_query *q = &s->queries[s->n_queries++];
            q->thinking = s->thinking;
            q->max_new_tokens = s->generation.max_new_tokens;
            if (check_mapping(p, qn, "a query", "id prompt thinking max_new_tokens") < 0) continue;
            const yaml_node_t *prompt = NULL;
            FOR_PAIRS(p, qn, k, v)
            {
                if (!strcmp(k, "id")) {
                    get_str(p, v, k, &q->id);
                    if (!q->id) continue;
                    if (!valid_name(q->id, "._:-", 128)) {
                        add_error(p, &v->start_mark,
                                  "query id '%s' must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a "
                                  "letter or digit",
                                  q->id);
                        continue;
                    }
                    id_nodes[i] = v;
                    for (size_t j = 0; j < i; j++)
                        if (id_nodes[j] && s->queries[j].id && !strcmp(s->queries[j].id, q->id)) {
                            add_error(p, &v->start_mark, "duplicate query id '%s' (first at line %lu)", q->id,
                                      (unsigned long)id_nodes[j]->start_mark.line + 1);
                            break;
                        }
                } else if (!strcmp(k, "prompt")) {
                    get_str(p, v, k, &q->prompt);
                    prompt = v;
                } else if (!strcmp(k, "thinking")) get_enum(p, v, k, thinking_names, &q->thinking);
                else if (!strcmp(k, "max_new_tokens")) get_int(p, v, k, 1, (int64_t)1 << 20, &q->max_new_tokens);
            }
            if (!q->id) {
                int has_id = 0;
                FOR_PAIRS(p, qn, k, v) { (void)v; if (!strcmp(k, "id")) has_id = 1; }
                if (!has_id) add_error(p, &qn->start_mark, "a query needs an id");
            }
            if (!prompt) add_error(p, &qn->start_mark, "a query needs a prompt");
        }
        free(id_nodes);
    }
}

static void set_defaults(dsv4_job_spec *s)
{
    s->max_attempts = 3;
    s->context.max_tokens = 1000000;
    s->context.order = DSV4_ORDER_PATH;
    s->context.on_overflow = DSV4_OVERFLOW_ERROR;
    s->thinking = DSV4_THINK_NONE;
    s->generation.max_new_tokens = 1024;
    s->generation.temperature = 0;
    s->generation.top_p = 1.0;
    s->generation.seed = 1;
    s->cache.enabled = 1;
    s->cache.max_size = (int64_t)50 << 30;
    s->cache.span_tokens = 4096;
    s->limits = default_limits;
}

/* The default name: the file's base name without .yaml/.yml. */
static char *name_from_file(const char *file)
{
    const char *b = strrchr(file, '/');
    b = b ? b + 1 : file;
    size_t l = strlen(b);
    if (l > 5 && !strcmp(b + l - 5, ".yaml")) l -= 5;
    else if (l > 4 && !strcmp(b + l - 4, ".yml")) l -= 4;
    return strndup(b, l);
}

int dsv4_spec_parse(const char *text, size_t len, const char *file, const char *base_dir, unsigned flags,
                    dsv4_job_spec **out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = 0;
    *out = NULL;
    char cwd[PATH_MAX];
    if (!base_dir) base_dir = getcwd(cwd, sizeof cwd) ? cwd : "/";
    if (!file) file = "<job>";
    parser p = {.file = file, .base_dir = base_dir, .flags = flags};
    dsv4_job_spec *s = calloc(1, sizeof *s);
    if (!s) return DSV4_SPEC_ENOMEM;
    set_defaults(s);
    if (!(s->source = strndup(text, len))) { dsv4_spec_free(s); return DSV4_SPEC_ENOMEM; }

    yaml_parser_t yp;
    yaml_document_t doc;
    int have_doc = 0, rc = 0;
    if (!yaml_parser_initialize(&yp)) { dsv4_spec_free(s); return DSV4_SPEC_ENOMEM; }
    yaml_parser_set_input_string(&yp, (const unsigned char *)text, len);
    if (!yaml_parser_load(&yp, &doc)) {
        yaml_mark_t m = yp.problem_mark;
        if (yp.error == YAML_SCANNER_ERROR || yp.error == YAML_PARSER_ERROR || yp.error == YAML_READER_ERROR) {
            if (yp.error == YAML_READER_ERROR) m.line = 0, m.column = 0;
            /* `output: { jsonl: out/{name}.jsonl }` is the likeliest way to
             * get here: braces end a flow mapping unless the text is quoted. */
            const char *line = text;
            for (size_t l = 0; l < m.line && line; l++) line = memchr(line, '\n', len - (size_t)(line - text)), line = line ? line + 1 : NULL;
            const char *eol = line ? memchr(line, '\n', len - (size_t)(line - text)) : NULL;
            size_t ll = line ? (eol ? (size_t)(eol - line) : len - (size_t)(line - text)) : 0;
            int braces = line && (memmem(line, ll, "{name}", 6) || memmem(line, ll, "{date}", 6) || memmem(line, ll, "{id}", 4));
            add_error(&p, &m, "YAML syntax: %s%s%s%s", yp.problem ? yp.problem : "error",
                      yp.context ? " " : "", yp.context ? yp.context : "",
                      braces ? " (quote a path holding {name}, {date} or {id} inside { }: \"out/{name}.jsonl\")" : "");
        } else {
            yaml_mark_t zero = {0, 0, 0};
            add_error(&p, &zero, "cannot parse YAML (out of memory)");
        }
        goto done;
    }
    have_doc = 1;
    p.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_mark_t first = {0, 0, 0};
    if (!root) {
        add_error(&p, &first, "the job file is empty");
        goto done;
    }
    {
        yaml_document_t extra;
        if (yaml_parser_load(&yp, &extra)) {
            yaml_node_t *r2 = yaml_document_get_root_node(&extra);
            if (r2) add_error(&p, &r2->start_mark, "a job file holds one YAML document, this is a second one");
            yaml_document_delete(&extra);
        }
    }
    parse_root(&p, root, s);
    if (!s->name && p.n_errors == 0) {
        char *n = name_from_file(file);
        if (n && valid_name(n, "._-", 64)) s->name = n;
        else {
            free(n);
            add_error(&p, &root->start_mark, "missing key 'name' (the file name does not make a valid one)");
        }
    }
done:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&yp);
    if (p.oom) rc = DSV4_SPEC_ENOMEM;
    else if (p.n_errors) rc = DSV4_SPEC_EINVAL, format_errors(&p, err, errlen);
    if (rc) {
        if (rc == DSV4_SPEC_ENOMEM && err && errlen) snprintf(err, errlen, "%s: out of memory", file);
        dsv4_spec_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int dsv4_spec_load(const char *path, unsigned flags, dsv4_job_spec **out, char *err, size_t errlen)
{
    *out = NULL;
    char *text = NULL, *abs = NULL, *dir = NULL;
    int rc = DSV4_SPEC_EIO;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size > DSV4_SPEC_MAX_FILE_BYTES) {
        snprintf(err, errlen, "%s: %lld bytes is more than a job file may hold (%d)", path, (long long)st.st_size,
                 DSV4_SPEC_MAX_FILE_BYTES);
        goto fail;
    }
    text = malloc((size_t)st.st_size + 1);
    if (!text) { rc = DSV4_SPEC_ENOMEM; goto fail; }
    size_t got = fread(text, 1, (size_t)st.st_size, f);
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        goto fail;
    }
    text[got] = 0;
    if (!(abs = realpath(path, NULL))) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    dir = strdup(abs);
    if (!dir) { rc = DSV4_SPEC_ENOMEM; goto fail; }
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    if ((rc = dsv4_spec_parse(text, got, path, dir, flags, out, err, errlen))) goto fail;
    (*out)->path = abs;
    abs = NULL;
fail:
    if (f) fclose(f);
    free(text);
    free(abs);
    free(dir);
    return rc;
}

static void free_input(dsv4_spec_input *in)
{
    free(in->path);
    for (size_t j = 0; j < in->n_include; j++) free(in->include[j]);
    for (size_t j = 0; j < in->n_exclude; j++) free(in->exclude[j]);
    free(in->include);
    free(in->exclude);
}

void dsv4_spec_free(dsv4_job_spec *s)
{
    if (!s) return;
    free(s->path);
    free(s->source);
    free(s->name);
    free(s->model);
    for (size_t i = 0; s->inputs && i < s->n_inputs; i++) free_input(&s->inputs[i]);
    free(s->inputs);
    free(s->system);
    for (size_t i = 0; s->queries && i < s->n_queries; i++) {
        free(s->queries[i].id);
        free(s->queries[i].prompt);
    }
    free(s->queries);
    free(s->output.jsonl);
    free(s->output.markdown);
    free(s);
}

/* ---- JSON ------------------------------------------------------------------ */

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *limits_json(const dsv4_spec_limits *l)
{
    return json_pack("{s:I, s:I, s:f, s:I, s:i, s:I}", "max_total_bytes", (json_int_t)l->max_total_bytes,
                     "max_entry_bytes", (json_int_t)l->max_entry_bytes, "max_ratio", l->max_ratio, "max_entries",
                     (json_int_t)l->max_entries, "max_depth", l->max_depth, "max_file_bytes",
                     (json_int_t)l->max_file_bytes);
}

static json_t *str_array(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_string(v[i]));
    return a;
}

json_t *dsv4_spec_input_options_json(const dsv4_spec_input *in)
{
    return json_pack("{s:o, s:o, s:o}", "include", str_array(in->include, in->n_include), "exclude",
                     str_array(in->exclude, in->n_exclude), "limits", limits_json(&in->limits));
}

json_t *dsv4_spec_query_options_json(const dsv4_spec_query *q)
{
    return json_pack("{s:s, s:I}", "thinking", dsv4_spec_thinking_name(q->thinking), "max_new_tokens",
                     (json_int_t)q->max_new_tokens);
}

json_t *dsv4_spec_to_json(const dsv4_job_spec *s)
{
    json_t *inputs = json_array(), *queries = json_array();
    for (size_t i = 0; inputs && i < s->n_inputs; i++) {
        const dsv4_spec_input *in = &s->inputs[i];
        json_t *o = json_pack("{s:s, s:s, s:b}", "kind", dsv4_spec_input_kind_name(in->kind), "path", in->path,
                              "glob", in->is_glob);
        json_t *opts = dsv4_spec_input_options_json(in);
        if (o && opts) json_object_update(o, opts);
        json_decref(opts);
        json_array_append_new(inputs, o);
    }
    for (size_t i = 0; queries && i < s->n_queries; i++) {
        json_t *o = json_pack("{s:s, s:s}", "id", s->queries[i].id, "prompt", s->queries[i].prompt);
        json_t *opts = dsv4_spec_query_options_json(&s->queries[i]);
        if (o && opts) json_object_update(o, opts);
        json_decref(opts);
        json_array_append_new(queries, o);
    }
    return json_pack("{s:i, s:o, s:o, s:o, s:i, s:i, s:o,"
                     " s:{s:I, s:s, s:s}, s:o, s:s, s:o,"
                     " s:{s:I, s:f, s:f, s:I}, s:{s:o, s:o}, s:{s:b, s:I, s:I}, s:o}",
                     "version", DSV4_SPEC_JSON_VERSION, "file", str_or_null(s->path), "name", str_or_null(s->name),
                     "model", str_or_null(s->model), "priority", s->priority, "max_attempts", s->max_attempts,
                     "inputs", inputs ? inputs : json_null(), "context", "max_tokens",
                     (json_int_t)s->context.max_tokens, "order", dsv4_spec_order_name(s->context.order),
                     "on_overflow", dsv4_spec_overflow_name(s->context.on_overflow), "system", str_or_null(s->system),
                     "thinking", dsv4_spec_thinking_name(s->thinking), "queries", queries ? queries : json_null(),
                     "generation", "max_new_tokens", (json_int_t)s->generation.max_new_tokens, "temperature",
                     s->generation.temperature, "top_p", s->generation.top_p, "seed", (json_int_t)s->generation.seed,
                     "output", "jsonl", str_or_null(s->output.jsonl), "markdown", str_or_null(s->output.markdown),
                     "cache", "enabled", s->cache.enabled, "max_size", (json_int_t)s->cache.max_size, "span_tokens",
                     (json_int_t)s->cache.span_tokens, "limits", limits_json(&s->limits));
}

static int name_index(const char *const *names, const char *s)
{
    for (int i = 0; s && names[i]; i++)
        if (!strcmp(names[i], s)) return i;
    return -1;
}

static int limits_from_json(json_t *o, dsv4_spec_limits *l)
{
    json_int_t a, b, d, e, f;
    double r;
    if (json_unpack(o, "{s:I, s:I, s:F, s:I, s:I, s:I}", "max_total_bytes", &a, "max_entry_bytes", &b, "max_ratio", &r,
                    "max_entries", &d, "max_depth", &e, "max_file_bytes", &f))
        return -1;
    *l = (dsv4_spec_limits){a, b, r, d, (int)e, f};
    return 0;
}

static char *opt_strdup(json_t *v)
{
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

int dsv4_spec_from_json(const char *json_text, dsv4_job_spec **out, char *err, size_t errlen)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_loads(json_text ? json_text : "", 0, &je);
    dsv4_job_spec *s = calloc(1, sizeof *s);
    int version = 0, prio = 0, att = 0, enabled = 0;
    json_t *file, *name, *model, *inputs, *queries, *system, *jsonl, *md, *limits;
    const char *order, *overflow, *thinking;
    json_int_t max_tokens, mnt, seed, max_size, span;
    double temp, top_p;
    if (!s) goto oom;
    if (!root) {
        snprintf(err, errlen, "spec JSON: %s at line %d", je.text, je.line);
        goto fail;
    }
    if (json_unpack_ex(root, &je, 0,
                       "{s:i, s:o, s:o, s:o, s:i, s:i, s:o, s:{s:I, s:s, s:s}, s:o, s:s, s:o,"
                       " s:{s:I, s:F, s:F, s:I}, s:{s:o, s:o}, s:{s:b, s:I, s:I}, s:o}",
                       "version", &version, "file", &file, "name", &name, "model", &model, "priority", &prio,
                       "max_attempts", &att, "inputs", &inputs, "context", "max_tokens", &max_tokens, "order", &order,
                       "on_overflow", &overflow, "system", &system, "thinking", &thinking, "queries", &queries,
                       "generation", "max_new_tokens", &mnt, "temperature", &temp, "top_p", &top_p, "seed", &seed,
                       "output", "jsonl", &jsonl, "markdown", &md, "cache", "enabled", &enabled, "max_size",
                       &max_size, "span_tokens", &span, "limits", &limits)) {
        snprintf(err, errlen, "spec JSON: %s", je.text);
        goto fail;
    }
    if (version != DSV4_SPEC_JSON_VERSION) {
        snprintf(err, errlen, "spec JSON: version %d, this program reads %d", version, DSV4_SPEC_JSON_VERSION);
        goto fail;
    }
    s->path = opt_strdup(file);
    s->name = opt_strdup(name);
    s->model = opt_strdup(model);
    s->system = opt_strdup(system);
    s->output.jsonl = opt_strdup(jsonl);
    s->output.markdown = opt_strdup(md);
    s->priority = prio;
    s->max_attempts = att;
    s->context.max_tokens = max_tokens;
    s->context.order = name_index(order_names, order);
    s->context.on_overflow = name_index(overflow_names, overflow);
    s->thinking = name_index(thinking_names, thinking);
    s->generation.max_new_tokens = mnt;
    s->generation.temperature = temp;
    s->generation.top_p = top_p;
    s->generation.seed = seed;
    s->cache.enabled = enabled;
    s->cache.max_size = max_size;
    s->cache.span_tokens = span;
    if (!s->name || s->context.order < 0 || s->context.on_overflow < 0 || s->thinking < 0 ||
        limits_from_json(limits, &s->limits) || !json_is_array(inputs) || !json_is_array(queries)) {
        snprintf(err, errlen, "spec JSON: a field has a wrong value");
        goto fail;
    }
    size_t n_in = json_array_size(inputs), n_q = json_array_size(queries);
    s->inputs = calloc(n_in ? n_in : 1, sizeof *s->inputs);
    s->queries = calloc(n_q ? n_q : 1, sizeof *s->queries);
    if (!s->inputs || !s->queries) goto oom;
    for (size_t i = 0; i < n_in; i++) {
        json_t *o = json_array_get(inputs, i), *inc, *exc, *lim;
        const char *kind, *path;
        int glob;
        dsv4_spec_input *in = &s->inputs[s->n_inputs++];
        if (json_unpack(o, "{s:s, s:s, s:b, s:o, s:o, s:o}", "kind", &kind, "path", &path, "glob", &glob, "include",
                        &inc, "exclude", &exc, "limits", &lim) ||
            (in->kind = name_index(kind_names, kind)) < 0 || limits_from_json(lim, &in->limits) ||
            !json_is_array(inc) || !json_is_array(exc)) {
            snprintf(err, errlen, "spec JSON: input %zu is malformed", i);
            goto fail;
        }
        in->path = strdup(path);
        in->is_glob = glob;
        in->include = calloc(json_array_size(inc) + 1, sizeof(char *));
        in->exclude = calloc(json_array_size(exc) + 1, sizeof(char *));
        if (!in->path || !in->include || !in->exclude) goto oom;
        for (size_t j = 0; j < json_array_size(inc); j++)
            if ((in->include[in->n_include] = opt_strdup(json_array_get(inc, j)))) in->n_include++;
        for (size_t j = 0; j < json_array_size(exc); j++)
            if ((in->exclude[in->n_exclude] = opt_strdup(json_array_get(exc, j)))) in->n_exclude++;
    }
    for (size_t i = 0; i < n_q; i++) {
        json_t *o = json_array_get(queries, i);
        const char *id, *prompt, *th;
        json_int_t q_mnt;
        dsv4_spec_query *q = &s->queries[s->n_queries++];
        if (json_unpack(o, "{s:s, s:s, s:s, s:I}", "id", &id, "prompt", &prompt, "thinking", &th, "max_new_tokens",
                        &q_mnt) ||
            (q->thinking = name_index(thinking_names, th)) < 0) {
            snprintf(err, errlen, "spec JSON: query %zu is malformed", i);
            goto fail;
        }
        q->id = strdup(id);
        q->prompt = strdup(prompt);
        q->max_new_tokens = q_mnt;
        if (!q->id || !q->prompt) goto oom;
    }
    json_decref(root);
    *out = s;
    return 0;
oom:
    snprintf(err, errlen, "spec JSON: out of memory");
    json_decref(root);
    dsv4_spec_free(s);
    return DSV4_SPEC_ENOMEM;
fail:
    json_decref(root);
    dsv4_spec_free(s);
    return DSV4_SPEC_EINVAL;
}

int dsv4_spec_output_path(const char *tmpl, const char *name, int64_t job_id, int64_t time_ms, char *out,
                          size_t outlen, char *err, size_t errlen)
{
    char date[16], id[32];
    time_t t = (time_t)(time_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%Y-%m-%d", &tm);
    snprintf(id, sizeof id, "%lld", (long long)job_id);
    size_t o = 0;
    for (const char *c = tmpl; *c;) {
        const char *sub = NULL;
        size_t skip = 1;
        if (!strncmp(c, "{name}", 6)) sub = name, skip = 6;
        else if (!strncmp(c, "{date}", 6)) sub = date, skip = 6;
        else if (!strncmp(c, "{id}", 4)) sub = id, skip = 4;
        size_t l = sub ? strlen(sub) : 1;
        if (o + l + 1 > outlen) {
            snprintf(err, errlen, "output path from '%s' is too long", tmpl);
            return DSV4_SPEC_EINVAL;
        }
        memcpy(out + o, sub ? sub : c, l);
        o += l;
        c += skip;
    }
    out[o] = 0;
    return 0;
}
