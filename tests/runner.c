/* The test runner: runs every test binary named on the command line, one
 * after another, each in its own process with a time limit, echoes its
 * output, and counts the per-case lines of tests/check.h ("ok", "FAIL",
 * "skip"). A binary that crashes, times out or exits non-zero without a FAIL
 * line counts as one failure. The last line is exactly
 * "N passed, N failed, N skipped"; the exit status is 1 when anything failed.
 * DSV4_TEST_TIMEOUT (seconds, default 900) bounds each binary, so a hung test
 * fails instead of hanging CI. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, failed, skipped;
static pid_t child;

static void on_alarm(int sig)
{
    (void)sig;
    if (child > 0) kill(-child, SIGKILL);
}

static void run_one(const char *path, int timeout_s)
{
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); failed++; return; }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    child = fork();
    if (child < 0) { perror("fork"); failed++; return; }
    if (child == 0) {
        setpgid(0, 0);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execl(path, path, (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    setpgid(child, child);
    close(fds[1]);
    alarm((unsigned)timeout_s);
    FILE *in = fdopen(fds[0], "r");
    char line[4096];
    int n_fail_lines = 0;
    printf("== %s\n", path);
    while (in && fgets(line, sizeof line, in)) {
        fputs(line, stdout);
        fflush(stdout);
        if (strncmp(line, "ok ", 3) == 0) passed++;
        else if (strncmp(line, "FAIL ", 5) == 0) { failed++; n_fail_lines++; }
        else if (strncmp(line, "skip ", 5) == 0) skipped++;
    }
    if (in) fclose(in);
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    alarm(0);
    child = 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (WIFSIGNALED(status)) {
        printf("FAIL %s: killed by signal %d%s\n", path, WTERMSIG(status),
               WTERMSIG(status) == SIGKILL ? " (timeout?)" : "");
        failed++;
    } else if (WEXITSTATUS(status) != 0 && n_fail_lines == 0) {
        printf("FAIL %s: exit status %d with no failing case\n", path, WEXITSTATUS(status));
        failed++;
    }
    printf("   (%s: %.1f s)\n", path, secs);
}

int main(int argc, char **argv)
{
    int timeout_s = 900;
    const char *t = getenv("DSV4_TEST_TIMEOUT");
    if (t && atoi(t) > 0) timeout_s = atoi(t);
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) run_one(argv[i], timeout_s);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
