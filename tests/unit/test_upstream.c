/*
 * test_upstream.c — the agent push client against real sockets on 127.0.0.1.
 *
 * Each test runs a real event_base and a tiny HTTP server in a thread (plain sockets and
 * poll(2)), whose behaviour per request is chosen by a mode: answer with a canned
 * response, stay silent, reset mid-answer, answer garbage, close a kept-alive connection
 * at the worst moment... The server only counts and records; assertions run on the main
 * thread. Every wait is bounded, so a broken client fails a test instead of hanging it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

/* ------------------------------------------------------------------ test server */

typedef enum {
    SRV_RESPOND,       /* answer every request with srv->response */
    SRV_RESPOND_CLOSE, /* answer, then close the connection */
    SRV_SILENT,        /* read requests, never answer */
    SRV_RST_MID,       /* send half the response head, then reset (SO_LINGER 0) */
    SRV_STALE_SECOND,  /* connection 1: answer request 1, close on request 2 unanswered */
    SRV_CLOSE_AFTER,   /* answer, then close the connection after a short pause */
    SRV_ANSWER_ANY,    /* answer the first bytes, whatever they are, then close */
    SRV_TRICKLE,       /* answer one byte at a time, a millisecond apart */
} srv_mode;

#define SRV_MAX_CONNS 16

typedef struct srv {
    int lfd;
    int port;
    srv_mode mode;
    const char *response;
    size_t response_len;
    pthread_t th;
    atomic_int stop;
    atomic_int n_conns; /* connections accepted */
    atomic_int n_reqs;  /* complete requests read */
    pthread_mutex_t mu;
    char last_req[8192]; /* the last complete request, head and body (truncated) */
    size_t last_req_len;
    size_t last_req_total;    /* its full length */
    const char *big_response; /* SRV_RESPOND: sent instead of |response| when set */
    size_t big_response_len;
} srv;

typedef struct srv_conn {
    int fd;
    int idx; /* 1-based accept order */
    int nreq;
    char buf[2 * 1024 * 1024];
    size_t len;
} srv_conn;

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w == -1 && errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Length of the complete request at the start of |c->buf|, or 0 if incomplete. */
static size_t request_len(const srv_conn *c)
{
    const char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - c->buf) + 4;
    size_t body = 0;
    for (const char *p = c->buf; p < end; p++) {
        if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0)
            body = strtoul(p + 15, NULL, 10);
    }
    return c->len >= head + body ? head + body : 0;
}

static void rst_close(int fd)
{
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
}

/* Handles one complete request; returns 0 to keep the connection, 1 once it is closed. */
static int srv_handle(srv *s, srv_conn *c, size_t n)
{
    atomic_fetch_add(&s->n_reqs, 1);
    c->nreq++;
    pthread_mutex_lock(&s->mu);
    s->last_req_len = n < sizeof(s->last_req) - 1 ? n : sizeof(s->last_req) - 1;
    memcpy(s->last_req, c->buf, s->last_req_len);
    s->last_req[s->last_req_len] = '\0';
    s->last_req_total = n;
    pthread_mutex_unlock(&s->mu);
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;

    switch (s->mode) {
    case SRV_RESPOND:
        if (s->big_response)
            write_all(c->fd, s->big_response, s->big_response_len);
        else
            write_all(c->fd, s->response, s->response_len);
        return 0;
    case SRV_RESPOND_CLOSE:
        write_all(c->fd, s->response, s->response_len);
        close(c->fd);
        return 1;
    case SRV_CLOSE_AFTER:
        write_all(c->fd, s->response, s->response_len);
        usleep(50 * 1000);
        close(c->fd);
        return 1;
    case SRV_TRICKLE: {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        for (size_t i = 0; i < s->response_len; i++) {
            write_all(c->fd, s->response + i, 1);
            usleep(1000);
        }
        return 0;
    }
    case SRV_SILENT:
    case SRV_ANSWER_ANY: /* handled on receipt, before any request is complete */
        return 0;
    case SRV_RST_MID: {
        static const char half[] = "HTTP/1.1 200 OK\r\nContent-Ty";
        write_all(c->fd, half, sizeof(half) - 1);
        usleep(20 * 1000);
        rst_close(c->fd);
        return 1;
    }
    case SRV_STALE_SECOND:
        if (c->idx == 1 && c->nreq == 2) {
            close(c->fd); /* as if the agent's idle timeout fired just now */
            return 1;
        }
        write_all(c->fd, s->response, s->response_len);
        return 0;
    }
    return 0;
}

static void *srv_main(void *arg)
{
    srv *s = arg;
    srv_conn *conns[SRV_MAX_CONNS] = {0};
    while (!atomic_load(&s->stop)) {
        struct pollfd pfd[SRV_MAX_CONNS + 1];
        int map[SRV_MAX_CONNS + 1];
        int n = 0;
        pfd[n].fd = s->lfd;
        pfd[n].events = POLLIN;
        map[n++] = -1;
        for (int i = 0; i < SRV_MAX_CONNS; i++) {
            if (conns[i]) {
                pfd[n].fd = conns[i]->fd;
                pfd[n].events = POLLIN;
                map[n++] = i;
            }
        }
        if (poll(pfd, (nfds_t)n, 20) <= 0)
            continue;
        if (pfd[0].revents & POLLIN) {
            int fd = accept(s->lfd, NULL, NULL);
            if (fd >= 0) {
                int idx = atomic_fetch_add(&s->n_conns, 1) + 1;
                int slot = -1;
                for (int i = 0; i < SRV_MAX_CONNS && slot < 0; i++)
                    if (!conns[i])
                        slot = i;
                if (slot < 0) {
                    close(fd);
                } else {
                    conns[slot] = calloc(1, sizeof(srv_conn));
                    conns[slot]->fd = fd;
                    conns[slot]->idx = idx;
                }
            }
        }
        for (int k = 1; k < n; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            srv_conn *c = conns[map[k]];
            ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
            int closed = 0;
            if (r <= 0) {
                close(c->fd);
                closed = 1;
            } else {
                c->len += (size_t)r;
                if (s->mode == SRV_ANSWER_ANY) {
                    write_all(c->fd, s->response, s->response_len);
                    usleep(20 * 1000);
                    close(c->fd);
                    closed = 1;
                }
                size_t rl;
                while (!closed && (rl = request_len(c)) > 0)
                    closed = srv_handle(s, c, rl);
            }
            if (closed) {
                free(c);
                conns[map[k]] = NULL;
            }
        }
    }
    for (int i = 0; i < SRV_MAX_CONNS; i++) {
        if (conns[i]) {
            close(conns[i]->fd);
            free(conns[i]);
        }
    }
    return NULL;
}

static int listen_loopback(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, backlog), 0);
    socklen_t alen = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static srv *srv_start(srv_mode mode, const char *response)
{
    srv *s = calloc(1, sizeof(*s));
    s->mode = mode;
    s->response = response ? response : "";
    s->response_len = strlen(s->response);
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = listen_loopback(16, &s->port);
    assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
    return s;
}

static void srv_stop(srv *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->th, NULL);
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ------------------------------------------------------------------ client harness */

typedef struct fixture {
    struct event_base *base;
    struct evdns_base *dns;
    sb_upstream_pool *pool;
    sb_cidr allow[2];
    srv *server;
} fixture;

typedef struct outcome {
    int calls;
    sb_reason reason;
    int status;
    int reused;
    char detail[256];
    char body[8192];
    size_t body_len;
    char header_x[128];  /* value of X-Reply */
    char header_ct[128]; /* value of Content-Type */
    uint64_t duration_us;
} outcome;

static void on_done(const sb_upstream_result *res, void *arg)
{
    outcome *o = arg;
    o->calls++;
    o->reason = res->reason;
    o->status = res->status;
    o->reused = res->reused;
    o->duration_us = res->duration_us;
    snprintf(o->detail, sizeof(o->detail), "%s", res->detail);
    assert_non_null(res->headers);
    if (res->reason == SB_REASON_NONE) {
        assert_non_null(res->body);
        o->body_len = evbuffer_get_length(res->body);
        assert_true(o->body_len < sizeof(o->body));
        evbuffer_remove(res->body, o->body, o->body_len);
        o->body[o->body_len] = '\0';
        const char *x = sb_headers_get(res->headers, "X-Reply");
        snprintf(o->header_x, sizeof(o->header_x), "%s", x ? x : "");
        const char *ct = sb_headers_get(res->headers, "content-type");
        snprintf(o->header_ct, sizeof(o->header_ct), "%s", ct ? ct : "");
    } else {
        assert_null(res->body);
        assert_int_equal(res->status, 0);
        assert_true(res->detail[0] != '\0');
        assert_null(strchr(res->detail, '\n'));
    }
}

/* Like on_done, for bodies too big to keep: only their length is recorded. */
static void on_done_big(const sb_upstream_result *res, void *arg)
{
    outcome *o = arg;
    o->calls++;
    o->reason = res->reason;
    o->status = res->status;
    o->reused = res->reused;
    snprintf(o->detail, sizeof(o->detail), "%s", res->detail);
    if (res->body) {
        o->body_len = evbuffer_get_length(res->body);
        unsigned char *all = evbuffer_pullup(res->body, -1);
        for (size_t i = 0; i < o->body_len; i++)
            if (all[i] != (unsigned char)('a' + i % 26))
                fail_msg("body byte %zu is wrong", i);
    }
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until |*flag| >= |want| or |ms| elapsed. */
static void run_until(fixture *f, const int *flag, int want, int ms)
{
    struct event *tick = event_new(f->base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 10 * 1000};
    event_add(tick, &tv);
    uint64_t deadline = now_ms() + (uint64_t)ms;
    while ((flag == NULL || *flag < want) && now_ms() < deadline)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
}

static void run_for(fixture *f, int ms)
{
    run_until(f, NULL, 1, ms);
}

static fixture *fixture_new(const sb_upstream_opts *extra, int allow_loopback)
{
    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);
    f->dns = evdns_base_new(f->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (f->dns == NULL) {
        f->dns = evdns_base_new(f->base, 0);
        assert_non_null(f->dns);
        evdns_base_load_hosts(f->dns, NULL);
    }
    sb_upstream_opts o;
    memset(&o, 0, sizeof(o));
    if (extra)
        o = *extra;
    if (o.connect_timeout_ms == 0)
        o.connect_timeout_ms = 1000;
    if (o.response_timeout_ms == 0)
        o.response_timeout_ms = 2000;
    if (allow_loopback) {
        assert_int_equal(sb_cidr_parse("127.0.0.0/8", &f->allow[0]), SB_OK);
        assert_int_equal(sb_cidr_parse("::1/128", &f->allow[1]), SB_OK);
        o.allow = f->allow;
        o.n_allow = 2;
    }
    f->pool = sb_upstream_pool_new(f->base, f->dns, &o);
    assert_non_null(f->pool);
    /* The pool copied the allow list: scribbling over ours must not matter. */
    memset(f->allow, 0xff, sizeof(f->allow));
    return f;
}

static void fixture_free(fixture *f)
{
    sb_upstream_pool_free(f->pool);
    evdns_base_free(f->dns, 0);
    /* Let deferred resolver and bufferevent finalizers run before the base goes. */
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    event_base_free(f->base);
    if (f->server)
        srv_stop(f->server);
    free(f);
}

/* "|origin|:|port||path|" parsed, e.g. url_for("http://127.0.0.1", 8000, "/a2a"). */
static sb_url url_for(const char *origin, int port, const char *path)
{
    char s[256];
    snprintf(s, sizeof(s), "%s:%d%s", origin, port, path);
    sb_url u;
    assert_int_equal(sb_url_parse(s, &u), SB_OK);
    return u;
}

static struct evbuffer *body_of(const char *s)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, s, strlen(s));
    return b;
}

static sb_upstream_req *push(fixture *f, const sb_url *u, const char *body, outcome *o)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Content-Type", "application/json");
    sb_headers_add(&h, "X-Switchboard-Message-Id", "m-1");
    struct evbuffer *b = body_of(body);
    sb_upstream_req *r = sb_upstream_push(f->pool, u, &h, b, on_done, o);
    assert_non_null(r);
    assert_int_equal(evbuffer_get_length(b), 0); /* drained */
    evbuffer_free(b);
    sb_headers_clear(&h);
    return r;
}

#define OK_RESPONSE                                                                                \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Reply: yes\r\n"                        \
    "Content-Length: 26\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1}\n\n"

/* ------------------------------------------------------------------ tests */

static void test_success_200(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/a2a?x=1");

    outcome o = {0};
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Authorization", "Bearer secret");
    sb_headers_add(&h, "X-Evil", "a\r\nInjected: 1"); /* dropped */
    sb_headers_add(&h, "Content-Length", "999");      /* dropped: ours is right */
    sb_headers_add(&h, "Bad Name", "x");              /* dropped */
    struct evbuffer *b = body_of("{\"jsonrpc\":\"2.0\",\"method\":\"message/send\"}");
    sb_upstream_push(f->pool, &u, &h, b, on_done, &o);
    assert_int_equal(evbuffer_get_length(b), 0);
    evbuffer_free(b);
    sb_headers_clear(&h);
    assert_int_equal(o.calls, 0); /* never from inside push */

    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_NONE);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.reused, 0);
    assert_string_equal(o.body, "{\"jsonrpc\":\"2.0\",\"id\":1}\n\n");
    assert_string_equal(o.header_x, "yes");
    assert_string_equal(o.header_ct, "application/json");
    assert_string_equal(o.detail, "");

    char expect_host[64];
    snprintf(expect_host, sizeof(expect_host), "Host: 127.0.0.1:%d\r\n", f->server->port);
    pthread_mutex_lock(&f->server->mu);
    const char *req = f->server->last_req;
    assert_true(strncmp(req, "POST /a2a?x=1 HTTP/1.1\r\n", 24) == 0);
    assert_non_null(strstr(req, expect_host));
    assert_non_null(strstr(req, "Content-Length: 41\r\n"));
    assert_non_null(strstr(req, "Authorization: Bearer secret\r\n"));
    assert_null(strstr(req, "Injected"));
    assert_null(strstr(req, "999"));
    assert_null(strstr(req, "Bad Name"));
    assert_non_null(strstr(req, "\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"message/send\"}"));
    pthread_mutex_unlock(&f->server->mu);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);

    sb_url_clear(&u);
    fixture_free(f);
}

static void test_status_404_delivered(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server =
        srv_start(SRV_RESPOND, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_NONE); /* statuses are the caller's to judge */
    assert_int_equal(o.status, 404);
    assert_string_equal(o.body, "not found");
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_chunked_and_interim(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server =
        srv_start(SRV_RESPOND, "HTTP/1.1 100 Continue\r\n\r\n"
                               "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                               "X-Reply: chunky\r\n\r\n"
                               "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_NONE);
    assert_int_equal(o.status, 200);
    assert_string_equal(o.body, "hello, world");
    assert_string_equal(o.header_x, "chunky");
    /* A clean chunked response keeps the connection. */
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);

    /* And the kept connection works for the next one. */
    outcome o2 = {0};
    push(f, &u, "{}", &o2);
    run_until(f, &o2.calls, 1, 3000);
    assert_int_equal(o2.status, 200);
    assert_int_equal(o2.reused, 1);
    assert_int_equal(atomic_load(&f->server->n_conns), 1);
    sb_url_clear(&u);
    fixture_free(f);
}

/* A response read one byte at a time: the header pieces kept as pointers into each read
 * are copied before it is drained, and the answer reads as if it came at once. */
static void test_response_one_byte_per_read(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_TRICKLE, "HTTP/1.1 200 OK\r\nX-Reply: trickled\r\n"
                                       "Content-Type: application/json\r\nX-Empty:\r\n"
                                       "Content-Length: 2\r\n\r\nok");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 5000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_NONE);
    assert_int_equal(o.status, 200);
    assert_string_equal(o.body, "ok");
    assert_string_equal(o.header_x, "trickled");
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_read_until_close(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server =
        srv_start(SRV_RESPOND_CLOSE, "HTTP/1.1 200 OK\r\nX-Reply: eof\r\n\r\nuntil the end");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.reason, SB_REASON_NONE);
    assert_int_equal(o.status, 200);
    assert_string_equal(o.body, "until the end");
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0); /* never reused */
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_no_reuse_when_told(void **state)
{
    const char *responses[] = {
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    };
    for (size_t i = 0; i < 2; i++) {
        fixture *f = fixture_new(NULL, 1);
        f->server = srv_start(SRV_RESPOND, responses[i]);
        sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
        outcome o = {0}, o2 = {0};
        push(f, &u, "{}", &o);
        run_until(f, &o.calls, 1, 3000);
        assert_int_equal(o.status, 200);
        assert_int_equal(sb_upstream_pool_idle(f->pool), 0);
        push(f, &u, "{}", &o2);
        run_until(f, &o2.calls, 1, 3000);
        assert_int_equal(o2.status, 200);
        assert_int_equal(o2.reused, 0);
        assert_int_equal(atomic_load(&f->server->n_conns), 2);
        sb_url_clear(&u);
        fixture_free(f);
    }

    /* HTTP/1.0 with keep-alive is reusable. */
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(
        SRV_RESPOND, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_keepalive_reuse(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/a2a");
    for (int i = 0; i < 5; i++) {
        outcome o = {0};
        push(f, &u, "{\"n\":1}", &o);
        run_until(f, &o.calls, 1, 3000);
        assert_int_equal(o.calls, 1);
        assert_int_equal(o.status, 200);
        assert_int_equal(o.reused, i > 0);
        assert_int_equal(sb_upstream_pool_idle(f->pool), 1);
    }
    assert_int_equal(atomic_load(&f->server->n_conns), 1);
    assert_int_equal(atomic_load(&f->server->n_reqs), 5);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_concurrent_and_idle_cap(void **state)
{
    sb_upstream_opts opts = {.max_idle_per_origin = 2};
    fixture *f = fixture_new(&opts, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o[4];
    memset(o, 0, sizeof(o));
    int done = 0;
    for (int i = 0; i < 4; i++)
        push(f, &u, "{}", &o[i]);
    uint64_t deadline = now_ms() + 3000;
    while (now_ms() < deadline) {
        done = 0;
        for (int i = 0; i < 4; i++)
            done += o[i].calls;
        if (done == 4)
            break;
        run_for(f, 10);
    }
    assert_int_equal(done, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].status, 200);
    }
    assert_int_equal(atomic_load(&f->server->n_conns), 4);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 2); /* capped */
    sb_url_clear(&u);
    fixture_free(f);
}

static void stale_retry_case(int body_by_reference)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_STALE_SECOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o1 = {0}, o2 = {0};
    push(f, &u, "{\"first\":1}", &o1);
    run_until(f, &o1.calls, 1, 3000);
    assert_int_equal(o1.status, 200);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);

    /* The server drops the pooled connection on reading the second request, without a
     * byte of answer: the pool must resend it on a fresh connection, transparently. */
    if (body_by_reference) {
        /* What deliver does to keep the request body for a fallback: the pool gets
         * chains that are references, which libevent cannot reference again. */
        struct evbuffer *orig = body_of("{\"second\":2}");
        struct evbuffer *b = evbuffer_new();
        assert_int_equal(evbuffer_add_buffer_reference(b, orig), 0);
        sb_upstream_push(f->pool, &u, NULL, b, on_done, &o2);
        evbuffer_free(b);
        assert_int_equal(evbuffer_get_length(orig), 12); /* the caller's copy is intact */
        evbuffer_free(orig);
    } else {
        push(f, &u, "{\"second\":2}", &o2);
    }
    run_until(f, &o2.calls, 1, 3000);
    assert_int_equal(o2.calls, 1);
    assert_int_equal(o2.reason, SB_REASON_NONE);
    assert_int_equal(o2.status, 200);
    assert_int_equal(o2.reused, 0);
    assert_int_equal(atomic_load(&f->server->n_conns), 2);
    assert_int_equal(atomic_load(&f->server->n_reqs), 3); /* first, dropped second, resent */
    pthread_mutex_lock(&f->server->mu);
    assert_non_null(strstr(f->server->last_req, "Content-Length: 12\r\n"));
    assert_non_null(strstr(f->server->last_req, "\r\n\r\n{\"second\":2}"));
    pthread_mutex_unlock(&f->server->mu);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_stale_pooled_connection_retried(void **state)
{
    stale_retry_case(0);
    stale_retry_case(1);
}

static void test_idle_eof_dropped(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_CLOSE_AFTER, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.status, 200);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1); /* kept: it said keep-alive */
    /* The server closes it 50 ms later; the idle connection notices and goes. */
    uint64_t deadline = now_ms() + 2000;
    while (sb_upstream_pool_idle(f->pool) > 0 && now_ms() < deadline)
        run_for(f, 10);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_idle_timeout(void **state)
{
    sb_upstream_opts opts = {.idle_timeout_ms = 150};
    fixture *f = fixture_new(&opts, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);
    run_for(f, 100);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 1);
    run_for(f, 400);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_connect_refused(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    int port;
    int fd = listen_loopback(1, &port);
    close(fd); /* a port with nothing listening (just released) */
    sb_url u = url_for("http://127.0.0.1", port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    assert_int_equal(o.calls, 0); /* failures found at once are still deferred */
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_CONNECT_REFUSED);
    char expect[96];
    snprintf(expect, sizeof(expect), "connect 127.0.0.1:%d: Connection refused", port);
    assert_string_equal(o.detail, expect);
    run_for(f, 50);
    assert_int_equal(o.calls, 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_connect_timeout(void **state)
{
    sb_upstream_opts opts = {.connect_timeout_ms = 300};
    fixture *f = fixture_new(&opts, 1);
    /* A listener that never accepts, with its accept queue full: further SYNs are
     * dropped, so connects hang until our timeout. */
    int port;
    int lfd = listen_loopback(0, &port);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int fillers[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&a, sizeof(a));
    }
    usleep(50 * 1000);

    sb_url u = url_for("http://127.0.0.1", port, "/");
    outcome o = {0};
    uint64_t t0 = now_ms();
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    uint64_t took = now_ms() - t0;
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_CONNECT_TIMEOUT);
    assert_true(took >= 250 && took < 1500);
    assert_non_null(strstr(o.detail, "no connection within 300 ms"));
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(lfd);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_response_timeout(void **state)
{
    sb_upstream_opts opts = {.response_timeout_ms = 300};
    fixture *f = fixture_new(&opts, 1);
    f->server = srv_start(SRV_SILENT, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    uint64_t t0 = now_ms();
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    uint64_t took = now_ms() - t0;
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_RESPONSE_TIMEOUT);
    assert_true(took >= 250 && took < 1500);
    assert_non_null(strstr(o.detail, "no complete response within 300 ms"));
    assert_int_equal(atomic_load(&f->server->n_reqs), 1); /* the agent got it */
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_reset_mid_answer(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RST_MID, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_CONNECTION_RESET);
    assert_int_equal(atomic_load(&f->server->n_conns), 1); /* fresh connection: no retry */
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_garbage_response(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, "SSH-2.0-OpenSSH_9.2\r\n\r\n");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_INVALID_RESPONSE);
    assert_non_null(strstr(o.detail, "invalid HTTP response"));
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_unexpected_101(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n");
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.reason, SB_REASON_INVALID_RESPONSE);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_oversized_body(void **state)
{
    sb_upstream_opts opts = {.max_response_bytes = 100};
    const char *responses[] = {
        /* declared too big: refused at the head */
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        /* chunked: refused when the chunks add up past the limit */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
        "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < 2; i++) {
        fixture *f = fixture_new(&opts, 1);
        f->server = srv_start(SRV_RESPOND, responses[i]);
        sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
        outcome o = {0};
        push(f, &u, "{}", &o);
        run_until(f, &o.calls, 1, 3000);
        assert_int_equal(o.calls, 1);
        assert_int_equal(o.reason, SB_REASON_INVALID_RESPONSE);
        assert_non_null(strstr(o.detail, "limit"));
        sb_url_clear(&u);
        fixture_free(f);
    }
    /* Exactly at the limit is fine. */
    fixture *f = fixture_new(&opts, 1);
    char resp[256];
    snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n%0100d", 7);
    f->server = srv_start(SRV_RESPOND, resp);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.reason, SB_REASON_NONE);
    assert_int_equal(o.body_len, 100);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_large_bodies(void **state)
{
    /* 1 MiB each way: multi-chain request bodies (moved on a fresh connection, copied on a
     * reused one when they are references) and a response body over many reads. */
    enum { BIG = 1024 * 1024 };
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, NULL);
    char head[64];
    int hl = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG);
    char *resp = malloc((size_t)hl + BIG);
    memcpy(resp, head, (size_t)hl);
    for (int i = 0; i < BIG; i++)
        resp[hl + i] = (char)('a' + i % 26);
    f->server->big_response = resp;
    f->server->big_response_len = (size_t)hl + BIG;

    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    char *payload = malloc(BIG);
    memset(payload, 'x', BIG);
    for (int round = 0; round < 2; round++) {
        struct evbuffer *orig = evbuffer_new();
        for (int off = 0; off < BIG; off += 4096) /* many chains */
            evbuffer_add(orig, payload + off, 4096);
        struct evbuffer *b = orig;
        if (round == 1) { /* by reference, as deliver does */
            b = evbuffer_new();
            assert_int_equal(evbuffer_add_buffer_reference(b, orig), 0);
        }
        outcome ob = {0};
        sb_upstream_push(f->pool, &u, NULL, b, on_done_big, &ob);
        if (b != orig)
            evbuffer_free(b);
        evbuffer_free(orig);
        run_until(f, &ob.calls, 1, 5000);
        assert_int_equal(ob.calls, 1);
        if (ob.reason != SB_REASON_NONE)
            fail_msg("round %d: %s", round, ob.detail);
        assert_int_equal(ob.status, 200);
        assert_int_equal(ob.body_len, BIG);
        assert_int_equal(ob.reused, round);
        char expect_len[40];
        snprintf(expect_len, sizeof(expect_len), "Content-Length: %d\r\n", BIG);
        pthread_mutex_lock(&f->server->mu);
        assert_non_null(strstr(f->server->last_req, expect_len));
        size_t total = f->server->last_req_total;
        pthread_mutex_unlock(&f->server->mu);
        assert_true(total > BIG && total < BIG + 512);
    }
    assert_int_equal(atomic_load(&f->server->n_conns), 1);
    free(payload);
    sb_url_clear(&u);
    fixture_free(f);
    free(resp);
}

static void test_ipv6_literal(void **state)
{
    /* Refused on ::1 (allowed by the fixture): the detail shows the bracketed peer. */
    fixture *f = fixture_new(NULL, 1);
    int port = 0;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof(a));
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0)
            close(fd);
        fixture_free(f);
        skip(); /* no IPv6 loopback here */
    }
    socklen_t alen = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &alen);
    port = ntohs(a.sin6_port);
    close(fd); /* bound then released: nothing listens there */
    sb_url u = url_for("http://[::1]", port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.reason, SB_REASON_CONNECT_REFUSED);
    char expect[64];
    snprintf(expect, sizeof(expect), "connect [::1]:%d: Connection refused", port);
    assert_string_equal(o.detail, expect);
    sb_url_clear(&u);
    fixture_free(f);

    /* And forbidden without an allow list. */
    f = fixture_new(NULL, 0);
    u = url_for("http://[::1]", port, "/");
    outcome o2 = {0};
    push(f, &u, "{}", &o2);
    run_until(f, &o2.calls, 1, 3000);
    assert_int_equal(o2.reason, SB_REASON_UPSTREAM_FORBIDDEN);
    assert_string_equal(o2.detail, "address ::1 is forbidden (see --allow-upstream)");
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_forbidden_without_connecting(void **state)
{
    fixture *f = fixture_new(NULL, 0); /* empty allow list: loopback is forbidden */
    int port;
    int lfd = listen_loopback(16, &port);
    const char *origins[] = {"http://127.0.0.1", "http://[::ffff:127.0.0.1]", "http://localhost"};
    for (size_t i = 0; i < 3; i++) {
        sb_url u = url_for(origins[i], port, "/");
        outcome o = {0};
        push(f, &u, "{}", &o);
        assert_int_equal(o.calls, 0);
        run_until(f, &o.calls, 1, 3000);
        assert_int_equal(o.calls, 1);
        if (o.reason != SB_REASON_UPSTREAM_FORBIDDEN)
            fail_msg("%s: %s", origins[i], o.detail);
        assert_non_null(strstr(o.detail, "--allow-upstream"));
        sb_url_clear(&u);
    }
    /* Nobody knocked. */
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 100), 0);
    close(lfd);
    fixture_free(f);
}

static void test_localhost_resolves(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    /* /etc/hosts may list ::1 first, where nothing listens: the next address is tried. */
    sb_url u = url_for("http://localhost", f->server->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    if (o.reason != SB_REASON_NONE)
        fail_msg("localhost push failed: %s (%s)", o.detail, "check /etc/hosts");
    assert_int_equal(o.status, 200);
    char expect_host[64];
    snprintf(expect_host, sizeof(expect_host), "Host: localhost:%d\r\n", f->server->port);
    pthread_mutex_lock(&f->server->mu);
    assert_non_null(strstr(f->server->last_req, expect_host));
    pthread_mutex_unlock(&f->server->mu);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_dns_error(void **state)
{
    sb_upstream_opts opts = {.connect_timeout_ms = 500};
    fixture *f = fixture_new(&opts, 1);
    sb_url u = url_for("http://no-such-agent-1.invalid", 80, "/");
    outcome o = {0};
    uint64_t t0 = now_ms();
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    uint64_t took = now_ms() - t0;
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_DNS_ERROR);
    assert_true(took < 1500); /* NXDOMAIN, or no resolver answer within the budget */
    assert_non_null(strstr(o.detail, "resolve no-such-agent-1.invalid"));
    sb_url_clear(&u);
    fixture_free(f);
}

/* ---- https: a blocking OpenSSL server in a thread, one connection at a time ---- */

typedef struct tls_srv {
    int lfd;
    int port;
    SSL_CTX *ctx;
    const char *response;
    pthread_t th;
    atomic_int stop;
    atomic_int n_conns;      /* TCP connections accepted */
    atomic_int n_handshakes; /* completed handshakes */
    atomic_int n_reqs;
    char sni[256]; /* server name the last client sent (empty: none) */
} tls_srv;

static int tls_sni_cb(SSL *ssl, int *al, void *arg)
{
    tls_srv *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    snprintf(s->sni, sizeof(s->sni), "%s", name ? name : "");
    return SSL_TLSEXT_ERR_OK;
}

static void *tls_srv_main(void *arg)
{
    tls_srv *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->lfd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&s->n_conns, 1);
        struct timeval tv = {0, 50 * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        SSL *ssl = SSL_new(s->ctx);
        SSL_set_fd(ssl, fd);
        int r;
        while ((r = SSL_accept(ssl)) <= 0 && !atomic_load(&s->stop) &&
               SSL_get_error(ssl, r) == SSL_ERROR_WANT_READ)
            ;
        if (r == 1) {
            atomic_fetch_add(&s->n_handshakes, 1);
            srv_conn *c = calloc(1, sizeof(*c));
            while (!atomic_load(&s->stop)) {
                int n = SSL_read(ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len));
                if (n <= 0) {
                    if (SSL_get_error(ssl, n) == SSL_ERROR_WANT_READ)
                        continue;
                    break;
                }
                c->len += (size_t)n;
                size_t rl;
                while ((rl = request_len(c)) > 0) {
                    atomic_fetch_add(&s->n_reqs, 1);
                    memmove(c->buf, c->buf + rl, c->len - rl);
                    c->len -= rl;
                    SSL_write(ssl, s->response, (int)strlen(s->response));
                }
            }
            free(c);
        }
        SSL_free(ssl);
        close(fd);
        ERR_clear_error();
    }
    return NULL;
}

/* A self-signed P-256 certificate for |san| ("DNS:localhost,IP:127.0.0.1"). */
static void make_cert(const char *san, EVP_PKEY **key_out, X509 **crt_out)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"sb test", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    *key_out = key;
    *crt_out = x;
}

/* Starts a TLS server whose certificate covers |san|; writes that certificate (its own
 * CA) as PEM to |ca_path| (a mkstemp template) when not NULL. */
static tls_srv *tls_srv_start(const char *san, const char *response, char *ca_path)
{
    tls_srv *s = calloc(1, sizeof(*s));
    s->response = response;
    EVP_PKEY *key;
    X509 *crt;
    make_cert(san, &key, &crt);
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(s->ctx, crt), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(s->ctx, key), 1);
    SSL_CTX_set_tlsext_servername_callback(s->ctx, tls_sni_cb);
    SSL_CTX_set_tlsext_servername_arg(s->ctx, s);
    if (ca_path) {
        int fd = mkstemp(ca_path);
        assert_true(fd >= 0);
        FILE *fp = fdopen(fd, "w");
        PEM_write_X509(fp, crt);
        fclose(fp);
    }
    X509_free(crt);
    EVP_PKEY_free(key);
    s->lfd = listen_loopback(16, &s->port);
    assert_int_equal(pthread_create(&s->th, NULL, tls_srv_main, s), 0);
    return s;
}

static void tls_srv_stop(tls_srv *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->th, NULL);
    close(s->lfd);
    SSL_CTX_free(s->ctx);
    free(s);
}

static void test_dns_timeout(void **state)
{
    /* A resolver that never answers: a UDP socket nobody reads. The connect timeout must
     * end the wait as dns_error, and the late cancel must not touch the freed request. */
    int ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(ufd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t alen = sizeof(a);
    getsockname(ufd, (struct sockaddr *)&a, &alen);
    char ns[64];
    snprintf(ns, sizeof(ns), "127.0.0.1:%d", ntohs(a.sin_port));

    fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->dns = evdns_base_new(f->base, 0);
    assert_int_equal(evdns_base_nameserver_ip_add(f->dns, ns), 0);
    sb_upstream_opts o = {.connect_timeout_ms = 300};
    f->pool = sb_upstream_pool_new(f->base, f->dns, &o);

    sb_url u = url_for("http://silent-resolver.example", 80, "/");
    outcome out = {0};
    uint64_t t0 = now_ms();
    push(f, &u, "{}", &out);
    run_until(f, &out.calls, 1, 3000);
    uint64_t took = now_ms() - t0;
    assert_int_equal(out.calls, 1);
    assert_int_equal(out.reason, SB_REASON_DNS_ERROR);
    assert_string_equal(out.detail, "resolve silent-resolver.example: no answer within 300 ms");
    assert_true(took >= 250 && took < 1500);
    run_for(f, 100); /* the resolver's cancel callback lands after the request is gone */
    assert_int_equal(out.calls, 1);
    sb_url_clear(&u);
    fixture_free(f);
    close(ufd);
}

static void test_https_success(void **state)
{
    char ca[] = "/tmp/sb-test-ca-XXXXXX";
    tls_srv *ts = tls_srv_start("DNS:localhost,IP:127.0.0.1", OK_RESPONSE, ca);
    sb_upstream_opts opts = {.tls_ca_file = ca};
    fixture *f = fixture_new(&opts, 1);

    /* By IP literal: the certificate's IP entry is checked, no SNI is sent. */
    sb_url u = url_for("https://127.0.0.1", ts->port, "/a2a");
    for (int i = 0; i < 2; i++) {
        outcome o = {0};
        push(f, &u, "{}", &o);
        run_until(f, &o.calls, 1, 3000);
        assert_int_equal(o.calls, 1);
        if (o.reason != SB_REASON_NONE)
            fail_msg("https push failed: %s", o.detail);
        assert_int_equal(o.status, 200);
        assert_string_equal(o.body, "{\"jsonrpc\":\"2.0\",\"id\":1}\n\n");
        assert_int_equal(o.reused, i > 0);
    }
    assert_int_equal(atomic_load(&ts->n_handshakes), 1); /* keep-alive over TLS */
    assert_string_equal(ts->sni, "");
    sb_url_clear(&u);
    fixture_free(f);

    /* By name: SNI carries it and the certificate's DNS entry is checked. */
    f = fixture_new(&opts, 1);
    u = url_for("https://localhost", ts->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    if (o.reason != SB_REASON_NONE)
        fail_msg("https push by name failed: %s", o.detail);
    assert_int_equal(o.status, 200);
    assert_string_equal(ts->sni, "localhost");
    sb_url_clear(&u);
    fixture_free(f);
    tls_srv_stop(ts);
    unlink(ca);
}

static void test_https_untrusted(void **state)
{
    /* Self-signed and not in the system store. */
    tls_srv *ts = tls_srv_start("DNS:localhost,IP:127.0.0.1", OK_RESPONSE, NULL);
    fixture *f = fixture_new(NULL, 1);
    sb_url u = url_for("https://127.0.0.1", ts->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.reason, SB_REASON_TLS_ERROR);
    assert_non_null(strstr(o.detail, "certificate verify failed"));
    assert_int_equal(atomic_load(&ts->n_reqs), 0); /* nothing was sent */
    sb_url_clear(&u);
    fixture_free(f);
    tls_srv_stop(ts);
}

static void test_https_name_mismatch(void **state)
{
    char ca[] = "/tmp/sb-test-ca-XXXXXX";
    tls_srv *ts = tls_srv_start("DNS:agent.example", OK_RESPONSE, ca);
    sb_upstream_opts opts = {.tls_ca_file = ca};
    const char *origins[] = {"https://127.0.0.1", "https://localhost"};
    const char *why[] = {"IP address mismatch", "hostname mismatch"};
    for (int i = 0; i < 2; i++) {
        fixture *f = fixture_new(&opts, 1);
        sb_url u = url_for(origins[i], ts->port, "/");
        outcome o = {0};
        push(f, &u, "{}", &o);
        run_until(f, &o.calls, 1, 3000);
        assert_int_equal(o.reason, SB_REASON_TLS_ERROR);
        if (strcasestr(o.detail, why[i]) == NULL)
            fail_msg("%s: unexpected detail: %s", origins[i], o.detail);
        sb_url_clear(&u);
        fixture_free(f);
    }
    assert_int_equal(atomic_load(&ts->n_reqs), 0);
    tls_srv_stop(ts);
    unlink(ca);
}

static void test_https_to_plain_http(void **state)
{
    /* A plain HTTP server answers the ClientHello with an HTTP error... */
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_ANSWER_ANY, "HTTP/1.1 400 Bad Request\r\n\r\n");
    srv *plain = f->server;
    sb_url u = url_for("https://127.0.0.1", plain->port, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.reason, SB_REASON_TLS_ERROR);
    assert_non_null(strstr(o.detail, "TLS handshake with 127.0.0.1:"));
    assert_null(strstr(o.detail, "no answer")); /* refused at once, not timed out */
    sb_url_clear(&u);
    fixture_free(f);

    /* ...or waits for a request forever: the handshake is bounded by the connect timeout. */
    sb_upstream_opts opts = {.connect_timeout_ms = 300};
    f = fixture_new(&opts, 1);
    int port;
    int lfd = listen_loopback(16, &port); /* accepts (kernel backlog), never answers */
    u = url_for("https://127.0.0.1", port, "/");
    outcome o2 = {0};
    uint64_t t0 = now_ms();
    push(f, &u, "{}", &o2);
    run_until(f, &o2.calls, 1, 3000);
    assert_int_equal(o2.reason, SB_REASON_TLS_ERROR);
    assert_non_null(strstr(o2.detail, "no answer within 300 ms"));
    assert_true(now_ms() - t0 < 1500);
    close(lfd);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_https_bad_ca_file(void **state)
{
    sb_upstream_opts opts = {.tls_ca_file = "/nonexistent/ca.pem"};
    fixture *f = fixture_new(&opts, 1);
    sb_url u = url_for("https://127.0.0.1", 9, "/");
    outcome o = {0};
    push(f, &u, "{}", &o);
    assert_int_equal(o.calls, 0);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.reason, SB_REASON_TLS_ERROR);
    assert_non_null(strstr(o.detail, "cannot load CA certificates from /nonexistent/ca.pem"));
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_cancel(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_SILENT, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");

    /* Canceled while waiting for the answer. */
    outcome o = {0};
    sb_upstream_req *r = push(f, &u, "{}", &o);
    uint64_t deadline = now_ms() + 2000;
    while (atomic_load(&f->server->n_reqs) < 1 && now_ms() < deadline)
        run_for(f, 10);
    assert_int_equal(atomic_load(&f->server->n_reqs), 1);
    sb_upstream_cancel(r);
    run_for(f, 200);
    assert_int_equal(o.calls, 0);
    assert_int_equal(sb_upstream_pool_idle(f->pool), 0);

    /* Canceled with its (immediate) failure already scheduled. */
    outcome o2 = {0};
    sb_upstream_cancel(sb_upstream_send(f->pool, "bad method", &u, NULL, NULL, on_done, &o2));
    /* Canceled right away, while connecting. */
    outcome o3 = {0};
    sb_upstream_cancel(push(f, &u, "{}", &o3));
    /* Canceled while resolving a name. */
    sb_url name = url_for("http://cancel-me-1.invalid", 80, "/");
    outcome o4 = {0};
    sb_upstream_cancel(push(f, &name, "{}", &o4));
    run_for(f, 300);
    assert_int_equal(o2.calls, 0);
    assert_int_equal(o3.calls, 0);
    assert_int_equal(o4.calls, 0);

    sb_url_clear(&name);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_pool_free_inflight(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_SILENT, NULL);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    sb_url name = url_for("http://pool-free-1.invalid", 80, "/");
    outcome o[3];
    memset(o, 0, sizeof(o));
    push(f, &u, "{}", &o[0]);
    run_for(f, 100); /* o[0] is sent and waits for its answer */
    push(f, &name, "{}", &o[1]);
    push(f, &u, "{}", &o[2]);
    sb_upstream_pool_free(f->pool);
    f->pool = NULL;
    run_for(f, 100);
    for (int i = 0; i < 3; i++)
        assert_int_equal(o[i].calls, 0);
    sb_url_clear(&u);
    sb_url_clear(&name);
    fixture_free(f);
}

/* A callback may push again at once (on the connection that just went idle). */
typedef struct chain {
    fixture *f;
    sb_url *u;
    int left;
    int done;
    int ok;
    int reused;
} chain;

static void chain_cb(const sb_upstream_result *res, void *arg)
{
    chain *c = arg;
    if (res->reason == SB_REASON_NONE && res->status == 200)
        c->ok++;
    c->reused += res->reused;
    if (--c->left > 0) {
        struct evbuffer *b = body_of("{}");
        sb_upstream_push(c->f->pool, c->u, NULL, b, chain_cb, c);
        evbuffer_free(b);
    } else {
        c->done = 1;
    }
}

static void test_push_from_callback(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/");
    chain c = {.f = f, .u = &u, .left = 50};
    struct evbuffer *b = body_of("{}");
    sb_upstream_push(f->pool, &u, NULL, b, chain_cb, &c);
    evbuffer_free(b);
    run_until(f, &c.done, 1, 5000);
    assert_int_equal(c.done, 1);
    assert_int_equal(c.ok, 50);
    assert_int_equal(c.reused, 49);
    assert_int_equal(atomic_load(&f->server->n_conns), 1);
    sb_url_clear(&u);
    fixture_free(f);
}

static void test_get_without_body(void **state)
{
    fixture *f = fixture_new(NULL, 1);
    f->server = srv_start(SRV_RESPOND, OK_RESPONSE);
    sb_url u = url_for("http://127.0.0.1", f->server->port, "/.well-known/agent-card.json");
    outcome o = {0};
    sb_upstream_send(f->pool, "GET", &u, NULL, NULL, on_done, &o);
    run_until(f, &o.calls, 1, 3000);
    assert_int_equal(o.status, 200);
    pthread_mutex_lock(&f->server->mu);
    assert_true(strncmp(f->server->last_req, "GET /.well-known/agent-card.json HTTP/1.1\r\n", 43) ==
                0);
    assert_null(strstr(f->server->last_req, "Content-Length"));
    pthread_mutex_unlock(&f->server->mu);

    outcome o2 = {0};
    sb_upstream_send(f->pool, "get me", &u, NULL, NULL, on_done, &o2);
    run_until(f, &o2.calls, 1, 3000);
    assert_int_equal(o2.reason, SB_REASON_INVALID_RESPONSE);
    sb_url_clear(&u);
    fixture_free(f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemon does: peers close sockets under our writes */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_200),
        cmocka_unit_test(test_status_404_delivered),
        cmocka_unit_test(test_chunked_and_interim),
        cmocka_unit_test(test_response_one_byte_per_read),
        cmocka_unit_test(test_read_until_close),
        cmocka_unit_test(test_no_reuse_when_told),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_concurrent_and_idle_cap),
        cmocka_unit_test(test_stale_pooled_connection_retried),
        cmocka_unit_test(test_idle_eof_dropped),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_response_timeout),
        cmocka_unit_test(test_reset_mid_answer),
        cmocka_unit_test(test_garbage_response),
        cmocka_unit_test(test_unexpected_101),
        cmocka_unit_test(test_oversized_body),
        cmocka_unit_test(test_large_bodies),
        cmocka_unit_test(test_ipv6_literal),
        cmocka_unit_test(test_forbidden_without_connecting),
        cmocka_unit_test(test_localhost_resolves),
        cmocka_unit_test(test_dns_error),
        cmocka_unit_test(test_dns_timeout),
        cmocka_unit_test(test_https_success),
        cmocka_unit_test(test_https_untrusted),
        cmocka_unit_test(test_https_name_mismatch),
        cmocka_unit_test(test_https_to_plain_http),
        cmocka_unit_test(test_https_bad_ca_file),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_pool_free_inflight),
        cmocka_unit_test(test_push_from_callback),
        cmocka_unit_test(test_get_without_body),
    };
    return cmocka_run_group_tests_name("upstream", tests, NULL, NULL);
}
