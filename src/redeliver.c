/*
 * redeliver.c — the redelivery scheduler (see redeliver.h).
 *
 * One persistent timer on worker 0's loop. Every other tick renews (or tries to take)
 * the scheduler lease; while held, every tick sends one bounded scan of the due-time
 * index, never two at once. Each due workspace gets its due time pushed ahead, then a
 * drain on this loop; what the drain finds decides the next due time (drain.c).
 *
 * Never: scan without the lease, or start a drain for a workspace the replica says is
 * not push mode.
 */
#include "switchboard/redeliver.h"
#include "switchboard/common.h"
#include "switchboard/drain.h"
#include "switchboard/log.h"
#include "switchboard/retry.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"
#include "switchboard/worker.h"

#include <event2/event.h>

static struct {
    sb_worker *w;
    struct event *tick;
    unsigned ticks;
    int leader;   /* atomic: the lease is ours (as last renewed) */
    int renewing; /* a lease call is outstanding */
    int scanning; /* a scan is outstanding */
} g_sched;

int sb_redeliver_is_leader(void)
{
    return __atomic_load_n(&g_sched.leader, __ATOMIC_RELAXED);
}

static void set_leader(int held)
{
    int was = sb_redeliver_is_leader();
    __atomic_store_n(&g_sched.leader, held, __ATOMIC_RELAXED);
    if (held != was)
        sb_log(SB_LOG_INFO, "redeliver_scheduler", "instance %s %s the redelivery scheduler",
               sb_sync_instance_id(), held ? "now runs" : "no longer runs");
}

static void on_leader(int held, void *arg)
{
    g_sched.renewing = 0;
    set_leader(held == 1);
}

static void on_noop_clear(int err, void *arg)
{
}

static void on_due(int err, const char *const *ids, size_t n, void *arg)
{
    sb_worker *w = g_sched.w;
    g_sched.scanning = 0;
    if (err != SB_OK || w->draining)
        return;
    int64_t now = sb_now_wall_ms();
    for (size_t i = 0; i < n; i++) {
        /* Sent before the drain's own calls on this connection, so the drain's verdict
         * on the next due time always lands after it. */
        sb_retry_due_at(w->redis, ids[i], now + SB_REDELIVER_RUN_MS);
        switch (sb_drain_scheduled(w, ids[i])) {
        case SB_DRAIN_NOT_PUSH:
            sb_retry_due_clear(w->redis, ids[i], on_noop_clear, NULL);
            break;
        case SB_DRAIN_NO_CAPACITY:
            sb_retry_due_at(w->redis, ids[i], now + SB_RETRY_FIRST_MS * 5);
            break;
        default:
            break;
        }
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    sb_worker *w = g_sched.w;
    const char *me = sb_sync_instance_id();
    if (me[0] == '\0')
        return;
    if (w->draining) {
        if (sb_redeliver_is_leader()) {
            sb_retry_leader_release(w->redis, me);
            set_leader(0);
        }
        event_del(g_sched.tick);
        return;
    }
    if (g_sched.ticks++ % (1000 / SB_REDELIVER_TICK_MS) == 0 && !g_sched.renewing) {
        if (sb_retry_leader(w->redis, me, sb_now_wall_ms(), SB_REDELIVER_LEADER_TTL_MS, on_leader,
                            NULL) == SB_OK)
            g_sched.renewing = 1;
        else
            set_leader(0);
    }
    if (sb_redeliver_is_leader() && !g_sched.scanning &&
        sb_retry_due_scan(w->redis, sb_now_wall_ms(), on_due, NULL) == SB_OK)
        g_sched.scanning = 1;
}

void sb_redeliver_start(sb_worker *w)
{
    sb_retry_set_kick(sb_drain_kick);
    g_sched.w = w;
    g_sched.tick = event_new(w->base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, SB_REDELIVER_TICK_MS * 1000};
    event_add(g_sched.tick, &tv);
}

void sb_redeliver_stop(void)
{
    if (g_sched.tick != NULL)
        event_free(g_sched.tick);
    g_sched.tick = NULL;
    g_sched.w = NULL;
    __atomic_store_n(&g_sched.leader, 0, __ATOMIC_RELAXED);
}
