/* `dsv4-batch bench` as a process on the Vulkan device (lavapipe here), with
 * the golden tiny config and short contexts: the JSON report must carry
 * every figure, positive, the synthetic weights must keep the logits finite,
 * a layer subset must be the documented stratified sample, and --devices
 * splits the layers over several devices; bin/dsv4-bench gives the same
 * report without the ingest libraries. No timing is
 * asserted (benchmarks measure; tests check). Needs a Vulkan device: exit
 * status 3 from the command is a skip. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/check.h"

#define TINY "tests/golden/tiny/config.json"

/* Runs cmd, returns its stdout (caller frees) and exit status. */
static char *run(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (cap - n < 1024) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) break;
            buf = nb;
            cap *= 2;
        }
    }
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (buf) buf[n] = 0;
    return buf;
}

static double num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : -1;
}

static void check_positive(json_t *o, const char *const *keys, size_t n, const char *where)
{
    for (size_t i = 0; i < n; i++) CHECKF(num(o, keys[i]) > 0, "%s: '%s' = %g", where, keys[i], num(o, keys[i]));
}

/* Runs a bench command that prints --json: the parsed report, or NULL after
 * a failed check; *no_device is set (and NULL returned) when the command
 * exits 3, no Vulkan device, which the caller turns into a skip. */
static json_t *run_report(const char *cmd, int *no_device)
{
    int st;
    char *out = run(cmd, &st);
    *no_device = st == 3;
    if (*no_device) {
        free(out);
        return NULL;
    }
    CHECKF(st == 0, "exit status %d", st);
    json_error_t je;
    json_t *o = out ? json_loads(out, 0, &je) : NULL;
    CHECKF(o != NULL, "output is not JSON: %.200s", out ? out : "(none)");
    free(out);
    return o;
}

static void bench_json_has_every_field(void)
{
    int no_device;
    json_t *o = run_report("bin/dsv4-batch bench --config " TINY " --contexts 64,192 --decode-contexts 64,192 "
                           "--batches 1,4 --steps 1 --profile --json 2>/dev/null",
                           &no_device);
    if (no_device) SKIP("no Vulkan device");
    if (!o) return;
    static const char *const top[] = {"layers_total", "layers_loaded", "chunk_tokens", "prefill_piece_tokens",
                                      "open_seconds", "device_budget_bytes", "weight_bytes_loaded",
                                      "weight_bytes_model_est", "weight_bytes_model_config",
                                      "state_bytes_per_token", "state_bytes_per_token_loaded"};
    check_positive(o, top, sizeof top / sizeof top[0], "report");
    CHECK(num(o, "layers_total") == 5 && num(o, "layers_loaded") == 5);
    CHECK(json_is_false(json_object_get(o, "extrapolated")));
    CHECK(num(o, "nonfinite_logits") == 0);
    CHECK(json_is_string(json_object_get(o, "device")));
    /* the tiny config's state per token: 2 CSA layers x (192 + 128 / ... ) as
       bf16 rows: kv 192*2/4 + index 128*2/4 each, 2 HCA layers 192*2/128 */
    CHECKF(num(o, "state_bytes_per_token") == 2 * (96 + 64) + 2 * 3, "%g", num(o, "state_bytes_per_token"));
    json_t *sg = json_object_get(o, "state_gpu_bytes_per_sequence");
    CHECK(json_object_size(sg) == 2 && num(sg, "64") > 0 && num(sg, "192") > num(sg, "64"));
    json_t *c = json_object_get(o, "ceiling");
    static const char *const ck[] = {"bandwidth_bytes_per_s", "matrix_flops_per_s", "active_params_per_token",
                                     "matrix_flops_per_token", "weight_bytes_per_token_batch1", "csa_layers",
                                     "hca_layers", "window_layers"};
    check_positive(c, ck, sizeof ck / sizeof ck[0], "ceiling");
    json_t *pf = json_object_get(o, "prefill"), *dc = json_object_get(o, "decode");
    CHECK(json_array_size(pf) == 2 && json_array_size(dc) == 4);
    static const char *const rk[] = {"context", "seconds", "tokens_per_s_measured", "tokens_per_s",
                                     "ratio_to_ceiling", "ceiling_tokens_per_s"};
    static const char *const dk[] = {"batch", "head_seconds", "indexer_flops_per_token",
                                     "state_bytes_read_per_token"};
    size_t i;
    json_t *x;
    /* what was recorded: with --profile a barrier after every dispatch */
    static const char *const ck2[] = {"submits", "dispatches", "barriers"};
    json_array_foreach(pf, i, x) {
        CHECK(json_is_true(json_object_get(x, "ok")));
        check_positive(x, rk, sizeof rk / sizeof rk[0], "prefill");
        json_t *rec = json_object_get(x, "recorded_per_pass");
        check_positive(rec, ck2, 3, "prefill recorded");
        CHECK(num(rec, "passes") >= 1 && num(rec, "host_record_ms") >= 0);
        CHECK(num(rec, "barriers") >= num(rec, "dispatches"));
    }
    CHECK(num(json_array_get(pf, 0), "context") == 64 && num(json_array_get(pf, 1), "context") == 192);
    json_array_foreach(dc, i, x) {
        CHECK(json_is_true(json_object_get(x, "ok")));
        check_positive(x, rk, sizeof rk / sizeof rk[0], "decode");
        /* head_seconds may be 0 when the difference is lost in noise */
        check_positive(x, dk + 2, 2, "decode");
        CHECK(num(x, "batch") == 1 || num(x, "batch") == 4);
        CHECK(num(x, "head_seconds") >= 0);
        /* the forks' state: the prefix's rows shared (64 tokens: 16 CSA
           rows per CSA layer), each fork's own buffers (rings, a few rows) */
        static const char *const sk[] = {"state_bytes_prefix_own", "state_bytes_forks_own",
                                         "state_bytes_shared_per_fork"};
        check_positive(x, sk, 3, "decode");
        json_t *rec = json_object_get(x, "recorded_per_step");
        check_positive(rec, ck2, 3, "decode recorded");
        CHECK(num(rec, "passes_per_step") == 1 && num(rec, "barriers") >= num(rec, "dispatches"));
    }
    /* --profile: every measured phase has per-operation GPU times */
    json_t *pr = json_object_get(o, "profile");
    CHECKF(json_array_size(pr) == 5, "%zu profile sets", json_array_size(pr));
    json_array_foreach(pr, i, x) {
        json_t *ops = json_object_get(x, "ops"), *y;
        size_t j;
        int attention = 0, experts = 0;
        CHECK(json_array_size(ops) > 0);
        json_array_foreach(ops, j, y) {
            const char *op = json_string_value(json_object_get(y, "op"));
            CHECK(op && num(y, "ms") >= 0 && num(y, "calls") > 0);
            attention |= op && strcmp(op, "attention") == 0;
            experts |= op && strcmp(op, "experts") == 0;
        }
        CHECK(attention && experts);
    }
    json_decref(o);
}

static void bench_keeps_a_stratified_subset(void)
{
    /* tiny ratios [0, 4, 128, 4, 128]: 2 layers -> one CSA (the 2nd of its
       kind: layer 3) and one HCA (layer 4); the rest is extrapolated */
    int no_device;
    json_t *o = run_report("bin/dsv4-batch bench --config " TINY " --layers 2 --contexts 64 --decode-contexts 64 "
                           "--batches 1 --steps 1 --json 2>/dev/null",
                           &no_device);
    if (no_device) SKIP("no Vulkan device");
    if (!o) return;
    CHECK(num(o, "layers_loaded") == 2 && num(o, "layers_total") == 5);
    CHECK(json_is_true(json_object_get(o, "extrapolated")));
    json_t *sel = json_object_get(o, "layers_selected");
    CHECKF(json_array_size(sel) == 2 && json_integer_value(json_array_get(sel, 0)) == 3 &&
               json_integer_value(json_array_get(sel, 1)) == 4,
           "selected %lld,%lld", (long long)json_integer_value(json_array_get(sel, 0)),
           (long long)json_integer_value(json_array_get(sel, 1)));
    json_t *p0 = json_array_get(json_object_get(o, "prefill"), 0);
    /* extrapolated throughput: measured x 2/5 */
    double m = num(p0, "tokens_per_s_measured"), t = num(p0, "tokens_per_s");
    CHECKF(m > 0 && t > 0 && t < m && t > 0.39 * m && t < 0.41 * m, "measured %g extrapolated %g", m, t);
    json_decref(o);
}

/* The pass scheduler against recording in order (DSV4_SCHEDULE=0): the same
   dispatches with fewer barriers, for prefill and decode at batch 1 and 4. */
static void bench_scheduler_cuts_barriers(void)
{
    int no_device;
    const char *args = "bench --config " TINY " --contexts 192 --decode-contexts 192 --batches 1,4 --steps 2 "
                       "--json 2>/dev/null";
    char cmd[512];
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch %s", args);
    json_t *a = run_report(cmd, &no_device);
    if (no_device) SKIP("no Vulkan device");
    snprintf(cmd, sizeof cmd, "DSV4_SCHEDULE=0 bin/dsv4-batch %s", args);
    json_t *b = run_report(cmd, &no_device);
    if (!a || !b) {
        json_decref(a);
        json_decref(b);
        return;
    }
    json_t *sets[2][2] = {{json_object_get(a, "prefill"), json_object_get(a, "decode")},
                          {json_object_get(b, "prefill"), json_object_get(b, "decode")}};
    for (int k = 0; k < 2; k++) {
        CHECK(json_array_size(sets[0][k]) == json_array_size(sets[1][k]) && json_array_size(sets[0][k]) > 0);
        for (size_t i = 0; i < json_array_size(sets[0][k]); i++) {
            const char *key = k ? "recorded_per_step" : "recorded_per_pass";
            json_t *ra = json_object_get(json_array_get(sets[0][k], i), key),
                   *rb = json_object_get(json_array_get(sets[1][k], i), key);
            double da = num(ra, "dispatches"), db = num(rb, "dispatches"), ba = num(ra, "barriers"),
                   bb = num(rb, "barriers");
            printf("  %s %zu: %g dispatches, %g barriers scheduled, %g in order\n", k ? "decode" : "prefill", i, da,
                   ba, bb);
            CHECKF(da == db && da > 0, "%s %zu: %g dispatches scheduled, %g in order", key, i, da, db);
            CHECKF(ba > 0 && ba < 0.9 * bb, "%s %zu: %g barriers scheduled, %g in order", key, i, ba, bb);
        }
    }
    json_decref(a);
    json_decref(b);
}

/* --devices: the layers split over lavapipe opened twice; all five kept,
   the split in the report, a bad split named. */
static void bench_splits_over_devices(void)
{
    int no_device;
    json_t *o = run_report("bin/dsv4-batch bench --config " TINY " --devices 0,0 --contexts 64 --decode-contexts 64 "
                           "--batches 1 --steps 1 --json 2>/dev/null",
                           &no_device);
    if (no_device) SKIP("no Vulkan device");
    if (!o) return;
    CHECK(num(o, "layers_loaded") == 5 && json_is_false(json_object_get(o, "extrapolated")));
    const char *split = json_string_value(json_object_get(o, "layers_per_device"));
    CHECKF(split && strchr(split, ',') && !strchr(strchr(split, ',') + 1, ','), "layers_per_device %s",
           split ? split : "(none)");
    const char *dev = json_string_value(json_object_get(o, "device"));
    CHECKF(dev && strstr(dev, " + "), "device %s", dev ? dev : "(none)");
    json_t *p0 = json_array_get(json_object_get(o, "prefill"), 0);
    CHECK(num(p0, "tokens_per_s_measured") > 0);
    json_decref(o);
    int st;
    char *out = run("bin/dsv4-batch bench --config " TINY " --devices 0,0 --split 4,2 --contexts 64 --decode-contexts 64 "
                    "2>&1", &st);
    CHECKF(st == 1 && out && strstr(out, "split gives 6 layers in all"), "%d %s", st, out ? out : "");
    free(out);
}

static void bench_rejects_bad_input(void)
{
    int st;
    char *out = run("bin/dsv4-batch bench --config /nonexistent/config.json 2>&1", &st);
    CHECKF(st == 2, "exit status %d", st);
    CHECKF(out && strstr(out, "/nonexistent/config.json"), "%s", out ? out : "");
    free(out);
    out = run("bin/dsv4-batch bench --config " TINY " --contexts 64,x 2>&1", &st);
    CHECKF(st == 2, "exit status %d", st);
    free(out);
    out = run("bin/dsv4-batch bench --config " TINY " --contexts 64 --decode-contexts 128 2>&1", &st);
    CHECKF(st == 2 && out && strstr(out, "decode context 128"), "%d %s", st, out ? out : "");
    free(out);
}

/* bin/dsv4-bench (bench and conformance alone, for GPU machines without the
   ingest libraries): the same report, and none of those libraries linked. */
static void bench_tool_alone(void)
{
    int no_device;
    json_t *o = run_report("bin/dsv4-bench bench --config " TINY " --contexts 64 --decode-contexts 64 --batches 1 "
                           "--steps 1 --json 2>/dev/null",
                           &no_device);
    if (no_device) SKIP("no Vulkan device");
    if (o) CHECK(num(o, "layers_loaded") == 5);
    json_decref(o);
    int st;
    char *out = run("bin/dsv4-bench 2>&1", &st);
    CHECKF(st == 2 && out && strstr(out, "usage: dsv4-bench"), "%d %s", st, out ? out : "");
    free(out);
    out = run("ldd bin/dsv4-bench", &st);
    CHECKF(st == 0 && out && strstr(out, "libvulkan"), "%s", out ? out : "");
    const char *absent[] = {"libpoppler", "libarchive", "libsqlite3", "libxml2", "libyaml", "libzstd"};
    for (size_t i = 0; out && i < sizeof absent / sizeof absent[0]; i++)
        CHECKF(!strstr(out, absent[i]), "bin/dsv4-bench links %s", absent[i]);
    free(out);
}

int main(void)
{
    RUN(bench_rejects_bad_input);
    RUN(bench_json_has_every_field);
    RUN(bench_keeps_a_stratified_subset);
    RUN(bench_scheduler_cuts_barriers);
    RUN(bench_splits_over_devices);
    RUN(bench_tool_alone);
    CHECK_EXIT();
}
