/*
 * a2a.h — JSON-RPC 2.0 / A2A request validation and JSON-RPC answers.
 *
 * switchboard reads just enough of a request to route it: the JSON-RPC envelope, the
 * method (A2A v0.3 "message/send" style or v1.0 "SendMessage" style), the message id of
 * sends, task ids of task methods, and params.metadata.expires_in_s. Everything else is
 * passed to the agent byte for byte. Validation failures are answered by switchboard
 * and never forwarded:
 *   -32700 the body is not JSON;
 *   -32600 not a JSON-RPC 2.0 request object (jsonrpc "2.0", string method, id a
 *          string, number or null — a request without id is refused too, since every
 *          A2A call expects an answer);
 *   -32602 a send (message/send, message/stream, SendMessage, SendStreamingMessage)
 *          without a non-empty string params.message.messageId, or params not an object.
 */
#ifndef SWITCHBOARD_A2A_H
#define SWITCHBOARD_A2A_H

#include <jansson.h>
#include <stddef.h>

#define SB_JSONRPC_PARSE_ERROR -32700
#define SB_JSONRPC_INVALID_REQUEST -32600
#define SB_JSONRPC_METHOD_NOT_FOUND -32601
#define SB_JSONRPC_INVALID_PARAMS -32602
#define SB_JSONRPC_INTERNAL_ERROR -32603
/* Server-defined range: the message could be neither delivered nor stored. */
#define SB_JSONRPC_UNDELIVERABLE -32050

typedef enum { SB_A2A_V03 = 0, SB_A2A_V10 } sb_a2a_version;

typedef enum {
    SB_A2A_SEND = 0,    /* message/send, SendMessage */
    SB_A2A_STREAM,      /* message/stream, SendStreamingMessage */
    SB_A2A_GET_TASK,    /* tasks/get, GetTask */
    SB_A2A_CANCEL_TASK, /* tasks/cancel, CancelTask */
    SB_A2A_RESUBSCRIBE, /* tasks/resubscribe, SubscribeToTask */
    SB_A2A_OTHER        /* anything else: passed through to the agent */
} sb_a2a_method;

typedef struct sb_a2a_call {
    json_t *root;           /* the whole request object; owned */
    const json_t *id;       /* borrowed from root (string, integer, real or null) */
    const char *method;     /* borrowed from root */
    sb_a2a_method kind;
    sb_a2a_version version;
    const char *message_id; /* sends: params.message.messageId; else NULL */
    const char *task_id;    /* sends: params.message.taskId; task methods: params.id
                               (or the last segment of v1.0 params.name "tasks/{id}") */
    const char *context_id; /* sends: params.message.contextId, or NULL */
    long expires_in_s;      /* params.metadata.expires_in_s when a positive integer, else -1 */
} sb_a2a_call;

typedef struct sb_a2a_error {
    int code;          /* one of the SB_JSONRPC_* codes */
    char message[160]; /* human text, e.g. "params.message.messageId is required" */
} sb_a2a_error;

/* Validates |len| bytes at |buf|. On SB_OK |out| owns the parsed request (release with
 * sb_a2a_call_clear). On SB_ERR_INVALID |err| says why, |out| holds nothing to release
 * but out->root, which keeps the request id when one was readable (so the error can
 * echo it); sb_a2a_call_clear is safe in both cases. */
int sb_a2a_parse(const char *buf, size_t len, sb_a2a_call *out, sb_a2a_error *err);
void sb_a2a_call_clear(sb_a2a_call *c);

/* {"jsonrpc":"2.0","id":|id|,"error":{"code","message","data"?}}. |id| NULL means null;
 * |data| (may be NULL) is stolen. Never NULL. */
json_t *sb_a2a_error_response(const json_t *id, int code, const char *message, json_t *data);

/* {"jsonrpc":"2.0","id":|id|,"result":|result|}; |result| is stolen. */
json_t *sb_a2a_result_response(const json_t *id, json_t *result);

/* 1 if |len| bytes at |buf| are one JSON-RPC 2.0 response object: "jsonrpc":"2.0" and
 * exactly one of "result" or "error" (an object with an integer code). 0 otherwise. */
int sb_a2a_is_response(const char *buf, size_t len);

#endif
