/* Finding and creating the home directory (see home.h for the order). The
 * directory is made with every missing parent, like mkdir -p, so a fresh
 * --home /tmp/x/y works; the path is made absolute first so that workers
 * started from other directories find the same database. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/home.h"

char *dsv4_home_resolve(const char *opt_home, char *err, size_t errlen)
{
    const char *env = getenv("DSV4_HOME"), *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    char *dir = NULL;
    int ok = 0;
    if (opt_home && *opt_home) ok = asprintf(&dir, "%s", opt_home);
    else if (env && *env) ok = asprintf(&dir, "%s", env);
    else if (xdg && *xdg == '/') ok = asprintf(&dir, "%s/dsv4-batch", xdg);
    else if (home && *home) ok = asprintf(&dir, "%s/.local/share/dsv4-batch", home);
    else {
        snprintf(err, errlen, "no home directory: pass --home DIR or set DSV4_HOME");
        return NULL;
    }
    if (ok < 0) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (dir[0] != '/') {
        char cwd[PATH_MAX], *abs = NULL;
        if (!getcwd(cwd, sizeof cwd) || asprintf(&abs, "%s/%s", cwd, dir) < 0) {
            snprintf(err, errlen, "%s: cannot make the path absolute", dir);
            free(dir);
            return NULL;
        }
        free(dir);
        dir = abs;
    }
    size_t l = strlen(dir);
    while (l > 1 && dir[l - 1] == '/') dir[--l] = 0;
    return dir;
}

/* mkdir -p */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char *p = strdup(path);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            struct stat st;
            if (mkdir(p, 0700) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: cannot create directory: %s", p, strerror(errno));
                rc = -1;
                break;
            }
            if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
                snprintf(err, errlen, "%s: not a directory", p);
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

int dsv4_home_open(const char *opt_home, dsv4_home *h, char *err, size_t errlen)
{
    memset(h, 0, sizeof *h);
    int rc = -1;
    if (!(h->dir = dsv4_home_resolve(opt_home, err, errlen))) goto fail;
    if (asprintf(&h->cache_dir, "%s/cache", h->dir) < 0) { h->cache_dir = NULL; goto oom; }
    if (asprintf(&h->db_path, "%s/jobs.db", h->dir) < 0) { h->db_path = NULL; goto oom; }
    if (make_dirs(h->dir, err, errlen) || make_dirs(h->cache_dir, err, errlen)) goto fail;
    if ((rc = dsv4_jobs_open(h->db_path, &h->db, err, errlen))) goto fail;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    dsv4_home_close(h);
    return rc ? rc : -1;
}

void dsv4_home_close(dsv4_home *h)
{
    if (!h) return;
    dsv4_jobs_close(h->db);
    free(h->dir);
    free(h->cache_dir);
    free(h->db_path);
    memset(h, 0, sizeof *h);
}
