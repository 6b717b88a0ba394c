/*
 * test_queue.c — the poll queue's Lua scripts against a real redis-server: append and
 * deduplication, FIFO leases, lease expiry and redelivery, max_deliveries and expiry
 * dead letters, ack/nack/cancel state rules, the uncounted release, the wake-up
 * publication, the key layout (one hash tag per workspace), byte-exact requests in the
 * inbox form, the fast failure while Redis is down; switchboard's own redelivery lease
 * and release (no delivery counted) with collapsed attempts; dead letters listed,
 * replayed to the front and purged; plus the A2A Task shapes (task.c)
 * built from queue records in both protocol versions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "redis_harness.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/jsontext.h"
#include "switchboard/queue.h"
#include "switchboard/queue_dead.h"
#include "switchboard/redis.h"
#include "switchboard/task.h"

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
    test_fixture_free(*state);
    return 0;
}

/* The queue index is updated by a second command after the workspace's script answered:
 * runs |f|'s loop until |ws|'s membership in it is |want| (or 3 s passed). */
typedef struct index_wait {
    const char *ws;
    int want;
} index_wait;

static int in_index(const char *ws)
{
    redisReply *rep = test_redis_cmd(&g_srv, "ZSCORE %s %s", SB_QUEUE_ACTIVE_KEY, ws);
    int in = rep != NULL && rep->type == REDIS_REPLY_STRING;
    freeReplyObject(rep);
    return in;
}

static int index_is(void *arg)
{
    const index_wait *w = arg;
    return in_index(w->ws) == w->want;
}

static int index_settles(fixture *f, const char *ws, int want)
{
    index_wait w = {ws, want};
    return test_run_until(f->base, index_is, &w, 3000);
}

/* ---- synchronous wrappers over the async API ---- */

typedef struct rec_result {
    int done;
    int err;
    sb_queue_record rec;
} rec_result;

static void on_rec(int err, const sb_queue_record *rec, void *arg)
{
    rec_result *res = arg;
    res->done = 1;
    res->err = err;
    memset(&res->rec, 0, sizeof(res->rec));
    if (rec != NULL) {
        /* keep the fields the tests look at */
        res->rec = *rec;
        res->rec.id = rec->id ? sb_strdup(rec->id) : NULL;
        res->rec.task_id = rec->task_id ? sb_strdup(rec->task_id) : NULL;
        res->rec.message_id = rec->message_id ? sb_strdup(rec->message_id) : NULL;
        res->rec.context_id = rec->context_id ? sb_strdup(rec->context_id) : NULL;
        res->rec.kind = rec->kind ? sb_strdup(rec->kind) : NULL;
        res->rec.source = rec->source ? sb_strdup(rec->source) : NULL;
        res->rec.method = rec->method ? sb_strdup(rec->method) : NULL;
        res->rec.detail = rec->detail ? sb_strdup(rec->detail) : NULL;
        res->rec.dead_reason = rec->dead_reason ? sb_strdup(rec->dead_reason) : NULL;
        res->rec.result = rec->result ? sb_strdup(rec->result) : NULL;
        res->rec.error = rec->error ? sb_strdup(rec->error) : NULL;
        res->rec.a2a_version = rec->a2a_version ? sb_strdup(rec->a2a_version) : NULL;
        res->rec.user = rec->user ? sb_strdup(rec->user) : NULL;
        res->rec.attempts = rec->attempts ? sb_strdup(rec->attempts) : NULL;
        res->rec.request = NULL;
    }
}

static int rec_done(void *arg)
{
    return ((rec_result *)arg)->done;
}

typedef struct batch_result {
    int done;
    int err;
    size_t n;
    char ids[8][32];
    int counts[8];
    int64_t until[8]; /* lease_until_ms */
    char *json;       /* the inbox form of every item, concatenated */
    long long ready, leased, next_ms;
} batch_result;

static void on_batch(int err, const sb_queue_batch *b, void *arg)
{
    batch_result *res = arg;
    res->done = 1;
    res->err = err;
    if (b == NULL)
        return;
    res->n = b->n;
    res->ready = b->ready;
    res->leased = b->leased;
    res->next_ms = b->next_lease_end_ms;
    struct evbuffer *out = evbuffer_new();
    for (size_t i = 0; i < b->n && i < 8; i++) {
        snprintf(res->ids[i], sizeof(res->ids[i]), "%s", b->items[i].id);
        res->counts[i] = b->items[i].delivery_count;
        res->until[i] = b->items[i].lease_until_ms;
        sb_queue_record_write_json(&b->items[i], out);
    }
    size_t len = evbuffer_get_length(out);
    res->json = sb_malloc(len + 1);
    evbuffer_remove(out, res->json, len);
    res->json[len] = '\0';
    evbuffer_free(out);
}

static int batch_done(void *arg)
{
    return ((batch_result *)arg)->done;
}

static sb_queue_opts opts(int max_deliveries)
{
    sb_queue_opts o = {max_deliveries, 60000};
    return o;
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
                      .attempted = 0,
                      .request = request,
                      .request_len = strlen(request),
                      .ttl_ms = 60000};
    return m;
}

#define REQ(mid)                                                                                   \
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{\"message\":"           \
    "{\"messageId\":\"" mid "\",\"role\":\"user\",\"parts\":[]}}}"

static void append_ok(fixture *f, const sb_queue_opts *o, const sb_queue_msg *m, rec_result *res)
{
    memset(res, 0, sizeof(*res));
    assert_int_equal(sb_queue_append(f->r, o, m, on_rec, res), SB_OK);
    assert_true(test_run_until(f->base, rec_done, res, 3000));
    assert_int_equal(res->err, SB_OK);
}

static void lease(fixture *f, const sb_queue_opts *o, const char *ws, int max, int64_t lease_ms,
                  batch_result *res)
{
    memset(res, 0, sizeof(*res));
    assert_int_equal(sb_queue_lease(f->r, o, ws, max, lease_ms, on_batch, res), SB_OK);
    assert_true(test_run_until(f->base, batch_done, res, 3000));
    assert_int_equal(res->err, SB_OK);
}

static void batch_clear(batch_result *res)
{
    sb_free(res->json);
    res->json = NULL;
}

typedef int (*rec_op)(sb_redis *, const sb_queue_opts *, const char *, const char *,
                      sb_queue_record_fn, void *);

static void run_rec(fixture *f, rec_result *res, int rc)
{
    assert_int_equal(rc, SB_OK);
    assert_true(test_run_until(f->base, rec_done, res, 3000));
}

static long long redis_int(const char *fmt, const char *arg)
{
    redisReply *rep = test_redis_cmd(&g_srv, fmt, arg);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    freeReplyObject(rep);
    return v;
}

/* ---- tests ---- */

static void test_ids(void **state)
{
    char id[32];
    assert_true(sb_queue_valid_id("q_0123456789abcdef01234567"));
    assert_false(sb_queue_valid_id("q_0123456789abcdef0123456"));
    assert_false(sb_queue_valid_id("q_0123456789ABCDEF01234567"));
    assert_false(sb_queue_valid_id("x_0123456789abcdef01234567"));
    assert_false(sb_queue_valid_id(NULL));
    assert_int_equal(sb_queue_id_from_task("sbtask_0123456789abcdef01234567", id), SB_OK);
    assert_string_equal(id, "q_0123456789abcdef01234567");
    assert_int_equal(sb_queue_id_from_task("sbtask_nothex", id), SB_ERR_INVALID);
    assert_int_equal(sb_queue_id_from_task("task-1", id), SB_ERR_INVALID);
    assert_true(sb_task_is_ours("sbtask_x"));
    assert_false(sb_task_is_ours("agent-task-1"));
    assert_false(sb_task_is_ours(NULL));
}

static void test_append_fields_dedup_and_peek(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    sb_queue_msg m = msg("ws-a", "m-1", REQ("m-1"));
    m.a2a_version = "0.3";
    m.user = "alice";
    rec_result a, b;
    append_ok(f, &o, &m, &a);
    assert_false(a.rec.duplicate);
    assert_true(sb_queue_valid_id(a.rec.id));
    assert_string_equal(a.rec.task_id + 7, a.rec.id + 2); /* same hex */
    assert_string_equal(a.rec.context_id + 6, a.rec.id + 2);
    assert_string_equal(a.rec.message_id, "m-1");
    assert_string_equal(a.rec.kind, "chat");
    assert_string_equal(a.rec.source, "platform");
    assert_int_equal(a.rec.state, SB_QSTATE_QUEUED);
    assert_int_equal(a.rec.reason, SB_REASON_CONNECT_REFUSED);
    assert_int_equal(a.rec.delivery_count, 0);
    assert_string_equal(a.rec.a2a_version, "0.3");
    assert_string_equal(a.rec.user, "alice");
    assert_true(a.rec.expires_at_ms - a.rec.enqueued_at_ms == 60000);

    /* the same (source, messageId) again: the same task, nothing added */
    append_ok(f, &o, &m, &b);
    assert_true(b.rec.duplicate);
    assert_string_equal(b.rec.id, a.rec.id);
    /* another source with the same messageId is another message */
    sb_queue_msg m2 = m;
    m2.source = "ws-other";
    rec_result c;
    append_ok(f, &o, &m2, &c);
    assert_false(c.rec.duplicate);
    assert_string_not_equal(c.rec.id, a.rec.id);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-a}:q:ready"), 2);
    assert_true(index_settles(f, "ws-a", 1));

    batch_result p;
    memset(&p, 0, sizeof(p));
    assert_int_equal(sb_queue_peek(f->r, &o, "ws-a", 10, on_batch, &p), SB_OK);
    assert_true(test_run_until(f->base, batch_done, &p, 3000));
    assert_int_equal(p.n, 2);
    assert_int_equal(p.ready, 2);
    assert_int_equal(p.leased, 0);
    assert_string_equal(p.ids[0], a.rec.id); /* FIFO */
    assert_int_equal(p.counts[0], 0);        /* peeking delivers nothing */
    batch_clear(&p);
    sb_queue_record_clear(&a.rec);
    sb_queue_record_clear(&b.rec);
    sb_queue_record_clear(&c.rec);
}

static void test_inbox_form_is_byte_exact(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    const char *request = "{ \"jsonrpc\" : \"2.0\", \"id\": 7, \"method\":\"message/send\",\n"
                          "  \"params\":{\"message\":{\"messageId\":\"m-\\u00e9\",\"n\":1.50,"
                          "\"parts\":[{\"text\":\"h\xc3\xa9\"}]}}}";
    sb_queue_msg m = msg("ws-b", "m-\xc3\xa9", request);
    rec_result a;
    append_ok(f, &o, &m, &a);
    batch_result l;
    lease(f, &o, "ws-b", 1, 30000, &l);
    assert_int_equal(l.n, 1);
    assert_non_null(strstr(l.json, request)); /* spliced, never re-encoded */
    json_error_t jerr;
    json_t *j = json_loads(l.json, 0, &jerr);
    assert_non_null(j);
    static const char *const keys[] = {"id",          "message_id", "task_id",   "kind",
                                       "source",      "reason",     "attempted", "delivery_count",
                                       "enqueued_at", "expires_at", "request"};
    assert_int_equal(json_object_size(j), SB_ARRAY_LEN(keys));
    for (size_t i = 0; i < SB_ARRAY_LEN(keys); i++)
        assert_non_null(json_object_get(j, keys[i]));
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "connect_refused");
    assert_int_equal(json_integer_value(json_object_get(j, "delivery_count")), 1);
    assert_true(json_is_false(json_object_get(j, "attempted")));
    assert_true(json_is_object(json_object_get(j, "request")));
    json_decref(j);
    batch_clear(&l);
    sb_queue_record_clear(&a.rec);
}

static void test_fifo_lease_expiry_redelivery(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    rec_result a[3];
    const char *mids[] = {"m-1", "m-2", "m-3"};
    for (int i = 0; i < 3; i++) {
        sb_queue_msg m = msg("ws-c", mids[i], REQ("x"));
        append_ok(f, &o, &m, &a[i]);
    }
    batch_result l1, l2, l3;
    lease(f, &o, "ws-c", 2, 150, &l1);
    assert_int_equal(l1.n, 2);
    assert_string_equal(l1.ids[0], a[0].rec.id);
    assert_string_equal(l1.ids[1], a[1].rec.id);
    assert_int_equal(l1.counts[0], 1);
    assert_int_equal(l1.ready, 1);
    assert_true(l1.next_ms > 0 && l1.next_ms <= 150);

    lease(f, &o, "ws-c", 5, 150, &l2); /* only the third is available */
    assert_int_equal(l2.n, 1);
    assert_string_equal(l2.ids[0], a[2].rec.id);
    batch_clear(&l2);

    lease(f, &o, "ws-c", 5, 150, &l2); /* nothing left; the earliest lease end is known */
    assert_int_equal(l2.n, 0);
    assert_true(l2.next_ms >= 0 && l2.next_ms <= 150);

    test_sleep_ms(200);
    /* the ended leases come back first, in their original order, counted twice */
    lease(f, &o, "ws-c", 5, 30000, &l3);
    assert_int_equal(l3.n, 3);
    assert_string_equal(l3.ids[0], a[0].rec.id);
    assert_string_equal(l3.ids[1], a[1].rec.id);
    assert_string_equal(l3.ids[2], a[2].rec.id);
    assert_int_equal(l3.counts[0], 2);
    redisReply *rep = test_redis_cmd(&g_srv, "HGET sb:{ws-c}:q:stats redelivered");
    assert_non_null(rep);
    assert_string_equal(rep->str, "3");
    freeReplyObject(rep);
    batch_clear(&l1);
    batch_clear(&l2);
    batch_clear(&l3);
    for (int i = 0; i < 3; i++)
        sb_queue_record_clear(&a[i].rec);
}

static void test_max_deliveries_dead_letter(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(2);
    sb_queue_msg m = msg("ws-d", "m-dead", REQ("m-dead"));
    rec_result a, g, again;
    append_ok(f, &o, &m, &a);
    batch_result l;
    for (int i = 0; i < 2; i++) {
        lease(f, &o, "ws-d", 1, 50, &l);
        assert_int_equal(l.n, 1);
        assert_int_equal(l.counts[0], i + 1);
        batch_clear(&l);
        test_sleep_ms(80);
    }
    lease(f, &o, "ws-d", 1, 50, &l); /* the second lease ended: dead, not redelivered */
    assert_int_equal(l.n, 0);
    batch_clear(&l);
    memset(&g, 0, sizeof(g));
    run_rec(f, &g, sb_queue_get(f->r, &o, "ws-d", a.rec.id, on_rec, &g));
    assert_int_equal(g.err, SB_OK);
    assert_int_equal(g.rec.state, SB_QSTATE_DEAD);
    assert_string_equal(g.rec.dead_reason, "max_deliveries");
    redisReply *rep = test_redis_cmd(&g_srv, "LINDEX sb:{ws-d}:q:dead 0");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    json_t *dl = json_loads(rep->str, 0, NULL);
    freeReplyObject(rep);
    assert_non_null(dl);
    assert_string_equal(json_string_value(json_object_get(dl, "dead_reason")), "max_deliveries");
    assert_string_equal(json_string_value(json_object_get(dl, "id")), a.rec.id);
    json_decref(dl);
    assert_true(index_settles(f, "ws-d", 0));
    assert_true(redis_int("PTTL %s", "sb:{ws-d}:q:dead") > 0);
    /* the dedup entry went with it: the same message is a new one now */
    append_ok(f, &o, &m, &again);
    assert_false(again.rec.duplicate);
    assert_string_not_equal(again.rec.id, a.rec.id);
    sb_queue_record_clear(&a.rec);
    sb_queue_record_clear(&g.rec);
    sb_queue_record_clear(&again.rec);
}

static void test_expiry_dead_letter(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    sb_queue_msg m = msg("ws-e", "m-exp", REQ("m-exp"));
    m.ttl_ms = 50;
    rec_result a, g;
    append_ok(f, &o, &m, &a);
    test_sleep_ms(80);
    batch_result l;
    lease(f, &o, "ws-e", 1, 1000, &l);
    assert_int_equal(l.n, 0);
    batch_clear(&l);
    memset(&g, 0, sizeof(g));
    run_rec(f, &g, sb_queue_get(f->r, &o, "ws-e", a.rec.id, on_rec, &g));
    assert_int_equal(g.rec.state, SB_QSTATE_DEAD);
    assert_string_equal(g.rec.dead_reason, "expired");
    /* a finished record lives for the retention, not forever */
    long long ttl = redis_int("PTTL sb:{ws-e}:msg:%s", a.rec.id);
    assert_true(ttl > 0 && ttl <= 60000);
    sb_queue_record_clear(&a.rec);
    sb_queue_record_clear(&g.rec);
}

/* The append's own maintenance: an expired copy of the message (still queued, not yet
 * swept) never deduplicates a new one — the append settles it first (dead, "expired");
 * and every 16th append of a workspace sweeps expired messages without any other call. */
static void test_append_settles_expired_copy_and_sweeps(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    sb_queue_msg m = msg("ws-x", "m-old", REQ("m-old"));
    m.ttl_ms = 50;
    rec_result a, b;
    append_ok(f, &o, &m, &a);
    test_sleep_ms(80);
    m.ttl_ms = 60000;
    append_ok(f, &o, &m, &b);
    assert_false(b.rec.duplicate);
    assert_string_not_equal(b.rec.id, a.rec.id);
    char key[96];
    snprintf(key, sizeof(key), "sb:{ws-x}:msg:%s", a.rec.id);
    redisReply *st = test_redis_cmd(&g_srv, "HGET %s state", key);
    assert_non_null(st);
    assert_string_equal(st->str, "dead");
    freeReplyObject(st);
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-x}:q:ready"), 1);
    sb_queue_record_clear(&a.rec);
    sb_queue_record_clear(&b.rec);

    /* a short-lived message, then appends only: one of the next 16 sweeps it */
    sb_queue_msg s = msg("ws-y", "m-short", REQ("m-short"));
    s.ttl_ms = 50;
    rec_result r;
    append_ok(f, &o, &s, &r);
    sb_queue_record_clear(&r.rec);
    test_sleep_ms(80);
    char mid[16];
    for (int i = 0; i < 16; i++) {
        snprintf(mid, sizeof(mid), "m-%d", i);
        sb_queue_msg n = msg("ws-y", mid, REQ("m-n"));
        append_ok(f, &o, &n, &r);
        sb_queue_record_clear(&r.rec);
    }
    assert_int_equal(redis_int("ZCARD %s", "sb:{ws-y}:q:ready"), 16);
    assert_int_equal(redis_int("LLEN %s", "sb:{ws-y}:q:dead"), 1);
}

static void test_ack_nack_cancel_rules(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    rec_result a, b, r;
    sb_queue_msg m1 = msg("ws-f", "m-1", REQ("m-1"));
    sb_queue_msg m2 = msg("ws-f", "m-2", REQ("m-2"));
    append_ok(f, &o, &m1, &a);
    append_ok(f, &o, &m2, &b);
    batch_result l;
    lease(f, &o, "ws-f", 1, 30000, &l);
    assert_string_equal(l.ids[0], a.rec.id);
    batch_clear(&l);

    /* cancel: a leased message is not cancelable, a queued one is */
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_cancel(f->r, &o, "ws-f", a.rec.id, on_rec, &r));
    assert_int_equal(r.err, SB_ERR_FORBIDDEN);
    assert_int_equal(r.rec.state, SB_QSTATE_LEASED);
    sb_queue_record_clear(&r.rec);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_cancel(f->r, &o, "ws-f", b.rec.id, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_int_equal(r.rec.state, SB_QSTATE_CANCELED);
    sb_queue_record_clear(&r.rec);

    /* nack with uncount: available again, the delivery taken back */
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-f", a.rec.id, 1, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_int_equal(r.rec.state, SB_QSTATE_QUEUED);
    assert_int_equal(r.rec.delivery_count, 0);
    sb_queue_record_clear(&r.rec);
    /* nack of a queued message changes nothing */
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-f", a.rec.id, 0, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_int_equal(r.rec.state, SB_QSTATE_QUEUED);
    sb_queue_record_clear(&r.rec);

    /* ack with a result; again is fine and keeps the first result */
    const char *res1 = "{\"kind\":\"message\",\"role\":\"agent\",\"parts\":[]}";
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_ack(f->r, &o, "ws-f", a.rec.id, res1, NULL, 0, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_int_equal(r.rec.state, SB_QSTATE_ACKED);
    assert_string_equal(r.rec.result, res1);
    sb_queue_record_clear(&r.rec);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_ack(f->r, &o, "ws-f", a.rec.id, "{}", NULL, 0, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_string_equal(r.rec.result, res1);
    sb_queue_record_clear(&r.rec);
    /* the request is dropped once the message is done */
    redisReply *rep = test_redis_cmd(&g_srv, "HEXISTS sb:{ws-f}:msg:%s request", a.rec.id);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    /* nack or cancel after the ack: refused; ack of a canceled one too */
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-f", a.rec.id, 0, on_rec, &r));
    assert_int_equal(r.err, SB_ERR_FORBIDDEN);
    sb_queue_record_clear(&r.rec);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_ack(f->r, &o, "ws-f", b.rec.id, NULL, NULL, 0, on_rec, &r));
    assert_int_equal(r.err, SB_ERR_FORBIDDEN);
    assert_int_equal(r.rec.state, SB_QSTATE_CANCELED);
    sb_queue_record_clear(&r.rec);
    /* unknown ids */
    memset(&r, 0, sizeof(r));
    run_rec(
        f, &r,
        sb_queue_ack(f->r, &o, "ws-f", "q_000000000000000000000000", NULL, NULL, 0, on_rec, &r));
    assert_int_equal(r.err, SB_ERR_NOTFOUND);
    /* everything done: the workspace left the active set, the dedup hash is empty */
    assert_true(index_settles(f, "ws-f", 0));
    assert_int_equal(redis_int("HLEN %s", "sb:{ws-f}:q:dedup"), 0);
    sb_queue_record_clear(&a.rec);
    sb_queue_record_clear(&b.rec);
}

static void test_nack_at_max_deliveries_is_dead(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(1);
    rec_result a, r;
    sb_queue_msg m = msg("ws-g", "m-1", REQ("m-1"));
    append_ok(f, &o, &m, &a);
    batch_result l;
    lease(f, &o, "ws-g", 1, 30000, &l);
    batch_clear(&l);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-g", a.rec.id, 0, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_int_equal(r.rec.state, SB_QSTATE_DEAD);
    assert_string_equal(r.rec.dead_reason, "max_deliveries");
    sb_queue_record_clear(&r.rec);
    sb_queue_record_clear(&a.rec);
}

/* Switchboard's own redelivery: its lease counts no delivery and notes no attempt, its
 * release puts the message back quietly, so retries never make a max_deliveries dead
 * letter; identical failed attempts collapse into one with a count. */
static void test_redelivery_lease_and_collapsed_attempts(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(1);
    rec_result a, r;
    sb_queue_msg m = msg("ws-rd", "m-1", REQ("m-1"));
    append_ok(f, &o, &m, &a);
    for (int i = 0; i < 3; i++) {
        batch_result l;
        memset(&l, 0, sizeof(l));
        assert_int_equal(sb_queue_redeliver_lease(f->r, &o, "ws-rd", 1, 30000, on_batch, &l),
                         SB_OK);
        assert_true(test_run_until(f->base, batch_done, &l, 3000));
        assert_int_equal(l.n, 1);
        assert_int_equal(l.counts[0], 0);
        assert_true(l.until[0] > 0);
        int64_t until = l.until[0];
        batch_clear(&l);
        char at[64];
        snprintf(at, sizeof(at), "\"2026-12-06T05:0%d:00.000Z\"", i);
        char attempt[256];
        snprintf(attempt, sizeof(attempt),
                 "{\"at\":%s,\"outcome\":\"failed\",\"reason\":\"http_5xx\",\"drained\":true}", at);
        memset(&r, 0, sizeof(r));
        run_rec(f, &r,
                sb_queue_add_attempt(f->r, &o, "ws-rd", a.rec.id, attempt, "http_5xx|503|x", at,
                                     on_rec, &r));
        assert_int_equal(r.err, SB_OK);
        sb_queue_record_clear(&r.rec);
        /* a release that expects another lease (one taken since by someone else) leaves
         * this one alone */
        memset(&r, 0, sizeof(r));
        run_rec(f, &r,
                sb_queue_redeliver_release(f->r, &o, "ws-rd", a.rec.id, until + 1, on_rec, &r));
        assert_int_equal(r.err, SB_ERR_FORBIDDEN);
        assert_int_equal(r.rec.state, SB_QSTATE_LEASED);
        sb_queue_record_clear(&r.rec);
        memset(&r, 0, sizeof(r));
        run_rec(f, &r,
                sb_queue_redeliver_release(f->r, &o, "ws-rd", a.rec.id, i == 2 ? 0 : until, on_rec,
                                           &r));
        assert_int_equal(r.err, SB_OK);
        assert_int_equal(r.rec.state, SB_QSTATE_QUEUED); /* never dead at max_deliveries 1 */
        assert_int_equal(r.rec.delivery_count, 0);
        sb_queue_record_clear(&r.rec);
    }
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_get(f->r, &o, "ws-rd", a.rec.id, on_rec, &r));
    /* the fallback's own attempt list was empty: one collapsed entry, nothing else */
    assert_string_equal(r.rec.attempts,
                        "[{\"at\":\"2026-12-06T05:02:00.000Z\",\"outcome\":\"failed\","
                        "\"reason\":\"http_5xx\",\"drained\":true,\"count\":3,"
                        "\"first_at\":\"2026-12-06T05:00:00.000Z\","
                        "\"last_at\":\"2026-12-06T05:02:00.000Z\"}]");
    sb_queue_record_clear(&r.rec);
    sb_queue_record_clear(&a.rec);
}

/* A workspace id of the longest allowed length (SB_WS_ID_MAX) gets the same keys as any
 * other: every key name the queue scripts are given is whole, none cut short. */
static void test_longest_workspace_id_keys(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(3);
    char ws[SB_WS_ID_MAX + 1], key[SB_WS_ID_MAX + 64];
    memset(ws, 'w', SB_WS_ID_MAX);
    ws[SB_WS_ID_MAX] = '\0';
    rec_result a;
    sb_queue_msg m = msg(ws, "m-long", REQ("m-long"));
    append_ok(f, &o, &m, &a);
    snprintf(key, sizeof(key), "sb:{%s}:q:ready", ws);
    assert_int_equal(redis_int("ZCARD %s", key), 1);
    snprintf(key, sizeof(key), "sb:{%s}:q:expiry", ws);
    assert_int_equal(redis_int("ZCARD %s", key), 1);
    snprintf(key, sizeof(key), "sb:{%s}:msg:%s", ws, a.rec.id);
    assert_int_equal(redis_int("EXISTS %s", key), 1);
    batch_result l;
    lease(f, &o, ws, 5, 30000, &l);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.ids[0], a.rec.id);
    batch_clear(&l);
    sb_queue_record_clear(&a.rec);
}

/* The attempts cap (SB_QUEUE_ATTEMPTS_MAX) counts the failed push's attempt the append
 * stores: a fallback after a push keeps 50 attempts in all, not 51. */
static void test_attempts_cap_counts_the_fallback_attempt(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(1);
    rec_result a, r;
    sb_queue_msg m = msg("ws-cap", "m-1", REQ("m-1"));
    m.attempts = "[{\"at_ms\":1,\"outcome\":\"failed\",\"reason\":\"http_5xx\"}]";
    m.attempted = 1;
    append_ok(f, &o, &m, &a);
    for (int i = 0; i < SB_QUEUE_ATTEMPTS_MAX + 5; i++) {
        char attempt[128];
        snprintf(attempt, sizeof(attempt), "{\"at_ms\":%d,\"outcome\":\"failed\"}", i + 2);
        memset(&r, 0, sizeof(r));
        run_rec(
            f, &r,
            sb_queue_add_attempt(f->r, &o, "ws-cap", a.rec.id, attempt, NULL, NULL, on_rec, &r));
        assert_int_equal(r.err, SB_OK);
        sb_queue_record_clear(&r.rec);
    }
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_get(f->r, &o, "ws-cap", a.rec.id, on_rec, &r));
    assert_non_null(r.rec.attempts);
    int n = 0;
    for (const char *p = r.rec.attempts; (p = strstr(p, "\"outcome\"")) != NULL; p++)
        n++;
    assert_int_equal(n, SB_QUEUE_ATTEMPTS_MAX);
    /* the first is the fallback's own, the last kept is the 49th added */
    assert_non_null(strstr(r.rec.attempts, "\"reason\":\"http_5xx\""));
    assert_non_null(strstr(r.rec.attempts, "\"at_ms\":50,"));
    assert_null(strstr(r.rec.attempts, "\"at_ms\":51,"));
    sb_queue_record_clear(&r.rec);
    sb_queue_record_clear(&a.rec);
}

typedef struct acks_result {
    int done;
    int err;
    size_t n;
    int codes[4];
} acks_result;

static void on_acks(int err, const int *codes, size_t n, void *arg)
{
    acks_result *res = arg;
    res->done = 1;
    res->err = err;
    res->n = n;
    for (size_t i = 0; codes != NULL && i < n && i < 4; i++)
        res->codes[i] = codes[i];
}

static int acks_done(void *arg)
{
    return ((acks_result *)arg)->done;
}

/* The redelivery's batched ack: each message gets its attempt and is acked as drained,
 * with the agent's result or error; a canceled one is refused (code 1), an unknown one
 * reported (-1), and the queue empties (its index entry goes); one acked before says so
 * (2) and is not counted as drained twice. */
static void test_redelivery_batched_ack(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    rec_result a[3], r;
    for (int i = 0; i < 3; i++) {
        char mid[16];
        snprintf(mid, sizeof(mid), "m-%d", i);
        sb_queue_msg m = msg("ws-ba", mid, REQ("m"));
        append_ok(f, &o, &m, &a[i]);
    }
    batch_result l;
    memset(&l, 0, sizeof(l));
    assert_int_equal(sb_queue_redeliver_lease(f->r, &o, "ws-ba", 2, 30000, on_batch, &l), SB_OK);
    assert_true(test_run_until(f->base, batch_done, &l, 3000));
    assert_int_equal(l.n, 2);
    batch_clear(&l);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_cancel(f->r, &o, "ws-ba", a[2].rec.id, on_rec, &r));
    sb_queue_record_clear(&r.rec);
    sb_queue_drained items[] = {
        {a[0].rec.id, "{\"outcome\":\"delivered\",\"drained\":true}", "{\"ok\":1}", NULL,
         a[0].rec.source, a[0].rec.message_id},
        {a[1].rec.id, "{\"outcome\":\"delivered\",\"drained\":true}", NULL, "{\"code\":-1}", NULL,
         NULL},
        {a[2].rec.id, "{\"outcome\":\"delivered\",\"drained\":true}", NULL, NULL, NULL, NULL},
        {"q_000000000000000000000000", "{}", NULL, NULL, NULL, NULL}};
    acks_result k;
    memset(&k, 0, sizeof(k));
    assert_int_equal(sb_queue_redeliver_ack(f->r, &o, "ws-ba", items, 4, on_acks, &k), SB_OK);
    assert_true(test_run_until(f->base, acks_done, &k, 3000));
    assert_int_equal(k.err, SB_OK);
    assert_int_equal(k.n, 4);
    assert_int_equal(k.codes[0], 0);
    assert_int_equal(k.codes[1], 0);
    assert_int_equal(k.codes[2], 1);
    assert_int_equal(k.codes[3], -1);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_get(f->r, &o, "ws-ba", a[0].rec.id, on_rec, &r));
    assert_int_equal(r.rec.state, SB_QSTATE_ACKED);
    assert_int_equal(r.rec.delivery_count, 0);
    assert_int_equal(r.rec.lease_until_ms, 0); /* the lease's end went with the request */
    assert_true(r.rec.updated_at_ms > 0);
    assert_string_equal(r.rec.result, "{\"ok\":1}");
    assert_string_equal(r.rec.attempts, "[{\"outcome\":\"delivered\",\"drained\":true}]");
    sb_queue_record_clear(&r.rec);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_get(f->r, &o, "ws-ba", a[1].rec.id, on_rec, &r));
    assert_int_equal(r.rec.state, SB_QSTATE_ACKED);
    assert_string_equal(r.rec.error, "{\"code\":-1}");
    sb_queue_record_clear(&r.rec);
    redisReply *st = test_redis_cmd(&g_srv, "HGET sb:{%s}:q:stats drained", "ws-ba");
    assert_non_null(st);
    assert_int_equal(st->type, REDIS_REPLY_STRING);
    assert_string_equal(st->str, "2");
    freeReplyObject(st);
    assert_int_equal(redis_int("ZCARD sb:{%s}:q:leased", "ws-ba"), 0);
    /* acked again (a second push of it): code 2 (drain.c counts only 0 in
     * switchboard_drained_total), its attempt added, q:stats' drained unchanged */
    sb_queue_drained again[] = {
        {a[0].rec.id, "{\"outcome\":\"delivered\",\"n\":2}", NULL, NULL, NULL, NULL}};
    memset(&k, 0, sizeof(k));
    assert_int_equal(sb_queue_redeliver_ack(f->r, &o, "ws-ba", again, 1, on_acks, &k), SB_OK);
    assert_true(test_run_until(f->base, acks_done, &k, 3000));
    assert_int_equal(k.err, SB_OK);
    assert_int_equal(k.codes[0], 2);
    st = test_redis_cmd(&g_srv, "HGET sb:{%s}:q:stats drained", "ws-ba");
    assert_non_null(st);
    assert_string_equal(st->str, "2");
    freeReplyObject(st);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_get(f->r, &o, "ws-ba", a[0].rec.id, on_rec, &r));
    assert_non_null(strstr(r.rec.attempts, "\"n\":2"));
    sb_queue_record_clear(&r.rec);
    /* nothing out of range is sent */
    assert_int_equal(sb_queue_redeliver_ack(f->r, &o, "ws-ba", items, 0, on_acks, &k),
                     SB_ERR_UNAVAILABLE);
    for (int i = 0; i < 3; i++)
        sb_queue_record_clear(&a[i].rec);
}

typedef struct dead_result {
    int done;
    int err;
    size_t n;
    char ids[4][32];
    char reasons[4][32];
    int with_request;
} dead_result;

static void on_dead(int err, const sb_queue_record *items, size_t n, void *arg)
{
    dead_result *res = arg;
    res->done = 1;
    res->err = err;
    res->n = n;
    res->with_request = 1;
    for (size_t i = 0; i < n && i < 4; i++) {
        snprintf(res->ids[i], sizeof(res->ids[i]), "%s", items[i].id);
        snprintf(res->reasons[i], sizeof(res->reasons[i]), "%s",
                 items[i].dead_reason ? items[i].dead_reason : "");
        res->with_request &= items[i].request != NULL;
    }
}

static int dead_done(void *arg)
{
    return ((dead_result *)arg)->done;
}

static void dead_list(fixture *f, const sb_queue_opts *o, const char *ws, dead_result *res)
{
    memset(res, 0, sizeof(*res));
    assert_int_equal(sb_queue_dead_list(f->r, o, ws, 10, on_dead, res), SB_OK);
    assert_true(test_run_until(f->base, dead_done, res, 3000));
    assert_int_equal(res->err, SB_OK);
}

static void test_dead_letters_list_replay_purge(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(1);
    rec_result a, b, c, r;
    sb_queue_msg m1 = msg("ws-dl", "m-1", REQ("m-1"));
    sb_queue_msg m2 = msg("ws-dl", "m-2", REQ("m-2"));
    sb_queue_msg m3 = msg("ws-dl", "m-3", REQ("m-3"));
    append_ok(f, &o, &m1, &a);
    append_ok(f, &o, &m2, &b);
    batch_result l;
    lease(f, &o, "ws-dl", 2, 30000, &l); /* both leased once: max_deliveries reached */
    batch_clear(&l);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-dl", a.rec.id, 0, on_rec, &r));
    sb_queue_record_clear(&r.rec);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-dl", b.rec.id, 0, on_rec, &r));
    sb_queue_record_clear(&r.rec);
    append_ok(f, &o, &m3, &c); /* queued, alive */

    dead_result d;
    dead_list(f, &o, "ws-dl", &d);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.ids[0], b.rec.id); /* newest first */
    assert_string_equal(d.ids[1], a.rec.id);
    assert_string_equal(d.reasons[0], "max_deliveries");
    assert_true(d.with_request);

    /* replay: back in front of m-3, delivery_count 0, out of the list */
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_dead_replay(f->r, &o, "ws-dl", a.rec.id, 120000, on_rec, &r));
    assert_int_equal(r.err, SB_OK);
    assert_int_equal(r.rec.state, SB_QSTATE_QUEUED);
    assert_int_equal(r.rec.delivery_count, 0);
    assert_true(r.rec.expires_at_ms - r.rec.updated_at_ms >= 119000);
    sb_queue_record_clear(&r.rec);
    lease(f, &o, "ws-dl", 2, 30000, &l);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.ids[0], a.rec.id);
    assert_string_equal(l.ids[1], c.rec.id);
    batch_clear(&l);
    dead_list(f, &o, "ws-dl", &d);
    assert_int_equal(d.n, 1);
    /* replaying a message that is not dead is refused */
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_dead_replay(f->r, &o, "ws-dl", c.rec.id, 120000, on_rec, &r));
    assert_int_equal(r.err, SB_ERR_FORBIDDEN);
    sb_queue_record_clear(&r.rec);

    /* purge: purged, out of the list, idempotent; unknown ids are not found */
    for (int i = 0; i < 2; i++) {
        memset(&r, 0, sizeof(r));
        run_rec(f, &r, sb_queue_dead_purge(f->r, &o, "ws-dl", b.rec.id, on_rec, &r));
        assert_int_equal(r.err, SB_OK);
        assert_int_equal(r.rec.state, SB_QSTATE_PURGED);
        sb_queue_record_clear(&r.rec);
    }
    dead_list(f, &o, "ws-dl", &d);
    assert_int_equal(d.n, 0);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r,
            sb_queue_dead_purge(f->r, &o, "ws-dl", "q_000000000000000000000000", on_rec, &r));
    assert_int_equal(r.err, SB_ERR_NOTFOUND);
    assert_string_equal(sb_queue_state_name(SB_QSTATE_PURGED), "purged");
    sb_queue_record_clear(&a.rec);
    sb_queue_record_clear(&b.rec);
    sb_queue_record_clear(&c.rec);
}

static int g_notified;
static char g_notified_ws[64];

static void on_note(const char *channel, const char *data, size_t len, void *arg)
{
    g_notified++;
    snprintf(g_notified_ws, sizeof(g_notified_ws), "%s", data);
}

static int notified(void *arg)
{
    return g_notified >= *(int *)arg;
}

static int sub_up(void *arg)
{
    return sb_redis_is_up(arg);
}

static void test_append_and_nack_publish(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(5);
    sb_redis *sub = sb_redis_new(f->base, g_srv.url, NULL, NULL);
    sb_redis_subscribe(sub, SB_QUEUE_NOTIFY_CHANNEL, on_note, NULL);
    assert_true(test_run_until(f->base, sub_up, sub, 3000));
    g_notified = 0;
    rec_result a, r;
    sb_queue_msg m = msg("ws-h", "m-1", REQ("m-1"));
    append_ok(f, &o, &m, &a);
    int want = 1;
    assert_true(test_run_until(f->base, notified, &want, 3000));
    assert_string_equal(g_notified_ws, "ws-h");
    batch_result l;
    lease(f, &o, "ws-h", 1, 30000, &l);
    batch_clear(&l);
    memset(&r, 0, sizeof(r));
    run_rec(f, &r, sb_queue_nack(f->r, &o, "ws-h", a.rec.id, 0, on_rec, &r));
    sb_queue_record_clear(&r.rec);
    want = 2;
    assert_true(test_run_until(f->base, notified, &want, 3000));
    sb_redis_free(sub);
    sb_queue_record_clear(&a.rec);
}

static void test_keys_share_the_workspace_tag(void **state)
{
    fixture *f = *state;
    sb_queue_opts o = opts(1);
    rec_result a;
    sb_queue_msg m = msg("ws-k", "m-1", REQ("m-1"));
    m.ttl_ms = 30;
    append_ok(f, &o, &m, &a);
    test_sleep_ms(50);
    batch_result l;
    lease(f, &o, "ws-k", 1, 1000, &l); /* expires it: the dead list exists too */
    batch_clear(&l);
    redisReply *rep = test_redis_cmd(&g_srv, "KEYS *");
    assert_non_null(rep);
    assert_true(rep->elements >= 4);
    for (size_t i = 0; i < rep->elements; i++) {
        const char *k = rep->element[i]->str;
        if (strcmp(k, SB_QUEUE_ACTIVE_KEY) == 0)
            continue;
        assert_true(strncmp(k, "sb:{ws-k}:", 10) == 0);
    }
    freeReplyObject(rep);
    sb_queue_record_clear(&a.rec);
}

static void test_down_fails_fast(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, "redis://127.0.0.1:1", NULL, NULL);
    sb_queue_opts o = opts(5);
    sb_queue_msg m = msg("ws-x", "m-1", REQ("m-1"));
    rec_result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sb_queue_append(r, &o, &m, on_rec, &res), SB_ERR_UNAVAILABLE);
    assert_int_equal(sb_queue_lease(r, &o, "ws-x", 1, 1000, on_batch, &res), SB_ERR_UNAVAILABLE);
    test_run_for(base, 20);
    assert_false(res.done); /* no callback after a refusal */
    sb_redis_free(r);
    event_base_free(base);
}

/* ---- Task shapes (task.c) ---- */

static sb_queue_record record(sb_queue_state st)
{
    sb_queue_record rec;
    memset(&rec, 0, sizeof(rec));
    rec.id = "q_0123456789abcdef01234567";
    rec.task_id = "sbtask_0123456789abcdef01234567";
    rec.context_id = "ctx-1";
    rec.state = st;
    rec.reason = SB_REASON_HTTP_404;
    rec.detail = "POST http://10.0.0.7:8000/ → 404";
    rec.enqueued_at_ms = 1700000000000LL;
    rec.updated_at_ms = 1700000001000LL;
    return rec;
}

/* The "result" of the JSON-RPC answer sb_task_send_text writes for |rec| (checked to be
 * a response echoing the id), as a tree the caller owns. */
static json_t *send_result(const sb_queue_record *rec, sb_a2a_version v)
{
    char stack[64]; /* small: the text moves to the heap */
    sb_jbuf b = {stack, 0, sizeof(stack), 0};
    json_t *id = json_string("call-1");
    sb_task_send_text(&b, id, rec, v);
    json_decref(id);
    json_t *answer = json_loadb(b.p, b.len, 0, NULL);
    assert_non_null(answer);
    if (b.heap)
        sb_free(b.p);
    assert_string_equal(json_string_value(json_object_get(answer, "jsonrpc")), "2.0");
    assert_string_equal(json_string_value(json_object_get(answer, "id")), "call-1");
    json_t *result = json_incref(json_object_get(answer, "result"));
    json_decref(answer);
    return result;
}

/* The fallback answer's exact bytes: members in the documented order, outside text
 * quoted and repaired (invalid UTF-8 → U+FFFD), ids of every JSON-RPC kind echoed. */
static void test_task_send_text_bytes(void **state)
{
    (void)state;
    sb_queue_record rec = record(SB_QSTATE_QUEUED);
    rec.detail = "a \"quoted\"\n\xff detail";
    char stack[1024];
    sb_jbuf b = {stack, 0, sizeof(stack), 0};
    json_t *id = json_integer(7);
    sb_task_send_text(&b, id, &rec, SB_A2A_V03);
    json_decref(id);
    static const char want[] =
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"kind\":\"task\","
        "\"id\":\"sbtask_0123456789abcdef01234567\",\"contextId\":\"ctx-1\","
        "\"status\":{\"state\":\"submitted\",\"timestamp\":\"2023-11-14T22:13:20.000Z\"},"
        "\"metadata\":{\"switchboard\":{\"delivery_mode\":\"poll\",\"reason\":\"http_404\","
        "\"detail\":\"a \\\"quoted\\\"\\n\xef\xbf\xbd detail\","
        "\"queued_at\":\"2023-11-14T22:13:20.000Z\"}}}}";
    assert_int_equal(b.len, sizeof(want) - 1);
    assert_memory_equal(b.p, want, b.len);

    /* v1.0 wraps the Task; a null or structured id is answered null */
    b.len = 0;
    sb_task_send_text(&b, NULL, &rec, SB_A2A_V10);
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":{\"task\":{";
    assert_memory_equal(b.p, head, sizeof(head) - 1);
    assert_memory_equal(b.p + b.len - 4, "}}}}", 4);
    b.len = 0;
    id = json_real(1.5);
    sb_task_send_text(&b, id, &rec, SB_A2A_V03);
    json_decref(id);
    assert_memory_equal(b.p, "{\"jsonrpc\":\"2.0\",\"id\":1.5,", 26);
    b.len = 0;
    rec.enqueued_at_ms = 0; /* unset times are null */
    sb_task_send_text(&b, NULL, &rec, SB_A2A_V03);
    assert_non_null(memmem(b.p, b.len, "\"queued_at\":null}", 17));
    if (b.heap)
        sb_free(b.p);
}

static void test_task_shapes(void **state)
{
    sb_queue_record rec = record(SB_QSTATE_QUEUED);
    json_t *t = send_result(&rec, SB_A2A_V03);
    assert_string_equal(json_string_value(json_object_get(t, "kind")), "task");
    assert_string_equal(json_string_value(json_object_get(t, "id")), rec.task_id);
    assert_string_equal(json_string_value(json_object_get(t, "contextId")), "ctx-1");
    json_t *st = json_object_get(t, "status");
    assert_string_equal(json_string_value(json_object_get(st, "state")), "submitted");
    assert_string_equal(json_string_value(json_object_get(st, "timestamp")),
                        "2023-11-14T22:13:20.000Z");
    json_t *sb = json_object_get(json_object_get(t, "metadata"), "switchboard");
    assert_int_equal(json_object_size(sb), 4);
    assert_string_equal(json_string_value(json_object_get(sb, "delivery_mode")), "poll");
    assert_string_equal(json_string_value(json_object_get(sb, "reason")), "http_404");
    assert_string_equal(json_string_value(json_object_get(sb, "detail")), rec.detail);
    assert_string_equal(json_string_value(json_object_get(sb, "queued_at")),
                        "2023-11-14T22:13:20.000Z");
    json_decref(t);

    t = send_result(&rec, SB_A2A_V10);
    json_t *task = json_object_get(t, "task");
    assert_non_null(task);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(task, "status"), "state")),
        "TASK_STATE_SUBMITTED");
    json_decref(t);

    static const struct {
        sb_queue_state st;
        const char *v03, *v10;
    } states[] = {{SB_QSTATE_LEASED, "working", "TASK_STATE_WORKING"},
                  {SB_QSTATE_ACKED, "completed", "TASK_STATE_COMPLETED"},
                  {SB_QSTATE_DEAD, "failed", "TASK_STATE_FAILED"},
                  {SB_QSTATE_CANCELED, "canceled", "TASK_STATE_CANCELED"}};
    for (size_t i = 0; i < SB_ARRAY_LEN(states); i++) {
        rec = record(states[i].st);
        t = sb_task_from_record(&rec, SB_A2A_V03, 1);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(t, "status"), "state")),
            states[i].v03);
        json_decref(t);
        t = sb_task_from_record(&rec, SB_A2A_V10, 1);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(t, "status"), "state")),
            states[i].v10);
        json_decref(t);
    }

    /* completed with a Message result: the message is the status message */
    rec = record(SB_QSTATE_ACKED);
    rec.result = "{\"kind\":\"message\",\"role\":\"agent\",\"messageId\":\"r\",\"parts\":[]}";
    t = sb_task_from_record(&rec, SB_A2A_V03, 1);
    json_t *m = json_object_get(json_object_get(t, "status"), "message");
    assert_string_equal(json_string_value(json_object_get(m, "messageId")), "r");
    json_decref(t);
    /* a v1.0 {"task": ...} result: its status and artifacts, our id */
    rec.result = "{\"task\":{\"id\":\"agent-t\",\"status\":{\"state\":\"TASK_STATE_COMPLETED\"},"
                 "\"artifacts\":[{\"artifactId\":\"a\"}]}}";
    t = sb_task_from_record(&rec, SB_A2A_V10, 1);
    assert_string_equal(json_string_value(json_object_get(t, "id")), rec.task_id);
    assert_int_equal(json_array_size(json_object_get(t, "artifacts")), 1);
    sb = json_object_get(json_object_get(t, "metadata"), "switchboard");
    assert_string_equal(json_string_value(json_object_get(sb, "agent_task_id")), "agent-t");
    json_decref(t);
    /* the agent answered a drained push with a JSON-RPC error: failed */
    rec.result = NULL;
    rec.error = "{\"code\":-32001,\"message\":\"nope\"}";
    t = sb_task_from_record(&rec, SB_A2A_V03, 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(t, "status"), "state")),
                        "failed");
    json_decref(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_task_shapes),
        cmocka_unit_test(test_task_send_text_bytes),
        cmocka_unit_test(test_down_fails_fast),
        cmocka_unit_test_setup_teardown(test_append_fields_dedup_and_peek, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inbox_form_is_byte_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_lease_expiry_redelivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_deliveries_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_settles_expired_copy_and_sweeps, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ack_nack_cancel_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nack_at_max_deliveries_is_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_and_nack_publish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attempts_cap_counts_the_fallback_attempt, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_longest_workspace_id_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redelivery_lease_and_collapsed_attempts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redelivery_batched_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letters_list_replay_purge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_share_the_workspace_tag, setup, teardown),
    };
    return cmocka_run_group_tests_name("queue", tests, group_setup, group_teardown);
}
