/* The command-line commands of dsv4-batch. Each command is one function
 * taking the arguments after its name (argv[0] is the command name) and
 * returning the process exit status:
 *   0  success
 *   1  the command ran and failed (a job failed, a check did not pass,
 *      some input was skipped)
 *   2  usage error (unknown option, missing argument, invalid job spec)
 *   3  a needed resource is missing (no Vulkan device, no model directory)
 * Every command answers --help with its own usage on stdout and exit 0.
 * pipeline/main.c holds the table of commands. */
#ifndef DSV4_CLI_H
#define DSV4_CLI_H

enum { DSV4_EXIT_OK = 0, DSV4_EXIT_FAIL = 1, DSV4_EXIT_USAGE = 2, DSV4_EXIT_MISSING = 3 };

typedef int (*dsv4_command_fn)(int argc, char **argv);

typedef struct dsv4_command {
    const char *name;
    dsv4_command_fn run;
    const char *summary; /* one line for `dsv4-batch --help` */
} dsv4_command;

/* Implemented in pipeline/cmd_*.c. */
int dsv4_cmd_version(int argc, char **argv);
int dsv4_cmd_model(int argc, char **argv);
int dsv4_cmd_conformance(int argc, char **argv);
int dsv4_cmd_ingest(int argc, char **argv);
int dsv4_cmd_submit(int argc, char **argv);
int dsv4_cmd_run(int argc, char **argv);
int dsv4_cmd_status(int argc, char **argv);
int dsv4_cmd_results(int argc, char **argv);
int dsv4_cmd_cancel(int argc, char **argv);
int dsv4_cmd_list(int argc, char **argv);
int dsv4_cmd_cache(int argc, char **argv);
int dsv4_cmd_tokenize(int argc, char **argv);
int dsv4_cmd_bench(int argc, char **argv);

#endif
