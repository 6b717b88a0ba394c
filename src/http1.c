/*
 * http1.c — the HTTP/1.1 server codec: libhttp-parser on a bufferevent (see http1.h).
 *
 * Role: turn bytes from one client connection into sb_requests for the router, and
 * the request layer's send_head/send_data/send_end calls back into HTTP/1.1 bytes.
 *
 * Design:
 *  - One h1_conn per connection, linked into worker->conns (an intrusive doubly linked
 *    list owned by this file; worker->nconns counts them).
 *  - Pipelining: every request gets a stream, allocated when it begins and queued in
 *    arrival order (at most H1_PIPELINE_MAX). Only the queue's head writes straight into
 *    the bufferevent's output; a later stream's bytes wait in its own evbuffer and are
 *    moved (not copied, evbuffer_add_buffer) once every earlier response is complete,
 *    so answers leave strictly in order whatever order handlers finish in. A stream is
 *    released and freed (its request detached and the codec's reference dropped) as
 *    soon as its whole response sits in the output buffer.
 *  - Output, write first (plain sockets; sb_bev_flush): once an entry point queued
 *    something complete — a whole response, a streamed head or chunk — the output is
 *    written with one writev from the connection's wr event, at the end of the loop
 *    turn (the answers of one turn leave in one burst, which wakes clients fewer times
 *    than writes spread over the turn); EV_WRITE is armed only when the socket did not
 *    take it all, and disarmed once drained. So a response costs one system call and no
 *    epoll change, pipelined answers share one writev, and the write-stall timeout runs
 *    only while the socket is full. Input on plain sockets comes from the connection's own
 *    EV_READ event (on_sock_read: one read(2), no FIONREAD); the bufferevent's EV_READ
 *    stays off. TLS bufferevents read and write by themselves.
 *  - Idle memory: an idle keep-alive connection holds its bufferevent, this record
 *    (its timer, read and write events inside) and nothing else: streams, requests and the
 * head-parsing scratch buffers exist only while a request does.
 *  - Parsing: the parser runs over the input buffer's chains in place and pauses at
 *    every message end; the loop then dispatches that request, so the router never runs
 *    inside a parser callback and the connection decides before each new request whether
 *    it may read more. New requests are not parsed while the ring is full, while more
 *    than H1_OUT_HIGH bytes wait in the output (a slow reader), after Connection: close,
 *    after an error, or once the worker is stopping; reading from the socket is disabled
 *    at the same time so TCP pushes back on the client. A request already begun is
 *    always read to its end.
 *  - Limits answered by the codec itself, in order behind earlier responses, each
 *    closing the connection: 400 malformed, 408 request not complete within
 *    --request-timeout-s, 413 body over --max-body-bytes (a Content-Length over the limit
 *    is refused before any body byte is read, also instead of 100 Continue), 431 request
 *    line + headers over --max-header-bytes or more than H1_MAX_HEADERS headers. After
 *    such an answer the connection half-closes and discards input for a moment
 *    ("lingering close") so the client reads the answer instead of a reset.
 *  - Timers: one event per connection, in one of three modes: idle (nothing in flight,
 *    output flushed: close silently after --idle-timeout-s), request (a request begun
 *    and not complete: 408 after --request-timeout-s), linger. Nothing times out while
 *    we are the slow side (a handler waiting on an upstream push); a client that stops
 *    reading our output is cut off by the bufferevent write timeout instead. The timer
 *    is lazy (conn_arm): changing modes moves a deadline, and libevent is asked only
 *    when the armed timer would fire too late.
 *  - Re-entrancy: every entry point (libevent callbacks, codec ops, public functions)
 *    brackets its work with conn_enter/conn_leave. Closing only sets a flag; the last
 *    conn_leave frees, so a connection is never freed under a callback still using it.
 *
 * HTTP/2: a connection whose first bytes are the prior-knowledge preface, or a TLS
 * connection whose handshake agreed on ALPN "h2", goes to conn_handoff_http2(), the
 * single place where the HTTP/2 codec (http2.c) takes the bufferevent over, with the
 * bytes already read still in its input buffer.
 *
 * TLS: bufferevents from --tls-listen arrive here before their handshake is done; the
 * handshake's BEV_EVENT_CONNECTED is not an error, and the idle timer bounds a client
 * that never finishes it.
 *
 * Never: write a response byte out of order, parse while paused for backpressure, free
 * a connection inside its own callback, or keep a pointer into the input buffer across
 * a parser call (header bytes are copied into per-connection scratch buffers first).
 */
#include "switchboard/http1.h"
#include "switchboard/alloc.h"
#include "switchboard/http2.h"
#include "switchboard/request.h"
#include "switchboard/router.h"
#include "switchboard/tls.h"
#include "switchboard/util.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#define H1_PIPELINE_MAX 32     /* requests in flight per connection */
#define H1_MAX_HEADERS 100     /* header fields per request */
#define H1_OUT_HIGH (1u << 20) /* output bytes above which no new request is parsed */
#define H1_LINGER_S 2          /* how long a failed connection drains input */
#define H1_LINE_SLACK 16       /* request-line bytes the parser does not report */

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN (sizeof(h2_preface) - 1)

typedef struct h1_conn h1_conn;

typedef struct h1_stream {
    h1_conn *conn;
    struct h1_stream *next; /* the next request in arrival order */
    sb_request *req;        /* the codec's reference */
    struct evbuffer *out;   /* bytes waiting for earlier responses (pipelining only) */
    long long remaining;    /* body bytes still owed (Content-Length), -1: until close */
    unsigned head_sent : 1;
    unsigned done : 1;       /* send_end seen: every byte is queued */
    unsigned chunked : 1;    /* Transfer-Encoding: chunked response */
    unsigned no_body : 1;    /* HEAD request, or 1xx/204/304: no body bytes */
    unsigned is_head : 1;    /* the request method is HEAD */
    unsigned http10 : 1;     /* the request was HTTP/1.0 */
    unsigned keep_alive : 1; /* the client allows another request after this one */
    unsigned close : 1;      /* the connection ends after this response */
    unsigned broken : 1;     /* the body was shorter than announced */
    unsigned streaming : 1;  /* no length given at send_head: every write goes out at once */
} h1_stream;

typedef enum { T_NONE = 0, T_IDLE, T_REQUEST, T_LINGER } h1_timer_mode;

struct h1_conn {
    h1_conn *prev, *next; /* worker->conns */
    sb_worker *w;
    const sb_config *cfg;
    struct bufferevent *bev;
    struct event timer;
    struct event rd; /* write_first: EV_READ on the socket (sb_bev_read), not the bev's */
    struct event wr; /* write_first: the deferred write of this loop turn (on_flush) */
    h1_timer_mode timer_mode;
    const struct timeval *idle_tv, *request_tv; /* common timeouts, NULL: disabled */
    uint64_t timer_due_us;                      /* when timer_mode's deadline passes (monotonic) */
    uint64_t timer_fires_us;                    /* when the armed timer fires at the latest */
    int timer_armed;                            /* |timer| is added and has not fired */
    http_parser parser;
    char peer[64];

    h1_stream *first, *last; /* streams in request order, allocated per request */
    unsigned count;
    h1_stream *cur;   /* the request being received (always the last) */
    h1_stream *ready; /* the request the parser just completed, to dispatch */

    /* The URL and the header being assembled. Pieces that lie in the chunk the parser is
     * reading are kept as pointers into it (d_*: the common case, a whole head in one
     * read, copies nothing before the header list); whatever is still pending when
     * http_parser_execute returns is spilled into the scratch buffers (url, hdr: field
     * bytes then value bytes), since the input buffer is drained then and the parser
     * delivers the rest in later pieces. */
    const char *d_url, *d_field, *d_value;
    size_t d_url_len, d_field_len, d_value_len;
    char *url;
    size_t url_len, url_cap;
    char *hdr;
    size_t hdr_len, hdr_cap, field_len;
    size_t head_bytes;
    unsigned nheaders;
    int in_value;
    int in_trailers;

    /* A limit hit inside a parser callback, answered after the parser returns. */
    int fail_status;
    const char *fail_code;
    const char *fail_msg;

    unsigned depth;             /* nesting of entry points; the last conn_leave frees */
    unsigned closing : 1;       /* free at the last conn_leave */
    unsigned dropping : 1;      /* releasing every stream: codec ops are no-ops */
    unsigned close_after : 1;   /* no new request; close once every response is out */
    unsigned failed : 1;        /* answered an error: no more parsing */
    unsigned linger : 1;        /* half-close and drain input before closing */
    unsigned lingering : 1;     /* doing so now */
    unsigned stopping : 1;      /* graceful shutdown of the worker */
    unsigned out_blocked : 1;   /* output above H1_OUT_HIGH */
    unsigned in_parse : 1;      /* inside conn_parse */
    unsigned input_waiting : 1; /* unparsed input left while parsing was not allowed */
    unsigned reading : 1;       /* reading enabled (rd, or EV_READ on the bufferevent) */
    unsigned peer_eof : 1;      /* the client closed its sending side */
    unsigned preface_checked : 1;
    unsigned write_first : 1;  /* plain socket: output is written by conn_flush */
    unsigned flush_wanted : 1; /* something complete was queued: write it (conn_flush) */
    unsigned flush_queued : 1; /* wr is active */
    unsigned flush_now : 1;    /* inside on_flush: conn_flush writes */
    const char *chunk_end;     /* end of the bytes http_parser_execute is reading */
};

static void h1_send_head(void *stream, int status, const sb_headers *headers, long long body_len);
static void h1_send_data(void *stream, struct evbuffer *data);
static void h1_send_end(void *stream);
static size_t h1_pending(void *stream);
static void h1_send_whole(void *stream, int status, const sb_headers *headers, long long body_len,
                          struct evbuffer *body);

static const sb_codec_ops h1_ops = {
    .send_head = h1_send_head,
    .send_data = h1_send_data,
    .send_end = h1_send_end,
    .pending = h1_pending,
    .send_whole = h1_send_whole,
};

/* ---- small helpers ---- */

static void scratch_append(char **buf, size_t *len, size_t *cap, const char *at, size_t n)
{
    if (n == 0)
        return; /* the parser may deliver an empty piece; *buf may still be NULL */
    if (*len + n > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + n)
            ncap *= 2;
        *buf = sb_realloc(*buf, ncap);
        *cap = ncap;
    }
    memcpy(*buf + *len, at, n);
    *len += n;
}

/* Copies the head's pieces that still point into the parser's chunk into the scratch
 * buffers: called before the chunk is drained, and before a piece that does not continue
 * a kept one is appended. */
static void scratch_spill(h1_conn *c)
{
    if (c->d_url != NULL) {
        scratch_append(&c->url, &c->url_len, &c->url_cap, c->d_url, c->d_url_len);
        c->d_url = NULL;
    }
    if (c->d_field != NULL) {
        scratch_append(&c->hdr, &c->hdr_len, &c->hdr_cap, c->d_field, c->d_field_len);
        c->field_len = c->hdr_len;
        if (c->d_value != NULL)
            scratch_append(&c->hdr, &c->hdr_len, &c->hdr_cap, c->d_value, c->d_value_len);
        c->d_field = c->d_value = NULL;
    }
}

/* Frees the request-head scratch buffers (the next request allocates them again). */
static void scratch_release(h1_conn *c)
{
    sb_free(c->url);
    sb_free(c->hdr);
    c->url = c->hdr = NULL;
    c->d_url = c->d_field = c->d_value = NULL;
    c->url_len = c->url_cap = 0;
    c->hdr_len = c->hdr_cap = c->field_len = 0;
}

static int stream_is_head(const h1_stream *s)
{
    return s == s->conn->first;
}

static struct evbuffer *conn_output(h1_conn *c)
{
    return bufferevent_get_output(c->bev);
}

/* Where bytes of |s|'s response go now: the socket's output for the head of the
 * pipeline, the stream's own waiting buffer for any later one. */
static struct evbuffer *stream_out(h1_stream *s)
{
    if (stream_is_head(s))
        return conn_output(s->conn);
    if (s->out == NULL)
        s->out = sb_evbuffer_new();
    return s->out;
}

static void conn_check_output(h1_conn *c)
{
    if (evbuffer_get_length(conn_output(c)) > H1_OUT_HIGH)
        c->out_blocked = 1;
}

/* ---- lifecycle ---- */

static void conn_update(h1_conn *c);
static void conn_free(h1_conn *c);

/* Write-first output (sb_bev_flush), at the end of the outermost entry point:
 * once something complete was queued (a whole response, a streamed head or chunk, a
 * 100 Continue), or when the connection is ending, so the head and body of one
 * response — and the answers to pipelined requests — leave in one writev. A response
 * head waiting for its body stays queued. TLS bufferevents write by themselves. */
static void conn_flush(h1_conn *c)
{
    int now = c->flush_now;
    c->flush_now = 0;
    if (c->bev == NULL || !c->write_first)
        return;
    size_t len = evbuffer_get_length(conn_output(c));
    if (len == 0 || (bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        sb_bev_flush(c->bev); /* drained: EV_WRITE off; or waiting on a full socket */
        return;
    }
    int ending = c->count == 0 && (c->close_after || c->failed || c->stopping);
    if (!c->flush_wanted && !ending)
        return;
    if (!now) {
        /* Written from the loop, after the callbacks of this turn: the answers of one
         * turn leave in one burst, which wakes the clients fewer times. Writing at once
         * saves ~0.6k instructions per push but cost ~0.7 us more user CPU per request
         * under load (bench/profile.sh push, issue 11's fourth round). */
        if (!c->flush_queued) {
            c->flush_queued = 1;
            event_active(&c->wr, EV_WRITE, 1);
        }
        return;
    }
    c->flush_wanted = 0;
    sb_bev_flush(c->bev);
}

static void conn_enter(h1_conn *c)
{
    c->depth++;
}

/* Ends an entry point. The outermost one re-evaluates what the connection may do now
 * (read, timers, closing) and frees it when it is closing. |c| is invalid afterwards
 * unless the caller knows an outer entry point is still running. */
static void conn_leave(h1_conn *c)
{
    if (--c->depth > 0)
        return;
    if (!c->closing) {
        conn_flush(c);
        conn_update(c);
    }
    if (c->closing) {
        c->depth = 1; /* anything conn_free triggers must not free again */
        conn_free(c);
    }
}

static void conn_close(h1_conn *c)
{
    c->closing = 1;
}

/* Releases and frees the head stream: its response is entirely in the output buffer
 * (or nobody will read it). */
static void stream_release_head(h1_conn *c)
{
    h1_stream *s = c->first;
    sb_request *r = s->req;
    c->first = s->next;
    if (c->first == NULL)
        c->last = NULL;
    c->count--;
    if (s->out != NULL)
        evbuffer_free(s->out);
    sb_free(s);
    sb_request_detach(r);
    sb_request_unref(r);
}

/* Detaches every stream still in the ring (their clients will not get an answer on
 * this connection) and empties it. */
static void conn_drop_streams(h1_conn *c)
{
    int was_dropping = c->dropping;
    c->dropping = 1;
    c->cur = NULL;
    c->ready = NULL;
    while (c->count > 0)
        stream_release_head(c);
    c->dropping = was_dropping;
}

/* Moves finished responses to the socket in request order, releasing each stream whose
 * bytes are all queued, and the next stream's waiting bytes once it becomes the head. */
static void conn_advance(h1_conn *c)
{
    struct evbuffer *output = conn_output(c);
    while (c->count > 0) {
        h1_stream *s = c->first;
        if (s->out != NULL && evbuffer_get_length(s->out) > 0)
            evbuffer_add_buffer(output, s->out);
        if (!s->done)
            break;
        int end_conn = s->close || s->broken;
        stream_release_head(c);
        if (end_conn) {
            c->close_after = 1;
            conn_drop_streams(c);
        }
    }
    conn_check_output(c);
}

static void conn_set_reading(h1_conn *c, int on)
{
    if (on == (int)c->reading)
        return;
    c->reading = (unsigned)on;
    if (c->write_first && on)
        event_add(&c->rd, NULL);
    else if (c->write_first)
        event_del(&c->rd);
    else if (on)
        bufferevent_enable(c->bev, EV_READ);
    else
        bufferevent_disable(c->bev, EV_READ);
}

/* Timers are lazy, the way nginx's are: a deadline further away than the armed timer
 * only moves timer_due_us, and a mode without deadline leaves the timer armed; when it
 * fires, on_timer re-arms for what is left or does nothing. A keep-alive connection
 * thus re-arms once per min(request, idle) timeout instead of two to three times per
 * request (~1k instructions of libevent's timeout queues per request). */
static void timer_add(h1_conn *c, const struct timeval *tv, uint64_t due)
{
    event_add(&c->timer, tv);
    c->timer_armed = 1;
    c->timer_fires_us = due; /* libevent counts from its cached time, never later than now */
}

static void conn_arm(h1_conn *c, h1_timer_mode mode)
{
    static const struct timeval linger_tv = {H1_LINGER_S, 0};
    const struct timeval *tv = NULL;
    int secs = 0;
    if (mode == T_IDLE)
        tv = c->idle_tv, secs = c->cfg->idle_timeout_s;
    else if (mode == T_REQUEST)
        tv = c->request_tv, secs = c->cfg->request_timeout_s;
    else if (mode == T_LINGER)
        tv = &linger_tv, secs = H1_LINGER_S;
    if (tv == NULL) {
        c->timer_mode = T_NONE; /* an armed timer finds nothing to do */
        return;
    }
    uint64_t due = sb_chain_mono_us() + (uint64_t)secs * 1000000u;
    c->timer_mode = mode;
    c->timer_due_us = due;
    if (c->timer_armed && c->timer_fires_us <= due)
        return; /* fires in time; on_timer re-arms for the rest */
    timer_add(c, tv, due);
}

/* 1 if the parser may consume input now. */
static int conn_can_parse(const h1_conn *c)
{
    if (c->closing || c->failed || c->lingering)
        return 0;
    if (c->cur != NULL)
        return 1; /* a request already begun is always read to its end */
    return !c->close_after && !c->stopping && !c->out_blocked && c->count < H1_PIPELINE_MAX;
}

/* After an error answer: half-close, then discard input until the client closes or
 * H1_LINGER_S pass, so the answer is not lost to a TCP reset. */
static void conn_start_linger(h1_conn *c)
{
    c->lingering = 1;
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0 && bufferevent_openssl_get_ssl(c->bev) == NULL)
        shutdown(fd, SHUT_WR);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    conn_set_reading(c, 1);
    conn_arm(c, T_LINGER);
}

static void conn_update(h1_conn *c)
{
    size_t outlen = evbuffer_get_length(conn_output(c));
    if (c->out_blocked && outlen == 0)
        c->out_blocked = 0;
    if (c->lingering)
        return;

    int ending = c->close_after || c->failed || c->stopping;
    if (ending && c->count == 0) {
        if (outlen > 0) {
            conn_set_reading(c, 0); /* the write callback comes back when flushed */
            if (c->timer_mode != T_NONE)
                conn_arm(c, T_NONE);
            return;
        }
        if (!c->peer_eof && (c->linger || evbuffer_get_length(bufferevent_get_input(c->bev)) > 0))
            conn_start_linger(c);
        else
            conn_close(c);
        return;
    }

    int can = conn_can_parse(c);
    conn_set_reading(c, can);

    h1_timer_mode want = T_NONE;
    if (c->cur != NULL)
        want = T_REQUEST;
    else if (c->count == 0 && outlen == 0)
        want = T_IDLE;
    if (want != c->timer_mode)
        conn_arm(c, want);

    if (can && c->input_waiting && !c->in_parse) {
        /* Input arrived while we could not parse; no read event will announce it
         * again, so run the read callback from the loop (never re-enter handlers). */
        c->input_waiting = 0;
        bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    }
}

static void conn_free(h1_conn *c)
{
    sb_worker *w = c->w;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    SB_OWNED_ADD(w->nconns, -1);

    conn_drop_streams(c);
    event_del(&c->timer);
    if (c->write_first) {
        event_del(&c->rd);
        event_del(&c->wr);
    }
    if (c->bev != NULL) /* NULL once handed over to the HTTP/2 codec */
        bufferevent_free(c->bev);
    scratch_release(c);
    sb_free(c);
}

/* ---- error answers ---- */

static h1_stream *stream_open(h1_conn *c)
{
    h1_stream *s = sb_calloc(1, sizeof(*s));
    s->conn = c;
    s->keep_alive = 1;
    s->req = sb_request_new(c->w, &h1_ops, s);
    memcpy(s->req->peer, c->peer, sizeof(s->req->peer));
    if (c->last != NULL)
        c->last->next = s;
    else
        c->first = s;
    c->last = s;
    c->count++;
    return s;
}

/* Answers |status| with a SPEC §2 error body, in order behind earlier responses, and
 * ends the connection after it. The answer goes to the request being received, or to
 * a fresh stream when the bytes never formed a request. */
static void conn_fail(h1_conn *c, int status, const char *code, const char *msg)
{
    if (c->failed || c->closing)
        return;
    c->failed = 1;
    c->linger = 1;
    h1_stream *s = c->cur;
    c->cur = NULL;
    if (s == NULL) {
        if (c->count >= H1_PIPELINE_MAX) {
            conn_close(c);
            return;
        }
        s = stream_open(c);
    }
    s->close = 1;
    s->keep_alive = 0;
    sb_response_error(s->req, status, code, "%s", msg);
}

static int fail_in_callback(h1_conn *c, int status, const char *code, const char *msg)
{
    c->fail_status = status;
    c->fail_code = code;
    c->fail_msg = msg;
    return -1; /* not 1: on_headers_complete would read 1 as "no body" */
}

/* ---- parser callbacks ---- */

static int over_head_limit(h1_conn *c, size_t more)
{
    c->head_bytes += more;
    return c->head_bytes > c->cfg->max_header_bytes;
}

static int on_message_begin(http_parser *p)
{
    h1_conn *c = p->data;
    if (c->count >= H1_PIPELINE_MAX) /* conn_can_parse rules this out */
        return fail_in_callback(c, 400, "bad_request", "too many pipelined requests");
    c->cur = stream_open(c);
    c->url_len = 0;
    c->hdr_len = 0;
    c->field_len = 0;
    c->d_url = c->d_field = c->d_value = NULL;
    c->in_value = 0;
    c->in_trailers = 0;
    c->nheaders = 0;
    c->head_bytes = H1_LINE_SLACK;
    conn_arm(c, T_REQUEST);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    h1_conn *c = p->data;
    if (over_head_limit(c, len))
        return fail_in_callback(c, 431, "headers_too_large",
                                "request line and headers exceed the configured limit");
    if (!sb_span_take(&c->d_url, &c->d_url_len, c->url_len == 0, at, len)) {
        scratch_spill(c);
        scratch_append(&c->url, &c->url_len, &c->url_cap, at, len);
    }
    /* http_parser (built non-strict) accepts any letters where "HTTP" belongs; the
     * bytes after the target, when they are in this chunk, must start the version. */
    const char *after = at + len;
    if (after < c->chunk_end) {
        size_t avail = (size_t)(c->chunk_end - after);
        if (memcmp(after, " HTTP/", avail < 6 ? avail : 6) != 0)
            return fail_in_callback(c, 400, "bad_request", "malformed HTTP version");
    }
    return 0;
}

static int commit_header(h1_conn *c)
{
    if (++c->nheaders > H1_MAX_HEADERS)
        return fail_in_callback(c, 431, "headers_too_large", "too many header fields");
    if (over_head_limit(c, 4)) /* ": " and CRLF */
        return fail_in_callback(c, 431, "headers_too_large",
                                "request line and headers exceed the configured limit");
    const char *f, *v;
    size_t flen, vlen;
    if (c->d_field != NULL) { /* the whole header lies in the chunk being read */
        f = c->d_field;
        flen = c->d_field_len;
        v = c->d_value != NULL ? c->d_value : "";
        vlen = c->d_value != NULL ? c->d_value_len : 0;
        c->d_field = c->d_value = NULL;
    } else {
        f = c->hdr;
        flen = c->field_len;
        v = c->hdr + c->field_len;
        vlen = c->hdr_len - c->field_len;
    }
    while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        vlen--;
    sb_headers_addn(&c->cur->req->headers, f, flen, v, vlen);
    c->hdr_len = 0;
    c->field_len = 0;
    c->in_value = 0;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    h1_conn *c = p->data;
    if (c->in_trailers)
        return 0; /* trailers of a chunked body are read and ignored */
    if (c->in_value && commit_header(c) != 0)
        return -1;
    if (over_head_limit(c, len))
        return fail_in_callback(c, 431, "headers_too_large",
                                "request line and headers exceed the configured limit");
    /* a value begun has been committed above: a kept field has no value yet */
    if (!sb_span_take(&c->d_field, &c->d_field_len, c->hdr_len == 0, at, len)) {
        scratch_spill(c);
        scratch_append(&c->hdr, &c->hdr_len, &c->hdr_cap, at, len);
        c->field_len = c->hdr_len;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    h1_conn *c = p->data;
    if (c->in_trailers)
        return 0;
    c->in_value = 1;
    if (over_head_limit(c, len))
        return fail_in_callback(c, 431, "headers_too_large",
                                "request line and headers exceed the configured limit");
    if (!sb_span_take(&c->d_value, &c->d_value_len, c->d_field != NULL, at, len)) {
        scratch_spill(c);
        scratch_append(&c->hdr, &c->hdr_len, &c->hdr_cap, at, len);
    }
    return 0;
}

/* Splits the request target into path and query (origin form, the common case, by
 * hand; absolute and authority forms through http_parser_parse_url). */
static int split_target(h1_conn *c, sb_request *r)
{
    const char *u = c->d_url != NULL ? c->d_url : c->url;
    size_t n = c->d_url != NULL ? c->d_url_len : c->url_len;
    if (n == 0)
        return -1;
    if (u[0] == '/') {
        const char *end = memchr(u, '#', n);
        if (end == NULL)
            end = u + n;
        const char *q = memchr(u, '?', (size_t)(end - u));
        r->path = sb_strndup(u, (size_t)((q ? q : end) - u));
        if (q != NULL)
            r->query = sb_strndup(q + 1, (size_t)(end - q - 1));
        return 0;
    }
    if (n == 1 && u[0] == '*') {
        r->path = sb_strdup("*");
        return 0;
    }
    int is_connect = c->parser.method == HTTP_CONNECT;
    struct http_parser_url pu;
    http_parser_url_init(&pu);
    if (http_parser_parse_url(u, n, is_connect, &pu) != 0)
        return -1;
    if (is_connect) {
        r->path = sb_strndup(u, n);
        return 0;
    }
    if (pu.field_set & (1 << UF_PATH))
        r->path = sb_strndup(u + pu.field_data[UF_PATH].off, pu.field_data[UF_PATH].len);
    else
        r->path = sb_strdup("/");
    if (pu.field_set & (1 << UF_QUERY))
        r->query = sb_strndup(u + pu.field_data[UF_QUERY].off, pu.field_data[UF_QUERY].len);
    return 0;
}

static sb_method map_method(unsigned m)
{
    switch (m) {
    case HTTP_GET:
        return SB_METHOD_GET;
    case HTTP_HEAD:
        return SB_METHOD_HEAD;
    case HTTP_POST:
        return SB_METHOD_POST;
    case HTTP_PUT:
        return SB_METHOD_PUT;
    case HTTP_DELETE:
        return SB_METHOD_DELETE;
    default:
        return SB_METHOD_OTHER;
    }
}

static int on_headers_complete(http_parser *p)
{
    h1_conn *c = p->data;
    h1_stream *s = c->cur;
    sb_request *r = s->req;
    if ((c->in_value || c->hdr_len > 0 || c->d_field != NULL) && commit_header(c) != 0)
        return -1;
    c->in_trailers = 1;
    int bad_target = split_target(c, r) != 0;
    scratch_release(c); /* the head is parsed: an idle connection keeps no scratch */
    if (bad_target)
        return fail_in_callback(c, 400, "bad_request", "malformed request target");
    r->method = map_method(p->method);
    r->method_name = http_method_str((enum http_method)p->method);
    s->is_head = r->method == SB_METHOD_HEAD;
    s->http10 = p->http_major < 1 || (p->http_major == 1 && p->http_minor == 0);
    s->keep_alive = http_should_keep_alive(p) != 0;
    if (!s->keep_alive)
        c->close_after = 1;

    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->cfg->max_body_bytes)
        return fail_in_callback(c, 413, "body_too_large",
                                "request body exceeds the configured limit");

    const char *expect = sb_headers_get(&r->headers, "Expect");
    int has_body =
        (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && !s->http10 && has_body) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        evbuffer_add(stream_out(s), cont, sizeof(cont) - 1);
        c->flush_wanted = 1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    h1_conn *c = p->data;
    sb_request *r = c->cur->req;
    if (evbuffer_get_length(r->body) + len > c->cfg->max_body_bytes)
        return fail_in_callback(c, 413, "body_too_large",
                                "request body exceeds the configured limit");
    evbuffer_add(r->body, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    h1_conn *c = p->data;
    c->ready = c->cur;
    c->cur = NULL;
    if (p->upgrade && p->method == HTTP_CONNECT)
        c->close_after = 1; /* whatever follows would be tunnel bytes */
    /* An Upgrade request (h2c, websocket) is answered as plain HTTP/1.1: since we never
     * send 101, the client keeps speaking HTTP/1.1 and parsing simply continues. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings h1_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- reading ---- */

/* The HTTP/2 hand-off point: |c| began with the prior-knowledge preface (still unread
 * in its input buffer) or agreed on "h2" by ALPN, and no request was parsed yet. The
 * HTTP/2 codec takes the bufferevent over; |c| closes without touching it again and is
 * freed (unlinked, uncounted) by the caller's conn_leave. sb_http2_conn_new processes
 * the buffered bytes from the loop, so the input buffer stays valid until we return. */
static void conn_handoff_http2(h1_conn *c)
{
    struct bufferevent *bev = c->bev;
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    conn_set_reading(c, 0);
    if (c->timer_mode != T_NONE)
        conn_arm(c, T_NONE);
    c->bev = NULL;
    conn_close(c);
    sb_http2_conn_new(c->w, bev, c->peer);
}

static void conn_dispatch_ready(h1_conn *c)
{
    h1_stream *s = c->ready;
    c->ready = NULL;
    if (s == NULL)
        return;
    sb_request *r = s->req;
    sb_request_ref(r); /* the handler may answer, and the stream release, right here */
    sb_router_dispatch(r);
    sb_request_unref(r);
}

static void conn_parse(h1_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    c->in_parse = 1;
    while (conn_can_parse(c) && evbuffer_get_length(in) > 0) {
        if (!c->preface_checked && sb_tls_alpn_is_h2(c->bev)) {
            conn_handoff_http2(c);
            break;
        }
        if (!c->preface_checked) {
            char first[H2_PREFACE_LEN];
            ev_ssize_t n = evbuffer_copyout(in, first, sizeof(first));
            if (n > 0 && memcmp(first, h2_preface, (size_t)n) == 0) {
                if ((size_t)n < H2_PREFACE_LEN)
                    break; /* could still be the preface: wait for more */
                conn_handoff_http2(c);
                break;
            }
            c->preface_checked = 1;
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (v.iov_len == 0) { /* an empty leading chain: never expected, never stall */
            v.iov_len = evbuffer_get_length(in);
            v.iov_base = evbuffer_pullup(in, -1);
        }
        c->chunk_end = (const char *)v.iov_base + v.iov_len;
        size_t n = http_parser_execute(&c->parser, &h1_settings, v.iov_base, v.iov_len);
        scratch_spill(c); /* nothing may point into the chunk once it is drained */
        evbuffer_drain(in, n);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            conn_dispatch_ready(c);
            continue;
        }
        if (e != HPE_OK) {
            if (c->fail_status != 0)
                conn_fail(c, c->fail_status, c->fail_code, c->fail_msg);
            else if (e == HPE_HEADER_OVERFLOW)
                conn_fail(c, 431, "headers_too_large", "request headers are too large");
            else
                conn_fail(c, 400, "bad_request", http_errno_description(e));
            break;
        }
        if (n == 0)
            break; /* cannot happen without an error; never spin */
    }
    c->in_parse = 0;
    c->input_waiting = evbuffer_get_length(in) > 0 && !conn_can_parse(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    h1_conn *c = arg;
    conn_enter(c);
    if (c->lingering) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
    } else if (!c->closing && !c->in_parse) {
        conn_parse(c);
    }
    conn_leave(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    h1_conn *c = arg;
    conn_enter(c);
    conn_leave(c); /* conn_flush stops EV_WRITE once drained; conn_update: resume
                    * parsing, or finish a close after flush */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    h1_conn *c = arg;
    conn_enter(c);
    if (what & BEV_EVENT_CONNECTED) {
        /* A TLS handshake finished. With ALPN "h2" the HTTP/2 codec takes over now, so
         * its SETTINGS leave without waiting for the client's first bytes. */
        if (!c->closing && c->count == 0 && !c->preface_checked && sb_tls_alpn_is_h2(bev))
            conn_handoff_http2(c);
    } else if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) && !c->lingering) {
        /* The client stopped sending. Responses not complete yet have nobody to go
         * to; complete ones already in the output are still flushed (a half-closed
         * client can read them), then the connection closes. */
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        conn_set_reading(c, 0);
        c->peer_eof = 1;
        c->close_after = 1;
        c->failed = 1;
        conn_drop_streams(c);
    } else {
        conn_close(c);
    }
    conn_leave(c);
}

/* write_first: the socket is readable. One read (no FIONREAD), then what the
 * bufferevent would have called. |c| may be freed by either callback. */
static void on_sock_read(evutil_socket_t fd, short what, void *arg)
{
    h1_conn *c = arg;
    sb_bev_read_dispatch(c->bev, on_read, on_event, c);
}

/* write_first: the write conn_flush deferred to the end of the loop turn. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    h1_conn *c = arg;
    c->flush_queued = 0;
    conn_enter(c);
    c->flush_now = 1;
    conn_leave(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    h1_conn *c = arg;
    c->timer_armed = 0;
    if (c->timer_mode == T_NONE)
        return; /* lazily left armed (conn_arm) */
    uint64_t now = sb_now_mono_us();
    if (now < c->timer_due_us) { /* the deadline moved on since the timer was armed */
        uint64_t left = c->timer_due_us - now;
        struct timeval tv = {(time_t)(left / 1000000u), (suseconds_t)(left % 1000000u)};
        timer_add(c, &tv, c->timer_due_us);
        return;
    }
    conn_enter(c);
    h1_timer_mode mode = c->timer_mode;
    c->timer_mode = T_NONE;
    if (mode == T_REQUEST && c->cur != NULL)
        conn_fail(c, 408, "request_timeout", "the request did not arrive in time");
    else if (mode == T_IDLE || mode == T_LINGER)
        conn_close(c);
    conn_leave(c);
}

/* ---- writing (the codec ops) ---- */

typedef struct h1_wbuf {
    struct evbuffer *out;
    size_t len;
    char buf[2048];
} h1_wbuf;

static void wb_add(h1_wbuf *wb, const char *p, size_t n)
{
    if (wb->len + n > sizeof(wb->buf)) {
        evbuffer_add(wb->out, wb->buf, wb->len);
        wb->len = 0;
        if (n > sizeof(wb->buf)) {
            evbuffer_add(wb->out, p, n);
            return;
        }
    }
    memcpy(wb->buf + wb->len, p, n);
    wb->len += n;
}

static void wb_str(h1_wbuf *wb, const char *s)
{
    wb_add(wb, s, strlen(s));
}

/* Decimal digits of |v| (the per-response path avoids printf). */
static void wb_uint(h1_wbuf *wb, unsigned long long v)
{
    char digits[24];
    size_t i = sizeof(digits);
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    wb_add(wb, digits + i, sizeof(digits) - i);
}

static void wb_flush(h1_wbuf *wb)
{
    if (wb->len > 0)
        evbuffer_add(wb->out, wb->buf, wb->len);
    wb->len = 0;
}

static void h1_send_head(void *stream, int status, const sb_headers *headers, long long body_len)
{
    h1_stream *s = stream;
    h1_conn *c = s->conn;
    if (c->closing || c->dropping || s->head_sent)
        return;
    conn_enter(c);
    s->head_sent = 1;
    if (status < 100 || status > 999)
        status = 500;
    int bodyless = (status >= 100 && status < 200) || status == 204 || status == 304;
    s->no_body = s->is_head || bodyless;
    if (!s->keep_alive)
        s->close = 1;
    if (body_len < 0) {
        s->remaining = -1;
        s->streaming = 1;
        c->flush_wanted = 1; /* the client waits for the head of a stream */
        if (s->http10 && !bodyless)
            s->close = 1; /* no chunked encoding in HTTP/1.0: the close ends the body */
        else if (!bodyless)
            s->chunked = 1;
    } else {
        s->remaining = body_len;
    }
    if (c->stopping && c->cur == NULL && s == c->last)
        s->close = 1; /* the last answer before a graceful stop says so */
    if (s->close)
        c->close_after = 1;

    h1_wbuf wb;
    wb.out = stream_out(s);
    wb.len = 0;
    wb_add(&wb, "HTTP/1.1 ", 9);
    wb_uint(&wb, (unsigned long long)status);
    wb_add(&wb, " ", 1);
    wb_str(&wb, sb_http_reason_phrase(status));
    wb_add(&wb, "\r\n", 2);
    size_t dlen;
    const char *date = sb_http_date(bufferevent_get_base(c->bev), &dlen);
    wb_add(&wb, "Date: ", 6);
    wb_add(&wb, date, dlen);
    wb_add(&wb, "\r\n", 2);
    for (size_t i = 0; headers != NULL && i < headers->count; i++) {
        /* Headers the codec owns (framing, hop-by-hop, Date): a handler's copy is
         * dropped; so is a name or value that would break the head. */
        const char *name = headers->items[i].name;
        const char *value = headers->items[i].value;
        size_t nlen = strcspn(name, "\r\n:"), vlen = strcspn(value, "\r\n");
        if (nlen == 0 || name[nlen] != '\0' || value[vlen] != '\0' ||
            sb_headers_reserved(name, nlen) & (SB_HDR_HOP | SB_HDR_DATE))
            continue;
        wb_add(&wb, name, nlen);
        wb_add(&wb, ": ", 2);
        wb_add(&wb, value, vlen);
        wb_add(&wb, "\r\n", 2);
    }
    if (s->chunked) {
        wb_str(&wb, "Transfer-Encoding: chunked\r\n");
    } else if (body_len >= 0 && !bodyless) {
        wb_str(&wb, "Content-Length: ");
        wb_uint(&wb, (unsigned long long)body_len);
        wb_add(&wb, "\r\n", 2);
    }
    if (s->close)
        wb_str(&wb, "Connection: close\r\n");
    else if (s->http10)
        wb_str(&wb, "Connection: keep-alive\r\n");
    wb_add(&wb, "\r\n", 2);
    wb_flush(&wb);
    conn_check_output(c);
    conn_leave(c);
}

static void h1_send_data(void *stream, struct evbuffer *data)
{
    h1_stream *s = stream;
    h1_conn *c = s->conn;
    size_t n = evbuffer_get_length(data);
    if (c->closing || c->dropping || !s->head_sent || s->done || s->no_body || n == 0) {
        evbuffer_drain(data, n);
        return;
    }
    conn_enter(c);
    struct evbuffer *out = stream_out(s);
    if (s->chunked) {
        char size[24];
        int len = snprintf(size, sizeof(size), "%zx\r\n", n);
        evbuffer_add(out, size, (size_t)len);
        evbuffer_add_buffer(out, data);
        evbuffer_add(out, "\r\n", 2);
    } else if (s->remaining >= 0) {
        /* Never send more than announced: extra bytes would be read as the next
         * response. A handler bug, so the surplus is dropped. */
        size_t take = (unsigned long long)s->remaining < n ? (size_t)s->remaining : n;
        evbuffer_remove_buffer(data, out, take);
        evbuffer_drain(data, evbuffer_get_length(data));
        s->remaining -= (long long)take;
    } else {
        evbuffer_add_buffer(out, data);
    }
    if (s->streaming)
        c->flush_wanted = 1;
    conn_check_output(c);
    conn_leave(c);
}

static void h1_send_end(void *stream)
{
    h1_stream *s = stream;
    h1_conn *c = s->conn;
    if (c->closing || c->dropping || s->done)
        return;
    conn_enter(c);
    s->done = 1;
    c->flush_wanted = 1;
    if (!s->head_sent) {
        s->broken = 1; /* nothing was sent: the client cannot be answered in order */
    } else if (!s->no_body) {
        if (s->chunked)
            evbuffer_add(stream_out(s), "0\r\n\r\n", 5);
        else if (s->remaining > 0)
            s->broken = 1; /* shorter than Content-Length: only a close can say so */
    }
    if (stream_is_head(s))
        conn_advance(c);
    conn_leave(c);
}

/* The three steps inside one entry point: the connection is settled (flush, reading,
 * timers, release) once, by the outer conn_leave. */
static void h1_send_whole(void *stream, int status, const sb_headers *headers, long long body_len,
                          struct evbuffer *body)
{
    h1_stream *s = stream;
    h1_conn *c = s->conn;
    conn_enter(c);
    h1_send_head(s, status, headers, body_len);
    if (body_len > 0)
        h1_send_data(s, body); /* drains |body| also when it sends nothing */
    h1_send_end(s);            /* may free |s|; |c| lives until conn_leave */
    conn_leave(c);
}

static size_t h1_pending(void *stream)
{
    h1_stream *s = stream;
    h1_conn *c = s->conn;
    if (c->closing)
        return 0;
    size_t n = evbuffer_get_length(conn_output(c));
    if (!stream_is_head(s) && s->out != NULL)
        n += evbuffer_get_length(s->out);
    return n;
}

/* ---- public ---- */

void sb_http1_conn_new(sb_worker *w, struct bufferevent *bev, const char *peer)
{
    struct event_base *base = bufferevent_get_base(bev);
    h1_conn *c = sb_calloc(1, sizeof(*c));
    c->w = w;
    c->cfg = w->cfg;
    c->bev = bev;
    snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "");
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    event_assign(&c->timer, base, -1, 0, on_timer, c);
    c->idle_tv = sb_codec_timeout(base, c->cfg->idle_timeout_s);
    c->request_tv = sb_codec_timeout(base, c->cfg->request_timeout_s);
    c->stopping = w->draining != 0;

    c->next = w->conns;
    if (c->next != NULL)
        c->next->prev = c;
    w->conns = c;
    SB_OWNED_ADD(w->nconns, 1);

    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    c->write_first = (unsigned)sb_codec_bev_init(bev, c->cfg); /* TCP_NODELAY: server.c */
    if (c->write_first) {
        event_assign(&c->rd, base, bufferevent_getfd(bev), EV_READ | EV_PERSIST, on_sock_read, c);
        event_assign(&c->wr, base, -1, 0, on_flush, c);
    }

    conn_enter(c);
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        c->input_waiting = 1; /* bytes read before the hand-over (e.g. TLS) */
    conn_leave(c);
}

void sb_http1_shutdown(sb_worker *w)
{
    h1_conn *next;
    for (h1_conn *c = w->conns; c != NULL; c = next) {
        next = c->next;
        conn_enter(c);
        c->stopping = 1;
        conn_leave(c); /* idle: closes (after flushing); busy: when its answers are out */
    }
}

void sb_http1_close_all(sb_worker *w)
{
    h1_conn *next;
    for (h1_conn *c = w->conns; c != NULL; c = next) {
        next = c->next;
        conn_enter(c);
        conn_close(c);
        conn_leave(c);
    }
}
