/*
 * main.c — wires the modules together: config → log → auth → registry (each registering
 * its replica with the sync loop) → the API's route table → server, and the queue
 * gauges' periodic refresh (record.c) onto the sync loop.
 *
 * Nothing else lives here. Start-up failures print one line on stderr and exit 1.
 */
#include "switchboard/alloc.h"
#include "switchboard/auth.h"
#include "switchboard/circuit.h"
#include "switchboard/config.h"
#include "switchboard/handlers.h"
#include "switchboard/log.h"
#include "switchboard/record.h"
#include "switchboard/redis.h"
#include "switchboard/redis_sentinel.h"
#include "switchboard/registry.h"
#include "switchboard/server.h"
#include "switchboard/sync.h"

#include <event2/thread.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    sb_config cfg;
    char err[512];
    sb_alloc_libevent(); /* before libevent allocates anything */
    if (sb_config_parse(&cfg, argc, argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "switchboard: %s\n", err);
        sb_config_clear(&cfg);
        return 1;
    }
    /* A redis:// URL of a Redis Cluster node becomes redis+cluster:// here, once. */
    char *resolved = NULL;
    if (sb_redis_url_check(cfg.redis_url, err, sizeof(err)) != 0 ||
        sb_redis_resolve_sync(cfg.redis_url, cfg.connect_timeout_ms, &resolved, err, sizeof(err)) !=
            0) {
        fprintf(stderr, "switchboard: --redis: %s\n", err);
        sb_config_clear(&cfg);
        return 1;
    }
    sb_free(cfg.redis_url);
    cfg.redis_url = resolved;
    sb_log_init(cfg.log_json, 1);
    /* A Redis written by a release with key layout 1 is brought to this one, once. */
    if (sb_sync_migrate(cfg.redis_url, cfg.connect_timeout_ms, err, sizeof(err)) != 0) {
        fprintf(stderr, "switchboard: --redis: %s\n", err);
        sb_config_clear(&cfg);
        return 1;
    }
    json_set_alloc_funcs(sb_malloc, sb_free); /* one OOM policy, jansson included */
    evthread_use_pthreads();

    /* The admin token lives on only as a digest inside auth.c. */
    sb_auth_init(cfg.admin_token);
    OPENSSL_cleanse(cfg.admin_token, strlen(cfg.admin_token));
    sb_registry_init();
    sb_circuit_init();
    sb_handlers_install();
    sb_circuit_set_default_limit(cfg.max_inflight_per_endpoint);
    sb_sync_every(5, sb_record_refresh_gauges); /* queue gauges from Redis, worker 0 */

    sb_server server;
    if (sb_server_init(&server, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "switchboard: %s\n", err);
        sb_server_clear(&server);
        sb_circuit_shutdown();
        sb_registry_shutdown();
        sb_auth_shutdown();
        sb_config_clear(&cfg);
        return 1;
    }
    int rc = sb_server_run(&server);
    sb_server_clear(&server);
    sb_circuit_shutdown();
    sb_registry_shutdown();
    sb_auth_shutdown();
    sb_sentinel_stop(); /* the Sentinel watcher thread, when --redis names sentinels */
    sb_config_clear(&cfg);
    return rc == 0 ? 0 : 1;
}
