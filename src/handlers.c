/*
 * handlers.c — the API: SPEC §3's route table, from route to handler.
 *
 * The handlers themselves live one route group per file (handler_*.c); this table is
 * the one place that lists them, with who may call each route. The router (HTTP layer,
 * below) matches and authenticates against whatever table it is given, so it never
 * names a handler. Order matters only among patterns that could match the same path:
 * the first match wins.
 */
#include "switchboard/handlers.h"
#include "switchboard/common.h"
#include "switchboard/router.h"

static const sb_route api_routes[] = {
    {SB_METHOD_GET, "/healthz", SB_ACCESS_PUBLIC, sb_handle_healthz},
    {SB_METHOD_GET, "/readyz", SB_ACCESS_PUBLIC, sb_handle_readyz},
    {SB_METHOD_GET, "/metrics", SB_ACCESS_PUBLIC, sb_handle_metrics},
    {SB_METHOD_POST, "/admin/workspaces/{ws}/tokens", SB_ACCESS_ADMIN, sb_handle_token_mint},
    {SB_METHOD_GET, "/admin/workspaces/{ws}/tokens", SB_ACCESS_ADMIN, sb_handle_token_list},
    {SB_METHOD_DELETE, "/admin/workspaces/{ws}/tokens/{token_id}", SB_ACCESS_ADMIN,
     sb_handle_token_revoke},
    {SB_METHOD_POST, "/registry/register", SB_ACCESS_ANY, sb_handle_register},
    {SB_METHOD_POST, "/registry/heartbeat", SB_ACCESS_ANY, sb_handle_heartbeat},
    {SB_METHOD_GET, "/registry/{ws}", SB_ACCESS_ANY, sb_handle_registry_get},
    {SB_METHOD_DELETE, "/registry/{ws}", SB_ACCESS_ANY, sb_handle_registry_delete},
    {SB_METHOD_POST, "/workspaces/{ws}/a2a", SB_ACCESS_ANY, sb_handle_a2a},
    {SB_METHOD_GET, "/workspaces/{ws}/inbox", SB_ACCESS_ANY, sb_handle_inbox_lease},
    {SB_METHOD_GET, "/workspaces/{ws}/inbox/peek", SB_ACCESS_ANY, sb_handle_inbox_peek},
    {SB_METHOD_POST, "/workspaces/{ws}/inbox/{id}/ack", SB_ACCESS_ANY, sb_handle_inbox_ack},
    {SB_METHOD_POST, "/workspaces/{ws}/inbox/{id}/nack", SB_ACCESS_ANY, sb_handle_inbox_nack},
    {SB_METHOD_GET, "/workspaces/{ws}/dead-letters", SB_ACCESS_ANY, sb_handle_dead_letters},
    {SB_METHOD_POST, "/workspaces/{ws}/dead-letters/{id}/replay", SB_ACCESS_ANY,
     sb_handle_dead_letter_replay},
    {SB_METHOD_DELETE, "/workspaces/{ws}/dead-letters/{id}", SB_ACCESS_ANY,
     sb_handle_dead_letter_purge},
    {SB_METHOD_GET, "/workspaces/{ws}/messages/{message_id}", SB_ACCESS_ANY,
     sb_handle_message_record},
    {SB_METHOD_GET, "/workspaces/{ws}/delivery", SB_ACCESS_ANY, sb_handle_workspace_delivery},
    {SB_METHOD_GET, "/delivery", SB_ACCESS_ADMIN, sb_handle_delivery_overview},
    {SB_METHOD_GET, "/workspaces/{ws}/.well-known/agent-card.json", SB_ACCESS_ANY,
     sb_handle_agent_card},
};

void sb_handlers_install(void)
{
    sb_router_install(api_routes, SB_ARRAY_LEN(api_routes));
    sb_router_set_unauthorized_hook(sb_handle_registry_unauthorized);
}

void sb_handler_send_json_buffer(sb_request *req, struct evbuffer *body)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Cache-Control", "no-store");
    sb_response_send(req, 200, &h, "application/json", body);
    sb_headers_clear(&h);
    evbuffer_free(body);
}
