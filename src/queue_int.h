/*
 * queue_int.h — what queue.c shares with queue_dead.c (the dead-letter operations),
 * queue_append.c (the batched append) and queue_redeliver.c (the drain's lease and ack): the Lua
 * prelude every queue script starts from, the field order of a message as the scripts return it,
 * and the helpers that run a script and read a message.
 *
 * Private to the queue module's files; nothing else includes it.
 */
#ifndef SWITCHBOARD_QUEUE_INT_H
#define SWITCHBOARD_QUEUE_INT_H

#include "switchboard/queue.h"
#include "switchboard/redis.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* The fields every script returns for a message, in this order (then the request). The
 * last one, "h", is layout 3's packed head (the H_ enum below): a message written by this
 * release has its unchanging fields only there (their own fields come back absent), one
 * written by a layout-2 release has them as fields of their own and no "h" — the reply
 * carries both and sb_queue_int_parse_record takes whichever is there. */
#define Q_FIELDS                                                                                   \
    "'id','task_id','message_id','context_id','kind','source','method','version','state',"         \
    "'reason','detail','attempted','delivery_count','enqueued_at_ms','expires_at_ms',"             \
    "'updated_at_ms','lease_until_ms','dead_reason','result','error','a2a_version','user',"        \
    "'attempts','h'"
enum {
    F_ID,
    F_TASK_ID,
    F_MESSAGE_ID,
    F_CONTEXT_ID,
    F_KIND,
    F_SOURCE,
    F_METHOD,
    F_VERSION,
    F_STATE,
    F_REASON,
    F_DETAIL,
    F_ATTEMPTED,
    F_DELIVERY_COUNT,
    F_ENQUEUED_AT,
    F_EXPIRES_AT,
    F_UPDATED_AT,
    F_LEASE_UNTIL,
    F_DEAD_REASON,
    F_RESULT,
    F_ERROR,
    F_A2A_VERSION,
    F_USER,
    F_ATTEMPTS,
    F_HEAD,
    F_REQUEST,
    F_COUNT
};

/* Layout 3's packed head, the field "h" of sb:{ws}:msg:<id>: the message's unchanging
 * fields, each as its length in decimal, ':' and its bytes, in this order ('' for an
 * absent a2a_version or user). switchboard writes all but the last (sb_queue_int_head);
 * the append script adds enqueued_at_ms, so the head always ends in its digits. Why: a
 * message of 22 hash fields cost Redis more to write than the rest of its append
 * together (proto/redis-schema.md, "The poll queue"); it now has 6. q_head1 reads the
 * first field (dedup), q_hmget any of them — from either layout. */
enum {
    H_DEDUP,
    H_ID,
    H_TASK_ID,
    H_MESSAGE_ID,
    H_CONTEXT_ID,
    H_KIND,
    H_SOURCE,
    H_METHOD,
    H_VERSION,
    H_REASON,
    H_DETAIL,
    H_ATTEMPTED,
    H_A2A_VERSION,
    H_USER,
    H_ENQUEUED_AT,
    H_COUNT
};
/* The Lua names of the head's fields, in that order (q_hmget's map). */
#define Q_HEAD_NAMES                                                                               \
    "dedup=1,id=2,task_id=3,message_id=4,context_id=5,kind=6,source=7,method=8,version=9,"         \
    "reason=10,detail=11,attempted=12,a2a_version=13,user=14,enqueued_at_ms=15"

/* KEYS: 1 ready, 2 leased, 3 expiry, 4 dedup, 5 dead, 6 seq, 7 stats — all {ws}, one slot.
 * ARGV: 1 message key prefix "sb:{ws}:msg:", 2 ws, 3 max deliveries, 4 retention ms,
 * then the script's own arguments. Every reply (built by q_ret) ends with three integers:
 * the dead letters "expired" and "max_deliveries" the script made, for the metrics, and
 * the queue index update the caller owes SB_QUEUE_ACTIVE_KEY: +now (messages became
 * available: add), -now (an exit left the queue empty: prune unless re-added since), 0.
 *
 * Q_PRELUDE_LAZY holds the state and the three functions every script uses (q_now,
 * q_key, q_ret); the rest — finishing, dead-lettering, re-queueing, maintenance — is made
 * by q_lib() when a script needs it. In Lua each function made costs its upvalues, every
 * run, whether it is called or not: the append's cheap path (one per fallback) calls
 * none of them, so it never pays for them. Q_PRELUDE is the lazy prelude with q_lib()
 * already called, for every other script. */
// clang-format off
#define Q_PRELUDE_LAZY                                                                             \
    "local QR, QL, QE, QD, QX, QS, QT = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],\n"            \
    "  KEYS[6], KEYS[7]\n"                                                                         \
    "local QM, QWS = ARGV[1], ARGV[2]\n"                                                           \
    "local QMAXDEL, QRETAIN = tonumber(ARGV[3]), tonumber(ARGV[4])\n"                              \
    "local QIDX, QEXIT = 0, false\n"                                                               \
    "local QDEAD = {expired = 0, max_deliveries = 0}\n"                                            \
    "local function q_now()\n"                                                                     \
    "  local t = redis.call('TIME')\n"                                                             \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                         \
    "end\n"                                                                                        \
    "local function q_key(id) return QM .. id end\n"                                               \
    "local function q_ret(t)\n"                                                                    \
    "  t[#t + 1] = QDEAD.expired\n"                                                                \
    "  t[#t + 1] = QDEAD.max_deliveries\n"                                                         \
    "  t[#t + 1] = QIDX\n"                                                                         \
    "  return t\n"                                                                                 \
    "end\n"                                                                                        \
    "local QF, QHN, QSTATS, q_head1, q_hmget, q_attempt, q_note, q_fields, q_settle,\n"            \
    "  q_forget, q_finish, q_dead, q_requeue, q_expire, q_maintain\n"                              \
    "local function q_lib()\n"                                                                     \
    "if QF then return end\n"                                                                      \
    "QF = {" Q_FIELDS "}\n"                                                                        \
    "QHN = {" Q_HEAD_NAMES "}\n"                                                                   \
    "function q_head1(h)\n"                                                                        \
    "  local c = string.find(h, ':', 1, true)\n"                                                   \
    "  return string.sub(h, c + 1, c + tonumber(string.sub(h, 1, c - 1)))\n"                       \
    "end\n"                                                                                        \
    "function q_hmget(k, ...)\n"                                                                   \
    "  local names = {...}\n"                                                                      \
    "  local f = redis.call('HMGET', k, 'h', ...)\n"                                               \
    "  local t = {}\n"                                                                             \
    "  if f[1] then\n"                                                                             \
    "    local pos = 1\n"                                                                          \
    "    while pos <= #f[1] do\n"                                                                 \
    "      local c = string.find(f[1], ':', pos, true)\n"                                          \
    "      local n = tonumber(string.sub(f[1], pos, c - 1))\n"                                     \
    "      t[#t + 1] = string.sub(f[1], c + 1, c + n)\n"                                           \
    "      pos = c + n + 1\n"                                                                      \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  local out = {}\n"                                                                           \
    "  for i = 1, #names do\n"                                                                     \
    "    local j = f[1] and QHN[names[i]]\n"                                                       \
    "    if j then out[i] = t[j] ~= '' and t[j] or false else out[i] = f[i + 1] end\n"             \
    "  end\n"                                                                                      \
    "  return out\n"                                                                               \
    "end\n"                                                                                        \
    "QSTATS = 'sb:{' .. QWS .. '}:dstats'\n"                                                       \
    "function q_attempt(id, a)\n"                                                                  \
    "  local k = q_key(id)\n"                                                                      \
    "  local n = tonumber(redis.call('HGET', k, 'attempts_n') or '0')\n"                           \
    "  if n >= " STR(SB_QUEUE_ATTEMPTS_MAX) " then return end\n"                                   \
    "  local cur = redis.call('HGET', k, 'attempts') or '[]'\n"                                    \
    "  if cur == '[]' then cur = '[' .. a .. ']'\n"                                                \
    "  else cur = string.sub(cur, 1, -2) .. ',' .. a .. ']' end\n"                                 \
    "  redis.call('HSET', k, 'attempts', cur, 'attempts_n', n + 1,\n"                              \
    "    'attempt_sig', '')\n"                                                                     \
    "end\n"                                                                                        \
    "function q_note(id, now, outcome, detail)\n"                                                  \
    "  q_attempt(id, '{\"at_ms\":' .. sb_num(now) .. ',\"outcome\":\"' .. outcome ..\n"            \
    "    '\",\"reason\":null,\"detail\":' .. cjson.encode(detail) ..\n"                            \
    "    ',\"http_status\":null,\"duration_ms\":null}')\n"                                         \
    "end\n"                                                                                        \
    "function q_fields(id, withreq)\n"                                                             \
    "  local k = q_key(id)\n"                                                                      \
    "  local f = redis.call('HMGET', k, unpack(QF))\n"                                             \
    "  if withreq then f[#f + 1] = redis.call('HGET', k, 'request') or false\n"                    \
    "  else f[#f + 1] = false end\n"                                                               \
    "  return f\n"                                                                                 \
    "end\n"                                                                                        \
    "function q_settle()\n"                                                                        \
    "  if QEXIT and redis.call('ZCARD', QR) == 0 and redis.call('ZCARD', QL) == 0 then\n"          \
    "    QIDX = -q_now()\n"                                                                        \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "function q_forget(id)\n"                                                                      \
    "  redis.call('ZREM', QR, id) redis.call('ZREM', QL, id) redis.call('ZREM', QE, id)\n"         \
    "  QEXIT = true\n"                                                                             \
    "end\n"                                                                                        \
    "function q_finish(id, state, now)\n"                                                          \
    "  local k = q_key(id)\n"                                                                      \
    "  q_forget(id)\n"                                                                             \
    "  local d = q_hmget(k, 'dedup')[1]\n"                                                         \
    "  if d and redis.call('HGET', QD, d) == id then redis.call('HDEL', QD, d) end\n"              \
    "  redis.call('HSET', k, 'state', state, 'updated_at_ms', sb_num(now),\n"                      \
    "    'lease_until_ms', '0')\n"                                                                 \
    "  redis.call('PEXPIRE', k, QRETAIN)\n"                                                        \
    "end\n"                                                                                        \
    "function q_dead(id, why, now)\n"                                                              \
    "  local k = q_key(id)\n"                                                                      \
    "  q_finish(id, 'dead', now)\n"                                                                \
    "  redis.call('HSET', k, 'dead_reason', why)\n"                                                \
    "  local f = q_hmget(k, 'message_id', 'task_id', 'source', 'kind', 'reason',\n"                \
    "    'delivery_count', 'enqueued_at_ms')\n"                                                    \
    "  redis.call('LPUSH', QX, '{\"id\":' .. cjson.encode(id) .. ',\"message_id\":' ..\n"          \
    "    cjson.encode(f[1] or '') .. ',\"task_id\":' .. cjson.encode(f[2] or '') ..\n"             \
    "    ',\"source\":' .. cjson.encode(f[3] or '') .. ',\"kind\":' ..\n"                          \
    "    cjson.encode(f[4] or '') .. ',\"reason\":' .. cjson.encode(f[5] or '') ..\n"              \
    "    ',\"dead_reason\":\"' .. why .. '\",\"delivery_count\":' .. (f[6] or '0') ..\n"           \
    "    ',\"enqueued_at_ms\":' .. (f[7] or '0') .. ',\"dead_at_ms\":' .. sb_num(now) ..\n"        \
    "    '}')\n"                                                                                   \
    "  redis.call('LTRIM', QX, 0, " STR(SB_QUEUE_DEAD_MAX) " - 1)\n"                               \
    "  redis.call('PEXPIRE', QX, QRETAIN)\n"                                                       \
    "  redis.call('HINCRBY', QT, 'dead_' .. why, 1)\n"                                             \
    "  QDEAD[why] = QDEAD[why] + 1\n"                                                              \
    "  q_note(id, now, 'dead', 'dead letter: ' .. why)\n"                                          \
    "end\n"                                                                                        \
    "function q_requeue(id, seq, now)\n"                                                           \
    "  redis.call('ZREM', QL, id)\n"                                                               \
    "  redis.call('ZADD', QR, seq, id)\n"                                                          \
    "  redis.call('HSET', q_key(id), 'state', 'queued', 'lease_until_ms', '0',\n"                  \
    "    'updated_at_ms', sb_num(now))\n"                                                          \
    "end\n"                                                                                        \
    "function q_expire(now)\n"                                                                     \
    "  for _, id in ipairs(redis.call('ZRANGEBYSCORE', QE, '-inf', sb_num(now),\n"                 \
    "      'LIMIT', '0', '100')) do\n"                                                             \
    "    if redis.call('EXISTS', q_key(id)) == 1 then q_dead(id, 'expired', now)\n"                \
    "    else q_forget(id) end\n"                                                                  \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "function q_maintain(now)\n"                                                                   \
    "  q_expire(now)\n"                                                                            \
    "  for _, id in ipairs(redis.call('ZRANGEBYSCORE', QL, '-inf', sb_num(now),\n"                 \
    "      'LIMIT', '0', '100')) do\n"                                                             \
    "    local f = redis.call('HMGET', q_key(id), 'delivery_count', 'seq')\n"                      \
    "    if not f[2] then q_forget(id)\n"                                                          \
    "    elseif tonumber(f[1] or '0') >= QMAXDEL then q_dead(id, 'max_deliveries', now)\n"         \
    "    else\n"                                                                                   \
    "      q_requeue(id, f[2], now)\n"                                                             \
    "      q_note(id, now, 'lease_ended', 'the lease ended without an ack; queued again')\n"       \
    "      redis.call('HINCRBY', QT, 'redelivered', 1)\n"                                          \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  q_settle()\n"                                                                               \
    "end\n"                                                                                        \
    "end\n"

#define Q_PRELUDE Q_PRELUDE_LAZY "q_lib()\n"
// clang-format on

/* Sends |script| (Q_PRELUDE first) with the standard KEYS and ARGV head of |ws| followed
 * by |n| |extra| arguments; |cb| gets the raw reply (NULL when the connection was lost)
 * after the dead letters it made were counted. Returns SB_OK or SB_ERR_UNAVAILABLE
 * (|cb| never runs). */
int sb_queue_int_run(sb_redis *r, const sb_queue_opts *o, const char *script, const char *ws,
                     const char *const *extra, int n, sb_redis_reply_fn cb, void *arg);

/* sb_queue_int_run with |lib| (sync.h sb_sync_eval_lib: functions the script calls; NULL:
 * none) and |nxkeys| more keys |xkeys| after the standard seven. */
int sb_queue_int_run_lib(sb_redis *r, const sb_queue_opts *o, const char *lib, const char *script,
                         const char *ws, const char *const *xkeys, int nxkeys,
                         const char *const *extra, int n, sb_redis_reply_fn cb, void *arg);

/* Counts the dead letters a script reply reports in the metrics, and applies the queue
 * index update it owes (its last integer: see Q_PRELUDE) on |r|. */
void sb_queue_int_count_dead(const redisReply *rep);
void sb_queue_int_update_index(sb_redis *r, const char *ws, const redisReply *rep);

/* The packed head of a message (the H_ order) from its first H_ENQUEUED_AT fields |v|
 * (NULL is ''), without enqueued_at_ms, which the append script adds: a new string the
 * caller frees, its length in *|len|. */
char *sb_queue_int_head(const char *const *v, size_t *len);

/* A message's field in sb:{ws}:q:dedup: |source| + '\n' + |message_id|, a new
 * NUL-terminated heap string (sb_free). */
char *sb_queue_int_dedup_field(const char *source, const char *message_id);

/* Fills |rec| from a fields array (F_COUNT elements: either layout, see Q_FIELDS) or a
 * layout-3 {head, request} pair (the other fields absent); SB_ERR when it is neither. */
int sb_queue_int_parse_record(const redisReply *a, sb_queue_record *rec);
/* Reads a {code, fields, ...} reply (5 elements) into |rec| (zeroed first; the caller
 * clears it) and *|code|. Returns SB_OK (fields parsed; *|code| says which outcome),
 * SB_ERR_NOTFOUND (code -1 and |minus_one_absent|), SB_ERR_UNAVAILABLE (no reply) or
 * SB_ERR (malformed). */
int sb_queue_int_record_reply(const redisReply *rep, int minus_one_absent, sb_queue_record *rec,
                              long long *code);

#endif
