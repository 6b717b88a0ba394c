/*
 * upstream_h2.c — one nghttp2 client session over the owner's bufferevent (see
 * upstream_h2.h).
 *
 * Lifecycle: sb_h2c_new() when a connection is established and HTTP/2 was chosen (ALPN
 * "h2" or h2c prior knowledge); sb_h2c_submit() per request; sb_h2c_read() and
 * sb_h2c_flush() from the owner's bufferevent callbacks; sb_h2c_free() when the owner
 * closes the connection, always from outside this file's call stack.
 *
 * nghttp2 calls back into this file while it parses (mem_recv) or serializes
 * (mem_send). Those callbacks only record into the stream records (status, headers,
 * body bytes, how the stream ended) and put the stream on a pending-event list; the
 * owner hears about it once nghttp2 has returned (emit_events). That is what lets the
 * owner submit a retry, reset a stream or consume bytes from its event callback without
 * re-entering nghttp2, and it is why this file never frees anything from an nghttp2
 * callback.
 *
 * Stream records belong to the owner. A record is tied to its nghttp2 stream through
 * the stream user data; resetting a stream clears that pointer and cancels a request
 * still queued inside nghttp2, so no callback can reach a record after the owner let go
 * of it (callbacks that find no record ignore the stream, the request body reader
 * fails it).
 *
 * Allocation: the session object, nghttp2's own per-stream state, and nothing per
 * request here unless a request has more than NV_STACK headers (then one array).
 *
 * Never: block, free from an nghttp2 callback, call the owner from an nghttp2 callback,
 * or serialize past SB_H2C_OUT_HIGH bytes of unsent output.
 */
#include "switchboard/upstream_h2.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/util.h"

#define NV_STACK 48      /* header entries built on the stack */
#define NAMES_STACK 2048 /* bytes of lower-cased header names built on the stack */
#define MAX_STREAM_ID_LEFT ((1u << 31) - 3)

struct sb_h2c {
    nghttp2_session *ng;
    struct bufferevent *bev;
    sb_h2c_event_fn on_event;
    void *owner;
    sb_h2c_stream *streams; /* submitted, not yet ended or reset */
    size_t n_open;
    sb_h2c_stream *ev_head, *ev_tail; /* streams with events to deliver, FIFO */
    unsigned emitting : 1;
    unsigned dead : 1;
    unsigned proto_err : 1;
    unsigned got_bytes : 1;
    unsigned got_settings : 1; /* the agent's first SETTINGS arrived */
    unsigned write_first : 1;  /* plain socket: write_ev writes the output */
    struct event write_ev;     /* write_first: one writev per loop turn (write_out) */
    int32_t goaway_last;       /* the agent's GOAWAY last_stream_id, -1 before one */
    char err[200];             /* why the session is over */
    char last_msg[120];        /* nghttp2's last error text (error_callback2) */
};

/* ---------------------------------------------------------------- stream list */

static void stream_unlink(sb_h2c *s, sb_h2c_stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->prev = st->next = NULL;
    st->session = NULL;
    s->n_open--;
}

static void ev_queue(sb_h2c *s, sb_h2c_stream *st, unsigned ev)
{
    st->events |= ev;
    if (st->on_ev_list)
        return;
    st->on_ev_list = 1;
    st->ev_next = NULL;
    if (s->ev_tail)
        s->ev_tail->ev_next = st;
    else
        s->ev_head = st;
    s->ev_tail = st;
}

static void ev_remove(sb_h2c *s, sb_h2c_stream *st)
{
    if (!st->on_ev_list)
        return;
    sb_h2c_stream *prev = NULL;
    for (sb_h2c_stream *x = s->ev_head; x; prev = x, x = x->ev_next) {
        if (x != st)
            continue;
        if (prev)
            prev->ev_next = x->ev_next;
        else
            s->ev_head = x->ev_next;
        if (s->ev_tail == x)
            s->ev_tail = prev;
        break;
    }
    st->ev_next = NULL;
    st->on_ev_list = 0;
    st->events = 0;
}

/* Ends |st| as |end| and queues its END event; the session forgets it. */
static void stream_end(sb_h2c *s, sb_h2c_stream *st, sb_h2c_end end, const char *why)
{
    if (st->session != s)
        return;
    st->end = end;
    if (why)
        st->why = why;
    stream_unlink(s, st);
    ev_queue(s, st, SB_H2C_EV_END);
}

/* Delivers pending events, outside nghttp2. Re-entrant calls (an owner callback that
 * flushes) return at once; the outer loop picks up what they queued. */
static void emit_events(sb_h2c *s)
{
    if (s->emitting)
        return;
    s->emitting = 1;
    while (s->ev_head) {
        sb_h2c_stream *st = s->ev_head;
        s->ev_head = st->ev_next;
        if (s->ev_head == NULL)
            s->ev_tail = NULL;
        st->ev_next = NULL;
        st->on_ev_list = 0;
        unsigned ev = st->events;
        st->events = 0;
        if (ev)
            s->on_event(st, ev, s->owner); /* |st| may be gone after an END event */
    }
    s->emitting = 0;
}

/* Marks the session over and reports what is still open. |why| (may be NULL) is kept
 * unless an earlier, more precise text is there. */
static void session_die(sb_h2c *s, int proto, const char *why)
{
    if (s->dead)
        return;
    s->dead = 1;
    if (proto)
        s->proto_err = 1;
    if (s->err[0] == '\0' && why)
        snprintf(s->err, sizeof(s->err), "%s", why);
    sb_h2c_fail_all(s, s->proto_err ? SB_H2C_END_INVALID : SB_H2C_END_CLOSED,
                    s->err[0] ? s->err : "the HTTP/2 connection ended");
}

static sb_h2c_stream *stream_of(nghttp2_session *ng, int32_t id)
{
    return id > 0 ? nghttp2_session_get_stream_user_data(ng, id) : NULL;
}

/* ---------------------------------------------------------------- nghttp2 callbacks */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sb_h2c_stream *st = stream_of(ng, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->header_bytes = 0;
    st->block_status = 0;
    st->in_trailers = st->status != 0;
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    sb_h2c_stream *st = stream_of(ng, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->header_bytes += namelen + valuelen + 32; /* RFC 9113 §6.5.2 accounting */
    if (st->header_bytes > SB_H2C_MAX_HEADER_BYTES) {
        st->why = "response header block over 64 KiB";
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
    }
    if (st->in_trailers)
        return 0; /* trailers are not relayed */
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        /* nghttp2's HTTP checks guarantee three digits. */
        int v = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            v = v * 10 + (value[i] - '0');
        st->block_status = v;
        return 0;
    }
    if (namelen > 0 && name[0] == ':')
        return 0;
    if (st->block_status / 100 == 1)
        return 0; /* an interim response's headers are not the answer's */
    sb_headers_addn(st->headers, (const char *)name, namelen, (const char *)value, valuelen);
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sb_h2c *s = ud;
    sb_h2c_stream *st = stream_of(ng, frame->hd.stream_id);
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (st == NULL)
            return 0;
        st->rx_bytes += frame->hd.length;
        if (!st->in_trailers && st->status == 0 && st->block_status >= 200) {
            st->status = st->block_status;
            ev_queue(s, st, SB_H2C_EV_HEAD);
        }
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            st->remote_end = 1;
        return 0;
    case NGHTTP2_DATA:
        if (st && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            st->remote_end = 1;
        return 0;
    case NGHTTP2_RST_STREAM:
        if (st) {
            st->peer_reset = 1;
            st->error_code = frame->rst_stream.error_code;
        }
        return 0;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
            s->got_settings = 1;
        return 0;
    case NGHTTP2_GOAWAY:
        s->goaway_last = frame->goaway.last_stream_id;
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR && s->err[0] == '\0')
            snprintf(s->err, sizeof(s->err), "the agent sent GOAWAY (%s)",
                     nghttp2_http2_strerror(frame->goaway.error_code));
        return 0;
    default:
        return 0;
    }
}

static int on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                              size_t len, void *ud)
{
    sb_h2c *s = ud;
    /* The connection window goes back at once: a slow stream must not stall others. */
    nghttp2_session_consume_connection(ng, len);
    sb_h2c_stream *st = stream_of(ng, id);
    if (st == NULL)
        return 0;
    evbuffer_add(st->data, data, len);
    st->unconsumed += len;
    st->rx_bytes += len;
    ev_queue(s, st, SB_H2C_EV_DATA);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud)
{
    sb_h2c *s = ud;
    sb_h2c_stream *st = stream_of(ng, id);
    if (st == NULL || st->session != s)
        return 0;
    sb_h2c_end end;
    const char *why = NULL;
    if (st->remote_end && st->status >= 200 && st->why == NULL) {
        end = SB_H2C_END_COMPLETE; /* a later RST_STREAM(NO_ERROR) changes nothing */
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
        end = SB_H2C_END_REFUSED; /* by RST_STREAM, or beyond the agent's GOAWAY */
    } else if (st->peer_reset) {
        end = SB_H2C_END_RESET;
    } else if (st->why != NULL || error_code != NGHTTP2_NO_ERROR) {
        /* We reset it: nghttp2 found the answer breaking HTTP/2 or HTTP rules. */
        end = SB_H2C_END_INVALID;
        if (st->why == NULL)
            why = nghttp2_http2_strerror(error_code);
    } else {
        end = SB_H2C_END_CLOSED;
        why = "stream closed before the response completed";
    }
    st->error_code = error_code;
    stream_end(s, st, end, why);
    return 0;
}

static int on_invalid_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error,
                                 void *ud)
{
    sb_h2c *s = ud;
    if (frame->hd.stream_id == 0) {
        s->proto_err = 1;
        if (s->err[0] == '\0')
            snprintf(s->err, sizeof(s->err), "invalid HTTP/2 frame from the agent: %s",
                     nghttp2_strerror(lib_error));
        return 0;
    }
    sb_h2c_stream *st = stream_of(ng, frame->hd.stream_id);
    if (st && st->why == NULL)
        st->why = nghttp2_strerror(lib_error);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sb_h2c *s = ud;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        sb_h2c_stream *st = stream_of(ng, frame->hd.stream_id);
        if (st)
            st->sent = 1;
    } else if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
        /* nghttp2 ends the session because the agent broke the protocol. */
        s->proto_err = 1;
        if (s->err[0] == '\0')
            snprintf(s->err, sizeof(s->err), "HTTP/2 protocol error (%s%s%s)",
                     nghttp2_http2_strerror(frame->goaway.error_code), s->last_msg[0] ? ": " : "",
                     s->last_msg);
    }
    return 0;
}

static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error,
                             void *ud)
{
    sb_h2c *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    /* A request that never left (GOAWAY arrived first). A record reset by its owner is
     * no longer on the list, and the stream may not exist yet, so look it up here. */
    for (sb_h2c_stream *st = s->streams; st; st = st->next) {
        if (st->id == frame->hd.stream_id) {
            stream_end(s, st, SB_H2C_END_REFUSED, "request not sent: the agent is going away");
            break;
        }
    }
    return 0;
}

static int on_error(nghttp2_session *ng, int lib_error, const char *msg, size_t len, void *ud)
{
    sb_h2c *s = ud;
    size_t n = len < sizeof(s->last_msg) - 1 ? len : sizeof(s->last_msg) - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)msg[i];
        s->last_msg[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    s->last_msg[n] = '\0';
    return 0;
}

/* The size of the next DATA frame of a request body. The bytes themselves are written
 * by send_data (NGHTTP2_DATA_FLAG_NO_COPY), straight from the owner's buffer into the
 * output — one copy, not two through nghttp2's frame buffer — and without draining it,
 * so a refused stream can be sent again elsewhere. nghttp2 calls send_data for this
 * frame before it asks for the next one, so body_off advances there. */
static ssize_t body_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    sb_h2c_stream *st = stream_of(ng, id);
    if (st == NULL || st->body == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* reset by its owner */
    size_t total = evbuffer_get_length(st->body);
    size_t left = total > st->body_off ? total - st->body_off : 0;
    size_t n = len < left ? len : left;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->body_off + n >= total)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* Frames nghttp2 serialized, appended to the output while it holds less than
 * SB_H2C_OUT_HIGH. */
static ssize_t send_frames(nghttp2_session *ng, const uint8_t *data, size_t len, int flags,
                           void *ud)
{
    sb_h2c *s = ud;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(out) >= SB_H2C_OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    if (evbuffer_add(out, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)len;
}

/* One DATA frame of a request body (see body_read): header, padding, and |len| bytes
 * of the body from body_off, copied once into the output. */
static int send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t len,
                     nghttp2_data_source *src, void *ud)
{
    sb_h2c *s = ud;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    sb_h2c_stream *st = stream_of(ng, frame->hd.stream_id);
    if (st == NULL || st->body == NULL || evbuffer_get_length(st->body) < st->body_off + len)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* reset by its owner meanwhile */
    if (evbuffer_get_length(out) >= SB_H2C_OUT_HIGH)
        return NGHTTP2_ERR_WOULDBLOCK;
    size_t padlen = frame->data.padlen;
    sb_h2_data_head(out, framehd, padlen);
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(st->body, &pos, st->body_off, EVBUFFER_PTR_SET);
    size_t left = len;
    while (left > 0) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(st->body, (ev_ssize_t)left, &pos, v, (int)SB_ARRAY_LEN(v));
        if (n <= 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        if (n > (int)SB_ARRAY_LEN(v))
            n = (int)SB_ARRAY_LEN(v);
        size_t step = 0;
        for (int i = 0; i < n && step < left; i++) {
            size_t take = v[i].iov_len < left - step ? v[i].iov_len : left - step;
            evbuffer_add(out, v[i].iov_base, take);
            step += take;
        }
        left -= step;
        if (left > 0 && evbuffer_ptr_set(st->body, &pos, step, EVBUFFER_PTR_ADD) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st->body_off += len;
    sb_h2_data_tail(out, padlen);
    return 0;
}

static nghttp2_session_callbacks *callbacks(void)
{
    /* Built once per session; cheap next to a TCP connection. */
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        fprintf(stderr, "switchboard: nghttp2_session_callbacks_new failed\n");
        abort();
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    nghttp2_session_callbacks_set_send_callback(cb, send_frames);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data);
    return cb;
}

/* ---------------------------------------------------------------- public API */

/* write_first: what this loop turn serialized, in one writev. */
static void write_out(evutil_socket_t fd, short what, void *arg)
{
    sb_h2c *s = arg;
    sb_bev_flush(s->bev);
}

sb_h2c *sb_h2c_new(struct bufferevent *bev, sb_h2c_event_fn on_event, void *owner)
{
    sb_h2c *s = sb_calloc(1, sizeof(*s));
    s->bev = bev;
    s->on_event = on_event;
    s->owner = owner;
    s->goaway_last = -1;
    s->write_first = (unsigned)sb_bev_write_first(bev);
    event_assign(&s->write_ev, bufferevent_get_base(bev), -1, 0, write_out, s);

    nghttp2_session_callbacks *cb = callbacks();
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        fprintf(stderr, "switchboard: nghttp2_option_new failed\n");
        abort();
    }
    /* Stream windows go back only when the owner consumed the bytes (backpressure). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    int rv = nghttp2_session_client_new3(&s->ng, cb, s, opt, sb_alloc_nghttp2());
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) {
        fprintf(stderr, "switchboard: nghttp2_session_client_new3: %s\n", nghttp2_strerror(rv));
        abort();
    }
    const nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, SB_H2C_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, SB_H2C_MAX_HEADER_BYTES},
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, SB_ARRAY_LEN(iv));
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, SB_H2C_CONN_WINDOW);
    sb_h2c_flush(s);
    return s;
}

void sb_h2c_free(sb_h2c *s)
{
    if (s == NULL)
        return;
    while (s->streams)
        stream_unlink(s, s->streams);
    while (s->ev_head) {
        sb_h2c_stream *st = s->ev_head;
        s->ev_head = st->ev_next;
        st->ev_next = NULL;
        st->on_ev_list = 0;
        st->events = 0;
    }
    nghttp2_session_del(s->ng);
    event_del(&s->write_ev);
    sb_free(s);
}

static void lower_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
    }
}

/* nghttp2_nv wants non-const pointers but only reads them (it copies during submit). */
#define NV(n, nl, v, vl)                                                                           \
    ((nghttp2_nv){(uint8_t *)(uintptr_t)(n), (uint8_t *)(uintptr_t)(v), (nl), (vl),                \
                  NGHTTP2_NV_FLAG_NONE})

int32_t sb_h2c_submit(sb_h2c *s, sb_h2c_stream *st, const sb_h2c_request *rq)
{
    if (s->dead || !nghttp2_session_check_request_allowed(s->ng) ||
        nghttp2_session_get_next_stream_id(s->ng) > MAX_STREAM_ID_LEFT)
        return -1;

    size_t nv_count = 5 + rq->n_headers;
    nghttp2_nv nv_small[NV_STACK];
    nghttp2_nv *nv = nv_count <= NV_STACK ? nv_small : sb_malloc(nv_count * sizeof(*nv));
    size_t names_len = 0;
    for (size_t i = 0; i < rq->n_headers; i++)
        names_len += strlen(rq->headers[i].name);
    char names_small[NAMES_STACK];
    char *names = names_len <= sizeof(names_small) ? names_small : sb_malloc(names_len);

    /* nghttp2 copies names and values during submit: everything here may be transient. */
    size_t n = 0;
    char clen[24];
    nv[n++] = NV(":method", 7, rq->method, strlen(rq->method));
    nv[n++] = NV(":scheme", 7, rq->scheme, strlen(rq->scheme));
    nv[n++] = NV(":authority", 10, rq->authority, strlen(rq->authority));
    nv[n++] = NV(":path", 5, rq->path, strlen(rq->path));
    if (rq->content_length >= 0) {
        int w = snprintf(clen, sizeof(clen), "%lld", rq->content_length);
        nv[n++] = NV("content-length", 14, clen, (size_t)w);
    }
    char *np = names;
    for (size_t i = 0; i < rq->n_headers; i++) {
        const sb_header *h = &rq->headers[i];
        size_t nl = strlen(h->name);
        lower_copy(np, h->name, nl);
        nv[n++] = NV(np, nl, h->value, strlen(h->value));
        np += nl;
    }

    size_t body_len = rq->body ? evbuffer_get_length(rq->body) : 0;
    nghttp2_data_provider prd;
    prd.source.ptr = st;
    prd.read_callback = body_read;
    st->body = body_len > 0 ? rq->body : NULL;
    st->body_off = 0;
    int32_t id = nghttp2_submit_request(s->ng, NULL, nv, n, body_len > 0 ? &prd : NULL, st);
    if (nv != nv_small)
        sb_free(nv);
    if (names != names_small)
        sb_free(names);
    if (id < 0) {
        st->body = NULL;
        return -1;
    }
    st->id = id;
    st->session = s;
    st->end = SB_H2C_END_NONE;
    st->prev = NULL;
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->n_open++;
    return id;
}

#undef NV

void sb_h2c_reset_stream(sb_h2c_stream *st, uint32_t error_code)
{
    sb_h2c *s = st->session;
    if (s == NULL) {
        /* Already ended; an END event may still be pending if the owner resets from
         * another stream's callback: drop it, the owner no longer wants it. */
        return;
    }
    /* Cut the tie first: no callback may find |st| once the owner lets go of it. A
     * request still queued inside nghttp2 is canceled by the RST_STREAM submission. */
    nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
    if (!s->dead)
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, error_code);
    ev_remove(s, st);
    stream_unlink(s, st);
    st->body = NULL;
}

void sb_h2c_consume(sb_h2c_stream *st, size_t n)
{
    if (n > st->unconsumed)
        n = st->unconsumed;
    st->unconsumed -= n;
    if (n > 0 && st->session && !st->session->dead)
        nghttp2_session_consume_stream(st->session->ng, st->id, n);
}

static int check_done(sb_h2c *s)
{
    if (!s->dead && !nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))
        session_die(s, s->proto_err, s->proto_err ? "HTTP/2 protocol error" : NULL);
    emit_events(s);
    return s->dead ? -1 : 0;
}

int sb_h2c_flush(sb_h2c *s)
{
    if (s->dead)
        return -1;
    int rv = nghttp2_session_send(s->ng); /* send_frames / send_data stop at OUT_HIGH */
    if (rv != 0) {
        char why[160];
        snprintf(why, sizeof(why), "HTTP/2 session failed while sending: %s", nghttp2_strerror(rv));
        session_die(s, 1, why);
    }
    /* Streams submitted in the same loop turn leave together: the write is made once,
     * from the loop, after whatever else this turn serializes. */
    if (s->write_first && evbuffer_get_length(bufferevent_get_output(s->bev)) > 0 &&
        !event_pending(&s->write_ev, EV_TIMEOUT, NULL))
        event_active(&s->write_ev, EV_TIMEOUT, 1);
    return check_done(s);
}

int sb_h2c_read(sb_h2c *s)
{
    if (s->dead)
        return -1;
    struct evbuffer *in = bufferevent_get_input(s->bev);
    if (!s->got_bytes && evbuffer_get_length(in) >= 5) {
        s->got_bytes = 1;
        /* A server that does not speak HTTP/2 answers the preface in HTTP/1.x. */
        unsigned char head[5];
        evbuffer_copyout(in, head, sizeof(head));
        if (memcmp(head, "HTTP/", 5) == 0) {
            evbuffer_drain(in, evbuffer_get_length(in));
            session_die(s, 1, "the agent answered in HTTP/1.x, not HTTP/2");
            emit_events(s);
            return -1;
        }
    }
    struct evbuffer_iovec v[8];
    while (!s->dead && evbuffer_get_length(in) > 0) {
        int nv = evbuffer_peek(in, -1, NULL, v, (int)SB_ARRAY_LEN(v));
        if (nv > (int)SB_ARRAY_LEN(v))
            nv = (int)SB_ARRAY_LEN(v);
        size_t used = 0;
        for (int i = 0; i < nv; i++) {
            ssize_t r = nghttp2_session_mem_recv(s->ng, v[i].iov_base, v[i].iov_len);
            if (r < 0) {
                char why[160];
                snprintf(why, sizeof(why), "HTTP/2 protocol error: %s", nghttp2_strerror((int)r));
                session_die(s, 1, why);
                break;
            }
            used += (size_t)r;
        }
        evbuffer_drain(in, used);
    }
    if (s->dead) {
        emit_events(s);
        return -1;
    }
    return sb_h2c_flush(s);
}

void sb_h2c_fail_all(sb_h2c *s, sb_h2c_end how, const char *why)
{
    while (s->streams) {
        sb_h2c_stream *st = s->streams;
        int unprocessed = !st->sent || (s->goaway_last >= 0 && st->id > s->goaway_last);
        if (unprocessed)
            stream_end(s, st, SB_H2C_END_REFUSED, "the agent did not process the request");
        else
            stream_end(s, st, how, why);
    }
    emit_events(s);
}

void sb_h2c_shutdown(sb_h2c *s)
{
    if (!s->dead)
        nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
}

int sb_h2c_can_submit(const sb_h2c *s)
{
    if (s->dead || !nghttp2_session_check_request_allowed(s->ng) ||
        nghttp2_session_get_next_stream_id(s->ng) > MAX_STREAM_ID_LEFT)
        return 0;
    /* Until the agent's SETTINGS arrive its stream limit is unknown: one stream only,
     * rather than a burst it would refuse (REFUSED_STREAM) if its limit is small. */
    return s->n_open < (s->got_settings ? sb_h2c_max_streams(s) : 1);
}

size_t sb_h2c_open_streams(const sb_h2c *s)
{
    return s->n_open;
}

uint32_t sb_h2c_max_streams(const sb_h2c *s)
{
    return nghttp2_session_get_remote_settings(s->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

int sb_h2c_settled(const sb_h2c *s)
{
    return s->got_settings;
}

int sb_h2c_dead(const sb_h2c *s)
{
    return s->dead;
}

const char *sb_h2c_error(const sb_h2c *s)
{
    return s->err;
}

int sb_h2c_protocol_error(const sb_h2c *s)
{
    return s->proto_err;
}
