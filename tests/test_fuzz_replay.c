/* Replays every seed corpus of tests/fuzz/corpus/<target>/ through its fuzz
 * target (tests/fuzz/targets.h) in the normal test run, so the fuzz harness
 * and the parsers' behaviour on the seeds (valid, encrypted, truncated,
 * hostile) are checked without a fuzzing engine. A contract violation traps
 * and the runner reports the crash; every corpus must hold seeds. Crashing
 * inputs found by long fuzzing runs go into the corpora (docs/fuzzing.md). */
#include <dirent.h>

#include "tests/check.h"
#include "tests/fuzz/targets.h"

static int replay_dir(const char *name, int (*fn)(const uint8_t *, size_t))
{
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", name);
    struct dirent **list;
    int n = scandir(dir, &list, NULL, alphasort), count = 0;
    for (int k = 0; k < n; k++) {
        if (list[k]->d_name[0] != '.') {
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, list[k]->d_name);
            FILE *f = fopen(path, "rb");
            if (f) {
                uint8_t *buf = malloc(1 << 20);
                size_t len = fread(buf, 1, 1 << 20, f);
                fclose(f);
                fn(buf, len);
                /* every prefix of a small seed too: truncation at each point */
                if (len <= 4096)
                    for (size_t cut = 0; cut < len; cut += 1 + len / 64) fn(buf, cut);
                free(buf);
                count++;
            }
        }
        free(list[k]);
    }
    if (n >= 0) free(list);
    return count;
}

#define REPLAY(name)                                                          \
    static void replay_##name(void)                                           \
    {                                                                         \
        int n = replay_dir(#name, fuzz_##name);                               \
        CHECKF(n > 0, "no seeds in tests/fuzz/corpus/%s", #name);            \
    }
REPLAY(text)
REPLAY(pdf)
REPLAY(archive)
REPLAY(html)
REPLAY(xml)
REPLAY(docx)
REPLAY(odt)
REPLAY(epub)
REPLAY(auto)
REPLAY(gitignore)

int main(void)
{
    RUN(replay_text);
    RUN(replay_pdf);
    RUN(replay_archive);
    RUN(replay_html);
    RUN(replay_xml);
    RUN(replay_docx);
    RUN(replay_odt);
    RUN(replay_epub);
    RUN(replay_auto);
    RUN(replay_gitignore);
    CHECK_EXIT();
}
