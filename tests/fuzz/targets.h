/* The fuzz targets of ingest/, one per parser entry point, shared by the
 * libFuzzer programs (tests/fuzz/fuzz_*.c), the plain replay programs
 * (replay_main.c) and the test that replays every seed corpus in the normal
 * test run (tests/test_fuzz_replay.c).
 *
 * Each target feeds the bytes to dsv4_ingest_memory() with the parser forced
 * by a format hint (so the fuzzer reaches the parser even without the right
 * magic bytes), under small guards so a single input stays fast, and checks
 * every document it gets against the contract in ingest/dsv4_ingest.h: text
 * NUL-terminated with n_bytes = strlen, valid UTF-8, no CR, pages tiling the
 * text, rendering and copying work. A broken contract traps, which the
 * fuzzer and the replay test both report. The gitignore target parses the
 * bytes as a .gitignore and as glob patterns. */
#ifndef DSV4_FUZZ_TARGETS_H
#define DSV4_FUZZ_TARGETS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/dsv4_ingest.h"
#include "ingest/ingest_internal.h"

static inline int fuzz_check_doc(void *user, const dsv4_ingest_event *ev)
{
    (void)user;
    if (ev->kind != DSV4_INGEST_DOCUMENT) {
        if (!ev->where || !ev->message) __builtin_trap();
        return 0;
    }
    const dsv4_doc *d = ev->doc;
    if (!d->text || strlen(d->text) != d->n_bytes) __builtin_trap();
    if (!utf8_valid(d->text, d->n_bytes) || memchr(d->text, '\r', d->n_bytes)) __builtin_trap();
    if (utf8_count_chars(d->text, d->n_bytes) != d->n_chars) __builtin_trap();
    uint64_t at = 0;
    for (size_t i = 0; i < d->n_pages; i++) {
        if (d->pages[i].offset != at) __builtin_trap();
        at += d->pages[i].n_bytes;
    }
    if (d->n_pages && at != d->n_bytes) __builtin_trap();
    if (strlen(d->id) != 16) __builtin_trap();
    char *r = NULL;
    size_t n = 0;
    if (dsv4_doc_render(d, &r, &n) == 0 && (!r || strlen(r) != n)) __builtin_trap();
    free(r);
    dsv4_doc_free(dsv4_doc_dup(d));
    return 0;
}

static inline int fuzz_ingest(dsv4_doc_format hint, const uint8_t *data, size_t n)
{
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    o.max_entry_bytes = 4u << 20;
    o.max_input_bytes = 16u << 20;
    o.max_entries = 2000;
    dsv4_ingest *s;
    char err[128];
    if (dsv4_ingest_open(&o, &s, err, sizeof err) != 0) __builtin_trap();
    int rc = dsv4_ingest_memory(s, "fuzz/input", data, n, hint, fuzz_check_doc, NULL);
    if (rc != DSV4_INGEST_OK && rc != DSV4_INGEST_INCOMPLETE) __builtin_trap();
    dsv4_ingest_close(s);
    return 0;
}

static inline int fuzz_text(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_TEXT, d, n); }
static inline int fuzz_pdf(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_PDF, d, n); }
static inline int fuzz_archive(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_ARCHIVE, d, n); }
static inline int fuzz_html(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_HTML, d, n); }
static inline int fuzz_xml(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_XML, d, n); }
static inline int fuzz_docx(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_DOCX, d, n); }
static inline int fuzz_odt(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_ODT, d, n); }
static inline int fuzz_epub(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_EPUB, d, n); }
static inline int fuzz_auto(const uint8_t *d, size_t n) { return fuzz_ingest(DSV4_FORMAT_AUTO, d, n); }

/* The bytes as a .gitignore matched against a fixed set of paths, and each
 * line also as a glob (with and without the base-name rule). */
static inline int fuzz_gitignore(const uint8_t *d, size_t n)
{
    static const char *const paths[] = {"a", "a/b", "a/b/c.txt", ".hidden", "dir/sub/x.log", "x y/z[1].c",
                                        "deep/a/b/c/d/e/f/g/h/i/j/k", "build/", "caf\xC3\xA9.txt"};
    ign_list *l = ign_parse((const char *)d, n, "");
    if (l) {
        for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
            int r = ign_match(l, paths[i], (int)(i & 1));
            if (r < -1 || r > 1) __builtin_trap();
        }
        ign_free(l);
    }
    char line[1100];
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && d[j] != '\n') j++;
        size_t len = j - i < sizeof line - 1 ? j - i : sizeof line - 1;
        memcpy(line, d + i, len);
        line[len] = 0;
        for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
            int a = dsv4_ingest_glob_match(line, paths[k]);
            int b = glob_match_opt(line, paths[k]);
            if ((a != 0 && a != 1) || (b != 0 && b != 1)) __builtin_trap();
        }
        i = j + 1;
    }
    return 0;
}

#endif
