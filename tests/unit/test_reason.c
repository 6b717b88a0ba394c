/*
 * test_reason.c — the closed list of fallback reasons: names round-trip, HTTP statuses
 * classify as SPEC §4.2 says, and "attempted" is true exactly for the three reasons where
 * the agent may have seen the request.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "switchboard/reason.h"

static void test_names_round_trip(void **state)
{
    static const char *const expected[] = {
        "no_endpoint",     "poll_mode",          "lease_expired",
        "backlog",         "circuit_open",       "busy",
        "dns_error",       "connect_refused",    "connect_timeout",
        "tls_error",       "upstream_forbidden", "http_401",
        "http_403",        "http_404",           "http_405",
        "http_413",        "http_429",           "http_5xx",
        "http_other",      "response_timeout",   "connection_reset",
        "invalid_response"};
    assert_int_equal(sizeof(expected) / sizeof(expected[0]), SB_REASON__COUNT - 1);
    for (int i = 1; i < SB_REASON__COUNT; i++) {
        assert_string_equal(sb_reason_name((sb_reason)i), expected[i - 1]);
        assert_int_equal(sb_reason_from_name(expected[i - 1]), i);
    }
    assert_string_equal(sb_reason_name(SB_REASON_NONE), "");
    assert_string_equal(sb_reason_name(SB_REASON__COUNT), "");
    assert_string_equal(sb_reason_name((sb_reason)-1), "");
    assert_int_equal(sb_reason_from_name("nope"), SB_REASON_NONE);
    assert_int_equal(sb_reason_from_name(""), SB_REASON_NONE);
    assert_int_equal(sb_reason_from_name("DNS_ERROR"), SB_REASON_NONE); /* exact names only */
}

static void test_http_status(void **state)
{
    assert_int_equal(sb_reason_from_http_status(200), SB_REASON_NONE);
    assert_int_equal(sb_reason_from_http_status(202), SB_REASON_NONE);
    assert_int_equal(sb_reason_from_http_status(299), SB_REASON_NONE);
    assert_int_equal(sb_reason_from_http_status(401), SB_REASON_HTTP_401);
    assert_int_equal(sb_reason_from_http_status(403), SB_REASON_HTTP_403);
    assert_int_equal(sb_reason_from_http_status(404), SB_REASON_HTTP_404);
    assert_int_equal(sb_reason_from_http_status(405), SB_REASON_HTTP_405);
    assert_int_equal(sb_reason_from_http_status(413), SB_REASON_HTTP_413);
    assert_int_equal(sb_reason_from_http_status(429), SB_REASON_HTTP_429);
    assert_int_equal(sb_reason_from_http_status(500), SB_REASON_HTTP_5XX);
    assert_int_equal(sb_reason_from_http_status(503), SB_REASON_HTTP_5XX);
    assert_int_equal(sb_reason_from_http_status(599), SB_REASON_HTTP_5XX);
    assert_int_equal(sb_reason_from_http_status(301), SB_REASON_HTTP_OTHER);
    assert_int_equal(sb_reason_from_http_status(400), SB_REASON_HTTP_OTHER);
    assert_int_equal(sb_reason_from_http_status(418), SB_REASON_HTTP_OTHER);
    assert_int_equal(sb_reason_from_http_status(600), SB_REASON_HTTP_OTHER);
    assert_int_equal(sb_reason_from_http_status(100), SB_REASON_HTTP_OTHER);
    assert_int_equal(sb_reason_from_http_status(0), SB_REASON_HTTP_OTHER);
}

static void test_attempted(void **state)
{
    for (int i = 0; i < SB_REASON__COUNT; i++) {
        int want = i == SB_REASON_RESPONSE_TIMEOUT || i == SB_REASON_CONNECTION_RESET ||
                   i == SB_REASON_INVALID_RESPONSE;
        assert_int_equal(sb_reason_attempted((sb_reason)i), want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_round_trip),
        cmocka_unit_test(test_http_status),
        cmocka_unit_test(test_attempted),
    };
    return cmocka_run_group_tests_name("reason", tests, NULL, NULL);
}
