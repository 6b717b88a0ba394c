/*
 * test_circuit.c — the circuit breaker and in-flight limit (circuit.h, SPEC §4.2).
 *
 * Time is a fake clock installed with sb_circuit_test_set_clock, so cool-downs are
 * stepped exactly, never slept through. Each test starts from an empty table at
 * 2026-11-24T14:02:02.000Z. The threaded tests check the invariants that matter under
 * contention: exactly one probe wins a race, max_concurrency is never exceeded, and
 * every count returns to zero.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "switchboard/circuit.h"

#define T0_MS INT64_C(1795528922000) /* 2026-11-24T14:02:02.000Z */

static _Atomic uint64_t fake_us;
static _Atomic int64_t fake_ms;
static _Atomic int64_t auto_tick_ms; /* when > 0, each monotonic read advances both clocks */

static uint64_t fake_mono(void)
{
    int64_t tick_ms = atomic_load(&auto_tick_ms);
    if (tick_ms > 0) {
        atomic_fetch_add(&fake_ms, tick_ms);
        return atomic_fetch_add(&fake_us, (uint64_t)tick_ms * 1000u) + (uint64_t)tick_ms * 1000u;
    }
    return atomic_load(&fake_us);
}

static int64_t fake_wall(void)
{
    return atomic_load(&fake_ms);
}

static void advance_ms(int64_t ms)
{
    atomic_fetch_add(&fake_us, (uint64_t)ms * 1000u);
    atomic_fetch_add(&fake_ms, ms);
}

static int setup(void **state)
{
    sb_circuit_shutdown();
    atomic_store(&fake_us, UINT64_C(1000000000)); /* far from 0: no wrap-around help */
    atomic_store(&fake_ms, T0_MS);
    atomic_store(&auto_tick_ms, 0);
    sb_circuit_test_set_clock(fake_mono, fake_wall);
    sb_circuit_init();
    return 0;
}

static int teardown(void **state)
{
    sb_circuit_shutdown();
    sb_circuit_test_set_clock(NULL, NULL);
    return 0;
}

/* One complete push to |ws| that must be admitted, ending with |outcome|. */
static void push(const char *ws, sb_reason outcome)
{
    char detail[256] = "";
    assert_int_equal(sb_circuit_begin(ws, 0, detail, sizeof(detail)), SB_REASON_NONE);
    sb_circuit_end(ws, outcome);
}

static void fail_n(const char *ws, int n, sb_reason outcome)
{
    for (int i = 0; i < n; i++)
        push(ws, outcome);
}

/* Fields of sb_circuit_describe, checked one by one so a failure names the field. */
static const char *desc_state(const char *ws, char *buf, size_t cap)
{
    json_t *d = sb_circuit_describe(ws);
    snprintf(buf, cap, "%s", json_string_value(json_object_get(d, "state")));
    json_decref(d);
    return buf;
}

static json_int_t desc_int(const char *ws, const char *key)
{
    json_t *d = sb_circuit_describe(ws);
    json_t *v = json_object_get(d, key);
    assert_true(json_is_integer(v));
    json_int_t n = json_integer_value(v);
    json_decref(d);
    return n;
}

#define assert_state(ws, expected)                                                                 \
    do {                                                                                           \
        char buf_[32];                                                                             \
        assert_string_equal(desc_state((ws), buf_, sizeof(buf_)), (expected));                     \
    } while (0)

static void test_threshold_exact(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD - 1, SB_REASON_CONNECT_REFUSED);
    assert_state("ws1", "closed");
    assert_int_equal(desc_int("ws1", "consecutive_failures"), SB_CIRCUIT_THRESHOLD - 1);
    assert_int_equal(sb_circuit_open_count(), 0);

    push("ws1", SB_REASON_CONNECT_REFUSED); /* the 5th */
    assert_state("ws1", "open");
    assert_int_equal(sb_circuit_open_count(), 1);
    char detail[256] = "";
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);
}

static void test_every_counting_reason_opens(void **state)
{
    static const sb_reason counting[] = {
        SB_REASON_DNS_ERROR,       SB_REASON_CONNECT_REFUSED,    SB_REASON_CONNECT_TIMEOUT,
        SB_REASON_TLS_ERROR,       SB_REASON_UPSTREAM_FORBIDDEN, SB_REASON_HTTP_404,
        SB_REASON_HTTP_405,        SB_REASON_HTTP_429,           SB_REASON_HTTP_5XX,
        SB_REASON_HTTP_OTHER,      SB_REASON_RESPONSE_TIMEOUT,   SB_REASON_CONNECTION_RESET,
        SB_REASON_INVALID_RESPONSE};
    for (size_t i = 0; i < sizeof(counting) / sizeof(counting[0]); i++) {
        char ws[32];
        snprintf(ws, sizeof(ws), "count-%zu", i);
        fail_n(ws, SB_CIRCUIT_THRESHOLD, counting[i]);
        assert_state(ws, "open");
        json_t *d = sb_circuit_describe(ws);
        assert_string_equal(json_string_value(json_object_get(d, "last_failure_reason")),
                            sb_reason_name(counting[i]));
        json_decref(d);
    }
    assert_int_equal(sb_circuit_open_count(), (int)(sizeof(counting) / sizeof(counting[0])));
}

/* 401/403/413 are neutral: they neither count nor reset the streak. */
static void test_neutral_statuses(void **state)
{
    fail_n("fresh", 20, SB_REASON_HTTP_401);
    fail_n("fresh", 20, SB_REASON_HTTP_403);
    fail_n("fresh", 20, SB_REASON_HTTP_413);
    assert_state("fresh", "closed");
    assert_int_equal(desc_int("fresh", "consecutive_failures"), 0);

    fail_n("streak", SB_CIRCUIT_THRESHOLD - 1, SB_REASON_HTTP_5XX);
    push("streak", SB_REASON_HTTP_401);
    push("streak", SB_REASON_HTTP_403);
    push("streak", SB_REASON_HTTP_413);
    assert_state("streak", "closed");
    assert_int_equal(desc_int("streak", "consecutive_failures"), SB_CIRCUIT_THRESHOLD - 1);
    json_t *d = sb_circuit_describe("streak");
    assert_string_equal(json_string_value(json_object_get(d, "last_failure_reason")), "http_5xx");
    json_decref(d);
    push("streak", SB_REASON_HTTP_5XX); /* the streak was kept: this one opens */
    assert_state("streak", "open");
}

static void test_success_resets_streak(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD - 1, SB_REASON_HTTP_404);
    push("ws1", SB_REASON_NONE);
    assert_int_equal(desc_int("ws1", "consecutive_failures"), 0);
    fail_n("ws1", SB_CIRCUIT_THRESHOLD - 1, SB_REASON_HTTP_404);
    assert_state("ws1", "closed");
    push("ws1", SB_REASON_HTTP_404);
    assert_state("ws1", "open");
}

static void test_open_detail_names_reason_and_time(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD - 1, SB_REASON_HTTP_5XX);
    push("ws1", SB_REASON_CONNECT_REFUSED);
    char detail[256] = "";
    assert_int_equal(sb_circuit_begin("ws1", 4, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    assert_string_equal(detail,
                        "circuit open after 5 consecutive failures (last: connect_refused); "
                        "next probe at 2026-11-24T14:02:07.000Z (cool-down 5 s)");
    /* a small buffer is truncated, never overrun */
    char small[16];
    memset(small, 'x', sizeof(small));
    assert_int_equal(sb_circuit_begin("ws1", 0, small, 10), SB_REASON_CIRCUIT_OPEN);
    assert_int_equal(strlen(small), 9);
    assert_int_equal(small[10], 'x');
    assert_int_equal(sb_circuit_begin("ws1", 0, NULL, 0), SB_REASON_CIRCUIT_OPEN);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);
}

static void test_half_open_admits_one_probe(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_TIMEOUT);
    char detail[256];
    advance_ms(SB_CIRCUIT_COOLDOWN_MS - 1);
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    assert_state("ws1", "open");
    advance_ms(1);
    assert_state("ws1", "half_open"); /* ready: the next push is the probe */
    assert_int_equal(sb_circuit_open_count(), 1);

    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_inflight("ws1"), 1);
    assert_state("ws1", "half_open");
    json_t *d = sb_circuit_describe("ws1");
    assert_string_equal(json_string_value(json_object_get(d, "probe_started_at")),
                        "2026-11-24T14:02:07.000Z");
    assert_true(json_is_null(json_object_get(d, "retry_at")));
    json_decref(d);

    for (int i = 0; i < 3; i++) {
        detail[0] = '\0';
        assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)),
                         SB_REASON_CIRCUIT_OPEN);
        assert_non_null(strstr(detail, "probe push is in flight since 2026-11-24T14:02:07.000Z"));
        assert_non_null(strstr(detail, "(last: connect_timeout)"));
    }
    assert_int_equal(sb_circuit_inflight("ws1"), 1);
    assert_int_equal(sb_circuit_open_count(), 1);
}

static void test_probe_success_closes(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    advance_ms(SB_CIRCUIT_COOLDOWN_MS);
    push("ws1", SB_REASON_NONE); /* the probe */
    assert_state("ws1", "closed");
    assert_int_equal(desc_int("ws1", "consecutive_failures"), 0);
    assert_int_equal(sb_circuit_open_count(), 0);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);
    push("ws1", SB_REASON_NONE);
    /* a new outage starts again from the base cool-down */
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    assert_int_equal(desc_int("ws1", "cooldown_ms"), SB_CIRCUIT_COOLDOWN_MS);
}

static void test_probe_failure_reopens_doubled(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    advance_ms(SB_CIRCUIT_COOLDOWN_MS);
    push("ws1", SB_REASON_HTTP_5XX); /* the probe fails */
    assert_state("ws1", "open");
    assert_int_equal(desc_int("ws1", "cooldown_ms"), 2 * SB_CIRCUIT_COOLDOWN_MS);
    assert_int_equal(desc_int("ws1", "consecutive_failures"), SB_CIRCUIT_THRESHOLD + 1);
    assert_int_equal(sb_circuit_open_count(), 1);

    char detail[256];
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    assert_string_equal(detail, "circuit open after 6 consecutive failures (last: http_5xx); "
                                "next probe at 2026-11-24T14:02:17.000Z (cool-down 10 s)");
    json_t *d = sb_circuit_describe("ws1");
    assert_string_equal(json_string_value(json_object_get(d, "opened_at")),
                        "2026-11-24T14:02:02.000Z"); /* the outage's start, kept */
    assert_string_equal(json_string_value(json_object_get(d, "retry_at")),
                        "2026-11-24T14:02:17.000Z");
    json_decref(d);

    advance_ms(2 * SB_CIRCUIT_COOLDOWN_MS - 1);
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    advance_ms(1);
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    sb_circuit_end("ws1", SB_REASON_NONE);
    assert_state("ws1", "closed");
}

static void test_cooldown_capped(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    int64_t expected = SB_CIRCUIT_COOLDOWN_MS;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(desc_int("ws1", "cooldown_ms"), expected);
        advance_ms(expected - 1);
        char detail[256];
        assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)),
                         SB_REASON_CIRCUIT_OPEN);
        advance_ms(1);
        push("ws1", SB_REASON_CONNECT_REFUSED); /* a failed probe */
        expected *= 2;
        if (expected > SB_CIRCUIT_COOLDOWN_MAX_MS)
            expected = SB_CIRCUIT_COOLDOWN_MAX_MS;
    }
    assert_int_equal(desc_int("ws1", "cooldown_ms"), SB_CIRCUIT_COOLDOWN_MAX_MS);
}

/* A probe answered 401/403/413 gives no verdict: still open, the next push probes. */
static void test_neutral_probe(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    advance_ms(SB_CIRCUIT_COOLDOWN_MS);
    push("ws1", SB_REASON_HTTP_413);
    assert_state("ws1", "half_open");
    assert_int_equal(desc_int("ws1", "cooldown_ms"), SB_CIRCUIT_COOLDOWN_MS);
    assert_int_equal(desc_int("ws1", "consecutive_failures"), SB_CIRCUIT_THRESHOLD);
    push("ws1", SB_REASON_HTTP_401); /* admitted at once as the next probe */
    push("ws1", SB_REASON_NONE);
    assert_state("ws1", "closed");
}

static void test_busy_and_release(void **state)
{
    char detail[256];
    for (int i = 0; i < 4; i++)
        assert_int_equal(sb_circuit_begin("ws1", 4, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_begin("ws1", 4, detail, sizeof(detail)), SB_REASON_BUSY);
    assert_string_equal(detail, "4 pushes in flight, max_concurrency 4");
    assert_int_equal(sb_circuit_inflight("ws1"), 4); /* the refusal counted nothing */
    assert_int_equal(desc_int("ws1", "inflight"), 4);

    sb_circuit_end("ws1", SB_REASON_NONE);
    assert_int_equal(sb_circuit_inflight("ws1"), 3);
    assert_int_equal(sb_circuit_begin("ws1", 4, detail, sizeof(detail)), SB_REASON_NONE);
    for (int i = 0; i < 4; i++)
        sb_circuit_end("ws1", SB_REASON_NONE);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);

    assert_int_equal(sb_circuit_begin("one", 1, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_begin("one", 1, detail, sizeof(detail)), SB_REASON_BUSY);
    assert_string_equal(detail, "1 push in flight, max_concurrency 1");
    assert_int_equal(sb_circuit_inflight("other"), 0); /* per workspace */

    for (int i = 0; i < 1000; i++) /* 0: unlimited */
        assert_int_equal(sb_circuit_begin("many", 0, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_inflight("many"), 1000);
    for (int i = 0; i < 1000; i++)
        sb_circuit_end("many", SB_REASON_NONE);
    assert_int_equal(sb_circuit_inflight("many"), 0);
}

/* Pushes begun before the circuit opened: circuit_open wins over busy, a straggler's
 * failure only adds to the streak, and capacity still applies to the probe. */
static void test_circuit_wins_over_busy(void **state)
{
    char detail[256];
    assert_int_equal(sb_circuit_begin("ws1", 1, detail, sizeof(detail)), SB_REASON_NONE);
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECTION_RESET);
    assert_int_equal(sb_circuit_inflight("ws1"), 1);
    assert_int_equal(sb_circuit_begin("ws1", 1, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    assert_non_null(strstr(detail, "circuit open"));

    advance_ms(SB_CIRCUIT_COOLDOWN_MS); /* cool-down over, but the straggler fills capacity */
    assert_int_equal(sb_circuit_begin("ws1", 1, detail, sizeof(detail)), SB_REASON_BUSY);
    assert_state("ws1", "half_open");
    sb_circuit_end("ws1", SB_REASON_RESPONSE_TIMEOUT); /* the straggler */
    assert_int_equal(desc_int("ws1", "consecutive_failures"), SB_CIRCUIT_THRESHOLD + 1);
    assert_int_equal(desc_int("ws1", "cooldown_ms"), SB_CIRCUIT_COOLDOWN_MS); /* no probe yet */
    assert_int_equal(sb_circuit_begin("ws1", 1, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_begin("ws1", 1, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
}

static void test_straggler_success_closes(void **state)
{
    char detail[256];
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECTION_RESET);
    assert_state("ws1", "open");
    sb_circuit_end("ws1", SB_REASON_NONE);
    assert_state("ws1", "closed");
    assert_int_equal(sb_circuit_open_count(), 0);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);
}

/* Probe and a straggler in flight together: the last one to end is the verdict. */
static void test_probe_with_straggler(void **state)
{
    char detail[256];
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    advance_ms(SB_CIRCUIT_COOLDOWN_MS);
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_inflight("ws1"), 2);

    sb_circuit_end("ws1", SB_REASON_RESPONSE_TIMEOUT); /* no verdict while one is left */
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_CIRCUIT_OPEN);
    assert_non_null(strstr(detail, "a probe push is in flight"));
    assert_state("ws1", "half_open");
    assert_int_equal(desc_int("ws1", "cooldown_ms"), SB_CIRCUIT_COOLDOWN_MS);
    sb_circuit_end("ws1", SB_REASON_CONNECT_REFUSED);
    assert_state("ws1", "open");
    assert_int_equal(desc_int("ws1", "cooldown_ms"), 2 * SB_CIRCUIT_COOLDOWN_MS);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);
    assert_int_equal(sb_circuit_open_count(), 1);
}

static void test_reset(void **state)
{
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    assert_int_equal(sb_circuit_open_count(), 1);
    sb_circuit_reset("ws1");
    assert_int_equal(sb_circuit_open_count(), 0);
    assert_state("ws1", "closed");
    assert_int_equal(desc_int("ws1", "consecutive_failures"), 0);
    assert_int_equal(sb_circuit_test_entry_count(), 0); /* nothing in flight: forgotten */
    push("ws1", SB_REASON_NONE);

    /* a reset during a probe keeps the in-flight count; the probe's end is then a normal
     * outcome of the closed circuit */
    sb_circuit_reset("ws1");
    fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    advance_ms(SB_CIRCUIT_COOLDOWN_MS);
    char detail[256];
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    sb_circuit_reset("ws1");
    assert_int_equal(sb_circuit_inflight("ws1"), 1);
    assert_int_equal(sb_circuit_open_count(), 0);
    assert_int_equal(sb_circuit_begin("ws1", 0, detail, sizeof(detail)), SB_REASON_NONE);
    sb_circuit_end("ws1", SB_REASON_CONNECT_REFUSED);
    sb_circuit_end("ws1", SB_REASON_CONNECT_REFUSED);
    assert_state("ws1", "closed");
    assert_int_equal(desc_int("ws1", "consecutive_failures"), 2);
    assert_int_equal(sb_circuit_inflight("ws1"), 0);

    sb_circuit_reset("never-seen"); /* no-op */
    sb_circuit_end("never-seen", SB_REASON_HTTP_5XX);
    assert_int_equal(sb_circuit_test_entry_count(), 1);
}

static void test_describe_fields(void **state)
{
    json_t *d = sb_circuit_describe("never-seen");
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "state")), "closed");
    assert_int_equal(json_integer_value(json_object_get(d, "consecutive_failures")), 0);
    assert_int_equal(json_integer_value(json_object_get(d, "inflight")), 0);
    static const char *const nulls[] = {"last_failure_reason", "opened_at", "retry_at",
                                        "probe_started_at", "cooldown_ms"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++) {
        json_t *v = json_object_get(d, nulls[i]);
        assert_non_null(v); /* present */
        assert_true(json_is_null(v));
    }
    assert_int_equal(json_object_size(d), 8);
    json_decref(d);
    assert_int_equal(sb_circuit_test_entry_count(), 0); /* describe never creates */

    fail_n("ws1", 2, SB_REASON_DNS_ERROR);
    d = sb_circuit_describe("ws1");
    assert_string_equal(json_string_value(json_object_get(d, "state")), "closed");
    assert_int_equal(json_integer_value(json_object_get(d, "consecutive_failures")), 2);
    assert_string_equal(json_string_value(json_object_get(d, "last_failure_reason")), "dns_error");
    assert_true(json_is_null(json_object_get(d, "opened_at")));
    json_decref(d);

    advance_ms(1500);
    fail_n("ws1", SB_CIRCUIT_THRESHOLD - 2, SB_REASON_TLS_ERROR);
    d = sb_circuit_describe("ws1");
    assert_string_equal(json_string_value(json_object_get(d, "state")), "open");
    assert_int_equal(json_integer_value(json_object_get(d, "consecutive_failures")),
                     SB_CIRCUIT_THRESHOLD);
    assert_string_equal(json_string_value(json_object_get(d, "last_failure_reason")), "tls_error");
    assert_string_equal(json_string_value(json_object_get(d, "opened_at")),
                        "2026-11-24T14:02:03.500Z");
    assert_string_equal(json_string_value(json_object_get(d, "retry_at")),
                        "2026-11-24T14:02:08.500Z");
    assert_true(json_is_null(json_object_get(d, "probe_started_at")));
    assert_int_equal(json_integer_value(json_object_get(d, "cooldown_ms")), SB_CIRCUIT_COOLDOWN_MS);
    assert_int_equal(json_integer_value(json_object_get(d, "inflight")), 0);
    assert_int_equal(json_object_size(d), 8);
    json_decref(d);
}

static void test_open_count(void **state)
{
    fail_n("a", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    fail_n("b", SB_CIRCUIT_THRESHOLD, SB_REASON_HTTP_404);
    fail_n("c", SB_CIRCUIT_THRESHOLD - 1, SB_REASON_HTTP_404);
    assert_int_equal(sb_circuit_open_count(), 2);
    advance_ms(SB_CIRCUIT_COOLDOWN_MS);
    char detail[256];
    assert_int_equal(sb_circuit_begin("a", 0, detail, sizeof(detail)), SB_REASON_NONE);
    assert_int_equal(sb_circuit_open_count(), 2); /* half-open counts */
    sb_circuit_end("a", SB_REASON_CONNECT_REFUSED);
    assert_int_equal(sb_circuit_open_count(), 2); /* reopened: still one circuit */
    push("b", SB_REASON_NONE);
    assert_int_equal(sb_circuit_open_count(), 1);
    sb_circuit_shutdown();
    assert_int_equal(sb_circuit_open_count(), 0);
}

/* The table stays bounded under many distinct workspaces; open circuits survive. */
static void test_table_bound(void **state)
{
    char ws[32];
    for (int i = 0; i < 10; i++) {
        snprintf(ws, sizeof(ws), "dead-%d", i);
        fail_n(ws, SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    }
    char detail[256];
    assert_int_equal(sb_circuit_begin("busy-one", 0, detail, sizeof(detail)), SB_REASON_NONE);
    for (int i = 0; i < SB_CIRCUIT_TABLE_MAX + 1000; i++) {
        snprintf(ws, sizeof(ws), "idle-%d", i);
        push(ws, SB_REASON_NONE);
        assert_true(sb_circuit_test_entry_count() <= SB_CIRCUIT_TABLE_MAX);
    }
    assert_true(sb_circuit_test_entry_count() < 1100);
    assert_int_equal(sb_circuit_open_count(), 10);
    assert_state("dead-3", "open");
    assert_int_equal(sb_circuit_inflight("busy-one"), 1);

    /* second tier: closed entries with a streak go too, when idle ones are not enough */
    sb_circuit_shutdown();
    fail_n("dead", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
    for (int i = 0; i < SB_CIRCUIT_TABLE_MAX + 10; i++) {
        snprintf(ws, sizeof(ws), "flaky-%d", i);
        push(ws, SB_REASON_HTTP_5XX);
    }
    assert_true(sb_circuit_test_entry_count() < 100);
    assert_state("dead", "open"); /* inside its cool-down: kept */
    assert_int_equal(sb_circuit_open_count(), 1);
}

/* ---- threads ---- */

#define RACERS 8

typedef struct {
    pthread_barrier_t *go;
    atomic_int *admitted;
} race_arg;

static void *race_probe(void *p)
{
    race_arg *a = p;
    char detail[256];
    pthread_barrier_wait(a->go);
    if (sb_circuit_begin("ws1", 0, detail, sizeof(detail)) == SB_REASON_NONE)
        atomic_fetch_add(a->admitted, 1);
    return NULL;
}

static void test_concurrent_half_open_one_probe(void **state)
{
    for (int round = 0; round < 50; round++) {
        sb_circuit_reset("ws1");
        fail_n("ws1", SB_CIRCUIT_THRESHOLD, SB_REASON_CONNECT_REFUSED);
        advance_ms(SB_CIRCUIT_COOLDOWN_MS);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, RACERS);
        atomic_int admitted = 0;
        race_arg a = {&go, &admitted};
        pthread_t t[RACERS];
        for (int i = 0; i < RACERS; i++)
            assert_int_equal(pthread_create(&t[i], NULL, race_probe, &a), 0);
        for (int i = 0; i < RACERS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&go);
        assert_int_equal(atomic_load(&admitted), 1);
        assert_int_equal(sb_circuit_inflight("ws1"), 1);
        sb_circuit_end("ws1", SB_REASON_NONE);
    }
}

#define STRESS_THREADS 8
#define STRESS_ITERS 20000
#define STRESS_WS 4
#define STRESS_MAX 3

static atomic_int stress_live[STRESS_WS];
static atomic_int stress_peak[STRESS_WS];
static atomic_int stress_pushed, stress_busy, stress_open;

static void *stress_worker(void *p)
{
    unsigned seed = (unsigned)(uintptr_t)p * 2654435761u + 1;
    /* enough failures that circuits open, probe and close many times over */
    static const sb_reason outcomes[] = {SB_REASON_NONE,
                                         SB_REASON_NONE,
                                         SB_REASON_NONE,
                                         SB_REASON_HTTP_5XX,
                                         SB_REASON_CONNECT_REFUSED,
                                         SB_REASON_HTTP_401};
    char ws[32], detail[256];
    for (int i = 0; i < STRESS_ITERS; i++) {
        seed = seed * 1103515245u + 12345u;
        int w = (int)((seed >> 16) % STRESS_WS);
        snprintf(ws, sizeof(ws), "stress-%d", w);
        sb_reason r = sb_circuit_begin(ws, STRESS_MAX, detail, sizeof(detail));
        if (r != SB_REASON_NONE) {
            atomic_fetch_add(r == SB_REASON_BUSY ? &stress_busy : &stress_open, 1);
            continue;
        }
        int live = atomic_fetch_add(&stress_live[w], 1) + 1;
        int peak = atomic_load(&stress_peak[w]);
        while (live > peak && !atomic_compare_exchange_weak(&stress_peak[w], &peak, live)) {
            /* the failed exchange reloaded |peak| */
        }
        sched_yield(); /* widen the in-flight window so pushes overlap */
        if (i % 7 == 0) {
            json_t *d = sb_circuit_describe(ws);
            json_decref(d);
            (void)sb_circuit_open_count();
        }
        atomic_fetch_sub(&stress_live[w], 1);
        atomic_fetch_add(&stress_pushed, 1);
        seed = seed * 1103515245u + 12345u;
        sb_circuit_end(ws, outcomes[(seed >> 16) % (sizeof(outcomes) / sizeof(outcomes[0]))]);
    }
    return NULL;
}

static void test_threads_stress(void **state)
{
    atomic_store(&auto_tick_ms, 25); /* a cool-down passes within ~200 clock reads */
    pthread_t t[STRESS_THREADS];
    for (int i = 0; i < STRESS_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, stress_worker, (void *)(uintptr_t)i), 0);
    for (int i = 0; i < STRESS_THREADS; i++)
        pthread_join(t[i], NULL);
    atomic_store(&auto_tick_ms, 0);

    int open = 0;
    for (int w = 0; w < STRESS_WS; w++) {
        char ws[32], st[32];
        snprintf(ws, sizeof(ws), "stress-%d", w);
        assert_int_equal(sb_circuit_inflight(ws), 0);
        assert_true(atomic_load(&stress_peak[w]) <= STRESS_MAX);
        assert_true(atomic_load(&stress_peak[w]) >= 1);
        if (strcmp(desc_state(ws, st, sizeof(st)), "closed") != 0)
            open++;
    }
    assert_int_equal(sb_circuit_open_count(), open);
    assert_true(atomic_load(&stress_pushed) > STRESS_THREADS * STRESS_ITERS / 10);
    assert_true(atomic_load(&stress_open) > 0); /* the breaker was exercised, */
    assert_true(atomic_load(&stress_busy) > 0); /* and so was the limit */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_threshold_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_counting_reason_opens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_neutral_statuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_success_resets_streak, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_detail_names_reason_and_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_open_admits_one_probe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_success_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_failure_reopens_doubled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cooldown_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_neutral_probe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_and_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_circuit_wins_over_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_straggler_success_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_with_straggler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_describe_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_half_open_one_probe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_stress, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
