/* `dsv4-batch bench`: engine speed at the real DeepSeek-V4 sizes with
 * synthetic weights, against a ceiling model of the hardware.
 *
 * The engine is opened from a config.json alone (dsv4_engine_open_synthetic:
 * weights made on the GPU), with as many layers as fit beside the state the
 * runs below need; the rest of the model is extrapolated linearly per layer
 * (the kept layers are a stratified sample of the layer kinds), and the
 * output says so. Everything runs through the public engine API the jobs
 * use: one sequence is prefilled in the pipeline's pieces (DSV4_PREFILL_CHUNK,
 * 1024 tokens, 8192 with several devices so their prefill overlap has
 * chunks to fill; the engine splits them into its own chunks) up to the largest
 * context, timed at each requested context; at each decode context it is
 * forked, and batches of forks decode together (dsv4_decode).
 *
 * Extrapolation: a prefill without logits is all layers (the embedding is
 * negligible), so its time scales by L/N. A decode step also runs the head;
 * its cost for B rows is measured apart (a B-token prefill with and without
 * logits) and kept out of the scaling.
 *
 * The ceiling model (printed) is built from the config: weight bytes and
 * matrix FLOPs per token, the indexer's scores over L/4 keys per CSA layer,
 * HCA's L/128 entries and the window; a prefill chunk costs
 * max(FLOPs / peak, weight bytes of the experts it touches / bandwidth), a
 * decode step max(FLOPs / peak, (weights touched + state read) / bandwidth). */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/dsv4_engine.h"
#include "pipeline/dsv4_cli.h"

#define MAX_LIST 16
#define MAX_PROF 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4-batch bench [--config FILE] [--layers N] [--contexts 8192,65536,262144]\n"
            "                        [--decode-contexts 8192,65536] [--batches 1,16,64] [--steps N]\n"
            "                        [--time-limit SECONDS] [--bandwidth TBPS] [--tflops N]\n"
            "                        [--profile] [--json] [--device D] [--devices LIST] [--split LIST]\n\n"
            "Engine speed at a config's real sizes with synthetic weights made on the GPU.\n"
            "Prefill tokens/s (averaged from position 0) at each context, decode tokens/s of\n"
            "batches of forked sequences at each decode context, GPU memory, state bytes per\n"
            "token, and each figure's ratio to the printed ceiling model.\n\n"
            "  --config FILE      config.json (default bench/configs/deepseek-v4-flash.config.json)\n"
            "  --layers N         keep N layers (default: as many as fit; the rest is extrapolated)\n"
            "  --contexts L       prefill contexts, tokens (default 8192,65536,262144)\n"
            "  --decode-contexts  decode contexts, each <= the largest prefill context (default 8192,65536)\n"
            "  --batches L        decode batch sizes (default 1,16,64)\n"
            "  --steps N          timed decode steps per batch (default 8)\n"
            "  --time-limit S     stop prefilling after S seconds; later contexts are reported missing\n"
            "  --bandwidth TBPS   ceiling memory bandwidth (default 2.83, H100 Vulkan copy; 4.3 on an H200)\n"
            "  --tflops N         ceiling matrix throughput (default 790, H100 bf16)\n"
            "  --profile          per-operation GPU time from timestamps\n"
            "  --json             one JSON object on stdout\n"
            "  --device D         Vulkan device index or name substring\n"
            "  --devices LIST     split the layers over several devices, e.g. 0,1,2,3 (default $DSV4_DEVICES);\n"
            "                     without --layers/--split as many layers as fit all of them\n"
            "  --split LIST       layers per device, e.g. 11,11,11,10 (default $DSV4_SPLIT, else by free memory)\n");
}

static int parse_list(const char *s, int64_t *out, int cap)
{
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno || v < 1 || n == cap) return -1;
        if (*end == 'K' || *end == 'k') { v *= 1024; end++; }
        out[n++] = v;
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
    }
    /* ascending, unique */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
            int64_t t = out[j]; out[j] = out[j - 1]; out[j - 1] = t;
        }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (m == 0 || out[m - 1] != out[i]) out[m++] = out[i];
    return m;
}

/* ------------------------------------------------------------ the model of the config */

typedef struct cfgsz {
    int L, V, D, H, hd, ql, og, ol, E, k, I, inh, ihd, topk, win, hc, fp8, fp4;
    int ratio[1024];
} cfgsz;

static int geti(json_t *o, const char *k, int *v)
{
    json_t *x = json_object_get(o, k);
    if (!json_is_integer(x)) return -1;
    *v = (int)json_integer_value(x);
    return 0;
}

static int load_sizes(const char *path, cfgsz *z, char *err, size_t errlen)
{
    json_error_t je;
    json_t *r = json_load_file(path, 0, &je);
    if (!r) {
        snprintf(err, errlen, "%.1000s:%d:%d: %.500s", path, je.line, je.column, je.text);
        return -1;
    }
    memset(z, 0, sizeof *z);
    const char *keys[] = {"num_hidden_layers", "vocab_size", "hidden_size", "num_attention_heads", "head_dim",
                          "q_lora_rank", "o_groups", "o_lora_rank", "n_routed_experts", "num_experts_per_tok",
                          "moe_intermediate_size", "index_n_heads", "index_head_dim", "index_topk",
                          "sliding_window", "hc_mult"};
    int *dst[] = {&z->L, &z->V, &z->D, &z->H, &z->hd, &z->ql, &z->og, &z->ol, &z->E, &z->k, &z->I,
                  &z->inh, &z->ihd, &z->topk, &z->win, &z->hc};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (geti(r, keys[i], dst[i]) < 0 || *dst[i] < 0) {
            snprintf(err, errlen, "%.1000s: field '%s' missing or not a non-negative integer", path, keys[i]);
            json_decref(r);
            return -1;
        }
    json_t *cr = json_object_get(r, "compress_ratios");
    if (!json_is_array(cr) || (int)json_array_size(cr) < z->L || z->L < 1 || z->L > 1024) {
        snprintf(err, errlen, "%.1000s: compress_ratios missing or shorter than num_hidden_layers", path);
        json_decref(r);
        return -1;
    }
    for (int i = 0; i < z->L; i++) z->ratio[i] = (int)json_integer_value(json_array_get(cr, (size_t)i));
    z->fp8 = json_object_get(r, "quantization_config") != NULL;
    json_t *ed = json_object_get(r, "expert_dtype");
    z->fp4 = json_is_string(ed) && strcmp(json_string_value(ed), "fp4") == 0;
    json_decref(r);
    return 0;
}

/* Bytes of a linear layer [out][in] in its format; params counted too. */
typedef struct acc { double bytes, params; } acc;

static void lin(acc *a, int fmt, double out, double in)
{
    /* fmt 0 bf16, 1 fp8 (+ 128x128 ue8m0 scales), 2 fp4 (+ per-32 scales) */
    double p = out * in;
    a->params += p;
    a->bytes += fmt == 0 ? 2 * p : fmt == 1 ? p + ceil(out / 128) * ceil(in / 128) : p / 2 + p / 32;
}

typedef struct layer_cost {
    double dense_bytes, dense_params; /* per token, everything but routed experts */
    double expert_bytes, expert_params; /* ONE routed expert (w1, w2, w3) */
} layer_cost;

static layer_cost layer_of(const cfgsz *z, int i)
{
    acc d = {0, 0}, x = {0, 0};
    int q = z->fp8 ? 1 : 0, r = z->ratio[i];
    double D = z->D, mixhc = (double)(2 + z->hc) * z->hc;
    lin(&d, q, z->ql, D);
    lin(&d, q, (double)z->H * z->hd, z->ql);
    lin(&d, q, z->hd, D);
    lin(&d, q, (double)z->og * z->ol, (double)z->H * z->hd / z->og);
    lin(&d, q, D, (double)z->og * z->ol);
    if (r) {
        double coff = r == 4 ? 2 : 1;
        lin(&d, 0, 2 * coff * z->hd, D);
        if (r == 4) {
            lin(&d, q, (double)z->inh * z->ihd, z->ql);
            lin(&d, 0, z->inh, D);
            lin(&d, 0, 2 * 2.0 * z->ihd, D);
        }
    }
    lin(&d, 0, z->E, D);                    /* gate */
    lin(&d, q, 3.0 * z->I, D);              /* shared expert */
    d.params += 2 * mixhc * z->hc * D;      /* hc_pre fn, f32, two sites */
    d.bytes += 2 * mixhc * z->hc * D * 4;
    lin(&x, z->fp4 ? 2 : q, 3.0 * z->I, D); /* one routed expert */
    return (layer_cost){d.bytes, d.params, x.bytes, x.params};
}

typedef struct ceiling {
    double bw, peak;                       /* B/s, FLOP/s */
    double dense_bytes, dense_params;      /* all layers + head, per token */
    double expert_bytes, expert_params;    /* all layers, one expert each */
    double head_bytes, head_params;
    double weights_total;                  /* stored weight bytes of the whole model */
    int n_csa, n_hca, n_win;
    double state_elem;                     /* bytes per cached value in the model: 2 (bf16) */
} ceiling;

static void make_ceiling(const cfgsz *z, double bw, double peak, ceiling *c)
{
    memset(c, 0, sizeof *c);
    c->bw = bw;
    c->peak = peak;
    c->state_elem = 2;
    for (int i = 0; i < z->L; i++) {
        layer_cost lc = layer_of(z, i);
        c->dense_bytes += lc.dense_bytes;
        c->dense_params += lc.dense_params;
        c->expert_bytes += lc.expert_bytes;
        c->expert_params += lc.expert_params;
        c->weights_total += lc.dense_bytes + lc.expert_bytes * z->E;
        if (z->ratio[i] == 4) c->n_csa++;
        else if (z->ratio[i]) c->n_hca++;
        else c->n_win++;
    }
    c->head_params = (double)z->V * z->D;
    c->head_bytes = 2 * c->head_params;
    c->weights_total += 2 * c->head_bytes + 2.0 * z->D * (1 + z->hc * z->hc);
}

/* Attention + indexer FLOPs of one token at position p (beyond the matrices). */
static double attn_flops(const cfgsz *z, const ceiling *c, double p)
{
    double qk = 4.0 * z->H * z->hd; /* QK and PV per attended entry */
    double win = p < z->win ? p : z->win;
    double f = c->n_win * qk * win;
    f += c->n_csa * (qk * (win + fmin(z->topk, p / 4)) + 2.0 * z->inh * z->ihd * (p / 4));
    f += c->n_hca * qk * (win + p / 128);
    return f;
}

/* State bytes one decode step reads for one sequence at position p. */
static double state_read(const cfgsz *z, const ceiling *c, double p)
{
    double win = p < z->win ? p : z->win, e = c->state_elem;
    double b = (c->n_win + c->n_csa + c->n_hca) * win * z->hd * e;
    b += c->n_csa * (fmin(z->topk, p / 4) * z->hd + (p / 4) * z->ihd) * e;
    b += c->n_hca * (p / 128) * z->hd * e;
    return b;
}

static double touched(const cfgsz *z, double rows)
{
    return z->E * (1 - pow(1 - (double)z->k / z->E, rows));
}

static double mat_flops_tok(const ceiling *c, const cfgsz *z)
{
    return 2 * (c->dense_params + c->head_params * 0 + z->k * c->expert_params);
}

/* Ceiling tokens/s of a prefill from 0 to ctx in chunks of `chunk` tokens. */
static double ceil_prefill(const cfgsz *z, const ceiling *c, int64_t ctx, int chunk)
{
    double t = 0;
    for (int64_t a = 0; a < ctx; a += chunk) {
        int64_t m = ctx - a < chunk ? ctx - a : chunk;
        double fl = m * mat_flops_tok(c, z) + m * attn_flops(z, c, (double)a + m / 2.0);
        double by = c->dense_bytes + touched(z, (double)m * 1) * c->expert_bytes;
        t += fmax(fl / c->peak, by / c->bw);
    }
    return (double)ctx / t;
}

static double ceil_decode(const cfgsz *z, const ceiling *c, int64_t ctx, int batch)
{
    double fl = batch * (mat_flops_tok(c, z) + 2 * c->head_params + attn_flops(z, c, (double)ctx));
    double by = c->dense_bytes + c->head_bytes + touched(z, batch) * c->expert_bytes +
                batch * state_read(z, c, (double)ctx);
    return batch / fmax(fl / c->peak, by / c->bw);
}

/* GPU bytes of one sequence's state at ctx for the whole model, as the engine
 * keeps it (f32 rows, the window ring and compressor rings). */
static double state_gpu(const cfgsz *z, double ctx)
{
    double b = 0;
    for (int i = 0; i < z->L; i++) {
        int r = z->ratio[i];
        b += (double)z->win * z->hd * 4;
        if (r) b += ceil(ctx / r) * z->hd * 4 + (r == 4 ? 4.0 : 1.0) * r * 2 * z->hd * 4;
        if (r == 4) b += ceil(ctx / 4) * z->ihd * 4 + 8.0 * 4 * z->ihd * 4;
    }
    return b;
}

static double state_per_token(const cfgsz *z)
{
    double b = 0;
    for (int i = 0; i < z->L; i++) {
        int r = z->ratio[i];
        if (r) b += (double)z->hd * 2 / r;
        if (r == 4) b += (double)z->ihd * 2 / 4;
    }
    return b;
}

/* ------------------------------------------------------------ measuring */

typedef struct prof_set {
    char what[48];
    dsv4_profile_entry e[MAX_PROF];
    int n;
} prof_set;

typedef struct result {
    int64_t ctx;
    int batch;            /* 0: prefill */
    double seconds;       /* measured, N layers */
    double tps_meas, tps, ceil, head_s;
    int ok;
    char note[96];
    /* decode: device memory of the batch's state (dsv4_seq_state_bytes, N
       layers): the prefix sequence's own buffers, all forks' own buffers,
       and the prefix rows each fork reads shared */
    uint64_t st_prefix, st_forks, st_shared;
    /* recorded per pass (prefill: averaged from position 0) or per decode step */
    double passes, submits, dispatches, barriers, record_ms;
} result;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_tokens(int32_t *t, int64_t n, int V, uint64_t *rng)
{
    for (int64_t i = 0; i < n; i++) t[i] = (int32_t)(rng_next(rng) % (uint64_t)(V > 2 ? V - 2 : 1)) + (V > 2 ? 2 : 0);
}

static void take_profile(dsv4_engine *e, prof_set *ps, int *nps, const char *what)
{
    if (*nps >= 32) return;
    prof_set *p = &ps[(*nps)++];
    snprintf(p->what, sizeof p->what, "%s", what);
    p->n = dsv4_engine_profile(e, p->e, MAX_PROF);
}

/* Seconds of the head for B rows: B-token prefills with and without logits. */
static double head_seconds(dsv4_engine *e, int B, int V, uint64_t *rng, char *err, size_t errlen)
{
    double best[2] = {1e30, 1e30};
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    float *lg = malloc((size_t)B * V * sizeof *lg);
    dsv4_seq *s = NULL;
    int rc = (!tok || !lg) ? -1 : dsv4_seq_create(e, &s, err, errlen);
    for (int rep = 0; rep < 2 && !rc; rep++)
        for (int w = 0; w < 2 && !rc; w++) {
            fill_tokens(tok, B, V, rng);
            double t0 = now_s();
            rc = dsv4_seq_prefill(s, tok, B, w ? lg : NULL, w ? B : 0, err, errlen);
            double t = now_s() - t0;
            if (t < best[w]) best[w] = t;
        }
    dsv4_seq_free(s);
    free(tok);
    free(lg);
    if (rc) return 0;
    return best[1] > best[0] ? best[1] - best[0] : 0;
}

/* ------------------------------------------------------------ output */

static void human(char *buf, size_t n, double bytes)
{
    if (bytes >= 1e9) snprintf(buf, n, "%.2f GB", bytes / 1e9);
    else if (bytes >= 1e6) snprintf(buf, n, "%.2f MB", bytes / 1e6);
    else snprintf(buf, n, "%.0f B", bytes);
}

static const char *ctx_str(int64_t c, char *buf, size_t n)
{
    if (c % 1024 == 0) snprintf(buf, n, "%lldK", (long long)(c / 1024));
    else snprintf(buf, n, "%lld", (long long)c);
    return buf;
}

int dsv4_cmd_bench(int argc, char **argv)
{
    const char *config = NULL, *device = NULL, *devices = NULL, *split = NULL;
    int layers = 0, profile = 0, json = 0, steps = 8;
    double time_limit = 0, bw_tb = 2.83, tflops = 790;
    int bw_given = 0;
    int64_t ctxs[MAX_LIST] = {8192, 65536, 262144}, dctx[MAX_LIST] = {8192, 65536}, batches[MAX_LIST] = {1, 16, 64};
    int n_ctx = 3, n_dctx = 2, n_b = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return DSV4_EXIT_OK;
        } else if (strcmp(a, "--profile") == 0) profile = 1;
        else if (strcmp(a, "--json") == 0) json = 1;
        else if (strcmp(a, "--config") == 0 && has) config = argv[++i];
        else if (strcmp(a, "--device") == 0 && has) device = argv[++i];
        else if (strcmp(a, "--devices") == 0 && has) devices = argv[++i];
        else if (strcmp(a, "--split") == 0 && has) split = argv[++i];
        else if (strcmp(a, "--layers") == 0 && has) layers = atoi(argv[++i]);
        else if (strcmp(a, "--steps") == 0 && has) steps = atoi(argv[++i]);
        else if (strcmp(a, "--time-limit") == 0 && has) time_limit = atof(argv[++i]);
        else if (strcmp(a, "--bandwidth") == 0 && has) bw_tb = atof(argv[++i]), bw_given = 1;
        else if (strcmp(a, "--tflops") == 0 && has) tflops = atof(argv[++i]);
        else if (strcmp(a, "--contexts") == 0 && has) n_ctx = parse_list(argv[++i], ctxs, MAX_LIST);
        else if (strcmp(a, "--decode-contexts") == 0 && has) n_dctx = parse_list(argv[++i], dctx, MAX_LIST);
        else if (strcmp(a, "--batches") == 0 && has) n_b = parse_list(argv[++i], batches, MAX_LIST);
        else {
            fprintf(stderr, "dsv4-batch bench: unknown option or missing value '%s'\n", a);
            usage(stderr);
            return DSV4_EXIT_USAGE;
        }
    }
    if (n_ctx < 1 || n_dctx < 0 || n_b < 1 || layers < 0 || steps < 1 || bw_tb <= 0 || tflops <= 0) {
        fprintf(stderr, "dsv4-batch bench: bad --contexts/--decode-contexts/--batches (comma-separated positive "
                        "integers), --layers, --steps, --bandwidth or --tflops\n");
        return DSV4_EXIT_USAGE;
    }
    for (int i = 0; i < n_dctx; i++)
        if (dctx[i] > ctxs[n_ctx - 1]) {
            fprintf(stderr, "dsv4-batch bench: decode context %lld beyond the largest prefill context %lld\n",
                    (long long)dctx[i], (long long)ctxs[n_ctx - 1]);
            return DSV4_EXIT_USAGE;
        }
    char defcfg[PATH_MAX];
    if (!config) {
        /* the repository's copy; next to the binary's tree when run elsewhere */
        config = "bench/configs/deepseek-v4-flash.config.json";
        if (access(config, R_OK) != 0) {
            char exe[PATH_MAX];
            ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
            if (k > 0) {
                exe[k] = 0;
                char *sl = strrchr(exe, '/');
                if (sl) *sl = 0;
                snprintf(defcfg, sizeof defcfg, "%.3000s/../bench/configs/deepseek-v4-flash.config.json", exe);
                config = defcfg;
            }
        }
    }
    char err[2048];
    cfgsz *z = calloc(1, sizeof *z);
    if (!z) return DSV4_EXIT_FAIL;
    if (load_sizes(config, z, err, sizeof err) < 0) {
        fprintf(stderr, "dsv4-batch bench: %s\n", err);
        free(z);
        return DSV4_EXIT_USAGE;
    }
    ceiling cl;
    make_ceiling(z, bw_tb * 1e12, tflops * 1e12, &cl);
    const char *pcs = getenv("DSV4_PREFILL_CHUNK");
    int chunk = 0; /* the engine's tokens per pass, once it is open */
    int64_t piece = pcs && atoll(pcs) > 0 ? atoll(pcs) : 1024;
    int bmax = (int)batches[n_b - 1];

    /* state the runs hold at once, per layer on average: the prefill sequence
       at the largest context plus a fork per decode context; later the largest
       decode context's fork and bmax forks of it. The engine grows a cache by
       doubling, so count twice the rows. */
    double s_pre = state_gpu(z, 2.0 * ctxs[n_ctx - 1]);
    for (int i = 0; i < n_dctx; i++) s_pre += state_gpu(z, 2.0 * dctx[i]);
    double s_dec = n_dctx ? (1.0 + bmax) * state_gpu(z, 2.0 * dctx[n_dctx - 1]) : 0;
    double reserve_mib = fmax(s_pre, s_dec) / z->L / 1048576.0 + 1;

    dsv4_engine_options opt = {.device = device, .verbose = 0, .profile = profile, .devices = devices, .split = split};
    dsv4_engine *e = NULL;
    double t_open = now_s();
    int max_layers = layers > 0 ? layers : -(int)ceil(reserve_mib);
    int rc = dsv4_engine_open_synthetic(config, max_layers, &opt, &e, err, sizeof err);
    if (rc) {
        fprintf(stderr, "dsv4-batch bench: %s\n", err);
        free(z);
        return rc == DSV4_EDEVICE ? DSV4_EXIT_MISSING : DSV4_EXIT_FAIL;
    }
    t_open = now_s() - t_open;
    char note[2048];
    snprintf(note, sizeof note, "%s", err);
    int N = dsv4_engine_info(e)->num_hidden_layers;
    chunk = dsv4_engine_chunk(e);
    /* an H200 moves 4.3 TB/s in a device copy (H100: 2.83): its own ceiling
       unless --bandwidth says otherwise */
    if (!bw_given && strstr(dsv4_engine_device_name(e), "H200")) {
        bw_tb = 4.3;
        make_ceiling(z, bw_tb * 1e12, tflops * 1e12, &cl);
    }
    unsigned long long wbytes = 0, budget = 0;
    const char *w = strstr(note, "weight_bytes=");
    if (w) wbytes = strtoull(w + 13, NULL, 10);
    const char *bg = strstr(note, "budget_bytes=");
    if (bg) budget = strtoull(bg + 13, NULL, 10);
    const char *selp = strstr(note, "selected=");
    const char *selected = selp ? selp + 9 : "";
    /* several devices: "split=11,11,11,10 " before selected= */
    char split_s[128] = "";
    const char *spp = strstr(note, "split=");
    if (spp) sscanf(spp + 6, "%127[0-9,]", split_s);
    /* several devices overlap a prefill only within one call (N-1 chunks of
       fill and drain each): longer pieces unless DSV4_PREFILL_CHUNK says */
    if (split_s[0] && !(pcs && atoll(pcs) > 0)) piece = 8192;
    double scale = (double)z->L / N;
    /* fixed part of the loaded weights (embedding, head, norms): from the config */
    double fixed_w = 2 * cl.head_bytes;
    double wtotal_est = fixed_w + ((double)wbytes - fixed_w) * scale;
    const dsv4_state_layout *lay = dsv4_engine_state_layout(e);
    double spt_loaded = 0;
    for (uint32_t i = 0; i < lay->n_streams; i++) spt_loaded += (double)lay->streams[i].row_bytes / lay->streams[i].ratio;

    result res[MAX_LIST + MAX_LIST * MAX_LIST];
    int nres = 0;
    prof_set *ps = calloc(32, sizeof *ps);
    int nps = 0;
    uint64_t rng = 0x5eed;
    int V = z->V;
    int64_t maxctx = ctxs[n_ctx - 1];
    int32_t *tok = malloc((size_t)(piece > bmax ? piece : bmax) * sizeof *tok);
    float *logits = malloc((size_t)bmax * V * sizeof *logits);
    dsv4_seq *base[MAX_LIST] = {0};
    dsv4_seq *s = NULL;
    int failed = 0;
    int64_t nonfinite = 0;
    if (!ps || !tok || !logits) {
        fprintf(stderr, "dsv4-batch bench: out of memory\n");
        failed = 1;
        goto done;
    }

    /* warm-up: one engine chunk (at most the first context) on a throwaway
       sequence, so first-use costs stay out of the timings */
    rc = dsv4_seq_create(e, &s, err, sizeof err);
    if (!rc) {
        int64_t wn = chunk < ctxs[0] ? chunk : ctxs[0];
        if (wn > piece) wn = piece;
        fill_tokens(tok, wn, V, &rng);
        rc = dsv4_seq_prefill(s, tok, wn, NULL, 0, err, sizeof err);
    }
    dsv4_seq_free(s);
    s = NULL;
    if (profile) take_profile(e, ps, &nps, "warm-up");
    nps = 0;
    if (!rc) rc = dsv4_seq_create(e, &s, err, sizeof err);
    if (rc) {
        fprintf(stderr, "dsv4-batch bench: %s\n", err);
        failed = 1;
        goto done;
    }

    /* prefill: one sequence from 0 to the largest context */
    {
        int ci = 0, di = 0, stopped = 0;
        dsv4_engine_counts cn, sum = {0, 0, 0, 0, 0};
        dsv4_engine_take_counts(e, &cn);
        double t0 = now_s();
        int64_t pos = 0;
        while (pos < maxctx && !stopped) {
            int64_t next = maxctx;
            if (ci < n_ctx && ctxs[ci] < next) next = ctxs[ci];
            if (di < n_dctx && dctx[di] < next) next = dctx[di];
            int64_t k = next - pos < piece ? next - pos : piece;
            fill_tokens(tok, k, V, &rng);
            rc = dsv4_seq_prefill(s, tok, k, NULL, 0, err, sizeof err);
            if (rc) {
                fprintf(stderr, "dsv4-batch bench: prefill at %lld: %s\n", (long long)pos, err);
                break;
            }
            pos += k;
            double el = now_s() - t0;
            dsv4_engine_take_counts(e, &cn);
            sum.passes += cn.passes;
            sum.submits += cn.submits;
            sum.dispatches += cn.dispatches;
            sum.barriers += cn.barriers;
            sum.record_seconds += cn.record_seconds;
            while (ci < n_ctx && ctxs[ci] == pos) {
                result *r = &res[nres++];
                memset(r, 0, sizeof *r);
                r->ctx = pos;
                r->seconds = el;
                r->tps_meas = pos / el;
                r->tps = pos / (el * scale);
                r->ceil = ceil_prefill(z, &cl, pos, chunk);
                r->ok = 1;
                double np = sum.passes ? (double)sum.passes : 1;
                r->passes = (double)sum.passes;
                r->submits = sum.submits / np;
                r->dispatches = sum.dispatches / np;
                r->barriers = sum.barriers / np;
                r->record_ms = 1e3 * sum.record_seconds / np;
                ci++;
            }
            while (di < n_dctx && dctx[di] == pos) {
                double tf = now_s();
                rc = dsv4_seq_fork(s, &base[di], err, sizeof err);
                if (rc) fprintf(stderr, "dsv4-batch bench: fork at %lld: %s\n", (long long)pos, err);
                dsv4_engine_take_counts(e, &cn); /* not prefill */
                di++;
                t0 += now_s() - tf; /* forking is not prefill time */
            }
            if (time_limit > 0 && now_s() - t0 > time_limit && pos < maxctx) {
                fprintf(stderr, "dsv4-batch bench: prefill stopped at %lld tokens after %.0f s (--time-limit)\n",
                        (long long)pos, now_s() - t0);
                stopped = 1;
            }
        }
        for (; ci < n_ctx; ci++) {
            result *r = &res[nres++];
            memset(r, 0, sizeof *r);
            r->ctx = ctxs[ci];
            r->ceil = ceil_prefill(z, &cl, ctxs[ci], chunk);
            snprintf(r->note, sizeof r->note, "%s", rc ? "failed" : "not reached (--time-limit)");
        }
        if (profile) take_profile(e, ps, &nps, "prefill");
        dsv4_seq_free(s);
        s = NULL;
    }

    /* decode: batches of forks of each decode context's sequence */
    {
        double head_s[MAX_LIST] = {0};
        for (int bi = 0; bi < n_b; bi++) head_s[bi] = head_seconds(e, (int)batches[bi], V, &rng, err, sizeof err);
        if (profile) { /* drop the head measurements */
            dsv4_profile_entry tmp[MAX_PROF];
            dsv4_engine_profile(e, tmp, MAX_PROF);
        }
        for (int di = 0; di < n_dctx; di++) {
            for (int bi = 0; bi < n_b; bi++) {
                int B = (int)batches[bi];
                result *r = &res[nres++];
                memset(r, 0, sizeof *r);
                r->ctx = dctx[di];
                r->batch = B;
                r->ceil = ceil_decode(z, &cl, dctx[di], B);
                r->head_s = head_s[bi];
                if (!base[di]) {
                    snprintf(r->note, sizeof r->note, "context not reached");
                    continue;
                }
                dsv4_seq **fk = calloc((size_t)B, sizeof *fk);
                int frc = fk ? 0 : -1;
                for (int j = 0; j < B && !frc; j++) frc = dsv4_seq_fork(base[di], &fk[j], err, sizeof err);
                if (!frc) {
                    dsv4_seq_state_bytes(base[di], &r->st_prefix, NULL);
                    for (int j = 0; j < B; j++) {
                        uint64_t own, sh;
                        dsv4_seq_state_bytes(fk[j], &own, &sh);
                        r->st_forks += own;
                        r->st_shared = sh;
                    }
                }
                if (!frc) {
                    fill_tokens(tok, B, V, &rng);
                    frc = dsv4_decode(fk, B, tok, logits, err, sizeof err); /* warm-up step */
                }
                if (profile) {
                    dsv4_profile_entry tmp[MAX_PROF];
                    dsv4_engine_profile(e, tmp, MAX_PROF);
                }
                dsv4_engine_counts cn;
                dsv4_engine_take_counts(e, &cn);
                double t0 = now_s();
                for (int st = 0; st < steps && !frc; st++) {
                    fill_tokens(tok, B, V, &rng);
                    frc = dsv4_decode(fk, B, tok, logits, err, sizeof err);
                }
                double el = now_s() - t0;
                dsv4_engine_take_counts(e, &cn);
                r->passes = (double)cn.passes / steps;
                r->submits = (double)cn.submits / steps;
                r->dispatches = (double)cn.dispatches / steps;
                r->barriers = (double)cn.barriers / steps;
                r->record_ms = 1e3 * cn.record_seconds / steps;
                for (int64_t j = 0; j < (int64_t)B * V && !frc; j++) /* the synthetic weights must keep values finite */
                    if (!isfinite(logits[j])) nonfinite++;
                if (frc) {
                    snprintf(r->note, sizeof r->note, "failed: %.80s", fk ? err : "out of memory");
                    fprintf(stderr, "dsv4-batch bench: decode batch %d at %lld: %s\n", B, (long long)dctx[di], err);
                } else {
                    double step = el / steps, hs = head_s[bi] < step ? head_s[bi] : 0;
                    r->seconds = el;
                    r->tps_meas = B / step;
                    r->tps = B / (hs + (step - hs) * scale);
                    r->ok = 1;
                    if (profile) {
                        char what[48];
                        char cb[32];
                        snprintf(what, sizeof what, "decode %s batch %d", ctx_str(dctx[di], cb, sizeof cb), B);
                        take_profile(e, ps, &nps, what);
                    }
                }
                for (int j = 0; j < B && fk; j++) dsv4_seq_free(fk[j]);
                free(fk);
            }
            dsv4_seq_free(base[di]);
            base[di] = NULL;
        }
    }

    /* ---- report ---- */
    char hb[32], hb2[32];
    double spt = state_per_token(z);
    if (json) {
        json_t *o = json_object(), *jc = json_object(), *jp = json_array(), *jd = json_array(), *jpr = json_array();
        json_t *jsel = json_array();
        for (const char *p = selected; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            json_array_append_new(jsel, json_integer(v));
            p = *end == ',' ? end + 1 : end;
        }
        json_object_set_new(o, "config", json_string(config));
        json_object_set_new(o, "device", json_string(dsv4_engine_device_name(e)));
        json_object_set_new(o, "layers_total", json_integer(z->L));
        json_object_set_new(o, "layers_loaded", json_integer(N));
        json_object_set_new(o, "layers_selected", jsel);
        json_object_set_new(o, "extrapolated", json_boolean(N < z->L));
        json_object_set_new(o, "chunk_tokens", json_integer(chunk));
        json_object_set_new(o, "prefill_piece_tokens", json_integer(piece));
        json_object_set_new(o, "open_seconds", json_real(t_open));
        json_object_set_new(o, "device_budget_bytes", json_integer((json_int_t)budget));
        if (split_s[0]) json_object_set_new(o, "layers_per_device", json_string(split_s));
        json_object_set_new(o, "weight_bytes_loaded", json_integer((json_int_t)wbytes));
        json_object_set_new(o, "weight_bytes_model_est", json_real(wtotal_est));
        json_object_set_new(o, "weight_bytes_model_config", json_real(cl.weights_total));
        json_object_set_new(o, "nonfinite_logits", json_integer(nonfinite));
        json_object_set_new(o, "state_bytes_per_token", json_real(spt));
        json_object_set_new(o, "state_bytes_per_token_loaded", json_real(spt_loaded));
        json_t *sg = json_object();
        for (int i = 0; i < n_ctx; i++) {
            char cb[32];
            snprintf(cb, sizeof cb, "%lld", (long long)ctxs[i]);
            json_object_set_new(sg, cb, json_real(state_gpu(z, (double)ctxs[i])));
        }
        json_object_set_new(o, "state_gpu_bytes_per_sequence", sg);
        json_object_set_new(jc, "bandwidth_bytes_per_s", json_real(cl.bw));
        json_object_set_new(jc, "matrix_flops_per_s", json_real(cl.peak));
        json_object_set_new(jc, "active_params_per_token", json_real(cl.dense_params + z->k * cl.expert_params + cl.head_params));
        json_object_set_new(jc, "matrix_flops_per_token", json_real(mat_flops_tok(&cl, z) + 2 * cl.head_params));
        json_object_set_new(jc, "weight_bytes_per_token_batch1", json_real(cl.dense_bytes + cl.head_bytes + z->k * cl.expert_bytes));
        json_object_set_new(jc, "csa_layers", json_integer(cl.n_csa));
        json_object_set_new(jc, "hca_layers", json_integer(cl.n_hca));
        json_object_set_new(jc, "window_layers", json_integer(cl.n_win));
        json_object_set_new(o, "ceiling", jc);
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            json_t *x = json_object();
            json_object_set_new(x, "context", json_integer(r->ctx));
            if (r->batch) json_object_set_new(x, "batch", json_integer(r->batch));
            json_object_set_new(x, "ok", json_boolean(r->ok));
            if (r->ok) {
                json_object_set_new(x, "seconds", json_real(r->seconds));
                json_object_set_new(x, "tokens_per_s_measured", json_real(r->tps_meas));
                json_object_set_new(x, "tokens_per_s", json_real(r->tps));
                json_object_set_new(x, "ratio_to_ceiling", json_real(r->tps / r->ceil));
            } else {
                json_object_set_new(x, "note", json_string(r->note));
            }
            json_object_set_new(x, "ceiling_tokens_per_s", json_real(r->ceil));
            if (r->batch) json_object_set_new(x, "head_seconds", json_real(r->head_s));
            if (r->ok) {
                json_t *rec = json_object();
                json_object_set_new(rec, r->batch ? "passes_per_step" : "passes", json_real(r->passes));
                json_object_set_new(rec, "submits", json_real(r->submits));
                json_object_set_new(rec, "dispatches", json_real(r->dispatches));
                json_object_set_new(rec, "barriers", json_real(r->barriers));
                json_object_set_new(rec, "host_record_ms", json_real(r->record_ms));
                json_object_set_new(x, r->batch ? "recorded_per_step" : "recorded_per_pass", rec);
            }
            if (r->batch) {
                json_object_set_new(x, "indexer_flops_per_token", json_real(cl.n_csa * 2.0 * z->inh * z->ihd * (r->ctx / 4.0)));
                json_object_set_new(x, "state_bytes_read_per_token", json_real(state_read(z, &cl, (double)r->ctx)));
                json_object_set_new(x, "state_bytes_prefix_own", json_integer((json_int_t)r->st_prefix));
                json_object_set_new(x, "state_bytes_forks_own", json_integer((json_int_t)r->st_forks));
                json_object_set_new(x, "state_bytes_shared_per_fork", json_integer((json_int_t)r->st_shared));
            }
            json_array_append_new(r->batch ? jd : jp, x);
        }
        json_object_set_new(o, "prefill", jp);
        json_object_set_new(o, "decode", jd);
        for (int i = 0; i < nps; i++) {
            json_t *x = json_object(), *ops = json_array();
            json_object_set_new(x, "what", json_string(ps[i].what));
            for (int j = 0; j < ps[i].n; j++) {
                json_t *y = json_object();
                json_object_set_new(y, "op", json_string(ps[i].e[j].op));
                json_object_set_new(y, "ms", json_real(ps[i].e[j].ms));
                json_object_set_new(y, "calls", json_integer(ps[i].e[j].calls));
                json_array_append_new(ops, y);
            }
            json_object_set_new(x, "ops", ops);
            json_array_append_new(jpr, x);
        }
        json_object_set_new(o, "profile", jpr);
        char *txt = json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(6));
        if (txt) printf("%s\n", txt);
        free(txt);
        json_decref(o);
    } else {
        printf("dsv4-batch bench: %s\n", config);
        printf("device: %s (device-local budget %.1f GiB)\n", dsv4_engine_device_name(e), budget / 1073741824.0);
        if (split_s[0]) printf("layers per device: %s (pipeline parallel)\n", split_s);
        printf("layers: %d of %d loaded with synthetic weights (original layers %s)%s\n", N, z->L, selected,
               N < z->L ? "; the other layers are EXTRAPOLATED linearly per layer" : "");
        human(hb, sizeof hb, (double)wbytes);
        human(hb2, sizeof hb2, wtotal_est);
        printf("weights on the GPU: %s for %d layers (measured); %s for %d layers (extrapolated; from the "
               "config: %.2f GB)\n", hb, N, hb2, z->L, cl.weights_total / 1e9);
        printf("state: %.0f bytes per token (cache format, bf16 rows; %d CSA, %d HCA, %d window-only layers); the "
               "GPU keeps f32:", spt, cl.n_csa, cl.n_hca, cl.n_win);
        for (int i = 0; i < n_ctx; i++) {
            char cb[32];
            human(hb, sizeof hb, state_gpu(z, (double)ctxs[i]));
            printf(" %s per sequence at %s%s", hb, ctx_str(ctxs[i], cb, sizeof cb), i + 1 < n_ctx ? "," : "\n");
        }
        printf("engine open (weights made on the GPU): %.1f s; prefill in pieces of %lld tokens, engine chunk %d\n\n",
               t_open, (long long)piece, chunk);
        double mf = mat_flops_tok(&cl, z) + 2 * cl.head_params;
        printf("ceiling model (whole model, %d layers):\n", z->L);
        printf("  memory bandwidth %.2f TB/s, matrix throughput %.0f TFLOP/s (bf16)\n", cl.bw / 1e12, cl.peak / 1e12);
        printf("  active parameters per token %.2f B; matrix work %.1f GFLOP per token\n",
               (cl.dense_params + z->k * cl.expert_params + cl.head_params) / 1e9, mf / 1e9);
        printf("  weight bytes per token at batch 1: %.2f GB (dense %.2f + %d experts x %.3f GB/layer-set + head %.2f)\n",
               (cl.dense_bytes + cl.head_bytes + z->k * cl.expert_bytes) / 1e9, cl.dense_bytes / 1e9, z->k,
               cl.expert_bytes / 1e9, cl.head_bytes / 1e9);
        printf("  indexer: %d CSA layers x 2 x %d heads x %d dims x L/4 keys = %.0f FLOP per token per context token\n",
               cl.n_csa, z->inh, z->ihd, cl.n_csa * 2.0 * z->inh * z->ihd / 4);
        printf("  attention: (window %d + top-k %d) entries per CSA layer, window + L/128 per HCA layer, x 4 x %d heads x %d\n",
               z->win, z->topk, z->H, z->hd);
        for (int i = 0; i < n_ctx; i++) {
            char cb[32];
            printf("    at %s: indexer %.1f GFLOP/token, attention %.2f GFLOP/token, decode state read %.1f MB/token\n",
                   ctx_str(ctxs[i], cb, sizeof cb), cl.n_csa * 2.0 * z->inh * z->ihd * (ctxs[i] / 4.0) / 1e9,
                   (attn_flops(z, &cl, (double)ctxs[i]) - cl.n_csa * 2.0 * z->inh * z->ihd * (ctxs[i] / 4.0)) / 1e9,
                   state_read(z, &cl, (double)ctxs[i]) / 1e6);
        }
        printf("  prefill chunk of %d tokens: max(FLOPs / peak, (dense + experts touched) bytes / bandwidth);\n", chunk);
        printf("  decode step of B: max(FLOPs / peak, (dense + head + experts touched by B + B x state) / bandwidth)\n");
        printf("  batch-1 decode bound at 0 context: %.0f tokens/s; short-context prefill bound (compute only): %.0f tokens/s\n\n",
               ceil_decode(z, &cl, 1, 1), cl.peak / mf);
        printf("prefill (one sequence from position 0; tokens/s averaged over the whole prefill)\n");
        printf("  %-8s %14s %14s %12s %10s %7s\n", "context", "seconds(N)", "tok/s(N)", "tok/s(all)", "ceiling", "ratio");
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            char cb[32];
            if (r->batch) continue;
            if (r->ok)
                printf("  %-8s %14.2f %14.1f %12.1f %10.0f %6.1f%%\n", ctx_str(r->ctx, cb, sizeof cb), r->seconds,
                       r->tps_meas, r->tps, r->ceil, 100 * r->tps / r->ceil);
            else
                printf("  %-8s %s (ceiling %.0f)\n", ctx_str(r->ctx, cb, sizeof cb), r->note, r->ceil);
        }
        printf("decode (batches of forked sequences, one token each per step, %d steps timed)\n", steps);
        printf("  %-8s %5s %12s %12s %12s %10s %7s\n", "context", "batch", "ms/step(N)", "tok/s(N)", "tok/s(all)",
               "ceiling", "ratio");
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            char cb[32];
            if (!r->batch) continue;
            if (r->ok)
                printf("  %-8s %5d %12.2f %12.1f %12.1f %10.0f %6.1f%%\n", ctx_str(r->ctx, cb, sizeof cb), r->batch,
                       1e3 * r->seconds / steps, r->tps_meas, r->tps, r->ceil, 100 * r->tps / r->ceil);
            else
                printf("  %-8s %5d %s (ceiling %.0f)\n", ctx_str(r->ctx, cb, sizeof cb), r->batch, r->note, r->ceil);
        }
        printf("decode state on the GPU (measured, %d layers): the prefix's compressed rows, held once and read "
               "by every fork (not copied), + the prefix sequence's own buffers + the forks' own buffers\n", N);
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            char cb[32], h1[32], h2[32], h3[32], h4[32];
            if (!r->batch || !r->st_prefix) continue;
            human(h1, sizeof h1, (double)r->st_prefix);
            human(h2, sizeof h2, (double)r->st_forks);
            human(h3, sizeof h3, (double)r->st_forks / r->batch);
            human(h4, sizeof h4, (double)r->st_shared);
            printf("  %-8s %5d  shared %s + prefix %s + forks %s (%s each)\n", ctx_str(r->ctx, cb, sizeof cb),
                   r->batch, h4, h1, h2, h3);
        }
        printf("recorded (%d layers): dispatches, the barriers among them, host time recording them, command "
               "buffers%s\n", N,
               profile ? " (--profile: a barrier after every dispatch)" : "");
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            char cb[32];
            if (!r->ok) continue;
            if (r->batch)
                printf("  decode %-8s batch %-4d per step: %7.0f dispatches, %6.0f barriers, %7.3f ms, %4.1f submits\n",
                       ctx_str(r->ctx, cb, sizeof cb), r->batch, r->dispatches, r->barriers, r->record_ms,
                       r->submits);
            else
                printf("  prefill to %-8s per pass: %7.0f dispatches, %6.0f barriers, %7.3f ms, %4.1f submits "
                       "(%.0f passes)\n", ctx_str(r->ctx, cb, sizeof cb), r->dispatches, r->barriers, r->record_ms,
                       r->submits, r->passes);
        }
        if (nonfinite) printf("WARNING: %lld non-finite logits in the decode outputs\n", (long long)nonfinite);
        printf("(N) measured with %d layers; (all) extrapolated to %d layers: prefill time x %d/%d; decode (step - head) x "
               "%d/%d + head, the head timed apart\n", N, z->L, z->L, N, z->L, N);
        for (int i = 0; i < nps; i++) {
            double tot = 0;
            for (int j = 0; j < ps[i].n; j++) tot += ps[i].e[j].ms;
            printf("\nprofile: %s (GPU timestamps, %d layers; %.1f ms total)\n", ps[i].what, N, tot);
            /* largest first */
            for (int a = 0; a < ps[i].n; a++)
                for (int b2 = a + 1; b2 < ps[i].n; b2++)
                    if (ps[i].e[b2].ms > ps[i].e[a].ms) {
                        dsv4_profile_entry t = ps[i].e[a];
                        ps[i].e[a] = ps[i].e[b2];
                        ps[i].e[b2] = t;
                    }
            for (int j = 0; j < ps[i].n; j++)
                printf("  %-20s %10.2f ms %5.1f%% %8lld dispatches\n", ps[i].e[j].op, ps[i].e[j].ms,
                       tot > 0 ? 100 * ps[i].e[j].ms / tot : 0, (long long)ps[i].e[j].calls);
        }
    }
    for (int i = 0; i < nres; i++)
        if (!res[i].ok && strncmp(res[i].note, "not reached", 11) != 0) failed = 1;
done:
    for (int i = 0; i < MAX_LIST; i++) dsv4_seq_free(base[i]);
    dsv4_seq_free(s);
    free(tok);
    free(logits);
    free(ps);
    dsv4_engine_close(e);
    free(z);
    return failed ? DSV4_EXIT_FAIL : DSV4_EXIT_OK;
}
