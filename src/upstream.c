/*
 * upstream.c — per-loop HTTP/1.1 client (http and https) with keep-alive pools (see
 * upstream.h).
 *
 * Objects. A pool belongs to one event_base and is never touched from another thread.
 * It owns origins ("http://host:port", a LIFO stack of idle connections each), every
 * live connection, and every request in flight. A request (sb_upstream_req) owns the
 * serialized request (head + body in one evbuffer), its deadline timer, and the response
 * headers and body once they arrive; a connection (up_conn) owns a bufferevent and the
 * response parser, and carries at most one request at a time (no pipelining).
 *
 * Life of a request:
 *   push → an idle connection of the origin (reused) or resolve → connect (→ TLS
 *   handshake for https) → send → parse the response → complete. The timer bounds each
 *   phase: connect_timeout_ms from the start of resolution to a usable connection,
 *   response_timeout_ms from the request being handed to the connection to the last
 *   response byte.
 *
 * Life of a connection: a non-blocking connect() watched by a plain event (so the
 * errno of a failed connect is read exactly, with getsockopt(SO_ERROR)); once connected,
 * the socket goes to a socket bufferevent (http) or an OpenSSL bufferevent in connecting
 * state (https); then it carries one request at a time and, when the response allows,
 * waits on its origin's stack for the next.
 *
 * Completion is always deferred: req_complete() records the result and activates the
 * request's timer event; the user callback runs from that event, at the top of the loop,
 * where no bufferevent or resolver callback of ours is on the stack. That single rule
 * gives "never from inside push", lets the callback push again or cancel other requests
 * freely, and means a connection is never in the middle of its own callback when user
 * code runs. Connections closed from inside their own bufferevent callbacks are unlinked
 * at once (their bufferevent freed, which libevent allows from its callbacks) and their
 * memory is reclaimed by a reaper event, so no code path can touch a freed up_conn.
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
 *     is what operators read "refused" as;
 *   - https: anything that stops the handshake (certificate not trusted, name or IP
 *     mismatch, protocol error such as a plain HTTP port, EOF, or no handshake within
 *     the rest of the connect timeout) → tls_error, with OpenSSL's verdict in the detail;
 *   - after the request was handed to the connection: EOF or an error (ECONNRESET,
 *     EPIPE, ...) before the response completed → connection_reset, except on a reused
 *     connection that delivered no response byte at all, which is retried once on a
 *     fresh connection; unparseable HTTP, an unexpected 101, or a body over
 *     max_response_bytes → invalid_response; no complete response in time →
 *     response_timeout.
 *
 * Keep-alive: a connection goes back to its origin's stack only when the response said
 * so (HTTP/1.1 without "Connection: close", or HTTP/1.0 with keep-alive), was not framed
 * by EOF, the request was fully written and no stray byte followed the response. Idle
 * connections keep reading: any byte or EOF while idle closes them (the agent's idle
 * timeout usually fires first). At most max_idle_per_origin idle connections are kept;
 * a sweeper closes those idle longer than idle_timeout_ms, oldest first.
 *
 * Copies: the caller's body is moved into the request buffer (evbuffer_add_buffer) and
 * from there into the socket buffer, moved on a fresh connection, referenced
 * (evbuffer_add_buffer_reference) on a reused one so a retry can send it again. libevent
 * cannot reference chains that are themselves references, so a body the caller built
 * with evbuffer_add_buffer_reference is copied once on a reused connection (the price of
 * keeping the retry); plain chains never are. The response body is copied once, by the
 * parser's body callback, from the socket buffer into the result buffer; headers are
 * copied into an sb_headers.
 *
 * Never: call back twice, after cancel, or synchronously; connect to a forbidden address;
 * reuse a connection whose response state is uncertain; block.
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
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/util.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 3000
#define DEFAULT_RESPONSE_TIMEOUT_MS 300000
#define DEFAULT_MAX_RESPONSE_BYTES (4u * 1024 * 1024)
#define DEFAULT_MAX_IDLE_PER_ORIGIN 64
#define DEFAULT_IDLE_TIMEOUT_MS 60000

#define HOST_MAX 256   /* DNS names are at most 253 bytes */
#define ORIGIN_MAX 300 /* "https://" + "[" host "]" + ":65535" */
#define PEER_MAX 64    /* "[v6 address]:port" */

typedef struct up_conn up_conn;
typedef struct up_origin up_origin;

typedef enum {
    REQ_NEW,        /* being set up inside sb_upstream_send */
    REQ_RESOLVING,  /* waiting for evdns (dns_req may be set) */
    REQ_CONNECTING, /* conn is connecting */
    REQ_SENT,       /* conn carries the request, response being read */
    REQ_DONE        /* result recorded, callback pending on the timer event */
} req_phase;

struct sb_upstream_req {
    sb_upstream_pool *pool;
    sb_upstream_req *prev, *next; /* pool->reqs */
    sb_upstream_cb cb;
    void *arg;
    req_phase phase;
    unsigned in_cb : 1;   /* the user callback is running: cancel is a no-op */
    unsigned retried : 1; /* the one retry after a stale pooled connection is used */
    struct event timer;   /* phase deadline, then the deferred completion */
    struct evdns_getaddrinfo_request *dns_req;
    struct evutil_addrinfo *ai, *ai_next; /* resolved addresses left to try (owned) */
    up_conn *conn;
    struct evbuffer *out; /* head + body; emptied once moved onto a fresh connection */
    uint64_t start_us;
    int port;
    int last_errno;          /* last connect error, for classification */
    int response_timeout_ms; /* 0: the pool's */
    int literal;             /* the host is an IP literal (no SNI, IP identity check) */
    int n_tried;             /* allowed addresses a connect was attempted to */
    char last_peer[PEER_MAX];
    char host[HOST_MAX];
    char origin[ORIGIN_MAX];
    sb_headers resp_headers;
    struct evbuffer *resp_body;
    sb_upstream_result res;
};

typedef enum {
    CONN_CONNECTING, /* TCP connect under way: fd and connect_ev, no bufferevent yet */
    CONN_HANDSHAKE,  /* https: TLS handshake under way on bev */
    CONN_ACTIVE,     /* carries req */
    CONN_IDLE,       /* parked on its origin's stack */
    CONN_DEAD        /* closed, memory awaits the reaper */
} conn_state;
typedef enum { HDR_NONE, HDR_FIELD, HDR_VALUE } hdr_state;

struct up_conn {
    sb_upstream_pool *pool;
    up_origin *origin;
    up_conn *all_prev, *all_next;   /* pool->conns, or pool->dead once closed */
    up_conn *idle_prev, *idle_next; /* origin->idle stack while idle */
    up_conn *lru_prev, *lru_next;   /* pool idle list, oldest first, while idle */
    evutil_socket_t fd;             /* owned until bev takes it */
    struct event connect_ev;        /* writability of fd while CONN_CONNECTING */
    struct bufferevent *bev;        /* socket or OpenSSL bufferevent; owns fd */
    sb_upstream_req *req;
    conn_state state;
    unsigned served; /* responses completed on this connection */
    unsigned reused; /* the current request rides a previously used connection */
    uint64_t idle_since_us;
    uint64_t rx_bytes; /* response bytes received for the current request */
    char peer[PEER_MAX];

    /* response parsing */
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
    up_conn *idle; /* top of the LIFO stack */
    size_t n_idle;
    size_t refs; /* connections that belong to this origin */
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
    up_conn *lru_head, *lru_tail; /* idle connections, oldest first */
    size_t n_idle;
    sb_upstream_req *reqs; /* every request not yet completed and delivered */
    struct event *reap_ev;
    struct event *sweep_ev;
    char *tls_ca_file;
    SSL_CTX *tls_ctx;      /* created on the first https push */
    char tls_ctx_err[160]; /* why tls_ctx could not be made, reported per push */
};

static void req_start_resolve(sb_upstream_req *req);
static void conn_close(up_conn *c);

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

/* Headers this client frames itself or that only concern one hop. */
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

/* Serializes the request head and moves |body| behind it into |out|, in one reserved
 * region and without printf. */
static void build_request(struct evbuffer *out, const char *method, const sb_url *url,
                          const sb_headers *headers, struct evbuffer *body)
{
    static const char conn_hdr[] = "Connection: keep-alive\r\n";
    static const char clen_hdr[] = "Content-Length: ";
    size_t body_len = body ? evbuffer_get_length(body) : 0;
    int want_length = body_len > 0 || strcmp(method, "GET") != 0;
    size_t mlen = strlen(method), plen = strlen(url->path), alen = strlen(url->authority);

    /* Wire lengths of the caller's headers, computed once (0 = dropped). */
    size_t nh = headers ? headers->count : 0;
    size_t lens_small[32];
    size_t *lens = nh <= SB_ARRAY_LEN(lens_small) ? lens_small : sb_malloc(nh * sizeof(size_t));
    size_t total = mlen + 1 + plen + sizeof(" HTTP/1.1\r\nHost: ") - 1 + alen + 2 +
                   (want_length ? sizeof(clen_hdr) - 1 + 20 + 2 : 0) + sizeof(conn_hdr) - 1 + 2;
    for (size_t i = 0; i < nh; i++) {
        lens[i] = header_wire_len(&headers->items[i]);
        total += lens[i];
    }

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
    PUT(method, mlen);
    PUTLIT(" ");
    PUT(url->path, plen);
    PUTLIT(" HTTP/1.1\r\nHost: ");
    PUT(url->authority, alen);
    PUTLIT("\r\n");
    if (want_length) {
        PUTLIT(clen_hdr);
        p += format_u64(body_len, p);
        PUTLIT("\r\n");
    }
    PUTLIT(conn_hdr);
    for (size_t i = 0; i < nh; i++) {
        if (lens[i] == 0)
            continue;
        const sb_header *h = &headers->items[i];
        size_t nlen = strlen(h->name);
        PUT(h->name, nlen);
        PUTLIT(": ");
        PUT(h->value, lens[i] - nlen - 4);
        PUTLIT("\r\n");
    }
    PUTLIT("\r\n");
#undef PUTLIT
#undef PUT
    if (lens != lens_small)
        sb_free(lens);
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    evbuffer_commit_space(out, &v, 1);
    if (body_len)
        evbuffer_add_buffer(out, body);
}

/* ---------------------------------------------------------------- completion */

/* Records the outcome of |req| and schedules its callback from the loop. |reason| NONE
 * means the response in req->resp_* is complete. */
static void req_complete(sb_upstream_req *req, sb_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void req_complete(sb_upstream_req *req, sb_reason reason, const char *fmt, ...)
{
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
    if (req->ai)
        evutil_freeaddrinfo(req->ai);
    if (req->out)
        evbuffer_free(req->out);
    if (req->resp_body)
        evbuffer_free(req->resp_body);
    sb_headers_clear(&req->resp_headers);
    sb_free(req);
}

static void req_deliver(sb_upstream_req *req)
{
    sb_upstream_result *r = &req->res;
    r->headers = &req->resp_headers;
    if (r->reason == SB_REASON_NONE) {
        if (req->resp_body == NULL)
            req->resp_body = evbuffer_new();
        r->body = req->resp_body;
    } else {
        r->status = 0;
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

/* ---------------------------------------------------------------- idle bookkeeping */

static void idle_unlink(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    up_origin *o = c->origin;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        o->idle = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    o->n_idle--;

    if (c->lru_prev)
        c->lru_prev->lru_next = c->lru_next;
    else
        p->lru_head = c->lru_next;
    if (c->lru_next)
        c->lru_next->lru_prev = c->lru_prev;
    else
        p->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
    p->n_idle--;
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

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    uint64_t now = sb_now_mono_us();
    uint64_t limit = (uint64_t)p->idle_timeout_ms * 1000;
    while (p->lru_head && now - p->lru_head->idle_since_us >= limit)
        conn_close(p->lru_head);
    sweep_arm(p);
}

/* Parks a connection that finished a response cleanly, or closes it when the origin
 * already keeps enough idle ones. */
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
    c->idle_since_us = sb_now_mono_us();
    c->idle_prev = NULL;
    c->idle_next = o->idle;
    if (o->idle)
        o->idle->idle_prev = c;
    o->idle = c;
    o->n_idle++;
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

/* ---------------------------------------------------------------- connections */

static void conn_readcb(struct bufferevent *bev, void *arg);
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

/* Closes |c| at once (socket closed, detached from pool, origin and request); its memory
 * goes later, from the reaper, so a caller up the stack may still hold the pointer. The
 * caller deals with c->req before. */
static void conn_close(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->state == CONN_DEAD)
        return;
    if (c->state == CONN_IDLE)
        idle_unlink(c);
    if (c->state == CONN_CONNECTING) {
        event_del(&c->connect_ev);
        evutil_closesocket(c->fd);
    }
    c->fd = -1;
    c->state = CONN_DEAD;
    c->req = NULL;
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

static int on_headers_complete(http_parser *hp)
{
    up_conn *c = hp->data;
    sb_upstream_pool *p = c->pool;
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
    if (hp->content_length != ULLONG_MAX && hp->content_length > p->max_response_bytes) {
        c->err = "body over the response size limit";
        return -1;
    }
    if (c->req->resp_body == NULL)
        c->req->resp_body = evbuffer_new();
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    struct evbuffer *b = c->req->resp_body;
    if (evbuffer_get_length(b) + len > c->pool->max_response_bytes) {
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

/* ---------------------------------------------------------------- request flow */

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
    sb_upstream_pool *p = c->pool;
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
    memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
    /* On a reused connection the bytes stay in req->out for a possible retry. */
    if (c->reused && !req->retried) {
        if (evbuffer_add_buffer_reference(output, req->out) != 0)
            copy_buffer(output, req->out);
    } else {
        evbuffer_add_buffer(output, req->out);
    }
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    event_del(&req->timer);
    if (req->response_timeout_ms > 0) {
        struct timeval tv = {req->response_timeout_ms / 1000,
                             (req->response_timeout_ms % 1000) * 1000};
        event_add(&req->timer, &tv);
    } else {
        event_add(&req->timer, p->tv_response);
    }
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
    req->res.reused = (int)c->reused;
    c->served++;
    c->req = NULL;
    req->conn = NULL;
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
    if (c->state == CONN_IDLE) {
        /* Bytes on an idle connection: the agent is confused, never reuse it. */
        conn_close(c);
        return;
    }
    if (c->state != CONN_ACTIVE)
        return; /* nothing is read before the handshake ends */
    c->rx_bytes += evbuffer_get_length(in);
    int r = conn_parse(c, in);
    if (r > 0)
        conn_response_done(c);
    else if (r < 0)
        conn_fail_parse(c);
}

static void req_connect_next(sb_upstream_req *req);

/* ---------------------------------------------------------------- TLS */

/* The pool's client context, made on first use: system CA store (or tls_ca_file), TLS
 * 1.2 at least, peer verification on, ALPN http/1.1. NULL with p->tls_ctx_err set when
 * it cannot be made (every https push then fails with that text). */
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
    int ok = p->tls_ca_file ? SSL_CTX_load_verify_locations(ctx, p->tls_ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char e[120];
        ERR_error_string_n(ERR_get_error(), e, sizeof(e));
        ERR_clear_error();
        snprintf(p->tls_ctx_err, sizeof(p->tls_ctx_err), "cannot load CA certificates%s%s: %s",
                 p->tls_ca_file ? " from " : "", p->tls_ca_file ? p->tls_ca_file : "", e);
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

/* Starts the TLS handshake on the connected c->fd: SNI and hostname verification for
 * names, IP-address verification for literals. Returns 0, or -1 with |why| set (c->fd
 * is still c's then). */
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
    bufferevent_setcb(bev, conn_readcb, NULL, conn_eventcb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return 0;
}

/* ---------------------------------------------------------------- connect */

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
        if (conn_start_tls(c, req, why, sizeof(why)) != 0) {
            char peer[PEER_MAX];
            memcpy(peer, c->peer, sizeof(peer));
            c->req = NULL;
            req->conn = NULL;
            conn_close(c);
            char note[HOST_MAX + 4];
            req_complete(req, SB_REASON_TLS_ERROR, "TLS with %s%s: %s", peer,
                         tls_name_note(req, note, sizeof(note)), why);
        }
        return;
    }
    c->bev = bufferevent_socket_new(c->pool->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        fprintf(stderr, "switchboard: bufferevent_socket_new failed\n");
        abort();
    }
    c->fd = -1;
    bufferevent_setcb(c->bev, conn_readcb, NULL, conn_eventcb, c);
    conn_send(c, req);
}

static void conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    up_conn *c = arg;
    int err = EVUTIL_SOCKET_ERROR();
    char ebuf[128];

    switch (c->state) {
    case CONN_CONNECTING:
        return; /* no bufferevent yet */
    case CONN_HANDSHAKE: {
        sb_upstream_req *req = c->req;
        if (what & BEV_EVENT_CONNECTED) {
            conn_send(c, req);
            return;
        }
        char why[200], note[HOST_MAX + 4];
        tls_failure_text(c, what, err, why, sizeof(why));
        char peer[PEER_MAX];
        memcpy(peer, c->peer, sizeof(peer));
        c->req = NULL;
        req->conn = NULL;
        conn_close(c);
        req_complete(req, SB_REASON_TLS_ERROR, "TLS handshake with %s%s: %s", peer,
                     tls_name_note(req, note, sizeof(note)), why);
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
            /* A TLS record error leaves errno alone; OpenSSL has the reason then. */
            unsigned long tls_err = c->origin->https ? bufferevent_get_openssl_error(bev) : 0;
            const char *tls_why = tls_err ? ERR_reason_error_string(tls_err) : NULL;
            char msg[192];
            snprintf(msg, sizeof(msg), "connection %s (%s)",
                     (what & BEV_EVENT_WRITING) ? "failed while sending" : "reset",
                     tls_err ? (tls_why ? tls_why : "TLS error")
                             : errno_text(err ? err : ECONNRESET, ebuf, sizeof(ebuf)));
            if (tls_err)
                ERR_clear_error();
            conn_fail_active(c, SB_REASON_CONNECTION_RESET, msg);
        }
        return;
    case CONN_IDLE:
        /* EOF or an error while idle: the agent closed it; forget it quietly. */
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
    unsigned char bin[16];
    req->literal =
        inet_pton(AF_INET, req->host, bin) == 1 || inet_pton(AF_INET6, req->host, bin) == 1;
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
    case REQ_RESOLVING:
        if (req->dns_req) {
            evdns_getaddrinfo_cancel(req->dns_req);
            req->dns_req = NULL;
        }
        req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no answer within %d ms", req->host,
                     p->connect_timeout_ms);
        return;
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
    case REQ_SENT:
        if (req->conn) {
            up_conn *c = req->conn;
            char what_[96];
            snprintf(what_, sizeof(what_), "no complete response within %d ms",
                     req->response_timeout_ms > 0 ? req->response_timeout_ms
                                                  : p->response_timeout_ms);
            conn_fail_active(c, SB_REASON_RESPONSE_TIMEOUT, what_);
        }
        return;
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
    if (!p->tv_connect || !p->tv_response || !p->reap_ev || !p->sweep_ev) {
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
    while (p->reqs) {
        sb_upstream_cancel(p->reqs);
    }
    while (p->conns)
        conn_close(p->conns);
    /* Origins go with their last connection in the reaper; free what is left after. */
    event_del(p->reap_ev);
    reap_cb(-1, 0, p);
    sb_strmap_foreach(p->origins, free_origin, NULL);
    sb_strmap_free(p->origins);
    event_free(p->reap_ev);
    event_free(p->sweep_ev);
    if (p->tls_ctx)
        SSL_CTX_free(p->tls_ctx);
    sb_free(p->tls_ca_file);
    sb_free(p->allow);
    sb_free(p);
}

static void drain_all(struct evbuffer *b)
{
    if (b)
        evbuffer_drain(b, evbuffer_get_length(b));
}

sb_upstream_req *sb_upstream_send(sb_upstream_pool *p, const char *method, const sb_url *url,
                                  const sb_headers *headers, struct evbuffer *body,
                                  sb_upstream_cb cb, void *arg)
{
    return sb_upstream_request(p, method, url, headers, body, 0, cb, arg);
}

sb_upstream_req *sb_upstream_request(sb_upstream_pool *p, const char *method, const sb_url *url,
                                     const sb_headers *headers, struct evbuffer *body,
                                     int response_timeout_ms, sb_upstream_cb cb, void *arg)
{
    sb_upstream_req *req = sb_calloc(1, sizeof(*req));
    req->pool = p;
    req->response_timeout_ms = response_timeout_ms;
    req->cb = cb;
    req->arg = arg;
    req->phase = REQ_NEW;
    req->start_us = sb_now_mono_us();
    sb_headers_init(&req->resp_headers);
    event_assign(&req->timer, p->base, -1, 0, req_timer_cb, req);
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
    const char *m = method ? method : "POST";
    if (!method_ok(m)) {
        drain_all(body);
        req_complete(req, SB_REASON_INVALID_RESPONSE, "invalid method");
        return req;
    }
    snprintf(req->host, sizeof(req->host), "%s", url->host);
    req->port = url->port;
    origin_key(req->origin, url);
    if (url->https && tls_ctx_get(p) == NULL) {
        drain_all(body);
        req_complete(req, SB_REASON_TLS_ERROR, "%s", p->tls_ctx_err);
        return req;
    }
    req->out = evbuffer_new();
    build_request(req->out, m, url, headers, body);

    up_origin *o = origin_get(p, req->origin, 0);
    if (o && o->idle) {
        up_conn *c = o->idle; /* LIFO: the most recently used is the least likely stale */
        idle_unlink(c);
        conn_send(c, req);
        return req;
    }
    req_start_resolve(req);
    return req;
}

sb_upstream_req *sb_upstream_push(sb_upstream_pool *p, const sb_url *url, const sb_headers *headers,
                                  struct evbuffer *body, sb_upstream_cb cb, void *arg)
{
    return sb_upstream_send(p, "POST", url, headers, body, cb, arg);
}

void sb_upstream_cancel(sb_upstream_req *req)
{
    if (req == NULL || req->in_cb)
        return;
    switch (req->phase) {
    case REQ_RESOLVING:
        if (req->dns_req)
            evdns_getaddrinfo_cancel(req->dns_req);
        req->dns_req = NULL;
        break;
    case REQ_CONNECTING:
    case REQ_SENT:
        if (req->conn) {
            req->conn->req = NULL;
            conn_close(req->conn);
            req->conn = NULL;
        }
        break;
    case REQ_NEW:
    case REQ_DONE:
        break;
    }
    req_unlink(req);
    req_free(req);
}

size_t sb_upstream_pool_idle(const sb_upstream_pool *p)
{
    return p ? p->n_idle : 0;
}
