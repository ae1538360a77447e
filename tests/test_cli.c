/* The CLI's top level: help, unknown commands and exit codes, run as a real
 * process (bin/dsv4-batch). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "tests/check.h"

static int run_status(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void top_level_help_and_errors(void)
{
    CHECK(run_status("bin/dsv4-batch --help | grep -q 'usage: dsv4-batch COMMAND'") == 0);
    CHECK(run_status("bin/dsv4-batch > /dev/null 2>&1") == 2);
    CHECK(run_status("bin/dsv4-batch no-such-command > /dev/null 2>&1") == 2);
    CHECK(run_status("bin/dsv4-batch version | grep -q '^dsv4-batch '") == 0);
}

int main(void)
{
    RUN(top_level_help_and_errors);
    CHECK_EXIT();
}
