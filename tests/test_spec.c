/* The job spec (pipeline/job_spec.c): every field of a full spec read back,
 * the defaults of a minimal one, and every bad spec in tests/fixtures/specs/
 * rejected with exactly the messages (file:line:column) its trailing
 * "# error:" comments list ({dir} there stands for the fixture directory). */
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline/job_spec.h"
#include "tests/check.h"

#define FIX "tests/fixtures/specs"

static char fixdir[PATH_MAX];

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

static void path_in(char *out, size_t len, const char *rel)
{
    if (snprintf(out, len, "%s/%s", fixdir, rel) >= (int)len) out[0] = 0;
}

static void good_full_values(void)
{
    char err[4096], p[PATH_MAX];
    dsv4_job_spec *s = NULL;
    int rc = dsv4_spec_load(FIX "/good-full.yaml", DSV4_SPEC_CHECK_PATHS, &s, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    path_in(p, sizeof p, "good-full.yaml");
    CHECK(s->path && !strcmp(s->path, p));
    CHECK(s->source && strstr(s->source, "name: full-example"));
    CHECK(!strcmp(s->name, "full-example"));
    path_in(p, sizeof p, "inputs/repo");
    CHECK(s->model && !strcmp(s->model, p));
    CHECK(s->priority == 7);
    CHECK(s->max_attempts == 5);
    CHECK(s->n_inputs == 4);
    if (s->n_inputs == 4) {
        path_in(p, sizeof p, "inputs/notes.txt");
        CHECK(s->inputs[0].kind == DSV4_INPUT_PATH && !strcmp(s->inputs[0].path, p) && !s->inputs[0].is_glob);
        CHECK(s->inputs[0].limits.max_total_bytes == 500000000); /* inherited from the job's limits */
        path_in(p, sizeof p, "inputs/**/*.md");
        CHECK(!strcmp(s->inputs[1].path, p) && s->inputs[1].is_glob);
        CHECK(s->inputs[1].n_include == 1 && !strcmp(s->inputs[1].include[0], "*.md"));
        CHECK(s->inputs[1].limits.max_file_bytes == 1048576);
        CHECK(s->inputs[1].limits.max_depth == 1);
        CHECK(s->inputs[1].limits.max_entry_bytes == 10485760);
        CHECK(s->inputs[2].kind == DSV4_INPUT_REPO && s->inputs[2].n_exclude == 2);
        CHECK(s->inputs[2].n_exclude == 2 && !strcmp(s->inputs[2].exclude[1], "*.lock"));
        path_in(p, sizeof p, "inputs/notes.txt");
        CHECK(s->inputs[3].kind == DSV4_INPUT_PATH && !strcmp(s->inputs[3].path, p));
    }
    CHECK(s->context.max_tokens == 65536);
    CHECK(s->context.order == DSV4_ORDER_INPUT);
    CHECK(s->context.on_overflow == DSV4_OVERFLOW_TRUNCATE);
    CHECK(s->system && !strcmp(s->system, "You are a meticulous contracts analyst."));
    CHECK(s->thinking == DSV4_THINK_HIGH);
    CHECK(s->n_queries == 2);
    if (s->n_queries == 2) {
        CHECK(!strcmp(s->queries[0].id, "termination"));
        CHECK(s->queries[0].thinking == DSV4_THINK_HIGH);
        CHECK(s->queries[0].max_new_tokens == 512);
        CHECK(!strcmp(s->queries[1].id, "parties.v2"));
        CHECK(!strcmp(s->queries[1].prompt, "Who are the parties?\nAnswer in a table.\n"));
        CHECK(s->queries[1].thinking == DSV4_THINK_NONE);
        CHECK(s->queries[1].max_new_tokens == 64);
    }
    CHECK(s->generation.max_new_tokens == 512);
    CHECK(s->generation.temperature == 0.7);
    CHECK(s->generation.top_p == 0.9);
    CHECK(s->generation.seed == 42);
    path_in(p, sizeof p, "out/{name}-{date}.jsonl");
    CHECK(s->output.jsonl && !strcmp(s->output.jsonl, p));
    path_in(p, sizeof p, "out/{name}-{id}.md");
    CHECK(s->output.markdown && !strcmp(s->output.markdown, p));
    CHECK(s->cache.enabled == 0);
    CHECK(s->cache.max_size == (int64_t)2 << 30);
    CHECK(s->cache.span_tokens == 1024);
    CHECK(s->limits.max_total_bytes == 500000000);
    CHECK(s->limits.max_entry_bytes == 10485760);
    CHECK(s->limits.max_ratio == 50.5);
    CHECK(s->limits.max_entries == 1000);
    CHECK(s->limits.max_depth == 2);
    CHECK(s->limits.max_file_bytes == 2097152);

    char out[PATH_MAX];
    /* 2026-01-02T03:04:05Z */
    CHECK(dsv4_spec_output_path(s->output.jsonl, s->name, 17, 1767323045000LL, out, sizeof out, err, sizeof err) == 0);
    path_in(p, sizeof p, "out/full-example-2026-01-02.jsonl");
    CHECKF(!strcmp(out, p), "%s", out);
    CHECK(dsv4_spec_output_path(s->output.markdown, s->name, 17, 0, out, sizeof out, err, sizeof err) == 0);
    path_in(p, sizeof p, "out/full-example-17.md");
    CHECKF(!strcmp(out, p), "%s", out);
    CHECK(dsv4_spec_output_path(s->output.jsonl, s->name, 17, 0, out, 10, err, sizeof err) == DSV4_SPEC_EINVAL);
    dsv4_spec_free(s);
}

static void good_minimal_defaults(void)
{
    char err[4096], p[PATH_MAX];
    dsv4_job_spec *s = NULL;
    int rc = dsv4_spec_load(FIX "/good-minimal.yaml", DSV4_SPEC_CHECK_PATHS, &s, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    CHECK(!strcmp(s->name, "good-minimal")); /* from the file name */
    CHECK(s->model == NULL);                 /* the embedded demo model */
    CHECK(s->priority == 0 && s->max_attempts == 3);
    CHECK(s->n_inputs == 1);
    path_in(p, sizeof p, "inputs");
    CHECK(s->n_inputs == 1 && !strcmp(s->inputs[0].path, p));
    CHECK(s->inputs[0].limits.max_total_bytes == (int64_t)1 << 30);
    CHECK(s->inputs[0].limits.max_entry_bytes == (int64_t)256 << 20);
    CHECK(s->inputs[0].limits.max_ratio == 200);
    CHECK(s->inputs[0].limits.max_entries == 100000);
    CHECK(s->inputs[0].limits.max_depth == 3);
    CHECK(s->inputs[0].limits.max_file_bytes == (int64_t)64 << 20);
    CHECK(s->context.max_tokens == 1000000 && s->context.order == DSV4_ORDER_PATH &&
          s->context.on_overflow == DSV4_OVERFLOW_ERROR);
    CHECK(s->system == NULL && s->thinking == DSV4_THINK_NONE);
    CHECK(s->n_queries == 1 && s->queries[0].max_new_tokens == 1024 && s->queries[0].thinking == DSV4_THINK_NONE);
    CHECK(s->generation.max_new_tokens == 1024 && s->generation.temperature == 0 && s->generation.top_p == 1.0 &&
          s->generation.seed == 1);
    CHECK(s->output.jsonl == NULL && s->output.markdown == NULL);
    CHECK(s->cache.enabled == 1 && s->cache.max_size == (int64_t)50 << 30 && s->cache.span_tokens == 4096);
    dsv4_spec_free(s);
}

/* The expected messages: the file's "# error: " lines, each prefixed with
 * the path and with {dir} replaced. */
static void expected_errors(const char *path, const char *text, char *out, size_t len)
{
    size_t used = 0;
    out[0] = 0;
    for (const char *l = text; l && *l;) {
        const char *eol = strchr(l, '\n');
        size_t ll = eol ? (size_t)(eol - l) : strlen(l);
        if (ll > 9 && !strncmp(l, "# error: ", 9)) {
            char line[2048];
            snprintf(line, sizeof line, "%.*s", (int)(ll - 9), l + 9);
            char *d = strstr(line, "{dir}");
            char fixed[4096];
            int k = d ? snprintf(fixed, sizeof fixed, "%.*s%s%s", (int)(d - line), line, fixdir, d + 5)
                      : snprintf(fixed, sizeof fixed, "%s", line);
            if (k < 0 || (size_t)k >= sizeof fixed) fixed[0] = 0;
            k = snprintf(out + used, len - used, "%s%s:%s", used ? "\n" : "", path, fixed);
            if (k > 0 && (size_t)k < len - used) used += (size_t)k;
        }
        l = eol ? eol + 1 : NULL;
    }
}

static void bad_specs_exact_errors(void)
{
    glob_t g;
    int n_checked = 0;
    if (glob(FIX "/bad-*.yaml", 0, NULL, &g) != 0) {
        CHECKF(0, "no bad specs found in %s", FIX);
        return;
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        char *text = read_all(path);
        char want[8192], err[8192] = "";
        CHECKF(text != NULL, "cannot read %s", path);
        if (!text) continue;
        expected_errors(path, text, want, sizeof want);
        CHECKF(want[0], "%s lists no '# error:' line", path);
        dsv4_job_spec *s = NULL;
        int rc = dsv4_spec_load(path, DSV4_SPEC_CHECK_PATHS, &s, err, sizeof err);
        CHECKF(rc == DSV4_SPEC_EINVAL, "%s: rc %d", path, rc);
        CHECKF(s == NULL, "%s: a spec came back", path);
        CHECKF(!strcmp(err, want), "%s:\n got: %s\nwant: %s", path, err, want);
        dsv4_spec_free(s);
        free(text);
        n_checked++;
    }
    globfree(&g);
    CHECKF(n_checked >= 19, "only %d bad specs", n_checked);
}

static void json_round_trip(void)
{
    char err[4096];
    dsv4_job_spec *s = NULL, *back = NULL;
    int rc = dsv4_spec_load(FIX "/good-full.yaml", DSV4_SPEC_CHECK_PATHS, &s, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    json_t *j = dsv4_spec_to_json(s);
    CHECK(j != NULL);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    CHECK(text && strstr(text, "\"thinking\":\"high\""));
    rc = dsv4_spec_from_json(text, &back, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (!rc) {
        json_t *j2 = dsv4_spec_to_json(back);
        char *text2 = j2 ? json_dumps(j2, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        CHECKF(text2 && !strcmp(text, text2), "\n%s\n%s", text, text2 ? text2 : "(null)");
        CHECK(back->n_queries == 2 && back->queries[1].max_new_tokens == 64);
        CHECK(back->n_inputs == 4 && back->inputs[1].is_glob && back->inputs[1].limits.max_depth == 1);
        CHECK(back->source == NULL);
        free(text2);
        json_decref(j2);
    }
    dsv4_spec_free(back);
    back = NULL;
    CHECK(dsv4_spec_from_json("{\"version\": 99}", &back, err, sizeof err) == DSV4_SPEC_EINVAL && back == NULL);
    CHECK(dsv4_spec_from_json("not json", &back, err, sizeof err) == DSV4_SPEC_EINVAL);
    free(text);
    json_decref(j);
    dsv4_spec_free(s);
}

static void paths_resolve_against_base(void)
{
    static const char yaml[] = "name: t\n"
                               "inputs:\n"
                               "  - path: a/../b/./c.pdf\n"
                               "  - path: ~/docs\n"
                               "  - repo: /abs//repo/\n"
                               "queries: [{id: q, prompt: p}]\n";
    char err[4096];
    dsv4_job_spec *s = NULL;
    setenv("HOME", "/home/tester", 1);
    int rc = dsv4_spec_parse(yaml, sizeof yaml - 1, "inline.yaml", "/base/dir", 0, &s, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    if (rc) return;
    CHECK(s->path == NULL);
    CHECKF(!strcmp(s->inputs[0].path, "/base/dir/b/c.pdf"), "%s", s->inputs[0].path);
    CHECKF(!strcmp(s->inputs[1].path, "/home/tester/docs"), "%s", s->inputs[1].path);
    CHECKF(!strcmp(s->inputs[2].path, "/abs/repo"), "%s", s->inputs[2].path);
    dsv4_spec_free(s);
    /* without CHECK_PATHS nothing is looked up on disk; with it, it is */
    s = NULL;
    rc = dsv4_spec_parse(yaml, sizeof yaml - 1, "inline.yaml", "/base/dir", DSV4_SPEC_CHECK_PATHS, &s, err, sizeof err);
    CHECK(rc == DSV4_SPEC_EINVAL && strstr(err, "inline.yaml:3:11: input 'a/../b/./c.pdf' does not exist"));
}

static void unreadable_and_oversized_files(void)
{
    char err[4096];
    dsv4_job_spec *s = NULL;
    CHECK(dsv4_spec_load(FIX "/no-such-file.yaml", 0, &s, err, sizeof err) == DSV4_SPEC_EIO);
    CHECK(strstr(err, "no-such-file.yaml: cannot open") != NULL);
    char tmpl[] = "/tmp/dsv4-spec-XXXXXX";
    int fd = mkstemp(tmpl);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK(ftruncate(fd, DSV4_SPEC_MAX_FILE_BYTES + 1) == 0);
    close(fd);
    CHECK(dsv4_spec_load(tmpl, 0, &s, err, sizeof err) == DSV4_SPEC_EIO);
    CHECKF(strstr(err, "is more than a job file may hold") != NULL, "%s", err);
    unlink(tmpl);
    CHECK(dsv4_spec_load(FIX, 0, &s, err, sizeof err) == DSV4_SPEC_EIO); /* a directory */
    CHECK(s == NULL);
}

int main(void)
{
    if (!realpath(FIX, fixdir)) {
        printf("FAIL setup: %s not found (run from the repository root)\n", FIX);
        return 1;
    }
    RUN(good_full_values);
    RUN(good_minimal_defaults);
    RUN(bad_specs_exact_errors);
    RUN(json_round_trip);
    RUN(paths_resolve_against_base);
    RUN(unreadable_and_oversized_files);
    CHECK_EXIT();
}
