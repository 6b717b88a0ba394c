/*
 * auth.h — who is calling: the admin token and workspace tokens.
 *
 * The admin token comes from the config; it is kept only as its SHA-256 digest.
 * Workspace tokens are minted by the admin (POST /admin/workspaces/{ws}/tokens), shown
 * once, and stored in Redis only as SHA-256 hashes. Every instance keeps an in-memory
 * replica of the token table (kept coherent through the sync channel, see sync.h), so
 * authenticating a request is a hash and a table lookup: no Redis round trip. The hash
 * of a token that recently identified a caller on this worker comes from its digest cache
 * (auth.c), the lookup is
 * made every time. Digests are compared in constant time. Tokens never appear in logs.
 *
 * Token format: "sbt_" + 64 hex chars (32 random bytes); token ids "tok_" + 16 hex.
 * Stored record: {"hash","workspace_id","token_id","created_at"} (created_at ISO-8601).
 */
#ifndef SWITCHBOARD_AUTH_H
#define SWITCHBOARD_AUTH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "switchboard/common.h"

struct sb_redis;

#define SB_TOKEN_PREFIX "sbt_"
#define SB_TOKEN_LEN (4 + 64)
#define SB_TOKEN_ID_LEN (4 + 16)

/* Who is calling: filled by the router from the Authorization header. */

typedef enum { SB_IDENT_NONE = 0, SB_IDENT_ADMIN, SB_IDENT_WORKSPACE } sb_ident_kind;

typedef struct sb_identity {
    sb_ident_kind kind;
    char workspace_id[SB_WS_ID_MAX + 1]; /* for SB_IDENT_WORKSPACE */
    char token_id[40];                   /* for SB_IDENT_WORKSPACE */
} sb_identity;

/* Sets the admin token (copied into a digest; the caller may wipe its copy) and creates
 * the token replica. NULL or "" leaves no admin token (nothing authenticates as admin).
 * Calling it again replaces the admin digest and keeps the replica. */
void sb_auth_init(const char *admin_token);
/* Forgets the admin digest and frees the replica. */
void sb_auth_shutdown(void);

/* Identifies the caller from an Authorization header value (may be NULL): "Bearer"
 * (any case), then spaces or tabs, then the token; surrounding whitespace is ignored.
 * Returns SB_OK with |out| filled, or SB_ERR_AUTH (missing, malformed or unknown) with
 * |out| zeroed (kind SB_IDENT_NONE). */
int sb_auth_identify(const char *authorization, sb_identity *out);

/* SHA-256 hex of the |len| bytes of |token| into |out|, exactly sb_sha256_hex's, through
 * this thread's digest cache (auth.c says how it is bounded): a token remembered on this
 * thread is not hashed again. Only looks; sb_auth_remember fills the cache. SB_OK, or
 * SB_ERR_AUTH with |out| untouched when the bytes cannot be a token (empty, or not all
 * visible ASCII 0x21..0x7e). */
int sb_auth_token_digest(const char *token, size_t len, char out[65]);
/* Keeps |token| -> |digest| (64 hex digits) in this thread's cache, in its slot (evicting
 * and wiping what was there). sb_auth_identify calls it once the digest identified a
 * caller; bytes that cannot be a token, or longer than the cache takes, are ignored. */
void sb_auth_remember(const char *token, size_t len, const char digest[64]);
/* Wipes and frees this thread's digest cache; call as a thread that identified callers
 * exits (before sb_alloc_thread_clear). The next lookup on the thread starts a new one. */
void sb_auth_thread_clear(void);
/* For tests: the cache slot |token| would use (SIZE_MAX: too long or empty, never
 * cached), and this thread's cache hits so far. */
size_t sb_auth_cache_slot(const char *token, size_t len);
uint64_t sb_auth_cache_hits(void);

/* Replica maintenance (called by sync.c and by the local writer right after its own
 * Redis write, so the instance that wrote sees it at once). |rec| is the stored token
 * record; |rev| orders updates. Malformed records are logged and ignored. */
void sb_auth_apply_set(const json_t *rec, long long rev);
void sb_auth_apply_del(const char *hash, long long rev);
/* A snapshot: |records| is an array of stored records (see sb_replica_apply_snapshot). */
void sb_auth_apply_snapshot(const json_t *records, long long rev);

/* Workspace tokens in the replica. */
size_t sb_auth_token_count(void);

/* The tokens of workspace |ws| in the replica, oldest first, as a new JSON array of
 * {"token_id","created_at"} (never a token or its digest); [] when it has none.
 * The caller owns the array. Thread-safe (reads under the replica's lock). */
json_t *sb_auth_list(const char *ws);

/* ---- minting and revoking through Redis ---- */

/* Mint completion, exactly once, on the connection's loop. On SB_OK |token| (shown to
 * the caller once; borrowed, wiped after the call) and |token_id| are set and the
 * replica already knows the token. Otherwise SB_ERR_UNAVAILABLE (connection lost) or
 * SB_ERR (Redis error, logged) and both are NULL. */
typedef void (*sb_auth_mint_fn)(int err, const char *token, const char *token_id, void *arg);

/* Mints a token for workspace |ws| (valid id: the caller checks). Returns SB_OK (|cb|
 * will run) or SB_ERR_UNAVAILABLE when |r| is down (|cb| never runs). */
int sb_auth_mint(struct sb_redis *r, const char *ws, sb_auth_mint_fn cb, void *arg);

/* Revoke completion: SB_OK (removed from Redis and from this replica), SB_ERR_NOTFOUND
 * (no such token id for |ws|), SB_ERR_UNAVAILABLE or SB_ERR. */
typedef void (*sb_auth_revoke_fn)(int err, void *arg);

/* Revokes |token_id| of workspace |ws|. Returns as sb_auth_mint. */
int sb_auth_revoke(struct sb_redis *r, const char *ws, const char *token_id, sb_auth_revoke_fn cb,
                   void *arg);

#endif
