/* DeepSeek-V4 chat encoding: a conversation rendered to the exact prompt
 * string the official encoding/encoding_dsv4.py (encode_messages) produces,
 * byte for byte, ready for dsv4_tokenizer_encode (the marker strings in it are
 * matched as added tokens; BOS is written as text).
 *
 * Messages use the OpenAI-style fields of the official format: role (system,
 * user, assistant, tool, developer, latest_reminder), content,
 * reasoning_content, tool_calls ([{id, type, function: {name, arguments:
 * "<JSON string>"}}]), tool_call_id, tools ([{type, function: {...}}]),
 * response_format, task (action, query, authority, domain, title, read_url),
 * wo_eos, mask. They can be built with the functions below or read from JSON.
 *
 * Thinking modes: DSV4_THINK_NONE is the official "chat" mode (generation
 * prompt ends in </think>); HIGH is "thinking" (ends in <think>); MAX is
 * "thinking" with the reasoning-effort preamble after BOS. Earlier reasoning
 * is dropped by default (drop_thinking), except when any message has tools.
 * The official "context" argument (already-encoded earlier messages) is not
 * supported. Functions that can fail return 0 or a negative code and write a
 * message naming the message index into err. */
#ifndef DSV4_CHAT_H
#define DSV4_CHAT_H

#include <stddef.h>

enum { DSV4_CHAT_EINVAL = -1, DSV4_CHAT_ENOMEM = -2 };

typedef enum dsv4_think { DSV4_THINK_NONE = 0, DSV4_THINK_HIGH = 1, DSV4_THINK_MAX = 2 } dsv4_think;

/* Zero-initialised = chat mode, drop earlier reasoning, write BOS. */
typedef struct dsv4_chat_opts {
    dsv4_think think;
    int keep_thinking; /* 1 = drop_thinking=False */
    int no_bos;        /* 1 = add_default_bos_token=False */
} dsv4_chat_opts;

typedef struct dsv4_chat dsv4_chat;

dsv4_chat *dsv4_chat_new(void);
void dsv4_chat_free(dsv4_chat *c);

/* Appends a message; content may be NULL (absent) and must be valid UTF-8. */
int dsv4_chat_add(dsv4_chat *c, const char *role, const char *content, char *err, size_t errlen);
/* These set fields of the last message added. */
int dsv4_chat_set_reasoning(dsv4_chat *c, const char *reasoning_content, char *err, size_t errlen);
/* arguments_json is the JSON text of the arguments object, as in OpenAI's
 * format (written as DSML parameters when rendered). id may be NULL. */
int dsv4_chat_add_tool_call(dsv4_chat *c, const char *id, const char *name, const char *arguments_json,
                            char *err, size_t errlen);
int dsv4_chat_set_tool_call_id(dsv4_chat *c, const char *tool_call_id, char *err, size_t errlen);
/* tools_json: a JSON array of {"type": "function", "function": {...}}. */
int dsv4_chat_set_tools(dsv4_chat *c, const char *tools_json, char *err, size_t errlen);
int dsv4_chat_set_task(dsv4_chat *c, const char *task, char *err, size_t errlen);

/* Reads a conversation: a JSON array of messages, or an object with
 * "messages" (and optionally "tools", which is then given to messages[0] as
 * the official test harness does). name is used in error messages. */
int dsv4_chat_from_json(const char *json, size_t len, const char *name, dsv4_chat **out, char *err,
                        size_t errlen);

/* Renders the conversation; *out is malloc'd UTF-8, NUL-terminated. */
int dsv4_chat_render(const dsv4_chat *c, const dsv4_chat_opts *opts, char **out, size_t *len, char *err,
                     size_t errlen);

/* The two parts the batch pipeline needs for one shared document context and
 * many questions. The full conversation is [system (omitted if NULL), user]
 * with user content = context + "\n\n" + question (just question when
 * context_len is 0); the function renders it and splits it:
 *   prefix = BOS [+ effort preamble] + system + "<｜User｜>" [+ context + "\n\n"]
 *   suffix = question + "<｜Assistant｜>" + ("<think>" or "</think>")
 * so prefix + suffix is exactly the full rendering. The context may hold any
 * bytes (NULs, invalid UTF-8: taken as they are); system and question are C
 * strings. Leading CR/LF characters
 * of the question are removed first: the cut then falls right after a newline
 * (or after the <｜User｜> marker) that is followed by something other than a
 * newline, where the pre-tokenizer always ends a piece, so
 * encode(prefix) ++ encode(suffix) == encode(prefix + suffix) and every
 * question shares the prefix's tokens. The prefix depends only on system,
 * context and opts. */
int dsv4_chat_prompt_parts(const char *system, const char *context, size_t context_len, const char *question,
                           const dsv4_chat_opts *opts, char **prefix, size_t *prefix_len, char **suffix,
                           size_t *suffix_len, char *err, size_t errlen);

#endif
