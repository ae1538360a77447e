/* The worker (`dsv4-batch run`) and its contract with the job runner.
 *
 * The worker claims one job at a time from the job store and calls a job
 * runner (dsv4_pipeline_run_job, in pipeline/run_job.c) for it. While the
 * runner works, a heartbeat THREAD of the worker (with its own database
 * connection) renews the job's lease every lease/3 ms, so the runner need
 * not call anything on time even inside a long GPU step; the same thread
 * notices a cancel request (state cancelling) and a lost lease and raises a
 * flag. The runner polls dsv4_worker_should_stop() between steps (after each
 * prefill chunk, each decode step, each file) and returns DSV4_RUN_STOPPED
 * when it says stop. The worker, not the runner, then ends the job:
 *
 *   runner returns       should_stop()          the job becomes
 *   0                    any but LEASE_LOST     succeeded
 *   DSV4_RUN_STOPPED     CANCEL                 cancelled
 *   DSV4_RUN_STOPPED     SHUTDOWN               queued again (lease released; attempt not counted)
 *   negative (error)     CANCEL                 cancelled
 *   negative (error)     SHUTDOWN               queued again
 *   DSV4_RUN_UNAVAILABLE NONE                   queued again, and the worker stops
 *   negative (error)     NONE                   failed, with the runner's err as the job's error
 *   anything             LEASE_LOST             untouched (another worker owns it now)
 *
 * SIGINT/SIGTERM (when the worker installs handlers) ask for SHUTDOWN: the
 * current step finishes, the lease is released, the worker exits. A second
 * signal kills the process at once (the lease then expires on its own).
 *
 * The runner stores results itself (dsv4_jobs_result_put: idempotent, so it
 * may simply retry queries listed by dsv4_jobs_queries(pending_only = 1)). */
#ifndef DSV4_WORKER_H
#define DSV4_WORKER_H

#include <stdint.h>
#include <stdio.h>

#include "jobs/dsv4_jobs.h"

/* How the worker reports (chosen by the CLI). */
enum {
    DSV4_OUT_LINES = 0, /* one quiet line per event on stdout (not a TTY) */
    DSV4_OUT_TTY,       /* event lines plus live progress bars on stderr */
    DSV4_OUT_JSON,      /* one JSON object per event/progress update on stdout */
    DSV4_OUT_QUIET,     /* nothing printed (tests) */
};

/* dsv4_worker_should_stop() answers. */
enum {
    DSV4_STOP_NONE = 0,
    DSV4_STOP_CANCEL,     /* a user ran `cancel`: stop, the job ends cancelled */
    DSV4_STOP_SHUTDOWN,   /* SIGINT/SIGTERM: stop, the job goes back to the queue */
    DSV4_STOP_LEASE_LOST, /* the lease could not be renewed in time: stop, touch nothing */
};

/* A runner's return values besides 0 (done) and other negatives (failed).
 * DSV4_RUN_UNAVAILABLE: this worker cannot run any job (no Vulkan device):
 * the job is released back to the queue untouched (attempt not counted) for
 * a worker that can, and the loop stops; `run` exits 3. */
enum { DSV4_RUN_STOPPED = 1, DSV4_RUN_UNAVAILABLE = -1000 };

struct dsv4_worker_state; /* private to worker.c */

/* What a runner gets for one job. All pointers stay valid during the call. */
typedef struct dsv4_worker_ctx {
    const char *home_dir;  /* the home directory (--home) */
    const char *cache_dir; /* home_dir/cache: the prefix cache */
    const char *worker_id; /* this worker's id (the lease holder) */
    int64_t job_id;
    int attempt; /* 1 on the first run, more when resuming after a dead worker */
    int output;  /* DSV4_OUT_* */
    struct dsv4_worker_state *state;
    const char *devices, *split; /* --devices/--split: dsv4_engine_options' (NULL: env) */
} dsv4_worker_ctx;

/* DSV4_STOP_*: cheap (reads flags), call it often. */
int dsv4_worker_should_stop(const dsv4_worker_ctx *ctx);
/* Renews the lease now, from the runner's thread and connection (the
 * heartbeat thread does this anyway; useful before a step known to be long).
 * DSV4_JOBS_ELEASE when the lease is lost. */
int dsv4_worker_heartbeat(const dsv4_worker_ctx *ctx, char *err, size_t errlen);
/* Reports progress of a stage ("ingest", "prefill", "decode"...): done of
 * total units (total 0 = unknown). The worker computes the rate, writes the
 * job's progress record (at most once a second per stage, and at the end)
 * for `status` in other processes, and draws the bar on a TTY. */
void dsv4_worker_progress(const dsv4_worker_ctx *ctx, const char *stage, double done, double total, const char *unit);
/* Appends an event to the job's log and prints it. level: "debug", "info",
 * "warn", "error"; payload_json: a JSON value or NULL. */
void dsv4_worker_event(const dsv4_worker_ctx *ctx, const char *stage, const char *level, const char *payload_json,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The job runner: runs every stage of job_id, storing results as they come.
 * Returns 0 (all queries have results), DSV4_RUN_STOPPED (stopped because
 * dsv4_worker_should_stop said so) or a negative code with the reason in
 * err. Implemented in pipeline/run_job.c. */
int dsv4_pipeline_run_job(dsv4_jobs *db, int64_t job_id, const dsv4_worker_ctx *ctx, char *err, size_t errlen);

typedef int (*dsv4_job_runner)(dsv4_jobs *db, int64_t job_id, const dsv4_worker_ctx *ctx, char *err, size_t errlen);

typedef struct dsv4_worker_opts {
    const char *home_dir, *cache_dir;
    const char *db_path;   /* the heartbeat thread opens its own connection to it */
    const char *worker_id; /* NULL = "HOST:PID" */
    int64_t lease_ms;      /* 0 = DSV4_JOBS_DEFAULT_LEASE_MS */
    int64_t poll_ms;       /* wait between looks at an empty queue; 0 = 2000 */
    int once;              /* run at most one job */
    int until_idle;        /* return when nothing is queued */
    int output;            /* DSV4_OUT_* */
    int handle_signals;    /* install SIGINT/SIGTERM handlers for the run */
    const char *devices, *split; /* several devices: dsv4_engine_options' devices and split */
    dsv4_job_runner runner; /* NULL = dsv4_pipeline_run_job */
} dsv4_worker_opts;

typedef struct dsv4_worker_stats {
    int claimed, succeeded, failed, cancelled, released, lost;
    int unavailable; /* 1 when the runner said this worker cannot run jobs */
} dsv4_worker_stats;

/* The worker loop: claim, run, end the job, repeat; until --once/--until-idle
 * say so or a shutdown is requested. db: the caller's open store. Returns 0
 * (stats filled: the CLI exits 1 when stats.failed > 0) or a negative code
 * when the store itself failed. */
int dsv4_worker_run(dsv4_jobs *db, const dsv4_worker_opts *opts, dsv4_worker_stats *stats, char *err, size_t errlen);
/* Asks a running worker loop to stop as SIGTERM does (async-signal-safe). */
void dsv4_worker_request_shutdown(void);

/* ---- results export (`results`, and the job's output files) ---------------- */

enum { DSV4_RESULTS_JSONL = 0, DSV4_RESULTS_MD };
/* Writes the job's results: JSONL, one OpenAI-batch-output-style line per
 * result in query order, or a Markdown report (each query, its answer, the
 * job's figures). Implemented in pipeline/cmd_jobs.c. */
int dsv4_results_write(dsv4_jobs *db, int64_t job_id, int format, FILE *out, char *err, size_t errlen);
/* Writes the files the job's spec asks for (output.jsonl, output.markdown;
 * {name}/{date}/{id} expanded with time_ms), creating parent directories;
 * each file appears whole (written to a temporary name, then renamed).
 * THE WORKER CALLS THIS after the runner returns 0 and before the job is
 * marked succeeded (a write error fails the job): runners do not. The paths
 * written are reported as "output" events. */
int dsv4_results_write_outputs(dsv4_jobs *db, int64_t job_id, int64_t time_ms, char *err, size_t errlen);

#endif
