/*
 * drain.h — the recovery drain (SPEC §4.4): when a push-mode workspace registers or
 * heartbeats with spare capacity and its queue holds messages, switchboard pushes them
 * itself, oldest first, acking each one the agent accepts, and stops at the first
 * failure. Nothing waits for an inbox consumer that will never come.
 *
 * Capacity: max_concurrency − active_tasks (from the last heartbeat) pushes at a time;
 * without max_concurrency one at a time (sequentially). The drain goes on until the
 * queue is empty or a push fails, leasing as many messages as it has free slots. Every
 * drained push is counted by the circuit breaker like any other (so busy and
 * circuit_open stop it too) and uses exactly the headers of a normal push.
 *
 * Exclusivity: messages are taken with the queue's lease (lease = push timeout + connect
 * timeout + a margin), so two instances — or a drain and an inbox consumer — never hold
 * the same message at once, and a drain that dies mid-way leaves its messages to come
 * back when their lease ends. One drain per workspace runs per instance at a time.
 * A push that fails is released at once; its delivery is not counted unless the request
 * may have reached the agent (response_timeout, connection_reset, invalid_response).
 *
 * The drain stops leasing once its worker begins the graceful stop; pushes in flight
 * finish if the stop lets them, otherwise their messages come back when the lease ends.
 */
#ifndef SWITCHBOARD_DRAIN_H
#define SWITCHBOARD_DRAIN_H

struct sb_worker;

/* Starts draining |ws| on worker |w| (call on |w|'s loop, after a successful register or
 * heartbeat has updated the registry replica) when its endpoint is push mode, its lease
 * is live, it has spare capacity and no drain of |ws| runs in this process. Returns at
 * once; the drain runs on |w|'s loop. A no-op otherwise, also when the queue turns out
 * to be empty (one Redis round trip). */
void sb_drain_kick(struct sb_worker *w, const char *ws);

/* Drains running in this process (tests, metrics). Any thread. */
int sb_drain_running(void);

#endif
