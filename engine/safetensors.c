/* engine/safetensors.c: memory-mapped, validated safetensors files.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data; offsets are relative to the data start. Nothing in a header
 * is trusted: the length must lie inside the file, every dtype must be known,
 * every shape's element count times the dtype size must equal its byte span,
 * every span must lie inside the file and no two spans may overlap. Only then
 * are pointers into the mapping handed out, so a lying or truncated file is a
 * message naming the file and the tensor, never a read past the mapping.
 *
 * A model directory holds either one model.safetensors or shards listed by
 * model.safetensors.index.json ({"weight_map": {tensor: shard file}}); every
 * shard must exist and hold the tensors the index says it holds. The whole set
 * is one sorted table so lookups are a binary search. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/dsv4_engine.h"
#include "engine/model.h"

#define MAX_HEADER_BYTES ((uint64_t)256 << 20) /* real headers are a few MiB */
#define MAX_FILES 4096

typedef struct st_file {
    char *name;      /* base name, for messages */
    uint8_t *map;
    size_t size;
} st_file;

struct dsv4_st_set {
    st_file *files;
    size_t n_files;
    dsv4_tensor *tensors; /* sorted by name */
    size_t n_tensors, cap_tensors;
};

static const struct {
    const char *name;
    dsv4_dtype t;
    size_t size;
} dtypes[] = {
    {"BF16", DSV4_DT_BF16, 2},       {"F16", DSV4_DT_F16, 2},   {"F32", DSV4_DT_F32, 4},
    {"F64", DSV4_DT_F64, 8},         {"F8_E4M3", DSV4_DT_F8_E4M3, 1},
    {"F8_E5M2", DSV4_DT_F8_E5M2, 1}, {"F8_E8M0", DSV4_DT_F8_E8M0, 1},
    {"I8", DSV4_DT_I8, 1},           {"U8", DSV4_DT_U8, 1},     {"I16", DSV4_DT_I16, 2},
    {"I32", DSV4_DT_I32, 4},         {"I64", DSV4_DT_I64, 8},   {"BOOL", DSV4_DT_BOOL, 1},
};

const char *dsv4_dtype_name(dsv4_dtype t)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].name;
    return "unknown";
}

size_t dsv4_dtype_size(dsv4_dtype t)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

static dsv4_dtype dtype_from_name(const char *s)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, s) == 0) return dtypes[i].t;
    return DSV4_DT_UNKNOWN;
}

void dsv4_st_close(dsv4_st_set *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_files; i++) {
        if (s->files[i].map && s->files[i].size) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].name);
    }
    for (size_t i = 0; i < s->n_tensors; i++) free((char *)s->tensors[i].name);
    free(s->files);
    free(s->tensors);
    free(s);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const dsv4_tensor *)a)->name, ((const dsv4_tensor *)b)->name);
}

const dsv4_tensor *dsv4_st_find(const dsv4_st_set *s, const char *name)
{
    if (!s || !name) return NULL;
    dsv4_tensor key;
    memset(&key, 0, sizeof key);
    key.name = name;
    return bsearch(&key, s->tensors, s->n_tensors, sizeof key, cmp_tensor_name);
}

size_t dsv4_st_count(const dsv4_st_set *s) { return s ? s->n_tensors : 0; }

const dsv4_tensor *dsv4_st_at(const dsv4_st_set *s, size_t i)
{
    return s && i < s->n_tensors ? &s->tensors[i] : NULL;
}

typedef struct span {
    uint64_t begin, end;
    const char *name;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Parses one tensor entry of a header into t (name set by the caller). */
static int parse_entry(const char *file, const char *name, json_t *v, uint64_t data_bytes,
                       dsv4_tensor *t, uint64_t *begin, uint64_t *end, char *err, size_t errlen)
{
    if (!json_is_object(v)) {
        snprintf(err, errlen, "%s: tensor '%s': header entry is not an object", file, name);
        return DSV4_EINVAL;
    }
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt)) {
        snprintf(err, errlen, "%s: tensor '%s': dtype missing", file, name);
        return DSV4_EINVAL;
    }
    t->dtype = dtype_from_name(json_string_value(dt));
    if (t->dtype == DSV4_DT_UNKNOWN) {
        snprintf(err, errlen, "%s: tensor '%s': unknown dtype '%s'", file, name,
                 json_string_value(dt));
        return DSV4_EINVAL;
    }
    if (!json_is_array(sh) || json_array_size(sh) > DSV4_MAX_DIMS) {
        snprintf(err, errlen, "%s: tensor '%s': shape missing or has more than %d dims", file,
                 name, DSV4_MAX_DIMS);
        return DSV4_EINVAL;
    }
    t->ndim = (int)json_array_size(sh);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *x = json_array_get(sh, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            snprintf(err, errlen, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                     file, name, d);
            return DSV4_EINVAL;
        }
        t->shape[d] = (int64_t)json_integer_value(x);
        if (t->shape[d] && numel > UINT64_MAX / (uint64_t)t->shape[d]) {
            snprintf(err, errlen, "%s: tensor '%s': shape overflows", file, name);
            return DSV4_EINVAL;
        }
        numel *= (uint64_t)t->shape[d];
    }
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        !json_is_integer(json_array_get(off, 0)) || !json_is_integer(json_array_get(off, 1)) ||
        json_integer_value(json_array_get(off, 0)) < 0 ||
        json_integer_value(json_array_get(off, 1)) < json_integer_value(json_array_get(off, 0))) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets is not [begin, end] with "
                 "0 <= begin <= end", file, name);
        return DSV4_EINVAL;
    }
    *begin = (uint64_t)json_integer_value(json_array_get(off, 0));
    *end = (uint64_t)json_integer_value(json_array_get(off, 1));
    size_t esz = dsv4_dtype_size(t->dtype);
    if (numel > UINT64_MAX / esz || numel * esz != *end - *begin) {
        snprintf(err, errlen, "%s: tensor '%s': shape x dtype size = %llu bytes but "
                 "data_offsets span %llu bytes", file, name,
                 (unsigned long long)(numel > UINT64_MAX / esz ? UINT64_MAX : numel * esz),
                 (unsigned long long)(*end - *begin));
        return DSV4_EINVAL;
    }
    if (*end > data_bytes) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] run past the end "
                 "of the file's data (%llu bytes; file truncated?)", file, name,
                 (unsigned long long)*begin, (unsigned long long)*end,
                 (unsigned long long)data_bytes);
        return DSV4_EINVAL;
    }
    t->nbytes = *end - *begin;
    return 0;
}

static int add_tensor(dsv4_st_set *s, const dsv4_tensor *t)
{
    if (s->n_tensors == s->cap_tensors) {
        size_t cap = s->cap_tensors ? s->cap_tensors * 2 : 256;
        dsv4_tensor *n = realloc(s->tensors, cap * sizeof *n);
        if (!n) return DSV4_ENOMEM;
        s->tensors = n;
        s->cap_tensors = cap;
    }
    s->tensors[s->n_tensors++] = *t;
    return 0;
}

/* Maps `path` and appends its tensors to s. `shown` is the name used in messages. */
static int map_file(dsv4_st_set *s, const char *path, const char *shown, char *err, size_t errlen)
{
    int fd = -1, rc = DSV4_EINVAL;
    json_t *root = NULL;
    span *spans = NULL;
    size_t n_spans = 0;
    if (s->n_files >= MAX_FILES) {
        snprintf(err, errlen, "%s: more than %d safetensors files", shown, MAX_FILES);
        return DSV4_EINVAL;
    }
    st_file *nf = realloc(s->files, (s->n_files + 1) * sizeof *nf);
    if (!nf) return DSV4_ENOMEM;
    s->files = nf;
    st_file *f = &s->files[s->n_files];
    memset(f, 0, sizeof *f);
    f->name = strdup(shown);
    if (!f->name) return DSV4_ENOMEM;
    s->n_files++;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", shown, strerror(errno));
        rc = DSV4_EIO;
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", shown);
        goto fail;
    }
    if (st.st_size < 8) {
        snprintf(err, errlen, "%s: file of %lld bytes is too short for a safetensors header",
                 shown, (long long)st.st_size);
        goto fail;
    }
    f->size = (size_t)st.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        snprintf(err, errlen, "%s: mmap failed: %s", shown, strerror(errno));
        rc = DSV4_EIO;
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen < 2 || hlen > MAX_HEADER_BYTES || hlen > f->size - 8) {
        snprintf(err, errlen, "%s: header length %llu is beyond the file (%zu bytes) or not "
                 "sane (2 .. %llu)", shown, (unsigned long long)hlen, f->size,
                 (unsigned long long)MAX_HEADER_BYTES);
        goto fail;
    }
    json_error_t je;
    root = json_loadb((const char *)f->map + 8, (size_t)hlen, 0, &je);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object (%s at byte %d)", shown,
                 root ? "not an object" : je.text, root ? 0 : je.position);
        goto fail;
    }
    uint64_t data_bytes = f->size - 8 - hlen;
    const uint8_t *data = f->map + 8 + hlen;
    spans = calloc(json_object_size(root) + 1, sizeof *spans);
    if (!spans) { rc = DSV4_ENOMEM; goto fail; }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        dsv4_tensor t;
        memset(&t, 0, sizeof t);
        uint64_t b, e;
        if ((rc = parse_entry(shown, key, v, data_bytes, &t, &b, &e, err, errlen)) < 0) goto fail;
        t.data = data + b;
        t.file = f->name;
        t.name = strdup(key);
        if (!t.name) { rc = DSV4_ENOMEM; goto fail; }
        if ((rc = add_tensor(s, &t)) < 0) { free((char *)t.name); goto fail; }
        spans[n_spans++] = (span){b, e, s->tensors[s->n_tensors - 1].name};
    }
    qsort(spans, n_spans, sizeof *spans, cmp_span);
    /* Compare each span with the non-empty span reaching furthest so far, not
     * just its sorted neighbour: an empty tensor between two overlapping ones
     * must not hide their overlap. Empty tensors occupy nothing and may share
     * an offset. */
    size_t far = SIZE_MAX;
    for (size_t i = 0; i < n_spans; i++) {
        if (spans[i].begin == spans[i].end) continue;
        if (far != SIZE_MAX && spans[i].begin < spans[far].end) {
            snprintf(err, errlen, "%s: tensors '%s' and '%s' overlap (data_offsets [%llu, %llu] "
                     "and [%llu, %llu])", shown, spans[far].name, spans[i].name,
                     (unsigned long long)spans[far].begin, (unsigned long long)spans[far].end,
                     (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end);
            rc = DSV4_EINVAL;
            goto fail;
        }
        if (far == SIZE_MAX || spans[i].end > spans[far].end) far = i;
    }
    rc = 0;
fail:
    free(spans);
    json_decref(root);
    if (fd >= 0) close(fd);
    return rc;
}

/* After all files are mapped: sort and reject duplicate names across shards. */
static int finish(dsv4_st_set *s, char *err, size_t errlen)
{
    qsort(s->tensors, s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    for (size_t i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0) {
            snprintf(err, errlen, "tensor '%s' appears twice (in %s and %s)", s->tensors[i].name,
                     s->tensors[i - 1].file, s->tensors[i].file);
            return DSV4_EINVAL;
        }
    return 0;
}

int dsv4_st_open_file(const char *path, dsv4_st_set **out, char *err, size_t errlen)
{
    *out = NULL;
    dsv4_st_set *s = calloc(1, sizeof *s);
    if (!s) return DSV4_ENOMEM;
    const char *base = strrchr(path, '/');
    int rc = map_file(s, path, base ? base + 1 : path, err, errlen);
    if (rc == 0) rc = finish(s, err, errlen);
    if (rc < 0) {
        dsv4_st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int read_small_file(const char *path, const char *shown, char **out, size_t *len,
                           char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", shown, strerror(errno));
        return DSV4_EIO;
    }
    struct stat st;
    int rc = DSV4_EINVAL;
    char *buf = NULL;
    if (fstat(fileno(f), &st) != 0 || st.st_size > (256 << 20)) {
        snprintf(err, errlen, "%s: not a regular file under 256 MiB", shown);
        goto fail;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) { rc = DSV4_ENOMEM; goto fail; }
    if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        snprintf(err, errlen, "%s: read error", shown);
        rc = DSV4_EIO;
        goto fail;
    }
    buf[st.st_size] = 0;
    *out = buf;
    *len = (size_t)st.st_size;
    buf = NULL;
    rc = 0;
fail:
    free(buf);
    fclose(f);
    return rc;
}

static int open_index(dsv4_st_set *s, const char *dir, const char *ipath, char *err, size_t errlen)
{
    static const char *iname = "model.safetensors.index.json";
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    char path[PATH_MAX];
    int rc = read_small_file(ipath, iname, &text, &len, err, errlen);
    if (rc < 0) return rc;
    rc = DSV4_EINVAL;
    json_error_t je;
    root = json_loadb(text, len, 0, &je);
    if (!root) {
        snprintf(err, errlen, "%s:%d:%d: invalid JSON: %s", iname, je.line, je.column, je.text);
        goto fail;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        snprintf(err, errlen, "%s: 'weight_map' missing or empty", iname);
        goto fail;
    }
    /* Map each distinct shard once, in the order first named. */
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v)) {
            snprintf(err, errlen, "%s: weight_map['%s'] is not a file name", iname, key);
            goto fail;
        }
        const char *shard = json_string_value(v);
        if (!*shard || strchr(shard, '/') || strcmp(shard, "..") == 0 || strcmp(shard, ".") == 0) {
            snprintf(err, errlen, "%s: weight_map['%s'] = '%s' is not a plain file name", iname,
                     key, shard);
            goto fail;
        }
        int seen = 0;
        for (size_t i = 0; i < s->n_files; i++)
            if (strcmp(s->files[i].name, shard) == 0) seen = 1;
        if (seen) continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, shard) >= sizeof path) {
            snprintf(err, errlen, "%s: path too long", shard);
            goto fail;
        }
        if (access(path, F_OK) != 0) {
            snprintf(err, errlen, "%s: shard '%s' (holding tensor '%s') is missing", iname, shard,
                     key);
            rc = DSV4_EIO;
            goto fail;
        }
        if ((rc = map_file(s, path, shard, err, errlen)) < 0) goto fail;
        rc = DSV4_EINVAL;
    }
    if ((rc = finish(s, err, errlen)) < 0) goto fail;
    rc = DSV4_EINVAL;
    json_object_foreach(wm, key, v) {
        const dsv4_tensor *t = dsv4_st_find(s, key);
        if (!t) {
            snprintf(err, errlen, "%s: tensor '%s' is not in shard '%s'", iname, key,
                     json_string_value(v));
            goto fail;
        }
        if (strcmp(t->file, json_string_value(v)) != 0) {
            snprintf(err, errlen, "%s: tensor '%s' is in '%s', not in '%s' as the index says",
                     iname, key, t->file, json_string_value(v));
            goto fail;
        }
    }
    rc = 0;
fail:
    json_decref(root);
    free(text);
    return rc;
}

int dsv4_st_open_dir(const char *dir, dsv4_st_set **out, char *err, size_t errlen)
{
    char path[PATH_MAX];
    *out = NULL;
    dsv4_st_set *s = calloc(1, sizeof *s);
    if (!s) return DSV4_ENOMEM;
    int rc;
    if ((size_t)snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) >= sizeof path) {
        snprintf(err, errlen, "%s: path too long", dir);
        rc = DSV4_EINVAL;
        goto fail;
    }
    if (access(path, F_OK) == 0) {
        rc = open_index(s, dir, path, err, errlen);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0) {
            snprintf(err, errlen, "%s: neither model.safetensors nor model.safetensors.index.json "
                     "found", dir);
            rc = DSV4_EIO;
            goto fail;
        }
        rc = map_file(s, path, "model.safetensors", err, errlen);
        if (rc == 0) rc = finish(s, err, errlen);
    }
fail:
    if (rc < 0) {
        dsv4_st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}
