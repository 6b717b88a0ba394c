/*
 * drain.h — switchboard's own redelivery of a workspace's queue (SPEC §4.4): for a
 * push-mode workspace with queued messages, switchboard pushes them itself, oldest
 * first, acking each one the agent accepts, and stops at the first failure. Nothing
 * waits for an inbox consumer that will never come.
 *
 * When: at once on a register or heartbeat (handler_registry.c), right after a push to
 * the workspace was delivered while it has queued messages (retry.h's after-push check),
 * and on a schedule while the agent keeps failing (redeliver.c scans the due-time index
 * and calls sb_drain_scheduled): the first retry about 1 s after a fallback, then
 * doubling with jitter up to --retry-max-s, until the messages expire.
 *
 * Capacity: several pushes at a time, up to three quarters of the in-flight limit live
 * pushes have (max_concurrency, else --max-inflight-per-endpoint; 64 when neither limits)
 * counting the live pushes in flight, and at most max_concurrency − active_tasks (from
 * the last heartbeat); a quarter stays free for live traffic. A run starts with one push
 * and opens one more slot per push delivered about as fast as its quickest, closes one
 * per push that took longer (an agent queueing them); an `ordered` workspace gets
 * one at a time, in order. Without `ordered`, pushes in flight may reach the agent out of
 * order. Leases and acks go in batches (queue.h sb_queue_redeliver_ack), and a run keeps
 * messages leased ahead of its pushes (sb_drain_read_ahead), so a slot freed by an answer
 * is refilled at once rather than after a lease's Redis round trips. Every
 * redelivered push is counted by the circuit breaker like any other: a refusal (busy,
 * circuit_open) stops the run, and the next try is scheduled no earlier than the end of
 * the circuit's cool-down, so the half-open probe *is* the redelivery's push.
 *
 * Exclusivity: one instance drives a workspace at a time (the driver lease in Redis,
 * retry.h, renewed while the run lasts, expiring when its holder dies); messages are
 * taken with the queue's redelivery lease, long enough for the pushes a message may wait
 * for in the run's buffer and its own (sb_drain_lease_ms), so a drain and an inbox
 * consumer never hold the same message at once, and a drain that dies mid-way leaves its
 * messages to come back when their lease ends (the index then makes the workspace due
 * again). No push starts on a lease that could end before the push does
 * (sb_drain_lease_fits): such a message is given back for a fresh lease, or left to
 * come back when its lease ends, so it never reaches the agent twice. The redelivery lease counts
 * no delivery: these retries never make a message a max_deliveries dead letter; each push is an
 * attempt in its delivery record, and identical failures in a row collapse into one attempt with a
 * count.
 *
 * The drain stops leasing once its worker begins the graceful stop; pushes in flight
 * finish if the stop lets them, otherwise their messages come back when the lease ends.
 */
#ifndef SWITCHBOARD_DRAIN_H
#define SWITCHBOARD_DRAIN_H

#include <stddef.h>
#include <stdint.h>

struct sb_worker;

typedef enum {
    SB_DRAIN_STARTED = 0, /* a run began (it may still find another instance driving) */
    SB_DRAIN_RUNNING,     /* a run of this workspace is under way in this process */
    SB_DRAIN_NOT_PUSH,    /* not registered, poll mode, or its lease lapsed */
    SB_DRAIN_NO_CAPACITY, /* active_tasks has reached max_concurrency */
    SB_DRAIN_STOPPING     /* the worker is stopping */
} sb_drain_start;

/* Starts draining |ws| on worker |w| (call on |w|'s loop, e.g. after a successful
 * register or heartbeat has updated the registry replica) when its endpoint is push
 * mode, its lease is live, it has spare capacity and no drain of |ws| runs in this
 * process. Returns at once; the drain runs on |w|'s loop. A no-op otherwise. With an
 * empty queue it costs three Redis calls (driver lease, lease, release). */
void sb_drain_kick(struct sb_worker *w, const char *ws);

/* The same for a workspace the scheduler found due in the index: such a run also takes
 * the workspace out of the index when it empties the queue. Returns what happened. */
sb_drain_start sb_drain_scheduled(struct sb_worker *w, const char *ws);

/* Frees this thread's watches of unreachable agents (see drain.c); call on each worker
 * thread once its loop has stopped (their probes in flight are canceled without
 * callbacks when the worker's upstream pool is freed). */
void sb_drain_thread_clear(void);

/* Drains running in this process (tests, metrics). Any thread. */
int sb_drain_running(void);

/* Drains started by this worker thread and not finished yet. A stopping worker waits
 * for them: each gives its leased, unpushed messages back and ends once its pushes in
 * flight are answered (they see the worker draining). */
int sb_drain_thread_runs(void);

/* Read-ahead windows at most: a run keeps at most this many windows leased beyond the
 * one in flight (and no more once the requests it holds ahead reach 16 MB, or every drain's
 * together 64 MB: sb_drain_buffer_full). */
#define SB_DRAIN_AHEAD_WINDOWS 8

/* The messages a run with |window| pushes at a time keeps leased ahead of them (waiting
 * in its buffer, or asked for): what the window pushes while a lease makes its way,
 * window × |lease_rtt_us| ÷ |push_us| (a lease call's round trip and a push's answer
 * time, moving averages), twice over for the jitter of both; a window and a half while
 * either is unmeasured (0), at least that, at most SB_DRAIN_AHEAD_WINDOWS windows; 0 for
 * a window of one (an `ordered` workspace leases one message at a time). Pure. */
int sb_drain_read_ahead(int window, uint64_t lease_rtt_us, uint64_t push_us);

/* Requests a drain holds leased ahead of its pushes at most (its buffer), and every drain
 * of the process together (many drains at once: agents back after an outage). */
#define SB_DRAIN_BUFFER_BYTES ((size_t)16 << 20)
#define SB_DRAIN_PROCESS_BUFFER_BYTES ((size_t)64 << 20)

/* Whether a drain holding |own| bytes of requests ahead, while every drain of the process
 * holds |all| (its own included), must lease no more until pushes take some: |own| at
 * SB_DRAIN_BUFFER_BYTES or |all| at SB_DRAIN_PROCESS_BUFFER_BYTES. The caller still
 * leases when it has nothing leased, in flight or asked for, so every drain progresses.
 * Pure. */
int sb_drain_buffer_full(size_t own, size_t all);

/* Bytes of queued requests every drain of the process holds leased ahead of their pushes
 * now (the |all| of sb_drain_buffer_full; switchboard_drain_buffered_bytes). Any thread. */
uint64_t sb_drain_buffered_bytes(void);

/* The redelivery lease: its margin beyond the pushes it covers, and the pushes it covers
 * at most (push bounds). */
#define SB_DRAIN_LEASE_MARGIN_MS 5000
#define SB_DRAIN_LEASE_ROUNDS_MAX 8

/* A push starts only with this much of its lease left beyond the push's own bound. */
#define SB_DRAIN_PUSH_SAFETY_MS 2000

/* A message whose lease is too short for a push is released only with at least this
 * much of it left (so the release surely lands while the lease is still ours). */
#define SB_DRAIN_RELEASE_MARGIN_MS 1000

/* The lease (ms) for messages that |ahead| messages of a run with |window| pushes at a
 * time share (those in flight, buffered and asked for by earlier leases, then this
 * lease's own, the last of which waits longest): rounds = ceil(|ahead| ÷ |window|), at
 * least one and at most SB_DRAIN_LEASE_ROUNDS_MAX; the last message's own push
 * (|push_bound_ms|, a push's longest time: push timeout + connect timeout), the
 * rounds − 1 before it at |round_ms| each (what a round of pushes takes: twice the
 * measured answer time; 0 or more than the bound: the bound), plus
 * SB_DRAIN_LEASE_MARGIN_MS. So at most SB_DRAIN_LEASE_ROUNDS_MAX push bounds plus the
 * margin; one push bound plus the margin for a lone message or a fast agent. A window
 * or |ahead| below 1 counts as 1, a negative bound as 0; never overflows (a bound too
 * large for SB_DRAIN_LEASE_ROUNDS_MAX rounds is cut to the largest that fits). Pure. */
int64_t sb_drain_lease_ms(int64_t push_bound_ms, int64_t round_ms, int ahead, int window);

typedef enum {
    SB_DRAIN_LEASE_PUSH = 0, /* enough lease left for a whole push: start it */
    SB_DRAIN_LEASE_RELEASE,  /* too short for a push, long enough to give back safely */
    SB_DRAIN_LEASE_DROP      /* too short even for that: forget it, the lease ends on its own */
} sb_drain_lease_fit;

/* What to do with a leased message about to be pushed whose lease has |left_ms| left (in
 * Redis' time, estimated no later than it is) when a push may take |push_bound_ms|:
 * push when |left_ms| ≥ |push_bound_ms| + SB_DRAIN_PUSH_SAFETY_MS, else release when
 * |left_ms| ≥ SB_DRAIN_RELEASE_MARGIN_MS, else drop. A negative bound counts as 0; any
 * |left_ms| (negative: ended) and bound are safe from overflow. Pure. */
sb_drain_lease_fit sb_drain_lease_fits(int64_t left_ms, int64_t push_bound_ms);

#endif
