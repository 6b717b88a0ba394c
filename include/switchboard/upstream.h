/*
 * upstream.h — the HTTP client that pushes messages to agents.
 *
 * One sb_upstream_pool per worker loop holds keep-alive HTTP/1.1 connections and
 * HTTP/2 sessions per origin (scheme, host, port). sb_upstream_push() sends one POST
 * (sb_upstream_submit() any request, with options) and calls back exactly once
 * with either an HTTP response (any status) or a transport failure classified into one
 * reason of the closed list: dns_error, connect_refused, connect_timeout, tls_error,
 * upstream_forbidden (a resolved address the policy refuses), response_timeout,
 * connection_reset, invalid_response (not parseable HTTP, or a body over the limit).
 * HTTP statuses are not judged here: the caller decides what a 404 means.
 *
 * Timeouts: --connect-timeout-ms bounds DNS + TCP connect + TLS handshake;
 * --push-timeout-s bounds the time from the request being handed to the connection to
 * the whole response having arrived (for a streamed answer: the silence between body
 * bytes, see below). A pooled connection or session that turns out to be closed by the
 * agent before any response byte arrives is retried once on a fresh connection, since
 * the agent never answered (the usual race with an agent's own idle timeout).
 *
 * The process must ignore SIGPIPE (server.c does): agents close sockets under writes.
 *
 * https: TLS 1.2+ through bufferevent_openssl, peer verification against the system CA
 * store plus opts.tls_ca_file when given (--upstream-ca: an additional trust anchor for
 * agents behind a private CA; public certificates keep working), SNI and hostname
 * verification for names, IP-address verification for literals. Handshake failures
 * (untrusted certificate, name mismatch, a plain HTTP port, no answer within the connect
 * timeout) → tls_error, with OpenSSL's verdict ("certificate verify failed: self-signed
 * certificate", ...) in the detail.
 *
 * Protocols (sb_upstream_send_opts.protocol, from the registration's "protocol"):
 *  - SB_PROTO_AUTO (default): https offers ALPN "h2" then "http/1.1" and uses what the
 *    agent picks; http uses HTTP/1.1.
 *  - SB_PROTO_HTTP1: HTTP/1.1 only (https offers only "http/1.1").
 *  - SB_PROTO_H2C: http uses HTTP/2 with prior knowledge (no Upgrade dance); for an
 *    https URL it means the same as auto (h2 through ALPN).
 * An origin that speaks HTTP/2 gets ONE multiplexed session per worker instead of a
 * stack of HTTP/1.1 connections. Requests beyond the agent's
 * SETTINGS_MAX_CONCURRENT_STREAMS open another session (at most
 * SB_UPSTREAM_H2_MAX_SESSIONS per origin) and beyond that wait for a free stream, for at
 * most the connect timeout (then connect_timeout, nothing was sent). While the first
 * connection to an h2-capable origin is being set up, further requests wait for it
 * instead of opening their own; if it fails they fail with its reason. The same
 * failure classification applies: RST_STREAM from the agent or a connection that ends
 * mid-answer → connection_reset, an answer that breaks HTTP/2 (or an HTTP/1.x answer to
 * the h2c preface) → invalid_response. A stream the agent did not process
 * (RST_STREAM REFUSED_STREAM, an id beyond its GOAWAY's last stream id, or never sent) is
 * retried once on another session. Idle sessions are closed with GOAWAY after
 * idle_timeout_ms, like idle HTTP/1.1 connections.
 *
 * Streaming (text/event-stream and other long answers): give on_head and on_data in
 * sb_upstream_send_opts. on_head(status, headers, arg) runs once the final response
 * head arrived and returns 1 to stream the body, 0 to have it buffered as usual. When
 * streaming, on_data(buf, arg) is handed the body as it arrives (HTTP/1.1 chunks or
 * read-until-close, HTTP/2 DATA), never buffered whole; the final callback then carries
 * an empty body or the tail that was not yet handed over (relay it before ending),
 * res->streamed = 1, and a transport failure after the head (reset, timeout) as usual
 * reason with status 0. Backpressure: what on_data leaves in |buf| stays buffered; the
 * upstream is read only while less than SB_UPSTREAM_STREAM_HIGH bytes wait and the
 * caller has not paused (sb_upstream_pause): HTTP/1.1 stops reading the socket, HTTP/2
 * stops returning flow-control credit for that one stream (other streams go on). The
 * response deadline of a streamed answer is an inactivity timeout: response_timeout_ms
 * from the last body bytes, not from the request, so a stream that keeps producing
 * events lives as long as it produces; it does not run while the caller paused.
 *
 * Never: call a callback after sb_upstream_cancel(), call the final callback twice, or
 * call any callback from inside sb_upstream_push()/sb_upstream_submit() itself (every
 * outcome, including failures found at once, is reported from the loop, so callers
 * never re-enter their own code). on_head and on_data also run from the loop, never from
 * inside a bufferevent or nghttp2 callback.
 *
 * Not done yet: TLS session resumption (a per-origin SSL_SESSION cache would save a round
 * trip on each new connection; keep-alive and multiplexing make new connections rare),
 * HTTP/2 PING liveness checks on idle sessions (a dead idle session is found by the
 * stale-connection retry instead).
 */
#ifndef SWITCHBOARD_UPSTREAM_H
#define SWITCHBOARD_UPSTREAM_H

#include <event2/buffer.h>
#include <stdint.h>

#include "switchboard/netaddr.h"
#include "switchboard/reason.h"
#include "switchboard/headers.h"

struct event_base;
struct evdns_base;

/* How an endpoint wants to be spoken to (see above). */
typedef enum { SB_PROTO_AUTO = 0, SB_PROTO_HTTP1, SB_PROTO_H2C } sb_upstream_proto;

/* "auto", "http1" or "h2c" (static): the registry's spelling. */
const char *sb_upstream_proto_name(sb_upstream_proto p);

typedef struct sb_upstream_pool sb_upstream_pool;
typedef struct sb_upstream_req sb_upstream_req;

/* HTTP/2 sessions one pool opens to one origin before requests wait for a free stream. */
#define SB_UPSTREAM_H2_MAX_SESSIONS 4
/* A streamed answer is read from the agent only while less than this waits unconsumed
 * (HTTP/2 additionally bounds it by the stream window, 256 KiB). */
#define SB_UPSTREAM_STREAM_HIGH (64 * 1024)

/* Zero in a field means its default. */
typedef struct sb_upstream_opts {
    int connect_timeout_ms;    /* DNS + connect; default 3000 */
    int response_timeout_ms;   /* request sent → whole response; default 300000 */
    size_t max_response_bytes; /* a larger body fails with invalid_response; default 4 MiB */
    const sb_cidr *allow;      /* --allow-upstream ranges (copied by sb_upstream_pool_new) */
    size_t n_allow;
    size_t max_idle_per_origin; /* idle keep-alive connections kept per origin; default 256 */
    int idle_timeout_ms;        /* an idle connection is closed after this; default 60000 */
    const char *tls_ca_file;    /* PEM CA bundle trusted for https agents in addition to the
                                 * system store (--upstream-ca); NULL: the system store only */
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
    int reused;            /* 1 if a pooled keep-alive connection (or an HTTP/2 session
                            * that carried earlier requests) carried the request */
    int http_version;      /* 10, 11 or 20 when an answer arrived; 0 otherwise */
    int streamed;          /* 1 when on_head chose streaming: the head and body went to
                            * on_head/on_data (|body| holds only the tail not handed over
                            * yet); also set on a failure after that point, so the caller
                            * knows its client already got a head */
} sb_upstream_result;

typedef void (*sb_upstream_cb)(const sb_upstream_result *res, void *arg);

/* The final response head of a request sent with on_head: |status| (never 1xx) and
 * |headers| (borrowed for the call). Return 1 to receive the body through on_data as it
 * arrives, 0 to have it buffered into the final callback as without on_head. Runs from
 * the loop; may call sb_upstream_pause or sb_upstream_cancel on its own request (after a
 * cancel nothing else runs). |arg| is the request's. */
typedef int (*sb_upstream_head_cb)(int status, const sb_headers *headers, void *arg);
/* Body bytes of a streamed answer, in order. Take what you can (evbuffer_remove_buffer,
 * evbuffer_add_buffer, ...); what stays in |data| is offered again with the next bytes
 * or, at the end, in the final callback's body. Runs from the loop; may pause or cancel
 * its own request. */
typedef void (*sb_upstream_data_cb)(struct evbuffer *data, void *arg);

/* Per-request options of sb_upstream_submit; zero means the default everywhere. */
typedef struct sb_upstream_send_opts {
    const char *method;          /* upper-case token; NULL: "POST" */
    sb_upstream_proto protocol;  /* SB_PROTO_AUTO, SB_PROTO_HTTP1 or SB_PROTO_H2C */
    int response_timeout_ms;     /* 0: the pool's (for streams, the inactivity bound) */
    sb_upstream_head_cb on_head; /* NULL: never stream (today's behaviour) */
    sb_upstream_data_cb on_data; /* required with on_head */
} sb_upstream_send_opts;

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

/* The general form: sends |url| with |headers| and |body| as sb_upstream_push does
 * (same header rules, same ownership: |body| is drained, |url|, |headers| and |opts|
 * are not referenced after the call) with the method, protocol, deadline and streaming
 * callbacks of |opts| (NULL: all defaults, i.e. sb_upstream_push). A method that is not
 * an upper-case token, or on_head without on_data, fails through |cb| with
 * invalid_response. Returns a handle valid until the final callback runs or
 * sb_upstream_cancel is called. Never NULL. */
sb_upstream_req *sb_upstream_submit(sb_upstream_pool *p, const sb_url *url,
                                    const sb_headers *headers, struct evbuffer *body,
                                    const sb_upstream_send_opts *opts, sb_upstream_cb cb,
                                    void *arg);

/* Abandons |req|: no callback of it runs afterwards. An HTTP/1.1 connection carrying
 * it is closed; an HTTP/2 stream is reset with RST_STREAM(CANCEL) and the session goes
 * on. The agent may still have received the request. Allowed from on_head and on_data
 * of |req| itself; a no-op from its final callback. */
void sb_upstream_cancel(sb_upstream_req *req);

/* Streaming backpressure: |paused| 1 stops handing body bytes to on_data and stops
 * reading the agent's answer (HTTP/1.1: the socket; HTTP/2: this stream's window) and
 * its inactivity deadline; 0 resumes all three, offering what is buffered at once (from
 * the loop). Typically paused when the client's output is behind
 * (sb_response_pending) and resumed when it drained. A no-op for requests without
 * on_head, before streaming began (the state is kept and applies then), and after the
 * final callback. */
void sb_upstream_pause(sb_upstream_req *req, int paused);

/* Idle pooled connections: HTTP/1.1 connections waiting for a request plus HTTP/2
 * sessions without an open stream (for metrics and tests). Any thread may call it: a
 * relaxed read of a count the pool's thread keeps. */
size_t sb_upstream_pool_idle(const sb_upstream_pool *p);

/* Live HTTP/2 sessions of the pool, over all origins (for metrics and tests). */
size_t sb_upstream_pool_h2_sessions(const sb_upstream_pool *p);

#endif
