/*
 * test_queue_batch.c — the batched append (queue_append.c) against a real redis-server:
 * the appends of one loop turn go as one script call and each caller gets its own
 * answer (fields as stored, order kept); two copies of one message in a batch (the second
 * is a duplicate of the first); an earlier stored copy found from inside a batch; the
 * expiry sweep when a batch's sequences cross a multiple of 16 (and not before); the
 * wake-up only when the ready set was empty; a batch of 16 sent before the turn ends; at
 * most three batches of a workspace in flight; a batch of fallbacks' counters (record.c's folded
 * note) equal to the same fallbacks appended one at a time; and the drain's redelivery lease and
 * batched ack (queue_redeliver.c), whose per-message reads and writes were folded the same way,
 * and the lease's handling of messages gone before it or before its read; and what an append
 * leaves in Redis: an expiry on every key but the queue's own sets and counters, no key of a
 * duplicate's, and the stored copy a duplicate names untouched.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "redis_harness.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/redis.h"

static test_redis g_srv;

typedef test_fixture fixture;

static int group_setup(void **state)
{
    return test_redis_group_start(&g_srv);
}

static int group_teardown(void **state)
{
    test_redis_stop(&g_srv);
    return 0;
}

static int setup(void **state)
{
    *state = test_fixture_new(&g_srv);
    return *state != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    sb_queue_append_flush();
    test_fixture_free(*state);
    return 0;
}

/* ---- appends and their answers ---- */

#define MAXN 20

typedef struct answer {
    int done, err, duplicate;
    sb_queue_state state;
    sb_reason reason;
    int64_t enqueued, expires, updated;
    char id[32], task_id[48], message_id[64], context_id[48], detail[96];
} answer;

typedef struct answers {
    answer a[MAXN];
    int n, done;
} answers;

typedef struct slot {
    answers *all;
    int i;
} slot;

static void cp(char *dst, size_t n, const char *s)
{
    snprintf(dst, n, "%s", s != NULL ? s : "(null)");
}

static void on_rec(int err, const sb_queue_record *rec, void *arg)
{
    slot *s = arg;
    answer *a = &s->all->a[s->i];
    a->done++;
    a->err = err;
    s->all->done++;
    if (rec == NULL)
        return;
    a->duplicate = rec->duplicate;
    a->state = rec->state;
    a->reason = rec->reason;
    a->enqueued = rec->enqueued_at_ms;
    a->expires = rec->expires_at_ms;
    a->updated = rec->updated_at_ms;
    cp(a->id, sizeof(a->id), rec->id);
    cp(a->task_id, sizeof(a->task_id), rec->task_id);
    cp(a->message_id, sizeof(a->message_id), rec->message_id);
    cp(a->context_id, sizeof(a->context_id), rec->context_id);
    cp(a->detail, sizeof(a->detail), rec->detail);
}

typedef struct want_n {
    answers *all;
    int n;
} want_n;

static int all_done(void *arg)
{
    const want_n *w = arg;
    return w->all->done >= w->n;
}

static sb_queue_msg msg(const char *ws, const char *message_id, const char *request)
{
    sb_queue_msg m = {.ws = ws,
                      .message_id = message_id,
                      .kind = "chat",
                      .source = "platform",
                      .method = "message/send",
                      .version = SB_A2A_V03,
                      .reason = SB_REASON_CONNECT_REFUSED,
                      .detail = "connect 10.0.0.7:8000: Connection refused",
                      .request = request,
                      .request_len = strlen(request),
                      .ttl_ms = 60000};
    return m;
}

#define REQ "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{}}"

/* |n| messages m-0 … m-(n-1) of |ws| into |ms|, their messageIds written into |mids|. */
static void msgs(const char *ws, int n, char mids[][16], sb_queue_msg *ms)
{
    for (int i = 0; i < n; i++) {
        snprintf(mids[i], 16, "m-%d", i);
        ms[i] = msg(ws, mids[i], REQ);
    }
}

static sb_queue_opts opts(void)
{
    sb_queue_opts o = {5, 60000};
    return o;
}

/* Script calls Redis has run so far (EVAL and EVALSHA). */
static long long script_calls(void)
{
    redisReply *rep = test_redis_cmd(&g_srv, "INFO commandstats");
    assert_non_null(rep);
    long long n = 0;
    const char *names[] = {"cmdstat_eval:calls=", "cmdstat_evalsha:calls="};
    for (size_t i = 0; i < 2; i++) {
        const char *p = strstr(rep->str, names[i]);
        if (p != NULL)
            n += strtoll(p + strlen(names[i]), NULL, 10);
    }
    freeReplyObject(rep);
    return n;
}

static long long cmd_calls(const char *name)
{
    redisReply *rep = test_redis_cmd(&g_srv, "INFO commandstats");
    assert_non_null(rep);
    char pat[64];
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", name);
    const char *p = strstr(rep->str, pat);
    long long n = p != NULL ? strtoll(p + strlen(pat), NULL, 10) : 0;
    freeReplyObject(rep);
    return n;
}

static char *hget(const char *key, const char *field)
{
    redisReply *rep = test_redis_cmd(&g_srv, "HGET %s %s", key, field);
    assert_non_null(rep);
    char *v = rep->type == REDIS_REPLY_STRING ? sb_strdup(rep->str) : NULL;
    freeReplyObject(rep);
    return v;
}

/* A message's field as either layout stores it: its own hash field (layout 2, and what
 * changes), else from the packed head "h" (layout 3: "<len>:<bytes>" per field in this
 * order). NULL when absent. */
static char *mfield(const char *key, const char *field)
{
    static const char *const order[] = {"dedup",       "id",     "task_id",       "message_id",
                                        "context_id",  "kind",   "source",        "method",
                                        "version",     "reason", "detail",        "attempted",
                                        "a2a_version", "user",   "enqueued_at_ms"};
    char *v = hget(key, field);
    if (v != NULL)
        return v;
    char *h = hget(key, "h");
    if (h == NULL)
        return NULL;
    const char *p = h;
    for (size_t i = 0; i < SB_ARRAY_LEN(order); i++) {
        char *colon;
        size_t n = (size_t)strtoul(p, &colon, 10);
        assert_true(*colon == ':');
        if (strcmp(order[i], field) == 0) {
            v = sb_strndup(colon + 1, n);
            break;
        }
        p = colon + 1 + n;
    }
    sb_free(h);
    return v;
}

static long long redis_int(const char *fmt, const char *arg)
{
    redisReply *rep = test_redis_cmd(&g_srv, fmt, arg);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    freeReplyObject(rep);
    return v;
}

/* Appends |n| messages of |ws| in one loop turn (none is sent before the loop runs), then
 * runs the loop until every answer came; returns the script calls that took. */
static long long append_batch(fixture *f, sb_queue_msg *ms, int n, answers *out, slot *slots)
{
    memset(out, 0, sizeof(*out));
    out->n = n;
    long long calls0 = script_calls();
    sb_queue_opts o = opts();
    for (int i = 0; i < n; i++) {
        slots[i].all = out;
        slots[i].i = i;
        assert_int_equal(sb_queue_append(f->r, &o, &ms[i], on_rec, &slots[i]), SB_OK);
    }
    assert_int_equal(out->done, 0); /* never answered from inside the call */
    want_n w = {out, n};
    assert_true(test_run_until(f->base, all_done, &w, 3000));
    for (int i = 0; i < n; i++) {
        assert_int_equal(out->a[i].done, 1);
        assert_int_equal(out->a[i].err, SB_OK);
    }
    return script_calls() - calls0;
}

/* ---- tests ---- */

/* Five messages and a copy of the second in one batch: one script call; each caller gets
 * its own message's fields as stored (checked against a read of the hash), the copy the
 * second one's; the ready set holds the five in the order they were appended. */
static void test_batch_answers_each_caller(void **state)
{
    fixture *f = *state;
    char mids[5][16];
    sb_queue_msg ms[6];
    msgs("ws-b", 5, mids, ms);
    ms[3].context_id = "ctx-given";
    ms[4].detail = "another detail";
    ms[4].ttl_ms = 30000; /* a second profile */
    ms[5] = ms[1];
    answers out;
    slot slots[6];
    assert_int_equal(append_batch(f, ms, 6, &out, slots), 1);
    for (int i = 0; i < 5; i++) {
        const answer *a = &out.a[i];
        assert_false(a->duplicate);
        assert_string_equal(a->message_id, mids[i]);
        assert_int_equal(a->state, SB_QSTATE_QUEUED);
        assert_int_equal(a->reason, SB_REASON_CONNECT_REFUSED);
        assert_string_equal(a->task_id + strlen(SB_QUEUE_TASK_PREFIX),
                            a->id + strlen(SB_QUEUE_ID_PREFIX));
        assert_int_equal(a->expires - a->enqueued, ms[i].ttl_ms);
        assert_int_equal(a->updated, a->enqueued);
        char key[96];
        snprintf(key, sizeof(key), "sb:{ws-b}:msg:%s", a->id);
        const char *check[][2] = {{"task_id", a->task_id},       {"message_id", a->message_id},
                                  {"context_id", a->context_id}, {"detail", a->detail},
                                  {"state", "queued"},           {"request", REQ}};
        for (size_t c = 0; c < SB_ARRAY_LEN(check); c++) {
            char *v = mfield(key, check[c][0]);
            assert_non_null(v);
            assert_string_equal(v, check[c][1]);
            sb_free(v);
        }
        /* layout 3: the unchanging fields packed into one (queue_int.h), so the hash
         * holds h, request, state, seq, expires_at_ms and attempts, and nothing else */
        assert_int_equal(redis_int("HLEN %s", key), 6);
        char *enq = mfield(key, "enqueued_at_ms"), *exp = hget(key, "expires_at_ms");
        assert_int_equal(strtoll(enq, NULL, 10), a->enqueued);
        assert_int_equal(strtoll(exp, NULL, 10), a->expires);
        sb_free(enq);
        sb_free(exp);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(a->id, out.a[j].id);
    }
    assert_string_equal(out.a[3].context_id, "ctx-given");
    assert_string_equal(out.a[4].detail, "another detail");
    assert_true(strncmp(out.a[0].context_id, SB_QUEUE_CONTEXT_PREFIX,
                        strlen(SB_QUEUE_CONTEXT_PREFIX)) == 0);
    /* the copy: a duplicate answered with the second message's record */
    assert_true(out.a[5].duplicate);
    assert_string_equal(out.a[5].id, out.a[1].id);
    assert_string_equal(out.a[5].task_id, out.a[1].task_id);
    /* the queue: five, in order; the stats count five and one duplicate */
    redisReply *rep = test_redis_cmd(&g_srv, "ZRANGE sb:{ws-b}:q:ready 0 -1");
    assert_non_null(rep);
    assert_int_equal(rep->elements, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(rep->element[i]->str, out.a[i].id);
    freeReplyObject(rep);
    char *enq = hget("sb:{ws-b}:q:stats", "enqueued"),
         *dup = hget("sb:{ws-b}:q:stats", "duplicates");
    assert_string_equal(enq, "5");
    assert_string_equal(dup, "1");
    sb_free(enq);
    sb_free(dup);
    /* the record link: a field of the hour's link bucket (listed in qbx), no key of its own */
    rep = test_redis_cmd(&g_srv, "ZRANGE sb:{ws-b}:qbx 0 -1");
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 1);
    char bucket[64], link[96];
    snprintf(bucket, sizeof(bucket), "sb:{ws-b}:qb:%s", rep->element[0]->str);
    freeReplyObject(rep);
    char *got = hget(bucket, "m-3");
    snprintf(link, sizeof(link), "platform\n%s", out.a[3].id);
    assert_string_equal(got, link);
    sb_free(got);
    assert_int_equal(redis_int("EXISTS %s", "sb:{ws-b}:dr:m-3"), 0);
    assert_true(redis_int("PTTL %s", bucket) >
                60000 + 60000); /* the bucket outlives its messages */

    /* a batch holding a copy of a stored message, a new one, and a copy of that */
    sb_queue_msg again[3] = {msg("ws-b", "m-0", REQ), msg("ws-b", "m-new", REQ),
                             msg("ws-b", "m-new", REQ)};
    answers out2;
    slot slots2[3];
    assert_int_equal(append_batch(f, again, 3, &out2, slots2), 1);
    assert_true(out2.a[0].duplicate);
    assert_string_equal(out2.a[0].id, out.a[0].id);
    assert_false(out2.a[1].duplicate);
    assert_true(out2.a[2].duplicate);
    assert_string_equal(out2.a[2].id, out2.a[1].id);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-b}:q:ready"), 6);
}

/* The expiry sweep runs when a batch's sequences cross a multiple of 16: a short-lived
 * message (sequence 1) is still queued after a batch taking 2..14, and dead after the next
 * batch takes 15..17. */
static void test_batch_sweeps_across_the_boundary(void **state)
{
    fixture *f = *state;
    sb_queue_msg s = msg("ws-s", "m-short", REQ);
    s.ttl_ms = 30;
    answers one;
    slot sl[1];
    assert_int_equal(append_batch(f, &s, 1, &one, sl), 1);
    test_sleep_ms(60);
    char mids[16][16];
    sb_queue_msg ms[16];
    msgs("ws-s", 16, mids, ms);
    answers out;
    slot slots[16];
    assert_int_equal(append_batch(f, ms, 13, &out, slots), 1);
    char key[96];
    snprintf(key, sizeof(key), "sb:{ws-s}:msg:%s", one.a[0].id);
    char *st = hget(key, "state");
    assert_string_equal(st, "queued");
    sb_free(st);
    assert_int_equal(redis_int("LLEN %s", "sb:{ws-s}:q:dead"), 0);
    assert_int_equal(append_batch(f, ms + 13, 3, &out, slots), 1);
    st = hget(key, "state");
    assert_string_equal(st, "dead");
    sb_free(st);
    assert_int_equal(redis_int("LLEN %s", "sb:{ws-s}:q:dead"), 1);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-s}:q:ready"), 16);
}

/* The wake-up goes out when the ready set was empty before the batch, not for a batch
 * joining waiting messages. */
static void test_batch_publishes_only_into_an_empty_queue(void **state)
{
    fixture *f = *state;
    sb_queue_msg ms[2] = {msg("ws-p", "m-1", REQ), msg("ws-p", "m-2", REQ)};
    answers out;
    slot slots[2];
    long long p0 = cmd_calls("publish");
    assert_int_equal(append_batch(f, ms, 2, &out, slots), 1);
    assert_int_equal(cmd_calls("publish") - p0, 1);
    sb_queue_msg more = msg("ws-p", "m-3", REQ);
    assert_int_equal(append_batch(f, &more, 1, &out, slots), 1);
    assert_int_equal(cmd_calls("publish") - p0, 1);
}

/* A batch that reaches 16 messages goes at once, before the turn ends (Redis works on it
 * while the rest of the turn is read): 20 appends in one turn are two script calls, the
 * first 16 and the other 4, answered and queued in order. */
static void test_batch_sent_early_at_16(void **state)
{
    fixture *f = *state;
    char mids[20][16];
    sb_queue_msg ms[20];
    msgs("ws-e", 20, mids, ms);
    answers out;
    slot slots[20];
    assert_int_equal(append_batch(f, ms, 20, &out, slots), 2);
    redisReply *rep = test_redis_cmd(&g_srv, "ZRANGE sb:{ws-e}:q:ready 0 -1");
    assert_non_null(rep);
    assert_int_equal(rep->elements, 20);
    for (int i = 0; i < 20; i++) {
        assert_string_equal(out.a[i].message_id, mids[i]);
        assert_string_equal(rep->element[i]->str, out.a[i].id);
    }
    freeReplyObject(rep);
}

/* At most three batches of a workspace are in flight: while Redis is busy (a script that
 * holds it 1 s, sent first on the same connection), the first three appends go as three
 * batches and the next two, made in later loop turns, wait and go together as one. */
static void test_batch_waits_behind_three_in_flight(void **state)
{
    fixture *f = *state;
    static const char busy[] = "local t = redis.call('TIME')\n"
                               "local s = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
                               "repeat t = redis.call('TIME')\n"
                               "until tonumber(t[1]) * 1000000 + tonumber(t[2]) - s > 1000000\n"
                               "return 1\n";
    const char *argv[] = {"EVAL", busy, "0"};
    long long calls0 = script_calls();
    assert_int_equal(sb_redis_command_argv(f->r, NULL, NULL, 3, argv, NULL), SB_OK);
    char mids[5][16];
    sb_queue_msg ms[5];
    answers out;
    memset(&out, 0, sizeof(out));
    out.n = 5;
    slot slots[5];
    sb_queue_opts o = opts();
    for (int i = 0; i < 5; i++) {
        snprintf(mids[i], sizeof(mids[i]), "m-%d", i);
        ms[i] = msg("ws-w", mids[i], REQ);
        slots[i].all = &out;
        slots[i].i = i;
        assert_int_equal(sb_queue_append(f->r, &o, &ms[i], on_rec, &slots[i]), SB_OK);
        test_run_for(f->base, 20); /* one loop turn or more: the batch is sent or held */
    }
    assert_int_equal(out.done, 0); /* Redis is still busy */
    want_n w = {&out, 5};
    assert_true(test_run_until(f->base, all_done, &w, 3000));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(out.a[i].err, SB_OK);
        assert_false(out.a[i].duplicate);
    }
    assert_int_equal(script_calls() - calls0, 1 + 4); /* the busy one, then four batches */
    redisReply *rep = test_redis_cmd(&g_srv, "ZRANGE sb:{ws-w}:q:ready 0 -1");
    assert_non_null(rep);
    assert_int_equal(rep->elements, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(rep->element[i]->str, out.a[i].id);
    freeReplyObject(rep);
}

/* Fallback notes: the same notes, once as one batch (folded by record.c's hook) and once
 * appended one at a time on another workspace, leave equal counters. */
static void append_with_notes(fixture *f, const char *ws, int batched, long long *calls)
{
    static const sb_reason reasons[] = {
        SB_REASON_POLL_MODE,   SB_REASON_POLL_MODE, SB_REASON_NO_ENDPOINT, SB_REASON_NO_ENDPOINT,
        SB_REASON_NO_ENDPOINT, SB_REASON_POLL_MODE, SB_REASON_POLL_MODE};
    enum { N = SB_ARRAY_LEN(reasons) };
    char mids[N][16];
    sb_queue_msg ms[N];
    sb_record_note_args na[N];
    for (int i = 0; i < N; i++) {
        /* the last one is a copy of the first: a duplicate, still counted */
        snprintf(mids[i], sizeof(mids[i]), "m-%d", i == N - 1 ? 0 : i);
        ms[i] = msg(ws, mids[i], REQ);
        ms[i].reason = reasons[i];
        sb_record_note n = {.ws = ws,
                            .kind = SB_NOTE_FALLBACK,
                            .reason = reasons[i],
                            .detail = i == 2 ? "other detail" : "same detail",
                            .at_ms = 1700000000000 + i * 7,
                            .retain_ms = 60000};
        sb_record_note_inline(&n, &na[i]);
        ms[i].after_lua = sb_record_note_after_lua();
        ms[i].after_argv = na[i].argv;
        ms[i].after_nkeys = na[i].nkeys;
        ms[i].after_nargs = na[i].nargs;
        ms[i].before_send = sb_record_notes_send_now;
    }
    answers out;
    slot slots[N];
    if (batched) {
        *calls = append_batch(f, ms, N, &out, slots);
        assert_true(out.a[N - 1].duplicate);
    } else {
        *calls = 0;
        for (int i = 0; i < N; i++)
            *calls += append_batch(f, &ms[i], 1, &out, slots);
    }
}

/* The hash at |key| as "field=value\n" lines sorted by field (a new string). */
static char *hash_text(const char *key)
{
    redisReply *rep = test_redis_cmd(&g_srv, "HGETALL %s", key);
    assert_non_null(rep);
    assert_true(rep->elements > 0);
    /* "field=value\n" lines, sorted by field */
    size_t n = rep->elements / 2;
    char **lines = sb_calloc(n, sizeof(char *));
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(rep->element[2 * i]->str) + strlen(rep->element[2 * i + 1]->str) + 3;
        lines[i] = sb_malloc(len);
        snprintf(lines[i], len, "%s=%s\n", rep->element[2 * i]->str, rep->element[2 * i + 1]->str);
        total += len;
    }
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(lines[j - 1], lines[j]) > 0; j--) {
            char *t = lines[j];
            lines[j] = lines[j - 1];
            lines[j - 1] = t;
        }
    char *out = sb_calloc(1, total);
    for (size_t i = 0; i < n; i++) {
        strcat(out, lines[i]);
        sb_free(lines[i]);
    }
    sb_free(lines);
    freeReplyObject(rep);
    return out;
}

static char *dstats(const char *ws)
{
    char key[64];
    snprintf(key, sizeof(key), "sb:{%s}:dstats", ws);
    return hash_text(key);
}

/* What an append leaves behind: every key it wrote expires (a key without one would stay
 * for good), and a duplicate leaves nothing of its own — no message key — and the stored
 * copy exactly as it was, although it brought another request. A batch of fallbacks with
 * their counters (record.c's hook) and an in-batch copy, then one of copies of stored
 * messages with other requests, a second sender's message with a taken messageId (its
 * link goes to dr:) and a new message of another lifetime. */
static void test_batch_every_key_expires(void **state)
{
    fixture *f = *state;
    assert_int_equal(test_redis_flushall(&g_srv), 0);
    long long calls;
    append_with_notes(f, "ws-ttl", 1, &calls); /* m-0 … m-5 queued, a copy of m-0 */
    assert_int_equal(calls, 1);
    char *m1 = NULL, *before = NULL, key1[96];
    redisReply *rep = test_redis_cmd(&g_srv, "HGET sb:{ws-ttl}:q:dedup %s", "platform\nm-1");
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    m1 = sb_strdup(rep->str);
    freeReplyObject(rep);
    snprintf(key1, sizeof(key1), "sb:{ws-ttl}:msg:%s", m1);
    before = hash_text(key1);
    sb_queue_msg ms[4] = {msg("ws-ttl", "m-1", "{\"other\":1}"), msg("ws-ttl", "m-2", REQ),
                          msg("ws-ttl", "m-new", REQ), msg("ws-ttl", "m-1", "{\"third\":1}")};
    ms[1].source = "ws-peer";
    ms[2].ttl_ms = 5000;
    answers out;
    slot slots[4];
    assert_int_equal(append_batch(f, ms, 4, &out, slots), 1);
    assert_true(out.a[0].duplicate);
    assert_string_equal(out.a[0].id, m1);
    assert_false(out.a[1].duplicate);
    assert_false(out.a[2].duplicate);
    assert_true(out.a[3].duplicate);
    char *after = hash_text(key1);
    assert_string_equal(after, before);
    /* one message key per queued message: 6, then 2 more */
    rep = test_redis_cmd(&g_srv, "KEYS sb:{ws-ttl}:msg:*");
    assert_int_equal(rep->elements, 8);
    freeReplyObject(rep);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-ttl}:q:ready"), 8);
    assert_int_equal(redis_int("EXISTS %s", "sb:{ws-ttl}:dr:m-2"), 1);
    /* the keys proto/redis-schema.md gives no expiry: the queue's sets (gone with their
     * last member), its counters and the global queue index; every other key expires */
    static const char *const kept[] = {"sb:{ws-ttl}:q:ready", "sb:{ws-ttl}:q:expiry",
                                       "sb:{ws-ttl}:q:dedup", "sb:{ws-ttl}:q:seq",
                                       "sb:{ws-ttl}:q:stats", SB_QUEUE_ACTIVE_KEY};
    rep = test_redis_cmd(&g_srv, "KEYS *");
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_true(rep->elements > 8 + SB_ARRAY_LEN(kept));
    for (size_t i = 0; i < rep->elements; i++) {
        const char *k = rep->element[i]->str;
        int keep = 0;
        for (size_t j = 0; j < SB_ARRAY_LEN(kept); j++)
            keep |= strcmp(k, kept[j]) == 0;
        long long ttl = redis_int("PTTL %s", k);
        if (keep != (ttl == -1))
            fprintf(stderr, "%s: PTTL %lld\n", k, ttl);
        assert_true(keep ? ttl == -1 : ttl > 0);
    }
    freeReplyObject(rep);
    sb_free(m1);
    sb_free(before);
    sb_free(after);
}

static void test_batch_counters_equal_unbatched(void **state)
{
    fixture *f = *state;
    long long batched_calls, single_calls;
    append_with_notes(f, "ws-one", 0, &single_calls);
    append_with_notes(f, "ws-all", 1, &batched_calls);
    assert_int_equal(single_calls, 7);
    assert_int_equal(batched_calls, 1);
    char *one = dstats("ws-one"), *all = dstats("ws-all");
    assert_string_equal(all, one);
    assert_non_null(strstr(all, "fallbacks=7\n"));
    assert_non_null(strstr(all, "streak_count=2\n"));
    assert_non_null(strstr(all, "streak_since_ms=1700000000035\n"));
    assert_non_null(strstr(all, "fb_no_endpoint=3\n"));
    sb_free(one);
    sb_free(all);
}

/* ---- the drain's batched lease and ack ---- */

typedef struct leased {
    int done, err;
    size_t n;
    char ids[4][32], state[4][16], request[4][96], message_id[4][16], source[4][16];
    int64_t lease_until[4], updated[4], now;
    int delivery_count[4], has_detail[4];
} leased;

static void on_leased(int err, const sb_queue_batch *b, void *arg)
{
    leased *l = arg;
    l->done = 1;
    l->err = err;
    if (b == NULL)
        return;
    l->n = b->n;
    l->now = b->now_ms;
    for (size_t i = 0; i < b->n && i < 4; i++) {
        cp(l->ids[i], sizeof(l->ids[i]), b->items[i].id);
        cp(l->state[i], sizeof(l->state[i]), sb_queue_state_name(b->items[i].state));
        cp(l->request[i], sizeof(l->request[i]), b->items[i].request);
        l->lease_until[i] = b->items[i].lease_until_ms;
        l->updated[i] = b->items[i].updated_at_ms;
        l->delivery_count[i] = b->items[i].delivery_count;
        cp(l->message_id[i], sizeof(l->message_id[i]), b->items[i].message_id);
        cp(l->source[i], sizeof(l->source[i]), b->items[i].source);
        l->has_detail[i] = b->items[i].detail != NULL;
    }
}

static int leased_done(void *arg)
{
    return ((leased *)arg)->done;
}

typedef struct acked {
    int done, err, codes[4];
    size_t n;
} acked;

static void on_acked(int err, const int *codes, size_t n, void *arg)
{
    acked *k = arg;
    k->done = 1;
    k->err = err;
    k->n = n;
    for (size_t i = 0; codes != NULL && i < n && i < 4; i++)
        k->codes[i] = codes[i];
}

static int acked_done(void *arg)
{
    return ((acked *)arg)->done;
}

/* The redelivery lease answers each message with what its push needs as it now is
 * (leased, its lease end, the time, the request, no delivery counted; nothing else) and moves them
 * from ready to leased; the batched ack appends each one's attempt (also to a message it may not
 * ack), acks the queued and leased ones, takes them out of every set and their dedup fields, drops
 * their request and starts their retention. */
static void test_drain_lease_and_ack_batched(void **state)
{
    fixture *f = *state;
    char mids[3][16];
    sb_queue_msg ms[3];
    msgs("ws-d", 3, mids, ms);
    answers out;
    slot slots[3];
    append_batch(f, ms, 3, &out, slots);
    sb_queue_opts o = opts();
    leased l;
    memset(&l, 0, sizeof(l));
    assert_int_equal(sb_queue_redeliver_lease(f->r, &o, "ws-d", 2, 30000, on_leased, &l), SB_OK);
    assert_true(test_run_until(f->base, leased_done, &l, 3000));
    assert_int_equal(l.err, SB_OK);
    assert_int_equal(l.n, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(l.ids[i], out.a[i].id);
        assert_string_equal(l.state[i], "leased");
        assert_string_equal(l.request[i], REQ);
        assert_int_equal(l.lease_until[i], l.now + 30000);
        assert_int_equal(l.updated[i], l.now);
        assert_int_equal(l.delivery_count[i], 0);
        assert_string_equal(l.message_id[i], mids[i]);
        assert_string_equal(l.source[i], "platform");
        assert_true(l.has_detail[i]); /* the head carries every unchanging field */
        char key[96];
        snprintf(key, sizeof(key), "sb:{ws-d}:msg:%s", l.ids[i]);
        char *st = hget(key, "state"), *lu = hget(key, "lease_until_ms");
        assert_string_equal(st, "leased");
        assert_int_equal(strtoll(lu, NULL, 10), l.now + 30000);
        sb_free(st);
        sb_free(lu);
        redisReply *sc = test_redis_cmd(&g_srv, "ZSCORE sb:{ws-d}:q:leased %s", l.ids[i]);
        assert_int_equal(strtoll(sc->str, NULL, 10), l.now + 30000);
        freeReplyObject(sc);
    }
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-d}:q:ready"), 1);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-d}:q:leased"), 2);

    /* the third one dead before the ack: it gets its attempt, not the ack */
    char key2[96];
    snprintf(key2, sizeof(key2), "sb:{ws-d}:msg:%s", out.a[2].id);
    redisReply *rep = test_redis_cmd(&g_srv, "HSET %s state dead", key2);
    freeReplyObject(rep);
    /* the first names its dedup field (as the drain does), the others leave it to the
     * script to read */
    sb_queue_drained items[] = {{out.a[0].id, "{\"n\":0}", "{\"ok\":1}", NULL, "platform", mids[0]},
                                {out.a[1].id, "{\"n\":1}", NULL, "{\"code\":-1}", NULL, NULL},
                                {out.a[2].id, "{\"n\":2}", NULL, NULL, NULL, NULL},
                                {"q_000000000000000000000000", "{}", NULL, NULL, NULL, NULL}};
    acked k;
    memset(&k, 0, sizeof(k));
    assert_int_equal(sb_queue_redeliver_ack(f->r, &o, "ws-d", items, 4, on_acked, &k), SB_OK);
    assert_true(test_run_until(f->base, acked_done, &k, 3000));
    assert_int_equal(k.err, SB_OK);
    int want[] = {0, 0, 1, -1};
    for (int i = 0; i < 4; i++)
        assert_int_equal(k.codes[i], want[i]);
    for (int i = 0; i < 2; i++) {
        char key[96], attempts[32];
        snprintf(key, sizeof(key), "sb:{ws-d}:msg:%s", out.a[i].id);
        char *st = hget(key, "state"), *at = hget(key, "attempts"), *req = hget(key, "request");
        assert_string_equal(st, "acked");
        snprintf(attempts, sizeof(attempts), "[{\"n\":%d}]", i);
        assert_string_equal(at, attempts);
        assert_null(req);
        sb_free(st);
        sb_free(at);
        char *sig = hget(key, "attempt_sig"); /* no attempt left one: not written */
        assert_null(sig);
        long long ttl = redis_int("PTTL %s", key);
        assert_true(ttl > 0 && ttl <= 60000);
        char dedup[48];
        snprintf(dedup, sizeof(dedup), "platform\n%s", mids[i]);
        redisReply *hx =
            test_redis_cmd(&g_srv, "HEXISTS sb:{ws-d}:q:dedup %b", dedup, strlen(dedup));
        assert_int_equal(hx->integer, 0);
        freeReplyObject(hx);
    }
    char *r0 = hget("sb:{ws-d}:msg:q_dummy", "x");
    assert_null(r0);
    char key0[96];
    snprintf(key0, sizeof(key0), "sb:{ws-d}:msg:%s", out.a[0].id);
    char *res = hget(key0, "result");
    assert_string_equal(res, "{\"ok\":1}");
    sb_free(res);
    char *dead_at = hget(key2, "attempts"), *dead_st = hget(key2, "state");
    assert_string_equal(dead_at, "[{\"n\":2}]");
    assert_string_equal(dead_st, "dead");
    sb_free(dead_at);
    sb_free(dead_st);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-d}:q:leased"), 0);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-d}:q:expiry"), 1); /* the "dead" one */
    char *dr = hget("sb:{ws-d}:q:stats", "drained");
    assert_string_equal(dr, "2");
    sb_free(dr);
}

/* The redelivery lease forgets a message whose hash is gone (without making an empty one:
 * its HSET tells), and leaves out of its batch one whose request is gone when it is read
 * (as after an ack by someone else between the lease and the read); the others come back
 * whole, in order. */
static void test_drain_lease_skips_gone_messages(void **state)
{
    fixture *f = *state;
    char mids[4][16];
    sb_queue_msg ms[4];
    msgs("ws-g", 4, mids, ms);
    answers out;
    slot slots[4];
    append_batch(f, ms, 4, &out, slots);
    char key1[96], key2[96];
    snprintf(key1, sizeof(key1), "sb:{ws-g}:msg:%s", out.a[1].id);
    snprintf(key2, sizeof(key2), "sb:{ws-g}:msg:%s", out.a[2].id);
    freeReplyObject(test_redis_cmd(&g_srv, "DEL %s", key1));
    freeReplyObject(test_redis_cmd(&g_srv, "HDEL %s request", key2));
    sb_queue_opts o = opts();
    leased l;
    memset(&l, 0, sizeof(l));
    assert_int_equal(sb_queue_redeliver_lease(f->r, &o, "ws-g", 4, 30000, on_leased, &l), SB_OK);
    assert_true(test_run_until(f->base, leased_done, &l, 3000));
    assert_int_equal(l.err, SB_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.ids[0], out.a[0].id);
    assert_string_equal(l.ids[1], out.a[3].id);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(l.request[i], REQ);
        assert_string_equal(l.state[i], "leased");
        assert_string_equal(l.message_id[i], mids[i == 0 ? 0 : 3]);
    }
    assert_int_equal(redis_int("EXISTS %s", key1), 0);
    assert_int_equal(redis_int("ZSCORE sb:{ws-g}:q:leased %s", out.a[1].id), -1);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-g}:q:ready"), 0);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-g}:q:expiry"), 3);
}

typedef struct looked {
    int done, err;
    size_t n;
    char src[4][32], id[4][32];
} looked;

static void on_looked(int err, const sb_queue_lookup_item *items, size_t n, void *arg)
{
    looked *l = arg;
    l->done = 1;
    l->err = err;
    l->n = n;
    for (size_t i = 0; i < n && i < 4; i++) {
        cp(l->src[i], sizeof(l->src[i]), items[i].source);
        cp(l->id[i], sizeof(l->id[i]), items[i].rec != NULL ? items[i].rec->id : NULL);
    }
}

static int looked_done(void *arg)
{
    return ((looked *)arg)->done;
}

static void lookup(fixture *f, const char *ws, const char *mid, looked *l)
{
    sb_queue_opts o = opts();
    memset(l, 0, sizeof(*l));
    assert_int_equal(sb_queue_lookup(f->r, &o, ws, mid, on_looked, l), SB_OK);
    assert_true(test_run_until(f->base, looked_done, l, 3000));
    assert_int_equal(l->err, SB_OK);
}

/* Queued records by messageId (layout 3's link buckets): two senders of one messageId in
 * one batch (the second's link goes to the shared record hash), each found; a sender that
 * sends the messageId again once its first copy is acked is found at its newest. */
static void test_record_links_in_buckets(void **state)
{
    fixture *f = *state;
    /* a bucket whose records ended: the append that opens the next bucket unlinks it */
    freeReplyObject(test_redis_cmd(&g_srv, "ZADD sb:{ws-l}:qbx 1000 1"));
    freeReplyObject(test_redis_cmd(&g_srv, "HSET sb:{ws-l}:qb:1 m-old x"));
    sb_queue_msg ms[2] = {msg("ws-l", "m-x", REQ), msg("ws-l", "m-x", REQ)};
    ms[1].source = "ws-peer";
    ms[1].kind = "delegation";
    answers out;
    slot slots[2];
    append_batch(f, ms, 2, &out, slots);
    assert_false(out.a[1].duplicate);
    assert_int_equal(redis_int("HLEN %s", "sb:{ws-l}:dr:m-x"), 1); /* ws-peer's, shared */
    assert_int_equal(redis_int("EXISTS %s", "sb:{ws-l}:qb:1"), 0);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-l}:qbx"), 1);
    looked l;
    lookup(f, "ws-l", "m-x", &l);
    assert_int_equal(l.n, 2);
    for (size_t i = 0; i < 2; i++) {
        int peer = strcmp(l.src[i], "ws-peer") == 0;
        assert_string_equal(l.src[i], peer ? "ws-peer" : "platform");
        assert_string_equal(l.id[i], out.a[peer ? 1 : 0].id);
    }
    /* platform's copy acked, then sent again: its newest record is the one found */
    sb_queue_opts o = opts();
    answers ack;
    memset(&ack, 0, sizeof(ack));
    slot as = {&ack, 0};
    want_n w = {&ack, 1};
    assert_int_equal(sb_queue_ack(f->r, &o, "ws-l", out.a[0].id, NULL, NULL, 0, on_rec, &as),
                     SB_OK);
    assert_true(test_run_until(f->base, all_done, &w, 3000));
    assert_int_equal(ack.a[0].state, SB_QSTATE_ACKED);
    answers again;
    slot s2[1];
    append_batch(f, ms, 1, &again, s2);
    assert_false(again.a[0].duplicate);
    lookup(f, "ws-l", "m-x", &l);
    assert_int_equal(l.n, 2);
    for (size_t i = 0; i < 2; i++)
        if (strcmp(l.src[i], "platform") == 0)
            assert_string_equal(l.id[i], again.a[0].id);
    lookup(f, "ws-l", "m-none", &l);
    assert_int_equal(l.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_answers_each_caller, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_sweeps_across_the_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_publishes_only_into_an_empty_queue, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_batch_sent_early_at_16, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_waits_behind_three_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_counters_equal_unbatched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_lease_and_ack_batched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_lease_skips_gone_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_links_in_buckets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_every_key_expires, setup, teardown),
    };
    return cmocka_run_group_tests_name("queue_batch", tests, group_setup, group_teardown);
}
