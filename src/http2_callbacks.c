/*
 * http2_callbacks.c — the nghttp2 callbacks of the HTTP/2 server codec (see http2.c for
 * the design): the session templates (callbacks and options, shared by every session),
 * the send callbacks that frame output into the bufferevent (above H2_OUT_HIGH they
 * answer NGHTTP2_ERR_WOULDBLOCK), the data source of response bodies, and the receive
 * callbacks that turn frames into stream state.
 *
 * Everything here runs inside nghttp2_session_mem_recv or nghttp2_session_send, so it
 * only records: a completed request (or one to refuse with 413/431) goes on the
 * connection's ready queue, a closed stream on its reap queue, counters and flags are
 * set. http2.c works the queues off once nghttp2 has returned. The header limits
 * (--max-header-bytes, H2_MAX_HEADERS), the body limit (--max-body-bytes), the body
 * budget and the rapid-reset bound (H2_RST_MAX per H2_RST_WINDOW_US) are enforced here.
 *
 * Never: dispatch a request, free a stream or a connection, or call into nghttp2's
 * session_mem_recv/send from here.
 */
#include "switchboard/http2.h"
#include "switchboard/alloc.h"
#include "switchboard/log.h"
#include "switchboard/request.h"
#include "switchboard/util.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http2_int.h"

/* ---- nghttp2 callbacks (record only: no dispatch, no free) ---- */

static ssize_t cb_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data)
{
    h2_conn *c = user_data;
    struct evbuffer *out = h2_conn_output(c);
    if (evbuffer_get_length(out) >= H2_OUT_HIGH) {
        c->out_blocked = 1;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    if (evbuffer_add(out, data, length) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)length;
}

static int cb_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *source, void *user_data)
{
    h2_conn *c = user_data;
    h2_stream *s = source->ptr;
    struct evbuffer *out = h2_conn_output(c);
    if (evbuffer_get_length(out) >= H2_OUT_HIGH) {
        c->out_blocked = 1;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    size_t padlen = frame->data.padlen;
    sb_h2_data_head(out, framehd, padlen);
    if (length > 0 && evbuffer_remove_buffer(s->out, out, length) != (int)length)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* cannot happen: h2_read_body counted them */
    sb_h2_data_tail(out, padlen);
    return 0;
}

ssize_t h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                     uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    h2_stream *s = source->ptr;
    size_t avail = s->out != NULL ? evbuffer_get_length(s->out) : 0;
    size_t n = avail < length ? avail : length;
    if (n == 0 && !s->end) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == avail && s->end)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int cb_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    h2_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->flooded || c->closing)
        return 0; /* decoded for HPACK's sake, never served */
    h2_stream *s = h2_stream_new(c, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    return 0;
}

static sb_method method_of(const uint8_t *v, size_t n, const char **name)
{
    static const struct {
        const char *name;
        sb_method m;
    } known[] = {
        {"GET", SB_METHOD_GET},     {"HEAD", SB_METHOD_HEAD},     {"POST", SB_METHOD_POST},
        {"PUT", SB_METHOD_PUT},     {"DELETE", SB_METHOD_DELETE}, {"OPTIONS", SB_METHOD_OTHER},
        {"PATCH", SB_METHOD_OTHER}, {"CONNECT", SB_METHOD_OTHER}, {"TRACE", SB_METHOD_OTHER},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(known); i++) {
        if (strlen(known[i].name) == n && memcmp(known[i].name, v, n) == 0) {
            *name = known[i].name;
            return known[i].m;
        }
    }
    *name = "UNKNOWN";
    return SB_METHOD_OTHER;
}

static int cb_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    h2_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers are read and ignored */
    h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL || s->fail_status != 0)
        return 0;
    s->head_bytes += namelen + valuelen + 32;
    if (++s->nheaders > H2_MAX_HEADERS) {
        h2_stream_fail(c, s, 431, "headers_too_large", "too many header fields");
        return 0;
    }
    if (s->head_bytes > c->cfg->max_header_bytes) {
        h2_stream_fail(c, s, 431, "headers_too_large",
                       "request headers exceed the configured limit");
        return 0;
    }
    sb_request *r = s->req;
    if (namelen > 0 && name[0] == ':') {
        /* nghttp2 has checked the pseudo-headers (present once, before the rest). */
        if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
            r->method = method_of(value, valuelen, &r->method_name);
            s->is_head = r->method == SB_METHOD_HEAD;
        } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
            const uint8_t *q = memchr(value, '?', valuelen);
            size_t plen = q != NULL ? (size_t)(q - value) : valuelen;
            sb_free(r->path);
            sb_free(r->query);
            r->path = sb_strndup((const char *)value, plen);
            r->query = q != NULL ? sb_strndup((const char *)q + 1, valuelen - plen - 1) : NULL;
        } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
            sb_free(s->authority);
            s->authority = sb_strndup((const char *)value, valuelen);
        }
        return 0;
    }
    sb_headers_addn(&r->headers, (const char *)name, namelen, (const char *)value, valuelen);
    return 0;
}

/* The request's header block is complete. */
static void stream_headers_done(h2_conn *c, h2_stream *s)
{
    sb_request *r = s->req;
    if (s->fail_status != 0)
        return;
    if (s->authority != NULL) {
        /* Handlers read Host the HTTP/1.1 way; :authority is its HTTP/2 spelling. */
        if (sb_headers_get(&r->headers, "host") == NULL)
            sb_headers_add(&r->headers, "host", s->authority);
        if (r->path == NULL) /* CONNECT names its target in :authority only */
            r->path = sb_strdup(s->authority);
    }
    sb_free(s->authority);
    s->authority = NULL;
    if (r->path == NULL)
        r->path = sb_strdup("");
    const char *cl = sb_headers_get(&r->headers, "content-length");
    if (cl != NULL) {
        long v;
        /* nghttp2 already refuses a malformed content-length or a body that differs. */
        if (sb_parse_long(cl, 0, (long)(((unsigned long)-1) >> 1), &v) == SB_OK) {
            s->content_length = v;
            if ((unsigned long)v > c->cfg->max_body_bytes)
                h2_stream_fail(c, s, 413, "body_too_large",
                               "request body exceeds the configured limit");
        }
    }
}

static void stream_request_done(h2_conn *c, h2_stream *s)
{
    if (s->req_complete)
        return;
    s->req_complete = 1;
    h2_ready_push(c, s); /* dispatch, or answer the refusal already recorded */
}

static void count_reset(h2_conn *c)
{
    uint64_t now = sb_now_mono_us();
    if (now - c->rst_window_start > H2_RST_WINDOW_US) {
        c->rst_window_start = now;
        c->rst_count = 0;
    }
    if (++c->rst_count <= H2_RST_MAX || c->flooded)
        return;
    c->flooded = 1;
    sb_log(SB_LOG_WARN, "h2_rapid_reset",
           "%s: more than %d RST_STREAM frames within %u ms; sending GOAWAY", c->peer, H2_RST_MAX,
           H2_RST_WINDOW_US / 1000);
    nghttp2_session_terminate_session(c->session, NGHTTP2_ENHANCE_YOUR_CALM);
}

static int cb_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    h2_conn *c = user_data;
    h2_stream *s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (s == NULL)
            break;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            stream_headers_done(c, s);
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            stream_request_done(c, s);
        break;
    case NGHTTP2_DATA:
        s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (s != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            stream_request_done(c, s);
        break;
    case NGHTTP2_RST_STREAM:
        count_reset(c);
        break;
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) &&
            memcmp(frame->ping.opaque_data, h2_drain_ping, sizeof(h2_drain_ping)) == 0)
            h2_conn_final_goaway(c);
        break;
    default:
        break;
    }
    return 0;
}

static int cb_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data)
{
    h2_conn *c = user_data;
    nghttp2_session_consume_connection(session, len);
    h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s != NULL)
        s->body_seen += len;
    if (s == NULL || s->fail_status != 0 || s->dispatched) {
        nghttp2_session_consume_stream(session, stream_id, len);
        if (s != NULL && s->discarding) {
            s->discarded += len;
            if (s->discarded > H2_DISCARD_MAX) {
                s->discarding = 0; /* more than we read for politeness: stop it */
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_NO_ERROR);
            }
        }
        return 0;
    }
    sb_request *r = s->req;
    if (evbuffer_get_length(r->body) + len > c->cfg->max_body_bytes) {
        nghttp2_session_consume_stream(session, stream_id, len);
        h2_stream_fail(c, s, 413, "body_too_large", "request body exceeds the configured limit");
        h2_stream_uncount_body(c, s);
        return 0;
    }
    evbuffer_add(r->body, data, len);
    s->body_counted += len;
    c->body_buffered += len;
    if (c->body_buffered <= c->body_budget || s == h2_oldest_receiving(c))
        nghttp2_session_consume_stream(session, stream_id, len);
    else
        s->unconsumed += len; /* its window stays closed until a handler takes a body */
    return 0;
}

static int cb_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (s == NULL || s->req_complete)
            return 0;
        /* Answered before the request ended (413, 431, 408). RFC 9113 §8.1 lets us stop
         * the client with RST_STREAM NO_ERROR, but clients still uploading (libcurl
         * 7.88 among them) may report that as a stream error instead of the answer. So
         * when the rest is known to be small, it is read and dropped and the stream
         * ends cleanly; a large or unknown rest is cut off at H2_DISCARD_MAX bytes, a
         * timed-out request at once. */
        long long rest = s->content_length >= 0 ? s->content_length - (long long)s->body_seen : -1;
        if (s->fail_status != 408 && rest <= (long long)H2_DISCARD_MAX)
            s->discarding = 1; /* rest < 0: unknown, dropped up to H2_DISCARD_MAX */
        else
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int cb_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int error,
                             void *user_data)
{
    /* A response HEADERS that could not be sent (too large, stream gone): end the
     * stream rather than leave the client waiting. */
    if (frame->hd.type == NGHTTP2_HEADERS)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static int cb_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    h2_conn *c = user_data;
    h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s == NULL || s->in_reap)
        return 0;
    s->closed = 1;
    s->in_reap = 1;
    s->reap_next = c->reap_head;
    c->reap_head = s;
    return 0;
}

/* Callbacks and options are the same for every session; nghttp2 copies them. */
static nghttp2_session_callbacks *g_callbacks;
static nghttp2_option *g_option;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_session_templates(void)
{
    if (nghttp2_session_callbacks_new(&g_callbacks) != 0 || nghttp2_option_new(&g_option) != 0) {
        fprintf(stderr, "switchboard: out of memory creating nghttp2 templates\n");
        abort();
    }
    nghttp2_session_callbacks *cb = g_callbacks;
    nghttp2_session_callbacks_set_send_callback(cb, cb_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, cb_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, cb_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, cb_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);

    nghttp2_option *o = g_option;
    nghttp2_option_set_no_auto_window_update(o, 1);
    nghttp2_option_set_no_closed_streams(o, 1);
    nghttp2_option_set_max_send_header_block_length(o, H2_MAX_SEND_HEADER_BLOCK);
    nghttp2_option_set_stream_reset_rate_limit(o, H2_LIB_RST_BURST, H2_LIB_RST_RATE);
    nghttp2_option_set_max_continuations(o, H2_MAX_CONTINUATIONS);
}

void h2_session_new(h2_conn *c)
{
    pthread_once(&g_once, init_session_templates);
    if (nghttp2_session_server_new3(&c->session, g_callbacks, c, g_option, sb_alloc_nghttp2()) !=
        0) {
        fprintf(stderr, "switchboard: out of memory creating an HTTP/2 session\n");
        abort();
    }
}
