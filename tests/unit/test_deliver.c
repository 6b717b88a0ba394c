/*
 * test_deliver.c — the queue expiry of a message that falls back (SPEC §4.3: the smaller
 * of --queue-ttl-s and params.metadata.expires_in_s wins), from the parsed request to the
 * milliseconds handed to the queue. Extreme inputs are the point: under `make asan`
 * (UBSan with -fno-sanitize-recover) any signed overflow in this arithmetic aborts the
 * test binary, so a regression to an unguarded "seconds * 1000" cannot pass.
 * Also the detail of a delivered push ("POST <url> → <status>"), written without
 * snprintf: the same text as snprintf's for URLs of every length up to past the buffer.
 * And a push attempt written as text (the drain's) is the same bytes as the jansson
 * tree's text, for outside details with escapes and broken UTF-8 and long ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/a2a.h"
#include "switchboard/deliver.h"
#include "switchboard/utf8.h"
#include "switchboard/alloc.h"
#include "switchboard/headers.h"
#include "switchboard/jsontext.h"
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
            sb_a2a_answer where = {0, 0, -1};
            assert_int_equal(sb_deliver_classify(&res, url, detail, sizeof(detail), &where),
                             SB_REASON_NONE);
            /* where the result is, found while judging: "{}" after "result": */
            assert_int_equal(where.is_error, 0);
            assert_int_equal(where.n, 2);
            assert_memory_equal(answer + where.off, "{}", 2);
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

/* The attempt text: exact bytes for a plain case, and for every case jansson reads it
 * back with each member as given (detail repaired to valid UTF-8, the duration to ten
 * significant digits). */
static void test_attempt_text(void **state)
{
    (void)state;
    char *plain = sb_deliver_attempt_text(1733500000123LL, "delivered", SB_REASON_NONE,
                                          "POST http://a/ \xe2\x86\x92 200", 200, 1.5, 0);
    assert_string_equal(plain, "{\"at\":\"2024-12-06T15:46:40.123Z\",\"outcome\":\"delivered\","
                               "\"reason\":null,\"detail\":\"POST http://a/ \xe2\x86\x92 200\","
                               "\"http_status\":200,\"duration_ms\":1.5}");
    sb_free(plain);
    char longer[2000];
    memset(longer, 'x', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    const char *details[] = {
        "POST http://a/ \xe2\x86\x92 200", "",    NULL, "quote \" back\\ nl\n tab\t \x01",
        "bad \xff\xfe utf-8 \xc3",         longer};
    const struct {
        sb_reason reason;
        int status;
        double ms;
    } cases[] = {{SB_REASON_NONE, 200, 1.5},
                 {SB_REASON_NONE, 0, 0.0},
                 {SB_REASON_DNS_ERROR, 0, 12345.678901234},
                 {SB_REASON_HTTP_5XX, 503, 1e-7}};
    for (size_t d = 0; d < sizeof(details) / sizeof(details[0]); d++)
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
            for (int drained = 0; drained <= 1; drained++) {
                const char *outcome = cases[c].reason == SB_REASON_NONE ? "delivered" : "failed";
                char *got =
                    sb_deliver_attempt_text(1733500000123LL, outcome, cases[c].reason, details[d],
                                            cases[c].status, cases[c].ms, drained);
                json_error_t jerr;
                json_t *a = json_loads(got, JSON_REJECT_DUPLICATES, &jerr);
                if (a == NULL)
                    fail_msg("not JSON (%s): %s", jerr.text, got);
                assert_string_equal(json_string_value(json_object_get(a, "at")),
                                    "2024-12-06T15:46:40.123Z");
                assert_string_equal(json_string_value(json_object_get(a, "outcome")), outcome);
                json_t *reason = json_object_get(a, "reason");
                if (cases[c].reason == SB_REASON_NONE)
                    assert_true(json_is_null(reason));
                else
                    assert_string_equal(json_string_value(reason), sb_reason_name(cases[c].reason));
                json_t *want_detail = sb_json_text(details[d] ? details[d] : "");
                assert_string_equal(json_string_value(json_object_get(a, "detail")),
                                    json_string_value(want_detail));
                json_decref(want_detail);
                json_t *st = json_object_get(a, "http_status");
                if (cases[c].status > 0)
                    assert_int_equal(json_integer_value(st), cases[c].status);
                else
                    assert_true(json_is_null(st));
                json_t *ms = json_object_get(a, "duration_ms");
                char ten[40]; /* ten significant digits, as jansson's JSON_REAL_PRECISION(10) */
                snprintf(ten, sizeof(ten), "%.10g", cases[c].ms);
                if (!json_is_real(ms) || json_real_value(ms) != strtod(ten, NULL))
                    fail_msg("duration_ms %.17g, want %.17g: %s", json_number_value(ms),
                             cases[c].ms, got);
                assert_int_equal(json_is_true(json_object_get(a, "drained")), drained);
                assert_int_equal(json_object_size(a), 6 + (size_t)drained);
                json_decref(a);
                sb_free(got);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smaller_ttl_wins),
        cmocka_unit_test(test_push_detail_matches_snprintf),
        cmocka_unit_test(test_extremes_do_not_overflow),
        cmocka_unit_test(test_from_request_to_ttl),
        cmocka_unit_test(test_attempt_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
