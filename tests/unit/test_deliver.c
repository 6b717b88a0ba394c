/*
 * test_deliver.c — the queue expiry of a message that falls back (SPEC §4.3: the smaller
 * of --queue-ttl-s and params.metadata.expires_in_s wins), from the parsed request to the
 * milliseconds handed to the queue. Extreme inputs are the point: under `make asan`
 * (UBSan with -fno-sanitize-recover) any signed overflow in this arithmetic aborts the
 * test binary, so a regression to an unguarded "seconds * 1000" cannot pass.
 * Also the detail of a delivered push ("POST <url> → <status>"), written without
 * snprintf: the same text as snprintf's for URLs of every length up to past the buffer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <string.h>

#include "switchboard/a2a.h"
#include "switchboard/deliver.h"
#include "switchboard/headers.h"
#include "switchboard/upstream.h"

#include <event2/buffer.h>
#include <stdio.h>

static void test_push_detail_matches_snprintf(void **state)
{
    static const char answer[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}";
    char url[600], detail[256], want[700];
    sb_upstream_result res;
    memset(&res, 0, sizeof(res));
    sb_headers h;
    sb_headers_init(&h);
    res.headers = &h;
    res.body = evbuffer_new();
    static const int statuses[] = {200, 201, 204, 299};
    for (size_t len = 0; len < sizeof(url) - 1; len += len < 300 ? 1 : 37) {
        memset(url, 'u', len);
        url[len] = '\0';
        for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
            res.status = statuses[i];
            evbuffer_drain(res.body, evbuffer_get_length(res.body));
            evbuffer_add(res.body, answer, sizeof(answer) - 1);
            assert_int_equal(sb_deliver_classify(&res, url, detail, sizeof(detail)),
                             SB_REASON_NONE);
            snprintf(want, sizeof(want), "POST %s → %d", url, statuses[i]);
            want[sizeof(detail) - 1] = '\0'; /* snprintf into |detail| cuts there */
            assert_string_equal(detail, want);
        }
    }
    evbuffer_free(res.body);
    sb_headers_clear(&h);
}

static void test_smaller_ttl_wins(void **state)
{
    assert_int_equal(sb_deliver_ttl_ms(604800, -1), 604800000LL);
    assert_int_equal(sb_deliver_ttl_ms(604800, 0), 604800000LL);
    assert_int_equal(sb_deliver_ttl_ms(604800, 30), 30000LL);
    assert_int_equal(sb_deliver_ttl_ms(60, 3600), 60000LL);
    assert_int_equal(sb_deliver_ttl_ms(60, 60), 60000LL);
}

static void test_extremes_do_not_overflow(void **state)
{
    assert_int_equal(sb_deliver_ttl_ms(604800, LONG_MAX), 604800000LL);
    assert_int_equal(sb_deliver_ttl_ms(604800, LONG_MIN), 604800000LL);
    assert_int_equal(sb_deliver_ttl_ms(LONG_MAX, LONG_MAX), SB_A2A_EXPIRES_MAX_S * 1000LL);
    assert_int_equal(sb_deliver_ttl_ms(LONG_MAX, -1), SB_A2A_EXPIRES_MAX_S * 1000LL);
    assert_int_equal(sb_deliver_ttl_ms(LONG_MAX, 5), 5000LL);
    assert_int_equal(sb_deliver_ttl_ms(0, -1), 1000LL);
    assert_int_equal(sb_deliver_ttl_ms(LONG_MIN, LONG_MIN), 1000LL);
}

/* The parsed value of |expires| (JSON text) in a send, then the TTL with a 7-day queue. */
static long parsed(const char *expires)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{\"message\":"
             "{\"messageId\":\"m\"},\"metadata\":{\"expires_in_s\":%s}}}",
             expires);
    sb_a2a_call call;
    sb_a2a_error err;
    assert_int_equal(sb_a2a_parse(body, strlen(body), &call, &err), 0);
    long v = call.expires_in_s;
    sb_a2a_call_clear(&call);
    return v;
}

static void test_from_request_to_ttl(void **state)
{
    static const struct {
        const char *json;
        long want_s;     /* what sb_a2a_parse keeps */
        long long ttl_s; /* what the queue gets with --queue-ttl-s 604800 */
    } cases[] = {
        {"30", 30, 30},
        {"6e1", 60, 60},
        {"60.0", 60, 60},
        {"1e300", SB_A2A_EXPIRES_MAX_S, 604800},
        {"-1e300", -1, 604800},
        {"9223372036854775807", SB_A2A_EXPIRES_MAX_S, 604800},
        {"99999999999999999999", SB_A2A_EXPIRES_MAX_S, 604800},
        {"-9223372036854775808", -1, 604800},
        {"30.5", -1, 604800},
        {"0.5", -1, 604800},
        {"0", -1, 604800},
        {"-5", -1, 604800},
        {"\"30\"", -1, 604800},
        {"null", -1, 604800},
        {"true", -1, 604800},
        {"[30]", -1, 604800},
        {"{\"s\":30}", -1, 604800},
        {"1e-300", -1, 604800},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        long v = parsed(cases[i].json);
        if (v != cases[i].want_s)
            fail_msg("expires_in_s %s parsed as %ld, want %ld", cases[i].json, v, cases[i].want_s);
        assert_int_equal(sb_deliver_ttl_ms(604800, v), cases[i].ttl_s * 1000LL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smaller_ttl_wins),
        cmocka_unit_test(test_push_detail_matches_snprintf),
        cmocka_unit_test(test_extremes_do_not_overflow),
        cmocka_unit_test(test_from_request_to_ttl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
