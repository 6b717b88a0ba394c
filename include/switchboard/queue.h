/*
 * queue.h — the durable per-workspace poll queue in Redis (SPEC §4.3, §4.4).
 *
 * A message that cannot be pushed is appended here before its caller is answered; inbox
 * consumers and the recovery drain lease it, ack it or nack it; a lease that runs out
 * makes it available again with delivery_count raised; past --max-deliveries or past its
 * expiry it becomes a dead letter. Every operation is one Lua script (by SHA through
 * sb_sync_eval, so it shares the sync prelude) on the caller's Redis connection: one
 * round trip, atomic, never blocking; appends are batched, one script per workspace for
 * the appends of one loop turn (sb_queue_append). Scripts read Redis' own clock (TIME), so lease
 * deadlines and expiries mean the same on every instance whatever their clocks say.
 *
 * Layout (proto/redis-schema.md has the full table): per workspace, under the hash tag
 * {ws}: a ready ZSET (entry id → sequence, so FIFO), a leased ZSET (entry id → lease
 * deadline), an expiry ZSET (entry id → expires_at), a dedup HASH ((source, messageId) →
 * entry id), a capped dead-letter LIST, a sequence counter, a stats HASH, and one HASH
 * per message (sb:{ws}:msg:<entry id>) that is at once the queue entry, the task
 * switchboard issued for it, and the delivery record's home. Plus one global SET of
 * workspaces with queued or leased messages. Lease expiry and message expiry are applied
 * lazily, at the start of every script that reads the queue (bounded work per call), so
 * nothing needs a timer in Redis.
 *
 * Ids: the entry id is "q_" + 24 hex; the task id switchboard issues for it is
 * "sbtask_" + the same 24 hex, so either finds the other without a lookup.
 *
 * Wake-ups: the append (when the ready set was empty before it) and the nack scripts
 * PUBLISH the workspace id on SB_QUEUE_NOTIFY_CHANNEL in the same script, so long-poll
 * waiters (inbox.h) learn about new work without polling: a waiter only waits after its
 * lease found the ready set empty, and the first message into an empty set publishes.
 *
 * Callbacks run exactly once, on the connection's loop, unless the call returned an
 * error (then never). Records passed to them are borrowed for the call.
 *
 * Never: hold a Redis connection per waiter, or send a blocking command (the connection's
 * command watchdog would drop it).
 */
#ifndef SWITCHBOARD_QUEUE_H
#define SWITCHBOARD_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "switchboard/a2a.h"
#include "switchboard/reason.h"
#include "switchboard/sync.h"

struct sb_redis;

#define SB_QUEUE_ID_PREFIX "q_"
#define SB_QUEUE_TASK_PREFIX "sbtask_"
#define SB_QUEUE_CONTEXT_PREFIX "sbctx_"
#define SB_QUEUE_ID_HEX 24
#define SB_QUEUE_NOTIFY_CHANNEL "sb:notify"
/* ZSET: workspace → Redis ms of its last append or requeue, for the overview and the
 * gauges. Kept apart from the per-workspace scripts (one hash slot each): see
 * proto/redis-schema.md "The queue index". */
#define SB_QUEUE_ACTIVE_KEY SB_SYNC_QUEUES_KEY
#define SB_QUEUE_DEAD_MAX 1000   /* dead letters kept per workspace (newest) */
#define SB_QUEUE_LEASE_MAX 100   /* messages per lease or peek call */
#define SB_QUEUE_ATTEMPTS_MAX 50 /* attempts kept per message (delivery record) */
/* The delivery record hash of (workspace, messageId): sender → record (record.h), or →
 * the entry id of a queued message when another sender holds that messageId in the
 * queued message's link bucket (below), and every queued link of key layout 2. */
#define SB_RECORD_KEY_FMT "sb:{%s}:dr:%s"
/* A queued message's record link (layout 3): a field of the workspace's bucket hash
 * sb:{ws}:qb:<enqueue ms div this>, messageId → sender "\n" entry id; the live buckets
 * are listed in the ZSET sb:{ws}:qbx (bucket → its expiry). One HSET per append batch
 * instead of a key and an expiry per message (proto/redis-schema.md). */
#define SB_QUEUE_LINK_BUCKET_MS 3600000

typedef enum {
    SB_QSTATE_QUEUED = 0, /* waiting in the ready set */
    SB_QSTATE_LEASED,     /* leased to a consumer (or the drain) until lease_until */
    SB_QSTATE_ACKED,
    SB_QSTATE_DEAD,
    SB_QSTATE_CANCELED,
    SB_QSTATE_PURGED /* a dead letter purged by an operator (queue_dead.h) */
} sb_queue_state;

/* Settings every script needs (from the config). */
typedef struct sb_queue_opts {
    int max_deliveries; /* --max-deliveries */
    int64_t retain_ms;  /* how long a finished message's record is kept (--queue-ttl-s) */
} sb_queue_opts;

struct sb_config;

/* The settings of |cfg|: --max-deliveries, and --queue-ttl-s as the retention. */
sb_queue_opts sb_queue_opts_of(const struct sb_config *cfg);

/* A message to append. Strings are borrowed for the call; NULL means "none" for
 * context_id, a2a_version, user and attempts. */
#define SB_QUEUE_AFTER_MAX 24

typedef struct sb_queue_msg {
    const char *ws;
    const char *message_id;
    const char *context_id; /* NULL: "sbctx_" + the entry's hex */
    const char *kind;       /* "chat" | "delegation" */
    const char *source;
    const char *method;
    sb_a2a_version version;
    sb_reason reason;
    const char *detail;
    int attempted;
    const char *a2a_version; /* the caller's A2A-Version header, replayed by the drain */
    const char *user;        /* X-Switchboard-User of a chat, replayed by the drain */
    const char *attempts;    /* JSON array text of the failed push's one attempt (SPEC
                              * §5.2), or NULL/"[]" for none: counted as one attempt */
    const char *request;     /* the original JSON-RPC request, exactly as received */
    size_t request_len;
    int64_t ttl_ms; /* time to expiry from now, > 0 */
    /* Optional: more work on the workspace's slot in the same script (one round trip per
     * batch of fallbacks, e.g. record.c's counters). |after_lua| (NULL: none) is a static
     * text that never changes (its address names the script, see sync.h) defining
     * `local function sb_queue_after(KEYS, ARGV)`. Appends are sent in batches (see
     * sb_queue_append); the script calls the hook once per batch, whether it queued the
     * messages or found them duplicates, with KEYS = the first |after_nkeys| of
     * |after_argv| (keys of the workspace's hash slot; only appends with the same hook and
     * the same keys share a batch) and ARGV = the other |after_nargs| arguments of every
     * message of the batch, one message after the other, in order. */
    const char *after_lua;
    const char *const *after_argv; /* at most SB_QUEUE_AFTER_MAX strings */
    int after_nkeys, after_nargs;  /* |after_argv| holds after_nkeys + after_nargs strings */
    /* Optional: called on the loop right before the batch holding this message is sent
     * (e.g. record.c sends its waiting notes first, so counters keep their order). Only
     * appends with the same function share a batch. */
    void (*before_send)(struct sb_redis *r);
} sb_queue_msg;

/* One stored message as a script returned it. Every string is owned by the record
 * (sb_queue_record_clear) and NULL when absent. */
typedef struct sb_queue_record {
    char *id;
    char *task_id;
    char *message_id;
    char *context_id;
    char *kind;
    char *source;
    char *method;
    sb_a2a_version version;
    sb_queue_state state;
    sb_reason reason;
    char *detail;
    int attempted;
    int delivery_count;
    int64_t enqueued_at_ms;
    int64_t expires_at_ms;
    int64_t updated_at_ms;
    int64_t lease_until_ms; /* 0 unless leased */
    char *dead_reason;      /* "max_deliveries" | "expired" when dead */
    char *result;           /* ack result (JSON text) */
    char *error;            /* the agent's JSON-RPC error (JSON text), from a drained push */
    char *a2a_version;
    char *user;
    char *attempts; /* JSON array text of attempts (SPEC §5.2; times as "at_ms" or "at") */
    char *request;  /* lease and peek only: the original request (JSON text) */
    size_t request_len;
    int duplicate; /* append only: an earlier copy was still queued; nothing was added */
} sb_queue_record;

/* What a lease or peek returned: |items| in FIFO order. The callback that receives it may
 * take an item's strings (its own pointers set to NULL): the batch frees what is left. */
typedef struct sb_queue_batch {
    sb_queue_record *items;
    size_t n;
    long long ready;             /* messages still available after the call */
    long long leased;            /* peek: messages under lease */
    long long next_lease_end_ms; /* lease: ms until the earliest lease ends, -1 when none */
    int64_t now_ms;              /* Redis' clock when the script ran */
} sb_queue_batch;

/* Outcome codes besides SB_OK and SB_ERR_UNAVAILABLE (connection lost) / SB_ERR
 * (a Redis error or an unreadable reply, logged):
 *   SB_ERR_NOTFOUND   no such message (or its record expired)
 *   SB_ERR_FORBIDDEN  the message's state does not allow the operation; |rec| shows it */
typedef void (*sb_queue_record_fn)(int err, const sb_queue_record *rec, void *arg);
typedef void (*sb_queue_batch_fn)(int err, const sb_queue_batch *batch, void *arg);

/* Appends |m|. The callback gets the stored record (rec->duplicate set when an earlier
 * copy with the same (source, messageId) is still queued or leased — in Redis, or an
 * earlier message of the same batch: that copy's record is returned and nothing is
 * added). Returns SB_OK, or SB_ERR_UNAVAILABLE when |r| is not connected (the callback
 * never runs).
 *
 * Batched (queue_append.c): the message is copied and sent at the end of the current
 * turn of |r|'s loop, in one script call with the other appends of the same workspace
 * made on this thread during the turn, in order (at most 64 a call); no timer, so a lone
 * append goes out as soon as it would have; a batch of 16 goes at once, before the turn
 * ends. While three batches of the workspace are unanswered on |r|, the next one waits for
 * an answer (and takes what arrives meanwhile). When the
 * connection is lost before the batch is sent, the callback gets SB_ERR_UNAVAILABLE from the flush.
 * Call on |r|'s loop thread; a thread that stops its loop calls sb_queue_append_flush first. */
int sb_queue_append(struct sb_redis *r, const sb_queue_opts *o, const sb_queue_msg *m,
                    sb_queue_record_fn cb, void *arg);

/* Sends this thread's appends waiting for the end of the loop turn now (their callbacks
 * run from the replies as usual), and frees the turn's flush event: for a thread leaving
 * its loop, and for tests. */
void sb_queue_append_flush(void);

/* Leases up to |max| (1..SB_QUEUE_LEASE_MAX) messages of |ws|, oldest first, for
 * |lease_ms|; each one's delivery_count is raised. Expired leases and messages are
 * settled first. Returns as sb_queue_append. */
int sb_queue_lease(struct sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                   int64_t lease_ms, sb_queue_batch_fn cb, void *arg);

/* sb_queue_lease for switchboard's own redelivery (SPEC §4.4): the lease neither raises
 * delivery_count (these retries do not count against --max-deliveries) nor notes a
 * "leased" attempt (the push notes its own). Its records carry what a push needs — id,
 * task_id, message_id, kind, source, method, version, a2a_version, user, request — and
 * state, lease_until_ms and updated_at_ms; every other field is absent (NULL, 0). One
 * script leases, then each message is read with a plain HMGET (queue_redeliver.c): a
 * message acked or dropped by someone else in between is left out of the batch. Returns
 * as above. */
int sb_queue_redeliver_lease(struct sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                             int64_t lease_ms, sb_queue_batch_fn cb, void *arg);

/* Releases a message leased by sb_queue_redeliver_lease: back to ready at its place
 * (or dead "expired" when its expiry passed meanwhile), without a "nacked" attempt or
 * count. With |lease_until_ms| > 0 (the record's, from that lease) only while the
 * message is still under that very lease: one leased again since (by anyone) is left
 * alone, SB_ERR_FORBIDDEN; 0 releases any lease. Returns as sb_queue_nack. */
int sb_queue_redeliver_release(struct sb_redis *r, const sb_queue_opts *o, const char *ws,
                               const char *id, int64_t lease_until_ms, sb_queue_record_fn cb,
                               void *arg);

/* One redelivered message the agent took, for sb_queue_redeliver_ack. Borrowed. */
typedef struct sb_queue_drained {
    const char *id;
    const char *attempt; /* the push's attempt, one JSON object text (SPEC §5.2) */
    const char *result;  /* the agent's JSON-RPC result (JSON text), or NULL */
    const char *error;   /* the agent's JSON-RPC error (JSON text), or NULL */
    /* the lease's sender and messageId (its dedup field), or NULL: the ack reads it */
    const char *source, *message_id;
} sb_queue_drained;

/* |codes|[i] for |items|[i]: 0 acked now, 2 acked before (its attempt is still added:
 * the agent did get it again), 1 its state forbids it (dead, canceled), -1 unknown (its
 * record is gone); NULL unless |err| is SB_OK. */
typedef void (*sb_queue_acks_fn)(int err, const int *codes, size_t n, void *arg);

/* Acks |n| (1..SB_QUEUE_LEASE_MAX) messages leased by sb_queue_redeliver_lease in one
 * script call: each one, in order, gets its attempt appended (as sb_queue_add_attempt
 * without a signature) and is acked as sb_queue_ack with |drained| 1 would. Returns as
 * sb_queue_append (SB_ERR_UNAVAILABLE also for |n| out of range). */
int sb_queue_redeliver_ack(struct sb_redis *r, const sb_queue_opts *o, const char *ws,
                           const sb_queue_drained *items, size_t n, sb_queue_acks_fn cb, void *arg);

/* The first |max| available messages without leasing them. Returns as above. */
int sb_queue_peek(struct sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                  sb_queue_batch_fn cb, void *arg);

/* Acks entry |id| (queued or leased): it leaves the queue for good. |result| and |error|
 * (JSON text, NULL for none) are kept for tasks/get; |drained| 1 counts it as drained.
 * Acking an acked message succeeds again (the first result stays); a dead or canceled
 * one gives SB_ERR_FORBIDDEN. Returns as above. */
int sb_queue_ack(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                 const char *result, const char *error, int drained, sb_queue_record_fn cb,
                 void *arg);

/* Releases the lease on |id| now: the message is available again, or dead (max_deliveries
 * or expired) when it has no delivery left. |uncount| 1 takes back the delivery the lease
 * counted (the drain's push never reached the agent). A queued message is left as it is
 * (SB_OK); acked, dead or canceled ones give SB_ERR_FORBIDDEN. Returns as above. */
int sb_queue_nack(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                  int uncount, sb_queue_record_fn cb, void *arg);

/* The record of entry |id| (for tasks/get). Returns as above. */
int sb_queue_get(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                 sb_queue_record_fn cb, void *arg);

/* Cancels entry |id| while it is queued (state canceled; canceling again succeeds);
 * leased, acked or dead ones give SB_ERR_FORBIDDEN. Returns as above. */
int sb_queue_cancel(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                    sb_queue_record_fn cb, void *arg);

/* Appends |attempt| (one JSON object text, SPEC §5.2 attempt) to entry |id|'s attempts
 * (at most SB_QUEUE_ATTEMPTS_MAX are kept). When |sig| (NULL or "": never) equals the
 * signature of the last attempt this function added and nothing was noted since, the
 * last attempt is replaced by |attempt| with "count" (consecutive identical attempts),
 * "first_at" and "last_at" (|at_json|, the attempt's time as a JSON string) added: a run
 * of identical failures reads as one entry. Used by the redelivery for each push.
 * Returns as sb_queue_get; SB_ERR_NOTFOUND for an unknown entry. */
int sb_queue_add_attempt(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                         const char *attempt, const char *sig, const char *at_json,
                         sb_queue_record_fn cb, void *arg);

/* One sender's delivery record of a messageId: either the JSON text of a pushed
 * message's record (|record_json|) or the queued message's record (|rec|, with attempts).
 * Everything is borrowed for the callback. */
typedef struct sb_queue_lookup_item {
    const char *source;
    const char *record_json;
    const sb_queue_record *rec;
} sb_queue_lookup_item;
typedef void (*sb_queue_lookup_fn)(int err, const sb_queue_lookup_item *items, size_t n, void *arg);

/* Every record kept for messageId |message_id| sent to |ws| (one per sender; |n| 0 when
 * none), queue maintenance applied first. Returns as sb_queue_append. */
int sb_queue_lookup(struct sb_redis *r, const sb_queue_opts *o, const char *ws,
                    const char *message_id, sb_queue_lookup_fn cb, void *arg);

/* Frees what |rec| owns and zeroes it. */
void sb_queue_record_clear(sb_queue_record *rec);

/* "queued", "leased", "acked", "dead", "canceled", "purged". */
const char *sb_queue_state_name(sb_queue_state s);

/* 1 if |id| is an entry id ("q_" + 24 lower-case hex). */
int sb_queue_valid_id(const char *id);

/* The entry id for task id |task_id| ("sbtask_" + 24 hex) into |out| (>= 32 bytes).
 * SB_OK, or SB_ERR_INVALID when |task_id| is not one switchboard issues. */
int sb_queue_id_from_task(const char *task_id, char out[32]);

/* The JSON text of one leased or peeked message, SPEC §4.4: {"id","message_id","task_id",
 * "kind","source","reason","attempted","delivery_count","enqueued_at","expires_at",
 * "request"}, the request spliced in byte for byte. Appended to |out|. */
struct evbuffer;
void sb_queue_record_write_json(const sb_queue_record *rec, struct evbuffer *out);

/* The same with the members of |extra| (a JSON object, taken over; NULL for none) added
 * before "request". */
typedef struct json_t json_t;
void sb_queue_record_write_json_extra(const sb_queue_record *rec, json_t *extra,
                                      struct evbuffer *out);

#endif
