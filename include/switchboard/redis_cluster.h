/*
 * redis_cluster.h — Redis Cluster routing under the sb_redis API (hiredis 0.14 has none).
 *
 * A cluster facade (sb_redis_new with redis+cluster://h:p[,h:p…], or a redis:// URL of a
 * node, which sb_redis_resolve_sync turns into that form at start) keeps:
 *  - a control connection that rotates over the seeds and the known masters and reads
 *    the slot map with CLUSTER SLOTS: at start, every SB_CLUSTER_REFRESH_MS, after a
 *    MOVED and after a node connection was lost;
 *  - one plain connection per master (per facade, i.e. per worker), opened when the map
 *    names it and kept, reconnecting with back-off, for the life of the facade;
 *  - for a subscriber facade, one subscriber connection rotating over the nodes instead
 *    (classic PUBLISH reaches every node of a cluster).
 * A command goes to the master of the hash slot of its first key (sb_cluster_key_index;
 * {hash tags} honoured). MOVED: the slot is re-pointed, a refresh is asked for and the
 * command is resent there; ASK: ASKING + the command on the named node, once; TRYAGAIN:
 * resent after 50, 100, 200… ms; CLUSTERDOWN, a script stopped by "non local key" (a
 * key it did not declare is mid-migration: it may have written, so it is not resent) or
 * a target that stays unreachable: the callback gets NULL, exactly as for a lost connection, after
 * at most SB_CLUSTER_TRIES sends. A command for a slot whose master is down fails at once with
 * SB_ERR_UNAVAILABLE (callers answer 503), while other slots keep working.
 * The facade is "up" once a map is loaded and one master connection is up (subscriber:
 * once subscribed).
 *
 * Contract for callers: nothing changes — scripts must touch one slot (the first key
 * decides the node), commands without a key go to any up master.
 * Threads and callbacks: as redis.h (the facade's loop thread; every accepted command's
 * callback runs exactly once).
 */
#ifndef SWITCHBOARD_REDIS_CLUSTER_H
#define SWITCHBOARD_REDIS_CLUSTER_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct event_base;
struct sb_redis;
struct sb_redis_script;

#define SB_CLUSTER_SLOTS 16384
#define SB_CLUSTER_REFRESH_MS 10000
#define SB_CLUSTER_TRIES 8
#define SB_CLUSTER_MAX_SEEDS 16
#define SB_CLUSTER_MAX_NODES 64

/* CRC16-CCITT (XMODEM), the cluster's key hash: "123456789" → 0x31C3. */
unsigned sb_cluster_crc16(const char *buf, size_t len);

/* The hash slot of |key|: of the text between the first '{' and the next '}' when that is
 * not empty, else of the whole key. */
unsigned sb_cluster_key_slot(const char *key, size_t len);

/* The argument that routes a command: EVAL/EVALSHA → the first key (3) when numkeys > 0;
 * commands without keys (PING, INFO, PUBLISH, CLUSTER, SCRIPT, TIME, ECHO, ...) → -1;
 * any other → 1. -1 also when argc is too short. */
int sb_cluster_key_index(int argc, const char **argv, const size_t *argvlen);

typedef enum {
    SB_CLUSTER_ERR_OTHER = 0,
    SB_CLUSTER_ERR_MOVED,
    SB_CLUSTER_ERR_ASK,
    SB_CLUSTER_ERR_TRYAGAIN,
    SB_CLUSTER_ERR_DOWN,    /* CLUSTERDOWN */
    SB_CLUSTER_ERR_NONLOCAL /* a script reached a key of a slot being moved away */
} sb_cluster_err;

/* Classifies an error reply; for MOVED and ASK fills |slot|, |host| and |port|
 * ("MOVED 3999 127.0.0.1:6381"; an empty host leaves |host| empty). */
sb_cluster_err sb_cluster_parse_error(const char *err, unsigned *slot, char *host, size_t hostlen,
                                      int *port);

typedef struct sb_cluster sb_cluster;

typedef struct sb_cluster_addr {
    char host[256];
    int port;
} sb_cluster_addr;

/* Starts routing for |facade| on |base| from |n| seeds (1..SB_CLUSTER_MAX_SEEDS) with the
 * credentials (either may be NULL). Connecting begins at once. */
sb_cluster *sb_cluster_new(struct sb_redis *facade, struct event_base *base,
                           const sb_cluster_addr *seeds, size_t n, const char *user,
                           const char *password);

/* Makes the cluster a subscriber of |channel| (call before the loop runs, as
 * sb_redis_subscribe). */
void sb_cluster_subscribe(sb_cluster *c, const char *channel,
                          void (*on_message)(const char *channel, const char *data, size_t len,
                                             void *arg),
                          void *arg);

/* Routes one command (see above). SB_OK: |cb| runs once, later; SB_ERR_UNAVAILABLE: the
 * slot's master is not connected (or no map yet); |cb| never runs. */
int sb_cluster_command_argv(sb_cluster *c, void (*cb)(redisReply *reply, void *arg), void *arg,
                            int argc, const char **argv, const size_t *argvlen);

/* The same for the script |s| (redis.h, Scripts): |argv| is "EVALSHA", its SHA, numkeys,
 * keys, arguments (routed by the first key); each node's connection sends it by SHA or
 * as EVAL as it has it loaded, and a redirected script follows the same rule there. */
int sb_cluster_script_argv(sb_cluster *c, const struct sb_redis_script *s,
                           void (*cb)(redisReply *reply, void *arg), void *arg, int argc,
                           const char **argv, const size_t *argvlen);

/* Applies sb_redis_set_timeouts to every connection, now and later. */
void sb_cluster_set_timeouts(sb_cluster *c, int connect_ms, int command_ms);

/* Node connections established so far. */
unsigned long sb_cluster_connects(const sb_cluster *c);

/* Closes every connection; pending callbacks run with NULL. NULL is a no-op. */
void sb_cluster_free(sb_cluster *c);

#endif
