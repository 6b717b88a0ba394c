/*
 * registry.h — registered agent endpoints (SPEC §4.1).
 *
 * Records live in Redis (see proto/redis-schema.md) and in an in-process replica that
 * every worker reads without a Redis round trip; the replica is kept coherent across
 * instances by the sync channel (sync.h). Readers get an immutable, reference-counted
 * sb_endpoint: a concurrent re-register publishes a new object and never changes one a
 * reader holds.
 */
#ifndef SWITCHBOARD_REGISTRY_H
#define SWITCHBOARD_REGISTRY_H

#include <jansson.h>
#include <stdint.h>

#include "switchboard/netaddr.h"

typedef enum { SB_MODE_PUSH = 0, SB_MODE_POLL } sb_delivery_mode;
typedef enum { SB_PROTO_AUTO = 0, SB_PROTO_HTTP1, SB_PROTO_H2C } sb_upstream_proto;

typedef struct sb_endpoint {
    int refs; /* atomic */
    long long rev;
    char *workspace_id;
    char *url_str;   /* as registered, NULL in poll mode without url */
    sb_url url;      /* parsed url_str (zeroed when none) */
    sb_delivery_mode mode;
    sb_upstream_proto protocol;
    char *inbound_secret;
    json_t *agent_card;          /* NULL when none */
    json_t *probe;               /* last registration probe result, NULL when none */
    int lease_s;                 /* 0: no lease */
    int64_t lease_expires_at_ms; /* 0: never */
    int max_concurrency;         /* 0: unlimited */
    int active_tasks;            /* from the last heartbeat */
    int64_t registered_at_ms;
    int64_t heartbeat_at_ms;
} sb_endpoint;

/* Creates the replica (empty until the sync channel loads it). */
void sb_registry_init(void);
void sb_registry_shutdown(void);

/* The current record of |ws| with a new reference, or NULL when none is registered. */
sb_endpoint *sb_registry_get(const char *ws);
void sb_endpoint_ref(sb_endpoint *ep);
void sb_endpoint_release(sb_endpoint *ep);

/* The record as JSON for GET /registry/{ws}; inbound_secret omitted. */
json_t *sb_endpoint_to_json(const sb_endpoint *ep);

/* Replica maintenance, as in auth.h: |rec| is the stored record (JSON). */
void sb_registry_apply_set(const json_t *rec, long long rev);
void sb_registry_apply_del(const char *ws, long long rev);

#endif
