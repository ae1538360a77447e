/* Private to jobs/: the handle and the small helpers shared by schema.c
 * (opening, migrations) and jobs.c (everything a job goes through). */
#ifndef DSV4_JOBS_INTERNAL_H
#define DSV4_JOBS_INTERNAL_H

#include <sqlite3.h>

#include "jobs/dsv4_jobs.h"

struct dsv4_jobs {
    sqlite3 *db;
    char *path; /* for messages */
};

/* Writes a message into err (printf-style); returns code. */
int jobs_err(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* DSV4_JOBS_ESQL with "PATH: WHAT: sqlite's message". */
int jobs_sql_err(dsv4_jobs *db, char *err, size_t errlen, const char *what);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. Every write runs in one short
 * immediate transaction so the write lock is taken up front (waiting on the
 * busy timeout) instead of failing half way on a stale WAL snapshot. */
int jobs_begin(dsv4_jobs *db, char *err, size_t errlen);
int jobs_commit(dsv4_jobs *db, char *err, size_t errlen);
void jobs_rollback(dsv4_jobs *db);

int jobs_prepare(dsv4_jobs *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen);

#endif
