/*
 * server.h — the process: N worker threads, each one libevent loop.
 *
 * Every worker owns its event_base, its DNS resolver, its async Redis connection, its
 * upstream connection pool and its own listening socket bound with SO_REUSEPORT to the
 * shared port (with --tls-listen, one on the TLS port too), so the kernel spreads
 * connections and workers share nothing on the hot path but the read-mostly registry
 * and token caches and the read-only TLS context. Worker 0 additionally runs the cache
 * synchronisation (Redis pub/sub) for the whole process.
 *
 * Shutdown (SIGTERM/SIGINT, caught by the main thread): every worker closes its
 * listeners, lets in-flight requests finish for at most --shutdown-timeout-s, then
 * closes what is left and leaves its loop; the process exits 0.
 */
#ifndef SWITCHBOARD_SERVER_H
#define SWITCHBOARD_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/config.h"

struct event_base;
struct evdns_base;
struct evconnlistener;
struct event;
struct sb_redis;
struct sb_upstream_pool;
struct ssl_ctx_st;

typedef struct sb_worker {
    int id;
    const sb_config *cfg;
    struct sb_server *server;
    struct event_base *base;
    struct evdns_base *dns;
    struct sb_redis *redis;              /* this loop's command connection */
    struct sb_upstream_pool *upstream;   /* this loop's agent connections */
    struct evconnlistener *listener;     /* --listen: HTTP/1.1 and h2c */
    struct evconnlistener *tls_listener; /* --tls-listen, or NULL */
    struct event *stop_ev;               /* activated cross-thread to begin the graceful stop */
    struct event *drain_ev;              /* periodic check while draining */
    pthread_t thread;
    int draining; /* 1 once the graceful stop began: no new connections */
    uint64_t drain_deadline_us;
    int aborted;     /* the deadline passed once: pending pushes were fallen back */
    void *conns;     /* codec-owned list of live HTTP/1.1 connections (http1.c) */
    void *h2conns;   /* codec-owned list of live HTTP/2 connections (http2.c) */
    size_t nconns;   /* live connections of both codecs */
    size_t inflight; /* requests dispatched and not yet answered */
} sb_worker;

typedef struct sb_server {
    const sb_config *cfg;
    struct ssl_ctx_st *tls_ctx; /* shared by every worker's TLS listener, or NULL */
    sb_worker *workers;
    int nworkers;
} sb_server;

/* Creates the workers and binds every listener (so a bad --listen fails here, before
 * any thread starts). Returns SB_OK, or SB_ERR with one line in |err|. */
int sb_server_init(sb_server *s, const sb_config *cfg, char *err, size_t errlen);
/* Runs the workers until SIGTERM/SIGINT, then drains them. Returns when all stopped. */
int sb_server_run(sb_server *s);
void sb_server_clear(sb_server *s);

/* The worker running on the calling thread, or NULL outside worker threads. */
sb_worker *sb_worker_current(void);

#endif
