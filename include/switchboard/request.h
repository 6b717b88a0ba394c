/*
 * request.h — protocol-neutral request and response objects.
 *
 * A codec (http1.c today, http2.c later) parses a request off the wire, fills an
 * sb_request, and calls sb_router_dispatch() once the whole body has arrived. Handlers
 * answer through the sb_response_* functions, now or later from an async callback; the
 * request layer turns those into calls on the codec's sb_codec_ops. Neither side knows
 * the other's wire format, so HTTP/2 plugs in beside HTTP/1.1 with the same handlers.
 *
 * Lifetime: requests are reference counted. The codec holds one reference from
 * sb_request_new until the response is complete or the client goes away; every async
 * operation that will touch the request later (Redis reply, upstream push) takes its
 * own reference. When the client disconnects, the codec calls sb_request_detach(): the
 * request stays valid for whoever holds a reference, but sb_request_gone() turns true,
 * responses become no-ops, and the on_gone hook lets the handler cancel its work.
 *
 * Never: write to a stream after send_end, or free a request another holder references.
 */
#ifndef SWITCHBOARD_REQUEST_H
#define SWITCHBOARD_REQUEST_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/auth.h"
#include "switchboard/common.h"
#include "switchboard/headers.h"

struct sb_worker;
struct bufferevent;
struct sb_config;

/* ---- the codec side ---- */

typedef struct sb_codec_ops {
    /* Start the response. |body_len| is the exact body length, or -1 when the body
     * is streamed (HTTP/1.1 uses chunked encoding, HTTP/2 DATA frames). |headers| may
     * borrow the caller's strings: the codec serializes or copies what it needs during
     * the call and keeps no pointer into it. The codec frames the message itself and
     * ignores framing and hop-by-hop headers in |headers| (Content-Length,
     * Transfer-Encoding, Connection, Keep-Alive, ...). */
    void (*send_head)(void *stream, int status, const sb_headers *headers, long long body_len);
    /* Queue body bytes, draining |data|. */
    void (*send_data)(void *stream, struct evbuffer *data);
    /* The response is complete. The codec may drop its reference to the request here;
     * the request layer holds its own across the call. */
    void (*send_end)(void *stream);
    /* Bytes queued for this stream and not yet written to the socket; relays use it
     * to stop reading upstream while a slow client catches up. */
    size_t (*pending)(void *stream);
    /* Optional (NULL: the request layer makes the three calls): a whole response at once,
     * as send_head(|status|, |headers|, |body_len|), send_data(|body|) when |body_len| > 0,
     * then send_end, so the codec settles the connection once rather than after each
     * step. Drains |body| (may be NULL when |body_len| is 0) in every case; the request
     * is already complete on the request layer's side, which holds a reference across
     * the call. */
    void (*send_whole)(void *stream, int status, const sb_headers *headers, long long body_len,
                       struct evbuffer *body);
} sb_codec_ops;

typedef enum {
    SB_METHOD_GET,
    SB_METHOD_HEAD,
    SB_METHOD_POST,
    SB_METHOD_PUT,
    SB_METHOD_DELETE,
    SB_METHOD_OTHER
} sb_method;

typedef enum { SB_RESP_NONE = 0, SB_RESP_STREAMING, SB_RESP_DONE } sb_resp_state;

typedef struct sb_request sb_request;
typedef void (*sb_request_gone_fn)(sb_request *req, void *arg);

struct sb_request {
    int refs;
    struct sb_worker *worker;

    /* Parsed request, filled by the codec before dispatch. */
    sb_method method;
    const char *method_name; /* the method token ("GET", "PATCH", ...); static, never NULL */
    char *path;              /* raw path, without query; owned */
    char *query;             /* raw query string without '?', or NULL; owned */
    sb_headers headers;
    struct evbuffer *body;
    char peer[64]; /* "ip:port" of the client */
    uint64_t started_us;

    /* Codec link; ops == NULL once the client is gone. */
    const sb_codec_ops *ops;
    void *stream;

    /* Response state. */
    sb_resp_state resp_state;
    int status;
    int counted; /* 1 while this request is counted in worker->inflight */

    /* Routing and handler state. */
    const char *route; /* route pattern, for metrics and logs (static string) */
    char *params[3];   /* path parameters in pattern order; owned */
    sb_identity ident;
    sb_request_gone_fn on_gone;
    void *on_gone_arg;

    /* The SPEC §2 error answered through sb_response_error, for handlers that report
     * their own refusals (refused registrations): |error_code| is the caller's code
     * string (a literal), |error_message| an owned copy; both NULL otherwise. */
    const char *error_code;
    char *error_message;
};

/* Creates a request with one reference (the codec's), an empty body buffer, no headers,
 * path and query NULL and method_name "UNKNOWN" (the codec fills them before dispatch),
 * started_us = now. |w| may be NULL (unit tests); otherwise w->inflight is incremented
 * now and decremented exactly once: when the response completes, when the request is
 * detached, or at the latest when it is freed. |ops| and |stream| are borrowed: the
 * codec keeps them valid until it detaches. Never NULL (allocation failure aborts). */
sb_request *sb_request_new(struct sb_worker *w, const sb_codec_ops *ops, void *stream);
void sb_request_ref(sb_request *r);
/* Drops a reference; the last one frees the request and everything it owns. */
void sb_request_unref(sb_request *r);
/* Codec: it lets go of the request — the client went away before the response
 * completed, or the response was complete and written. Clears ops/stream, so later
 * responses are no-ops and sb_request_gone() is 1. When the response was not complete,
 * runs on_gone once (after the request is already marked gone). Idempotent. Does not
 * drop the codec's reference (call sb_request_unref after). */
void sb_request_detach(sb_request *r);
/* 1 when no response can be delivered any more (client gone, or codec done with it). */
int sb_request_gone(const sb_request *r);

/* Copies the decoded value ('+' is a space, %XX a byte; a malformed escape is kept
 * literally) of the first query parameter whose decoded name is |name| into |out|
 * (capacity |cap|, NUL-terminated). A parameter without '=' has the value "".
 * Returns SB_OK, SB_ERR_NOTFOUND (no query or no such name), SB_ERR_TOOBIG (the value
 * and its NUL do not fit; |out| then holds ""), or SB_ERR_INVALID (the value decodes
 * to a NUL byte). */
int sb_request_query(const sb_request *r, const char *name, char *out, size_t cap);

/* ---- responses (each a no-op when the request is gone or already answered) ---- */

/* A complete response. |extra| (may be NULL) is only read during the call; |body| (may
 * be NULL) is drained, also when the call is a no-op. |content_type| may be NULL for an
 * empty body; it is not added when |extra| already has a Content-Type. The codec adds
 * the framing (Content-Length) itself. When |content_type| is "application/json" and
 * |extra| names none, a non-empty body that does not end with '\n' gets one appended
 * (SPEC §3: switchboard's own JSON); a relayed body (its type in |extra|) is untouched. */
void sb_response_send(sb_request *r, int status, const sb_headers *extra, const char *content_type,
                      struct evbuffer *body);
/* A JSON response (compact, Content-Type: application/json); |body| is stolen
 * (decref'd), also when the call is a no-op. A value that cannot be serialized gives
 * a 500 internal_error instead. */
void sb_response_json(sb_request *r, int status, json_t *body, const sb_headers *extra);
/* SPEC §2 error body {"error":{"code","message"}}; the message is formatted into at
 * most 1 KiB; if the result is not valid UTF-8, every byte outside printable ASCII is
 * replaced by '?'. |code| must outlive the request (a literal): it and the message are
 * kept in r->error_code / r->error_message. */
void sb_response_error(sb_request *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* 503 {"error":{"code":"redis_unavailable",...}} with Retry-After: 1 — the answer of
 * every non-A2A route whose store is unreachable. */
void sb_response_redis_unavailable(sb_request *r);

/* Streamed responses: start, write any number of times, end. |headers| (may be NULL)
 * is only read during the call. sb_response_write drains |data|, also when it is a
 * no-op (gone, or not started). sb_response_end completes the response; it holds its
 * own reference across the codec's send_end, so the caller's pointer stays valid if it
 * holds a reference. */
void sb_response_start(sb_request *r, int status, const sb_headers *headers);
void sb_response_write(sb_request *r, struct evbuffer *data);
void sb_response_end(sb_request *r);
/* Bytes the codec still holds for this response (0 when gone). */
size_t sb_response_pending(const sb_request *r);

/* ---- codec support (shared by http1.c and http2.c) ---- */

/* The current time as an IMF-fixdate ("Thu, 01 Jan 2026 00:00:00 GMT") for a Date
 * header, from |base|'s cached clock; its length in *|len|. Formatted at most once per
 * second per thread: the string is thread-local and valid until the next call. */
const char *sb_http_date(struct event_base *base, size_t *len);

/* A timeout of |seconds| for event_add on |base|: libevent's common timeout for that
 * duration, NULL when |seconds| <= 0 (disabled). If the base has no room for another
 * common timeout, a plain thread-local timeval with that duration instead. Either way
 * the pointer stays valid for the thread's life, so a connection may keep it. */
const struct timeval *sb_codec_timeout(struct event_base *base, int seconds);

/* Codec set-up shared by HTTP/1.1 and HTTP/2: a client that stops reading our output is
 * cut off after --idle-timeout-s (60 s when unset) without progress; no read timeout
 * (the codecs keep their own idle and request timers). Returns sb_bev_write_first(bev):
 * 1 for a plain socket, whose codec then calls sb_bev_flush after queueing output and
 * from its write callback; 0 (TLS) when the bufferevent writes by itself. */
int sb_codec_bev_init(struct bufferevent *bev, const struct sb_config *cfg);

#endif
