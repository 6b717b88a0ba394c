/*
 * deliver.c — the decision and the push for one A2A request (see deliver.h).
 *
 * Life of a delivery: sb_deliver() takes a reference on the request, reads the
 * workspace's endpoint from the in-process registry replica (no Redis round trip),
 * applies the decision order, and either answers at once (a pre-push reason) or hands
 * the unchanged body to the worker's upstream pool. The pool calls back exactly once;
 * the callback classifies the outcome, answers (unless the client went away — the push
 * is not canceled then, since the agent may already be working on it) and logs the
 * decision. The delivery record owns everything it needs until then, so nothing here
 * depends on the client connection still existing.
 *
 * The body is pushed without a copy: the upstream pool drains an evbuffer that only
 * references the request body's chains, so the original bytes stay available to the
 * caller (the poll-queue fallback stores them).
 */
#include "switchboard/deliver.h"
#include "switchboard/alloc.h"
#include "switchboard/log.h"
#include "switchboard/reason.h"
#include "switchboard/registry.h"
#include "switchboard/server.h"
#include "switchboard/upstream.h"
#include "switchboard/util.h"

#include <stdio.h>
#include <string.h>

typedef struct delivery {
    sb_request *req; /* holds a reference */
    sb_a2a_call call;
    sb_endpoint *ep; /* holds a reference while pushing */
    sb_message_kind kind;
    char ws[SB_WS_ID_MAX + 1];
    char source[SB_WS_ID_MAX + 16];
    char message_id[160];
    uint64_t started_us;
} delivery;

const char *sb_kind_name(sb_message_kind k)
{
    return k == SB_KIND_CHAT ? "chat" : "delegation";
}

static void delivery_free(delivery *d)
{
    if (d->ep != NULL)
        sb_endpoint_release(d->ep);
    sb_a2a_call_clear(&d->call);
    sb_request_unref(d->req);
    sb_free(d);
}

/* One log line per decision (SPEC §5.4). Only identifiers, never tokens or secrets. */
static void log_decision(const delivery *d, const char *mode, sb_reason reason, const char *detail,
                         int http_status)
{
    json_t *f = json_object();
    json_object_set_new(f, "message_id", json_string(d->message_id));
    json_object_set_new(f, "workspace", json_string(d->ws));
    json_object_set_new(f, "kind", json_string(sb_kind_name(d->kind)));
    json_object_set_new(f, "source", json_string(d->source));
    json_object_set_new(f, "method", json_string(d->call.method ? d->call.method : ""));
    json_object_set_new(f, "mode", json_string(mode));
    json_object_set_new(
        f, "reason", reason == SB_REASON_NONE ? json_null() : json_string(sb_reason_name(reason)));
    json_object_set_new(f, "detail", json_string(detail ? detail : ""));
    if (http_status > 0)
        json_object_set_new(f, "http_status", json_integer(http_status));
    json_object_set_new(f, "duration_ms",
                        json_real((double)(sb_now_mono_us() - d->started_us) / 1000.0));
    sb_log_fields(reason == SB_REASON_NONE ? SB_LOG_INFO : SB_LOG_WARN, "delivery", f);
}

/* The message could not be pushed. Until the poll queue lands this answers 502 with a
 * JSON-RPC error naming the reason; the queue will take this place. */
static void fall_back(delivery *d, sb_reason reason, const char *detail, int http_status)
{
    log_decision(d, "rejected", reason, detail, http_status);
    json_t *data = json_object();
    json_object_set_new(data, "reason", json_string(sb_reason_name(reason)));
    json_object_set_new(data, "detail", json_string(detail));
    json_object_set_new(data, "attempted", json_boolean(sb_reason_attempted(reason)));
    char msg[128];
    snprintf(msg, sizeof(msg), "message not delivered: %s", sb_reason_name(reason));
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "X-Delivery-Reason", sb_reason_name(reason));
    sb_response_json(d->req, 502,
                     sb_a2a_error_response(d->call.id, SB_JSONRPC_UNDELIVERABLE, msg, data), &h);
    sb_headers_clear(&h);
}

static int is_event_stream(const char *content_type)
{
    return content_type != NULL && strncasecmp(content_type, "text/event-stream", 17) == 0;
}

/* Relays the agent's answer unchanged: status, body and the headers that describe the
 * body; hop-by-hop and transport headers stay behind. */
static void relay(delivery *d, const sb_upstream_result *res)
{
    static const char *const kept[] = {"Content-Type", "A2A-Version", "Cache-Control"};
    sb_headers h;
    sb_headers_init(&h);
    for (size_t i = 0; i < SB_ARRAY_LEN(kept); i++) {
        const char *v = sb_headers_get(res->headers, kept[i]);
        if (v != NULL)
            sb_headers_add(&h, kept[i], v);
    }
    sb_headers_add(&h, "X-Delivery-Mode", "push");
    sb_response_send(d->req, res->status, &h, NULL, res->body);
    sb_headers_clear(&h);
}

static void on_push_done(const sb_upstream_result *res, void *arg)
{
    delivery *d = arg;
    char detail[384];
    sb_reason reason = res->reason;
    if (reason != SB_REASON_NONE) {
        fall_back(d, reason, res->detail, res->status);
        delivery_free(d);
        return;
    }
    reason = sb_reason_from_http_status(res->status);
    if (reason != SB_REASON_NONE) {
        snprintf(detail, sizeof(detail), "POST %s → %d", d->ep->url_str, res->status);
        fall_back(d, reason, detail, res->status);
        delivery_free(d);
        return;
    }
    const char *ctype = sb_headers_get(res->headers, "Content-Type");
    if (!is_event_stream(ctype)) {
        size_t len = evbuffer_get_length(res->body);
        const char *bytes = (const char *)evbuffer_pullup(res->body, -1);
        if (!sb_a2a_is_response(bytes ? bytes : "", len)) {
            snprintf(detail, sizeof(detail),
                     "POST %s → %d with a body that is not a JSON-RPC response (%zu bytes)",
                     d->ep->url_str, res->status, len);
            fall_back(d, SB_REASON_INVALID_RESPONSE, detail, res->status);
            delivery_free(d);
            return;
        }
    }
    snprintf(detail, sizeof(detail), "POST %s → %d", d->ep->url_str, res->status);
    log_decision(d, "push", SB_REASON_NONE, detail, res->status);
    relay(d, res);
    delivery_free(d);
}

/* The first pre-push reason that applies to |ep| at |now_ms|, or SB_REASON_NONE. The
 * circuit breaker and the concurrency limit (circuit_open, busy) join with the queue. */
static sb_reason decide(const sb_endpoint *ep, int64_t now_ms, char *detail, size_t cap)
{
    if (ep == NULL) {
        snprintf(detail, cap, "no endpoint is registered for this workspace");
        return SB_REASON_NO_ENDPOINT;
    }
    if (ep->mode == SB_MODE_POLL) {
        snprintf(detail, cap, "the workspace is registered with delivery_mode poll");
        return SB_REASON_POLL_MODE;
    }
    if (ep->lease_expires_at_ms != 0 && ep->lease_expires_at_ms <= now_ms) {
        char at[32];
        sb_format_iso8601(ep->lease_expires_at_ms, at);
        snprintf(detail, cap, "the registration lease expired at %s without a heartbeat", at);
        return SB_REASON_LEASE_EXPIRED;
    }
    return SB_REASON_NONE;
}

static void push_headers(const delivery *d, const sb_request *req, sb_headers *h)
{
    char auth[256];
    snprintf(auth, sizeof(auth), "Bearer %s", d->ep->inbound_secret);
    sb_headers_add(h, "Content-Type", "application/json");
    sb_headers_add(h, "Authorization", auth);
    sb_headers_add(h, "X-Switchboard-Message-Id", d->message_id);
    sb_headers_add(h, "X-Switchboard-Source", d->source);
    sb_headers_add(h, "X-Switchboard-Kind", sb_kind_name(d->kind));
    const char *version = sb_headers_get(&req->headers, "A2A-Version");
    if (version != NULL)
        sb_headers_add(h, "A2A-Version", version);
    const char *user = sb_headers_get(&req->headers, "X-Switchboard-User");
    if (user != NULL && d->kind == SB_KIND_CHAT)
        sb_headers_add(h, "X-Switchboard-User", user);
}

void sb_deliver(sb_request *req, const char *ws, sb_message_kind kind, const char *source,
                sb_a2a_call *call)
{
    delivery *d = sb_calloc(1, sizeof(*d));
    sb_request_ref(req);
    d->req = req;
    d->call = *call;
    memset(call, 0, sizeof(*call));
    d->kind = kind;
    d->started_us = sb_now_mono_us();
    snprintf(d->ws, sizeof(d->ws), "%s", ws);
    snprintf(d->source, sizeof(d->source), "%s", source);
    if (d->call.message_id != NULL) {
        snprintf(d->message_id, sizeof(d->message_id), "%s", d->call.message_id);
    } else {
        /* Calls without a messageId (tasks/get, ...) still get an id to trace them by. */
        sb_random_token("req_", 12, d->message_id, sizeof(d->message_id));
    }

    char detail[256];
    d->ep = sb_registry_get(ws);
    sb_reason reason = decide(d->ep, sb_now_wall_ms(), detail, sizeof(detail));
    if (reason != SB_REASON_NONE) {
        fall_back(d, reason, detail, 0);
        delivery_free(d);
        return;
    }

    sb_headers h;
    sb_headers_init(&h);
    push_headers(d, req, &h);
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_buffer_reference(body, req->body);
    sb_upstream_push(req->worker->upstream, &d->ep->url, &h, body, on_push_done, d);
    evbuffer_free(body);
    sb_headers_clear(&h);
}
