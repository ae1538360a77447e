/* The home directory: where dsv4-batch keeps its state (jobs.db, the prefix
 * cache in cache/, generated models). Chosen in this order: --home DIR,
 * $DSV4_HOME, $XDG_DATA_HOME/dsv4-batch, $HOME/.local/share/dsv4-batch
 * (the XDG default). Created on first use. */
#ifndef DSV4_HOME_H
#define DSV4_HOME_H

#include <stddef.h>

#include "jobs/dsv4_jobs.h"

typedef struct dsv4_home {
    char *dir;       /* absolute */
    char *cache_dir; /* dir/cache */
    char *db_path;   /* dir/jobs.db */
    dsv4_jobs *db;   /* open, migrated */
} dsv4_home;

/* The home directory that opt_home (may be NULL) and the environment name,
 * made absolute, into a new string (caller frees). NULL with a message in
 * err when neither a home nor $HOME is known. */
char *dsv4_home_resolve(const char *opt_home, char *err, size_t errlen);

/* Resolves, creates DIR and DIR/cache (mode 0700 for new directories, as the
 * database holds the prompts and answers), opens DIR/jobs.db. Returns 0 or a
 * negative code with a message naming the path. */
int dsv4_home_open(const char *opt_home, dsv4_home *home, char *err, size_t errlen);
/* Closes the database and frees the paths; accepts NULL. */
void dsv4_home_close(dsv4_home *home);

#endif
