/*
 * handlers.h — one function per route of SPEC §3.
 *
 * The router (router.c) has already authenticated the caller (req->ident) and filled
 * req->params in the order of the route pattern's {placeholders} before calling these.
 * Each handler answers exactly once, now or from an async callback, and must hold a
 * request reference (sb_request_ref) across any async step.
 *
 * Files: handler_health.c, handler_admin.c, handler_registry.c, handler_a2a.c,
 * handler_inbox.c, handler_metrics.c, handler_delivery.c.
 */
#ifndef SWITCHBOARD_HANDLERS_H
#define SWITCHBOARD_HANDLERS_H

#include "switchboard/request.h"

/* Installs SPEC §3's route table (handlers.c) into the router. Once, before any worker
 * starts. */
void sb_handlers_install(void);

struct evbuffer;
/* Answers 200 with the JSON text in |body| (freed here), Cache-Control: no-store: the
 * queue listings (inbox, dead letters), which must never be served from a cache. */
void sb_handler_send_json_buffer(sb_request *req, struct evbuffer *body);

/* GET /healthz, GET /readyz — public. */
void sb_handle_healthz(sb_request *req);
void sb_handle_readyz(sb_request *req);

/* GET /metrics — public: Prometheus text format 0.0.4 (metrics.h). */
void sb_handle_metrics(sb_request *req);
/* The state gauges of a scrape: endpoints and circuits of this process, Redis and the
 * replica, and — when |w| is given (NULL in unit tests) — every worker of |w|'s process
 * (connections, in-flight requests, idle agent connections, Redis connections). */
struct sb_metrics_state;
struct sb_worker;
void sb_metrics_read_state(struct sb_metrics_state *st, const struct sb_worker *w);

/* POST /admin/workspaces/{ws}/tokens, DELETE /admin/workspaces/{ws}/tokens/{token_id}
 * — admin only. */
void sb_handle_token_mint(sb_request *req);
void sb_handle_token_revoke(sb_request *req);
/* GET /admin/workspaces/{ws}/tokens: {"tokens":[{"token_id","created_at"}]}, oldest first. */
void sb_handle_token_list(sb_request *req);

/* POST /registry/register, POST /registry/heartbeat (workspace id in the body),
 * GET /registry/{ws}, DELETE /registry/{ws} — admin or that workspace. */
void sb_handle_register(sb_request *req);
void sb_handle_heartbeat(sb_request *req);
/* The router's 401 hook (sb_router_set_unauthorized_hook): a refused register or
 * heartbeat is logged and kept under the workspace its body names; other routes are
 * ignored. Never answers. */
void sb_handle_registry_unauthorized(sb_request *req);
void sb_handle_registry_get(sb_request *req);
void sb_handle_registry_delete(sb_request *req);

/* POST /workspaces/{ws}/a2a — admin (chat) or any workspace (delegation). */
void sb_handle_a2a(sb_request *req);

/* GET /workspaces/{ws}/inbox, GET /workspaces/{ws}/inbox/peek,
 * POST /workspaces/{ws}/inbox/{id}/ack, POST /workspaces/{ws}/inbox/{id}/nack
 * — admin or that workspace. */
void sb_handle_inbox_lease(sb_request *req);
void sb_handle_inbox_peek(sb_request *req);
void sb_handle_inbox_ack(sb_request *req);
void sb_handle_inbox_nack(sb_request *req);

/* GET /workspaces/{ws}/dead-letters, POST /workspaces/{ws}/dead-letters/{id}/replay,
 * DELETE /workspaces/{ws}/dead-letters/{id} — admin or that workspace (handler_dead.c). */
void sb_handle_dead_letters(sb_request *req);
void sb_handle_dead_letter_replay(sb_request *req);
void sb_handle_dead_letter_purge(sb_request *req);

/* GET /workspaces/{ws}/messages/{message_id} — admin, the target or the sender: the
 * delivery record (SPEC §5.2); 403 for another workspace, 404 when unknown. */
void sb_handle_message_record(sb_request *req);

/* GET /workspaces/{ws}/delivery — admin or that workspace: the view and verdict (§5.3). */
void sb_handle_workspace_delivery(sb_request *req);

/* GET /delivery — admin: workspaces with a backlog, recent fallbacks or an open circuit,
 * worst first: {"workspaces":[...],"circuit_scope":"instance"}. */
void sb_handle_delivery_overview(sb_request *req);

/* GET /workspaces/{ws}/.well-known/agent-card.json — admin or any workspace: the
 * registered card with every interface URL rewritten to switchboard's
 * <scheme>://<Host>/workspaces/{ws}/a2a; 404 card_not_found when none. */
void sb_handle_agent_card(sb_request *req);

#endif
