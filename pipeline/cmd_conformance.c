/* `dsv4-batch conformance --model DIR --golden CASE.safetensors [--json]`:
 * runs one golden case of the official model code through the engine and
 * prints every metric against its threshold (pipeline/conformance.h):
 *   - per block, teacher-forced, when the case holds layer_out.k (block 0 is
 *     fed the embedding of the tokens copied into the hc slots, block k the
 *     golden layer_out.{k-1});
 *   - the whole model's prefill logits at every position and the logits of
 *     the teacher-forced decode steps;
 *   - the MTP logits when the case holds mtp_logits.
 * Exit 0 only when every metric passes. Works for any model directory and
 * any case file in this format. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"
#include "pipeline/conformance.h"
#include "pipeline/dsv4_cli.h"

typedef struct { char name[48]; dsv4_conf_stats st; int kind; int ok; } conf_row; /* kind 0 block, 1 logits */

static const float *f32_tensor(const dsv4_st_set *c, const char *name, int64_t rows, int64_t cols, char *err,
                               size_t errlen)
{
    const dsv4_tensor *t = dsv4_st_find(c, name);
    if (!t) return NULL;
    if (t->dtype != DSV4_DT_F32 || t->nbytes != (uint64_t)(rows * cols * 4)) {
        snprintf(err, errlen, "golden case: tensor '%s' is not F32 [%lld, %lld]", name, (long long)rows,
                 (long long)cols);
        return NULL;
    }
    return (const float *)t->data;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void add_row(conf_row *rows, int *n, const char *name, int kind, const dsv4_conf_stats *st)
{
    conf_row *r = &rows[(*n)++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->st = *st;
    r->kind = kind;
    r->ok = kind == 0 ? dsv4_conf_block_ok(st) : dsv4_conf_logits_ok(st);
}

int dsv4_cmd_conformance(int argc, char **argv)
{
    const char *model = NULL, *golden = NULL, *devices = NULL, *split = NULL;
    int json = 0, verbose = 0, profile = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) model = argv[++i];
        else if (strcmp(argv[i], "--golden") == 0 && i + 1 < argc) golden = argv[++i];
        else if (strcmp(argv[i], "--devices") == 0 && i + 1 < argc) devices = argv[++i];
        else if (strcmp(argv[i], "--split") == 0 && i + 1 < argc) split = argv[++i];
        else if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--verbose") == 0) verbose = 1;
        else if (strcmp(argv[i], "--profile") == 0) profile = 1;
        else if (strcmp(argv[i], "--help") == 0) {
            printf("usage: dsv4-batch conformance --model DIR --golden CASE.safetensors [--json] [--verbose] [--profile]\n"
                   "                              [--devices LIST] [--split LIST]\n"
                   "Runs a golden case of the official DeepSeek-V4 code through the engine and prints each\n"
                   "metric against its threshold; exit 0 only when all pass. --devices 0,1 splits the\n"
                   "model over several Vulkan devices, --split 3,2 gives the blocks per device.\n");
            return DSV4_EXIT_OK;
        } else {
            fprintf(stderr, "conformance: unknown argument '%s' (see --help)\n", argv[i]);
            return DSV4_EXIT_USAGE;
        }
    }
    if (!model || !golden) {
        fprintf(stderr, "conformance: --model DIR and --golden CASE.safetensors are required\n");
        return DSV4_EXIT_USAGE;
    }
    char err[512] = "";
    int ret = DSV4_EXIT_FAIL;
    dsv4_engine *e = NULL;
    dsv4_st_set *cs = NULL, *ms = NULL;
    dsv4_seq *s = NULL;
    float *buf = NULL, *x = NULL, *y = NULL;
    conf_row rows[80];
    int nrows = 0;
    dsv4_engine_options opt = {.verbose = verbose, .profile = profile, .devices = devices, .split = split};
    int rc = dsv4_engine_open(model, &opt, &e, err, sizeof err);
    if (rc) {
        fprintf(stderr, "conformance: %s\n", err);
        return rc == DSV4_EDEVICE || rc == DSV4_EIO ? DSV4_EXIT_MISSING : DSV4_EXIT_FAIL;
    }
    if (dsv4_st_open_file(golden, &cs, err, sizeof err)) {
        fprintf(stderr, "conformance: %s\n", err);
        ret = DSV4_EXIT_MISSING;
        goto done;
    }
    const dsv4_model_info *mi = dsv4_engine_info(e);
    int64_t V = mi->vocab_size, D = mi->hidden_size;
    const dsv4_tensor *tt = dsv4_st_find(cs, "tokens");
    const dsv4_tensor *pl = dsv4_st_find(cs, "prefill_logits");
    const dsv4_tensor *dl = dsv4_st_find(cs, "decode_logits");
    if (!tt || tt->dtype != DSV4_DT_I32 || tt->ndim != 1 || !pl || pl->ndim != 2 || pl->shape[1] != V) {
        fprintf(stderr, "conformance: %s: needs tokens I32 [N] and prefill_logits F32 [P, %lld]\n", golden,
                (long long)V);
        goto done;
    }
    const int32_t *tokens = (const int32_t *)tt->data;
    int64_t N = tt->shape[0], P = pl->shape[0], steps = dl ? dl->shape[0] : 0;
    if (P < 1 || P + steps > N) {
        fprintf(stderr, "conformance: %s: %lld tokens for %lld prefill + %lld decode\n", golden, (long long)N,
                (long long)P, (long long)steps);
        goto done;
    }
    const float *want_p = f32_tensor(cs, "prefill_logits", P, V, err, sizeof err);
    const float *want_d = steps ? f32_tensor(cs, "decode_logits", steps, V, err, sizeof err) : NULL;
    if (!want_p || (steps && !want_d)) {
        fprintf(stderr, "conformance: %s\n", err);
        goto done;
    }
    dsv4_conf_stats st;
    /* per block */
    int hc = 0;
    if (dsv4_st_find(cs, "layer_out.0")) {
        const dsv4_tensor *l0 = dsv4_st_find(cs, "layer_out.0");
        hc = l0->ndim == 3 ? (int)l0->shape[1] : 0;
        if (dsv4_st_open_dir(model, &ms, err, sizeof err)) {
            fprintf(stderr, "conformance: %s\n", err);
            goto done;
        }
        const dsv4_tensor *emb = dsv4_st_find(ms, "embed.weight");
        if (!emb || emb->dtype != DSV4_DT_BF16 || hc < 1) {
            fprintf(stderr, "conformance: embed.weight (BF16) or layer_out.0 [P, hc, %lld] unusable\n", (long long)D);
            goto done;
        }
        size_t rowf = (size_t)hc * D;
        x = malloc((size_t)P * rowf * 4);
        y = malloc((size_t)P * rowf * 4);
        if (!x || !y) goto done;
        for (int64_t t = 0; t < P; t++)
            for (int h = 0; h < hc; h++)
                for (int64_t c = 0; c < D; c++)
                    x[(t * hc + h) * D + c] = dsv4_bf16_to_f32(((const uint16_t *)emb->data)[tokens[t] * D + c]);
        for (int k = 0; k < mi->num_hidden_layers; k++) {
            char nm[32];
            snprintf(nm, sizeof nm, "layer_out.%d", k);
            const float *want = f32_tensor(cs, nm, P, (int64_t)rowf, err, sizeof err);
            if (!want) {
                fprintf(stderr, "conformance: %s missing or malformed %s\n", golden, nm);
                goto done;
            }
            rc = dsv4_engine_run_block(e, k, tokens, P, x, y, err, sizeof err);
            if (rc) {
                fprintf(stderr, "conformance: block %d: %s\n", k, err);
                goto done;
            }
            dsv4_conf_compare(y, want, P, (int64_t)rowf, 0, &st);
            snprintf(nm, sizeof nm, "block %d", k);
            add_row(rows, &nrows, nm, 0, &st);
            memcpy(x, want, (size_t)P * rowf * 4);
        }
        const float *want_m = f32_tensor(cs, "mtp_logits", P, V, err, sizeof err);
        if (want_m && P + 1 <= N) {
            buf = malloc((size_t)P * V * 4);
            if (!buf) goto done;
            rc = dsv4_engine_run_mtp(e, tokens, P, x, buf, err, sizeof err);
            if (rc) {
                fprintf(stderr, "conformance: mtp: %s\n", err);
                goto done;
            }
            dsv4_conf_compare(buf, want_m, P, V, 1, &st);
            add_row(rows, &nrows, "mtp logits", 1, &st);
            free(buf);
            buf = NULL;
        }
    }
    /* whole model */
    buf = malloc((size_t)(P > steps ? P : steps) * V * 4);
    if (!buf) goto done;
    double t0 = now_s(), t_prefill, t_decode = 0;
    if ((rc = dsv4_seq_create(e, &s, err, sizeof err)) || (rc = dsv4_seq_prefill(s, tokens, P, buf, P, err, sizeof err))) {
        fprintf(stderr, "conformance: prefill: %s\n", err);
        goto done;
    }
    t_prefill = now_s() - t0;
    dsv4_conf_compare(buf, want_p, P, V, 1, &st);
    add_row(rows, &nrows, "prefill logits", 1, &st);
    t0 = now_s();
    for (int64_t i = 0; i < steps; i++) {
        rc = dsv4_decode(&s, 1, &tokens[P + i], buf + i * V, err, sizeof err);
        if (rc) {
            fprintf(stderr, "conformance: decode step %lld: %s\n", (long long)i, err);
            goto done;
        }
    }
    t_decode = now_s() - t0;
    if (steps) {
        dsv4_conf_compare(buf, want_d, steps, V, 1, &st);
        add_row(rows, &nrows, "decode logits", 1, &st);
    }
    ret = DSV4_EXIT_OK;
    for (int i = 0; i < nrows; i++)
        if (!rows[i].ok) ret = DSV4_EXIT_FAIL;
    if (json) {
        printf("{\"case\": \"%s\", \"device\": \"%s\", \"pass\": %s, \"prefill_tok_s\": %.2f, "
               "\"decode_tok_s\": %.2f, \"metrics\": [", golden, dsv4_engine_device_name(e), ret == 0 ? "true" : "false",
               P / t_prefill, steps ? steps / t_decode : 0.0);
        for (int i = 0; i < nrows; i++) {
            const conf_row *r = &rows[i];
            printf("%s\n  {\"name\": \"%s\", \"rows\": %lld, \"median\": %.6g, \"p90\": %.6g, \"p99\": %.6g, "
                   "\"max\": %.6g, \"top1\": %.6g, \"pass\": %s}",
                   i ? "," : "", r->name, (long long)r->st.n, r->st.median, r->st.p90, r->st.p99, r->st.max,
                   r->kind ? r->st.top1 : -1.0, r->ok ? "true" : "false");
        }
        printf("\n]}\n");
    } else {
        printf("conformance %s on %s\n", golden, dsv4_engine_device_name(e));
        for (int i = 0; i < nrows; i++) {
            const conf_row *r = &rows[i];
            if (r->kind == 0)
                printf("  %-16s median %.3g (<= %.3g)  p90 %.3g (<= %.3g)  p99 %.3g (<= %.3g)  max %.3g  %s\n",
                       r->name, r->st.median, DSV4_CONF_BLOCK_MEDIAN, r->st.p90, DSV4_CONF_BLOCK_P90, r->st.p99,
                       DSV4_CONF_BLOCK_P99, r->st.max, r->ok ? "PASS" : "FAIL");
            else
                printf("  %-16s median %.3g (<= %.3g)  top1 %.3f (>= %.2f)  p90 %.3g  %s\n", r->name, r->st.median,
                       DSV4_CONF_LOGITS_MEDIAN, r->st.top1, DSV4_CONF_LOGITS_TOP1, r->st.p90, r->ok ? "PASS" : "FAIL");
        }
        printf("  timing: prefill %lld tokens (all logits) %.3f s = %.1f tok/s; decode %lld steps %.3f s = %.1f tok/s\n",
               (long long)P, t_prefill, P / t_prefill, (long long)steps, t_decode, steps ? steps / t_decode : 0.0);
        printf("%s\n", ret == 0 ? "PASS" : "FAIL");
    }
    if (profile) {
        dsv4_profile_entry pe[64];
        int np = dsv4_engine_profile(e, pe, 64);
        for (int i = 0; i < np; i++)
            fprintf(stderr, "profile %-16s %10.1f ms %8lld dispatches\n", pe[i].op, pe[i].ms, (long long)pe[i].calls);
    }
done:
    dsv4_seq_free(s);
    free(buf);
    free(x);
    free(y);
    dsv4_st_close(ms);
    dsv4_st_close(cs);
    dsv4_engine_close(e);
    return ret;
}
