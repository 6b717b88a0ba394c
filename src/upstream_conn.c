/*
 * upstream_conn.c — the connections of the upstream pool (see upstream.c for the
 * overview): resolve, connect, the HTTP/2 sessions seen from the pool, idle bookkeeping,
 * close, kill and reap, and the bufferevent callbacks every connection shares.
 *
 * Life of a connection: a non-blocking connect() watched by a plain event (so the errno
 * of a failed connect is read exactly, with getsockopt(SO_ERROR)); once connected, the
 * socket goes to a socket bufferevent (http) or an OpenSSL bufferevent in connecting
 * state (https, upstream_tls.c). Then: HTTP/1.1 carries one request at a time and, when
 * the response allows, waits on its origin's stack for the next (upstream_http1.c);
 * HTTP/2 (h2c prior knowledge, or ALPN "h2") becomes a session that stays on the
 * origin's list until the agent or the idle sweeper ends it. The bufferevent callbacks
 * here dispatch on the connection's state; HTTP/1.1 and TLS events go to their files.
 *
 * Connections closed from inside their own bufferevent callbacks are unlinked at once
 * (their bufferevent freed, which libevent allows from its callbacks) and their memory is
 * reclaimed by the reaper event, so no code path can touch a freed up_conn. An HTTP/2
 * session that ends is "killed": detached from its origin at once and closed by the kill
 * event, so sb_h2c_free never runs while the session is on the stack.
 *
 * Failures decided here (see the overview for the whole list): dns_error,
 * upstream_forbidden, connect_refused and connect_timeout before anything was sent, and
 * connection_reset / invalid_response for HTTP/2 streams. Forbidden addresses are never
 * connected to.
 */
#include "switchboard/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream_h2.h"
#include "switchboard/util.h"

#include "upstream_int.h"

#define CLOSING_GRACE_MS 1000 /* a GOAWAY'd idle session gets this long to flush */

/* ---------------------------------------------------------------- small helpers */

const char *up_errno_text(int err, char *buf, size_t len)
{
    /* GNU strerror_r: returns a pointer, either to |buf| or to a static string. */
    return strerror_r(err, buf, len);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(out, len, "%s:%d", ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(out, len, "[%s]:%d", ip, ntohs(in6->sin6_port));
    } else {
        snprintf(out, len, "?");
    }
}

static void format_ip(const struct sockaddr *sa, char *out, size_t len)
{
    const void *a = sa->sa_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (inet_ntop(sa->sa_family, a, out, (socklen_t)len) == NULL)
        snprintf(out, len, "?");
}

/* ---------------------------------------------------------------- idle bookkeeping */

static void sweep_arm(sb_upstream_pool *p);

void up_lru_add(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->in_lru)
        return;
    c->in_lru = 1;
    c->idle_since_us = sb_chain_mono_us();
    c->lru_next = NULL;
    c->lru_prev = p->lru_tail;
    if (p->lru_tail)
        p->lru_tail->lru_next = c;
    else
        p->lru_head = c;
    p->lru_tail = c;
    SB_OWNED_ADD(p->n_idle, 1);
    sweep_arm(p);
}

void up_lru_del(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (!c->in_lru)
        return;
    if (c->lru_prev)
        c->lru_prev->lru_next = c->lru_next;
    else
        p->lru_head = c->lru_next;
    if (c->lru_next)
        c->lru_next->lru_prev = c->lru_prev;
    else
        p->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
    c->in_lru = 0;
    SB_OWNED_ADD(p->n_idle, -1);
}

/* Takes an idle HTTP/1.1 connection off its origin's stack and the pool's idle list. */
void up_idle_unlink(up_conn *c)
{
    up_origin *o = c->origin;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        o->idle = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    o->n_idle--;
    up_lru_del(c);
}

static void h2_link(up_conn *c)
{
    up_origin *o = c->origin;
    c->h2_linked = 1;
    c->h2_prev = NULL;
    c->h2_next = o->h2;
    if (o->h2)
        o->h2->h2_prev = c;
    o->h2 = c;
    o->n_h2++;
    c->pool->n_h2++;
}

static void h2_unlink(up_conn *c)
{
    up_origin *o = c->origin;
    if (!c->h2_linked)
        return;
    if (c->h2_prev)
        c->h2_prev->h2_next = c->h2_next;
    else
        o->h2 = c->h2_next;
    if (c->h2_next)
        c->h2_next->h2_prev = c->h2_prev;
    c->h2_prev = c->h2_next = NULL;
    c->h2_linked = 0;
    o->n_h2--;
    c->pool->n_h2--;
}

static void sweep_arm(sb_upstream_pool *p)
{
    if (p->lru_head == NULL || event_pending(p->sweep_ev, EV_TIMEOUT, NULL))
        return;
    uint64_t now = sb_chain_mono_us();
    uint64_t due = p->lru_head->idle_since_us + (uint64_t)p->idle_timeout_ms * 1000;
    uint64_t wait = due > now ? due - now : 0;
    /* A little slack batches connections that went idle close together. */
    wait += 100000;
    struct timeval tv = {(time_t)(wait / 1000000), (suseconds_t)(wait % 1000000)};
    event_add(p->sweep_ev, &tv);
}

/* An idle session says GOAWAY and closes once that is written (or after a grace). */
static void conn_h2_close_idle(up_conn *c)
{
    up_lru_del(c);
    h2_unlink(c);
    sb_h2c_shutdown(c->h2);
    sb_h2c_flush(c->h2);
    if (c->bev == NULL || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        up_conn_close(c);
        return;
    }
    c->state = CONN_CLOSING;
    struct timeval tv = {CLOSING_GRACE_MS / 1000, (CLOSING_GRACE_MS % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

void up_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    uint64_t now = sb_now_mono_us();
    uint64_t limit = (uint64_t)p->idle_timeout_ms * 1000;
    while (p->lru_head && now - p->lru_head->idle_since_us >= limit) {
        up_conn *c = p->lru_head;
        if (c->state == CONN_H2)
            conn_h2_close_idle(c);
        else
            up_conn_close(c);
    }
    sweep_arm(p);
}

/* ---------------------------------------------------------------- connections */

void up_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    while (p->dead) {
        up_conn *c = p->dead;
        p->dead = c->all_next;
        up_origin_unref(p, c->origin);
        sb_free(c->hbuf);
        sb_free(c);
    }
}

static void kill_unlist(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    for (up_conn **pp = &p->kill; *pp; pp = &(*pp)->kill_next) {
        if (*pp == c) {
            *pp = c->kill_next;
            break;
        }
    }
    c->kill_next = NULL;
}

/* Closes |c| at once (socket closed, detached from pool, origin and request, its HTTP/2
 * session freed); its memory goes later, from the reaper, so a caller up the stack may
 * still hold the pointer. The caller deals with c->req before. Never called while the
 * session of |c| is on the stack (conn_h2_kill defers that case). */
void up_conn_close(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->state == CONN_DEAD)
        return;
    if (c->state == CONN_IDLE)
        up_idle_unlink(c);
    up_lru_del(c);
    h2_unlink(c);
    if (c->killed)
        kill_unlist(c);
    if (c->state == CONN_CONNECTING) {
        event_del(&c->connect_ev);
        evutil_closesocket(c->fd);
    }
    c->fd = -1;
    c->state = CONN_DEAD;
    if (c->write_first) {
        event_del(&c->rd);
        event_del(&c->wr);
    }
    c->req = NULL;
    if (c->h2) {
        sb_h2c_free(c->h2);
        c->h2 = NULL;
    }
    if (c->bev) {
        bufferevent_free(c->bev); /* allowed from within its own callbacks */
        c->bev = NULL;
    }
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        p->conns = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    c->all_prev = NULL;
    c->all_next = p->dead;
    p->dead = c;
    event_active(p->reap_ev, EV_TIMEOUT, 1);
}

/* The session of |c| is over or must end (EOF, error, protocol violation). Reports what
 * is still open on it, detaches it from its origin now (no new stream goes there) and
 * closes it from the kill event, where no call into the session is on the stack. */
static void conn_h2_kill(up_conn *c)
{
    sb_upstream_pool *p = c->pool;
    if (c->killed || c->state != CONN_H2)
        return;
    c->killed = 1;
    h2_unlink(c);
    up_lru_del(c);
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    if (!sb_h2c_dead(c->h2))
        sb_h2c_fail_all(c->h2, SB_H2C_END_CLOSED, "the HTTP/2 connection was closed");
    c->kill_next = p->kill;
    p->kill = c;
    event_active(p->kill_ev, EV_TIMEOUT, 1);
}

void up_kill_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_upstream_pool *p = arg;
    while (p->kill) {
        up_conn *c = p->kill;
        up_origin *o = c->origin;
        o->refs++;
        up_conn_close(c); /* takes |c| off the kill list */
        up_origin_dispatch(o);
        up_origin_unref(p, o);
    }
}

static void conn_connect_cb(evutil_socket_t fd, short what, void *arg);
static void conn_sock_read_cb(evutil_socket_t fd, short what, void *arg);
static void conn_write_cb(evutil_socket_t fd, short what, void *arg);

/* A connection for |fd|, whose non-blocking connect is under way. */
static up_conn *conn_new(sb_upstream_pool *p, up_origin *o, evutil_socket_t fd)
{
    up_conn *c = sb_calloc(1, sizeof(*c));
    c->pool = p;
    c->origin = o;
    o->refs++;
    c->fd = fd;
    c->state = CONN_CONNECTING;
    event_assign(&c->connect_ev, p->base, fd, EV_WRITE, conn_connect_cb, c);
    event_add(&c->connect_ev, NULL);
    c->all_next = p->conns;
    if (p->conns)
        p->conns->all_prev = c;
    p->conns = c;
    return c;
}

/* ---------------------------------------------------------------- HTTP/2 sessions */

static sb_upstream_req *req_of_stream(sb_h2c_stream *st)
{
    return (sb_upstream_req *)(void *)((char *)st - offsetof(sb_upstream_req, h2st));
}

/* Sends |req| again from the loop (a stream the agent did not process, or a stale
 * session): the response state starts over. */
static void req_retry(sb_upstream_req *req)
{
    req->retried = 1;
    req->conn = NULL;
    req->phase = REQ_RETRY;
    req->res.status = 0;
    req->res.http_version = 0;
    sb_headers_clear(&req->resp_headers);
    up_drain_all(req->resp_body);
    if (req->on_head)
        req->sstate = SS_UNDECIDED;
    event_del(&req->notify);
    event_del(&req->timer);
    event_active(&req->timer, EV_TIMEOUT, 1);
}

/* Reports for the streams of a session, outside nghttp2 (see upstream_h2.h). Must not
 * close the connection: conn_h2_after and conn_h2_kill do that from the callers. */
static void h2_on_event(sb_h2c_stream *st, unsigned ev, void *owner)
{
    up_conn *c = owner;
    sb_upstream_req *req = req_of_stream(st);
    sb_upstream_pool *p = c->pool;
    if (ev & SB_H2C_EV_HEAD) {
        req->res.status = st->status;
        req->res.http_version = 20;
        up_stream_head_arrived(req);
    }
    if ((ev & SB_H2C_EV_DATA) && st->session) {
        size_t len = evbuffer_get_length(req->resp_body);
        if (up_body_limited(req)) {
            if (len > p->max_response_bytes) {
                sb_h2c_reset_stream(st, NGHTTP2_CANCEL);
                up_req_complete(req, SB_REASON_INVALID_RESPONSE,
                                "%s: invalid HTTP/2 response: body over the response size limit",
                                c->peer);
                return;
            }
            sb_h2c_consume(st, st->unconsumed);
        } else {
            up_stream_data_arrived(req);
        }
    }
    if (!(ev & SB_H2C_EV_END))
        return;
    uint64_t rx = st->rx_bytes;
    switch (st->end) {
    case SB_H2C_END_COMPLETE:
        if (up_body_limited(req) && evbuffer_get_length(req->resp_body) > p->max_response_bytes) {
            up_req_complete(req, SB_REASON_INVALID_RESPONSE,
                            "%s: invalid HTTP/2 response: body over the response size limit",
                            c->peer);
            return;
        }
        up_req_complete(req, SB_REASON_NONE, NULL);
        return;
    case SB_H2C_END_REFUSED:
        if (!req->retried && rx == 0) {
            req_retry(req);
            return;
        }
        up_req_complete(req, SB_REASON_CONNECTION_RESET, "%s: HTTP/2 stream not processed (%s)%s",
                        c->peer, st->why ? st->why : "REFUSED_STREAM",
                        req->retried ? ", also after a retry" : "");
        return;
    case SB_H2C_END_RESET:
        up_req_complete(req, SB_REASON_CONNECTION_RESET,
                        "%s: stream reset by the agent (RST_STREAM %s) after %llu response bytes",
                        c->peer, nghttp2_http2_strerror(st->error_code), (unsigned long long)rx);
        return;
    case SB_H2C_END_INVALID:
        up_req_complete(req, SB_REASON_INVALID_RESPONSE, "%s: invalid HTTP/2 response: %s", c->peer,
                        st->why ? st->why : "protocol error");
        return;
    case SB_H2C_END_CLOSED:
    case SB_H2C_END_NONE:
        /* A session that carried earlier requests and died before answering this one is
         * the HTTP/2 form of the stale keep-alive race. */
        if (rx == 0 && req->res.reused && !req->retried) {
            req_retry(req);
            return;
        }
        up_req_complete(req, SB_REASON_CONNECTION_RESET, "%s: %s after %llu response bytes",
                        c->peer, st->why ? st->why : "the HTTP/2 connection ended",
                        (unsigned long long)rx);
        return;
    }
}

/* Puts |req| on a new stream of the session |c| and writes it out. */
void up_h2_start(up_conn *c, sb_upstream_req *req)
{
    memset(&req->h2st, 0, sizeof(req->h2st));
    if (req->resp_body == NULL)
        req->resp_body = evbuffer_new();
    req->h2st.headers = &req->resp_headers;
    req->h2st.data = req->resp_body;
    sb_h2c_request rq = {
        .method = req->method,
        .scheme = req->https ? "https" : "http",
        .authority = req->authority,
        .path = req->path,
        .headers = req->hdrs,
        .n_headers = req->n_hdrs,
        .content_length = up_req_content_length(req),
        .body = req->body,
    };
    memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
    if (sb_h2c_submit(c->h2, &req->h2st, &rq) < 0) {
        req->conn = NULL;
        up_req_complete(req, SB_REASON_CONNECTION_RESET,
                        "%s: the HTTP/2 session took no new stream", c->peer);
        return;
    }
    req->conn = c;
    req->phase = REQ_SENT;
    req->res.reused = c->served > 0;
    c->served++;
    up_lru_del(c);
    up_req_arm_response(req);
    if (sb_h2c_flush(c->h2) < 0)
        conn_h2_kill(c);
}

/* After the session of |c| did something (read, wrote, a stream ended or started):
 * serve the origin's queue, and track whether the session is idle. */
static void conn_h2_after(up_conn *c)
{
    if (c->state != CONN_H2 || c->killed)
        return;
    if (sb_h2c_dead(c->h2)) {
        conn_h2_kill(c);
        return;
    }
    up_origin *o = c->origin;
    if (o->wait_head && sb_h2c_can_submit(c->h2))
        up_origin_dispatch(o);
    if (c->state != CONN_H2 || c->killed)
        return;
    if (sb_h2c_open_streams(c->h2) == 0)
        up_lru_add(c);
    else
        up_lru_del(c);
}

/* The connection |c| that |req| was setting up speaks HTTP/2 (h2c prior knowledge, or
 * ALPN h2): it becomes a session of its origin, |req| its first stream, and the waiters
 * get theirs. */
void up_conn_become_h2(up_conn *c, sb_upstream_req *req)
{
    up_origin *o = c->origin;
    c->state = CONN_H2;
    c->req = NULL;
    req->conn = NULL;
    c->h2 = sb_h2c_new(c->bev, h2_on_event, c); /* sets EV_WRITE (write first or not) */
    bufferevent_setcb(c->bev, up_conn_readcb, up_conn_writecb, up_conn_eventcb, c);
    bufferevent_enable(c->bev, EV_READ);
    h2_link(c);
    o->alpn_h1 = 0;
    o->refs++; /* up_h2_start may end |req| and with it the opener's reference */
    up_h2_start(c, req);
    up_opener_release(req, SB_REASON_NONE, NULL);
    conn_h2_after(c);
    up_origin_unref(c->pool, o);
}

void up_h2_after_change(up_conn *c)
{
    if (c->state != CONN_H2 || c->killed)
        return;
    if (sb_h2c_flush(c->h2) < 0)
        conn_h2_kill(c);
    else
        conn_h2_after(c);
}

/* ---------------------------------------------------------------- connect */

static void req_connect_next(sb_upstream_req *req);

/* The socket of a CONN_CONNECTING connection became writable: the TCP connect ended. */
static void conn_connect_cb(evutil_socket_t fd, short what, void *arg)
{
    up_conn *c = arg;
    sb_upstream_req *req = c->req;
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == -1)
        err = errno;
    if (err != 0) {
        /* This address did not take it: try the next one, if any. */
        req->last_errno = err;
        memcpy(req->last_peer, c->peer, sizeof(req->last_peer));
        c->req = NULL;
        req->conn = NULL;
        up_conn_close(c);
        req_connect_next(req);
        return;
    }
    if (req->ai) {
        evutil_freeaddrinfo(req->ai);
        req->ai = req->ai_next = NULL;
    }
    if (c->origin->https) {
        char why[120];
        if (up_conn_start_tls(c, req, why, sizeof(why)) != 0)
            up_conn_fail_tls(c, req, "TLS", why);
        return;
    }
    c->bev = bufferevent_socket_new(c->pool->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        fprintf(stderr, "switchboard: bufferevent_socket_new failed\n");
        abort();
    }
    c->fd = -1;
    bufferevent_setcb(c->bev, up_conn_readcb, up_conn_writecb, up_conn_eventcb, c);
    if (c->want == WANT_H2C) {
        up_conn_become_h2(c, req);
        return;
    }
    c->write_first = (unsigned)sb_bev_write_first(c->bev);
    if (c->write_first) {
        event_assign(&c->rd, c->pool->base, fd, EV_READ | EV_PERSIST, conn_sock_read_cb, c);
        event_assign(&c->wr, c->pool->base, -1, 0, conn_write_cb, c);
    }
    up_conn_send(c, req);
    up_opener_release(req, SB_REASON_NONE, NULL);
}

/* Tries the remaining resolved addresses in order, skipping forbidden ones. Completes
 * |req| when none is left. */
static void req_connect_next(sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    char ebuf[128];
    while (req->ai_next) {
        struct evutil_addrinfo *ai = req->ai_next;
        req->ai_next = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        struct sockaddr *sa = (struct sockaddr *)&ss;
        if (sa->sa_family == AF_INET)
            ((struct sockaddr_in *)(void *)sa)->sin_port = htons((uint16_t)req->port);
        else
            ((struct sockaddr_in6 *)(void *)sa)->sin6_port = htons((uint16_t)req->port);
        if (sb_addr_forbidden(sa, p->allow, p->n_allow))
            continue; /* never connect there, whatever else the name resolves to */

        char peer[PEER_MAX];
        format_peer(sa, peer, sizeof(peer));
        snprintf(req->last_peer, sizeof(req->last_peer), "%s", peer);
        req->n_tried++;
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1) {
            req->last_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, sa, (socklen_t)ai->ai_addrlen) == -1 && errno != EINPROGRESS) {
            req->last_errno = errno;
            close(fd);
            continue;
        }
        /* Connected or under way: writability tells the end (conn_connect_cb), even when
         * connect() succeeded at once, so the outcome always comes from the loop. */
        up_conn *c = conn_new(p, up_origin_get(p, req->origin, 1), fd);
        snprintf(c->peer, sizeof(c->peer), "%s", peer);
        c->want = req->want;
        c->req = req;
        req->conn = c;
        req->phase = REQ_CONNECTING;
        return;
    }

    /* Nothing (more) to try. */
    if (req->n_tried == 0) {
        /* No address was allowed: say which ones the name gave. */
        char list[160] = "";
        size_t used = 0;
        for (struct evutil_addrinfo *ai = req->ai; ai && used + 2 < sizeof(list);
             ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            char ip[INET6_ADDRSTRLEN];
            format_ip(ai->ai_addr, ip, sizeof(ip));
            int w = snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "", ip);
            if (w < 0)
                break;
            used += (size_t)w;
            if (used >= sizeof(list))
                used = sizeof(list) - 1;
        }
        if (list[0] && strcmp(list, req->host) == 0)
            up_req_complete(req, SB_REASON_UPSTREAM_FORBIDDEN,
                            "address %s is forbidden (see --allow-upstream)", req->host);
        else if (list[0])
            up_req_complete(req, SB_REASON_UPSTREAM_FORBIDDEN,
                            "%s resolves only to forbidden addresses (%s; see --allow-upstream)",
                            req->host, list);
        else
            up_req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no usable address", req->host);
        return;
    }
    int e = req->last_errno;
    sb_reason r = e == ETIMEDOUT ? SB_REASON_CONNECT_TIMEOUT : SB_REASON_CONNECT_REFUSED;
    up_req_complete(req, r, "connect %s: %s", req->last_peer, up_errno_text(e, ebuf, sizeof(ebuf)));
}

static void dns_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
    if (result == EVUTIL_EAI_CANCEL) {
        /* The request may be gone already: do not touch |arg|. */
        if (ai)
            evutil_freeaddrinfo(ai);
        return;
    }
    sb_upstream_req *req = arg;
    req->dns_req = NULL;
    if (result != 0 || ai == NULL) {
        if (ai)
            evutil_freeaddrinfo(ai);
        up_req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: %s", req->host,
                        result ? evutil_gai_strerror(result) : "no address");
        return;
    }
    req->ai = req->ai_next = ai;
    req->last_peer[0] = '\0';
    req->last_errno = 0;
    req->n_tried = 0;
    req_connect_next(req);
}

void up_req_start_resolve(sb_upstream_req *req)
{
    sb_upstream_pool *p = req->pool;
    req->phase = REQ_RESOLVING;
    event_del(&req->timer);
    event_add(&req->timer, p->tv_connect);

    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* ADDRCONFIG spares AAAA queries on IPv4-only hosts, but must not reject an IPv6
     * literal the operator wrote on purpose. */
    hints.ai_flags = req->literal ? EVUTIL_AI_NUMERICHOST : EVUTIL_AI_ADDRCONFIG;
    if (p->dns == NULL) {
        struct evutil_addrinfo *ai = NULL;
        hints.ai_flags |= EVUTIL_AI_NUMERICHOST;
        int r = evutil_getaddrinfo(req->host, NULL, &hints, &ai);
        if (r != 0) {
            up_req_complete(req, SB_REASON_DNS_ERROR, "resolve %s: no resolver for host names",
                            req->host);
            return;
        }
        dns_cb(0, ai, req);
        return;
    }
    /* For IP literals and /etc/hosts names the callback runs before this returns (and
     * NULL comes back); |req| may already be completed then, but not freed, since
     * completion is deferred. */
    struct evdns_getaddrinfo_request *d =
        evdns_getaddrinfo(p->dns, req->host, NULL, &hints, dns_cb, req);
    if (d)
        req->dns_req = d;
}

/* ---------------------------------------------------------------- socket callbacks */

void up_conn_readcb(struct bufferevent *bev, void *arg)
{
    up_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    switch (c->state) {
    case CONN_IDLE:
        /* Bytes on an idle connection: the agent is confused, never reuse it. */
        up_conn_close(c);
        return;
    case CONN_H2:
        if (c->killed)
            return;
        if (sb_h2c_read(c->h2) < 0)
            conn_h2_kill(c);
        else
            conn_h2_after(c);
        return;
    case CONN_CLOSING:
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    case CONN_ACTIVE:
        up_h1_on_read(c, in);
        return;
    default:
        return; /* nothing is read before the handshake ends */
    }
}

void up_conn_set_reading(up_conn *c, int on)
{
    if (!c->write_first) {
        if (on)
            bufferevent_enable(c->bev, EV_READ);
        else
            bufferevent_disable(c->bev, EV_READ);
        return;
    }
    if (on == (int)c->reading)
        return;
    c->reading = (unsigned)on;
    if (on)
        event_add(&c->rd, NULL);
    else
        event_del(&c->rd);
}

/* write_first: the socket is readable. One read (no FIONREAD), then the callback the
 * bufferevent would have run. |c| may be closed by it. */
static void conn_sock_read_cb(evutil_socket_t fd, short what, void *arg)
{
    up_conn *c = arg;
    if (c->bev == NULL)
        return;
    sb_bev_read_dispatch(c->bev, up_conn_readcb, up_conn_eventcb, c);
}

/* write_first: the request queued this loop turn, written after the turn's callbacks
 * (up_conn_send), so the requests of one turn reach the agents in one burst. */
static void conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
    up_conn *c = arg;
    if (c->bev != NULL)
        sb_bev_flush(c->bev);
}

void up_conn_write_soon(up_conn *c)
{
    event_active(&c->wr, EV_WRITE, 1); /* a no-op while already active */
}

void up_conn_writecb(struct bufferevent *bev, void *arg)
{
    up_conn *c = arg;
    if (c->state == CONN_H2 && !c->killed) {
        /* The output drained: serialize what nghttp2 held back (sb_h2c_flush also
         * stops EV_WRITE once a write-first socket has nothing left). */
        up_h2_after_change(c);
    } else if (c->state == CONN_CLOSING && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        up_conn_close(c);
    } else if (c->write_first) {
        sb_bev_flush(bev); /* the request is out: EV_WRITE off until the next one */
    }
}

void up_conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    up_conn *c = arg;
    int err = EVUTIL_SOCKET_ERROR();

    switch (c->state) {
    case CONN_CONNECTING:
        return; /* no bufferevent yet */
    case CONN_HANDSHAKE:
        up_tls_on_event(c, what, err);
        return;
    case CONN_ACTIVE:
        up_h1_on_event(c, what, err);
        return;
    case CONN_H2: {
        if (c->killed)
            return;
        /* Whatever the agent sent before closing (a GOAWAY, final frames) counts. */
        if ((what & BEV_EVENT_EOF) && evbuffer_get_length(bufferevent_get_input(bev)) > 0 &&
            sb_h2c_read(c->h2) < 0) {
            conn_h2_kill(c);
            return;
        }
        char msg[192];
        if (what & BEV_EVENT_EOF) {
            snprintf(msg, sizeof(msg), "connection closed by the agent");
        } else {
            up_conn_error_text(c, what, err, msg, sizeof(msg));
        }
        if (!sb_h2c_dead(c->h2))
            sb_h2c_fail_all(c->h2, SB_H2C_END_CLOSED, msg);
        conn_h2_kill(c);
        return;
    }
    case CONN_IDLE:
    case CONN_CLOSING:
        /* EOF, an error or the grace timeout: the agent closed it; forget it quietly. */
        up_conn_close(c);
        return;
    case CONN_DEAD:
        return;
    }
}
