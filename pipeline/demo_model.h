/* The embedded demo model: a job without `model:` runs on a small
 * DeepSeek-V4-architecture model with the real DeepSeek-V4 tokenizer and
 * deterministic RANDOM weights, generated on first use into
 * HOME/models/demo (config.json, model.safetensors, tokenizer.json). Every
 * stage of a job is real with it and it runs on lavapipe; its answers are
 * noise, and the runner says so in the job's events. */
#ifndef DSV4_DEMO_MODEL_H
#define DSV4_DEMO_MODEL_H

#include <stddef.h>

/* Writes the demo model's directory into dir[cap], generating the model
 * there first when it is absent (into a temporary directory renamed into
 * place, so concurrent workers never see half a model). 0 or -1 with a
 * message naming the path in err. */
int dsv4_demo_model_ensure(const char *home_dir, char *dir, size_t cap, char *err, size_t errlen);

#endif
