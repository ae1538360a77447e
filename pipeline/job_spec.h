/* The job spec: job.yaml parsed with libyaml, checked field by field, with
 * every default filled in, relative paths made absolute against the job
 * file's directory and `~` expanded. Every field and its default is in
 * docs/job-spec.md.
 *
 * A spec that is wrong in any way is rejected before anything is queued:
 * each problem is one line "FILE:LINE:COLUMN: message" (1-based, pointing at
 * the offending key or value), up to 20 of them, newline-separated in err.
 *
 * The parsed spec also exists as JSON (dsv4_spec_to_json); that canonical
 * form is what the job store keeps next to the YAML as submitted, and
 * dsv4_spec_from_json gives the struct back to the worker that runs the job,
 * so a job runs as it was at submit time even if job.yaml changed since. */
#ifndef DSV4_JOB_SPEC_H
#define DSV4_JOB_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "pipeline/dsv4_chat.h"

enum {
    DSV4_SPEC_EINVAL = -1, /* the spec is invalid (messages in err) */
    DSV4_SPEC_EIO = -2,    /* the file cannot be read, or is too large */
    DSV4_SPEC_ENOMEM = -3,
};

/* Version of the JSON form ("version" key). */
#define DSV4_SPEC_JSON_VERSION 1
/* Largest job file read, in bytes. */
#define DSV4_SPEC_MAX_FILE_BYTES (4 << 20)

/* DSV4_THINK_NONE/HIGH/MAX: the chat encoding's reasoning modes. */
enum { DSV4_ORDER_PATH = 0, DSV4_ORDER_INPUT };
enum { DSV4_OVERFLOW_ERROR = 0, DSV4_OVERFLOW_TRUNCATE };
enum { DSV4_INPUT_PATH = 0, DSV4_INPUT_REPO };

/* Flags of dsv4_spec_load/parse. */
enum {
    /* Inputs without glob characters and the model directory must exist
     * (what submit uses; tests of pure syntax may leave it off). */
    DSV4_SPEC_CHECK_PATHS = 1,
};

/* Ingest guards (ingest/ enforces them; one input at a time). */
typedef struct dsv4_spec_limits {
    int64_t max_total_bytes; /* bytes read from one input, archives uncompressed */
    int64_t max_entry_bytes; /* bytes of one archive entry, uncompressed */
    double max_ratio;        /* uncompressed / compressed size of an archive entry */
    int64_t max_entries;     /* archive entries in one input, nested ones included */
    int max_depth;           /* archives inside archives */
    int64_t max_file_bytes;  /* one file of a directory or repository */
} dsv4_spec_limits;

typedef struct dsv4_spec_input {
    int kind;   /* DSV4_INPUT_PATH (file, directory or glob) or DSV4_INPUT_REPO */
    char *path; /* absolute; for kind path may hold glob characters (`**` allowed) */
    int is_glob;
    char **include; /* globs relative to the input's root; none = everything */
    size_t n_include;
    char **exclude;
    size_t n_exclude;
    dsv4_spec_limits limits; /* the job's, overridden by the input's `limits:` */
} dsv4_spec_input;

typedef struct dsv4_spec_query {
    char *id;
    char *prompt;
    int thinking;           /* DSV4_THINK_*, the job's when the query says nothing */
    int64_t max_new_tokens; /* the job's generation.max_new_tokens when not given */
} dsv4_spec_query;

typedef struct dsv4_job_spec {
    char *path;   /* absolute path of the job file; NULL when parsed from text only */
    char *source; /* the YAML text as read (NULL after dsv4_spec_from_json) */
    char *name;
    char *model;  /* absolute model directory; NULL = the embedded demo model */
    int priority;
    int max_attempts;
    dsv4_spec_input *inputs;
    size_t n_inputs;
    struct {
        int64_t max_tokens;
        int order;       /* DSV4_ORDER_* */
        int on_overflow; /* DSV4_OVERFLOW_* */
    } context;
    char *system; /* NULL = no system prompt */
    int thinking;
    dsv4_spec_query *queries;
    size_t n_queries;
    struct {
        int64_t max_new_tokens;
        double temperature, top_p;
        int64_t seed;
    } generation;
    struct {
        char *jsonl;    /* absolute path template ({name}, {date}, {id}); NULL = not written */
        char *markdown; /* same, for the readable report */
    } output;
    struct {
        int enabled;
        int64_t max_size;    /* bytes; 0 = no cap */
        int64_t span_tokens; /* a multiple of 128 */
    } cache;
    dsv4_spec_limits limits;
} dsv4_job_spec;

/* Reads and parses the job file at path (messages name path as given). */
int dsv4_spec_load(const char *path, unsigned flags, dsv4_job_spec **out, char *err, size_t errlen);
/* Parses YAML text. file: the name used in messages; base_dir: absolute
 * directory that relative paths resolve against (NULL = current directory). */
int dsv4_spec_parse(const char *text, size_t len, const char *file, const char *base_dir, unsigned flags,
                    dsv4_job_spec **out, char *err, size_t errlen);
/* Accepts NULL. */
void dsv4_spec_free(dsv4_job_spec *spec);

/* The canonical JSON form (new reference). NULL only when out of memory. */
json_t *dsv4_spec_to_json(const dsv4_job_spec *spec);
/* The JSON form of one input's include/exclude/limits, and of one query's
 * thinking/max_new_tokens (what the job store keeps per input and query). */
json_t *dsv4_spec_input_options_json(const dsv4_spec_input *in);
json_t *dsv4_spec_query_options_json(const dsv4_spec_query *q);
/* Back from dsv4_spec_to_json's text. */
int dsv4_spec_from_json(const char *json_text, dsv4_job_spec **out, char *err, size_t errlen);

/* "none", "high", "max" / "path", "input" / "error", "truncate" / "path", "repo". */
const char *dsv4_spec_thinking_name(int thinking);
const char *dsv4_spec_order_name(int order);
const char *dsv4_spec_overflow_name(int on_overflow);
const char *dsv4_spec_input_kind_name(int kind);

/* Expands an output template: {name} -> name, {date} -> YYYY-MM-DD (UTC) of
 * time_ms, {id} -> job_id. DSV4_SPEC_EINVAL when the result does not fit. */
int dsv4_spec_output_path(const char *tmpl, const char *name, int64_t job_id, int64_t time_ms, char *out,
                          size_t outlen, char *err, size_t errlen);

#endif
