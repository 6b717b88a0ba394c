/*
 * registry.h — registered agent endpoints (SPEC §4.1).
 *
 * Records live in Redis (see proto/redis-schema.md) and in an in-process replica that
 * every worker reads without a Redis round trip; the replica is kept coherent across
 * instances by the sync channel (sync.h). Readers get an immutable, reference-counted
 * sb_endpoint: a concurrent re-register publishes a new object and never changes one a
 * reader holds.
 *
 * Writes (register, heartbeat, delete) are one Lua script each on the caller's Redis
 * connection; the script changes Redis, bumps the revision and publishes the record,
 * and the writer applies the result to this instance's replica before its callback
 * runs — the instance that wrote sees its own write at once.
 *
 * The stored record (JSON, what sb_registry_apply_set takes):
 *   {"workspace_id","url"|null,"delivery_mode":"push"|"poll","protocol":"auto"|"http1"|"h2c",
 *    "agent_card"|null,"lease_s","max_concurrency","ordered"?,"registered_at_ms",
 *    "inbound_secret","lease_expires_at_ms","active_tasks","heartbeat_at_ms","probe"?}
 * with 0 meaning "none" for lease_s, max_concurrency and every *_ms ("ordered" absent:
 * false, as written before it existed).
 */
#ifndef SWITCHBOARD_REGISTRY_H
#define SWITCHBOARD_REGISTRY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/netaddr.h"
#include "switchboard/upstream.h" /* sb_upstream_proto */

struct sb_redis;

typedef enum { SB_MODE_PUSH = 0, SB_MODE_POLL } sb_delivery_mode;

typedef struct sb_endpoint {
    int refs; /* atomic */
    long long rev;
    char *workspace_id;
    char *url_str; /* as registered, NULL in poll mode without url */
    sb_url url;    /* parsed url_str (zeroed when none) */
    sb_delivery_mode mode;
    sb_upstream_proto protocol;
    char *inbound_secret;
    json_t *agent_card;          /* NULL when none */
    json_t *probe;               /* last registration probe result, NULL when none */
    int lease_s;                 /* 0: no lease */
    int64_t lease_expires_at_ms; /* 0: never */
    int max_concurrency;         /* 0: unlimited */
    int ordered;                 /* 1: new messages queue behind a backlog (SPEC §4.1) */
    int active_tasks;            /* from the last heartbeat */
    int64_t registered_at_ms;
    int64_t heartbeat_at_ms; /* 0: none since the last register */
} sb_endpoint;

/* Bounds the handlers validate against. */
#define SB_REGISTRY_MAX_LEASE_S 31536000
#define SB_REGISTRY_MAX_CONCURRENCY 1000000

/* Creates the replica (empty until the sync channel loads it). Idempotent. */
void sb_registry_init(void);
/* Frees the replica; endpoints readers still hold stay valid until released. */
void sb_registry_shutdown(void);

/* The current record of |ws| with a new reference, or NULL when none is registered. */
sb_endpoint *sb_registry_get(const char *ws);
void sb_endpoint_ref(sb_endpoint *ep);
/* Drops a reference; the last one frees the endpoint. NULL is a no-op. */
void sb_endpoint_release(sb_endpoint *ep);

/* The record as JSON for GET /registry/{ws}; inbound_secret omitted, times as ISO-8601
 * strings (null when none): {"workspace_id","url","delivery_mode","protocol",
 * "agent_card","lease_s","lease_expires_at","max_concurrency","ordered","active_tasks",
 * "registered_at","heartbeat_at","probe"}. Never NULL. */
json_t *sb_endpoint_to_json(const sb_endpoint *ep);

/* Parses a stored record; NULL when it is malformed. The new endpoint has one
 * reference (the caller's) and revision |rev|. */
sb_endpoint *sb_endpoint_from_record(const json_t *rec, long long rev);

const char *sb_delivery_mode_name(sb_delivery_mode m);

/* Replica maintenance, as in auth.h: |rec| is the stored record (JSON). Malformed
 * records are logged and ignored. */
void sb_registry_apply_set(const json_t *rec, long long rev);
void sb_registry_apply_del(const char *ws, long long rev);
/* A snapshot: |records| is an array of stored records (see sb_replica_apply_snapshot). */
void sb_registry_apply_snapshot(const json_t *records, long long rev);

/* Registered endpoints in the replica, and a walk over them (|fn| runs under the
 * replica's read lock: it must not call back into the registry; take a reference with
 * sb_endpoint_ref to keep one). */
size_t sb_registry_count(void);
void sb_registry_foreach(void (*fn)(const sb_endpoint *ep, void *arg), void *arg);

/* ---- writes and authoritative reads through Redis ---- */

/* What POST /registry/register asks for (validated by the caller). */
typedef struct sb_registration {
    const char *workspace_id;
    const char *url; /* NULL when none */
    sb_delivery_mode mode;
    sb_upstream_proto protocol;
    const json_t *agent_card; /* NULL when none; copied */
    int lease_s;              /* 0: no lease */
    int max_concurrency;      /* 0: unlimited */
    int ordered;              /* 1: queue behind a backlog instead of overtaking it */
} sb_registration;

/* Completion of a registry operation, exactly once, on the connection's loop:
 *   SB_OK              |ep| is the stored record after the operation (register,
 *                      heartbeat, fetch; NULL after delete), already applied to the
 *                      replica. |ep| is borrowed for the call: sb_endpoint_ref to keep it.
 *   SB_ERR_NOTFOUND    no registration for the workspace (heartbeat, delete, fetch).
 *   SB_ERR_UNAVAILABLE the connection was lost before the answer.
 *   SB_ERR             Redis answered with an error or something unreadable (logged). */
typedef void (*sb_registry_done_fn)(int err, sb_endpoint *ep, void *arg);

/* Registers or replaces |reg|'s endpoint. The inbound secret is minted when the
 * workspace has none and kept otherwise (decided inside the script). The lease runs
 * from now; active_tasks and heartbeat_at reset. Returns SB_OK (|cb| will run) or
 * SB_ERR_UNAVAILABLE when |r| is down (|cb| never runs). */
int sb_registry_register(struct sb_redis *r, const sb_registration *reg, sb_registry_done_fn cb,
                         void *arg);

/* Renews the lease of |ws| (now + its lease_s, when it has one), records the heartbeat
 * time and, when |active_tasks| >= 0, the reported load. Returns as sb_registry_register. */
int sb_registry_heartbeat(struct sb_redis *r, const char *ws, int active_tasks,
                          sb_registry_done_fn cb, void *arg);

/* Removes |ws|'s endpoint (the inbound secret goes with it). Returns as above. */
int sb_registry_delete(struct sb_redis *r, const char *ws, sb_registry_done_fn cb, void *arg);

/* Reads |ws|'s record from Redis (and refreshes the replica with it). Returns as above. */
int sb_registry_fetch(struct sb_redis *r, const char *ws, sb_registry_done_fn cb, void *arg);

/* Stores |probe| (the registration probe's result, probe.h; copied) with the registration
 * of |ws| made at |registered_at_ms|, and publishes the record like any write, so every
 * instance's GET /registry/{ws} and delivery view show it. SB_ERR_NOTFOUND when that
 * registration was replaced or deleted meanwhile (nothing is written). Returns as
 * sb_registry_register. A register clears the previous probe. */
int sb_registry_set_probe(struct sb_redis *r, const char *ws, int64_t registered_at_ms,
                          const json_t *probe, sb_registry_done_fn cb, void *arg);

#endif
