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
 * Timeouts: --connect-timeout-ms bounds DNS + TCP connect + TLS handshake;
 * --push-timeout-s bounds the time from the request being handed to the connection to
 * the whole response having arrived. A pooled connection that turns out to be closed by
 * the agent before any response byte arrives is retried once on a fresh connection,
 * since the agent never answered (the usual race with an agent's own idle timeout).
 *
 * The process must ignore SIGPIPE (server.c does): agents close sockets under writes.
 *
 * Never: call the callback twice, call it after sb_upstream_cancel(), or call it from
 * inside sb_upstream_push() itself (every outcome, including failures found at once, is
 * reported from the loop, so callers never re-enter their own code).
 *
 * https: TLS 1.2+ through bufferevent_openssl, peer verification against the system CA
 * store (or opts.tls_ca_file), SNI and hostname verification for names, IP-address
 * verification for literals, ALPN http/1.1. Handshake failures (untrusted certificate,
 * name mismatch, a plain HTTP port, no answer within the connect timeout) → tls_error.
 *
 * Extension points (not implemented yet; upstream.c is laid out for them):
 *  - HTTP/2 (nghttp2): an origin would hold one multiplexed session instead of a stack
 *    of idle HTTP/1.1 connections; sb_upstream_req is protocol-neutral (it owns the
 *    serialized request, the response headers and body, the deadline and the deferred
 *    completion), so a session can carry the same requests and report through the same
 *    completion path. ALPN would then offer "h2" next to "http/1.1" (the connection
 *    knows which one was chosen when the handshake ends), and h2c with prior knowledge
 *    would be chosen per origin from the registry's "protocol".
 *  - Streaming responses (text/event-stream): a later sb_upstream_send variant would take
 *    optional on_head(status, headers) and on_data(evbuffer) callbacks; the parser's
 *    body callback is the single place that appends to the response body, so it would
 *    hand chunks to on_data (with read backpressure from sb_response_pending) instead
 *    of buffering them whole, and the final callback would carry an empty body.
 *  - TLS session resumption: a per-origin SSL_SESSION cache would save a round trip on
 *    each new connection; keep-alive makes new connections rare, so it is not done yet.
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

/* Zero in a field means its default. */
typedef struct sb_upstream_opts {
    int connect_timeout_ms;    /* DNS + connect; default 3000 */
    int response_timeout_ms;   /* request sent → whole response; default 300000 */
    size_t max_response_bytes; /* a larger body fails with invalid_response; default 4 MiB */
    const sb_cidr *allow;      /* --allow-upstream ranges (copied by sb_upstream_pool_new) */
    size_t n_allow;
    size_t max_idle_per_origin; /* idle keep-alive connections kept per origin; default 64 */
    int idle_timeout_ms;        /* an idle connection is closed after this; default 60000 */
    const char *tls_ca_file;    /* PEM CA bundle for https agents; NULL: the system store */
} sb_upstream_opts;

typedef struct sb_upstream_result {
    sb_reason reason;      /* SB_REASON_NONE when an HTTP response arrived */
    int status;            /* HTTP status (never 1xx), 0 when reason != SB_REASON_NONE */
    sb_headers *headers;   /* response headers; empty on failure (borrowed for the callback) */
    struct evbuffer *body; /* response body, NULL on failure; the callback may drain it
                            * (borrowed for the callback) */
    char detail[256];      /* one line, e.g. "connect 10.0.0.7:8000: Connection refused";
                            * empty on success */
    uint64_t duration_us;  /* from push to completion */
    int reused;            /* 1 if a pooled keep-alive connection carried the request */
} sb_upstream_result;

typedef void (*sb_upstream_cb)(const sb_upstream_result *res, void *arg);

/* Creates the pool of one worker loop. |dns| resolves host names (may be shared with
 * other users of the loop; create it with EVDNS_BASE_INITIALIZE_NAMESERVERS so that
 * /etc/hosts is read and "localhost" resolves; NULL limits the pool to IP literals).
 * |opts| is copied, including the allow list. Never NULL. */
sb_upstream_pool *sb_upstream_pool_new(struct event_base *base, struct evdns_base *dns,
                                       const sb_upstream_opts *opts);
/* Closes every connection; in-flight requests are canceled without callbacks. Must not
 * be called from inside an upstream callback. NULL is a no-op. */
void sb_upstream_pool_free(sb_upstream_pool *p);

/* Sends "POST |url|->path" with |headers| and |body|, and calls |cb| exactly once, later,
 * from the loop. Returns a handle valid until the callback runs or sb_upstream_cancel is
 * called. Never NULL.
 *
 * |headers|: Host, Content-Length and Connection are added; the caller must not pass
 * them, and they are dropped if it does, together with other hop-by-hop headers and any
 * header whose name is not a token or whose value holds CR, LF or NUL.
 * |body|: drained; the pool takes its bytes without copying (NULL means empty). A body
 * whose chains are themselves references (evbuffer_add_buffer_reference) is copied once
 * when it rides a reused connection: libevent cannot reference it again, and the bytes
 * must stay available for the stale-connection retry.
 * |url| and |headers| are not referenced after the call. */
sb_upstream_req *sb_upstream_push(sb_upstream_pool *p, const sb_url *url, const sb_headers *headers,
                                  struct evbuffer *body, sb_upstream_cb cb, void *arg);

/* Like sb_upstream_push with another |method| ("GET" for the registry's agent-card
 * probe). A GET without body carries no Content-Length. |method| must be an upper-case
 * token; anything else fails (reported through |cb|) with invalid_response. */
sb_upstream_req *sb_upstream_send(sb_upstream_pool *p, const char *method, const sb_url *url,
                                  const sb_headers *headers, struct evbuffer *body,
                                  sb_upstream_cb cb, void *arg);

/* Like sb_upstream_send, with the response deadline set to |response_timeout_ms| for this
 * request (0: the pool's), e.g. the registration probe's short bound. */
sb_upstream_req *sb_upstream_request(sb_upstream_pool *p, const char *method, const sb_url *url,
                                     const sb_headers *headers, struct evbuffer *body,
                                     int response_timeout_ms, sb_upstream_cb cb, void *arg);

/* Abandons |req|: its callback will not run, its connection is closed (the agent may
 * still have received the request). A no-op when called from |req|'s own callback. */
void sb_upstream_cancel(sb_upstream_req *req);

/* Idle pooled connections (for metrics and tests). */
size_t sb_upstream_pool_idle(const sb_upstream_pool *p);

#endif
