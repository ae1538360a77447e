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
 * stderr, and the outcome is judged from the API's results instead.
 *
 * Long PDFs are extracted by several threads, each with its own
 * PopplerDocument over the same bytes (poppler is thread-safe only across
 * documents) and a contiguous range of pages; the texts are joined in page
 * order, so the result is the same bytes whatever the thread count. */
#include <poppler.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Appends one page's text (may be NULL) as the next page span. */
static int append_page(docb *d, const char *t)
{
    uint64_t off = d->text.n;
    int rc = t ? utf8_append_clean(&d->text, t, strlen(t), &d->n_replaced) : buf_reserve(&d->text, 0);
    if (rc) return rc;
    if (blank(d->text.p + off, d->text.n - off)) {
        d->text.n = off; /* a page with no text layer keeps an empty span */
        d->text.p[off] = 0;
        d->n_pages_no_text++;
    } else if (d->text.p[d->text.n - 1] != '\n') {
        rc = buf_putc(&d->text, '\n');
    }
    return rc ? rc : docb_add_page(d, off, d->text.n - off);
}

/* Pages [first, last) of the PDF in bytes, each thread with its own
 * PopplerDocument: poppler is safe across threads only for separate
 * documents, and the bytes are shared read-only. */
typedef struct pdf_range {
    GBytes *bytes;
    PopplerDocument *pd; /* the caller's document for the first range, else NULL */
    int first, last;
    char **texts;        /* g_malloc'ed page texts, one slot per page */
    int failed;
    pthread_t tid;
} pdf_range;

static void *extract_range(void *arg)
{
    pdf_range *r = arg;
    PopplerDocument *pd = r->pd ? r->pd : poppler_document_new_from_bytes(r->bytes, NULL, NULL);
    if (!pd) {
        r->failed = 1;
        return NULL;
    }
    for (int i = r->first; i < r->last; i++) {
        PopplerPage *page = poppler_document_get_page(pd, i);
        r->texts[i] = page ? poppler_page_get_text(page) : NULL;
        if (page) g_object_unref(page);
    }
    if (!r->pd) g_object_unref(pd);
    return NULL;
}

#define MAX_PDF_THREADS 8

static int threads_for(const ing_ctx *c, int n_pages)
{
    int t = ctx_opts(c)->pdf_threads;
    if (t <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        t = cpus > 0 ? (int)cpus : 1;
        if (n_pages < 16) t = 1; /* opening the document again costs more */
    }
    if (t > MAX_PDF_THREADS) t = MAX_PDF_THREADS;
    if (t > n_pages / 2) t = n_pages / 2;
    return t < 1 ? 1 : t;
}

/* All page texts, in order, extracted by n_threads threads (the calling one
 * included). Returns 0, or -1 when a thread could not open the document. */
static int extract_pages(PopplerDocument *pd, GBytes *bytes, int n_pages, int n_threads, char **texts)
{
    pdf_range r[MAX_PDF_THREADS];
    memset(r, 0, sizeof r);
    int started[MAX_PDF_THREADS] = {0};
    for (int k = 0; k < n_threads; k++) {
        r[k].bytes = bytes;
        r[k].pd = k == 0 ? pd : NULL;
        r[k].first = (int)((int64_t)n_pages * k / n_threads);
        r[k].last = (int)((int64_t)n_pages * (k + 1) / n_threads);
        r[k].texts = texts;
    }
    for (int k = 1; k < n_threads; k++) started[k] = pthread_create(&r[k].tid, NULL, extract_range, &r[k]) == 0;
    /* a thread that could not start is done here, in order */
    for (int k = 1; k < n_threads; k++)
        if (!started[k]) extract_range(&r[k]);
    extract_range(&r[0]);
    int failed = 0;
    for (int k = 0; k < n_threads; k++) {
        if (k > 0 && started[k]) pthread_join(r[k].tid, NULL);
        failed |= r[k].failed;
    }
    return failed ? -1 : 0;
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
    int rc = 0, n_pages = 0;
    char **texts = NULL;
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
    n_pages = poppler_document_get_n_pages(pd);
    if (n_pages < 0) n_pages = 0;
    if (n_pages > 0 && !(texts = calloc((size_t)n_pages, sizeof *texts))) {
        rc = DSV4_INGEST_ENOMEM;
        goto done;
    }
    if (n_pages > 0 && extract_pages(pd, bytes, n_pages, threads_for(c, n_pages), texts) != 0) {
        rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "PDF could not be reopened for parallel extraction");
        goto done;
    }
    for (int i = 0; i < n_pages && rc == 0; i++) {
        rc = append_page(&d, texts[i]);
        if (rc == 0 && d.text.n > ctx_opts(c)->max_entry_bytes) {
            rc = ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "PDF text over max_entry_bytes (%llu) at page %d",
                          (unsigned long long)ctx_opts(c)->max_entry_bytes, i + 1);
            goto done;
        }
    }
    if (rc == 0) rc = doc_emit(c, &d);
done:
    for (int i = 0; texts && i < n_pages; i++) g_free(texts[i]);
    free(texts);
    if (gerr) g_error_free(gerr);
    if (pd) g_object_unref(pd);
    g_bytes_unref(bytes);
    docb_free(&d);
    return rc;
}
