/* Glob matching for include/exclude options and .gitignore rules.
 *
 * The syntax is git's wildmatch with path semantics: `*` and `?` never match
 * `/`, `**` between slashes (or at either end) matches any number of whole
 * directories including none, `[...]` classes with `!`/`^` negation and
 * ranges, `\` escapes. The matcher is recursive only at stars and uses the
 * two "abort" results of git's algorithm (no match is possible for any later
 * start position / for any start before the next `**`), which keeps it
 * polynomial on adversarial patterns; lengths are capped as well so a fuzzed
 * pattern cannot take long. */
#include <string.h>

#include "ingest/ingest_internal.h"

enum { NOMATCH = 0, MATCH = 1, ABORT_ALL = -1, ABORT_TO_STARSTAR = -2 };

/* Matches one [...] class at *pp against ch; advances *pp past it.
 * Returns 1 match, 0 no match, -1 malformed (no closing bracket). */
static int match_class(const char **pp, unsigned char ch)
{
    const char *p = *pp + 1; /* after '[' */
    int negate = 0, matched = 0;
    if (*p == '!' || *p == '^') {
        negate = 1;
        p++;
    }
    const char *start = p;
    while (*p && (*p != ']' || p == start)) {
        unsigned char lo = (unsigned char)*p;
        if (lo == '\\' && p[1]) lo = (unsigned char)*++p;
        if (p[1] == '-' && p[2] && p[2] != ']') {
            unsigned char hi = (unsigned char)p[2];
            p += 2;
            if (hi == '\\' && p[1]) hi = (unsigned char)*++p;
            if (ch >= lo && ch <= hi) matched = 1;
        } else if (ch == lo) {
            matched = 1;
        }
        p++;
    }
    if (*p != ']') return -1;
    *pp = p; /* on the ']' */
    return matched != negate;
}

static int wm(const char *p, const char *t)
{
    for (; *p; p++, t++) {
        if (!*t && *p != '*') return ABORT_ALL;
        switch (*p) {
        case '\\':
            if (p[1]) p++;
            if (*t != *p) return NOMATCH;
            break;
        case '?':
            if (*t == '/') return NOMATCH;
            break;
        case '[': {
            if (*t == '/') return NOMATCH;
            const char *q = p;
            int r = match_class(&q, (unsigned char)*t);
            if (r < 0) { /* no closing bracket: a literal '[' */
                if (*t != '[') return NOMATCH;
                break;
            }
            if (!r) return NOMATCH;
            p = q;
            break;
        }
        case '*': {
            int match_slash = 0;
            const char *prev = p;
            if (p[1] == '*') {
                while (p[1] == '*') p++;
                /* p is on the last star of the run */
                int at_start = (prev == NULL) || prev[-1] == '/' || prev[-1] == '\0';
                if (at_start && (p[1] == '\0' || p[1] == '/')) {
                    match_slash = 1;
                    if (p[1] == '/') {
                        /* "**" + "/" may match no directory at all */
                        int r = wm(p + 2, t);
                        if (r == MATCH) return MATCH;
                    }
                }
            }
            p++;
            if (*p == '\0') {
                if (!match_slash && strchr(t, '/')) return ABORT_TO_STARSTAR;
                return MATCH;
            }
            for (;; t++) {
                if (*t == '\0') return ABORT_ALL;
                int r = wm(p, t);
                if (r != NOMATCH) {
                    if (!match_slash || r != ABORT_TO_STARSTAR) return r;
                } else if (!match_slash && *t == '/') {
                    return ABORT_TO_STARSTAR;
                }
            }
        }
        default:
            if (*t != *p) return NOMATCH;
        }
    }
    return *t ? NOMATCH : MATCH;
}

int dsv4_ingest_glob_match(const char *pattern, const char *path)
{
    if (!pattern || !path) return 0;
    if (strlen(pattern) > 1024 || strlen(path) > 4096) return 0;
    /* The matcher looks one byte back from a star run to know whether it
     * starts a path segment; a leading NUL sentinel makes that safe. */
    char pat[1026];
    pat[0] = '\0';
    strcpy(pat + 1, pattern);
    return wm(pat + 1, path) == MATCH;
}
