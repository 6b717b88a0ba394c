/*
 * a2a.c — validates A2A JSON-RPC 2.0 requests and builds JSON-RPC answers.
 *
 * A request body is read once and only the few members switchboard routes on are kept;
 * the body itself is forwarded untouched by the caller. A valid send — the hot path —
 * is read by a2a_scan.c's one-pass scanner without building a tree; everything else
 * (other methods, every invalid body) is parsed here with jansson (linear in its size;
 * nesting capped at JSON_PARSER_MAX_DEPTH), which alone words errors (a2a_int.h).
 * Parsing choices, the same on both paths:
 *   - duplicate object keys are refused with -32600: a receiver that keeps the first
 *     "method" or "messageId" while switchboard keeps the last would route, deduplicate
 *     or answer a different request than the agent runs;
 *   - "\u0000" inside strings is accepted (it is valid JSON and may appear in message
 *     text), but a NUL inside a member switchboard reads is refused: as a C string it
 *     would name something else;
 *   - integers beyond 64 bits are valid JSON that jansson cannot hold: the body is
 *     parsed again with every integer as a real, so such a request is not called a
 *     parse error;
 *   - a top-level array (a JSON-RPC batch) or scalar is -32600: A2A has no batches.
 * This module keeps no state and never logs.
 */
#include "switchboard/a2a.h"
#include "a2a_int.h"
#include "switchboard/common.h"
#include "switchboard/alloc.h"
#include "switchboard/utf8.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARSE_FLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)

/* The allocation policy is abort on OOM (alloc.h); jansson reports it as NULL. */
static json_t *must(json_t *j)
{
    if (j == NULL) {
        fprintf(stderr, "switchboard: out of memory building a JSON-RPC answer\n");
        abort();
    }
    return j;
}

static int set_error(sb_a2a_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_error(sb_a2a_error *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        /* jansson's error text quotes the input and the bound may cut a character:
         * the message is shown to callers and logged, so it must be valid UTF-8 and,
         * as a2a.h promises, one line (a quoted control character becomes a space). */
        sb_utf8_fix(err->message, sizeof(err->message));
        for (char *p = err->message; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = ' ';
    }
    return SB_ERR_INVALID;
}

typedef struct method_entry {
    const char *name;
    sb_a2a_method kind;
} method_entry;

static const method_entry methods[] = {
    {"message/send", SB_A2A_SEND},
    {"message/stream", SB_A2A_STREAM},
    {"tasks/get", SB_A2A_GET_TASK},
    {"tasks/cancel", SB_A2A_CANCEL_TASK},
    {"tasks/resubscribe", SB_A2A_RESUBSCRIBE},
    {"SendMessage", SB_A2A_SEND},
    {"SendStreamingMessage", SB_A2A_STREAM},
    {"GetTask", SB_A2A_GET_TASK},
    {"CancelTask", SB_A2A_CANCEL_TASK},
    {"SubscribeToTask", SB_A2A_RESUBSCRIBE},
};

sb_a2a_method sb_a2a_int_classify(const char *method)
{
    for (size_t i = 0; i < SB_ARRAY_LEN(methods); i++)
        if (strcmp(methods[i].name, method) == 0)
            return methods[i].kind;
    return SB_A2A_OTHER;
}

/* v1.0 names are PascalCase; v0.3 names are "group/verb". Anything else (a lower-case
 * name without '/') is treated as v0.3, the older and more lenient dialect. */
sb_a2a_version sb_a2a_int_version_of(const char *method)
{
    if (strchr(method, '/') == NULL && method[0] >= 'A' && method[0] <= 'Z')
        return SB_A2A_V10;
    return SB_A2A_V03;
}

/* 1 if |s| is a JSON string without embedded NUL, so its C view is the whole value. */
static int is_clean_string(const json_t *s)
{
    return json_is_string(s) && strlen(json_string_value(s)) == json_string_length(s);
}

/* An optional string member: absent, null or "" gives NULL (an empty id names nothing);
 * any other non-string, or a string with a NUL, is invalid params. */
static int opt_string(const json_t *obj, const char *key, const char *path, const char **out,
                      sb_a2a_error *err)
{
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return SB_OK;
    if (!is_clean_string(v))
        return set_error(err, SB_JSONRPC_INVALID_PARAMS, "%s must be a string", path);
    if (json_string_length(v) > 0)
        *out = json_string_value(v);
    return SB_OK;
}

static int extract_send(const json_t *params, sb_a2a_call *out, sb_a2a_error *err)
{
    if (params == NULL)
        return set_error(err, SB_JSONRPC_INVALID_PARAMS, "params.message is required");
    const json_t *msg = json_object_get(params, "message");
    if (!json_is_object(msg))
        return set_error(err, SB_JSONRPC_INVALID_PARAMS,
                         msg == NULL ? "params.message is required"
                                     : "params.message must be an object");
    const json_t *mid = json_object_get(msg, "messageId");
    if (!is_clean_string(mid) || json_string_length(mid) == 0)
        return set_error(err, SB_JSONRPC_INVALID_PARAMS,
                         mid == NULL ? "params.message.messageId is required"
                                     : "params.message.messageId must be a non-empty string");
    out->message_id = json_string_value(mid);
    if (opt_string(msg, "taskId", "params.message.taskId", &out->task_id, err) != SB_OK ||
        opt_string(msg, "contextId", "params.message.contextId", &out->context_id, err) != SB_OK)
        return SB_ERR_INVALID;
    return SB_OK;
}

/* Task methods name their task as params.id (v0.3, and v1.0's final shape) or as a
 * resource name params.name "tasks/{id}" (v1.0 drafts). A missing id is left for the
 * agent to refuse; a mistyped one cannot be routed and is refused here. */
static int extract_task(const json_t *params, sb_a2a_call *out, sb_a2a_error *err)
{
    if (params == NULL)
        return SB_OK;
    if (opt_string(params, "id", "params.id", &out->task_id, err) != SB_OK)
        return SB_ERR_INVALID;
    if (out->task_id != NULL)
        return SB_OK;
    const char *name;
    if (opt_string(params, "name", "params.name", &name, err) != SB_OK)
        return SB_ERR_INVALID;
    if (name != NULL && strncmp(name, "tasks/", 6) == 0 && name[6] != '\0' &&
        strchr(name + 6, '/') == NULL)
        out->task_id = name + 6;
    return SB_OK;
}

/* params.metadata.expires_in_s as a whole number of seconds, or -1 when absent or not
 * usable. Usable: a JSON number whose value is a whole number >= 1, however it is
 * written (60, 60.0, 6e1, 1e300, an integer too large for 64 bits); anything else (0,
 * negative, fractional, a string, null, an object) is ignored (-1), so the queue's TTL
 * applies: the hint only matters if the message falls back, and an unusable hint must
 * not turn a push that would succeed into an error. Huge values are clamped to
 * SB_A2A_EXPIRES_MAX_S, so no caller can overflow arithmetic on the result. */
static long extract_expiry(const json_t *params)
{
    const json_t *md = params ? json_object_get(params, "metadata") : NULL;
    const json_t *v = json_is_object(md) ? json_object_get(md, "expires_in_s") : NULL;
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n <= 0)
            return -1;
        return n > (json_int_t)SB_A2A_EXPIRES_MAX_S ? SB_A2A_EXPIRES_MAX_S : (long)n;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= 1) || d != floor(d)) /* also rejects NaN */
            return -1;
        return d >= (double)SB_A2A_EXPIRES_MAX_S ? SB_A2A_EXPIRES_MAX_S : (long)d;
    }
    return -1;
}

/* After a re-parse with every integer as a real, an integral id goes back to being an
 * integer so that the answer echoes "id":7, not "id":7.0. */
static void restore_integer_id(json_t *root)
{
    json_t *id = json_object_get(root, "id");
    if (!json_is_real(id))
        return;
    double d = json_real_value(id);
    if (d == floor(d) && fabs(d) <= 9007199254740992.0)
        json_object_set_new(root, "id", must(json_integer((json_int_t)d)));
}

static json_t *load(const char *buf, size_t len, size_t flags, json_error_t *je, int *as_real)
{
    json_t *root = json_loadb(buf, len, flags, je);
    *as_real = 0;
    if (root == NULL && json_error_code(je) == json_error_numeric_overflow) {
        root = json_loadb(buf, len, flags | JSON_DECODE_INT_AS_REAL, je);
        *as_real = 1;
    }
    return root;
}

int sb_a2a_int_parse_tree(const char *buf, size_t len, sb_a2a_call *out, sb_a2a_error *err)
{
    memset(out, 0, sizeof(*out));
    out->kind = SB_A2A_OTHER;
    out->expires_in_s = -1;
    if (err != NULL) {
        err->code = 0;
        err->message[0] = '\0';
    }

    json_error_t je;
    int as_real;
    json_t *root = load(buf, len, PARSE_FLAGS | JSON_REJECT_DUPLICATES, &je, &as_real);
    if (root == NULL) {
        if (len == 0)
            return set_error(err, SB_JSONRPC_PARSE_ERROR, "Parse error: empty body");
        if (json_error_code(&je) == json_error_duplicate_key)
            return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                             "Invalid Request: %s (line %d, column %d)", je.text, je.line,
                             je.column);
        return set_error(err, SB_JSONRPC_PARSE_ERROR, "Parse error: %s (line %d, column %d)",
                         je.text, je.line, je.column);
    }
    if (!json_is_object(root)) {
        int batch = json_is_array(root);
        json_decref(root);
        return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                         batch ? "Invalid Request: JSON-RPC batches are not supported by A2A; "
                                 "send one request object"
                               : "Invalid Request: the body must be a JSON-RPC request object");
    }
    if (as_real)
        restore_integer_id(root);
    out->root = root;

    const json_t *id = json_object_get(root, "id");
    if (id != NULL && (json_is_string(id) || json_is_number(id) || json_is_null(id)))
        out->id = id;

    const json_t *ver = json_object_get(root, "jsonrpc");
    if (!json_is_string(ver) || strcmp(json_string_value(ver), "2.0") != 0 ||
        json_string_length(ver) != 3)
        return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                         "Invalid Request: \"jsonrpc\" must be \"2.0\"");
    if (id == NULL)
        return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                         "Invalid Request: \"id\" is required (notifications are not supported: "
                         "every A2A call expects an answer)");
    if (out->id == NULL)
        return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                         "Invalid Request: \"id\" must be a string, a number or null");

    const json_t *method = json_object_get(root, "method");
    if (!is_clean_string(method) || json_string_length(method) == 0)
        return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                         "Invalid Request: \"method\" must be a non-empty string");
    out->method = json_string_value(method);
    out->kind = sb_a2a_int_classify(out->method);
    out->version = sb_a2a_int_version_of(out->method);

    /* JSON-RPC allows params absent, an object or an array; null is taken as absent
     * (some client libraries emit it for parameterless calls). A2A methods take named
     * params, so an array is well-formed JSON-RPC but invalid params. */
    const json_t *params = json_object_get(root, "params");
    if (json_is_null(params))
        params = NULL;
    if (params != NULL && !json_is_object(params)) {
        if (json_is_array(params))
            return set_error(err, SB_JSONRPC_INVALID_PARAMS, "\"params\" must be an object");
        return set_error(err, SB_JSONRPC_INVALID_REQUEST,
                         "Invalid Request: \"params\" must be an object");
    }

    int rc = SB_OK;
    switch (out->kind) {
    case SB_A2A_SEND:
    case SB_A2A_STREAM:
        rc = extract_send(params, out, err);
        break;
    case SB_A2A_GET_TASK:
    case SB_A2A_CANCEL_TASK:
    case SB_A2A_RESUBSCRIBE:
        rc = extract_task(params, out, err);
        break;
    case SB_A2A_OTHER:
        break;
    }
    if (rc != SB_OK) {
        out->message_id = out->task_id = out->context_id = NULL;
        return rc;
    }
    out->expires_in_s = extract_expiry(params);
    return SB_OK;
}

int sb_a2a_parse(const char *buf, size_t len, sb_a2a_call *out, sb_a2a_error *err)
{
    if (sb_a2a_int_scan(buf, len, out) == SB_OK) {
        if (err != NULL) {
            err->code = 0;
            err->message[0] = '\0';
        }
        return SB_OK;
    }
    return sb_a2a_int_parse_tree(buf, len, out, err);
}

void sb_a2a_call_clear(sb_a2a_call *c)
{
    json_decref(c->root);
    json_decref(c->id_ref);
    sb_free(c->strings);
    memset(c, 0, sizeof(*c));
    c->kind = SB_A2A_OTHER;
    c->expires_in_s = -1;
}

/* A fresh copy of a request id: ids are scalars, so copying by type avoids casting away
 * const for json_copy. Anything that is not a valid id becomes null, as JSON-RPC wants
 * when the id could not be determined. */
static json_t *copy_id(const json_t *id)
{
    if (json_is_string(id))
        return must(json_stringn(json_string_value(id), json_string_length(id)));
    if (json_is_integer(id))
        return must(json_integer(json_integer_value(id)));
    if (json_is_real(id))
        return must(json_real(json_real_value(id)));
    return must(json_null());
}

static const char *default_message(int code)
{
    switch (code) {
    case SB_JSONRPC_PARSE_ERROR:
        return "Parse error";
    case SB_JSONRPC_INVALID_REQUEST:
        return "Invalid Request";
    case SB_JSONRPC_METHOD_NOT_FOUND:
        return "Method not found";
    case SB_JSONRPC_INVALID_PARAMS:
        return "Invalid params";
    case SB_JSONRPC_INTERNAL_ERROR:
        return "Internal error";
    case SB_JSONRPC_UNDELIVERABLE:
        return "Message could not be delivered or queued";
    default:
        return "Server error";
    }
}

json_t *sb_a2a_error_response(const json_t *id, int code, const char *message, json_t *data)
{
    json_t *e = must(json_object());
    json_object_set_new(e, "code", must(json_integer(code)));
    json_object_set_new(e, "message",
                        sb_json_text(message != NULL ? message : default_message(code)));
    if (data != NULL)
        json_object_set_new(e, "data", data);
    json_t *r = must(json_object());
    json_object_set_new(r, "jsonrpc", must(json_string("2.0")));
    json_object_set_new(r, "id", copy_id(id));
    json_object_set_new(r, "error", e);
    return r;
}

json_t *sb_a2a_result_response(const json_t *id, json_t *result)
{
    json_t *r = must(json_object());
    json_object_set_new(r, "jsonrpc", must(json_string("2.0")));
    json_object_set_new(r, "id", copy_id(id));
    json_object_set_new(r, "result", result != NULL ? result : must(json_null()));
    return r;
}

/* In a body re-parsed with integers as reals, an integral real stands for an integer. */
static int is_integer_code(const json_t *code, int as_real)
{
    if (json_is_integer(code))
        return 1;
    if (!as_real || !json_is_real(code))
        return 0;
    double d = json_real_value(code);
    return d == floor(d) && fabs(d) <= 2147483648.0;
}

int sb_a2a_is_response(const char *buf, size_t len)
{
    return sb_a2a_int_scan_response(buf, len) || sb_a2a_int_is_response_tree(buf, len);
}

int sb_a2a_int_is_response_tree(const char *buf, size_t len)
{
    json_error_t je;
    int as_real;
    /* Duplicate keys are tolerated here: the answer is relayed unchanged, and calling it
     * invalid would queue a message the agent has already processed. */
    json_t *root = load(buf, len, PARSE_FLAGS, &je, &as_real);
    if (root == NULL)
        return 0;
    int ok = 0;
    if (json_is_object(root)) {
        const json_t *ver = json_object_get(root, "jsonrpc");
        const json_t *result = json_object_get(root, "result");
        const json_t *error = json_object_get(root, "error");
        ok = json_is_string(ver) && json_string_length(ver) == 3 &&
             strcmp(json_string_value(ver), "2.0") == 0 && (result == NULL) != (error == NULL);
        if (ok && error != NULL)
            ok = json_is_object(error) &&
                 is_integer_code(json_object_get(error, "code"), as_real) &&
                 json_is_string(json_object_get(error, "message"));
    }
    json_decref(root);
    return ok;
}

const char *sb_kind_name(sb_message_kind k)
{
    return k == SB_KIND_CHAT ? "chat" : "delegation";
}

/* ---- agent cards seen through switchboard ---- */

int sb_a2a_is_card_method(const char *method)
{
    return method != NULL && (strcmp(method, "agent/getAuthenticatedExtendedCard") == 0 ||
                              strcmp(method, "GetExtendedAgentCard") == 0);
}

char *sb_a2a_public_url(const char *forwarded_proto, const char *host, const char *listen,
                        const char *ws)
{
    const char *proto = forwarded_proto;
    if (proto == NULL || (strcmp(proto, "https") != 0 && strcmp(proto, "http") != 0))
        proto = "http";
    if (host == NULL || host[0] == '\0' || strpbrk(host, "/ \"\\") != NULL)
        host = listen;
    size_t cap = strlen(proto) + strlen(host) + strlen(ws) + 32;
    char *url = sb_malloc(cap);
    snprintf(url, cap, "%s://%s/workspaces/%s/a2a", proto, host, ws);
    return url;
}

/* Sets "url" of every object in |arr| (an interface list) that has one to |url|. */
static void rewrite_list(json_t *arr, const char *url)
{
    size_t i;
    json_t *it;
    json_array_foreach(arr, i, it)
    {
        if (json_is_object(it) && json_object_get(it, "url") != NULL)
            json_object_set_new(it, "url", sb_json_text(url));
    }
}

void sb_a2a_card_rewrite(json_t *card, const char *url)
{
    if (!json_is_object(card))
        return;
    if (json_object_get(card, "url") != NULL)
        json_object_set_new(card, "url", sb_json_text(url));
    rewrite_list(json_object_get(card, "additionalInterfaces"), url);
    rewrite_list(json_object_get(card, "supportedInterfaces"), url);
}
