/*
 * drain.c — the recovery drain (see drain.h).
 *
 * Life of a drain: sb_drain_kick() checks the endpoint in the replica (push mode, live
 * lease, spare capacity), claims the workspace in the process-wide set of running
 * drains, and starts stepping on the caller's worker loop. Each step leases as many
 * messages as there are free slots (one lease call at a time), pushes each one through
 * the worker's upstream pool with the same headers and the same outcome rules as a
 * normal push (deliver.c), acks it with the agent's result when the agent took it, or
 * releases it and stops at the first failure. The drain ends when it may lease no more
 * (empty queue, a failure, a refusal by the circuit breaker, the worker stopping) and
 * nothing of it is in flight; it then leaves the set and frees itself.
 *
 * Every callback ends with drain_step(), the only place that may free the drain, and
 * touches nothing after it.
 *
 * Never: push a message it has not leased, or count a delivery for a push that never
 * reached the agent.
 */
#include "switchboard/drain.h"
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/deliver.h"
#include "switchboard/notify.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/registry.h"
#include "switchboard/worker.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define LEASE_MARGIN_MS 5000

typedef struct drain {
    sb_worker *w;
    char ws[SB_WS_ID_MAX + 1];
    sb_endpoint *ep; /* holds a reference */
    int slots;       /* pushes at a time */
    int inflight;    /* pushes under way */
    int leasing;     /* a lease call is outstanding */
    int stopped;     /* lease no more */
    int pushed;      /* messages the agent took */
    int failed;      /* pushes that failed (at most a few: the drain stops at the first) */
    const char *why; /* why it stopped */
    uint64_t started_us;
} drain;

typedef struct drain_push {
    drain *dr;
    sb_queue_record rec; /* owned copy of the leased message (strings) */
    uint64_t started_us;
    int64_t began_ms; /* wall clock, for the delivery record */
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

int sb_drain_running(void)
{
    pthread_mutex_lock(&g_drains.lock);
    int n = g_drains.running ? (int)sb_strmap_count(g_drains.running) : 0;
    pthread_mutex_unlock(&g_drains.lock);
    return n;
}

static void finish(drain *dr)
{
    if (dr->pushed > 0 || dr->failed > 0)
        sb_log(SB_LOG_INFO, "drain",
               "workspace %s: %d message(s) drained, %d failed; stopped: %s (%.1f ms)", dr->ws,
               dr->pushed, dr->failed, dr->why ? dr->why : "done",
               (double)(sb_now_mono_us() - dr->started_us) / 1000.0);
    unclaim(dr->ws);
    sb_endpoint_release(dr->ep);
    sb_free(dr);
}

static void stop(drain *dr, const char *why)
{
    if (!dr->stopped) {
        dr->stopped = 1;
        dr->why = why;
    }
}

static void on_drain_lease(int err, const sb_queue_batch *b, void *arg);

/* Leases for the free slots, or ends the drain. The caller touches |dr| no more. */
static void drain_step(drain *dr)
{
    if (!dr->stopped && dr->w->draining)
        stop(dr, "switchboard is stopping");
    if (!dr->stopped && !dr->leasing && dr->inflight < dr->slots) {
        int want = dr->slots - dr->inflight;
        if (want > SB_QUEUE_LEASE_MAX)
            want = SB_QUEUE_LEASE_MAX;
        const sb_config *cfg = dr->w->cfg;
        int64_t lease_ms =
            (int64_t)cfg->push_timeout_s * 1000 + cfg->connect_timeout_ms + LEASE_MARGIN_MS;
        sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
        if (sb_queue_lease(dr->w->redis, &o, dr->ws, want, lease_ms, on_drain_lease, dr) == SB_OK)
            dr->leasing = 1;
        else
            stop(dr, "Redis unavailable");
    }
    if (dr->stopped && !dr->leasing && dr->inflight == 0)
        finish(dr);
}

static void on_settled(int err, const sb_queue_record *rec, void *arg)
{
    const char *what = arg;
    if (err != SB_OK)
        sb_log(SB_LOG_WARN, "drain_settle_failed",
               "%s of a drained message failed (%s); its lease ends on its own", what,
               err == SB_ERR_UNAVAILABLE ? "Redis unavailable"
               : err == SB_ERR_FORBIDDEN ? "state changed"
                                         : "Redis error");
}

static void on_drained_ack(int err, const sb_queue_record *rec, void *arg)
{
    if (err == SB_OK)
        sb_metrics_drained();
    else
        on_settled(err, rec, arg);
}

/* Gives a leased message back; |uncount| when the agent never saw it. */
static void release(drain *dr, const sb_queue_record *rec, int uncount)
{
    sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
    sb_queue_nack(dr->w->redis, &o, dr->ws, rec->id, uncount, on_settled, "release");
}

static char *dup_record_str(const char *s)
{
    return s ? sb_strdup(s) : NULL;
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
                      .duration_ms = (double)(sb_now_mono_us() - p->started_us) / 1000.0};
    sb_deliver_log(&dc,
                   json_pack("{s:b,s:o,s:o}", "drained", 1, "queue_id", sb_json_text(p->rec.id),
                             "task_id", sb_json_text(p->rec.task_id)));
}

/* The push's attempt in the message's delivery record, and its outcome in the
 * workspace's counters; both fire-and-forget, sent before the ack or release. */
static void record_push(const drain_push *p, sb_reason reason, const char *detail, int status,
                        uint64_t duration_us)
{
    drain *dr = p->dr;
    double ms = (double)duration_us / 1000.0;
    json_t *a = sb_deliver_attempt(p->began_ms, reason == SB_REASON_NONE ? "delivered" : "failed",
                                   reason, detail, status, ms);
    json_object_set_new(a, "drained", json_true());
    char *text = json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(a);
    sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
    sb_queue_add_attempt(dr->w->redis, &o, dr->ws, p->rec.id, text, on_settled, "attempt");
    sb_free(text);
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

/* The agent's JSON-RPC result and error as JSON texts (either may stay NULL). */
static void split_answer(const sb_upstream_result *res, char **result, char **error)
{
    *result = *error = NULL;
    size_t len = res->body ? evbuffer_get_length(res->body) : 0;
    if (len == 0)
        return;
    json_t *j = json_loadb((const char *)evbuffer_pullup(res->body, -1), len, 0, NULL);
    const json_t *r = json_object_get(j, "result");
    const json_t *e = json_object_get(j, "error");
    if (r != NULL)
        *result = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    else if (e != NULL)
        *error = json_dumps(e, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    json_decref(j);
}

static void on_drain_push(const sb_upstream_result *res, void *arg)
{
    drain_push *p = arg;
    drain *dr = p->dr;
    char detail[384];
    sb_reason reason = sb_deliver_classify(res, dr->ep->url_str, detail, sizeof(detail));
    sb_circuit_end(dr->ws, reason);
    sb_metrics_push_observe(res->duration_us);
    dr->inflight--;
    log_push(p, reason, detail, res->status);
    record_push(p, reason, detail, res->status, res->duration_us);
    sb_queue_opts o = sb_queue_opts_of(dr->w->cfg);
    if (reason == SB_REASON_NONE) {
        char *result, *error;
        split_answer(res, &result, &error);
        sb_queue_ack(dr->w->redis, &o, dr->ws, p->rec.id, result, error, 1, on_drained_ack, "ack");
        sb_free(result);
        sb_free(error);
        dr->pushed++;
    } else {
        release(dr, &p->rec, !sb_reason_attempted(reason));
        dr->failed++;
        stop(dr, sb_reason_name(reason));
    }
    sb_queue_record_clear(&p->rec);
    sb_free(p);
    drain_step(dr);
}

/* Pushes one leased message; on a refusal by the circuit breaker releases it and stops. */
static void start_push(drain *dr, const sb_queue_record *rec)
{
    char detail[256];
    sb_reason r = sb_circuit_begin(dr->ws, dr->ep->max_concurrency, detail, sizeof(detail));
    if (r != SB_REASON_NONE) {
        release(dr, rec, 1);
        stop(dr, sb_reason_name(r));
        return;
    }
    drain_push *p = sb_calloc(1, sizeof(*p));
    p->dr = dr;
    p->started_us = sb_now_mono_us();
    p->began_ms = sb_now_wall_ms();
    p->rec.id = dup_record_str(rec->id);
    p->rec.task_id = dup_record_str(rec->task_id);
    p->rec.message_id = dup_record_str(rec->message_id);
    p->rec.kind = dup_record_str(rec->kind);
    p->rec.source = dup_record_str(rec->source);
    p->rec.method = dup_record_str(rec->method);
    int chat = rec->kind != NULL && strcmp(rec->kind, "chat") == 0;
    sb_headers h;
    sb_headers_init(&h);
    sb_deliver_push_headers(&h, dr->ep, rec->message_id ? rec->message_id : "",
                            rec->source ? rec->source : "", rec->kind ? rec->kind : "delegation",
                            rec->a2a_version, chat ? rec->user : NULL);
    struct evbuffer *body = evbuffer_new();
    if (rec->request != NULL)
        evbuffer_add(body, rec->request, rec->request_len);
    dr->inflight++;
    sb_deliver_push(dr->w->upstream, dr->ep, &h, body, on_drain_push, p);
    evbuffer_free(body);
    sb_headers_clear(&h);
}

static void on_drain_lease(int err, const sb_queue_batch *b, void *arg)
{
    drain *dr = arg;
    dr->leasing = 0;
    if (err != SB_OK) {
        stop(dr, err == SB_ERR_UNAVAILABLE ? "Redis unavailable" : "Redis error");
    } else {
        for (size_t i = 0; i < b->n; i++) {
            if (dr->stopped) {
                release(dr, &b->items[i], 1);
            } else {
                sb_notify_task_state(dr->w, dr->ws, b->items[i].task_id, "working");
                start_push(dr, &b->items[i]);
            }
        }
        if (b->ready == 0)
            stop(dr, "queue empty");
    }
    drain_step(dr);
}

void sb_drain_kick(sb_worker *w, const char *ws)
{
    if (w == NULL || w->draining || w->upstream == NULL)
        return;
    sb_endpoint *ep = sb_registry_get(ws);
    if (ep == NULL || ep->mode != SB_MODE_PUSH || ep->url_str == NULL ||
        (ep->lease_expires_at_ms != 0 && ep->lease_expires_at_ms <= sb_now_wall_ms())) {
        sb_endpoint_release(ep);
        return;
    }
    int slots = 1; /* no max_concurrency: one at a time */
    if (ep->max_concurrency > 0) {
        slots = ep->max_concurrency - ep->active_tasks;
        if (slots <= 0) {
            sb_endpoint_release(ep);
            return;
        }
    }
    if (!claim(ws)) {
        sb_endpoint_release(ep);
        return;
    }
    drain *dr = sb_calloc(1, sizeof(*dr));
    dr->w = w;
    snprintf(dr->ws, sizeof(dr->ws), "%s", ws);
    dr->ep = ep;
    dr->slots = slots;
    dr->started_us = sb_now_mono_us();
    drain_step(dr);
}
