/* `dsv4-batch tokenize`: the tokenizer from the command line. Text on stdin
 * becomes ids on stdout (streamed: the input is cut at points where the
 * tokenization splits anyway, so memory stays bounded on any input size);
 * JSONL {"text": ...} lines become {"ids": [...]} lines; --decode goes the
 * other way; --bench measures encode throughput on a file. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ingest/dsv4_tokenizer.h"
#include "pipeline/dsv4_cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsv4-batch tokenize [--tokenizer FILE] [--jsonl IN] [--decode]\n"
            "       dsv4-batch tokenize --bench FILE [--threads N] [--tokenizer FILE]\n\n"
            "Encodes text with the DeepSeek-V4 tokenizer (exactly as Hugging Face tokenizers does).\n"
            "  (no option)      UTF-8 text on stdin -> ids on stdout, space-separated, one line\n"
            "  --jsonl IN       JSONL lines {\"text\": ...} -> lines {\"ids\": [...]}; IN '-' is stdin\n"
            "  --decode         ids (any separators) on stdin -> bytes; with --jsonl {\"ids\": [...]} ->\n"
            "                   {\"text\": ...} (invalid UTF-8 written as U+FFFD, as HF does)\n"
            "  --tokenizer FILE a model's tokenizer.json (default: the embedded DeepSeek-V4 one)\n"
            "  --bench FILE     encode FILE: 1 MiB pieces and line by line on one thread, the whole\n"
            "                   file in one call, and 1 MiB pieces on N threads (default 2); 3 runs each,\n"
            "                   median MB/s (10^6 bytes, wall clock), tokens/s, and MB per CPU-second\n"
            "                   (all threads' CPU time: on a busy machine the single-thread figure)\n");
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static int print_ids(FILE *out, const int32_t *ids, size_t n, int *first)
{
    char buf[16];
    for (size_t i = 0; i < n; i++) {
        int l = snprintf(buf, sizeof buf, *first ? "%d" : " %d", (int)ids[i]);
        *first = 0;
        if (fwrite(buf, 1, (size_t)l, out) != (size_t)l) return -1;
    }
    return 0;
}

/* stdin -> ids, in blocks cut at safe points */
static int encode_stream(const dsv4_tokenizer *tok, FILE *in, FILE *out)
{
    const size_t block = (size_t)1 << 20;
    size_t cap = 2 * block, len = 0;
    char *buf = malloc(cap), err[512];
    dsv4_tok_encoder *enc = dsv4_tok_encoder_new(tok);
    dsv4_tokens ids = {0};
    int first = 1, rc = DSV4_EXIT_FAIL, eof = 0;
    if (!buf || !enc) {
        fprintf(stderr, "dsv4-batch tokenize: out of memory\n");
        goto done;
    }
    while (!eof) {
        if (cap - len < block) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                fprintf(stderr, "dsv4-batch tokenize: out of memory (no cut point in %zu bytes)\n", len);
                goto done;
            }
            buf = p;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, block, in);
        len += got;
        if (got < block) {
            if (ferror(in)) {
                fprintf(stderr, "dsv4-batch tokenize: stdin: %s\n", strerror(errno));
                goto done;
            }
            eof = 1;
        }
        size_t cut = eof ? len : dsv4_tokenizer_safe_cut(tok, buf, len);
        if (!cut) continue; /* no cut point yet: read more */
        ids.n = 0;
        if (dsv4_tok_encoder_encode(enc, buf, cut, &ids, err, sizeof err) < 0) {
            fprintf(stderr, "dsv4-batch tokenize: %s\n", err);
            goto done;
        }
        if (print_ids(out, ids.ids, ids.n, &first) < 0) goto write_fail;
        memmove(buf, buf + cut, len - cut);
        len -= cut;
    }
    if (fputc('\n', out) == EOF || fflush(out) != 0) goto write_fail;
    rc = DSV4_EXIT_OK;
    goto done;
write_fail:
    fprintf(stderr, "dsv4-batch tokenize: stdout: %s\n", strerror(errno));
done:
    dsv4_tokens_free(&ids);
    dsv4_tok_encoder_free(enc);
    free(buf);
    return rc;
}

/* ids on stdin -> bytes on stdout, through the streaming decoder */
static int decode_stream(const dsv4_tokenizer *tok, FILE *in, FILE *out)
{
    dsv4_tok_stream *s = dsv4_tok_stream_new(tok);
    char err[256];
    int c, rc = DSV4_EXIT_OK;
    long long v = -1;
    size_t n_read = 0;
    if (!s) return DSV4_EXIT_FAIL;
    do {
        c = fgetc(in);
        if (c >= '0' && c <= '9') {
            v = (v < 0 ? 0 : v) * 10 + (c - '0');
            if (v > INT32_MAX) v = INT32_MAX;
            continue;
        }
        if (c == '-') {
            fprintf(stderr, "dsv4-batch tokenize --decode: stdin: negative id after %zu ids\n", n_read);
            rc = DSV4_EXIT_FAIL;
            break;
        }
        if (v >= 0) {
            const char *bytes;
            size_t len;
            if (dsv4_tok_stream_push(s, (int32_t)v, &bytes, &len, err, sizeof err) < 0) {
                fprintf(stderr, "dsv4-batch tokenize --decode: stdin: id %zu: %s\n", n_read + 1, err);
                rc = DSV4_EXIT_FAIL;
                break;
            }
            fwrite(bytes, 1, len, out);
            n_read++;
            v = -1;
        }
    } while (c != EOF);
    size_t len;
    const char *rest = dsv4_tok_stream_finish(s, &len);
    fwrite(rest, 1, len, out);
    dsv4_tok_stream_free(s);
    if (fflush(out) != 0) return DSV4_EXIT_FAIL;
    return rc;
}

/* JSON string of bytes, invalid UTF-8 replaced by U+FFFD */
static void put_json_text(FILE *out, const unsigned char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t l = 0;
        if (c < 0x80) l = 1;
        else if (c >= 0xC2 && c <= 0xDF && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) l = 2;
        else if (c >= 0xE0 && c <= 0xEF && i + 2 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
                 !(c == 0xE0 && s[i + 1] < 0xA0) && !(c == 0xED && s[i + 1] > 0x9F))
            l = 3;
        else if (c >= 0xF0 && c <= 0xF4 && i + 3 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
                 (s[i + 3] & 0xC0) == 0x80 && !(c == 0xF0 && s[i + 1] < 0x90) && !(c == 0xF4 && s[i + 1] > 0x8F))
            l = 4;
        if (l == 0) {
            fputs("\xef\xbf\xbd", out);
            i++;
            continue;
        }
        if (c == '"') fputs("\\\"", out);
        else if (c == '\\') fputs("\\\\", out);
        else if (c == '\n') fputs("\\n", out);
        else if (c == '\r') fputs("\\r", out);
        else if (c == '\t') fputs("\\t", out);
        else if (c < 0x20 || c == 0x7F) fprintf(out, "\\u%04x", c);
        else fwrite(s + i, 1, l, out);
        i += l;
    }
    fputc('"', out);
}

static int jsonl(const dsv4_tokenizer *tok, const char *path, int decode, FILE *out)
{
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!in) {
        fprintf(stderr, "dsv4-batch tokenize: %s: %s\n", path, strerror(errno));
        return DSV4_EXIT_MISSING;
    }
    dsv4_tok_encoder *enc = dsv4_tok_encoder_new(tok);
    char *line = NULL, err[512];
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = DSV4_EXIT_OK;
    while (enc && (n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (n == 0 || (n == 1 && line[0] == '\n')) continue;
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
        if (!o) {
            fprintf(stderr, "dsv4-batch tokenize: %s:%zu:%d: %s\n", path, lineno, je.column, je.text);
            rc = DSV4_EXIT_FAIL;
            break;
        }
        if (!decode) {
            json_t *t = json_object_get(o, "text");
            if (!json_is_string(t)) {
                fprintf(stderr, "dsv4-batch tokenize: %s:%zu: expected {\"text\": \"...\"}\n", path, lineno);
                json_decref(o);
                rc = DSV4_EXIT_FAIL;
                break;
            }
            dsv4_tokens ids = {0};
            if (dsv4_tok_encoder_encode(enc, json_string_value(t), json_string_length(t), &ids, err, sizeof err) < 0) {
                fprintf(stderr, "dsv4-batch tokenize: %s:%zu: %s\n", path, lineno, err);
                rc = DSV4_EXIT_FAIL;
            } else {
                fputs("{\"ids\": [", out);
                for (size_t i = 0; i < ids.n; i++) fprintf(out, i ? ", %d" : "%d", (int)ids.ids[i]);
                fputs("]}\n", out);
            }
            dsv4_tokens_free(&ids);
        } else {
            json_t *a = json_object_get(o, "ids");
            size_t k = 0, na = json_array_size(a);
            int32_t *ids = malloc((na ? na : 1) * sizeof *ids);
            int ok = json_is_array(a) && ids;
            for (; ok && k < na; k++) {
                json_t *v = json_array_get(a, k);
                ok = json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= INT32_MAX;
                if (ok) ids[k] = (int32_t)json_integer_value(v);
            }
            char *text = NULL;
            size_t tl;
            if (!ok) {
                fprintf(stderr, "dsv4-batch tokenize: %s:%zu: expected {\"ids\": [non-negative integers]}\n", path,
                        lineno);
                rc = DSV4_EXIT_FAIL;
            } else if (dsv4_tokenizer_decode(tok, ids, na, &text, &tl, err, sizeof err) < 0) {
                fprintf(stderr, "dsv4-batch tokenize: %s:%zu: %s\n", path, lineno, err);
                rc = DSV4_EXIT_FAIL;
            } else {
                fputs("{\"text\": ", out);
                put_json_text(out, (const unsigned char *)text, tl);
                fputs("}\n", out);
            }
            free(text);
            free(ids);
        }
        json_decref(o);
        if (rc != DSV4_EXIT_OK) break;
    }
    free(line);
    dsv4_tok_encoder_free(enc);
    if (in != stdin) fclose(in);
    if (fflush(out) != 0) rc = DSV4_EXIT_FAIL;
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench(const dsv4_tokenizer *tok, const char *path, int threads)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "dsv4-batch tokenize: %s: %s\n", path, strerror(errno));
        return DSV4_EXIT_MISSING;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "dsv4-batch tokenize: %s: cannot read\n", path);
        fclose(f);
        free(text);
        return DSV4_EXIT_FAIL;
    }
    fclose(f);
    size_t len = (size_t)size;
    /* 1 MiB pieces cut at UTF-8 boundaries, as the HF baseline was measured */
    size_t n_pieces = 0, cap = len / ((size_t)1 << 20) + 2;
    const char **pieces = malloc(cap * sizeof *pieces);
    size_t *plens = malloc(cap * sizeof *plens);
    for (size_t s = 0; s < len;) {
        size_t e = s + ((size_t)1 << 20);
        if (e >= len) e = len;
        else
            while (e > s && ((unsigned char)text[e] & 0xC0) == 0x80) e--;
        pieces[n_pieces] = text + s;
        plens[n_pieces++] = e - s;
        s = e;
    }
    printf("file %s: %zu bytes, %zu pieces of <= 1 MiB\n", path, len, n_pieces);
    printf("%-28s %8s %11s %10s %9s\n", "mode", "MB/s", "tokens/s", "tokens", "MB/cpu-s");
    char err[512];
    for (int mode = 0; mode < 4; mode++) {
        double t[3], cpu[3];
        size_t tokens = 0;
        for (int run = 0; run < 3; run++) {
            dsv4_tok_encoder *enc = dsv4_tok_encoder_new(tok);
            dsv4_tokens ids = {0};
            tokens = 0;
            double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            if (mode == 0) {
                for (size_t i = 0; i < n_pieces; i++) {
                    ids.n = 0;
                    dsv4_tok_encoder_encode(enc, pieces[i], plens[i], &ids, err, sizeof err);
                    tokens += ids.n;
                }
            } else if (mode == 1) {
                for (size_t s = 0; s < len;) {
                    const char *nl = memchr(text + s, '\n', len - s);
                    size_t e = nl ? (size_t)(nl - text) + 1 : len;
                    ids.n = 0;
                    dsv4_tok_encoder_encode(enc, text + s, e - s, &ids, err, sizeof err);
                    tokens += ids.n;
                    s = e;
                }
            } else if (mode == 2) {
                dsv4_tok_encoder_encode(enc, text, len, &ids, err, sizeof err);
                tokens = ids.n;
            } else {
                dsv4_tokens *outs = calloc(n_pieces, sizeof *outs);
                dsv4_tokenizer_encode_batch(tok, n_pieces, pieces, plens, threads, outs, err, sizeof err);
                for (size_t i = 0; i < n_pieces; i++) {
                    tokens += outs[i].n;
                    dsv4_tokens_free(&outs[i]);
                }
                free(outs);
            }
            t[run] = now_s() - t0;
            cpu[run] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
            dsv4_tokens_free(&ids);
            dsv4_tok_encoder_free(enc);
        }
        qsort(t, 3, sizeof t[0], cmp_double);
        qsort(cpu, 3, sizeof cpu[0], cmp_double);
        char name[64];
        static const char *names[] = {"1 MiB pieces, 1 thread", "line by line, 1 thread", "whole file, one call",
                                      NULL};
        if (mode < 3) snprintf(name, sizeof name, "%s", names[mode]);
        else snprintf(name, sizeof name, "1 MiB pieces, %d threads", threads);
        printf("%-28s %8.2f %11.0f %10zu %9.2f   (runs %.3f %.3f %.3f s)\n", name, len / t[1] / 1e6, tokens / t[1],
               tokens, len / cpu[1] / 1e6, t[0], t[1], t[2]);
    }
    free(pieces);
    free(plens);
    free(text);
    return DSV4_EXIT_OK;
}

int dsv4_cmd_tokenize(int argc, char **argv)
{
    const char *tokenizer = NULL, *jsonl_in = NULL, *bench_file = NULL;
    int decode = 0, threads = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return DSV4_EXIT_OK;
        } else if (!strcmp(a, "--decode")) {
            decode = 1;
        } else if ((!strcmp(a, "--tokenizer") || !strcmp(a, "--jsonl") || !strcmp(a, "--bench") ||
                    !strcmp(a, "--threads")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "--tokenizer")) tokenizer = v;
            else if (!strcmp(a, "--jsonl")) jsonl_in = v;
            else if (!strcmp(a, "--bench")) bench_file = v;
            else if ((threads = atoi(v)) < 1 || threads > 256) {
                fprintf(stderr, "dsv4-batch tokenize: --threads must be 1..256\n");
                return DSV4_EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "dsv4-batch tokenize: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return DSV4_EXIT_USAGE;
        }
    }
    char err[512];
    dsv4_tokenizer *tok = NULL;
    int rc = tokenizer ? dsv4_tokenizer_open(tokenizer, &tok, err, sizeof err)
                       : dsv4_tokenizer_open_embedded(&tok, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "dsv4-batch tokenize: %s\n", err);
        return rc == DSV4_TOK_EIO ? DSV4_EXIT_MISSING : DSV4_EXIT_FAIL;
    }
    if (bench_file) rc = bench(tok, bench_file, threads);
    else if (jsonl_in) rc = jsonl(tok, jsonl_in, decode, stdout);
    else if (decode) rc = decode_stream(tok, stdin, stdout);
    else rc = encode_stream(tok, stdin, stdout);
    dsv4_tokenizer_close(tok);
    return rc;
}
