/*
 * record.c — the writes of record.h: the delivery counters and pushed messages' records
 * (keys in proto/redis-schema.md). The reads behind the delivery views and the queue
 * gauges are in record_read.c.
 *
 * Writes are one Lua script (note_lua) per workspace and flush, after the callers were
 * answered, with the pushed messages' records right after it as plain HSETs (one per
 * bucket and sender: Redis spends no Lua on a record); nobody waits for the replies but a
 * logger (and a stopping worker).
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
#include "switchboard/sync.h"
#include "switchboard/util.h"

#include <event2/event.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKET_BACKSTOP_MS 60000 /* a record bucket's expiry past its records' end */

/* KEYS: 1 sb:{ws}:dstats. ARGV: 1 ws, 2 the counters' retain ms, 3 n events, then n
 * events of 9: kind, reason, detail, http status, pushed, duration ms, at ms, count, and
 * the at ms of the event's first (a run folded into one event: its last one's fields, the
 * first one's time for the "since" and "first" counters); then (optional) the number of
 * record buckets b and b pairs: pbx member "<n>:<sender>", the end of its records (ms).
 * Returns n.
 *
 * The waiting notes of one workspace come in one call. A run of delivered
 * pushes — the common case — is folded by send_batch into one event (count = the run's
 * length, the last push's fields), so the counters cost the same for one note or
 * BATCH_MAX; every other note is an event of its own, applied in order, as it always
 * was. Pushed messages' records are not in this script's arguments: they are one plain
 * HSET per bucket sent right after it (send_records), where Redis spends no Lua on each
 * record; the script only creates each bucket (HSETNX of a placeholder field '', a
 * name no messageId has) and gives it its expiry (PEXPIREAT NX: the bucket's first
 * write; GT: a longer retention) before its records come — so a connection lost between
 * the two, or a crash, loses records but never leaves a bucket without an expiry — and,
 * when that changed the expiry, lists the bucket in
 * sb:{ws}:pbx (score: the end of its records, the bucket's end + the retention), UNLINKs
 * the buckets whose records are over and drops them from pbx, and sets or raises pbx's
 * own expiry — so a call whose buckets are already listed costs three commands for them.
 * A bucket's own expiry is BUCKET_BACKSTOP_MS after its records' end: the next bucket's
 * listing UNLINKs it first, freeing its fields (tens of thousands at a high rate) off
 * Redis' main thread, where an expiring key is freed; the expiry is only the backstop
 * for a workspace that stops receiving pushes (then its buckets are small anyway). The
 * lookup reads only the members whose records are not over. For a fallback the caller also sends
 * fallbacks_lua: sb:{sb}:fallbacks lives on its own slot. */
// clang-format off
static const char note_lua[] =
    "local S, ws, n = KEYS[1], ARGV[1], tonumber(ARGV[3])\n"
    "local RUNS = {'streak_reason', 'streak_count', 'streak_since_ms', 'fail_reason',\n"
    "  'fail_count', 'fail_since_ms', 'fail_status'}\n"
    "for i = 0, n - 1 do\n"
    "  local b = 3 + i * 9\n"
    "  local kind, reason, detail, status = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]\n"
    "  local pushed, at = ARGV[b + 5], ARGV[b + 7]\n"
    "  if kind == 'registered' then\n"
    "    redis.call('HDEL', S, unpack(RUNS))\n"
    "  else\n"
    "    if pushed == '1' and kind == 'delivered' then\n"
    "      redis.call('HSET', S, 'last_push_ms', at, 'last_push_outcome', 'delivered',\n"
    "        'last_push_status', status, 'last_push_detail', detail,\n"
    "        'last_push_duration_ms', ARGV[b + 6], 'last_delivered_ms', at)\n"
    "    elseif pushed == '1' then\n"
    "      redis.call('HSET', S, 'last_push_ms', at, 'last_push_outcome', reason,\n"
    "        'last_push_status', status, 'last_push_detail', detail,\n"
    "        'last_push_duration_ms', ARGV[b + 6])\n"
    "    elseif kind == 'delivered' then\n"
    "      redis.call('HSET', S, 'last_delivered_ms', at)\n"
    "    end\n"
    "    if kind == 'delivered' then\n"
    "      redis.call('HINCRBY', S, 'pushes', ARGV[b + 8])\n"
    "      redis.call('HDEL', S, unpack(RUNS))\n"
    "    else\n"
    "      if pushed == '1' then\n"
    "        if redis.call('HGET', S, 'fail_reason') == reason then\n"
    "          redis.call('HINCRBY', S, 'fail_count', 1)\n"
    "        else\n"
    "          redis.call('HSET', S, 'fail_reason', reason, 'fail_count', 1, 'fail_since_ms', at)\n"
    "        end\n"
    "        redis.call('HSET', S, 'fail_status', status)\n"
    "      end\n"
    "      if kind == 'fallback' then\n"
    "        local c, since = ARGV[b + 8], ARGV[b + 9]\n"
    "        redis.call('HINCRBY', S, 'fallbacks', c)\n"
    "        redis.call('HINCRBY', S, 'fb_' .. reason, c)\n"
    "        redis.call('HSETNX', S, 'first_fallback_ms', since)\n"
    "        redis.call('HSET', S, 'last_fallback_ms', at, 'last_reason', reason,\n"
    "          'last_detail', detail)\n"
    "        if redis.call('HGET', S, 'streak_reason') == reason then\n"
    "          redis.call('HINCRBY', S, 'streak_count', c)\n"
    "        else\n"
    "          redis.call('HSET', S, 'streak_reason', reason, 'streak_count', c,\n"
    "            'streak_since_ms', since)\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('PEXPIRE', S, ARGV[2])\n"
    "local g = 4 + n * 9\n"
    "local P = 'sb:{' .. ws .. '}:'\n"
    "for k = 1, tonumber(ARGV[g] or '0') do\n"
    "  local m, u = ARGV[g + 2 * k - 1], tonumber(ARGV[g + 2 * k])\n"
    "  local B, e = P .. 'pb:' .. m, u + " SB_STR(BUCKET_BACKSTOP_MS) "\n"
    /* the bucket exists (a placeholder field no messageId can name) before its records
     * come, so it has its expiry even if they never do */
    "  redis.call('HSETNX', B, '', '')\n"
    "  if redis.call('PEXPIREAT', B, e, 'NX') == 1 or\n"
    "      redis.call('PEXPIREAT', B, e, 'GT') == 1 then\n"
    "    local X = P .. 'pbx'\n"
    "    local now = tonumber(string.match(m, '^(%d+)')) * " SB_STR(SB_RECORD_BUCKET_MS) "\n"
    "    redis.call('ZADD', X, u, m)\n"
    "    local over = redis.call('ZRANGEBYSCORE', X, '-inf', '(' .. now, 'LIMIT', 0, 100)\n"
    "    if #over > 0 then\n"
    "      local keys = {}\n"
    "      for i, o in ipairs(over) do keys[i] = P .. 'pb:' .. o end\n"
    "      redis.call('UNLINK', unpack(keys))\n"
    "      redis.call('ZREM', X, unpack(over))\n"
    "    end\n"
    "    if redis.call('PEXPIREAT', X, e, 'NX') == 0 then\n"
    "      redis.call('PEXPIREAT', X, e, 'GT')\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return n\n";
// clang-format on

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

/* ---- notes ---- */

static const char *const kind_names[] = {"delivered", "fallback", "failed", "registered"};

/* ---- notes waiting to be sent ----
 *
 * A note is copied into a FIFO of the worker thread and sent FLUSH_US after the first of
 * them (a timer on the thread's loop: at 10,000 pushes/s a call carries ~20 notes
 * instead of the handful of one loop turn, and Redis' cost per call is mostly fixed) — or
 * at once when it is not a delivered push (those are rare, and read right after) — one
 * note_lua call per workspace holding
 * all of that workspace's waiting notes (at most BATCH_MAX), oldest first; a workspace's
 * notes keep their order. While the thread's Redis connection is down the FIFO is the
 * backlog: notes stay in it and are sent in order as soon as the connection is back
 * (sb_record_redis_state), so a push delivered during an outage still gets its record.
 * It is bounded (SB_RECORD_BACKLOG_MAX notes per worker thread); past it new notes are
 * dropped, counted (switchboard_record_notes_dropped_total) and logged once per outage.
 * A note already sent when a connection drops is not sent again: Redis may have applied
 * it, and the counters it bumps are not idempotent. */

/* An event's arguments: kind, reason, detail, http status, pushed, duration ms, at ms,
 * count and the first's at ms. */
#define EVENT_ARGS 9
#define INLINE_ARGS 9 /* a queued fallback's hook arguments: ws, retain, the event's first 7 */
#define BATCH_MAX 128 /* notes of one workspace in one call */
#define FLUSH_US 2000 /* delivered pushes' notes wait this long to share a call */
#define SCAN_MAX 512  /* notes looked through to fill one call */
#define SOURCE_MAX (SB_WS_ID_MAX + 16) /* the longest sender name a record is kept for */

/* A note as held: the numbers as numbers (formatted once per event sent, and a run of
 * delivered pushes is one event), the texts copied into the same allocation with their
 * lengths, each measured once. */
typedef struct held_note {
    struct held_note *next;
    int in_batch;
    sb_note_kind kind;
    sb_reason reason;
    int pushed, http_status;
    double duration_ms;
    int64_t at_ms;
    int64_t retain_ms;
    int64_t record_retain_ms;
    const char *ws, *detail, *mid, *source, *record; /* record: "" when none */
    size_t ws_len, mid_len, source_len, record_len;
} held_note;

static __thread struct {
    held_note *head, *tail;
    size_t n;
    unsigned long dropped; /* since the last time the backlog emptied */
    sb_redis *r;           /* the thread's connection (the flush sends on it) */
    struct event *flush;   /* made active when notes wait and Redis is up */
    int armed;
    size_t unanswered; /* note calls and record HSETs sent on this thread, not answered */
} fifo;

static void on_note_reply(redisReply *rep, void *arg)
{
    if (fifo.unanswered > 0)
        fifo.unanswered--;
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "record_note_failed", "delivery counters for %s not updated: %s",
               (const char *)arg, rep == NULL ? "Redis connection lost" : rep->str);
    sb_free(arg);
}

/* Sends sb:{sb}:fallbacks' update for |ws| at |at_ms| unless this thread sent one for |ws|
 * within the last second (a small direct-mapped memory of workspaces; a collision only
 * costs an extra send): the list's window is an hour, a score a second old changes
 * nothing GET /delivery shows. */
static void send_fallback_index(sb_redis *r, const char *ws, int64_t at_ms)
{
    static __thread struct {
        uint64_t hash;
        int64_t ms;
    } sent[256];
    uint64_t h = sb_fnv1a(ws, strlen(ws));
    size_t i = (size_t)(h % SB_ARRAY_LEN(sent));
    if (sent[i].hash == h && at_ms >= sent[i].ms && at_ms - sent[i].ms < 1000)
        return;
    char at[24], window[24], cap[16];
    sb_fmt_ll(at, at_ms);
    snprintf(window, sizeof(window), "%d", SB_RECORD_RECENT_MS);
    snprintf(cap, sizeof(cap), "%d", SB_RECORD_FALLBACKS_MAX);
    const char *fargs[] = {SB_RECORD_FALLBACKS_KEY, ws, at, window, cap};
    if (sb_sync_eval(r, fallbacks_lua, 1, 5, fargs, NULL, NULL) == SB_OK) {
        sent[i].hash = h;
        sent[i].ms = at_ms;
    }
}

void sb_record_note_fallback_index(sb_redis *r, const char *ws, int64_t at_ms)
{
    if (sb_redis_is_up(r))
        send_fallback_index(r, ws, at_ms);
}

static void on_record_reply(redisReply *rep, void *arg)
{
    if (fifo.unanswered > 0)
        fifo.unanswered--;
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR)
        sb_log(SB_LOG_WARN, "record_note_failed", "pushed-message records for %s not written: %s",
               (const char *)arg, rep == NULL ? "Redis connection lost" : rep->str);
    sb_free(arg);
}

static char *put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

/* Groups the batch's pushed records by (bucket, sender): |grp|[i] = the group of note i, or
 * -1 when it has no record. For each group appends its pbx member "<n>:<sender>" and the
 * end of its records (the bucket's end + |keep|) to |args| for the note script, which
 * creates the bucket and sets its expiry (|member| and |until| hold them, one per group).
 * Returns how many groups there are. */
static int group_records(held_note *const *batch, int nb, int64_t keep, const char **args,
                         short *grp, char (*member)[SOURCE_MAX + 32], char (*until)[24])
{
    int nbk = 0;
    for (int i = 0; i < nb; i++)
        grp[i] = -1;
    for (int i = 0; i < nb; i++) {
        const held_note *h = batch[i];
        if (grp[i] >= 0 || h->record_len == 0)
            continue;
        int64_t bucket = h->at_ms / SB_RECORD_BUCKET_MS;
        for (int j = i; j < nb; j++) {
            const held_note *x = batch[j];
            if (grp[j] < 0 && x->record_len > 0 && x->at_ms / SB_RECORD_BUCKET_MS == bucket &&
                x->source_len == h->source_len && memcmp(x->source, h->source, h->source_len) == 0)
                grp[j] = (short)nbk;
        }
        char *m = member[nbk], *o = m + sb_fmt_ll(m, bucket);
        *o++ = ':';
        o = put(o, h->source, h->source_len);
        *o = '\0';
        sb_fmt_ll(until[nbk], (bucket + 1) * SB_RECORD_BUCKET_MS + keep);
        args[2 * nbk] = m;
        args[2 * nbk + 1] = until[nbk];
        nbk++;
    }
    return nbk;
}

/* The batch's pushed records as plain commands on the workspace's slot, sent right after
 * the note script that created their buckets and gave them their expiry (a record that
 * never arrives leaves no bucket without one): one HSET per group of group_records —
 * sb:{ws}:pb:<n>:<sender>, messageId → record JSON. A sender has a bucket of its own, so
 * two senders' records of one messageId never meet in a field and nothing is read first;
 * the same sender again replaces its record (HSET; later wins within one command too).
 * Each HSET's reply is waited for like the script's (fifo.unanswered). */
static void send_records(sb_redis *r, held_note *const *batch, int nb, const short *grp, int nbk,
                         char (*member)[SOURCE_MAX + 32])
{
    const char *argv[2 + 2 * BATCH_MAX];
    size_t lens[2 + 2 * BATCH_MAX];
    const held_note *first = batch[0];
    for (int g = 0; g < nbk; g++) {
        char key[SB_WS_ID_MAX + SOURCE_MAX + 64];
        char *o = put(key, "sb:{", 4);
        o = put(o, first->ws, first->ws_len);
        o = put(o, "}:pb:", 5);
        o = put(o, member[g], strlen(member[g]));
        int argc = 0;
        argv[argc] = "HSET";
        lens[argc++] = 4;
        argv[argc] = key;
        lens[argc++] = (size_t)(o - key);
        for (int j = 0; j < nb; j++) {
            if (grp[j] != g)
                continue;
            argv[argc] = batch[j]->mid;
            lens[argc++] = batch[j]->mid_len;
            argv[argc] = batch[j]->record;
            lens[argc++] = batch[j]->record_len;
        }
        char *tag = sb_strdup(first->ws);
        if (sb_redis_command_argv(r, on_record_reply, tag, argc, argv, lens) != SB_OK) {
            sb_free(tag);
            break;
        }
        fifo.unanswered++;
    }
}

/* note_lua as this thread's connection sends it (found once: sb_redis_script_get3 is a
 * lookup). */
static const sb_redis_script *note_script(void)
{
    static __thread const sb_redis_script *s;
    if (s == NULL)
        s = sb_redis_script_get3(sb_sync_lua_prelude, NULL, note_lua);
    return s;
}

/* Sends one call for the workspace of the FIFO's head with its waiting notes, and the
 * global half of the last fallback among them (not retried: it only orders GET
 * /delivery's "recent" list). Removes the notes sent. SB_OK, or SB_ERR_UNAVAILABLE with
 * the FIFO unchanged. */
static int send_batch(sb_redis *r)
{
    held_note *batch[BATCH_MAX];
    int nb = 0, scanned = 0;
    const char *ws = fifo.head->ws;
    size_t ws_len = fifo.head->ws_len;
    int64_t retain = 1, keep = 1, last_fallback = 0;
    for (held_note *h = fifo.head; h != NULL && nb < BATCH_MAX && scanned < SCAN_MAX;
         h = h->next, scanned++) {
        if (h->ws_len != ws_len || memcmp(h->ws, ws, ws_len) != 0)
            continue;
        batch[nb++] = h;
        if (h->retain_ms > retain)
            retain = h->retain_ms;
        if (h->record_retain_ms > keep)
            keep = h->record_retain_ms;
        if (h->kind == SB_NOTE_FALLBACK)
            last_fallback = h->at_ms;
    }
    /* The events: a run of delivered pushes is one (its last push, count = its length). */
    struct {
        const held_note *h;
        int count;
    } ev[BATCH_MAX];
    int nev = 0, run = 0;
    for (int i = 0; i < nb; i++) {
        int delivered = batch[i]->kind == SB_NOTE_DELIVERED && batch[i]->pushed;
        if (delivered && run > 0) {
            ev[nev - 1].h = batch[i];
            ev[nev - 1].count = ++run;
        } else {
            ev[nev].h = batch[i];
            ev[nev++].count = 1;
            run = delivered;
        }
    }
    char skey[SB_WS_ID_MAX + 16], retain_s[24], nev_s[24], nbk_s[24];
    char num[BATCH_MAX][4][40], member[BATCH_MAX][SOURCE_MAX + 32], until[BATCH_MAX][24];
    const char *args[5 + BATCH_MAX * (EVENT_ARGS + 2)];
    char *o = put(skey, "sb:{", 4);
    o = put(o, ws, ws_len);
    memcpy(o, "}:dstats", sizeof("}:dstats"));
    sb_fmt_ll(retain_s, retain);
    sb_fmt_ll(nev_s, nev);
    int na = 0;
    args[na++] = skey;
    args[na++] = ws;
    args[na++] = retain_s;
    args[na++] = nev_s;
    for (int e = 0; e < nev; e++) {
        const held_note *h = ev[e].h;
        sb_fmt_ll(num[e][0], h->http_status);
        sb_fmt_ms3(num[e][1], h->duration_ms);
        sb_fmt_ll(num[e][2], h->at_ms);
        sb_fmt_ll(num[e][3], ev[e].count);
        args[na++] = kind_names[h->kind];
        args[na++] = sb_reason_name(h->reason);
        args[na++] = h->detail;
        args[na++] = num[e][0];
        args[na++] = h->pushed ? "1" : "0";
        args[na++] = num[e][1];
        args[na++] = num[e][2];
        args[na++] = num[e][3];
        args[na++] = num[e][2];
    }
    /* The script first: it creates the records' buckets with their expiry, then the
     * records follow on the same connection (one slot: Redis runs them in order). */
    short grp[BATCH_MAX];
    int nbk = group_records(batch, nb, keep, args + na + 1, grp, member, until);
    if (nbk > 0) {
        sb_fmt_ll(nbk_s, nbk);
        args[na] = nbk_s;
        na += 1 + 2 * nbk;
    }
    char *tag = sb_strdup(ws);
    if (sb_redis_eval(r, note_script(), 1, na, args, on_note_reply, tag) != SB_OK) {
        sb_free(tag);
        return SB_ERR_UNAVAILABLE;
    }
    fifo.unanswered++;
    send_records(r, batch, nb, grp, nbk, member);
    if (last_fallback > 0)
        send_fallback_index(r, ws, last_fallback);
    for (int i = 0; i < nb; i++)
        batch[i]->in_batch = 1;
    held_note **pp = &fifo.head;
    fifo.tail = NULL;
    while (*pp != NULL) {
        held_note *h = *pp;
        if (h->in_batch) {
            *pp = h->next;
            fifo.n--;
            sb_free(h);
        } else {
            fifo.tail = h;
            pp = &h->next;
        }
    }
    return SB_OK;
}

/* Sends every waiting note, until the connection cannot take more. */
static void flush_notes(sb_redis *r)
{
    while (fifo.head != NULL && sb_redis_is_up(r))
        if (send_batch(r) != SB_OK)
            break;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    fifo.armed = 0;
    if (fifo.r != NULL)
        flush_notes(fifo.r);
}

void sb_record_redis_state(sb_redis *r, int up, void *arg)
{
    if (!up || fifo.head == NULL)
        return;
    size_t n = fifo.n;
    flush_notes(r);
    if (fifo.head != NULL)
        return; /* the rest goes with the next flush */
    sb_log(fifo.dropped > 0 ? SB_LOG_WARN : SB_LOG_INFO, "record_backlog_sent",
           "Redis is back: sent %zu delivery note(s) held during the outage; %lu dropped past "
           "the bound",
           n, fifo.dropped);
    fifo.dropped = 0;
}

size_t sb_record_backlog_len(void)
{
    return fifo.n;
}

size_t sb_record_notes_unanswered(void)
{
    return fifo.unanswered;
}

void sb_record_backlog_clear(void)
{
    if (fifo.n > 0)
        sb_log(SB_LOG_WARN, "record_backlog_lost",
               "stopping with %zu delivery note(s) never sent: Redis was unreachable", fifo.n);
    while (fifo.head != NULL) {
        held_note *h = fifo.head;
        fifo.head = h->next;
        sb_free(h);
    }
    if (fifo.flush != NULL)
        event_free(fifo.flush);
    memset(&fifo, 0, sizeof(fifo));
}

/* Copies |s| (|n| bytes) to |*p| with a NUL; returns the copy and moves |*p| past it. */
static const char *copy_text(char **p, const char *s, size_t n)
{
    char *d = *p;
    memcpy(d, s, n);
    d[n] = '\0';
    *p = d + n + 1;
    return d;
}

/* A copy of the note in one allocation, each text measured once. */
static held_note *copy_note(const sb_record_note *n)
{
    int with_record = n->record_json != NULL && n->message_id != NULL;
    const char *detail = n->detail ? n->detail : "", *source = n->source ? n->source : "";
    const char *mid = with_record ? n->message_id : "", *rec = with_record ? n->record_json : "";
    size_t ws_len = strlen(n->ws), detail_len = strlen(detail), mid_len = strlen(mid);
    size_t source_len = strlen(source);
    size_t rec_len = !with_record ? 0 : n->record_len > 0 ? n->record_len : strlen(rec);
    if (source_len > SOURCE_MAX)
        rec_len = 0; /* no workspace id is that long: no record for such a sender */
    held_note *h = sb_malloc(sizeof(*h) + ws_len + detail_len + mid_len + source_len + rec_len + 5);
    char *p = (char *)(h + 1);
    h->next = NULL;
    h->in_batch = 0;
    h->kind = n->kind;
    h->reason = n->reason;
    h->pushed = n->pushed;
    h->http_status = n->http_status;
    h->duration_ms = n->duration_ms;
    h->at_ms = n->at_ms;
    h->retain_ms = n->retain_ms > 0 ? n->retain_ms : 1;
    h->record_retain_ms = n->record_retain_ms > 0 ? n->record_retain_ms : h->retain_ms;
    h->ws = copy_text(&p, n->ws, ws_len);
    h->ws_len = ws_len;
    h->detail = copy_text(&p, detail, detail_len);
    h->mid = copy_text(&p, mid, mid_len);
    h->mid_len = mid_len;
    h->source = copy_text(&p, source, source_len);
    h->source_len = source_len;
    h->record = copy_text(&p, rec, rec_len);
    h->record_len = rec_len;
    return h;
}

/* ---- a queued fallback's note, inside its append ---- */

static pthread_once_t g_after_once = PTHREAD_ONCE_INIT;
static char *g_after_lua;

/* The hook gets every message's INLINE_ARGS arguments (sb_record_note_inline) one after
 * the other — each as a count and that many, or as "1" and its time when only the time
 * differs from the previous one's (queue.h) — folds each run of fallbacks not pushed with
 * the same reason into one event (count = the run's length, the last one's detail and
 * time, the first one's time as "since") and hands the events to the note script: so the
 * counters of a batch of queued fallbacks cost what one costs, and end exactly as if each
 * had been noted on its own. */
// clang-format off
static const char fold_lua[] =
    "local function sb_queue_after(KEYS, A)\n"
    "  local E, n, f, cur, i = {'', '', 0}, 0, nil, {}, 1\n"
    "  while i <= #A do\n"
    "    if A[i] == '1' then cur[" SB_STR(INLINE_ARGS) "] = A[i + 1] i = i + 2\n"
    "    else\n"
    "      for j = 1, " SB_STR(INLINE_ARGS) " do cur[j] = A[i + j] end\n"
    "      i = i + " SB_STR(INLINE_ARGS) " + 1\n"
    "    end\n"
    "    if f and cur[3] == 'fallback' and cur[7] == '0' and E[f] == 'fallback' and\n"
    "        E[f + 4] == '0' and E[f + 1] == cur[4] then\n"
    "      E[f + 2], E[f + 6], E[f + 7] = cur[5], cur[9], E[f + 7] + 1\n"
    "    else\n"
    "      f = 4 + n * " SB_STR(EVENT_ARGS) "\n"
    "      for j = 0, 6 do E[f + j] = cur[3 + j] end\n"
    "      E[f + 7], E[f + 8] = 1, cur[9]\n"
    "      n = n + 1\n"
    "    end\n"
    "  end\n"
    "  E[1], E[2], E[3] = cur[1], cur[2], n\n"
    "  sb_note(KEYS, E)\n"
    "end\n";
// clang-format on

static void make_after_lua(void)
{
    /* KEYS and ARGV as parameters shadow the script's own: the note text runs unchanged. */
    static const char open[] = "local function sb_note(KEYS, ARGV)\n", close[] = "end\n";
    size_t n = strlen(open) + strlen(note_lua) + strlen(close) + strlen(fold_lua) + 1;
    g_after_lua = sb_malloc(n);
    snprintf(g_after_lua, n, "%s%s%s%s", open, note_lua, close, fold_lua);
}

const char *sb_record_note_after_lua(void)
{
    pthread_once(&g_after_once, make_after_lua);
    return g_after_lua;
}

void sb_record_note_inline(const sb_record_note *n, sb_record_note_args *o)
{
    sb_concat3(o->skey, sizeof(o->skey), "sb:{", n->ws, "}:dstats"); /* once per message */
    sb_fmt_ll(o->retain, n->retain_ms > 0 ? n->retain_ms : 1);
    sb_fmt_ll(o->status, n->http_status);
    sb_fmt_ms3(o->dur, n->duration_ms);
    sb_fmt_ll(o->at, n->at_ms);
    /* fold_lua's layout: ws, retain, then one event's first seven fields */
    const char *argv[] = {o->skey,
                          n->ws,
                          o->retain,
                          kind_names[n->kind],
                          sb_reason_name(n->reason),
                          n->detail ? n->detail : "",
                          o->status,
                          n->pushed ? "1" : "0",
                          o->dur,
                          o->at};
    _Static_assert(SB_ARRAY_LEN(argv) == SB_ARRAY_LEN(o->argv), "note hook arguments");
    _Static_assert(SB_ARRAY_LEN(argv) == 1 + INLINE_ARGS, "one message's hook arguments");
    memcpy(o->argv, argv, sizeof(argv));
    o->nkeys = 1;
    o->nargs = INLINE_ARGS;
}

void sb_record_notes_send_now(sb_redis *r)
{
    if (fifo.r == r && fifo.head != NULL)
        flush_notes(r);
}

void sb_record_note_send(sb_redis *r, const sb_record_note *n)
{
    if (fifo.r != r) {
        if (fifo.r != NULL && fifo.head != NULL)
            flush_notes(fifo.r);
        if (fifo.flush != NULL)
            event_free(fifo.flush);
        fifo.flush = sb_event_new(sb_redis_base(r), -1, 0, on_flush, NULL);
        fifo.armed = 0;
        fifo.r = r;
    }
    int up = sb_redis_is_up(r);
    if (fifo.n >= SB_RECORD_BACKLOG_MAX) {
        if (fifo.dropped++ == 0)
            sb_log(SB_LOG_WARN, "record_notes_dropped",
                   "Redis is unreachable and %d delivery notes are waiting on this worker: "
                   "further delivery records and counters are dropped until it is back",
                   SB_RECORD_BACKLOG_MAX);
        sb_metrics_record_note_deferred(1);
        return;
    }
    if (strlen(n->ws) > SB_WS_ID_MAX)
        return; /* not a workspace id (they are validated): nothing to note it under */
    held_note *h = copy_note(n);
    if (fifo.tail != NULL)
        fifo.tail->next = h;
    else
        fifo.head = h;
    fifo.tail = h;
    fifo.n++;
    if (!up) {
        sb_metrics_record_note_deferred(0); /* held for the outage */
        return;
    }
    if (n->kind != SB_NOTE_DELIVERED) {
        /* Fallbacks, failures and registrations are rare and are what an operator looks
         * at right after: they go out at once (with whatever waits before them). */
        flush_notes(r);
    } else if (!fifo.armed) {
        fifo.armed = 1;
        struct timeval tv = {0, FLUSH_US};
        event_add(fifo.flush, &tv);
    }
}
