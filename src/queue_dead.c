/*
 * queue_dead.c — the dead-letter scripts: list, replay, purge (see queue_dead.h).
 *
 * They start from the queue's own Lua prelude (queue_int.h), so a replayed message is
 * re-queued by the same rules as any other, and they touch only the workspace's keys; a
 * replay owes the queue index its update like an append (applied after the reply). The dead-letter
 * LIST holds small JSON summaries; the message hash is the truth: an entry whose hash is gone (its
 * retention passed) or no longer dead is skipped by list and dropped by replay/purge.
 *
 * Never: replay a message that is not dead, or re-encode its stored request.
 */
#include "switchboard/queue_dead.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/redis.h"

#include <stdio.h>
#include <string.h>

#include "queue_int.h"

/* Removes |id|'s summary from the dead-letter list (at most 1000 entries to look at). */
#define DEAD_PRELUDE                                                                               \
    Q_PRELUDE "local function q_undead(id)\n"                                                      \
              "  local needle = '{\"id\":' .. cjson.encode(id) .. ','\n"                           \
              "  for _, e in ipairs(redis.call('LRANGE', QX, 0, -1)) do\n"                         \
              "    if string.sub(e, 1, #needle) == needle then\n"                                  \
              "      redis.call('LREM', QX, 1, e)\n"                                               \
              "      return\n"                                                                     \
              "    end\n"                                                                          \
              "  end\n"                                                                            \
              "end\n"

/* ARGV 5: max. Returns {{fields + request}...} newest first. */
static const char list_lua[] =
    Q_PRELUDE "q_maintain(q_now())\n"
              "local out = {}\n"
              "for _, e in ipairs(redis.call('LRANGE', QX, 0, tonumber(ARGV[5]) - 1)) do\n"
              "  local ok, d = pcall(cjson.decode, e)\n"
              "  if ok and type(d) == 'table' and type(d.id) == 'string' and\n"
              "      redis.call('HGET', q_key(d.id), 'state') == 'dead' then\n"
              "    out[#out + 1] = q_fields(d.id, true)\n"
              "  end\n"
              "end\n"
              "return q_ret({out})\n";

/* ARGV 5: id, 6: ttl ms. Returns {0 | 1 (not dead) | -1 (unknown), fields}. */
static const char replay_lua[] = DEAD_PRELUDE
    "local now = q_now()\n"
    "q_maintain(now)\n"
    "local id = ARGV[5]\n"
    "local k = q_key(id)\n"
    "local st = redis.call('HGET', k, 'state')\n"
    "if not st then return q_ret({-1, false}) end\n"
    "if st ~= 'dead' then return q_ret({1, q_fields(id, false)}) end\n"
    "local seq = tonumber(redis.call('HGET', k, 'seq') or '0')\n"
    "local first = redis.call('ZRANGE', QR, 0, 0, 'WITHSCORES')\n"
    "if first[2] and tonumber(first[2]) <= seq then seq = tonumber(first[2]) - 1 end\n"
    "local ttl = tonumber(ARGV[6])\n"
    "local exp = now + ttl\n"
    "redis.call('HSET', k, 'state', 'queued', 'delivery_count', '0', 'seq', sb_num(seq),\n"
    "  'expires_at_ms', sb_num(exp), 'updated_at_ms', sb_num(now), 'lease_until_ms', '0')\n"
    "redis.call('HDEL', k, 'dead_reason', 'result', 'error')\n"
    "redis.call('PEXPIRE', k, ttl + QRETAIN)\n"
    "redis.call('ZADD', QR, sb_num(seq), id)\n"
    "redis.call('ZADD', QE, sb_num(exp), id)\n"
    "local f = q_hmget(k, 'dedup', 'message_id', 'source')\n"
    "local d = f[1]\n"
    "if d then\n"
    "  local holder = redis.call('HGET', QD, d)\n"
    "  local hst = holder and redis.call('HGET', q_key(holder), 'state')\n"
    "  if hst ~= 'queued' and hst ~= 'leased' then redis.call('HSET', QD, d, id) end\n"
    "end\n"
    "if f[2] and f[3] then\n"
    "  local rk = 'sb:{' .. QWS .. '}:dr:' .. f[2]\n"
    "  if redis.call('HGET', rk, f[3]) ~= id then redis.call('HSET', rk, f[3], id) end\n"
    "  if redis.call('PTTL', rk) < ttl + QRETAIN then redis.call('PEXPIRE', rk, ttl + QRETAIN) "
    "end\n"
    "end\n"
    "q_undead(id)\n"
    "QIDX = now\n"
    "redis.call('HINCRBY', QT, 'replayed', 1)\n"
    "q_note(id, now, 'replayed', 'replayed from the dead letters: queued again at the front')\n"
    "redis.call('PUBLISH', '" SB_QUEUE_NOTIFY_CHANNEL "', QWS)\n"
    "return q_ret({0, q_fields(id, false)})\n";

/* ARGV 5: id. Returns as replay. */
static const char purge_lua[] =
    DEAD_PRELUDE "local now = q_now()\n"
                 "local id = ARGV[5]\n"
                 "local k = q_key(id)\n"
                 "local st = redis.call('HGET', k, 'state')\n"
                 "if not st then return q_ret({-1, false}) end\n"
                 "if st == 'purged' then return q_ret({0, q_fields(id, false)}) end\n"
                 "if st ~= 'dead' then return q_ret({1, q_fields(id, false)}) end\n"
                 "redis.call('HSET', k, 'state', 'purged', 'updated_at_ms', sb_num(now))\n"
                 "redis.call('HDEL', k, 'request')\n"
                 "redis.call('PEXPIRE', k, QRETAIN)\n"
                 "q_undead(id)\n"
                 "redis.call('HINCRBY', QT, 'purged', 1)\n"
                 "q_note(id, now, 'purged', 'purged from the dead letters')\n"
                 "return q_ret({0, q_fields(id, false)})\n";

typedef struct dead_op {
    sb_queue_dead_list_fn list_cb;
    sb_queue_record_fn rec_cb;
    void *arg;
    sb_redis *r;
    char ws[SB_WS_ID_MAX + 1];
} dead_op;

static void log_bad(const char *what, const redisReply *rep)
{
    sb_log(SB_LOG_ERROR, "queue_redis_error", "dead letters %s: %s", what,
           rep != NULL && rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
}

static void on_list(redisReply *rep, void *arg)
{
    dead_op *op = arg;
    sb_queue_int_count_dead(rep);
    sb_queue_int_update_index(op->r, op->ws, rep);
    sb_queue_record *items = NULL;
    size_t n = 0;
    int err = SB_ERR;
    if (rep == NULL) {
        err = SB_ERR_UNAVAILABLE;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 4 &&
               rep->element[0]->type == REDIS_REPLY_ARRAY) {
        const redisReply *list = rep->element[0];
        items = sb_calloc(list->elements + 1, sizeof(*items));
        err = SB_OK;
        for (size_t i = 0; i < list->elements; i++) {
            if (sb_queue_int_parse_record(list->element[i], &items[n]) != SB_OK) {
                sb_queue_record_clear(&items[n]);
                err = SB_ERR;
                break;
            }
            n++;
        }
    }
    if (err == SB_ERR)
        log_bad("list", rep);
    op->list_cb(err, err == SB_OK ? items : NULL, err == SB_OK ? n : 0, op->arg);
    for (size_t i = 0; i < n; i++)
        sb_queue_record_clear(&items[i]);
    sb_free(items);
    sb_free(op);
}

static void on_record(redisReply *rep, void *arg)
{
    dead_op *op = arg;
    sb_queue_int_count_dead(rep);
    sb_queue_int_update_index(op->r, op->ws, rep);
    sb_queue_record rec;
    long long code;
    int err = sb_queue_int_record_reply(rep, 1, &rec, &code);
    if (err == SB_OK && code != 0)
        err = SB_ERR_FORBIDDEN;
    if (err == SB_ERR)
        log_bad("replay/purge", rep);
    op->rec_cb(err, err == SB_OK || err == SB_ERR_FORBIDDEN ? &rec : NULL, op->arg);
    sb_queue_record_clear(&rec);
    sb_free(op);
}

static int send_op(sb_redis *r, const sb_queue_opts *o, const char *script, const char *ws,
                   const char *const *extra, int n, sb_redis_reply_fn fn, dead_op *op)
{
    op->r = r;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    if (sb_queue_int_run(r, o, script, ws, extra, n, fn, op) != SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

int sb_queue_dead_list(sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                       sb_queue_dead_list_fn cb, void *arg)
{
    char smax[16];
    snprintf(smax, sizeof(smax), "%d",
             max < 1 ? 1 : (max > SB_QUEUE_DEAD_LIST_MAX ? SB_QUEUE_DEAD_LIST_MAX : max));
    const char *extra[] = {smax};
    dead_op *op = sb_calloc(1, sizeof(*op));
    op->list_cb = cb;
    op->arg = arg;
    return send_op(r, o, list_lua, ws, extra, 1, on_list, op);
}

int sb_queue_dead_replay(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                         int64_t ttl_ms, sb_queue_record_fn cb, void *arg)
{
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(ttl_ms > 0 ? ttl_ms : 1));
    const char *extra[] = {id, ttl};
    dead_op *op = sb_calloc(1, sizeof(*op));
    op->rec_cb = cb;
    op->arg = arg;
    return send_op(r, o, replay_lua, ws, extra, 2, on_record, op);
}

int sb_queue_dead_purge(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                        sb_queue_record_fn cb, void *arg)
{
    const char *extra[] = {id};
    dead_op *op = sb_calloc(1, sizeof(*op));
    op->rec_cb = cb;
    op->arg = arg;
    return send_op(r, o, purge_lua, ws, extra, 1, on_record, op);
}
