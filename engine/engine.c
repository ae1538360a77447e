/* engine/engine.c: the public contract of engine/dsv4_engine.h on top of the
 * forward pass (engine/forward.c): open/close, sequences, chunked prefill,
 * batched decode, fork, the state export/import of engine/dsv4_state.h and
 * the conformance hooks.
 *
 * A sequence's state lives on the GPU, one buffer per block (window ring,
 * compressors' rings, compressed caches that grow by doubling). Exported
 * rows are bf16 (every cached value is bf16-exact: FP8/FP4 quant-dequantized
 * bf16), the boundary is the raw f32 rings followed by the int64 position.
 *
 * With several devices (engine/shards.c) each block's state lives on the
 * device that owns the block, a pass runs the devices in order with the
 * hidden state handed over through host memory, and a long prefill runs
 * one host thread per device so device k works on chunk c while device k-1
 * works on chunk c+1 (pipelined_prefill). The exported state does not
 * depend on the split. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/bench.h"

/* tokens per pass: a GPU reads every weight once per pass, so longer
   passes cut the weight traffic per token (the routed experts of a V4-Flash
   layer are 3.3 GB, nearly all touched by 256 tokens); a CPU driver gains
   nothing from them and keeps its scratch small */
#define DEFAULT_CHUNK_GPU 1024
#define DEFAULT_CHUNK_CPU 256
#define INITIAL_CAP_TOKENS 1024

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

static int build_layout(dsv4_engine *e)
{
    const dsv4_config *c = &e->m->cfg;
    int n = 0;
    for (int b = 0; b < c->num_hidden_layers; b++) n += e->blk[b].ratio ? (e->blk[b].ratio == 4 ? 2 : 1) : 0;
    e->layout.streams = calloc((size_t)(n ? n : 1), sizeof *e->layout.streams);
    if (!e->layout.streams) return DSV4_ENOMEM;
    e->layout.n_streams = (uint32_t)n;
    int k = 0;
    uint64_t bb = 0;
    for (int b = 0; b < c->num_hidden_layers; b++) {
        const gblock *g = &e->blk[b];
        bb += (uint64_t)c->sliding_window * c->head_dim * 4;
        if (g->ratio) {
            dsv4_state_stream *s = &e->layout.streams[k++];
            snprintf(s->name, sizeof s->name, "layers.%d.attn.kv", b);
            s->ratio = (uint32_t)g->ratio;
            s->row_bytes = (uint32_t)c->head_dim * 2;
            uint64_t coff = g->overlap ? 2 : 1;
            bb += coff * g->ratio * 2 * coff * c->head_dim * 4;
        }
        if (g->ratio == 4) {
            dsv4_state_stream *s = &e->layout.streams[k++];
            snprintf(s->name, sizeof s->name, "layers.%d.attn.index_kv", b);
            s->ratio = 4;
            s->row_bytes = (uint32_t)c->index_head_dim * 2;
            bb += 8ull * 2 * 2 * c->index_head_dim * 4;
        }
    }
    e->layout.boundary_bytes = bb + 8;
    return 0;
}

int engine_chunk_tokens(const dsv4_engine *e)
{
    const char *ch = getenv("DSV4_CHUNK");
    if (ch && atoi(ch) > 0) return atoi(ch);
    return e->rt.props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? DEFAULT_CHUNK_CPU : DEFAULT_CHUNK_GPU;
}

/* The placement of a checkpoint's blocks over the devices, by the config's
   sizes (engine/shards.c). */
static int place_by_config(dsv4_engine *e, const dsv4_engine_options *opt, char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    int nb = dsv4_config_n_blocks(c);
    uint64_t *bytes = calloc((size_t)nb, sizeof *bytes);
    if (!bytes) {
        set_err(err, errlen, "engine: out of memory");
        return DSV4_ENOMEM;
    }
    for (int b = 0; b < nb; b++) bytes[b] = bench_block_bytes(c, b);
    int rc = shards_place(e, c->num_hidden_layers, c->num_nextn_predict_layers, bytes,
                          (uint64_t)c->vocab_size * c->hidden_size * 2,
                          (1ull << 20) + bench_scratch_bytes(c, engine_chunk_tokens(e)), opt ? opt->verbose : 0, err, errlen);
    free(bytes);
    return rc;
}

int dsv4_engine_open(const char *model_dir, const dsv4_engine_options *opt, dsv4_engine **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    dsv4_engine *e = calloc(1, sizeof *e);
    if (!e) {
        set_err(err, errlen, "engine: out of memory");
        return DSV4_ENOMEM;
    }
    int rc = dsv4_model_load(model_dir, &e->m, err, errlen);
    if (rc) goto fail;
    rc = shards_open(e, opt, err, errlen);
    if (rc) goto fail;
    rc = place_by_config(e, opt, err, errlen);
    if (rc) goto fail;
    rc = engine_open_finish(e, opt, model_dir, err, errlen);
    if (rc) goto fail;
    *out = e;
    return 0;
fail:
    dsv4_engine_close(e);
    return rc;
}

/* The rest of an open once e->m exists and the devices are open and placed
   (shards_open, shards_place); engine/bench_weights.c
   (synthetic weights) shares it. On failure the caller closes e. */
int engine_open_finish(dsv4_engine *e, const dsv4_engine_options *opt, const char *model_dir, char *err,
                       size_t errlen)
{
    int rc;
    const dsv4_config *c = &e->m->cfg;
    if (c->head_dim > 1024 || c->index_head_dim > 1024 || c->num_experts_per_tok > 16 || c->hc_mult > 6 ||
        c->n_routed_experts < 1 || c->n_routed_experts > 1024 || (c->index_head_dim & (c->index_head_dim - 1))) {
        snprintf(err, errlen, "%s/config.json: sizes outside what the shaders support (head_dim <= 1024, "
                 "power-of-two index_head_dim, 1 to 1024 routed experts, <= 16 experts per token, hc_mult <= 6)",
                 model_dir);
        return DSV4_EINVAL;
    }
    for (int b = 0; b < dsv4_config_n_blocks(c); b++) {
        int r = c->compress_ratios[b];
        if (r < 0 || (r == 4 ? 8 : r) > 256) { /* compress.comp pools at most 256 rows per entry */
            snprintf(err, errlen, "%s/config.json: compress_ratios[%d] = %d not supported (0, 4 or up to 256)",
                     model_dir, b, r);
            return DSV4_EINVAL;
        }
    }
    for (int k = 0; k < e->n_shards; k++) {
        dsv4_engine *sh = e->shard[k];
        sh->chunk = engine_chunk_tokens(e); /* one size for all devices: the pipelined prefill hands chunks on */
        /* a CPU driver runs barrier-free one-column-per-invocation GEMMs fastest
           at every size; GPUs want shared-memory tiles beyond a few rows */
        sh->cpu_device = sh->rt.props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
        sh->small_rows = sh->cpu_device ? 1 << 30 : 16;
        const char *ex = getenv("DSV4_EXACT");
        sh->exact = ex && atoi(ex) > 0;
        /* attention variant switches (tests, experiments), read once here
           rather than for every segment of every pass */
        const char *at = getenv("DSV4_ATTN_TILE"), *dn = getenv("DSV4_ATTN_DIRECT_N");
        sh->attn_tile_forced = at && *at == '1';
        const char *fc = getenv("DSV4_FORK_COPY"), *po = getenv("DSV4_PART_OPS");
        sh->fork_copy = fc && *fc == '1';
        sh->part_ops = po && atoi(po) > 0 ? atoi(po) : 192;
        sh->attn_direct_n = dn ? (uint32_t)atoi(dn) : 64;
        const char *ad = getenv("DSV4_ATTN_DEC");
        sh->attn_dec = ad && *ad ? atoi(ad) : -1;
        const char *iu = getenv("DSV4_INDEX_UNFUSED"), *is = getenv("DSV4_INDEX_SPLIT");
        sh->index_unfused = iu && *iu == '1';
        sh->index_split = is && atoi(is) > 0 ? (uint32_t)atoi(is) : 0;
        const char *ifb = getenv("DSV4_INDEX_FUSED_MIB");
        sh->index_fused_bytes = (ifb && *ifb ? (uint64_t)atoll(ifb) : 64) << 20;
        const char *ik = getenv("DSV4_ISCORE_KIB");
        sh->iscore_limit = ik && atoi(ik) > 0 ? (uint64_t)atoi(ik) << 10 : 0;
        const char *af = getenv("DSV4_ATTN_FAST");
        sh->attn_fast = af && *af ? atoi(af) : 2;
        const char *gc = getenv("DSV4_GEMM_CM"), *gs = getenv("DSV4_GEMM_SMALL");
        sh->gemm_cm2 = gc && *gc == '2';
        sh->gemm_small2 = gs && *gs == '2';
        const char *sr = getenv("DSV4_SMALL_ROWS");
        if (sr && *sr) sh->small_rows = atoi(sr);
        rc = fwd_upload_weights(sh, err, errlen);
        if (rc) return rc;
        rc = fwd_alloc_scratch(sh, err, errlen);
        if (rc) return rc;
    }
    /* the hidden state between devices (run_pass): only with several */
    if (e->n_shards > 1) e->xfer = malloc((size_t)e->chunk * c->hc_mult * c->hidden_size * sizeof *e->xfer);
    if (e->n_shards > 1 && !e->xfer) {
        set_err(err, errlen, "engine: out of memory");
        return DSV4_ENOMEM;
    }
    rc = build_layout(e);
    if (rc) return rc;
    e->info.vocab_size = c->vocab_size;
    e->info.hidden_size = c->hidden_size;
    e->info.num_hidden_layers = c->num_hidden_layers;
    e->info.bos_token_id = c->bos_token_id;
    e->info.eos_token_id = c->eos_token_id;
    e->info.max_position_embeddings = c->max_position_embeddings;
    memcpy(e->info.fingerprint, e->m->fingerprint, 32);
    size_t u = 0;
    for (int k = 0; k < e->n_shards && u < sizeof e->name; k++)
        u += (size_t)snprintf(e->name + u, sizeof e->name - u, "%s%s", k ? " + " : "",
                              e->shard[k]->rt.props.deviceName);
    if (opt && opt->verbose) {
        VkDeviceSize w = 0;
        int na = 0;
        for (int k = 0; k < e->n_shards; k++) {
            na += e->shard[k]->n_arenas;
            for (int i = 0; i < e->shard[k]->n_arenas; i++) w += e->shard[k]->arenas[i].size;
        }
        fprintf(stderr, "dsv4: %d blocks on %d device(s), weights in %d arena(s) of %llu MiB total, chunk %d tokens\n",
                e->n_blocks, e->n_shards, na, (unsigned long long)(w >> 20), e->chunk);
    }
    return 0;
}

void dsv4_engine_close(dsv4_engine *e)
{
    if (!e) return;
    shards_close(e);
    free(e->xfer);
    if (e->rt.dev) {
        vkDeviceWaitIdle(e->rt.dev);
        fwd_free(e);
    }
    vkrt_close(&e->rt);
    dsv4_model_free(e->m);
    free(e->layout.streams);
    free(e);
}

const dsv4_model_info *dsv4_engine_info(const dsv4_engine *e) { return &e->info; }
int dsv4_engine_chunk(const dsv4_engine *e) { return e->chunk; }
const char *dsv4_engine_device_name(const dsv4_engine *e) { return e->name; }
const dsv4_state_layout *dsv4_engine_state_layout(const dsv4_engine *e) { return &e->layout; }

/* ---------------------------------------------------------------- sequences */

int dsv4_seq_create(dsv4_engine *e, dsv4_seq **out, char *err, size_t errlen)
{
    *out = NULL;
    dsv4_seq *s = calloc(1, sizeof *s);
    if (s) s->ls = calloc((size_t)e->n_blocks, sizeof *s->ls);
    if (!s || !s->ls) {
        free(s);
        set_err(err, errlen, "engine: out of memory");
        return DSV4_ENOMEM;
    }
    s->e = e;
    for (int b = 0; b < e->n_blocks; b++) {
        int rc = lstate_init(shard_of(e, b), &s->ls[b], b, INITIAL_CAP_TOKENS, err, errlen);
        if (rc) {
            dsv4_seq_free(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

void dsv4_seq_free(dsv4_seq *s)
{
    if (!s) return;
    if (s->ls) {
        for (int k = 0; k < s->e->n_shards; k++) vkDeviceWaitIdle(s->e->shard[k]->rt.dev);
        for (int b = 0; b < s->e->n_blocks; b++) lstate_free(shard_of(s->e, b), &s->ls[b]);
    }
    free(s->ls);
    free(s);
}

int64_t dsv4_seq_pos(const dsv4_seq *s) { return s->pos; }

static int check_tokens(const dsv4_engine *e, const int32_t *t, int64_t n, char *err, size_t errlen)
{
    for (int64_t i = 0; i < n; i++)
        if (t[i] < 0 || t[i] >= e->m->cfg.vocab_size) {
            snprintf(err, errlen, "engine: token %d at index %lld outside the vocabulary [0, %d)", t[i],
                     (long long)i, e->m->cfg.vocab_size);
            return DSV4_EINVAL;
        }
    return 0;
}

static void put_io(dsv4_engine *e, const int32_t *tokens, const int64_t *pos, int n, int64_t p0)
{
    int32_t *tk = (int32_t *)((uint8_t *)e->s.io.map + e->s.io_tok);
    uint32_t *ps = (uint32_t *)((uint8_t *)e->s.io.map + e->s.io_pos);
    for (int i = 0; i < n; i++) {
        tk[i] = tokens[i];
        ps[i] = (uint32_t)(pos ? pos[i] : p0 + i);
    }
}

/* One pass over main blocks [fp->b0, fp->b1) on the devices that hold them,
 * in order: tokens and positions go to each device's io buffer, the hidden
 * state crosses each device boundary through host memory (e->xfer); the
 * head (fp->head) runs on the last device, which holds it. With one device
 * this is fwd_run itself. */
static int run_pass(dsv4_engine *e, const int32_t *tokens, const int64_t *pos, int64_t p0, const fpass *fp,
                    char *err, size_t errlen)
{
    int first = 1;
    for (int k = 0; k < e->n_shards; k++) {
        dsv4_engine *sh = e->shard[k];
        fpass f = *fp;
        f.b0 = fp->b0 > sh->own_b0 ? fp->b0 : sh->own_b0;
        f.b1 = fp->b1 < sh->own_b1 ? fp->b1 : sh->own_b1;
        if (f.b0 >= f.b1) continue;
        int last = f.b1 == fp->b1;
        f.x_in = first ? fp->x_in : e->xfer;
        f.x_out = last ? fp->x_out : e->xfer;
        if (!last) {
            f.head = 0;
            f.logits = NULL;
        }
        put_io(sh, tokens, pos, fp->T, p0);
        int rc = fwd_run(sh, &f, err, errlen);
        if (rc) return rc;
        first = 0;
    }
    return 0;
}

/* The pass of prefill chunk [a, a + m) of n tokens starting at position
   p0 + a: which logits it writes. */
static fpass prefill_pass(dsv4_seq *s, fseg *sg, int64_t p0, int64_t a, int m, int64_t n, float *logits,
                          int64_t logits_rows)
{
    dsv4_engine *e = s->e;
    int V = e->m->cfg.vocab_size;
    *sg = (fseg){s, 0, (uint32_t)m, p0 + a};
    fpass fp = {.T = m, .segs = sg, .nsegs = 1, .b0 = 0, .b1 = e->m->cfg.num_hidden_layers};
    if (logits_rows == n) {
        fp.head = 1; fp.head_r0 = 0; fp.head_n = m; fp.logits = logits + a * V;
    } else if (logits_rows == 1 && a + m == n) {
        fp.head = 1; fp.head_r0 = m - 1; fp.head_n = 1; fp.logits = logits;
    }
    return fp;
}

/* Prefill over several devices, pipelined: one host thread per device runs
 * every chunk through its blocks, taking chunk c's hidden state from the
 * previous device's thread and handing its own to the next one through two
 * slots per boundary, so device k runs chunk c while device k-1 runs chunk
 * c+1. Each device submits and waits on its own queue and fence, so the
 * devices compute at the same time. Each device still sees the chunks in
 * order and the same inputs as one after another, so the result is
 * bit-identical to the sequential passes. */
typedef struct pipeline {
    dsv4_seq *s;
    const int32_t *tokens;
    int64_t n, logits_rows;
    float *logits;
    int n_chunks;
    float *slot[DSV4_MAX_SHARDS][2]; /* boundary k: device k -> device k+1 */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done[DSV4_MAX_SHARDS];       /* chunks device k has finished */
    int rc;
    char err[512];
} pipeline;

typedef struct { pipeline *p; int k; } pipe_arg;

static void *pipe_worker(void *arg)
{
    pipeline *p = ((pipe_arg *)arg)->p;
    int k = ((pipe_arg *)arg)->k;
    dsv4_engine *e = p->s->e, *sh = e->shard[k];
    int N = e->n_shards;
    char err[512] = "";
    for (int c = 0; c < p->n_chunks; c++) {
        pthread_mutex_lock(&p->mu);
        /* chunk c's input is ready, and the slot it writes is free (the next
           device finished chunk c - 2, which used the same slot) */
        while (!p->rc && ((k > 0 && p->done[k - 1] <= c) || (k + 1 < N && c - p->done[k + 1] >= 2)))
            pthread_cond_wait(&p->cv, &p->mu);
        int stop = p->rc != 0;
        pthread_mutex_unlock(&p->mu);
        if (stop) break;
        int64_t a = (int64_t)c * e->chunk;
        int m = (int)(p->n - a < e->chunk ? p->n - a : e->chunk);
        fseg sg;
        fpass fp = prefill_pass(p->s, &sg, p->s->pos, a, m, p->n, p->logits, p->logits_rows);
        fp.b0 = sh->own_b0;
        fp.b1 = sh->own_b1;
        fp.x_in = k > 0 ? p->slot[k - 1][c % 2] : NULL;
        fp.x_out = k + 1 < N ? p->slot[k][c % 2] : NULL;
        if (k + 1 < N) {
            fp.head = 0;
            fp.logits = NULL;
        }
        put_io(sh, p->tokens + a, NULL, m, p->s->pos + a);
        int rc = fwd_run(sh, &fp, err, sizeof err);
        pthread_mutex_lock(&p->mu);
        if (rc && !p->rc) {
            p->rc = rc;
            snprintf(p->err, sizeof p->err, "device %d: %.480s", k + 1, err);
        }
        if (!rc) p->done[k]++;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        if (rc) break;
    }
    return NULL;
}

static int pipelined_prefill(dsv4_seq *s, const int32_t *tokens, int64_t n, float *logits, int64_t logits_rows,
                             char *err, size_t errlen)
{
    dsv4_engine *e = s->e;
    const dsv4_config *c = &e->m->cfg;
    int N = e->n_shards;
    pipeline *p = calloc(1, sizeof *p);
    pthread_t th[DSV4_MAX_SHARDS];
    pipe_arg args[DSV4_MAX_SHARDS];
    if (!p) goto oom;
    *p = (pipeline){.s = s, .tokens = tokens, .n = n, .logits_rows = logits_rows, .logits = logits,
                    .n_chunks = (int)((n + e->chunk - 1) / e->chunk)};
    size_t xb = (size_t)e->chunk * c->hc_mult * c->hidden_size * sizeof(float);
    for (int k = 0; k + 1 < N; k++)
        for (int j = 0; j < 2; j++)
            if (!(p->slot[k][j] = malloc(xb))) goto oom;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int started = 0;
    for (int k = 0; k < N; k++) {
        args[k] = (pipe_arg){p, k};
        if (pthread_create(&th[k], NULL, pipe_worker, &args[k])) {
            pthread_mutex_lock(&p->mu);
            if (!p->rc) {
                p->rc = DSV4_ENOMEM;
                snprintf(p->err, sizeof p->err, "dsv4_seq_prefill: cannot start the thread of device %d", k + 1);
            }
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        started++;
    }
    for (int k = 0; k < started; k++) pthread_join(th[k], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    /* the chunks the last device finished are complete in every block; after
       an error the blocks of later chunks may be ahead: the sequence should
       be freed */
    int64_t done = (int64_t)p->done[N - 1] * e->chunk;
    s->pos += done < n ? done : n;
    int rc = p->rc;
    if (rc) set_err(err, errlen, p->err);
    for (int k = 0; k + 1 < N; k++) free(p->slot[k][0]), free(p->slot[k][1]);
    free(p);
    return rc;
oom:
    if (p)
        for (int k = 0; k + 1 < N; k++) free(p->slot[k][0]), free(p->slot[k][1]);
    free(p);
    set_err(err, errlen, "dsv4_seq_prefill: out of memory");
    return DSV4_ENOMEM;
}

int dsv4_seq_prefill(dsv4_seq *s, const int32_t *tokens, int64_t n, float *logits, int64_t logits_rows,
                     char *err, size_t errlen)
{
    dsv4_engine *e = s->e;
    if (n < 1 || (logits_rows != 0 && logits_rows != 1 && logits_rows != n) || (logits_rows && !logits)) {
        set_err(err, errlen, "dsv4_seq_prefill: n must be >= 1 and logits_rows 0, 1 or n");
        return DSV4_EINVAL;
    }
    if (s->pos + n > e->m->cfg.max_position_embeddings || s->pos + n > (int64_t)UINT32_MAX / 2) {
        snprintf(err, errlen, "dsv4_seq_prefill: position %lld beyond max_position_embeddings %lld",
                 (long long)(s->pos + n), (long long)e->m->cfg.max_position_embeddings);
        return DSV4_EINVAL;
    }
    int rc = check_tokens(e, tokens, n, err, errlen);
    if (rc) return rc;
    const char *po = getenv("DSV4_PIPELINE"); /* 0: no overlap (tests, measurements) */
    if (e->n_shards > 1 && n > e->chunk && !(po && strcmp(po, "0") == 0))
        return pipelined_prefill(s, tokens, n, logits, logits_rows, err, errlen);
    for (int64_t a = 0; a < n; a += e->chunk) {
        int m = (int)(n - a < e->chunk ? n - a : e->chunk);
        fseg sg;
        fpass fp = prefill_pass(s, &sg, s->pos - a, a, m, n, logits, logits_rows);
        rc = run_pass(e, tokens + a, NULL, s->pos, &fp, err, errlen);
        if (rc) return rc;
        s->pos += m;
    }
    return 0;
}

int dsv4_decode(dsv4_seq *const *seqs, int n_seqs, const int32_t *tokens, float *logits, char *err,
                size_t errlen)
{
    if (n_seqs < 1 || !seqs || !tokens || !logits) {
        set_err(err, errlen, "dsv4_decode: need at least one sequence, its token and a logits buffer");
        return DSV4_EINVAL;
    }
    dsv4_engine *e = seqs[0]->e;
    for (int i = 0; i < n_seqs; i++)
        for (int j = 0; j < i; j++)
            if (seqs[i] == seqs[j] || seqs[i]->e != e) {
                set_err(err, errlen, "dsv4_decode: a sequence appears twice or belongs to another engine");
                return DSV4_EINVAL;
            }
    int rc = check_tokens(e, tokens, n_seqs, err, errlen);
    if (rc) return rc;
    int V = e->m->cfg.vocab_size;
    fseg *segs = calloc((size_t)e->chunk, sizeof *segs);
    int64_t *pos = calloc((size_t)e->chunk, sizeof *pos);
    if (!segs || !pos) {
        free(segs); free(pos);
        set_err(err, errlen, "dsv4_decode: out of memory");
        return DSV4_ENOMEM;
    }
    for (int a = 0; a < n_seqs && !rc; a += e->chunk) {
        int m = n_seqs - a < e->chunk ? n_seqs - a : e->chunk;
        for (int i = 0; i < m; i++) {
            segs[i] = (fseg){seqs[a + i], (uint32_t)i, 1, seqs[a + i]->pos};
            pos[i] = seqs[a + i]->pos;
        }
        fpass fp = {.T = m, .segs = segs, .nsegs = m, .b0 = 0, .b1 = e->m->cfg.num_hidden_layers, .head = 1,
                    .head_r0 = 0, .head_n = m, .logits = logits + (int64_t)a * V};
        rc = run_pass(e, tokens + a, pos, 0, &fp, err, errlen);
        if (!rc)
            for (int i = 0; i < m; i++) seqs[a + i]->pos++;
    }
    free(segs);
    free(pos);
    return rc;
}

int dsv4_seq_fork(const dsv4_seq *src, dsv4_seq **out, char *err, size_t errlen)
{
    dsv4_engine *e = src->e;
    *out = NULL;
    dsv4_seq *s = calloc(1, sizeof *s);
    if (s) s->ls = calloc((size_t)e->n_blocks, sizeof *s->ls);
    if (!s || !s->ls) {
        free(s);
        set_err(err, errlen, "dsv4_seq_fork: out of memory");
        return DSV4_ENOMEM;
    }
    s->e = e;
    s->pos = src->pos;
    int rc = 0;
    /* each block's state stays on its device; forward.c: lstate_fork */
    for (int b = 0; b < e->n_blocks && !rc; b++)
        rc = lstate_fork(shard_of(e, b), &s->ls[b], &src->ls[b], b, src->pos, err, errlen);
    if (rc) {
        dsv4_seq_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void dsv4_seq_state_bytes(const dsv4_seq *s, uint64_t *own_bytes, uint64_t *shared_bytes)
{
    const dsv4_config *c = &s->e->m->cfg;
    uint64_t own = 0, shared = 0;
    for (int b = 0; b < s->e->n_blocks; b++) {
        const lstate *ls = &s->ls[b];
        own += ls->buf.size;
        uint64_t row = (uint64_t)c->head_dim + (s->e->blk[b].ratio == 4 ? (uint64_t)c->index_head_dim : 0);
        shared += (uint64_t)ls->base_rows * row * 4;
    }
    if (own_bytes) *own_bytes = own;
    if (shared_bytes) *shared_bytes = shared;
}

/* ---------------------------------------------------------------- export / import */

static uint16_t f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

int dsv4_seq_export(const dsv4_seq *s, int64_t pos0, dsv4_state_chunk *chunk, char *err, size_t errlen)
{
    dsv4_engine *e = s->e;
    const dsv4_config *c = &e->m->cfg;
    if (pos0 < 0 || pos0 > s->pos) {
        snprintf(err, errlen, "dsv4_seq_export: pos0 %lld outside [0, %lld]", (long long)pos0, (long long)s->pos);
        return DSV4_EINVAL;
    }
    int k = 0, rc = 0;
    for (int b = 0; b < c->num_hidden_layers && !rc; b++) {
        const gblock *g = &e->blk[b];
        const lstate *ls = &s->ls[b];
        for (int j = 0; j < (g->ratio ? (g->ratio == 4 ? 2 : 1) : 0) && !rc; j++) {
            const dsv4_state_stream *st = &e->layout.streams[k];
            int64_t r0 = pos0 / st->ratio, r1 = s->pos / st->ratio;
            uint32_t d = st->row_bytes / 2;
            size_t nf = (size_t)(r1 - r0) * d;
            float *tmp = malloc(nf ? nf * 4 : 4);
            if (!tmp) return DSV4_ENOMEM;
            /* a fork's rows: the shared base's, then its own */
            vkview pc[2];
            int np = lstate_rows(e, ls, j, r0, r1, pc);
            for (size_t q = 0, f0 = 0; q < (size_t)np && !rc; f0 += pc[q].size / 4, q++)
                rc = vkrt_download(&shard_of(e, b)->rt, pc[q], tmp + f0, pc[q].size, err, errlen);
            uint16_t *dst = (uint16_t *)chunk->rows[k];
            for (size_t i = 0; i < nf && !rc; i++) dst[i] = f2bf(tmp[i]);
            free(tmp);
            k++;
        }
    }
    if (!rc && chunk->boundary) {
        uint8_t *p = chunk->boundary;
        for (int b = 0; b < c->num_hidden_layers && !rc; b++) {
            const lstate *ls = &s->ls[b];
            /* ring, compressor ring, indexer ring are contiguous up to kv_off */
            VkDeviceSize sizes[3] = {(VkDeviceSize)c->sliding_window * c->head_dim * 4, 0, 0};
            const gblock *g = &e->blk[b];
            if (g->ratio) sizes[1] = (VkDeviceSize)(g->overlap ? 4 : 1) * g->ratio * 2 * c->head_dim * 4;
            if (g->ratio == 4) sizes[2] = 8ull * 4 * c->index_head_dim * 4;
            VkDeviceSize offs[3] = {ls->ring_off, ls->cring_off, ls->iring_off};
            for (int j = 0; j < 3 && !rc; j++)
                if (sizes[j]) {
                    rc = vkrt_download(&shard_of(e, b)->rt, vkbuf_view(&ls->buf, offs[j], sizes[j]), p, sizes[j], err,
                                       errlen);
                    p += sizes[j];
                }
        }
        int64_t pos = s->pos;
        memcpy(p, &pos, 8);
    }
    chunk->pos0 = pos0;
    chunk->pos1 = s->pos;
    return rc;
}

int dsv4_seq_import(dsv4_seq *s, const dsv4_state_chunk *chunk, char *err, size_t errlen)
{
    dsv4_engine *e = s->e;
    const dsv4_config *c = &e->m->cfg;
    if (chunk->pos0 != s->import_end || chunk->pos1 < chunk->pos0 || s->pos != 0) {
        snprintf(err, errlen, "dsv4_seq_import: chunk [%lld, %lld) does not follow the restored rows (end %lld) "
                 "of a fresh sequence", (long long)chunk->pos0, (long long)chunk->pos1, (long long)s->import_end);
        return DSV4_EINVAL;
    }
    int k = 0, rc = 0;
    for (int b = 0; b < c->num_hidden_layers && !rc; b++) {
        const gblock *g = &e->blk[b];
        lstate *ls = &s->ls[b];
        dsv4_engine *sh = shard_of(e, b);
        rc = lstate_reserve(sh, ls, b, chunk->pos1, err, errlen);
        for (int j = 0; j < (g->ratio ? (g->ratio == 4 ? 2 : 1) : 0) && !rc; j++) {
            const dsv4_state_stream *st = &e->layout.streams[k];
            int64_t r0 = chunk->pos0 / st->ratio, r1 = chunk->pos1 / st->ratio;
            uint32_t d = st->row_bytes / 2;
            size_t nf = (size_t)(r1 - r0) * d;
            float *tmp = malloc(nf ? nf * 4 : 4);
            if (!tmp) return DSV4_ENOMEM;
            const uint16_t *src = (const uint16_t *)chunk->rows[k];
            for (size_t i = 0; i < nf; i++) {
                uint32_t u = (uint32_t)src[i] << 16;
                memcpy(&tmp[i], &u, 4);
            }
            vkview pc[2]; /* a fresh sequence (pos 0): no shared base, one piece */
            int np = lstate_rows(e, ls, j, r0, r1, pc);
            size_t f0 = 0;
            for (int q = 0; q < np && !rc; f0 += pc[q].size / 4, q++)
                rc = vkrt_upload(&sh->rt, pc[q], tmp + f0, pc[q].size, err, errlen);
            free(tmp);
            k++;
        }
    }
    if (rc) return rc;
    s->import_end = chunk->pos1;
    if (chunk->boundary) {
        const uint8_t *p = chunk->boundary;
        int64_t pos;
        memcpy(&pos, p + e->layout.boundary_bytes - 8, 8);
        if (pos != chunk->pos1) {
            snprintf(err, errlen, "dsv4_seq_import: boundary is at position %lld, chunk ends at %lld", (long long)pos,
                     (long long)chunk->pos1);
            return DSV4_EINVAL;
        }
        for (int b = 0; b < c->num_hidden_layers && !rc; b++) {
            const lstate *ls = &s->ls[b];
            const gblock *g = &e->blk[b];
            VkDeviceSize sizes[3] = {(VkDeviceSize)c->sliding_window * c->head_dim * 4, 0, 0};
            if (g->ratio) sizes[1] = (VkDeviceSize)(g->overlap ? 4 : 1) * g->ratio * 2 * c->head_dim * 4;
            if (g->ratio == 4) sizes[2] = 8ull * 4 * c->index_head_dim * 4;
            VkDeviceSize offs[3] = {ls->ring_off, ls->cring_off, ls->iring_off};
            for (int j = 0; j < 3 && !rc; j++)
                if (sizes[j]) {
                    rc = vkrt_upload(&shard_of(e, b)->rt, vkbuf_view(&ls->buf, offs[j], sizes[j]), p, sizes[j], err,
                                     errlen);
                    p += sizes[j];
                }
        }
        if (!rc) s->pos = pos;
    }
    return rc;
}

/* ---------------------------------------------------------------- conformance hooks */

int dsv4_engine_run_block(dsv4_engine *e, int layer, const int32_t *tokens, int64_t n, const float *x, float *out,
                          char *err, size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    if (layer < 0 || layer >= c->num_hidden_layers || n < 1) {
        snprintf(err, errlen, "dsv4_engine_run_block: layer %d outside [0, %d) or n < 1", layer, c->num_hidden_layers);
        return DSV4_EINVAL;
    }
    int rc = check_tokens(e, tokens, n, err, errlen);
    if (rc) return rc;
    dsv4_seq *s;
    rc = dsv4_seq_create(e, &s, err, errlen);
    if (rc) return rc;
    size_t row = (size_t)c->hc_mult * c->hidden_size;
    for (int64_t a = 0; a < n && !rc; a += e->chunk) {
        int m = (int)(n - a < e->chunk ? n - a : e->chunk);
        fseg sg = {s, 0, (uint32_t)m, a};
        fpass fp = {.T = m, .segs = &sg, .nsegs = 1, .b0 = layer, .b1 = layer + 1, .x_in = x + a * row,
                    .x_out = out + a * row};
        rc = run_pass(e, tokens + a, NULL, a, &fp, err, errlen);
    }
    dsv4_seq_free(s);
    return rc;
}

int dsv4_engine_run_mtp(dsv4_engine *e, const int32_t *tokens, int64_t n, const float *h, float *logits, char *err,
                        size_t errlen)
{
    const dsv4_config *c = &e->m->cfg;
    if (c->num_nextn_predict_layers < 1 || n < 1) {
        set_err(err, errlen, "dsv4_engine_run_mtp: the model has no MTP block, or n < 1");
        return DSV4_EINVAL;
    }
    int rc = check_tokens(e, tokens, n + 1, err, errlen);
    if (rc) return rc;
    dsv4_seq *s;
    rc = dsv4_seq_create(e, &s, err, errlen);
    if (rc) return rc;
    size_t row = (size_t)c->hc_mult * c->hidden_size;
    int mb = c->num_hidden_layers;
    dsv4_engine *sh = shard_of(e, mb); /* holds the MTP block, an embedding and the head */
    for (int64_t a = 0; a < n && !rc; a += e->chunk) {
        int m = (int)(n - a < e->chunk ? n - a : e->chunk);
        put_io(sh, tokens + a + 1, NULL, m, a);
        fseg sg = {s, 0, (uint32_t)m, a};
        fpass fp = {.T = m, .segs = &sg, .nsegs = 1, .b0 = mb, .b1 = mb + 1, .x_in = h + a * row, .mtp = 1,
                    .head = 2, .head_r0 = 0, .head_n = m, .logits = logits + a * c->vocab_size};
        rc = fwd_run(sh, &fp, err, errlen);
    }
    dsv4_seq_free(s);
    return rc;
}

void dsv4_engine_take_counts(dsv4_engine *e, dsv4_engine_counts *out)
{
    memset(out, 0, sizeof *out);
    for (int k = 0; k < e->n_shards; k++) {
        vkrt *rt = &e->shard[k]->rt;
        out->passes += rt->n_passes;
        out->submits += rt->n_submits;
        out->dispatches += rt->n_dispatches;
        out->barriers += rt->n_barriers;
        out->record_seconds += rt->record_s;
        rt->n_passes = rt->n_submits = rt->n_dispatches = rt->n_barriers = 0;
        rt->record_s = 0;
    }
}

/* With several devices an operation's time is the sum over the devices. */
int dsv4_engine_profile(dsv4_engine *e, dsv4_profile_entry *out, int cap)
{
    int n = 0;
    for (int k = 0; k < e->n_shards; k++) {
        vkrt *rt = &e->shard[k]->rt;
        for (int i = 0; i < rt->n_prof; i++) {
            if (!rt->prof_calls[i]) continue;
            int j = 0;
            while (j < n && strcmp(out[j].op, rt->prof_name[i]) != 0) j++;
            if (j == n) {
                if (n == cap) continue;
                snprintf(out[n].op, sizeof out[n].op, "%s", rt->prof_name[i]);
                out[n].ms = 0;
                out[n].calls = 0;
                n++;
            }
            out[j].ms += rt->prof_ms[i];
            out[j].calls += rt->prof_calls[i];
        }
        for (int i = 0; i < rt->n_prof; i++) {
            rt->prof_ms[i] = 0;
            rt->prof_calls[i] = 0;
        }
    }
    return n;
}
