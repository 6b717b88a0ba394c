/*
 * queue.c — the poll queue's Lua scripts and the parsing of their replies (see queue.h;
 * key layout in proto/redis-schema.md).
 *
 * Every script gets the same seven KEYS (the workspace's ready, leased, expiry, dedup,
 * dead, seq and stats keys — one hash slot) and the same ARGV head (message key prefix,
 * workspace id, max deliveries, retention), and starts from a shared Lua prelude
 * (Q_PRELUDE) that knows how to finish, dead-letter and re-queue a message. So the rules
 * for a message's life exist once, inside Redis, where they run atomically. Message
 * hashes are reached from the sorted sets; they share the workspace's hash tag, so they
 * live in the same cluster slot as the declared keys. The global queue index
 * (SB_QUEUE_ACTIVE_KEY, on the {sb} slot) is updated by a second command after the
 * script answered, as its reply says (update_index): for an append only when the queue
 * was empty, so a steady stream of fallbacks costs the {sb} master nothing.
 *
 * Scripts go to Redis by SHA (sync.h sb_sync_eval, redis.h "Scripts"): their text once
 * per connection, so their length costs nothing per call; what a call costs is the
 * redis.call's it makes and the Lua functions it creates, which is why the append — the
 * poll path's one script, batched per workspace per loop turn with the fallbacks'
 * counters inside (queue_append.c) — starts from the lazy prelude (Q_PRELUDE_LAZY).
 *
 * Maintenance is lazy: every script that looks at the queue first settles up to 100
 * expired messages (dead letter "expired") and up to 100 ended leases (back to ready
 * with their original sequence, so a redelivery keeps its place at the front; or dead
 * letter "max_deliveries" when it has been delivered --max-deliveries times). The append
 * is the exception: it sweeps expiries on every 16th append of a workspace, and runs the
 * whole maintenance when it finds an earlier copy of the message (queue_append.c).
 *
 * Never: re-encode the stored request (it is spliced into answers byte for byte), or
 * trust a reply's shape without checking it.
 */
#include "switchboard/queue.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/config.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/redis.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"
#include "switchboard/utf8.h"

#include <event2/buffer.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

/* ARGV 5: max, 6: lease ms. Returns {{fields...}, ready, ms to the next lease end or -1,
 * now}. (Switchboard's own redelivery leases with its own script: queue_redeliver.c.) */
static const char lease_lua[] = Q_PRELUDE
    "local now = q_now()\n"
    "q_maintain(now)\n"
    "local out = {}\n"
    "local till = sb_num(now + tonumber(ARGV[6]))\n"
    "local snow = sb_num(now)\n"
    "for _, id in ipairs(redis.call('ZRANGE', QR, 0, tonumber(ARGV[5]) - 1)) do\n"
    "  local k = q_key(id)\n"
    "  if redis.call('EXISTS', k) == 0 then q_forget(id) else\n"
    "    redis.call('ZREM', QR, id)\n"
    "    redis.call('ZADD', QL, till, id)\n"
    "    redis.call('HSET', k, 'state', 'leased', 'lease_until_ms', till, 'updated_at_ms', snow)\n"
    "    local dc = redis.call('HINCRBY', k, 'delivery_count', 1)\n"
    "    q_note(id, now, 'leased', 'leased for ' .. sb_num(tonumber(ARGV[6]) / 1000) ..\n"
    "      ' s (delivery ' .. dc .. ')')\n"
    "    out[#out + 1] = q_fields(id, true)\n"
    "  end\n"
    "end\n"
    "if #out > 0 then\n"
    "  redis.call('HINCRBY', QT, 'leased', #out)\n"
    "  redis.call('HSET', QSTATS, 'last_lease_ms', sb_num(now))\n"
    "  redis.call('PEXPIRE', QSTATS, QRETAIN)\n"
    "end\n"
    "q_settle()\n"
    "local first = redis.call('ZRANGE', QL, 0, 0, 'WITHSCORES')\n"
    "local nxt = -1\n"
    "if first[2] then nxt = math.max(0, tonumber(first[2]) - now) end\n"
    "return q_ret({out, redis.call('ZCARD', QR), nxt, sb_num(now)})\n";

/* ARGV 5: max. Returns {{fields...}, ready, leased, now}. */
static const char peek_lua[] = Q_PRELUDE
    "local now = q_now()\n"
    "q_maintain(now)\n"
    "local out = {}\n"
    "for _, id in ipairs(redis.call('ZRANGE', QR, 0, tonumber(ARGV[5]) - 1)) do\n"
    "  if redis.call('EXISTS', q_key(id)) == 0 then q_forget(id)\n"
    "  else out[#out + 1] = q_fields(id, true) end\n"
    "end\n"
    "return q_ret({out, redis.call('ZCARD', QR), redis.call('ZCARD', QL), sb_num(now)})\n";

/* The ack of one message (ack_lua; queue_redeliver.c's batched ack does the same for
 * each of its messages): 0 done (or acked before: the first result stays), 1 the state
 * forbids it, -1 unknown; then true when it was acked now (the caller counts those in
 * QT's acked and drained). */
#define Q_ACK_FN                                                                                   \
    "local function q_ack(id, result, err, now)\n"                                                 \
    "  local k = q_key(id)\n"                                                                      \
    "  local st = redis.call('HGET', k, 'state')\n"                                                \
    "  if not st then return -1 end\n"                                                             \
    "  if st == 'acked' then return 0, false end\n"                                                \
    "  if st ~= 'queued' and st ~= 'leased' then return 1 end\n"                                   \
    "  q_finish(id, 'acked', now)\n"                                                               \
    "  if result ~= '' then redis.call('HSET', k, 'result', result) end\n"                         \
    "  if err ~= '' then redis.call('HSET', k, 'error', err) end\n"                                \
    "  redis.call('HDEL', k, 'request')\n"                                                         \
    "  return 0, true\n"                                                                           \
    "end\n"

/* ARGV 5: id, 6: result or '', 7: error or '', 8: '1' when drained. Returns {code, fields}:
 * 0 done, 1 the state forbids it, -1 unknown. */
static const char ack_lua[] =
    Q_PRELUDE Q_ACK_FN "local c, fresh = q_ack(ARGV[5], ARGV[6], ARGV[7], q_now())\n"
                       "if c == -1 then return q_ret({-1, false}) end\n"
                       "if fresh then\n"
                       "  redis.call('HINCRBY', QT, 'acked', 1)\n"
                       "  if ARGV[8] == '1' then redis.call('HINCRBY', QT, 'drained', 1) end\n"
                       "end\n"
                       "q_settle()\n"
                       "return q_ret({c, q_fields(ARGV[5], false)})\n";

/* ARGV 5: id, 6: '1' to take back the lease's delivery, 7: '1' quiet (a redelivery's
 * release: no attempt noted, not counted as a nack), 8: the lease's lease_until_ms or ''
 * (then any lease): another lease is left alone (1, as a state that forbids it). Returns
 * as ack. */
static const char nack_lua[] = Q_PRELUDE
    "local now = q_now()\n"
    "local id = ARGV[5]\n"
    "local k = q_key(id)\n"
    "local st = redis.call('HGET', k, 'state')\n"
    "if not st then return q_ret({-1, false}) end\n"
    "if st == 'queued' then return q_ret({0, q_fields(id, false)}) end\n"
    "if st ~= 'leased' then return q_ret({1, q_fields(id, false)}) end\n"
    "if ARGV[8] ~= '' and tonumber(redis.call('HGET', k, 'lease_until_ms') or '0') ~=\n"
    "    tonumber(ARGV[8]) then\n"
    "  return q_ret({1, q_fields(id, false)})\n"
    "end\n"
    "if ARGV[6] == '1' and tonumber(redis.call('HGET', k, 'delivery_count') or '0') > 0 then\n"
    "  redis.call('HINCRBY', k, 'delivery_count', -1)\n"
    "end\n"
    "local f = redis.call('HMGET', k, 'delivery_count', 'seq', 'expires_at_ms')\n"
    "if tonumber(f[3] or '0') <= now then q_dead(id, 'expired', now)\n"
    "elseif tonumber(f[1] or '0') >= QMAXDEL then q_dead(id, 'max_deliveries', now)\n"
    "else\n"
    "  q_requeue(id, f[2], now)\n"
    "  if ARGV[7] ~= '1' then\n"
    "    q_note(id, now, 'nacked', 'released by a nack; queued again')\n"
    "    redis.call('HINCRBY', QT, 'nacked', 1)\n"
    "  end\n"
    "  QIDX = now\n"
    "  redis.call('PUBLISH', '" SB_QUEUE_NOTIFY_CHANNEL "', QWS)\n"
    "end\n"
    "q_settle()\n"
    "return q_ret({0, q_fields(id, false)})\n";

/* ARGV 5: id. Returns as ack. */
static const char get_lua[] = Q_PRELUDE "q_maintain(q_now())\n"
                                        "local id = ARGV[5]\n"
                                        "if not redis.call('HGET', q_key(id), 'state') then\n"
                                        "  return q_ret({-1, false})\n"
                                        "end\n"
                                        "return q_ret({0, q_fields(id, false)})\n";

/* ARGV 5: id. Returns as ack. */
static const char cancel_lua[] =
    Q_PRELUDE "local now = q_now()\n"
              "q_maintain(now)\n"
              "local id = ARGV[5]\n"
              "local k = q_key(id)\n"
              "local st = redis.call('HGET', k, 'state')\n"
              "if not st then return q_ret({-1, false}) end\n"
              "if st == 'canceled' then return q_ret({0, q_fields(id, false)}) end\n"
              "if st ~= 'queued' then return q_ret({1, q_fields(id, false)}) end\n"
              "q_finish(id, 'canceled', now)\n"
              "redis.call('HDEL', k, 'request')\n"
              "redis.call('HINCRBY', QT, 'canceled', 1)\n"
              "q_settle()\n"
              "return q_ret({0, q_fields(id, false)})\n";

/* ARGV 5: id, 6: one attempt (JSON object text), 7: its signature ('' never collapses),
 * 8: its "at" as a JSON string. An attempt whose signature equals the last one's replaces
 * it, with "count", "first_at" and "last_at" added, so a run of identical failures is one
 * entry. Returns as ack. */
static const char attempt_lua[] =
    Q_PRELUDE "local id = ARGV[5]\n"
              "local k = q_key(id)\n"
              "if not redis.call('HGET', k, 'state') then return q_ret({-1, false}) end\n"
              "local f = redis.call('HMGET', k, 'attempt_sig', 'attempt_len', 'attempt_first',\n"
              "  'attempt_count', 'attempts')\n"
              "if ARGV[7] ~= '' and f[1] == ARGV[7] and f[5] then\n"
              "  local n = tonumber(f[4] or '1') + 1\n"
              "  local a = string.sub(ARGV[6], 1, -2) .. ',\"count\":' .. n ..\n"
              "    ',\"first_at\":' .. f[3] .. ',\"last_at\":' .. ARGV[8] .. '}'\n"
              "  local cur = string.sub(f[5], 1, -(tonumber(f[2]) + 2))\n"
              "  redis.call('HSET', k, 'attempts', cur .. a .. ']', 'attempt_len', #a,\n"
              "    'attempt_count', n)\n"
              "else\n"
              "  local before = tonumber(redis.call('HGET', k, 'attempts_n') or '0')\n"
              "  q_attempt(id, ARGV[6])\n"
              "  if tonumber(redis.call('HGET', k, 'attempts_n') or '0') > before then\n"
              "    redis.call('HSET', k, 'attempt_sig', ARGV[7], 'attempt_len', #ARGV[6],\n"
              "      'attempt_first', ARGV[8], 'attempt_count', 1)\n"
              "  end\n"
              "end\n"
              "return q_ret({0, q_fields(id, false)})\n";

/* ARGV 5: the delivery record key sb:{ws}:dr:<messageId>. Returns {0, {{source, 'push',
 * record JSON} | {source, 'queue', fields}...}}: every sender's record of that messageId,
 * queued ones read from their message hash after maintenance — the link is in the record
 * hash (layout 2, or a second sender) or in a live link bucket sb:{ws}:qb:<n> listed in
 * sb:{ws}:qbx (messageId → sender "\n" entry id; a sender's most recently enqueued one
 * wins) —, pushed ones from that hash or from the live buckets sb:{ws}:pb:<n> listed in
 * sb:{ws}:pbx, newest first (messageId → record JSON, whose "source" names the sender:
 * record.c). A sender's queued record comes before its pushed one, as it always did. */
static const char lookup_lua[] =
    Q_PRELUDE "local now = q_now()\n"
              "q_maintain(now)\n"
              "local out, seen, order, best = {}, {}, {}, {}\n"
              "local function queued(src, id)\n"
              "  if not seen[src] then seen[src] = true order[#order + 1] = src end\n"
              "  if redis.call('EXISTS', q_key(id)) == 0 then return end\n"
              "  local f = q_fields(id, false)\n"
              "  local e = tonumber(f[14] or (f[24] and string.match(f[24], '(%d+)$')) or '0')\n"
              "  if not best[src] or e > best[src][1] then best[src] = {e, f} end\n"
              "end\n"
              "local h = redis.call('HGETALL', ARGV[5])\n"
              "for i = 1, #h, 2 do\n"
              "  if string.sub(h[i + 1], 1, 1) == '{' then\n"
              "    out[#out + 1] = {h[i], 'push', h[i + 1]}\n"
              "    seen[h[i]] = true\n"
              "  else queued(h[i], h[i + 1]) end\n"
              "end\n"
              "local pre, mid = string.match(ARGV[5], '^(sb:{[^}]*}:)dr:(.*)$')\n"
              "local ql = pre and redis.call('ZRANGEBYSCORE', pre .. 'qbx', now, '+inf') or {}\n"
              "for i = #ql, 1, -1 do\n"
              "  local v = redis.call('HGET', pre .. 'qb:' .. ql[i], mid)\n"
              "  if v then\n"
              "    local src, id = string.match(v, '^([^\\n]*)\\n(.*)$')\n"
              "    if src then queued(src, id) end\n"
              "  end\n"
              "end\n"
              "for _, src in ipairs(order) do\n"
              "  if best[src] then out[#out + 1] = {src, 'queue', best[src][2]} end\n"
              "end\n"
              "local live = pre and redis.call('ZRANGEBYSCORE', pre .. 'pbx', now, '+inf') or {}\n"
              "for i = #live, 1, -1 do\n"
              "  local v = redis.call('HGET', pre .. 'pb:' .. live[i], mid)\n"
              "  local src = v and string.match(v, '\"source\":\"([^\"]*)\"')\n"
              "  if src and not seen[src] then\n"
              "    seen[src] = true\n"
              "    out[#out + 1] = {src, 'push', v}\n"
              "  end\n"
              "end\n"
              "return q_ret({0, out})\n";

sb_queue_opts sb_queue_opts_of(const sb_config *cfg)
{
    sb_queue_opts o = {cfg->max_deliveries, (int64_t)cfg->queue_ttl_s * 1000};
    return o;
}

/* ---- names and ids ---- */

static const char *const state_names[] = {"queued", "leased",   "acked",
                                          "dead",   "canceled", "purged"};

const char *sb_queue_state_name(sb_queue_state s)
{
    return (size_t)s < SB_ARRAY_LEN(state_names) ? state_names[s] : "queued";
}

static sb_queue_state state_from_name(const char *s)
{
    for (size_t i = 0; s != NULL && i < SB_ARRAY_LEN(state_names); i++)
        if (strcmp(s, state_names[i]) == 0)
            return (sb_queue_state)i;
    return SB_QSTATE_QUEUED;
}

static int is_hex_id(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    return n == SB_QUEUE_ID_HEX;
}

int sb_queue_valid_id(const char *id)
{
    size_t p = strlen(SB_QUEUE_ID_PREFIX);
    return id != NULL && strncmp(id, SB_QUEUE_ID_PREFIX, p) == 0 && is_hex_id(id + p);
}

int sb_queue_id_from_task(const char *task_id, char out[32])
{
    size_t p = strlen(SB_QUEUE_TASK_PREFIX);
    if (task_id == NULL || strncmp(task_id, SB_QUEUE_TASK_PREFIX, p) != 0 ||
        !is_hex_id(task_id + p))
        return SB_ERR_INVALID;
    snprintf(out, 32, "%s%s", SB_QUEUE_ID_PREFIX, task_id + p);
    return SB_OK;
}

void sb_queue_record_clear(sb_queue_record *rec)
{
    char **strs[] = {&rec->id,          &rec->task_id, &rec->message_id, &rec->context_id,
                     &rec->kind,        &rec->source,  &rec->method,     &rec->detail,
                     &rec->dead_reason, &rec->result,  &rec->error,      &rec->a2a_version,
                     &rec->user,        &rec->request, &rec->attempts};
    for (size_t i = 0; i < SB_ARRAY_LEN(strs); i++)
        sb_free(*strs[i]);
    memset(rec, 0, sizeof(*rec));
}

/* ---- replies ---- */

static char *dup_field(const redisReply *e)
{
    if (e->type != REDIS_REPLY_STRING || e->len == 0)
        return NULL;
    return sb_strndup(e->str, e->len);
}

/* The stored request, byte for byte: it is relayed with its length, so a NUL inside it
 * (Redis strings are binary) must neither cut the copy nor let readers run past it. */
static char *dup_bytes(const redisReply *e, size_t *len)
{
    *len = 0;
    if (e->type != REDIS_REPLY_STRING || e->len == 0)
        return NULL;
    char *d = sb_malloc(e->len + 1);
    memcpy(d, e->str, e->len);
    d[e->len] = '\0';
    *len = e->len;
    return d;
}

static int64_t int_field(const redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type != REDIS_REPLY_STRING)
        return 0;
    return strtoll(e->str, NULL, 10);
}

char *sb_queue_int_dedup_field(const char *source, const char *message_id)
{
    size_t sn = strlen(source), mn = strlen(message_id);
    char *d = sb_malloc(sn + 1 + mn + 1);
    memcpy(d, source, sn);
    d[sn] = '\n';
    memcpy(d + sn + 1, message_id, mn + 1);
    return d;
}

char *sb_queue_int_head(const char *const *v, size_t *len)
{
    size_t total = 0, n[H_ENQUEUED_AT];
    for (int i = 0; i < H_ENQUEUED_AT; i++)
        total += (n[i] = v[i] != NULL ? strlen(v[i]) : 0) + 21;
    char *h = sb_malloc(total + 1), *p = h;
    for (int i = 0; i < H_ENQUEUED_AT; i++) {
        p += sb_fmt_ll(p, (long long)n[i]);
        *p++ = ':';
        if (n[i] > 0)
            memcpy(p, v[i], n[i]);
        p += n[i];
    }
    *p = '\0';
    *len = (size_t)(p - h);
    return h;
}

/* Splits a packed head (queue_int.h, the H_ enum) into |v| and |n| (H_COUNT each; an
 * absent field is (NULL, 0)). SB_ERR when it is not one. */
static int split_head(const char *s, size_t len, const char *v[H_COUNT], size_t n[H_COUNT])
{
    size_t pos = 0;
    for (int i = 0; i < H_COUNT; i++) {
        size_t k = 0;
        if (pos >= len || s[pos] < '0' || s[pos] > '9')
            return SB_ERR;
        while (pos < len && s[pos] >= '0' && s[pos] <= '9' && k < len)
            k = k * 10 + (size_t)(s[pos++] - '0');
        if (pos >= len || s[pos] != ':' || k > len - pos - 1)
            return SB_ERR;
        v[i] = s + pos + 1;
        n[i] = k;
        pos += k + 1;
    }
    return pos == len ? SB_OK : SB_ERR;
}

static char *dup_n(const char *s, size_t n)
{
    return n > 0 ? sb_strndup(s, n) : NULL;
}

int sb_queue_int_parse_record(const redisReply *a, sb_queue_record *rec)
{
    memset(rec, 0, sizeof(*rec));
    /* F_COUNT fields, or {head, request} (the redelivery lease's read, queue_redeliver.c) */
    int slim = a != NULL && a->type == REDIS_REPLY_ARRAY && a->elements == 2;
    if (a == NULL || a->type != REDIS_REPLY_ARRAY || (a->elements != F_COUNT && !slim))
        return SB_ERR;
    static const redisReply absent = {.type = REDIS_REPLY_NIL};
    const redisReply *e[F_COUNT];
    for (int i = 0; i < F_COUNT; i++)
        e[i] = slim ? &absent : a->element[i];
    if (slim) {
        e[F_HEAD] = a->element[0];
        e[F_REQUEST] = a->element[1];
    }
    /* layout 3: the unchanging fields come from the head; layout 2: from their own */
    const char *hv[H_COUNT];
    size_t hn[H_COUNT];
    int packed = e[F_HEAD]->type == REDIS_REPLY_STRING;
    if (packed ? split_head(e[F_HEAD]->str, e[F_HEAD]->len, hv, hn) != SB_OK
               : e[F_ID]->type != REDIS_REPLY_STRING)
        return SB_ERR;
    static const struct {
        int h, f;
    } imm[] = {{H_ID, F_ID},
               {H_TASK_ID, F_TASK_ID},
               {H_MESSAGE_ID, F_MESSAGE_ID},
               {H_CONTEXT_ID, F_CONTEXT_ID},
               {H_KIND, F_KIND},
               {H_SOURCE, F_SOURCE},
               {H_METHOD, F_METHOD},
               {H_VERSION, F_VERSION},
               {H_REASON, F_REASON},
               {H_DETAIL, F_DETAIL},
               {H_ATTEMPTED, F_ATTEMPTED},
               {H_A2A_VERSION, F_A2A_VERSION},
               {H_USER, F_USER},
               {H_ENQUEUED_AT, F_ENQUEUED_AT}};
    char *s[F_COUNT] = {0};
    for (size_t i = 0; i < SB_ARRAY_LEN(imm); i++)
        s[imm[i].f] = packed ? dup_n(hv[imm[i].h], hn[imm[i].h]) : dup_field(e[imm[i].f]);
    rec->id = s[F_ID];
    rec->task_id = s[F_TASK_ID];
    rec->message_id = s[F_MESSAGE_ID];
    rec->context_id = s[F_CONTEXT_ID];
    rec->kind = s[F_KIND];
    rec->source = s[F_SOURCE];
    rec->method = s[F_METHOD];
    rec->version =
        s[F_VERSION] != NULL && strcmp(s[F_VERSION], "v10") == 0 ? SB_A2A_V10 : SB_A2A_V03;
    sb_free(s[F_VERSION]);
    char *state = dup_field(e[F_STATE]);
    rec->state = state_from_name(state);
    sb_free(state);
    rec->reason = s[F_REASON] != NULL ? sb_reason_from_name(s[F_REASON]) : SB_REASON_NONE;
    sb_free(s[F_REASON]);
    rec->detail = s[F_DETAIL];
    rec->attempted = s[F_ATTEMPTED] != NULL && strtoll(s[F_ATTEMPTED], NULL, 10) != 0;
    sb_free(s[F_ATTEMPTED]);
    rec->enqueued_at_ms = s[F_ENQUEUED_AT] != NULL ? strtoll(s[F_ENQUEUED_AT], NULL, 10) : 0;
    sb_free(s[F_ENQUEUED_AT]);
    rec->a2a_version = s[F_A2A_VERSION];
    rec->user = s[F_USER];
    rec->delivery_count = (int)int_field(e[F_DELIVERY_COUNT]);
    rec->expires_at_ms = int_field(e[F_EXPIRES_AT]);
    /* a message the append just wrote has no updated_at_ms (nor a delivery count or a
     * lease end: absent is 0): it was updated when it was queued */
    rec->updated_at_ms = int_field(e[F_UPDATED_AT]);
    if (rec->updated_at_ms == 0)
        rec->updated_at_ms = rec->enqueued_at_ms;
    rec->lease_until_ms = int_field(e[F_LEASE_UNTIL]);
    rec->dead_reason = dup_field(e[F_DEAD_REASON]);
    rec->result = dup_field(e[F_RESULT]);
    rec->error = dup_field(e[F_ERROR]);
    rec->attempts = dup_field(e[F_ATTEMPTS]);
    rec->request = dup_bytes(e[F_REQUEST], &rec->request_len);
    if (rec->id == NULL) {
        sb_queue_record_clear(rec);
        return SB_ERR;
    }
    return SB_OK;
}

typedef enum {
    OP_APPEND,
    OP_LEASE,
    OP_PEEK,
    OP_ACK,
    OP_NACK,
    OP_GET,
    OP_CANCEL,
    OP_ATTEMPT,
    OP_LOOKUP
} op_kind;

static const char *const op_names[] = {"append", "lease",  "peek",    "ack",   "nack",
                                       "get",    "cancel", "attempt", "lookup"};

typedef struct q_op {
    op_kind kind;
    sb_queue_record_fn rec_cb;
    sb_queue_batch_fn batch_cb;
    sb_queue_lookup_fn lookup_cb;
    void *arg;
    sb_redis *r; /* for the queue index update the reply asks for */
    char ws[SB_WS_ID_MAX + 1];
} q_op;

static void log_bad_reply(const q_op *op, const redisReply *rep)
{
    sb_log(SB_LOG_ERROR, "queue_redis_error", "%s %s: %s", op_names[op->kind], op->ws,
           rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
}

int sb_queue_int_record_reply(const redisReply *rep, int minus_one_absent, sb_queue_record *rec,
                              long long *code)
{
    memset(rec, 0, sizeof(*rec));
    *code = 0;
    if (rep == NULL)
        return SB_ERR_UNAVAILABLE;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 5 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER)
        return SB_ERR;
    *code = rep->element[0]->integer;
    if (*code == -1 && minus_one_absent)
        return SB_ERR_NOTFOUND;
    return sb_queue_int_parse_record(rep->element[1], rec) == SB_OK ? SB_OK : SB_ERR;
}

/* {code, fields} replies of append, ack, nack, get, cancel. */
static void finish_record_op(q_op *op, const redisReply *rep)
{
    sb_queue_record rec;
    long long code;
    int err = sb_queue_int_record_reply(rep, op->kind != OP_APPEND, &rec, &code);
    if (err == SB_OK) {
        if (op->kind == OP_APPEND)
            rec.duplicate = code == 1;
        else if (code != 0)
            err = SB_ERR_FORBIDDEN;
    } else if (err == SB_ERR) {
        log_bad_reply(op, rep);
    }
    op->rec_cb(err, err == SB_OK || err == SB_ERR_FORBIDDEN ? &rec : NULL, op->arg);
    sb_queue_record_clear(&rec);
}

/* {{fields...}, ready, leased-or-next, now} replies of lease and peek. */
static void finish_batch_op(q_op *op, const redisReply *rep)
{
    sb_queue_batch b;
    memset(&b, 0, sizeof(b));
    int err = SB_ERR;
    if (rep == NULL) {
        err = SB_ERR_UNAVAILABLE;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 7 &&
               rep->element[0]->type == REDIS_REPLY_ARRAY &&
               rep->element[1]->type == REDIS_REPLY_INTEGER &&
               rep->element[2]->type == REDIS_REPLY_INTEGER) {
        const redisReply *items = rep->element[0];
        b.items = sb_calloc(items->elements + 1, sizeof(*b.items));
        err = SB_OK;
        int64_t now_ms = int_field(rep->element[3]);
        for (size_t i = 0; i < items->elements; i++) {
            sb_queue_record *it = &b.items[b.n];
            if (sb_queue_int_parse_record(items->element[i], it) != SB_OK) {
                sb_queue_record_clear(it);
                err = SB_ERR;
                break;
            }
            b.n++;
        }
        b.ready = rep->element[1]->integer;
        if (op->kind == OP_LEASE) {
            b.next_lease_end_ms = rep->element[2]->integer;
        } else {
            b.leased = rep->element[2]->integer;
            b.next_lease_end_ms = -1;
        }
        b.now_ms = now_ms;
        if (err != SB_OK)
            log_bad_reply(op, rep);
    } else {
        log_bad_reply(op, rep);
    }
    /* A lease whose reply cannot be read still leased what it leased: those messages
     * come back when the lease ends, as after a consumer crash. */
    op->batch_cb(err, err == SB_OK ? &b : NULL, op->arg);
    for (size_t i = 0; i < b.n; i++)
        sb_queue_record_clear(&b.items[i]);
    sb_free(b.items);
}

/* {0, {{source, 'push', json} | {source, 'queue', fields}...}} replies of lookup. */
static void finish_lookup_op(q_op *op, const redisReply *rep)
{
    int err = SB_ERR;
    size_t n = 0;
    sb_queue_lookup_item *items = NULL;
    sb_queue_record *recs = NULL;
    if (rep == NULL) {
        err = SB_ERR_UNAVAILABLE;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 5 &&
               rep->element[1]->type == REDIS_REPLY_ARRAY) {
        const redisReply *list = rep->element[1];
        items = sb_calloc(list->elements + 1, sizeof(*items));
        recs = sb_calloc(list->elements + 1, sizeof(*recs));
        err = SB_OK;
        for (size_t i = 0; i < list->elements && err == SB_OK; i++) {
            const redisReply *e = list->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 3 ||
                e->element[0]->type != REDIS_REPLY_STRING ||
                e->element[1]->type != REDIS_REPLY_STRING) {
                err = SB_ERR;
                break;
            }
            items[n].source = e->element[0]->str;
            if (strcmp(e->element[1]->str, "push") == 0 &&
                e->element[2]->type == REDIS_REPLY_STRING) {
                items[n++].record_json = e->element[2]->str;
            } else if (sb_queue_int_parse_record(e->element[2], &recs[n]) == SB_OK) {
                items[n].rec = &recs[n];
                n++;
            } else {
                sb_queue_record_clear(&recs[n]);
                err = SB_ERR;
            }
        }
    }
    if (err == SB_ERR)
        log_bad_reply(op, rep);
    op->lookup_cb(err, err == SB_OK ? items : NULL, err == SB_OK ? n : 0, op->arg);
    for (size_t i = 0; i < n; i++)
        sb_queue_record_clear(&recs[i]);
    sb_free(recs);
    sb_free(items);
}

/* Every script ends its reply with the dead letters it made and the index update:
 * {…, expired, max_deliveries, index}. */
void sb_queue_int_count_dead(const redisReply *rep)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return;
    const redisReply *x = rep->element[rep->elements - 3], *m = rep->element[rep->elements - 2];
    if (x->type == REDIS_REPLY_INTEGER && x->integer > 0)
        sb_metrics_dead_letters("expired", (unsigned long)x->integer);
    if (m->type == REDIS_REPLY_INTEGER && m->integer > 0)
        sb_metrics_dead_letters("max_deliveries", (unsigned long)m->integer);
}

/* KEYS: the queue index. ARGV: ws, the Redis ms at which its queue was seen empty. Removes
 * the member unless an append or requeue re-added it at or after that moment. */
static const char prune_lua[] = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])\n"
                                "if s and tonumber(s) < tonumber(ARGV[2]) then\n"
                                "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
                                "end\n"
                                "return 1\n";

/* The second step of a queue write, on the index's own slot ({sb}), sent only after the
 * workspace's script answered. A crash between the two leaves the index behind the
 * queue: a workspace missing (until its next append) or kept (until its next exit) —
 * the index only feeds GET /delivery and the queue gauges, never a delivery decision. */
void sb_queue_int_update_index(sb_redis *r, const char *ws, const redisReply *rep)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3)
        return;
    const redisReply *ix = rep->element[rep->elements - 1];
    if (ix->type != REDIS_REPLY_INTEGER || ix->integer == 0)
        return;
    char ms[24];
    snprintf(ms, sizeof(ms), "%lld", ix->integer > 0 ? ix->integer : -ix->integer);
    if (ix->integer > 0) {
        const char *argv[] = {"ZADD", SB_QUEUE_ACTIVE_KEY, ms, ws};
        sb_redis_command_argv(r, NULL, NULL, 4, argv, NULL);
    } else {
        const char *args[] = {SB_QUEUE_ACTIVE_KEY, ws, ms};
        sb_sync_eval(r, prune_lua, 1, 3, args, NULL, NULL);
    }
}

static void on_reply(redisReply *rep, void *arg)
{
    q_op *op = arg;
    sb_queue_int_count_dead(rep);
    if (op->r != NULL)
        sb_queue_int_update_index(op->r, op->ws, rep);
    if (op->kind == OP_LEASE || op->kind == OP_PEEK)
        finish_batch_op(op, rep);
    else if (op->kind == OP_LOOKUP)
        finish_lookup_op(op, rep);
    else
        finish_record_op(op, rep);
    sb_free(op);
}

#define MAX_ARGS 64

int sb_queue_int_run_lib(sb_redis *r, const sb_queue_opts *o, const char *lib, const char *script,
                         const char *ws, const char *const *xkeys, int nxkeys,
                         const char *const *extra, int n, sb_redis_reply_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    static const char *const suffix[] = {"ready", "leased", "expiry", "dedup",
                                         "dead",  "seq",    "stats"};
    char keys[7][SB_WS_ID_MAX + 32];
    char prefix[SB_WS_ID_MAX + 32], maxdel[24], retain[24];
    const char *small[MAX_ARGS];
    /* a batch (the redelivery's ack) brings more arguments than the common case */
    const char **args =
        11 + nxkeys + n <= MAX_ARGS ? small : sb_calloc((size_t)(11 + nxkeys + n), sizeof(*args));
    int argc = 0;
    /* without printf: this runs for every queue script (every append batch) */
    char base[sizeof(keys[0])]; /* "sb:{" ws "}:q:", whole for the longest ws */
    size_t blen = sb_concat3(base, sizeof(base), "sb:{", ws, "}:q:");
    for (size_t i = 0; i < SB_ARRAY_LEN(suffix); i++) {
        memcpy(keys[i], base, blen);
        sb_copy_str(keys[i] + blen, sizeof(keys[i]) - blen, suffix[i]);
        args[argc++] = keys[i];
    }
    for (int i = 0; i < nxkeys && argc < MAX_ARGS; i++)
        args[argc++] = xkeys[i];
    int nkeys = argc;
    sb_concat3(prefix, sizeof(prefix), "sb:{", ws, "}:msg:");
    sb_fmt_ll(maxdel, o->max_deliveries > 0 ? o->max_deliveries : 1);
    sb_fmt_ll(retain, (long long)(o->retain_ms > 0 ? o->retain_ms : 1));
    args[argc++] = prefix;
    args[argc++] = ws;
    args[argc++] = maxdel;
    args[argc++] = retain;
    for (int i = 0; i < n; i++)
        args[argc++] = extra[i];
    int rc = sb_sync_eval_lib(r, lib, script, nkeys, argc, args, cb, arg);
    if (args != small)
        sb_free(args);
    return rc == SB_OK ? SB_OK : SB_ERR_UNAVAILABLE;
}

int sb_queue_int_run(sb_redis *r, const sb_queue_opts *o, const char *script, const char *ws,
                     const char *const *extra, int n, sb_redis_reply_fn cb, void *arg)
{
    return sb_queue_int_run_lib(r, o, NULL, script, ws, NULL, 0, extra, n, cb, arg);
}

/* Sends |script| with the standard KEYS and ARGV head for |ws| followed by |n| |extra|
 * arguments. Hands |op| to the reply, or frees it and returns SB_ERR_UNAVAILABLE. */
static int run(sb_redis *r, const sb_queue_opts *o, q_op *op, const char *script, const char *ws,
               const char *const *extra, int n)
{
    snprintf(op->ws, sizeof(op->ws), "%s", ws);
    op->r = r;
    if (sb_queue_int_run(r, o, script, ws, extra, n, on_reply, op) != SB_OK) {
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

static q_op *op_new(op_kind kind, sb_queue_record_fn rec_cb, sb_queue_batch_fn batch_cb, void *arg)
{
    q_op *op = sb_calloc(1, sizeof(*op));
    op->kind = kind;
    op->rec_cb = rec_cb;
    op->batch_cb = batch_cb;
    op->arg = arg;
    return op;
}

/* ---- operations ---- */

int sb_queue_lease(sb_redis *r, const sb_queue_opts *o, const char *ws, int max, int64_t lease_ms,
                   sb_queue_batch_fn cb, void *arg)
{
    char smax[16], slease[24];
    snprintf(smax, sizeof(smax), "%d",
             max < 1 ? 1 : (max > SB_QUEUE_LEASE_MAX ? SB_QUEUE_LEASE_MAX : max));
    snprintf(slease, sizeof(slease), "%lld", (long long)(lease_ms > 0 ? lease_ms : 1));
    const char *extra[] = {smax, slease};
    return run(r, o, op_new(OP_LEASE, NULL, cb, arg), lease_lua, ws, extra, 2);
}

int sb_queue_peek(sb_redis *r, const sb_queue_opts *o, const char *ws, int max,
                  sb_queue_batch_fn cb, void *arg)
{
    char smax[16];
    snprintf(smax, sizeof(smax), "%d",
             max < 1 ? 1 : (max > SB_QUEUE_LEASE_MAX ? SB_QUEUE_LEASE_MAX : max));
    const char *extra[] = {smax};
    return run(r, o, op_new(OP_PEEK, NULL, cb, arg), peek_lua, ws, extra, 1);
}

int sb_queue_ack(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                 const char *result, const char *error, int drained, sb_queue_record_fn cb,
                 void *arg)
{
    const char *extra[] = {id, result ? result : "", error ? error : "", drained ? "1" : "0"};
    return run(r, o, op_new(OP_ACK, cb, NULL, arg), ack_lua, ws, extra, 4);
}

int sb_queue_nack(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id, int uncount,
                  sb_queue_record_fn cb, void *arg)
{
    const char *extra[] = {id, uncount ? "1" : "0", "0", ""};
    return run(r, o, op_new(OP_NACK, cb, NULL, arg), nack_lua, ws, extra, 4);
}

int sb_queue_redeliver_release(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                               int64_t lease_until_ms, sb_queue_record_fn cb, void *arg)
{
    char until[24] = "";
    if (lease_until_ms > 0)
        sb_fmt_ll(until, lease_until_ms);
    const char *extra[] = {id, "0", "1", until};
    return run(r, o, op_new(OP_NACK, cb, NULL, arg), nack_lua, ws, extra, 4);
}

int sb_queue_get(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                 sb_queue_record_fn cb, void *arg)
{
    const char *extra[] = {id};
    return run(r, o, op_new(OP_GET, cb, NULL, arg), get_lua, ws, extra, 1);
}

int sb_queue_cancel(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                    sb_queue_record_fn cb, void *arg)
{
    const char *extra[] = {id};
    return run(r, o, op_new(OP_CANCEL, cb, NULL, arg), cancel_lua, ws, extra, 1);
}

int sb_queue_add_attempt(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *id,
                         const char *attempt, const char *sig, const char *at_json,
                         sb_queue_record_fn cb, void *arg)
{
    const char *extra[] = {id, attempt, sig ? sig : "", at_json ? at_json : "null"};
    return run(r, o, op_new(OP_ATTEMPT, cb, NULL, arg), attempt_lua, ws, extra, 4);
}

int sb_queue_lookup(sb_redis *r, const sb_queue_opts *o, const char *ws, const char *message_id,
                    sb_queue_lookup_fn cb, void *arg)
{
    size_t n = strlen(ws) + strlen(message_id) + 16;
    char *key = sb_malloc(n);
    snprintf(key, n, SB_RECORD_KEY_FMT, ws, message_id);
    const char *extra[] = {key};
    q_op *op = op_new(OP_LOOKUP, NULL, NULL, arg);
    op->lookup_cb = cb;
    int rc = run(r, o, op, lookup_lua, ws, extra, 1);
    sb_free(key);
    return rc;
}

/* ---- the inbox form of a message ---- */

static json_t *str_or_empty(const char *s)
{
    return sb_json_text(s ? s : "");
}

void sb_queue_record_write_json(const sb_queue_record *rec, struct evbuffer *out)
{
    sb_queue_record_write_json_extra(rec, NULL, out);
}

void sb_queue_record_write_json_extra(const sb_queue_record *rec, json_t *extra,
                                      struct evbuffer *out)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", str_or_empty(rec->id));
    json_object_set_new(o, "message_id", str_or_empty(rec->message_id));
    json_object_set_new(o, "task_id", str_or_empty(rec->task_id));
    json_object_set_new(o, "kind", str_or_empty(rec->kind));
    json_object_set_new(o, "source", str_or_empty(rec->source));
    json_object_set_new(o, "reason", json_string(sb_reason_name(rec->reason)));
    json_object_set_new(o, "attempted", json_boolean(rec->attempted));
    json_object_set_new(o, "delivery_count", json_integer(rec->delivery_count));
    json_object_set_new(o, "enqueued_at", sb_json_iso8601(rec->enqueued_at_ms));
    json_object_set_new(o, "expires_at", sb_json_iso8601(rec->expires_at_ms));
    if (extra != NULL) {
        json_object_update(o, extra);
        json_decref(extra);
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
    size_t n = strlen(text);
    /* "{...}" → "{...,"request":<the stored bytes>}" */
    evbuffer_add(out, text, n - 1);
    evbuffer_add_printf(out, ",\"request\":");
    if (rec->request != NULL)
        evbuffer_add(out, rec->request, rec->request_len);
    else
        evbuffer_add_printf(out, "null");
    evbuffer_add(out, "}", 1);
    sb_free(text);
}
