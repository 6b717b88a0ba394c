/*
 * sync.h — keeps this instance's registry and token replicas coherent with Redis.
 *
 * Writers (any instance) change a record in Redis and publish the new record, with a
 * global revision number, on one pub/sub channel, in one atomic Lua script. The sync
 * module runs one subscriber connection on worker 0's loop: on every (re)connect it
 * subscribes first, then loads a full snapshot; every message applies one change. The
 * revision makes the order irrelevant: a replica keeps the highest revision it has
 * seen per key (deletions leave a tombstone), so a snapshot older than a message it
 * races with cannot roll the message back.
 *
 * While the subscriber is down the replicas keep serving what they last knew (pushes
 * continue without Redis) and /readyz reports not ready.
 */
#ifndef SWITCHBOARD_SYNC_H
#define SWITCHBOARD_SYNC_H

struct event_base;

/* Starts the subscriber and snapshot loader on |base| (worker 0's loop). */
int sb_sync_start(struct event_base *base, const char *redis_url);
void sb_sync_stop(void);

/* 1 once a snapshot has been applied on the current subscriber connection. */
int sb_sync_ready(void);

#endif
