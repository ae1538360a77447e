/* The whole test "framework": a test binary holds several cases, each a
 * function run by RUN(). A case reports through CHECK()/SKIP(); the binary
 * prints one line per case ("ok NAME", "FAIL NAME", "skip NAME: reason") that
 * tests/runner.c counts. Checks do not stop a case, so one run shows every
 * wrong value. Exit status: 0 when no case failed. */
#ifndef DSV4_TESTS_CHECK_H
#define DSV4_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static int check_case_failed, check_case_skipped, check_any_failed;
static char check_skip_reason[256];

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            printf("  check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            check_case_failed++;                                                \
        }                                                                       \
    } while (0)

/* CHECK with a formatted explanation, for values worth seeing. */
#define CHECKF(cond, ...)                                                       \
    do {                                                                        \
        if (!(cond)) {                                                          \
            printf("  check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
            check_case_failed++;                                                \
        }                                                                       \
    } while (0)

/* Skip the current case with a reason (e.g. no Vulkan device) and return. */
#define SKIP(...)                                                               \
    do {                                                                        \
        snprintf(check_skip_reason, sizeof check_skip_reason, __VA_ARGS__);     \
        check_case_skipped = 1;                                                 \
        return;                                                                 \
    } while (0)

static inline void check_run(const char *name, void (*fn)(void))
{
    check_case_failed = 0;
    check_case_skipped = 0;
    fflush(stdout);
    fn();
    if (check_case_failed) {
        printf("FAIL %s\n", name);
        check_any_failed = 1;
    } else if (check_case_skipped) {
        printf("skip %s: %s\n", name, check_skip_reason);
    } else {
        printf("ok %s\n", name);
    }
    fflush(stdout);
}

#define RUN(fn) check_run(#fn, fn)
#define CHECK_EXIT() return check_any_failed ? 1 : 0

#endif
