/* The worker loop and the context a job runner works in (see worker.h for
 * the contract). The heartbeat is a thread rather than a callback so that a
 * runner blocked in one long step (a prefill chunk of a million-token
 * context on a slow device) still keeps its lease; the thread owns its own
 * SQLite connection because a connection's transactions are not to be
 * interleaved from two threads. Flags cross threads as C11 atomics; the
 * signal handler only sets a sig_atomic_t. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "pipeline/worker.h"

#define MAX_STAGES 16

static volatile sig_atomic_t shutdown_requested;

void dsv4_worker_request_shutdown(void) { shutdown_requested = 1; }

static void on_signal(int sig)
{
    (void)sig;
    shutdown_requested = 1;
}

struct stage_rate {
    char name[32];
    double done0, last_done;
    int64_t t0_ms, last_write_ms;
};

struct dsv4_worker_state {
    dsv4_jobs *db;
    const char *db_path;
    int64_t job_id, lease_ms;
    const char *worker;
    atomic_int cancel, lease_lost;
    atomic_llong last_renew_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int thread_stop, thread_started;
    struct stage_rate stages[MAX_STAGES];
    int n_stages;
    int bar_shown;
};

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !shutdown_requested) {}
}

static void iso_time(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- the context's calls ---------------------------------------------------- */

int dsv4_worker_should_stop(const dsv4_worker_ctx *ctx)
{
    struct dsv4_worker_state *s = ctx->state;
    if (atomic_load(&s->lease_lost)) return DSV4_STOP_LEASE_LOST;
    /* A lease not renewed for its whole length may already be another
     * worker's, even if the heartbeat thread has not said so yet. */
    if (dsv4_jobs_now_ms() - atomic_load(&s->last_renew_ms) > s->lease_ms) return DSV4_STOP_LEASE_LOST;
    if (atomic_load(&s->cancel)) return DSV4_STOP_CANCEL;
    if (shutdown_requested) return DSV4_STOP_SHUTDOWN;
    return DSV4_STOP_NONE;
}

static int renew(struct dsv4_worker_state *s, dsv4_jobs *db, char *err, size_t errlen)
{
    int state = 0;
    int rc = dsv4_jobs_heartbeat(db, s->job_id, s->worker, s->lease_ms, &state, err, errlen);
    if (rc == DSV4_JOBS_ELEASE || rc == DSV4_JOBS_ENOTFOUND) atomic_store(&s->lease_lost, 1);
    if (rc) return rc;
    atomic_store(&s->last_renew_ms, (long long)dsv4_jobs_now_ms());
    if (state == DSV4_JOB_CANCELLING) atomic_store(&s->cancel, 1);
    return 0;
}

int dsv4_worker_heartbeat(const dsv4_worker_ctx *ctx, char *err, size_t errlen)
{
    return renew(ctx->state, ctx->state->db, err, errlen);
}

static void print_line(const dsv4_worker_ctx *ctx, int64_t job_id, const char *stage, const char *level,
                       const char *msg, const char *payload_json)
{
    struct dsv4_worker_state *s = ctx ? ctx->state : NULL;
    int output = ctx ? ctx->output : DSV4_OUT_LINES;
    if (output == DSV4_OUT_QUIET) return;
    char when[32];
    iso_time(dsv4_jobs_now_ms(), when, sizeof when);
    if (output == DSV4_OUT_JSON) {
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s}", "type", "event", "time", when, "job",
                              (json_int_t)job_id, "stage", stage, "level", level, "message", msg);
        json_t *payload = payload_json ? json_loads(payload_json, JSON_DECODE_ANY, NULL) : NULL;
        if (o && payload) json_object_set_new(o, "payload", payload);
        else json_decref(payload);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text) printf("%s\n", text);
        free(text);
        json_decref(o);
    } else {
        if (s && s->bar_shown) {
            fprintf(stderr, "\r\033[K");
            s->bar_shown = 0;
        }
        char job[32] = "";
        if (job_id > 0) snprintf(job, sizeof job, " job %lld", (long long)job_id);
        printf("%s%s %s%s%s: %s\n", when, job, stage, strcmp(level, "info") ? " " : "",
               strcmp(level, "info") ? level : "", msg);
    }
    fflush(stdout);
}

void dsv4_worker_event(const dsv4_worker_ctx *ctx, const char *stage, const char *level, const char *payload_json,
                       const char *fmt, ...)
{
    char msg[2048], err[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (dsv4_jobs_event_add(ctx->state->db, ctx->job_id, stage, level, msg, payload_json, err, sizeof err))
        fprintf(stderr, "dsv4-batch: cannot record an event: %s\n", err);
    print_line(ctx, ctx->job_id, stage, level, msg, payload_json);
}

static void draw_bar(const char *stage, double done, double total, const char *unit, double rate)
{
    char line[160];
    int w = 30;
    if (total > 0) {
        double f = done / total > 1 ? 1 : done / total;
        int fill = (int)(f * w);
        char bar[64];
        for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
        bar[w] = 0;
        double eta = rate > 0 ? (total - done) / rate : -1;
        int n = snprintf(line, sizeof line, "%-8s [%s] %3.0f%% %.0f/%.0f %s", stage, bar, f * 100, done, total, unit);
        if (rate > 0 && n > 0 && (size_t)n < sizeof line)
            n += snprintf(line + n, sizeof line - (size_t)n, " %.1f %s/s", rate, unit);
        if (eta >= 0 && n > 0 && (size_t)n < sizeof line)
            snprintf(line + n, sizeof line - (size_t)n, " ETA %dm%02ds", (int)(eta / 60), (int)eta % 60);
    } else {
        snprintf(line, sizeof line, "%-8s %.0f %s %.1f %s/s", stage, done, unit, rate, unit);
    }
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
}

void dsv4_worker_progress(const dsv4_worker_ctx *ctx, const char *stage, double done, double total, const char *unit)
{
    struct dsv4_worker_state *s = ctx->state;
    int64_t now = dsv4_jobs_now_ms();
    struct stage_rate *r = NULL;
    for (int i = 0; i < s->n_stages; i++)
        if (!strcmp(s->stages[i].name, stage)) r = &s->stages[i];
    if (!r) {
        r = &s->stages[s->n_stages < MAX_STAGES ? s->n_stages++ : MAX_STAGES - 1];
        snprintf(r->name, sizeof r->name, "%s", stage);
        r->done0 = done;
        r->t0_ms = now;
        r->last_write_ms = 0;
    }
    r->last_done = done;
    double secs = (double)(now - r->t0_ms) / 1000.0;
    double rate = secs > 0.2 ? (done - r->done0) / secs : 0;
    int finished = total > 0 && done >= total;
    if (now - r->last_write_ms < 1000 && !finished) return;
    r->last_write_ms = now;
    dsv4_job_progress p = {.stage = (char *)stage, .done = done, .total = total, .unit = (char *)(unit ? unit : ""),
                           .rate = rate};
    char err[512];
    if (dsv4_jobs_progress_set(s->db, ctx->job_id, &p, err, sizeof err))
        fprintf(stderr, "dsv4-batch: cannot record progress: %s\n", err);
    if (ctx->output == DSV4_OUT_JSON) {
        json_t *o = json_pack("{s:s, s:I, s:s, s:f, s:f, s:s, s:f}", "type", "progress", "job", (json_int_t)ctx->job_id,
                              "stage", stage, "done", done, "total", total, "unit", unit ? unit : "", "rate", rate);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text) printf("%s\n", text);
        fflush(stdout);
        free(text);
        json_decref(o);
    } else if (ctx->output == DSV4_OUT_TTY) {
        draw_bar(stage, done, total, unit ? unit : "", rate);
        s->bar_shown = 1;
        if (finished) {
            fprintf(stderr, "\n");
            s->bar_shown = 0;
        }
    }
}

/* ---- the heartbeat thread --------------------------------------------------- */

static void *heartbeat_main(void *arg)
{
    struct dsv4_worker_state *s = arg;
    char err[512];
    dsv4_jobs *db = NULL;
    if (dsv4_jobs_open(s->db_path, &db, err, sizeof err)) {
        fprintf(stderr, "dsv4-batch: heartbeat cannot open %s: %s\n", s->db_path, err);
        atomic_store(&s->lease_lost, 1);
        return NULL;
    }
    int64_t period = s->lease_ms / 3 > 0 ? s->lease_ms / 3 : 1;
    pthread_mutex_lock(&s->mu);
    while (!s->thread_stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        int64_t ns = until.tv_nsec + (period % 1000) * 1000000LL;
        until.tv_sec += (time_t)(period / 1000 + ns / 1000000000LL);
        until.tv_nsec = (long)(ns % 1000000000LL);
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
        if (s->thread_stop) break;
        pthread_mutex_unlock(&s->mu);
        /* A transient error (database busy past the timeout) is retried at
         * the next period; should_stop() turns a lease left unrenewed past
         * its expiry into LEASE_LOST on its own. */
        if (renew(s, db, err, sizeof err) && !atomic_load(&s->lease_lost))
            fprintf(stderr, "dsv4-batch: heartbeat of job %lld: %s\n", (long long)s->job_id, err);
        pthread_mutex_lock(&s->mu);
        if (atomic_load(&s->lease_lost)) break;
    }
    pthread_mutex_unlock(&s->mu);
    dsv4_jobs_close(db);
    return NULL;
}

static int start_heartbeat(struct dsv4_worker_state *s)
{
    s->thread_stop = 0;
    if (pthread_create(&s->thread, NULL, heartbeat_main, s) != 0) return -1;
    s->thread_started = 1;
    return 0;
}

static void stop_heartbeat(struct dsv4_worker_state *s)
{
    if (!s->thread_started) return;
    pthread_mutex_lock(&s->mu);
    s->thread_stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
}

/* ---- the loop --------------------------------------------------------------- */

static void log_worker(const dsv4_worker_opts *o, int64_t job_id, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void log_worker(const dsv4_worker_opts *o, int64_t job_id, const char *level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dsv4_worker_ctx c = {.output = o->output};
    print_line(&c, job_id, "worker", level, msg, NULL);
}

/* Ends one claimed job according to the table in worker.h. */
static int end_job(dsv4_jobs *db, const dsv4_worker_opts *o, struct dsv4_worker_state *s, int rc, int stop,
                   const char *run_err, dsv4_worker_stats *st, char *err, size_t errlen)
{
    int64_t id = s->job_id;
    int r = 0;
    if (stop == DSV4_STOP_LEASE_LOST) {
        st->lost++;
        log_worker(o, id, "warn", "lost the lease; leaving the job to the worker that holds it");
        return 0;
    }
    if (rc == 0) {
        char out_err[2048];
        if (dsv4_results_write_outputs(db, id, dsv4_jobs_now_ms(), out_err, sizeof out_err) != 0) {
            char why[2200];
            snprintf(why, sizeof why, "cannot write the output files: %s", out_err);
            r = dsv4_jobs_finish(db, id, s->worker, stop == DSV4_STOP_CANCEL ? DSV4_JOB_CANCELLED : DSV4_JOB_FAILED,
                                 why, err, errlen);
            if (!r) st->failed++, log_worker(o, id, "error", "failed: %s", why);
        } else {
            r = dsv4_jobs_finish(db, id, s->worker, DSV4_JOB_SUCCEEDED, NULL, err, errlen);
            if (!r) st->succeeded++, log_worker(o, id, "info", "succeeded");
        }
    } else if (stop == DSV4_STOP_CANCEL) {
        r = dsv4_jobs_finish(db, id, s->worker, DSV4_JOB_CANCELLED, NULL, err, errlen);
        if (!r) st->cancelled++, log_worker(o, id, "info", "cancelled");
    } else if (rc == DSV4_RUN_UNAVAILABLE) {
        r = dsv4_jobs_release(db, id, s->worker, err, errlen);
        if (!r) st->released++, st->unavailable = 1;
        log_worker(o, id, "error", "this worker cannot run jobs (%s); job released back to the queue", run_err);
    } else if (rc == DSV4_RUN_STOPPED && stop == DSV4_STOP_SHUTDOWN) {
        r = dsv4_jobs_release(db, id, s->worker, err, errlen);
        if (!r) st->released++, log_worker(o, id, "info", "interrupted; job released back to the queue");
    } else {
        const char *why = rc == DSV4_RUN_STOPPED ? "the runner stopped with no reason to" : run_err;
        if (stop == DSV4_STOP_SHUTDOWN && rc < 0) {
            r = dsv4_jobs_release(db, id, s->worker, err, errlen);
            if (!r) st->released++, log_worker(o, id, "warn", "interrupted (%s); job released back to the queue", why);
        } else {
            r = dsv4_jobs_finish(db, id, s->worker, DSV4_JOB_FAILED, why, err, errlen);
            if (!r) st->failed++, log_worker(o, id, "error", "failed: %s", why);
        }
    }
    if (r == DSV4_JOBS_ELEASE) { /* lost between the runner's return and now */
        st->lost++;
        log_worker(o, id, "warn", "%s", err);
        return 0;
    }
    return r;
}

int dsv4_worker_run(dsv4_jobs *db, const dsv4_worker_opts *opts, dsv4_worker_stats *stats, char *err, size_t errlen)
{
    dsv4_worker_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    dsv4_worker_opts o = *opts;
    char idbuf[300];
    if (!o.worker_id) {
        char host[256] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        snprintf(idbuf, sizeof idbuf, "%s:%ld", host, (long)getpid());
        o.worker_id = idbuf;
    }
    if (o.lease_ms <= 0) o.lease_ms = DSV4_JOBS_DEFAULT_LEASE_MS;
    if (o.poll_ms <= 0) o.poll_ms = 2000;
    if (!o.runner) o.runner = dsv4_pipeline_run_job;
    if (!o.db_path) {
        snprintf(err, errlen, "worker: no database path");
        return DSV4_JOBS_EINVAL;
    }

    struct sigaction old_int, old_term;
    if (o.handle_signals) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESETHAND; /* a second signal kills at once */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
    }
    shutdown_requested = 0;

    struct dsv4_worker_state *s = calloc(1, sizeof *s);
    int rc = 0;
    if (!s) {
        snprintf(err, errlen, "worker: out of memory");
        rc = DSV4_JOBS_ENOMEM;
        goto done;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->db = db;
    s->db_path = o.db_path;
    s->worker = o.worker_id;
    s->lease_ms = o.lease_ms;
    log_worker(&o, 0, "info", "worker %s started (lease %lld ms)", o.worker_id, (long long)o.lease_ms);

    while (!shutdown_requested) {
        int64_t id = 0;
        if ((rc = dsv4_jobs_claim(db, o.worker_id, o.lease_ms, &id, err, errlen))) break;
        if (!id) {
            if (o.once || o.until_idle) break;
            for (int64_t waited = 0; waited < o.poll_ms && !shutdown_requested; waited += 100)
                sleep_ms(o.poll_ms - waited < 100 ? o.poll_ms - waited : 100);
            continue;
        }
        stats->claimed++;
        dsv4_job_info info;
        int attempt = 1;
        if (dsv4_jobs_get(db, id, &info, NULL, 0) == 0) {
            attempt = info.attempts;
            log_worker(&o, id, "info", "claimed '%s' (attempt %d of %d)", info.name, info.attempts, info.max_attempts);
            dsv4_job_info_clear(&info);
        }
        s->job_id = id;
        s->n_stages = 0;
        atomic_store(&s->cancel, 0);
        atomic_store(&s->lease_lost, 0);
        atomic_store(&s->last_renew_ms, (long long)dsv4_jobs_now_ms());
        dsv4_worker_ctx ctx = {.home_dir = o.home_dir,
                               .cache_dir = o.cache_dir,
                               .worker_id = o.worker_id,
                               .job_id = id,
                               .attempt = attempt,
                               .output = o.output,
                               .state = s,
                               .devices = o.devices,
                               .split = o.split};
        char run_err[2048] = "";
        int run_rc;
        if (start_heartbeat(s) != 0) {
            run_rc = -1;
            snprintf(run_err, sizeof run_err, "cannot start the heartbeat thread");
        } else {
            run_rc = o.runner(db, id, &ctx, run_err, sizeof run_err);
            stop_heartbeat(s);
        }
        if (run_rc < 0 && !run_err[0]) snprintf(run_err, sizeof run_err, "the runner failed (code %d)", run_rc);
        /* A cancel requested after the heartbeat's last look is caught by
         * one more renewal here. */
        if (!atomic_load(&s->lease_lost)) renew(s, db, NULL, 0);
        int stop = dsv4_worker_should_stop(&ctx);
        if ((rc = end_job(db, &o, s, run_rc, stop, run_err, stats, err, errlen))) break;
        if (o.once || stats->unavailable) break;
    }
    if (!rc && shutdown_requested) log_worker(&o, 0, "info", "stopping on request");
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
done:
    if (o.handle_signals) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    return rc;
}
