/*
 * auth.h — who is calling: the admin token and workspace tokens.
 *
 * The admin token comes from the config; it is kept only as its SHA-256 digest.
 * Workspace tokens are minted by the admin (POST /admin/workspaces/{ws}/tokens), shown
 * once, and stored in Redis only as SHA-256 hashes. Every instance keeps an in-memory
 * replica of the token table (kept coherent through the sync channel, see sync.h), so
 * authenticating a request is a hash and a table lookup: no Redis round trip. Digests
 * are compared in constant time. Tokens never appear in logs.
 *
 * Token format: "sbt_" + 64 hex chars (32 random bytes).
 */
#ifndef SWITCHBOARD_AUTH_H
#define SWITCHBOARD_AUTH_H

#include <jansson.h>

#include "switchboard/request.h"

/* Sets the admin token (copied into a digest; the caller may wipe its copy). */
void sb_auth_init(const char *admin_token);
void sb_auth_shutdown(void);

/* Identifies the caller from an Authorization header value (may be NULL).
 * Returns SB_OK with |out| filled, or SB_ERR_AUTH (missing, malformed or unknown). */
int sb_auth_identify(const char *authorization, sb_identity *out);

/* Replica maintenance (called by sync.c and by the local writer right after its own
 * Redis write, so the instance that wrote sees it at once). |rec| is the stored token
 * record {"hash","workspace_id","token_id","created_at"}; |rev| orders updates. */
void sb_auth_apply_set(const json_t *rec, long long rev);
void sb_auth_apply_del(const char *hash, long long rev);

#endif
