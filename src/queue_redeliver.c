/*
 * queue_redeliver.c — the poll queue's two operations for switchboard's own redelivery
 * (the recovery drain, drain.c): the redelivery lease and the batched ack (queue.h; key
 * layout in proto/redis-schema.md, "The poll queue").
 *
 * They are the drain's whole Redis cost per message, so each is shaped by what Redis
 * spends on it. Lua hashes every string it makes byte by byte (Redis' Lua hashes the
 * whole string), and a string read by a script is also copied into the script's reply:
 * so the lease's script takes the messages — state, lease end and sets, atomically — and
 * answers only their ids, and the heads and requests that a push needs (1 KB or more
 * each) are read after it with one plain pipelined HMGET per message on the same
 * connection (so they see what the script wrote), never passing through Lua. The ack's
 * script reads each message with one HMGET, writes it with one HSET, one PEXPIREAT (the
 * absolute time computed once per batch: a relative PEXPIRE costs Redis a rewrite of the
 * command per call) and one HDEL, builds no table per message, and clears the sets and
 * dedup fields of the whole batch at once.
 *
 * Never: push a message whose request is gone (acked or dropped by someone else between
 * the lease and its read: it is no longer ours), or re-encode a stored request.
 */
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/queue.h"
#include "switchboard/redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

/* ---- the redelivery lease ---- */

/* ARGV 5: max, 6: lease ms. Maintenance, then up to |max| messages from the front of
 * ready become leased (state, lease end, update time; one HSET each), leave ready and
 * enter leased together. No delivery is counted and no attempt noted (the push notes its
 * own). A message whose hash is gone is forgotten: the HSET tells, since every stored
 * message has a state, so an HSET that added all three fields made the key (deleted
 * again at once). Returns {{id...}, ready, ms to the next lease end or -1, now}. */
static const char redeliver_lease_lua[] =
    Q_PRELUDE "local now = q_now()\n"
              "q_maintain(now)\n"
              "local till = sb_num(now + tonumber(ARGV[6]))\n"
              "local snow = sb_num(now)\n"
              "local ids, zl, n = {}, {}, 0\n"
              "for _, id in ipairs(redis.call('ZRANGE', QR, 0, tonumber(ARGV[5]) - 1)) do\n"
              "  local k = QM .. id\n"
              "  if redis.call('HSET', k, 'state', 'leased', 'lease_until_ms', till,\n"
              "      'updated_at_ms', snow) == 3 then\n"
              "    redis.call('DEL', k)\n"
              "    q_forget(id)\n"
              "  else\n"
              "    n = n + 1\n"
              "    ids[n] = id\n"
              "    zl[2 * n - 1] = till\n"
              "    zl[2 * n] = id\n"
              "  end\n"
              "end\n"
              "if n > 0 then\n"
              "  redis.call('ZREM', QR, unpack(ids))\n"
              "  redis.call('ZADD', QL, unpack(zl))\n"
              "end\n"
              "q_settle()\n"
              "local first = redis.call('ZRANGE', QL, 0, 0, 'WITHSCORES')\n"
              "local nxt = -1\n"
              "if first[2] then nxt = math.max(0, tonumber(first[2]) - now) end\n"
              "return q_ret({ids, redis.call('ZCARD', QR), nxt, sb_num(now)})\n";

/* ARGV 5: id. A message written by a layout-2 release (no packed head): its fields, as
 * every script returns them (Q_FIELDS, then the request). */
static const char fields_lua[] = Q_PRELUDE "return q_fields(ARGV[5], true)\n";

typedef struct rl_op rl_op;

/* One leased message's read. */
typedef struct rl_item {
    rl_op *op;
    size_t i;
    char key[SB_WS_ID_MAX + 64];
} rl_item;

struct rl_op {
    sb_redis *r;
    char ws[SB_WS_ID_MAX + 1];
    sb_queue_opts o;
    int64_t lease_ms;
    sb_queue_batch_fn cb;
    void *arg;
    sb_queue_batch b; /* items[i] for the i-th id; ready, next lease end, now */
    int *have;        /* have[i]: items[i] holds the message */
    rl_item *reads;   /* one per id */
    size_t n, left;   /* ids; reads not answered yet */
    int err;          /* SB_OK until a read fails */
};

static void rl_done(rl_op *op)
{
    /* the messages still there, in the lease's order */
    size_t k = 0;
    for (size_t i = 0; i < op->n; i++) {
        if (op->have[i])
            op->b.items[k++] = op->b.items[i];
        else
            sb_queue_record_clear(&op->b.items[i]);
    }
    op->b.n = k;
    /* A lease whose messages cannot be read still leased them: they come back when the
     * lease ends, as after a consumer crash. */
    op->cb(op->err, op->err == SB_OK ? &op->b : NULL, op->arg);
    for (size_t i = 0; i < op->b.n; i++)
        sb_queue_record_clear(&op->b.items[i]);
    sb_free(op->b.items);
    sb_free(op->have);
    sb_free(op->reads);
    sb_free(op);
}

static void rl_fail(rl_op *op, int err, const redisReply *rep)
{
    if (op->err == SB_OK && rep != NULL)
        sb_log(SB_LOG_ERROR, "queue_redis_error", "redeliver lease %s: %s", op->ws,
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    if (op->err == SB_OK)
        op->err = err;
}

/* A layout-2 message's fields (fields_lua). */
static void on_fields(redisReply *rep, void *arg)
{
    rl_item *it = arg;
    rl_op *op = it->op;
    sb_queue_record *rec = &op->b.items[it->i];
    if (rep == NULL)
        rl_fail(op, SB_ERR_UNAVAILABLE, NULL);
    else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == F_COUNT && rep->element[0] &&
             rep->element[0]->type == REDIS_REPLY_NIL)
        ; /* gone meanwhile */
    else if (sb_queue_int_parse_record(rep, rec) != SB_OK)
        rl_fail(op, SB_ERR, rep);
    else if (rec->request == NULL || rec->state != SB_QSTATE_LEASED)
        sb_queue_record_clear(rec); /* acked, canceled or dead-lettered meanwhile */
    else
        op->have[it->i] = 1;
    if (--op->left == 0)
        rl_done(op);
}

/* HMGET <msg> h request: layout 3's head and the request. */
static void on_read(redisReply *rep, void *arg)
{
    rl_item *it = arg;
    rl_op *op = it->op;
    sb_queue_record *rec = &op->b.items[it->i];
    if (rep == NULL) {
        rl_fail(op, SB_ERR_UNAVAILABLE, NULL);
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
        rl_fail(op, SB_ERR, rep);
    } else if (rep->element[1]->type != REDIS_REPLY_STRING) {
        ; /* no request: acked (or gone) since the lease — not ours any more */
    } else if (rep->element[0]->type != REDIS_REPLY_STRING) {
        /* written by a layout-2 release: its fields are of their own (once per such
         * message, while they last) */
        const char *id[] = {strrchr(it->key, ':') + 1};
        if (sb_queue_int_run(op->r, &op->o, fields_lua, op->ws, id, 1, on_fields, it) == SB_OK)
            op->left++;
        else
            rl_fail(op, SB_ERR_UNAVAILABLE, NULL);
    } else if (sb_queue_int_parse_record(rep, rec) != SB_OK) {
        rl_fail(op, SB_ERR, rep);
    } else {
        /* leased just now, by the script this read follows */
        rec->state = SB_QSTATE_LEASED;
        rec->updated_at_ms = op->b.now_ms;
        rec->lease_until_ms = op->b.now_ms + op->lease_ms;
        op->have[it->i] = 1;
    }
    if (--op->left == 0)
        rl_done(op);
}

/* {{id...}, ready, next, now, dead expired, dead max_deliveries, index} */
static void on_leased(redisReply *rep, void *arg)
{
    rl_op *op = arg;
    sb_queue_int_count_dead(rep);
    sb_queue_int_update_index(op->r, op->ws, rep);
    if (rep == NULL) {
        op->err = SB_ERR_UNAVAILABLE;
        rl_done(op);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 7 ||
        rep->element[0]->type != REDIS_REPLY_ARRAY ||
        rep->element[1]->type != REDIS_REPLY_INTEGER ||
        rep->element[2]->type != REDIS_REPLY_INTEGER) {
        rl_fail(op, SB_ERR, rep);
        rl_done(op);
        return;
    }
    const redisReply *ids = rep->element[0];
    op->b.ready = rep->element[1]->integer;
    op->b.next_lease_end_ms = rep->element[2]->integer;
    const redisReply *now = rep->element[3];
    op->b.now_ms = now->type == REDIS_REPLY_STRING    ? strtoll(now->str, NULL, 10)
                   : now->type == REDIS_REPLY_INTEGER ? now->integer
                                                      : 0;
    op->n = ids->elements;
    op->b.items = sb_calloc(op->n + 1, sizeof(*op->b.items));
    op->have = sb_calloc(op->n + 1, sizeof(*op->have));
    op->reads = sb_calloc(op->n + 1, sizeof(*op->reads));
    op->left = 1; /* held until every read is sent */
    for (size_t i = 0; i < op->n; i++) {
        const redisReply *id = ids->element[i];
        if (id->type != REDIS_REPLY_STRING || !sb_queue_valid_id(id->str)) {
            rl_fail(op, SB_ERR, rep);
            continue;
        }
        rl_item *it = &op->reads[i];
        it->op = op;
        it->i = i;
        snprintf(it->key, sizeof(it->key), "sb:{%s}:msg:%s", op->ws, id->str);
        const char *argv[] = {"HMGET", it->key, "h", "request"};
        if (sb_redis_command_argv(op->r, on_read, it, 4, argv, NULL) == SB_OK)
            op->left++;
        else
            rl_fail(op, SB_ERR_UNAVAILABLE, NULL);
    }
    if (--op->left == 0)
        rl_done(op);
}

int sb_queue_redeliver_lease(sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                             int64_t lease_ms, sb_queue_batch_fn cb, void *arg)
{
    char smax[16], slease[24];
    snprintf(smax, sizeof(smax), "%d",
             max < 1 ? 1 : (max > SB_QUEUE_LEASE_MAX ? SB_QUEUE_LEASE_MAX : max));
    if (lease_ms < 1)
        lease_ms = 1;
    snprintf(slease, sizeof(slease), "%lld", (long long)lease_ms);
    const char *extra[] = {smax, slease};
    rl_op *op = sb_calloc(1, sizeof(*op));
    op->r = r;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    op->o = *o;
    op->lease_ms = lease_ms;
    op->cb = cb;
    op->arg = arg;
    op->b.next_lease_end_ms = -1;
    int rc = sb_queue_int_run(r, o, redeliver_lease_lua, ws, extra, 2, on_leased, op);
    if (rc != SB_OK)
        sb_free(op);
    return rc;
}

/* ---- the redelivery's batched ack ---- */

/* ARGV from 5, five per message: id, attempt (JSON object text), result or '', error or
 * '', its dedup field or '' (then it is read from the hash). Each message that still
 * exists gets its attempt (unless it has SB_QUEUE_ATTEMPTS_MAX already), then is acked as
 * drained when it is queued or leased — what q_attempt then q_ack do: its reads in one
 * HMGET, its writes in one HSET (`attempt_sig` only when the last attempt left one:
 * absent is '', and a field the HSET need not create saves Redis a dictionary entry per
 * message), one PEXPIREAT and one HDEL of the request and the lease end; the sets and
 * dedup fields of the batch's acked messages are cleared together at the end. Returns
 * {{code per message}} (codes as ack_lua's). */
// clang-format off
static const char redeliver_ack_lua[] = Q_PRELUDE
    "local now = q_now()\n"
    "local snow, xat = sb_num(now), sb_num(now + QRETAIN)\n"
    "local codes, n, gone, dfs, dids = {}, 0, {}, {}, {}\n"
    "for i = 5, #ARGV - 4, 5 do\n"
    "  local id, a, result, err, d = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]\n"
    "  local k = QM .. id\n"
    "  local f\n"
    "  if d ~= '' then\n"
    "    f = redis.call('HMGET', k, 'state', 'attempts_n', 'attempts', 'attempt_sig')\n"
    "  else\n"
    "    f = redis.call('HMGET', k, 'state', 'attempts_n', 'attempts', 'attempt_sig', 'h',\n"
    "      'dedup')\n"
    "    d = f[5] and q_head1(f[5]) or f[6]\n"
    "  end\n"
    "  local st = f[1]\n"
    "  if not st then codes[#codes + 1] = -1 else\n"
    "    local an = tonumber(f[2] or '0')\n"
    "    local cur, sig\n"
    "    if an < " STR(SB_QUEUE_ATTEMPTS_MAX) " then\n"
    "      cur = f[3]\n"
    "      if not cur or cur == '[]' then cur = '[' .. a .. ']'\n"
    "      else cur = string.sub(cur, 1, -2) .. ',' .. a .. ']' end\n"
    "      sig = f[4] and f[4] ~= ''\n"
    "    end\n"
    "    if st == 'queued' or st == 'leased' then\n"
    "      codes[#codes + 1] = 0\n"
    "      n = n + 1\n"
    "      gone[n] = id\n"
    "      if d then dfs[#dfs + 1] = d dids[#dids + 1] = id end\n"
    "      redis.call('HDEL', k, 'request', 'lease_until_ms')\n"
    "      if cur and not sig and err == '' then\n"
    "        if result ~= '' then\n"
    "          redis.call('HSET', k, 'attempts', cur, 'attempts_n', an + 1, 'state', 'acked',\n"
    "            'updated_at_ms', snow, 'result', result)\n"
    "        else\n"
    "          redis.call('HSET', k, 'attempts', cur, 'attempts_n', an + 1, 'state', 'acked',\n"
    "            'updated_at_ms', snow)\n"
    "        end\n"
    "      else\n"
    "        local h = {'state', 'acked', 'updated_at_ms', snow}\n"
    "        if cur then\n"
    "          h[5], h[6], h[7], h[8] = 'attempts', cur, 'attempts_n', an + 1\n"
    "          if sig then h[9], h[10] = 'attempt_sig', '' end\n"
    "        end\n"
    "        if result ~= '' then h[#h + 1] = 'result' h[#h + 1] = result end\n"
    "        if err ~= '' then h[#h + 1] = 'error' h[#h + 1] = err end\n"
    "        redis.call('HSET', k, unpack(h))\n"
    "      end\n"
    "      redis.call('PEXPIREAT', k, xat)\n"
    "    else\n"
    "      codes[#codes + 1] = st == 'acked' and 2 or 1\n"
    "      if cur and sig then\n"
    "        redis.call('HSET', k, 'attempts', cur, 'attempts_n', an + 1, 'attempt_sig', '')\n"
    "      elseif cur then\n"
    "        redis.call('HSET', k, 'attempts', cur, 'attempts_n', an + 1)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if n > 0 then\n"
    "  redis.call('ZREM', QR, unpack(gone))\n"
    "  redis.call('ZREM', QL, unpack(gone))\n"
    "  redis.call('ZREM', QE, unpack(gone))\n"
    "  QEXIT = true\n"
    "end\n"
    "if #dfs > 0 then\n"
    "  local cur, del = redis.call('HMGET', QD, unpack(dfs)), {}\n"
    "  for j = 1, #dfs do if cur[j] == dids[j] then del[#del + 1] = dfs[j] end end\n"
    "  if #del > 0 then redis.call('HDEL', QD, unpack(del)) end\n"
    "end\n"
    "if n > 0 then\n"
    "  redis.call('HINCRBY', QT, 'acked', n)\n"
    "  redis.call('HINCRBY', QT, 'drained', n)\n"
    "end\n"
    "q_settle()\n"
    "return q_ret({codes})\n";
// clang-format on

typedef struct ack_batch_op {
    sb_redis *r;
    char ws[SB_WS_ID_MAX + 1];
    size_t n;
    sb_queue_acks_fn cb;
    void *arg;
} ack_batch_op;

static void on_acks_reply(redisReply *rep, void *arg)
{
    ack_batch_op *op = arg;
    sb_queue_int_count_dead(rep);
    sb_queue_int_update_index(op->r, op->ws, rep);
    int err = SB_ERR;
    int *codes = sb_calloc(op->n + 1, sizeof(*codes));
    if (rep == NULL) {
        err = SB_ERR_UNAVAILABLE;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 4 &&
               rep->element[0]->type == REDIS_REPLY_ARRAY && rep->element[0]->elements == op->n) {
        err = SB_OK;
        for (size_t i = 0; i < op->n; i++) {
            const redisReply *c = rep->element[0]->element[i];
            codes[i] = c->type == REDIS_REPLY_INTEGER ? (int)c->integer : -1;
        }
    } else {
        sb_log(SB_LOG_ERROR, "queue_reply", "queue redeliver_ack: %s",
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    }
    op->cb(err, err == SB_OK ? codes : NULL, op->n, op->arg);
    sb_free(codes);
    sb_free(op);
}

int sb_queue_redeliver_ack(sb_redis *r, const sb_queue_opts *o, const char *ws,
                           const sb_queue_drained *items, size_t n, sb_queue_acks_fn cb, void *arg)
{
    if (n == 0 || n > SB_QUEUE_LEASE_MAX)
        return SB_ERR_UNAVAILABLE;
    const char **extra = sb_calloc(5 * n, sizeof(*extra));
    char **dedup = sb_calloc(n, sizeof(*dedup));
    for (size_t i = 0; i < n; i++) {
        extra[5 * i] = items[i].id;
        extra[5 * i + 1] = items[i].attempt;
        extra[5 * i + 2] = items[i].result ? items[i].result : "";
        extra[5 * i + 3] = items[i].error ? items[i].error : "";
        if (items[i].source != NULL && items[i].message_id != NULL)
            dedup[i] = sb_queue_int_dedup_field(items[i].source, items[i].message_id);
        extra[5 * i + 4] = dedup[i] ? dedup[i] : "";
    }
    ack_batch_op *op = sb_calloc(1, sizeof(*op));
    op->r = r;
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    op->n = n;
    op->cb = cb;
    op->arg = arg;
    int rc = sb_queue_int_run(r, o, redeliver_ack_lua, ws, extra, (int)(5 * n), on_acks_reply, op);
    for (size_t i = 0; i < n; i++)
        sb_free(dedup[i]);
    sb_free(dedup);
    sb_free(extra);
    if (rc != SB_OK)
        sb_free(op);
    return rc;
}
