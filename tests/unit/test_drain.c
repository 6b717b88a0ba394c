/*
 * test_drain.c — unit tests for the recovery drain's lease rules (drain_lease.c): the
 * read-ahead (sb_drain_read_ahead): how many messages a run keeps leased beyond the pushes
 * in flight.
 * It must cover what the window pushes during a lease's round trip (a drain whose lease
 * outlasts its buffer waits on Redis with free slots: the bench's drain averaged 21–26 of 48
 * pushes in flight with a fixed window and a half ahead), stay bounded (at most
 * SB_DRAIN_AHEAD_WINDOWS windows, whatever the measurements say), fall back to a window
 * and a half before anything is measured, and be none for a window of one (`ordered`
 * leases one message at a time). The lease length (sb_drain_lease_ms) must cover the
 * rounds of pushes a buffered message waits for and its own (a slow agent made buffered
 * messages outlive one push's lease and reach it twice), bounded; the check before a push
 * (sb_drain_lease_fits) pushes only on a lease that covers the whole push with a safety
 * margin, releases only with a second of it left, and survives any inputs. The drain
 * itself, against real agents and Redis, is tests/integration/test_redeliver.py.
 */
#include <limits.h>
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

/* A push bound: a 30 s push timeout and a 5 s connect timeout. */
#define BOUND 35000

static void test_lease_covers_the_rounds_ahead(void **state)
{
    (void)state;
    /* one message alone (an ordered workspace, a run's first lease): one push, as before */
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 1, 1), BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    /* a window of 2 asking 5 (a window and a half ahead): the last waits two rounds */
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 5, 2), 3 * BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    /* a whole window exactly: one round */
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 48, 48), BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 49, 48), 2 * BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    /* more ahead, never shorter */
    for (int w = 1; w <= 64; w++)
        for (int a = 1; a < 600; a++)
            assert_true(sb_drain_lease_ms(BOUND, 0, a + 1, w) >= sb_drain_lease_ms(BOUND, 0, a, w));
    /* every message of a lease fits the push check when its turn comes, pushes taking
     * their whole bound: the k-th round starts (k − 1) bounds after the lease */
    for (int w = 1; w <= 8; w++)
        for (int a = 1; a <= w * SB_DRAIN_LEASE_ROUNDS_MAX; a++) {
            int64_t lease = sb_drain_lease_ms(BOUND, 0, a, w);
            int64_t waited = (int64_t)((a - 1) / w) * BOUND;
            assert_int_equal(sb_drain_lease_fits(lease - waited, BOUND), SB_DRAIN_LEASE_PUSH);
        }
}

/* Measured rounds: a fast agent's lease stays one push bound plus the margin (as before
 * this rule: messages of an instance that dies come back as soon), a slow agent's rounds
 * are its answer times, and a round is never counted longer than a push bound. */
static void test_lease_rounds_at_the_agents_pace(void **state)
{
    (void)state;
    /* 48 wide, 8 windows ahead, pushes answered in ~1 ms: 8 rounds of 2 ms */
    assert_int_equal(sb_drain_lease_ms(BOUND, 2, 9 * 48, 48),
                     BOUND + 7 * 2 + SB_DRAIN_LEASE_MARGIN_MS);
    /* an agent taking 7 s (rounds of 14 s, beyond an 8.15 s bound: the bound) */
    assert_int_equal(sb_drain_lease_ms(8150, 14000, 5, 2), 3 * 8150 + SB_DRAIN_LEASE_MARGIN_MS);
    /* 5 s answers against a 35 s bound: 10 s rounds */
    assert_int_equal(sb_drain_lease_ms(BOUND, 10000, 5, 2),
                     BOUND + 2 * 10000 + SB_DRAIN_LEASE_MARGIN_MS);
    /* unmeasured (0) or nonsense (negative): the bound */
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 5, 2), sb_drain_lease_ms(BOUND, BOUND, 5, 2));
    assert_int_equal(sb_drain_lease_ms(BOUND, -1, 5, 2), sb_drain_lease_ms(BOUND, BOUND, 5, 2));
    assert_int_equal(sb_drain_lease_ms(BOUND, INT64_MIN, 5, 2),
                     sb_drain_lease_ms(BOUND, BOUND, 5, 2));
    assert_int_equal(sb_drain_lease_ms(BOUND, INT64_MAX, 5, 2),
                     sb_drain_lease_ms(BOUND, BOUND, 5, 2));
    /* a lone message: its own push only, whatever the pace */
    assert_int_equal(sb_drain_lease_ms(BOUND, 1, 1, 1), BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    /* never more than the cap, with any round */
    for (int64_t r = 1; r <= 2 * BOUND; r += 997)
        assert_true(sb_drain_lease_ms(BOUND, r, INT_MAX, 1) <=
                    SB_DRAIN_LEASE_ROUNDS_MAX * BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(INT64_MAX, INT64_MAX, INT_MAX, 1),
                     sb_drain_lease_ms(INT64_MAX, 0, INT_MAX, 1));
}

static void test_lease_bounded(void **state)
{
    (void)state;
    int64_t most = (int64_t)SB_DRAIN_LEASE_ROUNDS_MAX * BOUND + SB_DRAIN_LEASE_MARGIN_MS;
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 384, 48), most);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 1000, 1), most);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, INT_MAX, 1), most);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, INT_MAX, INT_MAX),
                     BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    /* nonsense counts as the least */
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 0, 0), BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, -5, -5), BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, INT_MIN, INT_MIN),
                     BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(BOUND, 0, 3, INT_MIN), 3 * BOUND + SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(-1, 0, 5, 1), SB_DRAIN_LEASE_MARGIN_MS);
    assert_int_equal(sb_drain_lease_ms(INT64_MIN, 0, 5, 1), SB_DRAIN_LEASE_MARGIN_MS);
    /* the largest config bound (86400 s + INT_MAX ms) fits, and no bound overflows */
    int64_t big = 86400LL * 1000 + INT_MAX;
    assert_int_equal(sb_drain_lease_ms(big, 0, 1000, 1),
                     SB_DRAIN_LEASE_ROUNDS_MAX * big + SB_DRAIN_LEASE_MARGIN_MS);
    int64_t l = sb_drain_lease_ms(INT64_MAX, 0, INT_MAX, 1);
    assert_true(l > 0 && l <= INT64_MAX);
    assert_true(l >= INT64_MAX - SB_DRAIN_LEASE_ROUNDS_MAX - SB_DRAIN_LEASE_MARGIN_MS);
}

static void test_push_only_on_a_lease_that_covers_it(void **state)
{
    (void)state;
    int64_t need = BOUND + SB_DRAIN_PUSH_SAFETY_MS;
    assert_int_equal(sb_drain_lease_fits(need, BOUND), SB_DRAIN_LEASE_PUSH);
    assert_int_equal(sb_drain_lease_fits(need + 100000, BOUND), SB_DRAIN_LEASE_PUSH);
    assert_int_equal(sb_drain_lease_fits(need - 1, BOUND), SB_DRAIN_LEASE_RELEASE);
    /* the old lease (one push bound + 5 s) after 3 s in the buffer: still enough */
    assert_int_equal(sb_drain_lease_fits(BOUND + 5000 - 3000, BOUND), SB_DRAIN_LEASE_PUSH);
    /* after 4 s: not the 2 s to spare any more; given back for a fresh lease */
    assert_int_equal(sb_drain_lease_fits(BOUND + 5000 - 4000, BOUND), SB_DRAIN_LEASE_RELEASE);
    /* released only with a second left, else left to end on its own */
    assert_int_equal(sb_drain_lease_fits(SB_DRAIN_RELEASE_MARGIN_MS, BOUND),
                     SB_DRAIN_LEASE_RELEASE);
    assert_int_equal(sb_drain_lease_fits(SB_DRAIN_RELEASE_MARGIN_MS - 1, BOUND),
                     SB_DRAIN_LEASE_DROP);
    assert_int_equal(sb_drain_lease_fits(0, BOUND), SB_DRAIN_LEASE_DROP);
    assert_int_equal(sb_drain_lease_fits(-5000, BOUND), SB_DRAIN_LEASE_DROP);
    /* a zero (or negative) bound still needs the safety margin */
    assert_int_equal(sb_drain_lease_fits(SB_DRAIN_PUSH_SAFETY_MS, 0), SB_DRAIN_LEASE_PUSH);
    assert_int_equal(sb_drain_lease_fits(SB_DRAIN_PUSH_SAFETY_MS - 1, -100),
                     SB_DRAIN_LEASE_RELEASE);
    /* extremes: no overflow either way */
    assert_int_equal(sb_drain_lease_fits(INT64_MAX, INT64_MAX), SB_DRAIN_LEASE_RELEASE);
    assert_int_equal(sb_drain_lease_fits(INT64_MAX, INT64_MAX - SB_DRAIN_PUSH_SAFETY_MS),
                     SB_DRAIN_LEASE_PUSH);
    assert_int_equal(sb_drain_lease_fits(INT64_MAX, BOUND), SB_DRAIN_LEASE_PUSH);
    assert_int_equal(sb_drain_lease_fits(INT64_MIN, BOUND), SB_DRAIN_LEASE_DROP);
    assert_int_equal(sb_drain_lease_fits(INT64_MIN, INT64_MIN), SB_DRAIN_LEASE_DROP);
    assert_int_equal(sb_drain_lease_fits(5000, INT64_MAX), SB_DRAIN_LEASE_RELEASE);
}

/* A drain's buffer and every drain's together: full at their bounds, not a byte before;
 * either one alone is enough; sizes past any real buffer stay full. */
static void test_buffer_bounds(void **state)
{
    (void)state;
    assert_false(sb_drain_buffer_full(0, 0));
    assert_false(sb_drain_buffer_full(SB_DRAIN_BUFFER_BYTES - 1, SB_DRAIN_BUFFER_BYTES - 1));
    assert_true(sb_drain_buffer_full(SB_DRAIN_BUFFER_BYTES, SB_DRAIN_BUFFER_BYTES));
    /* a small drain among large ones: the process bound stops it */
    assert_false(sb_drain_buffer_full(1024, SB_DRAIN_PROCESS_BUFFER_BYTES - 1));
    assert_true(sb_drain_buffer_full(1024, SB_DRAIN_PROCESS_BUFFER_BYTES));
    assert_true(sb_drain_buffer_full(SIZE_MAX, SIZE_MAX));
    assert_true(SB_DRAIN_BUFFER_BYTES < SB_DRAIN_PROCESS_BUFFER_BYTES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buffer_bounds),
        cmocka_unit_test(test_lease_covers_the_rounds_ahead),
        cmocka_unit_test(test_lease_bounded),
        cmocka_unit_test(test_lease_rounds_at_the_agents_pace),
        cmocka_unit_test(test_push_only_on_a_lease_that_covers_it),
        cmocka_unit_test(test_covers_a_lease_round_trip),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_unmeasured_and_window_of_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
