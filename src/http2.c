/*
 * http2.c — the HTTP/2 server codec: nghttp2 on a bufferevent (see http2.h).
 *
 * Role: turn HTTP/2 frames from one client connection into sb_requests for the router,
 * and the request layer's send_head/send_data/send_end calls into HEADERS and DATA
 * frames. nghttp2 does the protocol (framing, HPACK, stream states, flow control, the
 * client preface check); this file does I/O, limits, lifetimes and the glue.
 *
 * Design:
 *  - One h2_conn per connection, linked into worker->h2conns (an intrusive doubly
 *    linked list owned by this file) and counted in worker->nconns. One h2_stream per
 *    request stream, created on its first HEADERS and linked into the connection in
 *    creation order (the oldest stream first: timeouts and body budget use that).
 *  - Input: the read callback feeds the input buffer to nghttp2_session_mem_recv in
 *    slices of at most H2_RECV_SLICE bytes. Callbacks (http2_callbacks.c; the records
 *    they share with this file are in http2_int.h) only record what happened: a
 *    completed request (or one that must be refused: 413/431) goes on the ready queue,
 *    a closed stream on the reap queue. Between slices, and after the last one, the
 *    queues are worked off outside nghttp2: ready requests are dispatched to the router
 *    (never from inside an nghttp2 callback), closed streams are detached from their
 *    requests and freed. A request whose stream the client reset in the same slice is
 *    therefore never dispatched at all — the cheap answer to rapid-reset floods.
 *  - Output: nghttp2_session_send writes frames into the bufferevent's output buffer.
 *    Response bodies sit in the stream's own evbuffer until nghttp2's data source asks
 *    for them (NGHTTP2_DATA_FLAG_NO_COPY: the bytes move from the stream buffer to the
 *    socket buffer by evbuffer chain transfer, never through nghttp2's frame buffer).
 *    With no body bytes queued yet the data source answers NGHTTP2_ERR_DEFERRED, and
 *    send_data/send_end resume it, so a streamed (SSE) body leaves as it is written.
 *    Codec calls from outside any entry point (an async handler answering later) only
 *    schedule a flush event, so send_head + send_data + send_end coalesce into one pass.
 *    On a plain socket the outermost conn_leave then writes the output itself with one
 *    writev (sb_bev_flush): EV_WRITE is armed only while the socket is full.
 *  - Backpressure: above H2_OUT_HIGH bytes in the socket's output, the send callbacks
 *    answer NGHTTP2_ERR_WOULDBLOCK and reading stops (so a client that does not read
 *    cannot make us queue its answers, PING ACKs or anything else); both resume below
 *    H2_OUT_LOW. A stream's own buffer is bounded by the client's flow-control window
 *    and reported through pending() so relays can stop reading upstream.
 *  - Request bodies and flow control: the codec takes body bytes as they arrive (the
 *    router sees the request once it is complete). The connection window is consumed
 *    at once. A stream's window is consumed as its bytes are stored, while the bodies
 *    stored on this connection and not yet taken by a handler stay within a budget;
 *    over it, only the oldest incomplete stream keeps its window open (so one body can
 *    always complete and free the budget: no deadlock), the others stall on their
 *    windows until a handler takes a body. More than --max-body-bytes in one stream
 *    (announced by content-length or actually sent) → 413, then RST_STREAM NO_ERROR.
 *  - Limits: header list over --max-header-bytes (counted as RFC 9113 does, 32 bytes of
 *    overhead per field) or more than H2_MAX_HEADERS fields → 431; at most
 *    H2_MAX_STREAMS concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS, enforced by
 *    nghttp2 with REFUSED_STREAM); a request not complete within --request-timeout-s →
 *    408; more than H2_RST_MAX RST_STREAM frames from the client within H2_RST_WINDOW_US
 *    → GOAWAY ENHANCE_YOUR_CALM and close (CVE-2023-44487; nghttp2's own token bucket,
 *    set explicitly below, is a second bound); CONTINUATION, SETTINGS and PING floods
 *    are bounded by nghttp2's options.
 *  - Timers: one per connection, either idle (no stream open and output flushed: GOAWAY
 *    after --idle-timeout-s) or request (the oldest incomplete request's deadline), and
 *    one for the graceful stop (the final GOAWAY if the client does not answer our
 *    PING). A client that stops reading is cut off by the bufferevent write timeout.
 *  - Graceful stop: a GOAWAY shutdown notice and a PING; on the PING's ACK (one round
 *    trip: every request the client sent before seeing the notice has arrived) or after
 *    H2_DRAIN_GRACE_S, the final GOAWAY with the last stream we took. Those streams
 *    finish; nghttp2 then wants neither to read nor to write, and the connection closes
 *    once its output is flushed.
 *  - Re-entrancy: every entry point (libevent callbacks, codec ops, public functions)
 *    brackets its work with conn_enter/conn_leave. Closing only sets a flag; the
 *    outermost conn_leave works off the queues, flushes, and frees a closing
 *    connection, so neither a connection nor an nghttp2 session is ever freed under a
 *    callback still running on it, and nghttp2 is never re-entered.
 *
 * Never: call nghttp2_session_mem_recv/send from inside an nghttp2 callback, dispatch a
 * request from inside one, free a stream nghttp2 may still call back about (streams
 * are freed only after on_stream_close, outside nghttp2), or write a response byte for
 * a stream after its request was detached.
 */
#include "switchboard/http2.h"
#include "switchboard/alloc.h"
#include "switchboard/log.h"
#include "switchboard/request.h"
#include "switchboard/router.h"
#include "switchboard/util.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "http2_int.h"

const uint8_t h2_drain_ping[8] = {'s', 'b', '-', 'd', 'r', 'a', 'i', 'n'};

static void h2_send_head(void *stream, int status, const sb_headers *headers, long long body_len);
static void h2_send_data(void *stream, struct evbuffer *data);
static void h2_send_end(void *stream);
static size_t h2_pending(void *stream);

static const sb_codec_ops h2_ops = {
    .send_head = h2_send_head,
    .send_data = h2_send_data,
    .send_end = h2_send_end,
    .pending = h2_pending,
};

/* ---- small helpers ---- */

struct evbuffer *h2_conn_output(h2_conn *c)
{
    return bufferevent_get_output(c->bev);
}

/* ---- lifecycle ---- */

static void conn_process(h2_conn *c);
static void conn_update(h2_conn *c);
static void conn_free(h2_conn *c);

static void conn_enter(h2_conn *c)
{
    c->depth++;
}

/* Ends an entry point. The outermost one works off the ready and reap queues, flushes
 * nghttp2's output, re-evaluates reading and timers, and frees a closing connection.
 * |c| is invalid afterwards unless an outer entry point is known to be running. */
static void conn_leave(h2_conn *c)
{
    if (c->depth > 1) {
        c->depth--;
        return;
    }
    /* Still at depth 1 here: codec calls made by handlers while the queues are worked
     * off do not recurse into this. */
    if (!c->closing)
        conn_process(c);
    if (!c->closing) {
        if (c->write_first)
            sb_bev_flush(c->bev); /* one writev for everything this pass framed */
        conn_update(c);
    }
    c->depth = 0;
    if (c->closing) {
        c->depth = 1; /* anything conn_free triggers must not free again */
        conn_free(c);
    }
}

/* Ends a codec call. From inside an entry point the outer conn_leave does the work;
 * from outside (an async handler) a flush is scheduled on the loop instead, so the
 * head, data and end of one response leave in one pass. */
static void conn_leave_op(h2_conn *c)
{
    if (c->depth > 1) {
        c->depth--;
        return;
    }
    c->depth = 0;
    if (!c->flush_pending) {
        c->flush_pending = 1;
        event_active(&c->flush_ev, EV_WRITE, 0);
    }
}

static void conn_close(h2_conn *c)
{
    c->closing = 1;
}

static void conn_set_reading(h2_conn *c, int on)
{
    if (on == (int)c->reading)
        return;
    c->reading = (unsigned)on;
    if (on)
        bufferevent_enable(c->bev, EV_READ);
    else
        bufferevent_disable(c->bev, EV_READ);
}

/* ---- streams ---- */

void h2_ready_push(h2_conn *c, h2_stream *s)
{
    if (s->in_ready)
        return;
    s->in_ready = 1;
    s->ready_next = NULL;
    if (c->ready_tail != NULL)
        c->ready_tail->ready_next = s;
    else
        c->ready_head = s;
    c->ready_tail = s;
}

h2_stream *h2_stream_new(h2_conn *c, int32_t id)
{
    h2_stream *s = sb_calloc(1, sizeof(*s));
    s->conn = c;
    s->id = id;
    s->remaining = -1;
    s->content_length = -1;
    s->req = sb_request_new(c->w, &h2_ops, s);
    memcpy(s->req->peer, c->peer, sizeof(s->req->peer));
    if (c->cfg->request_timeout_s > 0)
        s->deadline_us = sb_chain_mono_us() + (uint64_t)c->cfg->request_timeout_s * 1000000u;
    s->prev = c->last;
    if (c->last != NULL)
        c->last->next = s;
    else
        c->first = s;
    c->last = s;
    c->nstreams++;
    return s;
}

/* 1 while the request of |s| is still arriving and may time out or stall (also while
 * its rest is being read to be dropped after an early answer). */
static int stream_receiving(const h2_stream *s)
{
    return !s->req_complete && !s->closed && (s->fail_status == 0 || s->discarding);
}

h2_stream *h2_oldest_receiving(h2_conn *c)
{
    for (h2_stream *s = c->first; s != NULL; s = s->next) {
        if (stream_receiving(s))
            return s;
    }
    return NULL;
}

/* Reopens held-back stream windows while the body budget allows, and always the
 * oldest incomplete stream's (it must be able to finish). */
static void conn_release_windows(h2_conn *c)
{
    h2_stream *oldest = NULL;
    int oldest_known = 0;
    for (h2_stream *s = c->first; s != NULL; s = s->next) {
        if (s->unconsumed == 0)
            continue;
        if (!oldest_known) {
            oldest = h2_oldest_receiving(c);
            oldest_known = 1;
        }
        if (c->body_buffered > c->body_budget && s != oldest)
            continue;
        if (!s->closed)
            nghttp2_session_consume_stream(c->session, s->id, s->unconsumed);
        s->unconsumed = 0;
    }
}

/* The body of |s| is no longer the codec's to hold: a handler took it, or it was
 * dropped. Frees its share of the budget. */
void h2_stream_uncount_body(h2_conn *c, h2_stream *s)
{
    if (s->body_counted == 0 && s->unconsumed == 0)
        return;
    c->body_buffered -= s->body_counted;
    s->body_counted = 0;
    if (s->unconsumed > 0 && !s->closed)
        nghttp2_session_consume_stream(c->session, s->id, s->unconsumed);
    s->unconsumed = 0;
    conn_release_windows(c);
}

/* Unlinks and frees |s|, detaching its request (its on_gone runs if the response was
 * not complete). Only outside nghttp2 callbacks. */
static void stream_free(h2_conn *c, h2_stream *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        c->first = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        c->last = s->prev;
    c->nstreams--;
    c->body_buffered -= s->body_counted;
    s->body_counted = 0;
    sb_request *r = s->req;
    s->req = NULL;
    if (r != NULL) {
        sb_request_detach(r);
        sb_request_unref(r);
    }
    if (s->out != NULL)
        evbuffer_free(s->out);
    sb_free(s->authority);
    sb_free(s);
}

/* Refuses the request of |s| with |status| instead of dispatching it; answered from
 * the ready queue, outside nghttp2. The first refusal wins. */
void h2_stream_fail(h2_conn *c, h2_stream *s, int status, const char *code, const char *msg)
{
    if (s->fail_status != 0 || s->dispatched)
        return;
    s->fail_status = status;
    s->fail_code = code;
    s->fail_msg = msg;
    evbuffer_drain(s->req->body, evbuffer_get_length(s->req->body));
    h2_ready_push(c, s);
}

/* ---- the ready and reap queues (outside nghttp2 only) ---- */

static void conn_dispatch_ready(h2_conn *c)
{
    h2_stream *s;
    /* Emptied completely, also when closing, so the reap queue never holds a stream
     * that is still queued here. */
    while ((s = c->ready_head) != NULL) {
        c->ready_head = s->ready_next;
        if (c->ready_head == NULL)
            c->ready_tail = NULL;
        s->in_ready = 0;
        s->ready_next = NULL;
        if (c->closing || s->closed || s->req == NULL)
            continue; /* reset by the client before we got to it: never dispatched */
        sb_request *r = s->req;
        sb_request_ref(r); /* the handler may answer, and the stream close, right here */
        if (s->fail_status != 0) {
            if (!s->answered) {
                s->answered = 1;
                h2_stream_uncount_body(c, s);
                sb_response_error(r, s->fail_status, s->fail_code, "%s", s->fail_msg);
            }
        } else if (!s->dispatched) {
            s->dispatched = 1;
            h2_stream_uncount_body(c, s); /* the handler takes the body */
            sb_router_dispatch(r);
        }
        sb_request_unref(r);
    }
}

static void conn_reap(h2_conn *c)
{
    h2_stream *s;
    while ((s = c->reap_head) != NULL) {
        c->reap_head = s->reap_next;
        s->reap_next = NULL;
        s->in_reap = 0;
        stream_free(c, s);
    }
}

/* Lets nghttp2 write what it can. Fatal errors close the connection. */
static void conn_flush(h2_conn *c)
{
    if (c->closing)
        return;
    int rv = nghttp2_session_send(c->session);
    if (rv != 0)
        conn_close(c);
}

/* Works off the queues and flushes until nothing changes: dispatching may complete
 * responses (streams close on send), closing streams may run on_gone hooks that answer
 * other streams. Each round frees streams, so this ends. */
static void conn_process(h2_conn *c)
{
    for (;;) {
        conn_dispatch_ready(c);
        conn_reap(c);
        if (c->closing)
            return;
        conn_flush(c);
        if (c->closing || (c->ready_head == NULL && c->reap_head == NULL))
            return;
    }
}

/* ---- timers ---- */

static void conn_arm(h2_conn *c, h2_timer_mode mode, const struct timeval *tv)
{
    if (tv == NULL || mode == T_NONE) {
        if (c->timer_mode != T_NONE)
            event_del(&c->timer);
        c->timer_mode = T_NONE;
        return;
    }
    event_add(&c->timer, tv);
    c->timer_mode = mode;
}

static void conn_arm_request_timer(h2_conn *c)
{
    h2_stream *s = h2_oldest_receiving(c);
    if (s == NULL || s->deadline_us == 0) {
        conn_arm(c, T_NONE, NULL);
        return;
    }
    uint64_t now = sb_chain_mono_us();
    uint64_t left = s->deadline_us > now ? s->deadline_us - now : 0;
    struct timeval tv = {(time_t)(left / 1000000u), (suseconds_t)(left % 1000000u)};
    conn_arm(c, T_REQUEST, &tv);
}

static void conn_update(h2_conn *c)
{
    size_t outlen = evbuffer_get_length(h2_conn_output(c));
    if (outlen >= H2_OUT_HIGH)
        c->out_blocked = 1;
    else if (outlen <= H2_OUT_LOW)
        c->out_blocked = 0;

    int want_read = nghttp2_session_want_read(c->session);
    int want_write = nghttp2_session_want_write(c->session);
    if (!want_read && !want_write) {
        /* GOAWAY exchanged and every stream done, or a fatal protocol error answered:
         * close once the last frames are out (the write callback comes back). */
        conn_set_reading(c, 0);
        if (outlen == 0)
            conn_close(c);
        else if (c->timer_mode != T_NONE)
            conn_arm(c, T_NONE, NULL);
        return;
    }
    conn_set_reading(c, want_read && !c->out_blocked && !c->flooded);

    h2_timer_mode want = T_NONE;
    if (h2_oldest_receiving(c) != NULL && c->cfg->request_timeout_s > 0)
        want = T_REQUEST;
    else if (c->nstreams == 0 && outlen == 0 && c->cfg->idle_timeout_s > 0)
        want = T_IDLE;
    if (want == c->timer_mode)
        return; /* armed on entering the mode: activity does not extend it */
    if (want == T_REQUEST)
        conn_arm_request_timer(c);
    else if (want == T_IDLE)
        conn_arm(c, T_IDLE, sb_codec_timeout(bufferevent_get_base(c->bev), c->cfg->idle_timeout_s));
    else
        conn_arm(c, T_NONE, NULL);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    h2_conn *c = arg;
    conn_enter(c);
    h2_timer_mode mode = c->timer_mode;
    c->timer_mode = T_NONE;
    if (mode == T_IDLE && c->nstreams == 0) {
        /* GOAWAY NO_ERROR naming the last stream; nghttp2 then wants nothing more. */
        nghttp2_session_terminate_session(c->session, NGHTTP2_NO_ERROR);
    } else if (mode == T_REQUEST) {
        uint64_t now = sb_now_mono_us();
        for (h2_stream *s = c->first; s != NULL; s = s->next) {
            if (!stream_receiving(s) || s->deadline_us == 0 || s->deadline_us > now)
                continue;
            if (s->discarding) {
                s->discarding = 0; /* answered already: stop waiting for the rest */
                nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
            } else {
                h2_stream_fail(c, s, 408, "request_timeout", "the request did not arrive in time");
            }
        }
    }
    conn_leave(c);
}

/* The final GOAWAY: streams up to the last one we took are served, later ones are
 * refused (the client may retry them elsewhere). */
void h2_conn_final_goaway(h2_conn *c)
{
    if (c->goaway_final)
        return;
    c->goaway_final = 1;
    event_del(&c->drain_timer);
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
}

static void conn_begin_drain(h2_conn *c)
{
    if (c->stopping)
        return;
    c->stopping = 1;
    if (nghttp2_submit_shutdown_notice(c->session) != 0 ||
        nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, h2_drain_ping) != 0) {
        h2_conn_final_goaway(c);
        return;
    }
    struct timeval tv = {H2_DRAIN_GRACE_S, 0};
    event_add(&c->drain_timer, &tv);
}

static void on_drain_timer(evutil_socket_t fd, short what, void *arg)
{
    h2_conn *c = arg;
    conn_enter(c);
    h2_conn_final_goaway(c);
    conn_leave(c);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    h2_conn *c = arg;
    c->flush_pending = 0;
    conn_enter(c);
    conn_leave(c);
}

/* ---- reading ---- */

static void conn_recv(h2_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    c->in_recv = 1;
    while (!c->closing && evbuffer_get_length(in) > 0) {
        if (c->flooded) {
            evbuffer_drain(in, evbuffer_get_length(in));
            break;
        }
        if (c->out_blocked)
            break; /* resumed from the write callback */
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, H2_RECV_SLICE, NULL, &v, 1) < 1)
            break;
        size_t len = v.iov_len < H2_RECV_SLICE ? v.iov_len : H2_RECV_SLICE;
        if (len == 0) {
            len = evbuffer_get_length(in) < H2_RECV_SLICE ? evbuffer_get_length(in) : H2_RECV_SLICE;
            v.iov_base = evbuffer_pullup(in, (ev_ssize_t)len);
        }
        ssize_t n = nghttp2_session_mem_recv(c->session, v.iov_base, len);
        if (n < 0) {
            /* Bad preface, flood detected by nghttp2, or a fatal failure: nothing
             * more can be said on this connection. */
            conn_close(c);
            break;
        }
        evbuffer_drain(in, (size_t)n);
        conn_process(c);
    }
    c->in_recv = 0;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    h2_conn *c = arg;
    sb_clock_chain_begin(); /* the streams this read starts share one clock reading */
    conn_enter(c);
    if (!c->closing && !c->in_recv)
        conn_recv(c);
    conn_leave(c);
    sb_clock_chain_end();
}

static void on_write(struct bufferevent *bev, void *arg)
{
    h2_conn *c = arg;
    conn_enter(c);
    if (evbuffer_get_length(h2_conn_output(c)) <= H2_OUT_LOW)
        c->out_blocked = 0;
    conn_flush(c);
    if (!c->out_blocked && !c->in_recv && evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        conn_recv(c); /* input held back while we were blocked */
    conn_leave(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    h2_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED)
        return; /* a TLS handshake completing: nothing to do */
    conn_enter(c);
    /* EOF: HTTP/2 has no half-close of the connection, so nobody is left to answer.
     * Errors and the write timeout (a client that stopped reading) end it too. */
    conn_close(c);
    conn_leave(c);
}

/* ---- writing (the codec ops) ---- */

/* 1 if codec calls on |s| must do nothing. */
static int stream_dead(const h2_stream *s)
{
    const h2_conn *c = s->conn;
    return c->closing || c->dropping || s->closed;
}

static void stream_resume(h2_conn *c, h2_stream *s)
{
    if (!s->deferred)
        return;
    s->deferred = 0;
    nghttp2_session_resume_data(c->session, s->id);
}

static void stream_reset(h2_conn *c, h2_stream *s, uint32_t code)
{
    nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->id, code);
}

static int header_ok(const char *name, const char *value)
{
    static const char tchar_extra[] = "!#$%&'*+-.^_`|~";
    if (name[0] == '\0')
        return 0;
    for (const char *p = name; *p != '\0'; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch != '\0' && strchr(tchar_extra, ch) != NULL)))
            return 0;
    }
    return strpbrk(value, "\r\n") == NULL;
}

static void h2_send_head(void *stream, int status, const sb_headers *headers, long long body_len)
{
    h2_stream *s = stream;
    h2_conn *c = s->conn;
    if (stream_dead(s) || s->head_sent)
        return;
    conn_enter(c);
    s->head_sent = 1;
    if (status < 200 || status > 999)
        status = 500; /* the request layer has no interim responses */
    int bodyless = status == 204 || status == 304;
    s->no_body = s->is_head || bodyless || body_len == 0;
    s->remaining = body_len;

    size_t nh = headers != NULL ? headers->count : 0;
    nghttp2_nv stack_nv[H2_STACK_NV];
    nghttp2_nv *nva = nh + 3 <= H2_STACK_NV ? stack_nv : sb_malloc((nh + 3) * sizeof(*nva));
    /* Lower-cased names (HTTP/2 requires them), in one scratch block. */
    size_t names = 0;
    for (size_t i = 0; i < nh; i++)
        names += strlen(headers->items[i].name) + 1;
    char stack_names[1024];
    char *lower = names <= sizeof(stack_names) ? stack_names : sb_malloc(names);

    char status_str[4] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10),
                          (char)('0' + status % 10), '\0'};
    char cl[24];
    size_t n = 0;
    nva[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status_str, 7, 3,
                            NGHTTP2_NV_FLAG_NO_COPY_NAME};
    if (body_len >= 0 && !bodyless) {
        /* Decimal digits by hand: the per-response path avoids printf. */
        size_t i = sizeof(cl);
        unsigned long long v = (unsigned long long)body_len;
        do {
            cl[--i] = (char)('0' + v % 10);
            v /= 10;
        } while (v > 0);
        nva[n++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl + i, 14, sizeof(cl) - i,
                                NGHTTP2_NV_FLAG_NO_COPY_NAME};
    }
    size_t dlen;
    const char *date = sb_http_date(bufferevent_get_base(c->bev), &dlen);
    nva[n++] = (nghttp2_nv){(uint8_t *)"date", (uint8_t *)(uintptr_t)date, 4, dlen,
                            NGHTTP2_NV_FLAG_NO_COPY_NAME};
    char *lp = lower;
    for (size_t i = 0; i < nh; i++) {
        const char *name = headers->items[i].name;
        const char *value = headers->items[i].value;
        size_t nl = strlen(name);
        if (!header_ok(name, value) ||
            sb_headers_reserved(name, nl) & (SB_HDR_HOP | SB_HDR_DATE | SB_HDR_HOST))
            continue; /* the codec's own, or forbidden in HTTP/2 (RFC 9113 §8.2.2) */
        for (size_t k = 0; k < nl; k++) {
            char ch = name[k];
            lp[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        lp[nl] = '\0';
        nva[n++] = (nghttp2_nv){(uint8_t *)lp, (uint8_t *)(uintptr_t)value, nl, strlen(value),
                                NGHTTP2_NV_FLAG_NONE};
        lp += nl + 1;
    }

    nghttp2_data_provider prd;
    prd.source.ptr = s;
    prd.read_callback = h2_read_body;
    if (nghttp2_submit_response(c->session, s->id, nva, n, s->no_body ? NULL : &prd) != 0)
        stream_reset(c, s, NGHTTP2_INTERNAL_ERROR);
    if (nva != stack_nv)
        sb_free(nva);
    if (lower != stack_names)
        sb_free(lower);
    conn_leave_op(c);
}

static void h2_send_data(void *stream, struct evbuffer *data)
{
    h2_stream *s = stream;
    h2_conn *c = s->conn;
    size_t n = evbuffer_get_length(data);
    if (stream_dead(s) || !s->head_sent || s->end || s->no_body || n == 0) {
        evbuffer_drain(data, n);
        return;
    }
    conn_enter(c);
    if (s->out == NULL)
        s->out = sb_evbuffer_new();
    if (s->remaining >= 0) {
        /* Never more than content-length announced: the client would reset the
         * stream. A handler bug, so the surplus is dropped. */
        size_t take = (unsigned long long)s->remaining < n ? (size_t)s->remaining : n;
        evbuffer_remove_buffer(data, s->out, take);
        evbuffer_drain(data, evbuffer_get_length(data));
        s->remaining -= (long long)take;
    } else {
        evbuffer_add_buffer(s->out, data);
    }
    stream_resume(c, s);
    conn_leave_op(c);
}

static void h2_send_end(void *stream)
{
    h2_stream *s = stream;
    h2_conn *c = s->conn;
    if (stream_dead(s) || s->end)
        return;
    conn_enter(c);
    s->end = 1;
    if (!s->head_sent || (!s->no_body && s->remaining > 0))
        stream_reset(c, s, NGHTTP2_INTERNAL_ERROR); /* no answer, or shorter than announced */
    else if (!s->no_body)
        stream_resume(c, s);
    conn_leave_op(c);
}

static size_t h2_pending(void *stream)
{
    h2_stream *s = stream;
    h2_conn *c = s->conn;
    if (stream_dead(s))
        return 0;
    size_t n = evbuffer_get_length(h2_conn_output(c));
    if (s->out != NULL)
        n += evbuffer_get_length(s->out);
    return n;
}

/* ---- public ---- */

static void conn_free(h2_conn *c)
{
    sb_worker *w = c->w;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->h2conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    SB_OWNED_ADD(w->nconns, -1);

    c->dropping = 1;
    c->ready_head = c->ready_tail = NULL;
    c->reap_head = NULL;
    while (c->first != NULL)
        stream_free(c, c->first);
    nghttp2_session_del(c->session);
    event_del(&c->timer);
    event_del(&c->drain_timer);
    event_del(&c->flush_ev);
    bufferevent_free(c->bev);
    sb_free(c);
}

void sb_http2_conn_new(sb_worker *w, struct bufferevent *bev, const char *peer)
{
    struct event_base *base = bufferevent_get_base(bev);
    h2_conn *c = sb_calloc(1, sizeof(*c));
    c->w = w;
    c->cfg = w->cfg;
    c->bev = bev;
    snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "");
    event_assign(&c->timer, base, -1, 0, on_timer, c);
    event_assign(&c->drain_timer, base, -1, 0, on_drain_timer, c);
    event_assign(&c->flush_ev, base, -1, 0, on_flush, c);
    c->body_budget = 2 * c->cfg->max_body_bytes;
    if (c->body_budget < H2_BODY_BUDGET_MIN)
        c->body_budget = H2_BODY_BUDGET_MIN;
    h2_session_new(c);
    size_t max_list = c->cfg->max_header_bytes;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
         max_list > UINT32_MAX ? UINT32_MAX : (uint32_t)max_list},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, SB_ARRAY_LEN(iv));
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);

    c->next = w->h2conns;
    if (c->next != NULL)
        c->next->prev = c;
    w->h2conns = c;
    SB_OWNED_ADD(w->nconns, 1);

    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(bev, EV_WRITE, H2_OUT_LOW, 0);
    c->write_first = (unsigned)sb_codec_bev_init(bev, c->cfg); /* TCP_NODELAY: server.c */
    conn_set_reading(c, 1);
    if (w->draining)
        conn_begin_drain(c);

    /* The server preface goes out now; input (the client preface, already read by the
     * HTTP/1.1 codec) is processed from the loop, never inside the caller's callback. */
    conn_flush(c);
    if (!c->closing && c->write_first)
        sb_bev_flush(bev);
    if (!c->closing)
        conn_update(c);
    if (c->closing) {
        /* Only a failed send can get here; free from the loop, not under the caller. */
        c->flush_pending = 1;
        event_active(&c->flush_ev, EV_WRITE, 0);
    } else if (evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
        bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    }
}

void sb_http2_shutdown(sb_worker *w)
{
    h2_conn *next;
    for (h2_conn *c = w->h2conns; c != NULL; c = next) {
        next = c->next;
        conn_enter(c);
        conn_begin_drain(c);
        conn_leave(c);
    }
}

void sb_http2_close_all(sb_worker *w)
{
    h2_conn *next;
    for (h2_conn *c = w->h2conns; c != NULL; c = next) {
        next = c->next;
        conn_enter(c);
        conn_close(c);
        conn_leave(c);
    }
}
