/*
 * handler_inbox.c — GET /workspaces/{ws}/inbox, GET /workspaces/{ws}/inbox/peek,
 * POST /workspaces/{ws}/inbox/{id}/ack, POST /workspaces/{ws}/inbox/{id}/nack
 * (SPEC §3, §4.4).
 *
 * Each handler checks that the caller may act for the workspace (admin or that
 * workspace's token; 403 otherwise — a workspace only ever sees its own inbox), reads
 * and bounds its parameters, and runs one queue operation (inbox.c for leases, which may
 * wait). Answers:
 *   lease   200 {"messages":[...],"lease_s","lease_expires_at"} (empty list when nothing
 *           came within wait_s; lease_expires_at null then)
 *   peek    200 {"messages":[...],"ready","leased"}
 *   ack     200 {"id","task_id","status":"acked"}
 *   nack    200 {"id","task_id","status":"queued"|"dead","delivery_count","dead_reason"?}
 * with messages in the SPEC §4.4 form (queue.h). Errors: 400 invalid_request (a bad
 * parameter or ack body), 400 invalid_json, 403 forbidden, 404 message_not_found,
 * 409 message_state (the message is acked, dead or canceled), 503 redis_unavailable
 * with Retry-After, 500 internal_error.
 *
 * Parameters: max 1..100 (default 1), wait_s 0..60 (default 0), lease_s 1..3600 (default
 * --lease-s; a longer --lease-s raises the bound to it).
 */
#include "switchboard/notify.h"
#include "switchboard/alloc.h"
#include "switchboard/handlers.h"
#include "switchboard/inbox.h"
#include "switchboard/metrics.h"
#include "switchboard/queue.h"
#include "switchboard/router.h"
#include "switchboard/worker.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#define MAX_LEASE_S 3600

static void answer_failure(sb_request *req, int err, const char *id)
{
    if (err == SB_ERR_NOTFOUND) {
        sb_response_error(req, 404, "message_not_found", "no message %s in this inbox", id);
    } else if (err == SB_ERR_UNAVAILABLE) {
        sb_response_redis_unavailable(req);
    } else {
        sb_response_error(req, 500, "internal_error", "the queue store failed; see the logs");
    }
}

/* An optional integer query parameter in [min, max]; SB_OK (|*out| untouched when
 * absent), or SB_ERR_INVALID after answering 400. */
static int query_int(sb_request *req, const char *name, long min, long max, long *out)
{
    char buf[32];
    int rc = sb_request_query(req, name, buf, sizeof(buf));
    if (rc == SB_ERR_NOTFOUND)
        return SB_OK;
    long v;
    if (rc != SB_OK || sb_parse_long(buf, min, max, &v) != SB_OK) {
        sb_response_error(req, 400, "invalid_request", "%s must be an integer from %ld to %ld",
                          name, min, max);
        return SB_ERR_INVALID;
    }
    *out = v;
    return SB_OK;
}

static void write_messages(struct evbuffer *out, const sb_queue_batch *b)
{
    evbuffer_add_printf(out, "{\"messages\":[");
    for (size_t i = 0; b != NULL && i < b->n; i++) {
        if (i > 0)
            evbuffer_add(out, ",", 1);
        sb_queue_record_write_json(&b->items[i], out);
    }
    evbuffer_add_printf(out, "]");
}

/* ---- GET /workspaces/{ws}/inbox ---- */

static void on_leased(sb_request *req, int err, const sb_queue_batch *b, void *arg)
{
    if (err != SB_OK) {
        answer_failure(req, err, "");
        return;
    }
    long lease_s = (long)(intptr_t)arg;
    for (size_t i = 0; i < b->n; i++) {
        sb_metrics_inbox_leased(b->items[i].delivery_count);
        sb_notify_task_state(req->worker, req->params[0], b->items[i].task_id, "working");
    }
    struct evbuffer *body = evbuffer_new();
    write_messages(body, b);
    evbuffer_add_printf(body, ",\"lease_s\":%ld,\"lease_expires_at\":", lease_s);
    if (b->n > 0 && b->items[0].lease_until_ms > 0) {
        char at[32];
        sb_format_iso8601(b->items[0].lease_until_ms, at);
        evbuffer_add_printf(body, "\"%s\"}", at);
    } else {
        evbuffer_add_printf(body, "null}");
    }
    sb_handler_send_json_buffer(req, body);
}

void sb_handle_inbox_lease(sb_request *req)
{
    const char *ws = req->params[0];
    if (!sb_router_require_workspace(req, ws))
        return;
    if (req->method == SB_METHOD_HEAD) {
        /* HEAD must not change anything (a load balancer's probe would lease messages
         * nobody reads): it answers as a peek would, headers only. */
        sb_handle_inbox_peek(req);
        return;
    }
    const sb_config *cfg = req->worker->cfg;
    long max = 1, wait_s = 0, lease_s = cfg->lease_s;
    long lease_max = cfg->lease_s > MAX_LEASE_S ? cfg->lease_s : MAX_LEASE_S;
    if (query_int(req, "max", 1, SB_QUEUE_LEASE_MAX, &max) != SB_OK ||
        query_int(req, "wait_s", 0, SB_INBOX_MAX_WAIT_S, &wait_s) != SB_OK ||
        query_int(req, "lease_s", 1, lease_max, &lease_s) != SB_OK)
        return;
    sb_inbox_params p = {(int)max, (int64_t)lease_s * 1000, (int64_t)wait_s * 1000};
    sb_inbox_lease(req, ws, &p, on_leased, (void *)(intptr_t)lease_s);
}

/* ---- GET /workspaces/{ws}/inbox/peek ---- */

static void on_peeked(int err, const sb_queue_batch *b, void *arg)
{
    sb_request *req = arg;
    if (err != SB_OK) {
        answer_failure(req, err, "");
    } else {
        struct evbuffer *body = evbuffer_new();
        write_messages(body, b);
        evbuffer_add_printf(body, ",\"ready\":%lld,\"leased\":%lld}", b->ready, b->leased);
        sb_handler_send_json_buffer(req, body);
    }
    sb_request_unref(req);
}

void sb_handle_inbox_peek(sb_request *req)
{
    const char *ws = req->params[0];
    if (!sb_router_require_workspace(req, ws))
        return;
    long max = 1;
    if (query_int(req, "max", 1, SB_QUEUE_LEASE_MAX, &max) != SB_OK)
        return;
    sb_queue_opts o = sb_queue_opts_of(req->worker->cfg);
    sb_request_ref(req);
    if (sb_queue_peek(req->worker->redis, &o, ws, (int)max, on_peeked, req) != SB_OK) {
        answer_failure(req, SB_ERR_UNAVAILABLE, "");
        sb_request_unref(req);
    }
}

/* ---- POST /workspaces/{ws}/inbox/{id}/ack and /nack ---- */

typedef struct inbox_call {
    sb_request *req; /* holds a reference */
    int ack;
} inbox_call;

static void on_settled(int err, const sb_queue_record *rec, void *arg)
{
    inbox_call *c = arg;
    sb_request *req = c->req;
    const char *id = req->params[1];
    if (err == SB_ERR_FORBIDDEN) {
        sb_response_error(req, 409, "message_state", "message %s is %s and cannot be %s", id,
                          sb_queue_state_name(rec->state), c->ack ? "acked" : "released");
    } else if (err != SB_OK) {
        answer_failure(req, err, id);
    } else {
        if (c->ack)
            sb_metrics_inbox_acked();
        sb_notify_task_state(req->worker, req->params[0], rec->task_id, NULL);
        json_t *body = json_object();
        json_object_set_new(body, "id", sb_json_text(rec->id ? rec->id : id));
        json_object_set_new(body, "task_id", sb_json_text(rec->task_id ? rec->task_id : ""));
        json_object_set_new(body, "status", json_string(sb_queue_state_name(rec->state)));
        if (!c->ack) {
            json_object_set_new(body, "delivery_count", json_integer(rec->delivery_count));
            if (rec->dead_reason != NULL)
                json_object_set_new(body, "dead_reason", sb_json_text(rec->dead_reason));
        }
        sb_response_json(req, 200, body, NULL);
    }
    sb_request_unref(req);
    sb_free(c);
}

/* The ack body's result as compact JSON text (NULL when none), or SB_ERR_INVALID after
 * answering 400. An empty body or {} acks without a result. */
static int ack_result(sb_request *req, char **out)
{
    *out = NULL;
    size_t len = req->body ? evbuffer_get_length(req->body) : 0;
    if (len == 0)
        return SB_OK;
    const char *bytes = (const char *)evbuffer_pullup(req->body, -1);
    json_error_t jerr;
    json_t *j = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(j)) {
        sb_response_error(req, 400, "invalid_json", "the body must be a JSON object");
        json_decref(j);
        return SB_ERR_INVALID;
    }
    const json_t *result = json_object_get(j, "result");
    if (result != NULL && !json_is_null(result)) {
        if (!json_is_object(result)) {
            sb_response_error(req, 400, "invalid_request",
                              "result must be an A2A Task or Message object");
            json_decref(j);
            return SB_ERR_INVALID;
        }
        *out = json_dumps(result, JSON_COMPACT | JSON_PRESERVE_ORDER);
    }
    json_decref(j);
    return SB_OK;
}

static void settle(sb_request *req, int ack)
{
    const char *ws = req->params[0];
    const char *id = req->params[1];
    if (!sb_router_require_workspace(req, ws))
        return;
    if (!sb_queue_valid_id(id)) {
        sb_response_error(req, 404, "message_not_found", "no message %s in this inbox",
                          id ? id : "");
        return;
    }
    char *result = NULL;
    if (ack && ack_result(req, &result) != SB_OK)
        return;
    inbox_call *c = sb_calloc(1, sizeof(*c));
    sb_request_ref(req);
    c->req = req;
    c->ack = ack;
    sb_queue_opts o = sb_queue_opts_of(req->worker->cfg);
    int rc = ack ? sb_queue_ack(req->worker->redis, &o, ws, id, result, NULL, 0, on_settled, c)
                 : sb_queue_nack(req->worker->redis, &o, ws, id, 0, on_settled, c);
    sb_free(result);
    if (rc != SB_OK) {
        answer_failure(req, SB_ERR_UNAVAILABLE, id);
        sb_request_unref(req);
        sb_free(c);
    }
}

void sb_handle_inbox_ack(sb_request *req)
{
    settle(req, 1);
}

void sb_handle_inbox_nack(sb_request *req)
{
    settle(req, 0);
}
