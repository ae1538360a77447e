/* Archives through libarchive, read as streams and never extracted.
 *
 * Formats and filters are enabled one by one rather than with *_all(): the
 * "all" sets include mtree (whose entries may name files on this machine to
 * read) and filters that run external programs, and neither belongs near
 * untrusted input. Entry names are provenance only: nothing is written to
 * disk, so absolute paths, `..` and links are harmless names here; link
 * entries are reported and skipped.
 *
 * Guards are checked on every block read, against an account shared by all
 * nesting levels of one input (ingest_internal.h: acct). The compression
 * ratio compares all uncompressed bytes produced so far with the bytes taken
 * from the outermost stream, so a bomb nested in a bomb is seen as one. Any
 * guard stops the whole input (the rule): what was delivered before
 * stays delivered, and a WARNING event names the file and the limit.
 * Nested archives and leaf documents are read into memory (at most
 * max_entry_bytes each) and opened from there, which also gives the zip
 * reader the seekable central directory it prefers. */
#include <archive.h>
#include <archive_entry.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ingest/ingest_internal.h"

#define RATIO_FLOOR (4ull << 20) /* the ratio is meaningless on tiny inputs */

static struct archive *new_reader(int compressed, int zip_only)
{
    struct archive *a = archive_read_new();
    if (!a) return NULL;
    archive_read_support_format_zip(a);
    if (!zip_only) {
        archive_read_support_filter_gzip(a);
        archive_read_support_filter_bzip2(a);
        archive_read_support_filter_xz(a);
        archive_read_support_filter_lzma(a);
        archive_read_support_filter_zstd(a);
        archive_read_support_filter_lz4(a);
        archive_read_support_format_tar(a);
        archive_read_support_format_7zip(a);
        archive_read_support_format_ar(a);
        archive_read_support_format_cpio(a);
        if (compressed) archive_read_support_format_raw(a);
    }
    return a;
}

static const char *errstr(struct archive *a)
{
    const char *s = archive_error_string(a);
    return s ? s : "unknown error";
}

static int guard(ing_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int guard(ing_ctx *c, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->acct->stopped = 1;
    return ctx_warn(c, DSV4_SKIP_GUARD, "input stopped: %s", msg);
}

static uint64_t raw_position(const guard_acct *A)
{
    if (!A->top) return 0;
    la_int64_t n = archive_filter_bytes((struct archive *)A->top, -1);
    return n > 0 ? (uint64_t)n : 0;
}

/* 1: one more level may be opened; else the guard's report (0 or negative). */
static int depth_ok(ing_ctx *c);

/* Reads the current entry into b. 0: complete; 1: a guard stopped the input;
 * 2: the entry is unreadable (reported); negative: fatal. */
static int read_entry(ing_ctx *c, struct archive *a, const char *ename, buf *b)
{
    const dsv4_ingest_options *o = ctx_opts(c);
    guard_acct *A = c->acct;
    int n_warn = 0;
    for (;;) {
        if (buf_reserve(b, 65536)) return DSV4_INGEST_ENOMEM;
        la_ssize_t r = archive_read_data(a, b->p + b->n, 65536);
        if (r == 0) break;
        if (r < 0) {
            /* a warning is retried, but never forever */
            if (r == ARCHIVE_WARN && ++n_warn < 64) continue;
            const char *m = errstr(a);
            dsv4_skip_reason why = strcasestr(m, "encrypt") || strcasestr(m, "passphrase")
                                       ? DSV4_SKIP_ENCRYPTED : DSV4_SKIP_CORRUPT;
            int rc = ctx_skip(c, ename, why, "cannot read entry: %s", m);
            return rc < 0 ? rc : 2;
        }
        b->n += (size_t)r;
        b->p[b->n] = 0;
        A->produced += (uint64_t)r;
        if (b->n > o->max_entry_bytes) {
            int rc = guard(c, "entry %s has more than %llu bytes, over max_entry_bytes", ename,
                           (unsigned long long)o->max_entry_bytes);
            return rc < 0 ? rc : 1;
        }
        if (A->produced > o->max_input_bytes) {
            int rc = guard(c, "more than %llu uncompressed bytes (at entry %s), over max_input_bytes",
                           (unsigned long long)o->max_input_bytes, ename);
            return rc < 0 ? rc : 1;
        }
        if (A->produced > RATIO_FLOOR) {
            uint64_t raw = raw_position(A);
            if (raw == 0) raw = 1;
            if (A->produced / raw > o->max_ratio) {
                int rc = guard(c, "%llu bytes unpacked from %llu (at entry %s), compression ratio over "
                               "max_ratio (%llu)", (unsigned long long)A->produced,
                               (unsigned long long)raw, ename, (unsigned long long)o->max_ratio);
                return rc < 0 ? rc : 1;
            }
        }
    }
    return 0;
}

static char *entry_name(struct archive_entry *e)
{
    const char *u = archive_entry_pathname_utf8(e);
    if (u) return name_to_utf8(u);
    const char *r = archive_entry_pathname(e);
    return name_to_utf8(r && *r ? r : "(unnamed)");
}

/* A bare compressed stream's single entry is named after its container:
 * "notes.txt.gz" holds "notes.txt". */
static char *raw_name(const char *outer)
{
    static const char *exts[] = {".gz", ".bz2", ".xz", ".lzma", ".zst", ".zstd", ".lz4"};
    const char *base = outer ? strrchr(outer, '/') : NULL;
    base = base ? base + 1 : outer;
    if (!base || !*base) return strdup("data");
    size_t n = strlen(base);
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        size_t e = strlen(exts[i]);
        if (n > e && strcasecmp(base + n - e, exts[i]) == 0) {
            char *s = strndup(base, n - e);
            char *u = s ? name_to_utf8(s) : NULL;
            free(s);
            return u;
        }
    }
    return strdup("data");
}

static int walk(ing_ctx *c, struct archive *a, const char *outer_name, int *not_archive)
{
    const dsv4_ingest_options *o = ctx_opts(c);
    int rc = 0;
    uint64_t n_here = 0;
    while (rc >= 0 && !c->acct->stopped) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) {
            /* (a stream of zero bytes is an empty tar to libarchive) */
            if (n_here == 0) rc = ctx_skip(c, NULL, DSV4_SKIP_EMPTY, "archive with no entries");
            break;
        }
        n_here++;
        /* raw "format" with no decompression filter: the magic was a false
         * positive (libarchive's bidders check more than our sniffing) */
        if (n_here == 1 && archive_format(a) == ARCHIVE_FORMAT_RAW && archive_filter_count(a) <= 1) {
            *not_archive = 1;
            break;
        }
        if (r < ARCHIVE_WARN) {
            const char *m = errstr(a);
            dsv4_skip_reason why = strcasestr(m, "encrypt") ? DSV4_SKIP_ENCRYPTED : DSV4_SKIP_CORRUPT;
            rc = ctx_skip(c, NULL, why, "archive unreadable after %llu entries: %s",
                          (unsigned long long)c->acct->entries, m);
            break;
        }
        if (++c->acct->entries > o->max_entries) {
            rc = guard(c, "more than %llu entries, over max_entries", (unsigned long long)o->max_entries);
            break;
        }
        char *name = archive_format(a) == ARCHIVE_FORMAT_RAW ? raw_name(outer_name) : entry_name(e);
        if (!name) return DSV4_INGEST_ENOMEM;
        mode_t type = archive_entry_filetype(e);
        if (archive_entry_hardlink(e) || type == AE_IFLNK) {
            rc = ctx_skip(c, name, DSV4_SKIP_LINK, "link entry (links are never followed)");
        } else if (type == AE_IFDIR) {
            /* nothing: directories are implied by their entries' names */
        } else if (type != AE_IFREG && type != 0) {
            rc = ctx_skip(c, name, DSV4_SKIP_SPECIAL, "special entry (device, fifo or socket)");
        } else if (archive_entry_is_encrypted(e)) {
            rc = ctx_skip(c, name, DSV4_SKIP_ENCRYPTED, "encrypted entry skipped (no passwords are tried)");
        } else if (!include_path(c, name)) {
            rc = ctx_skip(c, name, DSV4_SKIP_IGNORED, "excluded by the include/exclude globs");
        } else if (archive_entry_size_is_set(e) && archive_entry_size(e) > 0 &&
                   (uint64_t)archive_entry_size(e) > o->max_entry_bytes) {
            rc = guard(c, "entry %s declares %lld bytes, over max_entry_bytes (%llu)", name,
                       (long long)archive_entry_size(e), (unsigned long long)o->max_entry_bytes);
        } else {
            buf b = {0};
            int rr = read_entry(c, a, name, &b);
            if (rr < 0) rc = rr;
            if (rr == 0) {
                const char *base = strrchr(name, '/');
                c->chain[c->chain_len++] = name;
                rc = process_buffer(c, (const uint8_t *)(b.p ? b.p : ""), b.n, base ? base + 1 : name,
                                    DSV4_FORMAT_AUTO);
                c->chain_len--;
            }
            buf_free(&b);
        }
        free(name);
    }
    return rc;
}

/* Some magic numbers are short ("BZh", two bytes of binary cpio) and can
 * start a text file: bytes that libarchive cannot open and that decode as
 * text are read as text. p is NULL for a file on disk (read here, bounded). */
static int not_an_archive(ing_ctx *c, const uint8_t *p, size_t n, const char *path, const char *why)
{
    buf b = {0};
    int rc = 0;
    if (!p && path && read_path_bounded(path, ctx_opts(c)->max_entry_bytes, &b) == 0) {
        p = (const uint8_t *)(b.p ? b.p : "");
        n = b.n;
    }
    int looks_text = 0;
    if (p && n) {
        buf t = {0};
        const char *enc;
        uint64_t bad = 0;
        int bin = 1;
        if (text_decode(p, n < 65536 ? n : 65536, &t, &enc, &bad, &bin) == 0 && !bin &&
            strcmp(enc, "utf-8") == 0 && bad == 0)
            looks_text = 1;
        buf_free(&t);
    }
    if (looks_text) rc = text_process(c, p, n);
    else rc = ctx_skip(c, NULL, strcasestr(why, "encrypt") ? DSV4_SKIP_ENCRYPTED : DSV4_SKIP_CORRUPT,
                       "not a readable archive: %s", why);
    buf_free(&b);
    return rc;
}

static int open_and_walk(ing_ctx *c, struct archive *a, int r, const char *name, const uint8_t *p, size_t n)
{
    int rc = 0;
    if (r != ARCHIVE_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", errstr(a));
        archive_read_free(a);
        return not_an_archive(c, p, n, p ? NULL : name, why);
    } else {
        int own_top = c->acct->top == NULL, not_archive = 0;
        if (own_top) c->acct->top = a;
        c->depth++;
        rc = walk(c, a, name, &not_archive);
        c->depth--;
        if (own_top) c->acct->top = NULL;
        if (not_archive && rc == 0) {
            archive_read_free(a);
            return not_an_archive(c, p, n, p ? NULL : name, "no compression format recognised");
        }
    }
    archive_read_free(a);
    return rc;
}

static int depth_ok(ing_ctx *c)
{
    const dsv4_ingest_options *o = ctx_opts(c);
    if (c->depth + 1 <= o->max_depth && c->chain_len + 2 < ING_MAX_CHAIN) return 1;
    /* 0 when the guard was reported, negative when the callback cancelled */
    return guard(c, "an archive nested at depth %d, over max_depth (%d)", c->depth + 1, o->max_depth);
}

int archive_process_memory(ing_ctx *c, const uint8_t *p, size_t n, int compressed, const char *name)
{
    int ok = depth_ok(c);
    if (ok <= 0) return ok;
    struct archive *a = new_reader(compressed, 0);
    if (!a) return DSV4_INGEST_ENOMEM;
    return open_and_walk(c, a, archive_read_open_memory(a, p, n), name, p, n);
}

int archive_process_file(ing_ctx *c, const char *path, int compressed)
{
    int ok = depth_ok(c);
    if (ok <= 0) return ok;
    struct archive *a = new_reader(compressed, 0);
    if (!a) return DSV4_INGEST_ENOMEM;
    return open_and_walk(c, a, archive_read_open_filename(a, path, 65536), path, NULL, 0);
}

/* ---- containers (DOCX, ODT, EPUB) ---- */

static dsv4_doc_format kind_from_names(struct archive *a)
{
    int docx = 0, odt = 0, epub = 0;
    struct archive_entry *e;
    for (int i = 0; i < 256 && archive_read_next_header(a, &e) == ARCHIVE_OK; i++) {
        const char *n = archive_entry_pathname(e);
        if (!n) continue;
        if (strcmp(n, "word/document.xml") == 0) docx = 1;
        else if (strcmp(n, "content.xml") == 0) odt = 1;
        else if (strcmp(n, "META-INF/container.xml") == 0) epub = 1;
    }
    archive_read_free(a);
    return docx ? DSV4_FORMAT_DOCX : epub ? DSV4_FORMAT_EPUB : odt ? DSV4_FORMAT_ODT : DSV4_FORMAT_ARCHIVE;
}

dsv4_doc_format zip_container_kind(ing_ctx *c, const uint8_t *p, size_t n)
{
    (void)c;
    struct archive *a = new_reader(0, 1);
    if (!a) return DSV4_FORMAT_ARCHIVE;
    if (archive_read_open_memory(a, p, n) != ARCHIVE_OK) {
        archive_read_free(a);
        return DSV4_FORMAT_ARCHIVE;
    }
    return kind_from_names(a);
}

dsv4_doc_format zip_container_kind_file(ing_ctx *c, const char *path)
{
    (void)c;
    struct archive *a = new_reader(0, 1);
    if (!a) return DSV4_FORMAT_ARCHIVE;
    if (archive_read_open_filename(a, path, 65536) != ARCHIVE_OK) {
        archive_read_free(a);
        return DSV4_FORMAT_ARCHIVE;
    }
    return kind_from_names(a);
}

void zentries_free(zentry *e, size_t n)
{
    if (!e) return;
    for (size_t i = 0; i < n; i++) {
        free(e[i].name);
        buf_free(&e[i].data);
    }
    free(e);
}

int zip_collect(ing_ctx *c, const uint8_t *p, size_t n, int (*want)(const char *name),
                zentry **out, size_t *n_out)
{
    const dsv4_ingest_options *o = ctx_opts(c);
    *out = NULL;
    *n_out = 0;
    struct archive *a = new_reader(0, 1);
    if (!a) return DSV4_INGEST_ENOMEM;
    zentry *v = NULL;
    size_t nv = 0;
    uint64_t total = 0;
    int rc = 0;
    int own_top = c->acct->top == NULL;
    if (archive_read_open_memory(a, p, n) != ARCHIVE_OK) {
        rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "not a readable zip container: %s", errstr(a));
        if (rc >= 0) rc = 1;
        goto done;
    }
    if (own_top) c->acct->top = a;
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN) {
            rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "corrupt zip container: %s", errstr(a));
            if (rc >= 0) rc = 1;
            goto done;
        }
        if (++c->acct->entries > o->max_entries) {
            rc = guard(c, "more than %llu entries, over max_entries", (unsigned long long)o->max_entries);
            if (rc >= 0) rc = 1;
            goto done;
        }
        const char *raw = archive_entry_pathname(e);
        if (!raw || archive_entry_filetype(e) != AE_IFREG || !want(raw)) continue;
        if (archive_entry_is_encrypted(e)) {
            rc = ctx_skip(c, NULL, DSV4_SKIP_ENCRYPTED, "encrypted container entry %s", raw);
            if (rc >= 0) rc = 1;
            goto done;
        }
        zentry *nvp = realloc(v, (nv + 1) * sizeof *v);
        if (!nvp) { rc = DSV4_INGEST_ENOMEM; goto done; }
        v = nvp;
        memset(&v[nv], 0, sizeof v[nv]);
        if (!(v[nv].name = strdup(raw))) { rc = DSV4_INGEST_ENOMEM; goto done; }
        nv++;
        int rr = read_entry(c, a, raw, &v[nv - 1].data);
        if (rr) {
            rc = rr < 0 ? rr : 1;
            goto done;
        }
        /* the parts are held together until parsed: bound their sum too */
        total += v[nv - 1].data.n;
        if (total > o->max_entry_bytes) {
            rc = ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "container parts over max_entry_bytes (%llu) in all",
                          (unsigned long long)o->max_entry_bytes);
            if (rc >= 0) rc = 1;
            goto done;
        }
        if (buf_reserve(&v[nv - 1].data, 0)) { rc = DSV4_INGEST_ENOMEM; goto done; }
    }
done:
    if (own_top) c->acct->top = NULL;
    archive_read_free(a);
    if (rc) {
        zentries_free(v, nv);
        return rc;
    }
    *out = v;
    *n_out = nv;
    return 0;
}
