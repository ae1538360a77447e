/* What a job goes through in the store: submit, claim under a lease,
 * heartbeat, release, finish, cancel; and the reads (jobs, inputs, queries,
 * results, events, progress).
 *
 * Every state change goes through change_state(), which asks
 * dsv4_jobs_transition_check() -- the one table of legal transitions -- and
 * writes the row and an event in the caller's transaction. The UPDATE also
 * names the state it expects to leave ("WHERE state = from"), so a row that
 * changed under us is an error, never a silent overwrite. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "jobs/internal.h"

static const char *const state_names[DSV4_JOB_N_STATES] = {
    "queued", "running", "cancelling", "succeeded", "failed", "cancelled",
};

const char *dsv4_job_state_name(int state)
{
    return state >= 0 && state < DSV4_JOB_N_STATES ? state_names[state] : "?";
}

int dsv4_job_state_parse(const char *name)
{
    for (int s = 0; name && s < DSV4_JOB_N_STATES; s++)
        if (strcmp(name, state_names[s]) == 0) return s;
    return -1;
}

int dsv4_job_state_is_final(int state)
{
    return state == DSV4_JOB_SUCCEEDED || state == DSV4_JOB_FAILED || state == DSV4_JOB_CANCELLED;
}

/* legal[from][to]. running -> queued is a graceful release or an expired
 * lease; cancelling -> succeeded is a job whose last result was stored
 * before the worker saw the cancel. */
static const unsigned char legal[DSV4_JOB_N_STATES][DSV4_JOB_N_STATES] = {
    /*               queued running cancelling succeeded failed cancelled */
    [DSV4_JOB_QUEUED] = {0, 1, 0, 0, 0, 1},
    [DSV4_JOB_RUNNING] = {1, 0, 1, 1, 1, 0},
    [DSV4_JOB_CANCELLING] = {0, 0, 0, 1, 0, 1},
};

int dsv4_jobs_transition_check(int from, int to, char *err, size_t errlen)
{
    if (from < 0 || from >= DSV4_JOB_N_STATES || to < 0 || to >= DSV4_JOB_N_STATES)
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "unknown job state %d -> %d", from, to);
    if (legal[from][to]) return 0;
    const char *why = dsv4_job_state_is_final(from) ? " (a finished job never changes)"
                      : from == to                  ? " (it is already there)"
                                                    : "";
    return jobs_err(err, errlen, DSV4_JOBS_ESTATE, "cannot go from %s to %s%s", state_names[from],
                    state_names[to], why);
}

int64_t dsv4_jobs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *col_str(sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    return s ? strdup((const char *)s) : NULL;
}

static void bind_str(sqlite3_stmt *st, int i, const char *s)
{
    if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

/* Runs a statement that returns no rows; finalizes it. */
static int step_done(dsv4_jobs *db, sqlite3_stmt *st, const char *what, char *err, size_t errlen)
{
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : jobs_sql_err(db, err, errlen, what);
    sqlite3_finalize(st);
    return rc;
}

static int add_event(dsv4_jobs *db, int64_t job_id, const char *stage, const char *level, const char *message,
                     const char *payload_json, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "INSERT INTO events (job_id, time_ms, stage, level, message, payload_json) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          &st, err, errlen);
    if (rc) return rc;
    if (job_id > 0) sqlite3_bind_int64(st, 1, job_id);
    else sqlite3_bind_null(st, 1);
    sqlite3_bind_int64(st, 2, dsv4_jobs_now_ms());
    bind_str(st, 3, stage);
    bind_str(st, 4, level);
    bind_str(st, 5, message);
    bind_str(st, 6, payload_json);
    if (sqlite3_step(st) != SQLITE_DONE) {
        int ext = sqlite3_extended_errcode(db->db);
        rc = ext == SQLITE_CONSTRAINT_FOREIGNKEY ? jobs_err(err, errlen, DSV4_JOBS_ENOTFOUND, "no job %lld",
                                                            (long long)job_id)
             : ext == SQLITE_CONSTRAINT_CHECK
                 ? jobs_err(err, errlen, DSV4_JOBS_EINVAL, "event level '%s' is not debug, info, warn or error",
                            level ? level : "")
                 : jobs_sql_err(db, err, errlen, "append event");
    }
    sqlite3_finalize(st);
    return rc;
}

/* Reads state, worker and attempts of a job inside the caller's transaction. */
static int read_state(dsv4_jobs *db, int64_t job_id, int *state, char **worker, int *attempts, int *max_attempts,
                      char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db, "SELECT state, worker, attempts, max_attempts FROM jobs WHERE id = ?", &st, err,
                          errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        *state = dsv4_job_state_parse((const char *)sqlite3_column_text(st, 0));
        if (worker) *worker = col_str(st, 1);
        if (attempts) *attempts = sqlite3_column_int(st, 2);
        if (max_attempts) *max_attempts = sqlite3_column_int(st, 3);
    } else if (s == SQLITE_DONE) {
        rc = jobs_err(err, errlen, DSV4_JOBS_ENOTFOUND, "no job %lld", (long long)job_id);
    } else {
        rc = jobs_sql_err(db, err, errlen, "read job");
    }
    sqlite3_finalize(st);
    return rc;
}

/* The only writer of jobs.state. Inside a transaction. worker/lease are
 * used when entering running; attempts_delta is added to attempts. */
static int change_state(dsv4_jobs *db, int64_t job_id, int from, int to, const char *worker, int64_t lease_ms,
                        int attempts_delta, const char *error, const char *note, char *err, size_t errlen)
{
    char why[256];
    int rc = dsv4_jobs_transition_check(from, to, why, sizeof why);
    if (rc) return jobs_err(err, errlen, rc, "job %lld: %s", (long long)job_id, why);
    int64_t now = dsv4_jobs_now_ms();
    sqlite3_stmt *st = NULL;
    rc = jobs_prepare(db,
                      "UPDATE jobs SET state = ?1, updated_ms = ?2,"
                      " worker = CASE WHEN ?1 = 'running' THEN ?3 WHEN ?1 = 'cancelling' THEN worker END,"
                      " lease_expires_ms = CASE WHEN ?1 = 'running' THEN ?4"
                      "   WHEN ?1 = 'cancelling' THEN lease_expires_ms END,"
                      " attempts = max(0, attempts + ?5),"
                      " started_ms = CASE WHEN ?1 = 'running' THEN coalesce(started_ms, ?2) ELSE started_ms END,"
                      " finished_ms = CASE WHEN ?1 IN ('succeeded', 'failed', 'cancelled') THEN ?2 END,"
                      " error = CASE WHEN ?1 = 'failed' THEN ?6 END"
                      " WHERE id = ?7 AND state = ?8",
                      &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, state_names[to], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    bind_str(st, 3, worker);
    sqlite3_bind_int64(st, 4, now + lease_ms);
    sqlite3_bind_int(st, 5, attempts_delta);
    bind_str(st, 6, error ? error : (to == DSV4_JOB_FAILED ? "failed" : NULL));
    sqlite3_bind_int64(st, 7, job_id);
    sqlite3_bind_text(st, 8, state_names[from], -1, SQLITE_STATIC);
    if ((rc = step_done(db, st, "change state", err, errlen))) return rc;
    if (sqlite3_changes(db->db) != 1)
        return jobs_err(err, errlen, DSV4_JOBS_ESTATE, "job %lld: is no longer %s", (long long)job_id,
                        state_names[from]);

    json_t *payload = json_pack("{s:s, s:s}", "from", state_names[from], "to", state_names[to]);
    if (payload && worker) json_object_set_new(payload, "worker", json_string(worker));
    if (payload && error) json_object_set_new(payload, "error", json_string(error));
    char *payload_text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    json_decref(payload);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s -> %s%s%s", state_names[from], state_names[to], note ? ": " : "", note ? note : "");
    rc = add_event(db, job_id, "state", to == DSV4_JOB_FAILED ? "error" : "info", msg, payload_text, err, errlen);
    free(payload_text);
    return rc;
}

int dsv4_jobs_set_state(dsv4_jobs *db, int64_t job_id, int to, const char *error, char *err, size_t errlen)
{
    if (!db) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "set_state: no database");
    int from = -1, rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = read_state(db, job_id, &from, NULL, NULL, NULL, err, errlen))) goto fail;
    /* Entering running here holds no real lease: expired at once, so any
     * worker may take the job over. */
    if ((rc = change_state(db, job_id, from, to, NULL, -dsv4_jobs_now_ms(), 0, error, "set by hand", err, errlen)))
        goto fail;
    return jobs_commit(db, err, errlen);
fail:
    jobs_rollback(db);
    return rc;
}

/* ---- submit ---------------------------------------------------------------- */

int dsv4_jobs_submit(dsv4_jobs *db, const dsv4_job_new *job, int64_t *job_id, char *err, size_t errlen)
{
    if (!db || !job || !job_id) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "submit: missing argument");
    if (!job->name || !job->spec_yaml || !job->spec_json)
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "submit: a job needs a name, its YAML and its JSON spec");
    if (job->max_attempts < 1)
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "submit: max_attempts %d is below 1", job->max_attempts);
    *job_id = 0;
    sqlite3_stmt *st = NULL;
    int64_t now = dsv4_jobs_now_ms();
    int rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = jobs_prepare(db,
                           "INSERT INTO jobs (name, state, priority, spec_path, spec_yaml, spec_json, max_attempts,"
                           " created_ms, updated_ms) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                           &st, err, errlen)))
        goto fail;
    bind_str(st, 1, job->name);
    sqlite3_bind_int(st, 2, job->priority);
    bind_str(st, 3, job->spec_path);
    bind_str(st, 4, job->spec_yaml);
    bind_str(st, 5, job->spec_json);
    sqlite3_bind_int(st, 6, job->max_attempts);
    sqlite3_bind_int64(st, 7, now);
    sqlite3_bind_int64(st, 8, now);
    if ((rc = step_done(db, st, "insert job", err, errlen))) goto fail;
    int64_t id = sqlite3_last_insert_rowid(db->db);

    if ((rc = jobs_prepare(db, "INSERT INTO inputs (job_id, position, kind, path, options_json) VALUES (?,?,?,?,?)",
                           &st, err, errlen)))
        goto fail;
    for (size_t i = 0; i < job->n_inputs; i++) {
        const dsv4_job_input_new *in = &job->inputs[i];
        if (!in->kind || !in->path) {
            sqlite3_finalize(st);
            rc = jobs_err(err, errlen, DSV4_JOBS_EINVAL, "submit: input %zu has no kind or path", i);
            goto fail;
        }
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, (int64_t)i);
        bind_str(st, 3, in->kind);
        bind_str(st, 4, in->path);
        bind_str(st, 5, in->options_json ? in->options_json : "{}");
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = jobs_sql_err(db, err, errlen, "insert input");
            sqlite3_finalize(st);
            goto fail;
        }
    }
    sqlite3_finalize(st);

    if ((rc = jobs_prepare(db,
                           "INSERT INTO queries (job_id, position, query_id, prompt, options_json) VALUES (?,?,?,?,?)",
                           &st, err, errlen)))
        goto fail;
    for (size_t i = 0; i < job->n_queries; i++) {
        const dsv4_job_query_new *q = &job->queries[i];
        if (!q->query_id || !q->prompt) {
            sqlite3_finalize(st);
            rc = jobs_err(err, errlen, DSV4_JOBS_EINVAL, "submit: query %zu has no id or prompt", i);
            goto fail;
        }
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, (int64_t)i);
        bind_str(st, 3, q->query_id);
        bind_str(st, 4, q->prompt);
        bind_str(st, 5, q->options_json ? q->options_json : "{}");
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = sqlite3_extended_errcode(db->db) == SQLITE_CONSTRAINT_UNIQUE
                     ? jobs_err(err, errlen, DSV4_JOBS_EINVAL, "submit: duplicate query id '%s'", q->query_id)
                     : jobs_sql_err(db, err, errlen, "insert query");
            sqlite3_finalize(st);
            goto fail;
        }
    }
    sqlite3_finalize(st);

    char msg[256];
    snprintf(msg, sizeof msg, "submitted: %zu inputs, %zu queries, priority %d", job->n_inputs, job->n_queries,
             job->priority);
    if ((rc = add_event(db, id, "submit", "info", msg, NULL, err, errlen))) goto fail;
    if ((rc = jobs_commit(db, err, errlen))) return rc;
    *job_id = id;
    return 0;
fail:
    jobs_rollback(db);
    return rc;
}

/* ---- leases ---------------------------------------------------------------- */

/* Settles every job whose lease has expired (its worker died or hung). */
static int settle_expired(dsv4_jobs *db, int64_t now, char *err, size_t errlen)
{
    enum { BATCH = 64 };
    struct {
        int64_t id;
        int state, attempts, max_attempts;
        char *worker;
    } dead[BATCH];
    size_t n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "SELECT id, state, attempts, max_attempts, worker FROM jobs"
                          " WHERE state IN ('running', 'cancelling')"
                          "   AND (lease_expires_ms IS NULL OR lease_expires_ms < ?) ORDER BY id LIMIT 64",
                          &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, now);
    int s;
    while (n < BATCH && (s = sqlite3_step(st)) == SQLITE_ROW) {
        dead[n].id = sqlite3_column_int64(st, 0);
        dead[n].state = dsv4_job_state_parse((const char *)sqlite3_column_text(st, 1));
        dead[n].attempts = sqlite3_column_int(st, 2);
        dead[n].max_attempts = sqlite3_column_int(st, 3);
        dead[n].worker = col_str(st, 4);
        n++;
    }
    sqlite3_finalize(st);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char note[512];
        const char *w = dead[i].worker ? dead[i].worker : "(none)";
        if (dead[i].state == DSV4_JOB_CANCELLING) {
            snprintf(note, sizeof note, "the lease of worker %s expired while cancelling", w);
            rc = change_state(db, dead[i].id, DSV4_JOB_CANCELLING, DSV4_JOB_CANCELLED, NULL, 0, 0, NULL, note, err,
                              errlen);
        } else if (dead[i].attempts >= dead[i].max_attempts) {
            snprintf(note, sizeof note, "gave up after %d attempts: the lease of worker %s expired (max_attempts %d)",
                     dead[i].attempts, w, dead[i].max_attempts);
            rc = change_state(db, dead[i].id, DSV4_JOB_RUNNING, DSV4_JOB_FAILED, NULL, 0, 0, note, NULL, err,
                              errlen);
        } else {
            snprintf(note, sizeof note, "the lease of worker %s expired during attempt %d; requeued", w,
                     dead[i].attempts);
            rc = change_state(db, dead[i].id, DSV4_JOB_RUNNING, DSV4_JOB_QUEUED, NULL, 0, 0, NULL, note, err, errlen);
        }
    }
    for (size_t i = 0; i < n; i++) free(dead[i].worker);
    return rc;
}

int dsv4_jobs_claim(dsv4_jobs *db, const char *worker, int64_t lease_ms, int64_t *job_id, char *err,
                    size_t errlen)
{
    if (!db || !worker || !*worker || !job_id || lease_ms <= 0)
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "claim: needs a worker id and a positive lease");
    *job_id = 0;
    int64_t now = dsv4_jobs_now_ms(), id = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = settle_expired(db, now, err, errlen))) goto fail;
    if ((rc = jobs_prepare(db, "SELECT id, attempts FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id LIMIT 1",
                           &st, err, errlen)))
        goto fail;
    int s = sqlite3_step(st), attempts = 0;
    if (s == SQLITE_ROW) {
        id = sqlite3_column_int64(st, 0);
        attempts = sqlite3_column_int(st, 1);
    } else if (s != SQLITE_DONE) {
        rc = jobs_sql_err(db, err, errlen, "find a queued job");
    }
    sqlite3_finalize(st);
    if (rc) goto fail;
    if (id) {
        char note[512];
        snprintf(note, sizeof note, "claimed by worker %s (attempt %d)", worker, attempts + 1);
        if ((rc = change_state(db, id, DSV4_JOB_QUEUED, DSV4_JOB_RUNNING, worker, lease_ms, 1, NULL, note, err,
                               errlen)))
            goto fail;
    }
    if ((rc = jobs_commit(db, err, errlen))) return rc;
    *job_id = id;
    return 0;
fail:
    jobs_rollback(db);
    return rc;
}

/* Checks, inside a transaction, that worker holds the job's lease. */
static int check_holder(dsv4_jobs *db, int64_t job_id, const char *worker, int *state, char *err, size_t errlen)
{
    char *holder = NULL;
    int rc = read_state(db, job_id, state, &holder, NULL, NULL, err, errlen);
    if (rc) return rc;
    if ((*state != DSV4_JOB_RUNNING && *state != DSV4_JOB_CANCELLING) || !holder || strcmp(holder, worker) != 0)
        rc = jobs_err(err, errlen, DSV4_JOBS_ELEASE, "job %lld: worker %s no longer holds its lease (state %s, worker %s)",
                      (long long)job_id, worker, dsv4_job_state_name(*state), holder ? holder : "none");
    free(holder);
    return rc;
}

int dsv4_jobs_heartbeat(dsv4_jobs *db, int64_t job_id, const char *worker, int64_t lease_ms, int *state,
                        char *err, size_t errlen)
{
    if (!db || !worker || lease_ms <= 0)
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "heartbeat: needs a worker id and a positive lease");
    int s = -1, rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = check_holder(db, job_id, worker, &s, err, errlen))) goto fail;
    sqlite3_stmt *st = NULL;
    if ((rc = jobs_prepare(db, "UPDATE jobs SET lease_expires_ms = ?, updated_ms = ? WHERE id = ?", &st, err, errlen)))
        goto fail;
    int64_t now = dsv4_jobs_now_ms();
    sqlite3_bind_int64(st, 1, now + lease_ms);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, job_id);
    if ((rc = step_done(db, st, "renew lease", err, errlen))) goto fail;
    if ((rc = jobs_commit(db, err, errlen))) return rc;
    if (state) *state = s;
    return 0;
fail:
    jobs_rollback(db);
    return rc;
}

int dsv4_jobs_release(dsv4_jobs *db, int64_t job_id, const char *worker, char *err, size_t errlen)
{
    if (!db || !worker) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "release: needs a worker id");
    int s = -1, rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = check_holder(db, job_id, worker, &s, err, errlen))) goto fail;
    char note[512];
    snprintf(note, sizeof note, "released by worker %s", worker);
    if (s == DSV4_JOB_CANCELLING)
        rc = change_state(db, job_id, s, DSV4_JOB_CANCELLED, NULL, 0, 0, NULL, note, err, errlen);
    else
        rc = change_state(db, job_id, s, DSV4_JOB_QUEUED, NULL, 0, -1, NULL, note, err, errlen);
    if (rc) goto fail;
    return jobs_commit(db, err, errlen);
fail:
    jobs_rollback(db);
    return rc;
}

int dsv4_jobs_finish(dsv4_jobs *db, int64_t job_id, const char *worker, int state, const char *error, char *err,
                     size_t errlen)
{
    if (!db || !worker) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "finish: needs a worker id");
    if (!dsv4_job_state_is_final(state))
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "finish: %s is not a final state", dsv4_job_state_name(state));
    int s = -1, rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = check_holder(db, job_id, worker, &s, err, errlen))) goto fail;
    if ((rc = change_state(db, job_id, s, state, NULL, 0, 0, error, NULL, err, errlen))) goto fail;
    return jobs_commit(db, err, errlen);
fail:
    jobs_rollback(db);
    return rc;
}

int dsv4_jobs_cancel(dsv4_jobs *db, int64_t job_id, int *state, char *err, size_t errlen)
{
    if (!db) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "cancel: no database");
    int s = -1, to = -1, rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = read_state(db, job_id, &s, NULL, NULL, NULL, err, errlen))) goto fail;
    to = s == DSV4_JOB_QUEUED ? DSV4_JOB_CANCELLED : s == DSV4_JOB_RUNNING ? DSV4_JOB_CANCELLING : s;
    if (s == DSV4_JOB_CANCELLING) {
        to = s; /* asked twice: nothing more to do */
    } else if (dsv4_job_state_is_final(s)) {
        rc = change_state(db, job_id, s, DSV4_JOB_CANCELLED, NULL, 0, 0, NULL, NULL, err, errlen);
        goto fail; /* always an error: a final state has no way out */
    } else if ((rc = change_state(db, job_id, s, to, NULL, 0, 0, NULL, "cancel requested", err, errlen))) {
        goto fail;
    }
    if ((rc = jobs_commit(db, err, errlen))) return rc;
    if (state) *state = to;
    return 0;
fail:
    jobs_rollback(db);
    return rc;
}

/* ---- reading jobs ---------------------------------------------------------- */

#define JOB_COLUMNS                                                                                           \
    "id, name, state, priority, attempts, max_attempts, worker, lease_expires_ms, created_ms, started_ms,"     \
    " finished_ms, updated_ms, error, spec_path,"                                                             \
    " (SELECT count(*) FROM queries q WHERE q.job_id = jobs.id),"                                             \
    " (SELECT count(*) FROM results r WHERE r.job_id = jobs.id)"

static void read_job_row(sqlite3_stmt *st, dsv4_job_info *j)
{
    memset(j, 0, sizeof *j);
    j->id = sqlite3_column_int64(st, 0);
    j->name = col_str(st, 1);
    j->state = dsv4_job_state_parse((const char *)sqlite3_column_text(st, 2));
    j->priority = sqlite3_column_int(st, 3);
    j->attempts = sqlite3_column_int(st, 4);
    j->max_attempts = sqlite3_column_int(st, 5);
    j->worker = col_str(st, 6);
    j->lease_expires_ms = sqlite3_column_int64(st, 7);
    j->created_ms = sqlite3_column_int64(st, 8);
    j->started_ms = sqlite3_column_int64(st, 9);
    j->finished_ms = sqlite3_column_int64(st, 10);
    j->updated_ms = sqlite3_column_int64(st, 11);
    j->error = col_str(st, 12);
    j->spec_path = col_str(st, 13);
    j->n_queries = sqlite3_column_int64(st, 14);
    j->n_results = sqlite3_column_int64(st, 15);
}

int dsv4_jobs_get(dsv4_jobs *db, int64_t job_id, dsv4_job_info *out, char *err, size_t errlen)
{
    if (!db || !out) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "get: missing argument");
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db, "SELECT " JOB_COLUMNS ", spec_yaml, spec_json FROM jobs WHERE id = ?", &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        read_job_row(st, out);
        out->spec_yaml = col_str(st, 16);
        out->spec_json = col_str(st, 17);
    } else if (s == SQLITE_DONE) {
        rc = jobs_err(err, errlen, DSV4_JOBS_ENOTFOUND, "no job %lld", (long long)job_id);
    } else {
        rc = jobs_sql_err(db, err, errlen, "read job");
    }
    sqlite3_finalize(st);
    return rc;
}

void dsv4_job_info_clear(dsv4_job_info *j)
{
    if (!j) return;
    free(j->name);
    free(j->worker);
    free(j->error);
    free(j->spec_path);
    free(j->spec_yaml);
    free(j->spec_json);
    memset(j, 0, sizeof *j);
}

/* Grows *arr (of elem bytes) to hold one more; 0 or -1. */
static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, nc * elem);
    if (!p) return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

typedef void (*row_reader)(sqlite3_stmt *st, void *row);
typedef void (*rows_freer)(void *rows, size_t n);

/* Steps the prepared statement st to its end, one zeroed elem-byte row per
 * result row filled by read_row, and finalizes st. On failure frees the
 * rows read so far and returns the error: "WHAT: out of memory", or
 * SQLite's message for sql_what. Every list reader below is this loop. */
static int read_rows(dsv4_jobs *db, sqlite3_stmt *st, size_t elem, row_reader read_row, rows_freer free_rows,
                     const char *what, const char *sql_what, void **out, size_t *n, char *err, size_t errlen)
{
    void *v = NULL;
    size_t cap = 0, cnt = 0;
    int rc = 0, s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow(&v, &cap, cnt, elem)) {
            rc = jobs_err(err, errlen, DSV4_JOBS_ENOMEM, "%s: out of memory", what);
            break;
        }
        void *row = (char *)v + cnt++ * elem;
        memset(row, 0, elem);
        read_row(st, row);
    }
    if (!rc && s != SQLITE_DONE) rc = jobs_sql_err(db, err, errlen, sql_what);
    sqlite3_finalize(st);
    if (rc) {
        free_rows(v, cnt);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

static void read_jobs_row(sqlite3_stmt *st, void *row) { read_job_row(st, row); }

static void free_jobs_rows(void *rows, size_t n) { dsv4_jobs_list_free(rows, n); }

static void read_inputs_row(sqlite3_stmt *st, void *row)
{
    dsv4_job_input *in = row;
    in->position = sqlite3_column_int64(st, 0);
    in->kind = col_str(st, 1);
    in->path = col_str(st, 2);
    in->options_json = col_str(st, 3);
}

static void free_inputs_rows(void *rows, size_t n) { dsv4_jobs_inputs_free(rows, n); }

static void read_queries_row(sqlite3_stmt *st, void *row)
{
    dsv4_job_query *q = row;
    q->position = sqlite3_column_int64(st, 0);
    q->query_id = col_str(st, 1);
    q->prompt = col_str(st, 2);
    q->options_json = col_str(st, 3);
}

static void free_queries_rows(void *rows, size_t n) { dsv4_jobs_queries_free(rows, n); }

static void read_results_row(sqlite3_stmt *st, void *row)
{
    dsv4_job_result *r = row;
    r->query_id = col_str(st, 0);
    r->text = col_str(st, 1);
    r->reasoning = col_str(st, 2);
    r->finish_reason = col_str(st, 3);
    r->prompt_tokens = sqlite3_column_int64(st, 4);
    r->cached_tokens = sqlite3_column_int64(st, 5);
    r->generated_tokens = sqlite3_column_int64(st, 6);
    r->prefill_ms = sqlite3_column_double(st, 7);
    r->decode_ms = sqlite3_column_double(st, 8);
    r->total_ms = sqlite3_column_double(st, 9);
    r->error = col_str(st, 10);
    r->attempt = sqlite3_column_int(st, 11);
    r->created_ms = sqlite3_column_int64(st, 12);
}

static void free_results_rows(void *rows, size_t n) { dsv4_jobs_results_free(rows, n); }

static void read_events_row(sqlite3_stmt *st, void *row)
{
    dsv4_job_event *e = row;
    e->id = sqlite3_column_int64(st, 0);
    e->job_id = sqlite3_column_int64(st, 1);
    e->time_ms = sqlite3_column_int64(st, 2);
    e->stage = col_str(st, 3);
    e->level = col_str(st, 4);
    e->message = col_str(st, 5);
    e->payload_json = col_str(st, 6);
}

static void free_events_rows(void *rows, size_t n) { dsv4_jobs_events_free(rows, n); }

static void read_progress_row(sqlite3_stmt *st, void *row)
{
    dsv4_job_progress *p = row;
    p->stage = col_str(st, 0);
    p->done = sqlite3_column_double(st, 1);
    p->total = sqlite3_column_double(st, 2);
    p->unit = col_str(st, 3);
    p->rate = sqlite3_column_double(st, 4);
    p->updated_ms = sqlite3_column_int64(st, 5);
}

static void free_progress_rows(void *rows, size_t n) { dsv4_jobs_progress_free(rows, n); }

int dsv4_jobs_list(dsv4_jobs *db, int state, int limit, dsv4_job_info **out, size_t *n, char *err, size_t errlen)
{
    if (!db || !out || !n) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "list: missing argument");
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "SELECT " JOB_COLUMNS " FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
                          &st, err, errlen);
    if (rc) return rc;
    if (state >= 0 && state < DSV4_JOB_N_STATES) sqlite3_bind_text(st, 1, state_names[state], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, limit > 0 ? limit : -1);
    return read_rows(db, st, sizeof(dsv4_job_info), read_jobs_row, free_jobs_rows, "list", "list jobs",
                     (void **)out, n, err, errlen);
}

void dsv4_jobs_list_free(dsv4_job_info *jobs, size_t n)
{
    for (size_t i = 0; jobs && i < n; i++) dsv4_job_info_clear(&jobs[i]);
    free(jobs);
}

int dsv4_jobs_count(dsv4_jobs *db, int64_t counts[DSV4_JOB_N_STATES], char *err, size_t errlen)
{
    if (!db || !counts) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "count: missing argument");
    memset(counts, 0, sizeof(int64_t) * DSV4_JOB_N_STATES);
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db, "SELECT state, count(*) FROM jobs GROUP BY state", &st, err, errlen);
    if (rc) return rc;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        int k = dsv4_job_state_parse((const char *)sqlite3_column_text(st, 0));
        if (k >= 0) counts[k] = sqlite3_column_int64(st, 1);
    }
    if (s != SQLITE_DONE) rc = jobs_sql_err(db, err, errlen, "count jobs");
    sqlite3_finalize(st);
    return rc;
}

int dsv4_jobs_inputs(dsv4_jobs *db, int64_t job_id, dsv4_job_input **out, size_t *n, char *err, size_t errlen)
{
    if (!db || !out || !n) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "inputs: missing argument");
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db, "SELECT position, kind, path, options_json FROM inputs WHERE job_id = ? ORDER BY position",
                          &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    return read_rows(db, st, sizeof(dsv4_job_input), read_inputs_row, free_inputs_rows, "inputs", "read inputs",
                     (void **)out, n, err, errlen);
}

void dsv4_jobs_inputs_free(dsv4_job_input *in, size_t n)
{
    for (size_t i = 0; in && i < n; i++) {
        free(in[i].kind);
        free(in[i].path);
        free(in[i].options_json);
    }
    free(in);
}

int dsv4_jobs_queries(dsv4_jobs *db, int64_t job_id, int pending_only, dsv4_job_query **out, size_t *n, char *err,
                      size_t errlen)
{
    if (!db || !out || !n) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "queries: missing argument");
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "SELECT position, query_id, prompt, options_json FROM queries q WHERE job_id = ?1"
                          " AND (?2 = 0 OR NOT EXISTS (SELECT 1 FROM results r"
                          "   WHERE r.job_id = q.job_id AND r.query_id = q.query_id))"
                          " ORDER BY position",
                          &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_int(st, 2, pending_only ? 1 : 0);
    return read_rows(db, st, sizeof(dsv4_job_query), read_queries_row, free_queries_rows, "queries", "read queries",
                     (void **)out, n, err, errlen);
}

void dsv4_jobs_queries_free(dsv4_job_query *q, size_t n)
{
    for (size_t i = 0; q && i < n; i++) {
        free(q[i].query_id);
        free(q[i].prompt);
        free(q[i].options_json);
    }
    free(q);
}

/* ---- results --------------------------------------------------------------- */

int dsv4_jobs_result_put(dsv4_jobs *db, int64_t job_id, const dsv4_job_result *r, int *inserted, char *err,
                         size_t errlen)
{
    if (!db || !r || !r->query_id) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "result_put: missing argument");
    if (inserted) *inserted = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = jobs_prepare(db, "SELECT 1 FROM queries WHERE job_id = ? AND query_id = ?", &st, err, errlen))) goto fail;
    sqlite3_bind_int64(st, 1, job_id);
    bind_str(st, 2, r->query_id);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    if (s != SQLITE_ROW) {
        rc = s == SQLITE_DONE ? jobs_err(err, errlen, DSV4_JOBS_EINVAL, "job %lld has no query '%s'",
                                         (long long)job_id, r->query_id)
                              : jobs_sql_err(db, err, errlen, "find query");
        goto fail;
    }
    if ((rc = jobs_prepare(db,
                           "INSERT INTO results (job_id, query_id, text, reasoning, finish_reason, prompt_tokens,"
                           " cached_tokens, generated_tokens, prefill_ms, decode_ms, total_ms, error, attempt,"
                           " created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,"
                           " (SELECT attempts FROM jobs WHERE id = ?1), ?13)"
                           " ON CONFLICT (job_id, query_id) DO NOTHING",
                           &st, err, errlen)))
        goto fail;
    sqlite3_bind_int64(st, 1, job_id);
    bind_str(st, 2, r->query_id);
    bind_str(st, 3, r->text);
    bind_str(st, 4, r->reasoning);
    bind_str(st, 5, r->finish_reason);
    sqlite3_bind_int64(st, 6, r->prompt_tokens);
    sqlite3_bind_int64(st, 7, r->cached_tokens);
    sqlite3_bind_int64(st, 8, r->generated_tokens);
    sqlite3_bind_double(st, 9, r->prefill_ms);
    sqlite3_bind_double(st, 10, r->decode_ms);
    sqlite3_bind_double(st, 11, r->total_ms);
    bind_str(st, 12, r->error);
    sqlite3_bind_int64(st, 13, dsv4_jobs_now_ms());
    if ((rc = step_done(db, st, "store result", err, errlen))) goto fail;
    int ins = sqlite3_changes(db->db) == 1;
    if ((rc = jobs_commit(db, err, errlen))) return rc;
    if (inserted) *inserted = ins;
    return 0;
fail:
    jobs_rollback(db);
    return rc;
}

int dsv4_jobs_results(dsv4_jobs *db, int64_t job_id, dsv4_job_result **out, size_t *n, char *err, size_t errlen)
{
    if (!db || !out || !n) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "results: missing argument");
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "SELECT r.query_id, r.text, r.reasoning, r.finish_reason, r.prompt_tokens, r.cached_tokens,"
                          " r.generated_tokens, r.prefill_ms, r.decode_ms, r.total_ms, r.error, r.attempt, r.created_ms"
                          " FROM results r JOIN queries q ON q.job_id = r.job_id AND q.query_id = r.query_id"
                          " WHERE r.job_id = ? ORDER BY q.position",
                          &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    return read_rows(db, st, sizeof(dsv4_job_result), read_results_row, free_results_rows, "results", "read results",
                     (void **)out, n, err, errlen);
}

void dsv4_jobs_results_free(dsv4_job_result *r, size_t n)
{
    for (size_t i = 0; r && i < n; i++) {
        free(r[i].query_id);
        free(r[i].text);
        free(r[i].reasoning);
        free(r[i].finish_reason);
        free(r[i].error);
    }
    free(r);
}

/* ---- events and progress --------------------------------------------------- */

int dsv4_jobs_event_add(dsv4_jobs *db, int64_t job_id, const char *stage, const char *level, const char *message,
                        const char *payload_json, char *err, size_t errlen)
{
    if (!db || !stage || !level || !message)
        return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "event_add: needs a stage, a level and a message");
    int rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = add_event(db, job_id, stage, level, message, payload_json, err, errlen))) {
        jobs_rollback(db);
        return rc;
    }
    return jobs_commit(db, err, errlen);
}

int dsv4_jobs_events(dsv4_jobs *db, int64_t job_id, int64_t after_id, int limit, dsv4_job_event **out, size_t *n,
                     char *err, size_t errlen)
{
    if (!db || !out || !n) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "events: missing argument");
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "SELECT * FROM (SELECT id, job_id, time_ms, stage, level, message, payload_json FROM events"
                          " WHERE job_id = ?1 AND id > ?2 ORDER BY id DESC LIMIT ?3) ORDER BY id",
                          &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_int64(st, 2, after_id);
    sqlite3_bind_int64(st, 3, limit > 0 ? limit : -1);
    return read_rows(db, st, sizeof(dsv4_job_event), read_events_row, free_events_rows, "events", "read events",
                     (void **)out, n, err, errlen);
}

void dsv4_jobs_events_free(dsv4_job_event *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++) {
        free(e[i].stage);
        free(e[i].level);
        free(e[i].message);
        free(e[i].payload_json);
    }
    free(e);
}

int dsv4_jobs_progress_set(dsv4_jobs *db, int64_t job_id, const dsv4_job_progress *p, char *err, size_t errlen)
{
    if (!db || !p || !p->stage) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "progress_set: needs a stage");
    sqlite3_stmt *st = NULL;
    int rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = jobs_prepare(db,
                           "INSERT INTO progress (job_id, stage, done, total, unit, rate, started_ms, updated_ms)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)"
                           " ON CONFLICT (job_id, stage) DO UPDATE SET done = excluded.done, total = excluded.total,"
                           " unit = excluded.unit, rate = excluded.rate, updated_ms = excluded.updated_ms",
                           &st, err, errlen)))
        goto fail;
    sqlite3_bind_int64(st, 1, job_id);
    bind_str(st, 2, p->stage);
    sqlite3_bind_double(st, 3, p->done);
    sqlite3_bind_double(st, 4, p->total);
    bind_str(st, 5, p->unit ? p->unit : "");
    sqlite3_bind_double(st, 6, p->rate);
    sqlite3_bind_int64(st, 7, dsv4_jobs_now_ms());
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = sqlite3_extended_errcode(db->db) == SQLITE_CONSTRAINT_FOREIGNKEY
                 ? jobs_err(err, errlen, DSV4_JOBS_ENOTFOUND, "no job %lld", (long long)job_id)
                 : jobs_sql_err(db, err, errlen, "set progress");
        sqlite3_finalize(st);
        goto fail;
    }
    sqlite3_finalize(st);
    return jobs_commit(db, err, errlen);
fail:
    jobs_rollback(db);
    return rc;
}

int dsv4_jobs_progress(dsv4_jobs *db, int64_t job_id, dsv4_job_progress **out, size_t *n, char *err, size_t errlen)
{
    if (!db || !out || !n) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "progress: missing argument");
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db,
                          "SELECT stage, done, total, unit, rate, updated_ms FROM progress WHERE job_id = ?"
                          " ORDER BY started_ms, stage",
                          &st, err, errlen);
    if (rc) return rc;
    sqlite3_bind_int64(st, 1, job_id);
    return read_rows(db, st, sizeof(dsv4_job_progress), read_progress_row, free_progress_rows, "progress", "read progress",
                     (void **)out, n, err, errlen);
}

void dsv4_jobs_progress_free(dsv4_job_progress *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].stage);
        free(p[i].unit);
    }
    free(p);
}
