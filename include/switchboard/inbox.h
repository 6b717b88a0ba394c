/*
 * inbox.h — leasing from a workspace's poll queue, with long-poll (SPEC §4.4).
 *
 * GET /workspaces/{ws}/inbox?wait_s=N may wait up to 60 s for a message. Thousands of
 * such consumers must cost neither a Redis connection nor a polling loop each, so a
 * waiter is only an in-process record on its worker's loop:
 *  - Waiters of one workspace on one worker form a FIFO group that leases for one
 *    waiter at a time (one Redis round trip), moving on while messages remain, so a
 *    wake-up costs O(messages + 1) scripts, not one per waiter.
 *  - New work is announced by the queue's own scripts: append and nack PUBLISH the
 *    workspace id on SB_QUEUE_NOTIFY_CHANNEL. One subscriber connection per process
 *    (started on the loop of the first worker that has a waiter) hands each id to every
 *    worker with waiters for it (event_active across threads). A wake-up that arrives
 *    while a lease is in flight makes the group lease once more after it, so no
 *    announcement can fall between "the queue was empty" and "now waiting".
 *  - A lease that ends makes its message available again without any announcement, so
 *    every empty lease reply also says when the earliest lease in the workspace ends,
 *    and the group leases again then.
 *  - When the subscription (re)connects, every group leases once (announcements may
 *    have been lost while it was down).
 * A waiter ends with the first non-empty lease, with an empty answer at its wait_s
 * deadline, when its client goes away (request on_gone; a lease already in flight for it
 * is released at once, its delivery not counted), or at shutdown.
 *
 * Threads: everything but the announcement hand-off runs on the waiter's worker loop.
 */
#ifndef SWITCHBOARD_INBOX_H
#define SWITCHBOARD_INBOX_H

#include <stdint.h>

#include "switchboard/queue.h"
#include "switchboard/request.h"

struct sb_worker;

#define SB_INBOX_MAX_WAIT_S 60

typedef struct sb_inbox_params {
    int max;          /* 1..SB_QUEUE_LEASE_MAX */
    int64_t lease_ms; /* > 0 */
    int64_t wait_ms;  /* 0: answer at once; else up to SB_INBOX_MAX_WAIT_S * 1000 */
} sb_inbox_params;

/* The outcome of one sb_inbox_lease: |err| SB_OK with |batch| (possibly empty: the wait
 * ended without a message), or SB_ERR_UNAVAILABLE / SB_ERR with |batch| NULL. Called at
 * most once, on the request's loop, and only while the request is not gone. */
typedef void (*sb_inbox_answer_fn)(sb_request *req, int err, const sb_queue_batch *batch,
                                   void *arg);

/* Leases for |req| (a request reference is held until the end) from workspace |ws|
 * according to |p|; |fn|(|arg|) receives the outcome. Sets req->on_gone for the wait
 * (the handler must not use on_gone itself). Must run on req->worker's loop. */
void sb_inbox_lease(sb_request *req, const char *ws, const sb_inbox_params *p,
                    sb_inbox_answer_fn fn, void *arg);

/* Graceful stop of worker |w| (call from its loop when draining begins): every waiter
 * not holding a lease in flight is answered at once with an empty list, the others as
 * soon as their lease returns; no new wait starts on |w|; the notification subscriber
 * is closed when |w| hosts it. Idempotent; a no-op for a worker that never had a waiter.
 * (A worker that is draining also notices it by itself within 250 ms while it has
 * waiters, so the stop never waits for a long-poll.) */
void sb_inbox_shutdown(struct sb_worker *w);

/* Waiters currently held by worker |w| (tests, metrics). */
size_t sb_inbox_waiting(const struct sb_worker *w);

#endif
