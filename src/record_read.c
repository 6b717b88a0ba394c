/*
 * record_read.c — the reads of record.h: one workspace's delivery facts, the overview of
 * many, and the queue gauges (keys in proto/redis-schema.md; the writes are record.c's).
 *
 * Reads share one Lua function (d_queue) that gathers a workspace's queue facts and
 * counters, so the workspace view, the overview and the gauges count the same way. Every
 * read is bounded: one workspace, at most SB_RECORD_OVERVIEW_MAX, or at most
 * SB_RECORD_GAUGE_MAX for the gauges.
 *
 * The queue keys read here (sb:{ws}:q:ready, :q:leased, :q:dead, :msg:<id>) are the
 * ones queue.c writes; this file never changes them.
 *
 * Never: block, or hold anything across a reply but its own small op.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    "    local e = redis.call('HMGET', p .. 'msg:' .. id, 'enqueued_at_ms', 'h')\n"                \
    "    local t = tonumber(e[1] or (e[2] and string.match(e[2], '(%d+)$')) or '0')\n"             \
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
