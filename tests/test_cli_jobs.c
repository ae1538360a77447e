/* The job commands as real processes (bin/dsv4-batch with a temporary
 * --home): exit codes, human output and the --json documents of submit,
 * status, list, results, cancel and run. Then the worker loop
 * (pipeline/worker.c) in forked processes with stand-in runners: the
 * heartbeat thread keeps a lease alive through a runner step longer than
 * the lease, `status` in another process sees live progress, SIGTERM puts
 * the job back in the queue, a cancel is seen at the next heartbeat, a
 * kill -9'd worker's job is finished by the next worker without duplicate
 * results, and a failing runner fails the job with its message. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "jobs/dsv4_jobs.h"
#include "pipeline/job_spec.h"
#include "pipeline/worker.h"
#include "tests/check.h"

static char tmp[] = "/tmp/dsv4-test-cli-jobs-XXXXXX";
static char home[600], db_path[700];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Runs a shell command; its stdout goes to out (NUL-terminated, may be
 * NULL). Returns the exit status, or -1. */
static int run(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int run(char *out, size_t outlen, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = 0;
    char sink[4096];
    for (;;) {
        size_t got = out && n + 1 < outlen ? fread(out + n, 1, outlen - 1 - n, p) : fread(sink, 1, sizeof sink, p);
        if (got == 0) break;
        if (out && n + 1 < outlen) n += got;
    }
    if (out) out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j) printf("  not JSON (%s): %s\n", e.text, text);
    return j;
}

static const char *jstr(json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }
static long long jint(json_t *o, const char *key) { return json_integer_value(json_object_get(o, key)); }

#define B "bin/dsv4-batch"

/* ---- commands ------------------------------------------------------------------ */

static void submit_status_list_cancel(void)
{
    char out[65536], path[700], bad[700];
    snprintf(path, sizeof path, "%s/job.yaml", tmp);
    CHECK(run(out, sizeof out, B " submit %s --home %s", path, home) == 0);
    CHECKF(!strcmp(out, "1\n"), "%s", out);
    CHECK(run(out, sizeof out, B " submit %s --home %s --json --priority 3", path, home) == 0);
    json_t *j = parse(out);
    CHECK(j && jint(j, "id") == 2 && !strcmp(jstr(j, "state"), "queued") && !strcmp(jstr(j, "name"), "cli-test"));
    CHECK(j && jint(j, "queries") == 2 && jint(j, "priority") == 3 && json_is_null(json_object_get(j, "worker")));
    CHECK(j && jstr(j, "created_at") && strlen(jstr(j, "created_at")) == 24 && jstr(j, "created_at")[23] == 'Z');
    json_decref(j);

    /* an invalid spec: exit 2, the exact message, nothing queued */
    snprintf(bad, sizeof bad, "%s/bad.yaml", tmp);
    CHECK(run(out, sizeof out, B " submit %s --home %s 2>&1", bad, home) == 2);
    char want[1024];
    snprintf(want, sizeof want, "%s:3:11: thinking must be none, high or max, not 'maybe'\n", bad);
    CHECKF(!strcmp(out, want), "%s", out);
    CHECK(run(out, sizeof out, B " submit %s/nothing-here.yaml --home %s 2>/dev/null", tmp, home) == 2);
    CHECK(run(out, sizeof out, B " submit --home %s 2>/dev/null", home) == 2);
    CHECK(run(out, sizeof out, B " submit %s --bogus --home %s 2>/dev/null", path, home) == 2);
    CHECK(run(out, sizeof out, B " submit --check %s", path) == 0 && strstr(out, "valid (1 inputs, 2 queries)"));

    CHECK(run(out, sizeof out, B " status --home %s --json", home) == 0);
    j = parse(out);
    json_t *counts = j ? json_object_get(j, "counts") : NULL;
    CHECK(counts && jint(counts, "queued") == 2 && jint(counts, "failed") == 0);
    CHECK(j && json_array_size(json_object_get(j, "jobs")) == 2);
    json_decref(j);

    CHECK(run(out, sizeof out, B " status 1 --home %s --json", home) == 0);
    j = parse(out);
    json_t *job = j ? json_object_get(j, "job") : NULL, *events = j ? json_object_get(j, "events") : NULL;
    CHECK(job && jint(job, "id") == 1 && !strcmp(jstr(job, "state"), "queued") && jint(job, "results") == 0);
    CHECK(json_array_size(events) == 1 && !strcmp(jstr(json_array_get(events, 0), "stage"), "submit"));
    CHECK(j && json_is_array(json_object_get(j, "progress")) && json_array_size(json_object_get(j, "progress")) == 0);
    json_decref(j);
    CHECK(run(out, sizeof out, B " status 1 --home %s", home) == 0 && strstr(out, "job 1  cli-test  queued"));
    CHECK(run(out, sizeof out, B " status 99 --home %s 2>&1", home) == 1 && strstr(out, "no job 99"));
    CHECK(run(out, sizeof out, B " status abc --home %s 2>/dev/null", home) == 2);

    CHECK(run(out, sizeof out, B " list --home %s --json", home) == 0);
    j = parse(out);
    json_t *jobs = j ? json_object_get(j, "jobs") : NULL;
    CHECK(json_array_size(jobs) == 2 && jint(json_array_get(jobs, 0), "id") == 2); /* newest first */
    json_decref(j);
    CHECK(run(out, sizeof out, B " list --home %s --state cancelled --json", home) == 0);
    j = parse(out);
    CHECK(j && json_array_size(json_object_get(j, "jobs")) == 0);
    json_decref(j);
    CHECK(run(out, sizeof out, B " list --home %s --state paused 2>/dev/null", home) == 2);
    CHECK(run(out, sizeof out, B " list --home %s", home) == 0 && strstr(out, "cli-test") && strstr(out, "STATE"));

    CHECK(run(out, sizeof out, B " cancel 2 --home %s --json", home) == 0);
    j = parse(out);
    CHECK(j && jint(j, "id") == 2 && !strcmp(jstr(j, "state"), "cancelled") && jstr(j, "finished_at"));
    json_decref(j);
    CHECK(run(out, sizeof out, B " cancel 2 --home %s 2>&1", home) == 1 &&
          strstr(out, "cannot go from cancelled to cancelled"));
    CHECK(run(out, sizeof out, B " cancel 99 --home %s 2>/dev/null", home) == 1);
    CHECK(run(out, sizeof out, B " cancel --home %s 2>/dev/null", home) == 2);

    /* the home from the environment */
    CHECK(run(out, sizeof out, "DSV4_HOME=%s " B " list --json", home) == 0);
    j = parse(out);
    CHECK(j && json_array_size(json_object_get(j, "jobs")) == 2);
    json_decref(j);
    CHECK(run(out, sizeof out, "env -u DSV4_HOME XDG_DATA_HOME=%s/xdg " B " list", tmp) == 0 && strstr(out, "no jobs"));
    char xdg_db[800];
    struct stat st;
    snprintf(xdg_db, sizeof xdg_db, "%s/xdg/dsv4-batch/jobs.db", tmp);
    CHECK(stat(xdg_db, &st) == 0);
    snprintf(xdg_db, sizeof xdg_db, "%s/xdg/dsv4-batch/cache", tmp);
    CHECK(stat(xdg_db, &st) == 0 && S_ISDIR(st.st_mode));
}

static void every_command_has_help(void)
{
    static const char *const cmds[] = {"submit", "run", "status", "results", "cancel", "list"};
    char out[8192];
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "usage: dsv4-batch %s", cmds[i]);
        CHECKF(run(out, sizeof out, B " %s --help", cmds[i]) == 0 && strstr(out, want) && strstr(out, "exit status"),
               "%s", cmds[i]);
        CHECK(run(out, sizeof out, B " %s --no-such-option 2>/dev/null", cmds[i]) == 2);
    }
    CHECK(run(out, sizeof out, B " --help") == 0 && strstr(out, "submit") && strstr(out, "results"));
}

static void results_jsonl_and_markdown(void)
{
    char out[65536], err[512];
    /* answer job 1 through the store, as a runner would */
    dsv4_jobs *db = NULL;
    CHECKF(dsv4_jobs_open(db_path, &db, err, sizeof err) == 0, "%s", err);
    if (!db) return;
    int64_t id = 0;
    CHECK(dsv4_jobs_claim(db, "w", 60000, &id, err, sizeof err) == 0 && id == 1);
    /* the reasoning ends in bytes that are not UTF-8 (a model can decode to
     * any bytes): they must come out as U+FFFD, not drop the response */
    dsv4_job_result r1 = {.query_id = "parties", .text = "Acme and \"Beta\" Ltd.", .reasoning = "Page 1 names them.\xff\xe2\x82",
                          .finish_reason = "stop", .prompt_tokens = 1200, .cached_tokens = 1000,
                          .generated_tokens = 9, .prefill_ms = 50, .decode_ms = 90, .total_ms = 140};
    dsv4_job_result r2 = {.query_id = "term", .error = "decode failed: device lost"};
    CHECK(dsv4_jobs_result_put(db, 1, &r1, NULL, err, sizeof err) == 0);
    CHECK(dsv4_jobs_result_put(db, 1, &r2, NULL, err, sizeof err) == 0);
    CHECK(dsv4_jobs_finish(db, 1, "w", DSV4_JOB_SUCCEEDED, NULL, err, sizeof err) == 0);
    dsv4_jobs_close(db);

    CHECK(run(out, sizeof out, B " results 1 --home %s --format jsonl", home) == 0);
    char *nl = strchr(out, '\n');
    CHECK(nl && strchr(nl + 1, '\n') && !strchr(strchr(nl + 1, '\n') + 1, '\n')); /* exactly two lines */
    if (nl) *nl = 0;
    json_t *l1 = parse(out), *l2 = nl ? parse(nl + 1) : NULL;
    CHECK(l1 && !strcmp(jstr(l1, "custom_id"), "parties") && json_is_null(json_object_get(l1, "error")));
    json_t *resp = json_object_get(l1, "response"), *body = json_object_get(resp, "body");
    CHECK(jint(resp, "status_code") == 200 && !strcmp(jstr(body, "object"), "chat.completion"));
    CHECK(body && !strcmp(jstr(body, "model"), "dsv4-demo"));
    json_t *choice = json_array_get(json_object_get(body, "choices"), 0), *msg = json_object_get(choice, "message");
    CHECK(msg && !strcmp(jstr(msg, "role"), "assistant") && !strcmp(jstr(msg, "content"), "Acme and \"Beta\" Ltd."));
    CHECK(msg && !strcmp(jstr(msg, "reasoning_content"), "Page 1 names them.\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
    CHECK(choice && !strcmp(jstr(choice, "finish_reason"), "stop"));
    json_t *usage = json_object_get(body, "usage");
    CHECK(jint(usage, "prompt_tokens") == 1200 && jint(usage, "completion_tokens") == 9 &&
          jint(usage, "total_tokens") == 1209);
    CHECK(jint(json_object_get(usage, "prompt_tokens_details"), "cached_tokens") == 1000);
    CHECK(l2 && !strcmp(jstr(l2, "custom_id"), "term") && json_is_null(json_object_get(l2, "response")));
    CHECK(l2 && !strcmp(jstr(json_object_get(l2, "error"), "message"), "decode failed: device lost"));
    json_decref(l1);
    json_decref(l2);

    char out2[65536];
    CHECK(run(out2, sizeof out2, B " results 1 --home %s --json", home) == 0);
    CHECK(run(out, sizeof out, B " results 1 --home %s", home) == 0); /* not a TTY: JSONL */
    CHECK(!strcmp(out, out2) && strstr(out, "\"custom_id\":\"parties\""));
    CHECK(run(out, sizeof out, B " results 1 --home %s --format md", home) == 0);
    CHECK(strstr(out, "# cli-test (job 1)") && strstr(out, "## parties") && strstr(out, "Acme and \"Beta\" Ltd."));
    CHECK(strstr(out, "**Question.** Who are the parties?") && strstr(out, "random"));
    CHECK(strstr(out, "| prompt tokens | 1200 (1000 from the cache) |") && strstr(out, "decode failed: device lost"));
    CHECK(strstr(out, "<summary>Reasoning</summary>") && strstr(out, "| answered | 2 of 2 queries |"));
    char file[800];
    snprintf(file, sizeof file, "%s/out.jsonl", tmp);
    CHECK(run(out, sizeof out, B " results 1 --home %s --out %s && cat %s", home, file, file) == 0 && !strcmp(out, out2));
    CHECK(run(out, sizeof out, B " results 99 --home %s 2>/dev/null", home) == 1);
    CHECK(run(out, sizeof out, B " results 1 --home %s --format xml 2>/dev/null", home) == 2);
    CHECK(run(out, sizeof out, B " results --home %s 2>/dev/null", home) == 2);
    CHECK(run(out, sizeof out, B " status 1 --home %s --json", home) == 0 && strstr(out, "\"succeeded\""));
}

/* `run` with the runner linked into the binary: a job whose model directory
 * holds no model fails (whatever stage the runner reaches), exit 1. */
static void run_once_fails_a_job_it_cannot_run(void)
{
    char out[65536], h2[700], spec[700];
    snprintf(h2, sizeof h2, "%s/home2", tmp);
    snprintf(spec, sizeof spec, "%s/nomodel.yaml", tmp);
    CHECK(run(out, sizeof out, B " submit %s --home %s", spec, h2) == 0 && !strcmp(out, "1\n"));
    CHECK(run(out, sizeof out, B " run --once --until-idle --home %s 2>/dev/null", h2) == 2);
    CHECK(run(out, sizeof out, B " run --lease -1 --home %s 2>/dev/null", h2) == 2);
    CHECK(run(out, sizeof out, B " run --once --json --home %s", h2) == 1);
    /* every line is a JSON event */
    int lines = 0, bad = 0;
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n")) {
        json_t *e = json_loads(l, 0, NULL);
        lines++;
        if (!e || !jstr(e, "type")) bad++;
        json_decref(e);
    }
    CHECK(lines >= 3 && bad == 0);
    CHECK(run(out, sizeof out, B " status 1 --home %s --json", h2) == 0);
    json_t *j = parse(out), *job = j ? json_object_get(j, "job") : NULL;
    CHECK(job && !strcmp(jstr(job, "state"), "failed") && jstr(job, "error") && *jstr(job, "error"));
    CHECK(job && jint(job, "attempts") == 1 && json_is_null(json_object_get(job, "worker")));
    json_decref(j);
    CHECK(run(out, sizeof out, B " run --until-idle --home %s", h2) == 0 && strstr(out, "no queued job"));
}

/* ---- the worker loop ------------------------------------------------------------ */

enum { R_SLOW_OK, R_UNTIL_STOP, R_ONE_BY_ONE, R_FAIL, R_UNAVAILABLE };
static int runner_mode;
static int runner_step_ms = 100;

/* Stand-in for the real runner: answers pending queries in ways set by
 * runner_mode, reporting progress and events through ctx. */
static int fake_runner(dsv4_jobs *db, int64_t job_id, const dsv4_worker_ctx *ctx, char *err, size_t errlen)
{
    dsv4_job_query *qs = NULL;
    size_t n = 0;
    if (dsv4_jobs_queries(db, job_id, 1, &qs, &n, err, errlen)) return -1;
    dsv4_worker_event(ctx, "decode", "info", "{\"pending\":1}", "attempt %d: %zu queries to answer", ctx->attempt, n);
    int rc = 0;
    if (runner_mode == R_FAIL) {
        snprintf(err, errlen, "stand-in runner: input unreadable");
        rc = -1;
    } else if (runner_mode == R_UNAVAILABLE) {
        snprintf(err, errlen, "no Vulkan device");
        rc = DSV4_RUN_UNAVAILABLE;
    } else if (runner_mode == R_UNTIL_STOP) {
        while (dsv4_worker_should_stop(ctx) == DSV4_STOP_NONE) sleep_ms(20);
        rc = DSV4_RUN_STOPPED;
    } else {
        for (size_t i = 0; i < n; i++) {
            /* one long step: longer than the lease when runner_step_ms is */
            sleep_ms(runner_step_ms);
            if (dsv4_worker_should_stop(ctx)) {
                rc = DSV4_RUN_STOPPED;
                break;
            }
            char text[64];
            snprintf(text, sizeof text, "answer from attempt %d", ctx->attempt);
            dsv4_job_result r = {.query_id = qs[i].query_id, .text = text, .finish_reason = "stop"};
            if (dsv4_jobs_result_put(db, job_id, &r, NULL, err, errlen)) {
                rc = -1;
                break;
            }
            dsv4_worker_progress(ctx, "decode", (double)(i + 1), (double)n, "queries");
        }
    }
    dsv4_jobs_queries_free(qs, n);
    return rc;
}

/* Forks a worker process running the loop with fake_runner; returns its pid. */
static pid_t spawn_worker(const char *worker_id, int64_t lease_ms, int once, int until_idle)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid != 0) return pid;
    char err[1024];
    dsv4_jobs *db = NULL;
    if (dsv4_jobs_open(db_path, &db, err, sizeof err)) _exit(10);
    dsv4_worker_opts o = {.home_dir = home, .cache_dir = home, .db_path = db_path, .worker_id = worker_id,
                          .lease_ms = lease_ms, .poll_ms = 50, .once = once, .until_idle = until_idle,
                          .output = DSV4_OUT_QUIET, .handle_signals = 1, .runner = fake_runner};
    dsv4_worker_stats st;
    int rc = dsv4_worker_run(db, &o, &st, err, sizeof err);
    dsv4_jobs_close(db);
    if (rc) _exit(11);
    /* exit code tells the parent what happened */
    _exit(st.succeeded * 1 + st.failed * 10 + st.cancelled * 20 + st.released * 40);
}

static int wait_exit(pid_t pid)
{
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

static int64_t submit_job(dsv4_jobs *db, int n_queries)
{
    dsv4_job_query_new qs[8];
    char ids[8][16]; /* room for any int: gcc -O1 checks the %d width */
    if (n_queries > 8) n_queries = 8;
    for (int i = 0; i < n_queries; i++) {
        snprintf(ids[i], sizeof ids[i], "q%d", i + 1);
        qs[i] = (dsv4_job_query_new){ids[i], "what?", NULL};
    }
    /* a real spec, as submit would store it; its output.jsonl is written by
     * the worker when the job succeeds */
    char yaml[1024], err[1024];
    snprintf(yaml, sizeof yaml,
             "name: w\ninputs: [docs]\nqueries: [{id: q1, prompt: what?}]\noutput: {jsonl: \"out/{name}-{id}.jsonl\"}\n");
    dsv4_job_spec *spec = NULL;
    CHECKF(dsv4_spec_parse(yaml, strlen(yaml), "w.yaml", tmp, 0, &spec, err, sizeof err) == 0, "%s", err);
    json_t *sj = spec ? dsv4_spec_to_json(spec) : NULL;
    char *spec_json = sj ? json_dumps(sj, JSON_COMPACT) : NULL;
    dsv4_job_new job = {.name = "w", .spec_yaml = yaml, .spec_json = spec_json ? spec_json : "{}", .max_attempts = 3,
                        .queries = qs, .n_queries = (size_t)n_queries};
    int64_t id = 0;
    CHECK(dsv4_jobs_submit(db, &job, &id, NULL, 0) == 0);
    free(spec_json);
    json_decref(sj);
    dsv4_spec_free(spec);
    return id;
}

static int state_of(dsv4_jobs *db, int64_t id, int *attempts)
{
    dsv4_job_info j;
    if (dsv4_jobs_get(db, id, &j, NULL, 0)) return -1;
    int s = j.state;
    if (attempts) *attempts = j.attempts;
    dsv4_job_info_clear(&j);
    return s;
}

static int wait_state(dsv4_jobs *db, int64_t id, int state, int timeout_ms)
{
    for (int t = 0; t < timeout_ms; t += 10) {
        if (state_of(db, id, NULL) == state) return 1;
        sleep_ms(10);
    }
    return 0;
}

static void heartbeat_keeps_the_lease_and_status_sees_progress(void)
{
    char err[512], out[65536];
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(db_path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit_job(db, 3);
    runner_mode = R_SLOW_OK;
    runner_step_ms = 800; /* each step outlives the 600 ms lease */
    pid_t w = spawn_worker("hb", 600, 1, 0);
    CHECK(wait_state(db, id, DSV4_JOB_RUNNING, 5000));
    sleep_ms(1300);
    int64_t got = -1;
    CHECK(dsv4_jobs_claim(db, "thief", 600, &got, err, sizeof err) == 0 && got == 0);
    /* another process reads the live progress */
    CHECK(run(out, sizeof out, B " status %lld --home %s --json", (long long)id, home) == 0);
    json_t *j = parse(out), *p = json_array_get(json_object_get(j, "progress"), 0);
    CHECK(p && !strcmp(jstr(p, "stage"), "decode") && !strcmp(jstr(p, "unit"), "queries"));
    CHECK(p && json_real_value(json_object_get(p, "done")) >= 1 && json_real_value(json_object_get(p, "total")) == 3);
    CHECK(!strcmp(jstr(json_object_get(j, "job"), "state"), "running"));
    json_decref(j);
    CHECK(wait_exit(w) == 1); /* one success */
    int attempts = 0;
    CHECK(state_of(db, id, &attempts) == DSV4_JOB_SUCCEEDED && attempts == 1);
    dsv4_job_result *rs = NULL;
    size_t n = 0;
    CHECK(dsv4_jobs_results(db, id, &rs, &n, err, sizeof err) == 0 && n == 3);
    dsv4_jobs_results_free(rs, n);
    /* the worker wrote output.jsonl: one line per query */
    char outfile[800];
    snprintf(outfile, sizeof outfile, "%s/out/w-%lld.jsonl", tmp, (long long)id);
    CHECK(run(out, sizeof out, "cat %s", outfile) == 0 && !strncmp(out, "{\"id\":", 6));
    int lines = 0;
    for (char *c = out; (c = strchr(c, '\n')); c++) lines++;
    CHECKF(lines == 3, "%d lines in %s", lines, outfile);
    runner_step_ms = 100;
    dsv4_jobs_close(db);
}

static void sigterm_puts_the_job_back(void)
{
    char err[512];
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(db_path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit_job(db, 2);
    runner_mode = R_UNTIL_STOP;
    pid_t w = spawn_worker("term", 5000, 0, 0); /* default loop: runs until a signal */
    CHECK(wait_state(db, id, DSV4_JOB_RUNNING, 5000));
    kill(w, SIGTERM);
    CHECK(wait_exit(w) == 40); /* one released */
    dsv4_job_info j;
    CHECK(dsv4_jobs_get(db, id, &j, err, sizeof err) == 0);
    CHECK(j.state == DSV4_JOB_QUEUED && j.attempts == 0 && j.worker == NULL);
    dsv4_job_info_clear(&j);
    CHECK(dsv4_jobs_set_state(db, id, DSV4_JOB_CANCELLED, NULL, err, sizeof err) == 0); /* out of the way */
    dsv4_jobs_close(db);
}

static void cancel_is_seen_at_the_next_heartbeat(void)
{
    char err[512];
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(db_path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit_job(db, 2);
    runner_mode = R_UNTIL_STOP;
    pid_t w = spawn_worker("cancel", 600, 1, 0);
    CHECK(wait_state(db, id, DSV4_JOB_RUNNING, 5000));
    int st = -1;
    CHECK(dsv4_jobs_cancel(db, id, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLING);
    CHECK(wait_exit(w) == 20); /* one cancelled */
    CHECK(state_of(db, id, NULL) == DSV4_JOB_CANCELLED);
    dsv4_jobs_close(db);
}

static void killed_worker_is_resumed_by_the_next(void)
{
    char err[512];
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(db_path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit_job(db, 5);
    runner_mode = R_ONE_BY_ONE;
    runner_step_ms = 100;
    /* Leases with room for a loaded 2-core CI machine (and ASan): with 500 ms
     * the heir's own heartbeat could be late past its lease, so it gave the
     * job up as lost and the test failed under `make asan`. */
    pid_t w = spawn_worker("doomed", 1500, 1, 0);
    dsv4_job_info j = {0};
    for (int t = 0; t < 5000; t += 10) { /* until two results are in */
        dsv4_job_info_clear(&j);
        if (dsv4_jobs_get(db, id, &j, NULL, 0) == 0 && j.n_results >= 2) break;
        sleep_ms(10);
    }
    CHECK(j.n_results >= 2 && j.n_results < 5);
    dsv4_job_info_clear(&j);
    kill(w, SIGKILL);
    CHECK(wait_exit(w) == -SIGKILL);
    size_t before = 0;
    dsv4_job_result *rs = NULL;
    CHECK(dsv4_jobs_results(db, id, &rs, &before, err, sizeof err) == 0);
    dsv4_jobs_results_free(rs, before);
    /* --until-idle sees nothing queued while the dead worker's lease runs */
    pid_t w2 = spawn_worker("early", 500, 0, 1);
    CHECK(wait_exit(w2) == 0);
    CHECK(state_of(db, id, NULL) == DSV4_JOB_RUNNING);
    sleep_ms(1600);
    w2 = spawn_worker("heir", 5000, 0, 1);
    CHECK(wait_exit(w2) == 1);
    int attempts = 0;
    CHECK(state_of(db, id, &attempts) == DSV4_JOB_SUCCEEDED && attempts == 2);
    size_t n = 0;
    CHECK(dsv4_jobs_results(db, id, &rs, &n, err, sizeof err) == 0 && n == 5);
    int from_first = 0;
    for (size_t i = 0; i < n; i++) from_first += !strcmp(rs[i].text, "answer from attempt 1");
    CHECKF(from_first == (int)before, "%d kept of %zu", from_first, before);
    dsv4_jobs_results_free(rs, n);
    dsv4_jobs_close(db);
}

static void failing_runner_fails_the_job(void)
{
    char err[512];
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(db_path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t a = submit_job(db, 1), b = submit_job(db, 1);
    runner_mode = R_FAIL;
    CHECK(wait_exit(spawn_worker("fail", 5000, 1, 0)) == 10); /* --once: one job, failed */
    dsv4_job_info j;
    CHECK(dsv4_jobs_get(db, a, &j, err, sizeof err) == 0);
    CHECK(j.state == DSV4_JOB_FAILED && j.error && !strcmp(j.error, "stand-in runner: input unreadable"));
    dsv4_job_info_clear(&j);
    CHECK(state_of(db, b, NULL) == DSV4_JOB_QUEUED);
    dsv4_job_event *ev = NULL;
    size_t n = 0;
    CHECK(dsv4_jobs_events(db, a, 0, 0, &ev, &n, err, sizeof err) == 0);
    int saw = 0;
    for (size_t i = 0; i < n; i++) saw += !strcmp(ev[i].stage, "decode") && strstr(ev[i].message, "attempt 1");
    CHECK(saw == 1);
    dsv4_jobs_events_free(ev, n);
    /* a worker that cannot run anything gives the job back and stops */
    runner_mode = R_UNAVAILABLE;
    CHECK(wait_exit(spawn_worker("nogpu", 5000, 0, 1)) == 40); /* one released, loop ended */
    int attempts = -1;
    CHECK(state_of(db, b, &attempts) == DSV4_JOB_QUEUED && attempts == 0);
    CHECK(dsv4_jobs_set_state(db, b, DSV4_JOB_CANCELLED, NULL, err, sizeof err) == 0);
    dsv4_jobs_close(db);
}

int main(void)
{
    if (access(B, X_OK) != 0) {
        printf("FAIL setup: %s is not built (make bin/dsv4-batch)\n", B);
        return 1;
    }
    if (!mkdtemp(tmp)) {
        printf("FAIL setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    snprintf(home, sizeof home, "%s/home", tmp);
    snprintf(db_path, sizeof db_path, "%s/jobs.db", home);
    char path[800];
    snprintf(path, sizeof path, "%s/docs", tmp);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/docs/a.txt", tmp);
    write_file(path, "The parties are Acme and Beta.\n");
    snprintf(path, sizeof path, "%s/empty-model", tmp);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/job.yaml", tmp);
    write_file(path, "name: cli-test\n"
                     "inputs: [docs]\n"
                     "queries:\n"
                     "  - {id: parties, prompt: Who are the parties?}\n"
                     "  - {id: term, prompt: What is the term?}\n");
    snprintf(path, sizeof path, "%s/bad.yaml", tmp);
    write_file(path, "inputs: [docs]\n"
                     "queries: [{id: q, prompt: p}]\n"
                     "thinking: maybe\n");
    snprintf(path, sizeof path, "%s/nomodel.yaml", tmp);
    write_file(path, "model: empty-model\n"
                     "inputs: [docs]\n"
                     "queries: [{id: q, prompt: p}]\n");

    RUN(submit_status_list_cancel);
    RUN(every_command_has_help);
    RUN(results_jsonl_and_markdown);
    RUN(run_once_fails_a_job_it_cannot_run);
    RUN(heartbeat_keeps_the_lease_and_status_sees_progress);
    RUN(sigterm_puts_the_job_back);
    RUN(cancel_is_seen_at_the_next_heartbeat);
    RUN(killed_worker_is_resumed_by_the_next);
    RUN(failing_runner_fails_the_job);

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", tmp);
    CHECK_EXIT();
}
