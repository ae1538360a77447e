/* `dsv4-batch cache ls|stats|verify|gc|bench` as real processes
 * (bin/dsv4-batch) on a cache directory filled through the library: exit
 * codes, --json contents, the home directory's resolution (--home,
 * $DSV4_HOME, $XDG_DATA_HOME), corrupt records found by verify, eviction to
 * --max-size. */
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/dsv4_cache.h"
#include "tests/check.h"

static dsv4_state_stream streams[2] = {{"layers.0.kv", 4, 128}, {"layers.1.kv", 128, 256}};
static const dsv4_state_layout layout = {2, streams, 2048};
static const uint8_t fp[32] = {7};

/* Runs cmd, returns its exit status; its stdout goes to out (NUL-terminated). */
static int run(const char *cmd, char *out, size_t outlen)
{
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    if (!p) return -1;
    if (out) {
        while (n + 1 < outlen) {
            size_t r = fread(out + n, 1, outlen - 1 - n, p);
            if (r == 0) break;
            n += r;
        }
        out[n] = 0;
    } else {
        char sink[4096];
        while (fread(sink, 1, sizeof sink, p) > 0) {}
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_t *run_json(const char *cmd, int *status)
{
    static char out[1 << 20];
    *status = run(cmd, out, sizeof out);
    json_error_t e;
    json_t *j = json_loads(out, 0, &e);
    if (!j) printf("  not JSON from %s: %.200s\n", cmd, out);
    return j;
}

static json_int_t jint(json_t *o, const char *k) { return json_integer_value(json_object_get(o, k)); }

static void rm_rf(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("  cannot remove %s\n", dir);
}

/* Three chains of 4 records (span 128) in HOME/cache; keys of the first chain. */
static int fill(const char *home, dsv4_cache_key keys[4])
{
    char dir[4200], err[256];
    dsv4_cache *c = NULL;
    dsv4_cache_options o = {0};
    o.span_tokens = 128;
    snprintf(dir, sizeof dir, "%s/cache", home);
    if (dsv4_cache_open(dir, fp, &layout, &o, &c, err, sizeof err) != 0) return -1;
    int32_t t[512];
    for (int chain = 0; chain < 3; chain++) {
        for (int i = 0; i < 512; i++) t[i] = chain * 1000 + i;
        dsv4_cache_key parent = {{0}};
        for (int r = 0; r < 4; r++) {
            dsv4_state_chunk *ch = NULL;
            if (dsv4_cache_chunk_alloc(&layout, r * 128, (r + 1) * 128, 1, &ch, err, sizeof err) != 0) return -1;
            for (int s = 0; s < 2; s++)
                for (int64_t b = 0; b < (128 / streams[s].ratio) * streams[s].row_bytes; b++)
                    ch->rows[s][b] = (uint8_t)(b * 7 + r + chain * 13);
            memset(ch->boundary, r, layout.boundary_bytes);
            int rc = dsv4_cache_put(c, r ? &parent : NULL, t + r * 128, ch, &parent, err, sizeof err);
            dsv4_cache_chunk_free(ch);
            if (rc) return -1;
            if (chain == 0) keys[r] = parent;
        }
    }
    dsv4_cache_close(c);
    return 0;
}

static void ls_and_stats(void)
{
    char home[] = "/tmp/dsv4-test-cache-cli-XXXXXX", cmd[8400], out[65536];
    dsv4_cache_key keys[4];
    int st;
    CHECK(mkdtemp(home) != NULL);
    CHECK(fill(home, keys) == 0);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache stats --home %s --json", home);
    json_t *j = run_json(cmd, &st);
    CHECK(st == 0 && j);
    CHECK(jint(j, "records") == 12 && jint(j, "chains") == 3 && jint(j, "orphans") == 0 && jint(j, "models") == 1);
    CHECK(jint(j, "max_tokens") == 512 && jint(j, "bytes") > 0 && jint(j, "raw_bytes") > jint(j, "bytes") / 2);
    char want_dir[4200];
    snprintf(want_dir, sizeof want_dir, "%s/cache", home);
    CHECK(json_is_string(json_object_get(j, "dir")) && strcmp(json_string_value(json_object_get(j, "dir")), want_dir) == 0);
    json_decref(j);

    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache ls --home %s --json", home);
    j = run_json(cmd, &st);
    CHECK(st == 0 && json_is_array(j) && json_array_size(j) == 12);
    char k0[65];
    dsv4_cache_key_hex(&keys[0], k0);
    int found = 0;
    for (size_t i = 0; j && i < json_array_size(j); i++) {
        json_t *e = json_array_get(j, i);
        if (strcmp(json_string_value(json_object_get(e, "key")), k0) == 0) {
            found = 1;
            CHECK(jint(e, "pos0") == 0 && jint(e, "pos1") == 128 && json_is_true(json_object_get(e, "ok")));
            CHECK(strncmp(json_string_value(json_object_get(e, "parent")), "0000000000000000", 16) == 0);
        }
    }
    CHECK(found);
    json_decref(j);

    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache ls --home %s", home);
    CHECK(run(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "KEY") != NULL && strstr(out, "384-512") != NULL);
    char k0_16[17];
    memcpy(k0_16, k0, 16);
    k0_16[16] = 0;
    CHECK(strstr(out, k0_16) != NULL);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache stats --home %s", home);
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "records:      12") != NULL);
    rm_rf(home);
}

static void verify_finds_and_deletes_corrupt_records(void)
{
    char home[] = "/tmp/dsv4-test-cache-cli-XXXXXX", cmd[8400], path[4400], hex[65];
    dsv4_cache_key keys[4];
    int st;
    CHECK(mkdtemp(home) != NULL);
    CHECK(fill(home, keys) == 0);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache verify --home %s --json 2>/dev/null", home);
    json_t *j = run_json(cmd, &st);
    CHECK(st == 0 && jint(j, "records_ok") == 12 && jint(j, "records_bad") == 0);
    json_decref(j);

    dsv4_cache_key_hex(&keys[2], hex);
    snprintf(path, sizeof path, "%s/cache/%.2s/%s.dsv4c", home, hex, hex);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    int fd = open(path, O_RDWR);
    uint8_t b = 0;
    CHECK(fd >= 0 && pread(fd, &b, 1, sb.st_size - 100) == 1);
    b ^= 1;
    CHECK(pwrite(fd, &b, 1, sb.st_size - 100) == 1);
    close(fd);

    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache verify --home %s --dry-run --json 2>/dev/null", home);
    j = run_json(cmd, &st);
    CHECK(st == 1 && jint(j, "records_bad") == 1 && access(path, F_OK) == 0);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache verify --home %s --json 2>/dev/null", home);
    j = run_json(cmd, &st);
    CHECK(st == 1 && jint(j, "records_ok") == 11 && jint(j, "records_bad") == 1);
    json_t *probs = json_object_get(j, "problems");
    CHECK(json_array_size(probs) == 1 && strstr(json_string_value(json_array_get(probs, 0)), path) != NULL);
    CHECK(access(path, F_OK) != 0);
    json_decref(j);
    /* the record after it is now an orphan; gc removes it */
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache gc --home %s --json", home);
    j = run_json(cmd, &st);
    CHECK(st == 0 && jint(j, "removed") == 1 && jint(j, "records_after") == 10);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache verify --home %s", home);
    char out[4096];
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "10 record(s) ok, 0 bad") != NULL);
    rm_rf(home);
}

static void gc_evicts_to_max_size(void)
{
    char home[] = "/tmp/dsv4-test-cache-cli-XXXXXX", cmd[8400];
    dsv4_cache_key keys[4];
    int st;
    CHECK(mkdtemp(home) != NULL);
    CHECK(fill(home, keys) == 0);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache stats --home %s --json", home);
    json_t *j = run_json(cmd, &st);
    json_int_t bytes = jint(j, "bytes");
    json_decref(j);
    json_int_t cap = bytes / 2;
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache gc --home %s --max-size %lld --dry-run --json", home, (long long)cap);
    j = run_json(cmd, &st);
    CHECK(st == 0 && jint(j, "evicted") >= 6 && json_is_true(json_object_get(j, "dry_run")));
    json_decref(j);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache gc --home %s --max-size %lld --json", home, (long long)cap);
    j = run_json(cmd, &st);
    CHECK(st == 0 && jint(j, "evicted") >= 6 && jint(j, "bytes_after") <= cap);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache stats --home %s --json", home);
    j = run_json(cmd, &st);
    CHECK(st == 0 && jint(j, "bytes") <= cap && jint(j, "orphans") == 0 && jint(j, "chains") >= 1);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache gc --home %s --max-size 1K", home);
    char out[4096];
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "0 record(s), 0 B remain") != NULL);
    rm_rf(home);
}

static void home_resolution_and_usage_errors(void)
{
    char base[] = "/tmp/dsv4-test-cache-cli-XXXXXX", cmd[8400];
    int st;
    CHECK(mkdtemp(base) != NULL);
    snprintf(cmd, sizeof cmd, "DSV4_HOME=%s/h1 bin/dsv4-batch cache stats --json", base);
    json_t *j = run_json(cmd, &st);
    char want[4200];
    snprintf(want, sizeof want, "%s/h1/cache", base);
    CHECK(st == 0 && j && strcmp(json_string_value(json_object_get(j, "dir")), want) == 0);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "env -u DSV4_HOME XDG_DATA_HOME=%s/xdg bin/dsv4-batch cache stats --json", base);
    j = run_json(cmd, &st);
    snprintf(want, sizeof want, "%s/xdg/dsv4-batch/cache", base);
    CHECK(st == 0 && j && strcmp(json_string_value(json_object_get(j, "dir")), want) == 0);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "DSV4_HOME=%s/h1 bin/dsv4-batch cache stats --home %s/h2 --json", base, base);
    j = run_json(cmd, &st);
    snprintf(want, sizeof want, "%s/h2/cache", base);
    CHECK(st == 0 && j && strcmp(json_string_value(json_object_get(j, "dir")), want) == 0);
    json_decref(j);

    CHECK(run("bin/dsv4-batch cache 2>/dev/null", NULL, 0) == 2);
    CHECK(run("bin/dsv4-batch cache frobnicate 2>/dev/null", NULL, 0) == 2);
    CHECK(run("bin/dsv4-batch cache ls --bogus 2>/dev/null", NULL, 0) == 2);
    CHECK(run("bin/dsv4-batch cache ls --max-size 1G 2>/dev/null", NULL, 0) == 2);
    CHECK(run("bin/dsv4-batch cache gc --max-size 12Q 2>/dev/null", NULL, 0) == 2);
    CHECK(run("bin/dsv4-batch cache gc --max-size 2>/dev/null", NULL, 0) == 2);
    CHECK(run("bin/dsv4-batch cache bench 2>/dev/null", NULL, 0) == 2);
    char out[8192];
    CHECK(run("bin/dsv4-batch cache --help", out, sizeof out) == 0 && strstr(out, "usage: dsv4-batch cache") != NULL);
    CHECK(run("bin/dsv4-batch cache gc --help", out, sizeof out) == 0 && strstr(out, "--max-size") != NULL);
    CHECK(run("bin/dsv4-batch --help", out, sizeof out) == 0 && strstr(out, "cache") != NULL);
    rm_rf(base);
}

static void bench_runs_on_a_small_layout(void)
{
    char dir[] = "/tmp/dsv4-test-cache-cli-XXXXXX", cfg[4200], cmd[8400];
    int st;
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    FILE *f = fopen(cfg, "w");
    if (!f) { CHECK(0); return; }
    fputs("{\"num_hidden_layers\": 3, \"head_dim\": 192, \"index_head_dim\": 128, \"qk_rope_head_dim\": 64,\n"
          " \"sliding_window\": 64, \"compress_ratios\": [0, 4, 128, 0]}\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache bench --config %s --tokens 4096 --span 1024 --dir %s/c --json", cfg, dir);
    json_t *j = run_json(cmd, &st);
    CHECK(st == 0 && j);
    CHECK(jint(j, "records") == 4 && jint(j, "streams") == 3);
    /* rows per token (bf16, as the engine exports): (192 + 128) * 2 / 4 + 192 * 2 / 128
     * = 163 bytes; boundary: 3 rings of 64 x 192 x 4, ratio 4: 2*8*384*4 + 2*8*256*4,
     * ratio 128: 2*128*192*4, the position: 8 */
    CHECK(jint(j, "boundary_bytes") == 3 * 64 * 192 * 4 + 2 * 8 * 384 * 4 + 2 * 8 * 256 * 4 + 2 * 128 * 192 * 4 + 8);
    double mem = json_real_value(json_object_get(j, "memory_bytes_per_token"));
    double disk = json_real_value(json_object_get(j, "disk_bytes_per_token"));
    /* in memory: rows + one boundary; on disk a boundary per record (and here
     * small spans, so the boundaries dominate) */
    double want_mem = 163.0 + (double)jint(j, "boundary_bytes") / 4096.0;
    CHECKF(mem > want_mem - 0.01 && mem < want_mem + 0.01 && disk > 0.3 * mem, "memory %.2f (want %.2f) disk %.1f", mem,
           want_mem, disk);
    CHECK(jint(j, "disk_bytes") > 4 * jint(j, "boundary_bytes") / 4);
    json_decref(j);
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch cache bench --config %s/missing.json 2>/dev/null", dir);
    CHECK(run(cmd, NULL, 0) == 2);
    rm_rf(dir);
}

int main(void)
{
    RUN(ls_and_stats);
    RUN(verify_finds_and_deletes_corrupt_records);
    RUN(gc_evicts_to_max_size);
    RUN(home_resolution_and_usage_errors);
    RUN(bench_runs_on_a_small_layout);
    CHECK_EXIT();
}
