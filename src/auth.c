/*
 * auth.c — the admin digest, the workspace-token replica, and token minting/revoking
 * (see auth.h; key layout in proto/redis-schema.md).
 *
 * A bearer token is never stored anywhere: only SHA-256(token) as 64 hex chars. The
 * admin digest is compared with sb_ct_equal; a workspace token is found by its digest
 * in the replica (an sb_replica of digest → {workspace_id, token_id}), whose lookup
 * time reveals nothing useful about a token since the key is a hash of it.
 *
 * Mint and revoke are one Lua script each (HSET/HDEL of both hashes, revision bump,
 * publish), applied to this instance's replica before the callback, so a revoked token
 * stops working here before the 204 is sent and on other instances when the pub/sub
 * message lands.
 *
 * Digest cache. SHA-256 of a token is most of what identifying a caller costs (~3.4k
 * instructions against ~0.3k for the rest), and token -> digest is a pure function, so each
 * thread keeps the digests of the tokens that last identified a caller on it: a
 * direct-mapped table of CACHE_SLOTS
 * slots, allocated on the thread's first lookup and wiped (OPENSSL_cleanse) and freed by
 * sb_auth_thread_clear() at worker exit; a slot is wiped before it is reused. The digest
 * is still looked up in the replica on every request, so a revoked token stops working
 * exactly as before. A token enters the cache only after sb_auth_identify matched its
 * digest (sb_auth_remember), so a stranger's guesses never evict a caller's entry, and
 * the slot can be a plain FNV-1a of the token (sb_fnv1a): only holders of valid tokens can
 * place entries. A hit needs the same length and the whole token equal in constant time
 * (sb_ct_equal); tokens over CACHE_TOKEN_MAX bytes are hashed every time. The cost: the
 * last valid tokens each worker saw (at most CACHE_SLOTS) stay in its memory (like the
 * request buffers they came in, but for longer) until evicted or exit.
 *
 * Never: log a token or a digest of one, or keep a plaintext token past the mint callback
 * (outside the digest cache above).
 */
#include "switchboard/auth.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"

#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Longer Authorization values are refused without hashing. */
#define MAX_TOKEN_LEN 4096

/* Token ids must fit sb_identity.token_id. */
#define TOKEN_ID_CAP 40
_Static_assert(sizeof(((sb_identity *)0)->token_id) == TOKEN_ID_CAP, "token id capacity");
_Static_assert(SB_TOKEN_ID_LEN < TOKEN_ID_CAP, "minted token ids fit an identity");

typedef struct token_entry {
    char workspace_id[SB_WS_ID_MAX + 1];
    char token_id[TOKEN_ID_CAP];
    char created_at[40]; /* ISO-8601 as stored; "" when the record had none */
} token_entry;

static char g_admin_digest[65];
static int g_admin_set;
static sb_replica *g_tokens;

static void release_entry(void *value)
{
    sb_free(value);
}

void sb_auth_init(const char *admin_token)
{
    if (admin_token != NULL && admin_token[0] != '\0') {
        sb_sha256_hex(admin_token, strlen(admin_token), g_admin_digest);
        g_admin_set = 1;
    } else {
        OPENSSL_cleanse(g_admin_digest, sizeof(g_admin_digest));
        g_admin_set = 0;
    }
    if (g_tokens == NULL)
        g_tokens = sb_replica_new(release_entry);
    static const sb_sync_table table = {sb_auth_apply_set, sb_auth_apply_del,
                                        sb_auth_apply_snapshot};
    sb_sync_register(SB_SYNC_TOKENS, &table);
}

void sb_auth_shutdown(void)
{
    OPENSSL_cleanse(g_admin_digest, sizeof(g_admin_digest));
    g_admin_set = 0;
    sb_replica_free(g_tokens);
    g_tokens = NULL;
}

/* ---- the per-thread digest cache (design paragraph above) ---- */

#define CACHE_SLOTS 128     /* a power of two */
#define CACHE_TOKEN_MAX 128 /* minted tokens are SB_TOKEN_LEN (68) */
_Static_assert((CACHE_SLOTS & (CACHE_SLOTS - 1)) == 0, "slots: a power of two");
_Static_assert(SB_TOKEN_LEN <= CACHE_TOKEN_MAX, "minted tokens are cached");

typedef struct cache_slot {
    size_t len; /* 0: empty */
    char digest[64];
    char token[CACHE_TOKEN_MAX];
} cache_slot;

static __thread cache_slot *t_cache; /* CACHE_SLOTS slots, on first use */
static __thread uint64_t t_hits;
size_t sb_auth_cache_slot(const char *token, size_t len)
{
    if (len == 0 || len > CACHE_TOKEN_MAX)
        return SIZE_MAX;
    return (size_t)sb_fnv1a(token, len) & (CACHE_SLOTS - 1);
}

/* 1 when the |len| bytes at |p| are one run of visible ASCII, as a token is. */
static int is_token(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c >= 0x7f)
            return 0;
    }
    return 1;
}

/* sb_auth_token_digest, and *|hit| = 1 when the digest came from the cache. */
static int token_digest(const char *token, size_t len, char out[65], int *hit)
{
    *hit = 0;
    size_t i = sb_auth_cache_slot(token, len);
    if (i != SIZE_MAX && t_cache != NULL) {
        const cache_slot *s = &t_cache[i];
        if (s->len == len && sb_ct_equal(s->token, token, len)) {
            /* only tokens that passed is_token (and identified a caller) are kept */
            memcpy(out, s->digest, 64);
            out[64] = '\0';
            t_hits++;
            *hit = 1;
            return SB_OK;
        }
    }
    if (len == 0 || !is_token(token, len))
        return SB_ERR_AUTH;
    sb_sha256_hex(token, len, out);
    return SB_OK;
}

int sb_auth_token_digest(const char *token, size_t len, char out[65])
{
    int hit;
    return token_digest(token, len, out, &hit);
}

void sb_auth_remember(const char *token, size_t len, const char digest[64])
{
    size_t i = sb_auth_cache_slot(token, len);
    if (i == SIZE_MAX || !is_token(token, len))
        return;
    if (t_cache == NULL)
        t_cache = sb_calloc(CACHE_SLOTS, sizeof(*t_cache));
    cache_slot *s = &t_cache[i];
    if (s->len != 0)
        OPENSSL_cleanse(s, sizeof(*s));
    memcpy(s->token, token, len);
    memcpy(s->digest, digest, 64);
    s->len = len;
}

uint64_t sb_auth_cache_hits(void)
{
    return t_hits;
}

void sb_auth_thread_clear(void)
{
    if (t_cache != NULL) {
        OPENSSL_cleanse(t_cache, CACHE_SLOTS * sizeof(*t_cache));
        sb_free(t_cache);
        t_cache = NULL;
    }
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static void copy_entry(void *value, void *arg)
{
    const token_entry *e = value;
    sb_identity *out = arg;
    out->kind = SB_IDENT_WORKSPACE;
    memcpy(out->workspace_id, e->workspace_id, sizeof(out->workspace_id));
    memcpy(out->token_id, e->token_id, sizeof(out->token_id));
}

int sb_auth_identify(const char *authorization, sb_identity *out)
{
    memset(out, 0, sizeof(*out));
    if (authorization == NULL)
        return SB_ERR_AUTH;
    const char *p = authorization;
    while (is_blank(*p))
        p++;
    if (strncasecmp(p, "Bearer", 6) != 0 || !is_blank(p[6]))
        return SB_ERR_AUTH;
    p += 6;
    while (is_blank(*p))
        p++;
    size_t len = strlen(p);
    while (len > 0 && is_blank(p[len - 1]))
        len--;
    char digest[65];
    int hit;
    if (len == 0 || len > MAX_TOKEN_LEN || token_digest(p, len, digest, &hit) != SB_OK)
        return SB_ERR_AUTH; /* a token is one run of visible ASCII */
    int rc = SB_ERR_AUTH;
    if (g_admin_set && sb_ct_equal(digest, g_admin_digest, 64)) {
        out->kind = SB_IDENT_ADMIN;
        rc = SB_OK;
    } else if (g_tokens != NULL && sb_replica_read(g_tokens, digest, copy_entry, out)) {
        rc = SB_OK;
    }
    if (rc == SB_OK && !hit)
        sb_auth_remember(p, len, digest); /* only a token that identified a caller */
    OPENSSL_cleanse(digest, sizeof(digest));
    return rc;
}

static int is_digest(const char *s)
{
    if (s == NULL || strlen(s) != 64)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

/* A replica entry from a validated stored record (|ws| and |id| checked by the caller). */
static token_entry *entry_new(const json_t *rec, const char *ws, const char *id)
{
    token_entry *e = sb_calloc(1, sizeof(*e));
    snprintf(e->workspace_id, sizeof(e->workspace_id), "%s", ws);
    snprintf(e->token_id, sizeof(e->token_id), "%s", id);
    const char *at = json_string_value(json_object_get(rec, "created_at"));
    if (at != NULL && strlen(at) < sizeof(e->created_at))
        snprintf(e->created_at, sizeof(e->created_at), "%s", at);
    return e;
}

void sb_auth_apply_set(const json_t *rec, long long rev)
{
    const char *hash = json_string_value(json_object_get(rec, "hash"));
    const char *ws = json_string_value(json_object_get(rec, "workspace_id"));
    const char *id = json_string_value(json_object_get(rec, "token_id"));
    if (!is_digest(hash) || ws == NULL || !sb_valid_workspace_id(ws) || id == NULL ||
        id[0] == '\0' || strlen(id) >= TOKEN_ID_CAP) {
        sb_log(SB_LOG_WARN, "auth_bad_record", "ignoring a malformed token record (rev %lld)", rev);
        return;
    }
    if (g_tokens == NULL)
        return;
    sb_replica_apply(g_tokens, hash, entry_new(rec, ws, id), rev);
}

void sb_auth_apply_del(const char *hash, long long rev)
{
    if (g_tokens != NULL && is_digest(hash))
        sb_replica_apply(g_tokens, hash, NULL, rev);
}

void sb_auth_apply_snapshot(const json_t *records, long long rev)
{
    if (g_tokens == NULL)
        return;
    size_t n = json_array_size(records), k = 0;
    const char **keys = sb_calloc(n + 1, sizeof(char *));
    void **values = sb_calloc(n + 1, sizeof(void *));
    for (size_t i = 0; i < n; i++) {
        const json_t *rec = json_array_get(records, i);
        const char *hash = json_string_value(json_object_get(rec, "hash"));
        const char *ws = json_string_value(json_object_get(rec, "workspace_id"));
        const char *id = json_string_value(json_object_get(rec, "token_id"));
        if (!is_digest(hash) || ws == NULL || !sb_valid_workspace_id(ws) || id == NULL ||
            id[0] == '\0' || strlen(id) >= TOKEN_ID_CAP) {
            sb_log(SB_LOG_WARN, "auth_bad_record", "snapshot: skipping a malformed token record");
            continue;
        }
        keys[k] = hash; /* borrowed from |records| for the call */
        values[k++] = entry_new(rec, ws, id);
    }
    sb_replica_apply_snapshot(g_tokens, k, keys, values, rev);
    sb_free(keys);
    sb_free(values);
}

size_t sb_auth_token_count(void)
{
    return g_tokens ? sb_replica_count(g_tokens) : 0;
}

typedef struct list_ctx {
    const char *ws;
    json_t *out;
} list_ctx;

static void list_one(const char *key, void *value, void *arg)
{
    (void)key;
    const token_entry *e = value;
    list_ctx *c = arg;
    if (strcmp(e->workspace_id, c->ws) != 0)
        return;
    json_array_append_new(c->out, json_pack("{s:s,s:s?}", "token_id", e->token_id, "created_at",
                                            e->created_at[0] ? e->created_at : NULL));
}

static int by_created_at(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    const char *sx = json_string_value(json_object_get(x, "created_at"));
    const char *sy = json_string_value(json_object_get(y, "created_at"));
    int c = strcmp(sx ? sx : "", sy ? sy : "");
    if (c != 0)
        return c;
    return strcmp(json_string_value(json_object_get(x, "token_id")),
                  json_string_value(json_object_get(y, "token_id")));
}

json_t *sb_auth_list(const char *ws)
{
    list_ctx c = {ws, json_array()};
    if (g_tokens != NULL)
        sb_replica_foreach(g_tokens, list_one, &c);
    size_t n = json_array_size(c.out);
    if (n < 2)
        return c.out;
    json_t **items = sb_calloc(n, sizeof(*items));
    for (size_t i = 0; i < n; i++)
        items[i] = json_incref(json_array_get(c.out, i));
    qsort(items, n, sizeof(*items), by_created_at);
    json_t *sorted = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(sorted, items[i]);
    sb_free(items);
    json_decref(c.out);
    return sorted;
}

/* ---- minting and revoking ---- */

/* KEYS: token hash, workspace token index (fields "<ws>:<token id>"), revision. ARGV:
 * digest, token id, record, ws. Returns the revision. */
static const char mint_lua[] =
    "local f = ARGV[4] .. ':' .. ARGV[2]\n"
    "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or\n"
    "   redis.call('HEXISTS', KEYS[2], f) == 1 then\n"
    "  return redis.error_reply('SBCOLLISION token or token id exists')\n"
    "end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])\n"
    "redis.call('HSET', KEYS[2], f, ARGV[1])\n"
    "local rev = sb_bump(KEYS[3])\n"
    "sb_publish('token', 'set', ARGV[1], rev, ARGV[3])\n"
    "return rev\n";

/* KEYS: token hash, workspace token index, revision. ARGV: token id, ws. Returns
 * {rev, digest}, or nil when the workspace has no such token. */
static const char revoke_lua[] = "local f = ARGV[2] .. ':' .. ARGV[1]\n"
                                 "local h = redis.call('HGET', KEYS[2], f)\n"
                                 "if not h then return false end\n"
                                 "redis.call('HDEL', KEYS[2], f)\n"
                                 "redis.call('HDEL', KEYS[1], h)\n"
                                 "local rev = sb_bump(KEYS[3])\n"
                                 "sb_publish('token', 'del', h, rev, nil)\n"
                                 "return {rev, h}\n";

typedef struct mint_op {
    sb_redis *redis; /* the writer's connection, for the sync barrier */
    sb_auth_mint_fn cb;
    void *arg;
    char token[SB_TOKEN_LEN + 1];
    char token_id[SB_TOKEN_ID_LEN + 1];
    char ws[SB_WS_ID_MAX + 1];
    json_t *rec;
} mint_op;

static void mint_op_free(mint_op *op)
{
    OPENSSL_cleanse(op->token, sizeof(op->token));
    json_decref(op->rec);
    sb_free(op);
}

static void on_mint_barrier(void *arg)
{
    mint_op *op = arg;
    op->cb(SB_OK, op->token, op->token_id, op->arg);
    mint_op_free(op);
}

static void on_mint_reply(redisReply *rep, void *arg)
{
    mint_op *op = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER) {
        sb_auth_apply_set(op->rec, rep->integer);
        sb_log(SB_LOG_INFO, "token_minted", "workspace %s: token %s minted", op->ws, op->token_id);
        /* The token must work on every instance before its owner sees it. */
        sb_sync_barrier(op->redis, rep->integer, on_mint_barrier, op);
        return;
    } else {
        if (rep != NULL)
            sb_log(SB_LOG_ERROR, "token_mint_failed", "workspace %s: %s", op->ws,
                   rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        op->cb(rep == NULL ? SB_ERR_UNAVAILABLE : SB_ERR, NULL, NULL, op->arg);
    }
    mint_op_free(op);
}

int sb_auth_mint(sb_redis *r, const char *ws, sb_auth_mint_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    mint_op *op = sb_calloc(1, sizeof(*op));
    op->redis = r;
    op->cb = cb;
    op->arg = arg;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    sb_random_token(SB_TOKEN_PREFIX, 32, op->token, sizeof(op->token));
    sb_random_token("tok_", 8, op->token_id, sizeof(op->token_id));
    char digest[65], created[32];
    sb_sha256_hex(op->token, strlen(op->token), digest);
    sb_format_iso8601(sb_now_wall_ms(), created);
    op->rec = json_pack("{s:s,s:s,s:s,s:s}", "hash", digest, "workspace_id", ws, "token_id",
                        op->token_id, "created_at", created);
    size_t n = json_dumpb(op->rec, NULL, 0, JSON_COMPACT);
    char *text = sb_malloc(n + 1);
    json_dumpb(op->rec, text, n, JSON_COMPACT);
    text[n] = '\0';
    const char *args[] = {
        SB_SYNC_TOKENS_KEY, SB_SYNC_WS_TOKENS_KEY, SB_SYNC_REV_KEY, digest, op->token_id, text, ws};
    int rc = sb_sync_eval(r, mint_lua, 3, (int)SB_ARRAY_LEN(args), args, on_mint_reply, op);
    sb_free(text);
    if (rc != SB_OK) {
        mint_op_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

typedef struct revoke_op {
    sb_redis *redis; /* the writer's connection, for the sync barrier */
    sb_auth_revoke_fn cb;
    void *arg;
    char ws[SB_WS_ID_MAX + 1];
    char token_id[64];
} revoke_op;

static void on_revoke_barrier(void *arg)
{
    revoke_op *op = arg;
    op->cb(SB_OK, op->arg);
    sb_free(op);
}

static void on_revoke_reply(redisReply *rep, void *arg)
{
    revoke_op *op = arg;
    int err;
    if (rep == NULL) {
        err = SB_ERR_UNAVAILABLE;
    } else if (rep->type == REDIS_REPLY_NIL) {
        err = SB_ERR_NOTFOUND;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
               rep->element[0]->type == REDIS_REPLY_INTEGER &&
               rep->element[1]->type == REDIS_REPLY_STRING) {
        sb_auth_apply_del(rep->element[1]->str, rep->element[0]->integer);
        sb_log(SB_LOG_INFO, "token_revoked", "workspace %s: token %s revoked", op->ws,
               op->token_id);
        /* "Stops working at once": on every instance, before the 204. */
        sb_sync_barrier(op->redis, rep->element[0]->integer, on_revoke_barrier, op);
        return;
    } else {
        sb_log(SB_LOG_ERROR, "token_revoke_failed", "workspace %s: %s", op->ws,
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        err = SB_ERR;
    }
    op->cb(err, op->arg);
    sb_free(op);
}

int sb_auth_revoke(sb_redis *r, const char *ws, const char *token_id, sb_auth_revoke_fn cb,
                   void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    revoke_op *op = sb_calloc(1, sizeof(*op));
    op->redis = r;
    op->cb = cb;
    op->arg = arg;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    snprintf(op->token_id, sizeof(op->token_id), "%s", token_id);
    const char *args[] = {SB_SYNC_TOKENS_KEY, SB_SYNC_WS_TOKENS_KEY, SB_SYNC_REV_KEY, token_id, ws};
    if (sb_sync_eval(r, revoke_lua, 3, (int)SB_ARRAY_LEN(args), args, on_revoke_reply, op) !=
        SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}
