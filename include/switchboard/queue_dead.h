/*
 * queue_dead.h — dead letters: list, replay, purge (SPEC §3, §4.4).
 *
 * A message that expired or was leased --max-deliveries times is a dead letter: its hash
 * keeps its original request, and the workspace's capped dead-letter LIST (queue.h)
 * names it, newest first. These operations are queue scripts like the others (one
 * round trip, atomic, the workspace's keys only):
 *   list    the newest |max| dead letters whose message hash is still kept, each with
 *           its request and dead_reason;
 *   replay  the message goes back to the FRONT of the ready queue (ahead of everything
 *           queued), with a fresh expiry (|ttl_ms| from now), delivery_count 0, state
 *           queued — so its task reads submitted again — and leaves the list; an attempt
 *           "replayed" is noted in its record;
 *   purge   state purged (its task reads failed), the request dropped, out of the list;
 *           the record stays readable for --queue-ttl-s.
 * Callbacks as in queue.h.
 */
#ifndef SWITCHBOARD_QUEUE_DEAD_H
#define SWITCHBOARD_QUEUE_DEAD_H

#include <stddef.h>
#include <stdint.h>

#include "switchboard/queue.h"

#define SB_QUEUE_DEAD_LIST_MAX 1000 /* max= of one list call */

/* |items| newest first (each with its request and dead_reason; updated_at_ms is when it
 * died), borrowed for the call. */
typedef void (*sb_queue_dead_list_fn)(int err, const sb_queue_record *items, size_t n, void *arg);

/* Lists up to |max| (1..SB_QUEUE_DEAD_LIST_MAX) dead letters of |ws|. Returns SB_OK or
 * SB_ERR_UNAVAILABLE (|cb| never runs). */
int sb_queue_dead_list(struct sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                       sb_queue_dead_list_fn cb, void *arg);

/* Replays dead letter |id| (see above). |cb| gets SB_OK with the queued record,
 * SB_ERR_NOTFOUND, or SB_ERR_FORBIDDEN with the record when it is not dead. Returns as
 * above. */
int sb_queue_dead_replay(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                         int64_t ttl_ms, sb_queue_record_fn cb, void *arg);

/* Purges dead letter |id|; purging a purged one succeeds again. |cb| as for replay.
 * Returns as above. */
int sb_queue_dead_purge(struct sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                        sb_queue_record_fn cb, void *arg);

#endif
