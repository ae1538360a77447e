/* The job store (jobs/) on real SQLite files in /tmp: schema creation and
 * migration (from nothing, from an empty file, from a version-1 file made
 * here by hand), refusal of newer or foreign files, every state transition
 * legal and illegal, the worker calls (claim, heartbeat, release, finish,
 * cancel), idempotent results, events and progress, and real processes:
 * 6 forked workers racing for 20 jobs (each claimed exactly once) and a
 * worker killed with SIGKILL while holding a lease (another process takes
 * the job over after the expiry, keeping and never duplicating results). */
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobs/dsv4_jobs.h"
#include "tests/check.h"

static char tmp_root[] = "/tmp/dsv4-test-jobs-XXXXXX";
static int n_db;

/* A fresh database path under the temporary directory. */
static void new_db_path(char *out, size_t len)
{
    snprintf(out, len, "%s/db%d.sqlite", tmp_root, n_db++);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* Submits a job with n_queries queries "q1".."qN". */
static int64_t submit(dsv4_jobs *db, const char *name, int n_queries, int priority, int max_attempts)
{
    dsv4_job_query_new qs[32];
    char ids[32][16], prompts[32][32];
    for (int i = 0; i < n_queries && i < 32; i++) {
        snprintf(ids[i], sizeof ids[i], "q%d", i + 1);
        snprintf(prompts[i], sizeof prompts[i], "question %d?", i + 1);
        qs[i] = (dsv4_job_query_new){ids[i], prompts[i], NULL};
    }
    dsv4_job_input_new in = {"path", "/data/contracts", "{\"include\":[]}"};
    dsv4_job_new job = {.name = name,
                        .spec_path = "/data/job.yaml",
                        .spec_yaml = "name: x\n",
                        .spec_json = "{\"name\":\"x\"}",
                        .priority = priority,
                        .max_attempts = max_attempts,
                        .inputs = &in,
                        .n_inputs = 1,
                        .queries = qs,
                        .n_queries = (size_t)n_queries};
    int64_t id = 0;
    char err[512];
    int rc = dsv4_jobs_submit(db, &job, &id, err, sizeof err);
    CHECKF(rc == 0 && id > 0, "submit: %s", err);
    return id;
}

static int job_state(dsv4_jobs *db, int64_t id)
{
    dsv4_job_info j;
    if (dsv4_jobs_get(db, id, &j, NULL, 0)) return -1;
    int s = j.state;
    dsv4_job_info_clear(&j);
    return s;
}

static int put_result(dsv4_jobs *db, int64_t job, const char *qid, const char *text, int *inserted)
{
    dsv4_job_result r = {.query_id = (char *)qid,
                         .text = (char *)text,
                         .finish_reason = "stop",
                         .prompt_tokens = 100,
                         .cached_tokens = 60,
                         .generated_tokens = 7,
                         .prefill_ms = 12.5,
                         .decode_ms = 30.25,
                         .total_ms = 42.75};
    return dsv4_jobs_result_put(db, job, &r, inserted, NULL, 0);
}

/* Runs one SQL statement returning one text or integer in a plain
 * connection: how the tests look at the file behind the store's back. */
static long long sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -999;
    if (sqlite3_open(path, &db) == SQLITE_OK && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

/* ---- schema ------------------------------------------------------------------ */

static void schema_from_nothing_and_empty_file(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECKF(dsv4_jobs_open(path, &db, err, sizeof err) == 0, "%s", err);
    int v = -1;
    CHECK(db && dsv4_jobs_schema_version(db, &v, err, sizeof err) == 0 && v == DSV4_JOBS_SCHEMA_VERSION);
    dsv4_jobs_close(db);
    CHECK(sql_int(path, "PRAGMA user_version") == DSV4_JOBS_SCHEMA_VERSION);
    sqlite3 *raw = NULL;
    sqlite3_stmt *st = NULL;
    char mode[16] = "";
    if (sqlite3_open(path, &raw) == SQLITE_OK && sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, NULL) == 0 &&
        sqlite3_step(st) == SQLITE_ROW)
        snprintf(mode, sizeof mode, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(raw);
    CHECKF(!strcmp(mode, "wal"), "journal mode %s", mode);
    CHECK(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN"
                        " ('jobs','inputs','queries','results','events','progress')") == 6);

    /* an existing zero-byte file */
    new_db_path(path, sizeof path);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    db = NULL;
    CHECKF(dsv4_jobs_open(path, &db, err, sizeof err) == 0, "%s", err);
    dsv4_jobs_close(db);
    CHECK(sql_int(path, "PRAGMA user_version") == DSV4_JOBS_SCHEMA_VERSION);

    /* opening again is a no-op */
    db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    dsv4_jobs_close(db);
    dsv4_jobs_close(NULL);
}

/* Version 1 as shipped: the file a user of the first release has. */
static const char v1_schema[] =
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN"
    " ('queued','running','cancelling','succeeded','failed','cancelled')), priority INTEGER NOT NULL DEFAULT 0,"
    " spec_path TEXT, spec_yaml TEXT NOT NULL, spec_json TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1), worker TEXT, lease_expires_ms INTEGER,"
    " error TEXT, created_ms INTEGER NOT NULL, started_ms INTEGER, finished_ms INTEGER, updated_ms INTEGER NOT NULL);"
    "CREATE INDEX jobs_by_state ON jobs (state, priority DESC, id);"
    "CREATE TABLE inputs (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    " position INTEGER NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL, options_json TEXT NOT NULL DEFAULT '{}',"
    " UNIQUE (job_id, position));"
    "CREATE TABLE queries (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    " position INTEGER NOT NULL, query_id TEXT NOT NULL, prompt TEXT NOT NULL, options_json TEXT NOT NULL DEFAULT '{}',"
    " UNIQUE (job_id, query_id), UNIQUE (job_id, position));"
    "CREATE TABLE results (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    " query_id TEXT NOT NULL, text TEXT, reasoning TEXT, finish_reason TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    " cached_tokens INTEGER NOT NULL DEFAULT 0, generated_tokens INTEGER NOT NULL DEFAULT 0,"
    " prefill_ms REAL NOT NULL DEFAULT 0, decode_ms REAL NOT NULL DEFAULT 0, total_ms REAL NOT NULL DEFAULT 0,"
    " error TEXT, attempt INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL, UNIQUE (job_id, query_id),"
    " FOREIGN KEY (job_id, query_id) REFERENCES queries (job_id, query_id));"
    "CREATE TABLE events (id INTEGER PRIMARY KEY, job_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE,"
    " time_ms INTEGER NOT NULL, stage TEXT NOT NULL, level TEXT NOT NULL CHECK (level IN"
    " ('debug','info','warn','error')), message TEXT NOT NULL, payload_json TEXT);"
    "CREATE TRIGGER events_append_only BEFORE UPDATE ON events"
    " BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;"
    "INSERT INTO jobs (id, name, state, spec_yaml, spec_json, created_ms, updated_ms)"
    " VALUES (1, 'old-job', 'queued', 'name: old-job', '{}', 1700000000000, 1700000000000);"
    "INSERT INTO queries (job_id, position, query_id, prompt) VALUES (1, 0, 'a', 'still there?');"
    "INSERT INTO results (job_id, query_id, text, created_ms) VALUES (1, 'a', 'yes', 1700000000001);"
    "PRAGMA user_version = 1;";

static void migrate_from_version_1(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    CHECK(sql_exec(path, v1_schema) == SQLITE_OK);
    CHECK(sql_int(path, "PRAGMA user_version") == 1);
    dsv4_jobs *db = NULL;
    CHECKF(dsv4_jobs_open(path, &db, err, sizeof err) == 0, "%s", err);
    if (!db) return;
    CHECK(sql_int(path, "PRAGMA user_version") == 2);
    dsv4_job_info j;
    CHECK(dsv4_jobs_get(db, 1, &j, err, sizeof err) == 0);
    CHECK(j.name && !strcmp(j.name, "old-job") && j.state == DSV4_JOB_QUEUED && j.n_queries == 1 && j.n_results == 1);
    CHECK(j.created_ms == 1700000000000LL);
    dsv4_job_info_clear(&j);
    /* what version 2 added works on the old job */
    dsv4_job_progress p = {.stage = "ingest", .done = 3, .total = 10, .unit = "files", .rate = 1.5};
    CHECKF(dsv4_jobs_progress_set(db, 1, &p, err, sizeof err) == 0, "%s", err);
    dsv4_job_progress *got = NULL;
    size_t n = 0;
    CHECK(dsv4_jobs_progress(db, 1, &got, &n, err, sizeof err) == 0 && n == 1 && got[0].done == 3);
    dsv4_jobs_progress_free(got, n);
    CHECK(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE name = 'events_by_job'") == 1);
    /* and the old job can be claimed and run */
    int64_t id = 0;
    CHECK(dsv4_jobs_claim(db, "w", 60000, &id, err, sizeof err) == 0 && id == 1);
    dsv4_jobs_close(db);
}

static void refuses_newer_and_foreign_files(void)
{
    char path[512], err[512] = "";
    new_db_path(path, sizeof path);
    CHECK(sql_exec(path, "CREATE TABLE t (x); PRAGMA user_version = 99;") == SQLITE_OK);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == DSV4_JOBS_EVERSION && db == NULL);
    CHECKF(strstr(err, "schema version 99 is newer") && strstr(err, path), "%s", err);
    CHECK(sql_int(path, "PRAGMA user_version") == 99); /* untouched */

    new_db_path(path, sizeof path);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("name: this is a YAML file, not a database\n", f);
        for (int i = 0; i < 200; i++) fputs("padding padding padding padding\n", f);
        fclose(f);
    }
    err[0] = 0;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == DSV4_JOBS_ESQL && db == NULL);
    CHECKF(strstr(err, path) && strstr(err, "not a database"), "%s", err);
}

/* ---- states ------------------------------------------------------------------ */

static const int legal_table[DSV4_JOB_N_STATES][DSV4_JOB_N_STATES] = {
    /*                 queued running cancelling succeeded failed cancelled */
    [DSV4_JOB_QUEUED] = {0, 1, 0, 0, 0, 1},
    [DSV4_JOB_RUNNING] = {1, 0, 1, 1, 1, 0},
    [DSV4_JOB_CANCELLING] = {0, 0, 0, 1, 0, 1},
    [DSV4_JOB_SUCCEEDED] = {0},
    [DSV4_JOB_FAILED] = {0},
    [DSV4_JOB_CANCELLED] = {0},
};

static void transition_rule(void)
{
    for (int from = 0; from < DSV4_JOB_N_STATES; from++)
        for (int to = 0; to < DSV4_JOB_N_STATES; to++) {
            char err[256] = "";
            int rc = dsv4_jobs_transition_check(from, to, err, sizeof err);
            CHECKF((rc == 0) == legal_table[from][to], "%s -> %s: rc %d", dsv4_job_state_name(from),
                   dsv4_job_state_name(to), rc);
            if (!legal_table[from][to]) {
                char want[128];
                snprintf(want, sizeof want, "cannot go from %s to %s", dsv4_job_state_name(from),
                         dsv4_job_state_name(to));
                CHECKF(rc == DSV4_JOBS_ESTATE && strstr(err, want), "%s", err);
            }
        }
    CHECK(dsv4_jobs_transition_check(-1, 0, NULL, 0) == DSV4_JOBS_EINVAL);
    CHECK(dsv4_jobs_transition_check(0, DSV4_JOB_N_STATES, NULL, 0) == DSV4_JOBS_EINVAL);
    for (int s = 0; s < DSV4_JOB_N_STATES; s++) CHECK(dsv4_job_state_parse(dsv4_job_state_name(s)) == s);
    CHECK(dsv4_job_state_parse("paused") == -1);
}

/* Brings a new job to `state` through legal steps only. */
static int64_t job_in_state(dsv4_jobs *db, int state)
{
    int64_t id = submit(db, "t", 1, 0, 3);
    static const int path[DSV4_JOB_N_STATES][3] = {
        [DSV4_JOB_QUEUED] = {-1},
        [DSV4_JOB_RUNNING] = {DSV4_JOB_RUNNING, -1},
        [DSV4_JOB_CANCELLING] = {DSV4_JOB_RUNNING, DSV4_JOB_CANCELLING, -1},
        [DSV4_JOB_SUCCEEDED] = {DSV4_JOB_RUNNING, DSV4_JOB_SUCCEEDED, -1},
        [DSV4_JOB_FAILED] = {DSV4_JOB_RUNNING, DSV4_JOB_FAILED, -1},
        [DSV4_JOB_CANCELLED] = {DSV4_JOB_CANCELLED, -1},
    };
    for (int i = 0; i < 3 && path[state][i] >= 0; i++) {
        char err[256];
        int rc = dsv4_jobs_set_state(db, id, path[state][i], "boom", err, sizeof err);
        CHECKF(rc == 0, "%s", err);
    }
    CHECK(job_state(db, id) == state);
    return id;
}

static void every_transition_in_the_database(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    if (!db) return;
    int n_legal = 0, n_illegal = 0;
    for (int from = 0; from < DSV4_JOB_N_STATES; from++)
        for (int to = 0; to < DSV4_JOB_N_STATES; to++) {
            int64_t id = job_in_state(db, from);
            err[0] = 0;
            int rc = dsv4_jobs_set_state(db, id, to, to == DSV4_JOB_FAILED ? "it broke" : NULL, err, sizeof err);
            if (legal_table[from][to]) {
                n_legal++;
                CHECKF(rc == 0, "%s -> %s: %s", dsv4_job_state_name(from), dsv4_job_state_name(to), err);
                CHECK(job_state(db, id) == to);
                dsv4_job_info j;
                CHECK(dsv4_jobs_get(db, id, &j, err, sizeof err) == 0);
                CHECK((j.finished_ms > 0) == dsv4_job_state_is_final(to));
                CHECK(to != DSV4_JOB_FAILED || (j.error && !strcmp(j.error, "it broke")));
                CHECK(j.started_ms > 0 || from == DSV4_JOB_QUEUED);
                dsv4_job_info_clear(&j);
                /* the change is in the event log */
                dsv4_job_event *ev = NULL;
                size_t n = 0;
                char want[64];
                snprintf(want, sizeof want, "%s -> %s", dsv4_job_state_name(from), dsv4_job_state_name(to));
                CHECK(dsv4_jobs_events(db, id, 0, 1, &ev, &n, err, sizeof err) == 0 && n == 1 &&
                      !strncmp(ev[0].message, want, strlen(want)) && !strcmp(ev[0].stage, "state"));
                dsv4_jobs_events_free(ev, n);
            } else {
                n_illegal++;
                char want[128];
                snprintf(want, sizeof want, "cannot go from %s to %s", dsv4_job_state_name(from),
                         dsv4_job_state_name(to));
                CHECKF(rc == DSV4_JOBS_ESTATE && strstr(err, want), "%s -> %s: rc %d %s", dsv4_job_state_name(from),
                       dsv4_job_state_name(to), rc, err);
                CHECK(job_state(db, id) == from);
            }
        }
    CHECK(n_legal == 8 && n_illegal == 28);
    CHECK(dsv4_jobs_set_state(db, 9999, DSV4_JOB_RUNNING, NULL, err, sizeof err) == DSV4_JOBS_ENOTFOUND);
    dsv4_jobs_close(db);
}

static void worker_calls_lifecycle(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t low = submit(db, "low", 1, -5, 3), a = submit(db, "a", 1, 10, 3), b = submit(db, "b", 1, 10, 3);
    int64_t id = 0;
    int st = -1;
    /* priority first, then submission order */
    CHECK(dsv4_jobs_claim(db, "w1", 60000, &id, err, sizeof err) == 0 && id == a);
    CHECK(dsv4_jobs_claim(db, "w2", 60000, &id, err, sizeof err) == 0 && id == b);
    CHECK(dsv4_jobs_claim(db, "w3", 60000, &id, err, sizeof err) == 0 && id == low);
    CHECK(dsv4_jobs_claim(db, "w4", 60000, &id, err, sizeof err) == 0 && id == 0);
    CHECK(dsv4_jobs_claim(db, "", 60000, &id, err, sizeof err) == DSV4_JOBS_EINVAL);

    dsv4_job_info j;
    CHECK(dsv4_jobs_get(db, a, &j, err, sizeof err) == 0);
    CHECK(j.state == DSV4_JOB_RUNNING && j.attempts == 1 && j.worker && !strcmp(j.worker, "w1"));
    CHECK(j.lease_expires_ms > dsv4_jobs_now_ms() + 50000 && j.started_ms > 0);
    CHECK(j.spec_yaml && !strcmp(j.spec_yaml, "name: x\n") && j.spec_json && j.spec_path);
    dsv4_job_info_clear(&j);

    /* heartbeat: renews, reports cancelling, refuses others */
    CHECK(dsv4_jobs_heartbeat(db, a, "w1", 60000, &st, err, sizeof err) == 0 && st == DSV4_JOB_RUNNING);
    CHECK(dsv4_jobs_heartbeat(db, a, "w2", 60000, &st, err, sizeof err) == DSV4_JOBS_ELEASE);
    CHECK(dsv4_jobs_cancel(db, a, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLING);
    CHECK(dsv4_jobs_cancel(db, a, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLING); /* twice: fine */
    CHECK(dsv4_jobs_heartbeat(db, a, "w1", 60000, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLING);
    CHECK(dsv4_jobs_finish(db, a, "w1", DSV4_JOB_RUNNING, NULL, err, sizeof err) == DSV4_JOBS_EINVAL);
    CHECK(dsv4_jobs_finish(db, a, "w1", DSV4_JOB_FAILED, "x", err, sizeof err) == DSV4_JOBS_ESTATE);
    CHECKF(strstr(err, "cannot go from cancelling to failed"), "%s", err);
    CHECK(dsv4_jobs_finish(db, a, "w1", DSV4_JOB_CANCELLED, NULL, err, sizeof err) == 0);
    CHECK(job_state(db, a) == DSV4_JOB_CANCELLED);
    CHECK(dsv4_jobs_finish(db, a, "w1", DSV4_JOB_SUCCEEDED, NULL, err, sizeof err) == DSV4_JOBS_ELEASE);
    CHECK(dsv4_jobs_heartbeat(db, a, "w1", 60000, &st, err, sizeof err) == DSV4_JOBS_ELEASE);
    CHECK(dsv4_jobs_cancel(db, a, &st, err, sizeof err) == DSV4_JOBS_ESTATE);
    CHECKF(strstr(err, "cannot go from cancelled to cancelled"), "%s", err);

    /* release: back to the queue, the attempt not counted */
    CHECK(dsv4_jobs_release(db, b, "w1", err, sizeof err) == DSV4_JOBS_ELEASE);
    CHECK(dsv4_jobs_release(db, b, "w2", err, sizeof err) == 0);
    CHECK(dsv4_jobs_get(db, b, &j, err, sizeof err) == 0);
    CHECK(j.state == DSV4_JOB_QUEUED && j.attempts == 0 && j.worker == NULL && j.lease_expires_ms == 0);
    dsv4_job_info_clear(&j);
    CHECK(dsv4_jobs_claim(db, "w5", 60000, &id, err, sizeof err) == 0 && id == b);
    CHECK(dsv4_jobs_finish(db, b, "w5", DSV4_JOB_SUCCEEDED, NULL, err, sizeof err) == 0);
    CHECK(dsv4_jobs_cancel(db, b, &st, err, sizeof err) == DSV4_JOBS_ESTATE);
    CHECKF(strstr(err, "cannot go from succeeded to cancelled"), "%s", err);

    /* a cancelling job released by a stopping worker ends cancelled */
    CHECK(dsv4_jobs_cancel(db, low, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLING);
    CHECK(dsv4_jobs_release(db, low, "w3", err, sizeof err) == 0 && job_state(db, low) == DSV4_JOB_CANCELLED);

    /* a queued job is cancelled at once */
    int64_t q = submit(db, "q", 1, 0, 3);
    CHECK(dsv4_jobs_cancel(db, q, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLED);
    CHECK(dsv4_jobs_cancel(db, 4242, &st, err, sizeof err) == DSV4_JOBS_ENOTFOUND);

    /* list and counts */
    dsv4_job_info *jobs = NULL;
    size_t n = 0;
    CHECK(dsv4_jobs_list(db, -1, 0, &jobs, &n, err, sizeof err) == 0 && n == 4 && jobs[0].id == q);
    CHECK(n == 4 && jobs[0].spec_yaml == NULL && jobs[3].id == low);
    dsv4_jobs_list_free(jobs, n);
    CHECK(dsv4_jobs_list(db, DSV4_JOB_CANCELLED, 0, &jobs, &n, err, sizeof err) == 0 && n == 3);
    dsv4_jobs_list_free(jobs, n);
    CHECK(dsv4_jobs_list(db, -1, 2, &jobs, &n, err, sizeof err) == 0 && n == 2);
    dsv4_jobs_list_free(jobs, n);
    int64_t counts[DSV4_JOB_N_STATES];
    CHECK(dsv4_jobs_count(db, counts, err, sizeof err) == 0);
    CHECK(counts[DSV4_JOB_CANCELLED] == 3 && counts[DSV4_JOB_SUCCEEDED] == 1 && counts[DSV4_JOB_QUEUED] == 0);

    /* bad submissions change nothing */
    dsv4_job_query_new dup[2] = {{"x", "p", NULL}, {"x", "p2", NULL}};
    dsv4_job_new bad = {.name = "dup", .spec_yaml = "", .spec_json = "{}", .max_attempts = 1, .queries = dup, .n_queries = 2};
    CHECK(dsv4_jobs_submit(db, &bad, &id, err, sizeof err) == DSV4_JOBS_EINVAL && strstr(err, "duplicate query id 'x'"));
    bad.n_queries = 1;
    bad.max_attempts = 0;
    CHECK(dsv4_jobs_submit(db, &bad, &id, err, sizeof err) == DSV4_JOBS_EINVAL);
    CHECK(dsv4_jobs_count(db, counts, err, sizeof err) == 0 &&
          counts[DSV4_JOB_CANCELLED] + counts[DSV4_JOB_SUCCEEDED] + counts[DSV4_JOB_QUEUED] == 4);
    dsv4_jobs_close(db);
}

/* ---- results, events, progress ------------------------------------------------- */

static void results_events_progress(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit(db, "r", 3, 0, 3), other = submit(db, "o", 3, 0, 3), got_id = 0;
    CHECK(dsv4_jobs_claim(db, "w", 60000, &got_id, err, sizeof err) == 0 && got_id == id);
    int ins = -1;
    CHECK(put_result(db, id, "q2", "second answer", &ins) == 0 && ins == 1);
    dsv4_job_query *qs = NULL;
    size_t n = 0;
    CHECK(dsv4_jobs_queries(db, id, 1, &qs, &n, err, sizeof err) == 0 && n == 2);
    CHECK(n == 2 && !strcmp(qs[0].query_id, "q1") && !strcmp(qs[1].query_id, "q3") && qs[1].position == 2);
    CHECK(n == 2 && !strcmp(qs[0].prompt, "question 1?") && !strcmp(qs[0].options_json, "{}"));
    dsv4_jobs_queries_free(qs, n);
    CHECK(dsv4_jobs_queries(db, id, 0, &qs, &n, err, sizeof err) == 0 && n == 3);
    dsv4_jobs_queries_free(qs, n);
    /* the first writer wins; a second write changes nothing */
    CHECK(put_result(db, id, "q2", "a different answer", &ins) == 0 && ins == 0);
    CHECK(put_result(db, id, "q1", "first answer", &ins) == 0 && ins == 1);
    CHECK(put_result(db, id, "nope", "x", &ins) == DSV4_JOBS_EINVAL);
    CHECK(put_result(db, other, "q1", "other job's", &ins) == 0 && ins == 1);
    dsv4_job_result *rs = NULL;
    CHECK(dsv4_jobs_results(db, id, &rs, &n, err, sizeof err) == 0 && n == 2);
    if (n == 2) {
        CHECK(!strcmp(rs[0].query_id, "q1") && !strcmp(rs[1].query_id, "q2")); /* query order */
        CHECK(!strcmp(rs[1].text, "second answer"));
        CHECK(rs[0].prompt_tokens == 100 && rs[0].cached_tokens == 60 && rs[0].generated_tokens == 7);
        CHECK(rs[0].prefill_ms == 12.5 && rs[0].decode_ms == 30.25 && rs[0].total_ms == 42.75);
        CHECK(!strcmp(rs[0].finish_reason, "stop") && rs[0].reasoning == NULL && rs[0].error == NULL);
        CHECK(rs[0].attempt == 1 && rs[0].created_ms > 0);
    }
    dsv4_jobs_results_free(rs, n);
    CHECK(sql_int(path, "SELECT count(*) FROM results") == 3);

    dsv4_job_input *ins_rows = NULL;
    CHECK(dsv4_jobs_inputs(db, id, &ins_rows, &n, err, sizeof err) == 0 && n == 1);
    CHECK(n == 1 && !strcmp(ins_rows[0].kind, "path") && !strcmp(ins_rows[0].path, "/data/contracts"));
    dsv4_jobs_inputs_free(ins_rows, n);

    /* events: appended, read back in order, limit keeps the last ones */
    for (int i = 0; i < 5; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "step %d", i);
        CHECK(dsv4_jobs_event_add(db, id, "prefill", "info", msg, i == 4 ? "{\"tokens\":4096}" : NULL, err,
                                  sizeof err) == 0);
    }
    CHECK(dsv4_jobs_event_add(db, id, "prefill", "loud", "x", NULL, err, sizeof err) == DSV4_JOBS_EINVAL);
    CHECK(dsv4_jobs_event_add(db, 777, "prefill", "info", "x", NULL, err, sizeof err) == DSV4_JOBS_ENOTFOUND);
    dsv4_job_event *ev = NULL;
    CHECK(dsv4_jobs_events(db, id, 0, 2, &ev, &n, err, sizeof err) == 0 && n == 2);
    CHECK(n == 2 && !strcmp(ev[0].message, "step 3") && !strcmp(ev[1].message, "step 4"));
    CHECK(n == 2 && ev[1].payload_json && !strcmp(ev[1].payload_json, "{\"tokens\":4096}") && ev[0].id < ev[1].id);
    int64_t last = n == 2 ? ev[1].id : 0;
    dsv4_jobs_events_free(ev, n);
    CHECK(dsv4_jobs_events(db, id, last, 0, &ev, &n, err, sizeof err) == 0 && n == 0);
    dsv4_jobs_events_free(ev, n);
    /* the log is append-only, even for SQL behind the store's back */
    CHECK(sql_exec(path, "UPDATE events SET message = 'rewritten'") != SQLITE_OK);

    /* progress: one record per stage, replaced in place */
    dsv4_job_progress p = {.stage = "ingest", .done = 1, .total = 4, .unit = "files", .rate = 2};
    CHECK(dsv4_jobs_progress_set(db, id, &p, err, sizeof err) == 0);
    p.done = 4;
    CHECK(dsv4_jobs_progress_set(db, id, &p, err, sizeof err) == 0);
    dsv4_job_progress p2 = {.stage = "prefill", .done = 1000, .total = 50000, .unit = "tokens", .rate = 812.5};
    CHECK(dsv4_jobs_progress_set(db, id, &p2, err, sizeof err) == 0);
    CHECK(dsv4_jobs_progress_set(db, 555, &p2, err, sizeof err) == DSV4_JOBS_ENOTFOUND);
    dsv4_job_progress *pg = NULL;
    CHECK(dsv4_jobs_progress(db, id, &pg, &n, err, sizeof err) == 0 && n == 2);
    if (n == 2) {
        CHECK(!strcmp(pg[0].stage, "ingest") && pg[0].done == 4 && pg[0].total == 4 && !strcmp(pg[0].unit, "files"));
        CHECK(!strcmp(pg[1].stage, "prefill") && pg[1].rate == 812.5 && pg[1].updated_ms > 0);
    }
    dsv4_jobs_progress_free(pg, n);
    dsv4_jobs_close(db);
}

/* ---- processes ----------------------------------------------------------------- */

static void lease_expiry_and_max_attempts(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit(db, "flaky", 1, 0, 2), got = 0;
    int st;
    CHECK(dsv4_jobs_claim(db, "w1", 200, &got, err, sizeof err) == 0 && got == id);
    CHECK(dsv4_jobs_claim(db, "w2", 200, &got, err, sizeof err) == 0 && got == 0); /* lease still held */
    sleep_ms(250);
    CHECK(dsv4_jobs_claim(db, "w2", 200, &got, err, sizeof err) == 0 && got == id);
    CHECK(dsv4_jobs_heartbeat(db, id, "w1", 200, &st, err, sizeof err) == DSV4_JOBS_ELEASE); /* w1 lost it */
    CHECK(dsv4_jobs_finish(db, id, "w1", DSV4_JOB_SUCCEEDED, NULL, err, sizeof err) == DSV4_JOBS_ELEASE);
    sleep_ms(250);
    CHECK(dsv4_jobs_claim(db, "w3", 200, &got, err, sizeof err) == 0 && got == 0);
    dsv4_job_info j;
    CHECK(dsv4_jobs_get(db, id, &j, err, sizeof err) == 0);
    CHECK(j.state == DSV4_JOB_FAILED && j.attempts == 2);
    CHECKF(j.error && strstr(j.error, "gave up after 2 attempts") && strstr(j.error, "w2"), "%s", j.error);
    dsv4_job_info_clear(&j);

    /* a cancelling job whose worker died ends cancelled */
    int64_t c = submit(db, "c", 1, 0, 3);
    CHECK(dsv4_jobs_claim(db, "w4", 200, &got, err, sizeof err) == 0 && got == c);
    CHECK(dsv4_jobs_cancel(db, c, &st, err, sizeof err) == 0 && st == DSV4_JOB_CANCELLING);
    sleep_ms(250);
    CHECK(dsv4_jobs_claim(db, "w5", 200, &got, err, sizeof err) == 0 && got == 0);
    CHECK(job_state(db, c) == DSV4_JOB_CANCELLED);
    dsv4_jobs_close(db);
}

enum { N_JOBS = 20, N_WORKERS = 6 };

/* One racing worker process: waits at the barrier, then claims until the
 * queue is empty, answering each job's query with its pid. Writes the ids
 * it got to fd. */
static void race_worker(const char *path, int barrier_fd, int out_fd, int n)
{
    char err[512], c;
    char name[32];
    snprintf(name, sizeof name, "racer-%d", n);
    dsv4_jobs *db = NULL;
    if (dsv4_jobs_open(path, &db, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        _exit(2);
    }
    if (read(barrier_fd, &c, 1) < 0) _exit(3); /* returns 0 when the parent closes its end */
    for (;;) {
        int64_t id = 0;
        if (dsv4_jobs_claim(db, name, 30000, &id, err, sizeof err)) {
            fprintf(stderr, "claim: %s\n", err);
            _exit(4);
        }
        if (!id) break;
        sleep_ms(10); /* hold the job a while, as a real runner would, so the others race meanwhile */
        char text[32];
        snprintf(text, sizeof text, "answered by %d", (int)getpid());
        if (put_result(db, id, "q1", text, NULL) ||
            dsv4_jobs_finish(db, id, name, DSV4_JOB_SUCCEEDED, NULL, err, sizeof err))
            _exit(5);
        if (write(out_fd, &id, sizeof id) != sizeof id) _exit(6);
    }
    dsv4_jobs_close(db);
    _exit(0);
}

static void concurrent_workers_claim_each_job_once(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t first = 0;
    for (int i = 0; i < N_JOBS; i++) {
        int64_t id = submit(db, "race", 1, i % 3, 3);
        if (!first) first = id;
    }
    int barrier[2], out[2];
    CHECK(pipe(barrier) == 0 && pipe(out) == 0);
    pid_t pids[N_WORKERS];
    fflush(stdout);
    for (int w = 0; w < N_WORKERS; w++) {
        pids[w] = fork();
        if (pids[w] == 0) {
            close(barrier[1]);
            close(out[0]);
            race_worker(path, barrier[0], out[1], w);
        }
    }
    close(barrier[0]);
    close(out[1]);
    sleep_ms(100); /* let every child open the database and wait */
    close(barrier[1]); /* go */
    int seen[N_JOBS] = {0}, total = 0;
    int64_t id;
    while (read(out[0], &id, sizeof id) == sizeof id) {
        total++;
        if (id >= first && id < first + N_JOBS) seen[id - first]++;
    }
    close(out[0]);
    int all_ok = 1;
    for (int w = 0; w < N_WORKERS; w++) {
        int status = 0;
        waitpid(pids[w], &status, 0);
        CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d status %d", w, status);
    }
    CHECKF(total == N_JOBS, "%d claims for %d jobs", total, N_JOBS);
    for (int i = 0; i < N_JOBS; i++) {
        if (seen[i] != 1) all_ok = 0;
        dsv4_job_info j;
        CHECK(dsv4_jobs_get(db, first + i, &j, err, sizeof err) == 0);
        CHECKF(j.state == DSV4_JOB_SUCCEEDED && j.attempts == 1 && j.n_results == 1, "job %lld: %s, %d attempts",
               (long long)j.id, dsv4_job_state_name(j.state), j.attempts);
        dsv4_job_info_clear(&j);
    }
    CHECK(all_ok);
    CHECK(sql_int(path, "SELECT count(*) FROM results") == N_JOBS);
    CHECK(sql_int(path, "SELECT count(*) FROM events WHERE message LIKE 'queued -> running%'") == N_JOBS);
    printf("  (%lld of %d racing workers got jobs)\n", sql_int(path, "SELECT count(DISTINCT text) FROM results"),
           N_WORKERS);
    dsv4_jobs_close(db);
}

static void kill9_then_another_process_resumes(void)
{
    char path[512], err[512];
    new_db_path(path, sizeof path);
    dsv4_jobs *db = NULL;
    CHECK(dsv4_jobs_open(path, &db, err, sizeof err) == 0);
    if (!db) return;
    int64_t id = submit(db, "resume", 5, 0, 3);
    const int lease_ms = 400;
    int ready[2];
    CHECK(pipe(ready) == 0);
    fflush(stdout);
    pid_t a = fork();
    if (a == 0) { /* worker A: answers two queries, then keeps its lease alive until killed */
        close(ready[0]);
        dsv4_jobs *d = NULL;
        int64_t got = 0;
        if (dsv4_jobs_open(path, &d, err, sizeof err) || dsv4_jobs_claim(d, "A", lease_ms, &got, err, sizeof err) ||
            got != id || put_result(d, id, "q1", "A's answer 1", NULL) || put_result(d, id, "q2", "A's answer 2", NULL))
            _exit(2);
        if (write(ready[1], "x", 1) != 1) _exit(3);
        for (;;) {
            dsv4_jobs_heartbeat(d, id, "A", lease_ms, NULL, err, sizeof err);
            sleep_ms(50);
        }
    }
    close(ready[1]);
    char c;
    CHECK(read(ready[0], &c, 1) == 1);
    close(ready[0]);
    int64_t got = -1;
    sleep_ms(lease_ms + 100); /* A keeps renewing: still its job */
    CHECK(dsv4_jobs_claim(db, "B", lease_ms, &got, err, sizeof err) == 0 && got == 0);
    kill(a, SIGKILL);
    int status = 0;
    waitpid(a, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    CHECK(dsv4_jobs_claim(db, "B", lease_ms, &got, err, sizeof err) == 0 && got == 0); /* not expired yet */
    sleep_ms(lease_ms + 100);

    fflush(stdout);
    pid_t b = fork();
    if (b == 0) { /* worker B: takes over, does only what is left */
        dsv4_jobs *d = NULL;
        int64_t g = 0;
        dsv4_job_query *qs = NULL;
        size_t n = 0;
        if (dsv4_jobs_open(path, &d, err, sizeof err) || dsv4_jobs_claim(d, "B", lease_ms, &g, err, sizeof err) ||
            g != id || dsv4_jobs_queries(d, id, 1, &qs, &n, err, sizeof err) || n != 3)
            _exit(2);
        for (size_t i = 0; i < n; i++)
            if (put_result(d, id, qs[i].query_id, "B's answer", NULL)) _exit(3);
        dsv4_jobs_queries_free(qs, n);
        int ins = -1; /* a careless runner redoing q1 changes nothing */
        if (put_result(d, id, "q1", "B's answer", &ins) || ins != 0) _exit(4);
        if (dsv4_jobs_finish(d, id, "B", DSV4_JOB_SUCCEEDED, NULL, err, sizeof err)) _exit(5);
        dsv4_jobs_close(d);
        _exit(0);
    }
    waitpid(b, &status, 0);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker B status %d", status);
    dsv4_job_info j;
    CHECK(dsv4_jobs_get(db, id, &j, err, sizeof err) == 0);
    CHECK(j.state == DSV4_JOB_SUCCEEDED && j.attempts == 2 && j.n_results == 5);
    dsv4_job_info_clear(&j);
    dsv4_job_result *rs = NULL;
    size_t n = 0;
    CHECK(dsv4_jobs_results(db, id, &rs, &n, err, sizeof err) == 0 && n == 5);
    if (n == 5) {
        CHECK(!strcmp(rs[0].text, "A's answer 1") && rs[0].attempt == 1);
        CHECK(!strcmp(rs[1].text, "A's answer 2") && rs[1].attempt == 1);
        for (int i = 2; i < 5; i++) CHECK(!strcmp(rs[i].text, "B's answer") && rs[i].attempt == 2);
    }
    dsv4_jobs_results_free(rs, n);
    CHECK(sql_int(path, "SELECT count(*) FROM results") == 5);
    /* the expiry is in the log */
    dsv4_job_event *ev = NULL;
    CHECK(dsv4_jobs_events(db, id, 0, 0, &ev, &n, err, sizeof err) == 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (strstr(ev[i].message, "the lease of worker A expired during attempt 1; requeued")) found = 1;
    CHECK(found);
    dsv4_jobs_events_free(ev, n);
    dsv4_jobs_close(db);
}

int main(void)
{
    if (!mkdtemp(tmp_root)) {
        printf("FAIL setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    RUN(schema_from_nothing_and_empty_file);
    RUN(migrate_from_version_1);
    RUN(refuses_newer_and_foreign_files);
    RUN(transition_rule);
    RUN(every_transition_in_the_database);
    RUN(worker_calls_lifecycle);
    RUN(results_events_progress);
    RUN(lease_expiry_and_max_attempts);
    RUN(concurrent_workers_claim_each_job_once);
    RUN(kill9_then_another_process_resumes);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", tmp_root);
    CHECK_EXIT();
}
