/*
 * test_verdict.c — the verdict builder (verdict.h): facts in, one sentence out. Every
 * situation of SPEC §5.3 — healthy push, each pre-push reason, push failures with their
 * explanations, the probe's finding, a backlog nobody takes, dead letters — and the
 * sentence's form (one line, ends with a period, cut safely when the buffer is short).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "switchboard/verdict.h"

/* 2026-11-24T14:30:00Z */
#define NOW 1795530600000LL
#define MIN (60 * 1000LL)

static sb_verdict_facts push_ws(void)
{
    sb_verdict_facts f;
    memset(&f, 0, sizeof(f));
    f.workspace_id = "alice";
    f.now_ms = NOW;
    f.registered = 1;
    f.url = "http://10.0.0.7:8000/";
    return f;
}

static char out[2048];

static const char *verdict(const sb_verdict_facts *f)
{
    size_t n = sb_verdict_write(f, out, sizeof(out));
    assert_true(n < sizeof(out));
    assert_int_equal(strlen(out), n);
    assert_null(strchr(out, '\n'));
    assert_int_equal(out[n - 1], '.');
    return out;
}

static void contains(const char *s, const char *want)
{
    if (strstr(s, want) == NULL)
        fail_msg("%s\n  does not contain\n%s", s, want);
}

static void test_spec_example_404_with_card_mismatch(void **state)
{
    sb_verdict_facts f = push_ws();
    f.fail_reason = f.streak_reason = SB_REASON_HTTP_404;
    f.fail_count = f.streak_count = 12;
    f.fail_since_ms = f.streak_since_ms = NOW - 28 * MIN; /* 14:02 */
    f.fail_status = 404;
    f.probe_mismatch = 1;
    f.probe_advertised = "http://10.0.0.7:8090/";
    assert_string_equal(verdict(&f),
                        "Messages fall back to poll: POST http://10.0.0.7:8000/ answered 404 (the "
                        "agent does not serve A2A at that path) 12 times since 14:02 UTC; its "
                        "agent card advertises http://10.0.0.7:8090/.");
}

static void test_push_failures_explained(void **state)
{
    static const struct {
        sb_reason r;
        int status;
        const char *want;
    } cases[] = {
        {SB_REASON_CONNECT_REFUSED, 0,
         "failed with connect_refused (nothing listens at 10.0.0.7:8000)"},
        {SB_REASON_CONNECT_TIMEOUT, 0, "failed with connect_timeout (nothing answered"},
        {SB_REASON_DNS_ERROR, 0, "(the host name does not resolve)"},
        {SB_REASON_TLS_ERROR, 0, "(the TLS handshake failed"},
        {SB_REASON_UPSTREAM_FORBIDDEN, 0, "see --allow-upstream"},
        {SB_REASON_HTTP_401, 401,
         "answered 401 (the agent rejected switchboard's inbound secret — check it uses the "
         "inbound_secret from registration)"},
        {SB_REASON_HTTP_403, 403, "answered 403 (the agent rejected switchboard's inbound"},
        {SB_REASON_HTTP_405, 405, "answered 405 (the agent does not accept POST at that path)"},
        {SB_REASON_HTTP_413, 413, "answered 413 (the agent refused the message as too large)"},
        {SB_REASON_HTTP_429, 429, "answered 429 (the agent is rate-limiting switchboard)"},
        {SB_REASON_HTTP_5XX, 502, "answered 502 (the agent failed with a server error)"},
        {SB_REASON_HTTP_OTHER, 302, "answered 302 (the agent answered a status"},
        {SB_REASON_RESPONSE_TIMEOUT, 0,
         "failed with response_timeout (the agent took the request but did not answer within "
         "--push-timeout-s)"},
        {SB_REASON_CONNECTION_RESET, 0, "(the agent closed the connection before answering)"},
        {SB_REASON_INVALID_RESPONSE, 200, "failed with invalid_response (the agent answered 2xx"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sb_verdict_facts f = push_ws();
        f.fail_reason = cases[i].r;
        f.fail_count = 3;
        f.fail_since_ms = NOW - 5 * MIN;
        f.fail_status = cases[i].status;
        const char *v = verdict(&f);
        contains(v, "Messages fall back to poll: POST http://10.0.0.7:8000/ ");
        contains(v, cases[i].want);
        contains(v, "3 times since 14:25 UTC");
    }
}

static void test_healthy_push(void **state)
{
    sb_verdict_facts f = push_ws();
    f.pushes = 40;
    f.last_delivered_ms = NOW - MIN;
    f.last_push_status = 200;
    assert_string_equal(verdict(&f),
                        "Messages are pushed: the last push to "
                        "http://10.0.0.7:8000/ was delivered at 14:29 UTC (HTTP 200).");
}

static void test_no_endpoint_with_backlog_nobody_takes(void **state)
{
    sb_verdict_facts f;
    memset(&f, 0, sizeof(f));
    f.workspace_id = "bob";
    f.now_ms = NOW;
    f.streak_reason = SB_REASON_NO_ENDPOINT;
    f.streak_count = 7;
    f.streak_since_ms = NOW - 10 * MIN;
    f.depth = 7;
    f.oldest_age_s = 600;
    assert_string_equal(verdict(&f),
                        "Messages fall back to poll (no_endpoint): no endpoint is registered for "
                        "this workspace 7 times since 14:20 UTC; 7 messages wait in the queue "
                        "(oldest 10 min) and no inbox consumer has leased from it.");
}

static void test_poll_mode_consumers(void **state)
{
    sb_verdict_facts f = push_ws();
    f.poll_mode = 1;
    f.url = NULL;
    contains(verdict(&f), "queued by design (poll_mode)");
    contains(out, "GET /workspaces/alice/inbox; the queue is empty.");

    f.depth = 3;
    f.leased = 2;
    f.oldest_age_s = 4;
    contains(verdict(&f), "3 messages wait in the queue (oldest 4 s), 2 leased by a consumer.");

    f.leased = 0;
    f.last_lease_ms = NOW - 2 * 3600 * 1000LL;
    f.oldest_age_s = 7200;
    contains(verdict(&f), "(oldest 2 h 0 min) and nothing has leased from it since 12:30 UTC.");

    f.last_lease_ms = NOW - 30 * 1000; /* a consumer is active: no complaint */
    verdict(&f);
    assert_null(strstr(out, "nothing has leased"));
}

static void test_lease_expired(void **state)
{
    sb_verdict_facts f = push_ws();
    f.lease_expires_at_ms = NOW - 2 * MIN;
    f.streak_reason = SB_REASON_LEASE_EXPIRED;
    f.streak_count = 2;
    f.streak_since_ms = NOW - MIN;
    contains(verdict(&f), "Messages fall back to poll (lease_expired): the registration of "
                          "http://10.0.0.7:8000/ lapsed at 14:28 UTC without a heartbeat");
    contains(out, "2 times since 14:29 UTC");
    f.lease_expires_at_ms = NOW + MIN; /* still valid: not the reason */
    assert_null(strstr(verdict(&f), "lease_expired"));
}

static void test_circuit_open(void **state)
{
    sb_verdict_facts f = push_ws();
    f.circuit_open = 1;
    f.circuit_failures = 5;
    f.circuit_last_reason = SB_REASON_CONNECT_REFUSED;
    f.circuit_retry_at_ms = NOW + 5000;
    f.fail_reason = SB_REASON_CONNECT_REFUSED;
    f.fail_count = 5;
    f.fail_since_ms = NOW - MIN;
    const char *v = verdict(&f);
    contains(v, "Messages fall back to poll (circuit_open, on this instance): POST "
                "http://10.0.0.7:8000/ failed with connect_refused (nothing listens at "
                "10.0.0.7:8000) 5 times since 14:29 UTC");
    contains(v, "pushes pause until a probe push after 14:30:05 UTC succeeds");

    f.fail_count = 0; /* counters unknown (Redis lost them): the circuit's own facts */
    f.fail_reason = SB_REASON_NONE;
    contains(verdict(&f), "5 consecutive pushes to http://10.0.0.7:8000/ failed (last: "
                          "connect_refused)");
}

static void test_busy(void **state)
{
    sb_verdict_facts f = push_ws();
    f.max_concurrency = 4;
    f.last_delivered_ms = NOW - 2 * MIN;
    f.streak_reason = SB_REASON_BUSY;
    f.streak_count = 9;
    f.streak_since_ms = NOW - MIN;
    contains(verdict(&f),
             "Some messages fall back to poll (busy): pushes in flight to "
             "http://10.0.0.7:8000/ reached max_concurrency 4 9 times since 14:29 UTC; "
             "the others are pushed.");

    f.max_concurrency = 0; /* busy by the instance's default limit */
    contains(verdict(&f), "reached the instance's limit for agents without max_concurrency "
                          "(--max-inflight-per-endpoint; the agent may not be answering) 9 "
                          "times since 14:29 UTC");
}

static void test_nothing_yet_and_probe(void **state)
{
    sb_verdict_facts f = push_ws();
    assert_string_equal(verdict(&f),
                        "Messages are pushed to http://10.0.0.7:8000/; none has been pushed yet.");
    f.probe_mismatch = 1;
    f.probe_advertised = "http://10.0.0.7:8090/";
    contains(verdict(&f), ", and its agent card advertises http://10.0.0.7:8090/, so pushes may "
                          "fail.");
    f.probe_mismatch = 0;
    f.probe_unreachable = 1;
    contains(verdict(&f), "its agent card could not be fetched at registration");
}

static void test_backlog_after_recovery_and_dead_letters(void **state)
{
    sb_verdict_facts f = push_ws();
    f.last_delivered_ms = NOW - MIN;
    f.last_push_status = 200;
    f.depth = 120;
    f.oldest_age_s = 3 * 86400;
    f.dead_letters = 1;
    f.redeliver_next_ms = NOW + 40 * 1000;
    f.redeliver_last_ms = NOW - 9 * 1000;
    f.redeliver_last_outcome = "refused: circuit_open";
    const char *v = verdict(&f);
    contains(v, "Messages are pushed");
    contains(v, "120 messages wait in the queue (oldest 3 days); switchboard redelivers them "
                "itself: next retry in 40 s; the last, at 14:29:51 UTC, was refused "
                "(circuit_open); 1 dead letter.");
    f.redeliver_next_ms = 0;
    f.redeliver_last_outcome = "connect_refused";
    contains(verdict(&f), "the next retry is due now; the last, at 14:29:51 UTC, failed with "
                          "connect_refused");
}

static void test_ordered_backlog(void **state)
{
    sb_verdict_facts f = push_ws();
    f.ordered = 1;
    f.streak_reason = SB_REASON_BACKLOG;
    f.streak_count = 3;
    f.streak_since_ms = NOW - MIN;
    f.depth = 4;
    f.oldest_age_s = 90;
    f.redeliver_next_ms = NOW + 2000;
    contains(verdict(&f), "Messages are queued in order (backlog): the workspace is registered "
                          "ordered, so new messages wait behind the older ones still queued for "
                          "http://10.0.0.7:8000/ 3 times since 14:29 UTC; 4 messages wait in the "
                          "queue (oldest 90 s); switchboard redelivers them itself: next retry "
                          "in 2 s.");
}

static void test_lapsed_lease_backlog_waits_for_heartbeat(void **state)
{
    sb_verdict_facts f = push_ws();
    f.lease_expires_at_ms = NOW - MIN;
    f.depth = 2;
    f.oldest_age_s = 30;
    contains(verdict(&f), "(switchboard redelivers them after the agent's next register or "
                          "heartbeat)");
}

static void test_old_times_carry_the_date(void **state)
{
    sb_verdict_facts f = push_ws();
    f.fail_reason = SB_REASON_HTTP_5XX;
    f.fail_status = 500;
    f.fail_count = 1000;
    f.fail_since_ms = NOW - 3 * 86400 * 1000LL;
    contains(verdict(&f), "1000 times since 2026-11-21 14:30 UTC");
}

static void test_short_buffer_is_cut_safely(void **state)
{
    sb_verdict_facts f = push_ws();
    char small[16];
    size_t need = sb_verdict_write(&f, small, sizeof(small));
    assert_true(need > sizeof(small));
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_int_equal(sb_verdict_write(&f, NULL, 0), need);
}

static void test_registered_card_names_the_right_port(void **state)
{
    /* The incident: the registered port answers 404 everywhere (so the probe fetched no
     * card), but the card the agent sent with its registration advertises the right one. */
    sb_verdict_facts f = push_ws();
    f.fail_reason = f.streak_reason = SB_REASON_HTTP_404;
    f.fail_count = f.streak_count = 3;
    f.fail_since_ms = f.streak_since_ms = NOW - 28 * MIN;
    f.fail_status = 404;
    f.probe_unreachable = 1;
    f.card_mismatch = 1;
    f.card_advertised = "http://10.0.0.7:8090/";
    contains(verdict(&f), "answered 404 (the agent does not serve A2A at that path) 3 times since "
                          "14:02 UTC; its agent card advertises http://10.0.0.7:8090/");
    /* The registered card wins over a probed one that disagrees differently. */
    f.probe_mismatch = 1;
    f.probe_advertised = "http://10.0.0.7:9999/";
    contains(verdict(&f), "advertises http://10.0.0.7:8090/");
}

static void test_refused_register_with_another_workspace_token(void **state)
{
    sb_verdict_facts f;
    memset(&f, 0, sizeof(f));
    f.workspace_id = "alice";
    f.now_ms = NOW;
    f.refused_at_ms = NOW - 28 * MIN;
    f.refused_route = "register";
    f.refused_status = 403;
    f.refused_code = "forbidden";
    f.refused_token_workspace = "platform";
    assert_string_equal(verdict(&f),
                        "Messages fall back to poll (no_endpoint): no endpoint is registered for "
                        "this workspace; the last register attempt, at 14:02 UTC, was refused: "
                        "the token belongs to workspace `platform`.");
    f.refused_status = 401;
    f.refused_code = "unauthorized";
    f.refused_token_workspace = NULL;
    f.refused_message = "the token is not known to switchboard";
    contains(verdict(&f), "was refused: the token is not known to switchboard.");
    f.refused_status = 400;
    f.refused_code = "invalid_json";
    f.refused_message = "the body is not JSON: secret near 'x'";
    const char *v = verdict(&f);
    contains(v, "was refused: HTTP 400 invalid_json.");
    assert_null(strstr(v, "secret"));
}

static void test_refusal_before_registration_fades(void **state)
{
    sb_verdict_facts f = push_ws();
    f.registered_at_ms = NOW - 5 * MIN;
    f.refused_at_ms = NOW - 10 * MIN;
    f.refused_status = 403;
    f.refused_token_workspace = "platform";
    contains(verdict(&f), "a register attempt at 14:20 UTC, before the current registration, was "
                          "refused: the token belongs to workspace `platform`");
    f.refused_at_ms = NOW - 2 * 60 * MIN;
    f.registered_at_ms = NOW - 60 * MIN;
    assert_null(strstr(verdict(&f), "refused"));
    f.registered_at_ms = NOW - 5 * MIN;
    f.refused_at_ms = NOW - MIN; /* a heartbeat refused after the registration */
    f.refused_route = "heartbeat";
    contains(verdict(&f), "the last heartbeat attempt, at 14:29 UTC, was refused");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_example_404_with_card_mismatch),
        cmocka_unit_test(test_push_failures_explained),
        cmocka_unit_test(test_healthy_push),
        cmocka_unit_test(test_no_endpoint_with_backlog_nobody_takes),
        cmocka_unit_test(test_poll_mode_consumers),
        cmocka_unit_test(test_lease_expired),
        cmocka_unit_test(test_circuit_open),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_nothing_yet_and_probe),
        cmocka_unit_test(test_backlog_after_recovery_and_dead_letters),
        cmocka_unit_test(test_ordered_backlog),
        cmocka_unit_test(test_lapsed_lease_backlog_waits_for_heartbeat),
        cmocka_unit_test(test_old_times_carry_the_date),
        cmocka_unit_test(test_short_buffer_is_cut_safely),
        cmocka_unit_test(test_registered_card_names_the_right_port),
        cmocka_unit_test(test_refused_register_with_another_workspace_token),
        cmocka_unit_test(test_refusal_before_registration_fades),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
