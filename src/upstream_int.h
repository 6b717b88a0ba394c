/*
 * upstream_int.h — private to the upstream client: the records its files share and the
 * calls they make on each other. Not a module interface (callers use upstream.h); only
 * upstream.c, upstream_conn.c, upstream_http1.c and upstream_tls.c include it.
 *
 *   upstream.c        requests: what is sent, timers, completion and delivery, origins
 *                     and routing, streaming, the public API (and the design overview);
 *   upstream_conn.c   connections: resolve and connect, idle bookkeeping and the sweeper,
 *                     close, kill and reap, the pool's side of HTTP/2 sessions, and the
 *                     bufferevent callbacks that dispatch on the connection state;
 *   upstream_http1.c  the HTTP/1.1 exchange: request head, response parser, keep-alive;
 *   upstream_tls.c    the TLS context, handshake, ALPN and the text of TLS failures.
 *
 * Every function declared here starts with up_; everything else stays static in its file.
 */
#ifndef SWITCHBOARD_UPSTREAM_INT_H
#define SWITCHBOARD_UPSTREAM_INT_H

#include <event2/bufferevent.h>
#include <event2/event_struct.h>
#include <event2/util.h>
#include <http_parser.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/upstream.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream_h2.h"
#include "switchboard/util.h"

#define HOST_MAX 256   /* DNS names are at most 253 bytes */
#define ORIGIN_MAX 300 /* "https://" + "[" host "]" + ":65535" */
#define PEER_MAX 64    /* "[v6 address]:port" */

typedef struct up_conn up_conn;
typedef struct up_origin up_origin;

typedef enum {
    REQ_NEW,        /* being set up inside sb_upstream_submit */
    REQ_RESOLVING,  /* waiting for evdns (dns_req may be set) */
    REQ_CONNECTING, /* conn is connecting */
    REQ_WAITING,    /* queued on its origin for an HTTP/2 stream */
    REQ_SENT,       /* conn carries the request (HTTP/1.1) or a stream of it (HTTP/2) */
    REQ_RETRY,      /* to be routed again from the timer event */
    REQ_DONE        /* result recorded, callback pending on the timer event */
} req_phase;

/* What a connection is being set up for. */
typedef enum {
    WANT_H1,  /* HTTP/1.1 only (http, or https offering only http/1.1) */
    WANT_H2C, /* http with HTTP/2 prior knowledge */
    WANT_ALPN /* https offering h2 and http/1.1 */
} conn_want;

/* Streaming state of a request. */
typedef enum {
    SS_NONE,         /* no on_head: buffer the whole body */
    SS_UNDECIDED,    /* on_head given, the head has not arrived */
    SS_HEAD_PENDING, /* the head arrived, on_head not yet called */
    SS_BUFFER,       /* on_head said 0: buffer as without it */
    SS_STREAM        /* on_head said 1: hand the body to on_data */
} stream_state;

struct sb_upstream_req {
    sb_upstream_pool *pool;
    sb_upstream_req *prev, *next;           /* pool->reqs */
    sb_upstream_req *wait_prev, *wait_next; /* origin->wait_* while REQ_WAITING */
    up_origin *wait_origin;                 /* holds a reference while waiting */
    up_origin *opener;                      /* holds a reference while opening for waiters */
    sb_upstream_cb cb;
    sb_upstream_head_cb on_head;
    sb_upstream_data_cb on_data;
    void *arg;
    req_phase phase;
    conn_want want;
    stream_state sstate;
    unsigned in_cb : 1;          /* the final callback is running: cancel is a no-op */
    unsigned in_stream_cb : 1;   /* on_head/on_data is running: cancel is deferred */
    unsigned cancel_pending : 1; /* canceled from on_head/on_data */
    unsigned paused : 1;         /* sb_upstream_pause(req, 1) */
    unsigned read_held : 1;      /* we disabled reading on the HTTP/1.1 connection */
    unsigned retried : 1;        /* the one retry (stale connection, refused stream) is used */
    unsigned notify_used : 1;    /* notify was activated once: req_free must event_del it */
    unsigned https : 1;
    unsigned literal : 1; /* the host is an IP literal (no SNI, IP identity check) */
    struct event timer;   /* phase deadline, then the deferred completion */
    struct event notify;  /* streaming: hand the head / body over from the loop */
    struct evdns_getaddrinfo_request *dns_req;
    struct evutil_addrinfo *ai, *ai_next; /* resolved addresses left to try (owned) */
    up_conn *conn;
    /* What is sent: one allocation (spec) holds the headers array and every string. */
    char *spec;
    const char *method, *path, *authority;
    size_t method_len, path_len, authority_len;
    sb_header *hdrs;
    uint32_t *hdr_lens; /* two per header: its name's length, its value's (in spec) */
    size_t n_hdrs;
    size_t hdrs_wire;      /* "name: value\r\n" of every header, in bytes */
    struct evbuffer *body; /* the request body; moved out on a fresh HTTP/1.1 connection */
    uint64_t start_us;
    int port;
    int last_errno;          /* last connect error, for classification */
    int response_timeout_ms; /* 0: the pool's */
    int n_tried;             /* allowed addresses a connect was attempted to */
    char last_peer[PEER_MAX];
    char host[HOST_MAX];
    char origin[ORIGIN_MAX];
    sb_headers resp_headers;
    struct evbuffer *resp_body;
    sb_h2c_stream h2st; /* while riding an HTTP/2 session */
    sb_upstream_result res;
};

typedef enum {
    CONN_CONNECTING, /* TCP connect under way: fd and connect_ev, no bufferevent yet */
    CONN_HANDSHAKE,  /* https: TLS handshake under way on bev */
    CONN_ACTIVE,     /* HTTP/1.1, carries req */
    CONN_IDLE,       /* HTTP/1.1, parked on its origin's stack */
    CONN_H2,         /* an HTTP/2 session (h2), on its origin's list unless killed */
    CONN_CLOSING,    /* an idle session that sent GOAWAY, flushing before the close */
    CONN_DEAD        /* closed, memory awaits the reaper */
} conn_state;
typedef enum { HDR_NONE, HDR_FIELD, HDR_VALUE } hdr_state;

struct up_conn {
    sb_upstream_pool *pool;
    up_origin *origin;
    up_conn *all_prev, *all_next;   /* pool->conns, or pool->dead once closed */
    up_conn *idle_prev, *idle_next; /* origin->idle stack while CONN_IDLE */
    up_conn *lru_prev, *lru_next;   /* pool idle list, oldest first, while in_lru */
    up_conn *h2_prev, *h2_next;     /* origin->h2 while h2_linked */
    up_conn *kill_next;             /* pool->kill while killed and not yet closed */
    evutil_socket_t fd;             /* owned until bev takes it */
    struct event connect_ev;        /* writability of fd while CONN_CONNECTING */
    struct bufferevent *bev;        /* socket or OpenSSL bufferevent; owns fd */
    struct event rd;                /* write_first: EV_READ on the socket (sb_bev_read) */
    struct event wr;                /* write_first: the request's write, from the loop */
    sb_h2c *h2;                     /* CONN_H2 and CONN_CLOSING */
    sb_upstream_req *req;           /* HTTP/1.1: the request carried or being connected */
    conn_state state;
    conn_want want;
    unsigned in_lru : 1;
    unsigned h2_linked : 1;
    unsigned killed : 1;
    unsigned write_first : 1; /* plain HTTP/1.1 socket: sb_bev_flush writes, rd reads */
    unsigned reading : 1;     /* write_first: rd is added */
    unsigned served;          /* responses completed (HTTP/1.1) or streams started (HTTP/2) */
    unsigned reused;          /* the current request rides a previously used connection */
    uint64_t idle_since_us;
    uint64_t rx_bytes; /* response bytes received for the current request */
    char peer[PEER_MAX];

    /* HTTP/1.1 response parsing */
    http_parser parser;
    int msg_done;    /* the final response is complete */
    int keepalive;   /* http_should_keep_alive() of the final response */
    const char *err; /* set by a parser callback that rejects the response */
    hdr_state hstate;
    /* The header being accumulated. While its pieces lie in the chunk being parsed they
     * are pointers into it (d_name, d_value: the common case copies nothing before the
     * header list); what is pending when http_parser_execute returns is spilled into
     * hbuf (name then value, contiguous), since the chunk is drained then. */
    const char *d_name, *d_value;
    size_t d_name_len, d_value_len;
    char *hbuf;
    size_t hcap, hname, hval;
};

struct up_origin {
    char *key; /* our own copy, also the map key */
    int https;
    up_conn *idle; /* HTTP/1.1: top of the LIFO stack */
    size_t n_idle;
    up_conn *h2; /* HTTP/2 sessions */
    size_t n_h2;
    size_t n_pending_h2; /* openers: connections being set up that may become sessions */
    sb_upstream_req *wait_head, *wait_tail;
    int alpn_h1; /* the last ALPN handshake chose http/1.1 */
    size_t refs; /* connections, waiters and openers that belong to this origin */
};

struct sb_upstream_pool {
    struct event_base *base;
    struct evdns_base *dns;
    int connect_timeout_ms, response_timeout_ms, idle_timeout_ms;
    size_t max_response_bytes, max_idle_per_origin;
    sb_cidr *allow;
    size_t n_allow;
    const struct timeval *tv_connect, *tv_response; /* common timeouts of |base| */
    sb_strmap *origins;
    up_conn *conns;               /* every open connection */
    up_conn *dead;                /* closed, awaiting the reaper */
    up_conn *kill;                /* HTTP/2 connections to close from the kill event */
    up_conn *lru_head, *lru_tail; /* idle connections and sessions, oldest first */
    size_t n_idle;
    size_t n_h2;           /* live sessions */
    sb_upstream_req *reqs; /* every request not yet completed and delivered */
    struct event *reap_ev;
    struct event *sweep_ev;
    struct event *kill_ev;
    int freeing; /* inside sb_upstream_pool_free: start nothing new */
    char *tls_ca_file;
    SSL_CTX *tls_ctx;      /* created on the first https push */
    char tls_ctx_err[200]; /* why tls_ctx could not be made, reported per push */
};

/* ---------------------------------------------------------------- upstream.c */

/* Decimal digits of |v| into |out| (>= 20 bytes), not terminated; returns the count. */
size_t up_format_u64(uint64_t v, char *out);
/* Empties |b|; NULL is allowed. */
void up_drain_all(struct evbuffer *b);
/* The body length to announce, or -1 for none (a GET without body). */
long long up_req_content_length(const sb_upstream_req *req);
/* (Re)starts the response deadline of |req|. */
void up_req_arm_response(sb_upstream_req *req);
/* Records the outcome of |req| (|reason| NONE: the response in req->resp_* is complete,
 * |fmt| NULL: no detail) and schedules its callback from the loop; never calls it. */
void up_req_complete(sb_upstream_req *req, sb_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The origin for |key|, created (with no reference) when |create| and missing; NULL
 * otherwise. */
up_origin *up_origin_get(sb_upstream_pool *p, const char *key, int create);
/* Drops a reference to |o|, freeing it with the last one. */
void up_origin_unref(sb_upstream_pool *p, up_origin *o);
/* Serves the waiters of |o| as far as it can now. */
void up_origin_dispatch(up_origin *o);
/* The connection |req| was opening for its origin is settled (|fail| NONE) or failed:
 * its waiters are dispatched or fail the same way. No-op when |req| opens nothing. */
void up_opener_release(sb_upstream_req *req, sb_reason fail, const char *detail);
/* 1 when the size limit applies to the body of |req| (it is buffered whole). */
int up_body_limited(const sb_upstream_req *req);
/* The final response head of |req| arrived / body bytes arrived in req->resp_body. */
void up_stream_head_arrived(sb_upstream_req *req);
void up_stream_data_arrived(sb_upstream_req *req);

/* ---------------------------------------------------------------- upstream_conn.c */

/* strerror_r text of |err|, in |buf| or static. */
const char *up_errno_text(int err, char *buf, size_t len);
/* Resolves req->host and connects to its first allowed address; the outcome comes
 * later, from the loop or as a completed |req|. */
void up_req_start_resolve(sb_upstream_req *req);
/* Enter or leave the pool's idle list (oldest first). */
void up_lru_add(up_conn *c);
void up_lru_del(up_conn *c);
/* Takes an idle HTTP/1.1 connection off its origin's stack and the pool's idle list. */
void up_idle_unlink(up_conn *c);
/* Closes |c| at once; its memory goes later, from the reaper. The caller deals with
 * c->req before. */
void up_conn_close(up_conn *c);
/* The pool's events: reclaim closed connections, close idle ones, close killed
 * sessions. |arg| is the pool. */
void up_reap_cb(evutil_socket_t fd, short what, void *arg);
void up_sweep_cb(evutil_socket_t fd, short what, void *arg);
void up_kill_cb(evutil_socket_t fd, short what, void *arg);
/* Puts |req| on a new stream of the session |c| and writes it out. */
void up_h2_start(up_conn *c, sb_upstream_req *req);
/* The connection |c| that |req| was setting up speaks HTTP/2: it becomes a session. */
void up_conn_become_h2(up_conn *c, sb_upstream_req *req);
/* Writes out what the session of |c| has after a change made from outside it. */
void up_h2_after_change(up_conn *c);
/* The bufferevent callbacks of every connection; |arg| is the up_conn. */
void up_conn_readcb(struct bufferevent *bev, void *arg);
void up_conn_writecb(struct bufferevent *bev, void *arg);
void up_conn_eventcb(struct bufferevent *bev, short what, void *arg);
/* Starts or stops reading the socket of |c| (rd when write_first, else the bufferevent's
 * EV_READ). */
void up_conn_set_reading(up_conn *c, int on);
/* write_first: writes the output of |c| from the loop, after this turn's callbacks. */
void up_conn_write_soon(up_conn *c);

/* ---------------------------------------------------------------- upstream_http1.c */

/* Hands |req| to the HTTP/1.1 connection |c| (fresh or reused) and writes it. */
void up_conn_send(up_conn *c, sb_upstream_req *req);
/* The connection carrying a request failed before the response completed: retries once
 * on a stale reused connection, else completes with |reason|. Closes |c| either way. */
void up_conn_fail_active(up_conn *c, sb_reason reason, const char *what);
/* Bytes in |in| / EOF or an error on a CONN_ACTIVE connection. */
void up_h1_on_read(up_conn *c, struct evbuffer *in);
void up_h1_on_event(up_conn *c, short what, int err);

/* ---------------------------------------------------------------- upstream_tls.c */

/* The pool's client context, made on first use; NULL with p->tls_ctx_err set. */
SSL_CTX *up_tls_ctx_get(sb_upstream_pool *p);
/* " (name)" after a peer address when the URL named the host, "" for IP literals. */
const char *up_tls_name_note(const sb_upstream_req *req, char *buf, size_t len);
/* Starts the TLS handshake on the connected c->fd. 0, or -1 with |why| set. */
int up_conn_start_tls(up_conn *c, sb_upstream_req *req, char *why, size_t len);
/* Closes |c| after a TLS failure and completes |req| with tls_error. */
void up_conn_fail_tls(up_conn *c, sb_upstream_req *req, const char *stage, const char *why);
/* The handshake of |c| ended or failed (BEV_EVENT_* |what|, socket error |err|). */
void up_tls_on_event(up_conn *c, short what, int err);
/* One line on why an established connection failed. */
void up_conn_error_text(up_conn *c, short what, int err, char *out, size_t len);

#endif
