/* Plain text: buffers, UTF-8 cleaning and encoding detection.
 *
 * Every parser's output passes through utf8_append_clean(), so "the text of a
 * document is valid UTF-8 with LF line ends and no NUL" is enforced in one
 * place whatever library produced it. Detection for plain files is
 * deliberately small and deterministic: a BOM decides (UTF-8, UTF-16LE/BE);
 * otherwise valid UTF-8 is UTF-8, mostly-valid UTF-8 keeps its good
 * sequences and replaces the rest, and anything else is read as
 * Windows-1252 through iconv (the usual encoding of old Western files) and
 * reported. Invalid sequences are replaced one byte at a time and counted. */
#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest_internal.h"

int buf_reserve(buf *b, size_t more)
{
    if (more > SIZE_MAX - b->n - 1) return DSV4_INGEST_ENOMEM;
    size_t need = b->n + more + 1; /* room for a NUL terminator, always */
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (!p) return DSV4_INGEST_ENOMEM;
    b->p = p;
    b->cap = cap;
    b->p[b->n] = 0; /* a reserved buffer is always a valid C string */
    return 0;
}

int buf_put(buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n)) return DSV4_INGEST_ENOMEM;
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int buf_putc(buf *b, char c) { return buf_put(b, &c, 1); }
int buf_puts(buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

void buf_free(buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when invalid. */
static size_t u8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    if (c < 0xC2 || c > 0xF4) return 0;
    if (c < 0xE0) return (n >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
        return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;  /* overlong */
    if (c == 0xF4 && p[1] >= 0x90) return 0; /* > U+10FFFF */
    return 4;
}

int utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        size_t l = u8_len(p + i, n - i);
        if (!l) return 0;
        i += l;
    }
    return 1;
}

uint64_t utf8_count_chars(const char *s, size_t n)
{
    uint64_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

int utf8_append_clean(buf *out, const char *s, size_t n, uint64_t *n_replaced)
{
    const unsigned char *p = (const unsigned char *)s;
    if (buf_reserve(out, n)) return DSV4_INGEST_ENOMEM;
    size_t i = 0;
    while (i < n) {
        /* Copy the longest run that needs no change in one go. */
        size_t j = i;
        while (j < n && p[j] >= 0x01 && p[j] < 0x80 && p[j] != '\r') j++;
        if (j > i && buf_put(out, p + i, j - i)) return DSV4_INGEST_ENOMEM;
        i = j;
        if (i >= n) break;
        unsigned c = p[i];
        if (c == 0) { i++; continue; }
        if (c == '\r') {
            if (buf_putc(out, '\n')) return DSV4_INGEST_ENOMEM;
            i += (i + 1 < n && p[i + 1] == '\n') ? 2 : 1;
            continue;
        }
        size_t l = u8_len(p + i, n - i);
        if (l) {
            if (buf_put(out, p + i, l)) return DSV4_INGEST_ENOMEM;
            i += l;
        } else {
            if (buf_put(out, "\xEF\xBF\xBD", 3)) return DSV4_INGEST_ENOMEM;
            if (n_replaced) (*n_replaced)++;
            i++;
        }
    }
    return 0;
}

static int put_cp(buf *b, uint32_t cp)
{
    char u[4];
    size_t k;
    if (cp < 0x80) { u[0] = (char)cp; k = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 63)); k = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 63));
        u[2] = (char)(0x80 | (cp & 63)); k = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 63));
        u[2] = (char)(0x80 | ((cp >> 6) & 63)); u[3] = (char)(0x80 | (cp & 63)); k = 4;
    }
    return buf_put(b, u, k);
}

static int utf16_to_utf8(const uint8_t *p, size_t n, int be, buf *tmp, uint64_t *bad)
{
    size_t i = 0;
    if (buf_reserve(tmp, n + n / 2)) return DSV4_INGEST_ENOMEM;
    while (i + 1 < n) {
        uint32_t u = be ? (uint32_t)(p[i] << 8 | p[i + 1]) : (uint32_t)(p[i + 1] << 8 | p[i]);
        i += 2;
        if (u >= 0xD800 && u < 0xDC00) {
            uint32_t v = 0;
            if (i + 1 < n)
                v = be ? (uint32_t)(p[i] << 8 | p[i + 1]) : (uint32_t)(p[i + 1] << 8 | p[i]);
            if (v >= 0xDC00 && v < 0xE000) {
                i += 2;
                u = 0x10000 + ((u - 0xD800) << 10) + (v - 0xDC00);
            } else {
                u = 0xFFFD;
                (*bad)++;
            }
        } else if (u >= 0xDC00 && u < 0xE000) {
            u = 0xFFFD;
            (*bad)++;
        }
        if (put_cp(tmp, u)) return DSV4_INGEST_ENOMEM;
    }
    if (i < n) { /* odd trailing byte */
        if (put_cp(tmp, 0xFFFD)) return DSV4_INGEST_ENOMEM;
        (*bad)++;
    }
    return 0;
}

/* Windows-1252 through iconv. The five bytes 1252 leaves undefined (0x81,
 * 0x8D, 0x8F, 0x90, 0x9D) make glibc's iconv stop with EILSEQ: each becomes
 * U+FFFD, counted, and conversion resumes after it. */
static int cp1252_to_utf8(const uint8_t *p, size_t n, buf *tmp, uint64_t *bad)
{
    iconv_t cd = iconv_open("UTF-8", "WINDOWS-1252");
    if (cd == (iconv_t)-1) { /* no iconv module: Latin-1 is 1252 minus 0x80..0x9F */
        for (size_t i = 0; i < n; i++) {
            uint32_t cp = p[i] >= 0x80 && p[i] < 0xA0 ? 0xFFFD : p[i];
            if (cp == 0xFFFD) (*bad)++;
            if (put_cp(tmp, cp)) return DSV4_INGEST_ENOMEM;
        }
        return 0;
    }
    int rc = 0;
    char *in = (char *)p;
    size_t in_left = n;
    while (in_left > 0) {
        if (buf_reserve(tmp, in_left * 3 + 8)) { rc = DSV4_INGEST_ENOMEM; break; }
        char *o = tmp->p + tmp->n;
        size_t o_left = tmp->cap - tmp->n - 1, o_before = o_left;
        size_t r = iconv(cd, &in, &in_left, &o, &o_left);
        tmp->n += o_before - o_left;
        tmp->p[tmp->n] = 0;
        if (r != (size_t)-1) break;
        if (errno == EILSEQ || errno == EINVAL) {
            if (put_cp(tmp, 0xFFFD)) { rc = DSV4_INGEST_ENOMEM; break; }
            (*bad)++;
            in++;
            in_left--;
        } else if (errno != E2BIG) {
            break;
        }
    }
    iconv_close(cd);
    return rc;
}

/* Control bytes other than tab, LF, VT, FF, CR and ESC are rare in text and
 * common in binary formats; more than 1 in 10 of the first 64 KiB says binary. */
static int mostly_control(const uint8_t *p, size_t n)
{
    size_t m = n < 65536 ? n : 65536, k = 0;
    for (size_t i = 0; i < m; i++) {
        uint8_t c = p[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\v' && c != '\f' && c != '\r' && c != 0x1B) k++;
        if (c == 0x7F) k++;
    }
    return m > 0 && k * 10 > m;
}

int text_decode(const uint8_t *p, size_t n, buf *out, const char **encoding,
                uint64_t *n_replaced, int *is_binary)
{
    *is_binary = 0;
    buf tmp = {0};
    int rc = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) {
        *encoding = "utf-8";
        return utf8_append_clean(out, (const char *)p + 3, n - 3, n_replaced);
    }
    if (n >= 2 && ((p[0] == 0xFF && p[1] == 0xFE) || (p[0] == 0xFE && p[1] == 0xFF))) {
        int be = p[0] == 0xFE;
        *encoding = be ? "utf-16be" : "utf-16le";
        rc = utf16_to_utf8(p + 2, n - 2, be, &tmp, n_replaced);
        if (!rc) {
            /* A UTF-16 "text" that decodes to control characters is binary too. */
            if (mostly_control((const uint8_t *)tmp.p, tmp.n) || memchr(tmp.p, 0, tmp.n))
                *is_binary = 1;
            else
                rc = utf8_append_clean(out, tmp.p, tmp.n, NULL);
        }
        buf_free(&tmp);
        return rc;
    }
    if (memchr(p, 0, n) || mostly_control(p, n)) {
        *is_binary = 1;
        return 0;
    }
    if (utf8_valid((const char *)p, n)) {
        *encoding = "utf-8";
        return utf8_append_clean(out, (const char *)p, n, n_replaced);
    }
    /* Mostly UTF-8 with a few broken bytes stays UTF-8; otherwise 1252. */
    size_t good_multi = 0, badb = 0;
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x80) { i++; continue; }
        size_t l = u8_len(p + i, n - i);
        if (l) { good_multi++; i += l; } else { badb++; i++; }
    }
    if (good_multi > badb) {
        *encoding = "utf-8";
        return utf8_append_clean(out, (const char *)p, n, n_replaced);
    }
    *encoding = "windows-1252";
    rc = cp1252_to_utf8(p, n, &tmp, n_replaced);
    if (!rc) rc = utf8_append_clean(out, tmp.p ? tmp.p : "", tmp.n, NULL);
    buf_free(&tmp);
    return rc;
}

char *name_to_utf8(const char *raw)
{
    buf b = {0}, tmp = {0};
    uint64_t bad = 0;
    size_t n = strlen(raw);
    int rc;
    if (utf8_valid(raw, n)) rc = buf_put(&tmp, raw, n);
    else rc = cp1252_to_utf8((const uint8_t *)raw, n, &tmp, &bad);
    if (rc == 0) rc = buf_reserve(&b, tmp.n);
    if (rc == 0) {
        for (size_t i = 0; i < tmp.n; i++) {
            unsigned char c = (unsigned char)tmp.p[i];
            b.p[b.n++] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
        }
        b.p[b.n] = 0;
    }
    buf_free(&tmp);
    if (rc) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}
