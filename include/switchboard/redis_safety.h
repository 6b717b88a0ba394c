/*
 * redis_safety.h — "is this Redis safe for queues?" (SPEC §4.5).
 *
 * Queued messages live only in Redis, so a Redis that may evict keys (any
 * maxmemory-policy but noeviction: switchboard's keys carry TTLs, so even volatile-*
 * policies reach them) or that keeps nothing across a restart can lose them. This module
 * reads the settings that decide it — maxmemory-policy, appendonly, save — with CONFIG
 * GET, falling back to INFO where CONFIG is disabled (managed Redis often renames or
 * forbids it; INFO has no "save", so RDB-only setups then read "unknown"), and keeps one
 * process-wide verdict: a log line whenever it changes for the worse, the body of
 * /readyz and the gauge switchboard_redis_eviction_risk. It also remembers the server's
 * run_id and replication id, and logs when they change (a restart or a failover: the
 * registry replicas reload on that reconnect, see sync.h).
 *
 * The check runs at start and on every reconnect of the connection it is handed
 * (sync.c calls it on worker 0's command connection). It never blocks and never makes
 * the instance unready: a risky Redis is reported, not refused.
 */
#ifndef SWITCHBOARD_REDIS_SAFETY_H
#define SWITCHBOARD_REDIS_SAFETY_H

#include <jansson.h>

struct sb_redis;

/* Values of switchboard_redis_eviction_risk; the highest that applies wins. */
typedef enum {
    SB_REDIS_RISK_NONE = 0,      /* noeviction and AOF on: safe for queues */
    SB_REDIS_RISK_UNKNOWN = 1,   /* not checked yet, or a setting could not be read */
    SB_REDIS_RISK_SNAPSHOTS = 2, /* RDB snapshots only: a crash loses the last writes */
    SB_REDIS_RISK_VOLATILE = 3,  /* no persistence: a restart loses every message */
    SB_REDIS_RISK_EVICTION = 4   /* an eviction policy: memory pressure deletes messages */
} sb_redis_risk;

/* Sends the check's commands on |r| (which must be up; loop thread of |r|). The verdict
 * is updated when the replies arrive; nothing happens if |r| is down. */
void sb_redis_safety_check(struct sb_redis *r);

/* The current verdict (SB_REDIS_RISK_UNKNOWN before the first check). Any thread. */
int sb_redis_safety_risk(void);

/* The verdict as a new JSON object for /readyz: {"eviction_policy", "persistence"
 * ("aof", "rdb", "aof+rdb", "none" or "unknown"), "eviction_risk", "safe_for_queues",
 * and "warning" (a sentence) when not safe}. Caller owns the result. Any thread. */
json_t *sb_redis_safety_json(void);

/* Evaluates settings as read (NULL: unknown) into a risk value; |save| is the "save"
 * configuration ("" = no snapshots). Pure; exposed for tests. */
int sb_redis_safety_eval(const char *policy, const char *appendonly, const char *save);

#endif
