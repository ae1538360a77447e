/* ingest/ private declarations shared by its .c files (not the tokenizer's).
 * The parsers all meet in one small context (ing_ctx): where the bytes came
 * from (source + archive chain), the per-input guard accounts, and the
 * session that reports events. Each parser reads a bounded buffer or a
 * libarchive stream, fills a document builder (docb) and hands it to
 * doc_emit(); everything that is not a document goes through ctx_skip() or
 * ctx_warn(), so counting and reporting live in one place (session.c). */
#ifndef DSV4_INGEST_INTERNAL_H
#define DSV4_INGEST_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/dsv4_ingest.h"

/* ---- growable byte buffer (text.c) ---- */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

int buf_reserve(buf *b, size_t more); /* 0 or DSV4_INGEST_ENOMEM */
int buf_put(buf *b, const void *p, size_t n);
int buf_putc(buf *b, char c);
int buf_puts(buf *b, const char *s);
void buf_free(buf *b);

/* ---- text (text.c) ---- */

/* Appends p[0..n) to out as valid UTF-8: invalid sequences become U+FFFD
 * (counted in *n_replaced), CRLF and lone CR become LF, NUL is dropped. */
int utf8_append_clean(buf *out, const char *p, size_t n, uint64_t *n_replaced);

/* Counts code points of valid UTF-8. */
uint64_t utf8_count_chars(const char *p, size_t n);

/* 1 when p[0..n) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
int utf8_valid(const char *p, size_t n);

/* Decodes a plain-text file: UTF-8 (BOM stripped), UTF-16LE/BE with BOM,
 * else strict UTF-8 or Windows-1252 (via iconv). Output is clean as with
 * utf8_append_clean. *is_binary is set (and nothing decoded) when the bytes
 * have NUL bytes or mostly control characters. */
int text_decode(const uint8_t *p, size_t n, buf *out, const char **encoding,
                uint64_t *n_replaced, int *is_binary);

/* Converts a name (archive entry, file name) to clean UTF-8, malloc'ed, with
 * control characters as '?'. NULL on out of memory. */
char *name_to_utf8(const char *raw);

/* ---- documents and the context (session.c) ---- */

typedef struct docb {
    dsv4_doc_format format;
    const char *encoding;
    buf text;
    dsv4_page_span *pages;
    size_t n_pages, cap_pages;
    uint64_t n_pages_no_text, n_replaced;
    char *title, *author;
    char **warnings;
    size_t n_warnings;
} docb;

void docb_free(docb *d);
int docb_warn(docb *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int docb_add_page(docb *d, uint64_t offset, uint64_t n_bytes);
int docb_set_meta(docb *d, const char *title, const char *author);

/* Guard accounts of one input (a top-level file given or found in a tree). */
typedef struct acct {
    uint64_t produced;  /* uncompressed bytes read through libarchive */
    uint64_t entries;
    uint64_t raw_in;    /* bytes of the input as stored (for the ratio) */
    void *top;          /* the outermost struct archive, for its position */
    int stopped;        /* a guard tripped: the input stops */
} guard_acct;

#define ING_MAX_CHAIN 20

typedef struct ing_ctx {
    dsv4_ingest *s;
    const char *source;
    const char *chain[ING_MAX_CHAIN];
    size_t chain_len;
    int depth;          /* archive nesting of the bytes being read */
    guard_acct *acct;
    int direct;         /* the input path itself (not a file inside a tree) */
} ing_ctx;

const dsv4_ingest_options *ctx_opts(const ing_ctx *c);

/* Reports that the current object (plus `extra`, an entry name, when not
 * NULL) gave no document. Returns 0 or ECANCELED. */
int ctx_skip(ing_ctx *c, const char *extra, dsv4_skip_reason r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int ctx_warn(ing_ctx *c, dsv4_skip_reason r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Finishes d (counts, id) and delivers it. Returns 0 or ECANCELED. */
int doc_emit(ing_ctx *c, docb *d);

/* Dispatches a whole object in memory by content (or by hint) to its parser.
 * name is its file or entry name (for extension hints). 0 or negative. */
int process_buffer(ing_ctx *c, const uint8_t *p, size_t n, const char *name,
                   dsv4_doc_format hint);

/* Plain text (text.c's decoding) to a document or a BINARY skip. */
int text_process(ing_ctx *c, const uint8_t *p, size_t n);

/* Reads a whole file of at most limit bytes into b: 0, 1 when larger, or
 * negative (EIO, ENOMEM). */
int read_path_bounded(const char *path, uint64_t limit, buf *b);

/* Reads a file found on disk (given, or inside a tree). */
int process_file(ing_ctx *c, const char *path, uint64_t size);

/* Sniffs the first bytes: the parser to use. *compressed is set for a bare
 * compression stream (gz, bz2, xz, zstd, lz4). */
dsv4_doc_format sniff_format(const uint8_t *p, size_t n, const char *name, int *compressed);

int include_path(const ing_ctx *c, const char *rel); /* globs: 1 keep, 0 drop */
int glob_match_opt(const char *pattern, const char *path); /* base-name rule */

/* ---- parsers ---- */

int pdf_process(ing_ctx *c, const uint8_t *p, size_t n);                      /* pdf.c */
int html_process(ing_ctx *c, const uint8_t *p, size_t n);                     /* markup.c */
int xml_process(ing_ctx *c, const uint8_t *p, size_t n);
int docx_process(ing_ctx *c, const uint8_t *p, size_t n);
int odt_process(ing_ctx *c, const uint8_t *p, size_t n);
int epub_process(ing_ctx *c, const uint8_t *p, size_t n);
/* Which container a zip is by its entry names (DOCX/ODT/EPUB), else ARCHIVE. */
dsv4_doc_format zip_container_kind(ing_ctx *c, const uint8_t *p, size_t n);
dsv4_doc_format zip_container_kind_file(ing_ctx *c, const char *path);

int archive_process_memory(ing_ctx *c, const uint8_t *p, size_t n, int compressed,
                           const char *name);                                 /* archive.c */
int archive_process_file(ing_ctx *c, const char *path, int compressed);

/* One entry of a container read into memory. */
typedef struct zentry {
    char *name;
    buf data;
} zentry;
/* Reads every entry of the zip p[0..n) for which want(name) is 1 into *out
 * (guards apply). Returns 0, 1 when the container is unreadable (a SKIPPED
 * event was sent), or negative. */
int zip_collect(ing_ctx *c, const uint8_t *p, size_t n, int (*want)(const char *name),
                zentry **out, size_t *n_out);
void zentries_free(zentry *e, size_t n);

int tree_process(ing_ctx *c, const char *root);                               /* tree.c */

/* gitignore rules (tree.c), exposed for the fuzz target. */
typedef struct ign_list ign_list;
ign_list *ign_parse(const char *text, size_t n, const char *base);
/* 1 ignored, 0 not mentioned, -1 re-included by a negation */
int ign_match(const ign_list *l, const char *rel, int is_dir);
void ign_free(ign_list *l);

#endif
