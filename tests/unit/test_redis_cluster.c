/*
 * test_redis_cluster.c — redis_cluster.c: the CRC16 and key-slot rules, which argument
 * routes a command, reading redirects; then against a real 3-master cluster built here
 * (redis-server --cluster-enabled yes, slots assigned with CLUSTER ADDSLOTSRANGE, nodes
 * joined with CLUSTER MEET): routing over every master, detection of a node URL, MOVED
 * after a slot moved, ASK during a migration, pub/sub across nodes, and a killed master
 * failing only its own slots while a subscriber that was on it moves to another node.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "redis_harness.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/redis.h"
#include "switchboard/redis_cluster.h"

/* ---- pure functions ---- */

static void test_crc16_and_slots(void **state)
{
    assert_int_equal(sb_cluster_crc16("123456789", 9), 0x31C3);
    assert_int_equal(sb_cluster_key_slot("foo", 3), 12182);
    assert_int_equal(sb_cluster_key_slot("bar", 3), 5061);
    const char *a = "{user1000}.following", *b = "{user1000}.followers";
    assert_int_equal(sb_cluster_key_slot(a, strlen(a)), sb_cluster_key_slot(b, strlen(b)));
    assert_int_equal(sb_cluster_key_slot(a, strlen(a)), sb_cluster_key_slot("user1000", 8));
    /* an empty tag does not count: the whole key is hashed */
    const char *e = "foo{}{bar}";
    assert_int_equal(sb_cluster_key_slot(e, strlen(e)), sb_cluster_crc16(e, strlen(e)) & 16383);
    /* the first '{' and the next '}' */
    const char *n = "foo{{bar}}zap";
    assert_int_equal(sb_cluster_key_slot(n, strlen(n)), sb_cluster_key_slot("{bar", 4));
    /* switchboard's tags: a workspace's keys and the {sb} keys each share one slot */
    const char *q = "sb:{ws-1}:q:ready", *m = "sb:{ws-1}:msg:q_1", *r = "sb:{sb}:rev",
               *t = "sb:{sb}:ep:ws-1";
    assert_int_equal(sb_cluster_key_slot(q, strlen(q)), sb_cluster_key_slot(m, strlen(m)));
    assert_int_equal(sb_cluster_key_slot(r, strlen(r)), sb_cluster_key_slot(t, strlen(t)));
}

static void test_key_index(void **state)
{
    const char *eval0[] = {"EVAL", "return 1", "0"};
    const char *eval2[] = {"EVAL", "return 1", "2", "k1", "k2", "a"};
    const char *get[] = {"GET", "k"};
    const char *pub[] = {"PUBLISH", "ch", "x"};
    const char *ping[] = {"PING"};
    assert_int_equal(sb_cluster_key_index(3, eval0, NULL), -1);
    assert_int_equal(sb_cluster_key_index(6, eval2, NULL), 3);
    assert_int_equal(sb_cluster_key_index(2, get, NULL), 1);
    assert_int_equal(sb_cluster_key_index(3, pub, NULL), -1);
    assert_int_equal(sb_cluster_key_index(1, ping, NULL), -1);
}

static void test_parse_error(void **state)
{
    unsigned slot = 0;
    char host[64];
    int port = 0;
    assert_int_equal(
        sb_cluster_parse_error("MOVED 3999 127.0.0.1:6381", &slot, host, sizeof(host), &port),
        SB_CLUSTER_ERR_MOVED);
    assert_int_equal(slot, 3999);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6381);
    assert_int_equal(sb_cluster_parse_error("ASK 1 ::1:7000", &slot, host, sizeof(host), &port),
                     SB_CLUSTER_ERR_ASK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7000);
    assert_int_equal(sb_cluster_parse_error("TRYAGAIN Multiple keys request during rehashing",
                                            &slot, host, sizeof(host), &port),
                     SB_CLUSTER_ERR_TRYAGAIN);
    assert_int_equal(sb_cluster_parse_error("CLUSTERDOWN Hash slot not served", &slot, host,
                                            sizeof(host), &port),
                     SB_CLUSTER_ERR_DOWN);
    assert_int_equal(
        sb_cluster_parse_error("ERR Error running script (call to f_x): @user_script:1: "
                               "Script attempted to access a non local key in a cluster node",
                               &slot, host, sizeof(host), &port),
        SB_CLUSTER_ERR_NONLOCAL);
    assert_int_equal(sb_cluster_parse_error("ERR wrong", &slot, host, sizeof(host), &port),
                     SB_CLUSTER_ERR_OTHER);
    assert_int_equal(sb_cluster_parse_error("MOVED 99999 h:1", &slot, host, sizeof(host), &port),
                     SB_CLUSTER_ERR_OTHER);
    assert_int_equal(sb_cluster_parse_error("MOVED 5 nohost", &slot, host, sizeof(host), &port),
                     SB_CLUSTER_ERR_OTHER);
}

static void test_cluster_urls(void **state)
{
    char err[256];
    assert_int_equal(sb_redis_url_check("redis+cluster://127.0.0.1:7000", err, sizeof(err)), SB_OK);
    assert_int_equal(sb_redis_url_check("redis+cluster://:pw@h1:7000,h2:7001,h3", err, sizeof(err)),
                     SB_OK);
    assert_int_equal(
        sb_redis_url_check("redis+cluster://h1:7000/0?user=u&password=p", err, sizeof(err)), SB_OK);
    assert_int_equal(sb_redis_url_check("redis+cluster://h1:7000/2", err, sizeof(err)),
                     SB_ERR_INVALID);
    assert_int_equal(sb_redis_url_check("redis+cluster://", err, sizeof(err)), SB_ERR_INVALID);
    assert_int_equal(sb_redis_url_check("redis+cluster://h1:99999", err, sizeof(err)),
                     SB_ERR_INVALID);
}

/* ---- a real cluster ---- */

#define NODES 3
static test_redis g_node[NODES];
static char g_url[256];

static int cluster_ok(void)
{
    for (int i = 0; i < NODES; i++) {
        redisReply *r = test_redis_cmd(&g_node[i], "CLUSTER INFO");
        int ok = r != NULL && r->type == REDIS_REPLY_STRING &&
                 strstr(r->str, "cluster_state:ok") != NULL &&
                 strstr(r->str, "cluster_known_nodes:3") != NULL;
        if (r != NULL)
            freeReplyObject(r);
        if (!ok)
            return 0;
    }
    return 1;
}

static int do_cmd(const test_redis *t, const char *fmt, ...)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", t->port, tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return -1;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    int ok = r != NULL && r->type != REDIS_REPLY_ERROR;
    if (r != NULL)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

static int port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    int ok = fd != -1 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd != -1)
        close(fd);
    return ok;
}

/* A free port whose cluster bus port (+10000) is free and valid too. */
static int cluster_port(void)
{
    for (int i = 0; i < 200; i++) {
        int p = 20000 + (int)(sb_now_mono_us() % 20000u) + i * 37 % 20000;
        if (p < 40000 && port_free(p) && port_free(p + 10000))
            return p;
    }
    return -1;
}

static int group_setup(void **state)
{
    test_quiet_logs();
    signal(SIGPIPE, SIG_IGN);
    const char *extra[] = {"--cluster-enabled",
                           "yes",
                           "--cluster-node-timeout",
                           "1500",
                           "--cluster-require-full-coverage",
                           "no",
                           NULL};
    for (int i = 0; i < NODES; i++)
        if (test_redis_start_args(&g_node[i], cluster_port(), extra, NULL) != 0) {
            fprintf(stderr, "cluster node %d did not start\n", i);
            return -1;
        }
    static const int lo[NODES] = {0, 5461, 10923}, hi[NODES] = {5460, 10922, 16383};
    for (int i = 0; i < NODES; i++)
        if (do_cmd(&g_node[i], "CLUSTER ADDSLOTSRANGE %d %d", lo[i], hi[i]) != 0) {
            fprintf(stderr, "CLUSTER ADDSLOTSRANGE failed on node %d\n", i);
            return -1;
        }
    for (int i = 1; i < NODES; i++)
        if (do_cmd(&g_node[0], "CLUSTER MEET 127.0.0.1 %d", g_node[i].port) != 0)
            return -1;
    for (int i = 0; i < 200 && !cluster_ok(); i++)
        test_sleep_ms(50);
    if (!cluster_ok()) {
        fprintf(stderr, "the test cluster did not reach cluster_state:ok\n");
        return -1;
    }
    snprintf(g_url, sizeof(g_url), "redis+cluster://127.0.0.1:%d", g_node[0].port);
    return 0;
}

static int group_teardown(void **state)
{
    for (int i = 0; i < NODES; i++)
        test_redis_stop(&g_node[i]);
    return 0;
}

/* The node index serving |key| according to the nodes themselves. */
static int owner_of(const char *key)
{
    for (int i = 0; i < NODES; i++) {
        redisReply *r = test_redis_cmd(&g_node[i], "CLUSTER COUNTKEYSINSLOT %u",
                                       sb_cluster_key_slot(key, strlen(key)));
        int ok = r != NULL && r->type == REDIS_REPLY_INTEGER;
        if (r != NULL)
            freeReplyObject(r);
        if (!ok)
            continue;
        redisReply *g = test_redis_cmd(&g_node[i], "GET %s", key);
        int mine = g != NULL && g->type != REDIS_REPLY_ERROR;
        if (g != NULL)
            freeReplyObject(g);
        if (mine)
            return i;
    }
    return -1;
}

typedef struct result {
    int done, null;
    int type;
    char str[256];
} result;

static void on_result(redisReply *r, void *arg)
{
    result *res = arg;
    res->done = 1;
    res->null = r == NULL;
    if (r != NULL) {
        res->type = r->type;
        snprintf(res->str, sizeof(res->str), "%s", r->str ? r->str : "");
    }
}

static int result_done(void *arg)
{
    return ((result *)arg)->done;
}

static int is_up(void *arg)
{
    return sb_redis_is_up(arg);
}

/* Runs one command on |r| and waits for the reply; SB_ERR_UNAVAILABLE when refused. */
static int run_cmd(struct event_base *base, sb_redis *r, result *res, int argc, const char **argv)
{
    memset(res, 0, sizeof(*res));
    int rc = sb_redis_command_argv(r, on_result, res, argc, argv, NULL);
    if (rc != SB_OK)
        return rc;
    assert_true(test_run_until(base, result_done, res, 8000));
    return SB_OK;
}

static void test_routes_every_master(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_url, NULL, NULL);
    assert_non_null(r);
    assert_true(test_run_until(base, is_up, r, 5000));
    int seen[NODES] = {0};
    for (int i = 0; i < 60; i++) {
        char key[32], val[16];
        snprintf(key, sizeof(key), "sb:{ws-%d}:k", i);
        snprintf(val, sizeof(val), "v%d", i);
        const char *argv[] = {"SET", key, val};
        result res;
        assert_int_equal(run_cmd(base, r, &res, 3, argv), SB_OK);
        assert_int_equal(res.type, REDIS_REPLY_STATUS);
        int o = owner_of(key);
        assert_true(o >= 0);
        seen[o]++;
        /* a script whose keys share the tag runs on that master */
        const char *ev[] = {"EVAL", "return redis.call('GET', KEYS[1])", "1", key};
        assert_int_equal(run_cmd(base, r, &res, 4, ev), SB_OK);
        assert_string_equal(res.str, val);
    }
    for (int i = 0; i < NODES; i++)
        assert_true(seen[i] > 0);
    /* printf-style commands route too */
    result res;
    memset(&res, 0, sizeof(res));
    assert_int_equal(sb_redis_command(r, on_result, &res, "GET %s", "sb:{ws-7}:k"), SB_OK);
    assert_true(test_run_until(base, result_done, &res, 5000));
    assert_string_equal(res.str, "v7");
    sb_redis_free(r);
    event_base_free(base);
}

static void test_detects_a_node_url(void **state)
{
    char url[64], err[256], *resolved = NULL;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", g_node[1].port);
    assert_int_equal(sb_redis_resolve_sync(url, 2000, &resolved, err, sizeof(err)), SB_OK);
    char want[64];
    snprintf(want, sizeof(want), "redis+cluster://127.0.0.1:%d", g_node[1].port);
    assert_string_equal(resolved, want);
    sb_free(resolved);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/3", g_node[1].port);
    /* a cluster has only database 0: SELECT is refused and so is the URL */
    assert_int_not_equal(sb_redis_resolve_sync(url, 2000, &resolved, err, sizeof(err)), SB_OK);
    assert_null(resolved);
    assert_non_null(strstr(err, "SELECT"));
}

/* Moves |slot| from node |from| to node |to|; with |finish| 0 stops after migrating
 * |key| only (the slot stays MIGRATING/IMPORTING). */
static void move_slot(unsigned slot, int from, int to, const char *key, int finish)
{
    redisReply *id_to = test_redis_cmd(&g_node[to], "CLUSTER MYID");
    redisReply *id_from = test_redis_cmd(&g_node[from], "CLUSTER MYID");
    assert_non_null(id_to);
    assert_non_null(id_from);
    assert_int_equal(do_cmd(&g_node[to], "CLUSTER SETSLOT %u IMPORTING %s", slot, id_from->str), 0);
    assert_int_equal(do_cmd(&g_node[from], "CLUSTER SETSLOT %u MIGRATING %s", slot, id_to->str), 0);
    if (key != NULL)
        assert_int_equal(
            do_cmd(&g_node[from], "MIGRATE 127.0.0.1 %d %s 0 5000", g_node[to].port, key), 0);
    if (finish) {
        for (int i = 0; i < NODES; i++)
            assert_int_equal(do_cmd(&g_node[i], "CLUSTER SETSLOT %u NODE %s", slot, id_to->str), 0);
    }
    freeReplyObject(id_to);
    freeReplyObject(id_from);
}

static void finish_slot(unsigned slot, int to)
{
    redisReply *id_to = test_redis_cmd(&g_node[to], "CLUSTER MYID");
    for (int i = 0; i < NODES; i++)
        assert_int_equal(do_cmd(&g_node[i], "CLUSTER SETSLOT %u NODE %s", slot, id_to->str), 0);
    freeReplyObject(id_to);
}

static void test_moved_and_ask(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 5000));
    const char *k1 = "{mv}:a", *k2 = "{mv}:b";
    unsigned slot = sb_cluster_key_slot(k1, strlen(k1));
    const char *set1[] = {"SET", k1, "one"}, *set2[] = {"SET", k2, "two"};
    result res;
    assert_int_equal(run_cmd(base, r, &res, 3, set1), SB_OK);
    assert_int_equal(run_cmd(base, r, &res, 3, set2), SB_OK);
    int from = owner_of(k1), to = (from + 1) % NODES;
    /* ASK: k1 already on the target, k2 still on the source */
    move_slot(slot, from, to, k1, 0);
    const char *get1[] = {"GET", k1}, *get2[] = {"GET", k2};
    assert_int_equal(run_cmd(base, r, &res, 2, get1), SB_OK);
    assert_string_equal(res.str, "one");
    assert_int_equal(run_cmd(base, r, &res, 2, get2), SB_OK);
    assert_string_equal(res.str, "two");
    /* MOVED: the whole slot now lives on |to| */
    assert_int_equal(do_cmd(&g_node[from], "MIGRATE 127.0.0.1 %d %s 0 5000", g_node[to].port, k2),
                     0);
    finish_slot(slot, to);
    assert_int_equal(run_cmd(base, r, &res, 2, get2), SB_OK);
    assert_string_equal(res.str, "two");
    assert_int_equal(owner_of(k2), to);
    /* and it stays right after the refresh the MOVED asked for */
    test_run_for(base, 300);
    assert_int_equal(run_cmd(base, r, &res, 2, get1), SB_OK);
    assert_string_equal(res.str, "one");
    /* back where it was, for the other tests */
    move_slot(slot, to, from, NULL, 0);
    assert_int_equal(do_cmd(&g_node[to], "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %s %s",
                            g_node[from].port, "", k1, k2),
                     0);
    finish_slot(slot, from);
    sb_redis_free(r);
    event_base_free(base);
}

typedef struct sub_probe {
    int ups;
    int messages;
    char last[64];
} sub_probe;

static void on_sub_state(sb_redis *r, int up, void *arg)
{
    if (up)
        ((sub_probe *)arg)->ups++;
}

static void on_message(const char *channel, const char *data, size_t len, void *arg)
{
    sub_probe *p = arg;
    p->messages++;
    snprintf(p->last, sizeof(p->last), "%s", data);
}

static int sub_up(void *arg)
{
    return ((sub_probe *)arg)->ups > 0;
}

static int sub_up_again(void *arg)
{
    return ((sub_probe *)arg)->ups > 1;
}

static int got_message(void *arg)
{
    return ((sub_probe *)arg)->messages > 0;
}

static void test_pubsub_across_nodes(void **state)
{
    struct event_base *base = event_base_new();
    sub_probe p;
    memset(&p, 0, sizeof(p));
    sb_redis *sub = sb_redis_new(base, g_url, on_sub_state, &p);
    sb_redis_subscribe(sub, "sb:test", on_message, &p);
    assert_true(test_run_until(base, sub_up, &p, 5000));
    /* published on every node in turn: classic PUBLISH reaches the whole cluster */
    for (int i = 0; i < NODES; i++) {
        p.messages = 0;
        assert_int_equal(do_cmd(&g_node[i], "PUBLISH sb:test hello-%d", i), 0);
        assert_true(test_run_until(base, got_message, &p, 3000));
        char want[32];
        snprintf(want, sizeof(want), "hello-%d", i);
        assert_string_equal(p.last, want);
    }
    sb_redis_free(sub);
    event_base_free(base);
}

static void test_killed_master_fails_only_its_slots(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 5000));
    /* one key per node */
    char keys[NODES][32];
    memset(keys, 0, sizeof(keys));
    int found = 0;
    for (int i = 0; found < NODES && i < 1000; i++) {
        char k[32];
        snprintf(k, sizeof(k), "{kill-%d}", i);
        unsigned s = sb_cluster_key_slot(k, strlen(k));
        int n = s <= 5460 ? 0 : (s <= 10922 ? 1 : 2);
        if (keys[n][0] == '\0') {
            snprintf(keys[n], sizeof(keys[n]), "%s", k);
            found++;
        }
    }
    assert_int_equal(found, NODES);
    /* a subscriber seeded with the node about to die moves to another node */
    char sub_url[128];
    snprintf(sub_url, sizeof(sub_url), "redis+cluster://127.0.0.1:%d,127.0.0.1:%d", g_node[2].port,
             g_node[0].port);
    sub_probe p;
    memset(&p, 0, sizeof(p));
    sb_redis *sub = sb_redis_new(base, sub_url, on_sub_state, &p);
    sb_redis_subscribe(sub, "sb:test", on_message, &p);
    assert_true(test_run_until(base, sub_up, &p, 5000));
    test_redis_kill(&g_node[2]);
    int refused = 0, nulled = 0;
    for (int n = 0; n < NODES; n++) {
        const char *set[] = {"SET", keys[n], "x"};
        result res;
        memset(&res, 0, sizeof(res));
        int rc = sb_redis_command_argv(r, on_result, &res, 3, set, NULL);
        if (rc == SB_OK)
            assert_true(test_run_until(base, result_done, &res, 8000));
        if (n == 2) {
            /* the dead master's slot: refused at once, or a NULL reply (never an error) */
            refused += rc == SB_ERR_UNAVAILABLE;
            nulled += rc == SB_OK && res.null;
        } else {
            assert_int_equal(rc, SB_OK);
            assert_int_equal(res.type, REDIS_REPLY_STATUS);
        }
    }
    assert_int_equal(refused + nulled, 1);
    /* a second try, once the loss is noticed, is refused at once */
    test_run_for(base, 300);
    const char *set[] = {"SET", keys[2], "x"};
    result res;
    assert_int_equal(sb_redis_command_argv(r, on_result, &res, 3, set, NULL), SB_ERR_UNAVAILABLE);
    assert_true(sb_redis_is_up(r)); /* the other masters still serve */
    assert_true(test_run_until(base, sub_up_again, &p, 8000));
    p.messages = 0;
    assert_int_equal(do_cmd(&g_node[1], "PUBLISH sb:test after"), 0);
    assert_true(test_run_until(base, got_message, &p, 3000));
    assert_string_equal(p.last, "after");
    sb_redis_free(sub);
    sb_redis_free(r);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_crc16_and_slots),
        cmocka_unit_test(test_key_index),
        cmocka_unit_test(test_parse_error),
        cmocka_unit_test(test_cluster_urls),
    };
    const struct CMUnitTest real[] = {
        cmocka_unit_test(test_routes_every_master),
        cmocka_unit_test(test_detects_a_node_url),
        cmocka_unit_test(test_moved_and_ask),
        cmocka_unit_test(test_pubsub_across_nodes),
        cmocka_unit_test(test_killed_master_fails_only_its_slots), /* last: kills a node */
    };
    int failed = cmocka_run_group_tests_name("redis_cluster pure", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("redis_cluster real", real, group_setup, group_teardown);
    return failed;
}
