/*
 * handler_dead.c — GET /workspaces/{ws}/dead-letters?max=,
 * POST /workspaces/{ws}/dead-letters/{id}/replay, DELETE /workspaces/{ws}/dead-letters/{id}
 * (SPEC §3, §4.4).
 *
 * Admin or that workspace's token (403 otherwise). Answers:
 *   list    200 {"dead_letters":[{"id","message_id","task_id","kind","source","reason",
 *           "attempted","delivery_count","enqueued_at","expires_at","dead_reason",
 *           "dead_at","request"}...]} newest first (max 1..1000, default 100)
 *   replay  200 {"id","task_id","status":"queued","expires_at"} — the message is back at the
 *           front of the queue; switchboard's redelivery pushes it to a push-mode agent at
 *           once (drain.h) and on its schedule after that (retry.h)
 *   purge   204 — its record says purged
 * Errors: 400 invalid_request (max), 403 forbidden, 404 message_not_found (no such message,
 * or its record has expired), 409 message_state (the message is not a dead letter),
 * 503 redis_unavailable with Retry-After, 500 internal_error.
 */
#include "switchboard/alloc.h"
#include "switchboard/drain.h"
#include "switchboard/handlers.h"
#include "switchboard/queue_dead.h"
#include "switchboard/retry.h"
#include "switchboard/router.h"
#include "switchboard/utf8.h"
#include "switchboard/util.h"
#include "switchboard/worker.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#define LIST_DEFAULT 100

static void answer_failure(sb_request *req, int err, const char *id, const sb_queue_record *rec)
{
    if (err == SB_ERR_NOTFOUND)
        sb_response_error(req, 404, "message_not_found", "no message %s in this workspace", id);
    else if (err == SB_ERR_FORBIDDEN)
        sb_response_error(req, 409, "message_state", "message %s is %s, not a dead letter", id,
                          sb_queue_state_name(rec->state));
    else if (err == SB_ERR_UNAVAILABLE)
        sb_response_redis_unavailable(req);
    else
        sb_response_error(req, 500, "internal_error", "the queue store failed; see the logs");
}

/* ---- GET /workspaces/{ws}/dead-letters ---- */

static void on_listed(int err, const sb_queue_record *items, size_t n, void *arg)
{
    sb_request *req = arg;
    if (err != SB_OK) {
        answer_failure(req, err, "", NULL);
        sb_request_unref(req);
        return;
    }
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "{\"dead_letters\":[");
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            evbuffer_add(body, ",", 1);
        json_t *extra = json_object();
        json_object_set_new(extra, "dead_reason",
                            sb_json_text(items[i].dead_reason ? items[i].dead_reason : ""));
        json_object_set_new(extra, "dead_at", sb_json_iso8601(items[i].updated_at_ms));
        sb_queue_record_write_json_extra(&items[i], extra, body);
    }
    evbuffer_add_printf(body, "]}\n");
    sb_handler_send_json_buffer(req, body);
    sb_request_unref(req);
}

void sb_handle_dead_letters(sb_request *req)
{
    const char *ws = req->params[0];
    if (!sb_router_require_workspace(req, ws))
        return;
    long max = LIST_DEFAULT;
    char buf[32];
    int rc = sb_request_query(req, "max", buf, sizeof(buf));
    if (rc != SB_ERR_NOTFOUND &&
        (rc != SB_OK || sb_parse_long(buf, 1, SB_QUEUE_DEAD_LIST_MAX, &max) != SB_OK)) {
        sb_response_error(req, 400, "invalid_request", "max must be an integer from 1 to %d",
                          SB_QUEUE_DEAD_LIST_MAX);
        return;
    }
    sb_request_ref(req);
    sb_queue_opts o = sb_queue_opts_of(req->worker->cfg);
    if (sb_queue_dead_list(req->worker->redis, &o, ws, (int)max, on_listed, req) != SB_OK) {
        sb_response_redis_unavailable(req);
        sb_request_unref(req);
    }
}

/* ---- POST .../replay and DELETE ---- */

static void on_replayed(int err, const sb_queue_record *rec, void *arg)
{
    sb_request *req = arg;
    const char *ws = req->params[0], *id = req->params[1];
    if (err != SB_OK) {
        answer_failure(req, err, id, rec);
    } else {
        /* Redelivered like any other queued message: now, and on the schedule after. */
        sb_retry_due_soon(req->worker->redis, ws);
        sb_drain_kick(req->worker, ws);
        json_t *body = json_object();
        json_object_set_new(body, "id", sb_json_text(id));
        json_object_set_new(body, "task_id", sb_json_text(rec->task_id ? rec->task_id : ""));
        json_object_set_new(body, "status", json_string(sb_queue_state_name(rec->state)));
        json_object_set_new(body, "expires_at", sb_json_iso8601(rec->expires_at_ms));
        sb_response_json(req, 200, body, NULL);
    }
    sb_request_unref(req);
}

static void on_purged(int err, const sb_queue_record *rec, void *arg)
{
    sb_request *req = arg;
    if (err != SB_OK)
        answer_failure(req, err, req->params[1], rec);
    else
        sb_response_send(req, 204, NULL, NULL, NULL);
    sb_request_unref(req);
}

static void act(sb_request *req, int replay)
{
    const char *ws = req->params[0], *id = req->params[1];
    if (!sb_router_require_workspace(req, ws))
        return;
    if (!sb_queue_valid_id(id)) {
        sb_response_error(req, 404, "message_not_found", "no message %s in this workspace",
                          id ? id : "");
        return;
    }
    sb_request_ref(req);
    const sb_config *cfg = req->worker->cfg;
    sb_queue_opts o = sb_queue_opts_of(cfg);
    int rc = replay ? sb_queue_dead_replay(req->worker->redis, &o, ws, id,
                                           (int64_t)cfg->queue_ttl_s * 1000, on_replayed, req)
                    : sb_queue_dead_purge(req->worker->redis, &o, ws, id, on_purged, req);
    if (rc != SB_OK) {
        sb_response_redis_unavailable(req);
        sb_request_unref(req);
    }
}

void sb_handle_dead_letter_replay(sb_request *req)
{
    act(req, 1);
}

void sb_handle_dead_letter_purge(sb_request *req)
{
    act(req, 0);
}
