/* ingest/ PDFs: real PDFs made at test time with cairo's PDF surface (text
 * pages, a page with no text layer, title/author metadata), encrypted copies
 * made with qpdf, and broken ones (truncated, garbage). The page text is
 * checked against pdftotext (same poppler) and the rendering's page headers
 * exactly. */
#include <cairo-pdf.h>
#include <cairo.h>
#include <dlfcn.h>

#include "tests/check.h"
#include "tests/test_ingest_util.h"

static char *dir;

/* Three pages: text, an image-only page (no text layer), text. */
static int make_pdf(const char *path)
{
    cairo_surface_t *s = cairo_pdf_surface_create(path, 595, 842);
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) return -1;
    cairo_pdf_surface_set_metadata(s, CAIRO_PDF_METADATA_TITLE, "Master Services Agreement");
    cairo_pdf_surface_set_metadata(s, CAIRO_PDF_METADATA_AUTHOR, "Acme Legal");
    cairo_t *cr = cairo_create(s);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 14);
    cairo_move_to(cr, 72, 100);
    cairo_show_text(cr, "Clause 1: The supplier delivers on time.");
    cairo_move_to(cr, 72, 130);
    cairo_show_text(cr, "Second line of page one.");
    cairo_show_page(cr);
    cairo_rectangle(cr, 100, 100, 200, 200); /* a "scan": drawing, no text */
    cairo_fill(cr);
    cairo_show_page(cr);
    cairo_move_to(cr, 72, 100);
    cairo_show_text(cr, "Clause 12: Liability is capped.");
    cairo_show_page(cr);
    cairo_destroy(cr);
    cairo_surface_finish(s);
    int rc = cairo_surface_status(s) == CAIRO_STATUS_SUCCESS ? 0 : -1;
    cairo_surface_destroy(s);
    return rc;
}

/* n pages, page i saying "Page i of n" plus a line; every 7th page blank */
static int make_long_pdf(const char *path, int n)
{
    cairo_surface_t *s = cairo_pdf_surface_create(path, 595, 842);
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) return -1;
    cairo_t *cr = cairo_create(s);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 12);
    for (int i = 1; i <= n; i++) {
        if (i % 7) {
            char line[64];
            snprintf(line, sizeof line, "Page %d of %d", i, n);
            cairo_move_to(cr, 72, 100);
            cairo_show_text(cr, line);
            cairo_move_to(cr, 72, 120);
            cairo_show_text(cr, "Terms continue on the next page.");
        }
        cairo_show_page(cr);
    }
    cairo_destroy(cr);
    cairo_surface_finish(s);
    int rc = cairo_surface_status(s) == CAIRO_STATUS_SUCCESS ? 0 : -1;
    cairo_surface_destroy(s);
    return rc;
}

static char *path_in(const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static void text_per_page_metadata_and_render(void)
{
    collected c;
    CHECK(ingest_collect(path_in("doc.pdf"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECKF(c.n_docs == 1, "%zu docs", c.n_docs);
    if (c.n_docs != 1) { dump_collected(&c); collected_free(&c); return; }
    const dsv4_doc *d = c.docs[0];
    CHECK(d->format == DSV4_FORMAT_PDF);
    CHECK(d->n_pages == 3);
    CHECK(d->n_pages_no_text == 1);
    CHECK(d->title && strcmp(d->title, "Master Services Agreement") == 0);
    CHECK(d->author && strcmp(d->author, "Acme Legal") == 0);
    if (d->n_pages == 3) {
        const char *p1 = "Clause 1: The supplier delivers on time.\nSecond line of page one.\n";
        const char *p3 = "Clause 12: Liability is capped.\n";
        CHECK(d->pages[0].offset == 0 && d->pages[0].n_bytes == strlen(p1));
        CHECK(strncmp(d->text, p1, strlen(p1)) == 0);
        CHECK(d->pages[1].offset == strlen(p1) && d->pages[1].n_bytes == 0);
        CHECK(d->pages[2].offset == strlen(p1) && d->pages[2].n_bytes == strlen(p3));
        CHECK(strcmp(d->text + d->pages[2].offset, p3) == 0);
        CHECK(d->n_bytes == strlen(p1) + strlen(p3));
        char *r;
        size_t n;
        CHECK(dsv4_doc_render(d, &r, &n) == 0);
        char want[1024];
        snprintf(want, sizeof want, "=== %s (page 1) ===\n%s=== %s (page 3) ===\n%s\n", path_in("doc.pdf"), p1,
                 path_in("doc.pdf"), p3);
        CHECKF(strcmp(r, want) == 0, "render:\n%s", r);
        free(r);
    }
    CHECK(d->n_warnings == 1 && strstr(d->warnings[0], "1 of 3 pages have no text layer"));
    CHECK(c.st.n_pages == 3 && c.st.n_pages_no_text == 1);
    collected_free(&c);
}

/* The page texts do not depend on how many threads extracted them. */
static void threads_give_the_same_bytes(void)
{
    CHECK(make_long_pdf(path_in("long.pdf"), 40) == 0);
    collected c[3];
    int threads[3] = {1, 4, 0};
    for (int k = 0; k < 3; k++) {
        dsv4_ingest_options o;
        dsv4_ingest_options_default(&o);
        o.pdf_threads = threads[k];
        CHECK(ingest_collect(path_in("long.pdf"), NULL, 0, 0, &o, &c[k]) == DSV4_INGEST_OK);
        CHECK(c[k].n_docs == 1);
    }
    if (c[0].n_docs == 1 && c[1].n_docs == 1 && c[2].n_docs == 1) {
        const dsv4_doc *a = c[0].docs[0];
        CHECK(a->n_pages == 40 && a->n_pages_no_text == 5);
        CHECKF(strncmp(a->text + a->pages[12].offset, "Page 13 of 40\nTerms continue", 28) == 0, "page 13: %.*s",
               (int)a->pages[12].n_bytes, a->text + a->pages[12].offset);
        CHECK(a->pages[13].n_bytes == 0); /* page 14 is blank */
        for (int k = 1; k < 3; k++) {
            const dsv4_doc *b = c[k].docs[0];
            CHECK(b->n_bytes == a->n_bytes && strcmp(b->text, a->text) == 0);
            CHECK(b->n_pages == a->n_pages && memcmp(b->pages, a->pages, a->n_pages * sizeof *a->pages) == 0);
        }
    }
    for (int k = 0; k < 3; k++) collected_free(&c[k]);
}

static void same_text_as_pdftotext(void)
{
    if (!have_tool("pdftotext")) SKIP("pdftotext not installed");
    CHECK(sh("pdftotext -enc UTF-8 %s %s", path_in("doc.pdf"), path_in("doc.txt")) == 0);
    char *ref = read_all(path_in("doc.txt"), NULL);
    CHECK(ref != NULL);
    collected c;
    ingest_collect(path_in("doc.pdf"), NULL, 0, 0, NULL, &c);
    if (ref && c.n_docs == 1 && c.docs[0]->n_pages == 3) {
        /* pdftotext separates pages with \f; compare page 1 and 3 words */
        char *ff1 = strchr(ref, '\f');
        CHECK(ff1 != NULL);
        if (ff1) {
            *ff1 = 0;
            char mine[256];
            snprintf(mine, sizeof mine, "%.*s", (int)c.docs[0]->pages[0].n_bytes, c.docs[0]->text);
            /* pdftotext ends each page with an empty line; ours ends with one \n */
            size_t k = strlen(ref);
            while (k > 0 && ref[k - 1] == '\n') ref[--k] = 0;
            k = strlen(mine);
            while (k > 0 && mine[k - 1] == '\n') mine[--k] = 0;
            CHECKF(strcmp(ref, mine) == 0, "pdftotext '%s' vs ours '%s'", ref, mine);
        }
    }
    free(ref);
    collected_free(&c);
}

static void encrypted_pdfs(void)
{
    if (!have_tool("qpdf")) SKIP("qpdf not installed");
    CHECK(sh("qpdf --encrypt '' owner-secret 256 -- %s %s", path_in("doc.pdf"), path_in("open.pdf")) == 0);
    CHECK(sh("qpdf --encrypt user-secret owner-secret 256 -- %s %s", path_in("doc.pdf"), path_in("locked.pdf")) == 0);
    collected c;
    CHECK(ingest_collect(path_in("open.pdf"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && c.docs[0]->n_pages == 3 && strstr(c.docs[0]->text, "Liability is capped"));
    collected_free(&c);
    CHECK(ingest_collect(path_in("locked.pdf"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0);
    CHECK(find_event(&c, DSV4_SKIP_ENCRYPTED, "locked.pdf", "password is needed") != NULL);
    CHECK(c.st.n_skipped[DSV4_SKIP_ENCRYPTED] == 1);
    collected_free(&c);
}

static void broken_pdfs(void)
{
    size_t n;
    char *pdf = read_all(path_in("doc.pdf"), &n);
    CHECK(pdf != NULL);
    if (!pdf) return;
    collected c;
    /* truncated at every eighth of the file: a document or a CORRUPT skip */
    for (int k = 1; k < 8; k++) {
        size_t cut = n * (size_t)k / 8;
        int rc = ingest_collect("cut.pdf", pdf, cut, DSV4_FORMAT_AUTO, NULL, &c);
        CHECKF(rc == DSV4_INGEST_OK || rc == DSV4_INGEST_INCOMPLETE, "rc %d at %zu", rc, cut);
        CHECK(c.n_docs == 1 || find_event(&c, DSV4_SKIP_CORRUPT, "cut.pdf", "not a readable PDF") != NULL);
        collected_free(&c);
    }
    const char junk[] = "%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> garbage\n%%EOF\n";
    CHECK(ingest_collect("junk.pdf", junk, sizeof junk - 1, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0 && find_event(&c, DSV4_SKIP_CORRUPT, "junk.pdf", "not a readable PDF") != NULL);
    collected_free(&c);
    free(pdf);
}

static void pdf_inside_zip(void)
{
    CHECK(sh("cd %s && mkdir -p in/contracts && cp doc.pdf in/contracts/acme.pdf && cd in && zip -q -r ../c.zip contracts", dir) == 0);
    collected c;
    CHECK(ingest_collect(path_in("c.zip"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    char name[600];
    snprintf(name, sizeof name, "%s :: contracts/acme.pdf", path_in("c.zip"));
    const dsv4_doc *d = find_doc(&c, name);
    CHECK(d && d->n_pages == 3 && d->chain_len == 1 && strcmp(d->chain[0], "contracts/acme.pdf") == 0);
    if (d) {
        char *r;
        size_t n;
        CHECK(dsv4_doc_render(d, &r, &n) == 0);
        char want[700];
        snprintf(want, sizeof want, "=== %s (page 3) ===\n", name);
        CHECK(strstr(r, want) != NULL);
        free(r);
    }
    collected_free(&c);
}

int main(void)
{
    dir = make_tmpdir();
    if (!dir || make_pdf(path_in("doc.pdf")) != 0) {
        printf("FAIL setup: cannot make a PDF with cairo\n");
        return 1;
    }
    RUN(text_per_page_metadata_and_render);
    RUN(threads_give_the_same_bytes);
    RUN(same_text_as_pdftotext);
    RUN(encrypted_pdfs);
    RUN(broken_pdfs);
    RUN(pdf_inside_zip);
    remove_tree(dir);
    /* cairo keeps fonts (through fontconfig) for the process; free them so
     * `make asan`'s leak check sees only ingest/'s own memory. FcFini is
     * looked up at run time: the build does not link fontconfig directly. */
    cairo_debug_reset_static_data();
    void (*fc_fini)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "FcFini");
    if (fc_fini) fc_fini();
    CHECK_EXIT();
}
