/*
 * handler_admin.c — POST and GET /admin/workspaces/{ws}/tokens and
 * DELETE /admin/workspaces/{ws}/tokens/{token_id} (SPEC §2, §3): admin only.
 *
 * Listing answers {"tokens":[{"token_id","created_at"}]} from this instance's token
 * replica (kept coherent with Redis by the sync channel), oldest first: ids and
 * creation times only, never a token or its digest.
 *
 * Minting answers 201 {"token","token_id","workspace_id"}: the only time the token is
 * ever shown (Cache-Control: no-store), since Redis keeps just its SHA-256. Revoking
 * answers 204, or 404 token_not_found when the workspace has no such token id; the
 * token stops working on this instance before the answer and on the others when the
 * sync message lands. Redis down: 503 redis_unavailable with Retry-After.
 *
 * Never: log the token or keep it after the answer (auth.c wipes its copy).
 */
#include "switchboard/alloc.h"
#include "switchboard/auth.h"
#include "switchboard/handlers.h"
#include "switchboard/router.h"
#include "switchboard/worker.h"
#include "switchboard/util.h"

#include <stdio.h>
#include <string.h>

typedef struct admin_call {
    sb_request *req; /* holds a reference */
    char ws[SB_WS_ID_MAX + 1];
} admin_call;

static admin_call *call_new(sb_request *req, const char *ws)
{
    admin_call *c = sb_calloc(1, sizeof(*c));
    sb_request_ref(req);
    c->req = req;
    snprintf(c->ws, sizeof(c->ws), "%s", ws);
    return c;
}

static void call_free(admin_call *c)
{
    sb_request_unref(c->req);
    sb_free(c);
}

/* The {ws} of an admin route, or NULL after answering 400 or 403. */
static const char *admin_workspace(sb_request *req)
{
    if (!sb_router_require_admin(req))
        return NULL;
    const char *ws = req->params[0];
    if (ws == NULL || !sb_valid_workspace_id(ws)) {
        sb_response_error(req, 400, "invalid_workspace_id",
                          "workspace ids are 1-%d characters of A-Z a-z 0-9 . _ -", SB_WS_ID_MAX);
        return NULL;
    }
    return ws;
}

static void on_minted(int err, const char *token, const char *token_id, void *arg)
{
    admin_call *c = arg;
    if (!sb_request_gone(c->req)) {
        if (err == SB_OK) {
            sb_headers h;
            sb_headers_init(&h);
            sb_headers_add(&h, "Cache-Control", "no-store");
            json_t *body = json_pack("{s:s,s:s,s:s}", "token", token, "token_id", token_id,
                                     "workspace_id", c->ws);
            sb_response_json(c->req, 201, body, &h);
            sb_headers_clear(&h);
        } else if (err == SB_ERR_UNAVAILABLE) {
            sb_response_redis_unavailable(c->req);
        } else {
            sb_response_error(c->req, 500, "internal_error", "minting failed; see the logs");
        }
    }
    call_free(c);
}

void sb_handle_token_mint(sb_request *req)
{
    const char *ws = admin_workspace(req);
    if (ws == NULL)
        return;
    admin_call *c = call_new(req, ws);
    if (sb_auth_mint(req->worker->redis, ws, on_minted, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
}

static void on_revoked(int err, void *arg)
{
    admin_call *c = arg;
    if (!sb_request_gone(c->req)) {
        if (err == SB_OK)
            sb_response_send(c->req, 204, NULL, NULL, NULL);
        else if (err == SB_ERR_NOTFOUND)
            sb_response_error(c->req, 404, "token_not_found",
                              "workspace %s has no token with that id", c->ws);
        else if (err == SB_ERR_UNAVAILABLE)
            sb_response_redis_unavailable(c->req);
        else
            sb_response_error(c->req, 500, "internal_error", "revoking failed; see the logs");
    }
    call_free(c);
}

/* Token ids are "tok_" + hex; anything else cannot exist, so it is not sent to Redis. */
static int plausible_token_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 39)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

void sb_handle_token_revoke(sb_request *req)
{
    const char *ws = admin_workspace(req);
    if (ws == NULL)
        return;
    const char *token_id = req->params[1];
    if (!plausible_token_id(token_id)) {
        sb_response_error(req, 404, "token_not_found", "workspace %s has no token with that id",
                          ws);
        return;
    }
    admin_call *c = call_new(req, ws);
    if (sb_auth_revoke(req->worker->redis, ws, token_id, on_revoked, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
}

void sb_handle_token_list(sb_request *req)
{
    const char *ws = admin_workspace(req);
    if (ws == NULL)
        return;
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Cache-Control", "no-store");
    sb_response_json(req, 200, json_pack("{s:o}", "tokens", sb_auth_list(ws)), &h);
    sb_headers_clear(&h);
}
