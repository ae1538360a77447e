/* DeepSeek-V4 chat encoding (see pipeline/dsv4_chat.h), following the
 * official encoding_dsv4.py step by step: tool messages folded into user
 * turns, tool results ordered by the calls that asked for them, earlier
 * reasoning dropped, then each message rendered with its transition to the
 * next turn.
 *
 * Messages are kept as jansson objects because the official code works on
 * Python dicts and its behaviour hangs on dict details: a missing key versus
 * null, Python truthiness ("content or ''"), key order of tool schemas, and
 * json.dumps formatting (", " and ": " separators, raw non-ASCII, Python's
 * float repr). Those are reproduced here on the jansson tree; see py_dumps. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/dsv4_chat.h"

#define BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define REMINDER "<\xef\xbd\x9clatest_reminder\xef\xbd\x9c>"
#define DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"
#define THINK "<think>"
#define THINK_END "</think>"

static const char EFFORT_MAX[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

/* The tools section of a system/developer prompt, split around the schemas. */
static const char TOOLS_HEAD[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "
    "\"<" DSML "tool_calls>\" block like the following:\n\n"
    "<" DSML "tool_calls>\n"
    "<" DSML "invoke name=\"$TOOL_NAME\">\n"
    "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML "parameter>\n"
    "...\n"
    "</" DSML "invoke>\n"
    "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</" DSML "invoke>\n"
    "</" DSML "tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, "
    "booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by " THINK "), you MUST output your complete reasoning inside " THINK
    "..." THINK_END " BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after " THINK_END " with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
static const char TOOLS_TAIL[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
static const char RESPONSE_FORMAT[] =
    "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

static const char *const TASKS[][2] = {
    {"action", "<\xef\xbd\x9c" "action\xef\xbd\x9c>"},     {"query", "<\xef\xbd\x9cquery\xef\xbd\x9c>"},
    {"authority", "<\xef\xbd\x9c" "authority\xef\xbd\x9c>"}, {"domain", "<\xef\xbd\x9c" "domain\xef\xbd\x9c>"},
    {"title", "<\xef\xbd\x9ctitle\xef\xbd\x9c>"},           {"read_url", "<\xef\xbd\x9cread_url\xef\xbd\x9c>"},
};

struct dsv4_chat {
    json_t *msgs; /* array of message objects */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- a growable string ---- */

typedef struct sb {
    char *p;
    size_t n, cap;
    int oom;
} sb;

static void sb_addn(sb *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_add(sb *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

/* ---- Python's json.dumps(x, ensure_ascii=False) ---- */

static void py_dump_string(sb *b, const char *s, size_t n)
{
    sb_add(b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", c);
            esc = u;
        }
        if (esc) {
            sb_addn(b, s + run, i - run);
            sb_add(b, esc);
            run = i + 1;
        }
    }
    sb_addn(b, s + run, n - run);
    sb_add(b, "\"");
}

/* Python's repr(float): the shortest digits that round-trip, fixed notation
 * for decimal exponents in [-4, 16), else d.ddde+XX. */
static void py_dump_real(sb *b, double v)
{
    if (isnan(v)) {
        sb_add(b, "NaN");
        return;
    }
    if (isinf(v)) {
        sb_add(b, v < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char buf[64];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v) break;
    }
    /* buf = [-]d.ddde[+-]XX: take the digits and the exponent */
    char digits[32];
    int nd = 0, neg = buf[0] == '-';
    const char *p = buf + neg;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    if (neg) sb_add(b, "-");
    int decpt = exp10 + 1; /* value = 0.DIGITS * 10^decpt */
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            sb_add(b, "0.");
            for (int i = 0; i < -decpt; i++) sb_add(b, "0");
            sb_add(b, digits);
        } else if (decpt >= nd) {
            sb_add(b, digits);
            for (int i = nd; i < decpt; i++) sb_add(b, "0");
            sb_add(b, ".0");
        } else {
            sb_addn(b, digits, (size_t)decpt);
            sb_add(b, ".");
            sb_add(b, digits + decpt);
        }
    } else {
        sb_addn(b, digits, 1);
        if (nd > 1) {
            sb_add(b, ".");
            sb_add(b, digits + 1);
        }
        snprintf(buf, sizeof buf, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        sb_add(b, buf);
    }
}

static void py_dumps(sb *b, const json_t *v)
{
    char num[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int first = 1;
        sb_add(b, "{");
        json_object_foreach((json_t *)v, k, x)
        {
            if (!first) sb_add(b, ", ");
            first = 0;
            py_dump_string(b, k, strlen(k));
            sb_add(b, ": ");
            py_dumps(b, x);
        }
        sb_add(b, "}");
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        sb_add(b, "[");
        json_array_foreach(v, i, x)
        {
            if (i) sb_add(b, ", ");
            py_dumps(b, x);
        }
        sb_add(b, "]");
        break;
    }
    case JSON_STRING: py_dump_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        sb_add(b, num);
        break;
    case JSON_REAL: py_dump_real(b, json_real_value(v)); break;
    case JSON_TRUE: sb_add(b, "true"); break;
    case JSON_FALSE: sb_add(b, "false"); break;
    case JSON_NULL: sb_add(b, "null"); break;
    }
}

/* str(x) as Python's str.format would write a value: strings raw, None as
 * "None"; containers are written as JSON (Python would write its repr; the
 * official format never puts containers here in valid input). */
static void py_str(sb *b, const json_t *v)
{
    if (!v || json_is_null(v)) sb_add(b, "None");
    else if (json_is_string(v)) sb_addn(b, json_string_value(v), json_string_length(v));
    else if (json_is_true(v)) sb_add(b, "True");
    else if (json_is_false(v)) sb_add(b, "False");
    else py_dumps(b, v);
}

/* ---- Python dict semantics on jansson ---- */

/* msg.get(key): NULL for missing or null */
static json_t *get(const json_t *o, const char *key)
{
    json_t *v = json_is_object(o) ? json_object_get(o, key) : NULL;
    return v && !json_is_null(v) ? v : NULL;
}

static int truthy(const json_t *v)
{
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: return json_object_size(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_TRUE: return 1;
    default: return 0;
    }
}

static const char *role_of(const json_t *m)
{
    json_t *r = get(m, "role");
    return r && json_is_string(r) ? json_string_value(r) : "";
}

static int is_role(const json_t *m, const char *role)
{
    return strcmp(role_of(m), role) == 0;
}

/* `value or ""` for text fields */
static void add_text_or_empty(sb *b, const json_t *v)
{
    if (truthy(v)) py_str(b, v);
}

/* ---- building ---- */

dsv4_chat *dsv4_chat_new(void)
{
    dsv4_chat *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->msgs = json_array();
    if (!c->msgs) {
        free(c);
        return NULL;
    }
    return c;
}

void dsv4_chat_free(dsv4_chat *c)
{
    if (!c) return;
    json_decref(c->msgs);
    free(c);
}

static json_t *last_msg(dsv4_chat *c, char *err, size_t errlen)
{
    size_t n = json_array_size(c->msgs);
    if (!n) set_err(err, errlen, "chat: no message to set a field on");
    return n ? json_array_get(c->msgs, n - 1) : NULL;
}

static int set_string(dsv4_chat *c, const char *key, const char *value, char *err, size_t errlen)
{
    json_t *m = last_msg(c, err, errlen);
    if (!m) return DSV4_CHAT_EINVAL;
    json_t *s = json_string(value);
    if (!s) {
        set_err(err, errlen, "chat: message %zu: %s is not valid UTF-8", json_array_size(c->msgs) - 1, key);
        return DSV4_CHAT_EINVAL;
    }
    return json_object_set_new(m, key, s) == 0 ? 0 : DSV4_CHAT_ENOMEM;
}

int dsv4_chat_add(dsv4_chat *c, const char *role, const char *content, char *err, size_t errlen)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer", "latest_reminder"};
    int known = 0;
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) known |= strcmp(role, roles[i]) == 0;
    if (!known) {
        set_err(err, errlen, "chat: unknown role '%s'", role);
        return DSV4_CHAT_EINVAL;
    }
    json_t *m = json_object();
    if (!m || json_object_set_new(m, "role", json_string(role)) != 0 || json_array_append_new(c->msgs, m) != 0)
        return DSV4_CHAT_ENOMEM;
    return content ? set_string(c, "content", content, err, errlen) : 0;
}

int dsv4_chat_set_reasoning(dsv4_chat *c, const char *reasoning, char *err, size_t errlen)
{
    return set_string(c, "reasoning_content", reasoning, err, errlen);
}

int dsv4_chat_set_tool_call_id(dsv4_chat *c, const char *id, char *err, size_t errlen)
{
    return set_string(c, "tool_call_id", id, err, errlen);
}

int dsv4_chat_set_task(dsv4_chat *c, const char *task, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof TASKS / sizeof TASKS[0]; i++)
        if (strcmp(task, TASKS[i][0]) == 0) return set_string(c, "task", task, err, errlen);
    set_err(err, errlen, "chat: unknown task '%s' (action, query, authority, domain, title, read_url)", task);
    return DSV4_CHAT_EINVAL;
}

int dsv4_chat_add_tool_call(dsv4_chat *c, const char *id, const char *name, const char *arguments_json,
                            char *err, size_t errlen)
{
    json_t *m = last_msg(c, err, errlen);
    if (!m) return DSV4_CHAT_EINVAL;
    json_t *calls = json_object_get(m, "tool_calls");
    if (!json_is_array(calls)) {
        calls = json_array();
        if (!calls || json_object_set_new(m, "tool_calls", calls) != 0) return DSV4_CHAT_ENOMEM;
    }
    json_t *call = json_pack("{s:s, s:{s:s, s:s}}", "type", "function", "function", "name", name, "arguments",
                             arguments_json);
    if (!call) {
        set_err(err, errlen, "chat: tool call name or arguments is not valid UTF-8");
        return DSV4_CHAT_EINVAL;
    }
    if (id) json_object_set_new(call, "id", json_string(id));
    return json_array_append_new(calls, call) == 0 ? 0 : DSV4_CHAT_ENOMEM;
}

int dsv4_chat_set_tools(dsv4_chat *c, const char *tools_json, char *err, size_t errlen)
{
    json_t *m = last_msg(c, err, errlen);
    if (!m) return DSV4_CHAT_EINVAL;
    json_error_t je;
    json_t *tools = json_loads(tools_json, 0, &je);
    if (!json_is_array(tools)) {
        set_err(err, errlen, "chat: tools:%d:%d: %s", je.line, je.column, tools ? "not an array" : je.text);
        json_decref(tools);
        return DSV4_CHAT_EINVAL;
    }
    return json_object_set_new(m, "tools", tools) == 0 ? 0 : DSV4_CHAT_ENOMEM;
}

int dsv4_chat_from_json(const char *json, size_t len, const char *name, dsv4_chat **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    if (!name) name = "conversation";
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_ALLOW_NUL, &je);
    if (!root) {
        set_err(err, errlen, "%s:%d:%d: %s", name, je.line, je.column, je.text);
        return DSV4_CHAT_EINVAL;
    }
    json_t *msgs = json_is_array(root) ? root : json_object_get(root, "messages");
    if (!json_is_array(msgs)) {
        set_err(err, errlen, "%s: expected an array of messages or an object with \"messages\"", name);
        json_decref(root);
        return DSV4_CHAT_EINVAL;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role"))) {
            set_err(err, errlen, "%s: messages[%zu]: expected an object with a string \"role\"", name, i);
            json_decref(root);
            return DSV4_CHAT_EINVAL;
        }
    }
    json_t *tools = json_is_object(root) ? json_object_get(root, "tools") : NULL;
    if (tools && json_array_size(msgs) > 0) json_object_set(json_array_get(msgs, 0), "tools", tools);
    dsv4_chat *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(root);
        return DSV4_CHAT_ENOMEM;
    }
    c->msgs = json_incref(msgs);
    json_decref(root);
    *out = c;
    return 0;
}

/* ---- preprocessing (merge_tool_messages, sort_tool_results_by_call_order,
 *      _drop_thinking_messages) ---- */

static json_t *merge_tool_messages(const json_t *msgs)
{
    json_t *merged = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *last = json_array_size(merged) ? json_array_get(merged, json_array_size(merged) - 1) : NULL;
        int last_user_blocks = last && is_role(last, "user") && json_object_get(last, "content_blocks");
        if (is_role(m, "tool")) {
            json_t *id = json_object_get(m, "tool_call_id");
            json_t *content = json_object_get(m, "content");
            json_t *block = json_pack("{s:s, s:o, s:o}", "type", "tool_result", "tool_use_id",
                                      id ? json_incref(id) : json_string(""), "content",
                                      content ? json_incref(content) : json_string(""));
            if (last_user_blocks) {
                json_array_append_new(json_object_get(last, "content_blocks"), block);
            } else {
                json_t *nm = json_pack("{s:s, s:[o]}", "role", "user", "content_blocks", block);
                json_array_append_new(merged, nm);
            }
        } else if (is_role(m, "user")) {
            json_t *content = json_object_get(m, "content");
            json_t *text = content ? json_incref(content) : json_string("");
            json_t *block = json_pack("{s:s, s:o}", "type", "text", "text", text);
            if (last_user_blocks && !get(last, "task")) {
                json_array_append_new(json_object_get(last, "content_blocks"), block);
            } else {
                json_t *nm = json_pack("{s:s, s:o, s:[o]}", "role", "user", "content",
                                       content ? json_incref(content) : json_string(""), "content_blocks", block);
                static const char *const keep[] = {"task", "wo_eos", "mask"};
                for (int k = 0; k < 3; k++)
                    if (json_object_get(m, keep[k])) json_object_set(nm, keep[k], json_object_get(m, keep[k]));
                json_array_append_new(merged, nm);
            }
        } else {
            json_array_append_new(merged, json_deep_copy(m));
        }
    }
    return merged;
}

static const char *call_id(const json_t *tc)
{
    json_t *id = get(tc, "id");
    if (truthy(id) && json_is_string(id)) return json_string_value(id);
    json_t *fid = get(get(tc, "function"), "id");
    return fid && json_is_string(fid) ? json_string_value(fid) : "";
}

static void sort_tool_results(json_t *msgs)
{
    json_t *order = NULL; /* the tool calls of the latest assistant message that had some */
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (is_role(m, "assistant") && truthy(get(m, "tool_calls"))) {
            order = get(m, "tool_calls");
        } else if (is_role(m, "user") && truthy(get(m, "content_blocks")) && order) {
            json_t *blocks = get(m, "content_blocks");
            size_t nb = json_array_size(blocks), nt = 0;
            json_t **tb = calloc(nb ? nb : 1, sizeof *tb);
            size_t *key = calloc(nb ? nb : 1, sizeof *key);
            if (!tb || !key) {
                free(tb);
                free(key);
                continue;
            }
            for (size_t b = 0; b < nb; b++) {
                json_t *blk = json_array_get(blocks, b);
                json_t *type = get(blk, "type");
                if (!type || !json_is_string(type) || strcmp(json_string_value(type), "tool_result") != 0) continue;
                json_t *use = get(blk, "tool_use_id");
                const char *uid = use && json_is_string(use) ? json_string_value(use) : "";
                size_t pos = 0; /* an unknown id sorts as 0; a repeated id takes its last index */
                for (size_t k = 0; k < json_array_size(order); k++)
                    if (*call_id(json_array_get(order, k)) && strcmp(call_id(json_array_get(order, k)), uid) == 0)
                        pos = k;
                tb[nt] = json_incref(blk);
                key[nt++] = pos;
            }
            if (nt > 1) {
                /* stable insertion sort by key */
                for (size_t a = 1; a < nt; a++)
                    for (size_t b = a; b > 0 && key[b - 1] > key[b]; b--) {
                        size_t tk = key[b];
                        key[b] = key[b - 1];
                        key[b - 1] = tk;
                        json_t *tj = tb[b];
                        tb[b] = tb[b - 1];
                        tb[b - 1] = tj;
                    }
                size_t k = 0;
                for (size_t b = 0; b < nb; b++) {
                    json_t *type = get(json_array_get(blocks, b), "type");
                    if (type && json_is_string(type) && strcmp(json_string_value(type), "tool_result") == 0)
                        json_array_set(blocks, b, tb[k++]);
                }
            }
            for (size_t k = 0; k < nt; k++) json_decref(tb[k]);
            free(tb);
            free(key);
        }
    }
}

static long last_user_index(const json_t *msgs)
{
    for (size_t i = json_array_size(msgs); i-- > 0;)
        if (is_role(json_array_get(msgs, i), "user") || is_role(json_array_get(msgs, i), "developer")) return (long)i;
    return -1;
}

static json_t *drop_thinking_messages(const json_t *msgs)
{
    long last = last_user_index(msgs);
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *r = role_of(m);
        if (!strcmp(r, "user") || !strcmp(r, "system") || !strcmp(r, "tool") || !strcmp(r, "latest_reminder") ||
            !strcmp(r, "direct_search_results") || (long)i >= last) {
            json_array_append(out, m);
        } else if (!strcmp(r, "assistant")) {
            json_t *copy = json_copy(m);
            json_object_del(copy, "reasoning_content");
            json_array_append_new(out, copy);
        } /* developer and other roles before the last user turn are dropped */
    }
    return out;
}

/* ---- rendering ---- */

static int render_tools(sb *b, const json_t *tools, size_t idx, char *err, size_t errlen)
{
    sb_add(b, TOOLS_HEAD);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        if (!fn) {
            set_err(err, errlen, "chat: message %zu: tools[%zu] has no \"function\"", idx, i);
            return DSV4_CHAT_EINVAL;
        }
        if (i) sb_add(b, "\n");
        py_dumps(b, fn);
    }
    sb_add(b, TOOLS_TAIL);
    return 0;
}

static int render_tool_calls(sb *b, const json_t *calls, size_t idx, char *err, size_t errlen)
{
    sb_add(b, "\n\n<" DSML "tool_calls>\n");
    size_t i;
    json_t *tc;
    json_array_foreach(calls, i, tc)
    {
        json_t *fn = json_object_get(tc, "function");
        if (!json_is_object(fn)) {
            set_err(err, errlen, "chat: message %zu: tool_calls[%zu] has no \"function\"", idx, i);
            return DSV4_CHAT_EINVAL;
        }
        json_t *raw = json_object_get(fn, "arguments"), *args = NULL;
        if (json_is_string(raw)) {
            json_error_t je;
            args = json_loadb(json_string_value(raw), json_string_length(raw), JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        }
        if (!args) args = json_pack("{s:o}", "arguments", raw ? json_incref(raw) : json_null());
        if (!json_is_object(args)) {
            set_err(err, errlen, "chat: message %zu: tool_calls[%zu]: arguments is JSON but not an object", idx, i);
            json_decref(args);
            return DSV4_CHAT_EINVAL;
        }
        if (i) sb_add(b, "\n");
        sb_add(b, "<" DSML "invoke name=\"");
        py_str(b, json_object_get(fn, "name"));
        sb_add(b, "\">\n");
        const char *k;
        json_t *v;
        int first = 1;
        json_object_foreach(args, k, v)
        {
            if (!first) sb_add(b, "\n");
            first = 0;
            sb_add(b, "<" DSML "parameter name=\"");
            sb_add(b, k);
            if (json_is_string(v)) {
                sb_add(b, "\" string=\"true\">");
                sb_addn(b, json_string_value(v), json_string_length(v));
            } else {
                sb_add(b, "\" string=\"false\">");
                py_dumps(b, v);
            }
            sb_add(b, "</" DSML "parameter>");
        }
        sb_add(b, "\n</" DSML "invoke>");
        json_decref(args);
    }
    sb_add(b, "\n</" DSML "tool_calls>");
    return 0;
}

static void render_blocks(sb *b, const json_t *blocks)
{
    size_t i;
    json_t *blk;
    json_array_foreach(blocks, i, blk)
    {
        if (i) sb_add(b, "\n\n");
        json_t *type = get(blk, "type");
        const char *ts = type && json_is_string(type) ? json_string_value(type) : "";
        if (!strcmp(ts, "text")) {
            json_t *text = get(blk, "text");
            if (text) py_str(b, text);
        } else if (!strcmp(ts, "tool_result")) {
            json_t *c = json_object_get(blk, "content");
            sb_add(b, "<tool_result>");
            if (json_is_array(c)) {
                size_t j;
                json_t *part;
                json_array_foreach(c, j, part)
                {
                    if (j) sb_add(b, "\n\n");
                    json_t *pt = get(part, "type");
                    if (pt && json_is_string(pt) && !strcmp(json_string_value(pt), "text")) {
                        json_t *text = get(part, "text");
                        if (text) py_str(b, text);
                    } else {
                        sb_add(b, "[Unsupported ");
                        py_str(b, pt);
                        sb_add(b, "]");
                    }
                }
            } else if (c) {
                py_str(b, c);
            }
            sb_add(b, "</tool_result>");
        } else {
            sb_add(b, "[Unsupported ");
            py_str(b, type);
            sb_add(b, "]");
        }
    }
}

static int render_message(sb *b, size_t i, const json_t *msgs, int thinking, int drop, int effort_max, char *err,
                          size_t errlen)
{
    const json_t *m = json_array_get(msgs, i);
    long last = last_user_index(msgs);
    const char *role = role_of(m);
    json_t *content = get(m, "content");
    json_t *tools = get(m, "tools"), *rf = get(m, "response_format");
    int rc;
    if (truthy(tools) && !json_is_array(tools)) {
        set_err(err, errlen, "chat: message %zu: tools must be an array", i);
        return DSV4_CHAT_EINVAL;
    }
    if (i == 0 && thinking && effort_max) sb_add(b, EFFORT_MAX);

    if (!strcmp(role, "system") || !strcmp(role, "developer")) {
        if (!strcmp(role, "developer")) {
            if (!truthy(content)) {
                set_err(err, errlen, "chat: message %zu: a developer message needs content", i);
                return DSV4_CHAT_EINVAL;
            }
            sb_add(b, USER);
        }
        add_text_or_empty(b, content);
        if (truthy(tools)) {
            sb_add(b, "\n\n");
            if ((rc = render_tools(b, tools, i, err, errlen)) < 0) return rc;
        }
        if (truthy(rf)) {
            sb_add(b, RESPONSE_FORMAT);
            py_dumps(b, rf);
        }
    } else if (!strcmp(role, "user")) {
        sb_add(b, USER);
        json_t *blocks = get(m, "content_blocks");
        if (truthy(blocks) && json_is_array(blocks)) render_blocks(b, blocks);
        else add_text_or_empty(b, content);
    } else if (!strcmp(role, "latest_reminder")) {
        sb_add(b, REMINDER);
        py_str(b, content);
    } else if (!strcmp(role, "assistant")) {
        int prev_task = i > 0 && get(json_array_get(msgs, i - 1), "task");
        if (thinking && !prev_task && (!drop || (long)i > last)) {
            add_text_or_empty(b, get(m, "reasoning_content"));
            sb_add(b, THINK_END);
        }
        add_text_or_empty(b, content);
        json_t *calls = get(m, "tool_calls");
        if (truthy(calls)) {
            if (!json_is_array(calls)) {
                set_err(err, errlen, "chat: message %zu: tool_calls must be an array", i);
                return DSV4_CHAT_EINVAL;
            }
            if ((rc = render_tool_calls(b, calls, i, err, errlen)) < 0) return rc;
        }
        if (!truthy(get(m, "wo_eos"))) sb_add(b, EOS);
    } else {
        set_err(err, errlen, "chat: message %zu: role '%s' cannot be rendered%s", i, role,
                !strcmp(role, "tool") ? " (tool messages are merged into user turns first)" : "");
        return DSV4_CHAT_EINVAL;
    }

    /* the transition to what follows: only before an assistant turn, a
     * reminder, or at the end */
    if (i + 1 < json_array_size(msgs)) {
        const char *next = role_of(json_array_get(msgs, i + 1));
        if (strcmp(next, "assistant") != 0 && strcmp(next, "latest_reminder") != 0) return 0;
    }
    json_t *task = get(m, "task");
    if (task) {
        const char *marker = NULL;
        for (size_t k = 0; k < sizeof TASKS / sizeof TASKS[0]; k++)
            if (json_is_string(task) && !strcmp(json_string_value(task), TASKS[k][0])) marker = TASKS[k][1];
        if (!marker) {
            set_err(err, errlen, "chat: message %zu: invalid task", i);
            return DSV4_CHAT_EINVAL;
        }
        if (strcmp(json_string_value(task), "action") != 0) {
            sb_add(b, marker);
        } else {
            sb_add(b, ASSISTANT);
            sb_add(b, thinking ? THINK : THINK_END);
            sb_add(b, marker);
        }
    } else if (!strcmp(role, "user") || !strcmp(role, "developer")) {
        sb_add(b, ASSISTANT);
        sb_add(b, thinking && (!drop || (long)i >= last) ? THINK : THINK_END);
    }
    return 0;
}

int dsv4_chat_render(const dsv4_chat *c, const dsv4_chat_opts *opts, char **out, size_t *len, char *err,
                     size_t errlen)
{
    static const dsv4_chat_opts defaults = {0};
    if (!opts) opts = &defaults;
    *out = NULL;
    if (len) *len = 0;
    int thinking = opts->think != DSV4_THINK_NONE;
    int drop = !opts->keep_thinking;
    sb b = {0};
    int rc = 0;
    json_t *msgs = merge_tool_messages(c->msgs);
    if (!msgs) return DSV4_CHAT_ENOMEM;
    sort_tool_results(msgs);
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) if (truthy(get(m, "tools"))) drop = 0;
    if (thinking && drop) {
        json_t *kept = drop_thinking_messages(msgs);
        json_decref(msgs);
        msgs = kept;
    }
    if (!opts->no_bos) sb_add(&b, BOS);
    else sb_add(&b, "");
    for (i = 0; i < json_array_size(msgs) && rc == 0; i++)
        rc = render_message(&b, i, msgs, thinking, drop, opts->think == DSV4_THINK_MAX, err, errlen);
    json_decref(msgs);
    if (rc == 0 && b.oom) rc = DSV4_CHAT_ENOMEM;
    if (rc < 0) {
        if (rc == DSV4_CHAT_ENOMEM) set_err(err, errlen, "chat: out of memory");
        free(b.p);
        return rc;
    }
    *out = b.p;
    if (len) *len = b.n;
    return 0;
}

int dsv4_chat_prompt_parts(const char *system, const char *context, size_t context_len, const char *question,
                           const dsv4_chat_opts *opts, char **prefix, size_t *prefix_len, char **suffix,
                           size_t *suffix_len, char *err, size_t errlen)
{
    *prefix = *suffix = NULL;
    while (*question == '\r' || *question == '\n') question++;
    static const dsv4_chat_opts defaults = {0};
    if (!opts) opts = &defaults;
    sb content = {0}, tail = {0};
    char *full = NULL;
    size_t full_len = 0;
    int rc = DSV4_CHAT_ENOMEM;
    if (context_len) {
        sb_addn(&content, context, context_len);
        sb_add(&content, "\n\n");
    }
    sb_add(&content, question);
    /* the suffix is the question plus the generation prompt of a last user turn */
    sb_add(&tail, question);
    sb_add(&tail, ASSISTANT);
    sb_add(&tail, opts->think != DSV4_THINK_NONE ? THINK : THINK_END);
    dsv4_chat *c = dsv4_chat_new();
    if (!c || content.oom || tail.oom) goto fail;
    if (system && (rc = dsv4_chat_add(c, "system", system, err, errlen)) < 0) goto fail;
    /* the context is document text: any bytes, NULs included, are taken as they
     * are (the tokenizer handles invalid UTF-8 too), so no UTF-8 check here */
    if ((rc = dsv4_chat_add(c, "user", NULL, err, errlen)) < 0) goto fail;
    rc = DSV4_CHAT_ENOMEM;
    if (json_object_set_new(json_array_get(c->msgs, json_array_size(c->msgs) - 1), "content",
                            json_stringn_nocheck(content.p, content.n)) != 0)
        goto fail;
    if ((rc = dsv4_chat_render(c, opts, &full, &full_len, err, errlen)) < 0) goto fail;
    if (full_len < tail.n || memcmp(full + full_len - tail.n, tail.p, tail.n) != 0) {
        set_err(err, errlen, "chat: internal error: the rendering does not end with the question");
        rc = DSV4_CHAT_EINVAL;
        goto fail;
    }
    *suffix = tail.p;
    *suffix_len = tail.n;
    tail.p = NULL;
    full[full_len - *suffix_len] = 0;
    *prefix = full;
    *prefix_len = full_len - *suffix_len;
    full = NULL;
    rc = 0;
fail:
    if (rc == DSV4_CHAT_ENOMEM) set_err(err, errlen, "chat: out of memory");
    free(full);
    free(content.p);
    free(tail.p);
    dsv4_chat_free(c);
    return rc;
}
