/*
 * record.c — the delivery counters, pushed messages' records, the reads behind the
 * delivery views, and the queue gauges (see record.h; keys in proto/redis-schema.md).
 *
 * Writes are one Lua script (note_lua) sent after the caller was answered; nobody waits
 * for its reply but a logger. Reads share one Lua function (d_queue) that gathers a
 * workspace's queue facts and counters, so the workspace view, the overview and the
 * gauges count the same way. Every read is bounded: one workspace, at most
 * SB_RECORD_OVERVIEW_MAX, or at most 5000 for the gauges.
 *
 * The queue keys read here (sb:{ws}:q:ready, :q:leased, :q:dead, :msg:<id>) are the
 * ones queue.c writes; this module never changes them.
 *
 * Never: block, hold anything across a reply but its own small op, or store a secret.
 */
#include "switchboard/record.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/log.h"
#include "switchboard/metrics.h"
#include "switchboard/queue.h"
#include "switchboard/redis.h"
#include "switchboard/registry.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS: 1 sb:{ws}:dstats, 2 the record key (or the dstats key again: same slot).
 * ARGV: 1 ws, 2 at ms, 3 retain ms, 4 kind, 5 reason, 6 detail, 7 http status, 8 pushed,
 * 9 duration ms, 10 source, 11 record JSON or ''. Returns 1. For a fallback the caller
 * also sends fallbacks_lua: sb:{sb}:fallbacks lives on its own slot. */
static const char note_lua[] =
    "local S, R = KEYS[1], KEYS[2]\n"
    "local kind, reason, status = ARGV[4], ARGV[5], ARGV[7]\n"
    "local now = tonumber(ARGV[2])\n"
    "if kind == 'registered' then\n"
    "  redis.call('HDEL', S, 'streak_reason', 'streak_count', 'streak_since_ms', 'fail_reason',\n"
    "    'fail_count', 'fail_since_ms', 'fail_status')\n"
    "  return 1\n"
    "end\n"
    "if ARGV[8] == '1' then\n"
    "  local outcome = 'delivered'\n"
    "  if kind ~= 'delivered' then outcome = reason end\n"
    "  redis.call('HSET', S, 'last_push_ms', ARGV[2], 'last_push_outcome', outcome,\n"
    "    'last_push_status', status, 'last_push_detail', ARGV[6], 'last_push_duration_ms',\n"
    "    ARGV[9])\n"
    "end\n"
    "if kind == 'delivered' then\n"
    "  redis.call('HINCRBY', S, 'pushes', 1)\n"
    "  redis.call('HSET', S, 'last_delivered_ms', ARGV[2])\n"
    "  redis.call('HDEL', S, 'streak_reason', 'streak_count', 'streak_since_ms', 'fail_reason',\n"
    "    'fail_count', 'fail_since_ms', 'fail_status')\n"
    "else\n"
    "  if ARGV[8] == '1' then\n"
    "    if redis.call('HGET', S, 'fail_reason') == reason then\n"
    "      redis.call('HINCRBY', S, 'fail_count', 1)\n"
    "    else\n"
    "      redis.call('HSET', S, 'fail_reason', reason, 'fail_count', 1, 'fail_since_ms', "
    "ARGV[2])\n"
    "    end\n"
    "    redis.call('HSET', S, 'fail_status', status)\n"
    "  end\n"
    "  if kind == 'fallback' then\n"
    "    redis.call('HINCRBY', S, 'fallbacks', 1)\n"
    "    redis.call('HINCRBY', S, 'fb_' .. reason, 1)\n"
    "    redis.call('HSETNX', S, 'first_fallback_ms', ARGV[2])\n"
    "    redis.call('HSET', S, 'last_fallback_ms', ARGV[2], 'last_reason', reason,\n"
    "      'last_detail', ARGV[6])\n"
    "    if redis.call('HGET', S, 'streak_reason') == reason then\n"
    "      redis.call('HINCRBY', S, 'streak_count', 1)\n"
    "    else\n"
    "      redis.call('HSET', S, 'streak_reason', reason, 'streak_count', 1,\n"
    "        'streak_since_ms', ARGV[2])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('PEXPIRE', S, ARGV[3])\n"
    "if ARGV[11] ~= '' then\n"
    "  redis.call('HSET', R, ARGV[10], ARGV[11])\n"
    "  if redis.call('PTTL', R) < tonumber(ARGV[3]) then redis.call('PEXPIRE', R, ARGV[3]) end\n"
    "end\n"
    "return 1\n";

/* KEYS: sb:{sb}:fallbacks. ARGV: 1 ws, 2 at ms, 3 the recent window ms, 4 the most members.
 * The global half of a fallback note: a separate command on the index's own slot. A crash
 * between the two halves leaves the workspace out of the "recent fallbacks" list of
 * GET /delivery until its next fallback; the counters themselves are in the first half. */
static const char fallbacks_lua[] =
    "local F, now = KEYS[1], tonumber(ARGV[2])\n"
    "redis.call('ZADD', F, now, ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', F, '-inf', now - tonumber(ARGV[3]))\n"
    "local n, cap = redis.call('ZCARD', F), tonumber(ARGV[4])\n"
    "if n > cap then redis.call('ZREMRANGEBYRANK', F, 0, n - cap - 1) end\n"
    "return 1\n";

/* d_queue(ws, full): {ws, depth, leased, dead letters, oldest enqueued ms, counters}. The
 * oldest message is the ready set's head (FIFO by sequence) or one of the first 20 leases. */
#define D_PRELUDE                                                                                  \
    "local function d_queue(ws, full)\n"                                                           \
    "  local p = 'sb:{' .. ws .. '}:'\n"                                                           \
    "  local ready = redis.call('ZCARD', p .. 'q:ready')\n"                                        \
    "  local leased = redis.call('ZCARD', p .. 'q:leased')\n"                                      \
    "  local oldest = 0\n"                                                                         \
    "  local cand = redis.call('ZRANGE', p .. 'q:ready', 0, 0)\n"                                  \
    "  for _, id in ipairs(redis.call('ZRANGE', p .. 'q:leased', 0, 19)) do\n"                     \
    "    cand[#cand + 1] = id\n"                                                                   \
    "  end\n"                                                                                      \
    "  for _, id in ipairs(cand) do\n"                                                             \
    "    local t = tonumber(redis.call('HGET', p .. 'msg:' .. id, 'enqueued_at_ms') or '0')\n"     \
    "    if t > 0 and (oldest == 0 or t < oldest) then oldest = t end\n"                           \
    "  end\n"                                                                                      \
    "  if not full then return {ready + leased, oldest} end\n"                                     \
    "  return {ws, ready + leased, leased, redis.call('LLEN', p .. 'q:dead'), oldest,\n"           \
    "    redis.call('HGETALL', p .. 'dstats'),\n"                                                  \
    "    redis.call('HMGET', p .. 'rd', 'next_at_ms', 'last_at_ms', 'last_outcome')}\n"            \
    "end\n"

/* KEYS: sb:{ws}:dstats (routes the script to the workspace's slot). ARGV: ws, '1' for the
 * full view. Returns {d_queue(ws)}. */
static const char one_lua[] = D_PRELUDE "return {d_queue(ARGV[1], ARGV[2] == '1')}\n";

/* KEYS: sb:{sb}:queues, sb:{sb}:fallbacks (one slot). ARGV: 1 now ms, 2 the recent window
 * ms (0: queues only), 3 the most workspaces. Returns the workspaces to look at: the most
 * recently active queues, then the recent fallbacks (duplicates possible; the caller drops
 * them). */
static const char index_lua[] =
    "local max = tonumber(ARGV[3])\n"
    "local out = redis.call('ZREVRANGE', KEYS[1], 0, max - 1)\n"
    "if tonumber(ARGV[2]) <= 0 then return out end\n"
    "local since = tonumber(ARGV[1]) - tonumber(ARGV[2])\n"
    "for _, ws in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[2], '+inf', since, 'LIMIT', 0,\n"
    "    max)) do out[#out + 1] = ws end\n"
    "return out\n";

/* ---- notes ---- */

static const char *const kind_names[] = {"delivered", "fallback", "failed", "registered"};

static void on_note_reply(redisReply *rep, void *arg)
{
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "record_note_failed", "delivery counters for %s not updated: %s",
               (const char *)arg, rep == NULL ? "Redis connection lost" : rep->str);
    sb_free(arg);
}

/* ---- notes held while Redis is away ----
 *
 * A note that cannot be sent (this worker's connection is down) is copied, arguments and
 * all, into a FIFO of the worker thread and sent in order as soon as the connection is
 * back (sb_record_redis_state), so a push delivered during an outage still gets its
 * record. The FIFO is bounded (SB_RECORD_BACKLOG_MAX notes per worker thread); past it
 * new notes are dropped, counted (switchboard_record_notes_dropped_total) and logged once
 * per outage. A note already sent when a connection drops is not sent again: Redis may
 * have applied it, and the counters it bumps are not idempotent. */

#define NOTE_ARGS 15

typedef struct held_note {
    struct held_note *next;
    char *args[NOTE_ARGS];
} held_note;

static __thread struct {
    held_note *head, *tail;
    size_t n;
    unsigned long dropped; /* since the last time the backlog emptied */
} backlog;

/* Sends sb:{sb}:fallbacks' update for |ws| at |at| (ms, text) unless this thread sent one
 * for |ws| within the last second (a small direct-mapped memory of workspaces; a
 * collision only costs an extra send). */
static void send_fallback_index(sb_redis *r, const char *ws, const char *at)
{
    static __thread struct {
        uint64_t hash;
        int64_t ms;
    } sent[256];
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = ws; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    int64_t now = strtoll(at, NULL, 10);
    size_t i = (size_t)(h % SB_ARRAY_LEN(sent));
    if (sent[i].hash == h && now >= sent[i].ms && now - sent[i].ms < 1000)
        return;
    char window[24], cap[16];
    snprintf(window, sizeof(window), "%d", SB_RECORD_RECENT_MS);
    snprintf(cap, sizeof(cap), "%d", SB_RECORD_FALLBACKS_MAX);
    const char *fargs[] = {SB_RECORD_FALLBACKS_KEY, ws, at, window, cap};
    if (sb_sync_eval(r, fallbacks_lua, 1, 5, fargs, NULL, NULL) == SB_OK) {
        sent[i].hash = h;
        sent[i].ms = now;
    }
}

void sb_record_note_fallback_index(sb_redis *r, const char *ws, int64_t at_ms)
{
    char at[24];
    snprintf(at, sizeof(at), "%lld", (long long)at_ms);
    if (sb_redis_is_up(r))
        send_fallback_index(r, ws, at);
}

/* |args|: the note script's 2 keys and 11 arguments, then the recent window and the cap
 * of sb:{sb}:fallbacks. The workspace half goes first; the global half (fallbacks only)
 * follows at once and is not retried: it only orders GET /delivery's "recent" list. */
static int send_note(sb_redis *r, const char *const *args)
{
    char *ws = sb_strdup(args[2]);
    if (sb_sync_eval(r, note_lua, 2, 13, args, on_note_reply, ws) != SB_OK) {
        sb_free(ws);
        return SB_ERR_UNAVAILABLE;
    }
    if (strcmp(args[5], "fallback") == 0)
        send_fallback_index(r, args[2], args[3]);
    return SB_OK;
}

static void hold_note(const char *const *args)
{
    if (backlog.n >= SB_RECORD_BACKLOG_MAX) {
        if (backlog.dropped++ == 0)
            sb_log(SB_LOG_WARN, "record_notes_dropped",
                   "Redis is unreachable and %d delivery notes are waiting on this worker: "
                   "further delivery records and counters are dropped until it is back",
                   SB_RECORD_BACKLOG_MAX);
        sb_metrics_record_note_deferred(1);
        return;
    }
    held_note *h = sb_calloc(1, sizeof(*h));
    for (int i = 0; i < NOTE_ARGS; i++)
        h->args[i] = sb_strdup(args[i]);
    if (backlog.tail != NULL)
        backlog.tail->next = h;
    else
        backlog.head = h;
    backlog.tail = h;
    backlog.n++;
    sb_metrics_record_note_deferred(0);
}

static void free_held(held_note *h)
{
    for (int i = 0; i < NOTE_ARGS; i++)
        sb_free(h->args[i]);
    sb_free(h);
}

/* Sends the held notes, oldest first, until one cannot be sent. */
static void flush_backlog(sb_redis *r)
{
    size_t sent = 0;
    while (backlog.head != NULL && sb_redis_is_up(r)) {
        held_note *h = backlog.head;
        if (send_note(r, (const char *const *)h->args) != SB_OK)
            break;
        backlog.head = h->next;
        if (backlog.head == NULL)
            backlog.tail = NULL;
        backlog.n--;
        free_held(h);
        sent++;
    }
    if (sent > 0 || (backlog.head == NULL && backlog.dropped > 0)) {
        sb_log(backlog.dropped > 0 ? SB_LOG_WARN : SB_LOG_INFO, "record_backlog_sent",
               "Redis is back: sent %zu delivery note(s) held during the outage; %lu dropped "
               "past the bound; %zu still waiting",
               sent, backlog.dropped, backlog.n);
    }
    if (backlog.head == NULL)
        backlog.dropped = 0;
}

void sb_record_redis_state(sb_redis *r, int up, void *arg)
{
    if (up)
        flush_backlog(r);
}

size_t sb_record_backlog_len(void)
{
    return backlog.n;
}

void sb_record_backlog_clear(void)
{
    if (backlog.n > 0)
        sb_log(SB_LOG_WARN, "record_backlog_lost",
               "stopping with %zu delivery note(s) never sent: Redis was unreachable", backlog.n);
    while (backlog.head != NULL) {
        held_note *h = backlog.head;
        backlog.head = h->next;
        free_held(h);
    }
    memset(&backlog, 0, sizeof(backlog));
}

static pthread_once_t g_after_once = PTHREAD_ONCE_INIT;
static char *g_after_lua;

static void make_after_lua(void)
{
    /* KEYS and ARGV as parameters shadow the script's own: the note text runs unchanged. */
    static const char open[] = "local function sb_queue_after(KEYS, ARGV)\n", close[] = "end\n";
    size_t n = strlen(open) + strlen(note_lua) + strlen(close) + 1;
    g_after_lua = sb_malloc(n);
    snprintf(g_after_lua, n, "%s%s%s", open, note_lua, close);
}

const char *sb_record_note_after_lua(void)
{
    pthread_once(&g_after_once, make_after_lua);
    return g_after_lua;
}

void sb_record_note_argv(const sb_record_note *n, sb_record_note_args *o)
{
    snprintf(o->skey, sizeof(o->skey), "sb:{%s}:dstats", n->ws);
    snprintf(o->at, sizeof(o->at), "%lld", (long long)n->at_ms);
    snprintf(o->retain, sizeof(o->retain), "%lld",
             (long long)(n->retain_ms > 0 ? n->retain_ms : 1));
    snprintf(o->status, sizeof(o->status), "%d", n->http_status);
    snprintf(o->dur, sizeof(o->dur), "%.3f", n->duration_ms);
    const char *argv[] = {o->skey,
                          o->skey, /* no record: the same slot */
                          n->ws,
                          o->at,
                          o->retain,
                          kind_names[n->kind],
                          sb_reason_name(n->reason),
                          n->detail ? n->detail : "",
                          o->status,
                          n->pushed ? "1" : "0",
                          o->dur,
                          n->source ? n->source : "",
                          ""};
    _Static_assert(SB_ARRAY_LEN(argv) == SB_ARRAY_LEN(o->argv), "note hook arguments");
    memcpy(o->argv, argv, sizeof(argv));
}

void sb_record_note_send(sb_redis *r, const sb_record_note *n)
{
    sb_record_note_args a;
    sb_record_note_argv(n, &a);
    char *rkey = NULL;
    char window[24], cap[16];
    snprintf(window, sizeof(window), "%d", SB_RECORD_RECENT_MS);
    snprintf(cap, sizeof(cap), "%d", SB_RECORD_FALLBACKS_MAX);
    const char *args[NOTE_ARGS];
    memcpy(args, a.argv, sizeof(a.argv));
    if (n->record_json != NULL && n->message_id != NULL) {
        size_t klen = strlen(n->ws) + strlen(n->message_id) + 32;
        rkey = sb_malloc(klen);
        snprintf(rkey, klen, SB_RECORD_KEY_FMT, n->ws, n->message_id);
        args[1] = rkey;
        args[12] = n->record_json;
    }
    args[13] = window;
    args[14] = cap;
    _Static_assert(SB_ARRAY_LEN(a.argv) + 2 == NOTE_ARGS, "note arguments");
    if (backlog.head != NULL)
        flush_backlog(r); /* older notes first */
    if (backlog.head != NULL || !sb_redis_is_up(r) || send_note(r, args) != SB_OK)
        hold_note(args);
    sb_free(rkey);
}

/* ---- reads ---- */

void sb_record_stats_clear(sb_record_stats *st)
{
    sb_free(st->ws);
    sb_free(st->last_detail);
    sb_free(st->last_push_outcome);
    sb_free(st->last_push_detail);
    sb_free(st->redeliver_last_outcome);
    memset(st, 0, sizeof(*st));
}

static long long int_of(const redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    return e->type == REDIS_REPLY_STRING ? strtoll(e->str, NULL, 10) : 0;
}

/* One counter field |name| = |v| into |st|. */
static void set_counter(sb_record_stats *st, const char *name, const char *v)
{
    long long n = strtoll(v, NULL, 10);
    if (strncmp(name, "fb_", 3) == 0) {
        sb_reason r = sb_reason_from_name(name + 3);
        if (r != SB_REASON_NONE)
            st->by_reason[r] = n;
        return;
    }
    const struct {
        const char *name;
        int64_t *p;
    } ints[] = {
        {"pushes", &st->pushes},
        {"fallbacks", &st->fallbacks},
        {"first_fallback_ms", &st->first_fallback_ms},
        {"last_fallback_ms", &st->last_fallback_ms},
        {"streak_count", &st->streak_count},
        {"streak_since_ms", &st->streak_since_ms},
        {"fail_count", &st->fail_count},
        {"fail_since_ms", &st->fail_since_ms},
        {"last_push_ms", &st->last_push_ms},
        {"last_delivered_ms", &st->last_delivered_ms},
        {"last_lease_ms", &st->last_lease_ms},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(ints); i++) {
        if (strcmp(name, ints[i].name) == 0) {
            *ints[i].p = n;
            return;
        }
    }
    if (strcmp(name, "last_reason") == 0)
        st->last_reason = sb_reason_from_name(v);
    else if (strcmp(name, "streak_reason") == 0)
        st->streak_reason = sb_reason_from_name(v);
    else if (strcmp(name, "fail_reason") == 0)
        st->fail_reason = sb_reason_from_name(v);
    else if (strcmp(name, "fail_status") == 0)
        st->fail_status = (int)n;
    else if (strcmp(name, "last_push_status") == 0)
        st->last_push_status = (int)n;
    else if (strcmp(name, "last_push_duration_ms") == 0)
        st->last_push_duration_ms = strtod(v, NULL);
    else if (strcmp(name, "last_detail") == 0 && st->last_detail == NULL)
        st->last_detail = sb_strdup(v);
    else if (strcmp(name, "last_push_outcome") == 0 && st->last_push_outcome == NULL)
        st->last_push_outcome = sb_strdup(v);
    else if (strcmp(name, "last_push_detail") == 0 && st->last_push_detail == NULL)
        st->last_push_detail = sb_strdup(v);
}

/* Fills |st| from one d_queue result; SB_ERR when it is not one. */
static int parse_stats(const redisReply *a, sb_record_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (a->type != REDIS_REPLY_ARRAY || a->elements != 7 ||
        a->element[6]->type != REDIS_REPLY_ARRAY || a->element[6]->elements != 3 ||
        a->element[0]->type != REDIS_REPLY_STRING || a->element[5]->type != REDIS_REPLY_ARRAY)
        return SB_ERR;
    st->ws = sb_strndup(a->element[0]->str, a->element[0]->len);
    st->depth = int_of(a->element[1]);
    st->leased = int_of(a->element[2]);
    st->dead_letters = int_of(a->element[3]);
    st->oldest_enqueued_ms = int_of(a->element[4]);
    const redisReply *h = a->element[5];
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            set_counter(st, h->element[i]->str, h->element[i + 1]->str);
    const redisReply *rd = a->element[6]; /* sb:{ws}:rd: switchboard's own redelivery */
    st->redeliver_next_ms = int_of(rd->element[0]);
    st->redeliver_last_ms = int_of(rd->element[1]);
    if (rd->element[2]->type == REDIS_REPLY_STRING)
        st->redeliver_last_outcome = sb_strndup(rd->element[2]->str, rd->element[2]->len);
    return SB_OK;
}

/* ---- fan-out reads ----
 *
 * The overview and the gauges look at many workspaces. Each workspace's keys live on its
 * own hash slot, so they are read with one small script per workspace (the same d_queue),
 * sent together, and gathered here: the answer comes when the last reply did. On a
 * single Redis that is a burst of pipelined EVALs; on a Cluster each goes to its master. */

typedef struct fan {
    int gauges; /* 1: sum depth/oldest, count stalled push workspaces; 0: the full stats */
    sb_record_stats_fn cb;
    void *arg;
    size_t n, left;
    int err;
    sb_record_stats *st;
    long long depth, oldest;
    int64_t stalled_before; /* gauges: an oldest message before this is stalled */
    long long stalled;      /* gauges: push-mode workspaces with such a message */
} fan;

typedef struct fan_part {
    fan *f;
    size_t i;
    char ws[SB_WS_ID_MAX + 1]; /* gauges: whose reply this is */
} fan_part;

static void fan_finish(fan *f)
{
    if (f->gauges) {
        if (f->err == SB_OK) {
            sb_metrics_set_queue(f->depth, f->oldest);
            sb_metrics_set_stalled(f->stalled);
        }
    } else {
        size_t n = 0;
        for (size_t i = 0; i < f->n; i++)
            if (f->st[i].ws != NULL)
                f->st[n++] = f->st[i]; /* compact: a workspace whose reply failed is left out */
        f->cb(f->err, f->err == SB_OK ? f->st : NULL, f->err == SB_OK ? n : 0, f->arg);
        for (size_t i = 0; i < n; i++)
            sb_record_stats_clear(&f->st[i]);
    }
    sb_free(f->st);
    sb_free(f);
}

static void fan_done_one(fan *f)
{
    if (--f->left == 0)
        fan_finish(f);
}

/* 1 when |ws| is registered push mode: its old backlog is one its agent should have by
 * now (a poll-mode backlog waits for its consumer and is not stalled). */
static int stalled_push_mode(const char *ws)
{
    sb_endpoint *ep = sb_registry_get(ws);
    int push = ep != NULL && ep->mode == SB_MODE_PUSH;
    sb_endpoint_release(ep);
    return push;
}

static void on_fan_reply(redisReply *rep, void *arg)
{
    fan_part *p = arg;
    fan *f = p->f;
    if (rep == NULL) {
        f->err = SB_ERR_UNAVAILABLE;
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1) {
        sb_log(SB_LOG_ERROR, "record_redis_error", "delivery stats: %s",
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        if (f->err == SB_OK)
            f->err = SB_ERR;
    } else if (f->gauges) {
        const redisReply *q = rep->element[0];
        if (q->type == REDIS_REPLY_ARRAY && q->elements == 2) {
            long long o = int_of(q->element[1]);
            f->depth += int_of(q->element[0]);
            if (o > 0 && (f->oldest == 0 || o < f->oldest))
                f->oldest = o;
            if (o > 0 && o < f->stalled_before)
                f->stalled += stalled_push_mode(p->ws);
        }
    } else if (parse_stats(rep->element[0], &f->st[p->i]) != SB_OK) {
        sb_record_stats_clear(&f->st[p->i]);
        if (f->err == SB_OK)
            f->err = SB_ERR;
    }
    sb_free(p);
    fan_done_one(f);
}

/* Reads |n| workspaces into |f| (which it then owns). */
static void fan_out(sb_redis *r, fan *f, const char *const *ws, size_t n)
{
    f->n = n;
    f->left = n + 1; /* the +1 holds |f| until every request is sent */
    f->st = sb_calloc(n + 1, sizeof(*f->st));
    for (size_t i = 0; i < n; i++) {
        char key[SB_WS_ID_MAX + 32];
        snprintf(key, sizeof(key), "sb:{%s}:dstats", ws[i]);
        const char *args[] = {key, ws[i], f->gauges ? "0" : "1"};
        fan_part *p = sb_calloc(1, sizeof(*p));
        p->f = f;
        p->i = i;
        snprintf(p->ws, sizeof(p->ws), "%s", ws[i]);
        if (sb_sync_eval(r, one_lua, 1, 3, args, on_fan_reply, p) != SB_OK) {
            sb_free(p);
            f->err = SB_ERR_UNAVAILABLE;
            f->left--;
        }
    }
    fan_done_one(f);
}

int sb_record_stats_one(sb_redis *r, const char *ws, sb_record_stats_fn cb, void *arg)
{
    if (!sb_redis_is_up(r))
        return SB_ERR_UNAVAILABLE;
    fan *f = sb_calloc(1, sizeof(*f));
    f->cb = cb;
    f->arg = arg;
    char key[SB_WS_ID_MAX + 32];
    snprintf(key, sizeof(key), "sb:{%s}:dstats", ws);
    const char *args[] = {key, ws, "1"};
    fan_part *p = sb_calloc(1, sizeof(*p));
    p->f = f;
    f->n = f->left = 1;
    f->st = sb_calloc(2, sizeof(*f->st));
    if (sb_sync_eval(r, one_lua, 1, 3, args, on_fan_reply, p) != SB_OK) {
        sb_free(p);
        sb_free(f->st);
        sb_free(f);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

/* The first step of the overview and the gauges: the index read (one slot), then the
 * fan-out over the workspaces it names, |extra| first, without duplicates. */
typedef struct index_op {
    fan *f;
    sb_redis *r;
    size_t nextra, max;
    char **extra;
} index_op;

static int seen_before(const char *const *ws, size_t n, const char *x)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ws[i], x) == 0)
            return 1;
    return 0;
}

static void on_index_reply(redisReply *rep, void *arg)
{
    index_op *op = arg;
    fan *f = op->f;
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        if (rep != NULL)
            sb_log(SB_LOG_ERROR, "record_redis_error", "queue index: %s",
                   rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        f->err = rep == NULL ? SB_ERR_UNAVAILABLE : SB_ERR;
        f->left = 1;
        fan_done_one(f);
    } else {
        const char **ws = sb_calloc(op->nextra + rep->elements + 1, sizeof(char *));
        size_t n = 0;
        for (size_t i = 0; i < op->nextra && n < op->max; i++)
            if (!seen_before(ws, n, op->extra[i]))
                ws[n++] = op->extra[i];
        for (size_t i = 0; i < rep->elements && n < op->max; i++)
            if (rep->element[i]->type == REDIS_REPLY_STRING &&
                !seen_before(ws, n, rep->element[i]->str))
                ws[n++] = rep->element[i]->str;
        fan_out(op->r, f, ws, n);
        sb_free(ws);
    }
    for (size_t i = 0; i < op->nextra; i++)
        sb_free(op->extra[i]);
    sb_free(op->extra);
    sb_free(op);
}

static int read_index(sb_redis *r, fan *f, int64_t now_ms, size_t max, const char *const *extra,
                      size_t nextra)
{
    index_op *op = sb_calloc(1, sizeof(*op));
    op->f = f;
    op->r = r;
    op->max = max;
    op->nextra = nextra;
    op->extra = sb_calloc(nextra + 1, sizeof(char *));
    for (size_t i = 0; i < nextra; i++)
        op->extra[i] = sb_strdup(extra[i]);
    char now[24], window[24], smax[16];
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(window, sizeof(window), "%d", f->gauges ? 0 : SB_RECORD_RECENT_MS);
    snprintf(smax, sizeof(smax), "%zu", max);
    const char *args[] = {SB_QUEUE_ACTIVE_KEY, SB_RECORD_FALLBACKS_KEY, now, window, smax};
    if (sb_sync_eval(r, index_lua, 2, 5, args, on_index_reply, op) != SB_OK) {
        for (size_t i = 0; i < nextra; i++)
            sb_free(op->extra[i]);
        sb_free(op->extra);
        sb_free(op);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

int sb_record_stats_many(sb_redis *r, int64_t now_ms, const char *const *extra, size_t nextra,
                         sb_record_stats_fn cb, void *arg)
{
    if (nextra > SB_RECORD_OVERVIEW_MAX)
        nextra = SB_RECORD_OVERVIEW_MAX;
    fan *f = sb_calloc(1, sizeof(*f));
    f->cb = cb;
    f->arg = arg;
    if (read_index(r, f, now_ms, SB_RECORD_OVERVIEW_MAX, extra, nextra) != SB_OK) {
        sb_free(f);
        return SB_ERR_UNAVAILABLE;
    }
    return SB_OK;
}

void sb_record_refresh_gauges(sb_redis *r)
{
    fan *f = sb_calloc(1, sizeof(*f));
    f->gauges = 1;
    f->stalled_before = sb_now_wall_ms() - SB_RECORD_STALLED_AFTER_MS;
    /* The gauges keep their last values when this fails; the next refresh tries again. */
    if (read_index(r, f, 0, SB_RECORD_GAUGE_MAX, NULL, 0) != SB_OK)
        sb_free(f);
}
