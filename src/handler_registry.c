/*
 * handler_registry.c — POST /registry/register, POST /registry/heartbeat,
 * GET /registry/{ws}, DELETE /registry/{ws} (SPEC §3, §4.1).
 *
 * Each handler validates the request, checks that the caller may act for the workspace
 * (admin or that workspace's token: sb_router_require_workspace answers 403 itself), and
 * runs one registry operation on this worker's Redis connection. The operation's
 * callback answers; a reg_call holds a request reference across it, and a client that
 * went away meanwhile gets nothing (the write still happened, which is what it asked).
 *
 * Answers: 400 invalid_json | invalid_workspace_id | invalid_request | invalid_url |
 * upstream_forbidden | url_required, 403 forbidden, 404 not_registered,
 * 503 redis_unavailable (with Retry-After), 500 internal_error (Redis answered
 * something unreadable; logged by registry.c).
 *
 * Every refused register or heartbeat (400, 403 here, 401 through the router's hook
 * sb_handle_registry_unauthorized) is logged and kept under the workspace the body
 * names (refusal.h), for the delivery view and its verdict.
 *
 * Never: echo the inbound secret anywhere but the register answer.
 */
#include "switchboard/alloc.h"
#include "switchboard/circuit.h"
#include "switchboard/drain.h"
#include "switchboard/handlers.h"
#include "switchboard/log.h"
#include "switchboard/netaddr.h"
#include "switchboard/probe.h"
#include "switchboard/record.h"
#include "switchboard/refusal.h"
#include "switchboard/registry.h"
#include "switchboard/router.h"
#include "switchboard/worker.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <stdio.h>
#include <string.h>

typedef struct reg_call {
    sb_request *req; /* holds a reference */
    char ws[SB_WS_ID_MAX + 1];
} reg_call;

static reg_call *call_new(sb_request *req, const char *ws)
{
    reg_call *c = sb_calloc(1, sizeof(*c));
    sb_request_ref(req);
    c->req = req;
    snprintf(c->ws, sizeof(c->ws), "%s", ws);
    return c;
}

static void call_free(reg_call *c)
{
    sb_request_unref(c->req);
    sb_free(c);
}

/* The common error outcomes of a registry operation. */
static void answer_failure(sb_request *req, int err, const char *ws)
{
    if (err == SB_ERR_NOTFOUND)
        sb_response_error(req, 404, "not_registered", "no endpoint is registered for workspace %s",
                          ws);
    else if (err == SB_ERR_UNAVAILABLE)
        sb_response_redis_unavailable(req);
    else
        sb_response_error(req, 500, "internal_error", "the registry store failed; see the logs");
}

/* The body as a JSON object, or NULL after answering 400 invalid_json. */
static json_t *read_object(sb_request *req)
{
    size_t len = req->body ? evbuffer_get_length(req->body) : 0;
    const char *bytes = len ? (const char *)evbuffer_pullup(req->body, -1) : "";
    json_error_t jerr;
    json_t *j = json_loadb(bytes, len, 0, &jerr);
    if (!json_is_object(j)) {
        if (j == NULL)
            sb_response_error(req, 400, "invalid_json", "the body is not JSON: %s (at byte %d)",
                              jerr.text, jerr.position);
        else
            sb_response_error(req, 400, "invalid_json", "the body must be a JSON object");
        json_decref(j);
        return NULL;
    }
    return j;
}

/* The workspace id of a body, or NULL after answering 400. */
static const char *body_workspace(sb_request *req, const json_t *body)
{
    const char *ws = json_string_value(json_object_get(body, "workspace_id"));
    if (ws == NULL || !sb_valid_workspace_id(ws)) {
        sb_response_error(req, 400, "invalid_workspace_id",
                          "workspace_id must be 1-%d characters of A-Z a-z 0-9 . _ -",
                          SB_WS_ID_MAX);
        return NULL;
    }
    return ws;
}

/* An optional integer field in [min, max]: absent or null leaves |*out| alone. SB_OK, or
 * SB_ERR_INVALID after answering 400. */
static int optional_int(sb_request *req, const json_t *body, const char *name, long long min,
                        long long max, int *out)
{
    const json_t *v = json_object_get(body, name);
    if (v == NULL || json_is_null(v))
        return SB_OK;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        sb_response_error(req, 400, "invalid_request", "%s must be an integer from %lld to %lld",
                          name, min, max);
        return SB_ERR_INVALID;
    }
    *out = (int)json_integer_value(v);
    return SB_OK;
}

/* ---- refused registrations (SPEC §4.1) ---- */

/* Notes the refusal just answered on |req| (400 or 403 through sb_response_error, or
 * the router's 401) under |ws| (may be NULL: logged only). */
static void note_refusal(sb_request *req, const char *route, const char *ws, const char *code,
                         const char *message)
{
    sb_refusal f = {.ws = ws,
                    .route = route,
                    .status = req->status,
                    .code = code,
                    .message = message,
                    .admin = req->ident.kind == SB_IDENT_ADMIN,
                    .peer = req->peer,
                    .at_ms = sb_now_wall_ms()};
    if (req->ident.kind == SB_IDENT_WORKSPACE) {
        f.token_workspace = req->ident.workspace_id;
        f.token_id = req->ident.token_id;
    }
    sb_refusal_note(req->worker ? req->worker->redis : NULL, &f);
}

/* After a handler's synchronous validation: a 400 or 403 it answered is a refusal. */
static void note_if_refused(sb_request *req, const char *route, const char *ws)
{
    if (req->resp_state != SB_RESP_NONE && (req->status == 400 || req->status == 403))
        note_refusal(req, route, ws, req->error_code, req->error_message);
}

/* The workspace_id a body names when it is a valid id, else NULL; never answers. */
static const char *named_workspace(const json_t *body)
{
    const char *ws = json_string_value(json_object_get(body, "workspace_id"));
    return ws != NULL && sb_valid_workspace_id(ws) ? ws : NULL;
}

void sb_handle_registry_unauthorized(sb_request *req)
{
    const char *route = NULL;
    if (req->route != NULL && strcmp(req->route, "/registry/register") == 0)
        route = "register";
    else if (req->route != NULL && strcmp(req->route, "/registry/heartbeat") == 0)
        route = "heartbeat";
    if (route == NULL)
        return;
    size_t len = req->body ? evbuffer_get_length(req->body) : 0;
    json_t *body =
        len ? json_loadb((const char *)evbuffer_pullup(req->body, -1), len, 0, NULL) : NULL;
    int has_token = sb_headers_get(&req->headers, "Authorization") != NULL;
    note_refusal(req, route, named_workspace(body), "unauthorized",
                 has_token ? "the token is not known to switchboard (revoked, mistyped, or "
                             "minted by another deployment)"
                           : "no Authorization: Bearer token was sent");
    json_decref(body);
}

/* ---- POST /registry/register ---- */

/* Parses and checks everything but the workspace id into |reg| (pointers borrowed from
 * |body|). SB_OK, or SB_ERR_INVALID after answering 400. */
static int parse_registration(sb_request *req, const json_t *body, sb_registration *reg)
{
    const sb_config *cfg = req->worker->cfg;
    const json_t *url = json_object_get(body, "url");
    if (json_is_string(url)) {
        sb_url u;
        if (sb_url_parse(json_string_value(url), &u) != SB_OK) {
            sb_response_error(req, 400, "invalid_url",
                              "url must be an absolute http:// or https:// URL with a host");
            return SB_ERR_INVALID;
        }
        int forbidden = sb_host_forbidden(u.host, cfg ? cfg->allow_upstream : NULL,
                                          cfg ? cfg->n_allow_upstream : 0);
        sb_url_clear(&u);
        if (forbidden) {
            sb_response_error(req, 400, "upstream_forbidden",
                              "the url's host is in a forbidden range (loopback, link-local, "
                              "multicast or unspecified); see --allow-upstream");
            return SB_ERR_INVALID;
        }
        reg->url = json_string_value(url);
    } else if (url != NULL && !json_is_null(url)) {
        sb_response_error(req, 400, "invalid_url", "url must be a string");
        return SB_ERR_INVALID;
    }

    const json_t *mode = json_object_get(body, "delivery_mode");
    const char *m = json_string_value(mode);
    if (mode == NULL || json_is_null(mode))
        reg->mode = reg->url ? SB_MODE_PUSH : SB_MODE_POLL;
    else if (m != NULL && strcmp(m, "push") == 0)
        reg->mode = SB_MODE_PUSH;
    else if (m != NULL && strcmp(m, "poll") == 0)
        reg->mode = SB_MODE_POLL;
    else {
        sb_response_error(req, 400, "invalid_request",
                          "delivery_mode must be \"push\" or \"poll\"");
        return SB_ERR_INVALID;
    }
    if (reg->mode == SB_MODE_PUSH && reg->url == NULL) {
        sb_response_error(req, 400, "url_required", "delivery_mode push needs a url");
        return SB_ERR_INVALID;
    }

    const json_t *proto = json_object_get(body, "protocol");
    const char *p = json_string_value(proto);
    if (proto == NULL || json_is_null(proto) || (p != NULL && strcmp(p, "auto") == 0))
        reg->protocol = SB_PROTO_AUTO;
    else if (p != NULL && strcmp(p, "http1") == 0)
        reg->protocol = SB_PROTO_HTTP1;
    else if (p != NULL && strcmp(p, "h2c") == 0)
        reg->protocol = SB_PROTO_H2C;
    else {
        sb_response_error(req, 400, "invalid_request",
                          "protocol must be \"auto\", \"http1\" or \"h2c\"");
        return SB_ERR_INVALID;
    }

    const json_t *card = json_object_get(body, "agent_card");
    if (json_is_object(card)) {
        reg->agent_card = card;
    } else if (card != NULL && !json_is_null(card)) {
        sb_response_error(req, 400, "invalid_request", "agent_card must be a JSON object");
        return SB_ERR_INVALID;
    }
    /* 0 means "none" for both, as in the stored record. */
    if (optional_int(req, body, "lease_s", 0, SB_REGISTRY_MAX_LEASE_S, &reg->lease_s) != SB_OK ||
        optional_int(req, body, "max_concurrency", 0, SB_REGISTRY_MAX_CONCURRENCY,
                     &reg->max_concurrency) != SB_OK)
        return SB_ERR_INVALID;
    const json_t *ordered = json_object_get(body, "ordered");
    if (ordered != NULL && !json_is_boolean(ordered) && !json_is_null(ordered)) {
        sb_response_error(req, 400, "invalid_request", "ordered must be true or false");
        return SB_ERR_INVALID;
    }
    reg->ordered = json_is_true(ordered);
    return SB_OK;
}

/* The probe as the registering agent sees it: without the fetched card (the card route
 * serves it), and with the card of the register body compared the same way (SPEC §4.1)
 * under "registered_card". Takes |probe| (may be NULL); returns a new value. */
static json_t *probe_answer(const sb_endpoint *ep, json_t *probe)
{
    if (probe == NULL && (ep->agent_card == NULL || ep->url_str == NULL))
        return json_null();
    json_t *p = probe ? json_deep_copy(probe) : json_object();
    json_decref(probe);
    json_object_del(p, "card");
    if (ep->agent_card != NULL && ep->url_str != NULL) {
        json_t *rc = json_object();
        sb_probe_judge_card(rc, ep->agent_card, ep->url_str, "given at registration");
        json_object_set_new(p, "registered_card", rc);
        const char *w = json_string_value(json_object_get(rc, "warning"));
        if (w != NULL)
            sb_log(SB_LOG_WARN, "probe_warning", "workspace %s: %s", ep->workspace_id, w);
    }
    return p;
}

static void answer_registered(sb_request *req, const sb_endpoint *ep, json_t *probe)
{
    probe = probe_answer(ep, probe);
    json_t *body = json_object();
    json_object_set_new(body, "status", json_string("registered"));
    json_object_set_new(body, "workspace_id", sb_json_text(ep->workspace_id));
    json_object_set_new(body, "delivery_mode", json_string(sb_delivery_mode_name(ep->mode)));
    json_object_set_new(body, "inbound_secret", sb_json_text(ep->inbound_secret));
    json_object_set_new(body, "lease_expires_at", sb_json_iso8601(ep->lease_expires_at_ms));
    json_object_set_new(body, "probe", probe);
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Cache-Control", "no-store"); /* the answer carries a secret */
    sb_response_json(req, 200, body, &h);
    sb_headers_clear(&h);
}

/* The registration probe (SPEC §4.1, probe.c) runs after the record is stored, for
 * push mode, and its finding is part of the answer: a card advertising another URL is
 * the classic cause of silent fallback, so the registering agent hears about it now. */
typedef struct probe_call {
    reg_call *call;
    sb_endpoint *ep; /* holds a reference */
    json_t *result;  /* the probe's finding, owned */
} probe_call;

/* The finding is stored with the registration (GET /registry/{ws} and the delivery view
 * show it on every instance) before the registering agent hears it. */
static void on_probe_stored(int err, sb_endpoint *stored, void *arg)
{
    probe_call *pc = arg;
    if (err != SB_OK && err != SB_ERR_NOTFOUND)
        sb_log(SB_LOG_WARN, "probe_not_stored", "workspace %s: the probe result was not stored",
               pc->ep->workspace_id);
    answer_registered(pc->call->req, pc->ep, pc->result); /* a no-op when the client left */
    sb_endpoint_release(pc->ep);
    call_free(pc->call);
    sb_free(pc);
}

static void on_probed(json_t *result, void *arg)
{
    probe_call *pc = arg;
    const char *warning = json_string_value(json_object_get(result, "warning"));
    if (warning != NULL)
        sb_log(SB_LOG_WARN, "probe_warning", "workspace %s: %s", pc->ep->workspace_id, warning);
    pc->result = result;
    if (sb_registry_set_probe(pc->call->req->worker->redis, pc->ep->workspace_id,
                              pc->ep->registered_at_ms, result, on_probe_stored, pc) != SB_OK)
        on_probe_stored(SB_ERR_UNAVAILABLE, NULL, pc);
}

static void probe_then_answer(reg_call *c, sb_endpoint *ep)
{
    if (ep->mode != SB_MODE_PUSH || ep->url_str == NULL) {
        answer_registered(c->req, ep, NULL);
        call_free(c);
        return;
    }
    probe_call *pc = sb_calloc(1, sizeof(*pc));
    pc->call = c;
    sb_endpoint_ref(ep);
    pc->ep = ep;
    sb_probe_agent_card(c->req->worker->upstream, &ep->url, ep->url_str, ep->protocol, on_probed,
                        pc);
}

static void on_registered(int err, sb_endpoint *ep, void *arg)
{
    reg_call *c = arg;
    if (err == SB_OK) { /* the agent states its endpoint anew: old failures are moot */
        sb_circuit_reset(c->ws);
        sb_drain_kick(c->req->worker, c->ws);
        sb_record_note n = {.ws = c->ws,
                            .kind = SB_NOTE_REGISTERED,
                            .at_ms = sb_now_wall_ms(),
                            .retain_ms = (int64_t)c->req->worker->cfg->queue_ttl_s * 1000};
        sb_record_note_send(c->req->worker->redis, &n);
    }
    if (err != SB_OK) {
        answer_failure(c->req, err, c->ws);
        call_free(c);
        return;
    }
    probe_then_answer(c, ep);
}

void sb_handle_register(sb_request *req)
{
    json_t *body = read_object(req);
    if (body == NULL) {
        note_if_refused(req, "register", NULL);
        return;
    }
    sb_registration reg;
    memset(&reg, 0, sizeof(reg));
    reg.workspace_id = body_workspace(req, body);
    if (reg.workspace_id == NULL || !sb_router_require_workspace(req, reg.workspace_id) ||
        parse_registration(req, body, &reg) != SB_OK) {
        note_if_refused(req, "register", named_workspace(body));
        json_decref(body);
        return;
    }
    reg_call *c = call_new(req, reg.workspace_id);
    if (sb_registry_register(req->worker->redis, &reg, on_registered, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
    json_decref(body);
}

/* ---- POST /registry/heartbeat ---- */

static void on_heartbeat(int err, sb_endpoint *ep, void *arg)
{
    reg_call *c = arg;
    if (err == SB_OK)
        sb_drain_kick(c->req->worker, c->ws);
    if (!sb_request_gone(c->req)) {
        if (err != SB_OK) {
            answer_failure(c->req, err, c->ws);
        } else {
            json_t *body = json_object();
            json_object_set_new(body, "status", json_string("ok"));
            json_object_set_new(body, "workspace_id", sb_json_text(ep->workspace_id));
            json_object_set_new(body, "delivery_mode",
                                json_string(sb_delivery_mode_name(ep->mode)));
            json_object_set_new(body, "lease_expires_at", sb_json_iso8601(ep->lease_expires_at_ms));
            json_object_set_new(body, "active_tasks", json_integer(ep->active_tasks));
            json_object_set_new(body, "max_concurrency",
                                ep->max_concurrency > 0 ? json_integer(ep->max_concurrency)
                                                        : json_null());
            sb_response_json(c->req, 200, body, NULL);
        }
    }
    call_free(c);
}

void sb_handle_heartbeat(sb_request *req)
{
    json_t *body = read_object(req);
    if (body == NULL) {
        note_if_refused(req, "heartbeat", NULL);
        return;
    }
    int active = -1; /* not reported: keep the last value */
    const char *ws = body_workspace(req, body);
    if (ws == NULL || !sb_router_require_workspace(req, ws) ||
        optional_int(req, body, "active_tasks", 0, SB_REGISTRY_MAX_CONCURRENCY * 100LL, &active) !=
            SB_OK) {
        note_if_refused(req, "heartbeat", named_workspace(body));
        json_decref(body);
        return;
    }
    reg_call *c = call_new(req, ws);
    if (sb_registry_heartbeat(req->worker->redis, ws, active, on_heartbeat, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
    json_decref(body);
}

/* ---- GET /registry/{ws} ---- */

static void on_fetched(int err, sb_endpoint *ep, void *arg)
{
    reg_call *c = arg;
    if (!sb_request_gone(c->req)) {
        if (err == SB_OK)
            sb_response_json(c->req, 200, sb_endpoint_to_json(ep), NULL);
        else
            answer_failure(c->req, err, c->ws);
    }
    call_free(c);
}

/* The workspace of a /registry/{ws} route, or NULL after answering 400 or 403. */
static const char *path_workspace(sb_request *req)
{
    const char *ws = req->params[0];
    if (ws == NULL || !sb_valid_workspace_id(ws)) {
        sb_response_error(req, 400, "invalid_workspace_id",
                          "workspace ids are 1-%d characters of A-Z a-z 0-9 . _ -", SB_WS_ID_MAX);
        return NULL;
    }
    return sb_router_require_workspace(req, ws) ? ws : NULL;
}

void sb_handle_registry_get(sb_request *req)
{
    const char *ws = path_workspace(req);
    if (ws == NULL)
        return;
    /* Redis is the authority (a register on another instance may not have reached this
     * replica yet); the reply also refreshes the replica. */
    reg_call *c = call_new(req, ws);
    if (sb_registry_fetch(req->worker->redis, ws, on_fetched, c) == SB_OK)
        return;
    call_free(c);
    /* Redis is down: the loaded replica is what this instance acts on, so show it. */
    if (!sb_sync_ready()) {
        sb_response_redis_unavailable(req);
        return;
    }
    sb_endpoint *ep = sb_registry_get(ws);
    if (ep == NULL) {
        answer_failure(req, SB_ERR_NOTFOUND, ws);
        return;
    }
    sb_response_json(req, 200, sb_endpoint_to_json(ep), NULL);
    sb_endpoint_release(ep);
}

/* ---- DELETE /registry/{ws} ---- */

static void on_deleted(int err, sb_endpoint *ep, void *arg)
{
    reg_call *c = arg;
    if (!sb_request_gone(c->req)) {
        if (err == SB_OK)
            sb_response_send(c->req, 204, NULL, NULL, NULL);
        else
            answer_failure(c->req, err, c->ws);
    }
    call_free(c);
}

void sb_handle_registry_delete(sb_request *req)
{
    const char *ws = path_workspace(req);
    if (ws == NULL)
        return;
    reg_call *c = call_new(req, ws);
    if (sb_registry_delete(req->worker->redis, ws, on_deleted, c) != SB_OK) {
        call_free(c);
        sb_response_redis_unavailable(req);
    }
}
