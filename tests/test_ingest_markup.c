/* ingest/ markup: HTML (blocks on lines, scripts/styles dropped, <pre>
 * kept, title), generic XML with XXE and "billion laughs" attempts that must
 * not expand, malformed XML with its line:column warning, and DOCX, ODT and
 * EPUB containers built at test time with the zip tool from hand-written
 * parts (headers/footers, spans of spaces, spine order unlike file order),
 * plus broken containers. */
#include "tests/check.h"
#include "tests/test_ingest_util.h"

static char *dir;

static const char *P(const char *name)
{
    static char p[8][600];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static const dsv4_doc *one(collected *c, int want_rc)
{
    CHECKF(c->rc == want_rc, "rc %d", c->rc);
    CHECKF(c->n_docs == 1, "%zu docs", c->n_docs);
    if (c->n_docs != 1) dump_collected(c);
    return c->n_docs == 1 ? c->docs[0] : NULL;
}

static void html_to_lines(void)
{
    const char html[] =
        "<!DOCTYPE html><html><head><title> Quarterly  report </title><style>p{color:red}</style>"
        "<script>var secret = 1;</script></head><body><h1>Results</h1><p>Revenue   grew\n by <b>12%</b>.</p>"
        "<ul><li>one</li><li>two &amp; three</li></ul><table><tr><th>k</th><td>v</td></tr></table>"
        "<pre>a  b\n  c</pre><div>x<br>y</div><noscript>no</noscript></body></html>";
    collected c;
    ingest_collect("r.html", html, sizeof html - 1, DSV4_FORMAT_AUTO, NULL, &c);
    const dsv4_doc *d = one(&c, DSV4_INGEST_OK);
    if (d) {
        CHECKF(strcmp(d->text, "Results\nRevenue grew by 12%.\none\ntwo & three\nk\nv\na  b\n  c\nx\ny\n") == 0,
               "text:\n%s", d->text);
        CHECK(d->format == DSV4_FORMAT_HTML);
        CHECK(d->title && strcmp(d->title, "Quarterly report") == 0);
    }
    collected_free(&c);
    /* keep_markup: the source text, for code repositories */
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    o.keep_markup = 1;
    ingest_collect("r.html", "<p>x</p>", 8, DSV4_FORMAT_AUTO, &o, &c);
    d = one(&c, DSV4_INGEST_OK);
    if (d) CHECK(d->format == DSV4_FORMAT_TEXT && strcmp(d->text, "<p>x</p>") == 0);
    collected_free(&c);
    /* Latin-1 HTML with a meta charset is decoded by libxml2, not mangled */
    const char latin[] = "<html><head><meta charset=\"iso-8859-1\"></head><body><p>caf\xE9</p></body></html>";
    ingest_collect("l.htm", latin, sizeof latin - 1, DSV4_FORMAT_AUTO, NULL, &c);
    d = one(&c, DSV4_INGEST_OK);
    if (d) CHECKF(strcmp(d->text, "caf\xC3\xA9\n") == 0, "%s", d->text);
    collected_free(&c);
}

static void xml_safe_and_malformed(void)
{
    const char xxe[] = "<?xml version=\"1.0\"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n"
                       "<r><a>before &x; after</a><b>second</b></r>";
    collected c;
    ingest_collect("x.xml", xxe, sizeof xxe - 1, DSV4_FORMAT_AUTO, NULL, &c);
    const dsv4_doc *d = one(&c, DSV4_INGEST_OK);
    if (d) {
        CHECKF(strcmp(d->text, "before after\nsecond\n") == 0, "%s", d->text);
        CHECK(strstr(d->text, "root:") == NULL);
    }
    collected_free(&c);
    /* 10^10 expansions if entities were substituted */
    char lol[4096];
    int k = snprintf(lol, sizeof lol, "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY l0 \"lol\">");
    for (int i = 1; i <= 10; i++)
        k += snprintf(lol + k, sizeof lol - (size_t)k,
                      "<!ENTITY l%d \"&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;\">", i, i - 1, i - 1, i - 1,
                      i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    k += snprintf(lol + k, sizeof lol - (size_t)k, "]><l>x &l10; y</l>");
    ingest_collect("lol.xml", lol, (size_t)k, DSV4_FORMAT_AUTO, NULL, &c);
    CHECK(c.rc == DSV4_INGEST_OK || c.rc == DSV4_INGEST_INCOMPLETE);
    for (size_t i = 0; i < c.n_docs; i++) CHECK(c.docs[i]->n_bytes < 1000);
    collected_free(&c);

    const char bad[] = "<?xml version=\"1.0\"?>\n<r>\n  <a>kept text</r>";
    ingest_collect("bad.xml", bad, sizeof bad - 1, DSV4_FORMAT_AUTO, NULL, &c);
    d = one(&c, DSV4_INGEST_OK);
    if (d) {
        CHECK(strstr(d->text, "kept text") != NULL);
        CHECKF(d->n_warnings == 1 && strstr(d->warnings[0], "XML not well-formed at line 3:"), "%s",
               d->n_warnings ? d->warnings[0] : "(none)");
    }
    collected_free(&c);
    const char worse[] = "<?xml version=\"1.0\"?><";
    ingest_collect("worse.xml", worse, sizeof worse - 1, DSV4_FORMAT_AUTO, NULL, &c);
    CHECK(c.n_docs == 0 ? find_event(&c, DSV4_SKIP_CORRUPT, "worse.xml", "line 1:") != NULL
                        : c.docs[0]->n_warnings == 1);
    collected_free(&c);
}

static int make_containers(void)
{
    return sh(
        "cd %s && mkdir -p dx/word dx/docProps dx/_rels && cd dx && "
        "printf '<?xml version=\"1.0\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"/>' > '[Content_Types].xml' && "
        "W='xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"' && "
        "printf '<?xml version=\"1.0\"?><w:document %%s><w:body><w:p><w:r><w:t>First paragraph</w:t><w:tab/><w:t xml:space=\"preserve\"> after tab</w:t></w:r></w:p>"
        "<w:p><w:r><w:t>line1</w:t><w:br/><w:t>line2</w:t><w:delText>deleted</w:delText></w:r></w:p>"
        "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>cell A</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>cell B</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"
        "</w:body></w:document>' \"$W\" > word/document.xml && "
        "printf '<?xml version=\"1.0\"?><w:hdr %%s><w:p><w:r><w:t>Header text</w:t></w:r></w:p></w:hdr>' \"$W\" > word/header1.xml && "
        "printf '<?xml version=\"1.0\"?><w:ftr %%s><w:p><w:r><w:t>Footer text</w:t></w:r></w:p></w:ftr>' \"$W\" > word/footer1.xml && "
        "printf '<?xml version=\"1.0\"?><cp:coreProperties xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" "
        "xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><dc:title>Supply Contract</dc:title><dc:creator>Jane Roe</dc:creator></cp:coreProperties>' > docProps/core.xml && "
        "zip -q -X -r ../c.docx '[Content_Types].xml' word docProps && cd .. && "
        "mkdir -p od && cd od && printf 'application/vnd.oasis.opendocument.text' > mimetype && "
        "T='xmlns:office=\"urn:oasis:names:tc:opendocument:xmlns:office:1.0\" xmlns:text=\"urn:oasis:names:tc:opendocument:xmlns:text:1.0\"' && "
        "printf '<?xml version=\"1.0\"?><office:document-content %%s><office:body><office:text><text:h>Title line</text:h>"
        "<text:p>a<text:s text:c=\"3\"/>b<text:tab/>c<text:line-break/>d</text:p><text:p>second <text:span>para</text:span></text:p>"
        "</office:text></office:body></office:document-content>' \"$T\" > content.xml && "
        "printf '<?xml version=\"1.0\"?><office:document-meta xmlns:office=\"urn:oasis:names:tc:opendocument:xmlns:office:1.0\" "
        "xmlns:dc=\"http://purl.org/dc/elements/1.1/\" xmlns:meta=\"urn:oasis:names:tc:opendocument:xmlns:meta:1.0\"><office:meta>"
        "<dc:title>ODT title</dc:title><meta:initial-creator>Max</meta:initial-creator></office:meta></office:document-meta>' > meta.xml && "
        "zip -q -X -0 ../c.odt mimetype && zip -q -X ../c.odt content.xml meta.xml && cd .. && "
        "mkdir -p ep/META-INF ep/OEBPS && cd ep && printf 'application/epub+zip' > mimetype && "
        "printf '<?xml version=\"1.0\"?><container xmlns=\"urn:oasis:names:tc:opendocument:xmlns:container\" version=\"1.0\"><rootfiles>"
        "<rootfile full-path=\"OEBPS/content.opf\" media-type=\"application/oebps-package+xml\"/></rootfiles></container>' > META-INF/container.xml && "
        "printf '<?xml version=\"1.0\"?><package xmlns=\"http://www.idpf.org/2007/opf\" version=\"3.0\"><metadata xmlns:dc=\"http://purl.org/dc/elements/1.1/\">"
        "<dc:title>The Book</dc:title><dc:creator>A. Writer</dc:creator></metadata><manifest>"
        "<item id=\"c1\" href=\"ch1.xhtml\" media-type=\"application/xhtml+xml\"/><item id=\"c2\" href=\"text/ch%%%%202.xhtml\" media-type=\"application/xhtml+xml\"/>"
        "</manifest><spine><itemref idref=\"c2\"/><itemref idref=\"c1\"/></spine></package>' > OEBPS/content.opf && mkdir -p OEBPS/text && "
        "printf '<html xmlns=\"http://www.w3.org/1999/xhtml\"><body><h1>Chapter One</h1><p>one text</p></body></html>' > OEBPS/ch1.xhtml && "
        "printf '<html xmlns=\"http://www.w3.org/1999/xhtml\"><body><h1>Chapter Two</h1><p>two text</p></body></html>' > 'OEBPS/text/ch 2.xhtml' && "
        "zip -q -X -0 ../c.epub mimetype && zip -q -X -r ../c.epub META-INF OEBPS && cd .. && "
        "cp c.docx noext && zip -q -X broken.docx od/content.xml",
        dir);
}

static void docx_odt_epub(void)
{
    collected c;
    ingest_collect(P("c.docx"), NULL, 0, 0, NULL, &c);
    const dsv4_doc *d = one(&c, DSV4_INGEST_OK);
    if (d) {
        CHECKF(strcmp(d->text, "Header text\nFirst paragraph\t after tab\nline1\nline2\ncell A\ncell B\nFooter text\n") == 0,
               "%s", d->text);
        CHECK(d->format == DSV4_FORMAT_DOCX);
        CHECK(d->title && strcmp(d->title, "Supply Contract") == 0);
        CHECK(d->author && strcmp(d->author, "Jane Roe") == 0);
    }
    collected_free(&c);
    /* known by its parts, whatever the name */
    ingest_collect(P("noext"), NULL, 0, 0, NULL, &c);
    d = one(&c, DSV4_INGEST_OK);
    if (d) CHECK(d->format == DSV4_FORMAT_DOCX && strstr(d->text, "cell B"));
    collected_free(&c);

    ingest_collect(P("c.odt"), NULL, 0, 0, NULL, &c);
    d = one(&c, DSV4_INGEST_OK);
    if (d) {
        CHECKF(strcmp(d->text, "Title line\na   b\tc\nd\nsecond para\n") == 0, "%s", d->text);
        CHECK(d->format == DSV4_FORMAT_ODT);
        CHECK(d->title && strcmp(d->title, "ODT title") == 0);
        CHECK(d->author && strcmp(d->author, "Max") == 0);
    }
    collected_free(&c);

    ingest_collect(P("c.epub"), NULL, 0, 0, NULL, &c);
    d = one(&c, DSV4_INGEST_OK);
    if (d) {
        CHECKF(strcmp(d->text, "Chapter Two\ntwo text\nChapter One\none text\n") == 0, "%s", d->text);
        CHECK(d->format == DSV4_FORMAT_EPUB);
        CHECK(d->title && strcmp(d->title, "The Book") == 0);
        CHECK(d->author && strcmp(d->author, "A. Writer") == 0);
    }
    collected_free(&c);
}

static void broken_containers(void)
{
    collected c;
    CHECK(ingest_collect(P("broken.docx"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0 && find_event(&c, DSV4_SKIP_CORRUPT, "broken.docx", "without word/document.xml") != NULL);
    collected_free(&c);
    size_t n;
    char *z = read_all(P("c.docx"), &n);
    CHECK(z != NULL);
    if (z) {
        for (int k = 1; k < 4; k++) {
            int rc = ingest_collect("cut.docx", z, n * (size_t)k / 4, DSV4_FORMAT_AUTO, NULL, &c);
            CHECKF(rc == DSV4_INGEST_INCOMPLETE || rc == DSV4_INGEST_OK, "rc %d", rc);
            CHECK(c.n_docs == 1 || find_event(&c, DSV4_SKIP_CORRUPT, "cut.docx", NULL) != NULL);
            collected_free(&c);
        }
    }
    free(z);
    /* a DOCX inside a zip is read as a DOCX, with its chain */
    CHECK(sh("cd %s && zip -q outer.zip c.docx c.epub", dir) == 0);
    CHECK(ingest_collect(P("outer.zip"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    char nm[700];
    snprintf(nm, sizeof nm, "%s :: c.epub", P("outer.zip"));
    const dsv4_doc *d = find_doc(&c, nm);
    CHECK(d && d->format == DSV4_FORMAT_EPUB && c.n_docs == 2);
    collected_free(&c);
}

int main(void)
{
    dir = make_tmpdir();
    if (!dir || make_containers() != 0) {
        printf("FAIL setup\n");
        return 1;
    }
    RUN(html_to_lines);
    RUN(xml_safe_and_malformed);
    RUN(docx_odt_epub);
    RUN(broken_containers);
    remove_tree(dir);
    CHECK_EXIT();
}
