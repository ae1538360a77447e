/* PDFs through poppler-glib: the text of each page in reading order, one
 * page span per page, title and author from the document information.
 *
 * The PDF is opened from memory (a bounded buffer, whether it came from disk
 * or from an archive entry) with no password, which is how poppler tries the
 * empty user password: encrypted files that allow it open, the rest are a
 * clear ENCRYPTED skip. A page whose text is empty or only whitespace has no
 * text layer (a scan); it keeps an empty span so page numbers stay true, and
 * is counted (no OCR is attempted). Poppler reports syntax problems through
 * GLib logging; those messages are swallowed so a hostile file cannot flood
 * stderr, and the outcome is judged from the API's results instead. */
#include <poppler.h>
#include <string.h>

#include "ingest/ingest_internal.h"

static void drop_log(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer user)
{
    (void)domain, (void)level, (void)msg, (void)user;
}

static gpointer install_log_handler(gpointer unused)
{
    (void)unused;
    g_log_set_handler("Poppler", (GLogLevelFlags)(G_LOG_LEVEL_MASK | G_LOG_FLAG_RECURSION), drop_log, NULL);
    return NULL;
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\f' && s[i] != '\r') return 0;
    return 1;
}

int pdf_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    static GOnce once = G_ONCE_INIT;
    g_once(&once, install_log_handler, NULL);
    if (n > (size_t)G_MAXINT)
        return ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "PDF of %zu bytes is too large for poppler", n);
    GBytes *bytes = g_bytes_new_static(p, n);
    GError *gerr = NULL;
    PopplerDocument *pd = poppler_document_new_from_bytes(bytes, NULL, &gerr);
    int rc = 0;
    docb d = {0};
    d.format = DSV4_FORMAT_PDF;
    if (!pd) {
        if (gerr && gerr->domain == POPPLER_ERROR && gerr->code == POPPLER_ERROR_ENCRYPTED)
            rc = ctx_skip(c, NULL, DSV4_SKIP_ENCRYPTED,
                          "encrypted PDF: a password is needed (the empty user password was refused)");
        else
            rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "not a readable PDF: %s",
                          gerr && gerr->message ? gerr->message : "unknown error");
        goto done;
    }
    gchar *title = poppler_document_get_title(pd), *author = poppler_document_get_author(pd);
    docb_set_meta(&d, title, author);
    g_free(title);
    g_free(author);
    int n_pages = poppler_document_get_n_pages(pd);
    for (int i = 0; i < n_pages && rc == 0; i++) {
        uint64_t off = d.text.n;
        PopplerPage *page = poppler_document_get_page(pd, i);
        char *t = page ? poppler_page_get_text(page) : NULL;
        if (t) rc = utf8_append_clean(&d.text, t, strlen(t), &d.n_replaced);
        if (rc == 0) {
            if (blank(d.text.p ? d.text.p + off : "", d.text.n - off)) {
                d.text.n = off; /* a page with no text layer keeps an empty span */
                if (d.text.p) d.text.p[off] = 0;
                d.n_pages_no_text++;
            } else if (d.text.p[d.text.n - 1] != '\n') {
                rc = buf_putc(&d.text, '\n');
            }
        }
        if (rc == 0) rc = docb_add_page(&d, off, d.text.n - off);
        g_free(t);
        if (page) g_object_unref(page);
        if (rc == 0 && d.text.n > ctx_opts(c)->max_entry_bytes) {
            rc = ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "PDF text over max_entry_bytes (%llu) at page %d",
                          (unsigned long long)ctx_opts(c)->max_entry_bytes, i + 1);
            goto done;
        }
    }
    if (rc == 0) rc = doc_emit(c, &d);
done:
    if (gerr) g_error_free(gerr);
    if (pd) g_object_unref(pd);
    g_bytes_unref(bytes);
    docb_free(&d);
    return rc;
}
