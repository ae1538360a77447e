/* A main() for any fuzz target without a fuzzing engine: replays every file
 * named on the command line (directories are read in sorted order) through
 * LLVMFuzzerTestOneInput, so CI and developers run the corpora with a plain
 * compiler. Linked with one tests/fuzz/fuzz_*.c by `make fuzz`. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0, r;
    uint8_t *p = malloc(cap);
    while (p && (r = fread(p + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) p = realloc(p, cap *= 2);
    }
    fclose(f);
    if (!p) return -1;
    LLVMFuzzerTestOneInput(p, n);
    free(p);
    return 0;
}

int main(int argc, char **argv)
{
    int count = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { fprintf(stderr, "replay: no %s\n", argv[i]); bad++; continue; }
        if (!S_ISDIR(st.st_mode)) { bad += replay_file(argv[i]) != 0; count++; continue; }
        struct dirent **list;
        int n = scandir(argv[i], &list, NULL, alphasort);
        for (int k = 0; k < n; k++) {
            if (list[k]->d_name[0] != '.') {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", argv[i], list[k]->d_name);
                bad += replay_file(path) != 0;
                count++;
            }
            free(list[k]);
        }
        if (n >= 0) free(list);
    }
    printf("replayed %d inputs\n", count);
    return bad ? 1 : 0;
}
