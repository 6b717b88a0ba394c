/*
 * test_record.c — delivery notes made while Redis is unreachable (record.c backlog),
 * against a real redis-server: held in order while the connection is down, written once
 * it is up again (the record of a pushed message appears), bounded at
 * SB_RECORD_BACKLOG_MAX with the excess counted in
 * switchboard_record_notes_dropped_total, and freed by sb_record_backlog_clear.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "redis_harness.h"
#include "switchboard/common.h"
#include "switchboard/metrics.h"
#include "switchboard/queue.h"
#include "switchboard/record.h"
#include "switchboard/redis.h"

static int is_up(void *arg)
{
    return sb_redis_is_up(arg);
}

static int is_down(void *arg)
{
    return !sb_redis_is_up(arg);
}

static int backlog_empty(void *arg)
{
    return sb_record_backlog_len() == 0;
}

static void note_push(sb_redis *r, const char *ws, const char *mid)
{
    char record[256];
    snprintf(record, sizeof(record),
             "{\"message_id\":\"%s\",\"workspace_id\":\"%s\",\"source\":\"platform\","
             "\"mode\":\"push\",\"state\":\"delivered\"}",
             mid, ws);
    sb_record_note n = {.ws = ws,
                        .kind = SB_NOTE_DELIVERED,
                        .reason = SB_REASON_NONE,
                        .detail = "POST http://127.0.0.1:9/ → 200",
                        .http_status = 200,
                        .pushed = 1,
                        .duration_ms = 1.5,
                        .at_ms = sb_now_wall_ms(),
                        .message_id = mid,
                        .source = "platform",
                        .record_json = record,
                        .retain_ms = 60000};
    sb_record_note_send(r, &n);
}

/* The value of an unlabelled series in the exposition, or -1. */
static long long metric(const char *name)
{
    struct evbuffer *b = evbuffer_new();
    sb_metrics_render(b, NULL);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    char needle[128];
    snprintf(needle, sizeof(needle), "\n%s ", name);
    const char *p = strstr(text, needle);
    long long v = p != NULL ? strtoll(p + strlen(needle), NULL, 10) : -1;
    evbuffer_free(b);
    return v;
}

/* The pushed record (JSON) of |mid| in |ws|'s live buckets, newest first, or NULL
 * (release with freeReplyObject). */
static redisReply *pushed_record(test_redis *srv, const char *ws, const char *mid)
{
    redisReply *live = test_redis_cmd(srv, "ZRANGE " SB_RECORD_BUCKETS_KEY_FMT " 0 -1", ws);
    assert_non_null(live);
    redisReply *found = NULL;
    for (size_t i = live->elements; i-- > 0 && found == NULL;) {
        redisReply *v = test_redis_cmd(srv, "HGET " SB_RECORD_BUCKET_KEY_FMT " %s", ws,
                                       live->element[i]->str, mid);
        if (v != NULL && v->type == REDIS_REPLY_STRING)
            found = v;
        else if (v != NULL)
            freeReplyObject(v);
    }
    freeReplyObject(live);
    return found;
}

/* A fresh redis-server and a connection to it on a new loop, up (the tests' common start);
 * fixture_down undoes it. */
static sb_redis *fixture_up(test_redis *srv, struct event_base **base)
{
    test_quiet_logs();
    signal(SIGPIPE, SIG_IGN);
    memset(srv, 0, sizeof(*srv));
    assert_int_equal(test_redis_start(srv, test_free_port()), 0);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv->port);
    *base = event_base_new();
    sb_redis *r = sb_redis_new(*base, url, sb_record_redis_state, NULL);
    assert_true(test_run_until(*base, is_up, r, 10000));
    return r;
}

static void fixture_down(test_redis *srv, struct event_base *base, sb_redis *r)
{
    sb_redis_free(r);
    event_base_free(base);
    test_redis_stop(srv);
}

static void test_held_while_down_written_when_back(void **state)
{
    test_quiet_logs();
    signal(SIGPIPE, SIG_IGN);
    sb_metrics_test_reset();
    test_redis srv;
    memset(&srv, 0, sizeof(srv));
    int port = test_free_port();
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, url, sb_record_redis_state, NULL);
    test_run_for(base, 50);
    assert_false(sb_redis_is_up(r));

    note_push(r, "rec-ws", "m-1");
    note_push(r, "rec-ws", "m-2");
    note_push(r, "rec-ws", "m-3");
    assert_int_equal(sb_record_backlog_len(), 3);
    assert_int_equal(metric("switchboard_record_notes_deferred_total"), 3);

    assert_int_equal(test_redis_start(&srv, port), 0);
    assert_true(test_run_until(base, is_up, r, 10000));
    assert_true(test_run_until(base, backlog_empty, NULL, 3000));
    test_run_for(base, 100); /* the replies */
    for (int i = 1; i <= 3; i++) {
        redisReply *rep = pushed_record(&srv, "rec-ws", i == 1 ? "m-1" : i == 2 ? "m-2" : "m-3");
        assert_non_null(rep);
        assert_int_equal(rep->type, REDIS_REPLY_STRING);
        assert_non_null(strstr(rep->str, "\"source\":\"platform\""));
        assert_non_null(strstr(rep->str, "\"delivered\""));
        freeReplyObject(rep);
    }
    redisReply *pushes = test_redis_cmd(&srv, "HGET sb:{rec-ws}:dstats pushes");
    assert_non_null(pushes);
    assert_string_equal(pushes->str, "3");
    freeReplyObject(pushes);

    /* The bound: Redis gone again, more notes than the backlog holds. */
    test_redis_kill(&srv);
    assert_true(test_run_until(base, is_down, r, 5000));
    for (int i = 0; i < SB_RECORD_BACKLOG_MAX + 7; i++) {
        char mid[32];
        snprintf(mid, sizeof(mid), "b-%d", i);
        note_push(r, "rec-ws", mid);
    }
    assert_int_equal(sb_record_backlog_len(), SB_RECORD_BACKLOG_MAX);
    assert_int_equal(metric("switchboard_record_notes_dropped_total"), 7);
    assert_int_equal(metric("switchboard_record_notes_deferred_total"), 3 + SB_RECORD_BACKLOG_MAX);
    sb_record_backlog_clear();
    assert_int_equal(sb_record_backlog_len(), 0);

    fixture_down(&srv, base, r);
}

static long long script_calls(test_redis *srv)
{
    redisReply *rep = test_redis_cmd(srv, "INFO commandstats");
    assert_non_null(rep);
    long long n = 0;
    for (const char *name = "cmdstat_eval:calls="; name != NULL;
         name = strcmp(name, "cmdstat_eval:calls=") == 0 ? "cmdstat_evalsha:calls=" : NULL) {
        const char *p = strstr(rep->str, name);
        if (p != NULL)
            n += strtoll(p + strlen(name), NULL, 10);
    }
    freeReplyObject(rep);
    return n;
}

static long long counter(test_redis *srv, const char *ws, const char *field)
{
    redisReply *rep = test_redis_cmd(srv, "HGET sb:{%s}:dstats %s", ws, field);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_STRING ? strtoll(rep->str, NULL, 10) : -1;
    freeReplyObject(rep);
    return v;
}

/* The delivered pushes of one loop turn go out at its end, one script call per
 * workspace; other notes at once; in order per workspace. */
static void test_one_call_per_workspace_per_turn(void **state)
{
    test_redis srv;
    struct event_base *base;
    sb_redis *r = fixture_up(&srv, &base);
    long long before = script_calls(&srv);

    note_push(r, "turn-a", "a-1");
    note_push(r, "turn-b", "b-1");
    note_push(r, "turn-a", "a-2");
    note_push(r, "turn-b", "b-2");
    assert_int_equal(sb_record_backlog_len(), 4); /* nothing sent inside the turn */
    assert_true(test_run_until(base, backlog_empty, NULL, 3000));
    test_run_for(base, 100);                          /* the replies */
    assert_int_equal(script_calls(&srv) - before, 2); /* one per workspace */

    /* A fallback goes out at once, after what waits before it; the push after it ends
     * its run, in order. */
    note_push(r, "turn-a", "a-0");
    sb_record_note fb = {.ws = "turn-a",
                         .kind = SB_NOTE_FALLBACK,
                         .reason = SB_REASON_CONNECT_REFUSED,
                         .detail = "connection refused",
                         .pushed = 1,
                         .at_ms = sb_now_wall_ms(),
                         .retain_ms = 60000};
    sb_record_note_send(r, &fb);
    assert_int_equal(sb_record_backlog_len(), 0);
    note_push(r, "turn-a", "a-3");
    assert_true(test_run_until(base, backlog_empty, NULL, 3000));
    test_run_for(base, 100);
    /* a-0 + fallback: one call and the global half; a-3: one call. */
    assert_int_equal(script_calls(&srv) - before, 5);
    assert_int_equal(counter(&srv, "turn-a", "pushes"), 4);
    assert_int_equal(counter(&srv, "turn-a", "fallbacks"), 1);
    /* The push after the fallback ended its run, in order. */
    assert_int_equal(counter(&srv, "turn-a", "streak_count"), -1);
    assert_int_equal(counter(&srv, "turn-b", "pushes"), 2);
    redisReply *rec = pushed_record(&srv, "turn-a", "a-3");
    assert_non_null(rec);
    freeReplyObject(rec);
    /* Buckets expire by themselves: at most the retention plus one bucket from now. */
    redisReply *live = test_redis_cmd(&srv, "ZRANGE " SB_RECORD_BUCKETS_KEY_FMT " 0 -1", "turn-b");
    assert_int_equal(live->elements, 1);
    assert_non_null(strstr(live->element[0]->str, ":platform")); /* the sender's bucket */
    redisReply *ttl =
        test_redis_cmd(&srv, "PTTL " SB_RECORD_BUCKET_KEY_FMT, "turn-b", live->element[0]->str);
    assert_true(ttl->integer > 60000 && ttl->integer <= 60000 + SB_RECORD_BUCKET_MS + 60000);
    freeReplyObject(ttl);
    /* The script made the bucket (its placeholder field '') before the records came, so
     * it had its expiry even if they never had. */
    redisReply *ph = test_redis_cmd(&srv, "HEXISTS " SB_RECORD_BUCKET_KEY_FMT " %s", "turn-b",
                                    live->element[0]->str, "");
    assert_int_equal(ph->integer, 1);
    freeReplyObject(ph);
    freeReplyObject(live);
    rec = pushed_record(&srv, "turn-b", "b-2");
    assert_non_null(rec);
    freeReplyObject(rec);

    /* Another sender pushing the same messageId in the same call keeps both records:
     * each sender has a bucket of its own (nothing goes to the shared record hash); the
     * same sender again replaces its own. */
    sb_record_note other = {.ws = "turn-a",
                            .kind = SB_NOTE_DELIVERED,
                            .detail = "POST http://127.0.0.1:9/ → 200",
                            .http_status = 200,
                            .pushed = 1,
                            .at_ms = sb_now_wall_ms(),
                            .message_id = "a-3",
                            .source = "ws-peer",
                            .record_json = "{\"source\":\"ws-peer\"}",
                            .retain_ms = 60000};
    sb_record_note_send(r, &other);
    note_push(r, "turn-a", "a-3");
    assert_true(test_run_until(base, backlog_empty, NULL, 3000));
    test_run_for(base, 100);
    char member[64];
    snprintf(member, sizeof(member), "%lld:ws-peer",
             (long long)(other.at_ms / SB_RECORD_BUCKET_MS));
    rec = test_redis_cmd(&srv, "HGET " SB_RECORD_BUCKET_KEY_FMT " a-3", "turn-a", member);
    assert_int_equal(rec->type, REDIS_REPLY_STRING);
    assert_string_equal(rec->str, "{\"source\":\"ws-peer\"}");
    freeReplyObject(rec);
    rec = test_redis_cmd(&srv, "ZSCORE " SB_RECORD_BUCKETS_KEY_FMT " %s", "turn-a", member);
    assert_int_equal(rec->type, REDIS_REPLY_STRING); /* listed for the lookup */
    freeReplyObject(rec);
    rec = pushed_record(&srv, "turn-a", "a-3");
    assert_non_null(rec);
    freeReplyObject(rec);
    rec = test_redis_cmd(&srv, "EXISTS " SB_RECORD_KEY_FMT, "turn-a", "a-3");
    assert_int_equal(rec->integer, 0);
    freeReplyObject(rec);
    assert_int_equal(counter(&srv, "turn-a", "pushes"), 6);

    sb_record_backlog_clear();
    fixture_down(&srv, base, r);
}

/* The lookup's answer: each sender's pushed record text, in order. */
typedef struct found {
    int done, err;
    size_t n;
    char source[4][32], text[4][128];
} found;

static void on_lookup(int err, const sb_queue_lookup_item *items, size_t n, void *arg)
{
    found *f = arg;
    f->done = 1;
    f->err = err;
    f->n = n;
    for (size_t i = 0; i < n && i < 4; i++) {
        snprintf(f->source[i], sizeof(f->source[i]), "%s", items[i].source);
        snprintf(f->text[i], sizeof(f->text[i]), "%s",
                 items[i].record_json ? items[i].record_json : "");
    }
}

static int lookup_done(void *arg)
{
    return ((found *)arg)->done;
}

/* Records written by earlier builds — one bucket of every sender, sb:{ws}:pb:<n> listed
 * as "<n>" in pbx, and a second sender's record in the shared record hash — are found by
 * messageId next to the per-sender buckets this build writes, until they expire. */
static void test_earlier_bucket_shape_still_found(void **state)
{
    test_redis srv;
    struct event_base *base;
    sb_redis *r = fixture_up(&srv, &base);

    long long now = (long long)sb_now_wall_ms(), old = now / SB_RECORD_BUCKET_MS - 1;
    long long until = (old + 1) * SB_RECORD_BUCKET_MS + 60000;
    freeReplyObject(test_redis_cmd(&srv, "HSET sb:{shape}:pb:%lld m-1 %s", old,
                                   "{\"source\":\"platform\",\"kind\":\"old\"}"));
    freeReplyObject(test_redis_cmd(&srv, "PEXPIREAT sb:{shape}:pb:%lld %lld", old, until));
    freeReplyObject(test_redis_cmd(&srv, "ZADD sb:{shape}:pbx %lld %lld", until, old));
    freeReplyObject(test_redis_cmd(&srv, "HSET sb:{shape}:dr:m-1 ws-old %s",
                                   "{\"source\":\"ws-old\",\"kind\":\"old\"}"));
    sb_record_note peer = {.ws = "shape",
                           .kind = SB_NOTE_DELIVERED,
                           .detail = "POST http://127.0.0.1:9/ → 200",
                           .http_status = 200,
                           .pushed = 1,
                           .at_ms = sb_now_wall_ms(),
                           .message_id = "m-1",
                           .source = "ws-new",
                           .record_json = "{\"source\":\"ws-new\",\"kind\":\"new\"}",
                           .retain_ms = 60000};
    sb_record_note_send(r, &peer);
    assert_true(test_run_until(base, backlog_empty, NULL, 3000));
    test_run_for(base, 100);

    sb_queue_opts o = {5, 60000};
    found f;
    memset(&f, 0, sizeof(f));
    assert_int_equal(sb_queue_lookup(r, &o, "shape", "m-1", on_lookup, &f), SB_OK);
    assert_true(test_run_until(base, lookup_done, &f, 3000));
    assert_int_equal(f.err, SB_OK);
    assert_int_equal(f.n, 3);
    int seen = 0;
    for (size_t i = 0; i < f.n; i++) {
        if (strcmp(f.source[i], "platform") == 0 && strstr(f.text[i], "\"old\"") != NULL)
            seen |= 1;
        if (strcmp(f.source[i], "ws-old") == 0 && strstr(f.text[i], "\"old\"") != NULL)
            seen |= 2;
        if (strcmp(f.source[i], "ws-new") == 0 && strstr(f.text[i], "\"new\"") != NULL)
            seen |= 4;
    }
    assert_int_equal(seen, 7);

    sb_record_backlog_clear();
    fixture_down(&srv, base, r);
}

/* A bucket whose records are over is UNLINKed (freed off Redis' main thread) by the next
 * bucket's listing, long before its own backstop expiry, and leaves pbx. */
static void test_ended_bucket_unlinked_by_the_next(void **state)
{
    test_redis srv;
    struct event_base *base;
    sb_redis *r = fixture_up(&srv, &base);

    int64_t now = sb_now_wall_ms();
    sb_record_note n = {.ws = "ended",
                        .kind = SB_NOTE_DELIVERED,
                        .detail = "POST http://127.0.0.1:9/ → 200",
                        .http_status = 200,
                        .pushed = 1,
                        .at_ms = now - 3 * SB_RECORD_BUCKET_MS,
                        .message_id = "old",
                        .source = "platform",
                        .record_json = "{\"source\":\"platform\"}",
                        .retain_ms = 60000,
                        .record_retain_ms = 1}; /* over at its bucket's end */
    sb_record_note_send(r, &n);
    assert_true(test_run_until(base, backlog_empty, NULL, 3000)); /* a call of its own */
    n.at_ms = now;
    n.message_id = "new";
    n.record_retain_ms = 60000;
    sb_record_note_send(r, &n);
    assert_true(test_run_until(base, backlog_empty, NULL, 3000));
    test_run_for(base, 100);

    char old_member[64], new_member[64];
    snprintf(old_member, sizeof(old_member), "%lld:platform",
             (long long)((now - 3 * SB_RECORD_BUCKET_MS) / SB_RECORD_BUCKET_MS));
    snprintf(new_member, sizeof(new_member), "%lld:platform",
             (long long)(now / SB_RECORD_BUCKET_MS));
    redisReply *rep = test_redis_cmd(&srv, "EXISTS " SB_RECORD_BUCKET_KEY_FMT, "ended", old_member);
    assert_int_equal(rep->integer, 0); /* its backstop expiry was a minute away */
    freeReplyObject(rep);
    rep = test_redis_cmd(&srv, "ZRANGE " SB_RECORD_BUCKETS_KEY_FMT " 0 -1", "ended");
    assert_int_equal(rep->elements, 1);
    assert_string_equal(rep->element[0]->str, new_member);
    freeReplyObject(rep);
    rep = pushed_record(&srv, "ended", "new");
    assert_non_null(rep);
    freeReplyObject(rep);

    sb_record_backlog_clear();
    fixture_down(&srv, base, r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_held_while_down_written_when_back),
        cmocka_unit_test(test_one_call_per_workspace_per_turn),
        cmocka_unit_test(test_earlier_bucket_shape_still_found),
        cmocka_unit_test(test_ended_bucket_unlinked_by_the_next),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
