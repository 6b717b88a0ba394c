/*
 * test_http2.c — the HTTP/2 codec over a real socketpair and a real event_base.
 *
 * The test plays the client with nghttp2's own client session on one end of the
 * socketpair (so every frame the codec sends is parsed and checked by a real HTTP/2
 * implementation) and the router on the other: sb_router_dispatch is defined here and
 * answers according to a scripted mode, so responses can be held, streamed and
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
#include <nghttp2/nghttp2.h>
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

enum { MODE_ECHO, MODE_HOLD, MODE_BIG, MODE_STREAM_HOLD };

#define MAX_SEEN 512
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
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "X-Reply", "Yes");
    sb_headers_add(&h, "Connection", "keep-alive"); /* forbidden in HTTP/2: dropped */
    sb_headers_add(&h, "X-Bad", "a\r\nb");          /* not a valid value: dropped */
    sb_response_send(r, 200, &h, "text/plain", b);
    sb_headers_clear(&h);
    evbuffer_free(b);
}

static void answer_text(sb_request *r, int status, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    sb_response_send(r, status, NULL, "text/plain", b);
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
    case MODE_STREAM_HOLD: {
        sb_headers h;
        sb_headers_init(&h);
        sb_headers_add(&h, "Content-Type", "text/event-stream");
        sb_response_start(req, 200, &h);
        sb_headers_clear(&h);
        req->on_gone = count_gone;
        break;
    }
    }
}

/* ---- the client side: nghttp2's client session ---- */

#define MAX_CS 1024

typedef struct cstream {
    int32_t id;
    int status;
    sb_headers h;
    char *body;
    size_t blen;
    int closed;
    uint32_t close_code;
    int done_seq;     /* order in which streams closed, from 1 */
    const char *send; /* request body to send */
    size_t send_len, send_off;
    int hold; /* after send_len bytes, send nothing more (no END_STREAM) */
} cstream;

typedef struct fx {
    struct event_base *base;
    sb_config cfg;
    sb_worker w;
    int cfd;
    nghttp2_session *cs;
    char *out; /* client bytes not yet written to the socket */
    size_t outlen, outcap;
    size_t rawin;           /* bytes received from the server */
    unsigned char tail[17]; /* the last bytes received (a final GOAWAY fits) */
    int eof;
    cstream streams[MAX_CS];
    int ncs;
    int seq;
    int ngoaway;
    int32_t goaway_last[8];
    uint32_t goaway_code[8];
    int nrst_recv;
} fx;

static fx *g_fx;

static cstream *cs_of(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

static int c_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *user_data)
{
    cstream *st = cs_of(s, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0)
        st->status = atoi((const char *)value);
    else
        sb_headers_addn(&st->h, (const char *)name, namelen, (const char *)value, valuelen);
    return 0;
}

static int c_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                  void *user_data)
{
    cstream *st = cs_of(s, id);
    if (st == NULL)
        return 0;
    st->body = sb_realloc(st->body, st->blen + len + 1);
    memcpy(st->body + st->blen, data, len);
    st->blen += len;
    st->body[st->blen] = '\0';
    return 0;
}

static int c_close(nghttp2_session *s, int32_t id, uint32_t code, void *user_data)
{
    fx *f = user_data;
    cstream *st = cs_of(s, id);
    if (st == NULL)
        return 0;
    st->closed = 1;
    st->close_code = code;
    st->done_seq = ++f->seq;
    if (st->body == NULL)
        st->body = sb_strdup("");
    return 0;
}

static int c_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *user_data)
{
    fx *f = user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY && f->ngoaway < 8) {
        f->goaway_last[f->ngoaway] = frame->goaway.last_stream_id;
        f->goaway_code[f->ngoaway] = frame->goaway.error_code;
        f->ngoaway++;
    } else if (frame->hd.type == NGHTTP2_RST_STREAM) {
        f->nrst_recv++;
    }
    return 0;
}

static ssize_t c_read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *src, void *user_data)
{
    cstream *st = src->ptr;
    size_t n = st->send_len - st->send_off;
    if (n == 0 && st->hold)
        return NGHTTP2_ERR_DEFERRED;
    if (n > length)
        n = length;
    memcpy(buf, st->send + st->send_off, n);
    st->send_off += n;
    if (st->send_off == st->send_len && !st->hold)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Moves nghttp2's pending output into f->out, then as much of f->out as fits into
 * the socket. */
static void client_flush(fx *f)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(f->cs, &data);
        assert_true(n >= 0);
        if (n == 0)
            break;
        if (f->outlen + (size_t)n > f->outcap) {
            f->outcap = (f->outlen + (size_t)n) * 2;
            f->out = sb_realloc(f->out, f->outcap);
        }
        memcpy(f->out + f->outlen, data, (size_t)n);
        f->outlen += (size_t)n;
    }
    while (f->outlen > 0 && f->cfd >= 0) {
        ssize_t k = send(f->cfd, f->out, f->outlen, MSG_NOSIGNAL);
        if (k <= 0)
            break;
        memmove(f->out, f->out + k, f->outlen - (size_t)k);
        f->outlen -= (size_t)k;
    }
}

static void client_read(fx *f)
{
    uint8_t buf[65536];
    while (f->cfd >= 0 && !f->eof) {
        ssize_t n = recv(f->cfd, buf, sizeof(buf), 0);
        if (n > 0) {
            f->rawin += (size_t)n;
            size_t keep = (size_t)n < sizeof(f->tail) ? (size_t)n : sizeof(f->tail);
            memmove(f->tail, f->tail + keep, sizeof(f->tail) - keep);
            memcpy(f->tail + sizeof(f->tail) - keep, buf + n - keep, keep);
            ssize_t r = nghttp2_session_mem_recv(f->cs, buf, (size_t)n);
            assert_int_equal(r, n);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            f->eof = 1;
        break;
    }
}

static void client_io(fx *f)
{
    client_flush(f);
    client_read(f);
    client_flush(f);
}

typedef int (*cond_fn)(fx *f, long arg);

/* Runs the loop and the client until cond holds or |ms| pass. */
static int run_until(fx *f, cond_fn cond, long arg, int ms)
{
    uint64_t deadline = sb_now_mono_us() + (uint64_t)ms * 1000;
    for (;;) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        client_io(f);
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        if (cond != NULL && cond(f, arg))
            return 1;
        if (sb_now_mono_us() >= deadline)
            return cond == NULL;
        struct timespec ts = {0, 300000};
        nanosleep(&ts, NULL);
    }
}

static void pump(fx *f, int ms)
{
    run_until(f, NULL, 0, ms);
}

static int has_seen(fx *f, long n)
{
    return g_nseen >= n;
}

static int has_closed(fx *f, long slot)
{
    return f->streams[slot].closed;
}

static int all_closed(fx *f, long n)
{
    for (long i = 0; i < n; i++) {
        if (!f->streams[i].closed)
            return 0;
    }
    return 1;
}

static int has_eof(fx *f, long unused)
{
    return f->eof;
}

static int has_goaway(fx *f, long n)
{
    return f->ngoaway >= n;
}

static int no_conns(fx *f, long unused)
{
    return f->w.nconns == 0;
}

static int has_body_bytes(fx *f, long slot_and_len)
{
    long slot = slot_and_len & 0xffff, len = slot_and_len >> 16;
    return (long)f->streams[slot].blen >= len;
}

static int setup(void **state)
{
    fx *f = sb_calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->cfg.max_body_bytes = 4 << 20;
    f->cfg.max_header_bytes = 8192;
    f->cfg.idle_timeout_s = 30;
    f->cfg.request_timeout_s = 30;
    f->w.cfg = &f->cfg;
    f->w.base = f->base;
    f->cfd = -1;
    for (int i = 0; i < MAX_CS; i++)
        sb_headers_init(&f->streams[i].h);
    g_mode = MODE_ECHO;
    g_nseen = 0;
    g_gone = 0;
    g_fx = f;
    *state = f;
    return 0;
}

static void client_session_new(fx *f)
{
    nghttp2_session_callbacks *cb;
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_header_callback(cb, c_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, c_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_frame_recv);
    assert_int_equal(nghttp2_session_client_new(&f->cs, cb, f), 0);
    nghttp2_session_callbacks_del(cb);
    /* A large window, so big responses are not paced by the client. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 22}};
    assert_int_equal(nghttp2_submit_settings(f->cs, NGHTTP2_FLAG_NONE, iv, 1), 0);
    nghttp2_session_set_local_window_size(f->cs, NGHTTP2_FLAG_NONE, 0, 1 << 24);
}

/* Connects a fresh client straight to the HTTP/2 codec (|via_http1| 0) or through the
 * HTTP/1.1 codec's preface detection (|via_http1| 1). The tests tune f->cfg first. */
static void connect_client(fx *f, int via_http1)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    struct bufferevent *bev = bufferevent_socket_new(f->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    if (via_http1)
        sb_http1_conn_new(&f->w, bev, "127.0.0.1:4242");
    else
        sb_http2_conn_new(&f->w, bev, "127.0.0.1:4242");
    f->cfd = sv[1];
    client_session_new(f);
}

static int teardown(void **state)
{
    fx *f = *state;
    sb_http1_close_all(&f->w);
    sb_http2_close_all(&f->w);
    assert_int_equal(f->w.nconns, 0);
    assert_null(f->w.conns);
    assert_null(f->w.h2conns);
    for (int i = 0; i < g_nseen; i++)
        sb_request_unref(g_seen[i]);
    g_nseen = 0;
    assert_int_equal(f->w.inflight, 0);
    if (f->cfd >= 0)
        close(f->cfd);
    if (f->cs != NULL)
        nghttp2_session_del(f->cs);
    for (int i = 0; i < MAX_CS; i++) {
        sb_headers_clear(&f->streams[i].h);
        sb_free(f->streams[i].body);
    }
    sb_free(f->out);
    event_base_free(f->base);
    sb_free(f);
    return 0;
}

#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(uintptr_t)(n), (uint8_t *)(uintptr_t)(v), sizeof(n) - 1, strlen(v),            \
            NGHTTP2_NV_FLAG_NONE                                                                   \
    }

/* Submits a request; returns its slot in f->streams. |body| (may be NULL) is sent as
 * DATA frames; |extra| adds header fields. */
static int submit(fx *f, const char *method, const char *path, const char *body, size_t blen,
                  const nghttp2_nv *extra, size_t nextra)
{
    assert_true(f->ncs < MAX_CS);
    int slot = f->ncs++;
    cstream *st = &f->streams[slot];
    nghttp2_nv nva[32] = {
        NV(":method", method),
        NV(":scheme", "http"),
        NV(":authority", "example.test"),
        NV(":path", path),
    };
    size_t n = 4;
    for (size_t i = 0; i < nextra; i++)
        nva[n++] = extra[i];
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = c_read_body};
    st->send = body;
    st->send_len = blen;
    st->id = nghttp2_submit_request(f->cs, NULL, nva, n, body != NULL ? &prd : NULL, st);
    assert_true(st->id > 0);
    return slot;
}

static const char *hdr(fx *f, int slot, const char *name)
{
    return sb_headers_get(&f->streams[slot].h, name);
}

/* ---- tests ---- */

static void test_round_trip(void **state)
{
    fx *f = *state;
    connect_client(f, 0);
    assert_int_equal(f->w.nconns, 1);
    assert_non_null(f->w.h2conns);
    nghttp2_nv extra[] = {NV("x-custom-thing", "Val"), NV("authorization", "Bearer t")};
    int s = submit(f, "GET", "/a/b?x=1&y=hello+w%6Frld", NULL, 0, extra, 2);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].close_code, NGHTTP2_NO_ERROR);
    assert_int_equal(f->streams[s].status, 200);
    assert_string_equal(f->streams[s].body, "GET /a/b?x=1&y=hello+w%6Frld 0");
    assert_string_equal(hdr(f, s, "content-length"), "30");
    assert_string_equal(hdr(f, s, "content-type"), "text/plain");
    assert_string_equal(hdr(f, s, "x-reply"), "Yes");
    assert_non_null(hdr(f, s, "date"));
    assert_null(hdr(f, s, "connection"));
    assert_null(hdr(f, s, "x-bad"));

    sb_request *r = g_seen[0];
    assert_int_equal(r->method, SB_METHOD_GET);
    assert_string_equal(r->method_name, "GET");
    assert_string_equal(r->path, "/a/b");
    assert_string_equal(r->query, "x=1&y=hello+w%6Frld");
    char out[32];
    assert_int_equal(sb_request_query(r, "y", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "hello world");
    assert_string_equal(sb_headers_get(&r->headers, "X-Custom-Thing"), "Val");
    assert_string_equal(sb_headers_get(&r->headers, "Host"), "example.test");
    assert_string_equal(sb_headers_get(&r->headers, "authorization"), "Bearer t");
    assert_string_equal(r->peer, "127.0.0.1:4242");
    assert_true(sb_request_gone(r)); /* the stream closed: the codec let go */
    assert_int_equal(f->w.inflight, 0);

    /* Same connection, next request, with a body. */
    static const char body[] = "{\"k\":1}";
    int s2 = submit(f, "POST", "/p", body, sizeof(body) - 1, NULL, 0);
    assert_true(run_until(f, has_closed, s2, 2000));
    assert_string_equal(f->streams[s2].body, "POST /p 7");
    assert_int_equal(f->w.nconns, 1);
}

static void test_handoff_from_http1(void **state)
{
    fx *f = *state;
    connect_client(f, 1); /* the HTTP/1.1 codec sees the preface first */
    int s = submit(f, "GET", "/via-h1", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].status, 200);
    assert_string_equal(f->streams[s].body, "GET /via-h1 0");
    assert_int_equal(f->w.nconns, 1); /* counted once, now by the HTTP/2 codec */
    assert_null(f->w.conns);
    assert_non_null(f->w.h2conns);
}

static void test_head_has_no_body(void **state)
{
    fx *f = *state;
    connect_client(f, 0);
    int s = submit(f, "HEAD", "/h", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].status, 200);
    assert_int_equal(f->streams[s].blen, 0);
    assert_string_equal(hdr(f, s, "content-length"), "9"); /* of "HEAD /h 0", never sent */
}

static void test_concurrent_out_of_order(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    int a = submit(f, "GET", "/1", NULL, 0, NULL, 0);
    int b = submit(f, "GET", "/2", NULL, 0, NULL, 0);
    int c = submit(f, "GET", "/3", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 3, 2000));
    assert_int_equal(f->w.inflight, 3);
    /* Answer the third, then the first, then the second. */
    answer_text(g_seen[2], 200, "three");
    assert_true(run_until(f, has_closed, c, 2000));
    assert_false(f->streams[a].closed);
    answer_text(g_seen[0], 201, "one");
    assert_true(run_until(f, has_closed, a, 2000));
    answer_text(g_seen[1], 202, "two");
    assert_true(run_until(f, has_closed, b, 2000));
    assert_string_equal(f->streams[a].body, "one");
    assert_string_equal(f->streams[b].body, "two");
    assert_string_equal(f->streams[c].body, "three");
    assert_int_equal(f->streams[a].status, 201);
    assert_int_equal(f->streams[c].done_seq, 1);
    assert_int_equal(f->streams[a].done_seq, 2);
    assert_int_equal(f->streams[b].done_seq, 3);
    assert_int_equal(g_gone, 0);
    assert_int_equal(f->w.inflight, 0);
}

static void test_large_request_body(void **state)
{
    fx *f = *state;
    connect_client(f, 0);
    size_t n = 3u << 20; /* 3 MiB: twelve times the stream window */
    char *body = sb_malloc(n);
    memset(body, 'b', n);
    int s = submit(f, "POST", "/big", body, n, NULL, 0);
    assert_true(run_until(f, has_closed, s, 5000));
    assert_int_equal(f->streams[s].status, 200);
    assert_string_equal(f->streams[s].body, "POST /big 3145728");
    sb_free(body);
}

static void test_concurrent_large_bodies_complete(void **state)
{
    /* More body bytes in flight than the budget: windows of younger streams stall
     * until older requests are taken, and every request still completes. */
    fx *f = *state;
    f->cfg.max_body_bytes = 1 << 20; /* budget: the 8 MiB floor */
    connect_client(f, 0);
    size_t n = 1u << 20;
    char *body = sb_malloc(n);
    memset(body, 'c', n);
    int slots[12];
    for (int i = 0; i < 12; i++)
        slots[i] = submit(f, "POST", "/many", body, n, NULL, 0);
    assert_true(run_until(f, all_closed, 12, 10000));
    for (int i = 0; i < 12; i++) {
        assert_int_equal(f->streams[slots[i]].status, 200);
        assert_string_equal(f->streams[slots[i]].body, "POST /many 1048576");
    }
    sb_free(body);
}

static void test_large_response_body(void **state)
{
    fx *f = *state;
    g_mode = MODE_BIG;
    connect_client(f, 0);
    int s = submit(f, "GET", "/big", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s, 5000));
    assert_int_equal(f->streams[s].status, 200);
    assert_int_equal(f->streams[s].blen, 2u << 20);
    assert_string_equal(hdr(f, s, "content-length"), "2097152");
    for (size_t i = 0; i < f->streams[s].blen; i++) {
        if (f->streams[s].body[i] != 'x')
            fail_msg("byte %zu is %d", i, f->streams[s].body[i]);
    }
}

static void test_413_content_length(void **state)
{
    fx *f = *state;
    f->cfg.max_body_bytes = 1024;
    connect_client(f, 0);
    size_t n = 4096;
    char *body = sb_malloc(n);
    memset(body, 'z', n);
    nghttp2_nv cl[] = {NV("content-length", "4096")};
    int s = submit(f, "POST", "/big", body, n, cl, 1);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].status, 413);
    assert_non_null(strstr(f->streams[s].body, "body_too_large"));
    assert_int_equal(g_nseen, 0); /* never reached the router */
    assert_int_equal(f->w.inflight, 0);
    /* A small rest is read and dropped: the stream ends cleanly, no RST_STREAM. */
    assert_int_equal(f->streams[s].close_code, NGHTTP2_NO_ERROR);
    assert_int_equal(f->nrst_recv, 0);
    /* The connection is still good. */
    int s2 = submit(f, "GET", "/after", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s2, 2000));
    assert_int_equal(f->streams[s2].status, 200);
    sb_free(body);
}

static void test_413_large_rest_is_reset(void **state)
{
    fx *f = *state;
    f->cfg.max_body_bytes = 1024;
    connect_client(f, 0);
    static char part[65536];
    memset(part, 'q', sizeof(part));
    nghttp2_nv cl[] = {NV("content-length", "104857600")}; /* 100 MiB announced */
    int s = submit(f, "POST", "/huge", part, sizeof(part), cl, 1);
    f->streams[s].hold = 1;
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].status, 413);
    assert_int_equal(f->nrst_recv, 1); /* RST_STREAM NO_ERROR after the answer */
    assert_int_equal(f->streams[s].close_code, NGHTTP2_NO_ERROR);
    assert_int_equal(g_nseen, 0);
    assert_int_equal(f->w.inflight, 0);
}

static void test_413_streamed_body(void **state)
{
    fx *f = *state;
    f->cfg.max_body_bytes = 100000;
    connect_client(f, 0);
    size_t n = 300000; /* no content-length: the limit is hit while reading */
    char *body = sb_malloc(n);
    memset(body, 'z', n);
    int s = submit(f, "POST", "/big", body, n, NULL, 0);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].status, 413);
    assert_int_equal(g_nseen, 0);
    int s2 = submit(f, "GET", "/after", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s2, 2000));
    assert_int_equal(f->streams[s2].status, 200);
    sb_free(body);
}

static void test_431_header_bytes(void **state)
{
    fx *f = *state;
    f->cfg.max_header_bytes = 2048;
    connect_client(f, 0);
    char *big = sb_malloc(4000);
    memset(big, 'v', 3999);
    big[3999] = '\0';
    nghttp2_nv extra[] = {{(uint8_t *)"x-big", (uint8_t *)big, 5, 3999, NGHTTP2_NV_FLAG_NONE}};
    int s = submit(f, "GET", "/h", NULL, 0, extra, 1);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_int_equal(f->streams[s].status, 431);
    assert_int_equal(g_nseen, 0);
    sb_free(big);
}

static void test_rst_mid_request_detaches(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    int s = submit(f, "GET", "/held", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 1, 2000));
    sb_request *r = g_seen[0];
    assert_false(sb_request_gone(r));
    assert_int_equal(f->w.inflight, 1);
    nghttp2_submit_rst_stream(f->cs, NGHTTP2_FLAG_NONE, f->streams[s].id, NGHTTP2_CANCEL);
    pump(f, 50);
    assert_true(sb_request_gone(r));
    assert_int_equal(g_gone, 1);
    assert_int_equal(f->w.inflight, 0);
    answer_text(r, 200, "too late"); /* a no-op, never a crash */
    pump(f, 20);
    assert_int_equal(f->w.nconns, 1);

    /* Reset while the body is still arriving: never dispatched at all. */
    static char partial[100000];
    memset(partial, 'p', sizeof(partial));
    int s2 = submit(f, "POST", "/partial", partial, 50000, NULL, 0);
    f->streams[s2].hold = 1; /* more "follows": END_STREAM never comes */
    client_flush(f);
    pump(f, 30);
    nghttp2_submit_rst_stream(f->cs, NGHTTP2_FLAG_NONE, f->streams[s2].id, NGHTTP2_CANCEL);
    pump(f, 50);
    assert_int_equal(g_nseen, 1);
    assert_int_equal(f->w.inflight, 0);
}

static void test_client_disconnect_detaches(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    submit(f, "GET", "/1", NULL, 0, NULL, 0);
    submit(f, "GET", "/2", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 2, 2000));
    close(f->cfd);
    f->cfd = -1;
    assert_true(run_until(f, no_conns, 0, 2000));
    assert_int_equal(g_gone, 2);
    assert_true(sb_request_gone(g_seen[0]));
    assert_true(sb_request_gone(g_seen[1]));
    assert_int_equal(f->w.inflight, 0);
}

static void test_streamed_response_leaves_as_written(void **state)
{
    fx *f = *state;
    g_mode = MODE_STREAM_HOLD;
    connect_client(f, 0);
    int s = submit(f, "GET", "/events", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 1, 2000));
    pump(f, 20);
    assert_int_equal(f->streams[s].status, 200);
    assert_string_equal(hdr(f, s, "content-type"), "text/event-stream");
    assert_null(hdr(f, s, "content-length"));
    sb_request *r = g_seen[0];
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "data: one\n\n", 11);
    sb_response_write(r, b);
    assert_true(run_until(f, has_body_bytes, (long)s | (11L << 16), 2000));
    assert_false(f->streams[s].closed); /* the event left before the end */
    evbuffer_add(b, "data: two\n\n", 11);
    sb_response_write(r, b);
    sb_response_end(r);
    assert_true(run_until(f, has_closed, s, 2000));
    assert_string_equal(f->streams[s].body, "data: one\n\ndata: two\n\n");
    assert_int_equal(f->streams[s].close_code, NGHTTP2_NO_ERROR);
    assert_int_equal(g_gone, 0);
    evbuffer_free(b);
}

static void test_pending_counts_unsent_bytes(void **state)
{
    fx *f = *state;
    g_mode = MODE_STREAM_HOLD;
    connect_client(f, 0);
    /* A small stream window on the client: our data waits in the stream's buffer. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1000}};
    nghttp2_submit_settings(f->cs, NGHTTP2_FLAG_NONE, iv, 1);
    nghttp2_session_set_local_window_size(f->cs, NGHTTP2_FLAG_NONE, 0, 1 << 24);
    pump(f, 20);
    int s = submit(f, "GET", "/slow-reader", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 1, 2000));
    pump(f, 20);
    sb_request *r = g_seen[0];
    struct evbuffer *b = evbuffer_new();
    char chunk[10000];
    memset(chunk, 'e', sizeof(chunk));
    evbuffer_add(b, chunk, sizeof(chunk));
    sb_response_write(r, b);
    /* Nothing framed yet: all of it is still ours to send. */
    assert_true(sb_response_pending(r) >= sizeof(chunk));
    pump(f, 30);
    /* The client's window lets ~1000 bytes through at a time (its session reopens the
     * window as it reads), so the body trickles out and pending() shrinks. */
    assert_true(sb_response_pending(r) < sizeof(chunk));
    sb_response_end(r);
    assert_true(run_until(f, has_closed, s, 3000));
    assert_int_equal(f->streams[s].blen, sizeof(chunk));
    assert_int_equal(sb_response_pending(r), 0);
    evbuffer_free(b);
}

static void test_goaway_on_shutdown(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    int s = submit(f, "GET", "/in-flight", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 1, 2000));
    f->w.draining = 1;
    sb_http2_shutdown(&f->w);
    /* The notice, then (after our PING came back) the final GOAWAY naming stream 1. */
    assert_true(run_until(f, has_goaway, 2, 2000));
    assert_int_equal(f->goaway_last[0], (1u << 31) - 1);
    assert_int_equal(f->goaway_code[0], NGHTTP2_NO_ERROR);
    assert_int_equal(f->goaway_last[1], f->streams[s].id);
    assert_int_equal(f->goaway_code[1], NGHTTP2_NO_ERROR);
    assert_false(f->eof);
    assert_int_equal(f->w.nconns, 1); /* still serving the stream in flight */
    /* The request in flight is still answered, then the connection closes. */
    answer_text(g_seen[0], 200, "finished");
    assert_true(run_until(f, has_closed, s, 2000));
    assert_string_equal(f->streams[s].body, "finished");
    assert_true(run_until(f, has_eof, 0, 2000));
    assert_true(run_until(f, no_conns, 0, 2000));
    assert_int_equal(g_gone, 0);
}

static void test_shutdown_idle_connection_closes(void **state)
{
    fx *f = *state;
    connect_client(f, 0);
    int s = submit(f, "GET", "/x", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s, 2000));
    f->w.draining = 1;
    sb_http2_shutdown(&f->w);
    assert_true(run_until(f, no_conns, 0, 2000));
    assert_true(run_until(f, has_eof, 0, 2000));
    assert_int_equal(f->ngoaway, 1);
    assert_int_equal(f->goaway_last[0], (1u << 31) - 1); /* the notice */
    /* nghttp2's client stops parsing after a GOAWAY once it has no stream open, so the
     * final GOAWAY is checked on the wire: the last frame, naming stream 1. */
    static const unsigned char final_goaway[17] = {
        0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, NGHTTP2_NO_ERROR};
    assert_int_equal(f->streams[s].id, 1);
    assert_memory_equal(f->tail, final_goaway, sizeof(final_goaway));
}

static void test_close_all_detaches(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    submit(f, "GET", "/1", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 1, 2000));
    sb_http2_close_all(&f->w);
    assert_int_equal(f->w.nconns, 0);
    assert_null(f->w.h2conns);
    assert_int_equal(g_gone, 1);
    assert_true(sb_request_gone(g_seen[0]));
    assert_true(run_until(f, has_eof, 0, 2000));
}

static void test_rapid_reset_flood_gets_goaway(void **state)
{
    fx *f = *state;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    client_flush(f);
    pump(f, 20);
    /* HEADERS then RST_STREAM, 400 times, all in one burst. nghttp2's client would
     * cancel a request whose HEADERS were not sent yet, so each HEADERS is serialized
     * before its RST_STREAM is submitted. */
    for (int i = 0; i < 400; i++) {
        int s = submit(f, "GET", "/flood", NULL, 0, NULL, 0);
        client_flush(f);
        nghttp2_submit_rst_stream(f->cs, NGHTTP2_FLAG_NONE, f->streams[s].id, NGHTTP2_CANCEL);
        client_flush(f);
    }
    assert_true(run_until(f, has_goaway, 1, 3000));
    assert_int_equal(f->goaway_code[0], NGHTTP2_ENHANCE_YOUR_CALM);
    assert_true(run_until(f, has_eof, 0, 3000));
    assert_true(run_until(f, no_conns, 0, 2000));
    /* A stream reset within the same read as its HEADERS is never dispatched at all
     * (only a pair split across reads could be); whatever was, was let go. */
    assert_true(g_nseen < 10);
    assert_int_equal(f->w.inflight, 0);
}

static void test_idle_timeout(void **state)
{
    fx *f = *state;
    f->cfg.idle_timeout_s = 1;
    connect_client(f, 0);
    int s = submit(f, "GET", "/x", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_closed, s, 2000));
    uint64_t t0 = sb_now_mono_us();
    assert_true(run_until(f, has_eof, 0, 3000));
    assert_true(sb_now_mono_us() - t0 >= 800000);
    assert_true(f->ngoaway >= 1);
    assert_int_equal(f->goaway_code[0], NGHTTP2_NO_ERROR);
    assert_int_equal(f->w.nconns, 0);
}

static void test_no_idle_timeout_while_answer_pending(void **state)
{
    fx *f = *state;
    f->cfg.idle_timeout_s = 1;
    g_mode = MODE_HOLD;
    connect_client(f, 0);
    int s = submit(f, "GET", "/slow-upstream", NULL, 0, NULL, 0);
    assert_true(run_until(f, has_seen, 1, 2000));
    pump(f, 1500);
    assert_false(f->eof);
    answer_text(g_seen[0], 200, "late but fine");
    assert_true(run_until(f, has_closed, s, 2000));
    assert_string_equal(f->streams[s].body, "late but fine");
}

static void test_request_timeout(void **state)
{
    fx *f = *state;
    f->cfg.request_timeout_s = 1;
    connect_client(f, 0);
    static char partial[1000];
    int s = submit(f, "POST", "/dribble", partial, 10, NULL, 0);
    f->streams[s].hold = 1; /* then nothing: END_STREAM never comes */
    assert_true(run_until(f, has_closed, s, 3000));
    assert_int_equal(f->streams[s].status, 408);
    assert_int_equal(g_nseen, 0);
    assert_int_equal(f->w.inflight, 0);
}

static void test_bad_preface_closes(void **state)
{
    fx *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    struct bufferevent *bev = bufferevent_socket_new(f->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    sb_http2_conn_new(&f->w, bev, "127.0.0.1:1");
    f->cfd = sv[1];
    client_session_new(f); /* only for teardown; we write garbage ourselves */
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(f->cfd, junk, sizeof(junk) - 1, 0), (ssize_t)(sizeof(junk) - 1));
    char buf[4096];
    uint64_t deadline = sb_now_mono_us() + 2000000;
    int eof = 0;
    while (!eof && sb_now_mono_us() < deadline) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        ssize_t n = recv(f->cfd, buf, sizeof(buf), 0);
        if (n == 0)
            eof = 1;
        struct timespec ts = {0, 300000};
        nanosleep(&ts, NULL);
    }
    assert_true(eof);
    assert_int_equal(f->w.nconns, 0);
    assert_int_equal(g_nseen, 0);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_round_trip),
        T(test_handoff_from_http1),
        T(test_head_has_no_body),
        T(test_concurrent_out_of_order),
        T(test_large_request_body),
        T(test_concurrent_large_bodies_complete),
        T(test_large_response_body),
        T(test_413_content_length),
        T(test_413_large_rest_is_reset),
        T(test_413_streamed_body),
        T(test_431_header_bytes),
        T(test_rst_mid_request_detaches),
        T(test_client_disconnect_detaches),
        T(test_streamed_response_leaves_as_written),
        T(test_pending_counts_unsent_bytes),
        T(test_goaway_on_shutdown),
        T(test_shutdown_idle_connection_closes),
        T(test_close_all_detaches),
        T(test_rapid_reset_flood_gets_goaway),
        T(test_idle_timeout),
        T(test_no_idle_timeout_while_answer_pending),
        T(test_request_timeout),
        T(test_bad_preface_closes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
