/* `dsv4-batch ingest PATH... [--json] [--text]`: runs ingest/ over the
 * paths and prints one record per document, so a user can see exactly what
 * a job would put in the model's context and where each piece came from.
 *
 * stdout carries documents only (a line per document, or a JSON object per
 * line with --json; --text adds the text as the model sees it), stderr
 * carries skips and warnings and a closing summary, so `> docs.jsonl` keeps
 * a clean file. Policy skips (ignored, binary, links) are only counted unless
 * --verbose. Exit status: 0 every input read completely, 1 something was
 * skipped for an error (corrupt, encrypted, guard, unreadable), 2 usage. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/dsv4_ingest.h"
#include "pipeline/dsv4_cli.h"

typedef struct ingest_cli {
    int json, text, verbose;
    const char *input; /* the path being read: a skip of it is always shown */
} ingest_cli;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4-batch ingest PATH... [--json] [--text] [options]\n\n"
            "Reads files, directory trees and archives the way a job does and prints\n"
            "one record per document (id, format, bytes, characters, pages, name).\n\n"
            "  --json              one JSON object per document and line\n"
            "  --text              also print each document's text as the model sees it\n"
            "  --include GLOB      only files matching GLOB (repeatable; ** allowed)\n"
            "  --exclude GLOB      never files matching GLOB (repeatable)\n"
            "  --no-gitignore      do not honour .gitignore and .git/info/exclude\n"
            "  --keep-markup       HTML and XML files as their source text\n"
            "  --max-depth N       archive nesting depth (default 3)\n"
            "  --max-file-bytes N  skip larger files in trees (default 268435456)\n"
            "  --max-ratio N       compression ratio guard (default 200)\n"
            "  --pdf-threads N     threads per PDF (default: one per CPU, up to 8)\n"
            "  --verbose           also report ignored, binary and link skips\n\n"
            "exit status: 0 all read, 1 something skipped for an error, 2 usage error.\n");
}

static json_t *doc_json(const dsv4_doc *d, int with_text)
{
    json_t *o = json_object(), *chain = json_array(), *warn = json_array();
    for (size_t i = 0; i < d->chain_len; i++) json_array_append_new(chain, json_string(d->chain[i]));
    for (size_t i = 0; i < d->n_warnings; i++) json_array_append_new(warn, json_string(d->warnings[i]));
    json_object_set_new(o, "id", json_string(d->id));
    json_object_set_new(o, "source", json_string(d->source));
    json_object_set_new(o, "chain", chain);
    json_object_set_new(o, "format", json_string(dsv4_doc_format_name(d->format)));
    json_object_set_new(o, "encoding", json_string(d->encoding));
    json_object_set_new(o, "title", d->title ? json_string(d->title) : json_null());
    json_object_set_new(o, "author", d->author ? json_string(d->author) : json_null());
    json_object_set_new(o, "bytes", json_integer((json_int_t)d->n_bytes));
    json_object_set_new(o, "chars", json_integer((json_int_t)d->n_chars));
    if (d->n_pages) {
        json_t *pages = json_array();
        for (size_t i = 0; i < d->n_pages; i++)
            json_array_append_new(pages, json_pack("{s:I,s:I,s:I}", "page", (json_int_t)(i + 1), "offset",
                                                   (json_int_t)d->pages[i].offset, "bytes",
                                                   (json_int_t)d->pages[i].n_bytes));
        json_object_set_new(o, "pages", pages);
        json_object_set_new(o, "pages_no_text", json_integer((json_int_t)d->n_pages_no_text));
    }
    json_object_set_new(o, "replaced", json_integer((json_int_t)d->n_replaced));
    json_object_set_new(o, "warnings", warn);
    if (with_text) json_object_set_new(o, "text", json_stringn(d->text, d->n_bytes));
    return o;
}

static int on_event(void *user, const dsv4_ingest_event *ev)
{
    const ingest_cli *cli = user;
    if (ev->kind != DSV4_INGEST_DOCUMENT) {
        if (cli->verbose || ev->kind == DSV4_INGEST_WARNING || dsv4_skip_reason_is_error(ev->reason) ||
            strcmp(ev->where, cli->input) == 0)
            fprintf(stderr, "dsv4-batch ingest: %s: %s%s\n", ev->where,
                    ev->kind == DSV4_INGEST_SKIPPED ? "skipped: " : "", ev->message);
        return 0;
    }
    const dsv4_doc *d = ev->doc;
    if (cli->json) {
        json_t *o = doc_json(d, cli->text);
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!s) return 1;
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
        return 0;
    }
    char *name = dsv4_doc_display_name(d);
    printf("%s %-5s %10llu bytes %10llu chars", d->id, dsv4_doc_format_name(d->format),
           (unsigned long long)d->n_bytes, (unsigned long long)d->n_chars);
    if (d->n_pages) printf(" %zu pages", d->n_pages);
    printf("  %s\n", name ? name : d->source);
    for (size_t i = 0; i < d->n_warnings; i++)
        fprintf(stderr, "dsv4-batch ingest: %s: %s\n", name ? name : d->source, d->warnings[i]);
    free(name);
    if (cli->text) {
        char *r;
        size_t n;
        if (dsv4_doc_render(d, &r, &n) != 0) return 1;
        fwrite(r, 1, n, stdout);
        free(r);
    }
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || v == 0) return -1;
    *out = v;
    return 0;
}

int dsv4_cmd_ingest(int argc, char **argv)
{
    ingest_cli cli = {0};
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    const char **inc = calloc((size_t)argc, sizeof *inc), **exc = calloc((size_t)argc, sizeof *exc);
    const char **paths = calloc((size_t)argc, sizeof *paths);
    size_t n_paths = 0;
    int status = DSV4_EXIT_USAGE;
    dsv4_ingest *s = NULL;
    if (!inc || !exc || !paths) {
        fprintf(stderr, "dsv4-batch ingest: out of memory\n");
        status = DSV4_EXIT_FAIL;
        goto done;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            status = DSV4_EXIT_OK;
            goto done;
        } else if (strcmp(a, "--json") == 0) cli.json = 1;
        else if (strcmp(a, "--text") == 0) cli.text = 1;
        else if (strcmp(a, "--verbose") == 0) cli.verbose = 1;
        else if (strcmp(a, "--no-gitignore") == 0) o.no_gitignore = 1;
        else if (strcmp(a, "--keep-markup") == 0) o.keep_markup = 1;
        else if ((strcmp(a, "--include") == 0 || strcmp(a, "--exclude") == 0) && i + 1 < argc) {
            if (a[2] == 'i') inc[o.n_include++] = argv[++i];
            else exc[o.n_exclude++] = argv[++i];
        } else if (strcmp(a, "--max-depth") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &v) == 0 && v <= 18) {
            o.max_depth = (int)v;
            i++;
        } else if (strcmp(a, "--max-file-bytes") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &v) == 0) {
            o.max_file_bytes = v;
            i++;
        } else if (strcmp(a, "--pdf-threads") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &v) == 0 && v <= 64) {
            o.pdf_threads = (int)v;
            i++;
        } else if (strcmp(a, "--max-ratio") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &v) == 0) {
            o.max_ratio = v;
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "dsv4-batch ingest: unknown option or bad value: %s (see --help)\n", a);
            goto done;
        } else {
            paths[n_paths++] = a;
        }
    }
    if (!n_paths) {
        usage(stderr);
        goto done;
    }
    o.include = inc;
    o.exclude = exc;
    char err[512];
    if (dsv4_ingest_open(&o, &s, err, sizeof err) != 0) {
        fprintf(stderr, "dsv4-batch %s\n", err);
        goto done;
    }
    status = DSV4_EXIT_OK;
    for (size_t i = 0; i < n_paths; i++) {
        cli.input = paths[i];
        int rc = dsv4_ingest_path(s, paths[i], on_event, &cli);
        if (rc != DSV4_INGEST_OK) status = DSV4_EXIT_FAIL;
        if (rc == DSV4_INGEST_ECANCELED || rc == DSV4_INGEST_ENOMEM) {
            fprintf(stderr, "dsv4-batch ingest: %s: %s\n", paths[i],
                    rc == DSV4_INGEST_ENOMEM ? "out of memory" : "stopped");
            break;
        }
    }
    fflush(stdout);
    dsv4_ingest_stats st;
    dsv4_ingest_get_stats(s, &st);
    fprintf(stderr, "dsv4-batch ingest: %llu documents, %llu bytes of text from %llu inputs",
            (unsigned long long)st.n_documents, (unsigned long long)st.n_bytes_text,
            (unsigned long long)st.n_inputs);
    for (int r = 1; r < DSV4_SKIP_N; r++)
        if (st.n_skipped[r])
            fprintf(stderr, "; %s %llu", dsv4_skip_reason_name((dsv4_skip_reason)r), (unsigned long long)st.n_skipped[r]);
    if (st.n_pages_no_text) fprintf(stderr, "; pages without text %llu", (unsigned long long)st.n_pages_no_text);
    if (st.n_replaced) fprintf(stderr, "; invalid sequences replaced %llu", (unsigned long long)st.n_replaced);
    if (st.n_fallback_1252) fprintf(stderr, "; decoded as windows-1252 %llu", (unsigned long long)st.n_fallback_1252);
    fprintf(stderr, "\n");
done:
    dsv4_ingest_close(s);
    free(inc);
    free(exc);
    free(paths);
    return status;
}
