/*
 * test_upstream_h2.c — HTTP/2, ALPN and streaming of the agent push client, against real
 * sockets on 127.0.0.1 and real nghttp2 server sessions.
 *
 * The servers run in the test's own event loop (libevent listener, bufferevents,
 * nghttp2 server sessions, OpenSSL for TLS), so the order of events on both sides is
 * observable: a test can prove that the client got the first chunk of a stream before
 * the server sent the last one, or that a paused client stopped the server's writes.
 * Each server speaks h2c with prior knowledge, TLS with ALPN (h2 or http/1.1 only), or
 * plain HTTP/1.1, and behaves per request as its mode says. Certificates come from a CA
 * made in the test with the OpenSSL API. Every wait is bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "switchboard/common.h"
#include "switchboard/netaddr.h"
#include "switchboard/request.h"
#include "switchboard/upstream.h"

/* ------------------------------------------------------------------ clock */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------------ test server */

typedef enum {
    M_ECHO,         /* 200 application/json {"jsonrpc":"2.0","id":1,"len":N} at once */
    M_DELAY,        /* the same after srv->delay_ms */
    M_SILENT,       /* never answer */
    M_RST,          /* RST_STREAM(INTERNAL_ERROR) when the request is complete */
    M_REFUSE_FIRST, /* the first stream ever: RST_STREAM(REFUSED_STREAM); then echo */
    M_GOAWAY,       /* connection 1: once goaway_after streams arrived, GOAWAY(last = the
                     * first), answer the first, close; later connections: echo */
    M_SSE,          /* 200 text/event-stream, n_chunks events every chunk_ms, then end */
    M_SSE_STALL,    /* 200 text/event-stream, one event, then silence */
    M_INFINITE,     /* 200 text/event-stream, bytes for as long as flow control allows */
    M_BAD_HEADER,   /* 200 whose content-length disagrees with its DATA (malformed) */
} srv_mode;

typedef enum { P_H2C, P_TLS_H2, P_TLS_H1ONLY, P_H1 } srv_proto;

typedef struct srv srv;
typedef struct sconn sconn;

typedef struct sstream {
    srv *s;
    sconn *c;
    int32_t id;
    char method[16], path[256], auth[256], ctype[128], clen[32], msgid[64];
    struct evbuffer *body; /* request body */
    struct evbuffer *resp; /* response bytes not yet given to nghttp2 */
    int resp_eof;          /* no more response bytes after |resp| */
    int deferred;          /* the data provider returned DEFERRED */
    int closed;
    uint32_t close_code;
    int ticks;
    struct event *tick;
    struct sstream *next; /* srv->streams */
} sstream;

struct sconn {
    srv *s;
    int idx; /* 1-based accept order */
    struct bufferevent *bev;
    nghttp2_session *ng; /* NULL for HTTP/1.1 */
    int h1;
    int n_streams;
    int open;
    int max_open;
    int closing; /* close once the output drained */
    int32_t goaway_first;
    int closed;
    /* HTTP/1.1 */
    int h1_streaming;
    struct event *h1_tick;
    int h1_ticks;
    struct sconn *next;
};

struct srv {
    struct event_base *base;
    struct evconnlistener *lis;
    int port;
    srv_proto proto;
    SSL_CTX *ctx;
    srv_mode mode;
    uint32_t max_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS; 0: not sent */
    int delay_ms;
    int n_chunks, chunk_ms;
    int goaway_after;
    int n_conns;
    int n_streams;       /* request streams seen */
    int n_complete;      /* complete requests */
    int n_cancel_rst;    /* RST_STREAM(CANCEL) received from the client */
    int n_goaway_recv;   /* GOAWAY received from the client */
    int refused;         /* M_REFUSE_FIRST done */
    uint64_t sent_bytes; /* response body bytes handed to nghttp2 / written (h1) */
    uint64_t last_chunk_us;
    uint64_t first_chunk_us;
    char last_alpn[32];
    sconn *conns;
    sstream *streams;
};

static void sconn_flush(sconn *c);

static sstream *stream_new(sconn *c, int32_t id)
{
    sstream *st = calloc(1, sizeof(*st));
    st->s = c->s;
    st->c = c;
    st->id = id;
    st->body = evbuffer_new();
    st->resp = evbuffer_new();
    st->next = c->s->streams;
    c->s->streams = st;
    return st;
}

static void stream_free(sstream *st)
{
    if (st->tick)
        event_free(st->tick);
    evbuffer_free(st->body);
    evbuffer_free(st->resp);
    free(st);
}

static ssize_t resp_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    sstream *st = src->ptr;
    srv *s = st->s;
    if (s->mode == M_INFINITE && !st->resp_eof) {
        memset(buf, 'x', len);
        s->sent_bytes += len;
        return (ssize_t)len;
    }
    size_t n = evbuffer_get_length(st->resp);
    if (n == 0) {
        if (st->resp_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return 0;
        }
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    evbuffer_remove(st->resp, buf, n);
    s->sent_bytes += n;
    if (evbuffer_get_length(st->resp) == 0 && st->resp_eof)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void respond(sstream *st, const char *status, const char *ctype, const char *body, int eof,
                    const nghttp2_nv *extra, size_t n_extra)
{
    nghttp2_nv nv[8];
    size_t n = 0;
    nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)(uintptr_t)status, 7, strlen(status),
                           NGHTTP2_NV_FLAG_NONE};
    nv[n++] = (nghttp2_nv){(uint8_t *)"content-type", (uint8_t *)(uintptr_t)ctype, 12,
                           strlen(ctype), NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n_extra && n < 8; i++)
        nv[n++] = extra[i];
    if (body)
        evbuffer_add(st->resp, body, strlen(body));
    st->resp_eof = eof;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = resp_read};
    nghttp2_submit_response(st->c->ng, st->id, nv, n, &prd);
}

static void respond_echo(sstream *st)
{
    char body[128];
    snprintf(body, sizeof(body), "{\"jsonrpc\":\"2.0\",\"id\":1,\"len\":%zu}",
             evbuffer_get_length(st->body));
    const nghttp2_nv x = {(uint8_t *)"x-reply", (uint8_t *)"yes", 7, 3, NGHTTP2_NV_FLAG_NONE};
    respond(st, "200", "application/json", body, 1, &x, 1);
}

static void stream_push_more(sstream *st)
{
    if (st->deferred && !st->c->closed && st->c->ng) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->c->ng, st->id);
    }
    sconn_flush(st->c);
}

static void sse_tick(evutil_socket_t fd, short what, void *arg)
{
    sstream *st = arg;
    srv *s = st->s;
    if (st->closed || st->c->closed)
        return;
    st->ticks++;
    char ev[64];
    snprintf(ev, sizeof(ev), "data: {\"n\":%d}\n\n", st->ticks);
    evbuffer_add(st->resp, ev, strlen(ev));
    uint64_t t = now_us();
    if (st->ticks == 1)
        s->first_chunk_us = t;
    s->last_chunk_us = t;
    if (s->mode == M_SSE_STALL) {
        /* one event, then silence */
    } else if (st->ticks >= s->n_chunks) {
        st->resp_eof = 1;
    } else {
        struct timeval tv = {0, s->chunk_ms * 1000};
        event_add(st->tick, &tv);
    }
    stream_push_more(st);
}

static void delay_tick(evutil_socket_t fd, short what, void *arg)
{
    sstream *st = arg;
    if (st->closed || st->c->closed)
        return;
    respond_echo(st);
    sconn_flush(st->c);
}

/* A complete request arrived on |st|: answer as the mode says. */
static void request_done(sstream *st)
{
    srv *s = st->s;
    sconn *c = st->c;
    s->n_complete++;
    switch (s->mode) {
    case M_ECHO:
        respond_echo(st);
        break;
    case M_DELAY: {
        st->tick = event_new(s->base, -1, 0, delay_tick, st);
        struct timeval tv = {s->delay_ms / 1000, (s->delay_ms % 1000) * 1000};
        event_add(st->tick, &tv);
        break;
    }
    case M_SILENT:
        break;
    case M_RST:
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        break;
    case M_REFUSE_FIRST:
        if (!s->refused) {
            s->refused = 1;
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
        } else {
            respond_echo(st);
        }
        break;
    case M_GOAWAY:
        if (c->idx == 1) {
            if (c->goaway_first == 0)
                c->goaway_first = st->id;
            if (c->n_streams >= s->goaway_after) {
                nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, c->goaway_first, NGHTTP2_NO_ERROR,
                                      NULL, 0);
                for (sstream *x = s->streams; x; x = x->next)
                    if (x->c == c && x->id == c->goaway_first)
                        respond_echo(x);
                c->closing = 1;
            }
        } else {
            respond_echo(st);
        }
        break;
    case M_SSE:
    case M_SSE_STALL:
        respond(st, "200", "text/event-stream", NULL, 0, NULL, 0);
        st->tick = event_new(s->base, -1, 0, sse_tick, st);
        event_active(st->tick, EV_TIMEOUT, 1);
        break;
    case M_INFINITE:
        respond(st, "200", "text/event-stream", NULL, 0, NULL, 0);
        break;
    case M_BAD_HEADER: {
        /* content-length says 10, the body has 2 bytes: HTTP/2 says malformed. */
        const nghttp2_nv x = {(uint8_t *)"content-length", (uint8_t *)"10", 14, 2,
                              NGHTTP2_NV_FLAG_NONE};
        respond(st, "200", "application/json", "{}", 1, &x, 1);
        break;
    }
    }
}

static int s_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sconn *c = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    sstream *st = stream_new(c, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, st);
    c->n_streams++;
    c->s->n_streams++;
    c->open++;
    if (c->open > c->max_open)
        c->max_open = c->open;
    return 0;
}

static void copy_field(char *dst, size_t cap, const uint8_t *v, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static int s_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                       size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                       void *ud)
{
    sstream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)
    if (IS(":method"))
        copy_field(st->method, sizeof(st->method), value, valuelen);
    else if (IS(":path"))
        copy_field(st->path, sizeof(st->path), value, valuelen);
    else if (IS("authorization"))
        copy_field(st->auth, sizeof(st->auth), value, valuelen);
    else if (IS("content-type"))
        copy_field(st->ctype, sizeof(st->ctype), value, valuelen);
    else if (IS("content-length"))
        copy_field(st->clen, sizeof(st->clen), value, valuelen);
    else if (IS("x-switchboard-message-id"))
        copy_field(st->msgid, sizeof(st->msgid), value, valuelen);
#undef IS
    return 0;
}

static int s_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                     size_t len, void *ud)
{
    sstream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st)
        evbuffer_add(st->body, data, len);
    return 0;
}

static int s_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    sconn *c = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY)
        c->s->n_goaway_recv++;
    if (frame->hd.type == NGHTTP2_RST_STREAM && frame->rst_stream.error_code == NGHTTP2_CANCEL)
        c->s->n_cancel_rst++;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        sstream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (st)
            request_done(st);
    }
    return 0;
}

static int s_on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    sconn *c = ud;
    sstream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st) {
        st->closed = 1;
        st->close_code = code;
        c->open--;
    }
    return 0;
}

static void sconn_close(sconn *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    if (c->ng)
        nghttp2_session_del(c->ng);
    c->ng = NULL;
    if (c->h1_tick)
        event_free(c->h1_tick);
    c->h1_tick = NULL;
    bufferevent_free(c->bev);
    c->bev = NULL;
}

static void sconn_flush(sconn *c)
{
    if (c->closed || c->ng == NULL)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    for (;;) {
        if (evbuffer_get_length(out) > 256 * 1024)
            break; /* the write callback continues */
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n <= 0)
            break;
        evbuffer_add(out, data, (size_t)n);
    }
    if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng) &&
        evbuffer_get_length(out) == 0)
        sconn_close(c);
}

static void start_h2(sconn *c)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, s_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, s_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, s_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, s_on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, s_on_stream_close);
    nghttp2_session_server_new(&c->ng, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[1];
    size_t n = 0;
    if (c->s->max_streams)
        iv[n++] =
            (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->s->max_streams};
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, n);
    sconn_flush(c);
}

/* ---- HTTP/1.1 side: one request at a time; echo, or a chunked SSE stream ---- */

static void h1_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    sconn *c = arg;
    srv *s = c->s;
    if (c->closed)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (s->mode == M_INFINITE) {
        /* Keep 1 MiB queued: once the socket buffers are full, nothing more is added. */
        static char chunk[16384];
        memset(chunk, 'x', sizeof(chunk));
        while (evbuffer_get_length(out) < 1024 * 1024) {
            evbuffer_add_printf(out, "%zx\r\n", sizeof(chunk));
            evbuffer_add(out, chunk, sizeof(chunk));
            evbuffer_add(out, "\r\n", 2);
            s->sent_bytes += sizeof(chunk);
        }
        struct timeval tv = {0, 5000};
        event_add(c->h1_tick, &tv);
        return;
    }
    c->h1_ticks++;
    char ev[64];
    int n = snprintf(ev, sizeof(ev), "data: {\"n\":%d}\n\n", c->h1_ticks);
    evbuffer_add_printf(out, "%x\r\n%s\r\n", n, ev);
    s->sent_bytes += (size_t)n;
    uint64_t t = now_us();
    if (c->h1_ticks == 1)
        s->first_chunk_us = t;
    s->last_chunk_us = t;
    if (c->h1_ticks >= s->n_chunks) {
        evbuffer_add(out, "0\r\n\r\n", 5);
        return;
    }
    struct timeval tv = {0, s->chunk_ms * 1000};
    event_add(c->h1_tick, &tv);
}

static void h1_read(sconn *c)
{
    srv *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0)
            return;
        size_t head = (size_t)end.pos + 4;
        char *h = malloc(head + 1);
        evbuffer_copyout(in, h, head);
        h[head] = '\0';
        size_t clen = 0;
        const char *cl = strcasestr(h, "\r\nContent-Length:");
        if (cl)
            clen = strtoul(cl + 17, NULL, 10);
        free(h);
        if (evbuffer_get_length(in) < head + clen)
            return;
        evbuffer_drain(in, head + clen);
        s->n_streams++;
        s->n_complete++;
        c->n_streams++;
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (s->mode == M_SSE || s->mode == M_INFINITE) {
            evbuffer_add_printf(out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n");
            c->h1_tick = event_new(s->base, -1, 0, h1_tick_cb, c);
            event_active(c->h1_tick, EV_TIMEOUT, 1);
        } else {
            char body[96];
            int n =
                snprintf(body, sizeof(body), "{\"jsonrpc\":\"2.0\",\"id\":1,\"len\":%zu}", clen);
            evbuffer_add_printf(out,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                "X-Reply: yes\r\nContent-Length: %d\r\n\r\n%s",
                                n, body);
        }
    }
}

static void sconn_readcb(struct bufferevent *bev, void *arg)
{
    sconn *c = arg;
    if (c->closed)
        return;
    if (c->h1) {
        h1_read(c);
        return;
    }
    if (c->ng == NULL)
        return;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    unsigned char *data = evbuffer_pullup(in, -1);
    ssize_t r = nghttp2_session_mem_recv(c->ng, data, len);
    evbuffer_drain(in, len);
    if (r < 0) {
        sconn_close(c);
        return;
    }
    sconn_flush(c);
}

static void sconn_writecb(struct bufferevent *bev, void *arg)
{
    sconn *c = arg;
    if (c->closed)
        return;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        /* M_GOAWAY: everything for the first stream is out; drop the connection. */
        int pending = 0;
        for (sstream *x = c->s->streams; x; x = x->next)
            if (x->c == c && x->id == c->goaway_first && !x->closed)
                pending = 1;
        if (!pending) {
            sconn_close(c);
            return;
        }
    }
    sconn_flush(c);
}

static void sconn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    sconn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        const unsigned char *p = NULL;
        unsigned int n = 0;
        SSL_get0_alpn_selected(ssl, &p, &n);
        snprintf(c->s->last_alpn, sizeof(c->s->last_alpn), "%.*s", (int)n,
                 p ? (const char *)p : "");
        if (n == 2 && memcmp(p, "h2", 2) == 0)
            start_h2(c);
        else
            c->h1 = 1;
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        sconn_close(c);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    srv *s = arg;
    for (unsigned int i = 0; i + 1 <= inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen)
            break;
        if (s->proto == P_TLS_H2 && l == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    for (unsigned int i = 0; i + 1 <= inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen)
            break;
        if (l == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    srv *s = arg;
    sconn *c = calloc(1, sizeof(*c));
    c->s = s;
    c->idx = ++s->n_conns;
    c->next = s->conns;
    s->conns = c;
    if (s->ctx) {
        SSL *ssl = SSL_new(s->ctx);
        c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
    } else {
        c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    bufferevent_setcb(c->bev, sconn_readcb, sconn_writecb, sconn_eventcb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (s->proto == P_H2C)
        start_h2(c);
    else if (s->proto == P_H1)
        c->h1 = 1;
}

/* ---- certificates ---- */

typedef struct pki {
    EVP_PKEY *ca_key;
    X509 *ca;
    EVP_PKEY *key;
    X509 *crt;
} pki;

static X509 *make_x509(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san, int is_ca, long serial)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *ext;
    if (is_ca) {
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    } else {
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

/* A CA and a server certificate it signed for localhost and 127.0.0.1. */
static void pki_make(pki *k, const char *ca_cn)
{
    k->ca_key = EVP_EC_gen("P-256");
    k->ca = make_x509(k->ca_key, ca_cn, NULL, NULL, NULL, 1, 1);
    k->key = EVP_EC_gen("P-256");
    k->crt = make_x509(k->key, "agent", k->ca, k->ca_key, "DNS:localhost,IP:127.0.0.1", 0, 2);
}

static void pki_write_ca(const pki *k, char *path_template)
{
    int fd = mkstemp(path_template);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    PEM_write_X509(fp, k->ca);
    fclose(fp);
}

static void pki_free(pki *k)
{
    X509_free(k->ca);
    X509_free(k->crt);
    EVP_PKEY_free(k->ca_key);
    EVP_PKEY_free(k->key);
}

static int listen_loopback(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 64), 0);
    socklen_t alen = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static srv *srv_start(struct event_base *base, srv_proto proto, srv_mode mode, const pki *k)
{
    srv *s = calloc(1, sizeof(*s));
    s->base = base;
    s->proto = proto;
    s->mode = mode;
    s->delay_ms = 100;
    s->n_chunks = 5;
    s->chunk_ms = 100;
    s->goaway_after = 3;
    if (proto == P_TLS_H2 || proto == P_TLS_H1ONLY) {
        s->ctx = SSL_CTX_new(TLS_server_method());
        assert_int_equal(SSL_CTX_use_certificate(s->ctx, k->crt), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(s->ctx, k->key), 1);
        SSL_CTX_set_alpn_select_cb(s->ctx, alpn_select, s);
    }
    int fd = listen_loopback(&s->port);
    s->lis = evconnlistener_new(base, on_accept, s, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    assert_non_null(s->lis);
    return s;
}

static void srv_free(srv *s)
{
    evconnlistener_free(s->lis);
    while (s->conns) {
        sconn *c = s->conns;
        s->conns = c->next;
        sconn_close(c);
        free(c);
    }
    while (s->streams) {
        sstream *st = s->streams;
        s->streams = st->next;
        stream_free(st);
    }
    if (s->ctx)
        SSL_CTX_free(s->ctx);
    free(s);
}

static int srv_live_conns(const srv *s)
{
    int n = 0;
    for (const sconn *c = s->conns; c; c = c->next)
        n += !c->closed;
    return n;
}

static sstream *srv_last_stream(const srv *s)
{
    return s->streams;
}

/* ------------------------------------------------------------------ client harness */

typedef struct fixture {
    struct event_base *base;
    struct evdns_base *dns;
    sb_upstream_pool *pool;
    sb_cidr allow;
    srv *server;
    pki k;
    char ca_path[64];
} fixture;

static fixture *fixture_new(const sb_upstream_opts *extra)
{
    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);
    f->dns = evdns_base_new(f->base, 0);
    assert_non_null(f->dns);
    evdns_base_load_hosts(f->dns, NULL); /* "localhost" */
    sb_upstream_opts o;
    memset(&o, 0, sizeof(o));
    if (extra)
        o = *extra;
    if (o.connect_timeout_ms == 0)
        o.connect_timeout_ms = 1000;
    if (o.response_timeout_ms == 0)
        o.response_timeout_ms = 3000;
    assert_int_equal(sb_cidr_parse("127.0.0.0/8", &f->allow), SB_OK);
    o.allow = &f->allow;
    o.n_allow = 1;
    f->pool = sb_upstream_pool_new(f->base, f->dns, &o);
    return f;
}

static void fixture_free(fixture *f)
{
    sb_upstream_pool_free(f->pool);
    evdns_base_free(f->dns, 0);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    if (f->server)
        srv_free(f->server);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    event_base_free(f->base);
    if (f->ca_path[0])
        unlink(f->ca_path);
    free(f);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static void run_until(fixture *f, const int *flag, int want, int ms)
{
    struct event *tick = event_new(f->base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 5 * 1000};
    event_add(tick, &tv);
    uint64_t deadline = now_us() + (uint64_t)ms * 1000;
    while ((flag == NULL || *flag < want) && now_us() < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
}

static void run_for(fixture *f, int ms)
{
    run_until(f, NULL, 1, ms);
}

typedef struct outcome {
    int calls;
    sb_reason reason;
    int status, reused, http_version, streamed;
    char detail[256];
    char body[4096];
    size_t body_len;
    char ctype[64], xreply[16];
    /* streaming */
    int heads, datas;
    int stream_choice; /* what on_head returns */
    size_t streamed_bytes;
    uint64_t first_data_us;
    sb_upstream_req *req;
    size_t pause_at;  /* on_data pauses once this many bytes were taken (0: never) */
    size_t cancel_at; /* on_data cancels once this many bytes were taken (0: never) */
    int paused;
    int canceled;
} outcome;

static void on_done(const sb_upstream_result *res, void *arg)
{
    outcome *o = arg;
    o->calls++;
    o->reason = res->reason;
    o->status = res->status;
    o->reused = res->reused;
    o->http_version = res->http_version;
    o->streamed = res->streamed;
    snprintf(o->detail, sizeof(o->detail), "%s", res->detail);
    if (res->reason == SB_REASON_NONE) {
        o->body_len = evbuffer_get_length(res->body);
        size_t n = o->body_len < sizeof(o->body) - 1 ? o->body_len : sizeof(o->body) - 1;
        evbuffer_remove(res->body, o->body, n);
        o->body[n] = '\0';
        const char *ct = sb_headers_get(res->headers, "content-type");
        snprintf(o->ctype, sizeof(o->ctype), "%s", ct ? ct : "");
        const char *x = sb_headers_get(res->headers, "x-reply");
        snprintf(o->xreply, sizeof(o->xreply), "%s", x ? x : "");
    } else {
        assert_null(res->body);
        assert_int_equal(res->status, 0);
        assert_true(res->detail[0] != '\0');
    }
}

static int on_head(int status, const sb_headers *h, void *arg)
{
    outcome *o = arg;
    o->heads++;
    o->status = status;
    const char *ct = sb_headers_get(h, "content-type");
    snprintf(o->ctype, sizeof(o->ctype), "%s", ct ? ct : "");
    return o->stream_choice;
}

static void on_data(struct evbuffer *data, void *arg)
{
    outcome *o = arg;
    size_t n = evbuffer_get_length(data);
    if (o->datas++ == 0)
        o->first_data_us = now_us();
    o->streamed_bytes += n;
    evbuffer_drain(data, n);
    if (o->pause_at && !o->paused && o->streamed_bytes >= o->pause_at) {
        o->paused = 1;
        sb_upstream_pause(o->req, 1);
    }
    if (o->cancel_at && !o->canceled && o->streamed_bytes >= o->cancel_at) {
        o->canceled = 1;
        sb_upstream_cancel(o->req);
    }
}

static sb_url url_for(const char *scheme_host, int port, const char *path)
{
    char s[256];
    snprintf(s, sizeof(s), "%s:%d%s", scheme_host, port, path);
    sb_url u;
    assert_int_equal(sb_url_parse(s, &u), SB_OK);
    return u;
}

static sb_upstream_req *send_req(fixture *f, const sb_url *u, sb_upstream_proto proto,
                                 const char *body, outcome *o, int stream)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Content-Type", "application/json");
    sb_headers_add(&h, "Authorization", "Bearer s3cret");
    sb_headers_add(&h, "X-Switchboard-Message-Id", "m-1");
    sb_headers_add(&h, "Connection", "close"); /* hop-by-hop: must not reach HTTP/2 */
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    sb_upstream_send_opts opts = {.protocol = proto};
    if (stream) {
        opts.on_head = on_head;
        opts.on_data = on_data;
    }
    sb_upstream_req *r = sb_upstream_submit(f->pool, u, &h, b, &opts, on_done, o);
    assert_non_null(r);
    assert_int_equal(evbuffer_get_length(b), 0);
    evbuffer_free(b);
    sb_headers_clear(&h);
    o->req = r;
    return r;
}

static void expect_ok(const outcome *o)
{
    assert_int_equal(o->calls, 1);
    if (o->reason != SB_REASON_NONE)
        fail_msg("push failed: %s: %s", sb_reason_name(o->reason), o->detail);
    assert_int_equal(o->status, 200);
}

/* ------------------------------------------------------------------ tests */

static void test_h2c_round_trip(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_ECHO, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/a2a?x=1");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{\"jsonrpc\":\"2.0\",\"method\":\"message/send\"}", &o, 0);
    assert_int_equal(o.calls, 0); /* never from inside submit */
    run_until(f, &o.calls, 1, 3000);
    expect_ok(&o);
    assert_int_equal(o.http_version, 20);
    assert_int_equal(o.reused, 0);
    assert_string_equal(o.body, "{\"jsonrpc\":\"2.0\",\"id\":1,\"len\":41}");
    assert_string_equal(o.ctype, "application/json");
    assert_string_equal(o.xreply, "yes");

    sstream *st = srv_last_stream(f->server);
    assert_non_null(st);
    assert_string_equal(st->method, "POST");
    assert_string_equal(st->path, "/a2a?x=1");
    assert_string_equal(st->auth, "Bearer s3cret");
    assert_string_equal(st->ctype, "application/json");
    assert_string_equal(st->msgid, "m-1");
    assert_string_equal(st->clen, "41");
    assert_int_equal(evbuffer_get_length(st->body), 41);

    /* A second push rides the same session. */
    outcome o2 = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o2, 0);
    run_until(f, &o2.calls, 1, 3000);
    expect_ok(&o2);
    assert_int_equal(o2.reused, 1);
    assert_int_equal(f->server->n_conns, 1);
    assert_int_equal(sb_upstream_pool_h2_sessions(f->pool), 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2c_many_streams_one_connection(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_DELAY, NULL);
    f->server->delay_ms = 200;
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    enum { N = 60 };
    outcome *o = calloc(N, sizeof(outcome));
    int done = 0;
    for (int i = 0; i < N; i++)
        send_req(f, &u, SB_PROTO_H2C, "{}", &o[i], 0);
    uint64_t t0 = now_us();
    while (now_us() - t0 < 5000000) {
        done = 0;
        for (int i = 0; i < N; i++)
            done += o[i].calls;
        if (done == N)
            break;
        run_for(f, 20);
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++)
        expect_ok(&o[i]);
    assert_int_equal(f->server->n_conns, 1);         /* one TCP connection */
    assert_int_equal(f->server->conns->max_open, N); /* all in flight at once */
    /* 200 ms each, concurrently: far less than N * 200 ms. */
    assert_true(now_us() - t0 < 2000000);
    free(o);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2c_max_concurrent_streams(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_DELAY, NULL);
    f->server->max_streams = 2;
    f->server->delay_ms = 100;
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    enum { N = 12 };
    outcome o[N];
    memset(o, 0, sizeof(o));
    for (int i = 0; i < N; i++)
        send_req(f, &u, SB_PROTO_H2C, "{}", &o[i], 0);
    uint64_t t0 = now_us();
    int done = 0;
    while (now_us() - t0 < 5000000 && done < N) {
        run_for(f, 20);
        done = 0;
        for (int i = 0; i < N; i++)
            done += o[i].calls;
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++)
        expect_ok(&o[i]);
    /* The limit held on every connection, and more sessions were opened, up to the cap. */
    for (sconn *c = f->server->conns; c; c = c->next)
        assert_true(c->max_open <= 2);
    assert_true(f->server->n_conns >= 2);
    assert_true(f->server->n_conns <= SB_UPSTREAM_H2_MAX_SESSIONS);
    assert_int_equal(f->server->n_streams, N); /* nothing refused, nothing sent twice */
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_tls_alpn_h2(void **state)
{
    sb_upstream_opts opts = {0};
    fixture *f;
    pki k;
    pki_make(&k, "sb test CA");
    char ca[] = "/tmp/sb-h2-ca-XXXXXX";
    pki_write_ca(&k, ca);
    opts.tls_ca_file = ca;
    f = fixture_new(&opts);
    f->server = srv_start(f->base, P_TLS_H2, M_ECHO, &k);
    for (int i = 0; i < 2; i++) {
        sb_url u =
            url_for(i == 0 ? "https://127.0.0.1" : "https://localhost", f->server->port, "/a2a");
        outcome o = {0};
        send_req(f, &u, SB_PROTO_AUTO, "{\"a\":1}", &o, 0);
        run_until(f, &o.calls, 1, 3000);
        expect_ok(&o);
        assert_int_equal(o.http_version, 20);
        assert_string_equal(f->server->last_alpn, "h2");
        sb_url_clear(&u);
    }
    /* 127.0.0.1 and localhost are two origins: one session each. */
    assert_int_equal(f->server->n_conns, 2);
    assert_int_equal(sb_upstream_pool_h2_sessions(f->pool), 2);

    /* The same origin again: the session is reused. */
    sb_url u = url_for("https://127.0.0.1", f->server->port, "/a2a");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_AUTO, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    expect_ok(&o);
    assert_int_equal(o.reused, 1);
    assert_int_equal(f->server->n_conns, 2);

    /* Forced HTTP/1.1 offers only http/1.1. */
    outcome o1 = {0};
    send_req(f, &u, SB_PROTO_HTTP1, "{}", &o1, 0);
    run_until(f, &o1.calls, 1, 3000);
    expect_ok(&o1);
    assert_int_equal(o1.http_version, 11);
    assert_string_equal(f->server->last_alpn, "http/1.1");
    sb_url_clear(&u);
    fixture_free(f);
    unlink(ca);
    pki_free(&k);
}

static void test_tls_verify_failure(void **state)
{
    pki trusted, other;
    pki_make(&trusted, "trusted CA");
    pki_make(&other, "other CA");
    char ca[] = "/tmp/sb-h2-ca-XXXXXX";
    pki_write_ca(&trusted, ca);
    sb_upstream_opts opts = {.tls_ca_file = ca};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_TLS_H2, M_ECHO, &other); /* signed by "other CA" */
    sb_url u = url_for("https://127.0.0.1", f->server->port, "/");
    outcome o[3];
    memset(o, 0, sizeof(o));
    for (int i = 0; i < 3; i++)
        send_req(f, &u, SB_PROTO_AUTO, "{}", &o[i], 0);
    run_until(f, &o[2].calls, 1, 3000);
    run_for(f, 50);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].reason, SB_REASON_TLS_ERROR);
        assert_non_null(strstr(o[i].detail, "certificate verify failed: unable to get local "
                                            "issuer certificate"));
    }
    /* The two that waited for the first handshake failed with it, without their own. */
    assert_int_equal(f->server->n_conns, 1);
    assert_int_equal(f->server->n_streams, 0);
    sb_url_clear(&u);
    fixture_free(f);
    unlink(ca);
    pki_free(&trusted);
    pki_free(&other);
}

static void test_tls_alpn_fallback_http1(void **state)
{
    pki k;
    pki_make(&k, "sb test CA");
    char ca[] = "/tmp/sb-h2-ca-XXXXXX";
    pki_write_ca(&k, ca);
    sb_upstream_opts opts = {.tls_ca_file = ca};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_TLS_H1ONLY, M_ECHO, &k);
    sb_url u = url_for("https://127.0.0.1", f->server->port, "/");
    for (int i = 0; i < 3; i++) {
        outcome o = {0};
        send_req(f, &u, SB_PROTO_AUTO, "{\"x\":1}", &o, 0);
        run_until(f, &o.calls, 1, 3000);
        expect_ok(&o);
        assert_int_equal(o.http_version, 11);
        assert_int_equal(o.reused, i > 0);
        assert_string_equal(o.body, "{\"jsonrpc\":\"2.0\",\"id\":1,\"len\":7}");
    }
    assert_string_equal(f->server->last_alpn, "http/1.1");
    assert_int_equal(f->server->n_conns, 1); /* keep-alive HTTP/1.1 */
    assert_int_equal(sb_upstream_pool_h2_sessions(f->pool), 0);

    /* A burst to a fresh pool: the waiters follow the first handshake to HTTP/1.1. */
    sb_upstream_pool_free(f->pool);
    f->pool = sb_upstream_pool_new(
        f->base, f->dns,
        &(sb_upstream_opts){
            .tls_ca_file = ca, .connect_timeout_ms = 1000, .allow = &f->allow, .n_allow = 1});
    outcome b[4];
    memset(b, 0, sizeof(b));
    for (int i = 0; i < 4; i++)
        send_req(f, &u, SB_PROTO_AUTO, "{}", &b[i], 0);
    for (int i = 0; i < 4; i++)
        run_until(f, &b[i].calls, 1, 3000);
    for (int i = 0; i < 4; i++) {
        expect_ok(&b[i]);
        assert_int_equal(b[i].http_version, 11);
    }
    sb_url_clear(&u);
    fixture_free(f);
    unlink(ca);
    pki_free(&k);
}

static void test_h2c_to_http1_server(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H1, M_ECHO, NULL);
    /* The server answers the preface as a bad HTTP/1.1 request... or not at all: the
     * fake one here reads a head ending in CRLFCRLF, which "PRI * HTTP/2.0" has. */
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_INVALID_RESPONSE);
    assert_non_null(strstr(o.detail, "HTTP/1.x"));
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_rst_stream(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_RST, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_CONNECTION_RESET);
    assert_non_null(strstr(o.detail, "RST_STREAM INTERNAL_ERROR"));
    assert_int_equal(f->server->n_streams, 1); /* not retried: the agent saw it */

    /* The session survives a stream reset. */
    f->server->mode = M_ECHO;
    outcome o2 = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o2, 0);
    run_until(f, &o2.calls, 1, 3000);
    expect_ok(&o2);
    assert_int_equal(f->server->n_conns, 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_refused_stream_retried(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_REFUSE_FIRST, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{\"retry\":true}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    expect_ok(&o);
    assert_int_equal(f->server->n_streams, 2);
    /* The body was sent again in full. */
    assert_string_equal(o.body, "{\"jsonrpc\":\"2.0\",\"id\":1,\"len\":14}");
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_goaway_retry(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_GOAWAY, NULL);
    f->server->goaway_after = 3;
    /* Let the first stream open the session, then two more ride it. */
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o[3];
    memset(o, 0, sizeof(o));
    send_req(f, &u, SB_PROTO_H2C, "{}", &o[0], 0);
    run_for(f, 100); /* session up, SETTINGS in */
    send_req(f, &u, SB_PROTO_H2C, "{}", &o[1], 0);
    send_req(f, &u, SB_PROTO_H2C, "{}", &o[2], 0);
    for (int i = 0; i < 3; i++)
        run_until(f, &o[i].calls, 1, 3000);
    for (int i = 0; i < 3; i++)
        expect_ok(&o[i]);
    /* Streams beyond GOAWAY's last id went again, on a second connection. */
    assert_int_equal(f->server->n_conns, 2);
    assert_int_equal(f->server->n_streams, 5);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_response_timeout(void **state)
{
    sb_upstream_opts opts = {.response_timeout_ms = 300};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H2C, M_SILENT, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    uint64_t t0 = now_us();
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    uint64_t took = now_us() - t0;
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_RESPONSE_TIMEOUT);
    assert_non_null(strstr(o.detail, "no complete response within 300 ms"));
    assert_true(took >= 250000 && took < 1500000);
    run_for(f, 50);
    assert_int_equal(f->server->n_cancel_rst, 1); /* the stream was reset, not the session */

    f->server->mode = M_ECHO;
    outcome o2 = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o2, 0);
    run_until(f, &o2.calls, 1, 3000);
    expect_ok(&o2);
    assert_int_equal(f->server->n_conns, 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_invalid_header(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_BAD_HEADER, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_INVALID_RESPONSE);
    assert_non_null(strstr(o.detail, "invalid HTTP/2 response"));
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_body_over_limit(void **state)
{
    sb_upstream_opts opts = {.max_response_bytes = 100000};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H2C, M_INFINITE, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0); /* buffered: the limit applies */
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_INVALID_RESPONSE);
    assert_non_null(strstr(o.detail, "body over the response size limit"));
    run_for(f, 50);
    assert_int_equal(f->server->n_cancel_rst, 1); /* the stream was reset, the session kept */
    assert_int_equal(srv_live_conns(f->server), 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_connection_dropped_mid_answer(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_SSE_STALL, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o[2];
    memset(o, 0, sizeof(o));
    send_req(f, &u, SB_PROTO_H2C, "{}", &o[0], 0);
    run_for(f, 100);
    send_req(f, &u, SB_PROTO_H2C, "{}", &o[1], 0);
    run_for(f, 100); /* both streams have their head and one event */
    for (sconn *c = f->server->conns; c; c = c->next)
        sconn_close(c); /* no GOAWAY: the agent died */
    run_until(f, &o[1].calls, 1, 3000);
    run_until(f, &o[0].calls, 1, 3000);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].reason, SB_REASON_CONNECTION_RESET);
        assert_non_null(strstr(o[i].detail, "connection closed by the agent"));
    }
    assert_int_equal(f->server->n_streams, 2); /* answered in part: never retried */
    assert_int_equal(sb_upstream_pool_h2_sessions(f->pool), 0);

    /* The next push opens a new session. */
    f->server->mode = M_ECHO;
    outcome o3 = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o3, 0);
    run_until(f, &o3.calls, 1, 3000);
    expect_ok(&o3);
    assert_int_equal(f->server->n_conns, 2);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_h2_idle_session_closed(void **state)
{
    sb_upstream_opts opts = {.idle_timeout_ms = 200};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H2C, M_ECHO, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    expect_ok(&o);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);
    run_for(f, 700);
    assert_int_equal(sb_upstream_pool_h2_sessions(f->pool), 0);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0);
    assert_int_equal(f->server->n_goaway_recv, 1); /* closed politely */
    assert_int_equal(srv_live_conns(f->server), 0);
    sb_url_clear(&u);
    fixture_free(f);
}

/* ---- streaming ---- */

static void check_stream(fixture *f, srv_proto proto)
{
    f->server->n_chunks = 5;
    f->server->chunk_ms = 100;
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {.stream_choice = 1};
    send_req(f, &u, proto == P_H2C ? SB_PROTO_H2C : SB_PROTO_HTTP1, "{}", &o, 1);
    run_until(f, &o.calls, 1, 5000);
    expect_ok(&o);
    assert_int_equal(o.heads, 1);
    assert_string_equal(o.ctype, "text/event-stream");
    assert_int_equal(o.streamed, 1);
    assert_int_equal(o.http_version, proto == P_H2C ? 20 : 11);
    /* Relayed as it happened: the first event reached us before the server even sent
     * the last one, and events came one by one. */
    assert_true(o.first_data_us > 0);
    assert_true(o.first_data_us < f->server->last_chunk_us);
    assert_true(o.datas >= 4);
    assert_int_equal(o.streamed_bytes + o.body_len, f->server->sent_bytes);
    sb_url_clear(&u);
}

static void test_stream_h2(void **state)
{
    /* 5 events 100 ms apart under a 250 ms deadline: it is an inactivity timeout. */
    sb_upstream_opts opts = {.response_timeout_ms = 250};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H2C, M_SSE, NULL);
    check_stream(f, P_H2C);
    fixture_free(f);
}

static void test_stream_http1_chunked(void **state)
{
    sb_upstream_opts opts = {.response_timeout_ms = 250};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H1, M_SSE, NULL);
    check_stream(f, P_H1);
    fixture_free(f);
}

static void test_stream_not_chosen_buffers(void **state)
{
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_SSE, NULL);
    f->server->n_chunks = 3;
    f->server->chunk_ms = 20;
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {.stream_choice = 0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 1);
    run_until(f, &o.calls, 1, 3000);
    expect_ok(&o);
    assert_int_equal(o.heads, 1);
    assert_int_equal(o.datas, 0);
    assert_int_equal(o.streamed, 0);
    assert_string_equal(o.body, "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\":3}\n\n");
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_stream_inactivity_timeout(void **state)
{
    sb_upstream_opts opts = {.response_timeout_ms = 300};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H2C, M_SSE_STALL, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {.stream_choice = 1};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 1);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.datas, 1);
    assert_int_equal(o.reason, SB_REASON_RESPONSE_TIMEOUT);
    assert_int_equal(o.streamed, 1); /* the caller already relayed the head */
    assert_non_null(strstr(o.detail, "no response data within 300 ms"));
    sb_url_clear(&u);
    fixture_free(f);
}

/* Pauses a stream of endless data, proves the server stalls, resumes, proves it goes
 * on, then cancels and proves the server saw the end. */
static void check_pause_resume_cancel(fixture *f, sb_upstream_proto proto)
{
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {.stream_choice = 1, .pause_at = 100000};
    send_req(f, &u, proto, "{}", &o, 1);
    run_until(f, &o.paused, 1, 3000);
    assert_int_equal(o.paused, 1);
    run_for(f, 300); /* let buffers fill */
    uint64_t s1 = f->server->sent_bytes;
    size_t got1 = o.streamed_bytes;
    run_for(f, 300);
    uint64_t s2 = f->server->sent_bytes;
    assert_int_equal(o.streamed_bytes, got1); /* nothing handed over while paused */
    assert_true(s2 == s1);                    /* and the server could not send more */
    assert_int_equal(o.calls, 0);             /* nor did the inactivity timer fire */

    sb_upstream_pause(o.req, 0);
    run_for(f, 300);
    assert_true(o.streamed_bytes > got1 + 300000);
    assert_true(f->server->sent_bytes > s2 + 300000);

    /* Cancel from inside on_data. */
    o.cancel_at = o.streamed_bytes + 1;
    run_until(f, &o.canceled, 1, 3000);
    assert_int_equal(o.canceled, 1);
    run_for(f, 200);
    assert_int_equal(o.calls, 0); /* no callback after cancel */
    sb_url_clear(&u);
}

static void test_stream_pause_resume_cancel_h2(void **state)
{
    sb_upstream_opts opts = {.response_timeout_ms = 400};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H2C, M_INFINITE, NULL);
    check_pause_resume_cancel(f, SB_PROTO_H2C);
    assert_int_equal(f->server->n_cancel_rst, 1); /* RST_STREAM(CANCEL) */
    /* The session goes on after the canceled stream. */
    f->server->mode = M_ECHO;
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    send_req(f, &u, SB_PROTO_H2C, "{}", &o, 0);
    run_until(f, &o.calls, 1, 3000);
    expect_ok(&o);
    assert_int_equal(f->server->n_conns, 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_stream_pause_resume_cancel_http1(void **state)
{
    sb_upstream_opts opts = {.response_timeout_ms = 400};
    fixture *f = fixture_new(&opts);
    f->server = srv_start(f->base, P_H1, M_INFINITE, NULL);
    check_pause_resume_cancel(f, SB_PROTO_HTTP1);
    /* Canceling an HTTP/1.1 stream closes its connection. */
    run_for(f, 100);
    assert_int_equal(srv_live_conns(f->server), 0);
    fixture_free(f);
}

static void test_cancel_waiting_and_queued(void **state)
{
    /* Requests waiting for the first connection, and one canceled right away, must not
     * leave anything behind (run under ASan). */
    fixture *f = fixture_new(NULL);
    f->server = srv_start(f->base, P_H2C, M_DELAY, NULL);
    f->server->max_streams = 1;
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o[6];
    memset(o, 0, sizeof(o));
    sb_upstream_req *r[6];
    for (int i = 0; i < 6; i++)
        r[i] = send_req(f, &u, SB_PROTO_H2C, "{}", &o[i], 0);
    sb_upstream_cancel(r[0]); /* the opener: r[1] takes over */
    sb_upstream_cancel(r[3]); /* a waiter */
    sb_upstream_cancel(r[1]); /* the new opener: r[2] takes over */
    int want = 3;
    uint64_t t0 = now_us();
    int done = 0;
    while (now_us() - t0 < 4000000 && done < want) {
        run_for(f, 20);
        done = o[2].calls + o[4].calls + o[5].calls;
    }
    assert_int_equal(o[0].calls + o[1].calls + o[3].calls, 0);
    assert_int_equal(done, want);
    sb_url_clear(&u);
    fixture_free(f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h2c_round_trip),
        cmocka_unit_test(test_h2c_many_streams_one_connection),
        cmocka_unit_test(test_h2c_max_concurrent_streams),
        cmocka_unit_test(test_tls_alpn_h2),
        cmocka_unit_test(test_tls_verify_failure),
        cmocka_unit_test(test_tls_alpn_fallback_http1),
        cmocka_unit_test(test_h2c_to_http1_server),
        cmocka_unit_test(test_h2_rst_stream),
        cmocka_unit_test(test_h2_refused_stream_retried),
        cmocka_unit_test(test_h2_goaway_retry),
        cmocka_unit_test(test_h2_response_timeout),
        cmocka_unit_test(test_h2_invalid_header),
        cmocka_unit_test(test_h2_body_over_limit),
        cmocka_unit_test(test_h2_connection_dropped_mid_answer),
        cmocka_unit_test(test_h2_idle_session_closed),
        cmocka_unit_test(test_stream_h2),
        cmocka_unit_test(test_stream_http1_chunked),
        cmocka_unit_test(test_stream_not_chosen_buffers),
        cmocka_unit_test(test_stream_inactivity_timeout),
        cmocka_unit_test(test_stream_pause_resume_cancel_h2),
        cmocka_unit_test(test_stream_pause_resume_cancel_http1),
        cmocka_unit_test(test_cancel_waiting_and_queued),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
