/*
 * queue_append.c — the queue append (queue.h sb_queue_append), batched per workspace per
 * loop turn: the appends a worker thread asks for during one turn of its event loop are
 * sent at the end of that turn, one script call per workspace (and per after hook) for
 * all of them, in the order they were asked for. Each caller is answered from its own
 * element of the script's reply, exactly as if its append had been a call of its own.
 *
 * Why: the append is the poll path's whole Redis cost, and most of that cost is fixed per
 * script call and per redis.call inside it (argument objects, command lookup, the reply
 * turned back into Lua), not per byte. A batch of k messages shares the clock, the
 * sequence (one INCRBY), the dedup read (one HMGET) and write (one HSET), the ready and
 * expiry sets (one ZADD each), the stats, the wake-up and the caller's after hook (a
 * queued fallback's counters, folded by record.c) and the record links (one HSET into the
 * hour's link bucket); what is left per message is its hash (HSET of six fields, its
 * unchanging ones packed into one, and PEXPIRE). Under load batches
 * grow by themselves — requests keep arriving while Redis works, and a workspace has at
 * most INFLIGHT_MAX batches unanswered on a connection: a batch made while that many are
 * out waits for an answer, growing meanwhile (group commit); a batch that reaches SEND_AT
 * messages goes at once, so Redis works on it while the thread reads the rest of the turn
 * — and at light load a batch of one costs what a single append did. There is no timer: the flush
 * is an event made active during the turn (like log.c's lines), so it runs after the turn's other
 * callbacks and adds no latency; the command is written when the loop next polls, as any
 * other.
 *
 * State: a thread-local list of open batches (one per workspace, hook and hook keys;
 * full ones are closed and a new one opened, so order within a workspace holds), the
 * count of batches in flight per connection and workspace, and the flush event, made when
 * a batch waits (an append, or an answer that frees a held batch) and freed when it ran.
 * A batch owns copies of every string it sends, and is freed by its answer.
 *
 * Never: answer a caller from another caller's element, send a batch that mixes
 * workspaces (one hash slot per script), or run a callback from inside sb_queue_append.
 */
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/queue.h"
#include "switchboard/redis.h"
#include "switchboard/strmap.h"
#include "switchboard/util.h"

#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

/* ARGV 5: n, the number of messages; 6: np, the number of profiles; then np profiles of
 * 3 (what messages of one loop turn mostly share): ttl ms, source, attempts; then n
 * messages of 5: the entry's hex (id "q_" + hex), message id, its packed head without
 * enqueued_at_ms (queue_int.h, the H_ enum: every unchanging field), request, and its
 * profile's number (1..np); then
 * the after hook's arguments (KEYS 8.. are its keys). Returns {{per message: 0 when it
 * was queued (its fields are the caller's, queued at now), or {1, fields} of the copy it
 * duplicates}, now}.
 *
 * First every message's dedup field ("source\nmessageId") is read (one HMGET): a message
 * whose field names an entry — or an earlier message of the same batch — is a duplicate
 * when that copy is queued or leased (found in Redis: after the whole maintenance, once
 * per batch, so a copy that expired or ran out of deliveries is dead first and never
 * answers for the new one; found in the batch: the copy was just queued). Every other
 * message is new: one INCRBY takes their sequences, each SWEEP_EVERY-th sequence crossed
 * sweeps expired messages into dead letters (q_lib, made only then), and each message
 * gets its hash (six fields: the head with now added, request, state, seq, expiry and
 * attempts — and attempts_n 1 when the attempts hold the failed push's one attempt; what
 * is absent is 0 or the enqueue time) and its expiry, in order; then one
 * HMGET and one HSET put their record links into the hour's link bucket (a messageId that
 * another sender holds there goes to that messageId's record hash instead), one HSET
 * claims their dedup fields and one ZADD each fills the ready and expiry sets. A bucket
 * is listed in qbx with the end of its records, and its own expiry is an hour later: the
 * first append that opens a new bucket UNLINKs the ones that ended (freed off Redis' main
 * thread — an hour of links can be millions of fields), the expiry is for a workspace that
 * never appends again. The queue index is owed
 * an update only when the queue was empty (the expiry set holds every queued and leased
 * message), and the wake-up (PUBLISH sb:notify) is sent only when the ready set was empty
 * before the batch: a waiter waits only after a lease found the ready set empty, and the
 * first message to enter an empty set after that publishes (docs/queue.md, Long-poll).
 * Numbers go to Redis as strings made once per batch (and per profile). */
#define SWEEP_EVERY 16
#define PW 3 /* arguments per profile */
#define MW 5 /* arguments per message */
// clang-format off
static const char append_lua[] = Q_PRELUDE_LAZY
    "local now = q_now()\n"
    "local n, np = tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local PW, MW, mb = " STR(PW) ", " STR(MW) ", 6 + np * " STR(PW) "\n"
    "local ready0 = redis.call('ZCARD', QR)\n"
    "local PB = {}\n"
    "for j = 1, np do PB[tostring(j)] = 6 + (j - 1) * PW end\n"
    "local dfs, pbs = {}, {}\n"
    "for i = 1, n do\n"
    "  local b = mb + (i - 1) * MW\n"
    "  local pb = PB[ARGV[b + 5]]\n"
    "  pbs[i] = pb\n"
    "  dfs[i] = ARGV[pb + 2] .. '\\n' .. ARGV[b + 2]\n"
    "end\n"
    "local prior = redis.call('HMGET', QD, unpack(dfs))\n"
    "local res, seen, new, dups, maintained = {}, {}, {}, 0, false\n"
    "for i = 1, n do\n"
    "  local d = dfs[i]\n"
    "  local s = seen[d]\n"
    "  if s then\n"
    "    res[i] = s\n"
    "    dups = dups + 1\n"
    "  else\n"
    "    local p = prior[i]\n"
    "    if p then\n"
    "      if not maintained then q_lib() q_maintain(now) maintained = true end\n"
    "      local st = redis.call('HGET', q_key(p), 'state')\n"
    "      if st == 'queued' or st == 'leased' then\n"
    "        res[i] = {1, q_fields(p, false)}\n"
    "        seen[d] = res[i]\n"
    "        dups = dups + 1\n"
    "      end\n"
    "    end\n"
    "    if not res[i] then new[#new + 1] = i seen[d] = i end\n"
    "  end\n"
    "end\n"
    "local snow = sb_num(now)\n"
    "local sfx = #snow .. ':' .. snow\n"
    "local m = #new\n"
    "if m > 0 then\n"
    "  local top = redis.call('INCRBY', QS, m)\n"
    "  local s0 = top - m\n"
    "  for _ = math.floor(s0 / " STR(SWEEP_EVERY) ") + 1, math.floor(top / " STR(SWEEP_EVERY) ") do\n"
    "    q_lib() q_expire(now)\n"
    "  end\n"
    "  local claims, zr, ze, lpb, life, slife, sexp, att, attn = {}, {}, {}\n"
    /* an integer's digits: tostring formats a Lua number as a double ('%.14g'), ~0.3 µs
     * more per queued message in Redis 7.0's Lua */
    "  local fmt = string.format\n"
    "  local P = 'sb:{' .. QWS .. '}:'\n"
    "  local bucket = math.floor(now / " STR(SB_QUEUE_LINK_BUCKET_MS) ")\n"
    "  local B, mids = P .. 'qb:' .. bucket, {}\n"
    "  for c = 1, m do mids[c] = ARGV[mb + (new[c] - 1) * " STR(MW) " + 2] end\n"
    "  local have, owner, put, maxlife = redis.call('HMGET', B, unpack(mids)), {}, {}, 0\n"
    "  for c = 1, m do\n"
    "    local i = new[c]\n"
    "    local b, pb = mb + (i - 1) * MW, pbs[i]\n"
    "    local hex, mid, seq = ARGV[b + 1], ARGV[b + 2], fmt('%d', s0 + c)\n"
    "    local id = 'q_' .. hex\n"
    "    if pb ~= lpb then\n"
    "      lpb = pb\n"
    "      life = tonumber(ARGV[pb + 1]) + QRETAIN\n"
    "      slife, sexp = sb_num(life), sb_num(now + tonumber(ARGV[pb + 1]))\n"
    "      att = ARGV[pb + 3]\n"
    "      -- the failed push's attempt is counted, so the cap keeps 50 in all\n"
    "      attn = att == '[]' and {} or {'attempts_n', '1'}\n"
    "    end\n"
    "    claims[2 * c - 1], claims[2 * c] = dfs[i], id\n"
    "    zr[2 * c - 1], zr[2 * c] = seq, id\n"
    "    ze[2 * c - 1], ze[2 * c] = sexp, id\n"
    "    local k = QM .. id\n"
    "    redis.call('HSET', k, 'h', ARGV[b + 3] .. sfx, 'request', ARGV[b + 4], 'state',\n"
    "      'queued', 'seq', seq, 'expires_at_ms', sexp, 'attempts', att, unpack(attn))\n"
    "    redis.call('PEXPIRE', k, slife)\n"
    "    local src = ARGV[pb + 2]\n"
    "    local held = owner[mid]\n"
    "    if held == nil and have[c] then held = string.match(have[c], '^[^\\n]*') end\n"
    "    if held == nil or held == src then\n"
    "      owner[mid] = src\n"
    "      put[#put + 1] = mid put[#put + 1] = src .. '\\n' .. id\n"
    "      if life > maxlife then maxlife = life end\n"
    "    else -- another sender's message holds the messageId in this bucket\n"
    "      local rk = P .. 'dr:' .. mid\n"
    "      redis.call('HSET', rk, src, id)\n"
    "      if redis.call('PEXPIRE', rk, slife, 'NX') == 0 and redis.call('PTTL', rk) < life then\n"
    "        redis.call('PEXPIRE', rk, slife)\n"
    "      end\n"
    "    end\n"
    "    res[i] = 0\n"
    "  end\n"
    "  if #put > 0 then\n"
    "    redis.call('HSET', B, unpack(put))\n"
    "    local u = (bucket + 1) * " STR(SB_QUEUE_LINK_BUCKET_MS) " + maxlife\n"
    "    local su, sx = sb_num(u), sb_num(u + " STR(SB_QUEUE_LINK_BUCKET_MS) ")\n"
    "    if redis.call('PEXPIREAT', B, sx, 'NX') == 1 or\n"
    "        redis.call('PEXPIREAT', B, sx, 'GT') == 1 then\n"
    "      local X = P .. 'qbx'\n"
    "      redis.call('ZADD', X, su, bucket)\n"
    "      for _, o in ipairs(redis.call('ZRANGEBYSCORE', X, '-inf', '(' .. snow)) do\n"
    "        redis.call('UNLINK', P .. 'qb:' .. o) -- freed off the main thread\n"
    "      end\n"
    "      redis.call('ZREMRANGEBYSCORE', X, '-inf', '(' .. snow)\n"
    "      if redis.call('PEXPIREAT', X, sx, 'NX') == 0 then\n"
    "        redis.call('PEXPIREAT', X, sx, 'GT')\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  redis.call('HSET', QD, unpack(claims))\n"
    "  redis.call('ZADD', QR, unpack(zr))\n"
    "  redis.call('ZADD', QE, unpack(ze))\n"
    "  if redis.call('ZCARD', QE) == m then QIDX = now end\n"
    "  redis.call('HINCRBY', QT, 'enqueued', tostring(m))\n"
    "  if ready0 == 0 then redis.call('PUBLISH', '" SB_QUEUE_NOTIFY_CHANNEL "', QWS) end\n"
    "end\n"
    "if dups > 0 then\n"
    "  redis.call('HINCRBY', QT, 'duplicates', tostring(dups))\n"
    "end\n"
    "local k, a = {}, {}\n"
    "for i = 8, #KEYS do k[#k + 1] = KEYS[i] end\n"
    "for i = mb + n * MW + 1, #ARGV do a[#a + 1] = ARGV[i] end\n"
    "sb_queue_after(k, a)\n"
    "return q_ret({res, snow})\n";
// clang-format on

/* The append's after hook when its caller has none. */
static const char no_after_lua[] = "local function sb_queue_after(KEYS, ARGV) end\n";

/* Messages per script call: past it a batch is closed and the next one opened. Bounds the
 * script's run (Redis serves nobody else meanwhile) and the reply's size. */
#define BATCH_MAX 64

/* A message's arguments: its own and its profile's (PW of them), as append_lua takes
 * them, then the rest of what its caller is answered from. */
enum {
    A_HEX,
    A_MID,
    A_HEAD,
    A_REQUEST,
    A_TTL, /* the profile from here */
    A_SOURCE,
    A_ATTEMPTS,
    A_SENT, /* not sent from here */
    A_CTX = A_SENT,
    A_KIND,
    A_METHOD,
    A_VERSION,
    A_REASON,
    A_DETAIL,
    A_ATTEMPTED,
    A_A2A_VERSION,
    A_USER,
    A_COUNT
};
_Static_assert(A_SENT - A_TTL == PW, "profile width");

typedef struct pending {
    sb_queue_record_fn cb;
    void *arg;
    sb_a2a_version version;
    sb_reason reason;
    int attempted;
    int64_t ttl_ms;
    const char *a[A_COUNT];                /* into |text| */
    const char *after[SB_QUEUE_AFTER_MAX]; /* the hook's arguments (not keys), likewise */
    int nafter;
    char text[];
} pending;

typedef struct batch {
    struct batch *next;
    sb_redis *r;
    sb_queue_opts o;
    const char *after_lua;
    void (*before_send)(sb_redis *r);
    char **after_keys; /* owned */
    int nkeys;
    size_t n;
    pending *msg[BATCH_MAX];
    char ws[SB_WS_ID_MAX + 1];
} batch;

static __thread struct {
    batch *head, *tail;
    struct event *flush; /* active while batches wait; freed when it ran */
    sb_strmap *inflight; /* "<connection>/<ws>" → batches sent, not answered yet */
} open_batches;

/* Batches of one workspace in flight on one connection at most: a batch made while that
 * many are unanswered waits for an answer (and grows meanwhile), so Redis always has the
 * next batch but never a stream of small ones while it is busy (3 measured ~5% more
 * requests/s than 2 on the 2-core machine, at the same Redis cost per message). */
#define INFLIGHT_MAX 3

/* Messages at which a batch is sent at once rather than at the end of the turn. */
#define SEND_AT 16

/* "<connection's address in decimal>/<ws>", without printf (a few per batch). */
static void inflight_key(const batch *b, char *key, size_t n)
{
    char conn[24];
    sb_fmt_ll(conn, (long long)(uintptr_t)b->r);
    sb_concat3(key, n, conn, "/", b->ws);
}

static intptr_t inflight_of(const batch *b)
{
    char key[SB_WS_ID_MAX + 32];
    inflight_key(b, key, sizeof(key));
    return open_batches.inflight != NULL ? (intptr_t)sb_strmap_get(open_batches.inflight, key) : 0;
}

static void inflight_add(const batch *b, intptr_t d)
{
    char key[SB_WS_ID_MAX + 32];
    inflight_key(b, key, sizeof(key));
    if (open_batches.inflight == NULL)
        open_batches.inflight = sb_strmap_new();
    intptr_t n = (intptr_t)sb_strmap_get(open_batches.inflight, key) + d;
    if (n > 0) {
        sb_strmap_put(open_batches.inflight, key, (void *)n);
    } else {
        sb_strmap_remove(open_batches.inflight, key);
        if (sb_strmap_count(open_batches.inflight) == 0) {
            sb_strmap_free(open_batches.inflight);
            open_batches.inflight = NULL;
        }
    }
}

static void arm_flush(sb_redis *r);

static int same_hook(const batch *b, const sb_queue_msg *m)
{
    int nkeys = m->after_lua != NULL ? m->after_nkeys : 0;
    if (b->after_lua != m->after_lua || b->nkeys != nkeys || b->before_send != m->before_send)
        return 0;
    for (int i = 0; i < nkeys; i++)
        if (strcmp(b->after_keys[i], m->after_argv[i]) != 0)
            return 0;
    return 1;
}

/* The open batch |m| joins: the workspace's last one when it has room and the same hook
 * and connection; else a new one at the tail. */
static batch *batch_for(sb_redis *r, const sb_queue_opts *o, const sb_queue_msg *m)
{
    batch *last = NULL;
    for (batch *b = open_batches.head; b != NULL; b = b->next)
        if (b->r == r && strcmp(b->ws, m->ws) == 0)
            last = b;
    if (last != NULL && last->n < BATCH_MAX && same_hook(last, m) &&
        last->o.max_deliveries == o->max_deliveries && last->o.retain_ms == o->retain_ms)
        return last;
    batch *b = sb_calloc(1, sizeof(*b));
    b->r = r;
    b->o = *o;
    b->after_lua = m->after_lua;
    b->before_send = m->before_send;
    b->nkeys = m->after_lua != NULL ? m->after_nkeys : 0;
    if (b->nkeys > 0) {
        b->after_keys = sb_calloc((size_t)b->nkeys, sizeof(char *));
        for (int i = 0; i < b->nkeys; i++)
            b->after_keys[i] = sb_strdup(m->after_argv[i]);
    }
    snprintf(b->ws, sizeof(b->ws), "%s", m->ws);
    if (open_batches.tail != NULL)
        open_batches.tail->next = b;
    else
        open_batches.head = b;
    open_batches.tail = b;
    return b;
}

static void batch_free(batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        sb_free(b->msg[i]);
    for (int i = 0; i < b->nkeys; i++)
        sb_free(b->after_keys[i]);
    sb_free(b->after_keys);
    sb_free(b);
}

/* |prefix| then |hex| into |out| (|cap| bytes), cut like snprintf; without printf, as
 * this runs once per queued message. */
static void id_of(char *out, size_t cap, const char *prefix, const char *hex)
{
    size_t n = sb_copy_str(out, cap, prefix);
    sb_copy_str(out + n, cap - n, hex);
}

/* A pending message: its arguments and its hook arguments, copied into one allocation
 * (the request up to its first NUL, as hiredis sends C strings). */
static pending *pending_new(const sb_queue_msg *m, sb_queue_record_fn cb, void *arg)
{
    char hex[SB_QUEUE_ID_HEX + 1], ttl[24];
    sb_random_id("", SB_QUEUE_ID_HEX / 2, hex, sizeof(hex));
    int64_t ttl_ms = m->ttl_ms > 0 ? m->ttl_ms : 1;
    sb_fmt_ll(ttl, ttl_ms);
    const char *v[A_COUNT] = {
        [A_HEX] = hex,
        [A_MID] = m->message_id,
        [A_CTX] = m->context_id ? m->context_id : "",
        [A_REQUEST] = m->request != NULL ? m->request : "",
        [A_TTL] = ttl,
        [A_KIND] = m->kind,
        [A_SOURCE] = m->source,
        [A_METHOD] = m->method ? m->method : "",
        [A_VERSION] = m->version == SB_A2A_V10 ? "v10" : "v03",
        [A_REASON] = sb_reason_name(m->reason),
        [A_DETAIL] = m->detail ? m->detail : "",
        [A_ATTEMPTED] = m->attempted ? "1" : "0",
        [A_A2A_VERSION] = m->a2a_version ? m->a2a_version : "",
        [A_USER] = m->user ? m->user : "",
        [A_ATTEMPTS] = m->attempts ? m->attempts : "[]",
    };
    /* the head: what the message keeps for good, one field in Redis (queue_int.h) */
    char id[32], task_id[48], context_id[48];
    id_of(id, sizeof(id), SB_QUEUE_ID_PREFIX, hex);
    id_of(task_id, sizeof(task_id), SB_QUEUE_TASK_PREFIX, hex);
    id_of(context_id, sizeof(context_id), SB_QUEUE_CONTEXT_PREFIX, hex);
    size_t hlen;
    char *dedup = sb_queue_int_dedup_field(v[A_SOURCE], v[A_MID]);
    const char *hv[H_ENQUEUED_AT] = {
        [H_DEDUP] = dedup,
        [H_ID] = id,
        [H_TASK_ID] = task_id,
        [H_MESSAGE_ID] = v[A_MID],
        [H_CONTEXT_ID] = v[A_CTX][0] != '\0' ? v[A_CTX] : context_id,
        [H_KIND] = v[A_KIND],
        [H_SOURCE] = v[A_SOURCE],
        [H_METHOD] = v[A_METHOD],
        [H_VERSION] = v[A_VERSION],
        [H_REASON] = v[A_REASON],
        [H_DETAIL] = v[A_DETAIL],
        [H_ATTEMPTED] = v[A_ATTEMPTED],
        [H_A2A_VERSION] = v[A_A2A_VERSION],
        [H_USER] = v[A_USER],
    };
    char *head = sb_queue_int_head(hv, &hlen);
    sb_free(dedup);
    v[A_HEAD] = head;
    int nafter = m->after_lua != NULL ? m->after_nargs : 0;
    if (nafter > SB_QUEUE_AFTER_MAX)
        nafter = SB_QUEUE_AFTER_MAX;
    const char *const *after = m->after_lua != NULL ? m->after_argv + m->after_nkeys : NULL;
    size_t len[A_COUNT], total = 0, alen[SB_QUEUE_AFTER_MAX];
    for (int i = 0; i < A_COUNT; i++)
        total += (len[i] = i == A_REQUEST ? strnlen(v[i], m->request_len) : strlen(v[i])) + 1;
    for (int i = 0; i < nafter; i++)
        total += (alen[i] = strlen(after[i])) + 1;
    pending *p = sb_malloc(sizeof(*p) + total);
    p->cb = cb;
    p->arg = arg;
    p->version = m->version;
    p->reason = m->reason;
    p->attempted = m->attempted != 0;
    p->ttl_ms = ttl_ms;
    p->nafter = nafter;
    char *t = p->text;
    for (int i = 0; i < A_COUNT; i++) {
        p->a[i] = t;
        memcpy(t, v[i], len[i]);
        t[len[i]] = '\0';
        t += len[i] + 1;
    }
    sb_free(head);
    for (int i = 0; i < nafter; i++) {
        p->after[i] = t;
        memcpy(t, after[i], alen[i] + 1);
        t += alen[i] + 1;
    }
    return p;
}

static void answer_all(batch *b, int err)
{
    for (size_t i = 0; i < b->n; i++)
        b->msg[i]->cb(err, NULL, b->msg[i]->arg);
}

static char *or_null(const char *s)
{
    return s[0] != '\0' ? (char *)(uintptr_t)s : NULL;
}

/* Answers |p| as queued at |now_ms| from its own arguments (borrowed strings: the record
 * is not cleared). */
static void answer_queued(const pending *p, int64_t now_ms, int duplicate)
{
    char id[32], task_id[48], context_id[48];
    id_of(id, sizeof(id), SB_QUEUE_ID_PREFIX, p->a[A_HEX]);
    id_of(task_id, sizeof(task_id), SB_QUEUE_TASK_PREFIX, p->a[A_HEX]);
    id_of(context_id, sizeof(context_id), SB_QUEUE_CONTEXT_PREFIX, p->a[A_HEX]);
    sb_queue_record rec = {
        .id = id,
        .task_id = task_id,
        .message_id = or_null(p->a[A_MID]),
        .context_id = p->a[A_CTX][0] != '\0' ? or_null(p->a[A_CTX]) : context_id,
        .kind = or_null(p->a[A_KIND]),
        .source = or_null(p->a[A_SOURCE]),
        .method = or_null(p->a[A_METHOD]),
        .version = p->version,
        .state = SB_QSTATE_QUEUED,
        .reason = p->reason,
        .detail = or_null(p->a[A_DETAIL]),
        .attempted = p->attempted,
        .enqueued_at_ms = now_ms,
        .expires_at_ms = now_ms + p->ttl_ms,
        .updated_at_ms = now_ms,
        .a2a_version = or_null(p->a[A_A2A_VERSION]),
        .user = or_null(p->a[A_USER]),
        .attempts = or_null(p->a[A_ATTEMPTS]),
        .duplicate = duplicate,
    };
    p->cb(SB_OK, &rec, p->arg);
}

/* An answer (or the connection's end) for a batch of |b|'s workspace: a batch held back for
 * it goes at the end of this loop turn. */
static void batch_answered(const batch *b)
{
    inflight_add(b, -1);
    for (const batch *o = open_batches.head; o != NULL; o = o->next)
        if (o->r == b->r && strcmp(o->ws, b->ws) == 0) {
            arm_flush(b->r);
            break;
        }
}

static void on_batch_reply(redisReply *rep, void *arg)
{
    batch *b = arg;
    batch_answered(b);
    sb_queue_int_count_dead(rep);
    sb_queue_int_update_index(b->r, b->ws, rep);
    const redisReply *list = NULL;
    int64_t now_ms = 0;
    if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 5 &&
        rep->element[0]->type == REDIS_REPLY_ARRAY && rep->element[0]->elements == b->n &&
        rep->element[1]->type == REDIS_REPLY_STRING) {
        list = rep->element[0];
        now_ms = strtoll(rep->element[1]->str, NULL, 10);
    }
    if (list == NULL) {
        if (rep != NULL)
            sb_log(SB_LOG_ERROR, "queue_redis_error", "append %s: %s", b->ws,
                   rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        answer_all(b, rep == NULL ? SB_ERR_UNAVAILABLE : SB_ERR);
        batch_free(b);
        return;
    }
    for (size_t i = 0; i < b->n; i++) {
        const redisReply *e = list->element[i];
        const pending *p = b->msg[i];
        if (e->type == REDIS_REPLY_INTEGER && e->integer == 0) {
            answer_queued(p, now_ms, 0);
        } else if (e->type == REDIS_REPLY_INTEGER && e->integer >= 1 && (size_t)e->integer <= i) {
            /* a copy of the batch's message e->integer (1-based), which was queued */
            const pending *first = b->msg[e->integer - 1];
            pending dup = *first;
            dup.cb = p->cb;
            dup.arg = p->arg;
            answer_queued(&dup, now_ms, 1);
        } else {
            sb_queue_record rec;
            memset(&rec, 0, sizeof(rec));
            if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
                sb_queue_int_parse_record(e->element[1], &rec) == SB_OK) {
                rec.duplicate = 1;
                p->cb(SB_OK, &rec, p->arg);
            } else {
                sb_log(SB_LOG_ERROR, "queue_redis_error", "append %s: unexpected reply element",
                       b->ws);
                p->cb(SB_ERR, NULL, p->arg);
            }
            sb_queue_record_clear(&rec);
        }
    }
    batch_free(b);
}

static int same_strings(const char *const *x, const char *const *y, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(x[i], y[i]) != 0)
            return 0;
    return 1;
}

/* Sends |b| (one script call), which its reply then frees and whose callers it answers.
 * SB_OK, or SB_ERR_UNAVAILABLE (the connection is down) with |b| untouched. A message
 * shares the last profile sent when its profile is the same; its hook arguments go as
 * "1" and the last one when only that differs from the previous message's (queue.h). */
static int batch_send(batch *b)
{
    if (b->before_send != NULL)
        b->before_send(b->r);
    size_t cap = 2 + b->n * (PW + MW + 1 + SB_QUEUE_AFTER_MAX);
    const char **args = sb_calloc(cap, sizeof(*args));
    char count[24], nprof[24], pnum[BATCH_MAX][24], hcount[BATCH_MAX][24];
    sb_fmt_ll(count, (long long)b->n);
    size_t k = 0;
    args[k++] = count;
    args[k++] = nprof;
    int np = 0;
    const pending *lastp = NULL;
    for (size_t i = 0; i < b->n; i++) {
        const pending *p = b->msg[i];
        if (lastp == NULL || !same_strings(p->a + A_TTL, lastp->a + A_TTL, PW)) {
            for (int f = A_TTL; f < A_SENT; f++)
                args[k++] = p->a[f];
            np++;
            lastp = p;
        }
        sb_fmt_ll(pnum[i], np);
    }
    sb_fmt_ll(nprof, np);
    for (size_t i = 0; i < b->n; i++) {
        for (int f = A_HEX; f < A_TTL; f++)
            args[k++] = b->msg[i]->a[f];
        args[k++] = pnum[i];
    }
    for (size_t i = 0; i < b->n; i++) {
        const pending *p = b->msg[i], *q = i > 0 ? b->msg[i - 1] : NULL;
        if (p->nafter == 0)
            continue;
        if (q != NULL && q->nafter == p->nafter &&
            same_strings(p->after, q->after, p->nafter - 1)) {
            args[k++] = "1";
        } else {
            sb_fmt_ll(hcount[i], p->nafter);
            args[k++] = hcount[i];
            for (int f = 0; f < p->nafter - 1; f++)
                args[k++] = p->after[f];
        }
        args[k++] = p->after[p->nafter - 1];
    }
    int rc = sb_queue_int_run_lib(b->r, &b->o, b->after_lua != NULL ? b->after_lua : no_after_lua,
                                  append_lua, b->ws, (const char *const *)b->after_keys, b->nkeys,
                                  args, (int)k, on_batch_reply, b);
    sb_free(args);
    if (rc == SB_OK)
        inflight_add(b, 1);
    return rc;
}

/* Sends the open batches of this thread, oldest first: all of them when |all|, else those
 * whose workspace has fewer than INFLIGHT_MAX batches unanswered (the others stay open,
 * in order, and go when an answer comes: batch_answered). */
static void flush_open(int all)
{
    batch **pp = &open_batches.head, *last = NULL;
    while (*pp != NULL) {
        batch *b = *pp;
        if (!all && inflight_of(b) >= INFLIGHT_MAX) {
            last = b;
            pp = &b->next;
            continue;
        }
        *pp = b->next;
        if (batch_send(b) != SB_OK) {
            answer_all(b, SB_ERR_UNAVAILABLE);
            batch_free(b);
        }
    }
    open_batches.tail = last;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_free(open_batches.flush);
    open_batches.flush = NULL;
    flush_open(0);
}

static void arm_flush(sb_redis *r)
{
    if (open_batches.flush == NULL) {
        open_batches.flush = sb_event_new(sb_redis_base(r), -1, 0, on_flush, NULL);
        event_active(open_batches.flush, 0, 1); /* runs after this turn's other callbacks */
    }
}

/* A batch that reached SEND_AT goes before the turn ends — Redis works on it while this
 * thread reads the turn's other requests — when its workspace has room in flight and no
 * older batch open (order). Not sent (connection down): it stays open for the flush. */
static void send_early(batch *b)
{
    if (inflight_of(b) >= INFLIGHT_MAX)
        return;
    batch **pp = &open_batches.head, *prev = NULL;
    while (*pp != b) {
        if ((*pp)->r == b->r && strcmp((*pp)->ws, b->ws) == 0)
            return; /* an older batch of the workspace waits */
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = b->next;
    if (open_batches.tail == b)
        open_batches.tail = prev;
    batch *next = b->next;
    b->next = NULL;
    if (batch_send(b) != SB_OK) {
        b->next = next;
        *pp = b;
        if (next == NULL)
            open_batches.tail = b;
    }
}

int sb_queue_append(sb_redis *r, const sb_queue_opts *o, const sb_queue_msg *m,
                    sb_queue_record_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    arm_flush(r);
    batch *b = batch_for(r, o, m);
    b->msg[b->n++] = pending_new(m, cb, arg);
    if (b->n >= SEND_AT)
        send_early(b);
    return SB_OK;
}

void sb_queue_append_flush(void)
{
    if (open_batches.flush != NULL) {
        event_free(open_batches.flush);
        open_batches.flush = NULL;
    }
    flush_open(1);
    if (open_batches.inflight != NULL) { /* their answers come after the loop, if at all */
        sb_strmap_free(open_batches.inflight);
        open_batches.inflight = NULL;
    }
}
