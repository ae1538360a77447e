/* The DeepSeek-V4 tokenizer: byte-level BPE loaded from a Hugging Face
 * tokenizer.json, producing exactly the ids Hugging Face `tokenizers` (0.23,
 * Oniguruma 6.9.10, Unicode 16.0) produces for the same UTF-8 text.
 *
 * Exactness is the point: every prefix-cache key is made of token ids, so one
 * wrong id changes every key after it. The pipeline that produces an id list:
 *   1. added tokens (the 849 markers such as <｜User｜>, <think>) are cut out of
 *      the raw text first, leftmost-longest, in two passes as HF does (first the
 *      tokens with normalized=false, then those with normalized=true);
 *   2. the rest is split by the DeepSeek pre-tokenizer (digit groups of 1-3,
 *      CJK runs, then the word/punctuation/whitespace regex, including the
 *      backtracking `\s+(?!\S)` rule) — a hand-written scanner, not a regex
 *      engine; only this pre-tokenizer is implemented and loading a
 *      tokenizer.json with another one fails with a message saying so;
 *   3. each piece's bytes go through BPE by merge rank (HF's order: lowest rank,
 *      then leftmost), with a per-encoder cache of piece -> ids.
 * There is no normalizer. Input need not be valid UTF-8: an invalid byte acts
 * as a character with no Unicode properties (HF cannot take such input).
 *
 * Threads: a dsv4_tokenizer is immutable after open and may be shared by any
 * number of threads. A dsv4_tok_encoder (cache + scratch) belongs to one thread
 * at a time. Functions that can fail return 0 or a negative DSV4_TOK_E* code
 * and write a message naming the file, line or id into err (errlen bytes; err
 * may be NULL). Memory: an encoder's cache is capped (a few MB); encoding a
 * single pre-token piece of n bytes longer than 256 bytes takes about 20n bytes
 * of scratch (only pathological input has such pieces: a 10 MB run of one
 * letter is one piece).
 */
#ifndef DSV4_TOKENIZER_H
#define DSV4_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum {
    DSV4_TOK_OK = 0,
    DSV4_TOK_EIO = -1,     /* a file could not be read */
    DSV4_TOK_EFORMAT = -2, /* tokenizer.json malformed or of an unsupported kind */
    DSV4_TOK_ENOMEM = -3,
    DSV4_TOK_EINVAL = -4,  /* bad argument: unknown id, bad UTF-8 where text is needed */
};

typedef struct dsv4_tokenizer dsv4_tokenizer;
typedef struct dsv4_tok_encoder dsv4_tok_encoder;
typedef struct dsv4_tok_stream dsv4_tok_stream;

/* A growable array of token ids. Zero-initialise ({0}) before first use;
 * every encode function appends to it. dsv4_tokens_free releases ids and
 * resets the struct. */
typedef struct dsv4_tokens {
    int32_t *ids;
    size_t n;
    size_t cap;
} dsv4_tokens;

void dsv4_tokens_free(dsv4_tokens *t);
/* Appends n ids (e.g. a BOS id, or one encoding after another). */
int dsv4_tokens_append(dsv4_tokens *t, const int32_t *ids, size_t n);

/* ---- loading ---- */

/* Loads a tokenizer.json (a model directory's own file). Checks the model is
 * BPE without byte fallback, the normalizer is empty, the pre-tokenizer is the
 * DeepSeek V3/V4 sequence and every merge names vocabulary tokens. */
int dsv4_tokenizer_open(const char *path, dsv4_tokenizer **out, char *err, size_t errlen);
/* The same from bytes in memory; name is used in error messages. */
int dsv4_tokenizer_open_json(const char *json, size_t len, const char *name, dsv4_tokenizer **out,
                             char *err, size_t errlen);
/* The DeepSeek-V4 tokenizer.json carried inside the program
 * (models/deepseek-v4-tokenizer/, see its PROVENANCE.md). */
int dsv4_tokenizer_open_embedded(dsv4_tokenizer **out, char *err, size_t errlen);
/* The embedded tokenizer.json bytes (static storage, not NUL-counted in len),
 * e.g. for writing into a generated model directory. */
const char *dsv4_tokenizer_embedded_json(size_t *len);
void dsv4_tokenizer_close(dsv4_tokenizer *tok);

/* Number of ids: highest id + 1 (128846 for the embedded file; the model's
 * embedding table may be larger, e.g. config.json vocab_size 129280). */
size_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tok);
/* The id of an added/special token by its exact content ("<｜User｜>",
 * "<think>"), else of a vocabulary entry by its tokenizer.json key (byte-level
 * form, e.g. "Ġthe"); -1 when there is none. */
int32_t dsv4_tokenizer_token_id(const dsv4_tokenizer *tok, const char *token);
/* 1 if id is an added token (a marker matched literally), else 0. */
int dsv4_tokenizer_is_added(const dsv4_tokenizer *tok, int32_t id);
/* The bytes id decodes to (pointer into the tokenizer, not NUL-terminated);
 * NULL if id is not a token. */
const char *dsv4_tokenizer_id_bytes(const dsv4_tokenizer *tok, int32_t id, size_t *len);

/* ---- encoding ---- */

/* Encodes len bytes of text, appending ids to out. Convenience form: makes a
 * temporary encoder, so repeated calls do not share a cache. */
int dsv4_tokenizer_encode(const dsv4_tokenizer *tok, const char *text, size_t len, dsv4_tokens *out,
                          char *err, size_t errlen);

/* An encoder: the piece cache and scratch space of one thread. */
dsv4_tok_encoder *dsv4_tok_encoder_new(const dsv4_tokenizer *tok);
void dsv4_tok_encoder_free(dsv4_tok_encoder *enc);
int dsv4_tok_encoder_encode(dsv4_tok_encoder *enc, const char *text, size_t len, dsv4_tokens *out,
                            char *err, size_t errlen);

/* Encodes n_docs documents on n_threads threads (0 = number of CPUs);
 * outs[i] receives document i's ids, the same as dsv4_tokenizer_encode would
 * give. outs must hold n_docs zero-initialised dsv4_tokens. */
int dsv4_tokenizer_encode_batch(const dsv4_tokenizer *tok, size_t n_docs, const char *const *texts,
                                const size_t *lens, int n_threads, dsv4_tokens *outs, char *err,
                                size_t errlen);

/* Encodes one large text on n_threads threads: it is cut into about 1 MiB
 * pieces at points where the tokenization is known to split anyway (see
 * dsv4_tokenizer_safe_cut), so the result equals the serial encoding. */
int dsv4_tokenizer_encode_parallel(const dsv4_tokenizer *tok, const char *text, size_t len,
                                   int n_threads, dsv4_tokens *out, char *err, size_t errlen);

/* Untrusted text. DSV4_TOK_PLAIN: added tokens are not matched, so marker
 * strings inside a document (a contract that contains "<｜Assistant｜>" or
 * "</think>") are encoded as the text they are and can never act as control
 * tokens of the prompt. The pipeline encodes document context this way and
 * only the chat template's own markers with the default matching. Without
 * flags the *_ex functions equal the ones above. */
enum { DSV4_TOK_PLAIN = 1u };
void dsv4_tok_encoder_set_flags(dsv4_tok_encoder *enc, unsigned flags);
int dsv4_tokenizer_encode_batch_ex(const dsv4_tokenizer *tok, size_t n_docs, const char *const *texts,
                                   const size_t *lens, unsigned flags, int n_threads, dsv4_tokens *outs,
                                   char *err, size_t errlen);
int dsv4_tokenizer_encode_parallel_ex(const dsv4_tokenizer *tok, const char *text, size_t len, unsigned flags,
                                      int n_threads, dsv4_tokens *out, char *err, size_t errlen);

/* The largest offset c <= len with c > 0 at which text may be cut so that
 * encode(text[0,c)) + encode(text[c,len)) == encode(text), found by searching
 * back from len; 0 if none. A cut is safe right after a '\n' that is followed
 * by a printable ASCII character other than space: the pre-tokenizer always
 * ends a piece there and no added token contains a newline (checked at load).
 * Used to stream large inputs through the encoder in bounded memory. */
size_t dsv4_tokenizer_safe_cut(const dsv4_tokenizer *tok, const char *text, size_t len);

/* ---- decoding ---- */

/* Decodes ids to bytes (malloc'd, NUL-terminated for convenience; *len
 * excludes the NUL). As HF's ByteLevel decoder: vocabulary tokens map their
 * byte-level characters back to bytes, added tokens give their content.
 * The bytes are returned raw (HF's decode to a string would replace invalid
 * UTF-8 with U+FFFD). An id that is not a token is an error naming it. */
int dsv4_tokenizer_decode(const dsv4_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                          size_t *len, char *err, size_t errlen);

/* Streaming decoder for generated tokens: each push returns the bytes that
 * are complete UTF-8 so far, holding back the tail of a character whose
 * bytes are split across tokens; invalid sequences are passed through as
 * they are, never held. finish returns what is held (an incomplete sequence
 * at the end of the stream). Returned pointers stay valid until the next
 * call on the stream. */
dsv4_tok_stream *dsv4_tok_stream_new(const dsv4_tokenizer *tok);
void dsv4_tok_stream_free(dsv4_tok_stream *s);
int dsv4_tok_stream_push(dsv4_tok_stream *s, int32_t id, const char **bytes, size_t *len, char *err,
                         size_t errlen);
const char *dsv4_tok_stream_finish(dsv4_tok_stream *s, size_t *len);

#endif
