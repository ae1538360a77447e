/* Markup through libxml2: HTML, generic XML, and the zip-based document
 * containers DOCX (WordprocessingML), ODT (OpenDocument) and EPUB.
 *
 * libxml2 is configured for hostile input: no network (NONET), no external
 * DTDs, entities never substituted (no NOENT: an entity reference stays a
 * reference node and is skipped, so neither XXE nor "billion laughs" can
 * expand), recovery on, and its default printing to stderr replaced by a
 * structured handler that keeps the first error (line:column) for the
 * document's warning. Trees are walked iteratively (enter/leave over
 * children/next/parent) so nesting depth costs no C stack.
 *
 * Text shaping: HTML block elements (headings, paragraphs, list items, table
 * cells...) each start on their own line, whitespace is collapsed outside
 * <pre>, script/style/template/noscript and <head> are dropped (the <title>
 * becomes the document title). XML gives one line per element that holds
 * text. DOCX gives one line per paragraph (w:p) with tabs and breaks kept,
 * headers first and footers, footnotes and endnotes after the body; ODT one
 * line per text:p/text:h; EPUB the chapters of the spine in order. */
#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <libxml/xmlerror.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ingest/ingest_internal.h"

/* ---- libxml2 setup and errors ---- */

typedef struct xerr {
    int n;
    int line, col;
    char msg[256];
    char part[128]; /* "word/document.xml: " for container parts */
} xerr;

static _Thread_local xerr *cur_err;

static void on_xml_error(void *user, xmlErrorPtr e)
{
    (void)user;
    if (!cur_err || !e || e->level < XML_ERR_ERROR) return;
    if (cur_err->n++ == 0) {
        cur_err->line = e->line;
        cur_err->col = e->int2;
        snprintf(cur_err->msg, sizeof cur_err->msg, "%s", e->message ? e->message : "error");
        size_t k = strlen(cur_err->msg);
        while (k > 0 && (cur_err->msg[k - 1] == '\n' || cur_err->msg[k - 1] == ' ')) cur_err->msg[--k] = 0;
    }
}

static void on_generic_error(void *user, const char *fmt, ...)
{
    (void)user, (void)fmt;
}

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;
static void xml_init(void) { xmlInitParser(); }

static void quiet(xerr *e)
{
    pthread_once(&xml_once, xml_init);
    memset(e, 0, sizeof *e);
    cur_err = e;
    xmlSetStructuredErrorFunc(NULL, on_xml_error);
    xmlSetGenericErrorFunc(NULL, on_generic_error);
}

static const int XML_OPTS = XML_PARSE_RECOVER | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NONET |
                            XML_PARSE_NOCDATA | XML_PARSE_COMPACT | XML_PARSE_NOBLANKS;
static const int HTML_OPTS = HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET |
                             HTML_PARSE_COMPACT;

/* libxml2 builds a tree several times the size of its input; markup larger
 * than this is not parsed (the caller reports it) so one file cannot take
 * gigabytes. Documents this large are far beyond a model context anyway. */
#define MARKUP_MAX ((size_t)64 << 20)

static xmlDocPtr parse_xml(const uint8_t *p, size_t n, xerr *e)
{
    quiet(e);
    if (n > MARKUP_MAX) {
        e->n = 1;
        snprintf(e->msg, sizeof e->msg, "markup of %zu bytes is over the 64 MiB parse limit", n);
        return NULL;
    }
    xmlDocPtr d = xmlReadMemory((const char *)p, (int)n, "noname.xml", NULL, XML_OPTS);
    cur_err = NULL;
    return d;
}

static xmlDocPtr parse_html(const uint8_t *p, size_t n, xerr *e)
{
    quiet(e);
    if (n > MARKUP_MAX) {
        e->n = 1;
        snprintf(e->msg, sizeof e->msg, "markup of %zu bytes is over the 64 MiB parse limit", n);
        return NULL;
    }
    /* Valid UTF-8 is read as UTF-8 whatever a <meta> says; anything else is
     * left to libxml2's detection (BOM, meta charset, else Latin-1). */
    int bom = n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF;
    const char *enc = bom || utf8_valid((const char *)p, n) ? "UTF-8" : NULL;
    htmlDocPtr d = htmlReadMemory((const char *)p, (int)n, "noname.html", enc, HTML_OPTS);
    cur_err = NULL;
    return d;
}

/* ---- text output with whitespace handling ---- */

typedef struct tout {
    buf b;
    int pre;       /* inside <pre> (or a format that keeps spaces) */
    int space;     /* a collapsed space is pending */
    int err;
} tout;

static void t_newline(tout *t)
{
    t->space = 0;
    while (t->b.n > 0 && (t->b.p[t->b.n - 1] == ' ' || t->b.p[t->b.n - 1] == '\t') && !t->pre) t->b.n--;
    if (t->b.n > 0 && t->b.p[t->b.n - 1] != '\n' && buf_putc(&t->b, '\n')) t->err = 1;
}

static void t_hard(tout *t, char c)
{
    t->space = 0;
    if (buf_putc(&t->b, c)) t->err = 1;
}

static void t_text(tout *t, const char *s)
{
    if (!s) return;
    if (t->pre) {
        if (buf_puts(&t->b, s)) t->err = 1;
        return;
    }
    for (; *s; s++) {
        char c = *s;
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f') {
            t->space = 1;
            continue;
        }
        if (t->space && t->b.n > 0 && t->b.p[t->b.n - 1] != '\n' && buf_putc(&t->b, ' ')) t->err = 1;
        t->space = 0;
        if (buf_putc(&t->b, c)) t->err = 1;
    }
}

static int name_in(const xmlChar *name, const char *const *set)
{
    for (; *set; set++)
        if (strcasecmp((const char *)name, *set) == 0) return 1;
    return 0;
}

/* Walks the subtree at top, calling enter (returns 1 to descend) and leave. */
typedef int (*enter_fn)(tout *t, xmlNodePtr n);
typedef void (*leave_fn)(tout *t, xmlNodePtr n);

static void walk_tree(xmlNodePtr top, tout *t, enter_fn enter, leave_fn leave)
{
    xmlNodePtr n = top;
    while (n && !t->err) {
        if (enter(t, n) && n->children && n->type != XML_ENTITY_REF_NODE) {
            n = n->children;
            continue;
        }
        for (;;) {
            leave(t, n);
            if (n == top) return;
            if (n->next) {
                n = n->next;
                break;
            }
            n = n->parent;
            if (!n) return;
        }
    }
}

/* ---- HTML ---- */

static const char *const html_skip[] = {"script", "style", "template", "noscript", "head", NULL};
static const char *const html_block[] = {
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog",
    "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "frameset", "h1", "h2",
    "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "html", "li", "main", "menu", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul", "option", "legend",
    "title", NULL};

static int html_enter(tout *t, xmlNodePtr n)
{
    if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
        t_text(t, (const char *)n->content);
        return 0;
    }
    if (n->type == XML_DOCUMENT_NODE || n->type == XML_HTML_DOCUMENT_NODE) return 1;
    if (n->type != XML_ELEMENT_NODE || !n->name) return 0;
    if (name_in(n->name, html_skip)) return 0;
    if (strcasecmp((const char *)n->name, "br") == 0) {
        t_hard(t, '\n');
        return 0;
    }
    if (name_in(n->name, html_block)) t_newline(t);
    if (strcasecmp((const char *)n->name, "pre") == 0) t->pre++;
    return 1;
}

static void html_leave(tout *t, xmlNodePtr n)
{
    if (n->type != XML_ELEMENT_NODE || !n->name || name_in(n->name, html_skip)) return;
    if (strcasecmp((const char *)n->name, "pre") == 0 && t->pre > 0) t->pre--;
    if (name_in(n->name, html_block)) t_newline(t);
}

static xmlNodePtr find_elem(xmlNodePtr top, const char *name, int max_visits)
{
    xmlNodePtr n = top;
    while (n && max_visits-- > 0) {
        if (n->type == XML_ELEMENT_NODE && n->name && strcasecmp((const char *)n->name, name) == 0) return n;
        if (n->children && n->type != XML_ENTITY_REF_NODE) { n = n->children; continue; }
        while (n && n != top && !n->next) n = n->parent;
        if (!n || n == top) return NULL;
        n = n->next;
    }
    return NULL;
}

/* Plain text of an element (text children only, entity references skipped). */
static char *elem_text(xmlNodePtr e)
{
    tout t = {0};
    for (xmlNodePtr k = e ? e->children : NULL; k; k = k->next)
        if (k->type == XML_TEXT_NODE || k->type == XML_CDATA_SECTION_NODE) t_text(&t, (const char *)k->content);
    if (t.err) {
        buf_free(&t.b);
        return NULL;
    }
    return t.b.p;
}

/* Appends the readable text of an HTML page to out; sets *title once. */
static int html_append(const uint8_t *p, size_t n, buf *out, uint64_t *n_replaced, char **title, xerr *e)
{
    xmlDocPtr d = parse_html(p, n, e);
    if (!d) return 1;
    tout t = {0};
    walk_tree((xmlNodePtr)d, &t, html_enter, html_leave);
    if (title && !*title) *title = elem_text(find_elem((xmlNodePtr)d, "title", 10000));
    int rc = t.err ? DSV4_INGEST_ENOMEM : 0;
    if (!rc && t.b.n) rc = utf8_append_clean(out, t.b.p, t.b.n, n_replaced);
    buf_free(&t.b);
    xmlFreeDoc(d);
    return rc;
}

static int finish_markup(ing_ctx *c, docb *d, const xerr *e, const char *what)
{
    if (e->n && docb_warn(d, "%s not well-formed at %sline %d:%d: %s (%d errors; text recovered)", what, e->part,
                          e->line, e->col, e->msg, e->n))
        return DSV4_INGEST_ENOMEM;
    return doc_emit(c, d);
}

int html_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    docb d = {0};
    xerr e;
    char *title = NULL;
    d.format = DSV4_FORMAT_HTML;
    int rc = html_append(p, n, &d.text, &d.n_replaced, &title, &e);
    if (rc == 1)
        rc = n > MARKUP_MAX ? ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "%s", e.msg)
                            : ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "not readable as HTML");
    else if (rc == 0) {
        docb_set_meta(&d, title, NULL);
        /* HTML parsers recover from nearly everything real pages do, so its
         * "errors" are not worth a warning. */
        rc = doc_emit(c, &d);
    }
    free(title);
    docb_free(&d);
    return rc;
}

/* ---- generic XML ---- */

static int xml_enter(tout *t, xmlNodePtr n)
{
    if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
        t_text(t, (const char *)n->content);
        return 0;
    }
    return n->type == XML_ELEMENT_NODE || n->type == XML_DOCUMENT_NODE;
}

static void xml_leave(tout *t, xmlNodePtr n)
{
    if (n->type == XML_ELEMENT_NODE) t_newline(t);
}

static int xml_text_of(xmlDocPtr x, buf *out, uint64_t *n_replaced, enter_fn en, leave_fn le, int keep_spaces)
{
    tout t = {0};
    t.pre = keep_spaces;
    walk_tree((xmlNodePtr)x, &t, en, le);
    int rc = t.err ? DSV4_INGEST_ENOMEM : 0;
    if (!rc && t.b.n) rc = utf8_append_clean(out, t.b.p, t.b.n, n_replaced);
    buf_free(&t.b);
    return rc;
}

int xml_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    xerr e;
    xmlDocPtr x = parse_xml(p, n, &e);
    if (!x) {
        if (n > MARKUP_MAX) return ctx_skip(c, NULL, DSV4_SKIP_TOO_LARGE, "%s", e.msg);
        if (e.n) return ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "not well-formed XML at line %d:%d: %s", e.line, e.col, e.msg);
        return ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "not readable as XML");
    }
    docb d = {0};
    d.format = DSV4_FORMAT_XML;
    int rc = xml_text_of(x, &d.text, &d.n_replaced, xml_enter, xml_leave, 0);
    if (!rc) rc = finish_markup(c, &d, &e, "XML");
    xmlFreeDoc(x);
    docb_free(&d);
    return rc;
}

/* ---- metadata of containers ---- */

static void meta_from_xml(docb *d, const zentry *z, const char *title_name, const char *const *author_names)
{
    if (!z) return;
    xerr e;
    xmlDocPtr x = parse_xml((const uint8_t *)z->data.p, z->data.n, &e);
    if (!x) return;
    char *title = elem_text(find_elem((xmlNodePtr)x, title_name, 10000));
    char *author = NULL;
    for (; *author_names && !author; author_names++)
        author = elem_text(find_elem((xmlNodePtr)x, *author_names, 10000));
    docb_set_meta(d, title, author);
    free(title);
    free(author);
    xmlFreeDoc(x);
}

static const zentry *find_entry(const zentry *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0) return &v[i];
    return NULL;
}

static int cmp_zentry(const void *a, const void *b)
{
    return strcmp(((const zentry *)a)->name, ((const zentry *)b)->name);
}

/* ---- DOCX ---- */

static int docx_enter(tout *t, xmlNodePtr n)
{
    if (n->type == XML_TEXT_NODE) return 0; /* only w:t text counts */
    if (n->type == XML_DOCUMENT_NODE) return 1;
    if (n->type != XML_ELEMENT_NODE || !n->name) return 0;
    const char *nm = (const char *)n->name;
    if (strcmp(nm, "t") == 0) {
        for (xmlNodePtr k = n->children; k; k = k->next)
            if (k->type == XML_TEXT_NODE && k->content && buf_puts(&t->b, (const char *)k->content)) t->err = 1;
        return 0;
    }
    if (strcmp(nm, "tab") == 0) { t_hard(t, '\t'); return 0; }
    if (strcmp(nm, "br") == 0 || strcmp(nm, "cr") == 0) { t_hard(t, '\n'); return 0; }
    if (strcmp(nm, "delText") == 0 || strcmp(nm, "instrText") == 0) return 0;
    return 1;
}

static void docx_leave(tout *t, xmlNodePtr n)
{
    if (n->type == XML_ELEMENT_NODE && n->name && strcmp((const char *)n->name, "p") == 0) t_newline(t);
}

static int docx_want(const char *name)
{
    if (strncmp(name, "word/", 5) == 0) {
        const char *b = name + 5;
        if (strchr(b, '/')) return 0;
        return strcmp(b, "document.xml") == 0 || strcmp(b, "footnotes.xml") == 0 ||
               strcmp(b, "endnotes.xml") == 0 || (strncmp(b, "header", 6) == 0 && strstr(b, ".xml")) ||
               (strncmp(b, "footer", 6) == 0 && strstr(b, ".xml"));
    }
    return strcmp(name, "docProps/core.xml") == 0;
}

/* Parts of a container, parsed and appended in order; the first part that is
 * not well-formed gives the warning. */
static int append_xml_part(docb *d, const zentry *z, enter_fn en, leave_fn le, xerr *first, const char *what,
                           int *bad)
{
    xerr e;
    xmlDocPtr x = parse_xml((const uint8_t *)z->data.p, z->data.n, &e);
    if (e.n && !first->n) {
        *first = e;
        snprintf(first->part, sizeof first->part, "%.100s: ", z->name);
    }
    if (!x) {
        (*bad)++;
        return 0;
    }
    (void)what;
    int rc = xml_text_of(x, &d->text, &d->n_replaced, en, le, 1);
    xmlFreeDoc(x);
    return rc;
}

int docx_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    zentry *v = NULL;
    size_t nv = 0;
    int rc = zip_collect(c, p, n, docx_want, &v, &nv);
    if (rc) return rc < 0 ? rc : 0;
    docb d = {0};
    d.format = DSV4_FORMAT_DOCX;
    xerr first = {0};
    int bad = 0;
    const zentry *body = find_entry(v, nv, "word/document.xml");
    if (!body) {
        rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "DOCX without word/document.xml");
        goto done;
    }
    qsort(v, nv, sizeof *v, cmp_zentry);
    body = find_entry(v, nv, "word/document.xml");
    static const char *const authors[] = {"creator", NULL};
    meta_from_xml(&d, find_entry(v, nv, "docProps/core.xml"), "title", authors);
    for (size_t i = 0; rc == 0 && i < nv; i++)
        if (strncmp(v[i].name, "word/header", 11) == 0) rc = append_xml_part(&d, &v[i], docx_enter, docx_leave, &first, "DOCX", &bad);
    if (rc == 0) rc = append_xml_part(&d, body, docx_enter, docx_leave, &first, "DOCX", &bad);
    for (size_t i = 0; rc == 0 && i < nv; i++)
        if (strncmp(v[i].name, "word/footer", 11) == 0) rc = append_xml_part(&d, &v[i], docx_enter, docx_leave, &first, "DOCX", &bad);
    static const char *const notes[] = {"word/footnotes.xml", "word/endnotes.xml"};
    for (size_t i = 0; rc == 0 && i < 2; i++) {
        const zentry *z = find_entry(v, nv, notes[i]);
        if (z) rc = append_xml_part(&d, z, docx_enter, docx_leave, &first, "DOCX", &bad);
    }
    if (rc == 0) rc = finish_markup(c, &d, &first, "DOCX part");
done:
    zentries_free(v, nv);
    docb_free(&d);
    return rc;
}

/* ---- ODT ---- */

static int odt_enter(tout *t, xmlNodePtr n)
{
    if (n->type == XML_TEXT_NODE) {
        if (n->content && buf_puts(&t->b, (const char *)n->content)) t->err = 1;
        return 0;
    }
    if (n->type == XML_DOCUMENT_NODE) return 1;
    if (n->type != XML_ELEMENT_NODE || !n->name) return 0;
    const char *nm = (const char *)n->name;
    if (strcmp(nm, "tab") == 0) { t_hard(t, '\t'); return 0; }
    if (strcmp(nm, "line-break") == 0) { t_hard(t, '\n'); return 0; }
    if (strcmp(nm, "s") == 0) {
        xmlChar *cnt = xmlGetProp(n, (const xmlChar *)"c");
        int k = cnt ? atoi((const char *)cnt) : 1;
        xmlFree(cnt);
        if (k < 1) k = 1;
        if (k > 64) k = 64;
        for (int i = 0; i < k; i++) t_hard(t, ' ');
        return 0;
    }
    return 1;
}

static void odt_leave(tout *t, xmlNodePtr n)
{
    if (n->type == XML_ELEMENT_NODE && n->name &&
        (strcmp((const char *)n->name, "p") == 0 || strcmp((const char *)n->name, "h") == 0))
        t_newline(t);
}

static int odt_want(const char *name) { return strcmp(name, "content.xml") == 0 || strcmp(name, "meta.xml") == 0; }

int odt_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    zentry *v = NULL;
    size_t nv = 0;
    int rc = zip_collect(c, p, n, odt_want, &v, &nv);
    if (rc) return rc < 0 ? rc : 0;
    docb d = {0};
    d.format = DSV4_FORMAT_ODT;
    xerr first = {0};
    int bad = 0;
    const zentry *body = find_entry(v, nv, "content.xml");
    if (!body) {
        rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "ODT without content.xml");
        goto done;
    }
    static const char *const authors[] = {"creator", "initial-creator", NULL};
    meta_from_xml(&d, find_entry(v, nv, "meta.xml"), "title", authors);
    rc = append_xml_part(&d, body, odt_enter, odt_leave, &first, "ODT", &bad);
    if (rc == 0 && bad) rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "ODT content.xml not readable at line %d:%d: %s",
                                      first.line, first.col, first.msg);
    else if (rc == 0) rc = finish_markup(c, &d, &first, "ODT part");
done:
    zentries_free(v, nv);
    docb_free(&d);
    return rc;
}

/* ---- EPUB ---- */

static int epub_want(const char *name)
{
    static const char *const ext[] = {".opf", ".xhtml", ".html", ".htm", ".xml", NULL};
    size_t n = strlen(name);
    for (const char *const *e = ext; *e; e++) {
        size_t k = strlen(*e);
        if (n >= k && strcasecmp(name + n - k, *e) == 0) return 1;
    }
    return 0;
}

static char *xattr(xmlNodePtr n, const char *name)
{
    xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
    char *s = v ? strdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

/* dir of the OPF + href, with %XX decoded and "./" / "../" resolved. */
static char *resolve_href(const char *opf, const char *href)
{
    size_t dl = 0;
    const char *slash = strrchr(opf, '/');
    if (slash) dl = (size_t)(slash - opf) + 1;
    size_t hl = strlen(href);
    char *s = malloc(dl + hl + 1);
    if (!s) return NULL;
    memcpy(s, opf, dl);
    size_t k = dl;
    for (size_t i = 0; i < hl; i++) {
        if (href[i] == '#') break;
        if (href[i] == '%' && i + 2 < hl) {
            char hx[3] = {href[i + 1], href[i + 2], 0};
            char *end;
            long v = strtol(hx, &end, 16);
            if (*end == 0 && v > 0) {
                s[k++] = (char)v;
                i += 2;
                continue;
            }
        }
        s[k++] = href[i];
    }
    s[k] = 0;
    /* resolve "./" and "a/../" */
    char *out = malloc(k + 1);
    if (!out) { free(s); return NULL; }
    size_t o = 0;
    for (char *seg = s; seg && *seg;) {
        char *next = strchr(seg, '/');
        size_t len = next ? (size_t)(next - seg) : strlen(seg);
        if (len == 1 && seg[0] == '.') {
        } else if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            if (o > 0) o--;
            while (o > 0 && out[o - 1] != '/') o--;
        } else if (len) {
            memcpy(out + o, seg, len);
            o += len;
            if (next) out[o++] = '/';
        }
        seg = next ? next + 1 : NULL;
    }
    out[o] = 0;
    free(s);
    return out;
}

int epub_process(ing_ctx *c, const uint8_t *p, size_t n)
{
    zentry *v = NULL;
    size_t nv = 0;
    int rc = zip_collect(c, p, n, epub_want, &v, &nv);
    if (rc) return rc < 0 ? rc : 0;
    docb d = {0};
    d.format = DSV4_FORMAT_EPUB;
    xmlDocPtr cx = NULL, ox = NULL;
    char *opf = NULL;
    xerr e, first = {0};
    const zentry *z = find_entry(v, nv, "META-INF/container.xml");
    if (z && (cx = parse_xml((const uint8_t *)z->data.p, z->data.n, &e))) {
        xmlNodePtr rf = find_elem((xmlNodePtr)cx, "rootfile", 1000);
        if (rf) opf = xattr(rf, "full-path");
    }
    const zentry *oz = opf ? find_entry(v, nv, opf) : NULL;
    if (!oz || !(ox = parse_xml((const uint8_t *)oz->data.p, oz->data.n, &e))) {
        rc = ctx_skip(c, NULL, DSV4_SKIP_CORRUPT, "EPUB without a readable package document (%s)",
                      opf ? opf : "META-INF/container.xml names none");
        goto done;
    }
    char *title = elem_text(find_elem((xmlNodePtr)ox, "title", 10000));
    char *author = elem_text(find_elem((xmlNodePtr)ox, "creator", 10000));
    docb_set_meta(&d, title, author);
    free(title);
    free(author);
    xmlNodePtr manifest = find_elem((xmlNodePtr)ox, "manifest", 10000);
    xmlNodePtr spine = find_elem((xmlNodePtr)ox, "spine", 10000);
    size_t missing = 0;
    for (xmlNodePtr it = spine ? spine->children : NULL; it && rc == 0; it = it->next) {
        if (it->type != XML_ELEMENT_NODE || strcmp((const char *)it->name, "itemref") != 0) continue;
        char *idref = xattr(it, "idref");
        char *href = NULL;
        for (xmlNodePtr m = manifest ? manifest->children : NULL; idref && m && !href; m = m->next) {
            if (m->type != XML_ELEMENT_NODE) continue;
            char *id = xattr(m, "id");
            if (id && strcmp(id, idref) == 0) href = xattr(m, "href");
            free(id);
        }
        char *path = href ? resolve_href(opf, href) : NULL;
        const zentry *ch = path ? find_entry(v, nv, path) : NULL;
        if (!ch) missing++;
        else {
            size_t before = d.text.n;
            int r = html_append((const uint8_t *)ch->data.p, ch->data.n, &d.text, &d.n_replaced, NULL, &e);
            if (r == 1) missing++;
            else rc = r;
            if (rc == 0 && d.text.n > before && d.text.p[d.text.n - 1] != '\n') rc = buf_putc(&d.text, '\n');
        }
        free(idref);
        free(href);
        free(path);
    }
    if (rc == 0 && missing && docb_warn(&d, "%zu spine items missing or unreadable", missing)) rc = DSV4_INGEST_ENOMEM;
    if (rc == 0) rc = finish_markup(c, &d, &first, "EPUB part");
done:
    if (cx) xmlFreeDoc(cx);
    if (ox) xmlFreeDoc(ox);
    free(opf);
    zentries_free(v, nv);
    docb_free(&d);
    return rc;
}
