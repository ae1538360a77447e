/* `dsv4-batch version`: the program's version and what is built in. */
#include <stdio.h>
#include <string.h>

#include "pipeline/dsv4_cli.h"
#include "shaders/dsv4_shaders.h"

#define DSV4_VERSION "0.1.0"

int dsv4_cmd_version(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        printf("usage: dsv4-batch version\n");
        return DSV4_EXIT_OK;
    }
    printf("dsv4-batch %s (%zu embedded shaders)\n", DSV4_VERSION, dsv4_spirv_count);
    return DSV4_EXIT_OK;
}
