/*
 * retry.c — the due-time index, the scheduler and driver leases, and the per-workspace
 * retry state of switchboard's own redelivery (see retry.h; keys in
 * proto/redis-schema.md).
 *
 * Every operation is one command or one short script on exactly one key: the global
 * index sb:redeliver, or one of a workspace's own keys. The scheduler's lease lives in
 * the index as a member with a negative score (−expiry), so a due scan over scores
 * 0..now never sees it and no second global key exists.
 *
 * Never: put a workspace key and the global index in one script, or poll Redis for a
 * workspace that is not in the index.
 */
#include "switchboard/retry.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"
#include "switchboard/strmap.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"
#include "switchboard/worker.h"

#include <stdio.h>
#include <string.h>

#define LEADER_PREFIX "!scheduler:"
#define AFTER_PUSH_EVERY_MS 1000
#define AFTER_PUSH_TABLE_MAX 4096

static void on_ignored(redisReply *rep, void *arg)
{
    const char *what = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "redeliver_redis_error", "%s: %s", what, rep->str);
}

void sb_retry_due_nx(sb_redis *r, const char *ws, int64_t at_ms)
{
    char at[24];
    snprintf(at, sizeof(at), "%lld", (long long)at_ms);
    sb_redis_command(r, on_ignored, "ZADD NX", "ZADD %s NX %s %s", SB_RETRY_DUE_KEY, at, ws);
}

void sb_retry_due_soon(sb_redis *r, const char *ws)
{
    sb_retry_due_nx(r, ws, sb_now_wall_ms() + SB_RETRY_FIRST_MS);
}

void sb_retry_due_at(sb_redis *r, const char *ws, int64_t at_ms)
{
    char at[24];
    snprintf(at, sizeof(at), "%lld", (long long)at_ms);
    sb_redis_command(r, on_ignored, "ZADD", "ZADD %s %s %s", SB_RETRY_DUE_KEY, at, ws);
}

typedef struct {
    void (*cb)(int err, void *arg);
    void *arg;
} clear_op;

static void on_cleared(redisReply *rep, void *arg)
{
    clear_op *op = arg;
    op->cb(rep != NULL && rep->type == REDIS_REPLY_INTEGER ? SB_OK : SB_ERR, op->arg);
    sb_free(op);
}

int sb_retry_due_clear(sb_redis *r, const char *ws, void (*cb)(int err, void *arg), void *arg)
{
    clear_op *op = sb_malloc(sizeof(*op));
    op->cb = cb;
    op->arg = arg;
    if (sb_redis_command(r, on_cleared, op, "ZREM %s %s", SB_RETRY_DUE_KEY, ws) != SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

typedef struct {
    sb_retry_scan_fn cb;
    void *arg;
} scan_op;

static void on_scanned(redisReply *rep, void *arg)
{
    scan_op *op = arg;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        op->cb(SB_ERR, NULL, 0, op->arg);
        sb_free(op);
        return;
    }
    const char *ids[SB_RETRY_SCAN_MAX];
    size_t n = 0;
    for (size_t i = 0; i < rep->elements && n < SB_RETRY_SCAN_MAX; i++) {
        const redisReply *e = rep->element[i];
        if (e->type == REDIS_REPLY_STRING && e->len > 0 && e->str[0] != '!')
            ids[n++] = e->str;
    }
    op->cb(SB_OK, ids, n, op->arg);
    sb_free(op);
}

int sb_retry_due_scan(sb_redis *r, int64_t now_ms, sb_retry_scan_fn cb, void *arg)
{
    scan_op *op = sb_malloc(sizeof(*op));
    op->cb = cb;
    op->arg = arg;
    char now[24], max[16];
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(max, sizeof(max), "%d", SB_RETRY_SCAN_MAX);
    if (sb_redis_command(r, on_scanned, op, "ZRANGEBYSCORE %s 0 %s LIMIT 0 %s", SB_RETRY_DUE_KEY,
                         now, max) != SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

/* KEYS[1] the index; ARGV: our member, now ms, ttl ms. Scheduler members are scored
 * −expiry. Returns 1 when the lease is ours until now + ttl, 0 when another holds it. */
static const char leader_lua[] =
    "local K, me, now = KEYS[1], ARGV[1], tonumber(ARGV[2])\n"
    "local held = redis.call('ZRANGEBYSCORE', K, '-inf', '(0', 'WITHSCORES')\n"
    "for i = 1, #held, 2 do\n"
    "  if held[i] ~= me then\n"
    "    if -tonumber(held[i + 1]) > now then return 0 end\n"
    "    redis.call('ZREM', K, held[i])\n"
    "  end\n"
    "end\n"
    "redis.call('ZADD', K, sb_num(-(now + tonumber(ARGV[3]))), me)\n"
    "return 1\n";

/* KEYS[1] sb:{ws}:rd:owner; ARGV: instance, ttl ms. 1 ours, 0 another's. */
static const char own_lua[] = "local cur = redis.call('GET', KEYS[1])\n"
                              "if cur and cur ~= ARGV[1] then return 0 end\n"
                              "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                              "return 1\n";

/* KEYS[1] sb:{ws}:rd:owner; ARGV: instance. */
static const char disown_lua[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                 "  redis.call('DEL', KEYS[1])\n"
                                 "end\n"
                                 "return 1\n";

/* KEYS[1] sb:{ws}:rd; ARGV: ok, outcome, detail, now, not before, max, jitter ‰,
 * retain. Returns the next due time (0 when ok). */
static const char settle_lua[] =
    "local K, now = KEYS[1], tonumber(ARGV[4])\n"
    "redis.call('HSET', K, 'last_at_ms', ARGV[4], 'last_outcome', ARGV[2],\n"
    "  'last_detail', ARGV[3])\n"
    "redis.call('PEXPIRE', K, ARGV[8])\n"
    "if ARGV[1] == '1' then\n"
    "  redis.call('HSET', K, 'backoff_ms', '0', 'next_at_ms', '0', 'tries', '0')\n"
    "  return 0\n"
    "end\n"
    "local max = tonumber(ARGV[6])\n"
    "local b = tonumber(redis.call('HGET', K, 'backoff_ms') or '0') * 2\n"
    "if b < 2000 then b = 2000 end\n"
    "if b > max then b = max end\n"
    "local delay = math.floor(b * (1 + (tonumber(ARGV[7]) - 500) / 2000))\n"
    "if delay > max then delay = max end\n"
    "local nxt = now + delay\n"
    "if tonumber(ARGV[5]) > nxt then nxt = tonumber(ARGV[5]) end\n"
    "redis.call('HSET', K, 'backoff_ms', sb_num(b), 'next_at_ms', sb_num(nxt))\n"
    "redis.call('HINCRBY', K, 'tries', 1)\n"
    "return nxt\n";

typedef struct {
    void (*flag_cb)(int v, void *arg);
    void (*settle_cb)(int err, int64_t next_at_ms, void *arg);
    void *arg;
} script_op;

static void on_flag(redisReply *rep, void *arg)
{
    script_op *op = arg;
    int v = -1;
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER)
        v = rep->integer == 1;
    else if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "redeliver_redis_error", "lease: %s", rep->str);
    op->flag_cb(v, op->arg);
    sb_free(op);
}

static void on_settled(redisReply *rep, void *arg)
{
    script_op *op = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER) {
        op->settle_cb(SB_OK, rep->integer, op->arg);
    } else {
        if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
            sb_log(SB_LOG_WARN, "redeliver_redis_error", "settle: %s", rep->str);
        op->settle_cb(SB_ERR, 0, op->arg);
    }
    sb_free(op);
}

static int eval(sb_redis *r, const char *script, int nargs, const char **args, sb_redis_reply_fn fn,
                script_op *op)
{
    if (sb_sync_eval(r, script, 1, nargs, args, fn, op) != SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

static script_op *flag_op(void (*cb)(int v, void *arg), void *arg)
{
    script_op *op = sb_calloc(1, sizeof(*op));
    op->flag_cb = cb;
    op->arg = arg;
    return op;
}

int sb_retry_leader(sb_redis *r, const char *instance, int64_t now_ms, int ttl_ms,
                    void (*cb)(int held, void *arg), void *arg)
{
    char me[80], now[24], ttl[16];
    snprintf(me, sizeof(me), LEADER_PREFIX "%s", instance);
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(ttl, sizeof(ttl), "%d", ttl_ms);
    const char *args[] = {SB_RETRY_DUE_KEY, me, now, ttl};
    return eval(r, leader_lua, 4, args, on_flag, flag_op(cb, arg));
}

void sb_retry_leader_release(sb_redis *r, const char *instance)
{
    char me[80];
    snprintf(me, sizeof(me), LEADER_PREFIX "%s", instance);
    sb_redis_command(r, on_ignored, "ZREM", "ZREM %s %s", SB_RETRY_DUE_KEY, me);
}

static void owner_key(const char *ws, char *out, size_t cap)
{
    snprintf(out, cap, "sb:{%s}:rd:owner", ws);
}

int sb_retry_own(sb_redis *r, const char *ws, const char *instance,
                 void (*cb)(int owned, void *arg), void *arg)
{
    char key[SB_WS_ID_MAX + 32], ttl[16];
    owner_key(ws, key, sizeof(key));
    snprintf(ttl, sizeof(ttl), "%d", SB_RETRY_OWNER_TTL_MS);
    const char *args[] = {key, instance, ttl};
    return eval(r, own_lua, 3, args, on_flag, flag_op(cb, arg));
}

void sb_retry_disown(sb_redis *r, const char *ws, const char *instance)
{
    char key[SB_WS_ID_MAX + 32];
    owner_key(ws, key, sizeof(key));
    const char *args[] = {key, instance};
    sb_sync_eval(r, disown_lua, 1, 2, args, on_ignored, "disown");
}

int sb_retry_settle(sb_redis *r, const char *ws, const sb_retry_outcome *o,
                    void (*cb)(int err, int64_t next_at_ms, void *arg), void *arg)
{
    char key[SB_WS_ID_MAX + 32], now[24], nb[24], max[24], jit[16], retain[24];
    snprintf(key, sizeof(key), "sb:{%s}:rd", ws);
    snprintf(now, sizeof(now), "%lld", (long long)o->now_ms);
    snprintf(nb, sizeof(nb), "%lld", (long long)o->not_before_ms);
    snprintf(max, sizeof(max), "%lld", (long long)(o->max_ms > 0 ? o->max_ms : 1000));
    snprintf(jit, sizeof(jit), "%d", o->jitter_permille % 1000);
    snprintf(retain, sizeof(retain), "%lld", (long long)(o->retain_ms > 0 ? o->retain_ms : 1));
    const char *args[] = {key,
                          o->ok ? "1" : "0",
                          o->outcome ? o->outcome : "",
                          o->detail ? o->detail : "",
                          now,
                          nb,
                          max,
                          jit,
                          retain};
    script_op *op = sb_calloc(1, sizeof(*op));
    op->settle_cb = cb;
    op->arg = arg;
    return eval(r, settle_lua, 9, args, on_settled, op);
}

/* ---- the after-push check ---- */

static sb_retry_kick_fn kick_fn;

void sb_retry_set_kick(sb_retry_kick_fn fn)
{
    kick_fn = fn;
}

/* ws → the second it was last asked about, on this thread. */
static __thread sb_strmap *asked;

void sb_retry_thread_clear(void)
{
    sb_strmap_free(asked); /* values are not pointers */
    asked = NULL;
}

typedef struct {
    sb_worker *w;
    char ws[SB_WS_ID_MAX + 1];
} after_push_op;

static void on_backlog(redisReply *rep, void *arg)
{
    after_push_op *op = arg;
    if (rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 && kick_fn != NULL)
        kick_fn(op->w, op->ws);
    sb_free(op);
}

void sb_retry_after_push(sb_worker *w, const char *ws)
{
    if (w == NULL || w->redis == NULL || kick_fn == NULL)
        return;
    uintptr_t now = (uintptr_t)(sb_now_mono_us() / 1000 / AFTER_PUSH_EVERY_MS) + 1;
    if (asked == NULL)
        asked = sb_strmap_new();
    if ((uintptr_t)sb_strmap_get(asked, ws) == now)
        return;
    if (sb_strmap_count(asked) >= AFTER_PUSH_TABLE_MAX) {
        sb_strmap_free(asked); /* values are not pointers: nothing else to free */
        asked = sb_strmap_new();
    }
    sb_strmap_put(asked, ws, (void *)now);
    after_push_op *op = sb_malloc(sizeof(*op));
    op->w = w;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    if (sb_redis_command(w->redis, on_backlog, op, "EXISTS sb:{%s}:q:ready", ws) != SB_OK)
        sb_free(op);
}
