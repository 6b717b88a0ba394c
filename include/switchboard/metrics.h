/*
 * metrics.h — the process's Prometheus registry (SPEC §5.1), exposed by GET /metrics.
 *
 * Counting is on the hot path of every message and every HTTP response, so it takes no
 * lock: each thread that counts gets its own shard of counters (claimed on first use,
 * kept for the life of the process) and increments it with relaxed atomic adds, which
 * on a cache line no other thread writes cost about as much as a plain add. A scrape
 * sums the shards; every count is exact, whatever the number of worker threads, and a
 * thread that exits leaves its counts behind. Should more threads count than there are
 * shards, they share shards — still exact, only contended.
 *
 * Cardinality is bounded by construction: every label value comes from a closed set —
 * kind (chat|delegation), mode (push|poll|rejected), reason (reason.h), dead-letter
 * reason (max_deliveries|expired), route (a router pattern such as
 * "/workspaces/{ws}/a2a", never a concrete path; at most SB_METRICS_MAX_ROUTES distinct
 * patterns, further ones count as "other"; NULL is "unmatched"), and code (the HTTP
 * status; statuses without a standard reason phrase count as their class, "2xx"...).
 * Nothing here takes a workspace id, a message id or a URL.
 *
 * Histograms have fixed buckets; observations are integer microseconds, so bucket
 * placement and sums are exact. _count is the +Inf bucket by construction.
 *
 * Ground floor: every module counts here, so this module includes none of theirs.
 * Gauges describing state (endpoints, open circuits, Redis, connections, idle upstream
 * connections) are read from their modules at scrape time by the /metrics handler
 * (handler_metrics.c, at the top) and handed in as an sb_metrics_state; the queue
 * gauges are pushed in by the queue module through sb_metrics_set_queue (0 until it
 * does).
 *
 * Never: allocate or lock on a counting path after a thread's first count, label a
 * series with anything outside the closed sets above, or block a scrape on Redis.
 */
#ifndef SWITCHBOARD_METRICS_H
#define SWITCHBOARD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "switchboard/a2a.h"
#include "switchboard/reason.h"

struct evbuffer;

#ifndef SB_VERSION
#define SB_VERSION "0.1.0-dev"
#endif

/* Content-Type of the text exposition format this module writes. */
#define SB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Distinct route patterns counted under their own label (incl. "unmatched", "other"). */
#define SB_METRICS_MAX_ROUTES 48

/* ---- counting (any thread, lock-free, never fails) ---- */

/* One delivery decision for a message of |kind| (SPEC §4.2): |mode| is "push" (the
 * agent's answer was relayed), "poll" (queued) or "rejected" (neither pushed nor stored);
 * any other string is ignored. |reason| is SB_REASON_NONE for a push; otherwise it is
 * also counted in switchboard_poll_fallbacks_total{reason} — once per message that was
 * not pushed, whether it was then queued or rejected. Call exactly once per message
 * (deliver.c's decision log line is that place); drained pushes are not messages. */
void sb_metrics_delivery(sb_message_kind kind, const char *mode, sb_reason reason);

/* One push round trip to an agent (delivery or recovery drain), any outcome, lasting
 * |duration_us| (sb_upstream_result.duration_us). */
void sb_metrics_push_observe(uint64_t duration_us);

/* One message handed to an inbox consumer by a lease; |delivery_count| is its count
 * after the lease (> 1 also counts a redelivery). */
void sb_metrics_inbox_leased(int delivery_count);
/* One message acked through POST /workspaces/{ws}/inbox/{id}/ack. */
void sb_metrics_inbox_acked(void);
/* |n| messages moved to dead letters; |reason| is "max_deliveries" or "expired" (any
 * other string is ignored). */
void sb_metrics_dead_letters(const char *reason, unsigned long n);
/* One queued message pushed and acked by the recovery drain. */
void sb_metrics_drained(void);
/* One push notification sent for a switchboard task: |outcome| "delivered", "failed"
 * (an attempt that will be retried) or "gave_up"; other values are ignored. */
void sb_metrics_notification(const char *outcome);

/* One step of switchboard's own redelivery (drain.h): |outcome| "delivered" (a queued
 * message pushed and taken by the agent), "failed" (its push failed; it stays queued) or
 * "refused" (not pushed: the circuit breaker or the in-flight limit held it back). Any
 * other string is ignored. */
void sb_metrics_redelivery(const char *outcome);
/* One delivery note (record.h) that could not be sent because Redis was unreachable:
 * held in memory until it is back (|dropped| 0), or dropped past the bound (1). */
void sb_metrics_record_note_deferred(int dropped);

/* One HTTP response completed: |route| is the matched route pattern (a string that
 * lives as long as the process, e.g. req->route) or NULL for none, |status| the HTTP
 * status, |duration_us| from the request's start to the response's end. */
void sb_metrics_http_request(const char *route, int status, uint64_t duration_us);

/* One Redis command answered after |duration_us| (sent → reply callback). */
void sb_metrics_redis_command(uint64_t duration_us);

/* ---- gauges pushed by their owners ---- */

/* The poll queue across all workspaces: |depth| messages queued or leased, the oldest
 * enqueued at |oldest_enqueued_at_ms| (epoch ms; 0 when the queue is empty). The age is
 * computed at each scrape from that time, so it keeps growing between updates. Any
 * thread; the two values are published together. Until called, both gauges are 0. */
void sb_metrics_set_queue(long long depth, int64_t oldest_enqueued_at_ms);
/* Sets switchboard_stalled_workspaces: push-mode workspaces whose oldest queued message
 * is older than 5 minutes (computed by the queue gauge refresh). Any thread. */
void sb_metrics_set_stalled(long long n);

/* ---- exposition ---- */

/* State the exposition shows beside the counters, read by the caller from the modules
 * that own it (this module sits below all of them and reads none). */
typedef struct sb_metrics_state {
    uint64_t endpoints_push, endpoints_poll; /* registered endpoints by delivery mode */
    int circuits_open;                       /* open or half-open circuits */
    int redis_up;                            /* every Redis connection up, replica loaded */
    int redis_eviction_risk;                 /* redis_safety.h's sb_redis_risk value */
    uint64_t connections;                    /* open client connections, all workers */
    uint64_t inflight;                       /* requests received and not yet answered */
    uint64_t upstream_idle;                  /* idle keep-alive connections to agents */
    uint64_t drain_buffered;                 /* requests the drains hold ahead (drain.h) */
} sb_metrics_state;

/* Appends every series in Prometheus text format 0.0.4 to |out|: the counters and
 * histograms of this module, the queue gauges pushed in, and the gauges of |state|
 * (NULL: all 0). Reads other threads' shards without stopping them. Any thread;
 * allocates. */
void sb_metrics_render(struct evbuffer *out, const sb_metrics_state *state);

/* Appends |s| to |out| as a label value: backslash, double quote and newline escaped as
 * \\, \" and \n (exposition format 0.0.4). Exposed for tests. */
void sb_metrics_escape_label(struct evbuffer *out, const char *s);

/* ---- test hooks: unit tests only, never called by the server ---- */

/* Zeroes every counter, histogram and gauge and forgets the interned routes. Only while
 * no other thread counts. */
void sb_metrics_test_reset(void);

#endif
