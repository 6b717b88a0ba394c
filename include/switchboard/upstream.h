/*
 * upstream.h — the HTTP client that pushes messages to agents.
 *
 * One sb_upstream_pool per worker loop holds keep-alive connections per origin
 * (scheme, host, port). sb_upstream_push() sends one POST and calls back exactly once
 * with either an HTTP response (any status) or a transport failure classified into one
 * reason of the closed list: dns_error, connect_refused, connect_timeout, tls_error,
 * upstream_forbidden (a resolved address the policy refuses), response_timeout,
 * connection_reset, invalid_response (not parseable HTTP, or a body over the limit).
 * HTTP statuses are not judged here: the caller decides what a 404 means.
 *
 * Timeouts: --connect-timeout-ms bounds DNS + TCP connect (+ TLS handshake later);
 * --push-timeout-s bounds the time from the request being written to the whole
 * response having arrived. A pooled connection that turns out to be closed by the
 * agent before any response byte arrives is retried once on a fresh connection, since
 * the agent never saw the request.
 *
 * Never: call the callback twice, call it after sb_upstream_cancel(), or call it from
 * inside sb_upstream_push() itself (failures found at once are reported from the loop,
 * so callers never re-enter their own code).
 */
#ifndef SWITCHBOARD_UPSTREAM_H
#define SWITCHBOARD_UPSTREAM_H

#include <event2/buffer.h>
#include <stdint.h>

#include "switchboard/netaddr.h"
#include "switchboard/reason.h"
#include "switchboard/request.h"

struct event_base;
struct evdns_base;

typedef struct sb_upstream_pool sb_upstream_pool;
typedef struct sb_upstream_req sb_upstream_req;

typedef struct sb_upstream_opts {
    int connect_timeout_ms;
    int response_timeout_ms;
    size_t max_response_bytes; /* a larger body fails with invalid_response */
    const sb_cidr *allow;      /* --allow-upstream ranges */
    size_t n_allow;
} sb_upstream_opts;

typedef struct sb_upstream_result {
    sb_reason reason;  /* SB_REASON_NONE when an HTTP response arrived */
    int status;        /* HTTP status, 0 when none arrived */
    sb_headers *headers;  /* response headers (borrowed for the callback's duration) */
    struct evbuffer *body; /* response body; the callback may drain it (borrowed) */
    char detail[256];  /* one line, e.g. "connect 10.0.0.7:8000: Connection refused" */
    uint64_t duration_us; /* from push to completion */
    int reused;        /* 1 if a pooled keep-alive connection carried the request */
} sb_upstream_result;

typedef void (*sb_upstream_cb)(const sb_upstream_result *res, void *arg);

/* Creates the pool of one worker loop. |dns| resolves host names (may be shared with
 * other users of the loop). |opts| is copied. Never NULL. */
sb_upstream_pool *sb_upstream_pool_new(struct event_base *base, struct evdns_base *dns,
                                       const sb_upstream_opts *opts);
/* Closes every connection; in-flight requests are canceled without callbacks. */
void sb_upstream_pool_free(sb_upstream_pool *p);

/* Sends "POST |url|->path" with |headers| (Host, Content-Length and Connection are
 * added; the caller must not pass them) and |body| (drained: the pool takes its bytes
 * without copying). Calls |cb| exactly once, later, from the loop. Returns a handle
 * valid until the callback runs or sb_upstream_cancel is called. Never NULL. */
sb_upstream_req *sb_upstream_push(sb_upstream_pool *p, const sb_url *url,
                                  const sb_headers *headers, struct evbuffer *body,
                                  sb_upstream_cb cb, void *arg);

/* Abandons |req|: its callback will not run, its connection is closed (the agent may
 * still have received the request). */
void sb_upstream_cancel(sb_upstream_req *req);

/* Idle pooled connections (for metrics and tests). */
size_t sb_upstream_pool_idle(const sb_upstream_pool *p);

#endif
