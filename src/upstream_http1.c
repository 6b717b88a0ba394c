/*
 * upstream_http1.c — the HTTP/1.1 exchange of the upstream pool (see upstream.c for the
 * overview): writing the request head and body on a connection in CONN_ACTIVE, parsing
 * the response with http_parser, and deciding whether the connection may be reused.
 *
 * One request at a time per connection, no pipelining. The head is serialized in one
 * reserved region; the body is moved into the socket buffer on a fresh connection and
 * kept on a reused one, so a retry can send it again: copied into the head's region
 * when it is at most BODY_INLINE_MAX bytes, else referenced (or copied when it is
 * itself a reference). On a plain socket the request is written from the loop at the
 * end of the turn (up_conn_write_soon, sb_bev_flush: one writev, EV_WRITE armed only
 * if the socket is full), so the requests of one turn reach the agents in one burst
 * (writing each at once counts ~0.6k fewer instructions but cost ~1-2 us more user
 * CPU per push under load: the agent is woken in the middle of the turn), and the
 * response read by the connection's own EV_READ event
 * (upstream_conn.c, sb_bev_read: no FIONREAD per read).
 *
 * Keep-alive: a connection goes back to its origin's stack only when the response said
 * so (HTTP/1.1 without "Connection: close", or HTTP/1.0 with keep-alive), was not framed
 * by EOF, the request was fully written and no stray byte followed the response. Idle
 * connections keep reading: any byte or EOF while idle closes them (upstream_conn.c).
 * At most max_idle_per_origin idle connections are kept per origin.
 *
 * Failures decided here: EOF or a socket error before the response completed →
 * connection_reset (retried once on a reused connection that delivered no response
 * byte); unparseable HTTP, an unexpected 101 or a body over max_response_bytes →
 * invalid_response.
 *
 * Never: reuse a connection whose response state is uncertain.
 */
#include "switchboard/upstream.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream_h2.h"
#include "switchboard/util.h"

#include "upstream_int.h"

/* ---------------------------------------------------------------- the request head */

/* Serializes the HTTP/1.1 request head into |out|, in one reserved region and without
 * printf. */
/* Bodies up to this size that cannot be referenced (a reused connection, and the body is
 * itself a reference: deliver.c keeps the caller's bytes for a fallback) are copied into
 * the head's region: one reservation instead of a second chain and evbuffer_add. */
#define BODY_INLINE_MAX 16384

/* The request head, followed by the first |body_inline| bytes of req->body (copied, not
 * drained: a retry sends them again). */
static void h1_write_head(struct evbuffer *out, const sb_upstream_req *req, size_t body_inline)
{
    static const char conn_hdr[] = "Connection: keep-alive\r\n";
    static const char clen_hdr[] = "Content-Length: ";
    long long clen = up_req_content_length(req);
    size_t mlen = req->method_len, plen = req->path_len, alen = req->authority_len;
    size_t total = mlen + 1 + plen + sizeof(" HTTP/1.1\r\nHost: ") - 1 + alen + 2 +
                   (clen >= 0 ? sizeof(clen_hdr) - 1 + 20 + 2 : 0) + sizeof(conn_hdr) - 1 + 2 +
                   req->hdrs_wire + body_inline;

    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, &v, 1) != 1 || v.iov_len < total) {
        fprintf(stderr, "switchboard: evbuffer_reserve_space failed\n");
        abort();
    }
    char *p = v.iov_base;
#define PUT(s, n)                                                                                  \
    do {                                                                                           \
        memcpy(p, (s), (n));                                                                       \
        p += (n);                                                                                  \
    } while (0)
#define PUTLIT(s) PUT((s), sizeof(s) - 1)
    PUT(req->method, mlen);
    PUTLIT(" ");
    PUT(req->path, plen);
    PUTLIT(" HTTP/1.1\r\nHost: ");
    PUT(req->authority, alen);
    PUTLIT("\r\n");
    if (clen >= 0) {
        PUTLIT(clen_hdr);
        p += up_format_u64((uint64_t)clen, p);
        PUTLIT("\r\n");
    }
    PUTLIT(conn_hdr);
    for (size_t i = 0; i < req->n_hdrs; i++) {
        const sb_header *h = &req->hdrs[i];
        PUT(h->name, req->hdr_lens[2 * i]);
        PUTLIT(": ");
        PUT(h->value, req->hdr_lens[2 * i + 1]);
        PUTLIT("\r\n");
    }
    PUTLIT("\r\n");
    if (body_inline > 0) {
        if (evbuffer_copyout(req->body, p, body_inline) != (ev_ssize_t)body_inline) {
            fprintf(stderr, "switchboard: evbuffer_copyout failed\n");
            abort();
        }
        p += body_inline;
    }
#undef PUTLIT
#undef PUT
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    evbuffer_commit_space(out, &v, 1);
}

/* ---------------------------------------------------------------- response parser */

static void hbuf_append(up_conn *c, const char *at, size_t len)
{
    if (len == 0)
        return; /* the parser may deliver an empty piece; hbuf may still be NULL */
    size_t need = c->hname + c->hval + len;
    if (need > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 256;
        while (cap < need)
            cap *= 2;
        c->hbuf = sb_realloc(c->hbuf, cap);
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hname + c->hval, at, len);
}

/* Copies the header's pieces that still point into the chunk being parsed into hbuf:
 * before the chunk is drained, and before a piece that does not continue a kept one. */
static void header_spill(up_conn *c)
{
    if (c->d_name != NULL) {
        hbuf_append(c, c->d_name, c->d_name_len);
        c->hname += c->d_name_len;
        if (c->d_value != NULL) {
            hbuf_append(c, c->d_value, c->d_value_len);
            c->hval += c->d_value_len;
        }
        c->d_name = c->d_value = NULL;
    }
}

static void header_commit(up_conn *c)
{
    if (c->d_name != NULL) /* the whole header lies in the chunk being parsed */
        sb_headers_addn(&c->req->resp_headers, c->d_name, c->d_name_len,
                        c->d_value != NULL ? c->d_value : "",
                        c->d_value != NULL ? c->d_value_len : 0);
    else if (c->hstate == HDR_VALUE || c->hstate == HDR_FIELD)
        sb_headers_addn(&c->req->resp_headers, c->hbuf, c->hname, c->hbuf + c->hname, c->hval);
    c->hstate = HDR_NONE;
    c->hname = c->hval = 0;
    c->d_name = c->d_value = NULL;
}

static int on_message_begin(http_parser *hp)
{
    up_conn *c = hp->data;
    c->hstate = HDR_NONE;
    c->hname = c->hval = 0;
    c->d_name = c->d_value = NULL;
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    if (c->hstate == HDR_VALUE)
        header_commit(c);
    c->hstate = HDR_FIELD;
    /* a value begun has been committed above: a kept name has no value yet */
    if (!sb_span_take(&c->d_name, &c->d_name_len, c->hname == 0 && c->hval == 0, at, len)) {
        header_spill(c);
        hbuf_append(c, at, len);
        c->hname += len;
    }
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    c->hstate = HDR_VALUE;
    if (!sb_span_take(&c->d_value, &c->d_value_len, c->d_name != NULL, at, len)) {
        header_spill(c);
        hbuf_append(c, at, len);
        c->hval += len;
    }
    return 0;
}
static int on_headers_complete(http_parser *hp)
{
    up_conn *c = hp->data;
    sb_upstream_pool *p = c->pool;
    sb_upstream_req *req = c->req;
    header_commit(c);
    if (hp->status_code == 101) {
        c->err = "unexpected 101 Switching Protocols";
        return -1;
    }
    if (hp->status_code / 100 == 1)
        return 1; /* interim response: no body, the real one follows */
    if (hp->status_code < 100 || hp->status_code > 999) {
        c->err = "status code out of range";
        return -1;
    }
    if (up_body_limited(req) && hp->content_length != ULLONG_MAX &&
        hp->content_length > p->max_response_bytes) {
        c->err = "body over the response size limit";
        return -1;
    }
    if (req->resp_body == NULL)
        req->resp_body = evbuffer_new();
    req->res.status = hp->status_code;
    req->res.http_version = hp->http_major * 10 + hp->http_minor;
    up_stream_head_arrived(req);
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    up_conn *c = hp->data;
    struct evbuffer *b = c->req->resp_body;
    if (up_body_limited(c->req) && evbuffer_get_length(b) + len > c->pool->max_response_bytes) {
        c->err = "body over the response size limit";
        return -1;
    }
    evbuffer_add(b, at, len);
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    up_conn *c = hp->data;
    if (hp->status_code / 100 == 1) {
        /* Headers of an interim response are not the answer's. */
        sb_headers_clear(&c->req->resp_headers);
        return 0;
    }
    c->msg_done = 1;
    c->keepalive = http_should_keep_alive(hp);
    http_parser_pause(hp, 1); /* stop at the end of this response */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------------------------------------------------------------- keep-alive */

/* Parks an HTTP/1.1 connection that finished a response cleanly, or closes it when the
 * origin already keeps enough idle ones. */
static void conn_make_idle(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    up_origin *o = c->origin;
    if (o->n_idle >= p->max_idle_per_origin) {
        up_conn_close(c);
        return;
    }
    c->state = CONN_IDLE;
    c->req = NULL;
    c->idle_prev = NULL;
    c->idle_next = o->idle;
    if (o->idle)
        o->idle->idle_prev = c;
    o->idle = c;
    o->n_idle++;
    /* An idle connection keeps reading (a byte or EOF closes it), even when a paused
     * stream had stopped it. */
    up_conn_set_reading(c, 1);
    up_lru_add(c);
}

/* ---------------------------------------------------------------- HTTP/1.1 request flow */

/* Appends a copy of |src| to |dst|, leaving |src| as it is. */
static void copy_buffer(struct evbuffer *dst, struct evbuffer *src)
{
    struct evbuffer_ptr pos;
    struct evbuffer_iovec v[8];
    evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
    size_t left = evbuffer_get_length(src);
    while (left > 0) {
        int n = evbuffer_peek(src, (ev_ssize_t)left, &pos, v, (int)SB_ARRAY_LEN(v));
        if (n > (int)SB_ARRAY_LEN(v))
            n = (int)SB_ARRAY_LEN(v);
        size_t step = 0;
        for (int i = 0; i < n; i++) {
            size_t len = v[i].iov_len < left - step ? v[i].iov_len : left - step;
            evbuffer_add(dst, v[i].iov_base, len);
            step += len;
        }
        left -= step;
        if (left == 0 || evbuffer_ptr_set(src, &pos, step, EVBUFFER_PTR_ADD) != 0)
            break;
    }
}

void up_conn_send(up_conn *c, sb_upstream_req *req)
{
    struct evbuffer *output = bufferevent_get_output(c->bev);
    c->state = CONN_ACTIVE;
    c->req = req;
    c->reused = c->served > 0;
    c->rx_bytes = 0;
    c->msg_done = 0;
    c->keepalive = 0;
    c->err = NULL;
    c->hstate = HDR_NONE;
    c->hname = c->hval = 0;
    c->d_name = c->d_value = NULL;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;

    req->conn = c;
    req->phase = REQ_SENT;
    req->read_held = 0;
    memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
    /* On a reused connection the body stays in req->body for a possible retry. */
    size_t blen = req->body ? evbuffer_get_length(req->body) : 0;
    int keep = c->reused && !req->retried;
    size_t inline_len = keep && blen <= BODY_INLINE_MAX ? blen : 0;
    h1_write_head(output, req, inline_len);
    if (blen > 0 && inline_len == 0) {
        if (keep) {
            if (evbuffer_add_buffer_reference(output, req->body) != 0)
                copy_buffer(output, req->body);
        } else {
            evbuffer_add_buffer(output, req->body);
        }
    }
    if (c->write_first) {
        /* Write first: EV_WRITE is armed only if the socket does not take it all. */
        up_conn_set_reading(c, 1);
        up_conn_write_soon(c);
    } else {
        bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    }
    up_req_arm_response(req);
}

/* A connection carrying |req| failed before the response completed. Retries once when a
 * reused connection died before any response byte; otherwise completes with |reason|.
 * Closes |c| either way. */
void up_conn_fail_active(up_conn *c, sb_reason reason, const char *what)
{
    sb_upstream_req *req = c->req;
    int retry =
        reason == SB_REASON_CONNECTION_RESET && c->reused && c->rx_bytes == 0 && !req->retried;
    uint64_t rx = c->rx_bytes;
    char peer[PEER_MAX];
    snprintf(peer, sizeof(peer), "%s", c->peer);
    c->req = NULL;
    req->conn = NULL;
    req->read_held = 0;
    up_conn_close(c);
    if (retry) {
        req->retried = 1;
        up_req_start_resolve(req);
        return;
    }
    if (reason == SB_REASON_CONNECTION_RESET)
        up_req_complete(req, reason, "%s: %s after %llu response bytes", peer, what,
                        (unsigned long long)rx);
    else
        up_req_complete(req, reason, "%s: %s", peer, what);
}

static void conn_response_done(up_conn *c)
{
    sb_upstream_req *req = c->req;
    int reusable = c->keepalive && c->bev &&
                   evbuffer_get_length(bufferevent_get_input(c->bev)) == 0 &&
                   evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
    req->res.status = c->parser.status_code;
    req->res.http_version = c->parser.http_major * 10 + c->parser.http_minor;
    req->res.reused = (int)c->reused;
    c->served++;
    c->req = NULL;
    req->conn = NULL;
    req->read_held = 0;
    if (reusable)
        conn_make_idle(c);
    else
        up_conn_close(c);
    up_req_complete(req, SB_REASON_NONE, NULL);
}

/* Feeds the input buffer to the parser. Returns 1 when the response is complete, -1 on
 * a parse error (c->err or the parser's errno says why), 0 when more bytes are needed. */
static int conn_parse(up_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[16];
    while (evbuffer_get_length(in) > 0) {
        int n = evbuffer_peek(in, -1, NULL, v, (int)SB_ARRAY_LEN(v));
        if (n > (int)SB_ARRAY_LEN(v))
            n = (int)SB_ARRAY_LEN(v);
        size_t consumed = 0;
        int stop = 0;
        for (int i = 0; i < n && !stop; i++) {
            size_t got =
                http_parser_execute(&c->parser, &parser_settings, v[i].iov_base, v[i].iov_len);
            header_spill(c); /* nothing may point into the chunk once it is drained */
            consumed += got;
            enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
            if (e != HPE_OK || got != v[i].iov_len)
                stop = 1;
        }
        evbuffer_drain(in, consumed);
        if (c->msg_done)
            return 1;
        if (stop)
            return -1;
    }
    return 0;
}

static void conn_fail_parse(up_conn *c)
{
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    char what[160];
    if (c->err)
        snprintf(what, sizeof(what), "invalid HTTP response: %s", c->err);
    else
        snprintf(what, sizeof(what), "invalid HTTP response: %s", http_errno_description(e));
    up_conn_fail_active(c, SB_REASON_INVALID_RESPONSE, what);
}

/* ---------------------------------------------------------------- socket events */

/* Bytes arrived in |in| for the request c carries (CONN_ACTIVE). */
void up_h1_on_read(up_conn *c, struct evbuffer *in)
{
    sb_upstream_req *req = c->req;
    c->rx_bytes += evbuffer_get_length(in);
    size_t had = req->resp_body ? evbuffer_get_length(req->resp_body) : 0;
    int r = conn_parse(c, in);
    if (r > 0) {
        conn_response_done(c);
    } else if (r < 0) {
        conn_fail_parse(c);
    } else if (req->resp_body && evbuffer_get_length(req->resp_body) > had) {
        up_stream_data_arrived(req);
    }
}

/* EOF or an error (|what|, socket error |err|) on a connection carrying a request. */
void up_h1_on_event(up_conn *c, short what, int err)
{
    if (what & BEV_EVENT_EOF) {
        /* Read-until-close bodies end here; anything else is a cut-off answer. */
        http_parser_execute(&c->parser, &parser_settings, NULL, 0);
        if (c->msg_done) {
            c->keepalive = 0;
            conn_response_done(c);
        } else {
            up_conn_fail_active(c, SB_REASON_CONNECTION_RESET, "connection closed by the agent");
        }
    } else if (what & BEV_EVENT_ERROR) {
        char msg[192];
        up_conn_error_text(c, what, err, msg, sizeof(msg));
        up_conn_fail_active(c, SB_REASON_CONNECTION_RESET, msg);
    }
}
