/*
 * worker.h — the worker context: what one event loop owns, seen by every layer.
 *
 * A worker is one thread running one libevent loop with its own DNS resolver, async
 * Redis connection and agent connection pool (server.c creates and runs them). Codecs,
 * delivery and handlers all need "the loop this request runs on" and its clients, so
 * this type sits on the ground floor: it names the clients only by forward declaration
 * and includes nothing of ours but config, so no layer has to include the server (the
 * top of the house) to reach its loop.
 *
 * Fields are written by server.c before the loop starts and by the worker's own thread
 * afterwards; another thread may read the counters (nconns, inflight) for gauges, as a
 * moment's approximation. Never: touch a worker's loop objects from another thread.
 */
#ifndef SWITCHBOARD_WORKER_H
#define SWITCHBOARD_WORKER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/config.h"

struct event_base;
struct evdns_base;
struct evconnlistener;
struct event;
struct sb_wake;
struct sb_redis;
struct sb_upstream_pool;
struct sb_server;

typedef struct sb_worker {
    int id;
    const sb_config *cfg;
    struct sb_server *server; /* the owner (server.c only) */
    struct sb_worker *all;    /* every worker of the process, this one included */
    int nall;                 /* ... and how many */
    struct event_base *base;
    struct evdns_base *dns;
    struct sb_redis *redis;              /* this loop's command connection */
    struct sb_upstream_pool *upstream;   /* this loop's agent connections */
    struct evconnlistener *listener;     /* --listen: HTTP/1.1 and h2c */
    struct evconnlistener *tls_listener; /* --tls-listen, or NULL */
    struct sb_wake *stop_wake;           /* rung by the main thread to begin the graceful stop */
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

#endif
