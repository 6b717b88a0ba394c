/*
 * test_auth.c — identifying callers (admin token, workspace tokens, wrong and malformed
 * headers, revoked tokens) and minting/revoking through a real redis-server, including
 * a revoke seen by another instance through the sync channel; and the per-thread digest
 * cache: only a token that identified a caller enters it, a hit gives sb_sha256_hex's
 * digest, another token of the same length in the same
 * slot is no hit (and evicts), long tokens are never cached, a revoked token fails even
 * while its digest is cached, each thread has its own cache.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "redis_harness.h"
#include "switchboard/auth.h"
#include "switchboard/common.h"
#include "switchboard/redis.h"
#include "switchboard/registry.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"

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

static int setup(void **state)
{
    if (test_redis_flushall(&g_srv) != 0)
        return -1;
    sb_auth_init("the-admin-token");
    sb_registry_init();
    return 0;
}

static int teardown(void **state)
{
    sb_sync_stop();
    sb_auth_shutdown();
    sb_registry_shutdown();
    return 0;
}

static int identify(const char *header, sb_identity *id)
{
    memset(id, 0x5a, sizeof(*id)); /* whatever was there must not leak through */
    return sb_auth_identify(header, id);
}

static void test_identify_admin(void **state)
{
    sb_identity id;
    const char *ok[] = {"Bearer the-admin-token", "bearer the-admin-token",
                        "BEARER\tthe-admin-token", "  Bearer   the-admin-token \t"};
    for (size_t i = 0; i < SB_ARRAY_LEN(ok); i++) {
        assert_int_equal(identify(ok[i], &id), SB_OK);
        assert_int_equal(id.kind, SB_IDENT_ADMIN);
    }
}

static void test_identify_rejects(void **state)
{
    sb_identity id;
    const char *bad[] = {"",
                         "Bearer",
                         "Bearer ",
                         "Basic the-admin-token",
                         "Bearerthe-admin-token",
                         "Bearer the-admin-token extra",
                         "Bearer the-admin-tokeN",
                         "Bearer the-admin-toke",
                         "Bearer the-admin-token\x01",
                         "Token the-admin-token",
                         "the-admin-token"};
    assert_int_equal(identify(NULL, &id), SB_ERR_AUTH);
    assert_int_equal(id.kind, SB_IDENT_NONE);
    for (size_t i = 0; i < SB_ARRAY_LEN(bad); i++) {
        assert_int_equal(identify(bad[i], &id), SB_ERR_AUTH);
        assert_int_equal(id.kind, SB_IDENT_NONE);
        assert_int_equal(id.workspace_id[0], '\0');
    }
    /* A huge header is refused without trouble. */
    char big[6000];
    memcpy(big, "Bearer ", 7);
    memset(big + 7, 'a', sizeof(big) - 8);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(identify(big, &id), SB_ERR_AUTH);

    /* Without an admin token configured nothing is admin, not even an empty one. */
    sb_auth_init(NULL);
    assert_int_equal(identify("Bearer the-admin-token", &id), SB_ERR_AUTH);
    sb_auth_init("");
    assert_int_equal(identify("Bearer the-admin-token", &id), SB_ERR_AUTH);
}

/* "sbt_" + 64 hex chars from |n|: a minted token's shape. */
static void numbered_token(unsigned long n, char out[SB_TOKEN_LEN + 1])
{
    char seed[32], digest[65];
    snprintf(seed, sizeof(seed), "seed-%lu", n);
    sb_sha256_hex(seed, strlen(seed), digest);
    snprintf(out, SB_TOKEN_LEN + 1, "sbt_%s", digest);
}

static void assert_digest(const char *token, size_t len, int hit)
{
    char want[65], got[65];
    sb_sha256_hex(token, len, want);
    uint64_t hits = sb_auth_cache_hits();
    memset(got, 'x', sizeof(got));
    assert_int_equal(sb_auth_token_digest(token, len, got), SB_OK);
    assert_string_equal(got, want);
    assert_int_equal(sb_auth_cache_hits() - hits, hit ? 1 : 0);
    sb_auth_remember(token, len, got); /* as sb_auth_identify does once it matched */
}

static void test_digest_cache(void **state)
{
    sb_auth_thread_clear();
    char a[SB_TOKEN_LEN + 1], b[SB_TOKEN_LEN + 1];
    numbered_token(0, a);
    size_t slot = sb_auth_cache_slot(a, SB_TOKEN_LEN);
    assert_true(slot != SIZE_MAX);
    assert_digest(a, SB_TOKEN_LEN, 0);
    assert_digest(a, SB_TOKEN_LEN, 1);
    assert_digest(a, SB_TOKEN_LEN, 1);
    /* A prefix of a cached token is another token (and its own slot's business). */
    assert_digest(a, SB_TOKEN_LEN - 1, 0);

    /* Another token of the same length in the same slot: no hit, and it takes the slot. */
    unsigned long n = 1;
    for (;; n++) {
        numbered_token(n, b);
        if (sb_auth_cache_slot(b, SB_TOKEN_LEN) == slot)
            break;
        assert_true(n < 100000);
    }
    assert_digest(b, SB_TOKEN_LEN, 0);
    assert_digest(b, SB_TOKEN_LEN, 1);
    assert_digest(a, SB_TOKEN_LEN, 0);
    /* The same token differing only in its last byte, also aimed at the slot by search. */
    memcpy(b, a, sizeof(b));
    for (int c = 0x21; c < 0x7f; c++) {
        b[SB_TOKEN_LEN - 1] = (char)c;
        if (c != a[SB_TOKEN_LEN - 1] && sb_auth_cache_slot(b, SB_TOKEN_LEN) == slot) {
            assert_digest(b, SB_TOKEN_LEN, 0);
            assert_digest(a, SB_TOKEN_LEN, 0);
        }
    }

    /* Long tokens bypass the cache; a cached length up to the limit is cached. */
    char longtok[300];
    memset(longtok, 'k', sizeof(longtok));
    assert_int_equal(sb_auth_cache_slot(longtok, 129), SIZE_MAX);
    assert_int_equal(sb_auth_cache_slot(longtok, 0), SIZE_MAX);
    assert_digest(longtok, 129, 0);
    assert_digest(longtok, 129, 0);
    assert_digest(longtok, sizeof(longtok), 0);
    assert_digest(longtok, sizeof(longtok), 0);
    assert_digest(longtok, 128, 0);
    assert_digest(longtok, 128, 1);

    /* Bytes that cannot be a token are refused, hit or not, and never cached. */
    char bad[SB_TOKEN_LEN + 1];
    memcpy(bad, a, sizeof(bad));
    bad[10] = ' ';
    for (int round = 0; round < 2; round++) {
        uint64_t hits = sb_auth_cache_hits();
        char out[65] = "untouched";
        assert_int_equal(sb_auth_token_digest(bad, SB_TOKEN_LEN, out), SB_ERR_AUTH);
        assert_int_equal(sb_auth_token_digest("a\x80"
                                              "b",
                                              3, out),
                         SB_ERR_AUTH);
        assert_int_equal(sb_auth_token_digest("", 0, out), SB_ERR_AUTH);
        assert_string_equal(out, "untouched");
        sb_auth_remember(bad, SB_TOKEN_LEN, a); /* ignored: cannot be a token */
        assert_int_equal(sb_auth_cache_hits(), hits);
    }

    /* Cleared: everything is hashed again. */
    sb_auth_thread_clear();
    assert_digest(longtok, 128, 0);
    sb_auth_thread_clear();
}

static void *other_thread(void *arg)
{
    const char *token = arg;
    uint64_t hits = sb_auth_cache_hits();
    char d[65];
    sb_auth_token_digest(token, strlen(token), d);
    sb_auth_remember(token, strlen(token), d);
    sb_auth_token_digest(token, strlen(token), d);
    sb_auth_thread_clear();
    sb_sha256_thread_clear(); /* what a worker does as it exits */
    return (void *)(uintptr_t)(sb_auth_cache_hits() - hits);
}

static void test_digest_cache_per_thread(void **state)
{
    sb_auth_thread_clear();
    char a[SB_TOKEN_LEN + 1];
    numbered_token(7, a);
    assert_digest(a, SB_TOKEN_LEN, 0);
    pthread_t t;
    void *ret;
    assert_int_equal(pthread_create(&t, NULL, other_thread, a), 0);
    assert_int_equal(pthread_join(t, &ret), 0);
    assert_int_equal((uintptr_t)ret, 1); /* its own miss, then its own hit */
    assert_digest(a, SB_TOKEN_LEN, 1);
    sb_auth_thread_clear();
}

static json_t *token_record(const char *token, const char *ws, const char *id)
{
    char digest[65];
    sb_sha256_hex(token, strlen(token), digest);
    return json_pack("{s:s,s:s,s:s,s:s}", "hash", digest, "workspace_id", ws, "token_id", id,
                     "created_at", "2026-01-01T00:00:00.000Z");
}

static void test_identify_workspace_tokens(void **state)
{
    sb_identity id;
    json_t *rec = token_record("sbt_alpha", "ws-a", "tok_1");
    sb_auth_apply_set(rec, 10);
    json_decref(rec);
    assert_int_equal(identify("Bearer sbt_alpha", &id), SB_OK);
    assert_int_equal(id.kind, SB_IDENT_WORKSPACE);
    assert_string_equal(id.workspace_id, "ws-a");
    assert_string_equal(id.token_id, "tok_1");
    assert_int_equal(identify("Bearer sbt_beta", &id), SB_ERR_AUTH);
    assert_int_equal(sb_auth_token_count(), 1);

    /* Revoked: a newer delete wins, an older set cannot bring it back. */
    char digest[65];
    sb_sha256_hex("sbt_alpha", 9, digest);
    sb_auth_apply_del(digest, 11);
    assert_int_equal(identify("Bearer sbt_alpha", &id), SB_ERR_AUTH);
    rec = token_record("sbt_alpha", "ws-a", "tok_1");
    sb_auth_apply_set(rec, 10);
    json_decref(rec);
    assert_int_equal(identify("Bearer sbt_alpha", &id), SB_ERR_AUTH);
    assert_int_equal(sb_auth_token_count(), 0);

    /* Malformed records are ignored. */
    rec = json_pack("{s:s,s:s,s:s}", "hash", "nothex", "workspace_id", "ws-a", "token_id", "t");
    sb_auth_apply_set(rec, 20);
    json_decref(rec);
    rec = token_record("sbt_gamma", "../bad", "tok_2");
    sb_auth_apply_set(rec, 20);
    json_decref(rec);
    assert_int_equal(sb_auth_token_count(), 0);

    /* A snapshot replaces older state: tokens it lacks are gone. */
    rec = token_record("sbt_delta", "ws-d", "tok_d");
    sb_auth_apply_set(rec, 30);
    json_decref(rec);
    json_t *snap = json_array();
    json_array_append_new(snap, token_record("sbt_eps", "ws-e", "tok_e"));
    sb_auth_apply_snapshot(snap, 40);
    json_decref(snap);
    assert_int_equal(identify("Bearer sbt_delta", &id), SB_ERR_AUTH);
    assert_int_equal(identify("Bearer sbt_eps", &id), SB_OK);
    assert_string_equal(id.workspace_id, "ws-e");
}

/* ---- minting and revoking through Redis ---- */

typedef struct minted {
    int done;
    int err;
    char token[80];
    char token_id[40];
} minted;

static void on_minted(int err, const char *token, const char *token_id, void *arg)
{
    minted *m = arg;
    m->done++;
    m->err = err;
    if (err == SB_OK) {
        snprintf(m->token, sizeof(m->token), "%s", token);
        snprintf(m->token_id, sizeof(m->token_id), "%s", token_id);
    }
}

typedef struct revoked {
    int done;
    int err;
} revoked;

static void on_revoked(int err, void *arg)
{
    revoked *r = arg;
    r->done++;
    r->err = err;
}

static int mint_done(void *arg)
{
    return ((minted *)arg)->done > 0;
}

static int revoke_done(void *arg)
{
    return ((revoked *)arg)->done > 0;
}

static int is_up(void *arg)
{
    return sb_redis_is_up(arg);
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[n] == '\0';
}

/* 1 if |needle| occurs in any key, field or value of the Redis at |t|. */
static int redis_contains(const test_redis *t, const char *needle)
{
    redisReply *keys = test_redis_cmd(t, "KEYS *");
    int found = 0;
    for (size_t i = 0; keys != NULL && i < keys->elements && !found; i++) {
        const char *k = keys->element[i]->str;
        if (strstr(k, needle) != NULL)
            found = 1;
        redisReply *type = test_redis_cmd(t, "TYPE %s", k);
        redisReply *dump = NULL;
        if (strcmp(type->str, "hash") == 0)
            dump = test_redis_cmd(t, "HGETALL %s", k);
        else if (strcmp(type->str, "string") == 0)
            dump = test_redis_cmd(t, "GET %s", k);
        else if (strcmp(type->str, "set") == 0)
            dump = test_redis_cmd(t, "SMEMBERS %s", k);
        if (dump != NULL && dump->type == REDIS_REPLY_ARRAY) {
            for (size_t j = 0; j < dump->elements; j++)
                if (strstr(dump->element[j]->str, needle) != NULL)
                    found = 1;
        } else if (dump != NULL && dump->type == REDIS_REPLY_STRING) {
            if (strstr(dump->str, needle) != NULL)
                found = 1;
        }
        if (dump != NULL)
            freeReplyObject(dump);
        freeReplyObject(type);
    }
    if (keys != NULL)
        freeReplyObject(keys);
    return found;
}

static void test_identify_cached_token_revoked(void **state)
{
    sb_auth_thread_clear();
    sb_identity id;
    char tok[SB_TOKEN_LEN + 1], header[SB_TOKEN_LEN + 16];
    numbered_token(42, tok);
    snprintf(header, sizeof(header), "Bearer %s", tok);
    json_t *rec = token_record(tok, "ws-c", "tok_c");
    sb_auth_apply_set(rec, 10);
    json_decref(rec);
    uint64_t hits = sb_auth_cache_hits();
    assert_int_equal(identify(header, &id), SB_OK);
    assert_int_equal(identify(header, &id), SB_OK);
    assert_int_equal(sb_auth_cache_hits() - hits, 1);
    assert_string_equal(id.workspace_id, "ws-c");
    assert_string_equal(id.token_id, "tok_c");
    /* Revoked while its digest is cached: refused at once. */
    char digest[65];
    sb_sha256_hex(tok, strlen(tok), digest);
    sb_auth_apply_del(digest, 11);
    assert_int_equal(identify(header, &id), SB_ERR_AUTH);
    assert_int_equal(sb_auth_cache_hits() - hits, 2);
    assert_int_equal(id.kind, SB_IDENT_NONE);
    /* A well-formed token nobody issued is refused and never enters the cache: a
     * stranger's guesses cannot evict a caller's entry. */
    char stranger[SB_TOKEN_LEN + 1], sheader[SB_TOKEN_LEN + 16];
    numbered_token(43, stranger);
    snprintf(sheader, sizeof(sheader), "Bearer %s", stranger);
    uint64_t before = sb_auth_cache_hits();
    assert_int_equal(identify(sheader, &id), SB_ERR_AUTH);
    assert_int_equal(identify(sheader, &id), SB_ERR_AUTH);
    assert_int_equal(sb_auth_cache_hits(), before);
    /* The admin token is cached like any other and still compared with the admin digest. */
    assert_int_equal(identify("Bearer the-admin-token", &id), SB_OK);
    assert_int_equal(identify("Bearer the-admin-token", &id), SB_OK);
    assert_int_equal(id.kind, SB_IDENT_ADMIN);
    sb_auth_init("another-admin-token");
    assert_int_equal(identify("Bearer the-admin-token", &id), SB_ERR_AUTH);
    sb_auth_thread_clear();
}

static void test_mint_and_revoke(void **state)
{
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_srv.url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));

    minted m = {0};
    assert_int_equal(sb_auth_mint(r, "ws-1", on_minted, &m), SB_OK);
    assert_true(test_run_until(base, mint_done, &m, 3000));
    assert_int_equal(m.err, SB_OK);
    assert_int_equal(strlen(m.token), SB_TOKEN_LEN);
    assert_memory_equal(m.token, "sbt_", 4);
    assert_true(is_hex(m.token + 4, 64));
    assert_int_equal(strlen(m.token_id), SB_TOKEN_ID_LEN);
    assert_memory_equal(m.token_id, "tok_", 4);
    assert_true(is_hex(m.token_id + 4, 16));

    /* Usable at once on the instance that minted it. */
    char header[128];
    snprintf(header, sizeof(header), "Bearer %s", m.token);
    sb_identity id;
    assert_int_equal(identify(header, &id), SB_OK);
    assert_int_equal(id.kind, SB_IDENT_WORKSPACE);
    assert_string_equal(id.workspace_id, "ws-1");
    assert_string_equal(id.token_id, m.token_id);

    /* Redis holds the hash, never the token. */
    char digest[65];
    sb_sha256_hex(m.token, strlen(m.token), digest);
    assert_false(redis_contains(&g_srv, m.token));
    assert_false(redis_contains(&g_srv, m.token + 4));
    redisReply *rep = test_redis_cmd(&g_srv, "HGET %s %s", SB_SYNC_TOKENS_KEY, digest);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(rep->str, m.token_id));
    freeReplyObject(rep);
    rep = test_redis_cmd(&g_srv, "HGET " SB_SYNC_WS_TOKENS_KEY " ws-1:%s", m.token_id);
    assert_string_equal(rep->str, digest);
    freeReplyObject(rep);

    /* A second token for the same workspace is independent. */
    minted m2 = {0};
    assert_int_equal(sb_auth_mint(r, "ws-1", on_minted, &m2), SB_OK);
    assert_true(test_run_until(base, mint_done, &m2, 3000));
    assert_string_not_equal(m2.token, m.token);
    assert_string_not_equal(m2.token_id, m.token_id);

    /* Revoking under another workspace's path finds nothing. */
    revoked rv = {0};
    assert_int_equal(sb_auth_revoke(r, "ws-2", m.token_id, on_revoked, &rv), SB_OK);
    assert_true(test_run_until(base, revoke_done, &rv, 3000));
    assert_int_equal(rv.err, SB_ERR_NOTFOUND);
    assert_int_equal(identify(header, &id), SB_OK);

    memset(&rv, 0, sizeof(rv));
    assert_int_equal(sb_auth_revoke(r, "ws-1", m.token_id, on_revoked, &rv), SB_OK);
    assert_true(test_run_until(base, revoke_done, &rv, 3000));
    assert_int_equal(rv.err, SB_OK);
    assert_int_equal(identify(header, &id), SB_ERR_AUTH); /* before any sync message */
    rep = test_redis_cmd(&g_srv, "HEXISTS %s %s", SB_SYNC_TOKENS_KEY, digest);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);

    memset(&rv, 0, sizeof(rv));
    assert_int_equal(sb_auth_revoke(r, "ws-1", m.token_id, on_revoked, &rv), SB_OK);
    assert_true(test_run_until(base, revoke_done, &rv, 3000));
    assert_int_equal(rv.err, SB_ERR_NOTFOUND);

    /* The other token still works. */
    snprintf(header, sizeof(header), "Bearer %s", m2.token);
    assert_int_equal(identify(header, &id), SB_OK);

    sb_redis_free(r);

    /* Down: fail fast, no callback. */
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", test_free_port());
    r = sb_redis_new(base, url, NULL, NULL);
    minted m3 = {0};
    assert_int_equal(sb_auth_mint(r, "ws-1", on_minted, &m3), SB_ERR_UNAVAILABLE);
    assert_int_equal(sb_auth_revoke(r, "ws-1", "tok_x", on_revoked, &rv), SB_ERR_UNAVAILABLE);
    test_run_for(base, 50);
    assert_int_equal(m3.done, 0);
    sb_redis_free(r);
    event_base_free(base);
}

/* Another instance: loads the tokens by snapshot, says so, then must see the revoke. */
static int other_instance(const char *token, int in, int out, void *arg)
{
    const char *url = arg;
    struct event_base *base = event_base_new();
    sb_auth_shutdown();
    sb_auth_init("the-admin-token");
    if (sb_sync_start(base, url) != SB_OK)
        return 10;
    uint64_t deadline = sb_now_mono_us() + 5000000;
    while (!sb_sync_ready() && sb_now_mono_us() < deadline) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        test_sleep_ms(1);
    }
    char header[600];
    snprintf(header, sizeof(header), "Bearer %s", token);
    sb_identity id;
    if (sb_auth_identify(header, &id) != SB_OK || strcmp(id.workspace_id, "ws-x") != 0)
        return 11; /* the snapshot did not bring the token */
    if (write(out, "R", 1) != 1)
        return 12;
    deadline = sb_now_mono_us() + 5000000;
    while (sb_auth_identify(header, &id) == SB_OK && sb_now_mono_us() < deadline) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        test_sleep_ms(1);
    }
    int rc = sb_auth_identify(header, &id) == SB_ERR_AUTH ? 0 : 13;
    sb_sync_stop();
    event_base_free(base);
    return rc;
}

static void test_revoke_reaches_other_instances(void **state)
{
    test_child child = {0};
    assert_int_equal(test_child_start(&child, other_instance, g_srv.url), 0);
    struct event_base *base = event_base_new();
    sb_redis *r = sb_redis_new(base, g_srv.url, NULL, NULL);
    assert_true(test_run_until(base, is_up, r, 3000));
    minted m = {0};
    assert_int_equal(sb_auth_mint(r, "ws-x", on_minted, &m), SB_OK);
    assert_true(test_run_until(base, mint_done, &m, 3000));
    assert_int_equal(m.err, SB_OK);

    test_child_send(&child, m.token);
    assert_int_equal(test_read_byte(child.from_child, 5000), 'R');
    revoked rv = {0};
    assert_int_equal(sb_auth_revoke(r, "ws-x", m.token_id, on_revoked, &rv), SB_OK);
    assert_true(test_run_until(base, revoke_done, &rv, 3000));
    assert_int_equal(rv.err, SB_OK);
    assert_int_equal(test_child_wait(&child, 5000), 0);
    sb_redis_free(r);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_identify_admin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identify_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identify_workspace_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digest_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digest_cache_per_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identify_cached_token_revoked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mint_and_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoke_reaches_other_instances, setup, teardown),
    };
    return cmocka_run_group_tests_name("auth", tests, group_setup, group_teardown);
}
