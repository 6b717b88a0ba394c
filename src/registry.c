/*
 * registry.c — endpoint records: the replica every worker reads, their JSON forms, and
 * the Lua scripts that write them (see registry.h; key layout in proto/redis-schema.md).
 *
 * The replica is an sb_replica (sync.c) of workspace id → sb_endpoint. An endpoint is
 * immutable once published: readers take a reference under the replica's read lock and
 * keep using it however the table changes; the last reference frees it, on whichever
 * thread drops it.
 *
 * Each write is one EVAL on the caller's connection: it changes the endpoint hash,
 * bumps the revision and publishes the complete record (sync.h), and returns the record
 * with its revision, which is applied here before the caller's callback runs. The
 * inbound secret is decided inside the script (HSETNX), so two racing first registers
 * cannot hand out two different secrets.
 *
 * Never: put the inbound secret in a log line or in sb_endpoint_to_json.
 */
#include "switchboard/registry.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <stdio.h>
#include <string.h>

static sb_replica *g_endpoints;

/* ---- endpoint objects ---- */

static void endpoint_free(sb_endpoint *ep)
{
    sb_free(ep->workspace_id);
    sb_free(ep->url_str);
    sb_url_clear(&ep->url);
    if (ep->inbound_secret != NULL) {
        memset(ep->inbound_secret, 0, strlen(ep->inbound_secret));
        sb_free(ep->inbound_secret);
    }
    json_decref(ep->agent_card);
    json_decref(ep->probe);
    sb_free(ep);
}

void sb_endpoint_ref(sb_endpoint *ep)
{
    __atomic_add_fetch(&ep->refs, 1, __ATOMIC_RELAXED);
}

void sb_endpoint_release(sb_endpoint *ep)
{
    if (ep != NULL && __atomic_sub_fetch(&ep->refs, 1, __ATOMIC_ACQ_REL) == 0)
        endpoint_free(ep);
}

static void release_value(void *value)
{
    sb_endpoint_release(value);
}

const char *sb_delivery_mode_name(sb_delivery_mode m)
{
    return m == SB_MODE_POLL ? "poll" : "push";
}

/* An integer field in [0, max]; absent or null is 0. SB_ERR_INVALID otherwise. */
static int get_int(const json_t *rec, const char *name, long long max, long long *out)
{
    const json_t *v = json_object_get(rec, name);
    if (v == NULL || json_is_null(v)) {
        *out = 0;
        return SB_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
        return SB_ERR_INVALID;
    *out = json_integer_value(v);
    return SB_OK;
}

/* An object field, deep-copied; absent or null is NULL. */
static int get_object(const json_t *rec, const char *name, json_t **out)
{
    const json_t *v = json_object_get(rec, name);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return SB_OK;
    if (!json_is_object(v))
        return SB_ERR_INVALID;
    *out = json_deep_copy(v);
    return SB_OK;
}

sb_endpoint *sb_endpoint_from_record(const json_t *rec, long long rev)
{
    const char *ws = json_string_value(json_object_get(rec, "workspace_id"));
    const char *mode = json_string_value(json_object_get(rec, "delivery_mode"));
    const char *proto = json_string_value(json_object_get(rec, "protocol"));
    const char *secret = json_string_value(json_object_get(rec, "inbound_secret"));
    const json_t *url = json_object_get(rec, "url");
    if (ws == NULL || !sb_valid_workspace_id(ws) || mode == NULL || secret == NULL ||
        secret[0] == '\0')
        return NULL;
    sb_endpoint *ep = sb_calloc(1, sizeof(*ep));
    ep->refs = 1;
    ep->rev = rev;
    ep->workspace_id = sb_strdup(ws);
    ep->inbound_secret = sb_strdup(secret);
    long long v;
    if (strcmp(mode, "push") == 0)
        ep->mode = SB_MODE_PUSH;
    else if (strcmp(mode, "poll") == 0)
        ep->mode = SB_MODE_POLL;
    else
        goto bad;
    if (proto == NULL || strcmp(proto, "auto") == 0)
        ep->protocol = SB_PROTO_AUTO;
    else if (strcmp(proto, "http1") == 0)
        ep->protocol = SB_PROTO_HTTP1;
    else if (strcmp(proto, "h2c") == 0)
        ep->protocol = SB_PROTO_H2C;
    else
        goto bad;
    if (json_is_string(url)) {
        if (sb_url_parse(json_string_value(url), &ep->url) != SB_OK)
            goto bad;
        ep->url_str = sb_strdup(json_string_value(url));
    } else if (url != NULL && !json_is_null(url)) {
        goto bad;
    }
    if (ep->mode == SB_MODE_PUSH && ep->url_str == NULL)
        goto bad;
    if (get_object(rec, "agent_card", &ep->agent_card) != SB_OK ||
        get_object(rec, "probe", &ep->probe) != SB_OK)
        goto bad;
    if (get_int(rec, "lease_s", SB_REGISTRY_MAX_LEASE_S, &v) != SB_OK)
        goto bad;
    ep->lease_s = (int)v;
    if (get_int(rec, "max_concurrency", SB_REGISTRY_MAX_CONCURRENCY, &v) != SB_OK)
        goto bad;
    ep->max_concurrency = (int)v;
    /* Absent in records written before "ordered" existed: false. */
    const json_t *ordered = json_object_get(rec, "ordered");
    if (ordered != NULL && !json_is_boolean(ordered) && !json_is_null(ordered))
        goto bad;
    ep->ordered = json_is_true(ordered);
    if (get_int(rec, "active_tasks", SB_REGISTRY_MAX_CONCURRENCY * 100LL, &v) != SB_OK)
        goto bad;
    ep->active_tasks = (int)v;
    if (get_int(rec, "lease_expires_at_ms", INT64_MAX, &v) != SB_OK)
        goto bad;
    ep->lease_expires_at_ms = v;
    if (get_int(rec, "registered_at_ms", INT64_MAX, &v) != SB_OK)
        goto bad;
    ep->registered_at_ms = v;
    if (get_int(rec, "heartbeat_at_ms", INT64_MAX, &v) != SB_OK)
        goto bad;
    ep->heartbeat_at_ms = v;
    return ep;
bad:
    endpoint_free(ep);
    return NULL;
}

static json_t *int_or_null(long long v)
{
    return v > 0 ? json_integer(v) : json_null();
}

json_t *sb_endpoint_to_json(const sb_endpoint *ep)
{
    json_t *o = json_object();
    json_object_set_new(o, "workspace_id", sb_json_text(ep->workspace_id));
    json_object_set_new(o, "url", ep->url_str ? sb_json_text(ep->url_str) : json_null());
    json_object_set_new(o, "delivery_mode", json_string(sb_delivery_mode_name(ep->mode)));
    json_object_set_new(o, "protocol", json_string(sb_upstream_proto_name(ep->protocol)));
    json_object_set_new(o, "agent_card",
                        ep->agent_card ? json_deep_copy(ep->agent_card) : json_null());
    json_object_set_new(o, "lease_s", int_or_null(ep->lease_s));
    json_object_set_new(o, "lease_expires_at", sb_json_iso8601(ep->lease_expires_at_ms));
    json_object_set_new(o, "max_concurrency", int_or_null(ep->max_concurrency));
    json_object_set_new(o, "ordered", json_boolean(ep->ordered));
    json_object_set_new(o, "active_tasks", json_integer(ep->active_tasks));
    json_object_set_new(o, "registered_at", sb_json_iso8601(ep->registered_at_ms));
    json_object_set_new(o, "heartbeat_at", sb_json_iso8601(ep->heartbeat_at_ms));
    json_t *probe = ep->probe ? json_deep_copy(ep->probe) : json_null();
    json_object_del(probe, "card"); /* the fetched card is served by the card route */
    json_object_set_new(o, "probe", probe);
    return o;
}

/* ---- the replica ---- */

void sb_registry_init(void)
{
    if (g_endpoints == NULL)
        g_endpoints = sb_replica_new(release_value);
    static const sb_sync_table table = {sb_registry_apply_set, sb_registry_apply_del,
                                        sb_registry_apply_snapshot};
    sb_sync_register(SB_SYNC_ENDPOINTS, &table);
}

void sb_registry_shutdown(void)
{
    sb_replica_free(g_endpoints);
    g_endpoints = NULL;
}

static void take_ref(void *value, void *arg)
{
    sb_endpoint *ep = value;
    sb_endpoint_ref(ep);
    *(sb_endpoint **)arg = ep;
}

sb_endpoint *sb_registry_get(const char *ws)
{
    sb_endpoint *ep = NULL;
    if (g_endpoints != NULL && ws != NULL)
        sb_replica_read(g_endpoints, ws, take_ref, &ep);
    return ep;
}

/* Hands |ep| (one reference) to the replica. */
static void replica_set(sb_endpoint *ep, long long rev)
{
    if (g_endpoints == NULL) {
        sb_endpoint_release(ep);
        return;
    }
    ep->rev = rev;
    sb_replica_apply(g_endpoints, ep->workspace_id, ep, rev);
}

void sb_registry_apply_set(const json_t *rec, long long rev)
{
    sb_endpoint *ep = sb_endpoint_from_record(rec, rev);
    if (ep == NULL) {
        sb_log(SB_LOG_WARN, "registry_bad_record",
               "ignoring a malformed endpoint record (rev %lld)", rev);
        return;
    }
    replica_set(ep, rev);
}

void sb_registry_apply_del(const char *ws, long long rev)
{
    if (g_endpoints != NULL)
        sb_replica_apply(g_endpoints, ws, NULL, rev);
}

void sb_registry_apply_snapshot(const json_t *records, long long rev)
{
    if (g_endpoints == NULL)
        return;
    size_t n = json_array_size(records), k = 0;
    const char **keys = sb_calloc(n + 1, sizeof(char *));
    void **values = sb_calloc(n + 1, sizeof(void *));
    for (size_t i = 0; i < n; i++) {
        sb_endpoint *ep = sb_endpoint_from_record(json_array_get(records, i), rev);
        if (ep == NULL) {
            sb_log(SB_LOG_WARN, "registry_bad_record", "snapshot: skipping a malformed record");
            continue;
        }
        keys[k] = ep->workspace_id; /* lives as long as values[k], which the replica owns */
        values[k++] = ep;
    }
    sb_replica_apply_snapshot(g_endpoints, k, keys, values, rev);
    sb_free(keys);
    sb_free(values);
}

size_t sb_registry_count(void)
{
    return g_endpoints ? sb_replica_count(g_endpoints) : 0;
}

typedef struct foreach_arg {
    void (*fn)(const sb_endpoint *ep, void *arg);
    void *arg;
} foreach_arg;

static void foreach_one(const char *key, void *value, void *arg)
{
    foreach_arg *fa = arg;
    fa->fn(value, fa->arg);
}

void sb_registry_foreach(void (*fn)(const sb_endpoint *ep, void *arg), void *arg)
{
    foreach_arg fa = {fn, arg};
    if (g_endpoints != NULL)
        sb_replica_foreach(g_endpoints, foreach_one, &fa);
}

/* ---- writes through Redis ---- */

/* Every script: KEYS[1] the endpoint hash (fields "<ws>:<name>", sync.h), ARGV[1] ws. */

/* KEYS: endpoint hash, index set, revision. ARGV: ws, config JSON, secret candidate,
 * lease_expires_at_ms, lease_s. Returns {rev, record}. */
static const char register_lua[] =
    "local k, w = KEYS[1], ARGV[1] .. ':'\n"
    "redis.call('HSET', k, w .. 'config', ARGV[2], w .. 'lease_s', ARGV[5],\n"
    "  w .. 'lease_expires_at_ms', ARGV[4], w .. 'active_tasks', '0', w .. 'heartbeat_at_ms', "
    "'0')\n"
    "redis.call('HSETNX', k, w .. 'secret', ARGV[3])\n"
    "redis.call('HDEL', k, w .. 'probe')\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "local rev = sb_bump(KEYS[3])\n"
    "local rec = sb_ep_record(k, ARGV[1])\n"
    "sb_publish('endpoint', 'set', ARGV[1], rev, rec)\n"
    "return {rev, rec}\n";

/* KEYS: endpoint hash, revision. ARGV: ws, now_ms, active_tasks or ''. Returns
 * {rev, record}, or nil when not registered. */
static const char heartbeat_lua[] =
    "local k, w = KEYS[1], ARGV[1] .. ':'\n"
    "if redis.call('HEXISTS', k, w .. 'config') == 0 then return false end\n"
    "local lease = tonumber(redis.call('HGET', k, w .. 'lease_s') or '0') or 0\n"
    "if lease > 0 then\n"
    "  redis.call('HSET', k, w .. 'lease_expires_at_ms',\n"
    "    sb_num(tonumber(ARGV[2]) + lease * 1000))\n"
    "end\n"
    "redis.call('HSET', k, w .. 'heartbeat_at_ms', ARGV[2])\n"
    "if ARGV[3] ~= '' then redis.call('HSET', k, w .. 'active_tasks', ARGV[3]) end\n"
    "local rev = sb_bump(KEYS[2])\n"
    "local rec = sb_ep_record(k, ARGV[1])\n"
    "sb_publish('endpoint', 'set', ARGV[1], rev, rec)\n"
    "return {rev, rec}\n";

/* KEYS: endpoint hash, index set, revision. ARGV: ws. Returns rev, or nil. */
static const char delete_lua[] = "local w = ARGV[1] .. ':'\n"
                                 "local gone = redis.call('HDEL', KEYS[1], w .. 'config',\n"
                                 "  w .. 'secret', w .. 'lease_s', w .. 'lease_expires_at_ms',\n"
                                 "  w .. 'active_tasks', w .. 'heartbeat_at_ms', w .. 'probe')\n"
                                 "redis.call('SREM', KEYS[2], ARGV[1])\n"
                                 "if gone == 0 then return false end\n"
                                 "local rev = sb_bump(KEYS[3])\n"
                                 "sb_publish('endpoint', 'del', ARGV[1], rev, nil)\n"
                                 "return rev\n";

/* KEYS: endpoint hash, revision. ARGV: ws. Returns {rev, record or nil}: the record as of
 * rev. */
static const char fetch_lua[] = "local rev = sb_rev_current(KEYS[2])\n"
                                "return {rev, sb_ep_record(KEYS[1], ARGV[1]) or false}\n";

/* KEYS: endpoint hash, revision. ARGV: ws, registered_at_ms of the registration probed,
 * probe JSON. Returns {rev, record}, or nil when that registration was replaced or
 * deleted meanwhile (its probe no longer applies). */
static const char probe_lua[] = "local k, w = KEYS[1], ARGV[1] .. ':'\n"
                                "local cfg = redis.call('HGET', k, w .. 'config')\n"
                                "local at = '\"registered_at_ms\":' .. ARGV[2]\n"
                                "if not cfg or not (string.find(cfg, at .. ',', 1, true) or\n"
                                "    string.find(cfg, at .. '}', 1, true)) then return false end\n"
                                "redis.call('HSET', k, w .. 'probe', ARGV[3])\n"
                                "local rev = sb_bump(KEYS[2])\n"
                                "local rec = sb_ep_record(k, ARGV[1])\n"
                                "sb_publish('endpoint', 'set', ARGV[1], rev, rec)\n"
                                "return {rev, rec}\n";

typedef enum { OP_REGISTER, OP_HEARTBEAT, OP_DELETE, OP_FETCH, OP_PROBE } op_kind;

typedef struct reg_op {
    op_kind kind;
    sb_registry_done_fn cb;
    void *arg;
    char ws[SB_WS_ID_MAX + 1];
    sb_redis *redis; /* the writer's connection, for the sync barrier */
    sb_endpoint *ep; /* result held across the barrier */
} reg_op;

static const char *op_name(op_kind k)
{
    static const char *names[] = {"register", "heartbeat", "delete", "fetch", "probe"};
    return names[k];
}

static void op_finish(reg_op *op, int err, sb_endpoint *ep)
{
    if (op->cb != NULL)
        op->cb(err, ep, op->arg);
    sb_free(op);
}

static void on_barrier_passed(void *arg)
{
    reg_op *op = arg;
    sb_endpoint *ep = op->ep;
    op_finish(op, SB_OK, ep);
    if (ep != NULL)
        sb_endpoint_release(ep);
}

/* A change at |rev| succeeded: answer once every other instance applied it too, so the
 * caller's next message finds it wherever it lands. Fetches change nothing. */
static void op_succeed(reg_op *op, long long rev, sb_endpoint *ep)
{
    if (ep != NULL)
        sb_endpoint_ref(ep);
    op->ep = ep;
    if (op->kind == OP_FETCH)
        on_barrier_passed(op);
    else
        sb_sync_barrier(op->redis, rev, on_barrier_passed, op);
}

/* {rev, record}: parses the record, applies it, and answers with it. */
static void op_finish_record(reg_op *op, const redisReply *rev, const redisReply *rec)
{
    json_t *j = json_loadb(rec->str, rec->len, 0, NULL);
    sb_endpoint *ep = j ? sb_endpoint_from_record(j, rev->integer) : NULL;
    json_decref(j);
    if (ep == NULL) {
        sb_log(SB_LOG_ERROR, "registry_bad_record", "%s %s: Redis returned an unreadable record",
               op_name(op->kind), op->ws);
        op_finish(op, SB_ERR, NULL);
        return;
    }
    sb_endpoint_ref(ep); /* one for the replica, one for the callback */
    replica_set(ep, rev->integer);
    op_succeed(op, rev->integer, ep);
    sb_endpoint_release(ep);
}

static void on_op_reply(redisReply *rep, void *arg)
{
    reg_op *op = arg;
    if (rep == NULL) {
        op_finish(op, SB_ERR_UNAVAILABLE, NULL);
        return;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        op_finish(op, SB_ERR_NOTFOUND, NULL);
        return;
    }
    if (op->kind == OP_DELETE && rep->type == REDIS_REPLY_INTEGER) {
        sb_registry_apply_del(op->ws, rep->integer);
        op_succeed(op, rep->integer, NULL);
        return;
    }
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        if (rep->element[1]->type == REDIS_REPLY_STRING) {
            op_finish_record(op, rep->element[0], rep->element[1]);
            return;
        }
        if (op->kind == OP_FETCH && rep->element[1]->type == REDIS_REPLY_NIL) {
            sb_registry_apply_del(op->ws, rep->element[0]->integer); /* absent as of rev */
            op_finish(op, SB_ERR_NOTFOUND, NULL);
            return;
        }
    }
    sb_log(SB_LOG_ERROR, "registry_redis_error", "%s %s: %s", op_name(op->kind), op->ws,
           rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    op_finish(op, SB_ERR, NULL);
}

/* Sends the script; hands |op| to the reply, or frees it when nothing was sent. */
static int eval_op(sb_redis *r, reg_op *op, const char *body, int nkeys, int nargs,
                   const char *const *args)
{
    if (sb_sync_eval(r, body, nkeys, nargs, args, on_op_reply, op) != SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

/* |j| as compact JSON text in a buffer from sb_malloc. */
static char *dump_compact(const json_t *j)
{
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT);
    char *text = sb_malloc(n + 1);
    json_dumpb(j, text, n, JSON_COMPACT);
    text[n] = '\0';
    return text;
}

static reg_op *op_new(sb_redis *r, op_kind kind, const char *ws, sb_registry_done_fn cb, void *arg,
                      char *key, size_t keycap)
{
    reg_op *op = sb_calloc(1, sizeof(*op));
    op->kind = kind;
    op->redis = r;
    op->cb = cb;
    op->arg = arg;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    snprintf(key, keycap, "%s", SB_SYNC_EP_KEY);
    return op;
}

int sb_registry_register(sb_redis *r, const sb_registration *reg, sb_registry_done_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    int64_t now = sb_now_wall_ms();
    json_t *cfg = json_object();
    json_object_set_new(cfg, "workspace_id", sb_json_text(reg->workspace_id));
    json_object_set_new(cfg, "url", reg->url ? sb_json_text(reg->url) : json_null());
    json_object_set_new(cfg, "delivery_mode", json_string(sb_delivery_mode_name(reg->mode)));
    json_object_set_new(cfg, "protocol", json_string(sb_upstream_proto_name(reg->protocol)));
    json_object_set_new(cfg, "agent_card",
                        reg->agent_card ? json_deep_copy(reg->agent_card) : json_null());
    json_object_set_new(cfg, "lease_s", json_integer(reg->lease_s));
    json_object_set_new(cfg, "max_concurrency", json_integer(reg->max_concurrency));
    json_object_set_new(cfg, "ordered", json_boolean(reg->ordered));
    json_object_set_new(cfg, "registered_at_ms", json_integer(now));
    char *cfg_text = dump_compact(cfg);
    json_decref(cfg);

    char secret[80], lease_at[24], lease_s[16], key[SB_WS_ID_MAX + 32];
    sb_random_token("sbs_", 32, secret, sizeof(secret));
    snprintf(lease_at, sizeof(lease_at), "%lld",
             reg->lease_s > 0 ? (long long)now + (long long)reg->lease_s * 1000 : 0LL);
    snprintf(lease_s, sizeof(lease_s), "%d", reg->lease_s);
    reg_op *op = op_new(r, OP_REGISTER, reg->workspace_id, cb, arg, key, sizeof(key));
    const char *args[] = {key,
                          SB_SYNC_ENDPOINTS_KEY,
                          SB_SYNC_REV_KEY,
                          reg->workspace_id,
                          cfg_text,
                          secret,
                          lease_at,
                          lease_s};
    int rc = eval_op(r, op, register_lua, 3, (int)SB_ARRAY_LEN(args), args);
    memset(secret, 0, sizeof(secret));
    sb_free(cfg_text);
    return rc;
}

int sb_registry_heartbeat(sb_redis *r, const char *ws, int active_tasks, sb_registry_done_fn cb,
                          void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    char now[24], active[16], key[SB_WS_ID_MAX + 32];
    snprintf(now, sizeof(now), "%lld", (long long)sb_now_wall_ms());
    if (active_tasks >= 0)
        snprintf(active, sizeof(active), "%d", active_tasks);
    else
        active[0] = '\0';
    reg_op *op = op_new(r, OP_HEARTBEAT, ws, cb, arg, key, sizeof(key));
    const char *args[] = {key, SB_SYNC_REV_KEY, ws, now, active};
    return eval_op(r, op, heartbeat_lua, 2, (int)SB_ARRAY_LEN(args), args);
}

int sb_registry_delete(sb_redis *r, const char *ws, sb_registry_done_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    char key[SB_WS_ID_MAX + 32];
    reg_op *op = op_new(r, OP_DELETE, ws, cb, arg, key, sizeof(key));
    const char *args[] = {key, SB_SYNC_ENDPOINTS_KEY, SB_SYNC_REV_KEY, ws};
    return eval_op(r, op, delete_lua, 3, (int)SB_ARRAY_LEN(args), args);
}

int sb_registry_fetch(sb_redis *r, const char *ws, sb_registry_done_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    char key[SB_WS_ID_MAX + 32];
    reg_op *op = op_new(r, OP_FETCH, ws, cb, arg, key, sizeof(key));
    const char *args[] = {key, SB_SYNC_REV_KEY, ws};
    return eval_op(r, op, fetch_lua, 2, (int)SB_ARRAY_LEN(args), args);
}

int sb_registry_set_probe(sb_redis *r, const char *ws, int64_t registered_at_ms,
                          const json_t *probe, sb_registry_done_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    char at[24], key[SB_WS_ID_MAX + 32];
    snprintf(at, sizeof(at), "%lld", (long long)registered_at_ms);
    char *text = dump_compact(probe);
    reg_op *op = op_new(r, OP_PROBE, ws, cb, arg, key, sizeof(key));
    const char *args[] = {key, SB_SYNC_REV_KEY, ws, at, text};
    int rc = eval_op(r, op, probe_lua, 2, (int)SB_ARRAY_LEN(args), args);
    sb_free(text);
    return rc;
}
