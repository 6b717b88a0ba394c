/*
 * handler_metrics.c — GET /metrics (public, SPEC §2, §5.1): the exposition.
 *
 * Counting lives on the ground floor (metrics.c), so every module can count without
 * reaching up; reading the state of the modules above it — registered endpoints, open
 * circuits, whether Redis and the replica are up, the workers' connections and idle
 * agent connections — is this handler's job, at the top of the house, where it may
 * include them all. It gathers that state into an sb_metrics_state and lets metrics.c
 * write the text. A scrape never touches Redis: every value is in memory, so /metrics
 * answers even while Redis is down (and says so in switchboard_redis_up).
 *
 * Never: require a token (Prometheus scrapes without one; restrict /metrics at the
 * network level instead), or let a scrape be cached by an intermediary.
 */
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/drain.h"
#include "switchboard/handlers.h"
#include "switchboard/metrics.h"
#include "switchboard/procstat.h"
#include "switchboard/redis.h"
#include "switchboard/redis_safety.h"
#include "switchboard/registry.h"
#include "switchboard/sync.h"
#include "switchboard/upstream.h"
#include "switchboard/worker.h"

#include <event2/buffer.h>
#include <string.h>

static void count_endpoint(const sb_endpoint *ep, void *arg)
{
    sb_metrics_state *st = arg;
    if (ep->mode == SB_MODE_POLL)
        st->endpoints_poll++;
    else
        st->endpoints_push++;
}

void sb_metrics_read_state(sb_metrics_state *st, const sb_worker *w)
{
    memset(st, 0, sizeof(*st));
    sb_registry_foreach(count_endpoint, st);
    st->circuits_open = sb_circuit_open_count();
    st->redis_up = sb_sync_ready();
    st->redis_eviction_risk = sb_redis_safety_risk();
    st->drain_buffered = sb_drain_buffered_bytes();
    if (w == NULL)
        return;
    for (int i = 0; i < w->nall; i++) {
        const sb_worker *o = &w->all[i];
        /* Owned by that worker's thread: a relaxed read of a word it writes. */
        st->connections += __atomic_load_n(&o->nconns, __ATOMIC_RELAXED);
        st->inflight += __atomic_load_n(&o->inflight, __ATOMIC_RELAXED);
        st->upstream_idle += sb_upstream_pool_idle(o->upstream);
        if (!sb_redis_is_up(o->redis))
            st->redis_up = 0;
    }
}

void sb_handle_metrics(sb_request *req)
{
    sb_metrics_state st;
    sb_metrics_read_state(&st, req->worker);
    struct evbuffer *body = sb_evbuffer_new();
    sb_metrics_render(body, &st);
    sb_procstat_render(body);
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Cache-Control", "no-store");
    sb_response_send(req, 200, &h, SB_METRICS_CONTENT_TYPE, body);
    sb_headers_clear(&h);
    evbuffer_free(body);
}
