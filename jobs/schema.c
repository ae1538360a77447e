/* Opening jobs.db and migrating its schema forward.
 *
 * The schema version is PRAGMA user_version. migrations[i] takes a file from
 * version i to i + 1; a new version appends one entry and never edits an old
 * one, because files in the field were made by the old text. All migrations
 * due run in one BEGIN IMMEDIATE transaction that re-reads user_version, so
 * several processes opening a fresh file at once migrate it exactly once.
 * docs/job-store.md describes every table. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/internal.h"

static const char *const migrations[] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE jobs ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN"
    "    ('queued','running','cancelling','succeeded','failed','cancelled')),"
    "  priority INTEGER NOT NULL DEFAULT 0,"
    "  spec_path TEXT,"
    "  spec_yaml TEXT NOT NULL,"
    "  spec_json TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),"
    "  worker TEXT,"
    "  lease_expires_ms INTEGER,"
    "  error TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER,"
    "  finished_ms INTEGER,"
    "  updated_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX jobs_by_state ON jobs (state, priority DESC, id);"
    "CREATE TABLE inputs ("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  position INTEGER NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  options_json TEXT NOT NULL DEFAULT '{}',"
    "  UNIQUE (job_id, position)"
    ");"
    "CREATE TABLE queries ("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  position INTEGER NOT NULL,"
    "  query_id TEXT NOT NULL,"
    "  prompt TEXT NOT NULL,"
    "  options_json TEXT NOT NULL DEFAULT '{}',"
    "  UNIQUE (job_id, query_id),"
    "  UNIQUE (job_id, position)"
    ");"
    "CREATE TABLE results ("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  query_id TEXT NOT NULL,"
    "  text TEXT,"
    "  reasoning TEXT,"
    "  finish_reason TEXT,"
    "  prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    "  cached_tokens INTEGER NOT NULL DEFAULT 0,"
    "  generated_tokens INTEGER NOT NULL DEFAULT 0,"
    "  prefill_ms REAL NOT NULL DEFAULT 0,"
    "  decode_ms REAL NOT NULL DEFAULT 0,"
    "  total_ms REAL NOT NULL DEFAULT 0,"
    "  error TEXT,"
    "  attempt INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  UNIQUE (job_id, query_id),"
    "  FOREIGN KEY (job_id, query_id) REFERENCES queries (job_id, query_id)"
    ");"
    "CREATE TABLE events ("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE,"
    "  time_ms INTEGER NOT NULL,"
    "  stage TEXT NOT NULL,"
    "  level TEXT NOT NULL CHECK (level IN ('debug','info','warn','error')),"
    "  message TEXT NOT NULL,"
    "  payload_json TEXT"
    ");"
    "CREATE TRIGGER events_append_only BEFORE UPDATE ON events"
    "  BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;",

    /* 1 -> 2: live progress per job and stage (read by `status` while a
     * worker in another process runs the job), and an index so a job's
     * events are found without scanning the whole log. */
    "CREATE TABLE progress ("
    "  job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  stage TEXT NOT NULL,"
    "  done REAL NOT NULL DEFAULT 0,"
    "  total REAL NOT NULL DEFAULT 0,"
    "  unit TEXT NOT NULL DEFAULT '',"
    "  rate REAL NOT NULL DEFAULT 0,"
    "  started_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (job_id, stage)"
    ");"
    "CREATE INDEX events_by_job ON events (job_id, id);",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == DSV4_JOBS_SCHEMA_VERSION,
               "one migration per schema version");

int jobs_err(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int jobs_sql_err(dsv4_jobs *db, char *err, size_t errlen, const char *what)
{
    return jobs_err(err, errlen, DSV4_JOBS_ESQL, "%s: %s: %s", db->path, what, sqlite3_errmsg(db->db));
}

int jobs_begin(dsv4_jobs *db, char *err, size_t errlen)
{
    if (sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return jobs_sql_err(db, err, errlen, "begin transaction");
    return 0;
}

int jobs_commit(dsv4_jobs *db, char *err, size_t errlen)
{
    if (sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = jobs_sql_err(db, err, errlen, "commit");
        jobs_rollback(db);
        return rc;
    }
    return 0;
}

void jobs_rollback(dsv4_jobs *db)
{
    if (!sqlite3_get_autocommit(db->db)) sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
}

int jobs_prepare(dsv4_jobs *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen)
{
    if (sqlite3_prepare_v2(db->db, sql, -1, st, NULL) != SQLITE_OK) {
        *st = NULL;
        return jobs_sql_err(db, err, errlen, "prepare");
    }
    return 0;
}

static int read_version(dsv4_jobs *db, int *version, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db, "PRAGMA user_version", &st, err, errlen);
    if (rc) return rc;
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = jobs_sql_err(db, err, errlen, "read the schema version");
        sqlite3_finalize(st);
        return rc;
    }
    *version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return 0;
}

int dsv4_jobs_schema_version(dsv4_jobs *db, int *version, char *err, size_t errlen)
{
    if (!db || !version) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "schema_version: no database");
    return read_version(db, version, err, errlen);
}

static int migrate(dsv4_jobs *db, char *err, size_t errlen)
{
    int version = 0, rc = jobs_begin(db, err, errlen);
    if (rc) return rc;
    if ((rc = read_version(db, &version, err, errlen))) goto fail;
    if (version > DSV4_JOBS_SCHEMA_VERSION) {
        rc = jobs_err(err, errlen, DSV4_JOBS_EVERSION,
                      "%s: schema version %d is newer than this program's (%d); use a newer dsv4-batch",
                      db->path, version, DSV4_JOBS_SCHEMA_VERSION);
        goto fail;
    }
    if (version < 0) {
        rc = jobs_err(err, errlen, DSV4_JOBS_EVERSION, "%s: bad schema version %d", db->path, version);
        goto fail;
    }
    for (int v = version; v < DSV4_JOBS_SCHEMA_VERSION; v++) {
        if (sqlite3_exec(db->db, migrations[v], NULL, NULL, NULL) != SQLITE_OK) {
            char what[64];
            snprintf(what, sizeof what, "migrate schema %d -> %d", v, v + 1);
            rc = jobs_sql_err(db, err, errlen, what);
            goto fail;
        }
    }
    if (version != DSV4_JOBS_SCHEMA_VERSION) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", DSV4_JOBS_SCHEMA_VERSION);
        if (sqlite3_exec(db->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
            rc = jobs_sql_err(db, err, errlen, "set the schema version");
            goto fail;
        }
    }
    return jobs_commit(db, err, errlen);
fail:
    jobs_rollback(db);
    return rc;
}

static int set_wal(dsv4_jobs *db, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = jobs_prepare(db, "PRAGMA journal_mode = WAL", &st, err, errlen);
    if (rc) return rc;
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = jobs_sql_err(db, err, errlen, "set WAL mode");
    } else {
        const char *mode = (const char *)sqlite3_column_text(st, 0);
        if (!mode || strcmp(mode, "wal") != 0)
            rc = jobs_err(err, errlen, DSV4_JOBS_ESQL, "%s: cannot use WAL mode (journal mode is %s)", db->path,
                          mode ? mode : "unknown");
    }
    sqlite3_finalize(st);
    return rc;
}

int dsv4_jobs_open(const char *path, dsv4_jobs **out, char *err, size_t errlen)
{
    if (!path || !out) return jobs_err(err, errlen, DSV4_JOBS_EINVAL, "jobs_open: no path");
    *out = NULL;
    int rc;
    dsv4_jobs *db = calloc(1, sizeof *db);
    if (!db || !(db->path = strdup(path))) {
        rc = jobs_err(err, errlen, DSV4_JOBS_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (sqlite3_open_v2(path, &db->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        rc = db->db ? jobs_sql_err(db, err, errlen, "open")
                    : jobs_err(err, errlen, DSV4_JOBS_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    sqlite3_extended_result_codes(db->db, 1);
    /* Workers hold the write lock for milliseconds; 30 s of waiting means
     * something is wrong and deserves an error rather than a hang. */
    sqlite3_busy_timeout(db->db, 30000);
    if ((rc = set_wal(db, err, errlen))) goto fail;
    /* NORMAL is safe in WAL mode: a power cut can lose the last commits
     * (recomputed on resume), never corrupt the file. */
    if (sqlite3_exec(db->db, "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL", NULL, NULL, NULL) !=
        SQLITE_OK) {
        rc = jobs_sql_err(db, err, errlen, "set pragmas");
        goto fail;
    }
    if ((rc = migrate(db, err, errlen))) goto fail;
    *out = db;
    return 0;
fail:
    dsv4_jobs_close(db);
    return rc;
}

void dsv4_jobs_close(dsv4_jobs *db)
{
    if (!db) return;
    if (db->db) sqlite3_close_v2(db->db);
    free(db->path);
    free(db);
}
