/* The job store: one SQLite file (jobs.db) that holds every job, its inputs
 * and queries, one result row per query, an append-only event log and a
 * progress record per job and stage. This header is the whole contract of
 * jobs/; jobs/ is the only code in the project that speaks SQL.
 *
 * Why SQLite and why shaped so: several processes (workers, `status` run from
 * another terminal, cron submitting the nightly job) share one file. WAL mode
 * lets readers run while a worker writes; every write is one short
 * BEGIN IMMEDIATE transaction, so two workers never both see a job as free.
 * A worker holds a job through a lease (worker id + expiry time) that it
 * renews while it works; a worker that dies (kill -9, reboot) stops renewing,
 * and after the expiry any other worker may take the job over. Results are
 * keyed UNIQUE (job, query) and inserted with "insert or keep the existing
 * row", so a resumed job never duplicates a result and never loses one.
 *
 * States follow the OpenAI Batch API's:
 *
 *     queued ──claim──▶ running ──▶ succeeded | failed
 *       │                 │  ▲ └──release (graceful stop), lease expiry──▶ queued
 *       │                 │  └─ (reclaimed by another worker after requeue)
 *       │               cancel
 *       │                 ▼
 *       └──cancel──▶ cancelled ◀── cancelling ──▶ succeeded (last result
 *                                                 stored before the worker
 *                                                 saw the request)
 *
 * Every state change goes through one function (see dsv4_jobs_transition_check);
 * an illegal one fails with DSV4_JOBS_ESTATE and a message naming both states.
 *
 * Times are unix milliseconds (UTC) everywhere, read from CLOCK_REALTIME.
 * Handles are not shared between threads: open one per thread (the worker's
 * heartbeat thread has its own). Every function returns 0 or a negative
 * DSV4_JOBS_E* code and, on failure, writes a message into err (errlen bytes,
 * may be NULL/0). The schema is described in docs/job-store.md. */
#ifndef DSV4_JOBS_H
#define DSV4_JOBS_H

#include <stddef.h>
#include <stdint.h>

typedef struct dsv4_jobs dsv4_jobs;

enum {
    DSV4_JOBS_OK = 0,
    DSV4_JOBS_ESQL = -1,      /* SQLite failed: I/O, corrupt file, busy past the timeout */
    DSV4_JOBS_ENOTFOUND = -2, /* no such job */
    DSV4_JOBS_ESTATE = -3,    /* illegal state transition */
    DSV4_JOBS_ELEASE = -4,    /* the caller does not hold the job's lease (any more) */
    DSV4_JOBS_EVERSION = -5,  /* the file's schema is newer than this program */
    DSV4_JOBS_EINVAL = -6,    /* bad argument */
    DSV4_JOBS_ENOMEM = -7,
};

/* Job states, in the database as their names ("queued", ...). */
enum {
    DSV4_JOB_QUEUED = 0,
    DSV4_JOB_RUNNING,
    DSV4_JOB_CANCELLING,
    DSV4_JOB_SUCCEEDED,
    DSV4_JOB_FAILED,
    DSV4_JOB_CANCELLED,
    DSV4_JOB_N_STATES
};

/* The schema version this program writes (PRAGMA user_version). */
#define DSV4_JOBS_SCHEMA_VERSION 2
/* Defaults a caller may use. */
#define DSV4_JOBS_DEFAULT_MAX_ATTEMPTS 3
#define DSV4_JOBS_DEFAULT_LEASE_MS 60000

/* "queued", ...; "?" for a value out of range. */
const char *dsv4_job_state_name(int state);
/* The state named `name`, or -1. */
int dsv4_job_state_parse(const char *name);
/* 1 for succeeded, failed, cancelled. */
int dsv4_job_state_is_final(int state);

/* The one rule for state changes: 0 when from -> to is legal, else
 * DSV4_JOBS_ESTATE with "cannot go from FROM to TO" (plus why) in err. */
int dsv4_jobs_transition_check(int from, int to, char *err, size_t errlen);

/* Current time, unix ms. */
int64_t dsv4_jobs_now_ms(void);

/* ---- opening ------------------------------------------------------------ */

/* Opens (creating if absent, or if the file is empty) the database at path,
 * sets WAL mode, foreign keys and a busy timeout, and migrates its schema
 * forward to DSV4_JOBS_SCHEMA_VERSION. A file whose user_version is newer
 * fails with DSV4_JOBS_EVERSION. Safe to call from many processes at once. */
int dsv4_jobs_open(const char *path, dsv4_jobs **out, char *err, size_t errlen);
/* Accepts NULL. */
void dsv4_jobs_close(dsv4_jobs *db);
/* The schema version of the open file (after migration: the current one). */
int dsv4_jobs_schema_version(dsv4_jobs *db, int *version, char *err, size_t errlen);

/* ---- submitting ----------------------------------------------------------- */

typedef struct dsv4_job_input_new {
    const char *kind;         /* "path" or "repo" (what the spec says) */
    const char *path;         /* absolute path or glob pattern */
    const char *options_json; /* include/exclude/limits as JSON; NULL = "{}" */
} dsv4_job_input_new;

typedef struct dsv4_job_query_new {
    const char *query_id;     /* unique within the job */
    const char *prompt;
    const char *options_json; /* per-query thinking/max_new_tokens; NULL = "{}" */
} dsv4_job_query_new;

typedef struct dsv4_job_new {
    const char *name;
    const char *spec_path; /* absolute path of the job file, may be NULL */
    const char *spec_yaml; /* the file's text as submitted */
    const char *spec_json; /* the parsed spec with defaults filled (pipeline/job_spec.h) */
    int priority;          /* higher runs first; equal priorities run in id order */
    int max_attempts;      /* claims allowed before a job whose lease keeps expiring fails; >= 1 */
    const dsv4_job_input_new *inputs;
    size_t n_inputs;
    const dsv4_job_query_new *queries; /* position = index */
    size_t n_queries;
} dsv4_job_new;

/* Inserts a job in state queued with its inputs and queries (one
 * transaction: all or nothing). Duplicate query ids fail (DSV4_JOBS_EINVAL). */
int dsv4_jobs_submit(dsv4_jobs *db, const dsv4_job_new *job, int64_t *job_id, char *err, size_t errlen);

/* ---- working on jobs ------------------------------------------------------ */

/* Atomically takes the next job for worker `worker`: first settles expired
 * leases (running -> queued, or -> failed once attempts reached max_attempts;
 * cancelling -> cancelled), then moves the queued job with the highest
 * priority (lowest id among equals) to running with a lease of lease_ms and
 * attempts + 1. *job_id = 0 when nothing is queued. */
int dsv4_jobs_claim(dsv4_jobs *db, const char *worker, int64_t lease_ms, int64_t *job_id, char *err,
                    size_t errlen);

/* Renews the lease to now + lease_ms. DSV4_JOBS_ELEASE when `worker` no
 * longer holds the job (its lease expired and another worker took it, or the
 * job is final). *state (may be NULL) = DSV4_JOB_RUNNING or
 * DSV4_JOB_CANCELLING: the latter means "a cancel was requested, stop". */
int dsv4_jobs_heartbeat(dsv4_jobs *db, int64_t job_id, const char *worker, int64_t lease_ms, int *state,
                        char *err, size_t errlen);

/* Gives the job back without finishing it (graceful shutdown): running ->
 * queued with attempts - 1 (an interrupted run is not a failed attempt);
 * cancelling -> cancelled. DSV4_JOBS_ELEASE when the worker does not hold it. */
int dsv4_jobs_release(dsv4_jobs *db, int64_t job_id, const char *worker, char *err, size_t errlen);

/* Ends the job: state is DSV4_JOB_SUCCEEDED, DSV4_JOB_FAILED or
 * DSV4_JOB_CANCELLED (error: a message for failed, else NULL). The worker
 * must hold the lease (DSV4_JOBS_ELEASE otherwise); the transition must be
 * legal (from running: succeeded/failed; from cancelling: cancelled/succeeded). */
int dsv4_jobs_finish(dsv4_jobs *db, int64_t job_id, const char *worker, int state, const char *error,
                     char *err, size_t errlen);

/* A user's cancel: queued -> cancelled at once, running -> cancelling (the
 * worker sees it at its next heartbeat and ends the job as cancelled);
 * cancelling stays cancelling (0). A final job: DSV4_JOBS_ESTATE.
 * *state (may be NULL) = the state after the call. */
int dsv4_jobs_cancel(dsv4_jobs *db, int64_t job_id, int *state, char *err, size_t errlen);

/* Moves a job to state `to` if dsv4_jobs_transition_check allows it,
 * regardless of leases (administration and tests; workers use the calls
 * above). Sets the timestamps and clears the lease as the target state
 * requires; error is stored for failed. */
int dsv4_jobs_set_state(dsv4_jobs *db, int64_t job_id, int to, const char *error, char *err, size_t errlen);

/* ---- reading jobs --------------------------------------------------------- */

typedef struct dsv4_job_info {
    int64_t id;
    char *name;
    int state;
    int priority;
    int attempts, max_attempts;
    char *worker;             /* NULL when no lease is held */
    int64_t lease_expires_ms; /* 0 when none */
    int64_t created_ms, started_ms, finished_ms, updated_ms; /* 0 = not yet */
    char *error;              /* NULL unless failed (or a lease expiry was noted) */
    char *spec_path, *spec_yaml, *spec_json; /* NULL in dsv4_jobs_list's rows */
    int64_t n_queries, n_results;
} dsv4_job_info;

/* Fills *out (caller clears it with dsv4_job_info_clear). DSV4_JOBS_ENOTFOUND. */
int dsv4_jobs_get(dsv4_jobs *db, int64_t job_id, dsv4_job_info *out, char *err, size_t errlen);
/* Frees the strings and zeroes the struct; accepts NULL. */
void dsv4_job_info_clear(dsv4_job_info *j);
/* Jobs newest first; state -1 = any; limit <= 0 = no limit. */
int dsv4_jobs_list(dsv4_jobs *db, int state, int limit, dsv4_job_info **out, size_t *n, char *err, size_t errlen);
void dsv4_jobs_list_free(dsv4_job_info *jobs, size_t n);
/* counts[s] = number of jobs in state s. */
int dsv4_jobs_count(dsv4_jobs *db, int64_t counts[DSV4_JOB_N_STATES], char *err, size_t errlen);

typedef struct dsv4_job_input {
    int64_t position;
    char *kind, *path, *options_json;
} dsv4_job_input;

int dsv4_jobs_inputs(dsv4_jobs *db, int64_t job_id, dsv4_job_input **out, size_t *n, char *err, size_t errlen);
void dsv4_jobs_inputs_free(dsv4_job_input *in, size_t n);

typedef struct dsv4_job_query {
    int64_t position;
    char *query_id, *prompt, *options_json;
} dsv4_job_query;

/* Queries in position order; pending_only = 1 gives those with no result
 * row yet (what a resumed job still has to do). */
int dsv4_jobs_queries(dsv4_jobs *db, int64_t job_id, int pending_only, dsv4_job_query **out, size_t *n,
                      char *err, size_t errlen);
void dsv4_jobs_queries_free(dsv4_job_query *q, size_t n);

/* ---- results -------------------------------------------------------------- */

typedef struct dsv4_job_result {
    char *query_id;
    char *text;          /* the answer; NULL when error is set */
    char *reasoning;     /* thinking text, NULL when thinking: none */
    char *finish_reason; /* "stop", "length", ... */
    int64_t prompt_tokens, cached_tokens, generated_tokens;
    double prefill_ms, decode_ms, total_ms;
    char *error;         /* NULL for a good result */
    int attempt;         /* filled by reads: the job's attempt that wrote it */
    int64_t created_ms;  /* filled by reads */
} dsv4_job_result;

/* Stores the result of one query of the job unless that query already has
 * one (the first writer wins; *inserted = 0 then, may be NULL). The query id
 * must be one of the job's (DSV4_JOBS_EINVAL otherwise). */
int dsv4_jobs_result_put(dsv4_jobs *db, int64_t job_id, const dsv4_job_result *r, int *inserted, char *err,
                         size_t errlen);
/* Results in query position order. */
int dsv4_jobs_results(dsv4_jobs *db, int64_t job_id, dsv4_job_result **out, size_t *n, char *err,
                      size_t errlen);
void dsv4_jobs_results_free(dsv4_job_result *r, size_t n);

/* ---- events and progress -------------------------------------------------- */

typedef struct dsv4_job_event {
    int64_t id, job_id, time_ms;
    char *stage, *level, *message;
    char *payload_json; /* NULL when none */
} dsv4_job_event;

/* Appends to the event log (rows are never changed: a trigger forbids
 * UPDATE). level: "debug", "info", "warn" or "error". payload_json: a JSON
 * value or NULL. */
int dsv4_jobs_event_add(dsv4_jobs *db, int64_t job_id, const char *stage, const char *level,
                        const char *message, const char *payload_json, char *err, size_t errlen);
/* Events of the job with id > after_id in id order; limit > 0 keeps only the
 * last `limit` of them. */
int dsv4_jobs_events(dsv4_jobs *db, int64_t job_id, int64_t after_id, int limit, dsv4_job_event **out,
                     size_t *n, char *err, size_t errlen);
void dsv4_jobs_events_free(dsv4_job_event *e, size_t n);

typedef struct dsv4_job_progress {
    char *stage;        /* "ingest", "prefill", "decode", ... */
    double done, total; /* total 0 = unknown */
    char *unit;         /* "files", "tokens", "queries" */
    double rate;        /* units per second, 0 = unknown */
    int64_t updated_ms; /* filled by reads */
} dsv4_job_progress;

/* Creates or replaces the job's record for p->stage. */
int dsv4_jobs_progress_set(dsv4_jobs *db, int64_t job_id, const dsv4_job_progress *p, char *err, size_t errlen);
/* The job's progress records, oldest stage first. */
int dsv4_jobs_progress(dsv4_jobs *db, int64_t job_id, dsv4_job_progress **out, size_t *n, char *err,
                       size_t errlen);
void dsv4_jobs_progress_free(dsv4_job_progress *p, size_t n);

#endif
