/* ingest/: every input a job names (PDFs, archives, directory trees and
 * repositories, markup, plain text) turned into UTF-8 documents that say
 * exactly where their text came from. The whole public contract.
 *
 * Shape (libarchive style, streaming): open a session with options, feed it
 * inputs one at a time, and receive documents one at a time through a
 * callback. A document is valid only during the callback, so memory stays
 * bounded by the largest single document (itself bounded by the guards), not
 * by the corpus; copy what you keep with dsv4_doc_dup().
 *
 *   dsv4_ingest_options o; dsv4_ingest_options_default(&o);
 *   dsv4_ingest *s; dsv4_ingest_open(&o, &s, err, sizeof err);
 *   int rc = dsv4_ingest_path(s, "contracts/", on_event, user);
 *   dsv4_ingest_close(s);
 *
 * Inputs are untrusted. A corrupt, encrypted or hostile file costs a warning
 * event, never the session: only a failing callback, an unreadable input path
 * or exhausted memory end a call with a negative code. Archives are read as
 * streams and never extracted: entry names are provenance only.
 *
 * Order is deterministic: the same inputs give the same events, documents
 * and bytes on every run (trees are walked in byte-wise sorted order,
 * archive entries in stored order, PDF pages in page order).
 *
 * The exact rendering of a document for the model's context (headers such as
 * `=== contracts/acme.pdf (page 3) ===`) is in dsv4_doc_render() below and
 * docs/ingest.md. */
#ifndef DSV4_INGEST_H
#define DSV4_INGEST_H

#include <stddef.h>
#include <stdint.h>

enum {
    DSV4_INGEST_OK = 0,
    DSV4_INGEST_INCOMPLETE = 1, /* the input was read, but something in it was
                                   skipped for an error (corrupt, encrypted,
                                   guard hit, unreadable), or the input named
                                   itself gave no document (binary, empty);
                                   see the events */
    DSV4_INGEST_EINVAL = -1,    /* bad argument or option */
    DSV4_INGEST_ENOMEM = -2,
    DSV4_INGEST_EIO = -3,       /* the input path itself cannot be read */
    DSV4_INGEST_ECANCELED = -6, /* the callback returned non-zero */
};

/* Guards and filters. Zero in a limit field means "use the default" (the
 * value dsv4_ingest_options_default writes), never "unlimited". */
typedef struct dsv4_ingest_options {
    uint64_t max_input_bytes;  /* uncompressed bytes read from one input, all
                                  nesting levels summed (default 1 GiB) */
    uint64_t max_entry_bytes;  /* bytes of one archive entry or one document
                                  file (default 256 MiB) */
    uint64_t max_ratio;        /* uncompressed bytes / compressed bytes read of
                                  one input; checked once the input has produced
                                  more than 4 MiB (default 200) */
    uint64_t max_entries;      /* archive entries per input, nested summed
                                  (default 100000) */
    int max_depth;             /* archive nesting: an archive is depth 1, an
                                  archive inside it depth 2 (default 3; at
                                  most 18) */
    uint64_t max_file_bytes;   /* files larger than this in a directory tree are
                                  skipped with a warning (default 256 MiB) */
    /* Globs matched against the path relative to a tree's root or an archive
     * entry's name: `*` and `?` stop at `/`, `**` crosses directories, `[a-z]`
     * classes; a pattern without `/` matches the base name at any depth. With
     * includes, a file must match one of them; excludes always win. */
    const char *const *include;
    size_t n_include;
    const char *const *exclude;
    size_t n_exclude;
    int no_gitignore;          /* 1: do not honour .gitignore / .git/info/exclude */
    int pdf_threads;           /* threads extracting one PDF's pages: 0 = one
                                  per online CPU (at most 8) for PDFs of 16 or
                                  more pages, 1 = the calling thread only */
    int keep_markup;           /* 1: HTML and XML files are documents of their
                                  source text (format "text"), as a code
                                  repository wants; DOCX/ODT/EPUB still become
                                  text */
} dsv4_ingest_options;

void dsv4_ingest_options_default(dsv4_ingest_options *o);

typedef enum dsv4_doc_format {
    DSV4_FORMAT_AUTO = 0, /* only as a hint to dsv4_ingest_memory: sniff */
    DSV4_FORMAT_TEXT,
    DSV4_FORMAT_PDF,
    DSV4_FORMAT_HTML,
    DSV4_FORMAT_XML,
    DSV4_FORMAT_DOCX,
    DSV4_FORMAT_ODT,
    DSV4_FORMAT_EPUB,
    DSV4_FORMAT_ARCHIVE,  /* only as a hint: never a document's format */
} dsv4_doc_format;

/* "text", "pdf", "html", "xml", "docx", "odt", "epub", "archive", "auto". */
const char *dsv4_doc_format_name(dsv4_doc_format f);

/* One PDF page's text: text[offset .. offset + n_bytes). Pages are in order
 * and tile the text (page i+1 starts where page i ends). */
typedef struct dsv4_page_span {
    uint64_t offset;
    uint64_t n_bytes;
} dsv4_page_span;

typedef struct dsv4_doc {
    char id[17];             /* 16 lower-case hex digits: the first 64 bits of
                                SHA-256 over source and chain (NUL-separated);
                                stable across runs and content changes */
    const char *source;      /* the file: the input path as given, or that path
                                joined with the file's path inside the tree */
    const char *const *chain;/* archive entry names, outermost first */
    size_t chain_len;
    dsv4_doc_format format;
    const char *encoding;    /* what the bytes were decoded from: "utf-8",
                                "utf-16le", "utf-16be", "windows-1252" */
    const char *title;       /* NULL when unknown */
    const char *author;      /* NULL when unknown */
    const char *text;        /* UTF-8, LF line ends, no NUL; NUL-terminated */
    uint64_t n_bytes;        /* strlen(text) */
    uint64_t n_chars;        /* Unicode scalar values in text */
    const dsv4_page_span *pages; /* PDFs only, else NULL */
    size_t n_pages;
    uint64_t n_pages_no_text;/* PDF pages with no text layer (no OCR is done) */
    uint64_t n_replaced;     /* invalid sequences replaced by U+FFFD */
    const char *const *warnings; /* messages about this document */
    size_t n_warnings;
} dsv4_doc;

typedef enum dsv4_ingest_event_kind {
    DSV4_INGEST_DOCUMENT = 1, /* doc is set */
    DSV4_INGEST_SKIPPED,      /* a file or entry gave no document */
    DSV4_INGEST_WARNING,      /* something else worth telling (a guard hit) */
} dsv4_ingest_event_kind;

/* Why something was skipped; each has a counter in dsv4_ingest_stats. */
typedef enum dsv4_skip_reason {
    DSV4_SKIP_NONE = 0,
    DSV4_SKIP_BINARY,      /* NUL bytes or no plausible text (policy) */
    DSV4_SKIP_IGNORED,     /* .gitignore, .git/info/exclude or a glob (policy) */
    DSV4_SKIP_LINK,        /* symlink out of the tree, into a loop, or an
                              archive link entry (policy) */
    DSV4_SKIP_SPECIAL,     /* device, fifo, socket (policy) */
    DSV4_SKIP_EMPTY,       /* no bytes at all (policy) */
    DSV4_SKIP_TOO_LARGE,   /* over max_file_bytes (error) */
    DSV4_SKIP_ENCRYPTED,   /* encrypted entry or PDF needing a password (error) */
    DSV4_SKIP_CORRUPT,     /* truncated or malformed (error) */
    DSV4_SKIP_GUARD,       /* a guard stopped the input (error) */
    DSV4_SKIP_UNREADABLE,  /* open/read failed (error) */
    DSV4_SKIP_N
} dsv4_skip_reason;

/* "binary", "ignored", ... the enum's names in lower case. */
const char *dsv4_skip_reason_name(dsv4_skip_reason r);

/* Policy reasons are expected filtering; error reasons make the input
 * DSV4_INGEST_INCOMPLETE. */
int dsv4_skip_reason_is_error(dsv4_skip_reason r);

typedef struct dsv4_ingest_event {
    dsv4_ingest_event_kind kind;
    const dsv4_doc *doc;     /* DOCUMENT */
    const char *where;       /* SKIPPED/WARNING: the file named as in a header,
                                e.g. "data.zip :: dir/x.pdf" */
    const char *message;     /* SKIPPED/WARNING: what happened, naming the limit */
    dsv4_skip_reason reason; /* SKIPPED (and WARNING for a guard) */
} dsv4_ingest_event;

/* Called once per event, in order. Return 0 to go on, non-zero to stop the
 * current call with DSV4_INGEST_ECANCELED. Pointers in ev are valid only
 * during the call. */
typedef int (*dsv4_ingest_fn)(void *user, const dsv4_ingest_event *ev);

typedef struct dsv4_ingest_stats {
    uint64_t n_inputs, n_documents;
    uint64_t n_bytes_in;       /* bytes of files read (compressed, as on disk) */
    uint64_t n_bytes_text;     /* bytes of document text produced */
    uint64_t n_skipped[DSV4_SKIP_N];
    uint64_t n_warnings;
    uint64_t n_pages, n_pages_no_text;
    uint64_t n_replaced;       /* invalid sequences replaced, all documents */
    uint64_t n_fallback_1252;  /* documents decoded as Windows-1252 */
} dsv4_ingest_stats;

typedef struct dsv4_ingest dsv4_ingest;

/* opt may be NULL (defaults). The session copies what it needs from opt,
 * globs included. Errors: DSV4_INGEST_EINVAL (a bad glob, a negative depth). */
int dsv4_ingest_open(const dsv4_ingest_options *opt, dsv4_ingest **out, char *err,
                     size_t errlen);
void dsv4_ingest_close(dsv4_ingest *s);

/* Reads one input: a file of any supported format (by content, not by name,
 * except that .docx/.odt/.epub name a container format) or a directory tree.
 * Returns 0 when everything was read, DSV4_INGEST_INCOMPLETE when something
 * was skipped for an error reason (each reported as an event), or a negative
 * code: EIO when path cannot be opened at all (also reported as a SKIPPED
 * event), ECANCELED, ENOMEM. */
int dsv4_ingest_path(dsv4_ingest *s, const char *path, dsv4_ingest_fn fn, void *user);

/* The same for bytes in memory named `name` (the source of its documents).
 * hint forces a parser (DSV4_FORMAT_AUTO: sniff as for files); this is the
 * entry point the fuzz targets use. data need not be NUL-terminated. */
int dsv4_ingest_memory(dsv4_ingest *s, const char *name, const void *data, size_t n,
                       dsv4_doc_format hint, dsv4_ingest_fn fn, void *user);

/* Counts over every call so far. */
void dsv4_ingest_get_stats(const dsv4_ingest *s, dsv4_ingest_stats *out);

/* The document as the model sees it, appended to a new malloc'ed
 * NUL-terminated buffer (*out, *n bytes without the NUL). Format (exact;
 * docs/ingest.md): NAME is source, then " :: " and each chain element, with
 * control characters shown as '?'.
 *   PDF:   for every page with text: "=== NAME (page N) ===\n" TEXT-OF-PAGE
 *          with a final "\n" ensured; a PDF without any text gives
 *          "=== NAME (no text) ===\n".
 *   other: "=== NAME ===\n" TEXT with a final "\n" ensured (none if empty).
 * then one empty line ("\n"). Same document -> same bytes. */
int dsv4_doc_render(const dsv4_doc *d, char **out, size_t *n);

/* The display name used in headers and events ("a.zip :: b/c.txt"), malloc'ed. */
char *dsv4_doc_display_name(const dsv4_doc *d);

/* A deep copy that outlives the callback; free with dsv4_doc_free. NULL on
 * out of memory. */
dsv4_doc *dsv4_doc_dup(const dsv4_doc *d);
void dsv4_doc_free(dsv4_doc *d);

/* Glob matching with the syntax of dsv4_ingest_options.include (without the
 * base-name rule): 1 match, 0 no match. Bounded time for any input. */
int dsv4_ingest_glob_match(const char *pattern, const char *path);

#endif
