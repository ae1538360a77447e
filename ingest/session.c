/* The ingest session: options, the event stream, documents and their ids,
 * rendering for the model's context, and dispatch by content.
 *
 * Everything a parser finds ends here: doc_emit() turns a builder into the
 * public dsv4_doc (id, counts, standard warnings) and calls the user's
 * callback; ctx_skip()/ctx_warn() count and report what gave no document.
 * Keeping reporting in one file makes the counters and the CLI's exit status
 * agree by construction. Dispatch is by content (magic bytes), with file
 * extensions used only where content cannot tell (DOCX/ODT/EPUB are zips). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest/ingest_internal.h"

struct dsv4_ingest {
    dsv4_ingest_options o;
    char **inc, **exc;
    dsv4_ingest_stats st;
    dsv4_ingest_fn fn;
    void *user;
    int incomplete, canceled;
};

void dsv4_ingest_options_default(dsv4_ingest_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_input_bytes = 1ull << 30;
    o->max_entry_bytes = 256ull << 20;
    o->max_ratio = 200;
    o->max_entries = 100000;
    o->max_depth = 3;
    o->max_file_bytes = 256ull << 20;
}

const char *dsv4_doc_format_name(dsv4_doc_format f)
{
    static const char *names[] = {"auto", "text", "pdf", "html", "xml", "docx", "odt", "epub", "archive"};
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "unknown";
}

const char *dsv4_skip_reason_name(dsv4_skip_reason r)
{
    static const char *names[] = {"none", "binary", "ignored", "link", "special", "empty",
                                  "too_large", "encrypted", "corrupt", "guard", "unreadable"};
    return (unsigned)r < DSV4_SKIP_N ? names[r] : "unknown";
}

int dsv4_skip_reason_is_error(dsv4_skip_reason r)
{
    return r >= DSV4_SKIP_TOO_LARGE && r < DSV4_SKIP_N;
}

static void free_globs(char **g, size_t n)
{
    if (!g) return;
    for (size_t i = 0; i < n; i++) free(g[i]);
    free(g);
}

static int copy_globs(const char *const *src, size_t n, char ***dst, char *err, size_t errlen)
{
    *dst = NULL;
    if (!n) return 0;
    if (!src) {
        snprintf(err, errlen, "ingest: %zu globs given without an array", n);
        return DSV4_INGEST_EINVAL;
    }
    char **g = calloc(n, sizeof *g);
    if (!g) return DSV4_INGEST_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t len = src[i] ? strlen(src[i]) : 0;
        if (len == 0 || len > 1024) {
            snprintf(err, errlen, "ingest: glob %zu is %s", i + 1, len ? "longer than 1024 bytes" : "empty");
            free_globs(g, n);
            return DSV4_INGEST_EINVAL;
        }
        if (!(g[i] = strdup(src[i]))) {
            free_globs(g, n);
            return DSV4_INGEST_ENOMEM;
        }
    }
    *dst = g;
    return 0;
}

int dsv4_ingest_open(const dsv4_ingest_options *opt, dsv4_ingest **out, char *err, size_t errlen)
{
    *out = NULL;
    dsv4_ingest_options def;
    dsv4_ingest_options_default(&def);
    dsv4_ingest *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "ingest: out of memory");
        return DSV4_INGEST_ENOMEM;
    }
    s->o = opt ? *opt : def;
    if (s->o.max_depth < 0 || s->o.max_depth > ING_MAX_CHAIN - 2) {
        snprintf(err, errlen, "ingest: max_depth %d is outside 0..%d", s->o.max_depth, ING_MAX_CHAIN - 2);
        free(s);
        return DSV4_INGEST_EINVAL;
    }
    if (!s->o.max_input_bytes) s->o.max_input_bytes = def.max_input_bytes;
    if (!s->o.max_entry_bytes) s->o.max_entry_bytes = def.max_entry_bytes;
    if (!s->o.max_ratio) s->o.max_ratio = def.max_ratio;
    if (!s->o.max_entries) s->o.max_entries = def.max_entries;
    if (!s->o.max_depth) s->o.max_depth = def.max_depth;
    if (!s->o.max_file_bytes) s->o.max_file_bytes = def.max_file_bytes;
    int rc = copy_globs(s->o.include, s->o.n_include, &s->inc, err, errlen);
    if (!rc) rc = copy_globs(s->o.exclude, s->o.n_exclude, &s->exc, err, errlen);
    if (rc) {
        if (rc == DSV4_INGEST_ENOMEM) snprintf(err, errlen, "ingest: out of memory");
        dsv4_ingest_close(s);
        return rc;
    }
    s->o.include = (const char *const *)s->inc;
    s->o.exclude = (const char *const *)s->exc;
    *out = s;
    return 0;
}

void dsv4_ingest_close(dsv4_ingest *s)
{
    if (!s) return;
    free_globs(s->inc, s->o.n_include);
    free_globs(s->exc, s->o.n_exclude);
    free(s);
}

void dsv4_ingest_get_stats(const dsv4_ingest *s, dsv4_ingest_stats *out) { *out = s->st; }

const dsv4_ingest_options *ctx_opts(const ing_ctx *c) { return &c->s->o; }

/* ---- names ---- */

static int put_sanitized(buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (buf_putc(b, (ch < 0x20 || ch == 0x7F) ? '?' : (char)ch)) return DSV4_INGEST_ENOMEM;
    }
    return 0;
}

static char *display_of(const char *source, const char *const *chain, size_t n, const char *extra)
{
    buf b = {0};
    int rc = put_sanitized(&b, source);
    for (size_t i = 0; !rc && i < n; i++) {
        rc = buf_puts(&b, " :: ");
        if (!rc) rc = put_sanitized(&b, chain[i]);
    }
    if (!rc && extra) {
        rc = buf_puts(&b, " :: ");
        if (!rc) rc = put_sanitized(&b, extra);
    }
    if (rc) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

char *dsv4_doc_display_name(const dsv4_doc *d)
{
    return display_of(d->source, d->chain, d->chain_len, NULL);
}

/* ---- events ---- */

static int send(ing_ctx *c, dsv4_ingest_event *ev)
{
    dsv4_ingest *s = c->s;
    if (s->canceled) return DSV4_INGEST_ECANCELED;
    if (s->fn && s->fn(s->user, ev)) {
        s->canceled = 1;
        return DSV4_INGEST_ECANCELED;
    }
    return 0;
}

static int report(ing_ctx *c, dsv4_ingest_event_kind kind, const char *extra, dsv4_skip_reason r,
                  const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char *where = display_of(c->source, c->chain, c->chain_len, extra);
    dsv4_ingest *s = c->s;
    if (kind == DSV4_INGEST_SKIPPED) s->st.n_skipped[r]++;
    else s->st.n_warnings++;
    if (kind == DSV4_INGEST_WARNING && r == DSV4_SKIP_GUARD) s->st.n_skipped[r]++;
    if (dsv4_skip_reason_is_error(r)) s->incomplete = 1;
    /* The input itself (not something inside it) giving nothing is a failure
     * to read what the user named. */
    if (kind == DSV4_INGEST_SKIPPED && c->direct && c->chain_len == 0 && !extra) s->incomplete = 1;
    dsv4_ingest_event ev = {.kind = kind, .where = where ? where : c->source, .message = msg, .reason = r};
    int rc = send(c, &ev);
    free(where);
    return rc;
}

int ctx_skip(ing_ctx *c, const char *extra, dsv4_skip_reason r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = report(c, DSV4_INGEST_SKIPPED, extra, r, fmt, ap);
    va_end(ap);
    return rc;
}

int ctx_warn(ing_ctx *c, dsv4_skip_reason r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = report(c, DSV4_INGEST_WARNING, NULL, r, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- documents ---- */

void docb_free(docb *d)
{
    buf_free(&d->text);
    free(d->pages);
    free(d->title);
    free(d->author);
    for (size_t i = 0; i < d->n_warnings; i++) free(d->warnings[i]);
    free(d->warnings);
    memset(d, 0, sizeof *d);
}

int docb_warn(docb *d, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char **w = realloc(d->warnings, (d->n_warnings + 1) * sizeof *w);
    if (!w) return DSV4_INGEST_ENOMEM;
    d->warnings = w;
    if (!(w[d->n_warnings] = strdup(msg))) return DSV4_INGEST_ENOMEM;
    d->n_warnings++;
    return 0;
}

int docb_add_page(docb *d, uint64_t offset, uint64_t n_bytes)
{
    if (d->n_pages == d->cap_pages) {
        size_t cap = d->cap_pages ? d->cap_pages * 2 : 16;
        dsv4_page_span *p = realloc(d->pages, cap * sizeof *p);
        if (!p) return DSV4_INGEST_ENOMEM;
        d->pages = p;
        d->cap_pages = cap;
    }
    d->pages[d->n_pages++] = (dsv4_page_span){offset, n_bytes};
    return 0;
}

/* Metadata comes from the file, so it is cleaned like text and kept to one
 * line of reasonable length. */
static char *clean_meta(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s);
    if (n > 4096) n = 4096;
    buf b = {0};
    if (utf8_append_clean(&b, s, n, NULL)) {
        buf_free(&b);
        return NULL;
    }
    size_t i = 0, j = 0;
    while (i < b.n && (b.p[i] == ' ' || b.p[i] == '\n' || b.p[i] == '\t')) i++;
    for (; i < b.n; i++) {
        char ch = b.p[i];
        if ((unsigned char)ch < 0x20) ch = ' ';
        if (ch == ' ' && j > 0 && b.p[j - 1] == ' ') continue;
        b.p[j++] = ch;
    }
    while (j > 0 && b.p[j - 1] == ' ') j--;
    if (j == 0) {
        buf_free(&b);
        return NULL;
    }
    b.p[j] = 0;
    return b.p;
}

int docb_set_meta(docb *d, const char *title, const char *author)
{
    if (title && !d->title) d->title = clean_meta(title);
    if (author && !d->author) d->author = clean_meta(author);
    return 0;
}

static void doc_id(const char *source, const char *const *chain, size_t n, char id[17])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    memset(md, 0, sizeof md);
    if (m && EVP_DigestInit_ex(m, EVP_sha256(), NULL)) {
        EVP_DigestUpdate(m, source, strlen(source) + 1);
        for (size_t i = 0; i < n; i++) EVP_DigestUpdate(m, chain[i], strlen(chain[i]) + 1);
        EVP_DigestFinal_ex(m, md, &mdlen);
    }
    EVP_MD_CTX_free(m);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        id[2 * i] = hex[md[i] >> 4];
        id[2 * i + 1] = hex[md[i] & 15];
    }
    id[16] = 0;
}

int doc_emit(ing_ctx *c, docb *d)
{
    dsv4_ingest *s = c->s;
    if (buf_reserve(&d->text, 0)) return DSV4_INGEST_ENOMEM;
    if (d->n_replaced && docb_warn(d, "%llu invalid byte sequences replaced by U+FFFD",
                                   (unsigned long long)d->n_replaced))
        return DSV4_INGEST_ENOMEM;
    if (d->encoding && strcmp(d->encoding, "windows-1252") == 0 &&
        docb_warn(d, "not valid UTF-8: decoded as Windows-1252"))
        return DSV4_INGEST_ENOMEM;
    if (d->n_pages_no_text && docb_warn(d, "%llu of %zu pages have no text layer (no OCR is done)",
                                        (unsigned long long)d->n_pages_no_text, d->n_pages))
        return DSV4_INGEST_ENOMEM;
    dsv4_doc doc = {0};
    doc_id(c->source, c->chain, c->chain_len, doc.id);
    doc.source = c->source;
    doc.chain = c->chain;
    doc.chain_len = c->chain_len;
    doc.format = d->format;
    doc.encoding = d->encoding ? d->encoding : "utf-8";
    doc.title = d->title;
    doc.author = d->author;
    doc.text = d->text.p;
    doc.n_bytes = d->text.n;
    doc.n_chars = utf8_count_chars(d->text.p, d->text.n);
    doc.pages = d->pages;
    doc.n_pages = d->n_pages;
    doc.n_pages_no_text = d->n_pages_no_text;
    doc.n_replaced = d->n_replaced;
    doc.warnings = (const char *const *)d->warnings;
    doc.n_warnings = d->n_warnings;
    s->st.n_documents++;
    s->st.n_bytes_text += doc.n_bytes;
    s->st.n_pages += d->n_pages;
    s->st.n_pages_no_text += d->n_pages_no_text;
    s->st.n_replaced += d->n_replaced;
    if (d->encoding && strcmp(d->encoding, "windows-1252") == 0) s->st.n_fallback_1252++;
    dsv4_ingest_event ev = {.kind = DSV4_INGEST_DOCUMENT, .doc = &doc};
    return send(c, &ev);
}

/* ---- rendering ---- */

static int render_header(buf *b, const char *name, const char *suffix)
{
    if (buf_puts(b, "=== ") || buf_puts(b, name) || buf_puts(b, suffix) || buf_puts(b, " ===\n"))
        return DSV4_INGEST_ENOMEM;
    return 0;
}

static int render_body(buf *b, const char *p, size_t n)
{
    if (buf_put(b, p, n)) return DSV4_INGEST_ENOMEM;
    if (n && p[n - 1] != '\n' && buf_putc(b, '\n')) return DSV4_INGEST_ENOMEM;
    return 0;
}

int dsv4_doc_render(const dsv4_doc *d, char **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    char *name = dsv4_doc_display_name(d);
    if (!name) return DSV4_INGEST_ENOMEM;
    buf b = {0};
    int rc = buf_reserve(&b, d->n_bytes + 256);
    if (!rc && d->format == DSV4_FORMAT_PDF && d->pages) {
        int any = 0;
        for (size_t i = 0; !rc && i < d->n_pages; i++) {
            const dsv4_page_span *pg = &d->pages[i];
            if (pg->n_bytes == 0 || pg->offset > d->n_bytes || pg->n_bytes > d->n_bytes - pg->offset)
                continue;
            char suffix[48];
            snprintf(suffix, sizeof suffix, " (page %zu)", i + 1);
            rc = render_header(&b, name, suffix);
            if (!rc) rc = render_body(&b, d->text + pg->offset, pg->n_bytes);
            any = 1;
        }
        if (!rc && !any) rc = render_header(&b, name, " (no text)");
    } else if (!rc) {
        rc = render_header(&b, name, "");
        if (!rc) rc = render_body(&b, d->text, d->n_bytes);
    }
    if (!rc) rc = buf_putc(&b, '\n');
    free(name);
    if (rc) {
        buf_free(&b);
        return rc;
    }
    *out = b.p;
    *n = b.n;
    return 0;
}

/* ---- copies ---- */

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

dsv4_doc *dsv4_doc_dup(const dsv4_doc *d)
{
    dsv4_doc *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    *c = *d;
    c->source = c->title = c->author = c->text = NULL;
    c->chain = c->warnings = NULL;
    c->pages = NULL;
    c->chain_len = c->n_warnings = c->n_pages = 0;
    int ok = (c->source = strdup(d->source)) != NULL && (c->text = dupn(d->text, d->n_bytes)) != NULL;
    if (ok && d->title) ok = (c->title = strdup(d->title)) != NULL;
    if (ok && d->author) ok = (c->author = strdup(d->author)) != NULL;
    if (ok && d->chain_len) {
        char **ch = calloc(d->chain_len, sizeof *ch);
        ok = ch != NULL;
        c->chain = (const char *const *)ch;
        for (size_t i = 0; ok && i < d->chain_len; i++, c->chain_len++) ok = (ch[i] = strdup(d->chain[i])) != NULL;
    }
    if (ok && d->n_warnings) {
        char **w = calloc(d->n_warnings, sizeof *w);
        ok = w != NULL;
        c->warnings = (const char *const *)w;
        for (size_t i = 0; ok && i < d->n_warnings; i++, c->n_warnings++) ok = (w[i] = strdup(d->warnings[i])) != NULL;
    }
    if (ok && d->n_pages) {
        dsv4_page_span *p = malloc(d->n_pages * sizeof *p);
        ok = p != NULL;
        if (ok) {
            memcpy(p, d->pages, d->n_pages * sizeof *p);
            c->pages = p;
            c->n_pages = d->n_pages;
        }
    }
    if (!ok) {
        dsv4_doc_free(c);
        return NULL;
    }
    return c;
}

void dsv4_doc_free(dsv4_doc *d)
{
    if (!d) return;
    free((char *)d->source);
    free((char *)d->title);
    free((char *)d->author);
    free((char *)d->text);
    for (size_t i = 0; i < d->chain_len; i++) free((char *)d->chain[i]);
    free((void *)d->chain);
    for (size_t i = 0; i < d->n_warnings; i++) free((char *)d->warnings[i]);
    free((void *)d->warnings);
    free((void *)d->pages);
    free(d);
}

/* ---- globs ---- */

int glob_match_opt(const char *pattern, const char *path)
{
    if (!strchr(pattern, '/')) {
        const char *base = strrchr(path, '/');
        return dsv4_ingest_glob_match(pattern, base ? base + 1 : path);
    }
    if (pattern[0] == '/') pattern++;
    return dsv4_ingest_glob_match(pattern, path);
}

int include_path(const ing_ctx *c, const char *rel)
{
    const dsv4_ingest_options *o = &c->s->o;
    for (size_t i = 0; i < o->n_exclude; i++)
        if (glob_match_opt(o->exclude[i], rel)) return 0;
    if (!o->n_include) return 1;
    for (size_t i = 0; i < o->n_include; i++)
        if (glob_match_opt(o->include[i], rel)) return 1;
    return 0;
}

/* ---- dispatch ---- */

static int has_ext(const char *name, const char *ext)
{
    size_t n = name ? strlen(name) : 0, e = strlen(ext);
    return n > e && strcasecmp(name + n - e, ext) == 0;
}

static int ci_find(const uint8_t *p, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (strncasecmp((const char *)p + i, needle, k) == 0) return 1;
    return 0;
}

dsv4_doc_format sniff_format(const uint8_t *p, size_t n, const char *name, int *compressed)
{
    *compressed = 0;
    size_t head = n < 1024 ? n : 1024;
    for (size_t i = 0; i + 5 <= head; i++)
        if (memcmp(p + i, "%PDF-", 5) == 0) return DSV4_FORMAT_PDF;
    if (n >= 4 && p[0] == 'P' && p[1] == 'K' &&
        ((p[2] == 3 && p[3] == 4) || (p[2] == 5 && p[3] == 6) || (p[2] == 7 && p[3] == 8))) {
        if (has_ext(name, ".docx")) return DSV4_FORMAT_DOCX;
        if (has_ext(name, ".odt")) return DSV4_FORMAT_ODT;
        if (has_ext(name, ".epub")) return DSV4_FORMAT_EPUB;
        return DSV4_FORMAT_ARCHIVE;
    }
    if ((n >= 6 && memcmp(p, "7z\xBC\xAF\x27\x1C", 6) == 0) || (n >= 8 && memcmp(p, "!<arch>\n", 8) == 0) ||
        (n >= 6 && (memcmp(p, "070707", 6) == 0 || memcmp(p, "070701", 6) == 0 || memcmp(p, "070702", 6) == 0)) ||
        (n >= 2 && ((p[0] == 0xC7 && p[1] == 0x71) || (p[0] == 0x71 && p[1] == 0xC7))) ||
        (n >= 262 && memcmp(p + 257, "ustar", 5) == 0))
        return DSV4_FORMAT_ARCHIVE;
    if ((n >= 2 && p[0] == 0x1F && p[1] == 0x8B) ||
        (n >= 4 && p[0] == 'B' && p[1] == 'Z' && p[2] == 'h' && p[3] >= '1' && p[3] <= '9') ||
        (n >= 6 && memcmp(p, "\xFD" "7zXZ\0", 6) == 0) || (n >= 4 && memcmp(p, "\x28\xB5\x2F\xFD", 4) == 0) ||
        (n >= 4 && memcmp(p, "\x04\x22\x4D\x18", 4) == 0)) {
        *compressed = 1;
        return DSV4_FORMAT_ARCHIVE;
    }
    /* Markup: by name first, then by a look at the start. */
    if (has_ext(name, ".html") || has_ext(name, ".htm") || has_ext(name, ".xhtml")) return DSV4_FORMAT_HTML;
    size_t i = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) i = 3;
    while (i < head && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    if (i < head && p[i] == '<') {
        if (ci_find(p + i, head - i, "<!doctype html") || ci_find(p + i, head - i, "<html"))
            return DSV4_FORMAT_HTML;
        if (strncmp((const char *)p + i, "<?xml", head - i < 5 ? head - i : 5) == 0 && head - i >= 5)
            return DSV4_FORMAT_XML;
    }
    if (has_ext(name, ".xml") || has_ext(name, ".svg")) return DSV4_FORMAT_XML;
    return DSV4_FORMAT_TEXT;
}

int text_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    docb d = {0};
    int is_binary = 0;
    d.format = DSV4_FORMAT_TEXT;
    int rc = text_decode(p, n, &d.text, &d.encoding, &d.n_replaced, &is_binary);
    if (!rc) {
        if (is_binary) rc = ctx_skip(c, NULL, DSV4_SKIP_BINARY, "binary file (NUL bytes or control characters)");
        else rc = doc_emit(c, &d);
    }
    docb_free(&d);
    return rc;
}

int process_buffer(ing_ctx *c, const uint8_t *p, size_t n, const char *name, dsv4_doc_format hint)
{
    if (c->acct && c->acct->stopped) return 0;
    if (n == 0) return ctx_skip(c, NULL, DSV4_SKIP_EMPTY, "empty (0 bytes)");
    int compressed = 0;
    dsv4_doc_format f = sniff_format(p, n, name, &compressed);
    if (hint != DSV4_FORMAT_AUTO) f = hint;
    if (f == DSV4_FORMAT_ARCHIVE && n >= 2 && p[0] == 'P' && p[1] == 'K') f = zip_container_kind(c, p, n);
    if (c->s->o.keep_markup && hint == DSV4_FORMAT_AUTO && (f == DSV4_FORMAT_HTML || f == DSV4_FORMAT_XML))
        f = DSV4_FORMAT_TEXT;
    switch (f) {
    case DSV4_FORMAT_PDF: return pdf_process(c, p, n);
    case DSV4_FORMAT_HTML: return html_process(c, p, n);
    case DSV4_FORMAT_XML: return xml_process(c, p, n);
    case DSV4_FORMAT_DOCX: return docx_process(c, p, n);
    case DSV4_FORMAT_ODT: return odt_process(c, p, n);
    case DSV4_FORMAT_EPUB: return epub_process(c, p, n);
    case DSV4_FORMAT_ARCHIVE: return archive_process_memory(c, p, n, compressed, name);
    default: return text_process(c, p, n);
    }
}

/* Reads a whole file of at most `limit` bytes; 1 when it is larger. */
static int read_file_bounded(int fd, uint64_t limit, buf *b);

int read_path_bounded(const char *path, uint64_t limit, buf *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return DSV4_INGEST_EIO;
    int rc = read_file_bounded(fd, limit, b);
    close(fd);
    return rc;
}

static int read_file_bounded(int fd, uint64_t limit, buf *b)
{
    for (;;) {
        if (buf_reserve(b, 65536)) return DSV4_INGEST_ENOMEM;
        ssize_t r = read(fd, b->p + b->n, 65536);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return DSV4_INGEST_EIO;
        if (r == 0) break;
        b->n += (size_t)r;
        b->p[b->n] = 0;
        if (b->n > limit) return 1;
    }
    return 0;
}

int process_file(ing_ctx *c, const char *path, uint64_t size)
{
    const dsv4_ingest_options *o = ctx_opts(c);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return ctx_skip(c, NULL, DSV4_SKIP_UNREADABLE, "cannot open: %s", strerror(errno));
    uint8_t head[4096];
    ssize_t h = pread(fd, head, sizeof head, 0);
    if (h < 0) {
        int e = errno;
        close(fd);
        return ctx_skip(c, NULL, DSV4_SKIP_UNREADABLE, "cannot read: %s", strerror(e));
    }
    c->s->st.n_bytes_in += size;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int compressed = 0;
    dsv4_doc_format f = sniff_format(head, (size_t)h, base, &compressed);
    if (f == DSV4_FORMAT_ARCHIVE) {
        /* Archives stream from the file: the guards, not the file size, bound
         * what is read. Containers (DOCX...) need the whole zip in memory. */
        if (h >= 2 && head[0] == 'P' && head[1] == 'K') f = zip_container_kind_file(c, path);
        if (f == DSV4_FORMAT_ARCHIVE) {
            close(fd);
            return archive_process_file(c, path, compressed);
        }
    }
    if (size > o->max_entry_bytes) {
        close(fd);
        return ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "%llu bytes, over max_entry_bytes (%llu)",
                        (unsigned long long)size, (unsigned long long)o->max_entry_bytes);
    }
    buf b = {0};
    int rc = read_file_bounded(fd, o->max_entry_bytes, &b);
    close(fd);
    if (rc == 1) rc = ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "grew past max_entry_bytes (%llu) while read",
                               (unsigned long long)o->max_entry_bytes);
    else if (rc == DSV4_INGEST_EIO) rc = ctx_skip(c, NULL, DSV4_SKIP_UNREADABLE, "read error: %s", strerror(errno));
    else if (rc == 0)
        rc = process_buffer(c, (const uint8_t *)(b.p ? b.p : ""), b.n, base, f);
    buf_free(&b);
    return rc;
}

static int finish(dsv4_ingest *s, int rc)
{
    if (s->canceled) return DSV4_INGEST_ECANCELED;
    if (rc < 0) return rc;
    return s->incomplete ? DSV4_INGEST_INCOMPLETE : DSV4_INGEST_OK;
}

int dsv4_ingest_path(dsv4_ingest *s, const char *path, dsv4_ingest_fn fn, void *user)
{
    if (!s || !path) return DSV4_INGEST_EINVAL;
    s->fn = fn;
    s->user = user;
    s->incomplete = s->canceled = 0;
    s->st.n_inputs++;
    /* The source keeps the path as given, minus trailing slashes. */
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    char *source = dupn(path, n);
    if (!source) return DSV4_INGEST_ENOMEM;
    ing_ctx c = {.s = s, .source = source, .direct = 1};
    guard_acct a = {0};
    c.acct = &a;
    struct stat st;
    int rc;
    if (stat(path, &st) != 0) {
        int e = errno;
        rc = ctx_skip(&c, NULL, DSV4_SKIP_UNREADABLE, "cannot open: %s", strerror(e));
        if (!rc) rc = DSV4_INGEST_EIO;
    } else if (S_ISDIR(st.st_mode)) {
        c.direct = 0;
        rc = tree_process(&c, path);
    } else if (S_ISREG(st.st_mode)) {
        rc = process_file(&c, path, (uint64_t)st.st_size);
    } else {
        rc = ctx_skip(&c, NULL, DSV4_SKIP_SPECIAL, "not a regular file or directory");
    }
    free(source);
    return finish(s, rc);
}

int dsv4_ingest_memory(dsv4_ingest *s, const char *name, const void *data, size_t n,
                       dsv4_doc_format hint, dsv4_ingest_fn fn, void *user)
{
    if (!s || !name || (!data && n)) return DSV4_INGEST_EINVAL;
    s->fn = fn;
    s->user = user;
    s->incomplete = s->canceled = 0;
    s->st.n_inputs++;
    s->st.n_bytes_in += n;
    ing_ctx c = {.s = s, .source = name, .direct = 1};
    guard_acct a = {0};
    c.acct = &a;
    const char *base = strrchr(name, '/');
    int rc = process_buffer(&c, data ? data : "", n, base ? base + 1 : name, hint);
    return finish(s, rc);
}
