/* libFuzzer target: ingest/ gitignore entry point (see targets.h). Built with
 * `make fuzz`; replayed over tests/fuzz/corpus/gitignore by tests/test_fuzz_replay. */
#include "tests/fuzz/targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_gitignore(data, size); }
