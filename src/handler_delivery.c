/*
 * handler_delivery.c — why a workspace gets push or poll, from whichever surface an
 * operator looks at (SPEC §3, §5.2, §5.3):
 *
 *   GET /workspaces/{ws}/messages/{message_id}     the delivery record (admin, the target,
 *                                                  the sender)
 *   GET /workspaces/{ws}/delivery                  the workspace view and its verdict
 *                                                  (admin or that workspace)
 *   GET /delivery                                  every troubled workspace, worst first
 *                                                  (admin)
 *   GET /workspaces/{ws}/.well-known/agent-card.json  the registered (else probed) card, its
 * interface URLs pointing at switchboard (admin or any workspace)
 *
 * Facts come from three places, each named in the answer: the registry replica
 * (registration, lease, probe), this instance's circuit breaker (circuit.scope
 * "instance"), and Redis (queue, counters, records: record.h, queue.h), read in one
 * script per request. A call record holds a request reference across the Redis round
 * trip; a client that went away gets nothing (the answers are no-ops).
 *
 * Never: show the inbound secret, or a record to a workspace that neither sent nor
 * received the message.
 */
#include "switchboard/a2a.h"
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/deliver.h"
#include "switchboard/handlers.h"
#include "switchboard/probe.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/refusal.h"
#include "switchboard/registry.h"
#include "switchboard/router.h"
#include "switchboard/worker.h"
#include "switchboard/util.h"
#include "switchboard/verdict.h"
#include "switchboard/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MESSAGE_ID_MAX 512

typedef struct view_call {
    sb_request *req; /* holds a reference */
    char ws[SB_WS_ID_MAX + 1];
    json_t *refusals; /* the workspace view: refused registrations, newest first; owned */
    char *mid;        /* the record route: the message id asked about; owned */
} view_call;

static view_call *call_new(sb_request *req, const char *ws)
{
    view_call *c = sb_calloc(1, sizeof(*c));
    sb_request_ref(req);
    c->req = req;
    snprintf(c->ws, sizeof(c->ws), "%s", ws ? ws : "");
    return c;
}

static void call_free(view_call *c)
{
    sb_request_unref(c->req);
    json_decref(c->refusals);
    sb_free(c->mid);
    sb_free(c);
}

static void answer_store_error(sb_request *req, int err)
{
    if (err == SB_ERR_UNAVAILABLE)
        sb_response_redis_unavailable(req);
    else
        sb_response_error(req, 500, "internal_error", "the delivery store failed; see the logs");
}

static json_t *reason_or_null(sb_reason r)
{
    return r == SB_REASON_NONE ? json_null() : json_string(sb_reason_name(r));
}

static json_t *str_or_null(const char *s)
{
    return s ? sb_json_text(s) : json_null();
}

/* ---- GET /workspaces/{ws}/messages/{message_id} ---- */

/* Decodes %XX escapes of a path segment into |out|; SB_ERR_INVALID for a bad escape, a
 * NUL byte or a result that does not fit. */
static int decode_segment(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = in; *p != '\0'; p++) {
        int c = (unsigned char)*p;
        if (c == '%') {
            char hex[3] = {p[1], p[1] ? p[2] : '\0', '\0'};
            char *end;
            long v = strtol(hex, &end, 16);
            if (hex[0] == '\0' || hex[1] == '\0' || *end != '\0' || v == 0)
                return SB_ERR_INVALID;
            c = (int)v;
            p += 2;
        }
        if (n + 1 >= cap)
            return SB_ERR_INVALID;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return n > 0 ? SB_OK : SB_ERR_INVALID;
}

/* Attempts as stored (times as "at_ms" from Lua or "at" from C) → SPEC §5.2 attempts. */
static json_t *attempts_of(const char *text)
{
    json_t *arr = text ? json_loads(text, 0, NULL) : NULL;
    if (!json_is_array(arr)) {
        json_decref(arr);
        return json_array();
    }
    size_t i;
    json_t *a;
    json_array_foreach(arr, i, a)
    {
        json_t *ms = json_object_get(a, "at_ms");
        if (json_is_integer(ms)) {
            json_object_set_new(a, "at", sb_json_iso8601(json_integer_value(ms)));
            json_object_del(a, "at_ms");
        }
    }
    return arr;
}

/* A queued message's record (its queue hash) in the SPEC §5.2 shape, plus queue facts. */
static json_t *queued_record(const sb_queue_record *q, const char *ws)
{
    json_t *o = json_object();
    json_object_set_new(o, "message_id", str_or_null(q->message_id));
    json_object_set_new(o, "task_id", str_or_null(q->task_id));
    json_object_set_new(o, "workspace_id", sb_json_text(ws));
    json_object_set_new(o, "kind", str_or_null(q->kind));
    json_object_set_new(o, "source", str_or_null(q->source));
    json_object_set_new(o, "mode", json_string("poll"));
    json_object_set_new(o, "reason", reason_or_null(q->reason));
    json_object_set_new(o, "detail", sb_json_text(q->detail ? q->detail : ""));
    json_object_set_new(o, "state", json_string(sb_queue_state_name(q->state)));
    json_object_set_new(o, "attempts", attempts_of(q->attempts));
    json_object_set_new(o, "created_at", sb_json_iso8601(q->enqueued_at_ms));
    json_object_set_new(o, "queue_id", str_or_null(q->id));
    json_object_set_new(o, "delivery_count", json_integer(q->delivery_count));
    json_object_set_new(o, "updated_at", sb_json_iso8601(q->updated_at_ms));
    json_object_set_new(o, "expires_at", sb_json_iso8601(q->expires_at_ms));
    json_object_set_new(o, "dead_reason", str_or_null(q->dead_reason));
    return o;
}

static void on_lookup(int err, const sb_queue_lookup_item *items, size_t n, void *arg)
{
    view_call *c = arg;
    sb_request *req = c->req;
    if (err != SB_OK) {
        answer_store_error(req, err);
        call_free(c);
        return;
    }
    /* The target and the admin see every sender's record of this messageId; another
     * workspace sees only the one it sent. Of those, the most recent is the answer. */
    const sb_identity *id = &req->ident;
    int all = id->kind == SB_IDENT_ADMIN || strcmp(id->workspace_id, c->ws) == 0;
    json_t *best = NULL, *sources = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!all && strcmp(items[i].source, id->workspace_id) != 0)
            continue;
        json_t *r = NULL;
        if (items[i].rec != NULL) {
            r = queued_record(items[i].rec, c->ws);
        } else {
            json_t *stored = json_loads(items[i].record_json, 0, NULL);
            if (json_is_object(stored))
                r = sb_deliver_pushed_record(stored, c->ws, c->mid);
            json_decref(stored);
        }
        if (r == NULL)
            continue;
        json_array_append_new(sources, sb_json_text(items[i].source));
        const char *at = json_string_value(json_object_get(r, "created_at"));
        const char *best_at = best ? json_string_value(json_object_get(best, "created_at")) : NULL;
        if (best == NULL || (at && (!best_at || strcmp(at, best_at) > 0))) {
            json_decref(best);
            best = r;
        } else {
            json_decref(r);
        }
    }
    if (best != NULL) {
        if (json_array_size(sources) > 1)
            json_object_set(best, "sources", sources);
        sb_response_json(req, 200, best, NULL);
    } else if (n > 0) {
        sb_response_error(req, 403, "forbidden",
                          "this token may see only the records of messages it sent to %s", c->ws);
    } else {
        sb_response_error(req, 404, "message_not_found",
                          "no delivery record for that message id in workspace %s", c->ws);
    }
    json_decref(sources);
    call_free(c);
}

void sb_handle_message_record(sb_request *req)
{
    const char *ws = req->params[0];
    char mid[MESSAGE_ID_MAX];
    if (decode_segment(req->params[1], mid, sizeof(mid)) != SB_OK) {
        sb_response_error(req, 404, "message_not_found", "not a message id");
        return;
    }
    view_call *c = call_new(req, ws);
    c->mid = sb_strdup(mid);
    sb_queue_opts o = sb_queue_opts_of(req->worker->cfg);
    if (sb_queue_lookup(req->worker->redis, &o, ws, mid, on_lookup, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
}

/* ---- the facts and the verdict ---- */

static double age_s(int64_t since_ms, int64_t now_ms)
{
    return since_ms > 0 && now_ms > since_ms ? (double)(now_ms - since_ms) / 1000.0 : 0.0;
}

/* Epoch ms of an ISO-8601 time as sb_format_iso8601 writes it ("2026-11-24T14:02:07.000Z"),
 * 0 when |s| is NULL or not of that form. */
static int64_t iso_ms(const char *s)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof(tm));
    if (s == NULL || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                            &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* One advertised URL of a card, borrowed from it: |*first| gets the first one seen,
 * |*matches| turns 1 when it names the same endpoint as |registered|. */
static void card_url_seen(const json_t *u, const char *registered, const char **first, int *matches)
{
    const char *s = json_string_value(u);
    if (s == NULL)
        return;
    if (*first == NULL)
        *first = s;
    if (sb_probe_same_url(s, registered))
        *matches = 1;
}

/* The card given in the register body, compared with the registered URL like the
 * probe compares the fetched one (every interface URL, v0.3 and v1.0): sets the card
 * facts of |f|, borrowing from |ep|. */
static void card_facts(const sb_endpoint *ep, sb_verdict_facts *f)
{
    if (ep->agent_card == NULL || ep->url_str == NULL)
        return;
    const char *first = NULL;
    int matches = 0;
    card_url_seen(json_object_get(ep->agent_card, "url"), ep->url_str, &first, &matches);
    static const char *const lists[] = {"additionalInterfaces", "supportedInterfaces"};
    for (size_t l = 0; l < 2; l++) {
        size_t i;
        const json_t *it;
        json_array_foreach(json_object_get(ep->agent_card, lists[l]), i, it)
        {
            card_url_seen(json_object_get(it, "url"), ep->url_str, &first, &matches);
        }
    }
    if (!matches && first != NULL) {
        f->card_mismatch = 1;
        f->card_advertised = first;
    }
}

/* The newest refusal of |refusals| (the view's list) into |f|; borrowed. */
static void refusal_facts(const json_t *refusals, sb_verdict_facts *f)
{
    const json_t *r = json_array_get(refusals, 0);
    if (!json_is_object(r))
        return;
    f->refused_at_ms = iso_ms(json_string_value(json_object_get(r, "at")));
    f->refused_route = json_string_value(json_object_get(r, "route"));
    f->refused_status = (int)json_integer_value(json_object_get(r, "status"));
    f->refused_code = json_string_value(json_object_get(r, "code"));
    f->refused_message = json_string_value(json_object_get(r, "message"));
    f->refused_token_workspace = json_string_value(json_object_get(r, "token_workspace"));
}

/* Gathers the verdict's facts; every pointer in |f| borrows from the arguments. */
static void facts_of(const char *ws, const sb_endpoint *ep, const json_t *circuit,
                     const sb_record_stats *st, int64_t now, sb_verdict_facts *f)
{
    memset(f, 0, sizeof(*f));
    f->workspace_id = ws;
    f->now_ms = now;
    if (ep != NULL) {
        f->registered = 1;
        f->poll_mode = ep->mode == SB_MODE_POLL;
        f->url = ep->url_str;
        f->lease_expires_at_ms = ep->lease_expires_at_ms;
        f->max_concurrency = ep->max_concurrency;
        f->ordered = ep->ordered;
        const json_t *urls = json_object_get(ep->probe, "advertised_urls");
        f->probe_mismatch = json_is_false(json_object_get(ep->probe, "matches"));
        f->probe_advertised = json_string_value(json_array_get(urls, 0));
        /* A card route that answers something else than a card (the incident's 404
         * everywhere) tells as much as no answer. */
        f->probe_unreachable =
            ep->probe != NULL && (json_is_false(json_object_get(ep->probe, "reachable")) ||
                                  json_is_null(json_object_get(ep->probe, "matches")));
        f->probe_at_ms = iso_ms(json_string_value(json_object_get(ep->probe, "probed_at")));
        f->registered_at_ms = ep->registered_at_ms;
        card_facts(ep, f);
    }
    const char *state = json_string_value(json_object_get(circuit, "state"));
    f->circuit_open = state != NULL && strcmp(state, "closed") != 0;
    f->circuit_failures = (int)json_integer_value(json_object_get(circuit, "consecutive_failures"));
    const char *last = json_string_value(json_object_get(circuit, "last_failure_reason"));
    f->circuit_last_reason = last ? sb_reason_from_name(last) : SB_REASON_NONE;
    f->inflight = (int)json_integer_value(json_object_get(circuit, "inflight"));
    f->circuit_retry_at_ms = iso_ms(json_string_value(json_object_get(circuit, "retry_at")));
    if (st != NULL) {
        f->pushes = st->pushes;
        f->fallbacks = st->fallbacks;
        f->streak_reason = st->streak_reason;
        f->streak_count = st->streak_count;
        f->streak_since_ms = st->streak_since_ms;
        f->fail_reason = st->fail_reason;
        f->fail_count = st->fail_count;
        f->fail_since_ms = st->fail_since_ms;
        f->fail_status = st->fail_status;
        f->last_delivered_ms = st->last_delivered_ms;
        f->last_push_status = st->last_push_status;
        f->last_lease_ms = st->last_lease_ms;
        f->depth = st->depth;
        f->leased = st->leased;
        f->dead_letters = st->dead_letters;
        f->oldest_age_s = age_s(st->oldest_enqueued_ms, now);
        f->redeliver_next_ms = st->redeliver_next_ms;
        f->redeliver_last_ms = st->redeliver_last_ms;
        f->redeliver_last_outcome = st->redeliver_last_outcome;
    }
}

static json_t *verdict_of(const sb_verdict_facts *f)
{
    char buf[1024];
    sb_verdict_write(f, buf, sizeof(buf));
    return sb_json_text(buf);
}

/* ---- GET /workspaces/{ws}/delivery ---- */

static json_t *counters_json(const sb_record_stats *st)
{
    json_t *by = json_object();
    for (int r = 1; r < SB_REASON__COUNT; r++)
        if (st->by_reason[r] > 0)
            json_object_set_new(by, sb_reason_name((sb_reason)r), json_integer(st->by_reason[r]));
    json_t *o = json_object();
    json_object_set_new(o, "pushes", json_integer(st->pushes));
    json_object_set_new(o, "fallbacks", json_integer(st->fallbacks));
    json_object_set_new(o, "fallbacks_by_reason", by);
    json_object_set_new(o, "first_fallback_at", sb_json_iso8601(st->first_fallback_ms));
    json_object_set_new(o, "last_fallback_at", sb_json_iso8601(st->last_fallback_ms));
    json_object_set_new(o, "last_reason", reason_or_null(st->last_reason));
    json_object_set_new(o, "last_detail", str_or_null(st->last_detail));
    json_object_set_new(o, "current_run",
                        st->streak_reason == SB_REASON_NONE
                            ? json_null()
                            : json_pack("{s:s,s:I,s:o}", "reason",
                                        sb_reason_name(st->streak_reason), "count",
                                        (json_int_t)st->streak_count, "since",
                                        sb_json_iso8601(st->streak_since_ms)));
    json_object_set_new(
        o, "failing_pushes",
        st->fail_reason == SB_REASON_NONE
            ? json_null()
            : json_pack("{s:s,s:I,s:o,s:o}", "reason", sb_reason_name(st->fail_reason), "count",
                        (json_int_t)st->fail_count, "since", sb_json_iso8601(st->fail_since_ms),
                        "http_status",
                        st->fail_status > 0 ? json_integer(st->fail_status) : json_null()));
    json_object_set_new(o, "last_delivered_at", sb_json_iso8601(st->last_delivered_ms));
    json_object_set_new(o, "last_lease_at", sb_json_iso8601(st->last_lease_ms));
    return o;
}

static json_t *last_push_json(const sb_record_stats *st)
{
    if (st->last_push_ms <= 0)
        return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "at", sb_json_iso8601(st->last_push_ms));
    json_object_set_new(o, "outcome", str_or_null(st->last_push_outcome));
    json_object_set_new(o, "http_status",
                        st->last_push_status > 0 ? json_integer(st->last_push_status)
                                                 : json_null());
    json_object_set_new(o, "detail", str_or_null(st->last_push_detail));
    json_object_set_new(o, "duration_ms", json_real(st->last_push_duration_ms));
    return o;
}

/* Switchboard's own redelivery of the queue (retry.h): {"next_at","last_at",
 * "last_outcome"}, null when it never ran. */
static json_t *redelivery_json(const sb_record_stats *st)
{
    if (st->redeliver_last_ms <= 0 && st->redeliver_next_ms <= 0)
        return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "next_at", sb_json_iso8601(st->redeliver_next_ms));
    json_object_set_new(o, "last_at", sb_json_iso8601(st->redeliver_last_ms));
    json_object_set_new(o, "last_outcome", str_or_null(st->redeliver_last_outcome));
    return o;
}

static json_t *lease_json(const sb_endpoint *ep, int64_t now)
{
    if (ep == NULL || ep->lease_s <= 0)
        return json_null();
    return json_pack("{s:i,s:o,s:b,s:o}", "lease_s", ep->lease_s, "expires_at",
                     sb_json_iso8601(ep->lease_expires_at_ms), "expired",
                     ep->lease_expires_at_ms > 0 && ep->lease_expires_at_ms <= now, "heartbeat_at",
                     sb_json_iso8601(ep->heartbeat_at_ms));
}

/* Probe facts are from registration time: the view says how old they are, and calls
 * them stale once they are older than PROBE_FRESH_MS or a push failed after them. The
 * fetched card itself is served by the card route, not repeated here. */
#define PROBE_FRESH_MS (10 * 60 * 1000LL)

static json_t *probe_view(const sb_endpoint *ep, const sb_record_stats *st, int64_t now)
{
    if (ep == NULL || ep->probe == NULL)
        return json_null();
    json_t *p = json_deep_copy(ep->probe);
    json_object_del(p, "card");
    int64_t at = iso_ms(json_string_value(json_object_get(p, "probed_at")));
    if (at <= 0)
        at = ep->registered_at_ms;
    /* ">=": a push can begin in the very millisecond the registration's probe ended. */
    int failed_since = st->fail_count > 0 && st->fail_since_ms >= at;
    int stale = at <= 0 || now - at > PROBE_FRESH_MS || failed_since;
    json_object_set_new(p, "age_s", json_real(age_s(at, now)));
    json_object_set_new(p, "stale", json_boolean(stale));
    if (stale) {
        char note[256];
        char when[32];
        sb_format_iso8601(at, when);
        snprintf(note, sizeof(note),
                 "probed once at registration (%s)%s; the agent may have changed since",
                 at > 0 ? when : "time unknown",
                 failed_since ? " and pushes have failed after it" : "");
        json_object_set_new(p, "note", json_string(note));
    }
    return p;
}

static void on_view_stats(int err, const sb_record_stats *st, size_t n, void *arg)
{
    view_call *c = arg;
    if (err != SB_OK || n != 1) {
        answer_store_error(c->req, err != SB_OK ? err : SB_ERR);
        call_free(c);
        return;
    }
    int64_t now = sb_now_wall_ms();
    sb_endpoint *ep = sb_registry_get(c->ws);
    sb_verdict_facts f;
    json_t *circuit = sb_circuit_describe(c->ws);
    facts_of(c->ws, ep, circuit, st, now, &f);
    refusal_facts(c->refusals, &f);
    json_object_set_new(circuit, "scope", json_string("instance"));
    json_t *o = json_object();
    json_object_set_new(o, "workspace_id", sb_json_text(c->ws));
    json_object_set_new(o, "registered", json_boolean(ep != NULL));
    json_object_set_new(o, "delivery_mode",
                        ep ? json_string(sb_delivery_mode_name(ep->mode)) : json_null());
    json_object_set_new(o, "url", ep ? str_or_null(ep->url_str) : json_null());
    json_object_set_new(o, "lease", lease_json(ep, now));
    json_object_set_new(o, "circuit", circuit);
    json_object_set_new(o, "last_push", last_push_json(st));
    json_t *queue = json_pack("{s:I,s:f,s:I,s:I}", "depth", (json_int_t)st->depth, "oldest_age_s",
                              f.oldest_age_s, "leased", (json_int_t)st->leased, "dead_letters",
                              (json_int_t)st->dead_letters);
    json_object_set_new(queue, "redelivery", redelivery_json(st));
    json_object_set_new(o, "queue", queue);
    json_object_set_new(o, "counters", counters_json(st));
    json_object_set_new(o, "probe", probe_view(ep, st, now));
    json_object_set_new(o, "refused_registrations",
                        c->refusals ? json_incref(c->refusals) : json_array());
    json_object_set_new(o, "verdict", verdict_of(&f));
    sb_endpoint_release(ep);
    sb_response_json(c->req, 200, o, NULL);
    call_free(c);
}

/* The refused registrations come first (a second key of the same workspace, read on
 * its own so the stats script stays as it is); then the stats and the answer. */
static void on_view_refusals(int err, const json_t *list, void *arg)
{
    view_call *c = arg;
    if (err == SB_OK)
        c->refusals = json_incref((json_t *)(uintptr_t)list);
    if (sb_record_stats_one(c->req->worker->redis, c->ws, on_view_stats, c) != SB_OK) {
        sb_response_redis_unavailable(c->req);
        call_free(c);
    }
}

void sb_handle_workspace_delivery(sb_request *req)
{
    const char *ws = req->params[0];
    if (!sb_router_require_workspace(req, ws))
        return;
    view_call *c = call_new(req, ws);
    if (sb_refusal_recent(req->worker->redis, ws, on_view_refusals, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
}

/* ---- GET /delivery ---- */

typedef struct overview_row {
    json_t *item;
    double oldest_age_s;
    double fallback_rate;
} overview_row;

static int row_cmp(const void *a, const void *b)
{
    const overview_row *x = a, *y = b;
    if (x->oldest_age_s != y->oldest_age_s)
        return x->oldest_age_s < y->oldest_age_s ? 1 : -1;
    if (x->fallback_rate != y->fallback_rate)
        return x->fallback_rate < y->fallback_rate ? 1 : -1;
    return strcmp(json_string_value(json_object_get(x->item, "workspace_id")),
                  json_string_value(json_object_get(y->item, "workspace_id")));
}

static void on_overview_stats(int err, const sb_record_stats *st, size_t n, void *arg)
{
    view_call *c = arg;
    if (err != SB_OK) {
        answer_store_error(c->req, err);
        call_free(c);
        return;
    }
    int64_t now = sb_now_wall_ms();
    overview_row *rows = sb_calloc(n + 1, sizeof(*rows));
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        sb_endpoint *ep = sb_registry_get(st[i].ws);
        json_t *circuit = sb_circuit_describe(st[i].ws);
        sb_verdict_facts f;
        facts_of(st[i].ws, ep, circuit, &st[i], now, &f);
        int recent =
            st[i].last_fallback_ms > 0 && now - st[i].last_fallback_ms < SB_RECORD_RECENT_MS;
        if (st[i].depth > 0 || recent || f.circuit_open) {
            json_t *item = json_object();
            json_object_set_new(item, "workspace_id", sb_json_text(st[i].ws));
            json_object_set_new(item, "delivery_mode",
                                ep ? json_string(sb_delivery_mode_name(ep->mode)) : json_null());
            json_object_set_new(item, "queue_depth", json_integer(st[i].depth));
            json_object_set_new(item, "oldest_age_s", json_real(f.oldest_age_s));
            json_object_set_new(item, "leased", json_integer(st[i].leased));
            json_object_set_new(item, "dead_letters", json_integer(st[i].dead_letters));
            json_object_set_new(item, "fallbacks", json_integer(st[i].fallbacks));
            json_object_set_new(item, "last_reason", reason_or_null(st[i].last_reason));
            json_object_set(item, "circuit", json_object_get(circuit, "state"));
            json_object_set_new(item, "verdict", verdict_of(&f));
            long long total = st[i].pushes + st[i].fallbacks;
            rows[k].item = item;
            rows[k].oldest_age_s = f.oldest_age_s;
            rows[k].fallback_rate = total > 0 ? (double)st[i].fallbacks / (double)total : 0.0;
            k++;
        }
        json_decref(circuit);
        sb_endpoint_release(ep);
    }
    qsort(rows, k, sizeof(*rows), row_cmp);
    json_t *list = json_array();
    for (size_t i = 0; i < k; i++)
        json_array_append_new(list, rows[i].item);
    sb_free(rows);
    sb_response_json(c->req, 200,
                     json_pack("{s:o,s:s}", "workspaces", list, "circuit_scope", "instance"), NULL);
    call_free(c);
}

typedef struct open_list {
    const char **ws;
    size_t n, cap;
} open_list;

/* Collects workspaces whose circuit is not closed on this instance (under the replica's
 * read lock: only the circuit table is touched, never the registry). */
static void collect_open(const sb_endpoint *ep, void *arg)
{
    open_list *l = arg;
    json_t *c = sb_circuit_describe(ep->workspace_id);
    const char *state = json_string_value(json_object_get(c, "state"));
    if (state != NULL && strcmp(state, "closed") != 0 && l->n < SB_RECORD_OVERVIEW_MAX) {
        if (l->n == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 16;
            l->ws = sb_realloc(l->ws, l->cap * sizeof(*l->ws));
        }
        l->ws[l->n++] = sb_strdup(ep->workspace_id);
    }
    json_decref(c);
}

void sb_handle_delivery_overview(sb_request *req)
{
    open_list open = {NULL, 0, 0};
    sb_registry_foreach(collect_open, &open);
    view_call *c = call_new(req, NULL);
    int rc = sb_record_stats_many(req->worker->redis, sb_now_wall_ms(), open.ws, open.n,
                                  on_overview_stats, c);
    for (size_t i = 0; i < open.n; i++)
        sb_free((void *)(uintptr_t)open.ws[i]);
    sb_free(open.ws);
    if (rc != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
}

/* ---- GET /workspaces/{ws}/.well-known/agent-card.json ---- */

/* The card callers see: the one the agent registered, else the one the registration
 * probe fetched at its origin (SPEC §4.1), every interface URL pointing at this route's
 * /a2a. The scheme is X-Forwarded-Proto's when a proxy names one, else http; the host is
 * the Host header (HTTP/2 :authority), else the --listen address. */
void sb_handle_agent_card(sb_request *req)
{
    const char *ws = req->params[0];
    sb_endpoint *ep = sb_registry_get(ws);
    const json_t *given = ep ? ep->agent_card : NULL;
    const json_t *probed = ep ? json_object_get(ep->probe, "card") : NULL;
    if (given == NULL && !json_is_object(probed)) {
        sb_endpoint_release(ep);
        sb_response_error(req, 404, "card_not_found",
                          "workspace %s has no agent card: none was given at registration and "
                          "the registration probe fetched none",
                          ws);
        return;
    }
    json_t *card = json_deep_copy(given ? given : probed);
    sb_endpoint_release(ep);
    char *url =
        sb_a2a_public_url(sb_headers_get(&req->headers, "X-Forwarded-Proto"),
                          sb_headers_get(&req->headers, "Host"), req->worker->cfg->listen, ws);
    sb_a2a_card_rewrite(card, url);
    sb_free(url);
    sb_response_json(req, 200, card, NULL);
}
