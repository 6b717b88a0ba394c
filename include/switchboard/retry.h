/*
 * retry.h — what switchboard's own redelivery keeps in Redis (SPEC §4.4): the due-time
 * index, the scheduler lease, each workspace's driver lease and retry state.
 *
 * The due-time index is ONE global sorted set (SB_RETRY_DUE_KEY): workspace id → the
 * epoch ms its queue should next be tried. A workspace is in it only while it has (or
 * may have) queued messages for a push-mode agent, so a workspace with nothing queued
 * costs no Redis command at all. The set also holds one member that is not a workspace:
 * "!scheduler:<instance id>" scored with that instance's lease expiry, so whichever
 * instance holds it scans the set (bounded ZRANGEBYSCORE) and the lease passes to
 * another instance when its holder dies (it simply expires). Workspace ids never start
 * with '!'. Every command on this key is a single-key command (ZADD, ZREM,
 * ZRANGEBYSCORE) or a script that touches only this key, so it stays clear of the
 * per-workspace scripts (Redis Cluster).
 *
 * Per workspace, under its hash tag: sb:{ws}:rd:owner (STRING, the instance id driving
 * its redelivery, PX SB_RETRY_OWNER_TTL_MS, renewed while the drain runs) and sb:{ws}:rd
 * (HASH: backoff_ms, next_at_ms, last_at_ms, last_outcome, last_detail, tries) written
 * by one script on that key only.
 *
 * Times in this index are the instances' wall clocks (they must agree roughly, as with
 * NTP; a skew only shifts retries by as much).
 *
 * The after-push check: a lower floor cannot call the drain (delivery floor), so the
 * drain registers its kick function here (sb_retry_set_kick) and deliver.c calls
 * sb_retry_after_push(), which asks Redis at most once a second per workspace and
 * thread whether the workspace has queued messages, and kicks the drain when it has.
 *
 * Threads: every function runs on the loop thread of the sb_redis it is given;
 * callbacks run there, exactly once, unless the call returned SB_ERR_UNAVAILABLE.
 */
#ifndef SWITCHBOARD_RETRY_H
#define SWITCHBOARD_RETRY_H

#include <stddef.h>
#include <stdint.h>

struct sb_redis;
struct sb_worker;

#define SB_RETRY_DUE_KEY "sb:{sb}:redeliver"
#define SB_RETRY_FIRST_MS 1000      /* first retry after a fallback */
#define SB_RETRY_OWNER_TTL_MS 15000 /* a driver's lease; renewed every third of it */
#define SB_RETRY_SCAN_MAX 64        /* workspaces one scan takes */

/* A message of push-mode |ws| was queued: its queue is due SB_RETRY_FIRST_MS from now
 * unless it is due already (ZADD NX: a retry schedule in force keeps its back-off).
 * Fire-and-forget. */
void sb_retry_due_soon(struct sb_redis *r, const char *ws);

/* |ws| is due at |at_ms| unless it is in the index already (ZADD NX). Fire-and-forget. */
void sb_retry_due_nx(struct sb_redis *r, const char *ws, int64_t at_ms);

/* |ws| is due at |at_ms| (ZADD, replacing any time). Fire-and-forget. */
void sb_retry_due_at(struct sb_redis *r, const char *ws, int64_t at_ms);

/* Takes |ws| out of the index (ZREM); |cb|(|err|, |arg|) runs once the reply is in
 * (SB_OK, SB_ERR). Returns SB_OK or SB_ERR_UNAVAILABLE (|cb| never runs). */
int sb_retry_due_clear(struct sb_redis *r, const char *ws, void (*cb)(int err, void *arg),
                       void *arg);

/* The workspaces due at or before |now_ms|, at most SB_RETRY_SCAN_MAX, earliest first
 * (the scheduler member is left out). |ids| is borrowed for the callback; |err| SB_OK or
 * SB_ERR. Returns SB_OK or SB_ERR_UNAVAILABLE. */
typedef void (*sb_retry_scan_fn)(int err, const char *const *ids, size_t n, void *arg);
int sb_retry_due_scan(struct sb_redis *r, int64_t now_ms, sb_retry_scan_fn cb, void *arg);

/* Takes or renews the scheduler lease for |instance| until |now_ms| + |ttl_ms| unless
 * another instance holds it unexpired. |cb|(1 held by us | 0 not | -1 error, |arg|).
 * Returns SB_OK or SB_ERR_UNAVAILABLE. */
int sb_retry_leader(struct sb_redis *r, const char *instance, int64_t now_ms, int ttl_ms,
                    void (*cb)(int held, void *arg), void *arg);

/* Gives the scheduler lease up (a graceful stop). Fire-and-forget. */
void sb_retry_leader_release(struct sb_redis *r, const char *instance);

/* Takes or renews the driver lease of |ws| for |instance| (SB_RETRY_OWNER_TTL_MS).
 * |cb|(1 ours | 0 another instance drives it | -1 error, |arg|). Returns as above. */
int sb_retry_own(struct sb_redis *r, const char *ws, const char *instance,
                 void (*cb)(int owned, void *arg), void *arg);

/* Releases the driver lease of |ws| if |instance| holds it. Fire-and-forget. */
void sb_retry_disown(struct sb_redis *r, const char *ws, const char *instance);

/* The outcome of one redelivery run, for sb:{ws}:rd and the next due time. */
typedef struct sb_retry_outcome {
    int ok;              /* 1: the queue was emptied (back-off resets) */
    const char *outcome; /* "delivered", a reason name, or "refused: <reason>" */
    const char *detail;  /* one line, may be NULL */
    int64_t now_ms;
    int64_t not_before_ms; /* the next try not before this (the circuit's probe time), 0 */
    int64_t max_ms;        /* --retry-max-s in ms */
    int jitter_permille;   /* 0..999: the delay is scaled by 0.75 + jitter/2000 */
    int64_t retain_ms;     /* how long sb:{ws}:rd is kept after this write */
} sb_retry_outcome;

/* Writes |o| into sb:{ws}:rd and, for a failure, doubles the back-off (2 s, 4 s, …, up
 * to max_ms, jittered ±25 %); |cb|(|err|, next_at_ms (0 when ok), |arg|). Returns as
 * above. The caller then puts next_at_ms into the index (sb_retry_due_at). */
int sb_retry_settle(struct sb_redis *r, const char *ws, const sb_retry_outcome *o,
                    void (*cb)(int err, int64_t next_at_ms, void *arg), void *arg);

/* Starts a redelivery of |ws| on |w| (the drain registers itself). */
typedef void (*sb_retry_kick_fn)(struct sb_worker *w, const char *ws);
void sb_retry_set_kick(sb_retry_kick_fn fn);

/* A push to |ws| was delivered on |w|: when |ws| has queued messages (asked at most
 * once a second per workspace on this thread), the registered kick runs. Fire-and-
 * forget; call on |w|'s loop. */
void sb_retry_after_push(struct sb_worker *w, const char *ws);

/* Frees this thread's memory of the after-push check; call on each worker thread as it
 * exits. */
void sb_retry_thread_clear(void);

#endif
