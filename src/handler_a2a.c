/*
 * handler_a2a.c — POST /workspaces/{ws}/a2a: who is sending, and is it JSON-RPC?
 *
 * The handler decides the kind (chat for the admin token, delegation for a workspace
 * token, whose own workspace becomes the source whatever the body claims), validates
 * the JSON-RPC envelope (a2a.c) and hands the call to deliver.c. Validation errors are
 * answered here, with HTTP 400 and the JSON-RPC error body, and never reach the agent:
 * a malformed request is not a message, so it must not look like a success to proxies
 * or to the http_requests metrics. Until the instance has loaded its registry replica
 * once (sb_sync_loaded), a valid request is answered 503 + Retry-After: a fallback
 * reason given before then could be false.
 */
#include "switchboard/a2a.h"
#include "switchboard/deliver.h"
#include "switchboard/handlers.h"
#include "switchboard/log.h"
#include "switchboard/sync.h"
#include "switchboard/utf8.h"

#include <string.h>

static void reject(sb_request *req, const char *ws, const sb_a2a_call *call,
                   const sb_a2a_error *err)
{
    json_t *f = json_object();
    json_object_set_new(f, "workspace", sb_json_text(ws));
    json_object_set_new(f, "mode", json_string("rejected"));
    json_object_set_new(f, "code", json_integer(err->code));
    json_object_set_new(f, "detail", sb_json_text(err->message));
    sb_log_fields(SB_LOG_INFO, "delivery", f);
    sb_response_json(req, 400, sb_a2a_error_response(call->id, err->code, err->message, NULL),
                     NULL);
}

/* Before its first registry snapshot this instance cannot know the workspace's endpoint:
 * any reason it gave (no_endpoint, ...) could be false, so it says "not yet" (SPEC §1). */
static void answer_not_ready(sb_request *req, const char *ws, const sb_a2a_call *call)
{
    static const char msg[] = "switchboard is starting: its registry replica is not loaded "
                              "from Redis yet; nothing was delivered or queued, retry shortly";
    json_t *f = json_object();
    json_object_set_new(f, "workspace", json_string(ws));
    json_object_set_new(f, "mode", json_string("rejected"));
    json_object_set_new(f, "detail", json_string("not ready: registry replica not loaded"));
    sb_log_fields(SB_LOG_WARN, "not_ready", f);
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Retry-After", "1");
    json_t *data = json_pack("{s:b,s:b,s:b}", "ready", 0, "queued", 0, "maybe_queued", 0);
    sb_response_json(req, 503, sb_a2a_error_response(call->id, SB_JSONRPC_UNDELIVERABLE, msg, data),
                     &h);
    sb_headers_clear(&h);
}

void sb_handle_a2a(sb_request *req)
{
    const char *ws = req->params[0];
    sb_message_kind kind;
    const char *source;
    if (req->ident.kind == SB_IDENT_ADMIN) {
        kind = SB_KIND_CHAT;
        source = "platform";
    } else {
        kind = SB_KIND_DELEGATION;
        source = req->ident.workspace_id;
    }

    sb_a2a_call call;
    sb_a2a_error err;
    memset(&call, 0, sizeof(call));
    size_t len = evbuffer_get_length(req->body);
    const char *bytes = (const char *)evbuffer_pullup(req->body, -1);
    if (sb_a2a_parse(bytes ? bytes : "", len, &call, &err) != SB_OK) {
        reject(req, ws, &call, &err);
        sb_a2a_call_clear(&call);
        return;
    }
    if (!sb_sync_loaded()) {
        answer_not_ready(req, ws, &call);
        sb_a2a_call_clear(&call);
        return;
    }
    sb_deliver(req, ws, kind, source, &call);
}
