/*
 * server.c — worker threads, listening sockets, and the graceful stop (see server.h).
 *
 * Start: sb_server_init builds the TLS context when --tls-listen is given (a bad
 * certificate or key fails here), binds one SO_REUSEPORT socket per worker on --listen
 * and, with TLS, another on --tls-listen (so an address in use or a bad host fails
 * before any thread exists) and builds each worker's loop, resolver, Redis connection
 * and upstream pool. Accepted cleartext connections go to the HTTP/1.1 codec, which
 * hands h2c (prior knowledge) to the HTTP/2 codec; TLS connections go to the HTTP/1.1
 * codec as OpenSSL bufferevents, which hands ALPN "h2" over once the handshake is done.
 * sb_server_run blocks SIGTERM/SIGINT in every thread, starts the workers and waits for
 * a signal with sigwait() on the main thread, which does nothing else.
 *
 * Loops run without libevent's locks (EVENT_BASE_FLAG_NOLOCK: each base, its events and
 * bufferevents are touched by their own thread only, which saves a mutex round trip on
 * every event_add/del and loop turn). What other threads must tell a worker goes through
 * an sb_wake the worker owns (wake.h): the stop here, the inbox's announcements
 * (inbox.c) and the registry barrier's completion (sync.c). Accepted connections never
 * change threads: each worker accepts on its own SO_REUSEPORT socket.
 *
 * Stop: the main thread rings each worker's stop wake. The worker closes its listeners — new
 * connections are refused — asks both codecs to close idle connections and finish busy ones (HTTP/2
 * with GOAWAY), and checks every 50 ms until it has no connection and no in-flight
 * request left, or the --shutdown-timeout-s deadline passes and what remains is
 * closed. Then the loop ends.
 */
#include "switchboard/server.h"
#include "switchboard/alloc.h"
#include "switchboard/auth.h"
#include "switchboard/deliver.h"
#include "switchboard/drain.h"
#include "switchboard/http1.h"
#include "switchboard/inbox.h"
#include "switchboard/http2.h"
#include "switchboard/notify.h"
#include "switchboard/log.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/redeliver.h"
#include "switchboard/retry.h"
#include "switchboard/redis.h"
#include "switchboard/sync.h"
#include "switchboard/tls.h"
#include "switchboard/upstream.h"
#include "switchboard/util.h"
#include "switchboard/wake.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* After the stop deadline, how long queue appends of fallen-back pushes may take. */
#define SB_SHUTDOWN_FALLBACK_GRACE_US 3000000u

/* 1 when something already listens on |ai|'s address. SO_REUSEPORT would otherwise let a
 * second switchboard of the same user silently share the port with the first. */
static int port_taken(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return 0;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int taken = bind(fd, ai->ai_addr, ai->ai_addrlen) == -1 && errno == EADDRINUSE;
    close(fd);
    return taken;
}

/* A listening socket on |host|:|port| that several workers can each bind; |flag| names
 * the option in error messages. |first| checks that no other process holds the port. */
static int bind_listener(const char *flag, const char *host, int port, int first, char *err,
                         size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s %s:%d: %s", flag, host, port, gai_strerror(rc));
        return -1;
    }
    if (first && port_taken(res)) {
        snprintf(err, errlen, "%s %s:%d: %s", flag, host, port, strerror(EADDRINUSE));
        freeaddrinfo(res);
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "%s %s:%d: socket: %s", flag, host, port, strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) == -1 || listen(fd, 1024) == -1) {
        snprintf(err, errlen, "%s %s:%d: %s", flag, host, port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void format_peer(const struct sockaddr *sa, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        port = ntohs(in6->sin6_port);
    }
    snprintf(out, cap, "%s:%d", ip, port);
}

/* A connection accepted on one of |w|'s listeners goes to the HTTP/1.1 codec, through a
 * TLS bufferevent when |tls| (the codec serves the handshake's outcome and hands the
 * connection to HTTP/2 when ALPN agreed on "h2"). A draining worker refuses it. */
static void accept_conn(sb_worker *w, evutil_socket_t fd, struct sockaddr *sa, int tls)
{
    if (w->draining) {
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct bufferevent *bev;
    if (tls) {
        bev = sb_tls_accept(w->base, fd, w->server->tls_ctx);
    } else {
        bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (bev == NULL) {
            evutil_closesocket(fd);
            return;
        }
    }
    char peer[64];
    format_peer(sa, peer, sizeof(peer));
    sb_http1_conn_new(w, bev, peer);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    accept_conn(arg, fd, sa, 0);
}

/* --tls-listen. */
static void on_accept_tls(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int len, void *arg)
{
    accept_conn(arg, fd, sa, 1);
}

/* Out of descriptors (EMFILE) and similar: pause accepting for a moment instead of
 * spinning on a listener that stays readable. */
static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    sb_worker *w = arg;
    if (w->draining)
        return;
    /* Enabling a listener that was not paused is harmless. */
    if (w->listener != NULL)
        evconnlistener_enable(w->listener);
    if (w->tls_listener != NULL)
        evconnlistener_enable(w->tls_listener);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    sb_worker *w = arg;
    int e = EVUTIL_SOCKET_ERROR();
    sb_log(SB_LOG_ERROR, "accept_failed", "accept: %s; pausing 100 ms",
           evutil_socket_error_to_string(e));
    evconnlistener_disable(l);
    struct timeval tv = {0, 100000};
    event_base_once(w->base, -1, EV_TIMEOUT, on_accept_resume, w, &tv);
}

static void finish_loop(sb_worker *w)
{
    if (w->drain_ev != NULL)
        event_del(w->drain_ev);
    event_base_loopexit(w->base, NULL);
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    sb_worker *w = arg;
    /* Delivered pushes' notes wait a moment to share a Redis call (record.c): a stopping
     * worker sends them first and waits for Redis' answers (a call still in hiredis'
     * buffer when the loop ends is never written), unless Redis is away (then they are
     * logged as lost; the watchdog drops a connection that stops answering). */
    int notes = (sb_record_backlog_len() > 0 || sb_record_notes_unanswered() > 0) &&
                sb_redis_is_up(w->redis);
    if (w->inflight == 0 && w->nconns == 0 && sb_deliver_inflight() == 0 && !notes &&
        sb_drain_thread_runs() == 0) {
        finish_loop(w);
        return;
    }
    uint64_t now = sb_now_mono_us();
    if (now >= w->drain_deadline_us && !w->aborted) {
        /* Nothing accepted is dropped: pushes still waiting fall back to the queue, and
         * the loop runs a little longer for those appends (and their answers). */
        w->aborted = 1;
        sb_log(SB_LOG_WARN, "shutdown_deadline",
               "worker %d: %zu push(es) still waiting for their agent fall back to the queue",
               w->id, sb_deliver_inflight());
        sb_deliver_abort_inflight();
        w->drain_deadline_us = now + SB_SHUTDOWN_FALLBACK_GRACE_US;
        return;
    }
    if (now >= w->drain_deadline_us) {
        sb_log(SB_LOG_WARN, "shutdown_deadline",
               "worker %d: closing %zu connection(s) with %zu request(s) still in flight", w->id,
               w->nconns, w->inflight);
        sb_http1_close_all(w);
        sb_http2_close_all(w);
        finish_loop(w);
    }
}

static void on_stop(void *arg)
{
    sb_worker *w = arg;
    if (w->draining)
        return;
    w->draining = 1;
    sb_inbox_shutdown(w); /* waiting long-polls get their empty answer now */
    if (w->listener != NULL) {
        evconnlistener_free(w->listener);
        w->listener = NULL;
    }
    if (w->tls_listener != NULL) {
        evconnlistener_free(w->tls_listener);
        w->tls_listener = NULL;
    }
    w->drain_deadline_us = sb_now_mono_us() + (uint64_t)w->cfg->shutdown_timeout_s * 1000000u;
    sb_http1_shutdown(w);
    sb_http2_shutdown(w);
    struct timeval tv = {0, 50000};
    event_add(w->drain_ev, &tv);
    on_drain_tick(-1, 0, w);
}

static void *worker_main(void *arg)
{
    sb_worker *w = arg;
    sb_log_attach_loop(w->base);
    event_base_dispatch(w->base);
    sb_queue_append_flush(); /* appends of the last turn, if the loop left before its end */
    sb_log_detach_loop();
    sb_record_backlog_clear(); /* thread-local: freed on this thread */
    sb_drain_thread_clear();
    sb_retry_thread_clear();
    sb_sha256_thread_clear();
    sb_auth_thread_clear();  /* wipes the tokens this worker cached */
    sb_alloc_thread_clear(); /* last: the clears above free through it */
    return NULL;
}

static int worker_init(sb_worker *w, sb_server *s, int id, char *err, size_t errlen)
{
    const sb_config *cfg = s->cfg;
    char host[256];
    int port;
    if (sb_config_split_hostport(cfg->listen, host, sizeof(host), &port) != SB_OK) {
        snprintf(err, errlen, "--listen %s: expected HOST:PORT", cfg->listen);
        return SB_ERR;
    }
    w->id = id;
    w->cfg = cfg;
    w->server = s;
    w->all = s->workers;
    w->nall = s->nworkers;
    struct event_config *ec = event_config_new();
    if (ec != NULL) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        w->base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    if (w->base == NULL) {
        snprintf(err, errlen, "cannot create an event loop");
        return SB_ERR;
    }
    int fd = bind_listener("--listen", host, port, id == 0, err, errlen);
    if (fd == -1)
        return SB_ERR;
    w->listener = evconnlistener_new(w->base, on_accept, w, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    if (w->listener == NULL) {
        close(fd);
        snprintf(err, errlen, "--listen %s: cannot start the listener", cfg->listen);
        return SB_ERR;
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    if (s->tls_ctx != NULL) {
        if (sb_config_split_hostport(cfg->tls_listen, host, sizeof(host), &port) != SB_OK) {
            snprintf(err, errlen, "--tls-listen %s: expected HOST:PORT", cfg->tls_listen);
            return SB_ERR;
        }
        fd = bind_listener("--tls-listen", host, port, id == 0, err, errlen);
        if (fd == -1)
            return SB_ERR;
        w->tls_listener =
            evconnlistener_new(w->base, on_accept_tls, w, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (w->tls_listener == NULL) {
            close(fd);
            snprintf(err, errlen, "--tls-listen %s: cannot start the listener", cfg->tls_listen);
            return SB_ERR;
        }
        evconnlistener_set_error_cb(w->tls_listener, on_accept_error);
    }
    /* Name servers from /etc/resolv.conf when there is one; /etc/hosts either way. */
    w->dns = evdns_base_new(w->base,
                            EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (w->dns == NULL) {
        w->dns = evdns_base_new(w->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (w->dns == NULL) {
            snprintf(err, errlen, "cannot create a DNS resolver");
            return SB_ERR;
        }
        evdns_base_load_hosts(w->dns, NULL);
    }
    sb_upstream_opts uo = {
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .response_timeout_ms = cfg->push_timeout_s * 1000,
        .max_response_bytes = cfg->max_body_bytes * 4,
        .allow = cfg->allow_upstream,
        .n_allow = cfg->n_allow_upstream,
        .tls_ca_file = cfg->upstream_ca,
    };
    w->upstream = sb_upstream_pool_new(w->base, w->dns, &uo);
    w->redis = sb_redis_new(w->base, cfg->redis_url, sb_record_redis_state, NULL);
    if (w->redis == NULL) {
        snprintf(err, errlen, "--redis: cannot parse the URL");
        return SB_ERR;
    }
    sb_redis_set_timeouts(w->redis, cfg->connect_timeout_ms, cfg->redis_command_timeout_ms);
    w->stop_wake = sb_wake_new(w->base, on_stop, w);
    if (w->stop_wake == NULL) {
        snprintf(err, errlen, "cannot create the stop signal: %s", strerror(errno));
        return SB_ERR;
    }
    w->drain_ev = event_new(w->base, -1, EV_PERSIST, on_drain_tick, w);
    if (id == 0)
        sb_notify_start(w); /* one sweep per instance: push notifications (notify.h) */
    return SB_OK;
}

static void worker_clear(sb_worker *w)
{
    if (w->base == NULL)
        return;
    if (w->nconns > 0) {
        sb_http1_close_all(w);
        sb_http2_close_all(w);
    }
    if (w->id == 0)
        sb_notify_stop(); /* before the pools its jobs use go away */
    if (w->listener != NULL)
        evconnlistener_free(w->listener);
    if (w->tls_listener != NULL)
        evconnlistener_free(w->tls_listener);
    if (w->upstream != NULL)
        sb_upstream_pool_free(w->upstream);
    sb_redis_free(w->redis);
    sb_wake_free(w->stop_wake);
    if (w->drain_ev != NULL)
        event_free(w->drain_ev);
    if (w->dns != NULL)
        evdns_base_free(w->dns, 0);
    event_base_free(w->base);
    memset(w, 0, sizeof(*w));
}

int sb_server_init(sb_server *s, const sb_config *cfg, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    if (cfg->tls_listen != NULL) {
        s->tls_ctx = sb_tls_server_ctx_new(cfg->tls_cert, cfg->tls_key, err, errlen);
        if (s->tls_ctx == NULL)
            return SB_ERR;
    }
    s->nworkers = cfg->threads;
    s->workers = sb_calloc((size_t)s->nworkers, sizeof(sb_worker));
    for (int i = 0; i < s->nworkers; i++) {
        if (worker_init(&s->workers[i], s, i, err, errlen) != SB_OK)
            return SB_ERR;
    }
    if (sb_sync_start(s->workers[0].base, cfg->redis_url) != SB_OK) {
        snprintf(err, errlen, "--redis: cannot start the registry sync");
        return SB_ERR;
    }
    sb_redeliver_start(&s->workers[0]);
    return SB_OK;
}

int sb_server_run(sb_server *s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (int i = 0; i < s->nworkers; i++) {
        if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
            sb_log(SB_LOG_ERROR, "thread_failed", "cannot start worker %d", i);
            return SB_ERR;
        }
    }
    if (s->cfg->tls_listen != NULL)
        sb_log(SB_LOG_INFO, "listening",
               "serving HTTP/1.1 and h2c on %s, TLS (ALPN h2, http/1.1) on %s, with %d worker(s)",
               s->cfg->listen, s->cfg->tls_listen, s->nworkers);
    else
        sb_log(SB_LOG_INFO, "listening", "serving HTTP/1.1 and h2c on %s with %d worker(s)",
               s->cfg->listen, s->nworkers);

    int sig = 0;
    sigwait(&set, &sig);
    sb_log(SB_LOG_INFO, "stopping", "%s received: refusing new connections, draining in-flight",
           sig == SIGTERM ? "SIGTERM" : "SIGINT");
    for (int i = 0; i < s->nworkers; i++)
        sb_wake_ring(s->workers[i].stop_wake);
    for (int i = 0; i < s->nworkers; i++)
        pthread_join(s->workers[i].thread, NULL);
    sb_log(SB_LOG_INFO, "stopped", "all workers drained");
    return SB_OK;
}

void sb_server_clear(sb_server *s)
{
    sb_sync_stop();
    sb_redeliver_stop();
    for (int i = 0; i < s->nworkers; i++)
        worker_clear(&s->workers[i]);
    sb_free(s->workers);
    sb_tls_ctx_free(s->tls_ctx);
    memset(s, 0, sizeof(*s));
}
