/*
 * test_registry.c — the versioned replica (ordering, tombstones, snapshot races,
 * regressions), endpoint records and their JSON, the registry's Lua scripts against a
 * real redis-server, and the sync channel: snapshot on start, a write by another
 * process applied here through pub/sub, crafted out-of-order messages, and recovery
 * after Redis restarts without its data.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>

#include "redis_harness.h"
#include "switchboard/alloc.h"
#include "switchboard/auth.h"
#include "switchboard/common.h"
#include "switchboard/redis.h"
#include "switchboard/registry.h"
#include "switchboard/sync.h"

static test_redis g_srv;

static int group_setup(void **state)
{
    return test_redis_group_start(&g_srv);
}

static int group_teardown(void **state)
{
    test_redis_stop(&g_srv);
    return 0;
}

/* Every test starts with empty replicas and an empty Redis. */
static int setup(void **state)
{
    if (test_redis_flushall(&g_srv) != 0)
        return -1;
    sb_registry_init();
    sb_auth_init("admin");
    return 0;
}

static int teardown(void **state)
{
    sb_sync_stop();
    sb_registry_shutdown();
    sb_auth_shutdown();
    test_redis_kill_all_except(g_srv.pid, g_srv.dir);
    return 0;
}

/* ---- sb_replica ---- */

static int *ival(int v)
{
    int *p = sb_malloc(sizeof(*p));
    *p = v;
    return p;
}

static void read_int(void *value, void *arg)
{
    *(int *)arg = *(int *)value;
}

static int rget(sb_replica *rp, const char *key)
{
    int v = -1;
    return sb_replica_read(rp, key, read_int, &v) ? v : -1;
}

static void test_replica_ordering(void **state)
{
    sb_replica *rp = sb_replica_new(sb_free);
    assert_int_equal(sb_replica_apply(rp, "a", ival(1), 5), 1);
    assert_int_equal(rget(rp, "a"), 1);
    assert_int_equal(sb_replica_apply(rp, "a", ival(2), 3), 0); /* older: ignored */
    assert_int_equal(rget(rp, "a"), 1);
    assert_int_equal(sb_replica_apply(rp, "a", NULL, 7), 1); /* delete: tombstone */
    assert_int_equal(rget(rp, "a"), -1);
    assert_int_equal(sb_replica_count(rp), 0);
    assert_int_equal(sb_replica_apply(rp, "a", ival(3), 6), 0); /* cannot resurrect */
    assert_int_equal(rget(rp, "a"), -1);
    assert_int_equal(sb_replica_apply(rp, "a", ival(4), 8), 1);
    assert_int_equal(sb_replica_apply(rp, "a", ival(5), 8), 0); /* same revision: once */
    assert_int_equal(rget(rp, "a"), 4);
    /* A delete of a key never seen still blocks an older set arriving after it. */
    assert_int_equal(sb_replica_apply(rp, "b", NULL, 20), 1);
    assert_int_equal(sb_replica_apply(rp, "b", ival(6), 19), 0);
    assert_int_equal(rget(rp, "b"), -1);
    assert_int_equal(sb_replica_count(rp), 1);
    sb_replica_free(rp);
}

static void test_replica_snapshot_race(void **state)
{
    sb_replica *rp = sb_replica_new(sb_free);
    /* Messages that arrived while the snapshot (taken at revision 10) was in flight. */
    sb_replica_apply(rp, "a", ival(1), 12); /* set after the snapshot ran */
    sb_replica_apply(rp, "b", NULL, 11);    /* deleted after the snapshot ran */
    sb_replica_apply(rp, "c", ival(3), 4);  /* deleted before the snapshot: absent from it */
    sb_replica_apply(rp, "d", ival(4), 15); /* created after the snapshot ran */
    sb_replica_apply(rp, "f", NULL, 3);     /* an old tombstone */
    const char *keys[] = {"a", "b", "e"};
    void *values[] = {ival(100), ival(200), ival(50)};
    sb_replica_apply_snapshot(rp, 3, keys, values, 10);
    assert_int_equal(rget(rp, "a"), 1);  /* the newer message wins */
    assert_int_equal(rget(rp, "b"), -1); /* the newer delete wins */
    assert_int_equal(rget(rp, "c"), -1); /* absent and older: dropped */
    assert_int_equal(rget(rp, "d"), 4);  /* absent but newer: kept */
    assert_int_equal(rget(rp, "e"), 50);
    assert_int_equal(sb_replica_floor(rp), 10);
    assert_int_equal(sb_replica_count(rp), 3);
    /* Messages the snapshot already reflects are ignored; newer ones apply. */
    assert_int_equal(sb_replica_apply(rp, "e", ival(51), 9), 0);
    assert_int_equal(sb_replica_apply(rp, "c", ival(7), 10), 0);
    assert_int_equal(sb_replica_apply(rp, "c", ival(8), 13), 1);
    assert_int_equal(rget(rp, "e"), 50);
    assert_int_equal(rget(rp, "c"), 8);
    /* A second snapshot at 20 that no longer has d (deleted at 18 meanwhile). */
    const char *keys2[] = {"a", "c", "e"};
    void *values2[] = {ival(11), ival(33), ival(55)};
    sb_replica_apply_snapshot(rp, 3, keys2, values2, 20);
    assert_int_equal(rget(rp, "a"), 11);
    assert_int_equal(rget(rp, "d"), -1);
    assert_int_equal(sb_replica_count(rp), 3);
    sb_replica_free(rp);
}

static void test_replica_regression(void **state)
{
    sb_replica *rp = sb_replica_new(sb_free);
    const char *k1[] = {"a"};
    void *v1[] = {ival(1)};
    sb_replica_apply_snapshot(rp, 1, k1, v1, 100);
    sb_replica_apply(rp, "b", ival(2), 150);
    /* The revision went backwards (clock and data lost): nothing old survives. */
    const char *k2[] = {"c"};
    void *v2[] = {ival(3)};
    sb_replica_apply_snapshot(rp, 1, k2, v2, 50);
    assert_int_equal(rget(rp, "a"), -1);
    assert_int_equal(rget(rp, "b"), -1);
    assert_int_equal(rget(rp, "c"), 3);
    assert_int_equal(sb_replica_floor(rp), 50);
    assert_int_equal(sb_replica_apply(rp, "d", ival(4), 60), 1);
    sb_replica_free(rp);
}

/* ---- endpoint records ---- */

static json_t *record(const char *ws, const char *url, const char *mode)
{
    json_t *r =
        json_pack("{s:s,s:s,s:s,s:s,s:{s:s},s:i,s:i,s:I,s:I,s:i,s:I}", "workspace_id", ws,
                  "delivery_mode", mode, "protocol", "h2c", "inbound_secret", "sbs_secretvalue",
                  "agent_card", "name", "agent", "lease_s", 30, "max_concurrency", 4,
                  "lease_expires_at_ms", (json_int_t)1700000030000, "registered_at_ms",
                  (json_int_t)1700000000000, "active_tasks", 2, "heartbeat_at_ms", (json_int_t)0);
    json_object_set_new(r, "url", url ? json_string(url) : json_null());
    return r;
}

static void test_endpoint_records(void **state)
{
    json_t *rec = record("w1", "http://10.1.2.3:8080/a2a", "push");
    sb_registry_apply_set(rec, 5);
    json_decref(rec);
    sb_endpoint *ep = sb_registry_get("w1");
    assert_non_null(ep);
    assert_string_equal(ep->workspace_id, "w1");
    assert_int_equal(ep->mode, SB_MODE_PUSH);
    assert_int_equal(ep->protocol, SB_PROTO_H2C);
    assert_string_equal(ep->url.host, "10.1.2.3");
    assert_int_equal(ep->url.port, 8080);
    assert_string_equal(ep->url.path, "/a2a");
    assert_string_equal(ep->inbound_secret, "sbs_secretvalue");
    assert_int_equal(ep->lease_expires_at_ms, 1700000030000LL);
    assert_int_equal(ep->max_concurrency, 4);
    assert_int_equal(ep->active_tasks, 2);
    assert_int_equal(ep->rev, 5);

    /* The public view: secret redacted, times in ISO-8601, none as null. */
    json_t *pub = sb_endpoint_to_json(ep);
    char *text = json_dumps(pub, 0);
    assert_null(strstr(text, "inbound_secret"));
    assert_null(strstr(text, "sbs_secretvalue"));
    assert_string_equal(json_string_value(json_object_get(pub, "lease_expires_at")),
                        "2023-11-14T22:13:50.000Z");
    assert_true(json_is_null(json_object_get(pub, "heartbeat_at")));
    assert_string_equal(json_string_value(json_object_get(pub, "protocol")), "h2c");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(pub, "agent_card"), "name")), "agent");
    free(text);
    json_decref(pub);

    /* A reader's endpoint survives a replacement; the replica serves the new one. */
    rec = record("w1", "http://10.1.2.4/", "push");
    sb_registry_apply_set(rec, 6);
    json_decref(rec);
    sb_endpoint *ep2 = sb_registry_get("w1");
    assert_ptr_not_equal(ep, ep2);
    assert_string_equal(ep2->url.host, "10.1.2.4");
    assert_string_equal(ep->url_str, "http://10.1.2.3:8080/a2a");
    sb_endpoint_release(ep);
    sb_endpoint_release(ep2);

    /* Poll mode without a url is fine. */
    rec = record("w2", NULL, "poll");
    sb_registry_apply_set(rec, 7);
    json_decref(rec);
    ep = sb_registry_get("w2");
    assert_non_null(ep);
    assert_null(ep->url_str);
    assert_int_equal(ep->mode, SB_MODE_POLL);
    sb_endpoint_release(ep);
    assert_int_equal(sb_registry_count(), 2);

    /* Malformed records are ignored. */
    const char *bad[][3] = {{"w3", NULL, "push"},
                            {"w3", "http://10.0.0.1/", "sometimes"},
                            {"w3", "ftp://10.0.0.1/", "push"},
                            {"../w3", "http://10.0.0.1/", "push"}};
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        rec = record(bad[i][0], bad[i][1], bad[i][2]);
        sb_registry_apply_set(rec, 8);
        json_decref(rec);
    }
    rec = record("w3", "http://10.0.0.1/", "push");
    json_object_del(rec, "inbound_secret");
    sb_registry_apply_set(rec, 8);
    json_decref(rec);
    assert_null(sb_registry_get("w3"));
    assert_int_equal(sb_registry_count(), 2);

    sb_registry_apply_del("w1", 9);
    assert_null(sb_registry_get("w1"));
    rec = record("w1", "http://10.1.2.3/", "push");
    sb_registry_apply_set(rec, 8); /* older than the delete */
    json_decref(rec);
    assert_null(sb_registry_get("w1"));
}

/* Readers on several threads while the replica is rewritten: every endpoint a reader
 * holds stays intact (run under ASan/TSan to make this bite). */
typedef struct reader_arg {
    int *stop;
    long reads;
    int bad;
} reader_arg;

static void *reader_main(void *arg)
{
    reader_arg *ra = arg;
    while (!__atomic_load_n(ra->stop, __ATOMIC_RELAXED)) {
        sb_endpoint *ep = sb_registry_get("hot");
        if (ep != NULL) {
            if (strcmp(ep->workspace_id, "hot") != 0 || ep->url.host == NULL ||
                strncmp(ep->url_str, "http://10.0.", 12) != 0)
                ra->bad++;
            ra->reads++;
            sb_endpoint_release(ep);
        }
    }
    return NULL;
}

static void test_replica_concurrent_readers(void **state)
{
    int stop = 0;
    pthread_t th[4];
    reader_arg ra[4];
    for (int i = 0; i < 4; i++) {
        ra[i] = (reader_arg){.stop = &stop};
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &ra[i]), 0);
    }
    for (int i = 1; i <= 3000; i++) {
        char url[64];
        snprintf(url, sizeof(url), "http://10.0.%d.%d/", (i / 250) % 250, i % 250);
        json_t *rec = record("hot", url, "push");
        sb_registry_apply_set(rec, i * 2);
        json_decref(rec);
        if (i % 100 == 0)
            sb_registry_apply_del("hot", i * 2 + 1);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    long reads = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ra[i].bad, 0);
        reads += ra[i].reads;
    }
    assert_true(reads > 0);
    sb_endpoint *ep = sb_registry_get("hot");
    assert_null(ep); /* the last operation (rev 6001) was a delete */
}

/* ---- the store, through Redis ---- */

typedef struct result {
    int done;
    int err;
    sb_endpoint *ep; /* a reference, or NULL */
} result;

static void on_done(int err, sb_endpoint *ep, void *arg)
{
    result *r = arg;
    r->done++;
    r->err = err;
    if (ep != NULL)
        sb_endpoint_ref(ep);
    r->ep = ep;
}

static void result_clear(result *r)
{
    sb_endpoint_release(r->ep);
    memset(r, 0, sizeof(*r));
}

static int is_done(void *arg)
{
    return ((result *)arg)->done > 0;
}

static int is_up(void *arg)
{
    return sb_redis_is_up(arg);
}

static int sync_ready(void *arg)
{
    return sb_sync_ready();
}

static sb_redis *connect_to(struct event_base *base, const char *url)
{
    sb_redis *r = sb_redis_new(base, url, NULL, NULL);
    assert_non_null(r);
    assert_true(test_run_until(base, is_up, r, 3000));
    return r;
}

/* Runs one operation to completion. */
#define RUN_OP(base, res, call)                                                                    \
    do {                                                                                           \
        result_clear(res);                                                                         \
        assert_int_equal((call), SB_OK);                                                           \
        assert_true(test_run_until((base), is_done, (res), 3000));                                 \
        assert_int_equal((res)->done, 1);                                                          \
    } while (0)

static void test_store_roundtrip(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = connect_to(base, g_srv.url);
    result res = {0};

    json_t *card = json_pack("{s:s,s:I,s:f}", "name", "agent", "big", (json_int_t)12345678901234567,
                             "ratio", 0.1);
    sb_registration reg = {.workspace_id = "w1",
                           .url = "http://10.0.0.7:8000/",
                           .mode = SB_MODE_PUSH,
                           .protocol = SB_PROTO_AUTO,
                           .agent_card = card,
                           .lease_s = 30,
                           .max_concurrency = 4};
    int64_t before = sb_now_wall_ms();
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    assert_int_equal(res.err, SB_OK);
    assert_non_null(res.ep);
    char secret[80];
    snprintf(secret, sizeof(secret), "%s", res.ep->inbound_secret);
    assert_int_equal(strlen(secret), 68);
    assert_memory_equal(secret, "sbs_", 4);
    assert_true(res.ep->lease_expires_at_ms >= before + 30000);
    assert_true(res.ep->lease_expires_at_ms <= sb_now_wall_ms() + 30000);
    /* The agent card went through Redis untouched (no 14-digit rounding). */
    assert_int_equal(json_integer_value(json_object_get(res.ep->agent_card, "big")),
                     12345678901234567LL);
    assert_true(json_real_value(json_object_get(res.ep->agent_card, "ratio")) == 0.1);
    /* The writer sees its own write at once, with no sync running. */
    sb_endpoint *local = sb_registry_get("w1");
    assert_non_null(local);
    assert_string_equal(local->inbound_secret, secret);
    sb_endpoint_release(local);
    json_decref(card);

    /* Re-register: a new mode and no lease, the same secret. */
    reg.url = NULL;
    reg.mode = SB_MODE_POLL;
    reg.lease_s = 0;
    reg.agent_card = NULL;
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    assert_int_equal(res.err, SB_OK);
    assert_string_equal(res.ep->inbound_secret, secret);
    assert_int_equal(res.ep->mode, SB_MODE_POLL);
    assert_null(res.ep->url_str);
    assert_int_equal(res.ep->lease_expires_at_ms, 0);
    assert_null(res.ep->agent_card);

    /* Heartbeat without a lease: load recorded, still no lease. */
    RUN_OP(base, &res, sb_registry_heartbeat(r, "w1", 3, on_done, &res));
    assert_int_equal(res.err, SB_OK);
    assert_int_equal(res.ep->active_tasks, 3);
    assert_true(res.ep->heartbeat_at_ms >= before);
    assert_int_equal(res.ep->lease_expires_at_ms, 0);

    /* With a lease, a heartbeat renews it from now; no active_tasks keeps the last. */
    reg.url = "http://10.0.0.7:8000/";
    reg.mode = SB_MODE_PUSH;
    reg.lease_s = 10;
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    int64_t first = res.ep->lease_expires_at_ms;
    assert_int_equal(res.ep->active_tasks, 0); /* reset by the register */
    test_sleep_ms(30);
    RUN_OP(base, &res, sb_registry_heartbeat(r, "w1", 5, on_done, &res));
    assert_true(res.ep->lease_expires_at_ms >= first + 25);
    RUN_OP(base, &res, sb_registry_heartbeat(r, "w1", -1, on_done, &res));
    assert_int_equal(res.ep->active_tasks, 5);
    local = sb_registry_get("w1");
    assert_int_equal(local->lease_expires_at_ms, res.ep->lease_expires_at_ms);
    sb_endpoint_release(local);

    RUN_OP(base, &res, sb_registry_heartbeat(r, "nobody", 1, on_done, &res));
    assert_int_equal(res.err, SB_ERR_NOTFOUND);
    assert_null(res.ep);

    RUN_OP(base, &res, sb_registry_fetch(r, "w1", on_done, &res));
    assert_int_equal(res.err, SB_OK);
    assert_string_equal(res.ep->inbound_secret, secret);

    RUN_OP(base, &res, sb_registry_delete(r, "w1", on_done, &res));
    assert_int_equal(res.err, SB_OK);
    assert_null(sb_registry_get("w1"));
    RUN_OP(base, &res, sb_registry_delete(r, "w1", on_done, &res));
    assert_int_equal(res.err, SB_ERR_NOTFOUND);
    RUN_OP(base, &res, sb_registry_fetch(r, "w1", on_done, &res));
    assert_int_equal(res.err, SB_ERR_NOTFOUND);
    redisReply *rep = test_redis_cmd(&g_srv, "HEXISTS " SB_SYNC_EP_KEY " w1:config");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    rep = test_redis_cmd(&g_srv, "SISMEMBER " SB_SYNC_ENDPOINTS_KEY " w1");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);

    /* A new registration after a delete gets a new secret. */
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    assert_string_not_equal(res.ep->inbound_secret, secret);
    result_clear(&res);

    sb_redis_free(r);
    event_base_free(base);
}

static void test_store_down_fails_fast(void **state)
{
    struct event_base *base = event_base_new();
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", test_free_port());
    sb_redis *r = sb_redis_new(base, url, NULL, NULL);
    result res = {0};
    sb_registration reg = {.workspace_id = "w1", .mode = SB_MODE_POLL};
    assert_int_equal(sb_registry_register(r, &reg, on_done, &res), SB_ERR_UNAVAILABLE);
    assert_int_equal(sb_registry_heartbeat(r, "w1", 1, on_done, &res), SB_ERR_UNAVAILABLE);
    assert_int_equal(sb_registry_delete(r, "w1", on_done, &res), SB_ERR_UNAVAILABLE);
    assert_int_equal(sb_registry_fetch(r, "w1", on_done, &res), SB_ERR_UNAVAILABLE);
    test_run_for(base, 50);
    assert_int_equal(res.done, 0);
    sb_redis_free(r);
    event_base_free(base);
}

static int both_done(void *arg)
{
    result *r = arg;
    return r[0].done && r[1].done;
}

static void test_racing_first_registers_share_a_secret(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *a = connect_to(base, g_srv.url);
    sb_redis *b = connect_to(base, g_srv.url);
    result res[2] = {{0}, {0}};
    sb_registration reg = {.workspace_id = "race", .mode = SB_MODE_POLL};
    assert_int_equal(sb_registry_register(a, &reg, on_done, &res[0]), SB_OK);
    assert_int_equal(sb_registry_register(b, &reg, on_done, &res[1]), SB_OK);
    assert_true(test_run_until(base, both_done, res, 3000));
    assert_int_equal(res[0].err, SB_OK);
    assert_int_equal(res[1].err, SB_OK);
    assert_string_equal(res[0].ep->inbound_secret, res[1].ep->inbound_secret);
    assert_true(res[0].ep->rev != res[1].ep->rev);
    result_clear(&res[0]);
    result_clear(&res[1]);
    sb_redis_free(a);
    sb_redis_free(b);
    event_base_free(base);
}

/* ---- sync ---- */

static void test_sync_snapshot_on_start(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = connect_to(base, g_srv.url);
    result res = {0};
    sb_registration reg = {.workspace_id = "wa", .url = "http://10.0.0.1/", .mode = SB_MODE_PUSH};
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    reg.workspace_id = "wb";
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    RUN_OP(base, &res, sb_registry_delete(r, "wb", on_done, &res));
    result_clear(&res);
    /* Forget what the writer applied: only the snapshot can bring it back. */
    sb_registry_shutdown();
    sb_registry_init();
    assert_int_equal(sb_registry_count(), 0);

    assert_false(sb_sync_ready());
    assert_int_equal(sb_sync_start(base, g_srv.url), SB_OK);
    assert_int_equal(sb_sync_start(base, g_srv.url), SB_ERR); /* once */
    assert_true(test_run_until(base, sync_ready, NULL, 3000));
    sb_endpoint *ep = sb_registry_get("wa");
    assert_non_null(ep);
    assert_string_equal(ep->url_str, "http://10.0.0.1/");
    sb_endpoint_release(ep);
    assert_null(sb_registry_get("wb"));
    assert_int_equal(sb_registry_count(), 1);
    sb_sync_stop();
    assert_false(sb_sync_ready());
    sb_redis_free(r);
    event_base_free(base);
}

/* Another switchboard instance: its own loop, connection and replica. */
static int remote_writer(const char *line, int in, int out, void *arg)
{
    const char *url = arg;
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, url, NULL, NULL);
    if (!test_run_until(base, is_up, r, 3000))
        return 10;
    sb_registration reg = {.workspace_id = "remote-a",
                           .url = "http://10.9.9.9:9000/a2a",
                           .mode = SB_MODE_PUSH,
                           .max_concurrency = 7};
    result res = {0};
    if (sb_registry_register(r, &reg, on_done, &res) != SB_OK ||
        !test_run_until(base, is_done, &res, 3000) || res.err != SB_OK)
        return 11;
    result_clear(&res);
    reg.workspace_id = "remote-b";
    if (sb_registry_register(r, &reg, on_done, &res) != SB_OK ||
        !test_run_until(base, is_done, &res, 3000) || res.err != SB_OK)
        return 12;
    result_clear(&res);
    if (sb_registry_delete(r, "remote-b", on_done, &res) != SB_OK ||
        !test_run_until(base, is_done, &res, 3000) || res.err != SB_OK)
        return 13;
    result_clear(&res);
    sb_redis_free(r);
    event_base_free(base);
    return 0;
}

static int remote_a_only(void *arg)
{
    sb_endpoint *a = sb_registry_get("remote-a");
    sb_endpoint *b = sb_registry_get("remote-b");
    int ok = a != NULL && b == NULL && sb_registry_count() == 1;
    sb_endpoint_release(a);
    sb_endpoint_release(b);
    return ok;
}

static int remote_a_present(void *arg)
{
    sb_endpoint *a = sb_registry_get("remote-a");
    sb_endpoint_release(a);
    return a != NULL;
}

static void test_sync_write_by_another_instance(void **state)
{
    test_child child = {0};
    assert_int_equal(test_child_start(&child, remote_writer, g_srv.url), 0);
    struct event_base *base = event_base_new();
    assert_int_equal(sb_sync_start(base, g_srv.url), SB_OK);
    assert_true(test_run_until(base, sync_ready, NULL, 3000));
    assert_int_equal(sb_registry_count(), 0);

    test_child_send(&child, "go");
    assert_true(test_run_until(base, remote_a_present, NULL, 5000));
    assert_int_equal(test_child_wait(&child, 5000), 0);
    assert_true(test_run_until(base, remote_a_only, NULL, 3000));
    sb_endpoint *ep = sb_registry_get("remote-a");
    assert_int_equal(ep->max_concurrency, 7);
    assert_string_equal(ep->url.path, "/a2a");
    /* The mirrored secret is the one Redis holds. */
    redisReply *rep = test_redis_cmd(&g_srv, "HGET " SB_SYNC_EP_KEY " remote-a:secret");
    assert_non_null(rep);
    assert_string_equal(rep->str, ep->inbound_secret);
    freeReplyObject(rep);
    sb_endpoint_release(ep);
    sb_sync_stop();
    event_base_free(base);
}

/* Publishes |msg| on the sync channel through a plain connection. */
static void publish(const char *msg)
{
    redisReply *rep = test_redis_cmd(&g_srv, "PUBLISH %s %s", SB_SYNC_CHANNEL, msg);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
}

static void publish_set(const char *ws, const char *url, long long rev)
{
    char msg[512];
    snprintf(msg, sizeof(msg),
             "{\"type\":\"endpoint\",\"op\":\"set\",\"key\":\"%s\",\"rev\":%lld,\"record\":"
             "{\"workspace_id\":\"%s\",\"url\":\"%s\",\"delivery_mode\":\"push\","
             "\"inbound_secret\":\"sbs_x\"}}",
             ws, rev, ws, url);
    publish(msg);
}

static int sentinel_seen(void *arg)
{
    sb_endpoint *ep = sb_registry_get(arg);
    sb_endpoint_release(ep);
    return ep != NULL;
}

static void test_sync_messages_out_of_order(void **state)
{
    struct event_base *base = event_base_new();
    assert_int_equal(sb_sync_start(base, g_srv.url), SB_OK);
    assert_true(test_run_until(base, sync_ready, NULL, 3000));
    redisReply *rep = test_redis_cmd(&g_srv, "GET %s", SB_SYNC_REV_KEY);
    assert_non_null(rep);
    long long now = strtoll(rep->str, NULL, 10);
    freeReplyObject(rep);

    publish_set("x", "http://10.0.0.1/", now + 1000);
    publish_set("x", "http://10.0.0.2/", now + 500); /* older: ignored */
    publish("not json at all");                      /* ignored, no harm */
    publish("{\"type\":\"endpoint\",\"op\":\"set\",\"key\":\"y\",\"rev\":5}"); /* no record */
    publish_set("s1", "http://10.0.0.9/", now + 1001);
    assert_true(test_run_until(base, sentinel_seen, "s1", 3000));
    sb_endpoint *ep = sb_registry_get("x");
    assert_non_null(ep);
    assert_string_equal(ep->url.host, "10.0.0.1");
    sb_endpoint_release(ep);

    char msg[256];
    snprintf(msg, sizeof(msg), "{\"type\":\"endpoint\",\"op\":\"del\",\"key\":\"x\",\"rev\":%lld}",
             now + 2000);
    publish(msg);
    publish_set("x", "http://10.0.0.3/", now + 1500); /* older than the delete */
    /* A record whose workspace differs from the key is refused. */
    snprintf(msg, sizeof(msg),
             "{\"type\":\"endpoint\",\"op\":\"set\",\"key\":\"z\",\"rev\":%lld,\"record\":"
             "{\"workspace_id\":\"other\",\"url\":\"http://10.0.0.4/\",\"delivery_mode\":"
             "\"push\",\"inbound_secret\":\"s\"}}",
             now + 2001);
    publish(msg);
    publish_set("s2", "http://10.0.0.9/", now + 2002);
    assert_true(test_run_until(base, sentinel_seen, "s2", 3000));
    assert_null(sb_registry_get("x"));
    assert_null(sb_registry_get("z"));
    assert_null(sb_registry_get("other"));
    assert_null(sb_registry_get("y"));
    assert_int_equal(sb_sync_apply_message("{}", 2), SB_ERR_INVALID);
    sb_sync_stop();
    event_base_free(base);
}

static int sync_not_ready(void *arg)
{
    return !sb_sync_ready();
}

static int old_gone(void *arg)
{
    sb_endpoint *ep = sb_registry_get("w-old");
    sb_endpoint_release(ep);
    return ep == NULL && sb_sync_ready();
}

/* Layout 1 (global keys without a tag) is renamed to layout 2 once, at start. */
static long long key_exists(const char *key)
{
    redisReply *rep = test_redis_cmd(&g_srv, "EXISTS %s", key);
    assert_non_null(rep);
    long long n = rep->integer;
    freeReplyObject(rep);
    return n;
}

static void put(const char *fmt, const char *a, const char *b, const char *c)
{
    redisReply *rep = test_redis_cmd(&g_srv, fmt, a, b, c);
    assert_non_null(rep);
    assert_int_not_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
}

static void test_migrates_layout_1(void **state)
{
    put("SET %s %s%s", "sb:rev", "1700000000000", "000");
    put("SADD %s %s%s", "sb:endpoints", "old-ws", "");
    put("HSET %s %s %s", "sb:{old-ws}:endpoint", "config", "{\"workspace_id\":\"old-ws\"}");
    put("HSET %s %s %s", "sb:tokens", "abc",
        "{\"hash\":\"abc\",\"workspace_id\":\"old-ws\",\"token_id\":\"tok_1\"}");
    put("HSET %s %s %s", "sb:{old-ws}:tokens", "tok_1", "abc");
    put("SADD %s %s%s", "sb:queues", "old-ws", "");
    put("ZADD %s %s %s", "sb:fallbacks", "1", "old-ws");
    char err[256];
    assert_int_equal(sb_sync_migrate(g_srv.url, 2000, err, sizeof(err)), SB_OK);
    const char *gone[] = {"sb:rev",      "sb:endpoints",       "sb:{old-ws}:endpoint",
                          "sb:tokens",   "sb:{old-ws}:tokens", "sb:queues",
                          "sb:fallbacks"};
    for (size_t i = 0; i < SB_ARRAY_LEN(gone); i++)
        assert_int_equal(key_exists(gone[i]), 0);
    const char *now[] = {SB_SYNC_REV_KEY,       SB_SYNC_ENDPOINTS_KEY, SB_SYNC_EP_KEY,
                         SB_SYNC_TOKENS_KEY,    SB_SYNC_WS_TOKENS_KEY, SB_SYNC_QUEUES_KEY,
                         SB_SYNC_FALLBACKS_KEY, SB_SYNC_SCHEMA_KEY};
    for (size_t i = 0; i < SB_ARRAY_LEN(now); i++)
        assert_int_equal(key_exists(now[i]), 1);
    redisReply *rep = test_redis_cmd(&g_srv, "ZSCORE %s old-ws", SB_SYNC_QUEUES_KEY);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    freeReplyObject(rep);
    rep = test_redis_cmd(&g_srv, "HGET %s old-ws:tok_1", SB_SYNC_WS_TOKENS_KEY);
    assert_string_equal(rep->str, "abc");
    freeReplyObject(rep);
    rep = test_redis_cmd(&g_srv, "HGET %s old-ws:config", SB_SYNC_EP_KEY);
    assert_string_equal(rep->str, "{\"workspace_id\":\"old-ws\"}");
    freeReplyObject(rep);
    /* again: nothing left to do, nothing written */
    put("SET %s %s%s", "sb:rev", "5", "");
    assert_int_equal(sb_sync_migrate(g_srv.url, 2000, err, sizeof(err)), SB_OK);
    assert_int_equal(key_exists("sb:rev"), 1);
}

/* A layout a later release wrote is refused and left as it is (never marked ours). */
static void test_refuses_newer_layout(void **state)
{
    (void)state;
    put("SET %s %s%s", SB_SYNC_SCHEMA_KEY, "99", "");
    char err[256] = "";
    assert_int_equal(sb_sync_migrate(g_srv.url, 2000, err, sizeof(err)), SB_ERR_INVALID);
    assert_non_null(strstr(err, "key layout 99"));
    redisReply *rep = test_redis_cmd(&g_srv, "GET %s", SB_SYNC_SCHEMA_KEY);
    assert_string_equal(rep->str, "99");
    freeReplyObject(rep);
    /* our own layout and the previous one are accepted */
    put("SET %s %s%s", SB_SYNC_SCHEMA_KEY, "2", "");
    assert_int_equal(sb_sync_migrate(g_srv.url, 2000, err, sizeof(err)), SB_OK);
    rep = test_redis_cmd(&g_srv, "GET %s", SB_SYNC_SCHEMA_KEY);
    assert_int_equal(atoi(rep->str), SB_SYNC_SCHEMA_VERSION);
    freeReplyObject(rep);
}

static void test_sync_after_redis_lost_its_data(void **state)
{
    test_redis t = {0};
    assert_int_equal(test_redis_start(&t, 0), 0);
    struct event_base *base = event_base_new();
    assert_int_equal(sb_sync_start(base, t.url), SB_OK);
    assert_true(test_run_until(base, sync_ready, NULL, 3000));
    sb_redis *r = connect_to(base, t.url);
    result res = {0};
    sb_registration reg = {.workspace_id = "w-old", .mode = SB_MODE_POLL};
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    assert_int_equal(res.err, SB_OK);
    result_clear(&res);

    /* Redis dies: not ready, but the replica keeps serving what it knew. */
    test_redis_kill(&t);
    assert_true(test_run_until(base, sync_not_ready, NULL, 3000));
    sb_endpoint *ep = sb_registry_get("w-old");
    assert_non_null(ep);
    sb_endpoint_release(ep);

    /* It comes back empty (no persistence): the next snapshot retires w-old. */
    assert_int_equal(test_redis_start(&t, t.port), 0);
    assert_true(test_run_until(base, old_gone, NULL, 8000));
    assert_true(test_run_until(base, is_up, r, 8000));
    reg.workspace_id = "w-new";
    RUN_OP(base, &res, sb_registry_register(r, &reg, on_done, &res));
    assert_int_equal(res.err, SB_OK);
    result_clear(&res);
    ep = sb_registry_get("w-new");
    assert_non_null(ep);
    sb_endpoint_release(ep);
    assert_int_equal(sb_registry_count(), 1);

    sb_redis_free(r);
    sb_sync_stop();
    event_base_free(base);
    test_redis_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replica_ordering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrates_layout_1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_newer_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replica_snapshot_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replica_regression, setup, teardown),
        cmocka_unit_test_setup_teardown(test_endpoint_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replica_concurrent_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_down_fails_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_racing_first_registers_share_a_secret, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sync_snapshot_on_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_write_by_another_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_messages_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_after_redis_lost_its_data, setup, teardown),
    };
    return cmocka_run_group_tests_name("registry", tests, group_setup, group_teardown);
}
