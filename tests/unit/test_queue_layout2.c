/*
 * test_queue_layout2.c — a queue written by the previous release (key layout 2: every
 * field of a message a hash field of its own, no packed head "h") keeps working after
 * the start-up migration to layout 3, against a real redis-server: the migration bumps
 * the schema and leaves every message alone; then each queued message is read (get), its
 * record found by messageId (lookup), its dedup claim still answers a resend, the
 * redelivery lease and batched ack drain two of them (and take their dedup claims), an
 * inbox lease and ack the third, and one past its expiry becomes a dead letter with its
 * summary read from the old fields, and replays with its claim and record link back —
 * next to messages appended in layout 3.
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
#include "switchboard/queue_dead.h"
#include "switchboard/redis.h"
#include "switchboard/sync.h"

static test_redis g_srv;

TEST_REDIS_FIXTURE_FUNCS(g_srv)

#define WS "ws-old"
#define REQ(mid)                                                                                   \
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{\"m\":\"" mid "\"}}"

static char *str_of(const char *fmt, const char *a, const char *b)
{
    redisReply *rep = test_redis_cmd(&g_srv, fmt, a, b);
    assert_non_null(rep);
    char *v = rep->type == REDIS_REPLY_STRING ? sb_strdup(rep->str) : NULL;
    freeReplyObject(rep);
    return v;
}

static long long int_of(const char *fmt, const char *a, const char *b)
{
    redisReply *rep = test_redis_cmd(&g_srv, fmt, a, b);
    assert_non_null(rep);
    long long v = rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1;
    freeReplyObject(rep);
    return v;
}

/* Message q_<hex> as the layout-2 append wrote it: its hash (every field), its record
 * link, its dedup claim, its place in ready and expiry. */
static void put_old(const char *hex, const char *mid, long long seq, long long enq, long long exp)
{
    char id[40], task[48], ctx[48], key[96], dedup[64], s_seq[24], s_enq[24], s_exp[24];
    snprintf(id, sizeof(id), "q_%s", hex);
    snprintf(task, sizeof(task), "sbtask_%s", hex);
    snprintf(ctx, sizeof(ctx), "sbctx_%s", hex);
    snprintf(key, sizeof(key), "sb:{" WS "}:msg:%s", id);
    snprintf(dedup, sizeof(dedup), "platform\n%s", mid);
    snprintf(s_seq, sizeof(s_seq), "%lld", seq);
    snprintf(s_enq, sizeof(s_enq), "%lld", enq);
    snprintf(s_exp, sizeof(s_exp), "%lld", exp);
    char req[160];
    snprintf(req, sizeof(req), REQ("%s"), mid);
    const char *argv[] = {"HSET",
                          key,
                          "id",
                          id,
                          "task_id",
                          task,
                          "dedup",
                          dedup,
                          "message_id",
                          mid,
                          "context_id",
                          ctx,
                          "kind",
                          "chat",
                          "source",
                          "platform",
                          "method",
                          "message/send",
                          "version",
                          "v03",
                          "reason",
                          "connect_refused",
                          "detail",
                          "connect 10.0.0.7:8000: Connection refused",
                          "attempted",
                          "0",
                          "attempts",
                          "[]",
                          "request",
                          req,
                          "state",
                          "queued",
                          "seq",
                          s_seq,
                          "delivery_count",
                          "0",
                          "enqueued_at_ms",
                          s_enq,
                          "expires_at_ms",
                          s_exp,
                          "updated_at_ms",
                          s_enq,
                          "lease_until_ms",
                          "0",
                          "a2a_version",
                          "1.0"};
    size_t lens[SB_ARRAY_LEN(argv)];
    for (size_t i = 0; i < SB_ARRAY_LEN(argv); i++)
        lens[i] = strlen(argv[i]);
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", g_srv.port, tv);
    assert_true(c != NULL && c->err == 0);
    redisReply *rep = redisCommandArgv(c, (int)SB_ARRAY_LEN(argv), argv, lens);
    redisFree(c);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
    char rk[96];
    snprintf(rk, sizeof(rk), "sb:{" WS "}:dr:%s", mid);
    freeReplyObject(test_redis_cmd(&g_srv, "HSET %s platform %s", rk, id));
    freeReplyObject(test_redis_cmd(&g_srv, "PEXPIRE %s 600000", rk));
    freeReplyObject(test_redis_cmd(&g_srv, "PEXPIRE %s 600000", key));
    freeReplyObject(
        test_redis_cmd(&g_srv, "HSET sb:{" WS "}:q:dedup %b %s", dedup, strlen(dedup), id));
    freeReplyObject(test_redis_cmd(&g_srv, "ZADD sb:{" WS "}:q:ready %s %s", s_seq, id));
    freeReplyObject(test_redis_cmd(&g_srv, "ZADD sb:{" WS "}:q:expiry %s %s", s_exp, id));
}

typedef struct got {
    int done, err, n;
    long long code;
    sb_queue_record rec;
    char ids[4][40], mids[4][40], reqs[4][160];
    int codes[4];
} got;

static int is_done(void *arg)
{
    return ((got *)arg)->done;
}

static void on_rec(int err, const sb_queue_record *rec, void *arg)
{
    got *g = arg;
    g->done = 1;
    g->err = err;
    if (rec != NULL) {
        snprintf(g->ids[0], sizeof(g->ids[0]), "%s", rec->id ? rec->id : "");
        snprintf(g->mids[0], sizeof(g->mids[0]), "%s", rec->message_id ? rec->message_id : "");
        g->rec.state = rec->state;
        g->rec.duplicate = rec->duplicate;
        g->rec.enqueued_at_ms = rec->enqueued_at_ms;
        g->rec.updated_at_ms = rec->updated_at_ms;
        g->rec.reason = rec->reason;
        g->rec.attempted = rec->attempted;
        g->rec.version = rec->version;
        g->n = rec->detail != NULL &&
               strcmp(rec->detail, "connect 10.0.0.7:8000: Connection refused") == 0 &&
               rec->source != NULL && strcmp(rec->source, "platform") == 0 &&
               rec->a2a_version != NULL && strcmp(rec->a2a_version, "1.0") == 0;
    }
}

static void on_batch(int err, const sb_queue_batch *b, void *arg)
{
    got *g = arg;
    g->done = 1;
    g->err = err;
    for (size_t i = 0; b != NULL && i < b->n && i < 4; i++) {
        snprintf(g->ids[i], sizeof(g->ids[i]), "%s", b->items[i].id ? b->items[i].id : "");
        snprintf(g->mids[i], sizeof(g->mids[i]), "%s",
                 b->items[i].message_id ? b->items[i].message_id : "");
        snprintf(g->reqs[i], sizeof(g->reqs[i]), "%.*s", (int)b->items[i].request_len,
                 b->items[i].request ? b->items[i].request : "");
    }
    g->n = b != NULL ? (int)b->n : -1;
}

static void on_acks(int err, const int *codes, size_t n, void *arg)
{
    got *g = arg;
    g->done = 1;
    g->err = err;
    g->n = (int)n;
    for (size_t i = 0; codes != NULL && i < n && i < 4; i++)
        g->codes[i] = codes[i];
}

static void on_lookup(int err, const sb_queue_lookup_item *items, size_t n, void *arg)
{
    got *g = arg;
    g->done = 1;
    g->err = err;
    g->n = (int)n;
    if (n > 0 && items[0].rec != NULL)
        snprintf(g->ids[0], sizeof(g->ids[0]), "%s", items[0].rec->id);
}

static void on_dead(int err, const sb_queue_record *items, size_t n, void *arg)
{
    got *g = arg;
    g->done = 1;
    g->err = err;
    g->n = (int)n;
    if (n > 0)
        snprintf(g->mids[0], sizeof(g->mids[0]), "%s",
                 items[0].message_id ? items[0].message_id : "");
}

static void wait_ok(test_fixture *f, got *g, int rc)
{
    assert_int_equal(rc, SB_OK);
    assert_true(test_run_until(f->base, is_done, g, 3000));
    assert_int_equal(g->err, SB_OK);
}

static int dedup_has(const char *mid)
{
    char field[64];
    snprintf(field, sizeof(field), "platform\n%s", mid);
    redisReply *rep =
        test_redis_cmd(&g_srv, "HEXISTS sb:{" WS "}:q:dedup %b", field, strlen(field));
    int v = rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    freeReplyObject(rep);
    return v;
}

#define HEX(n) "00000000000000000000000" #n

static void test_layout2_queue_after_migration(void **state)
{
    test_fixture *f = *state;
    sb_queue_opts o = {5, 60000};
    redisReply *t = test_redis_cmd(&g_srv, "TIME");
    long long now = strtoll(t->element[0]->str, NULL, 10) * 1000;
    freeReplyObject(t);
    freeReplyObject(test_redis_cmd(&g_srv, "SET %s 2", SB_SYNC_SCHEMA_KEY));
    for (int i = 0; i < 4; i++) {
        static const char *const hex[] = {HEX(1), HEX(2), HEX(3), HEX(4)};
        char mid[16];
        snprintf(mid, sizeof(mid), "old-%d", i);
        /* old-3 has expired (but is still in the sets: no script has looked since) */
        put_old(hex[i], mid, i + 1, now - 5000 + i, i == 3 ? now - 1000 : now + 60000);
    }
    freeReplyObject(test_redis_cmd(&g_srv, "SET sb:{" WS "}:q:seq 4"));

    char err[256];
    assert_int_equal(sb_sync_migrate(g_srv.url, 2000, err, sizeof(err)), SB_OK);
    char *schema = str_of("GET %s%s", SB_SYNC_SCHEMA_KEY, "");
    assert_string_equal(schema, SB_STR(SB_SYNC_SCHEMA_VERSION));
    sb_free(schema);
    assert_int_equal(int_of("HLEN %s%s", "sb:{" WS "}:msg:q_", HEX(1)), 22); /* untouched */

    /* get: every field from the old layout */
    got g = {0};
    wait_ok(f, &g, sb_queue_get(f->r, &o, WS, "q_" HEX(1), on_rec, &g));
    assert_string_equal(g.mids[0], "old-0");
    assert_int_equal(g.rec.state, SB_QSTATE_QUEUED);
    assert_int_equal(g.rec.enqueued_at_ms, now - 5000);
    assert_int_equal(g.rec.reason, SB_REASON_CONNECT_REFUSED);
    assert_int_equal(g.n, 1); /* detail, source, a2a_version */

    /* the record by messageId, through the old record link */
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_lookup(f->r, &o, WS, "old-1", on_lookup, &g));
    assert_int_equal(g.n, 1);
    assert_string_equal(g.ids[0], "q_" HEX(2));

    /* a resend of old-0 is a duplicate of the old message */
    sb_queue_msg m = {.ws = WS,
                      .message_id = "old-0",
                      .kind = "chat",
                      .source = "platform",
                      .method = "message/send",
                      .reason = SB_REASON_CONNECT_REFUSED,
                      .request = REQ("old-0"),
                      .request_len = strlen(REQ("old-0")),
                      .ttl_ms = 60000};
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_append(f->r, &o, &m, on_rec, &g));
    assert_true(g.rec.duplicate);
    assert_string_equal(g.ids[0], "q_" HEX(1));
    /* a new message next to them, in layout 3 (expired old-3 became a dead letter first?
     * no: the append sweeps only every 16th sequence) */
    m.message_id = "new-0";
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_append(f->r, &o, &m, on_rec, &g));
    assert_false(g.rec.duplicate);
    char newid[40];
    snprintf(newid, sizeof(newid), "%s", g.ids[0]);

    /* the redelivery lease: maintenance dead-letters old-3 (summary from the old fields),
     * then old-0 and old-1 with what a push needs */
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_redeliver_lease(f->r, &o, WS, 2, 30000, on_batch, &g));
    assert_int_equal(g.n, 2);
    assert_string_equal(g.mids[0], "old-0");
    assert_string_equal(g.mids[1], "old-1");
    assert_string_equal(g.reqs[0], REQ("old-0"));
    char *dl = str_of("LINDEX %s %s", "sb:{" WS "}:q:dead", "0");
    assert_non_null(dl);
    assert_non_null(strstr(dl, "\"message_id\":\"old-3\""));
    assert_non_null(strstr(dl, "\"enqueued_at_ms\":"));
    sb_free(dl);
    assert_false(dedup_has("old-3"));

    /* the batched ack takes their dedup claims (read from the old field) */
    sb_queue_drained d[2] = {{"q_" HEX(1), "{\"outcome\":\"delivered\"}", NULL, NULL, NULL, NULL},
                             {"q_" HEX(2), "{\"outcome\":\"delivered\"}", NULL, NULL, NULL, NULL}};
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_redeliver_ack(f->r, &o, WS, d, 2, on_acks, &g));
    assert_int_equal(g.codes[0], 0);
    assert_int_equal(g.codes[1], 0);
    assert_false(dedup_has("old-0"));
    assert_false(dedup_has("old-1"));

    /* an inbox lease and ack of old-2 (q_finish reads the old dedup field); then new-0 */
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_lease(f->r, &o, WS, 2, 30000, on_batch, &g));
    assert_int_equal(g.n, 2);
    assert_string_equal(g.mids[0], "old-2");
    assert_string_equal(g.mids[1], "new-0");
    assert_true(dedup_has("old-2"));
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g,
            sb_queue_ack(f->r, &o, WS, "q_" HEX(3), "{\"kind\":\"task\"}", NULL, 0, on_rec, &g));
    assert_int_equal(g.rec.state, SB_QSTATE_ACKED);
    assert_false(dedup_has("old-2"));
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_ack(f->r, &o, WS, newid, NULL, NULL, 0, on_rec, &g));
    assert_false(dedup_has("new-0"));

    /* the dead letter lists, replays with its claim and record link back */
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_dead_list(f->r, &o, WS, 10, on_dead, &g));
    assert_int_equal(g.n, 1);
    assert_string_equal(g.mids[0], "old-3");
    freeReplyObject(test_redis_cmd(&g_srv, "DEL sb:{" WS "}:dr:old-3"));
    memset(&g, 0, sizeof(g));
    wait_ok(f, &g, sb_queue_dead_replay(f->r, &o, WS, "q_" HEX(4), 60000, on_rec, &g));
    assert_int_equal(g.rec.state, SB_QSTATE_QUEUED);
    assert_true(dedup_has("old-3"));
    char *link = str_of("HGET %s %s", "sb:{" WS "}:dr:old-3", "platform");
    assert_non_null(link);
    assert_string_equal(link, "q_" HEX(4));
    sb_free(link);
}

int main(void)
{
    test_quiet_logs();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_layout2_queue_after_migration, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
