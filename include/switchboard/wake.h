/*
 * wake.h — one loop's doorbell that any thread may ring.
 *
 * Worker loops run without libevent's locks (EVENT_BASE_FLAG_NOLOCK: server.c), so no
 * other thread may call event_active, event_add or event_del on their events. A thread
 * that must make a loop do something — the main thread starting the graceful stop, the
 * inbox subscriber announcing a queue, the sync loop completing a writer's barrier —
 * rings an sb_wake instead: an eventfd whose readable event lives on the owning loop.
 * Rings before the callback runs coalesce into one call (the eventfd counter is read
 * and reset at once), so the state the callback acts on lives with the ringer's data,
 * under the ringer's own lock; the wake only says "look".
 *
 * Never: create or free a wake off its loop's thread while that loop runs, or ring one
 * that may already be freed (the owner makes sure, e.g. under the lock both share).
 */
#ifndef SWITCHBOARD_WAKE_H
#define SWITCHBOARD_WAKE_H

struct event_base;

typedef struct sb_wake sb_wake;

/* A doorbell on |base| that calls |fn|(|arg|) on |base|'s loop after it is rung. Call on
 * |base|'s thread, or before its loop starts. Returns NULL when no descriptor is left
 * (EMFILE); the caller owns the result (sb_wake_free). The wake's event keeps the loop
 * from running out of events, like any persistent event. */
sb_wake *sb_wake_new(struct event_base *base, void (*fn)(void *arg), void *arg);

/* From any thread: |fn| runs once on the owning loop soon; rings that come before it runs
 * are answered by that one call. A no-op for NULL. Never blocks: the eventfd counter only
 * overflows after 2^64 - 1 unanswered rings. */
void sb_wake_ring(sb_wake *w);

/* Stops and frees |w| (NULL is fine); a ring not yet answered is dropped. Call on the owning
 * loop's thread, or after it ended, once no other thread can ring |w|. */
void sb_wake_free(sb_wake *w);

#endif
