/* dsv4-bench: `dsv4-batch bench` and `dsv4-batch conformance` alone, for GPU
 * machines that have a Vulkan driver but not the ingest libraries (poppler,
 * libarchive, libxml2, SQLite, ...). The Makefile links it with
 * --as-needed, so at run time it needs only the Vulkan loader, jansson and
 * libcrypto (scripts/gpu-report.sh runs it; docs/benchmarks.md). The
 * commands and their options are the CLI's own (pipeline/dsv4_cli.h). */
#include <stdio.h>
#include <string.h>

#include "pipeline/dsv4_cli.h"

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "bench") == 0) return dsv4_cmd_bench(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "conformance") == 0) return dsv4_cmd_conformance(argc - 1, argv + 1);
    fprintf(stderr, "usage: dsv4-bench bench [OPTIONS] | conformance --model DIR --golden CASE.safetensors [OPTIONS]\n"
                    "(the options of `dsv4-batch bench` and `dsv4-batch conformance`: docs/cli.md)\n");
    return 2;
}
