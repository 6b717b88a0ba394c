/*
 * codec_harness.h — the server codecs (http1.c, http2.c) driven with raw bytes, for
 * fuzz_http1.c and fuzz_http2.c.
 *
 * Each input is one client connection: the bytes are written into one end of a
 * socketpair whose other end is handed to the real codec on a real event_base, exactly
 * as the listener hands over an accepted socket; the client then half-closes and the
 * loop runs until the codec has closed the connection or stops making progress, reading
 * and discarding what it answers. sb_router_dispatch is defined here (router.o is then
 * not linked) and answers by the path's first letter, so every response path of the
 * codecs runs:
 *   /s...  a streamed response (head, two writes, end);
 *   /h...  held: answered only after the connection is gone (the on_gone/detach path);
 *   /j...  a JSON answer echoing the body (sb_response_json);
 *   other  a JSON error quoting the path and a header (outside bytes → utf8.c).
 * A connection left open when progress stops is closed with sb_*_close_all, as a
 * worker's shutdown would, and every request reference is dropped: the leak checker
 * then proves nothing outlives the connection. With |check_http1| set (an HTTP/1.1
 * connection that did not switch to HTTP/2 and sent no HEAD, whose answers have no body
 * to frame), everything the codec wrote must parse as a sequence of HTTP/1.1 responses:
 * an answer a client cannot read is a wrong answer.
 */
#ifndef SWITCHBOARD_FUZZ_CODEC_HARNESS_H
#define SWITCHBOARD_FUZZ_CODEC_HARNESS_H

#include "fuzz.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <http_parser.h>
#include <jansson.h>
#include <sys/socket.h>

#include "switchboard/config.h"
#include "switchboard/http1.h"
#include "switchboard/http2.h"
#include "switchboard/request.h"
#include "switchboard/router.h"
#include "switchboard/server.h"
#include "switchboard/utf8.h"

#define HARNESS_MAX_HELD 64

static struct event_base *g_base;
static sb_config g_cfg;
static sb_worker g_w;
static sb_request *g_held[HARNESS_MAX_HELD];
static int g_nheld;

void sb_router_dispatch(sb_request *req)
{
    const char *p = req->path != NULL ? req->path : "";
    if (p[0] == '/' && p[1] == 'h' && g_nheld < HARNESS_MAX_HELD) {
        sb_request_ref(req);
        g_held[g_nheld++] = req;
        return;
    }
    if (p[0] == '/' && p[1] == 's') {
        sb_headers h;
        sb_headers_init(&h);
        sb_headers_add(&h, "Content-Type", "text/event-stream");
        sb_response_start(req, 200, &h);
        sb_headers_clear(&h);
        struct evbuffer *b = sb_evbuffer_new();
        evbuffer_add(b, "data: 1\n\n", 9);
        sb_response_write(req, b);
        evbuffer_add_buffer(b, req->body);
        sb_response_write(req, b);
        sb_response_end(req);
        evbuffer_free(b);
        return;
    }
    if (p[0] == '/' && p[1] == 'j') {
        size_t n = evbuffer_get_length(req->body);
        const char *body = (const char *)evbuffer_pullup(req->body, -1);
        json_t *o = json_object();
        json_object_set_new(o, "body", sb_json_textn(body, n));
        json_object_set_new(o, "method", json_string(req->method_name));
        sb_response_json(req, 200, o, NULL);
        return;
    }
    const char *ua = sb_headers_get(&req->headers, "User-Agent");
    sb_response_error(req, 404, "not_found", "no route for %s %s (%s)", req->method_name, p,
                      ua != NULL ? ua : "-");
}

static void harness_init(void)
{
    if (g_base != NULL)
        return;
    fuzz_quiet_logs();
    g_base = event_base_new();
    fuzz_check(g_base != NULL);
    g_cfg.max_body_bytes = 1 << 16;
    g_cfg.max_header_bytes = 4096;
    g_cfg.idle_timeout_s = 30;
    g_cfg.request_timeout_s = 30;
    g_cfg.listen = (char *)(uintptr_t) "127.0.0.1:8080";
    g_w.cfg = &g_cfg;
    g_w.base = g_base;
}

/* Reads what the codec wrote into |out|; returns bytes read, or -1 at EOF / error. */
static ssize_t harness_drain(int fd, struct evbuffer *out)
{
    char buf[16384];
    ssize_t total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n > 0) {
            evbuffer_add(out, buf, (size_t)n);
            total += n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return total > 0 ? total : -1;
        return total;
    }
}

static int count_response(http_parser *p)
{
    (*(int *)p->data)++;
    return 0;
}

/* 1 when |out| is whole HTTP/1.1 responses (the last may be cut short by the close). */
static int parses_as_responses(struct evbuffer *out)
{
    static const http_parser_settings settings = {.on_message_complete = count_response};
    size_t n = evbuffer_get_length(out);
    if (n == 0)
        return 1;
    int responses = 0;
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &responses;
    size_t done = http_parser_execute(&p, &settings, (const char *)evbuffer_pullup(out, -1), n);
    if (done != n || HTTP_PARSER_ERRNO(&p) != HPE_OK)
        fprintf(stderr, "harness: answer unreadable after %zu of %zu bytes: %s\n", done, n,
                http_errno_description(HTTP_PARSER_ERRNO(&p)));
    return done == n && HTTP_PARSER_ERRNO(&p) == HPE_OK;
}

static int holds(const uint8_t *data, size_t size, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= size; i++)
        if (memcmp(data + i, needle, k) == 0)
            return 1;
    return 0;
}

/* One connection carrying |size| bytes of |data|, served by |conn_new|. */
static void harness_run(const uint8_t *data, size_t size,
                        void (*conn_new)(sb_worker *, struct bufferevent *, const char *),
                        int check_http1)
{
    struct evbuffer *out = sb_evbuffer_new();
    harness_init();
    int sv[2];
    fuzz_check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    struct bufferevent *bev = bufferevent_socket_new(g_base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    fuzz_check(bev != NULL);
    conn_new(&g_w, bev, "127.0.0.1:4242");

    size_t off = 0;
    int idle = 0, client_eof = 0;
    for (int round = 0; round < 2000 && idle < 8; round++) {
        int progress = 0;
        if (off < size) {
            ssize_t n = send(sv[1], data + off, size - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += (size_t)n;
                progress = 1;
            } else if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK) {
                off = size; /* the codec closed: the rest is never read */
            }
            if (off == size)
                shutdown(sv[1], SHUT_WR);
        }
        event_base_loop(g_base, EVLOOP_NONBLOCK);
        if (!client_eof) {
            ssize_t got = harness_drain(sv[1], out);
            if (got != 0)
                progress = 1;
            if (got == -1)
                client_eof = 1;
        }
        if (g_w.nconns == 0 && off == size)
            break;
        idle = progress ? 0 : idle + 1;
    }
    sb_http1_close_all(&g_w);
    sb_http2_close_all(&g_w);
    fuzz_check(g_w.nconns == 0);
    for (int i = 0; i < g_nheld; i++) {
        /* The client is gone: answering is a no-op, and must stay one. */
        sb_response_error(g_held[i], 503, "late", "held");
        sb_request_unref(g_held[i]);
    }
    g_nheld = 0;
    event_base_loop(g_base, EVLOOP_NONBLOCK); /* deferred bufferevent finalizers */
    fuzz_check(g_w.inflight == 0);
    if (!client_eof)
        harness_drain(sv[1], out);
    close(sv[1]);
    if (check_http1 && !holds(data, size, "PRI * HTTP/2.0") && !holds(data, size, "HEAD"))
        fuzz_check(parses_as_responses(out));
    evbuffer_free(out);
}

#endif
