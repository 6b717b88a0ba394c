/*
 * drain_watch.c — watching an unreachable agent between retries of its redelivery
 * (drain.h, drain.c's watch_agent; split from drain.c).
 *
 * After a run that failed because the agent could not be reached at all (connection
 * refused or timed out, no DNS answer), this worker fetches the agent's card every
 * WATCH_EVERY_MS until the next scheduled retry. The first answer starts a redelivery
 * at once (and ends the circuit's cool-down, so that push is its half-open probe): an
 * agent that comes back gets its backlog within seconds, whatever the back-off had
 * reached. It costs one connection attempt per watch and tick, and no Redis at all.
 * An agent that answers but fails (5xx, 404, ...) is not watched: for it, only the
 * back-off decides. The watches are per worker thread (no locks), at most WATCH_MAX.
 *
 * Never: outlive the worker's loop (sb_drain_thread_clear frees them), or probe a
 * workspace that is no longer push mode.
 */
#include "switchboard/drain.h"
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/probe.h"
#include "switchboard/registry.h"
#include "switchboard/util.h"
#include "switchboard/worker.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "drain_int.h"

#define WATCH_EVERY_MS 2000
#define WATCH_MAX 1024 /* per worker thread */

typedef struct watch {
    struct watch *next;
    sb_worker *w;
    char ws[SB_WS_ID_MAX + 1];
    int64_t until_ms;
    sb_endpoint *probing; /* the endpoint of the probe in flight (a reference), or NULL */
    int gone;             /* to be freed when its probe ends */
} watch;

static __thread watch *watches;
static __thread size_t nwatches;
static __thread struct event *watch_ev;

static void watch_unlink(watch *x)
{
    for (watch **pp = &watches; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            nwatches--;
            break;
        }
    }
    if (watches == NULL && watch_ev != NULL)
        event_del(watch_ev); /* kept for the next watch: it may be the running callback */
}

static void on_watch_probe(json_t *result, void *arg)
{
    watch *x = arg;
    int reachable = json_is_true(json_object_get(result, "reachable"));
    json_decref(result);
    sb_endpoint_release(x->probing);
    x->probing = NULL;
    if (!x->gone && reachable && !x->w->draining) {
        sb_log(SB_LOG_INFO, "redeliver_agent_back",
               "workspace %s: its agent answers again; redelivering now", x->ws);
        sb_circuit_probe_now(x->ws);
        sb_drain_kick(x->w, x->ws);
        x->gone = 1;
    }
    if (x->gone) {
        watch_unlink(x);
        sb_free(x);
    }
}

/* Fetches |x|'s agent card unless a fetch is under way; frees |x| when its time is up or
 * the workspace is no longer push mode. */
static void watch_probe(watch *x, int64_t now)
{
    if (x->probing != NULL)
        return;
    sb_endpoint *ep = x->w->draining ? NULL : sb_registry_get(x->ws);
    if (now >= x->until_ms || ep == NULL || ep->mode != SB_MODE_PUSH || ep->url_str == NULL) {
        sb_endpoint_release(ep);
        watch_unlink(x);
        sb_free(x);
    } else {
        x->probing = ep;
        sb_probe_agent_card(x->w->upstream, &ep->url, ep->url_str, ep->protocol, on_watch_probe, x);
    }
}

static void on_watch_tick(evutil_socket_t fd, short what, void *arg)
{
    int64_t now = sb_now_wall_ms();
    watch *x = watches;
    while (x != NULL) {
        watch *next = x->next;
        watch_probe(x, now);
        x = next;
    }
}

void sb_drain_thread_clear(void)
{
    while (watches != NULL) {
        watch *x = watches;
        watches = x->next;
        sb_endpoint_release(x->probing);
        sb_free(x);
    }
    nwatches = 0;
    if (watch_ev != NULL)
        event_free(watch_ev);
    watch_ev = NULL;
}

/* Watches |ws|'s agent (see drain_int.h). */
void sb_drain_watch(sb_worker *w, const char *ws, int64_t until_ms, int now)
{
    for (watch *x = watches; x != NULL; x = x->next) {
        if (!x->gone && strcmp(x->ws, ws) == 0) {
            x->until_ms = until_ms;
            if (now)
                watch_probe(x, sb_now_wall_ms());
            return;
        }
    }
    if (nwatches >= WATCH_MAX)
        return;
    watch *x = sb_calloc(1, sizeof(*x));
    x->w = w;
    snprintf(x->ws, sizeof(x->ws), "%s", ws);
    x->until_ms = until_ms;
    x->next = watches;
    watches = x;
    nwatches++;
    if (watch_ev == NULL)
        watch_ev = event_new(w->base, -1, EV_PERSIST, on_watch_tick, NULL);
    if (!event_pending(watch_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = {WATCH_EVERY_MS / 1000, (WATCH_EVERY_MS % 1000) * 1000};
        event_add(watch_ev, &tv);
    }
    if (now)
        watch_probe(x, sb_now_wall_ms());
}
