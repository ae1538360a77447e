/* ingest/ directory trees: a repository-like tree made at test time with
 * .gitignore files at two levels (negation, directory-only and anchored
 * rules, `**`), .git/info/exclude, a .git directory, binary and oversized
 * files, symlinks inside, outside and into a loop, a fifo; checked for the
 * exact byte-wise order of documents, every skip with its reason, globs, and
 * identical bytes on a second run. */
#include <sys/stat.h>

#include "tests/check.h"
#include "tests/test_ingest_util.h"

static char *dir;
static char root[600];

static int make_tree(void)
{
    return sh("cd %s && mkdir -p .git/info a build sub docs/a/tmp && "
              "printf '*.log\\n!keep.log\\nbuild/\\n/rootonly.txt\\ndocs/**/tmp\\n# comment\\n' > .gitignore && "
              "printf 'secret.txt\\n' > .git/info/exclude && echo ref > .git/HEAD && "
              "echo A > a.txt && echo AB > a/b.txt && echo upper > B.txt && echo log > x.log && echo keep > keep.log && "
              "echo out > build/out.txt && echo file > build.txt && echo r > rootonly.txt && echo s > sub/rootonly.txt && "
              "echo secret > secret.txt && printf '!x2.log\\n*.md\\n' > sub/.gitignore && echo x2 > sub/x2.log && "
              "echo md > sub/n.md && echo t > docs/a/tmp/t.txt && echo ok > docs/a/ok.txt && "
              "printf 'bin\\000ary' > img.bin && head -c 5000 /dev/zero | tr '\\0' b > big.txt && "
              "ln -s .. sub/loop && ln -s /etc sub/out && ln -s a.txt lnk.txt && ln -s a dlink && mkfifo fifo",
              root);
}

static const char *rel_of(const dsv4_doc *d)
{
    size_t n = strlen(root);
    return strncmp(d->source, root, n) == 0 && d->source[n] == '/' ? d->source + n + 1 : d->source;
}

static void check_order(const collected *c, const char *const *want, size_t n_want)
{
    CHECKF(c->n_docs == n_want, "%zu docs, want %zu", c->n_docs, n_want);
    for (size_t i = 0; i < c->n_docs && i < n_want; i++)
        CHECKF(strcmp(rel_of(c->docs[i]), want[i]) == 0, "doc %zu is %s, want %s", i, rel_of(c->docs[i]), want[i]);
    if (c->n_docs != n_want) dump_collected(c);
}

static void gitignore_order_and_skips(void)
{
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    o.max_file_bytes = 1000;
    collected c;
    CHECK(ingest_collect(root, NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE); /* big.txt: too large */
    static const char *const want[] = {".gitignore", "B.txt", "a.txt", "a/b.txt", "build.txt", "dlink/b.txt",
                                       "docs/a/ok.txt", "keep.log", "lnk.txt", "sub/.gitignore",
                                       "sub/rootonly.txt", "sub/x2.log"};
    check_order(&c, want, sizeof want / sizeof want[0]);
    const dsv4_doc *lnk = c.n_docs > 8 ? c.docs[8] : NULL;
    CHECK(lnk && strcmp(lnk->text, "A\n") == 0);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/x.log", ".gitignore") != NULL);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/build", "directory ignored") != NULL);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/rootonly.txt", NULL) != NULL);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/secret.txt", NULL) != NULL);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/sub/n.md", NULL) != NULL);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/docs/a/tmp", NULL) != NULL);
    CHECK(find_event(&c, DSV4_SKIP_LINK, "/sub/loop", "loop") != NULL);
    CHECK(find_event(&c, DSV4_SKIP_LINK, "/sub/out", "outside the tree") != NULL);
    CHECK(find_event(&c, DSV4_SKIP_SPECIAL, "/fifo", NULL) != NULL);
    CHECK(find_event(&c, DSV4_SKIP_BINARY, "/img.bin", NULL) != NULL);
    CHECK(find_event(&c, DSV4_SKIP_TOO_LARGE, "/big.txt", "over max_file_bytes (1000)") != NULL);
    for (size_t i = 0; i < c.n_docs; i++) CHECK(strstr(c.docs[i]->source, "/.git/") == NULL);
    CHECK(c.st.n_skipped[DSV4_SKIP_BINARY] == 1);
    CHECK(c.st.n_skipped[DSV4_SKIP_IGNORED] == 6);
    CHECK(c.st.n_skipped[DSV4_SKIP_LINK] == 2);
    collected_free(&c);
}

static void globs_and_no_gitignore(void)
{
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    const char *inc[] = {"**/*.txt"}, *exc[] = {"sub/**", "big.txt"};
    o.include = inc;
    o.n_include = 1;
    o.exclude = exc;
    o.n_exclude = 2;
    collected c;
    CHECK(ingest_collect(root, NULL, 0, 0, &o, &c) == DSV4_INGEST_OK);
    static const char *const want[] = {"B.txt", "a.txt", "a/b.txt", "build.txt", "dlink/b.txt", "docs/a/ok.txt", "lnk.txt"};
    check_order(&c, want, sizeof want / sizeof want[0]);
    CHECK(find_event(&c, DSV4_SKIP_IGNORED, "/sub/x2.log", "globs") != NULL);
    collected_free(&c);

    dsv4_ingest_options_default(&o);
    o.no_gitignore = 1;
    const char *only[] = {"*.log"};
    o.include = only;
    o.n_include = 1;
    CHECK(ingest_collect(root, NULL, 0, 0, &o, &c) == DSV4_INGEST_OK);
    static const char *const logs[] = {"keep.log", "sub/x2.log", "x.log"};
    check_order(&c, logs, 3);
    collected_free(&c);
}

static void same_bytes_twice(void)
{
    char *out[2] = {NULL, NULL};
    size_t n[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        collected c;
        ingest_collect(root, NULL, 0, 0, NULL, &c);
        {
            size_t total = 0;
            char **parts = calloc(c.n_docs + 1, sizeof *parts);
            size_t *lens = calloc(c.n_docs + 1, sizeof *lens);
            for (size_t i = 0; i < c.n_docs; i++) {
                CHECK(dsv4_doc_render(c.docs[i], &parts[i], &lens[i]) == 0);
                total += lens[i];
            }
            out[k] = malloc(total + 1);
            for (size_t i = 0; i < c.n_docs; i++) {
                memcpy(out[k] + n[k], parts[i], lens[i]);
                n[k] += lens[i];
                free(parts[i]);
            }
            free(parts);
            free(lens);
        }
        collected_free(&c);
    }
    CHECK(n[0] > 0 && n[0] == n[1] && memcmp(out[0], out[1], n[0]) == 0);
    char want[700];
    snprintf(want, sizeof want, "=== %s/a/b.txt ===\nAB\n\n", root);
    CHECK(out[0] && strstr(out[0], want) != NULL);
    free(out[0]);
    free(out[1]);
}

static void unreadable_directory(void)
{
    if (geteuid() == 0) SKIP("running as root: permissions do not stop reads");
    CHECK(sh("mkdir -p %s/locked && chmod 000 %s/locked", root, root) == 0);
    collected c;
    ingest_collect(root, NULL, 0, 0, NULL, &c);
    CHECK(find_event(&c, DSV4_SKIP_UNREADABLE, "/locked", "cannot read directory") != NULL);
    collected_free(&c);
    CHECK(sh("chmod 755 %s/locked && rmdir %s/locked", root, root) == 0);
}

int main(void)
{
    dir = make_tmpdir();
    snprintf(root, sizeof root, "%s/repo", dir ? dir : "/nonexistent");
    if (!dir || sh("mkdir -p %s", root) != 0 || make_tree() != 0) {
        printf("FAIL setup\n");
        return 1;
    }
    RUN(gitignore_order_and_skips);
    RUN(globs_and_no_gitignore);
    RUN(same_bytes_twice);
    RUN(unreadable_directory);
    remove_tree(dir);
    CHECK_EXIT();
}
