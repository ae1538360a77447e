/* `dsv4-batch ingest` as a real process: exit codes 0/1/2, the record
 * lines, --text with the documented headers, --json parsed back with
 * jansson, and errors naming the file on stderr. */
#include <jansson.h>

#include "tests/check.h"
#include "tests/test_ingest_util.h"

static char *dir;

static int run(const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch ingest %s > %s/out 2> %s/err", args, dir, dir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *out_text(const char *which)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, which);
    char *s = read_all(p, NULL);
    return s ? s : strdup("");
}

static void exit_codes(void)
{
    char args[1024];
    CHECK(run("") == 2);
    CHECK(run("--bogus x") == 2);
    CHECK(run("--max-depth nope x") == 2);
    CHECK(run("--help") == 0);
    char *o = out_text("out");
    CHECK(strstr(o, "usage: dsv4-batch ingest PATH...") != NULL);
    free(o);

    snprintf(args, sizeof args, "%s/good.txt %s/tree", dir, dir);
    CHECK(run(args) == 0);
    o = out_text("out");
    char want[700];
    snprintf(want, sizeof want, " 6 chars  %s/good.txt\n", dir);
    CHECKF(strstr(o, want) != NULL, "%s", o);
    snprintf(want, sizeof want, "%s/tree/x.md\n", dir);
    CHECK(strstr(o, want) != NULL);
    free(o);
    char *e = out_text("err");
    CHECK(strstr(e, "2 documents") != NULL);
    free(e);

    snprintf(args, sizeof args, "%s/good.txt %s/bad.bin", dir, dir);
    CHECK(run(args) == 1);
    e = out_text("err");
    snprintf(want, sizeof want, "%s/bad.bin: skipped: binary file", dir);
    CHECKF(strstr(e, want) != NULL, "%s", e);
    free(e);

    snprintf(args, sizeof args, "%s/missing.txt", dir);
    CHECK(run(args) == 1);
    e = out_text("err");
    CHECK(strstr(e, "missing.txt: skipped: cannot open: No such file or directory") != NULL);
    free(e);
}

static void text_and_json(void)
{
    char args[1024];
    snprintf(args, sizeof args, "--text %s/good.txt", dir);
    CHECK(run(args) == 0);
    char *o = out_text("out");
    char want[700];
    snprintf(want, sizeof want, "=== %s/good.txt ===\nhello\n\n", dir);
    CHECKF(strstr(o, want) != NULL, "%s", o);
    free(o);

    snprintf(args, sizeof args, "--json --text %s/good.txt %s/docs.zip", dir, dir);
    CHECK(run(args) == 0);
    o = out_text("out");
    int n_lines = 0;
    for (char *line = strtok(o, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        CHECKF(j != NULL, "line %d: %s", n_lines + 1, je.text);
        if (!j) continue;
        const char *fmt = json_string_value(json_object_get(j, "format"));
        const char *text = json_string_value(json_object_get(j, "text"));
        json_t *chain = json_object_get(j, "chain");
        CHECK(fmt && text && json_is_array(chain));
        CHECK(strlen(json_string_value(json_object_get(j, "id"))) == 16);
        if (n_lines == 1) {
            CHECK(json_array_size(chain) == 1 && strcmp(json_string_value(json_array_get(chain, 0)), "in/x.txt") == 0);
            CHECK(strcmp(text, "zipped\n") == 0);
            CHECK(json_integer_value(json_object_get(j, "bytes")) == 7);
        }
        json_decref(j);
        n_lines++;
    }
    CHECK(n_lines == 2);
    free(o);
}

int main(void)
{
    dir = make_tmpdir();
    if (!dir || sh("cd %s && printf 'hello\\n' > good.txt && printf 'a\\000b' > bad.bin && mkdir -p tree in && "
                   "echo md > tree/x.md && echo zipped > in/x.txt && zip -q docs.zip in/x.txt", dir) != 0) {
        printf("FAIL setup\n");
        return 1;
    }
    RUN(exit_codes);
    RUN(text_and_json);
    remove_tree(dir);
    CHECK_EXIT();
}
