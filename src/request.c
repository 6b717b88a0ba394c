/*
 * request.c — the protocol-neutral request and response objects (see request.h).
 *
 * Role: a codec fills an sb_request and hands it to the router; handlers answer through
 * sb_response_*, which this file turns into calls on the codec's sb_codec_ops. This file
 * knows nothing about any wire format: it never frames a body (the codec adds
 * Content-Length or chunking) and never touches a socket.
 *
 * Lifecycle: sb_request_new (one reference, the codec's; counted in worker->inflight) →
 * dispatch → a response that ends in state DONE (inflight decremented) → the codec
 * detaches and drops its reference → the last sb_request_unref frees everything. A
 * client that goes away first makes the codec detach early: ops become NULL, on_gone
 * runs once, inflight is decremented, and every later sb_response_* is a no-op, so async
 * callbacks holding their own reference can still answer harmlessly.
 *
 * Never: call into the codec once ops is NULL or the response is DONE, decrement
 * inflight twice, or touch a request after dropping the last reference to it. A codec's
 * send_end may drop the codec's own reference, so sb_response_* hold a temporary one
 * around the calls that can complete a response.
 */
#include "switchboard/request.h"
#include "switchboard/config.h"
#include <event2/bufferevent.h>
#include "switchboard/alloc.h"
#include "switchboard/jsontext.h"
#include "switchboard/metrics.h"
#include "switchboard/worker.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <assert.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

/* Responses with at most this many headers build their header list on the stack. */
#define RESP_STACK_HEADERS 16

/* ---- lifetime ---- */

/* Takes the request out of worker->inflight, at most once in its life. */
static void uncount(sb_request *r)
{
    if (!r->counted)
        return;
    r->counted = 0;
    if (r->worker != NULL) {
        assert(r->worker->inflight > 0);
        SB_OWNED_ADD(r->worker->inflight, -1);
    }
}

sb_request *sb_request_new(struct sb_worker *w, const sb_codec_ops *ops, void *stream)
{
    sb_request *r = sb_calloc(1, sizeof(*r));
    r->refs = 1;
    r->worker = w;
    r->method = SB_METHOD_OTHER;
    r->method_name = "UNKNOWN";
    sb_headers_init(&r->headers);
    r->body = sb_evbuffer_new();
    r->started_us = sb_chain_mono_us();
    r->ops = ops;
    r->stream = stream;
    r->resp_state = SB_RESP_NONE;
    r->counted = 1;
    if (w != NULL)
        SB_OWNED_ADD(w->inflight, 1);
    return r;
}

void sb_request_ref(sb_request *r)
{
    assert(r->refs > 0);
    r->refs++;
}

void sb_request_unref(sb_request *r)
{
    if (r == NULL)
        return;
    assert(r->refs > 0);
    if (--r->refs > 0)
        return;
    uncount(r);
    sb_free(r->path);
    sb_free(r->query);
    sb_free(r->error_message);
    sb_headers_clear(&r->headers);
    evbuffer_free(r->body);
    for (size_t i = 0; i < SB_ARRAY_LEN(r->params); i++)
        sb_free(r->params[i]);
    sb_free(r);
}

void sb_request_detach(sb_request *r)
{
    if (r->ops == NULL)
        return;
    r->ops = NULL;
    r->stream = NULL;
    uncount(r);
    if (r->resp_state == SB_RESP_DONE)
        return;
    sb_request_gone_fn fn = r->on_gone;
    void *arg = r->on_gone_arg;
    r->on_gone = NULL;
    r->on_gone_arg = NULL;
    if (fn != NULL) {
        /* on_gone may drop the handler's reference; keep the request alive across it. */
        sb_request_ref(r);
        fn(r, arg);
        sb_request_unref(r);
    }
}

int sb_request_gone(const sb_request *r)
{
    return r->ops == NULL;
}

/* ---- query strings ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes one character of a form-encoded string at *p (< end) and advances *p. */
static unsigned char decode_next(const char **p, const char *end)
{
    const char *s = *p;
    if (*s == '+') {
        *p = s + 1;
        return ' ';
    }
    if (*s == '%' && end - s >= 3) {
        int hi = hexval(s[1]), lo = hexval(s[2]);
        if (hi >= 0 && lo >= 0) {
            *p = s + 3;
            return (unsigned char)(hi * 16 + lo);
        }
    }
    *p = s + 1;
    return (unsigned char)*s;
}

/* 1 if the encoded [s, end) decodes exactly to |name|. */
static int decoded_equals(const char *s, const char *end, const char *name)
{
    const unsigned char *n = (const unsigned char *)name;
    while (s < end) {
        if (*n == '\0' || decode_next(&s, end) != *n)
            return 0;
        n++;
    }
    return *n == '\0';
}

int sb_request_query(const sb_request *r, const char *name, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    if (r->query == NULL)
        return SB_ERR_NOTFOUND;
    const char *p = r->query;
    while (*p != '\0') {
        const char *amp = strchr(p, '&');
        const char *end = amp ? amp : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *kend = eq ? eq : end;
        if (kend > p && decoded_equals(p, kend, name)) {
            const char *v = eq ? eq + 1 : end;
            size_t n = 0;
            while (v < end) {
                unsigned char c = decode_next(&v, end);
                if (c == '\0') {
                    if (cap > 0)
                        out[0] = '\0';
                    return SB_ERR_INVALID;
                }
                if (n + 1 >= cap) {
                    if (cap > 0)
                        out[0] = '\0';
                    return SB_ERR_TOOBIG;
                }
                out[n++] = (char)c;
            }
            if (cap == 0)
                return SB_ERR_TOOBIG;
            out[n] = '\0';
            return SB_OK;
        }
        p = amp ? amp + 1 : end;
    }
    return SB_ERR_NOTFOUND;
}

/* ---- responses ---- */

/* 1 if a response may start now. */
static int can_start(const sb_request *r)
{
    return r->ops != NULL && r->resp_state == SB_RESP_NONE;
}

/* Marks the response complete, counts it (switchboard_http_requests_total and the
 * duration histogram, by route pattern) and tells the codec; the codec may drop its
 * reference inside send_end, so a temporary one keeps |r| valid for the caller. */
static void mark_done(sb_request *r)
{
    r->resp_state = SB_RESP_DONE;
    uncount(r);
    sb_metrics_http_request(r->route, r->status, sb_chain_mono_us() - r->started_us);
}

static void finish(sb_request *r)
{
    mark_done(r);
    if (r->ops == NULL)
        return;
    sb_request_ref(r);
    r->ops->send_end(r->stream);
    sb_request_unref(r);
}

/* -Wcast-qual forbids casting away const directly; the header list only borrows. */
static char *unconst(const char *s)
{
    return (char *)(uintptr_t)s;
}

/* Appends '\n' to a non-empty |b| whose last byte is not one. */
static void end_with_newline(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    if (n == 0)
        return;
    struct evbuffer_ptr at;
    if (evbuffer_ptr_set(b, &at, n - 1, EVBUFFER_PTR_SET) != 0)
        return;
    char last = 0;
    if (evbuffer_copyout_from(b, &at, &last, 1) == 1 && last != '\n')
        evbuffer_add(b, "\n", 1);
}

void sb_response_send(sb_request *r, int status, const sb_headers *extra, const char *content_type,
                      struct evbuffer *body)
{
    if (!can_start(r)) {
        if (body != NULL)
            evbuffer_drain(body, evbuffer_get_length(body));
        return;
    }
    size_t nextra = extra ? extra->count : 0;
    int add_ct = content_type != NULL && sb_headers_get(extra, "Content-Type") == NULL;

    /* A borrowed, shallow header list: no copies, no allocation in the common case. */
    sb_header stack_items[RESP_STACK_HEADERS];
    sb_header *items = stack_items;
    size_t n = nextra + (size_t)add_ct;
    if (n > RESP_STACK_HEADERS)
        items = sb_malloc(n * sizeof(*items));
    if (nextra > 0)
        memcpy(items, extra->items, nextra * sizeof(*items));
    if (add_ct) {
        static char ct_name[] = "Content-Type";
        items[nextra].name = ct_name;
        items[nextra].value = unconst(content_type);
    }
    sb_headers h = {.items = items, .count = n, .cap = n};

    /* Every JSON document switchboard writes ends with a newline (SPEC §3), so `curl`
     * output and line-oriented tools behave; relayed agent bodies come with their own
     * Content-Type in |extra| and no |content_type|, and stay byte for byte. */
    if (body != NULL && add_ct && strcmp(content_type, "application/json") == 0)
        end_with_newline(body);
    long long len = body ? (long long)evbuffer_get_length(body) : 0;
    r->status = status;
    if (r->ops->send_whole != NULL) {
        mark_done(r); /* as finish() does before send_end */
        sb_request_ref(r);
        r->ops->send_whole(r->stream, status, &h, len, body);
        sb_request_unref(r);
        if (items != stack_items)
            sb_free(items);
        return;
    }
    r->resp_state = SB_RESP_STREAMING;
    r->ops->send_head(r->stream, status, &h, len);
    if (items != stack_items)
        sb_free(items);
    if (len > 0) {
        if (r->ops != NULL)
            r->ops->send_data(r->stream, body);
        else
            evbuffer_drain(body, (size_t)len);
    }
    finish(r);
}

void sb_response_json(sb_request *r, int status, json_t *body, const sb_headers *extra)
{
    if (!can_start(r)) {
        json_decref(body);
        return;
    }
    struct evbuffer *b = sb_evbuffer_new();
    int ok = 0;
    if (body != NULL) {
        /* Small documents (nearly all) are written into a stack buffer (jsontext.h). */
        char stackbuf[4096];
        sb_jbuf jb = {stackbuf, 0, sizeof(stackbuf), 0};
        sb_json_write(&jb, body);
        ok = evbuffer_add(b, jb.p, jb.len) == 0;
        if (jb.heap)
            sb_free(jb.p);
        json_decref(body);
    }
    if (ok) {
        sb_response_send(r, status, extra, "application/json", b);
    } else {
        evbuffer_drain(b, evbuffer_get_length(b));
        evbuffer_add_printf(b, "{\"error\":{\"code\":\"internal_error\",\"message\":\"%s\"}}",
                            "response could not be serialized");
        sb_response_send(r, 500, NULL, "application/json", b);
    }
    evbuffer_free(b);
}

void sb_response_error(sb_request *r, int status, const char *code, const char *fmt, ...)
{
    if (!can_start(r))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* The text may hold outside bytes, or a character cut by the size bound. */
    json_t *m = sb_json_text(msg);
    r->error_code = code;
    sb_free(r->error_message);
    r->error_message = sb_strdup(json_string_value(m));
    json_t *err = json_object();
    json_object_set_new(err, "code", json_string(code));
    json_object_set_new(err, "message", m);
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    sb_response_json(r, status, root, NULL);
}

void sb_response_redis_unavailable(sb_request *r)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Retry-After", "1");
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", "redis_unavailable", "message",
                             "Redis is not reachable; retry shortly");
    sb_response_json(r, 503, body, &h);
    sb_headers_clear(&h);
}

void sb_response_start(sb_request *r, int status, const sb_headers *headers)
{
    if (!can_start(r))
        return;
    static const sb_headers none = {.items = NULL};
    r->status = status;
    r->resp_state = SB_RESP_STREAMING;
    r->ops->send_head(r->stream, status, headers ? headers : &none, -1);
}

void sb_response_write(sb_request *r, struct evbuffer *data)
{
    if (r->ops == NULL || r->resp_state != SB_RESP_STREAMING) {
        evbuffer_drain(data, evbuffer_get_length(data));
        return;
    }
    if (evbuffer_get_length(data) > 0)
        r->ops->send_data(r->stream, data);
}

void sb_response_end(sb_request *r)
{
    if (r->resp_state != SB_RESP_STREAMING)
        return;
    finish(r);
}

size_t sb_response_pending(const sb_request *r)
{
    if (r->ops == NULL)
        return 0;
    return r->ops->pending(r->stream);
}

const char *sb_http_date(struct event_base *base, size_t *len)
{
    static _Thread_local time_t last = -1;
    static _Thread_local char value[40];
    static _Thread_local size_t value_len;
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct timeval tv;
    if (event_base_gettimeofday_cached(base, &tv) != 0)
        gettimeofday(&tv, NULL);
    if (tv.tv_sec != last) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        int n = snprintf(value, sizeof(value), "%s, %02d %s %04d %02d:%02d:%02d GMT",
                         days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        value_len = n > 0 ? (size_t)n : 0;
        last = tv.tv_sec;
    }
    *len = value_len;
    return value;
}

const struct timeval *sb_codec_timeout(struct event_base *base, int seconds)
{
    if (seconds <= 0)
        return NULL;
    struct timeval tv = {seconds, 0};
    const struct timeval *t = event_base_init_common_timeout(base, &tv);
    if (t != NULL)
        return t;
    /* Only when the base has no room left. Callers keep the pointer, so a slot is
     * reused only for the same duration (there are a handful: the configured ones). */
    static _Thread_local struct timeval plain[4];
    static _Thread_local unsigned nplain;
    for (unsigned i = 0; i < nplain; i++) {
        if (plain[i].tv_sec == seconds)
            return &plain[i];
    }
    unsigned i = nplain < SB_ARRAY_LEN(plain) ? nplain++ : SB_ARRAY_LEN(plain) - 1;
    plain[i] = tv;
    return &plain[i];
}

int sb_codec_bev_init(struct bufferevent *bev, const struct sb_config *cfg)
{
    int stall = cfg->idle_timeout_s > 0 ? cfg->idle_timeout_s : 60;
    struct timeval write_tv = {stall, 0};
    bufferevent_set_timeouts(bev, NULL, &write_tv);
    return sb_bev_write_first(bev);
}
