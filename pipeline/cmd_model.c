/* `dsv4-batch model`: model directories without a GPU.
 *
 *   model init --preset demo|tiny --out DIR [--seed N]
 *       writes a small DeepSeek-V4-architecture model with deterministic
 *       random weights in the release's format (engine/dsv4_synth.h); the
 *       demo preset also gets the real DeepSeek-V4 tokenizer.json (embedded
 *       in the program), so the whole pipeline runs on it.
 *   model check DIR
 *       validates a model directory as the engine does at open (config.json,
 *       every safetensors header, the expected tensors) and prints its sizes
 *       and fingerprint. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dsv4_synth.h"
#include "ingest/dsv4_tokenizer.h"
#include "pipeline/dsv4_cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4-batch model init --preset demo|tiny --out DIR [--seed N]\n"
               "       dsv4-batch model check DIR\n\n"
               "init writes config.json and model.safetensors of a small DeepSeek-V4 model\n"
               "with deterministic random weights in the release's format (FP8 e4m3 with\n"
               "ue8m0 block scales, FP4 experts, bf16/f32 others, mtp.0.*); preset demo has\n"
               "the real tokenizer's vocabulary (129280) and gets its tokenizer.json.\n"
               "check validates a model directory without a GPU and prints its fingerprint.\n");
}

static int write_tokenizer(const char *dir)
{
    size_t len = 0;
    const char *json = dsv4_tokenizer_embedded_json(&len);
    char path[PATH_MAX];
    if (!json || !len) {
        fprintf(stderr, "dsv4-batch model: no embedded tokenizer in this build\n");
        return -1;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "wb");
    /* exactly one fclose once f is open: closing again after a failed
     * fclose would be a double free */
    int bad = !f || fwrite(json, 1, len, f) != len;
    if (f && fclose(f) != 0) bad = 1;
    if (bad) {
        fprintf(stderr, "dsv4-batch model: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int cmd_init(int argc, char **argv)
{
    dsv4_synth_options o = {NULL, NULL, 0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return DSV4_EXIT_OK;
        } else if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) {
            o.preset = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            o.out_dir = argv[++i];
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (errno || *end || argv[i][0] == '-' || !argv[i][0]) {
                fprintf(stderr, "dsv4-batch model init: --seed wants a non-negative integer, "
                                "not '%s'\n", argv[i]);
                return DSV4_EXIT_USAGE;
            }
            o.seed = v;
        } else {
            fprintf(stderr, "dsv4-batch model init: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return DSV4_EXIT_USAGE;
        }
    }
    if (!o.preset || !o.out_dir) {
        fprintf(stderr, "dsv4-batch model init: --preset and --out are required\n");
        usage(stderr);
        return DSV4_EXIT_USAGE;
    }
    if (strcmp(o.preset, "demo") != 0 && strcmp(o.preset, "tiny") != 0) {
        fprintf(stderr, "dsv4-batch model init: unknown preset '%s' (demo, tiny)\n", o.preset);
        return DSV4_EXIT_USAGE;
    }
    char err[1024];
    if (dsv4_model_synth(&o, err, sizeof err) < 0) {
        fprintf(stderr, "dsv4-batch model init: %s\n", err);
        return DSV4_EXIT_FAIL;
    }
    if (strcmp(o.preset, "demo") == 0 && write_tokenizer(o.out_dir) < 0) return DSV4_EXIT_FAIL;
    printf("wrote %s model (seed %llu) to %s\n", o.preset, (unsigned long long)o.seed, o.out_dir);
    return DSV4_EXIT_OK;
}

static int cmd_check(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return DSV4_EXIT_OK;
    }
    if (argc != 2) {
        usage(stderr);
        return DSV4_EXIT_USAGE;
    }
    dsv4_model_info info;
    size_t n = 0;
    char err[1024], notes[512];
    int rc = dsv4_model_verify(argv[1], &info, &n, notes, sizeof notes, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "dsv4-batch model check: %s\n", err);
        return rc == DSV4_EIO ? DSV4_EXIT_MISSING : DSV4_EXIT_FAIL;
    }
    if (notes[0]) fprintf(stderr, "%s\n", notes);
    printf("%s: ok, %zu tensors, vocab %d, hidden %d, %d layers\nfingerprint ", argv[1], n,
           info.vocab_size, info.hidden_size, info.num_hidden_layers);
    for (int i = 0; i < 32; i++) printf("%02x", info.fingerprint[i]);
    printf("\n");
    return DSV4_EXIT_OK;
}

int dsv4_cmd_model(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? DSV4_EXIT_USAGE : DSV4_EXIT_OK;
    }
    if (strcmp(argv[1], "init") == 0) return cmd_init(argc - 1, argv + 1);
    if (strcmp(argv[1], "check") == 0) return cmd_check(argc - 1, argv + 1);
    fprintf(stderr, "dsv4-batch model: unknown subcommand '%s' (init, check)\n", argv[1]);
    return DSV4_EXIT_USAGE;
}
