/* Loading a Hugging Face tokenizer.json into the tables the encoder needs,
 * and everything that goes from ids back to bytes (decode, streaming decode,
 * lookups by string).
 *
 * The file is parsed with jansson once, then flattened into plain arrays: per
 * id its decoded bytes, a hash of merge pairs (left id, right id) -> (rank,
 * merged id), a byte trie per added-token pass. Everything about the file that
 * the encoder does not implement (another pre-tokenizer, byte fallback,
 * lstrip/rstrip tokens, a normalizer) is refused here with a message, so a
 * loaded tokenizer is one whose output we can vouch for. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/tokenizer_internal.h"

/* ids above this are refused: no real vocabulary comes near, and it bounds the
 * per-id arrays a hostile file could make us allocate */
#define MAX_IDS (1u << 24)
#define MAX_FILE_BYTES ((size_t)1 << 30)

/* The DeepSeek V3/V4 pre-tokenizer regexes, verbatim; the scanner in
 * tokenizer_encode.c implements exactly these. */
static const char RE_DIGITS[] = "\\p{N}{1,3}";
static const char RE_CJK[] = "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+";
static const char RE_WORDS[] =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- dsv4_tokens ---- */

void dsv4_tokens_free(dsv4_tokens *t)
{
    if (!t) return;
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

int dsv4_tokens_append(dsv4_tokens *t, const int32_t *ids, size_t n)
{
    if (n > SIZE_MAX / 8 - t->n) return DSV4_TOK_ENOMEM;
    if (t->n + n > t->cap) {
        size_t cap = t->cap ? t->cap : 64;
        while (cap < t->n + n) cap *= 2;
        int32_t *p = realloc(t->ids, cap * sizeof *p);
        if (!p) return DSV4_TOK_ENOMEM;
        t->ids = p;
        t->cap = cap;
    }
    if (n) memcpy(t->ids + t->n, ids, n * sizeof *ids);
    t->n += n;
    return 0;
}

/* ---- byte-level alphabet (GPT-2's bytes_to_unicode) ---- */

static void byte_alphabet(uint32_t byte_to_cp[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

/* Strict UTF-8 decode of one character; returns its length or 0 if invalid. */
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF && n >= 2 && (s[1] & 0xC0) == 0x80) {
        *cp = (b & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if (b >= 0xE0 && b <= 0xEF && n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
        uint32_t c = (b & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        if (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF)) return 0;
        *cp = c;
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4 && n >= 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 &&
        (s[3] & 0xC0) == 0x80) {
        uint32_t c = (b & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
                     (s[3] & 0x3F);
        if (c < 0x10000 || c > 0x10FFFF) return 0;
        *cp = c;
        return 4;
    }
    return 0;
}

/* HF ByteLevel decoder rule for one token string: if every character is in
 * the byte-level alphabet, the bytes it stands for; else the string's own
 * UTF-8 bytes. Writes at most len bytes to out; returns the count. */
static size_t bytelevel_decode(const int16_t cp_to_byte[512], const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int l = utf8_decode((const unsigned char *)s + i, len - i, &cp);
        if (!l || cp >= 512 || cp_to_byte[cp] < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[o++] = (char)cp_to_byte[cp];
        i += (size_t)l;
    }
    return o;
}

/* ---- string hash over vocabulary keys ---- */

static uint64_t str_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return dsv4_tok_mix64(h);
}

static int32_t vocab_find(const dsv4_tokenizer *t, const char *s, size_t n)
{
    size_t i = (size_t)str_hash(s, n) & t->key_mask;
    for (;;) {
        int32_t id = t->key_slots[i];
        if (id < 0) return -1;
        const char *k = t->vocab_keys + t->vocab_key_off[id];
        if (strncmp(k, s, n) == 0 && k[n] == 0) return id;
        i = (i + 1) & t->key_mask;
    }
}

/* ---- added-token tries ---- */

static int trie_node(tok_trie *tr, unsigned char byte)
{
    if (tr->n == tr->cap) {
        size_t cap = tr->cap ? tr->cap * 2 : 256;
        tok_trie_node *p = realloc(tr->nodes, cap * sizeof *p);
        if (!p) return -1;
        tr->nodes = p;
        tr->cap = cap;
    }
    tok_trie_node *nd = &tr->nodes[tr->n];
    nd->first_child = nd->next_sibling = -1;
    nd->id = -1;
    nd->byte = byte;
    return (int)tr->n++;
}

static int trie_add(tok_trie *tr, const unsigned char *s, size_t n, int32_t id)
{
    if (tr->n == 0 && trie_node(tr, 0) < 0) return -1;
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[cur].first_child;
        while (c >= 0 && tr->nodes[c].byte != s[i]) c = tr->nodes[c].next_sibling;
        if (c < 0) {
            int nn = trie_node(tr, s[i]);
            if (nn < 0) return -1;
            c = nn;
            tr->nodes[c].next_sibling = tr->nodes[cur].first_child;
            tr->nodes[cur].first_child = c;
        }
        cur = c;
    }
    tr->nodes[cur].id = id; /* a later duplicate content wins, as in HF's map */
    tr->first[s[0]] = 1;
    return 0;
}

/* ---- loading ---- */

void dsv4_tokenizer_close(dsv4_tokenizer *t)
{
    if (!t) return;
    free(t->dec_off);
    free(t->dec_len);
    free(t->dec_bytes);
    free(t->kind);
    free(t->vocab_keys);
    free(t->vocab_key_off);
    free(t->key_slots);
    free(t->added_content);
    free(t->added_off);
    free(t->added_ids);
    free(t->merges);
    free(t->added[0].nodes);
    free(t->added[1].nodes);
    free(t);
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jtrue(json_t *o, const char *key)
{
    return json_is_true(json_object_get(o, key));
}

static int is_split(json_t *p, const char *regex)
{
    const char *type = jstr(p, "type"), *behavior = jstr(p, "behavior");
    json_t *pat = json_object_get(p, "pattern");
    const char *re = pat ? jstr(pat, "Regex") : NULL;
    return type && strcmp(type, "Split") == 0 && behavior && strcmp(behavior, "Isolated") == 0 &&
           !jtrue(p, "invert") && re && strcmp(re, regex) == 0;
}

/* The file must describe exactly what the encoder implements. */
static int check_pipeline(json_t *root, const char *name, char *err, size_t errlen)
{
    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        const char *type = jstr(norm, "type");
        json_t *list = json_object_get(norm, "normalizers");
        if (!type || strcmp(type, "Sequence") != 0 || !json_is_array(list) || json_array_size(list) != 0) {
            set_err(err, errlen, "%s: normalizer: only none (or an empty Sequence) is supported", name);
            return DSV4_TOK_EFORMAT;
        }
    }
    json_t *pre = json_object_get(root, "pre_tokenizer");
    json_t *list = pre ? json_object_get(pre, "pretokenizers") : NULL;
    const char *pt = pre ? jstr(pre, "type") : NULL;
    if (!pt || strcmp(pt, "Sequence") != 0 || !json_is_array(list) || json_array_size(list) != 4 ||
        !is_split(json_array_get(list, 0), RE_DIGITS) || !is_split(json_array_get(list, 1), RE_CJK) ||
        !is_split(json_array_get(list, 2), RE_WORDS)) {
        set_err(err, errlen,
                "%s: pre_tokenizer: not the DeepSeek V3/V4 sequence (digits, CJK, word regex, ByteLevel); "
                "only that pre-tokenizer is implemented",
                name);
        return DSV4_TOK_EFORMAT;
    }
    json_t *bl = json_array_get(list, 3);
    const char *blt = jstr(bl, "type");
    if (!blt || strcmp(blt, "ByteLevel") != 0 || jtrue(bl, "add_prefix_space") ||
        json_is_true(json_object_get(bl, "use_regex"))) {
        set_err(err, errlen,
                "%s: pre_tokenizer[3]: expected ByteLevel with add_prefix_space=false, use_regex=false", name);
        return DSV4_TOK_EFORMAT;
    }
    json_t *dec = json_object_get(root, "decoder");
    const char *dt = dec ? jstr(dec, "type") : NULL;
    if (!dt || strcmp(dt, "ByteLevel") != 0) {
        set_err(err, errlen, "%s: decoder: only ByteLevel is supported", name);
        return DSV4_TOK_EFORMAT;
    }
    json_t *model = json_object_get(root, "model");
    const char *mt = model ? jstr(model, "type") : NULL;
    if (!mt || strcmp(mt, "BPE") != 0) {
        set_err(err, errlen, "%s: model.type: only BPE is supported", name);
        return DSV4_TOK_EFORMAT;
    }
    const char *cs = jstr(model, "continuing_subword_prefix"), *ew = jstr(model, "end_of_word_suffix");
    json_t *dropout = json_object_get(model, "dropout");
    if (jtrue(model, "byte_fallback") || jtrue(model, "ignore_merges") || (cs && *cs) || (ew && *ew) ||
        (dropout && !json_is_null(dropout))) {
        set_err(err, errlen,
                "%s: model: byte_fallback, ignore_merges, dropout and subword prefixes/suffixes are not "
                "supported",
                name);
        return DSV4_TOK_EFORMAT;
    }
    return 0;
}

static int load_vocab(dsv4_tokenizer *t, json_t *vocab, json_t *added, const char *name, char *err,
                      size_t errlen)
{
    /* size everything from the highest id */
    int64_t max_id = -1;
    size_t key_bytes = 0, content_bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= MAX_IDS) {
            set_err(err, errlen, "%s: model.vocab[\"%.60s\"]: id must be an integer in [0, %u)", name, key,
                    MAX_IDS);
            return DSV4_TOK_EFORMAT;
        }
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
        key_bytes += strlen(key) + 1;
    }
    size_t i;
    json_array_foreach(added, i, val)
    {
        json_t *jid = json_object_get(val, "id");
        json_t *jc = json_object_get(val, "content");
        if (!json_is_integer(jid) || json_integer_value(jid) < 0 || json_integer_value(jid) >= MAX_IDS ||
            !json_is_string(jc) || json_string_length(jc) == 0) {
            set_err(err, errlen, "%s: added_tokens[%zu]: needs an integer id in [0, %u) and non-empty content",
                    name, i, MAX_IDS);
            return DSV4_TOK_EFORMAT;
        }
        if (jtrue(val, "lstrip") || jtrue(val, "rstrip") || jtrue(val, "single_word")) {
            set_err(err, errlen, "%s: added_tokens[%zu] (%s): lstrip/rstrip/single_word are not supported", name,
                    i, json_string_value(jc));
            return DSV4_TOK_EFORMAT;
        }
        if (json_integer_value(jid) > max_id) max_id = json_integer_value(jid);
        content_bytes += json_string_length(jc) + 1;
    }
    if (max_id < 0) {
        set_err(err, errlen, "%s: model.vocab is empty", name);
        return DSV4_TOK_EFORMAT;
    }
    t->n_ids = (size_t)max_id + 1;
    size_t n = t->n_ids, nv = json_object_size(vocab);
    size_t slots = 1;
    while (slots < 2 * nv + 2) slots *= 2;
    t->dec_off = calloc(n, sizeof *t->dec_off);
    t->dec_len = calloc(n, sizeof *t->dec_len);
    t->kind = calloc(n, 1);
    t->vocab_key_off = malloc(n * sizeof *t->vocab_key_off);
    t->vocab_keys = malloc(key_bytes + 1);
    t->key_slots = malloc(slots * sizeof *t->key_slots);
    t->added_content = malloc(content_bytes + 1);
    t->added_off = malloc((json_array_size(added) + 1) * sizeof *t->added_off);
    t->added_ids = malloc((json_array_size(added) + 1) * sizeof *t->added_ids);
    /* decoded bytes are never longer than the key / content they come from */
    t->dec_bytes = malloc(key_bytes + content_bytes + 1);
    if (!t->dec_off || !t->dec_len || !t->kind || !t->vocab_key_off || !t->vocab_keys || !t->key_slots ||
        !t->added_content || !t->added_off || !t->added_ids || !t->dec_bytes) {
        set_err(err, errlen, "%s: out of memory for %zu ids", name, n);
        return DSV4_TOK_ENOMEM;
    }
    memset(t->vocab_key_off, 0xff, n * sizeof *t->vocab_key_off);
    memset(t->key_slots, 0xff, slots * sizeof *t->key_slots);
    t->key_mask = slots - 1;

    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[512];
    byte_alphabet(byte_to_cp);
    for (int c = 0; c < 512; c++) cp_to_byte[c] = -1;
    for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp[b]] = (int16_t)b;

    size_t ko = 0, dbo = 0;
    json_object_foreach(vocab, key, val)
    {
        int32_t id = (int32_t)json_integer_value(val);
        size_t kl = strlen(key);
        if (t->kind[id]) {
            set_err(err, errlen, "%s: model.vocab: id %d is used twice", name, (int)id);
            return DSV4_TOK_EFORMAT;
        }
        t->kind[id] = 1;
        t->vocab_key_off[id] = (uint32_t)ko;
        memcpy(t->vocab_keys + ko, key, kl + 1);
        size_t s = (size_t)str_hash(key, kl) & t->key_mask;
        while (t->key_slots[s] >= 0) s = (s + 1) & t->key_mask;
        t->key_slots[s] = id;
        ko += kl + 1;
        t->dec_off[id] = (uint32_t)dbo;
        t->dec_len[id] = (uint32_t)bytelevel_decode(cp_to_byte, key, kl, t->dec_bytes + dbo);
        dbo += t->dec_len[id];
    }
    size_t co = 0;
    json_array_foreach(added, i, val)
    {
        int32_t id = (int32_t)json_integer_value(json_object_get(val, "id"));
        json_t *jc = json_object_get(val, "content");
        size_t cl = json_string_length(jc);
        const char *c = json_string_value(jc);
        t->added_off[i] = (uint32_t)co;
        t->added_ids[i] = id;
        memcpy(t->added_content + co, c, cl);
        t->added_content[co + cl] = 0;
        co += cl + 1;
        /* HF decodes an id through the added vocabulary first */
        t->kind[id] = 2;
        t->dec_off[id] = (uint32_t)dbo;
        t->dec_len[id] = (uint32_t)bytelevel_decode(cp_to_byte, c, cl, t->dec_bytes + dbo);
        dbo += t->dec_len[id];
        if (memchr(c, '\n', cl)) t->added_newline = 1;
        int normalized = json_is_true(json_object_get(val, "normalized"));
        if (trie_add(&t->added[normalized ? 1 : 0], (const unsigned char *)c, cl, id) < 0) {
            set_err(err, errlen, "%s: out of memory building the added-token trie", name);
            return DSV4_TOK_ENOMEM;
        }
    }
    t->n_added = json_array_size(added);
    for (size_t id = 0; id < n; id++)
        if (t->dec_len[id] > t->max_token_bytes) t->max_token_bytes = t->dec_len[id];

    for (int b = 0; b < 256; b++) {
        char s[4];
        uint32_t cp = byte_to_cp[b];
        size_t l;
        if (cp < 0x80) {
            s[0] = (char)cp;
            l = 1;
        } else {
            s[0] = (char)(0xC0 | cp >> 6);
            s[1] = (char)(0x80 | (cp & 0x3F));
            l = 2;
        }
        t->byte_id[b] = vocab_find(t, s, l);
    }
    return 0;
}

static int load_merges(dsv4_tokenizer *t, json_t *merges, const char *name, char *err, size_t errlen)
{
    size_t n = json_array_size(merges), slots = 1;
    while (slots < 2 * n + 2) slots *= 2;
    t->merges = malloc(slots * sizeof *t->merges);
    char *buf = NULL;
    size_t bufcap = 0;
    int rc = 0;
    if (!t->merges) {
        set_err(err, errlen, "%s: out of memory for %zu merges", name, n);
        return DSV4_TOK_ENOMEM;
    }
    for (size_t s = 0; s < slots; s++) t->merges[s].key = UINT64_MAX;
    t->merge_mask = slots - 1;
    t->n_merges = n;
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m)
    {
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            /* "left right": HF splits on ' ' and wants exactly two parts */
            const char *s = json_string_value(m);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) goto bad;
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            goto bad;
        }
        if (al + bl + 1 > bufcap) {
            bufcap = (al + bl + 1) * 2;
            char *p = realloc(buf, bufcap);
            if (!p) {
                rc = DSV4_TOK_ENOMEM;
                set_err(err, errlen, "%s: out of memory", name);
                goto done;
            }
            buf = p;
        }
        int32_t ia = vocab_find(t, a, al), ib = vocab_find(t, b, bl);
        memcpy(buf, a, al);
        memcpy(buf + al, b, bl);
        int32_t inew = vocab_find(t, buf, al + bl);
        if (ia < 0 || ib < 0 || inew < 0) {
            buf[al + bl] = 0;
            set_err(err, errlen, "%s: model.merges[%zu]: token %s is not in the vocabulary", name, i,
                    ia < 0 ? "left" : ib < 0 ? "right" : "merged");
            rc = DSV4_TOK_EFORMAT;
            goto done;
        }
        uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
        size_t s = (size_t)dsv4_tok_mix64(key) & t->merge_mask;
        while (t->merges[s].key != UINT64_MAX && t->merges[s].key != key) s = (s + 1) & t->merge_mask;
        /* a repeated pair takes its later rank, as HF's map collect does */
        t->merges[s].key = key;
        t->merges[s].rank = (uint32_t)i;
        t->merges[s].id = inew;
        continue;
    bad:
        set_err(err, errlen, "%s: model.merges[%zu]: expected \"left right\" or [left, right]", name, i);
        rc = DSV4_TOK_EFORMAT;
        goto done;
    }
done:
    free(buf);
    return rc;
}

int dsv4_tokenizer_open_json(const char *json, size_t len, const char *name, dsv4_tokenizer **out,
                             char *err, size_t errlen)
{
    *out = NULL;
    if (!name) name = "tokenizer.json";
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    dsv4_tokenizer *t = NULL;
    int rc;
    if (!root) {
        set_err(err, errlen, "%s:%d:%d: %s", name, jerr.line, jerr.column, jerr.text);
        return DSV4_TOK_EFORMAT;
    }
    if ((rc = check_pipeline(root, name, err, errlen)) < 0) goto fail;
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    json_t *empty = json_array();
    if (!added || json_is_null(added)) added = empty;
    if (!json_is_object(vocab) || !json_is_array(merges) || !json_is_array(added)) {
        set_err(err, errlen, "%s: needs model.vocab (object), model.merges (array), added_tokens (array)", name);
        rc = DSV4_TOK_EFORMAT;
        json_decref(empty);
        goto fail;
    }
    t = calloc(1, sizeof *t);
    if (!t) {
        rc = DSV4_TOK_ENOMEM;
        json_decref(empty);
        goto fail;
    }
    rc = load_vocab(t, vocab, added, name, err, errlen);
    json_decref(empty);
    if (rc < 0) goto fail;
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) {
            set_err(err, errlen, "%s: model.vocab has no token for byte 0x%02x (byte-level BPE needs all 256)",
                    name, b);
            rc = DSV4_TOK_EFORMAT;
            goto fail;
        }
    if ((rc = load_merges(t, merges, name, err, errlen)) < 0) goto fail;
    json_decref(root);
    *out = t;
    return 0;
fail:
    json_decref(root);
    dsv4_tokenizer_close(t);
    return rc;
}

int dsv4_tokenizer_open(const char *path, dsv4_tokenizer **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    int rc;
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return DSV4_TOK_EIO;
    }
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        set_err(err, errlen, "%s: cannot determine the file size", path);
        rc = DSV4_TOK_EIO;
        goto fail;
    }
    if ((size_t)size > MAX_FILE_BYTES) {
        set_err(err, errlen, "%s: %ld bytes is larger than any tokenizer.json (limit %zu)", path, size,
                MAX_FILE_BYTES);
        rc = DSV4_TOK_EFORMAT;
        goto fail;
    }
    buf = malloc((size_t)size + 1);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory for %ld bytes", path, size);
        rc = DSV4_TOK_ENOMEM;
        goto fail;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        set_err(err, errlen, "%s: read error", path);
        rc = DSV4_TOK_EIO;
        goto fail;
    }
    rc = dsv4_tokenizer_open_json(buf, (size_t)size, path, out, err, errlen);
fail:
    free(buf);
    fclose(f);
    return rc;
}

extern const char dsv4_tok_embedded_json[], dsv4_tok_embedded_json_end[];

const char *dsv4_tokenizer_embedded_json(size_t *len)
{
    *len = (size_t)(dsv4_tok_embedded_json_end - dsv4_tok_embedded_json);
    return dsv4_tok_embedded_json;
}

int dsv4_tokenizer_open_embedded(dsv4_tokenizer **out, char *err, size_t errlen)
{
    size_t len;
    const char *json = dsv4_tokenizer_embedded_json(&len);
    return dsv4_tokenizer_open_json(json, len, "<embedded models/deepseek-v4-tokenizer/tokenizer.json>", out,
                                    err, errlen);
}

/* ---- lookups ---- */

size_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *t)
{
    return t->n_ids;
}

int32_t dsv4_tokenizer_token_id(const dsv4_tokenizer *t, const char *token)
{
    for (size_t i = 0; i < t->n_added; i++)
        if (strcmp(t->added_content + t->added_off[i], token) == 0) return t->added_ids[i];
    return vocab_find(t, token, strlen(token));
}

int dsv4_tokenizer_is_added(const dsv4_tokenizer *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->n_ids && t->kind[id] == 2;
}

const char *dsv4_tokenizer_id_bytes(const dsv4_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->n_ids || !t->kind[id]) {
        *len = 0;
        return NULL;
    }
    *len = t->dec_len[id];
    return t->dec_bytes + t->dec_off[id];
}

/* ---- decoding ---- */

int dsv4_tokenizer_decode(const dsv4_tokenizer *t, const int32_t *ids, size_t n, char **out, size_t *len,
                          char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        if (!dsv4_tokenizer_id_bytes(t, ids[i], &l)) {
            set_err(err, errlen, "decode: id %d at position %zu is not a token (vocabulary has %zu ids)",
                    (int)ids[i], i, t->n_ids);
            return DSV4_TOK_EINVAL;
        }
        total += l;
    }
    char *buf = malloc(total + 1);
    if (!buf) {
        set_err(err, errlen, "decode: out of memory for %zu bytes", total);
        return DSV4_TOK_ENOMEM;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + o, t->dec_bytes + t->dec_off[ids[i]], t->dec_len[ids[i]]);
        o += t->dec_len[ids[i]];
    }
    buf[o] = 0;
    *out = buf;
    *len = o;
    return 0;
}

struct dsv4_tok_stream {
    const dsv4_tokenizer *tok;
    char *buf; /* max_token_bytes + 8: the held tail plus one token */
    char tail[4]; /* an incomplete character held back */
    size_t tail_len;
};

dsv4_tok_stream *dsv4_tok_stream_new(const dsv4_tokenizer *tok)
{
    dsv4_tok_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tok = tok;
    s->buf = malloc(tok->max_token_bytes + 8);
    if (!s->buf) {
        free(s);
        return NULL;
    }
    return s;
}

void dsv4_tok_stream_free(dsv4_tok_stream *s)
{
    if (!s) return;
    free(s->buf);
    free(s);
}

/* Length of the incomplete-but-so-far-valid character at the end of b[0,n),
 * or 0 if b ends on a boundary (or in an invalid sequence, which is passed
 * on rather than held forever). */
static size_t incomplete_tail(const unsigned char *b, size_t n)
{
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned c = b[n - k];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
        if (need <= k) return 0; /* complete, or not a lead byte */
        /* the second byte's range depends on the lead (no overlongs, surrogates, > U+10FFFF) */
        if (k >= 2) {
            unsigned c1 = b[n - k + 1];
            if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
                (c == 0xF4 && c1 > 0x8F))
                return 0;
        }
        return k;
    }
    return 0;
}

int dsv4_tok_stream_push(dsv4_tok_stream *s, int32_t id, const char **bytes, size_t *len, char *err,
                         size_t errlen)
{
    size_t l;
    const char *p = dsv4_tokenizer_id_bytes(s->tok, id, &l);
    *bytes = s->buf;
    *len = 0;
    if (!p) {
        set_err(err, errlen, "decode: id %d is not a token (vocabulary has %zu ids)", (int)id, s->tok->n_ids);
        return DSV4_TOK_EINVAL;
    }
    memcpy(s->buf, s->tail, s->tail_len);
    memcpy(s->buf + s->tail_len, p, l);
    size_t n = s->tail_len + l;
    size_t hold = incomplete_tail((const unsigned char *)s->buf, n);
    memcpy(s->tail, s->buf + n - hold, hold);
    s->tail_len = hold;
    *len = n - hold;
    return 0;
}

const char *dsv4_tok_stream_finish(dsv4_tok_stream *s, size_t *len)
{
    memcpy(s->buf, s->tail, s->tail_len);
    *len = s->tail_len;
    s->tail_len = 0;
    return s->buf;
}
