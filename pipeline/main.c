/* dsv4-batch: the program's entry point. It only finds the command named by
 * argv[1] and calls it; everything else lives in the modules. */
#include <stdio.h>
#include <string.h>

#include "pipeline/dsv4_cli.h"

static const dsv4_command commands[] = {
    {"version", dsv4_cmd_version, "print the version and the embedded shader count"},
    {"model", dsv4_cmd_model, "make a small random DeepSeek-V4 model (init), validate a model dir (check)"},
    {"conformance", dsv4_cmd_conformance, "check the engine against a golden case of the official model code"},
    {"ingest", dsv4_cmd_ingest, "read files, trees and archives; print their documents"},
    {"submit", dsv4_cmd_submit, "check a job.yaml and queue the job (prints its id)"},
    {"run", dsv4_cmd_run, "a worker: run queued jobs (--once, --until-idle)"},
    {"status", dsv4_cmd_status, "job counts, or one job's state, progress and events"},
    {"results", dsv4_cmd_results, "a job's results as JSONL (OpenAI batch style) or Markdown"},
    {"cancel", dsv4_cmd_cancel, "cancel a queued or running job"},
    {"list", dsv4_cmd_list, "list jobs, newest first"},
    {"cache", dsv4_cmd_cache, "the prefix cache: ls, stats, verify, gc [--max-size SIZE], bench"},
    {"bench", dsv4_cmd_bench, "engine speed at a config's real sizes with synthetic weights, vs the ceiling"},
    {"tokenize", dsv4_cmd_tokenize, "text to DeepSeek-V4 token ids and back (--jsonl, --decode, --bench)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4-batch COMMAND [OPTIONS]\n\n"
               "Batch long-document analysis with DeepSeek-V4 on Vulkan.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`dsv4-batch COMMAND --help` describes each command.\n"
               "exit status: 0 ok, 1 failed, 2 usage error, 3 missing resource (device, model).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return DSV4_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return DSV4_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) return dsv4_cmd_version(1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dsv4-batch: unknown command '%s' (see dsv4-batch --help)\n", argv[1]);
    return DSV4_EXIT_USAGE;
}
