/*
 * deliver.h — delivering one validated A2A request to its workspace (SPEC §4.2).
 *
 * The decision runs in the fixed order of the contract — no_endpoint, poll_mode,
 * lease_expired, circuit_open, busy — and otherwise pushes to the registered URL with
 * exactly the headers of §4.2. A push succeeds when the agent answers 2xx with a
 * JSON-RPC response (a JSON-RPC error included); its status and body are relayed
 * unchanged with X-Delivery-Mode: push. Anything else becomes exactly one reason of the
 * closed list (reason.h). Every decision is logged as one line (SPEC §5.4).
 *
 * Until the poll queue exists (next issue), a message that cannot be pushed is answered
 * 502 with X-Delivery-Reason and a JSON-RPC error (-32050) whose data names the reason
 * and detail; nothing claims a delivery that did not happen.
 */
#ifndef SWITCHBOARD_DELIVER_H
#define SWITCHBOARD_DELIVER_H

#include "switchboard/a2a.h"
#include "switchboard/request.h"

typedef enum { SB_KIND_CHAT = 0, SB_KIND_DELEGATION } sb_message_kind;

const char *sb_kind_name(sb_message_kind k);

/* Delivers |call| (ownership taken: released when done) for |req| to workspace |ws|.
 * |source| is the sender ("platform" for chat, the token's workspace for delegation).
 * Answers |req| exactly once (unless the client has gone). */
void sb_deliver(sb_request *req, const char *ws, sb_message_kind kind, const char *source,
                sb_a2a_call *call);

#endif
