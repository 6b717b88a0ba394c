/*
 * a2a.h — JSON-RPC 2.0 / A2A request validation and JSON-RPC answers.
 *
 * switchboard reads just enough of a request to route it: the JSON-RPC envelope, the
 * method (A2A v0.3 "message/send" style or v1.0 "SendMessage" style), the message id of
 * sends, task ids of task methods, and params.metadata.expires_in_s. Everything else is
 * passed to the agent byte for byte. Validation failures are answered by switchboard
 * and never forwarded:
 *   -32700 the body is not JSON (empty, malformed, invalid UTF-8, nested deeper than
 *          jansson's JSON_PARSER_MAX_DEPTH);
 *   -32600 not a JSON-RPC 2.0 request object: a batch (array) or scalar body, duplicate
 *          object keys anywhere (the agent might read the other copy), "jsonrpc" not
 *          exactly "2.0", "id" missing (a notification: every A2A call expects an
 *          answer) or not a string, number or null, "method" not a non-empty string,
 *          "params" present but not an object, array or null;
 *   -32602 "params" an array (A2A takes named params); a send (message/send,
 *          message/stream, SendMessage, SendStreamingMessage) without an object
 *          params.message holding a non-empty string messageId; a read member of the
 *          wrong type: params.message.taskId/contextId of a send, params.id/name of a
 *          task method (absent or null is fine: the agent decides).
 * "params": null is taken as absent. Strings switchboard reads must not contain "\u0000".
 * Method names are matched exactly (case-sensitive); unknown ones are SB_A2A_OTHER and
 * pass through. The version is V10 for a PascalCase name without '/', V03 otherwise.
 */
#ifndef SWITCHBOARD_A2A_H
#define SWITCHBOARD_A2A_H

#include <jansson.h>
#include <stddef.h>

/* Who sent a message (SPEC §4.2): the platform's admin token forwards user chat, a
 * workspace token delegates to a peer. */
typedef enum { SB_KIND_CHAT = 0, SB_KIND_DELEGATION } sb_message_kind;

/* "chat" or "delegation" (static). */
const char *sb_kind_name(sb_message_kind k);

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

/* The largest params.metadata.expires_in_s kept (about 31.7 years, far beyond any queue
 * TTL): larger values are clamped to it, so seconds * 1000 always fits in 64 bits. */
#define SB_A2A_EXPIRES_MAX_S 1000000000L

typedef struct sb_a2a_call {
    json_t *root;       /* the whole request object, owned; NULL when the fast reader
                           took a send that needs nothing more (see sb_a2a_parse) */
    json_t *id_ref;     /* owned copy of the id when root is NULL */
    char *strings;      /* owned text the members below point into when root is NULL */
    const json_t *id;   /* borrowed from root or id_ref (string, integer, real or null) */
    const char *method; /* borrowed from root or strings */
    sb_a2a_method kind;
    sb_a2a_version version;
    const char *message_id; /* sends: params.message.messageId; else NULL */
    const char *task_id;    /* sends: params.message.taskId; task methods: params.id
                               (or {id} of v1.0 params.name "tasks/{id}"); NULL when
                               absent, null or "" */
    const char *context_id; /* sends: params.message.contextId, or NULL */
    long expires_in_s;      /* params.metadata.expires_in_s when a whole number >= 1
                               (clamped to SB_A2A_EXPIRES_MAX_S), else -1: ignored */
} sb_a2a_call;

typedef struct sb_a2a_error {
    int code;          /* one of the SB_JSONRPC_* codes */
    char message[160]; /* human text, e.g. "params.message.messageId is required" */
} sb_a2a_error;

/* Validates |len| bytes at |buf| (need not be NUL-terminated). |out| is overwritten.
 * On SB_OK |out| owns the parsed request (release with sb_a2a_call_clear); every
 * borrowed pointer lives as long as |out|. out->root is the whole tree, except for a
 * send whose params hold no "configuration": then it may be NULL (read in one pass
 * without a tree) and code reading other members must treat it as absent. On SB_ERR_INVALID |err|
 * (may be NULL) holds the code and a one-line message; |out| holds nothing to release but out->root
 * (NULL for -32700, batches and duplicate keys), and out->id is set only when the
 * request carried a valid id, so the error can echo it (JSON-RPC wants null otherwise);
 * out->method/kind/version are set when the method was readable. sb_a2a_call_clear is
 * safe in both cases. Linear in |len|. */
int sb_a2a_parse(const char *buf, size_t len, sb_a2a_call *out, sb_a2a_error *err);
void sb_a2a_call_clear(sb_a2a_call *c);

/* {"jsonrpc":"2.0","id":|id|,"error":{"code","message","data"?}}. |id| is copied; NULL
 * or anything but a string or number gives null. |message| NULL gives the standard text
 * for |code|. |data| (may be NULL) is stolen. Never NULL (aborts on OOM); the caller owns
 * the result. */
json_t *sb_a2a_error_response(const json_t *id, int code, const char *message, json_t *data);

/* {"jsonrpc":"2.0","id":|id|,"result":|result|}; |id| as above, |result| is stolen
 * (NULL gives null). Never NULL; the caller owns the result. */
json_t *sb_a2a_result_response(const json_t *id, json_t *result);

/* 1 if |len| bytes at |buf| are one JSON-RPC 2.0 response object: "jsonrpc":"2.0" and
 * exactly one of "result" or "error" (an object with an integer "code" and a string
 * "message"). 0 otherwise. "id" is not checked, and duplicate keys are tolerated: an
 * agent's sloppy answer is still an answer and is relayed unchanged. For an SSE stream
 * apply it to each event's data, not to the whole body. */
int sb_a2a_is_response(const char *buf, size_t len);

/* Where a JSON-RPC response's "result" or "error" value is in its body: |n| bytes at |off|,
 * exactly as the agent wrote them (valid JSON); |is_error| 1 for "error". */
typedef struct sb_a2a_answer {
    size_t off, n;
    int is_error;
} sb_a2a_answer;

/* Fills |*where| for the response at |buf| and returns 1 when the one-pass scanner read
 * the answer completely and it is a response (sb_a2a_is_response); 0 means "not sure" (a
 * body it does not read, or not a response): read it with jansson. */
int sb_a2a_answer_member(const char *buf, size_t len, sb_a2a_answer *where);

/* ---- agent cards seen through switchboard ---- */

/* 1 when |method| asks the agent for its (extended) card: v0.3
 * "agent/getAuthenticatedExtendedCard", v1.0 "GetExtendedAgentCard". NULL gives 0. */
int sb_a2a_is_card_method(const char *method);

/* The URL callers reach workspace |ws| at: "<proto>://<host>/workspaces/<ws>/a2a", where
 * proto is |forwarded_proto| when it is "http" or "https" (else "http") and host is
 * |host| (the Host header or :authority) unless it is NULL, empty or holds '/', ' ',
 * '"' or '\\', then |listen|. A new string the caller frees with sb_free. */
char *sb_a2a_public_url(const char *forwarded_proto, const char *host, const char *listen,
                        const char *ws);

/* Points every interface URL of |card| (v0.3 "url" and additionalInterfaces[].url, v1.0
 * supportedInterfaces[].url) at |url|, in place, so a card shown to callers never leaks
 * the agent's direct address. A non-object |card| is left alone. */
void sb_a2a_card_rewrite(json_t *card, const char *url);

#endif
