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
 * Life of a connection (upstream_conn.c): resolve and connect, then HTTP/1.1
 * (upstream_http1.c) or an HTTP/2 session (upstream_h2.c), over TLS for https
 * (upstream_tls.c). The private records and the calls between these files are in
 * upstream_int.h.
 *
 * Completion is always deferred: up_req_complete() records the result and activates the
 * request's timer event; the user callback runs from that event, at the top of the loop,
 * where no bufferevent, resolver or nghttp2 callback of ours is on the stack. Streaming
 * callbacks (on_head, on_data) likewise run from the request's notify event. That single
 * rule gives "never from inside push", lets callbacks push again or cancel requests
 * freely, and means a connection is never in the middle of its own callback when user
 * code runs. Connections end the same careful way: closed at once, freed later by a
 * reaper or a kill event (upstream_conn.c).
 *
 * Failure classification (the reason list is SPEC §4.2), decided in the file of each
 * step (resolve and connect: upstream_conn.c; TLS: upstream_tls.c; HTTP/1.1 and HTTP/2
 * answers: upstream_http1.c and upstream_conn.c; deadlines: the request timer here):
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
 * Idle: HTTP/1.1 connections that may be reused (upstream_http1.c says when) wait on
 * their origin's stack, at most max_idle_per_origin of them; HTTP/2 sessions without an
 * open stream are idle too. A sweeper closes what has been idle longer than
 * idle_timeout_ms, oldest first (sessions with GOAWAY).
 *
 * Copies: the caller's body is moved into the request's buffer (evbuffer_add_buffer).
 * HTTP/1.1 moves it on into the socket buffer on a fresh connection and, on a reused
 * one, keeps it so a retry can send it again: a body of up to 16 KB is copied into the
 * head's reserved region (one chain, one write), a larger one referenced
 * (evbuffer_add_buffer_reference; libevent cannot reference chains that are themselves
 * references, so such a body is copied). HTTP/2 copies it into DATA frames without draining it (a
 * refused stream is sent again). The response body is copied once into the result buffer; headers
 * into an sb_headers.
 *
 * Never: call back twice, after cancel, or synchronously; connect to a forbidden address;
 * reuse a connection whose response state is uncertain; free an HTTP/2 session from
 * inside its own calls; block.
 */
#include "switchboard/upstream.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream_h2.h"
#include "switchboard/util.h"

#include "upstream_int.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 3000
#define DEFAULT_RESPONSE_TIMEOUT_MS 300000
#define DEFAULT_MAX_RESPONSE_BYTES (4u * 1024 * 1024)
/* Idle HTTP/1.1 connections kept per origin (per worker). Above the number of pushes in
 * flight to one agent, every finished push closes its connection and the next opens a
 * new one (a TCP handshake, ~10 system calls); 256 covers the bench's 160 concurrent
 * pushes, like nginx's `keepalive 256`. At ~1.5 KB each and closed after
 * DEFAULT_IDLE_TIMEOUT_MS, a full stack costs ~0.4 MB only while the burst is recent. */
#define DEFAULT_MAX_IDLE_PER_ORIGIN 256
#define DEFAULT_IDLE_TIMEOUT_MS 60000

/* ---------------------------------------------------------------- small helpers */

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

/* Bytes "name: value\r\n" of |h| takes on the wire, or 0 when it must not be sent: a
 * framing or hop-by-hop header, a name that is not a token, a value with CR, LF (header
 * injection) or NUL. The name's length goes to |*name_len|. */
static size_t header_wire_len(const sb_header *h, size_t *name_len)
{
    if (h->name == NULL || h->value == NULL)
        return 0;
    size_t nlen = 0;
    for (const unsigned char *p = (const unsigned char *)h->name; *p; p++, nlen++)
        if (!tchar[*p])
            return 0;
    /* Headers this client frames itself or that only concern one hop (HTTP/2 forbids
     * the connection-specific ones outright). */
    if (nlen == 0 || sb_headers_reserved(h->name, nlen) & (SB_HDR_HOP | SB_HDR_HOST))
        return 0;
    size_t vlen = strcspn(h->value, "\r\n");
    if (h->value[vlen] != '\0')
        return 0;
    *name_len = nlen;
    return nlen + 2 + vlen + 2;
}

/* Decimal digits of |v| into |out| (>= 20 bytes), not terminated; returns the count. */
size_t up_format_u64(uint64_t v, char *out)
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

void up_drain_all(struct evbuffer *b)
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
    size_t lens_small[64]; /* two per header: bytes on the wire, the name's length */
    size_t *lens =
        2 * nh <= SB_ARRAY_LEN(lens_small) ? lens_small : sb_malloc(2 * nh * sizeof(size_t));
    size_t mlen = strlen(method), plen = strlen(url->path), alen = strlen(url->authority);
    size_t keep = 0, bytes = mlen + 1 + plen + 1 + alen + 1, wire = 0;
    for (size_t i = 0; i < nh; i++) {
        lens[2 * i] = header_wire_len(&headers->items[i], &lens[2 * i + 1]);
        if (lens[2 * i]) {
            keep++;
            bytes += lens[2 * i] - 2; /* "name\0value\0" */
            wire += lens[2 * i];
        }
    }
    char *blob = sb_malloc(keep * (sizeof(sb_header) + 2 * sizeof(uint32_t)) + bytes);
    sb_header *hs = (sb_header *)(void *)blob;
    uint32_t *hl = (uint32_t *)(void *)(blob + keep * sizeof(sb_header));
    char *p = (char *)(hl + 2 * keep);
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
        if (lens[2 * i] == 0)
            continue;
        const sb_header *h = &headers->items[i];
        size_t nlen = lens[2 * i + 1], vlen = lens[2 * i] - nlen - 4;
        PUTS(hs[k].name, h->name, nlen);
        PUTS(hs[k].value, h->value, vlen);
        hl[2 * k] = (uint32_t)nlen;
        hl[2 * k + 1] = (uint32_t)vlen;
        k++;
    }
#undef PUTS
    if (lens != lens_small)
        sb_free(lens);
    req->spec = blob;
    req->method_len = mlen;
    req->path_len = plen;
    req->authority_len = alen;
    req->hdrs = hs;
    req->hdr_lens = hl;
    req->n_hdrs = keep;
    req->hdrs_wire = wire;
}

/* The body length to announce, or -1 for none (a GET without body). */
long long up_req_content_length(const sb_upstream_req *req)
{
    size_t len = req->body ? evbuffer_get_length(req->body) : 0;
    if (len == 0 && strcmp(req->method, "GET") == 0)
        return -1;
    return (long long)len;
}

/* Runs the request's notify event from the loop (streamed answers' on_head/on_data). */
static void req_notify_soon(sb_upstream_req *req)
{
    req->notify_used = 1;
    event_active(&req->notify, EV_TIMEOUT, 1);
}

/* ---------------------------------------------------------------- timers */

static int req_response_ms(const sb_upstream_req *req)
{
    return req->response_timeout_ms > 0 ? req->response_timeout_ms : req->pool->response_timeout_ms;
}

/* (Re)starts the response deadline: the whole answer, or for a stream the silence
 * between body bytes. */
void up_req_arm_response(sb_upstream_req *req)
{
    /* event_add moves a pending timeout by itself: no event_del first. */
    if (req->response_timeout_ms > 0) {
        struct timeval tv = {req->response_timeout_ms / 1000,
                             (req->response_timeout_ms % 1000) * 1000};
        event_add(&req->timer, &tv);
    } else {
        event_add(&req->timer, req->pool->tv_response);
    }
}

/* ---------------------------------------------------------------- completion */

static void waiter_remove(sb_upstream_req *req);

/* Records the outcome of |req| and schedules its callback from the loop. |reason| NONE
 * means the response in req->resp_* is complete. */

void up_req_complete(sb_upstream_req *req, sb_reason reason, const char *fmt, ...)
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
    req->res.duration_us = sb_chain_mono_us() - req->start_us;
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
        up_opener_release(req, reason, req->res.detail);
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

/* |timer_idle|: called from the timer's own callback, which libevent removed before
 * running it (an event_del of an idle event still costs ~80 instructions). */
static void req_free(sb_upstream_req *req, int timer_idle)
{
    if (!timer_idle)
        event_del(&req->timer);
    if (req->notify_used)
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

static void req_cancel_now(sb_upstream_req *req);

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
    req_free(req, 1); /* only ever from req_timer_run */
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
    p += up_format_u64((uint64_t)url->port, p);
    *p = '\0';
}

up_origin *up_origin_get(sb_upstream_pool *p, const char *key, int create)
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

void up_origin_unref(sb_upstream_pool *p, up_origin *o)
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
    up_origin_unref(req->pool, o);
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
void up_opener_release(sb_upstream_req *req, sb_reason fail, const char *detail)
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
            up_req_complete(w, fail, "%s", copy);
        }
    } else {
        up_origin_dispatch(o);
    }
    up_origin_unref(p, o);
}

/* HTTP/1.1: the most recently used idle connection of the origin (LIFO: the least
 * likely to be stale), or a new one. */
static void route_h1(sb_upstream_req *req)
{
    up_origin *o = up_origin_get(req->pool, req->origin, 0);
    if (o && o->idle) {
        up_conn *c = o->idle;
        up_idle_unlink(c);
        up_conn_send(c, req);
        return;
    }
    up_req_start_resolve(req);
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
    up_origin *o = up_origin_get(p, req->origin, 1);
    up_conn *c = origin_h2_pick(o);
    if (c) {
        up_h2_start(c, req);
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
    up_req_start_resolve(req);
}

/* Serves the origin's queue as far as it can now: streams on sessions with room,
 * HTTP/1.1 for an origin that chose it, or one new connection when none is on its way. */
void up_origin_dispatch(up_origin *o)
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
            up_h2_start(c, req);
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
            up_req_start_resolve(req);
            continue;
        }
        break;
    }
    up_origin_unref(p, o);
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
            up_conn_set_reading(c, 0);
            req->read_held = 1;
        } else if (!hold && req->read_held) {
            up_conn_set_reading(c, 1);
            req->read_held = 0;
        }
    }
    if (req->sstate == SS_STREAM) {
        if (req->paused)
            event_del(&req->timer);
        else if (!event_pending(&req->timer, EV_TIMEOUT, NULL))
            up_req_arm_response(req);
    }
}

/* The final head arrived for a request with on_head: on_head runs from the loop. */
void up_stream_head_arrived(sb_upstream_req *req)
{
    if (req->on_head == NULL || req->sstate != SS_UNDECIDED)
        return;
    req->sstate = SS_HEAD_PENDING;
    req_notify_soon(req);
}

/* Body bytes arrived for a streamed answer: restart the inactivity deadline and hand
 * them over from the loop. */
void up_stream_data_arrived(sb_upstream_req *req)
{
    if (req->sstate == SS_STREAM && !req->paused) {
        up_req_arm_response(req);
        req_notify_soon(req);
    }
    stream_flow(req);
}

/* The size limit applies to bodies that are buffered whole. */
int up_body_limited(const sb_upstream_req *req)
{
    return req->sstate == SS_NONE || req->sstate == SS_BUFFER;
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
            up_req_complete(req, SB_REASON_INVALID_RESPONSE,
                            "%s: invalid HTTP/2 response: body over the response size limit",
                            c->peer);
        } else {
            sb_h2c_consume(&req->h2st, req->h2st.unconsumed);
        }
        up_h2_after_change(c);
        return;
    }
    if (len > p->max_response_bytes) {
        up_conn_fail_active(c, SB_REASON_INVALID_RESPONSE,
                            "invalid HTTP response: body over the response size limit");
        return;
    }
    if (req->read_held && c->bev) {
        up_conn_set_reading(c, 1);
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
            up_req_arm_response(req);
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
            up_h2_after_change(c);
        }
    }
    stream_flow(req);
}

/* ---------------------------------------------------------------- the request timer */

static void req_timer_run(sb_upstream_req *req);

/* The owner's answer is delivered here: one clock chain (util.h) for what it does. */
static void req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_clock_chain_begin();
    req_timer_run(arg);
    sb_clock_chain_end();
}

static void req_timer_run(sb_upstream_req *req)
{
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
        up_req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no answer within %d ms", req->host,
                        p->connect_timeout_ms);
        return;
    case REQ_WAITING: {
        up_origin *o = req->wait_origin;
        int sessions = o->n_h2 > 0;
        uint32_t max = sessions ? sb_h2c_max_streams(o->h2->h2) : 0;
        waiter_remove(req);
        if (sessions)
            up_req_complete(req, SB_REASON_CONNECT_TIMEOUT,
                            "no HTTP/2 stream to %s became free within %d ms (the agent allows %u "
                            "concurrent streams per connection)",
                            req->origin, p->connect_timeout_ms, (unsigned)max);
        else
            up_req_complete(req, SB_REASON_CONNECT_TIMEOUT,
                            "no HTTP/2 connection to %s within %d ms", req->origin,
                            p->connect_timeout_ms);
        return;
    }
    case REQ_CONNECTING: {
        char peer[PEER_MAX];
        snprintf(peer, sizeof(peer), "%s", req->conn ? req->conn->peer : req->last_peer);
        if (req->conn && req->conn->state == CONN_HANDSHAKE) {
            /* TCP got through; the TLS layer stalled (often https to a plain HTTP port). */
            req->conn->req = NULL;
            up_conn_close(req->conn);
            req->conn = NULL;
            char note[HOST_MAX + 4];
            up_req_complete(req, SB_REASON_TLS_ERROR,
                            "TLS handshake with %s%s: no answer within %d ms", peer,
                            up_tls_name_note(req, note, sizeof(note)), p->connect_timeout_ms);
            return;
        }
        if (req->conn) {
            req->conn->req = NULL;
            up_conn_close(req->conn);
            req->conn = NULL;
        }
        up_req_complete(req, SB_REASON_CONNECT_TIMEOUT, "connect %s: no connection within %d ms",
                        peer, p->connect_timeout_ms);
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
            up_req_complete(req, SB_REASON_RESPONSE_TIMEOUT, "%s: %s", c->peer, what_);
            up_h2_after_change(c);
            return;
        }
        up_conn_fail_active(c, SB_REASON_RESPONSE_TIMEOUT, what_);
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
    p->reap_ev = event_new(base, -1, 0, up_reap_cb, p);
    p->sweep_ev = event_new(base, -1, 0, up_sweep_cb, p);
    p->kill_ev = event_new(base, -1, 0, up_kill_cb, p);
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
    up_kill_cb(-1, 0, p);
    while (p->conns)
        up_conn_close(p->conns);
    /* Origins go with their last connection in the reaper; free what is left after. */
    event_del(p->reap_ev);
    up_reap_cb(-1, 0, p);
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

/* Why a request for |url| with |method| and |opts| cannot be sent (the completion's
 * detail; |*why| its reason when not an invalid request), or NULL when it can. */
static const char *submit_refusal(sb_upstream_pool *p, const sb_url *url, const char *method,
                                  const sb_upstream_send_opts *opts, sb_reason *why)
{
    if (url == NULL || url->host == NULL || url->path == NULL || url->authority == NULL ||
        strlen(url->host) >= HOST_MAX || url->port <= 0 || url->port > 65535)
        return "invalid upstream URL";
    if (!method_ok(method))
        return "invalid method";
    if (opts->on_head && opts->on_data == NULL)
        return "on_head without on_data";
    if (url->https && up_tls_ctx_get(p) == NULL) {
        *why = SB_REASON_TLS_ERROR;
        return p->tls_ctx_err;
    }
    return NULL;
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
    req->start_us = sb_chain_mono_us();
    sb_headers_init(&req->resp_headers);
    event_assign(&req->timer, p->base, -1, 0, req_timer_cb, req);
    event_assign(&req->notify, p->base, -1, 0, req_notify_cb, req);
    req->next = p->reqs;
    if (p->reqs)
        p->reqs->prev = req;
    p->reqs = req;

    const char *m = opts->method ? opts->method : "POST";
    sb_reason why = SB_REASON_INVALID_RESPONSE;
    const char *bad = submit_refusal(p, url, m, opts, &why);
    if (bad != NULL) {
        if (!opts->body_shared)
            up_drain_all(body); /* the body is ours to consume, sent or not */
        up_req_complete(req, why, "%s", bad);
        return req;
    }
    req->on_head = opts->on_head;
    req->on_data = opts->on_data;
    req->sstate = opts->on_head ? SS_UNDECIDED : SS_NONE;
    sb_copy_str(req->host, sizeof(req->host), url->host);
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
    req_spec_build(req, m, url, headers);
    req->body = evbuffer_new();
    if (body && evbuffer_get_length(body) > 0) {
        if (opts->body_shared)
            evbuffer_add_buffer_reference(req->body, body);
        else
            evbuffer_add_buffer(req->body, body);
    }
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
            up_conn_close(req->conn);
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
        up_opener_release(req, SB_REASON_NONE, NULL);
    if (h2conn)
        up_h2_after_change(h2conn);
    req_free(req, 0);
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
        req_notify_soon(req);
}

size_t sb_upstream_pool_idle(const sb_upstream_pool *p)
{
    return p ? __atomic_load_n(&p->n_idle, __ATOMIC_RELAXED) : 0; /* any thread (/metrics) */
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
