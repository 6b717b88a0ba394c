/*
 * test_request.c — the protocol-neutral request layer against a recording fake codec:
 * header lists, query decoding, every sb_response_* path, inflight bookkeeping,
 * detach/on_gone, and a codec that drops its reference inside send_end. Also the codec
 * socket support on a real socket pair: write-first output (EV_WRITE armed only while
 * the socket is full, the stall timeout while it stays full) and direct reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/config.h"
#include "switchboard/request.h"
#include "switchboard/util.h"
#include "switchboard/worker.h"

/* ---- a fake codec that records what the request layer asks of it ---- */

typedef struct fake_stream {
    int heads, datas, ends;
    int status;
    long long body_len;
    sb_headers head_copy;
    struct evbuffer *data;
    size_t pending;
    sb_request *codec_ref; /* dropped inside send_end when drop_in_end is set */
    int drop_in_end;
} fake_stream;

static void fake_head(void *stream, int status, const sb_headers *h, long long body_len)
{
    fake_stream *s = stream;
    s->heads++;
    s->status = status;
    s->body_len = body_len;
    for (size_t i = 0; i < h->count; i++)
        sb_headers_add(&s->head_copy, h->items[i].name, h->items[i].value);
}

static void fake_data(void *stream, struct evbuffer *data)
{
    fake_stream *s = stream;
    s->datas++;
    evbuffer_add_buffer(s->data, data);
}

static void fake_end(void *stream)
{
    fake_stream *s = stream;
    s->ends++;
    if (s->drop_in_end && s->codec_ref != NULL) {
        sb_request *r = s->codec_ref;
        s->codec_ref = NULL;
        sb_request_detach(r);
        sb_request_unref(r);
    }
}

static size_t fake_pending(void *stream)
{
    fake_stream *s = stream;
    return s->pending;
}

static const sb_codec_ops fake_ops = {fake_head, fake_data, fake_end, fake_pending, NULL};

static void fake_init(fake_stream *s)
{
    memset(s, 0, sizeof(*s));
    sb_headers_init(&s->head_copy);
    s->data = evbuffer_new();
}

static void fake_clear(fake_stream *s)
{
    sb_headers_clear(&s->head_copy);
    evbuffer_free(s->data);
}

static char *data_str(fake_stream *s)
{
    evbuffer_add(s->data, "", 1);
    return (char *)evbuffer_pullup(s->data, -1);
}

/* ---- header lists ---- */

static void test_headers_case_insensitive(void **state)
{
    sb_headers h;
    sb_headers_init(&h);
    assert_null(sb_headers_get(&h, "Host"));
    sb_headers_add(&h, "Content-Type", "text/plain");
    sb_headers_addn(&h, "X-Thing-Extra", 7, "valueXYZ", 5);
    sb_headers_add(&h, "content-type", "second");
    for (int i = 0; i < 40; i++) /* grows past the initial capacity */
        sb_headers_add(&h, "X-Fill", "f");
    assert_string_equal(sb_headers_get(&h, "CONTENT-TYPE"), "text/plain");
    assert_string_equal(sb_headers_get(&h, "x-thing"), "value");
    assert_null(sb_headers_get(&h, "X-Thing-Extra"));
    assert_null(sb_headers_get(&h, "Content"));
    assert_int_equal(h.count, 43);
    assert_null(sb_headers_get(NULL, "Host"));
    sb_headers_clear(&h);
    assert_int_equal(h.count, 0);
    assert_null(sb_headers_get(&h, "Content-Type"));
    sb_headers_add(&h, "A", "b"); /* reusable after clear */
    assert_string_equal(sb_headers_get(&h, "a"), "b");
    sb_headers_clear(&h);
}

/* ---- query strings ---- */

static sb_request *query_req(const char *q)
{
    sb_request *r = sb_request_new(NULL, &fake_ops, NULL);
    r->query = q ? sb_strdup(q) : NULL;
    return r;
}

static void test_query_decoding(void **state)
{
    sb_request *r = query_req("max=10&wait_s=&name=hello+w%6Frld&b%61d=%zz%4&flag&max=99&"
                              "sp%20ace=a%2Bb&nul=a%00b&long=abcdefghij");
    char out[8];
    assert_int_equal(sb_request_query(r, "max", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "10"); /* the first one wins */
    assert_int_equal(sb_request_query(r, "wait_s", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "");
    char big[32];
    assert_int_equal(sb_request_query(r, "name", big, sizeof(big)), SB_OK);
    assert_string_equal(big, "hello world");
    assert_int_equal(sb_request_query(r, "bad", big, sizeof(big)), SB_OK); /* encoded key */
    assert_string_equal(big, "%zz%4");                                     /* kept literally */
    assert_int_equal(sb_request_query(r, "flag", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "");
    assert_int_equal(sb_request_query(r, "sp ace", out, sizeof(out)), SB_OK);
    assert_string_equal(out, "a+b");
    assert_int_equal(sb_request_query(r, "nul", out, sizeof(out)), SB_ERR_INVALID);
    assert_int_equal(sb_request_query(r, "long", out, sizeof(out)), SB_ERR_TOOBIG);
    assert_string_equal(out, "");
    assert_int_equal(sb_request_query(r, "long", big, 11), SB_OK); /* exactly fits */
    assert_string_equal(big, "abcdefghij");
    assert_int_equal(sb_request_query(r, "long", big, 10), SB_ERR_TOOBIG);
    assert_int_equal(sb_request_query(r, "ma", out, sizeof(out)), SB_ERR_NOTFOUND);
    assert_int_equal(sb_request_query(r, "maxx", out, sizeof(out)), SB_ERR_NOTFOUND);
    assert_int_equal(sb_request_query(r, "MAX", out, sizeof(out)), SB_ERR_NOTFOUND);
    sb_request_unref(r);

    r = query_req(NULL);
    assert_int_equal(sb_request_query(r, "max", out, sizeof(out)), SB_ERR_NOTFOUND);
    sb_request_unref(r);
    r = query_req("");
    assert_int_equal(sb_request_query(r, "max", out, sizeof(out)), SB_ERR_NOTFOUND);
    sb_request_unref(r);
}

/* ---- responses ---- */

static void test_json_response_and_inflight(void **state)
{
    sb_worker w;
    memset(&w, 0, sizeof(w));
    fake_stream s;
    fake_init(&s);
    sb_request *r = sb_request_new(&w, &fake_ops, &s);
    assert_int_equal(w.inflight, 1);
    assert_string_equal(r->method_name, "UNKNOWN");
    assert_non_null(r->body);
    assert_true(r->started_us > 0);
    assert_false(sb_request_gone(r));

    sb_response_json(r, 201, json_pack("{s:i,s:s}", "a", 1, "b", "x"), NULL);
    assert_int_equal(w.inflight, 0);
    assert_int_equal(r->resp_state, SB_RESP_DONE);
    assert_int_equal(r->status, 201);
    assert_int_equal(s.heads, 1);
    assert_int_equal(s.ends, 1);
    assert_int_equal(s.status, 201);
    assert_string_equal(sb_headers_get(&s.head_copy, "content-type"), "application/json");
    assert_int_equal(s.body_len, 16); /* every JSON body ends with a newline */
    assert_string_equal(data_str(&s), "{\"a\":1,\"b\":\"x\"}\n");

    /* A second answer, in any form, is a no-op and does not touch inflight again. */
    sb_response_json(r, 500, json_object(), NULL);
    sb_response_error(r, 500, "x", "y");
    sb_response_start(r, 200, NULL);
    sb_response_end(r);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "zz", 2);
    sb_response_send(r, 200, NULL, "text/plain", b);
    assert_int_equal(evbuffer_get_length(b), 0); /* drained even as a no-op */
    evbuffer_free(b);
    assert_int_equal(s.heads, 1);
    assert_int_equal(s.ends, 1);
    assert_int_equal(w.inflight, 0);

    sb_request_detach(r); /* what the codec does when it lets go */
    assert_true(sb_request_gone(r));
    assert_int_equal(w.inflight, 0);
    sb_request_unref(r);
    fake_clear(&s);
}

static void test_json_large_and_null(void **state)
{
    fake_stream s;
    fake_init(&s);
    sb_request *r = sb_request_new(NULL, &fake_ops, &s);
    json_t *arr = json_array();
    for (int i = 0; i < 2000; i++) /* well over the 4 KiB stack buffer */
        json_array_append_new(arr, json_string("0123456789"));
    char *dumped = json_dumps(arr, JSON_COMPACT);
    char *expect = malloc(strlen(dumped) + 2);
    sprintf(expect, "%s\n", dumped);
    free(dumped);
    sb_response_json(r, 200, arr, NULL);
    assert_int_equal(s.body_len, (long long)strlen(expect));
    assert_string_equal(data_str(&s), expect);
    free(expect);
    sb_request_unref(r);
    fake_clear(&s);

    fake_init(&s);
    r = sb_request_new(NULL, &fake_ops, &s);
    sb_response_json(r, 200, NULL, NULL);
    assert_int_equal(s.status, 500);
    assert_non_null(strstr(data_str(&s), "\"internal_error\""));
    sb_request_unref(r);
    fake_clear(&s);
}

static void test_error_body(void **state)
{
    fake_stream s;
    fake_init(&s);
    sb_request *r = sb_request_new(NULL, &fake_ops, &s);
    sb_response_error(r, 404, "not_found", "no workspace %s (%d)",
                      "w\xff"
                      "1",
                      7);
    assert_int_equal(s.status, 404);
    json_error_t jerr;
    json_t *doc = json_loads(data_str(&s), 0, &jerr);
    assert_non_null(doc);
    assert_int_equal(json_object_size(doc), 1);
    json_t *e = json_object_get(doc, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "not_found");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "no workspace w\xEF\xBF\xBD" /* U+FFFD for the invalid byte */
                        "1 (7)");
    json_decref(doc);
    sb_request_unref(r);
    fake_clear(&s);
}

static void test_send_headers_and_body(void **state)
{
    fake_stream s;
    fake_init(&s);
    sb_request *r = sb_request_new(NULL, &fake_ops, &s);
    sb_headers extra;
    sb_headers_init(&extra);
    sb_headers_add(&extra, "X-Delivery-Mode", "push");
    sb_headers_add(&extra, "content-type", "text/event-stream");
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "hello", 5);
    sb_response_send(r, 200, &extra, "application/json", b);
    assert_int_equal(evbuffer_get_length(b), 0);
    assert_int_equal(s.body_len, 5);
    assert_int_equal(s.head_copy.count, 2); /* no second Content-Type */
    assert_string_equal(sb_headers_get(&s.head_copy, "Content-Type"), "text/event-stream");
    assert_string_equal(sb_headers_get(&s.head_copy, "x-delivery-mode"), "push");
    assert_string_equal(data_str(&s), "hello");
    sb_request_unref(r);
    fake_clear(&s);

    /* More headers than the stack list holds, no body, no content type. */
    fake_init(&s);
    r = sb_request_new(NULL, &fake_ops, &s);
    for (int i = 0; i < 40; i++)
        sb_headers_add(&extra, "X-N", "v");
    sb_response_send(r, 204, &extra, NULL, NULL);
    assert_int_equal(s.status, 204);
    assert_int_equal(s.body_len, 0);
    assert_int_equal(s.datas, 0);
    assert_int_equal(s.head_copy.count, 42);
    sb_request_unref(r);
    fake_clear(&s);
    sb_headers_clear(&extra);
    evbuffer_free(b);
}

static void test_streaming(void **state)
{
    sb_worker w;
    memset(&w, 0, sizeof(w));
    fake_stream s;
    fake_init(&s);
    sb_request *r = sb_request_new(&w, &fake_ops, &s);
    struct evbuffer *b = evbuffer_new();

    evbuffer_add(b, "early", 5);
    sb_response_write(r, b); /* before start: dropped */
    assert_int_equal(evbuffer_get_length(b), 0);
    sb_response_end(r); /* before start: ignored */
    assert_int_equal(s.ends, 0);

    sb_response_start(r, 200, NULL);
    assert_int_equal(s.body_len, -1);
    assert_int_equal(r->resp_state, SB_RESP_STREAMING);
    assert_int_equal(w.inflight, 1);
    evbuffer_add(b, "data: 1\n\n", 9);
    sb_response_write(r, b);
    sb_response_write(r, b); /* empty: not forwarded */
    evbuffer_add(b, "data: 2\n\n", 9);
    sb_response_write(r, b);
    assert_int_equal(s.datas, 2);
    s.pending = 1234;
    assert_int_equal(sb_response_pending(r), 1234);
    sb_response_end(r);
    assert_int_equal(s.ends, 1);
    assert_int_equal(w.inflight, 0);
    assert_string_equal(data_str(&s), "data: 1\n\ndata: 2\n\n");
    sb_request_detach(r);
    assert_int_equal(sb_response_pending(r), 0);
    sb_request_unref(r);
    evbuffer_free(b);
    fake_clear(&s);
}

/* The codec drops its (only) reference inside send_end, as http1 does for a response
 * answered synchronously: the request layer must not touch freed memory (ASan). */
static void test_codec_drops_ref_in_send_end(void **state)
{
    sb_worker w;
    memset(&w, 0, sizeof(w));
    fake_stream s;
    fake_init(&s);
    sb_request *r = sb_request_new(&w, &fake_ops, &s);
    s.codec_ref = r;
    s.drop_in_end = 1;
    sb_response_error(r, 400, "bad_request", "nope");
    assert_int_equal(s.ends, 1);
    assert_null(s.codec_ref);
    assert_int_equal(w.inflight, 0);
    fake_clear(&s);

    fake_init(&s);
    r = sb_request_new(&w, &fake_ops, &s);
    s.codec_ref = r;
    s.drop_in_end = 1;
    sb_response_start(r, 200, NULL);
    sb_response_end(r);
    assert_int_equal(s.ends, 1);
    assert_int_equal(w.inflight, 0);
    fake_clear(&s);
}

static int gone_calls;
static void *gone_arg;

static void on_gone(sb_request *r, void *arg)
{
    gone_calls++;
    gone_arg = arg;
    assert_true(sb_request_gone(r)); /* already marked when the hook runs */
    sb_response_error(r, 500, "x", "must be a no-op");
}

static void test_detach_and_gone(void **state)
{
    sb_worker w;
    memset(&w, 0, sizeof(w));
    fake_stream s;
    fake_init(&s);
    int tag;
    gone_calls = 0;

    sb_request *r = sb_request_new(&w, &fake_ops, &s);
    sb_request_ref(r); /* a handler's async reference */
    r->on_gone = on_gone;
    r->on_gone_arg = &tag;
    sb_response_start(r, 200, NULL);
    sb_request_detach(r); /* client went away mid-stream */
    assert_int_equal(gone_calls, 1);
    assert_ptr_equal(gone_arg, &tag);
    assert_true(sb_request_gone(r));
    assert_int_equal(w.inflight, 0);
    sb_request_detach(r);
    assert_int_equal(gone_calls, 1);
    sb_request_unref(r); /* codec's */

    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "late", 4);
    sb_response_write(r, b);
    assert_int_equal(evbuffer_get_length(b), 0);
    sb_response_end(r);
    sb_response_json(r, 200, json_object(), NULL);
    assert_int_equal(s.heads, 1);
    assert_int_equal(s.datas, 0);
    assert_int_equal(s.ends, 0);
    assert_int_equal(w.inflight, 0);
    sb_request_unref(r); /* handler's: frees */

    /* Detach after a complete response: no on_gone. */
    r = sb_request_new(&w, &fake_ops, &s);
    r->on_gone = on_gone;
    sb_response_send(r, 200, NULL, NULL, NULL);
    sb_request_detach(r);
    assert_int_equal(gone_calls, 1);
    assert_int_equal(w.inflight, 0);
    sb_request_unref(r);

    /* Freed without ever being answered or detached: still uncounted exactly once. */
    r = sb_request_new(&w, &fake_ops, &s);
    sb_request *r2 = sb_request_new(&w, &fake_ops, &s);
    assert_int_equal(w.inflight, 2);
    sb_request_unref(r);
    assert_int_equal(w.inflight, 1);
    sb_request_detach(r2);
    assert_int_equal(w.inflight, 0);
    sb_request_unref(r2);
    assert_int_equal(w.inflight, 0);

    evbuffer_free(b);
    fake_clear(&s);
}

static void test_owned_fields_freed(void **state)
{
    sb_request *r = sb_request_new(NULL, &fake_ops, NULL);
    r->path = sb_strdup("/workspaces/ws1/a2a");
    r->query = sb_strdup("a=b");
    r->params[0] = sb_strdup("ws1");
    r->params[2] = sb_strdup("x");
    sb_headers_add(&r->headers, "Host", "h");
    evbuffer_add(r->body, "body", 4);
    sb_request_unref(r); /* ASan/valgrind report a leak if anything is not freed */
}

static void test_reason_phrases(void **state)
{
    assert_string_equal(sb_http_reason_phrase(200), "OK");
    assert_string_equal(sb_http_reason_phrase(100), "Continue");
    assert_string_equal(sb_http_reason_phrase(404), "Not Found");
    assert_string_equal(sb_http_reason_phrase(408), "Request Timeout");
    assert_string_equal(sb_http_reason_phrase(413), "Payload Too Large");
    assert_string_equal(sb_http_reason_phrase(431), "Request Header Fields Too Large");
    assert_string_equal(sb_http_reason_phrase(503), "Service Unavailable");
    assert_string_equal(sb_http_reason_phrase(299), "Unknown");
}

/* ---- write-first output and direct reads on a socket pair ---- */

typedef struct bev_fx {
    struct event_base *base;
    struct bufferevent *bev;
    int peer;
    int writes;  /* write callbacks */
    short event; /* last event callback */
} bev_fx;

static void fx_write_cb(struct bufferevent *bev, void *arg)
{
    bev_fx *f = arg;
    f->writes++;
    sb_bev_flush(bev); /* what the codecs do: EV_WRITE off once drained */
}

static void fx_event_cb(struct bufferevent *bev, short what, void *arg)
{
    ((bev_fx *)arg)->event = what;
}

static void bev_fx_open(bev_fx *f, int stall_s)
{
    memset(f, 0, sizeof(*f));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    f->peer = sv[1];
    f->base = event_base_new();
    f->bev = bufferevent_socket_new(f->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(f->bev, NULL, fx_write_cb, fx_event_cb, f);
    sb_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.idle_timeout_s = stall_s;
    assert_int_equal(sb_codec_bev_init(f->bev, &cfg), 1); /* a plain socket */
}

static void bev_fx_close(bev_fx *f)
{
    bufferevent_free(f->bev);
    if (f->peer >= 0)
        close(f->peer);
    event_base_free(f->base);
}

static size_t peer_drain(bev_fx *f)
{
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = read(f->peer, buf, sizeof(buf))) > 0)
        total += (size_t)n;
    return total;
}

static int writing(bev_fx *f)
{
    return (bufferevent_get_enabled(f->bev) & EV_WRITE) != 0;
}

static void test_write_first_flush(void **state)
{
    bev_fx f;
    bev_fx_open(&f, 5);
    struct evbuffer *out = bufferevent_get_output(f.bev);
    assert_false(writing(&f));

    /* Room in the socket: written at once, nothing armed, no callback needed. */
    evbuffer_add(out, "hello", 5);
    sb_bev_flush(f.bev);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_false(writing(&f));
    char got[8];
    assert_int_equal(read(f.peer, got, sizeof(got)), 5);
    assert_memory_equal(got, "hello", 5);

    /* More than the socket takes: EV_WRITE armed until the rest is out, then off. */
    static char big[1 << 20];
    memset(big, 'x', sizeof(big));
    for (int i = 0; i < 8; i++)
        evbuffer_add(out, big, sizeof(big));
    sb_bev_flush(f.bev);
    assert_true(evbuffer_get_length(out) > 0);
    assert_true(writing(&f));
    size_t total = 8u << 20, seen = 0;
    time_t deadline = time(NULL) + 10;
    while ((evbuffer_get_length(out) > 0 || seen < total) && time(NULL) < deadline) {
        seen += peer_drain(&f);
        event_base_loop(f.base, EVLOOP_NONBLOCK);
    }
    seen += peer_drain(&f);
    assert_int_equal(seen, total);
    assert_true(f.writes > 0);
    assert_false(writing(&f));
    assert_int_equal(f.event, 0);
    bev_fx_close(&f);
}

static void test_write_first_stall_timeout(void **state)
{
    bev_fx f;
    bev_fx_open(&f, 1);
    static char big[1 << 20];
    memset(big, 'y', sizeof(big));
    struct evbuffer *out = bufferevent_get_output(f.bev);
    for (int i = 0; i < 8; i++)
        evbuffer_add(out, big, sizeof(big));
    sb_bev_flush(f.bev); /* the peer never reads */
    assert_true(writing(&f));
    time_t deadline = time(NULL) + 10;
    while (f.event == 0 && time(NULL) < deadline)
        event_base_loop(f.base, EVLOOP_ONCE);
    assert_int_equal(f.event, BEV_EVENT_TIMEOUT | BEV_EVENT_WRITING);
    bev_fx_close(&f);
}

static void test_direct_read(void **state)
{
    bev_fx f;
    bev_fx_open(&f, 5);
    struct evbuffer *in = bufferevent_get_input(f.bev);
    assert_int_equal(sb_bev_read(f.bev), SB_BEV_READ_AGAIN);
    assert_int_equal(write(f.peer, "abc", 3), 3);
    assert_int_equal(sb_bev_read(f.bev), 3);
    assert_int_equal(write(f.peer, "de", 2), 2);
    assert_int_equal(sb_bev_read(f.bev), 2);
    assert_int_equal(evbuffer_get_length(in), 5);
    assert_memory_equal(evbuffer_pullup(in, -1), "abcde", 5);
    close(f.peer);
    f.peer = -1;
    assert_int_equal(sb_bev_read(f.bev), 0); /* EOF */
    bev_fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_case_insensitive),
        cmocka_unit_test(test_query_decoding),
        cmocka_unit_test(test_json_response_and_inflight),
        cmocka_unit_test(test_json_large_and_null),
        cmocka_unit_test(test_error_body),
        cmocka_unit_test(test_send_headers_and_body),
        cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_codec_drops_ref_in_send_end),
        cmocka_unit_test(test_detach_and_gone),
        cmocka_unit_test(test_owned_fields_freed),
        cmocka_unit_test(test_reason_phrases),
        cmocka_unit_test(test_write_first_flush),
        cmocka_unit_test(test_write_first_stall_timeout),
        cmocka_unit_test(test_direct_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
