/*
 * test_http1.c — the HTTP/1.1 codec over a real socketpair and a real event_base.
 *
 * The test plays the client on one end of the socketpair (raw bytes in, responses
 * parsed with libhttp-parser) and the router on the other: sb_router_dispatch is
 * defined here and answers according to a scripted mode, so responses can be held and
 * produced out of order. Nothing else from router.c is referenced, so linking against
 * libswitchboard.a does not pull router.o in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/http1.h"
#include "switchboard/http2.h"
#include "switchboard/request.h"
#include "switchboard/router.h"
#include "switchboard/worker.h"
#include "switchboard/util.h"

/* ---- the scripted router ---- */

enum { MODE_ECHO, MODE_HOLD, MODE_STREAM, MODE_BIG, MODE_FRAMING };

#define MAX_SEEN 128
static int g_mode;
static sb_request *g_seen[MAX_SEEN]; /* every dispatched request, with our reference */
static int g_nseen;
static int g_gone;

static void count_gone(sb_request *r, void *arg)
{
    g_gone++;
}

/* "<METHOD> <path>[?query] <body length>" as text/plain. */
static void answer_echo(sb_request *r)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s %s%s%s %zu", r->method_name, r->path, r->query ? "?" : "",
                        r->query ? r->query : "", evbuffer_get_length(r->body));
    sb_response_send(r, 200, NULL, "text/plain", b);
    evbuffer_free(b);
}

static void answer_text(sb_request *r, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    sb_response_send(r, 200, NULL, "text/plain", b);
    evbuffer_free(b);
}

void sb_router_dispatch(sb_request *req)
{
    assert_true(g_nseen < MAX_SEEN);
    sb_request_ref(req);
    g_seen[g_nseen++] = req;
    switch (g_mode) {
    case MODE_ECHO:
        answer_echo(req);
        break;
    case MODE_HOLD:
        req->on_gone = count_gone;
        break;
    case MODE_STREAM: {
        struct evbuffer *b = evbuffer_new();
        sb_headers h;
        sb_headers_init(&h);
        sb_headers_add(&h, "Content-Type", "text/event-stream");
        sb_response_start(req, 200, &h);
        evbuffer_add(b, "part1", 5);
        sb_response_write(req, b);
        evbuffer_add(b, "part2", 5);
        sb_response_write(req, b);
        sb_response_end(req);
        sb_headers_clear(&h);
        evbuffer_free(b);
        break;
    }
    case MODE_BIG: {
        struct evbuffer *b = evbuffer_new();
        char chunk[4096];
        memset(chunk, 'x', sizeof(chunk));
        for (int i = 0; i < 512; i++) /* 2 MiB */
            evbuffer_add(b, chunk, sizeof(chunk));
        sb_response_send(req, 200, NULL, "application/octet-stream", b);
        evbuffer_free(b);
        break;
    }
    case MODE_FRAMING: {
        sb_headers h;
        sb_headers_init(&h);
        sb_headers_add(&h, "Content-Length", "999");
        sb_headers_add(&h, "Connection", "keep-alive");
        sb_headers_add(&h, "Transfer-Encoding", "chunked");
        sb_headers_add(&h, "X-Injected", "a\r\nEvil: 1");
        sb_headers_add(&h, "X-Ok", "yes");
        struct evbuffer *b = evbuffer_new();
        evbuffer_add(b, "abc", 3);
        sb_response_send(req, 200, &h, "text/plain", b);
        evbuffer_free(b);
        sb_headers_clear(&h);
        break;
    }
    }
}

/* ---- the client side ---- */

#define MAX_RESP 64

typedef struct tresp {
    int status;
    sb_headers h;
    char *body;
    size_t blen;
} tresp;

typedef struct fx {
    struct event_base *base;
    sb_config cfg;
    sb_worker w;
    int cfd;
    char *raw; /* every byte the client received */
    size_t rawlen, rawcap;
    int eof;
    tresp resp[MAX_RESP];
    int nresp;
    int head_at[MAX_RESP]; /* response i answers a HEAD request */
    /* parse scratch */
    const char *field;
    size_t flen;
} fx;

static int c_begin(http_parser *p)
{
    fx *f = p->data;
    tresp *r = &f->resp[f->nresp];
    sb_headers_clear(&r->h);
    sb_free(r->body);
    memset(r, 0, sizeof(*r));
    return 0;
}

static int c_field(http_parser *p, const char *at, size_t n)
{
    fx *f = p->data;
    f->field = at;
    f->flen = n;
    return 0;
}

static int c_value(http_parser *p, const char *at, size_t n)
{
    fx *f = p->data;
    sb_headers_addn(&f->resp[f->nresp].h, f->field, f->flen, at, n);
    return 0;
}

static int c_headers_done(http_parser *p)
{
    fx *f = p->data;
    f->resp[f->nresp].status = (int)p->status_code;
    return f->head_at[f->nresp] ? 1 : 0;
}

static int c_body(http_parser *p, const char *at, size_t n)
{
    fx *f = p->data;
    tresp *r = &f->resp[f->nresp];
    r->body = sb_realloc(r->body, r->blen + n + 1);
    memcpy(r->body + r->blen, at, n);
    r->blen += n;
    r->body[r->blen] = '\0';
    return 0;
}

static int c_complete(http_parser *p)
{
    fx *f = p->data;
    tresp *r = &f->resp[f->nresp];
    if (r->body == NULL)
        r->body = sb_strdup("");
    if (f->nresp < MAX_RESP - 1)
        f->nresp++;
    return 0;
}

static const http_parser_settings client_settings = {
    .on_message_begin = c_begin,
    .on_header_field = c_field,
    .on_header_value = c_value,
    .on_headers_complete = c_headers_done,
    .on_body = c_body,
    .on_message_complete = c_complete,
};

/* Re-parses everything received so far, so pieces split across reads never matter. */
static void client_reparse(fx *f)
{
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = f;
    f->nresp = 0;
    size_t n = http_parser_execute(&p, &client_settings, f->raw, f->rawlen);
    if (n == f->rawlen && f->eof && HTTP_PARSER_ERRNO(&p) == HPE_OK)
        http_parser_execute(&p, &client_settings, NULL, 0);
}

static void client_read(fx *f)
{
    int got = 0;
    for (;;) {
        if (f->rawcap - f->rawlen < 65536) {
            f->rawcap = f->rawcap * 2 + 65536;
            f->raw = sb_realloc(f->raw, f->rawcap);
        }
        ssize_t n = recv(f->cfd, f->raw + f->rawlen, f->rawcap - f->rawlen, 0);
        if (n > 0) {
            f->rawlen += (size_t)n;
            got = 1;
            continue;
        }
        if (n == 0 || (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            if (!f->eof)
                got = 1;
            f->eof = 1;
        }
        break;
    }
    if (got)
        client_reparse(f);
}

static void client_send(fx *f, const char *s, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(f->cfd, s + off, n - off, MSG_NOSIGNAL);
        if (k > 0)
            off += (size_t)k;
        else
            event_base_loop(f->base, EVLOOP_NONBLOCK);
    }
}

static void send_str(fx *f, const char *s)
{
    client_send(f, s, strlen(s));
}

typedef int (*cond_fn)(fx *f, long arg);

/* Runs the loop (and, with |read|, the client) until cond holds or |ms| pass. */
static int run_until(fx *f, cond_fn cond, long arg, int ms, int read)
{
    uint64_t deadline = sb_now_mono_us() + (uint64_t)ms * 1000;
    for (;;) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        if (read)
            client_read(f);
        if (cond != NULL && cond(f, arg))
            return 1;
        if (sb_now_mono_us() >= deadline)
            return cond == NULL;
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
    }
}

static int has_resp(fx *f, long n)
{
    return f->nresp >= n;
}

static int has_eof(fx *f, long unused)
{
    return f->eof;
}

static int has_seen(fx *f, long n)
{
    return g_nseen >= n;
}

static int no_conns(fx *f, long unused)
{
    return f->w.nconns == 0;
}

static void pump(fx *f, int ms)
{
    run_until(f, NULL, 0, ms, 1);
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int setup(void **state)
{
    fx *f = sb_calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->cfg.max_body_bytes = 1 << 20;
    f->cfg.max_header_bytes = 8192;
    f->cfg.idle_timeout_s = 30;
    f->cfg.request_timeout_s = 30;
    f->w.cfg = &f->cfg;
    f->w.base = f->base;
    f->cfd = -1;
    for (int i = 0; i < MAX_RESP; i++)
        sb_headers_init(&f->resp[i].h);
    g_mode = MODE_ECHO;
    g_nseen = 0;
    g_gone = 0;
    *state = f;
    return 0;
}

/* Connects a fresh client; the tests tune f->cfg first. */
static void connect_client(fx *f)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    struct bufferevent *bev = bufferevent_socket_new(f->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    sb_http1_conn_new(&f->w, bev, "127.0.0.1:4242");
    f->cfd = sv[1];
}

static int teardown(void **state)
{
    fx *f = *state;
    sb_http1_close_all(&f->w);
    sb_http2_close_all(&f->w);
    assert_int_equal(f->w.nconns, 0);
    assert_null(f->w.conns);
    for (int i = 0; i < g_nseen; i++)
        sb_request_unref(g_seen[i]);
    g_nseen = 0;
    assert_int_equal(f->w.inflight, 0);
    if (f->cfd >= 0)
        close(f->cfd);
    for (int i = 0; i < MAX_RESP; i++) {
        sb_headers_clear(&f->resp[i].h);
        sb_free(f->resp[i].body);
    }
    sb_free(f->raw);
    event_base_free(f->base);
    sb_free(f);
    return 0;
}

static const char *hdr(fx *f, int i, const char *name)
{
    return sb_headers_get(&f->resp[i].h, name);
}

static size_t count_substr(const char *hay, size_t n, const char *needle)
{
    size_t k = 0, nl = strlen(needle);
    for (size_t i = 0; i + nl <= n; i++) {
        if (memcmp(hay + i, needle, nl) == 0)
            k++;
    }
    return k;
}

/* ---- tests ---- */

static void test_request_fields_and_keepalive(void **state)
{
    fx *f = *state;
    connect_client(f);
    assert_int_equal(f->w.nconns, 1);
    send_str(f, "GET /a/b?x=1&y=hello+w%6Frld#frag HTTP/1.1\r\nHost: h\r\n"
                "X-Custom-Thing:   Val  \r\nx-empty:\r\n\r\n");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_int_equal(f->resp[0].status, 200);
    assert_string_equal(f->resp[0].body, "GET /a/b?x=1&y=hello+w%6Frld 0");
    assert_string_equal(hdr(f, 0, "content-length"), "30");
    assert_string_equal(hdr(f, 0, "Content-Type"), "text/plain");
    assert_non_null(hdr(f, 0, "Date"));
    assert_null(hdr(f, 0, "Connection"));

    sb_request *r = g_seen[0];
    assert_int_equal(r->method, SB_METHOD_GET);
    assert_string_equal(r->method_name, "GET");
    assert_string_equal(r->path, "/a/b");
    assert_string_equal(r->query, "x=1&y=hello+w%6Frld");
    char out[32];
    assert_int_equal(sb_request_query(r, "y", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "hello world");
    assert_string_equal(sb_headers_get(&r->headers, "x-custom-thing"), "Val");
    assert_string_equal(sb_headers_get(&r->headers, "HOST"), "h");
    assert_string_equal(sb_headers_get(&r->headers, "X-Empty"), "");
    assert_string_equal(r->peer, "127.0.0.1:4242");
    assert_true(sb_request_gone(r)); /* the codec let go after writing the answer */

    /* Same connection, next request. */
    send_str(f, "DELETE /z HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_string_equal(f->resp[1].body, "DELETE /z 0");
    assert_int_equal(g_seen[1]->method, SB_METHOD_DELETE);
    assert_null(g_seen[1]->query);
    assert_false(f->eof);
    assert_int_equal(f->w.nconns, 1);
    assert_int_equal(f->w.inflight, 0);
}

/* The head's pieces are kept as pointers into the chunk being parsed and copied only when
 * a read ends inside the head: every split point, and a byte at a time, reads the same. */
static const char split_req[] = "POST /ws/a2a?q=1 HTTP/1.1\r\nHost: h\r\nX-Long-Name: some value  "
                                "\r\nx-empty:\r\nContent-Length: 2\r\n\r\nok";

static void check_split_req(const sb_request *r)
{
    assert_int_equal(r->method, SB_METHOD_POST);
    assert_string_equal(r->path, "/ws/a2a");
    assert_string_equal(r->query, "q=1");
    assert_int_equal(r->headers.count, 4);
    assert_string_equal(sb_headers_get(&r->headers, "host"), "h");
    assert_string_equal(sb_headers_get(&r->headers, "X-Long-Name"), "some value");
    assert_string_equal(sb_headers_get(&r->headers, "X-Empty"), "");
    assert_string_equal(sb_headers_get(&r->headers, "content-length"), "2");
    assert_int_equal(evbuffer_get_length(r->body), 2);
}

/* Lets the codec read what was sent so far (each piece its own read). */
static void let_read(fx *f)
{
    for (int i = 0; i < 3; i++)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
}

static void test_head_split_at_every_byte(void **state)
{
    fx *f = *state;
    connect_client(f);
    size_t n = sizeof(split_req) - 1;
    for (size_t k = 1; k < n; k++) {
        client_send(f, split_req, k);
        let_read(f);
        client_send(f, split_req + k, n - k);
        assert_true(run_until(f, has_seen, (long)k, 2000, 1));
        check_split_req(g_seen[k - 1]);
    }
    assert_int_equal(f->w.nconns, 1);
}

static void test_head_one_byte_per_read(void **state)
{
    fx *f = *state;
    connect_client(f);
    for (size_t i = 0; i < sizeof(split_req) - 1; i++) {
        client_send(f, split_req + i, 1);
        let_read(f);
    }
    assert_true(run_until(f, has_seen, 1, 2000, 1));
    check_split_req(g_seen[0]);
}

static void test_pipelined_answered_in_order(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    send_str(f, "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 3, 2000, 1));
    assert_string_equal(g_seen[0]->path, "/1");
    assert_string_equal(g_seen[1]->path, "/2");
    assert_string_equal(g_seen[2]->path, "/3");
    assert_int_equal(f->w.inflight, 3);

    answer_text(g_seen[2], "three");
    pump(f, 50);
    assert_int_equal(f->rawlen, 0); /* held behind /1 and /2 */
    answer_text(g_seen[0], "one");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    pump(f, 50);
    assert_int_equal(f->nresp, 1);
    assert_string_equal(f->resp[0].body, "one");
    answer_text(g_seen[1], "two");
    assert_true(run_until(f, has_resp, 3, 2000, 1));
    assert_string_equal(f->resp[1].body, "two");
    assert_string_equal(f->resp[2].body, "three");
    assert_int_equal(f->w.inflight, 0);
    assert_int_equal(g_gone, 0);
}

static void test_content_length_body(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello");
    pump(f, 30);
    assert_int_equal(g_nseen, 0); /* body incomplete: not dispatched yet */
    send_str(f, " world");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_string_equal(f->resp[0].body, "POST /p 11");
    assert_int_equal(g_seen[0]->method, SB_METHOD_POST);
    assert_int_equal(evbuffer_get_length(g_seen[0]->body), 11);
    assert_memory_equal(evbuffer_pullup(g_seen[0]->body, -1), "hello world", 11);
}

static void test_chunked_body(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n");
    pump(f, 30);
    send_str(f, " world\r\n0\r\nX-Trailer: t\r\n\r\n");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_string_equal(f->resp[0].body, "POST /c 11");
    assert_memory_equal(evbuffer_pullup(g_seen[0]->body, -1), "hello world", 11);
    assert_null(sb_headers_get(&g_seen[0]->headers, "X-Trailer"));
    assert_false(f->eof);
}

static void assert_error_answer(fx *f, int i, int status, const char *code)
{
    assert_int_equal(f->resp[i].status, status);
    assert_string_equal(hdr(f, i, "Content-Type"), "application/json");
    assert_string_equal(hdr(f, i, "Connection"), "close");
    json_error_t jerr;
    json_t *doc = json_loads(f->resp[i].body, 0, &jerr);
    assert_non_null(doc);
    json_t *e = json_object_get(doc, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_true(json_is_string(json_object_get(e, "message")));
    json_decref(doc);
}

static void test_413_content_length(void **state)
{
    fx *f = *state;
    f->cfg.max_body_bytes = 16;
    connect_client(f);
    /* A body at the limit is fine ... */
    send_str(f, "POST /ok HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_int_equal(f->resp[0].status, 200);
    /* ... one byte more is refused before any body byte arrives, even with Expect. */
    send_str(f, "POST /big HTTP/1.1\r\nContent-Length: 17\r\nExpect: 100-continue\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 2);
    assert_error_answer(f, 1, 413, "body_too_large");
    assert_int_equal(g_nseen, 1);
    assert_int_equal(count_substr(f->raw, f->rawlen, "100 Continue"), 0);
    /* The lingering close ends as soon as the client closes. */
    close(f->cfd);
    f->cfd = -1;
    assert_true(run_until(f, no_conns, 0, 2000, 0));
    assert_int_equal(f->w.inflight, 0);
}

static void test_413_chunked(void **state)
{
    fx *f = *state;
    f->cfg.max_body_bytes = 16;
    connect_client(f);
    send_str(f, "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                "a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_error_answer(f, 0, 413, "body_too_large");
    assert_int_equal(g_nseen, 0);
}

static void test_431_header_bytes(void **state)
{
    fx *f = *state;
    f->cfg.max_header_bytes = 256;
    connect_client(f);
    char req[1024];
    char big[400];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %s\r\n\r\n", big);
    send_str(f, req);
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_error_answer(f, 0, 431, "headers_too_large");
    assert_int_equal(g_nseen, 0);
}

static void test_431_header_count(void **state)
{
    fx *f = *state;
    f->cfg.max_header_bytes = 65536;
    connect_client(f);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 101; i++)
        evbuffer_add_printf(b, "X-H%d: v\r\n", i);
    evbuffer_add_printf(b, "\r\n");
    client_send(f, (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_error_answer(f, 0, 431, "headers_too_large");
    assert_int_equal(g_nseen, 0);
}

static void test_400_garbage(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_error_answer(f, 0, 400, "bad_request");
    assert_int_equal(g_nseen, 0);
}

static void test_400_after_good_request(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "GET /fine HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nNo colon here\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 2);
    assert_string_equal(f->resp[0].body, "GET /fine 0");
    assert_error_answer(f, 1, 400, "bad_request");
    assert_int_equal(g_nseen, 1);
}

static void test_expect_100_continue(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_int_equal(f->resp[0].status, 100);
    assert_int_equal(g_nseen, 0);
    send_str(f, "hello");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_int_equal(f->resp[1].status, 200);
    assert_string_equal(f->resp[1].body, "POST /e 5");
    /* No interim answer without a body or without the expectation. */
    send_str(f, "POST /n HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    assert_true(run_until(f, has_resp, 3, 2000, 1));
    assert_int_equal(f->resp[2].status, 200);
    assert_int_equal(count_substr(f->raw, f->rawlen, "100 Continue"), 1);
}

static void test_connection_close(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "GET /c HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_string_equal(hdr(f, 0, "Connection"), "close");
    assert_string_equal(f->resp[0].body, "GET /c 0");
    assert_int_equal(g_nseen, 1);
}

/* The same with the answer produced later: nothing after the Connection: close request
 * is parsed meanwhile (it would be answered 400 otherwise). */
static void test_connection_close_async(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    send_str(f, "GET /c HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 1, 2000, 1));
    pump(f, 50);
    assert_int_equal(g_nseen, 1);
    assert_int_equal(f->rawlen, 0);
    answer_text(g_seen[0], "done");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_string_equal(f->resp[0].body, "done");
    assert_string_equal(hdr(f, 0, "Connection"), "close");
}

static void test_http10(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_string_equal(hdr(f, 0, "Connection"), "keep-alive");
    pump(f, 30);
    assert_false(f->eof);
    send_str(f, "GET /plain HTTP/1.0\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 2);
    assert_string_equal(f->resp[1].body, "GET /plain 0");
    assert_string_equal(hdr(f, 1, "Connection"), "close");
}

static void test_http10_streamed_body_ends_with_close(void **state)
{
    fx *f = *state;
    g_mode = MODE_STREAM;
    connect_client(f);
    send_str(f, "GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_null(hdr(f, 0, "Transfer-Encoding"));
    assert_null(hdr(f, 0, "Content-Length"));
    assert_string_equal(f->resp[0].body, "part1part2");
}

static void test_streamed_chunked_response(void **state)
{
    fx *f = *state;
    g_mode = MODE_STREAM;
    connect_client(f);
    send_str(f, "GET /s HTTP/1.1\r\n\r\nGET /s2 HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_string_equal(hdr(f, 0, "Transfer-Encoding"), "chunked");
    assert_string_equal(hdr(f, 0, "Content-Type"), "text/event-stream");
    assert_string_equal(f->resp[0].body, "part1part2");
    assert_string_equal(f->resp[1].body, "part1part2");
    assert_int_equal(count_substr(f->raw, f->rawlen, "5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n"), 2);
    assert_false(f->eof);
}

static void test_head_has_no_body(void **state)
{
    fx *f = *state;
    connect_client(f);
    f->head_at[0] = 1;
    send_str(f, "HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_int_equal(f->resp[0].status, 200);
    assert_string_equal(hdr(f, 0, "Content-Length"), "9"); /* "HEAD /h 0" */
    assert_string_equal(f->resp[0].body, "");
    assert_string_equal(f->resp[1].body, "GET /g 0");
    assert_int_equal(g_seen[0]->method, SB_METHOD_HEAD);
    /* Exactly the two heads and one body went over the wire. */
    assert_int_equal(count_substr(f->raw, f->rawlen, "HEAD /h 0"), 0);
}

static void test_idle_timeout(void **state)
{
    fx *f = *state;
    f->cfg.idle_timeout_s = 1;
    connect_client(f);
    send_str(f, "GET / HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    uint64_t t0 = sb_now_mono_us();
    pump(f, 500);
    assert_false(f->eof); /* not before the timeout */
    assert_true(run_until(f, has_eof, 0, 3000, 1));
    assert_true(sb_now_mono_us() - t0 >= 900000);
    assert_int_equal(f->nresp, 1); /* closed silently */
    assert_int_equal(f->w.nconns, 0);
}

/* The idle deadline counts from the last answer, not from when the connection's timer
 * was armed (timers are lazy: the one armed at accept fires early and re-arms for the
 * rest). test_request_timeout covers the other way: a deadline earlier than the armed
 * idle timer re-arms at once. */
static void test_idle_timeout_counts_from_last_answer(void **state)
{
    fx *f = *state;
    f->cfg.idle_timeout_s = 1;
    connect_client(f);
    pump(f, 700); /* the timer armed at accept fires 0.3 s from now */
    send_str(f, "GET / HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    uint64_t t0 = sb_now_mono_us();
    pump(f, 600); /* past that first moment */
    assert_false(f->eof);
    assert_true(run_until(f, has_eof, 0, 3000, 1));
    assert_true(sb_now_mono_us() - t0 >= 900000);
    assert_int_equal(f->nresp, 1);
    assert_int_equal(f->w.nconns, 0);
}

static void test_no_timeout_while_answer_pending(void **state)
{
    fx *f = *state;
    f->cfg.idle_timeout_s = 1;
    f->cfg.request_timeout_s = 1;
    g_mode = MODE_HOLD;
    connect_client(f);
    send_str(f, "GET /slow HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 1, 2000, 1));
    pump(f, 2300); /* both timeouts pass while the handler works */
    assert_false(f->eof);
    answer_text(g_seen[0], "late");
    assert_true(run_until(f, has_resp, 1, 2000, 1));
    assert_string_equal(f->resp[0].body, "late");
}

static void test_request_timeout(void **state)
{
    fx *f = *state;
    f->cfg.request_timeout_s = 1;
    connect_client(f);
    send_str(f, "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    assert_true(run_until(f, has_eof, 0, 3000, 1));
    assert_int_equal(f->nresp, 1);
    assert_error_answer(f, 0, 408, "request_timeout");
    assert_int_equal(g_nseen, 0);
}

static void test_client_disconnect_while_pending(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    send_str(f, "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 2, 2000, 1));
    assert_int_equal(f->w.inflight, 2);
    close(f->cfd);
    f->cfd = -1;
    assert_true(run_until(f, no_conns, 0, 2000, 0));
    assert_int_equal(g_gone, 2);
    assert_true(sb_request_gone(g_seen[0]));
    assert_true(sb_request_gone(g_seen[1]));
    assert_int_equal(f->w.inflight, 0);
    /* Late answers from async work are harmless no-ops. */
    answer_text(g_seen[1], "late");
    sb_response_json(g_seen[0], 200, json_object(), NULL);
    assert_int_equal(f->w.inflight, 0);
}

static int has_bytes(fx *f, long n)
{
    return f->rawlen >= (size_t)n;
}

/* The prior-knowledge preface hands the connection to the HTTP/2 codec (exercised in
 * depth by test_http2.c): its first bytes out are a SETTINGS frame, and the connection
 * is counted once, no longer on the HTTP/1.1 list. */
static void test_http2_preface_handed_over(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "PRI * HTTP/2.0\r\n\r\n");
    pump(f, 30);
    assert_false(f->eof); /* could still be the preface: wait */
    assert_int_equal(f->rawlen, 0);
    assert_non_null(f->w.conns);
    send_str(f, "SM\r\n\r\n");
    assert_true(run_until(f, has_bytes, 9, 2000, 1));
    assert_int_equal((unsigned char)f->raw[3], 0x04); /* frame type SETTINGS */
    assert_int_equal((unsigned char)f->raw[4], 0x00); /* not an ACK */
    assert_false(f->eof);
    assert_int_equal(g_nseen, 0);
    assert_int_equal(f->w.nconns, 1);
    assert_null(f->w.conns);
    assert_non_null(f->w.h2conns);
}

static void test_shutdown_idle_and_busy(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    int busy = f->cfd;
    send_str(f, "GET /busy HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 1, 2000, 1));
    connect_client(f); /* a second, idle connection */
    int idle = f->cfd;
    assert_int_equal(f->w.nconns, 2);

    sb_http1_shutdown(&f->w);
    assert_true(run_until(f, has_eof, 0, 2000, 1)); /* f->cfd is the idle one */
    assert_int_equal(f->w.nconns, 1);
    close(idle);

    f->cfd = busy;
    f->eof = 0;
    send_str(f, "GET /after HTTP/1.1\r\n\r\n"); /* not read any more */
    pump(f, 30);
    answer_text(g_seen[0], "bye");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_string_equal(f->resp[0].body, "bye");
    assert_string_equal(hdr(f, 0, "Connection"), "close");
    assert_int_equal(g_nseen, 1);
    close(f->cfd);
    f->cfd = -1;
    assert_true(run_until(f, no_conns, 0, 3000, 0));
}

static void test_shutdown_finishes_request_in_progress(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe");
    pump(f, 30);
    sb_http1_shutdown(&f->w);
    pump(f, 30);
    assert_false(f->eof);
    send_str(f, "llo");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_string_equal(f->resp[0].body, "POST /p 5");
    assert_string_equal(hdr(f, 0, "Connection"), "close");
}

static void test_close_all_detaches(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    send_str(f, "GET /x HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 1, 2000, 1));
    sb_http1_close_all(&f->w);
    assert_int_equal(f->w.nconns, 0);
    assert_int_equal(g_gone, 1);
    assert_int_equal(f->w.inflight, 0);
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->rawlen, 0);
}

static void test_output_backpressure(void **state)
{
    fx *f = *state;
    g_mode = MODE_BIG;
    connect_client(f);
    send_str(f, "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    run_until(f, NULL, 0, 200, 0); /* the client does not read */
    assert_int_equal(g_nseen, 1);  /* 2 MiB queued: the second request waits */
    assert_true(run_until(f, has_resp, 2, 5000, 1));
    assert_int_equal(g_nseen, 2);
    assert_int_equal(f->resp[0].blen, 2u << 20);
    assert_int_equal(f->resp[1].blen, 2u << 20);
}

static void test_pipeline_depth_bounded(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    struct evbuffer *b = evbuffer_new();
    for (int i = 0; i < 40; i++)
        evbuffer_add_printf(b, "GET /%d HTTP/1.1\r\n\r\n", i);
    client_send(f, (const char *)evbuffer_pullup(b, -1), evbuffer_get_length(b));
    evbuffer_free(b);
    assert_true(run_until(f, has_seen, 32, 2000, 1));
    pump(f, 50);
    assert_int_equal(g_nseen, 32);
    for (int i = 0; i < 32; i++)
        answer_text(g_seen[i], g_seen[i]->path);
    assert_true(run_until(f, has_seen, 40, 2000, 1));
    for (int i = 32; i < 40; i++)
        answer_text(g_seen[i], g_seen[i]->path);
    assert_true(run_until(f, has_resp, 40, 2000, 1));
    for (int i = 0; i < 40; i++) {
        char want[16];
        snprintf(want, sizeof(want), "/%d", i);
        assert_string_equal(f->resp[i].body, want);
    }
}

static void test_pending_counts_waiting_bytes(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f);
    send_str(f, "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_seen, 2, 2000, 1));
    sb_response_start(g_seen[1], 200, NULL);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "0123456789", 10);
    sb_response_write(g_seen[1], b);
    evbuffer_free(b);
    assert_true(sb_response_pending(g_seen[1]) > 10); /* head + chunk held behind /1 */
    assert_int_equal(sb_response_pending(g_seen[0]), 0);
    answer_text(g_seen[0], "one");
    sb_response_end(g_seen[1]);
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_string_equal(f->resp[1].body, "0123456789");
    assert_int_equal(sb_response_pending(g_seen[1]), 0);
}

static void test_handler_framing_headers_ignored(void **state)
{
    fx *f = *state;
    g_mode = MODE_FRAMING;
    connect_client(f);
    send_str(f, "GET /f HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_string_equal(hdr(f, 0, "Content-Length"), "3");
    assert_string_equal(f->resp[0].body, "abc");
    assert_string_equal(hdr(f, 0, "X-Ok"), "yes");
    assert_null(hdr(f, 0, "X-Injected"));
    assert_null(hdr(f, 0, "Evil"));
    assert_int_equal(count_substr(f->raw, f->rawlen, "Content-Length"), 2);
    assert_int_equal(count_substr(f->raw, f->rawlen, "chunked"), 0);
    assert_int_equal(count_substr(f->raw, f->rawlen, "Connection"), 0);
}

static void test_absolute_form_target(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "GET http://example.com:8080/abs/path?q=%41 HTTP/1.1\r\n\r\n"
                "OPTIONS * HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_string_equal(g_seen[0]->path, "/abs/path");
    assert_string_equal(g_seen[0]->query, "q=%41");
    assert_string_equal(g_seen[1]->path, "*");
    assert_int_equal(g_seen[1]->method, SB_METHOD_OTHER);
    assert_string_equal(g_seen[1]->method_name, "OPTIONS");
}

/* curl --http2 on cleartext asks to upgrade; we answer HTTP/1.1 and keep parsing. */
static void test_upgrade_request_answered_as_http1(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "GET /u HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
    assert_true(run_until(f, has_resp, 2, 2000, 1));
    assert_int_equal(f->resp[0].status, 200);
    assert_string_equal(f->resp[0].body, "GET /u 0");
    assert_string_equal(f->resp[1].body, "GET /next 0");
    assert_false(f->eof);
}

/* After CONNECT the bytes are a tunnel, not HTTP: answer, then close. */
static void test_connect_closes_after_answer(void **state)
{
    fx *f = *state;
    connect_client(f);
    send_str(f, "CONNECT example.com:443 HTTP/1.1\r\n\r\n\x16\x03\x01 tunnel bytes");
    assert_true(run_until(f, has_eof, 0, 2000, 1));
    assert_int_equal(f->nresp, 1);
    assert_string_equal(f->resp[0].body, "CONNECT example.com:443 0");
    assert_int_equal(g_nseen, 1);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_request_fields_and_keepalive),
        T(test_head_split_at_every_byte),
        T(test_head_one_byte_per_read),
        T(test_pipelined_answered_in_order),
        T(test_content_length_body),
        T(test_chunked_body),
        T(test_413_content_length),
        T(test_413_chunked),
        T(test_431_header_bytes),
        T(test_431_header_count),
        T(test_400_garbage),
        T(test_400_after_good_request),
        T(test_expect_100_continue),
        T(test_connection_close),
        T(test_connection_close_async),
        T(test_http10),
        T(test_http10_streamed_body_ends_with_close),
        T(test_streamed_chunked_response),
        T(test_head_has_no_body),
        T(test_idle_timeout),
        T(test_idle_timeout_counts_from_last_answer),
        T(test_no_timeout_while_answer_pending),
        T(test_request_timeout),
        T(test_client_disconnect_while_pending),
        T(test_http2_preface_handed_over),
        T(test_shutdown_idle_and_busy),
        T(test_shutdown_finishes_request_in_progress),
        T(test_close_all_detaches),
        T(test_output_backpressure),
        T(test_pipeline_depth_bounded),
        T(test_pending_counts_waiting_bytes),
        T(test_handler_framing_headers_ignored),
        T(test_absolute_form_target),
        T(test_upgrade_request_answered_as_http1),
        T(test_connect_closes_after_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
