/*
 * server.h — the process: N worker threads (worker.h), each one libevent loop; the top
 * of the house, which wires every module together.
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
#include "switchboard/worker.h"

struct ssl_ctx_st;

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

#endif
