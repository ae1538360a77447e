/* ingest/: plain text decoding (every encoding path), the rendering format,
 * document ids, copies, glob matching and the bad-input paths of text
 * (empty, binary, invalid bytes, one huge line). */
#include <stdint.h>

#include "tests/check.h"
#include "tests/test_ingest_util.h"

static const dsv4_doc *only_doc(collected *c)
{
    CHECKF(c->n_docs == 1, "%zu documents", c->n_docs);
    return c->n_docs == 1 ? c->docs[0] : NULL;
}

static void utf8_bom_and_line_ends(void)
{
    collected c;
    const char in[] = "\xEF\xBB\xBF" "caf\xC3\xA9\r\nline2\rline3\n";
    CHECK(ingest_collect("a.txt", in, sizeof in - 1, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    const dsv4_doc *d = only_doc(&c);
    if (d) {
        CHECK(strcmp(d->text, "caf\xC3\xA9\nline2\nline3\n") == 0);
        CHECK(strcmp(d->encoding, "utf-8") == 0);
        CHECK(d->format == DSV4_FORMAT_TEXT);
        CHECK(d->n_bytes == strlen(d->text));
        CHECK(d->n_chars == 17);
        CHECK(d->n_replaced == 0 && d->n_warnings == 0);
        CHECK(d->chain_len == 0 && strcmp(d->source, "a.txt") == 0);
    }
    collected_free(&c);
}

static void utf16_both_orders(void)
{
    /* "hé😀\r\n" with a BOM, little and big endian, plus one lone surrogate */
    const uint8_t le[] = {0xFF, 0xFE, 'h', 0, 0xE9, 0, 0x3D, 0xD8, 0x00, 0xDE, '\r', 0, '\n', 0, 0x00, 0xDC};
    const uint8_t be[] = {0xFE, 0xFF, 0, 'h', 0, 0xE9, 0xD8, 0x3D, 0xDE, 0x00, 0, '\r', 0, '\n'};
    collected c;
    CHECK(ingest_collect("le.txt", le, sizeof le, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    const dsv4_doc *d = only_doc(&c);
    if (d) {
        CHECK(strcmp(d->text, "h\xC3\xA9\xF0\x9F\x98\x80\n\xEF\xBF\xBD") == 0);
        CHECK(strcmp(d->encoding, "utf-16le") == 0);
        CHECK(d->n_replaced == 1);
        CHECK(d->n_warnings == 1 && strstr(d->warnings[0], "1 invalid"));
    }
    collected_free(&c);
    CHECK(ingest_collect("be.txt", be, sizeof be, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    d = only_doc(&c);
    if (d) {
        CHECK(strcmp(d->text, "h\xC3\xA9\xF0\x9F\x98\x80\n") == 0);
        CHECK(strcmp(d->encoding, "utf-16be") == 0);
        CHECK(d->n_chars == 4 && d->n_replaced == 0);
    }
    collected_free(&c);
}

static void windows_1252_fallback_made_by_iconv(void)
{
    char *dir = make_tmpdir();
    CHECK(dir != NULL);
    if (!dir) return;
    /* the file is made by the iconv tool from UTF-8 text */
    CHECK(sh("printf 'caf\\303\\251 \\342\\202\\254 na\\303\\257ve\\r\\n' | iconv -f UTF-8 -t WINDOWS-1252 > %s/w.txt", dir) == 0);
    char path[512];
    snprintf(path, sizeof path, "%s/w.txt", dir);
    collected c;
    CHECK(ingest_collect(path, NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    const dsv4_doc *d = only_doc(&c);
    if (d) {
        CHECK(strcmp(d->text, "caf\xC3\xA9 \xE2\x82\xAC na\xC3\xAFve\n") == 0);
        CHECK(strcmp(d->encoding, "windows-1252") == 0);
        CHECK(d->n_warnings == 1 && strstr(d->warnings[0], "Windows-1252"));
    }
    CHECK(c.st.n_fallback_1252 == 1);
    collected_free(&c);
    remove_tree(dir);
}

static void mostly_utf8_keeps_utf8_and_counts(void)
{
    const char in[] = "\xC3\xA9t\xC3\xA9 \xC3\xA0 \xFF\xFE end\n";
    collected c;
    CHECK(ingest_collect("m.txt", in, sizeof in - 1, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    const dsv4_doc *d = only_doc(&c);
    if (d) {
        CHECK(strcmp(d->encoding, "utf-8") == 0);
        CHECK(d->n_replaced == 2);
        CHECK(strcmp(d->text, "\xC3\xA9t\xC3\xA9 \xC3\xA0 \xEF\xBF\xBD\xEF\xBF\xBD end\n") == 0);
    }
    CHECK(c.st.n_replaced == 2);
    collected_free(&c);
}

static void binary_empty_and_huge_line(void)
{
    collected c;
    const char bin[] = "ELF\0\0\1\2binary";
    CHECK(ingest_collect("b.bin", bin, sizeof bin - 1, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0);
    CHECK(find_event(&c, DSV4_SKIP_BINARY, "b.bin", "binary") != NULL);
    CHECK(c.st.n_skipped[DSV4_SKIP_BINARY] == 1);
    collected_free(&c);

    CHECK(ingest_collect("e.txt", "", 0, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0 && find_event(&c, DSV4_SKIP_EMPTY, "e.txt", "empty") != NULL);
    collected_free(&c);

    /* one 24 MiB line without a newline */
    size_t n = 24u << 20;
    char *big = malloc(n);
    memset(big, 'x', n);
    CHECK(ingest_collect("line.txt", big, n, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    const dsv4_doc *d = only_doc(&c);
    if (d) CHECK(d->n_bytes == n && d->n_chars == n && d->text[n] == 0 && d->text[n - 1] == 'x');
    collected_free(&c);
    free(big);

    /* a file over max_entry_bytes is skipped as too large */
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    o.max_entry_bytes = 1000;
    char *dir = make_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/big.txt", dir);
    CHECK(sh("head -c 5000 /dev/zero | tr '\\0' 'a' > %s", path) == 0);
    CHECK(ingest_collect(path, NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0 && find_event(&c, DSV4_SKIP_TOO_LARGE, "big.txt", "max_entry_bytes (1000)") != NULL);
    collected_free(&c);
    /* a missing path is EIO, reported with its name */
    snprintf(path, sizeof path, "%s/missing.txt", dir);
    CHECK(ingest_collect(path, NULL, 0, 0, NULL, &c) == DSV4_INGEST_EIO);
    CHECK(find_event(&c, DSV4_SKIP_UNREADABLE, "missing.txt", "No such file") != NULL);
    collected_free(&c);
    remove_tree(dir);
}

static void text_that_starts_like_an_archive(void)
{
    /* "BZh9" is bzip2's magic; libarchive refuses it and it is read as text */
    const char note[] = "BZh9 is how the note starts\n";
    collected c;
    CHECK(ingest_collect("note.txt", note, sizeof note - 1, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && strcmp(c.docs[0]->text, note) == 0 && c.docs[0]->format == DSV4_FORMAT_TEXT);
    collected_free(&c);
    char *dir = make_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/note.txt", dir);
    CHECK(write_file(dir, "note.txt", note, sizeof note - 1) == 0);
    CHECK(ingest_collect(path, NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && strcmp(c.docs[0]->text, note) == 0);
    collected_free(&c);
    remove_tree(dir);
}

static void render_format_and_ids(void)
{
    collected c;
    CHECK(ingest_collect("docs/a.txt", "hello\nworld", 11, DSV4_FORMAT_AUTO, NULL, &c) == 0);
    const dsv4_doc *d = only_doc(&c);
    if (d) {
        char *r;
        size_t n;
        CHECK(dsv4_doc_render(d, &r, &n) == 0);
        CHECK(strcmp(r, "=== docs/a.txt ===\nhello\nworld\n\n") == 0);
        CHECK(n == strlen(r));
        free(r);
        /* the id is SHA-256 of "docs/a.txt\0", first 8 bytes, checked with sha256sum */
        char cmd[256], want[32] = {0};
        snprintf(cmd, sizeof cmd, "printf 'docs/a.txt\\0' | sha256sum | cut -c1-16");
        FILE *p = popen(cmd, "r");
        CHECK(p && fgets(want, sizeof want, p));
        if (p) pclose(p);
        want[16] = 0;
        CHECKF(strcmp(d->id, want) == 0, "id %s, sha256sum %s", d->id, want);
    }
    collected c2;
    CHECK(ingest_collect("docs/a.txt", "changed", 7, DSV4_FORMAT_AUTO, NULL, &c2) == 0);
    if (d && c2.n_docs == 1) CHECK(strcmp(c2.docs[0]->id, d->id) == 0); /* provenance, not content */
    collected_free(&c2);
    CHECK(ingest_collect("docs/b.txt", "x", 1, DSV4_FORMAT_AUTO, NULL, &c2) == 0);
    if (d && c2.n_docs == 1) CHECK(strcmp(c2.docs[0]->id, d->id) != 0);
    collected_free(&c2);
    collected_free(&c);

    /* control characters in names never break the header line */
    dsv4_doc fake = {0};
    const char *chain[] = {"in\nner.txt"};
    fake.source = "a.zip";
    fake.chain = chain;
    fake.chain_len = 1;
    fake.text = "";
    fake.format = DSV4_FORMAT_TEXT;
    char *r;
    size_t n;
    CHECK(dsv4_doc_render(&fake, &r, &n) == 0);
    CHECK(strcmp(r, "=== a.zip :: in?ner.txt ===\n\n") == 0);
    free(r);
}

static void glob_matching(void)
{
    CHECK(dsv4_ingest_glob_match("*.txt", "a.txt") == 1);
    CHECK(dsv4_ingest_glob_match("*.txt", "d/a.txt") == 0);
    CHECK(dsv4_ingest_glob_match("**/*.txt", "a.txt") == 1);
    CHECK(dsv4_ingest_glob_match("**/*.txt", "d/e/a.txt") == 1);
    CHECK(dsv4_ingest_glob_match("d/**", "d/x/y") == 1);
    CHECK(dsv4_ingest_glob_match("d/**", "e/x") == 0);
    CHECK(dsv4_ingest_glob_match("a/**/b", "a/b") == 1);
    CHECK(dsv4_ingest_glob_match("a/**/b", "a/x/y/b") == 1);
    CHECK(dsv4_ingest_glob_match("a/**/b", "a/xb") == 0);
    CHECK(dsv4_ingest_glob_match("a*b", "a/b") == 0);
    CHECK(dsv4_ingest_glob_match("?.c", "x.c") == 1);
    CHECK(dsv4_ingest_glob_match("?.c", "/.c") == 0);
    CHECK(dsv4_ingest_glob_match("[a-c]x", "bx") == 1);
    CHECK(dsv4_ingest_glob_match("[a-c]x", "dx") == 0);
    CHECK(dsv4_ingest_glob_match("[!a]x", "ax") == 0);
    CHECK(dsv4_ingest_glob_match("[!a]x", "bx") == 1);
    CHECK(dsv4_ingest_glob_match("\\*x", "*x") == 1);
    CHECK(dsv4_ingest_glob_match("\\*x", "ax") == 0);
    CHECK(dsv4_ingest_glob_match("[", "[") == 1);
    /* adversarial: many stars against a long near-miss finishes (bounded) */
    char path[4001];
    memset(path, 'a', 4000);
    path[4000] = 0;
    CHECK(dsv4_ingest_glob_match("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", path) == 0);
    CHECK(dsv4_ingest_glob_match("**/**/**/**/**/**/**/**/**/b", "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/c") == 0);
    /* bad options are refused with a message */
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    const char *bad[] = {""};
    o.include = bad;
    o.n_include = 1;
    dsv4_ingest *s = NULL;
    char err[256] = "";
    CHECK(dsv4_ingest_open(&o, &s, err, sizeof err) == DSV4_INGEST_EINVAL && s == NULL);
    CHECK(strstr(err, "glob 1 is empty") != NULL);
    dsv4_ingest_options_default(&o);
    o.max_depth = -1;
    CHECK(dsv4_ingest_open(&o, &s, err, sizeof err) == DSV4_INGEST_EINVAL);
    CHECK(strstr(err, "max_depth") != NULL);
    dsv4_ingest_close(NULL);
    dsv4_doc_free(NULL);
}

static int cancel_cb(void *u, const dsv4_ingest_event *ev)
{
    (void)ev;
    ++*(int *)u;
    return 1;
}

static void callback_can_stop(void)
{
    dsv4_ingest *s;
    char err[128];
    CHECK(dsv4_ingest_open(NULL, &s, err, sizeof err) == 0);
    int calls = 0;
    CHECK(dsv4_ingest_memory(s, "x.txt", "abc", 3, DSV4_FORMAT_AUTO, cancel_cb, &calls) == DSV4_INGEST_ECANCELED);
    CHECK(calls == 1);
    dsv4_ingest_close(s);
}

int main(void)
{
    RUN(utf8_bom_and_line_ends);
    RUN(utf16_both_orders);
    RUN(windows_1252_fallback_made_by_iconv);
    RUN(mostly_utf8_keeps_utf8_and_counts);
    RUN(binary_empty_and_huge_line);
    RUN(text_that_starts_like_an_archive);
    RUN(render_format_and_ids);
    RUN(glob_matching);
    RUN(callback_can_stop);
    CHECK_EXIT();
}
