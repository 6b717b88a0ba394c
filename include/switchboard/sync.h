/*
 * sync.h — keeps this instance's registry and token replicas coherent with Redis.
 *
 * Writers (any instance) change a record in Redis and publish the new record, with a
 * global revision number, on one pub/sub channel (SB_SYNC_CHANNEL), in one atomic Lua
 * script. The sync module runs one subscriber connection (and one command connection
 * for snapshots) on worker 0's loop: on every (re)connect it subscribes first, then
 * loads a full snapshot; every message applies one change. The revision makes the order
 * irrelevant: a replica keeps the highest revision it has seen per key (deletions leave
 * a tombstone), so a snapshot older than a message it races with cannot roll the
 * message back. After a snapshot at revision S, entries it does not contain and whose
 * revision is <= S are dropped, and messages with a revision <= S are ignored (the
 * snapshot already reflects them). A snapshot is also reloaded every
 * SB_SYNC_RESYNC_S seconds, which heals anything pub/sub lost (e.g. FLUSHALL).
 *
 * Revisions are Redis' clock in microseconds, never behind it: each write takes
 * max(counter + 1, TIME), so a Redis that lost its data (restart without persistence,
 * FLUSHALL), was restored from an older dump, or failed over to a replica that missed
 * the last writes continues with revisions above every one the replicas hold (as long
 * as its clock is not behind the old one by more than the outage). That alone would
 * leave entries Redis no longer has (written after the dump) in the replicas, so a
 * replica does not trust its revisions across histories: whenever the subscriber
 * (re)connects — a restart, a restore and a failover all drop the connection — every
 * replica is rebased (sb_replica_rebase) and the snapshot loaded on the new connection
 * replaces it wholesale. Two more detectors cover a change without a reconnect: the
 * epoch (SB_SYNC_EPOCH_KEY, a random value created when missing and read every second:
 * a Redis that lost its data has none or another one) and a periodic snapshot whose
 * revision is below the highest one seen (logged "redis_rewound"); both rebase and
 * reload. A rebase also forgets the acknowledgements the barrier remembered.
 *
 * Write barrier: pub/sub alone would let a client that registered on instance A reach
 * instance B before B applied the change. So every instance acknowledges each change it
 * applies ({"type":"ack","instance","rev"} on the same channel) and announces itself in
 * the SB_SYNC_INSTANCES_KEY sorted set every second (and before it reports ready); a
 * writer reads that set after its write and answers its client only after every other
 * live instance acknowledged the revision (sb_sync_barrier), or after
 * SB_SYNC_BARRIER_MS when one does not (logged, naming the laggards). A register, mint
 * or revoke answered by one switchboard is therefore in force on all of them.
 *
 * While the subscriber is down the replicas keep serving what they last knew (pushes
 * continue without Redis) and /readyz reports not ready.
 *
 * The Lua building blocks every writer script shares (revision bump, publish) are here
 * too, so registry.c and auth.c publish in exactly one format:
 *   {"type":"endpoint"|"token","op":"set"|"del","key":K,"rev":N,"record":{...}}
 * ("record" only for "set"). Key layout: proto/redis-schema.md.
 */
#ifndef SWITCHBOARD_SYNC_H
#define SWITCHBOARD_SYNC_H

#include <jansson.h>
#include <stddef.h>

struct event_base;

#define SB_SYNC_CHANNEL "sb:sync"
/* Every registry, token and global index key carries the one fixed hash tag {sb}, so on a
 * Redis Cluster they share one slot and every script touches exactly one slot (layout 2,
 * proto/redis-schema.md). Per-workspace queue and record keys carry {ws} instead. */
#define SB_SYNC_TAG "{sb}"
#define SB_SYNC_SCHEMA_KEY "sb:{sb}:schema" /* STRING: the key layout version ("3") */
#define SB_SYNC_SCHEMA_VERSION 3
#define SB_SYNC_REV_KEY "sb:{sb}:rev"             /* STRING: the global revision counter */
#define SB_SYNC_ENDPOINTS_KEY "sb:{sb}:endpoints" /* SET: workspace ids with an endpoint */
#define SB_SYNC_TOKENS_KEY "sb:{sb}:tokens"       /* HASH: token hash -> token record */
#define SB_SYNC_INSTANCES_KEY "sb:{sb}:instances" /* ZSET: instance id -> last seen (ms) */
/* HASH: the registered endpoints, fields "<ws>:<name>" (config, secret, lease_s, ...). A
 * workspace's own keys all carry its {ws} tag; its registry entry is fields of this one
 * {sb} hash, not a key of its own. */
#define SB_SYNC_EP_KEY "sb:{sb}:ep"
#define SB_SYNC_WS_TOKENS_KEY "sb:{sb}:wstok" /* HASH "<ws>:<token id>" -> token hash */
/* The other {sb} keys, named here so that every key of the global slot is in one place:
 * the queue index (queue.h SB_QUEUE_ACTIVE_KEY) and the recent fallbacks (record.h). */
#define SB_SYNC_QUEUES_KEY "sb:{sb}:queues"
#define SB_SYNC_FALLBACKS_KEY "sb:{sb}:fallbacks"
#define SB_SYNC_EPOCH_KEY "sb:{sb}:epoch" /* STRING: random id of this data's history */
#define SB_SYNC_RESYNC_S 60
#define SB_SYNC_BARRIER_MS 1000  /* longest a writer waits for other instances */
#define SB_SYNC_PEER_TTL_MS 5000 /* an instance unseen this long is not waited for */

/* Lua functions for writer scripts (prepend to a script body):
 *   sb_rev_current(revkey)  the current revision, creating the counter from TIME
 *   sb_bump(revkey)         the next revision (INCR)
 *   sb_num(n)               an integer Lua number as a decimal string (no exponent)
 *   sb_publish(type, op, key, rev, record_json_or_nil)
 *   sb_ep_record(hashkey)   an endpoint hash as one JSON record string, or nil
 */
extern const char sb_sync_lua_prelude[];

struct sb_redis;
typedef struct redisReply redisReply;

/* Runs the script sb_sync_lua_prelude + |body| on |r| with |nkeys| keys followed by the
 * other arguments, |nargs| strings in all in |args|: by SHA, its text sent once per
 * connection (redis.h, Scripts), so |body| must be a static text that never changes (a
 * string literal or static array: its address names the script). Returns SB_OK (|cb|
 * runs once, as for sb_redis_command) or SB_ERR_UNAVAILABLE (|cb| never runs). */
int sb_sync_eval(struct sb_redis *r, const char *body, int nkeys, int nargs,
                 const char *const *args, void (*cb)(redisReply *reply, void *arg), void *arg);
/* The same for sb_sync_lua_prelude + |lib| + |body|: |lib| (NULL: none) is another static
 * text, functions a caller adds for the body to call (see queue.h, sb_queue_msg.after_lua). */
int sb_sync_eval_lib(struct sb_redis *r, const char *lib, const char *body, int nkeys, int nargs,
                     const char *const *args, void (*cb)(redisReply *reply, void *arg), void *arg);

/* A replicated table: how the sync loop hands changes to the module that keeps the
 * replica (registry.c for endpoints, auth.c for tokens). The modules register themselves
 * from their init functions, so this module never names them. Every function runs on
 * worker 0's loop. |apply_set| gets the stored record, |apply_del| its key (workspace id,
 * token hash), |apply_snapshot| the array of every record at revision |rev|. */
typedef struct sb_sync_table {
    void (*apply_set)(const json_t *rec, long long rev);
    void (*apply_del)(const char *key, long long rev);
    void (*apply_snapshot)(const json_t *records, long long rev);
} sb_sync_table;

typedef enum { SB_SYNC_ENDPOINTS = 0, SB_SYNC_TOKENS, SB_SYNC__TABLES } sb_sync_table_id;

/* Registers the keeper of table |id| (|t| is copied; NULL unregisters). Changes and
 * snapshots of a table nobody registered are ignored. Call before sb_sync_start. */
void sb_sync_register(sb_sync_table_id id, const sb_sync_table *t);

/* Starts the subscriber and snapshot loader on |base| (worker 0's loop). Returns SB_OK,
 * SB_ERR_INVALID for a bad URL, or SB_ERR when already started. */
int sb_sync_start(struct event_base *base, const char *redis_url);

/* Brings a single Redis written by an older release to this key layout (schema version
 * SB_SYNC_SCHEMA_VERSION), synchronously, once; a no-op when it is there already and on a
 * Redis Cluster. Call at start, before any worker runs, with every older instance stopped
 * (layout 1 and 2 instances cannot share one Redis). SB_OK, or an error with |err|. */
int sb_sync_migrate(const char *redis_url, int timeout_ms, char *err, size_t errlen);
/* Stops and frees both connections (call on the loop's thread, or once it has stopped).
 * Safe when not started. The replicas keep their contents. */
void sb_sync_stop(void);

/* Runs |fn| every |seconds| (>= 1) on worker 0's loop with the sync module's command
 * connection, while that connection is up (e.g. the queue gauges, record.h). One job per
 * process; a later call replaces it; NULL stops it. Call before sb_sync_start or on
 * worker 0's thread. |fn| must not block and must not keep |cmd|. */
void sb_sync_every(int seconds, void (*fn)(struct sb_redis *cmd));

/* 1 once a snapshot has been applied on the current subscriber connection. Any thread. */
int sb_sync_ready(void);

/* 1 once this instance has been ready at least once since sb_sync_start (its replicas
 * hold a snapshot, and writers wait for it); stays 1 while Redis is away later, because
 * the replicas keep serving what they last knew. Before that, nothing this instance
 * could say about an endpoint or a workspace token is known: A2A requests get 503 +
 * Retry-After and unknown tokens 503 rather than no_endpoint or 401 (SPEC §1). Any
 * thread. */
int sb_sync_loaded(void);

/* This instance's id in SB_SYNC_INSTANCES_KEY ("i_" + 16 hex), "" before sb_sync_start. */
const char *sb_sync_instance_id(void);

/* Calls |done|(|arg|) on |r|'s loop (the writer's own connection, after its write at
 * revision |rev| returned) once every other live instance has acknowledged applying
 * |rev|, or after SB_SYNC_BARRIER_MS. The live instances are read from Redis first (one
 * round trip), so an instance that reported ready before the write is always waited
 * for. When Redis cannot be asked, |done| runs at once (logged). Callable from any
 * worker thread; |done| may run before this returns. */
void sb_sync_barrier(struct sb_redis *r, long long rev, void (*done)(void *arg), void *arg);

/* Applies one sync-channel message (the JSON text published by a writer script). Used
 * by the subscriber; exposed for tests. SB_OK, or SB_ERR_INVALID (ignored message). */
int sb_sync_apply_message(const char *data, size_t len);

/* ---- sb_replica: the versioned table both replicas are built on ----
 *
 * Keys are strings; values are opaque pointers released with the |release| function
 * given at creation. Every entry carries the revision that produced it; a NULL value is
 * a tombstone. Thread-safe: one rwlock; readers see values only inside sb_replica_read
 * callbacks (or take their own references there). */
typedef struct sb_replica sb_replica;

sb_replica *sb_replica_new(void (*release)(void *value));
/* Releases every value and the table. NULL is a no-op. */
void sb_replica_free(sb_replica *rp);

/* Sets |key| to |value| (NULL: delete) at revision |rev|. Takes ownership of |value|.
 * Returns 1 when applied, 0 when stale (|rev| <= the key's revision or <= the last
 * snapshot's): |value| is then released. */
int sb_replica_apply(sb_replica *rp, const char *key, void *value, long long rev);

/* Applies a snapshot at revision |rev|: |n| entries |keys|[i] → |values|[i] (ownership
 * of every value taken). Entries newer than |rev| survive; entries absent from the
 * snapshot with a revision <= |rev| are dropped; later messages <= |rev| are ignored.
 * A |rev| below the previous snapshot's replaces the whole table. */
void sb_replica_apply_snapshot(sb_replica *rp, size_t n, const char *const *keys, void **values,
                               long long rev);

/* Calls |fn|(value, |arg|) under the read lock when |key| has a live value; returns 1
 * then, else 0. |fn| must not call back into this replica. */
int sb_replica_read(sb_replica *rp, const char *key, void (*fn)(void *value, void *arg), void *arg);

/* Calls |fn| for every live value under the read lock (same rule as sb_replica_read). */
void sb_replica_foreach(sb_replica *rp, void (*fn)(const char *key, void *value, void *arg),
                        void *arg);

/* Live entries (tombstones excluded). */
size_t sb_replica_count(sb_replica *rp);

/* The revision of the last applied snapshot (0 before any). */
long long sb_replica_floor(sb_replica *rp);

/* Forgets every entry's revision and the snapshot floor, keeping the values: the next
 * snapshot then replaces the table wholesale, while changes applied in between (newer
 * than that snapshot) survive it. The sync loop rebases every replica when Redis may be
 * another history (a reconnect, a changed epoch, a revision that went back). */
void sb_replica_rebase(sb_replica *rp);

#endif
