/* The job commands: submit, run, status, results, cancel, list (docs/cli.md).
 *
 * Each command parses its own options (a shared helper takes --home and
 * --json), opens the home directory's job store and prints either human
 * text or, with --json, one stable JSON document for scripts (times as
 * ISO-8601 UTC strings, absent values as null). Exit statuses follow
 * pipeline/dsv4_cli.h: 0 ok, 1 failed (or no such job), 2 usage or invalid
 * job spec. The results exporters live here too, since `results` and the
 * runner's output.jsonl must print the same lines. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "jobs/dsv4_jobs.h"
#include "pipeline/dsv4_cli.h"
#include "pipeline/home.h"
#include "pipeline/job_spec.h"
#include "pipeline/worker.h"

/* ---- small helpers ----------------------------------------------------------- */

static void iso_ms(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03dZ", (int)(ms % 1000));
}

static json_t *time_json(int64_t ms)
{
    if (ms <= 0) return json_null();
    char b[40];
    iso_ms(ms, b, sizeof b);
    return json_string(b);
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when s does not start
 * one: the rules of RFC 3629 (no overlong forms, no surrogates, nothing past
 * U+10FFFF), which are the ones jansson checks. */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!n) return 0;
    unsigned lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return n;
}

/* A JSON string for text that should be UTF-8 but may not be: a model's
 * answer is whatever bytes its tokens decode to, and json_string() refuses
 * anything that is not UTF-8, which used to drop the whole response from the
 * results. Each byte that does not start a valid sequence becomes U+FFFD. */
static json_t *str_json(const char *s)
{
    if (!s) return json_null();
    json_t *j = json_string(s);
    if (j) return j;
    size_t n = strlen(s), o = 0;
    char *b = malloc(n * 3 + 1);
    if (!b) return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t k = utf8_seq(p);
        if (k) {
            memcpy(b + o, p, k);
            o += k;
            p += k;
        } else {
            memcpy(b + o, "\xEF\xBF\xBD", 3);
            o += 3;
            p++;
        }
    }
    b[o] = 0;
    j = json_string(b);
    free(b);
    return j;
}

static void print_json(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text) printf("%s\n", text);
    free(text);
    json_decref(o);
}

static json_t *job_json(const dsv4_job_info *j)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer(j->id));
    json_object_set_new(o, "name", str_json(j->name));
    json_object_set_new(o, "state", json_string(dsv4_job_state_name(j->state)));
    json_object_set_new(o, "priority", json_integer(j->priority));
    json_object_set_new(o, "attempts", json_integer(j->attempts));
    json_object_set_new(o, "max_attempts", json_integer(j->max_attempts));
    json_object_set_new(o, "worker", str_json(j->worker));
    json_object_set_new(o, "lease_expires_at", time_json(j->worker ? j->lease_expires_ms : 0));
    json_object_set_new(o, "created_at", time_json(j->created_ms));
    json_object_set_new(o, "started_at", time_json(j->started_ms));
    json_object_set_new(o, "finished_at", time_json(j->finished_ms));
    json_object_set_new(o, "updated_at", time_json(j->updated_ms));
    json_object_set_new(o, "queries", json_integer(j->n_queries));
    json_object_set_new(o, "results", json_integer(j->n_results));
    json_object_set_new(o, "error", str_json(j->error));
    json_object_set_new(o, "spec_path", str_json(j->spec_path));
    return o;
}

/* Options every job command takes. Returns 1 when argv[*i] was one of them,
 * 0 when not, -1 on a missing value (message printed). */
typedef struct common_opts {
    const char *home;
    int json;
} common_opts;

static int opt_value(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t l = strlen(name);
    if (strncmp(argv[*i], name, l) != 0) return 0;
    if (argv[*i][l] == '=') {
        *val = argv[*i] + l + 1;
        return 1;
    }
    if (argv[*i][l] != 0) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "dsv4-batch %s: %s needs a value\n", argv[0], name);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

static int common_opt(int argc, char **argv, int *i, common_opts *c)
{
    if (!strcmp(argv[*i], "--json")) {
        c->json = 1;
        return 1;
    }
    return opt_value(argc, argv, i, "--home", &c->home);
}

static int bad_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad_usage(const char *cmd, const char *fmt, ...)
{
    fprintf(stderr, "dsv4-batch %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see dsv4-batch %s --help)\n", cmd);
    return DSV4_EXIT_USAGE;
}

static int parse_job_id(const char *cmd, const char *s, int64_t *id)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v <= 0) return bad_usage(cmd, "'%s' is not a job id (a positive number)", s);
    *id = v;
    return 0;
}

static int open_home(const char *cmd, const common_opts *c, dsv4_home *h)
{
    char err[1024];
    if (dsv4_home_open(c->home, h, err, sizeof err)) {
        fprintf(stderr, "dsv4-batch %s: %s\n", cmd, err);
        return DSV4_EXIT_FAIL;
    }
    return 0;
}

/* Prints the store's message; 1. */
static int store_fail(const char *cmd, const char *err)
{
    fprintf(stderr, "dsv4-batch %s: %s\n", cmd, err);
    return DSV4_EXIT_FAIL;
}

/* ---- submit ----------------------------------------------------------------- */

static const char submit_usage[] =
    "usage: dsv4-batch submit JOB.yaml [--home DIR] [--priority N] [--check] [--json]\n"
    "\n"
    "Checks the job file and queues the job; prints its id (with --json, the job).\n"
    "  --home DIR     state directory (default $DSV4_HOME, else $XDG_DATA_HOME/dsv4-batch)\n"
    "  --priority N   overrides the file's priority (higher runs first)\n"
    "  --check        only check the file; queue nothing\n"
    "  --json         print the queued job as JSON\n"
    "exit status: 0 queued (or valid), 1 the job store failed, 2 usage error or invalid job file\n";

int dsv4_cmd_submit(int argc, char **argv)
{
    common_opts c = {0};
    const char *file = NULL, *prio_s = NULL;
    int check = 0, r;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(submit_usage, stdout);
            return DSV4_EXIT_OK;
        }
        if ((r = common_opt(argc, argv, &i, &c)) || (r = opt_value(argc, argv, &i, "--priority", &prio_s))) {
            if (r < 0) return DSV4_EXIT_USAGE;
        } else if (!strcmp(argv[i], "--check")) check = 1;
        else if (argv[i][0] == '-' && argv[i][1]) return bad_usage("submit", "unknown option '%s'", argv[i]);
        else if (file) return bad_usage("submit", "one job file at a time");
        else file = argv[i];
    }
    if (!file) return bad_usage("submit", "missing JOB.yaml");
    int64_t prio = 0;
    if (prio_s) {
        char *end;
        prio = strtoll(prio_s, &end, 10);
        if (*end || end == prio_s || prio < -1000000 || prio > 1000000)
            return bad_usage("submit", "--priority must be an integer between -1000000 and 1000000");
    }

    char err[8192];
    dsv4_job_spec *spec = NULL;
    if (dsv4_spec_load(file, DSV4_SPEC_CHECK_PATHS, &spec, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return DSV4_EXIT_USAGE;
    }
    if (prio_s) spec->priority = (int)prio;
    if (check) {
        if (c.json) {
            json_t *o = dsv4_spec_to_json(spec);
            print_json(o);
        } else {
            printf("%s: valid (%zu inputs, %zu queries)\n", file, spec->n_inputs, spec->n_queries);
        }
        dsv4_spec_free(spec);
        return DSV4_EXIT_OK;
    }

    int rc = DSV4_EXIT_FAIL;
    dsv4_home h = {0};
    json_t *sj = dsv4_spec_to_json(spec);
    char *spec_json = sj ? json_dumps(sj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(sj);
    dsv4_job_input_new *ins = calloc(spec->n_inputs + 1, sizeof *ins);
    dsv4_job_query_new *qs = calloc(spec->n_queries + 1, sizeof *qs);
    char **opt_texts = calloc(spec->n_inputs + spec->n_queries + 1, sizeof *opt_texts);
    if (!spec_json || !ins || !qs || !opt_texts) {
        fprintf(stderr, "dsv4-batch submit: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < spec->n_inputs; i++) {
        json_t *o = dsv4_spec_input_options_json(&spec->inputs[i]);
        opt_texts[i] = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        ins[i] = (dsv4_job_input_new){dsv4_spec_input_kind_name(spec->inputs[i].kind), spec->inputs[i].path,
                                      opt_texts[i]};
    }
    for (size_t i = 0; i < spec->n_queries; i++) {
        json_t *o = dsv4_spec_query_options_json(&spec->queries[i]);
        char **t = &opt_texts[spec->n_inputs + i];
        *t = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        qs[i] = (dsv4_job_query_new){spec->queries[i].id, spec->queries[i].prompt, *t};
    }
    if ((rc = open_home("submit", &c, &h))) goto done;
    dsv4_job_new job = {.name = spec->name,
                        .spec_path = spec->path,
                        .spec_yaml = spec->source,
                        .spec_json = spec_json,
                        .priority = spec->priority,
                        .max_attempts = spec->max_attempts,
                        .inputs = ins,
                        .n_inputs = spec->n_inputs,
                        .queries = qs,
                        .n_queries = spec->n_queries};
    int64_t id = 0;
    if (dsv4_jobs_submit(h.db, &job, &id, err, sizeof err)) {
        rc = store_fail("submit", err);
        goto done;
    }
    if (c.json) {
        dsv4_job_info info;
        if (dsv4_jobs_get(h.db, id, &info, err, sizeof err)) {
            rc = store_fail("submit", err);
            goto done;
        }
        print_json(job_json(&info));
        dsv4_job_info_clear(&info);
    } else {
        printf("%lld\n", (long long)id);
        if (isatty(STDERR_FILENO))
            fprintf(stderr, "queued job %lld '%s': %zu inputs, %zu queries (run it with: dsv4-batch run)\n",
                    (long long)id, spec->name, spec->n_inputs, spec->n_queries);
    }
    rc = DSV4_EXIT_OK;
done:
    for (size_t i = 0; opt_texts && i < spec->n_inputs + spec->n_queries; i++) free(opt_texts[i]);
    free(opt_texts);
    free(ins);
    free(qs);
    free(spec_json);
    dsv4_spec_free(spec);
    dsv4_home_close(&h);
    return rc;
}

/* ---- run -------------------------------------------------------------------- */

static const char run_usage[] =
    "usage: dsv4-batch run [--home DIR] [--once | --until-idle] [--poll SECONDS] [--lease SECONDS]\n"
    "                      [--worker-id ID] [--devices LIST] [--split LIST] [--json] [--quiet]\n"
    "\n"
    "A worker: claims queued jobs one at a time and runs them. Without --once or\n"
    "--until-idle it waits for new jobs until SIGINT/SIGTERM, which finish the\n"
    "current step, put the job back in the queue and exit (a second signal exits\n"
    "at once). Several workers may share one home directory.\n"
    "  --once            run at most one job, then exit\n"
    "  --until-idle      exit when no job is queued\n"
    "  --poll SECONDS    wait between looks at an empty queue (default 2)\n"
    "  --lease SECONDS   lease length; a dead worker's job is taken over after it (default 60)\n"
    "  --worker-id ID    name of this worker in the job store (default HOST:PID)\n"
    "  --devices LIST    split the model over these Vulkan devices, e.g. 0,1,2,3 (indices or\n"
    "                    name substrings; default $DSV4_DEVICES, else one device)\n"
    "  --split LIST      blocks per device, e.g. 11,11,11,10 (default $DSV4_SPLIT, else by free memory)\n"
    "  --json            one JSON object per event and progress update\n"
    "  --quiet           print nothing\n"
    "exit status: 0 every job it ran succeeded (or none was queued), 1 a job failed\n"
    "or the job store failed, 2 usage error, 3 this machine cannot run jobs (no\n"
    "Vulkan device; the job went back to the queue)\n";

static int parse_seconds(const char *s, int64_t *ms)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || !(v > 0) || v > 86400 * 7) return -1;
    *ms = (int64_t)(v * 1000 + 0.5);
    return *ms > 0 ? 0 : -1;
}

int dsv4_cmd_run(int argc, char **argv)
{
    common_opts c = {0};
    const char *poll_s = NULL, *lease_s = NULL, *worker = NULL, *devices = NULL, *split = NULL;
    int once = 0, idle = 0, quiet = 0, r;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(run_usage, stdout);
            return DSV4_EXIT_OK;
        }
        if ((r = common_opt(argc, argv, &i, &c)) || (r = opt_value(argc, argv, &i, "--poll", &poll_s)) ||
            (r = opt_value(argc, argv, &i, "--lease", &lease_s)) ||
            (r = opt_value(argc, argv, &i, "--worker-id", &worker)) ||
            (r = opt_value(argc, argv, &i, "--devices", &devices)) ||
            (r = opt_value(argc, argv, &i, "--split", &split))) {
            if (r < 0) return DSV4_EXIT_USAGE;
        } else if (!strcmp(argv[i], "--once")) once = 1;
        else if (!strcmp(argv[i], "--until-idle")) idle = 1;
        else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else if (argv[i][0] == '-') return bad_usage("run", "unknown option '%s'", argv[i]);
        else return bad_usage("run", "unexpected argument '%s'", argv[i]);
    }
    if (once && idle) return bad_usage("run", "--once and --until-idle exclude each other");
    int64_t poll_ms = 0, lease_ms = 0;
    if (poll_s && parse_seconds(poll_s, &poll_ms)) return bad_usage("run", "--poll needs a positive number of seconds");
    if (lease_s && parse_seconds(lease_s, &lease_ms))
        return bad_usage("run", "--lease needs a positive number of seconds");
    if (worker && !*worker) return bad_usage("run", "--worker-id must not be empty");

    dsv4_home h;
    if ((r = open_home("run", &c, &h))) return r;
    dsv4_worker_opts o = {.home_dir = h.dir,
                          .cache_dir = h.cache_dir,
                          .db_path = h.db_path,
                          .worker_id = worker,
                          .lease_ms = lease_ms,
                          .poll_ms = poll_ms,
                          .once = once,
                          .until_idle = idle,
                          .output = quiet ? DSV4_OUT_QUIET
                                    : c.json ? DSV4_OUT_JSON
                                    : (isatty(STDOUT_FILENO) && isatty(STDERR_FILENO)) ? DSV4_OUT_TTY
                                                                                      : DSV4_OUT_LINES,
                          .handle_signals = 1,
                          .devices = devices,
                          .split = split};
    dsv4_worker_stats st;
    char err[2048];
    int rc = dsv4_worker_run(h.db, &o, &st, err, sizeof err);
    dsv4_home_close(&h);
    if (rc) return store_fail("run", err);
    if (!quiet && !c.json && st.claimed == 0 && (once || idle)) printf("no queued job\n");
    if (st.unavailable) return DSV4_EXIT_MISSING;
    return st.failed ? DSV4_EXIT_FAIL : DSV4_EXIT_OK;
}

/* ---- status ----------------------------------------------------------------- */

static const char status_usage[] =
    "usage: dsv4-batch status [JOB] [--home DIR] [--events N] [--json]\n"
    "\n"
    "Without JOB: how many jobs are in each state, and the unfinished ones.\n"
    "With JOB: the job, its live progress per stage (written by the worker running\n"
    "it, in any process) and its last events (default 10).\n"
    "exit status: 0 ok, 1 no such job or the job store failed, 2 usage error\n";

static void fmt_duration(double s, char *buf, size_t len)
{
    if (s < 0) s = 0;
    if (s < 60) snprintf(buf, len, "%.0fs", s);
    else if (s < 3600) snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, len, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static int status_one(dsv4_jobs *db, int64_t id, int json, int n_events)
{
    char err[1024];
    dsv4_job_info j;
    dsv4_job_progress *p = NULL;
    dsv4_job_event *ev = NULL;
    size_t np = 0, ne = 0;
    int rc = dsv4_jobs_get(db, id, &j, err, sizeof err);
    if (rc) return store_fail("status", err);
    if (dsv4_jobs_progress(db, id, &p, &np, err, sizeof err) ||
        (n_events > 0 && dsv4_jobs_events(db, id, 0, n_events, &ev, &ne, err, sizeof err))) {
        dsv4_job_info_clear(&j);
        dsv4_jobs_progress_free(p, np);
        return store_fail("status", err);
    }
    int64_t now = dsv4_jobs_now_ms();
    if (json) {
        json_t *o = json_object(), *pa = json_array(), *ea = json_array();
        json_object_set_new(o, "job", job_json(&j));
        for (size_t i = 0; i < np; i++) {
            json_t *x = json_pack("{s:s, s:f, s:f, s:s, s:f}", "stage", p[i].stage, "done", p[i].done, "total",
                                  p[i].total, "unit", p[i].unit ? p[i].unit : "", "rate", p[i].rate);
            json_object_set_new(x, "updated_at", time_json(p[i].updated_ms));
            json_array_append_new(pa, x);
        }
        for (size_t i = 0; i < ne; i++) {
            /* the message can name a file whose name is not UTF-8 */
            json_t *x = json_pack("{s:I, s:o, s:s, s:s, s:o}", "id", (json_int_t)ev[i].id, "time",
                                  time_json(ev[i].time_ms), "stage", ev[i].stage, "level", ev[i].level, "message",
                                  str_json(ev[i].message));
            json_t *payload = ev[i].payload_json ? json_loads(ev[i].payload_json, JSON_DECODE_ANY, NULL) : NULL;
            json_object_set_new(x, "payload", payload ? payload : json_null());
            json_array_append_new(ea, x);
        }
        json_object_set_new(o, "progress", pa);
        json_object_set_new(o, "events", ea);
        print_json(o);
    } else {
        char t[40];
        printf("job %lld  %s  %s", (long long)j.id, j.name, dsv4_job_state_name(j.state));
        if (j.worker) {
            char left[32];
            fmt_duration((double)(j.lease_expires_ms - now) / 1000.0, left, sizeof left);
            printf("  (attempt %d of %d, worker %s, lease %s %s)", j.attempts, j.max_attempts, j.worker,
                   j.lease_expires_ms >= now ? "ends in" : "EXPIRED", left);
        } else if (j.attempts) {
            printf("  (%d attempt%s of %d)", j.attempts, j.attempts == 1 ? "" : "s", j.max_attempts);
        }
        printf("\n");
        iso_ms(j.created_ms, t, sizeof t);
        printf("  created   %s\n", t);
        if (j.started_ms) iso_ms(j.started_ms, t, sizeof t), printf("  started   %s\n", t);
        if (j.finished_ms) iso_ms(j.finished_ms, t, sizeof t), printf("  finished  %s\n", t);
        printf("  results   %lld of %lld queries\n", (long long)j.n_results, (long long)j.n_queries);
        if (j.error) printf("  error     %s\n", j.error);
        if (np) printf("progress:\n");
        for (size_t i = 0; i < np; i++) {
            char ago[32], eta[48] = "";
            fmt_duration((double)(now - p[i].updated_ms) / 1000.0, ago, sizeof ago);
            if (p[i].rate > 0 && p[i].total > p[i].done) {
                char d[32];
                fmt_duration((p[i].total - p[i].done) / p[i].rate, d, sizeof d);
                snprintf(eta, sizeof eta, ", ETA %s", d);
            }
            if (p[i].total > 0)
                printf("  %-8s %.0f/%.0f %s (%.0f%%), %.1f %s/s%s, updated %s ago\n", p[i].stage, p[i].done,
                       p[i].total, p[i].unit, 100.0 * p[i].done / p[i].total, p[i].rate, p[i].unit, eta, ago);
            else
                printf("  %-8s %.0f %s, %.1f %s/s, updated %s ago\n", p[i].stage, p[i].done, p[i].unit, p[i].rate,
                       p[i].unit, ago);
        }
        if (ne) printf("events:\n");
        for (size_t i = 0; i < ne; i++) {
            iso_ms(ev[i].time_ms, t, sizeof t);
            printf("  %s %s %s: %s\n", t, ev[i].stage, ev[i].level, ev[i].message);
        }
    }
    dsv4_job_info_clear(&j);
    dsv4_jobs_progress_free(p, np);
    dsv4_jobs_events_free(ev, ne);
    return DSV4_EXIT_OK;
}

static int status_all(dsv4_jobs *db, int json)
{
    char err[1024];
    int64_t counts[DSV4_JOB_N_STATES];
    dsv4_job_info *jobs = NULL;
    size_t n = 0;
    if (dsv4_jobs_count(db, counts, err, sizeof err) || dsv4_jobs_list(db, -1, 0, &jobs, &n, err, sizeof err))
        return store_fail("status", err);
    if (json) {
        json_t *o = json_object(), *cj = json_object(), *a = json_array();
        for (int s = 0; s < DSV4_JOB_N_STATES; s++) json_object_set_new(cj, dsv4_job_state_name(s), json_integer(counts[s]));
        for (size_t i = n; i-- > 0;)
            if (!dsv4_job_state_is_final(jobs[i].state)) json_array_append_new(a, job_json(&jobs[i]));
        json_object_set_new(o, "counts", cj);
        json_object_set_new(o, "jobs", a);
        print_json(o);
    } else {
        for (int s = 0; s < DSV4_JOB_N_STATES; s++)
            printf("%s%s %lld", s ? ", " : "", dsv4_job_state_name(s), (long long)counts[s]);
        printf("\n");
        for (size_t i = n; i-- > 0;)
            if (!dsv4_job_state_is_final(jobs[i].state))
                printf("  %6lld  %-10s  %lld/%lld results  %s\n", (long long)jobs[i].id,
                       dsv4_job_state_name(jobs[i].state), (long long)jobs[i].n_results, (long long)jobs[i].n_queries,
                       jobs[i].name);
    }
    dsv4_jobs_list_free(jobs, n);
    return DSV4_EXIT_OK;
}

int dsv4_cmd_status(int argc, char **argv)
{
    common_opts c = {0};
    const char *job_s = NULL, *events_s = NULL;
    int r;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(status_usage, stdout);
            return DSV4_EXIT_OK;
        }
        if ((r = common_opt(argc, argv, &i, &c)) || (r = opt_value(argc, argv, &i, "--events", &events_s))) {
            if (r < 0) return DSV4_EXIT_USAGE;
        } else if (argv[i][0] == '-') return bad_usage("status", "unknown option '%s'", argv[i]);
        else if (job_s) return bad_usage("status", "one job at a time");
        else job_s = argv[i];
    }
    int64_t id = 0;
    int n_events = 10;
    if (job_s && (r = parse_job_id("status", job_s, &id))) return r;
    if (events_s) {
        char *end;
        long v = strtol(events_s, &end, 10);
        if (*end || end == events_s || v < 0 || v > 100000) return bad_usage("status", "--events needs a count");
        n_events = (int)v;
    }
    dsv4_home h;
    if ((r = open_home("status", &c, &h))) return r;
    r = id ? status_one(h.db, id, c.json, n_events) : status_all(h.db, c.json);
    dsv4_home_close(&h);
    return r;
}

/* ---- results ---------------------------------------------------------------- */

/* The model's name for the output: the model directory's last component,
 * or the demo model's. */
static char *model_name(const char *spec_json)
{
    json_t *s = spec_json ? json_loads(spec_json, 0, NULL) : NULL;
    const char *m = s ? json_string_value(json_object_get(s, "model")) : NULL;
    char *out;
    if (m) {
        const char *b = strrchr(m, '/');
        out = strdup(b && b[1] ? b + 1 : m);
    } else {
        out = strdup("dsv4-demo");
    }
    json_decref(s);
    return out;
}

static json_t *result_line(const dsv4_job_info *j, const char *model, const dsv4_job_result *r)
{
    char rid[512];
    snprintf(rid, sizeof rid, "dsv4-%lld-%s", (long long)j->id, r->query_id);
    json_t *line = json_object();
    json_object_set_new(line, "id", json_string(rid));
    json_object_set_new(line, "custom_id", json_string(r->query_id));
    if (r->error) {
        json_object_set_new(line, "response", json_null());
        json_object_set_new(line, "error", json_pack("{s:s, s:o}", "code", "query_failed", "message", str_json(r->error)));
        return line;
    }
    json_t *msg = json_pack("{s:s, s:o, s:o}", "role", "assistant", "content", str_json(r->text ? r->text : ""),
                            "reasoning_content", str_json(r->reasoning));
    json_t *choice = json_pack("{s:i, s:o, s:o}", "index", 0, "message", msg, "finish_reason", str_json(r->finish_reason));
    json_t *usage = json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)r->prompt_tokens,
                              "completion_tokens", (json_int_t)r->generated_tokens, "total_tokens",
                              (json_int_t)(r->prompt_tokens + r->generated_tokens), "prompt_tokens_details",
                              "cached_tokens", (json_int_t)r->cached_tokens);
    json_t *timings = json_pack("{s:f, s:f, s:f}", "prefill_ms", r->prefill_ms, "decode_ms", r->decode_ms, "total_ms",
                                r->total_ms);
    json_t *body = json_pack("{s:s, s:s, s:I, s:o, s:[o], s:o, s:o}", "id", rid, "object", "chat.completion", "created",
                             (json_int_t)(r->created_ms / 1000), "model", str_json(model), "choices", choice, "usage", usage,
                             "timings", timings);
    json_object_set_new(line, "response", json_pack("{s:i, s:s, s:o}", "status_code", 200, "request_id", rid, "body", body));
    json_object_set_new(line, "error", json_null());
    return line;
}

static void md_block(FILE *out, const char *text)
{
    /* Answers are the model's Markdown already; print them as they are. */
    fprintf(out, "%s\n", text && *text ? text : "*(empty)*");
}

int dsv4_results_write(dsv4_jobs *db, int64_t job_id, int format, FILE *out, char *err, size_t errlen)
{
    dsv4_job_info j;
    dsv4_job_result *res = NULL;
    dsv4_job_query *qs = NULL;
    size_t nr = 0, nq = 0;
    int rc = dsv4_jobs_get(db, job_id, &j, err, errlen);
    if (rc) return rc;
    if ((rc = dsv4_jobs_results(db, job_id, &res, &nr, err, errlen)) ||
        (rc = dsv4_jobs_queries(db, job_id, 0, &qs, &nq, err, errlen)))
        goto done;
    char *model = model_name(j.spec_json);
    if (format == DSV4_RESULTS_JSONL) {
        for (size_t i = 0; i < nr; i++) {
            json_t *line = result_line(&j, model ? model : "?", &res[i]);
            char *text = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            if (text) fprintf(out, "%s\n", text);
            free(text);
            json_decref(line);
        }
    } else {
        int64_t prompt = 0, cached = 0, gen = 0;
        double prefill = 0, decode = 0;
        for (size_t i = 0; i < nr; i++) {
            prompt += res[i].prompt_tokens;
            cached += res[i].cached_tokens;
            gen += res[i].generated_tokens;
            /* Queries share one prefix prefill and decode as one batch, so
             * their times overlap: the job's figure is the longest. */
            if (res[i].prefill_ms > prefill) prefill = res[i].prefill_ms;
            if (res[i].decode_ms > decode) decode = res[i].decode_ms;
        }
        char t[40];
        fprintf(out, "# %s (job %lld)\n\n", j.name, (long long)j.id);
        if (!model || !strcmp(model, "dsv4-demo"))
            fprintf(out, "> These answers come from the embedded demo model, whose weights are random: they are "
                         "noise. Set `model:` to a DeepSeek-V4 checkpoint for real answers.\n\n");
        fprintf(out, "| | |\n|---|---|\n");
        fprintf(out, "| state | %s |\n", dsv4_job_state_name(j.state));
        fprintf(out, "| model | %s |\n", model ? model : "?");
        fprintf(out, "| answered | %zu of %zu queries |\n", nr, nq);
        fprintf(out, "| prompt tokens | %lld (%lld from the cache) |\n", (long long)prompt, (long long)cached);
        fprintf(out, "| generated tokens | %lld |\n", (long long)gen);
        fprintf(out, "| time | prefill %.1f s, decode %.1f s (queries run together) |\n", prefill / 1000,
                decode / 1000);
        if (j.started_ms && j.finished_ms)
            fprintf(out, "| wall time | %.1f s (last attempt) |\n", (double)(j.finished_ms - j.started_ms) / 1000);
        if (j.finished_ms) iso_ms(j.finished_ms, t, sizeof t), fprintf(out, "| finished | %s |\n", t);
        if (j.error) fprintf(out, "| error | %s |\n", j.error);
        fprintf(out, "\n");
        for (size_t i = 0; i < nq; i++) {
            const dsv4_job_result *r = NULL;
            for (size_t k = 0; k < nr; k++)
                if (!strcmp(res[k].query_id, qs[i].query_id)) r = &res[k];
            fprintf(out, "## %s\n\n**Question.** %s\n\n", qs[i].query_id, qs[i].prompt);
            if (!r) {
                fprintf(out, "*No result yet.*\n\n");
                continue;
            }
            if (r->error) {
                fprintf(out, "**Error.** %s\n\n", r->error);
                continue;
            }
            fprintf(out, "**Answer.**\n\n");
            md_block(out, r->text);
            if (r->reasoning && *r->reasoning) {
                fprintf(out, "\n<details><summary>Reasoning</summary>\n\n");
                md_block(out, r->reasoning);
                fprintf(out, "\n</details>\n");
            }
            fprintf(out, "\n*%s · %lld prompt tokens (%lld cached) · %lld generated · %.1f s*\n\n",
                    r->finish_reason ? r->finish_reason : "?", (long long)r->prompt_tokens, (long long)r->cached_tokens,
                    (long long)r->generated_tokens, r->total_ms / 1000);
        }
    }
    free(model);
    if (fflush(out) != 0 || ferror(out)) rc = -1, snprintf(err, errlen, "write error: %s", strerror(errno));
done:
    dsv4_job_info_clear(&j);
    dsv4_jobs_results_free(res, nr);
    dsv4_jobs_queries_free(qs, nq);
    return rc;
}

/* mkdir -p of path's parent directory. */
static int make_parent_dirs(const char *path, char *err, size_t errlen)
{
    char *p = strdup(path);
    if (!p) return snprintf(err, errlen, "out of memory"), -1;
    char *slash = strrchr(p, '/');
    int rc = 0;
    if (slash && slash != p) {
        *slash = 0;
        for (char *s = p + 1;; s++) {
            if (*s != '/' && *s != 0) continue;
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create directory: %s", p, strerror(errno));
                rc = -1;
                break;
            }
            *s = c;
            if (!c) break;
        }
    }
    free(p);
    return rc;
}

static int write_output(dsv4_jobs *db, int64_t job_id, int format, const char *path, char *err, size_t errlen)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return snprintf(err, errlen, "%s: path too long", path), -1;
    if (make_parent_dirs(path, err, errlen)) return -1;
    FILE *f = fopen(tmp, "w");
    if (!f) return snprintf(err, errlen, "%s: %s", tmp, strerror(errno)), -1;
    int rc = dsv4_results_write(db, job_id, format, f, err, errlen);
    if (fsync(fileno(f)) != 0 && !rc) rc = -1, snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && !rc) rc = -1, snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0) rc = -1, snprintf(err, errlen, "%s: %s", path, strerror(errno));
    if (rc) unlink(tmp);
    return rc;
}

int dsv4_results_write_outputs(dsv4_jobs *db, int64_t job_id, int64_t time_ms, char *err, size_t errlen)
{
    dsv4_job_info j;
    dsv4_job_spec *spec = NULL;
    int rc = dsv4_jobs_get(db, job_id, &j, err, errlen);
    if (rc) return rc;
    if ((rc = dsv4_spec_from_json(j.spec_json, &spec, err, errlen))) goto done;
    const char *tmpl[2] = {spec->output.jsonl, spec->output.markdown};
    for (int k = 0; k < 2 && !rc; k++) {
        if (!tmpl[k]) continue;
        char path[4096];
        if ((rc = dsv4_spec_output_path(tmpl[k], spec->name, job_id, time_ms, path, sizeof path, err, errlen))) break;
        if ((rc = write_output(db, job_id, k == 0 ? DSV4_RESULTS_JSONL : DSV4_RESULTS_MD, path, err, errlen))) break;
        char msg[4200];
        snprintf(msg, sizeof msg, "wrote %s", path);
        json_t *pl = json_pack("{s:s, s:s}", "format", k == 0 ? "jsonl" : "md", "path", path);
        char *plt = pl ? json_dumps(pl, JSON_COMPACT) : NULL;
        dsv4_jobs_event_add(db, job_id, "output", "info", msg, plt, NULL, 0);
        free(plt);
        json_decref(pl);
    }
done:
    dsv4_spec_free(spec);
    dsv4_job_info_clear(&j);
    return rc;
}

static const char results_usage[] =
    "usage: dsv4-batch results JOB [--home DIR] [--format jsonl|md] [--json] [--out FILE]\n"
    "\n"
    "Prints the job's results stored so far, in query order.\n"
    "  --format jsonl  one line per query in the OpenAI batch output style\n"
    "                  (custom_id = query id; the default when stdout is not a TTY)\n"
    "  --format md     a readable report: each query, its answer, the job's figures\n"
    "                  (the default on a TTY)\n"
    "  --json          same as --format jsonl\n"
    "  --out FILE      write to FILE instead of stdout\n"
    "exit status: 0 ok, 1 no such job or the job store failed, 2 usage error\n";

int dsv4_cmd_results(int argc, char **argv)
{
    common_opts c = {0};
    const char *job_s = NULL, *format_s = NULL, *out_s = NULL;
    int r;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(results_usage, stdout);
            return DSV4_EXIT_OK;
        }
        if ((r = common_opt(argc, argv, &i, &c)) || (r = opt_value(argc, argv, &i, "--format", &format_s)) ||
            (r = opt_value(argc, argv, &i, "--out", &out_s))) {
            if (r < 0) return DSV4_EXIT_USAGE;
        } else if (argv[i][0] == '-') return bad_usage("results", "unknown option '%s'", argv[i]);
        else if (job_s) return bad_usage("results", "one job at a time");
        else job_s = argv[i];
    }
    if (!job_s) return bad_usage("results", "missing JOB");
    int64_t id;
    if ((r = parse_job_id("results", job_s, &id))) return r;
    int format = c.json || !isatty(STDOUT_FILENO) || out_s ? DSV4_RESULTS_JSONL : DSV4_RESULTS_MD;
    if (format_s) {
        if (!strcmp(format_s, "jsonl")) format = DSV4_RESULTS_JSONL;
        else if (!strcmp(format_s, "md")) format = DSV4_RESULTS_MD;
        else return bad_usage("results", "--format is jsonl or md, not '%s'", format_s);
        if (c.json && format != DSV4_RESULTS_JSONL) return bad_usage("results", "--json means --format jsonl");
    }
    dsv4_home h;
    if ((r = open_home("results", &c, &h))) return r;
    char err[1024];
    FILE *out = stdout;
    if (out_s && !(out = fopen(out_s, "w"))) {
        fprintf(stderr, "dsv4-batch results: %s: %s\n", out_s, strerror(errno));
        dsv4_home_close(&h);
        return DSV4_EXIT_FAIL;
    }
    int rc = dsv4_results_write(h.db, id, format, out, err, sizeof err);
    if (out != stdout && fclose(out) != 0 && !rc) rc = -1, snprintf(err, sizeof err, "%s: %s", out_s, strerror(errno));
    dsv4_home_close(&h);
    return rc ? store_fail("results", err) : DSV4_EXIT_OK;
}

/* ---- cancel ----------------------------------------------------------------- */

static const char cancel_usage[] =
    "usage: dsv4-batch cancel JOB [--home DIR] [--json]\n"
    "\n"
    "Cancels a job: a queued one at once; a running one becomes 'cancelling' and\n"
    "its worker ends it as 'cancelled' at its next heartbeat (results stored so far\n"
    "are kept). With --json, prints the job afterwards.\n"
    "exit status: 0 cancelled or cancelling, 1 no such job, the job already\n"
    "finished, or the job store failed, 2 usage error\n";

int dsv4_cmd_cancel(int argc, char **argv)
{
    common_opts c = {0};
    const char *job_s = NULL;
    int r;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(cancel_usage, stdout);
            return DSV4_EXIT_OK;
        }
        if ((r = common_opt(argc, argv, &i, &c))) {
            if (r < 0) return DSV4_EXIT_USAGE;
        } else if (argv[i][0] == '-') return bad_usage("cancel", "unknown option '%s'", argv[i]);
        else if (job_s) return bad_usage("cancel", "one job at a time");
        else job_s = argv[i];
    }
    if (!job_s) return bad_usage("cancel", "missing JOB");
    int64_t id;
    if ((r = parse_job_id("cancel", job_s, &id))) return r;
    dsv4_home h;
    if ((r = open_home("cancel", &c, &h))) return r;
    char err[1024];
    int state = -1;
    int rc = dsv4_jobs_cancel(h.db, id, &state, err, sizeof err);
    if (rc) {
        dsv4_home_close(&h);
        return store_fail("cancel", err);
    }
    if (c.json) {
        dsv4_job_info j;
        if (dsv4_jobs_get(h.db, id, &j, err, sizeof err)) {
            dsv4_home_close(&h);
            return store_fail("cancel", err);
        }
        print_json(job_json(&j));
        dsv4_job_info_clear(&j);
    } else if (state == DSV4_JOB_CANCELLING) {
        printf("job %lld: cancelling (its worker stops at its next heartbeat)\n", (long long)id);
    } else {
        printf("job %lld: %s\n", (long long)id, dsv4_job_state_name(state));
    }
    dsv4_home_close(&h);
    return DSV4_EXIT_OK;
}

/* ---- list ------------------------------------------------------------------- */

static const char list_usage[] =
    "usage: dsv4-batch list [--home DIR] [--state STATE] [--limit N] [--json]\n"
    "\n"
    "Lists jobs, newest first (default: the last 50).\n"
    "  --state STATE  only jobs in STATE (queued, running, cancelling, succeeded,\n"
    "                 failed, cancelled)\n"
    "  --limit N      at most N jobs; 0 = all\n"
    "exit status: 0 ok, 1 the job store failed, 2 usage error\n";

int dsv4_cmd_list(int argc, char **argv)
{
    common_opts c = {0};
    const char *state_s = NULL, *limit_s = NULL;
    int r;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(list_usage, stdout);
            return DSV4_EXIT_OK;
        }
        if ((r = common_opt(argc, argv, &i, &c)) || (r = opt_value(argc, argv, &i, "--state", &state_s)) ||
            (r = opt_value(argc, argv, &i, "--limit", &limit_s))) {
            if (r < 0) return DSV4_EXIT_USAGE;
        } else if (argv[i][0] == '-') return bad_usage("list", "unknown option '%s'", argv[i]);
        else return bad_usage("list", "unexpected argument '%s'", argv[i]);
    }
    int state = -1, limit = 50;
    if (state_s && (state = dsv4_job_state_parse(state_s)) < 0)
        return bad_usage("list", "unknown state '%s'", state_s);
    if (limit_s) {
        char *end;
        long v = strtol(limit_s, &end, 10);
        if (*end || end == limit_s || v < 0 || v > 1000000000) return bad_usage("list", "--limit needs a count");
        limit = (int)v;
    }
    dsv4_home h;
    if ((r = open_home("list", &c, &h))) return r;
    char err[1024];
    dsv4_job_info *jobs = NULL;
    size_t n = 0;
    if (dsv4_jobs_list(h.db, state, limit, &jobs, &n, err, sizeof err)) {
        dsv4_home_close(&h);
        return store_fail("list", err);
    }
    if (c.json) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(a, job_json(&jobs[i]));
        print_json(json_pack("{s:o}", "jobs", a));
    } else {
        if (n) printf("%6s  %-10s  %8s  %7s  %-24s  %s\n", "ID", "STATE", "PRIORITY", "RESULTS", "CREATED", "NAME");
        for (size_t i = 0; i < n; i++) {
            char t[40], res[32];
            iso_ms(jobs[i].created_ms, t, sizeof t);
            snprintf(res, sizeof res, "%lld/%lld", (long long)jobs[i].n_results, (long long)jobs[i].n_queries);
            printf("%6lld  %-10s  %8d  %7s  %-24s  %s\n", (long long)jobs[i].id, dsv4_job_state_name(jobs[i].state),
                   jobs[i].priority, res, t, jobs[i].name);
        }
        if (!n) printf("no jobs\n");
    }
    dsv4_jobs_list_free(jobs, n);
    dsv4_home_close(&h);
    return DSV4_EXIT_OK;
}
