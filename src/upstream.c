/*
 * upstream.c — per-loop client to agents: HTTP/1.1 keep-alive pools and HTTP/2 sessions,
 * over http and https (see upstream.h).
 *
 * Objects. A pool belongs to one event_base and is never touched from another thread.
 * It owns origins ("http://host:port"), every live connection, and every request in
 * flight. An origin holds a LIFO stack of idle HTTP/1.1 connections, the list of its
 * HTTP/2 sessions (connections in state CONN_H2, each driving an sb_h2c from
 * upstream_h2.c), and a FIFO of requests waiting for an HTTP/2 stream. A request
 * (sb_upstream_req) owns what it sends (method, path, authority and the headers that
 * may be sent, packed in one allocation; the body in an evbuffer), its deadline timer,
 * its streaming notifier, the response headers and body, and — while it rides an
 * HTTP/2 session — its stream record, embedded. An HTTP/1.1 connection (up_conn in
 * CONN_ACTIVE) owns a bufferevent and the response parser and carries one request at a
 * time (no pipelining); an HTTP/2 connection carries any number, up to the agent's
 * SETTINGS_MAX_CONCURRENT_STREAMS.
 *
 * Life of a request:
 *   submit → route: an HTTP/2 session of the origin with a free stream; else, for an
 *   origin that may speak HTTP/2 and already has a connection being set up (or
 *   SB_UPSTREAM_H2_MAX_SESSIONS full sessions), wait in the origin's queue; else an idle
 *   HTTP/1.1 connection (only for HTTP/1.1 requests); else resolve → connect (→ TLS
 *   handshake for https, where ALPN decides) → send → read the response → complete.
 *   The request that opens a connection for an h2-capable origin is its "opener": when
 *   its connection becomes a session the waiters get streams on it; when it turns out
 *   HTTP/1.1 they open their own connections; when it fails they fail the same way.
 *   The timer bounds each phase: connect_timeout_ms from the start of resolution (or of
 *   the wait) to a usable connection, response_timeout_ms from the request being handed
 *   to the connection to the last response byte — or, for a streamed answer, between
 *   body bytes.
 *
 * Life of a connection: a non-blocking connect() watched by a plain event (so the errno
 * of a failed connect is read exactly, with getsockopt(SO_ERROR)); once connected, the
 * socket goes to a socket bufferevent (http) or an OpenSSL bufferevent in connecting
 * state (https). Then: HTTP/1.1 carries one request at a time and, when the response
 * allows, waits on its origin's stack for the next; HTTP/2 (h2c prior knowledge, or
 * ALPN "h2") becomes a session that stays on the origin's list until the agent or the
 * idle sweeper ends it.
 *
 * Completion is always deferred: req_complete() records the result and activates the
 * request's timer event; the user callback runs from that event, at the top of the loop,
 * where no bufferevent, resolver or nghttp2 callback of ours is on the stack. Streaming
 * callbacks (on_head, on_data) likewise run from the request's notify event. That single
 * rule gives "never from inside push", lets callbacks push again or cancel requests
 * freely, and means a connection is never in the middle of its own callback when user
 * code runs. Connections closed from inside their own bufferevent callbacks are unlinked
 * at once (their bufferevent freed, which libevent allows from its callbacks) and their
 * memory is reclaimed by a reaper event, so no code path can touch a freed up_conn. An
 * HTTP/2 session that ends is "killed": detached from its origin at once and closed by
 * the kill event, so sb_h2c_free never runs while the session is on the stack.
 *
 * Failure classification (the reason list is SPEC §4.2):
 *   - resolver error, NXDOMAIN, no address, or no answer within the connect timeout
 *     → dns_error;
 *   - every resolved address forbidden by the policy → upstream_forbidden, decided before
 *     any connect; forbidden addresses are never connected to, even when the name also
 *     has allowed ones (those are tried, in resolver order);
 *   - connect errors: ECONNREFUSED → connect_refused; ETIMEDOUT or no connection within
 *     the connect timeout → connect_timeout; every other connect error (EHOSTUNREACH,
 *     ENETUNREACH, EADDRNOTAVAIL, EMFILE on socket(), ...) → connect_refused, with the
 *     errno text in the detail: the agent's address did not take the connection, which
 *     is what operators read "refused" as; waiting longer than the connect timeout for
 *     an HTTP/2 stream → connect_timeout (nothing was sent);
 *   - https: anything that stops the handshake (certificate not trusted, name or IP
 *     mismatch, protocol error such as a plain HTTP port, EOF, or no handshake within
 *     the rest of the connect timeout) → tls_error, with OpenSSL's verdict in the detail;
 *   - after the request was handed to the connection: EOF or an error (ECONNRESET,
 *     EPIPE, ...) before the response completed, RST_STREAM from the agent, or a GOAWAY
 *     that cut a stream it had taken → connection_reset, except on a reused connection
 *     or session that delivered no response byte for the request, and for HTTP/2 streams
 *     the agent did not process (REFUSED_STREAM, beyond GOAWAY's last stream id, never
 *     sent), which are retried once; unparseable HTTP, an unexpected 101, a body over
 *     max_response_bytes, HTTP/2 protocol errors and HTTP/1.x answering an h2c preface
 *     → invalid_response; no complete response in time → response_timeout.
 *
 * Keep-alive: an HTTP/1.1 connection goes back to its origin's stack only when the
 * response said so (HTTP/1.1 without "Connection: close", or HTTP/1.0 with keep-alive),
 * was not framed by EOF, the request was fully written and no stray byte followed the
 * response. Idle connections keep reading: any byte or EOF while idle closes them (the
 * agent's idle timeout usually fires first). At most max_idle_per_origin idle HTTP/1.1
 * connections are kept; HTTP/2 sessions without an open stream are idle too. A sweeper
 * closes what has been idle longer than idle_timeout_ms, oldest first (sessions with
 * GOAWAY).
 *
 * Copies: the caller's body is moved into the request's buffer (evbuffer_add_buffer).
 * HTTP/1.1 moves it on into the socket buffer on a fresh connection and references it
 * (evbuffer_add_buffer_reference) on a reused one so a retry can send it again; libevent
 * cannot reference chains that are themselves references, so such a body is copied once
 * there. HTTP/2 copies it into DATA frames without draining it (a refused stream is sent
 * again). The response body is copied once into the result buffer; headers into an
 * sb_headers.
 *
 * Never: call back twice, after cancel, or synchronously; connect to a forbidden address;
 * reuse a connection whose response state is uncertain; free an HTTP/2 session from
 * inside its own calls; block.
 */
#include "switchboard/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>
#include <http_parser.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream_h2.h"
#include "switchboard/util.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 3000
#define DEFAULT_RESPONSE_TIMEOUT_MS 300000
#define DEFAULT_MAX_RESPONSE_BYTES (4u * 1024 * 1024)
#define DEFAULT_MAX_IDLE_PER_ORIGIN 64
#define DEFAULT_IDLE_TIMEOUT_MS 60000
#define CLOSING_GRACE_MS 1000 /* a GOAWAY'd idle session gets this long to flush */

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
    sb_header *hdrs;
    size_t n_hdrs;
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
    sb_h2c *h2;                     /* CONN_H2 and CONN_CLOSING */
    sb_upstream_req *req;           /* HTTP/1.1: the request carried or being connected */
    conn_state state;
    conn_want want;
    unsigned in_lru : 1;
    unsigned h2_linked : 1;
    unsigned killed : 1;
    unsigned served; /* responses completed (HTTP/1.1) or streams started (HTTP/2) */
    unsigned reused; /* the current request rides a previously used connection */
    uint64_t idle_since_us;
    uint64_t rx_bytes; /* response bytes received for the current request */
    char peer[PEER_MAX];

    /* HTTP/1.1 response parsing */
    http_parser parser;
    int msg_done;    /* the final response is complete */
    int keepalive;   /* http_should_keep_alive() of the final response */
    const char *err; /* set by a parser callback that rejects the response */
    hdr_state hstate;
    char *hbuf; /* the header being accumulated: name then value, contiguous */
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

static void req_route(sb_upstream_req *req);
static void req_start_resolve(sb_upstream_req *req);
static void req_cancel_now(sb_upstream_req *req);
static void conn_close(up_conn *c);
static void conn_h2_kill(up_conn *c);
static void conn_h2_after(up_conn *c);
static void origin_dispatch(up_origin *o);
static void h2_start(up_conn *c, sb_upstream_req *req);
static void conn_send(up_conn *c, sb_upstream_req *req);
static void conn_fail_active(up_conn *c, sb_reason reason, const char *what);
static void idle_unlink(up_conn *c);

/* ---------------------------------------------------------------- small helpers */

static const char *errno_text(int err, char *buf, size_t len)
{
    /* GNU strerror_r: returns a pointer, either to |buf| or to a static string. */
    return strerror_r(err, buf, len);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(out, len, "%s:%d", ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(out, len, "[%s]:%d", ip, ntohs(in6->sin6_port));
    } else {
        snprintf(out, len, "?");
    }
}

static void format_ip(const struct sockaddr *sa, char *out, size_t len)
{
    const void *a = sa->sa_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (inet_ntop(sa->sa_family, a, out, (socklen_t)len) == NULL)
        snprintf(out, len, "?");
}

/* RFC 9110 tchar, as a table: header names are checked on every push. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

/* Headers this client frames itself or that only concern one hop (HTTP/2 forbids the
 * connection-specific ones outright). */
static int is_hop_header(const char *name, size_t len)
{
    static const struct {
        const char *name;
        size_t len;
    } hop[] = {
#define HOP(s) {s, sizeof(s) - 1}
        HOP("te"),
        HOP("host"),
        HOP("trailer"),
        HOP("upgrade"),
        HOP("connection"),
        HOP("keep-alive"),
        HOP("content-length"),
        HOP("proxy-connection"),
        HOP("transfer-encoding"),
#undef HOP
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(hop); i++)
        if (hop[i].len == len && strncasecmp(name, hop[i].name, len) == 0)
            return 1;
    return 0;
}

/* Bytes "name: value\r\n" of |h| takes on the wire, or 0 when it must not be sent: a
 * framing or hop-by-hop header, a name that is not a token, a value with CR, LF (header
 * injection) or NUL. */
static size_t header_wire_len(const sb_header *h)
{
    if (h->name == NULL || h->value == NULL)
        return 0;
    size_t nlen = 0;
    for (const unsigned char *p = (const unsigned char *)h->name; *p; p++, nlen++)
        if (!tchar[*p])
            return 0;
    if (nlen == 0 || is_hop_header(h->name, nlen))
        return 0;
    size_t vlen = strcspn(h->value, "\r\n");
    if (h->value[vlen] != '\0')
        return 0;
    return nlen + 2 + vlen + 2;
}

/* Decimal digits of |v| into |out| (>= 20 bytes), not terminated; returns the count. */
static size_t format_u64(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static int method_ok(const char *m)
{
    if (m == NULL || *m == '\0' || strlen(m) > 16)
        return 0;
    for (; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return 0;
    return 1;
}

static void drain_all(struct evbuffer *b)
{
    if (b)
        evbuffer_drain(b, evbuffer_get_length(b));
}

/* ---------------------------------------------------------------- what is sent */

/* Packs method, path, authority and the headers that may be sent into one allocation,
 * so HTTP/1.1 and HTTP/2 serialize the same checked list (whichever the connection
 * turns out to speak) without a per-header allocation. */
static void req_spec_build(sb_upstream_req *req, const char *method, const sb_url *url,
                           const sb_headers *headers)
{
    size_t nh = headers ? headers->count : 0;
    size_t lens_small[32];
    size_t *lens = nh <= SB_ARRAY_LEN(lens_small) ? lens_small : sb_malloc(nh * sizeof(size_t));
    size_t mlen = strlen(method), plen = strlen(url->path), alen = strlen(url->authority);
    size_t keep = 0, bytes = mlen + 1 + plen + 1 + alen + 1;
    for (size_t i = 0; i < nh; i++) {
        lens[i] = header_wire_len(&headers->items[i]);
        if (lens[i]) {
            keep++;
            bytes += lens[i] - 2; /* "name\0value\0" */
        }
    }
    char *blob = sb_malloc(keep * sizeof(sb_header) + bytes);
    sb_header *hs = (sb_header *)(void *)blob;
    char *p = blob + keep * sizeof(sb_header);
#define PUTS(dst, s, n)                                                                            \
    do {                                                                                           \
        memcpy(p, (s), (n));                                                                       \
        p[n] = '\0';                                                                               \
        (dst) = p;                                                                                 \
        p += (n) + 1;                                                                              \
    } while (0)
    PUTS(req->method, method, mlen);
    PUTS(req->path, url->path, plen);
    PUTS(req->authority, url->authority, alen);
    size_t k = 0;
    for (size_t i = 0; i < nh; i++) {
        if (lens[i] == 0)
            continue;
        const sb_header *h = &headers->items[i];
        size_t nlen = strlen(h->name);
        PUTS(hs[k].name, h->name, nlen);
        PUTS(hs[k].value, h->value, lens[i] - nlen - 4);
        k++;
    }
#undef PUTS
    if (lens != lens_small)
        sb_free(lens);
    req->spec = blob;
    req->hdrs = hs;
    req->n_hdrs = keep;
}

/* The body length to announce, or -1 for none (a GET without body). */
static long long req_content_length(const sb_upstream_req *req)
{
    size_t len = req->body ? evbuffer_get_length(req->body) : 0;
    if (len == 0 && strcmp(req->method, "GET") == 0)
        return -1;
    return (long long)len;
}

/* Serializes the HTTP/1.1 request head into |out|, in one reserved region and without
 * printf. */
static void h1_write_head(struct evbuffer *out, const sb_upstream_req *req)
{
    static const char conn_hdr[] = "Connection: keep-alive\r\n";
    static const char clen_hdr[] = "Content-Length: ";
    long long clen = req_content_length(req);
    size_t mlen = strlen(req->method), plen = strlen(req->path), alen = strlen(req->authority);
    size_t total = mlen + 1 + plen + sizeof(" HTTP/1.1\r\nHost: ") - 1 + alen + 2 +
                   (clen >= 0 ? sizeof(clen_hdr) - 1 + 20 + 2 : 0) + sizeof(conn_hdr) - 1 + 2;
    for (size_t i = 0; i < req->n_hdrs; i++)
        total += strlen(req->hdrs[i].name) + 2 + strlen(req->hdrs[i].value) + 2;

    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, &v, 1) != 1 || v.iov_len < total) {
        fprintf(stderr, "switchboard: evbuffer_reserve_space failed\n");
        abort();
    }
    char *p = v.iov_base;
#define PUT(s, n)                                                                                  \
    do {                                                                                           \
        memcpy(p, (s), (n));                                                                       \
        p += (n);                                                                                  \
    } while (0)
#define PUTLIT(s) PUT((s), sizeof(s) - 1)
    PUT(req->method, mlen);
    PUTLIT(" ");
    PUT(req->path, plen);
    PUTLIT(" HTTP/1.1\r\nHost: ");
    PUT(req->authority, alen);
    PUTLIT("\r\n");
    if (clen >= 0) {
        PUTLIT(clen_hdr);
        p += format_u64((uint64_t)clen, p);
        PUTLIT("\r\n");
    }
    PUTLIT(conn_hdr);
    for (size_t i = 0; i < req->n_hdrs; i++) {
        const sb_header *h = &req->hdrs[i];
        PUT(h->name, strlen(h->name));
        PUTLIT(": ");
        PUT(h->value, strlen(h->value));
        PUTLIT("\r\n");
    }
    PUTLIT("\r\n");
#undef PUTLIT
#undef PUT
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    evbuffer_commit_space(out, &v, 1);
}

/* ---------------------------------------------------------------- timers */

static int req_response_ms(const sb_upstream_req *req)
{
    return req->response_timeout_ms > 0 ? req->response_timeout_ms : req->pool->response_timeout_ms;
}

/* (Re)starts the response deadline: the whole answer, or for a stream the silence
 * between body bytes. */
static void req_arm_response(sb_upstream_req *req)
{
    event_del(&req->timer);
    if (req->response_timeout_ms > 0) {
        struct timeval tv = {req->response_timeout_ms / 1000,
                             (req->response_timeout_ms % 1000) * 1000};
        event_add(&req->timer, &tv);
    } else {
        event_add(&req->timer, req->pool->tv_response);
    }
}

/* ---------------------------------------------------------------- completion */

static void opener_release(sb_upstream_req *req, sb_reason fail, const char *detail);
static void waiter_remove(sb_upstream_req *req);

/* Records the outcome of |req| and schedules its callback from the loop. |reason| NONE
 * means the response in req->resp_* is complete. */
static void req_complete(sb_upstream_req *req, sb_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void req_complete(sb_upstream_req *req, sb_reason reason, const char *fmt, ...)
{
    if (req->phase == REQ_WAITING)
        waiter_remove(req);
    req->res.reason = reason;
    req->res.detail[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(req->res.detail, sizeof(req->res.detail), fmt, ap);
        va_end(ap);
    }
    req->res.duration_us = sb_now_mono_us() - req->start_us;
    req->phase = REQ_DONE;
    req->conn = NULL;
    if (req->ai) {
        evutil_freeaddrinfo(req->ai);
        req->ai = req->ai_next = NULL;
    }
    event_del(&req->timer);
    event_active(&req->timer, EV_TIMEOUT, 1);
    /* Requests waiting for the connection this one was opening share its fate. */
    if (req->opener)
        opener_release(req, reason, req->res.detail);
}

static void req_unlink(sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    if (req->prev)
        req->prev->next = req->next;
    else
        p->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static void req_free(sb_upstream_req *req)
{
    event_del(&req->timer);
    event_del(&req->notify);
    if (req->ai)
        evutil_freeaddrinfo(req->ai);
    if (req->body)
        evbuffer_free(req->body);
    if (req->resp_body)
        evbuffer_free(req->resp_body);
    sb_headers_clear(&req->resp_headers);
    sb_free(req->spec);
    sb_free(req);
}

/* Runs on_head. Returns 1 when the callback canceled (and so freed) |req|. */
static int stream_call_head(sb_upstream_req *req)
{
    req->in_stream_cb = 1;
    int r = req->on_head(req->res.status, &req->resp_headers, req->arg);
    req->in_stream_cb = 0;
    if (req->cancel_pending) {
        req_cancel_now(req);
        return 1;
    }
    req->sstate = r == 1 ? SS_STREAM : SS_BUFFER;
    return 0;
}

static void req_deliver(sb_upstream_req *req)
{
    sb_upstream_result *r = &req->res;
    sb_upstream_pool *p = req->pool;
    r->headers = &req->resp_headers;
    if (r->reason == SB_REASON_NONE) {
        /* The whole answer arrived before on_head could run: it still decides. */
        if (req->sstate == SS_HEAD_PENDING && stream_call_head(req))
            return;
        if (req->sstate == SS_BUFFER && req->resp_body &&
            evbuffer_get_length(req->resp_body) > p->max_response_bytes) {
            r->reason = SB_REASON_INVALID_RESPONSE;
            snprintf(r->detail, sizeof(r->detail),
                     "%s: invalid HTTP response: body over the response size limit",
                     req->last_peer);
        }
    }
    r->streamed = req->sstate == SS_STREAM;
    if (r->reason == SB_REASON_NONE) {
        if (req->resp_body == NULL)
            req->resp_body = evbuffer_new();
        r->body = req->resp_body;
    } else {
        r->status = 0;
        r->http_version = 0;
        r->body = NULL;
        sb_headers_clear(&req->resp_headers);
    }
    req_unlink(req);
    req->in_cb = 1;
    req->cb(r, req->arg);
    req_free(req);
}

/* ---------------------------------------------------------------- origins */

/* "http://host:port" ("[v6]" bracketed) into |out| (ORIGIN_MAX bytes); the host length
 * was checked against HOST_MAX by the caller. */
static void origin_key(char *out, const sb_url *url)
{
    char *p = out;
    int v6 = strchr(url->host, ':') != NULL;
    size_t hlen = strlen(url->host);
    const char *scheme = url->https ? "https://" : "http://";
    size_t slen = strlen(scheme);
    memcpy(p, scheme, slen);
    p += slen;
    if (v6)
        *p++ = '[';
    memcpy(p, url->host, hlen);
    p += hlen;
    if (v6)
        *p++ = ']';
    *p++ = ':';
    p += format_u64((uint64_t)url->port, p);
    *p = '\0';
}

static up_origin *origin_get(sb_upstream_pool *p, const char *key, int create)
{
    up_origin *o = sb_strmap_get(p->origins, key);
    if (o || !create)
        return o;
    o = sb_calloc(1, sizeof(*o));
    o->key = sb_strdup(key);
    o->https = strncmp(key, "https://", 8) == 0;
    sb_strmap_put(p->origins, key, o);
    return o;
}

static void origin_unref(sb_upstream_pool *p, up_origin *o)
{
    if (--o->refs > 0)
        return;
    sb_strmap_remove(p->origins, o->key);
    sb_free(o->key);
    sb_free(o);
}

/* A session of |o| that takes a new stream now, oldest first (so extra sessions drain
 * and go idle), or NULL. */
static up_conn *origin_h2_pick(up_origin *o)
{
    for (up_conn *c = o->h2; c; c = c->h2_next)
        if (c->state == CONN_H2 && !c->killed && sb_h2c_can_submit(c->h2))
            return c;
    return NULL;
}

/* 1 while a session of |o| has not heard the agent's SETTINGS yet: its stream limit
 * is unknown, so waiters wait for it rather than open another connection. */
static int origin_h2_warming(const up_origin *o)
{
    for (const up_conn *c = o->h2; c; c = c->h2_next)
        if (c->state == CONN_H2 && !c->killed && !sb_h2c_settled(c->h2))
            return 1;
    return 0;
}

/* 1 when |o| may get one more connection for HTTP/2 now. */
static int origin_may_open_h2(const up_origin *o)
{
    return o->n_pending_h2 == 0 && o->n_h2 < SB_UPSTREAM_H2_MAX_SESSIONS && !origin_h2_warming(o);
}

static void waiter_add(up_origin *o, sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    req->phase = REQ_WAITING;
    req->wait_origin = o;
    o->refs++;
    req->wait_next = NULL;
    req->wait_prev = o->wait_tail;
    if (o->wait_tail)
        o->wait_tail->wait_next = req;
    else
        o->wait_head = req;
    o->wait_tail = req;
    event_del(&req->timer);
    event_add(&req->timer, p->tv_connect);
}

/* Takes |req| off its origin's queue; its phase and timer are the caller's to set. */
static void waiter_remove(sb_upstream_req *req)
{
    up_origin *o = req->wait_origin;
    if (o == NULL)
        return;
    if (req->wait_prev)
        req->wait_prev->wait_next = req->wait_next;
    else
        o->wait_head = req->wait_next;
    if (req->wait_next)
        req->wait_next->wait_prev = req->wait_prev;
    else
        o->wait_tail = req->wait_prev;
    req->wait_prev = req->wait_next = NULL;
    req->wait_origin = NULL;
    req->phase = REQ_NEW;
    origin_unref(req->pool, o);
}

static void opener_claim(sb_upstream_req *req, up_origin *o)
{
    req->opener = o;
    o->refs++;
    o->n_pending_h2++;
}

/* The connection |req| was opening for its origin is settled: it became a session or
 * HTTP/1.1 (|fail| NONE), or it failed with |fail|. Waiters fail the same way when
 * nothing else of the origin can serve them; otherwise they are dispatched. */
static void opener_release(sb_upstream_req *req, sb_reason fail, const char *detail)
{
    up_origin *o = req->opener;
    if (o == NULL)
        return;
    sb_upstream_pool *p = req->pool;
    req->opener = NULL;
    o->n_pending_h2--;
    if (fail != SB_REASON_NONE && o->n_h2 == 0 && o->n_pending_h2 == 0) {
        char copy[sizeof(req->res.detail)];
        snprintf(copy, sizeof(copy), "%s", detail ? detail : "");
        while (o->wait_head) {
            sb_upstream_req *w = o->wait_head;
            waiter_remove(w);
            req_complete(w, fail, "%s", copy);
        }
    } else {
        origin_dispatch(o);
    }
    origin_unref(p, o);
}

/* HTTP/1.1: the most recently used idle connection of the origin (LIFO: the least
 * likely to be stale), or a new one. */
static void route_h1(sb_upstream_req *req)
{
    up_origin *o = origin_get(req->pool, req->origin, 0);
    if (o && o->idle) {
        up_conn *c = o->idle;
        idle_unlink(c);
        conn_send(c, req);
        return;
    }
    req_start_resolve(req);
}

/* Chooses how |req| goes out (see the file comment): a session with a free stream, the
 * queue, an idle HTTP/1.1 connection, or a new connection. */
static void req_route(sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    if (req->want == WANT_H1) {
        route_h1(req);
        return;
    }
    up_origin *o = origin_get(p, req->origin, 1);
    up_conn *c = origin_h2_pick(o);
    if (c) {
        h2_start(c, req);
        return;
    }
    if (req->want == WANT_ALPN && o->alpn_h1 && o->n_pending_h2 == 0) {
        /* The agent answered ALPN with http/1.1 last time: no reason to wait for another
         * request's handshake. New connections still offer h2, in case it changed. */
        route_h1(req);
        return;
    }
    if (!origin_may_open_h2(o)) {
        waiter_add(o, req);
        return;
    }
    opener_claim(req, o);
    req_start_resolve(req);
}

/* Serves the origin's queue as far as it can now: streams on sessions with room,
 * HTTP/1.1 for an origin that chose it, or one new connection when none is on its way. */
static void origin_dispatch(up_origin *o)
{
    if (o->wait_head == NULL)
        return;
    sb_upstream_pool *p = o->wait_head->pool;
    if (p->freeing)
        return;
    o->refs++; /* waiter_remove must not free |o| under this loop */
    while (o->wait_head) {
        sb_upstream_req *req = o->wait_head;
        up_conn *c = origin_h2_pick(o);
        if (c) {
            waiter_remove(req);
            h2_start(c, req);
            continue;
        }
        if (req->want == WANT_ALPN && o->alpn_h1 && o->n_pending_h2 == 0) {
            waiter_remove(req);
            route_h1(req);
            continue;
        }
        if (origin_may_open_h2(o)) {
            waiter_remove(req);
            opener_claim(req, o);
            req_start_resolve(req);
            continue;
        }
        break;
    }
    origin_unref(p, o);
}

/* ---------------------------------------------------------------- idle bookkeeping */

static void sweep_arm(sb_upstream_pool *p);

static void lru_add(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->in_lru)
        return;
    c->in_lru = 1;
    c->idle_since_us = sb_now_mono_us();
    c->lru_next = NULL;
    c->lru_prev = p->lru_tail;
    if (p->lru_tail)
        p->lru_tail->lru_next = c;
    else
        p->lru_head = c;
    p->lru_tail = c;
    p->n_idle++;
    sweep_arm(p);
}

static void lru_del(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (!c->in_lru)
        return;
    if (c->lru_prev)
        c->lru_prev->lru_next = c->lru_next;
    else
        p->lru_head = c->lru_next;
    if (c->lru_next)
        c->lru_next->lru_prev = c->lru_prev;
    else
        p->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
    c->in_lru = 0;
    p->n_idle--;
}

/* Takes an idle HTTP/1.1 connection off its origin's stack and the pool's idle list. */
static void idle_unlink(up_conn *c)
{
    up_origin *o = c->origin;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        o->idle = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    o->n_idle--;
    lru_del(c);
}

static void h2_link(up_conn *c)
{
    up_origin *o = c->origin;
    c->h2_linked = 1;
    c->h2_prev = NULL;
    c->h2_next = o->h2;
    if (o->h2)
        o->h2->h2_prev = c;
    o->h2 = c;
    o->n_h2++;
    c->pool->n_h2++;
}

static void h2_unlink(up_conn *c)
{
    up_origin *o = c->origin;
    if (!c->h2_linked)
        return;
    if (c->h2_prev)
        c->h2_prev->h2_next = c->h2_next;
    else
        o->h2 = c->h2_next;
    if (c->h2_next)
        c->h2_next->h2_prev = c->h2_prev;
    c->h2_prev = c->h2_next = NULL;
    c->h2_linked = 0;
    o->n_h2--;
    c->pool->n_h2--;
}

static void sweep_arm(sb_upstream_pool *p)
{
    if (p->lru_head == NULL || event_pending(p->sweep_ev, EV_TIMEOUT, NULL))
        return;
    uint64_t now = sb_now_mono_us();
    uint64_t due = p->lru_head->idle_since_us + (uint64_t)p->idle_timeout_ms * 1000;
    uint64_t wait = due > now ? due - now : 0;
    /* A little slack batches connections that went idle close together. */
    wait += 100000;
    struct timeval tv = {(time_t)(wait / 1000000), (suseconds_t)(wait % 1000000)};
    event_add(p->sweep_ev, &tv);
}

/* An idle session says GOAWAY and closes once that is written (or after a grace). */
static void conn_h2_close_idle(up_conn *c)
{
    lru_del(c);
    h2_unlink(c);
    sb_h2c_shutdown(c->h2);
    sb_h2c_flush(c->h2);
    if (c->bev == NULL || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        conn_close(c);
        return;
    }
    c->state = CONN_CLOSING;
    struct timeval tv = {CLOSING_GRACE_MS / 1000, (CLOSING_GRACE_MS % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    uint64_t now = sb_now_mono_us();
    uint64_t limit = (uint64_t)p->idle_timeout_ms * 1000;
    while (p->lru_head && now - p->lru_head->idle_since_us >= limit) {
        up_conn *c = p->lru_head;
        if (c->state == CONN_H2)
            conn_h2_close_idle(c);
        else
            conn_close(c);
    }
    sweep_arm(p);
}

/* Parks an HTTP/1.1 connection that finished a response cleanly, or closes it when the
 * origin already keeps enough idle ones. */
static void conn_make_idle(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    up_origin *o = c->origin;
    if (o->n_idle >= p->max_idle_per_origin) {
        conn_close(c);
        return;
    }
    c->state = CONN_IDLE;
    c->req = NULL;
    c->idle_prev = NULL;
    c->idle_next = o->idle;
    if (o->idle)
        o->idle->idle_prev = c;
    o->idle = c;
    o->n_idle++;
    /* An idle connection keeps reading (a byte or EOF closes it), even when a paused
     * stream had stopped it. */
    bufferevent_enable(c->bev, EV_READ);
    lru_add(c);
}

/* ---------------------------------------------------------------- connections */

static void conn_readcb(struct bufferevent *bev, void *arg);
static void conn_writecb(struct bufferevent *bev, void *arg);
static void conn_eventcb(struct bufferevent *bev, short what, void *arg);

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    while (p->dead) {
        up_conn *c = p->dead;
        p->dead = c->all_next;
        origin_unref(p, c->origin);
        sb_free(c->hbuf);
        sb_free(c);
    }
}

static void kill_unlist(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    for (up_conn **pp = &p->kill; *pp; pp = &(*pp)->kill_next) {
        if (*pp == c) {
            *pp = c->kill_next;
            break;
        }
    }
    c->kill_next = NULL;
}

/* Closes |c| at once (socket closed, detached from pool, origin and request, its HTTP/2
 * session freed); its memory goes later, from the reaper, so a caller up the stack may
 * still hold the pointer. The caller deals with c->req before. Never called while the
 * session of |c| is on the stack (conn_h2_kill defers that case). */
static void conn_close(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->state == CONN_DEAD)
        return;
    if (c->state == CONN_IDLE)
        idle_unlink(c);
    lru_del(c);
    h2_unlink(c);
    if (c->killed)
        kill_unlist(c);
    if (c->state == CONN_CONNECTING) {
        event_del(&c->connect_ev);
        evutil_closesocket(c->fd);
    }
    c->fd = -1;
    c->state = CONN_DEAD;
    c->req = NULL;
    if (c->h2) {
        sb_h2c_free(c->h2);
        c->h2 = NULL;
    }
    if (c->bev) {
        bufferevent_free(c->bev); /* allowed from within its own callbacks */
        c->bev = NULL;
    }
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        p->conns = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    c->all_prev = NULL;
    c->all_next = p->dead;
    p->dead = c;
    event_active(p->reap_ev, EV_TIMEOUT, 1);
}

/* The session of |c| is over or must end (EOF, error, protocol violation). Reports what
 * is still open on it, detaches it from its origin now (no new stream goes there) and
 * closes it from the kill event, where no call into the session is on the stack. */
static void conn_h2_kill(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->killed || c->state != CONN_H2)
        return;
    c->killed = 1;
    h2_unlink(c);
    lru_del(c);
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    if (!sb_h2c_dead(c->h2))
        sb_h2c_fail_all(c->h2, SB_H2C_END_CLOSED, "the HTTP/2 connection was closed");
    c->kill_next = p->kill;
    p->kill = c;
    event_active(p->kill_ev, EV_TIMEOUT, 1);
}

static void kill_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    while (p->kill) {
        up_conn *c = p->kill;
        up_origin *o = c->origin;
        o->refs++;
        conn_close(c); /* takes |c| off the kill list */
        origin_dispatch(o);
        origin_unref(p, o);
    }
}

static void conn_connect_cb(evutil_socket_t fd, short what, void *arg);

/* A connection for |fd|, whose non-blocking connect is under way. */
static up_conn *conn_new(sb_upstream_pool *p, up_origin *o, evutil_socket_t fd)
{
    up_conn *c = sb_calloc(1, sizeof(*c));
    c->pool = p;
    c->origin = o;
    o->refs++;
    c->fd = fd;
    c->state = CONN_CONNECTING;
    event_assign(&c->connect_ev, p->base, fd, EV_WRITE, conn_connect_cb, c);
    event_add(&c->connect_ev, NULL);
    c->all_next = p->conns;
    if (p->conns)
        p->conns->all_prev = c;
    p->conns = c;
    return c;
}

/* ---------------------------------------------------------------- streaming */

/* Reads the agent only while the caller keeps up: an HTTP/1.1 stream stops reading the
 * socket while paused or while SB_UPSTREAM_STREAM_HIGH bytes wait (HTTP/2 streams are
 * held back through their flow-control window instead). The inactivity deadline does
 * not run while paused. */
static void stream_flow(sb_upstream_req *req)
{
    if (req->phase != REQ_SENT || req->conn == NULL)
        return;
    if (req->sstate != SS_STREAM && req->sstate != SS_HEAD_PENDING)
        return;
    up_conn *c = req->conn;
    size_t waiting = req->resp_body ? evbuffer_get_length(req->resp_body) : 0;
    int hold = waiting >= SB_UPSTREAM_STREAM_HIGH || (req->sstate == SS_STREAM && req->paused);
    if (c->state == CONN_ACTIVE && c->bev) {
        if (hold && !req->read_held) {
            bufferevent_disable(c->bev, EV_READ);
            req->read_held = 1;
        } else if (!hold && req->read_held) {
            bufferevent_enable(c->bev, EV_READ);
            req->read_held = 0;
        }
    }
    if (req->sstate == SS_STREAM) {
        if (req->paused)
            event_del(&req->timer);
        else if (!event_pending(&req->timer, EV_TIMEOUT, NULL))
            req_arm_response(req);
    }
}

/* The final head arrived for a request with on_head: on_head runs from the loop. */
static void stream_head_arrived(sb_upstream_req *req)
{
    if (req->on_head == NULL || req->sstate != SS_UNDECIDED)
        return;
    req->sstate = SS_HEAD_PENDING;
    event_active(&req->notify, EV_TIMEOUT, 1);
}

/* Body bytes arrived for a streamed answer: restart the inactivity deadline and hand
 * them over from the loop. */
static void stream_data_arrived(sb_upstream_req *req)
{
    if (req->sstate == SS_STREAM && !req->paused) {
        req_arm_response(req);
        event_active(&req->notify, EV_TIMEOUT, 1);
    }
    stream_flow(req);
}

static void h2_after_change(up_conn *c)
{
    if (c->state != CONN_H2 || c->killed)
        return;
    if (sb_h2c_flush(c->h2) < 0)
        conn_h2_kill(c);
    else
        conn_h2_after(c);
}

/* on_head chose to buffer: the size limit applies from now, and HTTP/2 gives back the
 * window it held. */
static void stream_now_buffered(sb_upstream_req *req)
{
    up_conn *c = req->conn;
    if (req->phase != REQ_SENT || c == NULL)
        return;
    sb_upstream_pool *p = req->pool;
    size_t len = req->resp_body ? evbuffer_get_length(req->resp_body) : 0;
    if (c->state == CONN_H2) {
        if (len > p->max_response_bytes) {
            sb_h2c_reset_stream(&req->h2st, NGHTTP2_CANCEL);
            req_complete(req, SB_REASON_INVALID_RESPONSE,
                         "%s: invalid HTTP/2 response: body over the response size limit", c->peer);
        } else {
            sb_h2c_consume(&req->h2st, req->h2st.unconsumed);
        }
        h2_after_change(c);
        return;
    }
    if (len > p->max_response_bytes) {
        conn_fail_active(c, SB_REASON_INVALID_RESPONSE,
                         "invalid HTTP response: body over the response size limit");
        return;
    }
    if (req->read_held && c->bev) {
        bufferevent_enable(c->bev, EV_READ);
        req->read_held = 0;
    }
}

/* The notify event: on_head once, then on_data while bytes wait and the caller has not
 * paused. Nothing of ours is on the stack, so the callbacks may do anything. */
static void req_notify_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_req *req = arg;
    if (req->phase == REQ_DONE)
        return; /* req_deliver hands over what is left */
    if (req->sstate == SS_HEAD_PENDING) {
        if (stream_call_head(req))
            return;
        if (req->sstate == SS_BUFFER) {
            stream_now_buffered(req);
            return;
        }
        if (req->phase == REQ_SENT && !req->paused)
            req_arm_response(req);
    }
    if (req->sstate != SS_STREAM)
        return;
    size_t before = req->resp_body ? evbuffer_get_length(req->resp_body) : 0;
    if (!req->paused && before > 0) {
        req->in_stream_cb = 1;
        req->on_data(req->resp_body, req->arg);
        req->in_stream_cb = 0;
        if (req->cancel_pending) {
            req_cancel_now(req);
            return;
        }
        size_t after = evbuffer_get_length(req->resp_body);
        size_t used = before > after ? before - after : 0;
        up_conn *c = req->conn;
        if (used > 0 && req->phase == REQ_SENT && c && c->state == CONN_H2) {
            sb_h2c_consume(&req->h2st, used);
            h2_after_change(c);
        }
    }
    stream_flow(req);
}

/* ---------------------------------------------------------------- response parser */

static void hbuf_append(up_conn *c, const char *at, size_t len)
{
    size_t need = c->hname + c->hval + len;
    if (need > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 256;
        while (cap < need)
            cap *= 2;
        c->hbuf = sb_realloc(c->hbuf, cap);
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hname + c->hval, at, len);
}

static void header_commit(up_conn *c)
{
    if (c->hstate == HDR_VALUE || c->hstate == HDR_FIELD)
        sb_headers_addn(&c->req->resp_headers, c->hbuf, c->hname, c->hbuf + c->hname, c->hval);
    c->hstate = HDR_NONE;
    c->hname = c->hval = 0;
}

static int on_message_begin(http_parser *hp)
{
    up_conn *c = hp->data;
    c->hstate = HDR_NONE;
    c->hname = c->hval = 0;
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    if (c->hstate == HDR_VALUE)
        header_commit(c);
    c->hstate = HDR_FIELD;
    hbuf_append(c, at, len);
    c->hname += len;
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    c->hstate = HDR_VALUE;
    hbuf_append(c, at, len);
    c->hval += len;
    return 0;
}

/* The size limit applies to bodies that are buffered whole. */
static int body_limited(const sb_upstream_req *req)
{
    return req->sstate == SS_NONE || req->sstate == SS_BUFFER;
}

static int on_headers_complete(http_parser *hp)
{
    up_conn *c = hp->data;
    sb_upstream_pool *p = c->pool;
    sb_upstream_req *req = c->req;
    header_commit(c);
    if (hp->status_code == 101) {
        c->err = "unexpected 101 Switching Protocols";
        return -1;
    }
    if (hp->status_code / 100 == 1)
        return 1; /* interim response: no body, the real one follows */
    if (hp->status_code < 100 || hp->status_code > 999) {
        c->err = "status code out of range";
        return -1;
    }
    if (body_limited(req) && hp->content_length != ULLONG_MAX &&
        hp->content_length > p->max_response_bytes) {
        c->err = "body over the response size limit";
        return -1;
    }
    if (req->resp_body == NULL)
        req->resp_body = evbuffer_new();
    req->res.status = hp->status_code;
    req->res.http_version = hp->http_major * 10 + hp->http_minor;
    stream_head_arrived(req);
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    struct evbuffer *b = c->req->resp_body;
    if (body_limited(c->req) && evbuffer_get_length(b) + len > c->pool->max_response_bytes) {
        c->err = "body over the response size limit";
        return -1;
    }
    evbuffer_add(b, at, len);
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    up_conn *c = hp->data;
    if (hp->status_code / 100 == 1) {
        /* Headers of an interim response are not the answer's. */
        sb_headers_clear(&c->req->resp_headers);
        return 0;
    }
    c->msg_done = 1;
    c->keepalive = http_should_keep_alive(hp);
    http_parser_pause(hp, 1); /* stop at the end of this response */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------------------------------------------------------------- HTTP/1.1 request flow */

/* Appends a copy of |src| to |dst|, leaving |src| as it is. */
static void copy_buffer(struct evbuffer *dst, struct evbuffer *src)
{
    struct evbuffer_ptr pos;
    struct evbuffer_iovec v[8];
    evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
    size_t left = evbuffer_get_length(src);
    while (left > 0) {
        int n = evbuffer_peek(src, (ev_ssize_t)left, &pos, v, (int)SB_ARRAY_LEN(v));
        if (n > (int)SB_ARRAY_LEN(v))
            n = (int)SB_ARRAY_LEN(v);
        size_t step = 0;
        for (int i = 0; i < n; i++) {
            size_t len = v[i].iov_len < left - step ? v[i].iov_len : left - step;
            evbuffer_add(dst, v[i].iov_base, len);
            step += len;
        }
        left -= step;
        if (left == 0 || evbuffer_ptr_set(src, &pos, step, EVBUFFER_PTR_ADD) != 0)
            break;
    }
}

static void conn_send(up_conn *c, sb_upstream_req *req)
{
    struct evbuffer *output = bufferevent_get_output(c->bev);
    c->state = CONN_ACTIVE;
    c->req = req;
    c->reused = c->served > 0;
    c->rx_bytes = 0;
    c->msg_done = 0;
    c->keepalive = 0;
    c->err = NULL;
    c->hstate = HDR_NONE;
    c->hname = c->hval = 0;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;

    req->conn = c;
    req->phase = REQ_SENT;
    req->read_held = 0;
    memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
    h1_write_head(output, req);
    /* On a reused connection the body stays in req->body for a possible retry. */
    if (req->body && evbuffer_get_length(req->body) > 0) {
        if (c->reused && !req->retried) {
            if (evbuffer_add_buffer_reference(output, req->body) != 0)
                copy_buffer(output, req->body);
        } else {
            evbuffer_add_buffer(output, req->body);
        }
    }
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    req_arm_response(req);
}

/* A connection carrying |req| failed before the response completed. Retries once when a
 * reused connection died before any response byte; otherwise completes with |reason|.
 * Closes |c| either way. */
static void conn_fail_active(up_conn *c, sb_reason reason, const char *what)
{
    sb_upstream_req *req = c->req;
    int retry =
        reason == SB_REASON_CONNECTION_RESET && c->reused && c->rx_bytes == 0 && !req->retried;
    uint64_t rx = c->rx_bytes;
    char peer[PEER_MAX];
    snprintf(peer, sizeof(peer), "%s", c->peer);
    c->req = NULL;
    req->conn = NULL;
    req->read_held = 0;
    conn_close(c);
    if (retry) {
        req->retried = 1;
        req_start_resolve(req);
        return;
    }
    if (reason == SB_REASON_CONNECTION_RESET)
        req_complete(req, reason, "%s: %s after %llu response bytes", peer, what,
                     (unsigned long long)rx);
    else
        req_complete(req, reason, "%s: %s", peer, what);
}

static void conn_response_done(up_conn *c)
{
    sb_upstream_req *req = c->req;
    int reusable = c->keepalive && c->bev &&
                   evbuffer_get_length(bufferevent_get_input(c->bev)) == 0 &&
                   evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
    req->res.status = c->parser.status_code;
    req->res.http_version = c->parser.http_major * 10 + c->parser.http_minor;
    req->res.reused = (int)c->reused;
    c->served++;
    c->req = NULL;
    req->conn = NULL;
    req->read_held = 0;
    if (reusable)
        conn_make_idle(c);
    else
        conn_close(c);
    req_complete(req, SB_REASON_NONE, NULL);
}

/* Feeds the input buffer to the parser. Returns 1 when the response is complete, -1 on
 * a parse error (c->err or the parser's errno says why), 0 when more bytes are needed. */
static int conn_parse(up_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[16];
    while (evbuffer_get_length(in) > 0) {
        int n = evbuffer_peek(in, -1, NULL, v, (int)SB_ARRAY_LEN(v));
        if (n > (int)SB_ARRAY_LEN(v))
            n = (int)SB_ARRAY_LEN(v);
        size_t consumed = 0;
        int stop = 0;
        for (int i = 0; i < n && !stop; i++) {
            size_t got =
                http_parser_execute(&c->parser, &parser_settings, v[i].iov_base, v[i].iov_len);
            consumed += got;
            enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
            if (e != HPE_OK || got != v[i].iov_len)
                stop = 1;
        }
        evbuffer_drain(in, consumed);
        if (c->msg_done)
            return 1;
        if (stop)
            return -1;
    }
    return 0;
}

static void conn_fail_parse(up_conn *c)
{
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    char what[160];
    if (c->err)
        snprintf(what, sizeof(what), "invalid HTTP response: %s", c->err);
    else
        snprintf(what, sizeof(what), "invalid HTTP response: %s", http_errno_description(e));
    conn_fail_active(c, SB_REASON_INVALID_RESPONSE, what);
}

static void conn_readcb(struct bufferevent *bev, void *arg)
{
    up_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    switch (c->state) {
    case CONN_IDLE:
        /* Bytes on an idle connection: the agent is confused, never reuse it. */
        conn_close(c);
        return;
    case CONN_H2:
        if (c->killed)
            return;
        if (sb_h2c_read(c->h2) < 0)
            conn_h2_kill(c);
        else
            conn_h2_after(c);
        return;
    case CONN_CLOSING:
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    case CONN_ACTIVE:
        break;
    default:
        return; /* nothing is read before the handshake ends */
    }
    sb_upstream_req *req = c->req;
    c->rx_bytes += evbuffer_get_length(in);
    size_t had = req->resp_body ? evbuffer_get_length(req->resp_body) : 0;
    int r = conn_parse(c, in);
    if (r > 0) {
        conn_response_done(c);
    } else if (r < 0) {
        conn_fail_parse(c);
    } else if (req->resp_body && evbuffer_get_length(req->resp_body) > had) {
        stream_data_arrived(req);
    }
}

static void conn_writecb(struct bufferevent *bev, void *arg)
{
    up_conn *c = arg;
    if (c->state == CONN_H2 && !c->killed) {
        /* The output drained below the mark: serialize what nghttp2 holds back. */
        h2_after_change(c);
    } else if (c->state == CONN_CLOSING && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        conn_close(c);
    }
}

/* ---------------------------------------------------------------- HTTP/2 */

static sb_upstream_req *req_of_stream(sb_h2c_stream *st)
{
    return (sb_upstream_req *)(void *)((char *)st - offsetof(sb_upstream_req, h2st));
}

/* Sends |req| again from the loop (a stream the agent did not process, or a stale
 * session): the response state starts over. */
static void req_retry(sb_upstream_req *req)
{
    req->retried = 1;
    req->conn = NULL;
    req->phase = REQ_RETRY;
    req->res.status = 0;
    req->res.http_version = 0;
    sb_headers_clear(&req->resp_headers);
    drain_all(req->resp_body);
    if (req->on_head)
        req->sstate = SS_UNDECIDED;
    event_del(&req->notify);
    event_del(&req->timer);
    event_active(&req->timer, EV_TIMEOUT, 1);
}

/* Reports for the streams of a session, outside nghttp2 (see upstream_h2.h). Must not
 * close the connection: conn_h2_after and conn_h2_kill do that from the callers. */
static void h2_on_event(sb_h2c_stream *st, unsigned ev, void *owner)
{
    up_conn *c = owner;
    sb_upstream_req *req = req_of_stream(st);
    sb_upstream_pool *p = c->pool;
    if (ev & SB_H2C_EV_HEAD) {
        req->res.status = st->status;
        req->res.http_version = 20;
        stream_head_arrived(req);
    }
    if ((ev & SB_H2C_EV_DATA) && st->session) {
        size_t len = evbuffer_get_length(req->resp_body);
        if (body_limited(req)) {
            if (len > p->max_response_bytes) {
                sb_h2c_reset_stream(st, NGHTTP2_CANCEL);
                req_complete(req, SB_REASON_INVALID_RESPONSE,
                             "%s: invalid HTTP/2 response: body over the response size limit",
                             c->peer);
                return;
            }
            sb_h2c_consume(st, st->unconsumed);
        } else {
            stream_data_arrived(req);
        }
    }
    if (!(ev & SB_H2C_EV_END))
        return;
    uint64_t rx = st->rx_bytes;
    switch (st->end) {
    case SB_H2C_END_COMPLETE:
        if (body_limited(req) && evbuffer_get_length(req->resp_body) > p->max_response_bytes) {
            req_complete(req, SB_REASON_INVALID_RESPONSE,
                         "%s: invalid HTTP/2 response: body over the response size limit", c->peer);
            return;
        }
        req_complete(req, SB_REASON_NONE, NULL);
        return;
    case SB_H2C_END_REFUSED:
        if (!req->retried && rx == 0) {
            req_retry(req);
            return;
        }
        req_complete(req, SB_REASON_CONNECTION_RESET, "%s: HTTP/2 stream not processed (%s)%s",
                     c->peer, st->why ? st->why : "REFUSED_STREAM",
                     req->retried ? ", also after a retry" : "");
        return;
    case SB_H2C_END_RESET:
        req_complete(req, SB_REASON_CONNECTION_RESET,
                     "%s: stream reset by the agent (RST_STREAM %s) after %llu response bytes",
                     c->peer, nghttp2_http2_strerror(st->error_code), (unsigned long long)rx);
        return;
    case SB_H2C_END_INVALID:
        req_complete(req, SB_REASON_INVALID_RESPONSE, "%s: invalid HTTP/2 response: %s", c->peer,
                     st->why ? st->why : "protocol error");
        return;
    case SB_H2C_END_CLOSED:
    case SB_H2C_END_NONE:
        /* A session that carried earlier requests and died before answering this one is
         * the HTTP/2 form of the stale keep-alive race. */
        if (rx == 0 && req->res.reused && !req->retried) {
            req_retry(req);
            return;
        }
        req_complete(req, SB_REASON_CONNECTION_RESET, "%s: %s after %llu response bytes", c->peer,
                     st->why ? st->why : "the HTTP/2 connection ended", (unsigned long long)rx);
        return;
    }
}

/* Puts |req| on a new stream of the session |c| and writes it out. */
static void h2_start(up_conn *c, sb_upstream_req *req)
{
    memset(&req->h2st, 0, sizeof(req->h2st));
    if (req->resp_body == NULL)
        req->resp_body = evbuffer_new();
    req->h2st.headers = &req->resp_headers;
    req->h2st.data = req->resp_body;
    sb_h2c_request rq = {
        .method = req->method,
        .scheme = req->https ? "https" : "http",
        .authority = req->authority,
        .path = req->path,
        .headers = req->hdrs,
        .n_headers = req->n_hdrs,
        .content_length = req_content_length(req),
        .body = req->body,
    };
    memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
    if (sb_h2c_submit(c->h2, &req->h2st, &rq) < 0) {
        req->conn = NULL;
        req_complete(req, SB_REASON_CONNECTION_RESET, "%s: the HTTP/2 session took no new stream",
                     c->peer);
        return;
    }
    req->conn = c;
    req->phase = REQ_SENT;
    req->res.reused = c->served > 0;
    c->served++;
    lru_del(c);
    req_arm_response(req);
    if (sb_h2c_flush(c->h2) < 0)
        conn_h2_kill(c);
}

/* After the session of |c| did something (read, wrote, a stream ended or started):
 * serve the origin's queue, and track whether the session is idle. */
static void conn_h2_after(up_conn *c)
{
    if (c->state != CONN_H2 || c->killed)
        return;
    if (sb_h2c_dead(c->h2)) {
        conn_h2_kill(c);
        return;
    }
    up_origin *o = c->origin;
    if (o->wait_head && sb_h2c_can_submit(c->h2))
        origin_dispatch(o);
    if (c->state != CONN_H2 || c->killed)
        return;
    if (sb_h2c_open_streams(c->h2) == 0)
        lru_add(c);
    else
        lru_del(c);
}

/* The connection |c| that |req| was setting up speaks HTTP/2 (h2c prior knowledge, or
 * ALPN h2): it becomes a session of its origin, |req| its first stream, and the waiters
 * get theirs. */
static void conn_become_h2(up_conn *c, sb_upstream_req *req)
{
    up_origin *o = c->origin;
    c->state = CONN_H2;
    c->req = NULL;
    req->conn = NULL;
    c->h2 = sb_h2c_new(c->bev, h2_on_event, c);
    bufferevent_setcb(c->bev, conn_readcb, conn_writecb, conn_eventcb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    h2_link(c);
    o->alpn_h1 = 0;
    o->refs++; /* h2_start may end |req| and with it the opener's reference */
    h2_start(c, req);
    opener_release(req, SB_REASON_NONE, NULL);
    conn_h2_after(c);
    origin_unref(c->pool, o);
}

/* ---------------------------------------------------------------- TLS */

/* The pool's client context, made on first use: system CA store plus tls_ca_file, TLS
 * 1.2 at least, peer verification on, ALPN http/1.1 (per connection h2 is added). NULL
 * with p->tls_ctx_err set when it cannot be made (every https push then fails with that
 * text). */
static SSL_CTX *tls_ctx_get(sb_upstream_pool *p)
{
    if (p->tls_ctx || p->tls_ctx_err[0])
        return p->tls_ctx;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(p->tls_ctx_err, sizeof(p->tls_ctx_err), "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle pooled connections stay small */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    /* The system store always; --upstream-ca adds a private CA next to it. A missing
     * system store is not an error (a container may only trust --upstream-ca). */
    SSL_CTX_set_default_verify_paths(ctx);
    ERR_clear_error();
    if (p->tls_ca_file && SSL_CTX_load_verify_locations(ctx, p->tls_ca_file, NULL) != 1) {
        char e[120];
        ERR_error_string_n(ERR_get_error(), e, sizeof(e));
        ERR_clear_error();
        snprintf(p->tls_ctx_err, sizeof(p->tls_ctx_err), "cannot load CA certificates from %s: %s",
                 p->tls_ca_file, e);
        SSL_CTX_free(ctx);
        return NULL;
    }
    p->tls_ctx = ctx;
    return ctx;
}

/* " (name)" after a peer address when the URL named the host, "" for IP literals. */
static const char *tls_name_note(const sb_upstream_req *req, char *buf, size_t len)
{
    if (req->literal)
        return "";
    snprintf(buf, len, " (%s)", req->host);
    return buf;
}

/* One line on why a handshake failed: the certificate verdict when verification failed,
 * else OpenSSL's reason, else the socket error or EOF. */
static void tls_failure_text(up_conn *c, short what, int err, char *out, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = bufferevent_get_openssl_error(c->bev);
    char ebuf[128];
    if (v != X509_V_OK) {
        snprintf(out, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    } else if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        snprintf(out, len, "%s", r ? r : "TLS error");
    } else if (what & BEV_EVENT_EOF) {
        snprintf(out, len, "connection closed by the peer");
    } else {
        snprintf(out, len, "%s", errno_text(err ? err : ECONNRESET, ebuf, sizeof(ebuf)));
    }
    while (bufferevent_get_openssl_error(c->bev) != 0)
        ;
    ERR_clear_error();
}

/* Gives up on |req|'s new connection |c| after a TLS failure: |c| closes and |req|
 * completes with "<stage> with <peer>[ (<name>)]: <why>". */
static void conn_fail_tls(up_conn *c, sb_upstream_req *req, const char *stage, const char *why)
{
    char peer[PEER_MAX], note[HOST_MAX + 4];
    memcpy(peer, c->peer, sizeof(peer)); /* c is dead (awaiting the reaper) after conn_close */
    c->req = NULL;
    req->conn = NULL;
    conn_close(c);
    req_complete(req, SB_REASON_TLS_ERROR, "%s with %s%s: %s", stage, peer,
                 tls_name_note(req, note, sizeof(note)), why);
}

/* One line on why an established connection failed (BEV_EVENT_ERROR |what|, socket
 * error |err|). A TLS record error leaves errno alone; OpenSSL has the reason then. */
static void conn_error_text(up_conn *c, short what, int err, char *out, size_t len)
{
    unsigned long tls_err = c->origin->https ? bufferevent_get_openssl_error(c->bev) : 0;
    const char *tls_why = tls_err ? ERR_reason_error_string(tls_err) : NULL;
    char ebuf[128];
    snprintf(out, len, "connection %s (%s)",
             (what & BEV_EVENT_WRITING) ? "failed while sending" : "reset",
             tls_err ? (tls_why ? tls_why : "TLS error")
                     : errno_text(err ? err : ECONNRESET, ebuf, sizeof(ebuf)));
    if (tls_err)
        ERR_clear_error();
}

/* Starts the TLS handshake on the connected c->fd: SNI and hostname verification for
 * names, IP-address verification for literals, ALPN as c->want says. Returns 0, or -1
 * with |why| set (c->fd is still c's then). */
static int conn_start_tls(up_conn *c, sb_upstream_req *req, char *why, size_t len)
{
    sb_upstream_pool *p = c->pool;
    SSL *ssl = SSL_new(p->tls_ctx);
    if (ssl == NULL) {
        snprintf(why, len, "cannot create a TLS session");
        return -1;
    }
    int ok;
    if (req->literal) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), req->host);
    } else {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set_tlsext_host_name(ssl, req->host) == 1 && SSL_set1_host(ssl, req->host) == 1;
    }
    if (ok == 1 && c->want == WANT_ALPN) {
        static const unsigned char alpn[] = "\x02h2\x08http/1.1";
        ok = SSL_set_alpn_protos(ssl, alpn, sizeof(alpn) - 1) == 0;
    }
    if (ok != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        snprintf(why, len, "cannot set the expected peer name");
        return -1;
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        p->base, c->fd, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        /* Only allocation fails here, and libevent's cleanup may already have closed the
         * socket and freed |ssl|: treat it like any out-of-memory (alloc.h). */
        fprintf(stderr, "switchboard: bufferevent_openssl_socket_new failed\n");
        abort();
    }
    /* EOF without close_notify is how many servers end a connection; the HTTP framing,
     * not the TLS alert, says whether the response was complete. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->bev = bev;
    c->fd = -1; /* the bufferevent owns it now */
    c->state = CONN_HANDSHAKE;
    bufferevent_setcb(bev, conn_readcb, conn_writecb, conn_eventcb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return 0;
}

/* 1 when the finished handshake of |c| chose HTTP/2. */
static int conn_alpn_h2(up_conn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    const unsigned char *proto = NULL;
    unsigned int len = 0;
    if (ssl)
        SSL_get0_alpn_selected(ssl, &proto, &len);
    return len == 2 && memcmp(proto, "h2", 2) == 0;
}

/* ---------------------------------------------------------------- connect */

static void req_connect_next(sb_upstream_req *req);

/* The socket of a CONN_CONNECTING connection became writable: the TCP connect ended. */
static void conn_connect_cb(evutil_socket_t fd, short what, void *arg)
{
    up_conn *c = arg;
    sb_upstream_req *req = c->req;
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == -1)
        err = errno;
    if (err != 0) {
        /* This address did not take it: try the next one, if any. */
        req->last_errno = err;
        memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
        c->req = NULL;
        req->conn = NULL;
        conn_close(c);
        req_connect_next(req);
        return;
    }
    if (req->ai) {
        evutil_freeaddrinfo(req->ai);
        req->ai = req->ai_next = NULL;
    }
    if (c->origin->https) {
        char why[120];
        if (conn_start_tls(c, req, why, sizeof(why)) != 0)
            conn_fail_tls(c, req, "TLS", why);
        return;
    }
    c->bev = bufferevent_socket_new(c->pool->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        fprintf(stderr, "switchboard: bufferevent_socket_new failed\n");
        abort();
    }
    c->fd = -1;
    bufferevent_setcb(c->bev, conn_readcb, conn_writecb, conn_eventcb, c);
    if (c->want == WANT_H2C) {
        conn_become_h2(c, req);
        return;
    }
    conn_send(c, req);
    opener_release(req, SB_REASON_NONE, NULL);
}

static void conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    up_conn *c = arg;
    int err = EVUTIL_SOCKET_ERROR();

    switch (c->state) {
    case CONN_CONNECTING:
        return; /* no bufferevent yet */
    case CONN_HANDSHAKE: {
        sb_upstream_req *req = c->req;
        if (what & BEV_EVENT_CONNECTED) {
            if (conn_alpn_h2(c)) {
                conn_become_h2(c, req);
                return;
            }
            if (c->want == WANT_ALPN)
                c->origin->alpn_h1 = 1;
            conn_send(c, req);
            opener_release(req, SB_REASON_NONE, NULL);
            return;
        }
        char why[200];
        tls_failure_text(c, what, err, why, sizeof(why));
        conn_fail_tls(c, req, "TLS handshake", why);
        return;
    }
    case CONN_ACTIVE:
        if (what & BEV_EVENT_EOF) {
            /* Read-until-close bodies end here; anything else is a cut-off answer. */
            http_parser_execute(&c->parser, &parser_settings, NULL, 0);
            if (c->msg_done) {
                c->keepalive = 0;
                conn_response_done(c);
            } else {
                conn_fail_active(c, SB_REASON_CONNECTION_RESET, "connection closed by the agent");
            }
        } else if (what & BEV_EVENT_ERROR) {
            char msg[192];
            conn_error_text(c, what, err, msg, sizeof(msg));
            conn_fail_active(c, SB_REASON_CONNECTION_RESET, msg);
        }
        return;
    case CONN_H2: {
        if (c->killed)
            return;
        /* Whatever the agent sent before closing (a GOAWAY, final frames) counts. */
        if ((what & BEV_EVENT_EOF) && evbuffer_get_length(bufferevent_get_input(bev)) > 0 &&
            sb_h2c_read(c->h2) < 0) {
            conn_h2_kill(c);
            return;
        }
        char msg[192];
        if (what & BEV_EVENT_EOF) {
            snprintf(msg, sizeof(msg), "connection closed by the agent");
        } else {
            conn_error_text(c, what, err, msg, sizeof(msg));
        }
        if (!sb_h2c_dead(c->h2))
            sb_h2c_fail_all(c->h2, SB_H2C_END_CLOSED, msg);
        conn_h2_kill(c);
        return;
    }
    case CONN_IDLE:
    case CONN_CLOSING:
        /* EOF, an error or the grace timeout: the agent closed it; forget it quietly. */
        conn_close(c);
        return;
    case CONN_DEAD:
        return;
    }
}

/* Tries the remaining resolved addresses in order, skipping forbidden ones. Completes
 * |req| when none is left. */
static void req_connect_next(sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    char ebuf[128];
    while (req->ai_next) {
        struct evutil_addrinfo *ai = req->ai_next;
        req->ai_next = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        struct sockaddr *sa = (struct sockaddr *)&ss;
        if (sa->sa_family == AF_INET)
            ((struct sockaddr_in *)(void *)sa)->sin_port = htons((uint16_t)req->port);
        else
            ((struct sockaddr_in6 *)(void *)sa)->sin6_port = htons((uint16_t)req->port);
        if (sb_addr_forbidden(sa, p->allow, p->n_allow))
            continue; /* never connect there, whatever else the name resolves to */

        char peer[PEER_MAX];
        format_peer(sa, peer, sizeof(peer));
        snprintf(req->last_peer, sizeof(req->last_peer), "%s", peer);
        req->n_tried++;
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1) {
            req->last_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, sa, (socklen_t)ai->ai_addrlen) == -1 && errno != EINPROGRESS) {
            req->last_errno = errno;
            close(fd);
            continue;
        }
        /* Connected or under way: writability tells the end (conn_connect_cb), even when
         * connect() succeeded at once, so the outcome always comes from the loop. */
        up_conn *c = conn_new(p, origin_get(p, req->origin, 1), fd);
        snprintf(c->peer, sizeof(c->peer), "%s", peer);
        c->want = req->want;
        c->req = req;
        req->conn = c;
        req->phase = REQ_CONNECTING;
        return;
    }

    /* Nothing (more) to try. */
    if (req->n_tried == 0) {
        /* No address was allowed: say which ones the name gave. */
        char list[160] = "";
        size_t used = 0;
        for (struct evutil_addrinfo *ai = req->ai; ai && used + 2 < sizeof(list);
             ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            char ip[INET6_ADDRSTRLEN];
            format_ip(ai->ai_addr, ip, sizeof(ip));
            int w = snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "", ip);
            if (w < 0)
                break;
            used += (size_t)w;
            if (used >= sizeof(list))
                used = sizeof(list) - 1;
        }
        if (list[0] && strcmp(list, req->host) == 0)
            req_complete(req, SB_REASON_UPSTREAM_FORBIDDEN,
                         "address %s is forbidden (see --allow-upstream)", req->host);
        else if (list[0])
            req_complete(req, SB_REASON_UPSTREAM_FORBIDDEN,
                         "%s resolves only to forbidden addresses (%s; see --allow-upstream)",
                         req->host, list);
        else
            req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no usable address", req->host);
        return;
    }
    int e = req->last_errno;
    sb_reason r = e == ETIMEDOUT ? SB_REASON_CONNECT_TIMEOUT : SB_REASON_CONNECT_REFUSED;
    req_complete(req, r, "connect %s: %s", req->last_peer, errno_text(e, ebuf, sizeof(ebuf)));
}

static void dns_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
    if (result == EVUTIL_EAI_CANCEL) {
        /* The request may be gone already: do not touch |arg|. */
        if (ai)
            evutil_freeaddrinfo(ai);
        return;
    }
    sb_upstream_req *req = arg;
    req->dns_req = NULL;
    if (result != 0 || ai == NULL) {
        if (ai)
            evutil_freeaddrinfo(ai);
        req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: %s", req->host,
                     result ? evutil_gai_strerror(result) : "no address");
        return;
    }
    req->ai = req->ai_next = ai;
    req->last_peer[0] = '\0';
    req->last_errno = 0;
    req->n_tried = 0;
    req_connect_next(req);
}

static void req_start_resolve(sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    req->phase = REQ_RESOLVING;
    event_del(&req->timer);
    event_add(&req->timer, p->tv_connect);

    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* ADDRCONFIG spares AAAA queries on IPv4-only hosts, but must not reject an IPv6
     * literal the operator wrote on purpose. */
    hints.ai_flags = req->literal ? EVUTIL_AI_NUMERICHOST : EVUTIL_AI_ADDRCONFIG;
    if (p->dns == NULL) {
        struct evutil_addrinfo *ai = NULL;
        hints.ai_flags |= EVUTIL_AI_NUMERICHOST;
        int r = evutil_getaddrinfo(req->host, NULL, &hints, &ai);
        if (r != 0) {
            req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no resolver for host names",
                         req->host);
            return;
        }
        dns_cb(0, ai, req);
        return;
    }
    /* For IP literals and /etc/hosts names the callback runs before this returns (and
     * NULL comes back); |req| may already be completed then, but not freed, since
     * completion is deferred. */
    struct evdns_getaddrinfo_request *d =
        evdns_getaddrinfo(p->dns, req->host, NULL, &hints, dns_cb, req);
    if (d)
        req->dns_req = d;
}

static void req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_req *req = arg;
    sb_upstream_pool *p = req->pool;
    switch (req->phase) {
    case REQ_DONE:
        req_deliver(req);
        return;
    case REQ_RETRY:
        req->phase = REQ_NEW;
        req_route(req);
        return;
    case REQ_RESOLVING:
        if (req->dns_req) {
            evdns_getaddrinfo_cancel(req->dns_req);
            req->dns_req = NULL;
        }
        req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no answer within %d ms", req->host,
                     p->connect_timeout_ms);
        return;
    case REQ_WAITING: {
        up_origin *o = req->wait_origin;
        int sessions = o->n_h2 > 0;
        uint32_t max = sessions ? sb_h2c_max_streams(o->h2->h2) : 0;
        waiter_remove(req);
        if (sessions)
            req_complete(req, SB_REASON_CONNECT_TIMEOUT,
                         "no HTTP/2 stream to %s became free within %d ms (the agent allows %u "
                         "concurrent streams per connection)",
                         req->origin, p->connect_timeout_ms, (unsigned)max);
        else
            req_complete(req, SB_REASON_CONNECT_TIMEOUT, "no HTTP/2 connection to %s within %d ms",
                         req->origin, p->connect_timeout_ms);
        return;
    }
    case REQ_CONNECTING: {
        char peer[PEER_MAX];
        snprintf(peer, sizeof(peer), "%s", req->conn ? req->conn->peer : req->last_peer);
        if (req->conn && req->conn->state == CONN_HANDSHAKE) {
            /* TCP got through; the TLS layer stalled (often https to a plain HTTP port). */
            req->conn->req = NULL;
            conn_close(req->conn);
            req->conn = NULL;
            char note[HOST_MAX + 4];
            req_complete(req, SB_REASON_TLS_ERROR,
                         "TLS handshake with %s%s: no answer within %d ms", peer,
                         tls_name_note(req, note, sizeof(note)), p->connect_timeout_ms);
            return;
        }
        if (req->conn) {
            req->conn->req = NULL;
            conn_close(req->conn);
            req->conn = NULL;
        }
        req_complete(req, SB_REASON_CONNECT_TIMEOUT, "connect %s: no connection within %d ms", peer,
                     p->connect_timeout_ms);
        return;
    }
    case REQ_SENT: {
        up_conn *c = req->conn;
        if (c == NULL)
            return;
        char what_[96];
        snprintf(what_, sizeof(what_), "no %s within %d ms",
                 req->sstate == SS_STREAM ? "response data" : "complete response",
                 req_response_ms(req));
        if (c->state == CONN_H2) {
            sb_h2c_reset_stream(&req->h2st, NGHTTP2_CANCEL);
            req_complete(req, SB_REASON_RESPONSE_TIMEOUT, "%s: %s", c->peer, what_);
            h2_after_change(c);
            return;
        }
        conn_fail_active(c, SB_REASON_RESPONSE_TIMEOUT, what_);
        return;
    }
    case REQ_NEW:
        return;
    }
}

/* ---------------------------------------------------------------- public API */

sb_upstream_pool *sb_upstream_pool_new(struct event_base *base, struct evdns_base *dns,
                                       const sb_upstream_opts *opts)
{
    sb_upstream_pool *p = sb_calloc(1, sizeof(*p));
    sb_upstream_opts o;
    if (opts)
        o = *opts;
    else
        memset(&o, 0, sizeof(o));
    p->base = base;
    p->dns = dns;
    p->connect_timeout_ms =
        o.connect_timeout_ms > 0 ? o.connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    p->response_timeout_ms =
        o.response_timeout_ms > 0 ? o.response_timeout_ms : DEFAULT_RESPONSE_TIMEOUT_MS;
    p->max_response_bytes =
        o.max_response_bytes ? o.max_response_bytes : DEFAULT_MAX_RESPONSE_BYTES;
    p->max_idle_per_origin =
        o.max_idle_per_origin ? o.max_idle_per_origin : DEFAULT_MAX_IDLE_PER_ORIGIN;
    p->idle_timeout_ms = o.idle_timeout_ms > 0 ? o.idle_timeout_ms : DEFAULT_IDLE_TIMEOUT_MS;
    if (o.tls_ca_file)
        p->tls_ca_file = sb_strdup(o.tls_ca_file);
    if (o.n_allow && o.allow) {
        p->allow = sb_calloc(o.n_allow, sizeof(sb_cidr));
        memcpy(p->allow, o.allow, o.n_allow * sizeof(sb_cidr));
        p->n_allow = o.n_allow;
    }
    struct timeval tv;
    tv.tv_sec = p->connect_timeout_ms / 1000;
    tv.tv_usec = (p->connect_timeout_ms % 1000) * 1000;
    p->tv_connect = event_base_init_common_timeout(base, &tv);
    tv.tv_sec = p->response_timeout_ms / 1000;
    tv.tv_usec = (p->response_timeout_ms % 1000) * 1000;
    p->tv_response = event_base_init_common_timeout(base, &tv);
    p->origins = sb_strmap_new();
    p->reap_ev = event_new(base, -1, 0, reap_cb, p);
    p->sweep_ev = event_new(base, -1, 0, sweep_cb, p);
    p->kill_ev = event_new(base, -1, 0, kill_cb, p);
    if (!p->tv_connect || !p->tv_response || !p->reap_ev || !p->sweep_ev || !p->kill_ev) {
        fprintf(stderr, "switchboard: cannot create upstream pool events\n");
        abort();
    }
    return p;
}

static void free_origin(const char *key, void *value, void *arg)
{
    up_origin *o = value;
    sb_free(o->key);
    sb_free(o);
}

void sb_upstream_pool_free(sb_upstream_pool *p)
{
    if (p == NULL)
        return;
    p->freeing = 1;
    while (p->reqs)
        req_cancel_now(p->reqs);
    event_del(p->kill_ev);
    kill_cb(-1, 0, p);
    while (p->conns)
        conn_close(p->conns);
    /* Origins go with their last connection in the reaper; free what is left after. */
    event_del(p->reap_ev);
    reap_cb(-1, 0, p);
    sb_strmap_foreach(p->origins, free_origin, NULL);
    sb_strmap_free(p->origins);
    event_free(p->reap_ev);
    event_free(p->sweep_ev);
    event_free(p->kill_ev);
    if (p->tls_ctx)
        SSL_CTX_free(p->tls_ctx);
    sb_free(p->tls_ca_file);
    sb_free(p->allow);
    sb_free(p);
}

sb_upstream_req *sb_upstream_submit(sb_upstream_pool *p, const sb_url *url,
                                    const sb_headers *headers, struct evbuffer *body,
                                    const sb_upstream_send_opts *opts, sb_upstream_cb cb, void *arg)
{
    static const sb_upstream_send_opts defaults;
    if (opts == NULL)
        opts = &defaults;
    sb_upstream_req *req = sb_calloc(1, sizeof(*req));
    req->pool = p;
    req->response_timeout_ms = opts->response_timeout_ms > 0 ? opts->response_timeout_ms : 0;
    req->cb = cb;
    req->arg = arg;
    req->phase = REQ_NEW;
    req->start_us = sb_now_mono_us();
    sb_headers_init(&req->resp_headers);
    event_assign(&req->timer, p->base, -1, 0, req_timer_cb, req);
    event_assign(&req->notify, p->base, -1, 0, req_notify_cb, req);
    req->next = p->reqs;
    if (p->reqs)
        p->reqs->prev = req;
    p->reqs = req;

    if (url == NULL || url->host == NULL || url->path == NULL || url->authority == NULL ||
        strlen(url->host) >= HOST_MAX || url->port <= 0 || url->port > 65535) {
        drain_all(body);
        req_complete(req, SB_REASON_INVALID_RESPONSE, "invalid upstream URL");
        return req;
    }
    const char *m = opts->method ? opts->method : "POST";
    if (!method_ok(m)) {
        drain_all(body);
        req_complete(req, SB_REASON_INVALID_RESPONSE, "invalid method");
        return req;
    }
    if (opts->on_head && opts->on_data == NULL) {
        drain_all(body);
        req_complete(req, SB_REASON_INVALID_RESPONSE, "on_head without on_data");
        return req;
    }
    req->on_head = opts->on_head;
    req->on_data = opts->on_data;
    req->sstate = opts->on_head ? SS_UNDECIDED : SS_NONE;
    snprintf(req->host, sizeof(req->host), "%s", url->host);
    req->port = url->port;
    req->https = url->https != 0;
    unsigned char bin[16];
    req->literal =
        inet_pton(AF_INET, req->host, bin) == 1 || inet_pton(AF_INET6, req->host, bin) == 1;
    origin_key(req->origin, url);
    switch (opts->protocol) {
    case SB_PROTO_HTTP1:
        req->want = WANT_H1;
        break;
    case SB_PROTO_H2C:
        req->want = url->https ? WANT_ALPN : WANT_H2C;
        break;
    case SB_PROTO_AUTO:
    default:
        req->want = url->https ? WANT_ALPN : WANT_H1;
        break;
    }
    if (url->https && tls_ctx_get(p) == NULL) {
        drain_all(body);
        req_complete(req, SB_REASON_TLS_ERROR, "%s", p->tls_ctx_err);
        return req;
    }
    req_spec_build(req, m, url, headers);
    req->body = evbuffer_new();
    if (body && evbuffer_get_length(body) > 0)
        evbuffer_add_buffer(req->body, body);
    req_route(req);
    return req;
}

sb_upstream_req *sb_upstream_send(sb_upstream_pool *p, const char *method, const sb_url *url,
                                  const sb_headers *headers, struct evbuffer *body,
                                  sb_upstream_cb cb, void *arg)
{
    sb_upstream_send_opts o = {.method = method ? method : "POST"};
    return sb_upstream_submit(p, url, headers, body, &o, cb, arg);
}

sb_upstream_req *sb_upstream_push(sb_upstream_pool *p, const sb_url *url, const sb_headers *headers,
                                  struct evbuffer *body, sb_upstream_cb cb, void *arg)
{
    return sb_upstream_submit(p, url, headers, body, NULL, cb, arg);
}

/* Abandons |req| now, whatever it is doing, and frees it; no callback runs. */
static void req_cancel_now(sb_upstream_req *req)
{
    up_conn *h2conn = NULL;
    switch (req->phase) {
    case REQ_RESOLVING:
        if (req->dns_req)
            evdns_getaddrinfo_cancel(req->dns_req);
        req->dns_req = NULL;
        break;
    case REQ_WAITING:
        waiter_remove(req);
        break;
    case REQ_CONNECTING:
    case REQ_SENT:
        if (req->conn && req->conn->state == CONN_H2) {
            h2conn = req->conn;
            sb_h2c_reset_stream(&req->h2st, NGHTTP2_CANCEL);
            req->conn = NULL;
        } else if (req->conn) {
            req->conn->req = NULL;
            conn_close(req->conn);
            req->conn = NULL;
        }
        break;
    case REQ_NEW:
    case REQ_RETRY:
    case REQ_DONE:
        break;
    }
    req_unlink(req);
    /* Requests waiting on the connection this one was opening get a new opener. */
    if (req->opener)
        opener_release(req, SB_REASON_NONE, NULL);
    if (h2conn)
        h2_after_change(h2conn);
    req_free(req);
}

void sb_upstream_cancel(sb_upstream_req *req)
{
    if (req == NULL || req->in_cb)
        return;
    if (req->in_stream_cb) {
        req->cancel_pending = 1; /* finished once on_head/on_data returns */
        return;
    }
    req_cancel_now(req);
}

void sb_upstream_pause(sb_upstream_req *req, int paused)
{
    if (req == NULL || req->on_head == NULL || req->in_cb || req->phase == REQ_DONE)
        return;
    int was = req->paused;
    req->paused = paused != 0;
    if (was == (int)req->paused)
        return;
    stream_flow(req);
    if (!req->paused && req->sstate == SS_STREAM && req->resp_body &&
        evbuffer_get_length(req->resp_body) > 0)
        event_active(&req->notify, EV_TIMEOUT, 1);
}

size_t sb_upstream_pool_idle(const sb_upstream_pool *p)
{
    return p ? p->n_idle : 0;
}

size_t sb_upstream_pool_h2_sessions(const sb_upstream_pool *p)
{
    return p ? p->n_h2 : 0;
}

const char *sb_upstream_proto_name(sb_upstream_proto p)
{
    switch (p) {
    case SB_PROTO_HTTP1:
        return "http1";
    case SB_PROTO_H2C:
        return "h2c";
    default:
        return "auto";
    }
}
