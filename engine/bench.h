/* engine/bench.h: engine-private seams for synthetic weights (engine/
 * bench_weights.c), used by dsv4_engine_open_synthetic of dsv4_engine.h.
 *
 * A synthetic model is a dsv4_model whose tensors have names, dtypes and
 * shapes but no file data (dsv4_tensor.data == NULL, .name != NULL). The
 * weight upload of engine/forward.c allocates arena space for such a tensor
 * as for any other and calls bench_fill_tensor instead of copying bytes, so
 * the arenas, views and kernels are exactly those of a real checkpoint. */
#ifndef DSV4_ENGINE_BENCH_H
#define DSV4_ENGINE_BENCH_H

#include <stddef.h>

#include "engine/forward.h"

/* Fills dst (t->nbytes bytes from dst.off) with deterministic pseudo-random
 * values of sane magnitude for t's dtype and role (named by t->name): small
 * bf16/f32 values, norms near 1, e4m3 codes scaled to the input size, ue8m0
 * scales near 2^-7, random e2m1 codes, valid expert ids for tid2eid. Runs one
 * GPU dispatch and waits. */
int bench_fill_tensor(dsv4_engine *e, vkview dst, const dsv4_tensor *t, char *err, size_t errlen);

/* engine/engine.c: the part of dsv4_engine_open after the model is loaded
 * (e->m) and the device opened (e->rt): checks, weights, scratch, layout,
 * info. On failure the caller closes e. model_dir names the model in
 * messages. */
int engine_open_finish(dsv4_engine *e, const dsv4_engine_options *opt, const char *model_dir, char *err,
                       size_t errlen);

/* Arena bytes of main block `layer` of config c in the release's formats
 * (weights, scales, alignment), as synthetic or real weights take them: the
 * sizes engine/shards.c places by. 0 when out of host memory. */
uint64_t bench_block_bytes(const dsv4_config *c, int layer);
/* Scratch bytes of fwd_alloc_scratch for a chunk of C tokens, roughly. */
uint64_t bench_scratch_bytes(const dsv4_config *c, int C);

#endif
