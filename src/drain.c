/*
 * drain.c — switchboard's own redelivery of a workspace's queue (see drain.h).
 *
 * Life of a drain: sb_drain_kick() / sb_drain_scheduled() check the endpoint in the
 * replica (push mode, live lease, spare capacity), claim the workspace in the
 * process-wide set of running drains, and take the workspace's driver lease in Redis
 * (retry.h; renewed every few seconds while the drain lives). Each step then leases as
 * many messages as its window has free slots plus a read-ahead sized to cover a lease's
 * round trip (up to LEASES_AHEAD lease calls on their way, a redelivery lease that
 * counts no delivery; the window starts at one push and follows the agent's answer
 * times up to the drain's share of the capacity: adapt_window, lease_want,
 * sb_drain_read_ahead). A lease lasts for the pushes its last message may wait for and
 * its own (drain_lease.c, sb_drain_lease_ms: one push bound — push timeout + connect
 * timeout — for its own push, one round of the window per window of messages ahead of
 * it at twice the measured answer time, at most a push bound each, at most 8 push bounds
 * in all, plus 5 s). Before a buffered message's push starts, its lease's time left is
 * counted on the local monotonic clock from when the lease call was sent (the lease
 * began after that: never overestimated) and must cover a push bound plus 2 s
 * (sb_drain_lease_fits, lease_too_short); otherwise the message is released for a fresh
 * lease when a second or more is left, else forgotten (its lease ends on its own and the
 * run makes itself due by then), with a `drain_lease_short` warning; no delivery, attempt
 * or failure is counted, and the run goes on. A buffered message whose lease ended could
 * otherwise be put back in ready by the next queue script and leased and pushed again,
 * the first push still on its way: the agent would get it twice. Then it
 * pushes each one through the worker's upstream pool with the same headers and the same
 * outcome rules as a normal push (deliver.c), collects the ack of each one the agent
 * took (its attempt and the agent's result) for the next ack batch (one batch call at
 * a time, the next collecting meanwhile), or releases it and stops at the first
 * failure. When it may lease no more and nothing of it is in flight or unacked it
 * concludes: a failure or a refusal writes the retry state and puts the workspace into
 * the due-time index at its next back-off; an emptied queue takes it out of the index
 * (then leases once more, so a message queued meanwhile is not stranded); messages leased
 * elsewhere make it due when their lease ends. Then it gives the driver lease back,
 * leaves the set and frees itself.
 *
 * Every callback ends with drain_step(), the only place that may free the drain, and
 * touches nothing after it.
 *
 * Never: push a message it has not leased, start a push on a lease that may end before
 * the push does, release a lease that is not the one it took (the release names its
 * lease_until_ms), or count a delivery for a push that never reached the agent.
 */
#include "switchboard/drain.h"
#include "switchboard/a2a.h"
#include "switchboard/jsontext.h"
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/deliver.h"
#include "switchboard/notify.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/registry.h"
#include "switchboard/retry.h"
#include "switchboard/sync.h"
#include "switchboard/worker.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include "drain_int.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define RECHECK_AFTER_LEASE_MS 500 /* due again this long after a foreign lease ends */
#define UNLIMITED_CAP 64           /* pushes at a time when the endpoint has no limit at all */
#define WINDOW_SLACK_US 50000      /* answer-time jitter that never narrows the window */
#define LEASES_AHEAD 4             /* lease calls on their way at once (Redis round trips hidden) */

/* One delivered message waiting for its place in a batched ack (strings owned). */
typedef struct drain_ack {
    char *id;
    char *attempt;
    char *result;
    char *error;
    char *source; /* with message_id: its dedup field, so the ack need not read it */
    char *message_id;
} drain_ack;

typedef struct drain {
    sb_worker *w;
    char ws[SB_WS_ID_MAX + 1];
    sb_endpoint *ep;  /* holds a reference */
    int cap;          /* pushes at a time at most (the drain's share of the capacity) */
    int limit;        /* the endpoint's in-flight limit on this instance; 0 none */
    int window;       /* pushes at a time now: 1 at first, adapt_window */
    uint64_t base_us; /* the quickest delivered push of this run */
    int inflight;     /* pushes under way */
    drain_ack *acks;  /* delivered, not yet sent in an ack batch */
    int nacks, acks_cap;
    int acking;  /* ack batches outstanding */
    int watched; /* the workspace has watched tasks (notify.h): 1, 0 none, -1 unknown */
    int leasing; /* lease calls outstanding (at most LEASES_AHEAD) */
    struct drain_push *buf_head, *buf_tail; /* leased, waiting for a slot (FIFO) */
    int nbuf;
    int requested;  /* messages those calls asked for */
    int pending;    /* other Redis calls outstanding (driver lease, settle, index) */
    int stopped;    /* lease no more */
    int halted;     /* stopped, and push nothing more (a failure, a refusal, abandoned) */
    int concluded;  /* the outcome was written (or needs no writing) */
    int scheduled;  /* started by the scheduler from the due-time index */
    int owned;      /* the driver lease in Redis is ours */
    int rechecked;  /* left the index once and leased again */
    int pushed;     /* messages the agent took */
    int failed;     /* pushes that failed (at most a few: the drain stops at the first) */
    int refused;    /* stopped by the circuit breaker or the in-flight limit */
    int leased_any; /* some lease gave it messages */
    int abandon;    /* stopped for a reason that leaves the schedule as it is */
    int ok_settle;  /* the settle in flight records an emptied queue */
    long long next_lease_end_ms; /* from the last lease: -1 none leased elsewhere */
    int64_t dropped_end_ms;      /* wall clock: the last lease left to end (lease_too_short) */
    sb_reason last_reason;
    int last_status;
    char last_detail[384];
    const char *why; /* why it stopped */
    struct event *renew_ev;
    uint64_t started_us;
    size_t buf_bytes;      /* the buffered requests' bytes */
    uint64_t busy_us;      /* pushes in flight integrated over time (µs), for the log */
    uint64_t busy_at_us;   /* when |inflight| last changed */
    uint64_t lease_rtt_us; /* a lease call's round trip, moving average (ewma) */
    uint64_t push_us;      /* a delivered push's answer time, moving average */
} drain;

typedef struct drain_push {
    drain *dr;
    sb_queue_record rec;   /* owned copy of the leased message (strings, the request) */
    uint64_t lease_end_us; /* monotonic: its lease's end, counted from the lease call's
                            * sending (prepare) */
    uint64_t started_us;
    int64_t began_ms;        /* wall clock, for the delivery record */
    struct drain_push *next; /* in the drain's buffer of leased messages */
} drain_push;

static struct {
    pthread_mutex_t lock;
    sb_strmap *running; /* ws → (void *)1 */
} g_drains = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int claim(const char *ws)
{
    pthread_mutex_lock(&g_drains.lock);
    if (g_drains.running == NULL)
        g_drains.running = sb_strmap_new();
    int ok = sb_strmap_get(g_drains.running, ws) == NULL;
    if (ok)
        sb_strmap_put(g_drains.running, ws, (void *)1);
    pthread_mutex_unlock(&g_drains.lock);
    return ok;
}

static void unclaim(const char *ws)
{
    pthread_mutex_lock(&g_drains.lock);
    sb_strmap_remove(g_drains.running, ws);
    pthread_mutex_unlock(&g_drains.lock);
}

/* Runs of this worker thread not finished yet (a stopping worker waits for them). */
static __thread int runs_here;

int sb_drain_thread_runs(void)
{
    return runs_here;
}

int sb_drain_running(void)
{
    pthread_mutex_lock(&g_drains.lock);
    int n = g_drains.running ? (int)sb_strmap_count(g_drains.running) : 0;
    pthread_mutex_unlock(&g_drains.lock);
    return n;
}

/* Every drain's buf_bytes summed, across worker threads (relaxed: a bound and a gauge,
 * read as it stands). */
static uint64_t g_buffered;

uint64_t sb_drain_buffered_bytes(void)
{
    return __atomic_load_n(&g_buffered, __ATOMIC_RELAXED);
}

/* |dr|'s buffer grows by |d| bytes (negative: shrinks), and so does every drain's sum. */
static void buffered_add(drain *dr, long long d)
{
    dr->buf_bytes += (size_t)d;
    __atomic_add_fetch(&g_buffered, (uint64_t)d, __ATOMIC_RELAXED);
}

/* Pushes in flight change by |d| (1 or -1); their time integral grows. */
static void count_inflight(drain *dr, int d)
{
    uint64_t now = sb_now_mono_us();
    if (dr->busy_at_us != 0)
        dr->busy_us += (uint64_t)dr->inflight * (now - dr->busy_at_us);
    dr->busy_at_us = now;
    dr->inflight += d;
}

static void finish(drain *dr)
{
    uint64_t us = sb_now_mono_us() - dr->started_us;
    if (dr->pushed > 0 || dr->failed > 0 || dr->refused)
        sb_log(SB_LOG_INFO, "drain",
               "workspace %s: %d message(s) redelivered, %d failed; stopped: %s (%.1f ms; pushes "
               "in flight %.1f on average of a share of %d; lease round trip %.2f ms)",
               dr->ws, dr->pushed, dr->failed, dr->why ? dr->why : "done", (double)us / 1000.0,
               us > 0 ? (double)dr->busy_us / (double)us : 0.0, dr->cap,
               (double)dr->lease_rtt_us / 1000.0);
    if (dr->renew_ev != NULL)
        event_free(dr->renew_ev);
    if (dr->owned)
        sb_retry_disown(dr->w->redis, dr->ws, sb_sync_instance_id());
    unclaim(dr->ws);
    runs_here--;
    sb_endpoint_release(dr->ep);
    sb_free(dr->acks);
    sb_free(dr);
}

static void stop(drain *dr, const char *why)
{
    if (!dr->stopped) {
        dr->stopped = 1;
        dr->why = why;
    }
}

/* Stops and gives back what is leased but not pushed yet (a failure, a refusal). */
static void halt(drain *dr, const char *why)
{
    stop(dr, why);
    dr->halted = 1;
}

/* Stops for a reason that says nothing about the agent: the schedule stays as it is. */
static void abandon(drain *dr, const char *why)
{
    halt(dr, why);
    dr->abandon = 1;
}

/* One lease call on its way. */
typedef struct lease_call {
    struct drain *dr;
    int asked;
    int64_t lease_ms;
    uint64_t sent_us;
} lease_call;

static void on_drain_lease(int err, const sb_queue_batch *b, void *arg);
static void conclude(drain *dr);
static void flush_acks(drain *dr);
static void drain_step(drain *dr);
static void pump(drain *dr);

static void on_watching(int watched, void *arg)
{
    drain *dr = arg;
    dr->pending--;
    dr->watched = watched == 0 ? 0 : 1;
    drain_step(dr);
}

/* The longest a push may take (ms): connecting, then the answer. */
static int64_t push_bound_ms(const drain *dr)
{
    return (int64_t)dr->w->cfg->push_timeout_s * 1000 + dr->w->cfg->connect_timeout_ms;
}

/* Pushes at a time now: the window within the drain's share. */
static int width(const drain *dr)
{
    return dr->window < dr->cap ? dr->window : dr->cap;
}

/* 1 when one more push may start: a free slot in the window, within what live pushes
 * leave of the endpoint's limit (a quarter of it stays theirs). A drain with nothing in
 * flight always may try: sb_circuit_begin then decides (busy, open). */
static int can_push(const drain *dr)
{
    if (dr->inflight == 0)
        return 1;
    if (dr->inflight >= width(dr))
        return 0;
    return dr->limit <= 0 || sb_circuit_inflight(dr->ws) < dr->limit - dr->limit / 4;
}

/* Messages the run holds or has asked for: pushes in flight, buffered, and leased in
 * calls not answered yet. */
static int taken(const drain *dr)
{
    return dr->inflight + dr->requested + dr->nbuf;
}

/* How many more messages to lease now: the window's free slots and the read-ahead
 * (sb_drain_read_ahead: kept leased in the buffer, so a freed slot is refilled without a
 * Redis round trip), less what is in flight, buffered or asked for, or 0; nothing more
 * while the buffer, or every drain's together, holds too much (sb_drain_buffer_full). Leases go a
 * window at a time at least (or whatever frees up when nothing is taken): each lease costs Redis
 * its maintenance, prelude and set moves again whatever it takes, which leases of a quarter window
 * (~14 messages against 64) paid several times over per message. */
static int lease_want(const drain *dr)
{
    int w = width(dr), t = taken(dr);
    if (t > 0 && sb_drain_buffer_full(dr->buf_bytes, sb_drain_buffered_bytes()))
        return 0;
    int want = w + sb_drain_read_ahead(w, dr->lease_rtt_us, dr->push_us) - t;
    if (t == 0 && want < 1)
        want = 1;
    int lowat = t == 0 ? 1 : w;
    if (want < lowat || want < 1)
        return 0;
    return want > SB_QUEUE_LEASE_MAX ? SB_QUEUE_LEASE_MAX : want;
}

/* |*avg| moved an eighth of the way to |us| (the first sample taken as it is). */
static void ewma(uint64_t *avg, uint64_t us)
{
    *avg = *avg == 0 ? us + 1 : (*avg * 7 + us + 1) / 8;
}

/* Leases for the free slots, sends delivered messages' acks, or concludes and ends the
 * drain. The caller touches |dr| no more. */
static void drain_step(drain *dr)
{
    if (!dr->stopped && dr->w->draining)
        abandon(dr, "switchboard is stopping");
    pump(dr);
    /* one ack batch at a time: what is delivered meanwhile goes into the next one */
    if (dr->nacks > 0 && (dr->acking == 0 || dr->nacks >= SB_QUEUE_LEASE_MAX))
        flush_acks(dr);
    int want = !dr->stopped && dr->owned && dr->leasing < LEASES_AHEAD ? lease_want(dr) : 0;
    if (want > 0) {
        /* long enough for the pushes ahead of this lease's last message and its own */
        int64_t lease_ms = sb_drain_lease_ms(
            push_bound_ms(dr), dr->push_us ? (int64_t)(dr->push_us * 2 / 1000) + 1 : 0,
            taken(dr) + want, width(dr));
        sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
        /* Sent first, so its answer is in before the lease's: only tasks with a push-
         * notification config need the "working" hint before their push. */
        if (sb_notify_watching(dr->w, dr->ws, on_watching, dr) == SB_OK)
            dr->pending++;
        lease_call *lc = sb_calloc(1, sizeof(*lc));
        lc->dr = dr;
        lc->asked = want;
        lc->lease_ms = lease_ms;
        lc->sent_us = sb_now_mono_us();
        if (sb_queue_redeliver_lease(dr->w->redis, &o, dr->ws, want, lease_ms, on_drain_lease,
                                     lc) == SB_OK) {
            dr->leasing++;
            dr->requested += want;
        } else {
            sb_free(lc);
            abandon(dr, "Redis unavailable");
        }
    }
    if (dr->stopped && dr->leasing == 0 && dr->inflight == 0 && dr->pending == 0 && dr->nbuf == 0 &&
        dr->nacks == 0 && dr->acking == 0) {
        if (!dr->concluded)
            conclude(dr);
        if (dr->concluded && dr->pending == 0 && dr->leasing == 0)
            finish(dr);
    }
}

/* Watches |dr|'s agent until |until_ms| when the run failed to reach it at all. A run
 * that was kicked (a register, heartbeat) and refused by the open circuit looks at once:
 * the agent that just spoke up is likely back, and its card answers in a round trip. */
static void watch_agent(drain *dr, int64_t until_ms)
{
    int now = !dr->scheduled && dr->refused;
    sb_reason r = dr->last_reason;
    if (dr->refused) {
        json_t *c = sb_circuit_describe(dr->ws);
        const char *last = json_string_value(json_object_get(c, "last_failure_reason"));
        r = last != NULL ? sb_reason_from_name(last) : SB_REASON_NONE;
        json_decref(c);
    }
    if (r != SB_REASON_CONNECT_REFUSED && r != SB_REASON_CONNECT_TIMEOUT &&
        r != SB_REASON_DNS_ERROR)
        return;
    sb_drain_watch(dr->w, dr->ws, until_ms, now);
}

/* ---- the outcome: retry state and the due-time index ---- */

static void on_settled_retry(int err, int64_t next_at_ms, void *arg)
{
    drain *dr = arg;
    dr->pending--;
    if (err == SB_OK && next_at_ms > 0) {
        sb_retry_due_at(dr->w->redis, dr->ws, next_at_ms);
        watch_agent(dr, next_at_ms);
    } else if (err != SB_OK && !dr->ok_settle)
        sb_retry_due_at(dr->w->redis, dr->ws, sb_now_wall_ms() + SB_RETRY_FIRST_MS * 5);
    drain_step(dr);
}

static void settle(drain *dr, int ok)
{
    char outcome[64];
    if (ok)
        snprintf(outcome, sizeof(outcome), "delivered");
    else if (dr->refused)
        snprintf(outcome, sizeof(outcome), "refused: %s", sb_reason_name(dr->last_reason));
    else
        snprintf(outcome, sizeof(outcome), "%s", sb_reason_name(dr->last_reason));
    uint32_t rnd;
    sb_random_bytes((unsigned char *)&rnd, sizeof(rnd));
    sb_retry_outcome o = {.ok = ok,
                          .outcome = outcome,
                          .detail = dr->last_detail,
                          .now_ms = sb_now_wall_ms(),
                          .not_before_ms = ok ? 0 : sb_circuit_retry_at_ms(dr->ws),
                          .max_ms = (int64_t)dr->w->cfg->retry_max_s * 1000,
                          .jitter_permille = (int)(rnd % 1000),
                          .retain_ms = (int64_t)dr->w->cfg->queue_ttl_s * 1000};
    dr->ok_settle = ok;
    if (sb_retry_settle(dr->w->redis, dr->ws, &o, on_settled_retry, dr) == SB_OK)
        dr->pending++;
}

static void on_left_index(int err, void *arg)
{
    drain *dr = arg;
    dr->pending--;
    if (err == SB_OK) {
        /* Out of the index: lease once more, so a message queued between the empty lease
         * and the ZREM (its ZADD NX found the entry still there) is not stranded. */
        dr->stopped = 0;
        dr->concluded = 0;
        dr->why = NULL;
    }
    drain_step(dr);
}

/* Decides what the run means for the schedule; sets |concluded| (possibly after more
 * Redis calls, which end in drain_step again). */
static void conclude(drain *dr)
{
    dr->concluded = 1;
    if (dr->abandon || !dr->owned)
        return;
    if (dr->failed > 0 || dr->refused) {
        settle(dr, 0);
        return;
    }
    if (dr->next_lease_end_ms >= 0 || dr->dropped_end_ms > 0) {
        /* Messages leased by someone else (an inbox consumer, or a drain that died), or
         * left by this run to end their lease (lease_too_short): try again when the
         * first of those leases ends. */
        int64_t at = dr->next_lease_end_ms >= 0 ? sb_now_wall_ms() + dr->next_lease_end_ms : -1;
        if (dr->dropped_end_ms > 0 && (at < 0 || dr->dropped_end_ms < at))
            at = dr->dropped_end_ms;
        sb_retry_due_at(dr->w->redis, dr->ws, at + RECHECK_AFTER_LEASE_MS);
        if (dr->pushed > 0)
            settle(dr, 1);
        return;
    }
    if (!dr->rechecked && (dr->scheduled || dr->leased_any)) {
        dr->rechecked = 1;
        if (sb_retry_due_clear(dr->w->redis, dr->ws, on_left_index, dr) == SB_OK)
            dr->pending++;
        return;
    }
    if (dr->pushed > 0 || dr->scheduled)
        settle(dr, 1);
}

static void on_renewed(int owned, void *arg)
{
    drain *dr = arg;
    dr->pending--;
    if (owned == 0)
        abandon(dr, "another instance took over this workspace's redelivery");
    drain_step(dr);
}

static void on_renew_tick(evutil_socket_t fd, short what, void *arg)
{
    drain *dr = arg;
    if (dr->stopped)
        return;
    if (sb_retry_own(dr->w->redis, dr->ws, sb_sync_instance_id(), on_renewed, dr) == SB_OK)
        dr->pending++;
}

static void on_owned(int owned, void *arg)
{
    drain *dr = arg;
    dr->pending--;
    if (owned == 1) {
        dr->owned = 1;
        dr->renew_ev = event_new(dr->w->base, -1, EV_PERSIST, on_renew_tick, dr);
        struct timeval tv = {SB_RETRY_OWNER_TTL_MS / 3000, 0};
        event_add(dr->renew_ev, &tv);
    } else {
        abandon(dr,
                owned == 0 ? "another instance drives this workspace's redelivery" : "Redis error");
    }
    drain_step(dr);
}

/* ---- pushes ---- */

static void on_settled(int err, const sb_queue_record *rec, void *arg)
{
    const char *what = arg;
    if (err != SB_OK)
        sb_log(SB_LOG_WARN, "drain_settle_failed",
               "%s of a redelivered message failed (%s); its lease ends on its own", what,
               err == SB_ERR_UNAVAILABLE ? "Redis unavailable"
               : err == SB_ERR_FORBIDDEN ? "state changed"
                                         : "Redis error");
}

static void ack_clear(drain_ack *a)
{
    sb_free(a->id);
    sb_free(a->attempt);
    sb_free(a->result);
    sb_free(a->error);
    sb_free(a->source);
    sb_free(a->message_id);
}

typedef struct ack_call {
    drain *dr;
    int n;
    drain_ack items[]; /* owned */
} ack_call;

static void on_acked(int err, const int *codes, size_t n, void *arg)
{
    ack_call *c = arg;
    drain *dr = c->dr;
    for (int i = 0; i < c->n; i++) {
        if (err == SB_OK && codes[i] == 0)
            sb_metrics_drained();
        else if (err == SB_OK && codes[i] == 2) /* acked before: one message, counted once */
            sb_log(SB_LOG_INFO, "drain_acked_before",
                   "workspace %s: message %s was acked before this push's ack; not counted again",
                   dr->ws, c->items[i].id);
        else
            on_settled(err != SB_OK     ? err
                       : codes[i] == -1 ? SB_ERR_NOTFOUND
                                        : SB_ERR_FORBIDDEN,
                       NULL, "ack");
        ack_clear(&c->items[i]);
    }
    sb_free(c);
    dr->acking--;
    drain_step(dr);
}

/* Sends the first (up to SB_QUEUE_LEASE_MAX) delivered messages as one ack batch. */
static void flush_acks(drain *dr)
{
    int n = dr->nacks < SB_QUEUE_LEASE_MAX ? dr->nacks : SB_QUEUE_LEASE_MAX;
    ack_call *c = sb_calloc(1, sizeof(*c) + (size_t)n * sizeof(c->items[0]));
    c->dr = dr;
    c->n = n;
    memcpy(c->items, dr->acks, (size_t)n * sizeof(c->items[0]));
    dr->nacks -= n;
    memmove(dr->acks, dr->acks + n, (size_t)dr->nacks * sizeof(dr->acks[0]));
    sb_queue_drained items[SB_QUEUE_LEASE_MAX];
    for (int i = 0; i < n; i++)
        items[i] = (sb_queue_drained){.id = c->items[i].id,
                                      .attempt = c->items[i].attempt,
                                      .result = c->items[i].result,
                                      .error = c->items[i].error,
                                      .source = c->items[i].source,
                                      .message_id = c->items[i].message_id};
    sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
    if (sb_queue_redeliver_ack(dr->w->redis, &o, dr->ws, items, (size_t)n, on_acked, c) == SB_OK) {
        dr->acking++;
        return;
    }
    for (int i = 0; i < n; i++) {
        on_settled(SB_ERR_UNAVAILABLE, NULL, "ack");
        ack_clear(&c->items[i]);
    }
    sb_free(c);
}

/* Queues the ack of delivered message |rec| (its id, sender and messageId, its attempt,
 * the agent's answer: all taken over) for the next batch. */
static void add_ack(drain *dr, sb_queue_record *rec, char *attempt, char *result, char *error)
{
    if (dr->nacks == dr->acks_cap) {
        dr->acks_cap = dr->acks_cap ? dr->acks_cap * 2 : 16;
        dr->acks = sb_realloc(dr->acks, (size_t)dr->acks_cap * sizeof(dr->acks[0]));
    }
    dr->acks[dr->nacks++] =
        (drain_ack){rec->id, attempt, result, error, rec->source, rec->message_id};
    rec->id = rec->source = rec->message_id = NULL;
}

/* Gives a leased message back, uncounted: the redelivery's leases count no delivery.
 * Only while the lease is still the one this drain took (its lease_until_ms). */
static void release(drain *dr, const sb_queue_record *rec)
{
    sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
    sb_queue_redeliver_release(dr->w->redis, &o, dr->ws, rec->id, rec->lease_until_ms, on_settled,
                               "release");
}

static void log_push(const drain_push *p, sb_reason reason, const char *detail, int status)
{
    sb_decision dc = {.message_id = p->rec.message_id,
                      .workspace = p->dr->ws,
                      .kind = p->rec.kind,
                      .source = p->rec.source,
                      .method = p->rec.method,
                      .mode = reason == SB_REASON_NONE ? "push" : "poll",
                      .reason = reason,
                      .detail = detail,
                      .http_status = status,
                      .duration_ms = (double)(sb_now_mono_us() - p->started_us) / 1000.0,
                      .task_id = p->rec.task_id ? p->rec.task_id : "",
                      .queue_id = p->rec.id,
                      .drained = 1};
    sb_deliver_log(&dc, NULL); /* no tree: the drain's line was 7 % of its CPU */
}

/* The push's attempt in the message's delivery record (identical failures in a row
 * collapse into one), and its outcome in the workspace's counters; both
 * fire-and-forget, sent before the release. A delivered push's attempt text is handed
 * to |*delivered| instead (it goes into the ack batch). */
static void record_push(const drain_push *p, sb_reason reason, const char *detail, int status,
                        uint64_t duration_us, char **delivered)
{
    drain *dr = p->dr;
    double ms = (double)duration_us / 1000.0;
    const char *outcome = reason == SB_REASON_NONE ? "delivered" : "failed";
    char *text = sb_deliver_attempt_text(p->began_ms, outcome, reason, detail, status, ms, 1);
    sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
    if (reason == SB_REASON_NONE) {
        *delivered = text;
    } else {
        char sig[512], at[32], at_json[40];
        snprintf(sig, sizeof(sig), "%s|%d|%s", sb_reason_name(reason), status, detail);
        sb_format_iso8601(p->began_ms, at);
        snprintf(at_json, sizeof(at_json), "\"%s\"", at); /* "at" as the text has it */
        sb_queue_add_attempt(dr->w->redis, &o, dr->ws, p->rec.id, text, sig, at_json, on_settled,
                             "attempt");
        sb_free(text);
    }
    sb_record_note n = {.ws = dr->ws,
                        .kind = reason == SB_REASON_NONE ? SB_NOTE_DELIVERED : SB_NOTE_FAILED,
                        .reason = reason,
                        .detail = detail,
                        .http_status = status,
                        .pushed = 1,
                        .duration_ms = ms,
                        .at_ms = p->began_ms,
                        .retain_ms = o.retain_ms};
    sb_record_note_send(dr->w->redis, &n);
}

/* The agent's JSON-RPC result and error as JSON texts (either may stay NULL): the bytes
 * the agent wrote, where classifying the answer found them (|where|; no tree, no
 * re-encoding: this was a fifth of the drain's CPU per message), else re-encoded by
 * jansson. */
static void split_answer(const sb_upstream_result *res, const sb_a2a_answer *where, char **result,
                         char **error)
{
    *result = *error = NULL;
    size_t len = res->body ? evbuffer_get_length(res->body) : 0;
    if (len == 0)
        return;
    const char *body = (const char *)evbuffer_pullup(res->body, -1);
    if (where->n > 0) { /* the common case */
        *(where->is_error ? error : result) = sb_strndup(body + where->off, where->n);
        return;
    }
    json_t *j = json_loadb(body, len, 0, NULL);
    const json_t *r = json_object_get(j, "result");
    const json_t *e = json_object_get(j, "error");
    if (r != NULL)
        *result = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    else if (e != NULL)
        *error = json_dumps(e, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    json_decref(j);
}

/* The window after a delivered push that took |us|: one more slot while pushes answer
 * about as fast as the quickest one of this run did (within half of it plus
 * WINDOW_SLACK_US), one less when they take longer — the agent is queueing them, not
 * working on them side by side. A fast agent is at full width within a few round trips;
 * one that answers one message at a time stays near one or two in flight, so none of
 * its pushes waits long enough behind the others to time out. */
static void adapt_window(drain *dr, uint64_t us)
{
    if (dr->base_us == 0 || us < dr->base_us)
        dr->base_us = us;
    if (us <= dr->base_us + dr->base_us / 2 + WINDOW_SLACK_US) {
        if (dr->window < dr->cap)
            dr->window++;
    } else if (dr->window > 1) {
        dr->window--;
    }
}

static void remember(drain *dr, sb_reason reason, const char *detail, int status)
{
    dr->last_reason = reason;
    dr->last_status = status;
    snprintf(dr->last_detail, sizeof(dr->last_detail), "%s", detail ? detail : "");
}

static void on_drain_push(const sb_upstream_result *res, void *arg)
{
    drain_push *p = arg;
    drain *dr = p->dr;
    char detail[384];
    sb_a2a_answer where;
    sb_reason reason = sb_deliver_classify(res, dr->ep->url_str, detail, sizeof(detail), &where);
    sb_circuit_end(dr->ws, reason);
    sb_metrics_push_observe(res->duration_us);
    count_inflight(dr, -1);
    log_push(p, reason, detail, res->status);
    char *attempt = NULL;
    record_push(p, reason, detail, res->status, res->duration_us, &attempt);
    if (reason != SB_REASON_NONE || (dr->failed == 0 && !dr->refused))
        remember(dr, reason, detail, res->status); /* a failure is never overwritten by a
                                                    * success still in flight */
    if (reason == SB_REASON_NONE) {
        char *result, *error;
        split_answer(res, &where, &result, &error);
        add_ack(dr, &p->rec, attempt, result, error);
        dr->pushed++;
        adapt_window(dr, res->duration_us);
        ewma(&dr->push_us, res->duration_us);
        sb_metrics_redelivery("delivered");
    } else {
        release(dr, &p->rec);
        dr->failed++;
        sb_metrics_redelivery("failed");
        halt(dr, sb_reason_name(reason));
    }
    sb_queue_record_clear(&p->rec);
    sb_free(p);
    drain_step(dr);
}

/* A leased message as the drain keeps it until its push: what the push needs (the
 * request included), taken over from the lease's record, and its lease's end: |lease_ms|
 * from |sent_us|, when the lease call was sent. The script began the lease (its
 * lease_until_ms, Redis' now + |lease_ms|) after that, so the end is never overestimated
 * (by at most the call's round trip less). */
static drain_push *prepare(drain *dr, sb_queue_record *rec, int64_t lease_ms, uint64_t sent_us)
{
    drain_push *p = sb_calloc(1, sizeof(*p));
    p->dr = dr;
    p->rec.lease_until_ms = rec->lease_until_ms; /* the release's guard (0: none) */
    p->lease_end_us = sent_us + (uint64_t)lease_ms * 1000;
    /* taken from the lease's record (queue.h, sb_queue_batch), not copied */
    char **take[] = {&rec->id,     &rec->task_id,     &rec->message_id, &rec->kind,   &rec->source,
                     &rec->method, &rec->a2a_version, &rec->user,       &rec->request};
    char **into[] = {&p->rec.id,          &p->rec.task_id, &p->rec.message_id,
                     &p->rec.kind,        &p->rec.source,  &p->rec.method,
                     &p->rec.a2a_version, &p->rec.user,    &p->rec.request};
    for (size_t i = 0; i < SB_ARRAY_LEN(take); i++) {
        *into[i] = *take[i];
        *take[i] = NULL;
    }
    p->rec.request_len = rec->request_len;
    return p;
}

static void push_free(drain_push *p)
{
    sb_queue_record_clear(&p->rec);
    sb_free(p);
}

/* Pushes |p| (taken over); on a refusal by the circuit breaker (the open circuit's
 * cool-down, or its half-open probe already in flight) or the in-flight limit releases
 * the message and stops. A push admitted while the circuit is half-open is its probe.
 * The one exception: live pushes that took the last slots (busy) while pushes of this
 * drain are in flight only narrow its window to those; it goes on as they end. */
static void start_push(drain *dr, drain_push *p)
{
    const sb_queue_record *rec = &p->rec;
    char detail[256];
    sb_reason r = sb_circuit_begin(dr->ws, dr->ep->max_concurrency, detail, sizeof(detail));
    if (r == SB_REASON_BUSY && dr->inflight > 0 && !dr->halted) {
        release(dr, rec);
        push_free(p);
        dr->window = dr->inflight;
        return;
    }
    if (r != SB_REASON_NONE) {
        release(dr, rec);
        push_free(p);
        if (!dr->halted) {
            dr->refused = 1;
            remember(dr, r, detail, 0);
            sb_metrics_redelivery("refused");
        }
        halt(dr, sb_reason_name(r));
        return;
    }
    p->started_us = sb_now_mono_us();
    p->began_ms = sb_now_wall_ms();
    int chat = rec->kind != NULL && strcmp(rec->kind, "chat") == 0;
    sb_deliver_push_hdrs ph;
    sb_deliver_push_headers_view(
        &ph, dr->ep, rec->message_id ? rec->message_id : "", rec->source ? rec->source : "",
        rec->kind ? rec->kind : "delegation", rec->a2a_version, chat ? rec->user : NULL);
    struct evbuffer *body = evbuffer_new();
    if (rec->request != NULL)
        evbuffer_add(body, rec->request, rec->request_len);
    count_inflight(dr, 1);
    sb_deliver_push(dr->w->upstream, dr->ep, &ph.list, body, on_drain_push, p);
    evbuffer_free(body);
    sb_deliver_push_headers_wipe(&ph);
}

/* 1 when |p|'s lease cannot cover a whole push (sb_drain_lease_fits): the caller frees
 * |p| without pushing it. Its lease is given back when enough of it is left for the
 * release to land while it is ours (the run leases again: the message is at the front of
 * ready), else left to end (the run then makes itself due by then, conclude). Neither
 * counts a delivery, notes an attempt or stops the run. */
static int lease_too_short(drain *dr, const drain_push *p)
{
    int64_t bound = push_bound_ms(dr);
    int64_t left = ((int64_t)p->lease_end_us - (int64_t)sb_now_mono_us()) / 1000;
    sb_drain_lease_fit fit = sb_drain_lease_fits(left, bound);
    if (fit == SB_DRAIN_LEASE_PUSH)
        return 0;
    if (fit == SB_DRAIN_LEASE_RELEASE) {
        release(dr, &p->rec);
        if (dr->stopped && !dr->halted) { /* "queue empty" no longer: lease it again */
            dr->stopped = 0;
            dr->why = NULL;
        }
    } else {
        int64_t end = sb_now_wall_ms() + (left > 0 ? left : 0);
        if (end > dr->dropped_end_ms)
            dr->dropped_end_ms = end;
    }
    sb_log(SB_LOG_WARN, "drain_lease_short",
           "workspace %s: message %s: lease too short for a push (%lld ms left, a push may take "
           "%lld ms + %d ms to spare); %s",
           dr->ws, p->rec.id, (long long)left, (long long)bound, SB_DRAIN_PUSH_SAFETY_MS,
           fit == SB_DRAIN_LEASE_RELEASE ? "released for a fresh lease"
                                         : "left to come back when its lease ends");
    return 1;
}

/* Starts buffered messages while slots are free, oldest first, each only on a lease
 * that covers its push; once stopped, gives every buffered message back. */
static void pump(drain *dr)
{
    while (dr->buf_head != NULL && (dr->halted || can_push(dr))) {
        drain_push *p = dr->buf_head;
        dr->buf_head = p->next;
        if (dr->buf_head == NULL)
            dr->buf_tail = NULL;
        dr->nbuf--;
        buffered_add(dr, -(long long)p->rec.request_len);
        p->next = NULL;
        if (dr->halted) {
            release(dr, &p->rec);
            push_free(p);
        } else if (lease_too_short(dr, p)) {
            push_free(p);
        } else {
            start_push(dr, p);
        }
    }
}

/* 1 while the registry still has |dr|'s workspace in push mode at the URL this drain
 * pushes to (a re-register in between must win). */
static int still_pushable(const drain *dr)
{
    sb_endpoint *ep = sb_registry_get(dr->ws);
    int ok = ep != NULL && ep->mode == SB_MODE_PUSH && ep->url_str != NULL &&
             dr->ep->url_str != NULL && strcmp(ep->url_str, dr->ep->url_str) == 0;
    sb_endpoint_release(ep);
    return ok;
}

static void on_drain_lease(int err, const sb_queue_batch *b, void *arg)
{
    lease_call *lc = arg;
    drain *dr = lc->dr;
    ewma(&dr->lease_rtt_us, sb_now_mono_us() - lc->sent_us);
    dr->leasing--;
    dr->requested -= lc->asked;
    int64_t lease_ms = lc->lease_ms;
    uint64_t sent_us = lc->sent_us;
    sb_free(lc);
    if (err != SB_OK) {
        abandon(dr, err == SB_ERR_UNAVAILABLE ? "Redis unavailable" : "Redis error");
    } else {
        if (b->n > 0 && !dr->leased_any && !dr->scheduled) {
            /* Should this instance die holding these messages, the index brings them
             * back when their lease ends; conclude() sets the real time. */
            sb_retry_due_nx(dr->w->redis, dr->ws,
                            sb_now_wall_ms() + lease_ms + RECHECK_AFTER_LEASE_MS);
        }
        if (b->n > 0)
            dr->leased_any = 1;
        /* A register since this drain began may have made the workspace poll mode, or
         * moved its URL: what it leased then goes back to the queue, untouched. */
        if (b->n > 0 && !still_pushable(dr))
            abandon(dr, "the workspace's registration changed (poll mode or another URL)");
        for (size_t i = 0; i < b->n; i++) {
            if (dr->halted) {
                release(dr, &b->items[i]);
            } else {
                if (dr->watched != 0) /* unknown counts as some */
                    sb_notify_task_state(dr->w, dr->ws, b->items[i].task_id, "working");
                drain_push *p = prepare(dr, &b->items[i], lease_ms, sent_us);
                if (dr->buf_tail != NULL)
                    dr->buf_tail->next = p;
                else
                    dr->buf_head = p;
                dr->buf_tail = p;
                dr->nbuf++;
                buffered_add(dr, (long long)p->rec.request_len);
                pump(dr);
            }
        }
        if (b->ready == 0) {
            /* Leases still under way may be this drain's own: the recheck after the
             * last ack (conclude) tells those of others apart. */
            int own = dr->inflight > 0 || dr->nacks > 0 || dr->acking > 0 || dr->leasing > 0 ||
                      dr->nbuf > 0;
            dr->next_lease_end_ms = b->n > 0 || own ? -1 : b->next_lease_end_ms;
            stop(dr, "queue empty");
        }
    }
    drain_step(dr);
}

/* The endpoint of |ws| when a redelivery may run now: push mode with a URL, a live lease
 * and spare capacity; else NULL with |why| set. |*cap| gets the drain's share of the
 * capacity (pushes at a time), |*limit| the endpoint's in-flight limit (0: none). */
static sb_endpoint *pushable(const sb_worker *w, const char *ws, int *cap, int *limit,
                             sb_drain_start *why)
{
    sb_endpoint *ep = sb_registry_get(ws);
    if (ep == NULL || ep->mode != SB_MODE_PUSH || ep->url_str == NULL ||
        (ep->lease_expires_at_ms != 0 && ep->lease_expires_at_ms <= sb_now_wall_ms())) {
        sb_endpoint_release(ep);
        *why = SB_DRAIN_NOT_PUSH;
        return NULL;
    }
    /* The limit live pushes have too (sb_circuit_begin): max_concurrency, else
     * --max-inflight-per-endpoint. The drain keeps a quarter of it free for them. */
    *limit = ep->max_concurrency > 0 ? ep->max_concurrency : w->cfg->max_inflight_per_endpoint;
    *cap = *limit > 0 ? *limit - *limit / 4 : UNLIMITED_CAP;
    if (ep->max_concurrency > 0) {
        int spare = ep->max_concurrency - ep->active_tasks; /* the last heartbeat's word */
        if (spare <= 0) {
            sb_endpoint_release(ep);
            *why = SB_DRAIN_NO_CAPACITY;
            return NULL;
        }
        if (spare < *cap)
            *cap = spare;
    }
    if (*cap < 1)
        *cap = 1;
    if (ep->ordered)
        *cap = 1; /* in order: the next push only after the last was answered */
    return ep;
}

static sb_drain_start start(sb_worker *w, const char *ws, int scheduled)
{
    if (w == NULL || w->draining || w->upstream == NULL)
        return SB_DRAIN_STOPPING;
    int cap, limit;
    sb_drain_start why = SB_DRAIN_STARTED;
    sb_endpoint *ep = pushable(w, ws, &cap, &limit, &why);
    if (ep == NULL)
        return why;
    if (!claim(ws)) {
        sb_endpoint_release(ep);
        return SB_DRAIN_RUNNING;
    }
    runs_here++;
    drain *dr = sb_calloc(1, sizeof(*dr));
    dr->w = w;
    snprintf(dr->ws, sizeof(dr->ws), "%s", ws);
    dr->ep = ep;
    dr->cap = cap;
    dr->limit = limit;
    dr->window = 1; /* the first push may be the circuit's half-open probe */
    dr->scheduled = scheduled;
    dr->next_lease_end_ms = -1;
    dr->watched = -1;
    dr->started_us = sb_now_mono_us();
    if (sb_retry_own(w->redis, ws, sb_sync_instance_id(), on_owned, dr) == SB_OK)
        dr->pending++;
    else
        abandon(dr, "Redis unavailable");
    drain_step(dr);
    return SB_DRAIN_STARTED;
}

void sb_drain_kick(sb_worker *w, const char *ws)
{
    start(w, ws, 0);
}

sb_drain_start sb_drain_scheduled(sb_worker *w, const char *ws)
{
    return start(w, ws, 1);
}
