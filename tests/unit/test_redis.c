/*
 * test_redis.c — redis.c against real redis-server processes: URL parsing, connect and
 * commands, callbacks exactly once, fail-fast while down, reconnect after the server is
 * killed and restarted, the connect timeout against a listener that never answers, the
 * command watchdog against a stopped server, AUTH/SELECT, unix sockets, pub/sub, and scripts
 * sent by SHA (the script table from many threads, its SHA1 as Redis computes it; a SCRIPT
 * FLUSH in the middle of a pipeline survived, in order).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/listener.h>
#include <pthread.h>

#include "redis_harness.h"
#include "switchboard/common.h"
#include "switchboard/redis.h"
#include "switchboard/redis_sentinel.h"

static test_redis g_srv; /* shared by the tests that do not restart their server */

/* What callbacks saw. */
typedef struct probe {
    int ups, downs;
    int replies, nulls;
    char last[128];
    long long last_int;
    int messages;
    char message[128];
} probe;

static void on_state(sb_redis *r, int up, void *arg)
{
    probe *p = arg;
    if (up)
        p->ups++;
    else
        p->downs++;
}

static void on_reply(redisReply *reply, void *arg)
{
    probe *p = arg;
    if (reply == NULL) {
        p->nulls++;
        return;
    }
    p->replies++;
    p->last_int = reply->type == REDIS_REPLY_INTEGER ? reply->integer : 0;
    snprintf(p->last, sizeof(p->last), "%s",
             reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS ||
                     reply->type == REDIS_REPLY_ERROR
                 ? reply->str
                 : "");
}

static void on_message(const char *channel, const char *data, size_t len, void *arg)
{
    probe *p = arg;
    p->messages++;
    snprintf(p->message, sizeof(p->message), "%s:%.*s", channel, (int)len, data);
}

static int is_up(void *arg)
{
    return sb_redis_is_up(arg);
}

static int is_down(void *arg)
{
    return !sb_redis_is_up(arg);
}

static int has_reply(void *arg)
{
    const probe *p = arg;
    return p->replies + p->nulls > 0;
}

static int has_message(void *arg)
{
    const probe *p = arg;
    return p->messages > 0;
}

static int group_setup(void **state)
{
    return test_redis_group_start(&g_srv);
}

static int group_teardown(void **state)
{
    test_redis_stop(&g_srv);
    return 0;
}

/* Per-test teardown: whatever a test started (even if it failed half-way) dies here;
 * the group's shared server survives. */
static int kill_extra_servers(void **state)
{
    test_redis_kill_all_except(g_srv.pid, g_srv.dir);
    return 0;
}

static void test_url_check(void **state)
{
    char err[256];
    const char *good[] = {"redis://127.0.0.1:6379",
                          "redis://localhost",
                          "redis://:secret@127.0.0.1:6379/2",
                          "redis://user:secret@h/0",
                          "redis://secret@h",
                          "redis://u:p%40ss@h:1/",
                          "redis://[::1]:6379/3",
                          "redis://h/1?password=x",
                          "unix:///tmp/redis.sock",
                          "unix:///tmp/redis.sock?db=2&password=x&user=u"};
    for (size_t i = 0; i < SB_ARRAY_LEN(good); i++)
        assert_int_equal(sb_redis_url_check(good[i], err, sizeof(err)), SB_OK);
    const char *bad[] = {"",
                         "http://h",
                         "rediss://h",
                         "redis://",
                         "redis://h:0",
                         "redis://h:99999",
                         "redis://h/abc",
                         "unix://",
                         "unix://rel",
                         "redis://h?foo=1",
                         "redis://%zz@h",
                         "redis://[::1",
                         "redis://h:6379x",
                         "redis://h h"};
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        assert_int_equal(sb_redis_url_check(bad[i], err, sizeof(err)), SB_ERR_INVALID);
        assert_true(err[0] != '\0');
    }
    /* The password never shows up in the complaint. */
    assert_int_equal(sb_redis_url_check("redis://hunter2@h:notaport", err, sizeof(err)),
                     SB_ERR_INVALID);
    assert_null(strstr(err, "hunter2"));
    assert_null(sb_redis_new(NULL, "http://nope", NULL, NULL));
}

/* redis+sentinel:// (redis_sentinel.h): the forms, the master's credentials, errors that
 * never echo a password. No sentinel is contacted. */
static void test_sentinel_url(void **state)
{
    char err[256];
    const char *good[] = {"redis+sentinel://127.0.0.1:26379/mymaster",
                          "redis+sentinel://h1,h2:26380,[::1]:26381/m-1",
                          "redis+sentinel://:pw@h1:1,h2:2/m?db=3",
                          "redis+sentinel://u:p%40ss@h/m?sentinel_password=x&sentinel_user=s"};
    for (size_t i = 0; i < SB_ARRAY_LEN(good); i++)
        assert_int_equal(sb_redis_url_check(good[i], err, sizeof(err)), SB_OK);
    const char *bad[] = {"redis+sentinel://",       "redis+sentinel://h",
                         "redis+sentinel://h/",     "redis+sentinel://h:0/m",
                         "redis+sentinel://h,/m",   "redis+sentinel://h/m?x=1",
                         "redis+sentinel://h/m/n",  "redis+sentinel://%zz@h/m",
                         "redis+sentinel://h:1x/m", "redis+sentinel://h/m?db=x"};
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        assert_int_equal(sb_redis_url_check(bad[i], err, sizeof(err)), SB_ERR_INVALID);
        assert_true(err[0] != '\0');
    }
    sb_sentinel_creds c;
    assert_int_equal(
        sb_sentinel_url_parse("redis+sentinel://u:p%40ss@h1,h2/mm?db=2", &c, err, sizeof(err)),
        SB_OK);
    assert_string_equal(c.user, "u");
    assert_string_equal(c.password, "p@ss");
    assert_int_equal(c.db, 2);
    assert_string_equal(c.name, "mm");
    sb_sentinel_creds_clear(&c);
    assert_int_equal(sb_redis_url_check("redis+sentinel://hunter2@h:notaport/m", err, sizeof(err)),
                     SB_ERR_INVALID);
    assert_null(strstr(err, "hunter2"));
    sb_sentinel_stop();
}

static void test_connect_and_commands(void **state)
{
    struct event_base *base = event_base_new();
    probe p = {0};
    sb_redis *r = sb_redis_new(base, g_srv.url, on_state, &p);
    assert_non_null(r);
    assert_true(test_run_until(base, is_up, r, 3000));
    assert_int_equal(p.ups, 1);
    assert_int_equal(sb_redis_connects(r), 1);

    probe c = {0};
    assert_int_equal(sb_redis_command(r, on_reply, &c, "SET %s %s", "k1", "v1"), SB_OK);
    assert_true(test_run_until(base, has_reply, &c, 2000));
    assert_string_equal(c.last, "OK");

    probe g = {0};
    const char *argv[] = {"GET", "k1"};
    assert_int_equal(sb_redis_command_argv(r, on_reply, &g, 2, argv, NULL), SB_OK);
    assert_true(test_run_until(base, has_reply, &g, 2000));
    assert_string_equal(g.last, "v1");

    /* Exactly once: nothing more arrives later. */
    test_run_for(base, 100);
    assert_int_equal(c.replies + c.nulls, 1);
    assert_int_equal(g.replies + g.nulls, 1);
    /* A NULL callback is allowed. */
    assert_int_equal(sb_redis_command(r, NULL, NULL, "PING"), SB_OK);
    test_run_for(base, 50);

    sb_redis_free(r);
    assert_int_equal(p.downs, 0); /* no state callback from an owner's free */
    event_base_free(base);
}

/* ---- scripts by SHA ---- */

/* KEYS: a list. ARGV: a number. Appends it; returns the list's length. */
static const char push_lua[] = "return redis.call('RPUSH', KEYS[1], ARGV[1])\n";

typedef struct script_run {
    sb_redis *r;
    int replies, errors, nulls;
    int late_from, late_to; /* sent from the PING's reply (during a replay) */
} script_run;

static void on_script_reply(redisReply *reply, void *arg)
{
    script_run *sr = arg;
    if (reply == NULL)
        sr->nulls++;
    else if (reply->type != REDIS_REPLY_INTEGER)
        sr->errors++;
    else
        sr->replies++;
}

static void send_push(script_run *sr, int i)
{
    char n[16];
    snprintf(n, sizeof(n), "%d", i);
    const char *args[] = {"sb:test:order", n};
    assert_int_equal(
        sb_redis_eval(sr->r, sb_redis_script_get(NULL, push_lua), 1, 2, args, on_script_reply, sr),
        SB_OK);
}

/* Sent while NOSCRIPT replies are still coming back: these must run after every resend. */
static void on_ping_send_late(redisReply *reply, void *arg)
{
    script_run *sr = arg;
    for (int i = sr->late_from; i < sr->late_to; i++)
        send_push(sr, i);
}

static int all_scripts_answered(void *arg)
{
    const script_run *sr = arg;
    return sr->replies + sr->errors + sr->nulls >= 250;
}

static long long cmdstat_calls(const char *cmd)
{
    redisReply *rep = test_redis_cmd(&g_srv, "INFO commandstats");
    char want[64];
    snprintf(want, sizeof(want), "cmdstat_%s:calls=", cmd);
    const char *at = rep != NULL && rep->type == REDIS_REPLY_STRING ? strstr(rep->str, want) : NULL;
    long long n = at != NULL ? strtoll(at + strlen(want), NULL, 10) : 0;
    freeReplyObject(rep);
    return n;
}

/* The script table: one entry per (head, mid, body), the same from every thread, and
 * its SHA1 the one Redis computes for the same text (SCRIPT LOAD). */
static const char lib_lua[] = "local function twice(x) return x * 2 end\n";
static const char lib2_lua[] = "local function thrice(x) return x * 3 end\n";
static const char use_lua[] = "return twice(tonumber(ARGV[1]))\n";

static void *get_from_thread(void *arg)
{
    const sb_redis_script **out = arg;
    for (int i = 0; i < 1000; i++)
        out[i % 2] = i % 2 ? sb_redis_script_get3(lib2_lua, lib_lua, use_lua)
                           : sb_redis_script_get(lib_lua, use_lua);
    return NULL;
}

static void test_script_table(void **state)
{
    const sb_redis_script *got[4][2] = {{NULL}};
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, get_from_thread, got[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 1; i < 4; i++) {
        assert_ptr_equal(got[i][0], got[0][0]);
        assert_ptr_equal(got[i][1], got[0][1]);
    }
    assert_ptr_not_equal(got[0][0], got[0][1]);
    assert_ptr_equal(sb_redis_script_get(lib_lua, use_lua),
                     sb_redis_script_get3(lib_lua, NULL, use_lua));
    char text[512];
    snprintf(text, sizeof(text), "%s%s%s", lib2_lua, lib_lua, use_lua);
    redisReply *rep = test_redis_cmd(&g_srv, "SCRIPT LOAD %s", text);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, sb_redis_script_sha(got[0][1]));
    freeReplyObject(rep);
}

/* The first use of a script on a connection is an EVAL, every later one an EVALSHA; a
 * SCRIPT FLUSH in the middle of a pipeline makes the EVALSHAs behind it come back
 * NOSCRIPT, and each is sent again as EVAL: every caller gets its script's reply (never the
 * NOSCRIPT), and the scripts run in the order they were sent — also those sent while the
 * resends were under way. */
static void test_scripts_by_sha_survive_flush(void **state)
{
    const sb_redis_script *s = sb_redis_script_get(NULL, push_lua);
    assert_ptr_equal(s, sb_redis_script_get(NULL, push_lua)); /* made once */
    assert_int_equal(strlen(sb_redis_script_sha(s)), 40);
    freeReplyObject(test_redis_cmd(&g_srv, "DEL sb:test:order"));
    freeReplyObject(test_redis_cmd(&g_srv, "CONFIG RESETSTAT"));

    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_srv.url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    script_run sr = {.r = r, .late_from = 200, .late_to = 250};
    for (int i = 0; i < 100; i++)
        send_push(&sr, i);
    assert_int_equal(sb_redis_command(r, NULL, NULL, "SCRIPT FLUSH"), SB_OK);
    for (int i = 100; i < 150; i++)
        send_push(&sr, i);
    assert_int_equal(sb_redis_command(r, on_ping_send_late, &sr, "PING"), SB_OK);
    for (int i = 150; i < 200; i++)
        send_push(&sr, i);
    assert_true(test_run_until(base, all_scripts_answered, &sr, 5000));
    assert_int_equal(sr.errors, 0);
    assert_int_equal(sr.nulls, 0);
    assert_int_equal(sr.replies, 250);

    redisReply *list = test_redis_cmd(&g_srv, "LRANGE sb:test:order 0 -1");
    assert_non_null(list);
    assert_int_equal(list->elements, 250);
    for (size_t i = 0; i < list->elements; i++)
        assert_int_equal(strtol(list->element[i]->str, NULL, 10), (long)i);
    freeReplyObject(list);
    /* One EVAL before the flush, one per resend after it (the 100 behind the flush), none
     * for the ones held during the replay: they went by SHA after the reload. */
    assert_int_equal(cmdstat_calls("eval"), 1 + 100);
    assert_int_equal(cmdstat_calls("evalsha"), 99 + 100 + 50);

    /* A new connection starts over: its first use is an EVAL again. */
    sb_redis_free(r);
    r = sb_redis_new(base, g_srv.url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    probe p = {0};
    const char *args[] = {"sb:test:order", "250"};
    assert_int_equal(sb_redis_eval(r, s, 1, 2, args, on_reply, &p), SB_OK);
    assert_true(test_run_until(base, has_reply, &p, 2000));
    assert_int_equal(p.last_int, 251);
    assert_int_equal(cmdstat_calls("eval"), 1 + 100 + 1);
    sb_redis_free(r);
    event_base_free(base);
}

static void test_fail_fast_while_down(void **state)
{
    struct event_base *base = event_base_new();
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", test_free_port());
    probe p = {0};
    sb_redis *r = sb_redis_new(base, url, on_state, &p);
    test_run_for(base, 300);
    assert_false(sb_redis_is_up(r));
    probe c = {0};
    uint64_t t0 = sb_now_mono_us();
    assert_int_equal(sb_redis_command(r, on_reply, &c, "PING"), SB_ERR_UNAVAILABLE);
    assert_true(sb_now_mono_us() - t0 < 10000); /* at once, not after a timeout */
    test_run_for(base, 100);
    assert_int_equal(c.replies + c.nulls, 0); /* never called back */
    assert_int_equal(p.ups + p.downs, 0);
    sb_redis_free(r);
    event_base_free(base);
}

static void test_reconnect_after_restart(void **state)
{
    test_redis t = {0};
    assert_int_equal(test_redis_start(&t, 0), 0);
    struct event_base *base = event_base_new();
    probe p = {0};
    sb_redis *r = sb_redis_new(base, t.url, on_state, &p);
    assert_true(test_run_until(base, is_up, r, 3000));

    /* A command in flight when the server dies gets NULL, exactly once. */
    probe inflight = {0};
    assert_int_equal(sb_redis_command(r, on_reply, &inflight, "BLPOP %s %s", "nothing", "0"),
                     SB_OK);
    test_run_for(base, 50);
    test_redis_kill(&t);
    assert_true(test_run_until(base, is_down, r, 3000));
    test_run_for(base, 50);
    assert_int_equal(inflight.nulls, 1);
    assert_int_equal(inflight.replies, 0);
    assert_int_equal(p.downs, 1);

    /* While down: fail fast. */
    probe c = {0};
    assert_int_equal(sb_redis_command(r, on_reply, &c, "PING"), SB_ERR_UNAVAILABLE);

    /* Same port again: the back-off brings the connection back by itself. */
    test_run_for(base, 400);
    assert_int_equal(test_redis_start(&t, t.port), 0);
    assert_true(test_run_until(base, is_up, r, 8000));
    assert_int_equal(p.ups, 2);
    assert_int_equal(sb_redis_connects(r), 2);
    assert_int_equal(sb_redis_command(r, on_reply, &c, "PING"), SB_OK);
    assert_true(test_run_until(base, has_reply, &c, 2000));
    assert_string_equal(c.last, "PONG");
    assert_int_equal(inflight.nulls, 1);

    sb_redis_free(r);
    event_base_free(base);
    test_redis_stop(&t);
}

/* A listener that accepts and then never says a word. */
typedef struct mute {
    int accepted;
    int fds[32];
} mute;

static void on_mute_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                           int len, void *arg)
{
    mute *m = arg;
    if (m->accepted < 32)
        m->fds[m->accepted++] = fd;
    else
        close(fd);
}

static int accepted_two(void *arg)
{
    const mute *m = arg;
    return m->accepted >= 2;
}

static void test_connect_timeout(void **state)
{
    struct event_base *base = event_base_new();
    mute m = {0};
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *l = evconnlistener_new_bind(
        base, on_mute_accept, &m, LEV_OPT_CLOSE_ON_FREE, 16, (struct sockaddr *)&sa, sizeof(sa));
    assert_non_null(l);
    socklen_t slen = sizeof(sa);
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sa, &slen);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ntohs(sa.sin_port));

    probe p = {0};
    sb_redis *r = sb_redis_new(base, url, on_state, &p);
    sb_redis_set_timeouts(r, 200, 0);
    /* 200 ms + 100 ms back-off + slack: a second attempt must have been accepted. */
    assert_true(test_run_until(base, accepted_two, &m, 1500));
    assert_false(sb_redis_is_up(r));
    assert_int_equal(p.ups, 0);
    /* The abandoned connection was closed by the client: EOF after its PING bytes. */
    char buf[256];
    ssize_t n;
    int eof = 0;
    for (int i = 0; i < 50 && !eof; i++) {
        n = recv(m.fds[0], buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0)
            eof = 1;
        else
            test_sleep_ms(10);
    }
    assert_true(eof);
    /* It keeps trying (back-off 200, 400, 800 ms plus 200 ms timeouts). */
    int before = m.accepted;
    test_run_for(base, 2000);
    assert_true(m.accepted >= before + 2);
    assert_int_equal(p.ups, 0);
    assert_int_equal(sb_redis_command(r, NULL, NULL, "PING"), SB_ERR_UNAVAILABLE);

    sb_redis_free(r);
    for (int i = 0; i < m.accepted && i < 32; i++)
        close(m.fds[i]);
    evconnlistener_free(l);
    event_base_free(base);
}

static void test_free_runs_pending_callbacks(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_srv.url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    probe a = {0}, b = {0};
    assert_int_equal(sb_redis_command(r, on_reply, &a, "BLPOP %s %s", "never", "0"), SB_OK);
    assert_int_equal(sb_redis_command(r, on_reply, &b, "PING"), SB_OK);
    sb_redis_free(r); /* before any reply could be read */
    assert_int_equal(a.nulls, 1);
    assert_int_equal(b.nulls, 1);
    assert_int_equal(a.replies + b.replies, 0);
    event_base_free(base);
}

static void test_command_watchdog(void **state)
{
    test_redis t = {0};
    assert_int_equal(test_redis_start(&t, 0), 0);
    struct event_base *base = event_base_new();
    probe p = {0};
    sb_redis *r = sb_redis_new(base, t.url, on_state, &p);
    sb_redis_set_timeouts(r, 300, 300);
    assert_true(test_run_until(base, is_up, r, 3000));

    kill(t.pid, SIGSTOP); /* a wedged server: the socket stays open, nothing answers */
    probe c = {0};
    uint64_t t0 = sb_now_mono_us();
    assert_int_equal(sb_redis_command(r, on_reply, &c, "PING"), SB_OK);
    assert_true(test_run_until(base, has_reply, &c, 3000));
    uint64_t waited_ms = (sb_now_mono_us() - t0) / 1000;
    assert_int_equal(c.nulls, 1);
    assert_true(waited_ms >= 250 && waited_ms < 2000);
    assert_false(sb_redis_is_up(r));
    assert_int_equal(p.downs, 1);

    kill(t.pid, SIGCONT);
    assert_true(test_run_until(base, is_up, r, 8000));
    sb_redis_free(r);
    event_base_free(base);
    test_redis_stop(&t);
}

static void test_auth_and_select(void **state)
{
    test_redis t = {0};
    const char *extra[] = {"--requirepass", "s3cret pw", NULL};
    assert_int_equal(test_redis_start_args(&t, 0, extra, "s3cret pw"), 0);
    struct event_base *base = event_base_new();
    char url[160], err[256];

    /* Password with a space, %-encoded; database 3. */
    snprintf(url, sizeof(url), "redis://:s3cret%%20pw@127.0.0.1:%d/3", t.port);
    assert_int_equal(sb_redis_ping_sync(url, 1000, err, sizeof(err)), SB_OK);
    sb_redis *r = sb_redis_new(base, url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    probe c = {0};
    assert_int_equal(sb_redis_command(r, on_reply, &c, "SET %s %s", "in3", "yes"), SB_OK);
    assert_true(test_run_until(base, has_reply, &c, 2000));
    sb_redis_free(r);
    /* The key landed in db 3, not in db 0. */
    struct timeval tv = {2, 0};
    redisContext *sc = redisConnectWithTimeout("127.0.0.1", t.port, tv);
    redisReply *rep = redisCommand(sc, "AUTH %s", "s3cret pw");
    freeReplyObject(rep);
    rep = redisCommand(sc, "EXISTS in3");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    rep = redisCommand(sc, "SELECT 3");
    freeReplyObject(rep);
    rep = redisCommand(sc, "GET in3");
    assert_string_equal(rep->str, "yes");
    freeReplyObject(rep);
    redisFree(sc);

    /* user:password form (the "default" ACL user). */
    snprintf(url, sizeof(url), "redis://default:s3cret%%20pw@127.0.0.1:%d", t.port);
    r = sb_redis_new(base, url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    sb_redis_free(r);

    /* A wrong password never comes up, and the error does not repeat it. */
    snprintf(url, sizeof(url), "redis://:wrongpass@127.0.0.1:%d", t.port);
    assert_int_equal(sb_redis_ping_sync(url, 1000, err, sizeof(err)), SB_ERR_UNAVAILABLE);
    assert_null(strstr(err, "wrongpass"));
    assert_non_null(strstr(err, "127.0.0.1"));
    r = sb_redis_new(base, url, NULL, NULL);
    test_run_for(base, 500);
    assert_false(sb_redis_is_up(r));
    sb_redis_free(r);

    /* No password at all: the PING is refused (NOAUTH), so never up. */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", t.port);
    r = sb_redis_new(base, url, NULL, NULL);
    test_run_for(base, 500);
    assert_false(sb_redis_is_up(r));
    sb_redis_free(r);

    event_base_free(base);
    test_redis_stop(&t);
}

static void test_unix_socket(void **state)
{
    test_redis t = {0};
    assert_int_equal(test_redis_mkdir(&t), 0);
    snprintf(t.sock, sizeof(t.sock), "%s/r.sock", t.dir);
    const char *extra[] = {"--unixsocket", t.sock, NULL};
    assert_int_equal(test_redis_start_args(&t, 0, extra, NULL), 0);
    char url[200], err[256];
    snprintf(url, sizeof(url), "unix://%s?db=1", t.sock);
    assert_int_equal(sb_redis_ping_sync(url, 1000, err, sizeof(err)), SB_OK);
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    probe c = {0};
    assert_int_equal(sb_redis_command(r, on_reply, &c, "ECHO %s", "over-unix"), SB_OK);
    assert_true(test_run_until(base, has_reply, &c, 2000));
    assert_string_equal(c.last, "over-unix");
    sb_redis_free(r);

    /* A socket path that does not exist: down, fail fast, no crash on retries. */
    snprintf(url, sizeof(url), "unix://%s/missing.sock", t.dir);
    r = sb_redis_new(base, url, NULL, NULL);
    test_run_for(base, 300);
    assert_false(sb_redis_is_up(r));
    assert_int_equal(sb_redis_command(r, NULL, NULL, "PING"), SB_ERR_UNAVAILABLE);
    sb_redis_free(r);
    event_base_free(base);
    test_redis_stop(&t);
}

static void test_ping_sync(void **state)
{
    char err[256] = "";
    assert_int_equal(sb_redis_ping_sync(g_srv.url, 1000, err, sizeof(err)), SB_OK);
    char url[64];
    int port = test_free_port();
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    uint64_t t0 = sb_now_mono_us();
    assert_int_equal(sb_redis_ping_sync(url, 500, err, sizeof(err)), SB_ERR_UNAVAILABLE);
    assert_true(sb_now_mono_us() - t0 < 2000000);
    char where[32];
    snprintf(where, sizeof(where), "127.0.0.1:%d", port);
    assert_non_null(strstr(err, where));
    assert_int_equal(sb_redis_ping_sync("ftp://x", 500, err, sizeof(err)), SB_ERR_INVALID);
}

static void test_subscribe_survives_restart(void **state)
{
    test_redis t = {0};
    assert_int_equal(test_redis_start(&t, 0), 0);
    struct event_base *base = event_base_new();
    probe sp = {0};
    sb_redis *sub = sb_redis_new(base, t.url, on_state, &sp);
    sb_redis_subscribe(sub, "chan", on_message, &sp);
    sb_redis *pub = sb_redis_new(base, t.url, NULL, NULL);
    assert_true(test_run_until(base, is_up, sub, 3000));
    assert_true(test_run_until(base, is_up, pub, 3000));
    /* A subscriber carries no other commands. */
    assert_int_equal(sb_redis_command(sub, NULL, NULL, "PING"), SB_ERR_INVALID);

    probe c = {0};
    assert_int_equal(sb_redis_command(pub, on_reply, &c, "PUBLISH %s %s", "chan", "hello"), SB_OK);
    assert_true(test_run_until(base, has_message, &sp, 2000));
    assert_string_equal(sp.message, "chan:hello");
    assert_true(test_run_until(base, has_reply, &c, 2000));
    assert_int_equal(c.last_int, 1); /* one subscriber received it */

    test_redis_kill(&t);
    assert_true(test_run_until(base, is_down, sub, 3000));
    assert_int_equal(test_redis_start(&t, t.port), 0);
    assert_true(test_run_until(base, is_up, sub, 8000));
    assert_true(test_run_until(base, is_up, pub, 8000));
    assert_int_equal(sp.ups, 2);
    sp.messages = 0;
    probe c2 = {0};
    assert_int_equal(sb_redis_command(pub, on_reply, &c2, "PUBLISH %s %s", "chan", "again"), SB_OK);
    assert_true(test_run_until(base, has_message, &sp, 2000));
    assert_string_equal(sp.message, "chan:again");
    assert_int_equal(sp.messages, 1);

    sb_redis_free(sub);
    sb_redis_free(pub);
    event_base_free(base);
    test_redis_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_url_check, kill_extra_servers),
        cmocka_unit_test_teardown(test_sentinel_url, kill_extra_servers),
        cmocka_unit_test_teardown(test_connect_and_commands, kill_extra_servers),
        cmocka_unit_test_teardown(test_script_table, kill_extra_servers),
        cmocka_unit_test_teardown(test_scripts_by_sha_survive_flush, kill_extra_servers),
        cmocka_unit_test_teardown(test_fail_fast_while_down, kill_extra_servers),
        cmocka_unit_test_teardown(test_reconnect_after_restart, kill_extra_servers),
        cmocka_unit_test_teardown(test_connect_timeout, kill_extra_servers),
        cmocka_unit_test_teardown(test_free_runs_pending_callbacks, kill_extra_servers),
        cmocka_unit_test_teardown(test_command_watchdog, kill_extra_servers),
        cmocka_unit_test_teardown(test_auth_and_select, kill_extra_servers),
        cmocka_unit_test_teardown(test_unix_socket, kill_extra_servers),
        cmocka_unit_test_teardown(test_ping_sync, kill_extra_servers),
        cmocka_unit_test_teardown(test_subscribe_survives_restart, kill_extra_servers),
    };
    return cmocka_run_group_tests_name("redis", tests, group_setup, group_teardown);
}
