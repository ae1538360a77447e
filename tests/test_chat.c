/* Tests of the DeepSeek-V4 chat encoding (pipeline/chat.c): the four
 * official vectors byte for byte and their token ids (Hugging Face's, see
 * tests/golden/encoding/README.md), the builder API, thinking modes, the
 * Python json.dumps formatting, and the prompt prefix/suffix split whose
 * tokens must concatenate to the tokens of the whole prompt. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "check.h"
#include "ingest/dsv4_tokenizer.h"
#include "pipeline/dsv4_chat.h"

static dsv4_tokenizer *tok;

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

static int ids_equal(const dsv4_tokens *t, const int32_t *ids, size_t n)
{
    return t->n == n && (n == 0 || memcmp(t->ids, ids, n * sizeof *ids) == 0);
}

static void official_vector(int k, dsv4_think think)
{
    char path[128], err[256];
    size_t in_len, out_len;
    snprintf(path, sizeof path, "tests/golden/encoding/test_input_%d.json", k);
    char *in = read_file(path, &in_len);
    snprintf(path, sizeof path, "tests/golden/encoding/test_output_%d.txt", k);
    char *expect = read_file(path, &out_len);
    CHECKF(in && expect, "golden files for vector %d", k);
    if (!in || !expect) goto done;
    dsv4_chat *c = NULL;
    int rc = dsv4_chat_from_json(in, in_len, path, &c, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    dsv4_chat_opts opts = {.think = think};
    char *got = NULL;
    size_t got_len = 0;
    if (rc == 0) rc = dsv4_chat_render(c, &opts, &got, &got_len, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECKF(got && got_len == out_len && memcmp(got, expect, out_len) == 0, "vector %d differs (%zu vs %zu bytes)",
           k, got_len, out_len);
    if (got && (got_len != out_len || memcmp(got, expect, out_len) != 0)) {
        size_t i = 0;
        while (i < got_len && i < out_len && got[i] == expect[i]) i++;
        printf("  first difference at byte %zu: got \"%.60s\"\n  expected \"%.60s\"\n", i, got + i, expect + i);
    }
    /* the rendering's token ids are Hugging Face's ids of the expected text */
    snprintf(path, sizeof path, "tests/golden/encoding/test_output_%d.ids.json", k);
    json_error_t je;
    json_t *ids = json_load_file(path, 0, &je);
    CHECKF(json_is_array(ids), "%s: %s", path, je.text);
    if (got && json_is_array(ids)) {
        dsv4_tokens t = {0};
        CHECK(dsv4_tokenizer_encode(tok, got, got_len, &t, err, sizeof err) == 0);
        int same = t.n == json_array_size(ids);
        for (size_t i = 0; same && i < t.n; i++) same = json_integer_value(json_array_get(ids, i)) == t.ids[i];
        CHECKF(same, "vector %d: %zu ids, expected %zu", k, t.n, json_array_size(ids));
        CHECK(t.n > 0 && t.ids[0] == 0); /* BOS */
        dsv4_tokens_free(&t);
    }
    json_decref(ids);
    free(got);
    dsv4_chat_free(c);
done:
    free(in);
    free(expect);
}

static void test_official_vector_1_tools(void) { official_vector(1, DSV4_THINK_HIGH); }
static void test_official_vector_2_drop_thinking(void) { official_vector(2, DSV4_THINK_HIGH); }
static void test_official_vector_3_developer_search(void) { official_vector(3, DSV4_THINK_HIGH); }
static void test_official_vector_4_chat_task(void) { official_vector(4, DSV4_THINK_NONE); }

#define B "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define E "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define U "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define A "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

static char *render(dsv4_chat *c, dsv4_think think, int keep)
{
    char *out = NULL, err[256];
    size_t len;
    dsv4_chat_opts o = {.think = think, .keep_thinking = keep};
    int rc = dsv4_chat_render(c, &o, &out, &len, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    return out;
}

/* The builder gives what vector 2 gives, and the modes change only what the
 * official format says they change. */
static void test_builder_and_modes(void)
{
    char err[256];
    dsv4_chat *c = dsv4_chat_new();
    CHECK(dsv4_chat_add(c, "system", "You are a helpful assistant.", err, sizeof err) == 0);
    CHECK(dsv4_chat_add(c, "user", "Hello", err, sizeof err) == 0);
    CHECK(dsv4_chat_add(c, "assistant", "Hi there! How can I help you?", err, sizeof err) == 0);
    CHECK(dsv4_chat_set_reasoning(c, "The user said hello, I should greet back.", err, sizeof err) == 0);
    CHECK(dsv4_chat_add(c, "user", "What is the capital of France?", err, sizeof err) == 0);
    CHECK(dsv4_chat_add(c, "assistant", "The capital of France is Paris.", err, sizeof err) == 0);
    CHECK(dsv4_chat_set_reasoning(c, "The user asks about the capital of France. It is Paris.", err, sizeof err) == 0);
    char *expect = read_file("tests/golden/encoding/test_output_2.txt", NULL);
    char *got = render(c, DSV4_THINK_HIGH, 0);
    CHECK(expect && got && strcmp(got, expect) == 0);
    free(got);

    got = render(c, DSV4_THINK_HIGH, 1); /* drop_thinking = False: the first reasoning stays */
    CHECK(got && strstr(got, A "<think>The user said hello, I should greet back.</think>Hi there!"));
    free(got);
    got = render(c, DSV4_THINK_NONE, 0); /* chat mode: no reasoning at all */
    CHECK(got && !strstr(got, "<think>") && !strstr(got, "Paris.</think>") &&
          strstr(got, U "What is the capital of France?" A "</think>The capital"));
    free(got);
    got = render(c, DSV4_THINK_MAX, 0);
    CHECK(got && strncmp(got, B "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n", strlen(B) + 64) == 0);
    CHECK(got && strstr(got, "left unchecked.\n\nYou are a helpful assistant." U "Hello"));
    free(got);

    /* an open question: generation prompt at the end */
    dsv4_chat *q = dsv4_chat_new();
    dsv4_chat_add(q, "user", "2+2?", err, sizeof err);
    got = render(q, DSV4_THINK_HIGH, 0);
    CHECK(got && strcmp(got, B U "2+2?" A "<think>") == 0);
    free(got);
    got = render(q, DSV4_THINK_NONE, 0);
    CHECK(got && strcmp(got, B U "2+2?" A "</think>") == 0);
    free(got);
    CHECK(dsv4_chat_add(q, "wizard", "x", err, sizeof err) < 0 && strstr(err, "wizard"));
    CHECK(dsv4_chat_set_task(q, "nonsense", err, sizeof err) < 0);
    dsv4_chat_free(q);
    free(expect);
    dsv4_chat_free(c);
}

/* Tool calls through the builder, non-string arguments as Python json.dumps
 * writes them, and tool results ordered by call id. */
static void test_tool_calls_and_json(void)
{
    char err[256];
    dsv4_chat *c = dsv4_chat_new();
    dsv4_chat_add(c, "user", "go", err, sizeof err);
    dsv4_chat_add(c, "assistant", NULL, err, sizeof err);
    CHECK(dsv4_chat_add_tool_call(c, "a", "f", "{\"x\": 1.5, \"y\": [true, null, 1e20, 0.0001, 1e-05, 100.0], "
                                               "\"s\": \"t\\u00e9\\n\", \"o\": {\"k\": \"\\u0001/\"}}",
                                  err, sizeof err) == 0);
    CHECK(dsv4_chat_add_tool_call(c, "b", "g", "not json", err, sizeof err) == 0);
    dsv4_chat_add(c, "tool", "RB", err, sizeof err);
    dsv4_chat_set_tool_call_id(c, "b", err, sizeof err);
    dsv4_chat_add(c, "tool", "RA", err, sizeof err);
    dsv4_chat_set_tool_call_id(c, "a", err, sizeof err);
    char *got = render(c, DSV4_THINK_NONE, 0);
    const char *expect =
        B U "go" A "</think>\n\n<\xef\xbd\x9c" "DSML\xef\xbd\x9ctool_calls>\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cinvoke name=\"f\">\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter name=\"x\" string=\"false\">1.5</\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter>\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter name=\"y\" string=\"false\">[true, null, 1e+20, 0.0001, 1e-05, 100.0]"
        "</\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter>\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter name=\"s\" string=\"true\">t\xc3\xa9\n</\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter>\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter name=\"o\" string=\"false\">{\"k\": \"\\u0001/\"}"
        "</\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter>\n"
        "</\xef\xbd\x9c" "DSML\xef\xbd\x9cinvoke>\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cinvoke name=\"g\">\n"
        "<\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter name=\"arguments\" string=\"true\">not json</\xef\xbd\x9c" "DSML\xef\xbd\x9cparameter>\n"
        "</\xef\xbd\x9c" "DSML\xef\xbd\x9cinvoke>\n"
        "</\xef\xbd\x9c" "DSML\xef\xbd\x9ctool_calls>" E U "<tool_result>RA</tool_result>\n\n<tool_result>RB</tool_result>" A
        "</think>";
    CHECKF(got && strcmp(got, expect) == 0, "got: %s", got ? got : "(null)");
    free(got);
    dsv4_chat_free(c);
}

/* prefix + suffix == whole rendering, and their tokens concatenate to the
 * tokens of the whole, for contexts and questions that end/start in every
 * kind of character next to the cut. */
static void test_prompt_parts_token_boundary(void)
{
    static const char *contexts[] = {
        "",  "Plain text.", "ends with spaces   ", "ends with newline\n", "ends with CRLF\r\n", "punct!!!",
        "\xe4\xb8\xad\xe6\x96\x87\xe6\x96\x87\xe6\x9c\xac", "digits 12345", "tabs\t\t", "<\xef\xbd\x9cUser\xef\xbd\x9c>",
        "a\n\n\n", "x \xe2\x80\xa8", "emoji \xf0\x9f\x98\x80", "'s",
    };
    static const char *questions[] = {
        "What?",  " leading space", "  two spaces", "\ttab", "123 digits", "\n\nleading newlines", "!bang",
        "\xe4\xb8\xad\xe6\x96\x87?", "\xe2\x80\xa8line sep", "<think>", "", "'re", "\r\n\r\nCRLF question",
    };
    static const char *systems[] = {NULL, "You are a careful analyst."};
    static const dsv4_think modes[] = {DSV4_THINK_NONE, DSV4_THINK_HIGH, DSV4_THINK_MAX};
    char err[256];
    int n_checked = 0;
    for (size_t s = 0; s < 2; s++)
        for (size_t m = 0; m < 3; m++)
            for (size_t ci = 0; ci < sizeof contexts / sizeof *contexts; ci++) {
                char *first_prefix = NULL;
                for (size_t qi = 0; qi < sizeof questions / sizeof *questions; qi++) {
                    dsv4_chat_opts o = {.think = modes[m]};
                    char *pre, *suf;
                    size_t pl, sl;
                    int rc = dsv4_chat_prompt_parts(systems[s], contexts[ci], strlen(contexts[ci]), questions[qi], &o,
                                                    &pre, &pl, &suf, &sl, err, sizeof err);
                    CHECKF(rc == 0, "%s", err);
                    if (rc) continue;
                    /* the whole conversation rendered directly */
                    const char *q = questions[qi];
                    while (*q == '\r' || *q == '\n') q++;
                    char content[512];
                    snprintf(content, sizeof content, "%s%s%s", contexts[ci], *contexts[ci] ? "\n\n" : "", q);
                    dsv4_chat *c = dsv4_chat_new();
                    if (systems[s]) dsv4_chat_add(c, "system", systems[s], err, sizeof err);
                    dsv4_chat_add(c, "user", content, err, sizeof err);
                    char *full = NULL;
                    size_t fl = 0;
                    CHECK(dsv4_chat_render(c, &o, &full, &fl, err, sizeof err) == 0);
                    CHECK(full && fl == pl + sl && memcmp(full, pre, pl) == 0 && memcmp(full + pl, suf, sl) == 0);
                    if (!first_prefix) first_prefix = strdup(pre);
                    else CHECK(strcmp(first_prefix, pre) == 0); /* the prefix does not depend on the question */
                    dsv4_tokens tp = {0}, ts = {0}, tf = {0};
                    dsv4_tokenizer_encode(tok, pre, pl, &tp, err, sizeof err);
                    dsv4_tokenizer_encode(tok, suf, sl, &ts, err, sizeof err);
                    dsv4_tokenizer_encode(tok, full, fl, &tf, err, sizeof err);
                    dsv4_tokens_append(&tp, ts.ids, ts.n);
                    CHECKF(ids_equal(&tf, tp.ids, tp.n), "context %zu question %zu: tokens differ across the cut", ci, qi);
                    n_checked++;
                    dsv4_tokens_free(&tp);
                    dsv4_tokens_free(&ts);
                    dsv4_tokens_free(&tf);
                    free(full);
                    free(pre);
                    free(suf);
                    dsv4_chat_free(c);
                }
                free(first_prefix);
            }
    CHECK(n_checked == 2 * 3 * 14 * 13);
}

/* Document bytes that are not text (a NUL, invalid UTF-8) reach the prompt intact. */
static void test_prompt_parts_binary_context(void)
{
    char err[256], *pre = NULL, *suf = NULL;
    size_t pl = 0, sl = 0;
    const char ctx[] = "a\0b\xff\xfe end";
    int rc = dsv4_chat_prompt_parts(NULL, ctx, sizeof ctx - 1, "Q?", NULL, &pre, &pl, &suf, &sl, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    const char expect[] = B U "a\0b\xff\xfe end\n\n";
    CHECK(pre && pl == sizeof expect - 1 && memcmp(pre, expect, pl) == 0);
    CHECK(suf && strcmp(suf, "Q?" A "</think>") == 0 && sl == strlen(suf));
    free(pre);
    free(suf);
}

static void test_bad_input(void)
{
    char err[256];
    dsv4_chat *c = NULL;
    CHECK(dsv4_chat_from_json("[{\"role\": 1}]", 13, "conv.json", &c, err, sizeof err) < 0 && strstr(err, "conv.json"));
    CHECK(dsv4_chat_from_json("[{\"role\": \"user\"", 16, "conv.json", &c, err, sizeof err) < 0 &&
          strstr(err, "conv.json:1:"));
    const char *dev = "[{\"role\": \"developer\", \"content\": \"\"}]";
    CHECK(dsv4_chat_from_json(dev, strlen(dev), "d", &c, err, sizeof err) == 0);
    char *out = NULL;
    size_t len;
    CHECK(dsv4_chat_render(c, NULL, &out, &len, err, sizeof err) < 0 && strstr(err, "message 0") && !out);
    dsv4_chat_free(c);
}

int main(void)
{
    char err[512];
    if (dsv4_tokenizer_open_embedded(&tok, err, sizeof err) != 0) {
        printf("FAIL load embedded tokenizer: %s\n", err);
        return 1;
    }
    RUN(test_official_vector_1_tools);
    RUN(test_official_vector_2_drop_thinking);
    RUN(test_official_vector_3_developer_search);
    RUN(test_official_vector_4_chat_task);
    RUN(test_builder_and_modes);
    RUN(test_tool_calls_and_json);
    RUN(test_prompt_parts_token_boundary);
    RUN(test_prompt_parts_binary_context);
    RUN(test_bad_input);
    dsv4_tokenizer_close(tok);
    CHECK_EXIT();
}
