/*
 * test_drain.c — unit tests for the recovery drain's read-ahead rule (drain.c,
 * sb_drain_read_ahead): how many messages a run keeps leased beyond the pushes in flight.
 * It must cover what the window pushes during a lease's round trip (a drain whose lease
 * outlasts its buffer waits on Redis with free slots: the bench's drain averaged 21–26 of 48
 * pushes in flight with a fixed window and a half ahead), stay bounded (at most
 * SB_DRAIN_AHEAD_WINDOWS windows, whatever the measurements say), fall back to a window
 * and a half before anything is measured, and be none for a window of one (`ordered`
 * leases one message at a time). The drain itself, against real agents and Redis, is
 * tests/integration/test_drain.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "switchboard/drain.h"

/* The bench's numbers: 48 slots, a lease round trip of 1.8 ms, pushes answered in 0.6
 * ms: the window pushes 144 messages while a lease is on its way; the rule keeps twice
 * that ahead, bounded by SB_DRAIN_AHEAD_WINDOWS windows. */
static void test_covers_a_lease_round_trip(void **state)
{
    (void)state;
    int a = sb_drain_read_ahead(48, 1800, 600);
    assert_true(a >= 48 * 1800 / 600); /* at least what is pushed meanwhile */
    assert_int_equal(a, 48 * 1800 * 2 / 600);
    /* the old fixed window and a half would have been 72: too few */
    assert_true(a > 72);
    /* a lease answered quicker than a push needs no more than a window and a half */
    assert_int_equal(sb_drain_read_ahead(48, 100, 600), 72);
    /* a slower Redis, a deeper read-ahead */
    assert_true(sb_drain_read_ahead(20, 2000, 1000) > sb_drain_read_ahead(20, 1000, 1000));
}

static void test_bounded(void **state)
{
    (void)state;
    assert_int_equal(sb_drain_read_ahead(48, 1000000, 1), 48 * SB_DRAIN_AHEAD_WINDOWS);
    assert_int_equal(sb_drain_read_ahead(64, UINT64_MAX, 1), 64 * SB_DRAIN_AHEAD_WINDOWS);
    assert_int_equal(sb_drain_read_ahead(64, UINT64_MAX / 2, UINT64_MAX / 4), 64 * 4);
    assert_int_equal(sb_drain_read_ahead(64, UINT64_MAX / 4, UINT64_MAX / 2), 96);
    for (int w = 2; w <= 1000; w++)
        for (uint64_t rtt = 1; rtt <= 1u << 20; rtt *= 4)
            for (uint64_t push = 1; push <= 1u << 20; push *= 8) {
                int a = sb_drain_read_ahead(w, rtt, push);
                assert_true(a >= w * 3 / 2);
                assert_true(a <= w * SB_DRAIN_AHEAD_WINDOWS);
            }
}

static void test_unmeasured_and_window_of_one(void **state)
{
    (void)state;
    assert_int_equal(sb_drain_read_ahead(48, 0, 0), 72);
    assert_int_equal(sb_drain_read_ahead(48, 5000, 0), 72);
    assert_int_equal(sb_drain_read_ahead(48, 0, 5000), 72);
    assert_int_equal(sb_drain_read_ahead(2, 0, 0), 3);
    assert_int_equal(sb_drain_read_ahead(1, 100000, 1), 0);
    assert_int_equal(sb_drain_read_ahead(0, 100000, 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_covers_a_lease_round_trip),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_unmeasured_and_window_of_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
